//! The agent loop against a fake control plane and the fake firewall, on a paused clock.

use std::time::Duration;

use jitgate_api_types::agent::{GrantOut, JoinOut, PortOut, RotateOut};
use jitgate_enforce::fake::{FakeFirewall, FakeHandle};
use jitgate_enforce::{GrantKey, L4};
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio::task::JoinHandle;
use tokio::time::Instant as TokioInstant;

use super::*;

mod outage;

#[derive(Debug)]
enum Call {
    Join(JoinIn),
    Rotate(String),
    State { credential: String, after: Option<u64>, at: TokioInstant },
    Applied { credential: String, report: AppliedIn },
}

/// The server as a script: each long-poll takes the next answer from `answers` (and is held
/// until there is one); every call is told to the test.
struct FakeControl {
    answers: Mutex<mpsc::UnboundedReceiver<Result<StateOut, CallError>>>,
    calls: mpsc::UnboundedSender<Call>,
}

impl Control for FakeControl {
    async fn join(&self, body: &JoinIn) -> Result<JoinOut, CallError> {
        let _ = self.calls.send(Call::Join(JoinIn { ..clone_join(body) }));
        Ok(JoinOut {
            agent_id: "agent-1".into(),
            credential: "cred-1".into(),
            name: body.name.clone(),
            mode: body.mode.clone(),
            subscription: "sub".into(),
            resource_group: "rg".into(),
            location: "westeurope".into(),
            vm_id: None,
        })
    }

    async fn rotate(&self, credential: &str) -> Result<RotateOut, CallError> {
        let _ = self.calls.send(Call::Rotate(credential.to_owned()));
        Ok(RotateOut { agent_id: "agent-1".into(), credential: "cred-2".into() })
    }

    async fn state(&self, credential: &str, after: Option<u64>, _wait: Duration) -> Result<StateOut, CallError> {
        let _ = self.calls.send(Call::State { credential: credential.to_owned(), after, at: TokioInstant::now() });
        match self.answers.lock().await.recv().await {
            Some(answer) => answer,
            None => std::future::pending().await,
        }
    }

    async fn applied(&self, credential: &str, report: &AppliedIn) -> Result<(), CallError> {
        let report = AppliedIn {
            revision: report.revision,
            nftables_usable: report.nftables_usable,
            nftables_error: report.nftables_error.clone(),
        };
        let _ = self.calls.send(Call::Applied { credential: credential.to_owned(), report });
        Ok(())
    }
}

fn clone_join(b: &JoinIn) -> JoinIn {
    JoinIn {
        join_token: b.join_token.clone(),
        name: b.name.clone(),
        mode: b.mode.clone(),
        os_type: b.os_type.clone(),
        addresses: b.addresses.clone(),
        public_address: b.public_address.clone(),
        hostname: b.hostname.clone(),
        name_is_hostname: b.name_is_hostname,
    }
}

fn config(dir: &Path, join_token: Option<&str>) -> AgentConfig {
    AgentConfig {
        servers: join_token.map(|_| "https://jit.example:8443/".to_owned()).into_iter().collect(),
        join_token: join_token.map(str::to_owned),
        ca_cert: None,
        pins: Vec::new(),
        state_dir: dir.to_owned(),
        mode: Mode::Host,
        vm_name: Some("vm1".into()),
        public_address: None,
        poll_wait: Duration::from_secs(30),
        rotate_credential: false,
        metrics: Default::default(),
    }
}

/// One running agent.
struct Agent {
    answers: mpsc::UnboundedSender<Result<StateOut, CallError>>,
    calls: mpsc::UnboundedReceiver<Call>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), AgentError>>,
}

impl Agent {
    fn start(cfg: AgentConfig, fw: FakeFirewall) -> Agent {
        let (answers, answers_rx) = mpsc::unbounded_channel();
        let (calls_tx, calls) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let control = FakeControl { answers: Mutex::new(answers_rx), calls: calls_tx };
        let task = tokio::spawn(async move {
            run_with(cfg, &control, fw, async {
                let _ = stopped.await;
            })
            .await
        });
        Agent { answers, calls, stop: Some(stop), task }
    }

