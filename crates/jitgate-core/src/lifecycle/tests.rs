use super::*;
use crate::ids::{PolicyRef, VmId};
use crate::initiate::GrantStatus::{Initiated, Pending, Revoked, Scheduled};
use crate::initiate::StatusReason::{
    ApprovalExpired, ApprovalRequired, Approved, Denied, Expired, NewerRequestInitiated, PolicyDeleted, UserRequested,
};
use crate::policy::{resolve, validate, OsType, PolicyDraft, PortDraft, VmDraft};
use crate::{Protocol, SourceSpec};

const SUB: &str = "20ff7fc3-e762-44dd-bd96-b71116dcdc23";

fn vm_id(name: &str) -> String {
    format!("/subscriptions/{SUB}/resourceGroups/rg1/providers/Microsoft.Compute/virtualMachines/{name}")
}

fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("valid time")
}

fn at(minutes: i64) -> OffsetDateTime {
    now() + Duration::minutes(minutes)
}

fn state(status: GrantStatus, reason: StatusReason, end: i64) -> GrantState {
    GrantState { status, reason, end_time: at(end), opens_at: Some(at(-10)), window: None }
}

fn pending(end: i64, opens: i64, window: i64) -> GrantState {
    GrantState {
        status: Pending,
        reason: ApprovalRequired,
        end_time: at(end),
        opens_at: Some(at(opens)),
        window: Some(Duration::minutes(window)),
    }
}

fn scheduled(opens: i64, end: i64) -> GrantState {
    GrantState { status: Scheduled, reason: UserRequested, end_time: at(end), opens_at: Some(at(opens)), window: None }
}

/// vm1: 22/TCP PT3H; 3389/TCP PT1H that needs approval.
fn policy() -> Policy {
    let port = |number, approval| PortDraft {
        number: Some(number),
        protocol: Some("TCP".into()),
        prefix: Some("*".into()),
        max_duration: Some(if approval { "PT1H" } else { "PT3H" }.into()),
        require_approval: Some(approval),
        ..Default::default()
    };
    let draft = PolicyDraft {
        kind: None,
        vms: vec![VmDraft {
            id: vm_id("vm1"),
            ports: Some(vec![port(22, false), port(3389, true)]),
            public_ip_address: None,
        }],
    };
    let reference = PolicyRef::new(SUB, "rg1", "westeurope", "default").expect("valid");
    resolve(validate(reference, draft).expect("valid"), |_| Some(OsType::Linux)).expect("resolved")
}

fn vm_key() -> String {
    vm_id("vm1").to_ascii_lowercase()
}

fn facts(grants: &[(u16, GrantState)]) -> RequestFacts {
    RequestFacts {
        id: 7,
        policy_id: "p".into(),
        requestor: "alice".into(),
        grants: grants.iter().map(|&(number, state)| RequestGrant { vm_key: vm_key(), number, state }).collect(),
        extension: None,
    }
}

fn with_extension(mut f: RequestFacts, end: i64, by: &str) -> RequestFacts {
    f.extension = Some(PendingExtension { end_time: at(end), asked_by: Some(by.into()) });
    f
}

fn assert_refused<T: std::fmt::Debug>(r: Result<T, Invalid>, code: &str, kind: InvalidKind, message: &str) {
    let e = r.expect_err("refused");
    assert_eq!((e.code, e.kind, e.message.as_str()), (code, kind, message));
}

