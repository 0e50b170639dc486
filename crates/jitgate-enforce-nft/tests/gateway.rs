//! Gateway mode with three namespaces: a client (10.88.1.1 and 10.88.1.3, fd88:1::1 and
//! fd88:1::3), a gateway that forwards (10.88.1.2 | 10.88.2.1, fd88:1::2 | fd88:2::1) and runs
//! the firewall, and a VM behind it (10.88.2.2, fd88:2::2) with echo servers. Skipped, with the reason
//! printed, without root or nftables.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may panic on a failed expectation.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::{addr, echoes, netns, tcp_closed, tcp_connect, tcp_open, veth, Echo, Netns, TestNs, OPEN_WAIT};
use jitgate_enforce::{Desired, DnatKey, DnatTarget, ElemOp, GrantKey, Mode, Protected, L4};
use jitgate_enforce_nft::{NftError, NftFirewall};

const C1: &str = "10.88.1.1";
const C2: &str = "10.88.1.3";
const GW: &str = "10.88.1.2";
const VM: &str = "10.88.2.2";
const C1_6: &str = "fd88:1::1";
const C2_6: &str = "fd88:1::3";
const GW6: &str = "fd88:1::2";
const VM6: &str = "fd88:2::2";
const PUBLIC: u16 = 50022;
const MINUTE: Duration = Duration::from_secs(60);

struct Gateway {
    client: Netns,
    gateway: Netns,
    _vm: Netns,
    fw: NftFirewall,
    _echo: Echo,
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

fn sa(a: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip(a), port)
}

fn gateway() -> Gateway {
    let client = netns("c");
    let gw = netns("g");
    let vm = netns("v");
    let (c_if, g1) = veth(&client, &gw);
    let (g2, v_if) = veth(&gw, &vm);
    for a in ["10.88.1.1/24", "10.88.1.3/24", "fd88:1::1/64", "fd88:1::3/64"] {
        addr(&client, &c_if, a);
    }
    for a in ["10.88.1.2/24", "fd88:1::2/64"] {
        addr(&gw, &g1, a);
    }
    for a in ["10.88.2.1/24", "fd88:2::1/64"] {
        addr(&gw, &g2, a);
    }
    for a in ["10.88.2.2/24", "fd88:2::2/64"] {
        addr(&vm, &v_if, a);
    }
    client.must_ip(&["route", "add", "default", "via", "10.88.1.2"]);
    client.must_ip(&["-6", "route", "add", "default", "via", "fd88:1::2"]);
    vm.must_ip(&["route", "add", "default", "via", "10.88.2.1"]);
    vm.must_ip(&["-6", "route", "add", "default", "via", "fd88:2::1"]);
    gw.must_sysctl("net.ipv4.ip_forward", "1");
    gw.must_sysctl("net.ipv6.conf.all.forwarding", "1");
    let echo = Echo::start(&vm, &[sa(VM, 22), sa(VM, 2223), sa(VM, 8080), sa(VM6, 22), sa(VM6, 2223), sa(VM6, 8080)]);
    let fw = gw.firewall();
    Gateway { client, gateway: gw, _vm: vm, fw, _echo: echo }
}

fn state() -> Desired {
    let mut d = Desired::empty(Mode::Gateway);
    d.protected.insert(Protected { dest: Some(ip(VM)), proto: L4::Tcp, port: 22, cut_sessions: false });
    d.protected.insert(Protected { dest: Some(ip(VM)), proto: L4::Tcp, port: 2223, cut_sessions: true });
    d
}

fn grant(source: &str, port: u16) -> GrantKey {
    grant_to(source, VM, port)
}

/// A grant to the VM address `vm` (IPv4 or IPv6).
fn grant_to(source: &str, vm: &str, port: u16) -> GrantKey {
    GrantKey { source: source.parse().expect("net"), dest: Some(ip(vm)), proto: L4::Tcp, port }
}

