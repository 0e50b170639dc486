//! `jitgate agent`: the enforcement point, with the nftables backend.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jitgate_agent::prom::AgentMetrics;
use jitgate_agent::AgentConfig;
use jitgate_cli::agent::{AgentRunArgs, AgentUninstallArgs};
use jitgate_enforce::{Alarm, Desired, ElemOp, Firewall, FirewallError};
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

    /// The agent runs in the network namespace it protects, so the watch is opened there.
    fn watch(&mut self, alarm: Alarm) -> Result<(), FirewallError> {
        match &mut self.fw {
            Ok(fw) => Firewall::watch(fw, alarm),
            Err(e) => Err(FirewallError::Unusable(e.clone())),
        }
    }
}

/// `jitgate agent uninstall`: deletes `table inet jitgate` (the ports it kept closed open to
/// everyone again) and, unless `--keep-state`, the state directory. A running agent would make
/// the table again: stop it first.
pub fn uninstall(args: AgentUninstallArgs) -> anyhow::Result<()> {
    let dir = &args.state_dir;
    let credential = dir.join(jitgate_agent::CREDENTIAL_FILE);
    if dir.exists() && !credential.exists() && !dir.join(jitgate_agent::STATE_FILE).exists() {
        anyhow::bail!(
            "{} holds no agent credential or state: not an agent's state directory, so nothing is removed (check --state-dir)",
            dir.display()
        );
    }
    let mut fw = NftFirewall::open().map_err(|e| {
        anyhow::anyhow!("cannot reach nftables ({e}); run as root (CAP_NET_ADMIN) on the host the agent protected")
    })?;
    fw.remove().map_err(|e| anyhow::anyhow!("deleting table inet {}: {e}", jitgate_enforce_nft::TABLE))?;
    println!(
        "deleted table inet {} (the ports it protected are no longer filtered by jitgate)",
        jitgate_enforce_nft::TABLE
    );
    if args.keep_state || !dir.exists() {
        return Ok(());
    }
    std::fs::remove_dir_all(dir).map_err(|e| anyhow::anyhow!("removing {}: {e}", dir.display()))?;
    println!("removed {}", dir.display());
    println!("the server lists this agent until it is removed there: jitgate agent rm NAME-or-ID");
    Ok(())
}

/// Serves the agent's metrics at `http://ADDR/metrics` until the returned task is aborted.
async fn serve_metrics(
    addr: std::net::SocketAddr,
    metrics: Arc<AgentMetrics>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("listening on {addr} (--metrics-listen): {e}"))?;
    let local = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move { ([(axum::http::header::CONTENT_TYPE, jitgate_agent::prom::CONTENT_TYPE)], metrics.render()) }
        }),
    );
    // On stdout, like the server's address: with port 0 this says which port was picked.
    println!("jitgate agent metrics on http://{local}/metrics");
    tracing::info!(url = %format!("http://{local}/metrics"), "serving the agent's metrics");
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the metrics listener stopped");
        }
    }))
}

pub async fn run(args: AgentRunArgs) -> anyhow::Result<()> {
    init_logging(args.log_format);
    let metrics = Arc::new(AgentMetrics::new());
    let listener = match args.metrics_listen {
        Some(addr) => Some(serve_metrics(addr, metrics.clone()).await?),
        None => None,
    };
    let cfg = AgentConfig {
        metrics,
        servers: args.server,
        join_token: args.join_token,
        ca_cert: args.ca_cert,
        pins: args.server_fingerprint,
        state_dir: args.state_dir.ok_or_else(|| anyhow::anyhow!("--state-dir is required"))?,
        mode: args.mode,
        vm_name: args.vm_name,
        public_address: args.public_address,
        poll_wait: Duration::from_secs(args.poll_seconds),
        rotate_credential: args.rotate_credential,
    };
    let fw = Nft { fw: NftFirewall::open().map_err(|e| e.to_string()) };
    let result = jitgate_agent::run(cfg, fw, shutdown_signal()).await;
    if let Some(l) = listener {
        l.abort();
    }
    Ok(result?)
}
