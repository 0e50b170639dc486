//! The typed HTTP client of jitgate's three APIs: Azure's JIT policies ([`arm`]), jitgate's own
//! `/api/v1` ([`native`]) and the agent protocol ([`agent`]), over the DTOs of
//! `jitgate-api-types`. [`Settings`] are the connection settings (one URL or several replicas,
//! bearer token, CA certificate, timeouts, retries); [`Client`] sends, moves to the next replica
//! and retries calls that are safe to repeat on connection errors and 502/503/504 with backoff,
//! follows `nextLink`, and turns every failure into a [`ClientError`]. [`oidc`] signs humans in
//! (device flow, or PKCE with a loopback redirect).

pub mod agent;
pub mod arm;
mod failover;
pub mod health;
#[cfg(feature = "local-server")]
pub mod local;
pub mod native;
pub mod oidc;
pub mod pin;

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use jitgate_api_types::error::ErrorBody;

/// Why a call gave no answer the caller can use.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The CA certificate file could not be read.
    #[error("reading CA certificate {}", path.display())]
    CaCertRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The TLS configuration for pinned fingerprints could not be made.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// The CA certificate is not PEM.
    #[error("parsing {what}")]
    CaCertParse {
        what: String,
        #[source]
        source: reqwest::Error,
    },
    /// The HTTP client could not be built.
    #[error("building the HTTP client")]
    Build(#[source] reqwest::Error),
    /// The server could not be reached, or did not answer in time.
    #[error(transparent)]
    Transport(reqwest::Error),
    /// The server refused: its status and Azure's error body (`code` is empty and `message` the
    /// raw text when the body is not Azure's).
    #[error("{status} {code}: {message}")]
    Api { status: u16, code: String, message: String },
    /// The answer came but its body could not be read.
    #[error("reading the answer")]
    Body(#[source] reqwest::Error),
    /// The answer is not the JSON the API defines.
    #[error("the answer from {url} is not what the API defines")]
    Decode {
        url: String,
        #[source]
        source: serde_json::Error,
    },
    /// Several servers were tried and none answered: each URL with its last failure, in the
    /// order they were tried.
    #[error("no server answered: {}", failover::describe(.tried))]
    Unavailable { tried: Vec<(String, ClientError)> },
}

impl ClientError {
    /// The HTTP status of a refusal.
    /// For [`ClientError::Unavailable`], the status of the last server tried.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            ClientError::Unavailable { tried } => tried.last().and_then(|(_, e)| e.status()),
            _ => None,
        }
    }

    /// Whether the server did not answer in time (for [`ClientError::Unavailable`], the last
    /// server tried).
    pub fn is_timeout(&self) -> bool {
        match self {
            ClientError::Transport(e) | ClientError::Body(e) => e.is_timeout(),
            ClientError::Unavailable { tried } => tried.last().is_some_and(|(_, e)| e.is_timeout()),
            _ => false,
        }
    }
}

/// The CA (or self-signed) certificate that signs the server's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaCert {
    /// A PEM file.
    Path(PathBuf),
    /// PEM text.
    Pem(Vec<u8>),
}

/// How to reach a server, or one of several replicas of it.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The servers' base URLs (`https://host:port`, without a trailing slash), tried in this
    /// order; replicas of one control plane (they share its database).
    pub urls: Vec<String>,
    /// The bearer token sent with every call of the ARM and native APIs.
    pub token: Option<String>,
    /// Trusted besides the system's roots.
    pub ca_cert: Option<CaCert>,
    /// When not empty: trust exactly the servers whose certificate, or its public key, has one of
    /// these SHA-256 fingerprints (no CA, no name check; [`pin`]).
    pub pins: Vec<[u8; 32]>,
    /// How long a TCP + TLS connect may take.
    pub connect_timeout: Duration,
    /// How long a whole call may take (a call may ask for more, like the agent's long-poll).
    pub timeout: Duration,
    /// How often a call that is safe to repeat (GET, PUT, DELETE, or one with an idempotency
    /// key) is tried again, on every server, after a connection error or a 502/503/504.
    pub retries: u32,
    /// The wait before the first retry; it doubles for each further one.
    pub backoff: Duration,
    /// Called when a call lands on another server than the one the client was using.
    pub on_switch: Option<SwitchHook>,
    /// Called with the `Server-Timing` header of every answer that has one.
    pub on_server_timing: Option<TimingHook>,
}

