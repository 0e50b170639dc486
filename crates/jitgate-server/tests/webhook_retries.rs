//! Webhook retries on a test clock: a failed delivery is tried again after 1 s, 2 s, 4 s …, each
//! attempt counted; a success ends it as `Delivered`; after the last allowed attempt it is
//! `Failed` and never due again. The delivery worker (`webhooks::run`) runs for real against a
//! loopback receiver; only the clock is the test's, so no test waits out a backoff.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may panic on a failed expectation.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use serde_json::{json, Value};
use time::OffsetDateTime;
use tokio::sync::watch;
use tower::ServiceExt;

use jitgate_core::outbox::{DELIVERED, FAILED, MAX_ATTEMPTS, PENDING};
use jitgate_server::tls::PeerAddr;
use jitgate_server::{auth, App, Clock, ServerConfig};
use jitgate_store::prelude::*;
use jitgate_store::Delivery;
use jitgate_store_sqlite::SqliteStore;

const SUB: &str = "6b0f2a53-8c1e-4f3d-9a57-0e2f1d4c7b91";

/// The test's clock: it stands still until the test moves it.
struct TestClock(Mutex<OffsetDateTime>);

impl TestClock {
    fn set(&self, to: OffsetDateTime) {
        *self.0.lock().unwrap() = to;
    }
}

impl Clock for TestClock {
    fn now(&self) -> OffsetDateTime {
        *self.0.lock().unwrap()
    }
}

