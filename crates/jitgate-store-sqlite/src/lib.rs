//! The SQLite backend of the jitgate store.
//!
//! One database file in WAL mode with `synchronous=FULL` (an fsync on every commit). All changes
//! go through one writer thread that commits them in groups ([`writer`]); reads use a small pool
//! of connections on the blocking thread pool, and see only committed data.

mod agents;
mod auditq;
mod grants;
mod hooks;
mod rbac;
mod rows;
mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use async_trait::async_trait;
use rusqlite::types::Value;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use time::OffsetDateTime;
use tokio::sync::mpsc;

pub use hooks::SealReport;
use jitgate_core::audit::{ops, AuditEvent, AuditStatus};
use jitgate_core::enforcement::{check_mapped_ports, AgentMode, EnforcementState, MappedClaim};
use jitgate_core::initiate::{decide, GrantStatus, StatusReason};
use jitgate_core::invalid::codes;
use jitgate_core::lifecycle::{self, Decision, Extension};
use jitgate_core::policy::{resolve, ValidatedPolicy};
use jitgate_core::rbac::RoleDefinition;
use jitgate_core::{rfc3339, Invalid, OsType, PolicyRef, VmId};
use jitgate_store::secrets::Keyring;
use jitgate_store::{
    AccessRequestRecord, AgentJoin, AgentRecord, AgentReport, AuditFilter, AuditRecord, AuditVerification, Delivery,
    ExpirySweep, GrantRecord, InitiateCommand, InitiateOutcome, JoinTokenRecord, JoinTokenSpec, ListScope, NewToken,
    OidcSignIn, PolicyRecord, Principal, RoleAssignment, SecurityPolicy, Store, StoreError, StoreResult, TokenAuth,
    TokenOrigin, TokenRecord, Vm, VmAccess, VmSpec, Webhook,
};

use crate::grants::{By, STATE_COLUMNS};
use crate::rows::{encode_sources, from_nanos, nanos};
use crate::writer::{FnJob, Job, WriteCtx};

/// The schema this build writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 5;
const SCHEMA: &str = include_str!("schema.sql");
/// Read connections kept open.
const READERS: usize = 4;
/// Reads running at once. The others wait for a slot as futures, not on threads of the
/// blocking pool: a burst of readers (every agent's long-poll waking on one change) must not
/// become hundreds of threads and connections.
const READ_CONCURRENCY: usize = 8;

/// A database file that could not be opened or read; the driver's error is the source.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", .path.display())]
pub struct FileError {
    pub path: PathBuf,
    #[source]
    source: rusqlite::Error,
}

/// Verifies the audit chain of a database file, read-only, without a running server.
pub fn verify_audit_file(path: &Path) -> Result<jitgate_store::AuditVerification, FileError> {
    auditq::verify_file(path)
}

/// A store in one SQLite file.
pub struct SqliteStore {
    jobs: Option<mpsc::Sender<Box<dyn Job>>>,
    writer: Option<JoinHandle<()>>,
    readers: Arc<ReadPool>,
    /// Seals and opens webhook secrets.
    keys: Arc<Keyring>,
    sealed: SealReport,
    read_slots: Arc<tokio::sync::Semaphore>,
}

struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl ReadPool {
    fn take(&self) -> rusqlite::Result<Connection> {
        let idle = self.idle.lock().ok().and_then(|mut v| v.pop());
        match idle {
            Some(c) => Ok(c),
            None => {
                let c = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                c.execute_batch("PRAGMA query_only = ON; PRAGMA busy_timeout = 5000;")?;
                Ok(c)
            }
        }
    }

    fn put(&self, c: Connection) {
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < READERS {
                idle.push(c);
            }
        }
    }
}

fn backend(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StoreError {
    StoreError::Backend(e.into())
}

#[cfg(test)]
#[test]
fn a_backend_failure_keeps_the_driver_error_as_its_source() {
    let e = backend(rusqlite::Error::QueryReturnedNoRows);
    assert_eq!(e.to_string(), format!("storage failure: {}", rusqlite::Error::QueryReturnedNoRows));
    let source = std::error::Error::source(&e).expect("a source");
    assert!(matches!(source.downcast_ref::<rusqlite::Error>(), Some(rusqlite::Error::QueryReturnedNoRows)));
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, migrates it, and starts the writer.
    /// Webhook secrets are sealed with `keys`: every secret is left sealed under its current key
    /// (plaintext ones from an older version are sealed, those under an older key re-sealed), and
    /// a secret that `keys` cannot open fails the open with an error naming the key.
    pub fn open(path: &Path, keys: Keyring) -> StoreResult<Self> {
        let conn = Connection::open(path).map_err(backend)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;",
        )
        .map_err(backend)?;
        migrate(&conn)?;
        let sealed = hooks::seal_all(&conn, &keys).map_err(|e| backend(format!("webhook secrets: {e}")))?;
        if sealed.sealed + sealed.resealed > 0 {
            tracing::info!(
                sealed = sealed.sealed,
                resealed = sealed.resealed,
                key = keys.current().id(),
                "webhook secrets sealed under the current secrets key"
            );
        }
        let chain = writer::load_chain(&conn).map_err(backend)?;
        let (tx, rx) = mpsc::channel(4096);
        let handle = std::thread::Builder::new()
            .name("jitgate-sqlite-writer".into())
            .spawn(move || writer::run(conn, chain, rx))
            .map_err(backend)?;
        Ok(SqliteStore {
            jobs: Some(tx),
            writer: Some(handle),
            readers: Arc::new(ReadPool { path: path.to_owned(), idle: Mutex::new(Vec::new()) }),
            keys: Arc::new(keys),
            sealed,
            read_slots: Arc::new(tokio::sync::Semaphore::new(READ_CONCURRENCY)),
        })
    }

    /// What the open did to the webhook secrets (sealed, re-sealed, already current).
    pub fn seal_report(&self) -> SealReport {
        self.sealed
    }

    async fn write<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut WriteCtx<'_>) -> StoreResult<T> + Send + 'static,
    {
        let (job, rx) = FnJob::boxed(f);
        let jobs = self.jobs.as_ref().ok_or_else(|| backend("the store is closed"))?;
        jobs.send(job).await.map_err(|_| backend("the store writer has stopped"))?;
        rx.await.map_err(|_| backend("the store writer has stopped"))?
    }

    async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let pool = self.readers.clone();
        let slot = self.read_slots.clone().acquire_owned().await.map_err(backend)?;
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            let conn = pool.take()?;
            let out = f(&conn);
            pool.put(conn);
            out
        })
        .await
        .map_err(backend)?
        .map_err(backend)
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Closing the channel ends the writer once it has committed what it holds.
        self.jobs.take();
        if let Some(h) = self.writer.take() {
            let _ = h.join();
        }
    }
}

/// Schema 1 → 2: pending extensions on requests.
const UPGRADE_TO_2: &str =
    "ALTER TABLE requests ADD COLUMN ext_end INTEGER; ALTER TABLE requests ADD COLUMN ext_by TEXT;";

// ---- Schema 2 → 3: webhooks and secrets at rest (issue 9, findings 8 and 15). ----
// Webhook secrets get the id of the key that seals them (`SqliteStore::open` seals the ones
// stored in the clear), and delivery ids become AUTOINCREMENT so that no id is ever reused after
// a webhook's deliveries are deleted (SQLite cannot add AUTOINCREMENT in place: the table is
// rebuilt with the same rows and indexes).
const UPGRADE_TO_3: &str = "ALTER TABLE webhooks ADD COLUMN secret_key TEXT; \
    CREATE TABLE deliveries_v3 ( \
        id INTEGER PRIMARY KEY AUTOINCREMENT, webhook_id TEXT NOT NULL, event TEXT NOT NULL, \
        payload TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, \
        next_attempt INTEGER NOT NULL, last_error TEXT, created INTEGER NOT NULL, delivered INTEGER); \
    INSERT INTO deliveries_v3 (id, webhook_id, event, payload, state, attempts, next_attempt, last_error, created, delivered) \
        SELECT id, webhook_id, event, payload, state, attempts, next_attempt, last_error, created, delivered FROM deliveries; \
    DROP TABLE deliveries; \
    ALTER TABLE deliveries_v3 RENAME TO deliveries; \
    CREATE INDEX deliveries_due ON deliveries (next_attempt) WHERE state = 'Pending'; \
    CREATE INDEX deliveries_hook ON deliveries (webhook_id, id);";
// ---- end of schema 3 ----

// --- Identities and tokens (schema version 4) ---------------------------------------------
/// Schema 3 → 4: OIDC identities keyed by (issuer, subject) with a display name; what
/// created each token. Principals made by earlier OIDC sign-ins (named by their display claim)
/// stay what they were: local principals; the identity gets a new, derived principal.
const UPGRADE_TO_4: &str = "\
    ALTER TABLE principals ADD COLUMN issuer TEXT; \
    ALTER TABLE principals ADD COLUMN subject TEXT; \
    ALTER TABLE principals ADD COLUMN display_name TEXT; \
    CREATE UNIQUE INDEX principals_oidc ON principals (issuer, subject) WHERE issuer IS NOT NULL; \
    ALTER TABLE tokens ADD COLUMN origin TEXT; \
    ALTER TABLE tokens ADD COLUMN parent_id INTEGER REFERENCES tokens(id); \
    CREATE INDEX tokens_parent ON tokens (parent_id) WHERE parent_id IS NOT NULL;";
// --- end of identities and tokens -----------------------------------------------------------

// --- Agents and gateways (schema version 5) -------------------------------------------------
/// Schema 4 → 5: join tokens made for one VM; the revision last delivered to each agent;
/// gateway names unique per subscription instead of globally.
const UPGRADE_TO_5: &str = "ALTER TABLE join_tokens ADD COLUMN vm TEXT; \
     ALTER TABLE agents ADD COLUMN delivered_revision INTEGER NOT NULL DEFAULT 0; \
     DROP INDEX agents_gateway_name; \
     CREATE UNIQUE INDEX agents_gateway_name ON agents (lower(subscription), lower(name)) WHERE mode = 'gateway';";
// --- end of agents and gateways -------------------------------------------------------------

fn migrate(conn: &Connection) -> StoreResult<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(backend)?;
    if version == 0 {
        return conn
            .execute_batch(&format!("BEGIN; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"))
            .map_err(backend);
    }
    if version > SCHEMA_VERSION {
        return Err(backend(format!(
            "the database has schema version {version}, newer than this jitgate ({SCHEMA_VERSION})"
        )));
    }
    let steps: String = [(2, UPGRADE_TO_2), (3, UPGRADE_TO_3), (4, UPGRADE_TO_4), (5, UPGRADE_TO_5)]
        .iter()
        .filter(|(to, _)| version < *to)
        .map(|(_, sql)| format!("{sql} "))
        .collect();
    if steps.is_empty() {
        return Ok(());
    }
    conn.execute_batch(&format!("BEGIN; {steps} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")).map_err(|e| {
        let _ = conn.execute_batch("ROLLBACK");
        backend(format!("upgrading the database from schema version {version}: {e}"))
    })
}

fn request_not_found(id: i64) -> Invalid {
    Invalid::not_found(codes::REQUEST_NOT_FOUND, format!("access request {id} was not found"))
}

/// A pending extension, once decided (or lapsed), no longer waits.
fn clear_extension(conn: &Connection, id: i64) -> StoreResult<()> {
    conn.execute("UPDATE requests SET ext_end = NULL, ext_by = NULL WHERE rid = ?1", [id]).map_err(backend)?;
    Ok(())
}

/// Inserts a local principal and audits it; returns it.
fn insert_principal(ctx: &mut WriteCtx<'_>, name: &str, kind: &str, audit: AuditEvent) -> StoreResult<Principal> {
    ctx.conn
        .execute(
            "INSERT INTO principals (name, kind, created) VALUES (?1, ?2, ?3)",
            params![name, kind, nanos(audit.time)],
        )
        .map_err(backend)?;
    ctx.audit(&audit.succeeded().with("principal", name).with("type", kind)).map_err(backend)?;
    rbac::principal(ctx.conn, name).map_err(backend)?.ok_or_else(|| backend("the principal vanished"))
}

