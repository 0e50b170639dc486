//! [`FakeEc2`]: the [`Ec2`] contract in memory, as EC2 keeps it, for the connector's tests.
//!
//! Honest where it matters: a rule is keyed by protocol, ports and source (its description is
//! not part of the key, and re-adding a rule keeps the first description); an unknown group is
//! `InvalidGroup.NotFound`; more than [`RULE_LIMIT`](crate::plan::RULE_LIMIT) rules of one address
//! family in a group is `RulesPerSecurityGroupLimitExceeded` and adds nothing; more than 50 tags
//! is `TagLimitExceeded`; descriptions and tag values are checked as EC2 checks them; a group
//! still attached cannot be deleted (`DependencyViolation`). A new group can be made invisible
//! for a number of calls (EC2 is eventually consistent), and any call can be made to fail.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use ipnet::IpNet;
use jitgate_aws::{Ec2, Ec2Error, Filter, GroupRef, Instance, IpPermission, IpRange, SecurityGroup, Tag};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    V4,
    V6,
    Group,
    PrefixList,
}

/// One stored rule.
#[derive(Debug, Clone)]
struct Stored {
    protocol: String,
    from: Option<i32>,
    to: Option<i32>,
    kind: Kind,
    source: String,
    description: Option<String>,
}

type Key = (String, Option<i32>, Option<i32>, Kind, String);

impl Stored {
    fn key(&self) -> Key {
        (self.protocol.clone(), self.from, self.to, self.kind.clone(), self.source.clone())
    }
}

#[derive(Debug, Clone)]
struct Group {
    id: String,
    name: String,
    description: String,
    vpc_id: String,
    rules: Vec<Stored>,
    tags: Vec<Tag>,
}

#[derive(Debug, Default)]
struct State {
    instances: BTreeMap<String, Instance>,
    groups: BTreeMap<String, Group>,
    next: u64,
    lag: u32,
    /// New groups and the calls each stays invisible for.
    invisible: BTreeMap<String, u32>,
    failures: VecDeque<(String, Ec2Error)>,
    calls: Vec<String>,
}

/// EC2 in memory.
#[derive(Debug, Default)]
pub struct FakeEc2 {
    state: Mutex<State>,
}

fn api(code: &str, message: impl Into<String>) -> Ec2Error {
    Ec2Error::Api { status: 400, code: code.into(), message: message.into(), request_id: None }
}

const RULES_PER_GROUP: usize = crate::plan::RULE_LIMIT;
const TAGS_PER_RESOURCE: usize = 50;

fn normal_protocol(p: &str) -> Result<String, Ec2Error> {
    let p = p.trim().to_ascii_lowercase();
    Ok(match p.as_str() {
        "tcp" | "6" => "tcp".into(),
        "udp" | "17" => "udp".into(),
        "icmp" | "1" => "icmp".into(),
        "icmpv6" | "58" => "icmpv6".into(),
        "-1" | "all" => "-1".into(),
        n if n.parse::<u8>().is_ok() => n.into(),
        _ => return Err(api("InvalidParameterValue", format!("Invalid value '{p}' for IP protocol"))),
    })
}

fn check_description(d: &str) -> Result<(), Ec2Error> {
    let ok = d.chars().count() <= 255
        && d.chars().all(|c| c.is_ascii_alphanumeric() || " ._-:/()#,@[]+=&;{}!$*".contains(c));
    if ok {
        Ok(())
    } else {
        Err(api("InvalidParameterValue", format!("Invalid rule description '{d}'")))
    }
}

fn check_tags(tags: &[Tag]) -> Result<(), Ec2Error> {
    for t in tags {
        if t.key.is_empty() || t.key.chars().count() > 128 || t.key.starts_with("aws:") {
            return Err(api("InvalidParameterValue", format!("Invalid tag key '{}'", t.key)));
        }
        if t.value.chars().count() > 256 {
            return Err(api("InvalidParameterValue", format!("Tag value for '{}' is longer than 256", t.key)));
        }
    }
    Ok(())
}

