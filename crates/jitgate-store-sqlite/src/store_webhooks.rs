//! The SQLite store: webhooks and their deliveries (the outbox).

use super::*;

#[async_trait]
impl WebhookStore for SqliteStore {
    async fn create_webhook(&self, hook: Webhook, audit: AuditEvent) -> StoreResult<Webhook> {
        let keys = self.keys.clone();
        self.write(move |ctx| {
            hooks::insert(ctx.conn, &hook, &keys).map_err(backend)?;
            let event = outbox::webhook_created(
                audit,
                &hook.id,
                &hook.url,
                hook.subscription.as_deref(),
                hook.principal.as_deref(),
            );
            ctx.audit(&event).map_err(backend)?;
            hooks::hook(ctx.conn, &hook.id, &keys).map_err(backend)?.ok_or_else(|| backend("the webhook vanished"))
        })
        .await
    }

    async fn list_webhooks(&self) -> StoreResult<Vec<Webhook>> {
        let keys = self.keys.clone();
        self.read(move |c| {
            c.prepare_cached("SELECT * FROM webhooks ORDER BY created")?
                .query_map([], |r| hooks::hook_from_row(r, &keys))?
                .collect()
        })
        .await
    }

    async fn get_webhook(&self, id: &str) -> StoreResult<Option<Webhook>> {
        let (id, keys) = (id.to_owned(), self.keys.clone());
        self.read(move |c| hooks::hook(c, &id, &keys)).await
    }

    async fn delete_webhook(&self, id: &str, audit: AuditEvent) -> StoreResult<Webhook> {
        let (id, keys) = (id.to_owned(), self.keys.clone());
        self.write(move |ctx| {
            let Some(h) = hooks::hook(ctx.conn, &id, &keys).map_err(backend)? else {
                return reject(ctx, audit, outbox::webhook_not_found(&id));
            };
            ctx.conn
                .execute("DELETE FROM deliveries WHERE webhook_id = ?1 AND state = 'Pending'", [&id])
                .map_err(backend)?;
            ctx.conn.execute("DELETE FROM webhooks WHERE id = ?1", [&id]).map_err(backend)?;
            ctx.audit(&audit.succeeded().with("webhookId", id.clone())).map_err(backend)?;
            Ok(h)
        })
        .await
    }

    async fn claim_deliveries(
        &self,
        now: OffsetDateTime,
        lease_until: OffsetDateTime,
        limit: usize,
    ) -> StoreResult<Vec<Delivery>> {
        let keys = self.keys.clone();
        self.write(move |ctx| {
            let due: Vec<Delivery> = ctx
                .conn
                .prepare_cached(&format!(
                    "{} WHERE d.state = 'Pending' AND d.next_attempt <= ?1 ORDER BY d.id LIMIT ?2",
                    hooks::DELIVERY_SELECT
                ))
                .and_then(|mut st| {
                    st.query_map(params![nanos(now), limit as i64], |r| hooks::delivery_from_row(r, &keys))?
                        .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(backend)?;
            let mut lease = ctx
                .conn
                .prepare_cached("UPDATE deliveries SET next_attempt = ?2 WHERE id = ?1 AND state = 'Pending'")
                .map_err(backend)?;
            for d in &due {
                lease.execute(params![d.id, nanos(lease_until)]).map_err(backend)?;
            }
            Ok(due)
        })
        .await
    }

    async fn delivery_attempted(
        &self,
        id: i64,
        ok: bool,
        error: Option<String>,
        next: Option<OffsetDateTime>,
        now: OffsetDateTime,
    ) -> StoreResult<()> {
        self.write(move |ctx| {
            let (state, next_at) = outbox::attempted(ok, next, now);
            let next_at = nanos(next_at);
            ctx.conn
                .execute(
                    "UPDATE deliveries SET state = ?2, attempts = attempts + 1, next_attempt = ?3, last_error = ?4, \
                     delivered = CASE WHEN ?2 = 'Delivered' THEN ?5 ELSE delivered END WHERE id = ?1",
                    params![id, state, next_at, error, nanos(now)],
                )
                .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn list_deliveries(&self, webhook_id: &str, limit: usize) -> StoreResult<Vec<Delivery>> {
        let (id, keys) = (webhook_id.to_owned(), self.keys.clone());
        self.read(move |c| {
            c.prepare_cached(&format!(
                "{} WHERE d.webhook_id = ?1 ORDER BY d.id DESC LIMIT ?2",
                hooks::DELIVERY_SELECT
            ))?
            .query_map(params![id, limit as i64], |r| hooks::delivery_from_row(r, &keys))?
            .collect()
        })
        .await
    }

    async fn next_delivery(&self) -> StoreResult<Option<OffsetDateTime>> {
        self.read(|c| {
            let n: Option<i64> = c
                .prepare_cached("SELECT min(next_attempt) FROM deliveries WHERE state = 'Pending'")?
                .query_row([], |r| r.get(0))?;
            n.map(from_nanos).transpose()
        })
        .await
    }

    async fn pending_deliveries(&self) -> StoreResult<u64> {
        self.read(|c| {
            let n: i64 = c
                .prepare_cached("SELECT count(*) FROM deliveries WHERE state = 'Pending'")?
                .query_row([], |r| r.get(0))?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
        .await
    }
}
