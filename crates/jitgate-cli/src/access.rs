//! `jitgate access …`: access requests from the terminal.

use clap::{Args, Subcommand};

use crate::{call, ConnArgs};

#[derive(Debug, Clone, Args)]
pub struct AccessArgs {
    #[command(subcommand)]
    pub command: AccessCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum AccessCommand {
    /// End a request's grants now ("I'm done"); the ports close at once.
    Revoke(RevokeArgs),
}

#[derive(Debug, Clone, Args)]
pub struct RevokeArgs {
    /// The request id (the `id` of the initiate answer).
    pub id: i64,
    /// Wait until every enforcement point has closed the ports.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub conn: ConnArgs,
}

pub async fn revoke(args: RevokeArgs) -> anyhow::Result<()> {
    let (url, token, client) = args.conn.connect()?;
    let wait = if args.wait { "?wait=applied" } else { "" };
    let out = call(client.post(format!("{url}/api/v1/requests/{}/revoke{wait}", args.id)).bearer_auth(token)).await?;
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
