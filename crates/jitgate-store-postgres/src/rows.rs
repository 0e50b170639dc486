//! Encoding of domain values into columns and back, and the queries shared by reads and
//! changes.

use std::collections::BTreeMap;

use time::OffsetDateTime;
use tokio_postgres::Row;

use jitgate_core::audit::{AuditEvent, AuditStatus};
use jitgate_core::enforcement::{AgentMode, MappedClaim};
use jitgate_core::initiate::{GrantStatus, StatusReason};
use jitgate_core::{AccessDuration, OsType, Policy, PolicyRef, PolicyVm, PortRule, Protocol, SourceSpec, VmId};
use jitgate_store::{
    AccessRequestRecord, AgentRecord, AuditRecord, GrantRecord, PolicyRecord, Vm, VmSpec, REQUEST_HISTORY_LIMIT,
};

use crate::{Db, Error, Res};

pub fn nanos(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos()).unwrap_or(i64::MAX)
}

pub fn from_nanos(n: i64) -> Res<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(n)).map_err(|e| corrupt(format!("time {n}: {e}")))
}

pub fn corrupt(what: impl Into<String>) -> Error {
    Error::Corrupt(what.into())
}

/// A count or a limit as a BIGINT parameter.
pub fn big(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A port number (or mapped port) from its BIGINT column.
pub fn port(r: &Row, col: &str) -> Res<u16> {
    let n: i64 = r.try_get(col)?;
    u16::try_from(n).map_err(|_| corrupt(format!("{col} {n}")))
}

pub fn opt_port(r: &Row, col: &str) -> Res<Option<u16>> {
    let n: Option<i64> = r.try_get(col)?;
    n.map(|n| u16::try_from(n).map_err(|_| corrupt(format!("{col} {n}")))).transpose()
}

pub fn opt_time(r: &Row, col: &str) -> Res<Option<OffsetDateTime>> {
    r.try_get::<_, Option<i64>>(col)?.map(from_nanos).transpose()
}

pub fn time_at(r: &Row, col: &str) -> Res<OffsetDateTime> {
    from_nanos(r.try_get(col)?)
}

pub fn hash_from_hex(s: &str) -> Res<[u8; 32]> {
    let bytes = hex::decode(s).map_err(|e| corrupt(format!("hash {s}: {e}")))?;
    bytes.try_into().map_err(|_| corrupt(format!("hash {s}: not 32 bytes")))
}

pub use jitgate_store::stored::encode_sources;

/// The sources [`encode_sources`] stored.
pub fn decode_sources(form: &str, texts: &str) -> Res<SourceSpec> {
    jitgate_store::stored::decode_sources(form, texts).map_err(corrupt)
}

pub fn protocol(s: &str) -> Res<Protocol> {
    Protocol::parse(s).ok_or_else(|| corrupt(format!("protocol {s}")))
}

pub fn vm_id(s: &str) -> Res<VmId> {
    VmId::parse(s).map_err(corrupt)
}

pub fn status(s: &str) -> Res<GrantStatus> {
    GrantStatus::parse(s).ok_or_else(|| corrupt(format!("status {s}")))
}

pub fn reason(s: &str) -> Res<StatusReason> {
    StatusReason::parse(s).ok_or_else(|| corrupt(format!("status reason {s}")))
}

pub fn vm_from_row(r: &Row) -> Res<Vm> {
    let id: String = r.try_get("id")?;
    let os: String = r.try_get("os_type")?;
    let address: Option<String> = r.try_get("address")?;
    let cloud = match r.try_get::<_, Option<String>>("cloud")? {
        Some(text) => Some(
            jitgate_store::stored::decode_cloud(&text, r.try_get("unsupported_reason")?, r.try_get("cloud_failure")?)
                .map_err(corrupt)?,
        ),
        None => None,
    };
    Ok(Vm {
        spec: VmSpec {
            id: vm_id(&id)?,
            os_type: OsType::parse(&os).ok_or_else(|| corrupt(format!("os type {os}")))?,
            location: r.try_get("location")?,
            address: address.map(|a| a.parse().map_err(|_| corrupt(format!("address {a}")))).transpose()?,
            gateway: r.try_get("gateway")?,
            classic: r.try_get("classic")?,
        },
        created: time_at(r, "created")?,
        updated: time_at(r, "updated")?,
        agent: None,
        cloud,
    })
}

/// The host agent bound to the VM row of `key` (a gateway agent is looked up by name instead).
const HOST_AGENT: &str =
    "SELECT a.* FROM vms v JOIN agents a ON a.id = v.agent_id WHERE v.key = $1 AND a.mode <> 'gateway'";

/// A VM with its enforcement point (host agent, or gateway agent by name). The VM and its host
/// agent are read in one round trip; a VM behind a gateway needs a second (the gateway's).
pub async fn get_vm(db: &Db, key: &str) -> Res<Option<Vm>> {
    let sql = "SELECT * FROM vms WHERE key = $1";
    db.prepare(&[sql, HOST_AGENT]).await?;
    let by_key: crate::Params<'_> = &[&key];
    let (row, host) = tokio::try_join!(biased; db.opt(sql, by_key), db.opt(HOST_AGENT, by_key))?;
    let Some(row) = row else { return Ok(None) };
    let mut vm = vm_from_row(&row)?;
    vm.agent = match &vm.spec.gateway {
        Some(gw) => gateway_agent(db, vm.spec.id.subscription(), gw).await?,
        None => host.map(|r| agent_from_row(&r)).transpose()?,
    };
    Ok(Some(vm))
}

/// The VMs of `keys` that are registered, by key, each with its enforcement point (host agents
/// read in one statement, sent with the VMs' in one round trip; a gateway's looked up by name).
pub async fn get_vms(db: &Db, keys: &[String]) -> Res<std::collections::HashMap<String, Vm>> {
    let mut out = std::collections::HashMap::new();
    match keys {
        [] => return Ok(out),
        [one] => {
            if let Some(vm) = get_vm(db, one).await? {
                out.insert(one.clone(), vm);
            }
            return Ok(out);
        }
        _ => {}
    }
    let mut hosts = std::collections::HashMap::new();
    let (hosts_sql, vms_sql) = (
        "SELECT v.key AS vm_key_, a.* FROM vms v JOIN agents a ON a.id = v.agent_id \
         WHERE v.key = ANY($1) AND a.mode <> 'gateway'",
        "SELECT * FROM vms WHERE key = ANY($1)",
    );
    db.prepare(&[hosts_sql, vms_sql]).await?;
    let by_keys: crate::Params<'_> = &[&keys];
    let (host_rows, vm_rows) = tokio::try_join!(biased; db.rows(hosts_sql, by_keys), db.rows(vms_sql, by_keys))?;
    for r in host_rows {
        hosts.insert(r.try_get::<_, String>("vm_key_")?, agent_from_row(&r)?);
    }
    // Many VMs behind one gateway: it is looked up once.
    let mut gateways: std::collections::HashMap<(String, String), Option<AgentRecord>> = Default::default();
    for r in vm_rows {
        let key: String = r.try_get("key")?;
        let mut vm = vm_from_row(&r)?;
        vm.agent = match &vm.spec.gateway {
            Some(gw) => {
                let at = (vm.spec.id.subscription().to_ascii_lowercase(), gw.to_ascii_lowercase());
                match gateways.get(&at) {
                    Some(found) => found.clone(),
                    None => {
                        let found = gateway_agent(db, vm.spec.id.subscription(), gw).await?;
                        gateways.insert(at, found.clone());
                        found
                    }
                }
            }
            None => hosts.remove(&key),
        };
        out.insert(key, vm);
    }
    Ok(out)
}

/// The gateway agent named `name` in `subscription` (both compare case-insensitively).
pub async fn gateway_agent(db: &Db, subscription: &str, name: &str) -> Res<Option<AgentRecord>> {
    db.opt(
        "SELECT * FROM agents WHERE mode = 'gateway' AND lower(subscription) = lower($1) AND lower(name) = lower($2)",
        &[&subscription, &name],
    )
    .await?
    .map(|r| agent_from_row(&r))
    .transpose()
}

/// The key prefix of every VM in a subscription (keys are lower-cased ARM ids).
pub fn subscription_prefix(subscription: &str) -> String {
    format!("/subscriptions/{}/", subscription.to_ascii_lowercase())
}

/// The gateway ports claimed by policies on VMs attached to gateway `gateway` of `subscription`,
/// leaving out the claims of policy `except_policy` and of VM `except_vm` (keys; "" for none).
pub async fn gateway_claims(
    db: &Db,
    subscription: &str,
    gateway: &str,
    except_policy: &str,
    except_vm: &str,
) -> Res<Vec<MappedClaim>> {
    let rows = db
        .rows(
            "SELECT p.subscription, p.resource_group, p.location, p.name, pv.vm_id, pp.number, pp.protocol, pp.mapped_port \
             FROM policy_ports pp JOIN policy_vms pv ON pv.pid = pp.pid AND pv.ord = pp.vm_ord \
             JOIN policies p ON p.pid = pp.pid JOIN vms v ON v.key = pv.vm_key \
             WHERE pp.mapped_port IS NOT NULL AND lower(v.gateway) = lower($1) AND starts_with(v.key, $2) \
             AND p.key <> $3 AND pv.vm_key <> $4",
            &[&gateway, &subscription_prefix(subscription), &except_policy, &except_vm],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let reference = PolicyRef {
                subscription: r.try_get(0)?,
                resource_group: r.try_get(1)?,
                location: r.try_get(2)?,
                name: r.try_get(3)?,
            };
            let vm: String = r.try_get(4)?;
            let proto: String = r.try_get(6)?;
            Ok(MappedClaim {
                policy: reference.id(),
                vm: vm_id(&vm)?.name().to_owned(),
                number: port(r, "number")?,
                protocol: protocol(&proto)?,
                mapped_port: port(r, "mapped_port")?,
                target: None,
            })
        })
        .collect()
}

