//! Webhooks and their delivery outbox. Events are queued in the same transaction as the change
//! that causes them, so none is lost; delivery happens later, off the request path.
//!
//! Webhook secrets are sealed at rest with the store's [`Keyring`], bound to the webhook's id;
//! [`seal_all`] runs at every open and leaves every secret sealed under the current key.

use rusqlite::{params, Connection, OptionalExtension, Row};
use time::OffsetDateTime;

use jitgate_api_types::webhook::WebhookPayload;
use jitgate_core::outbox;
use jitgate_store::secrets::{Keyring, SealReport, SecretsError};
use jitgate_store::{Delivery, Webhook};

use crate::rows::{from_nanos, nanos};

fn secret_error(webhook: &str, e: SecretsError) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        0,
        rusqlite::types::Type::Text,
        format!("the secret of webhook {webhook} {e}").into(),
    )
}

/// The plain secret of a webhook row (`secret`, sealed under `secret_key`).
fn open_secret(r: &Row<'_>, webhook: &str, keys: &Keyring) -> rusqlite::Result<String> {
    let secret: String = r.get("secret")?;
    // A secret written before secrets were sealed is in the clear; `seal_all` seals it at the next open.
    let key_id: Option<String> = r.get("secret_key")?;
    keys.open_stored(key_id.as_deref(), &secret, webhook).map_err(|e| secret_error(webhook, e))
}

pub fn hook_from_row(r: &Row<'_>, keys: &Keyring) -> rusqlite::Result<Webhook> {
    let events: String = r.get("events")?;
    let id: String = r.get("id")?;
    Ok(Webhook {
        secret: open_secret(r, &id, keys)?,
        id,
        subscription: r.get("subscription")?,
        principal: r.get("principal")?,
        url: r.get("url")?,
        events: events.split_whitespace().map(String::from).collect(),
        created: from_nanos(r.get("created")?)?,
    })
}

pub fn hook(conn: &Connection, id: &str, keys: &Keyring) -> rusqlite::Result<Option<Webhook>> {
    conn.prepare_cached("SELECT * FROM webhooks WHERE id = ?1")?.query_row([id], |r| hook_from_row(r, keys)).optional()
}

/// Inserts a webhook with its secret sealed under the keyring's current key.
pub fn insert(conn: &Connection, hook: &Webhook, keys: &Keyring) -> rusqlite::Result<()> {
    let sealed = keys.seal(&hook.secret, &hook.id).map_err(|e| secret_error(&hook.id, e))?;
    conn.execute(
        "INSERT INTO webhooks (id, subscription, principal, url, secret, secret_key, events, created)          VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            hook.id,
            hook.subscription,
            hook.principal,
            hook.url,
            sealed.ciphertext,
            sealed.key_id,
            hook.events.join(" "),
            nanos(hook.created)
        ],
    )?;
    Ok(())
}

/// Leaves every webhook secret sealed under the keyring's current key, in one transaction: seals
/// plaintext secrets (from before sealing existed), re-seals those under an older key (rotation),
/// and opens the rest to prove the key is the right one. Any secret that does not open fails the
/// whole call, naming the webhook and the key, and nothing is changed.
pub fn seal_all(conn: &Connection, keys: &Keyring) -> Result<SealReport, String> {
    let run = || -> rusqlite::Result<SealReport> {
        let rows: Vec<(String, String, Option<String>)> = conn
            .prepare("SELECT id, secret, secret_key FROM webhooks ORDER BY id")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let mut report = SealReport::default();
        for (id, secret, key_id) in rows {
            let resealed = report.reseal(keys, &id, &secret, key_id.as_deref()).map_err(|e| secret_error(&id, e))?;
            let Some(sealed) = resealed else { continue };
            conn.execute(
                "UPDATE webhooks SET secret = ?2, secret_key = ?3 WHERE id = ?1",
                params![id, sealed.ciphertext, sealed.key_id],
            )?;
        }
        Ok(report)
    };
    // Whatever a seal replaces is overwritten on disk, not left in free space; and the WAL is
    // emptied into the database afterwards, so no clear-text copy stays behind.
    conn.execute_batch("PRAGMA secure_delete = ON; BEGIN IMMEDIATE").map_err(|e| e.to_string())?;
    match run() {
        Ok(report) => {
            conn.execute_batch("COMMIT; PRAGMA secure_delete = OFF;").map_err(|e| e.to_string())?;
            if report.sealed + report.resealed > 0 {
                conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).map_err(|e| e.to_string())?;
            }
            Ok(report)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK; PRAGMA secure_delete = OFF;");
            Err(match e {
                rusqlite::Error::FromSqlConversionFailure(_, _, inner) => inner.to_string(),
                other => other.to_string(),
            })
        }
    }
}

pub fn delivery_from_row(r: &Row<'_>, keys: &Keyring) -> rusqlite::Result<Delivery> {
    let delivered: Option<i64> = r.get("delivered")?;
    let attempts: i64 = r.get("attempts")?;
    let webhook_id: String = r.get("webhook_id")?;
    Ok(Delivery {
        id: r.get("id")?,
        secret: open_secret(r, &webhook_id, keys)?,
        webhook_id,
        url: r.get("url")?,
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
    "SELECT d.*, w.url, w.secret, w.secret_key FROM deliveries d JOIN webhooks w ON w.id = d.webhook_id";

/// Queues `event` about request `rid` for every webhook that wants it: those of the policy's
/// subscription, and the requester's own.
pub fn enqueue(conn: &Connection, event: &str, rid: i64, now: OffsetDateTime) -> rusqlite::Result<usize> {
    // Most stores have no webhook at all: one look at the (small) table, and done.
    let any: Option<i64> =
        conn.prepare_cached("SELECT 1 FROM webhooks LIMIT 1")?.query_row([], |r| r.get(0)).optional()?;
    if any.is_none() {
        return Ok(0);
    }
    let Some((policy_id, requestor)): Option<(String, String)> = conn
        .prepare_cached("SELECT policy_id, requestor FROM requests WHERE rid = ?1")?
        .query_row([rid], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?
    else {
        return Ok(0);
    };
    let subscription = outbox::subscription_of(&policy_id);
    let hooks: Vec<(String, String)> = conn
        .prepare_cached("SELECT id, events FROM webhooks WHERE lower(subscription) = ?1 OR principal = ?2")?
        .query_map(params![subscription, requestor], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    if hooks.is_empty() {
        return Ok(0);
    }
    let request = crate::rows::load_request(conn, rid)?;
    let payload = WebhookPayload::new(event, &policy_id, &request, now).to_json();
    let mut n = 0;
    for (id, events) in hooks {
        if !outbox::wants(&events, event) {
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
