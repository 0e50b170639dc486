//! Waiting for enforcement: `?wait=applied` holds an answer until every agent enforcing the
//! VMs has applied the change (or reports nftables unusable), within a timeout.

use crate::{ApiError, App, EnforcementWait};

/// How long `?wait=applied` lets a burst of agents' reports settle before it looks again.
const APPLIED_SETTLE: std::time::Duration = std::time::Duration::from_millis(5);

impl App {
    /// Waits until every agent enforcing `vm_ids` has applied `revision` (or a later one).
    /// Returns the agents waited for (none: no enforcement point).
    pub async fn wait_applied(
        &self,
        vm_ids: &[String],
        revision: u64,
        timeout: std::time::Duration,
    ) -> Result<Result<Vec<String>, EnforcementWait>, ApiError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.applied.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let agents = self.store.agents_for_vms(vm_ids).await?;
            let mut waiting = Vec::new();
            for a in &agents {
                if a.applied_revision < revision {
                    waiting.push(a.name.clone());
                } else if a.nft_usable == Some(false) {
                    let error = a.nft_error.clone().unwrap_or_else(|| "nftables unusable".into());
                    return Ok(Err(EnforcementWait::Failed { agent: a.name.clone(), error }));
                }
            }
            if waiting.is_empty() {
                return Ok(Ok(agents.into_iter().map(|a| a.name).collect()));
            }
            tokio::select! {
                _ = notified => {
                    // Reports come in bursts (every agent of a change at once): one look after
                    // the burst instead of one per report.
                    tokio::time::sleep(APPLIED_SETTLE.min(deadline.saturating_duration_since(tokio::time::Instant::now()))).await;
                }
                // Looks again now and then, should a report on another replica go unheard.
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                _ = tokio::time::sleep_until(deadline) => return Ok(Err(EnforcementWait::TimedOut(waiting))),
            }
        }
    }
}
