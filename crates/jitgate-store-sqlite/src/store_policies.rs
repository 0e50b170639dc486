//! The SQLite store: policies, access requests and their grants.

use super::*;
use crate::store_requests::set_decision_reason;

#[async_trait]
impl PolicyStore for SqliteStore {
    async fn put_policy(&self, policy: ValidatedPolicy, audit: AuditEvent) -> StoreResult<PolicyRecord> {
        self.write(move |ctx| {
            let key = policy.reference.key();
            let mut known = KnownVms::default();
            for vm in &policy.vms {
                if let Some(v) = rows::get_vm(ctx.conn, &vm.id.key()).map_err(backend)? {
                    if v.cloud.is_some() {
                        known.add_cloud(vm.id.key());
                    }
                    known.add(vm.id.key(), v.spec.os_type, v.spec.gateway);
                }
            }
            let resolved = match known.resolve(policy).and_then(|p| known.check_cloud_ports(&p).map(|()| p)) {
                Ok(p) => p,
                Err(invalid) => return reject(ctx, audit, invalid),
            };
            let existing: Option<i64> = ctx
                .conn
                .query_row("SELECT pid FROM policies WHERE key = ?1", [&key], |r| r.get(0))
                .optional()
                .map_err(backend)?;
            // JIT may be switched off for a subscription or resource group by a security policy.
            let disabled: Vec<String> = ctx
                .conn
                .prepare_cached("SELECT scope FROM security_policies WHERE jit_enabled = 0")
                .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect())
                .map_err(backend)?;
            if let Err(invalid) = policy_put::check_security_policies(&resolved, &disabled) {
                return reject(ctx, audit, invalid);
            }
            let mut held = Vec::with_capacity(resolved.vms.len());
            for vm in &resolved.vms {
                let other: Option<String> = ctx
                    .conn
                    .query_row(
                        "SELECT p.key FROM policy_vms v JOIN policies p ON p.pid = v.pid WHERE v.vm_key = ?1 AND p.key <> ?2",
                        params![vm.id.key(), key],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(backend)?;
                held.push(other);
            }
            if let Err(invalid) = policy_put::check_one_policy_per_vm(&resolved, &held) {
                return reject(ctx, audit, invalid);
            }
            // A gateway's public ports are one namespace across all policies.
            for (gw, new) in known.gateway_claims(&resolved) {
                let held = rows::gateway_claims(ctx.conn, &resolved.reference.subscription, &gw, &key, "")
                    .map_err(backend)?;
                if let Err(invalid) = check_mapped_ports(&gw, &new, &held) {
                    return reject(ctx, audit, invalid);
                }
            }
            let now = nanos(audit.time);
            let r = &resolved.reference;
            let pid = match existing {
                Some(pid) => {
                    ctx.conn
                        .execute("UPDATE policies SET kind = ?2, updated = ?3 WHERE pid = ?1", params![pid, resolved.kind, now])
                        .map_err(backend)?;
                    ctx.conn.execute("DELETE FROM policy_ports WHERE pid = ?1", [pid]).map_err(backend)?;
                    ctx.conn.execute("DELETE FROM policy_vms WHERE pid = ?1", [pid]).map_err(backend)?;
                    pid
                }
                None => {
                    ctx.conn
                        .execute(
                            "INSERT INTO policies (key, subscription, resource_group, location, name, sub_key, rg_key, loc_key, \
                             kind, created, updated) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10)",
                            params![
                                key,
                                r.subscription,
                                r.resource_group,
                                r.location,
                                r.name,
                                r.subscription.to_ascii_lowercase(),
                                r.resource_group.to_ascii_lowercase(),
                                r.location.to_ascii_lowercase(),
                                resolved.kind,
                                now
                            ],
                        )
                        .map_err(backend)?;
                    ctx.conn.last_insert_rowid()
                }
            };
            insert_policy_body(ctx.conn, pid, &resolved).map_err(backend)?;
            rows::bump_revision(ctx.conn).map_err(backend)?;
            let event = policy_put::stored(audit, existing.is_none(), &resolved);
            ctx.audit(&event).map_err(backend)?;
            let (_, record) = rows::load_policy(ctx.conn, &key).map_err(backend)?.ok_or_else(|| backend("the policy vanished"))?;
            Ok(record)
        })
        .await
    }

