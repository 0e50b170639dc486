//! The agent's side of the firewall: what it applied last, how a new state gets there (a plan,
//! one batch, a replacement when the batch fails), and how the table is put back when someone
//! else changes it (an operator's `nft flush ruleset`, a firewall reload): the firewall's watch
//! rings, and the last applied state is replaced in whole, each grant with the time it has left.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Notify;

use jitgate_enforce::{plan, Desired, ElemOp, Firewall, FirewallError, Plan, Tampered};

use crate::prom::{AgentMetrics, ApplyKind};
use crate::{convert, now};

/// The firewall's alarm as a wake-up for the agent's loop. Alarms that ring while the loop is
/// busy are folded into one wake-up (one replacement puts back any number of changes).
struct Tamper {
    watching: bool,
    notify: Arc<Notify>,
    last: Arc<Mutex<Option<Tampered>>>,
}

impl Tamper {
    fn start<F: Firewall>(firewall: &mut F) -> Tamper {
        let notify = Arc::new(Notify::new());
        let last: Arc<Mutex<Option<Tampered>>> = Arc::default();
        let (n, l) = (notify.clone(), last.clone());
        let alarm = Arc::new(move |t: Tampered| {
            *l.lock().unwrap_or_else(|p| p.into_inner()) = Some(t);
            n.notify_one();
        });
        let watching = match firewall.watch(alarm) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "not watching the firewall: a table deleted by someone else is put back only with the next change");
                false
            }
        };
        Tamper { watching, notify, last }
    }

    /// Waits for the next alarm (forever when nothing is watched).
    async fn rung(&self) -> Tampered {
        if !self.watching {
            return std::future::pending().await;
        }
        self.notify.notified().await;
        self.last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_else(|| Tampered { what: "a change by someone else".into() })
    }
}

/// The firewall, what was applied to it, and its watch.
pub(crate) struct Enforcer<F> {
    firewall: F,
    /// What the firewall holds as far as the agent knows; `None`: unknown (the next change
    /// replaces the whole table).
    pub applied: Option<Desired>,
    metrics: Arc<AgentMetrics>,
    tamper: Tamper,
}

impl<F: Firewall> Enforcer<F> {
    /// Takes the firewall and, when `usable`, starts watching it.
    pub fn new(mut firewall: F, metrics: Arc<AgentMetrics>, usable: bool) -> Self {
        let tamper = if usable {
            Tamper::start(&mut firewall)
        } else {
            Tamper { watching: false, notify: Arc::default(), last: Arc::default() }
        };
        Enforcer { firewall, applied: None, metrics, tamper }
    }

    /// Replaces the whole table with `desired` at `at`, counted and timed.
    fn replace(&mut self, desired: &Desired, at: Instant) -> Result<(), FirewallError> {
        let started = Instant::now();
        let result = self.firewall.replace(desired, at);
        self.metrics.applied(ApplyKind::Replace, result.is_ok(), started);
        result
    }

    /// Restores a state read back from the agent's own file (before the server answers).
    pub fn restore(&mut self, desired: Desired) -> Result<(), FirewallError> {
        self.metrics.reconciled();
        let result = self.replace(&desired, now());
        if result.is_ok() {
            self.applied = Some(desired);
        }
        self.count_table();
        result
    }

    /// Makes `desired` (from the server's answer of `revision`) true: nothing, one batch, or a
    /// replacement (also when the batch fails). On failure nothing is known about the table.
    pub fn reconcile(&mut self, mut desired: Desired, revision: u64) -> Result<(), FirewallError> {
        if let Some(applied) = &self.applied {
            convert::keep_applied_ends(&mut desired, applied);
        }
        let at = now();
        self.metrics.reconciled();
        let result = match plan(self.applied.as_ref(), &desired, at) {
            Plan::Nothing => Ok(()),
            Plan::Replace(d) => self.replace(&d, at).map(|()| log_replaced(revision, &d, at)),
            Plan::Batch(ops) => {
                let started = Instant::now();
                let batch = self.firewall.apply(&ops);
                self.metrics.applied(ApplyKind::Batch, batch.is_ok(), started);
                match batch {
                    Ok(()) => {
                        log_ops(revision, &ops);
                        Ok(())
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "batch failed; replacing the table instead");
                        let at = now();
                        self.replace(&desired, at).map(|()| log_replaced(revision, &desired, at))
                    }
                }
            }
        };
        self.applied = match result {
            Ok(()) => Some(desired),
            Err(_) => None,
        };
        self.count_table();
        result
    }

    /// Waits until someone else changes the firewall.
    pub async fn tampered(&self) -> Tampered {
        self.tamper.rung().await
    }

    /// Puts the last applied state back after someone else changed the firewall: the whole
    /// table replaced, each grant with the time it has left (its deadline is kept, so the
    /// restore never lengthens a window). `false` when that failed: nothing is then known about
    /// the table, and the caller asks the server for the whole state again.
    pub fn put_back(&mut self, what: &Tampered) -> bool {
        let Some(desired) = self.applied.take() else {
            tracing::warn!(change = %what.what, "the firewall was changed by someone else; nothing applied yet to put back");
            return true;
        };
        let at = now();
        let started = Instant::now();
        let result = self.replace(&desired, at);
        self.metrics.restored(result.is_ok());
        let ok = match &result {
            Ok(()) => {
                let live = desired.live_at(at);
                tracing::warn!(
                    change = %what.what,
                    protected = live.protected.len(),
                    grants = live.grants.len(),
                    took_ms = started.elapsed().as_secs_f64() * 1000.0,
                    "the firewall was changed by someone else; put the applied state back, each grant with its remaining time"
                );
                self.applied = Some(desired);
                true
            }
            Err(e) => {
                tracing::error!(change = %what.what, error = %e, "the firewall was changed by someone else and could not be put back");
                false
            }
        };
        self.count_table();
        ok
    }

    /// The element gauges from what is applied now.
    pub fn count_table(&self) {
        self.metrics.table(self.applied.as_ref(), now());
    }
}

/// One log line per grant the agent opened or closed (a port's own expiry is the kernel's and
/// is not seen here).
fn log_ops(revision: u64, ops: &[ElemOp]) {
    for op in ops {
        match op {
            ElemOp::AddGrant { key, timeout } => tracing::info!(
                revision,
                source = %key.source,
                port = key.port,
                proto = ?key.proto,
                dest = ?key.dest,
                closes_in_ms = timeout.as_millis() as u64,
                "opened"
            ),
            ElemOp::DelGrant { key } => {
                tracing::info!(revision, source = %key.source, port = key.port, proto = ?key.proto, dest = ?key.dest, "closed")
            }
            ElemOp::AddDnat { key, target, timeout } => tracing::info!(
                revision,
                source = %key.source,
                public_port = key.public_port,
                to = %format!("{}:{}", target.addr, target.port),
                closes_in_ms = timeout.as_millis() as u64,
                "mapped"
            ),
            ElemOp::DelDnat { key } => {
                tracing::info!(revision, source = %key.source, public_port = key.public_port, "unmapped")
            }
        }
    }
}

/// The log line of a whole-table replace: what is protected and open now.
fn log_replaced(revision: u64, d: &Desired, at: Instant) {
    tracing::info!(revision, protected = d.protected.len(), grants = d.grants.len(), "applied the whole table");
    for (key, end) in &d.grants {
        tracing::info!(
            revision,
            source = %key.source,
            port = key.port,
            proto = ?key.proto,
            dest = ?key.dest,
            closes_in_ms = end.saturating_duration_since(at).as_millis() as u64,
            "open"
        );
    }
}
