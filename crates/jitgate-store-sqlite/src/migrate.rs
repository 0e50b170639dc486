//! The schema as numbered migrations, applied in order, in one transaction, at open.
//!
//! `migrations/NNNN_what.sql` takes a database from schema version NNNN − 1 to NNNN; a new,
//! empty file (version 0) runs them all, from `0001_initial.sql` on. `PRAGMA user_version` holds
//! the version a database is at, and is set to [`SCHEMA_VERSION`] in the same transaction as the
//! steps, so a failed upgrade leaves the file as it was. A database newer than this build is
//! refused. A migration is never edited once released: a change is a new file, listed in
//! [`MIGRATIONS`] (a test checks the list against the directory).
//!
//! Every step so far is SQL. A step that needs Rust logic (rewriting values, say) takes its number
//! in the same sequence, as a function run on the transaction in place of a file. Sealing
//! webhook secrets is not a migration: it depends on the keyring given at open, not on the schema
//! version, so `hooks::seal_all` runs at every open, after the migrations (it seals secrets stored
//! in the clear by versions before 3 and re-seals those under a retired key).

use rusqlite::Connection;

use jitgate_store::StoreResult;

use crate::backend;

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
    migration!(2, "0002_pending_extensions.sql"),
    migration!(3, "0003_webhook_secrets_and_delivery_ids.sql"),
    migration!(4, "0004_oidc_identities_and_token_origins.sql"),
    migration!(5, "0005_agents_and_gateways.sql"),
    migration!(6, "0006_decision_reasons.sql"),
    migration!(7, "0007_leases.sql"),
    migration!(8, "0008_ephemeral.sql"),
    migration!(9, "0009_sweep_indexes.sql"),
    migration!(10, "0010_inventory_indexes.sql"),
    migration!(11, "0011_cloud_connectors.sql"),
];

