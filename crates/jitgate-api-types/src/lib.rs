//! The JSON wire shapes of jitgate, and their conversions to and from core values.
//!
//! [`arm`] holds Azure's `Microsoft.Security/locations/jitNetworkAccessPolicies` shapes
//! (api-version 2020-01-01); [`native`] holds jitgate's own `/api/v1` shapes; [`webhook`] the
//! body of a webhook delivery. Input DTOs are
//! lenient about types only where Azure is (every field optional at the serde level) so that the
//! domain can name exactly what is missing or wrong.

pub mod agent;
pub mod arm;
pub mod audit;
pub mod datetime;
pub mod doctor;
pub mod error;
pub mod idtoken;
pub mod native;
pub mod rbac;
pub mod webhook;

use serde::de::DeserializeOwned;

use jitgate_core::Invalid;

/// Error code for a body that is not JSON or has a field of the wrong type.
pub const INVALID_REQUEST_CONTENT: &str = "InvalidRequestContent";

/// Parses a JSON body, naming the path of a field of the wrong type.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, Invalid> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Invalid::input(
            INVALID_REQUEST_CONTENT,
            None,
            "the request body is empty; a JSON object is required",
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = if inner.is_syntax() || inner.is_eof() {
            format!("the request body is not valid JSON: {inner}")
        } else {
            format!("the request body has a field of the wrong type: {inner}")
        };
        let target = if path == "." || path.is_empty() { None } else { Some(path) };
        Invalid::input(INVALID_REQUEST_CONTENT, target, message)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_name_the_field() {
        let err = parse_json::<arm::PolicyIn>(
            br#"{"properties":{"virtualMachines":[{"id":"x","ports":[{"number":"22"}]}]}}"#,
        )
        .expect_err("wrong type");
        assert_eq!(err.code, INVALID_REQUEST_CONTENT);
        assert_eq!(err.target.as_deref(), Some("properties.virtualMachines[0].ports[0].number"));
        let err = parse_json::<arm::PolicyIn>(b"{not json").expect_err("syntax");
        assert!(err.message.contains("not valid JSON"), "{}", err.message);
        assert!(parse_json::<arm::PolicyIn>(b"  ").is_err());
        assert!(parse_json::<arm::PolicyIn>(b"[]").is_err());
        assert!(parse_json::<arm::PolicyIn>(br#"{"properties":{"virtualMachines":"nope"}}"#).is_err());
    }
}
