//! The shared store conformance suite on PostgreSQL, plus what a database shared by several
//! replicas must show: migrations that run once when two replicas open together, a newer schema
//! refused, and concurrent changes from two store handles (two pools: two replicas) that are
//! serialised — one audit chain, one winner of a race, no lost update.
//!
//! Every test makes its own database on the PostgreSQL at 127.0.0.1:5432 and drops it at the
//! end; where none answers, the test is skipped (and fails under `CI=true`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may panic on a failed expectation.

use std::sync::Arc;

use time::{Duration, OffsetDateTime};

use jitgate_core::audit::AuditStatus;
use jitgate_core::initiate::{GrantStatus, InitiateDraft, InitiatePortDraft, InitiateVmDraft, StatusReason};
use jitgate_core::policy::{validate, PolicyDraft, PortDraft, VmDraft};
use jitgate_core::{OsType, PolicyRef, VmId};
use jitgate_store::conformance::{event, SUB};
use jitgate_store::prelude::*;
use jitgate_store::secrets::Keyring;
use jitgate_store::{InitiateCommand, StoreError, VmSpec};
use jitgate_store_postgres::testdb::TestDatabase;
use jitgate_store_postgres::PgStore;

/// One key for every open in these tests: a second handle must open the secrets the first sealed.
fn keys() -> Keyring {
    static KEYS: std::sync::OnceLock<Keyring> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| Keyring::generate().expect("random")).clone()
}

