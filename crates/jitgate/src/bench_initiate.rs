//! `jitgate bench` (`bench initiate`): initiate throughput and latency over HTTPS with keep-alive
//! and several concurrent clients, against a server it starts (embedded SQLite, fsync on every
//! commit, audit included) or one named with --url; and, measured in the same run on this
//! machine, the yardsticks it is compared with:
//!
//! - SQLite's commit rate for the writes of an initiate (request, grant, revision, chained audit
//!   row; the store's schema and pragmas) on the disk of the server's temporary directory: one
//!   transaction per initiate, and batched by one writer for as many producers as there are
//!   clients, as the store's writer batches;
//! - a bare HTTPS server on the same stack (rustls, the server's listener and HTTP serving,
//!   axum) whose handler does nothing but answer 202, driven by the same client with the same
//!   concurrency.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;

use jitgate_cli::bench::{bench_target, drive, ms, InitiateBenchArgs, Measured, BENCH_SERVER_FLAGS};
use jitgate_client::local::LocalServer;
use jitgate_client::{Client, Settings};
use jitgate_store_sqlite::yardstick::{self as sqlite, CommitRate};

use crate::yardstick::{https_rate, BareHttps, Machine};

/// The yardsticks of one run.
struct Yardsticks {
    serial: CommitRate,
    batched: CommitRate,
    https: Measured,
}

pub async fn run(args: InitiateBenchArgs) -> anyhow::Result<()> {
    let machine = Machine::detect();
    let (local, url, token, ca) = match &args.url {
        Some(url) => {
            (None, url.trim_end_matches('/').to_owned(), args.token.clone().unwrap_or_default(), args.ca_cert.clone())
        }
        None => {
            let exe = std::env::current_exe().context("locating the jitgate binary")?;
            let server = tokio::task::spawn_blocking(move || LocalServer::start(&exe, BENCH_SERVER_FLAGS)).await??;
            let (url, token, ca) = (server.url.clone(), server.token.clone(), Some(server.ca_cert.clone()));
            (Some(server), url, token, ca)
        }
    };
    let settings = Settings::new(url.as_str()).token(token).ca_cert_path(ca.as_deref());
    let stages = Arc::new(StageSums::default());
    let sink = stages.clone();
    let client = Client::new(settings.clone().on_server_timing(move |h| sink.add(h)))?;
    let target = bench_target(&client).await?;
    // The server's temporary directory: the disk its database is on.
    let disk: PathBuf = match local.as_ref().and_then(|s| s.data_dir.parent()) {
        Some(dir) => dir.to_owned(),
        None => std::env::temp_dir(),
    };
    let yardsticks = match args.yardstick_seconds {
        0 => None,
        s => Some(yardsticks(&disk, &settings, &target.vm_id, &args, Duration::from_secs(s)).await?),
    };
    let measuring = {
        let (stages, warmup) = (stages.clone(), Duration::from_secs(args.warmup));
        tokio::spawn(async move {
            tokio::time::sleep(warmup).await;
            stages.measuring.store(true, Ordering::Relaxed);
        })
    };
    let m = drive(std::slice::from_ref(&client), &target, args.concurrency, args.warmup, args.seconds).await?;
    measuring.abort();
    stages.measuring.store(false, Ordering::Relaxed);
    println!(
        "jitgate bench: initiate over HTTPS (keep-alive), {} clients, {} s measured after {} s warm-up",
        args.concurrency, args.seconds, args.warmup
    );
    println!("{machine}");
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
    print!("{}", stages.report());
    if let Some(y) = yardsticks {
        print!("{}", report(&y, &m, &args, args.url.is_some(), &disk));
    }
    Ok(())
}

/// The sums of the `Server-Timing` stages of the measured answers.
#[derive(Default)]
struct StageSums {
    measuring: AtomicBool,
    sums: Mutex<(u64, BTreeMap<String, f64>)>,
}

impl StageSums {
    fn add(&self, header: &str) {
        if !self.measuring.load(Ordering::Relaxed) {
            return;
        }
        let mut sums = self.sums.lock().unwrap_or_else(|e| e.into_inner());
        sums.0 += 1;
        for (name, ms) in jitgate_store::timing::parse_header(header) {
            *sums.1.entry(name).or_default() += ms;
        }
    }

    /// `stages (server, mean ms per initiate): parse 0.010 (1%) …`, in path order; nothing
    /// when the server sent no timings.
    fn report(&self) -> String {
        let sums = self.sums.lock().unwrap_or_else(|e| e.into_inner());
        let (n, by) = (&sums.0, &sums.1);
        let Some(total) = by.get("total").filter(|t| *n > 0 && **t > 0.0) else { return String::new() };
        let names = jitgate_store::timing::Stage::ALL.iter().map(|s| s.name()).chain(["other", "total"]);
        let parts: Vec<String> = names
            .filter_map(|name| by.get(name).map(|v| (name, v)))
            .map(|(name, v)| format!("{name} {:.3} ({:.0}%)", v / *n as f64, 100.0 * v / total))
            .collect();
        format!("stages (server side, mean ms per initiate over {n}): {}\n", parts.join("  "))
    }
}

