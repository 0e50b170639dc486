//! Cloud connectors in the store: what [`crate::AgentStore::put_cloud_inventory`] answers.
//!
//! A connector's VMs are bound to it like a host agent's VM (`vms.agent_id`), with what it
//! reported beside them (`vms.cloud`: the facts, `vms.unsupported_reason`, `vms.cloud_failure`).
//! A VM is never deleted by an inventory; one no longer reported becomes Unsupported
//! ([`jitgate_core::cloud::NOT_FOUND_REASON`]).

/// What an inventory did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Inventoried {
    /// VMs registered or updated (every VM of the inventory).
    pub registered: u32,
    /// VMs of the connector now Unsupported (as reported, or no longer found).
    pub unsupported: u32,
    /// Whether anything changed (the revision was bumped: read it with
    /// [`crate::AgentStore::revision`] once the call returned).
    pub changed: bool,
}
