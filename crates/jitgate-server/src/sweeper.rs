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
    /// Unix nanoseconds of the next planned sweep; `i64::MAX` while a sweep runs (or before the
    /// first), when every change wakes it.
    at: AtomicI64,
}

impl Default for Wake {
    fn default() -> Self {
        Wake { notify: Notify::new(), at: AtomicI64::new(i64::MAX) }
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
        self.at.store(i64::MAX, Ordering::Release);
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
    app.metrics.expired(swept.expired);
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

#[cfg(test)]
mod tests {
    use super::*;
    use jitgate_core::initiate::StatusReason;
    use jitgate_core::policy::{Protocol, SourceSpec};
    use jitgate_core::prefix::SourcePrefix;
    use jitgate_core::records::GrantRecord;

    async fn woken(wake: &Wake) -> bool {
        tokio::time::timeout(Duration::from_millis(5), wake.notified()).await.is_ok()
    }

    fn request(status: GrantStatus, end: OffsetDateTime) -> AccessRequestRecord {
        AccessRequestRecord {
            id: 1,
            requestor: "r".into(),
            start_time: end - time::Duration::hours(1),
            justification: None,
            grants: vec![GrantRecord {
                vm_id: "vm".into(),
                number: 22,
                protocol: Protocol::Tcp,
                sources: SourceSpec::Single(SourcePrefix::from_ip([10, 0, 0, 1].into())),
                end_time: end,
                status,
                status_reason: StatusReason::UserRequested,
                mapped_port: None,
                public_ip: None,
            }],
            pending_extension: None,
            decision_reason: None,
        }
    }

    #[tokio::test]
    async fn a_grant_wakes_the_sweeper_only_when_it_needs_a_sweep_before_the_planned_one() {
        let wake = Wake::default();
        let now = OffsetDateTime::now_utc();
        wake.due(now + time::Duration::days(1));
        assert!(woken(&wake).await, "before the first plan every change wakes it");
        wake.planned(now, Duration::from_secs(60));
        wake.for_request(&request(GrantStatus::Initiated, now + time::Duration::hours(1)));
        assert!(!woken(&wake).await, "an hour's grant is warned of long after the planned sweep");
        wake.for_request(&request(GrantStatus::Initiated, now + time::Duration::minutes(5)));
        assert!(woken(&wake).await, "a grant whose warning is due now");
        wake.for_request(&request(GrantStatus::Pending, now + time::Duration::hours(1)));
        assert!(woken(&wake).await, "a pending or scheduled grant always wakes it");
        wake.sweeping();
        wake.for_request(&request(GrantStatus::Initiated, now + time::Duration::hours(1)));
        assert!(woken(&wake).await, "while it sweeps, a change wakes it again afterwards");
    }
}
