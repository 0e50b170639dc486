use super::*;
use crate::audit::AuditStatus;

fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("valid time")
}

fn audit() -> AuditEvent {
    crate::audit::test_event(now())
}

#[test]
fn a_name_is_taken_once_and_a_missing_principal_is_named() {
    assert!(check_name_free("alice", false).is_ok());
    assert_eq!(check_name_free("alice", true).expect_err("taken").code, PRINCIPAL_EXISTS);
    assert_eq!(oidc_name_held("oidc:x", 3).code, PRINCIPAL_EXISTS);
    assert_eq!(principal_not_found("bob").message, "no principal named 'bob'");
}

#[test]
fn only_a_live_token_creates_one_that_does_not_outlive_it() {
    let hour = time::Duration::hours(1);
    let live = ParentToken { revoked: false, expires: Some(now() + hour) };
    assert!(check_parent(1, Some(live), Some(now() + hour), now()).is_ok());
    let missing = check_parent(1, None, None, now()).expect_err("no such token");
    assert_eq!((missing.code, missing.kind), (PARENT_TOKEN_INVALID, InvalidKind::Forbidden));
    let revoked = ParentToken { revoked: true, expires: None };
    assert_eq!(check_parent(1, Some(revoked), None, now()).expect_err("revoked").code, PARENT_TOKEN_INVALID);
    let expired = ParentToken { revoked: false, expires: Some(now()) };
    assert_eq!(check_parent(1, Some(expired), None, now()).expect_err("expired").code, PARENT_TOKEN_INVALID);
    let longer = check_parent(1, Some(live), Some(now() + hour + hour), now()).expect_err("outlives");
    assert_eq!((longer.code, longer.target.as_deref()), (TOKEN_LIFETIME_TOO_LONG, Some("expiresIn")));
    assert_eq!(check_parent(1, Some(live), None, now()).expect_err("never expires").code, TOKEN_LIFETIME_TOO_LONG);
    assert!(check_parent(1, Some(ParentToken { revoked: false, expires: None }), None, now()).is_ok());
}

#[test]
fn roles_in_use_and_held_twice_are_refused() {
    assert!(check_role_unused("r", 0).is_ok());
    assert_eq!(check_role_unused("r", 2).expect_err("in use").code, ROLE_DEFINITION_IN_USE);
    assert!(check_not_assigned("alice", "Reader", "/", None).is_ok());
    let twice = check_not_assigned("alice", "Reader", "/", Some("a1")).expect_err("held");
    assert_eq!(twice.code, ROLE_ASSIGNMENT_EXISTS);
    assert!(twice.message.contains("assignment a1"), "{}", twice.message);
    assert_eq!(role_not_found("r").code, ROLE_DEFINITION_NOT_FOUND);
    assert_eq!(assignment_not_found("a").code, ROLE_ASSIGNMENT_NOT_FOUND);
    assert_eq!(token_not_found(4).code, TOKEN_NOT_FOUND);
}

#[test]
fn the_records_say_what_changed() {
    let created = token_created(audit(), "alice", 5, None, "token", Some(2));
    assert_eq!(created.status, AuditStatus::Succeeded);
    assert_eq!((created.properties["tokenId"].as_str(), created.properties["parentTokenId"].as_str()), ("5", "2"));
    assert!(!token_created(audit(), "alice", 5, None, "server", None).properties.contains_key("parentTokenId"));
    let removed = Removed { assignments: 1, descendant_tokens: 2, webhooks: 3, grants: 4 };
    let deleted = principal_deleted(audit(), "alice", removed, Some(("https://idp", "sub")));
    assert_eq!(deleted.properties["revokedGrants"], "4");
    assert_eq!(deleted.properties["issuer"], "https://idp");
    assert_eq!(token_revoked(audit(), 5, "alice", 2).properties["revokedDescendantTokens"], "2");
    assert_eq!(bootstrapped(audit(), "admin", None).properties["role"], "Owner");
    let a = assignment_event(audit(), "a1", "alice", "Reader", "/");
    assert_eq!((a.properties["assignmentId"].as_str(), a.properties["scope"].as_str()), ("a1", "/"));
}

#[test]
fn the_records_of_oidc_principals_name_the_identity() {
    let seen = OidcSeen { issuer: "https://idp", subject: "s1", display_name: None };
    let provisioned = oidc_provisioned(audit(), "oidc:x", seen);
    assert_eq!(
        (provisioned.properties["provisioned"].as_str(), provisioned.properties["displayName"].as_str()),
        ("oidc", "")
    );
    let renamed = oidc_renamed(audit(), "oidc:x", Some("Alice"), None);
    assert_eq!(
        (renamed.properties["displayName"].as_str(), renamed.properties["previousDisplayName"].as_str()),
        ("Alice", "")
    );
    assert_eq!(principal_created(audit(), "bot", "ServicePrincipal").properties["type"], "ServicePrincipal");
}
