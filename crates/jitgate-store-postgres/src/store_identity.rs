//! The PostgreSQL store: principals, tokens, OIDC identities, role definitions and assignments.

use super::*;

/// Taken by every change that creates or removes principals, so that "the first principal" of
/// `bootstrap` is decided once across replicas.
const PRINCIPALS_LOCK: i64 = 0x6a69_7467_6174_6502;

#[async_trait]
impl IdentityStore for PgStore {
    async fn bootstrap(
        &self,
        owner: &str,
        token_hash: &str,
        expires: Option<OffsetDateTime>,
        audit: AuditEvent,
    ) -> StoreResult<bool> {
        let (owner, token_hash) = (owner.to_owned(), token_hash.to_owned());
        self.write(move |ctx| {
            Box::pin(async move {
                // Two replicas starting on an empty database: one makes the Owner.
                ctx.db.exec("SELECT pg_advisory_xact_lock($1)", &[&PRINCIPALS_LOCK]).await?;
                let count: i64 = ctx.db.one("SELECT count(*) FROM principals", &[]).await?.try_get(0)?;
                if count > 0 {
                    return Ok(false);
                }
                let now = nanos(audit.time);
                let pid: i64 = ctx
                    .db
                    .one("INSERT INTO principals (name, kind, created) VALUES ($1, 'User', $2) RETURNING id", &[&owner, &now])
                    .await?
                    .try_get(0)?;
                ctx.db
                    .exec(
                        "INSERT INTO tokens (principal_id, hash, created, expires, origin) VALUES ($1, $2, $3, $4, 'server')",
                        &[&pid, &token_hash, &now, &expires.map(nanos)],
                    )
                    .await?;
                rbac::insert_assignment(&ctx.db, pid, "Owner", "/", now, "jitgate").await?;
                ctx.audit(checks::bootstrapped(audit, &owner, expires));
                Ok(true)
            })
        })
        .await
    }

    async fn authenticate(&self, token_hash: &str, now: OffsetDateTime) -> StoreResult<Option<TokenAuth>> {
        let hash = token_hash.to_owned();
        self.read(move |db| {
            Box::pin(async move {
                let sql = format!(
                    "SELECT {}, t.id AS token_id, t.expires FROM tokens t JOIN principals p ON p.id = t.principal_id \
                     WHERE t.hash = $1 AND t.revoked IS NULL AND (t.expires IS NULL OR t.expires > $2)",
                    rbac::PRINCIPAL_COLUMNS
                );
                db.opt(&sql, &[&hash, &nanos(now)])
                    .await?
                    .map(|r| {
                        Ok(TokenAuth {
                            principal: rbac::principal_from_row(&r)?,
                            token_id: r.try_get("token_id")?,
                            expires: rows::opt_time(&r, "expires")?,
                        })
                    })
                    .transpose()
            })
        })
        .await
    }

    async fn create_principal(&self, name: &str, kind: &str, audit: AuditEvent) -> StoreResult<Principal> {
        let (name, kind) = (name.to_owned(), kind.to_owned());
        self.write(move |ctx| {
            Box::pin(async move {
                if let Err(invalid) = jitgate_core::identity::validate_local_name(&name) {
                    return reject(ctx, audit, invalid);
                }
                ctx.db.exec("SELECT pg_advisory_xact_lock($1)", &[&PRINCIPALS_LOCK]).await?;
                let taken = rbac::principal(&ctx.db, &name).await?.is_some();
                if let Err(invalid) = checks::check_name_free(&name, taken) {
                    return reject(ctx, audit, invalid);
                }
                insert_principal(ctx, &name, &kind, audit).await
            })
        })
        .await
    }

    async fn oidc_principal(&self, sign_in: OidcSignIn, audit: AuditEvent) -> StoreResult<Principal> {
        let id = sign_in.identity.clone();
        let known = self.read(move |db| Box::pin(async move { rbac::oidc_principal(db, &id, false).await })).await?;
        if let Some(p) = known {
            if p.display_name == sign_in.display_name {
                return Ok(p);
            }
        }
        self.write(move |ctx| {
            Box::pin(async move {
                ctx.db.exec("SELECT pg_advisory_xact_lock($1)", &[&PRINCIPALS_LOCK]).await?;
                upsert_oidc_principal(ctx, &sign_in, audit).await
            })
        })
        .await
    }

