//! The shared store conformance suite, on SQLite, plus what only this backend can show:
//! durability across reopen, group commit under concurrency, and tamper detection in the file.

use std::sync::Arc;

use jitgate_core::audit::{first_invalid, AuditEvent, AuditStatus, GENESIS};
use jitgate_store::Store;
use jitgate_store_sqlite::SqliteStore;

fn event(operation: impl Into<String>) -> AuditEvent {
    AuditEvent {
        time: time::OffsetDateTime::now_utc(),
        operation: operation.into(),
        status: AuditStatus::Succeeded,
        caller: "t".into(),
        caller_ip: None,
        resource_id: "/".into(),
        correlation_id: "c".into(),
        properties: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("jitgate.db")).expect("open");
    jitgate_store::conformance::run_all(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_and_the_audit_chain_survive_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("jitgate.db");
    let count = {
        let store = SqliteStore::open(&path).expect("open");
        jitgate_store::conformance::run_all(&store).await;
        store.audit_records(0, 1 << 20).await.expect("audit").len()
    };
    let store = SqliteStore::open(&path).expect("reopen");
    assert!(store.authenticate("hash-1", time::OffsetDateTime::now_utc()).await.expect("auth").is_some());
    store.record(event("after-reopen")).await.expect("record");
    let records = store.audit_records(0, 1 << 20).await.expect("audit");
    assert_eq!(records.len(), count + 1);
    assert_eq!(first_invalid(GENESIS, records.iter().map(|r| (r.seq, &r.event, r.hash))), None, "chain continues");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_are_all_committed_in_one_chain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SqliteStore::open(&dir.path().join("jitgate.db")).expect("open"));
    let mut tasks = Vec::new();
    for i in 0..200 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move { s.record(event(format!("op-{i}"))).await }));
    }
    for t in tasks {
        t.await.expect("join").expect("record");
    }
    let records = store.audit_records(0, 1000).await.expect("audit");
    assert_eq!(records.len(), 200);
    assert_eq!(first_invalid(GENESIS, records.iter().map(|r| (r.seq, &r.event, r.hash))), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_with_the_file_breaks_the_chain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("jitgate.db");
    {
        let store = SqliteStore::open(&path).expect("open");
        jitgate_store::conformance::run_all(&store).await;
    }
    let conn = rusqlite::Connection::open(&path).expect("raw open");
    conn.execute("UPDATE audit SET caller = 'mallory' WHERE seq = 5", []).expect("tamper");
    drop(conn);
    let store = SqliteStore::open(&path).expect("reopen");
    let records = store.audit_records(0, 1 << 20).await.expect("audit");
    assert_eq!(first_invalid(GENESIS, records.iter().map(|r| (r.seq, &r.event, r.hash))), Some(5));
}
