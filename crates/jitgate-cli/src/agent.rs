//! `jitgate agent …`: run an enforcement point, or create its one-time join token.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::builder::TypedValueParser;
use clap::{Args, Subcommand};

use jitgate_api_types::agent::{AgentOut, JoinTokenIn};
use jitgate_api_types::native::ListOut;

use crate::output::OutputFormat;
use crate::{iso_duration, CliError, ConnArgs};

pub use jitgate_core::enforcement::AgentMode;

/// `host` or `gateway`, listed in help and completions.
fn mode_parser() -> impl TypedValueParser<Value = AgentMode> {
    clap::builder::PossibleValuesParser::new(["host", "gateway"])
        .map(|s| AgentMode::parse(&s).unwrap_or(AgentMode::Host))
}

/// What a join token may join: `host`, `gateway` or `cloud` (a cloud connector).
fn token_mode_parser() -> impl TypedValueParser<Value = AgentMode> {
    clap::builder::PossibleValuesParser::new(["host", "gateway", "cloud"])
        .map(|s| AgentMode::parse(&s).unwrap_or(AgentMode::Host))
}

#[derive(Debug, Clone, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true, after_help = AGENT_EXAMPLES)]
pub struct AgentArgs {
    #[command(subcommand)]
    pub command: Option<AgentCommand>,
    #[command(flatten)]
    pub run: AgentRunArgs,
}

const AGENT_EXAMPLES: &str = "Examples:
  TOKEN=$(jitgate agent token create --subscription $SUB --resource-group prod --location westeurope)
  jitgate agent --server https://jit.example.com:8443 --join-token $TOKEN --ca-cert cert.pem --state-dir /var/lib/jitgate-agent
  jitgate agent --state-dir /var/lib/jitgate-agent          # later starts: the stored credential is used
  jitgate agent --state-dir /var/lib/jitgate-agent --rotate-credential   # a new credential first
  jitgate agent --state-dir /var/lib/jitgate-agent --metrics-listen 127.0.0.1:9465   # Prometheus metrics
  jitgate agent list
  jitgate agent rm 3f6c…                                    # revoke an agent's credential";

#[derive(Debug, Clone, Args)]
pub struct AgentRunArgs {
    #[command(flatten)]
    pub config: crate::ConfigArgs,
    /// The control plane's URL (needed to join; later taken from the stored credential). Give
    /// it several times, or as a comma list, for replicas sharing one database: the agent moves
    /// to the next when one stops answering.
    #[arg(long, env = "JITGATE_SERVER", value_delimiter = ',')]
    pub server: Vec<String>,
    /// The one-time join token (`jitgate agent token create`); needed only the first time.
    #[arg(long, env = "JITGATE_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    /// The CA (or self-signed) certificate of the server, PEM.
    #[arg(long, env = "JITGATE_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Trust the server by the SHA-256 fingerprint of its certificate or of its public key (as
    /// `jitgate serve` prints them) instead of --ca-cert; repeat or comma-separate to accept a
    /// change. Kept with the credential for later starts.
    #[arg(long, env = "JITGATE_SERVER_FINGERPRINT", value_delimiter = ',', value_parser = crate::pin)]
    pub server_fingerprint: Vec<[u8; 32]>,
    /// Where the agent keeps its credential (0600) and its last applied state.
    #[arg(long, env = "JITGATE_STATE_DIR", required = true)]
    pub state_dir: Option<PathBuf>,
    /// Host (protect this host) or gateway (protect VMs behind it).
    #[arg(long, env = "JITGATE_MODE", value_parser = mode_parser(), default_value = "host")]
    pub mode: AgentMode,
    /// The VM's name (host mode; its ARM id is built from the join token's subscription and
    /// resource group) or the gateway's name. Default: the VM the join token was made for
    /// (`agent token create --vm`), else the hostname.
    #[arg(long, env = "JITGATE_VM_NAME")]
    pub vm_name: Option<String>,
    /// Gateway mode: the address clients connect to, shown to requesters as publicIpAddress.
    #[arg(long, env = "JITGATE_PUBLIC_ADDRESS")]
    pub public_address: Option<IpAddr>,
    /// How long the server may hold one state request open, in seconds.
    #[arg(long, env = "JITGATE_POLL_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=60))]
    pub poll_seconds: u64,
    /// Before running, replace the stored credential with a new one from the server (the old
    /// one stops working at once).
    #[arg(long, env = "JITGATE_ROTATE_CREDENTIAL")]
    pub rotate_credential: bool,
    /// Serve the agent's Prometheus metrics at http://ADDR/metrics (plain HTTP, no token: give
    /// a loopback or management address). Off by default.
    #[arg(long, env = "JITGATE_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Log format on stderr (level from JITGATE_LOG or RUST_LOG, default info); every line
    /// carries the agent's id and VM.
    #[arg(long, env = "JITGATE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: crate::LogFormat,
}

