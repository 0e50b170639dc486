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
    /// The server in use, when there is one to name.
    fn server(&self) -> Option<&str> {
        None
    }
}

/// The agent protocol over HTTPS, through `jitgate-client`, to one server or several replicas:
/// a call that finds its server gone (no connection, a timeout, 502/503/504) moves on to the
/// next one at once — a join, a state request and a report, and any call whose connection
/// could not be made — and the server that answers is kept; each switch is logged once. No retries inside a
/// call beyond one round of the servers: the agent's own loop backs off and tries again.
#[derive(Debug, Clone)]
pub struct HttpControl {
    client: jitgate_client::Client,
}

/// The HTTP client could not be built (a CA certificate that cannot be read or parsed).
pub use jitgate_client::ClientError;

impl HttpControl {
    /// A client for the servers at `servers` (`https://host:port` each, or comma lists), tried in
    /// this order, trusting `ca_cert` too, or only the servers `pins` name when there are any.
    pub fn new<S: AsRef<str>>(servers: &[S], ca_cert: Option<&Path>, pins: Vec<[u8; 32]>) -> Result<Self, ClientError> {
        let settings = jitgate_client::Settings::with_urls(servers)
            .ca_cert_path(ca_cert)
            .pins(pins)
            .retries(0, Duration::ZERO)
            .on_switch(|s| tracing::warn!(from = %s.from, "switched to {} after {}", s.to, s.after));
        Ok(HttpControl { client: jitgate_client::Client::new(settings)? })
    }
}

/// A failed call as the agent loop (or a cloud connector's) sees it.
pub fn call_error(e: ClientError) -> CallError {
    match e {
        ClientError::Api { status: 401, .. } => CallError::Unauthorized,
        ClientError::Api { status, code, message } => CallError::Status {
            status: reqwest::StatusCode::from_u16(status).unwrap_or(reqwest::StatusCode::INTERNAL_SERVER_ERROR),
            body: if code.is_empty() { message } else { format!("{code}: {message}") },
        },
        e @ (ClientError::Body(_) | ClientError::Decode { .. }) => CallError::Unreadable(e.into()),
        e => CallError::Unreachable(e.into()),
    }
}

/// A failed join: a 401 here is the join token's refusal, with the server's reason, not a
/// credential's.
pub fn join_error(e: ClientError) -> CallError {
    match e {
        ClientError::Api { status: 401, code, message } => CallError::Status {
            status: reqwest::StatusCode::UNAUTHORIZED,
            body: if code.is_empty() { message } else { format!("{code}: {message}") },
        },
        e => call_error(e),
    }
}

impl Control for HttpControl {
    async fn join(&self, body: &JoinIn) -> Result<JoinOut, CallError> {
        self.client.agent().join(body).await.map_err(join_error)
    }

    async fn rotate(&self, credential: &str) -> Result<RotateOut, CallError> {
        self.client.agent().rotate(credential).await.map_err(call_error)
    }

    async fn state(&self, credential: &str, after: Option<u64>, wait: Duration) -> Result<StateOut, CallError> {
        self.client.agent().state(credential, after, wait).await.map_err(call_error)
    }

    async fn applied(&self, credential: &str, report: &AppliedIn) -> Result<(), CallError> {
        self.client.agent().applied(credential, report).await.map_err(call_error)
    }

    fn server(&self) -> Option<&str> {
        Some(self.client.url())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_keep_their_meaning_for_the_loop() {
        let api = |status, code: &str| ClientError::Api { status, code: code.into(), message: "m".into() };
        assert!(matches!(call_error(api(401, "")), CallError::Unauthorized));
        match call_error(api(503, "Busy")) {
            CallError::Status { status, body } => assert_eq!((status.as_u16(), body.as_str()), (503, "Busy: m")),
            other => panic!("{other:?}"),
        }
        match call_error(api(400, "")) {
            CallError::Status { body, .. } => assert_eq!(body, "m"),
            other => panic!("{other:?}"),
        }
    }
}
