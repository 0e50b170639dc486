//! Properties of the grant state machine (`initiate` → `lifecycle`): any sequence of approvals,
//! denials, extensions, sweeps, revocations, supersedes and deletions, at times that move
//! forward and (another replica's clock) a little back, keeps every grant's state true to its
//! rules, and every accepted transition has its audit record.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may panic on a failed expectation.

use std::collections::BTreeMap;

use jitgate_core::audit::{AuditEvent, AuditStatus};
use jitgate_core::ids::{PolicyRef, VmId};
use jitgate_core::initiate::{GrantPlan, GrantStatus, StatusReason, END_TIME_LEEWAY};
use jitgate_core::invalid::InvalidKind;
use jitgate_core::lifecycle::{
    self, decided_event, expired_event, extended_event, opened_event, revoked_event, Change, Decided, Decision,
    Extension, GrantState, PendingExtension, RequestFacts, RequestGrant, Swept,
};
use jitgate_core::policy::{resolve, validate, OsType, PolicyDraft, PortDraft, VmDraft};
use jitgate_core::{rfc3339, Policy, Protocol, SourcePrefix, SourceSpec};
use proptest::prelude::*;
use time::{Duration, OffsetDateTime};

const SUB: &str = "20ff7fc3-e762-44dd-bd96-b71116dcdc23";
const REQUESTOR: &str = "alice";
const PEOPLE: [&str; 3] = [REQUESTOR, "bob", "carol"];
/// The policy's ports: (number, maximum in minutes, needs an approver).
const PORTS: [(u16, i64, bool); 3] = [(22, 180, false), (3389, 60, true), (80, 1440, false)];

fn vm_id() -> String {
    format!("/subscriptions/{SUB}/resourceGroups/rg1/providers/Microsoft.Compute/virtualMachines/vm1")
}

fn policy() -> Policy {
    let ports = PORTS
        .iter()
        .map(|&(number, max, approval)| PortDraft {
            number: Some(i64::from(number)),
            protocol: Some("TCP".into()),
            prefix: Some("*".into()),
            max_duration: Some(format!("PT{max}M")),
            require_approval: Some(approval),
            approval_timeout: approval.then(|| "PT30M".into()),
            ..Default::default()
        })
        .collect();
    let draft =
        PolicyDraft { kind: None, vms: vec![VmDraft { id: vm_id(), ports: Some(ports), public_ip_address: None }] };
    let reference = PolicyRef::new(SUB, "rg1", "westeurope", "default").expect("valid");
    resolve(validate(reference, draft).expect("valid"), |_| Some(OsType::Linux)).expect("resolved")
}

fn t0() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("time")
}

/// What happens next to the request.
#[derive(Debug, Clone)]
enum Step {
    /// The clock moves by this many seconds (back a little, too: another replica's clock).
    Tick(i64),
    Approve(usize),
    Deny(usize),
    Revoke,
    /// The sweep: scheduled grants whose start came open, then ended grants expire.
    Sweep,
    /// Someone asks for the grants to end this many minutes from now.
    Extend(i64, usize),
    /// A newer request for the same source replaces this grant.
    Supersede(usize),
    PolicyDeleted,
    PrincipalDeleted,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => prop_oneof![-180i64..120, -60i64..7200].prop_map(Step::Tick),
        2 => (0..PEOPLE.len()).prop_map(Step::Approve),
        1 => (0..PEOPLE.len()).prop_map(Step::Deny),
        1 => Just(Step::Revoke),
        3 => Just(Step::Sweep),
        2 => (-30i64..1500, 0..PEOPLE.len()).prop_map(|(m, who)| Step::Extend(m, who)),
        1 => (0..3usize).prop_map(Step::Supersede),
        1 => Just(Step::PolicyDeleted),
        1 => Just(Step::PrincipalDeleted),
    ]
}

/// A request: which ports (1 to 3 of them), each with its window in minutes, and a start that
/// is now or scheduled some minutes ahead.
fn request() -> impl Strategy<Value = (Vec<(usize, i64)>, i64)> {
    (
        prop::sample::subsequence(vec![0usize, 1, 2], 1..=3),
        prop::collection::vec(1i64..1440, 3),
        prop_oneof![Just(0i64), 1i64..600],
    )
        .prop_map(|(ports, windows, start)| {
            (ports.into_iter().map(|p| (p, windows[p].min(PORTS[p].1))).collect(), start)
        })
}

