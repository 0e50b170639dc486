//! One round of enforcement: read what EC2 shows, plan each instance against what is desired,
//! carry the plans out. And the outbox of what the server must hear: removals (kept until
//! reported, bounded) and the list of failing VMs.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use jitgate_api_types::agent::{EnforcementReportIn, RemovalIn, VmFailureIn};
use jitgate_aws::{Ec2, Ec2Error, Filter, Instance, SecurityGroup};

use crate::apply::apply;
use crate::desired::{rfc3339_ms, DesiredVm, UnixSecs};
use crate::discovery::{is_instance_id, Mapping};
use crate::plan::{plan, Action, Observed, Removal, Target, TAG_INSTANCE, TAG_VM};
use crate::sweep::managed_filter;

/// EC2 takes at most this many values in one filter.
const FILTER_VALUES: usize = 200;

/// What one round did.
#[derive(Debug, Default)]
pub struct Round {
    pub removals: Vec<Removal>,
    /// Failing VMs (by VM id) with why.
    pub failures: BTreeMap<String, String>,
}

/// Whether the connector manages instances of this VPC.
fn managed(instance: &Instance, mapping: &Mapping) -> bool {
    mapping.vpcs.is_empty() || instance.vpc_id.as_ref().is_some_and(|v| mapping.vpcs.contains_key(v))
}

/// Reads every instance and group the plans need, plans each instance the state names or that
/// has a jitgate group, and carries the plans out, one instance after another (a failure of one
/// does not stop the others).
pub async fn reconcile(
    ec2: &impl Ec2,
    desired: &BTreeMap<String, DesiredVm>,
    mapping: &Mapping,
    now: UnixSecs,
) -> Result<Round, Ec2Error> {
    let instances = ec2.describe_instances(&[]).await?;
    let jitgate_groups = ec2.describe_security_groups(&[managed_filter()]).await?;
    let mut by_instance: BTreeMap<String, SecurityGroup> = BTreeMap::new();
    for g in jitgate_groups {
        if let Some(i) = g.tag(TAG_INSTANCE).map(str::to_owned) {
            by_instance.insert(i, g);
        }
    }
    let wanted: BTreeSet<String> = desired.keys().chain(by_instance.keys()).cloned().collect();
    let mine: Vec<&Instance> = instances
        .iter()
        .filter(|i| is_instance_id(&i.instance_id) && wanted.contains(&i.instance_id) && managed(i, mapping))
        .collect();
    let ids: BTreeSet<String> = mine
        .iter()
        .flat_map(|i| i.security_groups.iter().map(|g| g.group_id.clone()))
        .filter(|id| !by_instance.values().any(|g| &g.group_id == id))
        .collect();
    let ids: Vec<String> = ids.into_iter().collect();
    let mut groups: BTreeMap<String, SecurityGroup> = BTreeMap::new();
    for chunk in ids.chunks(FILTER_VALUES) {
        for g in ec2.describe_security_groups(&[Filter::new("group-id", chunk.iter().cloned())]).await? {
            groups.insert(g.group_id.clone(), g);
        }
    }
    let mut round = Round::default();
    let found: BTreeSet<&str> = instances.iter().map(|i| i.instance_id.as_str()).collect();
    for (id, d) in desired {
        if !found.contains(id.as_str()) && !d.ports.is_empty() {
            round.failures.insert(d.vm_id.clone(), format!("the instance {id} was not found in this region"));
        }
    }
    let none = DesiredVm::default();
    let wants = |inst: &Instance| match desired.get(&inst.instance_id) {
        Some(d) if !crate::discovery::is_gone(inst) => d,
        _ => &none,
    };
    // Instances no longer protected first: what they put back into a group they share with a
    // protected instance is taken away again by that instance's plan in this same round.
    let mut mine = mine;
    mine.sort_by_key(|i| !wants(i).ports.is_empty());
    // Groups changed this round, read again before the next instance in them is planned.
    let mut dirty: BTreeSet<String> = BTreeSet::new();
    for inst in mine {
        let jg = by_instance.get(&inst.instance_id);
        let d = wants(inst);
        let stale: Vec<String> =
            inst.security_groups.iter().map(|g| g.group_id.clone()).filter(|id| dirty.contains(id)).collect();
        if !stale.is_empty() {
            match ec2.describe_security_groups(&[Filter::new("group-id", stale.iter().cloned())]).await {
                Ok(fresh) => {
                    for g in fresh {
                        groups.insert(g.group_id.clone(), g);
                    }
                    dirty.retain(|id| !stale.contains(id));
                }
                Err(e) => {
                    tracing::error!(instance = %inst.instance_id, error = %e, "reading its security groups failed");
                    if !d.vm_id.is_empty() {
                        round.failures.insert(d.vm_id.clone(), format!("reading its security groups: {e}"));
                    }
                    continue;
                }
            }
        }
        let vm_id = if d.vm_id.is_empty() {
            jg.and_then(|g| g.tag(TAG_VM)).unwrap_or(&inst.instance_id).to_owned()
        } else {
            d.vm_id.clone()
        };
        let p = plan(Observed { instance: inst, groups: &groups, jitgate: jg }, d, now);
        if p.actions.is_empty() && p.failures.is_empty() {
            continue;
        }
        let mut failures = p.failures.clone();
        for a in &p.actions {
            if let Action::Authorize { target: Target::Id(id), .. } | Action::Revoke { target: Target::Id(id), .. } = a
            {
                if jg.is_none_or(|g| &g.group_id != id) {
                    dirty.insert(id.clone());
                }
            }
        }
        match apply(ec2, &p.actions).await {
            Ok(_) => round.removals.extend(p.removals),
            Err(e) => {
                tracing::error!(instance = %inst.instance_id, error = %e, "enforcing failed");
                failures.push(e.to_string());
            }
        }
        if !failures.is_empty() {
            round.failures.insert(vm_id, failures.join("; "));
        }
    }
    Ok(round)
}