    async fn list_principals(&self) -> StoreResult<Vec<Principal>> {
        self.read(|db| {
            Box::pin(async move {
                let sql = format!(
                    "SELECT {} FROM principals p ORDER BY lower(p.name) COLLATE \"C\", p.id",
                    rbac::PRINCIPAL_COLUMNS
                );
                db.rows(&sql, &[]).await?.iter().map(rbac::principal_from_row).collect()
            })
        })
        .await
    }

    async fn get_principal(&self, name: &str) -> StoreResult<Option<Principal>> {
        let name = name.to_owned();
        self.read(move |db| Box::pin(async move { rbac::principal(db, &name).await })).await
    }

    async fn delete_principal(&self, name: &str, audit: AuditEvent) -> StoreResult<Principal> {
        let name = name.to_owned();
        self.write(move |ctx| Box::pin(delete_principal(ctx, name, audit))).await
    }

    async fn create_token(&self, token: NewToken, audit: AuditEvent) -> StoreResult<TokenRecord> {
        self.write(move |ctx| {
            Box::pin(async move {
                let NewToken { principal, token_hash: hash, expires, origin } = token;
                let Some(p) = rbac::principal(&ctx.db, &principal).await? else {
                    let shown = jitgate_core::identity::shown(&principal);
                    return reject(ctx, audit, checks::principal_not_found(&shown));
                };
                let parent = match origin {
                    TokenOrigin::Token(parent) => {
                        // Checked inside the transaction, on the locked parent: a parent revoked a
                        // moment ago cannot slip a child past the revocation of its descendants.
                        ctx.db.opt("SELECT id FROM tokens WHERE id = $1 FOR UPDATE", &[&parent]).await?;
                        let found = rbac::token(&ctx.db, parent)
                            .await?
                            .map(|t| checks::ParentToken { revoked: t.revoked.is_some(), expires: t.expires });
                        if let Err(invalid) = checks::check_parent(parent, found, expires, audit.time) {
                            return reject(ctx, audit, invalid);
                        }
                        Some(parent)
                    }
                    TokenOrigin::Server | TokenOrigin::IdToken => None,
                };
                let id: i64 = ctx
                    .db
                    .one(
                        "INSERT INTO tokens (principal_id, hash, created, expires, origin, parent_id) \
                         VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                        &[&p.id, &hash, &nanos(audit.time), &expires.map(nanos), &origin.as_str(), &parent],
                    )
                    .await?
                    .try_get(0)?;
                ctx.audit(checks::token_created(audit, &p.name, id, expires, origin.as_str(), parent));
                rbac::token(&ctx.db, id).await?.ok_or_else(|| Error::Corrupt("the token vanished".into()))
            })
        })
        .await
    }

    async fn list_tokens(&self, principal: &str) -> StoreResult<Vec<TokenRecord>> {
        let principal = principal.to_owned();
        self.read(move |db| {
            Box::pin(async move {
                let sql = format!("{} WHERE lower(p.name) = lower($1) ORDER BY t.id", rbac::TOKEN_SELECT);
                db.rows(&sql, &[&principal]).await?.iter().map(rbac::token_from_row).collect()
            })
        })
        .await
    }

    async fn get_token(&self, id: i64) -> StoreResult<Option<TokenRecord>> {
        self.read(move |db| Box::pin(rbac::token(db, id))).await
    }

    async fn revoke_token(&self, id: i64, audit: AuditEvent) -> StoreResult<TokenRecord> {
        self.write(move |ctx| {
            Box::pin(async move {
                ctx.db.opt("SELECT id FROM tokens WHERE id = $1 FOR UPDATE", &[&id]).await?;
                let Some(t) = rbac::token(&ctx.db, id).await? else {
                    return reject(ctx, audit, checks::token_not_found(id));
                };
                let now = nanos(audit.time);
                ctx.db.exec("UPDATE tokens SET revoked = coalesce(revoked, $2) WHERE id = $1", &[&id, &now]).await?;
                let descendants = rbac::revoke_with_descendants(&ctx.db, &[id], now).await?;
                ctx.audit(checks::token_revoked(audit, id, &t.principal, descendants));
                rbac::token(&ctx.db, id).await?.ok_or_else(|| Error::Corrupt("the token vanished".into()))
            })
        })
        .await
    }

