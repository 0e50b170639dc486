//! The behaviour every backend must show, written once. A backend's tests call [`run_all`]
//! with a fresh, empty store (see the `tests/conformance.rs` of jitgate-store-sqlite and
//! jitgate-store-postgres).
//!
//! ## What covers what
//!
//! Every method of the store traits is called by at least one case of [`run_all`]; a unit test
//! of `jitgate-store` (`coverage`) fails when a method has no call in this suite or no row in
//! this table. A new backend is proven by running [`run_all`] on it.
//!
//! | method | case(s) |
//! |---|---|
//! | **PolicyStore** | |
//! | `put_policy` | `policies_and_lists`, `refusals_change_nothing_but_the_audit`; every case through `put`, `cloud_connectors_inventory_state_and_reports` |
//! | `get_policy` | `policies_and_lists`, `initiate_supersede_and_replay`, `refusals_change_nothing_but_the_audit`, `expiry` |
//! | `list_policies` | `policies_and_lists` |
//! | `delete_policy` | `vms`, `policies_and_lists`, `agents_and_enforcement_state`, `agent_bindings_revocation_and_gateway_scope` |
//! | `initiate` | `initiate_supersede_and_replay`, `refusals_change_nothing_but_the_audit`, `approvals_and_extensions`, `expiry`, `agents_and_enforcement_state`, `a_deleted_principal_leaves_nothing_to_its_namesake`, `audit_queries_inventory_facts_and_security_policies`, `webhook_deliveries_are_isolated_and_claimed_once`, `cloud_connectors_inventory_state_and_reports` |
//! | `expire_due` | `expiry` |
//! | `next_expiry` | `expiry` |
//! | `live_grants` | `gauges_and_observed_commits` |
//! | `revoke_request` | `agents_and_enforcement_state` |
//! | `decide_request` | `approvals_and_extensions` |
//! | `extend_request` | `approvals_and_extensions` |
//! | `get_request` | `approvals_and_extensions`, `agents_and_enforcement_state`, `a_deleted_principal_leaves_nothing_to_its_namesake` |
//! | **AgentStore** | |
//! | `put_vm` | `vms`, `agents_and_enforcement_state`; every case through `register`, `cloud_connectors_inventory_state_and_reports` |
//! | `list_vms` | `vms`, `cloud_connectors_inventory_state_and_reports` |
//! | `get_vm` | `vms`, `agents_and_enforcement_state`, `agent_bindings_revocation_and_gateway_scope`, `cloud_connectors_inventory_state_and_reports` |
//! | `delete_vm` | `vms`, `agent_bindings_revocation_and_gateway_scope` |
//! | `vm_access` | `audit_queries_inventory_facts_and_security_policies`, `inventory_facts_of_many_vms_at_once` |
//! | `policy_of_vm` | `audit_queries_inventory_facts_and_security_policies`, `inventory_facts_of_many_vms_at_once` |
//! | `vm_access_many` | `inventory_facts_of_many_vms_at_once` |
//! | `policies_of_vms` | `inventory_facts_of_many_vms_at_once` |
//! | `configured_vm_keys` | `audit_queries_inventory_facts_and_security_policies` |
//! | `open_requests` | `audit_queries_inventory_facts_and_security_policies` |
//! | `put_security_policy` | `audit_queries_inventory_facts_and_security_policies` |
//! | `list_security_policies` | `audit_queries_inventory_facts_and_security_policies` |
//! | `revision` | `agents_and_enforcement_state`, `agent_bindings_revocation_and_gateway_scope`, `a_deleted_principal_leaves_nothing_to_its_namesake`, `cloud_connectors_inventory_state_and_reports` |
//! | `create_join_token` | `agents_and_enforcement_state`, `agent_bindings_revocation_and_gateway_scope`, `cloud_connectors_inventory_state_and_reports` |
//! | `list_join_tokens` | `agents_and_enforcement_state` |
//! | `join_agent` | `agents_and_enforcement_state`, `agent_bindings_revocation_and_gateway_scope`, `oversized_audit_fields_are_bounded`, `cloud_connectors_inventory_state_and_reports` |
//! | `agent_by_credential` | `agents_and_enforcement_state`, `agent_bindings_revocation_and_gateway_scope` |
//! | `list_agents` | `agents_and_enforcement_state` |
//! | `get_agent` | `agents_and_enforcement_state` |
//! | `gateway_agent` | `agent_bindings_revocation_and_gateway_scope` |
//! | `delete_agent` | `agent_bindings_revocation_and_gateway_scope` |
//! | `rotate_agent_credential` | `agent_bindings_revocation_and_gateway_scope` |
//! | `agent_state` | `agents_and_enforcement_state`, `agent_bindings_revocation_and_gateway_scope`, `cloud_connectors_inventory_state_and_reports` |
//! | `agent_delivered` | `agents_and_enforcement_state` |
//! | `agent_report` | `agents_and_enforcement_state` |
//! | `agents_for_vms` | `agents_and_enforcement_state` |
//! | `get_agents` | `agents_and_enforcement_state` |
//! | `put_cloud_inventory` | `cloud_connectors_inventory_state_and_reports` |
//! | `report_cloud_enforcement` | `cloud_connectors_inventory_state_and_reports` |
//! | **IdentityStore** | |
//! | `bootstrap` | `bootstrap_and_tokens` |
//! | `authenticate` | `bootstrap_and_tokens`, `principals_tokens_roles_and_assignments`, `tokens_never_outlive_what_created_them` |
//! | `create_principal` | `principals_tokens_roles_and_assignments`, `tokens_never_outlive_what_created_them`, `a_deleted_principal_leaves_nothing_to_its_namesake` |
//! | `oidc_principal` | `oidc_identities_live_in_their_own_namespace` |
//! | `list_principals` | `principals_tokens_roles_and_assignments`, `oidc_identities_live_in_their_own_namespace` |
//! | `get_principal` | `principals_tokens_roles_and_assignments`, `oidc_identities_live_in_their_own_namespace` |
//! | `delete_principal` | `principals_tokens_roles_and_assignments`, `oidc_identities_live_in_their_own_namespace`, `tokens_never_outlive_what_created_them`, `a_deleted_principal_leaves_nothing_to_its_namesake` |
//! | `create_token` | `principals_tokens_roles_and_assignments`, `tokens_never_outlive_what_created_them`, `a_deleted_principal_leaves_nothing_to_its_namesake` |
//! | `list_tokens` | `bootstrap_and_tokens`, `principals_tokens_roles_and_assignments`, `a_deleted_principal_leaves_nothing_to_its_namesake` |
//! | `get_token` | `principals_tokens_roles_and_assignments`, `tokens_never_outlive_what_created_them` |
//! | `revoke_token` | `principals_tokens_roles_and_assignments`, `tokens_never_outlive_what_created_them` |
//! | `put_role_definition` | `principals_tokens_roles_and_assignments` |
//! | `list_role_definitions` | `principals_tokens_roles_and_assignments` |
//! | `get_role_definition` | `principals_tokens_roles_and_assignments` |
//! | `delete_role_definition` | `principals_tokens_roles_and_assignments` |
//! | `create_role_assignment` | `principals_tokens_roles_and_assignments`, `oidc_identities_live_in_their_own_namespace`, `a_deleted_principal_leaves_nothing_to_its_namesake` |
//! | `list_role_assignments` | `principals_tokens_roles_and_assignments`, `oidc_identities_live_in_their_own_namespace`, `a_deleted_principal_leaves_nothing_to_its_namesake` |
//! | `get_role_assignment` | `principals_tokens_roles_and_assignments` |
//! | `delete_role_assignment` | `principals_tokens_roles_and_assignments` |
//! | **AuditStore** | |
//! | `record` | `oversized_audit_fields_are_bounded` |
//! | `record_many` | `oversized_audit_fields_are_bounded` |
//! | `audit_records` | `refusals_change_nothing_but_the_audit`, `approvals_and_extensions`, `agent_bindings_revocation_and_gateway_scope`, `tokens_never_outlive_what_created_them`, `oversized_audit_fields_are_bounded`, `audit_chain_is_intact`, `audit_queries_inventory_facts_and_security_policies`, `cloud_connectors_inventory_state_and_reports` |
//! | `query_audit` | `audit_queries_inventory_facts_and_security_policies` |
//! | `verify_audit` | `audit_queries_inventory_facts_and_security_policies` |
//! | `audit_before` | `audit_queries_inventory_facts_and_security_policies` |
//! | `seal_archive` | `audit_queries_inventory_facts_and_security_policies` |
//! | `ping` | `bootstrap_and_tokens` |
//! | **WebhookStore** | |
//! | `create_webhook` | `approvals_and_extensions`, `a_deleted_principal_leaves_nothing_to_its_namesake`, `webhook_deliveries_are_isolated_and_claimed_once` |
//! | `list_webhooks` | `webhook_deliveries_are_isolated_and_claimed_once` |
//! | `get_webhook` | `a_deleted_principal_leaves_nothing_to_its_namesake`, `webhook_deliveries_are_isolated_and_claimed_once` |
//! | `delete_webhook` | `approvals_and_extensions`, `webhook_deliveries_are_isolated_and_claimed_once` |
//! | `claim_deliveries` | `webhook_deliveries_are_isolated_and_claimed_once` |
//! | `delivery_attempted` | `webhook_deliveries_are_isolated_and_claimed_once` |
//! | `list_deliveries` | `approvals_and_extensions`, `webhook_deliveries_are_isolated_and_claimed_once` |
//! | `next_delivery` | `webhook_deliveries_are_isolated_and_claimed_once` |
//! | `pending_deliveries` | `gauges_and_observed_commits` |
//! | **ReplicaStore** | |
//! | `listen` | `leases_are_held_by_one_holder_at_a_time` |
//! | `try_lease` | `leases_are_held_by_one_holder_at_a_time` |
//! | `release_lease` | `leases_are_held_by_one_holder_at_a_time` |
//! | **SessionStore** | |
//! | `put_ephemeral` | `ephemeral_entries_expire_and_are_taken_once` |
//! | `get_ephemeral` | `ephemeral_entries_expire_and_are_taken_once` |
//! | `take_ephemeral` | `ephemeral_entries_expire_and_are_taken_once` |
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

