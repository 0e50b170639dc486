//! What registering, changing and deleting a VM may do, decided on the facts a store loads: the
//! gateway it attaches to, whether its mapped ports move, its inner address, the policy that
//! protects it; and the audit records of those changes.

use std::net::IpAddr;

use crate::audit::AuditEvent;
use crate::ids::VmId;
use crate::invalid::{codes, Invalid};
use crate::policy::OsType;

/// Refuses a VM attaching to gateway `gateway` when no gateway agent of that name has joined its
/// subscription `subscription` (`joined`).
pub fn check_gateway(gateway: &str, subscription: &str, joined: bool) -> Result<(), Invalid> {
    if joined {
        return Ok(());
    }
    Err(Invalid::input(
        codes::INVALID_VM,
        Some("gateway".into()),
        format!(
            "no gateway agent named '{gateway}' has joined subscription '{subscription}'; a VM attaches only to a \
             gateway of its own subscription (join one with jitgate agent --mode gateway)"
        ),
    ))
}

/// Whether a VM's mapped ports move onto `gateway`: it is new (`previous`: `None`), or it sat
/// behind no gateway or another one (`previous`: `Some(its gateway)`). Moving ports must be free
/// on the gateway they move to.
pub fn moves_onto(previous: Option<Option<&str>>, gateway: &str) -> bool {
    previous.is_none_or(|p| !p.is_some_and(|p| p.eq_ignore_ascii_case(gateway)))
}

/// A VM behind a gateway needs its inner address (the address the gateway forwards to).
pub fn check_address(address: Option<IpAddr>) -> Result<(), Invalid> {
    match address {
        Some(_) => Ok(()),
        None => Err(Invalid::input(
            codes::INVALID_VM,
            Some("address".into()),
            "a VM behind a gateway needs its inner address (the address the gateway forwards to)",
        )),
    }
}

/// The audit record of a stored VM.
pub fn stored(
    audit: AuditEvent,
    os_type: OsType,
    location: &str,
    address: Option<IpAddr>,
    gateway: Option<&str>,
) -> AuditEvent {
    audit
        .succeeded()
        .with("osType", os_type.as_str())
        .with("location", location.to_owned())
        .with("address", address.map(|a| a.to_string()).unwrap_or_default())
        .with("gateway", gateway.unwrap_or_default().to_owned())
}

/// A VM that is not registered.
pub fn not_registered(id: &VmId) -> Invalid {
    Invalid::not_found(codes::VM_NOT_FOUND, format!("virtual machine '{id}' is not registered"))
}

/// A VM is deleted only when no policy protects it (`policy`: the id of the one that does).
pub fn check_deletable(id: &VmId, policy: Option<&str>) -> Result<(), Invalid> {
    match policy {
        None => Ok(()),
        Some(policy) => Err(Invalid::conflict(
            codes::VM_IN_USE,
            format!("virtual machine '{id}' is protected by policy '{policy}'; remove it from the policy first"),
        )),
    }
}

/// The audit record of a deleted VM, naming the host agents that went with it.
pub fn deleted(audit: AuditEvent, revoked_agents: &[String]) -> AuditEvent {
    let event = audit.succeeded();
    if revoked_agents.is_empty() {
        return event;
    }
    event.with("revokedAgents", revoked_agents.join(" "))
}

#[cfg(test)]
mod tests;
