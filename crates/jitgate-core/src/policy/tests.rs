use super::*;

const SUB: &str = "20ff7fc3-e762-44dd-bd96-b71116dcdc23";

fn vm_id(name: &str) -> String {
    format!("/subscriptions/{SUB}/resourceGroups/rg1/providers/Microsoft.Compute/virtualMachines/{name}")
}

fn reference(name: &str) -> PolicyRef {
    PolicyRef::new(SUB, "rg1", "westeurope", name).expect("valid reference")
}

fn port(number: i64) -> PortDraft {
    PortDraft {
        number: Some(number),
        protocol: Some("TCP".into()),
        prefix: Some("*".into()),
        prefixes: None,
        max_duration: Some("PT3H".into()),
        cut_sessions: None,
        mapped_port: None,
        require_approval: None,
        approval_timeout: None,
    }
}

fn draft_with(port: PortDraft) -> PolicyDraft {
    PolicyDraft {
        kind: None,
        vms: vec![VmDraft { id: vm_id("vm1"), ports: Some(vec![port]), public_ip_address: None }],
    }
}

/// Validates a one-port policy and returns the target of the error, if any.
fn check_port(p: PortDraft) -> Result<(), String> {
    validate(reference("default"), draft_with(p)).map(|_| ()).map_err(|e| {
        assert_eq!(e.code, codes::INVALID_POLICY);
        assert!(!e.message.is_empty());
        e.target.unwrap_or_default()
    })
}

#[test]
fn a_valid_policy_passes_and_keeps_what_was_sent() {
    let mut p2 = port(3389);
    p2.protocol = Some("*".into());
    p2.prefix = None;
    p2.prefixes = Some(vec!["10.0.0.0/24".into(), "192.168.1.0/24".into()]);
    p2.max_duration = Some("PT1H".into());
    let draft = PolicyDraft {
        kind: Some("Basic".into()),
        vms: vec![VmDraft { id: vm_id("vm1"), ports: Some(vec![port(22), p2]), public_ip_address: None }],
    };
    let v = validate(reference("default"), draft).expect("valid");
    assert_eq!(v.kind, "Basic");
    let ports = &v.vms[0].ports;
    assert_eq!(ports[0].number, 22);
    assert_eq!(ports[0].protocol, Protocol::Tcp);
    assert!(matches!(&ports[0].sources, SourceSpec::Single(p) if p.is_any()));
    assert_eq!(ports[1].protocol, Protocol::Any);
    assert!(matches!(&ports[1].sources, SourceSpec::Multiple(v) if v.len() == 2));
    assert_eq!(ports[1].max_duration.text(), "PT1H");
}

#[test]
fn port_numbers_must_be_within_1_to_65535() {
    assert!(check_port(port(1)).is_ok());
    assert!(check_port(port(65535)).is_ok());
    for n in [0, -1, 65536, 70000] {
        assert_eq!(check_port(port(n)), Err("properties.virtualMachines[0].ports[0].number".into()), "port {n}");
    }
    let mut p = port(22);
    p.number = None;
    assert!(check_port(p).is_err());
}

#[test]
fn protocol_must_be_tcp_udp_or_any() {
    for ok in ["TCP", "UDP", "*", "tcp", "Udp"] {
        let mut p = port(22);
        p.protocol = Some(ok.into());
        assert!(check_port(p).is_ok(), "{ok}");
    }
    for bad in [Some("ICMP"), Some(""), Some("Any"), None] {
        let mut p = port(22);
        p.protocol = bad.map(String::from);
        assert_eq!(check_port(p), Err("properties.virtualMachines[0].ports[0].protocol".into()), "{bad:?}");
    }
}

#[test]
fn exactly_one_source_form_is_required() {
    let mut both = port(22);
    both.prefixes = Some(vec!["10.0.0.0/8".into()]);
    assert!(check_port(both).is_err());
    let mut neither = port(22);
    neither.prefix = None;
    assert!(check_port(neither).is_err());
    let mut empty = port(22);
    empty.prefix = None;
    empty.prefixes = Some(vec![]);
    assert!(check_port(empty).is_err());
}

#[test]
fn prefixes_must_be_addresses_ranges_or_any() {
    for bad in ["10.0.0.0/33", "not-an-ip", "Internet", "10.0.0"] {
        let mut p = port(22);
        p.prefix = Some(bad.into());
        assert!(check_port(p).is_err(), "{bad}");
        let mut p = port(22);
        p.prefix = None;
        p.prefixes = Some(vec!["10.0.0.0/8".into(), bad.into()]);
        assert!(check_port(p).is_err(), "{bad} in a list");
    }
    let mut v6 = port(22);
    v6.prefix = Some("2001:db8::/32".into());
    assert!(check_port(v6).is_ok());
}

