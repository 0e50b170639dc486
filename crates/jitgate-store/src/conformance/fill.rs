//! A store with every kind of record in it, for tests that copy whole stores.

use super::*;

/// Runs [`run_all`] on `store` (which must be empty), then adds what the suite removes again
/// at its end — a custom role, a webhook and its deliveries — so every table holds at least one
/// row.
pub async fn fill_every_kind(store: &dyn Store) {
    run_all(store).await;
    let role = jitgate_core::rbac::least_privileged_role("Fill Role", &format!("/subscriptions/{SUB}"), "r-fill");
    store.put_role_definition(role, audit("rd")).await.expect("role");
    register(store, "fill", "vm1", OsType::Linux).await;
    let r = policy_ref("fill", "westeurope", "default");
    put(store, &r, one_vm_policy("fill", "vm1", None)).await.expect("policy");
    store.create_webhook(webhook("fill", Some(SUB), None), audit("hook")).await.expect("webhook");
    store
        .initiate(initiate_cmd(&r, &vm_id("fill", "vm1"), "203.0.113.77", 30, None), audit("init"))
        .await
        .expect("initiate");
    let deliveries = store.list_deliveries("fill", 10).await.expect("deliveries");
    assert!(!deliveries.is_empty(), "the initiate queued deliveries for the webhook");
}
