//! Cloud connectors: enforcement points that program the cloud's own firewall (security groups)
//! and register the instances they find as VMs. Here: the checks of a connector's inventory and
//! of its enforcement report, the VM ids they name, their audit records, and the rule limit of
//! one VM's security group that the initiate decision keeps.

use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;

use time::OffsetDateTime;

use crate::audit::{ops, AuditEvent};
use crate::enforcement::{printable, quote, AgentMode};
use crate::ids::{validate_resource_group, validate_vm_name, VmId};
use crate::invalid::Invalid;
use crate::policy::{OsType, Protocol, SourceSpec};
use crate::prefix::SourcePrefix;

/// How many inbound rules a VM's security group holds (AWS's default quota per group). The
/// connector puts a VM's grants in one group, so its live grants' distinct (source, protocol,
/// port) rules stay within this.
pub const CLOUD_RULE_LIMIT: usize = 60;

/// The grants whose rules a VM's security group holds or will hold: live ones, and those that
/// open later without another check (approved, or their scheduled window beginning).
pub const HOLDING: [crate::initiate::GrantStatus; 3] = [
    crate::initiate::GrantStatus::Initiated,
    crate::initiate::GrantStatus::Pending,
    crate::initiate::GrantStatus::Scheduled,
];

/// Why a VM the connector registered earlier is Unsupported once a report leaves it out.
pub const NOT_FOUND_REASON: &str = "not found by the connector (terminated or out of its scope)";

/// The code of a cloud call by an agent of another mode.
pub const NOT_A_CLOUD_CONNECTOR: &str = "NotACloudConnector";
/// The code of a malformed inventory.
pub const INVALID_INVENTORY: &str = "InvalidInventory";
/// The code of a malformed enforcement report.
pub const INVALID_ENFORCEMENT_REPORT: &str = "InvalidEnforcementReport";
/// The code of an inventory naming a VM another enforcement point enforces.
pub const VM_ENFORCED_ELSEWHERE: &str = "VirtualMachineEnforcedElsewhere";
/// The code of a request that would overflow a VM's security group.
pub const RULE_LIMIT_REACHED: &str = "SecurityGroupRuleLimit";
/// The code of a mapped port on a VM a cloud connector enforces.
pub const NO_DNAT_IN_CLOUD: &str = "MappedPortNotSupported";

/// The most a connector may send.
pub mod limits {
    /// VMs in one inventory.
    pub const VMS: usize = 10_000;
    /// An inventory body, in bytes: 10,000 instances as EC2 describes them at their longest (ids of
    /// 17 hex digits, five security groups, a 256-character Name tag, a 500-character reason) take
    /// about 12 MiB. (Facts of 255 characters each, which EC2 never gives, would not fit.)
    pub const INVENTORY_BODY_BYTES: usize = 16 * 1024 * 1024;
    /// An enforcement report body, in bytes.
    pub const REPORT_BODY_BYTES: usize = 8 * 1024 * 1024;
    /// Removals in one enforcement report.
    pub const REMOVALS: usize = 1_000;
    /// Failing VMs in one enforcement report.
    pub const FAILURES: usize = 10_000;
    /// Characters kept of an unsupported reason or a failure's error.
    pub const REASON: usize = 500;
    /// Characters of one cloud fact (an id, the provider, the display name).
    pub const FACT: usize = 255;
    /// Security groups listed for one instance.
    pub const SECURITY_GROUPS: usize = 64;
}

/// What the cloud says of an instance, bounded and printable, shown in the inventory as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CloudFacts {
    pub provider: String,
    pub instance_id: Option<String>,
    pub vpc_id: Option<String>,
    pub security_groups: Vec<String>,
    pub display_name: Option<String>,
}

/// One instance of an inventory as received.
#[derive(Debug, Clone, Default)]
pub struct CloudVmDraft {
    pub name: String,
    pub resource_group: Option<String>,
    pub os_type: String,
    pub address: Option<String>,
    pub public_address: Option<String>,
    pub unsupported_reason: Option<String>,
    pub facts: CloudFacts,
}

