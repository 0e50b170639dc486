//! The agent protocol (`/agent/v1/…`) and the native agent endpoints (`/api/v1/agentTokens`,
//! `/api/v1/agents`).

use serde::{Deserialize, Serialize};

/// `POST /api/v1/agentTokens`: what a join token may join.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinTokenIn {
    pub subscription: Option<String>,
    pub resource_group: Option<String>,
    pub location: Option<String>,
    /// `host` (default), `gateway` or `cloud` (a cloud connector).
    pub mode: Option<String>,
    /// ISO-8601 lifetime of the token (default `PT1H`, at most `P7D`).
    pub ttl: Option<String>,
    /// Host mode: the one VM (name, in the resource group) the token may join as. Joining as a VM
    /// that is already registered needs such a token, and re-binds that VM to the new agent.
    #[serde(default)]
    pub vm: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinTokenOut {
    pub token: String,
    pub expires_on: String,
    pub subscription: String,
    pub resource_group: String,
    pub location: String,
    pub mode: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub vm: Option<String>,
}

/// `GET /api/v1/agentTokens`: a join token without its secret.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinTokenInfoOut {
    pub subscription: String,
    pub resource_group: String,
    pub location: String,
    pub mode: String,
    pub created_at: String,
    pub created_by: String,
    pub expires_on: String,
    /// When it was used (`null` while unused).
    pub used_at: Option<String>,
    /// `unused`, `used` or `expired`.
    pub state: String,
    /// The one VM it joins as (`null`: any in its resource group).
    pub vm: Option<String>,
}

/// `POST /agent/v1/join`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinIn {
    pub join_token: String,
    pub name: String,
    pub mode: String,
    pub os_type: String,
    #[serde(default)]
    pub addresses: Vec<String>,
    pub public_address: Option<String>,
    pub hostname: String,
    /// `name` is the host's name, not one the operator gave (`--vm-name`): a join token made for
    /// one VM then joins as that VM.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub name_is_hostname: bool,
}

/// What the domain checks of a join (`jitgate_core::enforcement::check_join`).
impl From<JoinIn> for jitgate_core::enforcement::JoinDraft {
    fn from(input: JoinIn) -> Self {
        jitgate_core::enforcement::JoinDraft {
            join_token: input.join_token,
            name: input.name,
            mode: input.mode,
            os_type: input.os_type,
            addresses: input.addresses,
            public_address: input.public_address,
            hostname: input.hostname,
            name_is_hostname: input.name_is_hostname,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinOut {
    pub agent_id: String,
    /// The agent's own bearer credential; shown only here.
    pub credential: String,
    pub name: String,
    pub mode: String,
    pub subscription: String,
    pub resource_group: String,
    pub location: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub vm_id: Option<String>,
}

/// `GET /agent/v1/state`: everything the agent must enforce, at one revision.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StateOut {
    pub revision: u64,
    pub mode: String,
    pub ports: Vec<PortOut>,
    pub grants: Vec<GrantOut>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PortOut {
    pub vm_id: String,
    /// The VM's inner address behind a gateway; absent on the host itself.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub address: Option<String>,
    /// `TCP`, `UDP` or `*`.
    pub protocol: String,
    pub port: u16,
    pub cut_sessions: bool,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub mapped_port: Option<u16>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct GrantOut {
    pub request_id: i64,
    pub vm_id: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub address: Option<String>,
    pub protocol: String,
    pub port: u16,
    /// Source prefixes (`*`, an address or a CIDR range).
    pub sources: Vec<String>,
    /// Milliseconds left when the server answered: the agent's kernel timeout comes from this,
    /// never from comparing clocks.
    pub remaining_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub mapped_port: Option<u16>,
}

/// `POST /agent/v1/applied`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppliedIn {
    pub revision: u64,
    pub nftables_usable: bool,
    pub nftables_error: Option<String>,
}

/// `POST /agent/v1/rotate`: the agent's new credential (the one it called with stops working).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RotateOut {
    pub agent_id: String,
    /// Shown only here.
    pub credential: String,
}

/// An agent in `GET /api/v1/agents`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentOut {
    pub id: String,
    pub name: String,
    pub mode: String,
    pub subscription: String,
    pub resource_group: String,
    pub location: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub vm_id: Option<String>,
    pub addresses: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub public_address: Option<String>,
    pub joined_at: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_seen: Option<String>,
    pub applied_revision: u64,
    /// The latest revision the agent was sent; it cannot report a later one.
    #[serde(default)]
    pub delivered_revision: u64,
    /// No report for longer than the staleness limit.
    pub stale: bool,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub nftables_usable: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub nftables_error: Option<String>,
}

/// `PUT /agent/v1/inventory` (cloud connectors only): every instance the connector found, at
/// once. The server registers each as a VM in the connector's subscription, enforced by the
/// connector; a VM it registered before and that is missing now becomes Unsupported ("not found
/// by the connector"), never deleted (a policy may still name it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct InventoryIn {
    pub vms: Vec<CloudVmIn>,
}

