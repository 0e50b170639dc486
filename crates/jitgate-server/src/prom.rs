//! Prometheus metrics of the control plane, and `GET /metrics`.
//!
//! Everything is counted where it happens, into handles registered once on this server's own
//! recorder (`metrics-exporter-prometheus`, not a process-wide one: two servers in one process
//! count apart): an update is an atomic add, or an append to a lock-free bucket for a histogram.
//! The HTTP layer's counters are labelled by route — the route's name, never the raw path — and
//! looked up in the recorder's registry (a sharded map) per request. What is a state rather than
//! an event (live grants, the webhook outbox's depth, agents connected and behind) is read when
//! the metrics are scraped.
//!
//! Without a token, `/metrics` answers only callers whose address (through `--trusted-proxy`, as
//! everywhere) is in `--metrics-allow` (default loopback); others need a token whose principal
//! may [`actions::METRICS_READ`] at `/`, and are refused with Azure's error body otherwise.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Level, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use jitgate_core::rbac::actions;
use jitgate_store::observe::CommitObserver;

use crate::error::ApiError;
use crate::tls::PeerAddr;
use crate::App;

/// The metric names (the README's table lists each one; a test checks it).
pub mod names {
    pub const HTTP_REQUESTS: &str = "jitgate_http_requests_total";
    pub const HTTP_DURATION: &str = "jitgate_http_request_duration_seconds";
    pub const INITIATES: &str = "jitgate_initiates_total";
    pub const APPROVALS: &str = "jitgate_approvals_total";
    pub const DENIALS: &str = "jitgate_denials_total";
    pub const REVOKES: &str = "jitgate_revokes_total";
    pub const EXPIRIES: &str = "jitgate_expiries_total";
    pub const LIVE_GRANTS: &str = "jitgate_live_grants";
    pub const COMMIT_DURATION: &str = "jitgate_store_commit_duration_seconds";
    pub const COMMIT_BATCH: &str = "jitgate_store_commit_batch_size";
    pub const AUDIT_RECORDS: &str = "jitgate_audit_records_total";
    pub const WEBHOOK_DELIVERIES: &str = "jitgate_webhook_deliveries_total";
    pub const WEBHOOK_QUEUE: &str = "jitgate_webhook_queue_depth";
    pub const AGENTS: &str = "jitgate_agents";
    pub const AGENTS_CONNECTED: &str = "jitgate_agents_connected";
    pub const AGENTS_BEHIND: &str = "jitgate_agents_behind";
    pub const AGENT_LAG_MAX: &str = "jitgate_agents_revision_lag_max";
    pub const AGENT_APPLY: &str = "jitgate_agents_apply_latency_seconds";
    pub const AUTHZ: &str = "jitgate_authorization_decisions_total";

    /// Every name, for the README check.
    pub const ALL: [&str; 19] = [
        HTTP_REQUESTS,
        HTTP_DURATION,
        INITIATES,
        APPROVALS,
        DENIALS,
        REVOKES,
        EXPIRIES,
        LIVE_GRANTS,
        COMMIT_DURATION,
        COMMIT_BATCH,
        AUDIT_RECORDS,
        WEBHOOK_DELIVERIES,
        WEBHOOK_QUEUE,
        AGENTS,
        AGENTS_CONNECTED,
        AGENTS_BEHIND,
        AGENT_LAG_MAX,
        AGENT_APPLY,
        AUTHZ,
    ];
}

use names::*;

/// The buckets of every duration histogram, in seconds (a long-poll is held up to 60 s).
pub const SECONDS: [f64; 16] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
/// The buckets of the group-commit batch size (the SQLite writer takes at most 256 changes).
pub const BATCH: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

const META: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// How an initiate ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitiateResult {
    /// Its ports opened at once.
    Granted,
    /// Recorded, but waiting for an approver or for its scheduled start.
    Pending,
    /// Refused (4xx): not allowed, outside the policy, a bad body.
    Refused,
    /// The server failed (5xx).
    Failed,
}

impl InitiateResult {
    const ALL: [InitiateResult; 4] =
        [InitiateResult::Granted, InitiateResult::Pending, InitiateResult::Refused, InitiateResult::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            InitiateResult::Granted => "granted",
            InitiateResult::Pending => "pending",
            InitiateResult::Refused => "refused",
            InitiateResult::Failed => "failed",
        }
    }
}

/// How one webhook delivery attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOutcome {
    Delivered,
    /// Failed; it is tried again later.
    Failed,
    /// Failed for the last time: no attempt is left.
    Abandoned,
}