/// A fresh database, or `None` (the test was skipped) when no PostgreSQL answers.
async fn database(test: &str) -> Option<TestDatabase> {
    match TestDatabase::create().await {
        Ok(db) => Some(db),
        Err(why) => {
            jitgate_netns::skip(test, &why);
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_passes_the_conformance_suite() {
    let Some(db) = database("postgres_passes_the_conformance_suite").await else { return };
    let store = PgStore::open(db.url(), keys()).await.expect("open");
    jitgate_store::conformance::run_all(&store).await;
    let v = store.verify_audit().await.expect("verify");
    assert!(v.valid, "{v:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_and_the_audit_chain_survive_a_reopen_and_a_second_replica_continues_the_chain() {
    let Some(db) = database("data_and_the_audit_chain_survive_a_reopen").await else { return };
    let count = {
        let store = PgStore::open(db.url(), keys()).await.expect("open");
        jitgate_store::conformance::run_all(&store).await;
        store.audit_records(0, 1 << 20).await.expect("audit").len()
    };
    let first = PgStore::open(db.url(), keys()).await.expect("reopen");
    let second = PgStore::open(db.url(), keys()).await.expect("a second replica");
    assert!(first.authenticate("hash-1", OffsetDateTime::now_utc()).await.expect("auth").is_some());
    first.record(event("after-reopen")).await.expect("record");
    second.record(event("from-the-other-replica")).await.expect("record");
    assert_eq!(first.audit_records(0, 1 << 20).await.expect("audit").len(), count + 2);
    let v = second.verify_audit().await.expect("verify");
    assert!(v.valid, "the chain continues across the reopen and the replicas: {v:?}");
}

/// Tampering with a row, deleting one, or cutting the log off at its end: `verify_audit` names
/// the first record that does not verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_with_the_log_is_caught() {
    let Some(db) = database("tampering_with_the_log_is_caught").await else { return };
    let store = PgStore::open(db.url(), keys()).await.expect("open");
    store.record_many((0..20).map(|i| event(format!("op-{i}"))).collect()).await.expect("records");
    let (client, conn) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls).await.expect("raw connect");
    tokio::spawn(conn);
    client.execute("UPDATE audit SET caller = 'mallory' WHERE seq = 7", &[]).await.expect("tamper");
    let v = store.verify_audit().await.expect("verify");
    assert_eq!((v.valid, v.first_invalid), (false, Some(7)));
    client.execute("UPDATE audit SET caller = 't' WHERE seq = 7", &[]).await.expect("restore");
    assert!(store.verify_audit().await.expect("verify").valid);
    client.execute("DELETE FROM audit WHERE seq = 9", &[]).await.expect("delete");
    assert_eq!(store.verify_audit().await.expect("verify").first_invalid, Some(9));
    client.execute("DELETE FROM audit WHERE seq >= 9", &[]).await.expect("cut off");
    let v = store.verify_audit().await.expect("verify");
    assert_eq!((v.valid, v.first_invalid), (false, Some(9)), "a log cut off at its end: {v:?}");
}

/// Two replicas starting at once on an empty database: one migrates, the other waits for the
/// advisory lock and finds nothing to do. A database newer than the build is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_opening_at_once_migrate_once_and_a_newer_schema_is_refused() {
    let Some(db) = database("two_replicas_opening_at_once_migrate_once").await else { return };
    let (a, b) = tokio::join!(PgStore::open(db.url(), keys()), PgStore::open(db.url(), keys()));
    let (a, b) = (a.expect("first"), b.expect("second"));
    let mut reports = [a.migration_report(), b.migration_report()];
    reports.sort_by_key(|r| r.from);
    let current = jitgate_store_postgres::SCHEMA_VERSION;
    assert_eq!(reports[0].from, 0, "one of them migrated: {reports:?}");
    assert_eq!(reports[1].from, current, "the other found the schema current: {reports:?}");
    assert!(reports.iter().all(|r| r.to == current));
    drop((a, b));
    let (client, conn) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls).await.expect("raw connect");
    tokio::spawn(conn);
    let rows = client.query("SELECT version FROM schema_version ORDER BY version", &[]).await.expect("versions");
    assert_eq!(rows.len() as i64, current, "each version recorded once");
    client
        .execute("INSERT INTO schema_version (version, name, applied) VALUES (99, 'future', 0)", &[])
        .await
        .expect("future");
    let err = PgStore::open(db.url(), keys()).await.err().expect("a newer database is refused");
    assert!(err.to_string().contains("newer than this jitgate"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_secrets_are_sealed_and_a_wrong_key_is_named() {
    let Some(db) = database("webhook_secrets_are_sealed").await else { return };
    let first = Keyring::generate().expect("key");
    let store = PgStore::open(db.url(), first.clone()).await.expect("open");
    let hook = jitgate_store::Webhook {
        id: "w-secret".into(),
        subscription: Some(SUB.into()),
        principal: None,
        url: "https://hooks.example.com/x".into(),
        secret: "this-secret-must-not-be-stored-in-clear".into(),
        events: vec![],
        created: OffsetDateTime::now_utc(),
    };
    store.create_webhook(hook, event("hook")).await.expect("create");
    drop(store);
    let (client, conn) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls).await.expect("raw connect");
    tokio::spawn(conn);
    let stored: String = client.query_one("SELECT secret FROM webhooks", &[]).await.expect("row").get(0);
    assert!(!stored.contains("this-secret"), "sealed before it is written");
    let wrong = Keyring::generate().expect("key");
    let err = PgStore::open(db.url(), wrong.clone()).await.err().expect("the wrong key is refused at open");
    let text = err.to_string();
    assert!(text.contains(first.current().id()) && text.contains(wrong.current().id()), "names both keys: {text}");
    let both = Keyring::new(wrong.current().clone(), vec![first.current().clone()]);
    assert_eq!(PgStore::open(db.url(), both).await.expect("old + new").seal_report().resealed, 1);
    let store = PgStore::open(db.url(), wrong).await.expect("the new key alone");
    let back = store.get_webhook("w-secret").await.expect("get").expect("found");
    assert_eq!(back.secret, "this-secret-must-not-be-stored-in-clear");
    assert!(PgStore::open(db.url(), first).await.is_err(), "the retired key opens nothing any more");
}

// ---- Races between two replicas (two store handles, two pools, one database) ----

fn vm(name: &str) -> VmId {
    VmId::parse(&format!("/subscriptions/{SUB}/resourceGroups/race/providers/Microsoft.Compute/virtualMachines/{name}"))
        .expect("vm id")
}

fn policy_ref(name: &str) -> PolicyRef {
    PolicyRef::new(SUB, "race", "westeurope", name).expect("policy ref")
}

fn ssh(require_approval: bool) -> PortDraft {
    PortDraft {
        number: Some(22),
        protocol: Some("TCP".into()),
        prefix: Some("*".into()),
        max_duration: Some("PT3H".into()),
        require_approval: Some(require_approval),
        ..Default::default()
    }
}

/// Two replicas on one fresh database, with VM `vm1` under policy `p` (port 22).
async fn two_replicas(db: &TestDatabase, require_approval: bool) -> (Arc<PgStore>, Arc<PgStore>) {
    let a = Arc::new(PgStore::open(db.url(), keys()).await.expect("replica a"));
    let b = Arc::new(PgStore::open(db.url(), keys()).await.expect("replica b"));
    vm_under_policy(&a, "vm1", "p", require_approval).await;
    (a, b)
}

/// Registers VM `name` and puts it under policy `policy` (port 22).
async fn vm_under_policy(store: &PgStore, name: &str, policy: &str, require_approval: bool) {
    let spec = VmSpec {
        id: vm(name),
        os_type: OsType::Linux,
        location: "westeurope".into(),
        address: None,
        gateway: None,
        classic: false,
    };
    store.put_vm(spec, event("vm")).await.expect("vm");
    let draft = PolicyDraft {
        kind: None,
        vms: vec![VmDraft {
            id: vm(name).as_str().into(),
            ports: Some(vec![ssh(require_approval)]),
            public_ip_address: None,
        }],
    };
    store.put_policy(validate(policy_ref(policy), draft).expect("valid"), event("put")).await.expect("policy");
}

fn initiate(source: &str, requestor: &str) -> InitiateCommand {
    let now = OffsetDateTime::now_utc();
    InitiateCommand {
        policy: policy_ref("p"),
        draft: InitiateDraft {
            vms: vec![InitiateVmDraft {
                id: vm("vm1").as_str().into(),
                ports: vec![InitiatePortDraft {
                    number: Some(22),
                    end_time: Some(now + Duration::minutes(30)),
                    duration: None,
                    prefix: Some(source.into()),
                    prefixes: None,
                }],
            }],
            justification: Some("race".into()),
            start_time: None,
        },
        caller: None,
        requestor: requestor.into(),
        client_request_id: None,
        now,
    }
}

/// Many initiates for one port and source from two replicas at once: each newer grant
/// supersedes the older ones, so exactly one stays live — none is lost, none left live twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_initiates_on_one_policy_from_two_replicas_leave_one_live_grant() {
    let Some(db) = database("concurrent_initiates_on_one_policy").await else { return };
    let (a, b) = two_replicas(&db, false).await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move { s.initiate(initiate("203.0.113.7", "alice"), event("init")).await }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.expect("join") {
            Ok(_) => ok += 1,
            Err(StoreError::Conflict(_)) => {}
            Err(e) => panic!("an initiate failed: {e}"),
        }
    }
    eprintln!("40 concurrent initiates on one policy: {ok} granted, {} conflicts", 40 - ok);
    assert!(ok >= 20, "most initiates go through (serialised, not refused): {ok}");
    let record = b.get_policy(&policy_ref("p")).await.expect("get").expect("found");
    let grants: Vec<_> = record.requests.iter().flat_map(|r| r.grants.iter()).collect();
    assert_eq!(grants.len(), ok, "every acknowledged initiate is recorded");
    let live = grants.iter().filter(|g| g.status == GrantStatus::Initiated).count();
    assert_eq!(live, 1, "one live grant for the port and source: {grants:?}");
    let superseded = grants.iter().filter(|g| g.status_reason == StatusReason::NewerRequestInitiated).count();
    assert_eq!(superseded, ok - 1);
    assert!(a.verify_audit().await.expect("verify").valid);
}

