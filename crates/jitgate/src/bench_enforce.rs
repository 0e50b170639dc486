//! `jitgate bench open-latency` and `jitgate bench kernel`: enforcement measured in network
//! namespaces made for the run (and deleted after it), with real packets.
//!
//! The orchestration runs in the caller's namespace; the timed parts run inside the
//! namespaces as `jitgate bench inner …` so that the clock and the sockets are where the
//! packets are.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};

use jitgate_cli::bench::{InnerArgs, KernelArgs, OpenLatencyArgs};
use jitgate_cli::probe::try_connect;
use jitgate_client::arm::PolicyRef;
use jitgate_client::local::LocalServer;
use jitgate_client::{Client, Settings};
use jitgate_enforce::{Desired, ElemOp, GrantKey, Mode, Protected, L4};
use jitgate_enforce_nft::NftFirewall;
use jitgate_netns::{self as netns, veth, KillOnDrop, Netns};

use crate::bench_floor::{figures_line, split_figures, Figures, Floor};

pub(crate) const SUB: &str = "b0000000-0000-4000-8000-000000000002";
pub(crate) const CLIENT: &str = "10.9.0.1";
pub(crate) const VM: &str = "10.9.0.2";
pub(crate) const PORT: u16 = 2222;

pub(crate) fn exe() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("locating the jitgate binary")
}

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// Prints the line for `v`; returns its p50 and p99.
pub(crate) fn summary(label: &str, mut v: Vec<f64>, unit: &str) -> Figures {
    v.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{label}: n={} p50 {:.3} {unit}  p99 {:.3} {unit}  max {:.3} {unit}",
        v.len(),
        pct(&v, 0.5),
        pct(&v, 0.99),
        v.last().copied().unwrap_or(f64::NAN)
    );
    Figures { p50: pct(&v, 0.5), p99: pct(&v, 0.99) }
}

/// Two namespaces joined by a veth: C (client, 10.9.0.1) and V (the VM, 10.9.0.2) with an
/// echo listener on the benchmark port.
pub(crate) fn pair() -> anyhow::Result<(Netns, Netns, KillOnDrop)> {
    pair_on(&[PORT]).map(|(c, v, listener, _)| (c, v, listener))
}

/// [`pair`] with echo listeners on each of `ports`; also returns the client's interface.
pub(crate) fn pair_on(ports: &[u16]) -> anyhow::Result<(Netns, Netns, KillOnDrop, String)> {
    if let Some(why) = netns::unavailable() {
        bail!("this benchmark {why}");
    }
    let c = Netns::new("bc")?;
    let v = Netns::new("bv")?;
    let (c_if, _) = veth(&c, &format!("{CLIENT}/24"), &v, &format!("{VM}/24"))?;
    let mut listen = v.cmd(exe()?);
    listen.args(["probe", "listen"]);
    for port in ports {
        listen.args(["--tcp", &format!("0.0.0.0:{port}")]);
    }
    let mut listener = KillOnDrop::spawn(listen)?;
    listener.wait_for_line("listening")?;
    Ok((c, v, listener, c_if))
}

pub(crate) fn run_inner(ns: &Netns, args: &[String]) -> anyhow::Result<String> {
    let out = ns.cmd(exe()?).args(["bench", "inner"]).args(args).output()?;
    if !out.status.success() {
        bail!("bench inner {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub async fn open_latency(args: OpenLatencyArgs) -> anyhow::Result<()> {
    println!("jitgate bench open-latency: server and agent as real processes; client and VM in network namespaces joined by a veth");
    println!("{}", crate::yardstick::Machine::detect());
    let floor = match args.yardstick_samples {
        0 => None,
        n => Some(Floor::measure(n).await?),
    };
    let (report, agent) = tokio::task::spawn_blocking(move || open_run(args.grants, args.expiries)).await??;
    let (report, figures) = split_figures(&report);
    print!("{report}");
    if let Some(floor) = floor {
        print!("{}", floor.report(figures.get("open").copied()));
    }
    println!("agent memory after the run: {agent}");
    Ok(())
}

/// A process's resident memory now and at its peak (`VmRSS`, `VmHWM`), in KiB.
#[derive(Debug, Clone, Copy)]
pub struct Rss {
    pub now_kib: u64,
    pub peak_kib: u64,
}

impl Rss {
    pub fn of(pid: u32) -> Option<Rss> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        };
        Some(Rss { now_kib: field("VmRSS:")?, peak_kib: field("VmHWM:")? })
    }
}