/// What [`Settings::on_server_timing`] calls.
#[derive(Clone)]
pub struct TimingHook(pub std::sync::Arc<dyn Fn(&str) + Send + Sync>);

impl std::fmt::Debug for TimingHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TimingHook")
    }
}

/// Default [`Settings::timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Default [`Settings::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`Settings::retries`].
pub const DEFAULT_RETRIES: u32 = 2;
/// Default [`Settings::backoff`].
pub const DEFAULT_BACKOFF: Duration = Duration::from_millis(200);

impl Settings {
    /// The defaults for `url` (one URL, or a comma-separated list of replicas): no token, the
    /// system's roots, 10 s to connect, 60 s per call, two retries 200 ms and 400 ms after the
    /// first failure.
    pub fn new(url: impl Into<String>) -> Self {
        Self::with_urls(split_urls(&url.into()))
    }

    /// The defaults for several replicas, tried in this order (each may be a comma list too).
    pub fn with_urls<S: AsRef<str>>(urls: impl IntoIterator<Item = S>) -> Self {
        Settings {
            urls: urls.into_iter().flat_map(|u| split_urls(u.as_ref())).collect(),
            token: None,
            ca_cert: None,
            pins: Vec::new(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            timeout: DEFAULT_TIMEOUT,
            retries: DEFAULT_RETRIES,
            backoff: DEFAULT_BACKOFF,
            on_switch: None,
            on_server_timing: None,
        }
    }

    /// Calls `hook` with the `Server-Timing` header of each answer that carries one (a server
    /// started with `--server-timing`).
    pub fn on_server_timing(mut self, hook: impl Fn(&str) + Send + Sync + 'static) -> Self {
        self.on_server_timing = Some(TimingHook(std::sync::Arc::new(hook)));
        self
    }

    /// Calls `hook` each time a call lands on another server than the one in use.
    pub fn on_switch(mut self, hook: impl Fn(&Switch) + Send + Sync + 'static) -> Self {
        self.on_switch = Some(SwitchHook(std::sync::Arc::new(hook)));
        self
    }

    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    pub fn ca_cert(mut self, ca: Option<CaCert>) -> Self {
        self.ca_cert = ca;
        self
    }

    /// A PEM file to trust, when given.
    pub fn ca_cert_path(self, path: Option<&Path>) -> Self {
        self.ca_cert(path.map(|p| CaCert::Path(p.to_owned())))
    }

    /// Trust exactly the servers whose certificate or public key has one of these SHA-256
    /// fingerprints (none: the CA trust of [`Settings::ca_cert`] and the system).
    pub fn pins(mut self, pins: Vec<[u8; 32]>) -> Self {
        self.pins = pins;
        self
    }

    pub fn retries(mut self, retries: u32, backoff: Duration) -> Self {
        self.retries = retries;
        self.backoff = backoff;
        self
    }

    pub fn timeouts(mut self, connect: Duration, total: Duration) -> Self {
        self.connect_timeout = connect;
        self.timeout = total;
        self
    }

    /// The reqwest client these settings describe (rustls, keep-alive, the CA trusted).
    pub fn http_client(&self) -> Result<reqwest::Client, ClientError> {
        self.http_builder()?.build().map_err(ClientError::Build)
    }

    /// The builder of [`Settings::http_client`], for a client that needs one more setting.
    pub(crate) fn http_builder(&self) -> Result<reqwest::ClientBuilder, ClientError> {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(self.connect_timeout)
            .timeout(self.timeout)
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true);
        if !self.pins.is_empty() {
            let tls = pin::client_config(&self.pins).map_err(|e| ClientError::Tls(e.to_string()))?;
            return Ok(builder.use_preconfigured_tls(tls));
        }
        let pem = match &self.ca_cert {
            None => None,
            Some(CaCert::Pem(pem)) => Some(("the CA certificate".to_owned(), pem.clone())),
            Some(CaCert::Path(path)) => {
                let pem =
                    std::fs::read(path).map_err(|source| ClientError::CaCertRead { path: path.clone(), source })?;
                Some((path.display().to_string(), pem))
            }
        };
        if let Some((what, pem)) = pem {
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|source| ClientError::CaCertParse { what, source })?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        Ok(builder)
    }
}

