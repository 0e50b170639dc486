//! Bearer tokens: 256-bit random secrets, shown once, stored as their SHA-256.

use axum::http::{header, HeaderMap};
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::error::ApiError;

/// The prefix every jitgate token carries (so secret scanners can find leaked ones).
pub const TOKEN_PREFIX: &str = "jg_";

/// A new random token.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{TOKEN_PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// What the store keeps of a token.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The audit record of the first start's Owner principal `owner`, created at `now` (the store's
/// `bootstrap` completes it).
pub fn bootstrap_event(owner: &str, now: time::OffsetDateTime) -> jitgate_core::audit::AuditEvent {
    use jitgate_core::audit::{ops, AuditEvent, AuditStatus};
    AuditEvent {
        time: now,
        operation: ops::PRINCIPAL_WRITE.into(),
        status: AuditStatus::Started,
        caller: "jitgate".into(),
        caller_ip: None,
        resource_id: format!("/principals/{owner}"),
        correlation_id: "bootstrap".into(),
        properties: Default::default(),
    }
}

/// The bearer token of a request, or the 401 to answer.
pub fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::unauthorized(
            "AuthenticationFailed",
            "Authentication failed. The 'Authorization' header is missing; send 'Authorization: Bearer <token>'.",
        ));
    };
    let text = value.to_str().unwrap_or("");
    let mut parts = text.splitn(2, ' ');
    let scheme = parts.next().unwrap_or("");
    let token = parts.next().unwrap_or("").trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(ApiError::unauthorized(
            "AuthenticationFailedInvalidHeader",
            "Authentication failed. The 'Authorization' header must be 'Bearer <token>'.",
        ));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_prefixed_and_hash_stably() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX));
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 43);
        assert_eq!(hash_token(&a), hash_token(&a));
        assert_ne!(hash_token(&a), hash_token(&b));
        assert_eq!(hash_token("x").len(), 64);
    }

    #[test]
    fn bearer_headers_are_parsed_strictly() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h).map_err(|e| e.code), Err("AuthenticationFailed".to_string()));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().expect("header"));
        assert!(bearer(&h).is_err());
        h.insert(header::AUTHORIZATION, "Bearer ".parse().expect("header"));
        assert!(bearer(&h).is_err());
        h.insert(header::AUTHORIZATION, "bearer jg_x".parse().expect("header"));
        assert_eq!(bearer(&h).ok(), Some("jg_x"));
    }
}
