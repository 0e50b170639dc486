//! The agent protocol (`/agent/v1/…`): join with a one-time token, then every call carries the
//! agent's credential.

use std::time::Duration;

use reqwest::Method;

use jitgate_api_types::agent::{
    AppliedIn, EnforcementReportIn, InventoryIn, InventoryOut, JoinIn, JoinOut, RotateOut, StateOut,
};

use crate::{Bearer, Call, Client, ClientError};

/// How much longer than the server's hold a state request may take before it counts as lost.
pub const LONG_POLL_SLACK: Duration = Duration::from_secs(15);

/// The agent protocol.
#[derive(Debug, Clone, Copy)]
pub struct Agent<'c> {
    pub(crate) client: &'c Client,
}

impl Agent<'_> {
    fn call(&self, method: Method, path: &str, credential: Option<&str>) -> Call {
        let bearer = match credential {
            Some(c) => Bearer::Given(c.to_owned()),
            None => Bearer::None,
        };
        Call::new(method, self.client.at(path)).bearer(bearer)
    }

    /// Joins with the one-time token in `body`. The call may be repeated (on another replica
    /// too): the token makes one join at most, a second use is refused.
    pub async fn join(&self, body: &JoinIn) -> Result<JoinOut, ClientError> {
        self.client.json(self.call(Method::POST, "/agent/v1/join", None).json(body).repeatable()).await
    }

    /// Exchanges `credential` for a new one; the old one stops working.
    pub async fn rotate(&self, credential: &str) -> Result<RotateOut, ClientError> {
        self.client.json(self.call(Method::POST, "/agent/v1/rotate", Some(credential))).await
    }

    /// The desired state: at once when the server's revision is past `after` (or `after` is
    /// `None`), else when it changes or `wait` has passed.
    pub async fn state(&self, credential: &str, after: Option<u64>, wait: Duration) -> Result<StateOut, ClientError> {
        let mut call = self
            .call(Method::GET, "/agent/v1/state", Some(credential))
            .query("wait", wait.as_secs().to_string())
            .timeout(wait + LONG_POLL_SLACK);
        if let Some(a) = after {
            call = call.query("after", a.to_string());
        }
        self.client.json(call).await
    }

    /// Reports what was applied (a report may be repeated, on another replica too).
    pub async fn applied(&self, credential: &str, report: &AppliedIn) -> Result<(), ClientError> {
        let call = self.call(Method::POST, "/agent/v1/applied", Some(credential)).json(report).repeatable();
        self.client.send(call).await.map(drop)
    }

    /// A cloud connector's whole inventory (`PUT /agent/v1/inventory`); safe to repeat, on
    /// another replica too: the same inventory changes nothing the second time.
    pub async fn put_inventory(&self, credential: &str, inventory: &InventoryIn) -> Result<InventoryOut, ClientError> {
        let call = self.call(Method::PUT, "/agent/v1/inventory", Some(credential)).json(inventory).repeatable();
        self.client.json(call).await
    }

    /// A cloud connector's enforcement report (`POST /agent/v1/enforcement`). Not repeated after
    /// a lost answer: each removal would be audited again.
    pub async fn report_enforcement(&self, credential: &str, report: &EnforcementReportIn) -> Result<(), ClientError> {
        let call = self.call(Method::POST, "/agent/v1/enforcement", Some(credential)).json(report);
        self.client.send(call).await.map(drop)
    }
}
