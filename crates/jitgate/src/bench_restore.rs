//! `jitgate bench restore`: how long the protected ports stay open when someone flushes the
//! ruleset under a running agent (`nft flush ruleset`, or a firewall reload that starts with one).
//!
//! The server runs in namespace C, the agent in V with live grants. Inside V, `nft flush ruleset`
//! is run again and again while a socket in nftables' multicast group (the same events the agent
//! watches) times each window: from the moment the flush's transaction is told (its `NEWGEN`) to
//! the moment the agent's replacement that re-creates `table inet jitgate` is told.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use jitgate_cli::bench::{InnerArgs, RestoreArgs};
use jitgate_enforce_nft::monitor::{Event, EventSocket};
use jitgate_netns::KillOnDrop;

use crate::bench_enforce::{
    joined_target, pair, run_inner, server_and_agent, summary, wait_until, BenchTarget, CLIENT, PORT, VM,
};

pub async fn run(args: RestoreArgs) -> anyhow::Result<()> {
    println!(
        "jitgate bench restore: server and agent as real processes in network namespaces; `nft flush ruleset` under the agent, timed by nftables' own events"
    );
    println!("{}", crate::yardstick::Machine::detect());
    tokio::task::spawn_blocking(move || run_blocking(args)).await?
}

fn run_blocking(args: RestoreArgs) -> anyhow::Result<()> {
    let (c, v, _listener) = pair()?;
    let tmp = tempfile::tempdir()?;
    let (server, mut agent) = server_and_agent(&c, &v, tmp.path())?;
    agent.args(["--metrics-listen", "127.0.0.1:0"]).env("JITGATE_LOG", "error");
    let mut agent = KillOnDrop::spawn(agent)?;
    let line = agent.wait_for_line("jitgate agent metrics on ")?;
    let metrics = line.rsplit("http://").next().and_then(|r| r.split('/').next()).context("the metrics address")?;
    let grants = [
        "restore-grants",
        "--url",
        &server.url,
        "--token",
        &server.token,
        "--ca-cert",
        &server.ca_cert.display().to_string(),
        "--from",
        CLIENT,
        "--to",
        &format!("{VM}:{PORT}"),
        "--count",
        &args.grants.to_string(),
    ]
    .map(String::from);
    print!("{}", run_inner(&c, &grants)?);
    let flush = ["restore-flush", "--count", &args.flushes.to_string(), "--url", metrics].map(String::from);
    print!("{}", run_inner(&v, &flush)?);
    // The yardstick: the replacement alone, in a namespace of its own with nobody watching.
    let floor = jitgate_netns::Netns::new("br")?;
    let replace = ["restore-floor", "--count", &args.grants.to_string(), "--extra", &args.flushes.to_string()];
    print!("{}", run_inner(&floor, &replace.map(String::from))?);
    Ok(())
}