/// Two approvers on two replicas approve the same pending request at once: exactly one wins;
/// the other is refused as the domain refuses a second decision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approving_one_request_on_two_replicas_at_once_has_one_winner() {
    let Some(db) = database("approving_one_request_on_two_replicas").await else { return };
    let (a, b) = two_replicas(&db, true).await;
    for round in 0..5 {
        let pending = a.initiate(initiate("198.51.100.9", "alice"), event("init")).await.expect("initiate");
        let id = pending.request.id;
        assert_eq!(pending.request.grants[0].status, GrantStatus::Pending, "round {round}");
        let now = OffsetDateTime::now_utc();
        let (x, y) = tokio::join!(
            a.decide_request(id, true, "bob", None, now, event("approve")),
            b.decide_request(id, true, "carol", None, now, event("approve")),
        );
        let winners = [&x, &y].iter().filter(|r| r.is_ok()).count();
        assert_eq!(winners, 1, "round {round}: exactly one approval wins: {x:?} {y:?}");
        let loser = if x.is_ok() { y } else { x };
        assert!(matches!(loser, Err(StoreError::Rejected(_)) | Err(StoreError::Conflict(_))), "{loser:?}");
        let (_, request) = b.get_request(id).await.expect("get").expect("found");
        assert_eq!(request.grants[0].status, GrantStatus::Initiated);
    }
    let approvals = a
        .query_audit(&jitgate_store::AuditFilter { operation: Some("approve".into()), ..Default::default() }, 0, 100)
        .await
        .expect("query");
    assert_eq!(approvals.iter().filter(|r| r.event.status == AuditStatus::Succeeded).count(), 5);
    assert!(b.verify_audit().await.expect("verify").valid);
}

