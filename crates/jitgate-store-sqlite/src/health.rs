//! [`inspect_file`]: a database file's health for `jitgate doctor`, read-only, beside a running
//! server.

use std::path::Path;

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use jitgate_store::health::StoreHealth;

use crate::migrate::SCHEMA_VERSION;
use crate::FileError;

/// The lines of `PRAGMA integrity_check` kept when it finds problems.
const INTEGRITY_LINES: u32 = 10;

/// Opens `path` read-only and reads its schema version, runs `PRAGMA integrity_check`, reads
/// the audit chain's head and verifies the chain. Writes nothing; a server may keep running.
pub fn inspect_file(path: &Path) -> Result<StoreHealth, FileError> {
    let failed = |source| FileError { path: path.to_owned(), source };
    if !path.is_file() {
        return Err(failed(rusqlite::Error::InvalidPath(path.to_owned())));
    }
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(failed)?;
    conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(failed)?;
    inspect(&conn).map_err(failed)
}

fn inspect(conn: &Connection) -> rusqlite::Result<StoreHealth> {
    let schema: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let lines: Vec<String> = conn
        .prepare(&format!("PRAGMA integrity_check({INTEGRITY_LINES})"))?
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<_>>()?;
    let integrity = if lines.len() == 1 && lines[0] == "ok" { vec![] } else { lines };
    let head = conn
        .query_row("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", [], |r| {
            Ok((r.get::<_, i64>(0)?.max(0) as u64, r.get::<_, String>(1)?))
        })
        .optional()?;
    let audit = crate::auditq::verify(conn)?;
    Ok(StoreHealth { schema, expected: SCHEMA_VERSION, integrity: Some(integrity), head, audit })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_database_is_healthy_and_a_missing_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jitgate.db");
        let conn = Connection::open(&path).unwrap();
        crate::migrate::migrate(&conn).unwrap();
        let h = inspect_file(&path).unwrap();
        assert_eq!(
            (h.schema, h.expected, h.integrity.clone(), h.head.clone()),
            (SCHEMA_VERSION, SCHEMA_VERSION, Some(vec![]), None)
        );
        assert!(h.audit.valid);
        assert!(inspect_file(&dir.path().join("absent.db")).is_err());
    }
}
