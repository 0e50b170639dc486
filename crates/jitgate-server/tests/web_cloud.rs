//! The portal and cloud connectors: a join token made for one from the Enforcement points page,
//! its VMs on the JIT page with their state (a failing one marked Failed with the cloud's error)
//! and the Unsupported tab naming the reason the connector gave.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may panic on a failed expectation.

mod web_common;

use axum::http::{Method, StatusCode};
use serde_json::json;
use web_common::*;

#[tokio::test]
async fn a_cloud_connector_joins_from_the_portal_and_its_vms_show_their_state() {
    let h = Harness::new().await;
    let (cookie, _) = h.sign_in(&h.token).await;
    let page = h.page(Method::GET, "/enforcement-points", Some(&cookie), None).await;
    assert!(page.body.contains(r#"<option value="cloud">Cloud connector</option>"#), "{}", page.body);
    let fields = [("subscription", SUB), ("resourceGroup", "aws"), ("location", "westeurope"), ("mode", "cloud")];
    let a = h.post(&cookie, "/enforcement-points", "/enforcement-points/join-tokens", &fields).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert!(a.body.contains("Give it to the cloud connector"), "{}", a.body);
    let at = a.body.find("jgj_").expect("the token is shown");
    let token: String =
        a.body[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-').collect();
    let join = json!({"joinToken": token, "name": "aws-prod", "mode": "cloud", "osType": "Linux", "hostname": "c1"});
    let json_body = [("content-type", "application/json")];
    let j = h.send(Method::POST, "/agent/v1/join", &json_body, Some(&join.to_string())).await;
    assert_eq!(j.status, StatusCode::CREATED, "{}", j.body);
    let bearer = format!("Bearer {}", j.json()["credential"].as_str().expect("credential"));
    let agent = [("content-type", "application/json"), ("authorization", bearer.as_str())];

    let vms = json!({"vms": [
        {"name": "i-1", "osType": "Linux", "address": "10.9.0.1", "cloud": {"provider": "aws"}},
        {"name": "i-3", "osType": "Linux", "unsupportedReason": "no security group the connector manages"}]});
    let a = h.send(Method::PUT, "/agent/v1/inventory", &agent, Some(&vms.to_string())).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    h.policy("aws", &["i-1"], &[22]).await;
    let failure = json!({"failures": [{"vmId": vm_id("aws", "i-1"), "error": "UnauthorizedOperation"}]});
    let a = h.send(Method::POST, "/agent/v1/enforcement", &agent, Some(&failure.to_string())).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.body);

    let a = h.page(Method::GET, "/jit", Some(&cookie), None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert!(a.body.contains(r#"aria-label="Cloud enforcement""#) && a.body.contains("aws-prod"), "{}", a.body);
    assert!(a.body.contains(">Failed<") && a.body.contains("UnauthorizedOperation"), "{}", a.body);
    let a = h.page(Method::GET, "/jit?tab=unsupported", Some(&cookie), None).await;
    assert!(a.body.contains(">i-3</a>") && a.body.contains("no security group the connector manages"), "{}", a.body);
}
