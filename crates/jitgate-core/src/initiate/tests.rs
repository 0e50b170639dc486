use super::*;
use crate::ids::PolicyRef;
use crate::policy::{resolve, validate, OsType, PolicyDraft, PortDraft, VmDraft};

const SUB: &str = "20ff7fc3-e762-44dd-bd96-b71116dcdc23";

fn vm_id(name: &str) -> String {
    format!("/subscriptions/{SUB}/resourceGroups/rg1/providers/Microsoft.Compute/virtualMachines/{name}")
}

fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("valid time")
}

/// vm1: 22/TCP from *, PT3H; 3389/* from 10.0.0.0/24 and 192.168.1.0/24, PT1H.
fn policy() -> Policy {
    let draft = PolicyDraft {
        kind: None,
        vms: vec![VmDraft {
            id: vm_id("vm1"),
            ports: Some(vec![
                PortDraft {
                    number: Some(22),
                    protocol: Some("TCP".into()),
                    prefix: Some("*".into()),
                    prefixes: None,
                    max_duration: Some("PT3H".into()),
                    ..Default::default()
                },
                PortDraft {
                    number: Some(3389),
                    protocol: Some("*".into()),
                    prefix: None,
                    prefixes: Some(vec!["10.0.0.0/24".into(), "192.168.1.0/24".into()]),
                    max_duration: Some("PT1H".into()),
                    ..Default::default()
                },
            ]),
            public_ip_address: None,
        }],
    };
    let reference = PolicyRef::new(SUB, "rg1", "westeurope", "default").expect("valid");
    resolve(validate(reference, draft).expect("valid"), |_| Some(OsType::Linux)).expect("resolved")
}

fn request(port: InitiatePortDraft) -> InitiateDraft {
    InitiateDraft {
        vms: vec![InitiateVmDraft { id: vm_id("vm1"), ports: vec![port] }],
        justification: Some("maintenance".into()),
        start_time: None,
    }
}

fn port(number: i64, source: Option<&str>, minutes: i64) -> InitiatePortDraft {
    InitiatePortDraft {
        number: Some(number),
        end_time: Some(now() + Duration::minutes(minutes)),
        duration: None,
        prefix: source.map(String::from),
        prefixes: None,
    }
}

fn caller() -> Option<IpAddr> {
    Some("198.51.100.7".parse().expect("ip"))
}

fn decide_one(p: InitiatePortDraft) -> Result<GrantPlan, Invalid> {
    decide(&policy(), &request(p), caller(), now()).map(|mut plan| plan.grants.remove(0))
}

#[test]
fn a_request_inside_the_policy_becomes_a_grant() {
    let g = decide_one(port(22, Some("203.0.113.5"), 60)).expect("granted");
    assert_eq!(g.number, 22);
    assert_eq!(g.protocol, Protocol::Tcp);
    assert_eq!(g.end_time, now() + Duration::hours(1));
    assert_eq!(g.sources.prefixes()[0].text(), "203.0.113.5");
    let plan = decide(&policy(), &request(port(22, None, 60)), caller(), now()).expect("granted");
    assert_eq!(plan.justification.as_deref(), Some("maintenance"));
    assert_eq!(plan.start_time, now());
}

#[test]
fn an_omitted_source_means_the_callers_own_address() {
    let g = decide_one(port(22, None, 60)).expect("granted");
    assert_eq!(g.sources, SourceSpec::Single(SourcePrefix::from_ip("198.51.100.7".parse().expect("ip"))));
    let err = decide(&policy(), &request(port(22, None, 60)), None, now()).expect_err("no caller address");
    assert_eq!(err.code, codes::INVALID_INITIATE);
    // The caller's own address must itself be allowed by the policy.
    let err = decide_one(port(3389, None, 30)).expect_err("caller outside 3389's ranges");
    assert!(err.message.contains("198.51.100.7"), "{}", err.message);
}

