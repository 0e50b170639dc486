//! The schema as numbered migrations, applied at open under an advisory lock.
//!
//! `migrations/NNNN_what.sql` takes a database from schema version NNNN − 1 to NNNN. The table
//! `schema_version` holds one row per version applied (with its file and when). At open, one
//! transaction takes the transaction-scoped advisory lock [`MIGRATION_LOCK`], reads the version,
//! runs every step above it in order, records them, seals the webhook secrets, and commits: a
//! second replica starting at the same moment waits for the lock, then finds nothing to do. A
//! failure names the file and leaves the database as it was; a database newer than this build
//! is refused. A released migration is never edited: a change is a new file, listed in
//! [`MIGRATIONS`] (a test checks the list against the directory).

use time::OffsetDateTime;

use jitgate_store::secrets::Keyring;
use jitgate_store::{StoreError, StoreResult};

use crate::hooks;
use crate::rows::nanos;
use crate::{backend, Db};
use jitgate_store::secrets::SealReport;

/// The advisory lock key that serialises migrations (and the sealing of secrets) across replicas.
pub const MIGRATION_LOCK: i64 = 0x6a69_7467_6174_6501;

/// One migration: the version it leads to, its file name, its SQL.
pub(crate) struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

macro_rules! migration {
    ($version:literal, $name:literal) => {
        Migration { version: $version, name: $name, sql: include_str!(concat!("../migrations/", $name)) }
    };
}

/// Every migration, in order.
pub(crate) const MIGRATIONS: &[Migration] = &[
    migration!(1, "0001_initial.sql"),
    migration!(2, "0002_decision_reasons.sql"),
    migration!(3, "0003_replica_signals_and_leases.sql"),
    migration!(4, "0004_ephemeral.sql"),
    migration!(5, "0005_inventory_indexes.sql"),
    migration!(6, "0006_cloud_connectors.sql"),
    migration!(7, "0007_live_grants.sql"),
];

/// The schema this build writes: the last migration's version.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// What an open found and left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigrationReport {
    pub from: i64,
    pub to: i64,
}

/// Brings the database to [`SCHEMA_VERSION`] (or refuses one that is newer) and seals the
/// webhook secrets, in one transaction under the advisory lock.
pub(crate) async fn migrate(db: &mut Db, keys: &Keyring) -> StoreResult<(MigrationReport, SealReport)> {
    db.begin("BEGIN").await.map_err(StoreError::from)?;
    let out = steps(db, keys).await;
    match out {
        Ok(done) => {
            db.end("COMMIT").await.map_err(StoreError::from)?;
            Ok(done)
        }
        Err(e) => {
            let _ = db.end("ROLLBACK").await;
            Err(e)
        }
    }
}

async fn steps(db: &Db, keys: &Keyring) -> StoreResult<(MigrationReport, SealReport)> {
    let report = schema_steps(db).await?;
    let sealed = hooks::seal_all(db, keys).await.map_err(|e| backend(format!("webhook secrets: {e}")))?;
    Ok((report, sealed))
}

/// Brings the database to [`SCHEMA_VERSION`] (or refuses one that is newer), in one transaction
/// under the advisory lock, without touching the webhook secrets (`jitgate migrate`, and the
/// connection of an export or import).
pub(crate) async fn migrate_schema(db: &mut Db) -> StoreResult<MigrationReport> {
    db.begin("BEGIN").await.map_err(StoreError::from)?;
    match schema_steps(db).await {
        Ok(done) => {
            db.end("COMMIT").await.map_err(StoreError::from)?;
            Ok(done)
        }
        Err(e) => {
            let _ = db.end("ROLLBACK").await;
            Err(e)
        }
    }
}

async fn schema_steps(db: &Db) -> StoreResult<MigrationReport> {
    db.exec("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(StoreError::from)?;
    db.batch(
        "CREATE TABLE IF NOT EXISTS schema_version (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied BIGINT NOT NULL)",
    )
    .await
    .map_err(StoreError::from)?;
    let version: i64 = db
        .one("SELECT coalesce(max(version), 0) FROM schema_version", &[])
        .await
        .and_then(|r| Ok(r.try_get(0)?))
        .map_err(StoreError::from)?;
    if version > SCHEMA_VERSION {
        return Err(backend(format!(
            "the database has schema version {version}, newer than this jitgate ({SCHEMA_VERSION}); run a newer jitgate"
        )));
    }
    let now = nanos(OffsetDateTime::now_utc());
    for m in MIGRATIONS.iter().filter(|m| m.version > version) {
        db.batch(m.sql)
            .await
            .map_err(|e| backend(format!("upgrading the database from schema version {version}: {}: {e}", m.name)))?;
        db.exec(
            "INSERT INTO schema_version (version, name, applied) VALUES ($1, $2, $3)",
            &[&m.version, &m.name, &now],
        )
        .await
        .map_err(StoreError::from)?;
    }
    Ok(MigrationReport { from: version, to: version.max(SCHEMA_VERSION) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file in `migrations/` is listed, under its own number, with none missing between.
    #[test]
    fn the_list_matches_the_directory_and_is_numbered_in_order() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        jitgate_store::conformance::migrations::assert_listed(&dir, MIGRATIONS.iter().map(|m| (m.version, m.name)));
    }
}
