//! The webhook outbox, decided once for every store: which events a change of a request makes,
//! which webhooks a delivery goes to, and the state a delivery takes after an attempt.
//!
//! A store queues the deliveries these functions name in the transaction of the change, so none
//! is lost; the server delivers them later (with its backoff) and reports each attempt.

use time::OffsetDateTime;

/// A request was made (or an extension asked for).
pub const REQUESTED: &str = "requested";
/// An approver approved (a request or an extension).
pub const APPROVED: &str = "approved";
/// An approver denied (a request or an extension).
pub const DENIED: &str = "denied";
/// Grants opened: at once, on approval, or at a scheduled start.
pub const OPENED: &str = "opened";
/// Live grants end soon (the store warns once per request, a few minutes ahead).
pub const EXPIRING_SOON: &str = "expiringSoon";
/// Grants were revoked (by a person, or with a deleted principal).
pub const REVOKED: &str = "revoked";
/// A grant's end passed.
pub const EXPIRED: &str = "expired";
/// Every event, in the order the documentation lists them.
pub const EVENTS: [&str; 7] = [REQUESTED, APPROVED, DENIED, OPENED, EXPIRING_SOON, REVOKED, EXPIRED];

/// The events of an accepted initiate: `requested`, and `opened` when a grant opened at once.
pub fn on_initiate(opened: bool) -> &'static [&'static str] {
    if opened {
        &[REQUESTED, OPENED]
    } else {
        &[REQUESTED]
    }
}

/// The events of an approver's decision on a pending request: an approval opens its grants.
pub fn on_decision(approved: bool) -> &'static [&'static str] {
    if approved {
        &[APPROVED, OPENED]
    } else {
        &[DENIED]
    }
}

/// The events of an approver's decision on a pending extension (the grants are open already).
pub fn on_extension_decision(approved: bool) -> &'static [&'static str] {
    if approved {
        &[APPROVED]
    } else {
        &[DENIED]
    }
}

/// The subscription (lower-cased) of a policy id: a webhook of that subscription hears about
/// the policy's requests.
pub fn subscription_of(policy_id: &str) -> String {
    policy_id.split('/').nth(2).unwrap_or("").to_ascii_lowercase()
}

/// Whether a webhook subscribed to `events` (space-separated; empty: every event) wants `event`.
pub fn wants(events: &str, event: &str) -> bool {
    events.is_empty() || events.split_whitespace().any(|e| e.eq_ignore_ascii_case(event))
}

/// A delivery waiting for its (next) attempt.
pub const PENDING: &str = "Pending";
/// A delivery the receiver accepted.
pub const DELIVERED: &str = "Delivered";
/// A delivery given up on.
pub const FAILED: &str = "Failed";

/// Attempts before a delivery is given up (backoff 1 s, 2 s, 4 s … between them).
pub const MAX_ATTEMPTS: u32 = 8;

/// When a delivery is tried again after its `attempts`-th attempt (counting from 1) at `now`:
/// never after a success or the last attempt, else after 1 s, 2 s, 4 s … doubling (at most
/// 1,024 s).
pub fn retry_at(attempts: u32, ok: bool, now: OffsetDateTime) -> Option<OffsetDateTime> {
    (!ok && attempts < MAX_ATTEMPTS).then(|| now + time::Duration::seconds(1 << attempts.saturating_sub(1).min(10)))
}

/// The state of a delivery after an attempt at `now`, and when it is next due: delivered (`ok`),
/// pending until `next` (a retry), or failed (no retry left).
pub fn attempted(ok: bool, next: Option<OffsetDateTime>, now: OffsetDateTime) -> (&'static str, OffsetDateTime) {
    match (ok, next) {
        (true, _) => (DELIVERED, now),
        (false, Some(next)) => (PENDING, next),
        (false, None) => (FAILED, now),
    }
}

/// The code of a webhook that does not exist.
pub const WEBHOOK_NOT_FOUND: &str = "WebhookNotFound";

/// No webhook has id `id`.
pub fn webhook_not_found(id: &str) -> crate::Invalid {
    crate::Invalid::not_found(WEBHOOK_NOT_FOUND, format!("no webhook {id}"))
}

/// The audit record of webhook `id` to `url`, for a subscription's or a principal's requests.
pub fn webhook_created(
    audit: crate::audit::AuditEvent,
    id: &str,
    url: &str,
    subscription: Option<&str>,
    principal: Option<&str>,
) -> crate::audit::AuditEvent {
    audit
        .succeeded()
        .with("webhookId", id.to_owned())
        .with("url", url.to_owned())
        .with("subscription", subscription.unwrap_or_default().to_owned())
        .with("principal", principal.unwrap_or_default().to_owned())
}

#[cfg(test)]
mod tests;
