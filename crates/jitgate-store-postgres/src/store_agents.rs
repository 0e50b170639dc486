//! The PostgreSQL store: VMs, their access facts and security policies, join tokens, agents and
//! what each enforces.

use super::*;

#[async_trait]
impl AgentStore for PgStore {
    async fn put_vm(&self, vm: VmSpec, audit: AuditEvent) -> StoreResult<(Vm, bool)> {
        self.write(move |ctx| {
            Box::pin(async move {
                let key = vm.id.key();
                let now = nanos(audit.time);
                // The VM row is locked while it changes (two registrations of one VM serialise).
                ctx.db.opt("SELECT key FROM vms WHERE key = $1 FOR UPDATE", &[&key]).await?;
                let existing = rows::get_vm(&ctx.db, &key).await?;
                let address = vm.address.map(|a| a.to_string());
                let connector =
                    existing.as_ref().and_then(|e| e.agent.as_ref()).filter(|a| a.mode == AgentMode::Cloud);
                if let (Some(_), Some(c)) = (&vm.gateway, connector) {
                    return reject(ctx, audit, jitgate_core::cloud::gateway_for_cloud_vm(&vm.id, &c.name));
                }
                if let Some(gw) = &vm.gateway {
                    let sub = vm.id.subscription();
                    let joined = rows::gateway_agent(&ctx.db, sub, gw).await?.is_some();
                    if let Err(invalid) = vm_put::check_gateway(gw, sub, joined) {
                        return reject(ctx, audit, invalid);
                    }
                    // The VM's mapped ports move onto this gateway: they must be free there.
                    if vm_put::moves_onto(existing.as_ref().map(|e| e.spec.gateway.as_deref()), gw) {
                        let new: Vec<MappedClaim> = vm_claims(&ctx.db, &key).await?;
                        let held = rows::gateway_claims(&ctx.db, sub, gw, "", &key).await?;
                        if let Err(invalid) = check_mapped_ports(gw, &new, &held) {
                            return reject(ctx, audit, invalid);
                        }
                    }
                    if let Err(invalid) = vm_put::check_address(vm.address) {
                        return reject(ctx, audit, invalid);
                    }
                }
                match &existing {
                    Some(_) => {
                        ctx.db
                            .exec(
                                "UPDATE vms SET os_type = $2, location = $3, address = $4, gateway = $5, updated = $6, \
                                 classic = $7 WHERE key = $1",
                                &[&key, &vm.os_type.as_str(), &vm.location, &address, &vm.gateway, &now, &vm.classic],
                            )
                            .await?
                    }
                    None => {
                        ctx.db
                            .exec(
                                "INSERT INTO vms (key, id, os_type, location, address, gateway, created, updated, classic) \
                                 VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8)",
                                &[
                                    &key,
                                    &vm.id.as_str(),
                                    &vm.os_type.as_str(),
                                    &vm.location,
                                    &address,
                                    &vm.gateway,
                                    &now,
                                    &vm.classic,
                                ],
                            )
                            .await?
                    }
                };
                ctx.bump_revision();
                ctx.audit(vm_put::stored(audit, vm.os_type, &vm.location, vm.address, vm.gateway.as_deref()));
                let stored = rows::get_vm(&ctx.db, &key).await?.ok_or_else(|| Error::Corrupt("the VM vanished".into()))?;
                Ok((stored, existing.is_none()))
            })
        })
        .await
    }

    async fn list_vms(&self) -> StoreResult<Vec<Vm>> {
        self.read(|db| {
            Box::pin(async move {
                let keys: Vec<String> = db
                    .rows("SELECT key FROM vms ORDER BY key", &[])
                    .await?
                    .iter()
                    .map(|r| r.try_get(0))
                    .collect::<Result<_, _>>()?;
                let mut out = Vec::with_capacity(keys.len());
                for key in keys {
                    if let Some(vm) = rows::get_vm(db, &key).await? {
                        out.push(vm);
                    }
                }
                Ok(out)
            })
        })
        .await
    }

    async fn get_vm(&self, id: &VmId) -> StoreResult<Option<Vm>> {
        let key = id.key();
        self.read(move |db| Box::pin(async move { rows::get_vm(db, &key).await })).await
    }

