//! Cloud connectors in PostgreSQL: an inventory registers the connector's VMs (bound to it by
//! `vms.agent_id`, with what it reported in `cloud`, `unsupported_reason`), an enforcement report
//! audits each removed rule and replaces the VMs' `cloud_failure`. The decisions are
//! `jitgate_core::cloud`'s; the rows are those of the SQLite backend.

use std::collections::{BTreeMap, HashMap, HashSet};

use jitgate_core::cloud::{self, CloudVm, EnforcementReport, NOT_FOUND_REASON};
use jitgate_core::{Protocol, SourceSpec};
use jitgate_store::cloud::Inventoried;
use jitgate_store::stored::encode_cloud;
use jitgate_store::AgentRecord;

use super::*;
use crate::rows::{self, nanos};
use crate::Db;

/// The connector `agent_id` (its row locked), or why it is none (`what`: the call it made).
async fn connector(db: &Db, agent_id: &str, what: &str) -> Res<Result<AgentRecord, Invalid>> {
    db.opt("SELECT id FROM agents WHERE id = $1 FOR UPDATE", &[&agent_id]).await?;
    let Some(agent) = agents::agent_by_id(db, agent_id).await? else {
        return Ok(Err(join::agent_not_found(agent_id)));
    };
    Ok(cloud::require_cloud(agent.mode, what).map(|()| agent))
}

struct Existing {
    gateway: Option<String>,
    agent_id: Option<String>,
    os_type: String,
    address: Option<String>,
    cloud: Option<String>,
    reason: Option<String>,
}

