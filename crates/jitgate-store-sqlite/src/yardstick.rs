//! SQLite's own commit rate, as a yardstick for the store: what the disk under a directory allows
//! for a transaction of an initiate's shape, with the store's schema and pragmas and without the
//! rest of jitgate.
//!
//! One item is what an initiate must write at the least: a request row, a grant row, the
//! revision bump and an audit row chained to the one before it by SHA-256. [`serial`] commits
//! each item in its own transaction; [`batched`] has `producers` concurrent tasks hand items to
//! one writer thread that commits whatever is waiting in one transaction, with a savepoint per
//! item, as the store's writer does. Each run uses a fresh database file in the directory and
//! removes it afterwards.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use jitgate_core::audit::{AuditEvent, AuditStatus, GENESIS};
use jitgate_core::initiate::{GrantStatus, StatusReason};
use jitgate_store::StoreResult;

use crate::rows::nanos;
use crate::writer::Chain;
use crate::{backend, WRITE_PRAGMAS};

/// What a yardstick run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CommitRate {
    /// Items written and committed.
    pub items: u64,
    /// Transactions committed (each one fsync).
    pub commits: u64,
    /// From the first item to the last commit.
    pub elapsed: Duration,
}

impl CommitRate {
    /// Items committed per second.
    pub fn items_per_second(&self) -> f64 {
        self.items as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Transactions committed per second.
    pub fn commits_per_second(&self) -> f64 {
        self.commits as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Items per transaction, on average.
    pub fn mean_batch(&self) -> f64 {
        self.items as f64 / (self.commits.max(1)) as f64
    }
}

/// A database file of its own in the directory, removed (with its WAL) when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut p = self.0.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(PathBuf::from(p));
        }
    }
}

/// A fresh database in `dir` with the store's schema, opened as the store opens its writer.
fn open(dir: &Path) -> StoreResult<(Connection, Scratch)> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let scratch = Scratch(dir.join(format!("yardstick-{}-{n}.db", std::process::id())));
    // A file of that name left by an earlier process is not this run's: start empty.
    drop(Scratch(scratch.0.clone()));
    let conn = Connection::open(&scratch.0).map_err(backend)?;
    conn.execute_batch(WRITE_PRAGMAS).map_err(backend)?;
    crate::migrate::migrate(&conn)?;
    Ok((conn, scratch))
}

const POLICY: &str = "/subscriptions/b0000000-0000-4000-8000-000000000001/resourceGroups/bench-rg/providers/\
                      Microsoft.Security/locations/westeurope/jitNetworkAccessPolicies/bench";
const VM: &str = "/subscriptions/b0000000-0000-4000-8000-000000000001/resourceGroups/bench-rg/providers/\
                  Microsoft.Compute/virtualMachines/bench-vm";

/// Writes one item: request, grant, revision, chained audit row.
fn write_item(conn: &Connection, chain: &mut Chain, n: u64) -> rusqlite::Result<()> {
    let now = OffsetDateTime::now_utc();
    let end = now + time::Duration::hours(1);
    let source = format!("10.{}.{}.{}", (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff);
    let form = "single"; // a single source, as `encode_sources` stores it
    conn.prepare_cached(
        "INSERT INTO requests (pid, policy_id, requestor, principal, start_time, justification, client_request_id) \
         VALUES (1, ?1, 'bench', 'bench', ?2, 'bench', NULL)",
    )?
    .execute(params![POLICY, nanos(now)])?;
    let rid = conn.last_insert_rowid();
    conn.prepare_cached(
        "INSERT INTO grants (rid, pid, ord, policy_id, vm_id, vm_key, number, protocol, source_form, sources, \
         supersede_key, end_time, status, status_reason) \
         VALUES (?1, 1, 0, ?2, ?3, ?4, 22, 'TCP', ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        rid,
        POLICY,
        VM,
        VM.to_ascii_lowercase(),
        form,
        source,
        format!("{}|22|{source}", VM.to_ascii_lowercase()),
        nanos(end),
        GrantStatus::Initiated.as_str(),
        StatusReason::UserRequested.as_str(),
    ])?;
    conn.prepare_cached("UPDATE meta SET value = value + 1 WHERE key = 'revision' RETURNING value")?
        .query_row([], |r| r.get::<_, i64>(0))?;
    let event = AuditEvent {
        time: now,
        operation: "Microsoft.Security/locations/jitNetworkAccessPolicies/initiate/action".to_owned(),
        status: AuditStatus::Succeeded,
        caller: "bench".to_owned(),
        caller_ip: Some("127.0.0.1".to_owned()),
        resource_id: POLICY.to_owned(),
        correlation_id: format!("00000000-0000-4000-8000-{n:012x}"),
        properties: [
            ("requestId".to_owned(), rid.to_string()),
            ("vm".to_owned(), VM.to_owned()),
            ("ports".to_owned(), "22".to_owned()),
            ("sources".to_owned(), source),
            ("justification".to_owned(), "bench".to_owned()),
        ]
        .into_iter()
        .collect(),
    };
    crate::writer::append_audit(conn, chain, &event)?;
    Ok(())
}

/// One transaction per item, each committed (and fsync'd) before the next, for `run_for`.
/// Blocking: call it off the async runtime.
pub fn serial(dir: &Path, run_for: Duration) -> StoreResult<CommitRate> {
    let (conn, _scratch) = open(dir)?;
    let mut chain = Chain { seq: 0, hash: GENESIS };
    let start = Instant::now();
    let end = start + run_for;
    let mut items = 0u64;
    while Instant::now() < end {
        conn.execute_batch("BEGIN IMMEDIATE").map_err(backend)?;
        if let Err(e) = write_item(&conn, &mut chain, items).and_then(|()| conn.execute_batch("COMMIT")) {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(backend(e));
        }
        items += 1;
    }
    Ok(CommitRate { items, commits: items, elapsed: start.elapsed() })
}

