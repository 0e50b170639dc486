//! What `jitgate doctor` reads from a store, read-only and without the secrets key: the schema
//! version against the build's, the database's own consistency check, the audit chain's head
//! and a verification of the chain.

use crate::AuditVerification;

/// The state of a store, as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreHealth {
    /// The schema version the database is at (0: never migrated).
    pub schema: i64,
    /// The schema version this build writes.
    pub expected: i64,
    /// SQLite's `PRAGMA integrity_check`: empty when it answered `ok`, else what it found
    /// (the first lines). `None` where the backend has no such check (PostgreSQL).
    pub integrity: Option<Vec<String>>,
    /// The last record of the audit chain: its sequence number and hash (hex); `None` when the
    /// log is empty.
    pub head: Option<(u64, String)>,
    /// The chain recomputed from its start (or the last sealed archive).
    pub audit: AuditVerification,
}