#[test]
fn a_new_grant_starts_open_scheduled_or_waiting() {
    let vm = VmId::parse(&vm_id("vm1")).expect("vm id");
    let plan = |opens: i64, end: i64, wait: Option<i64>| GrantPlan {
        vm_id: vm.clone(),
        number: 22,
        protocol: Protocol::Tcp,
        sources: SourceSpec::Single(crate::SourcePrefix::from_ip("198.51.100.7".parse().expect("ip"))),
        end_time: at(end),
        approval_timeout: wait.map(Duration::minutes),
        opens_at: at(opens),
    };
    let cases = [
        (plan(0, 60, None), (Initiated, UserRequested, at(60), None)),
        (plan(30, 90, None), (Scheduled, UserRequested, at(90), None)),
        // Waiting: the wait ends at now + timeout; the 60-minute window starts on approval.
        (plan(0, 60, Some(45)), (Pending, ApprovalRequired, at(45), Some(Duration::minutes(60)))),
        (plan(30, 60, Some(45)), (Pending, ApprovalRequired, at(45), Some(Duration::minutes(30)))),
    ];
    for (plan, want) in cases {
        let s = start(&plan, now());
        assert_eq!((s.status, s.reason, s.end_time, s.window), want, "{plan:?}");
        assert_eq!(s.opens_at, Some(plan.opens_at));
    }
}

#[test]
fn single_grant_transitions() {
    type Transition = fn(GrantState) -> Option<GrantState>;
    let swept: Transition = |s| expire(s, now());
    let opened: Transition = |s| open(s, now());
    let revoked = |s: GrantState, r| Some(GrantState { status: Revoked, reason: r, ..s });
    let live = state(Initiated, UserRequested, 30);
    let ended = state(Initiated, UserRequested, 0);
    let gone = state(Revoked, Expired, -5);
    let cases: Vec<(&str, Transition, GrantState, Option<GrantState>)> = vec![
        ("supersede live", supersede, live, revoked(live, NewerRequestInitiated)),
        ("supersede pending", supersede, pending(30, 0, 60), None),
        ("supersede scheduled", supersede, scheduled(10, 70), None),
        ("supersede revoked", supersede, gone, None),
        ("expire live, end passed", swept, ended, revoked(ended, Expired)),
        ("expire live, end ahead", swept, live, None),
        ("expire pending, wait over", swept, pending(0, 0, 60), revoked(pending(0, 0, 60), ApprovalExpired)),
        ("expire pending, still waiting", swept, pending(1, 0, 60), None),
        ("expire scheduled", swept, scheduled(-5, -1), None),
        ("expire revoked", swept, gone, None),
        (
            "open scheduled, start come",
            opened,
            scheduled(0, 60),
            Some(GrantState { status: Initiated, ..scheduled(0, 60) }),
        ),
        ("open scheduled, start ahead", opened, scheduled(1, 60), None),
        ("open scheduled without a start", opened, GrantState { opens_at: None, ..scheduled(0, 60) }, None),
        ("open live", opened, live, None),
        ("open pending", opened, pending(30, -5, 60), None),
        ("policy deleted, live", policy_deleted, live, revoked(live, PolicyDeleted)),
        ("policy deleted, pending", policy_deleted, pending(30, 0, 60), None),
        ("policy deleted, scheduled", policy_deleted, scheduled(10, 70), None),
        ("policy deleted, revoked", policy_deleted, gone, None),
        ("principal deleted, live", principal_deleted, live, revoked(live, UserRequested)),
        (
            "principal deleted, pending",
            principal_deleted,
            pending(30, 0, 60),
            revoked(pending(30, 0, 60), UserRequested),
        ),
        (
            "principal deleted, scheduled",
            principal_deleted,
            scheduled(10, 70),
            revoked(scheduled(10, 70), UserRequested),
        ),
        ("principal deleted, revoked", principal_deleted, gone, None),
    ];
    for (name, transition, from, want) in cases {
        assert_eq!(transition(from), want, "{name}");
    }
}

#[test]
fn the_status_sets_agree_with_the_transitions() {
    for s in [Initiated, Pending, Scheduled, Revoked] {
        let g = GrantState { status: s, ..state(s, UserRequested, -1) };
        assert_eq!(LIVE.contains(&s), g.is_live(), "{s:?}");
        assert_eq!(SUPERSEDABLE.contains(&s), supersede(g).is_some(), "{s:?}");
        assert_eq!(EXPIRING.contains(&s), expire(g, now()).is_some(), "{s:?}");
        assert_eq!(OPENING.contains(&s), open(g, now()).is_some(), "{s:?}");
        assert_eq!(ENDED_BY_POLICY_DELETE.contains(&s), policy_deleted(g).is_some(), "{s:?}");
        assert_eq!(ENDED_BY_PRINCIPAL_DELETE.contains(&s), principal_deleted(g).is_some(), "{s:?}");
    }
}

