//! End-to-end: first start and restart, the admin token, graceful shutdown, TLS modes, the
//! expiry sweeper, and the audit chain left in the database.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may panic on a failed expectation.

use std::path::Path;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use jitgate_testkit::{LocalServer, TestServer};

const BIN: &str = env!("CARGO_BIN_EXE_jitgate");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_is_printed_once_and_survives_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut first = LocalServer::start_in(Path::new(BIN), &data, &[]).expect("first start");
    let token = first.token.clone();
    assert!(token.starts_with("jg_"), "token file written: {token:?}");
    assert_eq!(
        first.stdout().matches(&token).count(),
        2,
        "token shown once, plus the export line:\n{}",
        first.stdout()
    );
    assert!(first.stdout().contains("JITGATE_CA_CERT="));
    assert!(first.stdout().contains("SHA-256"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data.with_extension("admin-token")).expect("token file").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let key_mode = std::fs::metadata(data.join("tls/key.pem")).expect("key").permissions().mode();
        assert_eq!(key_mode & 0o777, 0o600);
    }
    let cert_before = std::fs::read(data.join("tls/cert.pem")).expect("cert");
    assert!(first.stop().expect("stops"), "SIGTERM ends the server with success");

    std::fs::remove_file(data.with_extension("admin-token")).expect("remove token file");
    let second = LocalServer::start_in(Path::new(BIN), &data, &[]).expect("second start");
    assert!(!second.stdout().contains("jg_"), "no new token on restart:\n{}", second.stdout());
    assert!(second.token.is_empty(), "no token file written on restart");
    assert_eq!(std::fs::read(data.join("tls/cert.pem")).expect("cert"), cert_before, "certificate kept");
    let client = jitgate_client::http_client(Some(&second.ca_cert)).expect("client");
    let r = client.get(format!("{}/api/v1/vms", second.url)).bearer_auth(&token).send().await.expect("send");
    assert_eq!(r.status(), StatusCode::OK, "the first token still works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_off_serves_plain_http_and_own_certificates_work() {
    let plain = LocalServer::start(Path::new(BIN), &["--tls", "off"]).expect("plain start");
    assert!(plain.url.starts_with("http://"), "{}", plain.url);
    let r = reqwest::Client::new().get(format!("{}/healthz", plain.url)).send().await.expect("plain http");
    assert_eq!(r.status(), StatusCode::OK);

    // A certificate made elsewhere (here: by another server) is used as given.
    let other = LocalServer::start(Path::new(BIN), &[]).expect("other");
    let (cert, key) = (other.ca_cert.clone(), other.data_dir.join("tls/key.pem"));
    let own = LocalServer::start(
        Path::new(BIN),
        &["--tls-cert", cert.to_str().expect("utf8"), "--tls-key", key.to_str().expect("utf8")],
    )
    .expect("own cert start");
    let client = jitgate_client::http_client(Some(&cert)).expect("client");
    let r = client.get(format!("{}/readyz", own.url)).send().await.expect("tls with own cert");
    assert_eq!(r.status(), StatusCode::OK);
    assert!(!own.data_dir.join("tls/cert.pem").exists(), "no self-signed certificate made");
    // A client that does not trust the certificate is refused: verification is real.
    let stranger = jitgate_client::http_client(None).expect("client");
    assert!(stranger.get(format!("{}/healthz", own.url)).send().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_expire_on_time_and_every_change_is_in_the_audit_chain() {
    let s = TestServer::start(BIN, &[]);
    let vm = s.register_vm("rg1", "vm1", "Linux").await;
    let body = json!({"properties": {"virtualMachines": [{"id": vm}]}});
    assert_eq!(s.json(Method::PUT, &s.policy_url("rg1", "westeurope", "default"), &body).await.status, StatusCode::OK);
    let init = json!({"virtualMachines": [{"id": vm, "ports": [{"number": 22, "duration": "PT1S"}]}]});
    let a = s.json(Method::POST, &s.initiate_url("rg1", "westeurope", "default"), &init).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{a:?}");
    assert_eq!(a.body["virtualMachines"][0]["ports"][0]["status"], "Initiated");
    // A refusal, and a failed sign-in, for the audit.
    let bad = json!({"virtualMachines": [{"id": vm, "ports": [{"number": 2222, "duration": "PT1M"}]}]});
    assert_eq!(
        s.json(Method::POST, &s.initiate_url("rg1", "westeurope", "default"), &bad).await.status,
        StatusCode::BAD_REQUEST
    );
    let anon = s.send_with(Method::GET, &s.url("/api/v1/vms"), None, &[("Authorization", "Bearer jg_nope")]).await;
    assert_eq!(anon.status, StatusCode::UNAUTHORIZED);

    // The sweeper marks the grant expired shortly after its end time.
    let mut status = String::new();
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let p = s.send(Method::GET, &s.policy_url("rg1", "westeurope", "default"), None).await;
        let port = &p.body["properties"]["requests"][0]["virtualMachines"][0]["ports"][0];
        status = format!("{}/{}", port["status"].as_str().unwrap_or(""), port["statusReason"].as_str().unwrap_or(""));
        if status == "Revoked/Expired" {
            break;
        }
    }
    assert_eq!(status, "Revoked/Expired");

    // The audit chain in the database: intact, with every change, refusal and expiry.
    let db = s.server.data_dir.join("jitgate.db");
    let mut s = s;
    assert!(s.server.stop().expect("stop"));
    let conn = rusqlite::Connection::open(&db).expect("open db");
    let rows: Vec<(String, String, String)> = conn
        .prepare("SELECT operation, status, caller FROM audit ORDER BY seq")
        .and_then(|mut st| st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect())
        .expect("audit rows");
    let has = |op: &str, status: &str| rows.iter().any(|(o, s, _)| o.ends_with(op) && s == status);
    assert!(has("principals/write", "Succeeded"), "bootstrap: {rows:?}");
    assert!(has("virtualMachines/write", "Succeeded"));
    assert!(has("jitNetworkAccessPolicies/write", "Succeeded"));
    assert!(has("initiate/action", "Succeeded"));
    assert!(has("initiate/action", "Failed"));
    assert!(has("signIn/action", "Failed"));
    assert!(has("requests/expire/action", "Succeeded"));
    let hashes: Vec<(String, String)> = conn
        .prepare("SELECT prev_hash, hash FROM audit ORDER BY seq")
        .and_then(|mut st| st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
        .expect("hashes");
    assert_eq!(hashes[0].0, "0".repeat(64));
    for pair in hashes.windows(2) {
        assert_eq!(pair[1].0, pair[0].1, "each record carries the hash of the one before");
    }
}
