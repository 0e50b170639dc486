//! The portal without a socket or a browser: sign-in and sessions, cookie flags, CSRF, the CSP,
//! RBAC hiding, and forms writing through the API's code path, driven with
//! `tower::ServiceExt::oneshot` over a temporary SQLite store.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may panic on a failed expectation.

mod web_common;

use axum::http::{header, Method, StatusCode};
use jitgate_core::audit::{ops, AuditStatus};
use web_common::*;

#[tokio::test]
async fn the_root_sends_strangers_to_sign_in_and_sign_in_sets_a_strict_session_cookie() {
    let h = Harness::new().await;
    let a = h.page(Method::GET, "/", None, None).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    assert_eq!(a.location(), "/signin");
    let a = h.page(Method::GET, "/jit", None, None).await;
    assert_eq!((a.status, a.location()), (StatusCode::SEE_OTHER, "/signin?next=%2Fjit"));

    let form = h.page(Method::GET, "/signin", None, None).await;
    assert_eq!(form.status, StatusCode::OK);
    assert!(form.body.contains(r#"<label for="token">Token</label>"#), "{}", form.body);
    assert!(form.body.contains(">Sign in</button>"), "{}", form.body);
    assert_csp(&form);

    let (cookie, set) = h.sign_in(&h.token).await;
    for flag in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/", "Max-Age="] {
        assert!(set.contains(flag), "{flag} missing from {set}");
    }
    assert!(set.starts_with("__Host-jitgate_session="), "{set}");
    let page = h.page(Method::GET, "/jit", Some(&cookie), None).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("Signed in as"), "{}", page.body);
    assert!(page.body.contains(">Sign out</button>"));
    assert_csp(&page);
    let signed_in = h.audit(ops::SIGN_IN, AuditStatus::Succeeded).await;
    assert_eq!(signed_in.len(), 1, "a successful sign-in is audited");
}

#[tokio::test]
async fn a_wrong_token_is_refused_audited_and_starts_no_session() {
    let h = Harness::new().await;
    let form = h.page(Method::GET, "/signin", None, None).await;
    let pre = form.set_cookie("__Host-jitgate_signin").expect("sign-in cookie");
    let csrf = form.hidden("csrf").expect("csrf field");
    let cookie = format!("__Host-jitgate_signin={pre}");
    let body = format!("csrf={csrf}&next=%2Fjit&token=jg_wrong");
    let a = h.page(Method::POST, "/signin", Some(&cookie), Some(&body)).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.body);
    assert!(a.body.contains("Sign-in failed"), "{}", a.body);
    assert!(a.set_cookie("__Host-jitgate_session").is_none());
    assert_eq!(h.audit(ops::SIGN_IN, AuditStatus::Failed).await.len(), 1, "the failed sign-in is audited");

    // The sign-in form itself needs its own token: a post from elsewhere is refused.
    let body = format!("csrf=forged&next=%2Fjit&token={}", h.token);
    let a = h.page(Method::POST, "/signin", Some(&cookie), Some(&body)).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
    assert!(a.set_cookie("__Host-jitgate_session").is_none());
}

#[tokio::test]
async fn sign_out_ends_the_session_and_is_audited() {
    let h = Harness::new().await;
    let (cookie, _) = h.sign_in(&h.token).await;
    let page = h.page(Method::GET, "/jit", Some(&cookie), None).await;
    let csrf = page.hidden("csrf").expect("csrf");
    // Without the token nothing happens.
    let a = h.page(Method::POST, "/signout", Some(&cookie), Some("csrf=nope")).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(h.page(Method::GET, "/jit", Some(&cookie), None).await.status, StatusCode::OK);
    let a = h.page(Method::POST, "/signout", Some(&cookie), Some(&format!("csrf={csrf}"))).await;
    assert_eq!((a.status, a.location()), (StatusCode::SEE_OTHER, "/signin"));
    assert!(a.set_cookie("__Host-jitgate_session").is_some_and(|v| v.is_empty()));
    assert_eq!(h.page(Method::GET, "/jit", Some(&cookie), None).await.status, StatusCode::SEE_OTHER);
    assert_eq!(h.audit(ops::SIGN_OUT, AuditStatus::Succeeded).await.len(), 1);
}

