//! The watching half of `jitgate bench soak`: every grant the driver made, what each firewall
//! held of it and when, the server's samples, and the verdict.
//!
//! A grant's *close* is its end (`endTimeUtc`), or the moment its revoke was answered. Each
//! firewall is looked at every [`LOOK_EVERY`] (the real ones every third look: a look is a
//! `nft list table` inside the agent's namespace); a look records, for every element, the
//! instant it will time out (the fake firewall's deadline, or `expires` as nft prints it).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jitgate_enforce::fake::FakeHandle;

/// How often the firewalls are looked at.
pub const LOOK_EVERY: Duration = Duration::from_millis(100);
/// An element alive this long past its grant's end is a missed expiry.
pub const LATE_LIMIT_MS: i64 = 1000;
/// An element alive this long after its grant's revoke was answered is a missed revoke (the
/// revoke travels through the server, a long-poll and the agent; an expiry is the kernel's).
pub const REVOKE_LIMIT_MS: i64 = 2000;
/// Server (and real agent) memory may grow over the second half by at most this much …
pub const RSS_GROWTH_KIB: f64 = 8.0 * 1024.0;
/// … or this share of the value at the middle, whichever is larger.
pub const RSS_GROWTH_SHARE: f64 = 0.10;
/// Open file descriptors may grow over the second half by at most this many.
pub const FD_GROWTH: f64 = 8.0;
/// The SQLite write-ahead log may grow over the second half by at most this much.
pub const WAL_GROWTH_BYTES: f64 = 8.0 * 1024.0 * 1024.0;

pub fn unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// An enforcement point of the soak.
#[derive(Clone)]
pub enum Fw {
    /// An in-process agent's fake firewall.
    Fake(FakeHandle),
    /// A real agent's nftables, in the named network namespace.
    Real(String),
}

/// What one look at a firewall found: each grant element's source and the wall-clock
/// millisecond at which it times out.
pub type Look = HashMap<IpAddr, i64>;

/// One look at a firewall and when it was taken: the elements were there at some instant
/// between `from_ms` (judging an element seen, the earliest: its lateness is never
/// overstated) and `to_ms` (judging one gone, the latest).
pub struct Sighting {
    pub from_ms: i64,
    pub to_ms: i64,
    pub elements: Look,
}

impl Fw {
    pub fn is_real(&self) -> bool {
        matches!(self, Fw::Real(_))
    }

    /// The grant elements now; `None` when the firewall could not be read.
    pub async fn look(&self) -> Option<Sighting> {
        let from_ms = unix_ms();
        let elements = match self {
            Fw::Fake(h) => {
                let now = Instant::now();
                let table = h.table()?;
                table
                    .grants
                    .iter()
                    .map(|(k, end)| (k.source.addr(), from_ms + end.saturating_duration_since(now).as_millis() as i64))
                    .collect()
            }
            Fw::Real(ns) => {
                let out = tokio::process::Command::new("ip")
                    .args(["netns", "exec", ns, "nft", "list", "table", "inet", jitgate_enforce_nft::TABLE])
                    .output()
                    .await
                    .ok()?;
                // No table yet (the agent has not applied a state) is an empty firewall. The
                // times left are counted from the start of the look: the earliest reading.
                if out.status.success() {
                    nft_elements(&String::from_utf8_lossy(&out.stdout), from_ms)
                } else {
                    Look::new()
                }
            }
        };
        Some(Sighting { from_ms, to_ms: unix_ms(), elements })
    }
}

/// The elements with a timeout in `nft list` output: source address → the millisecond it
/// expires (`now_ms` + `expires …`).
pub fn nft_elements(text: &str, now_ms: i64) -> Look {
    let mut found = Look::new();
    for piece in text.split([',', '{', '}']) {
        let mut words = piece.split_whitespace();
        let Some(source) = piece.split_whitespace().find_map(|w| w.parse::<IpAddr>().ok()) else { continue };
        if words.any(|w| w == "expires") {
            if let Some(left) = words.next().and_then(nft_duration_ms) {
                found.insert(source, now_ms + left);
            }
        }
    }
    found
}

