//! Whole-store copies of a database file: export (read-only, beside a running server), import
//! into an empty file, the schema migration alone, and an online backup.
//!
//! These work on the file with their own connection, not through a [`crate::SqliteStore`]: an
//! export or a backup reads in one read transaction, which in WAL mode sees one committed state
//! while the server keeps writing; an import or a migration writes a file no server has open
//! (the caller holds the data directory's lock).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;
use rusqlite::types::ValueRef;
use rusqlite::{params_from_iter, Connection, OpenFlags, OptionalExtension};

use jitgate_store::snapshot::{
    not_empty, ColumnType, Counts, Record, RecordSink, RecordSource, SnapshotStore, Table, Value, SEQUENCES, TABLES,
};
use jitgate_store::{AuditVerification, StoreResult};

use crate::migrate::{migrate, SCHEMA_VERSION};
use crate::{backend, FileError};

/// The schema version a file is at before and after [`migrate_file`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMigration {
    pub from: i64,
    pub to: i64,
}

/// Brings the database at `path` (created if missing) to the current schema, and nothing else
/// (webhook secrets are sealed by the server at start). Run it with no server on the file.
pub fn migrate_file(path: &Path) -> StoreResult<FileMigration> {
    let conn = Connection::open(path).map_err(backend)?;
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;")
        .map_err(backend)?;
    let from = user_version(&conn)?;
    migrate(&conn)?;
    Ok(FileMigration { from, to: user_version(&conn)? })
}

fn user_version(conn: &Connection) -> StoreResult<i64> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(backend)
}

