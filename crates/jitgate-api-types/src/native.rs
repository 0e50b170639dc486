//! jitgate's own `/api/v1` shapes.

use serde::{Deserialize, Serialize};

use jitgate_core::{Invalid, OsType, VmId};

use crate::datetime;

/// `PUT /api/v1/vms` body.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmIn {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub os_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The name of the gateway agent in front of the VM (gateway mode); `address` is then the
    /// VM's inner address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// A classic (non-ARM) deployment, which JIT cannot protect.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub classic: Option<bool>,
}

/// A checked VM registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRegistration {
    pub id: VmId,
    pub os_type: OsType,
    pub location: String,
    pub address: Option<std::net::IpAddr>,
    pub gateway: Option<String>,
    pub classic: bool,
}

pub const INVALID_VM: &str = jitgate_core::invalid::codes::INVALID_VM;

impl VmIn {
    pub fn validate(self) -> Result<VmRegistration, Invalid> {
        let bad = |field: &str, m: String| Invalid::input(INVALID_VM, Some(field.into()), m);
        let id = self.id.ok_or_else(|| bad("id", "id is required: the VM's ARM id".into()))?;
        let id = VmId::parse(&id).map_err(|m| bad("id", m))?;
        let os = self.os_type.ok_or_else(|| bad("osType", "osType is required: Linux or Windows".into()))?;
        let os_type =
            OsType::parse(&os).ok_or_else(|| bad("osType", format!("osType '{os}' is not Linux or Windows")))?;
        let location = self.location.ok_or_else(|| bad("location", "location is required, e.g. westeurope".into()))?;
        jitgate_core::ids::validate_location(&location).map_err(|m| bad("location", m))?;
        let address = self
            .address
            .map(|a| a.trim().parse().map_err(|_| bad("address", format!("address '{a}' is not an IP address"))))
            .transpose()?;
        let gateway = match self.gateway {
            Some(g) if g.trim().is_empty() => None,
            Some(g) if g.len() > 64 || g.chars().any(|c| c.is_control() || c.is_whitespace()) => {
                return Err(bad("gateway", format!("gateway '{g}' is not a gateway agent name")));
            }
            other => other,
        };
        Ok(VmRegistration { id, os_type, location, address, gateway, classic: self.classic.unwrap_or(false) })
    }
}

/// A registered VM on the wire.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VmOut {
    pub id: String,
    pub name: String,
    pub os_type: String,
    pub location: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub address: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub gateway: Option<String>,
    /// The enforcement point: `{"agent", "mode", "lastSeen", "stale"}`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub enforcement: Option<EnforcementOut>,
    /// Why JIT cannot protect this VM now, when it cannot.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub unsupported_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub classic: Option<bool>,
    /// Inventory views: the policy that protects the VM.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub policy_id: Option<String>,
    /// Inventory views: `Enforced`, `NotEnforced` (nothing closes the ports), `Stale` (the
    /// enforcement point stopped reporting), `Unusable` (it cannot program nftables) or `Failed`
    /// (a cloud connector cannot change the VM's rules; `warning` is its error).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub enforcement_state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub warning: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub approved_requests_last7_days: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_access: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub connection_details: Option<ConnectionDetailsOut>,
    /// A VM a cloud connector registered: what the cloud says of it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cloud: Option<crate::agent::CloudFacts>,
    /// A cloud VM's public address, as its connector reported it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub public_address: Option<String>,
}

/// How to reach a configured VM: its JIT ports and the enforcement point in front of them.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionDetailsOut {
    pub ports: Vec<ConnectionPortOut>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub enforcement_point: Option<String>,
    /// `host` or `gateway`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub public_ip_address: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionPortOut {
    pub number: u16,
    pub protocol: String,
    pub allowed_source_address_prefixes: Vec<String>,
    pub max_request_access_duration: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub mapped_port: Option<u16>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EnforcementOut {
    pub agent: String,
    pub mode: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_seen: Option<String>,
    pub stale: bool,
}

impl VmOut {
    pub fn new(
        id: &VmId,
        os: OsType,
        location: &str,
        address: Option<std::net::IpAddr>,
        created: time::OffsetDateTime,
        updated: time::OffsetDateTime,
    ) -> Self {
        VmOut {
            id: id.as_str().into(),
            name: id.name().into(),
            os_type: os.as_str().into(),
            location: location.into(),
            address: address.map(|a| a.to_string()),
            created_at: datetime::format(created),
            updated_at: datetime::format(updated),
            gateway: None,
            enforcement: None,
            unsupported_reason: None,
            classic: None,
            policy_id: None,
            enforcement_state: None,
            warning: None,
            approved_requests_last7_days: None,
            last_access: None,
            last_user: None,
            connection_details: None,
            cloud: None,
            public_address: None,
        }
    }
}

