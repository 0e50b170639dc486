//! The first hour of a new user: one server per data directory, certificates that verify off
//! the default loopback address, the CLI commands a first deployment needs, and errors that say
//! what to do next.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may panic on a failed expectation.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use jitgate_client::local::LocalServer;
use jitgate_testkit::{TestServer, SUB};

const BIN: &str = env!("CARGO_BIN_EXE_jitgate");

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// `jitgate serve` on `data_dir`, expected to stop on its own; its output.
fn serve_exits(data_dir: &Path, listen: &str) -> Output {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", listen, "--data-dir"])
        .arg(data_dir)
        .env("JITGATE_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("jitgate serve starts");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "the second server kept running");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

#[test]
fn a_second_server_on_the_same_data_dir_exits_naming_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let first = LocalServer::start_in(Path::new(BIN), &data, &[]).expect("first server");
    let out = serve_exits(&data, "127.0.0.1:0");
    let (_, err) = text(&out);
    assert!(!out.status.success(), "the second server must fail: {err}");
    let pid = first.pid().expect("pid");
    assert!(err.contains(&format!("PID {pid}")), "names the first server's PID {pid}: {err}");
    assert!(err.contains("--data-dir"), "says how to run a second one: {err}");
}

#[test]
fn a_busy_listen_address_says_to_choose_another() {
    let dir = tempfile::tempdir().unwrap();
    let first = LocalServer::start_in(Path::new(BIN), &dir.path().join("a"), &[]).expect("first server");
    let port = first.url.rsplit(':').next().unwrap().to_owned();
    let out = serve_exits(&dir.path().join("b"), &format!("127.0.0.1:{port}"));
    let (_, err) = text(&out);
    assert!(!out.status.success());
    assert!(err.contains("--listen"), "points at --listen: {err}");
}

/// The `SHA-256 …` fingerprint a server printed.
fn fingerprint(s: &LocalServer) -> String {
    let out = s.stdout();
    let line = out.lines().find(|l| l.starts_with("TLS certificate:")).expect("certificate line").to_owned();
    line.split("SHA-256 ").nth(1).unwrap().trim_end_matches(')').to_owned()
}

/// curl `url` trusting only `ca`; whether the TLS handshake verified (any HTTP status will do).
fn curl_verifies(url: &str, ca: &Path) -> bool {
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "--cacert"])
        .arg(ca)
        .arg(format!("{url}/healthz"))
        .output()
        .expect("curl runs");
    out.status.success()
}

