//! The jitgate command tree. `serve` runs the control plane (carried out by the binary, which
//! owns the concrete store); `bench` measures a running or freshly started server.

pub mod access;
pub mod admin;
pub mod agent;
pub mod audit;
pub mod bench;
pub mod config;
pub mod connect;
pub mod connector;
pub mod doctor;
pub mod output;
pub mod policy;
pub mod probe;
pub mod profile;
pub mod role;
pub mod secrets;
pub mod storage;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use jitgate_client::{Client, Settings};

pub use output::CliError;

/// jitgate: just-in-time network access for Linux hosts and gateways.
#[derive(Debug, Parser)]
#[command(
    name = "jitgate",
    version,
    about = "Just-in-time network access for Linux hosts and gateways",
    long_about = None,
    propagate_version = true
)]
#[command(after_help = EXIT_CODES)]
pub struct Cli {
    /// Output: aligned tables for people, or the API's JSON (or YAML) for scripts.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value = "table")]
    pub output: output::OutputFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// Exit codes, for scripts.
pub const EXIT_CODES: &str = "Exit codes: 0 ok, 1 error, 2 usage, 3 denied (401/403), 4 not found (404), 5 timeout waiting,
6 not enforced (--wait or connect on a VM with no enforcement point: nothing opens or closes its ports).
Connection: --url/--token/--ca-cert, or JITGATE_URL/JITGATE_TOKEN/JITGATE_CA_CERT, or the profile `jitgate login` writes;
--url (alias --server) may repeat or be a comma list of replicas.";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the control plane: the Azure-compatible JIT API and the native API, over TLS.
    #[command(after_help = SERVE_EXAMPLES)]
    Serve(Box<ServeArgs>),
    /// Run an enforcement point (`jitgate agent --server … --join-token … --state-dir …`), or
    /// manage agent join tokens (`jitgate agent token create …`).
    Agent(agent::AgentArgs),
    /// Run a cloud connector (`jitgate connector aws --server … --join-token … --region …`):
    /// protects cloud instances through their security groups, with nothing installed on them.
    Connector(connector::ConnectorArgs),
    /// Access requests: request access to ports, revoke a grant before its end time.
    Access(access::AccessArgs),
    /// Request access, wait until open, run a command with the connection details, revoke after.
    Connect(connect::ConnectArgs),
    /// Role definitions and assignments.
    Role(role::RoleArgs),
    /// JIT policies: set, get, list, delete.
    Policy(policy::PolicyArgs),
    /// Virtual machines and the inventory views.
    Vm(admin::VmArgs),
    /// API tokens.
    Token(admin::TokenArgs),
    /// Principals: local ones and OIDC identities (with their display names).
    Principal(admin::PrincipalArgs),
    /// Who you are signed in as: principal, credential, expiry, role assignments.
    Whoami(admin::WhoAmIArgs),
    /// Check and save the connection settings (profile file, mode 0600).
    Login(admin::LoginArgs),
    /// Shell completions from the command tree.
    #[command(
        after_help = "Examples:\n  jitgate completions bash > /etc/bash_completion.d/jitgate\n  jitgate completions zsh > \"${fpath[1]}/_jitgate\""
    )]
    Completions(admin::CompletionsArgs),
    /// The man pages, from the command tree: jitgate(1) on stdout, or with --dir every page
    /// (jitgate.1, jitgate-serve.1, jitgate-agent-token-create.1 …) that jitgate(1) refers to.
    #[command(
        after_help = "Examples:\n  jitgate man > /usr/local/share/man/man1/jitgate.1\n  jitgate man --dir /usr/local/share/man/man1"
    )]
    Man(admin::ManArgs),
    /// The audit log: list, export, verify.
    Audit(audit::AuditArgs),
    /// Network probes: is a port open from here, when did it close, does a session survive.
    Probe(probe::ProbeArgs),
    /// Try it all on this machine (root, Linux): a server, an agent on a "VM" in network
    /// namespaces, and a port that closes, opens for you alone, and closes again at expiry.
    /// Shows every command it runs; removes everything it made at the end (Ctrl-C too).
    #[command(after_help = "Examples:\n  sudo jitgate quickstart\n  sudo jitgate quickstart --seconds 5")]
    Quickstart(QuickstartArgs),
    /// Check this host and explain what is wrong: the server side (store, audit chain, TLS
    /// certificate, disk) and the agent side (kernel, nftables table, server, clock, disk).
    Doctor(doctor::DoctorArgs),
    /// Measure initiate throughput and latency over HTTPS (starts a server unless --url is given).
    Bench(bench::BenchArgs),
    /// The key that seals webhook secrets at rest: rotate it, or make a new one.
    Secrets(secrets::SecretsArgs),
    /// Bring the store's schema up to date and exit, printing the versions applied and present
    /// (PostgreSQL with --database-url or JITGATE_DATABASE_URL; SQLite with --data-dir).
    #[command(after_help = storage::MIGRATE_EXAMPLES)]
    Migrate(storage::MigrateArgs),
    /// Copy every record of a store (SQLite or PostgreSQL) to a file, as JSON Lines. Reads one
    /// consistent state; a server may keep running on the store.
    #[command(after_help = storage::EXPORT_EXAMPLES)]
    Export(storage::ExportArgs),
    /// Copy an export into an empty store (SQLite or PostgreSQL) in one transaction, then verify
    /// its audit chain (a broken chain exits 1).
    #[command(after_help = storage::IMPORT_EXAMPLES)]
    Import(storage::ImportArgs),
    /// Copy a SQLite store to a new database file with SQLite's online backup API, while the
    /// server runs; the copy's audit chain is verified.
    #[command(after_help = storage::BACKUP_EXAMPLES)]
    Backup(storage::BackupArgs),
}

