//! jitgate's AWS cloud connector: an enforcement point for EC2 instances with nothing installed
//! on them — the security group is the firewall.
//!
//! It joins the control plane once (mode `cloud`) and keeps its credential in its state
//! directory; it lists the instances of its region and registers them as VMs ([`discovery`]);
//! it long-polls the desired state and, per instance, [`plan`]s the EC2 actions that make the
//! security groups match it and carries them out ([`apply`]): a jitgate-owned group per protected
//! instance holds one rule per grant, described with its end (`jitgate req=42
//! exp=2026-12-01T15:04:05Z`); the rules of the instance's own groups that let a protected port
//! through are taken away and remembered in the jitgate group's tags ([`memory`]), so that they
//! are put back exactly when the instance is no longer protected.
//!
//! EC2 has no timeouts on rules, so the [`sweep`] removes every rule whose end has passed, every
//! few seconds and once at start before anything else, with nothing but EC2 and the clock; any
//! connector sweeps every jitgate group it sees. Every removal is reported to the server
//! ([`reconcile::Outbox`]), and each VM whose rules could not be changed is reported failing.
//!
//! Everything is written against the [`jitgate_aws::Ec2`] trait and the [`server::Server`]
//! trait, and tested on [`fake::FakeEc2`] and a fake server.

pub mod apply;
pub mod desired;
pub mod discovery;
pub mod fake;
pub mod memory;
pub mod plan;
pub mod reconcile;
pub mod rules;
pub mod run;
pub mod server;
pub mod sweep;
#[cfg(test)]
mod tests;

pub use run::{run, run_with, Clock, ConnectorConfig, SystemClock};
pub use server::{ConnectorError, HttpServer, JoinSettings, Server};