/// Extensions of one request, initiates and edits of its policy from two replicas at once: each
/// runs against what the one before it left. An extension to an end no later than the current
/// one is refused as the domain refuses it; the request ends at the latest extension that was
/// acknowledged (none is lost), and every grant of a distinct source stays live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_and_extensions_race_with_initiates_without_lost_updates() {
    let Some(db) = database("edits_and_extensions_race_with_initiates").await else { return };
    let (a, b) = two_replicas(&db, false).await;
    let first = a.initiate(initiate("192.0.2.1", "alice"), event("init")).await.expect("initiate");
    let id = first.request.id;
    let mut tasks = Vec::new();
    for i in 0..10 {
        let (a, b) = (a.clone(), b.clone());
        tasks.push(tokio::spawn(async move {
            let now = OffsetDateTime::now_utc();
            let target = now + Duration::minutes(40 + i);
            let extend = a.extend_request(id, target, now, event("extend"));
            let source = format!("192.0.2.{}", 10 + i);
            let init = b.initiate(initiate(&source, "bob"), event("init"));
            let draft = PolicyDraft {
                kind: None,
                vms: vec![VmDraft {
                    id: vm("vm1").as_str().into(),
                    ports: Some(vec![ssh(false)]),
                    public_ip_address: None,
                }],
            };
            let edit = b.put_policy(validate(policy_ref("p"), draft).expect("valid"), event("put"));
            let (x, y, z) = tokio::join!(extend, init, edit);
            let extended = match x {
                Ok(r) => Some(r.grants[0].end_time),
                Err(StoreError::Rejected(e)) if e.message.contains("not later than") => None,
                Err(StoreError::Conflict(_)) => None,
                Err(e) => panic!("extend: {e:?}"),
            };
            for r in [y.map(|_| ()), z.map(|_| ())] {
                assert!(matches!(r, Ok(()) | Err(StoreError::Conflict(_))), "{r:?}");
            }
            extended
        }));
    }
    let mut latest = None;
    for t in tasks {
        latest = latest.max(t.await.expect("join"));
    }
    let latest = latest.expect("at least one extension went through");
    let (_, request) = b.get_request(id).await.expect("get").expect("found");
    assert_eq!(request.grants[0].end_time, latest, "the latest acknowledged extension holds");
    let record = a.get_policy(&policy_ref("p")).await.expect("get").expect("found");
    let live =
        record.requests.iter().flat_map(|r| r.grants.iter()).filter(|g| g.status == GrantStatus::Initiated).count();
    assert_eq!(live, record.requests.len(), "distinct sources: every grant stays live");
    assert!(a.verify_audit().await.expect("verify").valid);
}