#[derive(Debug, Clone, Subcommand)]
pub enum AgentCommand {
    /// One-time join tokens for agents.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// List agents: mode, VM, addresses, last report, applied revision.
    #[command(after_help = "Examples:\n  jitgate agent list\n  jitgate agent list -o json")]
    List(AgentListArgs),
    /// Revoke an agent's credential and remove it; the VMs it enforced have no enforcement
    /// point until an agent joins for them (a host VM: with a token made `--vm NAME`).
    #[command(
        visible_aliases = ["remove", "revoke"],
        after_help = "Examples:\n  jitgate agent rm 3f6c2a9e-8d1b-4c3e-9f0a-1b2c3d4e5f60\n  jitgate agent rm web1 -o json    # by VM or gateway name, when it names one agent"
    )]
    Rm(AgentRmArgs),
    /// Stop enforcing on this host for good: delete the agent's nftables table (`table inet
    /// jitgate`, which keeps protected ports closed after the agent stops) and its state
    /// directory. Run it on the VM as root, after stopping the agent; `jitgate agent rm` removes
    /// the agent on the server.
    #[command(after_help = "Examples:
  systemctl stop jitgate-agent
  jitgate agent uninstall --state-dir /var/lib/jitgate-agent
  jitgate agent rm web1                 # and on the server: revoke its credential")]
    Uninstall(AgentUninstallArgs),
}

#[derive(Debug, Clone, Args)]
pub struct AgentUninstallArgs {
    /// The agent's state directory (its credential and last applied state), removed.
    #[arg(long)]
    pub state_dir: PathBuf,
    /// Keep the state directory (and so the credential): only remove the nftables table.
    #[arg(long)]
    pub keep_state: bool,
}

#[derive(Debug, Clone, Args)]
pub struct AgentListArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, Clone, Args)]
pub struct AgentRmArgs {
    /// The agent's id (from `jitgate agent list`), or its name when exactly one agent has it.
    pub agent: String,
    #[command(flatten)]
    pub conn: ConnArgs,
}

fn agent_rows(o: &ListOut<AgentOut>) -> Vec<Vec<String>> {
    o.value
        .iter()
        .map(|a| {
            let state = if a.nftables_usable == Some(false) {
                "nftables unusable".to_owned()
            } else if a.stale {
                "stale".to_owned()
            } else {
                "ok".to_owned()
            };
            vec![
                a.id.clone(),
                a.name.clone(),
                a.mode.clone(),
                a.resource_group.clone(),
                a.addresses.join(","),
                a.last_seen.clone().unwrap_or_default(),
                a.applied_revision.to_string(),
                state,
            ]
        })
        .collect()
}

const AGENT_HEADERS: [&str; 8] = ["ID", "NAME", "MODE", "RESOURCE GROUP", "ADDRESSES", "LAST SEEN", "APPLIED", "STATE"];

/// `jitgate agent list`.
pub async fn list(args: AgentListArgs, format: OutputFormat) -> Result<(), CliError> {
    let client = args.conn.connect()?;
    let value = client.native().agents().await?;
    crate::output::print(format, &ListOut { value }, |o| crate::output::table(&AGENT_HEADERS, &agent_rows(o)));
    Ok(())
}

