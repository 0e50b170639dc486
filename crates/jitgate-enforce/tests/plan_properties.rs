//! Properties of `plan(applied, desired)`: from any applied state, its plan carried out gives the
//! desired state (what is still live), and planning again from there finds nothing to do.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may panic on a failed expectation.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use jitgate_enforce::{plan, Desired, DnatKey, DnatTarget, ElemOp, GrantKey, Mode, Plan, Protected, L4};
use proptest::prelude::*;

/// Small domains, so that applied and desired states share keys often.
fn grant_key() -> impl Strategy<Value = GrantKey> {
    (0u8..6, prop::bool::ANY, 0u16..3, prop::option::of(0u8..2)).prop_map(|(host, range, port, dest)| GrantKey {
        source: if range {
            ipnet::IpNet::new(IpAddr::V4(Ipv4Addr::new(10, host, 0, 0)), 16).unwrap()
        } else {
            ipnet::IpNet::from(IpAddr::V4(Ipv4Addr::new(10, 0, 0, host)))
        },
        dest: dest.map(|d| IpAddr::V4(Ipv4Addr::new(192, 168, 0, d))),
        proto: if port % 2 == 0 { L4::Tcp } else { L4::Udp },
        port: 22 + port,
    })
}

fn dnat_key() -> impl Strategy<Value = DnatKey> {
    (0u8..4, 0u16..2).prop_map(|(host, port)| DnatKey {
        source: ipnet::IpNet::from(IpAddr::V4(Ipv4Addr::new(10, 0, 0, host))),
        proto: L4::Tcp,
        public_port: 2200 + port,
    })
}

/// Ends in whole milliseconds around `now` (offset −3 … +8 ms, some already past).
fn end(now: Instant) -> impl Strategy<Value = Instant> {
    (-3i64..9).prop_map(move |ms| {
        if ms >= 0 {
            now + Duration::from_millis(ms as u64)
        } else {
            now - Duration::from_millis((-ms) as u64)
        }
    })
}

fn desired(now: Instant, protected: BTreeSet<Protected>) -> impl Strategy<Value = Desired> {
    (
        prop::collection::btree_map(grant_key(), end(now), 0..8),
        prop::collection::btree_map(dnat_key(), (0u8..2, end(now)), 0..4),
    )
        .prop_map(move |(grants, dnat)| Desired {
            mode: Mode::Host,
            protected: protected.clone(),
            grants,
            dnat: dnat
                .into_iter()
                .map(|(k, (vm, end))| {
                    (k, (DnatTarget { addr: IpAddr::V4(Ipv4Addr::new(192, 168, 0, vm)), port: 22 }, end))
                })
                .collect::<BTreeMap<_, _>>(),
        })
}

fn ports(n: u16) -> BTreeSet<Protected> {
    (0..n).map(|i| Protected { dest: None, proto: L4::Tcp, port: 22 + i, cut_sessions: false }).collect()
}

/// Carries out a batch on a copy of `applied` as the kernel would at `now`: what ended is gone,
/// deletions, then additions with their timeouts. Like nftables' `add element`, adding an
/// element that is there already leaves it as it was (its old timeout too), so a changed end
/// needs its deletion first.
fn carry_out(applied: &Desired, ops: &[ElemOp], now: Instant) -> Desired {
    let mut next = applied.live_at(now);
    for op in ops {
        match *op {
            ElemOp::AddGrant { key, timeout } => {
                next.grants.entry(key).or_insert(now + timeout);
            }
            ElemOp::DelGrant { key } => {
                next.grants.remove(&key);
            }
            ElemOp::AddDnat { key, target, timeout } => {
                next.dnat.entry(key).or_insert((target, now + timeout));
            }
            ElemOp::DelDnat { key } => {
                next.dnat.remove(&key);
            }
        }
    }
    next
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn any_applied_state_converges_to_the_desired_one(
        (applied, wanted, same_ports) in {
            let now = Instant::now();
            (prop::option::of(desired(now, ports(2))), desired(now, ports(2)), prop::bool::ANY)
                .prop_map(move |(a, d, same)| (a.map(|a| (a, now)), (d, now), same))
        }
    ) {
        let (wanted, now) = wanted;
        let mut wanted = wanted;
        if !same_ports {
            wanted.protected = ports(3);
        }
        let applied = applied.map(|(a, _)| a);
        let result = match plan(applied.as_ref(), &wanted, now) {
            Plan::Nothing => applied.clone().expect("nothing to do only from a known state").live_at(now),
            Plan::Replace(d) => d,
            Plan::Batch(ops) => {
                let applied = applied.clone().expect("a batch only from a known state");
                prop_assert_eq!(&applied.protected, &wanted.protected, "a batch keeps the protected ports");
                // Deletions come first, and nothing is both deleted and added twice.
                let is_add = |o: &ElemOp| matches!(o, ElemOp::AddGrant { .. } | ElemOp::AddDnat { .. });
                if let Some(i) = ops.iter().position(is_add) {
                    let adds_last = ops[i..].iter().all(is_add);
                    prop_assert!(adds_last, "deletions before additions: {:?}", ops);
                }
                for o in &ops {
                    if let ElemOp::AddGrant { timeout, .. } | ElemOp::AddDnat { timeout, .. } = o {
                        prop_assert!(*timeout > Duration::ZERO, "no element is added without time left");
                    }
                }
                carry_out(&applied, &ops, now)
            }
        };
        prop_assert_eq!(&result, &wanted.live_at(now), "the plan reaches the desired state");
        // From there, nothing is left to do.
        prop_assert_eq!(plan(Some(&result), &wanted, now), Plan::Nothing);
    }
}
