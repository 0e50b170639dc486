//! The PostgreSQL store: the audit log: records, queries, verification and sealed archives.

use super::*;

#[async_trait]
impl AuditStore for PgStore {
    async fn record(&self, event: AuditEvent) -> StoreResult<()> {
        self.write(move |ctx| {
            Box::pin(async move {
                ctx.audit(event);
                Ok(())
            })
        })
        .await
    }

    async fn record_many(&self, events: Vec<AuditEvent>) -> StoreResult<()> {
        self.write(move |ctx| {
            Box::pin(async move {
                for e in events {
                    ctx.audit(e);
                }
                Ok(())
            })
        })
        .await
    }

    async fn audit_records(&self, after: u64, limit: usize) -> StoreResult<Vec<AuditRecord>> {
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        self.read(move |db| {
            Box::pin(async move {
                db.rows("SELECT * FROM audit WHERE seq > $1 ORDER BY seq LIMIT $2", &[&after, &rows::big(limit)])
                    .await?
                    .iter()
                    .map(rows::audit_from_row)
                    .collect()
            })
        })
        .await
    }

    async fn query_audit(&self, filter: &AuditFilter, after: u64, limit: usize) -> StoreResult<Vec<AuditRecord>> {
        let filter = filter.clone();
        self.read(move |db| Box::pin(async move { auditq::query(db, &filter, after, limit).await })).await
    }

    async fn verify_audit(&self) -> StoreResult<AuditVerification> {
        self.read(|db| Box::pin(auditq::verify(db))).await
    }

    async fn audit_before(&self, before: OffsetDateTime, limit: usize) -> StoreResult<Vec<AuditRecord>> {
        self.read(move |db| Box::pin(auditq::before(db, nanos(before), limit))).await
    }

    async fn seal_archive(
        &self,
        through_seq: u64,
        last_hash: [u8; 32],
        file: &str,
        audit: AuditEvent,
    ) -> StoreResult<usize> {
        let file = file.to_owned();
        let through = i64::try_from(through_seq).unwrap_or(i64::MAX);
        self.write(move |ctx| {
            Box::pin(async move {
                let stored = ctx.db.opt("SELECT hash FROM audit WHERE seq = $1 FOR UPDATE", &[&through]).await?;
                let stored: Option<String> = stored.map(|r| r.try_get(0)).transpose()?;
                if stored.as_deref() != Some(hex::encode(last_hash).as_str()) {
                    return Err(Error::Store(backend(format!(
                        "audit record {through_seq} does not carry the archive's last hash; nothing archived"
                    ))));
                }
                let removed = ctx.db.exec("DELETE FROM audit WHERE seq <= $1", &[&through]).await?;
                ctx.db
                    .exec(
                        "INSERT INTO audit_archive (through_seq, last_hash, file, archived) VALUES ($1, $2, $3, $4)",
                        &[&through, &hex::encode(last_hash), &file, &nanos(audit.time)],
                    )
                    .await?;
                let event = audit
                    .succeeded()
                    .with("throughSeq", through_seq.to_string())
                    .with("records", removed.to_string())
                    .with("file", file.clone());
                ctx.audit(event);
                Ok(usize::try_from(removed).unwrap_or(usize::MAX))
            })
        })
        .await
    }

    async fn ping(&self) -> StoreResult<()> {
        self.read(|db| {
            Box::pin(async move {
                db.one("SELECT 1", &[]).await?;
                Ok(())
            })
        })
        .await
    }

    fn observe_commits(&self, observer: Arc<dyn jitgate_store::observe::CommitObserver>) {
        self.observer.set(observer);
    }
}
