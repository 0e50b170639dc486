//! Many agents at once. A change wakes every agent's long-poll together; each then reads its
//! state and has its delivery noted, reports what it applied and polls again, every call
//! authenticated by its credential. Those calls are gathered here: whatever has arrived while
//! the previous round ran is served by one read (a fixed number of statements for any number of
//! agents) or one write, instead of one transaction per agent. A call is answered from a read
//! or write that began after it arrived, so it sees every change committed before it.
//!
//! A round's rows are found by joining `unnest($1)` of the keys asked for, not by `= ANY($1)`:
//! in a prepared statement's generic plan, `= ANY` of a parameter array is checked element by
//! element against every row scanned, a thousand comparisons per row in a round of a thousand.

use std::collections::HashMap;

use deadpool_postgres::Pool;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use jitgate_core::enforcement::EnforcementState;
use jitgate_core::{join, Invalid};
use jitgate_store::{AgentRecord, AgentReport, StoreError, StoreResult};

use crate::writer::Job;
use crate::{agents, backend, nanos, rows, Db, Error, Res};

/// The most calls one round serves.
const ROUND: usize = 1024;

/// The agent a credential belongs to (by the credential's hash), asked for.
pub(crate) struct CredentialAsk {
    pub hash: String,
    pub reply: oneshot::Sender<StoreResult<Option<AgentRecord>>>,
}

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

/// One agent's report of what it applied.
pub(crate) struct Report {
    pub id: String,
    pub report: AgentReport,
    pub reply: oneshot::Sender<StoreResult<()>>,
}

/// Where a store's agents' calls are gathered.
pub(crate) struct Fanout {
    pub credentials: mpsc::Sender<CredentialAsk>,
    pub states: mpsc::Sender<StateAsk>,
    pub delivered: mpsc::Sender<Delivered>,
    pub reports: mpsc::Sender<Report>,
}

/// Starts the credential reader, the state reader, the delivery writer and the report writer
/// of a store.
pub(crate) fn start(pool: Pool, writer: mpsc::Sender<Box<dyn Job>>) -> Fanout {
    let (credentials, credential_asks) = mpsc::channel(ROUND * 4);
    let (states, asks) = mpsc::channel(ROUND * 4);
    let (delivered, deliveries) = mpsc::channel(ROUND * 4);
    let (reports, reported) = mpsc::channel(ROUND * 4);
    tokio::spawn(read_credentials(pool.clone(), credential_asks));
    tokio::spawn(read_states(pool, asks));
    tokio::spawn(note_deliveries(writer.clone(), deliveries));
    tokio::spawn(note_reports(writer, reported));
    Fanout { credentials, states, delivered, reports }
}

/// Credentials are looked up a round at a time: one statement for all the hashes asked for.
async fn read_credentials(pool: Pool, mut asks: mpsc::Receiver<CredentialAsk>) {
    let mut round = Vec::with_capacity(ROUND);
    while asks.recv_many(&mut round, ROUND).await > 0 {
        let batch = std::mem::take(&mut round);
        let mut hashes: Vec<String> = batch.iter().map(|a| a.hash.clone()).collect();
        hashes.sort_unstable();
        hashes.dedup();
        let pool = pool.clone();
        let read = tokio::spawn(async move { agents_by_credential(&pool, hashes).await }).await;
        match read {
            Ok(Ok(found)) => {
                for ask in batch {
                    let _ = ask.reply.send(Ok(found.get(&ask.hash).cloned()));
                }
            }
            Ok(Err(e)) => {
                let e = StoreError::from(e);
                batch.into_iter().for_each(|a| drop(a.reply.send(Err(same_kind(&e)))));
            }
            Err(e) => {
                let text = format!("looking up agents' credentials: {e}");
                batch.into_iter().for_each(|a| drop(a.reply.send(Err(backend(text.clone())))));
            }
        }
    }
}

/// A failure of a round, for each call in it: of the same kind (an unreachable database stays
/// `Unavailable`), with the same message.
fn same_kind(e: &StoreError) -> StoreError {
    let text = |source: &(dyn std::error::Error + Send + Sync)| source.to_string().into();
    match e {
        StoreError::Rejected(i) => StoreError::Rejected(i.clone()),
        StoreError::Backend(s) => StoreError::Backend(text(s.as_ref())),
        StoreError::Conflict(s) => StoreError::Conflict(text(s.as_ref())),
        StoreError::Unavailable(s) => StoreError::Unavailable(text(s.as_ref())),
        StoreError::Full(s) => StoreError::Full(text(s.as_ref())),
        StoreError::DiskFailed(s) => StoreError::DiskFailed(text(s.as_ref())),
    }
}

