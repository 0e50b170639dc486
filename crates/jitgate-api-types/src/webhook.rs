//! The body of a webhook delivery: an event about one access request, with its ports as they
//! stand at the time of the event.
//!
//! The store builds it in the transaction that causes the event and keeps it as sent (the
//! delivery outbox), so a retry sends the same bytes. Fields are declared in alphabetical order:
//! that is the order receivers have always seen (the shape was first written as a sorted JSON
//! map), and a test pins it byte for byte.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use jitgate_core::records::AccessRequestRecord;

use crate::datetime::format as api_time;

/// `POST`ed to a webhook, signed (`X-Jitgate-Signature`); `event` is also in `X-Jitgate-Event`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookPayload {
    /// `requested`, `opened`, `approved`, `denied`, `revoked`, `expired`, `expiringSoon`.
    pub event: String,
    pub justification: Option<String>,
    /// The ARM id of the policy the request was made against.
    pub policy_id: String,
    pub ports: Vec<WebhookPort>,
    /// `approved` and `denied`: the reason the approver gave, when there is one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
    pub request_id: i64,
    pub requestor: String,
    /// When the event happened (RFC 3339, UTC, with 7 fractional digits as the API writes times).
    pub time: String,
}

/// One granted port of the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookPort {
    pub end_time_utc: String,
    pub number: u16,
    pub protocol: String,
    pub sources: Vec<String>,
    pub status: String,
    pub status_reason: String,
    pub virtual_machine: String,
}

impl WebhookPayload {
    /// The payload of `event` about `request` (made against `policy_id`) at `now`.
    pub fn new(event: &str, policy_id: &str, request: &AccessRequestRecord, now: OffsetDateTime) -> Self {
        WebhookPayload {
            event: event.to_owned(),
            justification: request.justification.clone(),
            policy_id: policy_id.to_owned(),
            ports: request
                .grants
                .iter()
                .map(|g| WebhookPort {
                    end_time_utc: api_time(g.end_time),
                    number: g.number,
                    protocol: g.protocol.as_str().to_owned(),
                    sources: g.sources.prefixes().iter().map(|p| p.text().to_owned()).collect(),
                    status: g.status.as_str().to_owned(),
                    status_reason: g.status_reason.as_str().to_owned(),
                    virtual_machine: g.vm_id.clone(),
                })
                .collect(),
            reason: matches!(event, "approved" | "denied").then(|| request.decision_reason.clone()).flatten(),
            request_id: request.id,
            requestor: request.requestor.clone(),
            time: api_time(now),
        }
    }

    /// The JSON text as it is stored and sent.
    pub fn to_json(&self) -> String {
        // A struct of strings, numbers and vectors always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jitgate_core::initiate::{GrantStatus, StatusReason};
    use jitgate_core::records::GrantRecord;
    use jitgate_core::{Protocol, SourcePrefix, SourceSpec};

    fn at(s: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(s).expect("time")
    }

    /// The shape receivers parse, byte for byte: keys sorted, `justification` null when absent.
    #[test]
    fn the_wire_shape_is_pinned() {
        let vm = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1";
        let request = AccessRequestRecord {
            id: 7,
            requestor: "alice".into(),
            start_time: at(1_900_000_000),
            justification: None,
            grants: vec![GrantRecord {
                vm_id: vm.into(),
                number: 22,
                protocol: Protocol::Tcp,
                sources: SourceSpec::Multiple(
                    SOURCES.iter().map(|s| SourcePrefix::parse(s).expect("prefix")).collect(),
                ),
                end_time: at(1_900_003_600),
                status: GrantStatus::Initiated,
                status_reason: StatusReason::UserRequested,
                mapped_port: Some(2222),
                public_ip: None,
            }],
            pending_extension: None,
            decision_reason: None,
        };
        let payload = WebhookPayload::new("opened", "/p", &request, at(1_900_000_000));
        let expected = format!(
            "{{\"event\":\"opened\",\"justification\":null,\"policyId\":\"/p\",\"ports\":[{{\"endTimeUtc\":\"2030-03-17T18:46:40.0000000Z\",\
             \"number\":22,\"protocol\":\"TCP\",\"sources\":[\"203.0.113.5/32\",\"198.51.100.0/24\"],\"status\":\"Initiated\",\
             \"statusReason\":\"UserRequested\",\"virtualMachine\":\"{vm}\"}}],\"requestId\":7,\"requestor\":\"alice\",\
             \"time\":\"2030-03-17T17:46:40.0000000Z\"}}"
        );
        assert_eq!(payload.to_json(), expected);
        // As the store wrote it before the payload had a type of its own.
        let g = &request.grants[0];
        let before = serde_json::json!({
            "event": "opened",
            "time": api_time(at(1_900_000_000)),
            "requestId": 7,
            "policyId": "/p",
            "requestor": "alice",
            "justification": request.justification,
            "ports": [serde_json::json!({
                "virtualMachine": g.vm_id, "number": g.number, "protocol": g.protocol.as_str(),
                "sources": g.sources.prefixes().iter().map(|p| p.text()).collect::<Vec<_>>(),
                "endTimeUtc": api_time(g.end_time),
                "status": g.status.as_str(), "statusReason": g.status_reason.as_str(),
            })],
        })
        .to_string();
        assert_eq!(before, expected);
        let back: WebhookPayload = serde_json::from_str(&expected).expect("parses");
        assert_eq!(back, payload);
        let with = WebhookPayload { justification: Some("why".into()), ..payload };
        assert!(with.to_json().contains(r#""justification":"why","policyId""#));
    }

    const SOURCES: [&str; 2] = ["203.0.113.5/32", "198.51.100.0/24"];

    #[test]
    fn approved_and_denied_events_carry_the_approver_reason() {
        let request = AccessRequestRecord {
            id: 9,
            requestor: "alice".into(),
            start_time: at(1_900_000_000),
            justification: Some("deploy".into()),
            grants: vec![],
            pending_extension: None,
            decision_reason: Some("not during the freeze".into()),
        };
        for (event, reason) in [("denied", true), ("approved", true), ("opened", false), ("expired", false)] {
            let p = WebhookPayload::new(event, "/p", &request, at(1_900_000_000));
            assert_eq!(p.reason.is_some(), reason, "{event}");
            assert_eq!(p.to_json().contains("\"reason\":\"not during the freeze\""), reason, "{event}");
        }
    }
}
