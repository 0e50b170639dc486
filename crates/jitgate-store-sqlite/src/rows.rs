//! Encoding of domain values into columns and back, and the queries shared by readers and the
//! writer.

use std::collections::BTreeMap;

use rusqlite::types::Type;
use rusqlite::{params, Connection, OptionalExtension, Row};
use time::OffsetDateTime;

use jitgate_core::audit::{AuditEvent, AuditStatus};
use jitgate_core::enforcement::{AgentMode, MappedClaim};
use jitgate_core::initiate::{GrantStatus, StatusReason};
use jitgate_core::{AccessDuration, OsType, Policy, PolicyRef, PolicyVm, PortRule, Protocol, SourceSpec, VmId};
use jitgate_store::{
    AccessRequestRecord, AgentRecord, AuditRecord, GrantRecord, PolicyRecord, Vm, VmSpec, REQUEST_HISTORY_LIMIT,
};

pub fn nanos(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos()).unwrap_or(i64::MAX)
}

pub fn from_nanos(n: i64) -> rusqlite::Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(n)).map_err(|e| corrupt(format!("time {n}: {e}")))
}

/// A stored value that no longer parses: the database was changed behind our back.
pub fn corrupt(what: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(0, Type::Text, what.into())
}

pub fn hash_from_hex(s: &str) -> rusqlite::Result<[u8; 32]> {
    let bytes = hex::decode(s).map_err(|e| corrupt(format!("hash {s}: {e}")))?;
    bytes.try_into().map_err(|_| corrupt(format!("hash {s}: not 32 bytes")))
}

pub use jitgate_store::stored::encode_sources;

/// The sources [`encode_sources`] stored.
pub fn decode_sources(form: &str, texts: &str) -> rusqlite::Result<SourceSpec> {
    jitgate_store::stored::decode_sources(form, texts).map_err(corrupt)
}

fn protocol(s: &str) -> rusqlite::Result<Protocol> {
    Protocol::parse(s).ok_or_else(|| corrupt(format!("protocol {s}")))
}

pub fn vm_id(s: &str) -> rusqlite::Result<VmId> {
    VmId::parse(s).map_err(corrupt)
}

pub fn vm_from_row(r: &Row<'_>) -> rusqlite::Result<Vm> {
    vm_at(r, &VmCols::of(r.as_ref())?)
}

/// Where a statement's result holds each column of `vms`: looked up once per statement when
/// many rows are read (by name per value, a wide row costs a string comparison per column).
pub struct VmCols {
    id: usize,
    os_type: usize,
    address: usize,
    location: usize,
    gateway: usize,
    classic: usize,
    created: usize,
    updated: usize,
    cloud: usize,
    unsupported_reason: usize,
    cloud_failure: usize,
}

impl VmCols {
    pub fn of(stmt: &rusqlite::Statement<'_>) -> rusqlite::Result<Self> {
        Ok(VmCols {
            id: stmt.column_index("id")?,
            os_type: stmt.column_index("os_type")?,
            address: stmt.column_index("address")?,
            location: stmt.column_index("location")?,
            gateway: stmt.column_index("gateway")?,
            classic: stmt.column_index("classic")?,
            created: stmt.column_index("created")?,
            updated: stmt.column_index("updated")?,
            cloud: stmt.column_index("cloud")?,
            unsupported_reason: stmt.column_index("unsupported_reason")?,
            cloud_failure: stmt.column_index("cloud_failure")?,
        })
    }
}

fn vm_at(r: &Row<'_>, c: &VmCols) -> rusqlite::Result<Vm> {
    let id: String = r.get(c.id)?;
    let os: String = r.get(c.os_type)?;
    let address: Option<String> = r.get(c.address)?;
    let cloud: Option<String> = r.get(c.cloud)?;
    let cloud = match cloud {
        Some(text) => Some(
            jitgate_store::stored::decode_cloud(&text, r.get(c.unsupported_reason)?, r.get(c.cloud_failure)?)
                .map_err(corrupt)?,
        ),
        None => None,
    };
    Ok(Vm {
        spec: VmSpec {
            id: vm_id(&id)?,
            os_type: OsType::parse(&os).ok_or_else(|| corrupt(format!("os type {os}")))?,
            location: r.get(c.location)?,
            address: address.map(|a| a.parse().map_err(|_| corrupt(format!("address {a}")))).transpose()?,
            gateway: r.get(c.gateway)?,
            classic: r.get(c.classic)?,
        },
        created: from_nanos(r.get(c.created)?)?,
        updated: from_nanos(r.get(c.updated)?)?,
        agent: None,
        cloud,
    })
}