    fn answer(&self, a: Result<StateOut, CallError>) {
        self.answers.send(a).expect("the agent is running");
    }

    async fn next(&mut self) -> Call {
        self.calls.recv().await.expect("a call")
    }

    /// The next long-poll: (credential, after, when).
    async fn poll(&mut self) -> (String, Option<u64>, TokioInstant) {
        match self.next().await {
            Call::State { credential, after, at } => (credential, after, at),
            other => panic!("expected a long-poll, got {other:?}"),
        }
    }

    async fn report(&mut self) -> AppliedIn {
        match self.next().await {
            Call::Applied { report, .. } => report,
            other => panic!("expected a report, got {other:?}"),
        }
    }

    async fn stop(mut self) -> Result<(), AgentError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.expect("the agent task")
    }
}

fn firewall() -> (FakeFirewall, FakeHandle) {
    let fw = FakeFirewall::new(|| TokioInstant::now().into_std());
    let h = fw.handle();
    (fw, h)
}

fn key(source: &str) -> GrantKey {
    GrantKey { source: source.parse().expect("net"), dest: None, proto: L4::Tcp, port: 22 }
}

/// Port 22 protected, with a grant per (source, seconds left).
fn state(revision: u64, grants: &[(&str, u64)]) -> StateOut {
    StateOut {
        revision,
        mode: "host".into(),
        ports: vec![PortOut {
            vm_id: "vm1".into(),
            address: None,
            protocol: "TCP".into(),
            port: 22,
            cut_sessions: false,
            mapped_port: None,
        }],
        grants: grants
            .iter()
            .enumerate()
            .map(|(i, (source, secs))| GrantOut {
                request_id: i as i64 + 1,
                vm_id: "vm1".into(),
                address: None,
                protocol: "TCP".into(),
                port: 22,
                sources: vec![(*source).to_owned()],
                remaining_ms: secs * 1000,
                mapped_port: None,
            })
            .collect(),
    }
}

fn unreachable() -> Result<StateOut, CallError> {
    Err(CallError::Unreachable("connection refused".into()))
}

#[tokio::test(start_paused = true)]
async fn joins_once_applies_and_long_polls_from_the_revision_it_applied() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (fw, h) = firewall();
    let mut agent = Agent::start(config(dir.path(), Some("join-token-1")), fw);
    let Call::Join(join) = agent.next().await else { panic!("the agent joins first") };
    assert_eq!((join.join_token.as_str(), join.name.as_str(), join.mode.as_str()), ("join-token-1", "vm1", "host"));
    let stored = std::fs::read(dir.path().join(CREDENTIAL_FILE)).expect("the credential is stored");
    let stored: Credential = serde_json::from_slice(&stored).expect("credential file");
    assert_eq!((stored.credential.as_str(), stored.server.as_str()), ("cred-1", "https://jit.example:8443"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(CREDENTIAL_FILE)).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let (credential, after, _) = agent.poll().await;
    assert_eq!((credential.as_str(), after), ("cred-1", None));
    agent.answer(Ok(state(1, &[("10.0.0.1", 60)])));
    let Call::Applied { credential, report } = agent.next().await else { panic!("a report") };
    assert_eq!(credential, "cred-1");
    assert_eq!((report.revision, report.nftables_usable, report.nftables_error), (1, true, None));
    assert_eq!(h.remaining(&key("10.0.0.1/32")), Some(Duration::from_secs(60)));

    // A new grant and then a revoke: each one batch, no replacement.
    assert_eq!(agent.poll().await.1, Some(1));
    agent.answer(Ok(state(2, &[("10.0.0.1", 60), ("10.0.0.0/24", 30)])));
    assert_eq!(agent.report().await.revision, 2);
    assert!(h.allows(&key("10.0.0.0/24")));
    assert_eq!(agent.poll().await.1, Some(2));
    agent.answer(Ok(state(3, &[("10.0.0.0/24", 30)])));
    assert_eq!(agent.report().await.revision, 3);
    assert!(!h.allows(&key("10.0.0.1/32")), "revoked");
    assert_eq!(h.counts(), (1, 2));

    // The kernel closes the port when the grant's time is up, whatever the agent does.
    assert_eq!(agent.poll().await.1, Some(3));
    tokio::time::advance(Duration::from_secs(30)).await;
    assert!(!h.allows(&key("10.0.0.0/24")), "timed out");
    agent.stop().await.expect("a clean stop");

    // A second start uses the stored credential: no join.
    let (fw, _h) = firewall();
    let mut agent = Agent::start(config(dir.path(), None), fw);
    let (credential, after, _) = agent.poll().await;
    assert_eq!((credential.as_str(), after), ("cred-1", None));
    agent.stop().await.expect("a clean stop");
}

