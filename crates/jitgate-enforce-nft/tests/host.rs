//! Host mode, with real netlink and real connections between two namespaces: a client
//! (10.77.0.1 and 10.77.0.3, fd77::1 and fd77::3) and a server (10.77.0.2, fd77::2) that runs
//! the firewall and echo servers. Skipped, with the reason printed, without root or nftables.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may panic on a failed expectation.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::{
    addr, echoes, eventually, netns, tcp_closed, tcp_connect, tcp_open, udp_echoes, veth, Echo, Netns, TestNs,
    OPEN_WAIT,
};
use jitgate_enforce::{Desired, ElemOp, GrantKey, Mode, Protected, L4};
use jitgate_enforce_nft::{NftError, NftFirewall};

const C1: &str = "10.77.0.1";
const C2: &str = "10.77.0.3";
const SRV: &str = "10.77.0.2";
const C1_6: &str = "fd77::1";
const SRV_6: &str = "fd77::2";

struct Host {
    client: Netns,
    server: Netns,
    fw: NftFirewall,
    _echo: Echo,
}

/// Two namespaces joined by a veth pair, echo servers (TCP and UDP) on `ports` of the server.
fn host(ports: &[u16]) -> Host {
    let client = netns("c");
    let server = netns("s");
    let (ic, is) = veth(&client, &server);
    for a in ["10.77.0.1/24", "10.77.0.3/24", "fd77::1/64", "fd77::3/64"] {
        addr(&client, &ic, a);
    }
    for a in ["10.77.0.2/24", "fd77::2/64"] {
        addr(&server, &is, a);
    }
    let addrs: Vec<SocketAddr> = ports.iter().flat_map(|p| [sa(SRV, *p), sa(SRV_6, *p)]).collect();
    let echo = Echo::start(&server, &addrs);
    let fw = server.firewall();
    Host { client, server, fw, _echo: echo }
}

impl Host {
    fn replace(&mut self, d: &Desired) {
        let fw = &mut self.fw;
        self.server.inside(|| fw.replace(d, Instant::now())).expect("replace");
    }

    fn apply(&mut self, ops: &[ElemOp]) {
        self.fw.apply(ops).expect("apply");
    }

    fn open(&self, src: &str, port: u16) -> bool {
        let dst = if src.contains(':') { SRV_6 } else { SRV };
        tcp_open(&self.client, Some(ip(src)), sa(dst, port))
    }