/// 10,000 audit records written at once from two replicas: one chain, every record in it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_concurrent_audit_writes_from_two_replicas_form_one_chain() {
    let Some(db) = database("thousands_of_concurrent_audit_writes").await else { return };
    let a = Arc::new(PgStore::open(db.url(), keys()).await.expect("a"));
    let b = Arc::new(PgStore::open(db.url(), keys()).await.expect("b"));
    const N: usize = 10_000;
    let started = std::time::Instant::now();
    let mut tasks = Vec::with_capacity(N);
    for i in 0..N {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move { s.record(event(format!("op-{i}"))).await }));
    }
    for t in tasks {
        t.await.expect("join").expect("record");
    }
    eprintln!("{N} concurrent audit writes from two replicas: {:?}", started.elapsed());
    let records = a.audit_records(0, N * 2).await.expect("audit");
    assert_eq!(records.len(), N);
    let mut ops: Vec<&str> = records.iter().map(|r| r.event.operation.as_str()).collect();
    ops.sort_unstable();
    ops.dedup();
    assert_eq!(ops.len(), N, "every record once");
    let v = b.verify_audit().await.expect("verify");
    assert!(v.valid && v.records == N as u64, "{v:?}");
}

/// Two delivery workers on two replicas claim at once: every due delivery goes to one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_claimed_by_one_replica_each() {
    let Some(db) = database("deliveries_are_claimed_by_one_replica_each").await else { return };
    let (a, b) = two_replicas(&db, false).await;
    let hook = jitgate_store::Webhook {
        id: "w1".into(),
        subscription: Some(SUB.into()),
        principal: None,
        url: "https://hooks.example.com/x".into(),
        secret: "0123456789abcdef0123456789abcdef".into(),
        events: vec![],
        created: OffsetDateTime::now_utc(),
    };
    a.create_webhook(hook, event("hook")).await.expect("hook");
    for i in 0..10 {
        a.initiate(initiate(&format!("203.0.113.{i}"), "alice"), event("init")).await.expect("initiate");
    }
    let queued = a.list_deliveries("w1", 1000).await.expect("list").len();
    assert!(queued >= 20, "requested + opened per initiate: {queued}");
    let now = OffsetDateTime::now_utc() + Duration::seconds(1);
    let lease = now + Duration::seconds(60);
    let mut ids = Vec::new();
    loop {
        let (x, y) = tokio::join!(a.claim_deliveries(now, lease, 3), b.claim_deliveries(now, lease, 3));
        let (x, y) = (x.expect("claim a"), y.expect("claim b"));
        if x.is_empty() && y.is_empty() {
            break;
        }
        ids.extend(x.iter().chain(y.iter()).map(|d| d.id));
    }
    let total = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!((ids.len(), total), (queued, queued), "each delivery claimed exactly once");
}

