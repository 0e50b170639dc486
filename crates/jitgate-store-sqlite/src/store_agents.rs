//! The SQLite store: VMs, their access facts and security policies, join tokens, agents and what
//! each enforces.

use super::*;

#[async_trait]
impl AgentStore for SqliteStore {
    async fn put_vm(&self, vm: VmSpec, audit: AuditEvent) -> StoreResult<(Vm, bool)> {
        self.write(move |ctx| {
            let key = vm.id.key();
            let now = nanos(audit.time);
            let existing = rows::get_vm(ctx.conn, &key).map_err(backend)?;
            let address = vm.address.map(|a| a.to_string());
            let connector = existing.as_ref().and_then(|e| e.agent.as_ref()).filter(|a| a.mode == AgentMode::Cloud);
            if let (Some(_), Some(c)) = (&vm.gateway, connector) {
                return reject(ctx, audit, jitgate_core::cloud::gateway_for_cloud_vm(&vm.id, &c.name));
            }
            if let Some(gw) = &vm.gateway {
                let sub = vm.id.subscription();
                let joined = rows::gateway_agent(ctx.conn, sub, gw).map_err(backend)?.is_some();
                if let Err(invalid) = vm_put::check_gateway(gw, sub, joined) {
                    return reject(ctx, audit, invalid);
                }
                // The VM's mapped ports move onto this gateway: they must be free there.
                if vm_put::moves_onto(existing.as_ref().map(|e| e.spec.gateway.as_deref()), gw) {
                    let new: Vec<MappedClaim> = vm_claims(ctx.conn, &key).map_err(backend)?;
                    let held = rows::gateway_claims(ctx.conn, sub, gw, "", &key).map_err(backend)?;
                    if let Err(invalid) = check_mapped_ports(gw, &new, &held) {
                        return reject(ctx, audit, invalid);
                    }
                }
                if let Err(invalid) = vm_put::check_address(vm.address) {
                    return reject(ctx, audit, invalid);
                }
            }
            match &existing {
                Some(_) => ctx.conn.execute(
                    "UPDATE vms SET os_type = ?2, location = ?3, address = ?4, gateway = ?5, updated = ?6, classic = ?7 WHERE key = ?1",
                    params![key, vm.os_type.as_str(), vm.location, address, vm.gateway, now, vm.classic],
                ),
                None => ctx.conn.execute(
                    "INSERT INTO vms (key, id, os_type, location, address, gateway, created, updated, classic) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8)",
                    params![key, vm.id.as_str(), vm.os_type.as_str(), vm.location, address, vm.gateway, now, vm.classic],
                ),
            }
            .map_err(backend)?;
            rows::bump_revision(ctx.conn).map_err(backend)?;
            let event = vm_put::stored(audit, vm.os_type, &vm.location, vm.address, vm.gateway.as_deref());
            ctx.audit(&event).map_err(backend)?;
            let stored = rows::get_vm(ctx.conn, &key).map_err(backend)?.ok_or_else(|| backend("the VM vanished"))?;
            Ok((stored, existing.is_none()))
        })
        .await
    }

    async fn list_vms(&self) -> StoreResult<Vec<Vm>> {
        self.read(rows::all_vms).await
    }

    async fn get_vm(&self, id: &VmId) -> StoreResult<Option<Vm>> {
        let key = id.key();
        self.read(move |c| rows::get_vm(c, &key)).await
    }

    async fn delete_vm(&self, id: &VmId, audit: AuditEvent) -> StoreResult<Vm> {
        let id = id.clone();
        self.write(move |ctx| {
            let key = id.key();
            let Some(vm) = rows::get_vm(ctx.conn, &key).map_err(backend)? else {
                return reject(ctx, audit, vm_put::not_registered(&id));
            };
            let policy: Option<String> = ctx
                .conn
                .query_row(
                    "SELECT p.subscription, p.resource_group, p.location, p.name FROM policy_vms v \
                     JOIN policies p ON p.pid = v.pid WHERE v.vm_key = ?1",
                    [&key],
                    |r| {
                        Ok(PolicyRef {
                            subscription: r.get(0)?,
                            resource_group: r.get(1)?,
                            location: r.get(2)?,
                            name: r.get(3)?,
                        }
                        .id())
                    },
                )
                .optional()
                .map_err(backend)?;
            if let Err(invalid) = vm_put::check_deletable(&id, policy.as_deref()) {
                return reject(ctx, audit, invalid);
            }
            // The VM's host agent goes with it: its credential never binds to a VM registered
            // again under this name.
            let revoked: Vec<String> = ctx
                .conn
                .prepare_cached(
                    "DELETE FROM agents WHERE mode = 'host' AND (vm_key = ?1 OR id = (SELECT agent_id FROM vms WHERE key = ?1)) \
                     RETURNING id",
                )
                .and_then(|mut st| st.query_map([&key], |r| r.get(0))?.collect())
                .map_err(backend)?;
            ctx.conn.execute("DELETE FROM vms WHERE key = ?1", [&key]).map_err(backend)?;
            rows::bump_revision(ctx.conn).map_err(backend)?;
            ctx.audit(&vm_put::deleted(audit, &revoked)).map_err(backend)?;
            Ok(vm)
        })
        .await
    }

