//! `jitgate bench`: initiate throughput and latency over HTTPS with keep-alive and several
//! concurrent clients, against a server it starts (embedded SQLite, fsync on every commit,
//! audit included) or one named with --url.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;

use jitgate_api_types::arm::{PolicyIn, PolicyPropertiesIn, PolicyVmIn, PortRuleIn};
use jitgate_api_types::native::VmIn;
use jitgate_client::arm::PolicyRef;
use jitgate_client::local::LocalServer;
use jitgate_client::{Client, Settings};

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
    /// Initiate throughput and latency over HTTPS (the default).
    #[command(after_help = "Example:\n  jitgate bench initiate --concurrency 16 --seconds 10")]
    Initiate(InitiateBenchArgs),
    /// In network namespaces: time from the initiate call to the first TCP connect through the
    /// new grant, and how late ports close after endTimeUtc (needs root and nft).
    #[command(after_help = "Example:\n  sudo jitgate bench open-latency --grants 200")]
    OpenLatency(OpenLatencyArgs),
    /// In a network namespace: nftables batch and update times at scale, and the TCP connect
    /// rate through a table of 10 versus many live grants (needs root and nft).
    #[command(after_help = "Example:\n  sudo jitgate bench kernel --elements 100000")]
    Kernel(KernelArgs),
    /// The cost of an authorization check for a principal holding many role assignments.
    #[command(after_help = "Example:\n  jitgate bench authz --assignments 1000")]
    Authz(AuthzArgs),
    /// Audit queries and chain verification over a large log.
    #[command(after_help = "Example:\n  jitgate bench audit --records 1000000")]
    Audit(AuditBenchArgs),
    /// The server's time to render the portal's JIT VM access page over many VMs, and its size.
    #[command(after_help = "Example:\n  jitgate bench portal --vms 10000")]
    Portal(PortalArgs),
    /// PostgreSQL scale-out: initiates per second with 1 and 2 replicas on one database, the
    /// fan-out of one initiate to many long-polling agents across the replicas, and memory.
    #[command(
        after_help = "Example:\n  jitgate bench replicas --agents 1000 --vms 10000\n  sudo jitgate bench replicas   # also the memory of a real agent, in a network namespace"
    )]
    Replicas(ReplicasArgs),
    /// Internal: the parts of `open-latency` and `kernel` that run inside a namespace.
    #[command(hide = true)]
    Inner(InnerArgs),
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
pub struct OpenLatencyArgs {
    /// How many grants to open (and revoke) one after the other.
    #[arg(long, default_value_t = 200)]
    pub grants: u32,
    /// How many short grants to watch expire.
    #[arg(long, default_value_t = 10)]
    pub expiries: u32,
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
    /// Which part: open, connect-rate, nft-setup, nft-fill.
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

/// What a run of initiates measured: the latencies of those that succeeded (sorted), and how
/// many failed.
pub struct Measured {
    pub latencies: Vec<Duration>,
    pub errors: u64,
    pub seconds: u64,
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

    pub fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.seconds.max(1) as f64
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
    let counter = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(warmup);
    let end = measure_from + Duration::from_secs(seconds);
    let initiate = Arc::new(target.initiate.clone());
    let mut tasks = Vec::new();
    for i in 0..concurrency {
        let Some(client) = clients.get(i as usize % clients.len().max(1)).cloned() else { break };
        let (counter, errors, initiate, vm_id) =
            (counter.clone(), errors.clone(), initiate.clone(), target.vm_id.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(16_384);
            loop {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let source = format!("10.{}.{}.{}", (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff);
                let body = crate::access::initiate_body(
                    &vm_id,
                    &[22],
                    &source,
                    None,
                    Some("PT1H".to_owned()),
                    Some("bench".to_owned()),
                );
                let sent = Instant::now();
                let ok = client.arm().initiate(&initiate, &body, false).await.is_ok();
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
    let errors = errors.load(Ordering::Relaxed);
    if all.is_empty() {
        return Err(fail(exit::ERROR, format!("no initiate succeeded ({errors} failed)")));
    }
    Ok(Measured { latencies: all, errors, seconds })
}

/// Milliseconds, for printing.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub async fn run(args: InitiateBenchArgs) -> Result<(), CliError> {
    let (_local, url, token, ca) = match &args.url {
        Some(url) => {
            (None, url.trim_end_matches('/').to_owned(), args.token.clone().unwrap_or_default(), args.ca_cert.clone())
        }
        None => {
            let exe =
                std::env::current_exe().map_err(|e| fail(exit::ERROR, format!("locating the jitgate binary: {e}")))?;
            let server = tokio::task::spawn_blocking(move || LocalServer::start(&exe, BENCH_SERVER_FLAGS)).await??;
            let (url, token, ca) = (server.url.clone(), server.token.clone(), Some(server.ca_cert.clone()));
            (Some(server), url, token, ca)
        }
    };
    let client = Client::new(Settings::new(url.as_str()).token(token).ca_cert_path(ca.as_deref()))?;
    let target = bench_target(&client).await?;
    let m = drive(std::slice::from_ref(&client), &target, args.concurrency, args.warmup, args.seconds).await?;
    println!(
        "jitgate bench: initiate over HTTPS (keep-alive), {} clients, {} s measured after {} s warm-up",
        args.concurrency, args.seconds, args.warmup
    );
    println!(
        "server: {url}{}",
        if args.url.is_none() {
            " (started for this run: embedded SQLite, WAL, fsync per commit, audit chain; initiate rate limit and per-source connection cap off)"
        } else {
            " (its --rate-limit-initiate applies: turn it off there to measure throughput)"
        }
    );
    println!("initiates: {} ok, {} failed", m.latencies.len(), m.errors);
    println!("throughput: {:.0} initiates/s", m.rate());
    println!(
        "latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
        ms(m.pct(0.50)),
        ms(m.pct(0.90)),
        ms(m.pct(0.99)),
        ms(m.pct(1.0))
    );
    Ok(())
}