fn stored(p: &IpPermission) -> Result<Vec<Stored>, Ec2Error> {
    let protocol = normal_protocol(&p.protocol)?;
    let (from, to) = if protocol == "-1" { (None, None) } else { (p.from_port, p.to_port) };
    if matches!(protocol.as_str(), "tcp" | "udp") {
        match (from, to) {
            (Some(f), Some(t)) if (0..=65_535).contains(&f) && (f..=65_535).contains(&t) => {}
            _ => return Err(api("InvalidParameterValue", "Invalid port range")),
        }
    }
    let mut out = Vec::new();
    let mut cidr = |r: &IpRange, v6: bool| -> Result<(), Ec2Error> {
        let net: IpNet =
            r.cidr.parse().map_err(|_| api("InvalidParameterValue", format!("CIDR {} is malformed", r.cidr)))?;
        if net.trunc() != net || matches!(net, IpNet::V6(_)) != v6 {
            return Err(api("InvalidParameterValue", format!("CIDR block {} is malformed", r.cidr)));
        }
        if let Some(d) = &r.description {
            check_description(d)?;
        }
        out.push(Stored {
            protocol: protocol.clone(),
            from,
            to,
            kind: if v6 { Kind::V6 } else { Kind::V4 },
            source: net.to_string(),
            description: r.description.clone().filter(|d| !d.is_empty()),
        });
        Ok(())
    };
    for r in &p.ipv4_ranges {
        cidr(r, false)?;
    }
    for r in &p.ipv6_ranges {
        cidr(r, true)?;
    }
    let other = |kind: Kind, source: &String| Stored {
        protocol: protocol.clone(),
        from,
        to,
        kind,
        source: source.clone(),
        description: None,
    };
    out.extend(p.source_groups.iter().map(|g| other(Kind::Group, g)));
    out.extend(p.prefix_lists.iter().map(|l| other(Kind::PrefixList, l)));
    Ok(out)
}

/// A group's rules as EC2 describes them: one permission per protocol and port range.
fn permissions(rules: &[Stored]) -> Vec<IpPermission> {
    let mut by: BTreeMap<(String, Option<i32>, Option<i32>), IpPermission> = BTreeMap::new();
    for r in rules {
        let p = by.entry((r.protocol.clone(), r.from, r.to)).or_insert_with(|| IpPermission {
            protocol: r.protocol.clone(),
            from_port: r.from,
            to_port: r.to,
            ipv4_ranges: vec![],
            ipv6_ranges: vec![],
            source_groups: vec![],
            prefix_lists: vec![],
        });
        let range = IpRange { cidr: r.source.clone(), description: r.description.clone() };
        match r.kind {
            Kind::V4 => p.ipv4_ranges.push(range),
            Kind::V6 => p.ipv6_ranges.push(range),
            Kind::Group => p.source_groups.push(r.source.clone()),
            Kind::PrefixList => p.prefix_lists.push(r.source.clone()),
        }
    }
    by.into_values().collect()
}

impl Group {
    fn view(&self) -> SecurityGroup {
        SecurityGroup {
            group_id: self.id.clone(),
            group_name: self.name.clone(),
            description: self.description.clone(),
            vpc_id: Some(self.vpc_id.clone()),
            ingress: permissions(&self.rules),
            tags: self.tags.clone(),
        }
    }
}

fn set_tags(tags: &mut Vec<Tag>, new: &[Tag]) -> Result<(), Ec2Error> {
    let mut next = tags.clone();
    for t in new {
        match next.iter_mut().find(|x| x.key == t.key) {
            Some(x) => x.value = t.value.clone(),
            None => next.push(t.clone()),
        }
    }
    if next.len() > TAGS_PER_RESOURCE {
        return Err(api("TagLimitExceeded", format!("more than {TAGS_PER_RESOURCE} tags")));
    }
    *tags = next;
    Ok(())
}

