//! Discovery: the instances EC2 lists, as the VMs the connector reports (`PUT
//! /agent/v1/inventory`). Pure over what `DescribeInstances` gave.

use std::collections::BTreeMap;

use jitgate_api_types::agent::{CloudFacts, CloudVmIn};
use jitgate_aws::Instance;

use crate::plan::group_name;

/// The tag whose value names an instance's resource group, by default.
pub const DEFAULT_RESOURCE_GROUP_TAG: &str = "jitgate:resource-group";

/// How instances map to resource groups, and which VPCs are managed.
#[derive(Debug, Clone)]
pub struct Mapping {
    /// The tag whose value is the resource group.
    pub resource_group_tag: String,
    /// `--vpc VPC=RG`: the resource group of each managed VPC. When not empty, instances in
    /// other VPCs are reported unsupported.
    pub vpcs: BTreeMap<String, String>,
}

impl Default for Mapping {
    fn default() -> Self {
        Mapping { resource_group_tag: DEFAULT_RESOURCE_GROUP_TAG.into(), vpcs: BTreeMap::new() }
    }
}

/// Whether `id` is an EC2 instance id (`i-` and 8 or 17 lower-case hex digits).
pub fn is_instance_id(id: &str) -> bool {
    id.strip_prefix("i-").is_some_and(|h| {
        (h.len() == 8 || h.len() == 17) && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Whether the instance's state rules out protecting it.
pub fn is_gone(instance: &Instance) -> bool {
    matches!(instance.state.as_str(), "terminated" | "shutting-down")
}

/// Why the connector cannot protect this instance, if it cannot.
pub fn unsupported(instance: &Instance, mapping: &Mapping) -> Option<String> {
    if is_gone(instance) {
        return Some(format!("the instance is {}", instance.state));
    }
    let Some(vpc) = &instance.vpc_id else { return Some("the instance is in no VPC".into()) };
    if !mapping.vpcs.is_empty() && !mapping.vpcs.contains_key(vpc) {
        return Some(format!("the instance is in {vpc}, a VPC this connector does not manage (--vpc)"));
    }
    let jg = group_name(&instance.instance_id);
    if instance.security_groups.iter().all(|g| g.group_name == jg) {
        return Some("the instance has no security group of its own".into());
    }
    if let Some(rg) = instance.tag(&mapping.resource_group_tag) {
        if let Err(e) = jitgate_core::ids::validate_resource_group(rg.trim()) {
            return Some(format!("its tag {}: {e}", mapping.resource_group_tag));
        }
    }
    None
}

/// The resource group an instance goes to: its tag, else its VPC's mapping, else the join
/// token's (`None`).
pub fn resource_group(instance: &Instance, mapping: &Mapping) -> Option<String> {
    let tagged = instance
        .tag(&mapping.resource_group_tag)
        .map(str::trim)
        .filter(|rg| jitgate_core::ids::validate_resource_group(rg).is_ok());
    tagged.map(str::to_owned).or_else(|| instance.vpc_id.as_ref().and_then(|v| mapping.vpcs.get(v)).cloned())
}

/// The longest fact the server keeps (an id, a display name), in characters.
pub const FACT_CHARS: usize = 255;
/// The most security groups the server keeps of one instance.
pub const GROUPS_PER_VM: usize = 64;
/// The most VMs one inventory may hold.
pub const MAX_VMS: usize = 10_000;

/// A fact bounded for the server: printable, at most [`FACT_CHARS`].
fn bounded(text: &str) -> String {
    text.trim().chars().filter(|c| !c.is_control()).take(FACT_CHARS).collect()
}

/// Every instance as a VM; instances whose id is no EC2 instance id are left out.
pub fn discover(instances: &[Instance], mapping: &Mapping) -> Vec<CloudVmIn> {
    let mut out: Vec<CloudVmIn> = Vec::new();
    for i in instances {
        if !is_instance_id(&i.instance_id) {
            tracing::warn!(id = %jitgate_core::ids::shown(&i.instance_id), "left out an instance whose id is not one");
            continue;
        }
        let jg = group_name(&i.instance_id);
        out.push(CloudVmIn {
            name: i.instance_id.clone(),
            resource_group: resource_group(i, mapping),
            os_type: if i.platform.as_deref().is_some_and(|p| p.eq_ignore_ascii_case("windows")) {
                "Windows".into()
            } else {
                "Linux".into()
            },
            address: i.private_ip.map(|a| a.to_string()),
            public_address: i.public_ip.map(|a| a.to_string()),
            unsupported_reason: unsupported(i, mapping),
            cloud: CloudFacts {
                provider: "aws".into(),
                instance_id: Some(i.instance_id.clone()),
                vpc_id: i.vpc_id.clone(),
                security_groups: i
                    .security_groups
                    .iter()
                    .filter(|g| g.group_name != jg)
                    .map(|g| bounded(&g.group_id))
                    .take(GROUPS_PER_VM)
                    .collect(),
                display_name: i.tag("Name").map(bounded).filter(|n| !n.is_empty()),
            },
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out.dedup_by(|a, b| a.name == b.name);
    if out.len() > MAX_VMS {
        tracing::error!(
            found = out.len(),
            "more instances than one inventory holds ({MAX_VMS}): the rest are not registered; give --vpc to split the region between connectors"
        );
        out.truncate(MAX_VMS);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use jitgate_aws::{GroupRef, Tag};

    fn inst(id: &str) -> Instance {
        Instance {
            instance_id: id.into(),
            state: "running".into(),
            platform: None,
            vpc_id: Some("vpc-1".into()),
            subnet_id: None,
            private_ip: "10.0.0.5".parse().ok(),
            public_ip: "203.0.113.5".parse().ok(),
            security_groups: vec![
                GroupRef { group_id: "sg-1".into(), group_name: "web".into() },
                GroupRef { group_id: "sg-2".into(), group_name: group_name(id) },
            ],
            tags: vec![Tag::new("Name", "web 1")],
        }
    }

    #[test]
    fn an_instance_becomes_a_vm() {
        let i = inst("i-0123456789abcdef0");
        let vms = discover(&[i], &Mapping::default());
        assert_eq!(vms.len(), 1);
        let vm = &vms[0];
        assert_eq!(vm.name, "i-0123456789abcdef0");
        assert_eq!(vm.os_type, "Linux");
        assert_eq!(vm.address.as_deref(), Some("10.0.0.5"));
        assert_eq!(vm.public_address.as_deref(), Some("203.0.113.5"));
        assert_eq!(vm.resource_group, None);
        assert_eq!(vm.unsupported_reason, None);
        assert_eq!(vm.cloud.provider, "aws");
        assert_eq!(vm.cloud.security_groups, ["sg-1"], "the connector's own group is left out");
        assert_eq!(vm.cloud.display_name.as_deref(), Some("web 1"));
    }

    #[test]
    fn windows_and_resource_groups_from_tags_or_vpcs() {
        let mut i = inst("i-01234567");
        i.platform = Some("windows".into());
        i.tags.push(Tag::new("team", "payments"));
        let mapping = Mapping {
            resource_group_tag: "team".into(),
            vpcs: BTreeMap::from([("vpc-1".to_owned(), "net".to_owned())]),
        };
        let vm = &discover(&[i.clone()], &mapping)[0];
        assert_eq!((vm.os_type.as_str(), vm.resource_group.as_deref()), ("Windows", Some("payments")));
        i.tags.clear();
        assert_eq!(discover(&[i.clone()], &mapping)[0].resource_group.as_deref(), Some("net"));
        i.tags.push(Tag::new("team", "bad/name"));
        let vm = &discover(&[i], &mapping)[0];
        assert!(vm.unsupported_reason.as_deref().is_some_and(|r| r.contains("team")), "{vm:?}");
    }

    #[test]
    fn what_cannot_be_protected_says_why() {
        let mapping = Mapping { vpcs: BTreeMap::from([("vpc-1".to_owned(), "rg".to_owned())]), ..Mapping::default() };
        let reason = |i: Instance| discover(&[i], &mapping)[0].unsupported_reason.clone().unwrap_or_default();
        let mut t = inst("i-01234567");
        t.state = "terminated".into();
        assert!(reason(t).contains("terminated"));
        let mut s = inst("i-01234567");
        s.state = "shutting-down".into();
        assert!(reason(s).contains("shutting-down"));
        let mut o = inst("i-01234567");
        o.vpc_id = Some("vpc-9".into());
        assert!(reason(o).contains("vpc-9"));
        let mut n = inst("i-01234567");
        n.security_groups.clear();
        assert!(reason(n).contains("no security group"));
        let mut only_ours = inst("i-01234567");
        only_ours.security_groups.remove(0);
        assert!(reason(only_ours).contains("no security group"));
        let mut stopped = inst("i-01234567");
        stopped.state = "stopped".into();
        assert_eq!(discover(&[stopped], &mapping)[0].unsupported_reason, None, "a stopped instance keeps its groups");
    }

    #[test]
    fn odd_ids_are_left_out() {
        assert!(is_instance_id("i-0123456789abcdef0") && is_instance_id("i-01234567"));
        for bad in ["i-0123", "i-0123456789ABCDEF0", "x-01234567", "i-01234567/../x", ""] {
            assert!(!is_instance_id(bad), "{bad}");
        }
        assert!(discover(&[inst("../etc")], &Mapping::default()).is_empty());
    }
}
