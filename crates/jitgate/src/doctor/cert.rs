//! A certificate for the doctor: `jitgate_core::certinfo` reads it (expiry, fingerprints); here
//! only the PEM file around it.

use std::path::Path;

pub use jitgate_core::certinfo::CertInfo;

/// A DER certificate's facts, or why there are none.
pub fn from_der(der: &[u8]) -> Result<CertInfo, String> {
    CertInfo::from_der(der).ok_or_else(|| "the server's certificate could not be read (not X.509 DER)".to_owned())
}

/// The first certificate of a PEM file.
pub fn from_pem_file(path: &Path) -> Result<CertInfo, String> {
    let data = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let first = rustls_pemfile::certs(&mut data.as_slice())
        .next()
        .ok_or_else(|| format!("{} holds no PEM certificate", path.display()))?
        .map_err(|e| format!("{}: {e}", path.display()))?;
    CertInfo::from_der(first.as_ref()).ok_or_else(|| format!("{}: not an X.509 certificate", path.display()))
}

/// Whole days from `now` to the end of validity (negative once expired).
pub fn days_left(info: &CertInfo, now: time::OffsetDateTime) -> i64 {
    (info.not_after - now).whole_days()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pem_file_gives_its_first_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["jit.example.com".to_string()]).unwrap();
        params.not_after = time::macros::datetime!(2051-06-07 08:09:10 UTC);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("cert.pem");
        std::fs::write(&pem, cert.pem()).unwrap();
        let info = from_pem_file(&pem).unwrap();
        assert_eq!(info, from_der(cert.der()).unwrap());
        assert_eq!(info.not_after, time::macros::datetime!(2051-06-07 08:09:10 UTC));
        assert_eq!(days_left(&info, time::macros::datetime!(2051-06-01 08:09:10 UTC)), 6);
        std::fs::write(&pem, "not a certificate").unwrap();
        assert!(from_pem_file(&pem).unwrap_err().contains("no PEM certificate"));
        assert!(from_der(b"\x30\x03\x02\x01\x01").is_err());
    }
}
