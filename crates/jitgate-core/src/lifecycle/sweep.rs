//! The audit records of the expiry sweep: a grant whose end passed, a scheduled grant that opened.

use time::OffsetDateTime;

use crate::audit::{ops, AuditEvent, AuditStatus};
use crate::timefmt::rfc3339;

use super::GrantState;

/// A grant the sweep changes: its row, its request and its policy (ARM id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Swept<'a> {
    pub gid: i64,
    pub rid: i64,
    pub policy_id: &'a str,
}

fn sweep_event(now: OffsetDateTime, operation: &str, correlation: String, grant: Swept<'_>) -> AuditEvent {
    AuditEvent {
        time: now,
        operation: operation.into(),
        status: AuditStatus::Succeeded,
        caller: "jitgate".into(),
        caller_ip: None,
        resource_id: grant.policy_id.to_owned(),
        correlation_id: correlation,
        properties: Default::default(),
    }
    .with("requestId", grant.rid.to_string())
}

/// The audit record of `grant` (VM `vm_id`, port `number`, `sources` as stored: one prefix a
/// line) expiring at `now`: it was `was`, it is `now_state`.
pub fn expired_event(
    now: OffsetDateTime,
    grant: Swept<'_>,
    vm_id: &str,
    number: u16,
    sources: &str,
    was: &GrantState,
    now_state: &GrantState,
) -> AuditEvent {
    sweep_event(now, ops::GRANT_EXPIRE, format!("expiry-{}", grant.gid), grant)
        .with("virtualMachine", vm_id.to_owned())
        .with("port", number.to_string())
        .with("sources", sources.replace('\n', " "))
        .with("endTimeUtc", rfc3339(was.end_time))
        .with("reason", now_state.reason.as_str())
}

/// The audit record of the scheduled `grant` opening at `now`.
pub fn opened_event(now: OffsetDateTime, grant: Swept<'_>) -> AuditEvent {
    sweep_event(now, ops::GRANT_OPEN, format!("open-{}", grant.gid), grant)
}
