//! `jitgate bench connector`: the AWS connector against moto's EC2 server, measured in one run.
//!
//! - Grants: a real `jitgate serve`, moto on a loopback port, instances in moto (at most 50
//!   grants each, below EC2's 60 rules per security group), a policy over them, and `jitgate
//!   connector aws` as a child process. N initiates from distinct sources; each is timed from
//!   its initiate call until its rule is seen in `DescribeSecurityGroups` of those instances'
//!   groups (polled without pause), and the whole from the first initiate to the last rule seen.
//! - Restart: the connector is killed with SIGKILL; 60 rules whose `exp=` has passed are put
//!   into each of enough jitgate groups (of extra instances in the policy, which the connector
//!   created), directly through the EC2 API, as a dead connector would have left them. The
//!   connector is started again (same state directory) and timed until the last one is gone.
//! - Yardstick: the bare EC2 call rate of the same moto through the same client: serial
//!   AuthorizeSecurityGroupIngress + RevokeSecurityGroupIngress of one rule in a group outside
//!   jitgate, and the same with 60 rules a call (the shape of the connector's sweep).

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::ops::AsyncFnMut;

use anyhow::{bail, Context};

use jitgate_api_types::arm::{PolicyIn, PolicyPropertiesIn, PolicyVmIn, PortRuleIn};
use jitgate_aws::{Ec2, Ec2Client, Filter, IpPermission, IpRange, Tag};
use jitgate_cli::bench::{ConnectorBenchArgs, BENCH_SERVER_FLAGS};
use jitgate_client::arm::PolicyRef;
use jitgate_client::local::LocalServer;
use jitgate_client::{Client, Settings};
use jitgate_connector::desired::{describe, parse_note};
use jitgate_connector::sweep::managed_filter;
use jitgate_netns::KillOnDrop;

use crate::yardstick::Machine;

const SUB: &str = "b0000000-0000-4000-8000-000000000001";
const RG: &str = "aws";
const LOCATION: &str = "westeurope";
/// Grants per instance: EC2 allows 60 rules a group, and the server refuses a 61st.
const GRANTS_PER_INSTANCE: u32 = 50;
/// Rules a security group holds (EC2's default limit, which moto enforces too).
const RULES_PER_GROUP: u32 = 60;
/// How long any one stage may take before the bench gives up.
const STAGE_LIMIT: Duration = Duration::from_secs(300);
/// The first request id of the expired rules (far above any id the server hands out here).
const EXPIRED_IDS: i64 = 900_000_000;

