//! Audit events and the hash chain that makes the log tamper-evident.
//!
//! Each stored record carries `hash = SHA-256(prev_hash || seq || canonical(record))`; changing,
//! deleting or reordering any record breaks every hash after it.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};
use time::OffsetDateTime;

/// Operation names, in the form of Azure's Activity Log.
pub mod ops {
    pub const POLICY_WRITE: &str = "Microsoft.Security/locations/jitNetworkAccessPolicies/write";
    pub const POLICY_DELETE: &str = "Microsoft.Security/locations/jitNetworkAccessPolicies/delete";
    pub const POLICY_READ: &str = "Microsoft.Security/locations/jitNetworkAccessPolicies/read";
    pub const POLICY_INITIATE: &str = "Microsoft.Security/locations/jitNetworkAccessPolicies/initiate/action";
    pub const GRANT_OPEN: &str = "Microsoft.Security/locations/jitNetworkAccessPolicies/requests/open/action";
    pub const REQUEST_EXTEND: &str = "Microsoft.Security/locations/jitNetworkAccessPolicies/requests/extend/action";
    pub const GRANT_EXPIRE: &str = "Microsoft.Security/locations/jitNetworkAccessPolicies/requests/expire/action";
    pub const VM_WRITE: &str = "Microsoft.Compute/virtualMachines/write";
    pub const VM_DELETE: &str = "Microsoft.Compute/virtualMachines/delete";
    pub const VM_READ: &str = "Microsoft.Compute/virtualMachines/read";
    pub const PRINCIPAL_WRITE: &str = "Microsoft.Authorization/principals/write";
    pub const SIGN_IN: &str = "Microsoft.Authorization/signIn/action";
    pub const SIGN_OUT: &str = "Microsoft.Authorization/signOut/action";
    pub const REQUEST_APPROVE: &str = "Microsoft.Security/locations/jitNetworkAccessPolicies/approve/action";
    pub const REQUEST_DENY: &str = "Microsoft.Security/locations/jitNetworkAccessPolicies/requests/deny/action";
    pub const REQUEST_REVOKE: &str = "Microsoft.Security/locations/jitNetworkAccessPolicies/requests/revoke/action";
    pub const JOIN_TOKEN_WRITE: &str = "jitgate/agents/joinTokens/write";
    pub const AGENT_JOIN: &str = "jitgate/agents/join/action";
    pub const AGENT_APPLIED: &str = "jitgate/agents/applied/action";
    pub const AGENT_DELETE: &str = "jitgate/agents/delete";
    pub const AGENT_ROTATE: &str = "jitgate/agents/rotate/action";
    /// A cloud connector's inventory (`PUT /agent/v1/inventory`).
    pub const AGENT_INVENTORY: &str = "jitgate/agents/inventory/write";
    /// A cloud connector's enforcement report (`POST /agent/v1/enforcement`): its failing VMs.
    pub const AGENT_ENFORCEMENT: &str = "jitgate/agents/enforcement/action";
    /// A grant's rule that a cloud connector removed from a VM's security group.
    pub const GRANT_RULE_REMOVE: &str =
        "Microsoft.Security/locations/jitNetworkAccessPolicies/requests/rule/remove/action";
}

/// The outcome of an operation, as Azure's Activity Log names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditStatus {
    Started,
    Succeeded,
    Failed,
}

impl AuditStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditStatus::Started => "Started",
            AuditStatus::Succeeded => "Succeeded",
            AuditStatus::Failed => "Failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "Started" => Some(AuditStatus::Started),
            "Succeeded" => Some(AuditStatus::Succeeded),
            "Failed" => Some(AuditStatus::Failed),
            _ => None,
        }
    }
}

/// One thing that happened: who did what to which resource, from where, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub time: OffsetDateTime,
    pub operation: String,
    pub status: AuditStatus,
    pub caller: String,
    pub caller_ip: Option<String>,
    pub resource_id: String,
    pub correlation_id: String,
    /// Details: ports, sources, end times, justification, the reason of a denial …
    pub properties: BTreeMap<String, String>,
}

