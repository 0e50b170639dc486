//! The verdict of `jitgate bench soak`: the sampled table, the growth over the second half, each
//! grant's faults and lateness, the summary line, all judged against the bounds in
//! `bench_soak_watch`.

use std::sync::atomic::Ordering::Relaxed;

use crate::bench_soak::World;
use crate::bench_soak_watch::{self as w, lock, Sample, Tracked};

/// What the soak measured, and its verdict.
pub(crate) struct Report {
    pub lines: Vec<String>,
    pub failures: Vec<String>,
}

impl Report {
    pub(crate) fn judge(
        world: &World,
        samples: Vec<Sample>,
        last: Sample,
        run_s: f64,
        edits: u64,
        stopped_early: Vec<String>,
        server_alive: bool,
    ) -> Report {
        let mut lines = Vec::new();
        let mut failures = stopped_early;
        if !server_alive {
            failures.push("the server is no longer running".into());
        }
        lines.push(
            "samples (t · server RSS: VmRSS (of it heap, RssAnon) · fds · WAL · live grants (API) · elements (firewalls) · largest real agent's heap):".into(),
        );
        let step = (samples.len() / 12).max(1);
        for s in samples.iter().step_by(step).chain(std::iter::once(&last)) {
            lines.push(format!(
                "  {:>6.0} s  {:>7.1} MiB ({:>6.1})  {:>4.0}  {:>7.2} MiB  {:>5}  {:>5}  {}",
                s.t_s,
                s.rss_kib / 1024.0,
                s.anon_kib / 1024.0,
                s.fds,
                s.wal_bytes / 1_048_576.0,
                s.live_grants.map(|v| format!("{v:.0}")).unwrap_or_else(|| "?".into()),
                s.elements,
                s.agent_rss_kib.map(|v| format!("{:.1} MiB", v / 1024.0)).unwrap_or_else(|| "-".into()),
            ));
        }
        let series = |f: &dyn Fn(&Sample) -> Option<f64>| -> Vec<(f64, f64)> {
            samples.iter().filter_map(|s| f(s).filter(|v| v.is_finite()).map(|v| (s.t_s, v))).collect()
        };
        if let Some((mid, end)) = w::second_half(&series(&|s| Some(s.rss_kib)), run_s) {
            lines.push(format!(
                "server VmRSS: {:.2} → {:.2} MiB over the second half (not judged: it counts the database SQLite maps, which grows with the data)",
                mid / 1024.0,
                end / 1024.0
            ));
        }
        let mut growth = |what: &str, values: Vec<(f64, f64)>, bound: &dyn Fn(f64) -> f64, unit: f64, name: &str| {
            let Some((mid, end)) = w::second_half(&values, run_s) else { return };
            let (grew, limit) = (end - mid, bound(mid));
            let ok = grew <= limit;
            lines.push(format!(
                "{what}: {:.2} → {:.2} {name} over the second half (growth {:+.2}, bound {:.2}): {}",
                mid / unit,
                end / unit,
                grew / unit,
                limit / unit,
                if ok { "ok" } else { "FAIL" }
            ));
            if !ok {
                failures.push(format!("{what} grew by {:.2} {name} over the second half", grew / unit));
            }
        };
        let rss_bound = |mid: f64| w::RSS_GROWTH_KIB.max(mid * w::RSS_GROWTH_SHARE);
        growth("server heap (RssAnon)", series(&|s| Some(s.anon_kib)), &rss_bound, 1024.0, "MiB");
        growth("server open fds", series(&|s| Some(s.fds)), &|_| w::FD_GROWTH, 1.0, "");
        growth("SQLite WAL", series(&|s| Some(s.wal_bytes)), &|_| w::WAL_GROWTH_BYTES, 1_048_576.0, "MiB");
        growth("real agent heap (RssAnon, largest)", series(&|s| s.agent_rss_kib), &rss_bound, 1024.0, "MiB");

        let now = w::unix_ms();
        let t = lock(&world.tracker);
        let (mut fake_late, mut real_late, mut revoke_late) = (Vec::new(), Vec::new(), Vec::new());
        let (mut fake_gone, mut real_gone) = (Vec::new(), Vec::new());
        let (mut faults, mut never_opened, mut expired) = (Vec::new(), 0u64, 0u64);
        let real = |g: &Tracked| g.fw >= world.fakes;
        for (id, g) in &t.grants {
            if let Some(f) = w::fault(g, now) {
                faults.push(format!("request {id}: {f}"));
            }
            let Some(close) = g.close_ms() else { continue };
            if g.first_seen_ms.is_none() {
                never_opened += 1;
                continue;
            }
            match (g.revoked_ms, g.deadline_ms) {
                (Some(r), _) if r <= close => {
                    if let Some(gone) = g.gone_ms {
                        revoke_late.push((gone - r) as f64);
                    }
                }
                (_, Some(d)) => {
                    expired += 1;
                    if real(g) { &mut real_late } else { &mut fake_late }.push((d - close) as f64);
                    if let Some(gone) = g.gone_ms {
                        if real(g) { &mut real_gone } else { &mut fake_gone }.push((gone - close) as f64);
                    }
                }
                _ => {}
            }
        }
        let c = &world.counts;
        lines.push(format!(
            "expiry lateness, fake firewalls (element's timeout − endTimeUtc): {}",
            w::spread(fake_late.clone())
        ));
        lines.push(format!(
            "expiry lateness, real agents on nftables (nft's expires − endTimeUtc): {}",
            w::spread(real_late.clone())
        ));
        lines.push(format!(
            "endTimeUtc → element found gone, by the looks (every 100 ms): fake firewalls {}",
            w::spread(fake_gone)
        ));
        lines.push(format!(
            "endTimeUtc → element found gone, by the looks (every 300 ms, nft list): real agents {}",
            w::spread(real_gone)
        ));
        lines.push(format!(
            "revoke → element gone (looked at every 100 ms fake, 300 ms real): {}",
            w::spread(revoke_late)
        ));
        let gap =
            samples.iter().filter_map(|s| s.live_grants.map(|l| (l - s.elements as f64).abs())).fold(0.0f64, f64::max);
        lines.push(format!(
            "live grants (API) against elements in the firewalls: largest difference in a sample {gap:.0} (a grant's element appears after its answer and leaves at its end)"
        ));
        lines.push(format!(
            "at the end: live grants (API) {}, elements in the firewalls {}",
            last.live_grants.map(|v| format!("{v:.0}")).unwrap_or_else(|| "unreadable".into()),
            last.elements
        ));
        if last.live_grants != Some(0.0) {
            failures.push(format!("live grants left after the last end: {:?}", last.live_grants));
        }
        if last.elements != 0 {
            failures.push(format!("{} elements left in the firewalls after the last end", last.elements));
        }
        let failed = c.failed.load(Relaxed);
        if failed > 0 {
            failures.push(format!("{failed} calls failed (5xx or no answer)"));
        }
        if !faults.is_empty() {
            faults.sort();
            failures.push(format!(
                "{} grants broke the bounds: {}",
                faults.len(),
                faults.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        let worst = fake_late.iter().chain(&real_late).copied().fold(f64::NAN, f64::max);
        lines.push(format!(
            "soak summary: seconds={run_s:.0} initiated={} pending={} approved={} denied={} revoked={} edits={edits} expired={expired} never_opened={never_opened} refused={} failed={failed} faults={} worst_lateness_ms={worst:.0} unreadable_looks={}",
            c.initiated.load(Relaxed),
            c.pending.load(Relaxed),
            c.approved.load(Relaxed),
            c.denied.load(Relaxed),
            c.revoked.load(Relaxed),
            c.refused.load(Relaxed),
            faults.len(),
            t.unreadable_looks,
        ));
        lines.push(format!(
            "bounds: an element alive > {} ms past its grant's end, or > {} ms after its revoke was answered, fails; growth over the second half (median of the run's last eighth − median of the eighth after its middle): heap (RssAnon) ≤ max({:.0} MiB, {:.0} %), fds ≤ {:.0}, WAL ≤ {:.0} MiB",
            w::LATE_LIMIT_MS,
            w::REVOKE_LIMIT_MS,
            w::RSS_GROWTH_KIB / 1024.0,
            w::RSS_GROWTH_SHARE * 100.0,
            w::FD_GROWTH,
            w::WAL_GROWTH_BYTES / 1_048_576.0
        ));
        Report { lines, failures }
    }

    pub(crate) fn print(&self) {
        for l in &self.lines {
            println!("{l}");
        }
        match self.failures.is_empty() {
            true => println!("soak: PASS"),
            false => println!("soak: FAIL: {}", self.failures.join("; ")),
        }
    }
}
