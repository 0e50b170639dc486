//! A backend-neutral copy of a whole store, for moving between backends (`jitgate export` /
//! `jitgate import`).
//!
//! Every lasting table of the stores has a typed record here, field for field: ids, sequence numbers,
//! hashes and times (Unix nanoseconds) are kept exactly as stored, webhook secrets stay sealed
//! under the key that sealed them. Only [`EPHEMERAL`] tables are left out: the leases replicas hold
//! on background tasks, which lapse within seconds anyway, and the portal's sessions and SSO
//! sign-ins in flight (the browsers sign in again on the new store). Two counters come along as [`Sequence`] records:
//! the last id handed out for policies and for webhook deliveries, which are never reused even
//! after their rows are deleted.
//!
//! On disk a snapshot is JSON Lines: a [`Header`] line, one line per record tagged by `record` (its kind)
//! (in [`TABLES`] order, each table in key order), and an `end` line with the number of records,
//! so a cut-off file is refused instead of half imported. Records stream: neither side holds the
//! whole store in memory.
//!
//! A backend implements [`SnapshotStore`] with generic SQL over [`TABLES`]: each table's columns
//! with their [`ColumnType`], and each record as a row of [`Value`]s.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{StoreError, StoreResult};

/// The `format` of the header line.
pub const FORMAT: &str = "jitgate-export";
/// The version of the format this build writes and reads.
pub const VERSION: u32 = 1;

/// The first line of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Always [`FORMAT`].
    pub format: String,
    /// Always [`VERSION`].
    pub version: u32,
    /// The backend it was taken from: `sqlite` or `postgres`.
    pub source: String,
    /// The source's schema version.
    pub schema: i64,
    /// When it was taken (RFC 3339).
    pub exported: String,
}

/// The type of a column, as both backends store it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Int,
    Bool,
    Text,
}

/// One value of a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    Int(i64),
    Bool(bool),
    Text(String),
}

/// A field type of a record: its column type and its conversion to and from a [`Value`].
pub trait Field: Sized {
    const TYPE: ColumnType;
    const NULLABLE: bool;
    fn to_value(&self) -> Value;
    fn from_value(v: Value) -> Result<Self, String>;
}

macro_rules! field {
    ($t:ty, $ct:ident, $variant:ident) => {
        impl Field for $t {
            const TYPE: ColumnType = ColumnType::$ct;
            const NULLABLE: bool = false;
            fn to_value(&self) -> Value {
                Value::$variant(self.clone())
            }
            fn from_value(v: Value) -> Result<Self, String> {
                match v {
                    Value::$variant(x) => Ok(x),
                    other => Err(format!("expected {:?}, found {other:?}", ColumnType::$ct)),
                }
            }
        }
        impl Field for Option<$t> {
            const TYPE: ColumnType = ColumnType::$ct;
            const NULLABLE: bool = true;
            fn to_value(&self) -> Value {
                self.clone().map_or(Value::Null, Value::$variant)
            }
            fn from_value(v: Value) -> Result<Self, String> {
                match v {
                    Value::Null => Ok(None),
                    other => <$t>::from_value(other).map(Some),
                }
            }
        }
    };
}
field!(i64, Int, Int);
field!(bool, Bool, Bool);
field!(String, Text, Text);

/// A column of a table.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub name: &'static str,
    pub ty: ColumnType,
    pub nullable: bool,
}

/// A table of the stores: its name, its columns in record order, the columns of its key (the
/// export order), and how a row becomes a [`Record`].
#[derive(Debug, Clone, Copy)]
pub struct Table {
    pub name: &'static str,
    /// The record's `kind`.
    pub kind: &'static str,
    pub columns: &'static [Column],
    pub key: &'static [&'static str],
    /// Import replaces a row with the same key instead of adding one (the `meta` counters,
    /// which a new store starts with).
    pub upsert: bool,
    pub from_row: fn(Vec<Value>) -> Result<Record, String>,
}

