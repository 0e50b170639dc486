//! The facts the JIT page and the inventory views of `GET /api/v1/vms` place VMs with — every VM
//! with its enforcement point, the keys of the VMs a policy names, the scopes where a security
//! policy disables JIT — read together, placed in their views once, and kept while no VM, policy,
//! agent or security policy changes ([`Cache::changed`]; grants do not count): pages reuse them
//! instead of reading 10,000 VMs again. A snapshot older than [`FRESH_FOR`] has its agents read
//! again in the background: what agents report (staleness, nftables usable) changes no
//! generation, and shows within about [`FRESH_FOR`] plus one read.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jitgate_core::inventory::{classify, View, VmFacts};
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
    /// In the order of their keys.
    pub vms: Vec<Vm>,
    /// The key of each VM of `vms` (sorted).
    pub keys: Vec<String>,
    /// The view each VM of `vms` is in.
    pub views: Vec<View>,
    pub configured: HashSet<String>,
    /// Scopes where a security policy disables JIT.
    pub disabled: Vec<String>,
}

/// The view of a VM (which depends on whether its agent can program nftables, not on staleness).
fn view_of(app: &App, vm: &Vm, configured: bool, disabled: &[String]) -> View {
    let gap = crate::api::gap_of(app, vm);
    let facts =
        VmFacts { id: vm.spec.id.as_str(), classic: vm.spec.classic, configured, enforcement_gap: gap.as_deref() };
    classify(&facts, disabled).0
}

/// The last snapshot, and at most one load at a time.
#[derive(Debug, Default)]
pub struct Cache {
    last: Mutex<Option<Arc<Snapshot>>>,
    loading: tokio::sync::Mutex<()>,
    refreshing: AtomicBool,
    /// Counts the changes that can move a VM between views (VMs, policies, agents joining or
    /// leaving, security policies; any change on another replica): a snapshot serves pages
    /// while it stays the same. Grants (initiates, approvals, expiries) do not count: under a
    /// stream of initiates the pages keep their snapshot.
    generation: AtomicU64,
}

impl Cache {
    /// A snapshot taken at the current revision. One older than [`FRESH_FOR`] is still served
    /// while a fresh one is read in the background (what it can lack is only what agents'
    /// reports change), so no page waits for 10,000 VMs to be read unless the revision moved:
    /// then the page waits, and sees the change it may just have made.
    pub async fn get(&self, app: &App) -> Result<Arc<Snapshot>, ApiError> {
        let revision = self.generation.load(Ordering::Acquire);
        if let Some(s) = self.at(revision) {
            if s.taken.elapsed() >= FRESH_FOR && !self.refreshing.swap(true, Ordering::AcqRel) {
                let app = app.clone();
                let base = s.clone();
                tokio::spawn(async move {
                    let cache = app.portal_inventory.clone();
                    let _ = cache.refresh(&app, &base).await;
                    cache.refreshing.store(false, Ordering::Release);
                });
            }
            return Ok(s);
        }
        let _one_load = self.loading.lock().await;
        // Whoever held the lock may have read this revision meanwhile.
        if let Some(s) = self.at(revision) {
            return Ok(s);
        }
        self.load(app, revision).await
    }

    /// The last snapshot, if it was taken at `revision`.
    fn at(&self, revision: u64) -> Option<Arc<Snapshot>> {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone().filter(|s| s.revision == revision)
    }

    async fn load(&self, app: &App, revision: u64) -> Result<Arc<Snapshot>, ApiError> {
        let taken = Instant::now();
        let mut vms = app.store.list_vms().await?;
        let configured = app.store.configured_vm_keys().await?;
        let disabled: Vec<String> =
            app.store.list_security_policies().await?.into_iter().filter(|p| !p.jit_enabled).map(|p| p.scope).collect();
        let mut keys: Vec<String> = vms.iter().map(|v| v.spec.id.key()).collect();
        if !keys.is_sorted() {
            let mut both: Vec<(String, Vm)> = keys.into_iter().zip(vms).collect();
            both.sort_by(|a, b| a.0.cmp(&b.0));
            (keys, vms) = both.into_iter().unzip();
        }
        let views = vms.iter().zip(&keys).map(|(vm, k)| view_of(app, vm, configured.contains(k), &disabled)).collect();
        let snapshot = Arc::new(Snapshot { revision, taken, vms, keys, views, configured, disabled });
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        // A background refresh that finished after a newer load leaves the newer one.
        if last.as_ref().is_none_or(|l| l.revision <= revision) {
            *last = Some(snapshot.clone());
        }
        Ok(snapshot)
    }

    /// The snapshot `base` with its agents read again: what changes without a new generation is
    /// only what agents report (last seen, nftables usable), so the VMs, policies and scopes are
    /// kept and only the agents are read (one read of the agents instead of every VM).
    async fn refresh(&self, app: &App, base: &Snapshot) -> Result<(), ApiError> {
        let taken = Instant::now();
        let agents: std::collections::HashMap<String, jitgate_store::AgentRecord> =
            app.store.list_agents().await?.into_iter().map(|a| (a.id.clone(), a)).collect();
        let vms: Vec<Vm> = base
            .vms
            .iter()
            .map(|vm| {
                let mut vm = vm.clone();
                if let Some(a) = &vm.agent {
                    vm.agent = agents.get(&a.id).cloned();
                }
                vm
            })
            .collect();
        let views = vms
            .iter()
            .zip(&base.keys)
            .map(|(vm, k)| view_of(app, vm, base.configured.contains(k), &base.disabled))
            .collect();
        let snapshot = Arc::new(Snapshot {
            revision: base.revision,
            taken,
            vms,
            keys: base.keys.clone(),
            views,
            configured: base.configured.clone(),
            disabled: base.disabled.clone(),
        });
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.as_ref().is_none_or(|l| l.revision <= base.revision) {
            *last = Some(snapshot);
        }
        Ok(())
    }

    /// Says that VMs, policies, agents or security policies changed (after the change is
    /// committed): the next page reads a new snapshot, and sees the change.
    pub fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Forgets the snapshot (a change that does not bump the revision, such as a security policy).
    pub fn clear(&self) {
        self.changed();
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}