#[test]
fn the_self_signed_certificate_covers_the_listen_address_and_follows_it() {
    if Command::new("curl").arg("--version").output().is_err() {
        jitgate_netns::skip("the_self_signed_certificate_covers_the_listen_address_and_follows_it", "no curl");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // 127.0.0.2 is not in the default names (localhost, 127.0.0.1, ::1).
    let mut s = LocalServer::start_with(&[], Path::new(BIN), &data, "127.0.0.2:0", &[]).expect("server");
    let login = s.stdout();
    assert!(login.contains(&format!("export JITGATE_URL={}", s.url)), "login block names the URL:\n{login}");
    assert!(s.url.starts_with("https://127.0.0.2:"), "{}", s.url);
    assert!(curl_verifies(&s.url, &s.ca_cert), "curl verifies {}", s.url);
    // The CLI with the login block's settings.
    let out = s.client_env(Command::new(BIN).args(["vm", "list"])).output().unwrap();
    assert!(out.status.success(), "the CLI verifies the certificate: {:?}", text(&out));
    let first = fingerprint(&s);
    s.stop().unwrap();

    // Another address: a new certificate, the old fingerprint in the log.
    let mut s = LocalServer::start_with(&[], Path::new(BIN), &data, "127.0.0.3:0", &[]).expect("server");
    let second = fingerprint(&s);
    assert_ne!(first, second, "a certificate that does not cover 127.0.0.3 is replaced");
    assert!(curl_verifies(&s.url, &s.ca_cert));
    s.stop().unwrap();

    // A --tls-san the certificate lacks: replaced too; one it has: kept.
    let mut s = LocalServer::start_with(&[], Path::new(BIN), &data, "127.0.0.1:0", &["--tls-san", "jit.example"])
        .expect("server");
    let third = fingerprint(&s);
    assert_ne!(second, third, "--tls-san is not ignored once a certificate exists");
    s.stop().unwrap();
    let s = LocalServer::start_with(&[], Path::new(BIN), &data, "127.0.0.1:0", &[]).expect("server");
    assert_eq!(third, fingerprint(&s), "a certificate that covers everything is kept");
}

#[test]
fn the_login_block_is_not_printed_for_a_certificate_that_does_not_cover_the_url() {
    let dir = tempfile::tempdir().unwrap();
    // A certificate of our own that covers only localhost's names.
    let sd = dir.path().join("own");
    std::fs::create_dir_all(&sd).unwrap();
    let own = LocalServer::start_in(Path::new(BIN), &sd, &[]).expect("server");
    let (cert, key) = (sd.join("tls/cert.pem"), sd.join("tls/key.pem"));
    drop(own);
    let data = dir.path().join("data");
    let s = LocalServer::start_with(
        &[],
        Path::new(BIN),
        &data,
        "127.0.0.2:0",
        &["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()],
    )
    .expect("server");
    let out = s.stdout();
    assert!(!out.contains("export JITGATE_URL="), "no login block for a URL that will not verify:\n{out}");
    assert!(out.contains("does not cover 127.0.0.2"), "says why:\n{out}");
}

/// The CLI against `s` as its admin, with the test subscription.
fn cli(s: &TestServer, args: &[&str]) -> Output {
    let mut c = Command::new(BIN);
    c.env_remove("JITGATE_CONFIG").env("JITGATE_SUBSCRIPTION", SUB).args(args);
    s.server.client_env(&mut c).output().unwrap()
}

#[tokio::test]
async fn an_agent_without_a_vm_name_joins_as_the_vm_its_token_names() {
    use jitgate_testkit::agents::join;
    use serde_json::json;
    let s = TestServer::start(BIN, &[]);
    // The operator registered web1 (agentless) and makes a token for it with the CLI.
    let web1 = s.register_vm("prod", "web1", "Linux").await;
    let out = cli(
        &s,
        &["agent", "token", "create", "--subscription", SUB, "--resource-group", "prod", "--location", "westeurope"],
    );
    assert!(out.status.success(), "{:?}", text(&out));
    let plain = text(&out).0.trim().to_owned();
    let out = cli(
        &s,
        &[
            "agent",
            "token",
            "create",
            "--subscription",
            SUB,
            "--resource-group",
            "prod",
            "--location",
            "westeurope",
            "--vm",
            "web1",
        ],
    );
    assert!(out.status.success(), "{:?}", text(&out));
    let for_web1 = text(&out).0.trim().to_owned();
    // A plain token with the host's name (`vm`) makes a VM of that name, as before …
    let a = join(&s, &plain, "vm", "host", json!({"nameIsHostname": true, "addresses": ["10.0.0.9"]})).await;
    assert_eq!(a.status, 201, "{a:?}");
    assert_eq!(a.body["name"], "vm");
    // … but the agent run with the token made for web1 and no --vm-name joins as web1.
    let a = join(&s, &for_web1, "vm2", "host", json!({"nameIsHostname": true, "addresses": ["10.0.0.5"]})).await;
    assert_eq!(a.status, 201, "{a:?}");
    assert_eq!(a.body["name"], "web1");
    assert_eq!(a.body["vmId"].as_str().map(str::to_ascii_lowercase), Some(web1.to_ascii_lowercase()));
    let vm = s.send(reqwest::Method::GET, &s.url("/api/v1/vms"), None).await;
    let web = vm.body["value"].as_array().unwrap().iter().find(|v| v["name"] == "web1").unwrap().clone();
    assert_eq!(web["address"], "10.0.0.5", "the agent's address: {web}");
    assert!(web["enforcement"]["agent"].is_string(), "web1 has its agent now: {web}");
    // A token made for web1 refuses an agent the operator named otherwise.
    let out = cli(
        &s,
        &[
            "agent",
            "token",
            "create",
            "--subscription",
            SUB,
            "--resource-group",
            "prod",
            "--location",
            "westeurope",
            "--vm",
            "web1",
        ],
    );
    let again = text(&out).0.trim().to_owned();
    let a = join(&s, &again, "db1", "host", json!({})).await;
    assert_eq!((a.status.as_u16(), a.code()), (401, "InvalidJoinToken"), "{a:?}");
}

#[test]
fn principals_whoami_and_own_tokens_from_the_cli() {
    let s = TestServer::start(BIN, &[]);
    let out = cli(&s, &["principal", "create", "alice"]);
    assert!(out.status.success(), "{:?}", text(&out));
    let out = cli(&s, &["principal", "create", "bot", "--type", "ServicePrincipal", "-o", "json"]);
    let bot: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!((bot["name"].as_str(), bot["type"].as_str()), (Some("bot"), Some("ServicePrincipal")));
    let list = text(&cli(&s, &["principal", "list"])).0;
    assert!(list.contains("alice") && list.contains("bot") && list.starts_with("NAME"), "{list}");

    // whoami: the owner, its token, its role.
    let (me, _) = text(&cli(&s, &["whoami"]));
    assert!(me.contains("owner") && me.contains("API token") && me.contains("Owner"), "{me}");
    let me: serde_json::Value = serde_json::from_slice(&cli(&s, &["whoami", "-o", "json"]).stdout).unwrap();
    let my_token = me["tokenId"].as_i64().expect("token id");
    assert_eq!(me["roleAssignments"][0]["scope"], "/");

    // token create names the id on stderr, the token alone on stdout; -o json gives both.
    let out = cli(&s, &["token", "create", "--principal", "alice", "--expires-in", "1h"]);
    let (token, err) = text(&out);
    let token = token.trim().to_owned();
    assert!(token.starts_with("jg_") && !token.contains(' '), "{token}");
    let id: i64 = err.split_whitespace().nth(1).and_then(|w| w.parse().ok()).expect("token id on stderr");
    let out = cli(&s, &["token", "create", "--principal", "alice", "-o", "json"]);
    let both: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(both["id"].is_i64() && both["token"].is_string(), "{both}");

    // token list without --principal: one's own.
    let mine = text(&cli(&s, &["token", "list"])).0;
    assert!(mine.contains(&format!("\n{my_token} ")) || mine.contains(&format!("\n{my_token}\t")), "{mine}");
    assert!(!mine.lines().any(|l| l.starts_with(&format!("{id} "))), "alice's token is not the owner's:\n{mine}");
    let alices = text(&cli(&s, &["token", "list", "--principal", "alice"])).0;
    assert!(alices.lines().any(|l| l.starts_with(&format!("{id} "))), "{alices}");
    // As alice: whoami and her own list work without any role.
    let mut c = Command::new(BIN);
    c.env_remove("JITGATE_CONFIG").args(["whoami"]);
    s.server.client_env(&mut c).env("JITGATE_TOKEN", &token);
    let (alice, err) = text(&c.output().unwrap());
    assert!(alice.contains("alice") && alice.contains("no role assignments"), "{alice}{err}");

    let out = cli(&s, &["principal", "delete", "alice"]);
    assert!(out.status.success(), "{:?}", text(&out));
    let list = text(&cli(&s, &["principal", "list"])).0;
    assert!(!list.lines().any(|l| l.starts_with("alice ")), "{list}");
}

#[test]
fn agent_uninstall_removes_the_table_and_the_state_dir() {
    let test = "agent_uninstall_removes_the_table_and_the_state_dir";
    if let Some(why) = jitgate_netns::unavailable() {
        jitgate_netns::skip(test, &why);
        return;
    }
    let ns = jitgate_netns::Netns::new("un").expect("namespace");
    ns.exec("nft", &["add", "table", "inet", "jitgate"]).expect("a table as an agent leaves it");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("agent");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("agent.json"), "{}").unwrap();
    // Not an agent's state directory: nothing is touched.
    let out = ns.cmd(BIN).args(["agent", "uninstall", "--state-dir"]).arg(dir.path()).output().unwrap();
    assert!(!out.status.success(), "{:?}", text(&out));
    assert!(ns.exec("nft", &["list", "table", "inet", "jitgate"]).is_ok(), "the table stays");
    let out = ns.cmd(BIN).args(["agent", "uninstall", "--state-dir"]).arg(&state).output().unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(ns.exec("nft", &["list", "table", "inet", "jitgate"]).is_err(), "the table is gone");
    assert!(!state.exists(), "the state directory is gone");
    // Twice is fine: nothing left to remove.
    let out = ns.cmd(BIN).args(["agent", "uninstall", "--state-dir"]).arg(&state).output().unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
}

#[tokio::test]
async fn a_vm_without_an_enforcement_point_is_marked_and_warned_about_everywhere() {
    let s = TestServer::start(BIN, &[]);
    s.register_vm("prod", "web1", "Linux").await;
    let out = cli(&s, &["policy", "set", "-g", "prod", "-l", "westeurope", "--vm", "web1", "--port", "22"]);
    let (_, err) = text(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("web1 is NOT ENFORCED (NotEnforced)"), "policy set warns: {err}");

    // The API marks the VM in the initiate answer and says so in a header.
    let body = serde_json::json!({"virtualMachines": [{"id": jitgate_testkit::vm_id("prod", "web1"),
        "ports": [{"number": 22, "duration": "PT5M", "allowedSourceAddressPrefix": "198.51.100.1"}]}]});
    let a = s.json(reqwest::Method::POST, &s.initiate_url("prod", "westeurope", "default"), &body).await;
    assert_eq!(a.status, 202, "{a:?}");
    assert_eq!(a.body["virtualMachines"][0]["enforcement"], "NotEnforced", "{a:?}");
    assert!(a.body["virtualMachines"][0]["enforcementWarning"].as_str().unwrap().contains("no enforcement point"));
    let header = |a: &jitgate_testkit::Answer| {
        a.headers.get("x-jitgate-enforcement").and_then(|h| h.to_str().ok()).unwrap_or("").to_owned()
    };
    assert_eq!(header(&a), "not enforced: web1 (NotEnforced)");
    // ?wait=applied answers at once with the marker, not "applied".
    let started = Instant::now();
    let url = s.initiate_url("prod", "westeurope", "default") + "&wait=applied&timeout=5";
    let a = s.json(reqwest::Method::POST, &url, &body).await;
    assert!(started.elapsed() < Duration::from_secs(2), "at once, not after the timeout");
    assert_eq!((a.status.as_u16(), header(&a).as_str()), (202, "not enforced: web1 (NotEnforced)"), "{a:?}");

    // The CLI: a warning without --wait, exit 6 with it.
    let out =
        cli(&s, &["access", "request", "--vm", "web1", "--port", "22", "--for", "5m", "--source", "198.51.100.2/32"]);
    let (stdout, err) = text(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("NOT ENFORCED") && stdout.contains("Initiated"), "{stdout}{err}");
    let out = cli(
        &s,
        &["access", "request", "--vm", "web1", "--port", "22", "--for", "5m", "--source", "198.51.100.3/32", "--wait"],
    );
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(!err.contains("open on every enforcement point"), "no false success: {err}");
    assert!(err.contains("no enforcement point"), "{err}");

    // connect refuses unless told otherwise.
    let out = cli(&s, &["connect", "web1", "--source", "198.51.100.4/32", "--", "true"]);
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(err.contains("--allow-unenforced"), "{err}");
    let out = cli(&s, &["connect", "web1", "--source", "198.51.100.4/32", "--allow-unenforced", "--", "true"]);
    assert!(out.status.success(), "{:?}", text(&out));
}

/// The CLI against `s` with `env` changed; its stderr and exit code.
fn cli_env(s: &TestServer, args: &[&str], env: &[(&str, Option<&str>)]) -> (String, Option<i32>) {
    let mut c = Command::new(BIN);
    c.env_remove("JITGATE_CONFIG").env("JITGATE_SUBSCRIPTION", SUB).args(args);
    s.server.client_env(&mut c);
    for (k, v) in env {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    let out = c.output().unwrap();
    (text(&out).1, out.status.code())
}

#[test]
fn errors_say_what_to_do_next() {
    let s = TestServer::start(BIN, &[]);
    let config = tempfile::tempdir().unwrap();
    let profile = config.path().join("profile");
    let no_profile = ("JITGATE_CONFIG", Some(profile.to_str().unwrap()));
    // An untrusted certificate: give --ca-cert.
    let (err, _) = cli_env(&s, &["vm", "list"], &[("JITGATE_CA_CERT", None), no_profile]);
    assert!(err.contains("hint:") && err.contains("--ca-cert DATA_DIR/tls/cert.pem"), "{err}");
    // An unknown principal: create it.
    let (err, code) = cli_env(&s, &["token", "create", "--principal", "nobody"], &[]);
    assert_eq!(code, Some(4), "{err}");
    assert!(err.contains("hint: create the principal first: jitgate principal create"), "{err}");
    // A subscription that is not a GUID: what a subscription is.
    let (err, _) = cli_env(&s, &["policy", "list"], &[("JITGATE_SUBSCRIPTION", Some("prod"))]);
    assert!(err.contains("uuidgen"), "{err}");
    // A policy that does not exist: how to make one.
    let (err, _) = cli_env(&s, &["policy", "get", "-g", "prod", "-l", "westeurope"], &[]);
    assert!(err.contains("hint:") && err.contains("jitgate policy set"), "{err}");
    // A revoked token: sign in again.
    let (err, code) = cli_env(&s, &["vm", "list"], &[("JITGATE_TOKEN", Some("jg_not-a-token"))]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("hint:") && err.contains("jitgate login"), "{err}");
    // Nothing listening: is the server running?
    let (err, _) = cli_env(&s, &["vm", "list"], &[("JITGATE_URL", Some("https://127.0.0.1:9"))]);
    assert!(err.contains("hint:") && err.contains("jitgate serve"), "{err}");
}

#[test]
fn a_refused_join_says_why_and_what_to_do_without_raw_json() {
    let s = TestServer::start(BIN, &[]);
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["agent", "--server", &s.server.url, "--join-token", "jgj_unknown", "--ca-cert"])
        .arg(&s.server.ca_cert)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env("JITGATE_LOG", "error")
        .output()
        .unwrap();
    let (_, err) = text(&out);
    assert!(!out.status.success());
    assert!(!err.contains("{\""), "no raw JSON: {err}");
    assert!(
        err.contains("refused to let this agent join (401)") && err.contains("jitgate agent token create"),
        "{err}"
    );
}

#[tokio::test]
async fn policy_set_says_every_port_option_on_the_command_line() {
    let s = TestServer::start(BIN, &[]);
    s.register_vm("prod", "web1", "Linux").await;
    let out = cli(
        &s,
        &[
            "policy",
            "set",
            "-g",
            "prod",
            "-l",
            "westeurope",
            "--vm",
            "web1",
            "--port",
            "22/tcp,approval=30m,map=50022,cut",
        ],
    );
    let (stdout, err) = text(&out);
    assert!(out.status.success(), "{err}");
    assert!(stdout.contains("approval=PT30M,map=50022,cut"), "the table shows the options:\n{stdout}");
    let a = s.send(reqwest::Method::GET, &s.policy_url("prod", "westeurope", "default"), None).await;
    let port = &a.body["properties"]["virtualMachines"][0]["ports"][0];
    assert_eq!(
        (&port["requireApproval"], &port["approvalTimeout"], &port["mappedPort"], &port["cutSessionsAtExpiry"]),
        (&serde_json::json!(true), &serde_json::json!("PT30M"), &serde_json::json!(50022), &serde_json::json!(true)),
        "{a:?}"
    );
}

#[test]
fn help_and_man_pages_say_what_jitgate_is_and_every_referenced_page_exists() {
    let help = Command::new(BIN).arg("--help").output().unwrap();
    let help = text(&help).0;
    assert!(help.starts_with("Just-in-time network access"), "{help}");
    assert!(!help.contains("clap"), "{help}");
    let page = text(&Command::new(BIN).arg("man").output().unwrap()).0;
    assert!(
        page.contains("jitgate \\- Just\\-in\\-time network access"),
        "NAME section: {}",
        &page[..400.min(page.len())]
    );
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN).args(["man", "--dir"]).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    // Every jitgate-…(1) page the main page refers to was written.
    let plain = page.replace("\\-", "-");
    let mut referenced = 0;
    for word in plain.split(|c: char| c.is_whitespace() || c == '"') {
        if let Some(name) = word.strip_suffix("(1)").filter(|n| n.starts_with("jitgate-")) {
            assert!(dir.path().join(format!("{name}.1")).is_file(), "{name}.1 missing");
            referenced += 1;
        }
    }
    assert!(referenced > 5, "the main page refers to its subcommands' pages:\n{plain}");
    assert!(dir.path().join("jitgate-serve.1").is_file() && dir.path().join("jitgate-agent-token-create.1").is_file());
}

