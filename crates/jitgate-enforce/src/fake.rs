//! An in-memory [`Firewall`] for tests, with the kernel's behaviour that matters to an agent:
//! every change is all-or-nothing, and grant and DNAT elements time out on their own — on a
//! clock the test controls.
//!
//! The firewall is moved into the code under test; a [`FakeHandle`] (from
//! [`FakeFirewall::handle`]) stays with the test to look at the table, count the changes and
//! make the next ones fail, or to play an operator who flushes the ruleset under the agent
//! ([`FakeHandle::flush`]: the table is gone and the watch's alarm rings, as nftables' would).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::{
    Alarm, Desired, DnatKey, DnatTarget, ElemOp, Firewall, FirewallError, GrantKey, Mode, Protected, Tampered,
};

/// The clock the elements' timeouts run on.
pub type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// The table as the fake kernel holds it: each element with the instant it times out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeTable {
    pub mode: Mode,
    pub protected: BTreeSet<Protected>,
    pub grants: BTreeMap<GrantKey, Instant>,
    pub dnat: BTreeMap<DnatKey, (DnatTarget, Instant)>,
}

#[derive(Default)]
struct Inner {
    table: Option<FakeTable>,
    alarm: Option<Alarm>,
    unusable: Option<String>,
    fail_replaces: usize,
    fail_applies: usize,
    replaces: usize,
    applies: usize,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("table", &self.table)
            .field("watched", &self.alarm.is_some())
            .field("unusable", &self.unusable)
            .field("fail_replaces", &self.fail_replaces)
            .field("fail_applies", &self.fail_applies)
            .field("replaces", &self.replaces)
            .field("applies", &self.applies)
            .finish()
    }
}

/// A [`Firewall`] that keeps its table in memory. Clones share the table, as two handles on
/// one kernel would.
#[derive(Clone)]
pub struct FakeFirewall {
    clock: Clock,
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for FakeFirewall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeFirewall").field("inner", &self.inner).finish_non_exhaustive()
    }
}

/// The test's view of a [`FakeFirewall`] that has been moved away.
#[derive(Debug, Clone)]
pub struct FakeHandle(FakeFirewall);

impl FakeFirewall {
    /// An empty firewall (no table) whose timeouts run on `clock`.
    pub fn new(clock: impl Fn() -> Instant + Send + Sync + 'static) -> Self {
        FakeFirewall { clock: Arc::new(clock), inner: Arc::default() }
    }