impl std::fmt::Display for Rss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RSS {:.1} MiB (peak {:.1} MiB)", self.now_kib as f64 / 1024.0, self.peak_kib as f64 / 1024.0)
    }
}

/// `jitgate serve` in C on the benchmark address (data under `dir/server`), and the command of a
/// `jitgate agent` in V joined to it as the benchmark VM (state under `dir/agent`), for the caller
/// to finish and spawn.
pub(crate) fn server_and_agent(c: &Netns, v: &Netns, dir: &Path) -> anyhow::Result<(LocalServer, Command)> {
    let server = LocalServer::start_with(
        &c.prefix(),
        &exe()?,
        &dir.join("server"),
        &format!("{CLIENT}:0"),
        &[&["--tls-san", CLIENT], jitgate_cli::bench::BENCH_SERVER_FLAGS].concat(),
    )?;
    let token = server.create_join_token(c.cmd(exe()?), SUB, "bench", "westeurope", &[])?;
    let mut agent = v.cmd(exe()?);
    agent.args(["agent", "--server", &server.url, "--join-token", &token, "--vm-name", "benchvm", "--state-dir"]);
    agent.arg(dir.join("agent")).arg("--ca-cert").arg(&server.ca_cert);
    Ok((server, agent))
}

/// Server in namespace C, a real agent enforcing on V: opens `grants` grants one after the
/// other (timing each to the first TCP connect) and watches `expiries` short ones close.
/// Returns the measurements and the agent's memory afterwards.
pub fn open_run(grants: u32, expiries: u32) -> anyhow::Result<(String, Rss)> {
    let (c, v, _listener) = pair()?;
    let tmp = tempfile::tempdir()?;
    let (server, mut agent) = server_and_agent(&c, &v, tmp.path())?;
    agent.env("JITGATE_LOG", "warn");
    let agent = KillOnDrop::spawn(agent)?;
    let inner = vec![
        "open".to_string(),
        "--url".into(),
        server.url.clone(),
        "--token".into(),
        server.token.clone(),
        "--ca-cert".into(),
        server.ca_cert.display().to_string(),
        "--from".into(),
        CLIENT.into(),
        "--to".into(),
        format!("{VM}:{PORT}"),
        "--count".into(),
        grants.to_string(),
        "--extra".into(),
        expiries.to_string(),
    ];
    let report = run_inner(&c, &inner)?;
    // `ip netns exec` runs the agent in its own process: the pid is the agent's.
    let rss = Rss::of(agent.0.id()).ok_or_else(|| anyhow::anyhow!("the agent is no longer running"))?;
    Ok((report, rss))
}

pub async fn kernel(args: KernelArgs) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || kernel_blocking(args)).await?
}

fn kernel_blocking(args: KernelArgs) -> anyhow::Result<()> {
    let (c, v, _listener) = pair()?;
    println!(
        "jitgate bench kernel: nftables in a network namespace, programmed over netlink; TCP from another namespace"
    );
    let to = format!("{VM}:{PORT}");
    let rate = |label: &str| -> anyhow::Result<f64> {
        let out = run_inner(
            &c,
            &[
                "connect-rate".into(),
                "--from".into(),
                CLIENT.into(),
                "--to".into(),
                to.clone(),
                "--seconds".into(),
                args.seconds.to_string(),
            ],
        )?;
        let rate: f64 = out.trim().parse().with_context(|| format!("connect rate: {out}"))?;
        println!("TCP connect rate through a table with {label}: {rate:.0} connections/s");
        Ok(rate)
    };
    print!("{}", run_inner(&v, &["nft-setup".into(), "--from".into(), CLIENT.into(), "--count".into(), "10".into()])?);
    let small = rate("10 live grants")?;
    print!(
        "{}",
        run_inner(
            &v,
            &["nft-fill".into(), "--from".into(), CLIENT.into(), "--count".into(), args.elements.to_string()]
        )?
    );
    let big = rate(&format!("{} live grants", args.elements))?;
    println!("packet path: connect rate with {} grants / with 10 = {:.3}", args.elements, big / small);
    let _ = run_inner(&v, &["nft-remove".into()]);
    Ok(())
}

