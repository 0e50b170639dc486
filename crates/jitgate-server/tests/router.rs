//! The router without a socket: routing, authentication, error bodies and audited refusals,
//! driven with `tower::ServiceExt::oneshot` over a temporary SQLite store.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may panic on a failed expectation.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use time::OffsetDateTime;
use tower::ServiceExt;

use jitgate_core::audit::{ops, AuditStatus};
use jitgate_server::tls::PeerAddr;
use jitgate_server::{auth, App, Clock, ServerConfig};
use jitgate_store::prelude::*;
use jitgate_store_sqlite::SqliteStore;

const MAX_BODY: usize = 1024;

/// The test's clock: it stands still until the test moves it.
struct TestClock(std::sync::Mutex<OffsetDateTime>);

impl TestClock {
    fn advance(&self, by: time::Duration) {
        let mut now = self.0.lock().unwrap();
        *now += by;
    }
}

impl Clock for TestClock {
    fn now(&self) -> OffsetDateTime {
        *self.0.lock().unwrap()
    }
}

struct Harness {
    _dir: tempfile::TempDir,
    store: Arc<SqliteStore>,
    router: Router,
    token: String,
    clock: Arc<TestClock>,
}

async fn harness() -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = jitgate_store::secrets::Keyring::generate().expect("keys");
    let store = Arc::new(SqliteStore::open(&dir.path().join("db"), keys).expect("store"));
    let now = OffsetDateTime::from_unix_timestamp(1_900_000_000).expect("time");
    let token = auth::new_token();
    let audit = auth::bootstrap_event("owner", now);
    assert!(store.bootstrap("owner", &auth::hash_token(&token), None, audit).await.expect("bootstrap"));
    let config = ServerConfig { list_page_size: 10, max_body_bytes: MAX_BODY, ..Default::default() };
    let clock = Arc::new(TestClock(std::sync::Mutex::new(now)));
    let app = App::new(store.clone(), clock.clone(), config);
    Harness { _dir: dir, store, router: jitgate_server::router(app), token, clock }
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: serde_json::Value,
}

impl Answer {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_default()
    }
}

impl Harness {
    async fn send(&self, method: Method, uri: &str, token: Option<&str>, body: impl Into<Body>) -> Answer {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let mut req = req.header(header::CONTENT_TYPE, "application/json").body(body.into()).expect("request");
        req.extensions_mut().insert(ConnectInfo(PeerAddr(SocketAddr::from(([192, 0, 2, 7], 40000)))));
        let resp = self.router.clone().oneshot(req).await.expect("infallible");
        let (parts, body) = resp.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 20).await.expect("body");
        let body =
            if bytes.is_empty() { serde_json::Value::Null } else { serde_json::from_slice(&bytes).expect("JSON") };
        Answer { status: parts.status, headers: parts.headers, body }
    }

    async fn owner(&self, method: Method, uri: &str, body: impl Into<Body>) -> Answer {
        self.send(method, uri, Some(&self.token.clone()), body).await
    }

    /// The failed audit records of `operation`, with their reasons.
    async fn refusals(&self, operation: &str) -> Vec<String> {
        let records = self.store.audit_records(0, 1000).await.expect("audit");
        records
            .into_iter()
            .filter(|r| r.event.operation == operation && r.event.status == AuditStatus::Failed)
            .map(|r| r.event.properties.get("reason").cloned().unwrap_or_default())
            .collect()
    }
}