pub async fn run(args: ConnectorBenchArgs) -> anyhow::Result<()> {
    println!("jitgate bench connector: the AWS connector against moto's EC2 server (not AWS: EC2's own latency and throttling differ)");
    println!("{}", Machine::detect());
    let moto = tokio::task::spawn_blocking(MotoServer::start).await??;
    let ec2 = Ec2Client::new(jitgate_aws::testing::Moto::config_for(moto.url()?))?;
    let exe = std::env::current_exe().context("locating the jitgate binary")?;
    let server = {
        let exe = exe.clone();
        tokio::task::spawn_blocking(move || LocalServer::start(&exe, BENCH_SERVER_FLAGS)).await??
    };
    let settings = Settings::new(server.url.as_str()).token(server.token.clone()).ca_cert_path(Some(&server.ca_cert));
    let client = Client::new(settings)?;

    // EC2: a VPC, a subnet, instances for the grants and for the expired rules.
    let grant_instances = args.grants.div_ceil(GRANTS_PER_INSTANCE);
    let expired_groups = args.expired.div_ceil(RULES_PER_GROUP);
    let vpc = ec2.create_vpc("10.0.0.0/16").await?;
    let subnet = ec2.create_subnet(&vpc, "10.0.1.0/24").await?;
    let instances =
        ec2.run_instances(&subnet, grant_instances + expired_groups, &[Tag::new("Name", "jitgate-bench")]).await?;
    println!(
        "moto: {} (moto_server {}); {} instances ({} for the grants, {} for the expired rules)",
        moto.addr,
        moto.version(),
        instances.len(),
        grant_instances,
        expired_groups
    );

    let token = server.create_join_token(Command::new(&exe), SUB, RG, LOCATION, &["--mode", "cloud"])?;
    let state = tempfile::tempdir().context("a state directory for the connector")?;
    let ready = Instant::now();
    let mut connector = start_connector(&exe, &server, &moto, state.path(), Some(&token))?;
    let policy = PolicyRef {
        subscription: SUB.to_owned(),
        resource_group: RG.to_owned(),
        location: LOCATION.to_owned(),
        name: "bench".to_owned(),
    };
    let vm_ids: Vec<String> = instances.iter().map(|i| vm_id(i)).collect();
    put_policy(&client, &policy, &vm_ids).await?;
    wait_for(STAGE_LIMIT, "every instance's jitgate group", async || {
        Ok(ec2.describe_security_groups(&[managed_filter()]).await?.len() >= instances.len())
    })
    .await?;
    println!(
        "enable: connector started → instances registered, policy put, {} jitgate groups made: {:.1} s",
        instances.len(),
        ready.elapsed().as_secs_f64()
    );

    let grant_groups = jitgate_groups(&ec2, &instances[..grant_instances as usize]).await?;
    let grants = grants(&client, &ec2, &policy, &vm_ids[..grant_instances as usize], &grant_groups, &args).await?;
    println!(
        "grants: {} initiates from distinct sources over {} instances, {} in flight",
        args.grants, grant_instances, args.concurrency
    );
    println!(
        "grants through the connector: {:.1} grants/s ({} rules visible in EC2 {:.2} s after the first initiate)",
        grants.rate(),
        grants.latencies.len(),
        grants.window.as_secs_f64()
    );
    println!(
        "grant latency ms (initiate → rule visible in DescribeSecurityGroups): p50 {:.0}  p99 {:.0}  max {:.0}",
        ms(pct(&grants.latencies, 0.5)),
        ms(pct(&grants.latencies, 0.99)),
        ms(pct(&grants.latencies, 1.0))
    );

    let mut restart = None;
    if args.expired > 0 {
        connector.0.kill().context("stopping the connector")?;
        connector.0.wait().context("reaping the connector")?;
        let groups: Vec<String> = jitgate_groups(&ec2, &instances[grant_instances as usize..]).await?;
        let put = put_expired(&ec2, &groups, args.expired).await?;
        println!(
            "expired rules: {} put into {} jitgate groups ({} a group, EC2's limit; `exp=` a minute ago) through the EC2 API in {:.1} s while the connector was stopped",
            args.expired,
            groups.len(),
            RULES_PER_GROUP,
            put.as_secs_f64()
        );
        let started = Instant::now();
        connector = start_connector(&exe, &server, &moto, state.path(), None)?;
        wait_for(STAGE_LIMIT, "the expired rules to be removed", async || Ok(expired_left(&ec2, &groups).await? == 0))
            .await?;
        let took = started.elapsed();
        let rate = f64::from(args.expired) / took.as_secs_f64();
        println!(
            "restart: connector started → last of {} expired rules gone: {:.2} s ({:.0} rules/s, process start and the start-up sweep included)",
            args.expired,
            took.as_secs_f64(),
            rate
        );
        restart = Some(rate);
    }
    drop(connector);

    if args.calls > 0 {
        let y = yardstick(&ec2, &vpc, args.calls).await?;
        println!(
            "yardstick: bare EC2 calls on the same moto, serial, through the same client: {:.1} calls/s ({} AuthorizeSecurityGroupIngress + RevokeSecurityGroupIngress pairs of one rule; call latency ms p50 {:.1}  p99 {:.1})",
            y.single_rate(),
            args.calls,
            ms(pct(&y.single, 0.5)),
            ms(pct(&y.single, 0.99))
        );
        println!(
            "yardstick: bare batched revoke, {} rules a RevokeSecurityGroupIngress, serial: {:.0} rules/s",
            RULES_PER_GROUP,
            y.batched_rate()
        );
        let mut ratios = vec![format!(
            "grants/s {} the bare single-rule call rate (above 1×: the connector puts the grants one poll brings for a group into one AuthorizeSecurityGroupIngress)",
            times(grants.rate(), y.single_rate())
        )];
        if let Some(r) = restart {
            ratios.push(format!("expired rules/s {} the bare batched revoke", times(r, y.batched_rate())));
        }
        println!("ratios: {}", ratios.join("; "));
    }
    tokio::task::spawn_blocking(move || drop(server)).await?;
    Ok(())
}

