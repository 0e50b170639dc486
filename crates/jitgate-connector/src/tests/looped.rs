//! The loop against a fake server and the fake EC2, on the runtime's paused clock: the test waits
//! for what the server hears, never for time.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use jitgate_api_types::agent::{
    AppliedIn, EnforcementReportIn, GrantOut, InventoryIn, InventoryOut, JoinIn, JoinOut, PortOut, StateOut,
};
use tokio::sync::watch;

use super::world::*;
use crate::fake::FakeEc2;
use crate::rules::Proto;
use crate::run::{run_with, Clock, ConnectorConfig};
use crate::server::{CallError, ConnectorError, Server};

#[derive(Debug, Default, Clone)]
struct Heard {
    joins: usize,
    /// How many EC2 calls had been made when the join came.
    ec2_calls_at_join: Option<usize>,
    states: usize,
    /// The latest revision the loop said it applied (its `after`).
    applied: Option<u64>,
    inventories: Vec<InventoryIn>,
    reports: Vec<EnforcementReportIn>,
    /// The revisions reported applied (`POST /agent/v1/applied`).
    reported: Vec<u64>,
}

struct FakeServer {
    ec2: Arc<FakeEc2>,
    state: watch::Sender<StateOut>,
    heard: watch::Sender<Heard>,
    refuse: AtomicBool,
    failing_reports: AtomicUsize,
    /// A report holding a removal of this request is refused (a VM of another connector).
    foreign_request: AtomicI64,
}

impl FakeServer {
    /// A server whose first state protects these ports.
    fn new(ec2: Arc<FakeEc2>, ports: Vec<PortOut>) -> FakeServer {
        let empty = StateOut { revision: 1, mode: "cloud".into(), ports, grants: vec![] };
        FakeServer {
            ec2,
            state: watch::channel(empty).0,
            heard: watch::channel(Heard::default()).0,
            refuse: AtomicBool::new(false),
            failing_reports: AtomicUsize::new(0),
            foreign_request: AtomicI64::new(0),
        }
    }

    fn set(&self, ports: Vec<PortOut>, grants: Vec<GrantOut>) {
        self.state.send_modify(|s| {
            s.revision += 1;
            s.ports = ports;
            s.grants = grants;
        });
    }

    async fn until(&self, what: impl Fn(&Heard) -> bool) -> Heard {
        let mut rx = self.heard.subscribe();
        let seen = rx.wait_for(|h| what(h)).await.expect("the server is alive");
        seen.clone()
    }
}

impl Server for FakeServer {
    async fn join(&self, body: &JoinIn) -> Result<JoinOut, CallError> {
        assert_eq!(body.mode, "cloud");
        let calls = self.ec2.calls().len();
        self.heard.send_modify(|h| {
            h.joins += 1;
            h.ec2_calls_at_join = Some(calls);
        });
        Ok(JoinOut {
            agent_id: "c1".into(),
            credential: "secret".into(),
            name: body.name.clone(),
            mode: "cloud".into(),
            subscription: "s".into(),
            resource_group: "rg".into(),
            location: "l".into(),
            vm_id: None,
        })
    }

    async fn state(&self, credential: &str, after: Option<u64>, wait: Duration) -> Result<StateOut, CallError> {
        assert_eq!(credential, "secret");
        if self.refuse.load(Ordering::SeqCst) {
            return Err(CallError::Unauthorized);
        }
        self.heard.send_modify(|h| {
            h.states += 1;
            h.applied = h.applied.max(after);
        });
        let mut rx = self.state.subscribe();
        let deadline = tokio::time::sleep(wait);
        tokio::pin!(deadline);
        loop {
            let s = rx.borrow_and_update().clone();
            if after.is_none_or(|a| s.revision > a) {
                return Ok(s);
            }
            tokio::select! {
                _ = rx.changed() => {}
                _ = &mut deadline => return Ok(s),
            }
        }
    }

