//! The expiry sweeper: marks grants whose end time has passed as `Revoked`/`Expired`.
//!
//! It sleeps until the earliest live end time (at most a minute), or until a new grant wakes it.
//! The kernel's element timeouts close ports on their own; this keeps the record and the views
//! true, and audits each expiry. With several replicas on one store, the replica holding the
//! `sweeper` lease sweeps; the others wait to take it over.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::{watch, Notify};

use jitgate_core::initiate::GrantStatus;
use jitgate_core::records::AccessRequestRecord;

use crate::replicas::Lease;
use crate::App;

/// The longest the sweeper sleeps without looking.
const MAX_SLEEP: Duration = Duration::from_secs(60);
/// How often it retries after a store failure.
const RETRY: Duration = Duration::from_secs(1);

/// What wakes the sweeper, and when it plans to look next: a new grant wakes it only when the
/// sweep it calls for (its warning before the end, its scheduled start, an approval deadline)
/// comes before the planned one. Under a stream of initiates the sweeper then sleeps instead of
/// sweeping after each.
#[derive(Debug)]
pub struct Wake {
    notify: Notify,
    /// Unix nanoseconds of the next planned sweep; `i64::MIN` while a sweep runs (or before the
    /// first), when every change wakes it.
    at: AtomicI64,
}

impl Default for Wake {
    fn default() -> Self {
        Wake { notify: Notify::new(), at: AtomicI64::new(i64::MIN) }
    }
}

impl Wake {
    /// Wakes the sweeper (or its next wait) now.
    pub fn notify_one(&self) {
        self.notify.notify_one();
    }

    /// Wakes the sweeper if a change that needs a sweep at `due` comes before the planned one.
    pub fn due(&self, due: OffsetDateTime) {
        let due = i64::try_from(due.unix_timestamp_nanos()).unwrap_or(i64::MIN);
        if due < self.at.load(Ordering::Acquire) {
            self.notify.notify_one();
        }
    }

    /// Wakes the sweeper if the grants of a request just recorded need it before the planned
    /// sweep: a live grant's warning before its end, any other grant (pending, scheduled) now.
    pub fn for_request(&self, request: &AccessRequestRecord) {
        let mut due = None::<OffsetDateTime>;
        for g in &request.grants {
            let at = match g.status {
                GrantStatus::Initiated => g.end_time - jitgate_store::EXPIRING_SOON,
                _ => OffsetDateTime::UNIX_EPOCH,
            };
            due = Some(due.map_or(at, |d| d.min(at)));
        }
        if let Some(d) = due {
            self.due(d);
        }
    }

    async fn notified(&self) {
        self.notify.notified().await
    }

    /// A sweep begins: until it plans the next, every change wakes it again afterwards.
    fn sweeping(&self) {
        self.at.store(i64::MIN, Ordering::Release);
    }

    /// The sweep ended; the next is planned `after` from `now`.
    fn planned(&self, now: OffsetDateTime, after: Duration) {
        let at = now + after;
        self.at.store(i64::try_from(at.unix_timestamp_nanos()).unwrap_or(i64::MAX), Ordering::Release);
    }
}

pub async fn run(app: App, mut stop: watch::Receiver<bool>) {
    let lease = Lease::new("sweeper", app.config.lease_ttl);
    loop {
        if !lease.hold(&app).await {
            // Another replica sweeps: look again when its lease could have run out.
            tokio::select! {
                _ = tokio::time::sleep(lease.every()) => continue,
                _ = stop.changed() => return,
            }
        }
        app.sweeper.sweeping();
        let sleep_for = match sweep_once(&app).await {
            Ok(next) => next.min(lease.every()),
            Err(e) => {
                tracing::warn!(error = %e, "expiry sweep failed; retrying");
                RETRY
            }
        };
        app.sweeper.planned(app.clock.now(), sleep_for);
        tokio::select! {
            _ = tokio::time::sleep(sleep_for) => {}
            _ = app.sweeper.notified() => {}
            _ = stop.changed() => break,
        }
    }
    lease.release(&app).await;
}

/// One sweep; returns how long to sleep before the next.
pub async fn sweep_once(app: &App) -> Result<Duration, jitgate_store::StoreError> {
    let swept = app.store.expire_due(app.clock.now()).await?;
    if swept.expired > 0 {
        tracing::info!(expired = swept.expired, "grants expired");
        app.deliveries.notify_one();
    }
    if swept.warned > 0 {
        app.deliveries.notify_one();
    }
    if swept.activated > 0 {
        tracing::info!(opened = swept.activated, "scheduled grants opened");
        app.grants_changed();
    }
    let Some(next) = app.store.next_expiry().await? else { return Ok(MAX_SLEEP) };
    let wait = next - app.clock.now();
    let wait = Duration::try_from(wait).unwrap_or(Duration::ZERO);
    // A millisecond past the end time, so the sweep after waking finds the grant due.
    Ok(wait.min(MAX_SLEEP) + Duration::from_millis(1))
}