fn dnat(source: &str, public_port: u16) -> DnatKey {
    DnatKey { source: source.parse().expect("net"), proto: L4::Tcp, public_port }
}

/// The grant and DNAT entry a request makes: public port → VM port, and the forward check.
fn open_ops(source: &str, public_port: u16, port: u16, timeout: Duration) -> Vec<ElemOp> {
    open_ops_to(source, VM, public_port, port, timeout)
}

fn open_ops_to(source: &str, vm: &str, public_port: u16, port: u16, timeout: Duration) -> Vec<ElemOp> {
    vec![
        ElemOp::AddGrant { key: grant_to(source, vm, port), timeout },
        ElemOp::AddDnat { key: dnat(source, public_port), target: DnatTarget { addr: ip(vm), port }, timeout },
    ]
}

fn close_ops(source: &str, public_port: u16, port: u16) -> Vec<ElemOp> {
    close_ops_to(source, VM, public_port, port)
}

fn close_ops_to(source: &str, vm: &str, public_port: u16, port: u16) -> Vec<ElemOp> {
    vec![ElemOp::DelGrant { key: grant_to(source, vm, port) }, ElemOp::DelDnat { key: dnat(source, public_port) }]
}

impl Gateway {
    /// Through the gateway's public address of the source's family.
    fn via_gateway(&self, src: &str, public_port: u16) -> bool {
        tcp_open(&self.client, Some(ip(src)), sa(public_of(src), public_port))
    }

    fn closed_via_gateway(&self, src: &str, public_port: u16) -> bool {
        tcp_closed(&self.client, Some(ip(src)), sa(public_of(src), public_port))
    }
}

fn public_of(src: &str) -> &'static str {
    if ip(src).is_ipv4() {
        GW
    } else {
        GW6
    }
}

#[test]
fn only_the_granted_source_reaches_the_vm_through_the_public_port() {
    require_kernel!();
    let mut g = gateway();
    assert!(tcp_open(&g.client, Some(ip(C1)), sa(VM, 22)), "routed before the table exists");

    let fw = &mut g.fw;
    g.gateway.inside(|| fw.replace(&state(), Instant::now())).expect("replace");
    assert!(tcp_closed(&g.client, Some(ip(C1)), sa(VM, 22)), "protected VM port closed to routed traffic");
    assert!(g.closed_via_gateway(C1, PUBLIC), "no DNAT yet");
    assert!(tcp_open(&g.client, Some(ip(C1)), sa(VM, 8080)), "other VM ports untouched");
    assert!(tcp_open(&g.client, None, sa("fd88:2::2", 22)), "IPv6 to a VM port not protected for IPv6 is left alone");

    g.fw.apply(&open_ops("10.88.1.1/32", PUBLIC, 22, MINUTE)).expect("apply");
    assert!(g.via_gateway(C1, PUBLIC), "granted source lands on vm:22 via gateway:{PUBLIC}");
    assert!(g.closed_via_gateway(C2, PUBLIC), "another source gets no DNAT");
    assert!(tcp_closed(&g.client, Some(ip(C2)), sa(VM, 22)), "nor a routed path");
    assert!(tcp_open(&g.client, Some(ip(C1)), sa(VM, 22)), "the grant also covers the routed path");

    // A DNAT entry alone does not open the port: the forward check needs the grant.
    g.fw.apply(&[ElemOp::AddDnat {
        key: dnat("10.88.1.3/32", PUBLIC),
        target: DnatTarget { addr: ip(VM), port: 22 },
        timeout: MINUTE,
    }])
    .expect("apply");
    assert!(g.closed_via_gateway(C2, PUBLIC), "DNAT without a grant stays closed");

    // A range grant for the whole client subnet, overlapping the exact one.
    g.fw.apply(&[ElemOp::DelDnat { key: dnat("10.88.1.3/32", PUBLIC) }]).expect("apply");
    g.fw.apply(&open_ops("10.88.1.0/24", PUBLIC + 1, 22, MINUTE)).expect("apply");
    assert!(g.via_gateway(C2, PUBLIC + 1), "range DNAT and grant");
    // The same public port for the whole subnet, to the VM's port 2223, which nobody may reach:
    // the exact entry for .1 must win over the range (longest prefix first).
    g.fw.apply(&[ElemOp::AddDnat {
        key: dnat("10.88.1.0/24", PUBLIC),
        target: DnatTarget { addr: ip(VM), port: 2223 },
        timeout: MINUTE,
    }])
    .expect("apply");
    assert!(g.via_gateway(C1, PUBLIC), "the exact DNAT entry wins for .1");
    assert!(g.closed_via_gateway(C2, PUBLIC), ".3 lands on vm:2223, which has no grant");

    g.fw.apply(&close_ops("10.88.1.0/24", PUBLIC + 1, 22)).expect("apply");
    g.fw.apply(&[ElemOp::DelDnat { key: dnat("10.88.1.0/24", PUBLIC) }]).expect("apply");
    g.fw.apply(&close_ops("10.88.1.1/32", PUBLIC, 22)).expect("apply");
    assert!(g.closed_via_gateway(C1, PUBLIC), "closed after the delete");
    assert!(g.closed_via_gateway(C2, PUBLIC + 1), "closed after the delete");

    // Timeouts apply to the grant and the DNAT entry alike.
    g.fw.apply(&open_ops("10.88.1.1/32", PUBLIC, 22, Duration::from_secs(1))).expect("apply");
    let start = Instant::now();
    assert!(g.via_gateway(C1, PUBLIC));
    std::thread::sleep(Duration::from_millis(1100).saturating_sub(start.elapsed()));
    assert!(g.closed_via_gateway(C1, PUBLIC), "closed by the kernel after 1 s");

    g.gateway.inside(|| g.fw.remove()).expect("remove");
    assert!(tcp_open(&g.client, Some(ip(C2)), sa(VM, 22)), "remove() restores routing");
}

