use super::*;
use crate::audit::AuditStatus;

fn audit() -> AuditEvent {
    crate::audit::test_event(time::OffsetDateTime::UNIX_EPOCH)
}

fn vm() -> VmId {
    VmId::parse(
        "/subscriptions/20ff7fc3-e762-44dd-bd96-b71116dcdc23/resourceGroups/rg1/providers/Microsoft.Compute/virtualMachines/vm1",
    )
    .expect("a VM id")
}

#[test]
fn a_vm_attaches_only_to_a_joined_gateway_and_needs_its_address() {
    assert!(check_gateway("gw", "sub", true).is_ok());
    let invalid = check_gateway("gw", "sub", false).expect_err("not joined");
    assert_eq!((invalid.code, invalid.target.as_deref()), (codes::INVALID_VM, Some("gateway")));
    assert!(check_address(Some("10.0.0.4".parse().expect("an address"))).is_ok());
    assert_eq!(check_address(None).expect_err("no address").target.as_deref(), Some("address"));
}

#[test]
fn ports_move_unless_the_vm_stays_behind_the_same_gateway() {
    assert!(moves_onto(None, "gw"), "a new VM");
    assert!(moves_onto(Some(None), "gw"), "from no gateway");
    assert!(moves_onto(Some(Some("other")), "gw"), "from another gateway");
    assert!(!moves_onto(Some(Some("GW")), "gw"), "the same gateway, in another casing");
}

#[test]
fn a_protected_vm_is_not_deleted_and_the_records_name_what_changed() {
    assert!(check_deletable(&vm(), None).is_ok());
    assert_eq!(check_deletable(&vm(), Some("/p")).expect_err("protected").code, codes::VM_IN_USE);
    assert_eq!(not_registered(&vm()).code, codes::VM_NOT_FOUND);
    let event = stored(audit(), OsType::Linux, "westeurope", None, Some("gw"));
    assert_eq!(event.status, AuditStatus::Succeeded);
    assert_eq!((event.properties["address"].as_str(), event.properties["gateway"].as_str()), ("", "gw"));
    assert!(!deleted(audit(), &[]).properties.contains_key("revokedAgents"));
    assert_eq!(deleted(audit(), &["a1".into(), "a2".into()]).properties["revokedAgents"], "a1 a2");
}