impl Table {
    /// The statement that inserts one row of this table (an upsert for `upsert` tables), its
    /// parameters written `{mark}1`, `{mark}2`, … (`$` for PostgreSQL, `?` for SQLite).
    pub fn insert_sql(&self, mark: char) -> String {
        let columns: Vec<&str> = self.columns.iter().map(|c| c.name).collect();
        let marks: Vec<String> = (1..=columns.len()).map(|i| format!("{mark}{i}")).collect();
        let mut sql = format!("INSERT INTO {} ({}) VALUES ({})", self.name, columns.join(", "), marks.join(", "));
        if self.upsert {
            let set: Vec<String> =
                columns.iter().filter(|c| !self.key.contains(c)).map(|c| format!("{c} = excluded.{c}")).collect();
            sql.push_str(&format!(" ON CONFLICT ({}) DO UPDATE SET {}", self.key.join(", "), set.join(", ")));
        }
        sql
    }

    /// The type of column `name`.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

macro_rules! tables {
    ($(
        $(#[$doc:meta])*
        $variant:ident $kind:literal $table:literal key [$($key:literal),+] $(upsert $up:literal)? {
            $($(#[$fdoc:meta])* $field:ident : $ty:ty),+ $(,)?
        }
    )+) => {
        $(
            $(#[$doc])*
            #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
            #[serde(deny_unknown_fields)]
            pub struct $variant {
                $($(#[$fdoc])* pub $field: $ty,)+
            }

            impl $variant {
                fn values(&self) -> Vec<Value> {
                    vec![$(self.$field.to_value()),+]
                }

                fn from_row(row: Vec<Value>) -> Result<Record, String> {
                    let mut it = row.into_iter();
                    Ok(Record::$variant($variant {
                        $($field: <$ty as Field>::from_value(it.next().unwrap_or(Value::Null))
                            .map_err(|e| format!("{}.{}: {e}", $table, stringify!($field)))?,)+
                    }))
                }
            }
        )+

        /// One record of a snapshot, tagged by `record` (its kind).
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(tag = "record", rename_all = "snake_case")]
        pub enum Record {
            $($variant($variant),)+
            /// The last id handed out for a table of [`SEQUENCES`].
            Sequence(Sequence),
            /// The last line: how many records came before it.
            End { records: u64 },
        }

        /// Every table, in the order a snapshot lists them (a row comes after the rows it
        /// refers to).
        pub const TABLES: &[Table] = &[$(
            Table {
                name: $table,
                kind: $kind,
                columns: &[$(Column { name: stringify!($field), ty: <$ty as Field>::TYPE, nullable: <$ty as Field>::NULLABLE }),+],
                key: &[$($key),+],
                upsert: false $(|| $up)?,
                from_row: $variant::from_row,
            },
        )+];

        impl Record {
            /// The table the record belongs to (`None` for the `end` line).
            pub fn table(&self) -> Option<&'static Table> {
                match self {
                    $(Record::$variant(_) => TABLES.iter().find(|t| t.kind == $kind),)+
                    Record::Sequence(_) | Record::End { .. } => None,
                }
            }

            /// The record as a row, in the table's column order.
            pub fn values(&self) -> Vec<Value> {
                match self {
                    $(Record::$variant(r) => r.values(),)+
                    Record::Sequence(_) | Record::End { .. } => Vec::new(),
                }
            }
        }
    };
}

tables! {
    /// A principal (local, or an OIDC identity).
    Principal "principal" "principals" key ["id"] {
        id: i64, name: String, kind: String, created: i64,
        issuer: Option<String>, subject: Option<String>, display_name: Option<String>,
    }
    /// An API token (its hash only).
    Token "token" "tokens" key ["id"] {
        id: i64, principal_id: i64, hash: String, created: i64, expires: Option<i64>, revoked: Option<i64>,
        origin: Option<String>, parent_id: Option<i64>,
    }
    /// A VM of the inventory.
    Vm "vm" "vms" key ["key"] {
        key: String, id: String, os_type: String, location: String, address: Option<String>,
        gateway: Option<String>, classic: bool, agent_id: Option<String>, created: i64, updated: i64,
        cloud: Option<String>, unsupported_reason: Option<String>, cloud_failure: Option<String>,
    }
    /// A JIT policy (its VMs and ports follow as their own records).
    Policy "policy" "policies" key ["pid"] {
        pid: i64, key: String, subscription: String, resource_group: String, location: String, name: String,
        sub_key: String, rg_key: String, loc_key: String, kind: String, created: i64, updated: i64,
    }
    /// A VM of a policy.
    PolicyVm "policy_vm" "policy_vms" key ["pid", "ord"] {
        pid: i64, ord: i64, vm_key: String, vm_id: String, public_ip: Option<String>,
    }
    /// A port of a policy's VM.
    PolicyPort "policy_port" "policy_ports" key ["pid", "vm_ord", "ord"] {
        pid: i64, vm_ord: i64, ord: i64, number: i64, protocol: String, source_form: String, sources: String,
        max_duration: String, cut_sessions: bool, mapped_port: Option<i64>, require_approval: bool,
        approval_timeout: Option<String>,
    }
    /// An access request.
    Request "request" "requests" key ["rid"] {
        rid: i64, pid: i64, policy_id: String, requestor: String, principal: String, start_time: i64,
        justification: Option<String>, client_request_id: Option<String>, ext_end: Option<i64>,
        ext_by: Option<String>, decision_reason: Option<String>,
    }
    /// A grant (one port of a request) in whatever state it is.
    Grant "grant" "grants" key ["gid"] {
        gid: i64, rid: i64, pid: i64, ord: i64, policy_id: String, vm_id: String, vm_key: String, number: i64,
        protocol: String, source_form: String, sources: String, supersede_key: String, end_time: i64,
        status: String, status_reason: String, mapped_port: Option<i64>, public_ip: Option<String>,
        revoked_by: Option<String>, window_ns: Option<i64>, opens_at: Option<i64>, warned: bool,
        decided_by: Option<String>,
    }
    /// A security policy (JIT on or off for a scope).
    SecurityPolicy "security_policy" "security_policies" key ["scope_key"] {
        scope_key: String, scope: String, jit_enabled: bool, updated: i64,
    }
    /// A counter (the enforcement revision).
    Meta "meta" "meta" key ["key"] upsert true {
        key: String, value: i64,
    }
    /// An agent join token (its hash only).
    JoinToken "join_token" "join_tokens" key ["hash"] {
        hash: String, subscription: String, resource_group: String, location: String, mode: String, created: i64,
        expires: i64, created_by: String, used: Option<i64>, vm: Option<String>,
    }
    /// An agent, with its credential's hash and the revisions it reported and was sent.
    Agent "agent" "agents" key ["id"] {
        id: String, name: String, mode: String, subscription: String, resource_group: String, location: String,
        vm_key: Option<String>, vm_id: Option<String>, credential_hash: String, os_type: String,
        addresses: String, public_address: Option<String>, hostname: String, joined: i64,
        last_seen: Option<i64>, applied_revision: i64, delivered_revision: i64, nft_usable: Option<bool>,
        nft_error: Option<String>,
    }
    /// A custom role definition.
    RoleDefinition "role_definition" "role_definitions" key ["key"] {
        key: String, name: String, id: String, description: String, actions: String, not_actions: String,
        assignable_scopes: String, created: i64, updated: i64,
    }
    /// A role assignment.
    RoleAssignment "role_assignment" "role_assignments" key ["id"] {
        id: String, principal_id: i64, role_key: String, role_name: String, scope: String, created: i64,
        created_by: String,
    }
    /// A webhook, its secret sealed under the key `secret_key` names.
    Webhook "webhook" "webhooks" key ["id"] {
        id: String, subscription: Option<String>, principal: Option<String>, url: String, secret: String,
        secret_key: Option<String>, events: String, created: i64,
    }
    /// A webhook delivery (pending, delivered or failed).
    Delivery "delivery" "deliveries" key ["id"] {
        id: i64, webhook_id: String, event: String, payload: String, state: String, attempts: i64,
        next_attempt: i64, last_error: Option<String>, created: i64, delivered: Option<i64>,
    }
    /// A sealed archive of older audit records: where the live chain starts.
    AuditArchive "audit_archive" "audit_archive" key ["through_seq"] {
        through_seq: i64, last_hash: String, file: String, archived: i64,
    }
    /// An audit record, with its place in the chain.
    Audit "audit" "audit" key ["seq"] {
        seq: i64, time: i64, operation: String, status: String, caller: String, caller_ip: Option<String>,
        resource_id: String, correlation_id: String, properties: String, prev_hash: String, hash: String,
    }
}

/// Tables a snapshot leaves out: `leases` (which replica runs a background task, held for
/// seconds; a new store's replicas take them afresh) and `ephemeral` (the portal's sessions and
/// SSO sign-ins in flight: the browsers sign in again).
pub const EPHEMERAL: &[&str] = &["leases", "ephemeral"];

/// The tables with a counter of ids handed out (AUTOINCREMENT, a sequence) that is kept apart
/// from their rows: [`Sequence`] records carry it.
pub const SEQUENCES: &[&str] = &["policies", "deliveries"];

/// The last id handed out for a table of [`SEQUENCES`] (0: none yet). Not a row: it goes
/// into `sqlite_sequence` or the PostgreSQL sequence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sequence {
    pub table: String,
    pub last: i64,
}

impl Record {
    /// The kind, as written on its line.
    pub fn kind(&self) -> &'static str {
        match self {
            Record::Sequence(_) => "sequence",
            Record::End { .. } => "end",
            r => r.table().map_or("?", |t| t.kind),
        }
    }
}

/// How many records of each kind an export wrote or an import read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts(pub BTreeMap<&'static str, u64>);

impl Counts {
    pub fn add(&mut self, record: &Record) {
        *self.0.entry(record.kind()).or_default() += 1;
    }

    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(k, n)| format!("{k} {n}")).collect();
        write!(f, "{} records ({})", self.total(), parts.join(", "))
    }
}

/// Where an export writes its records.
pub trait RecordSink: Send {
    fn put(&mut self, record: Record) -> StoreResult<()>;
}

/// What an import reads: records in snapshot order, the `end` line left out.
pub type RecordSource<'a> = dyn Iterator<Item = StoreResult<Record>> + Send + 'a;

/// Copying a whole store out and into an empty one. Not for serving: an export reads every
/// table in one read transaction, an import writes them all in one transaction.
#[async_trait]
pub trait SnapshotStore: Send + Sync {
    /// Writes every record, table by table in [`TABLES`] order, from one consistent view.
    async fn export(&self, sink: &mut dyn RecordSink) -> StoreResult<Counts>;