/// The `n`-th filler source address: 11.0.0.0 upwards, never the client's.
fn filler(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0b00_0000u32 + n))
}

/// A grant to the benchmark port from the `n`-th filler address.
pub(crate) fn filler_grant(n: u32) -> GrantKey {
    grant(filler(n))
}

fn grant(source: IpAddr) -> GrantKey {
    GrantKey { source: source.into(), dest: None, proto: L4::Tcp, port: PORT }
}

/// The parts that run inside a namespace.
pub async fn inner(args: InnerArgs) -> anyhow::Result<()> {
    match args.part.as_str() {
        "open" => inner_open(args).await,
        "connect-rate" => inner_connect_rate(args).await,
        "nft-setup" | "nft-fill" | "nft-remove" => tokio::task::spawn_blocking(move || inner_nft(args)).await?,
        "nft-one" => tokio::task::spawn_blocking(move || crate::bench_floor::inner_nft_one(args.count)).await?,
        "restore-grants" => crate::bench_restore::inner_grants(args).await,
        "restore-floor" => {
            tokio::task::spawn_blocking(move || crate::bench_restore::inner_floor(args.count, args.extra)).await?
        }
        "restore-flush" => {
            tokio::task::spawn_blocking(move || crate::bench_restore::inner_flush(args.count, args.url)).await?
        }
        p if p.starts_with("rules-") => crate::bench_rules::inner(args).await,
        p if p.starts_with("fwknop-") || p == "jg-grant" => crate::bench_fwknop::inner(args).await,
        other => bail!("unknown bench part {other}"),
    }
}

async fn inner_connect_rate(args: InnerArgs) -> anyhow::Result<()> {
    let to = args.to.context("--to")?;
    let end = Instant::now() + Duration::from_secs(args.seconds);
    let mut n = 0u64;
    while Instant::now() < end {
        if let Some(s) = try_connect(args.from, to, Duration::from_secs(1)).await {
            // Reset instead of FIN: no TIME_WAIT pile-up eating the ephemeral ports.
            let _ = s.set_zero_linger();
            n += 1;
        }
    }
    println!("{}", n as f64 / args.seconds as f64);
    Ok(())
}

fn inner_nft(args: InnerArgs) -> anyhow::Result<()> {
    let mut fw = NftFirewall::open().map_err(|e| anyhow::anyhow!("{e}"))?;
    let far = Duration::from_secs(3600);
    match args.part.as_str() {
        "nft-remove" => fw.remove().map_err(|e| anyhow::anyhow!("{e}")),
        "nft-setup" => {
            let now = Instant::now();
            let mut d = Desired::empty(Mode::Host);
            d.protected.insert(Protected { dest: None, proto: L4::Tcp, port: PORT, cut_sessions: false });
            d.grants.insert(grant(args.from.context("--from")?), now + far);
            for i in 1..args.count {
                d.grants.insert(grant(filler(i)), now + far);
            }
            fw.replace(&d, now).map_err(|e| anyhow::anyhow!("{e}"))
        }
        _ => {
            // Fill up to `count` live grants in batches of 10,000; time the first batch.
            let total = args.count.max(10_000);
            let mut added = 10u32;
            let mut batches = Vec::new();
            while added < total {
                let n = (total - added).min(10_000);
                let ops: Vec<ElemOp> =
                    (added..added + n).map(|i| ElemOp::AddGrant { key: grant(filler(i)), timeout: far }).collect();
                let t = Instant::now();
                fw.apply(&ops).map_err(|e| anyhow::anyhow!("{e}"))?;
                batches.push((n, t.elapsed()));
                added += n;
            }
            if let Some((n, t)) = batches.first() {
                println!("one netlink batch of {n} grants: {:.1} ms", t.as_secs_f64() * 1000.0);
            }
            let all: Duration = batches.iter().map(|b| b.1).sum();
            println!(
                "filled to {added} grants in {} batches: {:.1} ms in all",
                batches.len(),
                all.as_secs_f64() * 1000.0
            );
            // Single updates into the full table: add one, then remove it.
            let (mut adds, mut dels) = (Vec::new(), Vec::new());
            for i in 0..1000u32 {
                let key = grant(filler(total + 1 + i));
                let t = Instant::now();
                fw.apply(&[ElemOp::AddGrant { key, timeout: far }]).map_err(|e| anyhow::anyhow!("{e}"))?;
                adds.push(t.elapsed().as_secs_f64() * 1e6);
                let t = Instant::now();
                fw.apply(&[ElemOp::DelGrant { key }]).map_err(|e| anyhow::anyhow!("{e}"))?;
                dels.push(t.elapsed().as_secs_f64() * 1e6);
            }
            summary(&format!("one grant added to a table of {added}"), adds, "µs");
            summary(&format!("one grant removed from a table of {added}"), dels, "µs");
            Ok(())
        }
    }
}

