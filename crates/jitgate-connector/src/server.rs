//! The control plane as the connector sees it: join, state, inventory, enforcement report.
//! [`HttpServer`] makes the calls over HTTPS; tests give the loop a fake. The credential is kept
//! in the state directory (`connector.json`, mode 0600), as the agent keeps its own.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jitgate_agent::Credential;
use jitgate_api_types::agent::{AppliedIn, EnforcementReportIn, InventoryIn, InventoryOut, JoinIn, JoinOut, StateOut};
use jitgate_client::ClientError;

pub use jitgate_agent::control::CallError;
use jitgate_agent::control::{call_error, join_error};

/// The agent protocol's calls a cloud connector makes.
pub trait Server: Send + Sync {
    /// Joins with a one-time token (mode `cloud`).
    fn join(&self, body: &JoinIn) -> impl Future<Output = Result<JoinOut, CallError>> + Send;
    /// The desired state: at once when the server's revision is past `after` (or `after` is
    /// `None`), else when it changes or `wait` has passed.
    fn state(
        &self,
        credential: &str,
        after: Option<u64>,
        wait: Duration,
    ) -> impl Future<Output = Result<StateOut, CallError>> + Send;
    /// Registers the instances found (`PUT /agent/v1/inventory`).
    fn put_inventory(
        &self,
        credential: &str,
        body: &InventoryIn,
    ) -> impl Future<Output = Result<InventoryOut, CallError>> + Send;
    /// Reports removals and failing VMs (`POST /agent/v1/enforcement`).
    fn report_enforcement(
        &self,
        credential: &str,
        body: &EnforcementReportIn,
    ) -> impl Future<Output = Result<(), CallError>> + Send;
    /// Reports the revision whose rules are in EC2 (`POST /agent/v1/applied`): what keeps the
    /// connector from looking stale, and what `?wait=applied` waits for.
    fn applied(&self, credential: &str, report: &AppliedIn) -> impl Future<Output = Result<(), CallError>> + Send;
    /// The server in use, when there is one to name.
    fn server(&self) -> Option<&str> {
        None
    }
}

/// The calls over HTTPS through `jitgate-client`, to one server or several replicas.
#[derive(Debug, Clone)]
pub struct HttpServer {
    client: jitgate_client::Client,
}

impl HttpServer {
    /// A client for `servers`, trusting `ca_cert` too.
    pub fn new<S: AsRef<str>>(servers: &[S], ca_cert: Option<&Path>) -> Result<Self, ClientError> {
        let settings = jitgate_client::Settings::with_urls(servers)
            .ca_cert_path(ca_cert)
            .retries(0, Duration::ZERO)
            .on_switch(|s| tracing::warn!(from = %s.from, "switched to {} after {}", s.to, s.after));
        Ok(HttpServer { client: jitgate_client::Client::new(settings)? })
    }
}

impl Server for HttpServer {
    async fn join(&self, body: &JoinIn) -> Result<JoinOut, CallError> {
        self.client.agent().join(body).await.map_err(join_error)
    }

    async fn state(&self, credential: &str, after: Option<u64>, wait: Duration) -> Result<StateOut, CallError> {
        self.client.agent().state(credential, after, wait).await.map_err(call_error)
    }

    async fn put_inventory(&self, credential: &str, body: &InventoryIn) -> Result<InventoryOut, CallError> {
        self.client.agent().put_inventory(credential, body).await.map_err(call_error)
    }

    async fn report_enforcement(&self, credential: &str, body: &EnforcementReportIn) -> Result<(), CallError> {
        self.client.agent().report_enforcement(credential, body).await.map_err(call_error)
    }

    async fn applied(&self, credential: &str, report: &AppliedIn) -> Result<(), CallError> {
        self.client.agent().applied(credential, report).await.map_err(call_error)
    }

    fn server(&self) -> Option<&str> {
        Some(self.client.url())
    }
}

/// Where the connector keeps its credential.
pub const CREDENTIAL_FILE: &str = "connector.json";

