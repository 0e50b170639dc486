//! Webhooks and their delivery outbox. Events are queued in the same transaction as the change
//! that causes them, so none is lost; delivery happens later, off the request path.
//!
//! Webhook secrets are sealed at rest with the store's [`Keyring`] exactly as the SQLite store
//! seals them (`jitgate_store::secrets`), bound to the webhook's id; [`seal_all`] runs at every
//! open and leaves every secret sealed under the current key.

use time::OffsetDateTime;
use tokio_postgres::Row;

use jitgate_api_types::webhook::WebhookPayload;
use jitgate_core::outbox;
use jitgate_store::secrets::{Keyring, SealReport, SecretsError};
use jitgate_store::{Delivery, Webhook};

use crate::rows::{nanos, opt_time, time_at};
use crate::{Db, Error, Res};

fn secret_error(webhook: &str, e: SecretsError) -> Error {
    Error::Corrupt(format!("the secret of webhook {webhook} {e}"))
}

/// The plain secret of a webhook row (`secret`, sealed under `secret_key`).
fn open_secret(r: &Row, webhook: &str, keys: &Keyring) -> Res<String> {
    let secret: String = r.try_get("secret")?;
    // Never in the clear when this store wrote it; `seal_all` would seal it at the next open.
    let key_id: Option<String> = r.try_get("secret_key")?;
    keys.open_stored(key_id.as_deref(), &secret, webhook).map_err(|e| secret_error(webhook, e))
}

pub fn hook_from_row(r: &Row, keys: &Keyring) -> Res<Webhook> {
    let events: String = r.try_get("events")?;
    let id: String = r.try_get("id")?;
    Ok(Webhook {
        secret: open_secret(r, &id, keys)?,
        id,
        subscription: r.try_get("subscription")?,
        principal: r.try_get("principal")?,
        url: r.try_get("url")?,
        events: events.split_whitespace().map(String::from).collect(),
        created: time_at(r, "created")?,
    })
}

pub async fn hook(db: &Db, id: &str, keys: &Keyring) -> Res<Option<Webhook>> {
    db.opt("SELECT * FROM webhooks WHERE id = $1", &[&id]).await?.map(|r| hook_from_row(&r, keys)).transpose()
}

/// Inserts a webhook with its secret sealed under the keyring's current key.
pub async fn insert(db: &Db, hook: &Webhook, keys: &Keyring) -> Res<()> {
    let sealed = keys.seal(&hook.secret, &hook.id).map_err(|e| secret_error(&hook.id, e))?;
    db.exec(
        "INSERT INTO webhooks (id, subscription, principal, url, secret, secret_key, events, created) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &hook.id,
            &hook.subscription,
            &hook.principal,
            &hook.url,
            &sealed.ciphertext,
            &sealed.key_id,
            &hook.events.join(" "),
            &nanos(hook.created),
        ],
    )
    .await?;
    Ok(())
}

/// Leaves every webhook secret sealed under the keyring's current key (inside the caller's
/// transaction): seals plaintext secrets, re-seals those under an older key (rotation), and
/// opens the rest to prove the key is the right one. Any secret that does not open fails the
/// call, naming the webhook and the key.
pub async fn seal_all(db: &Db, keys: &Keyring) -> Res<SealReport> {
    let rows = db.rows("SELECT id, secret, secret_key FROM webhooks ORDER BY id FOR UPDATE", &[]).await?;
    let mut report = SealReport::default();
    for r in rows {
        let (id, secret, key_id): (String, String, Option<String>) = (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
        let resealed = report.reseal(keys, &id, &secret, key_id.as_deref()).map_err(|e| secret_error(&id, e))?;
        let Some(sealed) = resealed else { continue };
        db.exec(
            "UPDATE webhooks SET secret = $2, secret_key = $3 WHERE id = $1",
            &[&id, &sealed.ciphertext, &sealed.key_id],
        )
        .await?;
    }
    Ok(report)
}

pub fn delivery_from_row(r: &Row, keys: &Keyring) -> Res<Delivery> {
    let attempts: i64 = r.try_get("attempts")?;
    let webhook_id: String = r.try_get("webhook_id")?;
    Ok(Delivery {
        id: r.try_get("id")?,
        secret: open_secret(r, &webhook_id, keys)?,
        webhook_id,
        url: r.try_get("url")?,
        event: r.try_get("event")?,
        payload: r.try_get("payload")?,
        state: r.try_get("state")?,
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        next_attempt: time_at(r, "next_attempt")?,
        last_error: r.try_get("last_error")?,
        created: time_at(r, "created")?,
        delivered: opt_time(r, "delivered")?,
    })
}

pub const DELIVERY_SELECT: &str =
    "SELECT d.*, w.url, w.secret, w.secret_key FROM deliveries d JOIN webhooks w ON w.id = d.webhook_id";

/// Queues `event` about request `rid` for every webhook that wants it: those of the policy's
/// subscription, and the requester's own.
pub async fn enqueue(db: &Db, event: &str, rid: i64, now: OffsetDateTime) -> Res<usize> {
    let Some(head) = db.opt("SELECT policy_id, requestor FROM requests WHERE rid = $1", &[&rid]).await? else {
        return Ok(0);
    };
    let (policy_id, requestor): (String, String) = (head.try_get(0)?, head.try_get(1)?);
    let hooks = interested(db, &policy_id, &requestor).await?;
    enqueue_to(db, &hooks, &[event], rid, &policy_id, now).await
}

/// The webhooks that may want events about a request of `requestor` on policy `policy_id`
/// (`id, events`): those of the policy's subscription, and the requester's own.
pub async fn interested(db: &Db, policy_id: &str, requestor: &str) -> Res<Vec<Row>> {
    let subscription = outbox::subscription_of(policy_id);
    db.rows(
        "SELECT id, events FROM webhooks WHERE lower(subscription) = $1 OR principal = $2",
        &[&subscription, &requestor],
    )
    .await
}

/// Queues each of `events` about request `rid` of policy `policy_id` for the webhooks among
/// `hooks` (rows of [`interested`]) that want it.
pub async fn enqueue_to(
    db: &Db,
    hooks: &[Row],
    events: &[&str],
    rid: i64,
    policy_id: &str,
    now: OffsetDateTime,
) -> Res<usize> {
    if hooks.is_empty() || events.is_empty() {
        return Ok(0);
    }
    let request = crate::rows::load_request(db, rid).await?;
    let mut n = 0;
    for event in events {
        let payload = WebhookPayload::new(event, policy_id, &request, now).to_json();
        for h in hooks {
            let (id, wanted): (String, String) = (h.try_get(0)?, h.try_get(1)?);
            if !outbox::wants(&wanted, event) {
                continue;
            }
            db.exec(
                "INSERT INTO deliveries (webhook_id, event, payload, state, next_attempt, created) VALUES ($1, $2, $3, 'Pending', $4, $4)",
                &[&id, event, &payload, &nanos(now)],
            )
            .await?;
            n += 1;
        }
    }
    Ok(n)
}
