//! The pure domain of jitgate: resource identities, policies, access requests, grants, the
//! validation rules and the decisions that turn a request into grants, and the audit chain.
//!
//! Nothing in this crate does I/O, reads a clock or is async: the current time is always a
//! parameter (`now`). A domain "no" is a value ([`Invalid`]), never a panic.

pub mod audit;
pub mod certinfo;
pub mod cloud;
pub mod destination;
pub mod duration;
pub mod enforcement;
pub mod identity;
pub mod ids;
pub mod initiate;
pub mod invalid;
pub mod inventory;
pub mod join;
pub mod lifecycle;
pub mod outbox;
pub mod policy;
pub mod policy_put;
pub mod prefix;
pub mod rbac;
pub mod records;
pub mod timefmt;
pub mod vm_put;

pub use duration::AccessDuration;
pub use ids::{PolicyRef, VmId};
pub use invalid::Invalid;
pub use policy::{OsType, Policy, PolicyVm, PortRule, Protocol, SourceSpec};
pub use prefix::SourcePrefix;
pub use timefmt::rfc3339;
