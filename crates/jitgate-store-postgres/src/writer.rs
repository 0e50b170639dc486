//! Group commit: one writer per replica runs the changes waiting at the same moment in one
//! transaction, each inside a savepoint of its own, and commits them together.
//!
//! A change keeps the row locks it takes until its transaction commits, and every change ends
//! by locking the revision counter and the audit chain's head. Committed one by one, changes
//! would pass through those locks one commit flush at a time, on every replica together. In a
//! batch, the locks are taken once and one flush serves every change in it: what a change
//! decides, it still decides alone (its savepoint sees the batch's earlier changes as any later
//! transaction would), a change that fails is rolled back to its savepoint without touching the
//! others, and nothing is answered before the commit.
//!
//! Round trips are what a batch's changes cost, one after another: a change's savepoint is sent
//! with its first statement, and a change sends the statements that do not wait for each other's
//! answers together (see [`Db`](crate::Db)); a change that ran no statement set no savepoint and
//! has nothing to undo. The commit sends the revision's move with the lock of the chain's head,
//! and the chain's records with the head's move.
//!
//! A batch holds the locks of all its changes until it commits, so two batches on two replicas
//! that lock the same rows in different orders would deadlock. Every batch therefore first takes
//! one advisory lock ([`BATCH_LOCK`]): the replicas' batches run one at a time, each carrying
//! every change that waited for it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot, watch};

use jitgate_store::observe::Observer;
use jitgate_store::{StoreError, StoreResult};

use crate::{backend, Ctx, Db, Error, Fut, Lead};

/// The advisory lock every batch holds until it commits (`jitgate` in ASCII, then 3).
pub(crate) const BATCH_LOCK: i64 = 0x6a69_7467_6174_6503;
/// The most changes one transaction carries.
pub(crate) const MAX_BATCH: usize = 64;
/// Changes that may wait for the writer before callers wait to hand theirs over.
pub(crate) const QUEUE: usize = 4096;

/// What running a change left: whether it is kept (done, or refused with its audit record) or
/// undone, and how its caller learns the end once the batch has committed (or failed to).
pub(crate) struct Ran {
    keep: bool,
    finish: Box<dyn FnOnce(Option<StoreError>) + Send>,
}

/// A change waiting for the writer.
pub(crate) trait Job: Send {
    /// Runs the change inside the batch's transaction.
    fn run<'c>(self: Box<Self>, ctx: &'c mut Ctx) -> Pin<Box<dyn Future<Output = Ran> + Send + 'c>>;
    /// Answers the caller without running the change (the batch could not start).
    fn fail(self: Box<Self>, error: StoreError);
}

struct Typed<T, F> {
    f: F,
    reply: oneshot::Sender<StoreResult<T>>,
}

impl<T, F> Job for Typed<T, F>
where
    T: Send + 'static,
    F: for<'c> FnOnce(&'c mut Ctx) -> Fut<'c, T> + Send + 'static,
{
    fn run<'c>(self: Box<Self>, ctx: &'c mut Ctx) -> Pin<Box<dyn Future<Output = Ran> + Send + 'c>> {
        let Typed { f, reply } = *self;
        Box::pin(async move {
            match f(ctx).await {
                out @ (Ok(_) | Err(Error::Store(StoreError::Rejected(_)))) => Ran {
                    keep: true,
                    finish: Box::new(move |failed| {
                        let _ = reply.send(match failed {
                            None => out.map_err(StoreError::from),
                            Some(e) => Err(e),
                        });
                    }),
                },
                Err(e) => Ran {
                    keep: false,
                    finish: Box::new(move |_| {
                        let _ = reply.send(Err(StoreError::from(e)));
                    }),
                },
            }
        })
    }

    fn fail(self: Box<Self>, error: StoreError) {
        let _ = self.reply.send(Err(error));
    }
}

/// Hands `f` to the writer and waits for its end.
pub(crate) async fn submit<T, F>(queue: &mpsc::Sender<Box<dyn Job>>, f: F) -> StoreResult<T>
where
    T: Send + 'static,
    F: for<'c> FnOnce(&'c mut Ctx) -> Fut<'c, T> + Send + 'static,
{
    let (reply, answer) = oneshot::channel();
    queue.send(Box::new(Typed { f, reply })).await.map_err(|_| backend("the store's writer has stopped"))?;
    answer.await.map_err(|_| backend("the store's writer stopped before the change ended"))?
}

