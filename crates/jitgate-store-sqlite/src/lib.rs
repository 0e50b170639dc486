//! The SQLite backend of the jitgate store.
//!
//! One database file in WAL mode with `synchronous=FULL` (an fsync on every commit). All changes
//! go through one writer thread that commits them in groups ([`writer`]); reads use a small pool
//! of connections on the blocking thread pool, and see only committed data.

mod agents;
mod auditq;
mod grants;
mod hooks;
mod migrate;
mod rbac;
mod rows;
mod store_agents;
mod store_audit;
mod store_identity;
mod store_policies;
mod store_requests;
mod store_webhooks;
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
use crate::migrate::migrate;
use crate::rows::{encode_sources, from_nanos, nanos};
use crate::writer::{FnJob, Job, WriteCtx};

/// The schema this build writes (`PRAGMA user_version`).
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
                // Readers map the database and keep a larger page cache: listing every VM (the
                // portal's inventory) then reads memory instead of making a syscall per page.
                c.execute_batch(
                    "PRAGMA query_only = ON; PRAGMA busy_timeout = 5000; \
                     PRAGMA mmap_size = 268435456; PRAGMA cache_size = -16384;",
                )?;
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
        SqliteStore::bootstrap(self, owner, token_hash, expires, audit).await
    }

    async fn authenticate(&self, token_hash: &str, now: OffsetDateTime) -> StoreResult<Option<TokenAuth>> {
        SqliteStore::authenticate(self, token_hash, now).await
    }

    async fn put_vm(&self, vm: VmSpec, audit: AuditEvent) -> StoreResult<(Vm, bool)> {
        SqliteStore::put_vm(self, vm, audit).await
    }

    async fn list_vms(&self) -> StoreResult<Vec<Vm>> {
        SqliteStore::list_vms(self).await
    }

    async fn get_vm(&self, id: &VmId) -> StoreResult<Option<Vm>> {
        SqliteStore::get_vm(self, id).await
    }

    async fn delete_vm(&self, id: &VmId, audit: AuditEvent) -> StoreResult<Vm> {
        SqliteStore::delete_vm(self, id, audit).await
    }

    async fn put_policy(&self, policy: ValidatedPolicy, audit: AuditEvent) -> StoreResult<PolicyRecord> {
        SqliteStore::put_policy(self, policy, audit).await
    }

    async fn get_policy(&self, policy: &PolicyRef) -> StoreResult<Option<PolicyRecord>> {
        SqliteStore::get_policy(self, policy).await
    }

    async fn list_policies(
        &self,
        scope: &ListScope,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<PolicyRecord>> {
        SqliteStore::list_policies(self, scope, after, limit).await
    }

    async fn delete_policy(&self, policy: &PolicyRef, audit: AuditEvent) -> StoreResult<bool> {
        SqliteStore::delete_policy(self, policy, audit).await
    }

    async fn initiate(&self, cmd: InitiateCommand, audit: AuditEvent) -> StoreResult<InitiateOutcome> {
        SqliteStore::initiate(self, cmd, audit).await
    }

    async fn expire_due(&self, now: OffsetDateTime) -> StoreResult<ExpirySweep> {
        SqliteStore::expire_due(self, now).await
    }

    async fn next_expiry(&self) -> StoreResult<Option<OffsetDateTime>> {
        SqliteStore::next_expiry(self).await
    }

    async fn record(&self, event: AuditEvent) -> StoreResult<()> {
        SqliteStore::record(self, event).await
    }

    async fn record_many(&self, events: Vec<AuditEvent>) -> StoreResult<()> {
        SqliteStore::record_many(self, events).await
    }

    async fn audit_records(&self, after: u64, limit: usize) -> StoreResult<Vec<AuditRecord>> {
        SqliteStore::audit_records(self, after, limit).await
    }

    async fn revoke_request(&self, id: i64, revoked_by: &str, audit: AuditEvent) -> StoreResult<AccessRequestRecord> {
        SqliteStore::revoke_request(self, id, revoked_by, audit).await
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
        SqliteStore::decide_request(self, id, approve, decider, reason, now, audit).await
    }

    async fn extend_request(
        &self,
        id: i64,
        new_end: OffsetDateTime,
        now: OffsetDateTime,
        audit: AuditEvent,
    ) -> StoreResult<AccessRequestRecord> {
        SqliteStore::extend_request(self, id, new_end, now, audit).await
    }

    async fn get_request(&self, id: i64) -> StoreResult<Option<(String, AccessRequestRecord)>> {
        SqliteStore::get_request(self, id).await
    }

    async fn revision(&self) -> StoreResult<u64> {
        SqliteStore::revision(self).await
    }

    async fn create_join_token(&self, spec: JoinTokenSpec, token_hash: &str, audit: AuditEvent) -> StoreResult<()> {
        SqliteStore::create_join_token(self, spec, token_hash, audit).await
    }

    async fn list_join_tokens(&self) -> StoreResult<Vec<JoinTokenRecord>> {
        SqliteStore::list_join_tokens(self).await
    }

    async fn join_agent(&self, join: AgentJoin, audit: AuditEvent) -> StoreResult<AgentRecord> {
        SqliteStore::join_agent(self, join, audit).await
    }

    async fn agent_by_credential(&self, credential_hash: &str) -> StoreResult<Option<AgentRecord>> {
        SqliteStore::agent_by_credential(self, credential_hash).await
    }

    async fn list_agents(&self) -> StoreResult<Vec<AgentRecord>> {
        SqliteStore::list_agents(self).await
    }

    async fn get_agent(&self, id: &str) -> StoreResult<Option<AgentRecord>> {
        SqliteStore::get_agent(self, id).await
    }

    async fn gateway_agent(&self, subscription: &str, name: &str) -> StoreResult<Option<AgentRecord>> {
        SqliteStore::gateway_agent(self, subscription, name).await
    }

    async fn delete_agent(&self, id: &str, audit: AuditEvent) -> StoreResult<AgentRecord> {
        SqliteStore::delete_agent(self, id, audit).await
    }

    async fn rotate_agent_credential(
        &self,
        id: &str,
        old_hash: &str,
        new_hash: &str,
        audit: AuditEvent,
    ) -> StoreResult<AgentRecord> {
        SqliteStore::rotate_agent_credential(self, id, old_hash, new_hash, audit).await
    }

    async fn agent_state(&self, agent_id: &str, now: OffsetDateTime) -> StoreResult<EnforcementState> {
        SqliteStore::agent_state(self, agent_id, now).await
    }

    async fn agent_delivered(&self, agent_id: &str, revision: u64) -> StoreResult<()> {
        SqliteStore::agent_delivered(self, agent_id, revision).await
    }

    async fn agent_report(&self, agent_id: &str, report: AgentReport) -> StoreResult<()> {
        SqliteStore::agent_report(self, agent_id, report).await
    }

    async fn agents_for_vms(&self, vm_ids: &[String]) -> StoreResult<Vec<AgentRecord>> {
        SqliteStore::agents_for_vms(self, vm_ids).await
    }

    async fn create_principal(&self, name: &str, kind: &str, audit: AuditEvent) -> StoreResult<Principal> {
        SqliteStore::create_principal(self, name, kind, audit).await
    }

    async fn oidc_principal(&self, sign_in: OidcSignIn, audit: AuditEvent) -> StoreResult<Principal> {
        SqliteStore::oidc_principal(self, sign_in, audit).await
    }

    async fn list_principals(&self) -> StoreResult<Vec<Principal>> {
        SqliteStore::list_principals(self).await
    }

    async fn get_principal(&self, name: &str) -> StoreResult<Option<Principal>> {
        SqliteStore::get_principal(self, name).await
    }

    async fn delete_principal(&self, name: &str, audit: AuditEvent) -> StoreResult<Principal> {
        SqliteStore::delete_principal(self, name, audit).await
    }

    async fn create_token(&self, token: NewToken, audit: AuditEvent) -> StoreResult<TokenRecord> {
        SqliteStore::create_token(self, token, audit).await
    }

    async fn list_tokens(&self, principal: &str) -> StoreResult<Vec<TokenRecord>> {
        SqliteStore::list_tokens(self, principal).await
    }

    async fn get_token(&self, id: i64) -> StoreResult<Option<TokenRecord>> {
        SqliteStore::get_token(self, id).await
    }

    async fn revoke_token(&self, id: i64, audit: AuditEvent) -> StoreResult<TokenRecord> {
        SqliteStore::revoke_token(self, id, audit).await
    }

    async fn put_role_definition(
        &self,
        role: RoleDefinition,
        audit: AuditEvent,
    ) -> StoreResult<(RoleDefinition, bool)> {
        SqliteStore::put_role_definition(self, role, audit).await
    }

    async fn list_role_definitions(&self) -> StoreResult<Vec<RoleDefinition>> {
        SqliteStore::list_role_definitions(self).await
    }

    async fn get_role_definition(&self, name: &str) -> StoreResult<Option<RoleDefinition>> {
        SqliteStore::get_role_definition(self, name).await
    }

    async fn delete_role_definition(&self, name: &str, audit: AuditEvent) -> StoreResult<RoleDefinition> {
        SqliteStore::delete_role_definition(self, name, audit).await
    }

    async fn create_role_assignment(
        &self,
        principal: &str,
        role: &str,
        scope: &str,
        audit: AuditEvent,
    ) -> StoreResult<RoleAssignment> {
        SqliteStore::create_role_assignment(self, principal, role, scope, audit).await
    }

    async fn list_role_assignments(&self, principal: Option<&str>) -> StoreResult<Vec<RoleAssignment>> {
        SqliteStore::list_role_assignments(self, principal).await
    }

    async fn get_role_assignment(&self, id: &str) -> StoreResult<Option<RoleAssignment>> {
        SqliteStore::get_role_assignment(self, id).await
    }

    async fn delete_role_assignment(&self, id: &str, audit: AuditEvent) -> StoreResult<RoleAssignment> {
        SqliteStore::delete_role_assignment(self, id, audit).await
    }

    async fn query_audit(&self, filter: &AuditFilter, after: u64, limit: usize) -> StoreResult<Vec<AuditRecord>> {
        SqliteStore::query_audit(self, filter, after, limit).await
    }

    async fn verify_audit(&self) -> StoreResult<AuditVerification> {
        SqliteStore::verify_audit(self).await
    }

    async fn audit_before(&self, before: OffsetDateTime, limit: usize) -> StoreResult<Vec<AuditRecord>> {
        SqliteStore::audit_before(self, before, limit).await
    }

    async fn seal_archive(
        &self,
        through_seq: u64,
        last_hash: [u8; 32],
        file: &str,
        audit: AuditEvent,
    ) -> StoreResult<usize> {
        SqliteStore::seal_archive(self, through_seq, last_hash, file, audit).await
    }

    async fn put_security_policy(
        &self,
        scope: &str,
        jit_enabled: bool,
        audit: AuditEvent,
    ) -> StoreResult<SecurityPolicy> {
        SqliteStore::put_security_policy(self, scope, jit_enabled, audit).await
    }

    async fn list_security_policies(&self) -> StoreResult<Vec<SecurityPolicy>> {
        SqliteStore::list_security_policies(self).await
    }

    async fn vm_access(&self, vm: &VmId, since: OffsetDateTime) -> StoreResult<VmAccess> {
        SqliteStore::vm_access(self, vm, since).await
    }

    async fn policy_of_vm(&self, vm: &VmId) -> StoreResult<Option<jitgate_core::Policy>> {
        SqliteStore::policy_of_vm(self, vm).await
    }

    async fn configured_vm_keys(&self) -> StoreResult<std::collections::HashSet<String>> {
        SqliteStore::configured_vm_keys(self).await
    }

    async fn open_requests(
        &self,
        requestor: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<(String, AccessRequestRecord)>> {
        SqliteStore::open_requests(self, requestor, limit).await
    }

    async fn create_webhook(&self, hook: Webhook, audit: AuditEvent) -> StoreResult<Webhook> {
        SqliteStore::create_webhook(self, hook, audit).await
    }

    async fn list_webhooks(&self) -> StoreResult<Vec<Webhook>> {
        SqliteStore::list_webhooks(self).await
    }

    async fn get_webhook(&self, id: &str) -> StoreResult<Option<Webhook>> {
        SqliteStore::get_webhook(self, id).await
    }

    async fn delete_webhook(&self, id: &str, audit: AuditEvent) -> StoreResult<Webhook> {
        SqliteStore::delete_webhook(self, id, audit).await
    }

    async fn claim_deliveries(
        &self,
        now: OffsetDateTime,
        lease_until: OffsetDateTime,
        limit: usize,
    ) -> StoreResult<Vec<Delivery>> {
        SqliteStore::claim_deliveries(self, now, lease_until, limit).await
    }

    async fn delivery_attempted(
        &self,
        id: i64,
        ok: bool,
        error: Option<String>,
        next: Option<OffsetDateTime>,
        now: OffsetDateTime,
    ) -> StoreResult<()> {
        SqliteStore::delivery_attempted(self, id, ok, error, next, now).await
    }

    async fn list_deliveries(&self, webhook_id: &str, limit: usize) -> StoreResult<Vec<Delivery>> {
        SqliteStore::list_deliveries(self, webhook_id, limit).await
    }

    async fn next_delivery(&self) -> StoreResult<Option<OffsetDateTime>> {
        SqliteStore::next_delivery(self).await
    }

    async fn ping(&self) -> StoreResult<()> {
        self.read(|c| c.query_row("SELECT 1", [], |_| Ok(()))).await
    }
}

#[cfg(test)]
mod tests;