/// moto's EC2 server from the venv of `scripts/moto-venv.sh`, on a free loopback port; killed
/// on drop.
struct MotoServer {
    _child: KillOnDrop,
    addr: SocketAddr,
    venv: std::path::PathBuf,
}

impl MotoServer {
    fn start() -> anyhow::Result<MotoServer> {
        let venv = jitgate_aws::testing::venv();
        let bin = venv.join("bin/moto_server");
        if !bin.is_file() {
            bail!(
                "moto's EC2 server: {} is missing: run scripts/moto-venv.sh (or point JITGATE_MOTO_VENV at a venv with moto[server]); nothing measured",
                bin.display()
            );
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("finding a free loopback port for moto")?
            .port();
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut child = KillOnDrop(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = child.0.try_wait() {
                bail!("{} exited at start ({status}); run it by hand to see why", bin.display());
            }
            if Instant::now() > deadline {
                bail!("{} did not listen on {addr} within 60 s", bin.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(MotoServer { _child: child, addr, venv })
    }

    fn url(&self) -> anyhow::Result<reqwest::Url> {
        Ok(reqwest::Url::parse(&format!("http://{}/", self.addr))?)
    }

    /// moto's version, from the venv's metadata (`unknown` when it cannot be read).
    fn version(&self) -> String {
        let lib = self.venv.join("lib");
        let found = std::fs::read_dir(&lib).into_iter().flatten().flatten().find_map(|py| {
            let site = py.path().join("site-packages");
            std::fs::read_dir(site).into_iter().flatten().flatten().find_map(|d| {
                let name = d.file_name().to_string_lossy().into_owned();
                name.strip_prefix("moto-").and_then(|v| v.strip_suffix(".dist-info")).map(str::to_owned)
            })
        });
        found.unwrap_or_else(|| "unknown".to_owned())
    }
}

fn vm_id(instance: &str) -> String {
    format!("/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachines/{instance}")
}

/// `jitgate connector aws` against moto, quiet but for errors.
fn start_connector(
    exe: &Path,
    server: &LocalServer,
    moto: &MotoServer,
    state: &Path,
    token: Option<&str>,
) -> anyhow::Result<KillOnDrop> {
    let mut cmd = Command::new(exe);
    cmd.args(["connector", "aws", "--server", &server.url, "--region", "us-east-1"])
        .arg("--ca-cert")
        .arg(&server.ca_cert)
        .args(["--endpoint-url", moto.url()?.as_str()])
        .arg("--state-dir")
        .arg(state)
        .args(["--sweep-interval", "1s", "--discovery-interval", "1s"])
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("JITGATE_LOG", "error")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if let Some(t) = token {
        cmd.args(["--join-token", t]);
    }
    Ok(KillOnDrop(cmd.spawn().context("starting jitgate connector aws")?))
}

/// Puts the policy over every VM (SSH, any source, PT3H) once the connector has registered them.
async fn put_policy(client: &Client, at: &PolicyRef, vm_ids: &[String]) -> anyhow::Result<()> {
    let vms = vm_ids
        .iter()
        .map(|id| PolicyVmIn {
            id: Some(id.clone()),
            ports: Some(vec![PortRuleIn {
                number: Some(22),
                protocol: Some("TCP".to_owned()),
                allowed_source_address_prefix: Some("*".to_owned()),
                max_request_access_duration: Some("PT3H".to_owned()),
                ..PortRuleIn::default()
            }]),
            public_ip_address: None,
        })
        .collect();
    let body = PolicyIn {
        kind: Some("Basic".to_owned()),
        properties: Some(PolicyPropertiesIn { virtual_machines: Some(vms) }),
    };
    let last = Mutex::new(String::new());
    let put = wait_for(STAGE_LIMIT, "the connector to register the instances", async || {
        match client.arm().put_policy(at, &body).await {
            Ok(_) => Ok(true),
            Err(e) => {
                *last.lock().unwrap_or_else(|p| p.into_inner()) = e.to_string();
                Ok(false)
            }
        }
    })
    .await;
    put.with_context(|| format!("putting the policy: {}", last.lock().unwrap_or_else(|p| p.into_inner())))
}

/// Polls `done` without pause until it holds, or fails after `limit`.
async fn wait_for(
    limit: Duration,
    what: &str,
    mut done: impl AsyncFnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if done().await? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("gave up waiting for {what} after {} s", limit.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the grant stage measured.
struct Grants {
    latencies: Vec<Duration>,
    window: Duration,
}

impl Grants {
    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.window.as_secs_f64().max(1e-9)
    }
}

/// The `n`th source address: 198.18.0.1, 198.18.0.2, … (the benchmarking range).
fn source(n: u32) -> String {
    let n = n + 1;
    format!("198.18.{}.{}", n / 256, n % 256)
}

/// Initiates `args.grants` grants (`args.concurrency` at once) while DescribeSecurityGroups is
/// polled; each grant's latency runs from its initiate call to the first poll that saw its rule.
async fn grants(
    client: &Client,
    ec2: &Ec2Client,
    policy: &PolicyRef,
    vms: &[String],
    groups: &[String],
    args: &ConnectorBenchArgs,
) -> anyhow::Result<Grants> {
    let only = [Filter::new("group-id", groups.iter().cloned())];
    let sent: Arc<Mutex<BTreeMap<i64, Instant>>> = Arc::default();
    let next = Arc::new(AtomicU32::new(0));
    let first = Instant::now();
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        let (client, sent, next, vms, policy_id, total) =
            (client.clone(), sent.clone(), next.clone(), vms.to_vec(), policy.id(), args.grants);
        senders.spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    return anyhow::Ok(());
                }
                let vm = &vms[(n as usize) % vms.len()];
                let body = jitgate_cli::access::initiate_body(vm, &[22], &source(n), None, Some("PT1H".into()), None);
                let at = Instant::now();
                let answer =
                    client.arm().initiate(&policy_id, &body, false).await.with_context(|| format!("initiate {n}"))?;
                let id = answer.id.with_context(|| format!("initiate {n}: the answer has no request id"))?;
                sent.lock().unwrap_or_else(|p| p.into_inner()).insert(id, at);
            }
        });
    }
    let mut seen: BTreeMap<i64, Instant> = BTreeMap::new();
    let deadline = Instant::now() + STAGE_LIMIT;
    let mut last = first;
    while seen.len() < args.grants as usize {
        if Instant::now() > deadline {
            bail!("only {} of {} grant rules reached EC2 within {} s", seen.len(), args.grants, STAGE_LIMIT.as_secs());
        }
        if let Some(Ok(Err(e))) = senders.try_join_next() {
            return Err(e);
        }
        for g in ec2.describe_security_groups(&only).await? {
            for p in &g.ingress {
                for r in &p.ipv4_ranges {
                    if let Some(note) = r.description.as_deref().and_then(parse_note) {
                        if note.request_id < EXPIRED_IDS && !seen.contains_key(&note.request_id) {
                            last = Instant::now();
                            seen.insert(note.request_id, last);
                        }
                    }
                }
            }
        }
    }
    while let Some(done) = senders.join_next().await {
        done??;
    }
    let sent = sent.lock().unwrap_or_else(|p| p.into_inner());
    let mut latencies: Vec<Duration> =
        seen.iter().filter_map(|(id, at)| sent.get(id).map(|s| at.saturating_duration_since(*s))).collect();
    latencies.sort();
    Ok(Grants { latencies, window: last.duration_since(first) })
}

