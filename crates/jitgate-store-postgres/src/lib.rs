//! The PostgreSQL backend of the jitgate store, for several jitgate replicas on one database.
//!
//! A pool of connections (tokio-postgres through deadpool-postgres). Every change runs in one
//! transaction on its own task, so a caller that goes away never leaves a transaction half
//! done. The rules are core's, as in the SQLite backend: the store loads the facts a
//! `jitgate_core` decision reads, under row locks, and writes back what it decides.
//!
//! What a shared database adds:
//! - **One audit chain.** A change's audit records are collected while it runs and appended at
//!   commit, after locking the one-row `audit_head` (`SELECT … FOR UPDATE`): writers on every
//!   replica extend one line, and the lock is held only for the append and the commit.
//! - **Serialised changes.** What a change reads to decide, it locks first: the policy row
//!   (initiate, edit, approve, extend, revoke of its requests), the grants it moves
//!   (`FOR UPDATE`, or `SKIP LOCKED` in the expiry sweep), the webhook deliveries it claims.
//!   Each replica's changes are committed in batches ([`writer`]: group commit), and batches
//!   take one advisory lock first, so the replicas' batches run one after the other and cannot
//!   deadlock on each other's row locks. What still collides (two inserts of one key) ends in
//!   [`StoreError::Conflict`] for that change alone, with nothing of it kept, never in a lost
//!   update.
//! - **Migrations under an advisory lock** ([`migrate`]): replicas starting together migrate once.

mod agents;
mod auditq;
mod chain;
mod fanout;
mod grants;
mod health;
mod hooks;
mod inventory;
mod migrate;
mod rbac;
mod replica;
mod rows;
pub mod snapshot;
mod store_agents;
mod store_audit;
mod store_cloud;
mod store_identity;
mod store_policies;
mod store_requests;
mod store_sessions;
mod store_webhooks;
pub mod testdb;
mod writer;

use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

pub use health::inspect;
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
use jitgate_store::{AgentStore, AuditStore, IdentityStore, PolicyStore, WebhookStore};
pub use migrate::{MigrationReport, SCHEMA_VERSION};

use crate::grants::By;
use crate::rows::{encode_sources, from_nanos, nanos};

/// Connections in the pool unless the URL says otherwise (`?pool_size=N`).
pub const DEFAULT_POOL_SIZE: usize = 16;
/// How long making a connection may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a call waits for a free connection before it fails.
const POOL_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// What went wrong inside the crate; becomes a [`StoreError`] at the trait boundary.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// A decision of the store (a refusal) or a failure already in the store's terms.
    #[error("{0}")]
    Store(StoreError),
    #[error("{0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("{0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// A stored value that no longer parses: the database was changed behind our back.
    #[error("corrupt value in the database: {0}")]
    Corrupt(String),
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        Error::Store(e)
    }
}

/// The SQLSTATEs that mean "another transaction got there first": the change can be tried
/// again and nothing of it was kept.
fn is_conflict(e: &tokio_postgres::Error) -> bool {
    let codes = [SqlState::T_R_SERIALIZATION_FAILURE, SqlState::T_R_DEADLOCK_DETECTED, SqlState::UNIQUE_VIOLATION];
    e.code().is_some_and(|c| codes.contains(c))
}

/// Whether the database server's disk is full (`disk_full`, 53100): nothing was written.
pub(crate) fn is_full(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::DISK_FULL)
}

/// Whether the database gave no answer at all: the connection is closed, or talking to the
/// server failed (an I/O error). A statement the server refused, or a value that does not
/// convert, is something else.
pub(crate) fn unreachable(e: &tokio_postgres::Error) -> bool {
    e.is_closed() || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
}

/// A driver error whose message says what the server said (tokio-postgres alone prints
/// "db error" and keeps the server's words in its source); the driver's error stays the source.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct DriverError {
    message: String,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl DriverError {
    fn new(e: impl std::error::Error + Send + Sync + 'static) -> Box<Self> {
        Box::new(DriverError { message: describe(&e), source: Box::new(e) })
    }
}

/// An error and its sources, each said once: `a: b: c`.
pub(crate) fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        next = cause.source();
    }
    text
}

impl From<Error> for StoreError {
    fn from(e: Error) -> Self {
        match e {
            Error::Store(s) => s,
            Error::Db(e) if is_conflict(&e) => StoreError::Conflict(DriverError::new(e)),
            Error::Db(e) if is_full(&e) => StoreError::Full(DriverError::new(e)),
            // No answer from the database at all (a closed connection, no server): it may be
            // failing over; the call can be repeated.
            Error::Db(e) if unreachable(&e) => StoreError::Unavailable(DriverError::new(e)),
            Error::Db(e) => StoreError::Backend(DriverError::new(e)),
            Error::Pool(e) => StoreError::Unavailable(DriverError::new(e)),
            Error::Corrupt(m) => StoreError::Backend(format!("corrupt value in the database: {m}").into()),
        }
    }
}

