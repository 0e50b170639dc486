//! Agents, join tokens, revoke and the per-agent enforcement state.

use std::net::IpAddr;

use rusqlite::types::Value;
use rusqlite::{params, Connection, OptionalExtension};
use time::OffsetDateTime;

use jitgate_core::enforcement::{AgentMode, EnforcedGrant, EnforcedPort, EnforcementState, StateBuilder};
use jitgate_core::Protocol;
use jitgate_store::AgentRecord;

use crate::rows::{self, corrupt, decode_sources, from_nanos, nanos};

pub fn agent_by_id(conn: &Connection, id: &str) -> rusqlite::Result<Option<AgentRecord>> {
    conn.prepare_cached("SELECT * FROM agents WHERE id = ?1")?.query_row([id], rows::agent_from_row).optional()
}

/// Builds what one agent must enforce at `now`.
pub fn state(conn: &Connection, agent: &AgentRecord, now: OffsetDateTime) -> rusqlite::Result<EnforcementState> {
    let revision = rows::revision(conn)?;
    // The VMs this agent enforces for, with the address traffic to them has (gateway mode).
    let targets: Vec<(String, Option<IpAddr>)> = match agent.mode {
        // The VM bound to this agent (none once the VM was deleted or another agent took it over).
        AgentMode::Host => conn
            .prepare_cached("SELECT key FROM vms WHERE agent_id = ?1 ORDER BY key")?
            .query_map([&agent.id], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?
            .into_iter()
            .map(|k| (k, None))
            .collect(),
        // The VMs of the gateway's own subscription attached to it by name.
        AgentMode::Gateway => conn
            .prepare_cached(
                "SELECT key, address FROM vms WHERE lower(gateway) = lower(?1) AND substr(key, 1, length(?2)) = ?2 \
                 AND address IS NOT NULL ORDER BY key",
            )?
            .query_map(params![agent.name, rows::subscription_prefix(&agent.subscription)], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })?
            .filter_map(|r| r.ok())
            .filter_map(|(k, a)| a.parse().ok().map(|ip| (k, Some(ip))))
            .collect(),
        // The VMs the connector registered that JIT can protect, with their private addresses.
        AgentMode::Cloud => conn
            .prepare_cached(
                "SELECT key, address FROM vms WHERE agent_id = ?1 AND gateway IS NULL AND unsupported_reason IS NULL \
                 ORDER BY key",
            )?
            .query_map([&agent.id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?
            .into_iter()
            .map(|(k, a)| (k, a.and_then(|a| a.parse().ok())))
            .collect(),
    };
    let mut state = StateBuilder::default();
    let mut port_stmt = conn.prepare_cached(
        "SELECT v.vm_id, pp.number, pp.protocol, pp.cut_sessions, pp.mapped_port FROM policy_vms v \
         JOIN policy_ports pp ON pp.pid = v.pid AND pp.vm_ord = v.ord WHERE v.vm_key = ?1 ORDER BY pp.ord",
    )?;
    let mut grant_stmt = conn.prepare_cached(&format!(
        "SELECT rid, vm_id, protocol, number, source_form, sources, end_time, mapped_port FROM grants \
         WHERE vm_key = ?1 AND {} AND end_time > ?2 ORDER BY gid",
        crate::grants::status_in("status", &jitgate_core::lifecycle::LIVE)
    ))?;
    for (key, address) in targets {
        state.next_vm();
        let mut rows_ = port_stmt.query([&key])?;
        while let Some(r) = rows_.next()? {
            let proto: String = r.get(2)?;
            state.port(EnforcedPort {
                vm_id: r.get(0)?,
                address,
                protocol: Protocol::parse(&proto).ok_or_else(|| corrupt(format!("protocol {proto}")))?,
                number: r.get(1)?,
                cut_sessions: r.get(3)?,
                mapped_port: r.get(4)?,
            });
        }
        let mut rows_ =
            grant_stmt.query(crate::grants::bind([Value::Text(key.clone()), Value::Integer(nanos(now))]))?;
        while let Some(r) = rows_.next()? {
            let proto: String = r.get(2)?;
            let form: String = r.get(4)?;
            let sources: String = r.get(5)?;
            state.grant(EnforcedGrant {
                request_id: r.get(0)?,
                vm_id: r.get(1)?,
                address,
                protocol: Protocol::parse(&proto).ok_or_else(|| corrupt(format!("protocol {proto}")))?,
                number: r.get(3)?,
                sources: decode_sources(&form, &sources)?,
                end_time: from_nanos(r.get(6)?)?,
                mapped_port: r.get(7)?,
            });
        }
    }
    Ok(state.build(revision, agent.mode))
}
