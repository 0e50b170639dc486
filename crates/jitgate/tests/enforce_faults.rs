//! Enforcement under faults, end to end: `jitgate serve` and `jitgate agent` as real processes in
//! network namespaces, real nftables, real connections (see `enforce.rs` for the world).
//! - Someone else flushes the ruleset or deletes the agent's table while a grant is live: the
//!   agent's watch notices and puts the table back at once, the grant with the time it has left.
//! - The agent's clock is off by an hour or a day (libfaketime): grants still last exactly as
//!   long in the kernel and close on time, because the agent programs remaining times.
//!
//! Needs root, `ip`, `nft` and (for the clock) libfaketime; skips with a printed reason otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may panic on a failed expectation.

#[macro_use]
mod world;

use std::time::Duration;

use jitgate_testkit::eventually;
use serde_json::json;
use world::*;

#[tokio::test]
async fn a_flushed_ruleset_or_a_deleted_table_is_put_back_at_once_with_the_grants_remaining_time() {
    skip_unless_netns!("a_flushed_ruleset_or_a_deleted_table_is_put_back_at_once_with_the_grants_remaining_time");
    let w = World::new(&[2222]);
    w.put_policy(json!([ssh_like(2222)]));
    assert_eq!(w.probe(A, 2222, "closed", 5000)["reached"], true);
    let end = end_ms(&w.initiate(A, 2222, "PT10M"));
    assert!(w.is_open(A, 2222) && !w.is_open(B, 2222));
    // Let the grant age in the kernel, so that a restore with a fresh, full timeout would show.
    let aged =
        eventually(Duration::from_secs(10), async || w.element(A, 2222).is_some_and(|e| e.expires_ms <= 597_000));
    assert!(aged.await, "{:?}", w.element(A, 2222));

    for how in [&["flush", "ruleset"][..], &["delete", "table", "inet", "jitgate"]] {
        let out = w.v.cmd("nft").args(how).output().expect("nft runs");
        assert!(out.status.success(), "nft {how:?}: {}", String::from_utf8_lossy(&out.stderr));
        let back = eventually(Duration::from_secs(5), async || w.element(A, 2222).is_some()).await;
        assert!(back, "the agent put its table back after nft {how:?}");
        let e = w.element(A, 2222).expect("the grant's element");
        let left = end as i64 - unix_ms() as i64;
        assert!(e.timeout_ms <= 597_500, "restored with the time left, not a new 10 minutes: {e:?}");
        assert!((e.expires_ms as i64 - left).abs() <= 1000, "expires in {e:?}, {left} ms to endTimeUtc");
        assert!(!w.is_open(B, 2222), "closed again for a source without a grant (after nft {how:?})");
        assert!(w.is_open(A, 2222), "still open for the granted source");
    }
}

/// libfaketime's library for multi-threaded programs (Debian's `libfaketime`, which `faketime`
/// pulls in); `None` (and the test skipped, saying so) when it is not installed. It is preloaded
/// into the agent itself rather than run through the `faketime` wrapper, which would stand
/// between the agent and the signal that stops it.
fn libfaketime(test: &str) -> Option<String> {
    let found = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|d| d.path().join("faketime/libfaketimeMT.so.1"))
        .chain([std::path::PathBuf::from("/usr/lib/faketime/libfaketimeMT.so.1")])
        .find(|p| p.is_file());
    if found.is_none() {
        jitgate_netns::skip(test, "libfaketime is not installed (Debian: apt-get install faketime)");
    }
    found.map(|p| p.display().to_string())
}

