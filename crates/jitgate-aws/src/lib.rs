//! The EC2 calls jitgate's cloud connector makes, as the [`Ec2`] trait over plain data
//! ([`model`]). The connector is written against the trait, so its logic is tested on a fake
//! and against a real EC2 endpoint through the same calls.
//!
//! [`Ec2Client`] is that endpoint's client: the EC2 Query API (`query`: each call's form
//! parameters) signed with SigV4 (`sign`, the `aws-sigv4` crate) with credentials from the
//! environment, the shared files or the instance role (`creds`, `provider`), answers read with
//! quick-xml (`xml`, `parse`), throttling retried with backoff and jitter (`retry`).
//! `testing::Moto` (feature `testing`) runs moto's EC2 server for tests.

use std::future::Future;

mod client;
pub mod creds;
pub mod model;
mod parse;
pub mod provider;
pub mod query;
pub mod retry;
pub mod sign;
#[cfg(feature = "testing")]
pub mod testing;
mod xml;

pub use client::{Config, Ec2Client};
pub use creds::Credentials;
pub use model::{Filter, GroupRef, Instance, IpPermission, IpRange, SecurityGroup, Tag};
pub use retry::Backoff;

/// Why an EC2 call failed.
#[derive(Debug, thiserror::Error)]
pub enum Ec2Error {
    /// EC2 answered with an error (`<Errors><Error><Code>…`): the code as EC2 spells it
    /// (`InvalidGroup.NotFound`, `RulesPerSecurityGroupLimitExceeded`, `RequestLimitExceeded` once
    /// the retries are spent …), its message, the HTTP status and the request id.
    #[error("EC2 {code} ({status}): {message}")]
    Api { status: u16, code: String, message: String, request_id: Option<String> },
    /// No credentials were found, or they could not be read.
    #[error("AWS credentials: {0}")]
    Credentials(String),
    /// The endpoint could not be reached or did not answer in time.
    #[error("EC2 endpoint unreachable: {0}")]
    Transport(String),
    /// The answer came but could not be read.
    #[error("unreadable EC2 answer: {0}")]
    Decode(String),
}

impl Ec2Error {
    /// The EC2 error code, for an [`Ec2Error::Api`].
    pub fn code(&self) -> Option<&str> {
        match self {
            Ec2Error::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// A just-created resource not yet visible (EC2 is eventually consistent): worth a retry.
    pub fn is_not_found(&self) -> bool {
        self.code().is_some_and(|c| c.ends_with(".NotFound"))
    }
}

/// The EC2 calls the connector makes. Each call is one API action (pages followed inside);
/// throttling (`RequestLimitExceeded`) and transient failures are retried inside with backoff
/// and jitter, so an error here is final for this attempt.
pub trait Ec2: Send + Sync {
    /// `DescribeInstances` with these filters, every page.
    fn describe_instances(&self, filters: &[Filter]) -> impl Future<Output = Result<Vec<Instance>, Ec2Error>> + Send;

    /// `DescribeSecurityGroups` with these filters, every page.
    fn describe_security_groups(
        &self,
        filters: &[Filter],
    ) -> impl Future<Output = Result<Vec<SecurityGroup>, Ec2Error>> + Send;

    /// `CreateSecurityGroup` in `vpc_id`, tagged at creation; the new group's id.
    fn create_security_group(
        &self,
        name: &str,
        description: &str,
        vpc_id: &str,
        tags: &[Tag],
    ) -> impl Future<Output = Result<String, Ec2Error>> + Send;

    /// `DeleteSecurityGroup`.
    fn delete_security_group(&self, group_id: &str) -> impl Future<Output = Result<(), Ec2Error>> + Send;

    /// `AuthorizeSecurityGroupIngress`: adds these rules (descriptions included). A rule that
    /// exists already (`InvalidPermission.Duplicate`) is not an error.
    fn authorize_ingress(
        &self,
        group_id: &str,
        permissions: &[IpPermission],
    ) -> impl Future<Output = Result<(), Ec2Error>> + Send;

    /// `RevokeSecurityGroupIngress`: removes these rules (matched by protocol, ports and
    /// range; descriptions ignored). A rule that is gone already is not an error.
    fn revoke_ingress(
        &self,
        group_id: &str,
        permissions: &[IpPermission],
    ) -> impl Future<Output = Result<(), Ec2Error>> + Send;

    /// `ModifyInstanceAttribute` with `GroupId.N`: the instance's security groups become exactly
    /// `group_ids`.
    fn set_instance_groups(
        &self,
        instance_id: &str,
        group_ids: &[String],
    ) -> impl Future<Output = Result<(), Ec2Error>> + Send;

    /// `CreateTags` (adds or overwrites) on these resources.
    fn create_tags(&self, resource_ids: &[String], tags: &[Tag]) -> impl Future<Output = Result<(), Ec2Error>> + Send;

    /// `DeleteTags`: removes these keys from these resources.
    fn delete_tags(
        &self,
        resource_ids: &[String],
        keys: &[String],
    ) -> impl Future<Output = Result<(), Ec2Error>> + Send;
}
