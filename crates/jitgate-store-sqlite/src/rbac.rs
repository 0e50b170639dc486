//! Principals, tokens, custom role definitions and role assignments.

use rusqlite::{params, Connection, OptionalExtension, Row};

use jitgate_core::rbac::RoleDefinition;
use jitgate_store::{OidcIdentity, Principal, RoleAssignment, TokenOrigin, TokenRecord};

use crate::rows::from_nanos;

/// The columns of a principal, for queries that join it (`p` is the principals table).
pub const PRINCIPAL_COLUMNS: &str = "p.id, p.name, p.kind, p.issuer, p.subject, p.display_name";

pub fn principal_from_row(r: &Row<'_>) -> rusqlite::Result<Principal> {
    let issuer: Option<String> = r.get("issuer")?;
    let subject: Option<String> = r.get("subject")?;
    Ok(Principal {
        id: r.get("id")?,
        name: r.get("name")?,
        kind: r.get("kind")?,
        oidc: issuer.zip(subject).map(|(issuer, subject)| OidcIdentity { issuer, subject }),
        display_name: r.get("display_name")?,
    })
}

/// A principal by name (case-insensitive).
pub fn principal(conn: &Connection, name: &str) -> rusqlite::Result<Option<Principal>> {
    conn.prepare_cached(&format!("SELECT {PRINCIPAL_COLUMNS} FROM principals p WHERE p.name = ?1"))
        .and_then(|mut s| s.query_row([name], principal_from_row).optional())
}

/// An OIDC identity's principal, by (issuer, subject) only.
pub fn oidc_principal(conn: &Connection, id: &OidcIdentity) -> rusqlite::Result<Option<Principal>> {
    conn.prepare_cached(&format!("SELECT {PRINCIPAL_COLUMNS} FROM principals p WHERE p.issuer = ?1 AND p.subject = ?2"))
        .and_then(|mut s| s.query_row([&id.issuer, &id.subject], principal_from_row).optional())
}

fn origin(text: Option<String>, parent: Option<i64>) -> Option<TokenOrigin> {
    match (text.as_deref(), parent) {
        (Some("server"), _) => Some(TokenOrigin::Server),
        (Some("idToken"), _) => Some(TokenOrigin::IdToken),
        (Some("token"), Some(p)) => Some(TokenOrigin::Token(p)),
        _ => None,
    }
}

pub fn token_from_row(r: &Row<'_>) -> rusqlite::Result<TokenRecord> {
    let expires: Option<i64> = r.get("expires")?;
    let revoked: Option<i64> = r.get("revoked")?;
    Ok(TokenRecord {
        id: r.get("id")?,
        principal: r.get("principal")?,
        created: from_nanos(r.get("created")?)?,
        expires: expires.map(from_nanos).transpose()?,
        revoked: revoked.map(from_nanos).transpose()?,
        origin: origin(r.get("origin")?, r.get("parent_id")?),
    })
}

pub const TOKEN_SELECT: &str =
    "SELECT t.id, p.name AS principal, t.created, t.expires, t.revoked, t.origin, t.parent_id FROM tokens t \
     JOIN principals p ON p.id = t.principal_id";

/// Revokes the token `id` and every token created by it or by those, at `now` (those already
/// revoked keep their time). Returns how many tokens besides `id` this revoked.
pub fn revoke_with_descendants(conn: &Connection, ids: &[i64], now: i64) -> rusqlite::Result<usize> {
    let mut revoked = 0;
    let mut stmt = conn.prepare_cached(
        "WITH RECURSIVE tree(id) AS (SELECT ?1 UNION SELECT t.id FROM tokens t JOIN tree ON t.parent_id = tree.id) \
         UPDATE tokens SET revoked = ?2 WHERE id IN (SELECT id FROM tree) AND id != ?1 AND revoked IS NULL",
    )?;
    for id in ids {
        revoked += stmt.execute(params![id, now])?;
    }
    Ok(revoked)
}

pub fn token(conn: &Connection, id: i64) -> rusqlite::Result<Option<TokenRecord>> {
    conn.prepare_cached(&format!("{TOKEN_SELECT} WHERE t.id = ?1"))
        .and_then(|mut s| s.query_row([id], token_from_row).optional())
}

fn lines(s: &str) -> Vec<String> {
    s.split('\n').filter(|l| !l.is_empty()).map(String::from).collect()
}

pub fn role_from_row(r: &Row<'_>) -> rusqlite::Result<RoleDefinition> {
    let (a, n, s): (String, String, String) = (r.get("actions")?, r.get("not_actions")?, r.get("assignable_scopes")?);
    Ok(RoleDefinition {
        name: r.get("name")?,
        id: r.get("id")?,
        description: r.get("description")?,
        actions: lines(&a),
        not_actions: lines(&n),
        assignable_scopes: lines(&s),
        built_in: false,
    })
}

pub fn role(conn: &Connection, name: &str) -> rusqlite::Result<Option<RoleDefinition>> {
    conn.prepare_cached("SELECT * FROM role_definitions WHERE key = lower(?1)")
        .and_then(|mut s| s.query_row([name], role_from_row).optional())
}

pub fn put_role(conn: &Connection, role: &RoleDefinition, now: i64) -> rusqlite::Result<bool> {
    let existed = self::role(conn, &role.name)?.is_some();
    conn.execute(
        "INSERT INTO role_definitions (key, name, id, description, actions, not_actions, assignable_scopes, created, updated) \
         VALUES (lower(?1), ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7) ON CONFLICT (key) DO UPDATE SET name = ?1, description = ?3, \
         actions = ?4, not_actions = ?5, assignable_scopes = ?6, updated = ?7",
        params![
            role.name,
            role.id,
            role.description,
            role.actions.join("\n"),
            role.not_actions.join("\n"),
            role.assignable_scopes.join("\n"),
            now
        ],
    )?;
    Ok(!existed)
}

pub fn assignment_from_row(r: &Row<'_>) -> rusqlite::Result<RoleAssignment> {
    Ok(RoleAssignment {
        id: r.get("id")?,
        principal: r.get("principal")?,
        role: r.get("role_name")?,
        scope: r.get("scope")?,
        created: from_nanos(r.get("created")?)?,
    })
}

pub const ASSIGNMENT_SELECT: &str =
    "SELECT a.id, p.name AS principal, a.role_name, a.scope, a.created FROM role_assignments a \
                                     JOIN principals p ON p.id = a.principal_id";

pub fn assignment(conn: &Connection, id: &str) -> rusqlite::Result<Option<RoleAssignment>> {
    conn.prepare_cached(&format!("{ASSIGNMENT_SELECT} WHERE a.id = ?1"))
        .and_then(|mut s| s.query_row([id], assignment_from_row).optional())
}

/// Inserts an assignment with a random id; returns the id.
pub fn insert_assignment(
    conn: &Connection,
    principal_id: i64,
    role: &str,
    scope: &str,
    now: i64,
    by: &str,
) -> rusqlite::Result<String> {
    conn.prepare_cached(
        "INSERT INTO role_assignments (id, principal_id, role_key, role_name, scope, created, created_by) \
         VALUES (lower(hex(randomblob(16))), ?1, lower(?2), ?2, ?3, ?4, ?5) RETURNING id",
    )?
    .query_row(params![principal_id, role, scope, now, by], |r| r.get(0))
}
