//! `jitgate migrate`, `export`, `import` and `backup`: the store itself, offline or beside a
//! running server.
//!
//! An export of a SQLite store opens the database read-only and does not take the data
//! directory's lock: a server may keep running on it. An import into (or a migration of) a
//! SQLite store takes the lock, so no server writes under it. Messages go to standard error
//! when the export itself goes to standard output.

use std::collections::BTreeSet;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use jitgate_cli::storage::{BackupArgs, ExportArgs, ImportArgs, MigrateArgs, StoreLocation};
use jitgate_store::snapshot::{Counts, Header, JsonLinesSink, JsonLinesSource, Record, SnapshotStore, FORMAT, VERSION};
use jitgate_store::AuditVerification;
use jitgate_store_postgres::snapshot::PgSnapshot;
use jitgate_store_sqlite::snapshot::SqliteSnapshot;

use crate::secrets;

const DB_FILE: &str = "jitgate.db";

/// New files (the database, an export, a backup) are their owner's alone.
fn private_files() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).with_context(|| format!("creating --data-dir {}", dir.display()))
}

/// A store error, said once (its source repeats its message).
fn said(e: jitgate_store::StoreError) -> anyhow::Error {
    anyhow::anyhow!(e.to_string())
}

fn location(store: &jitgate_cli::storage::StoreArgs) -> anyhow::Result<StoreLocation> {
    store.location().map_err(|e| anyhow::anyhow!(e))
}

/// `jitgate migrate`: the schema brought up to date, and what it holds, printed.
pub async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    match location(&args.store)? {
        StoreLocation::Postgres(url) => {
            let shown = jitgate_store_postgres::redact(&url);
            let db = PgSnapshot::open(&url).await.map_err(said).with_context(|| format!("migrating {shown}"))?;
            let report = db.migration_report();
            for m in db.migrations().await.map_err(said)? {
                let when = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(m.applied))
                    .map(jitgate_core::rfc3339)
                    .unwrap_or_default();
                let now = if m.version > report.from { "applied now" } else { "present" };
                println!("{:04} {} ({now}, {when})", m.version, m.name);
            }
            print_versions(&shown, report.from, report.to);
        }
        StoreLocation::Sqlite(dir) => {
            private_files();
            create_private_dir(&dir)?;
            let _lock = secrets::lock_data_dir(&dir)?;
            let db = dir.join(DB_FILE);
            let report = jitgate_store_sqlite::snapshot::migrate_file(&db)
                .map_err(said)
                .with_context(|| format!("migrating {}", db.display()))?;
            for (version, name) in jitgate_store_sqlite::snapshot::migrations() {
                let now = if version > report.from { "applied now" } else { "present" };
                println!("{version:04} {name} ({now})");
            }
            print_versions(&db.display().to_string(), report.from, report.to);
        }
    }
    Ok(())
}

fn print_versions(store: &str, from: i64, to: i64) {
    if from == to {
        println!("{store}: schema version {to}, up to date; nothing applied");
    } else {
        println!("{store}: schema version {from} -> {to}");
    }
}

fn header(source: &str, schema: i64) -> Header {
    Header {
        format: FORMAT.into(),
        version: VERSION,
        source: source.into(),
        schema,
        exported: jitgate_core::rfc3339(time::OffsetDateTime::now_utc()),
    }
}

/// `jitgate export`: every record, as JSON Lines, to a new file or standard output.
pub async fn export(args: ExportArgs) -> anyhow::Result<()> {
    private_files();
    let (store, shown, header): (Box<dyn SnapshotStore>, String, Header) = match location(&args.store)? {
        StoreLocation::Postgres(url) => {
            let shown = jitgate_store_postgres::redact(&url);
            let db = PgSnapshot::open(&url).await.map_err(said).with_context(|| format!("opening {shown}"))?;
            let schema = db.migration_report().to;
            (Box::new(db), shown, header("postgres", schema))
        }
        StoreLocation::Sqlite(dir) => {
            let path = dir.join(DB_FILE);
            // Read-only, without the data directory's lock: the server may keep running.
            let db = SqliteSnapshot::open_read_only(&path).map_err(said)?;
            let schema = db.schema_version().map_err(said)?;
            (Box::new(db), path.display().to_string(), header("sqlite", schema))
        }
    };
    let counts = if args.out == "-" {
        write_export(store.as_ref(), BufWriter::new(std::io::stdout()), &header).await?.0
    } else {
        let path = PathBuf::from(&args.out);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("creating --out {} (it must not exist yet)", path.display()))?;
        let written = async {
            let (counts, out) = write_export(store.as_ref(), BufWriter::new(file), &header).await?;
            let file = out.into_inner().map_err(|e| anyhow::anyhow!("writing {}: {}", path.display(), e.error()))?;
            file.sync_all().with_context(|| format!("writing {}", path.display()))?;
            anyhow::Ok(counts)
        };
        match written.await {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(e);
            }
        }
    };
    eprintln!("exported {counts} from {shown}");
    Ok(())
}