    async fn get_policy(&self, policy: &PolicyRef) -> StoreResult<Option<PolicyRecord>> {
        let key = policy.key();
        self.read(move |c| Ok(rows::load_policy(c, &key)?.map(|(_, r)| r))).await
    }

    async fn list_policies(
        &self,
        scope: &ListScope,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<PolicyRecord>> {
        let (filter, mut args) = rows::scope_query(scope);
        let after = after.unwrap_or("").to_owned();
        self.read(move |c| {
            let sql = format!(
                "SELECT key FROM policies WHERE {filter} AND key > ?{} ORDER BY key LIMIT {}",
                args.len() + 1,
                limit
            );
            args.push(after);
            let keys: Vec<String> = c
                .prepare(&sql)?
                .query_map(rusqlite::params_from_iter(args.iter()), |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let mut out = Vec::with_capacity(keys.len());
            for key in keys {
                if let Some((_, record)) = rows::load_policy(c, &key)? {
                    out.push(record);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn delete_policy(&self, policy: &PolicyRef, audit: AuditEvent) -> StoreResult<bool> {
        let key = policy.key();
        self.write(move |ctx| {
            let pid: Option<i64> = ctx
                .conn
                .query_row("SELECT pid FROM policies WHERE key = ?1", [&key], |r| r.get(0))
                .optional()
                .map_err(backend)?;
            let Some(pid) = pid else { return Ok(false) };
            let revoked = grants::transition_where(
                ctx.conn,
                "pid = ?1",
                vec![Value::Integer(pid)],
                &lifecycle::ENDED_BY_POLICY_DELETE,
                lifecycle::policy_deleted,
                By::Nobody,
            )
            .map_err(backend)?;
            for table in ["policy_ports", "policy_vms", "policies"] {
                ctx.conn.execute(&format!("DELETE FROM {table} WHERE pid = ?1"), [pid]).map_err(backend)?;
            }
            rows::bump_revision(ctx.conn).map_err(backend)?;
            ctx.audit(&audit.succeeded().with("revokedGrants", revoked.to_string())).map_err(backend)?;
            Ok(true)
        })
        .await
    }

    async fn initiate(&self, cmd: InitiateCommand, audit: AuditEvent) -> StoreResult<InitiateOutcome> {
        self.write(move |ctx| {
            let key = cmd.policy.key();
            let Some((pid, policy)) = rows::load_policy_only(ctx.conn, &key).map_err(backend)? else {
                return reject(ctx, audit, policy_not_found(&cmd.policy));
            };
            if let Some(client_id) = &cmd.client_request_id {
                let earlier: Option<i64> = ctx
                    .conn
                    .prepare_cached("SELECT rid FROM requests WHERE pid = ?1 AND principal = ?2 AND client_request_id = ?3")
                    .and_then(|mut s| s.query_row(params![pid, cmd.requestor, client_id], |r| r.get(0)).optional())
                    .map_err(backend)?;
                if let Some(rid) = earlier {
                    let request = rows::load_request(ctx.conn, rid).map_err(backend)?;
                    return Ok(InitiateOutcome { request, replayed: true });
                }
            }
            let plan = match decide(&policy, &cmd.draft, cmd.caller, cmd.now) {
                Ok(plan) => plan,
                Err(invalid) => return reject(ctx, audit, invalid),
            };
            // Behind a gateway a grant carries the connection details: the gateway's public
            // address and the mapped port (when the policy port maps one); and its sources must
            // be of the VM's address family. Decided before anything is written.
            let mut reaches = Vec::with_capacity(plan.grants.len());
            let mut cloud_vms: Vec<VmId> = Vec::new();
            for g in &plan.grants {
                let reach = match rows::get_vm(ctx.conn, &g.vm_id.key()).map_err(backend)? {
                    Some(vm) => {
                        if vm.cloud.is_some() && !cloud_vms.contains(&vm.spec.id) {
                            cloud_vms.push(vm.spec.id.clone());
                        }
                        Reach::of(
                        &policy,
                        g,
                        vm.spec.gateway.is_some(),
                        vm.spec.address,
                        vm.agent.and_then(|a| a.public_address),
                        )
                    }
                    None => Ok(Reach::default()),
                };
                match reach {
                    Ok(reach) => reaches.push(reach),
                    Err(invalid) => return reject(ctx, audit, invalid),
                }
            }
            // A cloud connector keeps a VM's grants in one security group of bounded size.
            for vm in &cloud_vms {
                let live = crate::store_cloud::live_rules(ctx.conn, &vm.key(), cmd.now).map_err(backend)?;
                if let Err(invalid) = jitgate_core::cloud::check_request_rules(vm, &live, &plan.grants) {
                    return reject(ctx, audit, invalid);
                }
            }
            let policy_id = policy.reference.id();
            ctx.conn
                .prepare_cached(
                    "INSERT INTO requests (pid, policy_id, requestor, principal, start_time, justification, client_request_id) \
                     VALUES (?1, ?2, ?3, ?3, ?4, ?5, ?6)",
                )
                .and_then(|mut s| {
                    s.execute(params![pid, policy_id, cmd.requestor, nanos(plan.start_time), plan.justification, cmd.client_request_id])
                })
                .map_err(backend)?;
            let rid = ctx.conn.last_insert_rowid();
            let mut requested = Requested::default();
            for (ord, (g, reach)) in plan.grants.iter().zip(reaches).enumerate() {
                let skey = g.supersede_key();
                // A grant that needs approval waits (and opens nothing), a scheduled one opens
                // later: each supersedes older grants only once it opens.
                let state = lifecycle::start(g, cmd.now);
                if state.is_live() {
                    grants::supersede_older(ctx.conn, pid, &skey).map_err(backend)?;
                }
                let (form, texts) = encode_sources(&g.sources);
                let grant = requested.add(g, &state, reach);
                ctx.conn
                    .prepare_cached(
                        "INSERT INTO grants (rid, pid, ord, policy_id, vm_id, vm_key, number, protocol, source_form, sources, \
                         supersede_key, end_time, status, status_reason, mapped_port, public_ip, window_ns, opens_at) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?15, ?16, ?13, ?14, ?17, ?18)",
                    )
                    .and_then(|mut s| {
                        s.execute(params![
                            rid,
                            pid,
                            ord as i64,
                            policy_id,
                            g.vm_id.as_str(),
                            g.vm_id.key(),
                            g.number,
                            g.protocol.as_str(),
                            form,
                            texts,
                            skey,
                            nanos(state.end_time),
                            grant.mapped_port,
                            grant.public_ip,
                            state.status.as_str(),
                            state.reason.as_str(),
                            grants::window_nanos(&state),
                            nanos(g.opens_at)
                        ])
                    })
                    .map_err(backend)?;
            }
            let event = requested.event(audit, rid, &plan);
            rows::bump_revision(ctx.conn).map_err(backend)?;
            ctx.audit(&event).map_err(backend)?;
            for event in outbox::on_initiate(requested.opened()) {
                hooks::enqueue(ctx.conn, event, rid, cmd.now).map_err(backend)?;
            }
            let request = requested.into_record(rid, cmd.requestor, plan);
            Ok(InitiateOutcome { request, replayed: false })
        })
        .await
    }

    async fn expire_due(&self, now: OffsetDateTime) -> StoreResult<ExpirySweep> {
        self.write(move |ctx| {
            type Due = (i64, i64, String, String, u16, String, lifecycle::GrantState);
            let due: Vec<Due> = ctx
                .conn
                .prepare_cached(&format!(
                    "SELECT gid, rid, policy_id, vm_id, number, sources, {STATE_COLUMNS} FROM grants \
                     WHERE {} AND end_time <= ?1 ORDER BY end_time",
                    grants::status_in("status", &lifecycle::EXPIRING)
                ))
                .and_then(|mut s| {
                    s.query_map(grants::bind([Value::Integer(nanos(now))]), |r| {
                        Ok((
                            r.get(0)?,
                            r.get(1)?,
                            r.get(2)?,
                            r.get(3)?,
                            r.get(4)?,
                            r.get(5)?,
                            grants::state_from_row(r, 6)?,
                        ))
                    })?
                    .collect()
                })
                .map_err(backend)?;
            let mut expired = 0;
            for (gid, rid, policy_id, vm_id, number, sources, state) in &due {
                // A pending request nobody approved in time expires unopened.
                let Some(new) = lifecycle::expire(*state, now) else { continue };
                grants::persist(ctx.conn, *gid, &new, By::Nobody).map_err(backend)?;
                expired += 1;
                let swept = lifecycle::Swept { gid: *gid, rid: *rid, policy_id };
                let event = lifecycle::expired_event(now, swept, vm_id, *number, sources, state, &new);
                ctx.audit(&event).map_err(backend)?;
                hooks::enqueue(ctx.conn, outbox::EXPIRED, *rid, now).map_err(backend)?;
            }
            // Scheduled windows that have begun: open them (newer grants replace older ones).
            type Starting = (i64, i64, i64, String, String, lifecycle::GrantState);
            let starting: Vec<Starting> = ctx
                .conn
                .prepare_cached(&format!(
                    "SELECT gid, rid, pid, supersede_key, policy_id, {STATE_COLUMNS} FROM grants \
                     WHERE {} AND opens_at <= ?1",
                    grants::status_in("status", &lifecycle::OPENING)
                ))
                .and_then(|mut s| {
                    s.query_map(grants::bind([Value::Integer(nanos(now))]), |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, grants::state_from_row(r, 5)?))
                    })?
                    .collect()
                })
                .map_err(backend)?;
            let mut activated = 0;
            for (gid, rid, pid, skey, policy_id, state) in &starting {
                let Some(new) = lifecycle::open(*state, now) else { continue };
                grants::supersede_older(ctx.conn, *pid, skey).map_err(backend)?;
                grants::persist(ctx.conn, *gid, &new, By::Nobody).map_err(backend)?;
                activated += 1;
                let event = lifecycle::opened_event(now, lifecycle::Swept { gid: *gid, rid: *rid, policy_id });
                ctx.audit(&event).map_err(backend)?;
                hooks::enqueue(ctx.conn, outbox::OPENED, *rid, now).map_err(backend)?;
            }
            if activated > 0 {
                rows::bump_revision(ctx.conn).map_err(backend)?;
            }
            // Live grants about to end: tell the webhooks once.
            let soon: Vec<(i64, i64)> = ctx
                .conn
                .prepare_cached(&format!(
                    "SELECT gid, rid FROM grants WHERE {} AND warned = 0 AND end_time <= ?1",
                    grants::status_in("status", &lifecycle::LIVE)
                ))
                .and_then(|mut s| {
                    let warn_from = nanos(now + jitgate_store::EXPIRING_SOON);
                    s.query_map(grants::bind([Value::Integer(warn_from)]), |r| Ok((r.get(0)?, r.get(1)?)))?.collect()
                })
                .map_err(backend)?;
            let mut announced = std::collections::HashSet::new();
            for (gid, rid) in &soon {
                ctx.conn.execute("UPDATE grants SET warned = 1 WHERE gid = ?1", [gid]).map_err(backend)?;
                if announced.insert(*rid) {
                    hooks::enqueue(ctx.conn, outbox::EXPIRING_SOON, *rid, now).map_err(backend)?;
                }
            }
            Ok(ExpirySweep { expired, activated, warned: soon.len() })
        })
        .await
    }

    async fn next_expiry(&self) -> StoreResult<Option<OffsetDateTime>> {
        self.read(|c| {
            let n: Option<i64> = c
                .prepare_cached(&format!(
                    "SELECT min(t) FROM (SELECT min(end_time) AS t FROM grants WHERE {} \
                     UNION ALL SELECT min(opens_at) FROM grants WHERE {} \
                     UNION ALL SELECT min(end_time) - ?1 FROM grants WHERE {} AND warned = 0)",
                    grants::status_in("status", &lifecycle::EXPIRING),
                    grants::status_in("status", &lifecycle::OPENING),
                    grants::status_in("status", &lifecycle::LIVE),
                ))?
                .query_row(
                    grants::bind([Value::Integer(jitgate_store::EXPIRING_SOON.whole_nanoseconds() as i64)]),
                    |r| r.get(0),
                )?;
            n.map(from_nanos).transpose()
        })
        .await
    }

    async fn live_grants(&self, now: OffsetDateTime) -> StoreResult<u64> {
        self.read(move |c| {
            let n: i64 = c
                .prepare_cached(&format!(
                    "SELECT count(*) FROM grants WHERE {} AND end_time > ?1",
                    grants::status_in("status", &lifecycle::LIVE),
                ))?
                .query_row([crate::rows::nanos(now)], |r| r.get(0))?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
        .await
    }

    async fn revoke_request(&self, id: i64, revoked_by: &str, audit: AuditEvent) -> StoreResult<AccessRequestRecord> {
        let revoked_by = revoked_by.to_owned();
        self.write(move |ctx| {
            let Some((facts, gids)) = grants::request_facts(ctx.conn, id).map_err(backend)? else {
                return reject(ctx, audit, request_not_found(id));
            };
            let changes = match lifecycle::revoke(&facts) {
                Ok(changes) => changes,
                Err(invalid) => return reject(ctx, audit, invalid),
            };
            grants::apply(ctx.conn, &gids, &changes, By::Revoker(&revoked_by)).map_err(backend)?;
            rows::bump_revision(ctx.conn).map_err(backend)?;
            let now = audit.time;
            ctx.audit(&lifecycle::revoked_event(audit, id, facts.policy_id, changes.len())).map_err(backend)?;
            hooks::enqueue(ctx.conn, outbox::REVOKED, id, now).map_err(backend)?;
            rows::load_request(ctx.conn, id).map_err(backend)
        })
        .await
    }

    async fn decide_request(
        &self,
        id: i64,
        approve: bool,
        decider: &str,
        reason: Option<String>,
        now: OffsetDateTime,
        audit: AuditEvent,
    ) -> StoreResult<AccessRequestRecord> {
        let decider = decider.to_owned();
        self.write(move |ctx| {
            let mut audit = audit;
            let Some((facts, gids)) = grants::request_facts(ctx.conn, id).map_err(backend)? else {
                return reject(ctx, audit, request_not_found(id));
            };
            audit.resource_id = facts.policy_id.clone();
            let decision = match lifecycle::decide(&facts, approve, &decider, now) {
                Ok(decision) => decision,
                Err(invalid) => return reject(ctx, audit, invalid),
            };
            let requestor = facts.requestor.clone();
            let (approved, event) = match decision {
                Decision::Grants { approved, changes } => {
                    for (i, state) in &changes {
                        let gid = grants::gid_at(&gids, *i).map_err(backend)?;
                        if approved {
                            // The approved grant replaces older ones with its key.
                            let (pid, skey): (i64, String) = ctx
                                .conn
                                .query_row("SELECT pid, supersede_key FROM grants WHERE gid = ?1", [gid], |r| {
                                    Ok((r.get(0)?, r.get(1)?))
                                })
                                .map_err(backend)?;
                            grants::supersede_older(ctx.conn, pid, &skey).map_err(backend)?;
                        }
                        grants::persist(ctx.conn, gid, state, By::Decider(&decider)).map_err(backend)?;
                    }
                    rows::bump_revision(ctx.conn).map_err(backend)?;
                    let what = Decided::Grants(changes.len());
                    (approved, lifecycle::decided_event(audit, id, &requestor, approved, what, reason.as_deref()))
                }
                Decision::Extension { approved, end_time, changes } => {
                    clear_extension(ctx.conn, id)?;
                    set_decision_reason(ctx.conn, id, reason.as_deref())?;
                    if approved {
                        grants::apply(ctx.conn, &gids, &changes, By::Decider(&decider)).map_err(backend)?;
                        rows::bump_revision(ctx.conn).map_err(backend)?;
                    }
                    let what = Decided::Extension(end_time);
                    let event = lifecycle::decided_event(audit, id, &requestor, approved, what, reason.as_deref());
                    ctx.audit(&event).map_err(backend)?;
                    for event in outbox::on_extension_decision(approved) {
                        hooks::enqueue(ctx.conn, event, id, now).map_err(backend)?;
                    }
                    return rows::load_request(ctx.conn, id).map_err(backend);
                }
                Decision::ExtensionLapsed(invalid) => {
                    clear_extension(ctx.conn, id)?;
                    return reject(ctx, audit, invalid);
                }
            };
            set_decision_reason(ctx.conn, id, reason.as_deref())?;
            ctx.audit(&event).map_err(backend)?;
            for event in outbox::on_decision(approved) {
                hooks::enqueue(ctx.conn, event, id, now).map_err(backend)?;
            }
            rows::load_request(ctx.conn, id).map_err(backend)
        })
        .await
    }

    async fn extend_request(
        &self,
        id: i64,
        new_end: OffsetDateTime,
        now: OffsetDateTime,
        audit: AuditEvent,
    ) -> StoreResult<AccessRequestRecord> {
        self.write(move |ctx| {
            let mut audit = audit;
            let Some((facts, gids)) = grants::request_facts(ctx.conn, id).map_err(backend)? else {
                return reject(ctx, audit, request_not_found(id));
            };
            audit.resource_id = facts.policy_id.clone();
            let policy = rows::load_policy_only(ctx.conn, &facts.policy_id.to_ascii_lowercase())
                .map_err(backend)?
                .map(|(_, p)| p);
            let changes = match lifecycle::extend(&facts, policy.as_ref(), new_end, now) {
                Err(invalid) => return reject(ctx, audit, invalid),
                Ok(Extension::NeedsApproval) => {
                    // The grants keep their end until an approver (not the one who asked) agrees.
                    ctx.conn
                        .execute(
                            "UPDATE requests SET ext_end = ?2, ext_by = ?3 WHERE rid = ?1",
                            params![id, nanos(new_end), audit.caller],
                        )
                        .map_err(backend)?;
                    ctx.audit(&lifecycle::extended_event(audit, id, new_end, true)).map_err(backend)?;
                    hooks::enqueue(ctx.conn, outbox::REQUESTED, id, now).map_err(backend)?;
                    return rows::load_request(ctx.conn, id).map_err(backend);
                }
                Ok(Extension::Extended(changes)) => changes,
            };
            grants::apply(ctx.conn, &gids, &changes, By::Nobody).map_err(backend)?;
            rows::bump_revision(ctx.conn).map_err(backend)?;
            ctx.audit(&lifecycle::extended_event(audit, id, new_end, false)).map_err(backend)?;
            rows::load_request(ctx.conn, id).map_err(backend)
        })
        .await
    }

    async fn open_requests(&self, who: Option<&str>, limit: usize) -> StoreResult<Vec<(String, AccessRequestRecord)>> {
        self.load_open_requests(who, limit).await
    }

    async fn get_request(&self, id: i64) -> StoreResult<Option<(String, AccessRequestRecord)>> {
        self.read(move |c| {
            let policy: Option<String> =
                c.query_row("SELECT policy_id FROM requests WHERE rid = ?1", [id], |r| r.get(0)).optional()?;
            match policy {
                Some(p) => Ok(Some((p, rows::load_request(c, id)?))),
                None => Ok(None),
            }
        })
        .await
    }
}

fn insert_policy_body(conn: &Connection, pid: i64, policy: &jitgate_core::Policy) -> rusqlite::Result<()> {
    let mut vm_stmt =
        conn.prepare_cached("INSERT INTO policy_vms (pid, ord, vm_key, vm_id, public_ip) VALUES (?1, ?2, ?3, ?4, ?5)")?;
    let mut port_stmt = conn.prepare_cached(
        "INSERT INTO policy_ports (pid, vm_ord, ord, number, protocol, source_form, sources, max_duration, cut_sessions, \
         mapped_port, require_approval, approval_timeout) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?;
    for (i, vm) in policy.vms.iter().enumerate() {
        vm_stmt.execute(params![pid, i as i64, vm.id.key(), vm.id.as_str(), vm.public_ip_address])?;
        for (j, p) in vm.ports.iter().enumerate() {
            let (form, sources) = encode_sources(&p.sources);
            port_stmt.execute(params![
                pid,
                i as i64,
                j as i64,
                p.number,
                p.protocol.as_str(),
                form,
                sources,
                p.max_duration.text(),
                p.cut_sessions,
                p.mapped_port,
                p.require_approval,
                p.approval_timeout.as_ref().map(|d| d.text().to_owned())
            ])?;
        }
    }
    Ok(())
}