/// The writer: takes what is waiting, up to [`MAX_BATCH`], and commits it as one transaction,
/// until every sender is gone.
pub(crate) async fn run(
    pool: Pool,
    mut queue: mpsc::Receiver<Box<dyn Job>>,
    changes: Arc<watch::Sender<u64>>,
    origin: Arc<str>,
    observer: Observer,
) {
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let jobs = std::mem::take(&mut batch);
        // Each batch on a task of its own: a panic in one change fails its batch, not the writer.
        let task = tokio::spawn(commit_batch(pool.clone(), jobs, changes.clone(), origin.clone(), observer.clone()));
        if let Err(e) = task.await {
            tracing::error!(error = %e, "a batch of store changes failed");
        }
    }
}

/// A failure that ends the whole batch, for each caller in it.
pub(crate) fn each(e: &Error) -> impl Fn() -> StoreError + '_ {
    move || match e {
        Error::Db(d) if crate::is_conflict(d) => StoreError::Conflict(e.to_string().into()),
        Error::Db(d) if crate::is_full(d) => StoreError::Full(e.to_string().into()),
        Error::Db(d) if crate::unreachable(d) => StoreError::Unavailable(e.to_string().into()),
        Error::Pool(_) => StoreError::Unavailable(e.to_string().into()),
        _ => backend(format!("the change was not committed: {e}")),
    }
}

/// Runs `jobs` in one transaction; publishes the revision it moved to, if it did, before any
/// caller learns the end.
async fn commit_batch(
    pool: Pool,
    jobs: Vec<Box<dyn Job>>,
    changes: Arc<watch::Sender<u64>>,
    origin: Arc<str>,
    observer: Observer,
) {
    let client = match pool.get().await {
        Ok(c) => c,
        Err(e) => {
            let e = Error::from(e);
            let failure = each(&e);
            jobs.into_iter().for_each(|j| j.fail(failure()));
            return;
        }
    };
    let mut ctx = Ctx { db: Db::new(client), events: Vec::new(), bump: false };
    // The origin names this replica in the signals the batch's commit sends (it is made of hex
    // digits only: see `PgStore::open`).
    let begin = format!("BEGIN; SET LOCAL jitgate.origin = '{origin}'; SELECT pg_advisory_xact_lock({BATCH_LOCK})");
    if let Err(e) = ctx.db.begin(&begin).await {
        let failure = each(&e);
        jobs.into_iter().for_each(|j| j.fail(failure()));
        return;
    }
    // One change alone needs no savepoint: if it fails, the transaction is rolled back whole.
    let alone = jobs.len() == 1;
    let mut kept: Vec<Box<dyn FnOnce(Option<StoreError>) + Send>> = Vec::with_capacity(jobs.len());
    let mut undone: Vec<Box<dyn FnOnce(Option<StoreError>) + Send>> = Vec::new();
    let mut jobs = jobs.into_iter();
    let fatal: Option<Error> = loop {
        let Some(job) = jobs.next() else { break None };
        let (events, bump) = (ctx.events.len(), ctx.bump);
        if !alone {
            // Sent with the change's first statement, in the same round trip.
            ctx.db.savepoint_ahead();
        }
        let ran = job.run(&mut ctx).await;
        let set = match ctx.db.savepoint_taken() {
            Lead::Failed(e) => {
                // Without its savepoint the change cannot be undone alone: the batch ends.
                if ran.keep {
                    kept.push(ran.finish);
                } else {
                    undone.push(ran.finish);
                }
                break Some(e);
            }
            Lead::Set => true,
            Lead::None | Lead::Due => false,
        };
        if ran.keep {
            // The savepoint stays (released at commit): one round trip less per change. A batch
            // nests at most MAX_BATCH of them, within PostgreSQL's per-transaction cache.
            kept.push(ran.finish);
            continue;
        }
        ctx.events.truncate(events);
        ctx.bump = bump;
        undone.push(ran.finish);
        if alone {
            break None;
        }
        // A change that ran no statement left nothing to undo (its savepoint was never set, and
        // rolling back to the name would undo the change before it).
        if set {
            if let Err(e) = ctx.db.batch("ROLLBACK TO SAVEPOINT change").await {
                break Some(e);
            }
        }
    };
    // Nothing left to keep (one change alone failed): roll back and answer.
    if fatal.is_none() && kept.is_empty() {
        let _ = ctx.db.end("ROLLBACK").await;
        undone.into_iter().for_each(|f| f(None));
        return;
    }
    let (audit_records, committing) = (ctx.events.len(), std::time::Instant::now());
    let committed = match fatal {
        Some(e) => Err(e),
        None => ctx.commit().await,
    };
    match committed {
        Ok(revision) => {
            observer.committed(kept.len(), audit_records, committing.elapsed());
            if let Some(r) = revision {
                changes.send_if_modified(|v| {
                    let newer = r > *v;
                    if newer {
                        *v = r;
                    }
                    newer
                });
            }
            kept.into_iter().for_each(|f| f(None));
            undone.into_iter().for_each(|f| f(None));
        }
        Err(e) => {
            let _ = ctx.db.end("ROLLBACK").await;
            let failure = each(&e);
            kept.into_iter().for_each(|f| f(Some(failure())));
            undone.into_iter().for_each(|f| f(None));
            jobs.for_each(|j| j.fail(failure()));
        }
    }
}

