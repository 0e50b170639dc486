//! `jitgate bench fwknop`: jitgate against fwknop, Debian's `fwknop-server` and `fwknop-client`,
//! in the same pair of network namespaces (client C, VM V), measured in the same run.
//!
//! - jitgate: `jitgate serve` in C, a real `jitgate agent` on nftables in V guarding port 2222;
//!   time from the initiate call to the first TCP connect through the new grant.
//! - fwknop: `fwknopd` in V (UDP server mode, its iptables chain in front of a DROP rule for
//!   port 2223, `FW_ACCESS_TIMEOUT` the window); time from starting the `fwknop` client (it
//!   sends one SPA packet and exits) to the first TCP connect, and from the client's exit.
//! - Killed daemons: a grant of `--window` seconds is opened, then `jitgate agent`, then (with a
//!   new agent) `jitgate serve`, then `fwknopd` is killed with SIGKILL while it is open; each
//!   time the port is watched from C until it closes or 20 s past its deadline.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use jitgate_cli::bench::{FwknopArgs, InnerArgs, BENCH_SERVER_FLAGS};
use jitgate_client::arm::PolicyRef;
use jitgate_client::local::LocalServer;
use jitgate_client::{Client, Settings};
use jitgate_netns::{KillOnDrop, Netns};

use crate::bench_enforce::{exe, pair_on, run_inner, unix_ms, wait_until, CLIENT, PORT, SUB, VM};

/// The port fwknopd guards.
const FWKNOP_PORT: u16 = 2223;
/// How long past a deadline a port is watched before it is called "left open".
const WATCH_PAST: u64 = 20;

fn installed(tool: &str) -> bool {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"].iter().any(|d| Path::new(d).join(tool).is_file())
}

pub async fn run(args: FwknopArgs) -> anyhow::Result<()> {
    println!("jitgate bench fwknop: jitgate and fwknop side by side in network namespaces (client C, VM V)");
    println!("{}", crate::yardstick::Machine::detect());
    let missing: Vec<&str> = ["fwknopd", "fwknop", "iptables"].into_iter().filter(|t| !installed(t)).collect();
    if !missing.is_empty() {
        bail!(
            "fwknop: not installed ({} missing): apt-get install fwknop-server fwknop-client iptables; nothing measured",
            missing.join(", ")
        );
    }
    tokio::task::spawn_blocking(move || blocking(args)).await?
}

/// `jitgate agent` in V for the bench VM, from its state directory (joining with `token` the
/// first time).
fn agent(v: &Netns, server: &LocalServer, state: &Path, token: &str) -> anyhow::Result<KillOnDrop> {
    let mut cmd = v.cmd(exe()?);
    cmd.args(["agent", "--server", &server.url, "--join-token", token, "--vm-name", "benchvm", "--state-dir"])
        .arg(state)
        .arg("--ca-cert")
        .arg(&server.ca_cert)
        .env("JITGATE_LOG", "error");
    Ok(KillOnDrop::spawn(cmd)?)
}

