//! A certificate's validity and SHA-256 fingerprint, from DER or a PEM file (the first
//! certificate in it), read with `simple_asn1`.

use std::path::Path;

use sha2::{Digest, Sha256};
use simple_asn1::ASN1Block;
use time::OffsetDateTime;

/// What the doctor says about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// SHA-256 of the DER, as `AB:CD:…` (what `jitgate serve` prints and agents pin).
    pub fingerprint: String,
}

impl CertInfo {
    /// Whole days from `now` to the end of validity (negative once expired).
    pub fn days_left(&self, now: OffsetDateTime) -> i64 {
        (self.not_after - now).whole_days()
    }
}

pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der).iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

/// Reads `Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version?, serial, signature,
/// issuer, validity SEQUENCE { notBefore, notAfter }, … }, … }`.
pub fn from_der(der: &[u8]) -> Result<CertInfo, String> {
    let blocks = simple_asn1::from_der(der).map_err(|e| format!("not a DER certificate: {e}"))?;
    let Some(ASN1Block::Sequence(_, cert)) = blocks.first() else {
        return Err("not a certificate (no outer SEQUENCE)".into());
    };
    let Some(ASN1Block::Sequence(_, tbs)) = cert.first() else {
        return Err("not a certificate (no tbsCertificate)".into());
    };
    let fields: Vec<&ASN1Block> = tbs.iter().filter(|b| !matches!(b, ASN1Block::Explicit(..))).collect();
    // serial, signature, issuer, validity
    let Some(ASN1Block::Sequence(_, validity)) = fields.get(3) else {
        return Err("not a certificate (no validity)".into());
    };
    let time = |b: Option<&ASN1Block>| match b {
        Some(ASN1Block::UTCTime(_, t) | ASN1Block::GeneralizedTime(_, t)) => Ok(t.assume_utc()),
        _ => Err("not a certificate (a validity time is missing)".to_string()),
    };
    Ok(CertInfo {
        not_before: time(validity.first())?,
        not_after: time(validity.get(1))?,
        fingerprint: fingerprint(der),
    })
}

/// The first certificate of a PEM file.
pub fn from_pem_file(path: &Path) -> Result<CertInfo, String> {
    let data = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let first = rustls_pemfile::certs(&mut data.as_slice())
        .next()
        .ok_or_else(|| format!("{} holds no PEM certificate", path.display()))?
        .map_err(|e| format!("{}: {e}", path.display()))?;
    from_der(first.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity_and_fingerprint_of_a_generated_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["jit.example.com".to_string()]).unwrap();
        params.not_before = time::macros::datetime!(2026-01-02 03:04:05 UTC);
        params.not_after = time::macros::datetime!(2051-06-07 08:09:10 UTC);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let info = from_der(cert.der()).unwrap();
        assert_eq!(info.not_before, time::macros::datetime!(2026-01-02 03:04:05 UTC));
        // Past 2049 a certificate carries a GeneralizedTime.
        assert_eq!(info.not_after, time::macros::datetime!(2051-06-07 08:09:10 UTC));
        assert_eq!(info.fingerprint.len(), 32 * 3 - 1);
        assert_eq!(info.days_left(time::macros::datetime!(2051-06-01 08:09:10 UTC)), 6);

        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("cert.pem");
        std::fs::write(&pem, cert.pem()).unwrap();
        assert_eq!(from_pem_file(&pem).unwrap(), info);
        std::fs::write(&pem, "not a certificate").unwrap();
        assert!(from_pem_file(&pem).unwrap_err().contains("no PEM certificate"));
        assert!(from_der(b"\x30\x03\x02\x01\x01").is_err());
    }
}
