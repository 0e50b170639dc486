//! The shared store conformance suite, on SQLite, plus what only this backend can show:
//! durability across reopen, group commit under concurrency, and tamper detection in the file.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may panic on a failed expectation.

use std::sync::Arc;

use jitgate_core::audit::{first_invalid, GENESIS};
use jitgate_store::conformance::event;
use jitgate_store::prelude::*;
use jitgate_store::secrets::Keyring;
use jitgate_store_sqlite::SqliteStore;

/// One key for every open in these tests: a reopen must find the secrets it sealed.
fn keys() -> Keyring {
    static KEYS: std::sync::OnceLock<Keyring> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| Keyring::generate().expect("random")).clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("jitgate.db"), keys()).expect("open");
    jitgate_store::conformance::run_all(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_and_the_audit_chain_survive_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("jitgate.db");
    let count = {
        let store = SqliteStore::open(&path, keys()).expect("open");
        jitgate_store::conformance::run_all(&store).await;
        store.audit_records(0, 1 << 20).await.expect("audit").len()
    };
    let store = SqliteStore::open(&path, keys()).expect("reopen");
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
    let store = Arc::new(SqliteStore::open(&dir.path().join("jitgate.db"), keys()).expect("open"));
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
        let store = SqliteStore::open(&path, keys()).expect("open");
        jitgate_store::conformance::run_all(&store).await;
    }
    let conn = rusqlite::Connection::open(&path).expect("raw open");
    let first: i64 = conn.query_row("SELECT min(seq) FROM audit", [], |r| r.get(0)).expect("min");
    conn.execute("UPDATE audit SET caller = 'mallory' WHERE seq = ?1", [first + 5]).expect("tamper");
    drop(conn);
    let store = SqliteStore::open(&path, keys()).expect("reopen");
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
            let store = SqliteStore::open(&path, keys()).expect("open");
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

/// A database as version 2 made it (version 1: without its columns; 3 and 4: upgraded by those
/// migrations), with a webhook whose secret is stored in the clear and deliveries whose highest
/// id was deleted (`user_version` = `version`).
fn old_database(path: &std::path::Path, version: i64) {
    let c = rusqlite::Connection::open(path).expect("raw open");
    c.execute_batch(&format!("PRAGMA journal_mode = WAL; BEGIN; {} COMMIT;", include_str!("schema-v2.sql")))
        .expect("v2 schema");
    if version < 2 {
        c.execute_batch("ALTER TABLE requests DROP COLUMN ext_end; ALTER TABLE requests DROP COLUMN ext_by;")
            .expect("v1");
    }
    let later = [
        include_str!("../migrations/0003_webhook_secrets_and_delivery_ids.sql"),
        include_str!("../migrations/0004_oidc_identities_and_token_origins.sql"),
    ];
    for sql in later.iter().take((version - 2).max(0) as usize) {
        c.execute_batch(sql).expect("a later version");
    }
    c.execute_batch(&format!(
        "INSERT INTO webhooks (id, subscription, principal, url, secret, events, created) \
         VALUES ('w1', NULL, 'alice', 'https://hooks.example.com/a', 'plain-old-secret-0123456789', '', 1); \
         INSERT INTO deliveries (webhook_id, event, payload, state, next_attempt, created) VALUES \
         ('w1', 'opened', '{{}}', 'Delivered', 1, 1), ('w1', 'revoked', '{{}}', 'Pending', 1, 1), ('w1', 'expired', '{{}}', 'Pending', 1, 1); \
         DELETE FROM deliveries WHERE id = 3; PRAGMA user_version = {version};"
    ))
    .expect("old rows");
}