impl AuditEvent {
    /// The same event with another outcome and a reason, for recording a refusal.
    pub fn failed(mut self, reason: impl Into<String>) -> Self {
        self.status = AuditStatus::Failed;
        self.properties.insert("reason".into(), reason.into());
        self
    }

    pub fn succeeded(mut self) -> Self {
        self.status = AuditStatus::Succeeded;
        self
    }

    pub fn with(mut self, key: &str, value: impl Into<String>) -> Self {
        self.properties.insert(key.to_owned(), value.into());
        self
    }

    /// A deterministic byte encoding of every field: length-prefixed, in a fixed order.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        fn put(out: &mut Vec<u8>, s: &str) {
            out.extend_from_slice(&(s.len() as u64).to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(&self.time.unix_timestamp_nanos().to_be_bytes());
        put(&mut out, &self.operation);
        put(&mut out, self.status.as_str());
        put(&mut out, &self.caller);
        put(&mut out, self.caller_ip.as_deref().unwrap_or(""));
        put(&mut out, &self.resource_id);
        put(&mut out, &self.correlation_id);
        out.extend_from_slice(&(self.properties.len() as u64).to_be_bytes());
        for (k, v) in &self.properties {
            put(&mut out, k);
            put(&mut out, v);
        }
        out
    }
}

/// The longest `resource_id` an audit record keeps, in characters (ARM ids are far shorter).
pub const MAX_RESOURCE_ID_CHARS: usize = 1024;
/// The longest caller, caller address, correlation id, operation or property name kept.
pub const MAX_NAME_CHARS: usize = 256;
/// The longest property value kept.
pub const MAX_VALUE_CHARS: usize = 4096;

/// `s` cut to at most `max` characters; a cut text ends with a marker giving the original length.
pub fn truncate_field(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= max || s.chars().count() <= max {
        return std::borrow::Cow::Borrowed(s);
    }
    let total = s.chars().count();
    let marker = format!("…[truncated, {total} characters]");
    let keep = max.saturating_sub(marker.chars().count());
    let mut out: String = s.chars().take(keep).collect();
    out.push_str(&marker);
    std::borrow::Cow::Owned(out)
}

impl AuditEvent {
    /// The same event with every field bounded (see the `MAX_*` constants): what goes into the
    /// log. Any text a caller controls (a path, a name, an error message quoting input) can
    /// thus grow a record by a few kilobytes at most.
    pub fn bounded(mut self) -> Self {
        fn cut(s: &mut String, max: usize) {
            if let std::borrow::Cow::Owned(t) = truncate_field(s, max) {
                *s = t;
            }
        }
        cut(&mut self.operation, MAX_NAME_CHARS);
        cut(&mut self.caller, MAX_NAME_CHARS);
        if let Some(ip) = self.caller_ip.as_mut() {
            cut(ip, MAX_NAME_CHARS);
        }
        cut(&mut self.resource_id, MAX_RESOURCE_ID_CHARS);
        cut(&mut self.correlation_id, MAX_NAME_CHARS);
        let over = self.properties.iter().any(|(k, v)| {
            truncate_field(k, MAX_NAME_CHARS).len() != k.len() || truncate_field(v, MAX_VALUE_CHARS).len() != v.len()
        });
        if over {
            self.properties = std::mem::take(&mut self.properties)
                .into_iter()
                .map(|(k, v)| {
                    (truncate_field(&k, MAX_NAME_CHARS).into_owned(), truncate_field(&v, MAX_VALUE_CHARS).into_owned())
                })
                .collect();
        }
        self
    }

