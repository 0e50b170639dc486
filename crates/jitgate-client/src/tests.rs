#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use super::*;
use crate::arm::PolicyScope;
use crate::oidc::{Discovery, OidcError, Provider};

/// Serves `router` on 127.0.0.1, port 0; returns its base URL. The task ends with the runtime.
async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}")
}

fn client(url: &str) -> Client {
    Client::new(Settings::new(url).token("t0k").retries(2, Duration::from_millis(1))).unwrap()
}

fn json(status: StatusCode, body: &str) -> Response {
    (status, [("content-type", "application/json")], body.to_owned()).into_response()
}

const PRINCIPALS: &str = r#"{"value":[{"name":"alice","type":"User"}]}"#;

#[tokio::test]
async fn azure_error_bodies_become_api_errors() {
    let router = Router::new()
        .route(
            "/api/v1/principals",
            get(|| async {
                json(StatusCode::CONFLICT, r#"{"error":{"code":"Conflict","message":"it is taken","target":"name"}}"#)
            }),
        )
        .route("/api/v1/agents", get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response() }));
    let c = client(&serve(router).await);
    match c.native().principals().await {
        Err(ClientError::Api { status, code, message }) => {
            assert_eq!((status, code.as_str(), message.as_str()), (409, "Conflict", "it is taken"));
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let err = c.native().agents().await.expect_err("500");
    assert_eq!(err.status(), Some(500));
    assert_eq!(err.to_string(), "500 : boom", "a body that is not Azure's is kept as the message");
}

#[tokio::test]
async fn an_answer_of_the_wrong_shape_is_a_decode_error() {
    let router = Router::new().route("/api/v1/principals", get(|| async { json(StatusCode::OK, r#"{"value":5}"#) }));
    let c = client(&serve(router).await);
    assert!(matches!(c.native().principals().await, Err(ClientError::Decode { .. })));
}

/// Answers `first` to the first `n` calls, then 200 with the principals; counts the calls.
fn flaky(first: StatusCode, n: usize, calls: Arc<AtomicUsize>) -> Router {
    let answer = move || {
        let calls = calls.clone();
        async move {
            if calls.fetch_add(1, Ordering::SeqCst) < n {
                json(first, r#"{"error":{"code":"Busy","message":"try again"}}"#)
            } else {
                json(StatusCode::OK, PRINCIPALS)
            }
        }
    };
    Router::new().route("/api/v1/principals", get(answer.clone())).route(
        "/api/v1/requests/{id}/revoke",
        post(move || {
            let a = answer.clone();
            async move { a().await }
        }),
    )
}

#[tokio::test]
async fn an_idempotent_call_is_retried_after_a_503_and_then_succeeds() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = client(&serve(flaky(StatusCode::SERVICE_UNAVAILABLE, 1, calls.clone())).await);
    let list = c.native().principals().await.expect("the retry succeeds");
    assert_eq!(list[0].name, "alice");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn retries_stop_at_the_configured_count() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = client(&serve(flaky(StatusCode::BAD_GATEWAY, 10, calls.clone())).await);
    assert_eq!(c.native().principals().await.expect_err("still failing").status(), Some(502));
    assert_eq!(calls.load(Ordering::SeqCst), 3, "one call and two retries");
}

#[tokio::test]
async fn a_400_is_not_retried() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = client(&serve(flaky(StatusCode::BAD_REQUEST, 10, calls.clone())).await);
    let err = c.native().principals().await.expect_err("refused");
    assert!(matches!(&err, ClientError::Api { status: 400, code, .. } if code == "Busy"), "{err:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_post_is_not_retried_after_a_503() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = client(&serve(flaky(StatusCode::SERVICE_UNAVAILABLE, 1, calls.clone())).await);
    assert_eq!(c.native().revoke(7, false).await.expect_err("not retried").status(), Some(503));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_refused_connection_is_a_transport_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let err = client(&url).native().principals().await.expect_err("nobody listens");
    assert!(matches!(&err, ClientError::Transport(e) if e.is_connect()), "{err:?}");
}

fn policy(name: &str) -> String {
    format!(
        r#"{{"id":"/p/{name}","name":"{name}","type":"Microsoft.Security/locations/jitNetworkAccessPolicies","location":"westeurope","kind":"Basic","properties":{{"virtualMachines":[],"requests":[],"provisioningState":"Succeeded"}}}}"#
    )
}

#[tokio::test]
async fn lists_follow_next_link_with_the_token_and_the_api_version() {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = seen.clone();
    let page = move |State(base): State<Arc<Mutex<String>>>,
                     Query(q): Query<std::collections::HashMap<String, String>>,
                     headers: HeaderMap| {
        let log = log.clone();
        async move {
            let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
            log.lock().unwrap().push(format!("{} {auth}", q.get("api-version").cloned().unwrap_or_default()));
            let base = base.lock().unwrap().clone();
            match q.get("page").map(String::as_str) {
                None => json(
                    StatusCode::OK,
                    &format!(
                        r#"{{"value":[{}],"nextLink":"{base}/subscriptions/s/providers/Microsoft.Security/jitNetworkAccessPolicies?api-version=2020-01-01&page=2"}}"#,
                        policy("a")
                    ),
                ),
                Some(_) => json(StatusCode::OK, &format!(r#"{{"value":[{}]}}"#, policy("b"))),
            }
        }
    };
    let base: Arc<Mutex<String>> = Arc::default();
    let router = Router::new()
        .route("/subscriptions/s/providers/Microsoft.Security/jitNetworkAccessPolicies", get(page))
        .with_state(base.clone());
    let url = serve(router).await;
    *base.lock().unwrap() = url.clone();
    let scope = PolicyScope { subscription: "s".into(), resource_group: None, location: None };
    let all = client(&url).arm().list_policies(&scope).await.expect("two pages");
    assert_eq!(all.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(*seen.lock().unwrap(), ["2020-01-01 Bearer t0k", "2020-01-01 Bearer t0k"]);
}

#[test]
fn scopes_and_policy_ids_are_arm_paths() {
    let scope = PolicyScope { subscription: "s".into(), resource_group: Some("rg".into()), location: None };
    assert_eq!(
        scope.path(),
        "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Security/jitNetworkAccessPolicies"
    );
    let at = arm::PolicyRef {
        subscription: "s".into(),
        resource_group: "rg".into(),
        location: "westeurope".into(),
        name: "default".into(),
    };
    assert_eq!(
        at.id(),
        "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Security/locations/westeurope/jitNetworkAccessPolicies/default"
    );
}

#[test]
fn a_ca_certificate_that_is_not_pem_is_named() {
    let bad = Settings::new("https://x").ca_cert(Some(CaCert::Pem(b"-----BEGIN CERTIFICATE-----\nnope\n".to_vec())));
    assert!(matches!(bad.http_client(), Err(ClientError::CaCertParse { .. })));
    let missing = Settings::new("https://x").ca_cert_path(Some(std::path::Path::new("/nonexistent/ca.pem")));
    let err = missing.http_client().expect_err("no such file");
    assert_eq!(err.to_string(), "reading CA certificate /nonexistent/ca.pem");
}

// ---------- OIDC ----------

/// What the fake issuer saw: the PKCE challenge and redirect of the last authorization, and how
/// often the device flow polled.
#[derive(Default)]
struct Idp {
    challenge: Mutex<Option<(String, String)>>,
    polls: AtomicUsize,
}

fn form(body: &str) -> std::collections::HashMap<String, String> {
    reqwest::Url::parse(&format!("http://x/?{body}")).unwrap().query_pairs().into_owned().collect()
}

/// A fake issuer: the device endpoint; a token endpoint that answers `authorization_pending`
/// (400, as RFC 8628 says) once, then an ID token, and exchanges a code only for the verifier
/// that matches the challenge.
async fn fake_idp(refuse_device: bool) -> (String, Arc<Idp>) {
    let idp = Arc::new(Idp::default());
    let token = move |State(idp): State<Arc<Idp>>, body: String| async move {
        let f = form(&body);
        let answer = |t: &str| {
            json(StatusCode::OK, &format!(r#"{{"access_token":"at","token_type":"Bearer","id_token":"{t}"}}"#))
        };
        let error = |e: &str| json(StatusCode::BAD_REQUEST, &format!(r#"{{"error":"{e}"}}"#));
        match f.get("grant_type").map(String::as_str) {
            Some("authorization_code") => {
                use base64::Engine;
                let verifier = f.get("code_verifier").cloned().unwrap_or_default();
                let digest = <sha2::Sha256 as sha2::Digest>::digest(verifier.as_bytes());
                let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest);
                let expected = idp.challenge.lock().unwrap().take();
                let redirect = f.get("redirect_uri").cloned().unwrap_or_default();
                if f.get("code").map(String::as_str) == Some("ac-1") && expected == Some((challenge, redirect)) {
                    answer("id-browser")
                } else {
                    error("invalid_grant")
                }
            }
            _ if refuse_device => error("access_denied"),
            _ if idp.polls.fetch_add(1, Ordering::SeqCst) == 0 => error("authorization_pending"),
            _ => answer("id-device"),
        }
    };
    let router = Router::new()
        .route(
            "/device",
            post(|body: String| async move {
                assert_eq!(form(&body).get("client_id").map(String::as_str), Some("jitgate-test"));
                json(
                    StatusCode::OK,
                    r#"{"device_code":"dc-1","user_code":"WDJB-MJHT","verification_uri":"https://idp.example/activate","interval":1,"expires_in":60}"#,
                )
            }),
        )
        .route("/token", post(token))
        .with_state(idp.clone());
    (serve(router).await, idp)
}

fn discovery(iss: &str) -> Discovery {
    Discovery {
        issuer: Some(iss.to_owned()),
        device_authorization_endpoint: Some(format!("{iss}/device")),
        authorization_endpoint: Some(format!("{iss}/authorize")),
        token_endpoint: Some(format!("{iss}/token")),
    }
}

#[tokio::test]
async fn the_device_flow_polls_until_the_id_token_comes() {
    let (iss, idp) = fake_idp(false).await;
    let provider = Provider::new("jitgate-test", discovery(&iss)).unwrap();
    let mut shown = None;
    let token = provider.device_flow(|link, code| shown = Some((link.to_owned(), code.to_owned()))).await;
    assert_eq!(token.expect("signed in"), "id-device");
    assert_eq!(shown, Some(("https://idp.example/activate".to_owned(), "WDJB-MJHT".to_owned())));
    assert_eq!(idp.polls.load(Ordering::SeqCst), 2, "pending once, then the token");
}

#[tokio::test]
async fn a_refused_device_sign_in_names_the_issuer_error() {
    let (iss, _) = fake_idp(true).await;
    let provider = Provider::new("jitgate-test", discovery(&iss)).unwrap();
    let err = provider.device_flow(|_, _| {}).await.expect_err("refused");
    assert_eq!(err.to_string(), "sign-in refused: access_denied");
}

#[tokio::test]
async fn an_issuer_without_a_device_endpoint_is_named() {
    let provider =
        Provider::new("c", Discovery { issuer: Some("https://idp".into()), ..Discovery::default() }).unwrap();
    assert!(!provider.has_device_flow());
    let err = provider.device_flow(|_, _| {}).await.expect_err("no endpoint");
    assert_eq!(err.to_string(), "https://idp names no device_authorization_endpoint");
}

/// Runs the browser flow; `browse(link)` plays the browser and the issuer's redirect.
async fn browser(
    provider: &Provider,
    idp: &Arc<Idp>,
    browse: impl FnOnce(reqwest::Url) -> String + Send + 'static,
) -> Result<String, OidcError> {
    let idp = idp.clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<String>();
    let browsing = tokio::spawn(async move {
        let link = reqwest::Url::parse(&rx.await.unwrap()).unwrap();
        let q: std::collections::HashMap<String, String> = link.query_pairs().into_owned().collect();
        assert_eq!(q.get("code_challenge_method").map(String::as_str), Some("S256"));
        assert_eq!(q.get("scope").map(String::as_str), Some("openid profile email"));
        *idp.challenge.lock().unwrap() = Some((q["code_challenge"].clone(), q["redirect_uri"].clone()));
        let target = browse(link);
        reqwest::get(target).await.unwrap().text().await.unwrap()
    });
    let result = provider.browser_flow(|link| tx.send(link.to_owned()).unwrap(), Duration::from_secs(10)).await;
    let page = browsing.await.unwrap();
    assert!(page.contains("<p>"), "the browser gets a page: {page}");
    result
}

fn redirect_with(link: &reqwest::Url, state: Option<&str>) -> String {
    let q: std::collections::HashMap<String, String> = link.query_pairs().into_owned().collect();
    let state = state.map(str::to_owned).unwrap_or_else(|| q["state"].clone());
    format!("{}?code=ac-1&state={state}", q["redirect_uri"])
}

#[tokio::test]
async fn the_browser_flow_exchanges_the_code_with_the_pkce_verifier() {
    let (iss, idp) = fake_idp(false).await;
    let provider = Provider::new("jitgate-test", discovery(&iss)).unwrap();
    let token = browser(&provider, &idp, |link| redirect_with(&link, None)).await;
    assert_eq!(token.expect("signed in"), "id-browser");
}

#[tokio::test]
async fn a_redirect_with_a_forged_state_is_refused() {
    let (iss, idp) = fake_idp(false).await;
    let provider = Provider::new("jitgate-test", discovery(&iss)).unwrap();
    let err = browser(&provider, &idp, |link| redirect_with(&link, Some("forged"))).await.expect_err("forged");
    assert!(matches!(err, OidcError::WrongState), "{err:?}");
}

// ---------- TLS ----------

/// A TLS acceptor with a fresh self-signed certificate for `localhost`, and that certificate
/// (PEM) for the client to trust.
pub(crate) fn self_signed_localhost() -> (tokio_rustls::TlsAcceptor, String) {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let key_der = rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key_der.into())
        .unwrap();
    (tokio_rustls::TlsAcceptor::from(Arc::new(config)), cert.pem())
}

/// An HTTPS server on 127.0.0.1 with a fresh self-signed certificate for `localhost` that
/// answers every request with the principals; returns its URL and the certificate (PEM).
async fn tls_server() -> (String, String) {
    let (acceptor, pem) = self_signed_localhost();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((tcp, _)) = listener.accept().await {
            let Ok(mut tls) = acceptor.accept(tcp).await else { continue };
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match tls.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{PRINCIPALS}",
                PRINCIPALS.len()
            );
            let _ = tls.write_all(answer.as_bytes()).await;
            let _ = tls.shutdown().await;
        }
    });
    (format!("https://localhost:{port}"), pem)
}

#[tokio::test]
async fn a_custom_ca_is_trusted_and_an_unknown_certificate_is_not() {
    let (url, pem) = tls_server().await;
    let trusted = Settings::new(url.as_str()).token("t").ca_cert(Some(CaCert::Pem(pem.into_bytes())));
    let list = Client::new(trusted).unwrap().native().principals().await.expect("the CA is trusted");
    assert_eq!(list[0].name, "alice");
    let stranger = Client::new(Settings::new(url.as_str()).retries(0, Duration::ZERO)).unwrap();
    let err = stranger.native().principals().await.expect_err("an unknown certificate");
    assert!(matches!(err, ClientError::Transport(_)), "{err:?}");
}

/// What the server saw of a call: the authorization, the request id, the body.
type Seen = Arc<Mutex<Vec<(Option<String>, Option<String>, String)>>>;

#[tokio::test]
async fn post_json_sends_the_body_token_and_a_request_id_and_reads_the_answer() {
    let seen: Seen = Arc::default();
    let router = Router::new()
        .route(
            "/bare",
            post(|State(seen): State<Seen>, headers: HeaderMap, body: String| async move {
                let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
                seen.lock().unwrap().push((h("authorization"), h("x-ms-client-request-id"), body));
                json(StatusCode::ACCEPTED, r#"{"ok":true}"#)
            }),
        )
        .with_state(seen.clone());
    let c = client(&serve(router).await);
    let out: serde_json::Value = c.post_json("/bare", &serde_json::json!({"n": 1})).await.unwrap();
    assert_eq!(out, serde_json::json!({"ok": true}));
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0.as_deref(), Some("Bearer t0k"));
    assert!(seen[0].1.as_deref().is_some_and(|id| id.len() == 36), "{:?}", seen[0].1);
    assert_eq!(seen[0].2, r#"{"n":1}"#);
}

#[tokio::test]
async fn a_pinned_server_is_trusted_by_its_certificate_or_key_and_no_other() {
    use rustls::pki_types::pem::PemObject;
    let (url, pem) = tls_server().await;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    let info = jitgate_core::certinfo::CertInfo::from_der(der.as_ref()).unwrap();
    // The pin names the server: an address the certificate does not cover is fine.
    let by_address = url.replace("localhost", "127.0.0.1");
    for pin in [info.sha256, info.spki_sha256] {
        let pinned = Settings::new(by_address.as_str()).token("t").pins(vec![[0u8; 32], pin]);
        let list = Client::new(pinned).unwrap().native().principals().await.expect("the pin is trusted");
        assert_eq!(list[0].name, "alice");
    }
    let wrong = Settings::new(url.as_str()).token("t").retries(0, Duration::ZERO).pins(vec![[7u8; 32]]);
    let err = Client::new(wrong).unwrap().native().principals().await.expect_err("another server's pin");
    let chain = {
        let mut s = err.to_string();
        let mut e: Option<&dyn std::error::Error> = std::error::Error::source(&err);
        while let Some(inner) = e {
            s.push_str(&format!(": {inner}"));
            e = inner.source();
        }
        s
    };
    assert!(chain.contains("matches no --server-fingerprint"), "{chain}");
    assert!(chain.contains(&info.key_fingerprint()), "names what the server has: {chain}");
    // Pins do not fall back to the CA: the certificate trusted as a CA does not help.
    let both = Settings::new(url.as_str())
        .retries(0, Duration::ZERO)
        .ca_cert(Some(CaCert::Pem(pem.into_bytes())))
        .pins(vec![[7u8; 32]]);
    assert!(Client::new(both).unwrap().native().principals().await.is_err());
}

#[tokio::test]
async fn a_cloud_connector_puts_its_inventory_again_after_a_503_but_never_repeats_a_report() {
    use jitgate_api_types::agent::{EnforcementReportIn, InventoryIn};
    let inventories = Arc::new(AtomicUsize::new(0));
    let reports = Arc::new(AtomicUsize::new(0));
    let (i, r) = (inventories.clone(), reports.clone());
    let router = Router::new()
        .route(
            "/agent/v1/inventory",
            axum::routing::put(move |headers: HeaderMap, body: String| {
                let i = i.clone();
                async move {
                    assert_eq!(headers.get("authorization").and_then(|v| v.to_str().ok()), Some("Bearer jga_c"));
                    assert!(body.contains(r#""vms":[]"#), "{body}");
                    if i.fetch_add(1, Ordering::SeqCst) == 0 {
                        return json(StatusCode::SERVICE_UNAVAILABLE, r#"{"error":{"code":"Busy","message":"later"}}"#);
                    }
                    json(StatusCode::OK, r#"{"registered":0,"unsupported":0,"revision":7}"#)
                }
            }),
        )
        .route(
            "/agent/v1/enforcement",
            post(move || {
                let r = r.clone();
                async move {
                    r.fetch_add(1, Ordering::SeqCst);
                    json(StatusCode::SERVICE_UNAVAILABLE, r#"{"error":{"code":"Busy","message":"later"}}"#)
                }
            }),
        );
    let c = client(&serve(router).await);
    let out = c.agent().put_inventory("jga_c", &InventoryIn { vms: vec![] }).await.expect("the second try");
    assert_eq!((out.revision, inventories.load(Ordering::SeqCst)), (7, 2));
    let e = c.agent().report_enforcement("jga_c", &EnforcementReportIn::default()).await.expect_err("503");
    assert_eq!((e.status(), reports.load(Ordering::SeqCst)), (Some(503), 1), "each removal is audited once");
}
