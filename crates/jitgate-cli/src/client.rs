//! The HTTPS client every jitgate command uses: trusts the server's CA (or self-signed)
//! certificate, keeps connections alive.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;

/// A client that trusts the certificates in `ca_cert` (PEM) besides nothing else.
pub fn http_client(ca_cert: Option<&Path>) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(64)
        .tcp_nodelay(true);
    if let Some(path) = ca_cert {
        let pem = std::fs::read(path).with_context(|| format!("reading CA certificate {}", path.display()))?;
        for cert in
            reqwest::Certificate::from_pem_bundle(&pem).with_context(|| format!("parsing {}", path.display()))?
        {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().context("building the HTTP client")
}
