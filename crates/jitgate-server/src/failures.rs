//! Compact audit of what anyone can cause without a credential (failed sign-ins) and of requests
//! refused by a rate limit: per operation, caller and source address, the first failure of an
//! interval is recorded at once; later ones in the same interval, and every request answered
//! 429, are only counted, and one summary record carries the counts when the interval closes
//! (or at the next failure after it, or at shutdown). No count is lost; the log grows by at
//! most two records per source and interval.
//!
//! Pure logic: `now` is a parameter; the caller writes the returned records.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jitgate_core::audit::{AuditEvent, AuditStatus};

/// The most (operation, caller, source) windows kept; past it, every open window is
/// summarised at once and forgotten.
pub const MAX_WINDOWS: usize = 20_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    operation: String,
    caller: String,
    source: String,
}

impl Key {
    fn of(e: &AuditEvent) -> Self {
        Key {
            operation: e.operation.clone(),
            caller: e.caller.clone(),
            source: e.caller_ip.clone().unwrap_or_default(),
        }
    }
}

#[derive(Debug)]
struct Window {
    opened: Instant,
    /// Failures after the first one, not recorded one by one.
    failures: u64,
    /// Requests answered 429, not recorded one by one.
    limited: u64,
    /// When the first of those happened, and the latest of them (bounded).
    first_time: Option<time::OffsetDateTime>,
    last: Option<AuditEvent>,
}

impl Window {
    fn new(opened: Instant) -> Self {
        Window { opened, failures: 0, limited: 0, first_time: None, last: None }
    }

    fn note(&mut self, event: AuditEvent) {
        self.first_time.get_or_insert(event.time);
        self.last = Some(event.bounded());
    }

    /// The summary record of this window, if anything in it went unrecorded.
    fn summary(self, now: time::OffsetDateTime) -> Option<AuditEvent> {
        let last = self.last?;
        if self.failures == 0 && self.limited == 0 {
            return None;
        }
        let first = self.first_time.unwrap_or(last.time);
        let last_reason = last.properties.get("reason").cloned().unwrap_or_default();
        let reason = format!(
            "{} further failed attempt(s) and {} refused by a rate limit (429) since {}, not recorded one by one; the last: {last_reason}",
            self.failures,
            self.limited,
            jitgate_api_types::datetime::format(first),
        );
        let mut event = AuditEvent {
            time: now.max(last.time),
            status: AuditStatus::Failed,
            properties: Default::default(),
            ..last
        };
        event.properties.insert("summary".into(), "true".into());
        event.properties.insert("failures".into(), self.failures.to_string());
        event.properties.insert("rateLimited".into(), self.limited.to_string());
        event.properties.insert("firstTime".into(), jitgate_api_types::datetime::format(first));
        event.properties.insert("reason".into(), reason);
        Some(event.bounded())
    }
}

/// Open windows per (operation, caller, source).
#[derive(Debug)]
pub struct FailureLog {
    window: Duration,
    windows: HashMap<Key, Window>,
    max_windows: usize,
}

impl FailureLog {
    pub fn new(window: Duration) -> Self {
        Self::with_capacity(window, MAX_WINDOWS)
    }