/// What an inner benchmark part works on: the API client, the client's address, the port it
/// connects to, the benchmark VM and its policy.
pub(crate) struct BenchTarget {
    pub client: Client,
    pub from: std::net::IpAddr,
    pub to: SocketAddr,
    pub vm: String,
    pub policy: PolicyRef,
}

/// The part's target from its flags, once the agent has joined and registered its VM.
pub(crate) async fn joined_target(args: &InnerArgs) -> anyhow::Result<BenchTarget> {
    let url = args.url.clone().context("--url")?;
    let token = args.token.clone().context("--token")?;
    let settings = Settings::new(url).token(token).ca_cert_path(args.ca_cert.as_deref().map(Path::new));
    let client = Client::new(settings)?;
    let from = args.from.context("--from")?;
    let to: SocketAddr = args.to.context("--to")?;
    let vm = format!("/subscriptions/{SUB}/resourceGroups/bench/providers/Microsoft.Compute/virtualMachines/benchvm");
    let policy = PolicyRef {
        subscription: SUB.to_owned(),
        resource_group: "bench".to_owned(),
        location: "westeurope".to_owned(),
        name: "bench".to_owned(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.native().vm(&vm).await.ok().and_then(|v| v.enforcement).and_then(|e| e.last_seen).is_none() {
        if Instant::now() > deadline {
            bail!("the agent did not join within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(BenchTarget { client, from, to, vm, policy })
}

async fn inner_open(args: InnerArgs) -> anyhow::Result<()> {
    let BenchTarget { client, from, to, vm, policy } = joined_target(&args).await?;
    jitgate_cli::bench::put_bench_policy(&client, &policy, &vm, to.port()).await?;
    wait_until(from, to, false, Duration::from_secs(10)).await.context("the port never closed")?;
    let initiate = |duration: &str| {
        let body = jitgate_cli::access::initiate_body(
            &vm,
            &[to.port()],
            &from.to_string(),
            None,
            Some(duration.to_owned()),
            None,
        );
        let (client, id) = (client.clone(), policy.id());
        async move { client.arm().initiate(&id, &body, false).await }
    };
    let mut opens = Vec::new();
    let mut answers = Vec::new();
    for _ in 0..args.count {
        let t = Instant::now();
        let v = initiate("PT10M").await?;
        answers.push(t.elapsed().as_secs_f64() * 1000.0);
        let id = v.id.context("request id")?;
        wait_until(from, to, true, Duration::from_secs(5)).await.context("the grant never opened")?;
        opens.push(t.elapsed().as_secs_f64() * 1000.0);
        client.native().revoke(id, true).await.context("revoke")?;
        wait_until(from, to, false, Duration::from_secs(5)).await.context("revoke never closed the port")?;
    }
    let open = summary("initiate → first TCP connect through the new grant", opens, "ms");
    let answer = summary("initiate → 202 answer (recorded and audited, fsync included)", answers, "ms");
    println!("{}", figures_line("open", open));
    println!("{}", figures_line("answer", answer));
    let mut lateness = Vec::new();
    let mut seen = BTreeSet::new();
    for _ in 0..args.extra {
        let v = initiate("PT1S").await?;
        let end = v.virtual_machines.first().and_then(|vm| vm.ports.first()).map(|p| p.end_time_utc.clone());
        let end =
            time::OffsetDateTime::parse(&end.unwrap_or_default(), &time::format_description::well_known::Rfc3339)?;
        let end_ms = (end.unix_timestamp_nanos() / 1_000_000) as i64;
        wait_until(from, to, true, Duration::from_secs(5)).await.context("the short grant never opened")?;
        let closed_at =
            wait_until(from, to, false, Duration::from_secs(5)).await.context("the short grant never closed")?;
        lateness.push((closed_at as i64 - end_ms) as f64);
        seen.insert(closed_at);
    }
    summary("port closed after endTimeUtc (negative: before)", lateness, "ms");
    Ok(())
}

/// Tries connects until the port is open (`open`) or closed; returns the wall-clock ms at which
/// the attempt that first showed it started. Opening is watched by [`wait_open`], in steps of
/// about 0.1 ms; closing by one connect at a time, each given 20 ms.
pub(crate) async fn wait_until(from: IpAddr, to: SocketAddr, open: bool, within: Duration) -> anyhow::Result<u64> {
    if open {
        return tokio::task::spawn_blocking(move || wait_open(from, to, within)).await?;
    }
    let deadline = Instant::now() + within;
    loop {
        let at = unix_ms();
        let ok = match try_connect(Some(from), to, Duration::from_millis(20)).await {
            Some(s) => {
                let _ = s.set_zero_linger();
                true
            }
            None => false,
        };
        if !ok {
            return Ok(at);
        }
        if Instant::now() > deadline {
            bail!("not closed within {within:?}");
        }
    }
}

/// How often [`wait_open`] starts a connect.
const OPEN_STEP: Duration = Duration::from_micros(100);
/// How long a connect is watched before its socket is closed (its SYN was dropped: the kernel
/// would not send it again for a second).
const OPEN_TRY: Duration = Duration::from_millis(5);

/// Waits on this thread until `to` accepts a connection from `from`. A port a firewall drops
/// answers nothing, so each try is a non-blocking connect of its own, started every
/// [`OPEN_STEP`], and every try in flight is looked at between steps: the figure is late by at
/// most a step and a wake-up, not by a timer tick (tokio's timers count whole milliseconds).
/// Returns the wall-clock ms at which the first try that connected was started.
pub(crate) fn wait_open(from: IpAddr, to: SocketAddr, within: Duration) -> anyhow::Result<u64> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let deadline = Instant::now() + within;
    let mut tries: std::collections::VecDeque<(Instant, u64, Socket)> = std::collections::VecDeque::new();
    loop {
        let (started, at) = (Instant::now(), unix_ms());
        let socket = Socket::new(Domain::for_address(to), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_nonblocking(true)?;
        socket.bind(&SockAddr::from(SocketAddr::new(from, 0)))?;
        match socket.connect(&SockAddr::from(to)) {
            Ok(()) => return Ok(at),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INPROGRESS.raw_os_error()) => {}
            Err(e) => return Err(e).context("connect"),
        }
        tries.push_back((started, at, socket));
        std::thread::sleep(OPEN_STEP);
        // The oldest try first: the first connected is the one started earliest.
        for (_, at, s) in &tries {
            if s.peer_addr().is_ok() {
                let at = *at;
                for (_, _, s) in &tries {
                    let _ = s.set_linger(Some(Duration::ZERO));
                }
                return Ok(at);
            }
        }
        while tries.front().is_some_and(|(t, _, _)| t.elapsed() > OPEN_TRY) {
            tries.pop_front();
        }
        if Instant::now() > deadline {
            bail!("not open within {within:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_watch_sees_a_listening_port_and_gives_up_on_a_closed_one() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let open = listener.local_addr().expect("address");
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let before = unix_ms();
        let at = wait_open(lo, open, Duration::from_secs(5)).expect("a listening port is open");
        assert!(at >= before, "the try that connected started during the watch");
        // A port nobody listens on answers with a reset: never open, and the watch ends at its limit.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("address")
        };
        let e = wait_open(lo, closed, Duration::from_millis(30)).expect_err("a closed port never opens");
        assert!(e.to_string().contains("not open within"), "{e}");
    }
}