#[test]
fn a_duration_may_replace_the_end_time_but_not_join_it() {
    let mut p = port(22, Some("*"), 0);
    p.end_time = None;
    p.duration = Some("PT30M".into());
    assert_eq!(decide_one(p.clone()).expect("granted").end_time, now() + Duration::minutes(30));
    let mut both = p.clone();
    both.end_time = Some(now() + Duration::minutes(30));
    assert!(decide_one(both).expect_err("both").message.contains("exactly one"));
    let mut neither = p.clone();
    neither.duration = None;
    assert!(decide_one(neither).is_err());
    let mut bad = p;
    bad.duration = Some("half an hour".into());
    assert_eq!(decide_one(bad).expect_err("bad").target.as_deref(), Some("virtualMachines[0].ports[0].duration"));
}

#[test]
fn the_end_time_must_be_in_the_future_and_within_the_ports_maximum() {
    assert!(decide_one(port(22, Some("*"), -1)).is_err());
    assert!(decide_one(port(22, Some("*"), 0)).is_err());
    assert!(decide_one(port(22, Some("*"), 180)).is_ok(), "exactly the maximum");
    assert!(decide_one(port(22, Some("*"), 181)).is_err());
    assert!(decide_one(port(22, Some("*"), 300)).is_err());
    assert!(decide_one(port(3389, Some("10.0.0.1"), 61)).is_err(), "3389 allows one hour");
    let mut within_leeway = port(22, Some("*"), 180);
    within_leeway.end_time = within_leeway.end_time.map(|t| t + Duration::seconds(10));
    assert!(decide_one(within_leeway).is_ok());
    // The leeway's edge, to the nanosecond: the maximum plus exactly 30 s is allowed, a
    // nanosecond more is not.
    let mut at_edge = port(22, Some("*"), 180);
    at_edge.end_time = at_edge.end_time.map(|t| t + END_TIME_LEEWAY);
    assert!(decide_one(at_edge.clone()).is_ok(), "exactly the maximum and the leeway");
    at_edge.end_time = at_edge.end_time.map(|t| t + Duration::nanoseconds(1));
    let err = decide_one(at_edge).expect_err("past the leeway");
    assert!(err.message.contains("longer than the port's maximum"), "{}", err.message);
}

#[test]
fn the_source_must_lie_inside_what_the_policy_allows() {
    assert!(decide_one(port(3389, Some("10.0.0.0/24"), 30)).is_ok(), "equal to an allowed range");
    assert!(decide_one(port(3389, Some("10.0.0.7"), 30)).is_ok(), "inside an allowed range");
    assert!(decide_one(port(3389, Some("192.168.1.128/25"), 30)).is_ok());
    for outside in ["172.16.0.1", "10.0.0.0/23", "*", "2001:db8::1"] {
        let err = decide_one(port(3389, Some(outside), 30)).expect_err(outside);
        assert!(err.message.contains("not a subset of policy"), "{}", err.message);
    }
    let mut several = port(3389, None, 30);
    several.prefixes = Some(vec!["10.0.0.1".into(), "172.16.0.1".into()]);
    assert!(decide_one(several).is_err(), "every prefix must be covered");
    assert!(decide_one(port(3389, Some("not an ip"), 30)).is_err());
}

#[test]
fn only_ports_and_vms_of_the_policy_can_be_opened() {
    let err = decide_one(port(8080, Some("*"), 30)).expect_err("unconfigured port");
    assert_eq!(err.target.as_deref(), Some("virtualMachines[0].ports[0].number"));
    let mut other_vm = request(port(22, Some("*"), 30));
    other_vm.vms[0].id = vm_id("vm2");
    assert!(decide(&policy(), &other_vm, caller(), now()).is_err());
    let mut upper = request(port(22, Some("*"), 30));
    upper.vms[0].id = upper.vms[0].id.to_uppercase().replace("SUBSCRIPTIONS", "subscriptions");
    assert!(decide(&policy(), &upper, caller(), now()).is_ok(), "ids compare case-insensitively");
}