    async fn revision(&self) -> StoreResult<u64> {
        self.read(rows::revision).await
    }

    async fn create_join_token(&self, spec: JoinTokenSpec, token_hash: &str, audit: AuditEvent) -> StoreResult<()> {
        let hash = token_hash.to_owned();
        self.write(move |ctx| {
            ctx.conn
                .execute(
                    "INSERT INTO join_tokens (hash, subscription, resource_group, location, mode, created, expires, created_by, vm) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    params![
                        hash,
                        spec.subscription,
                        spec.resource_group,
                        spec.location,
                        spec.mode.as_str(),
                        nanos(audit.time),
                        nanos(spec.expires),
                        audit.caller,
                        spec.vm
                    ],
                )
                .map_err(backend)?;
            let event = join::token_created(audit, spec.mode, &spec.location, spec.expires, spec.vm.as_deref());
            ctx.audit(&event).map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn list_join_tokens(&self) -> StoreResult<Vec<JoinTokenRecord>> {
        self.read(|c| {
            c.prepare_cached(
                "SELECT subscription, resource_group, location, mode, expires, created, created_by, used, vm FROM join_tokens ORDER BY created",
            )?
            .query_map([], |r| {
                let mode: String = r.get(3)?;
                let used: Option<i64> = r.get(7)?;
                Ok(JoinTokenRecord {
                    spec: JoinTokenSpec {
                        subscription: r.get(0)?,
                        resource_group: r.get(1)?,
                        location: r.get(2)?,
                        mode: AgentMode::parse(&mode).ok_or_else(|| rows::corrupt(format!("mode {mode}")))?,
                        expires: from_nanos(r.get(4)?)?,
                        vm: r.get(8)?,
                    },
                    created: from_nanos(r.get(5)?)?,
                    created_by: r.get(6)?,
                    used: used.map(from_nanos).transpose()?,
                })
            })?
            .collect()
        })
        .await
    }

    async fn join_agent(&self, join: AgentJoin, audit: AuditEvent) -> StoreResult<AgentRecord> {
        self.write(move |ctx| {
            type TokenRow = (String, String, String, String, i64, Option<i64>, Option<String>);
            let token: Option<TokenRow> = ctx
                .conn
                .query_row(
                    "SELECT subscription, resource_group, location, mode, expires, used, vm FROM join_tokens WHERE hash = ?1",
                    [&join.token_hash],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)),
                )
                .optional()
                .map_err(backend)?;
            let (sub, rg, loc, for_vm) = match &token {
                Some((sub, rg, loc, _, _, _, vm)) => (sub.clone(), rg.clone(), loc.clone(), vm.clone()),
                None => Default::default(),
            };
            let token = match token {
                Some((_, _, _, mode, expires, used, vm)) => {
                    Some(join::JoinToken { mode, expires: from_nanos(expires).map_err(backend)?, used: used.is_some(), vm })
                }
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
                    if let Some(g) = rows::gateway_agent(ctx.conn, &sub, &join.agent.name).map_err(backend)? {
                        return reject(ctx, audit, join::gateway_exists(&sub, &g.name, &g.id));
                    }
                    None
                }
                // A connector registers its VMs later, with its inventory.
                AgentMode::Cloud => None,
            };
            if let Some(vm) = &vm {
                let address = join::vm_address(&join.agent);
                match rows::get_vm(ctx.conn, &vm.key()).map_err(backend)? {
                    None => {
                        ctx.conn
                            .execute(
                                "INSERT INTO vms (key, id, os_type, location, address, agent_id, created, updated) \
                                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
                                params![vm.key(), vm.as_str(), join.agent.os_type.as_str(), loc, address, join.id, now],
                            )
                            .map_err(backend)?;
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
                        ctx.conn
                            .execute(
                                "UPDATE vms SET address = ?2, agent_id = ?3, updated = ?4 WHERE key = ?1",
                                params![vm.key(), address, join.id, now],
                            )
                            .map_err(backend)?;
                        event = join::rebound(event, existing.agent.map(|a| a.id), existing.spec.address, address);
                    }
                }
                // The VM's earlier host agent (if any) is replaced: its credential stops working.
                ctx.conn.execute("DELETE FROM agents WHERE vm_key = ?1 AND mode = 'host'", [vm.key()]).map_err(backend)?;
            }
            ctx.conn.execute("UPDATE join_tokens SET used = ?2 WHERE hash = ?1", params![join.token_hash, now]).map_err(backend)?;
            ctx.conn
                .execute(
                    "INSERT INTO agents (id, name, mode, subscription, resource_group, location, vm_key, vm_id, credential_hash, \
                     os_type, addresses, public_address, hostname, joined) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                    params![
                        join.id,
                        join.agent.name,
                        join.agent.mode.as_str(),
                        sub,
                        rg,
                        location,
                        vm.as_ref().map(|v| v.key()),
                        vm.as_ref().map(|v| v.as_str().to_owned()),
                        join.credential_hash,
                        join.agent.os_type.as_str(),
                        addresses.join(" "),
                        join.agent.public_address.map(|a| a.to_string()),
                        join.agent.hostname,
                        now
                    ],
                )
                .map_err(backend)?;
            rows::bump_revision(ctx.conn).map_err(backend)?;
            if let Some(vm) = &vm {
                event.resource_id = vm.as_str().to_owned();
            }
            ctx.audit(&event).map_err(backend)?;
            agents::agent_by_id(ctx.conn, &join.id).map_err(backend)?.ok_or_else(|| backend("the agent vanished"))
        })
        .await
    }

    async fn agent_by_credential(&self, credential_hash: &str) -> StoreResult<Option<AgentRecord>> {
        let hash = credential_hash.to_owned();
        self.read(move |c| {
            c.prepare_cached("SELECT * FROM agents WHERE credential_hash = ?1")?
                .query_row([hash], rows::agent_from_row)
                .optional()
        })
        .await
    }

    async fn list_agents(&self) -> StoreResult<Vec<AgentRecord>> {
        self.read(|c| {
            c.prepare_cached("SELECT * FROM agents ORDER BY joined")?.query_map([], rows::agent_from_row)?.collect()
        })
        .await
    }

    async fn get_agent(&self, id: &str) -> StoreResult<Option<AgentRecord>> {
        let id = id.to_owned();
        self.read(move |c| agents::agent_by_id(c, &id)).await
    }

    async fn get_agents(&self, ids: &[String]) -> StoreResult<Vec<AgentRecord>> {
        let ids = jitgate_store::unique_in_order(ids);
        self.read(move |c| {
            let mut out = Vec::with_capacity(ids.len());
            for id in &ids {
                out.extend(agents::agent_by_id(c, id)?);
            }
            Ok(out)
        })
        .await
    }

    async fn gateway_agent(&self, subscription: &str, name: &str) -> StoreResult<Option<AgentRecord>> {
        let (sub, name) = (subscription.to_owned(), name.to_owned());
        self.read(move |c| rows::gateway_agent(c, &sub, &name)).await
    }

    async fn delete_agent(&self, id: &str, audit: AuditEvent) -> StoreResult<AgentRecord> {
        let id = id.to_owned();
        self.write(move |ctx| {
            let Some(agent) = agents::agent_by_id(ctx.conn, &id).map_err(backend)? else {
                return reject(ctx, audit, join::agent_not_found(&id));
            };
            let vms: Vec<String> = match agent.mode {
                AgentMode::Host | AgentMode::Cloud => ctx
                    .conn
                    .prepare_cached("SELECT id FROM vms WHERE agent_id = ?1 ORDER BY key")
                    .and_then(|mut st| st.query_map([&id], |r| r.get(0))?.collect()),
                AgentMode::Gateway => ctx
                    .conn
                    .prepare_cached(
                        "SELECT id FROM vms WHERE lower(gateway) = lower(?1) AND substr(key, 1, length(?2)) = ?2 ORDER BY key",
                    )
                    .and_then(|mut st| {
                        st.query_map(params![agent.name, rows::subscription_prefix(&agent.subscription)], |r| r.get(0))?
                            .collect()
                    }),
            }
            .map_err(backend)?;
            ctx.conn.execute("UPDATE vms SET agent_id = NULL WHERE agent_id = ?1", [&id]).map_err(backend)?;
            ctx.conn.execute("DELETE FROM agents WHERE id = ?1", [&id]).map_err(backend)?;
            rows::bump_revision(ctx.conn).map_err(backend)?;
            ctx.audit(&join::removed(audit, &agent.id, &agent.name, agent.mode, &vms)).map_err(backend)?;
            Ok(agent)
        })
        .await
    }

    async fn rotate_agent_credential(
        &self,
        id: &str,
        old_hash: &str,
        new_hash: &str,
        audit: AuditEvent,
    ) -> StoreResult<AgentRecord> {
        let (id, old, new) = (id.to_owned(), old_hash.to_owned(), new_hash.to_owned());
        self.write(move |ctx| {
            let changed = ctx
                .conn
                .execute(
                    "UPDATE agents SET credential_hash = ?3 WHERE id = ?1 AND credential_hash = ?2",
                    params![id, old, new],
                )
                .map_err(backend)?;
            if changed == 0 {
                return reject(ctx, audit, join::credential_replaced(&id));
            }
            ctx.audit(&audit.succeeded().with("agentId", id.clone())).map_err(backend)?;
            agents::agent_by_id(ctx.conn, &id).map_err(backend)?.ok_or_else(|| backend("the agent vanished"))
        })
        .await
    }

    async fn agent_state(&self, agent_id: &str, now: OffsetDateTime) -> StoreResult<EnforcementState> {
        let id = agent_id.to_owned();
        let state = self
            .read(move |c| match agents::agent_by_id(c, &id)? {
                Some(agent) => agents::state(c, &agent, now).map(Some),
                None => Ok(None),
            })
            .await?;
        // An agent opens ports from this: only once what it read is on disk.
        self.durability.wait().await?;
        state.ok_or_else(|| StoreError::Rejected(join::agent_removed(agent_id)))
    }

    async fn agent_delivered(&self, agent_id: &str, revision: u64) -> StoreResult<()> {
        let id = agent_id.to_owned();
        let revision = i64::try_from(revision).unwrap_or(i64::MAX);
        // On the open path, between the agent's state read and its answer: queued, not waited
        // for (the answer goes out while the writer runs it). The agent's report of this
        // revision can only follow the answer, so it is a later job of the same writer, which
        // runs its jobs in order: the report finds this note, and a crash that took the note
        // back would take the report back too.
        self.queue_at_commit("the note of a state delivered to an agent", move |ctx| {
            ctx.conn
                .execute(
                    "UPDATE agents SET delivered_revision = max(delivered_revision, ?2) WHERE id = ?1",
                    params![id, revision],
                )
                .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn agent_report(&self, agent_id: &str, report: AgentReport) -> StoreResult<()> {
        let id = agent_id.to_owned();
        self.write(move |ctx| {
            let before: Option<(i64, Option<bool>, i64)> = ctx
                .conn
                .query_row(
                    "SELECT applied_revision, nft_usable, delivered_revision FROM agents WHERE id = ?1",
                    [&id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
                .map_err(backend)?;
            let Some((applied, usable, delivered)) = before else {
                return Err(StoreError::Rejected(Invalid::not_found(
                    join::AGENT_NOT_FOUND,
                    format!("agent {id} is not known"),
                )));
            };
            let before = join::Reported { applied, usable, delivered };
            let audited = match join::report(
                &id,
                before,
                report.revision,
                report.now,
                report.nft_usable,
                report.nft_error.as_deref(),
            ) {
                join::Reporting::Accepted(audited) => audited,
                join::Reporting::Refused { event, invalid } => return reject(ctx, event, invalid),
            };
            let revision = i64::try_from(report.revision).unwrap_or(i64::MAX);
            ctx.conn
                .execute(
                    "UPDATE agents SET last_seen = ?2, applied_revision = max(applied_revision, ?3), nft_usable = ?4, \
                     nft_error = ?5 WHERE id = ?1",
                    params![id, nanos(report.now), revision, report.nft_usable, report.nft_error],
                )
                .map_err(backend)?;
            if let Some(event) = audited {
                ctx.audit(&event).map_err(backend)?;
            }
            Ok(())
        })
        .await
    }

    async fn agents_for_vms(&self, vm_ids: &[String]) -> StoreResult<Vec<AgentRecord>> {
        let keys: Vec<String> = vm_ids.iter().map(|v| v.to_ascii_lowercase()).collect();
        self.read(move |c| {
            let mut out: Vec<AgentRecord> = Vec::new();
            // A gateway serves many VMs: each agent once, found by id however many there are.
            let mut seen = std::collections::HashSet::new();
            for key in keys {
                if let Some(agent) = rows::get_vm(c, &key)?.and_then(|vm| vm.agent) {
                    if seen.insert(agent.id.clone()) {
                        out.push(agent);
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn put_cloud_inventory(
        &self,
        agent_id: &str,
        vms: Vec<jitgate_core::cloud::CloudVm>,
        audit: AuditEvent,
    ) -> StoreResult<jitgate_store::Inventoried> {
        let id = agent_id.to_owned();
        self.write(move |ctx| crate::store_cloud::put_inventory(ctx, &id, vms, audit)).await
    }

    async fn report_cloud_enforcement(
        &self,
        agent_id: &str,
        report: jitgate_core::cloud::EnforcementReport,
        audit: AuditEvent,
    ) -> StoreResult<bool> {
        let id = agent_id.to_owned();
        self.write(move |ctx| crate::store_cloud::report(ctx, &id, report, audit)).await
    }

    async fn vm_access(&self, vm: &VmId, since: OffsetDateTime) -> StoreResult<VmAccess> {
        let key = vm.key();
        self.read(move |c| {
            let approved: i64 = c
                .prepare_cached("SELECT count(DISTINCT g.rid) FROM grants g JOIN requests r ON r.rid = g.rid WHERE g.vm_key = ?1 AND r.start_time >= ?2")?
                .query_row(params![key, nanos(since)], |r| r.get(0))?;
            let last: Option<(i64, String)> = c
                .prepare_cached("SELECT r.start_time, r.requestor FROM grants g JOIN requests r ON r.rid = g.rid WHERE g.vm_key = ?1 ORDER BY r.rid DESC LIMIT 1")?
                .query_row([&key], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            Ok(VmAccess {
                approved_since: approved as u64,
                last_access: last.as_ref().map(|(t, _)| from_nanos(*t)).transpose()?,
                last_user: last.map(|(_, u)| u),
            })
        })
        .await
    }

    async fn policy_of_vm(&self, vm: &VmId) -> StoreResult<Option<jitgate_core::Policy>> {
        let key = vm.key();
        self.read(move |c| {
            let pkey: Option<String> = c
                .prepare_cached("SELECT p.key FROM policy_vms v JOIN policies p ON p.pid = v.pid WHERE v.vm_key = ?1")?
                .query_row([&key], |r| r.get(0))
                .optional()?;
            match pkey {
                Some(k) => Ok(rows::load_policy_only(c, &k)?.map(|(_, p)| p)),
                None => Ok(None),
            }
        })
        .await
    }

    async fn vm_access_many(
        &self,
        vms: &[VmId],
        since: OffsetDateTime,
    ) -> StoreResult<std::collections::HashMap<String, VmAccess>> {
        let keys: Vec<String> = vms.iter().map(VmId::key).collect();
        self.read(move |c| crate::inventory::access_many(c, &keys, since)).await
    }

    async fn policies_of_vms(
        &self,
        vms: &[VmId],
    ) -> StoreResult<std::collections::HashMap<String, jitgate_store::VmPolicy>> {
        let keys: Vec<String> = vms.iter().map(VmId::key).collect();
        self.read(move |c| crate::inventory::policies_many(c, &keys)).await
    }

    async fn configured_vm_keys(&self) -> StoreResult<std::collections::HashSet<String>> {
        self.read(|c| {
            let keys = c
                .prepare_cached("SELECT vm_key FROM policy_vms")?
                .query_map([], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<_>>()?;
            Ok(keys)
        })
        .await
    }

    async fn put_security_policy(
        &self,
        scope: &str,
        jit_enabled: bool,
        audit: AuditEvent,
    ) -> StoreResult<SecurityPolicy> {
        let scope = scope.trim_end_matches('/').to_owned();
        self.write(move |ctx| {
            let now = nanos(audit.time);
            ctx.conn
                .execute(
                    "INSERT INTO security_policies (scope_key, scope, jit_enabled, updated) VALUES (lower(?1), ?1, ?2, ?3) \
                     ON CONFLICT (scope_key) DO UPDATE SET jit_enabled = ?2, updated = ?3",
                    params![scope, jit_enabled, now],
                )
                .map_err(backend)?;
            rows::bump_revision(ctx.conn).map_err(backend)?;
            let updated = audit.time;
            ctx.audit(&audit.succeeded().with("scope", scope.clone()).with("jitEnabled", jit_enabled.to_string())).map_err(backend)?;
            Ok(SecurityPolicy { scope, jit_enabled, updated })
        })
        .await
    }

    async fn list_security_policies(&self) -> StoreResult<Vec<SecurityPolicy>> {
        self.read(|c| {
            c.prepare_cached("SELECT scope, jit_enabled, updated FROM security_policies ORDER BY scope_key")?
                .query_map([], |r| {
                    Ok(SecurityPolicy { scope: r.get(0)?, jit_enabled: r.get(1)?, updated: from_nanos(r.get(2)?)? })
                })?
                .collect()
        })
        .await
    }
}