#[test]
fn audit_and_role_lists_have_a_header_row() {
    let s = TestServer::start(BIN, &[]);
    let roles = text(&cli(&s, &["role", "list"])).0;
    assert!(roles.starts_with("NAME") && roles.contains("DESCRIPTION"), "{roles}");
    let audit = text(&cli(&s, &["audit", "list"])).0;
    assert!(audit.starts_with("SEQ") && audit.contains("OPERATION"), "{audit}");
}

#[tokio::test]
async fn agents_are_listed_and_removed_and_leave_with_their_vm() {
    use jitgate_testkit::agents::{join, join_token};
    use serde_json::json;
    let s = TestServer::start(BIN, &[]);
    let agents = |s: &TestServer| text(&cli(s, &["agent", "list"])).0;
    let t = join_token(&s, SUB, "prod", "host", json!({})).await;
    assert_eq!(join(&s, &t, "web1", "host", json!({"addresses": ["10.0.0.5"]})).await.status, 201);
    let t = join_token(&s, SUB, "prod", "host", json!({})).await;
    assert_eq!(join(&s, &t, "web2", "host", json!({"addresses": ["10.0.0.6"]})).await.status, 201);
    let list = agents(&s);
    assert!(list.contains("web1") && list.contains("web2"), "{list}");
    // `agent remove` (alias of rm) by name: revoked, gone from the list, its VM unsupported.
    let out = cli(&s, &["agent", "remove", "web1"]);
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(!agents(&s).lines().any(|l| l.contains(" web1 ")), "{}", agents(&s));
    let vms = text(&cli(&s, &["vm", "list", "--unsupported"])).0;
    assert!(vms.contains("web1"), "{vms}");
    // Removing a VM removes its host agent from the list.
    let out = cli(&s, &["vm", "rm", "web2"]);
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(!agents(&s).contains("web2"), "a stale agent stays listed:\n{}", agents(&s));
}

