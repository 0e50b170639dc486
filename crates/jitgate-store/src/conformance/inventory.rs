//! The inventory's set-based reads: the facts of several VMs at once equal the per-VM reads.

use std::collections::HashMap;

use super::*;

fn initiate_at(r: &PolicyRef, vms: &[&str], requestor: &str, at: OffsetDateTime) -> InitiateCommand {
    let mut cmd = initiate_cmd(r, &vm_id("many", vms[0]), "198.51.100.9", 30, None);
    let port = cmd.draft.vms[0].ports[0].clone();
    cmd.draft.vms = vms
        .iter()
        .map(|v| InitiateVmDraft {
            id: vm_id("many", v).as_str().into(),
            ports: vec![InitiatePortDraft { end_time: Some(at + Duration::minutes(30)), ..port.clone() }],
        })
        .collect();
    cmd.requestor = requestor.into();
    cmd.now = at;
    cmd
}

pub(super) async fn inventory_facts_of_many_vms_at_once(store: &dyn Store) {
    for name in ["m0", "m1", "m2", "m3", "m4"] {
        register(store, "many", name, OsType::Linux).await;
    }
    let p1 = policy_ref("many", "westeurope", "p1");
    let draft = PolicyDraft {
        kind: None,
        vms: vec![
            VmDraft { id: vm_id("many", "m0").as_str().into(), ports: Some(vec![ssh_port()]), public_ip_address: None },
            VmDraft { id: vm_id("many", "m1").as_str().into(), ports: Some(vec![ssh_port()]), public_ip_address: None },
            VmDraft { id: vm_id("many", "m2").as_str().into(), ports: None, public_ip_address: None },
        ],
    };
    put(store, &p1, draft).await.expect("p1");
    let p2 = policy_ref("many", "westeurope", "p2");
    put(store, &p2, one_vm_policy("many", "m3", Some(vec![ssh_port()]))).await.expect("p2");

    // m0: three requests in the window (one with m1), the last by bob; m1: one more, eight days
    // ago (outside the window); m3: one; m2 and m4: none.
    let day = Duration::days(1);
    for (policy, vms, who, at) in [
        (&p1, vec!["m1"], "amy", now() - day * 8),
        (&p1, vec!["m0", "m1"], "amy", now() - day * 2),
        (&p1, vec!["m0"], "carl", now() - day),
        (&p2, vec!["m3"], "dora", now() - day),
        (&p1, vec!["m0"], "bob", now()),
    ] {
        store.initiate(initiate_at(policy, &vms, who, at), audit("init")).await.expect("grant");
    }

    // Asked for with a different case, an unknown VM among them, and twice the same.
    let asked: Vec<VmId> = ["M0", "m1", "m2", "m3", "m4", "ghost", "m0"].iter().map(|n| vm_id("many", n)).collect();
    for since in [now() - Duration::days(7), now() - day * 3, now() + Duration::seconds(1)] {
        let many = store.vm_access_many(&asked, since).await.expect("access of many");
        assert_eq!(many.len(), 6, "one entry per distinct VM asked for: {many:?}");
        for id in &asked {
            let one = store.vm_access(id, since).await.expect("access of one");
            assert_eq!(many.get(&id.key()), Some(&one), "{id} since {since}");
        }
    }
    let window = store.vm_access_many(&asked, now() - Duration::days(7)).await.expect("access");
    let counts: HashMap<&str, u64> =
        ["m0", "m1", "m2", "m3", "m4"].iter().map(|n| (*n, window[&vm_id("many", n).key()].approved_since)).collect();
    assert_eq!(counts, HashMap::from([("m0", 3), ("m1", 1), ("m2", 0), ("m3", 1), ("m4", 0)]));
    let m0 = &window[&vm_id("many", "m0").key()];
    assert_eq!((m0.last_user.as_deref(), m0.last_access), (Some("bob"), Some(now())));
    let m1 = &window[&vm_id("many", "m1").key()];
    assert_eq!((m1.last_user.as_deref(), m1.last_access), (Some("amy"), Some(now() - day * 2)));
    assert_eq!(window[&vm_id("many", "m4").key()], crate::VmAccess::default());
    assert!(store.vm_access_many(&[], now()).await.expect("none").is_empty());

    let policies = store.policies_of_vms(&asked).await.expect("policies of many");
    assert_eq!(policies.len(), 4, "m0..m3 are named by a policy: {policies:?}");
    for id in &asked {
        let one = store.policy_of_vm(id).await.expect("policy of one");
        let expected = one.map(|p| crate::VmPolicy {
            vm: p.vm(&id.key()).cloned().expect("the policy names the VM"),
            policy: p.reference,
        });
        assert_eq!(policies.get(&id.key()), expected.as_ref(), "{id}");
    }
    assert_eq!(policies[&vm_id("many", "m3").key()].policy, p2);
    assert_eq!(policies[&vm_id("many", "m0").key()].vm.ports.len(), 1);
    assert!(!policies[&vm_id("many", "m2").key()].vm.ports.is_empty(), "the OS defaults");
    assert!(store.policies_of_vms(&[]).await.expect("none").is_empty());
}
