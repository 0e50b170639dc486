//! What the control plane tells an enforcement point: the ports it must keep closed and the
//! grants it must open, with their absolute end times (the wire layer turns them into remaining
//! durations).

use std::net::IpAddr;

use time::OffsetDateTime;

use crate::policy::{Protocol, SourceSpec};

/// Where an agent enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AgentMode {
    /// On the VM itself (Azure's NSG case).
    Host,
    /// On a gateway in front of VMs (Azure's firewall case), with DNAT.
    Gateway,
}

impl AgentMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentMode::Host => "host",
            AgentMode::Gateway => "gateway",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        if s.eq_ignore_ascii_case("host") {
            Some(AgentMode::Host)
        } else if s.eq_ignore_ascii_case("gateway") {
            Some(AgentMode::Gateway)
        } else {
            None
        }
    }
}

/// A port the enforcement point keeps closed except for grants. `address` is the VM's inner
/// address behind a gateway, `None` on the host itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnforcedPort {
    pub vm_id: String,
    pub address: Option<IpAddr>,
    pub protocol: Protocol,
    pub number: u16,
    pub cut_sessions: bool,
    pub mapped_port: Option<u16>,
}

/// A live grant for the enforcement point to open until `end_time`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnforcedGrant {
    pub request_id: i64,
    pub vm_id: String,
    pub address: Option<IpAddr>,
    pub protocol: Protocol,
    pub number: u16,
    pub sources: SourceSpec,
    pub end_time: OffsetDateTime,
    pub mapped_port: Option<u16>,
}

/// The whole desired state of one enforcement point at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnforcementState {
    pub revision: u64,
    pub mode: AgentMode,
    pub ports: Vec<EnforcedPort>,
    pub grants: Vec<EnforcedGrant>,
}
