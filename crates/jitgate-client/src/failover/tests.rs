#![allow(clippy::unwrap_used, clippy::expect_used)]

//! Failover between replicas, against HTTPS listeners on 127.0.0.1 (port 0) that share one
//! self-signed certificate for `localhost`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use jitgate_api_types::arm::InitiateIn;
use jitgate_api_types::native::DecisionIn;

use crate::native::Decision;
use crate::{split_urls, CaCert, Client, ClientError, Settings, Switch};

/// One certificate for `localhost`, served by every listener of a test.
struct Tls {
    acceptor: tokio_rustls::TlsAcceptor,
    pem: String,
}

impl Tls {
    fn new() -> Tls {
        let (acceptor, pem) = crate::tests::self_signed_localhost();
        Tls { acceptor, pem }
    }

    /// Serves `router` over HTTPS on a port of its own; returns the base URL.
    async fn serve(&self, router: Router) -> String {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = tcp.local_addr().unwrap().port();
        let listener = TlsListener { tcp, acceptor: self.acceptor.clone() };
        tokio::spawn(async move { axum::serve(listener, router).await });
        format!("https://localhost:{port}")
    }

    /// A listener that completes the TLS handshake, reads the request's head and closes the
    /// connection without an answer, as a replica killed while holding a request does.
    async fn serve_hang_up(&self) -> String {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = tcp.local_addr().unwrap().port();
        let acceptor = self.acceptor.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            while let Ok((conn, _)) = tcp.accept().await {
                let Ok(mut tls) = acceptor.accept(conn).await else { continue };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                drop(tls);
            }
        });
        format!("https://localhost:{port}")
    }

    /// Settings for `urls` trusting the certificate, with quick retries.
    fn settings(&self, urls: &[&str]) -> Settings {
        Settings::with_urls(urls)
            .token("t0k")
            .ca_cert(Some(CaCert::Pem(self.pem.clone().into_bytes())))
            .retries(1, Duration::from_millis(1))
    }
}

struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((conn, addr)) = self.tcp.accept().await else { continue };
            if let Ok(tls) = self.acceptor.accept(conn).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// A URL where nothing listens: a port bound, then let go.
fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("https://localhost:{}", listener.local_addr().unwrap().port())
}

fn json(status: StatusCode, body: &str) -> Response {
    (status, [("content-type", "application/json")], body.to_owned()).into_response()
}

const PRINCIPALS: &str = r#"{"value":[{"name":"alice","type":"User"}]}"#;
const STATE: &str = r#"{"revision":3,"mode":"host","ports":[],"grants":[]}"#;
const REQUEST: &str = r#"{"id":7,"virtualMachines":[],"startTimeUtc":"2026-01-01T00:00:00Z","requestor":"alice"}"#;
const NATIVE_REQUEST: &str =
    r#"{"id":7,"policyId":"/p","requestor":"alice","startTimeUtc":"2026-01-01T00:00:00Z","virtualMachines":[]}"#;

/// A replica that answers `status` (with the body when 2xx, else Azure's error body) to the
/// principals, an agent's state, initiate and approve, counting the calls and keeping each
/// initiate's `x-ms-client-request-id`.
#[derive(Clone, Default)]
struct Replica {
    calls: Arc<AtomicUsize>,
    keys: Arc<Mutex<Vec<String>>>,
}

