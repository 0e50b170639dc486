//! Grants and their life cycle in PostgreSQL: loads (and locks) the facts a
//! `jitgate_core::lifecycle` transition reads, and writes back the states it decides. No status
//! or reason is decided here: the words are bound as parameters from the core types.

use jitgate_core::initiate::GrantStatus;
use jitgate_core::lifecycle::{self, GrantState, PendingExtension, RequestFacts, RequestGrant};
use time::Duration;
use tokio_postgres::Row;

use crate::rows::{self, corrupt, from_nanos, nanos};
use crate::{Db, Res};

/// The columns [`state_from_row`] reads.
pub const STATE_COLUMNS: &str = "status, status_reason, end_time, opens_at, window_ns";

/// The stored words of a set of statuses, bound as one `text[]` parameter (`status = ANY($n)`).
pub fn words(set: &[GrantStatus]) -> Vec<&'static str> {
    set.iter().map(|s| s.as_str()).collect()
}

/// The stored length of a pending grant's window.
pub fn window_nanos(s: &GrantState) -> Option<i64> {
    s.window.map(|w| i64::try_from(w.whole_nanoseconds()).unwrap_or(i64::MAX))
}

/// A grant's state from the [`STATE_COLUMNS`] of a row.
pub fn state_from_row(r: &Row) -> Res<GrantState> {
    let status: String = r.try_get("status")?;
    let reason: String = r.try_get("status_reason")?;
    let window: Option<i64> = r.try_get("window_ns")?;
    Ok(GrantState {
        status: rows::status(&status)?,
        reason: rows::reason(&reason)?,
        end_time: from_nanos(r.try_get("end_time")?)?,
        opens_at: rows::opt_time(r, "opens_at")?,
        window: window.map(Duration::nanoseconds),
    })
}

pub use jitgate_core::lifecycle::By;

/// Writes a grant's new state (the transitions change status, reason and end).
pub async fn persist(db: &Db, gid: i64, s: &GrantState, by: By<'_>) -> Res<()> {
    let (status, reason, end) = (s.status.as_str(), s.reason.as_str(), nanos(s.end_time));
    match by {
        By::Nobody => {
            db.exec(
                "UPDATE grants SET status = $2, status_reason = $3, end_time = $4 WHERE gid = $1",
                &[&gid, &status, &reason, &end],
            )
            .await?
        }
        By::Decider(w) => {
            db.exec(
                "UPDATE grants SET status = $2, status_reason = $3, end_time = $4, decided_by = $5 WHERE gid = $1",
                &[&gid, &status, &reason, &end, &w],
            )
            .await?
        }
        By::Revoker(w) => {
            db.exec(
                "UPDATE grants SET status = $2, status_reason = $3, end_time = $4, revoked_by = $5 WHERE gid = $1",
                &[&gid, &status, &reason, &end, &w],
            )
            .await?
        }
    };
    Ok(())
}