#[tokio::test]
async fn a_denied_requester_learns_why() {
    use serde_json::json;
    let s = TestServer::start(BIN, &[]);
    let vm = s.register_vm("prod", "web1", "Linux").await;
    let policy = json!({"properties": {"virtualMachines": [{"id": vm, "ports": [
        {"number": 22, "protocol": "*", "allowedSourceAddressPrefix": "*", "maxRequestAccessDuration": "PT3H", "requireApproval": true}]}]}});
    let a = s.json(reqwest::Method::PUT, &s.policy_url("prod", "westeurope", "default"), &policy).await;
    assert_eq!(a.status, 200, "{a:?}");
    let body = json!({"virtualMachines": [{"id": vm, "ports": [{"number": 22, "duration": "PT1H", "allowedSourceAddressPrefix": "198.51.100.1"}]}],
        "justification": "deploy"});
    let asked = s.json(reqwest::Method::POST, &s.initiate_url("prod", "westeurope", "default"), &body).await;
    let id = asked.body["id"].as_i64().expect("id");
    // Owner made the request; another principal with the approve action denies it.
    let approver = s.principal_with_role("ann", "Owner", "/").await;
    let mut c = Command::new(BIN);
    c.env_remove("JITGATE_CONFIG").args(["access", "deny", &id.to_string(), "--reason", "not during the freeze"]);
    s.server.client_env(&mut c).env("JITGATE_TOKEN", &approver);
    let out = c.output().unwrap();
    let (stdout, err) = text(&out);
    assert!(out.status.success(), "{err}");
    assert!(stdout.contains("the approver's reason: not during the freeze"), "{stdout}");
    // The request's own answer and the policy's history carry it.
    let r = s.send(reqwest::Method::GET, &s.url(&format!("/api/v1/requests/{id}")), None).await;
    assert_eq!(r.body["decisionReason"], "not during the freeze", "{r:?}");
    let p = s.send(reqwest::Method::GET, &s.policy_url("prod", "westeurope", "default"), None).await;
    assert_eq!(p.body["properties"]["requests"][0]["decisionReason"], "not during the freeze", "{p:?}");
}