pub fn agent_from_row(r: &Row) -> Res<AgentRecord> {
    let mode: String = r.try_get("mode")?;
    let addresses: String = r.try_get("addresses")?;
    let public: Option<String> = r.try_get("public_address")?;
    let applied: i64 = r.try_get("applied_revision")?;
    let delivered: i64 = r.try_get("delivered_revision")?;
    Ok(AgentRecord {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        mode: AgentMode::parse(&mode).ok_or_else(|| corrupt(format!("agent mode {mode}")))?,
        subscription: r.try_get("subscription")?,
        resource_group: r.try_get("resource_group")?,
        location: r.try_get("location")?,
        vm_id: r.try_get("vm_id")?,
        addresses: addresses.split_whitespace().filter_map(|a| a.parse().ok()).collect(),
        public_address: public.and_then(|a| a.parse().ok()),
        joined: time_at(r, "joined")?,
        last_seen: opt_time(r, "last_seen")?,
        applied_revision: applied.max(0) as u64,
        delivered_revision: delivered.max(0) as u64,
        nft_usable: r.try_get("nft_usable")?,
        nft_error: r.try_get("nft_error")?,
    })
}

/// Bumps the enforcement revision inside the current transaction; returns the new value.
pub async fn bump_revision(db: &Db) -> Res<u64> {
    let v: i64 =
        db.one("UPDATE meta SET value = value + 1 WHERE key = 'revision' RETURNING value", &[]).await?.try_get(0)?;
    Ok(v.max(0) as u64)
}

