//! The SQLite store: principals, tokens, OIDC identities, role definitions and assignments.

use super::*;

#[async_trait]
impl IdentityStore for SqliteStore {
    async fn bootstrap(
        &self,
        owner: &str,
        token_hash: &str,
        expires: Option<OffsetDateTime>,
        audit: AuditEvent,
    ) -> StoreResult<bool> {
        let (owner, token_hash) = (owner.to_owned(), token_hash.to_owned());
        self.write(move |ctx| {
            let count: i64 =
                ctx.conn.query_row("SELECT count(*) FROM principals", [], |r| r.get(0)).map_err(backend)?;
            if count > 0 {
                return Ok(false);
            }
            let now = nanos(audit.time);
            ctx.conn
                .execute("INSERT INTO principals (name, kind, created) VALUES (?1, 'User', ?2)", params![owner, now])
                .map_err(backend)?;
            let pid = ctx.conn.last_insert_rowid();
            ctx.conn
                .execute(
                    "INSERT INTO tokens (principal_id, hash, created, expires, origin) VALUES (?1, ?2, ?3, ?4, 'server')",
                    params![pid, token_hash, now, expires.map(nanos)],
                )
                .map_err(backend)?;
            rbac::insert_assignment(ctx.conn, pid, "Owner", "/", now, "jitgate").map_err(backend)?;
            ctx.audit(&checks::bootstrapped(audit, &owner, expires)).map_err(backend)?;
            Ok(true)
        })
        .await
    }

    async fn authenticate(&self, token_hash: &str, now: OffsetDateTime) -> StoreResult<Option<TokenAuth>> {
        let hash = token_hash.to_owned();
        self.read(move |c| {
            c.prepare_cached(&format!(
                "SELECT {}, t.id AS token_id, t.expires FROM tokens t JOIN principals p ON p.id = t.principal_id \
                 WHERE t.hash = ?1 AND t.revoked IS NULL AND (t.expires IS NULL OR t.expires > ?2)",
                rbac::PRINCIPAL_COLUMNS
            ))?
            .query_row(params![hash, nanos(now)], |r| {
                let expires: Option<i64> = r.get("expires")?;
                Ok(TokenAuth {
                    principal: rbac::principal_from_row(r)?,
                    token_id: r.get("token_id")?,
                    expires: expires.map(from_nanos).transpose()?,
                })
            })
            .optional()
        })
        .await
    }

    async fn create_principal(&self, name: &str, kind: &str, audit: AuditEvent) -> StoreResult<Principal> {
        let (name, kind) = (name.to_owned(), kind.to_owned());
        self.write(move |ctx| {
            if let Err(invalid) = jitgate_core::identity::validate_local_name(&name) {
                return reject(ctx, audit, invalid);
            }
            let taken = rbac::principal(ctx.conn, &name).map_err(backend)?.is_some();
            if let Err(invalid) = checks::check_name_free(&name, taken) {
                return reject(ctx, audit, invalid);
            }
            insert_principal(ctx, &name, &kind, audit)
        })
        .await
    }

    async fn oidc_principal(&self, sign_in: OidcSignIn, audit: AuditEvent) -> StoreResult<Principal> {
        let id = sign_in.identity.clone();
        if let Some(p) = self.read(move |c| rbac::oidc_principal(c, &id)).await? {
            if p.display_name == sign_in.display_name {
                return Ok(p);
            }
        }
        self.write(move |ctx| upsert_oidc_principal(ctx, &sign_in, audit)).await
    }

    async fn list_principals(&self) -> StoreResult<Vec<Principal>> {
        self.read(|c| {
            c.prepare_cached(&format!("SELECT {} FROM principals p ORDER BY p.name", rbac::PRINCIPAL_COLUMNS))?
                .query_map([], rbac::principal_from_row)?
                .collect()
        })
        .await
    }

    async fn get_principal(&self, name: &str) -> StoreResult<Option<Principal>> {
        let name = name.to_owned();
        self.read(move |c| rbac::principal(c, &name)).await
    }