impl DeliveryOutcome {
    const ALL: [DeliveryOutcome; 3] = [DeliveryOutcome::Delivered, DeliveryOutcome::Failed, DeliveryOutcome::Abandoned];

    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryOutcome::Delivered => "delivered",
            DeliveryOutcome::Failed => "failed",
            DeliveryOutcome::Abandoned => "abandoned",
        }
    }
}

/// What the store's writer reports, recorded as metrics (see [`CommitObserver`]).
#[derive(Debug)]
struct Commits {
    duration: Histogram,
    batch: Histogram,
    audit_records: Counter,
}

impl CommitObserver for Commits {
    fn committed(&self, changes: usize, audit_records: usize, latency: Duration) {
        self.duration.record(latency.as_secs_f64());
        self.batch.record(changes as f64);
        self.audit_records.increment(audit_records as u64);
    }
}

/// The control plane's metrics: the recorder and the handles registered on it.
#[derive(Debug)]
pub struct ServerMetrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    initiates: [Counter; 4],
    approvals: Counter,
    denials: Counter,
    revokes: Counter,
    expiries: Counter,
    /// Allowed, denied.
    authz: [Counter; 2],
    deliveries: [Counter; 3],
    live_grants: Gauge,
    webhook_queue: Gauge,
    agents: Gauge,
    agents_connected: Gauge,
    agents_behind: Gauge,
    agent_lag_max: Gauge,
    agent_apply: Histogram,
    commits: Arc<Commits>,
    /// Per agent, the revision a state answer first delivered to it and when: its report of
    /// that revision ends the agent's apply latency.
    delivered: Mutex<HashMap<String, (u64, Instant)>>,
}

/// A recorder whose histograms have `SECONDS` buckets, or the `overrides` given per name.
pub fn recorder(overrides: &[(&str, &[f64])]) -> PrometheusRecorder {
    let mut builder = PrometheusBuilder::new().set_buckets(&SECONDS);
    for (name, buckets) in overrides {
        builder = builder.and_then(|b| b.set_buckets_for_metric(Matcher::Full((*name).to_owned()), buckets));
    }
    // Only empty bucket lists are refused, and ours are constants: this fallback (summaries
    // instead of histograms) is never taken.
    builder.unwrap_or_else(|_| PrometheusBuilder::new()).build_recorder()
}

fn counter(r: &PrometheusRecorder, name: &'static str, labels: &[(&'static str, &'static str)]) -> Counter {
    let labels: Vec<Label> = labels.iter().map(|(k, v)| Label::new(*k, *v)).collect();
    r.register_counter(&Key::from_parts(name, labels), &META)
}

fn gauge(r: &PrometheusRecorder, name: &'static str) -> Gauge {
    r.register_gauge(&Key::from_static_name(name), &META)
}

fn histogram(r: &PrometheusRecorder, name: &'static str) -> Histogram {
    r.register_histogram(&Key::from_static_name(name), &META)
}

/// The label of a request method (a method outside the standard ones is `other`).
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