    async fn put_inventory(&self, _: &str, body: &InventoryIn) -> Result<InventoryOut, CallError> {
        // Instances of vpc-2 are another connector's.
        if body.vms.iter().any(|v| v.cloud.vpc_id.as_deref() == Some("vpc-2")) {
            return Err(CallError::Status {
                status: reqwest::StatusCode::CONFLICT,
                body: "VirtualMachineEnforcedElsewhere: another agent enforces it".into(),
            });
        }
        self.heard.send_modify(|h| h.inventories.push(body.clone()));
        Ok(InventoryOut { registered: body.vms.len() as u32, unsupported: 0, revision: 1 })
    }

    async fn applied(&self, _: &str, report: &AppliedIn) -> Result<(), CallError> {
        self.heard.send_modify(|h| h.reported.push(report.revision));
        Ok(())
    }

    async fn report_enforcement(&self, _: &str, body: &EnforcementReportIn) -> Result<(), CallError> {
        if self.failing_reports.load(Ordering::SeqCst) > 0 {
            self.failing_reports.fetch_sub(1, Ordering::SeqCst);
            return Err(CallError::Unreachable("injected".into()));
        }
        let foreign = self.foreign_request.load(Ordering::SeqCst);
        if body.removals.iter().any(|r| r.request_id == foreign) {
            return Err(CallError::Status {
                status: reqwest::StatusCode::BAD_REQUEST,
                body: "InvalidEnforcementReport: not enforced by this connector".into(),
            });
        }
        self.heard.send_modify(|h| h.reports.push(body.clone()));
        Ok(())
    }
}

/// The wall clock at [`NOW`] when the test starts, moving with the runtime's clock.
struct TestClock {
    start: tokio::time::Instant,
    base_ms: i64,
}

impl Clock for TestClock {
    fn now_ms(&self) -> i64 {
        self.base_ms + self.start.elapsed().as_millis() as i64
    }
}

fn config(dir: &std::path::Path) -> ConnectorConfig {
    let mut cfg = ConnectorConfig::new(dir.to_owned(), "aws-test".into());
    cfg.join.servers = vec!["https://jit.example".into()];
    cfg.join.join_token = Some("jgj_token".into());
    cfg
}

fn port22() -> PortOut {
    PortOut {
        vm_id: VM.into(),
        address: Some("10.0.0.5".into()),
        protocol: "TCP".into(),
        port: 22,
        cut_sessions: false,
        mapped_port: None,
    }
}

fn grant_out(request_id: i64, source: &str, remaining_ms: u64) -> GrantOut {
    GrantOut {
        request_id,
        vm_id: VM.into(),
        address: Some("10.0.0.5".into()),
        protocol: "TCP".into(),
        port: 22,
        sources: vec![source.into()],
        remaining_ms,
        mapped_port: None,
    }
}

/// Runs the loop while `drive` runs, then stops it; the loop's result.
async fn with_loop<F: std::future::Future<Output = ()>>(
    w: &Arc<FakeEc2>,
    server: &FakeServer,
    cfg: ConnectorConfig,
    base_ms: i64,
    drive: F,
) -> Result<(), ConnectorError> {
    let clock = TestClock { start: tokio::time::Instant::now(), base_ms };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = run_with(cfg, &**w, server, &clock, async {
        let _ = stopped.await;
    });
    tokio::pin!(run);
    tokio::select! {
        r = &mut run => return r,
        () = drive => {}
    }
    let _ = stop.send(());
    run.await
}