/// `bench inner restore-floor`: `extra` times the table with `count` grants replaced as the
/// agent replaces it (`nft -f`), timed; then the table is removed.
pub fn inner_floor(count: u32, times: u32) -> anyhow::Result<()> {
    use jitgate_enforce::{Desired, Mode, Protected, L4};
    let mut fw = jitgate_enforce_nft::NftFirewall::open().map_err(|e| anyhow::anyhow!("{e}"))?;
    let now = Instant::now();
    let mut d = Desired::empty(Mode::Host);
    d.protected.insert(Protected { dest: None, proto: L4::Tcp, port: PORT, cut_sessions: false });
    for i in 0..count.max(1) {
        d.grants.insert(crate::bench_enforce::filler_grant(i), now + Duration::from_secs(3600));
    }
    let mut took = Vec::with_capacity(times as usize);
    for _ in 0..times.max(1) {
        let t = Instant::now();
        fw.replace(&d, Instant::now()).map_err(|e| anyhow::anyhow!("{e}"))?;
        took.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    fw.remove().map_err(|e| anyhow::anyhow!("{e}"))?;
    summary(
        &format!(
            "yardstick: the replacement alone (nft -f of the table with {} grants, nobody watching)",
            count.max(1)
        ),
        took,
        "ms",
    );
    Ok(())
}

/// `bench inner restore-grants` (in C): waits for the agent, protects the port, opens `count`
/// grants of an hour (the client's and fillers'), and waits until the client gets through.
pub async fn inner_grants(args: InnerArgs) -> anyhow::Result<()> {
    let BenchTarget { client, from, to, vm, policy } = joined_target(&args).await?;
    jitgate_cli::bench::put_bench_policy(&client, &policy, &vm, to.port()).await?;
    wait_until(from, to, false, Duration::from_secs(10)).await.context("the port never closed")?;
    let count = args.count.max(1);
    for i in 0..count {
        let source = if i == 0 { from.to_string() } else { format!("10.200.{}.{}", i / 250, i % 250 + 1) };
        let body = jitgate_cli::access::initiate_body(&vm, &[to.port()], &source, None, Some("PT1H".to_owned()), None);
        // The last one waits until the agent has applied it, and so every one before it: the
        // flushes must meet a table that no later grant will change.
        client.arm().initiate(&policy.id(), &body, i + 1 == count).await?;
    }
    wait_until(from, to, true, Duration::from_secs(10)).await.context("the grant never opened")?;
    println!("{} live grants of an hour in the agent's table", args.count.max(1));
    Ok(())
}

/// `bench inner restore-flush` (in V, beside the agent): `count` flushes, each timed from its
/// commit to the agent's table being back; then the agent's count of restores from `metrics`.
pub fn inner_flush(count: u32, metrics: Option<String>) -> anyhow::Result<()> {
    let mut events = EventSocket::open().map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut windows = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let mut flush = Command::new("nft")
            .args(["flush", "ruleset"])
            .stdout(Stdio::null())
            .spawn()
            .context("running nft flush ruleset")?;
        let (mut deleted, mut flushed_at, mut created) = (false, None, false);
        let back_at = loop {
            let Some(list) = events.receive().map_err(|e| anyhow::anyhow!("{e}"))? else {
                bail!("nftables events were lost: the window cannot be timed");
            };
            let at = Instant::now();
            let mut back = None;
            for event in list {
                match &event {
                    e if e.deletes_our_table() && flushed_at.is_none() => deleted = true,
                    e if e.creates_our_table() && flushed_at.is_some() => created = true,
                    Event::Generation { .. } if deleted && flushed_at.is_none() => flushed_at = Some(at),
                    Event::Generation { .. } if created => back = Some(at),
                    _ => {}
                }
            }
            if let Some(at) = back {
                break at;
            }
        };
        let status = flush.wait()?;
        if !status.success() {
            bail!("nft flush ruleset failed ({status})");
        }
        let flushed_at = flushed_at.context("the flush was not seen")?;
        windows.push((back_at - flushed_at).as_secs_f64() * 1000.0);
    }
    summary(
        "nft flush ruleset → table inet jitgate back, put back by the agent (protected ports open to all meanwhile)",
        windows,
        "ms",
    );
    if let Some(addr) = metrics {
        // The agent counts a restore once its nft has exited, a moment after the table is back.
        let deadline = Instant::now() + Duration::from_secs(5);
        let sample = |text: &str, result: &str| {
            let series = format!("jitgate_agent_restores_total{{result=\"{result}\"}} ");
            text.lines().find_map(|l| l.strip_prefix(&series)).and_then(|v| v.trim().parse::<f64>().ok()).unwrap_or(0.0)
        };
        let (ok, failed) = loop {
            let text = get_metrics(&addr)?;
            let (ok, failed) = (sample(&text, "ok"), sample(&text, "failed"));
            if ok + failed >= f64::from(count) || Instant::now() > deadline {
                break (ok, failed);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        println!("the agent counted {ok} restores, {failed} failed (jitgate_agent_restores_total)");
    }
    Ok(())
}

/// `GET /metrics` from the agent's listener (plain HTTP on loopback).
fn get_metrics(addr: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to the agent's metrics at {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}