#[test]
fn revoking_ends_every_live_grant_and_refuses_a_request_with_none() {
    let live = state(Initiated, UserRequested, 30);
    // A live grant past its end (not yet swept) is still revoked.
    let unswept = state(Initiated, UserRequested, -1);
    let f = facts(&[(22, live), (80, state(Revoked, Expired, -5)), (3389, unswept), (443, pending(30, 0, 60))]);
    let got = revoke(&f).expect("revoked");
    let want = vec![
        (0, GrantState { status: Revoked, reason: UserRequested, ..live }),
        (2, GrantState { status: Revoked, reason: UserRequested, ..unswept }),
    ];
    assert_eq!(got, want);
    for grants in [vec![], vec![(22, state(Revoked, Expired, -5)), (3389, pending(30, 0, 60))]] {
        assert_refused(
            revoke(&facts(&grants)),
            codes::REQUEST_NOT_ACTIVE,
            InvalidKind::Conflict,
            "access request 7 has no live grant left to revoke (expired, superseded or revoked)",
        );
    }
}

#[test]
fn approving_opens_now_or_at_the_start_and_denying_revokes() {
    let now_window = pending(30, -5, 60);
    let later = pending(30, 20, 40);
    let lapsed = pending(0, -5, 60);
    let live = state(Initiated, UserRequested, 30);
    let f = facts(&[(22, now_window), (3389, later), (80, lapsed), (443, live)]);
    let approved = decide(&f, true, "bob", now()).expect("decided");
    let want = vec![
        // The window starts at approval, not at the request.
        (0, GrantState { status: Initiated, reason: Approved, end_time: at(60), ..now_window }),
        // A start still ahead stays the start: scheduled, the window from then.
        (1, GrantState { status: Scheduled, reason: Approved, end_time: at(60), ..later }),
    ];
    assert_eq!(approved, Decision::Grants { approved: true, changes: want });
    let denied = decide(&f, false, "bob", now()).expect("decided");
    let want = vec![
        (0, GrantState { status: Revoked, reason: Denied, ..now_window }),
        (1, GrantState { status: Revoked, reason: Denied, ..later }),
    ];
    assert_eq!(denied, Decision::Grants { approved: false, changes: want });
    // A pending extension waits while grants are pending: the grants are decided first.
    let both = with_extension(f, 90, "carol");
    assert!(matches!(decide(&both, true, "bob", now()), Ok(Decision::Grants { .. })));
}

#[test]
fn deciding_an_extension() {
    let short = state(Initiated, UserRequested, 30);
    let long = state(Initiated, UserRequested, 120);
    let ended = state(Initiated, UserRequested, 0);
    let already = state(Initiated, UserRequested, 90);
    let f = with_extension(facts(&[(22, short), (80, long), (443, ended), (8443, already)]), 90, "alice");
    // Only the open grants that end earlier get the new end; one that ends at it is left as it is.
    let want = vec![(0, GrantState { end_time: at(90), ..short })];
    assert_eq!(
        decide(&f, true, "bob", now()),
        Ok(Decision::Extension { approved: true, end_time: at(90), changes: want })
    );
    assert_eq!(
        decide(&f, false, "bob", now()),
        Ok(Decision::Extension { approved: false, end_time: at(90), changes: vec![] })
    );
    // Denying needs nothing open.
    let nothing_open = with_extension(facts(&[(22, ended)]), 90, "alice");
    assert!(matches!(decide(&nothing_open, false, "bob", now()), Ok(Decision::Extension { approved: false, .. })));
    let lapsed = "access request 7 has no open grant left to extend; request again";
    let past_end = with_extension(facts(&[(22, short)]), 0, "alice");
    for f in [nothing_open, past_end] {
        match decide(&f, true, "bob", now()) {
            Ok(Decision::ExtensionLapsed(e)) => {
                assert_eq!(
                    (e.code, e.kind, e.message.as_str()),
                    (codes::REQUEST_NOT_ACTIVE, InvalidKind::Conflict, lapsed)
                )
            }
            other => panic!("expected a lapsed extension, got {other:?}"),
        }
    }
}