/// A change that collides with another replica's (here: the same role assignment, inserted by a
/// transaction that commits while the store's waits on it) ends in `Conflict`, and leaves
/// nothing behind — not even an audit record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collision_with_a_concurrent_change_is_a_clean_conflict() {
    let Some(db) = database("a_collision_with_a_concurrent_change_is_a_clean_conflict").await else { return };
    let store = Arc::new(PgStore::open(db.url(), keys()).await.expect("open"));
    let erin = store.create_principal("erin", "User", event("principal")).await.expect("principal");
    let before = store.audit_records(0, 1000).await.expect("audit").len();
    let (mut client, conn) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls).await.expect("raw connect");
    tokio::spawn(conn);
    let other = client.transaction().await.expect("begin");
    other
        .execute(
            "INSERT INTO role_assignments (id, principal_id, role_key, role_name, scope, created, created_by) \
             VALUES ('other', $1, 'reader', 'Reader', '/', 0, 'other replica')",
            &[&erin.id],
        )
        .await
        .expect("the other replica's insert");
    let s = store.clone();
    let call = tokio::spawn(async move { s.create_role_assignment("erin", "Reader", "/", event("assign")).await });
    // Wait until the store's insert waits on the other transaction's row.
    let (watcher, conn) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls).await.expect("raw connect");
    tokio::spawn(conn);
    let mut waiting = false;
    for _ in 0..500 {
        let n: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .expect("activity")
            .get(0);
        if n > 0 {
            waiting = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(waiting, "the store's insert waits for the other transaction");
    other.commit().await.expect("the other replica commits");
    match call.await.expect("join") {
        Err(e @ StoreError::Conflict(_)) => assert!(e.to_string().contains("try again"), "{e}"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(store.audit_records(0, 1000).await.expect("audit").len(), before, "nothing was written");
    let held = store.list_role_assignments(Some("erin")).await.expect("list");
    assert_eq!(held.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(), ["other"]);
}

/// Two replicas sweep expired grants at the same moment: each grant expires once, with one
/// audit record, whichever replica took it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_sweeping_at_once_expire_each_grant_once() {
    let Some(db) = database("two_replicas_sweeping_at_once").await else { return };
    let (a, b) = two_replicas(&db, false).await;
    const GRANTS: usize = 30;
    for i in 0..GRANTS {
        a.initiate(initiate(&format!("203.0.113.{i}"), "alice"), event("init")).await.expect("initiate");
    }
    let later = OffsetDateTime::now_utc() + Duration::hours(1);
    let (x, y) = tokio::join!(a.expire_due(later), b.expire_due(later));
    let (x, y) = (x.expect("sweep a"), y.expect("sweep b"));
    // A grant one replica held was skipped by the other; a last sweep finds nothing left.
    let rest = a.expire_due(later).await.expect("sweep again");
    assert_eq!(x.expired + y.expired + rest.expired, GRANTS, "{x:?} {y:?} {rest:?}");
    let expiries = a
        .query_audit(
            &jitgate_store::AuditFilter {
                operation: Some(jitgate_core::audit::ops::GRANT_EXPIRE.into()),
                ..Default::default()
            },
            0,
            1000,
        )
        .await
        .expect("query");
    assert_eq!(expiries.len(), GRANTS, "one expiry record per grant");
    assert_eq!(a.next_expiry().await.expect("next"), None);
}

/// A change committed through the store is published on `changes()` with the new revision (the
/// point where wake-ups from other replicas will join).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_changes_publish_the_new_revision() {
    let Some(db) = database("committed_changes_publish_the_new_revision").await else { return };
    let (a, _b) = two_replicas(&db, false).await;
    let mut changes = a.changes();
    let before = *changes.borrow_and_update();
    a.initiate(initiate("198.51.100.20", "alice"), event("init")).await.expect("initiate");
    assert!(changes.has_changed().expect("open"), "the initiate moved the revision");
    let after = *changes.borrow_and_update();
    assert!(after > before);
    assert_eq!(a.revision().await.expect("revision"), after);
    a.record(event("no-revision")).await.expect("record");
    assert!(!changes.has_changed().expect("open"), "an audit record alone moves nothing");
}

/// The next signal `rx` hears, failing the test when none comes.
async fn next_signal(rx: &mut tokio::sync::mpsc::Receiver<jitgate_store::Signal>) -> jitgate_store::Signal {
    tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
        .await
        .expect("a signal within the wait")
        .expect("the listener is running")
}

/// What one replica commits reaches another replica's listener as a signal: the new revision,
/// an agent's report, queued deliveries, a role change. A replica's own changes wake nothing
/// twice, and a rolled-back change sends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replicas_changes_reach_the_other_as_signals() {
    use jitgate_store::Signal;
    let Some(db) = database("one_replicas_changes_reach_the_other_as_signals").await else { return };
    let (a, b) = two_replicas(&db, false).await;
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let listener = tokio::spawn({
        let b = b.clone();
        async move { b.listen(tx).await }
    });
    assert_eq!(next_signal(&mut rx).await, Signal::Resync, "listening begins with a look at everything");

    a.initiate(initiate("198.51.100.30", "alice"), event("init")).await.expect("initiate");
    let revision = a.revision().await.expect("revision");
    assert_eq!(next_signal(&mut rx).await, Signal::Changed(revision));
    assert_eq!(*b.changes().borrow(), revision, "the other replica knows the new revision");

    // B's own change: its revision moves, and its listener stays quiet about it.
    b.initiate(initiate("198.51.100.31", "bob"), event("init")).await.expect("initiate on b");
    // A role assignment change on A: cached authorizations on B must go.
    let principal = a.create_principal("carol", "User", event("principal")).await.expect("principal");
    a.create_role_assignment(&principal.name, "Reader", &format!("/subscriptions/{SUB}"), event("assign"))
        .await
        .expect("assign");
    assert_eq!(next_signal(&mut rx).await, Signal::Roles, "B's own initiate was not echoed: {revision}");

    // A failed transaction sends nothing: the next signal is the next committed change.
    let (client, conn) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls).await.expect("raw connect");
    tokio::spawn(conn);
    client
        .batch_execute("BEGIN; UPDATE meta SET value = value + 1000 WHERE key = 'revision'; ROLLBACK;")
        .await
        .expect("rolled back");
    a.initiate(initiate("198.51.100.32", "alice"), event("init")).await.expect("initiate");
    let revision = a.revision().await.expect("revision");
    assert_eq!(next_signal(&mut rx).await, Signal::Changed(revision), "nothing of the rolled-back change");

    drop(rx);
    tokio::time::timeout(std::time::Duration::from_secs(10), listener)
        .await
        .expect("the listener ends once nobody hears it")
        .expect("joined");
}

