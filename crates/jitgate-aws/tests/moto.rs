//! Every call of the `Ec2` trait against moto's EC2 server (`scripts/moto-venv.sh`): what is
//! written is read back exactly. Skipped (failing under CI=true) without the venv.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use jitgate_aws::testing::Moto;
use jitgate_aws::{Config, Ec2, Ec2Client, Filter, IpPermission, IpRange, Tag};

const RG: &str = "jitgate:resource-group";

fn ids<T>(items: &[T], id: impl Fn(&T) -> &str) -> BTreeSet<String> {
    items.iter().map(|i| id(i).to_owned()).collect()
}

#[tokio::test]
async fn instances_in_two_vpcs_found_by_tag_and_by_vpc() {
    let Some(moto) = Moto::start("instances_in_two_vpcs_found_by_tag_and_by_vpc") else { return };
    let ec2 = moto.client();
    let vpc_a = ec2.create_vpc("10.10.0.0/16").await.unwrap();
    let vpc_b = ec2.create_vpc("10.20.0.0/16").await.unwrap();
    let subnet_a = ec2.create_subnet(&vpc_a, "10.10.1.0/24").await.unwrap();
    let subnet_b = ec2.create_subnet(&vpc_b, "10.20.1.0/24").await.unwrap();
    let in_a = ec2.run_instances(&subnet_a, 2, &[Tag::new(RG, "rg-a"), Tag::new("Name", "web & api")]).await.unwrap();
    let in_b = ec2.run_instances(&subnet_b, 1, &[Tag::new(RG, "rg-b")]).await.unwrap();
    assert_eq!((in_a.len(), in_b.len()), (2, 1));

    let found = ec2.describe_instances(&[Filter::new(format!("tag:{RG}"), ["rg-a"])]).await.unwrap();
    assert_eq!(ids(&found, |i| &i.instance_id), in_a.iter().cloned().collect::<BTreeSet<_>>());
    for i in &found {
        assert_eq!(i.vpc_id.as_deref(), Some(vpc_a.as_str()));
        assert_eq!(i.subnet_id.as_deref(), Some(subnet_a.as_str()));
        assert!(["pending", "running"].contains(&i.state.as_str()), "{}", i.state);
        assert!(i.private_ip.is_some_and(|ip| ip.to_string().starts_with("10.10.1.")), "{:?}", i.private_ip);
        assert_eq!(i.tag(RG), Some("rg-a"));
        assert_eq!(i.tag("Name"), Some("web & api"));
        assert_eq!(i.platform, None);
        assert!(!i.security_groups.is_empty(), "an instance is in its VPC's default group");
    }
    let by_vpc = ec2.describe_instances(&[Filter::new("vpc-id", [vpc_b.as_str()])]).await.unwrap();
    assert_eq!(ids(&by_vpc, |i| &i.instance_id), in_b.iter().cloned().collect::<BTreeSet<_>>());
    let both = ec2.describe_instances(&[Filter::new(format!("tag:{RG}"), ["rg-a", "rg-b"])]).await.unwrap();
    assert_eq!(both.len(), 3);
    let none = ec2.describe_instances(&[Filter::new(format!("tag:{RG}"), ["rg-none"])]).await.unwrap();
    assert!(none.is_empty());
}

#[tokio::test]
async fn describe_follows_every_page() {
    let Some(moto) = Moto::start("describe_follows_every_page") else { return };
    let mut config: Config = Moto::config_for(moto.url());
    config.page_size = Some(5);
    let ec2 = Ec2Client::new(config).unwrap();
    let vpc = ec2.create_vpc("10.30.0.0/16").await.unwrap();
    let subnet = ec2.create_subnet(&vpc, "10.30.1.0/24").await.unwrap();
    let mut launched = BTreeSet::new();
    for _ in 0..4 {
        launched.extend(ec2.run_instances(&subnet, 3, &[Tag::new(RG, "paged")]).await.unwrap());
    }
    let found = ec2.describe_instances(&[Filter::new(format!("tag:{RG}"), ["paged"])]).await.unwrap();
    assert_eq!(ids(&found, |i| &i.instance_id), launched);

    let mut made = BTreeSet::new();
    for n in 0..7 {
        made.insert(ec2.create_security_group(&format!("paged-{n}"), "paged", &vpc, &[]).await.unwrap());
    }
    let groups = ec2.describe_security_groups(&[Filter::new("vpc-id", [vpc.as_str()])]).await.unwrap();
    let found = ids(&groups, |g| &g.group_id);
    assert!(made.is_subset(&found), "{made:?} not all in {found:?}");
    assert_eq!(found.len(), made.len() + 1, "the VPC's default group and ours");
}

