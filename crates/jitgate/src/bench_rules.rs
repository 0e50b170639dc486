//! `jitgate bench rules`: jitgate's packet path against the classic one of one firewall rule per
//! grant, at several numbers of live grants, in a pair of network namespaces (client C, VM V
//! with an echo listener on the bench port), measured in the same run.
//!
//! - jitgate: `table inet jitgate` as the agent programs it (per-prefix-length hash sets whose
//!   elements carry their own timeouts), changed through jitgate's netlink encoder in one
//!   process: one batch per change.
//! - nftables, a rule per grant: `ip saddr X tcp dport P accept` rules in a chain of their own,
//!   jumped to before a `drop` for the port; a grant added with `nft add rule` (appended) and
//!   removed with `nft delete rule … handle`, one `nft` process per change as a script runs it.
//! - iptables, a rule per grant (when the `iptables` command is installed; Debian's is the
//!   nf_tables backend, named in the output): the same shape, `-A GRANTS …` and `-D GRANTS …`.
//!
//! Each table holds the client's grant last (the newest grant: a packet from it passes every
//! other rule first) after the fillers from 11.0.0.0 upwards; the TCP connect rate is measured
//! from the client through each (the best of three runs). Updates are timed until `--updates`
//! are done or 20 s have passed.

use std::fmt::Write as _;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use jitgate_cli::bench::{InnerArgs, RulesArgs};
use jitgate_enforce::{Desired, ElemOp, Mode, Protected, L4};
use jitgate_enforce_nft::NftFirewall;
use jitgate_netns::Netns;

use crate::bench_enforce::{filler_grant, pair_on, run_inner, CLIENT, PORT, VM};
use crate::bench_soak_watch::pct;

/// How long the single updates of one approach at one size may take in all.
const UPDATE_BUDGET: Duration = Duration::from_secs(20);

pub async fn run(args: RulesArgs) -> anyhow::Result<()> {
    println!(
        "jitgate bench rules: jitgate's sets with timeouts against one firewall rule per grant, in network namespaces"
    );
    println!("{}", crate::yardstick::Machine::detect());
    tokio::task::spawn_blocking(move || blocking(args)).await?
}

fn iptables_version() -> Option<String> {
    let out = Command::new("iptables").arg("-V").output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn blocking(args: RulesArgs) -> anyhow::Result<()> {
    let (c, v, _listener, _) = pair_on(&[PORT])?;
    let iptables = iptables_version();
    match &iptables {
        Some(version) => println!("iptables: {version}"),
        None => println!("iptables: not installed (apt-get install iptables): its rows are left out"),
    }
    let mut approaches = vec!["jitgate", "nft"];
    if iptables.is_some() {
        approaches.push("iptables");
    }
    for &n in &args.grants {
        let mut jitgate: Option<Row> = None;
        for &approach in &approaches {
            let inner_args = [
                format!("rules-{approach}"),
                "--from".into(),
                CLIENT.into(),
                "--count".into(),
                n.to_string(),
                "--extra".into(),
                args.updates.to_string(),
            ];
            let measured = run_inner(&v, &inner_args)
                .and_then(|o| Row::parse(&o))
                .and_then(|row| connect(&c, args.seconds).map(|rate| Row { rate, ..row }));
            match measured {
                Ok(row) => match &jitgate {
                    None => {
                        println!("{n} grants, {}: {row}", approach_name(approach));
                        jitgate = Some(row);
                    }
                    Some(j) => println!(
                        "{n} grants, {}: {row} (against jitgate's sets at {n}: add one {:.0}× slower at p50, connect rate {:.2}×)",
                        approach_name(approach),
                        row.add_p50 / j.add_p50.max(1e-9),
                        row.rate / j.rate.max(1e-9)
                    ),
                },
                Err(e) => println!("{n} grants, {}: failed: {}", approach_name(approach), one_line(&e.to_string())),
            }
            let _ = v.exec("nft", &["flush", "ruleset"]);
        }
    }
    println!(
        "jitgate: one netlink batch per change from the agent's process; nft and iptables: one process per change, as a script runs them"
    );
    Ok(())
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ").chars().take(160).collect()
}

fn approach_name(approach: &str) -> &'static str {
    match approach {
        "jitgate" => "jitgate (set elements with timeouts)",
        "nft" => "nftables, a rule per grant",
        _ => "iptables, a rule per grant",
    }
}

/// The TCP connect rate from the client: the best of three runs of `seconds` (other work on the
/// machine only ever slows a run down).
fn connect(c: &Netns, seconds: u64) -> anyhow::Result<f64> {
    let to = format!("{VM}:{PORT}");
    let mut best = 0.0f64;
    for _ in 0..3 {
        let out = run_inner(
            c,
            &[
                "connect-rate".into(),
                "--from".into(),
                CLIENT.into(),
                "--to".into(),
                to.clone(),
                "--seconds".into(),
                seconds.to_string(),
            ],
        )?;
        best = best.max(out.trim().parse().with_context(|| format!("connect rate: {out}"))?);
    }
    Ok(best)
}