pub async fn revision(db: &Db) -> Res<u64> {
    let v: i64 = db.one("SELECT value FROM meta WHERE key = 'revision'", &[]).await?.try_get(0)?;
    Ok(v.max(0) as u64)
}

/// The policy row id and its full record.
pub async fn load_policy(db: &Db, key: &str) -> Res<Option<(i64, PolicyRecord)>> {
    let Some((pid, policy)) = load_policy_only(db, key).await? else { return Ok(None) };
    let requests = load_requests(db, pid).await?;
    Ok(Some((pid, PolicyRecord { policy, requests })))
}

/// The policy row id and its rules, without the request history (the initiate hot path).
pub async fn load_policy_only(db: &Db, key: &str) -> Res<Option<(i64, Policy)>> {
    let Some(r) = db
        .opt("SELECT pid, subscription, resource_group, location, name, kind FROM policies WHERE key = $1", &[&key])
        .await?
    else {
        return Ok(None);
    };
    let (pid, reference) = policy_head(&r)?;
    let kind: String = r.try_get(5)?;
    Ok(Some((pid, load_policy_body(db, pid, reference, kind).await?)))
}

/// The row id and the reference in a policy row read as `pid, subscription, resource_group,
/// location, name, …`.
fn policy_head(r: &Row) -> Res<(i64, PolicyRef)> {
    let reference = PolicyRef {
        subscription: r.try_get(1)?,
        resource_group: r.try_get(2)?,
        location: r.try_get(3)?,
        name: r.try_get(4)?,
    };
    Ok((r.try_get(0)?, reference))
}

