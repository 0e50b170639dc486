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
        let tab_link = a
            .body
            .split("<a role=\"tab\"")
            .skip(1)
            .any(|rest| rest.split("</a>").next().is_some_and(|t| t.ends_with(&format!(">{tab}"))));
        assert!(tab_link, "a link with the tab role named {tab}: {}", a.body);
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

#[tokio::test]
async fn enable_and_edit_write_the_policy_through_the_api_path() {
    let h = Harness::new().await;
    h.host_vm("rg1", "web2").await;
    let (cookie, _) = h.sign_in(&h.token).await;
    let vm = vm_id("rg1", "web2");
    let panel = h.page(Method::GET, &format!("/jit/configure?vm={}", enc(&vm)), Some(&cookie), None).await;
    assert_eq!(panel.status, StatusCode::OK, "{}", panel.body);
    for port in ["22", "3389", "5985", "5986"] {
        assert!(panel.body.contains(&format!(r#"value="{port}""#)), "recommended port {port}: {}", panel.body);
    }
    for label in [">Save</button>", ">Add</button>", "Remove port 22", "> Per request", "Maximum request time"] {
        assert!(panel.body.contains(label), "{label}: {}", panel.body);
    }
    // Add a custom port: one more row.
    let from = format!("/jit/configure?vm={}", enc(&vm));
    let mut fields = vec![("vm", vm.as_str()), ("mode", "enable"), ("rows", "1"), ("action", "add")];
    fields.extend([("p0.number", "22"), ("p0.protocol", "*"), ("p0.source", "request"), ("p0.hours", "3")]);
    let a = h.post(&cookie, &from, "/jit/configure", &fields).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert!(a.body.contains(r#"name="p1.number""#), "a new row: {}", a.body);

    // A window over 24 hours: the API's message, next to the field.
    let mut fields = vec![("vm", vm.as_str()), ("mode", "enable"), ("rows", "2"), ("action", "save")];
    fields.extend([("p0.number", "22"), ("p0.protocol", "*"), ("p0.source", "request"), ("p0.hours", "3")]);
    fields.extend([("p1.number", "8443"), ("p1.protocol", "TCP"), ("p1.source", "ranges")]);
    fields.extend([("p1.ranges", "10.0.0.0/8"), ("p1.hours", "25")]);
    let a = h.post(&cookie, &from, "/jit/configure", &fields).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);
    assert!(a.body.contains(r#"id="p1-hours-error""#), "{}", a.body);
    assert!(!h.configured(&vm).await, "nothing saved");
    assert_eq!(h.audit(ops::POLICY_WRITE, AuditStatus::Failed).await.len(), 1, "refused like the API: audited");

    let fields: Vec<_> = fields.into_iter().map(|(k, v)| if k == "p1.hours" { (k, "4") } else { (k, v) }).collect();
    let a = h.post(&cookie, &from, "/jit/configure", &fields).await;
    assert_eq!((a.status, a.location()), (StatusCode::SEE_OTHER, "/jit?tab=configured"), "{}", a.body);
    let policy = h.api(Method::GET, &format!("{}?api-version=2020-01-01", policy_id("rg1")), "").await.json();
    let ports = &policy["properties"]["virtualMachines"][0]["ports"];
    assert_eq!(ports[1]["number"], 8443, "{policy}");
    assert_eq!(ports[1]["protocol"], "TCP");
    assert_eq!(ports[1]["allowedSourceAddressPrefixes"], serde_json::json!(["10.0.0.0/8"]));
    assert_eq!(ports[1]["maxRequestAccessDuration"], "PT4H");
    assert_eq!(h.audit(ops::POLICY_WRITE, AuditStatus::Succeeded).await.len(), 1);

    // Edit shows the VM's own ports; removing one and saving writes that.
    let edit = h.page(Method::GET, &from, Some(&cookie), None).await;
    assert!(edit.body.contains(r#"value="8443""#) && !edit.body.contains(r#"value="3389""#), "{}", edit.body);
    let fields = [("vm", vm.as_str()), ("mode", "edit"), ("rows", "1"), ("action", "save"), ("p0.number", "8443")];
    let fields: Vec<_> =
        fields.into_iter().chain([("p0.protocol", "UDP"), ("p0.source", "request"), ("p0.hours", "1")]).collect();
    let a = h.post(&cookie, &from, "/jit/configure", &fields).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    let policy = h.api(Method::GET, &format!("{}?api-version=2020-01-01", policy_id("rg1")), "").await.json();
    let ports = policy["properties"]["virtualMachines"][0]["ports"].as_array().cloned().unwrap_or_default();
    assert_eq!(ports.len(), 1, "{policy}");
    assert_eq!((ports[0]["number"].as_i64(), ports[0]["protocol"].as_str()), (Some(8443), Some("UDP")));
}

#[tokio::test]
async fn the_56_character_rule_is_the_apis_and_shows_next_to_the_vm() {
    let h = Harness::new().await;
    let long = "v".repeat(50); // "default" + 50 = 57 characters
    h.host_vm("rg1", &long).await;
    let (cookie, _) = h.sign_in(&h.token).await;
    let vm = vm_id("rg1", &long);
    let from = format!("/jit/configure?vm={}", enc(&vm));
    let fields = [("vm", vm.as_str()), ("mode", "enable"), ("rows", "1"), ("action", "save"), ("p0.number", "22")];
    let fields: Vec<_> =
        fields.into_iter().chain([("p0.protocol", "*"), ("p0.source", "request"), ("p0.hours", "3")]).collect();
    let a = h.post(&cookie, &from, "/jit/configure", &fields).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);
    assert!(a.body.contains("57 characters together; at most 56"), "{}", a.body);
}

#[tokio::test]
async fn a_forged_form_without_the_csrf_token_changes_nothing() {
    let h = Harness::new().await;
    h.host_vm("rg1", "web2").await;
    let (cookie, _) = h.sign_in(&h.token).await;
    let vm = vm_id("rg1", "web2");
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([("vm", vm.as_str()), ("mode", "enable"), ("rows", "1"), ("action", "save")])
        .extend_pairs([("p0.number", "22"), ("p0.protocol", "*"), ("p0.source", "request"), ("p0.hours", "3")])
        .finish();
    let a = h.page(Method::POST, "/jit/configure", Some(&cookie), Some(&body)).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
    // The right token from another origin is refused too.
    let page = h.page(Method::GET, "/jit", Some(&cookie), None).await;
    let csrf = page.hidden("csrf").unwrap();
    let with_token = format!("csrf={csrf}&{body}");
    let headers = [
        ("cookie", cookie.as_str()),
        ("content-type", "application/x-www-form-urlencoded"),
        ("origin", "https://evil.example"),
    ];
    let a = h.send(Method::POST, "/jit/configure", &headers, Some(&with_token)).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
    assert!(!h.configured(&vm).await, "nothing saved");
    assert_eq!(h.audit(ops::POLICY_WRITE, AuditStatus::Succeeded).await.len(), 0);
    assert_eq!(h.audit(ops::POLICY_WRITE, AuditStatus::Failed).await.len(), 2, "both refusals are audited");
}

#[tokio::test]
async fn a_reader_forging_a_save_is_refused_by_the_server() {
    let h = Harness::new().await;
    h.host_vm("rg1", "web2").await;
    let (_, token) = h.principal_with_role("rita", "Reader", &format!("/subscriptions/{SUB}")).await;
    let (cookie, _) = h.sign_in(&token).await;
    let vm = vm_id("rg1", "web2");
    let fields = [("vm", vm.as_str()), ("mode", "enable"), ("rows", "1"), ("action", "save"), ("p0.number", "22")];
    let fields: Vec<_> =
        fields.into_iter().chain([("p0.protocol", "*"), ("p0.source", "request"), ("p0.hours", "3")]).collect();
    let a = h.post(&cookie, "/jit", "/jit/configure", &fields).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
    assert!(!h.configured(&vm).await);
}

#[tokio::test]
async fn request_access_opens_ports_through_initiate_and_follows_the_agent() {
    let h = Harness::new().await;
    let agent = h.host_vm("rg1", "web1").await;
    h.policy("rg1", &["web1"], &[22, 8443]).await;
    h.agent_applies(&agent).await;
    let (cookie, _) = h.sign_in(&h.token).await;
    let vm = vm_id("rg1", "web1");
    let from = format!("/jit/request?vm={}", enc(&vm));
    let panel = h.page(Method::GET, &from, Some(&cookie), None).await;
    assert_eq!(panel.status, StatusCode::OK, "{}", panel.body);
    for label in [">Open ports</button>", "My IP (192.0.2.7)", ">Justification</label>", ">Port 22</label>"] {
        assert!(panel.body.contains(label), "{label}: {}", panel.body);
    }
    assert!(panel.body.contains(r#"<option value="PT3H" selected>3 hours</option>"#), "{}", panel.body);

    // Port 22 only, for one hour, from my address.
    let fields = [("vm", vm.as_str()), ("port", "0:22"), ("time.0.22", "PT1H"), ("time.0.8443", "PT3H")];
    let fields: Vec<_> = fields.into_iter().chain([("source", "myip"), ("justification", "deploy")]).collect();
    let a = h.post(&cookie, &from, "/jit/request", &fields).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    let progress = a.location().to_owned();
    assert!(progress.starts_with("/requests/progress?id=1&rev="), "{progress}");
    let initiated = h.audit(ops::POLICY_INITIATE, AuditStatus::Succeeded).await;
    assert_eq!(initiated.len(), 1, "audited like the API's initiate");
    let policy = h.api(Method::GET, &format!("{}?api-version=2020-01-01", policy_id("rg1")), "").await.json();
    let request = &policy["properties"]["requests"][0];
    assert_eq!(request["justification"], "deploy", "{policy}");
    let ports = request["virtualMachines"][0]["ports"].as_array().cloned().unwrap_or_default();
    assert_eq!(ports.len(), 1, "{policy}");
    assert_eq!(ports[0]["number"], 22);
    assert_eq!(ports[0]["allowedSourceAddressPrefix"], "192.0.2.7", "My IP as the server sees it");

    // Until the agent applies the change the page says so and reloads itself.
    let a = h.page(Method::GET, &progress, Some(&cookie), None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert!(a.body.contains("waiting for web1") && a.body.contains(r#"http-equiv="refresh""#), "{}", a.body);
    assert!(a.body.contains("data-progress-url=\"/requests/events?"), "{}", a.body);

    // The event stream answers at once with the state, then with `done` when the agent reports.
    let events = progress.replace("/requests/progress", "/requests/events");
    let h2 = std::sync::Arc::new(h);
    let follow = {
        let (h, cookie, events) = (h2.clone(), cookie.clone(), events.clone());
        tokio::spawn(async move { h.page(Method::GET, &events, Some(&cookie), None).await })
    };
    h2.agent_applies(&agent).await;
    let stream = tokio::time::timeout(std::time::Duration::from_secs(10), follow).await.expect("stream ends").unwrap();
    assert_eq!(stream.status, StatusCode::OK);
    assert!(stream.body.contains("event: done"), "{}", stream.body);
    assert!(stream.body.contains("Done: every enforcement point"), "{}", stream.body);
    let a = h2.page(Method::GET, &progress, Some(&cookie), None).await;
    assert!(a.body.contains("Applied") && !a.body.contains(r#"http-equiv="refresh""#), "{}", a.body);
    assert!(a.body.contains("<code>10.0.0.4:22</code>"), "connection details: {}", a.body);
}

#[tokio::test]
async fn request_access_shows_the_apis_refusal() {
    let h = Harness::new().await;
    h.host_vm("rg1", "web1").await;
    h.policy("rg1", &["web1"], &[22]).await;
    let (cookie, _) = h.sign_in(&h.token).await;
    let vm = vm_id("rg1", "web1");
    let from = format!("/jit/request?vm={}", enc(&vm));
    let fields = [("vm", vm.as_str()), ("port", "0:22"), ("time.0.22", "PT30H"), ("source", "myip")];
    let a = h.post(&cookie, &from, "/jit/request", &fields).await;
    assert!(a.status.is_client_error(), "{}", a.body);
    assert!(
        a.body.contains("longer than the port&#39;s maximum") || a.body.contains("longer than the port's maximum"),
        "{}",
        a.body
    );
    assert_eq!(h.audit(ops::POLICY_INITIATE, AuditStatus::Succeeded).await.len(), 0);
}

#[tokio::test]
async fn my_access_lists_live_grants_and_revoke_ends_them() {
    let h = Harness::new().await;
    h.host_vm("rg1", "web1").await;
    h.policy("rg1", &["web1"], &[22]).await;
    let id = h.initiate_as(&h.token.clone(), "rg1", "web1", 22).await;
    let (cookie, _) = h.sign_in(&h.token).await;
    let a = h.page(Method::GET, "/access", Some(&cookie), None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert!(a.body.contains(">Active</span>") && a.body.contains("data-ends="), "{}", a.body);
    assert!(a.body.contains(">Revoke</button>") && a.body.contains(">Extend</button>"), "{}", a.body);

    let a = h.post(&cookie, "/access", &format!("/access/{id}/extend"), &[("duration", "PT2H")]).await;
    assert_eq!((a.status, a.location()), (StatusCode::SEE_OTHER, "/access?done=extended"), "{}", a.body);
    assert_eq!(h.audit(ops::REQUEST_EXTEND, AuditStatus::Succeeded).await.len(), 1);

    let a = h.post(&cookie, "/access", &format!("/access/{id}/revoke"), &[]).await;
    assert_eq!((a.status, a.location()), (StatusCode::SEE_OTHER, "/access?done=revoked"), "{}", a.body);
    assert_eq!(h.grant_statuses(id).await, vec!["Revoked".to_owned()]);
    assert_eq!(h.audit(ops::REQUEST_REVOKE, AuditStatus::Succeeded).await.len(), 1);
    let a = h.page(Method::GET, "/access", Some(&cookie), None).await;
    assert!(!a.body.contains(">Revoke</button>"), "{}", a.body);
}

#[tokio::test]
async fn approvers_decide_pending_requests_but_never_their_own() {
    let h = Harness::new().await;
    h.host_vm("rg1", "web1").await;
    h.approval_policy("rg1", "web1", 22).await;
    let scope = format!("/subscriptions/{SUB}");
    let (_, alice) = h.principal_with_role("alice", "Owner", &scope).await;
    let (_, carol) = h.principal_with_role("carol", "Owner", &scope).await;
    let id = h.initiate_as(&alice, "rg1", "web1", 22).await;
    assert_eq!(h.grant_statuses(id).await, vec!["Pending".to_owned()]);

    let (alice_cookie, _) = h.sign_in(&alice).await;
    let mine = h.page(Method::GET, "/approvals", Some(&alice_cookie), None).await;
    assert!(mine.body.contains("Your own request") && !mine.body.contains(">Approve</button>"), "{}", mine.body);
    // Forged: the same refusal as the API's.
    let a = h.post(&alice_cookie, "/approvals", &format!("/access/{id}/approve"), &[]).await;
    assert!(a.status.is_client_error(), "{}", a.body);
    assert_eq!(h.grant_statuses(id).await, vec!["Pending".to_owned()]);

    let (carol_cookie, _) = h.sign_in(&carol).await;
    let theirs = h.page(Method::GET, "/approvals", Some(&carol_cookie), None).await;
    assert!(theirs.body.contains(">Approve</button>") && theirs.body.contains(">Deny</button>"), "{}", theirs.body);
    let a = h.post(&carol_cookie, "/approvals", &format!("/access/{id}/approve"), &[]).await;
    assert_eq!((a.status, a.location()), (StatusCode::SEE_OTHER, "/approvals?done=approved"), "{}", a.body);
    assert_eq!(h.grant_statuses(id).await, vec!["Initiated".to_owned()]);
}

#[tokio::test]
async fn a_vms_page_enables_jit_with_the_os_defaults_and_then_offers_request_access() {
    let h = Harness::new().await;
    h.host_vm("rg1", "web1").await;
    let (cookie, _) = h.sign_in(&h.token).await;
    let path = format!("/vms/{SUB}/rg1/web1");
    let a = h.page(Method::GET, &path, Some(&cookie), None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert!(a.body.contains(">Configuration</h2>") && a.body.contains(">Connect</h2>"), "{}", a.body);
    assert!(a.body.contains(">Not enabled</span>") && a.body.contains(">Enable just-in-time</button>"), "{}", a.body);
    assert!(!a.body.contains(">Request access</button>"), "{}", a.body);

    let a = h.post(&cookie, &path, &format!("{path}/enable"), &[]).await;
    assert_eq!((a.status, a.location()), (StatusCode::SEE_OTHER, path.as_str()), "{}", a.body);
    let policy = h.api(Method::GET, &format!("{}?api-version=2020-01-01", policy_id("rg1")), "").await.json();
    let port = &policy["properties"]["virtualMachines"][0]["ports"][0];
    assert_eq!((port["number"].as_i64(), port["maxRequestAccessDuration"].as_str()), (Some(22), Some("PT3H")));

    let a = h.page(Method::GET, &path, Some(&cookie), None).await;
    assert!(a.body.contains(">Enabled</span>") && a.body.contains(">Request access</button>"), "{}", a.body);
    assert!(a.body.contains("My IP (192.0.2.7)") && a.body.contains("Edit the JIT configuration"), "{}", a.body);

    let a = h.page(Method::GET, &format!("/vms/{SUB}/rg1/nothing"), Some(&cookie), None).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_audit_page_filters_pages_exports_and_verifies() {
    let h = Harness::new().await;
    h.host_vm("rg1", "web1").await;
    h.policy("rg1", &["web1"], &[22]).await;
    let (cookie, _) = h.sign_in(&h.token).await;
    let a = h.page(Method::GET, "/audit", Some(&cookie), None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert!(a.body.contains(">Verified</span>"), "the chain verification: {}", a.body);
    assert!(a.body.contains("signIn/action"), "{}", a.body);
    let op = enc(ops::POLICY_WRITE);
    let a = h.page(Method::GET, &format!("/audit?operation={op}"), Some(&cookie), None).await;
    assert!(a.body.contains("jitNetworkAccessPolicies/write") && !a.body.contains("signIn/action"), "{}", a.body);

    let a = h.page(Method::GET, &format!("/audit/export?format=jsonl&operation={op}"), Some(&cookie), None).await;
    assert_eq!(a.status, StatusCode::OK);
    let lines: Vec<serde_json::Value> = a.body.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1, "{}", a.body);
    assert_eq!(lines[0]["operationName"], ops::POLICY_WRITE);
    let a = h.page(Method::GET, "/audit/export?format=csv", Some(&cookie), None).await;
    assert!(a.body.starts_with("sequence,eventTimestamp,operationName"), "{}", a.body);
    assert!(a.body.lines().count() > 3, "{}", a.body);
    let disposition = a.headers.get(header::CONTENT_DISPOSITION).and_then(|v| v.to_str().ok()).unwrap_or("");
    assert!(disposition.contains("jitgate-audit.csv"), "{disposition}");

    // Someone who may not read the log gets no page.
    let a = h.api(Method::POST, "/api/v1/principals", r#"{"name":"nobody","type":"User"}"#).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let t = h.api(Method::POST, "/api/v1/principals/nobody/tokens", "{}").await.json();
    let (cookie, _) = h.sign_in(t["token"].as_str().unwrap()).await;
    let a = h.page(Method::GET, "/audit", Some(&cookie), None).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
}

#[tokio::test]
async fn access_control_creates_the_requester_role_and_assigns_roles() {
    let h = Harness::new().await;
    h.host_vm("rg1", "web1").await;
    let (cookie, _) = h.sign_in(&h.token).await;
    let a = h.page(Method::GET, "/access-control", Some(&cookie), None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert!(a.body.contains(">Create least-privileged requester role</button>"), "{}", a.body);
    let scope = format!("/subscriptions/{SUB}");
    let a = h
        .post(
            &cookie,
            "/access-control",
            "/access-control/requester-role",
            &[("name", "JIT Access Role"), ("scope", &scope)],
        )
        .await;
    assert_eq!((a.status, a.location()), (StatusCode::SEE_OTHER, "/access-control?done=role"), "{}", a.body);
    let role = h.api(Method::GET, "/api/v1/roleDefinitions/JIT%20Access%20Role", "").await;
    assert_eq!(role.status, StatusCode::OK, "{}", role.body);
    assert!(role.body.contains("initiate/action"), "{}", role.body);

    let a = h.api(Method::POST, "/api/v1/principals", r#"{"name":"dave","type":"User"}"#).await;
    assert_eq!(a.status, StatusCode::CREATED);
    let fields = [("principal", "dave"), ("role", "JIT Access Role"), ("scope", scope.as_str())];
    let a = h.post(&cookie, "/access-control", "/access-control/assignments", &fields).await;
    assert_eq!((a.status, a.location()), (StatusCode::SEE_OTHER, "/access-control?done=assigned"), "{}", a.body);
    let list = h.api(Method::GET, "/api/v1/roleAssignments?principal=dave", "").await.json();
    assert_eq!(list["value"][0]["role"], "JIT Access Role", "{list}");
    // The API's refusal, shown on the page: an unknown role.
    let fields = [("principal", "dave"), ("role", "Nope"), ("scope", scope.as_str())];
    let a = h.post(&cookie, "/access-control", "/access-control/assignments", &fields).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.body);
    assert!(a.body.contains("no role named"), "{}", a.body);

    // A Reader is offered neither form.
    let (_, token) = h.principal_with_role("rita", "Reader", &scope).await;
    let (cookie, _) = h.sign_in(&token).await;
    let a = h.page(Method::GET, "/access-control", Some(&cookie), None).await;
    assert!(!a.body.contains("<button") || !a.body.contains("Assign role"), "{}", a.body);
    assert!(!a.body.contains("Create least-privileged requester role"), "{}", a.body);
}

#[tokio::test]
async fn enforcement_points_show_agents_and_make_join_tokens_once() {
    let h = Harness::new().await;
    h.host_vm("rg1", "web1").await;
    let (cookie, _) = h.sign_in(&h.token).await;
    let a = h.page(Method::GET, "/enforcement-points", Some(&cookie), None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert!(a.body.contains("<td>web1</td>") && a.body.contains(">No report yet</span>"), "{}", a.body);
    let fields = [("subscription", SUB), ("resourceGroup", "rg2"), ("location", "westeurope"), ("mode", "host")];
    let a = h.post(&cookie, "/enforcement-points", "/enforcement-points/join-tokens", &fields).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let at = a.body.find("jgj_").expect("the token is shown");
    let token: String =
        a.body[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-').collect();
    assert!(a.body.contains("jitgate agent --server https://portal.test --join-token"), "{}", a.body);
    let join =
        serde_json::json!({"joinToken": token, "name": "db1", "mode": "host", "osType": "Linux", "hostname": "db1"});
    let j =
        h.send(Method::POST, "/agent/v1/join", &[("content-type", "application/json")], Some(&join.to_string())).await;
    assert_eq!(j.status, StatusCode::CREATED, "the portal's token joins: {}", j.body);
    let a = h.page(Method::GET, "/enforcement-points", Some(&cookie), None).await;
    assert!(a.body.contains("<td>db1</td>") && !a.body.contains(&token), "shown once: {}", a.body);
}

#[tokio::test]
async fn a_request_that_needs_an_approver_is_shown_as_pending() {
    let h = Harness::new().await;
    h.host_vm("rg1", "web1").await;
    h.approval_policy("rg1", "web1", 22).await;
    let (cookie, _) = h.sign_in(&h.token).await;
    let vm = vm_id("rg1", "web1");
    let from = format!("/jit/request?vm={}", enc(&vm));
    let panel = h.page(Method::GET, &from, Some(&cookie), None).await;
    assert!(panel.body.contains("Needs approval") && panel.body.contains("required"), "{}", panel.body);
    let fields = [("vm", vm.as_str()), ("port", "0:22"), ("time.0.22", "PT1H"), ("source", "myip")];
    let a = h.post(&cookie, &from, "/jit/request", &fields).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "no justification: {}", a.body);
    assert!(a.body.contains("give a justification"), "{}", a.body);
    let fields: Vec<_> = fields.into_iter().chain([("justification", "incident 42")]).collect();
    let a = h.post(&cookie, &from, "/jit/request", &fields).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    let progress = h.page(Method::GET, a.location(), Some(&cookie), None).await;
    assert!(progress.body.contains("Pending approval"), "{}", progress.body);
    assert!(!progress.body.contains(r#"http-equiv="refresh""#), "{}", progress.body);
}

#[tokio::test]
async fn the_jit_page_pages_fifty_vms_at_a_time() {
    let h = Harness::new().await;
    for i in 0..55 {
        h.bare_vm("rg1", &format!("vm{i:02}")).await;
    }
    let (cookie, _) = h.sign_in(&h.token).await;
    let a = h.page(Method::GET, "/jit?tab=unsupported", Some(&cookie), None).await;
    assert!(
        a.body.contains(">vm00</a>") && a.body.contains(">vm49</a>") && !a.body.contains(">vm50</a>"),
        "{}",
        a.body
    );
    assert!(a.body.contains(r#"href="/jit?tab=unsupported&amp;page=2">Next page</a>"#), "{}", a.body);
    let a = h.page(Method::GET, "/jit?tab=unsupported&page=2", Some(&cookie), None).await;
    assert!(a.body.contains(">vm54</a>") && !a.body.contains(">vm49</a>"), "{}", a.body);
    assert!(a.body.contains("Previous page"), "{}", a.body);
    let a = h.page(Method::GET, "/jit?tab=unsupported&group=other", Some(&cookie), None).await;
    assert!(!a.body.contains(">vm00</a>"), "the resource group filter: {}", a.body);
}

#[tokio::test]
async fn a_session_lasts_no_longer_than_its_token() {
    let h = Harness::new().await;
    let a = h.api(Method::POST, "/api/v1/principals/owner/tokens", r#"{"expiresIn":"PT10M"}"#).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let (_, set) = h.sign_in(a.json()["token"].as_str().unwrap()).await;
    let max_age: i64 = set.split("Max-Age=").nth(1).and_then(|r| r.split(';').next()).unwrap().parse().unwrap();
    assert!(max_age > 0 && max_age <= 600, "{set}");
    let (_, set) = h.sign_in(&h.token).await;
    let max_age: i64 = set.split("Max-Age=").nth(1).and_then(|r| r.split(';').next()).unwrap().parse().unwrap();
    assert_eq!(max_age, 12 * 3600, "at most twelve hours: {set}");
}

#[tokio::test]
async fn behind_a_gateway_the_connection_is_the_gateway_and_its_mapped_port() {
    let h = Harness::new().await;
    let body =
        serde_json::json!({"subscription": SUB, "resourceGroup": "rg1", "location": "westeurope", "mode": "gateway"});
    let t = h.api(Method::POST, "/api/v1/agentTokens", &body.to_string()).await.json();
    let join = serde_json::json!({"joinToken": t["token"], "name": "gw1", "mode": "gateway", "osType": "Linux",
        "hostname": "gw1", "publicAddress": "203.0.113.10"});
    let a =
        h.send(Method::POST, "/agent/v1/join", &[("content-type", "application/json")], Some(&join.to_string())).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let gateway = a.json()["credential"].as_str().unwrap().to_owned();
    let vm = vm_id("rg1", "db1");
    let body = serde_json::json!({"id": vm, "osType": "Linux", "location": "westeurope", "address": "10.1.0.5", "gateway": "gw1"});
    assert!(h.api(Method::PUT, "/api/v1/vms", &body.to_string()).await.status.is_success());
    let policy = serde_json::json!({"properties": {"virtualMachines": [{"id": vm, "ports": [{"number": 22, "protocol": "TCP",
        "allowedSourceAddressPrefix": "*", "maxRequestAccessDuration": "PT3H", "mappedPort": 2201}]}]}});
    let a = h.api(Method::PUT, &format!("{}?api-version=2020-01-01", policy_id("rg1")), &policy.to_string()).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    h.agent_applies(&gateway).await;

    let (cookie, _) = h.sign_in(&h.token).await;
    let page = h.page(Method::GET, "/jit", Some(&cookie), None).await;
    assert!(page.body.contains(r#"aria-label="Gateway enforcement""#), "{}", page.body);
    assert!(page.body.contains("22 via :2201"), "{}", page.body);
    let from = format!("/jit/request?vm={}", enc(&vm));
    let fields = [
        ("vm", vm.as_str()),
        ("port", "0:22"),
        ("time.0.22", "PT1H"),
        ("source", "range"),
        ("range", "198.51.100.0/24"),
    ];
    let a = h.post(&cookie, &from, "/jit/request", &fields).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    let progress = a.location().to_owned();
    h.agent_applies(&gateway).await;
    let done = h.page(Method::GET, &progress, Some(&cookie), None).await;
    assert!(done.body.contains("<code>203.0.113.10:2201</code>"), "{}", done.body);
    let policy = h.api(Method::GET, &format!("{}?api-version=2020-01-01", policy_id("rg1")), "").await.json();
    let port = &policy["properties"]["requests"][0]["virtualMachines"][0]["ports"][0];
    assert_eq!(port["allowedSourceAddressPrefix"], "198.51.100.0/24", "{policy}");
}

#[tokio::test]
async fn a_form_posted_over_http2_passes_the_origin_check() {
    use tower::ServiceExt;
    let h = Harness::new().await;
    let (cookie, _) = h.sign_in(&h.token).await;
    let csrf = h.page(Method::GET, "/jit", Some(&cookie), None).await.hidden("csrf").unwrap();
    // HTTP/2 carries the host as `:authority` (the URI's), with no `Host` header.
    let post = |origin: &'static str| {
        let mut req = axum::http::Request::builder()
            .method(Method::POST)
            .uri("https://portal.test/signout")
            .version(axum::http::Version::HTTP_2)
            .header("origin", origin)
            .header("cookie", cookie.as_str())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(axum::body::Body::from(format!("csrf={csrf}")))
            .unwrap();
        req.extensions_mut().insert(axum::extract::ConnectInfo(jitgate_server::tls::PeerAddr(
            std::net::SocketAddr::from(([192, 0, 2, 7], 40000)),
        )));
        req
    };
    let a = h.router.clone().oneshot(post("https://elsewhere.test")).await.unwrap();
    assert_eq!(a.status(), StatusCode::FORBIDDEN);
    let a = h.router.clone().oneshot(post("https://portal.test")).await.unwrap();
    assert_eq!(a.status(), StatusCode::SEE_OTHER, "signed out");
}
