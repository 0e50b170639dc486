//! Join tokens and agents as the store keeps them.

use std::net::IpAddr;

use time::OffsetDateTime;

use jitgate_core::enforcement::{AgentMode, JoiningAgent};

/// A one-time join token's scope, as its creator asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinTokenSpec {
    pub subscription: String,
    pub resource_group: String,
    pub location: String,
    pub mode: AgentMode,
    pub expires: OffsetDateTime,
    /// Host mode: the one VM (by name, in the token's resource group) the token may join as. An
    /// agent joins as a VM that is already registered only with a token made for it, and then
    /// takes over its enforcement point (an explicit re-bind, audited).
    pub vm: Option<String>,
}

/// A join token as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinTokenRecord {
    pub spec: JoinTokenSpec,
    pub created: OffsetDateTime,
    pub created_by: String,
    pub used: Option<OffsetDateTime>,
}

/// An agent joining with a join token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentJoin {
    pub token_hash: String,
    pub credential_hash: String,
    pub id: String,
    pub agent: JoiningAgent,
    pub now: OffsetDateTime,
}

/// An enforcement point as the server knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRecord {
    pub id: String,
    pub name: String,
    pub mode: AgentMode,
    pub subscription: String,
    pub resource_group: String,
    pub location: String,
    /// Host mode: the VM the agent runs on.
    pub vm_id: Option<String>,
    pub addresses: Vec<IpAddr>,
    pub public_address: Option<IpAddr>,
    pub joined: OffsetDateTime,
    pub last_seen: Option<OffsetDateTime>,
    pub applied_revision: u64,
    /// The latest revision a state answer delivered to the agent; it cannot report more.
    pub delivered_revision: u64,
    /// What the agent last said about nftables: `None` before its first report.
    pub nft_usable: Option<bool>,
    pub nft_error: Option<String>,
}

/// What an agent reports after applying a revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentReport {
    pub revision: u64,
    pub nft_usable: bool,
    pub nft_error: Option<String>,
    pub now: OffsetDateTime,
}

/// `ids` without repeats, in the order each was first asked for.
pub fn unique_in_order(ids: &[String]) -> Vec<String> {
    let mut seen = std::collections::HashSet::with_capacity(ids.len());
    ids.iter().filter(|id| seen.insert(id.as_str())).cloned().collect()
}
