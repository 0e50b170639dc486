//! The portal in real headless Chromium, end to end: `jitgate serve` and a browser in namespace C,
//! a real agent enforcing on the VM in namespace V (see `world`). Sign in with a token, enable
//! JIT on a VM with a custom port, edit it, request access for My IP and watch Open ports
//! complete, connect over TCP, revoke and see the port close, read the audit; a Reader is offered
//! no Request access; a forged form without the CSRF token changes nothing. Every page is checked
//! by axe-core (no serious or critical violation) and photographed into
//! `target/portal-screenshots/`.
//!
//! Needs root, `ip`, `nft`, Debian's `chromium` and `chromium-driver`, and axe-core from npm
//! (`.ci/run` installs them); skips with a printed reason otherwise, and fails under `CI=true`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may panic on a failed expectation.

#[macro_use]
mod world;

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use jitgate_testkit::browser::{self, Browser};
use world::*;

const NAME: &str = "the_portal_in_chromium_from_sign_in_to_revoke";

fn screenshots() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../portal-screenshots")
}

/// Every page visited: its axe-core findings, and a screenshot.
struct Pages<'a> {
    browser: &'a Browser,
    dir: PathBuf,
    violations: Vec<String>,
}

impl Pages<'_> {
    async fn check(&mut self, name: &str) {
        self.browser.screenshot(&self.dir, name).await;
        for v in self.browser.axe().await {
            self.violations.push(format!("{name}: {v}"));
        }
    }
}

#[test]
fn the_portal_in_chromium_from_sign_in_to_revoke() {
    skip_unless_netns!(NAME);
    if let Some(why) = browser::unavailable() {
        jitgate_netns::skip(NAME, &why);
        return;
    }
    let w = World::new(&[2222]);
    let dir = screenshots();
    // The browser, its driver and the test's WebDriver connection all live in C, beside the
    // server: the browser's address is source A, "My IP" as the server sees it.
    w.c.run(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(scenario(&w, &dir))
    })
    .expect("run inside C");
}

