//! Output formats (`-o table|json|yaml`), the CLI's exit codes, and the server error they come from.

use std::fmt;

use clap::ValueEnum;
use serde::Serialize;
use serde_json::Value;

use jitgate_client::oidc::OidcError;
use jitgate_client::ClientError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for people.
    #[default]
    Table,
    /// The API's own JSON.
    Json,
    /// The same as YAML.
    Yaml,
}

/// Exit codes, documented in `jitgate --help` and the README.
pub mod exit {
    pub const OK: i32 = 0;
    pub const ERROR: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const DENIED: i32 = 3;
    pub const NOT_FOUND: i32 = 4;
    pub const TIMEOUT: i32 = 5;
    /// `--wait` (and `connect`) on a VM no live enforcement point serves: nothing opens or
    /// closes its ports.
    pub const NOT_ENFORCED: i32 = 6;
}

/// What to do next after an error: from the server's status and code when it refused
/// (`api`), else from the error's text (its whole chain). `None` when there is nothing to add.
pub fn hint(api: Option<(u16, &str)>, text: &str) -> Option<&'static str> {
    if let Some((status, code)) = api {
        let by_code = match code {
            "PrincipalNotFound" => {
                Some("create the principal first: jitgate principal create NAME (jitgate principal list shows who exists)")
            }
            "VirtualMachineNotFound" => Some(
                "register the VM first: run `jitgate agent` on it (it registers itself), or jitgate vm add --id … for a VM behind a gateway; jitgate vm list shows what exists",
            ),
            "PolicyNotFound" => Some(
                "no JIT policy there yet: enable one with jitgate policy set -g RESOURCE_GROUP -l LOCATION --vm NAME --port 22 (jitgate policy list shows what exists)",
            ),
            "InvalidSubscriptionId" => Some(
                "a subscription is any GUID you choose to group your VMs by (make one with uuidgen); give it with --subscription or JITGATE_SUBSCRIPTION",
            ),
            "AgentNotFound" => Some("jitgate agent list shows the agents and their ids"),
            "TokenNotFound" => Some("jitgate token list shows your tokens and their ids"),
            "RequestNotFound" => Some("jitgate access list shows the requests and their ids"),
            "RoleDefinitionNotFound" => Some("jitgate role list shows the roles"),
            "EnforcementTimeout" => Some(
                "the grant is recorded; an enforcement point did not apply it in time: jitgate agent list shows when each last reported",
            ),
            "StorageFull" => Some(
                "the server's data directory is full: free space on its disk (jitgate doctor on the server shows it); nothing was changed, so the same command then succeeds",
            ),
            "StorageFailed" => Some(
                "the server's disk failed an fsync: check the disk, restart jitgate serve, then repeat the command",
            ),
            "InvalidJoinToken" => Some(
                "join tokens are single-use and expire: make a new one with jitgate agent token create … (--vm NAME for a VM that is already registered)",
            ),
            _ => None,
        };
        if by_code.is_some() {
            return by_code;
        }
        return match status {
            401 => Some(
                "the token is unknown, expired or revoked: sign in again (jitgate login) or get a new token (jitgate token create)",
            ),
            403 => Some(
                "your roles do not allow this here: jitgate whoami shows them; an Owner can give you one (jitgate role assign)",
            ),
            _ => None,
        };
    }
    if text.contains("UnknownIssuer")
        || text.contains("self-signed certificate")
        || text.contains("unable to get local issuer")
    {
        Some("the server's certificate is not trusted here: give its certificate with --ca-cert DATA_DIR/tls/cert.pem (or JITGATE_CA_CERT), copied from the server's data directory")
    } else if text.contains("certificate not valid yet") || text.contains("certificate expired") {
        Some("the server's certificate is not valid at this host's clock (the error has both times, in Unix seconds): if this host's clock is wrong, set it (timedatectl set-ntp true); an agent may instead trust the server by its key with --server-fingerprint, which does not depend on the clock")
    } else if text.contains("NotValidForName") || text.contains("not valid for name") {
        Some("the server's certificate does not cover the host in the URL: use a name or address it covers, or restart the server with --tls-san HOST (or --listen on that address); its self-signed certificate is then made again")
    } else if (text.contains("Connection refused") || text.contains("connection refused"))
        && (text.contains("postgres://") || text.contains("postgresql://"))
    {
        Some("no PostgreSQL answers at that address: check the host and port of --database-url / JITGATE_DATABASE_URL, and that the database server runs")
    } else if text.contains("Connection refused") || text.contains("connection refused") {
        Some("nothing listens at that address: is `jitgate serve` running there, and are --url / JITGATE_URL (or --server for the agent) right?")
    } else if text.contains("dns error") || text.contains("failed to lookup address") {
        Some("the server's name does not resolve: check --url / JITGATE_URL (or --server for the agent)")
    } else if text.contains("not a GUID") {
        Some("a subscription is any GUID you choose to group your VMs by (make one with uuidgen); give it with --subscription or JITGATE_SUBSCRIPTION")
    } else {
        None
    }
}