#[test]
fn deciding_refusals() {
    let live = state(Initiated, UserRequested, 30);
    let waiting = facts(&[(22, pending(30, 0, 60))]);
    let extension = with_extension(facts(&[(22, live)]), 90, "carol");
    let cases: Vec<(&str, RequestFacts, &str, &str, InvalidKind, String)> = vec![
        (
            "the requestor decides its own request",
            waiting.clone(),
            "alice",
            codes::SELF_APPROVAL,
            InvalidKind::Forbidden,
            "'alice' made request 7 and cannot approve or deny it; another approver must".into(),
        ),
        (
            "the requestor decides its own extension",
            extension.clone(),
            "alice",
            codes::SELF_APPROVAL,
            InvalidKind::Forbidden,
            "'alice' made request 7 and cannot approve or deny it; another approver must".into(),
        ),
        (
            "whoever asked for the extension decides it",
            extension,
            "carol",
            codes::SELF_APPROVAL,
            InvalidKind::Forbidden,
            "'carol' asked for the extension of request 7 and cannot decide it; another approver must".into(),
        ),
        (
            "nothing waits",
            facts(&[(22, live), (80, pending(0, -5, 60)), (443, state(Revoked, Denied, 30))]),
            "bob",
            codes::REQUEST_NOT_PENDING,
            InvalidKind::Conflict,
            "access request 7 has nothing waiting for a decision (decided, expired or not needing approval)".into(),
        ),
    ];
    for (name, f, decider, code, kind, message) in cases {
        for approve in [true, false] {
            let e = decide(&f, approve, decider, now()).expect_err(name);
            assert_eq!((e.code, e.kind, e.message), (code, kind, message.clone()), "{name}");
        }
    }
}

#[test]
fn extending_moves_the_end_of_open_grants_or_waits_for_an_approver() {
    let p = policy();
    let live = state(Initiated, UserRequested, 30);
    let f = facts(&[(22, live), (22, state(Revoked, Expired, -5)), (22, state(Initiated, UserRequested, 0))]);
    let want = Extension::Extended(vec![(0, GrantState { end_time: at(120), ..live })]);
    assert_eq!(extend(&f, Some(&p), at(120), now()), Ok(want));
    // The maximum counts from now, with the leeway for clock skew.
    assert!(extend(&f, Some(&p), now() + Duration::hours(3) + END_TIME_LEEWAY, now()).is_ok());
    let approval = facts(&[(22, live), (3389, live)]);
    assert_eq!(extend(&approval, Some(&p), at(45), now()), Ok(Extension::NeedsApproval));
}

