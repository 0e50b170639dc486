//! `jitgate serve`: data directory, logging, store, TLS, first-start bootstrap, listen, run.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use tokio::net::TcpListener;

use jitgate_cli::{ServeArgs, TlsMode};

use crate::common::{init_logging, shutdown_signal};
use jitgate_core::audit::{ops, AuditEvent, AuditStatus};
use jitgate_server::oidc::{Oidc, OidcConfig};
use jitgate_server::tls::{self, ServerListener};
use jitgate_server::{auth, ServerConfig, SystemClock};
use jitgate_store::Store;
use jitgate_store_sqlite::SqliteStore;

/// The name of the principal created on first start.
const OWNER: &str = "owner";

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    init_logging(args.log_format);
    create_private_dir(&args.data_dir)?;
    let data_dir = args.data_dir.canonicalize().with_context(|| format!("resolving {}", args.data_dir.display()))?;
    let db = data_dir.join("jitgate.db");
    let store: Arc<SqliteStore> =
        Arc::new(SqliteStore::open(&db).with_context(|| format!("opening {}", db.display()))?);

    let (tls_config, cert_path) = match args.tls {
        TlsMode::Off => {
            tracing::warn!("TLS IS OFF: serving plain HTTP. Bearer tokens cross the network in clear text. Only do this behind a TLS-terminating proxy on the same host.");
            eprintln!(
                "\n  WARNING: jitgate is serving PLAIN HTTP (--tls off). Put a TLS-terminating proxy in front of it.\n"
            );
            (None, None)
        }
        TlsMode::On => {
            let files = match (&args.tls_cert, &args.tls_key) {
                (Some(cert), Some(key)) => tls::CertFiles { cert: cert.clone(), key: key.clone(), generated: false },
                _ => tls::ensure_self_signed(&data_dir.join("tls"), &args.tls_san)?,
            };
            if files.generated {
                tracing::info!(cert = %files.cert.display(), "made a self-signed TLS certificate");
            }
            (Some(tls::server_config(&files.cert, &files.key)?), Some(files.cert))
        }
    };

    let listener = TcpListener::bind(args.listen).await.with_context(|| format!("listening on {}", args.listen))?;
    let local = listener.local_addr()?;
    let scheme = if tls_config.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{local}");

    bootstrap(store.as_ref(), &args, &url, cert_path.as_deref()).await?;
    if let Some(cert) = &cert_path {
        println!("TLS certificate: {} (SHA-256 {})", cert.display(), tls::fingerprint(cert)?);
    }

    let trusted_proxies = args
        .trusted_proxy
        .iter()
        .map(|p| {
            let p = p.trim();
            p.parse::<ipnet::IpNet>()
                .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .with_context(|| format!("--trusted-proxy '{p}' is not an address or CIDR range"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let oidc = match (&args.oidc_issuer, &args.oidc_audience) {
        (Some(issuer), Some(audience)) => Some(
            Oidc::new(OidcConfig {
                issuer: issuer.clone(),
                audience: audience.clone(),
                jwks_file: args.oidc_jwks_file.clone(),
                claim: args.oidc_claim.clone(),
                leeway: std::time::Duration::from_secs(60),
            })
            .map_err(|e| anyhow::anyhow!(e))?,
        ),
        _ => None,
    };
    let rate = |flag: &str, text: &str| {
        jitgate_server::ratelimit::Rate::parse(text).map_err(|e| anyhow::anyhow!("--{flag}: {e}"))
    };
    let limits = jitgate_server::limits::LimitConfig {
        signin: rate("rate-limit-signin", &args.rate_limit_signin)?,
        initiate: rate("rate-limit-initiate", &args.rate_limit_initiate)?,
        tokens: rate("rate-limit-tokens", &args.rate_limit_tokens)?,
        join: rate("rate-limit-join", &args.rate_limit_join)?,
        audit_summary_interval: args.audit_summary_interval,
        header_timeout: args.header_timeout,
        body_timeout: args.body_timeout,
        connections_per_source: args.max_connections_per_source,
        long_polls_per_agent: args.max_long_polls_per_agent,
    };
    let conn_limit = tls::ConnLimit { per_source: limits.connections_per_source, exempt: trusted_proxies.clone() };
    let config = ServerConfig {
        limits,
        tls: tls_config.is_some(),
        list_page_size: args.list_page_size as usize,
        max_body_bytes: usize::try_from(args.max_body_bytes).unwrap_or(ServerConfig::DEFAULT_MAX_BODY),
        public_url: args.public_url.clone(),
        trusted_proxies,
        audit_retention: match &args.audit_retention {
            None => None,
            Some(text) => {
                let iso = jitgate_cli::iso_duration(text)?;
                let keep = jitgate_core::AccessDuration::parse(&iso)
                    .map_err(|e| anyhow::anyhow!("--audit-retention: {}", e.0))?
                    .duration();
                if keep <= time::Duration::ZERO {
                    bail!("--audit-retention must be positive");
                }
                Some((keep, data_dir.join("audit-archive")))
            }
        },
    };
    let listener = ServerListener::new(listener, tls_config, conn_limit)?;
    let shutdown = shutdown_signal();
    println!("{}{url}", jitgate_cli::local::LISTENING_PREFIX);
    std::io::stdout().flush().ok();
    tracing::info!(%url, data_dir = %data_dir.display(), "jitgate serving");
    let dyn_store: Arc<dyn Store> = store.clone();
    jitgate_server::run(listener, dyn_store, Arc::new(SystemClock), config, oidc, shutdown).await?;
    drop(store);
    tracing::info!("jitgate stopped");
    Ok(())
}

/// On an empty store: creates the Owner and prints its token this once (and writes it to
/// --bootstrap-token-file, mode 0600).
async fn bootstrap(store: &dyn Store, args: &ServeArgs, url: &str, cert: Option<&Path>) -> anyhow::Result<()> {
    let token = auth::new_token();
    let audit = AuditEvent {
        time: time::OffsetDateTime::now_utc(),
        operation: ops::PRINCIPAL_WRITE.into(),
        status: AuditStatus::Started,
        caller: "jitgate".into(),
        caller_ip: None,
        resource_id: format!("/principals/{OWNER}"),
        correlation_id: "bootstrap".into(),
        properties: Default::default(),
    };
    if !store.bootstrap(OWNER, &auth::hash_token(&token), audit).await? {
        tracing::info!("store already initialised; no new admin token");
        return Ok(());
    }
    if let Some(path) = &args.bootstrap_token_file {
        tls::write_private(path, format!("{token}\n").as_bytes())
            .with_context(|| format!("writing the admin token to {}", path.display()))?;
    }
    let mut out = String::new();
    out.push_str(&format!("\njitgate: first start. Created the Owner principal \"{OWNER}\". Its admin token is shown this once:\n\n    {token}\n\n"));
    out.push_str("Log in from a shell:\n");
    out.push_str(&format!("    export JITGATE_URL={url}\n    export JITGATE_TOKEN={token}\n"));
    if let Some(cert) = cert {
        out.push_str(&format!("    export JITGATE_CA_CERT={}\n", cert.display()));
        out.push_str("    curl --cacert \"$JITGATE_CA_CERT\" -H \"Authorization: Bearer $JITGATE_TOKEN\" \"$JITGATE_URL/api/v1/vms\"\n\n");
    } else {
        out.push_str("    curl -H \"Authorization: Bearer $JITGATE_TOKEN\" \"$JITGATE_URL/api/v1/vms\"\n\n");
    }
    print!("{out}");
    std::io::stdout().flush().ok();
    Ok(())
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        if !dir.is_dir() {
            bail!("--data-dir {} exists and is not a directory", dir.display());
        }
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).with_context(|| format!("creating --data-dir {}", dir.display()))
}