#[test]
fn empty_lists_and_repeats_are_refused() {
    let empty_vms = InitiateDraft { vms: vec![], justification: None, start_time: None };
    assert!(decide(&policy(), &empty_vms, caller(), now()).is_err());
    let empty_ports = InitiateDraft {
        vms: vec![InitiateVmDraft { id: vm_id("vm1"), ports: vec![] }],
        justification: None,
        start_time: None,
    };
    assert!(decide(&policy(), &empty_ports, caller(), now()).is_err());
    let twice = InitiateDraft {
        vms: vec![InitiateVmDraft { id: vm_id("vm1"), ports: vec![port(22, Some("*"), 30), port(22, Some("*"), 30)] }],
        justification: None,
        start_time: None,
    };
    assert!(decide(&policy(), &twice, caller(), now()).is_err());
    for n in [0, 65536] {
        assert!(decide_one(port(n, Some("*"), 30)).is_err());
    }
    let mut long = request(port(22, Some("*"), 30));
    long.justification = Some("x".repeat(MAX_JUSTIFICATION + 1));
    assert!(decide(&policy(), &long, caller(), now()).is_err());
}

#[test]
fn a_justification_is_optional_without_an_approver_and_may_use_its_whole_length() {
    // Neither port of the policy needs an approver: as in Azure, a request may say nothing.
    for justification in [None, Some(String::new()), Some("  ".into()), Some("x".repeat(MAX_JUSTIFICATION))] {
        let mut draft = request(port(22, Some("*"), 30));
        draft.justification = justification.clone();
        let plan = decide(&policy(), &draft, caller(), now()).unwrap_or_else(|e| panic!("{justification:?}: {e}"));
        assert_eq!((plan.grants.len(), plan.justification), (1, justification));
    }
}

#[test]
fn the_supersede_key_ignores_prefix_spelling() {
    let a = decide_one(port(22, Some("203.0.113.5"), 60)).expect("granted");
    let b = decide_one(port(22, Some("203.0.113.5/32"), 30)).expect("granted");
    let c = decide_one(port(22, Some("203.0.113.6"), 30)).expect("granted");
    assert_eq!(a.supersede_key(), b.supersede_key());
    assert_ne!(a.supersede_key(), c.supersede_key());
}

#[test]
fn a_request_may_be_scheduled_and_its_window_counts_from_its_start() {
    let mut later = request(InitiatePortDraft {
        number: Some(22),
        end_time: None,
        duration: Some("PT3H".into()),
        prefix: Some("*".into()),
        prefixes: None,
    });
    later.start_time = Some(now() + Duration::hours(5));
    let plan = decide(&policy(), &later, caller(), now()).expect("scheduled");
    assert_eq!(plan.grants[0].opens_at, now() + Duration::hours(5));
    assert_eq!(plan.grants[0].end_time, now() + Duration::hours(8), "the full maximum, counted from the start");
    later.start_time = Some(now() + MAX_SCHEDULE_AHEAD);
    assert_eq!(
        decide(&policy(), &later, caller(), now()).expect("exactly 7 days ahead").grants[0].opens_at,
        now() + MAX_SCHEDULE_AHEAD
    );
    later.start_time = Some(now() + MAX_SCHEDULE_AHEAD + Duration::seconds(1));
    let err = decide(&policy(), &later, caller(), now()).expect_err("more than 7 days ahead");
    assert_eq!(err.target.as_deref(), Some("startTimeUtc"));
    later.start_time = Some(now() + Duration::days(8));
    assert!(decide(&policy(), &later, caller(), now()).is_err(), "at most 7 days ahead");
    let mut past = request(port(22, Some("*"), 60));
    past.start_time = Some(now() - Duration::hours(1));
    assert_eq!(
        decide(&policy(), &past, caller(), now()).expect("now").grants[0].opens_at,
        now(),
        "a past start means now"
    );
}

#[test]
fn a_missing_policy_is_named_in_the_refusal() {
    let reference = PolicyRef::new(SUB, "rg1", "westeurope", "nope").expect("valid");
    let invalid = policy_not_found(&reference);
    assert_eq!(invalid.code, codes::POLICY_NOT_FOUND);
    assert!(invalid.message.contains(&reference.id()), "{}", invalid.message);
}

