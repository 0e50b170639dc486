//! `jitgate doctor`: is this host ready — the server's store, audit chain, TLS certificate and
//! disk, or the agent's kernel, nftables table, server, clock and disk. Carried out by the
//! binary, which owns the stores and nftables; this module holds the command line and the text
//! the checks are printed as.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use jitgate_api_types::doctor::{CheckStatus, DoctorOut};

/// Where the package puts the server's settings.
pub const SERVER_CONFIG: &str = "/etc/jitgate/jitgate.toml";
/// Where the package puts the agent's settings.
pub const AGENT_CONFIG: &str = "/etc/jitgate/agent.toml";

const DOCTOR_EXAMPLES: &str = "Examples:
  sudo jitgate doctor                       # what /etc/jitgate/*.toml describe (installed from the package)
  jitgate doctor server --data-dir /var/lib/jitgate
  jitgate doctor server --database-url postgres://jitgate@db/jitgate --tls-cert /etc/jitgate/tls/cert.pem
  sudo jitgate doctor agent --state-dir /var/lib/jitgate-agent
  sudo jitgate doctor agent --server https://jit.example.com:8443 --ca-cert cert.pem --json

Each check prints one line, `ok|warn|FAIL name: detail`, and after a warning or failure a line
`→ what to do`. Exit code 0 only when no check failed (warnings allowed).";