    async fn delete_principal(&self, name: &str, audit: AuditEvent) -> StoreResult<Principal> {
        let name = name.to_owned();
        self.write(move |ctx| {
            let Some(p) = rbac::principal(ctx.conn, &name).map_err(backend)? else {
                return reject(ctx, audit, checks::principal_not_found(&name));
            };
            let now = nanos(audit.time);
            let own: Vec<i64> = ctx
                .conn
                .prepare_cached("SELECT id FROM tokens WHERE principal_id = ?1")
                .and_then(|mut s| s.query_map([p.id], |r| r.get(0))?.collect())
                .map_err(backend)?;
            ctx.conn
                .execute(
                    "UPDATE tokens SET revoked = ?2 WHERE principal_id = ?1 AND revoked IS NULL",
                    params![p.id, now],
                )
                .map_err(backend)?;
            // Tokens these tokens created (for this principal or others) end with them.
            let descendants = rbac::revoke_with_descendants(ctx.conn, &own, now).map_err(backend)?;
            let removed =
                ctx.conn.execute("DELETE FROM role_assignments WHERE principal_id = ?1", [p.id]).map_err(backend)?;
            // Its own webhooks go with it: they are found by name, and a later principal of the
            // same name must not inherit them.
            ctx.conn
                .execute(
                    "DELETE FROM deliveries WHERE state = 'Pending' AND webhook_id IN \
                     (SELECT id FROM webhooks WHERE lower(principal) = lower(?1))",
                    [&p.name],
                )
                .map_err(backend)?;
            let hooks = ctx
                .conn
                .execute("DELETE FROM webhooks WHERE lower(principal) = lower(?1)", [&p.name])
                .map_err(backend)?;
            // Its access ends with it: live, pending and scheduled grants are revoked, so that a
            // pending request cannot be approved for someone who no longer exists, and a later
            // principal of the same name finds nothing of the old one's left to extend.
            let deleter = audit.caller.clone();
            let ending = &lifecycle::ENDED_BY_PRINCIPAL_DELETE;
            let requests: Vec<i64> = ctx
                .conn
                .prepare_cached(&format!(
                    "SELECT DISTINCT g.rid FROM grants g JOIN requests r ON r.rid = g.rid \
                     WHERE lower(r.principal) = lower(?1) AND {}",
                    grants::status_in("g.status", ending)
                ))
                .and_then(|mut s| s.query_map(grants::bind([Value::Text(p.name.clone())]), |r| r.get(0))?.collect())
                .map_err(backend)?;
            let mut ended = 0;
            for rid in &requests {
                ended += grants::transition_where(
                    ctx.conn,
                    "rid = ?1",
                    vec![Value::Integer(*rid)],
                    ending,
                    lifecycle::principal_deleted,
                    By::Revoker(&deleter),
                )
                .map_err(backend)?;
                hooks::enqueue(ctx.conn, outbox::REVOKED, *rid, audit.time).map_err(backend)?;
            }
            if ended > 0 {
                rows::bump_revision(ctx.conn).map_err(backend)?;
            }
            // The name is freed; an OIDC identity signing in again starts afresh (no roles).
            ctx.conn
                .execute(
                    "UPDATE principals SET name = name || '#deleted-' || id, issuer = NULL, subject = NULL WHERE id = ?1",
                    [p.id],
                )
                .map_err(backend)?;
            let removed = checks::Removed {
                assignments: removed as u64,
                descendant_tokens: descendants,
                webhooks: hooks as u64,
                grants: ended,
            };
            let oidc = p.oidc.as_ref().map(|o| (o.issuer.as_str(), o.subject.as_str()));
            ctx.audit(&checks::principal_deleted(audit, &name, removed, oidc)).map_err(backend)?;
            Ok(p)
        })
        .await
    }

    async fn create_token(&self, token: NewToken, audit: AuditEvent) -> StoreResult<TokenRecord> {
        self.write(move |ctx| {
            let NewToken { principal, token_hash: hash, expires, origin } = token;
            let Some(p) = rbac::principal(ctx.conn, &principal).map_err(backend)? else {
                return reject(ctx, audit, checks::principal_not_found(&jitgate_core::identity::shown(&principal)));
            };
            let parent = match origin {
                TokenOrigin::Token(parent) => {
                    // Checked inside the transaction: a parent revoked a moment ago cannot slip a
                    // child past the revocation of its descendants.
                    let found = rbac::token(ctx.conn, parent)
                        .map_err(backend)?
                        .map(|t| checks::ParentToken { revoked: t.revoked.is_some(), expires: t.expires });
                    if let Err(invalid) = checks::check_parent(parent, found, expires, audit.time) {
                        return reject(ctx, audit, invalid);
                    }
                    Some(parent)
                }
                TokenOrigin::Server | TokenOrigin::IdToken => None,
            };
            ctx.conn
                .execute(
                    "INSERT INTO tokens (principal_id, hash, created, expires, origin, parent_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![p.id, hash, nanos(audit.time), expires.map(nanos), origin.as_str(), parent],
                )
                .map_err(backend)?;
            let id = ctx.conn.last_insert_rowid();
            ctx.audit(&checks::token_created(audit, &p.name, id, expires, origin.as_str(), parent)).map_err(backend)?;
            rbac::token(ctx.conn, id).map_err(backend)?.ok_or_else(|| backend("the token vanished"))
        })
        .await
    }

    async fn list_tokens(&self, principal: &str) -> StoreResult<Vec<TokenRecord>> {
        let principal = principal.to_owned();
        self.read(move |c| {
            c.prepare_cached(&format!("{} WHERE p.name = ?1 ORDER BY t.id", rbac::TOKEN_SELECT))?
                .query_map([principal], rbac::token_from_row)?
                .collect()
        })
        .await
    }

    async fn get_token(&self, id: i64) -> StoreResult<Option<TokenRecord>> {
        self.read(move |c| rbac::token(c, id)).await
    }

