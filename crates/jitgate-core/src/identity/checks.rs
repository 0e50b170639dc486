//! The identity decisions a store makes inside its transaction, on the facts it loads: whether
//! a principal's name is free, whether a token may create another (and for how long), whether a
//! role may be deleted or assigned again; the refusals name what is wrong, and the audit
//! records say what changed.

use time::OffsetDateTime;

use crate::audit::AuditEvent;
use crate::invalid::{Invalid, InvalidKind};
use crate::rbac::RoleDefinition;
use crate::timefmt::rfc3339;

use super::TOKEN_LIFETIME_TOO_LONG;

/// The code of a principal name that is taken.
pub const PRINCIPAL_EXISTS: &str = "PrincipalExists";
/// The code of a principal that does not exist.
pub const PRINCIPAL_NOT_FOUND: &str = "PrincipalNotFound";
/// The code of a revoked or expired token asking for a new one.
pub const PARENT_TOKEN_INVALID: &str = "ParentTokenInvalid";
/// The code of a token that does not exist.
pub const TOKEN_NOT_FOUND: &str = "TokenNotFound";
/// The code of a custom role that does not exist.
pub const ROLE_DEFINITION_NOT_FOUND: &str = "RoleDefinitionNotFound";
/// The code of a custom role that is still assigned.
pub const ROLE_DEFINITION_IN_USE: &str = "RoleDefinitionInUse";
/// The code of a role a principal already holds at a scope.
pub const ROLE_ASSIGNMENT_EXISTS: &str = "RoleAssignmentExists";
/// The code of a role assignment that does not exist.
pub const ROLE_ASSIGNMENT_NOT_FOUND: &str = "RoleAssignmentNotFound";

/// A local principal is created only under a free name (`taken`: a principal holds it).
pub fn check_name_free(name: &str, taken: bool) -> Result<(), Invalid> {
    if taken {
        return Err(Invalid::conflict(PRINCIPAL_EXISTS, format!("a principal named '{name}' exists")));
    }
    Ok(())
}

/// An OIDC identity's derived `name` is held by another principal (`holder`, its id).
pub fn oidc_name_held(name: &str, holder: i64) -> Invalid {
    Invalid::conflict(
        PRINCIPAL_EXISTS,
        format!(
            "the name '{name}' of this OIDC identity is held by another principal (id {holder}); an administrator must remove it"
        ),
    )
}

/// The audit record of local principal `name` of `kind` created.
pub fn principal_created(audit: AuditEvent, name: &str, kind: &str) -> AuditEvent {
    audit.succeeded().with("principal", name.to_owned()).with("type", kind.to_owned())
}

/// What an OIDC sign-in knows of its identity: issuer, subject and the display name it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OidcSeen<'a> {
    pub issuer: &'a str,
    pub subject: &'a str,
    pub display_name: Option<&'a str>,
}

/// The audit record of principal `name` provisioned for an OIDC identity at its first sign-in.
pub fn oidc_provisioned(audit: AuditEvent, name: &str, seen: OidcSeen<'_>) -> AuditEvent {
    audit
        .succeeded()
        .with("principal", name.to_owned())
        .with("type", "User")
        .with("provisioned", "oidc")
        .with("issuer", seen.issuer.to_owned())
        .with("subject", seen.subject.to_owned())
        .with("displayName", seen.display_name.unwrap_or_default().to_owned())
}

/// The audit record of an OIDC principal's display name brought up to date at a sign-in.
pub fn oidc_renamed(audit: AuditEvent, name: &str, display_name: Option<&str>, previous: Option<&str>) -> AuditEvent {
    audit
        .succeeded()
        .with("principal", name.to_owned())
        .with("displayName", display_name.unwrap_or_default().to_owned())
        .with("previousDisplayName", previous.unwrap_or_default().to_owned())
}

/// No principal is named `name` (as the message should show it).
pub fn principal_not_found(name: &str) -> Invalid {
    Invalid::not_found(PRINCIPAL_NOT_FOUND, format!("no principal named '{name}'"))
}

/// What a store knows of a token that asks for another one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParentToken {
    pub revoked: bool,
    pub expires: Option<OffsetDateTime>,
}

/// A token (`parent`, id `parent_id`; `None`: it does not exist) may create another that
/// `expires` only while it is live at `now`, and the new one may not outlive it.
pub fn check_parent(
    parent_id: i64,
    parent: Option<ParentToken>,
    expires: Option<OffsetDateTime>,
    now: OffsetDateTime,
) -> Result<(), Invalid> {
    let live = parent.filter(|t| !t.revoked && t.expires.is_none_or(|e| e > now));
    let Some(live) = live else {
        let mut invalid = Invalid::conflict(
            PARENT_TOKEN_INVALID,
            format!("token {parent_id}, which asks for a new token, is revoked or has expired"),
        );
        invalid.kind = InvalidKind::Forbidden;
        return Err(invalid);
    };
    if let Some(limit) = live.expires.filter(|l| expires.is_none_or(|e| e > *l)) {
        let m =
            format!("a token cannot outlive token {parent_id}, which creates it (it expires at {})", rfc3339(limit));
        return Err(Invalid::input(TOKEN_LIFETIME_TOO_LONG, Some("expiresIn".into()), m));
    }
    Ok(())
}

