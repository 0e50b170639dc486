//! What EC2 answers and is asked, as plain data: no XML, no HTTP.

use std::net::IpAddr;

/// A `Filter.N` of a describe call (`tag:jitgate:resource-group`, `vpc-id`, `group-name` …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub name: String,
    pub values: Vec<String>,
}

impl Filter {
    pub fn new(name: impl Into<String>, values: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Filter { name: name.into(), values: values.into_iter().map(Into::into).collect() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    pub key: String,
    pub value: String,
}

impl Tag {
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        Tag { key: key.into(), value: value.into() }
    }
}

/// A security group an instance is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRef {
    pub group_id: String,
    pub group_name: String,
}

/// An EC2 instance, as `DescribeInstances` gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub instance_id: String,
    /// `pending`, `running`, `stopping`, `stopped`, `shutting-down` or `terminated`.
    pub state: String,
    /// `windows` for Windows instances; absent for Linux/UNIX.
    pub platform: Option<String>,
    pub vpc_id: Option<String>,
    pub subnet_id: Option<String>,
    pub private_ip: Option<IpAddr>,
    pub public_ip: Option<IpAddr>,
    pub security_groups: Vec<GroupRef>,
    pub tags: Vec<Tag>,
}

impl Instance {
    /// The value of tag `key`.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags.iter().find(|t| t.key == key).map(|t| t.value.as_str())
    }
}

/// A security group with its inbound rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityGroup {
    pub group_id: String,
    pub group_name: String,
    pub description: String,
    pub vpc_id: Option<String>,
    pub ingress: Vec<IpPermission>,
    pub tags: Vec<Tag>,
}

impl SecurityGroup {
    /// The value of tag `key`.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags.iter().find(|t| t.key == key).map(|t| t.value.as_str())
    }
}

/// One `IpPermissions.N`: a protocol and port range, and the sources it allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpPermission {
    /// `tcp`, `udp`, `icmp`, `icmpv6`, `-1` (all) or a protocol number, as EC2 spells it.
    pub protocol: String,
    /// Absent for protocol `-1`.
    pub from_port: Option<i32>,
    pub to_port: Option<i32>,
    pub ipv4_ranges: Vec<IpRange>,
    pub ipv6_ranges: Vec<IpRange>,
    /// Other security groups allowed as sources (`UserIdGroupPair` group ids).
    pub source_groups: Vec<String>,
    /// Managed prefix lists allowed as sources.
    pub prefix_lists: Vec<String>,
}

/// An IPv4 or IPv6 source range of a rule, with its description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpRange {
    /// `203.0.113.0/24`, `2001:db8::/64`.
    pub cidr: String,
    pub description: Option<String>,
}