    async fn revoke_token(&self, id: i64, audit: AuditEvent) -> StoreResult<TokenRecord> {
        self.write(move |ctx| {
            let Some(t) = rbac::token(ctx.conn, id).map_err(backend)? else {
                return reject(ctx, audit, checks::token_not_found(id));
            };
            let now = nanos(audit.time);
            ctx.conn
                .execute("UPDATE tokens SET revoked = coalesce(revoked, ?2) WHERE id = ?1", params![id, now])
                .map_err(backend)?;
            let descendants = rbac::revoke_with_descendants(ctx.conn, &[id], now).map_err(backend)?;
            ctx.audit(&checks::token_revoked(audit, id, &t.principal, descendants)).map_err(backend)?;
            rbac::token(ctx.conn, id).map_err(backend)?.ok_or_else(|| backend("the token vanished"))
        })
        .await
    }

    async fn put_role_definition(
        &self,
        role: RoleDefinition,
        audit: AuditEvent,
    ) -> StoreResult<(RoleDefinition, bool)> {
        self.write(move |ctx| {
            let created = rbac::put_role(ctx.conn, &role, nanos(audit.time)).map_err(backend)?;
            ctx.audit(&checks::role_stored(audit, &role)).map_err(backend)?;
            let stored =
                rbac::role(ctx.conn, &role.name).map_err(backend)?.ok_or_else(|| backend("the role vanished"))?;
            Ok((stored, created))
        })
        .await
    }

    async fn list_role_definitions(&self) -> StoreResult<Vec<RoleDefinition>> {
        self.read(|c| {
            c.prepare_cached("SELECT * FROM role_definitions ORDER BY key")?
                .query_map([], rbac::role_from_row)?
                .collect()
        })
        .await
    }

    async fn get_role_definition(&self, name: &str) -> StoreResult<Option<RoleDefinition>> {
        let name = name.to_owned();
        self.read(move |c| rbac::role(c, &name)).await
    }

    async fn delete_role_definition(&self, name: &str, audit: AuditEvent) -> StoreResult<RoleDefinition> {
        let name = name.to_owned();
        self.write(move |ctx| {
            let Some(role) = rbac::role(ctx.conn, &name).map_err(backend)? else {
                return reject(ctx, audit, checks::role_not_found(&name));
            };
            let used: i64 = ctx
                .conn
                .query_row("SELECT count(*) FROM role_assignments WHERE role_key = lower(?1)", [&name], |r| r.get(0))
                .map_err(backend)?;
            if let Err(invalid) = checks::check_role_unused(&name, used) {
                return reject(ctx, audit, invalid);
            }
            ctx.conn.execute("DELETE FROM role_definitions WHERE key = lower(?1)", [&name]).map_err(backend)?;
            ctx.audit(&audit.succeeded().with("role", name.clone())).map_err(backend)?;
            Ok(role)
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
            let Some(p) = rbac::principal(ctx.conn, &principal).map_err(backend)? else {
                return reject(ctx, audit, checks::principal_not_found(&principal));
            };
            let exists: Option<String> = ctx
                .conn
                .query_row(
                    "SELECT id FROM role_assignments WHERE principal_id = ?1 AND role_key = lower(?2) AND lower(scope) = lower(?3)",
                    params![p.id, role, scope],
                    |r| r.get(0),
                )
                .optional()
                .map_err(backend)?;
            if let Err(invalid) = checks::check_not_assigned(&principal, &role, &scope, exists.as_deref()) {
                return reject(ctx, audit, invalid);
            }
            let id = rbac::insert_assignment(ctx.conn, p.id, &role, &scope, nanos(audit.time), &audit.caller).map_err(backend)?;
            ctx.audit(&checks::assignment_event(audit, &id, &principal, &role, &scope)).map_err(backend)?;
            rbac::assignment(ctx.conn, &id).map_err(backend)?.ok_or_else(|| backend("the assignment vanished"))
        })
        .await
    }

    async fn list_role_assignments(&self, principal: Option<&str>) -> StoreResult<Vec<RoleAssignment>> {
        let principal = principal.map(str::to_owned);
        self.read(move |c| match principal {
            Some(p) => c
                .prepare_cached(&format!("{} WHERE p.name = ?1 ORDER BY a.created, a.id", rbac::ASSIGNMENT_SELECT))?
                .query_map([p], rbac::assignment_from_row)?
                .collect(),
            None => c
                .prepare_cached(&format!("{} ORDER BY a.created, a.id", rbac::ASSIGNMENT_SELECT))?
                .query_map([], rbac::assignment_from_row)?
                .collect(),
        })
        .await
    }

    async fn get_role_assignment(&self, id: &str) -> StoreResult<Option<RoleAssignment>> {
        let id = id.to_owned();
        self.read(move |c| rbac::assignment(c, &id)).await
    }

    async fn delete_role_assignment(&self, id: &str, audit: AuditEvent) -> StoreResult<RoleAssignment> {
        let id = id.to_owned();
        self.write(move |ctx| {
            let Some(a) = rbac::assignment(ctx.conn, &id).map_err(backend)? else {
                return reject(ctx, audit, checks::assignment_not_found(&id));
            };
            ctx.conn.execute("DELETE FROM role_assignments WHERE id = ?1", [&id]).map_err(backend)?;
            ctx.audit(&checks::assignment_event(audit, &id, &a.principal, &a.role, &a.scope)).map_err(backend)?;
            Ok(a)
        })
        .await
    }
}
