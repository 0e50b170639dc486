use super::*;

const SUB: &str = "20ff7fc3-e762-44dd-bd96-b71116dcdc23";

fn draft(name: &str) -> CloudVmDraft {
    CloudVmDraft {
        name: name.into(),
        resource_group: None,
        os_type: "Linux".into(),
        address: Some("10.0.1.5".into()),
        public_address: None,
        unsupported_reason: None,
        facts: CloudFacts { provider: "aws".into(), instance_id: Some(name.into()), ..Default::default() },
    }
}

fn refused(drafts: Vec<CloudVmDraft>) -> Invalid {
    match check_inventory(drafts, SUB, "aws-prod") {
        Err(e) => e,
        Ok(v) => panic!("accepted {v:?}"),
    }
}

#[test]
fn an_instance_id_is_a_vm_name_in_the_connectors_subscription_and_group() {
    let mut other = draft("i-0fedcba9876543210");
    other.resource_group = Some("tagged-rg".into());
    let vms = check_inventory(vec![draft("i-0123456789abcdef0"), other], SUB, "aws-prod").expect("valid");
    assert_eq!(
        vms[0].id.as_str(),
        format!("/subscriptions/{SUB}/resourceGroups/aws-prod/providers/Microsoft.Compute/virtualMachines/i-0123456789abcdef0")
    );
    assert_eq!(vms[1].id.resource_group(), "tagged-rg");
    assert_eq!(vms[0].address, Some("10.0.1.5".parse().expect("ip")));
}

#[test]
fn every_inventory_field_is_checked_and_named() {
    let huge = "x".repeat(100_000);
    let cases: Vec<(&str, CloudVmDraft)> = vec![
        ("vms[0].name", CloudVmDraft { name: "a b".into(), ..draft("x") }),
        ("vms[0].name", CloudVmDraft { name: huge.clone(), ..draft("x") }),
        ("vms[0].resourceGroup", CloudVmDraft { resource_group: Some("bad/rg".into()), ..draft("x") }),
        ("vms[0].osType", CloudVmDraft { os_type: "Plan9".into(), ..draft("x") }),
        ("vms[0].address", CloudVmDraft { address: Some("10.0.0.300".into()), ..draft("x") }),
        ("vms[0].publicAddress", CloudVmDraft { public_address: Some(huge.clone()), ..draft("x") }),
    ];
    for (target, d) in cases {
        let e = refused(vec![d]);
        assert_eq!((e.code, e.target.as_deref()), (INVALID_INVENTORY, Some(target)), "{}", e.message);
        assert!(e.message.len() < 400, "{target}: the message quotes little");
    }
    let mut facts = draft("x");
    facts.facts.security_groups = vec!["sg-1".into(); limits::SECURITY_GROUPS + 1];
    assert_eq!(refused(vec![facts]).target.as_deref(), Some("vms[0].cloud.securityGroups"));
    let e = refused(vec![draft("i-1"), draft("I-1")]);
    assert_eq!(e.target.as_deref(), Some("vms[1].name"), "{}", e.message);
    let many: Vec<CloudVmDraft> = (0..=limits::VMS).map(|i| draft(&format!("i-{i}"))).collect();
    let e = refused(many);
    assert!(e.message.contains("10000"), "{}", e.message);
}

#[test]
fn reasons_and_display_names_are_kept_printable_and_bounded() {
    let mut d = draft("i-1");
    d.unsupported_reason = Some(format!("no security group\u{202e}\n{}", "r".repeat(2000)));
    d.facts.display_name = Some("web\u{0}1".into());
    let vm = check_inventory(vec![d], SUB, "rg").expect("valid").remove(0);
    let reason = vm.unsupported_reason.expect("kept");
    assert!(reason.starts_with("no security group r") && reason.chars().count() == limits::REASON + 1, "{reason}");
    assert_eq!(vm.facts.display_name.as_deref(), Some("web 1"));
}

