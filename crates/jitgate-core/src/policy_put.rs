//! What a policy PUT may store, decided on the facts a store loads inside its transaction: the
//! registered VMs (their OS and gateway), the scopes where a security policy switched JIT off,
//! the policy already protecting each VM, and the gateway ports other policies hold.
//!
//! A store loads those facts, asks these functions, and writes the policy (or the refusal)
//! with its audit record; it decides nothing itself.

use std::collections::HashMap;

use crate::audit::AuditEvent;
use crate::enforcement::MappedClaim;
use crate::invalid::Invalid;
use crate::policy::{resolve, OsType, Policy, ValidatedPolicy};
use crate::rbac::scope_covers;

/// The code of a VM under a scope where a security policy switched JIT off.
pub const JIT_DISABLED: &str = "JitDisabledBySecurityPolicy";
/// The code of a VM already protected by another policy.
pub const VM_IN_ANOTHER_POLICY: &str = "VirtualMachineInAnotherPolicy";

/// The registered VMs a policy names, as the store found them (keyed by lower-cased VM id).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KnownVms {
    os: HashMap<String, OsType>,
    gateway: HashMap<String, String>,
    cloud: std::collections::HashSet<String>,
}

impl KnownVms {
    /// Records the registered VM `key` (a lower-cased id), its OS and the gateway it sits behind.
    pub fn add(&mut self, key: String, os: OsType, gateway: Option<String>) {
        if let Some(gw) = gateway {
            self.gateway.insert(key.clone(), gw);
        }
        self.os.insert(key, os);
    }

    /// Records that a cloud connector enforces the registered VM `key`.
    pub fn add_cloud(&mut self, key: String) {
        self.cloud.insert(key);
    }

    /// Refuses the first mapped port on a VM a cloud connector enforces (a security group
    /// forwards nothing).
    pub fn check_cloud_ports(&self, policy: &Policy) -> Result<(), Invalid> {
        for (i, vm) in policy.vms.iter().enumerate() {
            if !self.cloud.contains(&vm.id.key()) {
                continue;
            }
            if let Some((j, p)) = vm.ports.iter().enumerate().find(|(_, p)| p.mapped_port.is_some()) {
                let target = format!("properties.virtualMachines[{i}].ports[{j}].mappedPort");
                return Err(crate::cloud::no_mapped_port(&vm.id, p.number, target));
            }
        }
        Ok(())
    }

    /// Completes the policy against these VMs (every VM must be registered; a VM with no ports
    /// gets its OS's default rule): [`resolve`].
    pub fn resolve(&self, policy: ValidatedPolicy) -> Result<Policy, Invalid> {
        resolve(policy, |id| self.os.get(&id.key()).copied())
    }

    /// The gateway VM `key` sits behind, if any.
    pub fn gateway(&self, key: &str) -> Option<&str> {
        self.gateway.get(key).map(String::as_str)
    }

    /// The gateways the policy's VMs sit behind (each once, in the casing first seen), each with
    /// the mapped ports the policy claims on it; every claim names its place in the input.
    pub fn gateway_claims(&self, policy: &Policy) -> Vec<(String, Vec<MappedClaim>)> {
        let mut gateways: Vec<String> = Vec::new();
        for vm in &policy.vms {
            if let Some(gw) = self.gateway(&vm.id.key()) {
                if !gateways.iter().any(|g| g.eq_ignore_ascii_case(gw)) {
                    gateways.push(gw.to_owned());
                }
            }
        }
        gateways
            .into_iter()
            .map(|gw| {
                let mut claims = Vec::new();
                for (i, vm) in policy.vms.iter().enumerate() {
                    if !self.gateway(&vm.id.key()).is_some_and(|g| g.eq_ignore_ascii_case(&gw)) {
                        continue;
                    }
                    for (j, p) in vm.ports.iter().enumerate() {
                        if let Some(m) = p.mapped_port {
                            claims.push(MappedClaim {
                                policy: policy.reference.id(),
                                vm: vm.id.name().to_owned(),
                                number: p.number,
                                protocol: p.protocol,
                                mapped_port: m,
                                target: Some(format!("properties.virtualMachines[{i}].ports[{j}].mappedPort")),
                            });
                        }
                    }
                }
                (gw, claims)
            })
            .collect()
    }
}

/// Refuses the first VM of `policy` under one of the `disabled` scopes (where a security policy
/// switched JIT off).
pub fn check_security_policies(policy: &Policy, disabled: &[String]) -> Result<(), Invalid> {
    for (i, vm) in policy.vms.iter().enumerate() {
        if let Some(scope) = disabled.iter().find(|s| scope_covers(s, vm.id.as_str())) {
            let mut invalid = Invalid::conflict(
                JIT_DISABLED,
                format!(
                    "JIT is disabled by a security policy on '{scope}'; virtual machine '{}' cannot be enabled",
                    vm.id
                ),
            );
            invalid.target = Some(format!("properties.virtualMachines[{i}].id"));
            return Err(invalid);
        }
    }
    Ok(())
}

/// A VM is protected by one policy at a time: `held[i]` is the other policy (its key) already
/// protecting the policy's VM `i`, if any; refuses the first such VM.
pub fn check_one_policy_per_vm(policy: &Policy, held: &[Option<String>]) -> Result<(), Invalid> {
    for (i, (vm, other)) in policy.vms.iter().zip(held).enumerate() {
        if let Some(other) = other {
            let mut invalid = Invalid::conflict(
                VM_IN_ANOTHER_POLICY,
                format!("virtual machine '{}' is already protected by policy '{other}'", vm.id),
            );
            invalid.target = Some(format!("properties.virtualMachines[{i}].id"));
            return Err(invalid);
        }
    }
    Ok(())
}

/// The gateway ports `policy` claims for its VM `key` (what moves with the VM onto a gateway).
pub fn claims_of_vm(policy: &Policy, key: &str) -> Vec<MappedClaim> {
    let policy_id = policy.reference.id();
    policy
        .vms
        .iter()
        .filter(|v| v.id.key() == key)
        .flat_map(|v| {
            let policy_id = policy_id.clone();
            v.ports.iter().filter_map(move |p| {
                p.mapped_port.map(|m| MappedClaim {
                    policy: policy_id.clone(),
                    vm: v.id.name().to_owned(),
                    number: p.number,
                    protocol: p.protocol,
                    mapped_port: m,
                    target: Some("gateway".into()),
                })
            })
        })
        .collect()
}

/// The ports of a policy as the audit record lists them: `vm:number/protocol`, comma-separated.
pub fn port_summary(policy: &Policy) -> String {
    let mut parts = Vec::new();
    for vm in &policy.vms {
        for p in &vm.ports {
            parts.push(format!("{}:{}/{}", vm.id.name(), p.number, p.protocol.as_str()));
        }
    }
    parts.join(",")
}

/// The audit record of a stored policy (`created`: it did not exist before).
pub fn stored(audit: AuditEvent, created: bool, policy: &Policy) -> AuditEvent {
    audit.succeeded().with("created", created.to_string()).with("ports", port_summary(policy))
}

#[cfg(test)]
mod tests;
