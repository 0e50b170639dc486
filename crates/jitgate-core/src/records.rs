//! Views of stored state: a policy with its request history, a request with its grants.

use time::OffsetDateTime;

use crate::initiate::{GrantStatus, StatusReason};
use crate::{Policy, Protocol, SourceSpec};

/// One opened port of a request, with its life-cycle state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRecord {
    pub vm_id: String,
    pub number: u16,
    pub protocol: Protocol,
    pub sources: SourceSpec,
    pub end_time: OffsetDateTime,
    pub status: GrantStatus,
    pub status_reason: StatusReason,
    pub mapped_port: Option<u16>,
    /// The gateway's public address, for a VM behind a gateway (connection details).
    pub public_ip: Option<String>,
}

/// An accepted access request and its grants, in request order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRequestRecord {
    pub id: i64,
    pub requestor: String,
    pub start_time: OffsetDateTime,
    pub justification: Option<String>,
    pub grants: Vec<GrantRecord>,
    /// An extension of the live grants that waits for an approver: the end it asks for.
    pub pending_extension: Option<OffsetDateTime>,
    /// The reason the approver gave with the latest decision (approve or deny), if any.
    pub decision_reason: Option<String>,
}

/// A stored policy with its recent request history (oldest first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRecord {
    pub policy: Policy,
    pub requests: Vec<AccessRequestRecord>,
}
