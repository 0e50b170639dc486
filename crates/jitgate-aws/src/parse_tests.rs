use super::*;

fn root(text: &str) -> Element {
    xml::parse(text.as_bytes()).unwrap()
}

#[test]
fn instances_from_every_reservation() {
    let page = root(include_str!("../fixtures/describe-instances.xml"));
    assert_eq!(next_token(&page).as_deref(), Some("eyJ2IjoiMiIsImMiOiJ0b2tlbiJ9"));
    let found = instances(&page).unwrap();
    assert_eq!(found.len(), 3);
    assert_eq!(
        found[0],
        Instance {
            instance_id: "i-1234567890abcdef0".into(),
            state: "running".into(),
            platform: None,
            vpc_id: Some("vpc-11112222".into()),
            subnet_id: Some("subnet-56f5f633".into()),
            private_ip: Some("192.168.1.88".parse().unwrap()),
            public_ip: Some("54.194.252.215".parse().unwrap()),
            security_groups: vec![
                GroupRef { group_id: "sg-e4076980".into(), group_name: "SecurityGroup1".into() },
                GroupRef { group_id: "sg-jit00001".into(), group_name: "jitgate-web".into() },
            ],
            tags: vec![Tag::new("Name", "web & api"), Tag::new("jitgate:resource-group", "rg1"), Tag::new("empty", "")],
        }
    );
    assert_eq!(found[0].tag("jitgate:resource-group"), Some("rg1"));
    assert_eq!(found[1].platform.as_deref(), Some("windows"));
    assert_eq!(found[1].state, "stopped");
    assert_eq!(found[1].public_ip, None);
    assert_eq!(found[2].instance_id, "i-0classic");
    assert_eq!(found[2].vpc_id, None);
    assert!(found[2].security_groups.is_empty());
}

#[test]
fn security_groups_with_every_kind_of_source() {
    let page = root(include_str!("../fixtures/describe-security-groups.xml"));
    assert_eq!(next_token(&page), None);
    let groups = security_groups(&page).unwrap();
    assert_eq!(groups.len(), 2);
    let g = &groups[0];
    assert_eq!((g.group_id.as_str(), g.group_name.as_str()), ("sg-1a2b3c4d", "jitgate-web"));
    assert_eq!(g.description, "jitgate: just-in-time access");
    assert_eq!(g.vpc_id.as_deref(), Some("vpc-11112222"));
    assert_eq!(g.tag("jitgate:managed"), Some("true"));
    assert_eq!(
        g.ingress,
        [
            IpPermission {
                protocol: "tcp".into(),
                from_port: Some(22),
                to_port: Some(22),
                ipv4_ranges: vec![
                    IpRange {
                        cidr: "203.0.113.7/32".into(),
                        description: Some("jit alice until 2026-12-01T15:00:00Z".into())
                    },
                    IpRange { cidr: "198.51.100.0/24".into(), description: None },
                ],
                ipv6_ranges: vec![IpRange { cidr: "2001:db8::/64".into(), description: Some("v6".into()) }],
                source_groups: vec![],
                prefix_lists: vec![],
            },
            IpPermission {
                protocol: "-1".into(),
                from_port: None,
                to_port: None,
                ipv4_ranges: vec![],
                ipv6_ranges: vec![],
                source_groups: vec!["sg-af8a8a8a".into()],
                prefix_lists: vec!["pl-12345678".into()],
            },
        ]
    );
    assert!(groups[1].ingress.is_empty() && groups[1].tags.is_empty());
}

#[test]
fn created_group_id() {
    assert_eq!(
        created_group(&root(include_str!("../fixtures/create-security-group.xml"))).unwrap(),
        "sg-0123456789abcdef0"
    );
    assert!(matches!(created_group(&root("<CreateSecurityGroupResponse/>")), Err(Ec2Error::Decode(_))));
}

#[test]
fn errors_with_code_message_and_request_id() {
    let e = error(400, include_str!("../fixtures/error.xml").as_bytes());
    match &e {
        Ec2Error::Api { status, code, message, request_id } => {
            assert_eq!(*status, 400);
            assert_eq!(code, "InvalidGroup.NotFound");
            assert_eq!(message, "The security group 'sg-1' does not exist");
            assert_eq!(request_id.as_deref(), Some("ea966190-f9aa-478e-9ede-example"));
        }
        other => panic!("{other:?}"),
    }
    assert!(e.is_not_found());
    let short = error(503, b"<ErrorResponse><Error><Code>Throttling</Code><Message>Rate exceeded</Message></Error><RequestId>r1</RequestId></ErrorResponse>");
    assert_eq!(short.code(), Some("Throttling"));
    let html = error(502, b"<html><body>Bad Gateway</body></html>");
    assert_eq!(html.code(), Some("Http502"));
    assert!(html.to_string().contains("Bad Gateway"), "{html}");
    assert_eq!(error(500, b"").code(), Some("Http500"));
}

#[test]
fn malformed_values_are_decode_errors_not_panics() {
    let bad_ip = "<R><reservationSet><item><instancesSet><item><instanceId>i-1</instanceId>\
                  <privateIpAddress>300.1.1.1</privateIpAddress></item></instancesSet></item></reservationSet></R>";
    let e = instances(&root(bad_ip)).unwrap_err();
    assert!(e.to_string().contains("i-1") && e.to_string().contains("300.1.1.1"), "{e}");
    let no_id = "<R><reservationSet><item><instancesSet><item><instanceState/></item></instancesSet></item></reservationSet></R>";
    assert!(matches!(instances(&root(no_id)), Err(Ec2Error::Decode(_))));
    let bad_port =
        "<R><securityGroupInfo><item><groupId>sg-1</groupId><ipPermissions><item><ipProtocol>tcp</ipProtocol>\
                    <fromPort>99999999999</fromPort></item></ipPermissions></item></securityGroupInfo></R>";
    assert!(matches!(security_groups(&root(bad_port)), Err(Ec2Error::Decode(_))));
    // Elements of another shape where lists are expected are skipped, not trusted.
    let odd = "<R><securityGroupInfo><notItem/><item><groupId>sg-1</groupId><tagSet><item><value>no key</value></item></tagSet></item></securityGroupInfo></R>";
    let groups = security_groups(&root(odd)).unwrap();
    assert_eq!(groups.len(), 1);
    assert!(groups[0].tags.is_empty());
}

#[test]
fn instance_groups_from_the_primary_interface_when_left_out() {
    let page = "<R><reservationSet><item><instancesSet><item><instanceId>i-1</instanceId><groupSet/>\
        <networkInterfaceSet>\
          <item><attachment><deviceIndex>1</deviceIndex></attachment><groupSet><item><groupId>sg-second</groupId></item></groupSet></item>\
          <item><attachment><deviceIndex>0</deviceIndex></attachment><groupSet><item><groupId>sg-primary</groupId><groupName>default</groupName></item></groupSet></item>\
        </networkInterfaceSet></item></instancesSet></item></reservationSet></R>";
    let found = instances(&root(page)).unwrap();
    assert_eq!(found[0].security_groups, [GroupRef { group_id: "sg-primary".into(), group_name: "default".into() }]);
}
