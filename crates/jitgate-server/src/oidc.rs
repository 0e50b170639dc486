//! OIDC ID-token sign-in for humans: the token's signature is checked against the issuer's
//! JWKS (from its discovery document, or a file), then issuer, audience, expiry and not-before
//! (with a small leeway). The identity is (issuer, `sub`); one claim gives a display name, which
//! is only shown (see `jitgate_core::identity`).

use std::path::PathBuf;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{decode, decode_header, DecodingKey, Validation};

use jitgate_api_types::idtoken::{read_claims, ClaimError};
use jitgate_core::identity;
use jitgate_store::OidcIdentity;

/// How OIDC sign-in is configured.
#[derive(Debug, Clone)]
pub struct OidcConfig {
    pub issuer: String,
    pub audience: String,
    /// Use this JWKS file instead of the issuer's discovery document.
    pub jwks_file: Option<PathBuf>,
    /// The claim shown as the principal's display name (default `preferred_username`, falling
    /// back to `email`). It never selects the principal: (issuer, `sub`) does.
    pub claim: Option<String>,
    /// Clock leeway for `exp` and `nbf`.
    pub leeway: Duration,
}

/// Why OIDC sign-in could not be set up, or why an ID token was refused. The text is what the
/// caller is told (a 401's message) or what the server prints at start.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// The issuer is not an HTTPS URL (plain HTTP is only allowed on loopback).
    #[error("--oidc-issuer '{0}' must be an https:// URL (plain http only on loopback)")]
    InsecureIssuer(String),
    #[error("--oidc-audience is required with --oidc-issuer")]
    NoAudience,
    /// The HTTP client for the issuer could not be built.
    #[error("{0}")]
    Client(#[source] reqwest::Error),
    /// The JWKS file could not be read.
    #[error("reading {}: {source}", .path.display())]
    ReadJwks {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The JWKS file or the issuer's `jwks_uri` did not hold a JWKS.
    #[error("{what} is not a JWKS: {source}")]
    NotJwks {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The discovery document or the JWKS could not be fetched or read.
    #[error("{what} {url}: {source}")]
    Fetch {
        what: &'static str,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The discovery document names no JWKS.
    #[error("{0} has no jwks_uri")]
    NoJwksUri(String),
    #[error("the token's signing key is not in the issuer's JWKS")]
    UnknownKey,
    #[error("unusable key in the JWKS: {0}")]
    UnusableKey(#[source] jsonwebtoken::errors::Error),
    #[error("not a JWT: {0}")]
    NotJwt(#[source] jsonwebtoken::errors::Error),
    /// The signature, issuer, audience, expiry or not-before check failed.
    #[error("ID token refused: {0}")]
    Refused(#[source] jsonwebtoken::errors::Error),
    #[error("the ID token has no 'sub' claim")]
    NoSubject,
    /// The subject is not one jitgate accepts (`jitgate_core::identity::validate_subject`).
    #[error("{0}")]
    BadSubject(String),
    #[error("the ID token's 'exp' is not a time")]
    BadExpiry,
    /// The discovery document lacks an endpoint of the authorization-code flow, or names one
    /// that is not HTTPS.
    #[error("{0}")]
    BadEndpoint(String),
    /// The token endpoint answered without an ID token.
    #[error("the token endpoint gave no ID token: {0}")]
    NoIdToken(String),
}

/// The shortest time between two JWKS refreshes caused by unknown key ids.
const REFRESH_EVERY: Duration = Duration::from_secs(30);

pub struct Oidc {
    config: OidcConfig,
    client: reqwest::Client,
    keys: RwLock<Option<(JwkSet, Instant)>>,
    /// Hashes of ID tokens already seen, so each sign-in is audited once, not on every request.
    seen: std::sync::Mutex<std::collections::HashSet<[u8; 32]>>,
}

impl Oidc {
    /// Checks the configuration: the issuer must be HTTPS (plain HTTP only on loopback).
    pub fn new(config: OidcConfig) -> Result<Self, OidcError> {
        let issuer = config.issuer.trim_end_matches('/');
        let loopback = ["http://127.0.0.1", "http://localhost", "http://[::1]"].iter().any(|p| issuer.starts_with(p));
        if !issuer.starts_with("https://") && !loopback {
            return Err(OidcError::InsecureIssuer(issuer.to_owned()));
        }
        if config.audience.is_empty() {
            return Err(OidcError::NoAudience);
        }
        let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().map_err(OidcError::Client)?;
        Ok(Oidc { config, client, keys: RwLock::new(None), seen: Default::default() })
    }

    async fn fetch_keys(&self) -> Result<JwkSet, OidcError> {
        if let Some(file) = &self.config.jwks_file {
            let data = std::fs::read(file).map_err(|source| OidcError::ReadJwks { path: file.clone(), source })?;
            return serde_json::from_slice(&data)
                .map_err(|e| OidcError::NotJwks { what: file.display().to_string(), source: e.into() });
        }
        let discovery = format!("{}/.well-known/openid-configuration", self.config.issuer.trim_end_matches('/'));
        let fetch = |what: &'static str, url: &str| {
            let url = url.to_owned();
            move |source| OidcError::Fetch { what, url, source }
        };
        let doc: serde_json::Value = self
            .client
            .get(&discovery)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(fetch("fetching", &discovery))?
            .json()
            .await
            .map_err(fetch("reading", &discovery))?;
        let uri = doc["jwks_uri"].as_str().ok_or_else(|| OidcError::NoJwksUri(discovery.clone()))?;
        self.client
            .get(uri)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(fetch("fetching", uri))?
            .json()
            .await
            .map_err(|e| OidcError::NotJwks { what: uri.to_owned(), source: e.into() })
    }

    /// The key for `kid`, refreshing the JWKS (rate-limited) when it is unknown.
    async fn key(&self, kid: Option<&str>) -> Result<DecodingKey, OidcError> {
        let find = |set: &JwkSet| match kid {
            Some(k) => set.find(k).cloned(),
            None if set.keys.len() == 1 => set.keys.first().cloned(),
            None => None,
        };
        let cached = self.keys.read().ok().and_then(|g| g.as_ref().map(|(s, at)| (find(s), *at)));
        let jwk = match cached {
            Some((Some(jwk), _)) => jwk,
            Some((None, at)) if at.elapsed() < REFRESH_EVERY => return Err(OidcError::UnknownKey),
            _ => {
                let set = self.fetch_keys().await?;
                let found = find(&set);
                if let Ok(mut g) = self.keys.write() {
                    *g = Some((set, Instant::now()));
                }
                found.ok_or(OidcError::UnknownKey)?
            }
        };
        DecodingKey::from_jwk(&jwk).map_err(OidcError::UnusableKey)
    }

    /// Validates an ID token; returns who it signs in and until when.
    pub async fn validate(&self, token: &str) -> Result<IdToken, OidcError> {
        let header = decode_header(token).map_err(OidcError::NotJwt)?;
        let key = self.key(header.kid.as_deref()).await?;
        let mut v = Validation::new(header.alg);
        v.set_issuer(&[self.config.issuer.as_str(), self.config.issuer.trim_end_matches('/')]);
        v.set_audience(&[self.config.audience.as_str()]);
        v.leeway = self.config.leeway.as_secs();
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = decode::<serde_json::Value>(token, &key, &v).map_err(OidcError::Refused)?;
        let claims = read_claims(&data.claims, self.config.claim.as_deref()).map_err(|e| match e {
            ClaimError::NoSubject => OidcError::NoSubject,
            ClaimError::BadSubject(m) => OidcError::BadSubject(m),
            ClaimError::BadExpiry => OidcError::BadExpiry,
        })?;
        Ok(IdToken {
            identity: OidcIdentity {
                issuer: identity::issuer_key(&self.config.issuer).to_owned(),
                subject: claims.subject,
            },
            display: claims.display,
            expires: claims.expires,
            nonce: claims.nonce,
        })
    }
}

/// A valid ID token: who it signs in, what to show for them, and when it stops being valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdToken {
    pub identity: OidcIdentity,
    /// The cleaned display claim; `Ok(None)` when the token has none, `Err` with the reason when
    /// it was refused (the sign-in still counts: the identity is the subject, not this name).
    pub display: Result<Option<String>, String>,
    /// The token's `exp`: nothing made with it may outlive this.
    pub expires: time::OffsetDateTime,
    /// The `nonce` claim (the portal's sign-in checks it against the one it sent).
    pub nonce: Option<String>,
}

fn is_loopback_http(url: &str) -> bool {
    ["http://127.0.0.1", "http://localhost", "http://[::1]"].iter().any(|p| url.starts_with(p))
}

/// Whether a bearer token looks like a JWT (three base64url parts).
pub fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3 && !token.starts_with(crate::auth::TOKEN_PREFIX)
}

impl Oidc {
    /// True the first time this (valid) ID token is used: that use is the sign-in.
    pub fn first_use(&self, token: &str) -> bool {
        use sha2::Digest;
        let h: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        self.seen
            .lock()
            .map(|mut s| {
                if s.len() > 100_000 {
                    s.clear();
                }
                s.insert(h)
            })
            .unwrap_or(false)
    }

    /// The issuer's authorization and token endpoints, from its discovery document.
    pub async fn endpoints(&self) -> Result<(String, String), OidcError> {
        let discovery = format!("{}/.well-known/openid-configuration", self.config.issuer.trim_end_matches('/'));
        let fetch = |what: &'static str| {
            let url = discovery.clone();
            move |source| OidcError::Fetch { what, url, source }
        };
        let doc: serde_json::Value = self
            .client
            .get(&discovery)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(fetch("fetching"))?
            .json()
            .await
            .map_err(fetch("reading"))?;
        let endpoint = |name: &str| {
            let url = doc[name].as_str().unwrap_or("");
            if url.starts_with("https://") || is_loopback_http(url) {
                Ok(url.to_owned())
            } else {
                Err(OidcError::BadEndpoint(format!("{discovery}: '{name}' is missing or not an https:// URL")))
            }
        };
        Ok((endpoint("authorization_endpoint")?, endpoint("token_endpoint")?))
    }

    /// Redeems an authorization code (with its PKCE verifier) at the token endpoint; returns the
    /// ID token, still to be validated.
    pub async fn redeem(
        &self,
        token_endpoint: &str,
        code: &str,
        redirect_uri: &str,
        verifier: &str,
    ) -> Result<String, OidcError> {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs([
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", redirect_uri),
                ("client_id", self.config.audience.as_str()),
                ("code_verifier", verifier),
            ])
            .finish();
        let fetch = |what: &'static str| {
            let url = token_endpoint.to_owned();
            move |source| OidcError::Fetch { what, url, source }
        };
        let answer: serde_json::Value = self
            .client
            .post(token_endpoint)
            .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(fetch("redeeming the code at"))?
            .json()
            .await
            .map_err(fetch("reading"))?;
        match answer["id_token"].as_str() {
            Some(t) => Ok(t.to_owned()),
            None => Err(OidcError::NoIdToken(answer["error"].as_str().unwrap_or("no id_token").to_owned())),
        }
    }

    pub fn issuer(&self) -> &str {
        &self.config.issuer
    }

    /// The audience, which is the OIDC client id CLIs sign in with.
    pub fn audience(&self) -> &str {
        &self.config.audience
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(issuer: &str, audience: &str, jwks_file: Option<PathBuf>) -> OidcConfig {
        OidcConfig {
            issuer: issuer.into(),
            audience: audience.into(),
            jwks_file,
            claim: None,
            leeway: Duration::from_secs(60),
        }
    }

    #[test]
    fn the_configuration_is_checked() {
        let plain = Oidc::new(config("http://idp.example", "jitgate", None)).err();
        assert!(matches!(&plain, Some(OidcError::InsecureIssuer(i)) if i == "http://idp.example"), "{plain:?}");
        assert!(matches!(Oidc::new(config("https://idp.example", "", None)), Err(OidcError::NoAudience)));
        assert!(Oidc::new(config("http://127.0.0.1:9999/", "jitgate", None)).is_ok(), "loopback may be plain");
    }

    #[tokio::test]
    async fn refusals_say_which_step_failed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("jwks.json");
        let oidc = Oidc::new(config("https://idp.example", "jitgate", Some(missing.clone()))).expect("config");
        assert!(matches!(oidc.validate("not-a-token").await, Err(OidcError::NotJwt(_))));
        // A well-formed header ({"alg":"RS256"}): the keys are looked for, and the file is missing.
        let err = oidc.validate("eyJhbGciOiJSUzI1NiJ9.e30.c2ln").await.err();
        assert!(matches!(&err, Some(OidcError::ReadJwks { path, .. }) if *path == missing), "{err:?}");
        std::fs::write(&missing, b"[]").expect("write");
        let err = oidc.validate("eyJhbGciOiJSUzI1NiJ9.e30.c2ln").await.err();
        assert!(matches!(&err, Some(OidcError::NotJwks { .. })), "{err:?}");
        std::fs::write(&missing, br#"{"keys":[]}"#).expect("write");
        let err = oidc.validate("eyJhbGciOiJSUzI1NiJ9.e30.c2ln").await.err();
        assert!(matches!(err, Some(OidcError::UnknownKey)), "{err:?}");
    }
}
