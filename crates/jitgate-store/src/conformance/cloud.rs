//! Cloud connectors: inventories, the state they are given, their enforcement reports and the
//! rule limit of a VM's security group.

use jitgate_core::audit::ops;
use jitgate_core::cloud::{
    CloudFacts, CloudVm, EnforcementReport, Failure, Removal, RemovalReason, CLOUD_RULE_LIMIT, NOT_FOUND_REASON,
};
use jitgate_core::{Protocol, SourcePrefix};

use super::*;

fn cloud_vm(name: &str, address: &str) -> CloudVm {
    CloudVm {
        id: vm_id("cloud", name),
        os_type: OsType::Linux,
        address: Some(address.parse().expect("ip")),
        public_address: None,
        unsupported_reason: None,
        facts: CloudFacts {
            provider: "aws".into(),
            instance_id: Some(name.into()),
            vpc_id: Some("vpc-1".into()),
            security_groups: vec!["sg-app".into()],
            display_name: Some(format!("{name} web")),
        },
    }
}

async fn cloud_token(store: &dyn Store, hash: &str) {
    let spec = JoinTokenSpec {
        subscription: SUB.into(),
        resource_group: "cloud".into(),
        location: "eastus".into(),
        mode: AgentMode::Cloud,
        expires: now() + Duration::hours(1),
        vm: None,
    };
    store.create_join_token(spec, hash, audit("jt")).await.expect("token");
}

