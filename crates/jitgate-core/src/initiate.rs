//! Access requests ("initiate"): the check of a request against its policy, and the decision
//! that turns it into one grant per requested port.

use std::collections::HashSet;
use std::net::IpAddr;

use time::{Duration, OffsetDateTime};

use crate::duration::AccessDuration;
use crate::ids::VmId;
use crate::invalid::{codes, Invalid};
use crate::policy::{parse_sources, Policy, Protocol, SourceSpec};
use crate::prefix::SourcePrefix;
use crate::timefmt::rfc3339;

/// How far past the port's maximum an end time may reach, to absorb clock skew between the
/// client that computed `now + max` and this server.
pub const END_TIME_LEEWAY: Duration = Duration::seconds(30);
/// How far ahead a request may be scheduled.
pub const MAX_SCHEDULE_AHEAD: Duration = Duration::days(7);
/// How long a request that needs approval waits for one, unless the port says otherwise.
pub const DEFAULT_APPROVAL_TIMEOUT: Duration = Duration::hours(1);
/// The longest justification accepted.
pub const MAX_JUSTIFICATION: usize = 2048;

/// The initiate body as received.
#[derive(Debug, Clone, Default)]
pub struct InitiateDraft {
    pub vms: Vec<InitiateVmDraft>,
    pub justification: Option<String>,
    /// jitgate extension (`startTimeUtc`): open later, for a maintenance window.
    pub start_time: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, Default)]
pub struct InitiateVmDraft {
    pub id: String,
    pub ports: Vec<InitiatePortDraft>,
}

#[derive(Debug, Clone, Default)]
pub struct InitiatePortDraft {
    pub number: Option<i64>,
    pub end_time: Option<OffsetDateTime>,
    pub duration: Option<String>,
    pub prefix: Option<String>,
    pub prefixes: Option<Vec<String>>,
}

/// One port to open: what becomes a grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantPlan {
    pub vm_id: VmId,
    pub number: u16,
    pub protocol: Protocol,
    pub sources: SourceSpec,
    pub end_time: OffsetDateTime,
    /// When the port needs an approver: how long the request may wait for one. The window
    /// (`end_time - opens_at`) then starts when it is approved.
    pub approval_timeout: Option<time::Duration>,
    /// When the port opens: now, or a scheduled start.
    pub opens_at: OffsetDateTime,
}

impl GrantPlan {
    /// Grants with the same supersede key replace each other: same VM, port and source set.
    pub fn supersede_key(&self) -> String {
        supersede_key(&self.vm_id.key(), self.number, &self.sources)
    }
}

/// The key under which a newer grant replaces an older one.
pub fn supersede_key(vm_key: &str, number: u16, sources: &SourceSpec) -> String {
    format!("{vm_key}|{number}|{}", sources.canonical())
}

/// An accepted request: the grants to record, in request order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestPlan {
    pub grants: Vec<GrantPlan>,
    pub justification: Option<String>,
    pub start_time: OffsetDateTime,
}

