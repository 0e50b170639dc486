//! The one error value of the domain: what is wrong, where (a JSON-path-like target such as
//! `properties.virtualMachines[0].ports[1].number`) and which Azure error code names it.

use std::fmt;

/// A rejected input or a refused decision. Carries everything an API error body needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// Azure-style error code, e.g. `InvalidInitiateInput`.
    pub code: &'static str,
    /// Human-readable explanation naming the offending value.
    pub message: String,
    /// Where in the input the problem is, when it is in the input.
    pub target: Option<String>,
    /// What kind of failure this is, so the HTTP layer can pick the status.
    pub kind: InvalidKind,
}

/// How a domain refusal maps onto the protocol (the HTTP layer picks the status from this).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidKind {
    /// The input is malformed or violates a rule (400).
    BadInput,
    /// Something the input refers to does not exist (404 when it is the addressed resource).
    NotFound,
    /// The request conflicts with current state (409).
    Conflict,
    /// The caller may not do this, whatever its roles (403).
    Forbidden,
}

impl Invalid {
    pub fn input(code: &'static str, target: impl Into<Option<String>>, message: impl Into<String>) -> Self {
        Invalid { code, message: message.into(), target: target.into(), kind: InvalidKind::BadInput }
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Invalid { code, message: message.into(), target: None, kind: InvalidKind::NotFound }
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Invalid { code, message: message.into(), target: None, kind: InvalidKind::Conflict }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            Some(t) => write!(f, "{} ({}): {}", self.code, t, self.message),
            None => write!(f, "{}: {}", self.code, self.message),
        }
    }
}

impl std::error::Error for Invalid {}

/// Error codes used across the domain, in one place so the API stays consistent.
pub mod codes {
    pub const INVALID_POLICY: &str = "InvalidJitNetworkAccessPolicy";
    pub const INVALID_INITIATE: &str = "InvalidInitiateInput";
    pub const INVALID_VM: &str = "InvalidVirtualMachine";
    pub const VM_NOT_REGISTERED: &str = "VirtualMachineNotRegistered";
    pub const POLICY_NOT_FOUND: &str = "PolicyNotFound";
    pub const VM_NOT_FOUND: &str = "VirtualMachineNotFound";
    pub const VM_IN_USE: &str = "VirtualMachineInUse";
    pub const NOT_SUBSET: &str = "RequestNotSubsetOfPolicy";
    pub const REQUEST_NOT_FOUND: &str = "RequestNotFound";
    pub const REQUEST_NOT_ACTIVE: &str = "RequestNotActive";
    pub const REQUEST_NOT_PENDING: &str = "RequestNotPending";
    pub const SELF_APPROVAL: &str = "SelfApprovalNotAllowed";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_reads_as_code_target_and_message() {
        let with_target = Invalid::input(codes::INVALID_INITIATE, Some("virtualMachines[0].id".to_string()), "unknown");
        assert_eq!(with_target.to_string(), "InvalidInitiateInput (virtualMachines[0].id): unknown");
        let without = Invalid::not_found(codes::POLICY_NOT_FOUND, "policy 'p' does not exist");
        assert_eq!(without.to_string(), "PolicyNotFound: policy 'p' does not exist");
    }
}
