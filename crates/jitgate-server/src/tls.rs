//! TLS: the self-signed certificate made on first start, loading a certificate and key, and the
//! listener that hands the HTTP layer finished TLS (or plain TCP) connections, capped per source.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use jitgate_core::certinfo::CertInfo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS file {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("TLS file {0}: no certificate found in it")]
    NoCertificate(PathBuf),
    #[error("TLS file {0}: no private key found in it")]
    NoKey(PathBuf),
    #[error("making the self-signed certificate: {0}")]
    Generate(String),
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// Where the certificate and key are, and whether they were just made.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub generated: bool,
    /// When a self-signed certificate was made again because it did not cover a name or
    /// address it must: the old one's SHA-256 fingerprint and the names it lacked.
    pub replaced: Option<Replaced>,
    /// When the self-signed certificate was made again because it was due to end: the end
    /// of the old one.
    pub renewed: Option<time::OffsetDateTime>,
}

/// The self-signed certificate a new one replaced.
#[derive(Debug, Clone)]
pub struct Replaced {
    pub old_fingerprint: String,
    pub missing: Vec<String>,
}

/// The names and addresses every self-signed certificate covers.
pub const DEFAULT_SANS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Makes `dir/cert.pem` and `dir/key.pem` (mode 0600) unless both exist, the certificate
/// covers every name in `sans` and it does not end within [`crate::certs::RENEW_BEFORE`]. SANs:
/// localhost, 127.0.0.1, ::1 and `sans` (names or addresses). A certificate that lacks one, or
/// that is due to end, is made again (the answer says why) with the key it had: the issuer name
/// and the key stay, so a client that trusts the old cert.pem or pins its public key trusts
/// the new one.
pub fn ensure_self_signed(dir: &Path, sans: &[String]) -> Result<CertFiles, TlsError> {
    ensure_self_signed_at(dir, sans, time::OffsetDateTime::now_utc())
}

/// [`ensure_self_signed`] as if the time were `now`.
pub fn ensure_self_signed_at(dir: &Path, sans: &[String], now: time::OffsetDateTime) -> Result<CertFiles, TlsError> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let mut wanted: Vec<String> = DEFAULT_SANS.iter().map(|s| (*s).to_owned()).collect();
    for s in sans.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        let s = s.trim_start_matches('[').trim_end_matches(']').to_owned();
        if !wanted.iter().any(|w| w.eq_ignore_ascii_case(&s)) {
            wanted.push(s);
        }
    }
    let mut replaced = None;
    let mut renewed = None;
    let mut old_key = None;
    if cert.exists() && key.exists() {
        let missing = not_covered(&cert, &wanted)?;
        let ends = read_certs(&cert)?.first().and_then(|c| CertInfo::from_der(c.as_ref())).map(|i| i.not_after);
        let due = ends.is_none_or(|end| crate::certs::due_for_renewal(end, now));
        if missing.is_empty() && !due {
            return Ok(CertFiles { cert, key, generated: false, replaced: None, renewed: None });
        }
        if missing.is_empty() {
            renewed = ends;
        } else {
            replaced = Some(Replaced { old_fingerprint: fingerprint(&cert)?, missing });
        }
        // The key stays when it can be read: clients trusting the old certificate keep working.
        old_key = std::fs::read_to_string(&key).ok().and_then(|pem| rcgen::KeyPair::from_pem(&pem).ok());
    }
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| TlsError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut params = rcgen::CertificateParams::new(wanted).map_err(|e| TlsError::Generate(e.to_string()))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, "jitgate self-signed");
    params.distinguished_name.push(rcgen::DnType::OrganizationName, "jitgate");
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + SELF_SIGNED_LIFETIME;
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key_pair = match old_key {
        Some(k) => k,
        None => rcgen::KeyPair::generate().map_err(|e| TlsError::Generate(e.to_string()))?,
    };
    let certificate = params.self_signed(&key_pair).map_err(|e| TlsError::Generate(e.to_string()))?;
    // The certificate goes through a temporary file and a rename: a reader never sees half of it.
    write_private(&key, key_pair.serialize_pem().as_bytes()).map_err(io_err(&key))?;
    let tmp = dir.join("cert.pem.new");
    std::fs::write(&tmp, certificate.pem()).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, &cert).map_err(io_err(&cert))?;
    Ok(CertFiles { cert, key, generated: true, replaced, renewed })
}

