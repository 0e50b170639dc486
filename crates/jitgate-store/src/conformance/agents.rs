//! Agents: joins, bindings, revocation, rotation, revisions, gateways and their ports.

use super::*;

pub(super) fn join(token: &str, id: &str, name: &str, mode: AgentMode) -> AgentJoin {
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
            name_is_hostname: false,
        },
        now: now(),
    }
}

pub(super) async fn agents_and_enforcement_state(store: &dyn Store) {
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
    let listed = store.list_join_tokens().await.expect("join tokens");
    let ours: Vec<_> = listed.iter().filter(|t| t.spec.resource_group == "agents").collect();
    assert_eq!(ours.len(), 2, "{listed:?}");
    assert!(ours
        .iter()
        .all(|t| t.used.is_none() && t.created_by == "tester" && t.spec.expires == now() + Duration::hours(1)));
    assert_eq!(ours.iter().filter(|t| t.spec == spec(AgentMode::Host)).count(), 1);
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
    let got = store.get_agent("a-host").await.expect("get").expect("found");
    assert_eq!((got.name.as_str(), got.mode, got.vm_id.as_deref()), ("hostvm", AgentMode::Host, host.vm_id.as_deref()));
    assert!(store.get_agent("a-nobody").await.expect("get").is_none());
    let used = store.list_join_tokens().await.expect("join tokens");
    let used: Vec<_> = used.iter().filter(|t| t.spec.resource_group == "agents" && t.used.is_some()).collect();
    assert_eq!(used.len(), 1, "the host token is marked used");
    assert_eq!(used[0].spec.mode, AgentMode::Host);

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
    let behind6 =
        VmSpec { id: vm_id("agents", "inner6"), address: Some("fd00:2::7".parse().expect("ip")), ..behind.clone() };
    store.put_vm(behind6, audit("vm")).await.expect("attach an IPv6 VM");
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
                ports: Some(vec![mapped.clone()]),
                public_ip_address: None,
            },
            VmDraft {
                id: vm_id("agents", "inner6").as_str().into(),
                ports: Some(vec![PortDraft { mapped_port: Some(50023), ..mapped }]),
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
    // Behind a gateway a source reaches a VM of its own address family only (no NAT64): refused
    // before anything is written.
    let rev = store.revision().await.expect("revision");
    let mixed =
        store.initiate(initiate_cmd(&r, &vm_id("agents", "inner"), "2001:db8:5::7", 30, None), audit("i")).await;
    match mixed {
        Err(StoreError::Rejected(i)) => {
            assert_eq!(i.code, codes::INVALID_INITIATE);
            assert!(i.message.contains("no NAT64") && i.message.contains("10.2.0.7"), "{}", i.message);
        }
        other => panic!("an IPv6 source towards an IPv4 VM must be refused, got {other:?}"),
    }
    assert_eq!(store.revision().await.expect("revision"), rev, "nothing recorded");
    let g6 = store
        .initiate(initiate_cmd(&r, &vm_id("agents", "inner6"), "2001:db8:5::/48", 30, None), audit("i"))
        .await
        .expect("an IPv6 grant to an IPv6 VM behind the gateway");
    assert_eq!(g6.request.grants[0].mapped_port, Some(50023));
    assert_eq!(g6.request.grants[0].public_ip, None, "the gateway's public address is IPv4: of no use to IPv6");

    let hs = store.agent_state("a-host", now()).await.expect("host state");
    assert_eq!(hs.mode, AgentMode::Host);
    assert_eq!(hs.ports.len(), 1);
    assert_eq!((hs.ports[0].number, hs.ports[0].address), (22, None));
    assert_eq!(hs.grants.len(), 1);
    assert_eq!(hs.grants[0].sources.prefixes()[0].text(), "198.51.100.4");
    let gs = store.agent_state("a-gw", now()).await.expect("gateway state");
    assert_eq!(gs.ports.len(), 2);
    let mut addresses: Vec<_> = gs.ports.iter().map(|p| p.address.map(|a| a.to_string())).collect();
    addresses.sort();
    assert_eq!(addresses, [Some("10.2.0.7".to_string()), Some("fd00:2::7".to_string())]);
    assert!(gs.ports.iter().all(|p| p.cut_sessions));
    let mut grants: Vec<_> = gs.grants.iter().map(|g| (g.mapped_port, g.address.map(|a| a.to_string()))).collect();
    grants.sort();
    assert_eq!(grants, [(Some(50022), Some("10.2.0.7".into())), (Some(50023), Some("fd00:2::7".into()))]);
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
    let for_vms = for_vms.expect("agents");
    assert_eq!(for_vms.len(), 2);
    // Several agents by id in one read: in the order asked, each once, the unknown left out.
    let ids: Vec<String> = for_vms.iter().rev().map(|a| a.id.clone()).collect();
    let asked = [ids.clone(), vec!["no-such-agent".into()], ids.clone()].concat();
    let got = store.get_agents(&asked).await.expect("agents by id");
    assert_eq!(got.iter().map(|a| a.id.clone()).collect::<Vec<_>>(), ids);
    let host = got.iter().find(|a| a.id == "a-host").expect("the host agent by id");
    assert_eq!((host.applied_revision, host.delivered_revision, host.nft_usable), (7, 7, Some(false)));
    assert!(store.get_agents(&[]).await.expect("none asked").is_empty());
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
pub(super) async fn agent_bindings_revocation_and_gateway_scope(store: &dyn Store) {
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
    // An agent that sends only its host's name joins as the VM its token was made for; one
    // whose operator named another VM is refused as before.
    token("b-4h", SUB, AgentMode::Host, Some("web2")).await;
    let mut named = joining("b-4h", "x", "web9", AgentMode::Host, "10.3.0.9");
    named.agent.name_is_hostname = false;
    assert_eq!(rejected_code(store.join_agent(named, audit("join")).await), "InvalidJoinToken");
    let mut by_host = joining("b-4h", "web2-host", "vm", AgentMode::Host, "10.3.0.23");
    by_host.agent.name_is_hostname = true;
    let joined = store.join_agent(by_host, audit("join")).await.expect("joins as the token's VM");
    assert_eq!((joined.name.as_str(), joined.vm_id.as_deref()), ("web2", Some(web2.as_str())));
    assert!(store.get_vm(&vm_id("bind", "vm")).await.expect("get").is_none(), "no VM named after the host");
    let vm = store.get_vm(&web2).await.expect("get").expect("vm");
    assert_eq!(vm.agent.map(|a| a.id).as_deref(), Some("web2-host"));
    // Without a VM in the token the host's name is the VM's name.
    token("b-5h", SUB, AgentMode::Host, None).await;
    let mut plain = joining("b-5h", "web7-agent", "web7", AgentMode::Host, "10.3.0.7");
    plain.agent.name_is_hostname = true;
    assert_eq!(store.join_agent(plain, audit("join")).await.expect("join").name, "web7");

    // Deleting a VM ends its agent's binding for good.
    store.delete_vm(&vm_id("bind", "web3"), audit("vm-del")).await.expect("delete");
    assert!(store.agent_by_credential("cred-web3-agent").await.expect("auth").is_none());
    register(store, "bind", "web3", OsType::Linux).await;
    assert!(store.get_vm(&vm_id("bind", "web3")).await.expect("get").expect("vm").agent.is_none());

    // Revoking an agent: its credential stops, its VM has no enforcement point.
    let rev = store.revision().await.expect("revision");
    let removed = store.delete_agent("web2-host", audit("agent-del")).await.expect("revoke");
    assert_eq!(removed.name, "web2");
    assert!(store.revision().await.expect("revision") > rev);
    assert!(store.agent_by_credential("cred-web2-host").await.expect("auth").is_none());
    assert!(store.get_vm(&web2).await.expect("get").expect("vm").agent.is_none());
    assert_eq!(rejected_code(store.agent_state("web2-host", now()).await), "AgentNotFound");
    assert_eq!(rejected_code(store.delete_agent("web2-host", audit("agent-del")).await), "AgentNotFound");

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
