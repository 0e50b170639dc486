//! `jitgate serve`: data directory, logging, store, TLS, first-start bootstrap, listen, run.
//!
//! Every file the server writes is its owner's alone: the process umask is 0077 from the start
//! (the database, its WAL, the TLS key, archives, the key file, the bootstrap token file), and
//! files already in the data directory with wider modes are restricted at start.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use tokio::net::TcpListener;

use jitgate_cli::{ServeArgs, TlsMode};

use crate::common::{init_logging, shutdown_signal};
use crate::secrets;
use jitgate_core::audit::AuditEvent;
use jitgate_server::certs::{self, Reloadable};
use jitgate_server::oidc::{Oidc, OidcConfig};
use jitgate_server::tls::{self, ServerListener};
use jitgate_server::{auth, ServerConfig, SystemClock};
use jitgate_store::{NewToken, Store, TokenOrigin};

/// The name of the principal created on first start.
const OWNER: &str = "owner";

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    // Before any file is created: new files are readable and writable by their owner only.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    init_logging(args.log_format);
    create_private_dir(&args.data_dir)?;
    let data_dir = args.data_dir.canonicalize().with_context(|| format!("resolving {}", args.data_dir.display()))?;
    let _lock = secrets::lock_data_dir(&data_dir)?;
    secrets::secure_data_dir(&data_dir)?;
    if let Some(key) = &args.tls_key {
        warn_if_open(key);
    }
    let webhooks = webhook_rules(&args)?;
    let (keys, source) = secrets::load_keys(&data_dir, args.secrets_key_file.as_deref())?;
    let key_id = keys.current().id().to_owned();
    // SQLite in the data directory unless a PostgreSQL database is named.
    let (store, database): (Arc<dyn Store>, String) = match &args.database_url {
        Some(url) => {
            let pg = secrets::open_postgres(url, keys, &source).await?;
            let r = pg.seal_report();
            secrets::audit_sealing(&pg, r.sealed, r.resealed, &key_id, "start").await?;
            let m = pg.migration_report();
            if m.from != m.to {
                tracing::info!(from = m.from, to = m.to, "migrated the PostgreSQL schema");
            }
            (Arc::new(pg), jitgate_store_postgres::redact(url))
        }
        None => {
            let db = data_dir.join("jitgate.db");
            let sqlite = secrets::open_store(&db, keys, &source)?;
            let r = sqlite.seal_report();
            secrets::audit_sealing(&sqlite, r.sealed, r.resealed, &key_id, "start").await?;
            (Arc::new(sqlite), db.display().to_string())
        }
    };
    if matches!(&source, secrets::KeySource::File { path, .. } if path.parent() == Some(data_dir.as_path())) {
        tracing::info!(
            "the secrets key file sits beside the database: keep it out of the database's backups, or move it (--secrets-key-file) or into JITGATE_SECRETS_KEY"
        );
    }

    let (tls_config, certs) = match args.tls {
        TlsMode::Off => {
            tracing::warn!("TLS IS OFF: serving plain HTTP. Bearer tokens cross the network in clear text. Only do this behind a TLS-terminating proxy on the same host.");
            eprintln!(
                "\n  WARNING: jitgate is serving PLAIN HTTP (--tls off). Put a TLS-terminating proxy in front of it.\n"
            );
            (None, None)
        }
        TlsMode::On => {
            let self_signed = args.tls_cert.is_none();
            let files = match (&args.tls_cert, &args.tls_key) {
                (Some(cert), Some(key)) => tls::CertFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    generated: false,
                    replaced: None,
                    renewed: None,
                },
                _ => tls::ensure_self_signed(&data_dir.join("tls"), &certificate_names(&args))?,
            };
            report_self_signed(&files);
            let reloadable = Reloadable::load(&files.cert, &files.key)?;
            let names = self_signed.then(|| (data_dir.join("tls"), certificate_names(&args)));
            (Some(reloadable.server_config()?), Some((reloadable, names)))
        }
    };
    let cert_path = certs.as_ref().map(|(r, _)| r.cert_path().to_owned());

    let listener = TcpListener::bind(args.listen).await.map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
            "; another process (another jitgate?) listens there: stop it, or choose another address with --listen (port 0 picks a free one)"
        } else if e.kind() == std::io::ErrorKind::AddrNotAvailable {
            "; this machine has no such address: choose one of its own with --listen (0.0.0.0 for all)"
        } else if e.kind() == std::io::ErrorKind::PermissionDenied {
            "; ports below 1024 need root or CAP_NET_BIND_SERVICE: choose another with --listen"
        } else {
            ""
        };
        anyhow::anyhow!("listening on {} (--listen): {e}{hint}", args.listen)
    })?;
    let local = listener.local_addr()?;
    let scheme = if tls_config.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{local}");
    let login = login_url(scheme, local, cert_path.as_deref());

    let max_token_lifetime = max_token_lifetime(&args.max_token_lifetime)?;
    if let Some((reloadable, _)) = &certs {
        let info = reloadable.info();
        println!("TLS certificate: {} (SHA-256 {})", reloadable.cert_path().display(), info.fingerprint());
        println!(
            "TLS public key: SHA-256 {} (agents and the CLI may pin it: --server-fingerprint; it stays when the certificate is renewed)",
            info.key_fingerprint()
        );
        warn_if_ending(&info, reloadable.cert_path());
    }
    if let Some((reloadable, names)) = certs {
        tokio::spawn(keep_certificate(reloadable, names));
    }
    bootstrap(store.as_ref(), &args, max_token_lifetime, &login, &url, cert_path.as_deref()).await?;
    if local.ip().is_unspecified() {
        // Listening on every address: the ones other machines use (the certificate covers them).
        let others: Vec<String> = jitgate_agent::local_addresses()
            .into_iter()
            .filter(|a| local.ip().is_ipv6() || a.is_ipv4())
            .map(|a| format!("{scheme}://{}", std::net::SocketAddr::new(a, local.port())))
            .collect();
        if !others.is_empty() {
            println!("From other machines: {}", others.join(", "));
        }
    }

    let trusted_proxies = ranges("--trusted-proxy", &args.trusted_proxy)?;
    let oidc = match (&args.oidc_issuer, &args.oidc_audience) {
        (Some(issuer), Some(audience)) => Some(Oidc::new(OidcConfig {
            issuer: issuer.clone(),
            audience: audience.clone(),
            jwks_file: args.oidc_jwks_file.clone(),
            claim: args.oidc_claim.clone(),
            leeway: std::time::Duration::from_secs(60),
        })?),
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
    if args.lease_ttl < std::time::Duration::from_secs(1) {
        bail!("--lease-ttl must be at least 1s (a lease renews every third of it)");
    }
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
        webhooks,
        max_token_lifetime,
        lease_ttl: args.lease_ttl,
        server_timing: args.server_timing,
        metrics_allow: if args.metrics_allow.iter().any(|a| a.trim().eq_ignore_ascii_case("none")) {
            Vec::new()
        } else {
            ranges("--metrics-allow", &args.metrics_allow)?
        },
    };
    let listener = ServerListener::new(listener, tls_config, conn_limit)?;
    let shutdown = shutdown_signal();
    println!("{}{url}", jitgate_client::local::LISTENING_PREFIX);
    std::io::stdout().flush().ok();
    tracing::info!(%url, data_dir = %data_dir.display(), %database, "jitgate serving");
    jitgate_server::run(listener, store.clone(), Arc::new(SystemClock), config, oidc, shutdown).await?;
    drop(store);
    tracing::info!("jitgate stopped");
    Ok(())
}

