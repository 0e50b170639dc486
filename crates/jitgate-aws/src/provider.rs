//! The credential chain with its cache, and the instance role through IMDSv2: a session token
//! (`PUT /latest/api/token`), the role's name (`/latest/meta-data/iam/security-credentials/`),
//! then its credentials as JSON, with short timeouts so a machine outside EC2 learns quickly.

use std::time::{Duration, SystemTime};

use serde::Deserialize;
use tokio::sync::Mutex;
use url::Url;

use crate::creds::{self, Credentials, Env};
use crate::Ec2Error;

/// The instance metadata service, unless `AWS_EC2_METADATA_SERVICE_ENDPOINT` says otherwise.
pub const IMDS_ENDPOINT: &str = "http://169.254.169.254";
/// The lifetime asked for an IMDSv2 session token (seconds).
const TOKEN_TTL: &str = "21600";
/// The most read of a metadata answer.
const MAX_IMDS_BYTES: usize = 64 << 10;

/// Where credentials come from: fixed ones, or the chain of [`crate::creds`], cached.
pub struct Provider {
    fixed: Option<Credentials>,
    profile: Option<String>,
    env: Env,
    imds: reqwest::Client,
    cache: Mutex<Option<Credentials>>,
}

impl Provider {
    /// The chain over `env`, for `profile` when given.
    pub fn chain(profile: Option<String>, env: Env) -> Result<Self, Ec2Error> {
        let imds = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(2))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Ec2Error::Transport(format!("building the metadata client: {e}")))?;
        Ok(Provider { fixed: None, profile, env, imds, cache: Mutex::new(None) })
    }

    /// Always these credentials.
    pub fn fixed(credentials: Credentials) -> Result<Self, Ec2Error> {
        let mut p = Provider::chain(None, creds::process_env())?;
        p.fixed = Some(credentials);
        Ok(p)
    }

    /// Credentials to sign a request with now.
    pub async fn get(&self) -> Result<Credentials, Ec2Error> {
        if let Some(c) = &self.fixed {
            return Ok(c.clone());
        }
        let mut cache = self.cache.lock().await;
        let now = SystemTime::now();
        if let Some(c) = cache.as_ref().filter(|c| c.fresh_at(now)) {
            return Ok(c.clone());
        }
        match self.resolve().await {
            Ok(c) => {
                *cache = Some(c.clone());
                Ok(c)
            }
            // Renewal failed, but what we have still works for a while: use it, say so.
            Err(e) => match cache.as_ref().filter(|c| c.usable_at(now)) {
                Some(old) => {
                    tracing::warn!(error = %e, "renewing AWS credentials failed; using the current ones until they expire");
                    Ok(old.clone())
                }
                None => Err(e),
            },
        }
    }

    /// Forgets cached credentials (after EC2 refused them as expired).
    pub async fn forget(&self) {
        *self.cache.lock().await = None;
    }

    async fn resolve(&self) -> Result<Credentials, Ec2Error> {
        let mut tried = Vec::new();
        match creds::from_env(&self.env) {
            Ok(c) => {
                tracing::debug!(source = "environment", "AWS credentials found");
                return Ok(c);
            }
            Err(why) => tried.push(why),
        }
        let (profile, named) = creds::profile_name(&self.env, self.profile.as_deref());
        match creds::from_files(&self.env, &profile, named) {
            Ok(c) => {
                tracing::debug!(source = "shared files", profile, "AWS credentials found");
                return Ok(c);
            }
            Err((why, stop)) => {
                tried.push(why);
                if stop {
                    return Err(none_found(&tried));
                }
            }
        }
        if self.env.as_ref()("AWS_EC2_METADATA_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            tried.push("instance role: AWS_EC2_METADATA_DISABLED=true".into());
            return Err(none_found(&tried));
        }
        let endpoint = self.env.as_ref()("AWS_EC2_METADATA_SERVICE_ENDPOINT").unwrap_or_else(|| IMDS_ENDPOINT.into());
        match Url::parse(&endpoint) {
            Err(e) => tried.push(format!("instance role: AWS_EC2_METADATA_SERVICE_ENDPOINT {endpoint:?}: {e}")),
            Ok(url) => match instance_role(&self.imds, &url).await {
                Ok(c) => {
                    tracing::debug!(source = "instance role", "AWS credentials found");
                    return Ok(c);
                }
                Err(why) => tried.push(format!("instance role ({url}): {why}")),
            },
        }
        Err(none_found(&tried))
    }
}

