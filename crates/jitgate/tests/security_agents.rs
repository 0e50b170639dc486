//! The agent boundary under attack, end to end against the real server: who may become a VM's
//! enforcement point, revoking and rotating agent credentials, revisions an agent was never
//! sent, bounded join fields, a gateway's ports as one namespace, and gateways as resources of
//! their own subscription. Agents are played through `POST /agent/v1/join` directly, except
//! where the real `jitgate agent` process itself is under test.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may panic on a failed expectation.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use jitgate_testkit::agents::{agent_call, join, join_token, joined, state};
use jitgate_testkit::{as_user, eventually, vm_id, TestServer, SUB};

const BIN: &str = env!("CARGO_BIN_EXE_jitgate");
/// A second subscription.
const SUB_B: &str = "7d2a3c1e-0b4f-4e8a-9c6d-5f1e2a3b4c5d";

async fn vm(s: &TestServer, sub: &str, rg: &str, name: &str) -> Value {
    let id = vm_id(rg, name).replace(SUB, sub);
    let a = s.send(Method::GET, &s.url(&format!("/api/v1/vms?id={id}")), None).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    a.body
}

async fn agents(s: &TestServer) -> Vec<Value> {
    let a = s.send(Method::GET, &s.url("/api/v1/agents"), None).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    a.body["value"].as_array().cloned().unwrap_or_default()
}

/// Audit records of one operation, newest last.
async fn audit_of(s: &TestServer, operation: &str) -> Vec<Value> {
    s.audit(&format!("operation={operation}&top=1000")).await
}

fn cli(s: &TestServer, args: &[&str]) -> std::process::Output {
    jitgate_testkit::cli(BIN, s, args)
}

fn policy(vm: &str, number: u16, mapped: Option<u16>) -> Value {
    let mut port = json!({"number": number, "protocol": "TCP", "allowedSourceAddressPrefix": "*", "maxRequestAccessDuration": "PT3H"});
    if let Some(m) = mapped {
        port["mappedPort"] = json!(m);
    }
    json!({"properties": {"virtualMachines": [{"id": vm, "ports": [port]}]}})
}

fn attach(sub: &str, rg: &str, name: &str, address: &str, gateway: &str) -> Value {
    json!({"id": vm_id(rg, name).replace(SUB, sub), "osType": "Linux", "location": "westeurope", "address": address, "gateway": gateway})
}