fn matches_tags(tags: &[Tag], f: &Filter) -> Option<bool> {
    if let Some(key) = f.name.strip_prefix("tag:") {
        return Some(tags.iter().any(|t| t.key == key && f.values.contains(&t.value)));
    }
    if f.name == "tag-key" {
        return Some(tags.iter().any(|t| f.values.contains(&t.key)));
    }
    None
}

impl State {
    /// Counts the call; the failure injected for it, if any.
    fn enter(&mut self, action: &str, detail: &str) -> Result<(), Ec2Error> {
        self.calls.push(format!("{action} {detail}").trim_end().to_owned());
        for n in self.invisible.values_mut() {
            *n = n.saturating_sub(1);
        }
        if let Some(i) = self.failures.iter().position(|(a, _)| a == action) {
            if let Some((_, e)) = self.failures.remove(i) {
                return Err(e);
            }
        }
        Ok(())
    }

    fn visible(&self, id: &str) -> bool {
        self.groups.contains_key(id) && self.invisible.get(id).is_none_or(|n| *n == 0)
    }

    fn group(&mut self, id: &str) -> Result<&mut Group, Ec2Error> {
        if !self.visible(id) {
            return Err(api("InvalidGroup.NotFound", format!("The security group '{id}' does not exist")));
        }
        self.groups.get_mut(id).ok_or_else(|| api("InvalidGroup.NotFound", format!("'{id}' does not exist")))
    }

    fn refs(&self, ids: &[String]) -> Vec<GroupRef> {
        ids.iter()
            .map(|id| GroupRef {
                group_id: id.clone(),
                group_name: self.groups.get(id).map(|g| g.name.clone()).unwrap_or_default(),
            })
            .collect()
    }
}

impl FakeEc2 {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds an instance in `vpc_id` with these groups (which must exist).
    pub fn add_instance(&self, instance_id: &str, vpc_id: &str, private_ip: &str, groups: &[&str]) -> Instance {
        let mut s = self.lock();
        let ids: Vec<String> = groups.iter().map(|g| (*g).to_owned()).collect();
        let inst = Instance {
            instance_id: instance_id.into(),
            state: "running".into(),
            platform: None,
            vpc_id: Some(vpc_id.into()),
            subnet_id: Some("subnet-1".into()),
            private_ip: private_ip.parse().ok(),
            public_ip: None,
            security_groups: s.refs(&ids),
            tags: vec![],
        };
        s.instances.insert(instance_id.into(), inst.clone());
        inst
    }

    /// Replaces an instance as a test shapes it (state, tags, platform …).
    pub fn put_instance(&self, instance: Instance) {
        self.lock().instances.insert(instance.instance_id.clone(), instance);
    }

    /// Adds a group with these rules, visible at once; its id.
    pub fn add_group(&self, vpc_id: &str, name: &str, rules: &[IpPermission]) -> String {
        let mut s = self.lock();
        s.next += 1;
        let id = format!("sg-{:017x}", s.next);
        let mut stored_rules = Vec::new();
        for p in rules {
            stored_rules.extend(stored(p).unwrap_or_default());
        }
        let g = Group {
            id: id.clone(),
            name: name.into(),
            description: name.into(),
            vpc_id: vpc_id.into(),
            rules: stored_rules,
            tags: vec![],
        };
        s.groups.insert(id.clone(), g);
        id
    }

    /// A group as `DescribeSecurityGroups` would show it (visible or not).
    pub fn group(&self, id: &str) -> Option<SecurityGroup> {
        self.lock().groups.get(id).map(Group::view)
    }

    /// Every group, visible or not.
    pub fn groups(&self) -> Vec<SecurityGroup> {
        self.lock().groups.values().map(Group::view).collect()
    }

    pub fn instance(&self, id: &str) -> Option<Instance> {
        self.lock().instances.get(id).cloned()
    }