/// Says what [`tls::ensure_self_signed`] did: made, replaced or renewed the certificate.
fn report_self_signed(files: &tls::CertFiles) {
    if let Some(old) = &files.replaced {
        tracing::warn!(
            cert = %files.cert.display(),
            old_fingerprint = %old.old_fingerprint,
            missing = %old.missing.join(","),
            "made a new self-signed TLS certificate: the old one did not cover every listen address and --tls-san"
        );
        eprintln!(
            "jitgate: made a new self-signed certificate: the old one (SHA-256 {}) did not cover {}. It keeps the \
             old key, so clients that pin the public key keep working; clients that pinned the certificate's own \
             fingerprint need the new one, and clients should be given the new {}.",
            old.old_fingerprint,
            old.missing.join(", "),
            files.cert.display()
        );
    } else if let Some(ended) = files.renewed {
        tracing::info!(
            cert = %files.cert.display(),
            old_end = %jitgate_core::rfc3339(ended),
            "renewed the self-signed TLS certificate before its end, with the same key"
        );
    } else if files.generated {
        tracing::info!(cert = %files.cert.display(), "made a self-signed TLS certificate");
    }
}

/// Warns when the certificate in use ends within [`certs::RENEW_BEFORE`].
fn warn_if_ending(info: &jitgate_core::certinfo::CertInfo, path: &Path) {
    let now = time::OffsetDateTime::now_utc();
    if certs::due_for_renewal(info.not_after, now) {
        tracing::warn!(
            cert = %path.display(),
            not_after = %jitgate_core::rfc3339(info.not_after),
            "the TLS certificate ends within 30 days: replace the files and send SIGHUP (systemctl reload jitgate)"
        );
    }
}

