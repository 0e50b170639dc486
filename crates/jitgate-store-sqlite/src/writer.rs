//! The single writer thread and its group commit.
//!
//! Every change is a job sent to one thread that owns the write connection. The thread takes
//! all jobs waiting (up to [`MAX_BATCH`]) into one transaction, runs each inside its own
//! savepoint (a failing job rolls back alone) and commits once. The commit writes the log (WAL)
//! but does not wait for the disk: a second thread, the syncer, makes the log durable with
//! `fdatasync` and only then answers each caller of the batches it covered. While one batch's
//! log is being synced the writer already runs the next, so one fsync covers every batch
//! committed meanwhile, and the disk's latency no longer bounds how many changes a second go
//! through. Nobody hears "done" before the data is durable; readers that feed enforcement wait
//! for the log they read to be durable too ([`Durability::wait`]): a port never opens for a
//! grant a crash could still take back.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot, watch};

use jitgate_core::audit::{chain_hash, AuditEvent, GENESIS};
use jitgate_store::observe::Observer;
use jitgate_store::timing::{self, Stage, Stages};
use jitgate_store::{StoreError, StoreResult};

/// The most jobs committed together.
pub const MAX_BATCH: usize = 256;

/// The head of the audit chain, kept in memory by the writer.
#[derive(Debug, Clone, Copy)]
pub struct Chain {
    pub seq: u64,
    pub hash: [u8; 32],
}

/// What a job sees: the connection inside the open transaction, and the audit chain.
pub struct WriteCtx<'a> {
    pub conn: &'a Connection,
    chain: &'a mut Chain,
}

impl WriteCtx<'_> {
    /// Appends one audit record, chained to the one before it. Every field is bounded first
    /// ([`AuditEvent::bounded`]): what a caller sends can never make a record large.
    pub fn audit(&mut self, event: &AuditEvent) -> rusqlite::Result<u64> {
        let bounded;
        let event = if event.is_bounded() {
            event
        } else {
            bounded = event.clone().bounded();
            &bounded
        };
        append_audit(self.conn, self.chain, event)
    }
}

/// Inserts `event` as the record after `chain`'s head, chained to it, and moves the head.
pub(crate) fn append_audit(conn: &Connection, chain: &mut Chain, event: &AuditEvent) -> rusqlite::Result<u64> {
    let seq = chain.seq + 1;
    let hash = chain_hash(&chain.hash, seq, event);
    let properties = serde_json::to_string(&event.properties).unwrap_or_else(|_| "{}".into());
    conn.prepare_cached(
        "INSERT INTO audit (seq, time, operation, status, caller, caller_ip, resource_id, correlation_id, \
         properties, prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(rusqlite::params![
        seq as i64,
        crate::rows::nanos(event.time),
        event.operation,
        event.status.as_str(),
        event.caller,
        event.caller_ip,
        event.resource_id,
        event.correlation_id,
        properties,
        hex::encode(chain.hash),
        hex::encode(hash),
    ])?;
    chain.seq = seq;
    chain.hash = hash;
    Ok(seq)
}

