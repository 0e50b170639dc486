//! The SQLite store: one server per data directory (it holds the directory's lock), so no
//! other server's changes arrive and the leases only ever see that server; they are kept all
//! the same, so the background tasks run the same code on both backends.

use super::*;

#[async_trait]
impl ReplicaStore for SqliteStore {
    async fn listen(&self, _to: mpsc::Sender<Signal>) {}

    async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        now: OffsetDateTime,
        until: OffsetDateTime,
    ) -> StoreResult<bool> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.write(move |ctx| {
            let changed = ctx
                .conn
                .execute(
                    "INSERT INTO leases (name, holder, expires) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires = excluded.expires \
                     WHERE leases.holder = excluded.holder OR leases.expires <= ?4",
                    params![name, holder, nanos(until), nanos(now)],
                )
                .map_err(backend)?;
            Ok(changed == 1)
        })
        .await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> StoreResult<()> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.write(move |ctx| {
            ctx.conn
                .execute("DELETE FROM leases WHERE name = ?1 AND holder = ?2", params![name, holder])
                .map_err(backend)?;
            Ok(())
        })
        .await
    }
}
