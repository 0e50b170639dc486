//! Trusting a server by its fingerprint instead of a CA: the certificate it presents must have
//! one of the pinned SHA-256 fingerprints, of the certificate itself or of its public key (the
//! latter survives a renewal with the same key). The handshake's signature is still checked, so
//! only the holder of the pinned key can answer. The name in the URL is not checked: the pin
//! names the server.

use std::sync::Arc;

use jitgate_core::certinfo::{colon_hex, CertInfo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// A rustls client configuration that trusts exactly the servers whose certificate or public key
/// has one of `pins`, offering HTTP/2 and HTTP/1.1.
pub fn client_config(pins: &[[u8; 32]]) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinVerifier { pins: pins.to_vec(), algs: provider.signature_verification_algorithms });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

#[derive(Debug)]
struct PinVerifier {
    pins: Vec<[u8; 32]>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(info) = CertInfo::from_der(end_entity.as_ref()) else {
            return Err(rustls::Error::General("the server's certificate cannot be read".into()));
        };
        if self.pins.iter().any(|p| info.matches(p)) {
            return Ok(ServerCertVerified::assertion());
        }
        Err(rustls::Error::General(format!(
            "the server's certificate (SHA-256 {}, public key SHA-256 {}) matches no --server-fingerprint ({})",
            info.fingerprint(),
            info.key_fingerprint(),
            self.pins.iter().map(|p| colon_hex(p)).collect::<Vec<_>>().join(", ")
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}
