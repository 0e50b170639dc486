//! `jitgate bench`: its command line, and the parts of the initiate benchmark the other
//! benchmarks share: the bench VM and policy, and the driver that runs concurrent clients and
//! times their calls. The benchmarks themselves run in the `jitgate` binary, which owns the
//! server, the store and the kernel interfaces they measure against.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;

use jitgate_api_types::arm::{PolicyIn, PolicyPropertiesIn, PolicyVmIn, PortRuleIn};
use jitgate_api_types::native::VmIn;
use jitgate_client::arm::PolicyRef;
use jitgate_client::Client;

use crate::output::{exit, fail};
use crate::CliError;

/// `jitgate bench` measures initiate throughput; its subcommands measure enforcement.
#[derive(Debug, Clone, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: Option<BenchCommand>,
    #[command(flatten)]
    pub initiate: InitiateBenchArgs,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum BenchCommand {
    /// Initiate throughput and latency over HTTPS (the default), beside yardsticks measured in
    /// the same run: SQLite's commit rate for the same writes and a bare HTTPS server's rate.
    #[command(
        after_help = "Example:\n  jitgate bench initiate --concurrency 16 --seconds 10\n  jitgate bench --yardstick-seconds 0   # jitgate alone"
    )]
    Initiate(InitiateBenchArgs),
    /// In network namespaces: time from the initiate call to the first TCP connect through the
    /// new grant, and how late ports close after endTimeUtc (needs root and nft); beside it the
    /// floor measured in the same run: one fsync, two loopback HTTPS round trips, a netlink add.
    #[command(after_help = "Example:\n  sudo jitgate bench open-latency --grants 200")]
    OpenLatency(OpenLatencyArgs),
    /// In a network namespace: nftables batch and update times at scale, and the TCP connect
    /// rate through a table of 10 versus many live grants (needs root and nft).
    #[command(after_help = "Example:\n  sudo jitgate bench kernel --elements 100000")]
    Kernel(KernelArgs),
    /// In network namespaces, with a real server and agent holding live grants: `nft flush
    /// ruleset` run again and again, timed from the flush's commit to the agent's table being
    /// back (the window in which the protected ports were open), read from nftables' own events
    /// (needs root and nft).
    #[command(after_help = "Example:\n  sudo jitgate bench restore --flushes 200 --grants 100")]
    Restore(RestoreArgs),
    /// The cost of an authorization check for a principal holding many role assignments.
    #[command(after_help = "Example:\n  jitgate bench authz --assignments 1000")]
    Authz(AuthzArgs),
    /// Audit queries and chain verification over a large log.
    #[command(after_help = "Example:\n  jitgate bench audit --records 1000000")]
    Audit(AuditBenchArgs),
    /// The server's time to render the portal's JIT VM access page over many VMs, and its size.
    #[command(after_help = "Example:\n  jitgate bench portal --vms 10000")]
    Portal(PortalArgs),
    /// A page of 100 VMs of each inventory view of `GET /api/v1/vms` (first and middle page)
    /// over many registered VMs, beside a bare request through the same router.
    #[command(after_help = "Example:\n  jitgate bench inventory --vms 100000")]
    Inventory(InventoryArgs),
    /// PostgreSQL scale-out: initiates per second with 1 and 2 replicas on one database, the
    /// fan-out of one initiate to many long-polling agents across the replicas, and memory.
    #[command(
        after_help = "Example:\n  jitgate bench replicas --agents 1000 --vms 10000\n  sudo jitgate bench replicas   # also the memory of a real agent, in a network namespace"
    )]
    Replicas(ReplicasArgs),
    /// A long run of mixed traffic against a real server (SQLite): in-process agents on fake
    /// firewalls and real agents on nftables in network namespaces; grants opening, expiring,
    /// approved, denied and revoked, policies edited. Samples the server's memory, descriptors,
    /// WAL size, live grants against firewall elements and expiry lateness, and fails (exit 1)
    /// on growth, a leak or a missed expiry.
    #[command(
        after_help = "Example:\n  sudo jitgate bench soak                      # one hour, 100 agents, 3 real ones\n  sudo jitgate bench soak --duration 2m --agents 20\n  jitgate bench soak --duration 10m --real-agents 0   # no root: fake firewalls only"
    )]
    Soak(SoakArgs),
    /// In network namespaces: jitgate's sets with per-element timeouts against one nftables
    /// rule per grant (and one iptables rule per grant, when iptables is installed) at 10, 1,000
    /// and 100,000 grants: time to add and remove one grant, and the TCP connect rate.
    #[command(after_help = "Example:\n  sudo jitgate bench rules\n  sudo jitgate bench rules --grants 10,1000")]
    Rules(RulesArgs),
    /// In network namespaces: jitgate against fwknop (Debian's fwknop-server and fwknop-client):
    /// time from the request to the open port, and whether an open grant closes at its end when
    /// each daemon is killed with SIGKILL during it.
    #[command(after_help = "Example:\n  sudo jitgate bench fwknop --rounds 20")]
    Fwknop(FwknopArgs),
    /// The AWS connector against moto's EC2 server (from `scripts/moto-venv.sh`): grants per
    /// second from initiate to the rule in the security group, and the time a restarted
    /// connector takes to remove expired rules a stopped one left behind, beside the bare EC2
    /// call rate of the same moto.
    #[command(
        after_help = "Example:\n  jitgate bench connector\n  jitgate bench connector --grants 500 --expired 2000\n  JITGATE_MOTO_VENV=/opt/moto jitgate bench connector --grants 5 --expired 20"
    )]
    Connector(ConnectorBenchArgs),
    /// Internal: the parts of `open-latency` and `kernel` that run inside a namespace.
    #[command(hide = true)]
    Inner(InnerArgs),
}

