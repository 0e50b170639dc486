//! The life of a grant after initiate: every change of state, decided here over typed states,
//! with the current time as a parameter. A store loads the facts, calls one of these functions
//! and persists what comes back (with its audit record) in one transaction.
//!
//! ```text
//!              approve (window starts now)          expire (end passed)
//!   Pending ──────────────────────────────► Initiated ───────────────────► Revoked/Expired
//!     │  │  approve (start still ahead)        ▲  │ revoke             ► Revoked/UserRequested
//!     │  └──────────────────► Scheduled ───────┘  │ newer grant, same key ► Revoked/NewerRequestInitiated
//!     │ deny ► Revoked/Denied       open (start)  │ policy deleted     ► Revoked/PolicyDeleted
//!     │ nobody decided in time ► Revoked/ApprovalExpired
//!   (a deleted principal's Pending, Scheduled and Initiated grants ► Revoked/UserRequested)
//! ```

use time::{Duration, OffsetDateTime};

use crate::initiate::{GrantPlan, GrantStatus, StatusReason, END_TIME_LEEWAY};
use crate::invalid::{codes, Invalid, InvalidKind};
use crate::timefmt::rfc3339;
use crate::Policy;

/// The state of one grant: what a transition reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantState {
    pub status: GrantStatus,
    pub reason: StatusReason,
    /// When it closes; for a pending grant, when the wait for an approver ends.
    pub end_time: OffsetDateTime,
    /// When it opens (now, a scheduled start, or the start a pending grant asked for).
    pub opens_at: Option<OffsetDateTime>,
    /// For a pending grant: the length of the window, which starts when it is approved.
    pub window: Option<Duration>,
}

impl GrantState {
    /// Open: it lets traffic through (until its end is swept).
    pub fn is_live(&self) -> bool {
        LIVE.contains(&self.status)
    }

    fn revoked(self, reason: StatusReason) -> GrantState {
        GrantState { status: GrantStatus::Revoked, reason, ..self }
    }
}

/// The statuses of an open grant: what an agent enforces.
pub const LIVE: [GrantStatus; 1] = [GrantStatus::Initiated];
/// The statuses a newer grant with the same key replaces.
pub const SUPERSEDABLE: [GrantStatus; 1] = [GrantStatus::Initiated];
/// The statuses whose `end_time` the expiry sweep watches.
pub const EXPIRING: [GrantStatus; 2] = [GrantStatus::Initiated, GrantStatus::Pending];
/// The statuses whose `opens_at` the sweep watches.
pub const OPENING: [GrantStatus; 1] = [GrantStatus::Scheduled];
/// The statuses a deleted policy revokes.
pub const ENDED_BY_POLICY_DELETE: [GrantStatus; 1] = [GrantStatus::Initiated];
/// The statuses a deleted principal revokes: everything not yet ended.
pub const ENDED_BY_PRINCIPAL_DELETE: [GrantStatus; 3] =
    [GrantStatus::Initiated, GrantStatus::Pending, GrantStatus::Scheduled];

/// The first state of a grant an initiate records. A port that needs approval waits for an
/// approver until `now + approval timeout`; a later start is scheduled; anything else opens now.
pub fn start(plan: &GrantPlan, now: OffsetDateTime) -> GrantState {
    match plan.approval_timeout {
        Some(wait) => GrantState {
            status: GrantStatus::Pending,
            reason: StatusReason::ApprovalRequired,
            end_time: now + wait,
            opens_at: Some(plan.opens_at),
            window: Some(plan.end_time - plan.opens_at),
        },
        None => GrantState {
            status: if plan.opens_at > now { GrantStatus::Scheduled } else { GrantStatus::Initiated },
            reason: StatusReason::UserRequested,
            end_time: plan.end_time,
            opens_at: Some(plan.opens_at),
            window: None,
        },
    }
}

/// A newer grant with the same supersede key opened: a live older one is replaced.
pub fn supersede(older: GrantState) -> Option<GrantState> {
    SUPERSEDABLE.contains(&older.status).then(|| older.revoked(StatusReason::NewerRequestInitiated))
}

/// The sweep: a live grant whose end has passed expires; a pending one nobody approved in time
/// expires unopened.
pub fn expire(grant: GrantState, now: OffsetDateTime) -> Option<GrantState> {
    if grant.end_time > now {
        return None;
    }
    match grant.status {
        GrantStatus::Initiated => Some(grant.revoked(StatusReason::Expired)),
        GrantStatus::Pending => Some(grant.revoked(StatusReason::ApprovalExpired)),
        GrantStatus::Scheduled | GrantStatus::Revoked => None,
    }
}

