//! `jitgate doctor`, the real binary: the server side on a real data directory (passing; then
//! failing on a tampered audit chain and on a wrong schema version), and the agent side in
//! network namespaces with real nftables (the table with its elements passes; the table gone,
//! or the server unreachable, fails). The namespace tests need root, `ip` and `nft`; they skip
//! with the reason printed otherwise (and fail under `CI=true`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may panic on a failed expectation.

#[macro_use]
mod world;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{json, Value};
use world::*;

fn doctor(cmd: &mut Command) -> (Output, Value) {
    let out = cmd.output().expect("jitgate doctor runs");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("not JSON ({e}): {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    });
    (out, report)
}

/// The check named `name` (the first, when several have the name).
fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no check {name} in {report:#}"))
}

fn status<'a>(report: &'a Value, name: &str) -> &'a str {
    check(report, name)["status"].as_str().unwrap_or("")
}

fn server_doctor(data_dir: &Path, extra: &[&str]) -> (Output, Value) {
    doctor(Command::new(BIN).args(["doctor", "server", "--json", "--data-dir"]).arg(data_dir).args(extra))
}

fn copy_db(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    jitgate_store_sqlite::snapshot::backup(&from.join("jitgate.db"), &to.join("jitgate.db")).unwrap();
}

#[test]
fn doctor_server_passes_on_a_good_data_dir_and_fails_on_a_tampered_chain_or_a_wrong_schema() {
    let mut server = LocalServer::start(Path::new(BIN), &[]).expect("server");
    let fingerprint = server
        .stdout()
        .lines()
        .find_map(|l| l.split("(SHA-256 ").nth(1).map(|f| f.trim_end_matches(')').to_owned()))
        .expect("the server prints its certificate's fingerprint");

    // Beside the running server: everything passes, the server answers with the file's certificate.
    let (out, report) = server_doctor(&server.data_dir, &["--url", &server.url]);
    assert!(out.status.success(), "{report:#}");
    assert_eq!(report["ok"], true);
    for name in ["database", "audit", "tls", "server"] {
        assert_eq!(status(&report, name), "ok", "{name}: {report:#}");
    }
    assert_ne!(status(&report, "disk"), "fail", "disk: {report:#}");
    let audit = check(&report, "audit");
    let records = audit["facts"]["records"].as_u64().unwrap();
    assert!(records >= 1, "the first start writes audit records: {audit}");
    assert_eq!(audit["facts"]["headSeq"].as_u64(), Some(records), "{audit}");
    assert_eq!(check(&report, "tls")["facts"]["fingerprint"], fingerprint.as_str());
    assert!(check(&report, "tls")["facts"]["daysLeft"].as_i64().unwrap() > 30);
    let db = check(&report, "database");
    assert_eq!(db["facts"]["schema"], db["facts"]["expectedSchema"], "{db}");
    assert!(db["detail"].as_str().unwrap().contains("integrity_check ok"), "{db}");
    server.stop().expect("stop");

    // A changed audit record: the chain check fails, names the record, and the exit code says so.
    let tampered = tempfile::tempdir().unwrap();
    copy_db(&server.data_dir, tampered.path());
    let conn = rusqlite::Connection::open(tampered.path().join("jitgate.db")).unwrap();
    let changed = conn.execute("UPDATE audit SET caller = 'mallory' WHERE seq = 1", []).unwrap();
    assert_eq!(changed, 1);
    drop(conn);
    let (out, report) = server_doctor(tampered.path(), &[]);
    assert_eq!(out.status.code(), Some(1), "{report:#}");
    assert_eq!(report["ok"], false);
    assert_eq!(status(&report, "audit"), "fail");
    assert_eq!(check(&report, "audit")["facts"]["firstInvalid"], 1);
    assert!(check(&report, "audit")["fix"].as_str().unwrap().contains("backup"), "says what to do");
    assert_eq!(status(&report, "database"), "ok", "the file itself is sound");

    // The same as people read it: one line per check, the way out under the failure.
    let out = Command::new(BIN).args(["doctor", "server", "--data-dir"]).arg(tampered.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    let at = lines.iter().position(|l| l.starts_with("FAIL audit: chain BROKEN at record #1")).expect(&text);
    assert!(lines[at + 1].trim_start().starts_with("→ "), "{text}");
    assert!(lines.iter().any(|l| l.starts_with("ok   database: SQLite ")), "{text}");
    assert!(lines.last().unwrap().starts_with("1 failed"), "{text}");

    // A schema this build does not write: newer, then older.
    for (version, fix) in [(99, "newer jitgate"), (1, "jitgate migrate --data-dir")] {
        let dir = tempfile::tempdir().unwrap();
        copy_db(&server.data_dir, dir.path());
        let conn = rusqlite::Connection::open(dir.path().join("jitgate.db")).unwrap();
        conn.execute_batch(&format!("PRAGMA user_version = {version}")).unwrap();
        drop(conn);
        let (out, report) = server_doctor(dir.path(), &[]);
        assert_eq!(out.status.code(), Some(1), "{report:#}");
        let db = check(&report, "database");
        assert_eq!((db["status"].as_str(), db["facts"]["schema"].as_i64()), (Some("fail"), Some(version)), "{db}");
        assert!(db["fix"].as_str().unwrap().contains(fix), "{db}");
    }

    // No database at all.
    let empty = tempfile::tempdir().unwrap();
    let (out, report) = server_doctor(empty.path(), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(check(&report, "database")["detail"].as_str().unwrap().starts_with("no database at "), "{report:#}");
    assert_eq!(status(&report, "tls"), "warn", "no certificate yet: made at the first start");
}

#[test]
fn doctor_reads_the_settings_file_and_refuses_to_guess() {
    let dir = tempfile::tempdir().unwrap();
    let settings = dir.path().join("jitgate.toml");
    let data = dir.path().join("nowhere");
    std::fs::write(&settings, format!("data_dir = {:?}\nlisten = \"127.0.0.1:1\"\n", data.display().to_string()))
        .unwrap();
    let (out, report) = doctor(Command::new(BIN).args(["doctor", "--json", "--config"]).arg(&settings));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(status(&report, "config"), "ok");
    let db = check(&report, "database");
    assert!(db["detail"].as_str().unwrap().contains("nowhere"), "data_dir from the file: {db}");
    let server = check(&report, "server");
    assert_eq!(server["status"], "fail", "nothing listens at the file's address: {server}");
    assert!(server["detail"].as_str().unwrap().starts_with("https://127.0.0.1:1 does not answer"), "{server}");

    std::fs::write(&settings, "data_dir = [").unwrap();
    let (_, report) = doctor(Command::new(BIN).args(["doctor", "server", "--json", "--config"]).arg(&settings));
    assert_eq!(status(&report, "config"), "fail");

    // Nothing named and (on a machine without the package's files) nothing to look at: a usage error.
    if !Path::new("/etc/jitgate").exists() {
        let out = Command::new(BIN).arg("doctor").output().unwrap();
        assert_eq!(out.status.code(), Some(2), "a usage error");
        assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to check"));
    }
}

#[test]
fn doctor_agent_finds_the_table_with_its_elements_and_fails_without_it_or_the_server() {
    skip_unless_netns!("doctor_agent_finds_the_table_with_its_elements_and_fails_without_it_or_the_server");
    let mut w = World::new(&[2222]);
    w.put_policy(json!([ssh_like(2222)]));
    assert_eq!(w.probe(A, 2222, "closed", 5000)["reached"], true);
    w.initiate(A, 2222, "PT10M");
    assert!(w.is_open(A, 2222));

    let agent_doctor = |w: &World, extra: &[&str]| {
        doctor(w.v.cmd(BIN).args(["doctor", "agent", "--json", "--state-dir"]).arg(&w.state_dir).args(extra))
    };
    let (out, report) = agent_doctor(&w, &[]);
    assert!(out.status.success(), "{report:#}");
    for name in ["kernel", "nftables", "table", "credential", "server", "clock", "tls"] {
        assert_eq!(status(&report, name), "ok", "{name}: {report:#}");
    }
    assert_ne!(status(&report, "disk"), "fail", "{report:#}");
    // '*' protects and grants TCP and UDP: two protected ports, two grant elements for A.
    let table = check(&report, "table");
    assert_eq!(
        (table["facts"]["protected"].as_u64(), table["facts"]["grants"].as_u64(), table["facts"]["dnat"].as_u64()),
        (Some(2), Some(2), Some(0)),
        "{table}"
    );
    assert!(check(&report, "server")["detail"].as_str().unwrap().starts_with(&w.server.url), "{report:#}");
    assert!(check(&report, "clock")["facts"]["offsetSeconds"].as_f64().unwrap().abs() <= 2.0);

    // Trusting the server by its public key's fingerprint instead of a CA certificate, as an agent
    // may: the right one passes, another fails and says how to trust the server.
    let key = w
        .server
        .stdout()
        .lines()
        .find_map(|l| {
            l.strip_prefix("TLS public key: SHA-256 ").and_then(|r| r.split_whitespace().next()).map(str::to_owned)
        })
        .expect("the server prints its public key's fingerprint");
    let (out, report) = agent_doctor(&w, &["--server-fingerprint", &key]);
    assert!(out.status.success(), "{report:#}");
    assert_eq!(check(&report, "tls")["facts"]["keyFingerprint"], key.as_str());
    let (out, report) = agent_doctor(&w, &["--server-fingerprint", &["00"; 32].join(":")]);
    assert_eq!(out.status.code(), Some(1), "{report:#}");
    let server = check(&report, "server");
    assert_eq!(server["status"], "fail", "{server}");
    assert!(server["fix"].as_str().unwrap().contains("--server-fingerprint"), "{server}");

    // A second grant is one more pair of elements.
    w.initiate(B, 2222, "PT10M");
    let (_, report) = agent_doctor(&w, &[]);
    assert_eq!(check(&report, "table")["facts"]["grants"], 4, "{report:#}");

    // A server that does not answer: the credential's server is replaced by one nobody serves.
    let (out, report) = agent_doctor(&w, &["--server", "https://127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(1), "{report:#}");
    let server = check(&report, "server");
    assert_eq!(server["status"], "fail");
    assert!(server["detail"].as_str().unwrap().starts_with("cannot reach https://127.0.0.1:1"), "{server}");
    assert!(server["fix"].as_str().unwrap().contains("jitgate serve runs there"), "{server}");
    assert_eq!(status(&report, "table"), "ok", "the table is still there");

    // The agent stopped and its table gone (an nftables flush): the doctor says so and what to do.
    if let Some(mut agent) = w.agent.take() {
        agent.kill9();
    }
    w.v.exec("nft", &["delete", "table", "inet", "jitgate"]).expect("delete the table");
    let (out, report) = agent_doctor(&w, &[]);
    assert_eq!(out.status.code(), Some(1), "{report:#}");
    let table = check(&report, "table");
    assert_eq!(table["status"], "fail");
    assert!(table["detail"].as_str().unwrap().contains("missing"), "{table}");
    assert!(table["fix"].as_str().unwrap().contains("systemctl start jitgate-agent"), "{table}");
    assert_eq!(status(&report, "nftables"), "ok", "nftables itself still works");
    assert_eq!(status(&report, "server"), "ok", "the server still answers");
}

#[tokio::test]
async fn doctor_server_checks_a_postgresql_store() {
    let test = "doctor_server_checks_a_postgresql_store";
    let db = match jitgate_store_postgres::testdb::TestDatabase::create().await {
        Ok(db) => db,
        Err(why) => return jitgate_netns::skip(test, &why),
    };
    let dir = tempfile::tempdir().unwrap();
    let run = |url: &str| {
        doctor(
            Command::new(BIN)
                .args(["doctor", "server", "--json", "--database-url", url])
                .arg("--data-dir")
                .arg(dir.path()),
        )
    };

    // A database no server has opened: reachable, but no schema.
    let (out, report) = run(db.url());
    assert_eq!(out.status.code(), Some(1), "{report:#}");
    assert!(check(&report, "database")["detail"].as_str().unwrap().contains("no jitgate schema"), "{report:#}");

    // After `jitgate migrate`: the schema is this build's and the (empty) chain verifies.
    let migrated = Command::new(BIN).args(["migrate", "--database-url", db.url()]).output().unwrap();
    assert!(migrated.status.success(), "{}", String::from_utf8_lossy(&migrated.stderr));
    let (out, report) = run(db.url());
    assert!(out.status.success(), "{report:#}");
    let database = check(&report, "database");
    assert_eq!(database["status"], "ok");
    assert!(database["detail"].as_str().unwrap().starts_with("PostgreSQL postgres://"), "{database}");
    assert_eq!(database["facts"]["schema"], database["facts"]["expectedSchema"]);
    assert_eq!(check(&report, "audit")["status"], "ok");

    // Nobody answering: the failure says where to look, and no password is shown.
    let (out, report) = run("postgres://jitgate:secret@127.0.0.1:1/jitgate");
    assert_eq!(out.status.code(), Some(1));
    let database = check(&report, "database");
    assert!(!database["detail"].as_str().unwrap().contains("secret"), "{database}");
    assert!(database["fix"].as_str().unwrap().contains("PostgreSQL runs"), "{database}");
}

#[test]
fn doctor_agent_on_a_gateway_counts_its_dnat_mappings() {
    skip_unless_netns!("doctor_agent_on_a_gateway_counts_its_dnat_mappings");
    let w = World::new_gateway(&[2222]);
    let mut rule = ssh_like(2222);
    rule["mappedPort"] = json!(52222);
    w.put_policy(json!([rule]));
    assert_eq!(w.probe_to(A, INNER, 2222, "closed", 5000)["reached"], true);
    w.initiate(A, 2222, "PT10M");
    let (out, report) = doctor(w.v.cmd(BIN).args(["doctor", "agent", "--json", "--state-dir"]).arg(&w.state_dir));
    assert!(out.status.success(), "{report:#}");
    let table = check(&report, "table");
    let fact = |k: &str| table["facts"][k].as_u64().unwrap_or(0);
    assert!(fact("dnat") >= 1 && fact("grants") >= 1 && fact("protected") >= 1, "{table}");
    assert_eq!(fact("elements"), fact("dnat") + fact("grants") + fact("protected"), "{table}");
    assert!(check(&report, "credential")["detail"].as_str().unwrap().contains("gateway mode"), "{report:#}");
}

/// jitgate-agent.service runs the agent as an unprivileged user holding CAP_NET_ADMIN alone
/// (ambient, so `nft` inherits it): that is enough for everything the agent does to nftables,
/// and without it the doctor says what is missing.
#[test]
fn nftables_works_with_cap_net_admin_alone_as_the_unit_gives_it() {
    skip_unless_netns!("nftables_works_with_cap_net_admin_alone_as_the_unit_gives_it");
    if Command::new("setpriv").arg("--version").output().is_err() {
        return jitgate_netns::skip(
            "nftables_works_with_cap_net_admin_alone_as_the_unit_gives_it",
            "needs setpriv (apt-get install util-linux)",
        );
    }
    let ns = Netns::new("cap").expect("netns");
    let dir = tempfile::tempdir().unwrap();
    let as_nobody = |caps: &str| {
        let mut cmd = ns.cmd("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(format!("--inh-caps=-all{caps}"))
            .arg(format!("--ambient-caps=-all{caps}"))
            .arg(format!("--bounding-set=-all{caps}"))
            .args([BIN, "doctor", "agent", "--json", "--server", "https://127.0.0.1:1", "--state-dir"])
            .arg(dir.path());
        doctor(&mut cmd).1
    };
    let report = as_nobody(",+net_admin");
    assert_eq!(status(&report, "nftables"), "ok", "{report:#}");
    assert_eq!(status(&report, "table"), "fail", "no agent made one here");
    let report = as_nobody("");
    let nft = check(&report, "nftables");
    assert_eq!(nft["status"], "fail", "{report:#}");
    assert!(nft["detail"].as_str().unwrap().contains("Operation not permitted"), "{nft}");
    assert!(nft["fix"].as_str().unwrap().contains("CAP_NET_ADMIN"), "{nft}");
}