/// The schema this build writes (`PRAGMA user_version`): the last migration's version.
pub(crate) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the database to [`SCHEMA_VERSION`], or refuses one that is newer.
pub(crate) fn migrate(conn: &Connection) -> StoreResult<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(backend)?;
    if version > SCHEMA_VERSION {
        return Err(backend(format!(
            "the database has schema version {version}, newer than this jitgate ({SCHEMA_VERSION})"
        )));
    }
    let pending: Vec<&Migration> = MIGRATIONS.iter().filter(|m| m.version > version).collect();
    if pending.is_empty() {
        return Ok(());
    }
    let run = || -> Result<(), String> {
        conn.execute_batch("BEGIN").map_err(|e| e.to_string())?;
        for m in &pending {
            conn.execute_batch(m.sql).map_err(|e| format!("{}: {e}", m.name))?;
        }
        conn.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")).map_err(|e| e.to_string())
    };
    run().map_err(|e| {
        let _ = conn.execute_batch("ROLLBACK");
        backend(format!("upgrading the database from schema version {version}: {e}"))
    })
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

    /// A database at any earlier version reaches the current one, and a second open changes
    /// nothing.
    #[test]
    fn every_version_upgrades_to_the_current_one() {
        for from in 0..=SCHEMA_VERSION {
            let conn = Connection::open_in_memory().expect("open");
            let steps: String = MIGRATIONS.iter().take(from as usize).map(|m| m.sql).collect();
            conn.execute_batch(&format!("{steps} PRAGMA user_version = {from};")).expect("older schema");
            migrate(&conn).expect("upgrade");
            migrate(&conn).expect("again");
            let v: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).expect("version");
            assert_eq!(v, SCHEMA_VERSION, "from {from}");
        }
    }

    fn tables(conn: &Connection) -> Vec<String> {
        let mut q = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
            .expect("tables");
        q.query_map([], |r| r.get(0)).expect("rows").map(|r| r.expect("name")).collect()
    }

    /// A table's columns and their declared types.
    fn columns(conn: &Connection, table: &str) -> Vec<(String, String)> {
        let mut q = conn.prepare(&format!("PRAGMA table_info(\"{table}\")")).expect("table_info");
        q.query_map([], |r| Ok((r.get(1)?, r.get(2)?))).expect("rows").map(|r| r.expect("column")).collect()
    }

    /// Every row of `table`, the listed columns only, as text.
    fn dump(conn: &Connection, table: &str, cols: &[(String, String)]) -> Vec<String> {
        let list = cols.iter().map(|(c, _)| format!("\"{c}\"")).collect::<Vec<_>>().join(", ");
        let mut q = conn.prepare(&format!("SELECT {list} FROM \"{table}\" ORDER BY {list}")).expect("select");
        let n = cols.len();
        q.query_map([], |r| {
            (0..n)
                .map(|i| r.get::<_, rusqlite::types::Value>(i).map(|v| format!("{v:?}")))
                .collect::<Result<Vec<_>, _>>()
        })
        .expect("rows")
        .map(|r| r.expect("row").join("|"))
        .collect()
    }

    /// The foreign keys of a table: (column, parent table, parent column).
    fn parents(conn: &Connection, table: &str) -> Vec<(String, String, String)> {
        let mut q = conn.prepare(&format!("PRAGMA foreign_key_list(\"{table}\")")).expect("foreign keys");
        q.query_map([], |r| Ok((r.get(3)?, r.get(2)?, r.get(4)?))).expect("rows").map(|r| r.expect("key")).collect()
    }

    /// The value the test writes into `table.column`: a parent's own value for a foreign key,
    /// else one after the declared type (text naming its table and column).
    fn value(conn: &Connection, table: &str, column: &str) -> String {
        if let Some((_, parent, key)) = parents(conn, table).into_iter().find(|(c, _, _)| c == column) {
            return value(conn, &parent, &key);
        }
        let ty = columns(conn, table).into_iter().find(|(c, _)| c == column).map(|(_, t)| t).unwrap_or_default();
        match ty.to_ascii_uppercase().as_str() {
            t if t.contains("INT") => "7".to_owned(),
            t if t.contains("REAL") => "7.5".to_owned(),
            t if t.contains("BLOB") => "x'0107'".to_owned(),
            _ => format!("'{table}.{column}'"),
        }
    }

    /// A database at each earlier version, with a row in every table it has (parents before
    /// their children): after the upgrade each such row is still there with the same values, so
    /// data crosses every migration, not only the schema.
    #[test]
    fn rows_of_every_earlier_version_cross_the_upgrade() {
        for from in 1..SCHEMA_VERSION {
            let conn = Connection::open_in_memory().expect("open");
            conn.execute_batch("PRAGMA foreign_keys = ON").expect("foreign keys on");
            let steps: String = MIGRATIONS.iter().take(from as usize).map(|m| m.sql).collect();
            conn.execute_batch(&format!("{steps} PRAGMA user_version = {from};")).expect("older schema");
            let mut left = tables(&conn);
            let mut before = Vec::new();
            while !left.is_empty() {
                let ready = left
                    .iter()
                    .position(|t| parents(&conn, t).iter().all(|(_, p, _)| p == t || !left.contains(p)))
                    .unwrap_or_else(|| panic!("v{from}: a cycle of foreign keys among {left:?}"));
                let table = left.remove(ready);
                let cols = columns(&conn, &table);
                let values: Vec<String> = cols.iter().map(|(c, _)| value(&conn, &table, c)).collect();
                let names = cols.iter().map(|(c, _)| format!("\"{c}\"")).collect::<Vec<_>>().join(", ");
                let had = dump(&conn, &table, &cols);
                conn.execute(&format!("INSERT INTO \"{table}\" ({names}) VALUES ({})", values.join(", ")), [])
                    .unwrap_or_else(|e| panic!("v{from}: a row in {table}: {e}"));
                let rows: Vec<String> = dump(&conn, &table, &cols).into_iter().filter(|r| !had.contains(r)).collect();
                assert_eq!(rows.len(), 1, "v{from} {table}");
                before.push((table, cols, rows));
            }
            migrate(&conn).expect("upgrade");
            let now = tables(&conn);
            for (table, cols, rows) in before {
                assert!(now.contains(&table), "v{from}: table {table} is gone after the upgrade");
                let after = dump(&conn, &table, &cols);
                for row in rows {
                    assert!(after.contains(&row), "v{from}: {table} lost the row {row}; it holds {after:?}");
                }
            }
        }
    }
}
