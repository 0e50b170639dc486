//! "Sign in with SSO" against a small identity provider on loopback: the authorization-code
//! flow with PKCE, the state bound to the browser, the nonce checked, the ID token validated as
//! the API validates it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may panic on a failed expectation.

mod web_common;

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::routing::{get, post};
use base64::Engine;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use web_common::*;

use jitgate_core::audit::{ops, AuditStatus};
use jitgate_server::oidc::{Oidc, OidcConfig};

const CLIENT: &str = "jitgate-portal";

/// The provider's state: its key, and the code it handed out with the challenge and nonce.
struct Idp {
    base: String,
    key: jsonwebtoken::EncodingKey,
    jwk: Value,
    /// (code, challenge, nonce) of the last authorization.
    issued: Mutex<Option<(String, String, String)>>,
    /// Sign ID tokens with this nonce instead (a replayed or foreign token).
    wrong_nonce: Mutex<bool>,
}

async fn idp() -> Arc<Idp> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let kp = rcgen::KeyPair::generate().unwrap();
    let raw = kp.public_key_raw().to_vec();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwk = json!({"kty": "EC", "crv": "P-256", "x": b64(&raw[1..33]), "y": b64(&raw[33..65]), "kid": "k1", "alg": "ES256", "use": "sig"});
    let key = jsonwebtoken::EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap();
    let idp = Arc::new(Idp { base, key, jwk, issued: Mutex::new(None), wrong_nonce: Mutex::new(false) });
    let app = axum::Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/jwks", get(|State(i): State<Arc<Idp>>| async move { axum::Json(json!({"keys": [i.jwk.clone()]})) }))
        .route("/token", post(token))
        .with_state(idp.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    idp
}

async fn discovery(State(i): State<Arc<Idp>>) -> axum::Json<Value> {
    axum::Json(json!({"issuer": i.base, "authorization_endpoint": format!("{}/authorize", i.base),
        "token_endpoint": format!("{}/token", i.base), "jwks_uri": format!("{}/jwks", i.base)}))
}

async fn token(State(i): State<Arc<Idp>>, body: String) -> (StatusCode, axum::Json<Value>) {
    let form: std::collections::HashMap<String, String> =
        url::form_urlencoded::parse(body.as_bytes()).into_owned().collect();
    let Some((code, challenge, nonce)) = i.issued.lock().unwrap().clone() else {
        return (StatusCode::BAD_REQUEST, axum::Json(json!({"error": "invalid_grant"})));
    };
    let verifier = form.get("code_verifier").cloned().unwrap_or_default();
    let derived = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    if form.get("code") != Some(&code)
        || derived != challenge
        || form.get("client_id").map(String::as_str) != Some(CLIENT)
    {
        return (StatusCode::BAD_REQUEST, axum::Json(json!({"error": "invalid_grant"})));
    }
    let nonce = if *i.wrong_nonce.lock().unwrap() { "someone-elses".to_owned() } else { nonce };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = json!({"iss": i.base, "aud": CLIENT, "sub": "u-123", "iat": now, "exp": now + 3600, "nonce": nonce,
        "preferred_username": "ada"});
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("k1".into());
    let id_token = jsonwebtoken::encode(&header, &claims, &i.key).unwrap();
    (StatusCode::OK, axum::Json(json!({"id_token": id_token, "token_type": "Bearer"})))
}

/// Plays the browser at the provider: reads the authorization redirect, "authenticates", and
/// returns the callback path with the code and state.
fn authorize(i: &Idp, location: &str) -> String {
    let (_, query) = location.split_once('?').unwrap();
    let q: std::collections::HashMap<String, String> =
        url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["client_id"], CLIENT);
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["redirect_uri"], "https://portal.test/signin/sso/callback");
    *i.issued.lock().unwrap() = Some(("the-code".into(), q["code_challenge"].clone(), q["nonce"].clone()));
    format!("/signin/sso/callback?code=the-code&state={}", enc(&q["state"]))
}

async fn harness(i: &Idp) -> Harness {
    let config = OidcConfig {
        issuer: i.base.clone(),
        audience: CLIENT.into(),
        jwks_file: None,
        claim: None,
        leeway: std::time::Duration::from_secs(60),
    };
    Harness::with_oidc(Some(Oidc::new(config).unwrap())).await
}

#[tokio::test]
async fn sign_in_with_sso_runs_the_code_flow_with_pkce() {
    let i = idp().await;
    let h = harness(&i).await;
    let form = h.page(Method::GET, "/signin", None, None).await;
    assert!(form.body.contains(">Sign in with SSO</a>"), "{}", form.body);

    let a = h.page(Method::GET, "/signin/sso?next=%2Faccess", None, None).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    assert!(a.location().starts_with(&format!("{}/authorize?", i.base)), "{}", a.location());
    let bind = a.set_cookie_header("__Host-jitgate_sso").unwrap();
    assert!(bind.contains("SameSite=Lax") && bind.contains("HttpOnly") && bind.contains("Secure"), "{bind}");
    let state_cookie = format!("__Host-jitgate_sso={}", a.set_cookie("__Host-jitgate_sso").unwrap());
    let callback = authorize(&i, a.location());

    // Without the browser's cookie the state is refused.
    let b = h.page(Method::GET, &callback, None, None).await;
    assert_eq!(b.status, StatusCode::BAD_REQUEST, "{}", b.body);

    let b = h.page(Method::GET, &callback, Some(&state_cookie), None).await;
    assert_eq!(b.status, StatusCode::OK, "{}", b.body);
    let session = b.set_cookie("__Host-jitgate_session").expect("a session");
    assert!(b.body.contains(r#"content="0;url=/access""#), "{}", b.body);
    let page = h.page(Method::GET, "/access", Some(&format!("__Host-jitgate_session={session}")), None).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("ada"), "the display name: {}", page.body);
    assert_eq!(h.audit(ops::SIGN_IN, AuditStatus::Succeeded).await.len(), 1);

    // The state works once.
    let c = h.page(Method::GET, &callback, Some(&state_cookie), None).await;
    assert_eq!(c.status, StatusCode::BAD_REQUEST, "{}", c.body);
}

#[tokio::test]
async fn an_id_token_with_another_nonce_signs_nobody_in() {
    let i = idp().await;
    let h = harness(&i).await;
    *i.wrong_nonce.lock().unwrap() = true;
    let a = h.page(Method::GET, "/signin/sso", None, None).await;
    let state_cookie = format!("__Host-jitgate_sso={}", a.set_cookie("__Host-jitgate_sso").unwrap());
    let callback = authorize(&i, a.location());
    let b = h.page(Method::GET, &callback, Some(&state_cookie), None).await;
    assert_eq!(b.status, StatusCode::UNAUTHORIZED, "{}", b.body);
    assert!(b.body.contains("nonce"), "{}", b.body);
    assert!(b.set_cookie("__Host-jitgate_session").is_none());
    assert_eq!(h.audit(ops::SIGN_IN, AuditStatus::Failed).await.len(), 1, "the refusal is audited");
}

#[tokio::test]
async fn without_oidc_there_is_no_sso() {
    let h = Harness::new().await;
    let form = h.page(Method::GET, "/signin", None, None).await;
    assert!(!form.body.contains("Sign in with SSO"));
    assert_eq!(h.page(Method::GET, "/signin/sso", None, None).await.status, StatusCode::NOT_FOUND);
}