#[tokio::test(start_paused = true)]
async fn the_server_list_is_stored_at_join_and_a_later_start_with_another_list_replaces_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_answers, answers_rx) = mpsc::unbounded_channel();
    let (calls_tx, _calls) = mpsc::unbounded_channel();
    let control = FakeControl { answers: Mutex::new(answers_rx), calls: calls_tx };
    let mut cfg = config(dir.path(), Some("join-token-1"));
    cfg.servers = vec!["https://a:8443/,https://b:8443".into(), "https://c:8443".into()];
    let joined = credential(&cfg, &control).await.expect("joined");
    let all: Vec<String> = ["https://a:8443", "https://b:8443", "https://c:8443"].map(String::from).into();
    assert_eq!((joined.server.as_str(), joined.servers.as_slice()), ("https://a:8443", &all[..]));

    // A later start without --server runs on the stored list.
    let stored = stored_credential(&config(dir.path(), None)).expect("read").expect("stored");
    assert_eq!((stored.agent_id.as_str(), stored.servers.as_slice()), ("agent-1", &all[..]));
    // A start with another list runs on that list alone.
    let mut other = config(dir.path(), None);
    other.servers = vec!["https://d:8443".into()];
    let c = stored_credential(&other).expect("read").expect("stored");
    assert_eq!((c.server.as_str(), c.servers.as_slice()), ("https://d:8443", &["https://d:8443".to_owned()][..]));
    assert_eq!(c.credential, "cred-1", "the same credential: it is valid on every replica");
}

#[tokio::test(start_paused = true)]
async fn server_fingerprints_are_stored_at_join_and_a_later_start_may_replace_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_answers, answers_rx) = mpsc::unbounded_channel();
    let (calls_tx, _calls) = mpsc::unbounded_channel();
    let control = FakeControl { answers: Mutex::new(answers_rx), calls: calls_tx };
    let mut cfg = config(dir.path(), Some("join-token-1"));
    cfg.pins = vec![[0xAB; 32]];
    let joined = credential(&cfg, &control).await.expect("joined");
    assert_eq!(joined.server_fingerprints, vec![["AB"; 32].join(":")]);
    let file = std::fs::read_to_string(dir.path().join(CREDENTIAL_FILE)).expect("stored");
    assert!(file.contains("serverFingerprints"), "{file}");

    // A later start without the flag trusts the stored pins; one with it replaces them.
    let stored = stored_credential(&config(dir.path(), None)).expect("read").expect("stored");
    assert_eq!(stored.pins(dir.path()).expect("pins"), vec![[0xAB; 32]]);
    let mut other = config(dir.path(), None);
    other.pins = vec![[1; 32], [2; 32]];
    let c = stored_credential(&other).expect("read").expect("stored");
    assert_eq!(c.pins(dir.path()).expect("pins"), vec![[1; 32], [2; 32]]);
    // A stored pin that is not one is named with its file.
    let mut broken = c.clone();
    broken.server_fingerprints = vec!["zz".into()];
    let e = broken.pins(dir.path()).expect_err("not a pin").to_string();
    assert!(e.contains(CREDENTIAL_FILE) && e.contains("64 hex digits"), "{e}");
}