/// A VM with its enforcement point (host agent, or gateway agent by name).
pub fn get_vm(conn: &Connection, key: &str) -> rusqlite::Result<Option<Vm>> {
    let vm = conn.prepare_cached("SELECT * FROM vms WHERE key = ?1")?.query_row([key], vm_from_row).optional()?;
    vm.map(|vm| with_agent(conn, vm, key)).transpose()
}

/// Every VM with its enforcement point, in key order: two reads (the VMs, the agents) whatever
/// the count, joined here, with the same rule as [`with_agent`].
pub fn all_vms(conn: &Connection) -> rusqlite::Result<Vec<Vm>> {
    let mut hosts = std::collections::HashMap::new();
    let mut gateways = std::collections::HashMap::new();
    let mut agents = conn.prepare_cached("SELECT * FROM agents")?;
    let cols = AgentCols::of(&agents)?;
    let mut rows = agents.query([])?;
    while let Some(r) = rows.next()? {
        let agent = agent_at(r, &cols)?;
        if agent.mode == AgentMode::Gateway {
            gateways.insert((agent.subscription.to_ascii_lowercase(), agent.name.to_ascii_lowercase()), agent);
        } else {
            hosts.insert(agent.id.clone(), agent);
        }
    }
    let mut stmt = conn.prepare_cached("SELECT * FROM vms ORDER BY key")?;
    let cols = VmCols::of(&stmt)?;
    let agent_at_col = stmt.column_index("agent_id")?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let mut vm = vm_at(r, &cols)?;
        let agent_id: Option<String> = r.get(agent_at_col)?;
        vm.agent = match &vm.spec.gateway {
            Some(gw) => {
                gateways.get(&(vm.spec.id.subscription().to_ascii_lowercase(), gw.to_ascii_lowercase())).cloned()
            }
            None => agent_id.and_then(|id| hosts.get(&id).cloned()),
        };
        out.push(vm);
    }
    Ok(out)
}

/// Fills in the VM's enforcement point: the gateway of that name in the VM's subscription, or
/// the host agent (or cloud connector) bound to this very VM row (a VM registered again has none
/// until one joins).
pub fn with_agent(conn: &Connection, mut vm: Vm, key: &str) -> rusqlite::Result<Vm> {
    vm.agent = match &vm.spec.gateway {
        Some(gw) => gateway_agent(conn, vm.spec.id.subscription(), gw)?,
        None => conn
            .prepare_cached(
                "SELECT a.* FROM vms v JOIN agents a ON a.id = v.agent_id WHERE v.key = ?1 AND a.mode <> 'gateway'",
            )?
            .query_row([key], agent_from_row)
            .optional()?,
    };
    Ok(vm)
}

/// The gateway agent named `name` in `subscription` (both compare case-insensitively).
pub fn gateway_agent(conn: &Connection, subscription: &str, name: &str) -> rusqlite::Result<Option<AgentRecord>> {
    conn.prepare_cached(
        "SELECT * FROM agents WHERE mode = 'gateway' AND lower(subscription) = lower(?1) AND lower(name) = lower(?2)",
    )?
    .query_row([subscription, name], agent_from_row)
    .optional()
}

/// The key prefix of every VM in a subscription (keys are lower-cased ARM ids).
pub fn subscription_prefix(subscription: &str) -> String {
    format!("/subscriptions/{}/", subscription.to_ascii_lowercase())
}

/// The gateway ports claimed by policies on VMs attached to gateway `gateway` of `subscription`,
/// leaving out the claims of policy `except_policy` and of VM `except_vm` (keys; "" for none).
pub fn gateway_claims(
    conn: &Connection,
    subscription: &str,
    gateway: &str,
    except_policy: &str,
    except_vm: &str,
) -> rusqlite::Result<Vec<MappedClaim>> {
    let mut stmt = conn.prepare_cached(
        "SELECT p.subscription, p.resource_group, p.location, p.name, pv.vm_id, pp.number, pp.protocol, pp.mapped_port \
         FROM policy_ports pp JOIN policy_vms pv ON pv.pid = pp.pid AND pv.ord = pp.vm_ord \
         JOIN policies p ON p.pid = pp.pid JOIN vms v ON v.key = pv.vm_key \
         WHERE pp.mapped_port IS NOT NULL AND lower(v.gateway) = lower(?1) AND substr(v.key, 1, length(?2)) = ?2 \
         AND p.key <> ?3 AND pv.vm_key <> ?4",
    )?;
    let rows = stmt.query_map(params![gateway, subscription_prefix(subscription), except_policy, except_vm], |r| {
        let reference =
            PolicyRef { subscription: r.get(0)?, resource_group: r.get(1)?, location: r.get(2)?, name: r.get(3)? };
        let vm: String = r.get(4)?;
        let proto: String = r.get(6)?;
        Ok(MappedClaim {
            policy: reference.id(),
            vm: vm_id(&vm)?.name().to_owned(),
            number: r.get(5)?,
            protocol: protocol(&proto)?,
            mapped_port: r.get(7)?,
            target: None,
        })
    })?;
    rows.collect()
}

