//! The floor of `jitgate bench open-latency`, measured in the same run: the least an open can
//! cost is one fsync (the grant's commit), two loopback HTTPS round trips (the initiate and the
//! agent's long-poll answer) and one netlink element add (the agent's write into the set).
//!
//! The timed parts inside namespaces report numbers to this process as `figures NAME P50 P99`
//! lines (milliseconds), which [`split_figures`] takes out of their output.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;

use jitgate_client::Settings;
use jitgate_netns::Netns;

use crate::yardstick::{fsync_latencies, round_trips, BareHttps, Samples};

/// What a `figures` line carries: p50 and p99, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Figures {
    pub p50: f64,
    pub p99: f64,
}

/// The `figures NAME P50 P99` line for `name`.
pub fn figures_line(name: &str, f: Figures) -> String {
    format!("figures {name} {} {}", f.p50, f.p99)
}

/// The text without its `figures` lines, and the figures by name.
pub fn split_figures(output: &str) -> (String, BTreeMap<String, Figures>) {
    let mut text = String::new();
    let mut figures = BTreeMap::new();
    for line in output.lines() {
        let parsed = line.strip_prefix("figures ").and_then(|rest| {
            let mut it = rest.split_whitespace();
            let name = it.next()?.to_owned();
            let p50 = it.next()?.parse().ok()?;
            let p99 = it.next()?.parse().ok()?;
            Some((name, Figures { p50, p99 }))
        });
        match parsed {
            Some((name, f)) => {
                figures.insert(name, f);
            }
            None => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    (text, figures)
}

fn ms(s: &Samples, p: f64) -> f64 {
    s.pct(p).as_secs_f64() * 1000.0
}

/// The three yardsticks.
#[derive(Debug, Clone, Copy)]
pub struct Floor {
    pub samples: u32,
    pub fsync: Figures,
    pub rtt: Figures,
    pub netlink_add: Figures,
}

impl Floor {
    /// Measures each `samples` times: the fsync in a new temporary directory, the round trips to
    /// a bare HTTPS server on 127.0.0.1, the netlink adds in a network namespace of their own
    /// (needs root and nft).
    pub async fn measure(samples: u32) -> anyhow::Result<Floor> {
        let n = samples as usize;
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().to_owned();
        let fsync = tokio::task::spawn_blocking(move || fsync_latencies(&dir, n)).await??;
        let dir = tmp.path().to_owned();
        let bare = tokio::task::spawn_blocking(move || BareHttps::start(&dir)).await??;
        let rtt = async { round_trips(&bare.client(&Settings::new("").token("bench"))?, n).await }.await;
        tokio::task::spawn_blocking(move || drop(bare)).await?;
        let rtt = rtt?;
        let netlink = tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
            if let Some(why) = jitgate_netns::unavailable() {
                anyhow::bail!("this benchmark {why}");
            }
            let ns = Netns::new("bk")?;
            crate::bench_enforce::run_inner(&ns, &["nft-one".into(), "--count".into(), samples.to_string()])
        })
        .await??;
        let (_, figures) = split_figures(&netlink);
        let netlink_add = *figures.get("netlink-add").context("the netlink yardstick gave no figures")?;
        let of = |s: &Samples| Figures { p50: ms(s, 0.5), p99: ms(s, 0.99) };
        Ok(Floor { samples, fsync: of(&fsync), rtt: of(&rtt), netlink_add })
    }

    /// fsync + 2 RTT + netlink add, at p50 and (summing the p99s) at p99.
    pub fn sum(&self) -> Figures {
        Figures {
            p50: self.fsync.p50 + 2.0 * self.rtt.p50 + self.netlink_add.p50,
            p99: self.fsync.p99 + 2.0 * self.rtt.p99 + self.netlink_add.p99,
        }
    }

    /// The yardstick lines, the floor, and `open` (initiate → first connect) as multiples of it.
    pub fn report(&self, open: Option<Figures>) -> String {
        let line = |what: &str, f: Figures| format!("yardstick: {what}: p50 {:.3} ms  p99 {:.3} ms\n", f.p50, f.p99);
        let mut out = format!("yardsticks measured in the same run, {} samples each:\n", self.samples);
        out += &line("one fsync (write + fdatasync of 512 bytes in the temporary directory)", self.fsync);
        out +=
            &line("one loopback HTTPS round trip (bare axum + rustls server, jitgate's client, keep-alive)", self.rtt);
        out += &line("one netlink element add into an nft set of 10 grants (jitgate's encoder)", self.netlink_add);
        let floor = self.sum();
        out += &format!("floor = fsync + 2 RTT + netlink add: p50 {:.3} ms  p99 {:.3} ms\n", floor.p50, floor.p99);
        if let Some(open) = open {
            out += &format!(
                "initiate → first TCP connect against the floor: p50 {:.2} ms = {} the floor, p99 {:.2} ms = {} (p99 against the sum of the p99s)\n",
                open.p50,
                times(open.p50, floor.p50),
                open.p99,
                times(open.p99, floor.p99)
            );
        }
        out
    }
}

