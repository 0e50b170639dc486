//! Targets for the JSON bodies of the ARM API and the role API, read as the server reads them
//! (`parse_json`, the DTO's draft, the domain's validation and decision).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use jitgate_api_types::arm::{policy_out, request_out, InitiateIn, PolicyIn, PolicyOut, RequestOut};
use jitgate_api_types::rbac::{validate_scope, RoleDefinitionIo};
use jitgate_api_types::{datetime, parse_json};
use jitgate_core::audit::{AuditEvent, AuditStatus};
use jitgate_core::initiate::{decide, GrantStatus, Reach, Requested, END_TIME_LEEWAY, MAX_SCHEDULE_AHEAD};
use jitgate_core::lifecycle;
use jitgate_core::policy::{resolve, validate, OsType, MAX_MAX_ACCESS, MIN_MAX_ACCESS};
use jitgate_core::rbac::action_matches;
use jitgate_core::records::PolicyRecord;
use jitgate_core::{Invalid, Policy, PolicyRef};
use time::OffsetDateTime;

use crate::split_line;

const SUB: &str = "20ff7fc3-e762-44dd-bd96-b71116dcdc23";

fn reference() -> PolicyRef {
    PolicyRef::new(SUB, "rg1", "westeurope", "default").unwrap_or_else(|e| panic!("{e:?}"))
}

/// The time every decision of these targets is taken at (fixed: a corpus replays the same).
pub(crate) fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_795_622_400).unwrap_or_else(|e| panic!("{e}"))
    // 2026-11-25T16:00:00Z
}

/// A body as the server reads it, and the policy it becomes (every VM a registered Linux VM).
fn read_policy(body: &[u8]) -> Result<Policy, Invalid> {
    let draft = parse_json::<PolicyIn>(body)?.into_draft()?;
    let validated = validate(reference(), draft)?;
    resolve(validated, |_| Some(OsType::Linux))
}

fn check_invalid(e: &Invalid) {
    assert!(!e.code.is_empty() && !e.message.is_empty(), "a refusal names its code and reason: {e:?}");
}

/// `PUT …/jitNetworkAccessPolicies/{name}`.
pub fn policy_put(data: &[u8]) {
    let policy = match read_policy(data) {
        Ok(p) => p,
        Err(e) => return check_invalid(&e),
    };
    let mut keys = Vec::new();
    for vm in &policy.vms {
        assert!(vm.id.subscription().eq_ignore_ascii_case(SUB) && vm.id.resource_group().eq_ignore_ascii_case("rg1"));
        assert!(!keys.contains(&vm.id.key()), "{} twice", vm.id);
        keys.push(vm.id.key());
        assert!(!vm.ports.is_empty(), "{}: no port after the OS defaults", vm.id);
        for (i, p) in vm.ports.iter().enumerate() {
            assert!(p.number >= 1 && !vm.ports[..i].iter().any(|q| q.number == p.number), "port {}", p.number);
            let max = p.max_duration.duration();
            assert!((MIN_MAX_ACCESS..=MAX_MAX_ACCESS).contains(&max), "port {}: maximum {max}", p.number);
            assert!(!p.sources.prefixes().is_empty());
        }
    }
    // The answer, read back as a PUT body (clients send it back), is the same policy.
    let out = policy_out(&PolicyRecord { policy: policy.clone(), requests: Vec::new() });
    let bytes = serde_json::to_vec(&out).unwrap_or_else(|e| panic!("{e}"));
    let again: PolicyOut = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again, out, "the answer's JSON reads back");
    match read_policy(&bytes) {
        Ok(p) => assert_eq!(p, policy, "the answer, sent back, is another policy"),
        Err(e) => panic!("the answer, sent back, is refused: {e:?}\n{}", String::from_utf8_lossy(&bytes)),
    }
}

