//! Plans carried out on the fake EC2, checked against what it holds afterwards.

use std::collections::BTreeMap;

use jitgate_aws::IpPermission;

use super::world::*;
use crate::desired::{describe, DesiredVm};
use crate::discovery::Mapping;
use crate::memory;
use crate::plan::{plan, Action, Observed, Reason, RULE_LIMIT, TAG_INSTANCE, TAG_MANAGED, TAG_VM};
use crate::reconcile::reconcile;
use crate::rules::Proto;
use crate::sweep::sweep;

#[tokio::test(start_paused = true)]
async fn enable_takes_the_protected_port_away_and_remembers_exactly_what() {
    let w = World::new();
    let before = w.rules(&w.web);
    let round = w.round(&protect(&[(Proto::Tcp, 22)], vec![]), NOW).await;
    assert!(round.failures.is_empty(), "{:?}", round.failures);
    let jg = w.jitgate().expect("the jitgate group");
    assert_eq!(jg.vpc_id.as_deref(), Some("vpc-1"));
    assert_eq!(jg.tag(TAG_MANAGED), Some("true"));
    assert_eq!(jg.tag(TAG_INSTANCE), Some(INSTANCE));
    assert_eq!(jg.tag(TAG_VM), Some(VM));
    assert_eq!(w.instance_groups(), [w.web.clone(), jg.group_id.clone()]);
    assert!(jg.ingress.is_empty(), "no grant, no rule");
    assert_eq!(
        shape(&w.rules(&w.web)),
        [
            ("tcp".into(), Some(0), Some(21), "10.0.0.0/8".into(), Some("office".into())),
            ("tcp".into(), Some(23), Some(65_535), "10.0.0.0/8".into(), Some("office".into())),
            ("tcp".into(), Some(443), Some(443), "0.0.0.0/0".into(), None),
        ],
        "port 22 closed, every other port as it was"
    );
    let (remembered, bad) = memory::decode(&jg.tags);
    assert_eq!(bad, 0);
    let taken: Vec<_> = before.iter().filter(|r| r.from == Some(22) || r.from == Some(0)).cloned().collect();
    assert_eq!(remembered.into_iter().collect::<Vec<_>>(), taken);
    // Converged: the next round does nothing.
    let calls = w.ec2.calls().len();
    let again = w.round(&protect(&[(Proto::Tcp, 22)], vec![]), NOW).await;
    assert!(again.failures.is_empty() && again.removals.is_empty());
    assert!(w.ec2.calls()[calls..].iter().all(|c| c.starts_with("Describe")), "{:?}", &w.ec2.calls()[calls..]);
}

#[tokio::test(start_paused = true)]
async fn a_grant_is_one_rule_with_its_request_and_end() {
    let w = World::new();
    let d = protect(&[(Proto::Tcp, 22)], vec![grant(7, Proto::Tcp, 22, &["203.0.113.7/32"], NOW + 3600)]);
    w.round(&d, NOW).await;
    let jg = w.jitgate().expect("group");
    let rules = w.rules(&jg.group_id);
    assert_eq!(
        shape(&rules),
        [("tcp".into(), Some(22), Some(22), "203.0.113.7/32".into(), Some(describe(7, NOW + 3600)))]
    );
    assert_eq!(rules[0].description.as_deref(), Some("jitgate req=7 exp=2026-12-01T16:04:05Z"));
}

