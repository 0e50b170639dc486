use super::*;
use crate::policy::OsType;

const SUB: &str = "20ff7fc3-e762-44dd-bd96-b71116dcdc23";

fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("valid time")
}

fn agent(mode: AgentMode, name: &str, name_is_hostname: bool) -> JoiningAgent {
    JoiningAgent {
        name: name.into(),
        mode,
        os_type: OsType::Linux,
        addresses: vec!["10.0.0.4".parse().expect("an address"), "10.0.0.5".parse().expect("an address")],
        public_address: None,
        hostname: "host1".into(),
        name_is_hostname,
    }
}

fn token(mode: &str, vm: Option<&str>) -> JoinToken {
    JoinToken { mode: mode.into(), expires: now() + time::Duration::hours(1), used: false, vm: vm.map(str::to_owned) }
}

#[test]
fn a_token_admits_only_a_fresh_unused_join_of_its_mode() {
    let mut a = agent(AgentMode::Host, "vm1", false);
    assert!(admit(Some(&token("host", None)), &mut a, now()).is_ok());
    let unknown = admit(None, &mut a, now()).expect_err("unknown");
    assert_eq!(unknown.code, INVALID_JOIN_TOKEN);
    let used = JoinToken { used: true, ..token("host", None) };
    assert!(admit(Some(&used), &mut a, now()).expect_err("used").message.contains("already used"));
    let expired = JoinToken { expires: now(), ..token("host", None) };
    assert!(admit(Some(&expired), &mut a, now()).expect_err("expired").message.contains("expired"));
    let m = admit(Some(&token("gateway", None)), &mut a, now()).expect_err("mode").message;
    assert_eq!(m, "the join token is for gateway mode, the agent asked for host");
}

#[test]
fn a_token_for_one_vm_names_a_host_agent_that_kept_its_host_name() {
    let mut a = agent(AgentMode::Host, "host1", true);
    admit(Some(&token("host", Some("vm7"))), &mut a, now()).expect("admitted");
    assert_eq!(a.name, "vm7");
    let mut named = agent(AgentMode::Host, "other", false);
    let invalid = admit(Some(&token("host", Some("vm7"))), &mut named, now()).expect_err("another name");
    assert!(invalid.message.contains("'vm7'") && invalid.message.contains("'other'"), "{}", invalid.message);
    let mut same = agent(AgentMode::Host, "VM7", false);
    assert!(admit(Some(&token("host", Some("vm7"))), &mut same, now()).is_ok(), "names compare without case");
}

#[test]
fn a_host_agent_enforces_the_vm_of_its_name() {
    let id = host_vm_id(SUB, "rg1", "vm1").expect("an id");
    assert_eq!(id.name(), "vm1");
    let invalid = host_vm_id(SUB, "rg1", "a/b").expect_err("not a name");
    assert_eq!((invalid.code, invalid.target.as_deref()), (INVALID_AGENT_NAME, Some("name")));
    assert_eq!(gateway_exists(SUB, "gw", "a1").code, GATEWAY_EXISTS);
}

#[test]
fn a_registered_vm_is_bound_only_with_a_token_for_it_and_not_behind_a_gateway() {
    let vm = host_vm_id(SUB, "rg1", "vm1").expect("an id");
    assert_eq!(may_rebind(&vm, false, None).expect_err("no token for it").code, VM_EXISTS);
    assert_eq!(may_rebind(&vm, true, Some("gw")).expect_err("behind a gateway").code, VM_BEHIND_GATEWAY);
    assert!(may_rebind(&vm, true, None).is_ok());
}

#[test]
fn the_join_and_removal_records_say_what_happened() {
    let audit = crate::audit::test_event(now());
    let a = agent(AgentMode::Host, "vm1", false);
    assert_eq!(vm_address(&a).as_deref(), Some("10.0.0.4"));
    let event = rebound(joined(&audit, "a1", &a), Some("a0".into()), None, vm_address(&a));
    assert_eq!(event.status, AuditStatus::Succeeded);
    assert_eq!(event.properties["addresses"], "10.0.0.4 10.0.0.5");
    assert_eq!(event.properties["previousAgent"], "a0");
    assert_eq!(event.properties["rebound"], "true");
    let vms: Vec<String> = (0..LISTED_VMS + 2).map(|i| format!("vm{i}")).collect();
    let event = removed(audit, "a1", "gw", AgentMode::Gateway, &vms);
    assert!(event.properties["unenforcedVms"].ends_with("vm49 (and 2 more)"), "{:?}", event.properties);
}

#[test]
fn a_report_is_refused_past_what_was_delivered_and_audited_only_when_something_changes() {
    let before = Reported { applied: 3, usable: Some(true), delivered: 4 };
    let Reporting::Refused { event, invalid } = report("a1", before, 5, now(), true, None) else {
        panic!("revision 5 was never delivered")
    };
    assert_eq!(invalid.code, REVISION_NOT_DELIVERED);
    assert_eq!(event.properties["revision"], "5");
    assert_eq!(report("a1", before, 3, now(), true, None), Reporting::Accepted(None), "nothing new");
    let audited = |r: Reporting| match r {
        Reporting::Accepted(Some(event)) => event,
        other => panic!("not an audited report: {other:?}"),
    };
    let applied = audited(report("a1", before, 4, now(), true, None));
    assert_eq!(applied.status, AuditStatus::Succeeded);
    let broken = audited(report("a1", before, 3, now(), false, Some("no nft")));
    assert_eq!((broken.status, broken.properties["nftablesError"].as_str()), (AuditStatus::Failed, "no nft"));
}

#[test]
fn a_join_token_record_names_its_vm_when_it_has_one() {
    let audit = crate::audit::test_event(now());
    let event = token_created(audit.clone(), AgentMode::Host, "westeurope", now(), Some("vm1"));
    assert_eq!((event.properties["mode"].as_str(), event.properties["vm"].as_str()), ("host", "vm1"));
    assert!(!token_created(audit, AgentMode::Gateway, "westeurope", now(), None).properties.contains_key("vm"));
    assert_eq!(credential_replaced("a1").code, AGENT_NOT_FOUND);
    assert!(agent_removed("a1").message.contains("removed"));
}

#[test]
fn a_host_agent_never_takes_over_a_cloud_connectors_vm() {
    let vm = host_vm_id("20ff7fc3-e762-44dd-bd96-b71116dcdc23", "rg", "i-1").expect("id");
    let e = may_rebind_from(&vm, true, None, Some("aws-prod")).expect_err("a connector's VM");
    assert!(e.message.contains("cloud connector 'aws-prod'"), "{}", e.message);
    assert!(may_rebind_from(&vm, true, None, None).is_ok());
    assert_eq!(may_rebind_from(&vm, false, None, None), may_rebind(&vm, false, None));
}
