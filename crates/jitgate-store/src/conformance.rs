//! The behaviour every backend must show, written once. A backend's tests call [`run_all`]
//! with a fresh, empty store (see jitgate-store-sqlite's `tests/conformance.rs`).
//!
//! It is a test suite compiled only with the `conformance` feature (by backends' tests), so a
//! failed expectation is meant to panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use time::{Duration, OffsetDateTime};

use jitgate_core::audit::{first_invalid, AuditEvent, AuditStatus, GENESIS};
use jitgate_core::enforcement::{AgentMode, JoiningAgent};
use jitgate_core::initiate::{GrantStatus, InitiateDraft, InitiatePortDraft, InitiateVmDraft, StatusReason};
use jitgate_core::invalid::codes;
use jitgate_core::policy::{validate, PolicyDraft, PortDraft, VmDraft};
use jitgate_core::{OsType, PolicyRef, VmId};

use crate::{
    AgentJoin, AgentReport, AuditFilter, InitiateCommand, JoinTokenSpec, ListScope, NewToken, OidcIdentity, OidcSignIn,
    Store, StoreError, TokenOrigin, VmSpec, Webhook,
};

pub const SUB: &str = "20ff7fc3-e762-44dd-bd96-b71116dcdc23";

fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_900_000_000).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn audit(op: &str) -> AuditEvent {
    AuditEvent {
        time: now(),
        operation: op.into(),
        status: AuditStatus::Started,
        caller: "tester".into(),
        caller_ip: Some("127.0.0.1".into()),
        resource_id: "/test".into(),
        correlation_id: "corr".into(),
        properties: BTreeMap::new(),
    }
}

fn vm_id(rg: &str, name: &str) -> VmId {
    VmId::parse(&format!("/subscriptions/{SUB}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{name}"))
        .expect("valid vm id")
}

fn policy_ref(rg: &str, location: &str, name: &str) -> PolicyRef {
    PolicyRef::new(SUB, rg, location, name).expect("valid policy ref")
}

async fn register(store: &dyn Store, rg: &str, name: &str, os: OsType) {
    let spec = VmSpec {
        id: vm_id(rg, name),
        os_type: os,
        location: "westeurope".into(),
        address: None,
        gateway: None,
        classic: false,
    };
    store.put_vm(spec, audit("vm")).await.expect("register vm");
}

fn one_vm_policy(rg: &str, vm: &str, ports: Option<Vec<PortDraft>>) -> PolicyDraft {
    PolicyDraft { kind: None, vms: vec![VmDraft { id: vm_id(rg, vm).as_str().into(), ports, public_ip_address: None }] }
}

fn ssh_port() -> PortDraft {
    PortDraft {
        number: Some(22),
        protocol: Some("TCP".into()),
        prefix: Some("*".into()),
        prefixes: None,
        max_duration: Some("PT3H".into()),
        ..Default::default()
    }
}

async fn put(store: &dyn Store, r: &PolicyRef, draft: PolicyDraft) -> Result<crate::PolicyRecord, StoreError> {
    store.put_policy(validate(r.clone(), draft).expect("valid draft"), audit("put")).await
}

fn initiate_cmd(r: &PolicyRef, vm: &VmId, source: &str, minutes: i64, client_id: Option<&str>) -> InitiateCommand {
    InitiateCommand {
        policy: r.clone(),
        draft: InitiateDraft {
            vms: vec![InitiateVmDraft {
                id: vm.as_str().into(),
                ports: vec![InitiatePortDraft {
                    number: Some(22),
                    end_time: Some(now() + Duration::minutes(minutes)),
                    duration: None,
                    prefix: Some(source.into()),
                    prefixes: None,
                }],
            }],
            justification: Some("why not".into()),
            start_time: None,
        },
        caller: None,
        requestor: "tester".into(),
        client_request_id: client_id.map(String::from),
        now: now(),
    }
}

/// Runs every check against `store`, which must be empty.
pub async fn run_all(store: &dyn Store) {
    vms(store).await;
    policies_and_lists(store).await;
    initiate_supersede_and_replay(store).await;
    refusals_change_nothing_but_the_audit(store).await;
    expiry(store).await;
    bootstrap_and_tokens(store).await;
    agents_and_enforcement_state(store).await;
    agent_bindings_revocation_and_gateway_scope(store).await;
    principals_tokens_roles_and_assignments(store).await;
    oidc_identities_live_in_their_own_namespace(store).await;
    tokens_never_outlive_what_created_them(store).await;
    a_deleted_principal_leaves_nothing_to_its_namesake(store).await;
    oversized_audit_fields_are_bounded(store).await;
    audit_chain_is_intact(store).await;
    audit_queries_inventory_facts_and_security_policies(store).await;
    webhook_deliveries_are_isolated_and_claimed_once(store).await;
}

async fn vms(store: &dyn Store) {
    let spec = VmSpec {
        id: vm_id("vms", "a"),
        os_type: OsType::Linux,
        location: "westeurope".into(),
        address: None,
        gateway: None,
        classic: false,
    };
    let (vm, created) = store.put_vm(spec.clone(), audit("vm")).await.expect("put");
    assert!(created);
    assert_eq!(vm.spec, spec);
    let mut changed = spec.clone();
    changed.os_type = OsType::Windows;
    changed.address = Some("10.0.0.4".parse().expect("ip"));
    let (vm, created) = store.put_vm(changed.clone(), audit("vm")).await.expect("replace");
    assert!(!created);
    assert_eq!(vm.spec, changed);
    assert_eq!(store.get_vm(&vm_id("VMS", "A")).await.expect("get").map(|v| v.spec), Some(changed));
    assert!(store.list_vms().await.expect("list").iter().any(|v| v.spec.id.name() == "a"));
    // In use by a policy: refused.
    let r = policy_ref("vms", "westeurope", "default");
    put(store, &r, one_vm_policy("vms", "a", None)).await.expect("policy");
    match store.delete_vm(&vm_id("vms", "a"), audit("del")).await {
        Err(StoreError::Rejected(i)) => assert_eq!(i.code, codes::VM_IN_USE),
        other => panic!("expected VirtualMachineInUse, got {other:?}"),
    }
    assert!(store.delete_policy(&r, audit("del")).await.expect("delete policy"));
    store.delete_vm(&vm_id("vms", "a"), audit("del")).await.expect("delete vm");
    assert!(store.get_vm(&vm_id("vms", "a")).await.expect("get").is_none());
    match store.delete_vm(&vm_id("vms", "a"), audit("del")).await {
        Err(StoreError::Rejected(i)) => assert_eq!(i.code, codes::VM_NOT_FOUND),
        other => panic!("expected VirtualMachineNotFound, got {other:?}"),
    }
}