fn file_holds(path: &std::path::Path, needle: &str) -> bool {
    let mut bytes = std::fs::read(path).unwrap_or_default();
    bytes.extend(std::fs::read(path.with_extension("db-wal")).unwrap_or_default());
    bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_databases_are_upgraded_secrets_sealed_and_a_newer_one_refused() {
    for version in [1, 2, 3, 4] {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("jitgate.db");
        old_database(&path, version);
        assert!(file_holds(&path, "plain-old-secret"), "the old version kept it in the clear");
        let store = SqliteStore::open(&path, keys()).expect("an older database opens");
        assert_eq!(store.seal_report().sealed, 1, "the clear-text secret is sealed on upgrade");
        let hook = store.get_webhook("w1").await.expect("get").expect("found");
        assert_eq!(hook.secret, "plain-old-secret-0123456789", "and still reads back");
        drop(store);
        assert!(!file_holds(&path, "plain-old-secret"), "v{version}: no clear-text copy left in the file");
        let c = rusqlite::Connection::open(&path).expect("raw open");
        let v: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0)).expect("version");
        assert_eq!(v, migration_files().len() as i64);
        c.execute("UPDATE requests SET ext_end = 1, ext_by = 'x' WHERE rid = -1", []).expect("the v2 columns exist");
        c.execute("UPDATE requests SET decision_reason = 'x' WHERE rid = -1", []).expect("the v6 column exists");
        let sql: String = c
            .query_row("SELECT sql FROM sqlite_master WHERE name = 'deliveries'", [], |r| r.get(0))
            .expect("deliveries");
        assert!(sql.contains("AUTOINCREMENT"), "{sql}");
        let kept: i64 = c.query_row("SELECT count(*) FROM deliveries", [], |r| r.get(0)).expect("count");
        assert_eq!(kept, 2, "the deliveries are kept");
        c.execute(
            "INSERT INTO deliveries (webhook_id, event, payload, state, next_attempt, created) VALUES ('w1', 'x', '{}', 'Pending', 1, 1)",
            [],
        )
        .expect("insert");
        c.execute("DELETE FROM deliveries WHERE id = (SELECT max(id) FROM deliveries)", []).expect("delete");
        c.execute(
            "INSERT INTO deliveries (webhook_id, event, payload, state, next_attempt, created) VALUES ('w1', 'y', '{}', 'Pending', 1, 1)",
            [],
        )
        .expect("insert");
        let newest: i64 = c.query_row("SELECT max(id) FROM deliveries", [], |r| r.get(0)).expect("max");
        // From version 3 on, the id deleted by `old_database` was already taken for good.
        let expected = if version < 3 { 4 } else { 5 };
        assert_eq!(newest, expected, "a deleted id is not handed out again");
        c.execute("UPDATE principals SET issuer = 'i', subject = 's', display_name = 'd' WHERE id = -1", [])
            .expect("the identity columns exist");
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
        drop(c);
        let err = SqliteStore::open(&path, keys()).err().expect("a newer database is refused");
        assert!(err.to_string().contains("newer than this jitgate"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_secrets_never_reach_the_file_and_a_wrong_key_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("jitgate.db");
    let first = Keyring::generate().expect("key");
    let store = SqliteStore::open(&path, first.clone()).expect("open");
    let hook = jitgate_store::Webhook {
        id: "w-secret".into(),
        subscription: Some(jitgate_store::conformance::SUB.into()),
        principal: None,
        url: "https://hooks.example.com/x".into(),
        secret: "this-secret-must-not-be-stored-in-clear".into(),
        events: vec![],
        created: time::OffsetDateTime::now_utc(),
    };
    store.create_webhook(hook, event("hook")).await.expect("create");
    drop(store);
    assert!(!file_holds(&path, "this-secret-must-not-be-stored"), "sealed before it is written");

    let wrong = Keyring::generate().expect("key");
    let err = SqliteStore::open(&path, wrong.clone()).err().expect("the wrong key is refused at open");
    let text = err.to_string();
    assert!(text.contains(first.current().id()) && text.contains(wrong.current().id()), "names both keys: {text}");
    assert!(text.contains("w-secret"), "names the webhook: {text}");

    // Rotation: a keyring holding the new and the old key re-seals under the new one at open;
    // the new key alone opens everything afterwards, the old one alone no longer does.
    let both = Keyring::new(wrong.current().clone(), vec![first.current().clone()]);
    let store = SqliteStore::open(&path, both).expect("old + new");
    assert_eq!(store.seal_report().resealed, 1);
    drop(store);
    let store = SqliteStore::open(&path, wrong.clone()).expect("the new key alone");
    let back = store.get_webhook("w-secret").await.expect("get").expect("found");
    assert_eq!(back.secret, "this-secret-must-not-be-stored-in-clear");
    drop(store);
    assert!(SqliteStore::open(&path, first).is_err(), "the retired key opens nothing any more");
}

/// A schema-2 database, where an OIDC sign-in made a principal named by its display claim:
/// after the upgrade that principal is a plain local one (its roles stay with it, not with the
/// identity), old tokens keep working, and a derived name someone already holds refuses the
/// identity's sign-in rather than merging the two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_2_database_keeps_its_principals_and_tokens_apart_from_oidc_identities() {
    use jitgate_store::{OidcIdentity, OidcSignIn, StoreError};
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("jitgate.db");
    let (issuer, subject) = ("https://idp.example", "u-1");
    let squatted = jitgate_core::identity::oidc_name(issuer, "u-2");
    {
        old_database(&path, 2);
        let c = rusqlite::Connection::open(&path).expect("raw open");
        // The owner as the first start made it; what the old code did for an ID token saying
        // preferred_username "erin"; and a principal whose name happens to be the derived name
        // of another identity.
        c.execute_batch(&format!(
            "INSERT INTO principals (name, kind, created) VALUES ('owner', 'User', 1), ('erin', 'User', 1), ('{squatted}', 'User', 1); \
             INSERT INTO tokens (principal_id, hash, created) SELECT id, 'owner-hash', 1 FROM principals WHERE name = 'owner'; \
             INSERT INTO tokens (principal_id, hash, created) SELECT id, 'erin-hash', 1 FROM principals WHERE name = 'erin';"
        ))
        .expect("old rows");
    }
    let store = SqliteStore::open(&path, keys()).expect("a schema-2 database opens");
    let now = time::OffsetDateTime::now_utc();
    let owner = store.authenticate("owner-hash", now).await.expect("auth").expect("the Owner's token still works");
    assert_eq!(owner.principal.name, "owner");
    let old = store.authenticate("erin-hash", now).await.expect("auth").expect("an old token still works");
    assert_eq!((old.principal.oidc.as_ref(), old.expires), (None, None), "a local principal now");
    assert_eq!(store.list_tokens("erin").await.expect("tokens")[0].origin, None, "origin not recorded then");

    let sign_in = |subject: &str| OidcSignIn {
        identity: OidcIdentity { issuer: issuer.into(), subject: subject.into() },
        display_name: Some("erin".into()),
    };
    let identity = store.oidc_principal(sign_in(subject), event("oidc")).await.expect("sign in");
    assert_ne!(identity.id, old.principal.id, "the identity is not the old name-keyed principal");
    match store.oidc_principal(sign_in("u-2"), event("oidc")).await {
        Err(StoreError::Rejected(e)) => assert_eq!(e.code, "PrincipalExists"),
        other => panic!("a held derived name must refuse the sign-in: {other:?}"),
    }
    assert!(store.verify_audit().await.expect("verify").valid);
}

/// The structure of a schema: every table's columns (name, type, not null, default, key), foreign
/// keys and indexes (name, unique, partial, columns), and the index definitions' SQL.
fn structure(c: &rusqlite::Connection) -> Vec<String> {
    let mut out = Vec::new();
    let objects: Vec<(String, String, Option<String>)> = c
        .prepare("SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name")
        .expect("master")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("objects");
    let squash = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    for (kind, name, sql) in objects {
        out.push(format!("{kind} {name}"));
        if kind == "index" {
            out.push(format!("  {}", squash(&sql.unwrap_or_default())));
            continue;
        }
        for pragma in ["table_info", "foreign_key_list", "index_list"] {
            let mut st = c.prepare(&format!("SELECT * FROM pragma_{pragma}('{name}')")).expect("pragma");
            let n = st.column_count();
            let rows: Vec<String> = st
                .query_map([], |r| {
                    (0..n)
                        .map(|i| r.get::<_, rusqlite::types::Value>(i).map(|v| format!("{v:?}")))
                        .collect::<Result<Vec<_>, _>>()
                })
                .expect("rows")
                .map(|r| r.expect("row").join(" "))
                .collect();
            let mut rows = rows;
            if pragma == "index_list" {
                // The first column is the list position, which follows creation order.
                rows = rows.into_iter().map(|r| r.split_once(' ').map(|x| x.1.to_owned()).unwrap_or(r)).collect();
                rows.sort();
            }
            out.extend(rows.into_iter().map(|r| format!("  {pragma}: {r}")));
        }
    }
    out
}

/// The numbered migration files, in order.
fn migration_files() -> Vec<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("migrations")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    files.sort();
    files
}

/// A new database runs every numbered migration; what they build is the schema version 5 wrote
/// for a new database in one piece (with the later steps on top), so old and new databases are
/// the same.
#[test]
fn the_numbered_migrations_build_the_schema_of_version_5() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("jitgate.db");
    drop(SqliteStore::open(&path, keys()).expect("open"));
    let fresh = rusqlite::Connection::open(&path).expect("raw open");
    let v: i64 = fresh.query_row("PRAGMA user_version", [], |r| r.get(0)).expect("version");
    assert_eq!(v, migration_files().len() as i64);
    let old = rusqlite::Connection::open_in_memory().expect("memory");
    old.execute_batch(include_str!("schema-v5.sql")).expect("version 5 schema");
    for later in migration_files().iter().skip(5) {
        old.execute_batch(&std::fs::read_to_string(later).expect("migration")).expect("a later step");
    }
    let (fresh, old) = (structure(&fresh), structure(&old));
    assert!(fresh.len() > 100, "{fresh:?}");
    for (a, b) in fresh.iter().zip(old.iter()) {
        assert_eq!(a, b, "the migrations and the version 5 schema differ");
    }
    assert_eq!(fresh.len(), old.len());
}