#[tokio::test(start_paused = true)]
async fn without_a_credential_or_a_token_the_agent_says_how_to_join() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (fw, _) = firewall();
    let mut cfg = config(dir.path(), None);
    cfg.servers = vec!["https://jit.example:8443".into()];
    let err = Agent::start(cfg, fw).stop().await.expect_err("no token");
    assert!(matches!(err, AgentError::NoJoinToken), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_rotation_stores_the_new_credential_before_polling_with_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (fw, _) = firewall();
    let mut cfg = config(dir.path(), Some("join-token-1"));
    cfg.rotate_credential = true;
    let mut agent = Agent::start(cfg, fw);
    assert!(matches!(agent.next().await, Call::Join(_)));
    assert!(matches!(agent.next().await, Call::Rotate(c) if c == "cred-1"));
    assert_eq!(agent.poll().await.0, "cred-2");
    let stored: Credential =
        serde_json::from_slice(&std::fs::read(dir.path().join(CREDENTIAL_FILE)).expect("file")).expect("json");
    assert_eq!(stored.credential, "cred-2");
    agent.stop().await.expect("a clean stop");
}

#[tokio::test(start_paused = true)]
async fn after_a_restart_the_last_state_is_restored_and_then_reconciled_by_one_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (fw, _) = firewall();
    let mut agent = Agent::start(config(dir.path(), Some("join-token-1")), fw);
    assert!(matches!(agent.next().await, Call::Join(_)));
    agent.poll().await;
    agent.answer(Ok(state(1, &[("10.0.0.1", 600)])));
    agent.report().await;
    agent.stop().await.expect("a clean stop");

    // The host restarted: the table is gone and the server cannot be reached.
    let (fw, h) = firewall();
    let mut agent = Agent::start(config(dir.path(), None), fw);
    agent.poll().await;
    assert!(h.allows(&key("10.0.0.1/32")), "restored before the server answers");
    let left = h.remaining(&key("10.0.0.1/32")).expect("live");
    assert!(left <= Duration::from_secs(600) && left > Duration::from_secs(590), "{left:?}");
    assert_eq!(h.counts(), (1, 0));
    agent.answer(unreachable());
    let (_, after, _) = agent.poll().await;
    assert_eq!(after, None, "nothing applied from the server yet");
    assert!(h.allows(&key("10.0.0.1/32")), "kept while the server is unreachable");

    // The server answers: what changed since is one batch on top of the restored table.
    agent.answer(Ok(state(4, &[("10.0.0.1", 500), ("10.0.0.2", 60)])));
    assert_eq!(agent.report().await.revision, 4);
    assert_eq!(h.counts(), (1, 1));
    assert_eq!(h.remaining(&key("10.0.0.1/32")), Some(Duration::from_secs(500)));
    assert!(h.allows(&key("10.0.0.2/32")));
    agent.stop().await.expect("a clean stop");
}

