//! TLS: the self-signed certificate made on first start, loading a certificate and key, and the
//! listener that hands axum finished TLS (or plain TCP) connections.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};
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
}

/// Makes `dir/cert.pem` and `dir/key.pem` (mode 0600) unless both exist. SANs: localhost,
/// 127.0.0.1, ::1 and `extra_sans` (names or addresses).
pub fn ensure_self_signed(dir: &Path, extra_sans: &[String]) -> Result<CertFiles, TlsError> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    if cert.exists() && key.exists() {
        return Ok(CertFiles { cert, key, generated: false });
    }
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| TlsError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut sans = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    sans.extend(extra_sans.iter().filter(|s| !s.trim().is_empty()).map(|s| s.trim().to_owned()));
    let mut params = rcgen::CertificateParams::new(sans).map_err(|e| TlsError::Generate(e.to_string()))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, "jitgate self-signed");
    params.distinguished_name.push(rcgen::DnType::OrganizationName, "jitgate");
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(825);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key_pair = rcgen::KeyPair::generate().map_err(|e| TlsError::Generate(e.to_string()))?;
    let certificate = params.self_signed(&key_pair).map_err(|e| TlsError::Generate(e.to_string()))?;
    write_private(&key, key_pair.serialize_pem().as_bytes()).map_err(io_err(&key))?;
    std::fs::write(&cert, certificate.pem()).map_err(io_err(&cert))?;
    Ok(CertFiles { cert, key, generated: true })
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

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
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
    let digest = Sha256::digest(certs[0].as_ref());
    Ok(digest.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":"))
}

/// A rustls server configuration from PEM files, with HTTP/2 and HTTP/1.1 offered.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs = read_certs(cert)?;
    let data = std::fs::read(key).map_err(|source| TlsError::Io { path: key.to_owned(), source })?;
    let key_der: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut data.as_slice())
        .map_err(|source| TlsError::Io { path: key.to_owned(), source })?
        .ok_or_else(|| TlsError::NoKey(key.to_owned()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Any connection the server speaks HTTP over.
pub trait Conn: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Conn for T {}

/// The remote address of a connection, as handlers see it (`ConnectInfo<PeerAddr>`).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// Accepts TCP connections and, with TLS, completes each handshake on its own task so that a
/// slow client never holds up the others.
pub struct ServerListener {
    incoming: mpsc::Receiver<(Box<dyn Conn>, PeerAddr)>,
    local: SocketAddr,
}

impl ServerListener {
    pub fn new(tcp: TcpListener, tls: Option<Arc<rustls::ServerConfig>>) -> io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, rx) = mpsc::channel::<(Box<dyn Conn>, PeerAddr)>(256);
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
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
                let _ = stream.set_nodelay(true);
                match &acceptor {
                    None => {
                        if tx.send((Box::new(stream), PeerAddr(peer))).await.is_err() {
                            break;
                        }
                    }
                    Some(acceptor) => {
                        let (acceptor, tx) = (acceptor.clone(), tx.clone());
                        tokio::spawn(async move {
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                                Ok(Ok(tls)) => {
                                    let _ = tx.send((Box::new(tls), PeerAddr(peer))).await;
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
}

impl Listener for ServerListener {
    type Io = Box<dyn Conn>;
    type Addr = PeerAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.incoming.recv().await {
            Some(conn) => conn,
            // The accept task only ends when this listener is gone; wait forever meanwhile.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(PeerAddr(self.local))
    }
}

impl Connected<IncomingStream<'_, ServerListener>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, ServerListener>) -> Self {
        *stream.remote_addr()
    }
}
