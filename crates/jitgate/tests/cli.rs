//! The CLI end to end: the real binary against a real server, every command family, the
//! PowerShell-shaped policy file, bad files, exit codes, output formats, the login profile.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may panic on a failed expectation.

use std::process::{Command, Output};

use serde_json::Value;

use jitgate_testkit::{vm_id, TestServer, SUB};

const BIN: &str = env!("CARGO_BIN_EXE_jitgate");

struct Cli<'a> {
    s: &'a TestServer,
    config: std::path::PathBuf,
}

impl Cli<'_> {
    /// `jitgate` with the test's profile and subscription and no connection settings of its own.
    fn command(&self) -> Command {
        let mut c = Command::new(BIN);
        c.env("JITGATE_CONFIG", &self.config)
            .env_remove("JITGATE_URL")
            .env_remove("JITGATE_TOKEN")
            .env_remove("JITGATE_CA_CERT");
        c.env("JITGATE_SUBSCRIPTION", SUB);
        c
    }

    fn run_with(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = self.command();
        c.args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().expect("jitgate runs")
    }

    /// With the connection in the environment.
    fn run(&self, args: &[&str]) -> Output {
        let ca = self.s.server.ca_cert.display().to_string();
        self.run_with(
            args,
            &[("JITGATE_URL", &self.s.server.url), ("JITGATE_TOKEN", &self.s.server.token), ("JITGATE_CA_CERT", &ca)],
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "jitgate {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&a)).expect("JSON output")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_family_against_a_real_server() {
    let s = TestServer::start(BIN, &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let cli = Cli { s: &s, config: dir.path().join("profile.json") };
    for name in ["web1", "web2", "win1"] {
        let os = if name.starts_with("win") { "Windows" } else { "Linux" };
        cli.ok(&["vm", "add", "--id", &vm_id("prod", name), "--os", os, "-l", "westeurope", "--address", "10.0.0.4"]);
    }

    // policy set with --vm/--port (a VM by name), in three output formats.
    let p = cli.json(&[
        "policy",
        "set",
        "-g",
        "prod",
        "-l",
        "westeurope",
        "--vm",
        "web1",
        "--port",
        "22",
        "--port",
        "3389/tcp,from=10.0.0.0/24,from=10.1.0.0/24,max=PT1H",
        "--vm",
        "win1",
        "--port",
        "5986/tcp",
    ]);
    let vms = &p["properties"]["virtualMachines"];
    assert_eq!(vms[0]["id"], vm_id("prod", "web1"));
    assert_eq!(vms[0]["ports"][1]["allowedSourceAddressPrefixes"], serde_json::json!(["10.0.0.0/24", "10.1.0.0/24"]));
    assert_eq!(vms[1]["ports"][0]["number"], 5986, "ports belong to the --vm before them");
    let table = cli.ok(&["policy", "get", "-g", "prod", "-l", "westeurope"]);
    assert!(
        table.contains("VM")
            && table.contains("PORT")
            && table.contains("web1")
            && table.contains("10.0.0.0/24,10.1.0.0/24"),
        "{table}"
    );
    let yaml = cli.ok(&["policy", "get", "-g", "prod", "-l", "westeurope", "-o", "yaml"]);
    assert!(yaml.contains("maxRequestAccessDuration: PT1H") && yaml.contains("name: default"), "{yaml}");
    // --defaults: a VM without ports gets its OS default.
    let d = cli.json(&[
        "policy",
        "set",
        "-g",
        "prod",
        "-l",
        "northeurope",
        "--name",
        "other",
        "--vm",
        "web2",
        "--defaults",
    ]);
    assert_eq!(d["properties"]["virtualMachines"][0]["ports"][0]["number"], 22);

    // --file: the $JitPolicy array the PowerShell example builds, with @("*") as an array.
    let file = dir.path().join("jit.json");
    let ps = serde_json::json!([{"id": vm_id("prod", "web1"), "ports": [
        {"number": 22, "protocol": "*", "allowedSourceAddressPrefix": ["*"], "maxRequestAccessDuration": "PT3H"},
        {"number": 3389, "protocol": "*", "allowedSourceAddressPrefix": ["10.0.0.0/24"], "maxRequestAccessDuration": "PT2H"}]}]);
    std::fs::write(&file, ps.to_string()).expect("write");
    let f = cli.json(&["policy", "set", "-g", "prod", "-l", "westeurope", "--file", file.to_str().expect("utf8")]);
    assert_eq!(f["properties"]["virtualMachines"][0]["ports"][0]["allowedSourceAddressPrefix"], "*");
    assert_eq!(f["properties"]["virtualMachines"][0]["ports"][1]["maxRequestAccessDuration"], "PT2H");
    // Bad files: a clear error naming the field, exit 1.
    std::fs::write(&file, r#"[{"id": "x", "ports": [{"protocol": "*"}]}]"#).expect("write");
    let bad = cli.run(&["policy", "set", "-g", "prod", "-l", "westeurope", "--file", file.to_str().expect("utf8")]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("[0].ports[0].number"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    std::fs::write(&file, serde_json::json!([{"id": vm_id("prod", "web1"), "ports": [{"number": 22, "protocol": "ICMP", "allowedSourceAddressPrefix": "*", "maxRequestAccessDuration": "PT3H"}]}]).to_string()).expect("write");
    let bad = cli.run(&["policy", "set", "-g", "prod", "-l", "westeurope", "--file", file.to_str().expect("utf8")]);
    assert_eq!(bad.status.code(), Some(1));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("InvalidJitNetworkAccessPolicy") && err.contains("ICMP"),
        "the server's code and message: {err}"
    );

    // Lists filter; access requests; revoke.
    let all = cli.json(&["policy", "list"]);
    assert_eq!(all["value"].as_array().map(Vec::len), Some(2));
    let west = cli.json(&["policy", "list", "-g", "prod", "-l", "westeurope"]);
    assert_eq!(west["value"].as_array().map(Vec::len), Some(1));
    let r = cli.json(&[
        "access",
        "request",
        "--vm",
        "web1",
        "--port",
        "22",
        "--source",
        "203.0.113.7",
        "--for",
        "30m",
        "--justification",
        "cli",
    ]);
    assert_eq!(r["virtualMachines"][0]["ports"][0]["status"], "Initiated");
    let id = r["id"].as_i64().expect("id").to_string();
    let human = cli.ok(&["access", "request", "--vm", "web1", "--port", "3389", "--source", "10.0.0.9"]);
    assert!(human.contains("CONNECT TO") && human.contains("10.0.0.4:3389"), "{human}");
    cli.ok(&["access", "revoke", &id]);

    // Exit codes: 4 not found, 3 denied, 2 usage.
    assert_eq!(cli.run(&["access", "request", "--vm", "ghost", "--port", "22"]).status.code(), Some(4), "unknown VM");
    assert_eq!(cli.run(&["policy", "get", "-g", "prod", "-l", "westeurope", "--name", "nope"]).status.code(), Some(4));
    let ca = s.server.ca_cert.display().to_string();
    let denied = cli.run_with(
        &["policy", "list"],
        &[("JITGATE_URL", &s.server.url), ("JITGATE_TOKEN", "jg_wrong"), ("JITGATE_CA_CERT", &ca)],
    );
    assert_eq!(denied.status.code(), Some(3), "wrong token");
    assert!(String::from_utf8_lossy(&denied.stderr).contains("InvalidAuthenticationToken"));
    assert_eq!(cli.run(&["policy", "set", "--nonsense"]).status.code(), Some(2));
    assert_eq!(cli.run_with(&["policy", "list"], &[]).status.code(), Some(2), "no connection settings");

    // Tokens, VMs.
    let t = cli.ok(&["token", "create", "--principal", "owner", "--expires-in", "1h"]);
    assert!(t.trim().starts_with("jg_"), "the token alone: {t}");
    let tokens = cli.json(&["token", "list", "--principal", "owner"]);
    let newest = tokens["value"].as_array().and_then(|v| v.last()).cloned().expect("token");
    assert!(newest["expiresOn"].is_string());
    cli.ok(&["token", "revoke", &newest["id"].to_string()]);
    let unsupported = cli.json(&["vm", "list", "--unsupported"]);
    assert!(unsupported["value"].as_array().map(Vec::len).unwrap_or(0) >= 1);
    assert!(cli.ok(&["vm", "list"]).contains("ENFORCED BY"));
    cli.ok(&["policy", "delete", "-g", "prod", "-l", "northeurope", "--name", "other"]);
    assert_eq!(
        cli.run(&["policy", "delete", "-g", "prod", "-l", "northeurope", "--name", "other"]).status.code(),
        Some(4)
    );
    cli.ok(&["vm", "rm", "web2"]);
    let gw = cli.run(&["vm", "attach-gateway", "web1", "--gateway", "gw9", "--address", "10.8.0.2"]);
    assert_eq!(gw.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&gw.stderr).contains("gw9"), "names the missing gateway");

    // login: the profile (0600) replaces the environment.
    let out = cli.run_with(
        &["login", "--url", &s.server.url, "--token", &s.server.token, "--ca-cert", &ca, "--subscription", SUB],
        &[],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&cli.config).expect("profile").permissions().mode() & 0o777, 0o600);
    }
    let listed = cli.run_with(&["policy", "list", "-o", "json"], &[]);
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    let bad_login = cli.run_with(&["login", "--url", &s.server.url, "--token", "jg_nope", "--ca-cert", &ca], &[]);
    assert_eq!(bad_login.status.code(), Some(3));

    // Completions and the man page come from the same command tree.
    let bash = cli.ok(&["completions", "bash"]);
    assert!(bash.contains("jitgate") && bash.contains("policy"));
    assert!(cli.ok(&["completions", "zsh"]).contains("#compdef jitgate"));
    assert!(cli.ok(&["completions", "fish"]).contains("complete -c jitgate"));
    assert!(cli.ok(&["man"]).contains(".TH jitgate"));
    let help = cli.ok(&["policy", "set", "--help"]);
    assert!(help.contains("Examples:"));
    assert!(cli.ok(&["--help"]).contains("Exit codes: 0 ok, 1 error, 2 usage, 3 denied"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_runs_the_command_with_the_details_and_revokes_after() {
    let s = TestServer::start(BIN, &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let cli = Cli { s: &s, config: dir.path().join("profile.json") };
    cli.ok(&["vm", "add", "--id", &vm_id("prod", "web1"), "-l", "westeurope", "--address", "10.0.0.4"]);
    cli.ok(&["policy", "set", "-g", "prod", "-l", "westeurope", "--vm", "web1", "--port", "22"]);
    let out = cli.run(&[
        "connect",
        "web1",
        "--for",
        "10m",
        // web1 has no agent here: connecting needs the explicit flag (and says so).
        "--allow-unenforced",
        "--",
        "sh",
        "-c",
        "echo connecting to {host} port {port}; exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7), "the command's own exit code: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("connecting to 10.0.0.4 port 22"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not enforced") && err.contains("revoked"), "{err}");
    // The grant was revoked when the command ended.
    let requests = cli.json(&["access", "list", "--vm", "web1"]);
    let ports = &requests["value"][0]["virtualMachines"][0]["ports"][0];
    assert_eq!(
        (ports["status"].as_str(), ports["statusReason"].as_str()),
        (Some("Revoked"), Some("UserRequested")),
        "{requests}"
    );
    assert_eq!(cli.json(&["access", "list", "--active"])["value"], serde_json::json!([]));
    assert!(cli.ok(&["access", "list"]).contains("REQUESTOR"));
    // Agent join tokens: created alone on stdout, listed without secrets.
    let t =
        s.server.create_join_token(cli.command(), SUB, "prod", "westeurope", &["--ttl", "30m"]).expect("join token");
    assert!(t.starts_with("jgj_") && t.lines().count() == 1);
    let listed = cli.json(&["agent", "token", "list"]);
    assert_eq!(listed["value"][0]["state"], "unused");
    assert!(!listed.to_string().contains("jgj_"), "no secrets");

    // Approvals and extensions from the CLI: the owner asks, another principal decides.
    let file = dir.path().join("approval.json");
    let body = serde_json::json!({"properties": {"virtualMachines": [{"id": vm_id("prod", "web1"), "ports": [
        {"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "*", "maxRequestAccessDuration": "PT3H", "requireApproval": true},
        {"number": 2222, "protocol": "TCP", "allowedSourceAddressPrefix": "*", "maxRequestAccessDuration": "PT3H"}]}]}});
    std::fs::write(&file, body.to_string()).expect("write");
    cli.ok(&["policy", "set", "-g", "prod", "-l", "westeurope", "--file", file.to_str().expect("utf8")]);
    s.json(reqwest::Method::POST, &s.url("/api/v1/principals"), &serde_json::json!({"name": "boss"})).await;
    s.json(
        reqwest::Method::POST,
        &s.url("/api/v1/roleAssignments"),
        &serde_json::json!({"principal": "boss", "role": "Security Admin", "scope": "/"}),
    )
    .await;
    let boss = cli.ok(&["token", "create", "--principal", "boss"]).trim().to_owned();
    let ca = s.server.ca_cert.display().to_string();
    let as_boss = |args: &[&str]| {
        cli.run_with(args, &[("JITGATE_URL", &s.server.url), ("JITGATE_TOKEN", &boss), ("JITGATE_CA_CERT", &ca)])
    };
    let asked = cli.json(&[
        "access",
        "request",
        "--vm",
        "web1",
        "--port",
        "22",
        "--source",
        "203.0.113.50",
        "--justification",
        "patch",
    ]);
    assert_eq!(asked["virtualMachines"][0]["ports"][0]["status"], "Pending");
    let first = asked["id"].to_string();
    assert_eq!(cli.run(&["access", "approve", &first]).status.code(), Some(3), "no self-approval");
    let approved = as_boss(&["access", "approve", &first, "--reason", "ok", "-o", "json"]);
    assert!(approved.status.success(), "{}", String::from_utf8_lossy(&approved.stderr));
    // What the server holds afterwards, not only the exit code.
    let port_of = |id: &str| {
        let s = &s;
        let id = id.to_owned();
        async move {
            let a = s.send(reqwest::Method::GET, &s.url(&format!("/api/v1/requests/{id}")), None).await;
            assert_eq!(a.status, reqwest::StatusCode::OK, "{a:?}");
            a.body["virtualMachines"][0]["ports"][0].clone()
        }
    };
    let p = port_of(&first).await;
    assert_eq!((p["status"].as_str(), p["statusReason"].as_str()), (Some("Initiated"), Some("Approved")), "{p}");
    let second = cli.json(&[
        "access",
        "request",
        "--vm",
        "web1",
        "--port",
        "22",
        "--source",
        "203.0.113.51",
        "--justification",
        "again",
    ])["id"]
        .to_string();
    assert!(as_boss(&["access", "deny", &second, "--reason", "no"]).status.success());
    let p = port_of(&second).await;
    assert_eq!((p["status"].as_str(), p["statusReason"].as_str()), (Some("Revoked"), Some("Denied")), "{p}");
    let open =
        cli.json(&["access", "request", "--vm", "web1", "--port", "2222", "--source", "203.0.113.52", "--for", "30m"])
            ["id"]
            .to_string();
    let end_of = |port: &serde_json::Value| {
        let text = port["endTimeUtc"].as_str().unwrap_or_default().to_owned();
        time::OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|e| panic!("endTimeUtc {text:?}: {e}"))
    };
    let before = end_of(&port_of(&open).await);
    let asked_at = time::OffsetDateTime::now_utc();
    let extended = cli.json(&["access", "extend", &open, "--for", "2h"]);
    assert_eq!(extended["virtualMachines"][0]["ports"][0]["status"], "Initiated");
    let after = end_of(&port_of(&open).await);
    // Two hours from when it was asked (not 30 minutes, and not two hours past the old end).
    let want = asked_at + time::Duration::hours(2);
    assert!(after > before + time::Duration::minutes(80), "{before} → {after}");
    assert!((after - want).abs() < time::Duration::seconds(30), "{after} vs {want}");
    assert_eq!(cli.run(&["access", "extend", &open, "--for", "5h"]).status.code(), Some(1), "beyond the maximum");
    assert_eq!(end_of(&port_of(&open).await), after, "a refused extension changes nothing");
}
