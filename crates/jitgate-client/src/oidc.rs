//! Signing a human in through the server's OIDC issuer, with the `oauth2` crate: the device
//! authorization grant (RFC 8628), or the authorization code grant with PKCE (RFC 7636) and a
//! loopback redirect (RFC 8252 §7.3). Both return the issuer's ID token, which the server
//! accepts as a bearer token.

use std::time::Duration;

use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse, BasicTokenType,
};
use oauth2::{
    AuthUrl, AuthorizationCode, ClientId, CsrfToken, DeviceAuthorizationUrl, DeviceCodeErrorResponseType,
    ExtraTokenFields, PkceCodeChallenge, RedirectUrl, RequestTokenError, Scope, StandardDeviceAuthorizationResponse,
    StandardRevocableToken, StandardTokenResponse, TokenUrl,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::{Client, ClientError};

/// The scopes asked for.
const SCOPES: [&str; 3] = ["openid", "profile", "email"];

/// Why a sign-in did not give an ID token.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// The server names no OIDC issuer.
    #[error("this server has no OIDC sign-in configured; use --token")]
    NotConfigured,
    /// Asking the server for its sign-in settings failed.
    #[error(transparent)]
    Server(#[from] ClientError),
    /// The issuer's discovery document could not be fetched.
    #[error(transparent)]
    Discovery(reqwest::Error),
    /// The discovery document lacks an endpoint the flow needs.
    #[error("{issuer} names no {key}")]
    MissingEndpoint { issuer: String, key: &'static str },
    /// An endpoint is not a URL.
    #[error("the issuer's {key} is not a URL: {message}")]
    BadEndpoint { key: &'static str, message: String },
    /// The issuer (or the person) refused.
    #[error("sign-in refused: {0}")]
    Refused(String),
    /// The redirect came back with a state this sign-in did not issue.
    #[error("the sign-in answer carried the wrong state")]
    WrongState,
    /// The redirect came back without a code.
    #[error("the issuer redirected without a code")]
    NoCode,
    /// Nobody completed the sign-in in time.
    #[error("the sign-in was not completed in time")]
    TimedOut,
    /// The token answer holds no ID token.
    #[error("the issuer answered without an ID token")]
    NoIdToken,
    /// A call to the issuer failed otherwise.
    #[error("{0}")]
    Request(String),
    /// The loopback listener for the redirect failed.
    #[error("listening for the sign-in redirect")]
    Loopback(#[source] std::io::Error),
}

/// The parts of an issuer's discovery document the flows use.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Discovery {
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default)]
    pub device_authorization_endpoint: Option<String>,
    #[serde(default)]
    pub authorization_endpoint: Option<String>,
    #[serde(default)]
    pub token_endpoint: Option<String>,
}

/// The OIDC fields of a token answer: the ID token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdTokenFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
}

impl ExtraTokenFields for IdTokenFields {}

type TokenAnswer = StandardTokenResponse<IdTokenFields, BasicTokenType>;

type OAuthClient = oauth2::Client<
    BasicErrorResponse,
    TokenAnswer,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
>;

/// The issuer the server names, its client id for jitgate, and its discovery document.
#[derive(Debug, Clone)]
pub struct Provider {
    http: reqwest::Client,
    pub client_id: String,
    pub discovery: Discovery,
}

/// A client for the issuer: no redirects (a token endpoint that redirects is not followed),
/// 30 s per call.
fn issuer_http() -> Result<reqwest::Client, OidcError> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| OidcError::Request(e.to_string()))
}

impl Provider {
    /// Asks `server` which issuer and client id it accepts, and fetches the issuer's discovery
    /// document.
    pub async fn discover(server: &Client) -> Result<Self, OidcError> {
        let cfg = server.native().auth_config().await?;
        let (Some(issuer), Some(client_id)) = (cfg.oidc_issuer, cfg.oidc_client_id) else {
            return Err(OidcError::NotConfigured);
        };
        let http = issuer_http()?;
        let url = format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'));
        let discovery = async { http.get(url).send().await?.error_for_status()?.json::<Discovery>().await }
            .await
            .map_err(OidcError::Discovery)?;
        Ok(Provider { http, client_id, discovery })
    }

    /// A provider from its parts (tests, or an issuer known beforehand).
    pub fn new(client_id: impl Into<String>, discovery: Discovery) -> Result<Self, OidcError> {
        Ok(Provider { http: issuer_http()?, client_id: client_id.into(), discovery })
    }

    /// Whether the issuer offers the device flow.
    pub fn has_device_flow(&self) -> bool {
        self.discovery.device_authorization_endpoint.is_some()
    }

    fn endpoint(&self, key: &'static str) -> Result<&str, OidcError> {
        let d = &self.discovery;
        let found = match key {
            "device_authorization_endpoint" => &d.device_authorization_endpoint,
            "authorization_endpoint" => &d.authorization_endpoint,
            _ => &d.token_endpoint,
        };
        found.as_deref().ok_or_else(|| OidcError::MissingEndpoint {
            issuer: d.issuer.clone().unwrap_or_else(|| "the issuer".to_owned()),
            key,
        })
    }

    fn token_url(&self) -> Result<TokenUrl, OidcError> {
        TokenUrl::new(self.endpoint("token_endpoint")?.to_owned())
            .map_err(|e| OidcError::BadEndpoint { key: "token_endpoint", message: e.to_string() })
    }