/// Checks a request against the policy and decides what to open.
///
/// `caller` is the requester's own address, used when a port names no source (as Azure does).
pub fn decide(
    policy: &Policy,
    draft: &InitiateDraft,
    caller: Option<IpAddr>,
    now: OffsetDateTime,
) -> Result<RequestPlan, Invalid> {
    let bad = |target: String, message: String| Invalid::input(codes::INVALID_INITIATE, Some(target), message);
    let not_subset = |target: String, why: String| {
        Invalid::input(
            codes::INVALID_INITIATE,
            Some(target),
            format!(
                "the access request is not a subset of policy '{}': {why}; keep it within the allowed policy properties",
                policy.reference.id()
            ),
        )
    };
    if draft.vms.is_empty() {
        return Err(bad("virtualMachines".into(), "name at least one virtual machine".into()));
    }
    if let Some(j) = &draft.justification {
        if j.chars().count() > MAX_JUSTIFICATION {
            return Err(bad(
                "justification".into(),
                format!("the justification is longer than {MAX_JUSTIFICATION} characters"),
            ));
        }
    }
    let opens_at = match draft.start_time {
        Some(t) if t > now + MAX_SCHEDULE_AHEAD => {
            return Err(bad("startTimeUtc".into(), format!("startTimeUtc {} is more than 7 days ahead", rfc3339(t))));
        }
        Some(t) if t > now => t,
        _ => now,
    };
    let mut grants = Vec::new();
    let mut seen_vms = HashSet::new();
    for (i, vm) in draft.vms.iter().enumerate() {
        let at = format!("virtualMachines[{i}]");
        let key = vm.id.trim_end_matches('/').to_ascii_lowercase();
        let Some(pvm) = policy.vm(&key) else {
            return Err(not_subset(format!("{at}.id"), format!("virtual machine '{}' is not in the policy", vm.id)));
        };
        if !seen_vms.insert(key) {
            return Err(bad(format!("{at}.id"), format!("virtual machine '{}' is listed more than once", vm.id)));
        }
        if vm.ports.is_empty() {
            return Err(bad(format!("{at}.ports"), format!("name at least one port to open on '{}'", pvm.id.name())));
        }
        let mut seen_ports = HashSet::new();
        for (j, port) in vm.ports.iter().enumerate() {
            let at = format!("{at}.ports[{j}]");
            let number = match port.number {
                None => return Err(bad(format!("{at}.number"), "the port number is required".into())),
                Some(n) if !(1..=65535).contains(&n) => {
                    return Err(bad(format!("{at}.number"), format!("port {n} is outside 1..65535")));
                }
                Some(n) => n as u16,
            };
            if !seen_ports.insert(number) {
                return Err(bad(format!("{at}.number"), format!("port {number} is listed more than once")));
            }
            let Some(rule) = pvm.port(number) else {
                return Err(not_subset(
                    format!("{at}.number"),
                    format!("port {number} is not configured for virtual machine '{}'", pvm.id.name()),
                ));
            };
            let end_time = match (&port.end_time, &port.duration) {
                (Some(_), Some(_)) | (None, None) => {
                    return Err(bad(
                        format!("{at}.endTimeUtc"),
                        format!("port {number}: set exactly one of endTimeUtc and duration (only one of the two may be set)"),
                    ));
                }
                (Some(end), None) => *end,
                (None, Some(text)) => {
                    let d = AccessDuration::parse(text)
                        .map_err(|e| bad(format!("{at}.duration"), format!("port {number}: {e}")))?;
                    if d.duration() <= Duration::ZERO {
                        return Err(bad(
                            format!("{at}.duration"),
                            format!("port {number}: the duration must be positive"),
                        ));
                    }
                    opens_at + d.duration()
                }
            };
            if end_time <= opens_at {
                return Err(bad(
                    format!("{at}.endTimeUtc"),
                    format!("port {number}: the end time {} is not in the future", rfc3339(end_time)),
                ));
            }
            if end_time - opens_at > rule.max_duration.duration() + END_TIME_LEEWAY {
                return Err(not_subset(
                    format!("{at}.endTimeUtc"),
                    format!(
                        "port {number}: the requested window is longer than the port's maximum of {}",
                        rule.max_duration
                    ),
                ));
            }
            let sources = match parse_sources(port.prefix.clone(), port.prefixes.clone())
                .map_err(|(field, m)| bad(format!("{at}.{field}"), format!("port {number}: {m}")))?
            {
                Some(s) => s,
                None => match caller {
                    Some(ip) => SourceSpec::Single(SourcePrefix::from_ip(ip)),
                    None => {
                        return Err(bad(
                            format!("{at}.allowedSourceAddressPrefix"),
                            format!("port {number}: the caller's address is unknown; name a source prefix"),
                        ))
                    }
                },
            };
            if !rule.sources.covers(&sources) {
                let allowed: Vec<&str> = rule.sources.prefixes().iter().map(|p| p.text()).collect();
                let asked: Vec<&str> = sources.prefixes().iter().map(|p| p.text()).collect();
                return Err(not_subset(
                    format!("{at}.allowedSourceAddressPrefix"),
                    format!(
                        "port {number}: source {} is not inside the allowed {}",
                        asked.join(", "),
                        allowed.join(", ")
                    ),
                ));
            }
            if rule.require_approval && draft.justification.as_deref().is_none_or(|j| j.trim().is_empty()) {
                return Err(bad(
                    "justification".into(),
                    format!("port {number} needs an approver's approval: give a justification"),
                ));
            }
            let approval_timeout = rule
                .require_approval
                .then(|| rule.approval_timeout.as_ref().map(|d| d.duration()).unwrap_or(DEFAULT_APPROVAL_TIMEOUT));
            grants.push(GrantPlan {
                vm_id: pvm.id.clone(),
                number,
                protocol: rule.protocol,
                sources,
                end_time,
                approval_timeout,
                opens_at,
            });
        }
    }
    Ok(RequestPlan { grants, justification: draft.justification.clone(), start_time: opens_at })
}

mod request;
#[cfg(test)]
mod tests;

pub use request::{policy_not_found, Reach, Requested};

/// The state of one grant, as Azure names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantStatus {
    Initiated,
    Revoked,
    /// Waiting for an approver; opens nothing (jitgate's own, the enum is extensible).
    Pending,
    /// Granted for a window that has not started yet; opens nothing until then.
    Scheduled,
}

impl GrantStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            GrantStatus::Initiated => "Initiated",
            GrantStatus::Revoked => "Revoked",
            GrantStatus::Pending => "Pending",
            GrantStatus::Scheduled => "Scheduled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "Initiated" => Some(GrantStatus::Initiated),
            "Revoked" => Some(GrantStatus::Revoked),
            "Pending" => Some(GrantStatus::Pending),
            "Scheduled" => Some(GrantStatus::Scheduled),
            _ => None,
        }
    }
}

/// Why a grant is in its state. `PolicyDeleted` is jitgate's own (the enum is extensible).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusReason {
    UserRequested,
    Expired,
    NewerRequestInitiated,
    PolicyDeleted,
    ApprovalRequired,
    Approved,
    Denied,
    ApprovalExpired,
}

impl StatusReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StatusReason::UserRequested => "UserRequested",
            StatusReason::Expired => "Expired",
            StatusReason::NewerRequestInitiated => "NewerRequestInitiated",
            StatusReason::PolicyDeleted => "PolicyDeleted",
            StatusReason::ApprovalRequired => "ApprovalRequired",
            StatusReason::Approved => "Approved",
            StatusReason::Denied => "Denied",
            StatusReason::ApprovalExpired => "ApprovalExpired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::UserRequested,
            Self::Expired,
            Self::NewerRequestInitiated,
            Self::PolicyDeleted,
            Self::ApprovalRequired,
            Self::Approved,
            Self::Denied,
            Self::ApprovalExpired,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}
