//! The server's certificate, replaceable while it serves: a rustls certificate resolver whose
//! certificate and key are read again on demand (SIGHUP, or the renewal of the self-signed one).
//! A new handshake gets the new certificate; connections already open keep the one they began
//! with, so nothing is dropped. A file that cannot be read or whose key does not match leaves
//! the certificate in use as it was.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use jitgate_core::certinfo::CertInfo;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::tls::{read_certs, read_key, TlsError};

/// How long before its end the self-signed certificate is made again.
pub const RENEW_BEFORE: time::Duration = time::Duration::days(30);

/// The certificate and key the server presents, read from two PEM files.
#[derive(Debug)]
pub struct Reloadable {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<rustls::crypto::CryptoProvider>,
    current: RwLock<Current>,
}

#[derive(Debug, Clone)]
struct Current {
    key: Arc<CertifiedKey>,
    info: CertInfo,
}

impl Reloadable {
    /// Reads `cert` (the leaf first, then its chain) and `key`; fails when either cannot be read,
    /// or when the key is not the certificate's.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Reloadable>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let current = read(cert, key, &provider)?;
        Ok(Arc::new(Reloadable { cert: cert.to_owned(), key: key.to_owned(), provider, current: RwLock::new(current) }))
    }

    /// Reads both files again and presents them to every new connection. On an error the
    /// certificate in use stays. Answers the facts of the certificate now presented.
    pub fn reload(&self) -> Result<CertInfo, TlsError> {
        let next = read(&self.cert, &self.key, &self.provider)?;
        let info = next.info.clone();
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = next;
        Ok(info)
    }

    /// The facts of the certificate presented now.
    pub fn info(&self) -> CertInfo {
        self.current.read().unwrap_or_else(PoisonError::into_inner).info.clone()
    }

    /// The certificate file.
    pub fn cert_path(&self) -> &Path {
        &self.cert
    }

    /// A server configuration that presents this certificate, HTTP/2 and HTTP/1.1 offered.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for Reloadable {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(PoisonError::into_inner).key.clone())
    }
}

fn read(cert: &Path, key: &Path, provider: &rustls::crypto::CryptoProvider) -> Result<Current, TlsError> {
    let certs = read_certs(cert)?;
    let info = CertInfo::from_der(certs[0].as_ref())
        .ok_or_else(|| TlsError::Config(format!("{}: the first certificate cannot be read", cert.display())))?;
    let key_der = read_key(key)?;
    let certified = CertifiedKey::from_der(certs, key_der, provider)
        .map_err(|e| TlsError::Config(format!("{} and {} do not go together: {e}", cert.display(), key.display())))?;
    Ok(Current { key: Arc::new(certified), info })
}

/// Whether a certificate that ends at `not_after` is due for renewal at `now`.
pub fn due_for_renewal(not_after: time::OffsetDateTime, now: time::OffsetDateTime) -> bool {
    not_after - now <= RENEW_BEFORE
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls;

    fn self_signed(dir: &Path, days: i64) -> (PathBuf, PathBuf) {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(days);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    #[test]
    fn a_reload_presents_the_new_files_and_a_bad_one_keeps_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = self_signed(dir.path(), 100);
        let r = Reloadable::load(&c, &k).unwrap();
        let first = r.info();
        assert_eq!(first.fingerprint(), tls::fingerprint(&c).unwrap());
        assert!(r.server_config().is_ok());

        self_signed(dir.path(), 200);
        let second = r.reload().unwrap();
        assert_ne!(second.sha256, first.sha256);
        assert_eq!(r.info(), second);

        // A key that is not the certificate's: refused, the second stays.
        let other = rcgen::KeyPair::generate().unwrap();
        std::fs::write(&k, other.serialize_pem()).unwrap();
        let e = r.reload().unwrap_err().to_string();
        assert!(e.contains("do not go together"), "{e}");
        assert_eq!(r.info(), second);
        // A file that is gone: refused, the second stays.
        std::fs::remove_file(&c).unwrap();
        assert!(r.reload().is_err());
        assert_eq!(r.info(), second);
        // Loading such files at start fails too.
        assert!(Reloadable::load(&c, &k).is_err());
    }

    #[test]
    fn the_self_signed_certificate_is_renewed_with_its_key_before_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let now = time::OffsetDateTime::now_utc();
        // Made 816 days ago: it ends in 9 days.
        let first = tls::ensure_self_signed_at(dir.path(), &[], now - time::Duration::days(816)).unwrap();
        assert!(first.generated && first.renewed.is_none());
        let old = std::fs::read(&first.cert).unwrap();
        let old_info = Reloadable::load(&first.cert, &first.key).unwrap().info();

        let files = tls::ensure_self_signed_at(dir.path(), &[], now).unwrap();
        assert!(files.generated && files.replaced.is_none());
        assert_eq!(files.renewed, Some(old_info.not_after), "says when the old one ended");
        let new_info = Reloadable::load(&files.cert, &files.key).unwrap().info();
        assert_ne!(new_info.sha256, old_info.sha256, "a new certificate");
        assert_eq!(new_info.spki_sha256, old_info.spki_sha256, "with the same key");
        assert!(new_info.not_after - now > time::Duration::days(800), "{:?}", new_info.not_after);

        // Fresh and covering everything: left alone.
        let again = tls::ensure_self_signed_at(dir.path(), &[], now).unwrap();
        assert!(!again.generated && again.renewed.is_none() && again.replaced.is_none());
        // A name it lacks: made again, with the same key too.
        let wider = tls::ensure_self_signed_at(dir.path(), &["jit.example.com".to_owned()], now).unwrap();
        assert!(wider.generated && wider.replaced.is_some() && wider.renewed.is_none());
        let wider_info = Reloadable::load(&wider.cert, &wider.key).unwrap().info();
        assert_eq!(wider_info.spki_sha256, old_info.spki_sha256);

        // A client that trusts the first certificate file trusts the renewed one: same issuer
        // name, same key.
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(rustls_pemfile::certs(&mut old.as_slice()).map(|c| c.unwrap()));
        let anchors: Vec<_> = roots.roots.clone();
        let now_pki = rustls::pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            time::OffsetDateTime::now_utc().unix_timestamp() as u64,
        ));
        let leaf = tls::read_certs(&files.cert).unwrap().remove(0);
        let ee = webpki::EndEntityCert::try_from(&leaf).unwrap();
        let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        ee.verify_for_usage(algs.all, &anchors, &[], now_pki, webpki::KeyUsage::server_auth(), None, None)
            .expect("the renewed certificate chains to the old one's trust anchor");
    }

    #[test]
    fn renewal_is_due_thirty_days_before_the_end() {
        let now = time::OffsetDateTime::now_utc();
        assert!(due_for_renewal(now + time::Duration::days(29), now));
        assert!(due_for_renewal(now - time::Duration::days(1), now));
        assert!(!due_for_renewal(now + time::Duration::days(31), now));
    }
}