/// `jitgate quickstart`.
#[derive(Debug, Clone, Args)]
pub struct QuickstartArgs {
    /// How long the request keeps the port open, in seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(2..=300))]
    pub seconds: u64,
}

/// How a client command reaches the server.
#[derive(Debug, Clone, Args)]
pub struct ConnArgs {
    /// The server's URL. Give it several times, or as a comma list, for replicas sharing one
    /// database: a call that finds one gone moves on to the next (GETs, PUTs, DELETEs and
    /// initiate, which carries an idempotency key).
    #[arg(long = "url", visible_alias = "server", env = "JITGATE_URL", global = true, value_delimiter = ',')]
    pub url: Vec<String>,
    /// A bearer token.
    #[arg(long, env = "JITGATE_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// The CA (or self-signed) certificate of the server, PEM.
    #[arg(long = "ca-cert", env = "JITGATE_CA_CERT", global = true)]
    pub ca_cert: Option<PathBuf>,
    /// Trust the server by the SHA-256 fingerprint of its certificate or of its public key (as
    /// `jitgate serve` prints them) instead of a CA; repeat or comma-separate to accept a change.
    #[arg(long, env = "JITGATE_SERVER_FINGERPRINT", global = true, value_delimiter = ',', value_parser = pin)]
    pub server_fingerprint: Vec<[u8; 32]>,
}

/// A SHA-256 fingerprint, 64 hex digits with or without colons.
pub fn pin(text: &str) -> Result<[u8; 32], String> {
    jitgate_core::certinfo::parse_pin(text)
}

impl ConnArgs {
    /// A client for the server — URL, token and CA certificate from flags, then the
    /// environment, then the profile — or a clear error naming what is missing.
    pub fn connect(&self) -> Result<Client, CliError> {
        let profile = profile::load();
        let urls = match self.urls() {
            urls if !urls.is_empty() => urls,
            _ => profile.url.as_deref().map(jitgate_client::split_urls).unwrap_or_default(),
        };
        if urls.is_empty() {
            return Err(output::fail(
                output::exit::USAGE,
                "no server: set --url or JITGATE_URL, or run `jitgate login`",
            ));
        }
        let token = self.token.clone().or(profile.token).ok_or_else(|| {
            output::fail(output::exit::USAGE, "no token: set --token or JITGATE_TOKEN, or run `jitgate login`")
        })?;
        let ca = self.ca_cert.clone().or(profile.ca_cert);
        let pins = if self.server_fingerprint.is_empty() {
            let stored: Result<Vec<_>, _> = profile.server_fingerprints.iter().map(|p| pin(p)).collect();
            stored.map_err(|e| {
                output::fail(output::exit::USAGE, format!("the profile {}: {e}", profile::path().display()))
            })?
        } else {
            self.server_fingerprint.clone()
        };
        let settings = Settings::with_urls(urls).token(token).ca_cert_path(ca.as_deref()).pins(pins);
        Ok(Client::new(settings)?)
    }

