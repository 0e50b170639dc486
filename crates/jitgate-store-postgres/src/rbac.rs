//! Principals, tokens, custom role definitions and role assignments.

use tokio_postgres::Row;

use jitgate_core::rbac::RoleDefinition;
use jitgate_store::{OidcIdentity, Principal, RoleAssignment, TokenOrigin, TokenRecord};

use crate::rows::{opt_time, time_at};
use crate::{Db, Res};

/// The columns of a principal, for queries that join it (`p` is the principals table).
pub const PRINCIPAL_COLUMNS: &str = "p.id, p.name, p.kind, p.issuer, p.subject, p.display_name";

pub fn principal_from_row(r: &Row) -> Res<Principal> {
    let issuer: Option<String> = r.try_get("issuer")?;
    let subject: Option<String> = r.try_get("subject")?;
    Ok(Principal {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        kind: r.try_get("kind")?,
        oidc: issuer.zip(subject).map(|(issuer, subject)| OidcIdentity { issuer, subject }),
        display_name: r.try_get("display_name")?,
    })
}

/// A principal by name (case-insensitive).
pub async fn principal(db: &Db, name: &str) -> Res<Option<Principal>> {
    db.opt(&format!("SELECT {PRINCIPAL_COLUMNS} FROM principals p WHERE lower(p.name) = lower($1)"), &[&name])
        .await?
        .map(|r| principal_from_row(&r))
        .transpose()
}

/// An OIDC identity's principal, by (issuer, subject) only; `lock`: locked for a change.
pub async fn oidc_principal(db: &Db, id: &OidcIdentity, lock: bool) -> Res<Option<Principal>> {
    let sql = format!(
        "SELECT {PRINCIPAL_COLUMNS} FROM principals p WHERE p.issuer = $1 AND p.subject = $2{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    db.opt(&sql, &[&id.issuer, &id.subject]).await?.map(|r| principal_from_row(&r)).transpose()
}

fn origin(text: Option<String>, parent: Option<i64>) -> Option<TokenOrigin> {
    match (text.as_deref(), parent) {
        (Some("server"), _) => Some(TokenOrigin::Server),
        (Some("idToken"), _) => Some(TokenOrigin::IdToken),
        (Some("token"), Some(p)) => Some(TokenOrigin::Token(p)),
        _ => None,
    }
}

pub fn token_from_row(r: &Row) -> Res<TokenRecord> {
    Ok(TokenRecord {
        id: r.try_get("id")?,
        principal: r.try_get("principal")?,
        created: time_at(r, "created")?,
        expires: opt_time(r, "expires")?,
        revoked: opt_time(r, "revoked")?,
        origin: origin(r.try_get("origin")?, r.try_get("parent_id")?),
    })
}

pub const TOKEN_SELECT: &str =
    "SELECT t.id, p.name AS principal, t.created, t.expires, t.revoked, t.origin, t.parent_id FROM tokens t \
     JOIN principals p ON p.id = t.principal_id";

/// Revokes every token created by the tokens `ids` or by those, at `now` (those already
/// revoked keep their time). Returns how many tokens besides `ids` this revoked.
pub async fn revoke_with_descendants(db: &Db, ids: &[i64], now: i64) -> Res<usize> {
    let mut revoked = 0;
    for id in ids {
        revoked += db
            .exec(
                "WITH RECURSIVE tree(id) AS (SELECT $1::bigint UNION SELECT t.id FROM tokens t JOIN tree ON t.parent_id = tree.id) \
                 UPDATE tokens SET revoked = $2 WHERE id IN (SELECT id FROM tree) AND id <> $1 AND revoked IS NULL",
                &[id, &now],
            )
            .await?;
    }
    Ok(usize::try_from(revoked).unwrap_or(usize::MAX))
}

pub async fn token(db: &Db, id: i64) -> Res<Option<TokenRecord>> {
    db.opt(&format!("{TOKEN_SELECT} WHERE t.id = $1"), &[&id]).await?.map(|r| token_from_row(&r)).transpose()
}

fn lines(s: &str) -> Vec<String> {
    s.split('\n').filter(|l| !l.is_empty()).map(String::from).collect()
}

pub fn role_from_row(r: &Row) -> Res<RoleDefinition> {
    let (a, n, s): (String, String, String) =
        (r.try_get("actions")?, r.try_get("not_actions")?, r.try_get("assignable_scopes")?);
    Ok(RoleDefinition {
        name: r.try_get("name")?,
        id: r.try_get("id")?,
        description: r.try_get("description")?,
        actions: lines(&a),
        not_actions: lines(&n),
        assignable_scopes: lines(&s),
        built_in: false,
    })
}

pub async fn role(db: &Db, name: &str) -> Res<Option<RoleDefinition>> {
    db.opt("SELECT * FROM role_definitions WHERE key = lower($1)", &[&name])
        .await?
        .map(|r| role_from_row(&r))
        .transpose()
}

/// Creates or replaces a custom role; true when it was new.
pub async fn put_role(db: &Db, role: &RoleDefinition, now: i64) -> Res<bool> {
    let row = db
        .one(
            "INSERT INTO role_definitions (key, name, id, description, actions, not_actions, assignable_scopes, created, updated) \
             VALUES (lower($1), $1, $2, $3, $4, $5, $6, $7, $7) ON CONFLICT (key) DO UPDATE SET name = $1, description = $3, \
             actions = $4, not_actions = $5, assignable_scopes = $6, updated = $7 RETURNING (xmax = 0) AS inserted",
            &[
                &role.name,
                &role.id,
                &role.description,
                &role.actions.join("\n"),
                &role.not_actions.join("\n"),
                &role.assignable_scopes.join("\n"),
                &now,
            ],
        )
        .await?;
    Ok(row.try_get("inserted")?)
}

pub fn assignment_from_row(r: &Row) -> Res<RoleAssignment> {
    Ok(RoleAssignment {
        id: r.try_get("id")?,
        principal: r.try_get("principal")?,
        role: r.try_get("role_name")?,
        scope: r.try_get("scope")?,
        created: time_at(r, "created")?,
    })
}

pub const ASSIGNMENT_SELECT: &str =
    "SELECT a.id, p.name AS principal, a.role_name, a.scope, a.created FROM role_assignments a \
                                     JOIN principals p ON p.id = a.principal_id";

pub async fn assignment(db: &Db, id: &str) -> Res<Option<RoleAssignment>> {
    db.opt(&format!("{ASSIGNMENT_SELECT} WHERE a.id = $1"), &[&id]).await?.map(|r| assignment_from_row(&r)).transpose()
}

/// Inserts an assignment with a random id; returns the id.
pub async fn insert_assignment(db: &Db, principal_id: i64, role: &str, scope: &str, now: i64, by: &str) -> Res<String> {
    Ok(db
        .one(
            "INSERT INTO role_assignments (id, principal_id, role_key, role_name, scope, created, created_by) \
             VALUES (replace(gen_random_uuid()::text, '-', ''), $1, lower($2), $2, $3, $4, $5) RETURNING id",
            &[&principal_id, &role, &scope, &now, &by],
        )
        .await?
        .try_get(0)?)
}