/// A unit of work for the writer.
pub trait Job: Send {
    /// Runs inside the batch transaction. Returns false when its changes must be rolled back.
    fn run(&mut self, ctx: &mut WriteCtx<'_>) -> bool;
    /// Called once the batch is committed (or failed to commit) after `commit`.
    fn finish(self: Box<Self>, committed: Result<(), Failure>, commit: Duration);
    /// Whether the job's changes were undone because the disk is full.
    fn full(&self) -> bool {
        false
    }
    /// Whether the job may be answered at its commit, before the fsync: a note whose loss in a
    /// crash loses nothing anyone relies on, because everything that depends on it comes in a
    /// later job, which a crash would take back too (the syncer makes commits durable in order).
    fn at_commit(&self) -> bool {
        false
    }
}

/// A job made from a closure, answering on a oneshot channel.
pub struct FnJob<T, F> {
    f: Option<F>,
    out: Option<StoreResult<T>>,
    reply: oneshot::Sender<StoreResult<T>>,
    /// The timing record of the request the job serves, and when the job was queued.
    stages: Option<Arc<Stages>>,
    queued: Instant,
    at_commit: bool,
}

impl<T, F> FnJob<T, F>
where
    T: Send + 'static,
    F: FnOnce(&mut WriteCtx<'_>) -> StoreResult<T> + Send + 'static,
{
    pub fn boxed(f: F) -> (Box<dyn Job>, oneshot::Receiver<StoreResult<T>>) {
        let (reply, rx) = oneshot::channel();
        let job =
            FnJob { f: Some(f), out: None, reply, stages: timing::current(), queued: Instant::now(), at_commit: false };
        (Box::new(job), rx)
    }

    /// A job answered at its commit (see [`Job::at_commit`]).
    pub fn boxed_at_commit(f: F) -> (Box<dyn Job>, oneshot::Receiver<StoreResult<T>>) {
        let (reply, rx) = oneshot::channel();
        let job =
            FnJob { f: Some(f), out: None, reply, stages: timing::current(), queued: Instant::now(), at_commit: true };
        (Box::new(job), rx)
    }
}

impl<T, F> Job for FnJob<T, F>
where
    T: Send + 'static,
    F: FnOnce(&mut WriteCtx<'_>) -> StoreResult<T> + Send + 'static,
{
    fn run(&mut self, ctx: &mut WriteCtx<'_>) -> bool {
        let Some(f) = self.f.take() else { return false };
        let started = Instant::now();
        let out = catch_unwind(AssertUnwindSafe(|| f(ctx)))
            .unwrap_or_else(|_| Err(StoreError::Backend("internal error: a store job panicked".into())));
        if let Some(s) = &self.stages {
            s.add(Stage::Queue, started.saturating_duration_since(self.queued));
            s.add(Stage::Write, started.elapsed());
        }
        // A refusal keeps its `Failed` audit record; any other failure undoes the job.
        let keep = matches!(out, Ok(_) | Err(StoreError::Rejected(_)));
        self.out = Some(out);
        keep
    }

    fn at_commit(&self) -> bool {
        self.at_commit
    }

    fn full(&self) -> bool {
        matches!(self.out, Some(Err(StoreError::Full(_))))
    }

    fn finish(self: Box<Self>, committed: Result<(), Failure>, commit: Duration) {
        if let Some(s) = &self.stages {
            s.add(Stage::Commit, commit);
        }
        let result = match committed {
            Ok(()) => self.out.unwrap_or_else(|| Err(StoreError::Backend("the job did not run".into()))),
            Err(e) => Err(e.error()),
        };
        let _ = self.reply.send(result);
    }
}

/// Why a batch's changes were not kept (or not made durable), told to each of its jobs.
#[derive(Debug, Clone)]
pub enum Failure {
    /// The disk is full: nothing of the batch was kept; the same change succeeds once space
    /// is freed.
    Full(String),
    /// An fsync failed (see [`disk_failed`]).
    Disk,
    /// Any other failure of the transaction.
    Other(String),
}

impl Failure {
    /// The error a job's caller gets.
    pub fn error(&self) -> StoreError {
        match self {
            Failure::Full(e) => StoreError::Full(e.clone().into()),
            Failure::Disk => disk_failed(),
            Failure::Other(e) => StoreError::Backend(e.clone().into()),
        }
    }

    /// The failure of a statement or commit: `Full` when SQLite found the disk full.
    fn of(e: &rusqlite::Error) -> Failure {
        if is_full(e) {
            Failure::Full(e.to_string())
        } else {
            Failure::Other(e.to_string())
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Full(e) | Failure::Other(e) => f.write_str(e),
            Failure::Disk => write!(f, "{}", disk_failed()),
        }
    }
}

/// Whether SQLite refused a write because the disk (or the filesystem's quota) is full.
pub(crate) fn is_full(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull)
}

/// Reads the head of the audit chain from the database.
pub fn load_chain(conn: &Connection) -> rusqlite::Result<Chain> {
    let head: Option<(i64, String)> = conn
        .query_row("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .map(Some)
        .or_else(|e| if matches!(e, rusqlite::Error::QueryReturnedNoRows) { Ok(None) } else { Err(e) })?;
    Ok(match head {
        None => Chain { seq: 0, hash: GENESIS },
        Some((seq, hash)) => Chain { seq: seq as u64, hash: crate::rows::hash_from_hex(&hash)? },
    })
}

/// How far the log is durable: commits are numbered as the writer makes them; the syncer
/// publishes the last one an fsync covered (or that the disk failed).
#[derive(Debug)]
pub struct Durability {
    committed: AtomicU64,
    durable: watch::Sender<Synced>,
}

/// What the syncer has made durable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Synced {
    upto: u64,
    /// An fsync failed: nothing written since may be on disk, and nothing more is accepted.
    failed: bool,
}

impl Default for Durability {
    fn default() -> Self {
        Durability { committed: AtomicU64::new(0), durable: watch::channel(Synced::default()).0 }
    }
}

impl Durability {
    /// Waits until every commit made before this call is durable. A read that feeds
    /// enforcement calls it after reading: what it saw then cannot be lost in a crash.
    pub async fn wait(&self) -> StoreResult<()> {
        let upto = self.committed.load(Ordering::Acquire);
        let mut rx = self.durable.subscribe();
        let synced = rx
            .wait_for(|s| s.failed || s.upto >= upto)
            .await
            .map(|s| *s)
            .map_err(|_| StoreError::Backend("the store writer has stopped".into()))?;
        if synced.failed {
            return Err(disk_failed());
        }
        Ok(())
    }

    fn failed(&self) -> bool {
        self.durable.borrow().failed
    }

    /// An error after an fsync failed (nothing more can be made durable), else `Ok`.
    pub fn check(&self) -> StoreResult<()> {
        if self.failed() {
            return Err(disk_failed());
        }
        Ok(())
    }
}

fn disk_failed() -> StoreError {
    StoreError::DiskFailed(
        "the store's log could not be synced to disk (fsync failed); restart jitgate once the disk is sound".into(),
    )
}

/// A committed batch waiting for its fsync.
struct Committed {
    seq: u64,
    jobs: Vec<Box<dyn Job>>,
    commit: Duration,
    /// The changes the batch carried and the audit records it appended (for the observer).
    changes: usize,
    audit_records: usize,
}

/// The writer thread's loop: runs until every sender is gone, then waits for the syncer to
/// answer the last batches. `log` is the file the commits write (the database's `-wal`).
pub fn run(
    conn: Connection,
    mut chain: Chain,
    mut rx: mpsc::Receiver<Box<dyn Job>>,
    log: PathBuf,
    durability: Arc<Durability>,
    observer: Observer,
) {
    let (to_syncer, synced) = std_mpsc::channel::<Committed>();
    let syncer = {
        let (durability, observer) = (durability.clone(), observer.clone());
        std::thread::Builder::new()
            .name("jg-sqlite-sync".into())
            .spawn(move || sync_loop(synced, log, durability, observer))
    };
    let (to_syncer, syncer) = match syncer {
        Ok(handle) => (Some(to_syncer), Some(handle)),
        Err(e) => {
            tracing::error!(error = %e, "no syncer thread: every commit is synced by the writer");
            (None, None)
        }
    };
    let (to_checkpointer, ticks) = std_mpsc::channel::<()>();
    let checkpointer = match conn.path().map(PathBuf::from) {
        Some(db) if !db.as_os_str().is_empty() => std::thread::Builder::new()
            .name("jg-sqlite-ckpt".into())
            .spawn(move || checkpoint_loop(&db, ticks))
            .map_err(|e| tracing::warn!(error = %e, "no checkpoint thread: the writer checkpoints"))
            .ok(),
        _ => None,
    };
    if checkpointer.is_some() {
        // The checkpoint thread copies the log into the database beside the writer; the writer
        // itself checkpoints only if the log ever grows past this (64 MiB of pages).
        let _ = conn.execute_batch("PRAGMA wal_autocheckpoint = 16384;");
    }
    let mut seq = 0u64;
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if durability.failed() {
            for job in batch.drain(..) {
                job.finish(Err(Failure::Disk), Duration::ZERO);
            }
            continue;
        }
        let audit_from = chain.seq;
        let (result, commit) = run_batch(&conn, &mut chain, &mut batch);
        if let Err(e) = &result {
            match e {
                Failure::Full(_) => tracing::error!(
                    error = %e,
                    jobs = batch.len(),
                    "the data directory is full: changes are refused until space is freed; nothing of them was kept"
                ),
                _ => {
                    tracing::error!(error = %e, jobs = batch.len(), "store transaction failed; nothing of it was kept")
                }
            }
            if let Ok(c) = load_chain(&conn) {
                chain = c;
            }
            for job in batch.drain(..) {
                job.finish(result.clone(), commit);
            }
            continue;
        }
        seq += 1;
        durability.committed.store(seq, Ordering::Release);
        let _ = to_checkpointer.send(());
        let (changes, audit_records) = (batch.len(), chain.seq.saturating_sub(audit_from) as usize);
        let (now, later): (Vec<_>, Vec<_>) = batch.drain(..).partition(|j| j.at_commit());
        for job in now {
            job.finish(Ok(()), commit);
        }
        let committed = Committed { seq, jobs: later, commit, changes, audit_records };
        match &to_syncer {
            Some(tx) => {
                if let Err(std_mpsc::SendError(c)) = tx.send(committed) {
                    sync_and_answer(vec![c], &log_of(&conn), &durability, &observer);
                }
            }
            None => sync_and_answer(vec![committed], &log_of(&conn), &durability, &observer),
        }
    }
    drop(to_checkpointer);
    if let Some(h) = checkpointer {
        let _ = h.join();
    }
    drop(to_syncer);
    // The syncer ends once it has answered everything sent to it; the store's Drop joins this
    // thread, so nothing is left unanswered or unsynced when the store is gone.
    if let Some(h) = syncer {
        let _ = h.join();
    }
}

/// The log size (bytes) past which the checkpoint thread copies it into the database: SQLite's
/// own default of 1,000 pages.
const CHECKPOINT_AT: u64 = 1000 * 4096;

/// The checkpoint thread: after commits (`ticks`), at most every 100 ms, copies what the log
/// gained into the database (`PASSIVE`: it never waits for, nor blocks, the writer or readers),
/// once the log file has reached [`CHECKPOINT_AT`] (SQLite then reuses it from the start).
/// Ends when the writer does.
fn checkpoint_loop(db: &std::path::Path, ticks: std_mpsc::Receiver<()>) {
    let conn = match Connection::open(db) {
        Ok(c) => c,
        Err(e) => return tracing::warn!(error = %e, "checkpoint thread: cannot open the database"),
    };
    let _ = conn.execute_batch("PRAGMA busy_timeout = 5000;");
    let log = PathBuf::from(format!("{}-wal", db.display()));
    while ticks.recv().is_ok() {
        while ticks.try_recv().is_ok() {}
        if std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0) >= CHECKPOINT_AT {
            if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                tracing::warn!(error = %e, "checkpoint failed; the writer checkpoints later");
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The `-wal` file of the connection's database.
fn log_of(conn: &Connection) -> PathBuf {
    PathBuf::from(format!("{}-wal", conn.path().unwrap_or_default()))
}

/// The syncer's loop: takes every batch committed since the last fsync, syncs the log once for
/// all of them, then answers their jobs.
fn sync_loop(rx: std_mpsc::Receiver<Committed>, log: PathBuf, durability: Arc<Durability>, observer: Observer) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        group.extend(rx.try_iter());
        sync_and_answer(group, &log, &durability, &observer);
    }
}

/// Syncs the log once for `group`, tells the observer of each batch it made durable (before
/// anyone hears "done"), then answers their jobs.
fn sync_and_answer(group: Vec<Committed>, log: &std::path::Path, durability: &Durability, observer: &Observer) {
    let started = Instant::now();
    let synced = sync_log(log);
    let took = started.elapsed();
    let upto = group.iter().map(|c| c.seq).max().unwrap_or(0);
    let result = match &synced {
        Ok(()) => {
            durability.durable.send_modify(|s| s.upto = s.upto.max(upto));
            Ok(())
        }
        Err(e) => {
            tracing::error!(error = %e, log = %log.display(), "fsync of the store's log failed; refusing further changes");
            durability.durable.send_modify(|s| s.failed = true);
            Err(Failure::Disk)
        }
    };
    for c in group {
        if result.is_ok() {
            observer.committed(c.changes, c.audit_records, c.commit + took);
        }
        for job in c.jobs {
            job.finish(result.clone(), c.commit + took);
        }
    }
}

/// Makes the log durable. Opened afresh each time, so it is always the file SQLite writes (a
/// log truncated by a checkpoint keeps its inode; one not there means the commits went to the
/// database file itself, which is then synced).
fn sync_log(log: &std::path::Path) -> std::io::Result<()> {
    match std::fs::OpenOptions::new().write(true).open(log) {
        Ok(f) => f.sync_data(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let db = log.to_string_lossy();
            let db = db.strip_suffix("-wal").unwrap_or(&db);
            std::fs::OpenOptions::new().write(true).open(db)?.sync_data()
        }
        Err(e) => Err(e),
    }
}

/// Runs the batch in one transaction; returns the outcome and how long the commit took.
fn run_batch(conn: &Connection, chain: &mut Chain, batch: &mut [Box<dyn Job>]) -> (Result<(), Failure>, Duration) {
    let start = *chain;
    let mut commit = Duration::ZERO;
    // A job undone because the disk is full may have ended the whole transaction (SQLite rolls
    // back on SQLITE_FULL): the batch then fails for the same reason.
    let mut full = false;
    let outcome = (|| -> rusqlite::Result<()> {
        conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        for job in batch.iter_mut() {
            conn.prepare_cached("SAVEPOINT job")?.execute([])?;
            let before = *chain;
            let keep = job.run(&mut WriteCtx { conn, chain });
            if !keep {
                full |= job.full();
                conn.prepare_cached("ROLLBACK TO job")?.execute([])?;
                *chain = before;
            }
            conn.prepare_cached("RELEASE job")?.execute([])?;
        }
        let committing = Instant::now();
        conn.prepare_cached("COMMIT")?.execute([])?;
        commit = committing.elapsed();
        Ok(())
    })();
    let outcome = outcome.map_err(|e| {
        let _ = conn.execute_batch("ROLLBACK");
        *chain = start;
        if full {
            Failure::Full(e.to_string())
        } else {
            Failure::of(&e)
        }
    });
    (outcome, commit)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer on `db` whose log is `log`: its job sender, thread and durability.
    fn writer_on(
        db: &std::path::Path,
        log: PathBuf,
    ) -> (mpsc::Sender<Box<dyn Job>>, std::thread::JoinHandle<()>, Arc<Durability>) {
        let conn = Connection::open(db).expect("open");
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; CREATE TABLE t (x INTEGER);")
            .expect("schema");
        let (tx, rx) = mpsc::channel(64);
        let durability = Arc::new(Durability::default());
        let d = durability.clone();
        let handle =
            std::thread::spawn(move || run(conn, Chain { seq: 0, hash: GENESIS }, rx, log, d, Observer::default()));
        (tx, handle, durability)
    }

    async fn insert(tx: &mpsc::Sender<Box<dyn Job>>, x: i64) -> StoreResult<()> {
        let (job, rx) = FnJob::boxed(move |ctx: &mut WriteCtx<'_>| {
            ctx.conn.execute("INSERT INTO t (x) VALUES (?1)", [x]).map_err(|e| StoreError::Backend(e.into()))?;
            Ok(())
        });
        tx.send(job).await.map_err(|_| StoreError::Backend("closed".into()))?;
        rx.await.map_err(|_| StoreError::Backend("dropped".into()))?
    }

