//! The connector's rounds and sweep on moto's EC2 server, through the real EC2 client: what the
//! fake promises, EC2's API does.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

use jitgate_aws::testing::{ipv4_rules as rules, web_instance, Moto};
use jitgate_aws::{Ec2, Ec2Client, Filter, SecurityGroup};
use jitgate_connector::desired::{describe, DesiredGrant, DesiredVm};
use jitgate_connector::discovery::{discover, Mapping};
use jitgate_connector::memory;
use jitgate_connector::plan::{Reason, RULE_LIMIT};
use jitgate_connector::reconcile::reconcile;
use jitgate_connector::rules::Proto;
use jitgate_connector::sweep::sweep;

const VM: &str = "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/aws/providers/Microsoft.Compute/virtualMachines/";

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

struct Aws {
    ec2: Ec2Client,
    instance: String,
    web: String,
}

impl Aws {
    async fn new(moto: &Moto) -> Aws {
        let ec2 = moto.client();
        let (instance, web) = web_instance(&ec2).await.expect("an instance in its group");
        Aws { ec2, instance, web }
    }

    async fn group(&self, id: &str) -> SecurityGroup {
        let found = self.ec2.describe_security_groups(&[Filter::new("group-id", [id])]).await.expect("describe");
        found.into_iter().next().expect("the group")
    }

    async fn jitgate(&self) -> Option<SecurityGroup> {
        let filters = [Filter::new("tag:jitgate:instance", [self.instance.as_str()])];
        self.ec2.describe_security_groups(&filters).await.expect("describe").into_iter().next()
    }

    fn desired(&self, ports: &[(Proto, u16)], grants: Vec<DesiredGrant>) -> BTreeMap<String, DesiredVm> {
        let vm = DesiredVm {
            vm_id: format!("{VM}{}", self.instance),
            ports: ports.iter().cloned().collect::<BTreeSet<_>>(),
            grants,
        };
        BTreeMap::from([(self.instance.clone(), vm)])
    }
}

fn grant(request_id: i64, source: &str, end: i64) -> DesiredGrant {
    DesiredGrant { request_id, proto: Proto::Tcp, port: 22, sources: vec![source.parse().unwrap()], end }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enable_grant_expire_and_disable_on_moto() {
    let Some(moto) = Moto::start("enable_grant_expire_and_disable_on_moto") else { return };
    let aws = Aws::new(&moto).await;
    let original = rules(&aws.group(&aws.web).await);
    let mapping = Mapping::default();
    let t = now();

    // Discovery sees the instance as a VM.
    let instances = aws.ec2.describe_instances(&[]).await.expect("instances");
    let vms = discover(&instances, &mapping);
    let vm = vms.iter().find(|v| v.name == aws.instance).expect("discovered");
    assert_eq!(vm.cloud.security_groups, std::slice::from_ref(&aws.web));
    assert_eq!(vm.cloud.display_name.as_deref(), Some("web1"));
    assert_eq!(vm.unsupported_reason, None);

    // Enable with a grant.
    let d = aws.desired(&[(Proto::Tcp, 22)], vec![grant(7, "203.0.113.7/32", t + 3600)]);
    let round = reconcile(&aws.ec2, &d, &mapping, t).await.expect("round");
    assert!(round.failures.is_empty(), "{:?}", round.failures);
    let jg = aws.jitgate().await.expect("the jitgate group");
    assert_eq!(jg.tag("jitgate:managed"), Some("true"));
    assert_eq!(memory::decode(&jg.tags).0.len(), 2);
    assert_eq!(rules(&jg), [("tcp".into(), Some(22), Some(22), "203.0.113.7/32".into(), Some(describe(7, t + 3600)))]);
    assert_eq!(
        rules(&aws.group(&aws.web).await),
        [
            ("tcp".into(), Some(0), Some(21), "10.0.0.0/8".into(), Some("office".into())),
            ("tcp".into(), Some(23), Some(65_535), "10.0.0.0/8".into(), Some("office".into())),
            ("tcp".into(), Some(443), Some(443), "0.0.0.0/0".into(), None),
        ]
    );
    let groups: Vec<String> = aws
        .ec2
        .describe_instances(&[Filter::new("instance-id", [aws.instance.as_str()])])
        .await
        .expect("describe")
        .into_iter()
        .flat_map(|i| i.security_groups)
        .map(|g| g.group_id)
        .collect();
    assert_eq!(groups, [aws.web.clone(), jg.group_id.clone()]);
    // Converged: nothing more to do.
    let again = reconcile(&aws.ec2, &d, &mapping, t).await.expect("round");
    assert!(again.failures.is_empty() && again.removals.is_empty());

    // The sweep removes the rule once its end has passed.
    let swept = sweep(&aws.ec2, t + 3600, Reason::Expired).await.expect("sweep");
    assert_eq!(swept.removals.len(), 1);
    assert!(aws.jitgate().await.expect("group").ingress.is_empty());

    // Disabled: the original rules exactly, the group gone.
    let round = reconcile(&aws.ec2, &BTreeMap::new(), &mapping, t).await.expect("round");
    assert!(round.failures.is_empty(), "{:?}", round.failures);
    assert!(aws.jitgate().await.is_none());
    assert_eq!(rules(&aws.group(&aws.web).await), original);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rule_limit_on_moto() {
    let Some(moto) = Moto::start("the_rule_limit_on_moto") else { return };
    let aws = Aws::new(&moto).await;
    let t = now();
    let grants = (1..=RULE_LIMIT as i64 + 2).map(|n| grant(n, &format!("198.51.100.{n}/32"), t + 600)).collect();
    let d = aws.desired(&[(Proto::Tcp, 22)], grants);
    let round = reconcile(&aws.ec2, &d, &Mapping::default(), t).await.expect("round");
    let failure = round.failures.values().next().expect("failing");
    assert!(failure.contains("2 grant rules") && failure.contains("60"), "{failure}");
    assert_eq!(rules(&aws.jitgate().await.expect("group")).len(), RULE_LIMIT);
}
