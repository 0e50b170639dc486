//! What an accepted initiate records, decided once for every store: the policy it names (or the
//! refusal when there is none), how each grant is reached (behind a gateway: the gateway's
//! public address and the mapped port), the grants as the answer shows them, and the audit record.

use std::net::IpAddr;

use crate::audit::AuditEvent;
use crate::ids::PolicyRef;
use crate::invalid::{codes, Invalid};
use crate::lifecycle::GrantState;
use crate::policy::Policy;
use crate::prefix::SourcePrefix;
use crate::records::{AccessRequestRecord, GrantRecord};
use crate::timefmt::rfc3339;

use super::{GrantPlan, RequestPlan};

/// The refusal of an initiate (or any request) naming a policy that does not exist.
pub fn policy_not_found(policy: &PolicyRef) -> Invalid {
    Invalid::not_found(codes::POLICY_NOT_FOUND, format!("JIT network access policy '{}' was not found", policy.id()))
}

/// How a grant's port is reached: directly (both `None`), or through a gateway, whose public
/// address and the port it maps (when the policy port maps one) the grant carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reach {
    pub mapped_port: Option<u16>,
    pub public_ip: Option<String>,
}

impl Reach {
    /// The reach of `grant` of `policy` to a VM registered behind a gateway (`behind_gateway`)
    /// at the inner address `inner`, whose agent has the public address `public_address`; a VM
    /// not behind a gateway (or not registered) is reached directly.
    ///
    /// A gateway forwards each address family only to its own (there is no NAT64): a grant
    /// with a source of the other family than the VM's address is refused, naming the source,
    /// and a public address of the other family is not shown (a requester could not use it).
    pub fn of(
        policy: &Policy,
        grant: &GrantPlan,
        behind_gateway: bool,
        inner: Option<IpAddr>,
        public_address: Option<IpAddr>,
    ) -> Result<Reach, Invalid> {
        if !behind_gateway {
            return Ok(Reach::default());
        }
        if let Some(inner) = inner {
            check_family(grant, inner)?;
        }
        let same_family = |a: &IpAddr| inner.is_none_or(|i| i.is_ipv4() == a.is_ipv4());
        Ok(Reach {
            mapped_port: policy.vm(&grant.vm_id.key()).and_then(|v| v.port(grant.number)).and_then(|r| r.mapped_port),
            public_ip: public_address.filter(same_family).map(|a| a.to_string()),
        })
    }
}

/// `IPv4` or `IPv6`.
fn family(ip: IpAddr) -> String {
    format!("IPv{}", if ip.is_ipv4() { 4 } else { 6 })
}

/// Refuses `grant` when one of its sources is of the other address family than `inner`, the
/// address of its VM behind a gateway. `*` means every source of the VM's family.
fn check_family(grant: &GrantPlan, inner: IpAddr) -> Result<(), Invalid> {
    let Some(other) =
        grant.sources.prefixes().iter().find(|p| p.net().is_some_and(|n| n.addr().is_ipv4() != inner.is_ipv4()))
    else {
        return Ok(());
    };
    let (theirs, ours) = (family(other.net().map_or(inner, |n| n.addr())), family(inner));
    Err(Invalid::input(
        codes::INVALID_INITIATE,
        Some("allowedSourceAddressPrefix".into()),
        format!(
            "port {} of virtual machine '{}': source {} is {theirs}, but the VM sits behind a gateway at the {ours} \
             address {inner}, and a gateway forwards each address family only to its own (no NAT64); request \
             access from an {ours} source",
            grant.number,
            grant.vm_id.name(),
            other.text()
        ),
    ))
}

/// The grants of an accepted initiate as they are recorded, in request order, with what its
/// audit record lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requested {
    grants: Vec<GrantRecord>,
    ports: Vec<String>,
    sources: Vec<String>,
    ends: Vec<String>,
}

impl Requested {
    /// Adds the grant `plan`, recorded in its first `state` and reached by `reach`.
    pub fn add(&mut self, plan: &GrantPlan, state: &GrantState, reach: Reach) -> &GrantRecord {
        let sources: Vec<&str> = plan.sources.prefixes().iter().map(SourcePrefix::text).collect();
        self.ports.push(format!("{}:{}", plan.vm_id.name(), plan.number));
        self.sources.push(sources.join(" "));
        self.ends.push(rfc3339(plan.end_time));
        self.grants.push(GrantRecord {
            vm_id: plan.vm_id.as_str().to_owned(),
            number: plan.number,
            protocol: plan.protocol,
            sources: plan.sources.clone(),
            end_time: state.end_time,
            status: state.status,
            status_reason: state.reason,
            mapped_port: reach.mapped_port,
            public_ip: reach.public_ip,
        });
        &self.grants[self.grants.len() - 1]
    }

    /// Whether a grant opened at once (the request then also makes an `opened` delivery).
    pub fn opened(&self) -> bool {
        self.grants.iter().any(|g| crate::lifecycle::LIVE.contains(&g.status))
    }

    /// The audit record of the request `id`.
    pub fn event(&self, audit: AuditEvent, id: i64, plan: &RequestPlan) -> AuditEvent {
        let event = audit
            .succeeded()
            .with("requestId", id.to_string())
            .with("ports", self.ports.join(","))
            .with("sources", self.sources.join(","))
            .with("endTimeUtc", self.ends.join(","));
        match &plan.justification {
            Some(j) => event.with("justification", j.clone()),
            None => event,
        }
    }

    /// The request `id` of `requestor` as the answer shows it.
    pub fn into_record(self, id: i64, requestor: String, plan: RequestPlan) -> AccessRequestRecord {
        AccessRequestRecord {
            id,
            requestor,
            start_time: plan.start_time,
            justification: plan.justification,
            grants: self.grants,
            pending_extension: None,
            decision_reason: None,
        }
    }
}
