//! The connector's loop: one sweep before anything else, join (or load the credential), then
//! until shutdown — sweep every `sweep_interval`, discover every `discovery_interval` and put the
//! inventory, long-poll the state, enforce it, report.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use jitgate_api_types::agent::{AppliedIn, EnforcementReportIn, InventoryIn, StateOut};
use jitgate_aws::Ec2;

use crate::desired::by_instance;
use crate::discovery::{discover, Mapping};
use crate::plan::Reason;
use crate::reconcile::{reconcile, Outbox};
use crate::server::{credential, CallError, ConnectorError, JoinSettings, Server};
use crate::sweep::sweep;

/// How the connector runs.
#[derive(Debug, Clone)]
pub struct ConnectorConfig {
    pub join: JoinSettings,
    pub mapping: Mapping,
    pub sweep_interval: Duration,
    pub discovery_interval: Duration,
    /// How long the server may hold one state request.
    pub poll_wait: Duration,
}

impl ConnectorConfig {
    pub fn new(state_dir: PathBuf, name: String) -> Self {
        ConnectorConfig {
            join: JoinSettings { servers: vec![], join_token: None, ca_cert: None, state_dir, name },
            mapping: Mapping::default(),
            sweep_interval: Duration::from_secs(5),
            discovery_interval: Duration::from_secs(60),
            poll_wait: Duration::from_secs(30),
        }
    }
}

/// The wall clock, in Unix milliseconds (tests give one that follows the runtime's paused clock).
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> i64;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
    }
}

/// The first backoff after a failure; it doubles up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

fn secs(ms: i64) -> i64 {
    ms.div_euclid(1000)
}

/// Sends what the server has yet to hear; a 401 ends the loop. What could not be sent is kept
/// for the next try.
pub async fn flush(outbox: &mut Outbox, server: &impl Server, credential: &str) -> Result<(), CallError> {
    while let Some(report) = outbox.next() {
        match server.report_enforcement(credential, &report).await {
            Ok(()) => outbox.sent(&report),
            Err(CallError::Unauthorized) => return Err(CallError::Unauthorized),
            Err(CallError::Status { status, body }) if status.is_client_error() => {
                tracing::warn!(%status, error = %body, "the server refused the report; sending its parts one by one");
                if !isolate(outbox, server, credential, report).await? {
                    return Ok(());
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, pending = outbox.pending(), "could not report removals; kept for the next try");
                return Ok(());
            }
        }
        if outbox.pending() == 0 {
            break;
        }
    }
    Ok(())
}

/// Sends a refused report's parts one at a time, so that one the server refuses for good (a VM
/// another connector enforces, say) is dropped — logged — instead of holding back the others.
/// `Ok(false)` when the server could not be reached meanwhile (the rest is kept).
async fn isolate(
    outbox: &mut Outbox,
    server: &impl Server,
    credential: &str,
    report: EnforcementReportIn,
) -> Result<bool, CallError> {
    let refused = |e: &CallError| matches!(e, CallError::Status { status, .. } if status.is_client_error());
    let alone = EnforcementReportIn { removals: vec![], failures: report.failures.clone() };
    let failures = match server.report_enforcement(credential, &alone).await {
        Ok(()) => report.failures.clone(),
        Err(CallError::Unauthorized) => return Err(CallError::Unauthorized),
        Err(e) if refused(&e) => {
            tracing::error!(error = %e, "the server refuses the list of failing VMs; it is not reported");
            vec![]
        }
        Err(_) => return Ok(false),
    };
    for r in report.removals {
        let one = EnforcementReportIn { removals: vec![r.clone()], failures: failures.clone() };
        match server.report_enforcement(credential, &one).await {
            Ok(()) => {}
            Err(CallError::Unauthorized) => return Err(CallError::Unauthorized),
            Err(e) if refused(&e) => tracing::error!(
                error = %e, vm = %r.vm_id, request = r.request_id, port = r.port, source = %r.source, reason = %r.reason,
                "the server refuses this removal; it is dropped"
            ),
            Err(_) => return Ok(false),
        }
        outbox.forget(1);
    }
    outbox.failures_sent(&report.failures);
    Ok(true)
}

