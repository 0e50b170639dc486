//! Signature Version 4 of a request, by the `aws-sigv4` crate: service `ec2`, the client's
//! region, the session token when the credentials have one.

use std::time::SystemTime;

use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;

use crate::creds::Credentials;
use crate::Ec2Error;

/// The service name EC2 is signed for.
pub const SERVICE: &str = "ec2";

/// The headers to add to a POST of `body` to `url` with `headers` (which are signed too):
/// `authorization`, `x-amz-date`, and `x-amz-security-token` for temporary credentials.
pub fn signature_headers(
    credentials: &Credentials,
    region: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    time: SystemTime,
) -> Result<Vec<(String, String)>, Ec2Error> {
    let identity = aws_credential_types::Credentials::new(
        credentials.access_key_id.clone(),
        credentials.secret_access_key().to_owned(),
        credentials.session_token().map(str::to_owned),
        credentials.expires,
        "jitgate",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SERVICE)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| Ec2Error::Credentials(format!("cannot sign with these credentials: {e}")))?
        .into();
    let request = SignableRequest::new("POST", url, headers.iter().copied(), SignableBody::Bytes(body))
        .map_err(|e| Ec2Error::Transport(format!("cannot sign a request to {url}: {e}")))?;
    let (instructions, _signature) = sign(request, &params)
        .map_err(|e| Ec2Error::Transport(format!("cannot sign a request to {url}: {e}")))?
        .into_parts();
    Ok(instructions.headers().map(|(k, v)| (k.to_owned(), v.to_owned())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const T: u64 = 1_440_938_160; // 2015-08-30T12:36:00Z

    fn signed(c: &Credentials) -> Vec<(String, String)> {
        signature_headers(
            c,
            "us-east-1",
            "https://ec2.us-east-1.amazonaws.com/",
            &[("content-type", "application/x-www-form-urlencoded; charset=utf-8")],
            b"Action=DescribeInstances&Version=2016-11-15",
            SystemTime::UNIX_EPOCH + Duration::from_secs(T),
        )
        .unwrap()
    }

    fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
        h.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    #[test]
    fn authorization_names_scope_and_signed_headers() {
        let h = signed(&Credentials::new("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"));
        assert_eq!(header(&h, "x-amz-date"), Some("20150830T123600Z"));
        assert_eq!(header(&h, "x-amz-security-token"), None);
        let auth = header(&h, "authorization").unwrap();
        let prefix = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/ec2/aws4_request, \
                      SignedHeaders=content-type;host;x-amz-date, Signature=";
        assert!(auth.starts_with(prefix), "{auth}");
        let sig = &auth[prefix.len()..];
        assert_eq!(sig.len(), 64);
        assert!(sig.chars().all(|c| c.is_ascii_hexdigit()));
        // Deterministic: the same request at the same time signs the same; another secret not.
        assert_eq!(signed(&Credentials::new("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")), h);
        assert_ne!(signed(&Credentials::new("AKIDEXAMPLE", "other")), h);
    }

    #[test]
    fn session_token_is_sent_and_signed() {
        let c = Credentials::new("ASIAEXAMPLE", "s3cr3t-value").temporary("the-token", None);
        let h = signed(&c);
        assert_eq!(header(&h, "x-amz-security-token"), Some("the-token"));
        let auth = header(&h, "authorization").unwrap();
        assert!(auth.contains("SignedHeaders=content-type;host;x-amz-date;x-amz-security-token,"), "{auth}");
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cr3t-value") && !shown.contains("the-token"), "{shown}");
    }
}
