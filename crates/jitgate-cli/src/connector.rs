//! `jitgate connector aws …`: the cloud connector, an enforcement point for EC2 instances that
//! have nothing installed: their security groups are the firewall.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

#[derive(Debug, Clone, Args)]
#[command(after_help = CONNECTOR_EXAMPLES)]
pub struct ConnectorArgs {
    #[command(subcommand)]
    pub command: ConnectorCommand,
}

const CONNECTOR_EXAMPLES: &str = "Examples:
  jitgate connector aws --server https://jit.example.com:8443 --join-token $TOKEN --region eu-central-1";

#[derive(Debug, Clone, Subcommand)]
pub enum ConnectorCommand {
    /// Protect the EC2 instances of one region through their security groups: each protected
    /// instance gets a jitgate security group holding one rule per grant; the rules of its own
    /// groups that allow a protected port are taken away (and put back exactly when it is no
    /// longer protected). Rules past their end are swept every few seconds and at start.
    #[command(after_help = AWS_EXAMPLES)]
    Aws(AwsArgs),
}

const AWS_EXAMPLES: &str = "Examples:
  TOKEN=$(jitgate agent token create --subscription $SUB --resource-group aws --location eu-central-1 --mode cloud)
  jitgate connector aws --server https://jit.example.com:8443 --join-token $TOKEN --ca-cert cert.pem \\
      --region eu-central-1 --state-dir /var/lib/jitgate-connector
  jitgate connector aws --region eu-central-1 --state-dir /var/lib/jitgate-connector   # later starts
  jitgate connector aws --region eu-central-1 --vpc vpc-0a1b2c3d=prod --vpc vpc-4e5f6a7b=staging
  jitgate connector aws --region us-east-1 --profile jit --resource-group-tag team
  jitgate connector aws --region us-east-1 --endpoint-url http://127.0.0.1:5000   # a test endpoint";

/// `VPC_ID=RESOURCE_GROUP`.
pub fn vpc_mapping(text: &str) -> Result<(String, String), String> {
    let (vpc, rg) = text
        .split_once('=')
        .ok_or_else(|| format!("'{text}' is not VPC_ID=RESOURCE_GROUP (e.g. vpc-0a1b2c3d=prod)"))?;
    let (vpc, rg) = (vpc.trim(), rg.trim());
    let hex = vpc.strip_prefix("vpc-").is_some_and(|h| {
        (h.len() == 8 || h.len() == 17) && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    });
    if !hex {
        return Err(format!("'{vpc}' is not a VPC id (vpc- and 8 or 17 hex digits)"));
    }
    jitgate_core::ids::validate_resource_group(rg).map_err(|e| format!("--vpc {vpc}={rg}: {e}"))?;
    Ok((vpc.to_owned(), rg.to_owned()))
}

#[derive(Debug, Clone, Args)]
pub struct AwsArgs {
    /// The control plane's URL (needed to join; later taken from the stored credential). Give
    /// it several times, or as a comma list, for replicas sharing one database.
    #[arg(long, env = "JITGATE_SERVER", value_delimiter = ',')]
    pub server: Vec<String>,
    /// The one-time join token, of mode cloud (`jitgate agent token create … --mode cloud`);
    /// needed only the first time.
    #[arg(long, env = "JITGATE_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    /// The CA (or self-signed) certificate of the server, PEM.
    #[arg(long, env = "JITGATE_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// The AWS region whose instances are protected (us-east-1, eu-central-1 …).
    #[arg(long, env = "AWS_REGION")]
    pub region: String,
    /// EC2's URL instead of https://ec2.REGION.amazonaws.com (a VPC endpoint, a test server).
    #[arg(long, env = "JITGATE_AWS_ENDPOINT_URL")]
    pub endpoint_url: Option<String>,
    /// The profile of the shared AWS credentials and config files (default: AWS_PROFILE, else
    /// default). Without one, credentials come from the environment, the files, or the instance
    /// role.
    #[arg(long, env = "AWS_PROFILE")]
    pub profile: Option<String>,
    /// The connector's name, shown in `jitgate agent list` (default: aws-REGION).
    #[arg(long, env = "JITGATE_CONNECTOR_NAME")]
    pub name: Option<String>,
    /// Where the connector keeps its credential (0600).
    #[arg(long, env = "JITGATE_STATE_DIR", default_value = "/var/lib/jitgate-connector")]
    pub state_dir: PathBuf,
    /// The instance tag whose value is the instance's resource group (else its VPC's --vpc
    /// mapping, else the join token's resource group).
    #[arg(long, env = "JITGATE_RESOURCE_GROUP_TAG", default_value = "jitgate:resource-group")]
    pub resource_group_tag: String,
    /// VPC_ID=RESOURCE_GROUP: manage this VPC, its instances in this resource group; repeat for
    /// more. When given, only these VPCs are managed (instances elsewhere are reported
    /// unsupported and left alone).
    #[arg(long = "vpc", env = "JITGATE_VPC", value_delimiter = ',', value_parser = vpc_mapping)]
    pub vpcs: Vec<(String, String)>,
    /// How often rules past their end are removed (EC2 has no timeouts of its own).
    #[arg(long, env = "JITGATE_SWEEP_INTERVAL", default_value = "5s", value_parser = crate::seconds)]
    pub sweep_interval: Duration,
    /// How often the instances are listed and registered with the server.
    #[arg(long, env = "JITGATE_DISCOVERY_INTERVAL", default_value = "60s", value_parser = crate::seconds)]
    pub discovery_interval: Duration,
    /// How long the server may hold one state request open, in seconds.
    #[arg(long, env = "JITGATE_POLL_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=60))]
    pub poll_seconds: u64,
    /// Log format on stderr (level from JITGATE_LOG or RUST_LOG, default info).
    #[arg(long, env = "JITGATE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: crate::LogFormat,
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::{Cli, Command};

    #[test]
    fn the_connector_command_line_parses() {
        let cli = Cli::try_parse_from([
            "jitgate",
            "connector",
            "aws",
            "--server",
            "https://a:8443,https://b:8443",
            "--join-token",
            "jgj_x",
            "--region",
            "eu-central-1",
            "--vpc",
            "vpc-0a1b2c3d=prod",
            "--vpc",
            "vpc-0123456789abcdef0=staging",
            "--sweep-interval",
            "2s",
        ])
        .expect("parses");
        let Command::Connector(c) = cli.command else { panic!("connector") };
        let super::ConnectorCommand::Aws(a) = c.command;
        assert_eq!(a.server, ["https://a:8443", "https://b:8443"]);
        assert_eq!(a.vpcs[1], ("vpc-0123456789abcdef0".to_owned(), "staging".to_owned()));
        assert_eq!(a.sweep_interval, std::time::Duration::from_secs(2));
        assert_eq!(a.discovery_interval, std::time::Duration::from_secs(60));
        assert_eq!(a.resource_group_tag, "jitgate:resource-group");
        for bad in ["vpc-0a1b2c3d", "vpc-xyz=prod", "vpc-0a1b2c3d=bad/rg"] {
            assert!(
                Cli::try_parse_from(["jitgate", "connector", "aws", "--region", "r", "--vpc", bad]).is_err(),
                "{bad}"
            );
        }
    }
}