/// How long a self-signed certificate is valid (825 days, the longest clients accept).
pub const SELF_SIGNED_LIFETIME: time::Duration = time::Duration::days(825);

/// The names and addresses in `names` that the certificate in `cert` (PEM) is not valid for.
pub fn not_covered(cert: &Path, names: &[String]) -> Result<Vec<String>, TlsError> {
    let certs = read_certs(cert)?;
    let Ok(leaf) = webpki::EndEntityCert::try_from(&certs[0]) else {
        return Ok(names.to_vec());
    };
    Ok(names
        .iter()
        .filter(|n| {
            let bare = n.trim_start_matches('[').trim_end_matches(']');
            match rustls::pki_types::ServerName::try_from(bare) {
                Ok(name) => leaf.verify_is_valid_for_subject_name(&name).is_err(),
                Err(_) => true,
            }
        })
        .cloned()
        .collect())
}

/// Writes a file readable by its owner only.
pub fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(contents)?;
    f.sync_all()
}

/// The certificates of a PEM file, the leaf first; an error when there is none.
pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let data = std::fs::read(path).map_err(|source| TlsError::Io { path: path.to_owned(), source })?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut data.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::Io { path: path.to_owned(), source })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_owned()));
    }
    Ok(certs)
}

/// The SHA-256 fingerprint of the first certificate in a PEM file, as `AB:CD:…`.
pub fn fingerprint(cert: &Path) -> Result<String, TlsError> {
    let certs = read_certs(cert)?;
    Ok(jitgate_core::certinfo::colon_hex(&Sha256::digest(certs[0].as_ref())))
}

/// The private key of a PEM file.
pub(crate) fn read_key(key: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let data = std::fs::read(key).map_err(|source| TlsError::Io { path: key.to_owned(), source })?;
    rustls_pemfile::private_key(&mut data.as_slice())
        .map_err(|source| TlsError::Io { path: key.to_owned(), source })?
        .ok_or_else(|| TlsError::NoKey(key.to_owned()))
}

/// A rustls server configuration from PEM files, with HTTP/2 and HTTP/1.1 offered (one that
/// can be reloaded: [`crate::certs::Reloadable`]).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    crate::certs::Reloadable::load(cert, key)?.server_config()
}

/// Any connection the server speaks HTTP over.
pub trait Conn: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Conn for T {}

/// The remote address of a connection, as handlers see it (`ConnectInfo<PeerAddr>`).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// How many connections one source address may hold open at once.
#[derive(Debug, Clone, Default)]
pub struct ConnLimit {
    /// The most open connections per source address (IPv6: per /64); 0 for no cap.
    pub per_source: usize,
    /// Sources without a cap: the trusted proxies, which carry many clients' connections.
    pub exempt: Vec<ipnet::IpNet>,
}

/// Open connections per source address.
#[derive(Debug, Default)]
struct OpenConns(Mutex<HashMap<IpAddr, usize>>);

