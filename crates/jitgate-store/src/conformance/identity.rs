//! Principals, tokens, role assignments and OIDC identities.

use super::*;

pub(super) async fn principals_tokens_roles_and_assignments(store: &dyn Store) {
    // The bootstrap owner holds Owner at "/".
    let owner = store.list_role_assignments(Some("owner")).await.expect("list");
    assert_eq!(owner.len(), 1);
    assert_eq!((owner[0].role.as_str(), owner[0].scope.as_str()), ("Owner", "/"));

    let alice = store.create_principal("alice", "User", audit("p")).await.expect("create");
    assert_eq!(alice.kind, "User");
    assert!(matches!(store.create_principal("alice", "User", audit("p")).await, Err(StoreError::Rejected(_))));
    assert!(matches!(store.create_principal("ALICE", "User", audit("p")).await, Err(StoreError::Rejected(_))));
    let bot = store.create_principal("bot", "ServicePrincipal", audit("p")).await.expect("create");
    assert_eq!(store.get_principal("BOT").await.expect("get").map(|p| p.id), Some(bot.id), "names ignore case");
    assert!(store.list_principals().await.expect("list").iter().any(|p| p.name == "alice"));
    // Local names are checked by the store itself: no reserved, look-alike or invisible names.
    for bad in ["oidc:0123456789abcdef0123456789abcdef", "o\u{202E}wner", "оwner", "own er", "", "a#deleted-1"] {
        match store.create_principal(bad, "User", audit("p")).await {
            Err(StoreError::Rejected(e)) => assert_eq!(e.code, "InvalidPrincipal", "{bad:?}"),
            other => panic!("{bad:?} was not refused: {other:?}"),
        }
    }

    // Tokens: expiry and revocation both end them.
    let token = |hash: &str, expires| NewToken {
        principal: "alice".into(),
        token_hash: hash.into(),
        expires,
        origin: TokenOrigin::Server,
    };
    let t1 = store.create_token(token("alice-1", None), audit("t")).await.expect("token");
    let t2 = store.create_token(token("alice-2", Some(now() + Duration::minutes(5))), audit("t")).await.expect("token");
    let auth = store.authenticate("alice-1", now()).await.expect("auth").expect("valid");
    assert_eq!((auth.principal.name.as_str(), auth.token_id, auth.expires), ("alice", t1.id, None));
    assert!(store.authenticate("alice-2", now() + Duration::minutes(6)).await.expect("auth").is_none(), "expired");
    store.revoke_token(t1.id, audit("r")).await.expect("revoke");
    assert!(store.authenticate("alice-1", now()).await.expect("auth").is_none(), "revoked");
    let listed = store.list_tokens("alice").await.expect("tokens");
    assert_eq!(listed.len(), 2);
    assert!(listed[0].revoked.is_some() && listed[1].expires.is_some());
    assert_eq!(store.get_token(t2.id).await.expect("get").map(|t| t.principal), Some("alice".into()));

    // Custom roles and assignments.
    let role = jitgate_core::rbac::least_privileged_role("JIT Access Role", &format!("/subscriptions/{SUB}"), "r-1");
    let (stored, created) = store.put_role_definition(role.clone(), audit("rd")).await.expect("role");
    assert!(created);
    assert_eq!(stored.actions, role.actions);
    let (_, created) = store.put_role_definition(role.clone(), audit("rd")).await.expect("replace");
    assert!(!created);
    let listed: Vec<String> = store.list_role_definitions().await.expect("list").into_iter().map(|r| r.name).collect();
    assert_eq!(listed, ["JIT Access Role"], "custom roles only, once after a replace");
    assert_eq!(
        store.get_role_definition("jit access role").await.expect("get").map(|r| r.name),
        Some("JIT Access Role".into())
    );
    let scope = format!("/subscriptions/{SUB}/resourceGroups/rg1");
    let a = store.create_role_assignment("alice", "JIT Access Role", &scope, audit("ra")).await.expect("assign");
    assert!(matches!(
        store.create_role_assignment("alice", "JIT Access Role", &scope, audit("ra")).await,
        Err(StoreError::Rejected(_))
    ));
    assert!(matches!(
        store.create_role_assignment("nobody", "Reader", &scope, audit("ra")).await,
        Err(StoreError::Rejected(_))
    ));
    assert!(
        matches!(store.delete_role_definition("JIT Access Role", audit("rd")).await, Err(StoreError::Rejected(_))),
        "in use"
    );
    assert_eq!(store.list_role_assignments(Some("alice")).await.expect("list").len(), 1);
    assert_eq!(store.get_role_assignment(&a.id).await.expect("get").map(|x| x.scope), Some(scope.clone()));
    store.delete_role_assignment(&a.id, audit("ra")).await.expect("unassign");
    store.delete_role_definition("JIT Access Role", audit("rd")).await.expect("delete role");
    assert!(store.get_role_definition("JIT Access Role").await.expect("get").is_none());
    assert!(store.list_role_definitions().await.expect("list").is_empty());

    // Deleting a principal ends its tokens and assignments.
    store.create_role_assignment("alice", "Reader", &scope, audit("ra")).await.expect("assign");
    store.delete_principal("alice", audit("dp")).await.expect("delete");
    assert!(store.get_principal("alice").await.expect("get").is_none());
    assert!(store.authenticate("alice-2", now()).await.expect("auth").is_none());
    assert!(store.list_role_assignments(None).await.expect("all").iter().all(|a| a.principal != "alice"));
}