#[test]
fn sessions_through_the_gateway_end_with_their_grant_when_the_port_cuts_them() {
    require_kernel!();
    let mut g = gateway();
    let fw = &mut g.fw;
    g.gateway.inside(|| fw.replace(&state(), Instant::now())).expect("replace");
    let mut ops = open_ops("10.88.1.1/32", PUBLIC, 22, MINUTE);
    ops.extend(open_ops("10.88.1.1/32", PUBLIC + 1, 2223, MINUTE));
    g.fw.apply(&ops).expect("apply");
    let mut kept = tcp_connect(&g.client, Some(ip(C1)), sa(GW, PUBLIC), OPEN_WAIT).expect("connect");
    let mut cut = tcp_connect(&g.client, Some(ip(C1)), sa(GW, PUBLIC + 1), OPEN_WAIT).expect("connect");
    assert!(echoes(&mut kept, OPEN_WAIT) && echoes(&mut cut, OPEN_WAIT));
    let mut close = close_ops("10.88.1.1/32", PUBLIC, 22);
    close.extend(close_ops("10.88.1.1/32", PUBLIC + 1, 2223));
    g.fw.apply(&close).expect("apply");
    assert!(!echoes(&mut cut, Duration::from_millis(500)), "the session to the cutting port stops");
    assert!(echoes(&mut kept, OPEN_WAIT), "the other session carries on");
}

/// The IPv4 state plus the VM's IPv6 address on the same ports.
fn dual_state() -> Desired {
    let mut d = state();
    d.protected.insert(Protected { dest: Some(ip(VM6)), proto: L4::Tcp, port: 22, cut_sessions: false });
    d.protected.insert(Protected { dest: Some(ip(VM6)), proto: L4::Tcp, port: 2223, cut_sessions: true });
    d
}

