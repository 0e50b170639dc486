//! The agent's Prometheus metrics (served by `jitgate agent --metrics-listen`): its applies and
//! their duration, the elements in its table, reconcile runs, whether the server answers. Handles
//! are registered once on the agent's own recorder; an update is an atomic add or store.

use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Level, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use jitgate_enforce::Desired;

/// The metric names (the README's table lists each one).
pub mod names {
    pub const APPLIES: &str = "jitgate_agent_applies_total";
    pub const APPLY_DURATION: &str = "jitgate_agent_apply_duration_seconds";
    pub const ELEMENTS: &str = "jitgate_agent_table_elements";
    pub const RECONCILES: &str = "jitgate_agent_reconciles_total";
    pub const REACHABLE: &str = "jitgate_agent_server_reachable";
    pub const SERVER_FAILURES: &str = "jitgate_agent_server_failures_total";
    pub const APPLIED_REVISION: &str = "jitgate_agent_applied_revision";
    pub const RESTORES: &str = "jitgate_agent_restores_total";

    pub const ALL: [&str; 8] =
        [APPLIES, APPLY_DURATION, ELEMENTS, RECONCILES, REACHABLE, SERVER_FAILURES, APPLIED_REVISION, RESTORES];
}

use names::*;

/// The buckets of the apply duration, in seconds.
pub const SECONDS: [f64; 12] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

const META: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// How the firewall was changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyKind {
    /// One batch of element additions and deletions.
    Batch,
    /// The whole table replaced (first apply, restore, or after a failed batch).
    Replace,
}

impl ApplyKind {
    fn as_str(self) -> &'static str {
        match self {
            ApplyKind::Batch => "batch",
            ApplyKind::Replace => "replace",
        }
    }
}

/// The agent's metrics.
#[derive(Debug)]
pub struct AgentMetrics {
    handle: PrometheusHandle,
    /// [kind][ok, failed]
    applies: [[Counter; 2]; 2],
    durations: [Histogram; 2],
    /// protected ports, grants, DNAT mappings
    elements: [Gauge; 3],
    reconciles: Counter,
    reachable: Gauge,
    server_failures: Counter,
    applied_revision: Gauge,
    /// [ok, failed]
    restores: [Counter; 2],
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl AgentMetrics {
    pub fn new() -> Self {
        // Only an empty bucket list is refused, and this one is a constant: the fallback
        // (summaries) is never taken.
        let r = PrometheusBuilder::new()
            .set_buckets(&SECONDS)
            .unwrap_or_else(|_| PrometheusBuilder::new())
            .build_recorder();
        let describe = |kind: char, name: &'static str, unit: Option<Unit>, help: &'static str| {
            let (name, help) = (KeyName::from_const_str(name), SharedString::const_str(help));
            match kind {
                'c' => r.describe_counter(name, unit, help),
                'g' => r.describe_gauge(name, unit, help),
                _ => r.describe_histogram(name, unit, help),
            }
        };
        describe(
            'c',
            APPLIES,
            None,
            "Changes applied to the firewall, by kind (batch, replace) and result (ok, failed).",
        );
        describe('h', APPLY_DURATION, Some(Unit::Seconds), "Time one change of the firewall took, by kind.");
        describe(
            'g',
            ELEMENTS,
            None,
            "Elements in the agent's table as last applied: protected ports, grants, DNAT mappings.",
        );
        describe(
            'c',
            RECONCILES,
            None,
            "Reconcile runs: a state from the server (or the restored one) planned against the table.",
        );
        describe('g', REACHABLE, None, "1 when the server answered the last call, else 0.");
        describe('c', SERVER_FAILURES, None, "Calls to the server that got no usable answer.");
        describe('g', APPLIED_REVISION, None, "The revision of the state last applied.");
        describe(
            'c',
            RESTORES,
            None,
            "Tables put back after someone else changed or deleted them (nft flush ruleset, a reload), by result.",
        );
        let labels = |pairs: &[(&'static str, &'static str)]| -> Vec<Label> {
            pairs.iter().map(|(k, v)| Label::new(*k, *v)).collect()
        };
        let applies = [ApplyKind::Batch, ApplyKind::Replace].map(|kind| {
            ["ok", "failed"].map(|result| {
                let key = Key::from_parts(APPLIES, labels(&[("kind", kind.as_str()), ("result", result)]));
                r.register_counter(&key, &META)
            })
        });
        let durations = [ApplyKind::Batch, ApplyKind::Replace].map(|kind| {
            r.register_histogram(&Key::from_parts(APPLY_DURATION, labels(&[("kind", kind.as_str())])), &META)
        });
        let elements = ["protected", "grant", "dnat"]
            .map(|kind| r.register_gauge(&Key::from_parts(ELEMENTS, labels(&[("kind", kind)])), &META));
        AgentMetrics {
            applies,
            durations,
            elements,
            reconciles: r.register_counter(&Key::from_static_name(RECONCILES), &META),
            reachable: r.register_gauge(&Key::from_static_name(REACHABLE), &META),
            server_failures: r.register_counter(&Key::from_static_name(SERVER_FAILURES), &META),
            applied_revision: r.register_gauge(&Key::from_static_name(APPLIED_REVISION), &META),
            restores: ["ok", "failed"]
                .map(|result| r.register_counter(&Key::from_parts(RESTORES, labels(&[("result", result)])), &META)),
            handle: r.handle(),
        }
    }

    /// One change of the firewall that started at `started`.
    pub fn applied(&self, kind: ApplyKind, ok: bool, started: Instant) {
        self.applies[kind as usize][usize::from(!ok)].increment(1);
        self.durations[kind as usize].record(started.elapsed().as_secs_f64());
    }

    /// The table was put back after someone else changed it (`ok`), or could not be.
    pub fn restored(&self, ok: bool) {
        self.restores[usize::from(!ok)].increment(1);
    }

    pub fn reconciled(&self) {
        self.reconciles.increment(1);
    }

    /// What the table holds now: `applied` (none: nothing known to be in it), counted at `now`
    /// (the kernel has dropped what ended).
    pub fn table(&self, applied: Option<&Desired>, now: Instant) {
        let (protected, grants, dnat) = applied.map_or((0, 0, 0), |d| {
            let live = d.live_at(now);
            (live.protected.len(), live.grants.len(), live.dnat.len())
        });
        for (gauge, n) in self.elements.iter().zip([protected, grants, dnat]) {
            gauge.set(n as f64);
        }
    }

    pub fn revision(&self, revision: u64) {
        self.applied_revision.set(revision as f64);
    }

    /// Whether the server answered a call.
    pub fn server(&self, answered: bool) {
        self.reachable.set(if answered { 1.0 } else { 0.0 });
        if !answered {
            self.server_failures.increment(1);
        }
    }

    /// The text exposition of every metric; histograms fold their samples in as they render.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Folds histogram samples into their buckets (call every few seconds: memory stays bounded
    /// between scrapes).
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }
}

/// How often [`AgentMetrics::upkeep`] should run.
pub const UPKEEP_EVERY: Duration = Duration::from_secs(5);