#[tokio::test(start_paused = true)]
async fn stale_rules_go_before_the_join_and_grants_are_enforced_and_reported() {
    let world = World::new();
    // A previous run left a rule whose grant ended while no connector ran.
    world
        .round(&protect(&[(Proto::Tcp, 22)], vec![grant(5, Proto::Tcp, 22, &["198.51.100.5/32"], NOW + 10)]), NOW)
        .await;
    let jg = world.jitgate().expect("group").group_id;
    let ec2 = Arc::new(world.ec2);
    let server = FakeServer::new(ec2.clone(), vec![port22()]);
    let dir = tempfile::tempdir().expect("dir");
    let r = with_loop(&ec2, &server, config(dir.path()), (NOW + 100) * 1000, async {
        let heard = server.until(|h| h.joins == 1 && !h.reports.is_empty()).await;
        let calls = ec2.calls();
        let revoked = calls.iter().position(|c| *c == format!("RevokeSecurityGroupIngress {jg}")).expect("revoked");
        assert!(revoked < heard.ec2_calls_at_join.expect("joined"), "{calls:?}");
        let stale = &heard.reports[0].removals[0];
        assert_eq!((stale.request_id, stale.reason.as_str(), stale.vm_id.as_str()), (5, "stale", VM));
        let inv = server.until(|h| !h.inventories.is_empty()).await;
        assert_eq!(inv.inventories[0].vms[0].name, INSTANCE);
        // A grant: its rule appears.
        server.set(vec![port22()], vec![grant_out(9, "203.0.113.9", 7_000)]);
        let revision = server.state.borrow().revision;
        server.until(|h| h.applied >= Some(revision)).await;
        let rules = ec2.group(&jg).map(|g| g.ingress).unwrap_or_default();
        assert_eq!(rules.len(), 1, "{rules:?}");
        // …and the revision is reported applied, once its rule is in EC2.
        let heard = server.until(|h| h.reported.contains(&revision)).await;
        assert!(heard.reported.windows(2).all(|w| w[0] <= w[1]), "{:?}", heard.reported);
        assert_eq!(rules[0].ipv4_ranges[0].cidr, "203.0.113.9/32");
        // Its end passes while the server says nothing new: the sweep removes it and reports it.
        let heard = server.until(|h| h.reports.iter().any(|r| r.removals.iter().any(|x| x.reason == "expired"))).await;
        let expired = heard.reports.iter().flat_map(|r| &r.removals).find(|x| x.reason == "expired").expect("expired");
        assert_eq!((expired.request_id, expired.port, expired.source.as_str()), (9, 22, "203.0.113.9/32"));
        assert!(ec2.group(&jg).is_some_and(|g| g.ingress.is_empty()));
    })
    .await;
    assert!(r.is_ok(), "{r:?}");
    assert!(dir.path().join(crate::server::CREDENTIAL_FILE).exists());
}

#[tokio::test(start_paused = true)]
async fn reports_that_fail_are_sent_again_and_a_restart_does_not_join_again() {
    let world = World::new();
    world
        .round(&protect(&[(Proto::Tcp, 22)], vec![grant(5, Proto::Tcp, 22, &["198.51.100.5/32"], NOW + 10)]), NOW)
        .await;
    let ec2 = Arc::new(world.ec2);
    let server = FakeServer::new(ec2.clone(), vec![port22()]);
    server.failing_reports.store(2, Ordering::SeqCst);
    let dir = tempfile::tempdir().expect("dir");
    let r = with_loop(&ec2, &server, config(dir.path()), (NOW + 100) * 1000, async {
        let heard = server.until(|h| !h.reports.is_empty()).await;
        assert_eq!(heard.reports[0].removals.len(), 1, "kept through two failed reports");
    })
    .await;
    assert!(r.is_ok());
    let states = server.heard.borrow().states;
    let r = with_loop(&ec2, &server, config(dir.path()), (NOW + 200) * 1000, async {
        server.until(|h| h.states > states).await;
    })
    .await;
    assert!(r.is_ok());
    assert_eq!(server.heard.borrow().joins, 1, "the stored credential is used");
}

#[tokio::test(start_paused = true)]
async fn a_refused_credential_stops_the_loop_with_what_to_do() {
    let ec2 = Arc::new(World::new().ec2);
    let server = FakeServer::new(ec2.clone(), vec![]);
    server.refuse.store(true, Ordering::SeqCst);
    let dir = tempfile::tempdir().expect("dir");
    let r = with_loop(&ec2, &server, config(dir.path()), NOW * 1000, std::future::pending()).await;
    let e = r.expect_err("refused");
    assert!(matches!(e, ConnectorError::Refused { .. }));
    assert!(e.to_string().contains("join token of mode cloud"), "{e}");
}

