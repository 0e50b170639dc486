//! The PostgreSQL store: policies, access requests and their grants.

use super::*;

use crate::grants::{words, Filter, STATE_COLUMNS};

#[async_trait]
impl PolicyStore for PgStore {
    async fn put_policy(&self, policy: ValidatedPolicy, audit: AuditEvent) -> StoreResult<PolicyRecord> {
        self.write(move |ctx| {
            Box::pin(async move {
                let key = policy.reference.key();
                // An edit waits for (and then excludes) initiates and other edits of the policy.
                let existing = grants::lock_policy_key(&ctx.db, &key).await?;
                let mut known = KnownVms::default();
                for vm in &policy.vms {
                    if let Some(v) = rows::get_vm(&ctx.db, &vm.id.key()).await? {
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
                // JIT may be switched off for a subscription or resource group by a security policy.
                let disabled: Vec<String> = ctx
                    .db
                    .rows("SELECT scope FROM security_policies WHERE NOT jit_enabled", &[])
                    .await?
                    .iter()
                    .map(|r| r.try_get(0))
                    .collect::<Result<_, _>>()?;
                if let Err(invalid) = policy_put::check_security_policies(&resolved, &disabled) {
                    return reject(ctx, audit, invalid);
                }
                let mut held = Vec::with_capacity(resolved.vms.len());
                for vm in &resolved.vms {
                    let other = ctx
                        .db
                        .opt(
                            "SELECT p.key FROM policy_vms v JOIN policies p ON p.pid = v.pid WHERE v.vm_key = $1 AND p.key <> $2",
                            &[&vm.id.key(), &key],
                        )
                        .await?;
                    held.push(other.map(|r| r.try_get::<_, String>(0)).transpose()?);
                }
                if let Err(invalid) = policy_put::check_one_policy_per_vm(&resolved, &held) {
                    return reject(ctx, audit, invalid);
                }
                // A gateway's public ports are one namespace across all policies.
                for (gw, new) in known.gateway_claims(&resolved) {
                    let held = rows::gateway_claims(&ctx.db, &resolved.reference.subscription, &gw, &key, "").await?;
                    if let Err(invalid) = check_mapped_ports(&gw, &new, &held) {
                        return reject(ctx, audit, invalid);
                    }
                }
                let now = nanos(audit.time);
                let r = &resolved.reference;
                let pid: i64 = match existing {
                    Some(pid) => {
                        ctx.db
                            .exec("UPDATE policies SET kind = $2, updated = $3 WHERE pid = $1", &[&pid, &resolved.kind, &now])
                            .await?;
                        ctx.db.exec("DELETE FROM policy_ports WHERE pid = $1", &[&pid]).await?;
                        ctx.db.exec("DELETE FROM policy_vms WHERE pid = $1", &[&pid]).await?;
                        pid
                    }
                    None => ctx
                        .db
                        .one(
                            "INSERT INTO policies (key, subscription, resource_group, location, name, sub_key, rg_key, loc_key, \
                             kind, created, updated) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10) RETURNING pid",
                            &[
                                &key,
                                &r.subscription,
                                &r.resource_group,
                                &r.location,
                                &r.name,
                                &r.subscription.to_ascii_lowercase(),
                                &r.resource_group.to_ascii_lowercase(),
                                &r.location.to_ascii_lowercase(),
                                &resolved.kind,
                                &now,
                            ],
                        )
                        .await?
                        .try_get(0)?,
                };
                insert_policy_body(&ctx.db, pid, &resolved).await?;
                ctx.bump_revision();
                ctx.audit(policy_put::stored(audit, existing.is_none(), &resolved));
                let (_, record) = rows::load_policy(&ctx.db, &key)
                    .await?
                    .ok_or_else(|| Error::Corrupt("the policy vanished".into()))?;
                Ok(record)
            })
        })
        .await
    }

    async fn get_policy(&self, policy: &PolicyRef) -> StoreResult<Option<PolicyRecord>> {
        let key = policy.key();
        self.read(move |db| Box::pin(async move { Ok(rows::load_policy(db, &key).await?.map(|(_, r)| r)) })).await
    }

    async fn list_policies(
        &self,
        scope: &ListScope,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<PolicyRecord>> {
        let (filter, mut args) = scope_query(scope);
        args.push(after.unwrap_or("").to_owned());
        self.read(move |db| {
            Box::pin(async move {
                let sql = format!(
                    "SELECT key FROM policies WHERE {filter} AND key > ${} ORDER BY key LIMIT {}",
                    args.len(),
                    rows::big(limit)
                );
                let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                    args.iter().map(|a| a as &(dyn tokio_postgres::types::ToSql + Sync)).collect();
                let keys: Vec<String> =
                    db.rows(&sql, &params).await?.iter().map(|r| r.try_get(0)).collect::<Result<_, _>>()?;
                let mut out = Vec::with_capacity(keys.len());
                for key in keys {
                    if let Some((_, record)) = rows::load_policy(db, &key).await? {
                        out.push(record);
                    }
                }
                Ok(out)
            })
        })
        .await
    }

    async fn delete_policy(&self, policy: &PolicyRef, audit: AuditEvent) -> StoreResult<bool> {
        let key = policy.key();
        self.write(move |ctx| {
            Box::pin(async move {
                let Some(pid) = grants::lock_policy_key(&ctx.db, &key).await? else { return Ok(false) };
                let revoked = grants::transition_where(
                    &ctx.db,
                    Filter::Policy(pid),
                    &lifecycle::ENDED_BY_POLICY_DELETE,
                    lifecycle::policy_deleted,
                    By::Nobody,
                )
                .await?;
                for table in ["policy_ports", "policy_vms", "policies"] {
                    ctx.db.exec(&format!("DELETE FROM {table} WHERE pid = $1"), &[&pid]).await?;
                }
                ctx.bump_revision();
                ctx.audit(audit.succeeded().with("revokedGrants", revoked.to_string()));
                Ok(true)
            })
        })
        .await
    }

    async fn initiate(&self, cmd: InitiateCommand, audit: AuditEvent) -> StoreResult<InitiateOutcome> {
        self.write(move |ctx| Box::pin(crate::store_requests::initiate(ctx, cmd, audit))).await
    }

    async fn expire_due(&self, now: OffsetDateTime) -> StoreResult<ExpirySweep> {
        self.write(move |ctx| Box::pin(expire_due(ctx, now))).await
    }

    async fn next_expiry(&self) -> StoreResult<Option<OffsetDateTime>> {
        self.read(|db| {
            Box::pin(async move {
                let soon = i64::try_from(jitgate_store::EXPIRING_SOON.whole_nanoseconds()).unwrap_or(i64::MAX);
                let (expiring, opening, live) =
                    (words(&lifecycle::EXPIRING), words(&lifecycle::OPENING), words(&lifecycle::LIVE));
                let n: Option<i64> = db
                    .one(
                        "SELECT least((SELECT min(end_time) FROM grants WHERE status = ANY($2)), \
                         (SELECT min(opens_at) FROM grants WHERE status = ANY($3)), \
                         (SELECT min(end_time) - $1 FROM grants WHERE status = ANY($4) AND NOT warned))",
                        &[&soon, &expiring, &opening, &live],
                    )
                    .await?
                    .try_get(0)?;
                n.map(from_nanos).transpose()
            })
        })
        .await
    }

    async fn live_grants(&self, now: OffsetDateTime) -> StoreResult<u64> {
        self.read(move |db| {
            Box::pin(async move {
                let n: i64 = db
                    .one(
                        "SELECT count(*) FROM grants WHERE status = ANY($1) AND end_time > $2",
                        &[&words(&lifecycle::LIVE), &rows::nanos(now)],
                    )
                    .await?
                    .try_get(0)?;
                Ok(u64::try_from(n).unwrap_or(0))
            })
        })
        .await
    }

    async fn revoke_request(&self, id: i64, revoked_by: &str, audit: AuditEvent) -> StoreResult<AccessRequestRecord> {
        let revoked_by = revoked_by.to_owned();
        self.write(move |ctx| {
            Box::pin(async move {
                let Some((facts, gids)) = grants::request_facts(&ctx.db, id).await? else {
                    return reject(ctx, audit, request_not_found(id));
                };
                let changes = match lifecycle::revoke(&facts) {
                    Ok(changes) => changes,
                    Err(invalid) => return reject(ctx, audit, invalid),
                };
                grants::apply(&ctx.db, &gids, &changes, By::Revoker(&revoked_by)).await?;
                ctx.bump_revision();
                let now = audit.time;
                ctx.audit(lifecycle::revoked_event(audit, id, facts.policy_id, changes.len()));
                hooks::enqueue(&ctx.db, outbox::REVOKED, id, now).await?;
                rows::load_request(&ctx.db, id).await
            })
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
        self.write(move |ctx| Box::pin(decide_request(ctx, id, approve, decider, reason, now, audit))).await
    }

    async fn extend_request(
        &self,
        id: i64,
        new_end: OffsetDateTime,
        now: OffsetDateTime,
        audit: AuditEvent,
    ) -> StoreResult<AccessRequestRecord> {
        self.write(move |ctx| {
            Box::pin(async move {
                let mut audit = audit;
                let Some((facts, gids)) = grants::request_facts(&ctx.db, id).await? else {
                    return reject(ctx, audit, request_not_found(id));
                };
                audit.resource_id = facts.policy_id.clone();
                let policy =
                    rows::load_policy_only(&ctx.db, &facts.policy_id.to_ascii_lowercase()).await?.map(|(_, p)| p);
                let changes = match lifecycle::extend(&facts, policy.as_ref(), new_end, now) {
                    Err(invalid) => return reject(ctx, audit, invalid),
                    Ok(Extension::NeedsApproval) => {
                        // The grants keep their end until an approver (not the one who asked) agrees.
                        ctx.db
                            .exec(
                                "UPDATE requests SET ext_end = $2, ext_by = $3 WHERE rid = $1",
                                &[&id, &nanos(new_end), &audit.caller],
                            )
                            .await?;
                        ctx.audit(lifecycle::extended_event(audit, id, new_end, true));
                        hooks::enqueue(&ctx.db, outbox::REQUESTED, id, now).await?;
                        return rows::load_request(&ctx.db, id).await;
                    }
                    Ok(Extension::Extended(changes)) => changes,
                };
                grants::apply(&ctx.db, &gids, &changes, By::Nobody).await?;
                ctx.bump_revision();
                ctx.audit(lifecycle::extended_event(audit, id, new_end, false));
                rows::load_request(&ctx.db, id).await
            })
        })
        .await
    }

    async fn open_requests(&self, who: Option<&str>, limit: usize) -> StoreResult<Vec<(String, AccessRequestRecord)>> {
        self.load_open_requests(who, limit).await
    }

    async fn get_request(&self, id: i64) -> StoreResult<Option<(String, AccessRequestRecord)>> {
        self.read(move |db| {
            Box::pin(async move {
                match db.opt("SELECT policy_id FROM requests WHERE rid = $1", &[&id]).await? {
                    Some(r) => Ok(Some((r.try_get(0)?, rows::load_request(db, id).await?))),
                    None => Ok(None),
                }
            })
        })
        .await
    }
}

/// The expiry sweep. Grants another change holds are skipped (`SKIP LOCKED`): that change
/// decides them, or the next sweep does; two sweeps on two replicas never expire one grant twice.
async fn expire_due(ctx: &mut Ctx, now: OffsetDateTime) -> Res<ExpirySweep> {
    let at = nanos(now);
    let due = ctx
        .db
        .rows(
            &format!(
                "SELECT gid, rid, policy_id, vm_id, number, sources, {STATE_COLUMNS} FROM grants \
                 WHERE status = ANY($2) AND end_time <= $1 ORDER BY end_time, gid FOR UPDATE SKIP LOCKED"
            ),
            &[&at, &words(&lifecycle::EXPIRING)],
        )
        .await?;
    let mut expired = 0;
    for r in &due {
        let (gid, rid): (i64, i64) = (r.try_get("gid")?, r.try_get("rid")?);
        let state = grants::state_from_row(r)?;
        // A pending request nobody approved in time expires unopened.
        let Some(new) = lifecycle::expire(state, now) else { continue };
        grants::persist(&ctx.db, gid, &new, By::Nobody).await?;
        expired += 1;
        let (policy_id, vm_id, sources): (String, String, String) =
            (r.try_get("policy_id")?, r.try_get("vm_id")?, r.try_get("sources")?);
        let swept = lifecycle::Swept { gid, rid, policy_id: &policy_id };
        ctx.audit(lifecycle::expired_event(now, swept, &vm_id, rows::port(r, "number")?, &sources, &state, &new));
        hooks::enqueue(&ctx.db, outbox::EXPIRED, rid, now).await?;
    }
    // Scheduled windows that have begun: open them (newer grants replace older ones).
    let starting = ctx
        .db
        .rows(
            &format!(
                "SELECT gid, rid, pid, supersede_key, policy_id, {STATE_COLUMNS} FROM grants \
                 WHERE status = ANY($2) AND opens_at <= $1 ORDER BY gid FOR UPDATE SKIP LOCKED"
            ),
            &[&at, &words(&lifecycle::OPENING)],
        )
        .await?;
    let mut activated = 0;
    for r in &starting {
        let Some(new) = lifecycle::open(grants::state_from_row(r)?, now) else { continue };
        let (gid, rid, pid): (i64, i64, i64) = (r.try_get("gid")?, r.try_get("rid")?, r.try_get("pid")?);
        let skey: String = r.try_get("supersede_key")?;
        grants::supersede_older(&ctx.db, pid, &skey).await?;
        grants::persist(&ctx.db, gid, &new, By::Nobody).await?;
        activated += 1;
        let policy_id: String = r.try_get("policy_id")?;
        ctx.audit(lifecycle::opened_event(now, lifecycle::Swept { gid, rid, policy_id: &policy_id }));
        hooks::enqueue(&ctx.db, outbox::OPENED, rid, now).await?;
    }
    if activated > 0 {
        ctx.bump_revision();
    }
    // Live grants about to end: tell the webhooks once.
    let warn_from = nanos(now + jitgate_store::EXPIRING_SOON);
    let soon = ctx
        .db
        .rows(
            "UPDATE grants SET warned = TRUE WHERE gid IN (SELECT gid FROM grants WHERE status = ANY($2) AND NOT warned \
             AND end_time <= $1 ORDER BY gid FOR UPDATE SKIP LOCKED) RETURNING gid, rid",
            &[&warn_from, &words(&lifecycle::LIVE)],
        )
        .await?;
    let mut warned: Vec<(i64, i64)> =
        soon.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect::<Result<_, tokio_postgres::Error>>()?;
    warned.sort_unstable();
    let mut announced = std::collections::HashSet::new();
    for (_, rid) in &warned {
        if announced.insert(*rid) {
            hooks::enqueue(&ctx.db, outbox::EXPIRING_SOON, *rid, now).await?;
        }
    }
    Ok(ExpirySweep { expired, activated, warned: warned.len() })
}

async fn decide_request(
    ctx: &mut Ctx,
    id: i64,
    approve: bool,
    decider: String,
    reason: Option<String>,
    now: OffsetDateTime,
    audit: AuditEvent,
) -> Res<AccessRequestRecord> {
    let mut audit = audit;
    let Some((facts, gids)) = grants::request_facts(&ctx.db, id).await? else {
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
                let gid = grants::gid_at(&gids, *i)?;
                if approved {
                    // The approved grant replaces older ones with its key.
                    let r = ctx.db.one("SELECT pid, supersede_key FROM grants WHERE gid = $1", &[&gid]).await?;
                    let (pid, skey): (i64, String) = (r.try_get(0)?, r.try_get(1)?);
                    grants::supersede_older(&ctx.db, pid, &skey).await?;
                }
                grants::persist(&ctx.db, gid, state, By::Decider(&decider)).await?;
            }
            ctx.bump_revision();
            let what = Decided::Grants(changes.len());
            (approved, lifecycle::decided_event(audit, id, &requestor, approved, what, reason.as_deref()))
        }
        Decision::Extension { approved, end_time, changes } => {
            clear_extension(&ctx.db, id).await?;
            rows::set_decision_reason(&ctx.db, id, reason.as_deref()).await?;
            if approved {
                grants::apply(&ctx.db, &gids, &changes, By::Decider(&decider)).await?;
                ctx.bump_revision();
            }
            let what = Decided::Extension(end_time);
            ctx.audit(lifecycle::decided_event(audit, id, &requestor, approved, what, reason.as_deref()));
            for event in outbox::on_extension_decision(approved) {
                hooks::enqueue(&ctx.db, event, id, now).await?;
            }
            return rows::load_request(&ctx.db, id).await;
        }
        Decision::ExtensionLapsed(invalid) => {
            clear_extension(&ctx.db, id).await?;
            return reject(ctx, audit, invalid);
        }
    };
    rows::set_decision_reason(&ctx.db, id, reason.as_deref()).await?;
    ctx.audit(event);
    for event in outbox::on_decision(approved) {
        hooks::enqueue(&ctx.db, event, id, now).await?;
    }
    rows::load_request(&ctx.db, id).await
}

fn scope_query(scope: &ListScope) -> (String, Vec<String>) {
    let l = |s: &str| s.to_ascii_lowercase();
    match scope {
        ListScope::Subscription { subscription } => ("sub_key = $1".into(), vec![l(subscription)]),
        ListScope::SubscriptionLocation { subscription, location } => {
            ("sub_key = $1 AND loc_key = $2".into(), vec![l(subscription), l(location)])
        }
        ListScope::ResourceGroup { subscription, resource_group } => {
            ("sub_key = $1 AND rg_key = $2".into(), vec![l(subscription), l(resource_group)])
        }
        ListScope::ResourceGroupLocation { subscription, resource_group, location } => (
            "sub_key = $1 AND rg_key = $2 AND loc_key = $3".into(),
            vec![l(subscription), l(resource_group), l(location)],
        ),
    }
}

async fn insert_policy_body(db: &Db, pid: i64, policy: &jitgate_core::Policy) -> Res<()> {
    for (i, vm) in policy.vms.iter().enumerate() {
        db.exec(
            "INSERT INTO policy_vms (pid, ord, vm_key, vm_id, public_ip) VALUES ($1, $2, $3, $4, $5)",
            &[&pid, &rows::big(i), &vm.id.key(), &vm.id.as_str(), &vm.public_ip_address],
        )
        .await?;
        for (j, p) in vm.ports.iter().enumerate() {
            let (form, sources) = encode_sources(&p.sources);
            db.exec(
                "INSERT INTO policy_ports (pid, vm_ord, ord, number, protocol, source_form, sources, max_duration, \
                 cut_sessions, mapped_port, require_approval, approval_timeout) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                &[
                    &pid,
                    &rows::big(i),
                    &rows::big(j),
                    &i64::from(p.number),
                    &p.protocol.as_str(),
                    &form,
                    &sources,
                    &p.max_duration.text(),
                    &p.cut_sessions,
                    &p.mapped_port.map(i64::from),
                    &p.require_approval,
                    &p.approval_timeout.as_ref().map(|d| d.text().to_owned()),
                ],
            )
            .await?;
        }
    }
    Ok(())
}
