//! Several servers on one store: what another replica's change means here, and the leases
//! that keep each background task (the expiry sweep, audit retention) on one replica at a time.
//!
//! A store only one server writes (SQLite: the data directory's lock) sends no signals and
//! grants every lease to that server; the same code then runs as it would alone.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};

use jitgate_store::Signal;

use crate::App;

/// How long a lease lasts without renewal, unless configured otherwise: a replica that dies
/// hands its tasks on within this time (the kernel closes ports on time meanwhile; the sweep
/// brings the records up to date when it resumes).
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(15);

/// A name for this server among the replicas: host, process and a random part (a restarted
/// process is a new holder).
pub fn replica_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host = host.trim();
    format!("{}-{}-{:08x}", if host.is_empty() { "jitgate" } else { host }, std::process::id(), rand::random::<u32>())
}

/// Hears what other replicas' changes mean and wakes what waits here, until `stop`.
pub async fn listen(app: App, mut stop: watch::Receiver<bool>) {
    let (tx, mut rx) = mpsc::channel(256);
    let store = app.store.clone();
    let listener = tokio::spawn(async move { store.listen(tx).await });
    loop {
        tokio::select! {
            signal = rx.recv() => match signal {
                Some(signal) => wake(&app, signal),
                None => break,
            },
            _ = stop.changed() => break,
        }
    }
    drop(rx);
    let _ = listener.await;
}

/// What one signal wakes.
pub fn wake(app: &App, signal: Signal) {
    match signal {
        Signal::Changed(_) => {
            app.portal_inventory.changed();
            app.changes.send_modify(|v| *v = v.wrapping_add(1));
            app.sweeper.notify_one();
            app.deliveries.notify_one();
        }
        Signal::Applied => app.applied.notify_waiters(),
        Signal::Deliveries => app.deliveries.notify_one(),
        Signal::Roles => app.authz.invalidate(),
        Signal::Resync => {
            app.portal_inventory.changed();
            app.authz.invalidate();
            app.changes.send_modify(|v| *v = v.wrapping_add(1));
            app.applied.notify_waiters();
            app.sweeper.notify_one();
            app.deliveries.notify_one();
        }
    }
}

/// One background task's lease, held by this replica while it renews it.
pub struct Lease {
    name: &'static str,
    ttl: time::Duration,
    /// Until when this replica holds it (Unix nanoseconds; 0: not held).
    held_until: AtomicI64,
}

impl Lease {
    pub fn new(name: &'static str, ttl: Duration) -> Self {
        let ttl = time::Duration::try_from(ttl).unwrap_or(time::Duration::seconds(15));
        Lease { name, ttl, held_until: AtomicI64::new(0) }
    }

    /// How often a holder renews, and a waiting replica tries: a third of the lease.
    pub fn every(&self) -> Duration {
        Duration::try_from(self.ttl / 3).unwrap_or(Duration::from_secs(5)).max(Duration::from_millis(10))
    }

    /// Whether this replica holds the lease now: renewed when a third of it has gone by, taken
    /// when it is free or has run out. A store failure counts as not holding it.
    pub async fn hold(&self, app: &App) -> bool {
        let now = app.clock.now();
        let held_until = self.held_until.load(Ordering::Relaxed);
        if held_until > 0 && nanos(now + self.ttl * 2 / 3) < held_until {
            return true;
        }
        let until = now + self.ttl;
        match app.store.try_lease(self.name, &app.replica, now, until).await {
            Ok(true) => {
                if held_until <= nanos(now) {
                    tracing::info!(lease = self.name, replica = %app.replica, "this replica runs the task now");
                }
                self.held_until.store(nanos(until), Ordering::Relaxed);
                true
            }
            Ok(false) => {
                self.held_until.store(0, Ordering::Relaxed);
                false
            }
            Err(e) => {
                tracing::warn!(lease = self.name, error = %e, "could not renew the lease");
                self.held_until.store(0, Ordering::Relaxed);
                false
            }
        }
    }

    /// Gives the lease up (at shutdown), so another replica takes the task at once.
    pub async fn release(&self, app: &App) {
        if self.held_until.swap(0, Ordering::Relaxed) > 0 {
            if let Err(e) = app.store.release_lease(self.name, &app.replica).await {
                tracing::warn!(lease = self.name, error = %e, "could not release the lease");
            }
        }
    }
}

fn nanos(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos()).unwrap_or(i64::MAX)
}