pub(crate) type Res<T> = Result<T, Error>;
/// The parameters of a statement.
pub(crate) type Params<'a> = &'a [&'a (dyn ToSql + Sync)];
/// What a read or a change runs: a future borrowing the connection (or the change's context).
pub(crate) type Fut<'c, T> = Pin<Box<dyn Future<Output = Res<T>> + Send + 'c>>;

fn backend(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StoreError {
    StoreError::Backend(e.into())
}

/// One pooled connection, with the statements it runs prepared once and cached. A connection
/// dropped inside a transaction (a panic, a failed `COMMIT`) never goes back to the pool: it is
/// closed instead, so no later user finds a transaction half done.
///
/// Statements issued together (`tokio::try_join!(biased; …)` over several calls) are pipelined:
/// the driver sends each as soon as it is first polled, in the order written, and the server runs
/// them one after the other, each seeing what the ones before it did; the first failure in that
/// order is the one reported. Where the order matters, [`Db::prepare`] first makes sure every
/// statement of the pipeline is prepared, so none waits for its preparation and falls behind a
/// later one.
pub(crate) struct Db {
    client: Option<Object>,
    in_transaction: bool,
    /// The change's savepoint, when it is to be set in front of the next statement.
    lead: std::sync::Mutex<Lead>,
}

/// Where the savepoint of the change running stands (see [`Db::savepoint_ahead`]).
pub(crate) enum Lead {
    /// No savepoint asked for, or the one asked for was never needed (no statement ran).
    None,
    /// To be sent in front of the change's first statement, in the same round trip.
    Due,
    /// Set: the change can be rolled back to it.
    Set,
    /// The server refused it: the batch cannot go on.
    Failed(Error),
}

/// The name of the savepoint each change of a batch runs inside (see [`writer`]).
const SAVEPOINT: &str = "SAVEPOINT change";

impl Db {
    fn new(client: Object) -> Self {
        Db { client: Some(client), in_transaction: false, lead: std::sync::Mutex::new(Lead::None) }
    }

    fn client(&self) -> Res<&Object> {
        self.client.as_ref().ok_or_else(|| Error::Corrupt("the connection was closed".into()))
    }

    fn lead(&self) -> std::sync::MutexGuard<'_, Lead> {
        self.lead.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Asks for the change's savepoint in front of its first statement: it costs no round trip
    /// of its own. A change that runs no statement never sets it (nothing to roll back).
    pub(crate) fn savepoint_ahead(&self) {
        *self.lead() = Lead::Due;
    }

    /// Where the savepoint asked for by [`Db::savepoint_ahead`] ended; forgets it.
    pub(crate) fn savepoint_taken(&self) -> Lead {
        std::mem::replace(&mut *self.lead(), Lead::None)
    }

    /// Runs `q`, behind the change's savepoint if it is still due (both sent at once).
    async fn send<T>(&self, c: &Object, q: impl Future<Output = Result<T, tokio_postgres::Error>>) -> Res<T> {
        let due = {
            let mut lead = self.lead();
            let due = matches!(*lead, Lead::Due);
            if due {
                *lead = Lead::Set;
            }
            due
        };
        if !due {
            return Ok(q.await?);
        }
        let (set, out) = tokio::join!(biased; c.batch_execute(SAVEPOINT), q);
        if let Err(e) = set {
            // The writer ends the batch; the change is told the same failure.
            let e = Error::Db(e);
            let told = Error::Store(writer::each(&e)());
            *self.lead() = Lead::Failed(e);
            return Err(told);
        }
        Ok(out?)
    }

    /// Prepares (once per connection) the statements a pipeline is about to send.
    pub async fn prepare(&self, sqls: &[&str]) -> Res<()> {
        let c = self.client()?;
        for sql in sqls {
            c.prepare_cached(sql).await?;
        }
        Ok(())
    }

    pub async fn rows(&self, sql: &str, p: Params<'_>) -> Res<Vec<Row>> {
        let c = self.client()?;
        let stmt = c.prepare_cached(sql).await?;
        self.send(c, c.query(&stmt, p)).await
    }

    pub async fn opt(&self, sql: &str, p: Params<'_>) -> Res<Option<Row>> {
        let c = self.client()?;
        let stmt = c.prepare_cached(sql).await?;
        self.send(c, c.query_opt(&stmt, p)).await
    }

    pub async fn one(&self, sql: &str, p: Params<'_>) -> Res<Row> {
        let c = self.client()?;
        let stmt = c.prepare_cached(sql).await?;
        self.send(c, c.query_one(&stmt, p)).await
    }

    pub async fn exec(&self, sql: &str, p: Params<'_>) -> Res<u64> {
        let c = self.client()?;
        let stmt = c.prepare_cached(sql).await?;
        self.send(c, c.execute(&stmt, p)).await
    }

    /// Statements without parameters, sent as one simple query.
    pub async fn batch(&self, sql: &str) -> Res<()> {
        let c = self.client()?;
        self.send(c, c.batch_execute(sql)).await
    }

    /// Opens a transaction (`BEGIN …`).
    pub async fn begin(&mut self, sql: &str) -> Res<()> {
        self.in_transaction = true;
        self.batch(sql).await
    }

    /// Ends the transaction (`COMMIT` or `ROLLBACK`); the connection may go back to the pool.
    pub async fn end(&mut self, sql: &str) -> Res<()> {
        self.batch(sql).await?;
        self.in_transaction = false;
        Ok(())
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        if self.in_transaction {
            if let Some(client) = self.client.take() {
                drop(Object::take(client));
            }
        }
    }
}

/// What a change sees: the connection inside its open transaction, the audit records it
/// appends (chained at commit), and whether agents must see it (the revision is bumped at
/// commit).
pub(crate) struct Ctx {
    pub db: Db,
    events: Vec<AuditEvent>,
    bump: bool,
}

impl Ctx {
    /// Appends one audit record to this change; it is chained and written at commit.
    pub fn audit(&mut self, event: AuditEvent) {
        self.events.push(event);
    }

    /// Marks the change as one an agent must see: the enforcement revision goes up at commit.
    pub fn bump_revision(&mut self) {
        self.bump = true;
    }

    /// Bumps the revision if asked, appends the audit records to the chain, and commits.
    /// Returns the new revision when it moved.
    async fn commit(&mut self) -> Res<Option<u64>> {
        let events = std::mem::take(&mut self.events);
        let (db, bump) = (&self.db, self.bump);
        // The revision moved and the chain's head locked in one round trip. The revision's
        // trigger notifies other replicas when this commits (migration 3).
        let revision = async {
            match bump {
                true => rows::bump_revision(db).await.map(Some),
                false => Ok(None),
            }
        };
        let head = async {
            match events.is_empty() {
                true => Ok(None),
                false => db.one(chain::LOCK_HEAD, &[]).await.map(Some),
            }
        };
        let (revision, head) = tokio::try_join!(biased; revision, head)?;
        if let Some(head) = head {
            chain::append(db, head, events).await?;
        }
        self.db.end("COMMIT").await?;
        Ok(revision)
    }
}

/// Turns a domain refusal into a rejected store call, with its `Failed` audit record.
pub(crate) fn reject<T>(ctx: &mut Ctx, audit: AuditEvent, invalid: Invalid) -> Res<T> {
    ctx.audit(audit.failed(invalid.message.clone()));
    Err(Error::Store(StoreError::Rejected(invalid)))
}

/// A store on a PostgreSQL database, which other replicas may share.
pub struct PgStore {
    pool: Pool,
    /// Seals and opens webhook secrets.
    keys: Arc<Keyring>,
    sealed: SealReport,
    migrated: MigrationReport,
    /// The enforcement revision after this store's latest change, or the latest another
    /// replica's signal told of.
    changes: Arc<watch::Sender<u64>>,
    /// This store among the replicas, in the signals its commits send (hex digits).
    origin: Arc<str>,
    /// Where changes go to be committed (see [`writer`]).
    writer: tokio::sync::mpsc::Sender<Box<dyn writer::Job>>,
    /// Where agents' state reads, delivery notes and reports are gathered (see [`fanout`]).
    fanout: fanout::Fanout,
    /// Where the connection that listens for other replicas' changes goes.
    config: tokio_postgres::Config,
    /// Told of every commit of the writer (metrics).
    observer: jitgate_store::observe::Observer,
}

/// Splits jitgate's own settings off a database URL: `pool_size=N`. The rest is libpq's
/// connection URL, as tokio-postgres reads it.
fn parse_url(text: &str) -> StoreResult<(tokio_postgres::Config, usize)> {
    let shown = redact(text);
    let mut url = url::Url::parse(text).map_err(|e| backend(format!("--database-url {shown}: {e}")))?;
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        return Err(backend(format!("--database-url {shown}: the scheme must be postgres://")));
    }
    let mut pool_size = DEFAULT_POOL_SIZE;
    let mut kept: Vec<(String, String)> = Vec::new();
    for (k, v) in url.query_pairs() {
        if k == "pool_size" {
            pool_size = v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=1024).contains(n))
                .ok_or_else(|| backend(format!("--database-url: pool_size={v} is not a number from 1 to 1024")))?;
        } else {
            kept.push((k.into_owned(), v.into_owned()));
        }
    }
    url.set_query(None);
    if !kept.is_empty() {
        url.query_pairs_mut().extend_pairs(kept);
    }
    let mut config =
        tokio_postgres::Config::from_str(url.as_str()).map_err(|e| backend(format!("--database-url {shown}: {e}")))?;
    if config.get_application_name().is_none() {
        config.application_name("jitgate");
    }
    Ok((config, pool_size))
}

