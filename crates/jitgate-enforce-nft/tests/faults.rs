//! Faults under the firewall, with real netlink in a namespace of each test's own: someone else
//! deleting or changing `table inet jitgate` (the watch must tell, at once, and never for our
//! own changes), and a batch the kernel refuses half-way (nothing of it may stay, and a
//! replacement must converge). Skipped, with the reason printed, without root or nftables.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may panic on a failed expectation.

mod common;

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{netns, TestNs};
use jitgate_enforce::{plan, Desired, ElemOp, GrantKey, Mode, Plan, Protected, Tampered, L4};
use jitgate_enforce_nft::{NftError, NftFirewall};
use jitgate_netns::Netns;

const MINUTE: Duration = Duration::from_secs(60);
/// How long an alarm may take to arrive before the test fails (it normally takes microseconds).
const ALARM_WAIT: Duration = Duration::from_secs(5);

fn key(source: &str, port: u16) -> GrantKey {
    GrantKey { source: source.parse().expect("net"), dest: None, proto: L4::Tcp, port }
}

fn state(now: Instant, grants: &[&str]) -> Desired {
    let mut d = Desired::empty(Mode::Host);
    d.protected.insert(Protected { dest: None, proto: L4::Tcp, port: 22, cut_sessions: false });
    for g in grants {
        d.grants.insert(key(g, 22), now + MINUTE);
    }
    d
}

/// A firewall in a fresh namespace, watched: its alarms arrive on the receiver.
fn watched(tag: &str) -> (Netns, NftFirewall, mpsc::Receiver<Tampered>) {
    let ns = netns(tag);
    let mut fw = ns.firewall();
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let alarm = Arc::new(move |t: Tampered| {
        let _ = tx.lock().expect("sender").send(t);
    });
    ns.inside(|| fw.watch(alarm)).expect("watch");
    (ns, fw, rx)
}

fn nft(ns: &Netns, args: &[&str]) {
    ns.must_exec("nft", args);
}

/// The source addresses in one of our sets, as nft lists them (ranges masked: `10.0.5.0` in
/// `allow4net_24`).
fn sources(ns: &Netns, set: &str) -> Vec<String> {
    let mut out: Vec<String> =
        ns.elements(set).iter().filter_map(|e| e["elem"]["val"]["concat"][0].as_str().map(str::to_owned)).collect();
    out.sort();
    out
}

#[test]
fn the_watch_rings_at_once_for_others_changes_to_our_table_and_never_for_ours() {
    require_kernel!();
    let (ns, mut fw, alarms) = watched("w");
    let now = Instant::now();
    // Our own changes: a replacement (an nft process of ours) and element batches.
    ns.inside(|| fw.replace(&state(now, &["10.0.0.1/32"]), Instant::now())).expect("replace");
    fw.apply(&[ElemOp::AddGrant { key: key("10.0.0.2/32", 22), timeout: MINUTE }]).expect("apply");
    fw.apply(&[ElemOp::DelGrant { key: key("10.0.0.2/32", 22) }]).expect("apply");
    // Someone else's table: not ours to watch.
    nft(&ns, &["add", "table", "inet", "other"]);
    nft(&ns, &["add", "chain", "inet", "other", "c"]);

    // An operator flushes the ruleset: the first alarm is for that (events arrive in order, so
    // anything our own changes had rung would have come first).
    let flushed = Instant::now();
    nft(&ns, &["flush", "ruleset"]);
    let t = alarms.recv_timeout(ALARM_WAIT).expect("an alarm for the flush");
    eprintln!("flush told after {:?} (nft's own run included): {}", flushed.elapsed(), t.what);
    assert!(t.what.starts_with("table inet jitgate deleted by nft (pid "), "{t:?}");
    assert!(!ns.has_table());

    // Put back by us: no alarm. An element added by hand, then the table deleted by hand: one
    // alarm each, in that order.
    ns.inside(|| fw.replace(&state(now, &["10.0.0.1/32"]), Instant::now())).expect("replace");
    nft(&ns, &["add", "element", "inet", "jitgate", "allow4", "{ 10.0.0.9 . tcp . 22 timeout 1m }"]);
    let t = alarms.recv_timeout(ALARM_WAIT).expect("an alarm for the element");
    assert!(t.what.starts_with("table inet jitgate changed (1 × element added) by nft"), "{t:?}");
    nft(&ns, &["delete", "rule", "inet", "jitgate", "input", "handle", &rule_handle(&ns, "input", "")]);
    let t = alarms.recv_timeout(ALARM_WAIT).expect("an alarm for the rule");
    assert!(t.what.starts_with("table inet jitgate changed (1 × rule deleted)"), "{t:?}");
    nft(&ns, &["delete", "table", "inet", "jitgate"]);
    let t = alarms.recv_timeout(ALARM_WAIT).expect("an alarm for the deleted table");
    assert!(t.what.starts_with("table inet jitgate deleted"), "{t:?}");
    assert!(alarms.try_recv().is_err(), "one alarm per transaction");

    // Dropping the firewall stops its watch (the thread is joined): the alarm's sender goes.
    drop(fw);
    assert_eq!(alarms.recv_timeout(ALARM_WAIT), Err(mpsc::RecvTimeoutError::Disconnected));
}

