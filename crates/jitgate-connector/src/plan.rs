//! The plan: from what EC2 shows of one instance and what is desired of it, the EC2 actions that
//! make the one the other. Pure: no EC2, no clock (`now` is a parameter).
//!
//! - **Enable** (the VM gets protected ports): the jitgate group `jitgate-<instance-id>` is made in
//!   the instance's VPC and attached beside its other groups, and every rule of those groups that
//!   lets a protected port through is taken away — a range around the port is cut and the rest
//!   authorized back, so other ports stay as they were. Each rule taken away is remembered first
//!   in the jitgate group's tags ([`crate::memory`]); a rule that cannot be remembered is left
//!   alone and the VM is reported failing.
//! - **Grants**: one rule in the jitgate group per (protocol, port, source), described with its
//!   request and end (`jitgate req=… exp=…`); grants of one rule aggregate to the latest end; an
//!   end that changed replaces the rule; rules past their end or no longer desired are revoked.
//!   At most [`RULE_LIMIT`] rules per address family: the extra grants wait, the VM is failing.
//! - **Policy edits** converge: the remembered rules are what the instance's groups should hold
//!   without the protected ports, whatever those are now.
//! - **Disable** (no protected port left): the remembered rules restored exactly, the group
//!   detached and deleted.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use jitgate_aws::{Instance, SecurityGroup, Tag};

use crate::desired::{describe, parse_note, DesiredVm, UnixSecs};
use crate::memory;
use crate::rules::{flatten, Port, Proto, Rule, RuleKey, Source};

/// EC2's default quota of inbound rules per security group, for IPv4 and IPv6 each.
pub const RULE_LIMIT: usize = 60;
/// Ends closer than this are the same end (each state answer counts remaining times afresh).
pub const END_TOLERANCE: UnixSecs = 2;
pub const TAG_MANAGED: &str = "jitgate:managed";
pub const TAG_INSTANCE: &str = "jitgate:instance";
pub const TAG_VM: &str = "jitgate:vm";

/// The name of an instance's jitgate group.
pub fn group_name(instance_id: &str) -> String {
    format!("jitgate-{instance_id}")
}

/// A security group an action works on: one that exists, or the one the plan creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Id(String),
    /// The group made by this plan's [`Action::CreateGroup`].
    New,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    CreateGroup {
        name: String,
        description: String,
        vpc_id: String,
        tags: Vec<Tag>,
    },
    /// The instance's groups become exactly these.
    SetGroups {
        instance_id: String,
        groups: Vec<Target>,
    },
    CreateTags {
        target: Target,
        tags: Vec<Tag>,
    },
    DeleteTags {
        target: Target,
        keys: Vec<String>,
    },
    Authorize {
        target: Target,
        rules: Vec<Rule>,
    },
    Revoke {
        target: Target,
        rules: Vec<Rule>,
    },
    DeleteGroup {
        target: Target,
    },
}

/// Why a grant's rule was removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Its end passed.
    Expired,
    /// It was no longer desired before its end.
    Revoked,
    /// Found past its end when the connector started.
    Stale,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Expired => "expired",
            Reason::Revoked => "revoked",
            Reason::Stale => "stale",
        }
    }
}

/// A grant's rule removed (reported to the server once the removal is done).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removal {
    pub vm_id: String,
    pub request_id: i64,
    pub proto: Proto,
    pub port: u16,
    pub source: IpNet,
    pub reason: Reason,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub actions: Vec<Action>,
    /// Reported once every action succeeded.
    pub removals: Vec<Removal>,
    /// Why the VM is not (fully) enforced, even when every action succeeds.
    pub failures: Vec<String>,
}

/// What EC2 shows of one instance.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    pub instance: &'a Instance,
    /// Security groups by id (the instance's among them).
    pub groups: &'a BTreeMap<String, SecurityGroup>,
    /// Its jitgate group, when there is one.
    pub jitgate: Option<&'a SecurityGroup>,
}

