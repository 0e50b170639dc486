//! Test helpers: run the real `jitgate` binary on a free port in a temporary directory (removed
//! when the guard drops, even if the test fails) and talk to it over TLS with its own
//! certificate as the only trust root.

use std::path::Path;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

pub use jitgate_cli::local::LocalServer;

/// The subscription used by tests.
pub const SUB: &str = "20ff7fc3-e762-44dd-bd96-b71116dcdc23";

/// A started server and a client that trusts it.
pub struct TestServer {
    pub server: LocalServer,
    pub client: reqwest::Client,
}

/// A response: status, headers and the JSON body (`Null` when empty or not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    /// The Azure error code of an error answer.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

impl TestServer {
    /// Starts `binary serve` with `extra` flags.
    pub fn start(binary: &str, extra: &[&str]) -> Self {
        let server = LocalServer::start(Path::new(binary), extra).expect("jitgate serve starts");
        let client = jitgate_cli::client::http_client(Some(&server.ca_cert)).expect("client");
        TestServer { server, client }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.url)
    }

    /// The ARM URL of a policy, with the api-version.
    pub fn policy_url(&self, rg: &str, location: &str, name: &str) -> String {
        self.url(&format!(
            "/subscriptions/{SUB}/resourceGroups/{rg}/providers/Microsoft.Security/locations/{location}/jitNetworkAccessPolicies/{name}?api-version=2020-01-01"
        ))
    }

    pub fn initiate_url(&self, rg: &str, location: &str, name: &str) -> String {
        self.policy_url(rg, location, name).replace("?api-version", "/initiate?api-version")
    }

    /// Sends a request with the admin token and an optional raw body.
    pub async fn send(&self, method: Method, url: &str, body: Option<&[u8]>) -> Answer {
        self.send_with(method, url, body, &[("Authorization", &format!("Bearer {}", self.server.token))]).await
    }

    /// Sends a request with exactly these headers.
    pub async fn send_with(&self, method: Method, url: &str, body: Option<&[u8]>, headers: &[(&str, &str)]) -> Answer {
        let mut req = self.client.request(method, url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.header("Content-Type", "application/json").body(b.to_vec());
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.expect("body read");
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer { status, headers, body }
    }

    pub async fn json(&self, method: Method, url: &str, body: &Value) -> Answer {
        self.send(method, url, Some(body.to_string().as_bytes())).await
    }

    /// Registers a VM in resource group `rg`; returns its ARM id.
    pub async fn register_vm(&self, rg: &str, name: &str, os: &str) -> String {
        let id = vm_id(rg, name);
        let a = self
            .json(
                Method::PUT,
                &self.url("/api/v1/vms"),
                &json!({"id": id, "osType": os, "location": "westeurope", "address": "10.0.0.4"}),
            )
            .await;
        assert!(a.status.is_success(), "registering {name}: {a:?}");
        id
    }
}

/// Sends a request as the holder of `token`, with an optional JSON body.
pub async fn as_user(s: &TestServer, token: &str, method: Method, url: &str, body: Option<&Value>) -> Answer {
    let auth = format!("Bearer {token}");
    let text = body.map(|b| b.to_string());
    s.send_with(
        method,
        url,
        text.as_deref().map(str::as_bytes),
        &[("Authorization", auth.as_str()), ("Content-Type", "application/json")],
    )
    .await
}

/// The ARM id of a test VM.
pub fn vm_id(rg: &str, name: &str) -> String {
    format!("/subscriptions/{SUB}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{name}")
}
