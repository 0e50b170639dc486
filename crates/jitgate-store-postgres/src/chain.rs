//! Appending to the audit chain from any number of replicas.
//!
//! `hash = SHA-256(prev_hash ‖ seq ‖ canonical(record))` needs the previous record's hash, so
//! appends must form one line. The head of the chain (last sequence number and hash) is one row,
//! `audit_head`; a change locks it (`SELECT … FOR UPDATE`) only at commit, chains its records
//! onto it, writes them in one statement, moves the head, and commits. Two writers, on one
//! replica or two, wait for each other there and nowhere else.

use jitgate_core::audit::{chain_hash, AuditEvent};

use crate::rows::{hash_from_hex, nanos};
use tokio_postgres::Row;

use crate::{Db, Res};

/// Locks the head of the chain (until the transaction ends) and reads it.
pub const LOCK_HEAD: &str = "SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE";

/// Appends `events`, in order, to the chain (inside the caller's transaction), after the head
/// `head` (a row of [`LOCK_HEAD`], read in this transaction).
pub async fn append(db: &Db, head: Row, events: Vec<AuditEvent>) -> Res<()> {
    if events.is_empty() {
        return Ok(());
    }
    let mut seq: i64 = head.try_get(0)?;
    let mut prev = hash_from_hex(&head.try_get::<_, String>(1)?)?;
    let n = events.len();
    let (mut seqs, mut times, mut operations, mut statuses) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut callers, mut ips, mut resources, mut correlations) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut properties, mut prevs, mut hashes) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    for event in events {
        // Every field is bounded first: what a caller sends can never make a record large.
        let event = if event.is_bounded() { event } else { event.bounded() };
        seq += 1;
        let hash = chain_hash(&prev, seq.max(0) as u64, &event);
        seqs.push(seq);
        times.push(nanos(event.time));
        operations.push(event.operation.clone());
        statuses.push(event.status.as_str().to_owned());
        callers.push(event.caller.clone());
        ips.push(event.caller_ip.clone());
        resources.push(event.resource_id.clone());
        correlations.push(event.correlation_id.clone());
        properties.push(serde_json::to_string(&event.properties).unwrap_or_else(|_| "{}".into()));
        prevs.push(hex::encode(prev));
        hashes.push(hex::encode(hash));
        prev = hash;
    }
    let (next, next_hash) = (seq, hex::encode(prev));
    let columns: crate::Params<'_> = &[
        &seqs,
        &times,
        &operations,
        &statuses,
        &callers,
        &ips,
        &resources,
        &correlations,
        &properties,
        &prevs,
        &hashes,
    ];
    let insert = db.exec(
        "INSERT INTO audit (seq, time, operation, status, caller, caller_ip, resource_id, correlation_id, properties, \
         prev_hash, hash) SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], \
         $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[])",
        columns,
    );
    // Both sent at once: the server runs the insert, then moves the head.
    let moved_to: crate::Params<'_> = &[&next, &next_hash];
    let moved = db.exec("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1", moved_to);
    tokio::try_join!(biased; insert, moved)?;
    Ok(())
}