pub fn agent_from_row(r: &Row<'_>) -> rusqlite::Result<AgentRecord> {
    agent_at(r, &AgentCols::of(r.as_ref())?)
}

/// Where a statement's result holds each column of `agents` (see [`VmCols`]).
pub struct AgentCols([usize; 15]);

impl AgentCols {
    const NAMES: [&'static str; 15] = [
        "mode",
        "addresses",
        "public_address",
        "last_seen",
        "nft_usable",
        "applied_revision",
        "delivered_revision",
        "id",
        "name",
        "subscription",
        "resource_group",
        "location",
        "vm_id",
        "joined",
        "nft_error",
    ];

    pub fn of(stmt: &rusqlite::Statement<'_>) -> rusqlite::Result<Self> {
        let mut at = [0; 15];
        for (slot, name) in at.iter_mut().zip(Self::NAMES) {
            *slot = stmt.column_index(name)?;
        }
        Ok(AgentCols(at))
    }
}

fn agent_at(r: &Row<'_>, c: &AgentCols) -> rusqlite::Result<AgentRecord> {
    let [mode, addresses, public, last_seen, usable, applied, delivered, id, name, subscription, group, location, vm_id, joined, nft_error] =
        c.0;
    let mode: String = r.get(mode)?;
    let addresses: String = r.get(addresses)?;
    let public: Option<String> = r.get(public)?;
    let last_seen: Option<i64> = r.get(last_seen)?;
    let usable: Option<bool> = r.get(usable)?;
    let applied: i64 = r.get(applied)?;
    let delivered: i64 = r.get(delivered)?;
    Ok(AgentRecord {
        id: r.get(id)?,
        name: r.get(name)?,
        mode: AgentMode::parse(&mode).ok_or_else(|| corrupt(format!("agent mode {mode}")))?,
        subscription: r.get(subscription)?,
        resource_group: r.get(group)?,
        location: r.get(location)?,
        vm_id: r.get(vm_id)?,
        addresses: addresses.split_whitespace().filter_map(|a| a.parse().ok()).collect(),
        public_address: public.and_then(|a| a.parse().ok()),
        joined: from_nanos(r.get(joined)?)?,
        last_seen: last_seen.map(from_nanos).transpose()?,
        applied_revision: applied as u64,
        delivered_revision: delivered as u64,
        nft_usable: usable,
        nft_error: r.get(nft_error)?,
    })
}

/// Bumps the enforcement revision inside the current transaction; returns the new value.
pub fn bump_revision(conn: &Connection) -> rusqlite::Result<u64> {
    conn.prepare_cached("UPDATE meta SET value = value + 1 WHERE key = 'revision' RETURNING value")?
        .query_row([], |r| r.get::<_, i64>(0))
        .map(|v| v as u64)
}

pub fn revision(conn: &Connection) -> rusqlite::Result<u64> {
    conn.prepare_cached("SELECT value FROM meta WHERE key = 'revision'")?
        .query_row([], |r| r.get::<_, i64>(0))
        .map(|v| v as u64)
}

/// The policy row id and its full record.
pub fn load_policy(conn: &Connection, key: &str) -> rusqlite::Result<Option<(i64, PolicyRecord)>> {
    let Some((pid, policy)) = load_policy_only(conn, key)? else { return Ok(None) };
    let requests = load_requests(conn, pid)?;
    Ok(Some((pid, PolicyRecord { policy, requests })))
}