/// Measures the three yardsticks, one after the other, `each` long.
async fn yardsticks(
    disk: &Path,
    settings: &Settings,
    vm_id: &str,
    args: &InitiateBenchArgs,
    each: Duration,
) -> anyhow::Result<Yardsticks> {
    let dir = disk.to_owned();
    let serial = tokio::task::spawn_blocking(move || sqlite::serial(&dir, each)).await??;
    let batched = sqlite::batched(disk, args.concurrency as usize, each).await?;
    let dir = disk.to_owned();
    let bare = tokio::task::spawn_blocking(move || BareHttps::start(&dir)).await??;
    let measured = async {
        let client = bare.client(settings)?;
        let warmup = Duration::from_secs(args.warmup.min(1));
        https_rate(&client, vm_id, args.concurrency, warmup, each).await
    }
    .await;
    tokio::task::spawn_blocking(move || drop(bare)).await?;
    Ok(Yardsticks { serial, batched, https: measured? })
}

/// The yardstick lines and the ratios.
fn report(y: &Yardsticks, m: &Measured, args: &InitiateBenchArgs, remote: bool, disk: &Path) -> String {
    let mut out = String::new();
    let on = if remote {
        format!("on this machine's temporary directory {} (not necessarily the server's disk)", disk.display())
    } else {
        "on the disk of the server's data directory".to_owned()
    };
    out.push_str(&format!(
        "yardstick: SQLite serial commits (request + grant + revision + hash-chained audit row, WAL, synchronous=FULL, {on}): {:.0} commits/s\n",
        y.serial.items_per_second()
    ));
    out.push_str(&format!(
        "yardstick: SQLite batched as the store's writer ({} producers, one writer, a savepoint each): {:.0} initiate-shaped writes/s in {:.0} commits/s ({:.1} per commit)\n",
        args.concurrency,
        y.batched.items_per_second(),
        y.batched.commits_per_second(),
        y.batched.mean_batch()
    ));
    out.push_str(&format!(
        "yardstick: bare HTTPS (axum + rustls on jitgate's listener, a handler that answers 202; the same client, {} clients): {:.0} requests/s, {} failed; latency ms p50 {:.2}  p99 {:.2}\n",
        args.concurrency,
        y.https.rate(),
        y.https.errors,
        ms(y.https.pct(0.5)),
        ms(y.https.pct(0.99))
    ));
    out.push_str(&format!(
        "ratios: {} the serial SQLite commit rate, {} the batched rate, {} bare HTTPS\n",
        times(m.rate(), y.serial.items_per_second()),
        times(m.rate(), y.batched.items_per_second()),
        times(m.rate(), y.https.rate())
    ));
    out
}

/// `a / b` as `2.10×`.
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

    #[test]
    fn stage_sums_count_only_the_measured_answers_and_report_means_in_path_order() {
        let sums = StageSums::default();
        sums.add("parse;dur=9, total;dur=9");
        assert_eq!(sums.report(), "", "nothing before the measurement starts");
        sums.measuring.store(true, Ordering::Relaxed);
        sums.add("queue;dur=2.0, parse;dur=0.5, commit;dur=1.5, other;dur=0, total;dur=4.0");
        sums.add("queue;dur=4.0, parse;dur=0.5, commit;dur=1.5, other;dur=2, total;dur=8.0");
        let out = sums.report();
        assert_eq!(
            out,
            "stages (server side, mean ms per initiate over 2): parse 0.500 (8%)  queue 3.000 (50%)  commit 1.500 (25%)  other 1.000 (17%)  total 6.000 (100%)\n"
        );
    }

    #[test]
    fn the_report_prints_each_yardstick_and_the_ratios() {
        let rate = |items, commits| CommitRate { items, commits, elapsed: Duration::from_secs(1) };
        let lat = |n: usize| Measured {
            latencies: vec![Duration::from_millis(2); n],
            errors: 0,
            window: Duration::from_secs(1),
        };
        let y = Yardsticks { serial: rate(1000, 1000), batched: rate(4000, 400), https: lat(8000) };
        let args = InitiateBenchArgs {
            url: None,
            token: None,
            ca_cert: None,
            concurrency: 16,
            seconds: 1,
            warmup: 0,
            yardstick_seconds: 1,
        };
        let out = report(&y, &lat(2000), &args, false, Path::new("/tmp"));
        assert!(out.contains(": 1000 commits/s"), "{out}");
        assert!(out.contains("4000 initiate-shaped writes/s in 400 commits/s (10.0 per commit)"), "{out}");
        assert!(out.contains("8000 requests/s, 0 failed; latency ms p50 2.00  p99 2.00"), "{out}");
        assert!(
            out.ends_with("ratios: 2.00× the serial SQLite commit rate, 0.50× the batched rate, 0.25× bare HTTPS\n"),
            "{out}"
        );
        assert_eq!(times(1.0, 0.0), "n/a");
    }
}