/// One instance, checked: what the store registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudVm {
    pub id: VmId,
    pub os_type: OsType,
    pub address: Option<IpAddr>,
    pub public_address: Option<IpAddr>,
    pub unsupported_reason: Option<String>,
    pub facts: CloudFacts,
}

/// What is stored of a VM a cloud connector registered, besides its registration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CloudState {
    pub facts: CloudFacts,
    pub public_address: Option<IpAddr>,
    /// Why JIT cannot protect it (as reported, or [`NOT_FOUND_REASON`]).
    pub unsupported_reason: Option<String>,
    /// The connector's last report of why it cannot change the VM's rules.
    pub failure: Option<String>,
}

/// Refuses a cloud call by an agent that is no cloud connector.
pub fn require_cloud(mode: AgentMode, what: &str) -> Result<(), Invalid> {
    if mode == AgentMode::Cloud {
        return Ok(());
    }
    Err(Invalid::conflict(
        NOT_A_CLOUD_CONNECTOR,
        format!("{what} is for cloud connectors only; this agent joined in {} mode", mode.as_str()),
    ))
}

fn fact(field: &str, text: &str) -> Result<String, Invalid> {
    if text.chars().count() > limits::FACT || text.chars().any(|c| c.is_control()) {
        return Err(Invalid::input(
            INVALID_INVENTORY,
            Some(field.to_owned()),
            format!("'{}' must be at most {} characters without control characters", quote(text), limits::FACT),
        ));
    }
    Ok(printable(text, limits::FACT))
}

fn address(field: &str, text: &str) -> Result<IpAddr, Invalid> {
    let bad =
        || Invalid::input(INVALID_INVENTORY, Some(field.to_owned()), format!("'{}' is not an IP address", quote(text)));
    if text.len() > crate::enforcement::limits::ADDRESS_TEXT {
        return Err(bad());
    }
    text.parse().map_err(|_| bad())
}

/// Checks every entry of a connector's inventory and builds each VM's id in `subscription`
/// (the resource group given, or `default_group`, the join token's). Instance ids such as
/// `i-0123456789abcdef0` are VM names; a name listed twice is refused.
pub fn check_inventory(
    drafts: Vec<CloudVmDraft>,
    subscription: &str,
    default_group: &str,
) -> Result<Vec<CloudVm>, Invalid> {
    if drafts.len() > limits::VMS {
        return Err(Invalid::input(
            INVALID_INVENTORY,
            Some("vms".to_owned()),
            format!("{} VMs were sent; an inventory holds at most {}", drafts.len(), limits::VMS),
        ));
    }
    let mut seen = HashSet::with_capacity(drafts.len());
    let mut out = Vec::with_capacity(drafts.len());
    for (i, d) in drafts.into_iter().enumerate() {
        let at = |field: &str| format!("vms[{i}].{field}");
        let bad = |field: &str, m: String| Invalid::input(INVALID_INVENTORY, Some(at(field)), m);
        validate_vm_name(&d.name)
            .map_err(|_| bad("name", format!("name '{}' must be 1 to 64 characters without spaces", quote(&d.name))))?;
        let group = d.resource_group.as_deref().unwrap_or(default_group);
        validate_resource_group(group).map_err(|_| {
            bad("resourceGroup", format!("resource group '{}' is not a valid resource group name", quote(group)))
        })?;
        let os_type = OsType::parse(&d.os_type)
            .ok_or_else(|| bad("osType", format!("osType '{}' is not Linux or Windows", quote(&d.os_type))))?;
        let id = VmId::parse(&format!(
            "/subscriptions/{subscription}/resourceGroups/{group}/providers/Microsoft.Compute/virtualMachines/{}",
            d.name
        ))
        .map_err(|m| bad("name", printable(&m, 300)))?;
        if !seen.insert(id.key()) {
            return Err(bad("name", format!("virtual machine '{}' is listed more than once", id.name())));
        }
        let address_of = |field: &str, a: &Option<String>| a.as_deref().map(|a| address(&at(field), a)).transpose();
        let security_groups = &d.facts.security_groups;
        if security_groups.len() > limits::SECURITY_GROUPS {
            return Err(bad(
                "cloud.securityGroups",
                format!("{} security groups; at most {} are accepted", security_groups.len(), limits::SECURITY_GROUPS),
            ));
        }
        let opt = |field: &str, v: &Option<String>| v.as_deref().map(|t| fact(&at(field), t)).transpose();
        let facts = CloudFacts {
            provider: fact(&at("cloud.provider"), &d.facts.provider)?,
            instance_id: opt("cloud.instanceId", &d.facts.instance_id)?,
            vpc_id: opt("cloud.vpcId", &d.facts.vpc_id)?,
            security_groups: security_groups
                .iter()
                .enumerate()
                .map(|(j, g)| fact(&at(&format!("cloud.securityGroups[{j}]")), g))
                .collect::<Result<_, _>>()?,
            display_name: d.facts.display_name.as_deref().map(|t| printable(t, limits::FACT)),
        };
        out.push(CloudVm {
            id,
            os_type,
            address: address_of("address", &d.address)?,
            public_address: address_of("publicAddress", &d.public_address)?,
            unsupported_reason: d
                .unsupported_reason
                .as_deref()
                .map(|r| printable(r, limits::REASON))
                .filter(|r| !r.is_empty()),
            facts,
        });
    }
    Ok(out)
}

