//! Grants and their life cycle in SQLite: loads the facts a `jitgate_core::lifecycle` transition
//! reads, and writes back the states it decides. No status or reason is decided here: the words
//! are bound as parameters from the core types.

use jitgate_core::initiate::{GrantStatus, StatusReason};
use jitgate_core::lifecycle::{self, GrantState, PendingExtension, RequestFacts, RequestGrant};
use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, ParamsFromIter, Row};
use time::Duration;

use crate::rows::{corrupt, from_nanos, nanos};

/// The columns [`state_from_row`] reads, in its order.
pub const STATE_COLUMNS: &str = "status, status_reason, end_time, opens_at, window_ns";

/// The condition "`column` has a status of `set`", over parameters `?first, ?first+1, …` (bind
/// them with [`bind`]). A single status is compared with `=`: SQLite then re-plans the statement
/// with the bound word and can use a partial index (the schema's `grants_live_key` and the like),
/// which it does not for `IN (?)`.
pub fn status_in(column: &str, first: usize, set: &[GrantStatus]) -> String {
    if set.len() == 1 {
        return format!("{column} = ?{first}");
    }
    let list: Vec<String> = (first..first + set.len()).map(|i| format!("?{i}")).collect();
    format!("{column} IN ({})", list.join(", "))
}

/// The parameters `lead`, then the stored words of the statuses of `set` (for [`placeholders`]).
pub fn bind(lead: impl IntoIterator<Item = Value>, set: &[GrantStatus]) -> ParamsFromIter<Vec<Value>> {
    params_from_iter(lead.into_iter().chain(set.iter().map(|s| Value::Text(s.as_str().to_owned()))).collect::<Vec<_>>())
}

/// The stored length of a pending grant's window.
pub fn window_nanos(s: &GrantState) -> Option<i64> {
    s.window.map(|w| i64::try_from(w.whole_nanoseconds()).unwrap_or(i64::MAX))
}

/// A grant's state from the [`STATE_COLUMNS`] starting at column `at`.
pub fn state_from_row(r: &Row<'_>, at: usize) -> rusqlite::Result<GrantState> {
    let status: String = r.get(at)?;
    let reason: String = r.get(at + 1)?;
    let opens_at: Option<i64> = r.get(at + 3)?;
    let window: Option<i64> = r.get(at + 4)?;
    Ok(GrantState {
        status: GrantStatus::parse(&status).ok_or_else(|| corrupt(format!("status {status}")))?,
        reason: StatusReason::parse(&reason).ok_or_else(|| corrupt(format!("status reason {reason}")))?,
        end_time: from_nanos(r.get(at + 2)?)?,
        opens_at: opens_at.map(from_nanos).transpose()?,
        window: window.map(Duration::nanoseconds),
    })
}

pub use jitgate_core::lifecycle::By;

/// Writes a grant's new state (the transitions change status, reason and end).
pub fn persist(conn: &Connection, gid: i64, s: &GrantState, by: By<'_>) -> rusqlite::Result<()> {
    let (sql, who) = match by {
        By::Nobody => ("UPDATE grants SET status = ?2, status_reason = ?3, end_time = ?4 WHERE gid = ?1", None),
        By::Decider(w) => (
            "UPDATE grants SET status = ?2, status_reason = ?3, end_time = ?4, decided_by = ?5 WHERE gid = ?1",
            Some(w),
        ),
        By::Revoker(w) => (
            "UPDATE grants SET status = ?2, status_reason = ?3, end_time = ?4, revoked_by = ?5 WHERE gid = ?1",
            Some(w),
        ),
    };
    let mut stmt = conn.prepare_cached(sql)?;
    match who {
        None => stmt.execute(params![gid, s.status.as_str(), s.reason.as_str(), nanos(s.end_time)])?,
        Some(w) => stmt.execute(params![gid, s.status.as_str(), s.reason.as_str(), nanos(s.end_time), w])?,
    };
    Ok(())
}

