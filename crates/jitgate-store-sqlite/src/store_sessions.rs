//! The SQLite store: the portal's short-lived entries.

use super::*;

#[async_trait]
impl SessionStore for SqliteStore {
    async fn put_ephemeral(
        &self,
        kind: &str,
        key: &str,
        value: &str,
        created: OffsetDateTime,
        expires: OffsetDateTime,
        limit: usize,
    ) -> StoreResult<()> {
        let (kind, key, value) = (kind.to_owned(), key.to_owned(), value.to_owned());
        self.write(move |ctx| {
            let c = &ctx.conn;
            c.execute("DELETE FROM ephemeral WHERE kind = ?1 AND expires <= ?2", params![kind, nanos(created)])
                .map_err(backend)?;
            c.execute(
                "INSERT INTO ephemeral (kind, key, value, created, expires) VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (kind, key) DO UPDATE SET value = excluded.value, created = excluded.created, \
                 expires = excluded.expires",
                params![kind, key, value, nanos(created), nanos(expires)],
            )
            .map_err(backend)?;
            // Past the limit, the oldest of the kind go.
            c.execute(
                "DELETE FROM ephemeral WHERE kind = ?1 AND key IN (SELECT key FROM ephemeral WHERE kind = ?1 \
                 ORDER BY created DESC, key LIMIT -1 OFFSET ?2)",
                params![kind, limit as i64],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn get_ephemeral(&self, kind: &str, key: &str, now: OffsetDateTime) -> StoreResult<Option<String>> {
        let (kind, key) = (kind.to_owned(), key.to_owned());
        self.read(move |c| {
            c.prepare_cached("SELECT value FROM ephemeral WHERE kind = ?1 AND key = ?2 AND expires > ?3")?
                .query_row(params![kind, key, nanos(now)], |r| r.get(0))
                .optional()
        })
        .await
    }

    async fn take_ephemeral(&self, kind: &str, key: &str, now: OffsetDateTime) -> StoreResult<Option<String>> {
        let (kind, key) = (kind.to_owned(), key.to_owned());
        self.write(move |ctx| {
            let taken: Option<(String, i64)> = ctx
                .conn
                .query_row(
                    "DELETE FROM ephemeral WHERE kind = ?1 AND key = ?2 RETURNING value, expires",
                    params![kind, key],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(backend)?;
            Ok(taken.filter(|(_, expires)| *expires > nanos(now)).map(|(value, _)| value))
        })
        .await
    }
}
