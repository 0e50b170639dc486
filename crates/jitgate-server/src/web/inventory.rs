//! The facts the JIT page places VMs with — every VM with its enforcement point, the keys of the
//! VMs a policy names, the scopes where a security policy disables JIT — read together and kept
//! for a moment: while the enforcement revision (bumped by every VM, policy, grant and agent-join
//! change) stays the same, for at most [`FRESH_FOR`], pages reuse them instead of reading 10,000
//! VMs again. Agents' reports do not bump the revision: what they change (staleness, nftables
//! usable) shows within [`FRESH_FOR`].

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jitgate_store::Vm;

use crate::error::ApiError;
use crate::App;

/// How long a snapshot serves pages at most.
pub const FRESH_FOR: Duration = Duration::from_secs(2);

/// What placing VMs in their tabs reads.
#[derive(Debug)]
pub struct Snapshot {
    pub revision: u64,
    pub taken: Instant,
    pub vms: Vec<Vm>,
    pub configured: HashSet<String>,
    /// Scopes where a security policy disables JIT.
    pub disabled: Vec<String>,
}

/// The last snapshot.
#[derive(Debug, Default)]
pub struct Cache {
    last: Mutex<Option<Arc<Snapshot>>>,
}

impl Cache {
    /// A snapshot no older than [`FRESH_FOR`] and taken at the current revision.
    pub async fn get(&self, app: &App) -> Result<Arc<Snapshot>, ApiError> {
        let revision = app.store.revision().await?;
        let cached = self.last.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(s) = cached.filter(|s| s.revision == revision && s.taken.elapsed() < FRESH_FOR) {
            return Ok(s);
        }
        let taken = Instant::now();
        let vms = app.store.list_vms().await?;
        let configured = app.store.configured_vm_keys().await?;
        let disabled =
            app.store.list_security_policies().await?.into_iter().filter(|p| !p.jit_enabled).map(|p| p.scope).collect();
        let snapshot = Arc::new(Snapshot { revision, taken, vms, configured, disabled });
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(snapshot.clone());
        Ok(snapshot)
    }

    /// Forgets the snapshot (a change that does not bump the revision, such as a security policy).
    pub fn clear(&self) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}
