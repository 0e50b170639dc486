//! Audit queries, inventory facts, security policies and webhook deliveries.

use super::*;

pub(super) async fn audit_queries_inventory_facts_and_security_policies(store: &dyn Store) {
    // Queries: by caller, operation, status, resource prefix and time, paged by sequence.
    let all = store.query_audit(&AuditFilter::default(), 0, 1 << 20).await.expect("all");
    assert!(all.len() > 20);
    let failed = store
        .query_audit(&AuditFilter { status: Some(AuditStatus::Failed), ..Default::default() }, 0, 1 << 20)
        .await
        .expect("failed");
    assert!(!failed.is_empty() && failed.iter().all(|r| r.event.status == AuditStatus::Failed));
    let by_op = store
        .query_audit(&AuditFilter { operation: Some("INIT".into()), ..Default::default() }, 0, 1 << 20)
        .await
        .expect("op");
    assert!(
        !by_op.is_empty() && by_op.iter().all(|r| r.event.operation == "init"),
        "operation compares case-insensitively"
    );
    let by_res = store
        .query_audit(&AuditFilter { resource_id: Some("/TEST".into()), ..Default::default() }, 0, 1 << 20)
        .await
        .expect("res");
    assert!(!by_res.is_empty() && by_res.iter().all(|r| r.event.resource_id.to_ascii_lowercase().starts_with("/test")));
    let none = store
        .query_audit(&AuditFilter { caller: Some("nobody".into()), ..Default::default() }, 0, 10)
        .await
        .expect("none");
    assert!(none.is_empty());
    let page1 = store.query_audit(&AuditFilter::default(), 0, 5).await.expect("page");
    let page2 = store.query_audit(&AuditFilter::default(), page1[4].seq, 5).await.expect("page");
    assert_eq!(page2[0].seq, page1[4].seq + 1);
    let window = store
        .query_audit(
            &AuditFilter { from: Some(now()), to: Some(now() + Duration::seconds(1)), ..Default::default() },
            0,
            1 << 20,
        )
        .await
        .expect("window");
    assert!(window.iter().all(|r| r.event.time >= now() && r.event.time < now() + Duration::seconds(1)));
    let v = store.verify_audit().await.expect("verify");
    assert!(v.valid && v.records as usize >= all.len(), "{v:?}");

    // Access facts of a VM, against explicit times.
    register(store, "inv", "vm1", OsType::Linux).await;
    let r = policy_ref("inv", "westeurope", "default");
    put(store, &r, one_vm_policy("inv", "vm1", None)).await.expect("policy");
    assert_eq!(
        store.policy_of_vm(&vm_id("inv", "vm1")).await.expect("policy of vm").map(|p| p.reference.name),
        Some("default".into())
    );
    assert!(store.policy_of_vm(&vm_id("inv", "nope")).await.expect("none").is_none());
    let configured = store.configured_vm_keys().await.expect("configured keys");
    assert!(configured.contains(&vm_id("inv", "vm1").key()), "{configured:?}");
    assert!(!configured.contains(&vm_id("inv", "nope").key()));
    let empty = store.vm_access(&vm_id("inv", "vm1"), now() - Duration::days(7)).await.expect("access");
    assert_eq!((empty.approved_since, empty.last_user), (0, None));
    let mut cmd = initiate_cmd(&r, &vm_id("inv", "vm1"), "198.51.100.8", 30, None);
    cmd.requestor = "zoe".into();
    store.initiate(cmd, audit("init")).await.expect("grant");
    let open = store.open_requests(Some("zoe"), 10).await.expect("open requests");
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0].0, r.id());
    assert!(store.open_requests(Some("nobody"), 10).await.expect("none").is_empty());
    assert!(!store.open_requests(None, 10).await.expect("all").is_empty());
    let access = store.vm_access(&vm_id("inv", "vm1"), now() - Duration::days(7)).await.expect("access");
    assert_eq!(access.approved_since, 1);
    assert_eq!(access.last_user.as_deref(), Some("zoe"));
    assert_eq!(access.last_access, Some(now()));
    assert_eq!(
        store.vm_access(&vm_id("inv", "vm1"), now() + Duration::seconds(1)).await.expect("later").approved_since,
        0,
        "outside the window"
    );

    // A security policy that switches JIT off refuses enabling it below.
    let sp = store
        .put_security_policy(&format!("/subscriptions/{SUB}/resourceGroups/locked"), false, audit("sp"))
        .await
        .expect("sp");
    assert!(!sp.jit_enabled);
    register(store, "locked", "vm1", OsType::Linux).await;
    match put(store, &policy_ref("locked", "westeurope", "default"), one_vm_policy("locked", "vm1", None)).await {
        Err(StoreError::Rejected(i)) => assert_eq!(i.code, "JitDisabledBySecurityPolicy"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    store
        .put_security_policy(&format!("/subscriptions/{SUB}/resourceGroups/locked"), true, audit("sp"))
        .await
        .expect("sp");
    put(store, &policy_ref("locked", "westeurope", "default"), one_vm_policy("locked", "vm1", None))
        .await
        .expect("allowed again");
    assert_eq!(store.list_security_policies().await.expect("list").len(), 1);

    // Archiving: the oldest records leave the live log; the chain continues from their last hash.
    let old = store.audit_before(now() + Duration::days(3650), 10).await.expect("old");
    assert_eq!(old.len(), 10);
    let last = old.last().expect("last");
    assert!(
        store.seal_archive(last.seq, [7u8; 32], "bad.jsonl", audit("arch")).await.is_err(),
        "a wrong last hash archives nothing"
    );
    let removed = store.seal_archive(last.seq, last.hash, "audit-1.jsonl", audit("arch")).await.expect("seal");
    assert_eq!(removed, 10);
    let v = store.verify_audit().await.expect("verify");
    assert!(v.valid, "{v:?}");
    assert_eq!(v.archived_through, Some(last.seq));
    assert_eq!(store.audit_records(0, 1).await.expect("first")[0].seq, last.seq + 1);
}

pub(super) fn webhook(id: &str, subscription: Option<&str>, principal: Option<&str>) -> Webhook {
    Webhook {
        id: id.into(),
        subscription: subscription.map(String::from),
        principal: principal.map(String::from),
        url: format!("https://hooks.example.com/{id}"),
        secret: format!("secret-of-{id}-0123456789"),
        events: vec![],
        created: now(),
    }
}

/// Secrets come back as given; a claimed delivery is not claimed again until its lease ends;
/// and a delivery id is never reused after a webhook's deliveries are deleted, so one webhook's
/// history can never stand for another's (issue 9, finding 15).
pub(super) async fn webhook_deliveries_are_isolated_and_claimed_once(store: &dyn Store) {
    register(store, "hooks", "vm1", OsType::Linux).await;
    let r = policy_ref("hooks", "westeurope", "default");
    put(store, &r, one_vm_policy("hooks", "vm1", None)).await.expect("policy");
    let vm = vm_id("hooks", "vm1");
    let admin = store.create_webhook(webhook("admin", Some(SUB), None), audit("hook")).await.expect("admin hook");
    assert_eq!(admin.secret, "secret-of-admin-0123456789");
    store.create_webhook(webhook("own", None, Some("tester")), audit("hook")).await.expect("own hook");
    let got = store.get_webhook("own").await.expect("get").expect("found");
    assert_eq!(got.secret, "secret-of-own-0123456789", "the secret reads back as it was given");
    assert!(store.list_webhooks().await.expect("list").iter().any(|h| h.id == "admin" && h.secret == admin.secret));

    store.initiate(initiate_cmd(&r, &vm, "203.0.113.40", 30, None), audit("init")).await.expect("first request");
    // requested + opened, for each of the two webhooks.
    let lease = now() + Duration::seconds(60);
    let claimed = store.claim_deliveries(now(), lease, 100).await.expect("claim");
    assert_eq!(claimed.len(), 4, "{claimed:?}");
    assert!(claimed.iter().all(|d| d.attempts == 0 && !d.secret.is_empty()));
    assert!(store.claim_deliveries(now(), lease, 100).await.expect("claim").is_empty(), "leased: not again");
    assert_eq!(store.next_delivery().await.expect("next"), Some(lease));
    let own: Vec<i64> = claimed.iter().filter(|d| d.webhook_id == "own").map(|d| d.id).collect();
    for d in claimed.iter().filter(|d| d.webhook_id == "admin") {
        store.delivery_attempted(d.id, true, None, None, now()).await.expect("delivered");
    }
    // The lease runs out (a worker died mid-attempt): the requester's deliveries are due again.
    let again = store.claim_deliveries(lease, lease + Duration::seconds(60), 100).await.expect("claim");
    assert_eq!(again.iter().map(|d| d.id).collect::<Vec<_>>(), own);
    for d in &again {
        let next = Some(lease + Duration::seconds(1));
        store.delivery_attempted(d.id, false, Some("ConnectionFailed: x".into()), next, lease).await.expect("failed");
    }
    let highest = own.iter().copied().max().unwrap_or(0);
    store.delete_webhook("own", audit("unhook")).await.expect("delete");

    // The second request: only the administrator's webhook hears of it, under new ids.
    store.initiate(initiate_cmd(&r, &vm, "203.0.113.41", 30, None), audit("init")).await.expect("second request");
    let later = lease + Duration::seconds(120);
    let second = store.claim_deliveries(later, later + Duration::seconds(60), 100).await.expect("claim");
    assert_eq!(second.len(), 2, "{second:?}");
    assert!(second.iter().all(|d| d.webhook_id == "admin" && d.attempts == 0));
    assert!(second.iter().all(|d| d.id > highest), "ids are never reused: {second:?} after {highest}");
    for d in &second {
        store.delivery_attempted(d.id, true, None, None, later).await.expect("delivered");
    }
    let listed = store.list_deliveries("admin", 10).await.expect("list");
    assert_eq!(listed.len(), 4);
    assert!(listed.iter().all(|d| d.state == "Delivered"), "{listed:?}");
    store.delete_webhook("admin", audit("unhook")).await.expect("delete");
}
