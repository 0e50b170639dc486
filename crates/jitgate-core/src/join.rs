//! An agent's life in the store, decided on the facts the store loads: whether a join token
//! admits a joining agent and under which name, the VM a host agent enforces, whether it may
//! bind a VM that is already registered, and the audit records of a join, a removal and a
//! report.

use std::net::IpAddr;

use time::OffsetDateTime;

use crate::audit::{ops, AuditEvent, AuditStatus};
use crate::enforcement::{AgentMode, JoiningAgent};
use crate::ids::VmId;
use crate::invalid::Invalid;

/// The code of a join token that does not admit the agent.
pub const INVALID_JOIN_TOKEN: &str = "InvalidJoinToken";
/// The code of an agent name that makes no VM id.
pub const INVALID_AGENT_NAME: &str = "InvalidAgentName";
/// The code of a second gateway of one name in a subscription.
pub const GATEWAY_EXISTS: &str = "GatewayExists";
/// The code of a host agent joining as a registered VM without a token made for it.
pub const VM_EXISTS: &str = "VirtualMachineExists";
/// The code of a host agent joining as a VM enforced by a gateway.
pub const VM_BEHIND_GATEWAY: &str = "VirtualMachineBehindGateway";
/// The code of an agent the store does not know.
pub const AGENT_NOT_FOUND: &str = "AgentNotFound";
/// The code of a report of a revision the agent was never sent.
pub const REVISION_NOT_DELIVERED: &str = "RevisionNotDelivered";
/// How many VMs the audit record of an agent's removal names.
pub const LISTED_VMS: usize = 50;

/// A join token as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// The mode it was made for (`host`, `gateway`).
    pub mode: String,
    pub expires: OffsetDateTime,
    pub used: bool,
    /// The VM (its name) it was made for, if one.
    pub vm: Option<String>,
}

fn denied(message: impl Into<String>) -> Invalid {
    Invalid::input(INVALID_JOIN_TOKEN, None, message)
}

/// Checks that `token` (`None`: unknown) admits `agent` at `now`. A token made for one VM names
/// a host agent that kept its host name; the agent must then join as that VM.
pub fn admit(token: Option<&JoinToken>, agent: &mut JoiningAgent, now: OffsetDateTime) -> Result<(), Invalid> {
    let Some(token) = token else { return Err(denied("the join token is unknown")) };
    if token.used {
        return Err(denied("the join token was already used; create a new one"));
    }
    if token.expires <= now {
        return Err(denied("the join token has expired; create a new one"));
    }
    if token.mode != agent.mode.as_str() {
        return Err(denied(format!(
            "the join token is for {} mode, the agent asked for {}",
            token.mode,
            agent.mode.as_str()
        )));
    }
    if let (Some(for_vm), AgentMode::Host, true) = (&token.vm, agent.mode, agent.name_is_hostname) {
        agent.name = for_vm.clone();
    }
    if let Some(for_vm) = &token.vm {
        if !for_vm.eq_ignore_ascii_case(&agent.name) {
            return Err(denied(format!(
                "the join token was made for virtual machine '{for_vm}'; the agent asked to join as '{}'",
                agent.name
            )));
        }
    }
    Ok(())
}

/// The VM id a host agent named `name` enforces, in the token's subscription and group.
pub fn host_vm_id(subscription: &str, resource_group: &str, name: &str) -> Result<VmId, Invalid> {
    VmId::parse(&format!(
        "/subscriptions/{subscription}/resourceGroups/{resource_group}/providers/Microsoft.Compute/virtualMachines/{name}"
    ))
    .map_err(|m| Invalid::input(INVALID_AGENT_NAME, Some("name".into()), m))
}

/// An agent the store does not know (or no longer knows).
pub fn agent_not_found(id: &str) -> Invalid {
    Invalid::not_found(AGENT_NOT_FOUND, format!("agent '{id}' is not known"))
}

/// Agent `id` whose credential is not `old` any more (or which is gone): a rotation is refused.
pub fn credential_replaced(id: &str) -> Invalid {
    Invalid::not_found(AGENT_NOT_FOUND, format!("agent '{id}' is not known or its credential was already replaced"))
}

/// Agent `id` was removed while it asked for its state.
pub fn agent_removed(id: &str) -> Invalid {
    Invalid::not_found(AGENT_NOT_FOUND, format!("agent '{id}' was removed"))
}

/// The audit record of a join token made for `mode` agents at `location` (for one VM, if `vm`).
pub fn token_created(
    audit: AuditEvent,
    mode: AgentMode,
    location: &str,
    expires: OffsetDateTime,
    vm: Option<&str>,
) -> AuditEvent {
    let event = audit
        .succeeded()
        .with("mode", mode.as_str())
        .with("location", location.to_owned())
        .with("expiresOn", crate::timefmt::rfc3339(expires));
    match vm {
        Some(vm) => event.with("vm", vm.to_owned()),
        None => event,
    }
}

/// A gateway named like one that joined subscription `subscription` (`name`, agent `id`).
pub fn gateway_exists(subscription: &str, name: &str, id: &str) -> Invalid {
    Invalid::conflict(
        GATEWAY_EXISTS,
        format!(
            "a gateway named '{name}' has already joined subscription '{subscription}' (agent {id}); revoke it first \
             (jitgate agent rm {id}) to join a replacement"
        ),
    )
}

/// Whether a host agent may bind the registered VM `vm` (behind `gateway`, if any): an existing
/// VM changes its enforcement point only with a token made for it (`token_for_vm`), never as
/// a side effect of some other host token, and not while a gateway enforces it.
pub fn may_rebind(vm: &VmId, token_for_vm: bool, gateway: Option<&str>) -> Result<(), Invalid> {
    may_rebind_from(vm, token_for_vm, gateway, None)
}

