//! What the server wants enforced, per instance, with absolute end times; and how a grant's rule
//! carries its request and end time in its description (`jitgate req=42
//! exp=2026-12-01T15:04:05Z`), which is all the sweep needs to remove it on time.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use jitgate_api_types::agent::StateOut;
use jitgate_core::prefix::SourcePrefix;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::rules::{Port, Proto};

/// Times are whole seconds since the Unix epoch (UTC): what a rule's description can hold.
pub type UnixSecs = i64;

/// One VM's desired state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredVm {
    /// The VM's id as the server names it (reported back in removals).
    pub vm_id: String,
    /// The protected ports; empty: the VM is not protected.
    pub ports: BTreeSet<Port>,
    pub grants: Vec<DesiredGrant>,
}

/// A live grant: one request, one port, its sources, its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredGrant {
    pub request_id: i64,
    pub proto: Proto,
    pub port: u16,
    pub sources: Vec<IpNet>,
    pub end: UnixSecs,
}

/// The protocols a jitgate protocol names: `*` is both.
pub fn protocols(text: &str) -> Vec<Proto> {
    match text.trim().to_ascii_uppercase().as_str() {
        "TCP" => vec![Proto::Tcp],
        "UDP" => vec![Proto::Udp],
        "*" | "ANY" => vec![Proto::Tcp, Proto::Udp],
        _ => vec![],
    }
}

/// The networks a grant's source prefix allows (`*`: every IPv4 and IPv6 address); nothing for a
/// prefix that cannot be read.
pub fn networks(prefix: &str) -> Vec<IpNet> {
    match SourcePrefix::parse_stored(prefix) {
        Ok(p) => match p.net() {
            Some(net) => vec![net.trunc()],
            None => [
                ipnet::Ipv4Net::new(std::net::Ipv4Addr::UNSPECIFIED, 0).map(IpNet::V4),
                ipnet::Ipv6Net::new(std::net::Ipv6Addr::UNSPECIFIED, 0).map(IpNet::V6),
            ]
            .into_iter()
            .filter_map(Result::ok)
            .collect(),
        },
        Err(_) => vec![],
    }
}

/// The instance id a VM id names: its last path segment (`…/virtualMachines/i-0abc` → `i-0abc`).
pub fn instance_of(vm_id: &str) -> &str {
    vm_id.rsplit('/').next().unwrap_or(vm_id)
}

/// The state as desired VMs by instance id (lower case), each grant's end counted from
/// `received_ms` (the wall clock when the answer came, in Unix milliseconds) and rounded up to a
/// whole second, so a rule never ends before its grant.
pub fn by_instance(state: &StateOut, received_ms: i64) -> BTreeMap<String, DesiredVm> {
    let mut out: BTreeMap<String, DesiredVm> = BTreeMap::new();
    let entry = |out: &mut BTreeMap<String, DesiredVm>, vm_id: &str| -> String {
        let key = instance_of(vm_id).to_ascii_lowercase();
        out.entry(key.clone()).or_insert_with(|| DesiredVm { vm_id: vm_id.to_owned(), ..DesiredVm::default() });
        key
    };
    for p in &state.ports {
        let key = entry(&mut out, &p.vm_id);
        if let Some(vm) = out.get_mut(&key) {
            vm.ports.extend(protocols(&p.protocol).into_iter().map(|proto| (proto, p.port)));
        }
    }
    for g in &state.grants {
        let key = entry(&mut out, &g.vm_id);
        let end_ms = received_ms.saturating_add(i64::try_from(g.remaining_ms).unwrap_or(i64::MAX));
        let end = end_ms.div_euclid(1000) + i64::from(end_ms.rem_euclid(1000) != 0);
        let sources: Vec<IpNet> = g.sources.iter().flat_map(|s| networks(s)).collect();
        if let Some(vm) = out.get_mut(&key) {
            for proto in protocols(&g.protocol) {
                vm.grants.push(DesiredGrant {
                    request_id: g.request_id,
                    proto,
                    port: g.port,
                    sources: sources.clone(),
                    end,
                });
            }
        }
    }
    out
}