#[test]
fn a_grant_behind_a_gateway_carries_its_address_and_mapped_port() {
    let mut mapped = policy();
    mapped.vms[0].ports[0].mapped_port = Some(2201);
    let plan = decide(&mapped, &request(port(22, Some("203.0.113.5"), 60)), caller(), now()).expect("granted");
    let g = &plan.grants[0];
    let gateway: Option<IpAddr> = Some("192.0.2.1".parse().expect("ip"));
    let inner: Option<IpAddr> = Some("10.8.0.2".parse().expect("ip"));
    assert_eq!(Reach::of(&mapped, g, false, None, gateway), Ok(Reach::default()), "reached directly");
    let reach = Reach::of(&mapped, g, true, inner, gateway).expect("same family");
    assert_eq!((reach.mapped_port, reach.public_ip.as_deref()), (Some(2201), Some("192.0.2.1")));
    assert_eq!(Reach::of(&policy(), g, true, inner, None), Ok(Reach::default()), "no mapped port, no address");
}

#[test]
fn behind_a_gateway_a_source_must_be_of_the_vms_address_family() {
    let mut mapped = policy();
    mapped.vms[0].ports[0].mapped_port = Some(2201);
    let inner4: Option<IpAddr> = Some("10.8.0.2".parse().expect("ip"));
    let inner6: Option<IpAddr> = Some("fd08::2".parse().expect("ip"));
    let public4: Option<IpAddr> = Some("192.0.2.1".parse().expect("ip"));
    let public6: Option<IpAddr> = Some("2001:db8::1".parse().expect("ip"));
    let grant = |source: &str| {
        let plan = decide(&mapped, &request(port(22, Some(source), 60)), caller(), now()).expect("granted");
        plan.grants[0].clone()
    };

    // IPv6 to an IPv6 VM, IPv4 to an IPv4 VM, and `*` to either.
    let reach = Reach::of(&mapped, &grant("2001:db8:5::/48"), true, inner6, public6).expect("IPv6 to IPv6");
    assert_eq!((reach.mapped_port, reach.public_ip.as_deref()), (Some(2201), Some("2001:db8::1")));
    assert!(Reach::of(&mapped, &grant("*"), true, inner6, public6).is_ok());
    assert!(Reach::of(&mapped, &grant("*"), true, inner4, public4).is_ok());

    // A public address of the other family is of no use to the requester: not shown.
    let reach = Reach::of(&mapped, &grant("2001:db8:5::7"), true, inner6, public4).expect("IPv6 to IPv6");
    assert_eq!((reach.mapped_port, reach.public_ip), (Some(2201), None));

    // Mixed: refused in words, naming the source, the VM's address and why.
    let refused = Reach::of(&mapped, &grant("2001:db8:5::7"), true, inner4, public4).expect_err("IPv6 to IPv4");
    assert_eq!(refused.code, codes::INVALID_INITIATE);
    assert_eq!(refused.target.as_deref(), Some("allowedSourceAddressPrefix"));
    assert_eq!(
        refused.message,
        "port 22 of virtual machine 'vm1': source 2001:db8:5::7 is IPv6, but the VM sits behind a gateway at the IPv4 \
         address 10.8.0.2, and a gateway forwards each address family only to its own (no NAT64); request access \
         from an IPv4 source"
    );
    let refused = Reach::of(&mapped, &grant("203.0.113.5"), true, inner6, public6).expect_err("IPv4 to IPv6");
    assert!(refused.message.contains("source 203.0.113.5 is IPv4"), "{}", refused.message);
    // A host-mode VM is reached directly, whatever the family.
    assert!(Reach::of(&mapped, &grant("2001:db8:5::7"), false, inner4, None).is_ok());
}