impl Default for ServerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerMetrics {
    pub fn new() -> Self {
        let r = recorder(&[(COMMIT_BATCH, &BATCH)]);
        let describe = |kind: char, name: &'static str, unit: Option<Unit>, help: &'static str| {
            let (name, help) = (KeyName::from_const_str(name), SharedString::const_str(help));
            match kind {
                'c' => r.describe_counter(name, unit, help),
                'g' => r.describe_gauge(name, unit, help),
                _ => r.describe_histogram(name, unit, help),
            }
        };
        let s = Some(Unit::Seconds);
        describe('c', HTTP_REQUESTS, None, "HTTP requests answered, by route, method and status.");
        describe('h', HTTP_DURATION, s, "Time to answer an HTTP request, by route and method.");
        describe('c', INITIATES, None, "Access requests (initiate), by result: granted, pending, refused, failed.");
        describe('c', APPROVALS, None, "Pending requests or extensions approved.");
        describe('c', DENIALS, None, "Pending requests or extensions denied.");
        describe('c', REVOKES, None, "Requests revoked before their end by a person.");
        describe('c', EXPIRIES, None, "Grants the expiry sweep marked expired.");
        describe('g', LIVE_GRANTS, None, "Grants open now (status Initiated, end in the future).");
        describe('h', COMMIT_DURATION, s, "Time a store commit took to be durable.");
        describe('h', COMMIT_BATCH, None, "Changes per store commit (group commit).");
        describe('c', AUDIT_RECORDS, None, "Audit records the store appended.");
        describe('c', WEBHOOK_DELIVERIES, None, "Webhook delivery attempts, by outcome: delivered, failed, abandoned.");
        describe('g', WEBHOOK_QUEUE, None, "Webhook deliveries waiting to be sent or retried.");
        describe('g', AGENTS, None, "Agents joined.");
        describe('g', AGENTS_CONNECTED, None, "Agents holding a state long-poll on this server now.");
        describe('g', AGENTS_BEHIND, None, "Agents whose last applied revision is behind the current one.");
        describe('g', AGENT_LAG_MAX, None, "The most revisions any agent's last applied revision is behind.");
        describe('h', AGENT_APPLY, s, "From a state answer with a new revision to the agent's report of it.");
        describe('c', AUTHZ, None, "Authorization checks, by result: allowed, denied.");
        let commits = Arc::new(Commits {
            duration: histogram(&r, COMMIT_DURATION),
            batch: histogram(&r, COMMIT_BATCH),
            audit_records: counter(&r, AUDIT_RECORDS, &[]),
        });
        ServerMetrics {
            initiates: InitiateResult::ALL.map(|res| counter(&r, INITIATES, &[("result", res.as_str())])),
            approvals: counter(&r, APPROVALS, &[]),
            denials: counter(&r, DENIALS, &[]),
            revokes: counter(&r, REVOKES, &[]),
            expiries: counter(&r, EXPIRIES, &[]),
            authz: ["allowed", "denied"].map(|res| counter(&r, AUTHZ, &[("result", res)])),
            deliveries: DeliveryOutcome::ALL.map(|o| counter(&r, WEBHOOK_DELIVERIES, &[("outcome", o.as_str())])),
            live_grants: gauge(&r, LIVE_GRANTS),
            webhook_queue: gauge(&r, WEBHOOK_QUEUE),
            agents: gauge(&r, AGENTS),
            agents_connected: gauge(&r, AGENTS_CONNECTED),
            agents_behind: gauge(&r, AGENTS_BEHIND),
            agent_lag_max: gauge(&r, AGENT_LAG_MAX),
            agent_apply: histogram(&r, AGENT_APPLY),
            commits,
            delivered: Mutex::new(HashMap::new()),
            handle: r.handle(),
            recorder: r,
        }
    }

    /// What the store's writer reports to ([`jitgate_store::AuditStore::observe_commits`]).
    pub fn commit_observer(&self) -> Arc<dyn CommitObserver> {
        self.commits.clone()
    }

    /// One HTTP request answered: `route` is the route's name (see [`route_of`]).
    pub fn http(&self, route: &str, method: &Method, status: StatusCode, elapsed: Duration) {
        let (route, method) = (SharedString::from(route.to_owned()), method_label(method));
        let labels = vec![
            Label::new("route", route.clone()),
            Label::new("method", method),
            Label::new("status", status.as_u16().to_string()),
        ];
        self.recorder.register_counter(&Key::from_parts(HTTP_REQUESTS, labels), &META).increment(1);
        let labels = vec![Label::new("route", route), Label::new("method", method)];
        self.recorder.register_histogram(&Key::from_parts(HTTP_DURATION, labels), &META).record(elapsed.as_secs_f64());
    }

    pub fn initiate(&self, result: InitiateResult) {
        self.initiates[result as usize].increment(1);
    }

    /// A pending request or extension approved (`true`) or denied.
    pub fn decided(&self, approved: bool) {
        if approved { &self.approvals } else { &self.denials }.increment(1);
    }

    pub fn revoked(&self) {
        self.revokes.increment(1);
    }

    pub fn expired(&self, grants: usize) {
        self.expiries.increment(grants as u64);
    }

    pub fn authorization(&self, allowed: bool) {
        self.authz[usize::from(!allowed)].increment(1);
    }

    pub fn delivery(&self, outcome: DeliveryOutcome) {
        self.deliveries[outcome as usize].increment(1);
    }

    /// A state answer delivered `revision` to `agent` for the first time.
    pub fn state_delivered(&self, agent: &str, revision: u64) {
        if let Ok(mut d) = self.delivered.lock() {
            d.insert(agent.to_owned(), (revision, Instant::now()));
        }
    }