fn sign_in(issuer: &str, subject: &str, display: Option<&str>) -> OidcSignIn {
    OidcSignIn {
        identity: OidcIdentity { issuer: issuer.into(), subject: subject.into() },
        display_name: display.map(String::from),
    }
}

/// OIDC identities are found by (issuer, subject) only, named in a form no local name can take,
/// and start without roles; a display name is only shown.
pub(super) async fn oidc_identities_live_in_their_own_namespace(store: &dyn Store) {
    let (a, b) = ("https://idp-a.example", "https://idp-b.example/realms/x");
    // A display name that is a local principal's name changes nothing.
    let first = store.oidc_principal(sign_in(a, "u-1", Some("owner")), audit("oidc")).await.expect("sign in");
    assert_eq!(first.name, jitgate_core::identity::oidc_name(a, "u-1"));
    assert_ne!(first.name.to_ascii_lowercase(), "owner");
    assert_eq!(first.oidc, Some(OidcIdentity { issuer: a.into(), subject: "u-1".into() }));
    assert_eq!((first.display_name.as_deref(), first.kind.as_str()), (Some("owner"), "User"));
    assert!(store.list_role_assignments(Some(&first.name)).await.expect("list").is_empty(), "no roles");
    let owner = store.get_principal("owner").await.expect("get").expect("the owner is still there");
    assert_eq!((owner.oidc, owner.display_name), (None, None));
    assert_eq!(store.list_role_assignments(Some("owner")).await.expect("list").len(), 1);

    // Same (issuer, subject), another display name: the same principal, display updated.
    let again = store.oidc_principal(sign_in(a, "u-1", Some("Erin")), audit("oidc")).await.expect("again");
    assert_eq!(
        (again.id, again.name.as_str(), again.display_name.as_deref()),
        (first.id, first.name.as_str(), Some("Erin"))
    );
    let same = store.oidc_principal(sign_in(a, "u-1", Some("Erin")), audit("oidc")).await.expect("unchanged");
    assert_eq!(same, again);
    // Same subject at another issuer: another principal.
    let other = store.oidc_principal(sign_in(b, "u-1", Some("Erin")), audit("oidc")).await.expect("other issuer");
    assert_ne!((other.id, &other.name), (first.id, &first.name));
    let listed = store.list_principals().await.expect("list");
    let shown = listed.iter().find(|p| p.id == first.id).expect("listed");
    assert_eq!((shown.display_name.as_deref(), shown.oidc.is_some()), (Some("Erin"), true));
    assert_eq!(shown.label(), format!("{} (Erin)", first.name));

    // Deleting an identity's principal frees its name and ends its roles.
    let taken = store.oidc_principal(sign_in(a, "u-2", None), audit("oidc")).await.expect("u-2");
    store.delete_principal(&taken.name, audit("dp")).await.expect("delete");
    let back = store.oidc_principal(sign_in(a, "u-2", None), audit("oidc")).await.expect("signs in again, afresh");
    assert_ne!(back.id, taken.id, "a deleted identity comes back as a new principal without roles");

    // An OIDC principal gains roles only by assignment, to its own name.
    let scope = format!("/subscriptions/{SUB}");
    store.create_role_assignment(&first.name, "Reader", &scope, audit("ra")).await.expect("assign");
    assert_eq!(store.list_role_assignments(Some(&first.name)).await.expect("list").len(), 1);
    assert!(store.list_role_assignments(Some(&other.name)).await.expect("list").is_empty());
}