/// `--duration` of the soak: `1h`, `90m`, `2m`, `30s`.
pub fn soak_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim().to_ascii_lowercase();
    match t.strip_suffix('h') {
        Some(hours) => hours
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|h| h.is_finite() && *h > 0.0 && *h <= 24.0)
            .map(|h| Duration::from_secs_f64(h * 3600.0))
            .ok_or_else(|| format!("'{text}' is not a duration such as 1h, 90m or 2m")),
        None => crate::seconds(&t),
    }
}

#[derive(Debug, Clone, Args)]
pub struct SoakArgs {
    /// How long the traffic runs (then the last grants are watched to their end): 1h, 10m, 2m.
    #[arg(long, default_value = "1h", value_parser = soak_duration)]
    pub duration: Duration,
    /// Agents in this process, each on a fake firewall of its own (one VM each).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=2000))]
    pub agents: u32,
    /// Real `jitgate agent` processes on nftables, each in a network namespace (needs root and
    /// nft; 0: none).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(0..=16))]
    pub real_agents: u32,
    /// Initiates per second, over all VMs (a quarter of them to the real agents' VMs).
    #[arg(long, default_value_t = 4.0)]
    pub rate: f64,
    /// Seconds between two samples of the server.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub sample_every: u64,
}

#[derive(Debug, Clone, Args)]
pub struct RulesArgs {
    /// The table sizes measured (live grants), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [10u32, 1_000, 100_000])]
    pub grants: Vec<u32>,
    /// Seconds of TCP connects per connect-rate measurement.
    #[arg(long, default_value_t = 2)]
    pub seconds: u64,
    /// Single adds and removes timed at each size.
    #[arg(long, default_value_t = 100)]
    pub updates: u32,
}

#[derive(Debug, Clone, Args)]
pub struct FwknopArgs {
    /// Requests timed for each of jitgate and fwknop.
    #[arg(long, default_value_t = 20)]
    pub rounds: u32,
    /// The window of the grants watched while a daemon is killed, in seconds.
    #[arg(long, default_value_t = 10)]
    pub window: u64,
}

#[derive(Debug, Clone, Args)]
pub struct ConnectorBenchArgs {
    /// Initiates through the connector, each from its own source address (spread over
    /// instances of at most 50 grants, below EC2's 60 rules per security group).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=5000))]
    pub grants: u32,
    /// Initiates in flight at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub concurrency: u32,
    /// Expired rules put into the jitgate groups while the connector is stopped (60 a group),
    /// timed until the restarted connector has removed the last (0: not measured).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(0..=20_000))]
    pub expired: u32,
    /// Serial AuthorizeSecurityGroupIngress + RevokeSecurityGroupIngress pairs of the bare EC2
    /// yardstick (0: not measured).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub calls: u32,
}

