//! Agents played through the agent protocol: join tokens made by the admin, joins made with no
//! credential of their own, calls made with an agent credential.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::{Answer, TestServer, SUB};

/// Copies the fields of `extra` (an object) into `body`.
fn with(mut body: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().into_iter().flatten() {
        body[k] = v.clone();
    }
    body
}

/// A join token made by the admin for resource group `rg` of `sub` in westeurope; `extra` adds
/// fields such as `"vm"`.
pub async fn join_token(s: &TestServer, sub: &str, rg: &str, mode: &str, extra: Value) -> String {
    let body = with(json!({"subscription": sub, "resourceGroup": rg, "location": "westeurope", "mode": mode}), extra);
    let t = s.json(Method::POST, &s.url("/api/v1/agentTokens"), &body).await;
    assert_eq!(t.status, StatusCode::CREATED, "{t:?}");
    t.body["token"].as_str().expect("token").to_owned()
}

/// Joins as an agent would, with no credential of its own; `extra` adds fields such as
/// `"addresses"`.
pub async fn join(s: &TestServer, token: &str, name: &str, mode: &str, extra: Value) -> Answer {
    let body =
        with(json!({"joinToken": token, "name": name, "mode": mode, "osType": "Linux", "hostname": name}), extra);
    s.send_with(Method::POST, &s.url("/agent/v1/join"), Some(body.to_string().as_bytes()), &[]).await
}

/// Joins and returns (agent id, credential).
pub async fn joined(s: &TestServer, token: &str, name: &str, mode: &str, extra: Value) -> (String, String) {
    let a = join(s, token, name, mode, extra).await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
    (a.body["agentId"].as_str().expect("id").to_owned(), a.body["credential"].as_str().expect("credential").to_owned())
}

/// Joins gateway `name` in resource group rg1 with a new token; returns its credential.
pub async fn join_gateway(s: &TestServer, name: &str, extra: Value) -> String {
    let token = join_token(s, SUB, "rg1", "gateway", json!({})).await;
    joined(s, &token, name, "gateway", extra).await.1
}

/// A call made with an agent credential to `path`.
pub async fn agent_call(s: &TestServer, credential: &str, method: Method, path: &str, body: Option<Value>) -> Answer {
    let auth = format!("Bearer {credential}");
    let text = body.map(|b| b.to_string());
    s.send_with(method, &s.url(path), text.as_deref().map(str::as_bytes), &[("Authorization", &auth)]).await
}

/// The agent's state as it is now (no long-poll).
pub async fn state(s: &TestServer, credential: &str) -> Answer {
    agent_call(s, credential, Method::GET, "/agent/v1/state?wait=0", None).await
}