/// What a grant's rule says of itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleNote {
    pub request_id: i64,
    pub end: UnixSecs,
}

/// `jitgate req=42 exp=2026-12-01T15:04:05Z`: only characters EC2 allows in a description.
pub fn describe(request_id: i64, end: UnixSecs) -> String {
    let t = OffsetDateTime::from_unix_timestamp(end).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!("jitgate req={request_id} exp={}", jitgate_core::timefmt::rfc3339(t))
}

/// Reads what [`describe`] wrote; `None` for any other description.
pub fn parse_note(description: &str) -> Option<RuleNote> {
    let rest = description.strip_prefix("jitgate ")?;
    let mut request_id = None;
    let mut end = None;
    for word in rest.split_whitespace() {
        if let Some(r) = word.strip_prefix("req=") {
            request_id = r.parse::<i64>().ok();
        } else if let Some(e) = word.strip_prefix("exp=") {
            end = OffsetDateTime::parse(e, &Rfc3339).ok().map(|t| t.unix_timestamp());
        }
    }
    Some(RuleNote { request_id: request_id?, end: end? })
}

/// The wall clock in RFC 3339, for reports.
pub fn rfc3339_ms(unix_ms: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    jitgate_core::timefmt::rfc3339(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jitgate_api_types::agent::{GrantOut, PortOut};

    const VM: &str = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/i-0abc";

    #[test]
    fn notes_round_trip_and_use_only_allowed_characters() {
        let d = describe(42, 1_796_137_445);
        assert_eq!(d, "jitgate req=42 exp=2026-12-01T15:04:05Z");
        assert!(d.chars().all(|c| c.is_ascii_alphanumeric() || " ._-:/()#,@[]+=&;{}!$*".contains(c)));
        assert_eq!(parse_note(&d), Some(RuleNote { request_id: 42, end: 1_796_137_445 }));
        assert_eq!(parse_note("ssh from the office"), None);
        assert_eq!(parse_note("jitgate req=x exp=2026-12-01T15:04:05Z"), None);
        assert_eq!(parse_note("jitgate req=1"), None);
    }

    #[test]
    fn the_state_becomes_desired_vms_by_instance() {
        let state = StateOut {
            revision: 3,
            mode: "cloud".into(),
            ports: vec![
                PortOut {
                    vm_id: VM.into(),
                    address: Some("10.0.0.5".into()),
                    protocol: "*".into(),
                    port: 22,
                    cut_sessions: false,
                    mapped_port: None,
                },
                PortOut {
                    vm_id: "i-0other".into(),
                    address: None,
                    protocol: "UDP".into(),
                    port: 53,
                    cut_sessions: false,
                    mapped_port: None,
                },
            ],
            grants: vec![GrantOut {
                request_id: 7,
                vm_id: VM.into(),
                address: Some("10.0.0.5".into()),
                protocol: "TCP".into(),
                port: 22,
                sources: vec!["*".into(), "203.0.113.7".into(), "bad".into()],
                remaining_ms: 1_500,
                mapped_port: None,
            }],
        };
        let vms = by_instance(&state, 1_000_000);
        assert_eq!(vms.len(), 2);
        let vm = &vms["i-0abc"];
        assert_eq!(vm.vm_id, VM);
        assert_eq!(vm.ports, BTreeSet::from([(Proto::Tcp, 22), (Proto::Udp, 22)]));
        assert_eq!(vm.grants.len(), 1);
        assert_eq!(vm.grants[0].end, 1_002, "rounded up");
        let srcs: Vec<String> = vm.grants[0].sources.iter().map(|s| s.to_string()).collect();
        assert_eq!(srcs, ["0.0.0.0/0", "::/0", "203.0.113.7/32"]);
        assert_eq!(vms["i-0other"].ports, BTreeSet::from([(Proto::Udp, 53)]));
        assert_eq!(by_instance(&state, 999_000)["i-0abc"].grants[0].end, 1_001);
    }
}