#[test]
fn max_duration_must_be_iso8601_within_5_minutes_and_24_hours() {
    for ok in ["PT5M", "PT3H", "PT24H", "P1D", "PT90M"] {
        let mut p = port(22);
        p.max_duration = Some(ok.into());
        assert!(check_port(p).is_ok(), "{ok}");
    }
    for bad in [Some("PT4M"), Some("PT1M"), Some("PT25H"), Some("P2D"), Some("three hours"), Some("3"), None] {
        let mut p = port(22);
        p.max_duration = bad.map(String::from);
        assert_eq!(
            check_port(p),
            Err("properties.virtualMachines[0].ports[0].maxRequestAccessDuration".into()),
            "{bad:?}"
        );
    }
}

#[test]
fn approval_timeout_must_be_iso8601_positive_and_at_most_seven_days() {
    let with = |t: &str| {
        let mut p = port(22);
        p.require_approval = Some(true);
        p.approval_timeout = Some(t.into());
        p
    };
    for ok in ["PT1S", "PT1H", "P7D", "PT168H"] {
        assert_eq!(check_port(with(ok)), Ok(()), "{ok}");
    }
    for bad in ["PT0S", "P7DT1S", "PT168H1S", "P8D", "soon", "", "-PT1H"] {
        let target = check_port(with(bad)).expect_err(bad);
        assert!(target.ends_with("approvalTimeout"), "{bad}: {target}");
    }
    // The value is kept as given.
    let v = validate(reference("default"), draft_with(with("PT30M"))).expect("valid");
    let kept = v.vms[0].ports[0].approval_timeout.as_ref().map(|d| d.duration());
    assert_eq!(kept, Some(Duration::minutes(30)));
}

#[test]
fn policy_and_vm_names_together_may_not_exceed_56_characters() {
    let vm = "v".repeat(49);
    let ok = PolicyDraft { kind: None, vms: vec![VmDraft { id: vm_id(&vm), ports: None, public_ip_address: None }] };
    assert!(validate(reference("default"), ok.clone()).is_ok(), "7 + 49 = 56");
    let err = validate(reference("default1"), ok).expect_err("8 + 49 = 57");
    assert!(err.message.contains("57"), "{}", err.message);
}

#[test]
fn a_vm_listed_twice_or_a_port_listed_twice_is_refused() {
    let vm = VmDraft { id: vm_id("vm1"), ports: None, public_ip_address: None };
    let mut other_case = vm.clone();
    other_case.id = other_case.id.to_uppercase().replace("SUBSCRIPTIONS", "subscriptions");
    let twice = PolicyDraft { kind: None, vms: vec![vm.clone(), other_case] };
    let err = validate(reference("default"), twice).expect_err("listed twice");
    assert_eq!(err.target.as_deref(), Some("properties.virtualMachines[1].id"));
    let ports = PolicyDraft {
        kind: None,
        vms: vec![VmDraft { id: vm_id("vm1"), ports: Some(vec![port(22), port(22)]), public_ip_address: None }],
    };
    assert!(validate(reference("default"), ports).is_err());
}

#[test]
fn vms_must_be_valid_ids_in_the_policys_resource_group() {
    for id in [
        "vm1".to_string(),
        format!("/subscriptions/{SUB}/resourceGroups/other/providers/Microsoft.Compute/virtualMachines/vm1"),
        "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg1/providers/Microsoft.Compute/virtualMachines/vm1".into(),
    ] {
        let d = PolicyDraft { kind: None, vms: vec![VmDraft { id, ports: None, public_ip_address: None }] };
        assert!(validate(reference("default"), d).is_err());
    }
}