/// Changes committed together by the writer stay each other's strangers: many at once on one
/// replica, some refused (a name taken) — each refusal keeps only its own `Failed` record, every
/// other change is committed, and the chain verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_change_in_a_batch_leaves_the_others_committed() {
    let Some(db) = database("a_refused_change_in_a_batch_leaves_the_others_committed").await else { return };
    let store = Arc::new(PgStore::open(db.url(), keys()).await.expect("open"));
    let before = store.audit_records(0, 1 << 20).await.expect("audit").len();
    let mut tasks = Vec::new();
    for i in 0..60 {
        let store = store.clone();
        let name = if i % 2 == 0 { format!("p{i}") } else { "taken".to_string() };
        tasks.push(tokio::spawn(async move { store.create_principal(&name, "User", event("principal")).await }));
    }
    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        match t.await.expect("joined") {
            Ok(_) => ok += 1,
            Err(StoreError::Rejected(_)) => refused += 1,
            Err(e) => panic!("a clean answer for every change, got {e}"),
        }
    }
    assert_eq!((ok, refused), (31, 29), "30 new names and one 'taken' committed; 29 refused");
    let names: Vec<String> = store.list_principals().await.expect("list").into_iter().map(|p| p.name).collect();
    for i in (0..60).step_by(2) {
        assert!(names.contains(&format!("p{i}")), "p{i} committed");
    }
    assert_eq!(names.iter().filter(|n| *n == "taken").count(), 1);
    let records = store.audit_records(0, 1 << 20).await.expect("audit");
    assert_eq!(records.len() - before, 60, "one record per change: 31 succeeded, 29 failed");
    let failed = records.iter().skip(before).filter(|r| r.event.status == AuditStatus::Failed).count();
    assert_eq!(failed, 29);
    assert!(store.verify_audit().await.expect("verify").valid);
}

