//! The refusal of a request that does not exist, and the audit records of the changes a person
//! makes to a request: a revocation, an approver's decision, an extension.

use time::OffsetDateTime;

use crate::audit::AuditEvent;
use crate::initiate::{GrantStatus, StatusReason};
use crate::invalid::{codes, Invalid};
use crate::timefmt::rfc3339;

/// Who a change of a grant is recorded against, besides its new state: nobody (the sweep, a
/// newer grant, an extension), the approver who decided, or the person who revoked it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By<'a> {
    Nobody,
    Decider(&'a str),
    Revoker(&'a str),
}

/// No access request has id `id`.
pub fn request_not_found(id: i64) -> Invalid {
    Invalid::not_found(codes::REQUEST_NOT_FOUND, format!("access request {id} was not found"))
}

/// The audit record of request `id` (of policy `policy_id`) revoked, ending `grants` grants.
pub fn revoked_event(audit: AuditEvent, id: i64, policy_id: String, grants: usize) -> AuditEvent {
    let mut event = audit.succeeded().with("requestId", id.to_string()).with("revokedGrants", grants.to_string());
    event.resource_id = policy_id;
    event
}

/// What an approver decided on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decided {
    /// The pending grants of a request: how many changed.
    Grants(usize),
    /// A pending extension, to this end.
    Extension(OffsetDateTime),
}

/// The audit record of an approver's decision on request `id` of `requestor`, with the reason
/// the approver gave.
pub fn decided_event(
    audit: AuditEvent,
    id: i64,
    requestor: &str,
    approved: bool,
    what: Decided,
    reason: Option<&str>,
) -> AuditEvent {
    let verdict = if approved { StatusReason::Approved } else { StatusReason::Denied };
    let event = audit
        .succeeded()
        .with("requestId", id.to_string())
        .with("requestor", requestor.to_owned())
        .with("decision", verdict.as_str());
    let event = match what {
        Decided::Grants(n) => event.with("grants", n.to_string()),
        Decided::Extension(end) => event.with("extensionEndTimeUtc", rfc3339(end)),
    };
    match reason {
        Some(r) => event.with("reason", r.to_owned()),
        None => event,
    }
}

/// The audit record of request `id` extended to `new_end`, or (`waits`) asking an approver for it.
pub fn extended_event(audit: AuditEvent, id: i64, new_end: OffsetDateTime, waits: bool) -> AuditEvent {
    let event = audit.succeeded().with("requestId", id.to_string()).with("endTimeUtc", rfc3339(new_end));
    if waits {
        return event.with("decision", GrantStatus::Pending.as_str());
    }
    event
}