/// A reqwest client with the default settings trusting `ca_cert` (PEM) besides the system's
/// roots: for tests and tools that speak HTTP themselves.
pub fn http_client(ca_cert: Option<&Path>) -> Result<reqwest::Client, ClientError> {
    Settings::new("").ca_cert_path(ca_cert).http_client()
}

/// A connection to a server, or to whichever of several replicas answers. Cheap to clone (the
/// connection pool and the server in use are shared).
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    servers: std::sync::Arc<failover::Servers>,
    token: Option<String>,
    retries: u32,
    backoff: Duration,
    on_server_timing: Option<TimingHook>,
}

/// One call: what [`Client::send`] needs.
#[derive(Debug)]
pub(crate) struct Call {
    method: Method,
    /// A path on the server, or an absolute URL (a `nextLink` to a server not in the list).
    url: String,
    query: Vec<(&'static str, String)>,
    body: Option<Vec<u8>>,
    bearer: Bearer,
    timeout: Option<Duration>,
    /// Sent as `x-ms-client-request-id`: the server answers a repeat with the first answer.
    idempotency_key: Option<String>,
    /// Repeating the call changes nothing more than the first one did.
    idempotent: bool,
}

/// Which bearer token a call carries.
#[derive(Debug)]
pub(crate) enum Bearer {
    /// The settings' token.
    Settings,
    /// None (sign-in configuration, joining).
    None,
    /// This one (an agent's credential).
    Given(String),
}

impl Call {
    pub(crate) fn new(method: Method, url: String) -> Self {
        let idempotent = matches!(method, Method::GET | Method::PUT | Method::DELETE | Method::HEAD);
        Call {
            method,
            url,
            query: Vec::new(),
            body: None,
            bearer: Bearer::Settings,
            timeout: None,
            idempotency_key: None,
            idempotent,
        }
    }

    /// Sends a fresh `x-ms-client-request-id` with every attempt of this call, so that it may be
    /// repeated (on another replica too) without doing twice what it does.
    pub(crate) fn idempotency_key(mut self) -> Self {
        self.idempotency_key = Some(uuid::Uuid::new_v4().to_string());
        self.idempotent = true;
        self
    }

    /// Marks a POST whose repetition changes nothing more (an agent's report, a join).
    pub(crate) fn repeatable(mut self) -> Self {
        self.idempotent = true;
        self
    }

    pub(crate) fn query(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.query.push((key, value.into()));
        self
    }

    pub(crate) fn query_if(self, cond: bool, key: &'static str, value: &str) -> Self {
        if cond {
            self.query(key, value)
        } else {
            self
        }
    }

    pub(crate) fn json(mut self, body: &impl Serialize) -> Self {
        // Serializing our own DTOs cannot fail (string keys, no non-finite floats).
        self.body = Some(serde_json::to_vec(body).unwrap_or_default());
        self
    }

    pub(crate) fn bearer(mut self, bearer: Bearer) -> Self {
        self.bearer = bearer;
        self
    }

    pub(crate) fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

impl Client {
    pub fn new(settings: Settings) -> Result<Self, ClientError> {
        Ok(Client {
            http: settings.http_client()?,
            servers: std::sync::Arc::new(failover::Servers::new(settings.urls, settings.on_switch)),
            token: settings.token,
            retries: settings.retries,
            backoff: settings.backoff,
            on_server_timing: settings.on_server_timing,
        })
    }

    /// The base URL of the server in use: the first of the list until a call fails over.
    pub fn url(&self) -> &str {
        self.servers.current_url()
    }

    /// Every server's base URL, in the order given.
    pub fn urls(&self) -> &[String] {
        self.servers.urls()
    }

    /// The underlying reqwest client (same pool, same trust).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The same connection with another bearer token.
    pub fn with_token(&self, token: impl Into<String>) -> Self {
        Client { token: Some(token.into()), ..self.clone() }
    }

    /// Azure's JIT policy API.
    pub fn arm(&self) -> arm::Arm<'_> {
        arm::Arm { client: self }
    }

    /// jitgate's own `/api/v1`.
    pub fn native(&self) -> native::Native<'_> {
        native::Native { client: self }
    }