fn rule(port: i32, v4: &[(&str, Option<&str>)], v6: &[(&str, Option<&str>)], groups: &[&str]) -> IpPermission {
    let range = |&(cidr, d): &(&str, Option<&str>)| IpRange { cidr: cidr.into(), description: d.map(Into::into) };
    IpPermission {
        protocol: "tcp".into(),
        from_port: Some(port),
        to_port: Some(port),
        ipv4_ranges: v4.iter().map(range).collect(),
        ipv6_ranges: v6.iter().map(range).collect(),
        source_groups: groups.iter().map(|g| g.to_string()).collect(),
        prefix_lists: vec![],
    }
}

/// Rules in an order of their own, each one's sources sorted, to compare what EC2 gives back.
fn normal(rules: &[IpPermission]) -> Vec<IpPermission> {
    let mut out: Vec<IpPermission> = rules
        .iter()
        .cloned()
        .map(|mut r| {
            r.ipv4_ranges.sort_by(|a, b| a.cidr.cmp(&b.cidr));
            r.ipv6_ranges.sort_by(|a, b| a.cidr.cmp(&b.cidr));
            r.source_groups.sort();
            r
        })
        .collect();
    out.sort_by_key(|r| (r.protocol.clone(), r.from_port, r.to_port));
    out
}

#[tokio::test]
async fn security_group_rules_round_trip() {
    let Some(moto) = Moto::start("security_group_rules_round_trip") else { return };
    let ec2 = moto.client();
    let vpc = ec2.create_vpc("10.40.0.0/16").await.unwrap();
    let tags = [Tag::new("jitgate:managed", "true"), Tag::new(RG, "rg-sg")];
    let id = ec2.create_security_group("jitgate-web", "jitgate: just-in-time access", &vpc, &tags).await.unwrap();
    let peer = ec2.create_security_group("peer", "a source group", &vpc, &[]).await.unwrap();

    let by_id = [Filter::new("group-id", [id.as_str()])];
    let g = ec2.describe_security_groups(&by_id).await.unwrap();
    assert_eq!(g.len(), 1);
    assert_eq!((g[0].group_name.as_str(), g[0].description.as_str()), ("jitgate-web", "jitgate: just-in-time access"));
    assert_eq!(g[0].vpc_id.as_deref(), Some(vpc.as_str()));
    assert_eq!(g[0].tag("jitgate:managed"), Some("true"));
    assert_eq!(g[0].tag(RG), Some("rg-sg"));
    assert!(g[0].ingress.is_empty());
    let by_tag = ec2.describe_security_groups(&[Filter::new(format!("tag:{RG}"), ["rg-sg"])]).await.unwrap();
    assert_eq!(ids(&by_tag, |g| &g.group_id), [id.clone()].into());

    let rules = vec![
        rule(
            22,
            &[("203.0.113.7/32", Some("jit alice until 2026-12-01T15:00:00Z")), ("198.51.100.0/24", None)],
            &[("2001:db8::/64", Some("jit bob"))],
            &[],
        ),
        rule(443, &[], &[], &[peer.as_str()]),
    ];
    ec2.authorize_ingress(&id, &rules).await.unwrap();
    let g = ec2.describe_security_groups(&by_id).await.unwrap();
    assert_eq!(normal(&g[0].ingress), normal(&rules));

    // Again: a duplicate is not an error, and nothing changes.
    ec2.authorize_ingress(&id, &rules[..1]).await.unwrap();
    let g = ec2.describe_security_groups(&by_id).await.unwrap();
    assert_eq!(normal(&g[0].ingress), normal(&rules));

    // Revoke one source of the first rule (matched without its description), then the rest.
    ec2.revoke_ingress(&id, &[rule(22, &[("203.0.113.7/32", None)], &[], &[])]).await.unwrap();
    let g = ec2.describe_security_groups(&by_id).await.unwrap();
    let left = normal(&g[0].ingress);
    let expected =
        normal(&[rule(22, &[("198.51.100.0/24", None)], &[("2001:db8::/64", Some("jit bob"))], &[]), rules[1].clone()]);
    assert_eq!(left, expected);
    // Gone already: not an error.
    ec2.revoke_ingress(&id, &[rule(22, &[("203.0.113.7/32", None)], &[], &[])]).await.unwrap();
    ec2.revoke_ingress(&id, &expected).await.unwrap();
    assert!(ec2.describe_security_groups(&by_id).await.unwrap()[0].ingress.is_empty());

    ec2.delete_security_group(&id).await.unwrap();
    assert!(ec2.describe_security_groups(&by_id).await.unwrap().is_empty());
    let e = ec2.delete_security_group(&id).await.unwrap_err();
    assert!(e.is_not_found(), "{e:?}");
    assert_eq!(e.code(), Some("InvalidGroup.NotFound"));
}

