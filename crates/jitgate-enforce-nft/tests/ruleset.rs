//! Snapshots of the generated `nft -f` scripts (no root needed), and, where the kernel tests
//! can run, a dry run (`nft -c`) of each of them in a fresh namespace.
//!
//! `UPDATE_SNAPSHOTS=1 cargo test -p jitgate-enforce-nft --test ruleset` rewrites the files in
//! `tests/snapshots/`; review the diff.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may panic on a failed expectation.

mod common;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use jitgate_enforce::{Desired, DnatKey, DnatTarget, GrantKey, Mode, Protected, L4};
use jitgate_enforce_nft::ruleset;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

fn grant(source: &str, dest: Option<&str>, proto: L4, port: u16) -> GrantKey {
    GrantKey { source: source.parse().expect("net"), dest: dest.map(ip), proto, port }
}

fn host_state(now: Instant) -> Desired {
    let mut d = Desired::empty(Mode::Host);
    d.protected.insert(Protected { dest: None, proto: L4::Tcp, port: 22, cut_sessions: true });
    d.protected.insert(Protected { dest: None, proto: L4::Udp, port: 53, cut_sessions: false });
    d.protected.insert(Protected { dest: None, proto: L4::Tcp, port: 3389, cut_sessions: false });
    let ms = Duration::from_millis;
    d.grants.insert(grant("198.51.100.7/32", None, L4::Tcp, 22), now + ms(1500));
    d.grants.insert(grant("198.51.100.9/32", None, L4::Tcp, 22), now + ms(3_600_000));
    d.grants.insert(grant("198.51.100.99/24", None, L4::Udp, 53), now + ms(60_000));
    d.grants.insert(grant("198.51.0.0/16", None, L4::Udp, 53), now + ms(60_000));
    d.grants.insert(grant("0.0.0.0/0", None, L4::Tcp, 3389), now + ms(10_800_000));
    d.grants.insert(grant("2001:db8::7/128", None, L4::Tcp, 22), now + ms(90_000));
    d.grants.insert(grant("2001:db8:1::/48", None, L4::Tcp, 22), now + ms(90_000));
    // Over by `now`, or less than a millisecond left: left out.
    d.grants.insert(grant("198.51.100.8/32", None, L4::Tcp, 22), now);
    d.grants.insert(grant("198.51.100.10/32", None, L4::Tcp, 22), now + Duration::from_micros(900));
    d
}

fn gateway_state(now: Instant) -> Desired {
    let mut d = Desired::empty(Mode::Gateway);
    let vm = Some("10.9.2.2");
    d.protected.insert(Protected { dest: vm.map(ip), proto: L4::Tcp, port: 22, cut_sessions: false });
    d.protected.insert(Protected { dest: vm.map(ip), proto: L4::Tcp, port: 3389, cut_sessions: true });
    let end = now + Duration::from_secs(600);
    d.grants.insert(grant("203.0.113.5/32", vm, L4::Tcp, 22), end);
    d.grants.insert(grant("203.0.113.0/24", vm, L4::Tcp, 3389), end);
    let target = |port| DnatTarget { addr: ip("10.9.2.2"), port };
    let key = |s: &str, public_port| DnatKey { source: s.parse().expect("net"), proto: L4::Tcp, public_port };
    d.dnat.insert(key("203.0.113.5/32", 50022), (target(22), end));
    d.dnat.insert(key("203.0.113.0/24", 53389), (target(3389), end));
    d
}

/// The IPv4 gateway state with an IPv6 VM beside it: exact and range grants, DNAT entries.
fn dual_stack_gateway_state(now: Instant) -> Desired {
    let mut d = gateway_state(now);
    let vm = Some("fd00:9:2::2");
    d.protected.insert(Protected { dest: vm.map(ip), proto: L4::Tcp, port: 22, cut_sessions: false });
    d.protected.insert(Protected { dest: vm.map(ip), proto: L4::Udp, port: 53, cut_sessions: true });
    let end = now + Duration::from_secs(600);
    d.grants.insert(grant("2001:db8:5::7/128", vm, L4::Tcp, 22), end);
    d.grants.insert(grant("2001:db8:5::/48", vm, L4::Udp, 53), end);
    d.grants.insert(grant("::/0", vm, L4::Tcp, 22), now + Duration::from_secs(60));
    let target = |port| DnatTarget { addr: ip("fd00:9:2::2"), port };
    let key = |s: &str, proto, public_port| DnatKey { source: s.parse().expect("net"), proto, public_port };
    d.dnat.insert(key("2001:db8:5::7/128", L4::Tcp, 50122), (target(22), end));
    d.dnat.insert(key("2001:db8:5::/48", L4::Udp, 50153), (target(53), end));
    d
}