    /// Whether every field is within its bound.
    pub fn is_bounded(&self) -> bool {
        let ok = |s: &str, max: usize| s.chars().count() <= max;
        ok(&self.operation, MAX_NAME_CHARS)
            && ok(&self.caller, MAX_NAME_CHARS)
            && self.caller_ip.as_deref().is_none_or(|ip| ok(ip, MAX_NAME_CHARS))
            && ok(&self.resource_id, MAX_RESOURCE_ID_CHARS)
            && ok(&self.correlation_id, MAX_NAME_CHARS)
            && self.properties.iter().all(|(k, v)| ok(k, MAX_NAME_CHARS) && ok(v, MAX_VALUE_CHARS))
    }
}

/// The hash that precedes the first record.
pub const GENESIS: [u8; 32] = [0u8; 32];

/// The chain hash of record `seq` given the hash of the record before it.
pub fn chain_hash(prev: &[u8; 32], seq: u64, event: &AuditEvent) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(seq.to_be_bytes());
    h.update(event.canonical_bytes());
    h.finalize().into()
}

/// Where a chain of `(seq, event, stored_hash)` first fails to verify, if anywhere.
pub fn first_invalid<'a>(
    start: [u8; 32],
    records: impl IntoIterator<Item = (u64, &'a AuditEvent, [u8; 32])>,
) -> Option<u64> {
    let mut prev = start;
    let mut expected_seq = None;
    for (seq, event, stored) in records {
        if let Some(e) = expected_seq {
            if seq != e {
                return Some(seq);
            }
        }
        if chain_hash(&prev, seq, event) != stored {
            return Some(seq);
        }
        prev = stored;
        expected_seq = Some(seq + 1);
    }
    None
}

