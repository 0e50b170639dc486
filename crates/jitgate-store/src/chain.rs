//! Verifying the audit chain, decided once for every store: a store reads the live records in
//! order (in pages, from [`ChainWalk::next_seq`]) and hands each to the walk, which says where
//! the chain breaks.

use jitgate_core::audit::chain_hash;

use crate::{AuditRecord, AuditVerification};

/// A walk along the live chain: the records after those archived through `through`, the first
/// of them chained to `prev` (the archive's last hash, or the genesis hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainWalk {
    through: u64,
    prev: [u8; 32],
    expected: u64,
    records: u64,
}

impl ChainWalk {
    pub fn new(through: u64, prev: [u8; 32]) -> Self {
        ChainWalk { through, prev, expected: through + 1, records: 0 }
    }

    /// The sequence number the next record must have (where the next page starts).
    pub fn next_seq(&self) -> u64 {
        self.expected
    }

    fn verdict(&self, first_invalid: Option<u64>) -> AuditVerification {
        AuditVerification {
            valid: first_invalid.is_none(),
            records: self.records,
            first_invalid,
            archived_through: (self.through > 0).then_some(self.through),
        }
    }

    /// Checks the next record read: the verdict when the chain breaks at it (a record changed,
    /// or a gap: records removed before it), `None` while it holds.
    pub fn check(&mut self, r: &AuditRecord) -> Option<AuditVerification> {
        if r.seq != self.expected || chain_hash(&self.prev, r.seq, &r.event) != r.hash {
            let first_invalid = if r.seq != self.expected { r.seq.min(self.expected) } else { r.seq };
            return Some(self.verdict(Some(first_invalid)));
        }
        self.prev = r.hash;
        self.expected += 1;
        self.records += 1;
        None
    }

    /// The verdict once every record was read. `head`, when the store keeps one, is the last
    /// sequence number it committed: a log cut off at its end breaks the chain after the last
    /// record read.
    pub fn finish(self, head: Option<u64>) -> AuditVerification {
        if head.is_some_and(|head| self.expected <= head) {
            return self.verdict(Some(self.expected));
        }
        self.verdict(None)
    }
}

#[cfg(test)]
mod tests {
    use jitgate_core::audit::{AuditEvent, AuditStatus, GENESIS};
    use time::OffsetDateTime;

    use super::*;

    fn chain(n: u64) -> Vec<AuditRecord> {
        let mut prev = GENESIS;
        (1..=n)
            .map(|seq| {
                let event = AuditEvent {
                    time: OffsetDateTime::UNIX_EPOCH,
                    operation: format!("op{seq}"),
                    status: AuditStatus::Succeeded,
                    caller: "me".into(),
                    caller_ip: None,
                    resource_id: "/r".into(),
                    correlation_id: "c".into(),
                    properties: Default::default(),
                };
                let hash = chain_hash(&prev, seq, &event);
                let r = AuditRecord { seq, event, prev_hash: prev, hash };
                prev = hash;
                r
            })
            .collect()
    }

    fn walk(records: &[AuditRecord], head: Option<u64>) -> AuditVerification {
        let mut w = ChainWalk::new(0, GENESIS);
        for r in records {
            if let Some(broken) = w.check(r) {
                return broken;
            }
        }
        w.finish(head)
    }

    #[test]
    fn an_intact_chain_verifies_and_a_changed_or_missing_record_is_named() {
        let records = chain(4);
        let ok = walk(&records, Some(4));
        assert_eq!((ok.valid, ok.records, ok.first_invalid, ok.archived_through), (true, 4, None, None));
        let mut changed = records.clone();
        changed[2].event.caller = "someone else".into();
        assert_eq!(walk(&changed, None).first_invalid, Some(3));
        let gap: Vec<AuditRecord> = records.iter().filter(|r| r.seq != 2).cloned().collect();
        let broken = walk(&gap, None);
        assert_eq!((broken.valid, broken.records, broken.first_invalid), (false, 1, Some(2)));
        let cut = walk(&records[..3], Some(4));
        assert_eq!((cut.valid, cut.first_invalid), (false, Some(4)), "a log cut off at its end");
        assert!(walk(&records[..3], None).valid, "without a head, the end is where the records end");
    }

    #[test]
    fn a_walk_after_an_archive_starts_at_its_last_hash() {
        let records = chain(3);
        let mut w = ChainWalk::new(1, records[0].hash);
        assert_eq!(w.next_seq(), 2);
        assert!(w.check(&records[1]).is_none() && w.check(&records[2]).is_none());
        assert_eq!(w.finish(Some(3)).archived_through, Some(1));
    }
}
