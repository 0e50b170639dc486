//! A small EC2 world for the tests: one VPC, an instance, its own group with a few rules.

use std::collections::{BTreeMap, BTreeSet};

use jitgate_aws::{IpPermission, IpRange, SecurityGroup};

use crate::desired::{DesiredGrant, DesiredVm, UnixSecs};
use crate::discovery::Mapping;
use crate::fake::FakeEc2;
use crate::plan::group_name;
use crate::reconcile::{reconcile, Round};
use crate::rules::{flatten, Proto, Rule};

pub const NOW: UnixSecs = 1_796_137_445;
pub const INSTANCE: &str = "i-0123456789abcdef0";
pub const VM: &str =
    "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/i-0123456789abcdef0";

pub fn perm(proto: &str, from: i32, to: i32, cidr: &str, description: Option<&str>) -> IpPermission {
    let range = IpRange { cidr: cidr.into(), description: description.map(Into::into) };
    let (v4, v6) = if cidr.contains(':') { (vec![], vec![range]) } else { (vec![range], vec![]) };
    IpPermission {
        protocol: proto.into(),
        from_port: (proto != "-1").then_some(from),
        to_port: (proto != "-1").then_some(to),
        ipv4_ranges: v4,
        ipv6_ranges: v6,
        source_groups: vec![],
        prefix_lists: vec![],
    }
}

pub struct World {
    pub ec2: FakeEc2,
    pub web: String,
}

impl World {
    /// An instance in `vpc-1` whose group `web` allows SSH from anywhere, every TCP port from the
    /// office, HTTPS from anywhere.
    pub fn new() -> World {
        let ec2 = FakeEc2::new();
        let web = ec2.add_group(
            "vpc-1",
            "web",
            &[
                perm("tcp", 22, 22, "0.0.0.0/0", Some("ssh")),
                perm("tcp", 0, 65_535, "10.0.0.0/8", Some("office")),
                perm("tcp", 443, 443, "0.0.0.0/0", None),
            ],
        );
        ec2.add_instance(INSTANCE, "vpc-1", "10.0.0.5", &[web.as_str()]);
        World { ec2, web }
    }

    /// The rules of a group, sorted.
    pub fn rules(&self, group: &str) -> Vec<Rule> {
        let mut r = self.ec2.group(group).map(|g| flatten(group, &g.ingress)).unwrap_or_default();
        r.sort();
        r
    }

    pub fn jitgate(&self) -> Option<SecurityGroup> {
        self.ec2.groups().into_iter().find(|g| g.group_name == group_name(INSTANCE))
    }

    pub fn instance_groups(&self) -> Vec<String> {
        self.ec2
            .instance(INSTANCE)
            .map(|i| i.security_groups.into_iter().map(|g| g.group_id).collect())
            .unwrap_or_default()
    }

    pub async fn round(&self, desired: &DesiredVm, now: UnixSecs) -> Round {
        let map = BTreeMap::from([(INSTANCE.to_owned(), desired.clone())]);
        reconcile(&self.ec2, &map, &Mapping::default(), now).await.expect("reconcile")
    }
}

pub fn protect(ports: &[(Proto, u16)], grants: Vec<DesiredGrant>) -> DesiredVm {
    DesiredVm { vm_id: VM.into(), ports: ports.iter().cloned().collect::<BTreeSet<_>>(), grants }
}

pub fn grant(request_id: i64, proto: Proto, port: u16, sources: &[&str], end: UnixSecs) -> DesiredGrant {
    DesiredGrant { request_id, proto, port, sources: sources.iter().map(|s| s.parse().expect("net")).collect(), end }
}

/// A rule's (protocol, from, to, source, description), for comparing.
pub type Shape = (String, Option<i32>, Option<i32>, String, Option<String>);

pub fn shape(rules: &[Rule]) -> Vec<Shape> {
    rules.iter().map(|r| (r.proto.as_ec2().to_owned(), r.from, r.to, r.source.text(), r.description.clone())).collect()
}
