//! The sweep: every rule of every jitgate group (any connector's: the tag
//! `jitgate:managed=true`) whose end, written in its description, has passed is revoked. It
//! needs nothing but EC2 and the clock, so it runs while the server is unreachable, and once at
//! start before anything else. Revoking a rule that is gone already is not an error, so replicas
//! sweeping the same groups do no harm (each removal is reported at least once).

use std::collections::{BTreeMap, BTreeSet};

use jitgate_aws::{Ec2, Ec2Error, Filter};

use crate::desired::{parse_note, UnixSecs};
use crate::plan::{removal_of, Reason, Removal, TAG_INSTANCE, TAG_MANAGED, TAG_VM};
use crate::rules::{flatten, permissions};

/// What one sweep did.
#[derive(Debug, Default)]
pub struct Swept {
    /// Rules removed, to report.
    pub removals: Vec<Removal>,
    /// VMs whose expired rules could not be removed, with why.
    pub failures: BTreeMap<String, String>,
    /// VMs whose expired rules were all removed (a failure reported earlier is over).
    pub cleared: BTreeSet<String>,
}

/// The filter that finds every jitgate group.
pub fn managed_filter() -> Filter {
    Filter::new(format!("tag:{TAG_MANAGED}"), ["true"])
}

/// One sweep at `now`; `reason` is [`Reason::Expired`], or [`Reason::Stale`] at start.
pub async fn sweep(ec2: &impl Ec2, now: UnixSecs, reason: Reason) -> Result<Swept, Ec2Error> {
    let groups = ec2.describe_security_groups(&[managed_filter()]).await?;
    let mut out = Swept::default();
    for g in groups {
        let vm_id = g.tag(TAG_VM).or(g.tag(TAG_INSTANCE)).unwrap_or(&g.group_id).to_owned();
        let expired: Vec<_> = flatten(&g.group_id, &g.ingress)
            .into_iter()
            .filter(|r| r.description.as_deref().and_then(parse_note).is_some_and(|n| n.end <= now))
            .collect();
        if expired.is_empty() {
            out.cleared.insert(vm_id);
            continue;
        }
        match ec2.revoke_ingress(&g.group_id, &permissions(&expired)).await {
            Ok(()) => {
                tracing::info!(group = %g.group_id, rules = expired.len(), "swept expired rules");
                let none = BTreeSet::new();
                out.removals.extend(
                    expired.iter().filter_map(|r| removal_of(r, &vm_id, now, &none)).map(|r| Removal { reason, ..r }),
                );
                out.cleared.insert(vm_id);
            }
            Err(e) => {
                tracing::error!(group = %g.group_id, error = %e, "could not revoke expired rules");
                out.failures.insert(vm_id, format!("revoking expired rules in {}: {e}", g.group_id));
            }
        }
    }
    Ok(out)
}