#[test]
fn only_a_cloud_connector_sends_an_inventory() {
    assert!(require_cloud(AgentMode::Cloud, "x").is_ok());
    let e = require_cloud(AgentMode::Gateway, "PUT /agent/v1/inventory").expect_err("a gateway");
    assert_eq!((e.code, e.kind), (NOT_A_CLOUD_CONNECTOR, crate::invalid::InvalidKind::Conflict));
    assert!(e.message.contains("gateway mode"), "{}", e.message);
}

#[test]
fn a_vm_enforced_by_anything_else_is_refused_by_name() {
    let vm =
        VmId::parse(&format!("/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/i-1"))
            .expect("id");
    assert!(may_register(&vm, "c1", None, None).is_ok());
    assert!(may_register(&vm, "c1", None, Some(("aws", AgentMode::Cloud, "c1"))).is_ok(), "its own");
    let e = may_register(&vm, "c1", Some("gw1"), None).expect_err("behind a gateway");
    assert!(e.message.contains("gateway 'gw1'") && e.code == VM_ENFORCED_ELSEWHERE, "{}", e.message);
    let e = may_register(&vm, "c1", None, Some(("i-1", AgentMode::Host, "h9"))).expect_err("a host agent");
    assert!(e.message.contains("host agent 'i-1' (h9)"), "{}", e.message);
}

fn removal(vm: &str) -> RemovalDraft {
    RemovalDraft {
        request_id: 7,
        vm_id: format!("/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/{vm}"),
        protocol: "TCP".into(),
        port: 22,
        source: "203.0.113.0/24".into(),
        reason: "expired".into(),
        removed_at: "2026-12-01T10:00:00Z".into(),
    }
}

#[test]
fn an_enforcement_report_is_bounded_and_each_removal_audited() {
    let report = check_report(vec![removal("i-1")], vec![(removal("i-2").vm_id, "Unauthorized\n".into())]).expect("ok");
    assert_eq!(report.failures[0].error, "Unauthorized");
    let base = AuditEvent {
        time: OffsetDateTime::UNIX_EPOCH,
        operation: ops::AGENT_ENFORCEMENT.into(),
        status: crate::audit::AuditStatus::Started,
        caller: "x".into(),
        caller_ip: None,
        resource_id: "/agents/c1".into(),
        correlation_id: "corr".into(),
        properties: Default::default(),
    };
    let e = removal_event(&base, "c1", &report.removals[0]);
    assert_eq!((e.operation.as_str(), e.caller.as_str()), (ops::GRANT_RULE_REMOVE, "agent:c1"));
    assert!(e.resource_id.ends_with("/virtualMachines/i-1"));
    for (k, v) in [("requestId", "7"), ("port", "22"), ("source", "203.0.113.0/24"), ("reason", "expired")] {
        assert_eq!(e.properties.get(k).map(String::as_str), Some(v), "{k}");
    }
    assert_eq!(e.properties.get("removedAt").map(String::as_str), Some("2026-12-01T10:00:00Z"));
    for (field, r) in [
        ("removals[0].reason", RemovalDraft { reason: "lost".into(), ..removal("i-1") }),
        ("removals[0].removedAt", RemovalDraft { removed_at: "yesterday".into(), ..removal("i-1") }),
        ("removals[0].vmId", RemovalDraft { vm_id: "i-1".into(), ..removal("i-1") }),
        ("removals[0].source", RemovalDraft { source: "10.0.0.0/99".into(), ..removal("i-1") }),
        ("removals[0].port", RemovalDraft { port: 0, ..removal("i-1") }),
        ("removals[0].protocol", RemovalDraft { protocol: "ICMP".into(), ..removal("i-1") }),
    ] {
        let e = check_report(vec![r], vec![]).expect_err(field);
        assert_eq!(e.target.as_deref(), Some(field));
    }
    let many = vec![removal("i-1"); limits::REMOVALS + 1];
    assert_eq!(check_report(many, vec![]).expect_err("too many").target.as_deref(), Some("removals"));
}