/// How often the server looks whether its certificate is due for renewal.
const CERTIFICATE_CHECK: std::time::Duration = std::time::Duration::from_secs(12 * 3600);

/// Keeps the certificate current while the server runs: on SIGHUP it reads the certificate and
/// key files again (the self-signed one is first renewed or widened when due), and every 12
/// hours it renews the self-signed one when it ends within 30 days (or warns about an
/// operator's). A file that cannot be used leaves the certificate in use as it was.
async fn keep_certificate(reloadable: Arc<Reloadable>, self_signed: Option<(std::path::PathBuf, Vec<String>)>) {
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "SIGHUP cannot be caught: the TLS certificate is read at start only");
            None
        }
    };
    let mut tick = tokio::time::interval(CERTIFICATE_CHECK);
    tick.tick().await;
    loop {
        let asked = tokio::select! {
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
            _ = tick.tick() => false,
        };
        if let Some((dir, names)) = &self_signed {
            match tls::ensure_self_signed(dir, names) {
                Ok(files) if files.generated => report_self_signed(&files),
                Ok(_) if !asked => continue,
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "renewing the self-signed TLS certificate failed; the one in use stays");
                    continue;
                }
            }
        } else if !asked {
            warn_if_ending(&reloadable.info(), reloadable.cert_path());
            continue;
        }
        match reloadable.reload() {
            Ok(info) => tracing::info!(
                cert = %reloadable.cert_path().display(),
                fingerprint = %info.fingerprint(),
                public_key = %info.key_fingerprint(),
                not_after = %jitgate_core::rfc3339(info.not_after),
                "TLS certificate loaded; new connections get it, open ones keep theirs"
            ),
            Err(e) => tracing::error!(error = %e, "reloading the TLS certificate failed; the one in use stays"),
        }
    }
}

/// The names and addresses the self-signed certificate must cover: the listen address (every
/// address of this machine for 0.0.0.0 or ::) and `--tls-san`.
fn certificate_names(args: &ServeArgs) -> Vec<String> {
    let ip = args.listen.ip();
    let mut names: Vec<String> = if ip.is_unspecified() {
        jitgate_agent::local_addresses()
            .into_iter()
            .filter(|a| ip.is_ipv6() || a.is_ipv4())
            .map(|a| a.to_string())
            .collect()
    } else {
        vec![ip.to_string()]
    };
    names.extend(args.tls_san.iter().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()));
    names
}

/// Where the login block sends clients, when a client can verify it: the listen address (the
/// loopback address for 0.0.0.0 or ::), or `None` when the certificate does not cover it.
fn login_url(scheme: &str, local: std::net::SocketAddr, cert: Option<&Path>) -> Result<String, String> {
    let ip = match local.ip() {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        other => other,
    };
    let at = std::net::SocketAddr::new(ip, local.port());
    let url = format!("{scheme}://{at}");
    match cert.map(|c| tls::not_covered(c, &[ip.to_string()])) {
        Some(Ok(missing)) if !missing.is_empty() => Err(format!(
            "the certificate {} does not cover {ip}: connect with a name it covers (give the server a certificate \
             that covers the name clients use)",
            cert.map(|c| c.display().to_string()).unwrap_or_default()
        )),
        _ => Ok(url),
    }
}

