//! JIT policies: which ports of which VMs are closed until requested, from which sources they may
//! ever be opened, and for how long at most.
//!
//! Input arrives as a *draft* (loosely typed, exactly what the caller sent), is checked by
//! [`validate`] (everything that needs no stored state), then [`resolve`]d against the registered
//! VMs (existence, OS defaults) inside the store's transaction.

use std::collections::HashSet;
use std::net::IpAddr;

use time::Duration;

use crate::duration::AccessDuration;
use crate::ids::{PolicyRef, VmId};
use crate::invalid::{codes, Invalid};
use crate::prefix::SourcePrefix;

/// The shortest `maxRequestAccessDuration` a port may have.
pub const MIN_MAX_ACCESS: Duration = Duration::minutes(5);
/// The longest `maxRequestAccessDuration` a port may have (and so the longest request).
pub const MAX_MAX_ACCESS: Duration = Duration::hours(24);
/// Policy name length plus VM name length may not exceed this.
pub const NAME_LIMIT: usize = 56;
/// The `kind` a policy gets when the caller sends none.
pub const DEFAULT_KIND: &str = "Basic";
/// Ports the portal suggests when enabling JIT: SSH, RDP, WinRM over HTTP and HTTPS.
pub const SUGGESTED_PORTS: [u16; 4] = [22, 3389, 5985, 5986];

/// The operating system of a VM: decides the default port (Linux 22, Windows 3389).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OsType {
    Linux,
    Windows,
}

impl OsType {
    pub fn parse(s: &str) -> Option<Self> {
        if s.eq_ignore_ascii_case("linux") {
            Some(OsType::Linux)
        } else if s.eq_ignore_ascii_case("windows") {
            Some(OsType::Windows)
        } else {
            None
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OsType::Linux => "Linux",
            OsType::Windows => "Windows",
        }
    }

    /// The management port JIT protects when a VM is enabled with no ports.
    pub fn default_port(self) -> u16 {
        match self {
            OsType::Linux => 22,
            OsType::Windows => 3389,
        }
    }
}

/// The transport protocol of a port rule; `Any` (`*`) means TCP and UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Any,
}

impl Protocol {
    /// Accepts `TCP`, `UDP` and `*` in any letter case (the enum is extensible on the wire, but
    /// jitgate can only enforce these).
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "*" => Some(Protocol::Any),
            t if t.eq_ignore_ascii_case("tcp") => Some(Protocol::Tcp),
            t if t.eq_ignore_ascii_case("udp") => Some(Protocol::Udp),
            _ => None,
        }
    }

    /// Whether a packet can match both: equal, or either is `*`.
    pub fn overlaps(self, other: Protocol) -> bool {
        self == other || self == Protocol::Any || other == Protocol::Any
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Any => "*",
        }
    }
}

/// Source prefixes in the form the caller used: `allowedSourceAddressPrefix` (one) or
/// `allowedSourceAddressPrefixes` (several). The form is kept so responses echo it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    Single(SourcePrefix),
    Multiple(Vec<SourcePrefix>),
}

impl SourceSpec {
    pub fn prefixes(&self) -> &[SourcePrefix] {
        match self {
            SourceSpec::Single(p) => std::slice::from_ref(p),
            SourceSpec::Multiple(v) => v,
        }
    }

    /// Whether every prefix of `requested` lies inside one of these prefixes.
    pub fn covers(&self, requested: &SourceSpec) -> bool {
        requested.prefixes().iter().all(|r| self.prefixes().iter().any(|a| a.covers(r)))
    }

    /// A canonical, order-independent form, used to find requests for the same source.
    pub fn canonical(&self) -> String {
        let mut v: Vec<String> = self.prefixes().iter().map(SourcePrefix::canonical).collect();
        v.sort();
        v.dedup();
        v.join(",")
    }
}