    /// New groups stay invisible (not described, `InvalidGroup.NotFound`) for this many calls.
    pub fn set_visibility_lag(&self, calls: u32) {
        self.lock().lag = calls;
    }

    /// The next call of `action` (`AuthorizeSecurityGroupIngress` …) fails with EC2 code `code`.
    pub fn fail_next(&self, action: &str, code: &str) {
        self.lock().failures.push_back((action.into(), api(code, "injected failure")));
    }

    /// The next call of `action` finds the endpoint unreachable.
    pub fn fail_next_transport(&self, action: &str) {
        self.lock().failures.push_back((action.into(), Ec2Error::Transport("injected: connection refused".into())));
    }

    /// Every call made so far (`Action detail`).
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    /// Adds rules behind the connector's back, as someone with the console would.
    pub fn add_rules(&self, group_id: &str, rules: &[IpPermission]) {
        let mut s = self.lock();
        if let Some(g) = s.groups.get_mut(group_id) {
            for p in rules {
                g.rules.extend(stored(p).unwrap_or_default());
            }
        }
    }
}

impl Ec2 for FakeEc2 {
    async fn describe_instances(&self, filters: &[Filter]) -> Result<Vec<Instance>, Ec2Error> {
        let mut s = self.lock();
        s.enter("DescribeInstances", "")?;
        let keep = |i: &Instance| {
            filters.iter().all(|f| match f.name.as_str() {
                "instance-id" => f.values.contains(&i.instance_id),
                "vpc-id" => i.vpc_id.as_ref().is_some_and(|v| f.values.contains(v)),
                "instance-state-name" => f.values.contains(&i.state),
                _ => matches_tags(&i.tags, f).unwrap_or(true),
            })
        };
        Ok(s.instances.values().filter(|i| keep(i)).cloned().collect())
    }

    async fn describe_security_groups(&self, filters: &[Filter]) -> Result<Vec<SecurityGroup>, Ec2Error> {
        let mut s = self.lock();
        s.enter("DescribeSecurityGroups", "")?;
        let keep = |g: &Group| {
            filters.iter().all(|f| match f.name.as_str() {
                "group-id" => f.values.contains(&g.id),
                "group-name" => f.values.contains(&g.name),
                "vpc-id" => f.values.contains(&g.vpc_id),
                _ => matches_tags(&g.tags, f).unwrap_or(true),
            })
        };
        Ok(s.groups.values().filter(|g| s.visible(&g.id) && keep(g)).map(Group::view).collect())
    }

    async fn create_security_group(
        &self,
        name: &str,
        description: &str,
        vpc_id: &str,
        tags: &[Tag],
    ) -> Result<String, Ec2Error> {
        let mut s = self.lock();
        s.enter("CreateSecurityGroup", name)?;
        check_description(description)?;
        check_tags(tags)?;
        if name.is_empty() || name.len() > 255 || name.starts_with("sg-") {
            return Err(api("InvalidParameterValue", format!("Invalid group name '{name}'")));
        }
        if s.groups.values().any(|g| g.name == name && g.vpc_id == vpc_id) {
            return Err(api("InvalidGroup.Duplicate", format!("The security group '{name}' already exists")));
        }
        if tags.len() > TAGS_PER_RESOURCE {
            return Err(api("TagLimitExceeded", "too many tags"));
        }
        s.next += 1;
        let id = format!("sg-{:017x}", s.next);
        let g = Group {
            id: id.clone(),
            name: name.into(),
            description: description.into(),
            vpc_id: vpc_id.into(),
            rules: vec![],
            tags: tags.to_vec(),
        };
        s.groups.insert(id.clone(), g);
        let lag = s.lag;
        if lag > 0 {
            s.invisible.insert(id.clone(), lag);
        }
        Ok(id)
    }