/// `--max-token-lifetime`: a duration (`90d`, `PT12H` …), or `none`/`0` for no maximum.
fn max_token_lifetime(text: &str) -> anyhow::Result<Option<time::Duration>> {
    if matches!(text.trim().to_ascii_lowercase().as_str(), "none" | "0" | "unlimited") {
        return Ok(None);
    }
    let iso = jitgate_cli::iso_duration(text).context("--max-token-lifetime")?;
    let d = jitgate_core::AccessDuration::parse(&iso)
        .map_err(|e| anyhow::anyhow!("--max-token-lifetime: {}", e.0))?
        .duration();
    if d <= time::Duration::ZERO {
        bail!("--max-token-lifetime must be positive (or none)");
    }
    Ok(Some(d))
}

/// On an empty store: creates the Owner and prints its token this once (and writes it to
/// --bootstrap-token-file, mode 0600). With --reissue-owner-token on a store that has one, makes
/// the Owner a new token the same way.
async fn bootstrap(
    store: &dyn Store,
    args: &ServeArgs,
    max_lifetime: Option<time::Duration>,
    login: &Result<String, String>,
    url: &str,
    cert: Option<&Path>,
) -> anyhow::Result<()> {
    let token = auth::new_token();
    let now = time::OffsetDateTime::now_utc();
    let expires = max_lifetime.map(|m| now + m);
    let audit = auth::bootstrap_event(OWNER, now);
    let headline = if store.bootstrap(OWNER, &auth::hash_token(&token), expires, audit.clone()).await? {
        format!("first start. Created the Owner principal \"{OWNER}\"")
    } else if args.reissue_owner_token {
        let new = NewToken {
            principal: OWNER.into(),
            token_hash: auth::hash_token(&token),
            expires,
            origin: TokenOrigin::Server,
        };
        let audit = AuditEvent { resource_id: format!("/api/v1/principals/{OWNER}/tokens"), ..audit };
        store
            .create_token(new, audit.with("reason", "--reissue-owner-token"))
            .await
            .with_context(|| format!("--reissue-owner-token: making a token for \"{OWNER}\""))?;
        tracing::warn!("made a new token for the Owner (--reissue-owner-token); remove the flag");
        format!("made a new token for the Owner principal \"{OWNER}\" (--reissue-owner-token; remove the flag now)")
    } else {
        tracing::info!("store already initialised; no new admin token");
        return Ok(());
    };
    if let Some(path) = &args.bootstrap_token_file {
        tls::write_private(path, format!("{token}\n").as_bytes())
            .with_context(|| format!("writing the admin token to {}", path.display()))?;
    }
    let lifetime = match expires {
        Some(at) => format!(
            "It expires at {} (--max-token-lifetime {}); tokens made with it expire no later.",
            jitgate_core::rfc3339(at.replace_nanosecond(0).unwrap_or(at)),
            args.max_token_lifetime
        ),
        None => "It does not expire (--max-token-lifetime none).".to_string(),
    };
    let out = first_start_message(&headline, &token, &lifetime, login, url, cert);
    print!("{out}");
    std::io::stdout().flush().ok();
    Ok(())
}

/// What a first start prints: the admin token this once, how to use it from a shell, and the
/// portal's address.
/// `login` is the URL a shell can use (or why none verifies); `url` the one the server listens on.
fn first_start_message(
    headline: &str,
    token: &str,
    lifetime: &str,
    login: &Result<String, String>,
    url: &str,
    cert: Option<&Path>,
) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "\njitgate: {headline}. Its admin token is shown this once:\n\n    {token}\n\n{lifetime}\n\n"
    ));
    match login {
        Ok(url) => {
            out.push_str("Log in from a shell:\n");
            out.push_str(&format!("    export JITGATE_URL={url}\n    export JITGATE_TOKEN={token}\n"));
            if let Some(cert) = cert {
                out.push_str(&format!("    export JITGATE_CA_CERT={}\n", cert.display()));
                out.push_str("    curl --cacert \"$JITGATE_CA_CERT\" -H \"Authorization: Bearer $JITGATE_TOKEN\" \"$JITGATE_URL/api/v1/vms\"\n\n");
            } else {
                out.push_str("    curl -H \"Authorization: Bearer $JITGATE_TOKEN\" \"$JITGATE_URL/api/v1/vms\"\n\n");
            }
        }
        Err(why) => out.push_str(&format!("Log in: {why}.\n    export JITGATE_TOKEN={token}\n\n")),
    }
    if cert.is_some() {
        out.push_str("The portal uses the TLS certificate above: compare its SHA-256 if the browser asks.\n");
    }
    out.push_str(&format!("In a browser: open {} and sign in with the token above\n", portal_url(url)));
    out
}