use crate::prelude::*;
use crate::{
    AgentJoin, AgentReport, AuditFilter, InitiateCommand, JoinTokenSpec, ListScope, NewToken, OidcIdentity, OidcSignIn,
    StoreError, TokenOrigin, VmSpec, Webhook,
};

mod agents;
mod audit_hooks;
mod cloud;
mod fill;
mod identity;
mod inventory;
pub mod literals;
pub mod migrations;
mod observe;
mod replica;
mod requests;
mod sessions;

use agents::*;
use audit_hooks::*;
use cloud::*;
pub use fill::{fill_every_kind, write_one_of_each};
use identity::*;
use inventory::*;
use observe::*;
use replica::*;
use requests::*;
use sessions::*;

pub const SUB: &str = "20ff7fc3-e762-44dd-bd96-b71116dcdc23";

/// A succeeded audit record of `operation`, now, by caller `t`: what a backend's own tests pass
/// with the changes they make beside the suite.
pub fn event(operation: impl Into<String>) -> AuditEvent {
    AuditEvent {
        time: OffsetDateTime::now_utc(),
        operation: operation.into(),
        status: AuditStatus::Succeeded,
        caller: "t".into(),
        caller_ip: None,
        resource_id: "/".into(),
        correlation_id: "c".into(),
        properties: Default::default(),
    }
}

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
    approvals_and_extensions(store).await;
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
    inventory_facts_of_many_vms_at_once(store).await;
    webhook_deliveries_are_isolated_and_claimed_once(store).await;
    leases_are_held_by_one_holder_at_a_time(store).await;
    ephemeral_entries_expire_and_are_taken_once(store).await;
    gauges_and_observed_commits(store).await;
    cloud_connectors_inventory_state_and_reports(store).await;
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