/// The removal a grant rule's revocation reports, when it is a grant rule.
pub fn removal_of(rule: &Rule, vm_id: &str, now: UnixSecs, live: &BTreeSet<i64>) -> Option<Removal> {
    let note = parse_note(rule.description.as_deref()?)?;
    let (Source::Cidr(net), true, Some(port)) = (&rule.source, rule.proto.has_ports(), rule.from) else { return None };
    let reason = if note.end <= now {
        Reason::Expired
    } else if live.contains(&note.request_id) {
        // Replaced by a rule of the same request (a new end): nothing ended.
        return None;
    } else if note.end <= now + END_TOLERANCE {
        // No longer desired within a second or two of its end (which was rounded up to a whole
        // second): the grant ended.
        Reason::Expired
    } else {
        Reason::Revoked
    };
    Some(Removal {
        vm_id: vm_id.to_owned(),
        request_id: note.request_id,
        proto: rule.proto.clone(),
        port: u16::try_from(port).ok()?,
        source: *net,
        reason,
    })
}

fn family(net: &IpNet) -> usize {
    usize::from(matches!(net, IpNet::V6(_)))
}

/// The plan for one instance.
pub fn plan(obs: Observed<'_>, desired: &DesiredVm, now: UnixSecs) -> Plan {
    let mut out = Plan::default();
    let inst = obs.instance;
    let jg = obs.jitgate;
    let jg_name = group_name(&inst.instance_id);
    let is_jg = |id: &str, name: &str| jg.is_some_and(|g| g.group_id == id) || name == jg_name;
    let others: Vec<String> = inst
        .security_groups
        .iter()
        .filter(|g| !is_jg(&g.group_id, &g.group_name))
        .map(|g| g.group_id.clone())
        .collect();
    let attached = jg.is_some_and(|g| inst.security_groups.iter().any(|r| r.group_id == g.group_id));
    let protected = !desired.ports.is_empty();
    if jg.is_none() && !protected {
        return out;
    }
    // The rules of the instance's other groups, as they are now.
    let mut current: Vec<Rule> = Vec::new();
    for id in &others {
        match obs.groups.get(id) {
            Some(g) => current.extend(flatten(id, &g.ingress)),
            None => {
                out.failures.push(format!("the security group {id} of {} could not be read", inst.instance_id));
                return out;
            }
        }
    }
    let (remembered, unreadable) = jg.map(|g| memory::decode(&g.tags)).unwrap_or_default();
    if unreadable > 0 {
        out.failures.push(format!(
            "{unreadable} remembered rules in the tags of {} cannot be read; they cannot be restored",
            jg.map_or("", |g| g.group_id.as_str())
        ));
    }
    let vm_id = if desired.vm_id.is_empty() {
        jg.and_then(|g| g.tag(TAG_VM)).unwrap_or(&inst.instance_id).to_owned()
    } else {
        desired.vm_id.clone()
    };
    let target = match jg {
        Some(g) => Target::Id(g.group_id.clone()),
        None => Target::New,
    };
    let ports = &desired.ports;

    // Which rules are taken away, and remembered, before and after this plan.
    let fresh: BTreeSet<Rule> = current
        .iter()
        .filter(|c| c.allows_any(ports) && !remembered.iter().any(|r| c.is_piece_of(r)))
        .cloned()
        .collect();
    let mut all: BTreeSet<Rule> = remembered.union(&fresh).cloned().collect();
    let before = match memory::encode(&all) {
        Ok(tags) => tags,
        Err(e) => {
            out.failures.push(format!("{e}; the rules that allow the protected ports are left in place"));
            if jg.is_none() {
                // Refuse to enable at all: nothing could be put back later.
                return out;
            }
            all = remembered.clone();
            memory::encode(&all).unwrap_or_default()
        }
    };
    let after_rules: BTreeSet<Rule> = all.iter().filter(|r| r.allows_any(ports)).cloned().collect();
    let after = memory::encode(&after_rules).unwrap_or_else(|_| before.clone());
    let have_memory: Vec<Tag> = jg
        .map(|g| g.tags.iter().filter(|t| t.key.starts_with(memory::REMOVED_PREFIX)).cloned().collect())
        .unwrap_or_default();

    // 1. The jitgate group, with the memory written before anything is taken away.
    match jg {
        None => {
            let Some(vpc_id) = inst.vpc_id.clone() else {
                out.failures.push(format!("{} is in no VPC", inst.instance_id));
                return out;
            };
            let mut tags = vec![Tag::new(TAG_MANAGED, "true"), Tag::new(TAG_INSTANCE, &inst.instance_id)];
            if !vm_id.is_empty() && vm_id.chars().count() <= memory::TAG_VALUE_MAX {
                tags.push(Tag::new(TAG_VM, &vm_id));
            }
            tags.append(&mut before.clone());
            out.actions.push(Action::CreateGroup {
                name: jg_name.clone(),
                description: format!("jitgate just-in-time access to {}", inst.instance_id),
                vpc_id,
                tags,
            });
        }
        Some(g) if protected => {
            let mut tags = Vec::new();
            if sorted(&have_memory) != sorted(&before) {
                tags.append(&mut before.clone());
            }
            if g.tag(TAG_VM) != Some(vm_id.as_str()) && vm_id.chars().count() <= memory::TAG_VALUE_MAX {
                tags.push(Tag::new(TAG_VM, &vm_id));
            }
            if !tags.is_empty() {
                out.actions.push(Action::CreateTags { target: target.clone(), tags });
            }
        }
        Some(_) => {}
    }
    if protected && !attached {
        let mut groups: Vec<Target> = others.iter().cloned().map(Target::Id).collect();
        groups.push(target.clone());
        out.actions.push(Action::SetGroups { instance_id: inst.instance_id.clone(), groups });
    }

    // 2. The grants' rules: revoked first (room under the limit, and a new end replaces a rule).
    let existing: Vec<Rule> = jg.map(|g| flatten(&g.group_id, &g.ingress)).unwrap_or_default();
    let mut wanted: BTreeMap<(Proto, u16, IpNet), (UnixSecs, i64)> = BTreeMap::new();
    let mut live: BTreeMap<(Proto, u16, IpNet), BTreeSet<i64>> = BTreeMap::new();
    for g in desired.grants.iter().filter(|g| g.end > now && ports.contains(&(g.proto.clone(), g.port))) {
        for net in &g.sources {
            let key = (g.proto.clone(), g.port, *net);
            live.entry(key.clone()).or_default().insert(g.request_id);
            let e = wanted.entry(key).or_insert((g.end, g.request_id));
            *e = (*e).max((g.end, g.request_id));
        }
    }
    let key_of = |r: &Rule| match (&r.source, r.from, r.to) {
        (Source::Cidr(net), Some(f), Some(t)) if f == t && r.proto.has_ports() => {
            u16::try_from(f).ok().map(|p| (r.proto.clone(), p, *net))
        }
        _ => None,
    };
    let mut kept: BTreeSet<(Proto, u16, IpNet)> = BTreeSet::new();
    let mut revoke = Vec::new();
    for r in &existing {
        let key = key_of(r);
        let note = r.description.as_deref().and_then(parse_note);
        let keep = match (&key, note) {
            (Some(k), Some(n)) => wanted.get(k).is_some_and(|&(end, req)| {
                n.request_id == req && (n.end - end).abs() <= END_TOLERANCE && n.end > now && protected
            }),
            _ => false,
        };
        if keep && key.as_ref().is_some_and(|k| kept.insert(k.clone())) {
            continue;
        }
        let none = BTreeSet::new();
        let still = if protected { key.as_ref().and_then(|k| live.get(k)).unwrap_or(&none) } else { &none };
        out.removals.extend(removal_of(r, &vm_id, now, still));
        revoke.push(r.clone());
    }
    if !revoke.is_empty() {
        out.actions.push(Action::Revoke { target: target.clone(), rules: revoke });
    }
    if protected {
        let mut count = [0usize; 2];
        for (_, _, net) in &kept {
            count[family(net)] += 1;
        }
        let mut candidates: Vec<(i64, Proto, u16, IpNet, UnixSecs)> = wanted
            .iter()
            .filter(|(k, _)| !kept.contains(*k))
            .map(|((proto, port, net), (end, req))| (*req, proto.clone(), *port, *net, *end))
            .collect();
        candidates.sort();
        let mut add = Vec::new();
        let mut over = 0usize;
        for (req, proto, port, net, end) in candidates {
            if count[family(&net)] >= RULE_LIMIT {
                over += 1;
                continue;
            }
            count[family(&net)] += 1;
            add.push(Rule {
                group_id: jg.map(|g| g.group_id.clone()).unwrap_or_default(),
                proto,
                from: Some(i32::from(port)),
                to: Some(i32::from(port)),
                source: Source::Cidr(net),
                description: Some(describe(req, end)),
            });
        }
        if over > 0 {
            out.failures.push(format!(
                "{over} grant rules are not applied: the jitgate group of {} is at the limit of {RULE_LIMIT} inbound rules per security group (per address family): grant fewer or wider source prefixes",
                inst.instance_id
            ));
        }
        if !add.is_empty() {
            out.actions.push(Action::Authorize { target: target.clone(), rules: add });
        }
    }

    // 3. The instance's own groups: what the remembered rules are without the protected ports.
    let target_rules: Vec<Rule> = all.iter().flat_map(|r| r.without(ports)).collect();
    let target_keys: BTreeSet<RuleKey> = target_rules.iter().map(Rule::key).collect();
    let current_keys: BTreeSet<RuleKey> = current.iter().map(Rule::key).collect();
    let authorize: Vec<Rule> = dedup(target_rules.into_iter().filter(|t| !current_keys.contains(&t.key())));
    let revoke_own: Vec<Rule> = dedup(
        current.iter().filter(|c| all.iter().any(|r| c.is_piece_of(r)) && !target_keys.contains(&c.key())).cloned(),
    );
    for (group, rules) in by_group(authorize) {
        out.actions.push(Action::Authorize { target: Target::Id(group), rules });
    }
    for (group, rules) in by_group(revoke_own) {
        out.actions.push(Action::Revoke { target: Target::Id(group), rules });
    }

    // 4. Forget what is back in place; detach and delete a group no longer needed.
    if protected {
        if sorted(&after) != sorted(&before) && !after.is_empty() {
            out.actions.push(Action::CreateTags { target: target.clone(), tags: after.clone() });
        }
        let stale: BTreeSet<String> =
            memory::keys(&have_memory).union(&memory::keys(&before)).cloned().collect::<BTreeSet<_>>();
        let stale: Vec<String> = stale.difference(&memory::keys(&after)).cloned().collect();
        if !stale.is_empty() {
            out.actions.push(Action::DeleteTags { target: target.clone(), keys: stale });
        }
    } else {
        let gone = matches!(inst.state.as_str(), "terminated" | "shutting-down");
        if attached && !gone {
            if others.is_empty() {
                out.failures.push(format!(
                    "{} has no security group but its jitgate group, which therefore stays: give it another group",
                    inst.instance_id
                ));
                return out;
            }
            out.actions.push(Action::SetGroups {
                instance_id: inst.instance_id.clone(),
                groups: others.iter().cloned().map(Target::Id).collect(),
            });
        }
        out.actions.push(Action::DeleteGroup { target });
    }
    out
}

fn sorted(tags: &[Tag]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = tags.iter().map(|t| (t.key.clone(), t.value.clone())).collect();
    v.sort();
    v
}

fn dedup(rules: impl Iterator<Item = Rule>) -> Vec<Rule> {
    let mut seen = BTreeSet::new();
    rules.filter(|r| seen.insert(r.key())).collect()
}

fn by_group(rules: Vec<Rule>) -> BTreeMap<String, Vec<Rule>> {
    let mut out: BTreeMap<String, Vec<Rule>> = BTreeMap::new();
    for r in rules {
        out.entry(r.group_id.clone()).or_default().push(r);
    }
    out
}

/// Port sets for tests and callers that build them by hand.
pub fn port_set(ports: &[(Proto, u16)]) -> BTreeSet<Port> {
    ports.iter().cloned().collect()
}
