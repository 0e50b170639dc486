//! ID tokens: the JWT header the server reads first (to pick the key), the claims it decodes
//! with its own validation, and what it takes from them.

use jitgate_api_types::idtoken::{read_claims, IdClaims};
use jitgate_core::identity::{display_name, is_oidc_name, oidc_name, validate_subject, MAX_DISPLAY_NAME};
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};

const ISSUER: &str = "https://idp.example/";
const AUDIENCE: &str = "jitgate";

/// A token (`header.claims.signature`), or, without a `.`, the claims JSON alone.
///
/// The signature is not checked (the fuzzer cannot sign); everything after it is what
/// `Oidc::validate` does: the header's algorithm, issuer (with or without the trailing `/`),
/// audience, the claims every token must have, and then [`read_claims`]. Expiry and not-before
/// are left out: they compare with the clock, and a corpus must replay the same.
pub fn jwt(data: &[u8]) {
    let Ok(token) = std::str::from_utf8(data) else { return };
    if !token.contains('.') {
        if let Ok(claims) = serde_json::from_slice::<serde_json::Value>(data) {
            check(read_claims(&claims, None));
            check(read_claims(&claims, Some("name")));
        }
        return;
    }
    let alg = match decode_header(token) {
        Ok(header) => header.alg,
        Err(_) => Algorithm::HS256,
    };
    let mut v = Validation::new(alg);
    v.insecure_disable_signature_validation();
    v.set_issuer(&[ISSUER, ISSUER.trim_end_matches('/')]);
    v.set_audience(&[AUDIENCE]);
    v.validate_exp = false;
    v.validate_nbf = false;
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    if let Ok(data) = decode::<serde_json::Value>(token, &DecodingKey::from_secret(b"fuzz"), &v) {
        check(read_claims(&data.claims, None));
    }
}

fn check<E>(read: Result<IdClaims, E>) {
    let Ok(claims) = read else { return };
    assert_eq!(validate_subject(&claims.subject), Ok(()));
    let name = oidc_name(ISSUER, &claims.subject);
    assert!(is_oidc_name(&name) && name.len() == 5 + 32, "{name}");
    assert_eq!(name, oidc_name(ISSUER.trim_end_matches('/'), &claims.subject), "the issuer's '/' counts");
    if let Ok(Some(shown)) = &claims.display {
        assert!(!shown.is_empty() && shown.chars().count() <= MAX_DISPLAY_NAME, "{shown:?}");
        assert!(!shown.chars().any(|c| c.is_control()) && shown.trim() == shown && !shown.contains("  "), "{shown:?}");
        assert_eq!(display_name(shown).as_ref(), Ok(shown), "cleaning {shown:?} again changes it");
    }
}