/// The loop over any [`Ec2`] and [`Server`]; `Ok(())` when `shutdown` completes.
pub async fn run_with(
    cfg: ConnectorConfig,
    ec2: &impl Ec2,
    server: &impl Server,
    clock: &dyn Clock,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ConnectorError> {
    tokio::pin!(shutdown);
    let mut outbox = Outbox::default();
    // 1. Before anything else: rules past their end go, whoever left them.
    let mut backoff = FIRST_BACKOFF;
    loop {
        match sweep(ec2, secs(clock.now_ms()), Reason::Stale).await {
            Ok(swept) => {
                outbox.removed(swept.removals, clock.now_ms());
                break;
            }
            Err(e) => tracing::error!(error = %e, "the start sweep failed; nothing is enforced until it succeeds"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => backoff = (backoff * 2).min(MAX_BACKOFF),
            _ = &mut shutdown => return Ok(()),
        }
    }
    // 2. Join, or the stored credential.
    let cred = tokio::select! {
        c = credential(&cfg.join, server) => c?,
        _ = &mut shutdown => return Ok(()),
    };
    let refused = || ConnectorError::Refused { state_dir: cfg.join.state_dir.clone() };
    let credential = cred.credential.as_str();
    let mut sweep_failures: BTreeMap<String, String> = BTreeMap::new();
    let mut round_failures: BTreeMap<String, String> = BTreeMap::new();
    // The VMs of the last state: the only ones whose failures the server takes.
    let mut known: BTreeSet<String> = BTreeSet::new();
    let mut after: Option<u64> = None;
    let mut first_round = true;
    let mut delay = Duration::ZERO;
    let mut backoff = FIRST_BACKOFF;
    let start = tokio::time::Instant::now();
    // An interval of zero is no interval: at least a tenth of a second.
    let (sweep_every, discover_every) =
        (cfg.sweep_interval.max(Duration::from_millis(100)), cfg.discovery_interval.max(Duration::from_millis(100)));
    let mut sweeps = tokio::time::interval_at(start + sweep_every, sweep_every);
    sweeps.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut discoveries = tokio::time::interval_at(start, discover_every);
    discoveries.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (wait, poll_after) = (cfg.poll_wait, after);
        let poll = async move {
            tokio::time::sleep(delay).await;
            server.state(credential, poll_after, wait).await
        };
        tokio::pin!(poll);
        let answer: Result<StateOut, CallError> = loop {
            tokio::select! {
                r = &mut poll => break r,
                _ = sweeps.tick() => {
                    match sweep(ec2, secs(clock.now_ms()), Reason::Expired).await {
                        Ok(swept) => {
                            outbox.removed(swept.removals, clock.now_ms());
                            sweep_failures.retain(|vm, _| !swept.cleared.contains(vm));
                            sweep_failures.extend(swept.failures);
                        }
                        Err(e) => tracing::warn!(error = %e, "the sweep failed; trying again at the next"),
                    }
                    outbox.failing(merged(&round_failures, &sweep_failures, &known));
                    if let Err(CallError::Unauthorized) = flush(&mut outbox, server, credential).await {
                        return Err(refused());
                    }
                }
                _ = discoveries.tick() => {
                    if let Err(CallError::Unauthorized) = inventory(ec2, server, credential, &cfg.mapping).await {
                        return Err(refused());
                    }
                }
                _ = &mut shutdown => return Ok(()),
            }
        };
        let state = match answer {
            Ok(state) => state,
            Err(CallError::Unauthorized) => return Err(refused()),
            Err(e) => {
                tracing::warn!(error = %e, "state request failed; the sweep goes on");
                delay = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let received = clock.now_ms();
        let desired = by_instance(&state, received);
        known = desired.values().map(|d| d.vm_id.clone()).collect();
        let now = secs(clock.now_ms());
        let round = tokio::select! {
            r = reconcile(ec2, &desired, &cfg.mapping, now) => r,
            _ = &mut shutdown => return Ok(()),
        };
        match round {
            Ok(mut round) => {
                if first_round {
                    // Past their end when this connector started: left by one that stopped.
                    for r in round.removals.iter_mut().filter(|r| r.reason == Reason::Expired) {
                        r.reason = Reason::Stale;
                    }
                    first_round = false;
                }
                outbox.removed(round.removals, clock.now_ms());
                round_failures = round.failures;
                after = Some(state.revision);
                // The revision's rules are in EC2 (a VM that could not get them is reported
                // failing on its own): the server marks the connector seen and wakes
                // `?wait=applied`.
                let report = AppliedIn { revision: state.revision, nftables_usable: true, nftables_error: None };
                match server.applied(credential, &report).await {
                    Ok(()) => {}
                    Err(CallError::Unauthorized) => return Err(refused()),
                    Err(e) => {
                        tracing::warn!(error = %e, revision = state.revision, "reporting the applied revision failed")
                    }
                }
                delay = Duration::ZERO;
                backoff = FIRST_BACKOFF;
            }
            Err(e) => {
                tracing::error!(error = %e, "reading EC2 failed; trying again");
                after = None;
                delay = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
        outbox.failing(merged(&round_failures, &sweep_failures, &known));
        if let Err(CallError::Unauthorized) = flush(&mut outbox, server, credential).await {
            return Err(refused());
        }
    }
}

/// Discovers the instances and registers them. When the server refuses because another
/// enforcement point has some of them (`409`), and `--vpc` limits this connector, they are sent
/// again without the instances of the VPCs it does not manage (another connector's).
pub async fn inventory(
    ec2: &impl Ec2,
    server: &impl Server,
    credential: &str,
    mapping: &Mapping,
) -> Result<(), CallError> {
    let instances = match ec2.describe_instances(&[]).await {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(error = %e, "discovery failed; trying again at the next");
            return Ok(());
        }
    };
    let vms = discover(&instances, mapping);
    let mut answer = server.put_inventory(credential, &InventoryIn { vms: vms.clone() }).await;
    if let Err(CallError::Status { status, body }) = &answer {
        if status.as_u16() == 409 && !mapping.vpcs.is_empty() {
            tracing::warn!(error = %body, "the server refused the inventory; sending only the instances of the VPCs given with --vpc");
            let own =
                vms.into_iter().filter(|v| v.cloud.vpc_id.as_ref().is_some_and(|id| mapping.vpcs.contains_key(id)));
            answer = server.put_inventory(credential, &InventoryIn { vms: own.collect() }).await;
        }
    }
    match answer {
        Ok(out) => tracing::info!(registered = out.registered, unsupported = out.unsupported, "inventory sent"),
        Err(CallError::Unauthorized) => return Err(CallError::Unauthorized),
        Err(e) => tracing::warn!(error = %e, "could not send the inventory; trying again at the next discovery"),
    }
    Ok(())
}

/// The failing VMs to report: those of the state the server sent (it refuses a report naming
/// a VM this connector does not enforce); the others are only logged where they fail.
fn merged(
    a: &BTreeMap<String, String>,
    b: &BTreeMap<String, String>,
    known: &BTreeSet<String>,
) -> BTreeMap<String, String> {
    let mut out = a.clone();
    for (vm, e) in b {
        out.entry(vm.clone()).and_modify(|x| *x = format!("{x}; {e}")).or_insert_with(|| e.clone());
    }
    out.retain(|vm, _| known.contains(vm));
    out
}

/// The loop over HTTPS to the servers given (or stored with the credential), on the system clock.
pub async fn run(
    cfg: ConnectorConfig,
    ec2: &impl Ec2,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ConnectorError> {
    let (servers, ca_cert) = crate::server::servers(&cfg.join)?;
    let server = crate::server::HttpServer::new(&servers, ca_cert.as_deref())?;
    run_with(cfg, ec2, &server, &SystemClock, shutdown).await
}
