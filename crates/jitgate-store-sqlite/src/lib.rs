//! The SQLite backend of the jitgate store.
//!
//! One database file in WAL mode, every commit made durable (fsync'd) before anyone hears of it.
//! All changes go through one writer thread that commits them in groups, and a syncer thread that
//! makes them durable ([`writer`]); reads use a small pool of connections on the blocking thread
//! pool, and see only committed data (the reads that feed enforcement, only durable data).

mod agents;
mod auditq;
mod grants;
mod health;
mod hooks;
mod inventory;
mod migrate;
mod rbac;
mod rows;
pub mod snapshot;
mod store_agents;
mod store_audit;
mod store_cloud;
mod store_identity;
mod store_policies;
mod store_replica;
mod store_requests;
mod store_sessions;
mod store_webhooks;
mod writer;
pub mod yardstick;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use async_trait::async_trait;
use rusqlite::types::Value;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use time::OffsetDateTime;
use tokio::sync::mpsc;

pub use health::inspect_file;
use jitgate_core::audit::AuditEvent;
use jitgate_core::enforcement::{check_mapped_ports, AgentMode, EnforcementState, MappedClaim};
use jitgate_core::identity::checks;
use jitgate_core::initiate::{decide, policy_not_found, GrantStatus, Reach, Requested};
use jitgate_core::lifecycle::{self, request_not_found, Decided, Decision, Extension};
use jitgate_core::policy::ValidatedPolicy;
use jitgate_core::policy_put::{self, KnownVms};
use jitgate_core::rbac::RoleDefinition;
use jitgate_core::{join, outbox, vm_put};
use jitgate_core::{Invalid, PolicyRef, VmId};
use jitgate_store::secrets::Keyring;
pub use jitgate_store::secrets::SealReport;
use jitgate_store::{
    AccessRequestRecord, AgentJoin, AgentRecord, AgentReport, AuditFilter, AuditRecord, AuditVerification, Delivery,
    ExpirySweep, InitiateCommand, InitiateOutcome, JoinTokenRecord, JoinTokenSpec, ListScope, NewToken, OidcSignIn,
    PolicyRecord, Principal, RoleAssignment, SecurityPolicy, StoreError, StoreResult, TokenAuth, TokenOrigin,
    TokenRecord, Vm, VmAccess, VmSpec, Webhook,
};
use jitgate_store::{
    AgentStore, AuditStore, IdentityStore, PolicyStore, ReplicaStore, SessionStore, Signal, WebhookStore,
};

use crate::grants::{By, STATE_COLUMNS};
use crate::migrate::migrate;
use crate::rows::{encode_sources, from_nanos, nanos};
use crate::writer::{FnJob, Job, WriteCtx};

/// Read connections kept open.
const READERS: usize = 4;
/// Reads running at once. The others wait for a slot as futures, not on threads of the
/// blocking pool: a burst of readers (every agent's long-poll waking on one change) must not
/// become hundreds of threads and connections.
const READ_CONCURRENCY: usize = 8;

/// How the writer's connection is set up: WAL, and an fsync on every commit.
/// Prepared statements each connection keeps: more than the distinct statements of any path
/// (the initiate alone runs about fifteen), so none is compiled again (rusqlite keeps 16).
const STATEMENT_CACHE: usize = 256;

const WRITE_PRAGMAS: &str =
    "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;";

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
    /// How far the writer's commits are durable.
    durability: Arc<writer::Durability>,
    /// Told of every commit (metrics).
    observer: jitgate_store::observe::Observer,
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
                c.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
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

