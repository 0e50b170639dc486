//! The fake firewall keeps the kernel's contract that agent tests rely on: DNAT mappings time out
//! like grants, a refused change changes nothing and only as many changes fail as asked; and the
//! small facts of the model that the nftables encoder builds on.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may panic on a failed expectation.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jitgate_enforce::fake::FakeFirewall;
use jitgate_enforce::{Desired, DnatKey, DnatTarget, ElemOp, Firewall, GrantKey, Mode, Protected, L4};

/// A clock that stands still until the test moves it.
#[derive(Clone)]
struct TestClock(Arc<Mutex<Instant>>);

impl TestClock {
    fn new() -> Self {
        TestClock(Arc::new(Mutex::new(Instant::now())))
    }
    fn now(&self) -> Instant {
        *self.0.lock().unwrap()
    }
    fn advance(&self, by: Duration) {
        *self.0.lock().unwrap() += by;
    }
    fn firewall(&self) -> FakeFirewall {
        let clock = self.clone();
        FakeFirewall::new(move || clock.now())
    }
}

fn dnat_key(src: &str) -> DnatKey {
    DnatKey { source: src.parse().unwrap(), proto: L4::Tcp, public_port: 2201 }
}

fn target() -> DnatTarget {
    DnatTarget { addr: "10.1.0.5".parse().unwrap(), port: 22 }
}

fn gateway(dnat: &[(DnatKey, Instant)]) -> Desired {
    let mut d = Desired::empty(Mode::Gateway);
    d.protected.insert(Protected { dest: Some(target().addr), proto: L4::Tcp, port: 22, cut_sessions: false });
    d.dnat.extend(dnat.iter().map(|(k, end)| (*k, (target(), *end))));
    d
}

fn live_dnat(fw: &FakeFirewall) -> Vec<(DnatKey, Instant)> {
    let table = fw.handle().table().expect("a table");
    table.dnat.iter().map(|(k, (_, end))| (*k, *end)).collect()
}

#[test]
fn a_replaced_dnat_mapping_lasts_exactly_its_remaining_time() {
    let clock = TestClock::new();
    let mut fw = clock.firewall();
    let now = clock.now();
    let a = dnat_key("192.0.2.1/32");
    fw.replace(&gateway(&[(a, now + Duration::from_secs(30))]), now).expect("replace");
    assert_eq!(live_dnat(&fw), vec![(a, now + Duration::from_secs(30))], "ends 30 s after the kernel's now");
    clock.advance(Duration::from_secs(30) - Duration::from_nanos(1));
    assert_eq!(live_dnat(&fw).len(), 1, "alive until its end");
    clock.advance(Duration::from_nanos(1));
    assert!(live_dnat(&fw).is_empty(), "gone at its end");
}

#[test]
fn a_batched_dnat_mapping_gets_its_timeout_from_the_kernels_now() {
    let clock = TestClock::new();
    let mut fw = clock.firewall();
    fw.replace(&gateway(&[]), clock.now()).expect("replace");
    clock.advance(Duration::from_secs(100));
    let a = dnat_key("192.0.2.1/32");
    fw.apply(&[ElemOp::AddDnat { key: a, target: target(), timeout: Duration::from_secs(10) }]).expect("batch");
    assert_eq!(live_dnat(&fw), vec![(a, clock.now() + Duration::from_secs(10))]);
    clock.advance(Duration::from_secs(10));
    assert!(live_dnat(&fw).is_empty(), "gone after its timeout");
}

#[test]
fn only_as_many_replacements_fail_as_asked_and_a_failure_changes_nothing() {
    let clock = TestClock::new();
    let mut fw = clock.firewall();
    let h = fw.handle();
    let now = clock.now();
    let first = gateway(&[]);
    fw.replace(&first, now).expect("replace");
    h.fail_replaces(2);
    let second = gateway(&[(dnat_key("192.0.2.9/32"), now + Duration::from_secs(5))]);
    for n in 1..=2 {
        assert!(fw.replace(&second, now).is_err(), "replacement {n} after fail_replaces(2) fails");
        assert!(live_dnat(&fw).is_empty(), "and changes nothing");
    }
    assert_eq!(h.counts(), (1, 0), "a failed replacement is not counted");
    fw.replace(&second, now).expect("the next one succeeds");
    assert_eq!(live_dnat(&fw).len(), 1);
    assert_eq!(h.counts(), (2, 0));
}

#[test]
fn protocol_numbers_and_names_are_the_kernels() {
    assert_eq!((L4::Tcp.number(), L4::Udp.number()), (6, 17), "IPPROTO_TCP, IPPROTO_UDP");
    assert_eq!((L4::Tcp.name(), L4::Udp.name()), ("tcp", "udp"));
}

#[test]
fn a_grant_knows_its_address_family() {
    let key = |src: &str| GrantKey { source: src.parse().unwrap(), dest: None, proto: L4::Tcp, port: 22 };
    assert!(key("192.0.2.1/32").is_v4());
    assert!(key("10.0.0.0/8").is_v4());
    assert!(!key("2001:db8::1/128").is_v4());
    assert!(!key("::ffff:192.0.2.1/128").is_v4(), "a mapped IPv4 address is an IPv6 source");
    assert!(key("2001:db8::1/128").is_exact() && !key("2001:db8::/64").is_exact());
}