fn audit(now: OffsetDateTime) -> AuditEvent {
    AuditEvent {
        time: now,
        operation: "op".into(),
        status: AuditStatus::Started,
        caller: "someone".into(),
        caller_ip: None,
        resource_id: "/r".into(),
        correlation_id: "c".into(),
        properties: BTreeMap::new(),
    }
}

/// The status and reason pairs a grant can be in.
fn consistent(s: &GrantState) -> bool {
    use GrantStatus::*;
    use StatusReason::*;
    match s.status {
        Initiated | Scheduled => {
            matches!(s.reason, UserRequested | Approved) && s.window.is_none_or(|_| s.reason == Approved)
        }
        Pending => s.reason == ApprovalRequired && s.window.is_some(),
        Revoked => matches!(
            s.reason,
            UserRequested | Expired | NewerRequestInitiated | PolicyDeleted | Denied | ApprovalExpired
        ),
    }
}

struct Run {
    facts: RequestFacts,
    now: OffsetDateTime,
    policy: Option<Policy>,
}

impl Run {
    /// Applies `changes` made by `what`, checking what holds for every change.
    fn apply(&mut self, what: &str, changes: &[Change]) {
        for (i, (idx, new)) in changes.iter().enumerate() {
            assert!(!changes[..i].iter().any(|(j, _)| j == idx), "{what}: grant {idx} changed twice");
            let old = self.facts.grants[*idx].state;
            assert_ne!(old.status, GrantStatus::Revoked, "{what}: the ended grant {idx} changed: {old:?} → {new:?}");
            assert_ne!(*new, old, "{what}: a change that changes nothing");
            assert!(consistent(new), "{what}: {new:?}");
            assert!(
                !(new.status == GrantStatus::Pending && old.status != GrantStatus::Pending),
                "{what}: back to pending"
            );
            // A window never ends before it opens (a pending grant's end is when the wait for
            // an approver ends, and stays that when it is revoked unopened).
            if matches!(new.status, GrantStatus::Initiated | GrantStatus::Scheduled) {
                if let Some(at) = new.opens_at {
                    assert!(new.end_time >= at, "{what}: grant {idx} ends at {} before it opens at {at}", new.end_time);
                }
            }
            self.facts.grants[*idx].state = *new;
        }
    }