async fn scenario(w: &World, dir: &Path) {
    let b = Browser::start(NAME).await.expect("a browser (checked above)");
    let mut pages = Pages { browser: &b, dir: dir.to_owned(), violations: Vec::new() };
    let url = w.server.url.clone();

    // Sign in with a token. Chromium answers a post with its network error page when it sees the
    // namespace's interfaces change at that moment: the sign-in is then done again.
    for attempt in 1.. {
        b.goto(&format!("{url}/")).await;
        b.control("textbox", "Token").await.send_keys(&w.server.token).await.expect("type the token");
        if attempt == 1 {
            pages.check("01-sign-in").await;
        }
        b.control("button", "Sign in").await.click().await.expect("sign in");
        if b.control_or_error_page("button", "Sign out").await.is_some() {
            break;
        }
        assert!(attempt < 3, "the sign-in post met the browser's network error page {attempt} times");
    }
    pages.check("02-jit-configured-empty").await;

    // Not configured → Enable JIT on 1 VM, with a custom port.
    b.control("tab", "Not configured").await.click().await.expect("tab");
    b.control("checkbox", "Select vm1").await.click().await.expect("select vm1");
    pages.check("03-jit-not-configured").await;
    b.control("button", "Enable JIT on 1 VM").await.click().await.expect("enable");
    b.control("button", "Save").await;
    for port in [22, 3389, 5985, 5986] {
        assert!(
            b.find_control("button", &format!("Remove port {port}")).await.is_some(),
            "recommended port {port} offered, each removable"
        );
    }
    pages.check("04-enable-panel").await;
    for port in [3389, 5985, 5986] {
        b.control("button", &format!("Remove port {port}")).await.click().await.expect("remove");
        b.wait_until(
            "the port removed",
            &format!("return !document.querySelector('input[name$=\".number\"][value=\"{port}\"]')"),
        )
        .await;
    }
    b.control("button", "Add").await.click().await.expect("add a port");
    let new_port = b.css("input[name$='.number'][value='']").await;
    new_port.send_keys("2222").await.expect("type the port");
    b.control("button", "Save").await.click().await.expect("save");
    saved(&b).await;
    let text = b.text().await;
    assert!(text.contains("vm1") && text.contains("2222"), "vm1 configured with port 2222:\n{text}");
    assert!(w.probe(A, 2222, "closed", 5000)["reached"] == true, "the agent closed port 2222");
    let policy = get_policy(w);
    let ports = policy["properties"]["virtualMachines"][0]["ports"].clone();
    let numbers: Vec<u64> = ports.as_array().into_iter().flatten().filter_map(|p| p["number"].as_u64()).collect();
    assert_eq!(numbers, [22, 2222], "saved through the API's path: {policy}");

    // Edit: the maximum request time of the custom port.
    b.goto(&format!("{url}/jit?tab=configured")).await;
    pages.check("05-jit-configured").await;
    b.control("link", "Edit").await.click().await.expect("edit");
    let hours = b.control("spinbutton", "Maximum request time (hours) for port 2222").await;
    hours.clear().await.expect("clear");
    hours.send_keys("2").await.expect("type hours");
    pages.check("06-edit-panel").await;
    b.control("button", "Save").await.click().await.expect("save");
    saved(&b).await;
    let policy = get_policy(w);
    let edited = policy["properties"]["virtualMachines"][0]["ports"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["number"] == 2222).cloned())
        .unwrap_or(Value::Null);
    assert_eq!(edited["maxRequestAccessDuration"], "PT2H", "{policy}");

    // A forged form without the CSRF token is refused, and nothing changes.
    let forged = b
        .client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             const vm = arguments[0];
             const body = new URLSearchParams({mode: 'edit', vm, rows: '1', 'p0.number': '4444',
                 'p0.protocol': '*', 'p0.source': 'request', 'p0.hours': '3', action: 'save'});
             fetch('/jit/configure', {method: 'POST', body, redirect: 'manual'})
                 .then(r => done(r.status)).catch(e => done(String(e)));",
            vec![json!(vm_id("rg", "vm1"))],
        )
        .await
        .expect("forged post");
    assert_eq!(forged, json!(403), "a form without the CSRF token is refused");
    assert_eq!(get_policy(w), policy, "the forged form changed nothing");

    // Request access for My IP; Open ports follows the agent until it applied the grant.
    b.control("checkbox", "Select vm1").await.click().await.expect("select vm1");
    b.control("button", "Request access").await.click().await.expect("request access");
    b.control("checkbox", "Port 22").await.click().await.expect("port 22 off");
    let my_ip = b.control("radio", &format!("My IP ({A})")).await;
    assert_eq!(my_ip.prop("checked").await.expect("checked").as_deref(), Some("true"), "My IP is the default");
    pages.check("07-request-panel").await;
    assert!(!w.is_open(A, 2222), "closed before the request");
    b.control("button", "Open ports").await.click().await.expect("open ports");
    b.wait_until(
        "Open ports to complete",
        "return document.body.innerText.includes('every enforcement point has applied')",
    )
    .await;
    let text = b.text().await;
    assert!(text.contains(&format!("{VM}:2222")), "connection details shown:\n{text}");
    pages.check("08-open-ports-done").await;
    assert!(w.is_open(A, 2222), "a real TCP connect from My IP succeeds");
    assert!(!w.is_open(B, 2222), "and only from My IP");

    // My access: the grant with its time left; Revoke closes the port.
    b.goto(&format!("{url}/access")).await;
    pages.check("09-my-access").await;
    b.control("button", "Revoke").await.click().await.expect("revoke");
    assert_eq!(w.probe(A, 2222, "closed", 5000)["reached"], true, "revoked: closed again");

    // The audit page shows each step.
    b.goto(&format!("{url}/audit")).await;
    let audit = b.text().await;
    for op in ["signIn", "jitNetworkAccessPolicies/write", "initiate", "revoke"] {
        assert!(audit.contains(op), "the audit page shows {op}:\n{audit}");
    }
    pages.check("10-audit").await;

    // The other pages, for axe-core and the artefacts.
    for (path, name) in [
        ("/approvals", "11-approvals"),
        ("/access-control", "12-access-control"),
        ("/enforcement-points", "13-enforcement-points"),
        ("/jit?tab=unsupported", "14-jit-unsupported"),
        (&vm_page(), "15-vm-page"),
    ] {
        b.goto(&format!("{url}{path}")).await;
        b.control("button", "Sign out").await;
        pages.check(name).await;
    }

    // A Reader sees no Request access, Enable or Edit.
    let reader = reader_token(w);
    b.control("button", "Sign out").await.click().await.expect("sign out");
    b.control("textbox", "Token").await.send_keys(&reader).await.expect("type the token");
    b.control("button", "Sign in").await.click().await.expect("sign in as reader");
    b.control("tab", "Configured").await;
    let text = b.text().await;
    assert!(text.contains("vm1"), "a Reader sees the VM:\n{text}");
    assert!(b.find_control("button", "Request access").await.is_none(), "no Request access for a Reader");
    assert!(b.find_control("link", "Edit").await.is_none(), "no Edit for a Reader");
    pages.check("16-reader-jit").await;

    let violations = std::mem::take(&mut pages.violations);
    b.close().await;
    assert!(violations.is_empty(), "axe-core: serious or critical violations:\n{}", violations.join("\n"));
}

/// The policy as the API returns it (default policy of rg in westeurope).
/// Waits for the page a panel's Save answers with: the Configured tab selected and the panel
/// gone (the panel's own page has the tabs too: finding a tab alone could read the old page).
async fn saved(b: &Browser) {
    b.wait_until(
        "the Configured tab selected after the save",
        "return [...document.querySelectorAll('[role=tab][aria-selected=true]')]\
           .some(t => t.textContent.includes('Configured')) && !document.querySelector('input[name$=\".number\"]')",
    )
    .await;
}

fn get_policy(w: &World) -> Value {
    let (status, body) = w.api("GET", &w.policy_path(), None);
    assert_eq!(status, 200, "{body}");
    body
}

fn vm_page() -> String {
    format!("/vms/{SUB}/rg/vm1")
}

/// A principal with the built-in Reader role on the subscription, and a token for it.
fn reader_token(w: &World) -> String {
    let (status, b) = w.api("POST", "/api/v1/principals", Some(&json!({"name": "reader", "type": "user"})));
    assert_eq!(status, 201, "{b}");
    let assignment = json!({"principal": "reader", "role": "Reader", "scope": format!("/subscriptions/{SUB}")});
    let (status, b) = w.api("POST", "/api/v1/roleAssignments", Some(&assignment));
    assert_eq!(status, 201, "{b}");
    let (status, b) = w.api("POST", "/api/v1/principals/reader/tokens", Some(&json!({})));
    assert_eq!(status, 201, "{b}");
    b["token"].as_str().expect("token").to_owned()
}
