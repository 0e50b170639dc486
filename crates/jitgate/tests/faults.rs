//! The server under faults, with real processes (and network namespaces where packets matter):
//! a data directory that fills up, an fsync that fails, a thousand duplicate initiates, the
//! server killed or stopped during an agent's long-poll, during approvals and during a webhook
//! delivery, and an agent cut off from the server for a while. Each test is independent.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may panic on a failed expectation.

#[macro_use]
mod world;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use jitgate_testkit::agents::{join_token, joined, state};
use jitgate_testkit::webhooks::{create_webhook, receiver_stalling_first, LOOPBACK_RECEIVERS};
use jitgate_testkit::{as_user, eventually, Answer, LocalServer, TestServer, SUB};
use world::{ssh_like, World, A, B};

const BIN: &str = env!("CARGO_BIN_EXE_jitgate");
const INITIATE: &str = "Microsoft.Security/locations/jitNetworkAccessPolicies/initiate/action";

fn policy(vm: &str, approval: bool) -> Value {
    json!({"properties": {"virtualMachines": [{"id": vm, "ports": [{"number": 22, "protocol": "TCP",
        "allowedSourceAddressPrefix": "*", "maxRequestAccessDuration": "PT3H", "requireApproval": approval}]}]}})
}

/// Initiates access to port 22 of `vm` from `source` for ten minutes on rg1's policy `default`,
/// as the holder of `token`, with `x-ms-client-request-id: client_id`.
async fn initiate(s: &TestServer, token: &str, vm: &str, source: &str, client_id: &str) -> Answer {
    let body = json!({"virtualMachines": [{"id": vm, "ports": [
        {"number": 22, "duration": "PT10M", "allowedSourceAddressPrefix": source}]}],
        "justification": "fault matrix"});
    let auth = format!("Bearer {token}");
    let text = body.to_string();
    s.send_with(
        Method::POST,
        &s.initiate_url("rg1", "westeurope", "default"),
        Some(text.as_bytes()),
        &[("Authorization", &auth), ("x-ms-client-request-id", client_id)],
    )
    .await
}

/// A server on `data` with VM `vm` of rg1 under policy `default`; returns it and the VM's id.
async fn serve_with_policy(data: &Path, prefix: &[&str], extra: &[&str], approval: bool) -> (TestServer, String) {
    let s =
        TestServer::from(LocalServer::start_with(prefix, Path::new(BIN), data, "127.0.0.1:0", extra).expect("start"));
    let vm = s.register_vm("rg1", "vm", "Linux").await;
    let a = s.json(Method::PUT, &s.policy_url("rg1", "westeurope", "default"), &policy(&vm, approval)).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    (s, vm)
}

/// The policy's requests, newest first.
async fn requests(s: &TestServer) -> Vec<Value> {
    let p = s.send(Method::GET, &s.policy_url("rg1", "westeurope", "default"), None).await;
    assert_eq!(p.status, StatusCode::OK, "{p:?}");
    p.body["properties"]["requests"].as_array().cloned().unwrap_or_default()
}

/// The source of a request's first port.
fn source_of(request: &Value) -> String {
    request["virtualMachines"][0]["ports"][0]["allowedSourceAddressPrefix"].as_str().unwrap_or("").to_owned()
}

/// `GET /api/v1/audit/verify`: (valid, records).
async fn verify(s: &TestServer) -> (bool, u64) {
    let v = s.send(Method::GET, &s.url("/api/v1/audit/verify"), None).await;
    assert_eq!(v.status, StatusCode::OK, "{v:?}");
    (v.body["valid"] == true, v.body["records"].as_u64().unwrap_or(0))
}

/// How many audit records mention `needle` anywhere.
async fn audited(s: &TestServer, needle: &str) -> usize {
    s.audit("top=1000").await.iter().filter(|r| r.to_string().contains(needle)).count()
}

// ----- the data directory fills up -----------------------------------------------------------