/// The sweep: a scheduled grant whose start has come opens (and then supersedes older ones).
pub fn open(grant: GrantState, now: OffsetDateTime) -> Option<GrantState> {
    match grant.opens_at {
        Some(at) if grant.status == GrantStatus::Scheduled && at <= now => {
            Some(GrantState { status: GrantStatus::Initiated, ..grant })
        }
        _ => None,
    }
}

/// Its policy was deleted: a live grant is revoked.
pub fn policy_deleted(grant: GrantState) -> Option<GrantState> {
    ENDED_BY_POLICY_DELETE.contains(&grant.status).then(|| grant.revoked(StatusReason::PolicyDeleted))
}

/// Its principal was deleted: live, pending and scheduled grants are revoked, so that a pending
/// request cannot be approved for someone who no longer exists.
pub fn principal_deleted(grant: GrantState) -> Option<GrantState> {
    ENDED_BY_PRINCIPAL_DELETE.contains(&grant.status).then(|| grant.revoked(StatusReason::UserRequested))
}

/// One grant of a request, with the port it opens (for the policy's rules).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestGrant {
    pub vm_key: String,
    pub number: u16,
    pub state: GrantState,
}

/// An extension that waits for an approver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingExtension {
    /// The end it asks for.
    pub end_time: OffsetDateTime,
    /// Who asked for it.
    pub asked_by: Option<String>,
}

/// What a transition of a whole request reads: the request and all its grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestFacts {
    pub id: i64,
    pub policy_id: String,
    pub requestor: String,
    /// In request order; the changes name grants by their index here.
    pub grants: Vec<RequestGrant>,
    pub extension: Option<PendingExtension>,
}

/// A grant's new state, by its index in [`RequestFacts::grants`].
pub type Change = (usize, GrantState);

fn changes(facts: &RequestFacts, f: impl Fn(GrantState) -> Option<GrantState>) -> Vec<Change> {
    facts.grants.iter().enumerate().filter_map(|(i, g)| f(g.state).map(|s| (i, s))).collect()
}

/// Revoking a request: its live grants end now. A request with none left is refused.
pub fn revoke(facts: &RequestFacts) -> Result<Vec<Change>, Invalid> {
    let out = changes(facts, |s| s.is_live().then(|| s.revoked(StatusReason::UserRequested)));
    if out.is_empty() {
        let id = facts.id;
        let m = format!("access request {id} has no live grant left to revoke (expired, superseded or revoked)");
        return Err(Invalid::conflict(codes::REQUEST_NOT_ACTIVE, m));
    }
    Ok(out)
}

/// The outcome of an approver's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The pending grants were approved (they open now, or are scheduled for their start, and
    /// replace older grants with the same key) or denied.
    Grants { approved: bool, changes: Vec<Change> },
    /// The pending extension was decided; it is no longer pending either way. When approved, the
    /// live grants that end earlier now end at its end.
    Extension { approved: bool, end_time: OffsetDateTime, changes: Vec<Change> },
    /// The extension was approved but nothing is left to extend: it is dropped, and the approval
    /// refused with this.
    ExtensionLapsed(Invalid),
}

fn forbidden(message: String) -> Invalid {
    Invalid { kind: InvalidKind::Forbidden, ..Invalid::conflict(codes::SELF_APPROVAL, message) }
}

/// An approver approves or denies what a request waits for: its pending grants, or else its
/// pending extension. Whoever made the request (or asked for the extension) cannot decide it.
pub fn decide(facts: &RequestFacts, approve: bool, decider: &str, now: OffsetDateTime) -> Result<Decision, Invalid> {
    let id = facts.id;
    if facts.requestor == decider {
        return Err(forbidden(format!(
            "'{decider}' made request {id} and cannot approve or deny it; another approver must"
        )));
    }
    let waiting = |s: &GrantState| s.status == GrantStatus::Pending && s.end_time > now;
    if !facts.grants.iter().any(|g| waiting(&g.state)) {
        let Some(ext) = &facts.extension else {
            let m = format!(
                "access request {id} has nothing waiting for a decision (decided, expired or not needing approval)"
            );
            return Err(Invalid::conflict(codes::REQUEST_NOT_PENDING, m));
        };
        return decide_extension(facts, ext, approve, decider, now);
    }
    let changes = changes(facts, |s| {
        if !waiting(&s) {
            return None;
        }
        if !approve {
            return Some(s.revoked(StatusReason::Denied));
        }
        // The window starts when the request is approved (or at its scheduled start, if that
        // is later), not when it was asked.
        let start = s.opens_at.map_or(now, |at| at.max(now));
        let window = s.window.unwrap_or(Duration::ZERO);
        Some(GrantState {
            status: if start > now { GrantStatus::Scheduled } else { GrantStatus::Initiated },
            reason: StatusReason::Approved,
            end_time: start.checked_add(window).unwrap_or(start),
            ..s
        })
    });
    Ok(Decision::Grants { approved: approve, changes })
}

