//! The typed HTTP client of jitgate's three APIs: Azure's JIT policies ([`arm`]), jitgate's own
//! `/api/v1` ([`native`]) and the agent protocol ([`agent`]), over the DTOs of
//! `jitgate-api-types`. [`Settings`] are the connection settings (URL, bearer token, CA
//! certificate, timeouts, retries); [`Client`] sends, retries idempotent calls on connection
//! errors and 502/503/504 with backoff, follows `nextLink`, and turns every failure into a
//! [`ClientError`]. [`oidc`] signs humans in (device flow, or PKCE with a loopback redirect).

pub mod agent;
pub mod arm;
#[cfg(feature = "local-server")]
pub mod local;
pub mod native;
pub mod oidc;

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
}

impl ClientError {
    /// The HTTP status of a refusal.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether the server did not answer in time.
    pub fn is_timeout(&self) -> bool {
        matches!(self, ClientError::Transport(e) | ClientError::Body(e) if e.is_timeout())
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

/// How to reach a server.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `https://host:port`, without a trailing slash (one is removed).
    pub url: String,
    /// The bearer token sent with every call of the ARM and native APIs.
    pub token: Option<String>,
    /// Trusted besides the system's roots.
    pub ca_cert: Option<CaCert>,
    /// How long a TCP + TLS connect may take.
    pub connect_timeout: Duration,
    /// How long a whole call may take (a call may ask for more, like the agent's long-poll).
    pub timeout: Duration,
    /// How often an idempotent call (GET, PUT, DELETE) is tried again after a connection error
    /// or a 502/503/504.
    pub retries: u32,
    /// The wait before the first retry; it doubles for each further one.
    pub backoff: Duration,
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
    /// The defaults for `url`: no token, the system's roots, 10 s to connect, 60 s per call, two
    /// retries 200 ms and 400 ms after the first failure.
    pub fn new(url: impl Into<String>) -> Self {
        Settings {
            url: url.into().trim_end_matches('/').to_owned(),
            token: None,
            ca_cert: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            timeout: DEFAULT_TIMEOUT,
            retries: DEFAULT_RETRIES,
            backoff: DEFAULT_BACKOFF,
        }
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
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(self.connect_timeout)
            .timeout(self.timeout)
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true);
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
        builder.build().map_err(ClientError::Build)
    }
}

/// A reqwest client with the default settings trusting `ca_cert` (PEM) besides the system's
/// roots: for tests and tools that speak HTTP themselves.
pub fn http_client(ca_cert: Option<&Path>) -> Result<reqwest::Client, ClientError> {
    Settings::new("").ca_cert_path(ca_cert).http_client()
}

/// A connection to one server. Cheap to clone (the connection pool is shared).
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    url: String,
    token: Option<String>,
    retries: u32,
    backoff: Duration,
}

/// One call: what [`Client::send`] needs.
#[derive(Debug)]
pub(crate) struct Call {
    method: Method,
    url: String,
    query: Vec<(&'static str, String)>,
    body: Option<Vec<u8>>,
    bearer: Bearer,
    timeout: Option<Duration>,
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
        Call { method, url, query: Vec::new(), body: None, bearer: Bearer::Settings, timeout: None }
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
            url: settings.url,
            token: settings.token,
            retries: settings.retries,
            backoff: settings.backoff,
        })
    }

    /// The server's base URL.
    pub fn url(&self) -> &str {
        &self.url
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

    /// `path` on this server; an absolute URL (a `nextLink`) is kept as it is.
    pub(crate) fn at(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_owned()
        } else {
            format!("{}{path}", self.url)
        }
    }

    /// Sends `call`, retrying an idempotent one; a success answer, or the refusal as
    /// [`ClientError::Api`].
    pub(crate) async fn send(&self, call: Call) -> Result<reqwest::Response, ClientError> {
        let idempotent = matches!(call.method, Method::GET | Method::PUT | Method::DELETE | Method::HEAD);
        let attempts = if idempotent { self.retries + 1 } else { 1 };
        let mut wait = self.backoff;
        let mut attempt = 1;
        loop {
            let mut req = self.http.request(call.method.clone(), &call.url);
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
            if let Some(body) = &call.body {
                req = req.header(reqwest::header::CONTENT_TYPE, "application/json").body(body.clone());
            }
            if let Some(t) = call.timeout {
                req = req.timeout(t);
            }
            let retry = match req.send().await {
                Err(e) if e.is_connect() && attempt < attempts => true,
                Err(e) => return Err(ClientError::Transport(e)),
                Ok(resp) if is_transient(resp.status()) && attempt < attempts => true,
                Ok(resp) if resp.status().is_success() => return Ok(resp),
                Ok(resp) => return Err(refusal(resp).await),
            };
            if retry {
                tokio::time::sleep(wait).await;
                wait = wait.saturating_mul(2);
                attempt += 1;
            }
        }
    }

    /// Sends `call` and reads the answer as `T`.
    pub(crate) async fn json<T: DeserializeOwned>(&self, call: Call) -> Result<T, ClientError> {
        let url = call.url.clone();
        let resp = self.send(call).await?;
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
