//! The two-minute soak: `jitgate bench soak --duration 2m` with in-process agents on fake
//! firewalls and real agents on nftables in network namespaces (needs root, `ip` and `nft`;
//! skips with a printed reason otherwise). The soak judges itself (growth, leaks, late or
//! missed expiries); this test checks that it passed and that its summary shows every kind of
//! traffic happened.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may panic on a failed expectation.

use std::collections::HashMap;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_jitgate");

/// The `key=value` pairs of the `soak summary:` line.
fn summary(stdout: &str) -> HashMap<String, f64> {
    let line = stdout.lines().find_map(|l| l.strip_prefix("soak summary: ")).expect("a summary line");
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.parse().unwrap_or(f64::NAN)))
        .collect()
}

#[test]
fn two_minutes_of_mixed_traffic_leave_nothing_behind() {
    if let Some(why) = jitgate_netns::unavailable() {
        jitgate_netns::skip("two_minutes_of_mixed_traffic_leave_nothing_behind", &why);
        return;
    }
    let out = Command::new(BIN)
        .args(["bench", "soak", "--duration", "2m", "--agents", "20", "--real-agents", "2", "--sample-every", "2"])
        .env("JITGATE_LOG", "warn")
        .output()
        .expect("running jitgate bench soak");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the soak failed:\n{stdout}\n{stderr}");
    assert!(stdout.lines().any(|l| l == "soak: PASS"), "{stdout}");
    let s = summary(&stdout);
    let n = |k: &str| s.get(k).copied().unwrap_or_else(|| panic!("{k} missing from the summary: {stdout}"));
    assert!(n("seconds") >= 120.0, "{stdout}");
    assert!(n("initiated") >= 200.0, "about 4 initiates a second: {stdout}");
    for kind in ["pending", "approved", "denied", "revoked", "expired"] {
        assert!(n(kind) >= 1.0, "no {kind} grant in two minutes: {stdout}");
    }
    assert!(n("edits") >= 7.0, "a policy edit every 15 s: {stdout}");
    assert_eq!((n("faults"), n("failed")), (0.0, 0.0), "{stdout}");
    assert!(n("worst_lateness_ms") <= 1000.0, "{stdout}");
    // Both kinds of enforcement point were watched: lateness figures for each.
    for label in ["expiry lateness, fake firewalls", "expiry lateness, real agents on nftables"] {
        let line = stdout.lines().find(|l| l.starts_with(label)).unwrap_or_else(|| panic!("{label}: {stdout}"));
        assert!(!line.ends_with("n=0"), "{line}");
    }
}