#[tokio::test(start_paused = true)]
async fn nothing_is_joined_or_applied_until_the_start_sweep_succeeds() {
    let ec2 = Arc::new(World::new().ec2);
    ec2.fail_next_transport("DescribeSecurityGroups");
    ec2.fail_next_transport("DescribeSecurityGroups");
    let server = FakeServer::new(ec2.clone(), vec![]);
    let dir = tempfile::tempdir().expect("dir");
    let r = with_loop(&ec2, &server, config(dir.path()), NOW * 1000, async {
        let heard = server.until(|h| h.joins == 1).await;
        assert_eq!(heard.ec2_calls_at_join, Some(3), "two failed sweeps, then one that succeeded, then the join");
        assert!(ec2.calls()[..3].iter().all(|c| c == "DescribeSecurityGroups"), "{:?}", ec2.calls());
    })
    .await;
    assert!(r.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_removal_the_server_refuses_is_dropped_without_holding_back_the_others() {
    let world = World::new();
    world
        .round(&protect(&[(Proto::Tcp, 22)], vec![grant(5, Proto::Tcp, 22, &["198.51.100.5/32"], NOW + 10)]), NOW)
        .await;
    // Another connector's group, with a rule past its end: this one sweeps it too.
    let theirs = world.ec2.add_group("vpc-2", "jitgate-i-0aaaaaaaaaaaaaaaa", &[]);
    let their_vm = VM.replace(INSTANCE, "i-0aaaaaaaaaaaaaaaa").replace("resourceGroups/rg", "resourceGroups/other");
    world
        .ec2
        .add_rules(&theirs, &[perm("tcp", 22, 22, "192.0.2.1/32", Some(&crate::desired::describe(666, NOW + 10)))]);
    let tags = [
        jitgate_aws::Tag::new(crate::plan::TAG_MANAGED, "true"),
        jitgate_aws::Tag::new(crate::plan::TAG_INSTANCE, "i-0aaaaaaaaaaaaaaaa"),
        jitgate_aws::Tag::new(crate::plan::TAG_VM, &their_vm),
    ];
    jitgate_aws::Ec2::create_tags(&world.ec2, std::slice::from_ref(&theirs), &tags).await.expect("tags");
    let ec2 = Arc::new(world.ec2);
    let server = FakeServer::new(ec2.clone(), vec![port22()]);
    server.foreign_request.store(666, Ordering::SeqCst);
    let dir = tempfile::tempdir().expect("dir");
    let r = with_loop(&ec2, &server, config(dir.path()), (NOW + 100) * 1000, async {
        let heard = server.until(|h| h.reports.iter().any(|r| !r.removals.is_empty())).await;
        let removed: Vec<i64> = heard.reports.iter().flat_map(|r| &r.removals).map(|r| r.request_id).collect();
        assert_eq!(removed, [5]);
        assert!(ec2.group(&theirs).is_some_and(|g| g.ingress.is_empty()), "swept all the same");
        let states = server.heard.borrow().states;
        server.until(|h| h.states > states).await;
    })
    .await;
    assert!(r.is_ok(), "{r:?}");
}

#[tokio::test(start_paused = true)]
async fn instances_of_another_connector_s_vpc_are_left_out_when_the_server_says_so() {
    let world = World::new();
    let other = world.ec2.add_group("vpc-2", "db", &[]);
    world.ec2.add_instance("i-0bbbbbbbbbbbbbbbb", "vpc-2", "10.9.0.5", &[other.as_str()]);
    let ec2 = Arc::new(world.ec2);
    let server = FakeServer::new(ec2.clone(), vec![]);
    let dir = tempfile::tempdir().expect("dir");
    let mut cfg = config(dir.path());
    cfg.mapping.vpcs = std::collections::BTreeMap::from([("vpc-1".to_owned(), "rg".to_owned())]);
    let r = with_loop(&ec2, &server, cfg, NOW * 1000, async {
        let heard = server.until(|h| !h.inventories.is_empty()).await;
        let names: Vec<&str> = heard.inventories[0].vms.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, [INSTANCE]);
        assert_eq!(heard.inventories[0].vms[0].resource_group.as_deref(), Some("rg"));
    })
    .await;
    assert!(r.is_ok(), "{r:?}");
}
