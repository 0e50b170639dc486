//! Requests across policies, for the portal's My access and Approvals: the requests that still
//! hold a live, pending or scheduled grant, newest first.

use super::*;

impl PgStore {
    pub(crate) async fn load_open_requests(
        &self,
        requestor: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<(String, AccessRequestRecord)>> {
        let requestor = requestor.map(str::to_owned);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |db| {
            Box::pin(async move {
                let set = grants::words(&[GrantStatus::Initiated, GrantStatus::Pending, GrantStatus::Scheduled]);
                let found = db
                    .rows(
                        "SELECT DISTINCT r.rid, r.policy_id FROM requests r JOIN grants g ON g.rid = r.rid \
                         WHERE g.status = ANY($1) AND ($2::text IS NULL OR r.requestor = $2) \
                         ORDER BY r.rid DESC LIMIT $3",
                        &[&set, &requestor, &limit],
                    )
                    .await?;
                let mut out = Vec::with_capacity(found.len());
                for row in found {
                    let rid: i64 = row.try_get(0)?;
                    out.push((row.try_get(1)?, rows::load_request(db, rid).await?));
                }
                Ok(out)
            })
        })
        .await
    }
}
