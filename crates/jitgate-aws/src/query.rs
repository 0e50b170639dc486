//! The form parameters of each EC2 Query API call, as pure functions: what is sent is tested
//! without HTTP. `Action` and `Version` are added by the client.

use crate::model::{Filter, IpPermission, Tag};

/// The EC2 API version every call names.
pub const API_VERSION: &str = "2016-11-15";

/// The parameters of one call, in order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Params(pub Vec<(String, String)>);

impl Params {
    pub fn push(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.0.push((key.into(), value.into()));
    }

    /// The value of `key`, for tests.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The form body of `action` with these parameters (`Action`, `Version` first).
    pub fn body(&self, action: &str) -> String {
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("Action", action).append_pair("Version", API_VERSION);
        for (k, v) in &self.0 {
            form.append_pair(k, v);
        }
        form.finish()
    }
}

fn filters(p: &mut Params, filters: &[Filter]) {
    for (n, f) in filters.iter().enumerate() {
        let n = n + 1;
        p.push(format!("Filter.{n}.Name"), &f.name);
        for (m, v) in f.values.iter().enumerate() {
            p.push(format!("Filter.{n}.Value.{}", m + 1), v);
        }
    }
}

fn page(p: &mut Params, page_size: Option<u32>, next_token: Option<&str>) {
    if let Some(size) = page_size {
        p.push("MaxResults", size.to_string());
    }
    if let Some(token) = next_token {
        p.push("NextToken", token);
    }
}

fn tags(p: &mut Params, prefix: &str, tags: &[Tag]) {
    for (n, t) in tags.iter().enumerate() {
        p.push(format!("{prefix}Tag.{}.Key", n + 1), &t.key);
        p.push(format!("{prefix}Tag.{}.Value", n + 1), &t.value);
    }
}

/// `DescribeInstances`: one page.
pub fn describe_instances(f: &[Filter], page_size: Option<u32>, next_token: Option<&str>) -> Params {
    let mut p = Params::default();
    filters(&mut p, f);
    page(&mut p, page_size, next_token);
    p
}

/// `DescribeSecurityGroups`: one page.
pub fn describe_security_groups(f: &[Filter], page_size: Option<u32>, next_token: Option<&str>) -> Params {
    describe_instances(f, page_size, next_token)
}

/// `CreateSecurityGroup` in a VPC, tagged at creation.
pub fn create_security_group(name: &str, description: &str, vpc_id: &str, t: &[Tag]) -> Params {
    let mut p = Params::default();
    p.push("GroupName", name);
    p.push("GroupDescription", description);
    p.push("VpcId", vpc_id);
    if !t.is_empty() {
        p.push("TagSpecification.1.ResourceType", "security-group");
        tags(&mut p, "TagSpecification.1.", t);
    }
    p
}

/// `DeleteSecurityGroup`.
pub fn delete_security_group(group_id: &str) -> Params {
    let mut p = Params::default();
    p.push("GroupId", group_id);
    p
}

/// `AuthorizeSecurityGroupIngress` (`with_descriptions`) or `RevokeSecurityGroupIngress`
/// (rules are matched without their descriptions).
pub fn ingress(group_id: &str, permissions: &[IpPermission], with_descriptions: bool) -> Params {
    let mut p = Params::default();
    p.push("GroupId", group_id);
    for (n, perm) in permissions.iter().enumerate() {
        let pre = format!("IpPermissions.{}.", n + 1);
        p.push(format!("{pre}IpProtocol"), &perm.protocol);
        if let Some(from) = perm.from_port {
            p.push(format!("{pre}FromPort"), from.to_string());
        }
        if let Some(to) = perm.to_port {
            p.push(format!("{pre}ToPort"), to.to_string());
        }
        for (m, r) in perm.ipv4_ranges.iter().enumerate() {
            p.push(format!("{pre}IpRanges.{}.CidrIp", m + 1), &r.cidr);
            if let (true, Some(d)) = (with_descriptions, &r.description) {
                p.push(format!("{pre}IpRanges.{}.Description", m + 1), d);
            }
        }
        for (m, r) in perm.ipv6_ranges.iter().enumerate() {
            p.push(format!("{pre}Ipv6Ranges.{}.CidrIpv6", m + 1), &r.cidr);
            if let (true, Some(d)) = (with_descriptions, &r.description) {
                p.push(format!("{pre}Ipv6Ranges.{}.Description", m + 1), d);
            }
        }
        for (m, g) in perm.source_groups.iter().enumerate() {
            p.push(format!("{pre}Groups.{}.GroupId", m + 1), g);
        }
        for (m, l) in perm.prefix_lists.iter().enumerate() {
            p.push(format!("{pre}PrefixListIds.{}.PrefixListId", m + 1), l);
        }
    }
    p
}