#[test]
fn the_requested_grants_make_the_record_and_the_audit_event() {
    let plan = decide(&policy(), &request(port(22, Some("203.0.113.5"), 60)), caller(), now()).expect("granted");
    let mut requested = Requested::default();
    let state = crate::lifecycle::start(&plan.grants[0], now());
    let g = requested.add(&plan.grants[0], &state, Reach::default());
    assert_eq!((g.number, g.status), (22, GrantStatus::Initiated));
    assert!(requested.opened());
    let audit = crate::audit::test_event(now());
    let event = requested.event(audit, 7, &plan);
    assert_eq!(event.status, crate::audit::AuditStatus::Succeeded);
    assert_eq!(event.properties["ports"], "vm1:22");
    assert_eq!(event.properties["sources"], "203.0.113.5");
    assert_eq!(event.properties["justification"], "maintenance");
    let record = requested.into_record(7, "alice".into(), plan);
    assert_eq!((record.id, record.grants.len(), record.justification.as_deref()), (7, 1, Some("maintenance")));
}

#[test]
fn a_request_opened_nothing_until_one_of_its_grants_is_live() {
    assert!(!Requested::default().opened(), "no grant yet");
    let mut later = request(port(22, Some("*"), 0));
    later.vms[0].ports[0].end_time = None;
    later.vms[0].ports[0].duration = Some("PT1H".into());
    later.start_time = Some(now() + Duration::hours(2));
    let plan = decide(&policy(), &later, caller(), now()).expect("scheduled");
    let mut requested = Requested::default();
    let state = crate::lifecycle::start(&plan.grants[0], now());
    assert_eq!(requested.add(&plan.grants[0], &state, Reach::default()).status, GrantStatus::Scheduled);
    assert!(!requested.opened(), "a scheduled grant opens nothing yet: no opened delivery");
}

#[test]
fn a_port_number_past_65535_is_refused_not_wrapped_onto_a_configured_port() {
    // 65558 is 22 modulo 65536, and 22 is open to `*` in the policy.
    for n in [65_558, 22 - 65_536, 0] {
        let err = decide_one(port(n, Some("*"), 30)).expect_err("outside 1..65535");
        assert_eq!(err.target.as_deref(), Some("virtualMachines[0].ports[0].number"));
        assert!(err.message.contains(&format!("port {n} is outside 1..65535")), "{}", err.message);
    }
    assert_eq!(decide_one(port(22, Some("*"), 30)).expect("granted").number, 22);
}

#[test]
fn grant_states_and_reasons_keep_azures_words_and_read_back() {
    let statuses = [GrantStatus::Initiated, GrantStatus::Revoked, GrantStatus::Pending, GrantStatus::Scheduled];
    let words: Vec<&str> = statuses.iter().map(|s| s.as_str()).collect();
    assert_eq!(words, ["Initiated", "Revoked", "Pending", "Scheduled"]);
    for s in statuses {
        assert_eq!(GrantStatus::parse(s.as_str()), Some(s), "{}", s.as_str());
    }
    assert_eq!(GrantStatus::parse("initiated"), None, "the stored words are exact");
    assert_eq!(GrantStatus::parse(""), None);

    let reasons = [
        StatusReason::UserRequested,
        StatusReason::Expired,
        StatusReason::NewerRequestInitiated,
        StatusReason::PolicyDeleted,
        StatusReason::ApprovalRequired,
        StatusReason::Approved,
        StatusReason::Denied,
        StatusReason::ApprovalExpired,
    ];
    let words: Vec<&str> = reasons.iter().map(|r| r.as_str()).collect();
    assert_eq!(
        words,
        [
            "UserRequested",
            "Expired",
            "NewerRequestInitiated",
            "PolicyDeleted",
            "ApprovalRequired",
            "Approved",
            "Denied",
            "ApprovalExpired"
        ]
    );
    for r in reasons {
        assert_eq!(StatusReason::parse(r.as_str()), Some(r), "{}", r.as_str());
    }
    assert_eq!(StatusReason::parse("expired"), None);
    assert_eq!(StatusReason::parse(""), None);
}