fn plan(vm: &VmId, sources: &[&str], protocol: Protocol, number: u16) -> crate::initiate::GrantPlan {
    let prefixes: Vec<SourcePrefix> = sources.iter().map(|s| SourcePrefix::parse(s).expect("prefix")).collect();
    crate::initiate::GrantPlan {
        vm_id: vm.clone(),
        number,
        protocol,
        sources: SourceSpec::Multiple(prefixes),
        end_time: OffsetDateTime::UNIX_EPOCH,
        approval_timeout: None,
        opens_at: OffsetDateTime::UNIX_EPOCH,
    }
}

#[test]
fn a_security_group_holds_sixty_rules_and_equal_rules_count_once() {
    let vm =
        VmId::parse(&format!("/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/i-1"))
            .expect("id");
    let source = |i: usize| format!("198.51.100.{i}");
    let live: Vec<(SourceSpec, Protocol, u16)> =
        (0..58).map(|i| (SourceSpec::Single(SourcePrefix::parse(&source(i)).expect("p")), Protocol::Tcp, 22)).collect();
    // Two more rules fit; a third does not.
    let two = plan(&vm, &["203.0.113.1", "203.0.113.2"], Protocol::Tcp, 22);
    assert!(check_request_rules(&vm, &live, std::slice::from_ref(&two)).is_ok());
    let four = plan(&vm, &["203.0.113.1", "203.0.113.2", "203.0.113.3", "203.0.113.4"], Protocol::Tcp, 22);
    let e = check_request_rules(&vm, &live, &[four]).expect_err("62 rules");
    assert_eq!((e.code, e.kind), (RULE_LIMIT_REACHED, crate::invalid::InvalidKind::Conflict));
    assert!(e.message.contains("60 inbound rules; 58 are in use and this request needs 4"), "{}", e.message);
    // The same source and port again adds nothing; another port does.
    let again = plan(&vm, &[source(0).as_str(), source(1).as_str(), "203.0.113.1", "203.0.113.2"], Protocol::Tcp, 22);
    assert!(check_request_rules(&vm, &live, &[again]).is_ok());
    let other_port = plan(&vm, &[source(0).as_str(), source(1).as_str(), "203.0.113.1"], Protocol::Tcp, 3389);
    assert!(check_request_rules(&vm, &live, &[other_port]).is_err());
    // Grants of other VMs are not this group's.
    let elsewhere =
        VmId::parse(&format!("/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/i-2"))
            .expect("id");
    let theirs = plan(&elsewhere, &["203.0.113.1", "203.0.113.2", "203.0.113.3"], Protocol::Tcp, 22);
    assert!(check_request_rules(&vm, &live, &[theirs]).is_ok());
}

#[test]
fn each_removal_reason_reads_back() {
    for reason in [RemovalReason::Expired, RemovalReason::Revoked, RemovalReason::Stale] {
        assert_eq!(RemovalReason::parse(reason.as_str()), Some(reason));
    }
    assert_eq!(RemovalReason::parse("Expired"), None, "reasons are lower case on the wire");
}

#[test]
fn facts_are_kept_as_sent_up_to_their_bound() {
    let longest = "f".repeat(limits::FACT);
    let mut d = draft("i-0123456789abcdef0");
    d.facts.vpc_id = Some(longest.clone());
    d.facts.security_groups = vec!["sg-0aa".into(); limits::SECURITY_GROUPS];
    let vms = check_inventory(vec![d], SUB, "aws-prod").expect("at the bounds");
    assert_eq!(vms[0].facts.vpc_id.as_deref(), Some(longest.as_str()));
    assert_eq!(vms[0].facts.instance_id.as_deref(), Some("i-0123456789abcdef0"));
    assert_eq!(vms[0].facts.security_groups.len(), limits::SECURITY_GROUPS);
    let over = |edit: &dyn Fn(&mut CloudVmDraft)| {
        let mut d = draft("i-0123456789abcdef0");
        edit(&mut d);
        refused(vec![d]).target
    };
    assert_eq!(over(&|d| d.facts.vpc_id = Some(format!("{longest}f"))).as_deref(), Some("vms[0].cloud.vpcId"));
    assert_eq!(over(&|d| d.facts.provider = "a\u{7}ws".into()).as_deref(), Some("vms[0].cloud.provider"));
    assert_eq!(
        over(&|d| d.facts.security_groups = vec!["sg-0aa".into(); limits::SECURITY_GROUPS + 1]).as_deref(),
        Some("vms[0].cloud.securityGroups")
    );
}