/// One port under JIT control on one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRule {
    pub number: u16,
    pub protocol: Protocol,
    pub sources: SourceSpec,
    pub max_duration: AccessDuration,
    /// jitgate extension (`cutSessionsAtExpiry`): live connections stop when the grant ends.
    pub cut_sessions: bool,
    /// jitgate extension (`mappedPort`): behind a gateway, the gateway port that forwards (DNAT)
    /// to this port of the VM.
    pub mapped_port: Option<u16>,
    /// jitgate extension (`requireApproval`): requests wait for an approver (not the requester).
    pub require_approval: bool,
    /// jitgate extension (`approvalTimeout`): how long a request may wait (default PT1H).
    pub approval_timeout: Option<AccessDuration>,
}

/// The longest window a port rule allows when its policy names none: three hours (`PT3H`), in
/// seconds. Used for a VM's OS default rule and by the CLI's `--port` when `max=` is left out.
pub const DEFAULT_MAX_DURATION_SECS: i64 = 3 * 3600;

impl PortRule {
    /// The rule a VM gets when it is enabled with no ports: its OS's port, any protocol, any
    /// source, at most [`DEFAULT_MAX_DURATION_SECS`].
    pub fn default_for(os: OsType) -> Self {
        PortRule {
            number: os.default_port(),
            protocol: Protocol::Any,
            sources: SourceSpec::Single(SourcePrefix::any()),
            max_duration: AccessDuration::from_seconds(DEFAULT_MAX_DURATION_SECS),
            cut_sessions: false,
            mapped_port: None,
            require_approval: false,
            approval_timeout: None,
        }
    }
}

/// A VM inside a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyVm {
    pub id: VmId,
    pub ports: Vec<PortRule>,
    /// The public address of the gateway in front of the VM, when there is one.
    pub public_ip_address: Option<String>,
}

impl PolicyVm {
    pub fn port(&self, number: u16) -> Option<&PortRule> {
        self.ports.iter().find(|p| p.number == number)
    }
}

/// A complete, valid policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub reference: PolicyRef,
    pub kind: String,
    pub vms: Vec<PolicyVm>,
}

impl Policy {
    pub fn vm(&self, id_key: &str) -> Option<&PolicyVm> {
        self.vms.iter().find(|v| v.id.key() == id_key)
    }
}

/// A policy body as received, before any rule is checked.
#[derive(Debug, Clone, Default)]
pub struct PolicyDraft {
    pub kind: Option<String>,
    pub vms: Vec<VmDraft>,
}

#[derive(Debug, Clone, Default)]
pub struct VmDraft {
    pub id: String,
    /// `None` or empty: use the OS defaults.
    pub ports: Option<Vec<PortDraft>>,
    pub public_ip_address: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct PortDraft {
    pub number: Option<i64>,
    pub protocol: Option<String>,
    pub prefix: Option<String>,
    pub prefixes: Option<Vec<String>>,
    pub max_duration: Option<String>,
    pub cut_sessions: Option<bool>,
    pub mapped_port: Option<i64>,
    pub require_approval: Option<bool>,
    pub approval_timeout: Option<String>,
}

/// A policy whose every rule is checked, but whose VMs have not yet been looked up; a VM with
/// an empty port list still waits for its OS defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedPolicy {
    pub reference: PolicyRef,
    pub kind: String,
    pub vms: Vec<PolicyVm>,
}