/// How many removals wait for the server at most; past it the oldest are dropped (and logged).
pub const MAX_PENDING: usize = 10_000;
/// Removals per report.
pub const REPORT_BATCH: usize = 200;
/// The longest failure message sent.
const FAILURE_CHARS: usize = 500;

/// What the server has yet to hear.
#[derive(Debug, Default)]
pub struct Outbox {
    removals: VecDeque<RemovalIn>,
    /// Removals dropped because the outbox was full.
    pub dropped: u64,
    failures: BTreeMap<String, String>,
    /// The failure list the server has, once it has one.
    sent: Option<BTreeMap<String, String>>,
}

impl Outbox {
    /// Queues removals made at `now_ms`. A removal of a rule that names no VM id the server could
    /// know (a group tagged by hand) is only logged.
    pub fn removed(&mut self, removals: impl IntoIterator<Item = Removal>, now_ms: i64) {
        for r in removals {
            if !r.vm_id.contains("/virtualMachines/") {
                tracing::warn!(vm = %r.vm_id, request = r.request_id, port = r.port, source = %r.source, reason = r.reason.as_str(), "removed a rule of no VM the server knows; not reported");
                continue;
            }
            if self.removals.len() >= MAX_PENDING {
                self.removals.pop_front();
                self.dropped += 1;
                tracing::error!(
                    dropped = self.dropped,
                    "the server has not taken removal reports for a long time: dropped the oldest (its audit log misses it)"
                );
            }
            self.removals.push_back(RemovalIn {
                request_id: r.request_id,
                vm_id: r.vm_id,
                protocol: r.proto.as_jitgate().to_owned(),
                port: r.port,
                source: r.source.to_string(),
                reason: r.reason.as_str().to_owned(),
                removed_at: rfc3339_ms(now_ms),
            });
        }
    }

    /// Sets the failing VMs (the whole list).
    pub fn failing(&mut self, failures: BTreeMap<String, String>) {
        self.failures = failures
            .into_iter()
            .map(|(vm, e)| {
                let e: String = e.chars().filter(|c| !c.is_control()).take(FAILURE_CHARS).collect();
                (vm, e)
            })
            .collect();
    }

    pub fn pending(&self) -> usize {
        self.removals.len()
    }

    /// The next report to send, if there is anything to say.
    pub fn next(&self) -> Option<EnforcementReportIn> {
        if self.removals.is_empty() && self.sent.as_ref() == Some(&self.failures) {
            return None;
        }
        Some(EnforcementReportIn {
            removals: self.removals.iter().take(REPORT_BATCH).cloned().collect(),
            failures: self.failures.iter().map(|(vm, e)| VmFailureIn { vm_id: vm.clone(), error: e.clone() }).collect(),
        })
    }

    /// `report` (from [`Outbox::next`]) was taken by the server.
    pub fn sent(&mut self, report: &EnforcementReportIn) {
        self.forget(report.removals.len());
        self.failures_sent(&report.failures);
    }

    /// The `n` oldest removals are done with (taken, or refused for good).
    pub fn forget(&mut self, n: usize) {
        let n = n.min(self.removals.len());
        self.removals.drain(..n);
    }

    /// The server has (or refused for good) this failure list.
    pub fn failures_sent(&mut self, failures: &[VmFailureIn]) {
        self.sent = Some(failures.iter().map(|f| (f.vm_id.clone(), f.error.clone())).collect());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Reason;
    use crate::rules::Proto;

    fn removal(n: i64) -> Removal {
        Removal {
            vm_id: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/i-1".into(),
            request_id: n,
            proto: Proto::Tcp,
            port: 22,
            source: "10.0.0.0/8".parse().unwrap(),
            reason: Reason::Expired,
        }
    }

    #[test]
    fn the_outbox_keeps_removals_until_sent_and_bounds_them() {
        let mut o = Outbox::default();
        assert!(o.next().is_some(), "the first report says nothing fails");
        let first = o.next().unwrap();
        o.sent(&first);
        assert!(o.next().is_none());
        o.removed((0..3).map(removal), 1_000);
        let r = o.next().unwrap();
        assert_eq!(r.removals.len(), 3);
        assert_eq!(r.removals[0].protocol, "TCP");
        assert_eq!(r.removals[0].source, "10.0.0.0/8");
        assert_eq!(r.removals[0].removed_at, "1970-01-01T00:00:01Z");
        // Not taken: still there.
        assert_eq!(o.next().unwrap().removals.len(), 3);
        o.sent(&r);
        assert!(o.next().is_none());
        o.failing(BTreeMap::from([("vm".to_owned(), "x\n".repeat(600))]));
        let r = o.next().unwrap();
        assert_eq!(r.failures[0].error.chars().count(), 500);
        o.sent(&r);
        assert!(o.next().is_none());
        o.removed((0..MAX_PENDING as i64 + 5).map(removal), 0);
        assert_eq!((o.pending(), o.dropped), (MAX_PENDING, 5));
        assert_eq!(o.next().unwrap().removals.len(), REPORT_BATCH);
        assert_eq!(o.next().unwrap().removals[0].request_id, 5, "the oldest were dropped");
        o.forget(MAX_PENDING - 1);
        assert_eq!(o.pending(), 1);
        let mut foreign = Outbox::default();
        foreign.removed([Removal { vm_id: "i-1".into(), ..removal(1) }], 0);
        assert_eq!(foreign.pending(), 0, "no VM id the server knows");
    }
}