#[tokio::test]
async fn a_request_outlives_its_policy() {
    use serde_json::json;
    let s = TestServer::start(BIN, &[]);
    let vm = s.register_vm("prod", "web1", "Linux").await;
    let policy = json!({"properties": {"virtualMachines": [{"id": vm, "ports": []}]}});
    let url = s.policy_url("prod", "westeurope", "default");
    assert_eq!(s.json(reqwest::Method::PUT, &url, &policy).await.status, 200);
    let body = json!({"virtualMachines": [{"id": vm, "ports": [{"number": 22, "duration": "PT1H", "allowedSourceAddressPrefix": "198.51.100.1"}]}]});
    let asked = s.json(reqwest::Method::POST, &s.initiate_url("prod", "westeurope", "default"), &body).await;
    let id = asked.body["id"].as_i64().expect("id");
    assert_eq!(s.send(reqwest::Method::DELETE, &url, None).await.status, 200);
    let r = s.send(reqwest::Method::GET, &s.url(&format!("/api/v1/requests/{id}")), None).await;
    assert_eq!(r.status, 200, "{r:?}");
    let port = &r.body["virtualMachines"][0]["ports"][0];
    assert_eq!(
        (port["status"].as_str(), port["statusReason"].as_str()),
        (Some("Revoked"), Some("PolicyDeleted")),
        "{r:?}"
    );
}