/// A VM of the inventory that another enforcement point (`by`: a host agent, a gateway or another
/// connector) enforces: the whole report is refused, so that two identities never share a VM.
pub fn enforced_elsewhere(vm: &VmId, by: &str) -> Invalid {
    Invalid::conflict(
        VM_ENFORCED_ELSEWHERE,
        format!(
            "virtual machine '{vm}' is already enforced by {by}; the inventory was not stored. Leave the instance \
             out of this connector's scope, or remove the other enforcement point first"
        ),
    )
}

/// Whether connector `connector_id` may register `vm`, found registered behind `gateway` or
/// bound to `holder` (name, mode, id of its agent): only when nothing else enforces it.
pub fn may_register(
    vm: &VmId,
    connector_id: &str,
    gateway: Option<&str>,
    holder: Option<(&str, AgentMode, &str)>,
) -> Result<(), Invalid> {
    let holder = holder.filter(|(_, _, id)| *id != connector_id);
    match enforcer_name(gateway, holder) {
        Some(by) => Err(enforced_elsewhere(vm, &by)),
        None => Ok(()),
    }
}

/// A VM cloud connector `connector` enforces is not attached to a gateway: the connector would
/// refuse to report it again, and its security group would still hold its rules.
pub fn gateway_for_cloud_vm(vm: &VmId, connector: &str) -> Invalid {
    Invalid::conflict(
        VM_ENFORCED_ELSEWHERE,
        format!(
            "virtual machine '{vm}' is enforced by cloud connector '{connector}'; leave it out of the connector's \
             scope (or remove the connector) before attaching it to a gateway"
        ),
    )
}

/// Who enforces a registered VM, as [`enforced_elsewhere`] names it.
pub fn enforcer_name(gateway: Option<&str>, agent: Option<(&str, AgentMode, &str)>) -> Option<String> {
    match (gateway, agent) {
        (Some(gw), _) => Some(format!("gateway '{gw}'")),
        (None, Some((name, mode, id))) => Some(format!("{} agent '{name}' ({id})", mode.as_str())),
        (None, None) => None,
    }
}

/// The audit record of a stored inventory.
pub fn inventory_stored(audit: AuditEvent, registered: u32, unsupported: u32, missing: &[String]) -> AuditEvent {
    audit
        .succeeded()
        .with("registered", registered.to_string())
        .with("unsupported", unsupported.to_string())
        .with("notFound", crate::join::listed(missing))
}

/// Why a rule was removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemovalReason {
    /// Its grant ended.
    Expired,
    /// It left the desired state before its end.
    Revoked,
    /// Found expired when the connector started.
    Stale,
}