#[tokio::test]
async fn a_session_ends_with_the_token_that_made_it() {
    let h = Harness::new().await;
    let (token_id, token) = h.principal_with_role("alice", "Reader", &format!("/subscriptions/{SUB}")).await;
    let (cookie, _) = h.sign_in(&token).await;
    assert_eq!(h.page(Method::GET, "/jit", Some(&cookie), None).await.status, StatusCode::OK);
    let a = h.api(Method::DELETE, &format!("/api/v1/tokens/{token_id}"), "").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let a = h.page(Method::GET, "/jit", Some(&cookie), None).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "a revoked token's session is over");

    let (_, token) = h.principal_with_role("bob", "Reader", &format!("/subscriptions/{SUB}")).await;
    let (cookie, _) = h.sign_in(&token).await;
    let a = h.api(Method::DELETE, "/api/v1/principals/bob", "").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let a = h.page(Method::GET, "/jit", Some(&cookie), None).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "a deleted principal's session is over");
}

#[tokio::test]
async fn assets_are_embedded_under_hashed_names_with_long_cache_lives() {
    let h = Harness::new().await;
    let form = h.page(Method::GET, "/signin", None, None).await;
    let css = jitgate_server::web::assets::STYLE.name.clone();
    let js = jitgate_server::web::assets::SCRIPT.name.clone();
    assert!(form.body.contains(&format!("/assets/{css}")) && form.body.contains(&format!("/assets/{js}")));
    assert!(css.starts_with("portal.") && css.ends_with(".css") && css.len() > "portal..css".len() + 8, "{css}");
    for name in [css, js] {
        let a = h.page(Method::GET, &format!("/assets/{name}"), None, None).await;
        assert_eq!(a.status, StatusCode::OK);
        let cache = a.headers.get(header::CACHE_CONTROL).and_then(|v| v.to_str().ok()).unwrap_or("");
        assert!(cache.contains("max-age=31536000") && cache.contains("immutable"), "{cache}");
    }
    assert_eq!(h.page(Method::GET, "/assets/portal.css", None, None).await.status, StatusCode::NOT_FOUND);
    // No inline script or style anywhere.
    assert!(!form.body.contains("<script>") && !form.body.contains("style="), "{}", form.body);
}

#[tokio::test]
async fn the_jit_page_places_vms_in_their_tabs() {
    let h = Harness::new().await;
    h.host_vm("rg1", "web1").await;
    h.host_vm("rg1", "web2").await;
    h.bare_vm("rg1", "lonely").await;
    h.policy("rg1", &["web1"], &[22]).await;
    let (cookie, _) = h.sign_in(&h.token).await;

    let a = h.page(Method::GET, "/jit", Some(&cookie), None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    for tab in ["Configured", "Not configured", "Unsupported"] {
        assert!(a.body.contains(&format!(r#"role="tab""#)) && a.body.contains(&format!(">{tab}</a>")), "{tab}");
    }
    assert!(a.body.contains(">web1</a>") && !a.body.contains(">web2</a>"), "{}", a.body);
    assert!(a.body.contains(">Request access</button>") && a.body.contains(">Edit</a>"), "{}", a.body);
    assert!(a.body.contains(r#"aria-label="Host enforcement""#), "{}", a.body);

    let a = h.page(Method::GET, "/jit?tab=notconfigured", Some(&cookie), None).await;
    assert!(a.body.contains(">web2</a>") && !a.body.contains(">web1</a>"), "{}", a.body);
    assert!(a.body.contains("Enable JIT on"), "{}", a.body);

    let a = h.page(Method::GET, "/jit?tab=unsupported", Some(&cookie), None).await;
    assert!(a.body.contains(">lonely</a>") && a.body.contains("no enforcement point"), "{}", a.body);

    let a = h.page(Method::GET, "/jit?tab=notconfigured&q=nothing", Some(&cookie), None).await;
    assert!(!a.body.contains(">web2</a>"), "search filters by name");
}

#[tokio::test]
async fn a_reader_is_offered_nothing_it_may_not_do() {
    let h = Harness::new().await;
    h.host_vm("rg1", "web1").await;
    h.host_vm("rg1", "web2").await;
    h.policy("rg1", &["web1"], &[22]).await;
    let (_, token) = h.principal_with_role("rita", "Reader", &format!("/subscriptions/{SUB}")).await;
    let (cookie, _) = h.sign_in(&token).await;
    let a = h.page(Method::GET, "/jit", Some(&cookie), None).await;
    assert!(a.body.contains(">web1</a>"), "a Reader sees the VM: {}", a.body);
    assert!(!a.body.contains("Request access") && !a.body.contains(">Edit</a>"), "{}", a.body);
    let a = h.page(Method::GET, "/jit?tab=notconfigured", Some(&cookie), None).await;
    assert!(a.body.contains(">web2</a>") && !a.body.contains("Enable JIT on"), "{}", a.body);
}