/// A tmpfs of its own, unmounted (lazily, so a process still holding a file cannot keep it) when
/// dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(format!("mount -t tmpfs failed (needs root): {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// Fills the filesystem of `path` with the file `path`; returns how many bytes it took.
fn fill(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).expect("ballast file");
    let mut written = 0u64;
    for chunk in [1 << 20, 4096, 512, 1] {
        let buf = vec![0x5a; chunk];
        while let Ok(n @ 1..) = f.write(&buf) {
            written += n as u64;
        }
    }
    written
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_data_directory_refuses_changes_with_503_audits_nothing_half_and_recovers_when_space_returns() {
    let test = "a_full_data_directory_refuses_changes_with_503_audits_nothing_half_and_recovers_when_space_returns";
    let disk = match Tmpfs::mount("24m") {
        Ok(d) => d,
        Err(why) => return jitgate_netns::skip(test, &why),
    };
    let data = disk.path().join("data");
    let (s, vm) = serve_with_policy(&data, &[], &["--rate-limit-initiate", "off"], false).await;
    let admin = s.server.token.clone();
    let token = join_token(&s, SUB, "rg1", "host", json!({"vm": "vm"})).await;
    let (_, agent) = joined(&s, &token, "vm", "host", json!({})).await;
    let first = initiate(&s, &admin, &vm, "10.1.0.1", "before-full").await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{first:?}");
    assert_eq!(state(&s, &agent).await.status, StatusCode::OK);

    let ballast = disk.path().join("ballast");
    assert!(fill(&ballast) > 0, "the disk took some ballast");
    // Changes still fit while SQLite's log has room in pages it holds already; the first that
    // needs a new one is refused.
    let mut granted = 1usize;
    let mut refused = None;
    for i in 0..200 {
        let source = format!("10.2.{}.{}", i / 200, i % 200 + 1);
        let a = initiate(&s, &admin, &vm, &source, &format!("full-{i}")).await;
        match a.status {
            StatusCode::ACCEPTED => granted += 1,
            _ => {
                refused = Some((a, source, format!("full-{i}")));
                break;
            }
        }
    }
    let (a, source, client_id) = refused.expect("a change is refused once the disk is full");
    assert_eq!((a.status, a.code()), (StatusCode::SERVICE_UNAVAILABLE, "StorageFull"), "{a:?}");
    let message = a.body["error"]["message"].as_str().unwrap_or("");
    assert!(message.starts_with("the data directory is full") && message.contains("nothing was changed"), "{a:?}");
    assert_eq!(a.headers.get("retry-after").and_then(|v| v.to_str().ok()), Some("30"), "{a:?}");

    // Nothing of it happened: no request, no audit record, no change an agent sees; the chain
    // still verifies, and so does every later refusal (a policy edit, the same request again).
    let (valid, records) = verify(&s).await;
    assert!(valid, "the audit chain verifies");
    assert_eq!(requests(&s).await.len(), granted, "no request recorded for the refused change");
    assert_eq!(audited(&s, &source).await, 0, "no audit record of the refused change");
    let edit = s.json(Method::PUT, &s.policy_url("rg1", "westeurope", "default"), &policy(&vm, true)).await;
    assert_eq!((edit.status, edit.code()), (StatusCode::SERVICE_UNAVAILABLE, "StorageFull"), "{edit:?}");
    let again = initiate(&s, &admin, &vm, &source, &client_id).await;
    assert_eq!(again.status, StatusCode::SERVICE_UNAVAILABLE, "{again:?}");
    assert_eq!(verify(&s).await, (true, records), "no record was added by the refusals");
    let p = s.send(Method::GET, &s.policy_url("rg1", "westeurope", "default"), None).await;
    let port = &p.body["properties"]["virtualMachines"][0]["ports"][0];
    assert!(port["number"] == 22 && port["requireApproval"] != true, "edit not made: {p:?}");
    assert!(s.send(Method::GET, &s.url("/healthz"), None).await.status.is_success(), "the server is up");
    // The agent goes on being served what it was given (reads need no space).
    let st = state(&s, &agent).await;
    assert_eq!(st.status, StatusCode::OK, "{st:?}");
    assert_eq!(st.body["grants"].as_array().map(Vec::len), Some(granted), "{st:?}");
    assert!(!st.body.to_string().contains(&source), "{st:?}");

    // Space returns: the same request succeeds, without a restart (the writer thread lives on).
    std::fs::remove_file(&ballast).expect("ballast removed");
    let after = initiate(&s, &admin, &vm, &source, &client_id).await;
    assert_eq!(after.status, StatusCode::ACCEPTED, "{after:?}");
    assert_eq!(requests(&s).await.len(), granted + 1);
    assert_eq!(audited(&s, &source).await, 1, "audited once, when it happened");
    let edit = s.json(Method::PUT, &s.policy_url("rg1", "westeurope", "default"), &policy(&vm, false)).await;
    assert_eq!(edit.status, StatusCode::OK, "{edit:?}");
    let st = state(&s, &agent).await;
    assert_eq!(st.status, StatusCode::OK, "{st:?}");
    let sources: Vec<String> =
        st.body["grants"].as_array().into_iter().flatten().map(|g| g["sources"][0].to_string()).collect();
    assert_eq!(sources.len(), granted + 1, "the agent sees every grant made: {sources:?}");
    assert!(sources.iter().any(|x| x.contains(&source)), "{sources:?}");
    assert!(verify(&s).await.0);
}