    async fn delete_vm(&self, id: &VmId, audit: AuditEvent) -> StoreResult<Vm> {
        let id = id.clone();
        self.write(move |ctx| {
            Box::pin(async move {
                let key = id.key();
                ctx.db.opt("SELECT key FROM vms WHERE key = $1 FOR UPDATE", &[&key]).await?;
                let Some(vm) = rows::get_vm(&ctx.db, &key).await? else {
                    return reject(ctx, audit, vm_put::not_registered(&id));
                };
                let policy = ctx
                    .db
                    .opt(
                        "SELECT p.subscription, p.resource_group, p.location, p.name FROM policy_vms v \
                         JOIN policies p ON p.pid = v.pid WHERE v.vm_key = $1",
                        &[&key],
                    )
                    .await?;
                if let Some(r) = policy {
                    let policy = PolicyRef {
                        subscription: r.try_get(0)?,
                        resource_group: r.try_get(1)?,
                        location: r.try_get(2)?,
                        name: r.try_get(3)?,
                    }
                    .id();
                    if let Err(invalid) = vm_put::check_deletable(&id, Some(policy.as_str())) {
                        return reject(ctx, audit, invalid);
                    }
                }
                // The VM's host agent goes with it: its credential never binds to a VM registered
                // again under this name.
                let revoked: Vec<String> = ctx
                    .db
                    .rows(
                        "DELETE FROM agents WHERE mode = 'host' AND (vm_key = $1 OR id = (SELECT agent_id FROM vms WHERE key = $1)) \
                         RETURNING id",
                        &[&key],
                    )
                    .await?
                    .iter()
                    .map(|r| r.try_get(0))
                    .collect::<Result<_, _>>()?;
                ctx.db.exec("DELETE FROM vms WHERE key = $1", &[&key]).await?;
                ctx.bump_revision();
                ctx.audit(vm_put::deleted(audit, &revoked));
                Ok(vm)
            })
        })
        .await
    }

    async fn revision(&self) -> StoreResult<u64> {
        self.read(|db| Box::pin(rows::revision(db))).await
    }