/// The handle of the first rule of our `chain` whose text contains `containing`.
fn rule_handle(ns: &Netns, chain: &str, containing: &str) -> String {
    let out = ns.must_exec("nft", &["-a", "list", "chain", "inet", "jitgate", chain]);
    out.lines()
        .filter(|l| !l.contains("chain ") && l.contains(containing))
        .find_map(|l| l.split("# handle ").nth(1))
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|| panic!("no rule with {containing:?} in chain {chain}: {out}"))
}

#[test]
fn a_batch_refused_at_its_last_operation_leaves_every_earlier_one_undone_and_a_replace_converges() {
    require_kernel!();
    let ns = netns("b");
    let mut fw = ns.firewall();
    let now = Instant::now();
    let applied = state(now, &["10.0.0.1/32", "10.0.0.2/32", "10.0.5.0/24"]);
    ns.inside(|| fw.replace(&applied, now)).expect("replace");
    let before = (sources(&ns, "allow4"), sources(&ns, "allow4net_24"));
    assert_eq!(before.0, ["10.0.0.1", "10.0.0.2"]);

    // The next state: .1 revoked, .3 and a /24 granted, and last a /16 — whose set someone
    // removed under the agent, so the kernel refuses the batch's last message.
    let desired = state(now, &["10.0.0.2/32", "10.0.0.3/32", "10.0.5.0/24", "10.0.6.0/24", "10.1.0.0/16"]);
    let rule = rule_handle(&ns, "input4", "@allow4net_16");
    nft(&ns, &["delete", "rule", "inet", "jitgate", "input4", "handle", &rule]);
    nft(&ns, &["delete", "set", "inet", "jitgate", "allow4net_16"]);
    let Plan::Batch(ops) = plan(Some(&applied), &desired, Instant::now()) else { panic!("a batch") };
    assert!(matches!(ops.last(), Some(ElemOp::AddGrant { key, .. }) if key.source.prefix_len() == 16), "{ops:?}");
    let err = fw.apply(&ops).expect_err("the set is gone");
    assert!(matches!(err, NftError::Kernel { errno: 2, .. }), "{err}");
    assert!(err.to_string().contains("allow4net_16"), "names the refused message: {err}");
    assert_eq!((sources(&ns, "allow4"), sources(&ns, "allow4net_24")), before, "nothing of the batch stayed");

    // An element the kernel refuses (a timeout out of range) as the last operation: the same.
    nft(
        &ns,
        &[
            "add",
            "set",
            "inet",
            "jitgate",
            "allow4net_16",
            "{ type ipv4_addr . inet_proto . inet_service; flags timeout; }",
        ],
    );
    let mut refused = ops.clone();
    refused.push(ElemOp::AddGrant { key: key("10.2.0.0/16", 22), timeout: Duration::from_secs(u64::MAX / 1000) });
    let err = fw.apply(&refused).expect_err("out of range");
    assert!(err.to_string().contains("10.2.0.0/16"), "names the refused element: {err}");
    assert_eq!((sources(&ns, "allow4"), sources(&ns, "allow4net_24")), before, "nothing of the batch stayed");
    assert!(sources(&ns, "allow4net_16").is_empty());

    // The agent's fallback: replace the whole table with the desired state; then nothing is
    // left to do.
    ns.inside(|| fw.replace(&desired, Instant::now())).expect("replace");
    assert_eq!(sources(&ns, "allow4"), ["10.0.0.2", "10.0.0.3"]);
    assert_eq!(sources(&ns, "allow4net_24"), ["10.0.5.0", "10.0.6.0"]);
    assert_eq!(sources(&ns, "allow4net_16"), ["10.1.0.0"]);
    assert_eq!(plan(Some(&desired), &desired, Instant::now()), Plan::Nothing);

    // The table deleted under the agent: the first message is refused, nothing is created.
    nft(&ns, &["delete", "table", "inet", "jitgate"]);
    let err = fw.apply(&[ElemOp::AddGrant { key: key("10.0.0.7/32", 22), timeout: MINUTE }]).expect_err("no table");
    assert!(matches!(err, NftError::Kernel { errno: 2, .. }), "{err}");
    assert!(!ns.has_table(), "a refused batch creates nothing");
    ns.inside(|| fw.replace(&desired, Instant::now())).expect("replace");
    assert_eq!(sources(&ns, "allow4"), ["10.0.0.2", "10.0.0.3"]);
}