/// `1h2m3s400ms` (nft's way of writing a time) in milliseconds.
pub fn nft_duration_ms(text: &str) -> Option<i64> {
    let (mut total, mut num, mut rest) = (0i64, None::<i64>, text);
    while !rest.is_empty() {
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        if digits > 0 {
            num = Some(rest[..digits].parse().ok()?);
            rest = &rest[digits..];
            continue;
        }
        let n = num.take()?;
        let (unit, len) = if rest.starts_with("ms") {
            (1, 2)
        } else {
            let scale = match rest.chars().next()? {
                'd' => 86_400_000,
                'h' => 3_600_000,
                'm' => 60_000,
                's' => 1000,
                _ => return None,
            };
            (scale, 1)
        };
        total += n * unit;
        rest = &rest[len..];
    }
    if num.is_some() {
        return None;
    }
    Some(total)
}

/// One grant of the soak, as the driver made it and the watcher saw it.
#[derive(Debug, Clone, Default)]
pub struct Tracked {
    /// Index into the firewalls.
    pub fw: usize,
    pub source: Option<IpAddr>,
    /// `endTimeUtc` in Unix ms; `None` while it waits for an approver (or after a denial).
    pub end_ms: Option<i64>,
    pub revoked_ms: Option<i64>,
    pub denied: bool,
    pub first_seen_ms: Option<i64>,
    pub last_seen_ms: Option<i64>,
    /// When the element was due to time out, at the last look that saw it.
    pub deadline_ms: Option<i64>,
    /// The first look that no longer found it.
    pub gone_ms: Option<i64>,
}

impl Tracked {
    /// When the grant stops: its end, or its revoke.
    pub fn close_ms(&self) -> Option<i64> {
        match (self.end_ms, self.revoked_ms) {
            (Some(e), Some(r)) => Some(e.min(r)),
            (e, r) => e.or(r),
        }
    }

    /// Nothing more can be learnt about this grant.
    fn settled(&self, now_ms: i64) -> bool {
        self.gone_ms.is_some()
            || self.close_ms().is_some_and(|c| now_ms > c + 2 * LATE_LIMIT_MS && self.first_seen_ms.is_none())
    }

    fn saw(&mut self, look: &Sighting) {
        let Some(source) = self.source else { return };
        match look.elements.get(&source) {
            Some(deadline) => {
                self.first_seen_ms.get_or_insert(look.from_ms);
                self.last_seen_ms = Some(look.from_ms);
                self.gone_ms = None;
                self.deadline_ms = Some(*deadline);
            }
            None if self.first_seen_ms.is_some() && self.gone_ms.is_none() => self.gone_ms = Some(look.to_ms),
            None => {}
        }
    }
}

/// Everything the watcher knows, shared with the driver.
#[derive(Default)]
pub struct Tracker {
    pub grants: HashMap<i64, Tracked>,
    /// Elements in the fake firewalls and in the real ones at the last looks.
    pub fake_elements: usize,
    pub real_elements: usize,
    pub unreadable_looks: u64,
}

pub type Shared = Arc<Mutex<Tracker>>;

pub fn lock(t: &Shared) -> std::sync::MutexGuard<'_, Tracker> {
    t.lock().unwrap_or_else(|p| p.into_inner())
}

/// Looks at every firewall every [`LOOK_EVERY`] until `stop` says so, then once more.
pub async fn watch(fws: Vec<Fw>, tracker: Shared, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(LOOK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut round = 0u64;
    loop {
        let last = *stop.borrow();
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => {}
        }
        let real_round = round.is_multiple_of(3) || last;
        round += 1;
        let mut looks: Vec<Option<Sighting>> = Vec::with_capacity(fws.len());
        let mut unreadable = 0;
        for fw in &fws {
            if fw.is_real() && !real_round {
                looks.push(None);
                continue;
            }
            let look = fw.look().await;
            unreadable += u64::from(look.is_none());
            looks.push(look);
        }
        let at = unix_ms();
        let mut t = lock(&tracker);
        t.unreadable_looks += unreadable;
        let count = |real: bool| {
            fws.iter()
                .zip(&looks)
                .filter(|(f, _)| f.is_real() == real)
                .filter_map(|(_, l)| l.as_ref())
                .map(|l| l.elements.len())
                .sum()
        };
        t.fake_elements = count(false);
        if real_round {
            t.real_elements = count(true);
        }
        for g in t.grants.values_mut().filter(|g| !g.settled(at)) {
            if let Some(Some(look)) = looks.get(g.fw) {
                g.saw(look);
            }
        }
        drop(t);
        if last {
            return;
        }
    }
}