#[tokio::test(start_paused = true)]
async fn failures_back_off_doubling_up_to_the_cap_and_a_success_resets_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (fw, _) = firewall();
    let mut agent = Agent::start(config(dir.path(), Some("join-token-1")), fw);
    assert!(matches!(agent.next().await, Call::Join(_)));
    let failure = |i: usize| match i % 3 {
        0 => unreachable(),
        1 => Err(CallError::Status { status: reqwest::StatusCode::SERVICE_UNAVAILABLE, body: String::new() }),
        _ => Err(CallError::Unreadable("not JSON".into())),
    };
    let mut last = agent.poll().await.2;
    let mut gaps = Vec::new();
    for i in 0..10 {
        agent.answer(failure(i));
        let at = agent.poll().await.2;
        gaps.push((at - last).as_millis());
        last = at;
    }
    assert_eq!(gaps, [250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
    agent.answer(Ok(state(1, &[])));
    agent.report().await;
    let after_success = agent.poll().await.2;
    agent.answer(unreachable());
    assert_eq!((agent.poll().await.2 - after_success).as_millis(), 250, "reset by the success");
    agent.stop().await.expect("a clean stop");
}

/// Stops the agent while it waits out a backoff: a clean stop, at once.
async fn stop_during_backoff(agent: Agent) {
    let asked = TokioInstant::now();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let result = agent.stop().await;
    assert!(result.is_ok(), "{result:?}");
    assert!(asked.elapsed() < FIRST_BACKOFF, "stopped before the backoff ended");
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_during_backoff_is_a_clean_stop_whatever_failed() {
    for failure in [
        unreachable(),
        Err(CallError::Unreadable("not JSON".into())),
        Err(CallError::Status { status: reqwest::StatusCode::BAD_GATEWAY, body: String::new() }),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (fw, _) = firewall();
        let mut agent = Agent::start(config(dir.path(), Some("join-token-1")), fw);
        assert!(matches!(agent.next().await, Call::Join(_)));
        agent.poll().await;
        agent.answer(failure);
        stop_during_backoff(agent).await;
    }
}

#[tokio::test(start_paused = true)]
async fn an_unusable_firewall_is_reported_and_retried_with_backoff() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (fw, h) = firewall();
    h.make_unusable("the nft binary was not found");
    let mut agent = Agent::start(config(dir.path(), Some("join-token-1")), fw);
    assert!(matches!(agent.next().await, Call::Join(_)));
    agent.poll().await;
    agent.answer(Ok(state(1, &[("10.0.0.1", 60)])));
    let report = agent.report().await;
    assert_eq!(
        (report.revision, report.nftables_usable, report.nftables_error.as_deref()),
        (1, false, Some("the nft binary was not found"))
    );
    assert_eq!(h.table(), None);
    stop_during_backoff(agent).await;
}

#[tokio::test(start_paused = true)]
async fn a_failed_batch_falls_back_to_a_replacement() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (fw, h) = firewall();
    let mut agent = Agent::start(config(dir.path(), Some("join-token-1")), fw);
    assert!(matches!(agent.next().await, Call::Join(_)));
    agent.poll().await;
    agent.answer(Ok(state(1, &[])));
    agent.report().await;
    h.fail_applies(1);
    agent.poll().await;
    agent.answer(Ok(state(2, &[("10.0.0.1", 60)])));
    let report = agent.report().await;
    assert!(report.nftables_usable);
    assert_eq!(h.counts(), (2, 0));
    assert!(h.allows(&key("10.0.0.1/32")));
    agent.stop().await.expect("a clean stop");
}

#[tokio::test(start_paused = true)]
async fn a_refused_credential_stops_the_agent_with_the_way_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (fw, _) = firewall();
    let mut agent = Agent::start(config(dir.path(), Some("join-token-1")), fw);
    assert!(matches!(agent.next().await, Call::Join(_)));
    agent.poll().await;
    agent.answer(Err(CallError::Unauthorized));
    let err = agent.task.await.expect("task").expect_err("refused");
    assert!(matches!(err, AgentError::Refused { .. }));
    assert!(err.to_string().contains(&dir.path().join(CREDENTIAL_FILE).display().to_string()), "{err}");
}

/// The value of the sample `series` in an exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.parse().ok()))
}