    fn step(&mut self, step: &Step) {
        let now = self.now;
        match *step {
            Step::Tick(s) => self.now += Duration::seconds(s),
            Step::Approve(who) | Step::Deny(who) => {
                let approve = matches!(step, Step::Approve(_));
                let decider = PEOPLE[who];
                let before = self.facts.clone();
                match lifecycle::decide(&self.facts, approve, decider, now) {
                    Err(e) => {
                        let own = decider == REQUESTOR
                            || (!before.grants.iter().any(|g| waiting(&g.state, now))
                                && before.extension.as_ref().is_some_and(|x| x.asked_by.as_deref() == Some(decider)));
                        assert_eq!(e.kind == InvalidKind::Forbidden, own, "{step:?}: {e:?}");
                    }
                    Ok(Decision::Grants { approved, changes }) => {
                        assert_ne!(decider, REQUESTOR, "approved by the requestor");
                        assert_eq!(approved, approve);
                        for (idx, new) in &changes {
                            let old = before.grants[*idx].state;
                            assert!(waiting(&old, now), "{step:?} changed grant {idx}, which was not waiting: {old:?}");
                            if approve {
                                let start = old.opens_at.map_or(now, |at| at.max(now));
                                let want = if start > now { GrantStatus::Scheduled } else { GrantStatus::Initiated };
                                assert_eq!((new.status, new.reason), (want, StatusReason::Approved));
                                assert_eq!(
                                    new.end_time,
                                    start + old.window.unwrap_or_default(),
                                    "the window starts when approved"
                                );
                            } else {
                                assert_eq!((new.status, new.reason), (GrantStatus::Revoked, StatusReason::Denied));
                            }
                        }
                        let waited = before.grants.iter().filter(|g| waiting(&g.state, now)).count();
                        assert_eq!(changes.len(), waited, "{step:?}: every waiting grant is decided");
                        let event = decided_event(
                            audit(now),
                            before.id,
                            REQUESTOR,
                            approve,
                            Decided::Grants(changes.len()),
                            None,
                        );
                        check_event(&event, before.id, &[("grants", changes.len().to_string())]);
                        self.apply("decide", &changes);
                    }
                    Ok(Decision::Extension { approved, end_time, changes }) => {
                        assert_ne!(decider, REQUESTOR);
                        let ext = before.extension.clone().expect("an extension was pending");
                        assert_ne!(ext.asked_by.as_deref(), Some(decider), "decided by who asked");
                        assert_eq!((approved, end_time), (approve, ext.end_time));
                        for (idx, new) in &changes {
                            let old = before.grants[*idx].state;
                            assert!(
                                new.end_time > old.end_time && new.status == old.status,
                                "an extension shortens: {old:?} → {new:?}"
                            );
                        }
                        let event = decided_event(
                            audit(now),
                            before.id,
                            REQUESTOR,
                            approve,
                            Decided::Extension(end_time),
                            None,
                        );
                        check_event(&event, before.id, &[("extensionEndTimeUtc", rfc3339(end_time))]);
                        self.facts.extension = None;
                        self.apply("extension decided", &changes);
                    }
                    Ok(Decision::ExtensionLapsed(e)) => {
                        assert!(approve && before.extension.is_some() && e.kind == InvalidKind::Conflict, "{e:?}");
                        self.facts.extension = None;
                    }
                }
            }
            Step::Revoke => {
                let live = self.facts.grants.iter().filter(|g| g.state.is_live()).count();
                match lifecycle::revoke(&self.facts) {
                    Err(e) => assert!(live == 0 && e.kind == InvalidKind::Conflict, "{e:?} with {live} live"),
                    Ok(changes) => {
                        assert_eq!(changes.len(), live, "every live grant ends");
                        assert!(changes.iter().all(|(_, s)| s.reason == StatusReason::UserRequested));
                        let event = revoked_event(audit(now), self.facts.id, "/p".into(), changes.len());
                        check_event(&event, self.facts.id, &[("revokedGrants", live.to_string())]);
                        self.apply("revoke", &changes);
                    }
                }
            }
            Step::Sweep => {
                let mut changes = Vec::new();
                for (idx, g) in self.facts.grants.iter().enumerate() {
                    if let Some(new) = lifecycle::open(g.state, now) {
                        assert!(g.state.opens_at.is_some_and(|at| at <= now), "opened before its start: {:?}", g.state);
                        assert_eq!(new.status, GrantStatus::Initiated);
                        let swept = Swept { gid: idx as i64, rid: self.facts.id, policy_id: "/p" };
                        check_event(&opened_event(now, swept), self.facts.id, &[]);
                        changes.push((idx, new));
                    }
                }
                self.apply("open", &changes);
                let mut changes = Vec::new();
                for (idx, g) in self.facts.grants.iter().enumerate() {
                    if let Some(new) = lifecycle::expire(g.state, now) {
                        assert!(g.state.end_time <= now, "expired before its end: {:?} at {now}", g.state);
                        let swept = Swept { gid: idx as i64, rid: self.facts.id, policy_id: "/p" };
                        let event = expired_event(now, swept, "vm1", g.number, "*", &g.state, &new);
                        check_event(
                            &event,
                            self.facts.id,
                            &[("reason", new.reason.as_str().into()), ("endTimeUtc", rfc3339(g.state.end_time))],
                        );
                        changes.push((idx, new));
                    } else {
                        let expiring = matches!(g.state.status, GrantStatus::Initiated | GrantStatus::Pending);
                        assert!(!(expiring && g.state.end_time <= now), "the sweep left an ended grant: {:?}", g.state);
                    }
                }
                self.apply("expire", &changes);
            }
            Step::Extend(minutes, who) => {
                let new_end = now + Duration::minutes(minutes);
                let before = self.facts.clone();
                match lifecycle::extend(&self.facts, self.policy.as_ref(), new_end, now) {
                    Err(_) => {}
                    Ok(Extension::NeedsApproval) => {
                        let event = extended_event(audit(now), before.id, new_end, true);
                        check_event(&event, before.id, &[("endTimeUtc", rfc3339(new_end))]);
                        self.facts.extension =
                            Some(PendingExtension { end_time: new_end, asked_by: Some(PEOPLE[who].into()) });
                    }
                    Ok(Extension::Extended(changes)) => {
                        for (idx, new) in &changes {
                            let old = before.grants[*idx].state;
                            assert!(old.is_live() && old.end_time > now, "extended a grant that was not open: {old:?}");
                            assert!(new.end_time > old.end_time && new.end_time == new_end, "{old:?} → {new:?}");
                            let max =
                                PORTS.iter().find(|p| p.0 == before.grants[*idx].number).map(|p| p.1).expect("port");
                            assert!(
                                new_end - now <= Duration::minutes(max) + END_TIME_LEEWAY,
                                "past the port's maximum"
                            );
                        }
                        let event = extended_event(audit(now), before.id, new_end, false);
                        check_event(&event, before.id, &[("endTimeUtc", rfc3339(new_end))]);
                        self.apply("extend", &changes);
                    }
                }
            }
            Step::Supersede(idx) => {
                if let Some(g) = self.facts.grants.get(idx) {
                    if let Some(new) = lifecycle::supersede(g.state) {
                        assert!(g.state.is_live() && new.reason == StatusReason::NewerRequestInitiated);
                        self.apply("supersede", &[(idx, new)]);
                    }
                }
            }
            Step::PolicyDeleted => {
                let changes: Vec<Change> = (self.facts.grants.iter().enumerate())
                    .filter_map(|(i, g)| lifecycle::policy_deleted(g.state).map(|s| (i, s)))
                    .collect();
                self.apply("policy deleted", &changes);
                assert!(self.facts.grants.iter().all(|g| !g.state.is_live()), "a live grant outlived its policy");
                self.policy = None;
            }
            Step::PrincipalDeleted => {
                let changes: Vec<Change> = (self.facts.grants.iter().enumerate())
                    .filter_map(|(i, g)| lifecycle::principal_deleted(g.state).map(|s| (i, s)))
                    .collect();
                self.apply("principal deleted", &changes);
                assert!(self.facts.grants.iter().all(|g| g.state.status == GrantStatus::Revoked));
            }
        }
    }
}

