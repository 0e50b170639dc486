//! Where the client's AWS credentials come from, in the order the AWS tools look:
//! 1. the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`);
//! 2. the shared files (`AWS_SHARED_CREDENTIALS_FILE`, default `~/.aws/credentials`, then
//!    `AWS_CONFIG_FILE`, default `~/.aws/config` with `[profile NAME]` sections) for the profile
//!    given, else `AWS_PROFILE`, else `default`;
//! 3. the instance role through IMDSv2 ([`crate::imds`]).
//!
//! What is found is kept until five minutes before it expires. A secret is never logged:
//! [`Credentials`]' `Debug` shows the key id alone.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Credentials are renewed this long before they expire.
pub const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(5 * 60);
/// The largest shared credentials or config file read.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// An access key, its secret, and for temporary credentials the session token and expiry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
    /// When temporary credentials stop working.
    pub expires: Option<SystemTime>,
}

impl Credentials {
    /// Long-term credentials.
    pub fn new(access_key_id: impl Into<String>, secret_access_key: impl Into<String>) -> Self {
        Credentials {
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
            session_token: None,
            expires: None,
        }
    }

    /// Temporary credentials: with a session token, until `expires` when known.
    pub fn temporary(mut self, session_token: impl Into<String>, expires: Option<SystemTime>) -> Self {
        self.session_token = Some(session_token.into());
        self.expires = expires;
        self
    }

    pub(crate) fn secret_access_key(&self) -> &str {
        &self.secret_access_key
    }

    pub(crate) fn session_token(&self) -> Option<&str> {
        self.session_token.as_deref()
    }

    /// Whether these can still be used at `now` without renewing them first.
    pub fn fresh_at(&self, now: SystemTime) -> bool {
        self.expires.is_none_or(|e| now + REFRESH_BEFORE_EXPIRY < e)
    }

    /// Whether these still work at `now` (renewal failed: they are used until then).
    pub fn usable_at(&self, now: SystemTime) -> bool {
        self.expires.is_none_or(|e| now < e)
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("session_token", &self.session_token.as_ref().map(|_| "<redacted>"))
            .field("expires", &self.expires)
            .finish()
    }
}

/// How the chain reads an environment variable (the process's, or a test's map).
pub type Env = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// The process's environment.
pub fn process_env() -> Env {
    Arc::new(|name| std::env::var(name).ok())
}

fn var(env: &Env, name: &str) -> Option<String> {
    env(name).filter(|v| !v.trim().is_empty())
}

/// Credentials from the environment; `Err` says why there are none.
pub fn from_env(env: &Env) -> Result<Credentials, String> {
    match (var(env, "AWS_ACCESS_KEY_ID"), var(env, "AWS_SECRET_ACCESS_KEY")) {
        (Some(id), Some(secret)) => {
            let c = Credentials::new(id, secret);
            Ok(match var(env, "AWS_SESSION_TOKEN") {
                Some(token) => c.temporary(token, None),
                None => c,
            })
        }
        (None, None) => Err("environment: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set".into()),
        (Some(_), None) => Err("environment: AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not".into()),
        (None, Some(_)) => Err("environment: AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not".into()),
    }
}

/// The profile the shared files are read for: the one given, else `AWS_PROFILE`, else
/// `default`; and whether it was named (a named profile that is missing stops the chain).
pub fn profile_name(env: &Env, given: Option<&str>) -> (String, bool) {
    match given.map(str::to_owned).or_else(|| var(env, "AWS_PROFILE")) {
        Some(p) => (p.trim().to_owned(), true),
        None => ("default".into(), false),
    }
}

/// The sections of an INI file as the AWS tools write them: `[name]`, `key = value`, comments
/// starting with `#` or `;`. Indented lines (a nested setting's sub-keys) are skipped. Keys
/// are lowercased; names and values trimmed.
pub fn ini_sections(text: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut sections: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            sections.push((name.trim().to_owned(), Vec::new()));
            continue;
        }
        if raw.starts_with([' ', '\t']) {
            continue;
        }
        if let (Some((key, value)), Some((_, keys))) = (line.split_once('='), sections.last_mut()) {
            keys.push((key.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    sections
}

/// What one shared file says of a profile.
enum FromFile {
    Found(Credentials),
    /// The profile is there without keys; why.
    NoKeys(String),
    Missing,
}

fn profile_in(text: &str, section: &[&str], profile: &str, path: &Path) -> FromFile {
    let sections = ini_sections(text);
    let Some((_, keys)) = sections.iter().rev().find(|(name, _)| section.contains(&name.as_str())) else {
        return FromFile::Missing;
    };
    let get = |k: &str| keys.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone()).filter(|v| !v.is_empty());
    match (get("aws_access_key_id"), get("aws_secret_access_key")) {
        (Some(id), Some(secret)) => {
            let c = Credentials::new(id, secret);
            FromFile::Found(match get("aws_session_token") {
                Some(token) => c.temporary(token, None),
                None => c,
            })
        }
        _ => {
            let other = ["role_arn", "sso_session", "sso_start_url", "credential_process", "web_identity_token_file"]
                .into_iter()
                .find(|k| get(k).is_some());
            FromFile::NoKeys(match other {
                Some(k) => format!(
                    "{}: profile {profile:?} uses {k}, which jitgate does not read; give it \
                     aws_access_key_id and aws_secret_access_key, or use the instance role",
                    path.display()
                ),
                None => format!(
                    "{}: profile {profile:?} has no aws_access_key_id and aws_secret_access_key",
                    path.display()
                ),
            })
        }
    }
}

fn read_bounded(path: &Path) -> Result<Option<String>, String> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1).read_to_string(&mut text).map_err(|e| format!("{}: {e}", path.display()))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("{}: larger than {MAX_FILE_BYTES} bytes", path.display()));
    }
    Ok(Some(text))
}

fn shared_path(env: &Env, var_name: &str, default: &str) -> Option<PathBuf> {
    var(env, var_name).map(PathBuf::from).or_else(|| var(env, "HOME").map(|h| Path::new(&h).join(".aws").join(default)))
}

/// Credentials from the shared files for `profile`. `Err((reason, stop))`: why there are none,
/// and whether the chain must stop there: a file that cannot be read, or a profile that was
/// named (the instance role would be another identity than the one asked for).
pub fn from_files(env: &Env, profile: &str, named: bool) -> Result<Credentials, (String, bool)> {
    let mut why = Vec::new();
    let config_section = format!("profile {profile}");
    let files = [
        (shared_path(env, "AWS_SHARED_CREDENTIALS_FILE", "credentials"), vec![profile]),
        (
            shared_path(env, "AWS_CONFIG_FILE", "config"),
            if profile == "default" { vec!["default", "profile default"] } else { vec![config_section.as_str()] },
        ),
    ];
    for (path, sections) in files {
        let Some(path) = path else {
            why.push("shared files: HOME is not set".to_owned());
            continue;
        };
        match read_bounded(&path) {
            Err(e) => return Err((e, true)),
            Ok(None) => why.push(format!("{}: no such file", path.display())),
            Ok(Some(text)) => match profile_in(&text, &sections, profile, &path) {
                FromFile::Found(c) => return Ok(c),
                FromFile::NoKeys(w) => why.push(w),
                FromFile::Missing => why.push(format!("{}: no profile {profile:?}", path.display())),
            },
        }
    }
    why.dedup();
    Err((why.join("; "), named))
}

#[cfg(test)]
#[path = "creds_tests.rs"]
mod tests;