    fn closed(&self, src: &str, port: u16) -> bool {
        let dst = if src.contains(':') { SRV_6 } else { SRV };
        tcp_closed(&self.client, Some(ip(src)), sa(dst, port))
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

fn sa(a: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip(a), port)
}

fn protected(ports: &[(L4, u16, bool)]) -> Desired {
    let mut d = Desired::empty(Mode::Host);
    for &(proto, port, cut_sessions) in ports {
        d.protected.insert(Protected { dest: None, proto, port, cut_sessions });
    }
    d
}

fn key(source: &str, proto: L4, port: u16) -> GrantKey {
    GrantKey { source: source.parse().expect("net"), dest: None, proto, port }
}

fn add(source: &str, proto: L4, port: u16, timeout: Duration) -> ElemOp {
    ElemOp::AddGrant { key: key(source, proto, port), timeout }
}

fn del(source: &str, proto: L4, port: u16) -> ElemOp {
    ElemOp::DelGrant { key: key(source, proto, port) }
}

const MINUTE: Duration = Duration::from_secs(60);

#[test]
fn a_grant_opens_the_port_for_its_source_only_until_it_ends() {
    require_kernel!();
    let mut h = host(&[2222, 2223, 8080]);
    assert!(h.open(C1, 2222), "open before the table exists");

    h.replace(&protected(&[(L4::Tcp, 2222, false), (L4::Tcp, 2223, false)]));
    assert!(h.closed(C1, 2222) && h.closed(C2, 2222), "protected port closed for everyone");
    assert!(h.closed(C1_6, 2222), "also over IPv6");
    assert!(h.open(C1, 8080), "other ports untouched");

    h.apply(&[add("10.77.0.1/32", L4::Tcp, 2222, MINUTE)]);
    assert!(h.open(C1, 2222), "open for the granted source");
    assert!(h.closed(C2, 2222), "still closed for another source");
    assert!(h.closed(C1, 2223), "the other protected port stays closed");

    h.apply(&[del("10.77.0.1/32", L4::Tcp, 2222)]);
    assert!(h.closed(C1, 2222), "a delete closes at once");

    let start = Instant::now();
    h.apply(&[add("10.77.0.1/32", L4::Tcp, 2222, Duration::from_secs(1))]);
    assert!(h.open(C1, 2222), "open again with a 1 s timeout");
    let elapsed_open = start.elapsed();
    assert!(elapsed_open < Duration::from_millis(900), "the open check took {elapsed_open:?}");
    std::thread::sleep(Duration::from_millis(1100).saturating_sub(start.elapsed()));
    assert!(h.closed(C1, 2222), "closed by the kernel after the timeout, with nobody deleting it");

    // Deleting an element the kernel has expired is not an error (DESTROYSETELEM).
    h.apply(&[del("10.77.0.1/32", L4::Tcp, 2222)]);

    h.server.inside(|| h.fw.remove()).expect("remove");
    assert!(!h.server.has_table());
    assert!(h.open(C1, 2222) && h.open(C2, 2223), "remove() restores everything");
    h.fw.remove().expect("removing an absent table is fine");
}

#[test]
fn range_grants_may_overlap_and_each_counts_on_its_own() {
    require_kernel!();
    let mut h = host(&[2222]);
    h.replace(&protected(&[(L4::Tcp, 2222, false)]));
    // Three nested grants for the same port in one batch: an interval set would refuse this.
    h.apply(&[
        add("10.77.0.0/24", L4::Tcp, 2222, MINUTE),
        add("10.77.0.0/16", L4::Tcp, 2222, MINUTE),
        add("10.77.0.1/32", L4::Tcp, 2222, MINUTE),
    ]);
    assert!(h.open(C1, 2222) && h.open(C2, 2222));
    h.apply(&[del("10.77.0.0/24", L4::Tcp, 2222)]);
    assert!(h.open(C2, 2222), "the /16 still covers .3");
    h.apply(&[del("10.77.0.0/16", L4::Tcp, 2222)]);
    assert!(h.closed(C2, 2222), "no range left for .3");
    assert!(h.open(C1, 2222), "the exact grant still holds for .1");
    h.apply(&[del("10.77.0.1/32", L4::Tcp, 2222), add("10.77.0.2/31", L4::Tcp, 2222, MINUTE)]);
    assert!(h.open(C2, 2222), "a /31 with host bits set (10.77.0.2/31 holds .3)");
    assert!(h.closed(C1, 2222), ".1 is outside 10.77.0.2/31");
    h.apply(&[add("0.0.0.0/0", L4::Tcp, 2222, MINUTE)]);
    assert!(h.open(C1, 2222), "'*' is 0.0.0.0/0");
    assert!(h.closed(C1_6, 2222), "0.0.0.0/0 does not open IPv6");
}

#[test]
fn udp_ports_are_protected_and_granted() {
    require_kernel!();
    let mut h = host(&[5353]);
    let dst = sa(SRV, 5353);
    assert!(udp_echoes(&h.client, dst, OPEN_WAIT, 1));
    h.replace(&protected(&[(L4::Udp, 5353, false)]));
    assert!(!udp_echoes(&h.client, dst, Duration::from_millis(300), 2), "closed");
    assert!(h.open(C1, 5353), "TCP on the same port number is not protected");
    h.apply(&[add("10.77.0.0/24", L4::Udp, 5353, MINUTE)]);
    assert!(udp_echoes(&h.client, dst, OPEN_WAIT, 3), "open after the grant");
    h.apply(&[del("10.77.0.0/24", L4::Udp, 5353)]);
    // A fresh socket: the old flow's conntrack entry is established, but the port keeps
    // established sessions only when it does not cut them; a new flow must be refused.
    assert!(!udp_echoes(&h.client, dst, Duration::from_millis(300), 2), "closed again");
}

#[test]
fn ipv6_sources_are_granted_exactly_and_by_range() {
    require_kernel!();
    let mut h = host(&[2222]);
    h.replace(&protected(&[(L4::Tcp, 2222, false)]));
    assert!(h.closed(C1_6, 2222));
    h.apply(&[add("fd77::1/128", L4::Tcp, 2222, MINUTE)]);
    assert!(h.open(C1_6, 2222), "exact IPv6 grant");
    assert!(h.closed("fd77::3", 2222), "another IPv6 source");
    assert!(h.closed(C1, 2222), "the same client over IPv4");
    h.apply(&[del("fd77::1/128", L4::Tcp, 2222), add("fd77::/64", L4::Tcp, 2222, MINUTE)]);
    assert!(h.open(C1_6, 2222) && h.open("fd77::3", 2222), "IPv6 range grant");
    h.apply(&[del("fd77::/64", L4::Tcp, 2222), add("::/0", L4::Tcp, 2222, MINUTE)]);
    assert!(h.open("fd77::3", 2222), "::/0");
}

#[test]
fn sessions_end_with_their_grant_only_on_ports_that_cut_them() {
    require_kernel!();
    let mut h = host(&[2222, 2223]);
    h.replace(&protected(&[(L4::Tcp, 2222, true), (L4::Tcp, 2223, false)]));
    h.apply(&[add("10.77.0.1/32", L4::Tcp, 2222, MINUTE), add("10.77.0.1/32", L4::Tcp, 2223, MINUTE)]);
    let mut cut = tcp_connect(&h.client, Some(ip(C1)), sa(SRV, 2222), OPEN_WAIT).expect("connect 2222");
    let mut kept = tcp_connect(&h.client, Some(ip(C1)), sa(SRV, 2223), OPEN_WAIT).expect("connect 2223");
    assert!(echoes(&mut cut, OPEN_WAIT) && echoes(&mut kept, OPEN_WAIT));

    h.apply(&[del("10.77.0.1/32", L4::Tcp, 2222), del("10.77.0.1/32", L4::Tcp, 2223)]);
    assert!(!echoes(&mut cut, Duration::from_millis(500)), "the session on the cutting port stops");
    assert!(echoes(&mut kept, OPEN_WAIT), "the session on the other port carries on");
    assert!(h.closed(C1, 2223), "but no new session on it");
}

#[test]
fn replace_restores_elements_with_their_remaining_time() {
    require_kernel!();
    let mut h = host(&[2222]);
    let now = Instant::now();
    let mut d = protected(&[(L4::Tcp, 2222, false)]);
    d.grants.insert(key("10.77.0.1/32", L4::Tcp, 2222), now + Duration::from_millis(1500));
    d.grants.insert(key("10.77.0.3/32", L4::Tcp, 2222), now); // over: left out
    h.replace(&d);
    assert!(h.open(C1, 2222));
    assert!(h.closed(C2, 2222));
    let elems = h.server.elements("allow4");
    assert_eq!(elems.len(), 1, "{elems:?}");
    let timeout = elems[0]["elem"]["timeout"].as_u64().expect("timeout");
    assert!((1..=1).contains(&timeout), "nft -j shows whole seconds here: {elems:?}");
    assert!(eventually(Duration::from_secs(3), || h.closed(C1, 2222)), "closes by itself");
    assert!(now.elapsed() >= Duration::from_millis(1400), "not much before its deadline");

    // Replacing again (e.g. after a restart) keeps the port closed and works on a live table.
    h.replace(&protected(&[(L4::Tcp, 2222, false)]));
    assert!(h.closed(C1, 2222));
}

#[test]
fn elements_read_back_as_nft_shows_them() {
    require_kernel!();
    let mut h = host(&[]);
    h.replace(&protected(&[(L4::Tcp, 22, false)]));
    h.apply(&[
        add("10.1.2.3/32", L4::Tcp, 22, Duration::from_secs(90)),
        add("10.1.2.77/24", L4::Udp, 53, Duration::from_secs(3600)),
        add("2001:db8::1/128", L4::Tcp, 443, Duration::from_secs(90)),
        add("2001:db8:1::/48", L4::Tcp, 22, Duration::from_secs(90)),
    ]);
    let one = |set: &str| {
        let e = h.server.elements(set);
        assert_eq!(e.len(), 1, "{set}: {e:?}");
        e[0]["elem"].clone()
    };
    let e = one("allow4");
    assert_eq!(e["val"]["concat"], serde_json::json!(["10.1.2.3", "tcp", 22]));
    assert_eq!(e["timeout"], 90);
    let e = one("allow4net_24");
    assert_eq!(e["val"]["concat"], serde_json::json!(["10.1.2.0", "udp", 53]));
    assert_eq!(e["timeout"], 3600);
    assert_eq!(one("allow6")["val"]["concat"], serde_json::json!(["2001:db8::1", "tcp", 443]));
    assert_eq!(one("allow6net_48")["val"]["concat"], serde_json::json!(["2001:db8:1::", "tcp", 22]));
}

#[test]
fn a_batch_is_all_or_nothing_and_the_error_names_the_operation() {
    require_kernel!();
    let mut h = host(&[]);
    // Before the table exists: the kernel knows no such set.
    let err = h.fw.apply(&[add("10.0.0.1/32", L4::Tcp, 22, MINUTE)]).expect_err("no table");
    assert!(matches!(err, NftError::Kernel { errno: 2, .. }), "{err}");
    assert!(err.to_string().contains("set allow4"), "{err}");
    eprintln!("without the table: {err}");

    h.replace(&protected(&[(L4::Tcp, 22, false)]));
    // A timeout the kernel refuses (ERANGE) in the middle of good elements.
    let bad = ElemOp::AddGrant { key: key("10.0.0.2/32", L4::Tcp, 22), timeout: Duration::from_secs(u64::MAX / 1000) };
    let err =
        h.fw.apply(&[add("10.0.0.1/32", L4::Tcp, 22, MINUTE), bad, add("10.0.0.0/24", L4::Tcp, 22, MINUTE)])
            .expect_err("refused");
    let text = err.to_string();
    eprintln!("a refused element: {text}");
    assert!(text.contains("10.0.0.2/32"), "names the refused element: {text}");
    assert!(h.server.elements("allow4").is_empty(), "nothing of the batch was applied");
    assert!(h.server.elements("allow4net_24").is_empty(), "nothing of the batch was applied");
    // The socket is still in step: the next batch works.
    h.apply(&[add("10.0.0.1/32", L4::Tcp, 22, MINUTE)]);
    assert_eq!(h.server.elements("allow4").len(), 1);

    // A gateway operation that mixes the families: refused before anything is sent.
    let mixed =
        GrantKey { source: "fd00::1/128".parse().expect("net"), dest: Some(ip("10.0.0.9")), proto: L4::Tcp, port: 22 };
    let err = h.fw.apply(&[ElemOp::AddGrant { key: mixed, timeout: MINUTE }]).expect_err("unsupported");
    assert!(matches!(err, NftError::Unsupported(_)), "{err}");
    // A gateway operation on a host's table: the kernel has no such set, and the error names it.
    let v6gw = GrantKey { dest: Some(ip("fd00::2")), ..mixed };
    let err = h.fw.apply(&[ElemOp::AddGrant { key: v6gw, timeout: MINUTE }]).expect_err("no gateway sets on a host");
    assert!(matches!(err, NftError::Kernel { .. }), "{err}");
    assert!(err.to_string().contains("gw_allow6"), "{err}");
    assert_eq!(h.server.elements("allow4").len(), 1, "the earlier element is untouched");
}

#[test]
fn usable_says_yes_here() {
    require_kernel!();
    let ns = netns("u");
    ns.inside(NftFirewall::usable).expect("usable");
    assert!(!ns.has_table(), "the dry run leaves nothing behind");
}

/// Timing of the hot path; prints the numbers (run with --nocapture to see them).
#[test]
fn apply_timing_for_one_element_and_ten_thousand() {
    require_kernel!();
    let mut h = host(&[]);
    h.replace(&protected(&[(L4::Tcp, 22, false)]));
    let mut one = Vec::new();
    for i in 0..200u32 {
        let a = std::net::Ipv4Addr::from(0x0a00_0000 + i);
        let op = add(&format!("{a}/32"), L4::Tcp, 22, MINUTE);
        let t = Instant::now();
        h.apply(&[op]);
        one.push(t.elapsed());
    }
    one.sort();
    let ops: Vec<ElemOp> = (0..10_000u32)
        .map(|i| add(&format!("{}/32", std::net::Ipv4Addr::from(0x0b00_0000 + i)), L4::Tcp, 22, MINUTE))
        .collect();
    let t = Instant::now();
    h.apply(&ops);
    let bulk = t.elapsed();
    let dels: Vec<ElemOp> = ops
        .iter()
        .map(|o| match o {
            ElemOp::AddGrant { key, .. } => ElemOp::DelGrant { key: *key },
            other => *other,
        })
        .collect();
    let t = Instant::now();
    h.apply(&dels);
    let bulk_del = t.elapsed();
    let ranges: Vec<ElemOp> = (0..10_000u32)
        .map(|i| add(&format!("{}/24", std::net::Ipv4Addr::from(0x0c00_0000 + (i << 8))), L4::Tcp, 22, MINUTE))
        .collect();
    let t = Instant::now();
    h.apply(&ranges);
    let bulk_ranges = t.elapsed();
    let mut d = protected(&[(L4::Tcp, 22, false)]);
    let now = Instant::now();
    for i in 0..10_000u32 {
        d.grants.insert(key(&format!("{}/32", std::net::Ipv4Addr::from(0x0d00_0000 + i)), L4::Tcp, 22), now + MINUTE);
    }
    let t = Instant::now();
    h.replace(&d);
    let replace = t.elapsed();
    println!(
        "apply 1 element: p50 {:?}, p99 {:?}; apply 10,000 exact adds {bulk:?}, 10,000 deletes {bulk_del:?}, \
         10,000 /24 adds {bulk_ranges:?}; replace with 10,000 elements {replace:?}",
        one[one.len() / 2],
        one[one.len() * 99 / 100],
    );
    assert_eq!(h.server.elements("allow4").len(), 10_000);
    assert_eq!(h.server.elements("allow4net_24").len(), 0, "replace started afresh");
}

#[test]
fn the_table_reads_back_with_its_sets_and_element_counts() {
    require_kernel!();
    let mut h = host(&[2222]);
    assert_eq!(h.fw.inspect().expect("inspect"), None, "no table yet");
    let before = h.fw.tables().expect("tables");
    assert!(!before.iter().any(|t| t.name == jitgate_enforce_nft::TABLE), "{before:?}");

    h.replace(&protected(&[(L4::Tcp, 2222, false), (L4::Udp, 2222, true)]));
    h.apply(&[
        add("10.77.0.1/32", L4::Tcp, 2222, MINUTE),
        add("10.77.0.3/32", L4::Tcp, 2222, MINUTE),
        add("10.77.0.0/24", L4::Udp, 2222, MINUTE),
        add("fd77::1/128", L4::Tcp, 2222, MINUTE),
    ]);
    let tables = h.fw.tables().expect("tables");
    assert!(tables.iter().any(|t| t.describe() == "inet jitgate"), "{tables:?}");
    let c = h.fw.inspect().expect("inspect").expect("our table");
    let count = |set: &str| c.sets.iter().find(|(s, _)| s == set).map(|(_, n)| *n);
    assert_eq!(count("protected"), Some(2));
    assert_eq!(count("cut"), Some(1));
    assert_eq!(count("allow4"), Some(2));
    assert_eq!(count("allow4net_24"), Some(1));
    assert_eq!(count("allow6"), Some(1));
    assert_eq!((c.protected(), c.grants(), c.dnat(), c.elements()), (3, 4, 0, 7));

    // An element the kernel expired is no longer counted.
    h.apply(&[add("10.77.0.9/32", L4::Tcp, 2222, Duration::from_millis(300))]);
    assert_eq!(h.fw.inspect().expect("inspect").expect("table").grants(), 5);
    std::thread::sleep(Duration::from_millis(350));
    assert_eq!(h.fw.inspect().expect("inspect").expect("table").grants(), 4);

    h.server.inside(|| h.fw.remove()).expect("remove");
    assert_eq!(h.fw.inspect().expect("inspect"), None, "gone");
}