/// Copies the database at `src` to a new file `dest` with SQLite's online backup API, from a
/// read-only connection: every page in one step, inside one read transaction, so the copy is one
/// committed state of the database even while a server writes to it. `dest` must not exist.
pub fn backup(src: &Path, dest: &Path) -> Result<(), FileError> {
    let failed = |path: &Path| {
        let path = path.to_owned();
        move |source| FileError { path, source }
    };
    if dest.exists() {
        return Err(FileError {
            path: dest.to_owned(),
            source: rusqlite::Error::InvalidPath(PathBuf::from(format!("{} exists", dest.display()))),
        });
    }
    let from = Connection::open_with_flags(src, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(failed(src))?;
    from.busy_timeout(std::time::Duration::from_secs(5)).map_err(failed(src))?;
    let mut to = Connection::open(dest).map_err(failed(dest))?;
    {
        let copy = rusqlite::backup::Backup::new(&from, &mut to).map_err(failed(dest))?;
        // Busy or locked: a writer holds the source for a moment; try again, for up to 5 s.
        let mut tries = 0;
        while copy.step(-1).map_err(failed(dest))? != rusqlite::backup::StepResult::Done {
            tries += 1;
            if tries > 500 {
                return Err(FileError {
                    path: src.to_owned(),
                    source: rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                        Some("the database stayed locked for 5 s".into()),
                    ),
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    // The copy is a file of its own: durable before it is reported done.
    to.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);").map_err(failed(dest))?;
    drop(to);
    std::fs::File::open(dest).and_then(|f| f.sync_all()).map_err(|e| FileError {
        path: dest.to_owned(),
        source: rusqlite::Error::InvalidPath(PathBuf::from(e.to_string())),
    })?;
    Ok(())
}

/// A database file opened for a whole-store copy.
pub struct SqliteSnapshot {
    conn: Mutex<Connection>,
}

impl SqliteSnapshot {
    /// Opens `path` read-only, to export: the file must exist and be at this build's schema
    /// (start the server once, or `jitgate migrate`, to upgrade an older one).
    pub fn open_read_only(path: &Path) -> StoreResult<Self> {
        if !path.exists() {
            return Err(backend(format!("no database at {}", path.display())));
        }
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(backend)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(backend)?;
        let version = user_version(&conn)?;
        if version != SCHEMA_VERSION {
            return Err(backend(format!(
                "{} has schema version {version}, this jitgate exports version {SCHEMA_VERSION}: {}",
                path.display(),
                if version < SCHEMA_VERSION {
                    "upgrade it first (jitgate migrate --data-dir, or start the server once)"
                } else {
                    "use the jitgate that wrote it"
                }
            )));
        }
        Ok(SqliteSnapshot { conn: Mutex::new(conn) })
    }

    /// Opens (creating if needed) and migrates `path`, to import into. Nothing else may have the
    /// file open for writing.
    pub fn open_for_import(path: &Path) -> StoreResult<Self> {
        let conn = Connection::open(path).map_err(backend)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;",
        )
        .map_err(backend)?;
        migrate(&conn)?;
        Ok(SqliteSnapshot { conn: Mutex::new(conn) })
    }

    /// The schema version of the file.
    pub fn schema_version(&self) -> StoreResult<i64> {
        user_version(&*self.lock()?)
    }

    /// Verifies the audit chain of the file.
    pub fn verify_audit(&self) -> StoreResult<AuditVerification> {
        crate::auditq::verify(&*self.lock()?).map_err(backend)
    }

    fn lock(&self) -> StoreResult<std::sync::MutexGuard<'_, Connection>> {
        self.conn.lock().map_err(|_| backend("the snapshot connection was poisoned"))
    }
}

fn read_value(v: ValueRef<'_>, ty: ColumnType) -> Result<Value, String> {
    match (v, ty) {
        (ValueRef::Null, _) => Ok(Value::Null),
        (ValueRef::Integer(n), ColumnType::Int) => Ok(Value::Int(n)),
        (ValueRef::Integer(n), ColumnType::Bool) => Ok(Value::Bool(n != 0)),
        (ValueRef::Text(t), ColumnType::Text) => {
            String::from_utf8(t.to_vec()).map(Value::Text).map_err(|e| format!("not UTF-8: {e}"))
        }
        (other, ty) => Err(format!("a {:?} where {ty:?} belongs", other.data_type())),
    }
}

fn write_value(v: &Value) -> rusqlite::types::Value {
    use rusqlite::types::Value as V;
    match v {
        Value::Null => V::Null,
        Value::Int(n) => V::Integer(*n),
        Value::Bool(b) => V::Integer(i64::from(*b)),
        Value::Text(t) => V::Text(t.clone()),
    }
}

fn export_table(conn: &Connection, table: &Table, sink: &mut dyn RecordSink, counts: &mut Counts) -> StoreResult<()> {
    let columns: Vec<&str> = table.columns.iter().map(|c| c.name).collect();
    let sql = format!("SELECT {} FROM {} ORDER BY {}", columns.join(", "), table.name, table.key.join(", "));
    let mut stmt = conn.prepare(&sql).map_err(backend)?;
    let mut rows = stmt.query([]).map_err(backend)?;
    while let Some(row) = rows.next().map_err(backend)? {
        let mut values = Vec::with_capacity(table.columns.len());
        for (i, c) in table.columns.iter().enumerate() {
            let v = row.get_ref(i).map_err(backend)?;
            values.push(read_value(v, c.ty).map_err(|e| backend(format!("{}.{}: {e}", table.name, c.name)))?);
        }
        let record = (table.from_row)(values).map_err(backend)?;
        counts.add(&record);
        sink.put(record)?;
    }
    Ok(())
}

fn export_all(conn: &Connection, sink: &mut dyn RecordSink) -> StoreResult<Counts> {
    let mut counts = Counts::default();
    for table in TABLES {
        export_table(conn, table, sink, &mut counts)?;
    }
    for name in SEQUENCES {
        let last: Option<i64> = conn
            .query_row("SELECT seq FROM sqlite_sequence WHERE name = ?1", [name], |r| r.get(0))
            .optional()
            .map_err(backend)?;
        let record =
            Record::Sequence(jitgate_store::snapshot::Sequence { table: (*name).into(), last: last.unwrap_or(0) });
        counts.add(&record);
        sink.put(record)?;
    }
    Ok(counts)
}

fn import_all(conn: &Connection, records: &mut RecordSource<'_>) -> StoreResult<Counts> {
    for table in TABLES.iter().filter(|t| !t.upsert) {
        let any: bool = conn
            .query_row(&format!("SELECT EXISTS (SELECT 1 FROM {})", table.name), [], |r| r.get(0))
            .map_err(backend)?;
        if any {
            return Err(not_empty(table.name));
        }
    }
    let mut counts = Counts::default();
    for record in records {
        let record = record?;
        counts.add(&record);
        match &record {
            Record::End { .. } => {}
            Record::Sequence(s) => {
                if !SEQUENCES.contains(&s.table.as_str()) {
                    return Err(backend(format!("a sequence for '{}', which has none", s.table)));
                }
                // Importing the rows moved the counter to their largest id; it only goes up.
                let now: i64 = conn
                    .query_row("SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = ?1", [&s.table], |r| {
                        r.get(0)
                    })
                    .map_err(backend)?;
                conn.execute("DELETE FROM sqlite_sequence WHERE name = ?1", [&s.table]).map_err(backend)?;
                conn.execute(
                    "INSERT INTO sqlite_sequence (name, seq) VALUES (?1, ?2)",
                    rusqlite::params![s.table, now.max(s.last)],
                )
                .map_err(backend)?;
            }
            r => {
                let Some(table) = r.table() else { continue };
                let values: Vec<rusqlite::types::Value> = r.values().iter().map(write_value).collect();
                conn.prepare_cached(&table.insert_sql('?'))
                    .and_then(|mut s| s.execute(params_from_iter(values.iter())))
                    .map_err(|e| backend(format!("importing a {} record: {e}", table.kind)))?;
            }
        }
    }
    Ok(counts)
}

#[async_trait]
impl SnapshotStore for SqliteSnapshot {
    async fn export(&self, sink: &mut dyn RecordSink) -> StoreResult<Counts> {
        let conn = self.lock()?;
        // One read transaction: one committed state, whatever a server writes meanwhile.
        conn.execute_batch("BEGIN").map_err(backend)?;
        let out = export_all(&conn, sink);
        let _ = conn.execute_batch("COMMIT");
        out
    }

    async fn import(&self, records: &mut RecordSource<'_>) -> StoreResult<Counts> {
        let conn = self.lock()?;
        conn.execute_batch("BEGIN IMMEDIATE").map_err(backend)?;
        match import_all(&conn, records) {
            Ok(counts) => {
                conn.execute_batch("COMMIT").map_err(backend)?;
                Ok(counts)
            }
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }
}

/// Every migration this build knows: its version and file.
pub fn migrations() -> Vec<(i64, &'static str)> {
    crate::migrate::MIGRATIONS.iter().map(|m| (m.version, m.name)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use jitgate_store::snapshot::EPHEMERAL;

    /// Every table and every column of the schema is in the snapshot, with a type that reads it:
    /// a migration that adds one fails here until `TABLES` has it.
    #[test]
    fn the_snapshot_covers_every_table_and_column_of_the_schema() {
        let conn = Connection::open_in_memory().expect("open");
        migrate(&conn).expect("migrate");
        let names: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
            .expect("prepare")
            .query_map([], |r| r.get(0))
            .expect("tables")
            .collect::<rusqlite::Result<_>>()
            .expect("names");
        let names: Vec<String> = names.into_iter().filter(|n| !EPHEMERAL.contains(&n.as_str())).collect();
        let mut listed: Vec<&str> = TABLES.iter().map(|t| t.name).collect();
        listed.sort_unstable();
        assert_eq!(names, listed, "every table, and nothing else");
        for table in TABLES {
            let columns: Vec<(String, String, bool)> = conn
                .prepare(&format!("PRAGMA table_info({})", table.name))
                .expect("prepare")
                .query_map([], |r| Ok((r.get(1)?, r.get(2)?, r.get::<_, i64>(3)? == 0)))
                .expect("columns")
                .collect::<rusqlite::Result<_>>()
                .expect("columns");
            let mut got: Vec<&str> = columns.iter().map(|c| c.0.as_str()).collect();
            let mut want: Vec<&str> = table.columns.iter().map(|c| c.name).collect();
            got.sort_unstable();
            want.sort_unstable();
            assert_eq!(got, want, "the columns of {}", table.name);
            for (name, ty, nullable) in &columns {
                let c = table.column(name).expect("listed");
                let expected = match c.ty {
                    ColumnType::Int | ColumnType::Bool => "INTEGER",
                    ColumnType::Text => "TEXT",
                };
                assert_eq!(ty, expected, "{}.{name}", table.name);
                // A column that may be NULL must be read as optional (a key is never NULL).
                if *nullable && !table.key.contains(&name.as_str()) {
                    assert!(c.nullable, "{}.{name} may be NULL in the schema", table.name);
                }
            }
        }
    }
}
