//! Whole-store copies of a PostgreSQL database: export, import into an empty database, and the
//! schema migration alone (`jitgate migrate`).
//!
//! A [`PgSnapshot`] is its own small pool, opened without the secrets key: webhook secrets are
//! copied sealed, exactly as stored, and the server that later opens the database seals nothing
//! it cannot open. An export reads in one `REPEATABLE READ` transaction (one committed state,
//! whatever replicas write meanwhile) through a cursor, so a large table streams; an import
//! writes everything in one transaction, then moves the id sequences past the imported ids and
//! the audit chain's head to its last record.

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

use jitgate_store::snapshot::{
    not_empty, ColumnType, Counts, Record, RecordSink, RecordSource, Sequence, SnapshotStore, Table, Value, SEQUENCES,
    TABLES,
};
use jitgate_store::{AuditVerification, StoreError, StoreResult};

use crate::migrate::{migrate_schema, MigrationReport};
use crate::{backend, describe, parse_url, redact, Db, Error, Res};

/// Rows fetched from the cursor at a time.
const FETCH: usize = 1000;
/// Rows of one table inserted by one statement.
const BATCH: usize = 1000;

/// The tables whose ids come from a sequence (`BIGSERIAL`), with their id column.
const SERIALS: &[(&str, &str)] = &[
    ("principals", "id"),
    ("tokens", "id"),
    ("policies", "pid"),
    ("requests", "rid"),
    ("grants", "gid"),
    ("deliveries", "id"),
];

/// A migration recorded in `schema_version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedMigration {
    pub version: i64,
    pub name: String,
    /// When it was applied (Unix nanoseconds).
    pub applied: i64,
}

/// A PostgreSQL database opened for a whole-store copy or a migration.
pub struct PgSnapshot {
    pool: Pool,
    migrated: MigrationReport,
}

impl std::fmt::Debug for PgSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSnapshot").field("migrated", &self.migrated).finish()
    }
}

impl PgSnapshot {
    /// Connects to `url` and brings the schema up to date (under the advisory lock replicas
    /// share), without the secrets key: nothing is sealed or re-sealed.
    pub async fn open(url: &str) -> StoreResult<Self> {
        let (config, _) = parse_url(url)?;
        let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(2)
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(std::time::Duration::from_secs(10)))
            .build()
            .map_err(backend)?;
        let client =
            pool.get().await.map_err(|e| backend(format!("connecting to {}: {}", redact(url), describe(&e))))?;
        let mut db = Db::new(client);
        let migrated = migrate_schema(&mut db).await?;
        Ok(PgSnapshot { pool, migrated })
    }

    /// The schema version the open found and the one it left.
    pub fn migration_report(&self) -> MigrationReport {
        self.migrated
    }

    /// Every migration the database records, in order.
    pub async fn migrations(&self) -> StoreResult<Vec<AppliedMigration>> {
        let db = self.db().await?;
        let rows = db
            .rows("SELECT version, name, applied FROM schema_version ORDER BY version", &[])
            .await
            .map_err(StoreError::from)?;
        rows.iter()
            .map(|r| Ok(AppliedMigration { version: r.try_get(0)?, name: r.try_get(1)?, applied: r.try_get(2)? }))
            .collect::<Res<Vec<_>>>()
            .map_err(StoreError::from)
    }

    /// Verifies the audit chain.
    pub async fn verify_audit(&self) -> StoreResult<AuditVerification> {
        let db = self.db().await?;
        crate::auditq::verify(&db).await.map_err(StoreError::from)
    }

    async fn db(&self) -> StoreResult<Db> {
        Ok(Db::new(self.pool.get().await.map_err(Error::from)?))
    }
}

fn read_value(row: &Row, i: usize, ty: ColumnType) -> Res<Value> {
    Ok(match ty {
        ColumnType::Int => row.try_get::<_, Option<i64>>(i)?.map_or(Value::Null, Value::Int),
        ColumnType::Bool => row.try_get::<_, Option<bool>>(i)?.map_or(Value::Null, Value::Bool),
        ColumnType::Text => row.try_get::<_, Option<String>>(i)?.map_or(Value::Null, Value::Text),
    })
}