fn decide_extension(
    facts: &RequestFacts,
    ext: &PendingExtension,
    approve: bool,
    decider: &str,
    now: OffsetDateTime,
) -> Result<Decision, Invalid> {
    let id = facts.id;
    if ext.asked_by.as_deref() == Some(decider) {
        return Err(forbidden(format!(
            "'{decider}' asked for the extension of request {id} and cannot decide it; another approver must"
        )));
    }
    let open = |s: &GrantState| s.is_live() && s.end_time > now;
    if !approve {
        return Ok(Decision::Extension { approved: false, end_time: ext.end_time, changes: Vec::new() });
    }
    if !facts.grants.iter().any(|g| open(&g.state)) || ext.end_time <= now {
        let m = format!("access request {id} has no open grant left to extend; request again");
        return Ok(Decision::ExtensionLapsed(Invalid::conflict(codes::REQUEST_NOT_ACTIVE, m)));
    }
    let changes = changes(facts, |s| {
        (open(&s) && s.end_time < ext.end_time).then_some(GrantState { end_time: ext.end_time, ..s })
    });
    Ok(Decision::Extension { approved: true, end_time: ext.end_time, changes })
}

/// The outcome of asking for a later end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Extension {
    /// A port of the request needs an approver: the grants keep their end until one agrees.
    NeedsApproval,
    /// The live grants now end at the new end.
    Extended(Vec<Change>),
}

/// Asking for a later end of a request's open grants, within each port's maximum from now.
/// `policy` is the request's policy as it is now (`None` when it was deleted).
pub fn extend(
    facts: &RequestFacts,
    policy: Option<&Policy>,
    new_end: OffsetDateTime,
    now: OffsetDateTime,
) -> Result<Extension, Invalid> {
    let id = facts.id;
    let open: Vec<(usize, &RequestGrant)> =
        facts.grants.iter().enumerate().filter(|(_, g)| g.state.is_live() && g.state.end_time > now).collect();
    if open.is_empty() {
        return Err(Invalid::conflict(
            codes::REQUEST_NOT_ACTIVE,
            format!("access request {id} has no open grant to extend"),
        ));
    }
    let Some(policy) = policy else {
        return Err(Invalid::not_found(codes::POLICY_NOT_FOUND, format!("policy '{}' is gone", facts.policy_id)));
    };
    let mut needs_approval = false;
    for (_, g) in &open {
        let number = g.number;
        let Some(rule) = policy.vm(&g.vm_key).and_then(|v| v.port(number)) else {
            return Err(Invalid::conflict(
                codes::REQUEST_NOT_ACTIVE,
                format!("port {number} is no longer in the policy"),
            ));
        };
        needs_approval |= rule.require_approval;
        if new_end <= g.state.end_time {
            let m = format!("the new end {} is not later than the current one", rfc3339(new_end));
            return Err(Invalid::input(codes::INVALID_INITIATE, Some("endTimeUtc".into()), m));
        }
        if new_end - now > rule.max_duration.duration() + END_TIME_LEEWAY {
            let m = format!("port {number}: at most {} from now", rule.max_duration);
            return Err(Invalid::input(codes::NOT_SUBSET, Some("endTimeUtc".into()), m));
        }
    }
    if needs_approval {
        return Ok(Extension::NeedsApproval);
    }
    Ok(Extension::Extended(open.into_iter().map(|(i, g)| (i, GrantState { end_time: new_end, ..g.state })).collect()))
}

mod events;
mod sweep;
#[cfg(test)]
mod tests;

pub use events::{decided_event, extended_event, request_not_found, revoked_event, By, Decided};
pub use sweep::{expired_event, opened_event, Swept};