    pub fn with_capacity(window: Duration, max_windows: usize) -> Self {
        FailureLog { window, windows: HashMap::new(), max_windows: max_windows.max(1) }
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    /// How many windows are open.
    pub fn len(&self) -> usize {
        self.windows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// The open window of `key`, opening a new one (and summarising the closed one) when needed.
    fn window_for(&mut self, key: Key, now: Instant, out: &mut Vec<AuditEvent>, wall: time::OffsetDateTime) -> bool {
        let open = self.windows.get(&key).is_some_and(|w| now.saturating_duration_since(w.opened) < self.window);
        if open {
            return false;
        }
        if let Some(old) = self.windows.remove(&key) {
            out.extend(old.summary(wall));
        }
        if self.windows.len() >= self.max_windows {
            out.extend(self.drain(wall));
        }
        self.windows.insert(key, Window::new(now));
        true
    }

    /// A failure (a `Failed` event). Returns the records to write now: the event itself when it
    /// is the first of its window (after the summary of the previous window, if any), else none.
    pub fn failure(&mut self, event: AuditEvent, now: Instant) -> Vec<AuditEvent> {
        let mut out = Vec::new();
        let key = Key::of(&event);
        let wall = event.time;
        if self.window_for(key.clone(), now, &mut out, wall) {
            out.push(event.bounded());
            return out;
        }
        if let Some(w) = self.windows.get_mut(&key) {
            w.failures += 1;
            w.note(event);
        }
        out
    }

    /// A request refused by a rate limit: only counted. Returns a summary to write now when the
    /// previous window of the same key had closed.
    pub fn limited(&mut self, event: AuditEvent, now: Instant) -> Vec<AuditEvent> {
        let mut out = Vec::new();
        let key = Key::of(&event);
        let wall = event.time;
        self.window_for(key.clone(), now, &mut out, wall);
        if let Some(w) = self.windows.get_mut(&key) {
            w.limited += 1;
            w.note(event);
        }
        out
    }

    /// Summaries of the windows that have closed by `now` (which are forgotten).
    pub fn due(&mut self, now: Instant, wall: time::OffsetDateTime) -> Vec<AuditEvent> {
        let window = self.window;
        let closed: Vec<Key> = self
            .windows
            .iter()
            .filter(|(_, w)| now.saturating_duration_since(w.opened) >= window)
            .map(|(k, _)| k.clone())
            .collect();
        closed.into_iter().filter_map(|k| self.windows.remove(&k)).filter_map(|w| w.summary(wall)).collect()
    }

    /// Summaries of every window, open or not (at shutdown); forgets them all.
    pub fn drain(&mut self, wall: time::OffsetDateTime) -> Vec<AuditEvent> {
        self.windows.drain().filter_map(|(_, w)| w.summary(wall)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wall(secs: i64) -> time::OffsetDateTime {
        time::OffsetDateTime::from_unix_timestamp(1_900_000_000 + secs).expect("time")
    }

    fn failed(ip: &str, path: &str, secs: i64) -> AuditEvent {
        AuditEvent {
            time: wall(secs),
            operation: jitgate_core::audit::ops::SIGN_IN.into(),
            status: AuditStatus::Started,
            caller: "anonymous".into(),
            caller_ip: Some(ip.into()),
            resource_id: path.into(),
            correlation_id: format!("c{secs}"),
            properties: Default::default(),
        }
        .failed("InvalidAuthenticationToken: The access token is invalid, expired or revoked.")
    }

    #[test]
    fn the_first_failure_is_recorded_at_once_and_the_rest_are_summarised() {
        let t0 = Instant::now();
        let mut log = FailureLog::new(Duration::from_secs(60));
        let first = log.failure(failed("192.0.2.1", "/a", 0), t0);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].resource_id, "/a");
        for i in 1..50 {
            assert!(log.failure(failed("192.0.2.1", "/b", i), t0 + Duration::from_secs(i as u64)).is_empty());
        }
        for i in 50..60 {
            assert!(log.limited(failed("192.0.2.1", "/c", i), t0 + Duration::from_secs(i as u64)).is_empty());
        }
        // Another source has its own window.
        assert_eq!(log.failure(failed("192.0.2.2", "/a", 5), t0 + Duration::from_secs(5)).len(), 1);
        assert!(log.due(t0 + Duration::from_secs(59), wall(59)).is_empty(), "windows still open");
        let due = log.due(t0 + Duration::from_secs(60), wall(60));
        assert_eq!(due.len(), 1, "only the window with unrecorded attempts: {due:?}");
        let s = &due[0];
        assert_eq!(s.status, AuditStatus::Failed);
        assert_eq!(s.caller_ip.as_deref(), Some("192.0.2.1"));
        assert_eq!(s.properties["failures"], "49");
        assert_eq!(s.properties["rateLimited"], "10");
        assert_eq!(s.properties["summary"], "true");
        assert_eq!(s.resource_id, "/c", "the last attempt's resource");
        assert!(s.properties["reason"].contains("49 further failed attempt(s) and 10 refused"), "{s:?}");
        assert_eq!(s.time, wall(60));
        // The next failure opens a new window and is recorded at once.
        assert_eq!(log.failure(failed("192.0.2.1", "/d", 61), t0 + Duration::from_secs(61)).len(), 1);
    }

    #[test]
    fn a_failure_after_the_window_writes_the_summary_with_it() {
        let t0 = Instant::now();
        let mut log = FailureLog::new(Duration::from_secs(10));
        assert_eq!(log.failure(failed("192.0.2.1", "/a", 0), t0).len(), 1);
        assert!(log.failure(failed("192.0.2.1", "/a", 1), t0 + Duration::from_secs(1)).is_empty());
        let out = log.failure(failed("192.0.2.1", "/z", 30), t0 + Duration::from_secs(30));
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].properties["failures"], "1");
        assert_eq!(out[1].resource_id, "/z");
        assert!(!out[1].properties.contains_key("summary"));
    }

    #[test]
    fn nothing_is_lost_at_shutdown_and_memory_is_bounded() {
        let t0 = Instant::now();
        let mut log = FailureLog::with_capacity(Duration::from_secs(60), 10);
        let mut written = Vec::new();
        for i in 0..100u32 {
            let ip = format!("198.51.100.{}", i % 25);
            written.extend(log.failure(failed(&ip, "/x", 0), t0));
            written.extend(log.limited(failed(&ip, "/x", 0), t0));
            assert!(log.len() <= 10);
        }
        written.extend(log.drain(wall(1)));
        assert!(log.is_empty());
        // Every attempt was recorded, or counted in a summary.
        let accounted: u64 = written
            .iter()
            .map(|e| match e.properties.get("summary") {
                Some(_) => {
                    e.properties["failures"].parse::<u64>().unwrap_or(0)
                        + e.properties["rateLimited"].parse::<u64>().unwrap_or(0)
                }
                None => 1,
            })
            .sum();
        assert_eq!(accounted, 200);
        let mut log = FailureLog::new(Duration::from_secs(60));
        log.failure(failed("192.0.2.1", "/a", 0), t0);
        log.limited(failed("192.0.2.1", "/a", 1), t0);
        let last = log.drain(wall(2));
        assert_eq!(last.len(), 1);
        assert_eq!(last[0].properties["rateLimited"], "1");
    }

    #[test]
    fn summaries_are_bounded() {
        let t0 = Instant::now();
        let mut log = FailureLog::new(Duration::from_secs(60));
        let long = format!("/api/v1/requests/{}", "x".repeat(60_000));
        assert!(log.failure(failed("192.0.2.1", &long, 0), t0)[0].is_bounded());
        log.failure(failed("192.0.2.1", &long, 1), t0);
        let s = log.drain(wall(2));
        assert!(s[0].is_bounded());
    }
}