    /// `agent` reported `revision` applied: the time since that revision (or an earlier one
    /// still unreported) was delivered is its apply latency.
    pub fn state_applied(&self, agent: &str, revision: u64) {
        let since = match self.delivered.lock() {
            Ok(mut d) => match d.get(agent) {
                Some((delivered, at)) if *delivered <= revision => {
                    let at = *at;
                    d.remove(agent);
                    Some(at)
                }
                _ => None,
            },
            Err(_) => None,
        };
        if let Some(at) = since {
            self.agent_apply.record(at.elapsed().as_secs_f64());
        }
    }

    /// Reads the states the metrics show (live grants, the outbox, agents) into their gauges.
    /// A read that fails leaves its gauge as it was (and is logged).
    pub async fn refresh(&self, app: &App) {
        match app.store.live_grants(app.clock.now()).await {
            Ok(n) => self.live_grants.set(n as f64),
            Err(e) => tracing::warn!(error = %e, "metrics: live grants not read"),
        }
        match app.store.pending_deliveries().await {
            Ok(n) => self.webhook_queue.set(n as f64),
            Err(e) => tracing::warn!(error = %e, "metrics: webhook queue not read"),
        }
        self.agents_connected.set(app.long_polls.agents() as f64);
        match (app.store.revision().await, app.store.list_agents().await) {
            (Ok(revision), Ok(agents)) => {
                let lags = agents.iter().map(|a| revision.saturating_sub(a.applied_revision));
                let (behind, max) = lags.fold((0u64, 0u64), |(n, m), lag| (n + u64::from(lag > 0), m.max(lag)));
                self.agents.set(agents.len() as f64);
                self.agents_behind.set(behind as f64);
                self.agent_lag_max.set(max as f64);
            }
            (Err(e), _) | (_, Err(e)) => tracing::warn!(error = %e, "metrics: agents not read"),
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Folds the histograms' recent samples into their buckets (their memory stays bounded
    /// between scrapes).
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }
}

/// Folds histogram samples into their buckets every few seconds until `stop`.
pub async fn upkeep(metrics: Arc<ServerMetrics>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => metrics.upkeep(),
            _ = stop.changed() => return,
        }
    }
}

/// The name of the route a request took, for the `route` label: set on the answer by a handler
/// that parses its own routes (the ARM API: [`crate::arm::route::ArmRoute::name`]).
#[derive(Debug, Clone, Copy)]
pub struct RouteName(pub &'static str);

/// The `route` label of an answered request: the name the handler set, else the router's
/// pattern (`/api/v1/vms/{id}`), else `unmatched` (never the raw path: the label's values stay
/// bounded whatever clients send).
pub fn route_of<'a>(answer: Option<&RouteName>, matched: Option<&'a str>) -> &'a str {
    match (answer, matched) {
        (Some(RouteName(name)), _) => name,
        (None, Some(pattern)) => pattern,
        (None, None) => "unmatched",
    }
}

/// Whether a caller at `ip` may read the metrics without a token.
pub fn open_to(ip: IpAddr, allow: &[ipnet::IpNet]) -> bool {
    let ip = ip.to_canonical();
    allow.iter().any(|net| net.contains(&ip))
}

/// The default of `--metrics-allow`: loopback.
pub fn default_allow() -> Vec<ipnet::IpNet> {
    ["127.0.0.0/8", "::1/128"].iter().filter_map(|n| n.parse().ok()).collect()
}