/// The principal of an OIDC identity: found by (issuer, subject), its display name brought up to
/// date, or created with the derived name.
fn upsert_oidc_principal(ctx: &mut WriteCtx<'_>, sign_in: &OidcSignIn, audit: AuditEvent) -> StoreResult<Principal> {
    let id = &sign_in.identity;
    let shown = sign_in.display_name.clone().unwrap_or_default();
    if let Some(p) = rbac::oidc_principal(ctx.conn, id).map_err(backend)? {
        if p.display_name == sign_in.display_name {
            return Ok(p);
        }
        ctx.conn
            .execute("UPDATE principals SET display_name = ?2 WHERE id = ?1", params![p.id, sign_in.display_name])
            .map_err(backend)?;
        let event = audit
            .succeeded()
            .with("principal", p.name.clone())
            .with("displayName", shown)
            .with("previousDisplayName", p.display_name.clone().unwrap_or_default());
        ctx.audit(&event).map_err(backend)?;
        return Ok(Principal { display_name: sign_in.display_name.clone(), ..p });
    }
    let name = jitgate_core::identity::oidc_name(&id.issuer, &id.subject);
    if let Some(holder) = rbac::principal(ctx.conn, &name).map_err(backend)? {
        let m = format!(
            "the name '{name}' of this OIDC identity is held by another principal (id {}); an administrator must remove it",
            holder.id
        );
        return reject(ctx, audit, Invalid::conflict("PrincipalExists", m));
    }
    ctx.conn
        .execute(
            "INSERT INTO principals (name, kind, created, issuer, subject, display_name) VALUES (?1, 'User', ?2, ?3, ?4, ?5)",
            params![name, nanos(audit.time), id.issuer, id.subject, sign_in.display_name],
        )
        .map_err(backend)?;
    let event = audit
        .succeeded()
        .with("principal", name.clone())
        .with("type", "User")
        .with("provisioned", "oidc")
        .with("issuer", id.issuer.clone())
        .with("subject", id.subject.clone())
        .with("displayName", shown);
    ctx.audit(&event).map_err(backend)?;
    rbac::oidc_principal(ctx.conn, id).map_err(backend)?.ok_or_else(|| backend("the principal vanished"))
}

/// Turns a domain refusal into a rejected store call, writing its `Failed` audit record first.
fn reject<T>(ctx: &mut WriteCtx<'_>, audit: AuditEvent, invalid: Invalid) -> StoreResult<T> {
    ctx.audit(&audit.failed(invalid.message.clone())).map_err(backend)?;
    Err(StoreError::Rejected(invalid))
}

fn scope_query(scope: &ListScope) -> (String, Vec<String>) {
    let l = |s: &str| s.to_ascii_lowercase();
    match scope {
        ListScope::Subscription { subscription } => ("sub_key = ?1".into(), vec![l(subscription)]),
        ListScope::SubscriptionLocation { subscription, location } => {
            ("sub_key = ?1 AND loc_key = ?2".into(), vec![l(subscription), l(location)])
        }
        ListScope::ResourceGroup { subscription, resource_group } => {
            ("sub_key = ?1 AND rg_key = ?2".into(), vec![l(subscription), l(resource_group)])
        }
        ListScope::ResourceGroupLocation { subscription, resource_group, location } => (
            "sub_key = ?1 AND rg_key = ?2 AND loc_key = ?3".into(),
            vec![l(subscription), l(resource_group), l(location)],
        ),
    }
}