/// Why the connector stopped (or could not start). A shutdown is not an error.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    #[error("not joined yet: give --server and --join-token")]
    NoServer,
    #[error("not joined yet: give --join-token (from `jitgate agent token create --mode cloud …`)")]
    NoJoinToken,
    #[error(
        "the server refused this connector's credential (401): it was revoked (jitgate agent rm). To join again: create a join token of mode cloud, remove {}, and start with --join-token",
        .state_dir.join(CREDENTIAL_FILE).display()
    )]
    Refused { state_dir: PathBuf },
    #[error("{what} {}", .path.display())]
    File {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading {}", .path.display())]
    BadCredential {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("setting up the connection to the server")]
    Client(#[from] ClientError),
    #[error("the server refused to let this connector join ({status}): {message}. Join tokens are single-use and expire: make a new one of mode cloud")]
    JoinRefused { status: u16, message: String },
    #[error("{what}")]
    Call {
        what: &'static str,
        #[source]
        source: CallError,
    },
}

/// How the connector joins.
#[derive(Debug, Clone)]
pub struct JoinSettings {
    pub servers: Vec<String>,
    pub join_token: Option<String>,
    pub ca_cert: Option<PathBuf>,
    pub state_dir: PathBuf,
    /// The connector's name (shown in `jitgate agent list`).
    pub name: String,
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), ConnectorError> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let file_error = |path: &Path| {
        let path = path.to_owned();
        move |source| ConnectorError::File { what: "writing", path, source }
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(&tmp).map_err(file_error(&tmp))?;
    f.write_all(data).and_then(|()| f.sync_all()).map_err(file_error(&tmp))?;
    std::fs::rename(&tmp, path).map_err(file_error(path))?;
    Ok(())
}

/// The stored credential, with the servers and CA certificate given now in place of the stored
/// ones; `None` before the first join.
pub fn stored_credential(cfg: &JoinSettings) -> Result<Option<Credential>, ConnectorError> {
    let path = cfg.state_dir.join(CREDENTIAL_FILE);
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(ConnectorError::File { what: "reading", path, source }),
    };
    let mut c: Credential =
        serde_json::from_slice(&data).map_err(|source| ConnectorError::BadCredential { path: path.clone(), source })?;
    let given = given_servers(cfg);
    if let Some(first) = given.first() {
        c.server = first.clone();
        c.servers = given;
    }
    if cfg.ca_cert.is_some() {
        c.ca_cert = cfg.ca_cert.clone();
    }
    Ok(Some(c))
}

/// The servers given at start, comma lists split.
pub fn given_servers(cfg: &JoinSettings) -> Vec<String> {
    cfg.servers.iter().flat_map(|s| jitgate_client::split_urls(s)).collect()
}

/// The servers to talk to: the stored credential's, else the ones given.
pub fn servers(cfg: &JoinSettings) -> Result<(Vec<String>, Option<PathBuf>), ConnectorError> {
    let (servers, ca) = match stored_credential(cfg)? {
        Some(c) if c.servers.is_empty() => (vec![c.server], c.ca_cert),
        Some(c) => (c.servers, c.ca_cert),
        None => (given_servers(cfg), cfg.ca_cert.clone()),
    };
    if servers.is_empty() {
        return Err(ConnectorError::NoServer);
    }
    Ok((servers, ca))
}

/// Loads the stored credential, or joins (mode `cloud`) and stores the new one.
pub async fn credential(cfg: &JoinSettings, server: &impl Server) -> Result<Credential, ConnectorError> {
    std::fs::create_dir_all(&cfg.state_dir).map_err(|source| ConnectorError::File {
        what: "creating",
        path: cfg.state_dir.clone(),
        source,
    })?;
    if let Some(c) = stored_credential(cfg)? {
        return Ok(c);
    }
    let servers = given_servers(cfg);
    if servers.is_empty() {
        return Err(ConnectorError::NoServer);
    }
    let Some(token) = cfg.join_token.as_deref() else { return Err(ConnectorError::NoJoinToken) };
    let body = JoinIn {
        join_token: token.to_owned(),
        name: cfg.name.clone(),
        mode: "cloud".into(),
        os_type: "Linux".into(),
        addresses: vec![],
        public_address: None,
        hostname: jitgate_agent::hostname(),
        name_is_hostname: false,
    };
    let out = server.join(&body).await.map_err(|source| match source {
        CallError::Status { status, body } if status.is_client_error() => {
            ConnectorError::JoinRefused { status: status.as_u16(), message: body }
        }
        CallError::Unauthorized => {
            ConnectorError::JoinRefused { status: 401, message: "the join token was refused".into() }
        }
        source => ConnectorError::Call { what: "joining", source },
    })?;
    let answered = server.server().unwrap_or(&servers[0]).to_owned();
    let c = Credential::joined(out, answered, servers, cfg.ca_cert.clone(), Vec::new());
    let data = serde_json::to_vec_pretty(&c).unwrap_or_default();
    write_private(&cfg.state_dir.join(CREDENTIAL_FILE), &data)?;
    tracing::info!(connector = %c.agent_id, name = %c.name, "joined");
    Ok(c)
}