impl Replica {
    fn router(&self, status: StatusCode) -> Router {
        let answer = move |body: &'static str| {
            if status.is_success() {
                json(status, body)
            } else {
                json(status, r#"{"error":{"code":"Busy","message":"try again"}}"#)
            }
        };
        let (c1, c2, c3, c4) = (self.calls.clone(), self.calls.clone(), self.calls.clone(), self.calls.clone());
        let keys = self.keys.clone();
        Router::new()
            .route(
                "/api/v1/principals",
                get(move || async move {
                    c1.fetch_add(1, Ordering::SeqCst);
                    answer(PRINCIPALS)
                }),
            )
            .route(
                "/p/initiate",
                post(move |headers: HeaderMap| async move {
                    c2.fetch_add(1, Ordering::SeqCst);
                    let key = headers.get("x-ms-client-request-id").and_then(|v| v.to_str().ok()).unwrap_or("");
                    keys.lock().unwrap().push(key.to_owned());
                    answer(REQUEST)
                }),
            )
            .route(
                "/agent/v1/state",
                get(move || async move {
                    c4.fetch_add(1, Ordering::SeqCst);
                    answer(STATE)
                }),
            )
            .route(
                "/api/v1/requests/{id}/approve",
                post(move || async move {
                    c3.fetch_add(1, Ordering::SeqCst);
                    answer(NATIVE_REQUEST)
                }),
            )
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// The switches a client reported.
fn switches(settings: Settings) -> (Settings, Arc<Mutex<Vec<Switch>>>) {
    let seen: Arc<Mutex<Vec<Switch>>> = Arc::default();
    let log = seen.clone();
    (settings.on_switch(move |s| log.lock().unwrap().push(s.clone())), seen)
}

#[test]
fn url_lists_are_split_on_commas_and_lose_trailing_slashes() {
    assert_eq!(split_urls("https://a:8443/, https://b:8443,,"), ["https://a:8443", "https://b:8443"]);
    let s = Settings::with_urls(["https://a:8443,https://b:8443/", "https://c:8443"]);
    assert_eq!(s.urls, ["https://a:8443", "https://b:8443", "https://c:8443"]);
    assert_eq!(Settings::new("https://a:8443/").urls, ["https://a:8443"]);
}

#[tokio::test]
async fn a_call_moves_to_the_second_server_when_the_first_refuses_connections_and_stays_there() {
    let tls = Tls::new();
    let dead = dead_url();
    let live = Replica::default();
    let second = tls.serve(live.router(StatusCode::OK)).await;
    let (settings, seen) = switches(tls.settings(&[&dead, &second]));
    let client = Client::new(settings).unwrap();
    assert_eq!(client.url(), dead, "the first server is used first");

    let list = client.native().principals().await.expect("the second server answers");
    assert_eq!(list[0].name, "alice");
    assert_eq!(client.url(), second, "the server that answered is kept");
    let log = seen.lock().unwrap().clone();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!((log[0].from.as_str(), log[0].to.as_str()), (dead.as_str(), second.as_str()));
    assert!(!log[0].after.is_empty(), "the switch says why");

    client.native().principals().await.expect("again");
    assert_eq!(live.calls(), 2);
    assert_eq!(seen.lock().unwrap().len(), 1, "a switch is reported once");
    // Clones share the server in use.
    assert_eq!(client.with_token("other").url(), second);
}

#[tokio::test]
async fn a_get_answered_503_moves_to_the_next_server() {
    let tls = Tls::new();
    let (busy, live) = (Replica::default(), Replica::default());
    let first = tls.serve(busy.router(StatusCode::SERVICE_UNAVAILABLE)).await;
    let second = tls.serve(live.router(StatusCode::OK)).await;
    let client = Client::new(tls.settings(&[&first, &second])).unwrap();
    let list = client.native().principals().await.expect("the second server answers");
    assert_eq!(list[0].name, "alice");
    assert_eq!((busy.calls(), live.calls()), (1, 1));
}

#[tokio::test]
async fn a_long_poll_whose_server_hangs_up_moves_to_the_next_server() {
    let tls = Tls::new();
    let first = tls.serve_hang_up().await;
    let live = Replica::default();
    let second = tls.serve(live.router(StatusCode::OK)).await;
    let (settings, seen) = switches(tls.settings(&[&first, &second]).retries(0, Duration::ZERO));
    let client = Client::new(settings).unwrap();
    let state = client.agent().state("cred", Some(2), Duration::from_secs(30)).await.expect("the second server");
    assert_eq!(state.revision, 3);
    assert_eq!(client.url(), second);
    let log = seen.lock().unwrap().clone();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].after, "the connection was closed");
}

#[tokio::test]
async fn a_get_that_times_out_moves_to_the_next_server_and_is_not_asked_again() {
    let tls = Tls::new();
    let stuck = Replica::default();
    let calls = stuck.calls.clone();
    let slow = Router::new().route(
        "/api/v1/principals",
        get(move || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<()>().await;
        }),
    );
    let first = tls.serve(slow).await;
    let live = Replica::default();
    let second = tls.serve(live.router(StatusCode::OK)).await;
    let settings = tls.settings(&[&first, &second]).timeouts(Duration::from_secs(5), Duration::from_millis(300));
    let client = Client::new(settings).unwrap();
    client.native().principals().await.expect("the second server answers");
    assert_eq!(client.url(), second);
    let err = Client::new(tls.settings(&[&first]).timeouts(Duration::from_secs(5), Duration::from_millis(300)))
        .unwrap()
        .native()
        .principals()
        .await
        .expect_err("the stuck server alone");
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(stuck.calls(), 2, "one call each: a server that timed out is not asked again within a call");
}

#[tokio::test]
async fn an_initiate_answered_503_is_repeated_on_the_next_server_with_the_same_idempotency_key() {
    let tls = Tls::new();
    let (busy, live) = (Replica::default(), Replica::default());
    let first = tls.serve(busy.router(StatusCode::SERVICE_UNAVAILABLE)).await;
    let second = tls.serve(live.router(StatusCode::ACCEPTED)).await;
    let client = Client::new(tls.settings(&[&first, &second])).unwrap();
    let out = client.arm().initiate("/p", &InitiateIn::default(), false).await.expect("initiated");
    assert_eq!(out.id, Some(7));
    let (k1, k2) = (busy.keys.lock().unwrap().clone(), live.keys.lock().unwrap().clone());
    assert_eq!((k1.len(), k2.len()), (1, 1));
    assert!(!k1[0].is_empty(), "initiate carries x-ms-client-request-id");
    assert_eq!(k1, k2, "the repeat is the same request to the server");

    // Each initiate is a request of its own: a new key.
    client.arm().initiate("/p", &InitiateIn::default(), false).await.expect("again");
    let k2 = live.keys.lock().unwrap().clone();
    assert_ne!(k2[0], k2[1]);
}