    #[tokio::test]
    async fn every_answer_comes_after_the_sync_that_covers_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("w.db");
        let (tx, handle, durability) = writer_on(&db, PathBuf::from(format!("{}-wal", db.display())));
        let writes: Vec<_> = (0..50)
            .map(|i| {
                let tx = tx.clone();
                tokio::spawn(async move { insert(&tx, i).await })
            })
            .collect();
        for w in writes {
            w.await.expect("join").expect("write");
        }
        let committed = durability.committed.load(Ordering::Acquire);
        assert!(committed >= 1);
        assert!(durability.durable.borrow().upto >= committed, "answered before its sync");
        durability.wait().await.expect("durable");
        drop(tx);
        handle.join().expect("writer ends, after its syncer");
        let conn = Connection::open(&db).expect("reopen");
        let n: i64 = conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).expect("count");
        assert_eq!(n, 50);
    }

    #[tokio::test]
    async fn a_note_answered_at_commit_does_not_wait_for_the_sync() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("w.db");
        // The log cannot be synced: only a job answered at its commit can succeed.
        let (tx, handle, _durability) = writer_on(&db, dir.path().join("missing-dir").join("w.db-wal"));
        let (job, rx) = FnJob::boxed_at_commit(|ctx: &mut WriteCtx<'_>| {
            ctx.conn.execute("INSERT INTO t (x) VALUES (7)", []).map_err(|e| StoreError::Backend(e.into()))?;
            Ok(())
        });
        tx.send(job).await.expect("send");
        rx.await.expect("answer").expect("answered at its commit");
        let synced = insert(&tx, 8).await.expect_err("a synced job waits for the failing sync");
        assert!(synced.to_string().contains("fsync failed"), "{synced}");
        drop(tx);
        handle.join().expect("writer ends");
    }

    #[tokio::test]
    async fn a_failed_sync_fails_its_changes_and_refuses_the_next() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("w.db");
        // A log that cannot be opened stands for a disk whose fsync fails.
        let (tx, handle, durability) = writer_on(&db, dir.path().join("missing-dir").join("w.db-wal"));
        let first = insert(&tx, 1).await.expect_err("not durable, not done");
        assert!(first.to_string().contains("fsync failed"), "{first}");
        let next = insert(&tx, 2).await.expect_err("refused after a failed sync");
        assert!(next.to_string().contains("fsync failed"), "{next}");
        assert!(durability.wait().await.is_err());
        drop(tx);
        handle.join().expect("writer ends");
    }
}