    async fn put_role_definition(
        &self,
        role: RoleDefinition,
        audit: AuditEvent,
    ) -> StoreResult<(RoleDefinition, bool)> {
        self.write(move |ctx| {
            Box::pin(async move {
                let created = rbac::put_role(&ctx.db, &role, nanos(audit.time)).await?;
                ctx.audit(checks::role_stored(audit, &role));
                let stored =
                    rbac::role(&ctx.db, &role.name).await?.ok_or_else(|| Error::Corrupt("the role vanished".into()))?;
                Ok((stored, created))
            })
        })
        .await
    }

    async fn list_role_definitions(&self) -> StoreResult<Vec<RoleDefinition>> {
        self.read(|db| {
            Box::pin(async move {
                db.rows("SELECT * FROM role_definitions ORDER BY key", &[])
                    .await?
                    .iter()
                    .map(rbac::role_from_row)
                    .collect()
            })
        })
        .await
    }

    async fn get_role_definition(&self, name: &str) -> StoreResult<Option<RoleDefinition>> {
        let name = name.to_owned();
        self.read(move |db| Box::pin(async move { rbac::role(db, &name).await })).await
    }

    async fn delete_role_definition(&self, name: &str, audit: AuditEvent) -> StoreResult<RoleDefinition> {
        let name = name.to_owned();
        self.write(move |ctx| {
            Box::pin(async move {
                ctx.db.opt("SELECT key FROM role_definitions WHERE key = lower($1) FOR UPDATE", &[&name]).await?;
                let Some(role) = rbac::role(&ctx.db, &name).await? else {
                    return reject(ctx, audit, checks::role_not_found(&name));
                };
                let used: i64 = ctx
                    .db
                    .one("SELECT count(*) FROM role_assignments WHERE role_key = lower($1)", &[&name])
                    .await?
                    .try_get(0)?;
                if let Err(invalid) = checks::check_role_unused(&name, used) {
                    return reject(ctx, audit, invalid);
                }
                ctx.db.exec("DELETE FROM role_definitions WHERE key = lower($1)", &[&name]).await?;
                ctx.audit(audit.succeeded().with("role", name.clone()));
                Ok(role)
            })
        })
        .await
    }

    async fn create_role_assignment(
        &self,
        principal: &str,
        role: &str,
        scope: &str,
        audit: AuditEvent,
    ) -> StoreResult<RoleAssignment> {
        let (principal, role, scope) = (principal.to_owned(), role.to_owned(), scope.to_owned());
        self.write(move |ctx| {
            Box::pin(async move {
                let Some(p) = rbac::principal(&ctx.db, &principal).await? else {
                    return reject(ctx, audit, checks::principal_not_found(&principal));
                };
                let exists = ctx
                    .db
                    .opt(
                        "SELECT id FROM role_assignments WHERE principal_id = $1 AND role_key = lower($2) \
                         AND lower(scope) = lower($3)",
                        &[&p.id, &role, &scope],
                    )
                    .await?;
                let exists: Option<String> = exists.map(|r| r.try_get(0)).transpose()?;
                if let Err(invalid) = checks::check_not_assigned(&principal, &role, &scope, exists.as_deref()) {
                    return reject(ctx, audit, invalid);
                }
                let id =
                    rbac::insert_assignment(&ctx.db, p.id, &role, &scope, nanos(audit.time), &audit.caller).await?;
                ctx.audit(checks::assignment_event(audit, &id, &principal, &role, &scope));
                rbac::assignment(&ctx.db, &id).await?.ok_or_else(|| Error::Corrupt("the assignment vanished".into()))
            })
        })
        .await
    }

    async fn list_role_assignments(&self, principal: Option<&str>) -> StoreResult<Vec<RoleAssignment>> {
        let principal = principal.map(str::to_owned);
        self.read(move |db| {
            Box::pin(async move {
                let rows = match principal {
                    Some(p) => {
                        let sql = format!(
                            "{} WHERE lower(p.name) = lower($1) ORDER BY a.created, a.id",
                            rbac::ASSIGNMENT_SELECT
                        );
                        db.rows(&sql, &[&p]).await?
                    }
                    None => db.rows(&format!("{} ORDER BY a.created, a.id", rbac::ASSIGNMENT_SELECT), &[]).await?,
                };
                rows.iter().map(rbac::assignment_from_row).collect()
            })
        })
        .await
    }

    async fn get_role_assignment(&self, id: &str) -> StoreResult<Option<RoleAssignment>> {
        let id = id.to_owned();
        self.read(move |db| Box::pin(async move { rbac::assignment(db, &id).await })).await
    }