/// The parts that run in V: `rules-jitgate`, `rules-nft`, `rules-iptables`. Each loads a table of
/// `--count` grants (the client's last), times `--extra` single adds and removes, and prints its
/// row's middle cells.
pub async fn inner(args: InnerArgs) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || {
        let client = args.from.context("--from")?;
        let (n, updates) = (args.count.max(1), args.extra.max(1));
        let part = args.part.trim_start_matches("rules-").to_owned();
        let (load, adds, dels) = match part.as_str() {
            "jitgate" => jitgate(client, n, updates)?,
            "nft" => rules(Classic::Nft, client, n, updates)?,
            "iptables" => rules(Classic::Iptables, client, n, updates)?,
            other => bail!("unknown approach {other}"),
        };
        let (mut adds, mut dels) = (adds, dels);
        adds.sort_by(f64::total_cmp);
        dels.sort_by(f64::total_cmp);
        println!(
            "row {} {} {} {} {} {}",
            load.as_secs_f64(),
            pct(&adds, 0.5),
            pct(&adds, 0.99),
            pct(&dels, 0.5),
            pct(&dels, 0.99),
            adds.len()
        );
        Ok(())
    })
    .await?
}

/// One approach at one size: the load time (s), single adds and removes (µs) and how many,
/// the connect rate.
#[derive(Debug, Clone, Copy)]
struct Row {
    load_s: f64,
    add_p50: f64,
    add_p99: f64,
    del_p50: f64,
    del_p99: f64,
    updates: usize,
    rate: f64,
}

impl Row {
    /// The `row …` line an inner part prints.
    fn parse(out: &str) -> anyhow::Result<Row> {
        let line = out.lines().find_map(|l| l.strip_prefix("row ")).context(format!("no row in {out:?}"))?;
        let v: Vec<f64> = line.split_whitespace().map(str::parse).collect::<Result<_, _>>()?;
        let [load_s, add_p50, add_p99, del_p50, del_p99, updates] = v[..] else { bail!("bad row {line:?}") };
        Ok(Row { load_s, add_p50, add_p99, del_p50, del_p99, updates: updates as usize, rate: 0.0 })
    }
}

impl std::fmt::Display for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = |us: f64| if us >= 1000.0 { format!("{:.2} ms", us / 1000.0) } else { format!("{us:.0} µs") };
        let load = if self.load_s >= 1.0 {
            format!("{:.2} s", self.load_s)
        } else {
            format!("{:.1} ms", self.load_s * 1000.0)
        };
        write!(
            f,
            "load {load}; add one p50 {} p99 {}; remove one p50 {} p99 {} (n={}); {:.0} TCP connects/s",
            unit(self.add_p50),
            unit(self.add_p99),
            unit(self.del_p50),
            unit(self.del_p99),
            self.updates,
            self.rate
        )
    }
}

type Timed = (Duration, Vec<f64>, Vec<f64>);