#[tokio::test(start_paused = true)]
async fn the_metrics_count_applies_reconciles_elements_and_the_servers_answers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (fw, _h) = firewall();
    let cfg = config(dir.path(), Some("join-token-1"));
    let metrics = cfg.metrics.clone();
    let mut agent = Agent::start(cfg, fw);
    let Call::Join(_) = agent.next().await else { panic!("the agent joins first") };
    agent.poll().await;
    agent.answer(Ok(state(1, &[("10.0.0.1", 60)])));
    agent.report().await;
    agent.poll().await;
    agent.answer(Ok(state(2, &[("10.0.0.1", 60), ("10.0.0.0/24", 30)])));
    agent.report().await;
    // Nothing changed: a reconcile, but no apply.
    agent.poll().await;
    agent.answer(Ok(state(3, &[("10.0.0.1", 60), ("10.0.0.0/24", 30)])));
    agent.report().await;
    let text = metrics.render();
    for (series, value) in [
        ("jitgate_agent_applies_total{kind=\"replace\",result=\"ok\"}", 1.0),
        ("jitgate_agent_applies_total{kind=\"batch\",result=\"ok\"}", 1.0),
        ("jitgate_agent_applies_total{kind=\"batch\",result=\"failed\"}", 0.0),
        ("jitgate_agent_apply_duration_seconds_count{kind=\"batch\"}", 1.0),
        ("jitgate_agent_reconciles_total", 3.0),
        ("jitgate_agent_table_elements{kind=\"protected\"}", 1.0),
        ("jitgate_agent_table_elements{kind=\"grant\"}", 2.0),
        ("jitgate_agent_table_elements{kind=\"dnat\"}", 0.0),
        ("jitgate_agent_applied_revision", 3.0),
        ("jitgate_agent_server_reachable", 1.0),
        ("jitgate_agent_server_failures_total", 0.0),
    ] {
        assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
    }
    // The server goes away; the /24 grant's time runs out in the table.
    agent.poll().await;
    tokio::time::advance(Duration::from_secs(31)).await;
    agent.answer(unreachable());
    agent.poll().await;
    let text = metrics.render();
    assert_eq!(sample(&text, "jitgate_agent_server_reachable"), Some(0.0), "{text}");
    assert_eq!(sample(&text, "jitgate_agent_server_failures_total"), Some(1.0), "{text}");
    agent.answer(Ok(state(3, &[("10.0.0.1", 29)])));
    agent.report().await;
    let text = metrics.render();
    assert_eq!(sample(&text, "jitgate_agent_server_reachable"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "jitgate_agent_table_elements{kind=\"grant\"}"), Some(1.0), "expired: {text}");
    for name in prom::names::ALL {
        assert!(text.contains(&format!("# TYPE {name} ")), "{name} is described: {text}");
    }
    jitgate_netns::promtool::check("agent_metrics_pass_promtool", &text);
    agent.stop().await.expect("a clean stop");
}

/// A log writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn every_line_the_agent_logs_names_its_agent_id_and_vm() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt().json().with_writer(move || writer.clone()).finish();
    // Tests on other threads run the agent with no subscriber. While only one scoped subscriber
    // exists, tracing asks just the registering thread's subscriber whether a new callsite is
    // enabled, so another test's thread could disable the agent's span for this one too. A
    // second subscriber, kept alive, makes it ask them all; then every callsite is asked again.
    let _second = tracing::Dispatch::new(tracing_subscriber::registry());
    let _guard = tracing::subscriber::set_default(subscriber);
    tracing::callsite::rebuild_interest_cache();
    let dir = tempfile::tempdir().expect("tempdir");
    let (fw, _h) = firewall();
    let mut agent = Agent::start(config(dir.path(), Some("join-token-1")), fw);
    let Call::Join(_) = agent.next().await else { panic!("the agent joins first") };
    agent.poll().await;
    agent.answer(Ok(state(1, &[("203.0.113.7/32", 60)])));
    assert!(agent.report().await.nftables_usable);
    agent.stop().await.expect("stops cleanly");
    let text = String::from_utf8(logs.0.lock().expect("log buffer").clone()).expect("utf-8");
    let lines: Vec<serde_json::Value> =
        text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    let applied: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l["fields"]["message"] == "applied the whole table").collect();
    assert_eq!(applied.len(), 1, "{text}");
    let span = &applied[0]["span"];
    assert_eq!((span["name"].as_str(), span["agent_id"].as_str()), (Some("agent"), Some("agent-1")), "{text}");
    assert_eq!((span["vm"].as_str(), span["mode"].as_str()), (Some("vm1"), Some("host")), "{text}");
}