/// One instance a cloud connector found.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CloudVmIn {
    /// The VM's name: the cloud's own id of the instance (`i-0123456789abcdef0`), unique in the
    /// account and region, so two instances never share a VM.
    pub name: String,
    /// The resource group the operator's mapping chose (a tag's value, or the VPC's mapping);
    /// absent: the join token's resource group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_group: Option<String>,
    /// `Linux` or `Windows` (from the instance's platform).
    pub os_type: String,
    /// The private address (what a grant's rule protects; shown in the inventory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_address: Option<String>,
    /// Why JIT cannot protect this instance (no security group, terminated, a VPC the
    /// connector does not manage); absent when it can.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsupported_reason: Option<String>,
    /// The cloud's facts, shown in the inventory as they are.
    #[serde(default)]
    pub cloud: CloudFacts,
}

/// What the cloud says of an instance.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CloudFacts {
    /// `aws`.
    #[serde(default)]
    pub provider: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc_id: Option<String>,
    /// The instance's security groups (ids), the connector's own group excluded.
    #[serde(default)]
    pub security_groups: Vec<String>,
    /// The instance's `Name` tag, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
}

/// The answer to `PUT /agent/v1/inventory`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct InventoryOut {
    /// VMs registered or updated by this report.
    pub registered: u32,
    /// VMs of this connector now Unsupported (as reported, or no longer found).
    pub unsupported: u32,
    /// The revision after the report (the connector's next state read waits past it).
    pub revision: u64,
}

/// `POST /agent/v1/enforcement` (cloud connectors only): rules the connector removed since its
/// last report, each written to the audit log, and the VMs whose enforcement fails now.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EnforcementReportIn {
    #[serde(default)]
    pub removals: Vec<RemovalIn>,
    /// Every VM of this connector whose rules could not be changed (a removal that failed
    /// included): the whole list, replacing the previous report's. Empty: none fails.
    #[serde(default)]
    pub failures: Vec<VmFailureIn>,
}

/// One grant rule the connector removed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RemovalIn {
    pub request_id: i64,
    pub vm_id: String,
    /// `TCP`, `UDP` or `*`.
    pub protocol: String,
    pub port: u16,
    /// The rule's source prefix.
    pub source: String,
    /// `expired`, `revoked` (no longer in the desired state before its end) or `stale` (found
    /// expired at the connector's start).
    pub reason: String,
    /// When the rule was removed (RFC 3339).
    pub removed_at: String,
}

/// A VM whose rules the connector could not change.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VmFailureIn {
    pub vm_id: String,
    /// What failed, as the cloud said it.
    pub error: String,
}

/// What the domain checks of an inventory entry (`jitgate_core::cloud::check_inventory`).
impl From<CloudVmIn> for jitgate_core::cloud::CloudVmDraft {
    fn from(vm: CloudVmIn) -> Self {
        jitgate_core::cloud::CloudVmDraft {
            name: vm.name,
            resource_group: vm.resource_group,
            os_type: vm.os_type,
            address: vm.address,
            public_address: vm.public_address,
            unsupported_reason: vm.unsupported_reason,
            facts: jitgate_core::cloud::CloudFacts {
                provider: vm.cloud.provider,
                instance_id: vm.cloud.instance_id,
                vpc_id: vm.cloud.vpc_id,
                security_groups: vm.cloud.security_groups,
                display_name: vm.cloud.display_name,
            },
        }
    }
}

/// The wire form of stored cloud facts.
impl From<&jitgate_core::cloud::CloudFacts> for CloudFacts {
    fn from(f: &jitgate_core::cloud::CloudFacts) -> Self {
        CloudFacts {
            provider: f.provider.clone(),
            instance_id: f.instance_id.clone(),
            vpc_id: f.vpc_id.clone(),
            security_groups: f.security_groups.clone(),
            display_name: f.display_name.clone(),
        }
    }
}

/// What the domain checks of a removal (`jitgate_core::cloud::check_report`).
impl From<RemovalIn> for jitgate_core::cloud::RemovalDraft {
    fn from(r: RemovalIn) -> Self {
        jitgate_core::cloud::RemovalDraft {
            request_id: r.request_id,
            vm_id: r.vm_id,
            protocol: r.protocol,
            port: r.port,
            source: r.source,
            reason: r.reason,
            removed_at: r.removed_at,
        }
    }
}