fn param(v: Value, ty: ColumnType) -> Box<dyn ToSql + Sync + Send> {
    match (v, ty) {
        (Value::Int(n), _) => Box::new(n),
        (Value::Bool(b), _) => Box::new(b),
        (Value::Text(t), _) => Box::new(t),
        (Value::Null, ColumnType::Int) => Box::new(None::<i64>),
        (Value::Null, ColumnType::Bool) => Box::new(None::<bool>),
        (Value::Null, ColumnType::Text) => Box::new(None::<String>),
    }
}

/// `ORDER BY` the table's key, text in byte order (as SQLite sorts it).
fn order_by(table: &Table) -> String {
    let keys: Vec<String> = table
        .key
        .iter()
        .map(|k| match table.column(k).map(|c| c.ty) {
            Some(ColumnType::Text) => format!("{k} COLLATE \"C\""),
            _ => (*k).to_owned(),
        })
        .collect();
    keys.join(", ")
}

async fn export_table(db: &Db, table: &Table, sink: &mut dyn RecordSink, counts: &mut Counts) -> StoreResult<()> {
    let columns: Vec<&str> = table.columns.iter().map(|c| c.name).collect();
    // A cursor of its own per table: a cached FETCH statement carries the columns of its cursor.
    let cursor = format!("jitgate_export_{}", table.name);
    let declare = format!(
        "DECLARE {cursor} NO SCROLL CURSOR FOR SELECT {} FROM {} ORDER BY {}",
        columns.join(", "),
        table.name,
        order_by(table)
    );
    db.batch(&declare).await.map_err(StoreError::from)?;
    loop {
        let rows = db.rows(&format!("FETCH {FETCH} FROM {cursor}"), &[]).await.map_err(StoreError::from)?;
        if rows.is_empty() {
            break;
        }
        for row in &rows {
            let values = table
                .columns
                .iter()
                .enumerate()
                .map(|(i, c)| read_value(row, i, c.ty))
                .collect::<Res<Vec<_>>>()
                .map_err(StoreError::from)?;
            let record = (table.from_row)(values).map_err(backend)?;
            counts.add(&record);
            sink.put(record)?;
        }
    }
    db.batch(&format!("CLOSE {cursor}")).await.map_err(StoreError::from)?;
    Ok(())
}

async fn export_all(db: &Db, sink: &mut dyn RecordSink) -> StoreResult<Counts> {
    let mut counts = Counts::default();
    for table in TABLES {
        export_table(db, table, sink, &mut counts).await?;
    }
    for name in SEQUENCES {
        let Some((_, column)) = SERIALS.iter().find(|(t, _)| t == name) else { continue };
        let seq: String = db
            .one("SELECT pg_get_serial_sequence($1, $2)", &[name, column])
            .await
            .and_then(|r| Ok(r.try_get(0)?))
            .map_err(StoreError::from)?;
        let row = db.one(&format!("SELECT last_value, is_called FROM {seq}"), &[]).await.map_err(StoreError::from)?;
        let (last, called): (i64, bool) = (row.try_get(0).map_err(Error::from)?, row.try_get(1).map_err(Error::from)?);
        let record = Record::Sequence(Sequence { table: (*name).into(), last: if called { last } else { 0 } });
        counts.add(&record);
        sink.put(record)?;
    }
    Ok(counts)
}

/// The values of one column for a batch of rows.
enum ColumnValues {
    Int(Vec<Option<i64>>),
    Bool(Vec<Option<bool>>),
    Text(Vec<Option<String>>),
}

/// Rows of one table waiting to be inserted together (`INSERT … SELECT * FROM unnest(…)`: one
/// round trip per [`BATCH`] rows instead of one per row).
#[derive(Default)]
struct Batch {
    table: Option<&'static Table>,
    columns: Vec<ColumnValues>,
    rows: usize,
}

impl Batch {
    fn start(&mut self, table: &'static Table) {
        self.table = Some(table);
        self.rows = 0;
        self.columns = table
            .columns
            .iter()
            .map(|c| match c.ty {
                ColumnType::Int => ColumnValues::Int(Vec::with_capacity(BATCH)),
                ColumnType::Bool => ColumnValues::Bool(Vec::with_capacity(BATCH)),
                ColumnType::Text => ColumnValues::Text(Vec::with_capacity(BATCH)),
            })
            .collect();
    }