/// `producers` concurrent tasks, each handing one item at a time to one writer thread and
/// waiting for its commit, for `run_for`. The writer takes every item waiting (up to the store's
/// batch limit) into one transaction, a savepoint per item, and commits once, as the store's
/// writer does. Runs on the current tokio runtime (the writer on a thread of its own).
pub async fn batched(dir: &Path, producers: usize, run_for: Duration) -> StoreResult<CommitRate> {
    let (conn, scratch) = open(dir)?;
    let (tx, rx) = mpsc::channel::<oneshot::Sender<bool>>(4096);
    let writer = std::thread::Builder::new()
        .name("jitgate-yardstick-writer".into())
        .spawn(move || group_commit(conn, rx))
        .map_err(backend)?;
    let start = Instant::now();
    let end = start + run_for;
    let items = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(producers);
    for _ in 0..producers.max(1) {
        let (tx, items) = (tx.clone(), items.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                let (done, committed) = oneshot::channel();
                if tx.send(done).await.is_err() {
                    return;
                }
                match committed.await {
                    Ok(true) => {
                        items.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => return,
                }
            }
        }));
    }
    drop(tx);
    for t in tasks {
        t.await.map_err(backend)?;
    }
    let elapsed = start.elapsed();
    let commits = tokio::task::spawn_blocking(move || writer.join())
        .await
        .map_err(backend)?
        .map_err(|_| backend("the yardstick writer panicked"))?
        .map_err(backend)?;
    drop(scratch);
    Ok(CommitRate { items: items.load(Ordering::Relaxed), commits, elapsed })
}

/// The writer thread of [`batched`]: returns how many transactions it committed.
fn group_commit(conn: Connection, mut rx: mpsc::Receiver<oneshot::Sender<bool>>) -> rusqlite::Result<u64> {
    let mut chain = Chain { seq: 0, hash: GENESIS };
    let mut batch = Vec::with_capacity(crate::writer::MAX_BATCH);
    let mut commits = 0u64;
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < crate::writer::MAX_BATCH {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let start = (chain.seq, chain.hash);
        let outcome = (|| -> rusqlite::Result<()> {
            conn.execute_batch("BEGIN IMMEDIATE")?;
            for _ in 0..batch.len() {
                conn.execute_batch("SAVEPOINT job")?;
                let n = chain.seq;
                write_item(&conn, &mut chain, n)?;
                conn.execute_batch("RELEASE job")?;
            }
            conn.execute_batch("COMMIT")
        })();
        let ok = outcome.is_ok();
        if !ok {
            let _ = conn.execute_batch("ROLLBACK");
            (chain.seq, chain.hash) = start;
        }
        for done in batch.drain(..) {
            let _ = done.send(ok);
        }
        outcome?;
        commits += 1;
    }
    Ok(commits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn serial_commits_return_a_positive_finite_rate_and_leave_nothing_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rate = serial(dir.path(), Duration::from_millis(200)).expect("serial");
        assert!(rate.items > 0, "{rate:?}");
        assert_eq!(rate.items, rate.commits, "one transaction per item");
        let per_s = rate.items_per_second();
        assert!(per_s.is_finite() && per_s > 0.0, "{per_s}");
        assert!(files(dir.path()).is_empty(), "scratch files left: {:?}", files(dir.path()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batched_commits_return_a_positive_finite_rate_and_leave_nothing_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rate = batched(dir.path(), 8, Duration::from_millis(200)).await.expect("batched");
        assert!(rate.items > 0 && rate.commits > 0, "{rate:?}");
        assert!(rate.commits <= rate.items, "a commit holds at least one item: {rate:?}");
        for r in [rate.items_per_second(), rate.commits_per_second(), rate.mean_batch()] {
            assert!(r.is_finite() && r > 0.0, "{rate:?}");
        }
        assert!(files(dir.path()).is_empty(), "scratch files left: {:?}", files(dir.path()));
    }

    #[test]
    fn items_are_real_rows_on_a_chain_that_verifies() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (conn, scratch) = open(dir.path()).expect("open");
        let mut chain = Chain { seq: 0, hash: GENESIS };
        for n in 0..3 {
            write_item(&conn, &mut chain, n).expect("item");
        }
        let count = |table: &str| -> i64 {
            conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0)).expect("count")
        };
        assert_eq!((count("requests"), count("grants"), count("audit")), (3, 3, 3));
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).expect("mode");
        let sync: i64 = conn.query_row("PRAGMA synchronous", [], |r| r.get(0)).expect("sync");
        assert_eq!((mode.as_str(), sync), ("wal", 2), "WAL and synchronous=FULL, as the store");
        let hashes: Vec<(String, String)> = conn
            .prepare("SELECT prev_hash, hash FROM audit ORDER BY seq")
            .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
            .expect("hashes");
        assert_eq!(hashes[0].0, hex::encode(GENESIS));
        assert!(hashes.windows(2).all(|w| w[1].0 == w[0].1), "each row chained to the one before: {hashes:?}");
        let verified = crate::verify_audit_file(&scratch.0).expect("verify");
        assert!(verified.valid && verified.records == 3, "{verified:?}");
    }
}