/// Which grants a transition applies to.
pub enum Filter<'a> {
    Policy(i64),
    Request(i64),
    Key(i64, &'a str),
    Keys(i64, &'a [String]),
}

/// Applies a transition to the grants of `filter` that have a status of `set`, locking them
/// first; returns how many changed.
pub async fn transition_where(
    db: &Db,
    filter: Filter<'_>,
    set: &[GrantStatus],
    transition: impl Fn(GrantState) -> Option<GrantState>,
    by: By<'_>,
) -> Res<usize> {
    let found = lock_where(db, filter, set).await?;
    let mut changed = 0;
    for r in &found {
        let gid: i64 = r.try_get("gid")?;
        if let Some(new) = transition(state_from_row(r)?) {
            persist(db, gid, &new, by).await?;
            changed += 1;
        }
    }
    Ok(changed)
}

/// Locks (`FOR UPDATE`, in id order) the grants of `filter` whose status is in `set`, and reads
/// their `gid` and [`STATE_COLUMNS`].
pub async fn lock_where(db: &Db, filter: Filter<'_>, set: &[GrantStatus]) -> Res<Vec<Row>> {
    let set = words(set);
    match filter {
        Filter::Policy(pid) => {
            db.rows(
                &format!("SELECT gid, {STATE_COLUMNS} FROM grants WHERE pid = $1 AND status = ANY($2) ORDER BY gid FOR UPDATE"),
                &[&pid, &set],
            )
            .await
        }
        Filter::Request(rid) => {
            db.rows(
                &format!("SELECT gid, {STATE_COLUMNS} FROM grants WHERE rid = $1 AND status = ANY($2) ORDER BY gid FOR UPDATE"),
                &[&rid, &set],
            )
            .await
        }
        Filter::Keys(pid, keys) => {
            db.rows(
                &format!(
                    "SELECT gid, {STATE_COLUMNS} FROM grants WHERE pid = $1 AND supersede_key = ANY($2) AND status = ANY($3) \
                     ORDER BY gid FOR UPDATE"
                ),
                &[&pid, &keys, &set],
            )
            .await
        }
        Filter::Key(pid, key) => {
            db.rows(
                &format!(
                    "SELECT gid, {STATE_COLUMNS} FROM grants WHERE pid = $1 AND supersede_key = $2 AND status = ANY($3) \
                     ORDER BY gid FOR UPDATE"
                ),
                &[&pid, &key, &set],
            )
            .await
        }
    }
}

/// Locks the grants of policy `pid` that a newer grant with one of `keys` replaces once it opens
/// (as [`supersede_older`] does for one key), in one statement, for [`superseded`].
pub async fn lock_supersedable(db: &Db, pid: i64, keys: &[String]) -> Res<Vec<Row>> {
    let filter = match keys {
        [] => return Ok(Vec::new()),
        [one] => Filter::Key(pid, one),
        many => Filter::Keys(pid, many),
    };
    lock_where(db, filter, &lifecycle::SUPERSEDABLE).await
}

/// The grants among `locked` (rows of [`lock_supersedable`]) that are superseded, with their new
/// states, to be written with [`persist_all`].
pub fn superseded(locked: &[Row]) -> Res<Vec<(i64, GrantState)>> {
    let mut out = Vec::with_capacity(locked.len());
    for r in locked {
        if let Some(new) = lifecycle::supersede(state_from_row(r)?) {
            out.push((r.try_get("gid")?, new));
        }
    }
    Ok(out)
}

/// Writes the new states of grants that nobody in particular moved, in one statement.
pub async fn persist_all(db: &Db, changed: &[(i64, GrantState)]) -> Res<()> {
    match changed {
        [] => Ok(()),
        [(gid, state)] => persist(db, *gid, state, By::Nobody).await,
        many => {
            let gids: Vec<i64> = many.iter().map(|(g, _)| *g).collect();
            let statuses: Vec<&str> = many.iter().map(|(_, s)| s.status.as_str()).collect();
            let reasons: Vec<&str> = many.iter().map(|(_, s)| s.reason.as_str()).collect();
            let ends: Vec<i64> = many.iter().map(|(_, s)| nanos(s.end_time)).collect();
            db.exec(
                "UPDATE grants g SET status = u.status, status_reason = u.reason, end_time = u.end_time \
                 FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[]) AS u(gid, status, reason, end_time) \
                 WHERE g.gid = u.gid",
                &[&gids, &statuses, &reasons, &ends],
            )
            .await
            .map(drop)
        }
    }
}

/// A newer grant with this key opened: the older ones it replaces are revoked.
pub async fn supersede_older(db: &Db, pid: i64, supersede_key: &str) -> Res<usize> {
    transition_where(db, Filter::Key(pid, supersede_key), &lifecycle::SUPERSEDABLE, lifecycle::supersede, By::Nobody)
        .await
}

/// A request's new grants, gathered to be written in one statement.
#[derive(Default)]
pub struct NewGrants {
    ord: Vec<i64>,
    vm_id: Vec<String>,
    vm_key: Vec<String>,
    number: Vec<i64>,
    protocol: Vec<&'static str>,
    form: Vec<&'static str>,
    sources: Vec<String>,
    supersede_key: Vec<String>,
    end_time: Vec<i64>,
    status: Vec<&'static str>,
    reason: Vec<&'static str>,
    mapped_port: Vec<Option<i64>>,
    public_ip: Vec<Option<String>>,
    window: Vec<Option<i64>>,
    opens_at: Vec<i64>,
}

impl NewGrants {
    /// The grant planned as `g`, at position `ord` of its request, starting as `state`.
    pub fn push(
        &mut self,
        ord: usize,
        g: &jitgate_core::initiate::GrantPlan,
        state: &GrantState,
        mapped_port: Option<u16>,
        public_ip: Option<String>,
    ) {
        let (form, sources) = crate::rows::encode_sources(&g.sources);
        self.ord.push(crate::rows::big(ord));
        self.vm_id.push(g.vm_id.as_str().to_owned());
        self.vm_key.push(g.vm_id.key());
        self.number.push(i64::from(g.number));
        self.protocol.push(g.protocol.as_str());
        self.form.push(form);
        self.sources.push(sources);
        self.supersede_key.push(g.supersede_key());
        self.end_time.push(nanos(state.end_time));
        self.status.push(state.status.as_str());
        self.reason.push(state.reason.as_str());
        self.mapped_port.push(mapped_port.map(i64::from));
        self.public_ip.push(public_ip);
        self.window.push(window_nanos(state));
        self.opens_at.push(nanos(g.opens_at));
    }

    /// Inserts `request` and these as its grants, in one statement; returns the request's id.
    pub async fn insert_with_request(&self, db: &Db, request: &NewRequest<'_>) -> Res<i64> {
        let row = db
            .one(
                "WITH r AS (INSERT INTO requests (pid, policy_id, requestor, principal, start_time, justification, \
                 client_request_id) VALUES ($1, $2, $3, $3, $4, $5, $6) RETURNING rid), \
                 g AS (INSERT INTO grants (rid, pid, ord, policy_id, vm_id, vm_key, number, protocol, source_form, sources, \
                 supersede_key, end_time, status, status_reason, mapped_port, public_ip, window_ns, opens_at) \
                 SELECT r.rid, $1, u.ord, $2, u.vm_id, u.vm_key, u.number, u.protocol, u.form, u.sources, u.skey, \
                 u.end_time, u.status, u.reason, u.mapped_port, u.public_ip, u.window_ns, u.opens_at \
                 FROM r, unnest($7::bigint[], $8::text[], $9::text[], $10::bigint[], $11::text[], $12::text[], $13::text[], \
                 $14::text[], $15::bigint[], $16::text[], $17::text[], $18::bigint[], $19::text[], $20::bigint[], \
                 $21::bigint[]) AS u(ord, vm_id, vm_key, number, protocol, form, sources, skey, end_time, status, reason, \
                 mapped_port, public_ip, window_ns, opens_at)) \
                 SELECT rid FROM r",
                &[
                    &request.pid,
                    &request.policy_id,
                    &request.requestor,
                    &request.start_time,
                    &request.justification,
                    &request.client_request_id,
                    &self.ord,
                    &self.vm_id,
                    &self.vm_key,
                    &self.number,
                    &self.protocol,
                    &self.form,
                    &self.sources,
                    &self.supersede_key,
                    &self.end_time,
                    &self.status,
                    &self.reason,
                    &self.mapped_port,
                    &self.public_ip,
                    &self.window,
                    &self.opens_at,
                ],
            )
            .await?;
        Ok(row.try_get(0)?)
    }
}

/// A request row, as [`NewGrants::insert_with_request`] writes it.
pub struct NewRequest<'a> {
    pub pid: i64,
    pub policy_id: &'a str,
    pub requestor: &'a str,
    /// Nanoseconds since the epoch.
    pub start_time: i64,
    pub justification: &'a Option<String>,
    pub client_request_id: &'a Option<String>,
}

