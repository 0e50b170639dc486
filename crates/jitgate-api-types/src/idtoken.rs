//! What jitgate reads from an ID token's claims once the token's signature, issuer, audience and
//! times are checked: the subject (the identity, with the issuer), the expiry, the display
//! claim (cleaned, only ever shown) and the nonce.

use serde_json::Value;
use time::OffsetDateTime;

use jitgate_core::identity;

/// The claims of a checked ID token that jitgate uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdClaims {
    /// `sub`: 1 to 255 printable ASCII characters.
    pub subject: String,
    /// `exp`.
    pub expires: OffsetDateTime,
    /// The display claim, cleaned; `Ok(None)` when the token has none, `Err` with the reason
    /// when it was refused (the sign-in still counts: the identity is the subject).
    pub display: Result<Option<String>, String>,
    /// `nonce`, when there is one.
    pub nonce: Option<String>,
}

/// Why the claims of an ID token are refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimError {
    /// No `sub`, or one that is not a string.
    NoSubject,
    /// A subject jitgate does not accept ([`identity::validate_subject`]).
    BadSubject(String),
    /// `exp` is not a time.
    BadExpiry,
}

/// Reads `claims`; `display_claim` names the claim shown as the display name (by default
/// `preferred_username`, else `email`).
pub fn read_claims(claims: &Value, display_claim: Option<&str>) -> Result<IdClaims, ClaimError> {
    let subject = claims["sub"].as_str().ok_or(ClaimError::NoSubject)?;
    identity::validate_subject(subject).map_err(ClaimError::BadSubject)?;
    let expires = claims["exp"]
        .as_i64()
        .or_else(|| claims["exp"].as_f64().map(|f| f as i64))
        .and_then(|e| OffsetDateTime::from_unix_timestamp(e).ok())
        .ok_or(ClaimError::BadExpiry)?;
    let display = match display_claim {
        Some(c) => claims[c].as_str(),
        None => ["preferred_username", "email"].iter().find_map(|c| claims[*c].as_str()),
    };
    let display = match display {
        None => Ok(None),
        Some(raw) => identity::display_name(raw).map(Some),
    };
    Ok(IdClaims { subject: subject.to_owned(), expires, display, nonce: claims["nonce"].as_str().map(str::to_owned) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_subject_expiry_display_and_nonce() {
        let c = serde_json::json!({"sub": "u1", "exp": 1_800_000_000, "email": "a@example.com", "nonce": "n"});
        let read = read_claims(&c, None).expect("valid");
        assert_eq!(read.subject, "u1");
        assert_eq!(read.expires.unix_timestamp(), 1_800_000_000);
        assert_eq!(read.display, Ok(Some("a@example.com".into())));
        assert_eq!(read.nonce.as_deref(), Some("n"));
        let float = serde_json::json!({"sub": "u1", "exp": 1.8e9, "name": "Ann"});
        assert_eq!(read_claims(&float, Some("name")).map(|r| r.display), Ok(Ok(Some("Ann".into()))));
    }

    #[test]
    fn refuses_what_names_no_identity_or_no_time() {
        assert_eq!(read_claims(&serde_json::json!({"exp": 1}), None), Err(ClaimError::NoSubject));
        assert!(matches!(
            read_claims(&serde_json::json!({"sub": "a b", "exp": 1}), None),
            Err(ClaimError::BadSubject(_))
        ));
        assert_eq!(read_claims(&serde_json::json!({"sub": "a", "exp": "soon"}), None), Err(ClaimError::BadExpiry));
        assert_eq!(read_claims(&serde_json::json!({"sub": "a", "exp": 1e300}), None), Err(ClaimError::BadExpiry));
        assert_eq!(read_claims(&serde_json::json!([1, 2]), None), Err(ClaimError::NoSubject));
    }
}