fn times(a: f64, b: f64) -> String {
    if b > 0.0 && b.is_finite() {
        format!("{:.1}×", a / b)
    } else {
        "n/a".to_owned()
    }
}

/// `jitgate bench inner nft-one`: a table of 10 grants, then `count` times one grant added
/// (timed) and removed; prints the `figures netlink-add` line and removes the table.
pub fn inner_nft_one(count: u32) -> anyhow::Result<()> {
    use jitgate_enforce::{Desired, ElemOp, Mode, Protected, L4};
    use jitgate_enforce_nft::NftFirewall;
    use std::time::Instant;

    let mut fw = NftFirewall::open().map_err(|e| anyhow::anyhow!("{e}"))?;
    let far = Duration::from_secs(3600);
    let now = Instant::now();
    let mut d = Desired::empty(Mode::Host);
    let port = crate::bench_enforce::PORT;
    d.protected.insert(Protected { dest: None, proto: L4::Tcp, port, cut_sessions: false });
    for i in 0..10 {
        d.grants.insert(crate::bench_enforce::filler_grant(i), now + far);
    }
    fw.replace(&d, now).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut adds = Vec::with_capacity(count as usize);
    let measured = (|| -> anyhow::Result<()> {
        for i in 0..count {
            let key = crate::bench_enforce::filler_grant(1000 + i);
            let t = Instant::now();
            fw.apply(&[ElemOp::AddGrant { key, timeout: far }]).map_err(|e| anyhow::anyhow!("{e}"))?;
            adds.push(t.elapsed());
            fw.apply(&[ElemOp::DelGrant { key }]).map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        Ok(())
    })();
    let removed = fw.remove().map_err(|e| anyhow::anyhow!("{e}"));
    measured?;
    removed?;
    let s = Samples::new(adds);
    println!("{}", figures_line("netlink-add", Figures { p50: ms(&s, 0.5), p99: ms(&s, 0.99) }));
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn figures_lines_are_taken_out_of_the_text() {
        let f = Figures { p50: 3.25, p99: 5.5 };
        let out = format!("open: n=2 p50 3.250 ms\n{}\nclosed: fine\n", figures_line("open", f));
        let (text, figures) = split_figures(&out);
        assert_eq!(text, "open: n=2 p50 3.250 ms\nclosed: fine\n");
        assert_eq!(figures.get("open"), Some(&f));
        let (text, figures) = split_figures("figures broken x y\n");
        assert_eq!(text, "figures broken x y\n", "a line that does not parse stays text");
        assert!(figures.is_empty());
    }

    #[test]
    fn the_floor_is_one_fsync_two_round_trips_and_a_netlink_add() {
        let floor = Floor {
            samples: 10,
            fsync: Figures { p50: 0.2, p99: 0.5 },
            rtt: Figures { p50: 0.1, p99: 0.2 },
            netlink_add: Figures { p50: 0.01, p99: 0.1 },
        };
        let sum = floor.sum();
        assert!((sum.p50 - 0.41).abs() < 1e-9 && (sum.p99 - 1.0).abs() < 1e-9, "{sum:?}");
        let out = floor.report(Some(Figures { p50: 4.1, p99: 5.0 }));
        assert!(out.contains("floor = fsync + 2 RTT + netlink add: p50 0.410 ms  p99 1.000 ms"), "{out}");
        assert!(out.contains("p50 4.10 ms = 10.0× the floor, p99 5.00 ms = 5.0×"), "{out}");
        assert!(!floor.report(None).contains("against the floor"));
    }
}
