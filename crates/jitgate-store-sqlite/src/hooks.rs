//! Webhooks and their delivery outbox. Events are queued in the same transaction as the change
//! that causes them, so none is lost; delivery happens later, off the request path.

use rusqlite::{params, Connection, OptionalExtension, Row};
use time::OffsetDateTime;

use jitgate_store::{Delivery, Webhook};

use crate::rows::{from_nanos, nanos};

pub fn hook_from_row(r: &Row<'_>) -> rusqlite::Result<Webhook> {
    let events: String = r.get("events")?;
    Ok(Webhook {
        id: r.get("id")?,
        subscription: r.get("subscription")?,
        principal: r.get("principal")?,
        url: r.get("url")?,
        secret: r.get("secret")?,
        events: events.split_whitespace().map(String::from).collect(),
        created: from_nanos(r.get("created")?)?,
    })
}

pub fn hook(conn: &Connection, id: &str) -> rusqlite::Result<Option<Webhook>> {
    conn.prepare_cached("SELECT * FROM webhooks WHERE id = ?1")?.query_row([id], hook_from_row).optional()
}

pub fn delivery_from_row(r: &Row<'_>) -> rusqlite::Result<Delivery> {
    let delivered: Option<i64> = r.get("delivered")?;
    let attempts: i64 = r.get("attempts")?;
    Ok(Delivery {
        id: r.get("id")?,
        webhook_id: r.get("webhook_id")?,
        url: r.get("url")?,
        secret: r.get("secret")?,
        event: r.get("event")?,
        payload: r.get("payload")?,
        state: r.get("state")?,
        attempts: attempts as u32,
        next_attempt: from_nanos(r.get("next_attempt")?)?,
        last_error: r.get("last_error")?,
        created: from_nanos(r.get("created")?)?,
        delivered: delivered.map(from_nanos).transpose()?,
    })
}

pub const DELIVERY_SELECT: &str =
    "SELECT d.*, w.url, w.secret FROM deliveries d JOIN webhooks w ON w.id = d.webhook_id";

/// Queues `event` about request `rid` for every webhook that wants it: those of the policy's
/// subscription, and the requester's own.
pub fn enqueue(conn: &Connection, event: &str, rid: i64, now: OffsetDateTime) -> rusqlite::Result<usize> {
    let Some((policy_id, requestor)): Option<(String, String)> = conn
        .prepare_cached("SELECT policy_id, requestor FROM requests WHERE rid = ?1")?
        .query_row([rid], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?
    else {
        return Ok(0);
    };
    let subscription = policy_id.split('/').nth(2).unwrap_or("").to_ascii_lowercase();
    let hooks: Vec<(String, String)> = conn
        .prepare_cached("SELECT id, events FROM webhooks WHERE lower(subscription) = ?1 OR principal = ?2")?
        .query_map(params![subscription, requestor], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    if hooks.is_empty() {
        return Ok(0);
    }
    let request = crate::rows::load_request(conn, rid)?;
    let ports: Vec<serde_json::Value> = request
        .grants
        .iter()
        .map(|g| {
            serde_json::json!({
                "virtualMachine": g.vm_id, "number": g.number, "protocol": g.protocol.as_str(),
                "sources": g.sources.prefixes().iter().map(|p| p.text()).collect::<Vec<_>>(),
                "endTimeUtc": g.end_time.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
                "status": g.status.as_str(), "statusReason": g.status_reason.as_str(),
            })
        })
        .collect();
    let payload = serde_json::json!({
        "event": event,
        "time": now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        "requestId": rid,
        "policyId": policy_id,
        "requestor": requestor,
        "justification": request.justification,
        "ports": ports,
    })
    .to_string();
    let mut n = 0;
    for (id, events) in hooks {
        if !events.is_empty() && !events.split_whitespace().any(|e| e.eq_ignore_ascii_case(event)) {
            continue;
        }
        conn.prepare_cached(
            "INSERT INTO deliveries (webhook_id, event, payload, state, next_attempt, created) VALUES (?1, ?2, ?3, 'Pending', ?4, ?4)",
        )?
        .execute(params![id, event, payload, nanos(now)])?;
        n += 1;
    }
    Ok(n)
}
