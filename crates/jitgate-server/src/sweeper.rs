//! The expiry sweeper: marks grants whose end time has passed as `Revoked`/`Expired`.
//!
//! It sleeps until the earliest live end time (at most a minute), or until a new grant wakes it.
//! The kernel's element timeouts close ports on their own; this keeps the record and the views
//! true, and audits each expiry. With several replicas on one store, the replica holding the
//! `sweeper` lease sweeps; the others wait to take it over.

use std::time::Duration;

use tokio::sync::watch;

use crate::replicas::Lease;
use crate::App;

/// The longest the sweeper sleeps without looking.
const MAX_SLEEP: Duration = Duration::from_secs(60);
/// How often it retries after a store failure.
const RETRY: Duration = Duration::from_secs(1);

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
        let sleep_for = match sweep_once(&app).await {
            Ok(next) => next.min(lease.every()),
            Err(e) => {
                tracing::warn!(error = %e, "expiry sweep failed; retrying");
                RETRY
            }
        };
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
        app.changed();
    }
    let Some(next) = app.store.next_expiry().await? else { return Ok(MAX_SLEEP) };
    let wait = next - app.clock.now();
    let wait = Duration::try_from(wait).unwrap_or(Duration::ZERO);
    // A millisecond past the end time, so the sweep after waking finds the grant due.
    Ok(wait.min(MAX_SLEEP) + Duration::from_millis(1))
}