/// One sample of the server (and of the real agents).
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub t_s: f64,
    /// `VmRSS`: the heap and the pages of files mapped (SQLite maps the database, so this part
    /// grows with the database).
    pub rss_kib: f64,
    /// `RssAnon`: the heap alone, where a leak shows.
    pub anon_kib: f64,
    pub fds: f64,
    pub wal_bytes: f64,
    /// `jitgate_live_grants` at the server's `/metrics`.
    pub live_grants: Option<f64>,
    pub elements: usize,
    /// The largest real agent's heap (`RssAnon`).
    pub agent_rss_kib: Option<f64>,
}

/// A process's resident anonymous memory (`RssAnon`: its heap and stacks, no mapped files), KiB.
pub fn anon_kib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let v = status.lines().find_map(|l| l.strip_prefix("RssAnon:"))?;
    v.trim().trim_end_matches("kB").trim().parse().ok()
}

/// Median of a window of the run: the samples taken between `from` and `to` (shares of
/// `run_s`); when the window holds none, the sample nearest its middle.
pub fn window_median(samples: &[(f64, f64)], run_s: f64, from: f64, to: f64) -> Option<f64> {
    let mut inside: Vec<f64> =
        samples.iter().filter(|(t, _)| *t >= from * run_s && *t <= to * run_s).map(|(_, v)| *v).collect();
    if inside.is_empty() {
        let mid = (from + to) / 2.0 * run_s;
        return samples.iter().min_by(|a, b| (a.0 - mid).abs().total_cmp(&(b.0 - mid).abs())).map(|s| s.1);
    }
    inside.sort_by(f64::total_cmp);
    Some(inside[inside.len() / 2])
}

/// Growth over the second half of the run: the median of the run's last eighth against the
/// median of the eighth after its middle (medians, so that one spike is not growth).
/// `(middle, end)`.
pub fn second_half(samples: &[(f64, f64)], run_s: f64) -> Option<(f64, f64)> {
    Some((window_median(samples, run_s, 0.5, 0.625)?, window_median(samples, run_s, 0.875, 1.0)?))
}

/// What went wrong with one grant, if anything.
pub fn fault(g: &Tracked, now_ms: i64) -> Option<String> {
    let seen = g.first_seen_ms.is_some();
    let Some(close) = g.close_ms() else {
        return seen.then(|| format!("opened although {}", if g.denied { "denied" } else { "never approved" }));
    };
    let revoked = g.revoked_ms.is_some_and(|r| r <= close);
    let limit = if revoked { REVOKE_LIMIT_MS } else { LATE_LIMIT_MS };
    let closed = if revoked { "was revoked" } else { "ended" };
    if let Some(last) = g.last_seen_ms.filter(|l| *l - close > limit) {
        return Some(format!("element still there {} ms after the grant {closed}", last - close));
    }
    if seen && g.gone_ms.is_none() && now_ms - close > limit {
        return Some(format!("element never removed ({} ms after the grant {closed})", now_ms - close));
    }
    if g.revoked_ms.is_none() {
        if let Some(d) = g.deadline_ms.filter(|d| *d - close > LATE_LIMIT_MS) {
            return Some(format!("element set to time out {} ms after the grant's end", d - close));
        }
    }
    None
}

