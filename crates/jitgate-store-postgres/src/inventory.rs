//! The facts the inventory shows of a page of VMs, read for all of them at once: the VMs' keys
//! go in as one array parameter, so a page is a fixed number of statements whatever its size.

use std::collections::HashMap;

use time::OffsetDateTime;

use jitgate_core::{PolicyRef, PolicyVm};
use jitgate_store::{VmAccess, VmPolicy};

use crate::rows::{nanos, opt_time, port_rule_of, vm_id};
use crate::{Db, Res};

/// `vm_access` of each key, in one statement answered from `grants_vm_rid`.
pub async fn access_many(db: &Db, keys: &[String], since: OffsetDateTime) -> Res<HashMap<String, VmAccess>> {
    let mut out: HashMap<String, VmAccess> = keys.iter().map(|k| (k.clone(), VmAccess::default())).collect();
    if keys.is_empty() {
        return Ok(out);
    }
    let found = db
        .rows(
            "SELECT k.key, \
               (SELECT count(DISTINCT g.rid) FROM grants g JOIN requests q ON q.rid = g.rid \
                WHERE g.vm_key = k.key AND q.start_time >= $2) AS approved, \
               r.start_time, r.requestor \
             FROM unnest($1::text[]) AS k(key) \
             LEFT JOIN requests r ON r.rid = (SELECT max(g.rid) FROM grants g WHERE g.vm_key = k.key)",
            &[&keys, &nanos(since)],
        )
        .await?;
    for r in found {
        let key: String = r.try_get("key")?;
        let approved: i64 = r.try_get("approved")?;
        let access = VmAccess {
            approved_since: approved.max(0) as u64,
            last_access: opt_time(&r, "start_time")?,
            last_user: r.try_get("requestor")?,
        };
        out.insert(key, access);
    }
    Ok(out)
}

/// The policy and own entry of each key a policy names: two statements (the VMs' rows with
/// their policy, then their ports).
pub async fn policies_many(db: &Db, keys: &[String]) -> Res<HashMap<String, VmPolicy>> {
    let mut out = HashMap::new();
    if keys.is_empty() {
        return Ok(out);
    }
    // (pid, ord) of each VM found → its key, to place the ports.
    let mut at: HashMap<(i64, i64), String> = HashMap::new();
    let vms = db
        .rows(
            "SELECT v.vm_key, v.pid, v.ord, v.vm_id, v.public_ip, p.subscription, p.resource_group, p.location, p.name \
             FROM policy_vms v JOIN policies p ON p.pid = v.pid WHERE v.vm_key = ANY($1)",
            &[&keys],
        )
        .await?;
    for r in vms {
        let key: String = r.try_get("vm_key")?;
        let id: String = r.try_get("vm_id")?;
        let policy = PolicyRef {
            subscription: r.try_get("subscription")?,
            resource_group: r.try_get("resource_group")?,
            location: r.try_get("location")?,
            name: r.try_get("name")?,
        };
        let vm = PolicyVm { id: vm_id(&id)?, ports: Vec::new(), public_ip_address: r.try_get("public_ip")? };
        at.insert((r.try_get("pid")?, r.try_get("ord")?), key.clone());
        out.insert(key, VmPolicy { policy, vm });
    }
    let ports = db
        .rows(
            "SELECT pp.* FROM policy_vms v JOIN policy_ports pp ON pp.pid = v.pid AND pp.vm_ord = v.ord \
             WHERE v.vm_key = ANY($1) ORDER BY pp.pid, pp.vm_ord, pp.ord",
            &[&keys],
        )
        .await?;
    for r in ports {
        let rule = port_rule_of(&r)?;
        let place: (i64, i64) = (r.try_get("pid")?, r.try_get("vm_ord")?);
        if let Some(entry) = at.get(&place).and_then(|k| out.get_mut(k)) {
            entry.vm.ports.push(rule);
        }
    }
    Ok(out)
}