    fn push(&mut self, values: Vec<Value>) -> StoreResult<()> {
        for (column, v) in self.columns.iter_mut().zip(values) {
            match (column, v) {
                (ColumnValues::Int(c), Value::Int(n)) => c.push(Some(n)),
                (ColumnValues::Int(c), Value::Null) => c.push(None),
                (ColumnValues::Bool(c), Value::Bool(b)) => c.push(Some(b)),
                (ColumnValues::Bool(c), Value::Null) => c.push(None),
                (ColumnValues::Text(c), Value::Text(t)) => c.push(Some(t)),
                (ColumnValues::Text(c), Value::Null) => c.push(None),
                (_, v) => return Err(backend(format!("a value of the wrong type: {v:?}"))),
            }
        }
        self.rows += 1;
        Ok(())
    }

    async fn flush(&mut self, db: &Db) -> StoreResult<()> {
        let Some(table) = self.table.take() else { return Ok(()) };
        if self.rows == 0 {
            return Ok(());
        }
        let names: Vec<&str> = table.columns.iter().map(|c| c.name).collect();
        let arrays: Vec<String> = table
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let ty = match c.ty {
                    ColumnType::Int => "bigint",
                    ColumnType::Bool => "boolean",
                    ColumnType::Text => "text",
                };
                format!("${}::{ty}[]", i + 1)
            })
            .collect();
        let sql =
            format!("INSERT INTO {} ({}) SELECT * FROM unnest({})", table.name, names.join(", "), arrays.join(", "));
        let params: Vec<&(dyn ToSql + Sync)> = self
            .columns
            .iter()
            .map(|c| match c {
                ColumnValues::Int(v) => v as &(dyn ToSql + Sync),
                ColumnValues::Bool(v) => v as &(dyn ToSql + Sync),
                ColumnValues::Text(v) => v as &(dyn ToSql + Sync),
            })
            .collect();
        db.exec(&sql, &params)
            .await
            .map_err(|e| backend(format!("importing {} records: {}", table.kind, StoreError::from(e))))?;
        self.columns.clear();
        self.rows = 0;
        Ok(())
    }
}

async fn import_all(db: &Db, records: &mut RecordSource<'_>) -> StoreResult<Counts> {
    // One import at a time, and none while a replica migrates.
    db.exec("SELECT pg_advisory_xact_lock($1)", &[&crate::migrate::MIGRATION_LOCK]).await.map_err(StoreError::from)?;
    for table in TABLES.iter().filter(|t| !t.upsert) {
        let any: bool = db
            .one(&format!("SELECT EXISTS (SELECT 1 FROM {})", table.name), &[])
            .await
            .and_then(|r| Ok(r.try_get(0)?))
            .map_err(StoreError::from)?;
        if any {
            return Err(not_empty(table.name));
        }
    }
    let mut counts = Counts::default();
    let mut sequences: Vec<Sequence> = Vec::new();
    let mut batch = Batch::default();
    for record in records {
        let record = record?;
        counts.add(&record);
        match record {
            Record::End { .. } => {}
            Record::Sequence(s) => {
                if !SEQUENCES.contains(&s.table.as_str()) {
                    return Err(backend(format!("a sequence for '{}', which has none", s.table)));
                }
                sequences.push(s);
            }
            r => {
                let Some(table) = r.table() else { continue };
                if table.upsert {
                    batch.flush(db).await?;
                    let params: Vec<Box<dyn ToSql + Sync + Send>> =
                        r.values().into_iter().zip(table.columns).map(|(v, c)| param(v, c.ty)).collect();
                    let refs: Vec<&(dyn ToSql + Sync)> =
                        params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect();
                    db.exec(&table.insert_sql('$'), &refs)
                        .await
                        .map_err(|e| backend(format!("importing a {} record: {}", table.kind, StoreError::from(e))))?;
                    continue;
                }
                if batch.table.map(|t| t.name) != Some(table.name) || batch.rows >= BATCH {
                    batch.flush(db).await?;
                    batch.start(table);
                }
                batch.push(r.values())?;
            }
        }
    }
    batch.flush(db).await?;
    // Every id sequence past the largest imported id (and past the counter the export carried).
    for (name, column) in SERIALS {
        let carried = sequences.iter().filter(|s| s.table == *name).map(|s| s.last).max().unwrap_or(0);
        let sql = format!(
            "SELECT setval(pg_get_serial_sequence('{name}', '{column}'), greatest(coalesce(max({column}), 0), $1::bigint, 1), \
             greatest(coalesce(max({column}), 0), $1::bigint) > 0) FROM {name}"
        );
        db.exec(&sql, &[&carried]).await.map_err(StoreError::from)?;
    }
    // The head of the audit chain: its last record, or where the last sealed archive ends.
    db.exec(
        "UPDATE audit_head SET (seq, hash) = (SELECT seq, hash FROM ( \
            (SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1) \
            UNION ALL (SELECT through_seq, last_hash FROM audit_archive ORDER BY through_seq DESC LIMIT 1) \
            UNION ALL SELECT 0, repeat('0', 64)) AS h ORDER BY seq DESC LIMIT 1) WHERE id = 1",
        &[],
    )
    .await
    .map_err(StoreError::from)?;
    Ok(counts)
}