fn insert_policy_body(conn: &Connection, pid: i64, policy: &jitgate_core::Policy) -> rusqlite::Result<()> {
    let mut vm_stmt =
        conn.prepare_cached("INSERT INTO policy_vms (pid, ord, vm_key, vm_id, public_ip) VALUES (?1, ?2, ?3, ?4, ?5)")?;
    let mut port_stmt = conn.prepare_cached(
        "INSERT INTO policy_ports (pid, vm_ord, ord, number, protocol, source_form, sources, max_duration, cut_sessions, \
         mapped_port, require_approval, approval_timeout) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?;
    for (i, vm) in policy.vms.iter().enumerate() {
        vm_stmt.execute(params![pid, i as i64, vm.id.key(), vm.id.as_str(), vm.public_ip_address])?;
        for (j, p) in vm.ports.iter().enumerate() {
            let (form, sources) = encode_sources(&p.sources);
            port_stmt.execute(params![
                pid,
                i as i64,
                j as i64,
                p.number,
                p.protocol.as_str(),
                form,
                sources,
                p.max_duration.text(),
                p.cut_sessions,
                p.mapped_port,
                p.require_approval,
                p.approval_timeout.as_ref().map(|d| d.text().to_owned())
            ])?;
        }
    }
    Ok(())
}

fn port_summary(policy: &jitgate_core::Policy) -> String {
    let mut parts = Vec::new();
    for vm in &policy.vms {
        for p in &vm.ports {
            parts.push(format!("{}:{}/{}", vm.id.name(), p.number, p.protocol.as_str()));
        }
    }
    parts.join(",")
}

/// The gateway ports the policy protecting VM `key` claims for it.
fn vm_claims(conn: &Connection, key: &str) -> rusqlite::Result<Vec<MappedClaim>> {
    let Some(policy) = conn
        .query_row("SELECT p.key FROM policy_vms v JOIN policies p ON p.pid = v.pid WHERE v.vm_key = ?1", [key], |r| {
            r.get::<_, String>(0)
        })
        .optional()?
    else {
        return Ok(vec![]);
    };
    let Some((_, policy)) = rows::load_policy_only(conn, &policy)? else { return Ok(vec![]) };
    Ok(policy
        .vms
        .iter()
        .filter(|v| v.id.key() == key)
        .flat_map(|v| {
            let policy_id = policy.reference.id();
            v.ports.iter().filter_map(move |p| {
                p.mapped_port.map(|m| MappedClaim {
                    policy: policy_id.clone(),
                    vm: v.id.name().to_owned(),
                    number: p.number,
                    protocol: p.protocol,
                    mapped_port: m,
                    target: Some("gateway".into()),
                })
            })
        })
        .collect())
}

#[async_trait]
impl Store for SqliteStore {
    async fn bootstrap(
        &self,
        owner: &str,
        token_hash: &str,
        expires: Option<OffsetDateTime>,
        audit: AuditEvent,
    ) -> StoreResult<bool> {
        let (owner, token_hash) = (owner.to_owned(), token_hash.to_owned());
        self.write(move |ctx| {
            let count: i64 =
                ctx.conn.query_row("SELECT count(*) FROM principals", [], |r| r.get(0)).map_err(backend)?;
            if count > 0 {
                return Ok(false);
            }
            let now = nanos(audit.time);
            ctx.conn
                .execute("INSERT INTO principals (name, kind, created) VALUES (?1, 'User', ?2)", params![owner, now])
                .map_err(backend)?;
            let pid = ctx.conn.last_insert_rowid();
            ctx.conn
                .execute(
                    "INSERT INTO tokens (principal_id, hash, created, expires, origin) VALUES (?1, ?2, ?3, ?4, 'server')",
                    params![pid, token_hash, now, expires.map(nanos)],
                )
                .map_err(backend)?;
            rbac::insert_assignment(ctx.conn, pid, "Owner", "/", now, "jitgate").map_err(backend)?;
            let event = audit
                .succeeded()
                .with("principal", owner.clone())
                .with("role", "Owner")
                .with("expiresOn", expires.map(rfc3339).unwrap_or_default());
            ctx.audit(&event).map_err(backend)?;
            Ok(true)
        })
        .await
    }

    async fn authenticate(&self, token_hash: &str, now: OffsetDateTime) -> StoreResult<Option<TokenAuth>> {
        let hash = token_hash.to_owned();
        self.read(move |c| {
            c.prepare_cached(&format!(
                "SELECT {}, t.id AS token_id, t.expires FROM tokens t JOIN principals p ON p.id = t.principal_id \
                 WHERE t.hash = ?1 AND t.revoked IS NULL AND (t.expires IS NULL OR t.expires > ?2)",
                rbac::PRINCIPAL_COLUMNS
            ))?
            .query_row(params![hash, nanos(now)], |r| {
                let expires: Option<i64> = r.get("expires")?;
                Ok(TokenAuth {
                    principal: rbac::principal_from_row(r)?,
                    token_id: r.get("token_id")?,
                    expires: expires.map(from_nanos).transpose()?,
                })
            })
            .optional()
        })
        .await
    }

    async fn put_vm(&self, vm: VmSpec, audit: AuditEvent) -> StoreResult<(Vm, bool)> {
        self.write(move |ctx| {
            let key = vm.id.key();
            let now = nanos(audit.time);
            let existing = rows::get_vm(ctx.conn, &key).map_err(backend)?;
            let address = vm.address.map(|a| a.to_string());
            if let Some(gw) = &vm.gateway {
                let sub = vm.id.subscription();
                if rows::gateway_agent(ctx.conn, sub, gw).map_err(backend)?.is_none() {
                    let invalid = Invalid::input(
                        codes::INVALID_VM,
                        Some("gateway".into()),
                        format!(
                            "no gateway agent named '{gw}' has joined subscription '{sub}'; a VM attaches only to a \
                             gateway of its own subscription (join one with jitgate agent --mode gateway)"
                        ),
                    );
                    return reject(ctx, audit, invalid);
                }
                // The VM's mapped ports move onto this gateway: they must be free there.
                let moving = existing.as_ref().is_none_or(|e| {
                    e.spec.gateway.as_deref().map(str::to_ascii_lowercase) != Some(gw.to_ascii_lowercase())
                });
                if moving {
                    let new: Vec<MappedClaim> = vm_claims(ctx.conn, &key).map_err(backend)?;
                    let held = rows::gateway_claims(ctx.conn, sub, gw, "", &key).map_err(backend)?;
                    if let Err(invalid) = check_mapped_ports(gw, &new, &held) {
                        return reject(ctx, audit, invalid);
                    }
                }
                if vm.address.is_none() {
                    let invalid = Invalid::input(
                        codes::INVALID_VM,
                        Some("address".into()),
                        "a VM behind a gateway needs its inner address (the address the gateway forwards to)",
                    );
                    return reject(ctx, audit, invalid);
                }
            }
            match &existing {
                Some(_) => ctx.conn.execute(
                    "UPDATE vms SET os_type = ?2, location = ?3, address = ?4, gateway = ?5, updated = ?6, classic = ?7 WHERE key = ?1",
                    params![key, vm.os_type.as_str(), vm.location, address, vm.gateway, now, vm.classic],
                ),
                None => ctx.conn.execute(
                    "INSERT INTO vms (key, id, os_type, location, address, gateway, created, updated, classic) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8)",
                    params![key, vm.id.as_str(), vm.os_type.as_str(), vm.location, address, vm.gateway, now, vm.classic],
                ),
            }
            .map_err(backend)?;
            rows::bump_revision(ctx.conn).map_err(backend)?;
            let event = audit
                .succeeded()
                .with("osType", vm.os_type.as_str())
                .with("location", vm.location.clone())
                .with("address", address.unwrap_or_default())
                .with("gateway", vm.gateway.clone().unwrap_or_default());
            ctx.audit(&event).map_err(backend)?;
            let stored = rows::get_vm(ctx.conn, &key).map_err(backend)?.ok_or_else(|| backend("the VM vanished"))?;
            Ok((stored, existing.is_none()))
        })
        .await
    }

    async fn list_vms(&self) -> StoreResult<Vec<Vm>> {
        self.read(|c| {
            let keys: Vec<String> = c
                .prepare_cached("SELECT key FROM vms ORDER BY key")?
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let mut out = Vec::with_capacity(keys.len());
            for key in keys {
                if let Some(vm) = rows::get_vm(c, &key)? {
                    out.push(vm);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn get_vm(&self, id: &VmId) -> StoreResult<Option<Vm>> {
        let key = id.key();
        self.read(move |c| rows::get_vm(c, &key)).await
    }

    async fn delete_vm(&self, id: &VmId, audit: AuditEvent) -> StoreResult<Vm> {
        let id = id.clone();
        self.write(move |ctx| {
            let key = id.key();
            let Some(vm) = rows::get_vm(ctx.conn, &key).map_err(backend)? else {
                return reject(
                    ctx,
                    audit,
                    Invalid::not_found(codes::VM_NOT_FOUND, format!("virtual machine '{id}' is not registered")),
                );
            };
            let policy: Option<String> = ctx
                .conn
                .query_row(
                    "SELECT p.subscription, p.resource_group, p.location, p.name FROM policy_vms v \
                     JOIN policies p ON p.pid = v.pid WHERE v.vm_key = ?1",
                    [&key],
                    |r| {
                        Ok(PolicyRef {
                            subscription: r.get(0)?,
                            resource_group: r.get(1)?,
                            location: r.get(2)?,
                            name: r.get(3)?,
                        }
                        .id())
                    },
                )
                .optional()
                .map_err(backend)?;
            if let Some(policy) = policy {
                let message = format!(
                    "virtual machine '{id}' is protected by policy '{policy}'; remove it from the policy first"
                );
                return reject(ctx, audit, Invalid::conflict(codes::VM_IN_USE, message));
            }
            // The VM's host agent goes with it: its credential never binds to a VM registered
            // again under this name.
            let revoked: Vec<String> = ctx
                .conn
                .prepare_cached(
                    "DELETE FROM agents WHERE mode = 'host' AND (vm_key = ?1 OR id = (SELECT agent_id FROM vms WHERE key = ?1)) \
                     RETURNING id",
                )
                .and_then(|mut st| st.query_map([&key], |r| r.get(0))?.collect())
                .map_err(backend)?;
            ctx.conn.execute("DELETE FROM vms WHERE key = ?1", [&key]).map_err(backend)?;
            rows::bump_revision(ctx.conn).map_err(backend)?;
            let mut event = audit.succeeded();
            if !revoked.is_empty() {
                event = event.with("revokedAgents", revoked.join(" "));
            }
            ctx.audit(&event).map_err(backend)?;
            Ok(vm)
        })
        .await
    }

    async fn put_policy(&self, policy: ValidatedPolicy, audit: AuditEvent) -> StoreResult<PolicyRecord> {
        self.write(move |ctx| {
            let key = policy.reference.key();
            let mut known: HashMap<String, OsType> = HashMap::new();
            let mut gateway_of: HashMap<String, String> = HashMap::new();
            for vm in &policy.vms {
                if let Some(v) = rows::get_vm(ctx.conn, &vm.id.key()).map_err(backend)? {
                    known.insert(vm.id.key(), v.spec.os_type);
                    if let Some(gw) = v.spec.gateway {
                        gateway_of.insert(vm.id.key(), gw);
                    }
                }
            }
            let resolved = match resolve(policy, |id| known.get(&id.key()).copied()) {
                Ok(p) => p,
                Err(invalid) => return reject(ctx, audit, invalid),
            };
            let existing: Option<i64> = ctx
                .conn
                .query_row("SELECT pid FROM policies WHERE key = ?1", [&key], |r| r.get(0))
                .optional()
                .map_err(backend)?;
            // JIT may be switched off for a subscription or resource group by a security policy.
            let disabled: Vec<String> = ctx
                .conn
                .prepare_cached("SELECT scope FROM security_policies WHERE jit_enabled = 0")
                .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect())
                .map_err(backend)?;
            for (i, vm) in resolved.vms.iter().enumerate() {
                if let Some(scope) = disabled.iter().find(|s| jitgate_core::rbac::scope_covers(s, vm.id.as_str())) {
                    let mut invalid = Invalid::conflict(
                        "JitDisabledBySecurityPolicy",
                        format!("JIT is disabled by a security policy on '{scope}'; virtual machine '{}' cannot be enabled", vm.id),
                    );
                    invalid.target = Some(format!("properties.virtualMachines[{i}].id"));
                    return reject(ctx, audit, invalid);
                }
            }
            // A VM is protected by one policy at a time.
            for (i, vm) in resolved.vms.iter().enumerate() {
                let other: Option<String> = ctx
                    .conn
                    .query_row(
                        "SELECT p.key FROM policy_vms v JOIN policies p ON p.pid = v.pid WHERE v.vm_key = ?1 AND p.key <> ?2",
                        params![vm.id.key(), key],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(backend)?;
                if let Some(other) = other {
                    let mut invalid = Invalid::conflict(
                        "VirtualMachineInAnotherPolicy",
                        format!("virtual machine '{}' is already protected by policy '{other}'", vm.id),
                    );
                    invalid.target = Some(format!("properties.virtualMachines[{i}].id"));
                    return reject(ctx, audit, invalid);
                }
            }
            // A gateway's public ports are one namespace across all policies.
            let mut gateways: Vec<String> = Vec::new();
            for vm in &resolved.vms {
                if let Some(gw) = gateway_of.get(&vm.id.key()) {
                    if !gateways.iter().any(|g| g.eq_ignore_ascii_case(gw)) {
                        gateways.push(gw.clone());
                    }
                }
            }
            for gw in &gateways {
                let mut new = Vec::new();
                for (i, vm) in resolved.vms.iter().enumerate() {
                    if !gateway_of.get(&vm.id.key()).is_some_and(|g| g.eq_ignore_ascii_case(gw)) {
                        continue;
                    }
                    for (j, p) in vm.ports.iter().enumerate() {
                        if let Some(m) = p.mapped_port {
                            new.push(MappedClaim {
                                policy: resolved.reference.id(),
                                vm: vm.id.name().to_owned(),
                                number: p.number,
                                protocol: p.protocol,
                                mapped_port: m,
                                target: Some(format!("properties.virtualMachines[{i}].ports[{j}].mappedPort")),
                            });
                        }
                    }
                }
                let held = rows::gateway_claims(ctx.conn, &resolved.reference.subscription, gw, &key, "")
                    .map_err(backend)?;
                if let Err(invalid) = check_mapped_ports(gw, &new, &held) {
                    return reject(ctx, audit, invalid);
                }
            }
            let now = nanos(audit.time);
            let r = &resolved.reference;
            let pid = match existing {
                Some(pid) => {
                    ctx.conn
                        .execute("UPDATE policies SET kind = ?2, updated = ?3 WHERE pid = ?1", params![pid, resolved.kind, now])
                        .map_err(backend)?;
                    ctx.conn.execute("DELETE FROM policy_ports WHERE pid = ?1", [pid]).map_err(backend)?;
                    ctx.conn.execute("DELETE FROM policy_vms WHERE pid = ?1", [pid]).map_err(backend)?;
                    pid
                }
                None => {
                    ctx.conn
                        .execute(
                            "INSERT INTO policies (key, subscription, resource_group, location, name, sub_key, rg_key, loc_key, \
                             kind, created, updated) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10)",
                            params![
                                key,
                                r.subscription,
                                r.resource_group,
                                r.location,
                                r.name,
                                r.subscription.to_ascii_lowercase(),
                                r.resource_group.to_ascii_lowercase(),
                                r.location.to_ascii_lowercase(),
                                resolved.kind,
                                now
                            ],
                        )
                        .map_err(backend)?;
                    ctx.conn.last_insert_rowid()
                }
            };
            insert_policy_body(ctx.conn, pid, &resolved).map_err(backend)?;
            rows::bump_revision(ctx.conn).map_err(backend)?;
            let event = audit
                .succeeded()
                .with("created", existing.is_none().to_string())
                .with("ports", port_summary(&resolved));
            ctx.audit(&event).map_err(backend)?;
            let (_, record) = rows::load_policy(ctx.conn, &key).map_err(backend)?.ok_or_else(|| backend("the policy vanished"))?;
            Ok(record)
        })
        .await
    }

    async fn get_policy(&self, policy: &PolicyRef) -> StoreResult<Option<PolicyRecord>> {
        let key = policy.key();
        self.read(move |c| Ok(rows::load_policy(c, &key)?.map(|(_, r)| r))).await
    }

    async fn list_policies(
        &self,
        scope: &ListScope,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<PolicyRecord>> {
        let (filter, mut args) = scope_query(scope);
        let after = after.unwrap_or("").to_owned();
        self.read(move |c| {
            let sql = format!(
                "SELECT key FROM policies WHERE {filter} AND key > ?{} ORDER BY key LIMIT {}",
                args.len() + 1,
                limit
            );
            args.push(after);
            let keys: Vec<String> = c
                .prepare(&sql)?
                .query_map(rusqlite::params_from_iter(args.iter()), |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let mut out = Vec::with_capacity(keys.len());
            for key in keys {
                if let Some((_, record)) = rows::load_policy(c, &key)? {
                    out.push(record);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn delete_policy(&self, policy: &PolicyRef, audit: AuditEvent) -> StoreResult<bool> {
        let key = policy.key();
        self.write(move |ctx| {
            let pid: Option<i64> = ctx
                .conn
                .query_row("SELECT pid FROM policies WHERE key = ?1", [&key], |r| r.get(0))
                .optional()
                .map_err(backend)?;
            let Some(pid) = pid else { return Ok(false) };
            let revoked = grants::transition_where(
                ctx.conn,
                "pid = ?1",
                vec![Value::Integer(pid)],
                &lifecycle::ENDED_BY_POLICY_DELETE,
                lifecycle::policy_deleted,
                By::Nobody,
            )
            .map_err(backend)?;
            for table in ["policy_ports", "policy_vms", "policies"] {
                ctx.conn.execute(&format!("DELETE FROM {table} WHERE pid = ?1"), [pid]).map_err(backend)?;
            }
            rows::bump_revision(ctx.conn).map_err(backend)?;
            ctx.audit(&audit.succeeded().with("revokedGrants", revoked.to_string())).map_err(backend)?;
            Ok(true)
        })
        .await
    }

    async fn initiate(&self, cmd: InitiateCommand, audit: AuditEvent) -> StoreResult<InitiateOutcome> {
        self.write(move |ctx| {
            let key = cmd.policy.key();
            let Some((pid, policy)) = rows::load_policy_only(ctx.conn, &key).map_err(backend)? else {
                let message = format!("JIT network access policy '{}' was not found", cmd.policy.id());
                return reject(ctx, audit, Invalid::not_found(codes::POLICY_NOT_FOUND, message));
            };
            if let Some(client_id) = &cmd.client_request_id {
                let earlier: Option<i64> = ctx
                    .conn
                    .prepare_cached("SELECT rid FROM requests WHERE pid = ?1 AND principal = ?2 AND client_request_id = ?3")
                    .and_then(|mut s| s.query_row(params![pid, cmd.requestor, client_id], |r| r.get(0)).optional())
                    .map_err(backend)?;
                if let Some(rid) = earlier {
                    let request = rows::load_request(ctx.conn, rid).map_err(backend)?;
                    return Ok(InitiateOutcome { request, replayed: true });
                }
            }
            let plan = match decide(&policy, &cmd.draft, cmd.caller, cmd.now) {
                Ok(plan) => plan,
                Err(invalid) => return reject(ctx, audit, invalid),
            };
            let policy_id = policy.reference.id();
            ctx.conn
                .prepare_cached(
                    "INSERT INTO requests (pid, policy_id, requestor, principal, start_time, justification, client_request_id) \
                     VALUES (?1, ?2, ?3, ?3, ?4, ?5, ?6)",
                )
                .and_then(|mut s| {
                    s.execute(params![pid, policy_id, cmd.requestor, nanos(plan.start_time), plan.justification, cmd.client_request_id])
                })
                .map_err(backend)?;
            let rid = ctx.conn.last_insert_rowid();
            let mut records = Vec::with_capacity(plan.grants.len());
            let (mut ports, mut sources, mut ends) = (Vec::new(), Vec::new(), Vec::new());
            for (ord, g) in plan.grants.iter().enumerate() {
                let skey = g.supersede_key();
                // A grant that needs approval waits (and opens nothing), a scheduled one opens
                // later: each supersedes older grants only once it opens.
                let state = lifecycle::start(g, cmd.now);
                if state.is_live() {
                    grants::supersede_older(ctx.conn, pid, &skey).map_err(backend)?;
                }
                let (form, texts) = encode_sources(&g.sources);
                // Behind a gateway the grant carries the connection details: the gateway's public
                // address and the mapped port (when the policy port maps one).
                let (mapped_port, public_ip) = match rows::get_vm(ctx.conn, &g.vm_id.key()).map_err(backend)? {
                    Some(vm) if vm.spec.gateway.is_some() => (
                        policy.vm(&g.vm_id.key()).and_then(|v| v.port(g.number)).and_then(|r| r.mapped_port),
                        vm.agent.and_then(|a| a.public_address).map(|a| a.to_string()),
                    ),
                    _ => (None, None),
                };
                ctx.conn
                    .prepare_cached(
                        "INSERT INTO grants (rid, pid, ord, policy_id, vm_id, vm_key, number, protocol, source_form, sources, \
                         supersede_key, end_time, status, status_reason, mapped_port, public_ip, window_ns, opens_at) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?15, ?16, ?13, ?14, ?17, ?18)",
                    )
                    .and_then(|mut s| {
                        s.execute(params![
                            rid,
                            pid,
                            ord as i64,
                            policy_id,
                            g.vm_id.as_str(),
                            g.vm_id.key(),
                            g.number,
                            g.protocol.as_str(),
                            form,
                            texts,
                            skey,
                            nanos(state.end_time),
                            mapped_port,
                            public_ip,
                            state.status.as_str(),
                            state.reason.as_str(),
                            grants::window_nanos(&state),
                            nanos(g.opens_at)
                        ])
                    })
                    .map_err(backend)?;
                ports.push(format!("{}:{}", g.vm_id.name(), g.number));
                sources.push(texts.replace('\n', " "));
                ends.push(rfc3339(g.end_time));
                records.push(GrantRecord {
                    vm_id: g.vm_id.as_str().to_owned(),
                    number: g.number,
                    protocol: g.protocol,
                    sources: g.sources.clone(),
                    end_time: state.end_time,
                    status: state.status,
                    status_reason: state.reason,
                    mapped_port,
                    public_ip,
                });
            }
            let mut event = audit
                .succeeded()
                .with("requestId", rid.to_string())
                .with("ports", ports.join(","))
                .with("sources", sources.join(","))
                .with("endTimeUtc", ends.join(","));
            if let Some(j) = &plan.justification {
                event = event.with("justification", j.clone());
            }
            rows::bump_revision(ctx.conn).map_err(backend)?;
            ctx.audit(&event).map_err(backend)?;
            hooks::enqueue(ctx.conn, "requested", rid, cmd.now).map_err(backend)?;
            if records.iter().any(|g| lifecycle::LIVE.contains(&g.status)) {
                hooks::enqueue(ctx.conn, "opened", rid, cmd.now).map_err(backend)?;
            }
            let request = AccessRequestRecord {
                id: rid,
                requestor: cmd.requestor,
                start_time: plan.start_time,
                justification: plan.justification,
                grants: records,
                pending_extension: None,
            };
            Ok(InitiateOutcome { request, replayed: false })
        })
        .await
    }

    async fn expire_due(&self, now: OffsetDateTime) -> StoreResult<ExpirySweep> {
        self.write(move |ctx| {
            type Due = (i64, i64, String, String, u16, String, lifecycle::GrantState);
            let due: Vec<Due> = ctx
                .conn
                .prepare_cached(&format!(
                    "SELECT gid, rid, policy_id, vm_id, number, sources, {STATE_COLUMNS} FROM grants \
                     WHERE {} AND end_time <= ?1 ORDER BY end_time",
                    grants::status_in("status", 2, &lifecycle::EXPIRING)
                ))
                .and_then(|mut s| {
                    s.query_map(grants::bind([Value::Integer(nanos(now))], &lifecycle::EXPIRING), |r| {
                        Ok((
                            r.get(0)?,
                            r.get(1)?,
                            r.get(2)?,
                            r.get(3)?,
                            r.get(4)?,
                            r.get(5)?,
                            grants::state_from_row(r, 6)?,
                        ))
                    })?
                    .collect()
                })
                .map_err(backend)?;
            let mut expired = 0;
            for (gid, rid, policy_id, vm_id, number, sources, state) in &due {
                // A pending request nobody approved in time expires unopened.
                let Some(new) = lifecycle::expire(*state, now) else { continue };
                grants::persist(ctx.conn, *gid, &new, By::Nobody).map_err(backend)?;
                expired += 1;
                let event = AuditEvent {
                    time: now,
                    operation: ops::GRANT_EXPIRE.into(),
                    status: jitgate_core::audit::AuditStatus::Succeeded,
                    caller: "jitgate".into(),
                    caller_ip: None,
                    resource_id: policy_id.clone(),
                    correlation_id: format!("expiry-{gid}"),
                    properties: Default::default(),
                }
                .with("requestId", rid.to_string())
                .with("virtualMachine", vm_id.clone())
                .with("port", number.to_string())
                .with("sources", sources.replace('\n', " "))
                .with("endTimeUtc", rfc3339(state.end_time))
                .with("reason", new.reason.as_str());
                ctx.audit(&event).map_err(backend)?;
                hooks::enqueue(ctx.conn, "expired", *rid, now).map_err(backend)?;
            }
            // Scheduled windows that have begun: open them (newer grants replace older ones).
            type Starting = (i64, i64, i64, String, String, lifecycle::GrantState);
            let starting: Vec<Starting> = ctx
                .conn
                .prepare_cached(&format!(
                    "SELECT gid, rid, pid, supersede_key, policy_id, {STATE_COLUMNS} FROM grants \
                     WHERE {} AND opens_at <= ?1",
                    grants::status_in("status", 2, &lifecycle::OPENING)
                ))
                .and_then(|mut s| {
                    s.query_map(grants::bind([Value::Integer(nanos(now))], &lifecycle::OPENING), |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, grants::state_from_row(r, 5)?))
                    })?
                    .collect()
                })
                .map_err(backend)?;
            let mut activated = 0;
            for (gid, rid, pid, skey, policy_id, state) in &starting {
                let Some(new) = lifecycle::open(*state, now) else { continue };
                grants::supersede_older(ctx.conn, *pid, skey).map_err(backend)?;
                grants::persist(ctx.conn, *gid, &new, By::Nobody).map_err(backend)?;
                activated += 1;
                let event = AuditEvent {
                    time: now,
                    operation: ops::GRANT_OPEN.into(),
                    status: jitgate_core::audit::AuditStatus::Succeeded,
                    caller: "jitgate".into(),
                    caller_ip: None,
                    resource_id: policy_id.clone(),
                    correlation_id: format!("open-{gid}"),
                    properties: Default::default(),
                }
                .with("requestId", rid.to_string());
                ctx.audit(&event).map_err(backend)?;
                hooks::enqueue(ctx.conn, "opened", *rid, now).map_err(backend)?;
            }
            if activated > 0 {
                rows::bump_revision(ctx.conn).map_err(backend)?;
            }
            // Live grants about to end: tell the webhooks once.
            let soon: Vec<(i64, i64)> = ctx
                .conn
                .prepare_cached(&format!(
                    "SELECT gid, rid FROM grants WHERE {} AND warned = 0 AND end_time <= ?1",
                    grants::status_in("status", 2, &lifecycle::LIVE)
                ))
                .and_then(|mut s| {
                    let warn_from = nanos(now + jitgate_store::EXPIRING_SOON);
                    s.query_map(grants::bind([Value::Integer(warn_from)], &lifecycle::LIVE), |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })?
                    .collect()
                })
                .map_err(backend)?;
            let mut announced = std::collections::HashSet::new();
            for (gid, rid) in &soon {
                ctx.conn.execute("UPDATE grants SET warned = 1 WHERE gid = ?1", [gid]).map_err(backend)?;
                if announced.insert(*rid) {
                    hooks::enqueue(ctx.conn, "expiringSoon", *rid, now).map_err(backend)?;
                }
            }
            Ok(ExpirySweep { expired, activated, warned: soon.len() })
        })
        .await
    }

    async fn next_expiry(&self) -> StoreResult<Option<OffsetDateTime>> {
        self.read(|c| {
            let n: Option<i64> = c
                .prepare_cached(&format!(
                    "SELECT min(t) FROM (SELECT min(end_time) AS t FROM grants WHERE {} \
                     UNION ALL SELECT min(opens_at) FROM grants WHERE {} \
                     UNION ALL SELECT min(end_time) - ?1 FROM grants WHERE {} AND warned = 0)",
                    grants::status_in("status", 2, &lifecycle::EXPIRING),
                    grants::status_in("status", 2 + lifecycle::EXPIRING.len(), &lifecycle::OPENING),
                    grants::status_in(
                        "status",
                        2 + lifecycle::EXPIRING.len() + lifecycle::OPENING.len(),
                        &lifecycle::LIVE
                    ),
                ))?
                .query_row(
                    grants::bind(
                        [Value::Integer(jitgate_store::EXPIRING_SOON.whole_nanoseconds() as i64)],
                        &[&lifecycle::EXPIRING[..], &lifecycle::OPENING[..], &lifecycle::LIVE[..]].concat(),
                    ),
                    |r| r.get(0),
                )?;
            n.map(from_nanos).transpose()
        })
        .await
    }

    async fn record(&self, event: AuditEvent) -> StoreResult<()> {
        self.write(move |ctx| ctx.audit(&event).map(|_| ()).map_err(backend)).await
    }

    async fn record_many(&self, events: Vec<AuditEvent>) -> StoreResult<()> {
        self.write(move |ctx| {
            for e in &events {
                ctx.audit(e).map_err(backend)?;
            }
            Ok(())
        })
        .await
    }

    async fn audit_records(&self, after: u64, limit: usize) -> StoreResult<Vec<AuditRecord>> {
        self.read(move |c| {
            c.prepare_cached("SELECT * FROM audit WHERE seq > ?1 ORDER BY seq LIMIT ?2")?
                .query_map(params![after as i64, limit as i64], rows::audit_from_row)?
                .collect()
        })
        .await
    }

    async fn revoke_request(&self, id: i64, revoked_by: &str, audit: AuditEvent) -> StoreResult<AccessRequestRecord> {
        let revoked_by = revoked_by.to_owned();
        self.write(move |ctx| {
            let Some((facts, gids)) = grants::request_facts(ctx.conn, id).map_err(backend)? else {
                return reject(ctx, audit, request_not_found(id));
            };
            let changes = match lifecycle::revoke(&facts) {
                Ok(changes) => changes,
                Err(invalid) => return reject(ctx, audit, invalid),
            };
            grants::apply(ctx.conn, &gids, &changes, By::Revoker(&revoked_by)).map_err(backend)?;
            rows::bump_revision(ctx.conn).map_err(backend)?;
            let now = audit.time;
            let mut event =
                audit.succeeded().with("requestId", id.to_string()).with("revokedGrants", changes.len().to_string());
            event.resource_id = facts.policy_id;
            ctx.audit(&event).map_err(backend)?;
            hooks::enqueue(ctx.conn, "revoked", id, now).map_err(backend)?;
            rows::load_request(ctx.conn, id).map_err(backend)
        })
        .await
    }

    async fn decide_request(
        &self,
        id: i64,
        approve: bool,
        decider: &str,
        reason: Option<String>,
        now: OffsetDateTime,
        audit: AuditEvent,
    ) -> StoreResult<AccessRequestRecord> {
        let decider = decider.to_owned();
        self.write(move |ctx| {
            let mut audit = audit;
            let Some((facts, gids)) = grants::request_facts(ctx.conn, id).map_err(backend)? else {
                return reject(ctx, audit, request_not_found(id));
            };
            audit.resource_id = facts.policy_id.clone();
            let decision = match lifecycle::decide(&facts, approve, &decider, now) {
                Ok(decision) => decision,
                Err(invalid) => return reject(ctx, audit, invalid),
            };
            let verdict =
                |approved: bool| if approved { StatusReason::Approved } else { StatusReason::Denied }.as_str();
            let requestor = facts.requestor.clone();
            let succeeded = move |audit: AuditEvent| {
                audit.succeeded().with("requestId", id.to_string()).with("requestor", requestor)
            };
            let (approved, mut event) = match decision {
                Decision::Grants { approved, changes } => {
                    for (i, state) in &changes {
                        let gid = grants::gid_at(&gids, *i).map_err(backend)?;
                        if approved {
                            // The approved grant replaces older ones with its key.
                            let (pid, skey): (i64, String) = ctx
                                .conn
                                .query_row("SELECT pid, supersede_key FROM grants WHERE gid = ?1", [gid], |r| {
                                    Ok((r.get(0)?, r.get(1)?))
                                })
                                .map_err(backend)?;
                            grants::supersede_older(ctx.conn, pid, &skey).map_err(backend)?;
                        }
                        grants::persist(ctx.conn, gid, state, By::Decider(&decider)).map_err(backend)?;
                    }
                    rows::bump_revision(ctx.conn).map_err(backend)?;
                    let event =
                        succeeded(audit).with("decision", verdict(approved)).with("grants", changes.len().to_string());
                    (approved, event)
                }
                Decision::Extension { approved, end_time, changes } => {
                    clear_extension(ctx.conn, id)?;
                    if approved {
                        grants::apply(ctx.conn, &gids, &changes, By::Decider(&decider)).map_err(backend)?;
                        rows::bump_revision(ctx.conn).map_err(backend)?;
                    }
                    let mut event = succeeded(audit)
                        .with("decision", verdict(approved))
                        .with("extensionEndTimeUtc", rfc3339(end_time));
                    if let Some(r) = reason {
                        event = event.with("reason", r);
                    }
                    ctx.audit(&event).map_err(backend)?;
                    hooks::enqueue(ctx.conn, if approved { "approved" } else { "denied" }, id, now).map_err(backend)?;
                    return rows::load_request(ctx.conn, id).map_err(backend);
                }
                Decision::ExtensionLapsed(invalid) => {
                    clear_extension(ctx.conn, id)?;
                    return reject(ctx, audit, invalid);
                }
            };
            if let Some(r) = reason {
                event = event.with("reason", r);
            }
            ctx.audit(&event).map_err(backend)?;
            if approved {
                hooks::enqueue(ctx.conn, "approved", id, now).map_err(backend)?;
                hooks::enqueue(ctx.conn, "opened", id, now).map_err(backend)?;
            } else {
                hooks::enqueue(ctx.conn, "denied", id, now).map_err(backend)?;
            }
            rows::load_request(ctx.conn, id).map_err(backend)
        })
        .await
    }

    async fn extend_request(
        &self,
        id: i64,
        new_end: OffsetDateTime,
        now: OffsetDateTime,
        audit: AuditEvent,
    ) -> StoreResult<AccessRequestRecord> {
        self.write(move |ctx| {
            let mut audit = audit;
            let Some((facts, gids)) = grants::request_facts(ctx.conn, id).map_err(backend)? else {
                return reject(ctx, audit, request_not_found(id));
            };
            audit.resource_id = facts.policy_id.clone();
            let policy = rows::load_policy_only(ctx.conn, &facts.policy_id.to_ascii_lowercase())
                .map_err(backend)?
                .map(|(_, p)| p);
            let changes = match lifecycle::extend(&facts, policy.as_ref(), new_end, now) {
                Err(invalid) => return reject(ctx, audit, invalid),
                Ok(Extension::NeedsApproval) => {
                    // The grants keep their end until an approver (not the one who asked) agrees.
                    ctx.conn
                        .execute(
                            "UPDATE requests SET ext_end = ?2, ext_by = ?3 WHERE rid = ?1",
                            params![id, nanos(new_end), audit.caller],
                        )
                        .map_err(backend)?;
                    let event =
                        audit.succeeded().with("requestId", id.to_string()).with("endTimeUtc", rfc3339(new_end));
                    ctx.audit(&event.with("decision", GrantStatus::Pending.as_str())).map_err(backend)?;
                    hooks::enqueue(ctx.conn, "requested", id, now).map_err(backend)?;
                    return rows::load_request(ctx.conn, id).map_err(backend);
                }
                Ok(Extension::Extended(changes)) => changes,
            };
            grants::apply(ctx.conn, &gids, &changes, By::Nobody).map_err(backend)?;
            rows::bump_revision(ctx.conn).map_err(backend)?;
            ctx.audit(&audit.succeeded().with("requestId", id.to_string()).with("endTimeUtc", rfc3339(new_end)))
                .map_err(backend)?;
            rows::load_request(ctx.conn, id).map_err(backend)
        })
        .await
    }

    async fn get_request(&self, id: i64) -> StoreResult<Option<(String, AccessRequestRecord)>> {
        self.read(move |c| {
            let policy: Option<String> =
                c.query_row("SELECT policy_id FROM requests WHERE rid = ?1", [id], |r| r.get(0)).optional()?;
            match policy {
                Some(p) => Ok(Some((p, rows::load_request(c, id)?))),
                None => Ok(None),
            }
        })
        .await
    }

    async fn revision(&self) -> StoreResult<u64> {
        self.read(rows::revision).await
    }

    async fn create_join_token(&self, spec: JoinTokenSpec, token_hash: &str, audit: AuditEvent) -> StoreResult<()> {
        let hash = token_hash.to_owned();
        self.write(move |ctx| {
            ctx.conn
                .execute(
                    "INSERT INTO join_tokens (hash, subscription, resource_group, location, mode, created, expires, created_by, vm) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    params![
                        hash,
                        spec.subscription,
                        spec.resource_group,
                        spec.location,
                        spec.mode.as_str(),
                        nanos(audit.time),
                        nanos(spec.expires),
                        audit.caller,
                        spec.vm
                    ],
                )
                .map_err(backend)?;
            let mut event = audit
                .succeeded()
                .with("mode", spec.mode.as_str())
                .with("location", spec.location.clone())
                .with("expiresOn", rfc3339(spec.expires));
            if let Some(vm) = &spec.vm {
                event = event.with("vm", vm.clone());
            }
            ctx.audit(&event).map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn list_join_tokens(&self) -> StoreResult<Vec<JoinTokenRecord>> {
        self.read(|c| {
            c.prepare_cached(
                "SELECT subscription, resource_group, location, mode, expires, created, created_by, used, vm FROM join_tokens ORDER BY created",
            )?
            .query_map([], |r| {
                let mode: String = r.get(3)?;
                let used: Option<i64> = r.get(7)?;
                Ok(JoinTokenRecord {
                    spec: JoinTokenSpec {
                        subscription: r.get(0)?,
                        resource_group: r.get(1)?,
                        location: r.get(2)?,
                        mode: AgentMode::parse(&mode).ok_or_else(|| rows::corrupt(format!("mode {mode}")))?,
                        expires: from_nanos(r.get(4)?)?,
                        vm: r.get(8)?,
                    },
                    created: from_nanos(r.get(5)?)?,
                    created_by: r.get(6)?,
                    used: used.map(from_nanos).transpose()?,
                })
            })?
            .collect()
        })
        .await
    }

    async fn join_agent(&self, join: AgentJoin, audit: AuditEvent) -> StoreResult<AgentRecord> {
        self.write(move |ctx| {
            type TokenRow = (String, String, String, String, i64, Option<i64>, Option<String>);
            let token: Option<TokenRow> = ctx
                .conn
                .query_row(
                    "SELECT subscription, resource_group, location, mode, expires, used, vm FROM join_tokens WHERE hash = ?1",
                    [&join.token_hash],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)),
                )
                .optional()
                .map_err(backend)?;
            let denied = |m: &str| Invalid::input("InvalidJoinToken", None, m.to_owned());
            let Some((sub, rg, loc, mode, expires, used, for_vm)) = token else {
                return reject(ctx, audit, denied("the join token is unknown"));
            };
            if used.is_some() {
                return reject(ctx, audit, denied("the join token was already used; create a new one"));
            }
            if expires <= nanos(join.now) {
                return reject(ctx, audit, denied("the join token has expired; create a new one"));
            }
            if mode != join.agent.mode.as_str() {
                let m = format!("the join token is for {mode} mode, the agent asked for {}", join.agent.mode.as_str());
                return reject(ctx, audit, denied(&m));
            }
            if let Some(for_vm) = &for_vm {
                if !for_vm.eq_ignore_ascii_case(&join.agent.name) {
                    let m = format!("the join token was made for virtual machine '{for_vm}'; the agent asked to join as '{}'", join.agent.name);
                    return reject(ctx, audit, denied(&m));
                }
            }
            let now = nanos(join.now);
            let addresses: Vec<String> = join.agent.addresses.iter().map(|a| a.to_string()).collect();
            let mut event = audit
                .clone()
                .succeeded()
                .with("agentId", join.id.clone())
                .with("mode", join.agent.mode.as_str())
                .with("name", join.agent.name.clone())
                .with("addresses", addresses.join(" "));
            let mut location = loc.clone();
            let vm = match join.agent.mode {
                AgentMode::Host => match agents::host_vm_id(&sub, &rg, &join.agent.name) {
                    Ok(id) => Some(id),
                    Err(m) => return reject(ctx, audit, Invalid::input("InvalidAgentName", Some("name".into()), m)),
                },
                AgentMode::Gateway => {
                    if let Some(g) = rows::gateway_agent(ctx.conn, &sub, &join.agent.name).map_err(backend)? {
                        let m = format!(
                            "a gateway named '{}' has already joined subscription '{sub}' (agent {}); revoke it first \
                             (jitgate agent rm {}) to join a replacement",
                            g.name, g.id, g.id
                        );
                        return reject(ctx, audit, Invalid::conflict("GatewayExists", m));
                    }
                    None
                }
            };
            if let Some(vm) = &vm {
                let address = join.agent.addresses.first().map(|a| a.to_string());
                match rows::get_vm(ctx.conn, &vm.key()).map_err(backend)? {
                    None => {
                        ctx.conn
                            .execute(
                                "INSERT INTO vms (key, id, os_type, location, address, agent_id, created, updated) \
                                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
                                params![vm.key(), vm.as_str(), join.agent.os_type.as_str(), loc, address, join.id, now],
                            )
                            .map_err(backend)?;
                    }
                    // An existing VM changes its enforcement point only when an operator made
                    // this token for it; never as a side effect of some other host token.
                    Some(_) if for_vm.is_none() => {
                        let m = format!(
                            "virtual machine '{vm}' is already registered; an agent joins as an existing VM only with a \
                             join token made for it (jitgate agent token create --vm {} …, which needs \
                             Microsoft.Compute/virtualMachines/write on the VM)",
                            vm.name()
                        );
                        return reject(ctx, audit, Invalid::conflict("VirtualMachineExists", m));
                    }
                    Some(existing) if existing.spec.gateway.is_some() => {
                        let m = format!(
                            "virtual machine '{vm}' is enforced by gateway '{}'; detach it from the gateway first \
                             (PUT /api/v1/vms without gateway) before a host agent joins as it",
                            existing.spec.gateway.unwrap_or_default()
                        );
                        return reject(ctx, audit, Invalid::conflict("VirtualMachineBehindGateway", m));
                    }
                    Some(existing) => {
                        // The explicit re-bind: new agent and address; location and OS stay.
                        location = existing.spec.location.clone();
                        ctx.conn
                            .execute(
                                "UPDATE vms SET address = ?2, agent_id = ?3, updated = ?4 WHERE key = ?1",
                                params![vm.key(), address, join.id, now],
                            )
                            .map_err(backend)?;
                        event = event
                            .with("rebound", "true")
                            .with("previousAgent", existing.agent.map(|a| a.id).unwrap_or_default())
                            .with("previousAddress", existing.spec.address.map(|a| a.to_string()).unwrap_or_default())
                            .with("address", address.unwrap_or_default());
                    }
                }
                // The VM's earlier host agent (if any) is replaced: its credential stops working.
                ctx.conn.execute("DELETE FROM agents WHERE vm_key = ?1 AND mode = 'host'", [vm.key()]).map_err(backend)?;
            }
            ctx.conn.execute("UPDATE join_tokens SET used = ?2 WHERE hash = ?1", params![join.token_hash, now]).map_err(backend)?;
            ctx.conn
                .execute(
                    "INSERT INTO agents (id, name, mode, subscription, resource_group, location, vm_key, vm_id, credential_hash, \
                     os_type, addresses, public_address, hostname, joined) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                    params![
                        join.id,
                        join.agent.name,
                        join.agent.mode.as_str(),
                        sub,
                        rg,
                        location,
                        vm.as_ref().map(|v| v.key()),
                        vm.as_ref().map(|v| v.as_str().to_owned()),
                        join.credential_hash,
                        join.agent.os_type.as_str(),
                        addresses.join(" "),
                        join.agent.public_address.map(|a| a.to_string()),
                        join.agent.hostname,
                        now
                    ],
                )
                .map_err(backend)?;
            rows::bump_revision(ctx.conn).map_err(backend)?;
            if let Some(vm) = &vm {
                event.resource_id = vm.as_str().to_owned();
            }
            ctx.audit(&event).map_err(backend)?;
            agents::agent_by_id(ctx.conn, &join.id).map_err(backend)?.ok_or_else(|| backend("the agent vanished"))
        })
        .await
    }

    async fn agent_by_credential(&self, credential_hash: &str) -> StoreResult<Option<AgentRecord>> {
        let hash = credential_hash.to_owned();
        self.read(move |c| {
            c.prepare_cached("SELECT * FROM agents WHERE credential_hash = ?1")?
                .query_row([hash], rows::agent_from_row)
                .optional()
        })
        .await
    }

    async fn list_agents(&self) -> StoreResult<Vec<AgentRecord>> {
        self.read(|c| {
            c.prepare_cached("SELECT * FROM agents ORDER BY joined")?.query_map([], rows::agent_from_row)?.collect()
        })
        .await
    }

    async fn get_agent(&self, id: &str) -> StoreResult<Option<AgentRecord>> {
        let id = id.to_owned();
        self.read(move |c| agents::agent_by_id(c, &id)).await
    }

    async fn gateway_agent(&self, subscription: &str, name: &str) -> StoreResult<Option<AgentRecord>> {
        let (sub, name) = (subscription.to_owned(), name.to_owned());
        self.read(move |c| rows::gateway_agent(c, &sub, &name)).await
    }

    async fn delete_agent(&self, id: &str, audit: AuditEvent) -> StoreResult<AgentRecord> {
        let id = id.to_owned();
        self.write(move |ctx| {
            let Some(agent) = agents::agent_by_id(ctx.conn, &id).map_err(backend)? else {
                return reject(ctx, audit, Invalid::not_found("AgentNotFound", format!("agent '{id}' is not known")));
            };
            let vms: Vec<String> = match agent.mode {
                AgentMode::Host => ctx
                    .conn
                    .prepare_cached("SELECT id FROM vms WHERE agent_id = ?1 ORDER BY key")
                    .and_then(|mut st| st.query_map([&id], |r| r.get(0))?.collect()),
                AgentMode::Gateway => ctx
                    .conn
                    .prepare_cached(
                        "SELECT id FROM vms WHERE lower(gateway) = lower(?1) AND substr(key, 1, length(?2)) = ?2 ORDER BY key",
                    )
                    .and_then(|mut st| {
                        st.query_map(params![agent.name, rows::subscription_prefix(&agent.subscription)], |r| r.get(0))?
                            .collect()
                    }),
            }
            .map_err(backend)?;
            ctx.conn.execute("UPDATE vms SET agent_id = NULL WHERE agent_id = ?1", [&id]).map_err(backend)?;
            ctx.conn.execute("DELETE FROM agents WHERE id = ?1", [&id]).map_err(backend)?;
            rows::bump_revision(ctx.conn).map_err(backend)?;
            const LISTED: usize = 50;
            let mut listed = vms.iter().take(LISTED).cloned().collect::<Vec<_>>().join(" ");
            if vms.len() > LISTED {
                listed.push_str(&format!(" (and {} more)", vms.len() - LISTED));
            }
            let event = audit
                .succeeded()
                .with("agentId", agent.id.clone())
                .with("name", agent.name.clone())
                .with("mode", agent.mode.as_str())
                .with("unenforcedVms", listed);
            ctx.audit(&event).map_err(backend)?;
            Ok(agent)
        })
        .await
    }

    async fn rotate_agent_credential(
        &self,
        id: &str,
        old_hash: &str,
        new_hash: &str,
        audit: AuditEvent,
    ) -> StoreResult<AgentRecord> {
        let (id, old, new) = (id.to_owned(), old_hash.to_owned(), new_hash.to_owned());
        self.write(move |ctx| {
            let changed = ctx
                .conn
                .execute(
                    "UPDATE agents SET credential_hash = ?3 WHERE id = ?1 AND credential_hash = ?2",
                    params![id, old, new],
                )
                .map_err(backend)?;
            if changed == 0 {
                let m = format!("agent '{id}' is not known or its credential was already replaced");
                return reject(ctx, audit, Invalid::not_found("AgentNotFound", m));
            }
            ctx.audit(&audit.succeeded().with("agentId", id.clone())).map_err(backend)?;
            agents::agent_by_id(ctx.conn, &id).map_err(backend)?.ok_or_else(|| backend("the agent vanished"))
        })
        .await
    }

    async fn agent_state(&self, agent_id: &str, now: OffsetDateTime) -> StoreResult<EnforcementState> {
        let id = agent_id.to_owned();
        let state = self
            .read(move |c| match agents::agent_by_id(c, &id)? {
                Some(agent) => agents::state(c, &agent, now).map(Some),
                None => Ok(None),
            })
            .await?;
        state.ok_or_else(|| {
            StoreError::Rejected(Invalid::not_found("AgentNotFound", format!("agent '{agent_id}' was removed")))
        })
    }

    async fn agent_delivered(&self, agent_id: &str, revision: u64) -> StoreResult<()> {
        let id = agent_id.to_owned();
        let revision = i64::try_from(revision).unwrap_or(i64::MAX);
        self.write(move |ctx| {
            ctx.conn
                .execute(
                    "UPDATE agents SET delivered_revision = max(delivered_revision, ?2) WHERE id = ?1",
                    params![id, revision],
                )
                .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn agent_report(&self, agent_id: &str, report: AgentReport) -> StoreResult<()> {
        let id = agent_id.to_owned();
        self.write(move |ctx| {
            let before: Option<(i64, Option<bool>, i64)> = ctx
                .conn
                .query_row(
                    "SELECT applied_revision, nft_usable, delivered_revision FROM agents WHERE id = ?1",
                    [&id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
                .map_err(backend)?;
            let Some((applied, usable, delivered)) = before else {
                return Err(StoreError::Rejected(Invalid::not_found(
                    "AgentNotFound",
                    format!("agent {id} is not known"),
                )));
            };
            let event = AuditEvent {
                time: report.now,
                operation: ops::AGENT_APPLIED.into(),
                status: if report.nft_usable { AuditStatus::Succeeded } else { AuditStatus::Failed },
                caller: format!("agent:{id}"),
                caller_ip: None,
                resource_id: format!("/agents/{id}"),
                correlation_id: format!("agent-{id}-{}", report.revision),
                properties: Default::default(),
            };
            // An agent can only have applied what it was sent.
            if report.revision > delivered.max(0) as u64 {
                let m = format!(
                    "revision {} was never delivered to this agent (the latest it was sent is {delivered}); \
                     report only revisions from GET /agent/v1/state",
                    report.revision
                );
                let refusal = event.with("revision", report.revision.to_string());
                return reject(ctx, refusal, Invalid::conflict("RevisionNotDelivered", m));
            }
            let revision = report.revision as i64;
            ctx.conn
                .execute(
                    "UPDATE agents SET last_seen = ?2, applied_revision = max(applied_revision, ?3), nft_usable = ?4, \
                     nft_error = ?5 WHERE id = ?1",
                    params![id, nanos(report.now), revision, report.nft_usable, report.nft_error],
                )
                .map_err(backend)?;
            // Audit what changes: a newly applied revision, or a change in nftables health.
            if revision > applied || usable != Some(report.nft_usable) {
                let event = event
                    .with("revision", report.revision.to_string())
                    .with("nftablesUsable", report.nft_usable.to_string())
                    .with("nftablesError", report.nft_error.clone().unwrap_or_default());
                ctx.audit(&event).map_err(backend)?;
            }
            Ok(())
        })
        .await
    }

    async fn agents_for_vms(&self, vm_ids: &[String]) -> StoreResult<Vec<AgentRecord>> {
        let keys: Vec<String> = vm_ids.iter().map(|v| v.to_ascii_lowercase()).collect();
        self.read(move |c| {
            let mut out: Vec<AgentRecord> = Vec::new();
            for key in keys {
                if let Some(vm) = rows::get_vm(c, &key)? {
                    if let Some(agent) = vm.agent {
                        if !out.iter().any(|a| a.id == agent.id) {
                            out.push(agent);
                        }
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn create_principal(&self, name: &str, kind: &str, audit: AuditEvent) -> StoreResult<Principal> {
        let (name, kind) = (name.to_owned(), kind.to_owned());
        self.write(move |ctx| {
            if let Err(invalid) = jitgate_core::identity::validate_local_name(&name) {
                return reject(ctx, audit, invalid);
            }
            if rbac::principal(ctx.conn, &name).map_err(backend)?.is_some() {
                let invalid = Invalid::conflict("PrincipalExists", format!("a principal named '{name}' exists"));
                return reject(ctx, audit, invalid);
            }
            insert_principal(ctx, &name, &kind, audit)
        })
        .await
    }

    async fn oidc_principal(&self, sign_in: OidcSignIn, audit: AuditEvent) -> StoreResult<Principal> {
        let id = sign_in.identity.clone();
        if let Some(p) = self.read(move |c| rbac::oidc_principal(c, &id)).await? {
            if p.display_name == sign_in.display_name {
                return Ok(p);
            }
        }
        self.write(move |ctx| upsert_oidc_principal(ctx, &sign_in, audit)).await
    }

    async fn list_principals(&self) -> StoreResult<Vec<Principal>> {
        self.read(|c| {
            c.prepare_cached(&format!("SELECT {} FROM principals p ORDER BY p.name", rbac::PRINCIPAL_COLUMNS))?
                .query_map([], rbac::principal_from_row)?
                .collect()
        })
        .await
    }

    async fn get_principal(&self, name: &str) -> StoreResult<Option<Principal>> {
        let name = name.to_owned();
        self.read(move |c| rbac::principal(c, &name)).await
    }

    async fn delete_principal(&self, name: &str, audit: AuditEvent) -> StoreResult<Principal> {
        let name = name.to_owned();
        self.write(move |ctx| {
            let Some(p) = rbac::principal(ctx.conn, &name).map_err(backend)? else {
                return reject(
                    ctx,
                    audit,
                    Invalid::not_found("PrincipalNotFound", format!("no principal named '{name}'")),
                );
            };
            let now = nanos(audit.time);
            let own: Vec<i64> = ctx
                .conn
                .prepare_cached("SELECT id FROM tokens WHERE principal_id = ?1")
                .and_then(|mut s| s.query_map([p.id], |r| r.get(0))?.collect())
                .map_err(backend)?;
            ctx.conn
                .execute(
                    "UPDATE tokens SET revoked = ?2 WHERE principal_id = ?1 AND revoked IS NULL",
                    params![p.id, now],
                )
                .map_err(backend)?;
            // Tokens these tokens created (for this principal or others) end with them.
            let descendants = rbac::revoke_with_descendants(ctx.conn, &own, now).map_err(backend)?;
            let removed =
                ctx.conn.execute("DELETE FROM role_assignments WHERE principal_id = ?1", [p.id]).map_err(backend)?;
            // Its own webhooks go with it: they are found by name, and a later principal of the
            // same name must not inherit them.
            ctx.conn
                .execute(
                    "DELETE FROM deliveries WHERE state = 'Pending' AND webhook_id IN \
                     (SELECT id FROM webhooks WHERE lower(principal) = lower(?1))",
                    [&p.name],
                )
                .map_err(backend)?;
            let hooks = ctx
                .conn
                .execute("DELETE FROM webhooks WHERE lower(principal) = lower(?1)", [&p.name])
                .map_err(backend)?;
            // Its access ends with it: live, pending and scheduled grants are revoked, so that a
            // pending request cannot be approved for someone who no longer exists, and a later
            // principal of the same name finds nothing of the old one's left to extend.
            let deleter = audit.caller.clone();
            let ending = &lifecycle::ENDED_BY_PRINCIPAL_DELETE;
            let requests: Vec<i64> = ctx
                .conn
                .prepare_cached(&format!(
                    "SELECT DISTINCT g.rid FROM grants g JOIN requests r ON r.rid = g.rid \
                     WHERE lower(r.principal) = lower(?1) AND {}",
                    grants::status_in("g.status", 2, ending)
                ))
                .and_then(|mut s| s.query_map(grants::bind([Value::Text(p.name.clone())], ending), |r| r.get(0))?.collect())
                .map_err(backend)?;
            let mut ended = 0;
            for rid in &requests {
                ended += grants::transition_where(
                    ctx.conn,
                    "rid = ?1",
                    vec![Value::Integer(*rid)],
                    ending,
                    lifecycle::principal_deleted,
                    By::Revoker(&deleter),
                )
                .map_err(backend)?;
                hooks::enqueue(ctx.conn, "revoked", *rid, audit.time).map_err(backend)?;
            }
            if ended > 0 {
                rows::bump_revision(ctx.conn).map_err(backend)?;
            }
            // The name is freed; an OIDC identity signing in again starts afresh (no roles).
            ctx.conn
                .execute(
                    "UPDATE principals SET name = name || '#deleted-' || id, issuer = NULL, subject = NULL WHERE id = ?1",
                    [p.id],
                )
                .map_err(backend)?;
            let mut event = audit
                .succeeded()
                .with("principal", name.clone())
                .with("removedAssignments", removed.to_string())
                .with("revokedDescendantTokens", descendants.to_string())
                .with("removedWebhooks", hooks.to_string())
                .with("revokedGrants", ended.to_string());
            if let Some(o) = &p.oidc {
                event = event.with("issuer", o.issuer.clone()).with("subject", o.subject.clone());
            }
            ctx.audit(&event).map_err(backend)?;
            Ok(p)
        })
        .await
    }

    async fn create_token(&self, token: NewToken, audit: AuditEvent) -> StoreResult<TokenRecord> {
        self.write(move |ctx| {
            let NewToken { principal, token_hash: hash, expires, origin } = token;
            let Some(p) = rbac::principal(ctx.conn, &principal).map_err(backend)? else {
                return reject(
                    ctx,
                    audit,
                    Invalid::not_found(
                        "PrincipalNotFound",
                        format!("no principal named '{}'", jitgate_core::identity::shown(&principal)),
                    ),
                );
            };
            let parent = match origin {
                TokenOrigin::Token(parent) => {
                    // Checked inside the transaction: a parent revoked a moment ago cannot slip a
                    // child past the revocation of its descendants.
                    let live = rbac::token(ctx.conn, parent)
                        .map_err(backend)?
                        .filter(|t| t.revoked.is_none() && t.expires.is_none_or(|e| e > audit.time));
                    let Some(live) = live else {
                        let mut invalid = Invalid::conflict(
                            "ParentTokenInvalid",
                            format!("token {parent}, which asks for a new token, is revoked or has expired"),
                        );
                        invalid.kind = jitgate_core::invalid::InvalidKind::Forbidden;
                        return reject(ctx, audit, invalid);
                    };
                    if let Some(limit) = live.expires.filter(|l| expires.is_none_or(|e| e > *l)) {
                        let m = format!("a token cannot outlive token {parent}, which creates it (it expires at {})", rfc3339(limit));
                        return reject(ctx, audit, Invalid::input("TokenLifetimeTooLong", Some("expiresIn".into()), m));
                    }
                    Some(parent)
                }
                TokenOrigin::Server | TokenOrigin::IdToken => None,
            };
            ctx.conn
                .execute(
                    "INSERT INTO tokens (principal_id, hash, created, expires, origin, parent_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![p.id, hash, nanos(audit.time), expires.map(nanos), origin.as_str(), parent],
                )
                .map_err(backend)?;
            let id = ctx.conn.last_insert_rowid();
            let mut event = audit
                .succeeded()
                .with("principal", p.name.clone())
                .with("tokenId", id.to_string())
                .with("expiresOn", expires.map(rfc3339).unwrap_or_default())
                .with("createdWith", origin.as_str());
            if let Some(parent) = parent {
                event = event.with("parentTokenId", parent.to_string());
            }
            ctx.audit(&event).map_err(backend)?;
            rbac::token(ctx.conn, id).map_err(backend)?.ok_or_else(|| backend("the token vanished"))
        })
        .await
    }

    async fn list_tokens(&self, principal: &str) -> StoreResult<Vec<TokenRecord>> {
        let principal = principal.to_owned();
        self.read(move |c| {
            c.prepare_cached(&format!("{} WHERE p.name = ?1 ORDER BY t.id", rbac::TOKEN_SELECT))?
                .query_map([principal], rbac::token_from_row)?
                .collect()
        })
        .await
    }

    async fn get_token(&self, id: i64) -> StoreResult<Option<TokenRecord>> {
        self.read(move |c| rbac::token(c, id)).await
    }

    async fn revoke_token(&self, id: i64, audit: AuditEvent) -> StoreResult<TokenRecord> {
        self.write(move |ctx| {
            let Some(t) = rbac::token(ctx.conn, id).map_err(backend)? else {
                return reject(ctx, audit, Invalid::not_found("TokenNotFound", format!("no token with id {id}")));
            };
            let now = nanos(audit.time);
            ctx.conn
                .execute("UPDATE tokens SET revoked = coalesce(revoked, ?2) WHERE id = ?1", params![id, now])
                .map_err(backend)?;
            let descendants = rbac::revoke_with_descendants(ctx.conn, &[id], now).map_err(backend)?;
            let event = audit
                .succeeded()
                .with("tokenId", id.to_string())
                .with("principal", t.principal.clone())
                .with("revokedDescendantTokens", descendants.to_string());
            ctx.audit(&event).map_err(backend)?;
            rbac::token(ctx.conn, id).map_err(backend)?.ok_or_else(|| backend("the token vanished"))
        })
        .await
    }

    async fn put_role_definition(
        &self,
        role: RoleDefinition,
        audit: AuditEvent,
    ) -> StoreResult<(RoleDefinition, bool)> {
        self.write(move |ctx| {
            let created = rbac::put_role(ctx.conn, &role, nanos(audit.time)).map_err(backend)?;
            let event = audit
                .succeeded()
                .with("role", role.name.clone())
                .with("actions", role.actions.join(" "))
                .with("notActions", role.not_actions.join(" "))
                .with("assignableScopes", role.assignable_scopes.join(" "));
            ctx.audit(&event).map_err(backend)?;
            let stored =
                rbac::role(ctx.conn, &role.name).map_err(backend)?.ok_or_else(|| backend("the role vanished"))?;
            Ok((stored, created))
        })
        .await
    }

    async fn list_role_definitions(&self) -> StoreResult<Vec<RoleDefinition>> {
        self.read(|c| {
            c.prepare_cached("SELECT * FROM role_definitions ORDER BY key")?
                .query_map([], rbac::role_from_row)?
                .collect()
        })
        .await
    }

    async fn get_role_definition(&self, name: &str) -> StoreResult<Option<RoleDefinition>> {
        let name = name.to_owned();
        self.read(move |c| rbac::role(c, &name)).await
    }

    async fn delete_role_definition(&self, name: &str, audit: AuditEvent) -> StoreResult<RoleDefinition> {
        let name = name.to_owned();
        self.write(move |ctx| {
            let Some(role) = rbac::role(ctx.conn, &name).map_err(backend)? else {
                return reject(
                    ctx,
                    audit,
                    Invalid::not_found("RoleDefinitionNotFound", format!("no custom role named '{name}'")),
                );
            };
            let used: i64 = ctx
                .conn
                .query_row("SELECT count(*) FROM role_assignments WHERE role_key = lower(?1)", [&name], |r| r.get(0))
                .map_err(backend)?;
            if used > 0 {
                let m = format!("role '{name}' has {used} assignment(s); delete them first");
                return reject(ctx, audit, Invalid::conflict("RoleDefinitionInUse", m));
            }
            ctx.conn.execute("DELETE FROM role_definitions WHERE key = lower(?1)", [&name]).map_err(backend)?;
            ctx.audit(&audit.succeeded().with("role", name.clone())).map_err(backend)?;
            Ok(role)
        })
        .await
    }

    async fn create_role_assignment(
        &self,
        principal: &str,
        role: &str,
        scope: &str,
        audit: AuditEvent,
    ) -> StoreResult<RoleAssignment> {
        let (principal, role, scope) = (principal.to_owned(), role.to_owned(), scope.to_owned());
        self.write(move |ctx| {
            let Some(p) = rbac::principal(ctx.conn, &principal).map_err(backend)? else {
                return reject(ctx, audit, Invalid::not_found("PrincipalNotFound", format!("no principal named '{principal}'")));
            };
            let exists: Option<String> = ctx
                .conn
                .query_row(
                    "SELECT id FROM role_assignments WHERE principal_id = ?1 AND role_key = lower(?2) AND lower(scope) = lower(?3)",
                    params![p.id, role, scope],
                    |r| r.get(0),
                )
                .optional()
                .map_err(backend)?;
            if let Some(id) = exists {
                let m = format!("'{principal}' already holds '{role}' at '{scope}' (assignment {id})");
                return reject(ctx, audit, Invalid::conflict("RoleAssignmentExists", m));
            }
            let id = rbac::insert_assignment(ctx.conn, p.id, &role, &scope, nanos(audit.time), &audit.caller).map_err(backend)?;
            let event = audit
                .succeeded()
                .with("assignmentId", id.clone())
                .with("principal", principal.clone())
                .with("role", role.clone())
                .with("scope", scope.clone());
            ctx.audit(&event).map_err(backend)?;
            rbac::assignment(ctx.conn, &id).map_err(backend)?.ok_or_else(|| backend("the assignment vanished"))
        })
        .await
    }

    async fn list_role_assignments(&self, principal: Option<&str>) -> StoreResult<Vec<RoleAssignment>> {
        let principal = principal.map(str::to_owned);
        self.read(move |c| match principal {
            Some(p) => c
                .prepare_cached(&format!("{} WHERE p.name = ?1 ORDER BY a.created, a.id", rbac::ASSIGNMENT_SELECT))?
                .query_map([p], rbac::assignment_from_row)?
                .collect(),
            None => c
                .prepare_cached(&format!("{} ORDER BY a.created, a.id", rbac::ASSIGNMENT_SELECT))?
                .query_map([], rbac::assignment_from_row)?
                .collect(),
        })
        .await
    }

    async fn get_role_assignment(&self, id: &str) -> StoreResult<Option<RoleAssignment>> {
        let id = id.to_owned();
        self.read(move |c| rbac::assignment(c, &id)).await
    }

    async fn delete_role_assignment(&self, id: &str, audit: AuditEvent) -> StoreResult<RoleAssignment> {
        let id = id.to_owned();
        self.write(move |ctx| {
            let Some(a) = rbac::assignment(ctx.conn, &id).map_err(backend)? else {
                return reject(
                    ctx,
                    audit,
                    Invalid::not_found("RoleAssignmentNotFound", format!("no role assignment {id}")),
                );
            };
            ctx.conn.execute("DELETE FROM role_assignments WHERE id = ?1", [&id]).map_err(backend)?;
            let event = audit
                .succeeded()
                .with("assignmentId", id.clone())
                .with("principal", a.principal.clone())
                .with("role", a.role.clone())
                .with("scope", a.scope.clone());
            ctx.audit(&event).map_err(backend)?;
            Ok(a)
        })
        .await
    }

    async fn query_audit(&self, filter: &AuditFilter, after: u64, limit: usize) -> StoreResult<Vec<AuditRecord>> {
        let filter = filter.clone();
        self.read(move |c| auditq::query(c, &filter, after, limit)).await
    }

    async fn verify_audit(&self) -> StoreResult<AuditVerification> {
        self.read(auditq::verify).await
    }

    async fn audit_before(&self, before: OffsetDateTime, limit: usize) -> StoreResult<Vec<AuditRecord>> {
        self.read(move |c| auditq::before(c, nanos(before), limit)).await
    }

    async fn seal_archive(
        &self,
        through_seq: u64,
        last_hash: [u8; 32],
        file: &str,
        audit: AuditEvent,
    ) -> StoreResult<usize> {
        let file = file.to_owned();
        self.write(move |ctx| {
            let stored: Option<String> = ctx
                .conn
                .query_row("SELECT hash FROM audit WHERE seq = ?1", [through_seq as i64], |r| r.get(0))
                .optional()
                .map_err(backend)?;
            if stored.as_deref() != Some(hex::encode(last_hash).as_str()) {
                return Err(backend(format!(
                    "audit record {through_seq} does not carry the archive's last hash; nothing archived"
                )));
            }
            let removed =
                ctx.conn.execute("DELETE FROM audit WHERE seq <= ?1", [through_seq as i64]).map_err(backend)?;
            ctx.conn
                .execute(
                    "INSERT INTO audit_archive (through_seq, last_hash, file, archived) VALUES (?1, ?2, ?3, ?4)",
                    params![through_seq as i64, hex::encode(last_hash), file, nanos(audit.time)],
                )
                .map_err(backend)?;
            let event = audit
                .succeeded()
                .with("throughSeq", through_seq.to_string())
                .with("records", removed.to_string())
                .with("file", file.clone());
            ctx.audit(&event).map_err(backend)?;
            Ok(removed)
        })
        .await
    }

    async fn put_security_policy(
        &self,
        scope: &str,
        jit_enabled: bool,
        audit: AuditEvent,
    ) -> StoreResult<SecurityPolicy> {
        let scope = scope.trim_end_matches('/').to_owned();
        self.write(move |ctx| {
            let now = nanos(audit.time);
            ctx.conn
                .execute(
                    "INSERT INTO security_policies (scope_key, scope, jit_enabled, updated) VALUES (lower(?1), ?1, ?2, ?3) \
                     ON CONFLICT (scope_key) DO UPDATE SET jit_enabled = ?2, updated = ?3",
                    params![scope, jit_enabled, now],
                )
                .map_err(backend)?;
            rows::bump_revision(ctx.conn).map_err(backend)?;
            let updated = audit.time;
            ctx.audit(&audit.succeeded().with("scope", scope.clone()).with("jitEnabled", jit_enabled.to_string())).map_err(backend)?;
            Ok(SecurityPolicy { scope, jit_enabled, updated })
        })
        .await
    }

    async fn list_security_policies(&self) -> StoreResult<Vec<SecurityPolicy>> {
        self.read(|c| {
            c.prepare_cached("SELECT scope, jit_enabled, updated FROM security_policies ORDER BY scope_key")?
                .query_map([], |r| {
                    Ok(SecurityPolicy { scope: r.get(0)?, jit_enabled: r.get(1)?, updated: from_nanos(r.get(2)?)? })
                })?
                .collect()
        })
        .await
    }

    async fn vm_access(&self, vm: &VmId, since: OffsetDateTime) -> StoreResult<VmAccess> {
        let key = vm.key();
        self.read(move |c| {
            let approved: i64 = c
                .prepare_cached("SELECT count(DISTINCT g.rid) FROM grants g JOIN requests r ON r.rid = g.rid WHERE g.vm_key = ?1 AND r.start_time >= ?2")?
                .query_row(params![key, nanos(since)], |r| r.get(0))?;
            let last: Option<(i64, String)> = c
                .prepare_cached("SELECT r.start_time, r.requestor FROM grants g JOIN requests r ON r.rid = g.rid WHERE g.vm_key = ?1 ORDER BY r.rid DESC LIMIT 1")?
                .query_row([&key], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            Ok(VmAccess {
                approved_since: approved as u64,
                last_access: last.as_ref().map(|(t, _)| from_nanos(*t)).transpose()?,
                last_user: last.map(|(_, u)| u),
            })
        })
        .await
    }

    async fn policy_of_vm(&self, vm: &VmId) -> StoreResult<Option<jitgate_core::Policy>> {
        let key = vm.key();
        self.read(move |c| {
            let pkey: Option<String> = c
                .prepare_cached("SELECT p.key FROM policy_vms v JOIN policies p ON p.pid = v.pid WHERE v.vm_key = ?1")?
                .query_row([&key], |r| r.get(0))
                .optional()?;
            match pkey {
                Some(k) => Ok(rows::load_policy_only(c, &k)?.map(|(_, p)| p)),
                None => Ok(None),
            }
        })
        .await
    }

    async fn create_webhook(&self, hook: Webhook, audit: AuditEvent) -> StoreResult<Webhook> {
        let keys = self.keys.clone();
        self.write(move |ctx| {
            hooks::insert(ctx.conn, &hook, &keys).map_err(backend)?;
            let event = audit
                .succeeded()
                .with("webhookId", hook.id.clone())
                .with("url", hook.url.clone())
                .with("subscription", hook.subscription.clone().unwrap_or_default())
                .with("principal", hook.principal.clone().unwrap_or_default());
            ctx.audit(&event).map_err(backend)?;
            hooks::hook(ctx.conn, &hook.id, &keys).map_err(backend)?.ok_or_else(|| backend("the webhook vanished"))
        })
        .await
    }

    async fn list_webhooks(&self) -> StoreResult<Vec<Webhook>> {
        let keys = self.keys.clone();
        self.read(move |c| {
            c.prepare_cached("SELECT * FROM webhooks ORDER BY created")?
                .query_map([], |r| hooks::hook_from_row(r, &keys))?
                .collect()
        })
        .await
    }

    async fn get_webhook(&self, id: &str) -> StoreResult<Option<Webhook>> {
        let (id, keys) = (id.to_owned(), self.keys.clone());
        self.read(move |c| hooks::hook(c, &id, &keys)).await
    }

    async fn delete_webhook(&self, id: &str, audit: AuditEvent) -> StoreResult<Webhook> {
        let (id, keys) = (id.to_owned(), self.keys.clone());
        self.write(move |ctx| {
            let Some(h) = hooks::hook(ctx.conn, &id, &keys).map_err(backend)? else {
                return reject(ctx, audit, Invalid::not_found("WebhookNotFound", format!("no webhook {id}")));
            };
            ctx.conn
                .execute("DELETE FROM deliveries WHERE webhook_id = ?1 AND state = 'Pending'", [&id])
                .map_err(backend)?;
            ctx.conn.execute("DELETE FROM webhooks WHERE id = ?1", [&id]).map_err(backend)?;
            ctx.audit(&audit.succeeded().with("webhookId", id.clone())).map_err(backend)?;
            Ok(h)
        })
        .await
    }

    async fn claim_deliveries(
        &self,
        now: OffsetDateTime,
        lease_until: OffsetDateTime,
        limit: usize,
    ) -> StoreResult<Vec<Delivery>> {
        let keys = self.keys.clone();
        self.write(move |ctx| {
            let due: Vec<Delivery> = ctx
                .conn
                .prepare_cached(&format!(
                    "{} WHERE d.state = 'Pending' AND d.next_attempt <= ?1 ORDER BY d.id LIMIT ?2",
                    hooks::DELIVERY_SELECT
                ))
                .and_then(|mut st| {
                    st.query_map(params![nanos(now), limit as i64], |r| hooks::delivery_from_row(r, &keys))?
                        .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(backend)?;
            let mut lease = ctx
                .conn
                .prepare_cached("UPDATE deliveries SET next_attempt = ?2 WHERE id = ?1 AND state = 'Pending'")
                .map_err(backend)?;
            for d in &due {
                lease.execute(params![d.id, nanos(lease_until)]).map_err(backend)?;
            }
            Ok(due)
        })
        .await
    }

    async fn delivery_attempted(
        &self,
        id: i64,
        ok: bool,
        error: Option<String>,
        next: Option<OffsetDateTime>,
        now: OffsetDateTime,
    ) -> StoreResult<()> {
        self.write(move |ctx| {
            let (state, next_at) = match (ok, next) {
                (true, _) => ("Delivered", nanos(now)),
                (false, Some(n)) => ("Pending", nanos(n)),
                (false, None) => ("Failed", nanos(now)),
            };
            ctx.conn
                .execute(
                    "UPDATE deliveries SET state = ?2, attempts = attempts + 1, next_attempt = ?3, last_error = ?4, \
                     delivered = CASE WHEN ?2 = 'Delivered' THEN ?5 ELSE delivered END WHERE id = ?1",
                    params![id, state, next_at, error, nanos(now)],
                )
                .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn list_deliveries(&self, webhook_id: &str, limit: usize) -> StoreResult<Vec<Delivery>> {
        let (id, keys) = (webhook_id.to_owned(), self.keys.clone());
        self.read(move |c| {
            c.prepare_cached(&format!(
                "{} WHERE d.webhook_id = ?1 ORDER BY d.id DESC LIMIT ?2",
                hooks::DELIVERY_SELECT
            ))?
            .query_map(params![id, limit as i64], |r| hooks::delivery_from_row(r, &keys))?
            .collect()
        })
        .await
    }

    async fn next_delivery(&self) -> StoreResult<Option<OffsetDateTime>> {
        self.read(|c| {
            let n: Option<i64> = c
                .prepare_cached("SELECT min(next_attempt) FROM deliveries WHERE state = 'Pending'")?
                .query_row([], |r| r.get(0))?;
            n.map(from_nanos).transpose()
        })
        .await
    }

    async fn ping(&self) -> StoreResult<()> {
        self.read(|c| c.query_row("SELECT 1", [], |_| Ok(()))).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_reads_waits_for_slots_instead_of_taking_threads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(
            SqliteStore::open(
                &dir.path().join("jitgate.db"),
                jitgate_store::secrets::Keyring::generate().expect("key"),
            )
            .expect("open"),
        );
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let reads: Vec<_> = (0..64)
            .map(|_| {
                let (store, running, most) = (store.clone(), running.clone(), most.clone());
                tokio::spawn(async move {
                    store
                        .read(move |c| {
                            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(now, Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(10));
                            running.fetch_sub(1, Ordering::SeqCst);
                            c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
                        })
                        .await
                })
            })
            .collect();
        for r in reads {
            assert_eq!(r.await.expect("join").expect("read"), 1);
        }
        let most = most.load(Ordering::SeqCst);
        assert!(most <= READ_CONCURRENCY, "{most} reads ran at once");
        assert!(most >= 2, "reads still run in parallel");
    }
}