/// `GET /metrics`.
pub async fn handler(State(app): State<App>, ConnectInfo(peer): ConnectInfo<PeerAddr>, req: Request<Body>) -> Response {
    let (parts, _) = req.into_parts();
    let ctx = crate::ctx_from(peer, &parts.headers, &parts.extensions);
    if !open_to(ctx.caller_ip, &app.config.metrics_allow) {
        if crate::auth::bearer(&parts.headers).is_err() {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "AuthorizationFailed",
                format!(
                    "The metrics are readable without a token only from the addresses --metrics-allow names, and {} \
                     is not one of them; send 'Authorization: Bearer <token>' of a principal allowed '{}' at '/'.",
                    ctx.caller_ip,
                    actions::METRICS_READ
                ),
            )
            .into_response();
        }
        let checked = async {
            let principal = app.authenticate(&parts.headers, &ctx, "/metrics").await?;
            app.authorize(&principal, actions::METRICS_READ, "/").await
        };
        if let Err(e) = checked.await {
            return e.into_response();
        }
    }
    app.metrics.refresh(&app).await;
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], app.metrics.render()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn only_allowed_addresses_read_without_a_token() {
        let loopback = default_allow();
        for yes in ["127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"] {
            assert!(open_to(ip(yes), &loopback), "{yes}");
        }
        for no in ["203.0.113.9", "10.0.0.1", "::2", "fe80::1"] {
            assert!(!open_to(ip(no), &loopback), "{no}");
        }
        let monitoring: Vec<ipnet::IpNet> = vec!["10.20.0.0/16".parse().expect("net")];
        assert!(open_to(ip("10.20.3.4"), &monitoring));
        assert!(!open_to(ip("127.0.0.1"), &monitoring), "the flag replaces the default");
        assert!(!open_to(ip("127.0.0.1"), &[]), "an empty list: a token always");
    }

    #[test]
    fn routes_are_named_never_raw_paths() {
        assert_eq!(route_of(Some(&RouteName("arm.initiate")), None), "arm.initiate");
        assert_eq!(route_of(None, Some("/api/v1/vms/{id}")), "/api/v1/vms/{id}");
        assert_eq!(route_of(None, None), "unmatched");
    }

    /// The value of the sample `name{labels}` in an exposition (labels in the order written).
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.parse().ok()))
    }

    #[test]
    fn events_are_counted_and_histograms_have_buckets() {
        let m = ServerMetrics::new();
        let before = m.render();
        assert_eq!(sample(&before, "jitgate_initiates_total{result=\"granted\"}"), Some(0.0), "{before}");
        for _ in 0..3 {
            m.initiate(InitiateResult::Granted);
        }
        m.initiate(InitiateResult::Refused);
        m.decided(true);
        m.decided(false);
        m.decided(false);
        m.authorization(true);
        m.authorization(false);
        m.delivery(DeliveryOutcome::Abandoned);
        m.expired(5);
        m.http("arm.initiate", &Method::POST, StatusCode::ACCEPTED, Duration::from_millis(3));
        m.http("arm.initiate", &Method::POST, StatusCode::ACCEPTED, Duration::from_millis(700));
        m.commit_observer().committed(4, 6, Duration::from_millis(2));
        let text = m.render();
        for (series, value) in [
            ("jitgate_initiates_total{result=\"granted\"}", 3.0),
            ("jitgate_initiates_total{result=\"refused\"}", 1.0),
            ("jitgate_initiates_total{result=\"pending\"}", 0.0),
            ("jitgate_approvals_total", 1.0),
            ("jitgate_denials_total", 2.0),
            ("jitgate_authorization_decisions_total{result=\"allowed\"}", 1.0),
            ("jitgate_authorization_decisions_total{result=\"denied\"}", 1.0),
            ("jitgate_webhook_deliveries_total{outcome=\"abandoned\"}", 1.0),
            ("jitgate_expiries_total", 5.0),
            ("jitgate_audit_records_total", 6.0),
            ("jitgate_http_requests_total{route=\"arm.initiate\",method=\"POST\",status=\"202\"}", 2.0),
            ("jitgate_http_request_duration_seconds_bucket{route=\"arm.initiate\",method=\"POST\",le=\"0.005\"}", 1.0),
            ("jitgate_http_request_duration_seconds_count{route=\"arm.initiate\",method=\"POST\"}", 2.0),
            ("jitgate_store_commit_batch_size_bucket{le=\"4\"}", 1.0),
            ("jitgate_store_commit_batch_size_bucket{le=\"2\"}", 0.0),
            ("jitgate_store_commit_duration_seconds_count", 1.0),
        ] {
            assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
        }
        assert!(text.contains("# TYPE jitgate_http_request_duration_seconds histogram"), "{text}");
        assert!(text.contains("# HELP jitgate_live_grants "), "{text}");
    }

    #[test]
    fn apply_latency_runs_from_the_first_delivery_to_the_report() {
        let m = ServerMetrics::new();
        let count = |m: &ServerMetrics| sample(&m.render(), "jitgate_agents_apply_latency_seconds_count");
        m.state_applied("a", 3); // nothing was delivered: nothing to measure
        assert_eq!(count(&m), Some(0.0));
        m.state_delivered("a", 4);
        m.state_applied("a", 3); // an older revision's report
        assert_eq!(count(&m), Some(0.0));
        m.state_applied("a", 4);
        m.state_applied("a", 4); // measured once
        assert_eq!(count(&m), Some(1.0));
    }

    #[test]
    fn every_metric_is_in_the_readme_table() {
        let readme = include_str!("../../../README.md");
        for name in names::ALL {
            assert!(readme.contains(&format!("| `{name}` |")), "README's metrics table lacks {name}");
        }
    }
}