/// No token has id `id`.
pub fn token_not_found(id: i64) -> Invalid {
    Invalid::not_found(TOKEN_NOT_FOUND, format!("no token with id {id}"))
}

/// The audit record of the first principal, `owner`, made Owner with a token that `expires`.
pub fn bootstrapped(audit: AuditEvent, owner: &str, expires: Option<OffsetDateTime>) -> AuditEvent {
    audit
        .succeeded()
        .with("principal", owner.to_owned())
        .with("role", "Owner")
        .with("expiresOn", expires.map(rfc3339).unwrap_or_default())
}

/// The audit record of token `id` of `principal`, created by `origin` (from token `parent`).
pub fn token_created(
    audit: AuditEvent,
    principal: &str,
    id: i64,
    expires: Option<OffsetDateTime>,
    origin: &str,
    parent: Option<i64>,
) -> AuditEvent {
    let event = audit
        .succeeded()
        .with("principal", principal.to_owned())
        .with("tokenId", id.to_string())
        .with("expiresOn", expires.map(rfc3339).unwrap_or_default())
        .with("createdWith", origin.to_owned());
    match parent {
        Some(parent) => event.with("parentTokenId", parent.to_string()),
        None => event,
    }
}

/// The audit record of token `id` of `principal` revoked, with `descendants` tokens it made.
pub fn token_revoked(audit: AuditEvent, id: i64, principal: &str, descendants: usize) -> AuditEvent {
    audit
        .succeeded()
        .with("tokenId", id.to_string())
        .with("principal", principal.to_owned())
        .with("revokedDescendantTokens", descendants.to_string())
}

/// What a principal's deletion removed with it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removed {
    pub assignments: u64,
    pub descendant_tokens: usize,
    pub webhooks: u64,
    pub grants: usize,
}

/// The audit record of principal `name` deleted (an OIDC identity names its issuer and subject).
pub fn principal_deleted(audit: AuditEvent, name: &str, removed: Removed, oidc: Option<(&str, &str)>) -> AuditEvent {
    let event = audit
        .succeeded()
        .with("principal", name.to_owned())
        .with("removedAssignments", removed.assignments.to_string())
        .with("revokedDescendantTokens", removed.descendant_tokens.to_string())
        .with("removedWebhooks", removed.webhooks.to_string())
        .with("revokedGrants", removed.grants.to_string());
    match oidc {
        Some((issuer, subject)) => event.with("issuer", issuer.to_owned()).with("subject", subject.to_owned()),
        None => event,
    }
}

/// The audit record of a stored custom role.
pub fn role_stored(audit: AuditEvent, role: &RoleDefinition) -> AuditEvent {
    audit
        .succeeded()
        .with("role", role.name.clone())
        .with("actions", role.actions.join(" "))
        .with("notActions", role.not_actions.join(" "))
        .with("assignableScopes", role.assignable_scopes.join(" "))
}

/// No custom role is named `name`.
pub fn role_not_found(name: &str) -> Invalid {
    Invalid::not_found(ROLE_DEFINITION_NOT_FOUND, format!("no custom role named '{name}'"))
}

/// A custom role is deleted only when nobody holds it (`used`: its assignments).
pub fn check_role_unused(name: &str, used: i64) -> Result<(), Invalid> {
    if used > 0 {
        return Err(Invalid::conflict(
            ROLE_DEFINITION_IN_USE,
            format!("role '{name}' has {used} assignment(s); delete them first"),
        ));
    }
    Ok(())
}

/// A principal holds a role at a scope once (`existing`: the assignment that gives it already).
pub fn check_not_assigned(principal: &str, role: &str, scope: &str, existing: Option<&str>) -> Result<(), Invalid> {
    match existing {
        Some(id) => Err(Invalid::conflict(
            ROLE_ASSIGNMENT_EXISTS,
            format!("'{principal}' already holds '{role}' at '{scope}' (assignment {id})"),
        )),
        None => Ok(()),
    }
}

/// No role assignment has id `id`.
pub fn assignment_not_found(id: &str) -> Invalid {
    Invalid::not_found(ROLE_ASSIGNMENT_NOT_FOUND, format!("no role assignment {id}"))
}

/// The audit record of assignment `id` (created or deleted): `principal` holds `role` at `scope`.
pub fn assignment_event(audit: AuditEvent, id: &str, principal: &str, role: &str, scope: &str) -> AuditEvent {
    audit
        .succeeded()
        .with("assignmentId", id.to_owned())
        .with("principal", principal.to_owned())
        .with("role", role.to_owned())
        .with("scope", scope.to_owned())
}

#[cfg(test)]
mod tests;