#[tokio::test(start_paused = true)]
async fn grants_of_one_rule_aggregate_to_the_latest_end_and_any_protocol_is_tcp_and_udp() {
    let w = World::new();
    let d = protect(
        &[(Proto::Tcp, 22), (Proto::Udp, 22)],
        vec![
            grant(1, Proto::Tcp, 22, &["203.0.113.0/24"], NOW + 100),
            grant(2, Proto::Tcp, 22, &["203.0.113.0/24"], NOW + 200),
            grant(3, Proto::Udp, 22, &["203.0.113.0/24", "2001:db8::/32"], NOW + 50),
        ],
    );
    w.round(&d, NOW).await;
    let jg = w.jitgate().expect("group");
    assert_eq!(
        shape(&w.rules(&jg.group_id)),
        [
            ("tcp".into(), Some(22), Some(22), "203.0.113.0/24".into(), Some(describe(2, NOW + 200))),
            ("udp".into(), Some(22), Some(22), "203.0.113.0/24".into(), Some(describe(3, NOW + 50))),
            ("udp".into(), Some(22), Some(22), "2001:db8::/32".into(), Some(describe(3, NOW + 50))),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn revoke_expiry_and_extension() {
    let w = World::new();
    let g7 = grant(7, Proto::Tcp, 22, &["203.0.113.7/32"], NOW + 60);
    let g8 = grant(8, Proto::Tcp, 22, &["198.51.100.8/32"], NOW + 600);
    w.round(&protect(&[(Proto::Tcp, 22)], vec![g7.clone(), g8.clone()]), NOW).await;
    let jg = w.jitgate().expect("group").group_id;
    assert_eq!(w.rules(&jg).len(), 2);
    // 8 revoked: its rule goes, reported as revoked.
    let round = w.round(&protect(&[(Proto::Tcp, 22)], vec![g7.clone()]), NOW + 1).await;
    assert_eq!(round.removals.len(), 1);
    assert_eq!((round.removals[0].request_id, round.removals[0].reason), (8, Reason::Revoked));
    assert_eq!(round.removals[0].vm_id, VM);
    assert_eq!(w.rules(&jg).len(), 1);
    // 7 extended: the rule is replaced, nothing ended.
    let longer = crate::desired::DesiredGrant { end: NOW + 900, ..g7.clone() };
    let round = w.round(&protect(&[(Proto::Tcp, 22)], vec![longer]), NOW + 2).await;
    assert!(round.removals.is_empty(), "{:?}", round.removals);
    assert_eq!(w.rules(&jg)[0].description, Some(describe(7, NOW + 900)));
    // A new answer counting the same end a second off changes nothing.
    let calls = w.ec2.calls().len();
    let jitter = crate::desired::DesiredGrant { end: NOW + 901, ..g7.clone() };
    w.round(&protect(&[(Proto::Tcp, 22)], vec![jitter.clone()]), NOW + 3).await;
    assert!(w.ec2.calls()[calls..].iter().all(|c| c.starts_with("Describe")));
    // Past its end (the server still lists it, late): revoked as expired.
    let round = w.round(&protect(&[(Proto::Tcp, 22)], vec![jitter]), NOW + 902).await;
    assert_eq!((round.removals[0].request_id, round.removals[0].reason), (7, Reason::Expired));
    assert!(w.rules(&jg).is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_sweep_removes_every_expired_rule_and_nothing_else() {
    let w = World::new();
    let d = protect(
        &[(Proto::Tcp, 22)],
        vec![
            grant(1, Proto::Tcp, 22, &["203.0.113.1/32"], NOW + 10),
            grant(2, Proto::Tcp, 22, &["203.0.113.2/32"], NOW + 20),
        ],
    );
    w.round(&d, NOW).await;
    let jg = w.jitgate().expect("group").group_id;
    w.ec2.add_rules(&jg, &[perm("tcp", 80, 80, "192.0.2.0/24", Some("someone else"))]);
    let swept = sweep(&w.ec2, NOW + 10, Reason::Expired).await.expect("sweep");
    assert_eq!(swept.removals.len(), 1);
    let r = &swept.removals[0];
    assert_eq!(
        (r.request_id, r.port, r.source.to_string(), r.reason),
        (1, 22, "203.0.113.1/32".into(), Reason::Expired)
    );
    assert_eq!(r.vm_id, VM, "from the group's tag, without any state");
    let left: Vec<_> = w.rules(&jg).into_iter().map(|r| r.from).collect();
    assert_eq!(left, [Some(22), Some(80)]);
    let swept = sweep(&w.ec2, NOW + 10, Reason::Stale).await.expect("sweep");
    assert!(swept.removals.is_empty(), "idempotent");
    // And the next round removes the stranger from the group jitgate owns.
    w.round(&d, NOW + 11).await;
    assert_eq!(
        shape(&w.rules(&jg)),
        [("tcp".into(), Some(22), Some(22), "203.0.113.2/32".into(), Some(describe(2, NOW + 20)))]
    );
}

#[tokio::test(start_paused = true)]
async fn policy_edits_converge_and_disable_restores_exactly_even_without_local_state() {
    let w = World::new();
    let original = w.rules(&w.web);
    w.round(&protect(&[(Proto::Tcp, 22)], vec![]), NOW).await;
    // A second port: the office range is cut around it too.
    w.round(&protect(&[(Proto::Tcp, 22), (Proto::Tcp, 3389)], vec![]), NOW).await;
    let ranges: Vec<_> = w.rules(&w.web).iter().map(|r| (r.from, r.to)).collect();
    assert_eq!(
        ranges,
        [(Some(0), Some(21)), (Some(23), Some(3388)), (Some(443), Some(443)), (Some(3390), Some(65_535))]
    );
    // Port 22 no longer protected: its SSH rule is back, with its description.
    w.round(&protect(&[(Proto::Tcp, 3389)], vec![]), NOW).await;
    let now: Vec<_> = shape(&w.rules(&w.web));
    assert!(now.contains(&("tcp".into(), Some(22), Some(22), "0.0.0.0/0".into(), Some("ssh".into()))), "{now:?}");
    assert!(now.contains(&("tcp".into(), Some(0), Some(3388), "10.0.0.0/8".into(), Some("office".into()))), "{now:?}");
    let jg = w.jitgate().expect("group");
    assert_eq!(memory::decode(&jg.tags).0.len(), 1, "only the office rule is still remembered");
    // Disabled, by a round that has nothing but EC2 (as after losing the connector's machine).
    let round = w.round(&DesiredVm::default(), NOW).await;
    assert!(round.failures.is_empty(), "{:?}", round.failures);
    assert_eq!(w.rules(&w.web), original, "exactly what was there");
    assert!(w.jitgate().is_none(), "deleted");
    assert_eq!(w.instance_groups(), std::slice::from_ref(&w.web));
}

#[tokio::test(start_paused = true)]
async fn an_all_traffic_rule_is_cut_into_tcp_udp_and_icmp_and_restored_whole() {
    let w = World::new();
    w.ec2.add_rules(&w.web, &[perm("-1", 0, 0, "192.168.0.0/16", Some("lan"))]);
    let original = w.rules(&w.web);
    w.round(&protect(&[(Proto::Udp, 53)], vec![]), NOW).await;
    let lan: Vec<_> = w.rules(&w.web).into_iter().filter(|r| r.source.text() == "192.168.0.0/16").collect();
    assert_eq!(
        lan.iter().map(|r| (r.proto.as_ec2().to_owned(), r.from, r.to)).collect::<Vec<_>>(),
        [
            ("tcp".into(), Some(0), Some(65_535)),
            ("udp".into(), Some(0), Some(52)),
            ("udp".into(), Some(54), Some(65_535)),
            ("icmp".into(), Some(-1), Some(-1)),
        ]
    );
    w.round(&DesiredVm::default(), NOW).await;
    assert_eq!(w.rules(&w.web), original);
}

#[tokio::test(start_paused = true)]
async fn a_rule_added_behind_the_connector_is_taken_away_and_remembered_too() {
    let w = World::new();
    w.round(&protect(&[(Proto::Tcp, 22)], vec![]), NOW).await;
    w.ec2.add_rules(&w.web, &[perm("tcp", 20, 30, "198.51.100.0/24", Some("vendor"))]);
    let with_vendor = {
        let mut all = w.rules(&w.web);
        all.retain(|r| r.source.text() == "198.51.100.0/24");
        all
    };
    w.round(&protect(&[(Proto::Tcp, 22)], vec![]), NOW).await;
    let vendor: Vec<_> =
        w.rules(&w.web).into_iter().filter(|r| r.source.text() == "198.51.100.0/24").map(|r| (r.from, r.to)).collect();
    assert_eq!(vendor, [(Some(20), Some(21)), (Some(23), Some(30))]);
    w.round(&DesiredVm::default(), NOW).await;
    let back: Vec<_> = w.rules(&w.web).into_iter().filter(|r| r.source.text() == "198.51.100.0/24").collect();
    assert_eq!(back, with_vendor);
}

#[tokio::test(start_paused = true)]
async fn more_grant_rules_than_the_limit_wait_and_the_vm_fails() {
    let w = World::new();
    let grants = (0..RULE_LIMIT as i64 + 3)
        .map(|n| grant(n + 1, Proto::Tcp, 22, &[format!("203.0.113.{n}/32").as_str()], NOW + 600))
        .collect();
    let round = w.round(&protect(&[(Proto::Tcp, 22)], grants), NOW).await;
    let jg = w.jitgate().expect("group").group_id;
    assert_eq!(w.rules(&jg).len(), RULE_LIMIT);
    let failure = round.failures.get(VM).expect("failing");
    assert!(failure.contains("3 grant rules") && failure.contains("60"), "{failure}");
    assert!(w.rules(&jg).iter().all(|r| r.source.text() != "203.0.113.62/32"), "the latest requests wait");
}

#[tokio::test(start_paused = true)]
async fn an_enable_that_cannot_be_remembered_is_refused() {
    let w = World::new();
    let long = "x".repeat(200);
    let many: Vec<_> = (0..48).map(|n| perm("tcp", 22, 22, &format!("172.16.{n}.0/24"), Some(&long))).collect();
    w.ec2.add_rules(&w.web, &many);
    let before = w.rules(&w.web);
    let round = w
        .round(&protect(&[(Proto::Tcp, 22)], vec![grant(1, Proto::Tcp, 22, &["203.0.113.1/32"], NOW + 60)]), NOW)
        .await;
    assert!(round.failures.get(VM).is_some_and(|f| f.contains("remember")), "{:?}", round.failures);
    assert!(w.jitgate().is_none(), "no group");
    assert_eq!(w.rules(&w.web), before, "nothing taken away");
}

#[tokio::test(start_paused = true)]
async fn a_new_group_not_yet_visible_is_waited_for() {
    let w = World::new();
    w.ec2.set_visibility_lag(3);
    let d = protect(&[(Proto::Tcp, 22)], vec![grant(1, Proto::Tcp, 22, &["203.0.113.1/32"], NOW + 60)]);
    let round = w.round(&d, NOW).await;
    assert!(round.failures.is_empty(), "{:?}", round.failures);
    let jg = w.jitgate().expect("group").group_id;
    assert_eq!(w.rules(&jg).len(), 1);
    assert!(w.instance_groups().contains(&jg));
}

#[tokio::test(start_paused = true)]
async fn a_failed_step_is_reported_and_the_next_round_finishes_the_work() {
    let w = World::new();
    let d = protect(&[(Proto::Tcp, 22)], vec![]);
    w.ec2.fail_next("RevokeSecurityGroupIngress", "UnauthorizedOperation");
    let round = w.round(&d, NOW).await;
    assert!(round.failures.get(VM).is_some_and(|f| f.contains("UnauthorizedOperation")), "{:?}", round.failures);
    // The memory was written before: nothing is lost by the failure.
    assert_eq!(memory::decode(&w.jitgate().expect("group").tags).0.len(), 2);
    let round = w.round(&d, NOW).await;
    assert!(round.failures.is_empty());
    assert!(w.rules(&w.web).iter().all(|r| !r.allows(&(Proto::Tcp, 22))));
    w.ec2.fail_next("DeleteSecurityGroup", "DependencyViolation");
    w.ec2.fail_next("DeleteSecurityGroup", "DependencyViolation");
    let round = w.round(&DesiredVm::default(), NOW).await;
    assert!(round.failures.is_empty(), "a group just detached is waited for: {:?}", round.failures);
    assert!(w.jitgate().is_none());
}

#[tokio::test(start_paused = true)]
async fn a_terminated_instance_leaves_no_group_behind() {
    let w = World::new();
    w.round(&protect(&[(Proto::Tcp, 22)], vec![grant(1, Proto::Tcp, 22, &["203.0.113.1/32"], NOW + 60)]), NOW).await;
    let mut i = w.ec2.instance(INSTANCE).expect("instance");
    i.state = "terminated".into();
    w.ec2.put_instance(i);
    let round = w.round(&protect(&[(Proto::Tcp, 22)], vec![]), NOW).await;
    assert!(w.jitgate().is_none());
    assert_eq!(round.removals.len(), 1);
    assert!(
        w.rules(&w.web).iter().any(|r| r.description.as_deref() == Some("ssh")),
        "originals back in the shared group"
    );
}

#[test]
fn the_plan_for_a_new_instance_in_order() {
    let w = World::new();
    let inst = w.ec2.instance(INSTANCE).expect("instance");
    let groups = BTreeMap::from([(w.web.clone(), w.ec2.group(&w.web).expect("web"))]);
    let d = protect(&[(Proto::Tcp, 22)], vec![grant(1, Proto::Tcp, 22, &["203.0.113.1/32"], NOW + 60)]);
    let p = plan(Observed { instance: &inst, groups: &groups, jitgate: None }, &d, NOW);
    let kinds: Vec<&str> = p
        .actions
        .iter()
        .map(|a| match a {
            Action::CreateGroup { .. } => "create",
            Action::SetGroups { .. } => "attach",
            Action::Authorize { target: crate::plan::Target::New, .. } => "grant",
            Action::Authorize { .. } => "authorize-rest",
            Action::Revoke { .. } => "revoke-original",
            Action::CreateTags { .. } => "tags",
            Action::DeleteTags { .. } => "untag",
            Action::DeleteGroup { .. } => "delete",
        })
        .collect();
    assert_eq!(kinds, ["create", "attach", "grant", "authorize-rest", "revoke-original"]);
    // Not protected and never enabled: nothing at all.
    let none = plan(Observed { instance: &inst, groups: &groups, jitgate: None }, &Default::default(), NOW);
    assert_eq!(none, Default::default());
    // A group of the instance EC2 did not show: nothing is done on half a picture.
    let empty = BTreeMap::new();
    let p = plan(Observed { instance: &inst, groups: &empty, jitgate: None }, &d, NOW);
    assert!(p.actions.is_empty() && p.failures[0].contains("could not be read"));
}

#[tokio::test(start_paused = true)]
async fn a_shared_group_keeps_the_port_closed_while_any_instance_in_it_is_protected() {
    const OTHER: &str = "i-0fedcba9876543210";
    let w = World::new();
    w.ec2.add_instance(OTHER, "vpc-1", "10.0.0.6", &[w.web.as_str()]);
    let original = w.rules(&w.web);
    let other = DesiredVm { vm_id: VM.replace(INSTANCE, OTHER), ..protect(&[(Proto::Tcp, 22)], vec![]) };
    let mapping = Mapping::default();
    let both = BTreeMap::from([
        (INSTANCE.to_owned(), protect(&[(Proto::Tcp, 22)], vec![])),
        (OTHER.to_owned(), other.clone()),
    ]);
    reconcile(&w.ec2, &both, &mapping, NOW).await.expect("round");
    assert!(w.rules(&w.web).iter().all(|r| !r.allows(&(Proto::Tcp, 22))));
    // The first instance is no longer protected; the second still is, in the same group.
    let round = reconcile(&w.ec2, &BTreeMap::from([(OTHER.to_owned(), other)]), &mapping, NOW).await.expect("round");
    assert!(round.failures.is_empty(), "{:?}", round.failures);
    assert!(w.jitgate().is_none());
    assert!(w.rules(&w.web).iter().all(|r| !r.allows(&(Proto::Tcp, 22))), "{:?}", w.rules(&w.web));
    let theirs = w.ec2.groups().into_iter().find(|g| g.group_name == crate::plan::group_name(OTHER)).expect("group");
    assert_eq!(memory::decode(&theirs.tags).0.len(), 2, "the second instance remembers them now");
    // And when nothing is protected any more, the group is as it was.
    reconcile(&w.ec2, &BTreeMap::new(), &mapping, NOW).await.expect("round");
    assert_eq!(w.rules(&w.web), original);
    assert!(w.ec2.groups().iter().all(|g| !g.group_name.starts_with("jitgate-")));
}

#[tokio::test(start_paused = true)]
async fn a_rule_allowing_a_security_group_is_taken_away_and_restored_too() {
    let w = World::new();
    let peer = IpPermission {
        protocol: "tcp".into(),
        from_port: Some(22),
        to_port: Some(22),
        ipv4_ranges: vec![],
        ipv6_ranges: vec![],
        source_groups: vec!["sg-0000000000000abcd".into()],
        prefix_lists: vec!["pl-0123abcd".into()],
    };
    w.ec2.add_rules(&w.web, &[peer]);
    let original = w.rules(&w.web);
    w.round(&protect(&[(Proto::Tcp, 22)], vec![]), NOW).await;
    assert!(w.rules(&w.web).iter().all(|r| !r.allows(&(Proto::Tcp, 22))));
    w.round(&DesiredVm::default(), NOW).await;
    assert_eq!(w.rules(&w.web), original);
}

#[tokio::test(start_paused = true)]
async fn a_group_of_the_jitgate_name_made_by_hand_is_taken_over_with_the_memory_written_first() {
    let w = World::new();
    let original = w.rules(&w.web);
    let by_hand = w.ec2.add_group("vpc-1", &crate::plan::group_name(INSTANCE), &[]);
    w.round(&protect(&[(Proto::Tcp, 22)], vec![]), NOW).await;
    let jg = w.jitgate().expect("group");
    assert_eq!(jg.group_id, by_hand);
    assert_eq!(jg.tag(TAG_MANAGED), Some("true"));
    assert_eq!(memory::decode(&jg.tags).0.len(), 2);
    w.round(&DesiredVm::default(), NOW).await;
    assert_eq!(w.rules(&w.web), original);
}

#[tokio::test(start_paused = true)]
async fn a_grant_gone_within_a_second_or_two_of_its_end_is_reported_expired() {
    let w = World::new();
    let g = grant(3, Proto::Tcp, 22, &["203.0.113.3/32"], NOW + 60);
    w.round(&protect(&[(Proto::Tcp, 22)], vec![g]), NOW).await;
    // The server's grant ended a little before the rule's end, which was rounded up.
    let round = w.round(&protect(&[(Proto::Tcp, 22)], vec![]), NOW + 59).await;
    assert_eq!((round.removals[0].request_id, round.removals[0].reason), (3, Reason::Expired));
}