/// The URL without its password, for messages.
pub fn redact(text: &str) -> String {
    match url::Url::parse(text) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "(not a URL)".into(),
    }
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user@host:port/db`, optionally
    /// `?pool_size=N`), brings its schema up to date under an advisory lock, and leaves every
    /// webhook secret sealed under the current key of `keys` (as the SQLite store does; a secret
    /// that `keys` cannot open fails the open, naming the key).
    pub async fn open(url: &str, keys: Keyring) -> StoreResult<Self> {
        let (config, pool_size) = parse_url(url)?;
        let manager =
            Manager::from_config(config.clone(), NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(pool_size)
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(CONNECT_TIMEOUT))
            .wait_timeout(Some(POOL_WAIT))
            .build()
            .map_err(backend)?;
        let client =
            pool.get().await.map_err(|e| backend(format!("connecting to {}: {}", redact(url), describe(&e))))?;
        let mut db = Db::new(client);
        let (migrated, sealed) = migrate::migrate(&mut db, &keys).await?;
        if sealed.sealed + sealed.resealed > 0 {
            tracing::info!(
                sealed = sealed.sealed,
                resealed = sealed.resealed,
                key = keys.current().id(),
                "webhook secrets sealed under the current secrets key"
            );
        }
        let revision = rows::revision(&db).await.map_err(StoreError::from)?;
        let changes = Arc::new(watch::channel(revision).0);
        let origin: Arc<str> = format!("{:016x}", rand::random::<u64>()).into();
        let observer = jitgate_store::observe::Observer::default();
        let writer = writer::start(pool.clone(), changes.clone(), origin.clone(), observer.clone());
        let fanout = fanout::start(pool.clone(), writer.clone());
        Ok(PgStore { pool, keys: Arc::new(keys), sealed, migrated, changes, origin, writer, fanout, config, observer })
    }

    /// What the open did to the webhook secrets (sealed, re-sealed, already current).
    pub fn seal_report(&self) -> SealReport {
        self.sealed
    }

    /// The schema version the open found and the one it left (equal when another replica had
    /// already migrated, or nothing was due).
    pub fn migration_report(&self) -> MigrationReport {
        self.migrated
    }

    /// The enforcement revision after each change this store committed (the place where
    /// changes made by other replicas will be fed in too).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Runs `f` in a transaction: the store's writer batches the changes waiting together into
    /// one transaction (see [`writer`]), each in a savepoint of its own, so a caller that goes
    /// away does not stop it halfway. A refusal (`Rejected`) is kept, with its `Failed` audit
    /// record; any other failure undoes the change (and only it).
    async fn write<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut Ctx) -> Fut<'c, T> + Send + 'static,
    {
        writer::submit(&self.writer, f).await
    }

    /// Runs `f` on its own task in a read-only transaction with one snapshot (`REPEATABLE
    /// READ`): a read of several statements sees one committed state, never half of a change
    /// made meanwhile on another replica.
    async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c Db) -> Fut<'c, T> + Send + 'static,
    {
        let pool = self.pool.clone();
        let task = tokio::spawn(async move {
            let mut db = Db::new(pool.get().await?);
            db.begin("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY").await?;
            let out = f(&db).await;
            db.end("COMMIT").await?;
            out
        });
        task.await.map_err(backend)?.map_err(StoreError::from)
    }
}

