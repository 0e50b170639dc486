//! Cloud connectors in SQLite: an inventory registers the connector's VMs (bound to it by
//! `vms.agent_id`, with what it reported in `cloud`, `unsupported_reason`), an enforcement report
//! audits each removed rule and replaces the VMs' `cloud_failure`. The decisions are
//! `jitgate_core::cloud`'s.

use std::collections::{BTreeMap, HashMap, HashSet};

use jitgate_core::cloud::{self, CloudVm, EnforcementReport, NOT_FOUND_REASON};
use jitgate_core::{Protocol, SourceSpec};
use jitgate_store::cloud::Inventoried;
use jitgate_store::stored::encode_cloud;

use super::*;

/// The connector `agent_id`, or why it is none (`what`: the call it made).
fn connector(ctx: &WriteCtx<'_>, agent_id: &str, what: &str) -> StoreResult<Result<AgentRecord, Invalid>> {
    let Some(agent) = agents::agent_by_id(ctx.conn, agent_id).map_err(backend)? else {
        return Ok(Err(join::agent_not_found(agent_id)));
    };
    Ok(cloud::require_cloud(agent.mode, what).map(|()| agent))
}

type Existing = (Option<String>, Option<String>, String, Option<String>, Option<String>, Option<String>);

pub(crate) fn put_inventory(
    ctx: &mut WriteCtx<'_>,
    agent_id: &str,
    vms: Vec<CloudVm>,
    audit: AuditEvent,
) -> StoreResult<Inventoried> {
    let agent = match connector(ctx, agent_id, "PUT /agent/v1/inventory")? {
        Ok(agent) => agent,
        Err(invalid) => return reject(ctx, audit, invalid),
    };
    let now = nanos(audit.time);
    let holders: HashMap<String, AgentRecord> = ctx
        .conn
        .prepare_cached("SELECT * FROM agents")
        .and_then(|mut st| st.query_map([], rows::agent_from_row)?.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(backend)?
        .into_iter()
        .map(|a| (a.id.clone(), a))
        .collect();
    // Every VM is read and checked before anything is written: a refusal keeps nothing of it.
    let mut found: Vec<Option<Existing>> = Vec::with_capacity(vms.len());
    for vm in &vms {
        let existing: Option<Existing> = ctx
            .conn
            .prepare_cached(
                "SELECT gateway, agent_id, os_type, address, cloud, unsupported_reason FROM vms WHERE key = ?1",
            )
            .and_then(|mut st| {
                st.query_row([vm.id.key()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))
                    .optional()
            })
            .map_err(backend)?;
        if let Some((gateway, holder, ..)) = &existing {
            let holding =
                holder.as_ref().and_then(|id| holders.get(id)).map(|a| (a.name.as_str(), a.mode, a.id.as_str()));
            if let Err(invalid) = cloud::may_register(&vm.id, agent_id, gateway.as_deref(), holding) {
                return reject(ctx, audit, invalid);
            }
        }
        found.push(existing);
    }
    let mut changed = false;
    let mut reported = HashSet::with_capacity(vms.len());
    for (vm, existing) in vms.iter().zip(found) {
        let key = vm.id.key();
        reported.insert(key.clone());
        let address = vm.address.map(|a| a.to_string());
        let facts = encode_cloud(&vm.facts, vm.public_address);
        let Some((_, holder, os, old_address, old_facts, old_reason)) = existing else {
            ctx.conn
                .prepare_cached(
                    "INSERT INTO vms (key, id, os_type, location, address, agent_id, created, updated, cloud, unsupported_reason) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8, ?9)",
                )
                .and_then(|mut st| {
                    st.execute(params![
                        key,
                        vm.id.as_str(),
                        vm.os_type.as_str(),
                        agent.location,
                        address,
                        agent_id,
                        now,
                        facts,
                        vm.unsupported_reason
                    ])
                })
                .map_err(backend)?;
            changed = true;
            continue;
        };
        let same = holder.as_deref() == Some(agent_id)
            && os == vm.os_type.as_str()
            && old_address == address
            && old_facts.as_deref() == Some(facts.as_str())
            && old_reason == vm.unsupported_reason;
        if !same {
            ctx.conn
                .prepare_cached(
                    "UPDATE vms SET os_type = ?2, address = ?3, agent_id = ?4, cloud = ?5, unsupported_reason = ?6, \
                     updated = ?7 WHERE key = ?1",
                )
                .and_then(|mut st| {
                    st.execute(params![key, vm.os_type.as_str(), address, agent_id, facts, vm.unsupported_reason, now])
                })
                .map_err(backend)?;
            changed = true;
        }
    }
    // The connector's earlier VMs it did not find now: Unsupported, never deleted.
    let earlier: Vec<(String, String, Option<String>)> = ctx
        .conn
        .prepare_cached("SELECT key, id, unsupported_reason FROM vms WHERE agent_id = ?1 ORDER BY key")
        .and_then(|mut st| st.query_map([agent_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect())
        .map_err(backend)?;
    let mut missing = Vec::new();
    for (key, id, reason) in earlier {
        if reported.contains(&key) || reason.as_deref() == Some(NOT_FOUND_REASON) {
            continue;
        }
        ctx.conn
            .prepare_cached("UPDATE vms SET unsupported_reason = ?2, cloud_failure = NULL, updated = ?3 WHERE key = ?1")
            .and_then(|mut st| st.execute(params![key, NOT_FOUND_REASON, now]))
            .map_err(backend)?;
        missing.push(id);
        changed = true;
    }
    let unsupported: i64 = ctx
        .conn
        .query_row("SELECT count(*) FROM vms WHERE agent_id = ?1 AND unsupported_reason IS NOT NULL", [agent_id], |r| {
            r.get(0)
        })
        .map_err(backend)?;
    let registered = u32::try_from(vms.len()).unwrap_or(u32::MAX);
    let unsupported = u32::try_from(unsupported).unwrap_or(u32::MAX);
    if changed {
        rows::bump_revision(ctx.conn).map_err(backend)?;
        ctx.audit(&cloud::inventory_stored(audit, registered, unsupported, &missing)).map_err(backend)?;
    }
    Ok(Inventoried { registered, unsupported, changed })
}

pub(crate) fn report(
    ctx: &mut WriteCtx<'_>,
    agent_id: &str,
    report: EnforcementReport,
    audit: AuditEvent,
) -> StoreResult<bool> {
    if let Err(invalid) = connector(ctx, agent_id, "POST /agent/v1/enforcement")? {
        return reject(ctx, audit, invalid);
    }
    let named = report
        .removals
        .iter()
        .enumerate()
        .map(|(i, r)| (format!("removals[{i}].vmId"), &r.vm))
        .chain(report.failures.iter().enumerate().map(|(i, f)| (format!("failures[{i}].vmId"), &f.vm)));
    let mut checked = HashSet::new();
    for (field, vm) in named {
        if checked.contains(&vm.key()) {
            continue;
        }
        let ours: bool = ctx
            .conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM vms WHERE key = ?1 AND agent_id = ?2)")
            .and_then(|mut st| st.query_row(params![vm.key(), agent_id], |r| r.get(0)))
            .map_err(backend)?;
        if !ours {
            return reject(ctx, audit, cloud::foreign_vm(&field, vm));
        }
        checked.insert(vm.key());
    }
    for removal in &report.removals {
        ctx.audit(&cloud::removal_event(&audit, agent_id, removal)).map_err(backend)?;
    }
    let before: BTreeMap<String, String> = ctx
        .conn
        .prepare_cached("SELECT key, cloud_failure FROM vms WHERE agent_id = ?1 AND cloud_failure IS NOT NULL")
        .and_then(|mut st| st.query_map([agent_id], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
        .map_err(backend)?;
    let after: BTreeMap<String, (String, String)> =
        report.failures.iter().map(|f| (f.vm.key(), (f.vm.as_str().to_owned(), f.error.clone()))).collect();
    let unchanged = before.len() == after.len() && after.iter().all(|(k, (_, e))| before.get(k) == Some(e));
    if !unchanged {
        ctx.conn.execute("UPDATE vms SET cloud_failure = NULL WHERE agent_id = ?1", [agent_id]).map_err(backend)?;
        for (key, (_, error)) in &after {
            ctx.conn
                .execute("UPDATE vms SET cloud_failure = ?2 WHERE key = ?1", params![key, error])
                .map_err(backend)?;
        }
        rows::bump_revision(ctx.conn).map_err(backend)?;
        let failing: Vec<String> = after.values().map(|(id, _)| id.clone()).collect();
        ctx.audit(&cloud::failures_event(&audit, agent_id, &failing)).map_err(backend)?;
    }
    Ok(!unchanged)
}

/// The grants (sources, protocol, port) on VM `key` at `now` whose rules its security group holds
/// or will hold (`jitgate_core::cloud::HOLDING`).
pub(crate) fn live_rules(
    conn: &Connection,
    key: &str,
    now: OffsetDateTime,
) -> rusqlite::Result<Vec<(SourceSpec, Protocol, u16)>> {
    let sql = format!(
        "SELECT source_form, sources, protocol, number FROM grants WHERE vm_key = ?1 AND {} AND end_time > ?2",
        crate::grants::status_in("status", &cloud::HOLDING)
    );
    let mut st = conn.prepare_cached(&sql)?;
    let found = st.query_map(crate::grants::bind([Value::Text(key.to_owned()), Value::Integer(nanos(now))]), |r| {
        let (form, texts, proto): (String, String, String) = (r.get(0)?, r.get(1)?, r.get(2)?);
        Ok((form, texts, proto, r.get::<_, u16>(3)?))
    })?;
    let mut out = Vec::new();
    for row in found {
        let (form, texts, proto, number) = row?;
        let protocol = Protocol::parse(&proto).ok_or_else(|| rows::corrupt(format!("protocol {proto}")))?;
        out.push((rows::decode_sources(&form, &texts)?, protocol, number));
    }
    Ok(out)
}