/// Prints a warning on stderr for each VM an answer marks as not enforced; returns the names
/// of those with no enforcement point at all.
pub fn warn_unenforced<'a>(vms: impl Iterator<Item = (&'a str, Option<&'a str>, Option<&'a str>)>) -> Vec<String> {
    let mut none = Vec::new();
    for (id, state, warning) in vms {
        let Some(state) = state else { continue };
        let name = name_of(id);
        let why = warning.unwrap_or("it is not enforced");
        eprintln!("jitgate: WARNING: {name} is NOT ENFORCED ({state}): {why}");
        if state == "NotEnforced" {
            none.push(name);
        }
    }
    none
}

/// A failure the CLI itself names, with its exit code.
#[derive(Debug, Clone)]
pub struct CliFailure {
    pub exit: i32,
    pub message: String,
}

impl fmt::Display for CliFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliFailure {}

/// Why a command failed. Each kind keeps what caused it as its source.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A failure the CLI names itself, with its exit code.
    #[error(transparent)]
    Failure(#[from] CliFailure),
    /// A call to the server failed (a refusal carries the server's status, code and message).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Signing in through the OIDC issuer failed.
    #[error(transparent)]
    Oidc(#[from] OidcError),
    /// A local server (for `bench`) did not start or stop.
    #[error(transparent)]
    Local(#[from] jitgate_client::local::LocalServerError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Task(#[from] tokio::task::JoinError),
}

pub fn fail(exit: i32, message: impl Into<String>) -> CliError {
    CliError::Failure(CliFailure { exit, message: message.into() })
}

/// The exit code for a server status: 3 denied (401/403), 4 not found (404), 5 timeout, 1 otherwise.
fn status_exit(status: u16) -> i32 {
    match status {
        401 | 403 => exit::DENIED,
        404 => exit::NOT_FOUND,
        408 | 504 => exit::TIMEOUT,
        _ => exit::ERROR,
    }
}

fn client_exit(e: &ClientError) -> i32 {
    match e.status() {
        Some(status) => status_exit(status),
        None if e.is_timeout() => exit::TIMEOUT,
        None => exit::ERROR,
    }
}

/// The exit code for an error: its own, or 3 denied (401/403), 4 not found (404), 5 timeout, 1
/// otherwise.
pub fn exit_code(e: &CliError) -> i32 {
    match e {
        CliError::Failure(f) => f.exit,
        CliError::Client(c) => client_exit(c),
        CliError::Oidc(o) => match o {
            OidcError::NotConfigured => exit::USAGE,
            OidcError::Refused(_) | OidcError::WrongState => exit::DENIED,
            OidcError::TimedOut => exit::TIMEOUT,
            OidcError::Server(c) => client_exit(c),
            _ => exit::ERROR,
        },
        _ => exit::ERROR,
    }
}

/// Prints `value` as JSON or YAML (keys in order, as the API's own JSON reads), or calls
/// `table` for the human form.
pub fn print<T: Serialize>(format: OutputFormat, value: &T, table: impl FnOnce(&T)) {
    let json = || serde_json::to_value(value).unwrap_or(Value::Null);
    match format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&json()).unwrap_or_default()),
        OutputFormat::Yaml => print!("{}", yaml(&json())),
        OutputFormat::Table => table(value),
    }
}

/// An optional number as JSON writes it (`null` when absent).
pub fn number(n: Option<i64>) -> String {
    n.map(|n| n.to_string()).unwrap_or_else(|| "null".to_owned())
}

/// The last segment of an ARM id: the resource's name.
pub fn name_of(id: &str) -> String {
    id.rsplit('/').next().unwrap_or("").to_owned()
}

/// Aligned columns: a header row, then one row per item.
pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths.get(i).copied().unwrap_or(0)))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
}

/// A small YAML writer for JSON values (block style; strings quoted when needed).
pub fn yaml(v: &Value) -> String {
    let mut out = String::new();
    write_yaml(v, 0, &mut out, true);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => {
            let plain = !s.is_empty()
                && s.chars().all(|c| c.is_alphanumeric() || "-_./:@".contains(c))
                && !matches!(s.as_str(), "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "~")
                && s.parse::<f64>().is_err()
                && !s.starts_with(['-', ':', '@', '/']);
            if plain {
                s.clone()
            } else {
                serde_json::to_string(s).unwrap_or_default()
            }
        }
        _ => String::new(),
    }
}