    /// The servers given by flags or the environment: each `--url`, comma lists split.
    pub fn urls(&self) -> Vec<String> {
        self.url.iter().flat_map(|u| jitgate_client::split_urls(u)).collect()
    }
}

/// Turns `30m`, `1h`, `2d`, `90s` or an ISO-8601 duration into ISO-8601.
pub fn iso_duration(text: &str) -> Result<String, CliError> {
    let t = text.trim();
    if t.to_ascii_uppercase().starts_with('P') {
        return Ok(t.to_ascii_uppercase());
    }
    let bad = || output::fail(output::exit::ERROR, format!("'{text}' is not a duration such as 30m, 1h, 2d or PT1H"));
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = num.parse().map_err(|_| bad())?;
    Ok(match unit {
        "s" => format!("PT{n}S"),
        "m" | "min" => format!("PT{n}M"),
        "h" => format!("PT{n}H"),
        "d" => format!("P{n}D"),
        _ => return Err(bad()),
    })
}

const SERVE_EXAMPLES: &str = "Examples:
  jitgate serve                                   # ./jitgate-data, https://127.0.0.1:8443, self-signed cert
  jitgate serve --listen 0.0.0.0:8443 --tls-san jit.example.com
  jitgate serve --tls-cert /etc/jitgate/cert.pem --tls-key /etc/jitgate/key.pem
  jitgate serve --tls off --listen 127.0.0.1:8080  # behind a TLS-terminating proxy
  jitgate serve --secrets-key-file /etc/jitgate/secrets.key --webhook-allow-range 10.20.0.0/16
  jitgate serve --metrics-allow 127.0.0.0/8,10.20.0.0/16   # Prometheus scrapes GET /metrics from there";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TlsMode {
    On,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// `--config` and `--print-config`, of `serve` and `agent`.
