//! Audit records and the inventory views on the wire.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One audit record, with field names after Azure's Activity Log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecordOut {
    pub sequence: u64,
    pub event_timestamp: String,
    pub operation_name: String,
    pub status: String,
    pub caller: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub caller_ip_address: Option<String>,
    pub resource_id: String,
    pub correlation_id: String,
    pub properties: BTreeMap<String, String>,
    /// SHA-256 chain: this record's hash and the one before it.
    pub hash: String,
    pub previous_hash: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditPageOut {
    pub value: Vec<AuditRecordOut>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub next_link: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AuditVerifyOut {
    pub valid: bool,
    pub records: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub first_invalid: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub archived_through: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecurityPolicyIn {
    pub scope: Option<String>,
    pub jit_enabled: Option<bool>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecurityPolicyOut {
    pub scope: String,
    pub jit_enabled: bool,
    pub updated_at: String,
}
