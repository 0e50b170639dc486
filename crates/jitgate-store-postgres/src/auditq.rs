//! Audit queries, chain verification and the records due for archiving.

use tokio_postgres::types::ToSql;

use jitgate_core::audit::GENESIS;
use jitgate_store::chain::ChainWalk;
use jitgate_store::{AuditFilter, AuditRecord, AuditVerification};

use crate::rows::{self, big, hash_from_hex, nanos};
use crate::{Db, Res};

/// The matching records after `after`, oldest first.
pub async fn query(db: &Db, f: &AuditFilter, after: u64, limit: usize) -> Res<Vec<AuditRecord>> {
    let mut sql = String::from("SELECT * FROM audit WHERE seq > $1");
    let mut args: Vec<Box<dyn ToSql + Sync + Send>> = vec![Box::new(i64::try_from(after).unwrap_or(i64::MAX))];
    let mut add = |clause: &str, v: Box<dyn ToSql + Sync + Send>| {
        args.push(v);
        sql.push_str(&clause.replace('?', &format!("${}", args.len())));
    };
    if let Some(t) = f.from {
        add(" AND time >= ?", Box::new(nanos(t)));
    }
    if let Some(t) = f.to {
        add(" AND time < ?", Box::new(nanos(t)));
    }
    if let Some(c) = &f.caller {
        add(" AND caller = ?", Box::new(c.clone()));
    }
    if let Some(r) = &f.resource_id {
        // A case-insensitive prefix, as LIKE on the lower-cased column (its index serves it).
        let escaped = r.to_lowercase().replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
        add(" AND lower(resource_id) LIKE ?", Box::new(format!("{escaped}%")));
    }
    if let Some(o) = &f.operation {
        add(" AND lower(operation) = lower(?)", Box::new(o.clone()));
    }
    if let Some(s) = f.status {
        add(" AND status = ?", Box::new(s.as_str().to_owned()));
    }
    args.push(Box::new(big(limit)));
    sql.push_str(&format!(" ORDER BY seq LIMIT ${}", args.len()));
    let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a.as_ref() as &(dyn ToSql + Sync)).collect();
    db.rows(&sql, &params).await?.iter().map(rows::audit_from_row).collect()
}

/// Where the live chain starts: after the last sealed archive, or at the beginning.
async fn start(db: &Db) -> Res<(u64, [u8; 32])> {
    match db.opt("SELECT through_seq, last_hash FROM audit_archive ORDER BY through_seq DESC LIMIT 1", &[]).await? {
        Some(r) => {
            let seq: i64 = r.try_get(0)?;
            Ok((seq.max(0) as u64, hash_from_hex(&r.try_get::<_, String>(1)?)?))
        }
        None => Ok((0, GENESIS)),
    }
}

/// Recomputes every hash of the live chain, in order, in pages.
pub async fn verify(db: &Db) -> Res<AuditVerification> {
    // Read first: every record up to the head committed before this call, so none of them may
    // be missing (a log cut off at its end is caught too).
    let head: i64 = db.one("SELECT seq FROM audit_head WHERE id = 1", &[]).await?.try_get(0)?;
    let (through, prev) = start(db).await?;
    let mut walk = ChainWalk::new(through, prev);
    loop {
        let from = i64::try_from(walk.next_seq()).unwrap_or(i64::MAX);
        let page = db.rows("SELECT * FROM audit WHERE seq >= $1 ORDER BY seq LIMIT 10000", &[&from]).await?;
        if page.is_empty() {
            break;
        }
        for row in &page {
            if let Some(broken) = walk.check(&rows::audit_from_row(row)?) {
                return Ok(broken);
            }
        }
    }
    Ok(walk.finish(Some(head.max(0) as u64)))
}

pub async fn before(db: &Db, before: i64, limit: usize) -> Res<Vec<AuditRecord>> {
    db.rows("SELECT * FROM audit WHERE time < $1 ORDER BY seq LIMIT $2", &[&before, &big(limit)])
        .await?
        .iter()
        .map(rows::audit_from_row)
        .collect()
}