/// A token made by a token ends no later than it and is revoked with it, however deep.
pub(super) async fn tokens_never_outlive_what_created_them(store: &dyn Store) {
    store.create_principal("carl", "User", audit("p")).await.expect("carl");
    store.create_principal("dina", "User", audit("p")).await.expect("dina");
    let new = |principal: &str, hash: &str, expires: Option<OffsetDateTime>, origin| NewToken {
        principal: principal.into(),
        token_hash: hash.into(),
        expires,
        origin,
    };
    let end = now() + Duration::hours(1);
    let root =
        store.create_token(new("carl", "carl-root", Some(end), TokenOrigin::Server), audit("t")).await.expect("root");
    // Longer than the parent, or unlimited: refused, nothing stored.
    for expires in [Some(end + Duration::seconds(1)), None] {
        match store.create_token(new("carl", "carl-long", expires, TokenOrigin::Token(root.id)), audit("t")).await {
            Err(StoreError::Rejected(e)) => assert_eq!(e.code, "TokenLifetimeTooLong"),
            other => panic!("{expires:?}: {other:?}"),
        }
    }
    assert!(store.authenticate("carl-long", now()).await.expect("auth").is_none());
    // A child for carl, a grandchild for dina (minted by carl's child), and a sibling tree.
    let child = store.create_token(new("carl", "carl-child", Some(end), TokenOrigin::Token(root.id)), audit("t")).await;
    let child = child.expect("child");
    assert_eq!(child.origin, Some(TokenOrigin::Token(root.id)));
    let grandchild = store
        .create_token(
            new("dina", "dina-grand", Some(end - Duration::minutes(1)), TokenOrigin::Token(child.id)),
            audit("t"),
        )
        .await
        .expect("grandchild");
    let other =
        store.create_token(new("carl", "carl-other", None, TokenOrigin::Server), audit("t")).await.expect("other");
    let unrelated = store
        .create_token(new("dina", "dina-own", Some(end), TokenOrigin::Token(other.id)), audit("t"))
        .await
        .expect("own");
    assert!(store.authenticate("dina-grand", now()).await.expect("auth").is_some());

    // Revoking the root revokes its whole tree in one transaction, and nothing else.
    store.revoke_token(root.id, audit("r")).await.expect("revoke");
    for hash in ["carl-root", "carl-child", "dina-grand"] {
        assert!(store.authenticate(hash, now()).await.expect("auth").is_none(), "{hash} revoked with its ancestor");
    }
    assert!(store.get_token(grandchild.id).await.expect("get").and_then(|t| t.revoked).is_some());
    assert!(store.authenticate("dina-own", now()).await.expect("auth").is_some(), "another tree lives on");
    // A revoked (or expired) token cannot create tokens any more.
    match store.create_token(new("carl", "late", Some(end), TokenOrigin::Token(child.id)), audit("t")).await {
        Err(StoreError::Rejected(e)) => assert_eq!(e.code, "ParentTokenInvalid"),
        other => panic!("{other:?}"),
    }
    let short = store
        .create_token(new("carl", "carl-short", Some(now() - Duration::seconds(1)), TokenOrigin::Server), audit("t"))
        .await
        .expect("an already expired token");
    assert!(matches!(
        store.create_token(new("carl", "late-2", None, TokenOrigin::Token(short.id)), audit("t")).await,
        Err(StoreError::Rejected(_))
    ));

    // Deleting a principal ends the tokens its tokens made for others.
    store.delete_principal("carl", audit("dp")).await.expect("delete carl");
    assert!(store.authenticate("dina-own", now()).await.expect("auth").is_none(), "made by carl's token");
    assert_eq!(store.get_token(unrelated.id).await.expect("get").map(|t| t.revoked.is_some()), Some(true));
    let ids = store.audit_records(0, 1 << 20).await.expect("audit");
    let revocation = ids.iter().rev().find(|r| r.event.operation == "dp").expect("the deletion is audited");
    assert_eq!(revocation.event.properties.get("revokedDescendantTokens").map(String::as_str), Some("1"));
}