fn none_found(tried: &[String]) -> Ec2Error {
    Ec2Error::Credentials(format!(
        "none found; tried {}. Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile in \
         ~/.aws/credentials, or run on an EC2 instance with a role",
        tried.join("; ")
    ))
}

async fn text(resp: reqwest::Response, what: &str) -> Result<String, String> {
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("{what}: HTTP {status}"));
    }
    let mut resp = resp;
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| format!("{what}: {e}"))? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_IMDS_BYTES {
            return Err(format!("{what}: the answer is larger than {MAX_IMDS_BYTES} bytes"));
        }
    }
    String::from_utf8(body).map_err(|_| format!("{what}: the answer is not UTF-8"))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RoleCredentials {
    code: Option<String>,
    access_key_id: String,
    secret_access_key: String,
    token: String,
    expiration: String,
}

/// The instance role's credentials from IMDSv2 at `endpoint`.
pub async fn instance_role(http: &reqwest::Client, endpoint: &Url) -> Result<Credentials, String> {
    let at = |path: &str| endpoint.join(path).map_err(|e| format!("{path}: {e}"));
    let token = http
        .put(at("/latest/api/token")?)
        .header("x-aws-ec2-metadata-token-ttl-seconds", TOKEN_TTL)
        .send()
        .await
        .map_err(|e| format!("no metadata service: {e}"))?;
    let token = text(token, "session token").await?;
    let token = token.trim();
    let list = http
        .get(at("/latest/meta-data/iam/security-credentials/")?)
        .header("x-aws-ec2-metadata-token", token)
        .send()
        .await
        .map_err(|e| format!("role name: {e}"))?;
    if list.status() == reqwest::StatusCode::NOT_FOUND {
        return Err("the instance has no role attached".into());
    }
    let roles = text(list, "role name").await?;
    let Some(role) = roles.lines().map(str::trim).find(|r| !r.is_empty()) else {
        return Err("the instance has no role attached".into());
    };
    if role.len() > 128 || !role.chars().all(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c)) {
        return Err(format!("unexpected role name {role:?}"));
    }
    let answer = http
        .get(at(&format!("/latest/meta-data/iam/security-credentials/{role}"))?)
        .header("x-aws-ec2-metadata-token", token)
        .send()
        .await
        .map_err(|e| format!("role {role}: {e}"))?;
    let json = text(answer, &format!("role {role}")).await?;
    role_credentials(&json).map_err(|e| format!("role {role}: {e}"))
}

/// The credentials in the role's JSON document (`Code`, `AccessKeyId`, `Expiration` …).
pub fn role_credentials(json: &str) -> Result<Credentials, String> {
    let doc: RoleCredentials = serde_json::from_str(json).map_err(|e| format!("unreadable credentials: {e}"))?;
    if let Some(code) = doc.code.as_deref().filter(|c| *c != "Success") {
        return Err(format!("the metadata service answered Code {code:?}"));
    }
    let expires = time::OffsetDateTime::parse(&doc.expiration, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("Expiration {:?}: {e}", doc.expiration))?;
    Ok(Credentials::new(doc.access_key_id, doc.secret_access_key).temporary(doc.token, Some(expires.into())))
}

#[cfg(test)]
#[path = "provider_tests.rs"]
mod tests;