/// `jitgate doctor`.
#[derive(Debug, Clone, Args)]
#[command(args_conflicts_with_subcommands = true, after_help = DOCTOR_EXAMPLES)]
pub struct DoctorArgs {
    #[command(subcommand)]
    pub command: Option<DoctorCommand>,
    #[command(flatten)]
    pub server: ServerCheckArgs,
    /// The agent's settings file (default /etc/jitgate/agent.toml when it exists).
    #[arg(long, value_name = "FILE")]
    pub agent_config: Option<PathBuf>,
    /// The agent's state directory (its credential): checks the agent side.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// The control plane's URL, as an agent reaches it: checks the agent side.
    #[arg(long = "server", value_name = "URL", value_delimiter = ',')]
    pub agent_server: Vec<String>,
    /// The CA (or self-signed) certificate of the server, PEM (agent side).
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// Trust the server by this SHA-256 fingerprint of its certificate or public key (agent side).
    #[arg(long, value_delimiter = ',', value_parser = crate::pin)]
    pub server_fingerprint: Vec<[u8; 32]>,
    /// The report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Subcommand)]
pub enum DoctorCommand {
    /// Check the server side: the store (schema version, integrity, the audit chain), the TLS
    /// certificate, free disk space under the data directory, and the server when it listens.
    #[command(after_help = "Examples:
  jitgate doctor server                     # /etc/jitgate/jitgate.toml
  jitgate doctor server --data-dir ./jitgate-data
  jitgate doctor server --database-url postgres://jitgate@db/jitgate --json")]
    Server(ServerDoctorArgs),
    /// Check the agent side: the kernel (Linux ≥ 6.3, nftables over netlink), `table inet
    /// jitgate` and its elements, the agent's credential, the server (reachable, its clock,
    /// its certificate), free disk space under the state directory. Run as root.
    #[command(after_help = "Examples:
  sudo jitgate doctor agent                 # /etc/jitgate/agent.toml
  sudo jitgate doctor agent --state-dir /var/lib/jitgate-agent
  sudo jitgate doctor agent --server https://jit.example.com:8443 --ca-cert cert.pem")]
    Agent(AgentDoctorArgs),
}

/// What the server checks look at. Unset values come from `--config`, then the defaults.
#[derive(Debug, Clone, Default, Args)]
pub struct ServerCheckArgs {
    /// The server's settings file (`jitgate serve --config`; default /etc/jitgate/jitgate.toml
    /// when it exists): data_dir, database_url, tls, tls_cert and listen are read from it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The server's data directory (SQLite database, self-signed certificate).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// A PostgreSQL store: postgres://USER[:PASSWORD]@HOST:5432/DB.
    #[arg(long, hide_env_values = true)]
    pub database_url: Option<String>,
    /// The server's certificate, PEM (default: DATA_DIR/tls/cert.pem).
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// The running server's URL, to check that it answers and presents the certificate
    /// (default: from the settings' listen address).
    #[arg(long)]
    pub url: Option<String>,
}

/// `jitgate doctor server`.
#[derive(Debug, Clone, Args)]
pub struct ServerDoctorArgs {
    #[command(flatten)]
    pub server: ServerCheckArgs,
    /// The report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `jitgate doctor agent`.
#[derive(Debug, Clone, Args)]
pub struct AgentDoctorArgs {
    /// The agent's settings file (`jitgate agent --config`; default /etc/jitgate/agent.toml when
    /// it exists): state_dir, server and ca_cert are read from it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The agent's state directory (its credential names the server and its certificate).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// The control plane's URL (default: from the credential); repeat or comma-separate.
    #[arg(long, value_delimiter = ',')]
    pub server: Vec<String>,
    /// The CA (or self-signed) certificate of the server, PEM (default: from the credential).
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// Trust the server by this SHA-256 fingerprint of its certificate or public key, as the
    /// agent may (default: from the credential); repeat or comma-separate.
    #[arg(long, value_delimiter = ',', value_parser = crate::pin)]
    pub server_fingerprint: Vec<[u8; 32]>,
    /// The report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The agent side's settings as given on the command line.
#[derive(Debug, Clone, Default)]
pub struct AgentCheckArgs {
    pub config: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub server: Vec<String>,
    pub ca_cert: Option<PathBuf>,
    pub pins: Vec<[u8; 32]>,
}

impl AgentCheckArgs {
    /// Whether anything names the agent side.
    pub fn given(&self) -> bool {
        self.config.is_some()
            || self.state_dir.is_some()
            || !self.server.is_empty()
            || self.ca_cert.is_some()
            || !self.pins.is_empty()
    }
}

impl ServerCheckArgs {
    /// Whether anything names the server side.
    pub fn given(&self) -> bool {
        self.config.is_some()
            || self.data_dir.is_some()
            || self.database_url.is_some()
            || self.tls_cert.is_some()
            || self.url.is_some()
    }
}

/// What `jitgate doctor` was asked to check.
#[derive(Debug, Clone)]
pub struct Plan {
    pub server: Option<ServerCheckArgs>,
    pub agent: Option<AgentCheckArgs>,
    pub json: bool,
}

impl DoctorArgs {
    /// The sides to check: the one a subcommand names; else the ones the flags name; else each
    /// whose settings file exists where the package puts it. `Err` when nothing names a side.
    pub fn plan(self, exists: impl Fn(&str) -> bool) -> Result<Plan, String> {
        match self.command {
            Some(DoctorCommand::Server(a)) => Ok(Plan { server: Some(a.server), agent: None, json: a.json }),
            Some(DoctorCommand::Agent(a)) => Ok(Plan {
                server: None,
                agent: Some(AgentCheckArgs {
                    config: a.config,
                    state_dir: a.state_dir,
                    server: a.server,
                    ca_cert: a.ca_cert,
                    pins: a.server_fingerprint,
                }),
                json: a.json,
            }),
            None => {
                let agent = AgentCheckArgs {
                    config: self.agent_config,
                    state_dir: self.state_dir,
                    server: self.agent_server,
                    ca_cert: self.ca_cert,
                    pins: self.server_fingerprint,
                };
                let (mut server, mut agent) =
                    (self.server.given().then_some(self.server), agent.given().then_some(agent));
                if server.is_none() && agent.is_none() {
                    if exists(SERVER_CONFIG) {
                        server = Some(ServerCheckArgs::default());
                    }
                    if exists(AGENT_CONFIG) {
                        agent = Some(AgentCheckArgs::default());
                    }
                }
                if server.is_none() && agent.is_none() {
                    return Err(format!(
                        "nothing to check: neither {SERVER_CONFIG} nor {AGENT_CONFIG} exists; name a side: \
                         `jitgate doctor server --data-dir DIR` or `jitgate doctor agent --state-dir DIR`"
                    ));
                }
                Ok(Plan { server, agent, json: self.json })
            }
        }
    }
}

/// The report as people read it: one line per check, `→ what to do` under a warning or failure,
/// and a summary line.
pub fn render(report: &DoctorOut) -> String {
    let mut out = String::new();
    for c in &report.checks {
        let status = match c.status {
            CheckStatus::Ok => "ok  ",
            CheckStatus::Warn => "warn",
            CheckStatus::Fail => "FAIL",
        };
        out.push_str(&format!("{status} {}: {}\n", c.name, c.detail));
        if let Some(fix) = &c.fix {
            out.push_str(&format!("     → {fix}\n"));
        }
    }
    let count = |s: CheckStatus| report.checks.iter().filter(|c| c.status == s).count();
    let (failed, warned) = (count(CheckStatus::Fail), count(CheckStatus::Warn));
    if failed == 0 && warned == 0 {
        out.push_str(&format!("all {} checks passed\n", report.checks.len()));
    } else {
        out.push_str(&format!("{failed} failed, {warned} warned, {} passed\n", report.checks.len() - failed - warned));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cli, Command};
    use clap::Parser;
    use jitgate_api_types::doctor::CheckOut;

    fn doctor(args: &[&str]) -> DoctorArgs {
        let cli = Cli::try_parse_from([&["jitgate", "doctor"], args].concat()).expect("parses");
        let Command::Doctor(d) = cli.command else { panic!("doctor expected") };
        d
    }

    #[test]
    fn the_sides_come_from_the_subcommand_the_flags_or_the_installed_files() {
        let p = doctor(&["server", "--data-dir", "/d", "--json"]).plan(|_| false).unwrap();
        assert!(p.server.is_some() && p.agent.is_none() && p.json);
        let p = doctor(&["agent", "--state-dir", "/s"]).plan(|_| true).unwrap();
        assert!(p.server.is_none());
        assert_eq!(p.agent.unwrap().state_dir, Some(PathBuf::from("/s")));

        let p = doctor(&["--data-dir", "/d", "--state-dir", "/s"]).plan(|_| false).unwrap();
        assert!(p.server.is_some() && p.agent.is_some());
        let p = doctor(&["--server", "https://a,https://b"]).plan(|_| true).unwrap();
        assert!(p.server.is_none(), "flags name the side; the installed files are not added");
        assert_eq!(p.agent.unwrap().server, ["https://a", "https://b"]);

        let p = doctor(&[]).plan(|f| f == AGENT_CONFIG).unwrap();
        assert!(p.server.is_none() && p.agent.is_some());
        let e = doctor(&[]).plan(|_| false).unwrap_err();
        assert!(e.contains("nothing to check") && e.contains("jitgate doctor server --data-dir"), "{e}");
        assert!(Cli::try_parse_from(["jitgate", "doctor", "agent", "--data-dir", "/d"]).is_err());
    }

    #[test]
    fn failures_say_what_to_do_and_the_summary_counts() {
        let check = |name: &str, status, fix: Option<&str>| CheckOut {
            name: name.into(),
            status,
            detail: format!("{name} detail"),
            fix: fix.map(Into::into),
            facts: Default::default(),
        };
        let report = DoctorOut {
            ok: false,
            checks: vec![
                check("kernel", CheckStatus::Ok, None),
                check("tls", CheckStatus::Warn, Some("renew it")),
                check("table", CheckStatus::Fail, Some("start the agent")),
            ],
        };
        assert_eq!(
            render(&report),
            "ok   kernel: kernel detail\nwarn tls: tls detail\n     → renew it\nFAIL table: table detail\n     → start the agent\n1 failed, 1 warned, 1 passed\n"
        );
        let fine = DoctorOut { ok: true, checks: vec![check("disk", CheckStatus::Ok, None)] };
        assert_eq!(render(&fine), "ok   disk: disk detail\nall 1 checks passed\n");
    }
}
