//! Several replicas on one database: the signals other replicas' changes send (the triggers of
//! migration 3 notify the channel `jitgate` at commit), heard on a connection of its own, and
//! the leases of background tasks.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

use super::*;
use jitgate_store::{ReplicaStore, Signal};

/// The longest wait before the listening connection is made again.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The replica a notification came from and the signal it carries (payloads `ORIGIN|KIND`,
/// kinds `r:N`, `a`, `d`, `g`); anything else is ignored.
pub(crate) fn parse(payload: &str) -> Option<(&str, Signal)> {
    let (origin, kind) = payload.split_once('|')?;
    Some((origin, kind_of(kind)?))
}

fn kind_of(kind: &str) -> Option<Signal> {
    match kind {
        "a" => Some(Signal::Applied),
        "d" => Some(Signal::Deliveries),
        "g" => Some(Signal::Roles),
        _ => kind.strip_prefix("r:").and_then(|r| r.parse().ok()).map(Signal::Changed),
    }
}

impl PgStore {
    /// Listens on one connection until it fails or `to` closes; returns whether `to` closed.
    async fn listen_once(&self, to: &mpsc::Sender<Signal>) -> Result<bool, tokio_postgres::Error> {
        let (client, mut conn) = self.config.connect(NoTls).await?;
        let (heard_tx, mut heard) = mpsc::unbounded_channel::<String>();
        // The connection is driven here; its notifications go to `heard`.
        let driver = tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(n))) => {
                        if heard_tx.send(n.payload().to_owned()).is_err() {
                            return Ok(());
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e),
                    None => return Ok(()),
                }
            }
        });
        let _abort = AbortOnDrop(driver);
        client.batch_execute("LISTEN jitgate").await?;
        // Whatever committed before LISTEN took effect was not heard: everything looks again.
        if to.send(Signal::Resync).await.is_err() {
            return Ok(true);
        }
        loop {
            tokio::select! {
                payload = heard.recv() => {
                    let Some(payload) = payload else { return Ok(false) };
                    let Some((origin, signal)) = parse(&payload) else { continue };
                    // This store's own changes were announced where they were made.
                    if origin == &*self.origin {
                        continue;
                    }
                    if let Signal::Changed(r) = signal {
                        // Older news wakes nothing.
                        if !self.changes.send_if_modified(|v| { let newer = r > *v; if newer { *v = r; } newer }) {
                            continue;
                        }
                    }
                    if to.send(signal).await.is_err() {
                        return Ok(true);
                    }
                }
                _ = to.closed() => return Ok(true),
            }
        }
    }
}

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[async_trait]
impl ReplicaStore for PgStore {
    async fn listen(&self, to: mpsc::Sender<Signal>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.listen_once(&to).await {
                Ok(true) => return,
                Ok(false) => tracing::warn!("the database closed the connection listening for other replicas' changes"),
                Err(e) => {
                    tracing::warn!(error = %describe(&e), "not listening for other replicas' changes; trying again")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = to.closed() => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        now: OffsetDateTime,
        until: OffsetDateTime,
    ) -> StoreResult<bool> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.write(move |ctx| {
            Box::pin(async move {
                let held = ctx
                    .db
                    .exec(
                        "INSERT INTO leases (name, holder, expires) VALUES ($1, $2, $3) \
                         ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires = EXCLUDED.expires \
                         WHERE leases.holder = EXCLUDED.holder OR leases.expires <= $4",
                        &[&name, &holder, &nanos(until), &nanos(now)],
                    )
                    .await?;
                Ok(held == 1)
            })
        })
        .await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> StoreResult<()> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.write(move |ctx| {
            Box::pin(async move {
                ctx.db.exec("DELETE FROM leases WHERE name = $1 AND holder = $2", &[&name, &holder]).await?;
                Ok(())
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_become_signals_and_the_rest_is_ignored() {
        assert_eq!(parse("ab12|r:42"), Some(("ab12", Signal::Changed(42))));
        assert_eq!(parse("|a"), Some(("", Signal::Applied)));
        assert_eq!(parse("x|d"), Some(("x", Signal::Deliveries)));
        assert_eq!(parse("x|g"), Some(("x", Signal::Roles)));
        for other in ["", "r:4", "a", "x|", "x|r:", "x|r:x", "x|r:-1", "x|z", "x|A"] {
            assert_eq!(parse(other), None, "{other}");
        }
    }
}
