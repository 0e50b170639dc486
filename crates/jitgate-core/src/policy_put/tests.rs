use super::*;
use crate::ids::{PolicyRef, VmId};
use crate::policy::{PolicyVm, PortRule, Protocol};

const SUB: &str = "20ff7fc3-e762-44dd-bd96-b71116dcdc23";

fn vm_id(name: &str) -> VmId {
    VmId::parse(&format!("/subscriptions/{SUB}/resourceGroups/rg1/providers/Microsoft.Compute/virtualMachines/{name}"))
        .expect("a VM id")
}

fn reference() -> PolicyRef {
    PolicyRef {
        subscription: SUB.into(),
        resource_group: "rg1".into(),
        location: "westeurope".into(),
        name: "default".into(),
    }
}

/// vm1 with 22 (mapped to 2201) and 80; vm2 with its OS default.
fn validated() -> ValidatedPolicy {
    let mut ssh = PortRule::default_for(OsType::Linux);
    ssh.mapped_port = Some(2201);
    let mut web = PortRule::default_for(OsType::Linux);
    web.number = 80;
    web.protocol = Protocol::Tcp;
    ValidatedPolicy {
        reference: reference(),
        kind: "Basic".into(),
        vms: vec![
            PolicyVm { id: vm_id("vm1"), ports: vec![ssh, web], public_ip_address: None },
            PolicyVm { id: vm_id("vm2"), ports: vec![], public_ip_address: None },
        ],
    }
}

fn known(gateway: Option<&str>) -> KnownVms {
    let mut known = KnownVms::default();
    known.add(vm_id("vm1").key(), OsType::Linux, gateway.map(str::to_owned));
    known.add(vm_id("vm2").key(), OsType::Windows, None);
    known
}

#[test]
fn known_vms_resolve_os_defaults_and_refuse_an_unregistered_vm() {
    let policy = known(None).resolve(validated()).expect("resolves");
    assert_eq!(policy.vms[1].ports, vec![PortRule::default_for(OsType::Windows)]);
    let mut only_vm1 = KnownVms::default();
    only_vm1.add(vm_id("vm1").key(), OsType::Linux, None);
    let invalid = only_vm1.resolve(validated()).expect_err("vm2 is not registered");
    assert_eq!(invalid.target.as_deref(), Some("properties.virtualMachines[1].id"));
}

#[test]
fn gateway_claims_list_each_gateway_once_with_its_mapped_ports() {
    let policy = known(Some("GW1")).resolve(validated()).expect("resolves");
    let claims = known(Some("GW1")).gateway_claims(&policy);
    assert_eq!(claims.len(), 1);
    let (gw, claims) = &claims[0];
    assert_eq!(gw, "GW1");
    assert_eq!(claims.len(), 1, "only the mapped port claims: {claims:?}");
    assert_eq!((claims[0].number, claims[0].mapped_port), (22, 2201));
    assert_eq!(claims[0].target.as_deref(), Some("properties.virtualMachines[0].ports[0].mappedPort"));
    assert!(known(None).gateway_claims(&policy).is_empty(), "no gateway, no claims");
}

#[test]
fn a_disabled_scope_refuses_the_vm_it_covers() {
    let policy = known(None).resolve(validated()).expect("resolves");
    assert!(check_security_policies(&policy, &[format!("/subscriptions/{SUB}/resourceGroups/other")]).is_ok());
    let invalid = check_security_policies(&policy, &[format!("/subscriptions/{SUB}")]).expect_err("disabled");
    assert_eq!(invalid.code, JIT_DISABLED);
    assert_eq!(invalid.target.as_deref(), Some("properties.virtualMachines[0].id"));
}

#[test]
fn a_vm_of_another_policy_is_refused_by_its_place() {
    let policy = known(None).resolve(validated()).expect("resolves");
    assert!(check_one_policy_per_vm(&policy, &[None, None]).is_ok());
    let invalid = check_one_policy_per_vm(&policy, &[None, Some("other".into())]).expect_err("held");
    assert_eq!(invalid.code, VM_IN_ANOTHER_POLICY);
    assert_eq!(invalid.target.as_deref(), Some("properties.virtualMachines[1].id"));
    assert!(invalid.message.contains("'other'"), "{}", invalid.message);
}

#[test]
fn the_claims_of_one_vm_and_the_port_summary() {
    let policy = known(None).resolve(validated()).expect("resolves");
    let claims = claims_of_vm(&policy, &vm_id("vm1").key());
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0].target.as_deref(), Some("gateway"));
    assert!(claims_of_vm(&policy, &vm_id("vm2").key()).is_empty());
    assert_eq!(port_summary(&policy), "vm1:22/*,vm1:80/TCP,vm2:3389/*");
}

#[test]
fn a_mapped_port_is_refused_only_on_a_vm_a_cloud_connector_enforces() {
    let policy = known(None).resolve(validated()).expect("resolves");
    // vm1 has port 22 mapped to 2201: fine behind a gateway or on a host …
    assert_eq!(known(None).check_cloud_ports(&policy), Ok(()));
    // … and refused, naming the port, once a cloud connector enforces vm1.
    let mut cloud = known(None);
    cloud.add_cloud(vm_id("vm1").key());
    let e = cloud.check_cloud_ports(&policy).expect_err("a security group forwards nothing");
    assert_eq!(e.target.as_deref(), Some("properties.virtualMachines[0].ports[0].mappedPort"));
    // A cloud VM without mapped ports passes.
    let mut vm2_in_cloud = known(None);
    vm2_in_cloud.add_cloud(vm_id("vm2").key());
    assert_eq!(vm2_in_cloud.check_cloud_ports(&policy), Ok(()));
}
