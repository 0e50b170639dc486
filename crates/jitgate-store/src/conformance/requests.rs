//! Approvals and extensions: what waits for an approver, who may decide it, and what moves when.

use super::*;

fn approval_port() -> PortDraft {
    PortDraft { require_approval: Some(true), ..ssh_port() }
}

fn rejected_code<T: std::fmt::Debug>(r: Result<T, StoreError>) -> String {
    match r {
        Err(StoreError::Rejected(i)) => i.code.to_string(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A port that needs approval: the grant waits (`Pending`), the requester cannot decide it,
/// another principal approves (the window starts then) or denies; an extension of such a port
/// waits too and is decided the same way; a port without approval extends at once.
pub(super) async fn approvals_and_extensions(store: &dyn Store) {
    register(store, "appr", "vm1", OsType::Linux).await;
    register(store, "appr", "vm2", OsType::Linux).await;
    let r = policy_ref("appr", "westeurope", "approval");
    put(store, &r, one_vm_policy("appr", "vm1", Some(vec![approval_port()]))).await.expect("policy");
    let vm = vm_id("appr", "vm1");
    // The requester's webhook hears of every step (and is removed at the end, with what it holds).
    store.create_webhook(webhook("appr", None, Some("tester")), audit("hook")).await.expect("hook");

    let asked = store.initiate(initiate_cmd(&r, &vm, "203.0.113.7", 60, None), audit("init")).await.expect("asked");
    let id = asked.request.id;
    let g = &asked.request.grants[0];
    assert_eq!((g.status, g.status_reason), (GrantStatus::Pending, StatusReason::ApprovalRequired));
    let (policy_id, got) = store.get_request(id).await.expect("get").expect("found");
    assert!(policy_id.eq_ignore_ascii_case(&r.id()), "{policy_id}");
    assert_eq!(got, asked.request);
    assert!(store.get_request(id + 1_000_000).await.expect("get").is_none());

    // The requester cannot decide their own request; the refusal is audited, nothing changes.
    let before = store.audit_records(0, usize::MAX >> 1).await.expect("audit").len();
    let code = rejected_code(store.decide_request(id, true, "tester", None, now(), audit("decide")).await);
    assert_eq!(code, codes::SELF_APPROVAL);
    let after = store.audit_records(0, usize::MAX >> 1).await.expect("audit");
    assert_eq!(after.len(), before + 1);
    assert_eq!(after[before].event.status, AuditStatus::Failed);
    assert_eq!(store.get_request(id).await.expect("get").expect("found").1, asked.request);

    // Another principal approves: the window starts at the decision.
    let later = now() + Duration::minutes(2);
    let approved =
        store.decide_request(id, true, "approver", Some("ok".into()), later, audit("decide")).await.expect("approve");
    let g = &approved.grants[0];
    assert_eq!((g.status, g.status_reason), (GrantStatus::Initiated, StatusReason::Approved));
    assert_eq!(g.end_time, later + Duration::minutes(60));
    // The approver's reason stays with the request.
    assert_eq!(approved.decision_reason.as_deref(), Some("ok"));
    assert_eq!(store.get_request(id).await.expect("get").expect("found").1.decision_reason.as_deref(), Some("ok"));
    let code = rejected_code(store.decide_request(id, true, "approver", None, later, audit("decide")).await);
    assert_eq!(code, codes::REQUEST_NOT_PENDING, "nothing waits any more");

    // An extension of a port that needs approval waits; nothing moves yet.
    let new_end = later + Duration::minutes(90);
    let waiting = store.extend_request(id, new_end, later, audit("extend")).await.expect("extend");
    assert_eq!(waiting.pending_extension, Some(new_end));
    assert_eq!(waiting.grants[0].end_time, g.end_time);
    // Denied: the extension is dropped, the grants keep their end.
    let why = Some("not during the freeze".to_owned());
    let denied = store.decide_request(id, false, "approver", why.clone(), later, audit("decide")).await.expect("deny");
    assert_eq!((denied.pending_extension, denied.grants[0].end_time), (None, g.end_time));
    assert_eq!(denied.decision_reason, why, "the latest decision's reason");
    assert_eq!(denied.grants[0].status, GrantStatus::Initiated);
    // Asked again and approved: the grants move to the new end.
    store.extend_request(id, new_end, later, audit("extend")).await.expect("extend again");
    let extended = store.decide_request(id, true, "approver", None, later, audit("decide")).await.expect("approve");
    assert_eq!((extended.pending_extension, extended.grants[0].end_time), (None, new_end));

    // Refusals: an end that is not later, more than the port's maximum, an unknown request.
    let code = rejected_code(store.extend_request(id, new_end, later, audit("extend")).await);
    assert_eq!(code, codes::INVALID_INITIATE);
    let code = rejected_code(store.extend_request(id, later + Duration::hours(4), later, audit("extend")).await);
    assert_eq!(code, codes::NOT_SUBSET);
    let missing = id + 1_000_000;
    let code = rejected_code(store.extend_request(missing, new_end, later, audit("extend")).await);
    assert_eq!(code, codes::REQUEST_NOT_FOUND);
    let code = rejected_code(store.decide_request(missing, true, "approver", None, later, audit("decide")).await);
    assert_eq!(code, codes::REQUEST_NOT_FOUND);

    // A denied request: its waiting grant is revoked, and stays so.
    let second = store.initiate(initiate_cmd(&r, &vm, "203.0.113.8", 60, None), audit("init")).await.expect("asked");
    let denied = store
        .decide_request(second.request.id, false, "approver", Some("no".into()), later, audit("decide"))
        .await
        .expect("deny");
    assert_eq!((denied.grants[0].status, denied.grants[0].status_reason), (GrantStatus::Revoked, StatusReason::Denied));
    let code = rejected_code(store.extend_request(second.request.id, new_end, later, audit("extend")).await);
    assert_eq!(code, codes::REQUEST_NOT_ACTIVE);

    // Without approval, an extension takes effect at once.
    let plain = policy_ref("appr", "westeurope", "plain");
    put(store, &plain, one_vm_policy("appr", "vm2", Some(vec![ssh_port()]))).await.expect("policy");
    let open = store
        .initiate(initiate_cmd(&plain, &vm_id("appr", "vm2"), "203.0.113.9", 60, None), audit("init"))
        .await
        .expect("open");
    assert_eq!(open.request.grants[0].status, GrantStatus::Initiated);
    let end = now() + Duration::minutes(150);
    let moved = store.extend_request(open.request.id, end, now(), audit("extend")).await.expect("extend");
    assert_eq!((moved.pending_extension, moved.grants[0].end_time), (None, end));

    // Each step queued its event, in the transaction that made it; refusals queued nothing.
    let mut events: Vec<String> =
        store.list_deliveries("appr", 100).await.expect("deliveries").into_iter().map(|d| d.event).collect();
    events.reverse();
    let expected = [
        "requested",
        "approved",
        "opened", // the approval
        "requested",
        "denied", // the first extension
        "requested",
        "approved", // the second
        "requested",
        "denied", // the denied request
        "requested",
        "opened", // the port without approval
    ];
    assert_eq!(events, expected);
    store.delete_webhook("appr", audit("unhook")).await.expect("delete");
    assert!(store.list_deliveries("appr", 100).await.expect("deliveries").is_empty());
}