/// A `Failed` record of operation `op` by `me` on `/r` at `time`: the event core's unit tests
/// hand to the functions that complete it.
#[cfg(test)]
pub(crate) fn test_event(time: time::OffsetDateTime) -> AuditEvent {
    AuditEvent {
        time,
        operation: "op".into(),
        status: AuditStatus::Failed,
        caller: "me".into(),
        caller_ip: None,
        resource_id: "/r".into(),
        correlation_id: "c".into(),
        properties: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(op: &str) -> AuditEvent {
        AuditEvent {
            time: OffsetDateTime::UNIX_EPOCH,
            operation: op.into(),
            status: AuditStatus::Succeeded,
            caller: "alice".into(),
            caller_ip: Some("10.0.0.1".into()),
            resource_id: "/x".into(),
            correlation_id: "c".into(),
            properties: BTreeMap::new(),
        }
    }

    fn chain(events: &[AuditEvent]) -> Vec<(u64, &AuditEvent, [u8; 32])> {
        let mut prev = GENESIS;
        events
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let seq = i as u64 + 1;
                prev = chain_hash(&prev, seq, e);
                (seq, e, prev)
            })
            .collect()
    }

    #[test]
    fn an_intact_chain_verifies() {
        let events = vec![event("a"), event("b"), event("c")];
        assert_eq!(first_invalid(GENESIS, chain(&events)), None);
    }

    #[test]
    fn a_changed_field_is_found() {
        let events = vec![event("a"), event("b"), event("c")];
        let mut records = chain(&events);
        let changed = event("b").with("reason", "edited");
        records[1].1 = &changed;
        assert_eq!(first_invalid(GENESIS, records), Some(2));
    }

    #[test]
    fn a_deleted_or_swapped_record_is_found() {
        let events = vec![event("a"), event("b"), event("c")];
        let mut records = chain(&events);
        records.remove(1);
        assert_eq!(first_invalid(GENESIS, records), Some(3));
        let mut records = chain(&events);
        records.swap(0, 1);
        assert_eq!(first_invalid(GENESIS, records), Some(2));
    }

    #[test]
    fn every_field_takes_part_in_the_hash() {
        let base = event("a");
        let h = chain_hash(&GENESIS, 1, &base);
        let mut variants = vec![base.clone(); 7];
        variants[0].caller = "bob".into();
        variants[1].caller_ip = None;
        variants[2].resource_id = "/y".into();
        variants[3].correlation_id = "d".into();
        variants[4].status = AuditStatus::Failed;
        variants[5].time = OffsetDateTime::UNIX_EPOCH + time::Duration::nanoseconds(1);
        variants[6].properties.insert("k".into(), "v".into());
        for v in &variants {
            assert_ne!(chain_hash(&GENESIS, 1, v), h, "{v:?}");
        }
        assert_ne!(chain_hash(&GENESIS, 2, &base), h);
    }

    #[test]
    fn fields_are_bounded_with_a_marker() {
        let long = "x".repeat(60_000);
        let mut e = event("a").with("reason", long.clone()).with(&long, "v");
        e.resource_id = format!("/api/v1/requests/{long}");
        e.caller = long.clone();
        e.correlation_id = long.clone();
        e.caller_ip = Some(long.clone());
        assert!(!e.is_bounded());
        let b = e.bounded();
        assert!(b.is_bounded(), "{b:?}");
        assert_eq!(b.resource_id.chars().count(), MAX_RESOURCE_ID_CHARS);
        assert!(b.resource_id.starts_with("/api/v1/requests/xxx"));
        assert!(b.resource_id.ends_with("…[truncated, 60017 characters]"), "{}", &b.resource_id[900..]);
        assert_eq!(b.properties["reason"].chars().count(), MAX_VALUE_CHARS);
        assert!(b.canonical_bytes().len() < 8 * 1024);
    }

    #[test]
    fn short_fields_and_multibyte_text_are_kept_or_cut_on_characters() {
        let e = event("a").with("reason", "fine");
        assert_eq!(e.clone().bounded(), e);
        let text = "é".repeat(300);
        let cut = truncate_field(&text, 100);
        assert_eq!(cut.chars().count(), 100);
        assert!(cut.starts_with("éé"));
        assert_eq!(truncate_field("abc", 3), "abc");
    }

    #[test]
    fn statuses_read_back_as_written() {
        for s in [AuditStatus::Started, AuditStatus::Succeeded, AuditStatus::Failed] {
            assert_eq!(AuditStatus::parse(s.as_str()), Some(s), "{}", s.as_str());
        }
        assert_eq!(AuditStatus::parse("succeeded"), None, "the stored words are exact");
        assert_eq!(AuditStatus::parse(""), None);
    }

    #[test]
    fn every_field_alone_can_make_an_event_unbounded_and_bounded_fixes_it() {
        let long = |n: usize| "x".repeat(n);
        let mut cases: Vec<AuditEvent> = Vec::new();
        let mut e = event("op");
        e.operation = long(MAX_NAME_CHARS + 1);
        cases.push(e);
        let mut e = event("op");
        e.caller = long(MAX_NAME_CHARS + 1);
        cases.push(e);
        let mut e = event("op");
        e.caller_ip = Some(long(MAX_NAME_CHARS + 1));
        cases.push(e);
        let mut e = event("op");
        e.resource_id = long(MAX_RESOURCE_ID_CHARS + 1);
        cases.push(e);
        let mut e = event("op");
        e.correlation_id = long(MAX_NAME_CHARS + 1);
        cases.push(e);
        // A long property name with a short value, and a short name with a long value.
        let mut e = event("op");
        e.properties.insert(long(MAX_NAME_CHARS + 1), "v".into());
        cases.push(e);
        let mut e = event("op");
        e.properties.insert("k".into(), long(MAX_VALUE_CHARS + 1));
        cases.push(e);
        for (i, e) in cases.into_iter().enumerate() {
            assert!(!e.is_bounded(), "case {i} is over a bound");
            let b = e.bounded();
            assert!(b.is_bounded(), "case {i} bounded: {b:?}");
        }
        let fine = event("op");
        assert!(fine.is_bounded());
        assert_eq!(fine.clone().bounded(), fine, "a bounded event is left as it is");
    }
}