/// The port rule in a row with the columns of `policy_ports` (by name).
pub fn port_rule_of(r: &Row) -> Res<PortRule> {
    let proto: String = r.try_get("protocol")?;
    let form: String = r.try_get("source_form")?;
    let sources: String = r.try_get("sources")?;
    let max: String = r.try_get("max_duration")?;
    Ok(PortRule {
        number: port(r, "number")?,
        protocol: protocol(&proto)?,
        sources: decode_sources(&form, &sources)?,
        max_duration: AccessDuration::parse(&max).map_err(|e| corrupt(e.0))?,
        cut_sessions: r.try_get("cut_sessions")?,
        mapped_port: opt_port(r, "mapped_port")?,
        require_approval: r.try_get("require_approval")?,
        approval_timeout: r
            .try_get::<_, Option<String>>("approval_timeout")?
            .map(|t| AccessDuration::parse(&t).map_err(|e| corrupt(e.0)))
            .transpose()?,
    })
}

async fn load_policy_body(db: &Db, pid: i64, reference: PolicyRef, kind: String) -> Res<Policy> {
    let vms = db.rows("SELECT vm_id, public_ip FROM policy_vms WHERE pid = $1 ORDER BY ord", &[&pid]).await?;
    let ports = db
        .rows(
            "SELECT vm_ord, number, protocol, source_form, sources, max_duration, cut_sessions, mapped_port, require_approval, \
             approval_timeout FROM policy_ports WHERE pid = $1 ORDER BY vm_ord, ord",
            &[&pid],
        )
        .await?;
    policy_of(reference, kind, &vms, &ports)
}

/// A policy from its VM rows (`vm_id, public_ip`, in order) and its port rows (`vm_ord` first,
/// then the columns of `policy_ports` by name, in order).
fn policy_of(reference: PolicyRef, kind: String, vm_rows: &[Row], port_rows: &[Row]) -> Res<Policy> {
    let mut vms: Vec<PolicyVm> = Vec::with_capacity(vm_rows.len());
    for r in vm_rows {
        let id: String = r.try_get(0)?;
        vms.push(PolicyVm { id: vm_id(&id)?, ports: Vec::new(), public_ip_address: r.try_get(1)? });
    }
    for r in port_rows {
        let vm_ord: i64 = r.try_get(0)?;
        let rule = port_rule_of(r)?;
        usize::try_from(vm_ord)
            .ok()
            .and_then(|i| vms.get_mut(i))
            .ok_or_else(|| corrupt(format!("port of missing vm {vm_ord}")))?
            .ports
            .push(rule);
    }
    Ok(Policy { reference, kind, vms })
}

/// Locks the row of policy `key` (`FOR UPDATE`) and reads it, then its VMs and ports: three
/// statements sent at once, the reads run after the lock is held. The statements, to be
/// prepared ahead of a pipeline that starts with them: [`LOCK_POLICY_SQL`].
pub async fn lock_policy_only(db: &Db, key: &str) -> Res<Option<(i64, Policy)>> {
    let [head, vms, ports] = LOCK_POLICY_SQL;
    db.prepare(&LOCK_POLICY_SQL).await?;
    let by_key: crate::Params<'_> = &[&key];
    let (head, vms, ports) =
        tokio::try_join!(biased; db.opt(head, by_key), db.rows(vms, by_key), db.rows(ports, by_key))?;
    let Some(r) = head else { return Ok(None) };
    let (pid, reference) = policy_head(&r)?;
    Ok(Some((pid, policy_of(reference, r.try_get(5)?, &vms, &ports)?)))
}

/// What [`lock_policy_only`] sends, in order.
pub const LOCK_POLICY_SQL: [&str; 3] = [
    "SELECT pid, subscription, resource_group, location, name, kind FROM policies WHERE key = $1 FOR UPDATE",
    "SELECT v.vm_id, v.public_ip FROM policy_vms v JOIN policies p ON p.pid = v.pid WHERE p.key = $1 ORDER BY v.ord",
    "SELECT pp.vm_ord, pp.number, pp.protocol, pp.source_form, pp.sources, pp.max_duration, pp.cut_sessions, \
     pp.mapped_port, pp.require_approval, pp.approval_timeout FROM policy_ports pp JOIN policies p ON p.pid = pp.pid \
     WHERE p.key = $1 ORDER BY pp.vm_ord, pp.ord",
];

/// A request without its grants, from `rid, requestor, start_time, justification, ext_end,
/// decision_reason`.
fn request_from_row(r: &Row) -> Res<AccessRequestRecord> {
    Ok(AccessRequestRecord {
        id: r.try_get(0)?,
        requestor: r.try_get(1)?,
        start_time: from_nanos(r.try_get(2)?)?,
        justification: r.try_get(3)?,
        grants: Vec::new(),
        pending_extension: r.try_get::<_, Option<i64>>(4)?.map(from_nanos).transpose()?,
        decision_reason: r.try_get(5)?,
    })
}