// ----- an fsync fails ------------------------------------------------------------------------

/// An `LD_PRELOAD` shim whose `fsync` and `fdatasync` fail with EIO while the file named by
/// `JITGATE_TEST_FAIL_FSYNC` exists, built with the system's C compiler; `None` without one.
fn fsync_shim(dir: &Path) -> Result<PathBuf, String> {
    let src = dir.join("failsync.c");
    std::fs::write(
        &src,
        r#"#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>
static int failing(void) {
    const char *flag = getenv("JITGATE_TEST_FAIL_FSYNC");
    return flag && access(flag, F_OK) == 0;
}
int fdatasync(int fd) {
    if (failing()) { errno = EIO; return -1; }
    int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    return real(fd);
}
int fsync(int fd) {
    if (failing()) { errno = EIO; return -1; }
    int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    return real(fd);
}
"#,
    )
    .map_err(|e| e.to_string())?;
    let lib = dir.join("failsync.so");
    let out = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(&src)
        .arg("-ldl")
        .output()
        .map_err(|e| format!("needs a C compiler (apt-get install gcc): {e}"))?;
    if !out.status.success() {
        return Err(format!("cc failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(lib)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_refuses_every_change_until_a_restart_and_nothing_goes_unaudited() {
    let test = "a_failed_fsync_refuses_every_change_until_a_restart_and_nothing_goes_unaudited";
    let dir = tempfile::tempdir().expect("tempdir");
    let lib = match fsync_shim(dir.path()) {
        Ok(lib) => lib,
        Err(why) => return jitgate_netns::skip(test, &why),
    };
    let flag = dir.path().join("fail-fsync");
    let (preload, fail) =
        (format!("LD_PRELOAD={}", lib.display()), format!("JITGATE_TEST_FAIL_FSYNC={}", flag.display()));
    let data = dir.path().join("data");
    let (s, vm) = serve_with_policy(&data, &["env", &preload, &fail], &[], false).await;
    let admin = s.server.token.clone();
    let token = join_token(&s, SUB, "rg1", "host", json!({"vm": "vm"})).await;
    let (_, agent) = joined(&s, &token, "vm", "host", json!({})).await;
    assert_eq!(initiate(&s, &admin, &vm, "10.1.0.1", "synced").await.status, StatusCode::ACCEPTED);

    // The disk fails: the change is answered 503, and every change after it too.
    std::fs::write(&flag, b"").expect("flag");
    let a = initiate(&s, &admin, &vm, "10.1.0.2", "unsynced").await;
    assert_eq!((a.status, a.code()), (StatusCode::SERVICE_UNAVAILABLE, "StorageFailed"), "{a:?}");
    assert!(a.body["error"]["message"].as_str().unwrap_or("").contains("fsync failed"), "{a:?}");
    let later = initiate(&s, &admin, &vm, "10.1.0.3", "later").await;
    assert_eq!((later.status, later.code()), (StatusCode::SERVICE_UNAVAILABLE, "StorageFailed"), "{later:?}");
    std::fs::remove_file(&flag).expect("the disk is sound again");
    let still = initiate(&s, &admin, &vm, "10.1.0.3", "later").await;
    assert_eq!(still.status, StatusCode::SERVICE_UNAVAILABLE, "refused until a restart: {still:?}");
    let ready = s.send(Method::GET, &s.url("/readyz"), None).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE, "not ready after a failed fsync: {ready:?}");
    // What an agent reads must be durable: it gets no state built on the unsynced change.
    assert!(state(&s, &agent).await.status.is_server_error(), "no state past a failed sync");
    // A change whose sync failed may be seen by readers, but never without its audit record.
    for r in requests(&s).await {
        assert_eq!(audited(&s, &source_of(&r)).await, 1, "every visible request is audited once: {r}");
    }
    assert!(verify(&s).await.0);

    // Restarted on the sound disk: the chain verifies, the change whose sync failed is found
    // by its x-ms-client-request-id (or made now), exactly once, and changes are accepted again.
    let mut server = s.server;
    server.stop().expect("stops");
    let s = TestServer::from(LocalServer::start_in(Path::new(BIN), &data, &[]).expect("restart"));
    assert!(verify(&s).await.0, "the audit chain verifies after the restart");
    assert_eq!(s.send(Method::GET, &s.url("/readyz"), None).await.status, StatusCode::OK);
    let retried = initiate(&s, &admin, &vm, "10.1.0.2", "unsynced").await;
    assert_eq!(retried.status, StatusCode::ACCEPTED, "{retried:?}");
    assert_eq!(initiate(&s, &admin, &vm, "10.1.0.3", "later").await.status, StatusCode::ACCEPTED);
    let all = requests(&s).await;
    for source in ["10.1.0.1", "10.1.0.2", "10.1.0.3"] {
        assert_eq!(all.iter().filter(|r| source_of(r) == source).count(), 1, "{source} once: {all:?}");
        assert_eq!(audited(&s, source).await, 1, "{source} audited once");
    }
    let st = state(&s, &agent).await;
    assert_eq!(st.body["grants"].as_array().map(Vec::len), Some(3), "{st:?}");
}

// ----- a thousand duplicates -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_duplicate_initiates_make_one_grant_and_one_audit_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let flags = ["--rate-limit-initiate", "off", "--max-connections-per-source", "0"];
    let (s, vm) = serve_with_policy(&data, &[], &flags, false).await;
    let admin = s.server.token.clone();
    let s = std::sync::Arc::new(s);
    let sends: Vec<_> = (0..1000)
        .map(|_| {
            let (s, admin, vm) = (s.clone(), admin.clone(), vm.clone());
            tokio::spawn(async move { initiate(&s, &admin, &vm, "10.3.0.1", "one-and-the-same").await })
        })
        .collect();
    let mut answers = Vec::new();
    for send in sends {
        answers.push(send.await.expect("task"));
    }
    let first = &answers[0];
    assert_eq!(first.status, StatusCode::ACCEPTED, "{first:?}");
    for a in &answers {
        assert_eq!(a.status, StatusCode::ACCEPTED, "{a:?}");
        assert_eq!(a.body, first.body, "every answer is the one request");
    }
    let all = requests(&s).await;
    assert_eq!(all.len(), 1, "one request: {all:?}");
    assert_eq!(all[0]["id"], first.body["id"]);
    let records = s.audit(&format!("operation={INITIATE}&status=Succeeded&top=1000")).await;
    assert_eq!(records.len(), 1, "one audit record of the grant: {records:?}");
    assert!(verify(&s).await.0);
}

// ----- the server restarts during an agent's long-poll -----------------------------------------

/// A real agent long-polls a real server in namespaces; the server is killed (or stopped) and
/// started again on the same address. The agent keeps what it enforced meanwhile, reconnects by
/// itself and converges on changes made after the restart.
fn agent_converges_across_a_server_restart(test: &str, kill9: bool) {
    if let Some(why) = jitgate_netns::unavailable() {
        return jitgate_netns::skip(test, &why);
    }
    let mut w = World::new(&[2222]);
    w.put_policy(json!([ssh_like(2222)]));
    assert_eq!(w.probe(A, 2222, "closed", 5000)["reached"], true);
    w.initiate(A, 2222, "PT10M");
    assert!(w.is_open(A, 2222));
    // The agent is now held in its long-poll (5 s), which the restart cuts.
    w.restart_server(kill9);
    assert!(w.is_open(A, 2222), "kept through the restart");
    assert!(!w.is_open(B, 2222), "nothing else opened");
    let b = w.initiate_with(B, 2222, "PT10M", "&wait=applied&timeout=60");
    assert_eq!(b["virtualMachines"][0]["ports"][0]["status"], "Initiated", "{b}");
    assert!(w.is_open(B, 2222), "a grant made after the restart is enforced");
    let (status, agents) = w.api("GET", "/api/v1/agents", None);
    assert_eq!(status, 200, "{agents}");
    assert_eq!(agents["value"].as_array().map(Vec::len), Some(1), "the same agent, no second join: {agents}");
    let id = w.initiate(A, 2222, "PT10M")["id"].as_i64().expect("id");
    let (status, body) = w.api("POST", &format!("/api/v1/requests/{id}/revoke?wait=applied&timeout=60"), None);
    assert_eq!(status, 200, "{body}");
    assert!(w.agent_alive(), "the agent rode out the restart");
}

#[test]
fn an_agent_reconnects_and_converges_after_the_server_is_killed_during_its_long_poll() {
    agent_converges_across_a_server_restart(
        "an_agent_reconnects_and_converges_after_the_server_is_killed_during_its_long_poll",
        true,
    );
}

#[test]
fn an_agent_reconnects_and_converges_after_the_server_is_stopped_during_its_long_poll() {
    agent_converges_across_a_server_restart(
        "an_agent_reconnects_and_converges_after_the_server_is_stopped_during_its_long_poll",
        false,
    );
}

// ----- the server restarts during approvals --------------------------------------------------

/// Forty requests waiting for approval are approved at once; the server is killed (or
/// stopped) as the first approval is answered. After the restart each request is approved
/// wholly (grant live, one audit record, on the agent's list) or not at all (still pending, no
/// record), the chain verifies, and the rest can be approved.
async fn approvals_are_whole_across_a_server_restart(kill9: bool) {
    const N: usize = 40;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (s, vm) = serve_with_policy(&data, &[], &["--rate-limit-initiate", "off"], true).await;
    let admin = s.server.token.clone();
    let alice = s.principal_with_role("alice", "JIT Network Access Requester", &format!("/subscriptions/{SUB}")).await;
    let token = join_token(&s, SUB, "rg1", "host", json!({"vm": "vm"})).await;
    let (_, agent) = joined(&s, &token, "vm", "host", json!({})).await;
    let mut ids = Vec::new();
    for i in 0..N {
        let a = initiate(&s, &alice, &vm, &format!("10.4.0.{}", i + 1), &format!("ask-{i}")).await;
        assert_eq!(a.status, StatusCode::ACCEPTED, "{a:?}");
        assert_eq!(a.body["virtualMachines"][0]["ports"][0]["status"], "Pending", "{a:?}");
        ids.push(a.body["id"].as_i64().expect("id"));
    }
    let approvals_before = audited_approvals(&s).await;
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
    let first_tx = std::sync::Arc::new(std::sync::Mutex::new(Some(first_tx)));
    for id in &ids {
        let (client, admin, first_tx) = (s.client.clone(), admin.clone(), first_tx.clone());
        let url = s.url(&format!("/api/v1/requests/{id}/approve"));
        tokio::spawn(async move {
            let sent = client.post(url).bearer_auth(admin).json(&json!({"reason": "ok"})).send().await;
            if sent.is_ok() {
                if let Some(tx) = first_tx.lock().ok().and_then(|mut t| t.take()) {
                    let _ = tx.send(());
                }
            }
        });
    }
    let _ = tokio::time::timeout(Duration::from_secs(30), first_rx).await;
    let mut server = s.server;
    if kill9 {
        server.kill().expect("killed");
    } else {
        assert!(server.stop().expect("stops"), "SIGTERM: a clean exit");
    }

    let s = TestServer::from(LocalServer::start_in(Path::new(BIN), &data, &[]).expect("restart"));
    assert!(verify(&s).await.0, "the audit chain verifies after the restart");
    let mut approved = Vec::new();
    for id in &ids {
        let r = s.send(Method::GET, &s.url(&format!("/api/v1/requests/{id}")), None).await;
        let port = &r.body["virtualMachines"][0]["ports"][0];
        match (port["status"].as_str(), port["statusReason"].as_str()) {
            (Some("Initiated"), Some("Approved")) => approved.push(source_of(&r.body)),
            (Some("Pending"), _) => {}
            other => panic!("request {id} is half done: {other:?} {r:?}"),
        }
    }
    assert!(!approved.is_empty(), "the first approval was answered, so it was kept");
    assert_eq!(audited_approvals(&s).await - approvals_before, approved.len(), "one record per approval kept");
    let st = state(&s, &agent).await;
    let mut enforced: Vec<String> = st.body["grants"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|g| g["sources"][0].as_str().map(|x| x.trim_end_matches("/32").to_owned()))
        .collect();
    enforced.sort();
    approved.sort();
    assert_eq!(enforced, approved, "the agent is given exactly the approved grants");
    for id in &ids {
        let a = s.json(Method::POST, &s.url(&format!("/api/v1/requests/{id}/approve")), &json!({})).await;
        assert!(a.status == StatusCode::OK || a.code() == "RequestNotPending", "{a:?}");
    }
    assert_eq!(audited_approvals(&s).await - approvals_before, N, "each request approved once in all");
    assert!(verify(&s).await.0);
}

/// Succeeded approval records.
async fn audited_approvals(s: &TestServer) -> usize {
    s.audit("status=Succeeded&top=1000")
        .await
        .iter()
        .filter(|r| r["operationName"].as_str().is_some_and(|o| o.to_ascii_lowercase().contains("approve")))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_in_flight_when_the_server_is_killed_are_done_or_not_never_half() {
    approvals_are_whole_across_a_server_restart(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_in_flight_when_the_server_is_stopped_are_done_or_not_never_half() {
    approvals_are_whole_across_a_server_restart(false).await;
}

// ----- the server restarts during a webhook delivery -----------------------------------------

/// The receiver holds the first delivery unanswered; the server is killed (or stopped) while
/// it is in flight. After the restart the delivery is made again, with the same delivery id and
/// body: at least once. A stop records the cut attempt (`Interrupted`, due again a second
/// later); after a kill the attempt is not recorded, and the delivery waits out its claim (60 s).
async fn a_delivery_in_flight_is_made_after_a_restart(kill9: bool) {
    let secret = "fault-matrix-webhook-secret-0123";
    let (url, seen) = receiver_stalling_first(secret);
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (s, vm) = serve_with_policy(&data, &[], &LOOPBACK_RECEIVERS, false).await;
    let admin = s.server.token.clone();
    let made =
        create_webhook(&s, &admin, json!({"subscription": SUB, "url": url, "secret": secret, "events": ["opened"]}))
            .await;
    assert_eq!(made.status, StatusCode::CREATED, "{made:?}");
    let granted = initiate(&s, &admin, &vm, "10.5.0.1", "hooked").await;
    assert_eq!(granted.status, StatusCode::ACCEPTED, "{granted:?}");
    let got = async || seen.lock().map(|v| v.clone()).unwrap_or_default();
    assert!(eventually(Duration::from_secs(20), async || !got().await.is_empty()).await, "first attempt arrived");
    let mut server = s.server;
    if kill9 {
        server.kill().expect("killed");
    } else {
        assert!(server.stop().expect("stops"), "SIGTERM: a clean exit");
    }

    let s = TestServer::from(LocalServer::start_in(Path::new(BIN), &data, &LOOPBACK_RECEIVERS).expect("restart"));
    assert!(
        eventually(Duration::from_secs(120), async || got().await.len() >= 2).await,
        "delivered again after the restart"
    );
    let all = got().await;
    assert!(all.iter().all(|r| r.valid && r.event == "opened"), "{all:?}");
    assert_eq!(all[1].delivery, all[0].delivery, "the same delivery, again");
    assert_eq!(all[1].body, all[0].body);
    assert_eq!(all[0].body["requestId"], granted.body["id"]);
    let hooks = as_user(&s, &admin, Method::GET, &s.url("/api/v1/webhooks"), None).await;
    let hook = hooks.body["value"][0]["id"].as_str().expect("webhook id").to_owned();
    let delivery = async || {
        let d = as_user(&s, &admin, Method::GET, &s.url(&format!("/api/v1/webhooks/{hook}/deliveries")), None).await;
        d.body["value"][0].clone()
    };
    assert!(eventually(Duration::from_secs(10), async || delivery().await["state"] == "Delivered").await);
    let recorded = if kill9 { 1 } else { 2 };
    assert_eq!(delivery().await["attempts"], recorded, "attempts recorded: {}", delivery().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_delivery_in_flight_when_the_server_is_killed_is_delivered_after_the_restart() {
    a_delivery_in_flight_is_made_after_a_restart(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_delivery_in_flight_when_the_server_is_stopped_is_delivered_after_the_restart() {
    a_delivery_in_flight_is_made_after_a_restart(false).await;
}

// ----- the agent loses the server --------------------------------------------------------------

/// The agent is cut off from the server (its packets to the server dropped) while a grant
/// ends, another is revoked and a third is made: meanwhile the ended one closes (the kernel's
/// timeout), the new one does not open; once the cut heals the agent catches up by itself.
#[test]
fn an_agent_cut_off_from_the_server_opens_nothing_new_and_catches_up_when_it_returns() {
    skip_unless_netns!("an_agent_cut_off_from_the_server_opens_nothing_new_and_catches_up_when_it_returns");
    let w = World::new(&[2222]);
    w.put_policy(json!([ssh_like(2222)]));
    assert_eq!(w.probe(A, 2222, "closed", 5000)["reached"], true);
    let revoked = w.initiate(A, 2222, "PT10M")["id"].as_i64().expect("id");
    w.initiate(B, 2222, "PT4S");
    assert!(w.is_open(A, 2222) && w.is_open(B, 2222));

    w.partition();
    let (status, body) = w.api("POST", &format!("/api/v1/requests/{revoked}/revoke"), None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(w.probe(B, 2222, "closed", 8000)["reached"], true, "B's grant ends on time without the server");
    w.initiate_with(B, 2222, "PT10M", "");
    // The new grant and the revoke wait for the agent: nothing opens, A stays as it was applied.
    assert!(!w.is_open(B, 2222), "nothing new opens while the agent cannot reach the server");
    assert!(w.is_open(A, 2222), "the revoke reaches the agent only when it reconnects");

    w.heal();
    assert_eq!(w.probe(A, 2222, "closed", 60_000)["reached"], true, "the revoke made meanwhile closes A");
    assert_eq!(w.probe(B, 2222, "open", 10_000)["reached"], true, "the grant made meanwhile opens B");
}