/// Checks everything about a policy body that needs no stored state.
pub fn validate(reference: PolicyRef, draft: PolicyDraft) -> Result<ValidatedPolicy, Invalid> {
    let bad = |target: String, message: String| Invalid::input(codes::INVALID_POLICY, Some(target), message);
    let mut seen = HashSet::new();
    let mut mapped: Vec<(u16, Protocol)> = Vec::new();
    let mut vms = Vec::with_capacity(draft.vms.len());
    for (i, vm) in draft.vms.into_iter().enumerate() {
        let at = format!("properties.virtualMachines[{i}]");
        let id = VmId::parse(&vm.id).map_err(|m| bad(format!("{at}.id"), m))?;
        if !id.subscription().eq_ignore_ascii_case(&reference.subscription)
            || !id.resource_group().eq_ignore_ascii_case(&reference.resource_group)
        {
            return Err(bad(
                format!("{at}.id"),
                format!(
                    "virtual machine '{}' is not in the policy's subscription '{}' and resource group '{}'",
                    id, reference.subscription, reference.resource_group
                ),
            ));
        }
        if !seen.insert(id.key()) {
            return Err(bad(format!("{at}.id"), format!("virtual machine '{id}' is listed more than once")));
        }
        let name_len = reference.name.chars().count() + id.name().chars().count();
        if name_len > NAME_LIMIT {
            return Err(bad(
                format!("{at}.id"),
                format!(
                    "the policy name '{}' and the virtual machine name '{}' are {name_len} characters together; \
                     at most {NAME_LIMIT} are allowed",
                    reference.name,
                    id.name()
                ),
            ));
        }
        let public_ip_address = match vm.public_ip_address {
            Some(ip) if ip.parse::<IpAddr>().is_err() => {
                return Err(bad(format!("{at}.publicIpAddress"), format!("'{ip}' is not an IP address")));
            }
            other => other,
        };
        let mut ports = Vec::new();
        let mut numbers = HashSet::new();
        for (j, port) in vm.ports.unwrap_or_default().into_iter().enumerate() {
            let rule = validate_port(&format!("{at}.ports[{j}]"), port)?;
            if !numbers.insert(rule.number) {
                return Err(bad(
                    format!("{at}.ports[{j}].number"),
                    format!("port {} is listed more than once for virtual machine '{}'", rule.number, id.name()),
                ));
            }
            if let Some(m) = rule.mapped_port {
                if mapped.iter().any(|(n, p)| *n == m && p.overlaps(rule.protocol)) {
                    return Err(bad(
                        format!("{at}.ports[{j}].mappedPort"),
                        format!("mappedPort {m} is used twice in this policy; each gateway port maps to one VM port"),
                    ));
                }
                mapped.push((m, rule.protocol));
            }
            ports.push(rule);
        }
        vms.push(PolicyVm { id, ports, public_ip_address });
    }
    let kind = match draft.kind {
        Some(k) if k.trim().is_empty() => DEFAULT_KIND.to_owned(),
        Some(k) => k,
        None => DEFAULT_KIND.to_owned(),
    };
    Ok(ValidatedPolicy { reference, kind, vms })
}