    /// Writes `records` into this store, which must hold no records (a non-empty store is refused
    /// and left as it was), in one transaction: ids, sequence numbers, hashes and times exactly
    /// as given, id counters moved past the imported ids.
    async fn import(&self, records: &mut RecordSource<'_>) -> StoreResult<Counts>;
}

/// A store that already holds records refuses an import.
pub fn not_empty(table: &str) -> StoreError {
    StoreError::Backend(
        format!("the target store is not empty (table {table} has rows): import only into a new, empty store").into(),
    )
}

fn io_error(e: std::io::Error) -> StoreError {
    StoreError::Backend(Box::new(e))
}

/// Writes a snapshot as JSON Lines: the header at once, one line per record, `end` at [`finish`].
///
/// [`finish`]: JsonLinesSink::finish
pub struct JsonLinesSink<W: Write + Send> {
    out: W,
    records: u64,
}

impl<W: Write + Send> JsonLinesSink<W> {
    pub fn new(mut out: W, header: &Header) -> StoreResult<Self> {
        let line = serde_json::to_string(header).map_err(|e| StoreError::Backend(Box::new(e)))?;
        writeln!(out, "{line}").map_err(io_error)?;
        Ok(JsonLinesSink { out, records: 0 })
    }

    /// Writes the `end` line and flushes; returns the writer.
    pub fn finish(mut self) -> StoreResult<W> {
        self.put(Record::End { records: self.records })?;
        self.out.flush().map_err(io_error)?;
        Ok(self.out)
    }
}

impl<W: Write + Send> RecordSink for JsonLinesSink<W> {
    fn put(&mut self, record: Record) -> StoreResult<()> {
        let line = serde_json::to_string(&record).map_err(|e| StoreError::Backend(Box::new(e)))?;
        writeln!(self.out, "{line}").map_err(io_error)?;
        if !matches!(record, Record::End { .. }) {
            self.records += 1;
        }
        Ok(())
    }
}

/// Reads a snapshot written by [`JsonLinesSink`]: checks the header, yields the records, and fails
/// (rather than ends) on a line that does not parse, a file cut off before its `end` line, an
/// `end` that does not count the records before it, or anything after it.
pub struct JsonLinesSource<R: BufRead + Send> {
    input: R,
    header: Header,
    line: u64,
    records: u64,
    ended: bool,
    failed: bool,
}

impl<R: BufRead + Send> JsonLinesSource<R> {
    pub fn new(mut input: R) -> StoreResult<Self> {
        let mut first = String::new();
        input.read_line(&mut first).map_err(io_error)?;
        let bad = |why: String| StoreError::Backend(format!("not a jitgate export: {why}").into());
        if first.is_empty() {
            return Err(bad("the input is empty".into()));
        }
        let header: Header = serde_json::from_str(first.trim_end()).map_err(|e| bad(format!("line 1: {e}")))?;
        if header.format != FORMAT {
            return Err(bad(format!("line 1: format is '{}', not '{FORMAT}'", header.format)));
        }
        if header.version != VERSION {
            return Err(bad(format!("format version {} (this jitgate reads version {VERSION})", header.version)));
        }
        Ok(JsonLinesSource { input, header, line: 1, records: 0, ended: false, failed: false })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    fn next_item(&mut self) -> StoreResult<Option<Record>> {
        let bad = |line: u64, why: String| StoreError::Backend(format!("export line {line}: {why}").into());
        loop {
            let mut text = String::new();
            let n = self.input.read_line(&mut text).map_err(io_error)?;
            self.line += 1;
            if n == 0 {
                if self.ended {
                    return Ok(None);
                }
                return Err(bad(self.line, "the file ends before its end line: it was cut off".into()));
            }
            if text.trim().is_empty() {
                continue;
            }
            if self.ended {
                return Err(bad(self.line, "more lines after the end line".into()));
            }
            let record: Record = serde_json::from_str(text.trim_end()).map_err(|e| bad(self.line, e.to_string()))?;
            if let Record::End { records } = record {
                if records != self.records {
                    return Err(bad(
                        self.line,
                        format!("the end line counts {records} records, the file has {}", self.records),
                    ));
                }
                self.ended = true;
                continue;
            }
            self.records += 1;
            return Ok(Some(record));
        }
    }
}

impl<R: BufRead + Send> Iterator for JsonLinesSource<R> {
    type Item = StoreResult<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.next_item() {
            Ok(Some(record)) => Some(Ok(record)),
            Ok(None) => None,
            Err(e) => {
                // One error, then nothing: the import stops there.
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests;