fn write_yaml(v: &Value, indent: usize, out: &mut String, top: bool) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(map) if map.is_empty() => out.push_str("{}\n"),
        Value::Array(a) if a.is_empty() => out.push_str("[]\n"),
        Value::Object(map) => {
            if !top {
                out.push('\n');
            }
            for (k, val) in map {
                out.push_str(&format!("{pad}{}:", scalar(&Value::String(k.clone()))));
                match val {
                    Value::Object(m) if !m.is_empty() => write_yaml(val, indent + 2, out, false),
                    Value::Array(a) if !a.is_empty() => write_yaml(val, indent, out, false),
                    _ => {
                        out.push(' ');
                        write_yaml(val, indent + 2, out, false);
                    }
                }
            }
        }
        Value::Array(a) => {
            if !top {
                out.push('\n');
            }
            for item in a {
                out.push_str(&format!("{pad}- "));
                match item {
                    Value::Object(m) if !m.is_empty() => {
                        let mut inner = String::new();
                        write_yaml(item, indent + 2, &mut inner, true);
                        out.push_str(inner.trim_start());
                    }
                    Value::Array(x) if !x.is_empty() => {
                        let mut inner = String::new();
                        write_yaml(item, indent + 2, &mut inner, true);
                        out.push_str(inner.trim_start());
                    }
                    _ => write_yaml(item, indent + 2, out, false),
                }
            }
        }
        _ => {
            out.push_str(&scalar(v));
            out.push('\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn yaml_of_nested_values() {
        let v = json!({"name": "default", "ports": [{"number": 22, "sources": ["*", "10.0.0.0/24"]}], "empty": [], "kind": "true", "n": null});
        assert_eq!(
            yaml(&v),
            "empty: []\nkind: \"true\"\nn: null\nname: default\nports:\n- number: 22\n  sources:\n  - \"*\"\n  - 10.0.0.0/24\n"
        );
    }

    #[test]
    fn exit_codes_follow_the_server_status() {
        let api = |status| CliError::Client(ClientError::Api { status, code: "X".into(), message: "m".into() });
        assert_eq!(exit_code(&api(403)), exit::DENIED);
        assert_eq!(exit_code(&api(401)), exit::DENIED);
        assert_eq!(exit_code(&api(404)), exit::NOT_FOUND);
        assert_eq!(exit_code(&api(504)), exit::TIMEOUT);
        assert_eq!(exit_code(&api(400)), exit::ERROR);
        assert_eq!(exit_code(&fail(exit::USAGE, "u")), exit::USAGE);
        assert_eq!(exit_code(&CliError::Oidc(OidcError::WrongState)), exit::DENIED);
        assert_eq!(exit_code(&CliError::Oidc(OidcError::TimedOut)), exit::TIMEOUT);
        assert_eq!(exit_code(&CliError::Oidc(OidcError::NotConfigured)), exit::USAGE);
    }

    #[test]
    fn a_refused_connection_is_blamed_on_the_database_when_a_database_url_was_used() {
        let pg = hint(None, "connecting to postgres://u@h:1/x: error connecting to server: Connection refused");
        assert!(pg.is_some_and(|h| h.contains("--database-url")), "{pg:?}");
        let api = hint(None, "error sending request for url (https://127.0.0.1:1/): Connection refused");
        assert!(api.is_some_and(|h| h.contains("jitgate serve")), "{api:?}");
    }

    #[test]
    fn a_full_or_failed_disk_says_what_to_do_on_the_server() {
        let full = hint(Some((503, "StorageFull")), "");
        assert!(full.is_some_and(|h| h.contains("free space")), "{full:?}");
        let failed = hint(Some((503, "StorageFailed")), "");
        assert!(failed.is_some_and(|h| h.contains("restart")), "{failed:?}");
    }

    #[test]
    fn a_certificate_refused_for_its_dates_is_blamed_on_the_clock() {
        let early = "invalid peer certificate: certificate not valid yet: verification time 1796041862 (UNIX), but certificate is not valid before 1796124661 (82799 seconds in future)";
        let late = "invalid peer certificate: certificate expired: verification time 9 (UNIX), but certificate is not valid after 1";
        for text in [early, late] {
            let h = hint(None, text);
            assert!(h.is_some_and(|h| h.contains("clock") && h.contains("--server-fingerprint")), "{h:?}");
        }
    }
}
