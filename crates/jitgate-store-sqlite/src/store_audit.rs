//! The SQLite store: the audit log: records, queries, verification and sealed archives.

use super::*;

#[async_trait]
impl AuditStore for SqliteStore {
    async fn record(&self, event: AuditEvent) -> StoreResult<()> {
        self.write(move |ctx| ctx.audit(&event).map(|_| ()).map_err(backend)).await
    }

    async fn record_many(&self, events: Vec<AuditEvent>) -> StoreResult<()> {
        self.write(move |ctx| {
            for e in &events {
                ctx.audit(e).map_err(backend)?;
            }
            Ok(())
        })
        .await
    }

    async fn audit_records(&self, after: u64, limit: usize) -> StoreResult<Vec<AuditRecord>> {
        self.read(move |c| {
            c.prepare_cached("SELECT * FROM audit WHERE seq > ?1 ORDER BY seq LIMIT ?2")?
                .query_map(params![after as i64, limit as i64], rows::audit_from_row)?
                .collect()
        })
        .await
    }

    async fn query_audit(&self, filter: &AuditFilter, after: u64, limit: usize) -> StoreResult<Vec<AuditRecord>> {
        let filter = filter.clone();
        self.read(move |c| auditq::query(c, &filter, after, limit)).await
    }

    async fn verify_audit(&self) -> StoreResult<AuditVerification> {
        self.read(auditq::verify).await
    }

    async fn audit_before(&self, before: OffsetDateTime, limit: usize) -> StoreResult<Vec<AuditRecord>> {
        self.read(move |c| auditq::before(c, nanos(before), limit)).await
    }

    async fn seal_archive(
        &self,
        through_seq: u64,
        last_hash: [u8; 32],
        file: &str,
        audit: AuditEvent,
    ) -> StoreResult<usize> {
        let file = file.to_owned();
        self.write(move |ctx| {
            let stored: Option<String> = ctx
                .conn
                .query_row("SELECT hash FROM audit WHERE seq = ?1", [through_seq as i64], |r| r.get(0))
                .optional()
                .map_err(backend)?;
            if stored.as_deref() != Some(hex::encode(last_hash).as_str()) {
                return Err(backend(format!(
                    "audit record {through_seq} does not carry the archive's last hash; nothing archived"
                )));
            }
            let removed =
                ctx.conn.execute("DELETE FROM audit WHERE seq <= ?1", [through_seq as i64]).map_err(backend)?;
            ctx.conn
                .execute(
                    "INSERT INTO audit_archive (through_seq, last_hash, file, archived) VALUES (?1, ?2, ?3, ?4)",
                    params![through_seq as i64, hex::encode(last_hash), file, nanos(audit.time)],
                )
                .map_err(backend)?;
            let event = audit
                .succeeded()
                .with("throughSeq", through_seq.to_string())
                .with("records", removed.to_string())
                .with("file", file.clone());
            ctx.audit(&event).map_err(backend)?;
            Ok(removed)
        })
        .await
    }

    /// The database answers, and the writer can still make changes durable (after a failed
    /// fsync it cannot until a restart: the server is then not ready).
    async fn ping(&self) -> StoreResult<()> {
        self.read(|c| c.query_row("SELECT 1", [], |_| Ok(()))).await?;
        self.durability.check()
    }

    fn observe_commits(&self, observer: Arc<dyn jitgate_store::observe::CommitObserver>) {
        self.observer.set(observer);
    }
}