/// `ModifyInstanceAttribute` with `GroupId.N`: the instance's groups become exactly these.
pub fn set_instance_groups(instance_id: &str, group_ids: &[String]) -> Params {
    let mut p = Params::default();
    p.push("InstanceId", instance_id);
    for (n, g) in group_ids.iter().enumerate() {
        p.push(format!("GroupId.{}", n + 1), g);
    }
    p
}

fn resources(p: &mut Params, ids: &[String]) {
    for (n, id) in ids.iter().enumerate() {
        p.push(format!("ResourceId.{}", n + 1), id);
    }
}

/// `CreateTags`.
pub fn create_tags(resource_ids: &[String], t: &[Tag]) -> Params {
    let mut p = Params::default();
    resources(&mut p, resource_ids);
    tags(&mut p, "", t);
    p
}

/// `DeleteTags`: by key, whatever the value.
pub fn delete_tags(resource_ids: &[String], keys: &[String]) -> Params {
    let mut p = Params::default();
    resources(&mut p, resource_ids);
    for (n, k) in keys.iter().enumerate() {
        p.push(format!("Tag.{}.Key", n + 1), k);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::IpRange;

    fn pairs(p: &Params) -> Vec<(&str, &str)> {
        p.0.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    #[test]
    fn describe_encodes_filters_and_pages() {
        let f = [Filter::new("tag:jitgate:resource-group", ["rg1", "rg 2"]), Filter::new("vpc-id", ["vpc-1"])];
        let p = describe_instances(&f, Some(1000), Some("tok/en=="));
        assert_eq!(
            pairs(&p),
            [
                ("Filter.1.Name", "tag:jitgate:resource-group"),
                ("Filter.1.Value.1", "rg1"),
                ("Filter.1.Value.2", "rg 2"),
                ("Filter.2.Name", "vpc-id"),
                ("Filter.2.Value.1", "vpc-1"),
                ("MaxResults", "1000"),
                ("NextToken", "tok/en=="),
            ]
        );
        assert_eq!(
            p.body("DescribeInstances"),
            "Action=DescribeInstances&Version=2016-11-15&Filter.1.Name=tag%3Ajitgate%3Aresource-group\
             &Filter.1.Value.1=rg1&Filter.1.Value.2=rg+2&Filter.2.Name=vpc-id&Filter.2.Value.1=vpc-1\
             &MaxResults=1000&NextToken=tok%2Fen%3D%3D"
        );
        assert!(describe_security_groups(&[], None, None).0.is_empty());
    }

    #[test]
    fn create_group_tags_at_creation() {
        let p = create_security_group("jit-web", "jitgate: web", "vpc-1", &[Tag::new("a", "1"), Tag::new("b", "")]);
        assert_eq!(
            pairs(&p),
            [
                ("GroupName", "jit-web"),
                ("GroupDescription", "jitgate: web"),
                ("VpcId", "vpc-1"),
                ("TagSpecification.1.ResourceType", "security-group"),
                ("TagSpecification.1.Tag.1.Key", "a"),
                ("TagSpecification.1.Tag.1.Value", "1"),
                ("TagSpecification.1.Tag.2.Key", "b"),
                ("TagSpecification.1.Tag.2.Value", ""),
            ]
        );
        assert_eq!(pairs(&create_security_group("n", "d", "v", &[])).len(), 3);
        assert_eq!(pairs(&delete_security_group("sg-1")), [("GroupId", "sg-1")]);
    }

    fn rules() -> Vec<IpPermission> {
        vec![
            IpPermission {
                protocol: "tcp".into(),
                from_port: Some(22),
                to_port: Some(22),
                ipv4_ranges: vec![
                    IpRange { cidr: "203.0.113.7/32".into(), description: Some("jit alice".into()) },
                    IpRange { cidr: "198.51.100.0/24".into(), description: None },
                ],
                ipv6_ranges: vec![IpRange { cidr: "2001:db8::/64".into(), description: Some("v6".into()) }],
                source_groups: vec!["sg-src".into()],
                prefix_lists: vec!["pl-1".into()],
            },
            IpPermission {
                protocol: "-1".into(),
                from_port: None,
                to_port: None,
                ipv4_ranges: vec![IpRange { cidr: "10.0.0.0/8".into(), description: None }],
                ipv6_ranges: vec![],
                source_groups: vec![],
                prefix_lists: vec![],
            },
        ]
    }

    #[test]
    fn authorize_encodes_every_source_with_descriptions() {
        assert_eq!(
            pairs(&ingress("sg-1", &rules(), true)),
            [
                ("GroupId", "sg-1"),
                ("IpPermissions.1.IpProtocol", "tcp"),
                ("IpPermissions.1.FromPort", "22"),
                ("IpPermissions.1.ToPort", "22"),
                ("IpPermissions.1.IpRanges.1.CidrIp", "203.0.113.7/32"),
                ("IpPermissions.1.IpRanges.1.Description", "jit alice"),
                ("IpPermissions.1.IpRanges.2.CidrIp", "198.51.100.0/24"),
                ("IpPermissions.1.Ipv6Ranges.1.CidrIpv6", "2001:db8::/64"),
                ("IpPermissions.1.Ipv6Ranges.1.Description", "v6"),
                ("IpPermissions.1.Groups.1.GroupId", "sg-src"),
                ("IpPermissions.1.PrefixListIds.1.PrefixListId", "pl-1"),
                ("IpPermissions.2.IpProtocol", "-1"),
                ("IpPermissions.2.IpRanges.1.CidrIp", "10.0.0.0/8"),
            ]
        );
    }

    #[test]
    fn revoke_leaves_descriptions_out() {
        let p = ingress("sg-1", &rules(), false);
        assert!(p.0.iter().all(|(k, _)| !k.contains("Description")));
        assert_eq!(p.get("IpPermissions.1.Ipv6Ranges.1.CidrIpv6"), Some("2001:db8::/64"));
    }

    #[test]
    fn instance_groups_and_tags() {
        assert_eq!(
            pairs(&set_instance_groups("i-1", &["sg-a".into(), "sg-b".into()])),
            [("InstanceId", "i-1"), ("GroupId.1", "sg-a"), ("GroupId.2", "sg-b")]
        );
        let ids = ["i-1".to_owned(), "sg-1".to_owned()];
        assert_eq!(
            pairs(&create_tags(&ids, &[Tag::new("k", "v")])),
            [("ResourceId.1", "i-1"), ("ResourceId.2", "sg-1"), ("Tag.1.Key", "k"), ("Tag.1.Value", "v")]
        );
        assert_eq!(
            pairs(&delete_tags(&ids, &["k".into()])),
            [("ResourceId.1", "i-1"), ("ResourceId.2", "sg-1"), ("Tag.1.Key", "k")]
        );
    }
}
