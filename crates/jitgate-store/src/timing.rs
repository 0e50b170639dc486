//! Where a request's time goes, stage by stage: the server opens a [`Stages`] record for a
//! request (when it is asked to report timings), every part on the request's path adds the time
//! of its stage to it — the handler its parsing and authorization, the store's writer the wait
//! in its queue, the run of the change and the commit — and the answer carries the sums in a
//! `Server-Timing` header. A request without a record costs one task-local lookup per stage.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The stages of a request, in path order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Reading the body and parsing it.
    Parse,
    /// Finding the caller behind the credential.
    Authenticate,
    /// Role checks and rate limits.
    Authorize,
    /// A change waiting for the store's writer to take it into a batch.
    Queue,
    /// The change inside the transaction: reads, the decision, the writes, the audit record.
    Write,
    /// The commit of the batch the change was in (the log write and its fsync).
    Commit,
    /// Reads outside the writer (enforcement state, revisions).
    Read,
}

impl Stage {
    pub const ALL: [Stage; 7] =
        [Stage::Parse, Stage::Authenticate, Stage::Authorize, Stage::Queue, Stage::Write, Stage::Commit, Stage::Read];

    /// The name in `Server-Timing`.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Parse => "parse",
            Stage::Authenticate => "authn",
            Stage::Authorize => "authz",
            Stage::Queue => "queue",
            Stage::Write => "write",
            Stage::Commit => "commit",
            Stage::Read => "read",
        }
    }

    /// The stage named `name` in `Server-Timing`.
    pub fn parse(name: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| s.name() == name)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The time spent so far in each stage of one request.
#[derive(Debug, Default)]
pub struct Stages {
    nanos: [AtomicU64; 7],
}

impl Stages {
    pub fn add(&self, stage: Stage, d: Duration) {
        let n = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.nanos[stage.index()].fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self, stage: Stage) -> Duration {
        Duration::from_nanos(self.nanos[stage.index()].load(Ordering::Relaxed))
    }

    /// `parse;dur=0.012, authn;dur=0.030, …, total;dur=…` (milliseconds), the stages that took
    /// any time, then `total` and the remainder (`other`: routing, answer encoding).
    pub fn header(&self, total: Duration) -> String {
        let mut parts = Vec::with_capacity(Stage::ALL.len() + 2);
        let mut sum = Duration::ZERO;
        for s in Stage::ALL {
            let d = self.get(s);
            if !d.is_zero() {
                sum += d;
                parts.push(format!("{};dur={:.3}", s.name(), d.as_secs_f64() * 1000.0));
            }
        }
        parts.push(format!("other;dur={:.3}", total.saturating_sub(sum).as_secs_f64() * 1000.0));
        parts.push(format!("total;dur={:.3}", total.as_secs_f64() * 1000.0));
        parts.join(", ")
    }
}

tokio::task_local! {
    static STAGES: Arc<Stages>;
}

/// Runs `f` with `stages` as the record of the request it serves.
pub async fn scope<F: std::future::Future>(stages: Arc<Stages>, f: F) -> F::Output {
    STAGES.scope(stages, f).await
}

/// The record of the request this task serves, if it keeps one.
pub fn current() -> Option<Arc<Stages>> {
    STAGES.try_with(Arc::clone).ok()
}

/// Adds the time since `since` to `stage` of the current request, if it keeps a record.
pub fn since(stage: Stage, since: Instant) {
    let _ = STAGES.try_with(|s| s.add(stage, since.elapsed()));
}

/// Times `f` as `stage` of the current request.
pub async fn timed<F: std::future::Future>(stage: Stage, f: F) -> F::Output {
    let start = Instant::now();
    let out = f.await;
    since(stage, start);
    out
}

/// Parses a `Server-Timing` header into (name, milliseconds) pairs; unknown parts are skipped.
pub fn parse_header(value: &str) -> Vec<(String, f64)> {
    value
        .split(',')
        .filter_map(|part| {
            let mut fields = part.trim().split(';');
            let name = fields.next()?.trim().to_owned();
            let dur = fields.find_map(|f| f.trim().strip_prefix("dur="))?.parse::<f64>().ok()?;
            dur.is_finite().then_some((name, dur))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_scoped_request_collects_its_stages_and_reports_them() {
        let stages = Arc::new(Stages::default());
        scope(stages.clone(), async {
            since(Stage::Parse, Instant::now() - Duration::from_millis(2));
            timed(Stage::Queue, async {}).await;
            let inner = current().expect("a record in scope");
            inner.add(Stage::Commit, Duration::from_micros(1500));
        })
        .await;
        assert!(stages.get(Stage::Parse) >= Duration::from_millis(2));
        assert_eq!(stages.get(Stage::Commit), Duration::from_micros(1500));
        let header = stages.header(Duration::from_millis(10));
        let parsed = parse_header(&header);
        let get = |n: &str| parsed.iter().find(|(k, _)| k == n).map(|(_, v)| *v);
        assert_eq!(get("commit"), Some(1.5));
        assert_eq!(get("total"), Some(10.0));
        assert!(get("parse").is_some_and(|p| p >= 2.0));
        assert!(get("other").is_some_and(|o| o <= 10.0 - 3.5 + 1e-9), "{header}");
        assert_eq!(get("write"), None, "stages without time are left out");
        for s in Stage::ALL {
            assert_eq!(Stage::parse(s.name()), Some(s));
        }
    }

    #[test]
    fn outside_a_scope_nothing_is_recorded_and_nothing_fails() {
        assert!(current().is_none());
        since(Stage::Write, Instant::now());
        assert!(parse_header("garbage, x;dur=abc, y;desc=1, z;dur=1.25").iter().eq([("z".to_owned(), 1.25)].iter()));
    }
}