#[async_trait]
impl SnapshotStore for PgSnapshot {
    async fn export(&self, sink: &mut dyn RecordSink) -> StoreResult<Counts> {
        let mut db = self.db().await?;
        db.begin("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY").await.map_err(StoreError::from)?;
        let out = export_all(&db, sink).await;
        let _ = db.end("COMMIT").await;
        out
    }

    async fn import(&self, records: &mut RecordSource<'_>) -> StoreResult<Counts> {
        let mut db = self.db().await?;
        db.begin("BEGIN").await.map_err(StoreError::from)?;
        match import_all(&db, records).await {
            Ok(counts) => {
                db.end("COMMIT").await.map_err(StoreError::from)?;
                Ok(counts)
            }
            Err(e) => {
                let _ = db.end("ROLLBACK").await;
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdb::TestDatabase;

    /// Every table and every column of the schema is in the snapshot, with a type that reads it
    /// (beside `schema_version` and `audit_head`, which an import derives): a migration that adds
    /// one fails here until `TABLES` has it.
    #[tokio::test]
    async fn the_snapshot_covers_every_table_and_column_of_the_schema() {
        let db = match TestDatabase::create().await {
            Ok(db) => db,
            Err(why) => return jitgate_netns::skip("the_snapshot_covers_every_table_and_column_of_the_schema", &why),
        };
        let snap = PgSnapshot::open(db.url()).await.expect("open");
        let conn = snap.db().await.expect("connection");
        let rows = conn
            .rows(
                "SELECT table_name::text, column_name::text, data_type::text, is_nullable = 'YES' \
                 FROM information_schema.columns WHERE table_schema = 'public' \
                 AND table_name NOT IN ('schema_version', 'audit_head') ORDER BY table_name, column_name",
                &[],
            )
            .await
            .expect("columns");
        let mut tables: Vec<String> = Vec::new();
        let mut columns = 0;
        for r in &rows {
            let (table, column, ty, nullable): (String, String, String, bool) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            if jitgate_store::snapshot::EPHEMERAL.contains(&table.as_str()) {
                continue;
            }
            let Some(spec) = TABLES.iter().find(|t| t.name == table) else { panic!("table {table} is not in TABLES") };
            let Some(c) = spec.column(&column) else { panic!("{table}.{column} is not in TABLES") };
            let expected = match c.ty {
                ColumnType::Int => "bigint",
                ColumnType::Bool => "boolean",
                ColumnType::Text => "text",
            };
            assert_eq!(ty, expected, "{table}.{column}");
            assert_eq!(nullable, c.nullable, "{table}.{column}: NULL allowed in the schema and the record alike");
            if !tables.contains(&table) {
                tables.push(table);
            }
            columns += 1;
        }
        assert_eq!(tables.len(), TABLES.len(), "every table of TABLES exists: {tables:?}");
        assert_eq!(columns, TABLES.iter().map(|t| t.columns.len()).sum::<usize>(), "and every column");
    }
}