    pub fn handle(&self) -> FakeHandle {
        FakeHandle(self.clone())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl FakeHandle {
    /// The table now, without the elements that have timed out.
    pub fn table(&self) -> Option<FakeTable> {
        let now = (self.0.clock)();
        self.0.lock().table.as_ref().map(|t| live(t, now))
    }

    /// Whether a grant for `key` is in the table and has not timed out.
    pub fn allows(&self, key: &GrantKey) -> bool {
        self.table().is_some_and(|t| t.grants.contains_key(key))
    }

    /// The time left of the grant for `key`, if it is live.
    pub fn remaining(&self, key: &GrantKey) -> Option<Duration> {
        let now = (self.0.clock)();
        self.table().and_then(|t| t.grants.get(key).map(|end| end.saturating_duration_since(now)))
    }

    /// How many replacements and batches have succeeded so far.
    pub fn counts(&self) -> (usize, usize) {
        let inner = self.0.lock();
        (inner.replaces, inner.applies)
    }

    /// From now on [`Firewall::usable`] says `why` (and every change fails with it).
    pub fn make_unusable(&self, why: &str) {
        self.0.lock().unusable = Some(why.to_owned());
    }

    /// The next `n` replacements fail, changing nothing.
    pub fn fail_replaces(&self, n: usize) {
        self.0.lock().fail_replaces = n;
    }

    /// The next `n` batches fail, changing nothing.
    pub fn fail_applies(&self, n: usize) {
        self.0.lock().fail_applies = n;
    }

    /// Someone else deletes the table (`nft flush ruleset`): it is gone, and the watch's alarm
    /// rings (on this thread) if anyone watches. Returns whether someone did.
    pub fn flush(&self) -> bool {
        let alarm = {
            let mut inner = self.0.lock();
            inner.table = None;
            inner.alarm.clone()
        };
        match alarm {
            Some(alarm) => {
                alarm(Tampered { what: "table deleted by the test (a flush)".into() });
                true
            }
            None => false,
        }
    }

    /// Whether [`Firewall::watch`] was called.
    pub fn watched(&self) -> bool {
        self.0.lock().alarm.is_some()
    }
}

fn live(t: &FakeTable, now: Instant) -> FakeTable {
    FakeTable {
        mode: t.mode,
        protected: t.protected.clone(),
        grants: t.grants.iter().filter(|(_, end)| **end > now).map(|(k, v)| (*k, *v)).collect(),
        dnat: t.dnat.iter().filter(|(_, (_, end))| *end > now).map(|(k, v)| (*k, *v)).collect(),
    }
}

fn refused(what: &str) -> FirewallError {
    FirewallError::Failed(format!("the fake firewall refused {what}").into())
}

impl Firewall for FakeFirewall {
    fn usable(&self) -> Result<(), FirewallError> {
        match &self.lock().unusable {
            Some(why) => Err(FirewallError::Unusable(why.clone())),
            None => Ok(()),
        }
    }

    /// Like `nft -f`: each element gets the time left at `now` as its timeout, counted from
    /// the fake kernel's clock; what has no time left is not added.
    fn replace(&mut self, desired: &Desired, now: Instant) -> Result<(), FirewallError> {
        let kernel_now = (self.clock)();
        let mut inner = self.lock();
        if let Some(why) = &inner.unusable {
            return Err(FirewallError::Unusable(why.clone()));
        }
        if inner.fail_replaces > 0 {
            inner.fail_replaces -= 1;
            return Err(refused("the replacement"));
        }
        let left = |end: Instant| Some(end.saturating_duration_since(now)).filter(|d| !d.is_zero());
        let table = FakeTable {
            mode: desired.mode,
            protected: desired.protected.clone(),
            grants: desired.grants.iter().filter_map(|(k, end)| Some((*k, kernel_now + left(*end)?))).collect(),
            dnat: desired
                .dnat
                .iter()
                .filter_map(|(k, (target, end))| Some((*k, (*target, kernel_now + left(*end)?))))
                .collect(),
        };
        inner.table = Some(table);
        inner.replaces += 1;
        Ok(())
    }

    /// Like one netlink batch: all operations or none; an add sets the element's timeout,
    /// deleting an element that is not there (it timed out) is not an error.
    fn apply(&mut self, ops: &[ElemOp]) -> Result<(), FirewallError> {
        let kernel_now = (self.clock)();
        let mut inner = self.lock();
        if let Some(why) = &inner.unusable {
            return Err(FirewallError::Unusable(why.clone()));
        }
        if inner.fail_applies > 0 {
            inner.fail_applies -= 1;
            return Err(refused("the batch"));
        }
        let Some(table) = inner.table.as_ref() else { return Err(refused("a batch without a table")) };
        let mut next = live(table, kernel_now);
        for op in ops {
            match op {
                ElemOp::AddGrant { key, timeout } => {
                    next.grants.insert(*key, kernel_now + *timeout);
                }
                ElemOp::DelGrant { key } => {
                    next.grants.remove(key);
                }
                ElemOp::AddDnat { key, target, timeout } => {
                    next.dnat.insert(*key, (*target, kernel_now + *timeout));
                }
                ElemOp::DelDnat { key } => {
                    next.dnat.remove(key);
                }
            }
        }
        inner.table = Some(next);
        inner.applies += 1;
        Ok(())
    }

    /// Rings on [`FakeHandle::flush`].
    fn watch(&mut self, alarm: Alarm) -> Result<(), FirewallError> {
        self.lock().alarm = Some(alarm);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{plan, Plan, L4};

    struct Clocked {
        now: Arc<Mutex<Instant>>,
    }

    impl Clocked {
        fn new() -> Self {
            Clocked { now: Arc::new(Mutex::new(Instant::now())) }
        }
        fn clock(&self) -> impl Fn() -> Instant + Send + Sync + 'static {
            let now = self.now.clone();
            move || *now.lock().expect("clock")
        }
        fn now(&self) -> Instant {
            *self.now.lock().expect("clock")
        }
        fn advance(&self, by: Duration) {
            *self.now.lock().expect("clock") += by;
        }
    }

    fn key(src: &str) -> GrantKey {
        GrantKey { source: src.parse().expect("net"), dest: None, proto: L4::Tcp, port: 22 }
    }

    fn desired(grants: &[(GrantKey, Instant)]) -> Desired {
        let mut d = Desired::empty(Mode::Host);
        d.protected.insert(Protected { dest: None, proto: L4::Tcp, port: 22, cut_sessions: false });
        d.grants.extend(grants.iter().copied());
        d
    }

    #[test]
    fn elements_time_out_on_the_fake_clock() {
        let c = Clocked::new();
        let mut fw = FakeFirewall::new(c.clock());
        let h = fw.handle();
        let now = c.now();
        let (a, b) = (key("10.0.0.1/32"), key("10.0.0.2/32"));
        fw.replace(&desired(&[(a, now + Duration::from_secs(60)), (b, now)]), now).expect("replace");
        assert!(h.allows(&a));
        assert!(!h.allows(&b), "no time left: not added");
        c.advance(Duration::from_secs(59));
        assert_eq!(h.remaining(&a), Some(Duration::from_secs(1)));
        c.advance(Duration::from_secs(1));
        assert!(!h.allows(&a), "timed out");
        assert_eq!(h.counts(), (1, 0));
    }

    #[test]
    fn batches_are_all_or_nothing_and_deleting_a_timed_out_element_is_fine() {
        let c = Clocked::new();
        let mut fw = FakeFirewall::new(c.clock());
        let h = fw.handle();
        let a = key("10.0.0.1/32");
        assert!(fw.apply(&[ElemOp::AddGrant { key: a, timeout: Duration::from_secs(5) }]).is_err(), "no table yet");
        let now = c.now();
        let applied = desired(&[]);
        fw.replace(&applied, now).expect("replace");
        let wanted = desired(&[(a, now + Duration::from_secs(5))]);
        let Plan::Batch(ops) = plan(Some(&applied), &wanted, now) else { panic!("a batch") };
        h.fail_applies(1);
        assert!(matches!(fw.apply(&ops), Err(FirewallError::Failed(_))));
        assert!(!h.allows(&a), "the failed batch changed nothing");
        fw.apply(&ops).expect("apply");
        assert_eq!(h.remaining(&a), Some(Duration::from_secs(5)));
        c.advance(Duration::from_secs(6));
        fw.apply(&[ElemOp::DelGrant { key: a }]).expect("deleting what timed out");
        assert_eq!(h.counts(), (1, 2));
    }

    #[test]
    fn an_unusable_firewall_says_why_and_changes_nothing() {
        let c = Clocked::new();
        let mut fw = FakeFirewall::new(c.clock());
        fw.handle().make_unusable("no nft here");
        assert_eq!(fw.usable().map_err(|e| e.to_string()), Err("no nft here".to_owned()));
        assert!(matches!(fw.replace(&desired(&[]), c.now()), Err(FirewallError::Unusable(_))));
        assert_eq!(fw.handle().table(), None);
    }
}
