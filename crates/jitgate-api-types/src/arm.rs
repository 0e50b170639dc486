//! Azure's JIT policy shapes (api-version 2020-01-01), as the SDKs send and read them.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use jitgate_core::ids::POLICY_TYPE;
use jitgate_core::initiate::{InitiateDraft, InitiatePortDraft, InitiateVmDraft};
use jitgate_core::invalid::codes;
use jitgate_core::policy::{PolicyDraft, PortDraft, VmDraft};
use jitgate_core::records::{AccessRequestRecord, PolicyRecord};
use jitgate_core::{Invalid, Policy, SourceSpec};

use crate::datetime;

/// The only api-version this resource has.
pub const API_VERSION: &str = "2020-01-01";

// ---------- input ----------

/// A PUT body. Read-only fields (`id`, `name`, `type`, `location`, `properties.requests`,
/// `properties.provisioningState`) may be sent back by clients and are ignored.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyIn {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub properties: Option<PolicyPropertiesIn>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyPropertiesIn {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub virtual_machines: Option<Vec<PolicyVmIn>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyVmIn {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<PortRuleIn>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_ip_address: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortRuleIn {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub number: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_source_address_prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_source_address_prefixes: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_request_access_duration: Option<String>,
    /// jitgate extension: stop live sessions at expiry or revoke.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cut_sessions_at_expiry: Option<bool>,
    /// jitgate extension: the gateway port that forwards (DNAT) to this port of the VM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mapped_port: Option<i64>,
    /// jitgate extension: requests wait for an approver.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub require_approval: Option<bool>,
    /// jitgate extension: how long a request waits for one (ISO-8601, default PT1H).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval_timeout: Option<String>,
}

impl PolicyIn {
    /// The draft the domain validates. Missing required containers are named here.
    pub fn into_draft(self) -> Result<PolicyDraft, Invalid> {
        let bad = |target: &str, message: &str| Invalid::input(codes::INVALID_POLICY, Some(target.into()), message);
        let props = self.properties.ok_or_else(|| bad("properties", "properties is required"))?;
        let vms = props
            .virtual_machines
            .ok_or_else(|| bad("properties.virtualMachines", "properties.virtualMachines is required"))?;
        let mut out = Vec::with_capacity(vms.len());
        for (i, vm) in vms.into_iter().enumerate() {
            let id = vm.id.ok_or_else(|| {
                bad(&format!("properties.virtualMachines[{i}].id"), "every virtual machine needs its id")
            })?;
            let ports = vm.ports.map(|ports| {
                ports
                    .into_iter()
                    .map(|p| PortDraft {
                        number: p.number,
                        protocol: p.protocol,
                        prefix: p.allowed_source_address_prefix,
                        prefixes: p.allowed_source_address_prefixes,
                        max_duration: p.max_request_access_duration,
                        cut_sessions: p.cut_sessions_at_expiry,
                        mapped_port: p.mapped_port,
                        require_approval: p.require_approval,
                        approval_timeout: p.approval_timeout,
                    })
                    .collect()
            });
            out.push(VmDraft { id, ports, public_ip_address: vm.public_ip_address });
        }
        Ok(PolicyDraft { kind: self.kind, vms: out })
    }
}

/// An initiate body. `duration` and `allowedSourceAddressPrefixes` are accepted beside the
/// spec's fields, as the service does.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitiateIn {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub virtual_machines: Option<Vec<InitiateVmIn>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub justification: Option<String>,
    /// jitgate extension: open the ports later (a maintenance window).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time_utc: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitiateVmIn {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<InitiatePortIn>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitiatePortIn {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub number: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_source_address_prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_source_address_prefixes: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_time_utc: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
}

impl InitiateIn {
    pub fn into_draft(self) -> Result<InitiateDraft, Invalid> {
        let bad = |target: String, message: String| Invalid::input(codes::INVALID_INITIATE, Some(target), message);
        let vms =
            self.virtual_machines.ok_or_else(|| bad("virtualMachines".into(), "virtualMachines is required".into()))?;
        let mut out = Vec::with_capacity(vms.len());
        for (i, vm) in vms.into_iter().enumerate() {
            let id = vm
                .id
                .ok_or_else(|| bad(format!("virtualMachines[{i}].id"), "every virtual machine needs its id".into()))?;
            let ports_in =
                vm.ports.ok_or_else(|| bad(format!("virtualMachines[{i}].ports"), "name the ports to open".into()))?;
            let mut ports = Vec::with_capacity(ports_in.len());
            for (j, p) in ports_in.into_iter().enumerate() {
                let end_time = p
                    .end_time_utc
                    .map(|t| {
                        datetime::parse(&t).map_err(|m| bad(format!("virtualMachines[{i}].ports[{j}].endTimeUtc"), m))
                    })
                    .transpose()?;
                ports.push(InitiatePortDraft {
                    number: p.number,
                    end_time,
                    duration: p.duration,
                    prefix: p.allowed_source_address_prefix,
                    prefixes: p.allowed_source_address_prefixes,
                });
            }
            out.push(InitiateVmDraft { id, ports });
        }
        let start_time =
            self.start_time_utc.map(|t| datetime::parse(&t).map_err(|m| bad("startTimeUtc".into(), m))).transpose()?;
        Ok(InitiateDraft { vms: out, justification: self.justification, start_time })
    }
}