/// Starts the writer of a store on `pool`; returns where changes are handed to it.
pub(crate) fn start(
    pool: Pool,
    changes: Arc<watch::Sender<u64>>,
    origin: Arc<str>,
    observer: Observer,
) -> mpsc::Sender<Box<dyn Job>> {
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(run(pool, rx, changes, origin, observer));
    tx
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may panic on a failed expectation.

    use super::*;
    use crate::testdb::TestDatabase;
    use jitgate_store::secrets::Keyring;
    use jitgate_store::IdentityStore;

    fn job<T, F>(f: F) -> (Box<dyn Job>, oneshot::Receiver<StoreResult<T>>)
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut Ctx) -> Fut<'c, T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        (Box::new(Typed { f, reply }), answer)
    }

    /// A change that inserts principal `name`, then fails if `fail`.
    fn insert(name: &'static str, fail: bool) -> (Box<dyn Job>, oneshot::Receiver<StoreResult<()>>) {
        job(move |ctx| {
            Box::pin(async move {
                ctx.db.exec("INSERT INTO principals (name, kind, created) VALUES ($1, 'User', 0)", &[&name]).await?;
                match fail {
                    true => Err(Error::Store(backend("undone after it wrote"))),
                    false => Ok(()),
                }
            })
        })
    }

    /// One batch of changes, some of them failing — one after it wrote, one before it ran any
    /// statement (its savepoint was never set) — and one that runs none and is kept: each
    /// failure is undone alone, every other change is committed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn in_one_batch_a_failed_change_is_undone_alone_even_one_that_ran_no_statement() {
        let db = match TestDatabase::create().await {
            Ok(db) => db,
            Err(why) => return jitgate_netns::skip("a_failed_change_is_undone_alone", &why),
        };
        let store = crate::PgStore::open(db.url(), Keyring::generate().expect("random")).await.expect("open");
        let (a, a_said) = insert("a", false);
        let (none, none_said) =
            job(|_ctx| Box::pin(async { Err::<(), _>(Error::Store(backend("refused before any statement"))) }));
        let (c, c_said) = insert("c", true);
        let (quiet, quiet_said) = job(|_ctx| Box::pin(async { Ok(()) }));
        let (d, d_said) = insert("d", false);
        let jobs = vec![a, none, c, quiet, d];
        commit_batch(store.pool.clone(), jobs, store.changes.clone(), store.origin.clone(), store.observer.clone())
            .await;
        assert!(a_said.await.expect("answered").is_ok());
        assert!(none_said.await.expect("answered").is_err());
        assert!(c_said.await.expect("answered").is_err());
        assert!(quiet_said.await.expect("answered").is_ok());
        assert!(d_said.await.expect("answered").is_ok());
        let names: Vec<String> = store.list_principals().await.expect("list").into_iter().map(|p| p.name).collect();
        assert!(names.contains(&"a".to_string()), "{names:?}");
        assert!(names.contains(&"d".to_string()), "{names:?}");
        assert!(!names.contains(&"c".to_string()), "{names:?}");
    }
}