#[derive(Debug, Clone, Args)]
pub struct ConfigArgs {
    /// A TOML file of settings: each key is a long flag with `-` written `_` (`data_dir =
    /// "/var/lib/jitgate"`, `tls_san = ["a", "b"]`, `server_timing = true`). Flags and `JITGATE_…`
    /// variables win over it.
    #[arg(long = "config", id = "config", env = "JITGATE_CONFIG_FILE", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Print the effective settings as TOML (valid `--config` input), each with where it came
    /// from (flag, env, file or default), secrets masked; then exit without starting.
    #[arg(long)]
    pub print_config: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Directory of the SQLite database and of tls/cert.pem + tls/key.pem.
    #[arg(long, env = "JITGATE_DATA_DIR", default_value = "./jitgate-data")]
    pub data_dir: PathBuf,
    /// Keep the store in PostgreSQL instead of SQLite: postgres://USER[:PASSWORD]@HOST:5432/DB,
    /// optionally ?pool_size=N (default 16). Several replicas may share one database; DATA_DIR still
    /// holds the TLS files and the secrets key (give every replica the same key).
    #[arg(long, env = "JITGATE_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// With several replicas on one database: how long a replica keeps running the expiry sweep
    /// or audit retention without renewing its lease; a replica that dies hands them on after it.
    #[arg(long, env = "JITGATE_LEASE_TTL", default_value = "15s", value_parser = seconds)]
    pub lease_ttl: std::time::Duration,
    /// Answer every request with a `Server-Timing` header: the milliseconds it spent in each
    /// stage (parse, authn, authz, queue, write, commit, read, other, total). For benchmarks and
    /// diagnosis; off by default, since it tells clients how the server spends its time.
    #[arg(long, env = "JITGATE_SERVER_TIMING")]
    pub server_timing: bool,
    /// Address to listen on (port 0 picks a free port; the address is printed).
    #[arg(long, env = "JITGATE_LISTEN", default_value = "127.0.0.1:8443")]
    pub listen: SocketAddr,
    /// Serve TLS (default) or plain HTTP for a TLS-terminating proxy in front.
    #[arg(long, env = "JITGATE_TLS", value_enum, default_value = "on")]
    pub tls: TlsMode,
    /// Your own certificate (PEM); with --tls-key. Default: a self-signed one in DATA_DIR/tls.
    #[arg(long, env = "JITGATE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "JITGATE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Extra DNS names or addresses for the self-signed certificate (repeat or comma-separate).
    #[arg(long, env = "JITGATE_TLS_SAN", value_delimiter = ',')]
    pub tls_san: Vec<String>,
    /// On first start, also write the one-time admin token to this file (mode 0600).
    #[arg(long, env = "JITGATE_BOOTSTRAP_TOKEN_FILE")]
    pub bootstrap_token_file: Option<PathBuf>,
    /// Policies per page in list answers (the rest follows through nextLink).
    #[arg(long, env = "JITGATE_LIST_PAGE_SIZE", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub list_page_size: u32,
    /// The largest request body accepted, in bytes.
    #[arg(long, env = "JITGATE_MAX_BODY_BYTES", default_value_t = 1024 * 1024, value_parser = clap::value_parser!(u64).range(1024..=67_108_864))]
    pub max_body_bytes: u64,
    /// The externally visible base URL, used in nextLink (default: from the request's Host).
    #[arg(long, env = "JITGATE_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Log format on stderr (level from JITGATE_LOG or RUST_LOG, default info).
    #[arg(long, env = "JITGATE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Move audit records older than this (e.g. 400d) to sealed JSONL archives in DATA_DIR/audit-archive.
    #[arg(long, env = "JITGATE_AUDIT_RETENTION")]
    pub audit_retention: Option<String>,
    /// Proxies (CIDR) whose X-Forwarded-For is believed for the caller's address (repeat or comma-separate).
    #[arg(long, env = "JITGATE_TRUSTED_PROXY", value_delimiter = ',')]
    pub trusted_proxy: Vec<String>,
    /// Addresses (CIDR) that may read GET /metrics without a token (repeat or comma-separate;
    /// `none`: a token always). The caller's address is resolved through --trusted-proxy; from
    /// elsewhere a token whose principal may Microsoft.Insights/metrics/read is needed.
    #[arg(long, env = "JITGATE_METRICS_ALLOW", value_delimiter = ',', default_value = "127.0.0.0/8,::1/128")]
    pub metrics_allow: Vec<String>,
    /// OIDC issuer whose ID tokens sign humans in (its discovery document gives the JWKS).
    #[arg(long, env = "JITGATE_OIDC_ISSUER", requires = "oidc_audience")]
    pub oidc_issuer: Option<String>,
    /// The audience (client id) ID tokens must carry.
    #[arg(long, env = "JITGATE_OIDC_AUDIENCE", requires = "oidc_issuer")]
    pub oidc_audience: Option<String>,
    /// Read the issuer's keys from this JWKS file instead of its discovery document.
    #[arg(long, env = "JITGATE_OIDC_JWKS_FILE", requires = "oidc_issuer")]
    pub oidc_jwks_file: Option<PathBuf>,
    /// The ID-token claim shown as an OIDC principal's display name (default: preferred_username,
    /// else email); the principal itself is always the issuer and the token's sub.
    #[arg(long, env = "JITGATE_OIDC_CLAIM", requires = "oidc_issuer")]
    pub oidc_claim: Option<String>,
    /// Allow webhooks to plain http:// URLs (default: https only; webhooks carry signed request data).
    #[arg(long, env = "JITGATE_WEBHOOK_ALLOW_HTTP")]
    pub webhook_allow_http: bool,
    /// Let webhooks reach this range although the deny list refuses it (loopback, link-local,
    /// private, CGNAT, multicast …); repeat or comma-separate. E.g. 10.20.0.0/16 for an internal
    /// receiver.
    #[arg(long, env = "JITGATE_WEBHOOK_ALLOW_RANGE", value_delimiter = ',')]
    pub webhook_allow_range: Vec<String>,
    /// The file of keys that seal webhook secrets at rest (made on first start, mode 0600; default
    /// DATA_DIR/secrets.key — keep it away from the database's backups). JITGATE_SECRETS_KEY, when
    /// set, holds the keys themselves instead.
    #[arg(long, env = "JITGATE_SECRETS_KEY_FILE")]
    pub secrets_key_file: Option<PathBuf>,
    /// The longest life of an API token (30m, 12h, 90d or ISO-8601), the first start's Owner
    /// token included; `none` (or 0) allows tokens that never expire.
    #[arg(long, env = "JITGATE_MAX_TOKEN_LIFETIME", default_value = "90d")]
    pub max_token_lifetime: String,
    /// Break glass: on this start, make a new token for the Owner principal "owner" (printed once,
    /// and written to --bootstrap-token-file), e.g. after its tokens expired. Audited.
    #[arg(long, env = "JITGATE_REISSUE_OWNER_TOKEN")]
    pub reissue_owner_token: bool,
    /// Failed sign-ins allowed per source address and per credential, e.g. 30/min, 5/s, 100/h;
    /// past it the answer is 429 with Retry-After (0 or off: no limit).
    #[arg(long, env = "JITGATE_RATE_LIMIT_SIGNIN", default_value = "30/min", value_parser = rate)]
    pub rate_limit_signin: String,
    /// Initiate requests allowed per principal (0 or off: no limit).
    #[arg(long, env = "JITGATE_RATE_LIMIT_INITIATE", default_value = "60/min", value_parser = rate)]
    pub rate_limit_initiate: String,
    /// Token creations allowed per principal (0 or off: no limit).
    #[arg(long, env = "JITGATE_RATE_LIMIT_TOKENS", default_value = "10/min", value_parser = rate)]
    pub rate_limit_tokens: String,
    /// Refused agent joins allowed per source address (0 or off: no limit).
    #[arg(long, env = "JITGATE_RATE_LIMIT_JOIN", default_value = "30/min", value_parser = rate)]
    pub rate_limit_join: String,
    /// Failed and rate-limited attempts are summarised in one audit record per source and interval.
    #[arg(long, env = "JITGATE_AUDIT_SUMMARY_INTERVAL", default_value = "60s", value_parser = seconds)]
    pub audit_summary_interval: std::time::Duration,
    /// How long a client may take to send a request's headers (also the keep-alive idle limit).
    #[arg(long, env = "JITGATE_HEADER_TIMEOUT", default_value = "10s", value_parser = seconds)]
    pub header_timeout: std::time::Duration,
    /// How long a client may take to send a request's body (408 after it).
    #[arg(long, env = "JITGATE_BODY_TIMEOUT", default_value = "30s", value_parser = seconds)]
    pub body_timeout: std::time::Duration,
    /// Open connections allowed per source address (IPv6: per /64; trusted proxies exempt; 0: no cap).
    #[arg(long, env = "JITGATE_MAX_CONNECTIONS_PER_SOURCE", default_value_t = 256)]
    pub max_connections_per_source: usize,
    /// Concurrent state long-polls per agent credential; a new one past it replaces the oldest (0: no cap).
    #[arg(long, env = "JITGATE_MAX_LONG_POLLS_PER_AGENT", default_value_t = 4)]
    pub max_long_polls_per_agent: usize,
}