    async fn delete_security_group(&self, group_id: &str) -> Result<(), Ec2Error> {
        let mut s = self.lock();
        s.enter("DeleteSecurityGroup", group_id)?;
        s.group(group_id)?;
        let used = s
            .instances
            .values()
            .any(|i| i.state != "terminated" && i.security_groups.iter().any(|g| g.group_id == group_id));
        if used {
            return Err(api("DependencyViolation", format!("resource {group_id} has a dependent object")));
        }
        s.groups.remove(group_id);
        Ok(())
    }

    async fn authorize_ingress(&self, group_id: &str, permissions: &[IpPermission]) -> Result<(), Ec2Error> {
        let mut s = self.lock();
        s.enter("AuthorizeSecurityGroupIngress", group_id)?;
        let mut new = Vec::new();
        for p in permissions {
            new.extend(stored(p)?);
        }
        let g = s.group(group_id)?;
        let mut next = g.rules.clone();
        for r in new {
            if !next.iter().any(|x| x.key() == r.key()) {
                next.push(r);
            }
        }
        for v6 in [false, true] {
            let n = next.iter().filter(|r| (r.kind == Kind::V6) == v6).count();
            if n > RULES_PER_GROUP {
                return Err(api(
                    "RulesPerSecurityGroupLimitExceeded",
                    "The maximum number of rules per security group has been reached.",
                ));
            }
        }
        g.rules = next;
        Ok(())
    }

    async fn revoke_ingress(&self, group_id: &str, permissions: &[IpPermission]) -> Result<(), Ec2Error> {
        let mut s = self.lock();
        s.enter("RevokeSecurityGroupIngress", group_id)?;
        let mut gone = Vec::new();
        for p in permissions {
            gone.extend(stored(p)?.into_iter().map(|r| r.key()));
        }
        let g = s.group(group_id)?;
        g.rules.retain(|r| !gone.contains(&r.key()));
        Ok(())
    }

    async fn set_instance_groups(&self, instance_id: &str, group_ids: &[String]) -> Result<(), Ec2Error> {
        let mut s = self.lock();
        s.enter("ModifyInstanceAttribute", instance_id)?;
        let Some(inst) = s.instances.get(instance_id).cloned() else {
            return Err(api("InvalidInstanceID.NotFound", format!("The instance ID '{instance_id}' does not exist")));
        };
        if inst.state == "terminated" || inst.state == "shutting-down" {
            return Err(api("IncorrectInstanceState", format!("The instance '{instance_id}' is not in a valid state")));
        }
        if group_ids.is_empty() {
            return Err(api("MissingParameter", "at least one security group is needed"));
        }
        for id in group_ids {
            let vpc = s.group(id)?.vpc_id.clone();
            if Some(&vpc) != inst.vpc_id.as_ref() {
                return Err(api("InvalidParameterValue", format!("{id} is not in the instance's VPC")));
            }
        }
        let refs = s.refs(group_ids);
        if let Some(i) = s.instances.get_mut(instance_id) {
            i.security_groups = refs;
        }
        Ok(())
    }

    async fn create_tags(&self, resource_ids: &[String], tags: &[Tag]) -> Result<(), Ec2Error> {
        let mut guard = self.lock();
        let s = &mut *guard;
        s.enter("CreateTags", &resource_ids.join(","))?;
        check_tags(tags)?;
        for id in resource_ids {
            match s.instances.get_mut(id) {
                Some(i) => set_tags(&mut i.tags, tags)?,
                None => set_tags(&mut s.group(id)?.tags, tags)?,
            }
        }
        Ok(())
    }

    async fn delete_tags(&self, resource_ids: &[String], keys: &[String]) -> Result<(), Ec2Error> {
        let mut guard = self.lock();
        let s = &mut *guard;
        s.enter("DeleteTags", &resource_ids.join(","))?;
        for id in resource_ids {
            match s.instances.get_mut(id) {
                Some(i) => i.tags.retain(|t| !keys.contains(&t.key)),
                None => s.group(id)?.tags.retain(|t| !keys.contains(&t.key)),
            }
        }
        Ok(())
    }
}
