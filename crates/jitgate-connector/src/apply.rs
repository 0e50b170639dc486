//! Carrying out a plan's actions, in order, over any [`Ec2`]. The first failure stops the plan
//! (the next round plans again from what EC2 shows then). A group this plan just created may not
//! be visible yet to the next calls (EC2 is eventually consistent): `*.NotFound` on it is tried
//! again briefly, as is `DependencyViolation` when deleting a group just detached.

use std::time::Duration;

use jitgate_aws::{Ec2, Ec2Error, Filter};

use crate::plan::{Action, Target};
use crate::rules::permissions;

/// How often a call on a just-created group (or a just-detached one) is tried again.
pub const SETTLE_RETRIES: u32 = 6;
/// The first wait before such a retry; it doubles (0.25 + 0.5 + … ≈ 16 s in all).
pub const SETTLE_FIRST_WAIT: Duration = Duration::from_millis(250);

/// An action that failed, and how.
#[derive(Debug, thiserror::Error)]
#[error("{action}: {source}")]
pub struct ApplyError {
    pub action: String,
    #[source]
    pub source: Ec2Error,
}

fn name(action: &Action) -> String {
    let t = |t: &Target| match t {
        Target::Id(id) => id.clone(),
        Target::New => "the new jitgate group".into(),
    };
    match action {
        Action::CreateGroup { name, vpc_id, .. } => format!("creating security group {name} in {vpc_id}"),
        Action::SetGroups { instance_id, .. } => format!("setting the security groups of {instance_id}"),
        Action::CreateTags { target, .. } => format!("tagging {}", t(target)),
        Action::DeleteTags { target, .. } => format!("removing tags of {}", t(target)),
        Action::Authorize { target, rules } => format!("authorizing {} ingress rules in {}", rules.len(), t(target)),
        Action::Revoke { target, rules } => format!("revoking {} ingress rules in {}", rules.len(), t(target)),
        Action::DeleteGroup { target } => format!("deleting security group {}", t(target)),
    }
}

/// Carries out `actions`; the id of the group made, if one was.
pub async fn apply(ec2: &impl Ec2, actions: &[Action]) -> Result<Option<String>, ApplyError> {
    let mut created: Option<String> = None;
    let mut detached = false;
    for action in actions {
        let fail = |source| ApplyError { action: name(action), source };
        let resolve = |t: &Target| -> Result<String, ApplyError> {
            match t {
                Target::Id(id) => Ok(id.clone()),
                Target::New => created.clone().ok_or_else(|| ApplyError {
                    action: name(action),
                    source: Ec2Error::Decode("no group was created before this action".into()),
                }),
            }
        };
        let fresh = |t: &Target| matches!(t, Target::New);
        match action {
            Action::CreateGroup { name, description, vpc_id, tags } => {
                let id = match ec2.create_security_group(name, description, vpc_id, tags).await {
                    Ok(id) => id,
                    // Made before (an earlier round's answer lost, or by hand): use it.
                    Err(e) if e.code() == Some("InvalidGroup.Duplicate") => {
                        let filters =
                            [Filter::new("group-name", [name.as_str()]), Filter::new("vpc-id", [vpc_id.as_str()])];
                        let found = ec2.describe_security_groups(&filters).await.map_err(fail)?;
                        let id = found.into_iter().next().map(|g| g.group_id).ok_or_else(|| fail(e))?;
                        // This plan's tags, the memory above all, before anything relies on them.
                        ec2.create_tags(std::slice::from_ref(&id), tags).await.map_err(fail)?;
                        id
                    }
                    Err(e) => return Err(fail(e)),
                };
                tracing::info!(group = %id, name = %name, "created the jitgate security group");
                created = Some(id);
            }
            Action::SetGroups { instance_id, groups } => {
                let ids = groups.iter().map(resolve).collect::<Result<Vec<_>, _>>()?;
                let settle = groups.iter().any(fresh);
                settle_retry(settle, false, || ec2.set_instance_groups(instance_id, &ids)).await.map_err(fail)?;
                detached = true;
            }
            Action::CreateTags { target, tags } => {
                let id = [resolve(target)?];
                settle_retry(fresh(target), false, || ec2.create_tags(&id, tags)).await.map_err(fail)?;
            }
            Action::DeleteTags { target, keys } => {
                let id = [resolve(target)?];
                settle_retry(fresh(target), false, || ec2.delete_tags(&id, keys)).await.map_err(fail)?;
            }
            Action::Authorize { target, rules } => {
                let id = resolve(target)?;
                let perms = permissions(rules);
                settle_retry(fresh(target), false, || ec2.authorize_ingress(&id, &perms)).await.map_err(fail)?;
            }
            Action::Revoke { target, rules } => {
                let id = resolve(target)?;
                let perms = permissions(rules);
                settle_retry(fresh(target), false, || ec2.revoke_ingress(&id, &perms)).await.map_err(fail)?;
            }
            Action::DeleteGroup { target } => {
                let id = resolve(target)?;
                match settle_retry(fresh(target), detached, || ec2.delete_security_group(&id)).await {
                    Ok(()) => tracing::info!(group = %id, "deleted the jitgate security group"),
                    // Gone already (an earlier round's answer was lost).
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(fail(e)),
                }
            }
        }
    }
    Ok(created)
}

/// Runs `call`, trying again while EC2 has not caught up: `*.NotFound` when `new_group`,
/// `DependencyViolation` when `detached`.
async fn settle_retry<F, Fut>(new_group: bool, detached: bool, mut call: F) -> Result<(), Ec2Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), Ec2Error>>,
{
    let mut wait = SETTLE_FIRST_WAIT;
    let mut tries = 0;
    loop {
        match call().await {
            Err(e)
                if tries < SETTLE_RETRIES
                    && ((new_group && e.is_not_found()) || (detached && e.code() == Some("DependencyViolation"))) =>
            {
                tries += 1;
                tracing::debug!(error = %e, "EC2 has not caught up yet; trying again");
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            other => return other,
        }
    }
}