/// `jitgate agent rm ID|NAME`: revokes and removes the agent.
pub async fn remove(args: AgentRmArgs, format: OutputFormat) -> Result<(), CliError> {
    let client = args.conn.connect()?;
    let agents = client.native().agents().await?;
    let id = if agents.iter().any(|a| a.id == args.agent) {
        args.agent.clone()
    } else {
        let named: Vec<&AgentOut> = agents.iter().filter(|a| a.name.eq_ignore_ascii_case(&args.agent)).collect();
        match named.as_slice() {
            [one] => one.id.clone(),
            [] => args.agent.clone(),
            _ => {
                return Err(crate::output::fail(
                    crate::output::exit::USAGE,
                    format!("{} agents are named '{}'; give the id (jitgate agent list)", named.len(), args.agent),
                ))
            }
        }
    };
    let out = client.native().delete_agent(&id).await?;
    crate::output::print(format, &out, |o| {
        println!(
            "revoked agent {} ({} {}); its VMs have no enforcement point until an agent joins for them",
            o.id, o.mode, o.name
        )
    });
    Ok(())
}

#[derive(Debug, Clone, Subcommand)]
pub enum TokenCommand {
    /// Create a join token; prints the token alone on stdout.
    #[command(
        after_help = "Examples:\n  jitgate agent token create --subscription $SUB --resource-group prod --location westeurope --mode host --ttl 1h\n  jitgate agent token create --subscription $SUB --resource-group prod --location westeurope --vm web2   # re-bind web2"
    )]
    Create(TokenCreateArgs),
    /// List join tokens (without secrets): scope, expiry, and whether they were used.
    #[command(after_help = "Example:\n  jitgate agent token list -o json")]
    List(TokenListArgs),
}

#[derive(Debug, Clone, Args)]
pub struct TokenListArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
}

pub async fn token_list(args: TokenListArgs, format: OutputFormat) -> Result<(), CliError> {
    let client = args.conn.connect()?;
    let value = client.native().join_tokens().await?;
    crate::output::print(format, &ListOut { value }, |o| {
        let rows: Vec<Vec<String>> = o
            .value
            .iter()
            .map(|t| {
                vec![
                    t.resource_group.clone(),
                    t.vm.clone().unwrap_or_default(),
                    t.location.clone(),
                    t.mode.clone(),
                    t.state.clone(),
                    t.expires_on.clone(),
                    t.created_by.clone(),
                ]
            })
            .collect();
        crate::output::table(&["RESOURCE GROUP", "VM", "LOCATION", "MODE", "STATE", "EXPIRES", "BY"], &rows);
    });
    Ok(())
}

#[derive(Debug, Clone, Args)]
pub struct TokenCreateArgs {
    /// The subscription VMs that join with the token are registered in.
    #[arg(long)]
    pub subscription: String,
    /// Their resource group.
    #[arg(long)]
    pub resource_group: String,
    /// Their location.
    #[arg(long)]
    pub location: String,
    /// What agents joining with the token do: protect their own host, VMs behind them (gateway),
    /// or a cloud account's instances through its security groups (cloud: a cloud connector).
    #[arg(long, value_parser = token_mode_parser(), default_value = "host")]
    pub mode: AgentMode,
    /// How long the token may be used: 30m, 1h, 2d or ISO-8601.
    #[arg(long, default_value = "1h")]
    pub ttl: String,
    /// Host mode: the one VM the token may join as. Needed to join as a VM that is already
    /// registered; the joining agent then replaces that VM's agent and address (audited).
    #[arg(long)]
    pub vm: Option<String>,
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// `jitgate agent token create`: prints the token alone.
pub async fn token_create(args: TokenCreateArgs) -> Result<(), CliError> {
    let client = args.conn.connect()?;
    let body = JoinTokenIn {
        subscription: Some(args.subscription),
        resource_group: Some(args.resource_group),
        location: Some(args.location),
        mode: Some(args.mode.as_str().to_owned()),
        ttl: Some(iso_duration(&args.ttl)?),
        vm: args.vm,
    };
    let out = client.native().create_join_token(&body).await?;
    println!("{}", out.token);
    Ok(())
}