fn validate_port(at: &str, port: PortDraft) -> Result<PortRule, Invalid> {
    let bad =
        |field: &str, message: String| Invalid::input(codes::INVALID_POLICY, Some(format!("{at}.{field}")), message);
    let number = match port.number {
        None => return Err(bad("number", "the port number is required".into())),
        Some(n) if !(1..=65535).contains(&n) => {
            return Err(bad("number", format!("port {n} is outside 1..65535")));
        }
        Some(n) => n as u16,
    };
    let protocol = match port.protocol.as_deref() {
        None => return Err(bad("protocol", format!("port {number}: the protocol is required (TCP, UDP or *)"))),
        Some(p) => Protocol::parse(p)
            .ok_or_else(|| bad("protocol", format!("port {number}: protocol '{p}' is not one of TCP, UDP or *")))?,
    };
    let sources = parse_sources(port.prefix, port.prefixes)
        .map_err(|(field, m)| bad(field, format!("port {number}: {m}")))?
        .ok_or_else(|| {
            bad(
                "allowedSourceAddressPrefix",
                format!("port {number}: set one of allowedSourceAddressPrefix or allowedSourceAddressPrefixes ('*' allows any source)"),
            )
        })?;
    let max_text = port.max_duration.ok_or_else(|| {
        bad("maxRequestAccessDuration", format!("port {number}: maxRequestAccessDuration is required, e.g. PT3H"))
    })?;
    let max_duration =
        AccessDuration::parse(&max_text).map_err(|e| bad("maxRequestAccessDuration", format!("port {number}: {e}")))?;
    if max_duration.duration() < MIN_MAX_ACCESS || max_duration.duration() > MAX_MAX_ACCESS {
        return Err(bad(
            "maxRequestAccessDuration",
            format!("port {number}: maxRequestAccessDuration '{max_text}' must be between PT5M and PT24H"),
        ));
    }
    let mapped_port = match port.mapped_port {
        None => None,
        Some(n) if (1..=65535).contains(&n) => Some(n as u16),
        Some(n) => return Err(bad("mappedPort", format!("port {number}: mappedPort {n} is outside 1..65535"))),
    };
    let approval_timeout = match port.approval_timeout {
        None => None,
        Some(t) => {
            let d = AccessDuration::parse(&t).map_err(|e| bad("approvalTimeout", format!("port {number}: {e}")))?;
            if d.duration() <= Duration::ZERO || d.duration() > Duration::days(7) {
                return Err(bad(
                    "approvalTimeout",
                    format!("port {number}: approvalTimeout must be positive and at most P7D"),
                ));
            }
            Some(d)
        }
    };
    Ok(PortRule {
        number,
        protocol,
        sources,
        max_duration,
        cut_sessions: port.cut_sessions.unwrap_or(false),
        mapped_port,
        require_approval: port.require_approval.unwrap_or(false),
        approval_timeout,
    })
}

/// Parses the singular/plural source fields. `Ok(None)` when neither is set; an error names the
/// field (`allowedSourceAddressPrefix` or `allowedSourceAddressPrefixes`) and the problem.
pub fn parse_sources(
    single: Option<String>,
    multiple: Option<Vec<String>>,
) -> Result<Option<SourceSpec>, (&'static str, String)> {
    const ONE: &str = "allowedSourceAddressPrefix";
    const MANY: &str = "allowedSourceAddressPrefixes";
    match (single, multiple) {
        (Some(_), Some(_)) => Err((ONE, format!("set only one of {ONE} and {MANY}, not both"))),
        (None, None) => Ok(None),
        (Some(s), None) => SourcePrefix::parse(&s).map(|p| Some(SourceSpec::Single(p))).map_err(|m| (ONE, m)),
        (None, Some(list)) => {
            if list.is_empty() {
                return Err((MANY, format!("{MANY} is empty; name at least one prefix or '*'")));
            }
            let mut out = Vec::with_capacity(list.len());
            for (k, s) in list.iter().enumerate() {
                out.push(SourcePrefix::parse(s).map_err(|m| (MANY, format!("{MANY}[{k}]: {m}")))?);
            }
            Ok(Some(SourceSpec::Multiple(out)))
        }
    }
}

/// Completes a validated policy against the registered VMs: every VM must be known to jitgate,
/// and a VM with no ports gets its OS's default rule.
pub fn resolve(policy: ValidatedPolicy, os_of: impl Fn(&VmId) -> Option<OsType>) -> Result<Policy, Invalid> {
    let mut vms = Vec::with_capacity(policy.vms.len());
    for (i, mut vm) in policy.vms.into_iter().enumerate() {
        let Some(os) = os_of(&vm.id) else {
            return Err(Invalid::input(
                codes::VM_NOT_REGISTERED,
                Some(format!("properties.virtualMachines[{i}].id")),
                format!(
                    "virtual machine '{}' is not registered with jitgate; register it (PUT /api/v1/vms) or run an agent on it first",
                    vm.id
                ),
            ));
        };
        if vm.ports.is_empty() {
            vm.ports.push(PortRule::default_for(os));
        }
        vms.push(vm);
    }
    Ok(Policy { reference: policy.reference, kind: policy.kind, vms })
}

#[cfg(test)]
mod tests;