#[derive(Debug, Clone, Args)]
pub struct PortalArgs {
    /// Registered VMs (in resource groups of 100; half of the groups configured).
    #[arg(long, default_value_t = 10_000)]
    pub vms: usize,
    /// Renders of each page measured.
    #[arg(long, default_value_t = 200)]
    pub renders: usize,
}

#[derive(Debug, Clone, Args)]
pub struct InventoryArgs {
    /// Registered VMs (over 100 resource groups; half of them configured, some unsupported).
    #[arg(long, default_value_t = 10_000)]
    pub vms: usize,
    /// Requests of each page measured.
    #[arg(long, default_value_t = 200)]
    pub requests: usize,
    /// VMs per page (`$top`).
    #[arg(long, default_value_t = 100)]
    pub top: usize,
}

#[derive(Debug, Clone, Args)]
pub struct OpenLatencyArgs {
    /// How many grants to open (and revoke) one after the other.
    #[arg(long, default_value_t = 200)]
    pub grants: u32,
    /// How many short grants to watch expire.
    #[arg(long, default_value_t = 10)]
    pub expiries: u32,
    /// Samples of each yardstick measured in the same run (one fsync, one loopback HTTPS round
    /// trip, one netlink element add); 0 leaves them out.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub yardstick_samples: u32,
}

#[derive(Debug, Clone, Args)]
pub struct KernelArgs {
    /// Live grants in the big table.
    #[arg(long, default_value_t = 100_000)]
    pub elements: u32,
    /// Seconds of TCP connects per connect-rate measurement.
    #[arg(long, default_value_t = 3)]
    pub seconds: u64,
}

#[derive(Debug, Clone, Args)]
pub struct RestoreArgs {
    /// How many times to flush the ruleset.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub flushes: u32,
    /// Live grants in the agent's table (each one element the agent must put back).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub grants: u32,
}

#[derive(Debug, Clone, Args)]
pub struct ReplicasArgs {
    /// The PostgreSQL server (no database: the benchmark makes its own and drops it).
    #[arg(long, env = "JITGATE_BENCH_PG", default_value = "postgres://postgres@127.0.0.1:5432")]
    pub postgres: String,
    /// Concurrent initiating clients, spread over the replicas.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub concurrency: u64,
    /// Seconds of initiates measured per configuration.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub seconds: u64,
    /// Seconds of warm-up before measuring.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Simulated agents (on no firewall: they report what they are sent) long-polling the replicas.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=20_000))]
    pub agents: u64,
    /// Registered VMs in all (the agents' VMs included).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=200_000))]
    pub vms: u64,
    /// Initiates touching every agent's VM, timed until all agents report them applied.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub rounds: u64,
    /// Only the fan-out and the replicas' memory: no commit yardstick, audit chain, initiate
    /// rates or real agent.
    #[arg(long)]
    pub fan_out_only: bool,
}

#[derive(Debug, Clone, Args)]
pub struct AuditBenchArgs {
    /// Records in the log.
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u32,
}

#[derive(Debug, Clone, Args)]
pub struct AuthzArgs {
    /// Role assignments the principal holds.
    #[arg(long, default_value_t = 1000)]
    pub assignments: u32,
    /// Checks to time.
    #[arg(long, default_value_t = 100_000)]
    pub checks: u32,
}

#[derive(Debug, Clone, Args)]
pub struct InnerArgs {
    /// Which part: open, connect-rate, nft-setup, nft-fill, nft-remove, nft-one, restore-grants,
    /// restore-flush, restore-floor.
    pub part: String,
    #[arg(long)]
    pub url: Option<String>,
    #[arg(long)]
    pub token: Option<String>,
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    #[arg(long)]
    pub from: Option<std::net::IpAddr>,
    #[arg(long)]
    pub to: Option<std::net::SocketAddr>,
    #[arg(long, default_value_t = 0)]
    pub count: u32,
    #[arg(long, default_value_t = 0)]
    pub extra: u32,
    #[arg(long, default_value_t = 3)]
    pub seconds: u64,
}

