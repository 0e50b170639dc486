//! Requests across policies, for the portal's My access and Approvals: the requests that still
//! hold a live, pending or scheduled grant, newest first.

use super::*;

impl SqliteStore {
    pub(crate) async fn load_open_requests(
        &self,
        requestor: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<(String, AccessRequestRecord)>> {
        let requestor = requestor.map(str::to_owned);
        self.read(move |c| {
            let set = [GrantStatus::Initiated, GrantStatus::Pending, GrantStatus::Scheduled];
            let by = if requestor.is_some() { " AND r.requestor = ?2" } else { "" };
            let sql = format!(
                "SELECT DISTINCT r.rid, r.policy_id FROM requests r JOIN grants g ON g.rid = r.rid \
                 WHERE {}{by} ORDER BY r.rid DESC LIMIT ?1",
                grants::status_in("g.status", &set)
            );
            let mut lead = vec![rusqlite::types::Value::Integer(i64::try_from(limit).unwrap_or(i64::MAX))];
            if let Some(r) = requestor {
                lead.push(rusqlite::types::Value::Text(r));
            }
            let found: Vec<(i64, String)> = c
                .prepare_cached(&sql)?
                .query_map(grants::bind(lead), |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let mut out = Vec::with_capacity(found.len());
            for (rid, policy) in found {
                out.push((policy, rows::load_request(c, rid)?));
            }
            Ok(out)
        })
        .await
    }
}

/// Keeps the reason of the latest decision on a request with it (shown with the request and in
/// the approved/denied webhooks).
pub(crate) fn set_decision_reason(conn: &rusqlite::Connection, rid: i64, reason: Option<&str>) -> StoreResult<()> {
    conn.execute("UPDATE requests SET decision_reason = ?1 WHERE rid = ?2", rusqlite::params![reason, rid])
        .map(|_| ())
        .map_err(backend)
}
