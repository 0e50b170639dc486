//! Moving a store between backends and backing it up, with the real binary: `jitgate export` /
//! `import` SQLite → PostgreSQL → SQLite with every kind of record, compared record for record;
//! an import into a non-empty store, or of a cut-off file, refused with nothing changed;
//! `jitgate backup` and `export` beside a server that keeps writing; `jitgate migrate` twice.
//!
//! PostgreSQL databases are made per test on 127.0.0.1:5432 and dropped after it; where none
//! answers, those tests are skipped (and fail under `CI=true`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may panic on a failed expectation.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

use reqwest::{Method, StatusCode};

use jitgate_store::secrets::Keyring;
use jitgate_store::snapshot::{Record, TABLES};
use jitgate_store::{AuditStore, Webhook, WebhookStore};
use jitgate_store_postgres::testdb::TestDatabase;
use jitgate_store_postgres::PgStore;
use jitgate_store_sqlite::SqliteStore;
use jitgate_testkit::TestServer;

const BIN: &str = env!("CARGO_BIN_EXE_jitgate");

fn jitgate(args: &[&str]) -> Output {
    Command::new(BIN).args(args).env_remove("JITGATE_DATABASE_URL").output().expect("jitgate runs")
}

fn ok(args: &[&str]) -> String {
    let out = jitgate(args);
    assert!(
        out.status.success(),
        "jitgate {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The records of an export file (the header left out).
fn records(path: &Path) -> Vec<Record> {
    let text = std::fs::read_to_string(path).expect("export file");
    let mut lines = text.lines();
    let header: serde_json::Value = serde_json::from_str(lines.next().expect("header")).expect("header JSON");
    assert_eq!(header["format"], "jitgate-export");
    lines.map(|l| serde_json::from_str(l).expect("a record")).collect()
}

/// A SQLite store in `dir` filled through the store API with every kind of record; returns its
/// webhooks (their secrets opened).
async fn filled_sqlite(dir: &Path, keys: &Keyring) -> Vec<Webhook> {
    std::fs::create_dir_all(dir).expect("dir");
    let store = SqliteStore::open(&dir.join("jitgate.db"), keys.clone()).expect("open");
    jitgate_store::conformance::fill_every_kind(&store).await;
    let hooks = store.list_webhooks().await.expect("webhooks");
    assert!(!hooks.is_empty(), "the filled store has webhooks");
    hooks
}

fn kinds(records: &[Record]) -> BTreeSet<&'static str> {
    records.iter().map(Record::kind).collect()
}

async fn test_database(test: &str) -> Option<TestDatabase> {
    match TestDatabase::create().await {
        Ok(db) => Some(db),
        Err(why) => {
            jitgate_netns::skip(test, &why);
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_moves_from_sqlite_to_postgresql_and_back_unchanged() {
    let Some(db) = test_database("every_record_moves_from_sqlite_to_postgresql_and_back_unchanged").await else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let keys = Keyring::generate().expect("keys");
    let (src, back) = (tmp.path().join("src"), tmp.path().join("back"));
    let hooks = filled_sqlite(&src, &keys).await;

    let first = tmp.path().join("sqlite.jsonl");
    ok(&["export", "--data-dir", src.to_str().unwrap(), "--out", first.to_str().unwrap()]);
    let exported = records(&first);
    let mut expected: BTreeSet<&str> = TABLES.iter().map(|t| t.kind).collect();
    expected.extend(["sequence", "end"]);
    assert_eq!(kinds(&exported), expected, "every kind of record is in the export");

    let out = ok(&["import", "--database-url", db.url(), "--in", first.to_str().unwrap()]);
    assert!(out.contains(&format!("imported {} records", exported.len() - 1)), "{out}");
    assert!(out.contains("audit chain intact"), "{out}");
    assert!(out.contains("webhook secrets stay sealed under secrets key"), "{out}");
    let second = tmp.path().join("postgres.jsonl");
    ok(&["export", "--database-url", db.url(), "--out", second.to_str().unwrap()]);
    assert_eq!(records(&second), exported, "PostgreSQL holds exactly what SQLite held");

    // And the other way round: PostgreSQL → a new SQLite store.
    let out = ok(&["import", "--data-dir", back.to_str().unwrap(), "--in", second.to_str().unwrap()]);
    assert!(out.contains("audit chain intact"), "{out}");
    let third = tmp.path().join("back.jsonl");
    ok(&["export", "--data-dir", back.to_str().unwrap(), "--out", third.to_str().unwrap()]);
    assert_eq!(records(&third), exported, "SQLite holds exactly what PostgreSQL held");

    // Both copies open as stores with the source's secrets key, and their chains verify.
    let pg = PgStore::open(db.url(), keys.clone()).await.expect("the PostgreSQL copy opens with the same key");
    let v = pg.verify_audit().await.expect("verify");
    assert!(v.valid && v.records > 0, "{v:?}");
    assert_eq!(pg.list_webhooks().await.expect("webhooks"), hooks, "every secret opens with the same key");
    drop(pg);
    let sqlite = SqliteStore::open(&back.join("jitgate.db"), keys).expect("the SQLite copy opens with the same key");
    let v = sqlite.verify_audit().await.expect("verify");
    assert!(v.valid && v.records > 0, "{v:?}");
    assert_eq!(sqlite.list_webhooks().await.expect("webhooks"), hooks);
}
