//! What an enforcement point must make true, independent of the firewall that does it.
//!
//! [`Desired`] is the state one agent should have: the ports under JIT control and the live
//! grants, each grant with its *deadline* on the agent's own monotonic clock (computed from the
//! remaining time the server sent, so clock skew between hosts never widens a window).
//! [`plan`] compares what was applied with what is desired and says how to get there: a full,
//! atomic replacement when the protected ports changed, otherwise a batch of element operations.
//! It is pure: `now` is a parameter.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;

pub mod fake;

/// The enforcement point's role: on the VM itself (host: input hook), or on a gateway in front
/// of VMs (forwarded traffic to VM addresses, with DNAT). The same type the control plane stores.
pub use jitgate_core::enforcement::AgentMode as Mode;

/// A transport protocol as the firewall sees it (`*` in a policy becomes both).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum L4 {
    Tcp,
    Udp,
}

impl L4 {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            L4::Tcp => 6,
            L4::Udp => 17,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            L4::Tcp => "tcp",
            L4::Udp => "udp",
        }
    }
}

/// A port under JIT control. `dest` is `None` in host mode (the host's own port) and the VM's
/// inner address in gateway mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Protected {
    pub dest: Option<IpAddr>,
    pub proto: L4,
    pub port: u16,
    /// Check every packet against the grants, so live sessions stop when the grant ends.
    pub cut_sessions: bool,
}

/// The identity of one allow element: from `source` to (`dest`,) `proto`/`port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GrantKey {
    pub source: IpNet,
    pub dest: Option<IpAddr>,
    pub proto: L4,
    pub port: u16,
}

impl GrantKey {
    /// Exact addresses go into the exact-address hash sets; ranges go into one hash set per prefix
    /// length, looked up with the source masked to that length (both O(1) per update, even with
    /// 100k elements).
    pub fn is_exact(&self) -> bool {
        self.source.prefix_len() == self.source.max_prefix_len()
    }

    pub fn is_v4(&self) -> bool {
        matches!(self.source, IpNet::V4(_))
    }
}

/// A DNAT mapping on a gateway: traffic from `source` to the gateway's `public_port` goes to
/// `target`:`target_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DnatKey {
    pub source: IpNet,
    pub proto: L4,
    pub public_port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DnatTarget {
    pub addr: IpAddr,
    pub port: u16,
}

/// The state one enforcement point should have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub mode: Mode,
    pub protected: BTreeSet<Protected>,
    /// Live grants and the instant each one ends.
    pub grants: BTreeMap<GrantKey, Instant>,
    pub dnat: BTreeMap<DnatKey, (DnatTarget, Instant)>,
}

impl Desired {
    pub fn empty(mode: Mode) -> Self {
        Desired { mode, protected: BTreeSet::new(), grants: BTreeMap::new(), dnat: BTreeMap::new() }
    }

    /// The same state without what has ended by `now` (the kernel drops those by itself).
    pub fn live_at(&self, now: Instant) -> Desired {
        Desired {
            mode: self.mode,
            protected: self.protected.clone(),
            grants: self.grants.iter().filter(|(_, end)| **end > now).map(|(k, v)| (*k, *v)).collect(),
            dnat: self.dnat.iter().filter(|(_, (_, end))| *end > now).map(|(k, v)| (*k, *v)).collect(),
        }
    }
}

/// One change to a set or map, with the timeout the kernel should give a new element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElemOp {
    AddGrant { key: GrantKey, timeout: Duration },
    DelGrant { key: GrantKey },
    AddDnat { key: DnatKey, target: DnatTarget, timeout: Duration },
    DelDnat { key: DnatKey },
}

/// How to go from the applied state to the desired one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Nothing to do.
    Nothing,
    /// Replace the whole table atomically with this state (first start, protected ports changed).
    Replace(Desired),
    /// Apply these element changes in one atomic batch (deletions first).
    Batch(Vec<ElemOp>),
}

/// The shortest timeout given to the kernel; shorter grants are not worth an element.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(1);

/// Compares `applied` (what the firewall holds, `None` when unknown) with `desired` at `now`.
pub fn plan(applied: Option<&Desired>, desired: &Desired, now: Instant) -> Plan {
    let desired = desired.live_at(now);
    let Some(applied) = applied else { return Plan::Replace(desired) };
    if applied.protected != desired.protected || applied.mode != desired.mode {
        return Plan::Replace(desired);
    }
    let applied = applied.live_at(now);
    let timeout = |end: Instant| end.saturating_duration_since(now).max(MIN_TIMEOUT);
    let mut dels = Vec::new();
    let mut adds = Vec::new();
    for (key, end) in &applied.grants {
        match desired.grants.get(key) {
            Some(e) if e == end => {}
            _ => dels.push(ElemOp::DelGrant { key: *key }),
        }
    }
    for (key, end) in &desired.grants {
        if applied.grants.get(key) != Some(end) {
            adds.push(ElemOp::AddGrant { key: *key, timeout: timeout(*end) });
        }
    }
    for (key, value) in &applied.dnat {
        match desired.dnat.get(key) {
            Some(v) if v == value => {}
            _ => dels.push(ElemOp::DelDnat { key: *key }),
        }
    }
    for (key, (target, end)) in &desired.dnat {
        if applied.dnat.get(key) != Some(&(*target, *end)) {
            adds.push(ElemOp::AddDnat { key: *key, target: *target, timeout: timeout(*end) });
        }
    }
    if dels.is_empty() && adds.is_empty() {
        return Plan::Nothing;
    }
    dels.extend(adds);
    Plan::Batch(dels)
}

