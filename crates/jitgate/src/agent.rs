//! `jitgate agent`: the enforcement point, with the nftables backend.

use std::time::{Duration, Instant};

use jitgate_agent::AgentConfig;
use jitgate_cli::agent::AgentRunArgs;
use jitgate_cli::LogFormat;
use jitgate_enforce::{Desired, ElemOp, Firewall, FirewallError};
use jitgate_enforce_nft::NftFirewall;

use crate::common::{init_logging, shutdown_signal};

/// nftables as the agent's firewall; remembers why it cannot be used when it cannot.
struct Nft {
    fw: Result<NftFirewall, String>,
}

impl Firewall for Nft {
    fn usable(&self) -> Result<(), FirewallError> {
        match &self.fw {
            Ok(fw) => fw.usable(),
            Err(e) => Err(FirewallError::Unusable(e.clone())),
        }
    }

    fn replace(&mut self, desired: &Desired, now: Instant) -> Result<(), FirewallError> {
        match &mut self.fw {
            Ok(fw) => Firewall::replace(fw, desired, now),
            Err(e) => Err(FirewallError::Unusable(e.clone())),
        }
    }

    fn apply(&mut self, ops: &[ElemOp]) -> Result<(), FirewallError> {
        match &mut self.fw {
            Ok(fw) => Firewall::apply(fw, ops),
            Err(e) => Err(FirewallError::Unusable(e.clone())),
        }
    }
}

pub async fn run(args: AgentRunArgs) -> anyhow::Result<()> {
    init_logging(LogFormat::Text);
    let cfg = AgentConfig {
        server: args.server,
        join_token: args.join_token,
        ca_cert: args.ca_cert,
        state_dir: args.state_dir.ok_or_else(|| anyhow::anyhow!("--state-dir is required"))?,
        mode: args.mode,
        vm_name: args.vm_name,
        public_address: args.public_address,
        poll_wait: Duration::from_secs(args.poll_seconds),
        rotate_credential: args.rotate_credential,
    };
    let fw = Nft { fw: NftFirewall::open().map_err(|e| e.to_string()) };
    Ok(jitgate_agent::run(cfg, fw, shutdown_signal()).await?)
}
