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
use jitgate_store::{AuditStore, IdentityStore, Webhook, WebhookStore};
use jitgate_store_postgres::testdb::TestDatabase;
use jitgate_store_postgres::PgStore;
use jitgate_store_sqlite::SqliteStore;
use jitgate_testkit::TestServer;

const BIN: &str = env!("CARGO_BIN_EXE_jitgate");

fn jitgate(args: &[&str]) -> Output {
    jitgate_env(args, &[])
}

fn jitgate_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(BIN);
    c.args(args).env_remove("JITGATE_DATABASE_URL").env_remove("JITGATE_DATA_DIR");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("jitgate runs")
}

/// Runs `jitgate`, which must fail with exit code 1; returns its standard error.
fn fails(args: &[&str]) -> String {
    let out = jitgate(args);
    assert_eq!(out.status.code(), Some(1), "jitgate {args:?}: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
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

/// Two exports hold the same records in the same order; a failure names the first difference.
fn assert_same(got: &[Record], want: &[Record], what: &str) {
    if let Some(i) = (0..got.len().min(want.len())).find(|&i| got[i] != want[i]) {
        panic!("{what}: record {i} differs:\n  got  {:?}\n  want {:?}", got[i], want[i]);
    }
    assert_eq!(got.len(), want.len(), "{what}: as many records");
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
    assert_same(&records(&second), &exported, "PostgreSQL holds exactly what SQLite held");

    // And the other way round: PostgreSQL → a new SQLite store.
    let out = ok(&["import", "--data-dir", back.to_str().unwrap(), "--in", second.to_str().unwrap()]);
    assert!(out.contains("audit chain intact"), "{out}");
    let third = tmp.path().join("back.jsonl");
    ok(&["export", "--data-dir", back.to_str().unwrap(), "--out", third.to_str().unwrap()]);
    assert_same(&records(&third), &exported, "SQLite holds exactly what PostgreSQL held");

    // Both copies open as stores with the source's secrets key, and their chains verify.
    let pg = PgStore::open(db.url(), keys.clone()).await.expect("the PostgreSQL copy opens with the same key");
    let v = pg.verify_audit().await.expect("verify");
    assert!(v.valid && v.records > 0, "{v:?}");
    assert_eq!(pg.list_webhooks().await.expect("webhooks"), hooks, "every secret opens with the same key");
    // New rows get new ids: every id counter is past the imported ids.
    jitgate_store::conformance::write_one_of_each(&pg, "after").await;
    assert!(pg.verify_audit().await.expect("verify").valid);
    drop(pg);
    let sqlite = SqliteStore::open(&back.join("jitgate.db"), keys).expect("the SQLite copy opens with the same key");
    let v = sqlite.verify_audit().await.expect("verify");
    assert!(v.valid && v.records > 0, "{v:?}");
    assert_eq!(sqlite.list_webhooks().await.expect("webhooks"), hooks);
    jitgate_store::conformance::write_one_of_each(&sqlite, "after").await;
    assert!(sqlite.verify_audit().await.expect("verify").valid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_into_a_store_with_records_or_of_a_cut_off_file_is_refused_and_changes_nothing() {
    let Some(db) = test_database("an_import_into_a_store_with_records_is_refused_and_changes_nothing").await else {
        return;
    };
    let Some(empty) = test_database("an_import_into_a_store_with_records_is_refused_and_changes_nothing").await else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let keys = Keyring::generate().expect("keys");
    let src = tmp.path().join("src");
    filled_sqlite(&src, &keys).await;
    let file = tmp.path().join("all.jsonl");
    ok(&["export", "--data-dir", src.to_str().unwrap(), "--out", file.to_str().unwrap()]);
    let all = records(&file);
    let export_of = |args: &[&str], name: &str| {
        let out = tmp.path().join(name);
        let mut a = vec!["export"];
        a.extend_from_slice(args);
        a.extend(["--out", out.to_str().unwrap()]);
        ok(&a);
        records(&out)
    };

    // Into a PostgreSQL store that has records: refused, nothing changed.
    ok(&["import", "--database-url", db.url(), "--in", file.to_str().unwrap()]);
    let err = fails(&["import", "--database-url", db.url(), "--in", file.to_str().unwrap()]);
    assert!(err.contains("not empty"), "{err}");
    assert_same(&export_of(&["--database-url", db.url()], "pg-after.jsonl"), &all, "PostgreSQL unchanged");
    // Into the SQLite store it came from: the same.
    let err = fails(&["import", "--data-dir", src.to_str().unwrap(), "--in", file.to_str().unwrap()]);
    assert!(err.contains("not empty"), "{err}");
    assert_same(&export_of(&["--data-dir", src.to_str().unwrap()], "sqlite-after.jsonl"), &all, "SQLite unchanged");
    // An export file exists already: not overwritten.
    let err = fails(&["export", "--data-dir", src.to_str().unwrap(), "--out", file.to_str().unwrap()]);
    assert!(err.contains("must not exist"), "{err}");
    assert_same(&records(&file), &all, "the file unchanged");

    // A file cut off before its end line imports nothing, into either backend.
    let text = std::fs::read_to_string(&file).expect("export");
    let lines: Vec<&str> = text.lines().collect();
    let cut = tmp.path().join("cut.jsonl");
    std::fs::write(&cut, lines[..lines.len() - 1].join("\n") + "\n").expect("write");
    let err = fails(&["import", "--database-url", empty.url(), "--in", cut.to_str().unwrap()]);
    assert!(err.contains("cut off"), "{err}");
    let fresh = tmp.path().join("fresh");
    let err = fails(&["import", "--data-dir", fresh.to_str().unwrap(), "--in", cut.to_str().unwrap()]);
    assert!(err.contains("cut off"), "{err}");
    for (args, name) in [
        (vec!["--database-url", empty.url()], "pg-empty.jsonl"),
        (vec!["--data-dir", fresh.to_str().unwrap()], "sq-empty.jsonl"),
    ] {
        let left = export_of(&args, name);
        assert!(!left.is_empty());
        assert!(
            left.iter().all(|r| matches!(r, Record::Meta(_) | Record::Sequence(_) | Record::End { .. })),
            "nothing was imported: {left:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_and_export_run_beside_a_server_that_keeps_writing() {
    let s = std::sync::Arc::new(TestServer::start(BIN, &[]));
    let data = s.server.data_dir.clone();
    let tmp = tempfile::tempdir().expect("tempdir");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer = {
        let (s, stop, written) = (s.clone(), stop.clone(), written.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                s.register_vm("busy", &format!("vm{n}"), "Linux").await;
                n += 1;
                written.store(n, std::sync::atomic::Ordering::SeqCst);
            }
        })
    };
    while written.load(std::sync::atomic::Ordering::SeqCst) < 3 {
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let copy = tmp.path().join("copy.db");
    let export = tmp.path().join("live.jsonl");
    let (d, c, e) =
        (data.to_str().unwrap().to_owned(), copy.to_str().unwrap().to_owned(), export.to_str().unwrap().to_owned());
    let (backup, exported, import_locked) = tokio::task::spawn_blocking(move || {
        let b = jitgate(&["backup", "--data-dir", &d, "--out", &c]);
        let x = jitgate(&["export", "--data-dir", &d, "--out", &e]);
        let i = jitgate(&["import", "--data-dir", &d, "--in", &e]);
        (b, x, i)
    })
    .await
    .expect("commands");
    let before = written.load(std::sync::atomic::Ordering::SeqCst);
    // The server keeps serving writes after both.
    while written.load(std::sync::atomic::Ordering::SeqCst) < before + 2 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.await.expect("writer");
    assert!(backup.status.success(), "{}", String::from_utf8_lossy(&backup.stderr));
    let said = String::from_utf8_lossy(&backup.stdout);
    assert!(said.contains("audit chain intact"), "{said}");
    assert!(exported.status.success(), "{}", String::from_utf8_lossy(&exported.stderr));
    #[cfg(unix)]
    for file in [&copy, &export] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(file).expect("file").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} holds credential hashes: its owner's only", file.display());
    }
    assert_eq!(import_locked.status.code(), Some(1), "an import does not write under a running server");
    assert!(String::from_utf8_lossy(&import_locked.stderr).contains("holds the data directory"));

    // The copy opens as a store (with the server's secrets key) and its chain verifies.
    let keys = Keyring::parse(&std::fs::read_to_string(data.join("secrets.key")).expect("key")).expect("keyring");
    let restored = tmp.path().join("restored");
    std::fs::create_dir_all(&restored).expect("dir");
    std::fs::copy(&copy, restored.join("jitgate.db")).expect("copy");
    let store = SqliteStore::open(&restored.join("jitgate.db"), keys).expect("the backup opens");
    let v = store.verify_audit().await.expect("verify");
    assert!(v.valid && v.records >= 4, "{v:?}");
    drop(store);
    // What was exported under load imports into a new store with an intact chain.
    let out =
        ok(&["import", "--data-dir", tmp.path().join("moved").to_str().unwrap(), "--in", export.to_str().unwrap()]);
    assert!(out.contains("audit chain intact"), "{out}");
    // A backup never overwrites.
    let again = jitgate(&["backup", "--data-dir", data.to_str().unwrap(), "--out", copy.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1));
    let answer = s.send(Method::GET, &s.url("/api/v1/audit/verify"), None).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body["valid"], true, "the live store is intact too: {answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_brings_a_fresh_postgresql_database_up_to_date_once() {
    let Some(db) = test_database("migrate_brings_a_fresh_postgresql_database_up_to_date_once").await else {
        return;
    };
    let first = ok(&["migrate", "--database-url", db.url()]);
    assert!(first.contains("0001_initial.sql (applied now"), "{first}");
    assert!(first.contains("schema version 0 -> "), "{first}");
    // Again, the URL from the environment as `serve` takes it: nothing to do.
    let out = jitgate_env(&["migrate"], &[("JITGATE_DATABASE_URL", db.url())]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let second = String::from_utf8_lossy(&out.stdout);
    assert!(second.contains("0001_initial.sql (present"), "{second}");
    assert!(!second.contains("applied now"), "{second}");
    assert!(second.contains("up to date; nothing applied"), "{second}");
}

#[test]
fn migrate_a_sqlite_data_dir_and_the_commands_in_help_and_man_pages() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let first = ok(&["migrate", "--data-dir", dir.to_str().unwrap()]);
    assert!(first.contains("0001_initial.sql (applied now)") && first.contains("schema version 0 -> "), "{first}");
    let second = ok(&["migrate", "--data-dir", dir.to_str().unwrap()]);
    assert!(!second.contains("applied now") && second.contains("nothing applied"), "{second}");
    assert!(jitgate_store_sqlite::verify_audit_file(&dir.join("jitgate.db")).expect("verify").valid);

    let help = ok(&["--help"]);
    for command in ["migrate", "export", "import", "backup"] {
        assert!(help.lines().any(|l| l.trim_start().starts_with(command)), "{command} in --help: {help}");
        assert!(ok(&[command, "--help"]).contains("Examples:"), "{command} --help has examples");
    }
    let man = tmp.path().join("man");
    ok(&["man", "--dir", man.to_str().unwrap()]);
    for page in ["jitgate-migrate.1", "jitgate-export.1", "jitgate-import.1", "jitgate-backup.1"] {
        assert!(man.join(page).exists(), "{page}");
    }
    // A database URL from the environment (as `serve` takes it) gives way to --data-dir.
    let out_file = tmp.path().join("env.jsonl");
    let out = jitgate_env(
        &["export", "--data-dir", dir.to_str().unwrap(), "--out", out_file.to_str().unwrap()],
        &[("JITGATE_DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(records(&out_file).iter().any(|r| matches!(r, Record::Meta(_))));
    let err = fails(&["export"]);
    assert!(err.contains("--data-dir DIR (SQLite) or --database-url URL"), "{err}");
    let err = fails(&["import", "--data-dir", dir.to_str().unwrap(), "--database-url", "postgres://x/y"]);
    assert!(err.contains("not both"), "{err}");
}

/// More rows of one table than one insert statement takes: the chain still moves whole, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_audit_log_moves_in_batches_and_still_verifies() {
    let Some(db) = test_database("a_long_audit_log_moves_in_batches_and_still_verifies").await else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).expect("dir");
    let store = SqliteStore::open(&src.join("jitgate.db"), Keyring::generate().expect("keys")).expect("open");
    let events: Vec<jitgate_core::audit::AuditEvent> = (0..2_500)
        .map(|i| jitgate_core::audit::AuditEvent {
            time: time::OffsetDateTime::from_unix_timestamp_nanos(1_800_000_000_000_000_000 + i).expect("time"),
            operation: "test/batch/action".into(),
            status: jitgate_core::audit::AuditStatus::Succeeded,
            caller: format!("caller-{}", i % 7),
            caller_ip: (i % 2 == 0).then(|| "192.0.2.1".into()),
            resource_id: format!("/r/{i}"),
            correlation_id: format!("c{i}"),
            properties: [("n".to_string(), i.to_string())].into_iter().collect(),
        })
        .collect();
    store.record_many(events).await.expect("record");
    drop(store);
    let first = tmp.path().join("a.jsonl");
    ok(&["export", "--data-dir", src.to_str().unwrap(), "--out", first.to_str().unwrap()]);
    let out = ok(&["import", "--database-url", db.url(), "--in", first.to_str().unwrap()]);
    assert!(out.contains("audit chain intact: 2500 records verified"), "{out}");
    let second = tmp.path().join("b.jsonl");
    ok(&["export", "--database-url", db.url(), "--out", second.to_str().unwrap()]);
    assert_same(&records(&second), &records(&first), "the long log");
}

/// An export whose audit log was changed imports, and the import says the chain is broken and
/// exits 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_with_a_changed_audit_record_reports_a_broken_chain_and_exits_1() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).expect("dir");
    let store = SqliteStore::open(&src.join("jitgate.db"), Keyring::generate().expect("keys")).expect("open");
    store.bootstrap("owner", "hash-1", None, audit_event("bootstrap")).await.expect("bootstrap");
    store.record(audit_event("second").succeeded()).await.expect("record");
    drop(store);
    let file = tmp.path().join("a.jsonl");
    ok(&["export", "--data-dir", src.to_str().unwrap(), "--out", file.to_str().unwrap()]);
    let text = std::fs::read_to_string(&file).expect("export");
    assert!(text.contains(r#""caller":"tester""#));
    std::fs::write(&file, text.replacen(r#""caller":"tester""#, r#""caller":"mallory""#, 1)).expect("write");
    let out =
        jitgate(&["import", "--data-dir", tmp.path().join("dst").to_str().unwrap(), "--in", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("audit chain BROKEN: the first bad record is 1"), "{said}");
}

fn audit_event(op: &str) -> jitgate_core::audit::AuditEvent {
    jitgate_core::audit::AuditEvent {
        time: time::OffsetDateTime::from_unix_timestamp(1_900_000_000).expect("time"),
        operation: op.into(),
        status: jitgate_core::audit::AuditStatus::Started,
        caller: "tester".into(),
        caller_ip: None,
        resource_id: "/test".into(),
        correlation_id: "c".into(),
        properties: Default::default(),
    }
}
