//! Grants and their life cycle in SQLite: loads the facts a `jitgate_core::lifecycle` transition
//! reads, and writes back the states it decides. No status or reason is decided here: the words
//! come from the core types (bound as parameters, or written into a statement by [`status_in`]).

use jitgate_core::initiate::{GrantStatus, StatusReason};
use jitgate_core::lifecycle::{self, GrantState, PendingExtension, RequestFacts, RequestGrant};
use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, ParamsFromIter, Row};
use time::Duration;

use crate::rows::{corrupt, from_nanos, nanos};

/// The columns [`state_from_row`] reads, in its order.
pub const STATE_COLUMNS: &str = "status, status_reason, end_time, opens_at, window_ns";

/// The condition "`column` has a status of `set`", with the stored words of the core statuses
/// written into the statement (they are fixed words of a closed enum, never input). A statement
/// with the words in its text is planned once, cached, and can use the schema's partial indexes
/// (`grants_live_key`, `grants_expiring_end` and the like, whose conditions are the same words):
/// with a bound status SQLite would re-compile the statement at every run to consider them, and an
/// `IN` over bound words could use none of them.
pub fn status_in(column: &str, set: &[GrantStatus]) -> String {
    let words: Vec<String> = set.iter().map(|s| format!("'{}'", s.as_str())).collect();
    match words.as_slice() {
        [one] => format!("{column} = {one}"),
        _ => format!("{column} IN ({})", words.join(", ")),
    }
}

/// The parameters `lead`, numbered from 1.
pub fn bind(lead: impl IntoIterator<Item = Value>) -> ParamsFromIter<Vec<Value>> {
    params_from_iter(lead.into_iter().collect::<Vec<_>>())
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
    let sql =
        format!("SELECT gid, {STATE_COLUMNS} FROM grants WHERE {filter} AND {} ORDER BY gid", status_in("status", set));
    let found: Vec<(i64, GrantState)> = conn
        .prepare_cached(&sql)?
        .query_map(bind(lead), |r| Ok((r.get(0)?, state_from_row(r, 1)?)))?
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

    /// The plan SQLite makes for `sql` (with `params`).
    fn plan(conn: &Connection, sql: &str, params: &[&dyn rusqlite::ToSql]) -> String {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).expect("prepare");
        let rows = stmt
            .query_map(params, |r| r.get::<_, String>(3))
            .expect("plan")
            .collect::<rusqlite::Result<Vec<_>>>()
            .expect("rows");
        rows.join("; ")
    }

    /// The statuses are words of the statement, so the partial indexes over the same words answer
    /// the hot statements (no table scan, whatever the table holds), planned once at prepare.
    #[test]
    fn the_status_words_meet_the_partial_indexes() {
        let conn = Connection::open_in_memory().expect("open");
        crate::migrate(&conn).expect("schema");
        let cases = [
            (
                format!(
                    "SELECT gid FROM grants WHERE pid = ?1 AND supersede_key = ?2 AND {}",
                    status_in("status", &lifecycle::SUPERSEDABLE)
                ),
                "grants_live_key",
            ),
            (
                format!(
                    "SELECT gid FROM grants WHERE {} AND end_time <= ?1",
                    status_in("status", &lifecycle::EXPIRING)
                ),
                "grants_expiring_end",
            ),
            (
                format!(
                    "SELECT min(end_time) FROM grants WHERE {} AND ?1 = ?1",
                    status_in("status", &lifecycle::EXPIRING)
                ),
                "grants_expiring_end",
            ),
            (
                format!("SELECT gid FROM grants WHERE {} AND opens_at <= ?1", status_in("status", &lifecycle::OPENING)),
                "grants_scheduled",
            ),
            (
                format!(
                    "SELECT gid FROM grants WHERE {} AND warned = 0 AND end_time <= ?1",
                    status_in("status", &lifecycle::LIVE)
                ),
                "grants_unwarned_end",
            ),
        ];
        for (sql, index) in &cases {
            let params: Vec<&dyn rusqlite::ToSql> = if sql.contains("?2") { vec![&1i64, &"k"] } else { vec![&1i64] };
            let plan = plan(&conn, sql, &params);
            assert!(plan.contains(index), "{sql}: {plan}");
        }
    }

    /// What is written into a statement is a fixed word: letters only, never a quote.
    #[test]
    fn status_words_are_plain_words() {
        let all = [GrantStatus::Initiated, GrantStatus::Revoked, GrantStatus::Pending, GrantStatus::Scheduled];
        for s in all {
            assert!(s.as_str().chars().all(|c| c.is_ascii_alphabetic()), "{s:?}");
        }
        let (live, pending, q) = (GrantStatus::Initiated.as_str(), GrantStatus::Pending.as_str(), '\'');
        assert_eq!(status_in("g.status", &lifecycle::EXPIRING), format!("g.status IN ({q}{live}{q}, {q}{pending}{q})"));
        assert_eq!(status_in("status", &lifecycle::LIVE), format!("status = {q}{live}{q}"));
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