fn jitgate(client: std::net::IpAddr, n: u32, updates: u32) -> anyhow::Result<Timed> {
    let mut fw = NftFirewall::open().map_err(|e| anyhow::anyhow!("{e}"))?;
    let far = Duration::from_secs(3600);
    let started = Instant::now();
    let now = Instant::now();
    let mut d = Desired::empty(Mode::Host);
    d.protected.insert(Protected { dest: None, proto: L4::Tcp, port: PORT, cut_sessions: false });
    fw.replace(&d, now).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut added = 1u32;
    while added < n {
        let k = (n - added).min(10_000);
        let ops: Vec<ElemOp> =
            (added..added + k).map(|i| ElemOp::AddGrant { key: filler_grant(i), timeout: far }).collect();
        fw.apply(&ops).map_err(|e| anyhow::anyhow!("{e}"))?;
        added += k;
    }
    let key = jitgate_enforce::GrantKey { source: client.into(), dest: None, proto: L4::Tcp, port: PORT };
    fw.apply(&[ElemOp::AddGrant { key, timeout: far }]).map_err(|e| anyhow::anyhow!("{e}"))?;
    let load = started.elapsed();
    let (mut adds, mut dels) = (Vec::new(), Vec::new());
    let budget = Instant::now() + UPDATE_BUDGET;
    for i in 0..updates {
        if Instant::now() > budget {
            break;
        }
        let key = filler_grant(n + 1 + i);
        let t = Instant::now();
        fw.apply(&[ElemOp::AddGrant { key, timeout: far }]).map_err(|e| anyhow::anyhow!("{e}"))?;
        adds.push(t.elapsed().as_secs_f64() * 1e6);
        let t = Instant::now();
        fw.apply(&[ElemOp::DelGrant { key }]).map_err(|e| anyhow::anyhow!("{e}"))?;
        dels.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok((load, adds, dels))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Classic {
    Nft,
    Iptables,
}

fn filler_addr(i: u32) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(0x0b00_0000u32 + i)
}

/// Runs `program args`, feeding it `stdin`; fails with its stderr.
fn sh(program: &str, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.unwrap_or("").as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn rules(kind: Classic, client: std::net::IpAddr, n: u32, updates: u32) -> anyhow::Result<Timed> {
    let started = Instant::now();
    let mut script = String::new();
    let port = PORT.to_string();
    // The hook chain accepts established flows, jumps to the grants and drops the port; each
    // grant is a rule appended to the grants chain (an append, unlike an insert at a position,
    // needs no listing of the rules first).
    let first_handle = match kind {
        Classic::Nft => {
            script.push_str("add table inet jgrules\n");
            script.push_str("add chain inet jgrules input { type filter hook input priority 0; policy accept; }\n");
            script.push_str("add chain inet jgrules grants\n");
            script.push_str("add rule inet jgrules input ct state established,related accept\n");
            script.push_str("add rule inet jgrules input jump grants\n");
            for i in 1..n {
                let _ = writeln!(
                    script,
                    "add rule inet jgrules grants ip saddr {} tcp dport {PORT} accept",
                    filler_addr(i)
                );
            }
            let _ = writeln!(script, "add rule inet jgrules grants ip saddr {client} tcp dport {PORT} accept");
            sh("nft", &["-f", "-"], Some(&script))?;
            // The drop, echoed for its handle: rule handles count up in a table, so the next
            // rules added get the next ones (not timed: an echo lists the table's rules).
            let echo = sh(
                "nft",
                &["-e", "-a", "add", "rule", "inet", "jgrules", "input", "tcp", "dport", &port, "drop"],
                None,
            )?;
            handle(&echo).context(format!("no handle in {echo:?}"))? + 1
        }
        Classic::Iptables => {
            script.push_str(
                "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:GRANTS - [0:0]\n",
            );
            script.push_str("-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n-A INPUT -j GRANTS\n");
            let _ = writeln!(script, "-A INPUT -p tcp -m tcp --dport {PORT} -j DROP");
            for i in 1..n {
                let _ = writeln!(script, "-A GRANTS -s {}/32 -p tcp -m tcp --dport {PORT} -j ACCEPT", filler_addr(i));
            }
            let _ = writeln!(script, "-A GRANTS -s {client}/32 -p tcp -m tcp --dport {PORT} -j ACCEPT\nCOMMIT");
            sh("iptables-restore", &[], Some(&script))?;
            0
        }
    };
    let load = started.elapsed();
    let (mut adds, mut dels) = (Vec::new(), Vec::new());
    let budget = Instant::now() + UPDATE_BUDGET;
    for i in 0..updates {
        if Instant::now() > budget {
            break;
        }
        let source = filler_addr(n + 1 + i).to_string();
        let t = Instant::now();
        match kind {
            Classic::Nft => {
                sh(
                    "nft",
                    &[
                        "add", "rule", "inet", "jgrules", "grants", "ip", "saddr", &source, "tcp", "dport", &port,
                        "accept",
                    ],
                    None,
                )?;
                adds.push(t.elapsed().as_secs_f64() * 1e6);
                let added = (first_handle + u64::from(i)).to_string();
                let t = Instant::now();
                sh("nft", &["delete", "rule", "inet", "jgrules", "grants", "handle", &added], None)?;
                dels.push(t.elapsed().as_secs_f64() * 1e6);
            }
            Classic::Iptables => {
                let rule = ["-s", &source, "-p", "tcp", "-m", "tcp", "--dport", &port, "-j", "ACCEPT"];
                sh("iptables", &[["-A", "GRANTS"].as_slice(), &rule].concat(), None)?;
                adds.push(t.elapsed().as_secs_f64() * 1e6);
                let t = Instant::now();
                sh("iptables", &[["-D", "GRANTS"].as_slice(), &rule].concat(), None)?;
                dels.push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
    }
    Ok((load, adds, dels))
}

/// The handle nft echoes for a rule it added (`… # handle 12`).
fn handle(echo: &str) -> Option<u64> {
    echo.lines().find_map(|l| l.rsplit("# handle ").next().filter(|_| l.contains("# handle "))?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_row_is_read_back() {
        let row = super::Row::parse("row 0.5 6.5 12 5 9 100\n").expect("row");
        assert_eq!((row.add_p50, row.updates), (6.5, 100));
        assert!(super::Row::parse("row 1 2\n").is_err());
        assert!(super::Row::parse("nothing").is_err());
    }

    #[test]
    fn the_echoed_handle_is_read() {
        assert_eq!(super::handle("add rule inet jgrules input tcp dport 2222 drop # handle 100005\n"), Some(100_005));
        assert_eq!(super::handle("nothing here"), None);
    }
}
