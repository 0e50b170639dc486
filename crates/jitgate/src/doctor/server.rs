//! The server side: the settings file, the store (schema version, integrity, the audit chain),
//! the TLS certificate, the running server, free disk space.

use std::path::{Path, PathBuf};

use jitgate_api_types::doctor::CheckOut;
use jitgate_cli::doctor::{ServerCheckArgs, SERVER_CONFIG};
use jitgate_store::health::StoreHealth;

use super::{cert, certificate, disk, fact, fail, ok, pick, warn, Settings};

/// `jitgate serve`'s default data directory.
const DEFAULT_DATA_DIR: &str = "./jitgate-data";

pub async fn checks(args: ServerCheckArgs) -> Vec<CheckOut> {
    let (settings, config) = Settings::load(args.config.as_deref(), SERVER_CONFIG);
    let mut out: Vec<CheckOut> = config.into_iter().collect();
    let data_dir = PathBuf::from(
        pick(args.data_dir.map(|p| p.display().to_string()), "JITGATE_DATA_DIR", &settings, "data_dir")
            .unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
    );
    let database_url = pick(args.database_url, "JITGATE_DATABASE_URL", &settings, "database_url");

    match &database_url {
        Some(url) => {
            let shown = jitgate_store_postgres::redact(url);
            match jitgate_store_postgres::inspect(url).await {
                Ok(h) => out.extend(store_checks(&format!("PostgreSQL {shown}"), &h, "--database-url URL")),
                Err(e) => out.push(fail(
                    "database",
                    format!("PostgreSQL {shown}: {e}"),
                    "check that PostgreSQL runs and answers there, and the URL's user, password and database \
                     (psql with the same URL); a database no server has opened yet gets its schema at the server's first start",
                )),
            }
        }
        None => {
            let db = data_dir.join("jitgate.db");
            match jitgate_store_sqlite::inspect_file(&db) {
                Ok(h) => out.extend(store_checks(
                    &format!("SQLite {}", db.display()),
                    &h,
                    &format!("--data-dir {}", data_dir.display()),
                )),
                Err(e) => {
                    let detail = if db.exists() {
                        format!("cannot read {}: {e}", db.display())
                    } else {
                        format!("no database at {}", db.display())
                    };
                    out.push(fail(
                        "database",
                        detail,
                        "check --data-dir (or data_dir in the settings); the server makes jitgate.db at its first start; \
                         a file it cannot read: run the doctor as root or as the server's user",
                    ));
                }
            }
        }
    }

    let tls_off = settings.string("tls").is_some_and(|t| t.eq_ignore_ascii_case("off"));
    let cert_path = pick(args.tls_cert.map(|p| p.display().to_string()), "JITGATE_TLS_CERT", &settings, "tls_cert")
        .map(PathBuf::from);
    let own_cert = cert_path.is_some();
    let cert_path = cert_path.unwrap_or_else(|| data_dir.join("tls").join("cert.pem"));
    let mut expected_fingerprint = None;
    if tls_off {
        out.push(ok("tls", "TLS is off (tls = \"off\"): a TLS-terminating proxy in front of the server must serve it"));
    } else if !own_cert && !cert_path.exists() {
        out.push(warn(
            "tls",
            format!("no certificate yet at {}", cert_path.display()),
            "start the server once: it makes a self-signed certificate there (or give your own with tls_cert and tls_key)",
        ));
    } else {
        let info = cert::from_pem_file(&cert_path);
        expected_fingerprint = info.as_ref().ok().map(|i| i.fingerprint());
        let renew = if own_cert {
            "renew the certificate with your CA, replace the file, then reload the server (systemctl reload jitgate)"
        } else {
            "restart the server: it renews its self-signed certificate (same key) when it ends within 30 days; \
             agents that trust the certificate itself need the new cert.pem, those pinning the public key do not"
        };
        out.push(certificate(&cert_path.display().to_string(), info, renew));
    }

    let url = args.url.or_else(|| {
        settings.path.as_ref()?;
        let listen: std::net::SocketAddr = settings.string("listen")?.parse().ok()?;
        let host = match listen.ip() {
            std::net::IpAddr::V4(a) if a.is_unspecified() => "127.0.0.1".to_owned(),
            std::net::IpAddr::V6(a) if a.is_unspecified() => "[::1]".to_owned(),
            std::net::IpAddr::V6(a) => format!("[{a}]"),
            std::net::IpAddr::V4(a) => a.to_string(),
        };
        Some(format!("{}://{host}:{}", if tls_off { "http" } else { "https" }, listen.port()))
    });
    if let Some(url) = url {
        out.push(running(&url, expected_fingerprint.as_deref(), &cert_path).await);
    }

    let disk_dir = if database_url.is_some() && !data_dir.exists() { None } else { Some(&data_dir) };
    if let Some(dir) = disk_dir {
        out.push(disk(dir, "data directory"));
    }
    out
}