fn snapshot(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots").join(name);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(path.parent().expect("dir")).expect("mkdir");
        std::fs::write(&path, actual).expect("write snapshot");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    if expected != actual {
        let first = expected.lines().zip(actual.lines()).position(|(e, a)| e != a);
        panic!(
            "{} differs from the generated ruleset (first differing line: {:?}); \
             rerun with UPDATE_SNAPSHOTS=1 and review the diff",
            path.display(),
            first.map(|i| i + 1)
        );
    }
}

#[test]
fn host_ruleset_snapshot() {
    let now = Instant::now();
    snapshot("host.nft", &ruleset(&host_state(now), now));
}

#[test]
fn gateway_ruleset_snapshot() {
    let now = Instant::now();
    snapshot("gateway.nft", &ruleset(&gateway_state(now), now));
}

#[test]
fn dual_stack_gateway_ruleset_snapshot() {
    let now = Instant::now();
    snapshot("gateway6.nft", &ruleset(&dual_stack_gateway_state(now), now));
}

#[test]
fn the_ipv6_gateway_part_adds_to_the_ipv4_one_and_changes_none_of_it() {
    let now = Instant::now();
    let v4 = ruleset(&gateway_state(now), now);
    let dual = ruleset(&dual_stack_gateway_state(now), now);
    // Every line of the IPv4 state's table outside the IPv6 gateway part is in the dual-stack
    // one, in the same order.
    let v6_part = ["gw_protected6", "gw_cut6", "gw_allow6", "dnat6", "gw_forward6", "gw_dnat6"];
    let mut lines = dual.lines();
    for line in v4.lines().filter(|l| !v6_part.iter().any(|n| l.contains(n))) {
        assert!(lines.any(|l| l == line), "{line:?} is missing or out of order");
    }
    assert!(dual.contains("\t\tmeta nfproto ipv4 jump gw_forward4\n\t\tmeta nfproto ipv6 jump gw_forward6\n"));
    assert!(dual.contains("\t\t\t2001:db8:5:: . fd00:9:2::2 . udp . 53 timeout 600000ms\n"), "{dual}");
    assert!(dual.contains("\t\t\t2001:db8:5::7 . tcp . 50122 timeout 600000ms : fd00:9:2::2 . 22\n"), "{dual}");
    assert!(dual.contains("\t\t\t:: . fd00:9:2::2 . tcp . 22 timeout 60000ms\n"), "::/0 is gw_allow6net_0: {dual}");
    assert_eq!(dual.matches("@gw_allow6net_").count(), 128, "one lookup per IPv6 prefix length");
    assert_eq!(dual.matches("map @dnat6net_").count(), 128);
    let first = dual.find("@dnat6net_127").expect("dnat6net_127");
    assert!(first < dual.find("@dnat6net_0\n").expect("dnat6net_0"), "longest prefix first");
    // The IPv6 part is there in every gateway table, so that an IPv6 grant is an element batch.
    let empty = ruleset(&Desired::empty(Mode::Gateway), now);
    for name in
        ["set gw_protected6 ", "set gw_cut6 ", "set gw_allow6 ", "map dnat6 ", "chain gw_forward6 ", "chain gw_dnat6 "]
    {
        assert!(empty.contains(name), "{name}");
    }
}

#[test]
fn an_empty_state_has_the_structure_and_no_elements() {
    let now = Instant::now();
    let text = ruleset(&Desired::empty(Mode::Host), now);
    assert!(!text.contains("elements"), "{text}");
    assert!(text.contains("\tset protected { type inet_proto . inet_service; }\n"), "{text}");
    assert!(text.contains("\tset allow4net_0 { type ipv4_addr . inet_proto . inet_service; flags timeout; }\n"));
    assert!(text.contains("policy accept;"));
    assert!(!text.contains("forward"), "no gateway part in host mode");
    assert!(ruleset(&Desired::empty(Mode::Gateway), now).contains("chain forward"));
}