    /// The agent protocol `/agent/v1`.
    pub fn agent(&self) -> agent::Agent<'_> {
        agent::Agent { client: self }
    }

    /// POSTs `body` as JSON to `path` the way the API calls are sent (the bearer token, a fresh
    /// `x-ms-client-request-id`, retries) and reads the answer as `T`: for a tool that measures
    /// the transport itself against a server of its own (the bare HTTPS yardstick of `jitgate
    /// bench`).
    pub async fn post_json<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> Result<T, ClientError> {
        self.json(Call::new(Method::POST, self.at(path)).json(body).idempotency_key()).await
    }

    /// `path` on whichever server answers; an absolute URL (a `nextLink`) on one of the servers
    /// becomes its path, so that it too may go to another; any other is kept as it is.
    pub(crate) fn at(&self, path: &str) -> String {
        self.servers.relative(path)
    }

    /// One attempt of `call` at `url`.
    async fn attempt(&self, call: &Call, url: &str) -> Result<reqwest::Response, reqwest::Error> {
        let mut req = self.http.request(call.method.clone(), url);
        if !call.query.is_empty() {
            req = req.query(&call.query);
        }
        let token = match &call.bearer {
            Bearer::Settings => self.token.as_deref(),
            Bearer::None => None,
            Bearer::Given(t) => Some(t.as_str()),
        };
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(key) = &call.idempotency_key {
            req = req.header("x-ms-client-request-id", key);
        }
        if let Some(body) = &call.body {
            req = req.header(reqwest::header::CONTENT_TYPE, "application/json").body(body.clone());
        }
        if let Some(t) = call.timeout {
            req = req.timeout(t);
        }
        req.send().await
    }

    /// Sends `call` and reads the answer as `T`.
    pub(crate) async fn json<T: DeserializeOwned>(&self, call: Call) -> Result<T, ClientError> {
        let resp = self.send(call).await?;
        let mut url = resp.url().clone();
        url.set_query(None);
        let url = url.to_string();
        let bytes = resp.bytes().await.map_err(ClientError::Body)?;
        serde_json::from_slice(&bytes).map_err(|source| ClientError::Decode { url, source })
    }

    /// Every item of a paged list: `first`, then each `nextLink`.
    pub(crate) async fn all_pages<T: DeserializeOwned>(&self, first: Call) -> Result<Vec<T>, ClientError> {
        let mut pager = Pager::<T>::new(self, first);
        let mut out = Vec::new();
        while let Some(page) = pager.next_page().await? {
            out.extend(page);
        }
        Ok(out)
    }
}

fn is_transient(status: StatusCode) -> bool {
    matches!(status, StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT)
}

/// A refusal: the status and Azure's error body, or the raw text when the body is not one.
async fn refusal(resp: reqwest::Response) -> ClientError {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    match serde_json::from_str::<ErrorBody>(&text) {
        Ok(b) => ClientError::Api { status, code: b.error.code, message: b.error.message },
        Err(_) => ClientError::Api { status, code: String::new(), message: text },
    }
}

/// Splits a comma-separated list of base URLs; each loses its trailing slash, blanks are left out.
pub fn split_urls(text: &str) -> Vec<String> {
    text.split(',').map(|u| u.trim().trim_end_matches('/')).filter(|u| !u.is_empty()).map(str::to_owned).collect()
}

pub use failover::{Switch, SwitchHook};

/// One page of a list: `value` and the link to the next page.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Page<T> {
    value: Vec<T>,
    #[serde(default)]
    next_link: Option<String>,
}

/// The pages of a list, one call each, following `nextLink`.
#[derive(Debug)]
pub struct Pager<'c, T> {
    client: &'c Client,
    next: Option<Call>,
    _items: std::marker::PhantomData<fn() -> T>,
}

impl<'c, T: DeserializeOwned> Pager<'c, T> {
    pub(crate) fn new(client: &'c Client, first: Call) -> Self {
        Pager { client, next: Some(first), _items: std::marker::PhantomData }
    }

    /// The next page's items, or `None` after the last page.
    pub async fn next_page(&mut self) -> Result<Option<Vec<T>>, ClientError> {
        let Some(call) = self.next.take() else { return Ok(None) };
        let bearer = match &call.bearer {
            Bearer::Settings => Bearer::Settings,
            Bearer::None => Bearer::None,
            Bearer::Given(t) => Bearer::Given(t.clone()),
        };
        let page: Page<T> = self.client.json(call).await?;
        self.next = page.next_link.map(|link| Call::new(Method::GET, self.client.at(&link)).bearer(bearer));
        Ok(Some(page.value))
    }
}

#[cfg(test)]
mod tests;