/// The policy initiates are decided against: vm1 22/TCP from anywhere for PT3H, 3389/TCP from
/// two ranges for PT1H with an approver, 53/UDP mapped to 5353; vm2 22/* from one /24 for PT5M.
fn initiate_policy() -> Policy {
    let vm = |name: &str| {
        format!("/subscriptions/{SUB}/resourceGroups/rg1/providers/Microsoft.Compute/virtualMachines/{name}")
    };
    let body = serde_json::json!({"properties": {"virtualMachines": [
        {"id": vm("vm1"), "ports": [
            {"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "*", "maxRequestAccessDuration": "PT3H"},
            {"number": 3389, "protocol": "TCP", "allowedSourceAddressPrefixes": ["10.0.0.0/8", "2001:db8::/32"],
             "maxRequestAccessDuration": "PT1H", "requireApproval": true, "approvalTimeout": "PT30M"},
            {"number": 53, "protocol": "UDP", "allowedSourceAddressPrefix": "*", "maxRequestAccessDuration": "PT24H",
             "mappedPort": 5353}]},
        {"id": vm("VM2"), "ports": [
            {"number": 22, "protocol": "*", "allowedSourceAddressPrefix": "203.0.113.0/24", "maxRequestAccessDuration": "PT5M"}]}
    ]}});
    read_policy(body.to_string().as_bytes()).unwrap_or_else(|e| panic!("{e:?}"))
}

/// `POST …/jitNetworkAccessPolicies/{name}/initiate`, decided at [`now`] for a caller at
/// 198.51.100.7, then recorded and answered as the store and the server do.
pub fn initiate(data: &[u8]) {
    let policy = initiate_policy();
    let draft = match parse_json::<InitiateIn>(data).and_then(InitiateIn::into_draft) {
        Ok(d) => d,
        Err(e) => return check_invalid(&e),
    };
    let now = now();
    let caller = Some(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)));
    let plan = match decide(&policy, &draft, caller, now) {
        Ok(p) => p,
        Err(e) => return check_invalid(&e),
    };
    assert!(!plan.grants.is_empty());
    assert!(plan.start_time >= now && plan.start_time <= now + MAX_SCHEDULE_AHEAD);
    let mut requested = Requested::default();
    for (i, g) in plan.grants.iter().enumerate() {
        let Some(rule) = policy.vm(&g.vm_id.key()).and_then(|v| v.port(g.number)) else {
            panic!("grant {i}: port {} of {} is not in the policy", g.number, g.vm_id);
        };
        assert!(!plan.grants[..i].iter().any(|o| o.vm_id == g.vm_id && o.number == g.number), "grant {i} twice");
        assert_eq!(g.opens_at, plan.start_time);
        assert!(g.end_time > g.opens_at, "grant {i} ends before it opens");
        assert!(g.end_time - g.opens_at <= rule.max_duration.duration() + END_TIME_LEEWAY, "grant {i} is too long");
        assert!(rule.sources.covers(&g.sources), "grant {i}: sources outside the policy's");
        assert_eq!(g.approval_timeout.is_some(), rule.require_approval);
        let state = lifecycle::start(g, now);
        let expected = match (rule.require_approval, g.opens_at > now) {
            (true, _) => GrantStatus::Pending,
            (false, true) => GrantStatus::Scheduled,
            (false, false) => GrantStatus::Initiated,
        };
        assert_eq!(state.status, expected, "grant {i}");
        assert!(state.end_time > now, "grant {i} starts ended");
        let reach = Reach::of(&policy, g, false, None, None).unwrap_or_else(|e| panic!("{e:?}"));
        requested.add(g, &state, reach);
    }
    let audit = AuditEvent {
        time: now,
        operation: jitgate_core::audit::ops::POLICY_INITIATE.into(),
        status: AuditStatus::Started,
        caller: "alice".into(),
        caller_ip: None,
        resource_id: policy.reference.id(),
        correlation_id: "c".into(),
        properties: BTreeMap::new(),
    };
    let event = requested.event(audit, 7, &plan).bounded();
    assert_eq!(event.status, AuditStatus::Succeeded);
    assert!(event.is_bounded() && event.properties.get("requestId").map(String::as_str) == Some("7"));
    // The answer's times are the grants' ends, in the wire form, and its JSON reads back.
    let record = requested.into_record(7, "alice".into(), plan.clone());
    let out = request_out(&record);
    let ends: Vec<_> =
        out.virtual_machines.iter().flat_map(|v| &v.ports).map(|p| datetime::parse(&p.end_time_utc)).collect();
    assert_eq!(ends.len(), plan.grants.len());
    for (end, g) in ends.iter().zip(record.grants.iter()) {
        let end = end.as_ref().unwrap_or_else(|e| panic!("{e}"));
        assert!((g.end_time - *end).whole_microseconds().abs() < 1, "{end} for {}", g.end_time);
    }
    let bytes = serde_json::to_vec(&out).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(serde_json::from_slice::<RequestOut>(&bytes).ok().as_ref(), Some(&out));
}

/// `PUT /api/v1/roleDefinitions/{name}`: the first line is the name in the path, the rest the
/// body (Azure's role definition JSON).
pub fn role_definition(data: &[u8]) {
    let (name, body) = split_line(data);
    let Ok(name) = std::str::from_utf8(name) else { return };
    let role = match parse_json::<RoleDefinitionIo>(body).and_then(|io| io.into_role(name, "id-1".into())) {
        Ok(r) => r,
        Err(e) => return check_invalid(&e),
    };
    assert!(role.name.eq_ignore_ascii_case(name) && !role.actions.is_empty() && !role.built_in);
    for s in &role.assignable_scopes {
        assert_eq!(validate_scope(s), Ok(()));
        assert!(role.assignable_at(s), "{} is not assignable at its own scope {s:?}", role.name);
    }
    for a in &role.actions {
        assert!(action_matches(a, a), "{a:?} does not match itself");
        let upper = a.to_ascii_uppercase();
        assert!(action_matches(a, &upper) && action_matches(&upper, a), "{a:?}: ASCII case counts");
        let taken = role.not_actions.iter().any(|n| action_matches(n, a));
        assert_eq!(role.allows(a), !taken, "{a:?}");
    }
    // As the API answers it, and read back as a body: the same role.
    let bytes = serde_json::to_vec(&RoleDefinitionIo::from_role(&role)).unwrap_or_else(|e| panic!("{e}"));
    let again = parse_json::<RoleDefinitionIo>(&bytes).and_then(|io| io.into_role(name, "id-1".into()));
    assert_eq!(again.as_ref(), Ok(&role), "{}", String::from_utf8_lossy(&bytes));
}
