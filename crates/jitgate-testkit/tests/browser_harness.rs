//! The browser harness itself: controls are found by accessible name, and axe-core reports a
//! real violation, so a clean axe result on a portal page means something.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may panic on a failed expectation.

use jitgate_testkit::browser::Browser;

const PAGE: &str = "data:text/html,<!doctype html><html lang=en><head><title>t</title></head><body><main>\
<label for=t>Token</label><input id=t type=password>\
<button type=button>Sign in</button>\
<button type=button aria-label=Close>x</button>\
<div role=tablist><button role=tab aria-selected=true>Configured</button></div>\
</main></body></html>";

#[tokio::test]
async fn finds_controls_by_accessible_name_and_axe_reports_violations() {
    let Some(b) = Browser::start("finds_controls_by_accessible_name_and_axe_reports_violations").await else {
        return;
    };
    b.goto(PAGE).await;
    b.control("textbox", "Token").await.send_keys("abc").await.expect("type");
    b.control("button", "Sign in").await;
    b.control("button", "Close").await;
    b.control("tab", "Configured").await;
    assert!(b.find_control("button", "Sign out").await.is_none(), "an absent control is not found");
    assert_eq!(b.axe().await, Vec::<String>::new(), "the clean page has no serious violation");

    // A button without an accessible name is a critical violation.
    b.goto("data:text/html,<!doctype html><html lang=en><head><title>t</title></head><body><main><button></button></main></body></html>").await;
    let violations = b.axe().await;
    assert!(violations.iter().any(|v| v.contains("button-name")), "{violations:?}");
    b.close().await;
}
