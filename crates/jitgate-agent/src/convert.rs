//! From the server's state (remaining milliseconds) to the enforcement model (deadlines on this
//! host's monotonic clock).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnet::IpNet;

use jitgate_api_types::agent::StateOut;
use jitgate_enforce::{Desired, DnatKey, DnatTarget, GrantKey, Mode, Protected, L4};

fn protocols(p: &str) -> &'static [L4] {
    match p {
        "TCP" | "tcp" => &[L4::Tcp],
        "UDP" | "udp" => &[L4::Udp],
        _ => &[L4::Tcp, L4::Udp],
    }
}

/// Source prefixes as networks. On a host (`dest`: `None`) `*` is every IPv4 and every IPv6
/// address. Behind a gateway (`dest`: the VM's address) a source reaches the VM only in the
/// VM's own address family (there is no NAT64): `*` is every address of that family, and a
/// source of the other family is skipped (the server refuses such requests).
fn sources(texts: &[String], dest: Option<IpAddr>) -> Vec<IpNet> {
    let any4 = IpNet::V4(Default::default());
    let any6 = IpNet::V6(Default::default());
    let mut out = Vec::new();
    for t in texts {
        if t == "*" {
            match dest {
                None => out.extend([any4, any6]),
                Some(IpAddr::V4(_)) => out.push(any4),
                Some(IpAddr::V6(_)) => out.push(any6),
            }
            continue;
        }
        let net = if t.contains('/') {
            t.parse::<IpNet>().ok().map(|n| n.trunc())
        } else {
            t.parse::<IpAddr>().ok().map(IpNet::from)
        };
        match (net, dest) {
            (Some(n), Some(d)) if n.addr().is_ipv4() != d.is_ipv4() => {
                tracing::warn!(source = %t, vm = %d, "a source of the other address family than the VM's cannot reach it through the gateway (no NAT64); skipped");
            }
            (Some(n), _) => out.push(n),
            (None, _) => tracing::warn!(source = %t, "unreadable source prefix; skipped"),
        }
    }
    out
}

/// The desired state, with deadlines `asked + remaining - already_elapsed`.
pub fn desired(state: &StateOut, mode: Mode, asked: Instant, already_elapsed: Duration) -> Desired {
    let mut d = Desired::empty(mode);
    for p in &state.ports {
        let dest = if mode == Mode::Gateway {
            match p.address.as_deref().and_then(|a| a.parse().ok()) {
                Some(a) => Some(a),
                None => continue,
            }
        } else {
            None
        };
        for proto in protocols(&p.protocol) {
            d.protected.insert(Protected { dest, proto: *proto, port: p.port, cut_sessions: p.cut_sessions });
        }
    }
    for g in &state.grants {
        let Some(remaining) = Duration::from_millis(g.remaining_ms).checked_sub(already_elapsed) else { continue };
        let end = asked + remaining;
        let dest: Option<IpAddr> = if mode == Mode::Gateway {
            match g.address.as_deref().and_then(|a| a.parse().ok()) {
                Some(a) => Some(a),
                None => continue,
            }
        } else {
            None
        };
        for source in sources(&g.sources, dest) {
            for proto in protocols(&g.protocol) {
                let key = GrantKey { source, dest, proto: *proto, port: g.port };
                let slot = d.grants.entry(key).or_insert(end);
                *slot = (*slot).max(end);
                if let (Some(public_port), Some(addr)) = (g.mapped_port, dest) {
                    let dk = DnatKey { source, proto: *proto, public_port };
                    let value = d.dnat.entry(dk).or_insert((DnatTarget { addr, port: g.port }, end));
                    value.1 = value.1.max(end);
                }
            }
        }
    }
    d
}

/// How far a grant's end may move between two answers and still be the same end: the
/// difference is the network's latency, or the clocks of the replicas that answered, not a
/// change of the grant.
pub const SAME_END: Duration = Duration::from_secs(1);

