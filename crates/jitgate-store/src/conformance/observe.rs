//! What the server's metrics read from a store: the live grants, the outbox's depth, and the
//! commits its writer reports.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::*;
use crate::observe::CommitObserver;

/// Sums what the writer reports.
#[derive(Default)]
struct Seen {
    commits: AtomicUsize,
    changes: AtomicUsize,
    audit_records: AtomicUsize,
}

impl CommitObserver for Seen {
    fn committed(&self, changes: usize, audit_records: usize, _latency: std::time::Duration) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.changes.fetch_add(changes, Ordering::Relaxed);
        self.audit_records.fetch_add(audit_records, Ordering::Relaxed);
    }
}

impl Seen {
    fn get(&self) -> (usize, usize, usize) {
        let l = |a: &AtomicUsize| a.load(Ordering::Relaxed);
        (l(&self.commits), l(&self.changes), l(&self.audit_records))
    }
}

/// Live grants count what is open at the instant asked about; pending deliveries count the
/// outbox until a delivery succeeds; every change is reported to the commit observer with the
/// audit records it appended, a refusal included (its `Failed` record).
pub(super) async fn gauges_and_observed_commits(store: &dyn Store) {
    let seen = Arc::new(Seen::default());
    store.observe_commits(seen.clone());
    let before = seen.get();
    register(store, "gauges", "vm1", OsType::Linux).await;
    let after = seen.get();
    assert_eq!((after.0 - before.0, after.1 - before.1, after.2 - before.2), (1, 1, 1), "one change, one record");
    let r = policy_ref("gauges", "westeurope", "default");
    put(store, &r, one_vm_policy("gauges", "vm1", Some(vec![ssh_port()]))).await.expect("policy");
    let vm = vm_id("gauges", "vm1");
    // A refusal is a change kept with its Failed record.
    let before = seen.get();
    let mut outside = initiate_cmd(&r, &vm, "203.0.113.50", 30, None);
    outside.draft.vms[0].ports[0].number = Some(2222);
    assert!(matches!(store.initiate(outside, audit("init")).await, Err(StoreError::Rejected(_))));
    let after = seen.get();
    assert_eq!((after.1 - before.1, after.2 - before.2), (1, 1), "the refusal and its record");

    store.create_webhook(super::audit_hooks::webhook("gauges", Some(SUB), None), audit("hook")).await.expect("hook");
    let end = now() + Duration::minutes(30);
    let (live, late, pending) = (
        store.live_grants(now()).await.expect("live"),
        store.live_grants(end).await.expect("live at the end"),
        store.pending_deliveries().await.expect("pending"),
    );
    let first = store.initiate(initiate_cmd(&r, &vm, "203.0.113.50", 30, None), audit("init")).await.expect("one");
    store.initiate(initiate_cmd(&r, &vm, "203.0.113.51", 30, None), audit("init")).await.expect("two");
    assert_eq!(store.live_grants(now()).await.expect("live"), live + 2);
    assert_eq!(store.live_grants(end).await.expect("live"), late, "a grant that has ended is not live");
    // Each request is requested + opened for the one webhook that hears the subscription.
    assert_eq!(store.pending_deliveries().await.expect("pending"), pending + 4);
    store.revoke_request(first.request.id, "tester", audit("revoke")).await.expect("revoke");
    assert_eq!(store.live_grants(now()).await.expect("live"), live + 1);

    // Claimed deliveries are still waiting until an attempt succeeds.
    let lease = now() + Duration::seconds(60);
    let claimed = store.claim_deliveries(now(), lease, 100).await.expect("claim");
    let queued = store.pending_deliveries().await.expect("pending");
    assert_eq!(queued, pending + 4 + 1, "the revoke's event too, claimed or not");
    for d in claimed.iter().filter(|d| d.webhook_id == "gauges").take(2) {
        store.delivery_attempted(d.id, true, None, None, now()).await.expect("delivered");
    }
    assert_eq!(store.pending_deliveries().await.expect("pending"), queued - 2);
    store.delete_webhook("gauges", audit("unhook")).await.expect("delete");
    assert_eq!(store.pending_deliveries().await.expect("pending"), pending, "its waiting deliveries go with it");
}