/// Writes the export (flushed); returns what it counted and the writer.
async fn write_export<W: Write + Send>(
    store: &dyn SnapshotStore,
    out: W,
    header: &Header,
) -> anyhow::Result<(Counts, W)> {
    let mut sink = JsonLinesSink::new(out, header).map_err(said)?;
    let counts = store.export(&mut sink).await.map_err(said)?;
    Ok((counts, sink.finish().map_err(said)?))
}

/// `jitgate import`: an export into an empty store, then its audit chain verified. Returns
/// whether the chain is intact.
pub async fn import(args: ImportArgs) -> anyhow::Result<bool> {
    private_files();
    let target = location(&args.store)?;
    let input: Box<dyn std::io::BufRead + Send> = if args.input == "-" {
        Box::new(BufReader::new(std::io::stdin()))
    } else {
        let file = std::fs::File::open(&args.input).with_context(|| format!("opening --in {}", args.input))?;
        Box::new(BufReader::new(file))
    };
    let source = JsonLinesSource::new(input).map_err(said)?;
    eprintln!(
        "importing an export of a {} store (schema {}, taken {})",
        source.header().source,
        source.header().schema,
        source.header().exported
    );
    let mut keys: BTreeSet<String> = BTreeSet::new();
    let mut records = source.inspect(|r| {
        if let Ok(Record::Webhook(w)) = r {
            keys.insert(w.secret_key.clone().unwrap_or_else(|| "(not sealed)".into()));
        }
    });
    let (counts, verified, shown) = match target {
        StoreLocation::Postgres(url) => {
            let shown = jitgate_store_postgres::redact(&url);
            let db = PgSnapshot::open(&url).await.map_err(said).with_context(|| format!("opening {shown}"))?;
            let counts =
                db.import(&mut records).await.map_err(said).with_context(|| format!("importing into {shown}"))?;
            (counts, db.verify_audit().await.map_err(said)?, shown)
        }
        StoreLocation::Sqlite(dir) => {
            create_private_dir(&dir)?;
            // No server may write the file while it is filled.
            let _lock = secrets::lock_data_dir(&dir)?;
            let path = dir.join(DB_FILE);
            let db = SqliteSnapshot::open_for_import(&path).map_err(said)?;
            let counts = db
                .import(&mut records)
                .await
                .map_err(said)
                .with_context(|| format!("importing into {}", path.display()))?;
            (counts, db.verify_audit().map_err(said)?, path.display().to_string())
        }
    };
    drop(records);
    println!("imported {counts} into {shown}");
    if !keys.is_empty() {
        println!(
            "webhook secrets stay sealed under secrets key {}: start the server with that key (the source's secrets.key, or {})",
            keys.into_iter().collect::<Vec<_>>().join(", "),
            secrets::KEY_ENV
        );
    }
    Ok(report_chain(&verified))
}

/// Prints the result of an audit verification; returns whether the chain is intact.
fn report_chain(v: &AuditVerification) -> bool {
    if v.valid {
        println!("audit chain intact: {} records verified", v.records);
    } else {
        let first = v.first_invalid.map_or_else(|| "null".to_owned(), |n| n.to_string());
        println!("audit chain BROKEN: the first bad record is {first} ({} records verified before it)", v.records);
    }
    v.valid
}

/// `jitgate backup`: an online copy of the SQLite database, then its audit chain verified.
/// Returns whether the chain is intact.
pub async fn backup(args: BackupArgs) -> anyhow::Result<bool> {
    private_files();
    let db = args.data_dir.join(DB_FILE);
    if !db.exists() {
        bail!("no database at {}", db.display());
    }
    if args.out.exists() {
        bail!("--out {} exists: give a new file", args.out.display());
    }
    let (src, out) = (db.clone(), args.out.clone());
    let copied = tokio::task::spawn_blocking(move || jitgate_store_sqlite::snapshot::backup(&src, &out)).await?;
    if let Err(e) = copied {
        let _ = std::fs::remove_file(&args.out);
        return Err(anyhow::anyhow!(e)).with_context(|| format!("backing up {}", db.display()));
    }
    let verified = jitgate_store_sqlite::verify_audit_file(&args.out)?;
    let size = std::fs::metadata(&args.out).map(|m| m.len()).unwrap_or(0);
    println!("backed up {} to {} ({size} bytes)", db.display(), args.out.display());
    Ok(report_chain(&verified))
}