/// The agent runs with its clock `offset` away (libfaketime's `+1h`, `-1d` …); its monotonic
/// clock too unless `wall_only`. Trusting the server by its key's fingerprint (`pin`) or by
/// `--ca-cert`. A 3-second grant must be programmed with 3 seconds and close at its end.
fn a_grant_lasts_its_length_with_the_agents_clock(test: &str, offset: &str, wall_only: bool, pin: bool) {
    skip_unless_netns!(test);
    let Some(lib) = libfaketime(test) else { return };
    let mut env = vec![("LD_PRELOAD", lib.as_str()), ("FAKETIME", offset)];
    if wall_only {
        env.push(("FAKETIME_DONT_FAKE_MONOTONIC", "1"));
    }
    let w = World::new_with_agent(&[2222], &env, pin);
    w.put_policy(json!([ssh_like(2222)]));
    assert_eq!(w.probe(A, 2222, "closed", 5000)["reached"], true);
    let end = end_ms(&w.initiate(A, 2222, "PT3S"));
    let e = w.element(A, 2222).expect("the grant's element");
    let left = end as i64 - unix_ms() as i64;
    assert!((2000..=3000).contains(&e.timeout_ms), "{offset}: programmed for 3 s: {e:?}");
    assert!((e.expires_ms as i64 - left).abs() <= 1000, "{offset}: expires in {e:?}, {left} ms to endTimeUtc");
    assert!(w.is_open(A, 2222));
    let closed = w.probe(A, 2222, "closed", 8000);
    assert_eq!(closed["reached"], true, "{offset}: {closed}");
    let late = closed["atUnixMs"].as_u64().unwrap_or(0) as i64 - end as i64;
    assert!((-1000..=1000).contains(&late), "{offset}: closed {late} ms after endTimeUtc");
}

#[test]
fn an_agent_clock_an_hour_ahead_keeps_grants_to_their_length() {
    a_grant_lasts_its_length_with_the_agents_clock("an_agent_clock_an_hour_ahead", "+1h", true, false);
}

#[test]
fn an_agent_clock_an_hour_behind_keeps_grants_to_their_length() {
    a_grant_lasts_its_length_with_the_agents_clock("an_agent_clock_an_hour_behind", "-1h", true, false);
}

#[test]
fn an_agent_clock_a_day_ahead_keeps_grants_to_their_length() {
    a_grant_lasts_its_length_with_the_agents_clock("an_agent_clock_a_day_ahead", "+1d", true, false);
}

#[test]
fn an_agent_clock_a_day_behind_keeps_grants_to_their_length_when_it_trusts_a_pinned_key() {
    a_grant_lasts_its_length_with_the_agents_clock("an_agent_clock_a_day_behind", "-1d", true, true);
}

#[test]
fn an_agent_whose_monotonic_clock_is_shifted_too_keeps_grants_to_their_length() {
    a_grant_lasts_its_length_with_the_agents_clock("an_agent_whose_monotonic_clock_is_shifted", "-1d", false, true);
}

#[test]
fn an_agent_clock_a_day_behind_refuses_a_ca_verified_certificate_and_says_to_set_the_clock() {
    let test = "an_agent_clock_a_day_behind_refuses_a_ca_verified_certificate";
    skip_unless_netns!(test);
    let Some(lib) = libfaketime(test) else { return };
    let w = World::new(&[2222]);
    // A second agent on the same host, a day behind, trusting the server's self-signed
    // certificate (valid from an hour before the server made it): no join can succeed.
    let token = w.join_token("host");
    let out =
        w.v.cmd(BIN)
            .env("LD_PRELOAD", &lib)
            .env("FAKETIME", "-1d")
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .args(["agent", "--server", &w.server.url, "--join-token", &token, "--vm-name", "vm2", "--state-dir"])
            .arg(w.state_dir.with_file_name("agent-behind"))
            .arg("--ca-cert")
            .arg(&w.server.ca_cert)
            .output()
            .expect("the agent runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("a day behind, trusting a CA certificate:\n{stderr}");
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("certificate not valid yet"), "{stderr}");
    assert!(stderr.contains("timedatectl set-ntp true") && stderr.contains("--server-fingerprint"), "{stderr}");
    assert!(!w.state_dir.with_file_name("agent-behind").join("agent.json").exists(), "not joined");
}