// Finding 11: a host join token took over any VM of its resource group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_join_token_cannot_take_over_an_existing_vm() {
    let s = TestServer::start(BIN, &[]);
    let t = join_token(&s, SUB, "prod", "host", json!({})).await;
    let (_, web2) = joined(&s, &t, "web2", "host", json!({"addresses": ["10.0.0.2"]})).await;
    assert_eq!(state(&s, &web2).await.status, StatusCode::OK);

    // The attack: a fresh host token, the name of an existing VM (any case), another address.
    let fresh = join_token(&s, SUB, "prod", "host", json!({})).await;
    let a = join(&s, &fresh, "WEB2", "host", json!({"addresses": ["192.0.2.66"]})).await;
    assert_eq!((a.status, a.code()), (StatusCode::CONFLICT, "VirtualMachineExists"), "{a:?}");
    assert!(a.body["error"]["message"].as_str().unwrap_or("").contains("--vm"), "says how: {a:?}");
    assert_eq!(state(&s, &web2).await.status, StatusCode::OK, "web2's real credential still works");
    let v = vm(&s, SUB, "prod", "web2").await;
    assert_eq!((v["address"].as_str(), v["enforcement"]["agent"].as_str()), (Some("10.0.0.2"), Some("web2")), "{v}");
    // The refused token was not used up; it still joins a new VM.
    joined(&s, &fresh, "web3", "host", json!({"addresses": ["10.0.0.3"]})).await;

    // A VM behind a gateway is never detached by a host join, not even with a token made for it.
    let g = join_token(&s, SUB, "prod", "gateway", json!({})).await;
    joined(&s, &g, "gw1", "gateway", json!({"publicAddress": "203.0.113.10"})).await;
    let app = attach(SUB, "prod", "app1", "10.8.0.5", "gw1");
    assert_eq!(s.json(Method::PUT, &s.url("/api/v1/vms"), &app).await.status, StatusCode::CREATED);
    let plain = join_token(&s, SUB, "prod", "host", json!({})).await;
    let a = join(&s, &plain, "app1", "host", json!({"addresses": ["192.0.2.66"]})).await;
    assert_eq!((a.status, a.code()), (StatusCode::CONFLICT, "VirtualMachineExists"), "{a:?}");
    let for_app = join_token(&s, SUB, "prod", "host", json!({"vm": "app1"})).await;
    let a = join(&s, &for_app, "app1", "host", json!({"addresses": ["192.0.2.66"]})).await;
    assert_eq!((a.status, a.code()), (StatusCode::CONFLICT, "VirtualMachineBehindGateway"), "{a:?}");
    let v = vm(&s, SUB, "prod", "app1").await;
    assert_eq!((v["gateway"].as_str(), v["address"].as_str()), (Some("gw1"), Some("10.8.0.5")), "{v}");
    assert_eq!(v["location"], "westeurope");

    // A token made for one VM joins as that VM only.
    let for_web2 =
        s.server.create_join_token(Command::new(BIN), SUB, "prod", "northeurope", &["--vm", "web2"]).expect("token");
    assert!(for_web2.starts_with("jgj_"), "{for_web2:?}");
    let a = join(&s, &for_web2, "web3", "host", json!({"addresses": ["192.0.2.66"]})).await;
    assert_eq!((a.status, a.code()), (StatusCode::UNAUTHORIZED, "InvalidJoinToken"), "{a:?}");
    // The explicit re-bind: the old credential stops, the address moves, the location stays, and
    // the audit log has the old and new agent and address.
    let (new_id, new_web2) = joined(&s, &for_web2, "web2", "host", json!({"addresses": ["10.0.0.22"]})).await;
    assert_eq!(state(&s, &web2).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(state(&s, &new_web2).await.status, StatusCode::OK);
    let v = vm(&s, SUB, "prod", "web2").await;
    assert_eq!((v["address"].as_str(), v["location"].as_str()), (Some("10.0.0.22"), Some("westeurope")), "{v}");
    let joins = audit_of(&s, "jitgate/agents/join/action").await;
    let rebind = joins.iter().rev().find(|r| r["properties"]["rebound"] == "true").expect("the re-bind is audited");
    let p = &rebind["properties"];
    assert_eq!(
        (p["previousAddress"].as_str(), p["address"].as_str()),
        (Some("10.0.0.2"), Some("10.0.0.22")),
        "{rebind}"
    );
    assert_eq!(p["agentId"].as_str(), Some(new_id.as_str()));
    assert!(p["previousAgent"].as_str().is_some_and(|a| !a.is_empty() && a != new_id), "{rebind}");

    // A token for one VM needs write on that VM only; a token for the whole group needs more.
    let vm_admin = s.principal_with_role("vmadmin", "Contributor", &vm_id("prod", "web3")).await;
    let ask = |body: Value| {
        let (s, vm_admin) = (&s, vm_admin.clone());
        async move { as_user(s, &vm_admin, Method::POST, &s.url("/api/v1/agentTokens"), Some(&body)).await }
    };
    let base = json!({"subscription": SUB, "resourceGroup": "prod", "location": "westeurope"});
    let mut one = base.clone();
    one["vm"] = json!("web3");
    assert_eq!(ask(one).await.status, StatusCode::CREATED);
    assert_eq!(ask(base.clone()).await.status, StatusCode::FORBIDDEN);
    let mut gateway_vm = base;
    gateway_vm["mode"] = json!("gateway");
    gateway_vm["vm"] = json!("web3");
    assert_eq!(ask(gateway_vm).await.status, StatusCode::BAD_REQUEST, "a gateway token names no VM");
}