async fn policies_and_lists(store: &dyn Store) {
    for name in ["w1", "w2", "n1", "x1"] {
        register(store, if name == "x1" { "other" } else { "lists" }, name, OsType::Windows).await;
    }
    let a = policy_ref("lists", "westeurope", "a");
    let b = policy_ref("lists", "westeurope", "b");
    let c = policy_ref("lists", "northeurope", "c");
    let d = policy_ref("other", "westeurope", "d");
    let rec = put(store, &a, one_vm_policy("lists", "w1", None)).await.expect("a");
    assert_eq!(rec.policy.vms[0].ports[0].number, 3389, "Windows default");
    assert_eq!(rec.policy.kind, "Basic");
    put(store, &b, one_vm_policy("lists", "w2", Some(vec![ssh_port()]))).await.expect("b");
    put(store, &c, one_vm_policy("lists", "n1", None)).await.expect("c");
    put(store, &d, one_vm_policy("other", "x1", None)).await.expect("d");
    // Replacing keeps the policy and changes its ports.
    let rec = put(store, &a, one_vm_policy("lists", "w1", Some(vec![ssh_port()]))).await.expect("replace a");
    assert_eq!(rec.policy.vms[0].ports[0].number, 22);
    let got = store.get_policy(&policy_ref("LISTS", "WestEurope", "A")).await.expect("get").expect("found");
    assert_eq!(got.policy.reference.name, "a", "the first casing is kept");

    let names = |v: Vec<crate::PolicyRecord>| v.into_iter().map(|r| r.policy.reference.name).collect::<Vec<_>>();
    let sub = ListScope::Subscription { subscription: SUB.into() };
    let all = names(store.list_policies(&sub, None, 100).await.expect("list"));
    for n in ["a", "b", "c", "d"] {
        assert!(all.contains(&n.to_string()), "{n} in {all:?}");
    }
    let rg = ListScope::ResourceGroup { subscription: SUB.into(), resource_group: "LISTS".into() };
    assert_eq!(names(store.list_policies(&rg, None, 100).await.expect("rg")), ["c", "a", "b"], "ordered by id");
    let rgl = ListScope::ResourceGroupLocation {
        subscription: SUB.into(),
        resource_group: "lists".into(),
        location: "westeurope".into(),
    };
    assert_eq!(names(store.list_policies(&rgl, None, 100).await.expect("rgl")), ["a", "b"]);
    let loc = ListScope::SubscriptionLocation { subscription: SUB.into(), location: "northeurope".into() };
    assert_eq!(names(store.list_policies(&loc, None, 100).await.expect("loc")), ["c"]);
    // Paging: one at a time, each page continues after the last key.
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.list_policies(&rg, after.as_deref(), 1).await.expect("page");
        let Some(last) = page.last() else { break };
        after = Some(last.policy.reference.key());
        paged.extend(names(page));
    }
    assert_eq!(paged, ["c", "a", "b"]);
    // A VM belongs to one policy only.
    match put(store, &b, one_vm_policy("lists", "w1", None)).await {
        Err(StoreError::Rejected(i)) => assert_eq!(i.code, "VirtualMachineInAnotherPolicy"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert!(store.delete_policy(&d, audit("del")).await.expect("delete"));
    assert!(!store.delete_policy(&d, audit("del")).await.expect("delete again"));
    assert!(store.get_policy(&d).await.expect("get").is_none());
}

async fn initiate_supersede_and_replay(store: &dyn Store) {
    register(store, "req", "vm1", OsType::Linux).await;
    let r = policy_ref("req", "westeurope", "default");
    put(store, &r, one_vm_policy("req", "vm1", None)).await.expect("policy");
    let vm = vm_id("req", "vm1");
    let first =
        store.initiate(initiate_cmd(&r, &vm, "203.0.113.5", 60, Some("c1")), audit("init")).await.expect("first");
    assert!(!first.replayed);
    assert_eq!(first.request.grants[0].status, GrantStatus::Initiated);
    assert_eq!(first.request.grants[0].status_reason, StatusReason::UserRequested);
    assert_eq!(first.request.justification.as_deref(), Some("why not"));
    // The same client request id again: the first answer, nothing new recorded.
    let again =
        store.initiate(initiate_cmd(&r, &vm, "203.0.113.5", 60, Some("c1")), audit("init")).await.expect("retry");
    assert!(again.replayed);
    assert_eq!(again.request.id, first.request.id);
    // Another source: a separate grant; the same source: supersedes the first.
    store.initiate(initiate_cmd(&r, &vm, "203.0.113.6", 60, Some("c2")), audit("init")).await.expect("other source");
    store.initiate(initiate_cmd(&r, &vm, "203.0.113.5/32", 30, Some("c3")), audit("init")).await.expect("newer");
    let history = store.get_policy(&r).await.expect("get").expect("found").requests;
    assert_eq!(history.len(), 3);
    assert_eq!(history[0].grants[0].status, GrantStatus::Revoked);
    assert_eq!(history[0].grants[0].status_reason, StatusReason::NewerRequestInitiated);
    assert_eq!(history[1].grants[0].status, GrantStatus::Initiated, "other source untouched");
    assert_eq!(history[2].grants[0].status, GrantStatus::Initiated);
    assert_eq!(history[2].grants[0].end_time, now() + Duration::minutes(30));
}

async fn refusals_change_nothing_but_the_audit(store: &dyn Store) {
    let before = store.audit_records(0, usize::MAX >> 1).await.expect("audit").len();
    let r = policy_ref("req", "westeurope", "default");
    let vm = vm_id("req", "vm1");
    let history = store.get_policy(&r).await.expect("get").expect("found").requests.len();
    match store.initiate(initiate_cmd(&r, &vm, "203.0.113.5", 600, None), audit("init")).await {
        Err(StoreError::Rejected(i)) => assert_eq!(i.code, codes::INVALID_INITIATE),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let missing = policy_ref("req", "westeurope", "missing");
    match store.initiate(initiate_cmd(&missing, &vm, "203.0.113.5", 60, None), audit("init")).await {
        Err(StoreError::Rejected(i)) => assert_eq!(i.code, codes::POLICY_NOT_FOUND),
        other => panic!("expected PolicyNotFound, got {other:?}"),
    }
    let unknown = one_vm_policy("req", "ghost", None);
    match put(store, &policy_ref("req", "westeurope", "ghosts"), unknown).await {
        Err(StoreError::Rejected(i)) => assert_eq!(i.code, codes::VM_NOT_REGISTERED),
        other => panic!("expected VirtualMachineNotRegistered, got {other:?}"),
    }
    assert!(store.get_policy(&policy_ref("req", "westeurope", "ghosts")).await.expect("get").is_none());
    assert_eq!(store.get_policy(&r).await.expect("get").expect("found").requests.len(), history);
    let after = store.audit_records(0, usize::MAX >> 1).await.expect("audit");
    assert_eq!(after.len(), before + 3, "one Failed record per refusal");
    assert!(after[before..]
        .iter()
        .all(|a| a.event.status == AuditStatus::Failed && a.event.properties.contains_key("reason")));
}

async fn expiry(store: &dyn Store) {
    register(store, "exp", "vm1", OsType::Linux).await;
    let r = policy_ref("exp", "westeurope", "default");
    put(store, &r, one_vm_policy("exp", "vm1", None)).await.expect("policy");
    store
        .initiate(initiate_cmd(&r, &vm_id("exp", "vm1"), "198.51.100.1", 5, None), audit("init"))
        .await
        .expect("grant");
    let next = store.next_expiry().await.expect("next").expect("some live grant");
    assert!(next <= now() + Duration::minutes(5));
    assert_eq!(store.expire_due(now() + Duration::minutes(4)).await.expect("early").expired, 0);
    let sweep = store.expire_due(now() + Duration::minutes(5)).await.expect("sweep");
    assert!(sweep.expired >= 1);
    let g = &store.get_policy(&r).await.expect("get").expect("found").requests[0].grants[0];
    assert_eq!((g.status, g.status_reason), (GrantStatus::Revoked, StatusReason::Expired));
    // Sweeping everything leaves nothing live.
    store.expire_due(now() + Duration::days(2)).await.expect("sweep all");
    assert_eq!(store.next_expiry().await.expect("next"), None);
}

async fn bootstrap_and_tokens(store: &dyn Store) {
    assert!(store.bootstrap("owner", "hash-1", None, audit("boot")).await.expect("bootstrap"));
    let later = Some(now() + Duration::days(1));
    assert!(!store.bootstrap("owner2", "hash-2", later, audit("boot")).await.expect("second bootstrap is a no-op"));
    let t = store.authenticate("hash-1", now()).await.expect("auth").expect("valid token");
    assert_eq!((t.principal.name.as_str(), t.expires, t.principal.oidc.as_ref()), ("owner", None, None));
    let listed = store.list_tokens("owner").await.expect("tokens");
    assert_eq!(listed.iter().map(|x| (x.id, x.origin)).collect::<Vec<_>>(), [(t.token_id, Some(TokenOrigin::Server))]);
    assert!(store.authenticate("hash-2", now()).await.expect("auth").is_none());
    store.ping().await.expect("ping");
}

async fn audit_chain_is_intact(store: &dyn Store) {
    let records = store.audit_records(0, usize::MAX >> 1).await.expect("audit");
    assert!(records.len() > 10);
    assert_eq!(records[0].seq, 1);
    assert_eq!(records[0].prev_hash, GENESIS);
    assert_eq!(first_invalid(GENESIS, records.iter().map(|r| (r.seq, &r.event, r.hash))), None);
    for pair in records.windows(2) {
        assert_eq!(pair[1].prev_hash, pair[0].hash);
    }
}

/// Whatever a caller sends, a stored audit record stays small: every field is cut to its bound
/// (`AuditEvent::bounded`) before it is hashed and stored, on every write path.
async fn oversized_audit_fields_are_bounded(store: &dyn Store) {
    let long = "x".repeat(60_000);
    let mut event = audit(jitgate_core::audit::ops::SIGN_IN).failed(long.clone()).with("name", long.clone());
    event.resource_id = format!("/api/v1/requests/{long}");
    event.caller = long.clone();
    store.record(event.clone()).await.expect("record");
    store.record_many(vec![event]).await.expect("record many");
    // A refusal decided inside the store (a 60,000-character join token name) is bounded too.
    let mut j = join("no-such-token", "big", "big", AgentMode::Host);
    j.agent.name = long.clone();
    assert!(store.join_agent(j, audit(jitgate_core::audit::ops::AGENT_JOIN)).await.is_err());
    let records = store.audit_records(0, usize::MAX >> 1).await.expect("audit");
    let big: Vec<_> = records.iter().rev().take(3).collect();
    for r in big {
        assert!(r.event.is_bounded(), "unbounded record {}", r.seq);
        assert!(
            r.event.canonical_bytes().len() < 16 * 1024,
            "record {} is {} bytes",
            r.seq,
            r.event.canonical_bytes().len()
        );
    }
    let last_two = &records[records.len() - 3..records.len() - 1];
    for r in last_two {
        assert!(r.event.resource_id.starts_with("/api/v1/requests/xxxx"));
        assert!(r.event.resource_id.contains("truncated"), "{}", r.event.resource_id.len());
    }
}

fn join(token: &str, id: &str, name: &str, mode: AgentMode) -> AgentJoin {
    AgentJoin {
        token_hash: token.into(),
        credential_hash: format!("cred-{id}"),
        id: id.into(),
        agent: JoiningAgent {
            name: name.into(),
            mode,
            os_type: OsType::Linux,
            addresses: vec!["10.1.0.5".parse().expect("ip")],
            public_address: Some("203.0.113.1".parse().expect("ip")),
            hostname: name.into(),
        },
        now: now(),
    }
}

async fn agents_and_enforcement_state(store: &dyn Store) {
    let spec = |mode| JoinTokenSpec {
        subscription: SUB.into(),
        resource_group: "agents".into(),
        location: "westeurope".into(),
        mode,
        expires: now() + Duration::hours(1),
        vm: None,
    };
    store.create_join_token(spec(AgentMode::Host), "jt-host", audit("jt")).await.expect("token");
    store.create_join_token(spec(AgentMode::Gateway), "jt-gw", audit("jt")).await.expect("token");
    let rev0 = store.revision().await.expect("revision");
    // Host mode: joining registers the VM.
    let host =
        store.join_agent(join("jt-host", "a-host", "hostvm", AgentMode::Host), audit("join")).await.expect("join");
    assert_eq!(host.vm_id.as_deref(), Some(vm_id("agents", "hostvm").as_str()));
    assert!(store.revision().await.expect("revision") > rev0);
    let vm = store.get_vm(&vm_id("agents", "hostvm")).await.expect("get").expect("registered by the join");
    assert_eq!(vm.agent.as_ref().map(|a| a.id.as_str()), Some("a-host"));
    // A join token works once, and only for its mode.
    match store.join_agent(join("jt-host", "a-again", "other", AgentMode::Host), audit("join")).await {
        Err(StoreError::Rejected(i)) => assert_eq!(i.code, "InvalidJoinToken"),
        other => panic!("expected InvalidJoinToken, got {other:?}"),
    }
    match store.join_agent(join("jt-gw", "a-gw", "gw1", AgentMode::Host), audit("join")).await {
        Err(StoreError::Rejected(i)) => assert_eq!(i.code, "InvalidJoinToken"),
        other => panic!("expected a mode mismatch, got {other:?}"),
    }
    assert_eq!(store.agent_by_credential("cred-a-host").await.expect("auth").map(|a| a.id), Some("a-host".into()));

    // Gateway mode: a VM attached by name, with its inner address.
    store.join_agent(join("jt-gw", "a-gw", "gw1", AgentMode::Gateway), audit("join")).await.expect("gateway join");
    let behind = VmSpec {
        id: vm_id("agents", "inner"),
        os_type: OsType::Linux,
        location: "westeurope".into(),
        address: Some("10.2.0.7".parse().expect("ip")),
        gateway: Some("GW1".into()),
        classic: false,
    };
    store.put_vm(behind.clone(), audit("vm")).await.expect("attach");
    let mut unknown_gw = behind.clone();
    unknown_gw.gateway = Some("nope".into());
    assert!(matches!(store.put_vm(unknown_gw, audit("vm")).await, Err(StoreError::Rejected(_))));

    // Policies on both; a grant on each.
    let mut mapped = ssh_port();
    mapped.mapped_port = Some(50022);
    mapped.cut_sessions = Some(true);
    let r = policy_ref("agents", "westeurope", "default");
    let draft = PolicyDraft {
        kind: None,
        vms: vec![
            VmDraft { id: vm_id("agents", "hostvm").as_str().into(), ports: None, public_ip_address: None },
            VmDraft {
                id: vm_id("agents", "inner").as_str().into(),
                ports: Some(vec![mapped]),
                public_ip_address: None,
            },
        ],
    };
    put(store, &r, draft).await.expect("policy");
    let g1 = store
        .initiate(initiate_cmd(&r, &vm_id("agents", "hostvm"), "198.51.100.4", 30, None), audit("i"))
        .await
        .expect("grant");
    let g2 = store
        .initiate(initiate_cmd(&r, &vm_id("agents", "inner"), "198.51.100.0/24", 30, None), audit("i"))
        .await
        .expect("grant");
    assert_eq!(g2.request.grants[0].mapped_port, Some(50022), "connection details: mapped port");
    assert_eq!(g2.request.grants[0].public_ip.as_deref(), Some("203.0.113.1"), "connection details: gateway address");
    assert_eq!(g1.request.grants[0].public_ip, None);

    let hs = store.agent_state("a-host", now()).await.expect("host state");
    assert_eq!(hs.mode, AgentMode::Host);
    assert_eq!(hs.ports.len(), 1);
    assert_eq!((hs.ports[0].number, hs.ports[0].address), (22, None));
    assert_eq!(hs.grants.len(), 1);
    assert_eq!(hs.grants[0].sources.prefixes()[0].text(), "198.51.100.4");
    let gs = store.agent_state("a-gw", now()).await.expect("gateway state");
    assert_eq!(gs.ports.len(), 1);
    assert_eq!(gs.ports[0].address, Some("10.2.0.7".parse().expect("ip")));
    assert!(gs.ports[0].cut_sessions);
    assert_eq!(gs.grants[0].mapped_port, Some(50022));
    // Expired grants are not sent.
    assert!(store.agent_state("a-host", now() + Duration::hours(1)).await.expect("later").grants.is_empty());

    // Revoke ends a request's grants at once, and only once.
    let rev = store.revision().await.expect("revision");
    let revoked = store.revoke_request(g1.request.id, "tester", audit("revoke")).await.expect("revoke");
    assert_eq!(revoked.grants[0].status, GrantStatus::Revoked);
    assert_eq!(revoked.grants[0].status_reason, StatusReason::UserRequested);
    assert!(store.revision().await.expect("revision") > rev);
    assert!(store.agent_state("a-host", now()).await.expect("state").grants.is_empty());
    assert!(matches!(
        store.revoke_request(g1.request.id, "tester", audit("revoke")).await,
        Err(StoreError::Rejected(_))
    ));
    assert!(matches!(store.revoke_request(999_999, "tester", audit("revoke")).await, Err(StoreError::Rejected(_))));
    let (policy_id, _) = store.get_request(g2.request.id).await.expect("get").expect("found");
    assert_eq!(policy_id, r.id());

    // Reports move the applied revision forward only.
    let report = |revision, usable: bool| AgentReport {
        revision,
        nft_usable: usable,
        nft_error: (!usable).then(|| "nft: not found".to_string()),
        now: now(),
    };
    // Only revisions delivered to the agent can be reported.
    match store.agent_report("a-host", report(7, true)).await {
        Err(StoreError::Rejected(i)) => assert_eq!(i.code, "RevisionNotDelivered"),
        other => panic!("a revision never delivered must be refused, got {other:?}"),
    }
    store.agent_delivered("a-host", 7).await.expect("delivered");
    store.agent_delivered("a-host", 3).await.expect("an older delivery moves nothing back");
    store.agent_report("a-host", report(7, true)).await.expect("report");
    store.agent_report("a-host", report(5, false)).await.expect("report");
    match store.agent_report("a-host", report(u64::MAX, true)).await {
        Err(StoreError::Rejected(i)) => assert_eq!(i.code, "RevisionNotDelivered"),
        other => panic!("expected RevisionNotDelivered, got {other:?}"),
    }
    let a = store.list_agents().await.expect("list").into_iter().find(|a| a.id == "a-host").expect("listed");
    assert_eq!((a.applied_revision, a.delivered_revision), (7, 7));
    assert_eq!(a.nft_usable, Some(false));
    assert_eq!(a.nft_error.as_deref(), Some("nft: not found"));
    assert!(a.last_seen.is_some());
    let for_vms = store
        .agents_for_vms(&[vm_id("agents", "inner").as_str().into(), vm_id("agents", "hostvm").as_str().into()])
        .await;
    assert_eq!(for_vms.expect("agents").len(), 2);
    // Deleting the policy removes the protection.
    store.delete_policy(&r, audit("del")).await.expect("delete");
    assert!(store.agent_state("a-gw", now()).await.expect("state").ports.is_empty());
}

fn rejected_code<T: std::fmt::Debug>(r: Result<T, StoreError>) -> &'static str {
    match r {
        Err(StoreError::Rejected(i)) => i.code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

const SUB_B: &str = "7d2a3c1e-0b4f-4e8a-9c6d-5f1e2a3b4c5d";

/// Who may become a VM's enforcement point, revocation and rotation of agent credentials, and
/// gateways as resources of their own subscription.
async fn agent_bindings_revocation_and_gateway_scope(store: &dyn Store) {
    let token = |hash: &'static str, sub: &str, mode, vm: Option<&str>| {
        let spec = JoinTokenSpec {
            subscription: sub.into(),
            resource_group: "bind".into(),
            location: "westeurope".into(),
            mode,
            expires: now() + Duration::hours(1),
            vm: vm.map(String::from),
        };
        async move { store.create_join_token(spec, hash, audit("jt")).await.expect("token") }
    };
    let joining = |token: &str, id: &str, name: &str, mode, address: &str| {
        let mut j = join(token, id, name, mode);
        j.agent.addresses = vec![address.parse().expect("ip")];
        j
    };
    // A host token joins as a new VM.
    token("b-1", SUB, AgentMode::Host, None).await;
    store
        .join_agent(joining("b-1", "web2-agent", "web2", AgentMode::Host, "10.3.0.2"), audit("join"))
        .await
        .expect("join");
    let web2 = vm_id("bind", "web2");
    // Another host token cannot take over the existing VM: refused, nothing changes.
    token("b-2", SUB, AgentMode::Host, None).await;
    let takeover = store.join_agent(joining("b-2", "evil", "WEB2", AgentMode::Host, "192.0.2.66"), audit("join")).await;
    assert_eq!(rejected_code(takeover), "VirtualMachineExists");
    assert_eq!(
        store.agent_by_credential("cred-web2-agent").await.expect("auth").map(|a| a.id),
        Some("web2-agent".into())
    );
    assert!(store.agent_by_credential("cred-evil").await.expect("auth").is_none());
    let vm = store.get_vm(&web2).await.expect("get").expect("vm");
    assert_eq!(vm.spec.address, Some("10.3.0.2".parse().expect("ip")));
    assert_eq!(vm.agent.map(|a| a.id).as_deref(), Some("web2-agent"));
    // The refused token was not used up: it still joins a new VM.
    store
        .join_agent(joining("b-2", "web3-agent", "web3", AgentMode::Host, "10.3.0.3"), audit("join"))
        .await
        .expect("join");
    // A token made for one VM joins only as that VM.
    token("b-3", SUB, AgentMode::Host, Some("web2")).await;
    let wrong = store.join_agent(joining("b-3", "x", "web3", AgentMode::Host, "10.3.0.9"), audit("join")).await;
    assert_eq!(rejected_code(wrong), "InvalidJoinToken");
    // … and re-binds it: the old credential stops, the address moves, the location stays.
    let rebound = store
        .join_agent(joining("b-3", "web2-new", "web2", AgentMode::Host, "10.3.0.22"), audit("join"))
        .await
        .expect("rebind");
    assert_eq!(rebound.location, "westeurope");
    assert!(store.agent_by_credential("cred-web2-agent").await.expect("auth").is_none());
    let vm = store.get_vm(&web2).await.expect("get").expect("vm");
    assert_eq!(vm.spec.address, Some("10.3.0.22".parse().expect("ip")));
    assert_eq!(vm.agent.map(|a| a.id).as_deref(), Some("web2-new"));
    let records = store.audit_records(0, 100_000).await.expect("audit");
    let rebind = records.iter().rev().find(|r| r.event.properties.contains_key("rebound")).expect("audited");
    assert_eq!(rebind.event.properties.get("previousAgent").map(String::as_str), Some("web2-agent"));
    assert_eq!(rebind.event.properties.get("previousAddress").map(String::as_str), Some("10.3.0.2"));
    assert_eq!(rebind.event.properties.get("address").map(String::as_str), Some("10.3.0.22"));

    // Deleting a VM ends its agent's binding for good.
    store.delete_vm(&vm_id("bind", "web3"), audit("vm-del")).await.expect("delete");
    assert!(store.agent_by_credential("cred-web3-agent").await.expect("auth").is_none());
    register(store, "bind", "web3", OsType::Linux).await;
    assert!(store.get_vm(&vm_id("bind", "web3")).await.expect("get").expect("vm").agent.is_none());

    // Revoking an agent: its credential stops, its VM has no enforcement point.
    let rev = store.revision().await.expect("revision");
    let removed = store.delete_agent("web2-new", audit("agent-del")).await.expect("revoke");
    assert_eq!(removed.name, "web2");
    assert!(store.revision().await.expect("revision") > rev);
    assert!(store.agent_by_credential("cred-web2-new").await.expect("auth").is_none());
    assert!(store.get_vm(&web2).await.expect("get").expect("vm").agent.is_none());
    assert_eq!(rejected_code(store.agent_state("web2-new", now()).await), "AgentNotFound");
    assert_eq!(rejected_code(store.delete_agent("web2-new", audit("agent-del")).await), "AgentNotFound");

    // Rotation: the new credential works, the old one does not, and only the current one rotates.
    token("b-4", SUB, AgentMode::Host, None).await;
    store.join_agent(joining("b-4", "rot", "web4", AgentMode::Host, "10.3.0.4"), audit("join")).await.expect("join");
    store.rotate_agent_credential("rot", "cred-rot", "cred-rot-2", audit("rotate")).await.expect("rotate");
    assert!(store.agent_by_credential("cred-rot").await.expect("auth").is_none());
    assert_eq!(store.agent_by_credential("cred-rot-2").await.expect("auth").map(|a| a.id), Some("rot".into()));
    let stale = store.rotate_agent_credential("rot", "cred-rot", "cred-rot-3", audit("rotate")).await;
    assert_eq!(rejected_code(stale), "AgentNotFound");

    // Gateways: one name per subscription; two subscriptions may each have one.
    token("g-a", SUB, AgentMode::Gateway, None).await;
    token("g-b", SUB_B, AgentMode::Gateway, None).await;
    token("g-a2", SUB, AgentMode::Gateway, None).await;
    let gw = |token: &str, id: &str| join(token, id, "gw-prod-a", AgentMode::Gateway);
    store.join_agent(gw("g-b", "gw-b"), audit("join")).await.expect("SUB_B's gateway");
    assert!(store.gateway_agent(SUB, "gw-prod-a").await.expect("lookup").is_none(), "not SUB_A's");
    let attach = |name: &str, address: &str| VmSpec {
        id: vm_id("bind", name),
        os_type: OsType::Linux,
        location: "westeurope".into(),
        address: Some(address.parse().expect("ip")),
        gateway: Some("gw-prod-a".into()),
        classic: false,
    };
    assert_eq!(rejected_code(store.put_vm(attach("app7", "10.4.0.7"), audit("vm")).await), codes::INVALID_VM);
    store.join_agent(gw("g-a", "gw-a"), audit("join")).await.expect("SUB_A's gateway of the same name");
    assert_eq!(rejected_code(store.join_agent(gw("g-a2", "gw-a2"), audit("join")).await), "GatewayExists");
    let (app7, _) = store.put_vm(attach("app7", "10.4.0.7"), audit("vm")).await.expect("attach");
    assert_eq!(app7.agent.map(|a| a.id).as_deref(), Some("gw-a"));
    let sees = |id: &'static str| async move { store.agent_state(id, now()).await.expect("state") };
    // A gateway's mapped ports are one namespace across policies. A claim: policy `policy`
    // forwards the gateway's port `m` to port `number` of `vm`.
    let claim = async |policy: &str, vm: &str, m: i64, number: i64| {
        let mut p = ssh_port();
        p.number = Some(number);
        p.mapped_port = Some(m);
        put(store, &policy_ref("bind", "westeurope", policy), one_vm_policy("bind", vm, Some(vec![p]))).await
    };
    claim("first", "app7", 52222, 22).await.expect("first claim");
    store.put_vm(attach("app8", "10.4.0.8"), audit("vm")).await.expect("attach");
    let second = claim("second", "app8", 52222, 2200).await;
    match second {
        Err(StoreError::Rejected(i)) => {
            assert_eq!(i.code, "MappedPortInUse");
            assert!(i.message.contains("app7:22") && i.message.contains("first"), "{}", i.message);
            assert_eq!(i.target.as_deref(), Some("properties.virtualMachines[0].ports[0].mappedPort"));
        }
        other => panic!("expected MappedPortInUse, got {other:?}"),
    }
    // Re-putting the holder itself is fine; another port is fine.
    claim("first", "app7", 52222, 22).await.expect("the holder again");
    // A VM not (yet) behind the gateway may hold the port; attaching it then is refused.
    let mut app9 = attach("app9", "10.4.0.9");
    app9.gateway = None;
    store.put_vm(app9.clone(), audit("vm")).await.expect("app9 alone");
    claim("third", "app9", 52222, 22).await.expect("no gateway, no clash");
    app9.gateway = Some("GW-PROD-A".into());
    assert_eq!(rejected_code(store.put_vm(app9, audit("vm")).await), "MappedPortInUse");
    claim("second", "app8", 52223, 2200).await.expect("another gateway port");
    assert_eq!(sees("gw-a").await.ports.len(), 2, "SUB_A's gateway enforces app7 and app8");
    assert!(sees("gw-b").await.ports.is_empty(), "SUB_B's gateway of the same name sees none of SUB_A's VMs");
    // Revoking a gateway frees its name for a replacement; its VMs wait for it.
    store.delete_agent("gw-a", audit("agent-del")).await.expect("revoke gateway");
    assert!(store.get_vm(&vm_id("bind", "app7")).await.expect("get").expect("vm").agent.is_none());
    store.join_agent(gw("g-a2", "gw-a3"), audit("join")).await.expect("a replacement joins");
    assert_eq!(sees("gw-a3").await.ports.len(), 2);
    for name in ["first", "second", "third"] {
        store.delete_policy(&policy_ref("bind", "westeurope", name), audit("del")).await.expect("delete");
    }
}

async fn principals_tokens_roles_and_assignments(store: &dyn Store) {
    // The bootstrap owner holds Owner at "/".
    let owner = store.list_role_assignments(Some("owner")).await.expect("list");
    assert_eq!(owner.len(), 1);
    assert_eq!((owner[0].role.as_str(), owner[0].scope.as_str()), ("Owner", "/"));

    let alice = store.create_principal("alice", "User", audit("p")).await.expect("create");
    assert_eq!(alice.kind, "User");
    assert!(matches!(store.create_principal("alice", "User", audit("p")).await, Err(StoreError::Rejected(_))));
    assert!(matches!(store.create_principal("ALICE", "User", audit("p")).await, Err(StoreError::Rejected(_))));
    let bot = store.create_principal("bot", "ServicePrincipal", audit("p")).await.expect("create");
    assert_eq!(store.get_principal("BOT").await.expect("get").map(|p| p.id), Some(bot.id), "names ignore case");
    assert!(store.list_principals().await.expect("list").iter().any(|p| p.name == "alice"));
    // Local names are checked by the store itself: no reserved, look-alike or invisible names.
    for bad in ["oidc:0123456789abcdef0123456789abcdef", "o\u{202E}wner", "оwner", "own er", "", "a#deleted-1"] {
        match store.create_principal(bad, "User", audit("p")).await {
            Err(StoreError::Rejected(e)) => assert_eq!(e.code, "InvalidPrincipal", "{bad:?}"),
            other => panic!("{bad:?} was not refused: {other:?}"),
        }
    }

    // Tokens: expiry and revocation both end them.
    let token = |hash: &str, expires| NewToken {
        principal: "alice".into(),
        token_hash: hash.into(),
        expires,
        origin: TokenOrigin::Server,
    };
    let t1 = store.create_token(token("alice-1", None), audit("t")).await.expect("token");
    let t2 = store.create_token(token("alice-2", Some(now() + Duration::minutes(5))), audit("t")).await.expect("token");
    let auth = store.authenticate("alice-1", now()).await.expect("auth").expect("valid");
    assert_eq!((auth.principal.name.as_str(), auth.token_id, auth.expires), ("alice", t1.id, None));
    assert!(store.authenticate("alice-2", now() + Duration::minutes(6)).await.expect("auth").is_none(), "expired");
    store.revoke_token(t1.id, audit("r")).await.expect("revoke");
    assert!(store.authenticate("alice-1", now()).await.expect("auth").is_none(), "revoked");
    let listed = store.list_tokens("alice").await.expect("tokens");
    assert_eq!(listed.len(), 2);
    assert!(listed[0].revoked.is_some() && listed[1].expires.is_some());
    assert_eq!(store.get_token(t2.id).await.expect("get").map(|t| t.principal), Some("alice".into()));

    // Custom roles and assignments.
    let role = jitgate_core::rbac::least_privileged_role("JIT Access Role", &format!("/subscriptions/{SUB}"), "r-1");
    let (stored, created) = store.put_role_definition(role.clone(), audit("rd")).await.expect("role");
    assert!(created);
    assert_eq!(stored.actions, role.actions);
    let (_, created) = store.put_role_definition(role.clone(), audit("rd")).await.expect("replace");
    assert!(!created);
    assert_eq!(
        store.get_role_definition("jit access role").await.expect("get").map(|r| r.name),
        Some("JIT Access Role".into())
    );
    let scope = format!("/subscriptions/{SUB}/resourceGroups/rg1");
    let a = store.create_role_assignment("alice", "JIT Access Role", &scope, audit("ra")).await.expect("assign");
    assert!(matches!(
        store.create_role_assignment("alice", "JIT Access Role", &scope, audit("ra")).await,
        Err(StoreError::Rejected(_))
    ));
    assert!(matches!(
        store.create_role_assignment("nobody", "Reader", &scope, audit("ra")).await,
        Err(StoreError::Rejected(_))
    ));
    assert!(
        matches!(store.delete_role_definition("JIT Access Role", audit("rd")).await, Err(StoreError::Rejected(_))),
        "in use"
    );
    assert_eq!(store.list_role_assignments(Some("alice")).await.expect("list").len(), 1);
    assert_eq!(store.get_role_assignment(&a.id).await.expect("get").map(|x| x.scope), Some(scope.clone()));
    store.delete_role_assignment(&a.id, audit("ra")).await.expect("unassign");
    store.delete_role_definition("JIT Access Role", audit("rd")).await.expect("delete role");
    assert!(store.get_role_definition("JIT Access Role").await.expect("get").is_none());

    // Deleting a principal ends its tokens and assignments.
    store.create_role_assignment("alice", "Reader", &scope, audit("ra")).await.expect("assign");
    store.delete_principal("alice", audit("dp")).await.expect("delete");
    assert!(store.get_principal("alice").await.expect("get").is_none());
    assert!(store.authenticate("alice-2", now()).await.expect("auth").is_none());
    assert!(store.list_role_assignments(None).await.expect("all").iter().all(|a| a.principal != "alice"));
}

async fn audit_queries_inventory_facts_and_security_policies(store: &dyn Store) {
    // Queries: by caller, operation, status, resource prefix and time, paged by sequence.
    let all = store.query_audit(&AuditFilter::default(), 0, 1 << 20).await.expect("all");
    assert!(all.len() > 20);
    let failed = store
        .query_audit(&AuditFilter { status: Some(AuditStatus::Failed), ..Default::default() }, 0, 1 << 20)
        .await
        .expect("failed");
    assert!(!failed.is_empty() && failed.iter().all(|r| r.event.status == AuditStatus::Failed));
    let by_op = store
        .query_audit(&AuditFilter { operation: Some("INIT".into()), ..Default::default() }, 0, 1 << 20)
        .await
        .expect("op");
    assert!(
        !by_op.is_empty() && by_op.iter().all(|r| r.event.operation == "init"),
        "operation compares case-insensitively"
    );
    let by_res = store
        .query_audit(&AuditFilter { resource_id: Some("/TEST".into()), ..Default::default() }, 0, 1 << 20)
        .await
        .expect("res");
    assert!(!by_res.is_empty() && by_res.iter().all(|r| r.event.resource_id.to_ascii_lowercase().starts_with("/test")));
    let none = store
        .query_audit(&AuditFilter { caller: Some("nobody".into()), ..Default::default() }, 0, 10)
        .await
        .expect("none");
    assert!(none.is_empty());
    let page1 = store.query_audit(&AuditFilter::default(), 0, 5).await.expect("page");
    let page2 = store.query_audit(&AuditFilter::default(), page1[4].seq, 5).await.expect("page");
    assert_eq!(page2[0].seq, page1[4].seq + 1);
    let window = store
        .query_audit(
            &AuditFilter { from: Some(now()), to: Some(now() + Duration::seconds(1)), ..Default::default() },
            0,
            1 << 20,
        )
        .await
        .expect("window");
    assert!(window.iter().all(|r| r.event.time >= now() && r.event.time < now() + Duration::seconds(1)));
    let v = store.verify_audit().await.expect("verify");
    assert!(v.valid && v.records as usize >= all.len(), "{v:?}");

    // Access facts of a VM, against explicit times.
    register(store, "inv", "vm1", OsType::Linux).await;
    let r = policy_ref("inv", "westeurope", "default");
    put(store, &r, one_vm_policy("inv", "vm1", None)).await.expect("policy");
    assert_eq!(
        store.policy_of_vm(&vm_id("inv", "vm1")).await.expect("policy of vm").map(|p| p.reference.name),
        Some("default".into())
    );
    assert!(store.policy_of_vm(&vm_id("inv", "nope")).await.expect("none").is_none());
    let empty = store.vm_access(&vm_id("inv", "vm1"), now() - Duration::days(7)).await.expect("access");
    assert_eq!((empty.approved_since, empty.last_user), (0, None));
    let mut cmd = initiate_cmd(&r, &vm_id("inv", "vm1"), "198.51.100.8", 30, None);
    cmd.requestor = "zoe".into();
    store.initiate(cmd, audit("init")).await.expect("grant");
    let access = store.vm_access(&vm_id("inv", "vm1"), now() - Duration::days(7)).await.expect("access");
    assert_eq!(access.approved_since, 1);
    assert_eq!(access.last_user.as_deref(), Some("zoe"));
    assert_eq!(access.last_access, Some(now()));
    assert_eq!(
        store.vm_access(&vm_id("inv", "vm1"), now() + Duration::seconds(1)).await.expect("later").approved_since,
        0,
        "outside the window"
    );

    // A security policy that switches JIT off refuses enabling it below.
    let sp = store
        .put_security_policy(&format!("/subscriptions/{SUB}/resourceGroups/locked"), false, audit("sp"))
        .await
        .expect("sp");
    assert!(!sp.jit_enabled);
    register(store, "locked", "vm1", OsType::Linux).await;
    match put(store, &policy_ref("locked", "westeurope", "default"), one_vm_policy("locked", "vm1", None)).await {
        Err(StoreError::Rejected(i)) => assert_eq!(i.code, "JitDisabledBySecurityPolicy"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    store
        .put_security_policy(&format!("/subscriptions/{SUB}/resourceGroups/locked"), true, audit("sp"))
        .await
        .expect("sp");
    put(store, &policy_ref("locked", "westeurope", "default"), one_vm_policy("locked", "vm1", None))
        .await
        .expect("allowed again");
    assert_eq!(store.list_security_policies().await.expect("list").len(), 1);

    // Archiving: the oldest records leave the live log; the chain continues from their last hash.
    let old = store.audit_before(now() + Duration::days(3650), 10).await.expect("old");
    assert_eq!(old.len(), 10);
    let last = old.last().expect("last");
    assert!(
        store.seal_archive(last.seq, [7u8; 32], "bad.jsonl", audit("arch")).await.is_err(),
        "a wrong last hash archives nothing"
    );
    let removed = store.seal_archive(last.seq, last.hash, "audit-1.jsonl", audit("arch")).await.expect("seal");
    assert_eq!(removed, 10);
    let v = store.verify_audit().await.expect("verify");
    assert!(v.valid, "{v:?}");
    assert_eq!(v.archived_through, Some(last.seq));
    assert_eq!(store.audit_records(0, 1).await.expect("first")[0].seq, last.seq + 1);
}

fn webhook(id: &str, subscription: Option<&str>, principal: Option<&str>) -> Webhook {
    Webhook {
        id: id.into(),
        subscription: subscription.map(String::from),
        principal: principal.map(String::from),
        url: format!("https://hooks.example.com/{id}"),
        secret: format!("secret-of-{id}-0123456789"),
        events: vec![],
        created: now(),
    }
}

/// Secrets come back as given; a claimed delivery is not claimed again until its lease ends;
/// and a delivery id is never reused after a webhook's deliveries are deleted, so one webhook's
/// history can never stand for another's (issue 9, finding 15).
async fn webhook_deliveries_are_isolated_and_claimed_once(store: &dyn Store) {
    register(store, "hooks", "vm1", OsType::Linux).await;
    let r = policy_ref("hooks", "westeurope", "default");
    put(store, &r, one_vm_policy("hooks", "vm1", None)).await.expect("policy");
    let vm = vm_id("hooks", "vm1");
    let admin = store.create_webhook(webhook("admin", Some(SUB), None), audit("hook")).await.expect("admin hook");
    assert_eq!(admin.secret, "secret-of-admin-0123456789");
    store.create_webhook(webhook("own", None, Some("tester")), audit("hook")).await.expect("own hook");
    let got = store.get_webhook("own").await.expect("get").expect("found");
    assert_eq!(got.secret, "secret-of-own-0123456789", "the secret reads back as it was given");
    assert!(store.list_webhooks().await.expect("list").iter().any(|h| h.id == "admin" && h.secret == admin.secret));

    store.initiate(initiate_cmd(&r, &vm, "203.0.113.40", 30, None), audit("init")).await.expect("first request");
    // requested + opened, for each of the two webhooks.
    let lease = now() + Duration::seconds(60);
    let claimed = store.claim_deliveries(now(), lease, 100).await.expect("claim");
    assert_eq!(claimed.len(), 4, "{claimed:?}");
    assert!(claimed.iter().all(|d| d.attempts == 0 && !d.secret.is_empty()));
    assert!(store.claim_deliveries(now(), lease, 100).await.expect("claim").is_empty(), "leased: not again");
    assert_eq!(store.next_delivery().await.expect("next"), Some(lease));
    let own: Vec<i64> = claimed.iter().filter(|d| d.webhook_id == "own").map(|d| d.id).collect();
    for d in claimed.iter().filter(|d| d.webhook_id == "admin") {
        store.delivery_attempted(d.id, true, None, None, now()).await.expect("delivered");
    }
    // The lease runs out (a worker died mid-attempt): the requester's deliveries are due again.
    let again = store.claim_deliveries(lease, lease + Duration::seconds(60), 100).await.expect("claim");
    assert_eq!(again.iter().map(|d| d.id).collect::<Vec<_>>(), own);
    for d in &again {
        let next = Some(lease + Duration::seconds(1));
        store.delivery_attempted(d.id, false, Some("ConnectionFailed: x".into()), next, lease).await.expect("failed");
    }
    let highest = own.iter().copied().max().unwrap_or(0);
    store.delete_webhook("own", audit("unhook")).await.expect("delete");

    // The second request: only the administrator's webhook hears of it, under new ids.
    store.initiate(initiate_cmd(&r, &vm, "203.0.113.41", 30, None), audit("init")).await.expect("second request");
    let later = lease + Duration::seconds(120);
    let second = store.claim_deliveries(later, later + Duration::seconds(60), 100).await.expect("claim");
    assert_eq!(second.len(), 2, "{second:?}");
    assert!(second.iter().all(|d| d.webhook_id == "admin" && d.attempts == 0));
    assert!(second.iter().all(|d| d.id > highest), "ids are never reused: {second:?} after {highest}");
    for d in &second {
        store.delivery_attempted(d.id, true, None, None, later).await.expect("delivered");
    }
    let listed = store.list_deliveries("admin", 10).await.expect("list");
    assert_eq!(listed.len(), 4);
    assert!(listed.iter().all(|d| d.state == "Delivered"), "{listed:?}");
    store.delete_webhook("admin", audit("unhook")).await.expect("delete");
}

fn sign_in(issuer: &str, subject: &str, display: Option<&str>) -> OidcSignIn {
    OidcSignIn {
        identity: OidcIdentity { issuer: issuer.into(), subject: subject.into() },
        display_name: display.map(String::from),
    }
}

/// OIDC identities are found by (issuer, subject) only, named in a form no local name can take,
/// and start without roles; a display name is only shown.
async fn oidc_identities_live_in_their_own_namespace(store: &dyn Store) {
    let (a, b) = ("https://idp-a.example", "https://idp-b.example/realms/x");
    // A display name that is a local principal's name changes nothing.
    let first = store.oidc_principal(sign_in(a, "u-1", Some("owner")), audit("oidc")).await.expect("sign in");
    assert_eq!(first.name, jitgate_core::identity::oidc_name(a, "u-1"));
    assert_ne!(first.name.to_ascii_lowercase(), "owner");
    assert_eq!(first.oidc, Some(OidcIdentity { issuer: a.into(), subject: "u-1".into() }));
    assert_eq!((first.display_name.as_deref(), first.kind.as_str()), (Some("owner"), "User"));
    assert!(store.list_role_assignments(Some(&first.name)).await.expect("list").is_empty(), "no roles");
    let owner = store.get_principal("owner").await.expect("get").expect("the owner is still there");
    assert_eq!((owner.oidc, owner.display_name), (None, None));
    assert_eq!(store.list_role_assignments(Some("owner")).await.expect("list").len(), 1);

    // Same (issuer, subject), another display name: the same principal, display updated.
    let again = store.oidc_principal(sign_in(a, "u-1", Some("Erin")), audit("oidc")).await.expect("again");
    assert_eq!(
        (again.id, again.name.as_str(), again.display_name.as_deref()),
        (first.id, first.name.as_str(), Some("Erin"))
    );
    let same = store.oidc_principal(sign_in(a, "u-1", Some("Erin")), audit("oidc")).await.expect("unchanged");
    assert_eq!(same, again);
    // Same subject at another issuer: another principal.
    let other = store.oidc_principal(sign_in(b, "u-1", Some("Erin")), audit("oidc")).await.expect("other issuer");
    assert_ne!((other.id, &other.name), (first.id, &first.name));
    let listed = store.list_principals().await.expect("list");
    let shown = listed.iter().find(|p| p.id == first.id).expect("listed");
    assert_eq!((shown.display_name.as_deref(), shown.oidc.is_some()), (Some("Erin"), true));
    assert_eq!(shown.label(), format!("{} (Erin)", first.name));

    // Deleting an identity's principal frees its name and ends its roles.
    let taken = store.oidc_principal(sign_in(a, "u-2", None), audit("oidc")).await.expect("u-2");
    store.delete_principal(&taken.name, audit("dp")).await.expect("delete");
    let back = store.oidc_principal(sign_in(a, "u-2", None), audit("oidc")).await.expect("signs in again, afresh");
    assert_ne!(back.id, taken.id, "a deleted identity comes back as a new principal without roles");

    // An OIDC principal gains roles only by assignment, to its own name.
    let scope = format!("/subscriptions/{SUB}");
    store.create_role_assignment(&first.name, "Reader", &scope, audit("ra")).await.expect("assign");
    assert_eq!(store.list_role_assignments(Some(&first.name)).await.expect("list").len(), 1);
    assert!(store.list_role_assignments(Some(&other.name)).await.expect("list").is_empty());
}

/// A token made by a token ends no later than it and is revoked with it, however deep.
async fn tokens_never_outlive_what_created_them(store: &dyn Store) {
    store.create_principal("carl", "User", audit("p")).await.expect("carl");
    store.create_principal("dina", "User", audit("p")).await.expect("dina");
    let new = |principal: &str, hash: &str, expires: Option<OffsetDateTime>, origin| NewToken {
        principal: principal.into(),
        token_hash: hash.into(),
        expires,
        origin,
    };
    let end = now() + Duration::hours(1);
    let root =
        store.create_token(new("carl", "carl-root", Some(end), TokenOrigin::Server), audit("t")).await.expect("root");
    // Longer than the parent, or unlimited: refused, nothing stored.
    for expires in [Some(end + Duration::seconds(1)), None] {
        match store.create_token(new("carl", "carl-long", expires, TokenOrigin::Token(root.id)), audit("t")).await {
            Err(StoreError::Rejected(e)) => assert_eq!(e.code, "TokenLifetimeTooLong"),
            other => panic!("{expires:?}: {other:?}"),
        }
    }
    assert!(store.authenticate("carl-long", now()).await.expect("auth").is_none());
    // A child for carl, a grandchild for dina (minted by carl's child), and a sibling tree.
    let child = store.create_token(new("carl", "carl-child", Some(end), TokenOrigin::Token(root.id)), audit("t")).await;
    let child = child.expect("child");
    assert_eq!(child.origin, Some(TokenOrigin::Token(root.id)));
    let grandchild = store
        .create_token(
            new("dina", "dina-grand", Some(end - Duration::minutes(1)), TokenOrigin::Token(child.id)),
            audit("t"),
        )
        .await
        .expect("grandchild");
    let other =
        store.create_token(new("carl", "carl-other", None, TokenOrigin::Server), audit("t")).await.expect("other");
    let unrelated = store
        .create_token(new("dina", "dina-own", Some(end), TokenOrigin::Token(other.id)), audit("t"))
        .await
        .expect("own");
    assert!(store.authenticate("dina-grand", now()).await.expect("auth").is_some());

    // Revoking the root revokes its whole tree in one transaction, and nothing else.
    store.revoke_token(root.id, audit("r")).await.expect("revoke");
    for hash in ["carl-root", "carl-child", "dina-grand"] {
        assert!(store.authenticate(hash, now()).await.expect("auth").is_none(), "{hash} revoked with its ancestor");
    }
    assert!(store.get_token(grandchild.id).await.expect("get").and_then(|t| t.revoked).is_some());
    assert!(store.authenticate("dina-own", now()).await.expect("auth").is_some(), "another tree lives on");
    // A revoked (or expired) token cannot create tokens any more.
    match store.create_token(new("carl", "late", Some(end), TokenOrigin::Token(child.id)), audit("t")).await {
        Err(StoreError::Rejected(e)) => assert_eq!(e.code, "ParentTokenInvalid"),
        other => panic!("{other:?}"),
    }
    let short = store
        .create_token(new("carl", "carl-short", Some(now() - Duration::seconds(1)), TokenOrigin::Server), audit("t"))
        .await
        .expect("an already expired token");
    assert!(matches!(
        store.create_token(new("carl", "late-2", None, TokenOrigin::Token(short.id)), audit("t")).await,
        Err(StoreError::Rejected(_))
    ));

    // Deleting a principal ends the tokens its tokens made for others.
    store.delete_principal("carl", audit("dp")).await.expect("delete carl");
    assert!(store.authenticate("dina-own", now()).await.expect("auth").is_none(), "made by carl's token");
    assert_eq!(store.get_token(unrelated.id).await.expect("get").map(|t| t.revoked.is_some()), Some(true));
    let ids = store.audit_records(0, 1 << 20).await.expect("audit");
    let revocation = ids.iter().rev().find(|r| r.event.operation == "dp").expect("the deletion is audited");
    assert_eq!(revocation.event.properties.get("revokedDescendantTokens").map(String::as_str), Some("1"));
}

/// Principals are referred to by name (webhooks, requests): a principal made later under a
/// deleted one's name inherits neither its tokens, roles nor webhooks.
async fn a_deleted_principal_leaves_nothing_to_its_namesake(store: &dyn Store) {
    let first = store.create_principal("wanda", "User", audit("p")).await.expect("wanda");
    let hook = Webhook {
        id: "hook-wanda".into(),
        subscription: None,
        principal: Some("Wanda".into()),
        url: "https://hooks.example/w".into(),
        secret: "0123456789abcdef0123".into(),
        events: vec![],
        created: now(),
    };
    store.create_webhook(hook, audit("wh")).await.expect("webhook");
    let t = NewToken {
        principal: "wanda".into(),
        token_hash: "wanda-1".into(),
        expires: None,
        origin: TokenOrigin::Server,
    };
    store.create_token(t, audit("t")).await.expect("token");
    store.create_role_assignment("wanda", "Reader", "/", audit("ra")).await.expect("assign");
    // Wanda's access is open, and so is someone else's on the same VM.
    register(store, "namesake", "vm1", OsType::Linux).await;
    let r = policy_ref("namesake", "westeurope", "default");
    put(store, &r, one_vm_policy("namesake", "vm1", None)).await.expect("policy");
    let vm = vm_id("namesake", "vm1");
    let mut cmd = initiate_cmd(&r, &vm, "203.0.113.60", 30, None);
    cmd.requestor = "wanda".into();
    let hers = store.initiate(cmd, audit("init")).await.expect("wanda's request").request;
    let other = store.initiate(initiate_cmd(&r, &vm, "203.0.113.61", 30, None), audit("init")).await.expect("other");
    let revision = store.revision().await.expect("revision");
    store.delete_principal("wanda", audit("dp")).await.expect("delete");
    // Her grants end with her, in the same transaction (agents are told: the revision moves);
    // nobody else's do.
    let (_, after) = store.get_request(hers.id).await.expect("get").expect("kept in the history");
    assert!(after.grants.iter().all(|g| g.status == GrantStatus::Revoked), "{after:?}");
    let (_, untouched) = store.get_request(other.request.id).await.expect("get").expect("other");
    assert!(untouched.grants.iter().all(|g| g.status == GrantStatus::Initiated), "{untouched:?}");
    assert!(store.revision().await.expect("revision") > revision);
    let second = store.create_principal("wanda", "User", audit("p")).await.expect("a new wanda");
    assert_ne!(second.id, first.id);
    assert!(store.list_tokens("wanda").await.expect("tokens").is_empty());
    assert!(store.list_role_assignments(Some("wanda")).await.expect("roles").is_empty());
    assert!(store.get_webhook("hook-wanda").await.expect("get").is_none(), "the webhook went with the principal");
}
