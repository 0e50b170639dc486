//! The facts the inventory shows of a page of VMs, read for all of them at once: the VMs' keys
//! go in as one JSON array parameter (`json_each`), so a page is a fixed number of statements
//! whatever its size.

use std::collections::HashMap;

use rusqlite::{params, Connection};
use time::OffsetDateTime;

use jitgate_core::{PolicyRef, PolicyVm};
use jitgate_store::{VmAccess, VmPolicy};

use crate::rows::{from_nanos, nanos, port_rule_at, vm_id};

fn keys_param(keys: &[String]) -> rusqlite::Result<String> {
    serde_json::to_string(keys).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

/// `vm_access` of each key, in one statement answered from `grants_vm_rid`.
pub fn access_many(
    c: &Connection,
    keys: &[String],
    since: OffsetDateTime,
) -> rusqlite::Result<HashMap<String, VmAccess>> {
    let mut out: HashMap<String, VmAccess> = keys.iter().map(|k| (k.clone(), VmAccess::default())).collect();
    if keys.is_empty() {
        return Ok(out);
    }
    let mut stmt = c.prepare_cached(
        "SELECT k.value, \
           (SELECT count(DISTINCT g.rid) FROM grants g JOIN requests q ON q.rid = g.rid \
            WHERE g.vm_key = k.value AND q.start_time >= ?2), \
           r.start_time, r.requestor \
         FROM json_each(?1) k \
         LEFT JOIN requests r ON r.rid = (SELECT max(g.rid) FROM grants g WHERE g.vm_key = k.value)",
    )?;
    let mut rows = stmt.query(params![keys_param(keys)?, nanos(since)])?;
    while let Some(r) = rows.next()? {
        let key: String = r.get(0)?;
        let approved: i64 = r.get(1)?;
        let access = VmAccess {
            approved_since: approved.max(0) as u64,
            last_access: r.get::<_, Option<i64>>(2)?.map(from_nanos).transpose()?,
            last_user: r.get(3)?,
        };
        out.insert(key, access);
    }
    Ok(out)
}

/// The policy and own entry of each key a policy names: two statements (the VMs' rows with
/// their policy, then their ports).
pub fn policies_many(c: &Connection, keys: &[String]) -> rusqlite::Result<HashMap<String, VmPolicy>> {
    let mut out = HashMap::new();
    if keys.is_empty() {
        return Ok(out);
    }
    let json = keys_param(keys)?;
    // (pid, ord) of each VM found → its key, to place the ports.
    let mut at: HashMap<(i64, i64), String> = HashMap::new();
    let mut vms = c.prepare_cached(
        "SELECT v.vm_key, v.pid, v.ord, v.vm_id, v.public_ip, p.subscription, p.resource_group, p.location, p.name \
         FROM policy_vms v JOIN policies p ON p.pid = v.pid WHERE v.vm_key IN (SELECT value FROM json_each(?1))",
    )?;
    let mut rows = vms.query([&json])?;
    while let Some(r) = rows.next()? {
        let key: String = r.get(0)?;
        let id: String = r.get(3)?;
        let policy =
            PolicyRef { subscription: r.get(5)?, resource_group: r.get(6)?, location: r.get(7)?, name: r.get(8)? };
        let vm = PolicyVm { id: vm_id(&id)?, ports: Vec::new(), public_ip_address: r.get(4)? };
        at.insert((r.get(1)?, r.get(2)?), key.clone());
        out.insert(key, VmPolicy { policy, vm });
    }
    let mut ports = c.prepare_cached(
        "SELECT pp.pid, pp.vm_ord, pp.number, pp.protocol, pp.source_form, pp.sources, pp.max_duration, pp.cut_sessions, \
         pp.mapped_port, pp.require_approval, pp.approval_timeout \
         FROM policy_vms v JOIN policy_ports pp ON pp.pid = v.pid AND pp.vm_ord = v.ord \
         WHERE v.vm_key IN (SELECT value FROM json_each(?1)) ORDER BY pp.pid, pp.vm_ord, pp.ord",
    )?;
    let mut rows = ports.query([&json])?;
    while let Some(r) = rows.next()? {
        let rule = port_rule_at(r, 2)?;
        if let Some(entry) = at.get(&(r.get(0)?, r.get(1)?)).and_then(|k| out.get_mut(k)) {
            entry.vm.ports.push(rule);
        }
    }
    Ok(out)
}
