//! A store with every kind of record in it, for tests that copy whole stores.

use super::*;

/// Runs [`run_all`] on `store` (which must be empty), then [`write_one_of_each`] — which adds
/// what the suite removes again at its end (a custom role, a webhook and its deliveries) — so
/// every table holds at least one row.
pub async fn fill_every_kind(store: &dyn Store) {
    run_all(store).await;
    write_one_of_each(store, "fill").await;
}

/// Writes a row into every table whose ids the store hands out (principals, tokens, policies,
/// requests, grants, deliveries) and a few more, all named after `tag`: on a store filled by an
/// import, it fails unless the id counters were moved past the imported ids.
pub async fn write_one_of_each(store: &dyn Store, tag: &str) {
    let role = jitgate_core::rbac::least_privileged_role(
        &format!("{tag} Role"),
        &format!("/subscriptions/{SUB}"),
        &format!("r-{tag}"),
    );
    store.put_role_definition(role, audit("rd")).await.expect("role");
    store.create_principal(tag, "User", audit("principal")).await.expect("principal");
    let token = NewToken {
        principal: tag.into(),
        token_hash: format!("{tag}-hash"),
        expires: None,
        origin: TokenOrigin::Server,
    };
    store.create_token(token, audit("token")).await.expect("token");
    register(store, tag, "vm1", OsType::Linux).await;
    let r = policy_ref(tag, "westeurope", "default");
    put(store, &r, one_vm_policy(tag, "vm1", None)).await.expect("policy");
    store.create_webhook(webhook(tag, Some(SUB), None), audit("hook")).await.expect("webhook");
    store
        .initiate(initiate_cmd(&r, &vm_id(tag, "vm1"), "203.0.113.77", 30, None), audit("init"))
        .await
        .expect("initiate");
    let deliveries = store.list_deliveries(tag, 10).await.expect("deliveries");
    assert!(!deliveries.is_empty(), "the initiate queued deliveries for the webhook");
}