/// Writes the changes a request transition decided, naming grants by their index in `gids`.
pub async fn apply(db: &Db, gids: &[i64], changes: &[lifecycle::Change], by: By<'_>) -> Res<()> {
    for (i, state) in changes {
        persist(db, gid_at(gids, *i)?, state, by).await?;
    }
    Ok(())
}

/// The id of the grant at `index` of a request's facts.
pub fn gid_at(gids: &[i64], index: usize) -> Res<i64> {
    gids.get(index).copied().ok_or_else(|| corrupt(format!("no grant at index {index}")))
}

/// Locks the policy a request belongs to, then the request and its grants, and reads them as
/// the transitions read them (grants in request order, with their ids). Every change of a
/// request goes through here, so two of them on one policy run one after the other.
pub async fn request_facts(db: &Db, rid: i64) -> Res<Option<(RequestFacts, Vec<i64>)>> {
    let Some(pid) = db.opt("SELECT pid FROM requests WHERE rid = $1", &[&rid]).await? else { return Ok(None) };
    let pid: i64 = pid.try_get(0)?;
    lock_policy(db, pid).await?;
    let Some(head) =
        db.opt("SELECT policy_id, requestor, ext_end, ext_by FROM requests WHERE rid = $1 FOR UPDATE", &[&rid]).await?
    else {
        return Ok(None);
    };
    let rows = db
        .rows(
            &format!("SELECT gid, vm_key, number, {STATE_COLUMNS} FROM grants WHERE rid = $1 ORDER BY ord FOR UPDATE"),
            &[&rid],
        )
        .await?;
    let mut gids = Vec::with_capacity(rows.len());
    let mut grants = Vec::with_capacity(rows.len());
    for r in &rows {
        gids.push(r.try_get::<_, i64>("gid")?);
        grants.push(RequestGrant {
            vm_key: r.try_get("vm_key")?,
            number: rows::port(r, "number")?,
            state: state_from_row(r)?,
        });
    }
    let ext_end: Option<i64> = head.try_get(2)?;
    let extension = match ext_end {
        Some(end) => Some(PendingExtension { end_time: from_nanos(end)?, asked_by: head.try_get(3)? }),
        None => None,
    };
    let facts = RequestFacts { id: rid, policy_id: head.try_get(0)?, requestor: head.try_get(1)?, grants, extension };
    Ok(Some((facts, gids)))
}

/// Locks a policy row (by id) until the transaction ends; a deleted policy locks nothing.
pub async fn lock_policy(db: &Db, pid: i64) -> Res<()> {
    db.opt("SELECT pid FROM policies WHERE pid = $1 FOR UPDATE", &[&pid]).await?;
    Ok(())
}

/// Locks a policy row (by key) until the transaction ends; returns its id, if it exists.
pub async fn lock_policy_key(db: &Db, key: &str) -> Res<Option<i64>> {
    Ok(db
        .opt("SELECT pid FROM policies WHERE key = $1 FOR UPDATE", &[&key])
        .await?
        .map(|r| r.try_get(0))
        .transpose()?)
}

#[cfg(test)]
mod tests {
    /// No status or reason of a grant is written into this crate's source or its migrations: the
    /// store binds the core values.
    #[test]
    fn no_grant_status_or_reason_is_a_literal_in_the_store() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let dirs = vec![root.join("src"), root.join("migrations")];
        let checked = jitgate_store::conformance::literals::assert_no_grant_literals(dirs, &["rs", "sql"]);
        assert!(checked >= 10, "the sources were found");
    }
}