/// Checks a rate such as `30/min`, `5/s`, `100/h`, `0` or `off` (the server parses it).
fn rate(text: &str) -> Result<String, String> {
    let t = text.trim().to_ascii_lowercase();
    if matches!(t.as_str(), "0" | "off" | "none" | "unlimited") {
        return Ok(t);
    }
    let (n, unit) = t.split_once('/').unwrap_or((t.as_str(), "min"));
    let ok_unit = matches!(unit.trim(), "s" | "sec" | "second" | "m" | "min" | "minute" | "h" | "hour");
    if n.trim().parse::<u32>().is_err() || !ok_unit {
        return Err(format!("'{text}' is not a rate such as 30/min, 5/s or 100/h (0 or off: no limit)"));
    }
    Ok(t)
}

/// A time span such as `10s`, `1.5s`, `500ms`, `2m` or a number of seconds.
pub fn seconds(text: &str) -> Result<std::time::Duration, String> {
    let t = text.trim().to_ascii_lowercase();
    let bad = || format!("'{text}' is not a time such as 10s, 500ms or 2m");
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix("min").or_else(|| t.strip_suffix('m')) {
        (n, 60.0)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else {
        (t.as_str(), 1.0)
    };
    let value: f64 = num.trim().parse().map_err(|_| bad())?;
    let secs = value * scale;
    if !secs.is_finite() || secs <= 0.0 || secs > 86_400.0 {
        return Err(bad());
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_for_the_command_line() {
        assert_eq!(iso_duration("1h").ok().as_deref(), Some("PT1H"));
        assert_eq!(iso_duration("30m").ok().as_deref(), Some("PT30M"));
        assert_eq!(iso_duration("2d").ok().as_deref(), Some("P2D"));
        assert_eq!(iso_duration("pt2h").ok().as_deref(), Some("PT2H"));
        assert!(iso_duration("soon").is_err());
        assert!(iso_duration("5y").is_err());
    }

    #[test]
    fn agent_command_lines_parse() {
        let run = Cli::try_parse_from([
            "jitgate",
            "agent",
            "--server",
            "https://s",
            "--join-token",
            "jgj_x",
            "--state-dir",
            "/tmp/a",
            "--mode",
            "gateway",
            "--vm-name",
            "gw1",
        ])
        .expect("agent run");
        let Command::Agent(a) = run.command else { panic!("agent expected") };
        assert!(a.command.is_none());
        assert_eq!(a.run.state_dir.as_deref(), Some(std::path::Path::new("/tmp/a")));
        let create = Cli::try_parse_from([
            "jitgate",
            "agent",
            "token",
            "create",
            "--subscription",
            "s",
            "--resource-group",
            "rg",
            "--location",
            "l",
            "--ttl",
            "2h",
        ])
        .expect("token create");
        let Command::Agent(a) = create.command else { panic!("agent expected") };
        assert!(a.command.is_some());
        assert!(
            Cli::try_parse_from(["jitgate", "agent", "--server", "https://s"]).is_err(),
            "a running agent needs --state-dir"
        );
    }

    #[test]
    fn serve_flags_parse_with_defaults() {
        let cli = Cli::try_parse_from(["jitgate", "serve"]).expect("defaults");
        let Command::Serve(s) = cli.command else { panic!("serve expected") };
        assert_eq!(s.listen.to_string(), "127.0.0.1:8443");
        assert_eq!(s.data_dir, PathBuf::from("./jitgate-data"));
        assert_eq!(s.tls, TlsMode::On);
        let cli = Cli::try_parse_from([
            "jitgate",
            "serve",
            "--tls",
            "off",
            "--tls-san",
            "a.example,10.0.0.1",
            "--tls-san",
            "b",
        ])
        .expect("flags");
        let Command::Serve(s) = cli.command else { panic!("serve expected") };
        assert_eq!(s.tls, TlsMode::Off);
        assert_eq!(s.tls_san, ["a.example", "10.0.0.1", "b"]);
        assert!(Cli::try_parse_from(["jitgate", "serve", "--tls-cert", "c.pem"]).is_err(), "cert needs key");
        assert!(Cli::try_parse_from(["jitgate", "serve", "--listen", "nowhere"]).is_err());
        assert!(Cli::try_parse_from(["jitgate", "serve", "--list-page-size", "0"]).is_err());
        assert_eq!((s.max_token_lifetime.as_str(), s.reissue_owner_token), ("90d", false));
        let cli = Cli::try_parse_from(["jitgate", "serve", "--max-token-lifetime", "none", "--reissue-owner-token"])
            .expect("token flags");
        let Command::Serve(s) = cli.command else { panic!("serve expected") };
        assert_eq!((s.max_token_lifetime.as_str(), s.reissue_owner_token), ("none", true));
    }

    #[test]
    fn limit_flags_parse_with_defaults() {
        let cli = Cli::try_parse_from(["jitgate", "serve"]).expect("defaults");
        let Command::Serve(s) = cli.command else { panic!("serve expected") };
        assert_eq!(s.rate_limit_signin, "30/min");
        assert_eq!(s.header_timeout, std::time::Duration::from_secs(10));
        assert_eq!(s.body_timeout, std::time::Duration::from_secs(30));
        assert_eq!(s.max_connections_per_source, 256);
        assert_eq!(s.max_long_polls_per_agent, 4);
        let cli = Cli::try_parse_from([
            "jitgate",
            "serve",
            "--rate-limit-signin",
            "10/min",
            "--rate-limit-initiate",
            "off",
            "--header-timeout",
            "500ms",
            "--body-timeout",
            "1.5s",
        ])
        .expect("flags");
        let Command::Serve(s) = cli.command else { panic!("serve expected") };
        assert_eq!(s.rate_limit_initiate, "off");
        assert_eq!(s.header_timeout, std::time::Duration::from_millis(500));
        assert_eq!(s.body_timeout, std::time::Duration::from_millis(1500));
        assert!(Cli::try_parse_from(["jitgate", "serve", "--rate-limit-join", "lots"]).is_err());
        assert!(Cli::try_parse_from(["jitgate", "serve", "--rate-limit-join", "5/day"]).is_err());
        assert!(Cli::try_parse_from(["jitgate", "serve", "--header-timeout", "0"]).is_err());
        assert_eq!(seconds("2m"), Ok(std::time::Duration::from_secs(120)));
        assert_eq!(seconds("7"), Ok(std::time::Duration::from_secs(7)));
    }
}

#[cfg(test)]
mod help_tests {
    use super::*;
    use clap::CommandFactory;

    fn leaves(cmd: &clap::Command, path: String, out: &mut Vec<(String, bool)>) {
        let subs: Vec<&clap::Command> =
            cmd.get_subcommands().filter(|c| !c.is_hide_set() && c.get_name() != "help").collect();
        let has = |c: &clap::Command| c.get_after_help().map(|h| h.to_string().contains("Example")).unwrap_or(false);
        if subs.is_empty() || has(cmd) {
            out.push((path.clone(), has(cmd)));
        }
        for s in subs {
            leaves(s, format!("{path} {}", s.get_name()), out);
        }
    }

    #[test]
    fn every_command_has_examples_in_its_help() {
        let mut all = Vec::new();
        leaves(&Cli::command(), "jitgate".into(), &mut all);
        let missing: Vec<&String> = all.iter().filter(|(_, has)| !has).map(|(p, _)| p).collect();
        assert!(missing.is_empty(), "commands without examples: {missing:#?}");
    }

    fn undocumented(cmd: &clap::Command, path: String, out: &mut Vec<String>) {
        for a in cmd.get_arguments() {
            let builtin = matches!(a.get_id().as_str(), "help" | "version");
            if !a.is_hide_set() && !builtin && a.get_help().is_none() && a.get_long_help().is_none() {
                out.push(format!("{path} --{}", a.get_long().unwrap_or(a.get_id().as_str())));
            }
        }
        for s in cmd.get_subcommands().filter(|c| !c.is_hide_set() && c.get_name() != "help") {
            undocumented(s, format!("{path} {}", s.get_name()), out);
        }
    }

    #[test]
    fn every_flag_is_described_in_its_help() {
        let mut missing = Vec::new();
        undocumented(&Cli::command(), "jitgate".into(), &mut missing);
        assert!(missing.is_empty(), "arguments without help text: {missing:#?}");
    }
}

#[cfg(test)]
mod server_list_tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    #[test]
    fn url_repeats_takes_comma_lists_and_has_the_alias_server() {
        let cli =
            parse(&["jitgate", "vm", "list", "--url", "https://a:8443,https://b:8443/", "--server", "https://c:8443"]);
        let Command::Vm(admin::VmArgs { command: admin::VmCommand::List(l) }) = cli.command else { panic!("vm list") };
        assert_eq!(l.conn.urls(), ["https://a:8443", "https://b:8443", "https://c:8443"]);
    }

    #[test]
    fn the_agent_takes_server_repeated_and_as_a_comma_list() {
        let cli = parse(&[
            "jitgate",
            "agent",
            "--server",
            "https://a:8443,https://b:8443",
            "--server",
            "https://c:8443",
            "--state-dir",
            "/tmp/x",
        ]);
        let Command::Agent(a) = cli.command else { panic!("agent") };
        assert_eq!(a.run.server, ["https://a:8443", "https://b:8443", "https://c:8443"]);
    }

    #[test]
    fn login_takes_a_list() {
        let cli = parse(&["jitgate", "login", "--url", "https://a:8443", "--url", "https://b:8443", "--token", "t"]);
        let Command::Login(l) = cli.command else { panic!("login") };
        assert_eq!(l.url, ["https://a:8443", "https://b:8443"]);
    }
}
