//! Portal sessions: an opaque random id in a cookie, only its SHA-256 kept here, with the
//! CSRF token of the session and what proves the principal on every request.
//!
//! A session never outlives what created it: it expires no later than its credential, and every
//! request re-checks the credential (an API token by its hash through the same
//! `Store::authenticate` as the API; an ID token's principal by name), so revoking the token or
//! deleting the principal ends the session at its next request. Sessions (and SSO sign-ins in
//! flight) live in the store (`SessionStore`), found by the hash of their id: any replica on a
//! shared database serves a signed-in browser, and a restart signs nobody out.

use std::sync::Arc;

use jitgate_store::{Store, StoreResult};
use serde::{Deserialize, Serialize};

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

/// Where sessions and SSO sign-ins in flight are kept: the store.
pub struct Sessions {
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sessions")
    }
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

/// What the store keeps an entry under: the SHA-256 of the browser's secret, in hex.
fn key(id: &str) -> String {
    hex::encode(Sha256::digest(id.as_bytes()))
}

/// Compares two secrets in time independent of where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Kinds of entries in the store.
const SESSION: &str = "session";
const SSO: &str = "sso";

/// A session as stored (times in Unix nanoseconds; the token's hash for a token's session).
#[derive(Serialize, Deserialize)]
struct StoredSession {
    principal: String,
    token_hash: Option<String>,
    csrf: String,
    created: i128,
    expires: i128,
}

/// An SSO sign-in as stored.
#[derive(Serialize, Deserialize)]
struct StoredSso {
    nonce: String,
    verifier: String,
    redirect_uri: String,
    token_endpoint: String,
    next: String,
    started: i128,
}

fn at(nanos: i128) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()
}

impl Sessions {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Sessions { store }
    }

    /// Keeps `session`; returns its new random id (for the cookie). Past [`MAX_SESSIONS`], the
    /// oldest sessions end.
    pub async fn create(&self, session: Session) -> StoreResult<String> {
        let id = random_id();
        let stored = StoredSession {
            principal: session.principal,
            token_hash: match session.proof {
                Proof::Token { hash } => Some(hash),
                Proof::IdToken => None,
            },
            csrf: session.csrf,
            created: session.created.unix_timestamp_nanos(),
            expires: session.expires.unix_timestamp_nanos(),
        };
        let value = serde_json::to_string(&stored).unwrap_or_default();
        self.store.put_ephemeral(SESSION, &key(&id), &value, session.created, session.expires, MAX_SESSIONS).await?;
        Ok(id)
    }

    /// The session of `id`, unless it has expired by `now` (or was never made).
    pub async fn get(&self, id: &str, now: OffsetDateTime) -> StoreResult<Option<Session>> {
        let Some(value) = self.store.get_ephemeral(SESSION, &key(id), now).await? else { return Ok(None) };
        let Ok(s) = serde_json::from_str::<StoredSession>(&value) else { return Ok(None) };
        let (Some(created), Some(expires)) = (at(s.created), at(s.expires)) else { return Ok(None) };
        let proof = match s.token_hash {
            Some(hash) => Proof::Token { hash },
            None => Proof::IdToken,
        };
        Ok(Some(Session { principal: s.principal, proof, csrf: s.csrf, created, expires }))
    }

    /// Ends the session of `id`.
    pub async fn remove(&self, id: &str, now: OffsetDateTime) -> StoreResult<()> {
        self.store.take_ephemeral(SESSION, &key(id), now).await.map(drop)
    }

    /// Remembers an SSO sign-in under its `state` for [`SSO_WINDOW`].
    pub async fn start_sso(&self, state: &str, start: SsoStart) -> StoreResult<()> {
        let stored = StoredSso {
            nonce: start.nonce,
            verifier: start.verifier,
            redirect_uri: start.redirect_uri,
            token_endpoint: start.token_endpoint,
            next: start.next,
            started: start.started.unix_timestamp_nanos(),
        };
        let value = serde_json::to_string(&stored).unwrap_or_default();
        let until = start.started + SSO_WINDOW;
        self.store.put_ephemeral(SSO, &key(state), &value, start.started, until, MAX_SESSIONS).await
    }

    /// The SSO sign-in of `state`, once: taken, unless its window has passed by `now`.
    pub async fn take_sso(&self, state: &str, now: OffsetDateTime) -> StoreResult<Option<SsoStart>> {
        let Some(value) = self.store.take_ephemeral(SSO, &key(state), now).await? else { return Ok(None) };
        let Ok(s) = serde_json::from_str::<StoredSso>(&value) else { return Ok(None) };
        let Some(started) = at(s.started) else { return Ok(None) };
        Ok(Some(SsoStart {
            nonce: s.nonce,
            verifier: s.verifier,
            redirect_uri: s.redirect_uri,
            token_endpoint: s.token_endpoint,
            next: s.next,
            started,
        }))
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

    #[tokio::test]
    async fn sessions_are_found_by_id_until_they_expire_and_sso_sign_ins_are_taken_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = jitgate_store::secrets::Keyring::generate().expect("key");
        let store = jitgate_store_sqlite::SqliteStore::open(&dir.path().join("db"), keys).expect("store");
        let s = Sessions::new(Arc::new(store));
        let now = OffsetDateTime::from_unix_timestamp(1_900_000_000).expect("time");
        let id = s.create(session(now, time::Duration::minutes(5))).await.expect("create");
        let got = s.get(&id, now).await.expect("get").expect("found");
        assert_eq!((got.principal.as_str(), got.proof), ("alice", Proof::IdToken));
        assert!(s.get("other", now).await.expect("get").is_none());
        assert!(s.get(&id, now + time::Duration::minutes(5)).await.expect("get").is_none(), "expired");
        let id = s.create(session(now, time::Duration::minutes(5))).await.expect("create");
        s.remove(&id, now).await.expect("remove");
        assert!(s.get(&id, now).await.expect("get").is_none());

        let start = SsoStart {
            nonce: "n".into(),
            verifier: "v".into(),
            redirect_uri: "https://jit/cb".into(),
            token_endpoint: "https://idp/token".into(),
            next: "/jit".into(),
            started: now,
        };
        s.start_sso("state-1", start).await.expect("start");
        let taken = s.take_sso("state-1", now).await.expect("take").expect("found");
        assert_eq!((taken.verifier.as_str(), taken.started), ("v", now));
        assert!(s.take_sso("state-1", now).await.expect("take").is_none(), "taken once");
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
