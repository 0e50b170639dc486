//! What the server reads from a cloud connector: its inventory (`PUT /agent/v1/inventory`) and
//! its enforcement report (`POST /agent/v1/enforcement`).

use std::collections::{BTreeMap, HashSet};

use jitgate_api_types::agent::{EnforcementReportIn, InventoryIn};
use jitgate_api_types::parse_json;
use jitgate_core::audit::{AuditEvent, AuditStatus};
use jitgate_core::cloud::{check_inventory, check_report, limits, removal_event, CloudVmDraft, RemovalDraft};
use jitgate_core::enforcement::printable;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::MESSAGE_LIMIT;

const SUBSCRIPTION: &str = "00000000-0000-0000-0000-000000000001";
const DEFAULT_GROUP: &str = "rg-connector";

/// The first byte picks the body: even an inventory, odd an enforcement report; the rest is the
/// body.
pub fn cloud_reports(data: &[u8]) {
    let Some((&kind, body)) = data.split_first() else { return };
    if kind % 2 == 0 {
        inventory(body);
    } else {
        report(body);
    }
}

fn inventory(body: &[u8]) {
    let Ok(input) = parse_json::<InventoryIn>(body) else { return };
    let names: Vec<String> = input.vms.iter().map(|v| v.name.clone()).collect();
    let groups: Vec<Option<String>> = input.vms.iter().map(|v| v.resource_group.clone()).collect();
    let drafts: Vec<CloudVmDraft> = input.vms.into_iter().map(CloudVmDraft::from).collect();
    let vms = match check_inventory(drafts, SUBSCRIPTION, DEFAULT_GROUP) {
        Ok(vms) => vms,
        Err(e) => {
            assert!(e.message.len() <= MESSAGE_LIMIT, "a {}-byte refusal of an inventory", e.message.len());
            return;
        }
    };
    assert_eq!(vms.len(), names.len(), "every instance is kept or the inventory refused");
    let mut ids = HashSet::new();
    for ((vm, name), group) in vms.iter().zip(&names).zip(&groups) {
        // The VM is the instance, in the connector's subscription and the group asked for.
        assert_eq!(vm.id.name(), name);
        assert!(vm.id.subscription().eq_ignore_ascii_case(SUBSCRIPTION), "{}", vm.id.as_str());
        assert!(vm.id.resource_group().eq_ignore_ascii_case(group.as_deref().unwrap_or(DEFAULT_GROUP)));
        assert!(ids.insert(vm.id.key()), "{} registered twice", vm.id.as_str());
        // What the inventory shows is bounded and clean, and cleaning it again changes nothing.
        let facts = &vm.facts;
        let shown =
            [Some(&facts.provider), facts.instance_id.as_ref(), facts.vpc_id.as_ref(), facts.display_name.as_ref()];
        for text in shown.into_iter().flatten().chain(&facts.security_groups) {
            assert!(text.chars().count() <= limits::FACT + 1, "a {}-character fact", text.chars().count());
            assert_eq!(&printable(text, limits::FACT), text, "cleaning {text:?} twice changes it");
        }
        assert!(facts.security_groups.len() <= limits::SECURITY_GROUPS);
        if let Some(reason) = &vm.unsupported_reason {
            assert!(!reason.is_empty() && reason.chars().count() <= limits::REASON + 1, "{reason:?}");
            assert_eq!(&printable(reason, limits::REASON), reason);
        }
    }
}

fn report(body: &[u8]) {
    let Ok(input) = parse_json::<EnforcementReportIn>(body) else { return };
    let removals: Vec<RemovalDraft> = input.removals.into_iter().map(RemovalDraft::from).collect();
    let failures = input.failures.into_iter().map(|f| (f.vm_id, f.error)).collect();
    let report = match check_report(removals, failures) {
        Ok(report) => report,
        Err(e) => {
            assert!(e.message.len() <= MESSAGE_LIMIT, "a {}-byte refusal of a report", e.message.len());
            return;
        }
    };
    assert!(report.removals.len() <= limits::REMOVALS && report.failures.len() <= limits::FAILURES);
    let base = AuditEvent {
        time: OffsetDateTime::UNIX_EPOCH,
        operation: String::new(),
        status: AuditStatus::Failed,
        caller: String::new(),
        caller_ip: None,
        resource_id: String::new(),
        correlation_id: "fuzz".into(),
        properties: BTreeMap::new(),
    };
    for removal in &report.removals {
        assert!(removal.port > 0);
        // Every removal becomes an audit record that fits the log and names the same instant.
        let event = removal_event(&base, "agent-1", removal).bounded();
        assert!(event.is_bounded());
        assert_eq!(event.resource_id, removal.vm.as_str());
        let at = event.properties.get("removedAt").map(String::as_str).unwrap_or_default();
        let read = OffsetDateTime::parse(at, &Rfc3339).ok();
        assert_eq!(read, Some(removal.removed_at), "removedAt {at:?} does not read back");
    }
    for failure in &report.failures {
        assert!(!failure.error.is_empty() && failure.error.chars().count() <= limits::REASON + 1);
        assert_eq!(printable(&failure.error, limits::REASON), failure.error);
    }
}