#[tokio::test(start_paused = true)]
async fn a_flushed_table_is_put_back_at_once_with_the_time_left_and_the_long_poll_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (fw, h) = firewall();
    let cfg = config(dir.path(), Some("join-token-1"));
    let metrics = cfg.metrics.clone();
    let mut agent = Agent::start(cfg, fw);
    assert!(matches!(agent.next().await, Call::Join(_)));
    agent.poll().await;
    assert!(h.watched(), "the agent watches its firewall");
    agent.answer(Ok(state(1, &[("10.0.0.1", 600)])));
    agent.report().await;
    assert_eq!(agent.poll().await.1, Some(1), "held by the server");

    // 100 s later an operator flushes the ruleset: the grant comes back with 500 s, not 600.
    tokio::time::advance(Duration::from_secs(100)).await;
    assert!(h.flush());
    assert_eq!(h.table(), None);
    let back = async {
        while h.table().is_none() {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_millis(1), back).await.expect("put back at once");
    assert_eq!(h.remaining(&key("10.0.0.1/32")), Some(Duration::from_secs(500)));
    assert_eq!(h.counts(), (2, 0), "one replacement put it back");
    let text = metrics.render();
    assert_eq!(sample(&text, "jitgate_agent_restores_total{result=\"ok\"}"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "jitgate_agent_table_elements{kind=\"grant\"}"), Some(1.0), "{text}");

    // The long-poll was not given up: its answer is still the next thing the agent acts on.
    agent.answer(Ok(state(2, &[("10.0.0.1", 500), ("10.0.0.2", 60)])));
    assert_eq!(agent.report().await.revision, 2);
    assert_eq!(h.counts(), (2, 1), "then one batch, as before the flush");
    assert!(h.allows(&key("10.0.0.2/32")));
    agent.stop().await.expect("a clean stop");
}

#[tokio::test(start_paused = true)]
async fn a_flush_while_the_server_is_unreachable_is_put_back_and_a_failed_put_back_asks_for_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (fw, h) = firewall();
    let cfg = config(dir.path(), Some("join-token-1"));
    let metrics = cfg.metrics.clone();
    let mut agent = Agent::start(cfg, fw);
    assert!(matches!(agent.next().await, Call::Join(_)));
    agent.poll().await;
    agent.answer(Ok(state(1, &[("10.0.0.1", 600)])));
    agent.report().await;
    assert_eq!(agent.poll().await.1, Some(1));
    // The server is gone; while the agent waits out its backoff the table is flushed.
    agent.answer(unreachable());
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(h.flush());
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert!(h.allows(&key("10.0.0.1/32")), "put back while the server is unreachable");
    let (_, after, _) = agent.poll().await;
    assert_eq!(after, Some(1), "the loop carries on with what it applied");

    // A put-back that fails: the agent asks the server for the whole state at once.
    h.fail_replaces(1);
    assert!(h.flush());
    let (_, after, _) = agent.poll().await;
    assert_eq!(after, None, "the whole state, not a wait for the next revision");
    assert_eq!(h.table(), None, "nothing could be put back");
    agent.answer(Ok(state(1, &[("10.0.0.1", 400)])));
    assert_eq!(agent.report().await.revision, 1);
    assert_eq!(h.remaining(&key("10.0.0.1/32")), Some(Duration::from_secs(400)), "the answer replaced the table");
    let text = metrics.render();
    assert_eq!(sample(&text, "jitgate_agent_restores_total{result=\"ok\"}"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "jitgate_agent_restores_total{result=\"failed\"}"), Some(1.0), "{text}");
    agent.stop().await.expect("a clean stop");
}

#[test]
fn a_certificate_refused_for_its_dates_gets_the_clock_hint_and_nothing_else_does() {
    let refused = "https://jit:8443: invalid peer certificate: certificate not valid yet: verification time 1 (UNIX)";
    assert!(clock_hint(refused).is_some_and(|h| h.contains("--server-fingerprint")));
    assert!(clock_hint("invalid peer certificate: certificate expired: verification time 9 (UNIX)").is_some());
    assert_eq!(clock_hint("https://jit:8443: Connection refused"), None);
    assert_eq!(clock_hint("invalid peer certificate: UnknownIssuer"), None);
}