#[derive(Debug, Clone, Args)]
pub struct InitiateBenchArgs {
    /// Server to measure; when absent, a fresh `jitgate serve` is started in a temporary directory.
    #[arg(long, requires = "token")]
    pub url: Option<String>,
    /// Bearer token for --url (needs the rights to register a VM, write a policy and initiate).
    #[arg(long)]
    pub token: Option<String>,
    /// CA certificate (PEM) that signs the server's certificate, for --url.
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// Concurrent clients, each with its own keep-alive connection.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub concurrency: u64,
    /// How long to measure, in seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub seconds: u64,
    /// Seconds of warm-up before measuring.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Seconds for each yardstick measured in the same run on this machine (SQLite commits of an
    /// initiate's shape, serial and batched; bare HTTPS requests); 0 leaves them out.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(0..=600))]
    pub yardstick_seconds: u64,
}

/// The server a benchmark starts drives one principal as fast as it can from one address: the
/// initiate rate limit and the per-source connection cap would measure themselves instead.
/// It also reports where each request's time went (`Server-Timing`).
pub const BENCH_SERVER_FLAGS: &[&str] =
    &["--rate-limit-initiate", "off", "--max-connections-per-source", "0", "--server-timing"];

const SUB: &str = "b0000000-0000-4000-8000-000000000001";
const RG: &str = "bench-rg";

/// Puts the policy `at`: one VM, one TCP port, any source, PT3H.
pub async fn put_bench_policy(client: &Client, at: &PolicyRef, vm_id: &str, port: u16) -> Result<(), CliError> {
    let rule = PortRuleIn {
        number: Some(i64::from(port)),
        protocol: Some("TCP".to_owned()),
        allowed_source_address_prefix: Some("*".to_owned()),
        max_request_access_duration: Some("PT3H".to_owned()),
        ..PortRuleIn::default()
    };
    let vm = PolicyVmIn { id: Some(vm_id.to_owned()), ports: Some(vec![rule]), public_ip_address: None };
    let body = PolicyIn {
        kind: Some("Basic".to_owned()),
        properties: Some(PolicyPropertiesIn { virtual_machines: Some(vec![vm]) }),
    };
    match client.arm().put_policy(at, &body).await {
        Ok(_) => Ok(()),
        Err(e) => Err(fail(exit::ERROR, format!("creating the bench policy: {e}"))),
    }
}

/// The VM and policy the initiate benchmark drives: registered and written through `client`.
pub struct BenchTarget {
    pub vm_id: String,
    pub initiate: String,
}

/// Registers the bench VM and writes its policy (port 22, any source).
pub async fn bench_target(client: &Client) -> Result<BenchTarget, CliError> {
    let vm_id =
        format!("/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachines/bench-vm");
    let policy = PolicyRef {
        subscription: SUB.to_owned(),
        resource_group: RG.to_owned(),
        location: "westeurope".to_owned(),
        name: "bench".to_owned(),
    };
    let vm = VmIn {
        id: Some(vm_id.clone()),
        os_type: Some("Linux".to_owned()),
        location: Some("westeurope".to_owned()),
        ..VmIn::default()
    };
    if let Err(e) = client.native().put_vm(&vm).await {
        return Err(fail(exit::ERROR, format!("registering the bench VM: {e}")));
    }
    put_bench_policy(client, &policy, &vm_id, 22).await?;
    Ok(BenchTarget { vm_id, initiate: policy.id() })
}

/// What a run of calls measured: the latencies of those that succeeded (sorted), how many
/// failed, and over how long.
pub struct Measured {
    pub latencies: Vec<Duration>,
    pub errors: u64,
    pub window: Duration,
}

impl Measured {
    /// The `p` quantile (0..=1) of the latencies.
    pub fn pct(&self, p: f64) -> Duration {
        let n = self.latencies.len();
        if n == 0 {
            return Duration::ZERO;
        }
        self.latencies[((n as f64 * p).ceil() as usize).clamp(1, n) - 1]
    }

    /// Successful calls per second.
    pub fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.window.as_secs_f64().max(1e-3)
    }
}

/// Runs `concurrency` clients initiating as fast as they can for `seconds` after `warmup`
/// seconds; client `i` uses `clients[i % clients.len()]` (one server each, or all the same).
pub async fn drive(
    clients: &[Client],
    target: &BenchTarget,
    concurrency: u64,
    warmup: u64,
    seconds: u64,
) -> Result<Measured, CliError> {
    let initiate = Arc::new(target.initiate.clone());
    let vm_id = Arc::new(target.vm_id.clone());
    let call = move |client: Client, n: u64| {
        let body = initiate_body(&vm_id, n);
        let initiate = initiate.clone();
        async move { client.arm().initiate(&initiate, &body, false).await.is_ok() }
    };
    let (warmup, seconds) = (Duration::from_secs(warmup), Duration::from_secs(seconds));
    let m = drive_with(clients, concurrency, warmup, seconds, call).await?;
    if m.latencies.is_empty() {
        return Err(fail(exit::ERROR, format!("no initiate succeeded ({} failed)", m.errors)));
    }
    Ok(m)
}