/// The portal's address for a browser: the listening URL with `/`, an unspecified address
/// (`0.0.0.0`, `::`) shown as loopback.
fn portal_url(url: &str) -> String {
    let url = url.replacen("://0.0.0.0:", "://127.0.0.1:", 1).replacen("://[::]:", "://[::1]:", 1);
    format!("{}/", url.trim_end_matches('/'))
}

/// The addresses or CIDR ranges given with `flag`, as written (a single address is its own range).
fn ranges(flag: &str, values: &[String]) -> anyhow::Result<Vec<ipnet::IpNet>> {
    values
        .iter()
        .map(|p| {
            let p = p.trim();
            p.parse::<ipnet::IpNet>()
                .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .with_context(|| format!("{flag} '{p}' is not an address or CIDR range"))
        })
        .collect()
}

/// Where webhooks may go, from `--webhook-allow-http` and `--webhook-allow-range`.
fn webhook_rules(args: &ServeArgs) -> anyhow::Result<jitgate_core::destination::Rules> {
    let allowed: Vec<ipnet::IpNet> =
        ranges("--webhook-allow-range", &args.webhook_allow_range)?.iter().map(ipnet::IpNet::trunc).collect();
    if args.webhook_allow_http {
        tracing::warn!("webhooks may use plain http:// (--webhook-allow-http)");
    }
    for n in &allowed {
        tracing::warn!(range = %n, "webhooks may reach this range (--webhook-allow-range)");
    }
    Ok(jitgate_core::destination::Rules { allow_http: args.webhook_allow_http, allowed })
}

/// Warns when a file the operator gave (a TLS key) can be read by group or others.
fn warn_if_open(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode() & 0o7777;
            if mode & 0o077 != 0 {
                tracing::warn!(file = %path.display(), mode = format!("{mode:04o}"), "a private key is open to group or others");
                eprintln!("jitgate: WARNING: {} is mode {mode:04o}; a private key should be 0600", path.display());
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_start_message_ends_with_the_portal_address() {
        let m = first_start_message(
            "created",
            "jg_x",
            "It does not expire.",
            &Ok("https://127.0.0.1:8443".into()),
            "https://127.0.0.1:8443",
            None,
        );
        assert!(m.contains("    jg_x\n"), "{m}");
        assert!(m.ends_with("open https://127.0.0.1:8443/ and sign in with the token above\n"), "{m}");
        let m = first_start_message(
            "created",
            "jg_x",
            "",
            &Err("not covered".into()),
            "https://0.0.0.0:9443",
            Some(Path::new("/d/tls/cert.pem")),
        );
        assert!(m.ends_with("open https://127.0.0.1:9443/ and sign in with the token above\n"), "{m}");
        assert_eq!(portal_url("https://[::]:8443"), "https://[::1]:8443/");
    }

    #[test]
    fn the_maximum_token_lifetime_flag() {
        assert_eq!(max_token_lifetime("90d").ok(), Some(Some(time::Duration::days(90))));
        assert_eq!(max_token_lifetime("PT12H").ok(), Some(Some(time::Duration::hours(12))));
        assert_eq!(max_token_lifetime("30m").ok(), Some(Some(time::Duration::minutes(30))));
        for unlimited in ["none", "0", "NONE", "unlimited"] {
            assert_eq!(max_token_lifetime(unlimited).ok(), Some(None), "{unlimited}");
        }
        for bad in ["soon", "P1Y", "PT0S", "-1d", ""] {
            assert!(max_token_lifetime(bad).is_err(), "{bad}");
        }
    }
}