#[test]
fn an_address_is_read_up_to_the_longest_text_an_address_has() {
    // The longest IPv6 text (an IPv4 tail) is 45 characters.
    let longest = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255";
    assert_eq!(longest.len(), crate::enforcement::limits::ADDRESS_TEXT);
    assert_eq!(address("a", longest), Ok(longest.parse().expect("ip")));
    assert_eq!(address("a", &format!(" {longest}")).expect_err("longer").target.as_deref(), Some("a"));
}

#[test]
fn an_inventory_holds_ten_thousand_vms_and_not_one_more() {
    let drafts: Vec<_> = (0..limits::VMS).map(|n| draft(&format!("i-{n:08x}"))).collect();
    assert_eq!(check_inventory(drafts.clone(), SUB, "aws-prod").map(|v| v.len()), Ok(limits::VMS));
    let mut more = drafts;
    more.push(draft("i-ffffffff"));
    assert_eq!(refused(more).target.as_deref(), Some("vms"));
}

#[test]
fn a_report_holds_its_most_removals_and_failures_and_not_one_more() {
    let vm = removal("i-1").vm_id;
    let removals = vec![removal("i-1"); limits::REMOVALS];
    let failures = vec![(vm.clone(), "e".to_owned()); limits::FAILURES];
    let report = check_report(removals, failures.clone()).expect("at the bounds");
    assert_eq!((report.removals.len(), report.failures.len()), (limits::REMOVALS, limits::FAILURES));
    let mut more = failures;
    more.push((vm, "e".into()));
    assert_eq!(check_report(vec![], more).expect_err("too many").target.as_deref(), Some("failures"));
}

#[test]
fn the_body_limits_hold_the_largest_inventory_and_report() {
    // The largest inventory EC2 can give: 10,000 instances with ids at EC2's longest (17 hex
    // digits), five security groups (EC2's default maximum per interface), a 256-character Name
    // tag, the longest resource group, both addresses at their longest and a reason.
    let address = "\"ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255\"";
    let group = format!("\"sg-{}\"", "f".repeat(17));
    let entry = format!(
        "{{\"name\":\"i-{hex}\",\"resourceGroup\":\"{rg}\",\"osType\":\"Windows\",\"address\":{address},\
         \"publicAddress\":{address},\"unsupportedReason\":\"{reason}\",\"cloud\":{{\"provider\":\"aws\",\
         \"instanceId\":\"i-{hex}\",\"vpcId\":\"vpc-{hex}\",\"securityGroups\":[{groups}],\"displayName\":\"{name}\"}}}},",
        hex = "f".repeat(17),
        rg = "r".repeat(90),
        reason = "r".repeat(limits::REASON),
        groups = vec![group; 5].join(","),
        name = "n".repeat(256),
    );
    assert!(entry.len() * limits::VMS < limits::INVENTORY_BODY_BYTES, "{} bytes an entry", entry.len());
    // The largest report: every removal and every failure at its longest.
    let vm = format!(
        "/subscriptions/{SUB}/resourceGroups/{}/providers/Microsoft.Compute/virtualMachines/{}",
        "r".repeat(90),
        "n".repeat(64)
    );
    let removal = format!(
        "{{\"requestId\":-9223372036854775808,\"vmId\":\"{vm}\",\"protocol\":\"TCP\",\"port\":65535,\
         \"source\":\"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128\",\"reason\":\"expired\",\
         \"removedAt\":\"2026-12-01T10:00:00.123456789+23:59\"}},"
    );
    let failure = format!("{{\"vmId\":\"{vm}\",\"error\":\"{}\"}},", "e".repeat(limits::REASON));
    let report = removal.len() * limits::REMOVALS + failure.len() * limits::FAILURES;
    assert!(report < limits::REPORT_BODY_BYTES, "{report} bytes");
}