/// [`may_rebind`], also refusing a VM a cloud connector enforces (`connector`: its name): the
/// connector registered it and keeps its security group; it is not taken over by a join.
pub fn may_rebind_from(
    vm: &VmId,
    token_for_vm: bool,
    gateway: Option<&str>,
    connector: Option<&str>,
) -> Result<(), Invalid> {
    if let Some(connector) = connector {
        return Err(Invalid::conflict(
            VM_BEHIND_GATEWAY,
            format!(
                "virtual machine '{vm}' is enforced by cloud connector '{connector}'; leave it out of the \
                 connector's scope (or remove the connector) before a host agent joins as it"
            ),
        ));
    }
    if !token_for_vm {
        return Err(Invalid::conflict(
            VM_EXISTS,
            format!(
                "virtual machine '{vm}' is already registered; an agent joins as an existing VM only with a \
                 join token made for it (jitgate agent token create --vm {} …, which needs \
                 Microsoft.Compute/virtualMachines/write on the VM)",
                vm.name()
            ),
        ));
    }
    if let Some(gateway) = gateway {
        return Err(Invalid::conflict(
            VM_BEHIND_GATEWAY,
            format!(
                "virtual machine '{vm}' is enforced by gateway '{gateway}'; detach it from the gateway first \
                 (PUT /api/v1/vms without gateway) before a host agent joins as it"
            ),
        ));
    }
    Ok(())
}

/// The address a host agent's VM is reached at: the first the agent reported.
pub fn vm_address(agent: &JoiningAgent) -> Option<String> {
    agent.addresses.first().map(IpAddr::to_string)
}

/// The audit record of a join by agent `id`.
pub fn joined(audit: &AuditEvent, id: &str, agent: &JoiningAgent) -> AuditEvent {
    let addresses: Vec<String> = agent.addresses.iter().map(IpAddr::to_string).collect();
    audit
        .clone()
        .succeeded()
        .with("agentId", id.to_owned())
        .with("mode", agent.mode.as_str())
        .with("name", agent.name.clone())
        .with("addresses", addresses.join(" "))
}

/// Adds the re-bind of a registered VM to a join's audit record.
pub fn rebound(
    event: AuditEvent,
    previous_agent: Option<String>,
    previous_address: Option<IpAddr>,
    address: Option<String>,
) -> AuditEvent {
    event
        .with("rebound", "true")
        .with("previousAgent", previous_agent.unwrap_or_default())
        .with("previousAddress", previous_address.map(|a| a.to_string()).unwrap_or_default())
        .with("address", address.unwrap_or_default())
}

/// VMs as an audit record names them: the first [`LISTED_VMS`], then how many more.
pub fn listed(vms: &[String]) -> String {
    let mut listed = vms.iter().take(LISTED_VMS).cloned().collect::<Vec<_>>().join(" ");
    if vms.len() > LISTED_VMS {
        listed.push_str(&format!(" (and {} more)", vms.len() - LISTED_VMS));
    }
    listed
}

/// The audit record of an agent's removal, naming the VMs it no longer enforces (the first
/// [`LISTED_VMS`], then how many more).
pub fn removed(audit: AuditEvent, id: &str, name: &str, mode: AgentMode, vms: &[String]) -> AuditEvent {
    let listed = listed(vms);
    audit
        .succeeded()
        .with("agentId", id.to_owned())
        .with("name", name.to_owned())
        .with("mode", mode.as_str())
        .with("unenforcedVms", listed)
}

/// The agent's record before a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reported {
    pub applied: i64,
    pub usable: Option<bool>,
    pub delivered: i64,
}

/// A report, decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reporting {
    /// Refused: the refusal and the audit record it is written with.
    Refused { event: AuditEvent, invalid: Invalid },
    /// Accepted, with the audit record of what changed, if anything did.
    Accepted(Option<AuditEvent>),
}

/// Agent `id` reports that it applied `revision` at `now`, and whether nftables is usable.
pub fn report(
    id: &str,
    before: Reported,
    revision: u64,
    now: OffsetDateTime,
    nft_usable: bool,
    nft_error: Option<&str>,
) -> Reporting {
    let event = AuditEvent {
        time: now,
        operation: ops::AGENT_APPLIED.into(),
        status: if nft_usable { AuditStatus::Succeeded } else { AuditStatus::Failed },
        caller: format!("agent:{id}"),
        caller_ip: None,
        resource_id: format!("/agents/{id}"),
        correlation_id: format!("agent-{id}-{revision}"),
        properties: Default::default(),
    }
    .with("revision", revision.to_string());
    // An agent can only have applied what it was sent.
    if revision > before.delivered.max(0) as u64 {
        let m = format!(
            "revision {} was never delivered to this agent (the latest it was sent is {}); \
             report only revisions from GET /agent/v1/state",
            revision, before.delivered
        );
        return Reporting::Refused { event, invalid: Invalid::conflict(REVISION_NOT_DELIVERED, m) };
    }
    // Audit what changes: a newly applied revision, or a change in nftables health.
    let applied = i64::try_from(revision).unwrap_or(i64::MAX);
    if applied > before.applied || before.usable != Some(nft_usable) {
        return Reporting::Accepted(Some(
            event.with("nftablesUsable", nft_usable.to_string()).with("nftablesError", nft_error.unwrap_or_default()),
        ));
    }
    Reporting::Accepted(None)
}

#[cfg(test)]
mod tests;