pub(crate) async fn put_inventory(
    ctx: &mut Ctx,
    agent_id: &str,
    vms: Vec<CloudVm>,
    audit: AuditEvent,
) -> Res<Inventoried> {
    let agent = match connector(&ctx.db, agent_id, "PUT /agent/v1/inventory").await? {
        Ok(agent) => agent,
        Err(invalid) => return reject(ctx, audit, invalid),
    };
    let now = nanos(audit.time);
    let mut holders: HashMap<String, AgentRecord> = HashMap::new();
    for r in ctx.db.rows("SELECT * FROM agents", &[]).await? {
        let a = rows::agent_from_row(&r)?;
        holders.insert(a.id.clone(), a);
    }
    // The VMs it names, read (and locked) in one statement.
    let keys: Vec<String> = vms.iter().map(|v| v.id.key()).collect();
    let mut existing: HashMap<String, Existing> = HashMap::new();
    let sql = "SELECT key, gateway, agent_id, os_type, address, cloud, unsupported_reason FROM vms \
               WHERE key = ANY($1) ORDER BY key FOR UPDATE";
    for r in ctx.db.rows(sql, &[&keys]).await? {
        existing.insert(
            r.try_get(0)?,
            Existing {
                gateway: r.try_get(1)?,
                agent_id: r.try_get(2)?,
                os_type: r.try_get(3)?,
                address: r.try_get(4)?,
                cloud: r.try_get(5)?,
                reason: r.try_get(6)?,
            },
        );
    }
    // Every VM is checked before anything is written: a refusal keeps nothing of it.
    for (vm, key) in vms.iter().zip(&keys) {
        let Some(e) = existing.get(key) else { continue };
        let holding =
            e.agent_id.as_ref().and_then(|id| holders.get(id)).map(|a| (a.name.as_str(), a.mode, a.id.as_str()));
        if let Err(invalid) = cloud::may_register(&vm.id, agent_id, e.gateway.as_deref(), holding) {
            return reject(ctx, audit, invalid);
        }
    }
    let mut changed = false;
    for (vm, key) in vms.iter().zip(&keys) {
        let address = vm.address.map(|a| a.to_string());
        let facts = encode_cloud(&vm.facts, vm.public_address);
        let Some(e) = existing.get(key) else {
            ctx.db
                .exec(
                    "INSERT INTO vms (key, id, os_type, location, address, agent_id, created, updated, cloud, unsupported_reason) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8, $9)",
                    &[
                        key,
                        &vm.id.as_str(),
                        &vm.os_type.as_str(),
                        &agent.location,
                        &address,
                        &agent_id,
                        &now,
                        &facts,
                        &vm.unsupported_reason,
                    ],
                )
                .await?;
            changed = true;
            continue;
        };
        let same = e.agent_id.as_deref() == Some(agent_id)
            && e.os_type == vm.os_type.as_str()
            && e.address == address
            && e.cloud.as_deref() == Some(facts.as_str())
            && e.reason == vm.unsupported_reason;
        if !same {
            ctx.db
                .exec(
                    "UPDATE vms SET os_type = $2, address = $3, agent_id = $4, cloud = $5, unsupported_reason = $6, \
                     updated = $7 WHERE key = $1",
                    &[key, &vm.os_type.as_str(), &address, &agent_id, &facts, &vm.unsupported_reason, &now],
                )
                .await?;
            changed = true;
        }
    }
    // The connector's earlier VMs it did not find now: Unsupported, never deleted.
    let reported: HashSet<&String> = keys.iter().collect();
    let mut missing = Vec::new();
    let mut gone = Vec::new();
    for r in ctx
        .db
        .rows("SELECT key, id, unsupported_reason FROM vms WHERE agent_id = $1 ORDER BY key", &[&agent_id])
        .await?
    {
        let (key, id, reason): (String, String, Option<String>) = (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
        if reported.contains(&key) || reason.as_deref() == Some(NOT_FOUND_REASON) {
            continue;
        }
        gone.push(key);
        missing.push(id);
    }
    if !gone.is_empty() {
        ctx.db
            .exec(
                "UPDATE vms SET unsupported_reason = $2, cloud_failure = NULL, updated = $3 WHERE key = ANY($1)",
                &[&gone, &NOT_FOUND_REASON, &now],
            )
            .await?;
        changed = true;
    }
    let unsupported: i64 = ctx
        .db
        .one("SELECT count(*) FROM vms WHERE agent_id = $1 AND unsupported_reason IS NOT NULL", &[&agent_id])
        .await?
        .try_get(0)?;
    let registered = u32::try_from(vms.len()).unwrap_or(u32::MAX);
    let unsupported = u32::try_from(unsupported).unwrap_or(u32::MAX);
    if changed {
        ctx.bump_revision();
        ctx.audit(cloud::inventory_stored(audit, registered, unsupported, &missing));
    }
    Ok(Inventoried { registered, unsupported, changed })
}

pub(crate) async fn report(ctx: &mut Ctx, agent_id: &str, report: EnforcementReport, audit: AuditEvent) -> Res<bool> {
    if let Err(invalid) = connector(&ctx.db, agent_id, "POST /agent/v1/enforcement").await? {
        return reject(ctx, audit, invalid);
    }
    let ours: HashSet<String> = ctx
        .db
        .rows("SELECT key FROM vms WHERE agent_id = $1 FOR UPDATE", &[&agent_id])
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
    let named = report
        .removals
        .iter()
        .enumerate()
        .map(|(i, r)| (format!("removals[{i}].vmId"), &r.vm))
        .chain(report.failures.iter().enumerate().map(|(i, f)| (format!("failures[{i}].vmId"), &f.vm)));
    for (field, vm) in named {
        if !ours.contains(&vm.key()) {
            return reject(ctx, audit, cloud::foreign_vm(&field, vm));
        }
    }
    for removal in &report.removals {
        ctx.audit(cloud::removal_event(&audit, agent_id, removal));
    }
    let mut before: BTreeMap<String, String> = BTreeMap::new();
    let sql = "SELECT key, cloud_failure FROM vms WHERE agent_id = $1 AND cloud_failure IS NOT NULL";
    for r in ctx.db.rows(sql, &[&agent_id]).await? {
        before.insert(r.try_get(0)?, r.try_get(1)?);
    }
    let after: BTreeMap<String, (String, String)> =
        report.failures.iter().map(|f| (f.vm.key(), (f.vm.as_str().to_owned(), f.error.clone()))).collect();
    let unchanged = before.len() == after.len() && after.iter().all(|(k, (_, e))| before.get(k) == Some(e));
    if !unchanged {
        ctx.db.exec("UPDATE vms SET cloud_failure = NULL WHERE agent_id = $1", &[&agent_id]).await?;
        for (key, (_, error)) in &after {
            ctx.db.exec("UPDATE vms SET cloud_failure = $2 WHERE key = $1", &[key, error]).await?;
        }
        ctx.bump_revision();
        let failing: Vec<String> = after.values().map(|(id, _)| id.clone()).collect();
        ctx.audit(cloud::failures_event(&audit, agent_id, &failing));
    }
    Ok(!unchanged)
}

/// The grants (sources, protocol, port) on each VM of `keys` at `now` whose rules their security
/// groups hold or will hold (`jitgate_core::cloud::HOLDING`), by VM key.
pub(crate) async fn live_rules(
    db: &Db,
    keys: &[String],
    now: OffsetDateTime,
) -> Res<HashMap<String, Vec<(SourceSpec, Protocol, u16)>>> {
    let live = crate::grants::words(&cloud::HOLDING);
    let sql = "SELECT vm_key, source_form, sources, protocol, number FROM grants \
               WHERE vm_key = ANY($1) AND status = ANY($2) AND end_time > $3";
    let mut out: HashMap<String, Vec<(SourceSpec, Protocol, u16)>> = HashMap::new();
    for r in db.rows(sql, &[&keys, &live, &nanos(now)]).await? {
        let (key, form, texts, proto): (String, String, String, String) =
            (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?);
        let protocol = rows::protocol(&proto)?;
        out.entry(key).or_default().push((rows::decode_sources(&form, &texts)?, protocol, rows::port(&r, "number")?));
    }
    Ok(out)
}