#[tokio::test]
async fn routes_by_method_and_says_what_is_allowed() {
    let h = harness().await;
    let a = h.owner(Method::GET, "/api/v1/vms", Body::empty()).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(a.body["value"], serde_json::json!([]));

    let a = h.owner(Method::POST, "/api/v1/vms", Body::empty()).await;
    assert_eq!((a.status, a.code()), (StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed"));
    let allow = a.headers.get(header::ALLOW).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    for m in ["GET", "HEAD", "PUT", "DELETE"] {
        assert!(allow.contains(m), "Allow: {allow}");
    }
    assert!(!allow.contains("POST"), "Allow: {allow}");

    let a = h.owner(Method::GET, "/api/v1/requests/1/approve", Body::empty()).await;
    assert_eq!((a.status, a.code()), (StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed"));

    let a = h.owner(Method::GET, "/api/v1/nothing/here", Body::empty()).await;
    assert_eq!((a.status, a.code()), (StatusCode::NOT_FOUND, "NotFound"));
}

#[tokio::test]
async fn every_native_route_needs_a_valid_bearer_token() {
    let h = harness().await;
    for (method, uri) in [
        (Method::GET, "/api/v1/vms"),
        (Method::PUT, "/api/v1/vms"),
        (Method::DELETE, "/api/v1/vms?id=x"),
        (Method::POST, "/api/v1/agentTokens"),
        (Method::GET, "/api/v1/agentTokens"),
        (Method::GET, "/api/v1/agents"),
        (Method::DELETE, "/api/v1/agents/a1"),
        (Method::GET, "/api/v1/requests/1"),
        (Method::POST, "/api/v1/requests/1/revoke"),
        (Method::POST, "/api/v1/requests/1/approve"),
        (Method::POST, "/api/v1/requests/1/deny"),
        (Method::POST, "/api/v1/requests/1/extend"),
    ] {
        let a = h.send(method.clone(), uri, None, Body::empty()).await;
        assert_eq!((a.status, a.code()), (StatusCode::UNAUTHORIZED, "AuthenticationFailed"), "{method} {uri}");
        assert!(a.headers.contains_key(header::WWW_AUTHENTICATE), "{method} {uri}");
        let a = h.send(method.clone(), uri, Some("jg_not-a-token"), Body::empty()).await;
        assert_eq!((a.status, a.code()), (StatusCode::UNAUTHORIZED, "InvalidAuthenticationToken"), "{method} {uri}");
    }
    assert!(!h.refusals(ops::SIGN_IN).await.is_empty(), "failed sign-ins are audited");
}

#[tokio::test]
async fn error_bodies_name_the_code() {
    let h = harness().await;
    let a = h.owner(Method::GET, "/api/v1/requests/9", Body::empty()).await;
    assert_eq!((a.status, a.code()), (StatusCode::NOT_FOUND, jitgate_core::invalid::codes::REQUEST_NOT_FOUND));
    let a = h.owner(Method::GET, "/api/v1/requests/abc", Body::empty()).await;
    assert_eq!((a.status, a.code()), (StatusCode::BAD_REQUEST, "InvalidRequestId"));
    let a = h.owner(Method::GET, "/api/v1/vms?view=bogus", Body::empty()).await;
    assert_eq!((a.status, a.code()), (StatusCode::BAD_REQUEST, "InvalidView"));
    let a = h.owner(Method::GET, "/api/v1/vms?view=unsupported", Body::empty()).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    let a = h.owner(Method::PUT, "/api/v1/vms", "{").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{:?}", a.body);
    assert!(a.body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{:?}", a.body);
}

#[tokio::test]
async fn refusals_before_the_store_are_audited() {
    let h = harness().await;
    let too_big = vec![b' '; MAX_BODY + 1];

    let a = h.owner(Method::POST, "/api/v1/requests/1/approve?wait=bogus", Body::empty()).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{:?}", a.body);
    let a = h.owner(Method::POST, "/api/v1/requests/1/approve", too_big.clone()).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE, "{:?}", a.body);
    assert_eq!(h.refusals(ops::REQUEST_APPROVE).await.len(), 2, "bad wait option and oversized body");

    let a = h.owner(Method::POST, "/api/v1/requests/1/deny", too_big.clone()).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE, "{:?}", a.body);
    assert_eq!(h.refusals(ops::REQUEST_DENY).await.len(), 1);

    let a = h.owner(Method::POST, "/api/v1/principals/owner/tokens", too_big.clone()).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE, "{:?}", a.body);
    assert_eq!(h.refusals(jitgate_core::rbac::actions::PRINCIPAL_WRITE).await.len(), 1);

    let a = h.owner(Method::PUT, "/api/v1/vms", too_big.clone()).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE, "{:?}", a.body);
    assert_eq!(h.refusals(ops::VM_WRITE).await.len(), 1);

    let a = h.owner(Method::DELETE, "/api/v1/vms", Body::empty()).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{:?}", a.body);
    assert_eq!(h.refusals(ops::VM_DELETE).await.len(), 1);

    let a = h.owner(Method::POST, "/api/v1/requests/1/extend?wait=bogus", Body::empty()).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{:?}", a.body);
    assert_eq!(h.refusals(ops::REQUEST_EXTEND).await.len(), 1);
}

#[tokio::test]
async fn agent_routes_take_an_agent_credential_and_audit_refusals() {
    let h = harness().await;
    for (method, uri) in
        [(Method::GET, "/agent/v1/state"), (Method::POST, "/agent/v1/applied"), (Method::POST, "/agent/v1/rotate")]
    {
        let a = h.send(method.clone(), uri, Some("jga_not-a-credential"), Body::empty()).await;
        assert_eq!((a.status, a.code()), (StatusCode::UNAUTHORIZED, "InvalidAuthenticationToken"), "{method} {uri}");
        // A person's token is not an agent credential.
        let a = h.owner(method.clone(), uri, Body::empty()).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{method} {uri}: {:?}", a.body);
    }
    let records = h.store.audit_records(0, 1000).await.expect("audit");
    let failed_agent_sign_ins = records
        .iter()
        .filter(|r| r.event.operation == ops::SIGN_IN && r.event.status == AuditStatus::Failed)
        .filter(|r| r.event.resource_id.starts_with("/agent/v1/"))
        .count();
    assert!(failed_agent_sign_ins >= 1, "refused agent credentials are audited: {records:?}");

    let t = h
        .owner(
            Method::POST,
            "/api/v1/agentTokens",
            r#"{"subscription":"20ff7fc3-e762-44dd-bd96-b71116dcdc23","resourceGroup":"rg1","location":"westeurope"}"#,
        )
        .await;
    assert_eq!(t.status, StatusCode::CREATED, "{:?}", t.body);
    let join_token = t.body["token"].as_str().expect("token").to_owned();
    let join = format!(
        r#"{{"joinToken":"{join_token}","name":"h1","mode":"host","osType":"Linux","hostname":"h1","addresses":["10.0.0.5"]}}"#
    );
    let j = h.send(Method::POST, "/agent/v1/join", None, join).await;
    assert_eq!(j.status, StatusCode::CREATED, "{:?}", j.body);
    let credential = j.body["credential"].as_str().expect("credential").to_owned();

    let s = h.send(Method::GET, "/agent/v1/state", Some(&credential), Body::empty()).await;
    assert_eq!(s.status, StatusCode::OK, "{:?}", s.body);
    assert!(s.body["revision"].as_u64().is_some(), "{:?}", s.body);

    let a = h.send(Method::POST, "/agent/v1/applied", Some(&credential), "{").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{:?}", a.body);
    assert_eq!(h.refusals(ops::AGENT_APPLIED).await.len(), 1, "a malformed report is refused with a record");

    let r = h.send(Method::POST, "/agent/v1/rotate", Some(&credential), Body::empty()).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let s = h.send(Method::GET, "/agent/v1/state", Some(&credential), Body::empty()).await;
    assert_eq!(s.status, StatusCode::UNAUTHORIZED, "the rotated-away credential stops working: {:?}", s.body);
    let fresh = r.body["credential"].as_str().expect("credential");
    let s = h.send(Method::GET, "/agent/v1/state", Some(fresh), Body::empty()).await;
    assert_eq!(s.status, StatusCode::OK, "{:?}", s.body);
}

#[tokio::test]
async fn metrics_answer_a_peer_outside_the_allowed_ranges_only_with_a_token() {
    let h = harness().await;
    let a = h.send(Method::GET, "/metrics", None, Body::empty()).await;
    assert_eq!((a.status, a.code()), (StatusCode::FORBIDDEN, "AuthorizationFailed"), "{:?}", a.body);
    assert!(a.body["error"]["message"].as_str().unwrap_or_default().contains("192.0.2.7"), "{:?}", a.body);
    let mut req = Request::builder()
        .method(Method::GET)
        .uri("/metrics")
        .header(header::AUTHORIZATION, format!("Bearer {}", h.token))
        .body(Body::empty())
        .expect("request");
    req.extensions_mut().insert(ConnectInfo(PeerAddr(SocketAddr::from(([192, 0, 2, 7], 40000)))));
    let resp = h.router.clone().oneshot(req).await.expect("infallible");
    assert_eq!(resp.status(), StatusCode::OK);
    let text = axum::body::to_bytes(resp.into_body(), 1 << 20).await.expect("body");
    let text = String::from_utf8_lossy(&text);
    let refused = "jitgate_http_requests_total{route=\"/metrics\",method=\"GET\",status=\"403\"} 1";
    assert!(text.lines().any(|l| l == refused), "the refusal is counted under its route:\n{text}");
}

#[tokio::test]
async fn a_token_works_until_its_end_and_not_a_moment_after() {
    let h = harness().await;
    let made = h.owner(Method::POST, "/api/v1/principals/owner/tokens", r#"{"expiresIn":"PT1H"}"#).await;
    assert_eq!(made.status, StatusCode::CREATED, "{:?}", made.body);
    let token = made.body["token"].as_str().expect("token").to_owned();
    let call = async |h: &Harness| h.send(Method::GET, "/api/v1/vms", Some(&token), Body::empty()).await;
    assert_eq!(call(&h).await.status, StatusCode::OK);
    // One second before its end it still works; at its end it does not.
    h.clock.advance(time::Duration::hours(1) - time::Duration::seconds(1));
    assert_eq!(call(&h).await.status, StatusCode::OK, "a second before the end");
    h.clock.advance(time::Duration::seconds(1));
    let a = call(&h).await;
    assert_eq!((a.status, a.code()), (StatusCode::UNAUTHORIZED, "InvalidAuthenticationToken"), "{:?}", a.body);
    assert!(!h.refusals(ops::SIGN_IN).await.is_empty(), "the refused sign-in is audited");
    // The owner's own token (no end) is unaffected.
    assert_eq!(h.owner(Method::GET, "/api/v1/vms", Body::empty()).await.status, StatusCode::OK);
}
