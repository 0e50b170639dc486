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
        // The agents enforcing the VMs, found once; then only those still waited for are read
        // again (by id: one short read per look, however many VMs the change touched). Should
        // one of them be gone (removed, or its VM taken over), the VMs' agents are found again.
        let mut agents: Option<Vec<jitgate_store::AgentRecord>> = None;
        let mut waiting: Vec<String> = Vec::new();
        loop {
            let notified = self.applied.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let looked = match &mut agents {
                Some(all) if !waiting.is_empty() => {
                    let again = self.store.get_agents(&waiting).await?;
                    if again.len() == waiting.len() {
                        let mut again: std::collections::HashMap<String, _> =
                            again.into_iter().map(|a| (a.id.clone(), a)).collect();
                        for known in all.iter_mut() {
                            if let Some(a) = again.remove(&known.id) {
                                *known = a;
                            }
                        }
                        true
                    } else {
                        false
                    }
                }
                _ => false,
            };
            if !looked {
                agents = Some(self.store.agents_for_vms(vm_ids).await?);
            }
            let all = agents.as_deref().unwrap_or_default();
            waiting.clear();
            for a in all {
                if a.applied_revision < revision {
                    waiting.push(a.id.clone());
                } else if a.nft_usable == Some(false) {
                    let error = a.nft_error.clone().unwrap_or_else(|| "nftables unusable".into());
                    return Ok(Err(EnforcementWait::Failed { agent: a.name.clone(), error }));
                }
            }
            if waiting.is_empty() {
                return Ok(Ok(all.iter().map(|a| a.name.clone()).collect()));
            }
            tokio::select! {
                _ = notified => {
                    // Reports come in bursts (every agent of a change at once): one look after
                    // the burst instead of one per report.
                    tokio::time::sleep(APPLIED_SETTLE.min(deadline.saturating_duration_since(tokio::time::Instant::now()))).await;
                }
                // Looks again now and then, should a report on another replica go unheard.
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                _ = tokio::time::sleep_until(deadline) => {
                    let names = all.iter().filter(|a| waiting.contains(&a.id)).map(|a| a.name.clone()).collect();
                    return Ok(Err(EnforcementWait::TimedOut(names)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may panic on a failed expectation.

    use std::sync::Arc;
    use std::time::Duration;

    use jitgate_core::enforcement::{AgentMode, JoiningAgent};
    use jitgate_core::OsType;
    use jitgate_store::conformance::event;
    use jitgate_store::{AgentJoin, AgentReport, AgentStore, JoinTokenSpec};

    use crate::{App, EnforcementWait, ServerConfig, SystemClock};

    /// An app on a fresh store with host agents `names` joined; their VMs' ids, in order.
    async fn with_agents(dir: &std::path::Path, names: &[&str]) -> (App, Vec<String>) {
        let keys = jitgate_store::secrets::Keyring::generate().expect("keys");
        let store = Arc::new(jitgate_store_sqlite::SqliteStore::open(&dir.join("db"), keys).expect("store"));
        let now = time::OffsetDateTime::now_utc();
        let mut vms = Vec::new();
        for name in names {
            let spec = JoinTokenSpec {
                subscription: "5b4f3a2e-1d0c-4b9a-8f7e-6d5c4b3a2f1e".into(),
                resource_group: "waits".into(),
                location: "westeurope".into(),
                mode: AgentMode::Host,
                expires: now + time::Duration::hours(1),
                vm: None,
            };
            store.create_join_token(spec, &format!("jt-{name}"), event("token")).await.expect("token");
            let join = AgentJoin {
                token_hash: format!("jt-{name}"),
                credential_hash: format!("cred-{name}"),
                id: format!("id-{name}"),
                agent: JoiningAgent {
                    name: (*name).into(),
                    mode: AgentMode::Host,
                    os_type: OsType::Linux,
                    addresses: vec!["10.1.0.5".parse().expect("ip")],
                    public_address: None,
                    hostname: (*name).into(),
                    name_is_hostname: false,
                },
                now,
            };
            let agent = store.join_agent(join, event("join")).await.expect("join");
            vms.push(agent.vm_id.expect("a host agent's VM"));
        }
        let app = App::new(store, Arc::new(SystemClock), ServerConfig::default());
        (app, vms)
    }

    /// The result of a wait, as its task ends.
    type Waited = Result<Result<Vec<String>, EnforcementWait>, crate::ApiError>;

    /// Host agents `names` joined on a fresh store, and a wait (in a task of its own, at most
    /// `timeout`) for their VMs to apply the store's current revision; that revision.
    async fn waiting_for(
        dir: &std::path::Path,
        names: &[&str],
        timeout: Duration,
    ) -> (App, u64, tokio::task::JoinHandle<Waited>) {
        let (app, vms) = with_agents(dir, names).await;
        let revision = app.store.revision().await.expect("revision");
        let waiter = {
            let app = app.clone();
            tokio::spawn(async move { app.wait_applied(&vms, revision, timeout).await })
        };
        (app, revision, waiter)
    }

    /// Delivers `revision` to the agent `name` and records its report of it.
    async fn report(app: &App, name: &str, revision: u64) {
        let id = format!("id-{name}");
        app.store.agent_delivered(&id, revision).await.expect("delivered");
        let report = AgentReport { revision, nft_usable: true, nft_error: None, now: time::OffsetDateTime::now_utc() };
        app.store.agent_report(&id, report).await.expect("report");
        app.applied.notify_waiters();
    }

    #[tokio::test]
    async fn a_wait_ends_when_the_last_agent_it_waits_for_has_applied() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (app, revision, waiter) = waiting_for(dir.path(), &["w1", "w2", "w3"], Duration::from_secs(20)).await;
        report(&app, "w1", revision).await;
        report(&app, "w3", revision).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(!waiter.is_finished(), "w2 has not applied the revision yet");
        report(&app, "w2", revision).await;
        let applied = waiter.await.expect("the wait").expect("no API error").expect("applied");
        assert_eq!(applied, ["w1", "w2", "w3"], "every agent, in the order of the VMs");
    }

    #[tokio::test]
    async fn an_agent_removed_during_a_wait_is_no_longer_waited_for() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (app, revision, waiter) = waiting_for(dir.path(), &["r1", "r2"], Duration::from_secs(20)).await;
        report(&app, "r1", revision).await;
        app.store.delete_agent("id-r2", event("delete")).await.expect("delete");
        app.applied.notify_waiters();
        let applied = waiter.await.expect("the wait").expect("no API error").expect("applied");
        assert_eq!(applied, ["r1"], "the VM whose agent was removed has none to wait for");
    }

    #[tokio::test]
    async fn a_wait_that_times_out_names_only_the_agents_still_waited_for() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (app, revision, waiter) = waiting_for(dir.path(), &["t1", "t2", "t3"], Duration::from_millis(300)).await;
        report(&app, "t2", revision).await;
        match waiter.await.expect("the wait").expect("no API error") {
            Err(EnforcementWait::TimedOut(names)) => assert_eq!(names, ["t1", "t3"]),
            other => panic!("expected a timeout naming t1 and t3, got {other:?}"),
        }
    }
}