/// The body of the `n`-th initiate of the benchmark: port 22 of `vm_id` for an hour, from a
/// source address of its own (10.x.y.z).
pub fn initiate_body(vm_id: &str, n: u64) -> jitgate_api_types::arm::InitiateIn {
    let source = format!("10.{}.{}.{}", (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff);
    crate::access::initiate_body(vm_id, &[22], &source, None, Some("PT1H".to_owned()), Some("bench".to_owned()))
}

/// Runs `concurrency` clients, each making `call(client, n)` (`n` counts calls across all of
/// them; the future answers whether the call succeeded) one after the other as fast as it can
/// for `measure` after `warmup`; client `i` uses `clients[i % clients.len()]`. What `call` does
/// before it returns its future is not timed. The latencies may be empty (nothing succeeded).
pub async fn drive_with<F, Fut>(
    clients: &[Client],
    concurrency: u64,
    warmup: Duration,
    measure: Duration,
    call: F,
) -> Result<Measured, CliError>
where
    F: Fn(Client, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let counter = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + measure;
    let mut tasks = Vec::new();
    for i in 0..concurrency {
        let Some(client) = clients.get(i as usize % clients.len().max(1)).cloned() else { break };
        let (counter, errors, call) = (counter.clone(), errors.clone(), call.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(16_384);
            loop {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let pending = call(client.clone(), n);
                let sent = Instant::now();
                let ok = pending.await;
                let took = sent.elapsed();
                if sent >= measure_from {
                    if ok {
                        latencies.push(took);
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?);
    }
    all.sort_unstable();
    Ok(Measured { latencies: all, errors: errors.load(Ordering::Relaxed), window: measure })
}

/// Milliseconds, for printing.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;
    use crate::{Cli, Command};

    fn bench(args: &[&str]) -> Result<BenchArgs, clap::Error> {
        let cli = Cli::try_parse_from(["jitgate", "bench"].iter().chain(args))?;
        let Command::Bench(b) = cli.command else { panic!("bench expected") };
        Ok(b)
    }

    #[test]
    fn yardstick_flags_parse_with_defaults_and_bounds() {
        let b = bench(&[]).expect("defaults");
        assert!(b.command.is_none());
        assert_eq!((b.initiate.concurrency, b.initiate.yardstick_seconds), (16, 3));
        assert_eq!(bench(&["--yardstick-seconds", "0"]).expect("off").initiate.yardstick_seconds, 0);
        let b = bench(&["initiate", "--yardstick-seconds", "5", "--concurrency", "4"]).expect("initiate");
        let Some(BenchCommand::Initiate(a)) = b.command else { panic!("initiate expected") };
        assert_eq!((a.yardstick_seconds, a.concurrency), (5, 4));
        assert!(bench(&["--yardstick-seconds", "601"]).is_err());
        assert!(bench(&["--yardstick-seconds", "-1"]).is_err());

        let b = bench(&["open-latency"]).expect("open-latency");
        let Some(BenchCommand::OpenLatency(a)) = b.command else { panic!("open-latency expected") };
        assert_eq!((a.grants, a.yardstick_samples), (200, 1000));
        let b = bench(&["open-latency", "--yardstick-samples", "0"]).expect("no yardsticks");
        let Some(BenchCommand::OpenLatency(a)) = b.command else { panic!("open-latency expected") };
        assert_eq!(a.yardstick_samples, 0);
        assert!(bench(&["open-latency", "--yardstick-samples", "100001"]).is_err());
    }

    #[test]
    fn the_help_names_the_yardsticks() {
        let mut cmd = Cli::command();
        let bench = cmd.find_subcommand_mut("bench").expect("bench");
        let help = bench.render_long_help().to_string();
        assert!(help.contains("--yardstick-seconds"), "{help}");
        let open = bench.find_subcommand_mut("open-latency").expect("open-latency").render_long_help().to_string();
        assert!(open.contains("--yardstick-samples"), "{open}");
    }
}