/// A pending extension, once decided (or lapsed), no longer waits.
async fn clear_extension(db: &Db, id: i64) -> Res<()> {
    db.exec("UPDATE requests SET ext_end = NULL, ext_by = NULL WHERE rid = $1", &[&id]).await?;
    Ok(())
}

/// Inserts a local principal and audits it; returns it.
async fn insert_principal(ctx: &mut Ctx, name: &str, kind: &str, audit: AuditEvent) -> Res<Principal> {
    ctx.db
        .exec("INSERT INTO principals (name, kind, created) VALUES ($1, $2, $3)", &[&name, &kind, &nanos(audit.time)])
        .await?;
    ctx.audit(checks::principal_created(audit, name, kind));
    rbac::principal(&ctx.db, name).await?.ok_or_else(|| Error::Corrupt("the principal vanished".into()))
}

/// The principal of an OIDC identity: found by (issuer, subject), its display name brought up to
/// date, or created with the derived name.
async fn upsert_oidc_principal(ctx: &mut Ctx, sign_in: &OidcSignIn, audit: AuditEvent) -> Res<Principal> {
    let id = &sign_in.identity;
    if let Some(p) = rbac::oidc_principal(&ctx.db, id, true).await? {
        if p.display_name == sign_in.display_name {
            return Ok(p);
        }
        ctx.db.exec("UPDATE principals SET display_name = $2 WHERE id = $1", &[&p.id, &sign_in.display_name]).await?;
        let event = checks::oidc_renamed(audit, &p.name, sign_in.display_name.as_deref(), p.display_name.as_deref());
        ctx.audit(event);
        return Ok(Principal { display_name: sign_in.display_name.clone(), ..p });
    }
    let name = jitgate_core::identity::oidc_name(&id.issuer, &id.subject);
    if let Some(holder) = rbac::principal(&ctx.db, &name).await? {
        return reject(ctx, audit, checks::oidc_name_held(&name, holder.id));
    }
    ctx.db
        .exec(
            "INSERT INTO principals (name, kind, created, issuer, subject, display_name) VALUES ($1, 'User', $2, $3, $4, $5)",
            &[&name, &nanos(audit.time), &id.issuer, &id.subject, &sign_in.display_name],
        )
        .await?;
    let seen =
        checks::OidcSeen { issuer: &id.issuer, subject: &id.subject, display_name: sign_in.display_name.as_deref() };
    let event = checks::oidc_provisioned(audit, &name, seen);
    ctx.audit(event);
    rbac::oidc_principal(&ctx.db, id, false).await?.ok_or_else(|| Error::Corrupt("the principal vanished".into()))
}