    async fn delete_role_assignment(&self, id: &str, audit: AuditEvent) -> StoreResult<RoleAssignment> {
        let id = id.to_owned();
        self.write(move |ctx| {
            Box::pin(async move {
                let Some(a) = rbac::assignment(&ctx.db, &id).await? else {
                    return reject(ctx, audit, checks::assignment_not_found(&id));
                };
                if ctx.db.exec("DELETE FROM role_assignments WHERE id = $1", &[&id]).await? == 0 {
                    // Another replica removed it a moment ago.
                    return reject(ctx, audit, checks::assignment_not_found(&id));
                }
                ctx.audit(checks::assignment_event(audit, &id, &a.principal, &a.role, &a.scope));
                Ok(a)
            })
        })
        .await
    }
}

async fn delete_principal(ctx: &mut Ctx, name: String, audit: AuditEvent) -> Res<Principal> {
    ctx.db.exec("SELECT pg_advisory_xact_lock($1)", &[&PRINCIPALS_LOCK]).await?;
    let Some(p) = rbac::principal(&ctx.db, &name).await? else {
        return reject(ctx, audit, checks::principal_not_found(&name));
    };
    let now = nanos(audit.time);
    let own: Vec<i64> = ctx
        .db
        .rows("SELECT id FROM tokens WHERE principal_id = $1 ORDER BY id FOR UPDATE", &[&p.id])
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
    ctx.db.exec("UPDATE tokens SET revoked = $2 WHERE principal_id = $1 AND revoked IS NULL", &[&p.id, &now]).await?;
    // Tokens these tokens created (for this principal or others) end with them.
    let descendants = rbac::revoke_with_descendants(&ctx.db, &own, now).await?;
    let removed = ctx.db.exec("DELETE FROM role_assignments WHERE principal_id = $1", &[&p.id]).await?;
    // Its own webhooks go with it: they are found by name, and a later principal of the
    // same name must not inherit them.
    ctx.db
        .exec(
            "DELETE FROM deliveries WHERE state = 'Pending' AND webhook_id IN \
             (SELECT id FROM webhooks WHERE lower(principal) = lower($1))",
            &[&p.name],
        )
        .await?;
    let hooks = ctx.db.exec("DELETE FROM webhooks WHERE lower(principal) = lower($1)", &[&p.name]).await?;
    // Its access ends with it: live, pending and scheduled grants are revoked, so that a
    // pending request cannot be approved for someone who no longer exists, and a later
    // principal of the same name finds nothing of the old one's left to extend. The policies
    // are locked first, in order, as every change of their grants locks them.
    let deleter = audit.caller.clone();
    let ending = &lifecycle::ENDED_BY_PRINCIPAL_DELETE;
    let found = ctx
        .db
        .rows(
            "SELECT DISTINCT g.rid, g.pid FROM grants g JOIN requests r ON r.rid = g.rid \
             WHERE lower(r.principal) = lower($1) AND g.status = ANY($2) ORDER BY g.pid, g.rid",
            &[&p.name, &grants::words(ending)],
        )
        .await?;
    let mut requests = Vec::with_capacity(found.len());
    let mut locked = None;
    for r in &found {
        let (rid, pid): (i64, i64) = (r.try_get(0)?, r.try_get(1)?);
        if locked != Some(pid) {
            grants::lock_policy(&ctx.db, pid).await?;
            locked = Some(pid);
        }
        requests.push(rid);
    }
    let mut ended = 0;
    for rid in &requests {
        ended += grants::transition_where(
            &ctx.db,
            grants::Filter::Request(*rid),
            ending,
            lifecycle::principal_deleted,
            By::Revoker(&deleter),
        )
        .await?;
        hooks::enqueue(&ctx.db, outbox::REVOKED, *rid, audit.time).await?;
    }
    if ended > 0 {
        ctx.bump_revision();
    }
    // The name is freed; an OIDC identity signing in again starts afresh (no roles).
    ctx.db
        .exec(
            "UPDATE principals SET name = name || '#deleted-' || id, issuer = NULL, subject = NULL WHERE id = $1",
            &[&p.id],
        )
        .await?;
    let removed =
        checks::Removed { assignments: removed, descendant_tokens: descendants, webhooks: hooks, grants: ended };
    let oidc = p.oidc.as_ref().map(|o| (o.issuer.as_str(), o.subject.as_str()));
    ctx.audit(checks::principal_deleted(audit, &name, removed, oidc));
    Ok(p)
}