/// The jitgate groups of `instances`.
async fn jitgate_groups(ec2: &Ec2Client, instances: &[String]) -> anyhow::Result<Vec<String>> {
    let filter = Filter::new("tag:jitgate:instance", instances.iter().cloned());
    let groups: Vec<String> = ec2.describe_security_groups(&[filter]).await?.into_iter().map(|g| g.group_id).collect();
    if groups.len() != instances.len() {
        bail!("{} jitgate groups for {} instances", groups.len(), instances.len());
    }
    Ok(groups)
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Puts `count` expired rules into `groups`, 60 a group in one call each; how long it took.
async fn put_expired(ec2: &Ec2Client, groups: &[String], count: u32) -> anyhow::Result<Duration> {
    let past = unix_now() - 60;
    let started = Instant::now();
    for (g, group) in groups.iter().enumerate() {
        let from = g as u32 * RULES_PER_GROUP;
        let perms: Vec<IpPermission> = (from..(from + RULES_PER_GROUP).min(count))
            .map(|n| {
                rule(
                    &format!("100.64.{}.{}/32", n / 250, n % 250 + 1),
                    Some(describe(EXPIRED_IDS + i64::from(n), past)),
                )
            })
            .collect();
        ec2.authorize_ingress(group, &perms).await.with_context(|| format!("putting expired rules into {group}"))?;
    }
    Ok(started.elapsed())
}

/// The expired rules still in `groups`.
async fn expired_left(ec2: &Ec2Client, groups: &[String]) -> anyhow::Result<usize> {
    let groups = ec2.describe_security_groups(&[Filter::new("group-id", groups.iter().cloned())]).await?;
    Ok(groups
        .iter()
        .flat_map(|g| &g.ingress)
        .flat_map(|p| &p.ipv4_ranges)
        .filter(|r| r.description.as_deref().and_then(parse_note).is_some_and(|n| n.request_id >= EXPIRED_IDS))
        .count())
}

/// TCP 22 from `cidr`.
fn rule(cidr: &str, description: Option<String>) -> IpPermission {
    IpPermission {
        protocol: "tcp".into(),
        from_port: Some(22),
        to_port: Some(22),
        ipv4_ranges: vec![IpRange { cidr: cidr.into(), description }],
        ipv6_ranges: vec![],
        source_groups: vec![],
        prefix_lists: vec![],
    }
}

/// The bare EC2 yardstick.
struct Yardstick {
    /// Each single-rule call's latency, sorted.
    single: Vec<Duration>,
    single_total: Duration,
    batched_rules: u32,
    batched_total: Duration,
}

impl Yardstick {
    fn single_rate(&self) -> f64 {
        self.single.len() as f64 / self.single_total.as_secs_f64().max(1e-9)
    }

    fn batched_rate(&self) -> f64 {
        f64::from(self.batched_rules) / self.batched_total.as_secs_f64().max(1e-9)
    }
}

/// `calls` serial authorize + revoke pairs of one rule, then revokes of 60 rules a call (each
/// after an unmeasured authorize of the 60), in a group of its own outside jitgate.
async fn yardstick(ec2: &Ec2Client, vpc: &str, calls: u32) -> anyhow::Result<Yardstick> {
    let group = ec2.create_security_group("jitgate-bench-yardstick", "bare EC2 calls", vpc, &[]).await?;
    let one = [rule("192.0.2.1/32", Some("yardstick".into()))];
    let mut single = Vec::with_capacity(2 * calls as usize);
    let started = Instant::now();
    for _ in 0..calls {
        let at = Instant::now();
        ec2.authorize_ingress(&group, &one).await?;
        single.push(at.elapsed());
        let at = Instant::now();
        ec2.revoke_ingress(&group, &one).await?;
        single.push(at.elapsed());
    }
    let single_total = started.elapsed();
    single.sort();
    let batch: Vec<IpPermission> =
        (0..RULES_PER_GROUP).map(|n| rule(&format!("192.0.2.{}/32", n + 1), Some("yardstick".into()))).collect();
    let rounds = calls.div_ceil(10).max(1);
    let mut batched_total = Duration::ZERO;
    for _ in 0..rounds {
        ec2.authorize_ingress(&group, &batch).await?;
        let at = Instant::now();
        ec2.revoke_ingress(&group, &batch).await?;
        batched_total += at.elapsed();
    }
    ec2.delete_security_group(&group).await?;
    Ok(Yardstick { single, single_total, batched_rules: rounds * RULES_PER_GROUP, batched_total })
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let n = sorted.len();
    if n == 0 {
        return Duration::ZERO;
    }
    sorted[((n as f64 * p).ceil() as usize).clamp(1, n) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `a / b` as `0.42×`.
fn times(a: f64, b: f64) -> String {
    if b > 0.0 && b.is_finite() {
        format!("{:.2}×", a / b)
    } else {
        "n/a".to_owned()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn sources_are_distinct_and_valid() {
        let all: BTreeSet<String> = (0..5000).map(source).collect();
        assert_eq!(all.len(), 5000);
        assert!(all.iter().all(|s| s.parse::<std::net::Ipv4Addr>().is_ok()), "{all:?}");
        assert_eq!(source(0), "198.18.0.1");
    }

    #[test]
    fn percentiles_and_ratios() {
        let d: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(pct(&d, 0.5), Duration::from_millis(50));
        assert_eq!(pct(&d, 0.99), Duration::from_millis(99));
        assert_eq!(pct(&[], 0.5), Duration::ZERO);
        assert_eq!(times(1.0, 4.0), "0.25×");
        assert_eq!(times(1.0, 0.0), "n/a");
    }
}