impl RemovalReason {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "expired" => Some(RemovalReason::Expired),
            "revoked" => Some(RemovalReason::Revoked),
            "stale" => Some(RemovalReason::Stale),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RemovalReason::Expired => "expired",
            RemovalReason::Revoked => "revoked",
            RemovalReason::Stale => "stale",
        }
    }
}

/// One removal of an enforcement report as received.
#[derive(Debug, Clone, Default)]
pub struct RemovalDraft {
    pub request_id: i64,
    pub vm_id: String,
    pub protocol: String,
    pub port: u16,
    pub source: String,
    pub reason: String,
    pub removed_at: String,
}

/// One rule the connector removed, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removal {
    pub request_id: i64,
    pub vm: VmId,
    pub protocol: Protocol,
    pub port: u16,
    pub source: SourcePrefix,
    pub reason: RemovalReason,
    pub removed_at: OffsetDateTime,
}

/// A VM whose rules the connector cannot change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub vm: VmId,
    pub error: String,
}

/// An enforcement report, checked: what the store writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnforcementReport {
    pub removals: Vec<Removal>,
    pub failures: Vec<Failure>,
}

/// Checks an enforcement report: at most [`limits::REMOVALS`] removals and
/// [`limits::FAILURES`] failures, every field parsed and bounded.
pub fn check_report(
    removals: Vec<RemovalDraft>,
    failures: Vec<(String, String)>,
) -> Result<EnforcementReport, Invalid> {
    let bad = |field: String, m: String| Invalid::input(INVALID_ENFORCEMENT_REPORT, Some(field), m);
    if removals.len() > limits::REMOVALS {
        let m = format!(
            "{} removals were sent; a report holds at most {}: send the rest in another",
            removals.len(),
            limits::REMOVALS
        );
        return Err(bad("removals".into(), m));
    }
    if failures.len() > limits::FAILURES {
        let m = format!("{} failures were sent; a report holds at most {}", failures.len(), limits::FAILURES);
        return Err(bad("failures".into(), m));
    }
    let vm_of = |field: String, text: &str| {
        VmId::parse(text).map_err(|_| bad(field, format!("'{}' is not a virtual machine id", quote(text))))
    };
    let mut report = EnforcementReport::default();
    for (i, r) in removals.into_iter().enumerate() {
        let at = |f: &str| format!("removals[{i}].{f}");
        report.removals.push(Removal {
            request_id: r.request_id,
            vm: vm_of(at("vmId"), &r.vm_id)?,
            protocol: Protocol::parse(&r.protocol).ok_or_else(|| {
                bad(at("protocol"), format!("protocol '{}' is not TCP, UDP or *", quote(&r.protocol)))
            })?,
            port: Some(r.port)
                .filter(|p| *p > 0)
                .ok_or_else(|| bad(at("port"), "port 0 is outside 1..65535".into()))?,
            source: SourcePrefix::parse(&r.source)
                .map_err(|_| bad(at("source"), format!("'{}' is not a source prefix", quote(&r.source))))?,
            reason: RemovalReason::parse(&r.reason).ok_or_else(|| {
                bad(at("reason"), format!("reason '{}' is not expired, revoked or stale", quote(&r.reason)))
            })?,
            removed_at: OffsetDateTime::parse(&r.removed_at, &time::format_description::well_known::Rfc3339)
                .map_err(|_| bad(at("removedAt"), format!("'{}' is not an RFC 3339 time", quote(&r.removed_at))))?,
        });
    }
    for (i, (id, error)) in failures.into_iter().enumerate() {
        let vm = vm_of(format!("failures[{i}].vmId"), &id)?;
        let error = printable(&error, limits::REASON);
        report.failures.push(Failure { vm, error: if error.is_empty() { "no reason given".into() } else { error } });
    }
    Ok(report)
}