/// `database` and `audit` from what the store holds.
fn store_checks(store: &str, h: &StoreHealth, named: &str) -> Vec<CheckOut> {
    let mut out = Vec::new();
    let integrity = match &h.integrity {
        None => String::new(),
        Some(problems) if problems.is_empty() => ", integrity_check ok".into(),
        Some(problems) => format!(", integrity_check: {}", problems.join("; ")),
    };
    let detail = format!("{store}: schema version {} (this jitgate: {}){integrity}", h.schema, h.expected);
    let c = if h.integrity.as_ref().is_some_and(|p| !p.is_empty()) {
        fail(
            "database",
            detail,
            "the file is damaged: stop the server, keep a copy of the damaged file, and restore the last backup \
             (jitgate backup makes them; `jitgate audit verify --data-dir` checks one)",
        )
    } else if h.schema < h.expected {
        fail(
            "database",
            detail,
            format!("bring the schema up to date: jitgate migrate {named} (the server also does it at start)"),
        )
    } else if h.schema > h.expected {
        fail(
            "database",
            detail,
            "a newer jitgate wrote this database: install that version again (or restore a backup this version made)",
        )
    } else {
        ok("database", detail)
    };
    out.push(fact(fact(c, "schema", h.schema), "expectedSchema", h.expected));

    let head = match &h.head {
        Some((seq, hash)) => format!("head #{seq} {}…", hash.get(..16).unwrap_or(hash)),
        None => "empty log".into(),
    };
    let archived = h.audit.archived_through.map(|n| format!(" after the archives through #{n}")).unwrap_or_default();
    let c = if h.audit.valid {
        let n = h.audit.records;
        ok("audit", format!("chain verified: {n} record{}{archived}, {head}", if n == 1 { "" } else { "s" }))
    } else {
        let at =
            h.audit.first_invalid.map_or_else(|| "its end (records missing)".to_owned(), |n| format!("record #{n}"));
        fail(
            "audit",
            format!("chain BROKEN at {at} ({} records verified before it), {head}", h.audit.records),
            "records were changed or removed outside jitgate: copy the database as it is for investigation, \
             then restore the last backup whose chain verifies (jitgate audit verify --data-dir on it)",
        )
    };
    let mut c = fact(fact(c, "records", h.audit.records), "valid", h.audit.valid);
    if let Some((seq, hash)) = &h.head {
        c = fact(fact(c, "headSeq", *seq), "headHash", hash.clone());
    }
    if let Some(n) = h.audit.first_invalid {
        c = fact(c, "firstInvalid", n);
    }
    out.push(c);
    out
}

/// Whether the server answers at `url`, and with the certificate in `cert` (its fingerprint
/// compared, so a certificate from any CA can be checked on the host itself).
async fn running(url: &str, expected: Option<&str>, cert: &Path) -> CheckOut {
    let settings = jitgate_client::Settings::new(url)
        .timeouts(std::time::Duration::from_secs(5), std::time::Duration::from_secs(10));
    match jitgate_client::health::health(&settings, url, false).await {
        Err(e) => fail(
            "server",
            format!("{url} does not answer: {}", error_chain(&e)),
            "start the server (systemctl start jitgate; journalctl -u jitgate says why it stopped), or check --url / listen",
        ),
        Ok(h) if h.status != 200 => fail(
            "server",
            format!("{url}/healthz answered {}", h.status),
            "look at the server's log (journalctl -u jitgate)",
        ),
        Ok(h) => {
            let ms = h.elapsed.as_millis();
            let presented = h.peer_certificate.as_deref().and_then(cert::CertInfo::from_der).map(|i| i.fingerprint());
            match (expected, presented) {
                (Some(want), Some(got)) if want != got => warn(
                    "server",
                    format!("{url} answers in {ms} ms but presents another certificate (SHA-256 {got}) than {}", cert.display()),
                    "reload the server so that it serves the file's certificate: systemctl reload jitgate",
                ),
                _ => ok("server", format!("{url} answers /healthz in {ms} ms")),
            }
        }
    }
}

/// An error with its causes, as one line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut next = e.source();
    while let Some(s) = next {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = s.source();
    }
    parts.join(": ")
}
