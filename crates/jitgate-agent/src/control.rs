//! The control plane as the agent sees it: four calls of the agent protocol. [`HttpControl`]
//! makes them over HTTPS; tests give the agent loop a fake.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use jitgate_api_types::agent::{AppliedIn, JoinIn, JoinOut, RotateOut, StateOut};

/// Why a call to the server did not give an answer the agent can use.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The server refused the agent's credential (401).
    #[error("the server refused the credential (401)")]
    Unauthorized,
    /// The server answered with another error status.
    #[error("{status}: {body}")]
    Status { status: reqwest::StatusCode, body: String },
    /// The server could not be reached, or did not answer in time.
    #[error("{0}")]
    Unreachable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The answer came but could not be read.
    #[error("unreadable answer: {0}")]
    Unreadable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The agent protocol (`/agent/v1/…`).
pub trait Control: Send + Sync {
    /// Joins with a one-time token.
    fn join(&self, body: &JoinIn) -> impl Future<Output = Result<JoinOut, CallError>> + Send;
    /// Exchanges `credential` for a new one; the old one stops working.
    fn rotate(&self, credential: &str) -> impl Future<Output = Result<RotateOut, CallError>> + Send;
    /// The desired state: at once when the server's revision is past `after` (or `after` is
    /// `None`), else when it changes or `wait` has passed.
    fn state(
        &self,
        credential: &str,
        after: Option<u64>,
        wait: Duration,
    ) -> impl Future<Output = Result<StateOut, CallError>> + Send;
    /// Reports what was applied.
    fn applied(&self, credential: &str, report: &AppliedIn) -> impl Future<Output = Result<(), CallError>> + Send;
}

/// The agent protocol over HTTPS.
#[derive(Debug, Clone)]
pub struct HttpControl {
    server: String,
    client: reqwest::Client,
}

/// The HTTP client could not be built (a CA certificate that cannot be read or parsed).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ClientError(#[source] pub Box<dyn std::error::Error + Send + Sync>);

impl HttpControl {
    /// A client for the server at `server` (`https://host:port`), trusting `ca_cert` too.
    pub fn new(server: &str, ca_cert: Option<&Path>) -> Result<Self, ClientError> {
        let client = jitgate_cli::client::http_client(ca_cert).map_err(|e| ClientError(e.into()))?;
        Ok(HttpControl { server: server.trim_end_matches('/').to_owned(), client })
    }

    async fn answer<T: serde::de::DeserializeOwned>(
        sent: Result<reqwest::Response, reqwest::Error>,
    ) -> Result<T, CallError> {
        let resp = sent.map_err(|e| CallError::Unreachable(e.into()))?;
        let status = resp.status();
        if status == reqwest::StatusCode::UNAUTHORIZED {
            return Err(CallError::Unauthorized);
        }
        if !status.is_success() {
            return Err(CallError::Status { status, body: resp.text().await.unwrap_or_default() });
        }
        let bytes = resp.bytes().await.map_err(|e| CallError::Unreadable(e.into()))?;
        serde_json::from_slice(&bytes).map_err(|e| CallError::Unreadable(e.into()))
    }
}

impl Control for HttpControl {
    async fn join(&self, body: &JoinIn) -> Result<JoinOut, CallError> {
        Self::answer(self.client.post(format!("{}/agent/v1/join", self.server)).json(body).send().await).await
    }

    async fn rotate(&self, credential: &str) -> Result<RotateOut, CallError> {
        let url = format!("{}/agent/v1/rotate", self.server);
        Self::answer(self.client.post(url).bearer_auth(credential).send().await).await
    }

    async fn state(&self, credential: &str, after: Option<u64>, wait: Duration) -> Result<StateOut, CallError> {
        let mut url = format!("{}/agent/v1/state?wait={}", self.server, wait.as_secs());
        if let Some(a) = after {
            url.push_str(&format!("&after={a}"));
        }
        let sent = self.client.get(&url).bearer_auth(credential).timeout(wait + Duration::from_secs(15)).send().await;
        Self::answer(sent).await
    }

    async fn applied(&self, credential: &str, report: &AppliedIn) -> Result<(), CallError> {
        let url = format!("{}/agent/v1/applied", self.server);
        let resp = self.client.post(url).bearer_auth(credential).json(report).send().await;
        let resp = resp.map_err(|e| CallError::Unreachable(e.into()))?;
        match resp.status() {
            reqwest::StatusCode::UNAUTHORIZED => Err(CallError::Unauthorized),
            s if !s.is_success() => Err(CallError::Status { status: s, body: resp.text().await.unwrap_or_default() }),
            _ => Ok(()),
        }
    }
}
