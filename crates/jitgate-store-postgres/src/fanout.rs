//! Many agents at once. A change wakes every agent's long-poll together; each then reads its
//! state and has its delivery noted. Those calls are gathered here: whatever has arrived while
//! the previous round ran is served by one read (a fixed number of statements for any number of
//! agents) and one write, instead of one transaction per agent.

use std::collections::HashMap;

use deadpool_postgres::Pool;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use jitgate_core::enforcement::EnforcementState;
use jitgate_core::join;
use jitgate_store::{StoreError, StoreResult};

use crate::writer::Job;
use crate::{agents, backend, rows, Db, Res};

/// The most calls one round serves.
const ROUND: usize = 1024;

/// One agent's state, asked for.
pub(crate) struct StateAsk {
    pub id: String,
    pub now: OffsetDateTime,
    pub reply: oneshot::Sender<StoreResult<EnforcementState>>,
}

/// One delivery to note: the agent, the revision it was sent.
pub(crate) struct Delivered {
    pub id: String,
    pub revision: i64,
    pub reply: oneshot::Sender<StoreResult<()>>,
}

/// Starts the state reader and the delivery writer of a store.
pub(crate) fn start(
    pool: Pool,
    writer: mpsc::Sender<Box<dyn Job>>,
) -> (mpsc::Sender<StateAsk>, mpsc::Sender<Delivered>) {
    let (states, asks) = mpsc::channel(ROUND * 4);
    let (delivered, deliveries) = mpsc::channel(ROUND * 4);
    tokio::spawn(read_states(pool, asks));
    tokio::spawn(note_deliveries(writer, deliveries));
    (states, delivered)
}

async fn read_states(pool: Pool, mut asks: mpsc::Receiver<StateAsk>) {
    let mut round = Vec::with_capacity(ROUND);
    while asks.recv_many(&mut round, ROUND).await > 0 {
        let batch = std::mem::take(&mut round);
        // The latest instant asked for: a grant that ended before it is left out for everyone.
        let now = batch.iter().map(|a| a.now).max().unwrap_or_else(OffsetDateTime::now_utc);
        let mut ids: Vec<String> = batch.iter().map(|a| a.id.clone()).collect();
        ids.sort_unstable();
        ids.dedup();
        let pool = pool.clone();
        let read = tokio::spawn(async move { states_of(&pool, ids, now).await }).await;
        match read {
            Ok(Ok(mut found)) => {
                for ask in batch {
                    let state =
                        found.get(&ask.id).cloned().ok_or_else(|| StoreError::Rejected(join::agent_removed(&ask.id)));
                    let _ = ask.reply.send(state);
                }
                found.clear();
            }
            Ok(Err(e)) => {
                let text = StoreError::from(e).to_string();
                batch.into_iter().for_each(|a| drop(a.reply.send(Err(backend(text.clone())))));
            }
            Err(e) => {
                let text = format!("reading agents' states: {e}");
                batch.into_iter().for_each(|a| drop(a.reply.send(Err(backend(text.clone())))));
            }
        }
    }
}

/// The states of the agents `ids` (those that still exist), in one read-only snapshot.
async fn states_of(pool: &Pool, ids: Vec<String>, now: OffsetDateTime) -> Res<HashMap<String, EnforcementState>> {
    let mut db = Db::new(pool.get().await?);
    db.begin("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY").await?;
    let found = db
        .rows("SELECT * FROM agents WHERE id = ANY($1)", &[&ids])
        .await?
        .iter()
        .map(rows::agent_from_row)
        .collect::<Res<Vec<_>>>()?;
    let states = agents::states(&db, &found, now).await?;
    db.end("COMMIT").await?;
    Ok(found.into_iter().map(|a| a.id).zip(states).collect())
}

async fn note_deliveries(writer: mpsc::Sender<Box<dyn Job>>, mut notes: mpsc::Receiver<Delivered>) {
    let mut round = Vec::with_capacity(ROUND);
    while notes.recv_many(&mut round, ROUND).await > 0 {
        let batch = std::mem::take(&mut round);
        let mut latest: HashMap<String, i64> = HashMap::new();
        for d in &batch {
            let r = latest.entry(d.id.clone()).or_insert(d.revision);
            *r = (*r).max(d.revision);
        }
        let (ids, revisions): (Vec<String>, Vec<i64>) = latest.into_iter().unzip();
        let written = crate::writer::submit(&writer, move |ctx| {
            Box::pin(async move {
                ctx.db
                    .exec(
                        "UPDATE agents a SET delivered_revision = greatest(a.delivered_revision, u.revision) \
                         FROM unnest($1::text[], $2::bigint[]) AS u(id, revision) WHERE a.id = u.id",
                        &[&ids, &revisions],
                    )
                    .await?;
                Ok(())
            })
        })
        .await;
        match written {
            Ok(()) => batch.into_iter().for_each(|d| drop(d.reply.send(Ok(())))),
            Err(e) => {
                let text = e.to_string();
                batch.into_iter().for_each(|d| drop(d.reply.send(Err(backend(text.clone())))));
            }
        }
    }
}