/// A receiver that answers its n-th POST (counting from 0) with `statuses[n]`, and 200 after the
/// list; it counts what it got.
fn receiver(statuses: Vec<u16>) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let got = Arc::new(AtomicUsize::new(0));
    let counter = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).map(|n| n == 0).unwrap_or(true) || line.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = line.split_once(':') {
                    if k.trim().eq_ignore_ascii_case("content-length") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let n = counter.load(Ordering::SeqCst);
            let status = statuses.get(n).copied().unwrap_or(200);
            let mut stream = reader.into_inner();
            let _ = write!(stream, "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let _ = stream.flush();
            // Counted once answered, so a test that sees the count also sees the attempt end.
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    (url, got)
}

struct World {
    _dir: tempfile::TempDir,
    store: Arc<SqliteStore>,
    clock: Arc<TestClock>,
    app: App,
    router: Router,
    token: String,
    stop: watch::Sender<bool>,
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn world() -> World {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = jitgate_store::secrets::Keyring::generate().expect("keys");
    let store = Arc::new(SqliteStore::open(&dir.path().join("db"), keys).expect("store"));
    let now = OffsetDateTime::from_unix_timestamp(1_900_000_000).expect("time");
    let token = auth::new_token();
    let audit = auth::bootstrap_event("owner", now);
    assert!(store.bootstrap("owner", &auth::hash_token(&token), None, audit).await.expect("bootstrap"));
    let mut config = ServerConfig::default();
    config.webhooks.allow_http = true;
    config.webhooks.allowed = vec!["127.0.0.0/8".parse().expect("net")];
    let clock = Arc::new(TestClock(Mutex::new(now)));
    let app = App::new(store.clone(), clock.clone(), config);
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(jitgate_server::webhooks::run(app.clone(), stopped));
    let router = jitgate_server::router(app.clone());
    World { _dir: dir, store, clock, app, router, token, stop }
}

impl World {
    async fn call(&self, method: Method, uri: &str, body: Value) -> (StatusCode, Value) {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .expect("request");
        req.extensions_mut().insert(ConnectInfo(PeerAddr(SocketAddr::from(([192, 0, 2, 7], 40000)))));
        let resp = self.router.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.expect("body");
        (status, if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).expect("JSON") })
    }

    /// A webhook for the subscription's `requested` events, then one request: one delivery.
    async fn one_delivery(&self, url: &str) -> String {
        let (status, hook) = self
            .call(Method::POST, "/api/v1/webhooks", json!({"subscription": SUB, "url": url, "events": ["requested"]}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{hook}");
        let vm = format!("/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1");
        let (status, body) =
            self.call(Method::PUT, "/api/v1/vms", json!({"id": vm, "osType": "Linux", "location": "westeurope"})).await;
        assert!(status.is_success(), "{body}");
        let policy = format!(
            "/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Security/locations/westeurope/jitNetworkAccessPolicies/default"
        );
        let rules = json!({"kind": "Basic", "properties": {"virtualMachines": [{"id": vm, "ports": [
            {"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "*", "maxRequestAccessDuration": "PT3H"}]}]}});
        let (status, body) = self.call(Method::PUT, &format!("{policy}?api-version=2020-01-01"), rules).await;
        assert!(status.is_success(), "{body}");
        let ask = json!({"virtualMachines": [{"id": vm, "ports": [{"number": 22, "duration": "PT1H",
            "allowedSourceAddressPrefix": "192.0.2.7"}]}], "justification": "retries"});
        let (status, body) = self.call(Method::POST, &format!("{policy}/initiate?api-version=2020-01-01"), ask).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        hook["id"].as_str().expect("webhook id").to_owned()
    }

    async fn delivery(&self, hook: &str) -> Delivery {
        let mut all = self.store.list_deliveries(hook, 10).await.expect("deliveries");
        assert_eq!(all.len(), 1, "one delivery: {all:?}");
        all.remove(0)
    }

    /// Waits (on the real clock, bounded) until the delivery has been attempted `n` times.
    async fn attempted(&self, hook: &str, n: u32) -> Delivery {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let d = self.delivery(hook).await;
            if d.attempts >= n {
                return d;
            }
            assert!(std::time::Instant::now() < deadline, "attempt {n} never came: {d:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Moves the clock to `to` and wakes the worker.
    fn jump(&self, to: OffsetDateTime) {
        self.clock.set(to);
        self.app.deliveries.notify_one();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_deliveries_back_off_doubling_and_a_success_ends_them() {
    let w = world().await;
    let (url, got) = receiver(vec![500, 503, 502]);
    let hook = w.one_delivery(&url).await;
    let mut previous = w.attempted(&hook, 1).await;
    for n in 1..=3u32 {
        assert_eq!(previous.state, PENDING, "after failed attempt {n}: {previous:?}");
        assert!(previous.last_error.as_deref().is_some_and(|e| e.contains("50")), "{previous:?}");
        // Due exactly 2^(n-1) s after the attempt (made at the clock's time).
        let waited = previous.next_attempt - w.clock.now();
        assert_eq!(waited, time::Duration::seconds(1 << (n - 1)), "backoff after attempt {n}");
        // A moment before it is due nothing is tried.
        w.jump(previous.next_attempt - time::Duration::milliseconds(1));
        assert_eq!(w.store.next_delivery().await.expect("next"), Some(previous.next_attempt));
        assert_eq!(got.load(Ordering::SeqCst), n as usize);
        w.jump(previous.next_attempt);
        previous = w.attempted(&hook, n + 1).await;
    }
    assert_eq!(previous.state, DELIVERED, "the fourth attempt got 200: {previous:?}");
    assert_eq!(previous.attempts, 4);
    assert_eq!(previous.delivered, Some(w.clock.now()));
    assert_eq!(w.store.next_delivery().await.expect("next"), None, "nothing is due any more");
    assert_eq!(got.load(Ordering::SeqCst), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_is_given_up_as_failed_after_the_last_attempt() {
    let w = world().await;
    let (url, got) = receiver(vec![500; 100]);
    let hook = w.one_delivery(&url).await;
    let mut d = w.attempted(&hook, 1).await;
    for n in 1..MAX_ATTEMPTS {
        assert_eq!((d.state.as_str(), d.attempts), (PENDING, n), "{d:?}");
        w.jump(d.next_attempt);
        d = w.attempted(&hook, n + 1).await;
    }
    assert_eq!((d.state.as_str(), d.attempts), (FAILED, MAX_ATTEMPTS), "given up after {MAX_ATTEMPTS}: {d:?}");
    assert_eq!(w.store.next_delivery().await.expect("next"), None, "a failed delivery is never due again");
    // A day later, with the worker woken, nothing more is sent.
    w.jump(w.clock.now() + time::Duration::days(1));
    assert_eq!(w.store.next_delivery().await.expect("next"), None);
    assert_eq!(got.load(Ordering::SeqCst), MAX_ATTEMPTS as usize);
    assert_eq!(w.delivery(&hook).await.attempts, MAX_ATTEMPTS);
}