/// Applies a transition to the grants that match `filter` (over parameters `lead`, numbered from
/// 1) and have a status of `set`; returns how many changed.
pub fn transition_where(
    conn: &Connection,
    filter: &str,
    lead: Vec<Value>,
    set: &[GrantStatus],
    transition: impl Fn(GrantState) -> Option<GrantState>,
    by: By<'_>,
) -> rusqlite::Result<usize> {
    let sql = format!(
        "SELECT gid, {STATE_COLUMNS} FROM grants WHERE {filter} AND {} ORDER BY gid",
        status_in("status", lead.len() + 1, set)
    );
    let found: Vec<(i64, GrantState)> = conn
        .prepare_cached(&sql)?
        .query_map(bind(lead, set), |r| Ok((r.get(0)?, state_from_row(r, 1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut changed = 0;
    for (gid, state) in found {
        if let Some(new) = transition(state) {
            persist(conn, gid, &new, by)?;
            changed += 1;
        }
    }
    Ok(changed)
}

/// A newer grant with this key opened: the older ones it replaces are revoked.
pub fn supersede_older(conn: &Connection, pid: i64, supersede_key: &str) -> rusqlite::Result<usize> {
    transition_where(
        conn,
        "pid = ?1 AND supersede_key = ?2",
        vec![Value::Integer(pid), Value::Text(supersede_key.to_owned())],
        &lifecycle::SUPERSEDABLE,
        lifecycle::supersede,
        By::Nobody,
    )
}

/// Writes the changes a request transition decided, naming grants by their index in `gids`.
pub fn apply(conn: &Connection, gids: &[i64], changes: &[lifecycle::Change], by: By<'_>) -> rusqlite::Result<()> {
    for (i, state) in changes {
        persist(conn, gid_at(gids, *i)?, state, by)?;
    }
    Ok(())
}

/// The id of the grant at `index` of a request's facts.
pub fn gid_at(gids: &[i64], index: usize) -> rusqlite::Result<i64> {
    gids.get(index).copied().ok_or_else(|| corrupt(format!("no grant at index {index}")))
}

/// A request with all its grants (in request order) and their ids, as the transitions read it.
pub fn request_facts(conn: &Connection, rid: i64) -> rusqlite::Result<Option<(RequestFacts, Vec<i64>)>> {
    type Head = (String, String, Option<i64>, Option<String>);
    let head: Option<Head> = conn
        .prepare_cached("SELECT policy_id, requestor, ext_end, ext_by FROM requests WHERE rid = ?1")?
        .query_row([rid], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .optional()?;
    let Some((policy_id, requestor, ext_end, ext_by)) = head else { return Ok(None) };
    let rows: Vec<(i64, RequestGrant)> = conn
        .prepare_cached(&format!(
            "SELECT gid, vm_key, number, {STATE_COLUMNS} FROM grants WHERE rid = ?1 ORDER BY ord"
        ))?
        .query_map([rid], |r| {
            Ok((r.get(0)?, RequestGrant { vm_key: r.get(1)?, number: r.get(2)?, state: state_from_row(r, 3)? }))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let extension = match ext_end {
        Some(end) => Some(PendingExtension { end_time: from_nanos(end)?, asked_by: ext_by }),
        None => None,
    };
    let (gids, grants) = rows.into_iter().unzip();
    Ok(Some((RequestFacts { id: rid, policy_id, requestor, grants, extension }, gids)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Binding the status keeps the partial indexes (`grants_live_key` and the like, over one word, in
    /// the schema) usable: SQLite re-plans a statement with the bound value.
    #[test]
    fn a_bound_status_still_uses_the_partial_indexes() {
        let conn = Connection::open_in_memory().expect("open");
        crate::migrate(&conn).expect("schema");
        let plan = |sql: &str, status: GrantStatus| -> String {
            let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).expect("prepare");
            let rows = stmt
                .query_map(params![1, "k", status.as_str()], |r| r.get::<_, String>(3))
                .expect("plan")
                .collect::<rusqlite::Result<Vec<_>>>()
                .expect("rows");
            rows.join("; ")
        };
        let live_key = format!(
            "SELECT gid FROM grants WHERE pid = ?1 AND supersede_key = ?2 AND {} ORDER BY gid",
            status_in("status", 3, &lifecycle::SUPERSEDABLE)
        );
        let live_key = live_key.as_str();
        assert!(
            plan(live_key, GrantStatus::Initiated).contains("grants_live_key"),
            "{}",
            plan(live_key, GrantStatus::Initiated)
        );
        // The index answers only for the word it was built with.
        assert!(!plan(live_key, GrantStatus::Pending).contains("grants_live_key"));
        let scheduled = format!(
            "SELECT gid FROM grants WHERE opens_at <= ?1 AND ?2 = ?2 AND {}",
            status_in("status", 3, &lifecycle::OPENING)
        );
        let scheduled = scheduled.as_str();
        assert!(
            plan(scheduled, GrantStatus::Scheduled).contains("grants_scheduled"),
            "{}",
            plan(scheduled, GrantStatus::Scheduled)
        );
    }

    /// No status or reason of a grant is written into this crate's Rust source: the store binds
    /// the core values.
    #[test]
    fn no_grant_status_or_reason_is_a_literal_in_the_store_source() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let checked = jitgate_store::conformance::literals::assert_no_grant_literals(vec![src], &["rs"]);
        assert!(checked >= 2, "the sources were found");
    }
}