#[test]
fn only_the_granted_ipv6_source_reaches_the_vm_through_the_public_port() {
    require_kernel!();
    let mut g = gateway();
    assert!(tcp_open(&g.client, Some(ip(C1_6)), sa(VM6, 22)), "routed before the table exists");

    let fw = &mut g.fw;
    g.gateway.inside(|| fw.replace(&dual_state(), Instant::now())).expect("replace");
    assert!(tcp_closed(&g.client, Some(ip(C1_6)), sa(VM6, 22)), "protected IPv6 VM port closed to routed traffic");
    assert!(g.closed_via_gateway(C1_6, PUBLIC), "no DNAT yet");
    assert!(tcp_open(&g.client, Some(ip(C1_6)), sa(VM6, 8080)), "other VM ports untouched");

    g.fw.apply(&open_ops_to("fd88:1::1/128", VM6, PUBLIC, 22, MINUTE)).expect("apply");
    assert!(g.via_gateway(C1_6, PUBLIC), "granted source lands on [vm]:22 via [gateway]:{PUBLIC}");
    assert!(g.closed_via_gateway(C2_6, PUBLIC), "another IPv6 source gets no DNAT");
    assert!(tcp_closed(&g.client, Some(ip(C2_6)), sa(VM6, 22)), "nor a routed path");
    assert!(tcp_open(&g.client, Some(ip(C1_6)), sa(VM6, 22)), "the grant also covers the routed path");
    assert!(g.closed_via_gateway(C1, PUBLIC), "the IPv6 grant opens nothing for IPv4");

    // An IPv4 grant on the same public port, beside the IPv6 one: each family has its own maps.
    g.fw.apply(&open_ops("10.88.1.1/32", PUBLIC, 22, MINUTE)).expect("apply");
    assert!(g.via_gateway(C1, PUBLIC), "IPv4 through the gateway alongside IPv6");
    assert!(g.via_gateway(C1_6, PUBLIC), "IPv6 still open");
    assert!(g.closed_via_gateway(C2, PUBLIC), "another IPv4 source stays out");

    // A range grant: the client's /64, to the cutting port, on another public port.
    g.fw.apply(&open_ops_to("fd88:1::/64", VM6, PUBLIC + 1, 2223, MINUTE)).expect("apply");
    assert!(g.via_gateway(C2_6, PUBLIC + 1), "range DNAT and grant");
    // The whole /64 mapped on PUBLIC to the VM's port 2223 as well: once the range grant is gone,
    // ::1 still gets through only if its exact entry (to port 22) wins over the range entry
    // (longest prefix first).
    g.fw.apply(&[ElemOp::AddDnat {
        key: dnat("fd88:1::/64", PUBLIC),
        target: DnatTarget { addr: ip(VM6), port: 2223 },
        timeout: MINUTE,
    }])
    .expect("apply");
    assert!(g.via_gateway(C2_6, PUBLIC), "::3 lands on [vm]:2223 through the range entry");
    g.fw.apply(&close_ops_to("fd88:1::/64", VM6, PUBLIC + 1, 2223)).expect("apply");
    assert!(g.closed_via_gateway(C2_6, PUBLIC), "::3 lands on [vm]:2223, which has no grant now");
    assert!(g.via_gateway(C1_6, PUBLIC), "the exact DNAT entry wins for ::1");
    g.fw.apply(&[ElemOp::DelDnat { key: dnat("fd88:1::/64", PUBLIC) }]).expect("apply");

    // Revoke: closed again, and the IPv4 grant is untouched.
    g.fw.apply(&close_ops_to("fd88:1::1/128", VM6, PUBLIC, 22)).expect("apply");
    assert!(g.closed_via_gateway(C1_6, PUBLIC), "closed after the delete");
    assert!(g.closed_via_gateway(C2_6, PUBLIC + 1), "closed after the delete");
    assert!(g.via_gateway(C1, PUBLIC), "the IPv4 grant carries on");

    // Expiry: the kernel ends the grant and the DNAT entry.
    g.fw.apply(&open_ops_to("fd88:1::1/128", VM6, PUBLIC, 22, Duration::from_secs(1))).expect("apply");
    let start = Instant::now();
    assert!(g.via_gateway(C1_6, PUBLIC));
    std::thread::sleep(Duration::from_millis(1100).saturating_sub(start.elapsed()));
    assert!(g.closed_via_gateway(C1_6, PUBLIC), "closed by the kernel after 1 s");

    g.gateway.inside(|| g.fw.remove()).expect("remove");
    assert!(tcp_open(&g.client, Some(ip(C2_6)), sa(VM6, 22)), "remove() restores routing");
}

