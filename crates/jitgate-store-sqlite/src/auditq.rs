//! Audit queries, chain verification (also offline, on a database file) and archiving.

use rusqlite::types::Value;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use jitgate_core::audit::GENESIS;
use jitgate_store::chain::ChainWalk;
use jitgate_store::{AuditFilter, AuditRecord, AuditVerification};

use crate::rows::{self, hash_from_hex, nanos};

/// The matching records after `after`, oldest first.
pub fn query(conn: &Connection, f: &AuditFilter, after: u64, limit: usize) -> rusqlite::Result<Vec<AuditRecord>> {
    // With a selective filter, walk its index and sort the few matches, rather than walking the
    // whole log in sequence order looking for them.
    let index = if f.resource_id.is_some() {
        " INDEXED BY audit_resource"
    } else if f.caller.is_some() {
        " INDEXED BY audit_caller"
    } else {
        ""
    };
    let mut sql = format!("SELECT * FROM audit{index} WHERE seq > ?1");
    let mut args: Vec<Value> = vec![Value::Integer(after as i64)];
    let mut add = |clause: &str, v: Value| {
        args.push(v);
        sql.push_str(&clause.replace('?', &format!("?{}", args.len())));
    };
    if let Some(t) = f.from {
        add(" AND time >= ?", Value::Integer(nanos(t)));
    }
    if let Some(t) = f.to {
        add(" AND time < ?", Value::Integer(nanos(t)));
    }
    if let Some(c) = &f.caller {
        add(" AND caller = ?", Value::Text(c.clone()));
    }
    if let Some(r) = &f.resource_id {
        // A case-insensitive prefix as a range, so the index serves it.
        let low = r.clone();
        add(" AND resource_id >= ? COLLATE NOCASE", Value::Text(low.clone()));
        add(" AND resource_id < ? COLLATE NOCASE", Value::Text(format!("{low}\u{10FFFF}")));
    }
    if let Some(o) = &f.operation {
        add(" AND operation = ? COLLATE NOCASE", Value::Text(o.clone()));
    }
    if let Some(s) = f.status {
        add(" AND status = ?", Value::Text(s.as_str().into()));
    }
    args.push(Value::Integer(limit as i64));
    sql.push_str(&format!(" ORDER BY seq LIMIT ?{}", args.len()));
    let mut stmt = conn.prepare_cached(&sql)?;
    let out = stmt.query_map(rusqlite::params_from_iter(args.iter()), rows::audit_from_row)?.collect();
    out
}

/// Where the live chain starts: after the last sealed archive, or at the beginning.
fn start(conn: &Connection) -> rusqlite::Result<(u64, [u8; 32])> {
    let head: Option<(i64, String)> = conn
        .query_row("SELECT through_seq, last_hash FROM audit_archive ORDER BY through_seq DESC LIMIT 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    match head {
        Some((seq, hash)) => Ok((seq as u64, hash_from_hex(&hash)?)),
        None => Ok((0, GENESIS)),
    }
}

/// Recomputes every hash of the live chain, in order, in pages.
pub fn verify(conn: &Connection) -> rusqlite::Result<AuditVerification> {
    let (through, prev) = start(conn)?;
    let mut walk = ChainWalk::new(through, prev);
    let mut stmt = conn.prepare("SELECT * FROM audit WHERE seq >= ?1 ORDER BY seq LIMIT 10000")?;
    loop {
        let from = i64::try_from(walk.next_seq()).unwrap_or(i64::MAX);
        let page: Vec<AuditRecord> = stmt.query_map([from], rows::audit_from_row)?.collect::<rusqlite::Result<_>>()?;
        if page.is_empty() {
            break;
        }
        for r in &page {
            if let Some(broken) = walk.check(r) {
                return Ok(broken);
            }
        }
    }
    Ok(walk.finish(None))
}

/// Verifies the chain of a database file without a running server, read-only.
pub fn verify_file(path: &std::path::Path) -> Result<AuditVerification, crate::FileError> {
    let failed = |source| crate::FileError { path: path.to_owned(), source };
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(failed)?;
    verify(&conn).map_err(failed)
}

pub fn before(conn: &Connection, before: i64, limit: usize) -> rusqlite::Result<Vec<AuditRecord>> {
    conn.prepare_cached("SELECT * FROM audit WHERE time < ?1 ORDER BY seq LIMIT ?2")?
        .query_map(params![before, limit as i64], rows::audit_from_row)?
        .collect()
}