/// Why a firewall could not be used or could not make a state true. A failed change took no
/// effect: [`Firewall::replace`] and [`Firewall::apply`] are all-or-nothing.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    /// The firewall cannot be programmed here (a tool or a permission is missing, the kernel is
    /// too old); the text says what is missing.
    #[error("{0}")]
    Unusable(String),
    /// The state or an operation cannot be expressed by this firewall; nothing was touched.
    #[error("{0}")]
    Unsupported(String),
    /// The firewall refused the change or could not be reached; nothing of it took effect.
    #[error(transparent)]
    Failed(Box<dyn std::error::Error + Send + Sync>),
}

/// What a firewall's watch saw: someone else changed what the firewall holds (an operator's
/// `nft flush ruleset`, a firewall reload, a deleted table, chain, set or element).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tampered {
    /// What was changed and by whom, for the log (e.g. "table inet jitgate deleted by nft (pid 4242)").
    pub what: String,
}

/// Told of every [`Tampered`], on the watch's own thread, as soon as the change is committed.
pub type Alarm = Arc<dyn Fn(Tampered) + Send + Sync>;

/// A firewall that can hold a [`Desired`] state. The nftables backend implements it for real;
/// tests use [`fake::FakeFirewall`].
pub trait Firewall: Send {
    /// Whether this firewall can be programmed here; `Err` says why not.
    fn usable(&self) -> Result<(), FirewallError>;
    /// Replaces everything atomically with `desired` (remaining timeouts computed from `now`).
    fn replace(&mut self, desired: &Desired, now: Instant) -> Result<(), FirewallError>;
    /// Applies element changes in one atomic batch.
    fn apply(&mut self, ops: &[ElemOp]) -> Result<(), FirewallError>;
    /// Starts watching for changes that others make to what this firewall holds: `alarm` is
    /// called after each (never for this firewall's own [`replace`](Firewall::replace) and
    /// [`apply`](Firewall::apply)), from another thread, until the firewall is dropped. A second
    /// call replaces the alarm. `Err(Unsupported)`: this firewall cannot be watched (the
    /// default); nothing then notices a table deleted under the agent until its next change.
    fn watch(&mut self, alarm: Alarm) -> Result<(), FirewallError> {
        drop(alarm);
        Err(FirewallError::Unsupported("this firewall cannot be watched for changes made by others".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(src: &str, port: u16) -> GrantKey {
        GrantKey { source: src.parse().expect("net"), dest: None, proto: L4::Tcp, port }
    }

    fn state(grants: &[(GrantKey, Instant)]) -> Desired {
        let mut d = Desired::empty(Mode::Host);
        d.protected.insert(Protected { dest: None, proto: L4::Tcp, port: 22, cut_sessions: false });
        d.grants.extend(grants.iter().copied());
        d
    }

    #[test]
    fn the_first_apply_replaces_everything() {
        let now = Instant::now();
        let d = state(&[(key("10.0.0.1/32", 22), now + Duration::from_secs(60))]);
        assert_eq!(plan(None, &d, now), Plan::Replace(d.clone()));
    }

    #[test]
    fn changed_protected_ports_replace_the_table() {
        let now = Instant::now();
        let a = state(&[]);
        let mut d = a.clone();
        d.protected.insert(Protected { dest: None, proto: L4::Udp, port: 53, cut_sessions: false });
        assert!(matches!(plan(Some(&a), &d, now), Plan::Replace(_)));
        assert_eq!(plan(Some(&a), &a, now), Plan::Nothing);
    }

    #[test]
    fn grants_become_element_batches_with_remaining_timeouts() {
        let now = Instant::now();
        let (k1, k2) = (key("10.0.0.1/32", 22), key("10.0.0.0/24", 22));
        let a = state(&[(k1, now + Duration::from_secs(60))]);
        let d = state(&[(k1, now + Duration::from_secs(60)), (k2, now + Duration::from_secs(30))]);
        assert_eq!(
            plan(Some(&a), &d, now),
            Plan::Batch(vec![ElemOp::AddGrant { key: k2, timeout: Duration::from_secs(30) }])
        );
        // A newer grant for the same key: delete and add in one batch, deletions first.
        let newer = state(&[(k1, now + Duration::from_secs(90))]);
        assert_eq!(
            plan(Some(&a), &newer, now),
            Plan::Batch(vec![
                ElemOp::DelGrant { key: k1 },
                ElemOp::AddGrant { key: k1, timeout: Duration::from_secs(90) }
            ])
        );
        // A revoke: delete.
        assert_eq!(plan(Some(&a), &state(&[]), now), Plan::Batch(vec![ElemOp::DelGrant { key: k1 }]));
    }

    #[test]
    fn what_has_ended_is_left_to_the_kernel() {
        let now = Instant::now();
        let k = key("10.0.0.1/32", 22);
        let a = state(&[(k, now + Duration::from_secs(1))]);
        let later = now + Duration::from_secs(2);
        assert_eq!(plan(Some(&a), &state(&[]), later), Plan::Nothing, "no delete of an expired element");
        assert_eq!(plan(Some(&a), &a, later), Plan::Nothing, "no re-add of an expired grant");
    }

    #[test]
    fn exact_addresses_and_ranges_are_told_apart() {
        assert!(key("10.0.0.1/32", 22).is_exact());
        assert!(!key("10.0.0.0/24", 22).is_exact());
        assert!(key("2001:db8::1/128", 22).is_exact());
        assert!(!key("::/0", 22).is_exact());
    }
}