/// Principals are referred to by name (webhooks, requests): a principal made later under a
/// deleted one's name inherits neither its tokens, roles nor webhooks.
pub(super) async fn a_deleted_principal_leaves_nothing_to_its_namesake(store: &dyn Store) {
    let first = store.create_principal("wanda", "User", audit("p")).await.expect("wanda");
    let hook = Webhook {
        id: "hook-wanda".into(),
        subscription: None,
        principal: Some("Wanda".into()),
        url: "https://hooks.example/w".into(),
        secret: "0123456789abcdef0123".into(),
        events: vec![],
        created: now(),
    };
    store.create_webhook(hook, audit("wh")).await.expect("webhook");
    let t = NewToken {
        principal: "wanda".into(),
        token_hash: "wanda-1".into(),
        expires: None,
        origin: TokenOrigin::Server,
    };
    store.create_token(t, audit("t")).await.expect("token");
    store.create_role_assignment("wanda", "Reader", "/", audit("ra")).await.expect("assign");
    // Wanda's access is open, and so is someone else's on the same VM.
    register(store, "namesake", "vm1", OsType::Linux).await;
    let r = policy_ref("namesake", "westeurope", "default");
    put(store, &r, one_vm_policy("namesake", "vm1", None)).await.expect("policy");
    let vm = vm_id("namesake", "vm1");
    let mut cmd = initiate_cmd(&r, &vm, "203.0.113.60", 30, None);
    cmd.requestor = "wanda".into();
    let hers = store.initiate(cmd, audit("init")).await.expect("wanda's request").request;
    let other = store.initiate(initiate_cmd(&r, &vm, "203.0.113.61", 30, None), audit("init")).await.expect("other");
    let revision = store.revision().await.expect("revision");
    store.delete_principal("wanda", audit("dp")).await.expect("delete");
    // Her grants end with her, in the same transaction (agents are told: the revision moves);
    // nobody else's do.
    let (_, after) = store.get_request(hers.id).await.expect("get").expect("kept in the history");
    assert!(after.grants.iter().all(|g| g.status == GrantStatus::Revoked), "{after:?}");
    let (_, untouched) = store.get_request(other.request.id).await.expect("get").expect("other");
    assert!(untouched.grants.iter().all(|g| g.status == GrantStatus::Initiated), "{untouched:?}");
    assert!(store.revision().await.expect("revision") > revision);
    let second = store.create_principal("wanda", "User", audit("p")).await.expect("a new wanda");
    assert_ne!(second.id, first.id);
    assert!(store.list_tokens("wanda").await.expect("tokens").is_empty());
    assert!(store.list_role_assignments(Some("wanda")).await.expect("roles").is_empty());
    assert!(store.get_webhook("hook-wanda").await.expect("get").is_none(), "the webhook went with the principal");
}