/// A report naming a VM this connector does not enforce: nothing of it is written.
pub fn foreign_vm(field: &str, vm: &VmId) -> Invalid {
    Invalid::input(
        INVALID_ENFORCEMENT_REPORT,
        Some(field.to_owned()),
        format!("virtual machine '{vm}' is not enforced by this connector; the report was not stored"),
    )
}

/// The audit record of one removed rule: the connector is the caller, the VM the resource.
pub fn removal_event(base: &AuditEvent, agent_id: &str, r: &Removal) -> AuditEvent {
    let mut event = base.clone().succeeded();
    event.operation = ops::GRANT_RULE_REMOVE.into();
    event.caller = format!("agent:{agent_id}");
    event.resource_id = r.vm.as_str().to_owned();
    event
        .with("requestId", r.request_id.to_string())
        .with("protocol", r.protocol.as_str())
        .with("port", r.port.to_string())
        .with("source", r.source.text().to_owned())
        .with("reason", r.reason.as_str())
        .with("removedAt", crate::timefmt::rfc3339(r.removed_at))
}

/// The audit record of the failures list (written when it changed).
pub fn failures_event(base: &AuditEvent, agent_id: &str, failing: &[String]) -> AuditEvent {
    let mut event = base.clone().succeeded();
    event.caller = format!("agent:{agent_id}");
    event.resource_id = format!("/agents/{agent_id}");
    event.with("failingVms", crate::join::listed(failing)).with("failing", failing.len().to_string())
}

/// One rule of a security group: (source prefix, protocol, port). Grants of the same source and
/// port share it.
pub type Rule = (String, &'static str, u16);

/// The rules `sources` open on `protocol`/`port`.
pub fn rules_of(sources: &SourceSpec, protocol: Protocol, port: u16) -> impl Iterator<Item = Rule> + '_ {
    sources.prefixes().iter().map(move |p| (p.canonical(), protocol.as_str(), port))
}

/// Refuses a request whose rules on `vm`, with the rules `in_use` there now, would overflow its
/// security group ([`CLOUD_RULE_LIMIT`]).
pub fn check_rule_limit(vm: &VmId, in_use: &BTreeSet<Rule>, requested: &BTreeSet<Rule>) -> Result<(), Invalid> {
    let needed = requested.difference(in_use).count();
    if in_use.len() + needed <= CLOUD_RULE_LIMIT {
        return Ok(());
    }
    Err(Invalid::conflict(
        RULE_LIMIT_REACHED,
        format!(
            "the security group of virtual machine '{}' can hold {CLOUD_RULE_LIMIT} inbound rules; {} are in use and \
             this request needs {needed}: wait for a grant to end, or ask for fewer sources or ports",
            vm.name(),
            in_use.len()
        ),
    ))
}

/// Refuses a request whose grants on `vm` (those of `plan` for it), with the `live` grants there
/// now (sources, protocol, port; those of [`HOLDING`] grants), would overflow the VM's security
/// group.
pub fn check_request_rules(
    vm: &VmId,
    live: &[(SourceSpec, Protocol, u16)],
    plan: &[crate::initiate::GrantPlan],
) -> Result<(), Invalid> {
    let in_use: BTreeSet<Rule> = live.iter().flat_map(|(s, p, n)| rules_of(s, *p, *n)).collect();
    let key = vm.key();
    let requested: BTreeSet<Rule> =
        plan.iter().filter(|g| g.vm_id.key() == key).flat_map(|g| rules_of(&g.sources, g.protocol, g.number)).collect();
    check_rule_limit(vm, &in_use, &requested)
}

/// Refuses a policy port that maps a gateway port on a VM a cloud connector enforces: a security
/// group opens the VM's own port, it forwards nothing.
pub fn no_mapped_port(vm: &VmId, number: u16, target: String) -> Invalid {
    Invalid::input(
        NO_DNAT_IN_CLOUD,
        Some(target),
        format!(
            "port {number} of virtual machine '{}' maps a gateway port, but a cloud connector enforces this VM \
             through its security group, which forwards nothing: leave mappedPort out",
            vm.name()
        ),
    )
}

#[cfg(test)]
mod tests;