/// The policy row id and its rules, without the request history (the initiate hot path).
pub fn load_policy_only(conn: &Connection, key: &str) -> rusqlite::Result<Option<(i64, Policy)>> {
    let head = conn
        .prepare_cached("SELECT pid, subscription, resource_group, location, name, kind FROM policies WHERE key = ?1")?
        .query_row([key], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                PolicyRef { subscription: r.get(1)?, resource_group: r.get(2)?, location: r.get(3)?, name: r.get(4)? },
                r.get::<_, String>(5)?,
            ))
        })
        .optional()?;
    let Some((pid, reference, kind)) = head else { return Ok(None) };
    Ok(Some((pid, load_policy_body(conn, pid, reference, kind)?)))
}

fn load_policy_body(conn: &Connection, pid: i64, reference: PolicyRef, kind: String) -> rusqlite::Result<Policy> {
    let mut vms: Vec<PolicyVm> = Vec::new();
    let mut stmt = conn.prepare_cached("SELECT vm_id, public_ip FROM policy_vms WHERE pid = ?1 ORDER BY ord")?;
    let mut rows = stmt.query([pid])?;
    while let Some(r) = rows.next()? {
        let id: String = r.get(0)?;
        vms.push(PolicyVm { id: vm_id(&id)?, ports: Vec::new(), public_ip_address: r.get(1)? });
    }
    let mut stmt = conn.prepare_cached(
        "SELECT vm_ord, number, protocol, source_form, sources, max_duration, cut_sessions, mapped_port, require_approval, approval_timeout FROM policy_ports \
         WHERE pid = ?1 ORDER BY vm_ord, ord",
    )?;
    let mut rows = stmt.query([pid])?;
    while let Some(r) = rows.next()? {
        let vm_ord: usize = r.get(0)?;
        let rule = port_rule_at(r, 1)?;
        vms.get_mut(vm_ord).ok_or_else(|| corrupt(format!("port of missing vm {vm_ord}")))?.ports.push(rule);
    }
    Ok(Policy { reference, kind, vms })
}

/// The port rule in the columns `number, protocol, source_form, sources, max_duration,
/// cut_sessions, mapped_port, require_approval, approval_timeout` of `policy_ports`, from `first` on.
pub fn port_rule_at(r: &Row<'_>, first: usize) -> rusqlite::Result<PortRule> {
    let number: u16 = r.get(first)?;
    let proto: String = r.get(first + 1)?;
    let form: String = r.get(first + 2)?;
    let sources: String = r.get(first + 3)?;
    let max: String = r.get(first + 4)?;
    Ok(PortRule {
        number,
        protocol: protocol(&proto)?,
        sources: decode_sources(&form, &sources)?,
        max_duration: AccessDuration::parse(&max).map_err(|e| corrupt(e.0))?,
        cut_sessions: r.get(first + 5)?,
        mapped_port: r.get(first + 6)?,
        require_approval: r.get(first + 7)?,
        approval_timeout: r
            .get::<_, Option<String>>(first + 8)?
            .map(|t| AccessDuration::parse(&t).map_err(|e| corrupt(e.0)))
            .transpose()?,
    })
}

/// A request without its grants, from `rid, requestor, start_time, justification, ext_end,
/// decision_reason`.
fn request_from_row(r: &Row<'_>) -> rusqlite::Result<AccessRequestRecord> {
    Ok(AccessRequestRecord {
        id: r.get(0)?,
        requestor: r.get(1)?,
        start_time: from_nanos(r.get(2)?)?,
        justification: r.get(3)?,
        grants: Vec::new(),
        pending_extension: r.get::<_, Option<i64>>(4)?.map(from_nanos).transpose()?,
        decision_reason: r.get(5)?,
    })
}