#[test]
fn ipv6_sessions_through_the_gateway_end_with_their_grant_when_the_port_cuts_them() {
    require_kernel!();
    let mut g = gateway();
    let fw = &mut g.fw;
    g.gateway.inside(|| fw.replace(&dual_state(), Instant::now())).expect("replace");
    let mut ops = open_ops_to("fd88:1::1/128", VM6, PUBLIC, 22, MINUTE);
    ops.extend(open_ops_to("fd88:1::1/128", VM6, PUBLIC + 1, 2223, MINUTE));
    g.fw.apply(&ops).expect("apply");
    let mut kept = tcp_connect(&g.client, Some(ip(C1_6)), sa(GW6, PUBLIC), OPEN_WAIT).expect("connect");
    let mut cut = tcp_connect(&g.client, Some(ip(C1_6)), sa(GW6, PUBLIC + 1), OPEN_WAIT).expect("connect");
    assert!(echoes(&mut kept, OPEN_WAIT) && echoes(&mut cut, OPEN_WAIT));
    let mut close = close_ops_to("fd88:1::1/128", VM6, PUBLIC, 22);
    close.extend(close_ops_to("fd88:1::1/128", VM6, PUBLIC + 1, 2223));
    g.fw.apply(&close).expect("apply");
    assert!(!echoes(&mut cut, Duration::from_millis(500)), "the session to the cutting port stops");
    assert!(echoes(&mut kept, OPEN_WAIT), "the other session carries on");
}

#[test]
fn mixed_family_entries_are_refused_before_anything_changes() {
    require_kernel!();
    let mut g = gateway();
    let mut d = state();
    // An IPv6 source towards the IPv4 VM: no packet is both, and there is no NAT64.
    d.grants.insert(grant("fd88:1::1/128", 22), Instant::now() + MINUTE);
    let fw = &mut g.fw;
    let err = g.gateway.inside(|| fw.replace(&d, Instant::now())).expect_err("mixed families");
    assert!(matches!(err, NftError::Unsupported(_)), "{err}");
    assert!(err.to_string().contains("no NAT64"), "{err}");
    assert!(!g.gateway.has_table(), "nothing was changed");

    let fw = &mut g.fw;
    g.gateway.inside(|| fw.replace(&dual_state(), Instant::now())).expect("replace");
    let to6 = ElemOp::AddDnat {
        key: dnat("10.88.1.1/32", PUBLIC),
        target: DnatTarget { addr: ip(VM6), port: 22 },
        timeout: MINUTE,
    };
    let mut ops = open_ops("10.88.1.1/32", PUBLIC + 1, 22, MINUTE);
    ops.push(to6);
    let err = g.fw.apply(&ops).expect_err("an IPv4 source mapped to an IPv6 VM");
    assert!(matches!(err, NftError::Unsupported(_)), "{err}");
    assert!(err.to_string().contains("DNAT from IPv4 source 10.88.1.1/32 to IPv6 address fd88:2::2"), "{err}");
    assert!(g.gateway.elements("gw_allow4").is_empty(), "nothing of the batch was applied");
    assert!(g.closed_via_gateway(C1, PUBLIC + 1));
}