#[tokio::test]
async fn instance_groups_and_tags() {
    let Some(moto) = Moto::start("instance_groups_and_tags") else { return };
    let ec2 = moto.client();
    let vpc = ec2.create_vpc("10.50.0.0/16").await.unwrap();
    let subnet = ec2.create_subnet(&vpc, "10.50.1.0/24").await.unwrap();
    let instance = ec2.run_instances(&subnet, 1, &[]).await.unwrap().remove(0);
    let one = ec2.create_security_group("one", "one", &vpc, &[]).await.unwrap();
    let two = ec2.create_security_group("two", "two", &vpc, &[]).await.unwrap();
    let by_id = [Filter::new("instance-id", [instance.as_str()])];

    ec2.set_instance_groups(&instance, &[one.clone(), two.clone()]).await.unwrap();
    let i = ec2.describe_instances(&by_id).await.unwrap().remove(0);
    assert_eq!(ids(&i.security_groups, |g| &g.group_id), [one.clone(), two.clone()].into());
    assert!(i.security_groups.iter().any(|g| g.group_name == "one"));
    ec2.set_instance_groups(&instance, std::slice::from_ref(&two)).await.unwrap();
    let i = ec2.describe_instances(&by_id).await.unwrap().remove(0);
    assert_eq!(ids(&i.security_groups, |g| &g.group_id), [two.clone()].into());

    let both = [instance.clone(), one.clone()];
    ec2.create_tags(&both, &[Tag::new("jitgate:managed", "true"), Tag::new("owner", "ops team")]).await.unwrap();
    ec2.create_tags(&both, &[Tag::new("owner", "security")]).await.unwrap();
    let i = ec2.describe_instances(&by_id).await.unwrap().remove(0);
    assert_eq!((i.tag("jitgate:managed"), i.tag("owner")), (Some("true"), Some("security")));
    let g = ec2.describe_security_groups(&[Filter::new("group-id", [one.as_str()])]).await.unwrap().remove(0);
    assert_eq!(g.tag("owner"), Some("security"));

    ec2.delete_tags(&both, &["owner".into()]).await.unwrap();
    let i = ec2.describe_instances(&by_id).await.unwrap().remove(0);
    assert_eq!((i.tag("jitgate:managed"), i.tag("owner")), (Some("true"), None));
    let g = ec2.describe_security_groups(&[Filter::new("group-id", [one.as_str()])]).await.unwrap().remove(0);
    assert_eq!(g.tags, [Tag::new("jitgate:managed", "true")]);

    let e = ec2.set_instance_groups("i-0000000000000dead", &[one]).await.unwrap_err();
    assert!(e.is_not_found(), "{e:?}");
}