// Finding 12: agent credentials could not be revoked, removed or rotated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_are_listed_revoked_removed_with_their_vm_and_rotated() {
    let s = TestServer::start(BIN, &[]);
    let t = join_token(&s, SUB, "prod", "host", json!({})).await;
    let (id5, c5) = joined(&s, &t, "web5", "host", json!({"addresses": ["10.0.0.5"]})).await;

    // Listing, from the CLI as a table and as the API's JSON.
    let out = cli(&s, &["agent", "list"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("ID") && table.contains(&id5) && table.contains("web5"), "{table}");
    let out = cli(&s, &["agent", "list", "-o", "json"]);
    let listed: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(listed["value"].as_array().into_iter().flatten().any(|a| a["id"] == id5.as_str()), "{listed}");

    // Rotation: a new credential, and the old one stops working at once.
    let r = agent_call(&s, &c5, Method::POST, "/agent/v1/rotate", None).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let c5b = r.body["credential"].as_str().expect("credential").to_owned();
    assert!(c5b.starts_with("jga_") && c5b != c5);
    assert_eq!(state(&s, &c5).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(agent_call(&s, &c5, Method::POST, "/agent/v1/rotate", None).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(state(&s, &c5b).await.status, StatusCode::OK);

    // Revocation needs write where the agent is managed.
    let reader = s.principal_with_role("reader", "Reader", "/").await;
    let a = as_user(&s, &reader, Method::DELETE, &s.url(&format!("/api/v1/agents/{id5}")), None).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{a:?}");
    assert_eq!(state(&s, &c5b).await.status, StatusCode::OK);
    // `jitgate agent rm` (by name here) revokes: 401 for the agent, its VM has no enforcement point.
    let out = cli(&s, &["agent", "rm", "web5", "-o", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let removed: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(removed["id"], id5.as_str());
    let refused = state(&s, &c5b).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert!(refused.body["error"]["message"].as_str().unwrap_or("").contains("revoked"), "{refused:?}");
    let v = vm(&s, SUB, "prod", "web5").await;
    assert!(v["enforcement"].is_null(), "{v}");
    assert!(v["unsupportedReason"].as_str().unwrap_or("").contains("no enforcement point"), "{v}");
    let unsupported = s.send(Method::GET, &s.url("/api/v1/vms?view=unsupported"), None).await;
    assert!(unsupported.body["value"].as_array().into_iter().flatten().any(|v| v["name"] == "web5"), "{unsupported:?}");
    let deletes = audit_of(&s, "jitgate/agents/delete").await;
    let done = deletes.iter().find(|r| r["status"] == "Succeeded").expect("audited");
    assert_eq!(done["properties"]["agentId"], id5.as_str());
    assert!(done["properties"]["unenforcedVms"].as_str().unwrap_or("").contains("web5"), "{done}");
    assert!(deletes.iter().any(|r| r["status"] == "Failed" && r["caller"] == "reader"), "the refusal too");
    let again = s.send(Method::DELETE, &s.url(&format!("/api/v1/agents/{id5}")), None).await;
    assert_eq!((again.status, again.code()), (StatusCode::NOT_FOUND, "AgentNotFound"));
    let junk = s.send(Method::DELETE, &s.url(&format!("/api/v1/agents/{}", "x".repeat(5000))), None).await;
    assert_eq!(junk.status, StatusCode::NOT_FOUND);
    let out = cli(&s, &["agent", "rm", id5.as_str()]);
    assert_eq!(out.status.code(), Some(4), "not found: {}", String::from_utf8_lossy(&out.stderr));

    // Deleting a VM ends its agent's binding: the old credential never enforces a VM registered
    // again under the name, and never receives its grants.
    let (_, c6) = joined(&s, &t_for(&s).await, "web6", "host", json!({"addresses": ["10.0.0.6"]})).await;
    let web6 = vm_id("prod", "web6");
    assert_eq!(s.send(Method::DELETE, &s.url(&format!("/api/v1/vms?id={web6}")), None).await.status, StatusCode::OK);
    assert_eq!(state(&s, &c6).await.status, StatusCode::UNAUTHORIZED);
    s.register_vm("prod", "web6", "Linux").await;
    assert_eq!(
        s.json(Method::PUT, &s.policy_url("prod", "westeurope", "p6"), &policy(&web6, 22, None)).await.status,
        StatusCode::OK
    );
    let grant = json!({"virtualMachines": [{"id": web6, "ports": [{"number": 22, "duration": "PT5M", "allowedSourceAddressPrefix": "198.51.100.6"}]}]});
    assert_eq!(
        s.json(Method::POST, &s.initiate_url("prod", "westeurope", "p6"), &grant).await.status,
        StatusCode::ACCEPTED
    );
    assert_eq!(state(&s, &c6).await.status, StatusCode::UNAUTHORIZED);
    assert!(vm(&s, SUB, "prod", "web6").await["enforcement"].is_null());

    // A gateway: its name is taken while it is joined, and free again after revocation.
    let g = join_token(&s, SUB, "edge", "gateway", json!({})).await;
    let (gw_id, gw_cred) = joined(&s, &g, "gw1", "gateway", json!({"publicAddress": "203.0.113.10"})).await;
    let g2 = join_token(&s, SUB, "edge", "gateway", json!({})).await;
    let a = join(&s, &g2, "GW1", "gateway", json!({})).await;
    assert_eq!((a.status, a.code()), (StatusCode::CONFLICT, "GatewayExists"), "{a:?}");
    assert!(a.body["error"]["message"].as_str().unwrap_or("").contains("jitgate agent rm"), "{a:?}");
    let behind = attach(SUB, "edge", "inner1", "10.8.0.9", "gw1");
    assert_eq!(s.json(Method::PUT, &s.url("/api/v1/vms"), &behind).await.status, StatusCode::CREATED);
    assert_eq!(s.send(Method::DELETE, &s.url(&format!("/api/v1/agents/{gw_id}")), None).await.status, StatusCode::OK);
    assert_eq!(state(&s, &gw_cred).await.status, StatusCode::UNAUTHORIZED);
    assert!(vm(&s, SUB, "edge", "inner1").await["unsupportedReason"]
        .as_str()
        .unwrap_or("")
        .contains("no enforcement point"));
    let (_, replacement) = joined(&s, &g2, "gw1", "gateway", json!({"publicAddress": "203.0.113.11"})).await;
    assert_eq!(state(&s, &replacement).await.status, StatusCode::OK);
    assert_eq!(vm(&s, SUB, "edge", "inner1").await["enforcement"]["agent"], "gw1");
}

async fn t_for(s: &TestServer) -> String {
    join_token(s, SUB, "prod", "host", json!({})).await
}

/// A `jitgate agent` process whose nftables is unusable (so it changes nothing on this host),
/// with stderr in a file; killed on drop.
struct AgentProcess {
    child: Child,
    stderr: std::path::PathBuf,
}

impl AgentProcess {
    fn start(s: &TestServer, dir: &Path, extra: &[&str]) -> AgentProcess {
        let stderr = dir.join(format!("stderr-{}.log", extra.len()));
        let file = std::fs::File::create(&stderr).expect("stderr file");
        let child = Command::new(BIN)
            .args(["agent", "--server", &s.server.url, "--state-dir"])
            .arg(dir.join("state"))
            .arg("--ca-cert")
            .arg(&s.server.ca_cert)
            .args(["--vm-name", "procvm", "--poll-seconds", "1"])
            .args(extra)
            .env("JITGATE_NFT", "/nonexistent/nft")
            .env("JITGATE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn()
            .expect("agent starts");
        AgentProcess { child, stderr }
    }

    /// Waits for the process to end (at most `limit`); its exit success and stderr.
    fn wait_exit(&mut self, limit: Duration) -> Option<(bool, String)> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some((status.success(), std::fs::read_to_string(&self.stderr).unwrap_or_default()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stored_credential(dir: &Path) -> String {
    let data = std::fs::read(dir.join("state").join("agent.json")).unwrap_or_default();
    serde_json::from_slice::<Value>(&data)
        .ok()
        .and_then(|v| v["credential"].as_str().map(String::from))
        .unwrap_or_default()
}

async fn until(what: &str, limit: Duration, check: impl AsyncFnMut() -> bool) {
    assert!(eventually(limit, check).await, "timed out waiting for {what}");
}

// Finding 12, the agent's side: it rotates on request and says clearly when it was revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_rotates_its_credential_and_says_so_when_it_was_revoked() {
    let s = TestServer::start(BIN, &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let t = join_token(&s, SUB, "prod", "host", json!({})).await;
    let mut first = AgentProcess::start(&s, dir.path(), &["--join-token", &t]);
    until("the agent's first report", Duration::from_secs(30), async || {
        agents(&s).await.iter().any(|a| a["name"] == "procvm" && a["lastSeen"].is_string())
    })
    .await;
    let c1 = stored_credential(dir.path());
    assert!(c1.starts_with("jga_"));
    let _ = first.child.kill();
    let _ = first.child.wait();

    let mut second = AgentProcess::start(&s, dir.path(), &["--rotate-credential"]);
    until("the rotated credential", Duration::from_secs(30), async || {
        let c = stored_credential(dir.path());
        !c.is_empty() && c != c1
    })
    .await;
    let c2 = stored_credential(dir.path());
    assert_eq!(state(&s, &c1).await.status, StatusCode::UNAUTHORIZED, "the old credential stops");
    assert_eq!(state(&s, &c2).await.status, StatusCode::OK);
    let id = agents(&s).await.iter().find(|a| a["name"] == "procvm").and_then(|a| a["id"].as_str().map(String::from));
    let id = id.expect("listed");
    let rotations = audit_of(&s, "jitgate/agents/rotate/action").await;
    assert!(rotations.iter().any(|r| r["properties"]["agentId"] == id.as_str()), "{rotations:?}");
    // Still running with the new credential.
    assert!(second.child.try_wait().ok().flatten().is_none(), "the agent keeps running");

    assert_eq!(s.send(Method::DELETE, &s.url(&format!("/api/v1/agents/{id}")), None).await.status, StatusCode::OK);
    let (ok, stderr) = second.wait_exit(Duration::from_secs(60)).expect("a revoked agent stops");
    assert!(!ok, "it fails");
    assert!(stderr.contains("revoked") && stderr.contains("--join-token"), "says why and how to re-join: {stderr}");
}

// Finding 13: an agent claimed revisions never sent to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cannot_claim_revisions_it_was_never_sent() {
    let s = TestServer::start(BIN, &[]);
    let t = join_token(&s, SUB, "prod", "host", json!({})).await;
    let (id, c) = joined(&s, &t, "web1", "host", json!({"addresses": ["10.0.0.1"]})).await;
    let web1 = vm_id("prod", "web1");
    assert_eq!(
        s.json(Method::PUT, &s.policy_url("prod", "westeurope", "default"), &policy(&web1, 22, None)).await.status,
        StatusCode::OK
    );
    for revision in [json!(9_223_372_036_854_775_807u64), json!(u64::MAX), json!(1)] {
        let a = agent_call(
            &s,
            &c,
            Method::POST,
            "/agent/v1/applied",
            Some(json!({"revision": revision, "nftablesUsable": true})),
        )
        .await;
        assert_eq!((a.status, a.code()), (StatusCode::CONFLICT, "RevisionNotDelivered"), "{revision}: {a:?}");
    }
    let refusals = audit_of(&s, "jitgate/agents/applied/action").await;
    assert!(refusals.iter().any(|r| r["status"] == "Failed" && r["caller"] == format!("agent:{id}")), "{refusals:?}");
    // Nobody hears "applied" from an agent that applied nothing.
    let grant = json!({"virtualMachines": [{"id": web1, "ports": [{"number": 22, "duration": "PT5M", "allowedSourceAddressPrefix": "198.51.100.1"}]}]});
    let url = s.initiate_url("prod", "westeurope", "default") + "&wait=applied&timeout=0.5";
    let a = s.json(Method::POST, &url, &grant).await;
    assert_eq!((a.status, a.code()), (StatusCode::GATEWAY_TIMEOUT, "EnforcementTimeout"), "{a:?}");
    // What it was sent it may report, and nothing beyond.
    let sent = state(&s, &c).await;
    let revision = sent.body["revision"].as_u64().expect("revision");
    assert_eq!(sent.body["grants"].as_array().map(Vec::len), Some(1));
    let report = |r: u64, error: Option<String>| {
        let (s, c) = (&s, c.clone());
        let body = json!({"revision": r, "nftablesUsable": error.is_none(), "nftablesError": error});
        async move { agent_call(s, &c, Method::POST, "/agent/v1/applied", Some(body)).await }
    };
    assert_eq!(report(revision + 1, None).await.status, StatusCode::CONFLICT);
    assert_eq!(report(revision, None).await.status, StatusCode::NO_CONTENT);
    let a = s.json(Method::POST, &url, &grant).await;
    assert_eq!(a.status, StatusCode::GATEWAY_TIMEOUT, "the new grant's revision was not sent yet: {a:?}");

    // nftablesError is stored and shown printable and bounded.
    let nasty = format!("nft\u{1b}[2J\r\nfailed\u{202e}{}", "e".repeat(10_000));
    assert_eq!(report(revision, Some(nasty)).await.status, StatusCode::NO_CONTENT);
    let listed = agents(&s).await;
    let shown = listed.iter().find(|a| a["id"] == id.as_str()).and_then(|a| a["nftablesError"].as_str()).unwrap_or("");
    assert!(shown.starts_with("nft [2J failed e"), "{shown:?}");
    assert!(shown.chars().count() <= 501 && !shown.chars().any(|c| c.is_control() || c == '\u{202e}'), "{shown:?}");
    let reason = vm(&s, SUB, "prod", "web1").await["unsupportedReason"].as_str().unwrap_or("").to_owned();
    assert!(reason.contains("nftables unusable") && reason.len() < 700, "{reason:?}");
    // A report body has a size limit of its own.
    let huge = json!({"revision": revision, "nftablesUsable": false, "nftablesError": "e".repeat(200_000)});
    let a = agent_call(&s, &c, Method::POST, "/agent/v1/applied", Some(huge)).await;
    assert_eq!((a.status, a.code()), (StatusCode::PAYLOAD_TOO_LARGE, "RequestEntityTooLarge"), "{a:?}");
}

// Finding 16 (fields): a 900 kB join name wrote a 900 kB audit record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_join_field_is_bounded_and_refused_joins_are_audited_compactly() {
    let s = TestServer::start(BIN, &[]);
    let t = join_token(&s, SUB, "prod", "host", json!({})).await;
    let big = "x".repeat(900_000);
    let a = join(&s, &t, &big, "host", json!({})).await;
    assert_eq!((a.status, a.code()), (StatusCode::PAYLOAD_TOO_LARGE, "RequestEntityTooLarge"), "{a:?}");
    let inside = "y".repeat(60_000);
    let cases: Vec<(Value, &str)> = vec![
        (json!({"name": inside}), "name"),
        (json!({"mode": inside}), "mode"),
        (json!({"osType": inside}), "osType"),
        (json!({"hostname": inside}), "hostname"),
        (json!({"hostname": "web\u{1b}1"}), "hostname"),
        (json!({"name": "web\u{202e}1"}), "name"),
        (json!({"addresses": [inside]}), "addresses[0]"),
        (json!({"addresses": vec!["10.0.0.1"; 65]}), "addresses"),
        (json!({"publicAddress": inside}), "publicAddress"),
    ];
    for (fields, target) in &cases {
        let a = join(&s, &t, "web1", "host", fields.clone()).await;
        assert_eq!((a.status, a.code()), (StatusCode::BAD_REQUEST, "InvalidJoinRequest"), "{target}: {a:?}");
        assert_eq!(a.body["error"]["target"], *target);
        assert!(a.body.to_string().len() < 1000, "{target}: the answer quotes little");
    }
    // A wrong type carrying a long string, and a long join token.
    let a = join(&s, &t, "web1", "host", json!({"addresses": inside})).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{a:?}");
    let a = join(&s, &inside, "web1", "host", json!({})).await;
    assert_eq!((a.status, a.code()), (StatusCode::UNAUTHORIZED, "InvalidJoinToken"));
    let records = audit_of(&s, "jitgate/agents/join/action").await;
    let failed: Vec<&Value> = records.iter().filter(|r| r["status"] == "Failed").collect();
    assert_eq!(failed.len(), cases.len() + 3, "every refusal is audited");
    for r in &failed {
        let size = r.to_string().len();
        assert!(size < 2000, "an audit record of a refused join is {size} bytes: {r}");
    }
    // The token survived every refusal and still joins, with bounded values.
    let (_, c) = joined(&s, &t, "web1", "host", json!({"addresses": vec!["10.0.0.1"; 64]})).await;
    assert_eq!(state(&s, &c).await.status, StatusCode::OK);
}

// Finding 10: a gateway's mapped port could be claimed by two policies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_port_is_claimed_once_across_policies() {
    let s = TestServer::start(BIN, &[]);
    let g = join_token(&s, SUB, "rg1", "gateway", json!({})).await;
    let (_, gw) = joined(&s, &g, "gw1", "gateway", json!({"publicAddress": "203.0.113.10"})).await;
    for (name, address) in [("vm1", "10.8.0.1"), ("vm2", "10.8.0.2")] {
        assert_eq!(
            s.json(Method::PUT, &s.url("/api/v1/vms"), &attach(SUB, "rg1", name, address, "gw1")).await.status,
            StatusCode::CREATED
        );
    }
    let (vm1, vm2) = (vm_id("rg1", "vm1"), vm_id("rg1", "vm2"));
    let a = s.json(Method::PUT, &s.policy_url("rg1", "westeurope", "default"), &policy(&vm1, 22, Some(52222))).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let a = s.json(Method::PUT, &s.policy_url("rg1", "westeurope", "second"), &policy(&vm2, 2200, Some(52222))).await;
    assert_eq!((a.status, a.code()), (StatusCode::CONFLICT, "MappedPortInUse"), "{a:?}");
    let message = a.body["error"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("vm1:22") && message.contains("jitNetworkAccessPolicies/default"),
        "names the holder: {message}"
    );
    assert_eq!(a.body["error"]["target"], "properties.virtualMachines[0].ports[0].mappedPort");
    assert_eq!(
        s.send(Method::GET, &s.policy_url("rg1", "westeurope", "second"), None).await.status,
        StatusCode::NOT_FOUND
    );
    // `*` overlaps TCP; another port is free.
    let mut any = policy(&vm2, 2200, Some(52222));
    any["properties"]["virtualMachines"][0]["ports"][0]["protocol"] = json!("*");
    assert_eq!(
        s.json(Method::PUT, &s.policy_url("rg1", "westeurope", "second"), &any).await.status,
        StatusCode::CONFLICT
    );
    let a = s.json(Method::PUT, &s.policy_url("rg1", "westeurope", "second"), &policy(&vm2, 2200, Some(52223))).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    // Attaching a VM whose policy holds the port is refused too.
    let vm3 = s.register_vm("rg1", "vm3", "Linux").await;
    assert_eq!(
        s.json(Method::PUT, &s.policy_url("rg1", "westeurope", "third"), &policy(&vm3, 22, Some(52222))).await.status,
        StatusCode::OK
    );
    let a = s.json(Method::PUT, &s.url("/api/v1/vms"), &attach(SUB, "rg1", "vm3", "10.8.0.3", "gw1")).await;
    assert_eq!((a.status, a.code()), (StatusCode::CONFLICT, "MappedPortInUse"), "{a:?}");
    assert!(vm(&s, SUB, "rg1", "vm3").await["gateway"].is_null(), "nothing changed");
    // The gateway is sent one mapping per port.
    let sent = state(&s, &gw).await;
    let mapped: Vec<u64> =
        sent.body["ports"].as_array().into_iter().flatten().filter_map(|p| p["mappedPort"].as_u64()).collect();
    assert_eq!(mapped, [52222, 52223], "{sent:?}");
}

// Finding 17: gateway names were global across subscriptions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_belong_to_their_subscription_and_are_attached_only_where_one_may_act() {
    let s = TestServer::start(BIN, &[]);
    // SUB_B's gateway joins as gw-prod-a.
    let tb = join_token(&s, SUB_B, "net", "gateway", json!({})).await;
    let (b_id, b_cred) = joined(&s, &tb, "gw-prod-a", "gateway", json!({"publicAddress": "198.51.100.99"})).await;
    // SUB_A's operator attaches app7 to that name: there is no such gateway in SUB_A.
    let operator = s.principal_with_role("opa", "Contributor", &format!("/subscriptions/{SUB}")).await;
    let app7 = attach(SUB, "apps", "app7", "10.7.0.7", "gw-prod-a");
    let a = as_user(&s, &operator, Method::PUT, &s.url("/api/v1/vms"), Some(&app7)).await;
    assert_eq!((a.status, a.code()), (StatusCode::BAD_REQUEST, "InvalidVirtualMachine"), "{a:?}");
    assert!(a.body["error"]["message"].as_str().unwrap_or("").contains(SUB), "{a:?}");
    // Not even the owner can route SUB_A's VM through SUB_B's gateway.
    assert_eq!(s.json(Method::PUT, &s.url("/api/v1/vms"), &app7).await.status, StatusCode::BAD_REQUEST);

    // SUB_A's own gateway of the same name, in resource group edge.
    let ta = join_token(&s, SUB, "edge", "gateway", json!({})).await;
    let (a_id, _) = joined(&s, &ta, "gw-prod-a", "gateway", json!({"publicAddress": "203.0.113.7"})).await;
    // Attaching needs write where the gateway is managed, not only on the VM.
    let apps_only =
        s.principal_with_role("appsop", "Contributor", &format!("/subscriptions/{SUB}/resourceGroups/apps")).await;
    let a = as_user(&s, &apps_only, Method::PUT, &s.url("/api/v1/vms"), Some(&app7)).await;
    assert_eq!((a.status, a.code()), (StatusCode::FORBIDDEN, "AuthorizationFailed"), "{a:?}");
    assert!(a.body["error"]["message"].as_str().unwrap_or("").contains("resourceGroups/edge"), "{a:?}");
    let a = as_user(&s, &operator, Method::PUT, &s.url("/api/v1/vms"), Some(&app7)).await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
    assert_eq!(a.body["enforcement"]["agent"], "gw-prod-a");
    let enforcing = agents(&s).await;
    assert!(enforcing.iter().any(|g| g["id"] == a_id.as_str() && g["subscription"] == SUB));

    // SUB_A's grant goes to SUB_A's gateway, with SUB_A's address; SUB_B's gateway sees nothing.
    let id7 = vm_id("apps", "app7");
    assert_eq!(
        s.json(Method::PUT, &s.policy_url("apps", "westeurope", "default"), &policy(&id7, 22, Some(50022)))
            .await
            .status,
        StatusCode::OK
    );
    let grant = json!({"virtualMachines": [{"id": id7, "ports": [{"number": 22, "duration": "PT5M", "allowedSourceAddressPrefix": "192.0.2.7"}]}]});
    let g = s.json(Method::POST, &s.initiate_url("apps", "westeurope", "default"), &grant).await;
    assert_eq!(g.status, StatusCode::ACCEPTED, "{g:?}");
    assert_eq!(g.body["virtualMachines"][0]["publicIpAddress"], "203.0.113.7", "{g:?}");
    let b_state = state(&s, &b_cred).await;
    assert_eq!(
        (b_state.body["ports"].as_array().map(Vec::len), b_state.body["grants"].as_array().map(Vec::len)),
        (Some(0), Some(0)),
        "{b_state:?}"
    );
    // Revoking SUB_B's gateway leaves SUB_A's alone.
    assert_eq!(s.send(Method::DELETE, &s.url(&format!("/api/v1/agents/{b_id}")), None).await.status, StatusCode::OK);
    assert_eq!(vm(&s, SUB, "apps", "app7").await["enforcement"]["agent"], "gw-prod-a");
}