/// An initiate that fails inside a batch with a database error (a trigger refuses its request
/// row, sent in one round trip with the superseding of its neighbour's grant) is undone alone:
/// its neighbours, on both replicas, are committed, the grant it superseded is live again, and
/// it leaves no audit record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_initiate_in_a_batch_is_undone_alone() {
    let Some(db) = database("a_failed_initiate_in_a_batch_is_undone_alone").await else { return };
    let (a, b) = two_replicas(&db, false).await;
    let (raw, conn) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls).await.expect("raw connect");
    tokio::spawn(conn);
    raw.batch_execute(
        "CREATE FUNCTION refuse_marked() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
         IF NEW.justification = 'refuse me' THEN RAISE EXCEPTION 'refused by the test'; END IF; RETURN NEW; END $$; \
         CREATE TRIGGER refuse_marked BEFORE INSERT ON requests FOR EACH ROW EXECUTE FUNCTION refuse_marked()",
    )
    .await
    .expect("trigger");
    let before = a.audit_records(0, 1 << 20).await.expect("audit").len();
    let mut tasks = Vec::new();
    for i in 0..60 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        let mut cmd = initiate("203.0.113.7", "alice");
        if i % 3 == 1 {
            cmd.draft.justification = Some("refuse me".into());
        }
        tasks.push(tokio::spawn(async move { s.initiate(cmd, event("init")).await }));
    }
    let (mut ok, mut failed) = (0, 0);
    for t in tasks {
        match t.await.expect("join") {
            Ok(_) => ok += 1,
            Err(e @ StoreError::Backend(_)) => {
                assert!(e.to_string().contains("refused by the test"), "{e}");
                failed += 1;
            }
            Err(e) => panic!("an initiate failed otherwise: {e}"),
        }
    }
    assert_eq!((ok, failed), (40, 20));
    let record = b.get_policy(&policy_ref("p")).await.expect("get").expect("found");
    let grants: Vec<_> = record.requests.iter().flat_map(|r| r.grants.iter()).collect();
    assert_eq!(grants.len(), 40, "the failed initiates left no request or grant");
    let live = grants.iter().filter(|g| g.status == GrantStatus::Initiated).count();
    assert_eq!(live, 1, "the newest grant is live, whatever a failed initiate superseded: {grants:?}");
    assert_eq!(grants.last().map(|g| g.status), Some(GrantStatus::Initiated));
    let records = a.audit_records(0, 1 << 20).await.expect("audit");
    assert_eq!(records.len() - before, 40, "one record per committed initiate");
    assert!(a.verify_audit().await.expect("verify").valid);
}

/// Changes spread over several policies, from two replicas at once: each replica's batches hold
/// the locks of many policies, in whatever order the changes arrived; batches take turns, so
/// none deadlocks and every change succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_of_many_policies_from_two_replicas_never_deadlock() {
    let Some(db) = database("batches_of_many_policies_from_two_replicas_never_deadlock").await else { return };
    let (a, b) = two_replicas(&db, false).await;
    let names = ["q1", "q2", "q3", "q4"];
    for name in names {
        vm_under_policy(&a, name, name, false).await;
    }
    let mut tasks = Vec::new();
    for i in 0..200usize {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        // Replica a walks the policies forwards, b backwards.
        let name = if i % 2 == 0 { names[i / 2 % 4] } else { names[3 - i / 2 % 4] };
        let mut cmd = initiate(&format!("198.51.100.{}", i % 250), "alice");
        cmd.policy = policy_ref(name);
        cmd.draft.vms[0].id = vm(name).as_str().into();
        tasks.push(tokio::spawn(async move { store.initiate(cmd, event("init")).await }));
    }
    for t in tasks {
        let outcome = t.await.expect("joined");
        assert!(outcome.is_ok(), "every initiate succeeds: {:?}", outcome.err());
    }
    assert!(a.verify_audit().await.expect("verify").valid);
}
