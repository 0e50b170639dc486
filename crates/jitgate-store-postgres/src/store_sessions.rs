//! The PostgreSQL store: the portal's short-lived entries, shared by every replica.

use super::*;
use jitgate_store::SessionStore;

#[async_trait]
impl SessionStore for PgStore {
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
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.write(move |ctx| {
            Box::pin(async move {
                let db = &ctx.db;
                db.exec("DELETE FROM ephemeral WHERE kind = $1 AND expires <= $2", &[&kind, &nanos(created)]).await?;
                db.exec(
                    "INSERT INTO ephemeral (kind, key, value, created, expires) VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (kind, key) DO UPDATE SET value = EXCLUDED.value, created = EXCLUDED.created, \
                     expires = EXCLUDED.expires",
                    &[&kind, &key, &value, &nanos(created), &nanos(expires)],
                )
                .await?;
                // Past the limit, the oldest of the kind go.
                db.exec(
                    "DELETE FROM ephemeral WHERE kind = $1 AND key IN (SELECT key FROM ephemeral WHERE kind = $1 \
                     ORDER BY created DESC, key OFFSET $2)",
                    &[&kind, &limit],
                )
                .await?;
                Ok(())
            })
        })
        .await
    }

    async fn get_ephemeral(&self, kind: &str, key: &str, now: OffsetDateTime) -> StoreResult<Option<String>> {
        let (kind, key) = (kind.to_owned(), key.to_owned());
        self.read(move |db| {
            Box::pin(async move {
                let row = db
                    .opt(
                        "SELECT value FROM ephemeral WHERE kind = $1 AND key = $2 AND expires > $3",
                        &[&kind, &key, &nanos(now)],
                    )
                    .await?;
                Ok(row.map(|r| r.try_get(0)).transpose()?)
            })
        })
        .await
    }

    async fn take_ephemeral(&self, kind: &str, key: &str, now: OffsetDateTime) -> StoreResult<Option<String>> {
        let (kind, key) = (kind.to_owned(), key.to_owned());
        self.write(move |ctx| {
            Box::pin(async move {
                let row = ctx
                    .db
                    .opt("DELETE FROM ephemeral WHERE kind = $1 AND key = $2 RETURNING value, expires", &[&kind, &key])
                    .await?;
                let Some(row) = row else { return Ok(None) };
                let (value, expires): (String, i64) = (row.try_get(0)?, row.try_get(1)?);
                Ok((expires > nanos(now)).then_some(value))
            })
        })
        .await
    }
}