/// A failure of the database: [`StoreError::Full`] when SQLite found the disk full, otherwise
/// [`StoreError::Backend`]; the driver's error is kept as the source either way.
fn backend(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StoreError {
    let e = e.into();
    if e.downcast_ref::<rusqlite::Error>().is_some_and(writer::is_full) {
        StoreError::Full(e)
    } else {
        StoreError::Backend(e)
    }
}

#[cfg(test)]
#[test]
fn a_backend_failure_keeps_the_driver_error_as_its_source() {
    let e = backend(rusqlite::Error::QueryReturnedNoRows);
    assert_eq!(e.to_string(), format!("storage failure: {}", rusqlite::Error::QueryReturnedNoRows));
    let source = std::error::Error::source(&e).expect("a source");
    assert!(matches!(source.downcast_ref::<rusqlite::Error>(), Some(rusqlite::Error::QueryReturnedNoRows)));
}

#[cfg(test)]
#[test]
fn a_full_disk_is_its_own_error_and_keeps_the_driver_error() {
    let full = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL), None);
    let e = backend(full);
    assert!(matches!(e, StoreError::Full(_)), "{e:?}");
    assert!(e.to_string().starts_with("the data directory is full"), "{e}");
    let source = std::error::Error::source(&e).expect("a source");
    assert!(source.downcast_ref::<rusqlite::Error>().is_some_and(writer::is_full));
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, migrates it, and starts the writer.
    /// Webhook secrets are sealed with `keys`: every secret is left sealed under its current key
    /// (plaintext ones from an older version are sealed, those under an older key re-sealed), and
    /// a secret that `keys` cannot open fails the open with an error naming the key.
    pub fn open(path: &Path, keys: Keyring) -> StoreResult<Self> {
        let conn = Connection::open(path).map_err(backend)?;
        conn.execute_batch(WRITE_PRAGMAS).map_err(backend)?;
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
        // From here the writer's syncer makes each commit durable (see `writer`): SQLite itself
        // then leaves the log unsynced at commit (and still syncs it around checkpoints). The
        // writer keeps a page cache large enough for the indexes it updates.
        conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA cache_size = -16384;").map_err(backend)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        let (tx, rx) = mpsc::channel(4096);
        let durability = Arc::new(writer::Durability::default());
        let log = PathBuf::from(format!("{}-wal", path.display()));
        let observer = jitgate_store::observe::Observer::default();
        let (for_writer, observed) = (durability.clone(), observer.clone());
        let handle = std::thread::Builder::new()
            .name("jg-sqlite-write".into())
            .spawn(move || writer::run(conn, chain, rx, log, for_writer, observed))
            .map_err(backend)?;
        Ok(SqliteStore {
            jobs: Some(tx),
            writer: Some(handle),
            readers: Arc::new(ReadPool { path: path.to_owned(), idle: Mutex::new(Vec::new()) }),
            keys: Arc::new(keys),
            sealed,
            read_slots: Arc::new(tokio::sync::Semaphore::new(READ_CONCURRENCY)),
            durability,
            observer,
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
        self.submit(FnJob::boxed(f)).await
    }

    /// Hands a job to the writer that is answered at its commit, before the fsync
    /// ([`writer::Job::at_commit`] says when that is sound), and returns once it is in the
    /// writer's queue (so it runs before any change handed over later), without waiting for it
    /// to run. A failure is logged, not returned. For notes that only need to precede later
    /// changes.
    async fn queue_at_commit<F>(&self, what: &'static str, f: F) -> StoreResult<()>
    where
        F: FnOnce(&mut WriteCtx<'_>) -> StoreResult<()> + Send + 'static,
    {
        let (job, rx) = FnJob::boxed_at_commit(f);
        let jobs = self.jobs.as_ref().ok_or_else(|| backend("the store is closed"))?;
        jobs.send(job).await.map_err(|_| backend("the store writer has stopped"))?;
        tokio::spawn(async move {
            if let Ok(Err(e)) = rx.await {
                tracing::warn!(error = %e, "{what} was not kept");
            }
        });
        Ok(())
    }

    /// Hands `job` to the writer and waits for its answer on `rx`.
    async fn submit<T>(
        &self,
        (job, rx): (Box<dyn Job>, tokio::sync::oneshot::Receiver<StoreResult<T>>),
    ) -> StoreResult<T> {
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
    ctx.audit(&checks::principal_created(audit, name, kind)).map_err(backend)?;
    rbac::principal(ctx.conn, name).map_err(backend)?.ok_or_else(|| backend("the principal vanished"))
}

/// The principal of an OIDC identity: found by (issuer, subject), its display name brought up to
/// date, or created with the derived name.
fn upsert_oidc_principal(ctx: &mut WriteCtx<'_>, sign_in: &OidcSignIn, audit: AuditEvent) -> StoreResult<Principal> {
    let id = &sign_in.identity;
    if let Some(p) = rbac::oidc_principal(ctx.conn, id).map_err(backend)? {
        if p.display_name == sign_in.display_name {
            return Ok(p);
        }
        ctx.conn
            .execute("UPDATE principals SET display_name = ?2 WHERE id = ?1", params![p.id, sign_in.display_name])
            .map_err(backend)?;
        let event = checks::oidc_renamed(audit, &p.name, sign_in.display_name.as_deref(), p.display_name.as_deref());
        ctx.audit(&event).map_err(backend)?;
        return Ok(Principal { display_name: sign_in.display_name.clone(), ..p });
    }
    let name = jitgate_core::identity::oidc_name(&id.issuer, &id.subject);
    if let Some(holder) = rbac::principal(ctx.conn, &name).map_err(backend)? {
        return reject(ctx, audit, checks::oidc_name_held(&name, holder.id));
    }
    ctx.conn
        .execute(
            "INSERT INTO principals (name, kind, created, issuer, subject, display_name) VALUES (?1, 'User', ?2, ?3, ?4, ?5)",
            params![name, nanos(audit.time), id.issuer, id.subject, sign_in.display_name],
        )
        .map_err(backend)?;
    let seen =
        checks::OidcSeen { issuer: &id.issuer, subject: &id.subject, display_name: sign_in.display_name.as_deref() };
    let event = checks::oidc_provisioned(audit, &name, seen);
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
    Ok(policy_put::claims_of_vm(&policy, key))
}

#[cfg(test)]
mod tests;
