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
    let v = store.verify_audit().await.expect("verify");
    assert!(v.valid, "the chain continues across the reopen: {v:?}");
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
    let first: i64 = conn.query_row("SELECT min(seq) FROM audit", [], |r| r.get(0)).expect("min");
    conn.execute("UPDATE audit SET caller = 'mallory' WHERE seq = ?1", [first + 5]).expect("tamper");
    drop(conn);
    let store = SqliteStore::open(&path).expect("reopen");
    let v = store.verify_audit().await.expect("verify");
    assert_eq!((v.valid, v.first_invalid), (false, Some(first as u64 + 5)));
}

/// Each kind of tampering with the file is caught by the offline verifier, naming the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_verify_catches_changed_deleted_and_swapped_rows() {
    for (what, sql, bad) in [
        ("changed field", "UPDATE audit SET caller = 'mallory' WHERE seq = 7", 7),
        ("deleted row", "DELETE FROM audit WHERE seq = 9", 9),
        (
            "swapped rows",
            "UPDATE audit SET caller = CASE seq WHEN 11 THEN (SELECT caller FROM audit WHERE seq = 12) ELSE (SELECT caller FROM audit WHERE seq = 11) END, \
             operation = CASE seq WHEN 11 THEN (SELECT operation FROM audit WHERE seq = 12) ELSE (SELECT operation FROM audit WHERE seq = 11) END, \
             properties = CASE seq WHEN 11 THEN (SELECT properties FROM audit WHERE seq = 12) ELSE (SELECT properties FROM audit WHERE seq = 11) END, \
             time = CASE seq WHEN 11 THEN (SELECT time FROM audit WHERE seq = 12) ELSE (SELECT time FROM audit WHERE seq = 11) END, \
             hash = CASE seq WHEN 11 THEN (SELECT hash FROM audit WHERE seq = 12) ELSE (SELECT hash FROM audit WHERE seq = 11) END \
             WHERE seq IN (11, 12)",
            11,
        ),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("jitgate.db");
        {
            let store = SqliteStore::open(&path).expect("open");
            jitgate_store::conformance::run_all(&store).await;
        }
        let before = jitgate_store_sqlite::verify_audit_file(&path).expect("verify");
        assert!(before.valid, "{what}: intact before: {before:?}");
        let conn = rusqlite::Connection::open(&path).expect("raw");
        // The first records were archived by the suite; tamper with live ones.
        let first: i64 = conn.query_row("SELECT min(seq) FROM audit", [], |r| r.get(0)).expect("min");
        let sql = sql.replace("seq = 7", &format!("seq = {}", first + 7)).replace("seq = 9", &format!("seq = {}", first + 9));
        let sql = sql.replace("11", &(first + 11).to_string()).replace("12", &(first + 12).to_string());
        conn.execute_batch(&sql).expect("tamper");
        drop(conn);
        let after = jitgate_store_sqlite::verify_audit_file(&path).expect("verify");
        assert!(!after.valid, "{what} not caught");
        let expected = first as u64 + bad as u64;
        assert_eq!(after.first_invalid, Some(expected), "{what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_1_database_is_migrated_and_a_newer_one_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("jitgate.db");
    drop(SqliteStore::open(&path).expect("open"));
    {
        // What the first schema looked like: no pending extensions on requests, join tokens for
        // any VM name, no delivered revisions, gateway names unique across subscriptions.
        let c = rusqlite::Connection::open(&path).expect("raw open");
        c.execute_batch(
            "ALTER TABLE requests DROP COLUMN ext_end; ALTER TABLE requests DROP COLUMN ext_by; \
             ALTER TABLE join_tokens DROP COLUMN vm; ALTER TABLE agents DROP COLUMN delivered_revision; \
             DROP INDEX agents_gateway_name; \
             CREATE UNIQUE INDEX agents_gateway_name ON agents (lower(name)) WHERE mode = 'gateway'; \
             PRAGMA user_version = 1;",
        )
        .expect("downgrade");
    }
    drop(SqliteStore::open(&path).expect("a schema-1 database opens"));
    {
        let c = rusqlite::Connection::open(&path).expect("raw open");
        let v: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0)).expect("version");
        assert_eq!(v, 3);
        c.execute("UPDATE requests SET ext_end = 1, ext_by = 'x' WHERE rid = -1", []).expect("the new columns exist");
        c.execute("UPDATE join_tokens SET vm = 'x' WHERE hash = ''", []).expect("join tokens for one VM");
        c.execute("UPDATE agents SET delivered_revision = 1 WHERE id = ''", []).expect("delivered revisions");
        for sub in ["a", "b"] {
            c.execute(
                "INSERT INTO agents (id, name, mode, subscription, resource_group, location, credential_hash, os_type, \
                 addresses, hostname, joined) VALUES (?1, 'gw', 'gateway', ?1, 'rg', 'l', ?1, 'Linux', '', 'gw', 0)",
                [sub],
            )
            .expect("one gateway name per subscription");
        }
        c.execute_batch("PRAGMA user_version = 99;").expect("from the future");
    }
    let err = SqliteStore::open(&path).err().expect("a newer database is refused");
    assert!(err.to_string().contains("newer than this jitgate"), "{err}");
}