// ---------- output ----------

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyOut {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind_type: String,
    pub location: String,
    pub kind: String,
    pub properties: PolicyPropertiesOut,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyPropertiesOut {
    pub virtual_machines: Vec<PolicyVmOut>,
    pub requests: Vec<RequestOut>,
    pub provisioning_state: String,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyVmOut {
    pub id: String,
    pub ports: Vec<PortRuleOut>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub public_ip_address: Option<String>,
    /// jitgate extension, in the answers to a policy PUT and to initiate: `NotEnforced` (no
    /// enforcement point: nothing closes or opens the ports), `Stale` (its agent stopped
    /// reporting), `Unusable` (its agent cannot program nftables) or `Failed` (its cloud
    /// connector cannot change the VM's rules); absent when enforced.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub enforcement: Option<String>,
    /// jitgate extension: what `enforcement` means for this VM and what to do.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub enforcement_warning: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PortRuleOut {
    pub number: u16,
    pub protocol: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub allowed_source_address_prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub allowed_source_address_prefixes: Option<Vec<String>>,
    pub max_request_access_duration: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cut_sessions_at_expiry: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub mapped_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub require_approval: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub approval_timeout: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RequestOut {
    /// jitgate extension: the request's id, for `POST /api/v1/requests/{id}/revoke`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub id: Option<i64>,
    pub virtual_machines: Vec<RequestVmOut>,
    pub start_time_utc: String,
    pub requestor: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub justification: Option<String>,
    /// jitgate extension: the reason the approver gave when approving or denying the request.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub decision_reason: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RequestVmOut {
    pub id: String,
    pub ports: Vec<RequestPortOut>,
    /// The gateway's public address when the VM is reached through a gateway.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub public_ip_address: Option<String>,
    /// jitgate extension, as in [`PolicyVmOut::enforcement`].
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub enforcement: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub enforcement_warning: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RequestPortOut {
    pub number: u16,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub allowed_source_address_prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub allowed_source_address_prefixes: Option<Vec<String>>,
    pub end_time_utc: String,
    pub status: String,
    pub status_reason: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub mapped_port: Option<u16>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyListOut {
    pub value: Vec<PolicyOut>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub next_link: Option<String>,
}

fn sources_out(s: &SourceSpec) -> (Option<String>, Option<Vec<String>>) {
    match s {
        SourceSpec::Single(p) => (Some(p.text().to_owned()), None),
        SourceSpec::Multiple(v) => (None, Some(v.iter().map(|p| p.text().to_owned()).collect())),
    }
}

/// The wire form of a policy with its history.
pub fn policy_out(record: &PolicyRecord) -> PolicyOut {
    let p: &Policy = &record.policy;
    PolicyOut {
        id: p.reference.id(),
        name: p.reference.name.clone(),
        kind_type: POLICY_TYPE.into(),
        location: p.reference.location.clone(),
        kind: p.kind.clone(),
        properties: PolicyPropertiesOut {
            virtual_machines: p
                .vms
                .iter()
                .map(|vm| PolicyVmOut {
                    id: vm.id.as_str().to_owned(),
                    ports: vm
                        .ports
                        .iter()
                        .map(|r| {
                            let (one, many) = sources_out(&r.sources);
                            PortRuleOut {
                                number: r.number,
                                protocol: r.protocol.as_str().into(),
                                allowed_source_address_prefix: one,
                                allowed_source_address_prefixes: many,
                                max_request_access_duration: r.max_duration.text().to_owned(),
                                cut_sessions_at_expiry: r.cut_sessions.then_some(true),
                                mapped_port: r.mapped_port,
                                require_approval: r.require_approval.then_some(true),
                                approval_timeout: r.approval_timeout.as_ref().map(|d| d.text().to_owned()),
                            }
                        })
                        .collect(),
                    public_ip_address: vm.public_ip_address.clone(),
                    enforcement: None,
                    enforcement_warning: None,
                })
                .collect(),
            requests: record.requests.iter().map(request_out).collect(),
            provisioning_state: "Succeeded".into(),
        },
    }
}

/// The wire form of one access request: its grants grouped by VM, in request order, with
/// jitgate's request id (`id`, for revoke) as an extension field.
pub fn request_out(r: &AccessRequestRecord) -> RequestOut {
    let mut vms: Vec<RequestVmOut> = Vec::new();
    for g in &r.grants {
        let (one, many) = sources_out(&g.sources);
        let port = RequestPortOut {
            number: g.number,
            allowed_source_address_prefix: one,
            allowed_source_address_prefixes: many,
            end_time_utc: datetime::format(g.end_time),
            status: g.status.as_str().into(),
            status_reason: g.status_reason.as_str().into(),
            mapped_port: g.mapped_port,
        };
        match vms.iter_mut().find(|v| v.id.eq_ignore_ascii_case(&g.vm_id)) {
            Some(v) => {
                v.ports.push(port);
                if v.public_ip_address.is_none() {
                    v.public_ip_address = g.public_ip.clone();
                }
            }
            None => vms.push(RequestVmOut {
                id: g.vm_id.clone(),
                ports: vec![port],
                public_ip_address: g.public_ip.clone(),
                enforcement: None,
                enforcement_warning: None,
            }),
        }
    }
    RequestOut {
        id: Some(r.id),
        virtual_machines: vms,
        start_time_utc: datetime::format(r.start_time),
        requestor: r.requestor.clone(),
        justification: r.justification.clone(),
        decision_reason: r.decision_reason.clone(),
    }
}

/// A convenience for tests and clients: the end of a window starting now.
pub fn end_time_in(now: OffsetDateTime, d: time::Duration) -> String {
    datetime::format(now + d)
}

#[cfg(test)]
mod tests;
