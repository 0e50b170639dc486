//! `jitgate connector aws`: the AWS cloud connector over the EC2 client.

use jitgate_cli::connector::ConnectorArgs;

#[cfg(feature = "aws")]
pub async fn run(args: ConnectorArgs) -> anyhow::Result<()> {
    use crate::common::{init_logging, shutdown_signal};
    use jitgate_cli::connector::ConnectorCommand;
    use jitgate_connector::discovery::Mapping;
    use jitgate_connector::ConnectorConfig;

    let ConnectorCommand::Aws(a) = args.command;
    init_logging(a.log_format);
    let ec2 = ec2_client(&a)?;
    let name = a.name.clone().unwrap_or_else(|| format!("aws-{}", a.region));
    let mut cfg = ConnectorConfig::new(a.state_dir.clone(), name);
    cfg.join.servers = a.server.clone();
    cfg.join.join_token = a.join_token.clone();
    cfg.join.ca_cert = a.ca_cert.clone();
    cfg.mapping = Mapping { resource_group_tag: a.resource_group_tag.clone(), vpcs: a.vpcs.iter().cloned().collect() };
    cfg.sweep_interval = a.sweep_interval;
    cfg.discovery_interval = a.discovery_interval;
    cfg.poll_wait = std::time::Duration::from_secs(a.poll_seconds);
    tracing::info!(region = %a.region, state_dir = %a.state_dir.display(), "starting the AWS connector");
    Ok(jitgate_connector::run(cfg, &ec2, shutdown_signal()).await?)
}

#[cfg(not(feature = "aws"))]
pub async fn run(_: ConnectorArgs) -> anyhow::Result<()> {
    anyhow::bail!("this jitgate was built without the AWS connector (cargo feature `aws`)")
}

/// The EC2 client for `--region`, `--endpoint-url` and `--profile`.
#[cfg(feature = "aws")]
fn ec2_client(a: &jitgate_cli::connector::AwsArgs) -> anyhow::Result<jitgate_aws::Ec2Client> {
    let mut config = jitgate_aws::Config::new(a.region.clone());
    if let Some(u) = &a.endpoint_url {
        config.endpoint_url = Some(u.parse().map_err(|e| anyhow::anyhow!("--endpoint-url {u}: {e}"))?);
    }
    config.profile = a.profile.clone();
    Ok(jitgate_aws::Ec2Client::new(config)?)
}