fn waiting(s: &GrantState, now: OffsetDateTime) -> bool {
    s.status == GrantStatus::Pending && s.end_time > now
}

/// An accepted change's audit record: succeeded, naming the request, with these properties.
fn check_event(event: &AuditEvent, id: i64, properties: &[(&str, String)]) {
    assert_eq!(event.status, AuditStatus::Succeeded, "{event:?}");
    assert_eq!(event.properties.get("requestId"), Some(&id.to_string()), "{event:?}");
    for (key, value) in properties {
        assert_eq!(event.properties.get(*key), Some(value), "{key} in {event:?}");
    }
    assert!(event.clone().bounded().is_bounded());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn every_sequence_of_changes_keeps_the_grants_true((ports, start) in request(), steps in prop::collection::vec(step(), 1..40)) {
        let policy = policy();
        let now = t0();
        let vm = VmId::parse(&vm_id()).expect("vm");
        let grants = ports
            .iter()
            .map(|&(p, window)| {
                let (number, _, approval) = PORTS[p];
                let opens_at = now + Duration::minutes(start);
                let plan = GrantPlan {
                    vm_id: vm.clone(),
                    number,
                    protocol: Protocol::Tcp,
                    sources: SourceSpec::Single(SourcePrefix::any()),
                    end_time: opens_at + Duration::minutes(window),
                    approval_timeout: approval.then(|| Duration::minutes(30)),
                    opens_at,
                };
                let state = lifecycle::start(&plan, now);
                assert!(consistent(&state) && state.end_time > now, "{state:?}");
                RequestGrant { vm_key: vm.key(), number, state }
            })
            .collect();
        let facts = RequestFacts { id: 7, policy_id: "/p".into(), requestor: REQUESTOR.into(), grants, extension: None };
        let mut run = Run { facts, now, policy: Some(policy) };
        for s in &steps {
            run.step(s);
            for g in &run.facts.grants {
                prop_assert!(consistent(&g.state), "{:?} after {s:?}", g.state);
            }
        }
    }
}