/// Gives each grant and mapping of `desired` that `applied` holds with an end within
/// [`SAME_END`] the end it has in `applied`, so that the plan leaves its kernel element — and
/// the element's timeout — as it is. Ends further apart (an extension) stay as the server says.
pub fn keep_applied_ends(desired: &mut Desired, applied: &Desired) {
    let same = |a: Instant, b: Instant| a.max(b).duration_since(a.min(b)) <= SAME_END;
    for (key, end) in desired.grants.iter_mut() {
        if let Some(old) = applied.grants.get(key) {
            if same(*old, *end) {
                *end = *old;
            }
        }
    }
    for (key, (target, end)) in desired.dnat.iter_mut() {
        if let Some((old_target, old)) = applied.dnat.get(key) {
            if old_target == target && same(*old, *end) {
                *end = *old;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jitgate_api_types::agent::{GrantOut, PortOut};

    fn state(mode: &str, address: Option<&str>) -> StateOut {
        StateOut {
            revision: 3,
            mode: mode.into(),
            ports: vec![PortOut {
                vm_id: "/vm".into(),
                address: address.map(String::from),
                protocol: "*".into(),
                port: 22,
                cut_sessions: true,
                mapped_port: Some(50022),
            }],
            grants: vec![GrantOut {
                request_id: 1,
                vm_id: "/vm".into(),
                address: address.map(String::from),
                protocol: "TCP".into(),
                port: 22,
                sources: vec!["203.0.113.5".into(), "*".into()],
                remaining_ms: 60_000,
                mapped_port: Some(50022),
            }],
        }
    }

    #[test]
    fn host_state_expands_protocols_and_sources() {
        let asked = Instant::now();
        let d = desired(&state("host", None), Mode::Host, asked, Duration::ZERO);
        assert_eq!(d.protected.len(), 2, "* is tcp and udp");
        assert!(d.protected.iter().all(|p| p.dest.is_none() && p.cut_sessions));
        assert_eq!(d.grants.len(), 3, "one address, and * as 0.0.0.0/0 and ::/0");
        assert!(d.grants.values().all(|end| *end == asked + Duration::from_secs(60)));
        assert!(d.dnat.is_empty(), "no DNAT on a host");
    }

    #[test]
    fn gateway_state_targets_the_vm_and_maps_ports() {
        let asked = Instant::now();
        let d = desired(&state("gateway", Some("10.2.0.7")), Mode::Gateway, asked, Duration::ZERO);
        let vm: IpAddr = "10.2.0.7".parse().expect("ip");
        assert!(d.protected.iter().all(|p| p.dest == Some(vm)));
        assert_eq!(d.grants.len(), 2, "the address, and * as 0.0.0.0/0 only: ::/0 cannot reach an IPv4 VM");
        let (target, _) = d.dnat.values().next().expect("a DNAT mapping");
        assert_eq!((target.addr, target.port), (vm, 22));
        assert!(d.dnat.keys().all(|k| k.public_port == 50022));
    }

    #[test]
    fn behind_a_gateway_sources_keep_to_the_vms_address_family() {
        let asked = Instant::now();
        let mut s = state("gateway", Some("fd00:2::7"));
        s.grants[0].sources = vec!["2001:db8::5".into(), "2001:db8:1::/48".into(), "203.0.113.5".into(), "*".into()];
        let d = desired(&s, Mode::Gateway, asked, Duration::ZERO);
        let vm: IpAddr = "fd00:2::7".parse().expect("ip");
        assert!(d.protected.iter().all(|p| p.dest == Some(vm)), "an IPv6 VM is protected at its address");
        let mut got: Vec<String> = d.grants.keys().map(|k| k.source.to_string()).collect();
        got.sort();
        assert_eq!(got, ["2001:db8:1::/48", "2001:db8::5/128", "::/0"], "the IPv4 source is skipped, * is ::/0");
        assert!(d.grants.keys().all(|k| k.dest == Some(vm)));
        assert_eq!(d.dnat.len(), 3, "one DNAT mapping per source");
        assert!(d.dnat.values().all(|(t, _)| t.addr == vm && t.port == 22));
        assert!(d.dnat.keys().all(|k| k.source.addr().is_ipv6()));
    }

    #[test]
    fn elapsed_time_shortens_or_drops_grants() {
        let asked = Instant::now();
        let d = desired(&state("host", None), Mode::Host, asked, Duration::from_secs(50));
        assert!(d.grants.values().all(|end| *end == asked + Duration::from_secs(10)));
        let d = desired(&state("host", None), Mode::Host, asked, Duration::from_secs(61));
        assert!(d.grants.is_empty());
    }

    #[test]
    fn ends_that_moved_by_less_than_a_second_keep_the_applied_end() {
        let t0 = Instant::now();
        let applied = desired(&state("gateway", Some("10.2.0.7")), Mode::Gateway, t0, Duration::ZERO);
        // The same state answered 300 ms later by a server whose clock is 400 ms ahead.
        let mut later = state("gateway", Some("10.2.0.7"));
        later.grants[0].remaining_ms -= 700;
        let mut d = desired(&later, Mode::Gateway, t0 + Duration::from_millis(300), Duration::ZERO);
        keep_applied_ends(&mut d, &applied);
        assert_eq!(d.grants, applied.grants, "the kernel elements stay as they are");
        assert_eq!(d.dnat, applied.dnat);
        assert!(matches!(jitgate_enforce::plan(Some(&applied), &d, t0), jitgate_enforce::Plan::Nothing));

        // An extension moves the end by more: the server's end is taken.
        let mut extended = state("gateway", Some("10.2.0.7"));
        extended.grants[0].remaining_ms += 60_000;
        let mut d = desired(&extended, Mode::Gateway, t0, Duration::ZERO);
        keep_applied_ends(&mut d, &applied);
        assert!(d.grants.values().all(|end| *end == t0 + Duration::from_secs(120)));
        assert!(d.dnat.values().all(|(_, end)| *end == t0 + Duration::from_secs(120)));
    }
}