impl OpenConns {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Holds one of its source's connection slots until dropped (with the connection).
struct Slot {
    open: Arc<OpenConns>,
    key: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock();
        if let Some(n) = open.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

impl ConnLimit {
    /// A slot for a new connection from `peer`, or `None` when the source is at its cap.
    fn admit(&self, open: &Arc<OpenConns>, peer: IpAddr) -> Option<Option<Slot>> {
        let peer = peer.to_canonical();
        if self.per_source == 0 || self.exempt.iter().any(|n| n.contains(&peer)) {
            return Some(None);
        }
        let key = crate::ratelimit::source_key(peer);
        let mut conns = open.lock();
        let n = conns.entry(key).or_insert(0);
        if *n >= self.per_source {
            return None;
        }
        *n += 1;
        Some(Some(Slot { open: open.clone(), key }))
    }
}

/// The methods of `AsyncWrite` for a connection wrapper that passes every write on to its `inner`
/// connection unchanged (here and in `crate::conn`).
macro_rules! write_to_inner {
    () => {
        fn poll_write(
            mut self: ::std::pin::Pin<&mut Self>,
            cx: &mut ::std::task::Context<'_>,
            buf: &[u8],
        ) -> ::std::task::Poll<::std::io::Result<usize>> {
            ::std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
        }

        fn poll_flush(
            mut self: ::std::pin::Pin<&mut Self>,
            cx: &mut ::std::task::Context<'_>,
        ) -> ::std::task::Poll<::std::io::Result<()>> {
            ::std::pin::Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: ::std::pin::Pin<&mut Self>,
            cx: &mut ::std::task::Context<'_>,
        ) -> ::std::task::Poll<::std::io::Result<()>> {
            ::std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
        }

        fn poll_write_vectored(
            mut self: ::std::pin::Pin<&mut Self>,
            cx: &mut ::std::task::Context<'_>,
            bufs: &[::std::io::IoSlice<'_>],
        ) -> ::std::task::Poll<::std::io::Result<usize>> {
            ::std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
        }

        fn is_write_vectored(&self) -> bool {
            self.inner.is_write_vectored()
        }
    };
}
pub(crate) use write_to_inner;

/// A connection and the slot it holds.
struct Counted<C> {
    inner: C,
    _slot: Option<Slot>,
}

impl<C: AsyncRead + Unpin> AsyncRead for Counted<C> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<C: AsyncWrite + Unpin> AsyncWrite for Counted<C> {
    write_to_inner!();
}

/// Accepts TCP connections and, with TLS, completes each handshake on its own task so that a
/// slow client never holds up the others. A source at its connection cap has its new
/// connections closed at once, before any handshake.
pub struct ServerListener {
    incoming: mpsc::Receiver<(Box<dyn Conn>, PeerAddr)>,
    local: SocketAddr,
}

impl ServerListener {
    pub fn new(tcp: TcpListener, tls: Option<Arc<rustls::ServerConfig>>, limit: ConnLimit) -> io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, rx) = mpsc::channel::<(Box<dyn Conn>, PeerAddr)>(256);
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let open = Arc::new(OpenConns::default());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    r = tcp.accept() => r,
                    _ = tx.closed() => break,
                };
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Some(slot) = limit.admit(&open, peer.ip()) else {
                    tracing::debug!(%peer, cap = limit.per_source, "too many connections from this source; closed");
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                match &acceptor {
                    None => {
                        let conn = Counted { inner: stream, _slot: slot };
                        if tx.send((Box::new(conn), PeerAddr(peer))).await.is_err() {
                            break;
                        }
                    }
                    Some(acceptor) => {
                        let (acceptor, tx) = (acceptor.clone(), tx.clone());
                        tokio::spawn(async move {
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                                Ok(Ok(tls)) => {
                                    let conn = Counted { inner: tls, _slot: slot };
                                    let _ = tx.send((Box::new(conn), PeerAddr(peer))).await;
                                }
                                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                            }
                        });
                    }
                }
            }
        });
        Ok(ServerListener { incoming: rx, local })
    }

    /// The next connection (after its TLS handshake); `None` once the accept task has ended.
    pub async fn accept(&mut self) -> Option<(Box<dyn Conn>, PeerAddr)> {
        self.incoming.recv().await
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_capped_per_source_except_for_trusted_proxies() {
        let limit = ConnLimit { per_source: 2, exempt: vec!["10.0.0.0/8".parse().expect("net")] };
        let open = Arc::new(OpenConns::default());
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let a = limit.admit(&open, ip("192.0.2.1")).expect("first");
        let b = limit.admit(&open, ip("::ffff:192.0.2.1")).expect("second");
        assert!(limit.admit(&open, ip("192.0.2.1")).is_none(), "third from the same source");
        assert!(limit.admit(&open, ip("192.0.2.2")).is_some(), "another source");
        drop(a);
        let c = limit.admit(&open, ip("192.0.2.1")).expect("a slot was freed");
        for _ in 0..10 {
            assert!(matches!(limit.admit(&open, ip("10.1.2.3")), Some(None)), "trusted proxies are not capped");
        }
        drop((b, c));
        assert!(open.lock().is_empty());
        let none = ConnLimit { per_source: 0, exempt: vec![] };
        for _ in 0..10 {
            assert!(matches!(none.admit(&open, ip("192.0.2.1")), Some(None)));
        }
    }
}
