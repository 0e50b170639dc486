//! The single writer thread and its group commit.
//!
//! Every change is a job sent to one thread that owns the write connection. The thread takes
//! all jobs waiting (up to [`MAX_BATCH`]) into one transaction, runs each inside its own
//! savepoint (a failing job rolls back alone), commits once — one fsync for the whole batch —
//! and only then answers each caller. Nobody hears "done" before the data is durable.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use jitgate_core::audit::{chain_hash, AuditEvent, GENESIS};
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
        let seq = self.chain.seq + 1;
        let hash = chain_hash(&self.chain.hash, seq, event);
        let properties = serde_json::to_string(&event.properties).unwrap_or_else(|_| "{}".into());
        self.conn
            .prepare_cached(
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
                hex::encode(self.chain.hash),
                hex::encode(hash),
            ])?;
        self.chain.seq = seq;
        self.chain.hash = hash;
        Ok(seq)
    }
}

/// A unit of work for the writer.
pub trait Job: Send {
    /// Runs inside the batch transaction. Returns false when its changes must be rolled back.
    fn run(&mut self, ctx: &mut WriteCtx<'_>) -> bool;
    /// Called once the batch is committed (or failed to commit) after `commit`.
    fn finish(self: Box<Self>, committed: Result<(), String>, commit: Duration);
}

/// A job made from a closure, answering on a oneshot channel.
pub struct FnJob<T, F> {
    f: Option<F>,
    out: Option<StoreResult<T>>,
    reply: oneshot::Sender<StoreResult<T>>,
    /// The timing record of the request the job serves, and when the job was queued.
    stages: Option<Arc<Stages>>,
    queued: Instant,
}

impl<T, F> FnJob<T, F>
where
    T: Send + 'static,
    F: FnOnce(&mut WriteCtx<'_>) -> StoreResult<T> + Send + 'static,
{
    pub fn boxed(f: F) -> (Box<dyn Job>, oneshot::Receiver<StoreResult<T>>) {
        let (reply, rx) = oneshot::channel();
        let job = FnJob { f: Some(f), out: None, reply, stages: timing::current(), queued: Instant::now() };
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
        let keep = !matches!(out, Err(StoreError::Backend(_)));
        self.out = Some(out);
        keep
    }

    fn finish(self: Box<Self>, committed: Result<(), String>, commit: Duration) {
        if let Some(s) = &self.stages {
            s.add(Stage::Commit, commit);
        }
        let result = match committed {
            Ok(()) => self.out.unwrap_or_else(|| Err(StoreError::Backend("the job did not run".into()))),
            Err(e) => Err(StoreError::Backend(e.into())),
        };
        let _ = self.reply.send(result);
    }
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

/// The writer thread's loop: runs until every sender is gone.
pub fn run(conn: Connection, mut chain: Chain, mut rx: mpsc::Receiver<Box<dyn Job>>) {
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let (result, commit) = run_batch(&conn, &mut chain, &mut batch);
        if let Err(e) = &result {
            tracing::error!(error = %e, jobs = batch.len(), "store transaction failed; nothing of it was kept");
            if let Ok(c) = load_chain(&conn) {
                chain = c;
            }
        }
        for job in batch.drain(..) {
            job.finish(result.clone(), commit);
        }
    }
}

/// Runs the batch in one transaction; returns the outcome and how long the commit took.
fn run_batch(conn: &Connection, chain: &mut Chain, batch: &mut [Box<dyn Job>]) -> (Result<(), String>, Duration) {
    let start = *chain;
    let mut commit = Duration::ZERO;
    let outcome = (|| -> rusqlite::Result<()> {
        conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        for job in batch.iter_mut() {
            conn.prepare_cached("SAVEPOINT job")?.execute([])?;
            let before = *chain;
            let keep = job.run(&mut WriteCtx { conn, chain });
            if !keep {
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
        e.to_string()
    });
    (outcome, commit)
}