/// The most recent requests of a policy, oldest first.
fn load_requests(conn: &Connection, pid: i64) -> rusqlite::Result<Vec<AccessRequestRecord>> {
    let mut stmt = conn.prepare_cached(
        "SELECT rid, requestor, start_time, justification, ext_end, decision_reason FROM requests WHERE pid = ?1 \
         ORDER BY rid DESC LIMIT ?2",
    )?;
    let mut requests = stmt
        .query_map(params![pid, REQUEST_HISTORY_LIMIT as i64], request_from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    requests.reverse();
    let Some(first) = requests.first().map(|r| r.id) else { return Ok(requests) };
    let mut stmt = conn.prepare_cached(
        "SELECT g.rid, g.vm_id, g.number, g.protocol, g.source_form, g.sources, g.end_time, g.status, g.status_reason, \
         g.mapped_port, g.public_ip FROM grants g JOIN requests r ON r.rid = g.rid WHERE r.pid = ?1 AND g.rid >= ?2 ORDER BY g.rid, g.ord",
    )?;
    let mut rows = stmt.query(params![pid, first])?;
    let mut index = 0;
    while let Some(r) = rows.next()? {
        let rid: i64 = r.get(0)?;
        while index < requests.len() && requests[index].id != rid {
            index += 1;
        }
        let Some(request) = requests.get_mut(index) else { break };
        request.grants.push(grant_from_row(r, 1)?);
    }
    Ok(requests)
}

/// Reads the grant columns starting at `at`: vm_id, number, protocol, source_form, sources,
/// end_time, status, status_reason, mapped_port, public_ip.
fn grant_from_row(r: &Row<'_>, at: usize) -> rusqlite::Result<GrantRecord> {
    let proto: String = r.get(at + 2)?;
    let form: String = r.get(at + 3)?;
    let sources: String = r.get(at + 4)?;
    let status: String = r.get(at + 6)?;
    let reason: String = r.get(at + 7)?;
    Ok(GrantRecord {
        vm_id: r.get(at)?,
        number: r.get(at + 1)?,
        protocol: protocol(&proto)?,
        sources: decode_sources(&form, &sources)?,
        end_time: from_nanos(r.get(at + 5)?)?,
        status: GrantStatus::parse(&status).ok_or_else(|| corrupt(format!("status {status}")))?,
        status_reason: StatusReason::parse(&reason).ok_or_else(|| corrupt(format!("status reason {reason}")))?,
        mapped_port: r.get(at + 8)?,
        public_ip: r.get(at + 9)?,
    })
}

/// One request with its grants, by row id.
pub fn load_request(conn: &Connection, rid: i64) -> rusqlite::Result<AccessRequestRecord> {
    let mut request = conn
        .prepare_cached(
            "SELECT rid, requestor, start_time, justification, ext_end, decision_reason FROM requests WHERE rid = ?1",
        )?
        .query_row([rid], request_from_row)?;
    let mut stmt = conn.prepare_cached(
        "SELECT vm_id, number, protocol, source_form, sources, end_time, status, status_reason, mapped_port, public_ip \
         FROM grants WHERE rid = ?1 ORDER BY ord",
    )?;
    let mut rows = stmt.query([rid])?;
    while let Some(r) = rows.next()? {
        request.grants.push(grant_from_row(r, 0)?);
    }
    Ok(request)
}

pub fn audit_from_row(r: &Row<'_>) -> rusqlite::Result<AuditRecord> {
    let status: String = r.get("status")?;
    let properties: String = r.get("properties")?;
    let properties: BTreeMap<String, String> =
        serde_json::from_str(&properties).map_err(|e| corrupt(format!("audit properties: {e}")))?;
    let seq: i64 = r.get("seq")?;
    let prev: String = r.get("prev_hash")?;
    let hash: String = r.get("hash")?;
    Ok(AuditRecord {
        seq: seq as u64,
        event: AuditEvent {
            time: from_nanos(r.get("time")?)?,
            operation: r.get("operation")?,
            status: AuditStatus::parse(&status).ok_or_else(|| corrupt(format!("audit status {status}")))?,
            caller: r.get("caller")?,
            caller_ip: r.get("caller_ip")?,
            resource_id: r.get("resource_id")?,
            correlation_id: r.get("correlation_id")?,
            properties,
        },
        prev_hash: hash_from_hex(&prev)?,
        hash: hash_from_hex(&hash)?,
    })
}

/// The WHERE clause and parameters of one of the four list scopes.
pub fn scope_query(scope: &jitgate_store::ListScope) -> (String, Vec<String>) {
    let l = |s: &str| s.to_ascii_lowercase();
    match scope {
        jitgate_store::ListScope::Subscription { subscription } => ("sub_key = ?1".into(), vec![l(subscription)]),
        jitgate_store::ListScope::SubscriptionLocation { subscription, location } => {
            ("sub_key = ?1 AND loc_key = ?2".into(), vec![l(subscription), l(location)])
        }
        jitgate_store::ListScope::ResourceGroup { subscription, resource_group } => {
            ("sub_key = ?1 AND rg_key = ?2".into(), vec![l(subscription), l(resource_group)])
        }
        jitgate_store::ListScope::ResourceGroupLocation { subscription, resource_group, location } => (
            "sub_key = ?1 AND rg_key = ?2 AND loc_key = ?3".into(),
            vec![l(subscription), l(resource_group), l(location)],
        ),
    }
}