fn kill9(pid: u32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

/// Watches the port from C until it is closed or `until_ms` (Unix ms) has passed; the Unix ms
/// of the first attempt that found it closed, or `None` when it was still open.
fn closed_at(c: &Netns, from: &str, to: SocketAddr, until_ms: u64) -> anyhow::Result<Option<u64>> {
    let within = until_ms.saturating_sub(unix_ms()).max(1);
    let out = c
        .cmd(exe()?)
        .args(["probe", "connect", "--from", from, "--to", &to.to_string(), "--expect", "closed"])
        .args(["--within-ms", &within.to_string(), "--attempt-ms", "20"])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(text.trim()).with_context(|| format!("probe connect: {text}"))?;
    Ok(match v["reached"].as_bool() {
        Some(true) => v["atUnixMs"].as_u64(),
        _ => None,
    })
}

fn verdict(what: &str, end_ms: u64, closed: Option<u64>) -> String {
    match closed {
        Some(at) => format!("{what}: the port closed {:+} ms from its end", at as i64 - end_ms as i64),
        None => format!("{what}: the port was STILL OPEN {WATCH_PAST} s after its end (watching stopped there)"),
    }
}

fn blocking(args: FwknopArgs) -> anyhow::Result<()> {
    let (c, v, _listener, c_if) = pair_on(&[PORT, FWKNOP_PORT])?;
    let tmp = tempfile::tempdir()?;
    let window = args.window.max(2);

    // jitgate: the server in C, the agent in V.
    let flags = [&["--tls-san", CLIENT], BENCH_SERVER_FLAGS].concat();
    let mut server =
        LocalServer::start_with(&c.prefix(), &exe()?, &tmp.path().join("server"), &format!("{CLIENT}:0"), &flags)?;
    let token = server.create_join_token(c.cmd(exe()?), SUB, "bench", "westeurope", &[])?;
    let state = tmp.path().join("agent");
    let mut jg_agent = agent(&v, &server, &state, &token)?;
    let inner = |part: &str, count: u32, seconds: u64| {
        let args = vec![
            part.to_string(),
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
            count.to_string(),
            "--seconds".into(),
            seconds.to_string(),
        ];
        run_inner(&c, &args)
    };
    let opened = inner("open", args.rounds, 0)?;
    let jitgate_line = opened.lines().find(|l| l.starts_with("initiate → first TCP connect")).unwrap_or("").to_owned();

    // fwknop: keys, its configuration, fwknopd in V in front of a DROP rule.
    let keys = Command::new("fwknop").args(["--key-gen", "--no-rc-file"]).output()?;
    let keys = String::from_utf8_lossy(&keys.stdout).into_owned();
    let key = |name: &str| keys.lines().find_map(|l| l.strip_prefix(name)).map(|k| k.trim().to_owned());
    let (Some(rijndael), Some(hmac)) = (key("KEY_BASE64:"), key("HMAC_KEY_BASE64:")) else {
        bail!("fwknop --key-gen printed no keys: {keys}");
    };
    let dir = tmp.path().join("fwknop");
    std::fs::create_dir_all(dir.join("run"))?;
    let access = dir.join("access.conf");
    let conf = dir.join("fwknopd.conf");
    std::fs::write(
        &access,
        format!(
            "SOURCE ANY\nOPEN_PORTS tcp/{FWKNOP_PORT}\nKEY_BASE64 {rijndael}\nHMAC_KEY_BASE64 {hmac}\nFW_ACCESS_TIMEOUT {window}\n"
        ),
    )?;
    std::fs::write(&conf, format!("FWKNOP_RUN_DIR {};\n", dir.join("run").display()))?;
    for f in [&access, &conf] {
        std::fs::set_permissions(f, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    }
    v.exec("iptables", &["-A", "INPUT", "-p", "tcp", "--dport", &FWKNOP_PORT.to_string(), "-j", "DROP"])?;
    let log = dir.join("fwknopd.log");
    let mut daemon = v.cmd("sh");
    daemon.arg("-c").arg(format!(
        "exec fwknopd -f -U -v -c {} -a {} > {} 2>&1",
        conf.display(),
        access.display(),
        log.display()
    ));
    let mut fwknopd = KillOnDrop::spawn(daemon)?;
    let ready = Instant::now();
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("Kicking off UDP server") {
        if ready.elapsed() > Duration::from_secs(10) || fwknopd.0.try_wait()?.is_some() {
            bail!("fwknopd did not start: {}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // One source address per request, so that each starts from a closed port.
    for i in 0..=args.rounds {
        c.ip(&["addr", "add", &format!("10.9.0.{}/24", 100 + i), "dev", &c_if])?;
    }
    let spa = run_inner(
        &c,
        &[
            "fwknop-open".into(),
            "--to".into(),
            format!("{VM}:{FWKNOP_PORT}"),
            "--count".into(),
            args.rounds.to_string(),
            "--token".into(),
            format!("{rijndael} {hmac}"),
        ],
    )?;
    println!("request → open port, {} requests each, one after the other:", args.rounds);
    println!("  jitgate: {jitgate_line}");
    for l in spa.lines() {
        println!("  fwknop: {l}");
    }

    println!("a grant of {window} s open, then a daemon killed with SIGKILL:");
    // The agent killed: the kernel's timeout closes the port.
    let end = inner("jg-grant", 0, window)?;
    let end: u64 = end.trim().parse().with_context(|| format!("jg-grant: {end}"))?;
    jg_agent.kill9();
    let to = format!("{VM}:{PORT}").parse()?;
    println!("  {}", verdict("jitgate agent killed", end, closed_at(&c, CLIENT, to, end + WATCH_PAST * 1000)?));
    // The server killed (a new agent from the same state directory first).
    let _agent = agent(&v, &server, &state, &token)?;
    let end = inner("jg-grant", 0, window)?;
    let end: u64 = end.trim().parse().with_context(|| format!("jg-grant: {end}"))?;
    if let Some(pid) = server.pid() {
        kill9(pid);
    }
    println!("  {}", verdict("jitgate serve killed", end, closed_at(&c, CLIENT, to, end + WATCH_PAST * 1000)?));
    let _ = server.stop();
    // fwknopd killed: its rule stays until something deletes it.
    let from = format!("10.9.0.{}", 100 + args.rounds);
    let granted = run_inner(
        &c,
        &[
            "fwknop-open".into(),
            "--to".into(),
            format!("{VM}:{FWKNOP_PORT}"),
            "--count".into(),
            "1".into(),
            "--extra".into(),
            args.rounds.to_string(),
            "--token".into(),
            format!("{rijndael} {hmac}"),
        ],
    )?;
    let rules = v.exec("iptables", &["-S", "FWKNOP_INPUT"])?;
    let expiry = rules
        .lines()
        .filter(|l| l.contains(&format!("{from}/32")))
        .find_map(|l| l.split("_exp_").nth(1).and_then(|t| t.split_whitespace().next()?.parse::<u64>().ok()))
        .context(format!("fwknopd's rule for {from} (after {granted:?}): {rules}"))?;
    fwknopd.kill9();
    let end = expiry * 1000;
    let to = format!("{VM}:{FWKNOP_PORT}").parse()?;
    let closed = closed_at(&c, &from, to, end + WATCH_PAST * 1000)?;
    println!("  {} (fwknopd's rule set to expire at {expiry}, Unix seconds)", verdict("fwknopd killed", end, closed));
    let left = v.exec("iptables", &["-S", "FWKNOP_INPUT"])?;
    let left = left.lines().filter(|l| l.contains(&format!("{from}/32"))).count();
    println!("  fwknopd killed: {left} rule(s) for the grant still in iptables after the watch");
    Ok(())
}

/// The parts that run in C: `fwknop-open` (SPA requests timed to the first TCP connect) and
/// `jg-grant` (one jitgate grant of `--seconds`, opened; prints its end in Unix ms).
pub async fn inner(args: InnerArgs) -> anyhow::Result<()> {
    let to = args.to.context("--to")?;
    match args.part.as_str() {
        "fwknop-open" => {
            let keys = args.token.clone().context("--token")?;
            let (rijndael, hmac) = keys.split_once(' ').context("two keys")?;
            let (mut from_start, mut from_exit) = (Vec::new(), Vec::new());
            for i in 0..args.count {
                let from = format!("10.9.0.{}", 100 + args.extra + i);
                let started = Instant::now();
                let out = tokio::process::Command::new("fwknop")
                    .args(["--no-rc-file", "--use-hmac", "-A", &format!("tcp/{}", to.port()), "-a", &from])
                    .args(["-D", &to.ip().to_string(), "--key-base64-rijndael", rijndael, "--key-base64-hmac", hmac])
                    .output()
                    .await?;
                let exited = Instant::now();
                if !out.status.success() {
                    bail!("fwknop: {}", String::from_utf8_lossy(&out.stderr));
                }
                let from_ip = from.parse()?;
                wait_until(from_ip, to, true, Duration::from_secs(5)).await.context("fwknop never opened the port")?;
                from_start.push(started.elapsed().as_secs_f64() * 1000.0);
                from_exit.push(exited.elapsed().as_secs_f64() * 1000.0);
            }
            if args.count > 1 {
                println!("{}", line("fwknop client started → first TCP connect", from_start));
                println!("{}", line("fwknop client exited (SPA sent) → first TCP connect", from_exit));
            }
            Ok(())
        }
        "jg-grant" => {
            let settings = Settings::new(args.url.clone().context("--url")?)
                .token(args.token.clone().context("--token")?)
                .ca_cert_path(args.ca_cert.as_deref());
            let client = Client::new(settings)?;
            let from = args.from.context("--from")?;
            let vm = format!(
                "/subscriptions/{SUB}/resourceGroups/bench/providers/Microsoft.Compute/virtualMachines/benchvm"
            );
            let policy = PolicyRef {
                subscription: SUB.to_owned(),
                resource_group: "bench".to_owned(),
                location: "westeurope".to_owned(),
                name: "bench".to_owned(),
            };
            let body = jitgate_cli::access::initiate_body(
                &vm,
                &[to.port()],
                &from.to_string(),
                None,
                Some(format!("PT{}S", args.seconds)),
                None,
            );
            let answer = client.arm().initiate(&policy.id(), &body, false).await?;
            let end = answer.virtual_machines.first().and_then(|v| v.ports.first()).map(|p| p.end_time_utc.clone());
            let end =
                time::OffsetDateTime::parse(&end.unwrap_or_default(), &time::format_description::well_known::Rfc3339)?;
            wait_until(from, to, true, Duration::from_secs(10)).await.context("the grant never opened")?;
            println!("{}", end.unix_timestamp_nanos() / 1_000_000);
            Ok(())
        }
        other => bail!("unknown bench part {other}"),
    }
}

fn line(label: &str, mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    let p = |q: f64| crate::bench_soak_watch::pct(&v, q);
    format!("{label}: n={} p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms", v.len(), p(0.5), p(0.99), p(1.0))
}
