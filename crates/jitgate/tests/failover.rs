//! An agent given two replicas of the control plane (two `jitgate serve` processes on one
//! PostgreSQL database) fails over when the one it talks to is killed: it keeps its credential
//! (no second join), keeps the nftables state it holds, and applies what is initiated through
//! the other replica; with every replica gone it keeps that state.
//!
//! The replicas run in this namespace (they reach PostgreSQL on 127.0.0.1); the agent runs in a
//! network namespace of its own with real nftables, and reaches each replica through a TCP relay
//! listening inside that namespace. Needs root, `ip`, `nft` and PostgreSQL; skips with a printed
//! reason otherwise (and fails under `CI=true`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may panic on a failed expectation.

use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use jitgate_netns::{veth, KillOnDrop, Netns};
use jitgate_store_postgres::testdb::TestDatabase;
use jitgate_testkit::{agents, eventually, vm_id, LocalServer, TestServer, SUB};

const BIN: &str = env!("CARGO_BIN_EXE_jitgate");
const A: &str = "10.9.0.1";
const B: &str = "10.9.0.3";

/// A TCP relay: a listener inside a namespace whose connections are carried to `upstream` in
/// this one. A connection whose upstream cannot be reached is closed at once, as a dead
/// replica's would be. Stops accepting when dropped.
struct Relay {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl Relay {
    fn start(ns: &Netns, upstream: SocketAddr) -> Relay {
        let listener = ns.run(|| TcpListener::bind("127.0.0.1:0")).expect("enter the namespace").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((down, _)) => {
                        std::thread::spawn(move || pipe(down, upstream));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Relay { port, stop }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Copies both ways until either side closes, then closes the other.
fn pipe(down: TcpStream, upstream: SocketAddr) {
    let _ = down.set_nonblocking(false);
    let Ok(up) = TcpStream::connect(upstream) else { return };
    let (Ok(mut down_r), Ok(mut up_w)) = (down.try_clone(), up.try_clone()) else { return };
    let forward = std::thread::spawn(move || {
        let _ = std::io::copy(&mut down_r, &mut up_w);
        let _ = up_w.shutdown(Shutdown::Write);
    });
    let (mut up_r, mut down_w) = (up, down);
    let _ = std::io::copy(&mut up_r, &mut down_w);
    let _ = down_w.shutdown(Shutdown::Both);
    let _ = up_r.shutdown(Shutdown::Both);
    let _ = forward.join();
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().and_then(|p| p.trim_end_matches('/').parse().ok()).expect("a port in the URL")
}

/// The agent's grants for IPv4 sources, as `nft` lists them inside the agent's namespace.
fn allow4(v: &Netns) -> String {
    v.exec("nft", &["list", "set", "inet", "jitgate", "allow4"]).unwrap_or_default()
}

/// The revision the agent last reported, as `s` lists it.
async fn applied_revision(s: &TestServer) -> u64 {
    let listed = s.send(Method::GET, &s.url("/api/v1/agents"), None).await;
    listed.body["value"][0]["appliedRevision"].as_u64().unwrap_or(0)
}

/// The timeout the kernel element for `source` was programmed with (`timeout 59m59s935ms`): it
/// changes only when the element is made again.
fn programmed_timeout(v: &Netns, source: &str) -> Option<String> {
    let set = allow4(v);
    let at = set.find(&format!("{source} . tcp . 22 timeout "))?;
    set[at..].split_whitespace().nth(6).map(|t| t.trim_end_matches(',').to_owned())
}

fn policy_url(s: &TestServer) -> String {
    s.policy_url("rg", "westeurope", "default")
}

/// Initiates port 22 for `source` through `s`, waiting until it is applied.
async fn initiate(s: &TestServer, source: &str) -> Value {
    let body = json!({"virtualMachines": [{"id": vm_id("rg", "vm1"), "ports": [
        {"number": 22, "allowedSourceAddressPrefix": source, "duration": "PT1H"}]}]});
    let url = s.initiate_url("rg", "westeurope", "default") + "&wait=applied";
    let a = s.json(Method::POST, &url, &body).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{a:?}");
    a.body
}

/// Two replicas on one database, a VM namespace whose agent reaches them through relays (the
/// first listed first), the policy written and one grant (for `A`) applied through the first.
struct Cluster {
    agent: KillOnDrop,
    relay_a: Relay,
    relay_b: Relay,
    a: TestServer,
    b: TestServer,
    c: Netns,
    v: Netns,
    state_dir: std::path::PathBuf,
    log_path: std::path::PathBuf,
    bundle: std::path::PathBuf,
    _db: TestDatabase,
    _tmp: tempfile::TempDir,
}

impl Cluster {
    fn agent_log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

/// Starts a [`Cluster`] with `extra` flags for both replicas, or skips test `name`.
async fn cluster(name: &str, extra: &[&str]) -> Option<Cluster> {
    if let Some(why) = jitgate_netns::unavailable() {
        jitgate_netns::skip(name, &why);
        return None;
    }
    let db = match TestDatabase::create().await {
        Ok(db) => db,
        Err(why) => {
            jitgate_netns::skip(name, &why);
            return None;
        }
    };
    let tmp = tempfile::tempdir().expect("tempdir");

    // Two replicas on one database, sharing the secrets key.
    let a = TestServer::start(BIN, &[&["--database-url", db.url()], extra].concat());
    let key = tmp.path().join("secrets.key");
    std::fs::copy(a.server.data_dir.join("secrets.key"), &key).expect("copy the secrets key");
    let flags = [&["--database-url", db.url(), "--secrets-key-file", key.to_str().expect("utf-8")], extra].concat();
    let mut b = LocalServer::start(std::path::Path::new(BIN), &flags).expect("replica b");
    b.token = a.server.token.clone();
    let b = TestServer::from(b);
    // Each replica made its own self-signed certificate: the agent trusts both.
    let bundle = tmp.path().join("replicas.pem");
    let pems = [&a.server.ca_cert, &b.server.ca_cert].map(|p| std::fs::read_to_string(p).expect("certificate"));
    std::fs::write(&bundle, pems.concat()).expect("bundle");

    // The VM: a namespace with an address, reaching each replica through a relay.
    let c = Netns::new("fc").expect("netns c");
    let v = Netns::new("fv").expect("netns v");
    veth(&c, &format!("{A}/24"), &v, "10.9.0.2/24").expect("veth");
    let relay_a = Relay::start(&v, SocketAddr::from(([127, 0, 0, 1], port_of(&a.server.url))));
    let relay_b = Relay::start(&v, SocketAddr::from(([127, 0, 0, 1], port_of(&b.server.url))));

    let token = agents::join_token(&a, SUB, "rg", "host", json!({})).await;
    let state_dir = tmp.path().join("agent");
    let log_path = tmp.path().join("agent.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut cmd = v.cmd(BIN);
    cmd.args(["agent", "--server", &format!("{},{}", relay_a.url(), relay_b.url()), "--state-dir"])
        .arg(&state_dir)
        .args(["--vm-name", "vm1", "--poll-seconds", "2", "--join-token", &token, "--ca-cert"])
        .arg(&bundle)
        .env("JITGATE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    let agent = KillOnDrop(cmd.spawn().expect("agent"));
    let cluster = Cluster { agent, relay_a, relay_b, a, b, c, v, state_dir, log_path, bundle, _db: db, _tmp: tmp };

    let vm = vm_id("rg", "vm1");
    let a = &cluster.a;
    let bound = eventually(Duration::from_secs(30), async || {
        a.send(Method::GET, &a.url(&format!("/api/v1/vms?id={vm}")), None).await.body["enforcement"]["agent"] == "vm1"
    })
    .await;
    assert!(bound, "the agent joined through the first replica: {}", cluster.agent_log());
    let ports = json!([{"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "*", "maxRequestAccessDuration": "PT3H"}]);
    let policy = json!({"properties": {"virtualMachines": [{"id": vm, "ports": ports}]}});
    let put = a.json(Method::PUT, &policy_url(a), &policy).await;
    assert_eq!(put.status, StatusCode::OK, "{put:?}");
    initiate(a, A).await;
    assert!(allow4(&cluster.v).contains(A), "applied through the first replica: {}", allow4(&cluster.v));
    Some(cluster)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_fails_over_to_the_other_replica_without_rejoining_and_keeps_its_kernel_state() {
    const NAME: &str = "an_agent_fails_over_to_the_other_replica_without_rejoining_and_keeps_its_kernel_state";
    let Some(cluster) = cluster(NAME, &[]).await else { return };
    let Cluster { mut agent, relay_a, relay_b, a, b, c, v, state_dir, log_path, _db, _tmp, .. } = cluster;
    let agent_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let credential: Value =
        serde_json::from_slice(&std::fs::read(state_dir.join("agent.json")).expect("credential")).expect("json");
    let agent_id = credential["agentId"].as_str().expect("agent id").to_owned();
    let before = applied_revision(&a).await;
    assert!(before > 0, "the agent reported to the first replica");

    let timeout_a = programmed_timeout(&v, A).expect("the grant's element");
    let replaced = || agent_log().matches("applied the whole table").count();
    let replaced_before = replaced();
    assert!(replaced_before > 0, "{}", agent_log());

    // The replica the agent talks to dies.
    let pid = a.server.pid().expect("pid");
    let killed = Command::new("kill").args(["-9", &pid.to_string()]).status().expect("kill");
    assert!(killed.success());
    drop(a);
    assert!(allow4(&v).contains(A), "the kernel state is kept: {}", allow4(&v));

    // Initiated through the other replica, applied by the same agent.
    initiate(&b, B).await;
    let both = eventually(Duration::from_secs(30), async || {
        let set = allow4(&v);
        set.contains(A) && set.contains(B)
    })
    .await;
    assert!(both, "both grants in the kernel: {} / {}", allow4(&v), agent_log());
    let listed = b.send(Method::GET, &b.url("/api/v1/agents"), None).await;
    let ids: Vec<&str> =
        listed.body["value"].as_array().expect("agents").iter().filter_map(|a| a["id"].as_str()).collect();
    assert_eq!(ids, [agent_id.as_str()], "the same agent, no other: {listed:?}");
    let joins = b.audit("operation=jitgate/agents/join/action").await;
    assert_eq!(joins.len(), 1, "joined once: {joins:?}");
    let reported = eventually(Duration::from_secs(30), async || applied_revision(&b).await > before).await;
    assert!(reported, "the agent reports to the replica it switched to");
    assert_eq!(replaced(), replaced_before, "the table was not rebuilt: {}", agent_log());
    assert_eq!(programmed_timeout(&v, A).as_deref(), Some(timeout_a.as_str()), "the element was not made again");
    let switched = format!("switched to {}", relay_b.url());
    assert_eq!(agent_log().matches(&switched).count(), 1, "the switch is logged once: {}", agent_log());

    // Every replica gone: the agent keeps what it applied.
    let pid = b.server.pid().expect("pid");
    assert!(Command::new("kill").args(["-9", &pid.to_string()]).status().expect("kill").success());
    drop(b);
    let waited = eventually(Duration::from_secs(30), async || {
        agent_log().matches("server unreachable; keeping the applied state").count() >= 2
    })
    .await;
    assert!(waited, "the agent retries: {}", agent_log());
    let set = allow4(&v);
    assert!(set.contains(A) && set.contains(B), "nothing was removed while no server answers: {set}");
    assert_eq!(replaced(), replaced_before, "the table was not rebuilt: {}", agent_log());
    assert_eq!(programmed_timeout(&v, A).as_deref(), Some(timeout_a.as_str()), "{set}");
    assert!(agent.0.try_wait().expect("wait").is_none(), "the agent keeps running: {}", agent_log());
    agent.kill9();
    drop((relay_a, relay_b, c, v, _db));
}

/// The scenario of a replica dying under load: initiates stream through a client that knows
/// both replicas while the replica the agent and the client talk to is killed with `-9`. Every
/// initiate is acknowledged exactly once (a retry on the other replica carries the same
/// `x-ms-client-request-id` and gets the first answer), every acknowledged grant is in the
/// agent's kernel set, short grants still close at their end time (the kernel's timeouts) and
/// are recorded as expired by the surviving replica (which takes over the expiry sweep's lease),
/// and the audit chain verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_stream_loses_and_doubles_no_acknowledged_grant() {
    use jitgate_api_types::arm::{InitiateIn, InitiatePortIn, InitiateVmIn};
    const NAME: &str = "a_replica_killed_mid_stream_loses_and_doubles_no_acknowledged_grant";
    const TOTAL: u32 = 60;
    const KILL_AFTER: u32 = 20;
    let Some(cluster) = cluster(NAME, &["--lease-ttl", "2s"]).await else { return };
    let settings = jitgate_client::Settings::with_urls([cluster.a.server.url.as_str(), cluster.b.server.url.as_str()])
        .token(cluster.a.server.token.clone())
        .ca_cert_path(Some(&cluster.bundle));
    let client = jitgate_client::Client::new(settings).expect("client");
    let policy = format!(
        "/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Security/locations/westeurope/jitNetworkAccessPolicies/default"
    );
    // Every tenth grant is short: it ends eight seconds after it was asked for.
    let short = time::Duration::seconds(8);
    let source = |n: u32| format!("10.77.0.{n}");
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel();
    let stream = tokio::spawn({
        let vm = vm_id("rg", "vm1");
        async move {
            let mut failures = Vec::new();
            let mut last_end = time::OffsetDateTime::now_utc();
            for n in 1..=TOTAL {
                let mut port = InitiatePortIn {
                    number: Some(22),
                    allowed_source_address_prefix: Some(source(n)),
                    ..InitiatePortIn::default()
                };
                if n % 10 == 0 {
                    last_end = time::OffsetDateTime::now_utc() + short;
                    let end = last_end.format(&time::format_description::well_known::Rfc3339).expect("time");
                    port.end_time_utc = Some(end);
                } else {
                    port.duration = Some("PT1H".into());
                }
                let body = InitiateIn {
                    virtual_machines: Some(vec![InitiateVmIn { id: Some(vm.clone()), ports: Some(vec![port]) }]),
                    justification: Some("stream".into()),
                    start_time_utc: None,
                };
                match client.arm().initiate(&policy, &body, false).await {
                    Ok(_) => {
                        let _ = acked_tx.send(n);
                    }
                    Err(e) => failures.push(format!("{n}: {e}")),
                }
            }
            (failures, last_end)
        }
    });
    // Mid-stream, the first replica (the agent's and the client's) dies.
    let mut acked = Vec::new();
    while let Some(n) = acked_rx.recv().await {
        acked.push(n);
        if acked.len() == KILL_AFTER as usize {
            let pid = cluster.a.server.pid().expect("pid");
            assert!(Command::new("kill").args(["-9", &pid.to_string()]).status().expect("kill").success());
        }
    }
    let (failures, last_end) = stream.await.expect("joined");
    assert!(
        failures.is_empty(),
        "every initiate was acknowledged (through the other replica after the kill): {failures:?}"
    );
    assert_eq!(acked, (1..=TOTAL).collect::<Vec<_>>(), "each acknowledged once, in order");

    // None doubled: one request per source, as the surviving replica records them.
    let b = &cluster.b;
    let got = b.send(Method::GET, &policy_url(b), None).await;
    let requests = got.body["properties"]["requests"].as_array().cloned().unwrap_or_default();
    for n in 1..=TOTAL {
        let wanted = source(n);
        let count = requests
            .iter()
            .filter(|r| r["virtualMachines"][0]["ports"][0]["allowedSourceAddressPrefix"] == wanted.as_str())
            .count();
        assert_eq!(count, 1, "one request for {wanted}: {requests:?}");
    }
    // None lost: every acknowledged grant reaches the kernel.
    let v = &cluster.v;
    let all_in = eventually(Duration::from_secs(30), async || {
        let set = allow4(v);
        (1..=TOTAL).all(|n| set.contains(&format!("{} . tcp . 22", source(n))))
    })
    .await;
    assert!(all_in, "every acknowledged grant is in the kernel: {} / {}", allow4(v), cluster.agent_log());

    // Expiries on time: the kernel drops the short grants at their end; the surviving replica's
    // sweep records them as expired.
    let wait = last_end - time::OffsetDateTime::now_utc();
    tokio::time::sleep(Duration::try_from(wait).unwrap_or_default() + Duration::from_millis(500)).await;
    let set = allow4(v);
    for n in (10..=TOTAL).step_by(10) {
        assert!(!set.contains(&format!("{} . tcp . 22", source(n))), "{} closed at its end: {set}", source(n));
    }
    assert!(set.contains(&format!("{} . tcp . 22", source(1))), "the long grants stay: {set}");
    let recorded = eventually(Duration::from_secs(15), async || {
        let got = b.send(Method::GET, &policy_url(b), None).await;
        let requests = got.body["properties"]["requests"].as_array().cloned().unwrap_or_default();
        let expired =
            requests.iter().filter(|r| r["virtualMachines"][0]["ports"][0]["statusReason"] == "Expired").count();
        expired == (TOTAL / 10) as usize
    })
    .await;
    let got = b.send(Method::GET, &policy_url(b), None).await;
    let statuses: Vec<String> = got.body["properties"]["requests"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| r["virtualMachines"][0]["ports"][0]["statusReason"].to_string())
        .collect();
    assert!(recorded, "the surviving replica swept the short grants: {statuses:?}");
    let verified = b.send(Method::GET, &b.url("/api/v1/audit/verify"), None).await;
    assert_eq!(verified.body["valid"], true, "{verified:?}");
}

/// A URL where nothing listens: a port bound, then let go.
fn dead_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    format!("https://127.0.0.1:{}", listener.local_addr().expect("addr").port())
}

#[test]
fn the_cli_takes_a_list_of_urls_and_moves_past_a_dead_one() {
    let s = TestServer::start(BIN, &[]);
    let dead = dead_url();
    let run = |env_url: &str, args: &[&str]| {
        let mut cmd = Command::new(BIN);
        s.server.client_env(&mut cmd).env("JITGATE_URL", env_url).args(args);
        cmd.output().expect("cli runs")
    };

    // JITGATE_URL as a comma list.
    let out = run(&format!("{dead},{}", s.server.url), &["whoami", "-o", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // --url repeated, and --server as its alias: the flags replace the environment.
    let out = run("https://unused.invalid:1", &["vm", "list", "--url", &dead, "--server", &s.server.url]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Nobody answers: the error names every URL tried.
    let other = dead_url();
    let out = run(&format!("{dead},{other}"), &["vm", "list"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no server answered") && err.contains(&dead) && err.contains(&other), "{err}");
}
