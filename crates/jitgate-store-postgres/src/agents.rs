//! Agents: joining with a join token, and the per-agent enforcement state.

use std::collections::HashMap;
use std::net::IpAddr;

use time::OffsetDateTime;

use jitgate_core::enforcement::{AgentMode, EnforcedGrant, EnforcedPort, EnforcementState, StateBuilder};
use jitgate_core::Protocol;
use jitgate_store::AgentRecord;

use jitgate_core::audit::AuditEvent;
use jitgate_core::join;
use jitgate_store::AgentJoin;

use crate::rows::{self, corrupt, decode_sources, nanos};
use crate::{reject, Ctx, Db, Error, Res};

pub async fn agent_by_id(db: &Db, id: &str) -> Res<Option<AgentRecord>> {
    db.opt("SELECT * FROM agents WHERE id = $1", &[&id]).await?.map(|r| rows::agent_from_row(&r)).transpose()
}

/// Builds what each of `agents` must enforce at `now`, in their order, with a fixed number of
/// statements however many agents there are (one more per gateway).
pub async fn states(db: &Db, agents: &[AgentRecord], now: OffsetDateTime) -> Res<Vec<EnforcementState>> {
    let revision = rows::revision(db).await?;
    // The VMs each agent enforces for, with the address traffic to them has (gateway mode).
    let mut targets: HashMap<&str, Vec<(String, Option<IpAddr>)>> = HashMap::new();
    // Host agents: the VM bound to each (none once the VM was deleted or another agent took it over).
    let hosts: Vec<&str> = agents.iter().filter(|a| a.mode == AgentMode::Host).map(|a| a.id.as_str()).collect();
    if !hosts.is_empty() {
        for r in db.rows("SELECT agent_id, key FROM vms WHERE agent_id = ANY($1) ORDER BY key", &[&hosts]).await? {
            let (agent, key): (String, String) = (r.try_get(0)?, r.try_get(1)?);
            if let Some(id) = hosts.iter().find(|h| **h == agent) {
                targets.entry(id).or_default().push((key, None));
            }
        }
    }
    // Cloud connectors: the VMs each registered that JIT can protect, with their private addresses.
    let clouds: Vec<&str> = agents.iter().filter(|a| a.mode == AgentMode::Cloud).map(|a| a.id.as_str()).collect();
    if !clouds.is_empty() {
        let sql = "SELECT agent_id, key, address FROM vms WHERE agent_id = ANY($1) AND gateway IS NULL \
                   AND unsupported_reason IS NULL ORDER BY key";
        for r in db.rows(sql, &[&clouds]).await? {
            let (agent, key, address): (String, String, Option<String>) = (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
            if let Some(id) = clouds.iter().find(|c| **c == agent) {
                targets.entry(id).or_default().push((key, address.and_then(|a| a.parse().ok())));
            }
        }
    }
    // Gateways: the VMs of the gateway's own subscription attached to it by name.
    for agent in agents.iter().filter(|a| a.mode == AgentMode::Gateway) {
        let rows_ = db
            .rows(
                "SELECT key, address FROM vms WHERE lower(gateway) = lower($1) AND starts_with(key, $2) \
                 AND address IS NOT NULL ORDER BY key",
                &[&agent.name, &rows::subscription_prefix(&agent.subscription)],
            )
            .await?;
        let list = rows_
            .iter()
            .filter_map(|r| {
                let key: String = r.try_get(0).ok()?;
                let address: String = r.try_get(1).ok()?;
                address.parse().ok().map(|ip| (key, Some(ip)))
            })
            .collect();
        targets.insert(agent.id.as_str(), list);
    }
    // Each key once: a VM two agents enforce would otherwise have its rows twice.
    let mut keys: Vec<&str> = targets.values().flatten().map(|(k, _)| k.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    // The policies' ports by a join on the keys (see `fanout`: `= ANY` of many keys is matched
    // key by key against every row of policy_vms). The live grants by the index of each VM's
    // grants by status and end (`grants_vm_status_end`).
    let mut ports_of: HashMap<String, Vec<tokio_postgres::Row>> = HashMap::new();
    let mut grants_of: HashMap<String, Vec<tokio_postgres::Row>> = HashMap::new();
    if !keys.is_empty() {
        let ports = "SELECT v.vm_key, v.vm_id, pp.number, pp.protocol, pp.cut_sessions, pp.mapped_port \
                     FROM unnest($1::text[]) AS u(key) JOIN policy_vms v ON v.vm_key = u.key \
                     JOIN policy_ports pp ON pp.pid = v.pid AND pp.vm_ord = v.ord ORDER BY v.vm_key, pp.ord";
        let grants = "SELECT vm_key, rid, vm_id, protocol, number, source_form, sources, end_time, mapped_port \
                      FROM grants WHERE vm_key = ANY($1) AND status = ANY($2) AND end_time > $3 ORDER BY gid";
        db.prepare(&[ports, grants]).await?;
        let (live, now) = (crate::grants::words(&jitgate_core::lifecycle::LIVE), nanos(now));
        let (by_keys, live_now): (crate::Params<'_>, crate::Params<'_>) = (&[&keys], &[&keys, &live, &now]);
        let (port_rows, grant_rows) = tokio::try_join!(biased; db.rows(ports, by_keys), db.rows(grants, live_now))?;
        for r in port_rows {
            ports_of.entry(r.try_get(0)?).or_default().push(r);
        }
        for r in grant_rows {
            grants_of.entry(r.try_get(0)?).or_default().push(r);
        }
    }
    let mut out = Vec::with_capacity(agents.len());
    for agent in agents {
        let mut state = StateBuilder::default();
        for (key, address) in targets.get(agent.id.as_str()).into_iter().flatten() {
            let address = *address;
            state.next_vm();
            for r in ports_of.get(key).into_iter().flatten() {
                let proto: String = r.try_get(3)?;
                state.port(EnforcedPort {
                    vm_id: r.try_get(1)?,
                    address,
                    protocol: Protocol::parse(&proto).ok_or_else(|| corrupt(format!("protocol {proto}")))?,
                    number: rows::port(r, "number")?,
                    cut_sessions: r.try_get(4)?,
                    mapped_port: rows::opt_port(r, "mapped_port")?,
                });
            }
            for r in grants_of.get(key).into_iter().flatten() {
                let proto: String = r.try_get(3)?;
                let form: String = r.try_get(5)?;
                let sources: String = r.try_get(6)?;
                state.grant(EnforcedGrant {
                    request_id: r.try_get(1)?,
                    vm_id: r.try_get(2)?,
                    address,
                    protocol: Protocol::parse(&proto).ok_or_else(|| corrupt(format!("protocol {proto}")))?,
                    number: rows::port(r, "number")?,
                    sources: decode_sources(&form, &sources)?,
                    end_time: rows::time_at(r, "end_time")?,
                    mapped_port: rows::opt_port(r, "mapped_port")?,
                });
            }
        }
        out.push(state.build(revision, agent.mode));
    }
    Ok(out)
}

/// Consumes a join token and creates the agent (see `AgentStore::join_agent`).
pub async fn join_agent(ctx: &mut Ctx, join: AgentJoin, audit: AuditEvent) -> Res<AgentRecord> {
    // The token row is locked: two agents racing with one token, one of them joins.
    let token = ctx
        .db
        .opt(
            "SELECT subscription, resource_group, location, mode, expires, used, vm FROM join_tokens WHERE hash = $1 FOR UPDATE",
            &[&join.token_hash],
        )
        .await?;
    let (sub, rg, loc, for_vm): (String, String, String, Option<String>) = match &token {
        Some(t) => (t.try_get(0)?, t.try_get(1)?, t.try_get(2)?, t.try_get(6)?),
        None => Default::default(),
    };
    let token = match token {
        Some(t) => Some(join::JoinToken {
            mode: t.try_get(3)?,
            expires: rows::time_at(&t, "expires")?,
            used: t.try_get::<_, Option<i64>>(5)?.is_some(),
            vm: for_vm.clone(),
        }),
        None => None,
    };
    let mut join = join;
    if let Err(invalid) = join::admit(token.as_ref(), &mut join.agent, join.now) {
        return reject(ctx, audit, invalid);
    }
    let now = nanos(join.now);
    let addresses: Vec<String> = join.agent.addresses.iter().map(|a| a.to_string()).collect();
    let mut event = join::joined(&audit, &join.id, &join.agent);
    let mut location = loc.clone();
    let vm = match join.agent.mode {
        AgentMode::Host => match join::host_vm_id(&sub, &rg, &join.agent.name) {
            Ok(id) => Some(id),
            Err(invalid) => return reject(ctx, audit, invalid),
        },
        AgentMode::Gateway => {
            if let Some(g) = rows::gateway_agent(&ctx.db, &sub, &join.agent.name).await? {
                return reject(ctx, audit, join::gateway_exists(&sub, &g.name, &g.id));
            }
            None
        }
        // A connector registers its VMs later, with its inventory.
        AgentMode::Cloud => None,
    };
    if let Some(vm) = &vm {
        let address = join::vm_address(&join.agent);
        ctx.db.opt("SELECT key FROM vms WHERE key = $1 FOR UPDATE", &[&vm.key()]).await?;
        match rows::get_vm(&ctx.db, &vm.key()).await? {
            None => {
                ctx.db
                    .exec(
                        "INSERT INTO vms (key, id, os_type, location, address, agent_id, created, updated) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
                        &[&vm.key(), &vm.as_str(), &join.agent.os_type.as_str(), &loc, &address, &join.id, &now],
                    )
                    .await?;
            }
            Some(existing) => {
                let connector = existing.agent.as_ref().filter(|a| a.mode == AgentMode::Cloud).map(|a| a.name.as_str());
                if let Err(invalid) =
                    join::may_rebind_from(vm, for_vm.is_some(), existing.spec.gateway.as_deref(), connector)
                {
                    return reject(ctx, audit, invalid);
                }
                // The explicit re-bind: new agent and address; location and OS stay.
                location = existing.spec.location.clone();
                ctx.db
                    .exec(
                        "UPDATE vms SET address = $2, agent_id = $3, updated = $4 WHERE key = $1",
                        &[&vm.key(), &address, &join.id, &now],
                    )
                    .await?;
                event = join::rebound(event, existing.agent.map(|a| a.id), existing.spec.address, address);
            }
        }
        // The VM's earlier host agent (if any) is replaced: its credential stops working.
        ctx.db.exec("DELETE FROM agents WHERE vm_key = $1 AND mode = 'host'", &[&vm.key()]).await?;
    }
    ctx.db.exec("UPDATE join_tokens SET used = $2 WHERE hash = $1", &[&join.token_hash, &now]).await?;
    ctx.db
        .exec(
            "INSERT INTO agents (id, name, mode, subscription, resource_group, location, vm_key, vm_id, credential_hash, \
             os_type, addresses, public_address, hostname, joined) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
            &[
                &join.id,
                &join.agent.name,
                &join.agent.mode.as_str(),
                &sub,
                &rg,
                &location,
                &vm.as_ref().map(|v| v.key()),
                &vm.as_ref().map(|v| v.as_str().to_owned()),
                &join.credential_hash,
                &join.agent.os_type.as_str(),
                &addresses.join(" "),
                &join.agent.public_address.map(|a| a.to_string()),
                &join.agent.hostname,
                &now,
            ],
        )
        .await?;
    ctx.bump_revision();
    if let Some(vm) = &vm {
        event.resource_id = vm.as_str().to_owned();
    }
    ctx.audit(event);
    agent_by_id(&ctx.db, &join.id).await?.ok_or_else(|| Error::Corrupt("the agent vanished".into()))
}