fn code_of<T: std::fmt::Debug>(r: Result<T, StoreError>) -> &'static str {
    match r {
        Err(StoreError::Rejected(i)) => i.code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

pub(super) async fn cloud_connectors_inventory_state_and_reports(store: &dyn Store) {
    cloud_token(store, "jt-cloud").await;
    let c =
        store.join_agent(join("jt-cloud", "c-aws", "aws-prod", AgentMode::Cloud), audit("join")).await.expect("join");
    assert_eq!((c.mode, c.vm_id.as_deref()), (AgentMode::Cloud, None), "a connector joins without a VM");

    // The first inventory registers every instance as a VM the connector enforces.
    let rev0 = store.revision().await.expect("revision");
    let mut gone = cloud_vm("i-2", "10.9.0.2");
    gone.public_address = Some("203.0.113.50".parse().expect("ip"));
    let mut no_group = cloud_vm("i-3", "10.9.0.3");
    no_group.unsupported_reason = Some("no security group".into());
    let vms = vec![cloud_vm("i-1", "10.9.0.1"), gone, no_group];
    let done = store.put_cloud_inventory("c-aws", vms.clone(), audit("inv")).await.expect("inventory");
    assert_eq!((done.registered, done.unsupported, done.changed), (3, 1, true));
    assert!(store.revision().await.expect("revision") > rev0);
    let vm = store.get_vm(&vm_id("cloud", "i-2")).await.expect("get").expect("registered");
    assert_eq!(vm.agent.as_ref().map(|a| a.id.as_str()), Some("c-aws"));
    assert_eq!(vm.spec.location, "eastus");
    let facts = vm.cloud.expect("cloud facts");
    assert_eq!(facts.facts, vms[1].facts);
    assert_eq!(facts.public_address, vms[1].public_address);
    // The same inventory again changes nothing.
    let rev1 = store.revision().await.expect("revision");
    let again = store.put_cloud_inventory("c-aws", vms.clone(), audit("inv")).await.expect("again");
    assert!(!again.changed);
    assert_eq!(store.revision().await.expect("revision"), rev1);

    // A policy on i-1 and i-2; a grant on i-1; a mapped port is refused on a cloud VM.
    let r = policy_ref("cloud", "eastus", "default");
    let draft = PolicyDraft {
        kind: None,
        vms: ["i-1", "i-2"]
            .iter()
            .map(|n| VmDraft {
                id: vm_id("cloud", n).as_str().into(),
                ports: Some(vec![ssh_port()]),
                public_ip_address: None,
            })
            .collect(),
    };
    let mut mapped = draft.clone();
    if let Some(ports) = mapped.vms[0].ports.as_mut() {
        ports[0].mapped_port = Some(50022);
    }
    assert_eq!(code_of(put(store, &r, mapped).await), jitgate_core::cloud::NO_DNAT_IN_CLOUD);
    put(store, &r, draft).await.expect("policy");
    let g = store.initiate(initiate_cmd(&r, &vm_id("cloud", "i-1"), "198.51.100.7", 30, None), audit("i")).await;
    let rid = g.expect("grant").request.id;
    let state = store.agent_state("c-aws", now()).await.expect("state");
    assert_eq!(state.mode, AgentMode::Cloud);
    assert_eq!(state.ports.len(), 2, "i-1 and i-2 (i-3 is unsupported): {state:?}");
    assert_eq!(state.grants.len(), 1);
    assert_eq!(state.grants[0].address, Some("10.9.0.1".parse().expect("ip")), "the private address");

    // A second inventory without i-2: Unsupported, never deleted; it leaves the state.
    let done = store.put_cloud_inventory("c-aws", vec![vms[0].clone(), vms[2].clone()], audit("inv")).await;
    assert_eq!(done.expect("inventory").unsupported, 2);
    let vm = store.get_vm(&vm_id("cloud", "i-2")).await.expect("get").expect("kept");
    assert_eq!(vm.cloud.and_then(|c| c.unsupported_reason).as_deref(), Some(NOT_FOUND_REASON));
    assert_eq!(store.agent_state("c-aws", now()).await.expect("state").ports.len(), 1);

    // A VM another enforcement point holds refuses the whole inventory.
    store
        .create_join_token(
            JoinTokenSpec {
                subscription: SUB.into(),
                resource_group: "cloud".into(),
                location: "eastus".into(),
                mode: AgentMode::Host,
                expires: now() + Duration::hours(1),
                vm: None,
            },
            "jt-cloud-host",
            audit("jt"),
        )
        .await
        .expect("token");
    store.join_agent(join("jt-cloud-host", "h-9", "i-9", AgentMode::Host), audit("join")).await.expect("host");
    let rev = store.revision().await.expect("revision");
    let clash = store.put_cloud_inventory(
        "c-aws",
        vec![cloud_vm("i-9", "10.9.0.9"), cloud_vm("i-10", "10.9.0.10")],
        audit("inv"),
    );
    assert_eq!(code_of(clash.await), jitgate_core::cloud::VM_ENFORCED_ELSEWHERE);
    assert!(store.get_vm(&vm_id("cloud", "i-10")).await.expect("get").is_none(), "nothing of it stored");
    assert_eq!(store.revision().await.expect("revision"), rev);
    // A connector's VM is not attached to a gateway behind its back.
    let attach = VmSpec {
        id: vm_id("cloud", "i-1"),
        os_type: OsType::Linux,
        location: "eastus".into(),
        address: Some("10.9.0.1".parse().expect("ip")),
        gateway: Some("gw-any".into()),
        classic: false,
    };
    assert_eq!(code_of(store.put_vm(attach, audit("vm")).await), jitgate_core::cloud::VM_ENFORCED_ELSEWHERE);
    // A host agent does not join as a connector's VM, and only connectors send inventories.
    cloud_token(store, "jt-cloud-2").await;
    let host_token = JoinTokenSpec {
        subscription: SUB.into(),
        resource_group: "cloud".into(),
        location: "eastus".into(),
        mode: AgentMode::Host,
        expires: now() + Duration::hours(1),
        vm: Some("i-1".into()),
    };
    store.create_join_token(host_token, "jt-cloud-take", audit("jt")).await.expect("token");
    let take = store.join_agent(join("jt-cloud-take", "h-1", "i-1", AgentMode::Host), audit("join")).await;
    assert_eq!(code_of(take), jitgate_core::join::VM_BEHIND_GATEWAY);
    let not_cloud = store.put_cloud_inventory("h-9", vec![], audit("inv")).await;
    assert_eq!(code_of(not_cloud), jitgate_core::cloud::NOT_A_CLOUD_CONNECTOR);

    // An enforcement report: each removal audited; the failures replace the last list.
    let after = store.audit_records(0, 100_000).await.expect("audit").last().map_or(0, |r| r.seq);
    let removal = Removal {
        request_id: rid,
        vm: vm_id("cloud", "i-1"),
        protocol: Protocol::Tcp,
        port: 22,
        source: SourcePrefix::parse("198.51.100.7").expect("prefix"),
        reason: RemovalReason::Revoked,
        removed_at: now(),
    };
    let failure = Failure { vm: vm_id("cloud", "i-1"), error: "UnauthorizedOperation".into() };
    let report = EnforcementReport { removals: vec![removal.clone()], failures: vec![failure] };
    assert!(store.report_cloud_enforcement("c-aws", report, audit(ops::AGENT_ENFORCEMENT)).await.expect("report"));
    let written = store.audit_records(after, 100).await.expect("audit");
    let removed: Vec<_> = written.iter().filter(|r| r.event.operation == ops::GRANT_RULE_REMOVE).collect();
    assert_eq!(removed.len(), 1, "{written:?}");
    assert_eq!(removed[0].event.properties.get("requestId"), Some(&rid.to_string()));
    assert_eq!(removed[0].event.caller, "agent:c-aws");
    let vm = store.get_vm(&vm_id("cloud", "i-1")).await.expect("get").expect("vm");
    assert_eq!(vm.cloud.and_then(|c| c.failure).as_deref(), Some("UnauthorizedOperation"));
    // A report naming a VM that is not the connector's is refused whole.
    let foreign = EnforcementReport {
        removals: vec![removal.clone(), Removal { vm: vm_id("cloud", "i-9"), ..removal }],
        failures: vec![],
    };
    let before = store.audit_records(0, 100_000).await.expect("audit").len();
    let refused = store.report_cloud_enforcement("c-aws", foreign, audit(ops::AGENT_ENFORCEMENT)).await;
    assert_eq!(code_of(refused), jitgate_core::cloud::INVALID_ENFORCEMENT_REPORT);
    assert_eq!(store.audit_records(0, 100_000).await.expect("audit").len(), before + 1, "only the refusal");
    // An empty list clears the failures.
    assert!(store.report_cloud_enforcement("c-aws", EnforcementReport::default(), audit("r")).await.expect("report"));
    let vm = store.get_vm(&vm_id("cloud", "i-1")).await.expect("get").expect("vm");
    assert_eq!(vm.cloud.and_then(|c| c.failure), None);
    assert!(!store.report_cloud_enforcement("c-aws", EnforcementReport::default(), audit("r")).await.expect("again"));

    // The security group's rule limit: 60 distinct rules, the 61st refused. A scheduled grant
    // holds its rule already: it opens later without another check.
    for i in 1..CLOUD_RULE_LIMIT {
        let source = format!("198.51.{}.{}", 100 + i / 200, i % 200 + 8);
        let mut cmd = initiate_cmd(&r, &vm_id("cloud", "i-1"), &source, 30, None);
        if i + 1 == CLOUD_RULE_LIMIT {
            cmd.draft.start_time = Some(now() + Duration::hours(1));
            cmd.draft.vms[0].ports[0].end_time = Some(now() + Duration::hours(2));
        }
        let done = store.initiate(cmd, audit("i")).await.expect("fits");
        let scheduled = done.request.grants[0].status == GrantStatus::Scheduled;
        assert_eq!(scheduled, i + 1 == CLOUD_RULE_LIMIT, "{:?}", done.request.grants[0]);
    }
    let full = store.initiate(initiate_cmd(&r, &vm_id("cloud", "i-1"), "192.0.2.1", 30, None), audit("i")).await;
    assert_eq!(code_of(full), jitgate_core::cloud::RULE_LIMIT_REACHED);
    // The same source again aggregates.
    store.initiate(initiate_cmd(&r, &vm_id("cloud", "i-1"), "198.51.100.7", 30, None), audit("i")).await.expect("same");
    assert!(store.list_vms().await.expect("list").iter().any(|v| v.cloud.is_some()));
    // A failure is left in place, so that a store filled by this suite has one of every column.
    let failing = Failure { vm: vm_id("cloud", "i-1"), error: "RequestLimitExceeded".into() };
    let report = EnforcementReport { removals: vec![], failures: vec![failing] };
    assert!(store.report_cloud_enforcement("c-aws", report, audit("r")).await.expect("report"));
}