#[tokio::test]
async fn a_post_without_an_idempotency_key_is_not_sent_again_after_a_503() {
    let tls = Tls::new();
    let (busy, live) = (Replica::default(), Replica::default());
    let first = tls.serve(busy.router(StatusCode::SERVICE_UNAVAILABLE)).await;
    let second = tls.serve(live.router(StatusCode::OK)).await;
    let client = Client::new(tls.settings(&[&first, &second])).unwrap();
    let err = client.native().decide(7, Decision::Approve, &DecisionIn::default(), false).await.expect_err("503");
    assert_eq!(err.status(), Some(503));
    assert_eq!((busy.calls(), live.calls()), (1, 0), "the first server may have approved it");
    assert_eq!(client.url(), first);
}

#[tokio::test]
async fn a_post_moves_on_when_its_connection_could_not_be_made() {
    let tls = Tls::new();
    let live = Replica::default();
    let second = tls.serve(live.router(StatusCode::OK)).await;
    let client = Client::new(tls.settings(&[&dead_url(), &second])).unwrap();
    let out = client.native().decide(7, Decision::Approve, &DecisionIn::default(), false).await.expect("approved");
    assert_eq!(out.request.id, Some(7));
    assert_eq!(live.calls(), 1, "nothing was sent to the first server, so the second may be asked");
}

#[tokio::test]
async fn when_every_server_fails_the_error_names_each_url_tried() {
    let tls = Tls::new();
    let dead = dead_url();
    let busy = Replica::default();
    let second = tls.serve(busy.router(StatusCode::BAD_GATEWAY)).await;
    let client = Client::new(tls.settings(&[&dead, &second])).unwrap();
    let err = client.native().principals().await.expect_err("nobody answers");
    let ClientError::Unavailable { tried } = &err else { panic!("expected Unavailable, got {err:?}") };
    let urls: Vec<&str> = tried.iter().map(|(u, _)| u.as_str()).collect();
    assert_eq!(urls, [dead.as_str(), second.as_str()]);
    let text = err.to_string();
    assert!(text.starts_with("no server answered: "), "{text}");
    assert!(text.contains(&format!("{dead}: ")) && text.contains(&format!("{second}: 502 Busy: try again")), "{text}");
    assert_eq!(err.status(), Some(502), "the last server's status");
    assert_eq!(busy.calls(), 2, "one call and one retry, each round over both servers");
    assert_eq!(client.url(), dead, "no server answered: the one in use stays");
}

#[tokio::test]
async fn a_next_link_on_one_replica_may_be_followed_on_another() {
    let tls = Tls::new();
    let client = Client::new(tls.settings(&["https://a:8443", "https://b:8443"])).unwrap();
    assert_eq!(client.at("https://a:8443/subscriptions/s?page=2"), "/subscriptions/s?page=2");
    assert_eq!(client.at("https://b:8443/x"), "/x");
    assert_eq!(client.at("https://elsewhere:8443/x"), "https://elsewhere:8443/x", "not one of ours: kept");
    assert_eq!(client.at("/x"), "/x");
}

#[tokio::test]
async fn an_agent_join_answered_503_moves_to_the_next_server() {
    let tls = Tls::new();
    let busy = Router::new().route(
        "/agent/v1/join",
        post(|| async { json(StatusCode::SERVICE_UNAVAILABLE, r#"{"error":{"code":"Busy","message":"m"}}"#) }),
    );
    let live = Router::new().route(
        "/agent/v1/join",
        post(|| async {
            json(
                StatusCode::CREATED,
                r#"{"agentId":"a1","credential":"c1","name":"vm1","mode":"host","subscription":"s","resourceGroup":"rg","location":"westeurope"}"#,
            )
        }),
    );
    let (first, second) = (tls.serve(busy).await, tls.serve(live).await);
    let client = Client::new(tls.settings(&[&first, &second]).retries(0, Duration::ZERO)).unwrap();
    let body = jitgate_api_types::agent::JoinIn {
        join_token: "jgj_x".into(),
        name: "vm1".into(),
        mode: "host".into(),
        os_type: "Linux".into(),
        addresses: vec![],
        public_address: None,
        hostname: "vm1".into(),
        name_is_hostname: false,
    };
    let out = client.agent().join(&body).await.expect("joined through the second server");
    assert_eq!(out.agent_id, "a1");
    assert_eq!(client.url(), second);
}