/// Name, facts, policy, new end; then the refusal: code, kind, message, target.
type ExtendCase<'a> =
    (&'a str, RequestFacts, Option<&'a Policy>, OffsetDateTime, &'a str, InvalidKind, &'a str, Option<&'a str>);

#[test]
fn extending_refusals() {
    let p = policy();
    let live = state(Initiated, UserRequested, 30);
    let gone = policy_with_ports_only(&[3389]);
    let cases: Vec<ExtendCase> = vec![
        (
            "nothing open",
            facts(&[
                (22, state(Revoked, UserRequested, 30)),
                (22, state(Initiated, UserRequested, 0)),
                (3389, pending(30, 0, 60)),
            ]),
            Some(&p),
            at(60),
            codes::REQUEST_NOT_ACTIVE,
            InvalidKind::Conflict,
            "access request 7 has no open grant to extend",
            None,
        ),
        (
            "the policy is gone",
            facts(&[(22, live)]),
            None,
            at(60),
            codes::POLICY_NOT_FOUND,
            InvalidKind::NotFound,
            "policy 'p' is gone",
            None,
        ),
        (
            "the port left the policy",
            facts(&[(22, live)]),
            Some(&gone),
            at(60),
            codes::REQUEST_NOT_ACTIVE,
            InvalidKind::Conflict,
            "port 22 is no longer in the policy",
            None,
        ),
        (
            "not later",
            facts(&[(22, live)]),
            Some(&p),
            at(30),
            codes::INVALID_INITIATE,
            InvalidKind::BadInput,
            "the new end 2027-01-15T08:30:00Z is not later than the current one",
            Some("endTimeUtc"),
        ),
        (
            "past the port's maximum",
            facts(&[(22, live)]),
            Some(&p),
            now() + Duration::hours(3) + END_TIME_LEEWAY + Duration::seconds(1),
            codes::NOT_SUBSET,
            InvalidKind::BadInput,
            "port 22: at most PT3H from now",
            Some("endTimeUtc"),
        ),
    ];
    for (name, f, policy, end, code, kind, message, target) in cases {
        let e = extend(&f, policy, end, now()).expect_err(name);
        assert_eq!((e.code, e.kind, e.message.as_str(), e.target.as_deref()), (code, kind, message, target), "{name}");
    }
}

fn policy_with_ports_only(numbers: &[u16]) -> Policy {
    let mut p = policy();
    for vm in &mut p.vms {
        vm.ports.retain(|r| numbers.contains(&r.number));
    }
    p
}

#[test]
fn the_sweep_records_name_the_grant_and_what_happened() {
    let was = state(Initiated, UserRequested, 0);
    let swept = Swept { gid: 9, rid: 4, policy_id: "/p" };
    let now_state = expire(was, now()).expect("expires");
    let event = expired_event(now(), swept, "/vm1", 22, "10.0.0.0/24\n10.0.1.0/24", &was, &now_state);
    assert_eq!((event.correlation_id.as_str(), event.resource_id.as_str()), ("expiry-9", "/p"));
    assert_eq!(event.properties["requestId"], "4");
    assert_eq!(event.properties["sources"], "10.0.0.0/24 10.0.1.0/24");
    assert_eq!(event.properties["reason"], now_state.reason.as_str());
    let opened = opened_event(now(), swept);
    assert_eq!((opened.correlation_id.as_str(), opened.caller.as_str()), ("open-9", "jitgate"));
    assert_eq!(opened.operation, crate::audit::ops::GRANT_OPEN);
}

#[test]
fn the_records_of_a_persons_changes_say_what_was_decided() {
    let audit = crate::audit::AuditEvent { resource_id: String::new(), ..crate::audit::test_event(now()) };
    assert_eq!(request_not_found(3).code, codes::REQUEST_NOT_FOUND);
    let revoked = revoked_event(audit.clone(), 3, "/p".into(), 2);
    assert_eq!((revoked.resource_id.as_str(), revoked.properties["revokedGrants"].as_str()), ("/p", "2"));
    let approved = decided_event(audit.clone(), 3, "alice", true, Decided::Grants(2), Some("ok"));
    assert_eq!(approved.properties["decision"], StatusReason::Approved.as_str());
    assert_eq!((approved.properties["grants"].as_str(), approved.properties["reason"].as_str()), ("2", "ok"));
    let denied = decided_event(audit.clone(), 3, "alice", false, Decided::Extension(at(30)), None);
    assert_eq!(denied.properties["decision"], StatusReason::Denied.as_str());
    assert!(denied.properties.contains_key("extensionEndTimeUtc") && !denied.properties.contains_key("reason"));
    assert_eq!(extended_event(audit.clone(), 3, at(30), true).properties["decision"], Pending.as_str());
    assert!(!extended_event(audit, 3, at(30), false).properties.contains_key("decision"));
}