/// `POST /api/v1/requests/{id}/approve` and `…/deny` body: an optional free-text reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionIn {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl DecisionIn {
    /// The body as sent; an empty body, or one of another shape, carries no reason.
    pub fn parse_lenient(body: &[u8]) -> Self {
        serde_json::from_slice(body).unwrap_or_default()
    }
}

/// `POST /api/v1/requests/{id}/extend` body: exactly one of the two is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExtendIn {
    /// ISO-8601 duration from now, e.g. `PT1H`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    /// The new end, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_time_utc: Option<String>,
}

/// A request in the native API: the ARM shape, the policy it was made under (on a read), and
/// the end a pending extension asks for while it waits for an approver.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NativeRequestOut {
    #[serde(flatten)]
    pub request: crate::arm::RequestOut,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub policy_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pending_extension_end_time_utc: Option<String>,
}

/// `GET /api/v1/auth/config`: the OIDC issuer and client id humans sign in with, when the
/// server has one (`{}` otherwise).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthConfigOut {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub oidc_issuer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub oidc_client_id: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ListOut<T> {
    pub value: Vec<T>,
}

/// One page of a paged list, as Azure's list APIs answer: the items and, when more follow, the
/// absolute URL of the next page.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PageOut<T> {
    pub value: Vec<T>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_link: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_json;

    #[test]
    fn decisions_carry_a_reason_only_when_it_is_text() {
        let reason = |b: &[u8]| DecisionIn::parse_lenient(b).reason;
        assert_eq!(reason(br#"{"reason":"on call"}"#).as_deref(), Some("on call"));
        assert_eq!(reason(br#"{"reason":"on call","other":1}"#).as_deref(), Some("on call"));
        assert_eq!(reason(b""), None);
        assert_eq!(reason(b"not json"), None);
        assert_eq!(reason(br#"{"reason":5}"#), None);
    }

    #[test]
    fn extensions_parse_both_fields() {
        let e: ExtendIn = parse_json(br#"{"duration":"PT1H"}"#).expect("parse");
        assert_eq!((e.duration.as_deref(), e.end_time_utc), (Some("PT1H"), None));
        let e: ExtendIn = parse_json(br#"{"endTimeUtc":"2030-01-01T00:00:00Z"}"#).expect("parse");
        assert_eq!((e.duration, e.end_time_utc.as_deref()), (None, Some("2030-01-01T00:00:00Z")));
        assert!(parse_json::<ExtendIn>(br#"{"duration":5}"#).is_err());
    }

    const ID: &str = "/subscriptions/20ff7fc3-e762-44dd-bd96-b71116dcdc23/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/web1";

    fn check(body: serde_json::Value) -> Result<VmRegistration, Option<String>> {
        parse_json::<VmIn>(body.to_string().as_bytes()).map_err(|e| e.target)?.validate().map_err(|e| e.target)
    }

    #[test]
    fn a_registration_is_checked_field_by_field() {
        let ok =
            check(serde_json::json!({"id": ID, "osType": "linux", "location": "westeurope", "address": "10.0.0.4"}))
                .expect("valid");
        assert_eq!(ok.os_type, OsType::Linux);
        assert_eq!(ok.address.map(|a| a.to_string()).as_deref(), Some("10.0.0.4"));
        assert!(check(serde_json::json!({"id": ID, "osType": "Windows", "location": "westeurope"})).is_ok());
        for (body, field) in [
            (serde_json::json!({"osType": "Linux", "location": "w"}), "id"),
            (serde_json::json!({"id": "web1", "osType": "Linux", "location": "w"}), "id"),
            (serde_json::json!({"id": ID, "osType": "BeOS", "location": "w"}), "osType"),
            (serde_json::json!({"id": ID, "location": "w"}), "osType"),
            (serde_json::json!({"id": ID, "osType": "Linux"}), "location"),
            (serde_json::json!({"id": ID, "osType": "Linux", "location": "w", "address": "10.0.0"}), "address"),
            (serde_json::json!({"id": ID, "osType": "Linux", "location": "w", "address": 4}), "address"),
        ] {
            assert_eq!(check(body.clone()).err().flatten().as_deref(), Some(field), "{body}");
        }
    }
}
