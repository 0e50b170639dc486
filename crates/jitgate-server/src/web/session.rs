//! Portal sessions: an opaque random id in a cookie, only its SHA-256 kept here, with the
//! CSRF token of the session and what proves the principal on every request.
//!
//! A session never outlives what created it: it expires no later than its credential, and every
//! request re-checks the credential (an API token by its hash through the same
//! `Store::authenticate` as the API; an ID token's principal by name), so revoking the token or
//! deleting the principal ends the session at its next request. Sessions live in memory: a
//! restart signs everybody out.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

/// The session cookie. `__Host-` binds it to this origin: Secure, `Path=/`, no `Domain`.
pub const COOKIE: &str = "__Host-jitgate_session";
/// The cookie of the sign-in form (its CSRF token before any session exists).
pub const SIGNIN_COOKIE: &str = "__Host-jitgate_signin";
/// The longest a session lasts, whatever its credential allows.
pub const MAX_AGE: time::Duration = time::Duration::hours(12);
/// The most sessions kept at once; the oldest go first.
pub const MAX_SESSIONS: usize = 10_000;

/// What proves the principal of a session on each request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proof {
    /// An API token, by the hash the store keeps of it.
    Token { hash: String },
    /// An OIDC ID token (valid until the session's expiry); the principal must still exist.
    IdToken,
}

/// One signed-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    pub principal: String,
    pub proof: Proof,
    pub csrf: String,
    pub created: OffsetDateTime,
    pub expires: OffsetDateTime,
}

/// The sessions of this process, by the SHA-256 of their id; and the SSO sign-ins under way,
/// by the SHA-256 of their `state`.
#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<[u8; 32], Session>>,
    sso: Mutex<HashMap<[u8; 32], SsoStart>>,
}

/// The cookie that binds an SSO sign-in to the browser that started it (SameSite=Lax: it must
/// come back on the identity provider's redirect).
pub const SSO_COOKIE: &str = "__Host-jitgate_sso";
/// How long an SSO sign-in may take.
pub const SSO_WINDOW: time::Duration = time::Duration::minutes(10);

/// An SSO sign-in between the redirect to the identity provider and its return.
#[derive(Debug, Clone)]
pub struct SsoStart {
    pub nonce: String,
    pub verifier: String,
    pub redirect_uri: String,
    pub token_endpoint: String,
    pub next: String,
    pub started: OffsetDateTime,
}

/// A random 256-bit value, URL-safe base64.
pub fn random_id() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn digest(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

/// Compares two secrets in time independent of where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Sessions {
    /// Starts a session; returns its id (for the cookie only: it is not kept).
    pub fn create(&self, session: Session) -> String {
        let id = random_id();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_SESSIONS {
            let now = session.created;
            map.retain(|_, s| s.expires > now);
            if map.len() >= MAX_SESSIONS {
                if let Some(oldest) = map.iter().min_by_key(|(_, s)| s.created).map(|(k, _)| *k) {
                    map.remove(&oldest);
                }
            }
        }
        map.insert(digest(&id), session);
        id
    }

    /// The live session with this id; an expired one is removed.
    pub fn get(&self, id: &str, now: OffsetDateTime) -> Option<Session> {
        let key = digest(id);
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(&key) {
            Some(s) if s.expires > now => Some(s.clone()),
            Some(_) => {
                map.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Ends the session with this id, returning it.
    pub fn remove(&self, id: &str) -> Option<Session> {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).remove(&digest(id))
    }

    /// Remembers an SSO sign-in under `state`.
    pub fn start_sso(&self, state: &str, start: SsoStart) {
        let mut map = self.sso.lock().unwrap_or_else(|e| e.into_inner());
        let now = start.started;
        map.retain(|_, s| s.started + SSO_WINDOW > now);
        if map.len() < MAX_SESSIONS {
            map.insert(digest(state), start);
        }
    }

    /// Takes the SSO sign-in of `state` (once), if it is still in its window.
    pub fn take_sso(&self, state: &str, now: OffsetDateTime) -> Option<SsoStart> {
        let start = self.sso.lock().unwrap_or_else(|e| e.into_inner()).remove(&digest(state))?;
        (start.started + SSO_WINDOW > now).then_some(start)
    }

    /// How many sessions are kept (expired ones included until they are next looked at).
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value: HttpOnly, Secure, SameSite=Strict, `Path=/`, living `max_age` seconds
/// (0 deletes it).
pub fn set_cookie(name: &str, value: &str, max_age: i64) -> String {
    format!("{name}={value}; Max-Age={}; Path=/; Secure; HttpOnly; SameSite=Strict", max_age.max(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(now: OffsetDateTime, life: time::Duration) -> Session {
        Session {
            principal: "alice".into(),
            proof: Proof::IdToken,
            csrf: random_id(),
            created: now,
            expires: now + life,
        }
    }

    #[test]
    fn sessions_are_found_by_id_until_they_expire() {
        let now = OffsetDateTime::from_unix_timestamp(1_900_000_000).expect("time");
        let s = Sessions::default();
        let id = s.create(session(now, time::Duration::minutes(5)));
        assert_eq!(s.get(&id, now).map(|x| x.principal), Some("alice".into()));
        assert!(s.get("other", now).is_none());
        assert!(s.get(&id, now + time::Duration::minutes(5)).is_none(), "expired");
        assert!(s.is_empty(), "an expired session is dropped when seen");
        let id = s.create(session(now, time::Duration::minutes(5)));
        assert!(s.remove(&id).is_some());
        assert!(s.get(&id, now).is_none());
    }

    #[test]
    fn cookies_are_parsed_and_set_strictly() {
        let mut h = axum::http::HeaderMap::new();
        h.insert(axum::http::header::COOKIE, "a=1; __Host-jitgate_session=xyz".parse().expect("header"));
        assert_eq!(cookie(&h, COOKIE), Some("xyz"));
        assert_eq!(cookie(&h, "b"), None);
        let c = set_cookie(COOKIE, "v", 60);
        for part in ["Max-Age=60", "Path=/", "Secure", "HttpOnly", "SameSite=Strict"] {
            assert!(c.contains(part), "{c}");
        }
        assert!(same_secret("abc", "abc") && !same_secret("abc", "abd"));
    }
}