#[test]
fn timeouts_are_what_remains_at_now() {
    let now = Instant::now();
    let text = ruleset(&host_state(now), now);
    assert!(text.contains("\t\t\t198.51.100.7 . tcp . 22 timeout 1500ms,\n"), "{text}");
    assert!(!text.contains("198.51.100.8 "), "an ended grant is left out");
    assert!(!text.contains("198.51.100.10 "), "less than 1 ms left: left out");
    let later = now + Duration::from_millis(1000);
    assert!(ruleset(&host_state(now), later).contains("198.51.100.7 . tcp . 22 timeout 500ms"));
}

#[test]
fn entries_that_are_one_element_are_written_once() {
    let now = Instant::now();
    let mut d = Desired::empty(Mode::Host);
    d.protected.insert(Protected { dest: None, proto: L4::Tcp, port: 22, cut_sessions: true });
    d.protected.insert(Protected { dest: None, proto: L4::Tcp, port: 22, cut_sessions: false });
    d.grants.insert(grant("10.0.0.5/24", None, L4::Tcp, 22), now + Duration::from_secs(10));
    d.grants.insert(grant("10.0.0.7/24", None, L4::Tcp, 22), now + Duration::from_secs(20));
    let text = ruleset(&d, now);
    assert_eq!(text.matches("\t\t\ttcp . 22\n").count(), 2, "once in protected, once in cut: {text}");
    assert_eq!(text.matches("10.0.0.0 . tcp . 22").count(), 1, "{text}");
    assert!(text.contains("10.0.0.0 . tcp . 22 timeout 20000ms\n"), "the longer timeout wins: {text}");
}

#[test]
fn unsupported_entries_are_left_out_as_comments() {
    let now = Instant::now();
    let mut d = gateway_state(now);
    d.grants.insert(grant("2001:db8::1/128", Some("10.9.2.2"), L4::Tcp, 22), now + Duration::from_secs(60));
    let text = ruleset(&d, now);
    assert!(text.starts_with("# jitgate: inet jitgate, gateway mode"), "{text}");
    assert!(text.contains(
        "# left out (not supported): grant from IPv6 source 2001:db8::1/128 to IPv4 address 10.9.2.2: \
         a gateway forwards each family to its own (no NAT64)\n"
    ));
    assert!(!text.contains("2001:db8::1 . 10.9.2.2"), "{text}");
}

/// Lifetimes past what nft writes in milliseconds (eight digits: 27.7 hours) and past the
/// kernel's limit (2^64 ns, 584 years).
fn long_state(now: Instant) -> Desired {
    let mut d = host_state(now);
    let day = Duration::from_secs(86_400);
    d.grants.insert(grant("203.0.113.1/32", None, L4::Tcp, 22), now + day * 2 + Duration::from_millis(7));
    d.grants.insert(grant("203.0.113.2/32", None, L4::Tcp, 22), now + day * 365 * 1000);
    d
}

#[test]
fn long_lifetimes_are_written_as_nft_reads_them_and_cut_to_the_longest_timeout() {
    let now = Instant::now();
    let text = ruleset(&long_state(now), now);
    assert!(text.contains("203.0.113.1 . tcp . 22 timeout 172800s7ms"), "{text}");
    let year = jitgate_enforce_nft::MAX_TIMEOUT.as_secs();
    assert!(text.contains(&format!("203.0.113.2 . tcp . 22 timeout {year}s")), "{text}");
    assert!(text.contains("timeout 10800000ms"), "shorter ones stay in milliseconds: {text}");
}

#[test]
fn the_scripts_pass_nft_check() {
    require_kernel!();
    let now = Instant::now();
    let ns = common::netns("r");
    for (name, d) in [
        ("empty host", Desired::empty(Mode::Host)),
        ("empty gateway", Desired::empty(Mode::Gateway)),
        ("host", host_state(now)),
        ("gateway", gateway_state(now)),
        ("dual-stack gateway", dual_stack_gateway_state(now)),
        ("long lifetimes", long_state(now)),
    ] {
        let script = ruleset(&d, now);
        let path = std::env::temp_dir().join(format!("jg{}r.nft", jitgate_netns::unique()));
        std::fs::write(&path, &script).expect("write");
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &ns.name, "nft", "-c", "-f"])
            .arg(&path)
            .output()
            .expect("nft");
        let _ = std::fs::remove_file(&path);
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
    }
}