/// The agents holding the credentials `hashes` (one statement: one snapshot), by hash.
async fn agents_by_credential(pool: &Pool, hashes: Vec<String>) -> Res<HashMap<String, AgentRecord>> {
    let db = Db::new(pool.get().await?);
    let mut found = HashMap::with_capacity(hashes.len());
    let sql = "SELECT a.* FROM unnest($1::text[]) AS u(hash) JOIN agents a ON a.credential_hash = u.hash";
    for r in db.rows(sql, &[&hashes]).await? {
        found.insert(r.try_get("credential_hash")?, rows::agent_from_row(&r)?);
    }
    Ok(found)
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
        .rows("SELECT a.* FROM unnest($1::text[]) AS u(id) JOIN agents a ON a.id = u.id", &[&ids])
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

/// Reports of a round, decided one by one (as `join::report` decides them, each on the agent as
/// the previous report left it) and written with one read and one update: each answered with
/// its own outcome, a refusal with its `Failed` audit record.
async fn note_reports(writer: mpsc::Sender<Box<dyn Job>>, mut reports: mpsc::Receiver<Report>) {
    let mut round = Vec::with_capacity(ROUND);
    while reports.recv_many(&mut round, ROUND).await > 0 {
        let batch = std::mem::take(&mut round);
        let asks: Vec<(String, AgentReport)> = batch.iter().map(|r| (r.id.clone(), r.report.clone())).collect();
        let written = crate::writer::submit(&writer, move |ctx| {
            Box::pin(async move {
                let mut ids: Vec<&str> = asks.iter().map(|(id, _)| id.as_str()).collect();
                ids.sort_unstable();
                ids.dedup();
                let mut known: HashMap<String, join::Reported> = HashMap::new();
                let sql = "SELECT a.id, a.applied_revision, a.nft_usable, a.delivered_revision \
                           FROM unnest($1::text[]) AS u(id) JOIN agents a ON a.id = u.id ORDER BY a.id FOR UPDATE OF a";
                for r in ctx.db.rows(sql, &[&ids]).await? {
                    let reported =
                        join::Reported { applied: r.try_get(1)?, usable: r.try_get(2)?, delivered: r.try_get(3)? };
                    known.insert(r.try_get(0)?, reported);
                }
                let mut outcomes = Vec::with_capacity(asks.len());
                // The latest of each agent: (last seen, applied, usable, error).
                let mut latest: HashMap<String, (i64, i64, bool, Option<String>)> = HashMap::new();
                for (id, report) in &asks {
                    let Some(before) = known.get_mut(id) else {
                        let m = format!("agent {id} is not known");
                        outcomes.push(Err(Invalid::not_found(join::AGENT_NOT_FOUND, m)));
                        continue;
                    };
                    let nft_error = report.nft_error.as_deref();
                    match join::report(id, *before, report.revision, report.now, report.nft_usable, nft_error) {
                        join::Reporting::Refused { event, invalid } => {
                            ctx.audit(event.failed(invalid.message.clone()));
                            outcomes.push(Err(invalid));
                        }
                        join::Reporting::Accepted(audited) => {
                            if let Some(event) = audited {
                                ctx.audit(event);
                            }
                            let revision = i64::try_from(report.revision).unwrap_or(i64::MAX);
                            before.applied = before.applied.max(revision);
                            before.usable = Some(report.nft_usable);
                            let entry = (nanos(report.now), before.applied, report.nft_usable, report.nft_error.clone());
                            latest.insert(id.clone(), entry);
                            outcomes.push(Ok(()));
                        }
                    }
                }
                if !latest.is_empty() {
                    let (mut ids, mut seen, mut applied) = (Vec::new(), Vec::new(), Vec::new());
                    let (mut usable, mut errors) = (Vec::new(), Vec::new());
                    for (id, (s, a, u, e)) in latest {
                        ids.push(id);
                        seen.push(s);
                        applied.push(a);
                        usable.push(u);
                        errors.push(e);
                    }
                    ctx.db
                        .exec(
                            "UPDATE agents a SET last_seen = u.seen, applied_revision = greatest(a.applied_revision, u.applied), \
                             nft_usable = u.usable, nft_error = u.error \
                             FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bool[], $5::text[]) \
                             AS u(id, seen, applied, usable, error) WHERE a.id = u.id",
                            &[&ids, &seen, &applied, &usable, &errors],
                        )
                        .await?;
                }
                Ok::<_, Error>(outcomes)
            })
        })
        .await;
        match written {
            Ok(outcomes) => {
                for (r, outcome) in batch.into_iter().zip(outcomes) {
                    let _ = r.reply.send(outcome.map_err(StoreError::Rejected));
                }
            }
            Err(e) => {
                let text = e.to_string();
                batch.into_iter().for_each(|r| drop(r.reply.send(Err(backend(text.clone())))));
            }
        }
    }
}