    async fn create_join_token(&self, spec: JoinTokenSpec, token_hash: &str, audit: AuditEvent) -> StoreResult<()> {
        let hash = token_hash.to_owned();
        self.write(move |ctx| {
            Box::pin(async move {
                ctx.db
                    .exec(
                        "INSERT INTO join_tokens (hash, subscription, resource_group, location, mode, created, expires, \
                         created_by, vm) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                        &[
                            &hash,
                            &spec.subscription,
                            &spec.resource_group,
                            &spec.location,
                            &spec.mode.as_str(),
                            &nanos(audit.time),
                            &nanos(spec.expires),
                            &audit.caller,
                            &spec.vm,
                        ],
                    )
                    .await?;
                let event = join::token_created(audit, spec.mode, &spec.location, spec.expires, spec.vm.as_deref());
                ctx.audit(event);
                Ok(())
            })
        })
        .await
    }

    async fn list_join_tokens(&self) -> StoreResult<Vec<JoinTokenRecord>> {
        self.read(|db| {
            Box::pin(async move {
                db.rows(
                    "SELECT subscription, resource_group, location, mode, expires, created, created_by, used, vm \
                     FROM join_tokens ORDER BY created",
                    &[],
                )
                .await?
                .iter()
                .map(|r| {
                    let mode: String = r.try_get(3)?;
                    Ok(JoinTokenRecord {
                        spec: JoinTokenSpec {
                            subscription: r.try_get(0)?,
                            resource_group: r.try_get(1)?,
                            location: r.try_get(2)?,
                            mode: AgentMode::parse(&mode).ok_or_else(|| rows::corrupt(format!("mode {mode}")))?,
                            expires: rows::time_at(r, "expires")?,
                            vm: r.try_get(8)?,
                        },
                        created: rows::time_at(r, "created")?,
                        created_by: r.try_get(6)?,
                        used: rows::opt_time(r, "used")?,
                    })
                })
                .collect()
            })
        })
        .await
    }

    async fn join_agent(&self, join: AgentJoin, audit: AuditEvent) -> StoreResult<AgentRecord> {
        self.write(move |ctx| Box::pin(agents::join_agent(ctx, join, audit))).await
    }

    /// Gathered with the other agents' credential look-ups of the moment (see `fanout`).
    async fn agent_by_credential(&self, credential_hash: &str) -> StoreResult<Option<AgentRecord>> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let ask = fanout::CredentialAsk { hash: credential_hash.to_owned(), reply };
        self.fanout.credentials.send(ask).await.map_err(|_| backend("the store's credential reader has stopped"))?;
        answer.await.map_err(|_| backend("the store's credential reader stopped before answering"))?
    }

    async fn list_agents(&self) -> StoreResult<Vec<AgentRecord>> {
        self.read(|db| {
            Box::pin(async move {
                db.rows("SELECT * FROM agents ORDER BY joined, id", &[])
                    .await?
                    .iter()
                    .map(rows::agent_from_row)
                    .collect()
            })
        })
        .await
    }

    async fn get_agent(&self, id: &str) -> StoreResult<Option<AgentRecord>> {
        let id = id.to_owned();
        self.read(move |db| Box::pin(async move { agents::agent_by_id(db, &id).await })).await
    }

    async fn get_agents(&self, ids: &[String]) -> StoreResult<Vec<AgentRecord>> {
        let ids = jitgate_store::unique_in_order(ids);
        self.read(move |db| {
            Box::pin(async move {
                let sql = "SELECT a.* FROM unnest($1::text[]) WITH ORDINALITY AS u(id, n) \
                           JOIN agents a ON a.id = u.id ORDER BY u.n";
                db.rows(sql, &[&ids]).await?.iter().map(rows::agent_from_row).collect()
            })
        })
        .await
    }

    async fn gateway_agent(&self, subscription: &str, name: &str) -> StoreResult<Option<AgentRecord>> {
        let (sub, name) = (subscription.to_owned(), name.to_owned());
        self.read(move |db| Box::pin(async move { rows::gateway_agent(db, &sub, &name).await })).await
    }

    async fn delete_agent(&self, id: &str, audit: AuditEvent) -> StoreResult<AgentRecord> {
        let id = id.to_owned();
        self.write(move |ctx| {
            Box::pin(async move {
                ctx.db.opt("SELECT id FROM agents WHERE id = $1 FOR UPDATE", &[&id]).await?;
                let Some(agent) = agents::agent_by_id(&ctx.db, &id).await? else {
                    return reject(ctx, audit, join::agent_not_found(&id));
                };
                let vms: Vec<String> = match agent.mode {
                    AgentMode::Host | AgentMode::Cloud => {
                        ctx.db.rows("SELECT id FROM vms WHERE agent_id = $1 ORDER BY key", &[&id]).await?
                    }
                    AgentMode::Gateway => ctx
                        .db
                        .rows(
                            "SELECT id FROM vms WHERE lower(gateway) = lower($1) AND starts_with(key, $2) ORDER BY key",
                            &[&agent.name, &rows::subscription_prefix(&agent.subscription)],
                        )
                        .await?,
                }
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?;
                ctx.db.exec("UPDATE vms SET agent_id = NULL WHERE agent_id = $1", &[&id]).await?;
                ctx.db.exec("DELETE FROM agents WHERE id = $1", &[&id]).await?;
                ctx.bump_revision();
                ctx.audit(join::removed(audit, &agent.id, &agent.name, agent.mode, &vms));
                Ok(agent)
            })
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
            Box::pin(async move {
                let changed = ctx
                    .db
                    .exec(
                        "UPDATE agents SET credential_hash = $3 WHERE id = $1 AND credential_hash = $2",
                        &[&id, &old, &new],
                    )
                    .await?;
                if changed == 0 {
                    return reject(ctx, audit, join::credential_replaced(&id));
                }
                ctx.audit(audit.succeeded().with("agentId", id.clone()));
                agents::agent_by_id(&ctx.db, &id).await?.ok_or_else(|| Error::Corrupt("the agent vanished".into()))
            })
        })
        .await
    }

    /// Gathered with the other agents' reads of the moment (see `fanout`).
    async fn agent_state(&self, agent_id: &str, now: OffsetDateTime) -> StoreResult<EnforcementState> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let ask = fanout::StateAsk { id: agent_id.to_owned(), now, reply };
        self.fanout.states.send(ask).await.map_err(|_| backend("the store's state reader has stopped"))?;
        answer.await.map_err(|_| backend("the store's state reader stopped before answering"))?
    }

    /// Gathered with the other agents' delivery notes of the moment (see `fanout`).
    async fn agent_delivered(&self, agent_id: &str, revision: u64) -> StoreResult<()> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let revision = i64::try_from(revision).unwrap_or(i64::MAX);
        let note = fanout::Delivered { id: agent_id.to_owned(), revision, reply };
        self.fanout.delivered.send(note).await.map_err(|_| backend("the store's delivery writer has stopped"))?;
        answer.await.map_err(|_| backend("the store's delivery writer stopped before answering"))?
    }

    /// Gathered with the other agents' reports of the moment (see `fanout`).
    async fn agent_report(&self, agent_id: &str, report: AgentReport) -> StoreResult<()> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let ask = fanout::Report { id: agent_id.to_owned(), report, reply };
        self.fanout.reports.send(ask).await.map_err(|_| backend("the store's report writer has stopped"))?;
        answer.await.map_err(|_| backend("the store's report writer stopped before answering"))?
    }

    async fn agents_for_vms(&self, vm_ids: &[String]) -> StoreResult<Vec<AgentRecord>> {
        let keys: Vec<String> = vm_ids.iter().map(|v| v.to_ascii_lowercase()).collect();
        self.read(move |db| {
            Box::pin(async move {
                // Two statements for any number of VMs (one more per gateway), in the order asked.
                let mut vms = rows::get_vms(db, &keys).await?;
                let mut seen = std::collections::HashSet::new();
                let mut out: Vec<AgentRecord> = Vec::new();
                for key in &keys {
                    if let Some(agent) = vms.remove(key).and_then(|vm| vm.agent) {
                        if seen.insert(agent.id.clone()) {
                            out.push(agent);
                        }
                    }
                }
                Ok(out)
            })
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
        self.write(move |ctx| Box::pin(async move { crate::store_cloud::put_inventory(ctx, &id, vms, audit).await }))
            .await
    }

    async fn report_cloud_enforcement(
        &self,
        agent_id: &str,
        report: jitgate_core::cloud::EnforcementReport,
        audit: AuditEvent,
    ) -> StoreResult<bool> {
        let id = agent_id.to_owned();
        self.write(move |ctx| Box::pin(async move { crate::store_cloud::report(ctx, &id, report, audit).await })).await
    }

    async fn vm_access(&self, vm: &VmId, since: OffsetDateTime) -> StoreResult<VmAccess> {
        let key = vm.key();
        self.read(move |db| {
            Box::pin(async move {
                let approved: i64 = db
                    .one(
                        "SELECT count(DISTINCT g.rid) FROM grants g JOIN requests r ON r.rid = g.rid \
                         WHERE g.vm_key = $1 AND r.start_time >= $2",
                        &[&key, &nanos(since)],
                    )
                    .await?
                    .try_get(0)?;
                let last = db
                    .opt(
                        "SELECT r.start_time, r.requestor FROM grants g JOIN requests r ON r.rid = g.rid \
                         WHERE g.vm_key = $1 ORDER BY r.rid DESC LIMIT 1",
                        &[&key],
                    )
                    .await?;
                Ok(VmAccess {
                    approved_since: approved.max(0) as u64,
                    last_access: last.as_ref().map(|r| rows::time_at(r, "start_time")).transpose()?,
                    last_user: last.map(|r| r.try_get("requestor")).transpose()?,
                })
            })
        })
        .await
    }

    async fn policy_of_vm(&self, vm: &VmId) -> StoreResult<Option<jitgate_core::Policy>> {
        let key = vm.key();
        self.read(move |db| {
            Box::pin(async move {
                let pkey = db
                    .opt("SELECT p.key FROM policy_vms v JOIN policies p ON p.pid = v.pid WHERE v.vm_key = $1", &[&key])
                    .await?;
                match pkey {
                    Some(k) => Ok(rows::load_policy_only(db, &k.try_get::<_, String>(0)?).await?.map(|(_, p)| p)),
                    None => Ok(None),
                }
            })
        })
        .await
    }

    async fn vm_access_many(
        &self,
        vms: &[VmId],
        since: OffsetDateTime,
    ) -> StoreResult<std::collections::HashMap<String, VmAccess>> {
        let keys: Vec<String> = vms.iter().map(VmId::key).collect();
        self.read(move |db| Box::pin(async move { crate::inventory::access_many(db, &keys, since).await })).await
    }

    async fn policies_of_vms(
        &self,
        vms: &[VmId],
    ) -> StoreResult<std::collections::HashMap<String, jitgate_store::VmPolicy>> {
        let keys: Vec<String> = vms.iter().map(VmId::key).collect();
        self.read(move |db| Box::pin(async move { crate::inventory::policies_many(db, &keys).await })).await
    }

    async fn configured_vm_keys(&self) -> StoreResult<std::collections::HashSet<String>> {
        self.read(move |db| {
            Box::pin(async move {
                let found = db.rows("SELECT vm_key FROM policy_vms", &[]).await?;
                found.iter().map(|r| Ok(r.try_get::<_, String>(0)?)).collect()
            })
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
            Box::pin(async move {
                let now = nanos(audit.time);
                ctx.db
                    .exec(
                        "INSERT INTO security_policies (scope_key, scope, jit_enabled, updated) VALUES (lower($1), $1, $2, $3) \
                         ON CONFLICT (scope_key) DO UPDATE SET jit_enabled = $2, updated = $3",
                        &[&scope, &jit_enabled, &now],
                    )
                    .await?;
                ctx.bump_revision();
                let updated = audit.time;
                ctx.audit(audit.succeeded().with("scope", scope.clone()).with("jitEnabled", jit_enabled.to_string()));
                Ok(SecurityPolicy { scope, jit_enabled, updated })
            })
        })
        .await
    }

    async fn list_security_policies(&self) -> StoreResult<Vec<SecurityPolicy>> {
        self.read(|db| {
            Box::pin(async move {
                db.rows("SELECT scope, jit_enabled, updated FROM security_policies ORDER BY scope_key", &[])
                    .await?
                    .iter()
                    .map(|r| {
                        Ok(SecurityPolicy {
                            scope: r.try_get(0)?,
                            jit_enabled: r.try_get(1)?,
                            updated: rows::time_at(r, "updated")?,
                        })
                    })
                    .collect()
            })
        })
        .await
    }
}