#[test]
fn defaults_linux_22_windows_3389_any_protocol_any_source_three_hours() {
    let d = PolicyDraft {
        kind: None,
        vms: vec![
            VmDraft { id: vm_id("lin"), ports: None, public_ip_address: None },
            VmDraft { id: vm_id("win"), ports: Some(vec![]), public_ip_address: None },
        ],
    };
    let v = validate(reference("default"), d).expect("valid");
    assert_eq!(v.kind, DEFAULT_KIND);
    let p = resolve(v, |id| Some(if id.name() == "win" { OsType::Windows } else { OsType::Linux })).expect("resolved");
    let (lin, win) = (&p.vms[0].ports, &p.vms[1].ports);
    assert_eq!((lin.len(), lin[0].number), (1, 22));
    assert_eq!((win.len(), win[0].number), (1, 3389));
    for rule in [&lin[0], &win[0]] {
        assert_eq!(rule.protocol, Protocol::Any);
        assert!(matches!(&rule.sources, SourceSpec::Single(s) if s.is_any()));
        assert_eq!(rule.max_duration.text(), "PT3H");
    }
}

#[test]
fn an_unregistered_vm_is_refused_when_resolving() {
    let d = PolicyDraft { kind: None, vms: vec![VmDraft { id: vm_id("ghost"), ports: None, public_ip_address: None }] };
    let v = validate(reference("default"), d).expect("valid");
    let err = resolve(v, |_| None).expect_err("unknown VM");
    assert_eq!(err.code, codes::VM_NOT_REGISTERED);
    assert!(err.message.contains("ghost"));
}

#[test]
fn explicit_ports_are_kept_when_resolving() {
    let v = validate(reference("default"), draft_with(port(2222))).expect("valid");
    let p = resolve(v, |_| Some(OsType::Linux)).expect("resolved");
    assert_eq!(p.vms[0].ports.len(), 1);
    assert_eq!(p.vms[0].ports[0].number, 2222);
}

#[test]
fn extension_fields_cut_sessions_and_mapped_port() {
    let mut p = port(22);
    p.cut_sessions = Some(true);
    p.mapped_port = Some(50022);
    let v = validate(reference("default"), draft_with(p)).expect("valid");
    assert!(v.vms[0].ports[0].cut_sessions);
    assert_eq!(v.vms[0].ports[0].mapped_port, Some(50022));
    let mut bad = port(22);
    bad.mapped_port = Some(70000);
    assert_eq!(check_port(bad), Err("properties.virtualMachines[0].ports[0].mappedPort".into()));
    let mut a = port(22);
    a.mapped_port = Some(50022);
    let mut b = port(3389);
    b.mapped_port = Some(50022);
    let twice = PolicyDraft {
        kind: None,
        vms: vec![VmDraft { id: vm_id("vm1"), ports: Some(vec![a, b]), public_ip_address: None }],
    };
    assert!(validate(reference("default"), twice).is_err(), "a gateway port maps to one VM port");
    // `*` overlaps TCP and UDP; TCP and UDP do not overlap each other.
    let tcp_and = |proto: &str| {
        let mut a = port(22);
        a.mapped_port = Some(50022);
        let mut b = port(3389);
        b.mapped_port = Some(50022);
        b.protocol = Some(proto.into());
        PolicyDraft {
            kind: None,
            vms: vec![VmDraft { id: vm_id("vm1"), ports: Some(vec![a, b]), public_ip_address: None }],
        }
    };
    assert!(validate(reference("default"), tcp_and("*")).is_err(), "* and TCP claim the same gateway port");
    assert!(validate(reference("default"), tcp_and("UDP")).is_ok(), "TCP and UDP are separate gateway ports");
}

#[test]
fn a_gateways_public_address_is_kept_and_must_be_an_address() {
    let with_ip = |ip: &str| PolicyDraft {
        kind: None,
        vms: vec![VmDraft { id: vm_id("vm1"), ports: None, public_ip_address: Some(ip.into()) }],
    };
    for ip in ["203.0.113.9", "2001:db8::9"] {
        let v = validate(reference("default"), with_ip(ip)).expect("an address");
        assert_eq!(v.vms[0].public_ip_address.as_deref(), Some(ip));
    }
    let e = validate(reference("default"), with_ip("gateway.example")).expect_err("not an address");
    assert_eq!(e.target.as_deref(), Some("properties.virtualMachines[0].publicIpAddress"));
    assert!(e.message.contains("'gateway.example' is not an IP address"), "{}", e.message);
}

#[test]
fn os_types_keep_azures_words_and_read_back() {
    assert_eq!((OsType::Linux.as_str(), OsType::Windows.as_str()), ("Linux", "Windows"));
    for os in [OsType::Linux, OsType::Windows] {
        assert_eq!(OsType::parse(os.as_str()), Some(os));
    }
    assert_eq!(OsType::parse("WINDOWS"), Some(OsType::Windows), "read case-insensitively");
    assert_eq!(OsType::parse("macOS"), None);
}
