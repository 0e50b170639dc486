//! End-to-end on PostgreSQL: the real binary serving with `--database-url`, two replicas on one
//! database — a policy written through one, an initiate through the other, over HTTPS — and the
//! audit chain, written by both, verifies.
//!
//! The database is made for the test on the PostgreSQL at 127.0.0.1:5432 and dropped after it;
//! where none answers, the test is skipped (and fails under `CI=true`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may panic on a failed expectation.

use reqwest::{Method, StatusCode};
use serde_json::json;
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

use jitgate_store_postgres::testdb::TestDatabase;
use jitgate_testkit::agents::{agent_call, join_token, joined, state};
use jitgate_testkit::{vm_id, LocalServer, TestServer, SUB};

const BIN: &str = env!("CARGO_BIN_EXE_jitgate");

/// Two replicas of the binary on `db`: the first makes the Owner, the second shares the
/// database and the secrets key (and makes no second Owner); both carry the Owner's token.
fn replicas(db: &TestDatabase) -> (TestServer, TestServer) {
    let a = TestServer::start(BIN, &["--database-url", db.url()]);
    assert!(!a.server.token.is_empty(), "the first replica made the Owner on the empty database");
    // The second replica shares the database and the secrets key; it makes no second Owner.
    let key = a.server.data_dir.join("secrets.key");
    let key = key.to_str().expect("utf-8 path");
    let mut b = LocalServer::start(std::path::Path::new(BIN), &["--database-url", db.url(), "--secrets-key-file", key])
        .expect("replica b");
    assert!(b.token.is_empty(), "the database already had its Owner");
    b.token = a.server.token.clone();
    let b = TestServer::from(b);
    for s in [&a, &b] {
        assert!(!s.server.data_dir.join("jitgate.db").exists(), "no SQLite file: the store is PostgreSQL");
    }

    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_of_the_binary_serve_one_postgresql_database() {
    let db = match TestDatabase::create().await {
        Ok(db) => db,
        Err(why) => return jitgate_netns::skip("two_replicas_of_the_binary_serve_one_postgresql_database", &why),
    };
    let (a, b) = replicas(&db);
    let vm = a.register_vm("rg1", "vm1", "Linux").await;
    let rules = json!([{"id": vm, "ports": [
        {"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "*", "maxRequestAccessDuration": "PT3H"}
    ]}]);
    let policy = json!({"kind": "Basic", "properties": {"virtualMachines": rules}});
    let put = a.json(Method::PUT, &a.policy_url("rg1", "westeurope", "default"), &policy).await;
    assert_eq!(put.status, StatusCode::OK, "{put:?}");

    let end = (OffsetDateTime::now_utc() + Duration::minutes(30)).format(&Rfc3339).expect("format");
    let body =
        json!({"virtualMachines": [{"id": vm, "ports": [{"number": 22, "endTimeUtc": end}]}], "justification": "pg"});
    let init = b.json(Method::POST, &b.initiate_url("rg1", "westeurope", "default"), &body).await;
    assert_eq!(init.status, StatusCode::ACCEPTED, "{init:?}");
    assert_eq!(init.body["virtualMachines"][0]["ports"][0]["status"], "Initiated");

    // The first replica sees the request the second recorded.
    let got = a.send(Method::GET, &a.policy_url("rg1", "westeurope", "default"), None).await;
    assert_eq!(got.body["properties"]["requests"].as_array().map(Vec::len), Some(1), "{got:?}");

    for s in [&a, &b] {
        let v = s.send(Method::GET, &s.url("/api/v1/audit/verify"), None).await;
        assert_eq!(v.status, StatusCode::OK, "{v:?}");
        assert_eq!(v.body["valid"], true, "{v:?}");
        assert!(v.body["records"].as_u64().unwrap_or(0) >= 4, "bootstrap, VM, policy, initiate: {v:?}");
    }
    drop((a, b));
}

/// Replicas cooperate: an agent long-polling replica B is woken by a change made through
/// replica A (long before its 60-second wait runs out), and A's `?wait=applied` sees the report
/// the agent sends to B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_one_replica_wakes_agents_on_the_other_and_waits_see_their_reports() {
    let test = "a_change_on_one_replica_wakes_agents_on_the_other";
    let db = match TestDatabase::create().await {
        Ok(db) => db,
        Err(why) => return jitgate_netns::skip(test, &why),
    };
    let (a, b) = replicas(&db);
    let (a, b) = (std::sync::Arc::new(a), std::sync::Arc::new(b));
    let token = join_token(&a, SUB, "rg1", "host", json!({})).await;
    let (_, credential) = joined(&b, &token, "vm1", "host", json!({"addresses": ["10.0.0.9"]})).await;
    let vm = vm_id("rg1", "vm1");
    let rules = json!([{"id": vm, "ports": [
        {"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "*", "maxRequestAccessDuration": "PT3H"}
    ]}]);
    let put = a
        .json(
            Method::PUT,
            &a.policy_url("rg1", "westeurope", "default"),
            &json!({"properties": {"virtualMachines": rules}}),
        )
        .await;
    assert_eq!(put.status, StatusCode::OK, "{put:?}");
    let now = state(&b, &credential).await;
    let revision = now.body["revision"].as_u64().expect("revision");
    // The agent's report of the policy, to B; then its long-poll on B.
    let report = |r: u64| json!({"revision": r, "nftablesUsable": true});
    let applied = agent_call(&b, &credential, Method::POST, "/agent/v1/applied", Some(report(revision))).await;
    assert_eq!(applied.status, StatusCode::NO_CONTENT, "{applied:?}");
    let poll = format!("/agent/v1/state?after={revision}&wait=60");
    let long_poll = tokio::spawn({
        let (b, credential) = (b.clone(), credential.clone());
        async move { agent_call(&b, &credential, Method::GET, &poll, None).await }
    });
    // The initiate, through A, waits for enforcement.
    let end = (OffsetDateTime::now_utc() + Duration::minutes(30)).format(&Rfc3339).expect("format");
    let body = json!({"virtualMachines": [{"id": vm, "ports": [
        {"number": 22, "allowedSourceAddressPrefix": "198.51.100.7", "endTimeUtc": end}]}]});
    let url = a.initiate_url("rg1", "westeurope", "default") + "&wait=applied&timeout=50";
    let initiate = tokio::spawn({
        let a = a.clone();
        async move { a.json(Method::POST, &url, &body).await }
    });
    let woken = tokio::time::timeout(std::time::Duration::from_secs(20), long_poll)
        .await
        .expect("B's long-poll answered on A's change, not at the end of its wait")
        .expect("joined");
    assert_eq!(woken.status, StatusCode::OK, "{woken:?}");
    let new = woken.body["revision"].as_u64().expect("revision");
    assert!(new > revision, "{woken:?}");
    let grants = woken.body["grants"].as_array().cloned().unwrap_or_default();
    assert!(grants.iter().any(|g| g.to_string().contains("198.51.100.7")), "the grant is in B's answer: {woken:?}");
    assert!(!initiate.is_finished(), "A waits for the agent's report");
    let applied = agent_call(&b, &credential, Method::POST, "/agent/v1/applied", Some(report(new))).await;
    assert_eq!(applied.status, StatusCode::NO_CONTENT, "{applied:?}");
    let done = tokio::time::timeout(std::time::Duration::from_secs(20), initiate)
        .await
        .expect("A's wait ended on the report B received")
        .expect("joined");
    assert_eq!(done.status, StatusCode::ACCEPTED, "{done:?}");
    assert_eq!(done.body["virtualMachines"][0]["ports"][0]["status"], "Initiated", "{done:?}");
}

/// `/readyz` says unavailable while the database cannot be reached and ready again once it can,
/// without a restart; `/healthz` (the process) stays up throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_database() {
    let db = match TestDatabase::create().await {
        Ok(db) => db,
        Err(why) => return jitgate_netns::skip("readiness_follows_the_database", &why),
    };
    let target: std::net::SocketAddr = "127.0.0.1:5432".parse().expect("address");
    let proxy = jitgate_testkit::proxy::CutProxy::start(target).await.expect("proxy");
    let url = db.url().replace("127.0.0.1:5432", &proxy.addr().to_string());
    assert_ne!(url, db.url(), "the server reaches the database through the proxy");
    let s = TestServer::start(BIN, &["--database-url", &url]);
    let ready = async |s: &TestServer| s.send(Method::GET, &s.url("/readyz"), None).await.status;
    assert_eq!(ready(&s).await, StatusCode::OK);
    proxy.cut();
    let unready = jitgate_testkit::eventually(std::time::Duration::from_secs(20), async || {
        ready(&s).await == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    assert!(unready, "/readyz turns unavailable without the database");
    assert_eq!(s.send(Method::GET, &s.url("/healthz"), None).await.status, StatusCode::OK, "the process is alive");
    let refused = s.send(Method::GET, &s.url("/api/v1/vms"), None).await;
    assert_eq!(
        (refused.status, refused.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "StoreUnavailable"),
        "a call needing the database says to try again, in Azure's error shape: {refused:?}"
    );
    proxy.restore();
    let back =
        jitgate_testkit::eventually(std::time::Duration::from_secs(20), async || ready(&s).await == StatusCode::OK)
            .await;
    assert!(back, "/readyz is ready again once the database answers");
    let listed = s.send(Method::GET, &s.url("/api/v1/vms"), None).await;
    assert_eq!(listed.status, StatusCode::OK, "{listed:?}");
}

/// The portal on two replicas: a browser signed in through replica A is signed in on replica B
/// (sessions live in the shared store), and signing out on B ends the session on A too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_portal_session_made_on_one_replica_is_served_by_the_other() {
    let db = match TestDatabase::create().await {
        Ok(db) => db,
        Err(why) => return jitgate_netns::skip("a_portal_session_made_on_one_replica_is_served_by_the_other", &why),
    };
    let (a, b) = replicas(&db);
    // A browser: no redirects followed, cookies by hand, trusting both replicas' certificates.
    let mut builder = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
    for s in [&a, &b] {
        let pem = std::fs::read(&s.server.ca_cert).expect("certificate");
        builder = builder.add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("pem"));
    }
    let browser = builder.build().expect("client");
    let cookie_of = |resp: &reqwest::Response, name: &str| -> Option<String> {
        resp.headers().get_all(reqwest::header::SET_COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|v| {
            v.strip_prefix(&format!("{name}=")).map(|rest| rest.split(';').next().unwrap_or("").to_owned())
        })
    };
    let hidden = |body: &str, name: &str| -> Option<String> {
        let marker = format!(r#"name="{name}" value=""#);
        let at = body.find(&marker)? + marker.len();
        Some(body[at..].split('"').next()?.to_owned())
    };
    let form = browser.get(a.url("/signin")).send().await.expect("sign-in form");
    let pre = cookie_of(&form, "__Host-jitgate_signin").expect("sign-in cookie");
    let csrf = hidden(&form.text().await.expect("body"), "csrf").expect("csrf");
    let signed = browser
        .post(a.url("/signin"))
        .header("Cookie", format!("__Host-jitgate_signin={pre}"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(format!("csrf={csrf}&next=%2Fjit&token={}", a.server.token))
        .send()
        .await
        .expect("sign in");
    assert_eq!(signed.status(), StatusCode::SEE_OTHER);
    let session = cookie_of(&signed, "__Host-jitgate_session").expect("a session cookie");
    let cookie = format!("__Host-jitgate_session={session}");

    let on_b = browser.get(b.url("/jit")).header("Cookie", &cookie).send().await.expect("page on b");
    assert_eq!(on_b.status(), StatusCode::OK, "replica b serves the session made on a");
    let csrf = hidden(&on_b.text().await.expect("body"), "csrf").expect("the session's csrf token");
    let out = browser
        .post(b.url("/signout"))
        .header("Cookie", &cookie)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(format!("csrf={csrf}"))
        .send()
        .await
        .expect("sign out on b");
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    let on_a = browser.get(a.url("/jit")).header("Cookie", &cookie).send().await.expect("page on a");
    assert_eq!(on_a.status(), StatusCode::SEE_OTHER, "signed out everywhere");
}