/// `p` quantile of sorted values.
pub fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// `n=… p50 … p99 … max …` of `v` (ms).
pub fn spread(mut v: Vec<f64>) -> String {
    if v.is_empty() {
        return "n=0".into();
    }
    v.sort_by(f64::total_cmp);
    format!(
        "n={} p50 {:.0} ms  p99 {:.0} ms  max {:.0} ms",
        v.len(),
        pct(&v, 0.5),
        pct(&v, 0.99),
        v.last().copied().unwrap_or(f64::NAN)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nft_times_and_elements_are_read() {
        assert_eq!(nft_duration_ms("4s988ms"), Some(4988));
        assert_eq!(nft_duration_ms("1h1m59s988ms"), Some(3_719_988));
        assert_eq!(nft_duration_ms("988ms"), Some(988));
        assert_eq!(nft_duration_ms("2d"), Some(172_800_000));
        assert_eq!(nft_duration_ms("12"), None);
        assert_eq!(nft_duration_ms("3x"), None);
        let text = "table inet jitgate {\n\tset allow4 {\n\t\ttype ipv4_addr . inet_proto . inet_service\n\t\tflags timeout\n\t\t\
                    elements = { 10.100.0.1 . tcp . 22 timeout 5s expires 4s988ms,\n\t\t\t     10.100.0.2 . tcp . 22 timeout 1h2m expires 1h1m59s988ms }\n\t}\n\
                    \tset protected4 {\n\t\telements = { 10.1.1.1 . tcp . 22 }\n\t}\n}";
        let found = nft_elements(text, 1000);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found.get(&"10.100.0.1".parse::<IpAddr>().expect("ip")), Some(&5988));
        assert_eq!(found.get(&"10.100.0.2".parse::<IpAddr>().expect("ip")), Some(&3_720_988));
    }

    #[test]
    fn growth_compares_the_end_with_the_middle() {
        let flat: Vec<(f64, f64)> = (0..=100).map(|t| (t as f64, 50.0)).collect();
        assert_eq!(second_half(&flat, 100.0), Some((50.0, 50.0)));
        let rising: Vec<(f64, f64)> = (0..=100).map(|t| (t as f64, t as f64)).collect();
        let (mid, end) = second_half(&rising, 100.0).expect("windows");
        assert!((56.0..=57.0).contains(&mid) && (93.0..=94.0).contains(&end), "{mid} {end}");
        // A spike in the last window is not growth.
        let mut spiky = flat.clone();
        spiky[95].1 = 900.0;
        assert_eq!(second_half(&spiky, 100.0), Some((50.0, 50.0)));
        assert_eq!(second_half(&[], 100.0), None);
        assert_eq!(second_half(&[(0.0, 3.0)], 100.0), Some((3.0, 3.0)));
    }

    #[test]
    fn late_and_stray_elements_are_faults() {
        let ok = Tracked {
            end_ms: Some(10_000),
            first_seen_ms: Some(2_000),
            last_seen_ms: Some(9_950),
            deadline_ms: Some(10_004),
            gone_ms: Some(10_050),
            ..Tracked::default()
        };
        assert_eq!(fault(&ok, 20_000), None);
        let late = Tracked { last_seen_ms: Some(11_200), ..ok.clone() };
        assert!(fault(&late, 20_000).is_some_and(|f| f.contains("1200 ms after the grant ended")));
        let held = Tracked { deadline_ms: Some(12_000), ..ok.clone() };
        assert!(fault(&held, 20_000).is_some());
        let stuck = Tracked { gone_ms: None, last_seen_ms: Some(10_900), ..ok.clone() };
        assert!(fault(&stuck, 20_000).is_some_and(|f| f.contains("never removed")));
        let revoked =
            Tracked { revoked_ms: Some(5_000), last_seen_ms: Some(5_400), gone_ms: Some(5_500), ..ok.clone() };
        assert_eq!(fault(&revoked, 20_000), None, "the deadline of a revoked grant's element is not its close");
        let slow_revoke = Tracked { last_seen_ms: Some(6_200), gone_ms: Some(6_300), ..revoked.clone() };
        assert_eq!(fault(&slow_revoke, 20_000), None, "within the revoke's bound");
        let missed_revoke = Tracked { last_seen_ms: Some(7_200), ..revoked };
        assert!(fault(&missed_revoke, 20_000).is_some_and(|f| f.contains("after the grant was revoked")));
        let denied = Tracked { denied: true, end_ms: None, ..ok.clone() };
        assert!(fault(&denied, 20_000).is_some_and(|f| f.contains("denied")));
        let never_opened = Tracked { first_seen_ms: None, last_seen_ms: None, deadline_ms: None, gone_ms: None, ..ok };
        assert_eq!(fault(&never_opened, 20_000), None);
    }
}