/// The gateway ports the policy protecting VM `key` claims for it.
async fn vm_claims(db: &Db, key: &str) -> Res<Vec<MappedClaim>> {
    let Some(row) =
        db.opt("SELECT p.key FROM policy_vms v JOIN policies p ON p.pid = v.pid WHERE v.vm_key = $1", &[&key]).await?
    else {
        return Ok(vec![]);
    };
    let policy: String = row.try_get(0)?;
    let Some((_, policy)) = rows::load_policy_only(db, &policy).await? else { return Ok(vec![]) };
    Ok(policy_put::claims_of_vm(&policy, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_size_is_taken_off_the_url_and_the_rest_kept() {
        let (config, size) =
            parse_url("postgres://postgres@127.0.0.1:5432/jit?pool_size=4&connect_timeout=3").expect("parses");
        assert_eq!(size, 4);
        assert_eq!(config.get_dbname(), Some("jit"));
        assert_eq!(config.get_connect_timeout(), Some(&std::time::Duration::from_secs(3)));
        assert_eq!(parse_url("postgres://h/db").expect("parses").1, DEFAULT_POOL_SIZE);
        for bad in ["postgres://h/db?pool_size=0", "postgres://h/db?pool_size=x", "mysql://h/db", "nonsense"] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
        assert!(!redact("postgres://u:secret@h/db").contains("secret"));
    }

    /// What the database said reaches the message, the driver's error stays the source, and a
    /// server that cannot be reached is "unavailable" (a retry may succeed), not a failure.
    #[tokio::test]
    async fn a_driver_error_says_what_the_server_said() {
        let err = match tokio_postgres::connect("postgres://nobody@127.0.0.1:1/x?connect_timeout=1", NoTls).await {
            Err(e) => e,
            Ok(_) => return, // something answers on port 1: nothing to check here
        };
        let store = StoreError::from(Error::Db(err));
        let text = store.to_string();
        assert!(matches!(store, StoreError::Unavailable(_)), "{store:?}");
        assert!(text.starts_with("storage unavailable: error connecting to server: "), "{text}");
        let source = std::error::Error::source(&store).expect("a source");
        assert!(source.downcast_ref::<DriverError>().is_some());
    }

    #[test]
    fn a_conflict_keeps_nothing_and_says_so() {
        let e = StoreError::from(Error::Store(StoreError::Conflict("x".into())));
        assert!(matches!(e, StoreError::Conflict(_)));
    }
}
