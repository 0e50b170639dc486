use serde_json::json;
use time::Duration;

use jitgate_core::initiate::{GrantStatus, StatusReason};
use jitgate_core::policy::{resolve, validate};
use jitgate_core::records::GrantRecord;
use jitgate_core::{OsType, PolicyRef, Protocol, SourcePrefix};

use super::*;
use crate::parse_json;

const SUB: &str = "20ff7fc3-e762-44dd-bd96-b71116dcdc23";

fn vm(name: &str) -> String {
    format!("/subscriptions/{SUB}/resourceGroups/probe-rg/providers/Microsoft.Compute/virtualMachines/{name}")
}

/// The body Azure's Python SDK sends for create_or_update (its separators and field order).
fn sdk_put_body() -> String {
    format!(
        r#"{{"kind": "Basic", "properties": {{"virtualMachines": [{{"id": "{}", "ports": [{{"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "*", "maxRequestAccessDuration": "PT3H"}}, {{"number": 3389, "protocol": "*", "allowedSourceAddressPrefixes": ["10.0.0.0/24", "192.168.1.0/24"], "maxRequestAccessDuration": "PT1H"}}]}}]}}}}"#,
        vm("probe-vm1")
    )
}

#[test]
fn the_sdks_put_body_round_trips_to_the_same_rules() {
    let draft = parse_json::<PolicyIn>(sdk_put_body().as_bytes()).expect("parse").into_draft().expect("draft");
    let reference = PolicyRef::new(SUB, "probe-rg", "westeurope", "default").expect("ref");
    let policy = resolve(validate(reference, draft).expect("valid"), |_| Some(OsType::Linux)).expect("resolve");
    let out = policy_out(&PolicyRecord { policy, requests: vec![] });
    let v = serde_json::to_value(&out).expect("json");
    assert_eq!(
        v,
        json!({
            "id": format!("/subscriptions/{SUB}/resourceGroups/probe-rg/providers/Microsoft.Security/locations/westeurope/jitNetworkAccessPolicies/default"),
            "name": "default",
            "type": "Microsoft.Security/locations/jitNetworkAccessPolicies",
            "location": "westeurope",
            "kind": "Basic",
            "properties": {
                "virtualMachines": [{
                    "id": vm("probe-vm1"),
                    "ports": [
                        {"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "*", "maxRequestAccessDuration": "PT3H"},
                        {"number": 3389, "protocol": "*", "allowedSourceAddressPrefixes": ["10.0.0.0/24", "192.168.1.0/24"], "maxRequestAccessDuration": "PT1H"}
                    ]
                }],
                "requests": [],
                "provisioningState": "Succeeded"
            }
        })
    );
}

#[test]
fn read_only_fields_sent_back_are_ignored() {
    let body = json!({
        "id": "/whatever", "name": "x", "type": "t", "location": "westeurope", "kind": "Basic",
        "properties": {"virtualMachines": [{"id": vm("a"), "ports": []}], "requests": [{"bogus": true}], "provisioningState": "Succeeded"}
    });
    let draft = parse_json::<PolicyIn>(body.to_string().as_bytes()).expect("parse").into_draft().expect("draft");
    assert_eq!(draft.vms.len(), 1);
}

#[test]
fn missing_containers_are_named() {
    for (body, target) in [
        (json!({}), "properties"),
        (json!({"properties": {}}), "properties.virtualMachines"),
        (json!({"properties": {"virtualMachines": [{"ports": []}]}}), "properties.virtualMachines[0].id"),
    ] {
        let err =
            parse_json::<PolicyIn>(body.to_string().as_bytes()).expect("parse").into_draft().expect_err("missing");
        assert_eq!(err.target.as_deref(), Some(target));
    }
}

#[test]
fn initiate_bodies_with_end_time_or_duration_parse() {
    let body = format!(
        r#"{{"virtualMachines": [{{"id": "{}", "ports": [{{"number": 22, "allowedSourceAddressPrefix": "127.0.0.1", "endTimeUtc": "2026-11-25T16:45:14.000Z"}}, {{"number": 3389, "duration": "PT30M", "allowedSourceAddressPrefixes": ["10.0.0.1"]}}]}}], "justification": "probe"}}"#,
        vm("probe-vm1")
    );
    let draft = parse_json::<InitiateIn>(body.as_bytes()).expect("parse").into_draft().expect("draft");
    let ports = &draft.vms[0].ports;
    assert_eq!(ports[0].end_time.map(|t| t.unix_timestamp()), Some(1_795_625_114));
    assert_eq!(ports[0].prefix.as_deref(), Some("127.0.0.1"));
    assert_eq!(ports[1].duration.as_deref(), Some("PT30M"));
    assert_eq!(ports[1].prefixes.as_deref(), Some(&["10.0.0.1".to_string()][..]));
    assert_eq!(draft.justification.as_deref(), Some("probe"));
    let bad = body.replace("2026-11-25T16:45:14.000Z", "yesterday");
    let err = parse_json::<InitiateIn>(bad.as_bytes()).expect("parse").into_draft().expect_err("bad time");
    assert_eq!(err.target.as_deref(), Some("virtualMachines[0].ports[0].endTimeUtc"));
}

#[test]
fn requests_group_grants_by_vm_and_echo_the_source_form() {
    let t = time::OffsetDateTime::from_unix_timestamp(1_795_625_114).expect("time");
    let grant = |vm_name: &str, number, sources| GrantRecord {
        vm_id: vm(vm_name),
        number,
        protocol: Protocol::Tcp,
        sources,
        end_time: t + Duration::hours(1),
        status: GrantStatus::Initiated,
        status_reason: StatusReason::UserRequested,
        mapped_port: None,
        public_ip: None,
    };
    let one = SourceSpec::Single(SourcePrefix::parse("127.0.0.1").expect("p"));
    let many = SourceSpec::Multiple(vec![SourcePrefix::parse("10.0.0.0/24").expect("p")]);
    let r = AccessRequestRecord {
        id: 1,
        requestor: "owner".into(),
        start_time: t,
        justification: None,
        grants: vec![grant("a", 22, one), grant("b", 22, many.clone()), grant("a", 3389, many)],
        pending_extension: None,
        decision_reason: None,
    };
    let v = serde_json::to_value(request_out(&r)).expect("json");
    assert_eq!(v["startTimeUtc"], "2026-11-25T16:45:14.0000000Z");
    assert_eq!(v["virtualMachines"].as_array().map(Vec::len), Some(2));
    assert_eq!(v["virtualMachines"][0]["ports"][0]["allowedSourceAddressPrefix"], "127.0.0.1");
    assert_eq!(v["virtualMachines"][0]["ports"][1]["allowedSourceAddressPrefixes"], json!(["10.0.0.0/24"]));
    assert_eq!(v["virtualMachines"][0]["ports"][0]["endTimeUtc"], "2026-11-25T17:45:14.0000000Z");
    assert_eq!(v["virtualMachines"][0]["ports"][0]["status"], "Initiated");
    assert_eq!(v["virtualMachines"][0]["ports"][0]["statusReason"], "UserRequested");
    assert!(v.get("justification").is_none());
}
