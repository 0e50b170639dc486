//! Audit retention: records older than the retention period move to sealed JSONL archives
//! (written, synced and made read-only before the rows leave the database); the live chain
//! continues from the archive's last hash. Nothing is ever updated in place. With several
//! replicas on one store, the replica holding the `retention` lease archives, into its own
//! archive directory.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;

use jitgate_core::audit::{AuditEvent, AuditStatus};

use crate::api_audit::record_out;
use crate::replicas::Lease;
use crate::App;

/// How often retention runs (it also runs at start).
const EVERY: Duration = Duration::from_secs(3600);
const CHUNK: usize = 10_000;

pub const ARCHIVE_OP: &str = "jitgate/audit/archive/action";

pub async fn run(app: App, retention: time::Duration, dir: PathBuf, mut stop: watch::Receiver<bool>) {
    let lease = Lease::new("retention", app.config.lease_ttl);
    // When this replica last archived (`None`: not yet, so at once when it holds the lease).
    let mut last: Option<tokio::time::Instant> = None;
    loop {
        if lease.hold(&app).await && last.is_none_or(|t| t.elapsed() >= EVERY) {
            last = Some(tokio::time::Instant::now());
            match archive_once(&app, retention, &dir).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(records = n, dir = %dir.display(), "audit records archived"),
                Err(e) => tracing::error!(error = %e, "audit archiving failed; the records stay in the live log"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(lease.every()) => {}
            _ = stop.changed() => break,
        }
    }
    lease.release(&app).await;
}

/// Archives everything older than `retention`; returns how many records moved.
pub async fn archive_once(app: &App, retention: time::Duration, dir: &Path) -> Result<usize, String> {
    let cutoff = app.clock.now() - retention;
    let mut moved = 0;
    loop {
        let records = app.store.audit_before(cutoff, CHUNK).await.map_err(|e| e.to_string())?;
        let (Some(first), Some(last)) = (records.first(), records.last()) else { return Ok(moved) };
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let name = format!("audit-{:012}-{:012}.jsonl", first.seq, last.seq);
        let path = dir.join(&name);
        let mut text = String::new();
        for r in &records {
            text.push_str(&serde_json::to_string(&record_out(r)).map_err(|e| e.to_string())?);
            text.push('\n');
        }
        text.push_str(
            &serde_json::json!({"sealed": true, "throughSequence": last.seq, "lastHash": hex::encode(last.hash)})
                .to_string(),
        );
        text.push('\n');
        // Written under a temporary name, synced and sealed read-only, then renamed: an archive
        // is never seen half-written.
        let tmp = dir.join(format!(".{name}.tmp"));
        let write = || -> std::io::Result<()> {
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            // Readable by the server's user only, whatever the umask.
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts.open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            let mut perms = f.metadata()?.permissions();
            perms.set_readonly(true);
            std::fs::set_permissions(&tmp, perms)?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(dir)?.sync_all()
        };
        write().map_err(|e| format!("{}: {e}", path.display()))?;
        let event = AuditEvent {
            time: app.clock.now(),
            operation: ARCHIVE_OP.into(),
            status: AuditStatus::Started,
            caller: "jitgate".into(),
            caller_ip: None,
            resource_id: "/audit".into(),
            correlation_id: format!("archive-{}", last.seq),
            properties: Default::default(),
        };
        moved += app.store.seal_archive(last.seq, last.hash, &name, event).await.map_err(|e| e.to_string())?;
    }
}