/// The grant columns [`grant_from_row`] reads.
const GRANT_COLUMNS: &str =
    "g.rid, g.vm_id, g.number, g.protocol, g.source_form, g.sources, g.end_time, g.status, g.status_reason, g.mapped_port, g.public_ip";

/// The most recent requests of a policy, oldest first.
async fn load_requests(db: &Db, pid: i64) -> Res<Vec<AccessRequestRecord>> {
    let rows = db
        .rows(
            "SELECT rid, requestor, start_time, justification, ext_end, decision_reason FROM requests WHERE pid = $1 \
             ORDER BY rid DESC LIMIT $2",
            &[&pid, &super::rows::big(REQUEST_HISTORY_LIMIT)],
        )
        .await?;
    let mut requests = rows.iter().map(request_from_row).collect::<Res<Vec<_>>>()?;
    requests.reverse();
    let Some(first) = requests.first().map(|r| r.id) else { return Ok(requests) };
    let rows = db
        .rows(
            &format!("SELECT {GRANT_COLUMNS} FROM grants g WHERE g.pid = $1 AND g.rid >= $2 ORDER BY g.rid, g.ord"),
            &[&pid, &first],
        )
        .await?;
    let mut index = 0;
    for r in &rows {
        let rid: i64 = r.try_get(0)?;
        while index < requests.len() && requests[index].id != rid {
            index += 1;
        }
        let Some(request) = requests.get_mut(index) else { break };
        request.grants.push(grant_from_row(r)?);
    }
    Ok(requests)
}

/// Reads the [`GRANT_COLUMNS`].
fn grant_from_row(r: &Row) -> Res<GrantRecord> {
    let proto: String = r.try_get("protocol")?;
    let form: String = r.try_get("source_form")?;
    let sources: String = r.try_get("sources")?;
    let st: String = r.try_get("status")?;
    let why: String = r.try_get("status_reason")?;
    Ok(GrantRecord {
        vm_id: r.try_get("vm_id")?,
        number: port(r, "number")?,
        protocol: protocol(&proto)?,
        sources: decode_sources(&form, &sources)?,
        end_time: time_at(r, "end_time")?,
        status: status(&st)?,
        status_reason: reason(&why)?,
        mapped_port: opt_port(r, "mapped_port")?,
        public_ip: r.try_get("public_ip")?,
    })
}

/// One request with its grants, by row id.
pub async fn load_request(db: &Db, rid: i64) -> Res<AccessRequestRecord> {
    let head = db
        .one(
            "SELECT rid, requestor, start_time, justification, ext_end, decision_reason FROM requests WHERE rid = $1",
            &[&rid],
        )
        .await?;
    let mut request = request_from_row(&head)?;
    let rows =
        db.rows(&format!("SELECT {GRANT_COLUMNS} FROM grants g WHERE g.rid = $1 ORDER BY g.ord"), &[&rid]).await?;
    for r in &rows {
        request.grants.push(grant_from_row(r)?);
    }
    Ok(request)
}

pub fn audit_from_row(r: &Row) -> Res<AuditRecord> {
    let st: String = r.try_get("status")?;
    let properties: String = r.try_get("properties")?;
    let properties: BTreeMap<String, String> =
        serde_json::from_str(&properties).map_err(|e| corrupt(format!("audit properties: {e}")))?;
    let seq: i64 = r.try_get("seq")?;
    let prev: String = r.try_get("prev_hash")?;
    let hash: String = r.try_get("hash")?;
    Ok(AuditRecord {
        seq: seq.max(0) as u64,
        event: AuditEvent {
            time: time_at(r, "time")?,
            operation: r.try_get("operation")?,
            status: AuditStatus::parse(&st).ok_or_else(|| corrupt(format!("audit status {st}")))?,
            caller: r.try_get("caller")?,
            caller_ip: r.try_get("caller_ip")?,
            resource_id: r.try_get("resource_id")?,
            correlation_id: r.try_get("correlation_id")?,
            properties,
        },
        prev_hash: hash_from_hex(&prev)?,
        hash: hash_from_hex(&hash)?,
    })
}

/// Keeps the reason of the latest decision on a request with it (shown with the request and in
/// the approved/denied webhooks).
pub async fn set_decision_reason(db: &Db, rid: i64, reason: Option<&str>) -> Res<()> {
    db.exec("UPDATE requests SET decision_reason = $1 WHERE rid = $2", &[&reason, &rid]).await?;
    Ok(())
}
