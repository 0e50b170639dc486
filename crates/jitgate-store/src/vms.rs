//! Registered VMs and the facts the inventory shows of them.

use std::net::IpAddr;

use time::OffsetDateTime;

use jitgate_core::cloud::CloudState;
use jitgate_core::{OsType, PolicyRef, PolicyVm, VmId};

use crate::AgentRecord;

/// A VM registration as an operator sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    pub id: VmId,
    pub os_type: OsType,
    pub location: String,
    pub address: Option<IpAddr>,
    /// The gateway agent (by name) in front of the VM; `address` is then its inner address.
    pub gateway: Option<String>,
    /// A classic (non-ARM) deployment: JIT cannot protect it.
    pub classic: bool,
}

/// A registered VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vm {
    pub spec: VmSpec,
    pub created: OffsetDateTime,
    pub updated: OffsetDateTime,
    /// The enforcement point: the host agent on the VM, the gateway agent in front of it, or the
    /// cloud connector that registered it.
    pub agent: Option<AgentRecord>,
    /// A VM a cloud connector registered: what it reported of it.
    pub cloud: Option<CloudState>,
}

/// Access statistics of one VM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmAccess {
    /// Requests that opened a port of the VM since the given time.
    pub approved_since: u64,
    pub last_access: Option<OffsetDateTime>,
    pub last_user: Option<String>,
}

/// The policy that names a VM, and the VM's entry in it (its ports), without the policy's other
/// VMs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmPolicy {
    pub policy: PolicyRef,
    pub vm: PolicyVm,
}
