//! Test helpers: run the real `jitgate` binary on a free port in a temporary directory (removed
//! when the guard drops, even if the test fails) and talk to it over TLS with its own
//! certificate as the only trust root. Agents played through the protocol are in [`agents`],
//! webhook receivers in [`webhooks`].

#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers may panic on a failed expectation.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use jitgate_client::arm::{PolicyRef, API_VERSION};
pub use jitgate_client::local::LocalServer;

pub mod agents;
pub mod browser;
pub mod proxy;
pub mod webhooks;

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

impl From<LocalServer> for TestServer {
    /// A client for a server started some other way (e.g. on a data directory that is kept).
    fn from(server: LocalServer) -> Self {
        let client = jitgate_client::http_client(Some(&server.ca_cert)).expect("client");
        TestServer { server, client }
    }
}

impl TestServer {
    /// Starts `binary serve` with `extra` flags.
    pub fn start(binary: &str, extra: &[&str]) -> Self {
        LocalServer::start(Path::new(binary), extra).expect("jitgate serve starts").into()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.url)
    }

    /// The ARM URL of a policy, with the api-version.
    pub fn policy_url(&self, rg: &str, location: &str, name: &str) -> String {
        let at = PolicyRef {
            subscription: SUB.to_owned(),
            resource_group: rg.to_owned(),
            location: location.to_owned(),
            name: name.to_owned(),
        };
        self.url(&format!("{}?api-version={API_VERSION}", at.id()))
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

    /// Creates the principal `name` (a user) and returns a new token of it.
    pub async fn principal(&self, name: &str) -> String {
        let a = self.json(Method::POST, &self.url("/api/v1/principals"), &json!({"name": name})).await;
        assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
        let t = self.json(Method::POST, &self.url(&format!("/api/v1/principals/{name}/tokens")), &json!({})).await;
        assert_eq!(t.status, StatusCode::CREATED, "{t:?}");
        t.body["token"].as_str().expect("token").to_owned()
    }

    /// Assigns `role` to `principal` at `scope`, as the admin.
    pub async fn assign(&self, principal: &str, role: &str, scope: &str) -> Answer {
        let body = json!({"principal": principal, "role": role, "scope": scope});
        self.json(Method::POST, &self.url("/api/v1/roleAssignments"), &body).await
    }

    /// Creates the principal `name` holding `role` at `scope`; returns a new token of it.
    pub async fn principal_with_role(&self, name: &str, role: &str, scope: &str) -> String {
        let token = self.principal(name).await;
        let a = self.assign(name, role, scope).await;
        assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
        token
    }

    /// The audit records (one page, in log order) that `query` selects, e.g.
    /// `operation=…&status=Failed`.
    pub async fn audit(&self, query: &str) -> Vec<Value> {
        let a = self.send(Method::GET, &self.url(&format!("/api/v1/audit?{query}")), None).await;
        assert_eq!(a.status, StatusCode::OK, "{a:?}");
        a.body["value"].as_array().cloned().unwrap_or_default()
    }

    /// Every item of a paged list: GETs `url` and follows `nextLink`.
    pub async fn list_all(&self, url: String) -> Vec<Value> {
        let mut out = Vec::new();
        let mut next = Some(url);
        while let Some(url) = next {
            let a = self.send(Method::GET, &url, None).await;
            assert_eq!(a.status, StatusCode::OK, "{a:?}");
            out.extend(a.body["value"].as_array().cloned().unwrap_or_default());
            next = a.body["nextLink"].as_str().map(String::from);
        }
        out
    }
}

/// Runs the `jitgate` client (`binary`) with `args`, connected to `s` as its admin.
pub fn cli(binary: &str, s: &TestServer, args: &[&str]) -> Output {
    s.server.client_env(Command::new(binary).args(args)).output().expect("cli runs")
}

/// Polls `check` every 50 ms until it holds or `limit` passes; returns whether it held.
pub async fn eventually(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if check().await {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
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

/// Reads one HTTP/1.1 answer from a raw connection: its head (status line and headers) and its
/// body of `Content-Length` bytes. An end of the stream before that is `UnexpectedEof`.
pub async fn read_http_answer<R: tokio::io::AsyncRead + Unpin>(conn: &mut R) -> std::io::Result<(String, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).into_owned();
            let length: usize = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if data.len() >= end + 4 + length {
                return Ok((head, data[end + 4..end + 4 + length].to_vec()));
            }
        }
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        data.extend_from_slice(&buf[..n]);
    }
}

/// A raw TLS connection speaking HTTP/1.1 to the server, trusting its certificate (for tests
/// that write requests byte by byte).
pub type RawTls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// Opens a [`RawTls`] connection to `s`, as `localhost`.
pub async fn raw_tls(s: &TestServer) -> std::io::Result<RawTls> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(&s.server.ca_cert).expect("CA file") {
        roots.add(cert.expect("certificate")).expect("root");
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocols")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(s.server.url.trim_start_matches("https://")).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp).await
}