    /// The device flow: `show(link, user_code)` tells the person where to go; returns the ID
    /// token once they have signed in there.
    pub async fn device_flow(&self, show: impl FnOnce(&str, &str)) -> Result<String, OidcError> {
        let device = DeviceAuthorizationUrl::new(self.endpoint("device_authorization_endpoint")?.to_owned())
            .map_err(|e| OidcError::BadEndpoint { key: "device_authorization_endpoint", message: e.to_string() })?;
        let client = OAuthClient::new(ClientId::new(self.client_id.clone()))
            .set_device_authorization_url(device)
            .set_token_uri(self.token_url()?);
        let details: StandardDeviceAuthorizationResponse = client
            .exchange_device_code()
            .add_scopes(SCOPES.map(|s| Scope::new(s.to_owned())))
            .request_async(&self.http)
            .await
            .map_err(|e| match e {
                RequestTokenError::ServerResponse(r) => OidcError::Refused(r.error().to_string()),
                other => OidcError::Request(other.to_string()),
            })?;
        let link = match details.verification_uri_complete() {
            Some(complete) => complete.secret().to_owned(),
            None => details.verification_uri().to_string(),
        };
        show(&link, details.user_code().secret());
        let answer = client
            .exchange_device_access_token(&details)
            .request_async(&self.http, tokio::time::sleep, None)
            .await
            .map_err(|e| match e {
                RequestTokenError::ServerResponse(r) => match r.error() {
                    DeviceCodeErrorResponseType::ExpiredToken => OidcError::TimedOut,
                    other => OidcError::Refused(other.to_string()),
                },
                other => OidcError::Request(other.to_string()),
            })?;
        id_token(answer)
    }

    /// The browser flow: `open(link)` sends the person to the issuer; the issuer redirects back
    /// to a listener on 127.0.0.1, which answers the browser with a short page. Returns the ID
    /// token, or gives up after `wait`.
    pub async fn browser_flow(&self, open: impl FnOnce(&str), wait: Duration) -> Result<String, OidcError> {
        let auth = AuthUrl::new(self.endpoint("authorization_endpoint")?.to_owned())
            .map_err(|e| OidcError::BadEndpoint { key: "authorization_endpoint", message: e.to_string() })?;
        let token = self.token_url()?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(OidcError::Loopback)?;
        let port = listener.local_addr().map_err(OidcError::Loopback)?.port();
        let redirect = RedirectUrl::new(format!("http://127.0.0.1:{port}/callback"))
            .map_err(|e| OidcError::BadEndpoint { key: "redirect_uri", message: e.to_string() })?;
        let client = OAuthClient::new(ClientId::new(self.client_id.clone()))
            .set_auth_uri(auth)
            .set_token_uri(token)
            .set_redirect_uri(redirect);
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (link, state) = client
            .authorize_url(CsrfToken::new_random)
            .add_scopes(SCOPES.map(|s| Scope::new(s.to_owned())))
            .set_pkce_challenge(challenge)
            .url();
        open(link.as_str());
        let code = redirected(&listener, state.secret(), wait).await?;
        let answer = client
            .exchange_code(AuthorizationCode::new(code))
            .set_pkce_verifier(verifier)
            .request_async(&self.http)
            .await
            .map_err(|e| match e {
                RequestTokenError::ServerResponse(r) => OidcError::Refused(r.error().to_string()),
                other => OidcError::Request(other.to_string()),
            })?;
        id_token(answer)
    }
}

fn id_token(answer: TokenAnswer) -> Result<String, OidcError> {
    answer.extra_fields().id_token.clone().ok_or(OidcError::NoIdToken)
}

/// Waits for the issuer's redirect to `/callback` on `listener`, answers the browser, and
/// returns the code when the state is `state`. Other paths get a 404; a peer that sends no
/// request line within 10 s (or more than 8 KiB without one) is dropped.
async fn redirected(listener: &tokio::net::TcpListener, state: &str, wait: Duration) -> Result<String, OidcError> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let Ok(accepted) = tokio::time::timeout_at(deadline, listener.accept()).await else {
            return Err(OidcError::TimedOut);
        };
        let (mut stream, _) = accepted.map_err(OidcError::Loopback)?;
        let mut reader = BufReader::new((&mut stream).take(8 * 1024));
        let mut line = String::new();
        if tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line)).await.is_err() {
            continue;
        }
        // GET /callback?code=…&state=… HTTP/1.1
        let target = line.split_whitespace().nth(1).unwrap_or("");
        let Ok(url) = reqwest::Url::parse(&format!("http://127.0.0.1{target}")) else { continue };
        if url.path() != "/callback" {
            drop(reader);
            let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
            continue;
        }
        let param = |k: &str| url.query_pairs().find(|(n, _)| n == k).map(|(_, v)| v.into_owned());
        let (page, outcome) = if param("state").as_deref() != Some(state) {
            ("The sign-in answer did not match this request; run jitgate login again.", Err(OidcError::WrongState))
        } else if let Some(e) = param("error") {
            let why = param("error_description").map(|d| format!("{e}: {d}")).unwrap_or(e);
            ("The sign-in was refused; see the terminal.", Err(OidcError::Refused(why)))
        } else if let Some(code) = param("code") {
            ("Signed in to jitgate. You can close this tab.", Ok(code))
        } else {
            ("The sign-in answer carried no code.", Err(OidcError::NoCode))
        };
        let html = format!("<!doctype html><title>jitgate</title><p>{page}</p>");
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            html.len()
        );
        drop(reader);
        let _ = stream.write_all(format!("{head}{html}").as_bytes()).await;
        return outcome;
    }
}
