//! The PostgreSQL store: webhooks and their deliveries (the outbox).

use super::*;

#[async_trait]
impl WebhookStore for PgStore {
    async fn create_webhook(&self, hook: Webhook, audit: AuditEvent) -> StoreResult<Webhook> {
        let keys = self.keys.clone();
        self.write(move |ctx| {
            Box::pin(async move {
                hooks::insert(&ctx.db, &hook, &keys).await?;
                let event = outbox::webhook_created(
                    audit,
                    &hook.id,
                    &hook.url,
                    hook.subscription.as_deref(),
                    hook.principal.as_deref(),
                );
                ctx.audit(event);
                hooks::hook(&ctx.db, &hook.id, &keys)
                    .await?
                    .ok_or_else(|| Error::Corrupt("the webhook vanished".into()))
            })
        })
        .await
    }

    async fn list_webhooks(&self) -> StoreResult<Vec<Webhook>> {
        let keys = self.keys.clone();
        self.read(move |db| {
            Box::pin(async move {
                db.rows("SELECT * FROM webhooks ORDER BY created, id", &[])
                    .await?
                    .iter()
                    .map(|r| hooks::hook_from_row(r, &keys))
                    .collect()
            })
        })
        .await
    }

    async fn get_webhook(&self, id: &str) -> StoreResult<Option<Webhook>> {
        let (id, keys) = (id.to_owned(), self.keys.clone());
        self.read(move |db| Box::pin(async move { hooks::hook(db, &id, &keys).await })).await
    }

    async fn delete_webhook(&self, id: &str, audit: AuditEvent) -> StoreResult<Webhook> {
        let (id, keys) = (id.to_owned(), self.keys.clone());
        self.write(move |ctx| {
            Box::pin(async move {
                ctx.db.opt("SELECT id FROM webhooks WHERE id = $1 FOR UPDATE", &[&id]).await?;
                let Some(h) = hooks::hook(&ctx.db, &id, &keys).await? else {
                    return reject(ctx, audit, outbox::webhook_not_found(&id));
                };
                ctx.db.exec("DELETE FROM deliveries WHERE webhook_id = $1 AND state = 'Pending'", &[&id]).await?;
                ctx.db.exec("DELETE FROM webhooks WHERE id = $1", &[&id]).await?;
                ctx.audit(audit.succeeded().with("webhookId", id.clone()));
                Ok(h)
            })
        })
        .await
    }

    /// Claims due deliveries with `FOR UPDATE SKIP LOCKED`: workers on several replicas each
    /// take different rows, never the same one twice.
    async fn claim_deliveries(
        &self,
        now: OffsetDateTime,
        lease_until: OffsetDateTime,
        limit: usize,
    ) -> StoreResult<Vec<Delivery>> {
        let keys = self.keys.clone();
        self.write(move |ctx| {
            Box::pin(async move {
                let claimed: Vec<i64> = ctx
                    .db
                    .rows(
                        "UPDATE deliveries SET next_attempt = $3 WHERE id IN (SELECT id FROM deliveries \
                         WHERE state = 'Pending' AND next_attempt <= $1 ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED) \
                         RETURNING id",
                        &[&nanos(now), &rows::big(limit), &nanos(lease_until)],
                    )
                    .await?
                    .iter()
                    .map(|r| r.try_get(0))
                    .collect::<Result<_, _>>()?;
                ctx.db
                    .rows(&format!("{} WHERE d.id = ANY($1) ORDER BY d.id", hooks::DELIVERY_SELECT), &[&claimed])
                    .await?
                    .iter()
                    .map(|r| hooks::delivery_from_row(r, &keys))
                    .collect()
            })
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
            Box::pin(async move {
                let (state, next_at) = outbox::attempted(ok, next, now);
                let next_at = nanos(next_at);
                let delivered = ok.then_some(nanos(now));
                ctx.db
                    .exec(
                        "UPDATE deliveries SET state = $2, attempts = attempts + 1, next_attempt = $3, last_error = $4, \
                         delivered = coalesce($5, delivered) WHERE id = $1",
                        &[&id, &state, &next_at, &error, &delivered],
                    )
                    .await?;
                Ok(())
            })
        })
        .await
    }

    async fn list_deliveries(&self, webhook_id: &str, limit: usize) -> StoreResult<Vec<Delivery>> {
        let (id, keys) = (webhook_id.to_owned(), self.keys.clone());
        self.read(move |db| {
            Box::pin(async move {
                db.rows(
                    &format!("{} WHERE d.webhook_id = $1 ORDER BY d.id DESC LIMIT $2", hooks::DELIVERY_SELECT),
                    &[&id, &rows::big(limit)],
                )
                .await?
                .iter()
                .map(|r| hooks::delivery_from_row(r, &keys))
                .collect()
            })
        })
        .await
    }

    async fn next_delivery(&self) -> StoreResult<Option<OffsetDateTime>> {
        self.read(|db| {
            Box::pin(async move {
                let n: Option<i64> = db
                    .one("SELECT min(next_attempt) FROM deliveries WHERE state = 'Pending'", &[])
                    .await?
                    .try_get(0)?;
                n.map(from_nanos).transpose()
            })
        })
        .await
    }

    async fn pending_deliveries(&self) -> StoreResult<u64> {
        self.read(|db| {
            Box::pin(async move {
                let n: i64 =
                    db.one("SELECT count(*) FROM deliveries WHERE state = 'Pending'", &[]).await?.try_get(0)?;
                Ok(u64::try_from(n).unwrap_or(0))
            })
        })
        .await
    }
}
