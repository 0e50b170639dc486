//! The HTTP boundary under abuse (issue 9): rate limits with 429 and Retry-After, a compact
//! audit of failed sign-ins, Azure's error body on every error (405 with Allow included), slow
//! clients cut off by the header and body timeouts, the per-source connection cap, and the cap
//! on long-polls per agent credential.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may panic on a failed expectation.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use jitgate_testkit::agents::join_gateway;
use jitgate_testkit::{Answer, TestServer, SUB};

const BIN: &str = env!("CARGO_BIN_EXE_jitgate");

async fn audit_records(s: &TestServer) -> Vec<Value> {
    s.list_all(s.url("/api/v1/audit?top=1000")).await
}

fn retry_after(a: &Answer) -> u64 {
    a.headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("429 without a Retry-After in seconds: {a:?}"))
}

fn assert_too_many(a: &Answer, max_wait: u64) {
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS, "{a:?}");
    assert_eq!(a.code(), "TooManyRequests", "{a:?}");
    assert!(a.body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    let wait = retry_after(a);
    assert!((1..=max_wait).contains(&wait), "Retry-After {wait}");
}

/// Summary records in the database of a stopped server, by source address.
fn summaries(data_dir: &Path) -> Vec<(String, Value)> {
    let db = rusqlite::Connection::open(data_dir.join("jitgate.db")).expect("open the database");
    let mut stmt = db
        .prepare("SELECT caller_ip, properties FROM audit WHERE properties LIKE '%\"summary\":\"true\"%' ORDER BY seq")
        .expect("query");
    stmt.query_map([], |r| Ok((r.get::<_, Option<String>>(0)?.unwrap_or_default(), r.get::<_, String>(1)?)))
        .expect("rows")
        .map(|r| {
            let (ip, props) = r.expect("row");
            (ip, serde_json::from_str(&props).expect("properties are JSON"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_sign_ins_are_rate_limited_per_source_and_recorded_compactly() {
    let mut s = TestServer::start(BIN, &["--rate-limit-signin", "10/min", "--trusted-proxy", "127.0.0.1"]);
    let before = audit_records(&s).await.len();
    // 50 wrong tokens from one address (behind the trusted proxy), each with a 60,000-character
    // path (over HTTP/1.1: HTTP/2 refuses header lists that long before any handler runs).
    let long_path = format!("/api/v1/requests/{}", "x".repeat(60_000));
    let pem = std::fs::read(&s.server.ca_cert).expect("CA");
    let h1 = reqwest::Client::builder()
        .http1_only()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("CA cert"))
        .build()
        .expect("HTTP/1.1 client");
    let mut statuses = Vec::new();
    for i in 0..50 {
        let token = format!("Bearer jg_wrong_{i}");
        let resp = h1
            .get(s.url(&long_path))
            .header("Authorization", token)
            .header("X-Forwarded-For", "203.0.113.7")
            .send()
            .await
            .expect("sent");
        let (status, headers) = (resp.status(), resp.headers().clone());
        let body = resp.json().await.unwrap_or(Value::Null);
        let a = Answer { status, headers, body };
        if a.status == StatusCode::TOO_MANY_REQUESTS {
            assert_too_many(&a, 60);
        } else {
            assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{a:?}");
            assert_eq!(a.code(), "InvalidAuthenticationToken");
        }
        statuses.push(a.status);
    }
    assert!(statuses[..10].iter().all(|s| *s == StatusCode::UNAUTHORIZED), "{statuses:?}");
    assert!(statuses[10..].iter().all(|s| *s == StatusCode::TOO_MANY_REQUESTS), "{statuses:?}");
    // A valid credential from the proxy's own address is not affected.
    assert_eq!(s.send(Method::GET, &s.url("/api/v1/vms"), None).await.status, StatusCode::OK);
    // Another address has its own budget.
    let other = s
        .send_with(
            Method::GET,
            &s.url("/api/v1/vms"),
            None,
            &[("Authorization", "Bearer jg_wrong"), ("X-Forwarded-For", "203.0.113.8")],
        )
        .await;
    assert_eq!(other.status, StatusCode::UNAUTHORIZED);

    // The log grew by one record per source (the first failure), not by 51, and that record is small.
    let records = audit_records(&s).await;
    let new: Vec<&Value> = records[before..].iter().collect();
    assert_eq!(new.len(), 2, "{new:#?}");
    for r in &new {
        assert_eq!(r["operationName"], "Microsoft.Authorization/signIn/action");
        assert_eq!(r["status"], "Failed");
        assert!(r.to_string().len() < 4096, "a {} byte record", r.to_string().len());
    }
    let first = new[0];
    assert_eq!(first["callerIpAddress"], "203.0.113.7");
    let rid = first["resourceId"].as_str().expect("resourceId");
    assert!(rid.starts_with("/api/v1/requests/xxxx") && rid.contains("truncated, 60017 characters"), "{rid}");
    assert!(rid.chars().count() <= 1024);
    let verify = s.send(Method::GET, &s.url("/api/v1/audit/verify"), None).await;
    assert_eq!(verify.body["valid"], true, "{verify:?}");

    // At a graceful stop the counts are written: 9 further failures and 40 refusals from 203.0.113.7.
    assert!(s.server.stop().expect("stops"), "clean exit");
    let found = summaries(&s.server.data_dir);
    let (_, props) = found.iter().find(|(ip, _)| ip == "203.0.113.7").expect("a summary for the source");
    assert_eq!(props["failures"], "9", "{props}");
    assert_eq!(props["rateLimited"], "40", "{props}");
    assert!(props["reason"].as_str().is_some_and(|r| r.contains("9 further failed attempt(s) and 40 refused")));
    assert!(found.iter().all(|(ip, _)| ip != "203.0.113.8"), "nothing to summarise for one failure");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_sign_ins_are_rate_limited_per_credential_across_addresses() {
    let s = TestServer::start(BIN, &["--rate-limit-signin", "10/min", "--trusted-proxy", "127.0.0.1"]);
    let mut statuses = Vec::new();
    for i in 0..15 {
        let from = format!("198.51.100.{i}");
        let a = s
            .send_with(
                Method::GET,
                &s.url("/api/v1/vms"),
                None,
                &[("Authorization", "Bearer jg_one_stolen_token"), ("X-Forwarded-For", from.as_str())],
            )
            .await;
        statuses.push(a.status.as_u16());
        if i >= 10 {
            assert_too_many(&a, 60);
        }
    }
    assert_eq!(statuses, [[401; 10].as_slice(), [429; 5].as_slice()].concat());
    // Limits off: no 429 at all.
    let open = TestServer::start(BIN, &["--rate-limit-signin", "off"]);
    for _ in 0..40 {
        let a = open.send_with(Method::GET, &open.url("/api/v1/vms"), None, &[("Authorization", "Bearer jg_x")]).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    }
}

fn policy(vm: &str) -> Value {
    json!({"properties": {"virtualMachines": [{"id": vm, "ports": [
        {"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "*", "maxRequestAccessDuration": "PT3H"}]}]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initiates_and_token_creations_are_rate_limited_per_principal() {
    let s = TestServer::start(BIN, &["--rate-limit-initiate", "3/min", "--rate-limit-tokens", "3/min"]);
    let vm = s.register_vm("rg1", "vm1", "Linux").await;
    assert_eq!(
        s.json(Method::PUT, &s.policy_url("rg1", "westeurope", "default"), &policy(&vm)).await.status,
        StatusCode::OK
    );
    let body = json!({"virtualMachines": [{"id": vm, "ports": [{"number": 22, "duration": "PT10M", "allowedSourceAddressPrefix": "198.51.100.7"}]}]});
    let initiate = s.initiate_url("rg1", "westeurope", "default");
    for _ in 0..3 {
        assert_eq!(s.json(Method::POST, &initiate, &body).await.status, StatusCode::ACCEPTED);
    }
    let before = audit_records(&s).await.len();
    for _ in 0..5 {
        let a = s.json(Method::POST, &initiate, &body).await;
        assert_too_many(&a, 20);
    }
    assert_eq!(audit_records(&s).await.len(), before, "refused initiates are counted, not recorded one by one");

    // Tokens: three for the owner (one of them for alice), then 429; alice has her own budget.
    let created = s.json(Method::POST, &s.url("/api/v1/principals"), &json!({"name": "alice"})).await;
    assert_eq!(created.status, StatusCode::CREATED);
    let alice = s.json(Method::POST, &s.url("/api/v1/principals/alice/tokens"), &json!({"expiresIn": "PT1H"})).await;
    assert_eq!(alice.status, StatusCode::CREATED, "{alice:?}");
    let alice = alice.body["token"].as_str().expect("token").to_owned();
    for _ in 0..2 {
        let t = s.json(Method::POST, &s.url("/api/v1/principals/owner/tokens"), &json!({"expiresIn": "PT1H"})).await;
        assert_eq!(t.status, StatusCode::CREATED);
    }
    let t = s.json(Method::POST, &s.url("/api/v1/principals/owner/tokens"), &json!({"expiresIn": "PT1H"})).await;
    assert_too_many(&t, 20);
    let own = jitgate_testkit::as_user(
        &s,
        &alice,
        Method::POST,
        &s.url("/api/v1/principals/alice/tokens"),
        // (within her own token's hour: a token never outlives the one that made it)
        Some(&json!({"expiresIn": "PT30M"})),
    )
    .await;
    assert_eq!(own.status, StatusCode::CREATED, "{own:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_joins_are_rate_limited_per_source() {
    let s = TestServer::start(BIN, &["--rate-limit-join", "5/min", "--trusted-proxy", "127.0.0.1"]);
    let before = audit_records(&s).await.len();
    // A join with a wrong token, from `source` (behind the trusted proxy).
    let join_from = async |source: &str, token: &str| {
        let body = json!({"joinToken": token, "name": "gw", "mode": "gateway", "osType": "Linux", "hostname": "gw"});
        let headers = [("X-Forwarded-For", source), ("Content-Type", "application/json")];
        s.send_with(Method::POST, &s.url("/agent/v1/join"), Some(body.to_string().as_bytes()), &headers).await
    };
    let mut statuses = Vec::new();
    for i in 0..20 {
        let a = join_from("203.0.113.9", &format!("jgj_wrong_{i}")).await;
        if i >= 5 {
            assert_too_many(&a, 60);
        }
        statuses.push(a.status.as_u16());
    }
    assert_eq!(statuses, [[401; 5].as_slice(), [429; 15].as_slice()].concat());
    let grown = audit_records(&s).await.len() - before;
    assert_eq!(grown, 5, "only the refusals within the limit are recorded one by one");
    // Another source is not affected.
    let a = join_from("203.0.113.10", "jgj_wrong").await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{a:?}");
}

/// Every native route and the methods it serves (GET also serves HEAD).
const NATIVE_ROUTES: &[(&str, &[&str])] = &[
    ("/healthz", &["GET"]),
    ("/readyz", &["GET"]),
    ("/api/v1/auth/config", &["GET"]),
    ("/api/v1/vms", &["GET", "PUT", "DELETE"]),
    ("/api/v1/agentTokens", &["GET", "POST"]),
    ("/api/v1/agents", &["GET"]),
    ("/api/v1/requests/1", &["GET"]),
    ("/api/v1/requests/1/revoke", &["POST"]),
    ("/api/v1/requests/1/approve", &["POST"]),
    ("/api/v1/requests/1/deny", &["POST"]),
    ("/api/v1/requests/1/extend", &["POST"]),
    ("/api/v1/audit", &["GET"]),
    ("/api/v1/audit/verify", &["GET"]),
    ("/api/v1/securityPolicies", &["GET", "PUT"]),
    ("/api/v1/principals", &["GET", "POST"]),
    ("/api/v1/principals/someone", &["DELETE"]),
    ("/api/v1/principals/someone/tokens", &["GET", "POST"]),
    ("/api/v1/tokens/1", &["DELETE"]),
    ("/api/v1/roleDefinitions", &["GET"]),
    ("/api/v1/roleDefinitions/Reader", &["GET", "PUT", "DELETE"]),
    ("/api/v1/roleAssignments", &["GET", "POST"]),
    ("/api/v1/roleAssignments/x", &["DELETE"]),
    ("/api/v1/webhooks", &["GET", "POST"]),
    ("/api/v1/webhooks/x", &["DELETE"]),
    ("/api/v1/webhooks/x/deliveries", &["GET"]),
    ("/agent/v1/join", &["POST"]),
    ("/agent/v1/state", &["GET"]),
    ("/agent/v1/applied", &["POST"]),
    ("/agent/v1/inventory", &["PUT"]),
    ("/agent/v1/enforcement", &["POST"]),
];

fn allowed_set(header: &str) -> Vec<String> {
    let mut v: Vec<String> =
        header.split(',').map(|m| m.trim().to_ascii_uppercase()).filter(|m| !m.is_empty()).collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_wrong_method_gets_an_azure_error_body_and_allow() {
    let s = TestServer::start(BIN, &[]);
    let methods = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];
    let mut checked = 0;
    for (path, allowed) in NATIVE_ROUTES {
        let mut expect: Vec<String> = allowed.iter().map(|m| m.to_string()).collect();
        if allowed.contains(&"GET") {
            expect.push("HEAD".into());
        }
        expect.sort();
        for m in methods {
            if expect.iter().any(|e| e == m) {
                continue;
            }
            let method = Method::from_bytes(m.as_bytes()).expect("method");
            let a = s.send(method, &s.url(path), None).await;
            assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED, "{m} {path}: {a:?}");
            let allow = a.headers.get("allow").and_then(|v| v.to_str().ok()).unwrap_or_default();
            assert_eq!(allowed_set(allow), expect, "{m} {path}: Allow");
            let content_type = a.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
            assert!(content_type.starts_with("application/json"), "{m} {path}: {content_type}");
            if m != "HEAD" {
                assert_eq!(a.code(), "MethodNotAllowed", "{m} {path}: {a:?}");
                let message = a.body["error"]["message"].as_str().unwrap_or_default();
                assert!(message.contains(m) && message.contains(path), "{m} {path}: {message}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 100, "{checked} method/route pairs");

    // The Azure routes say what they allow too.
    let policy = s.policy_url("rg1", "westeurope", "default");
    for (method, url, allow) in [
        (Method::POST, policy.clone(), "GET, PUT, DELETE"),
        (Method::PATCH, policy.clone(), "GET, PUT, DELETE"),
        (Method::GET, s.initiate_url("rg1", "westeurope", "default"), "POST"),
        (
            Method::PUT,
            s.url(&format!(
                "/subscriptions/{SUB}/providers/Microsoft.Security/jitNetworkAccessPolicies?api-version=2020-01-01"
            )),
            "GET",
        ),
    ] {
        let a = s.send(method.clone(), &url, None).await;
        assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {url}");
        assert_eq!(a.code(), "MethodNotAllowed");
        assert_eq!(a.headers.get("allow").and_then(|v| v.to_str().ok()), Some(allow), "{method} {url}");
    }

    // Other errors axum answers on its own carry the Azure body as well.
    let a = s.send(Method::GET, &s.url("/api/v1/nothing/here"), None).await;
    assert_eq!((a.status, a.code()), (StatusCode::NOT_FOUND, "NotFound"));
}

// ---- slow clients: raw TLS connections ----

type Tls = jitgate_testkit::RawTls;

async fn tls_connect(s: &TestServer) -> std::io::Result<Tls> {
    jitgate_testkit::raw_tls(s).await
}

/// Sends `head` and then one more byte every `every` (never finishing the request); returns
/// how long the server kept the connection, at most `limit`.
async fn held_for(conn: Tls, head: &[u8], every: Duration, limit: Duration) -> Duration {
    let start = Instant::now();
    let (mut r, mut w) = tokio::io::split(conn);
    let head = head.to_vec();
    let writer = async move {
        if w.write_all(&head).await.is_ok() && w.flush().await.is_ok() {
            loop {
                tokio::time::sleep(every).await;
                if w.write_all(b"a").await.is_err() || w.flush().await.is_err() {
                    break;
                }
            }
        }
        std::future::pending::<()>().await
    };
    let reader = async move {
        let mut buf = [0u8; 4096];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    tokio::select! {
        _ = writer => {}
        _ = reader => {}
        _ = tokio::time::sleep(limit) => {}
    }
    start.elapsed()
}

/// Reads one HTTP/1.1 answer: status and body (0 and `Null` when the connection ended first).
async fn read_answer(conn: &mut Tls) -> (u16, Value) {
    match jitgate_testkit::read_http_answer(conn).await {
        Ok((head, body)) => (
            head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0),
            serde_json::from_slice(&body).unwrap_or(Value::Null),
        ),
        Err(_) => (0, Value::Null),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_by_the_header_and_body_timeouts() {
    let s = TestServer::start(BIN, &["--header-timeout", "1s", "--body-timeout", "1s"]);
    let limit = Duration::from_secs(20);
    // Headers one byte at a time, never finished.
    let conn = tls_connect(&s).await.expect("TLS");
    let held =
        held_for(conn, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ", Duration::from_millis(200), limit)
            .await;
    assert!(held < Duration::from_secs(6), "a dribbling client was held {held:?}");
    // Nothing at all after the handshake.
    let conn = tls_connect(&s).await.expect("TLS");
    let held = held_for(conn, b"", Duration::from_secs(60), limit).await;
    assert!(held < Duration::from_secs(6), "a silent client was held {held:?}");
    // A keep-alive connection idle after an answer is closed too.
    let mut conn = tls_connect(&s).await.expect("TLS");
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").await.expect("write");
    assert_eq!(read_answer(&mut conn).await.0, 200);
    let held = held_for(conn, b"", Duration::from_secs(60), limit).await;
    assert!(held < Duration::from_secs(6), "an idle keep-alive connection was held {held:?}");

    // A body announcing 100000 bytes that sends 9: 408 with the Azure body.
    let mut conn = tls_connect(&s).await.expect("TLS");
    let head = format!(
        "POST /api/v1/principals HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{{\"name\":",
        s.server.token
    );
    let started = Instant::now();
    conn.write_all(head.as_bytes()).await.expect("write");
    let (status, body) = tokio::time::timeout(limit, read_answer(&mut conn)).await.expect("an answer in time");
    assert_eq!(status, 408, "{body}");
    assert_eq!(body["error"]["code"], "RequestTimeout", "{body}");
    assert!(started.elapsed() < Duration::from_secs(6), "answered after {:?}", started.elapsed());
    // Nothing was created.
    let list = s.send(Method::GET, &s.url("/api/v1/principals"), None).await;
    assert_eq!(list.body["value"].as_array().map(Vec::len), Some(1), "{list:?}");
    // Normal clients are unaffected.
    assert_eq!(s.send(Method::GET, &s.url("/healthz"), None).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_source_are_capped() {
    let s = TestServer::start(BIN, &["--max-connections-per-source", "3"]);
    // The test client's pool may hold a connection: start from none.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tls_connect(&s).await.expect("within the cap"));
    }
    let refused = tls_connect(&s).await;
    assert!(refused.is_err(), "a fourth connection from the same source is closed at once");
    // Closing one frees its slot.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut again = tls_connect(&s).await;
    while again.is_err() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        again = tls_connect(&s).await;
    }
    let mut conn = again.expect("a freed slot is usable");
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").await.expect("write");
    assert_eq!(read_answer(&mut conn).await.0, 200);
}

// ---- long-polls ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_holds_at_most_four_long_polls_and_the_oldest_answers() {
    let s = Arc::new(TestServer::start(BIN, &[]));
    let credential = join_gateway(&s, "gw1", json!({})).await;
    let auth = format!("Bearer {credential}");
    let first = s.send_with(Method::GET, &s.url("/agent/v1/state"), None, &[("Authorization", auth.as_str())]).await;
    assert_eq!(first.status, StatusCode::OK);
    let revision = first.body["revision"].as_u64().expect("revision");
    let poll = |s: Arc<TestServer>, auth: String| {
        tokio::spawn(async move {
            let url = s.url(&format!("/agent/v1/state?after={revision}&wait=60"));
            s.send_with(Method::GET, &url, None, &[("Authorization", auth.as_str())]).await
        })
    };
    let mut polls = Vec::new();
    for _ in 0..4 {
        polls.push(poll(s.clone(), auth.clone()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(polls.iter().all(|p| !p.is_finished()), "four long-polls wait");
    // A fifth replaces the oldest, which answers at once with the state as it is.
    polls.push(poll(s.clone(), auth.clone()));
    let oldest = tokio::time::timeout(Duration::from_secs(10), polls.remove(0))
        .await
        .expect("the oldest long-poll answers at once")
        .expect("join");
    assert_eq!(oldest.status, StatusCode::OK, "{oldest:?}");
    assert_eq!(oldest.body["revision"].as_u64(), Some(revision));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(polls.iter().all(|p| !p.is_finished()), "the other four still wait");
    // A change (another gateway joins): every waiting long-poll answers.
    join_gateway(&s, "gw2", json!({})).await;
    for p in polls {
        let a = tokio::time::timeout(Duration::from_secs(10), p).await.expect("answers on a change").expect("join");
        assert_eq!(a.status, StatusCode::OK);
    }
}

// ---- the server's certificate: reloaded on SIGHUP, renewed before its end, pinned ----

/// A self-signed certificate for `localhost` written over `cert` and `key`; its facts.
fn write_certificate(cert: &Path, key: &Path) -> jitgate_core::certinfo::CertInfo {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let pair = rcgen::KeyPair::generate().unwrap();
    let made = params.self_signed(&pair).unwrap();
    jitgate_server::tls::write_private(key, pair.serialize_pem().as_bytes()).unwrap();
    std::fs::write(cert, made.pem()).unwrap();
    jitgate_core::certinfo::CertInfo::from_der(made.der()).unwrap()
}

/// A TLS connection to `addr` that trusts only the server whose public key has `pin`.
async fn pinned(addr: &str, pin: [u8; 32]) -> std::io::Result<Tls> {
    let mut config = jitgate_client::pin::client_config(&[pin]).expect("TLS config");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await
}

async fn healthz(conn: &mut Tls) -> u16 {
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").await.expect("request");
    read_answer(conn).await.0
}

fn hangup(server: &jitgate_client::local::LocalServer) {
    let pid = server.pid().expect("running").to_string();
    assert!(std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_without_dropping_connections_and_clients_pin_it() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("server.pem"), dir.path().join("server.key"));
    let first = write_certificate(&cert, &key);
    let c = cert.to_str().unwrap();
    let k = key.to_str().unwrap();
    let server = jitgate_client::local::LocalServer::start(Path::new(BIN), &["--tls-cert", c, "--tls-key", k])
        .expect("jitgate serve starts");
    let out = server.stdout();
    assert!(out.contains(&format!("TLS public key: SHA-256 {}", first.key_fingerprint())), "{out}");
    let addr = server.url.trim_start_matches("https://").to_owned();

    let mut open = pinned(&addr, first.spki_sha256).await.expect("the first certificate");
    assert_eq!(healthz(&mut open).await, 200);

    // New files, then SIGHUP: new connections get the new certificate.
    let second = write_certificate(&cert, &key);
    hangup(&server);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut fresh = loop {
        if let Ok(conn) = pinned(&addr, second.spki_sha256).await {
            break conn;
        }
        assert!(Instant::now() < deadline, "the new certificate was never presented");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(healthz(&mut fresh).await, 200);
    // The connection opened before the reload still serves requests.
    assert_eq!(healthz(&mut open).await, 200, "an open connection survives the reload");
    assert!(pinned(&addr, first.spki_sha256).await.is_err(), "the old certificate is gone for new connections");

    // A key that is not the certificate's: the reload is refused and the certificate stays.
    jitgate_server::tls::write_private(&key, rcgen::KeyPair::generate().unwrap().serialize_pem().as_bytes()).unwrap();
    hangup(&server);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut still = pinned(&addr, second.spki_sha256).await.expect("the second certificate stays");
    assert_eq!(healthz(&mut still).await, 200);

    // The CLI trusts the server by its fingerprint, at an address the certificate does not cover.
    let by_ip = server.url.replace("localhost", "127.0.0.1");
    let whoami = |pin: &str| {
        std::process::Command::new(BIN)
            .args(["whoami", "--url", &by_ip, "--token", &server.token, "--server-fingerprint", pin])
            .env_remove("JITGATE_CA_CERT")
            .output()
            .unwrap()
    };
    let ok = whoami(&second.key_fingerprint());
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("owner"), "{}", String::from_utf8_lossy(&ok.stdout));
    let refused = whoami(&first.fingerprint());
    assert!(!refused.status.success());
    let bad = whoami("not-a-fingerprint");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("64 hex digits"), "{}", String::from_utf8_lossy(&bad.stderr));
    // `jitgate login` keeps the fingerprint in the profile for later commands.
    let profile = dir.path().join("profile.json");
    let login = std::process::Command::new(BIN)
        .args(["login", "--url", &by_ip, "--token", &server.token, "--server-fingerprint", &second.key_fingerprint()])
        .env("JITGATE_CONFIG", &profile)
        .env_remove("JITGATE_CA_CERT")
        .output()
        .unwrap();
    assert!(login.status.success(), "{}", String::from_utf8_lossy(&login.stderr));
    let later = std::process::Command::new(BIN)
        .arg("whoami")
        .env("JITGATE_CONFIG", &profile)
        .env_remove("JITGATE_CA_CERT")
        .env_remove("JITGATE_URL")
        .env_remove("JITGATE_TOKEN")
        .output()
        .unwrap();
    assert!(later.status.success(), "{}", String::from_utf8_lossy(&later.stderr));
}

#[test]
fn a_self_signed_certificate_near_its_end_is_renewed_at_start_with_the_same_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let tls = data.join("tls");
    let now = time::OffsetDateTime::now_utc();
    // Made 820 days ago: it ends in five days.
    jitgate_server::tls::ensure_self_signed_at(&tls, &["127.0.0.1".to_owned()], now - time::Duration::days(820))
        .unwrap();
    let read = |p: &Path| {
        use rustls::pki_types::pem::PemObject;
        let der = rustls::pki_types::CertificateDer::from_pem_file(p).unwrap();
        jitgate_core::certinfo::CertInfo::from_der(der.as_ref()).unwrap()
    };
    let before = read(&tls.join("cert.pem"));
    assert!(before.not_after - now < time::Duration::days(6));
    let server = jitgate_client::local::LocalServer::start_in(Path::new(BIN), &data, &[]).expect("serve starts");
    let after = read(&tls.join("cert.pem"));
    assert_eq!(after.spki_sha256, before.spki_sha256, "the key stays");
    assert!(after.not_after - now > time::Duration::days(800), "{:?}", after.not_after);
    assert!(server.stdout().contains(&after.fingerprint()), "the new one is the one served");
    drop(server);
}
