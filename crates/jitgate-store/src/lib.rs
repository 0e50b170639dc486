//! The storage boundary of jitgate.
//!
//! The store is one trait per concern — [`PolicyStore`], [`AgentStore`], [`IdentityStore`],
//! [`AuditStore`], [`WebhookStore`], [`ReplicaStore`], [`SessionStore`] — which [`Store`]
//! combines: any type implementing all seven is a `Store`. There is one method per use case. Every method that changes state also appends its
//! audit record, in the same transaction as the change; a refusal decided inside the transaction
//! (for example an initiate outside the policy) appends a `Failed` record and changes nothing
//! else. Backends implement the traits and run the shared [`conformance`] suite.

use std::net::IpAddr;

use async_trait::async_trait;
use time::OffsetDateTime;

use jitgate_core::audit::AuditEvent;
use jitgate_core::enforcement::EnforcementState;
use jitgate_core::initiate::InitiateDraft;
use jitgate_core::policy::ValidatedPolicy;
use jitgate_core::rbac::RoleDefinition;
use jitgate_core::{Invalid, PolicyRef, VmId};

pub use agents::{unique_in_order, AgentJoin, AgentRecord, AgentReport, JoinTokenRecord, JoinTokenSpec};
pub use cloud::Inventoried;
use jitgate_core::cloud::{CloudVm, EnforcementReport};
pub use jitgate_core::records::{AccessRequestRecord, GrantRecord, PolicyRecord};
pub use signal::Signal;
pub use vms::{Vm, VmAccess, VmPolicy, VmSpec};

mod agents;
pub mod chain;
pub mod cloud;
#[cfg(feature = "conformance")]
pub mod conformance;
#[cfg(test)]
mod coverage;
pub mod health;
pub mod observe;
pub mod secrets;
mod signal;
pub mod snapshot;
pub mod stored;
pub mod timing;
mod vms;

/// How many of a policy's most recent requests a read returns in `properties.requests`.
pub const REQUEST_HISTORY_LIMIT: usize = 100;

/// What can go wrong in a store call.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The domain refused the change; its `Failed` audit record has been written.
    #[error("{0}")]
    Rejected(Invalid),
    /// The database failed; nothing was changed. The backend's own error is kept as the source
    /// (a driver error, or a message when there is none).
    #[error("storage failure: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A concurrent change to the same records won (on a database shared by several replicas);
    /// nothing was changed and the call may be repeated. The driver's error is the source.
    #[error("a concurrent change to the same records won; nothing was changed, try again")]
    Conflict(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The database could not be reached (down, failing over, out of connections); nothing was
    /// changed, or a change whose commit went unanswered is found on retry (idempotency keys).
    #[error("storage unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The disk holding the data is full: the change and its audit record could not be written,
    /// so nothing was changed. The same call succeeds once space is freed, without a restart.
    #[error("the data directory is full: {0}")]
    Full(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The disk failed to make committed changes durable (an fsync failed). The change may or
    /// may not survive a crash (a retry with the same idempotency key finds it if it did); the
    /// store refuses every later change until the server is restarted on a sound disk.
    #[error("the data directory's disk failed: {0}")]
    DiskFailed(#[source] Box<dyn std::error::Error + Send + Sync>),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A principal: who a token belongs to. Local principals are found by their name; OIDC
/// identities only by (issuer, subject), and their name is derived from those
/// (`jitgate_core::identity::oidc_name`), never chosen by the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub id: i64,
    /// What role assignments, tokens, requests and the audit log refer to.
    pub name: String,
    pub kind: String,
    /// An OIDC identity's issuer and subject; `None` for a local principal.
    pub oidc: Option<OidcIdentity>,
    /// An OIDC identity's cleaned display claim, for showing only.
    pub display_name: Option<String>,
}

impl Principal {
    /// The name, with the display name after it when there is one: `oidc:… (erin)`.
    pub fn label(&self) -> String {
        match &self.display_name {
            Some(d) => format!("{} ({d})", self.name),
            None => self.name.clone(),
        }
    }
}

/// Where an OIDC principal comes from: the issuer (without a trailing `/`) and its `sub`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcIdentity {
    pub issuer: String,
    pub subject: String,
}

/// A valid OIDC sign-in, as the store needs it to find or create the principal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcSignIn {
    pub identity: OidcIdentity,
    /// The cleaned display claim (`jitgate_core::identity::display_name`), if usable.
    pub display_name: Option<String>,
}

/// What created a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenOrigin {
    /// The server itself: the first start's Owner token, or `--reissue-owner-token`.
    Server,
    /// Another API token (its id): the new one expires no later and is revoked with it.
    Token(i64),
    /// An OIDC ID token: the new one expires no later than the ID token.
    IdToken,
}

impl TokenOrigin {
    /// The name used on the wire and in the database.
    pub fn as_str(&self) -> &'static str {
        match self {
            TokenOrigin::Server => "server",
            TokenOrigin::Token(_) => "token",
            TokenOrigin::IdToken => "idToken",
        }
    }
}

/// A token to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewToken {
    pub principal: String,
    pub token_hash: String,
    pub expires: Option<OffsetDateTime>,
    pub origin: TokenOrigin,
}

/// An API token's record (never the secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: i64,
    pub principal: String,
    pub created: OffsetDateTime,
    pub expires: Option<OffsetDateTime>,
    pub revoked: Option<OffsetDateTime>,
    /// What created it; `None` for tokens made before this was recorded.
    pub origin: Option<TokenOrigin>,
}

/// A valid API token and whose it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenAuth {
    pub principal: Principal,
    pub token_id: i64,
    pub expires: Option<OffsetDateTime>,
}

/// A role assignment: a principal holds a role at a scope (and below it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleAssignment {
    pub id: String,
    pub principal: String,
    pub role: String,
    pub scope: String,
    pub created: OffsetDateTime,
}

/// Filters of an audit query; `resource_id` matches as a case-insensitive prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub from: Option<OffsetDateTime>,
    pub to: Option<OffsetDateTime>,
    pub caller: Option<String>,
    pub resource_id: Option<String>,
    pub operation: Option<String>,
    pub status: Option<jitgate_core::audit::AuditStatus>,
}

/// The result of checking the audit chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditVerification {
    pub valid: bool,
    /// Live records checked.
    pub records: u64,
    /// The first record that does not verify (changed, missing before it, or out of order).
    pub first_invalid: Option<u64>,
    /// Records up to this sequence number were moved to sealed archives.
    pub archived_through: Option<u64>,
}

/// A security policy: whether JIT may be enabled at a subscription or resource group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityPolicy {
    pub scope: String,
    pub jit_enabled: bool,
    pub updated: OffsetDateTime,
}

/// A webhook: where events about requests are sent, signed with `secret` (which the store keeps
/// sealed at rest; see [`secrets`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub id: String,
    /// Every request in this subscription (administrators) …
    pub subscription: Option<String>,
    /// … or this principal's own requests (requesters).
    pub principal: Option<String>,
    pub url: String,
    pub secret: String,
    /// Event names to send; empty: all.
    pub events: Vec<String>,
    pub created: OffsetDateTime,
}

/// One event on its way to one webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Never reused, not even after its webhook is deleted.
    pub id: i64,
    pub webhook_id: String,
    pub url: String,
    pub secret: String,
    pub event: String,
    pub payload: String,
    pub state: String,
    pub attempts: u32,
    pub next_attempt: OffsetDateTime,
    pub last_error: Option<String>,
    pub created: OffsetDateTime,
    pub delivered: Option<OffsetDateTime>,
}

/// The four list scopes of the Azure API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListScope {
    Subscription { subscription: String },
    SubscriptionLocation { subscription: String, location: String },
    ResourceGroup { subscription: String, resource_group: String },
    ResourceGroupLocation { subscription: String, resource_group: String, location: String },
}

/// An initiate as the server hands it to the store: the decision runs inside the transaction,
/// against the policy as it is at that moment.
#[derive(Debug, Clone)]
pub struct InitiateCommand {
    pub policy: PolicyRef,
    pub draft: InitiateDraft,
    /// The requester's own address, used where a port names no source.
    pub caller: Option<IpAddr>,
    pub requestor: String,
    /// `x-ms-client-request-id`: a retried initiate with the same id returns the first answer.
    pub client_request_id: Option<String>,
    pub now: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitiateOutcome {
    pub request: AccessRequestRecord,
    /// True when this answers a retry of an initiate that was already granted.
    pub replayed: bool,
}

/// A stored audit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub seq: u64,
    pub event: AuditEvent,
    pub prev_hash: [u8; 32],
    pub hash: [u8; 32],
}

/// Outcome of a sweep of expired grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExpirySweep {
    pub expired: usize,
    /// Scheduled grants whose window began.
    pub activated: usize,
    /// Live grants that end within [`EXPIRING_SOON`] and were announced.
    pub warned: usize,
}

/// How long before its end a grant is announced as expiring soon.
pub const EXPIRING_SOON: time::Duration = time::Duration::minutes(5);

/// The whole store: every concern's trait. Implemented by any type that implements them all;
/// callers hold an `Arc<dyn Store>` and import the sub-traits whose methods they call
/// (`use jitgate_store::prelude::*`).
pub trait Store:
    PolicyStore + AgentStore + IdentityStore + AuditStore + WebhookStore + ReplicaStore + SessionStore
{
}

impl<T: PolicyStore + AgentStore + IdentityStore + AuditStore + WebhookStore + ReplicaStore + SessionStore> Store
    for T
{
}

/// The store traits, for a glob import where their methods are called.
pub mod prelude {
    pub use crate::{
        AgentStore, AuditStore, IdentityStore, PolicyStore, ReplicaStore, SessionStore, Store, WebhookStore,
    };
}

/// Policies, access requests and their grants: the decisions of `jitgate_core::initiate` and
/// `jitgate_core::lifecycle`, taken inside the transaction that records them.
#[async_trait]
pub trait PolicyStore: Send + Sync + 'static {
    /// Creates or replaces a policy, resolving its VMs (existence, OS defaults) in the same
    /// transaction. The request history of an existing policy is kept. A gateway's mapped ports
    /// are one namespace across all policies (`MappedPortInUse` names the holder).
    async fn put_policy(&self, policy: ValidatedPolicy, audit: AuditEvent) -> StoreResult<PolicyRecord>;
    async fn get_policy(&self, policy: &PolicyRef) -> StoreResult<Option<PolicyRecord>>;
    /// One page of a scope, ordered by policy key, starting after `after` (a key).
    async fn list_policies(
        &self,
        scope: &ListScope,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<PolicyRecord>>;
    /// Deletes a policy and revokes its live grants. False when there was no such policy.
    async fn delete_policy(&self, policy: &PolicyRef, audit: AuditEvent) -> StoreResult<bool>;
    /// Decides an access request against the current policy and records its grants; a newer
    /// grant for the same VM, port and source revokes the older (`NewerRequestInitiated`).
    async fn initiate(&self, cmd: InitiateCommand, audit: AuditEvent) -> StoreResult<InitiateOutcome>;
    /// Marks every live grant whose end time is at or before `now` as `Revoked`/`Expired`.
    async fn expire_due(&self, now: OffsetDateTime) -> StoreResult<ExpirySweep>;
    /// The earliest end time of a live grant.
    async fn next_expiry(&self) -> StoreResult<Option<OffsetDateTime>>;
    /// How many grants are open at `now` (`Initiated`, ending after `now`), for the live-grants
    /// gauge.
    async fn live_grants(&self, now: OffsetDateTime) -> StoreResult<u64>;
    /// Ends a request's live grants before their end time (`Revoked`/`UserRequested`).
    async fn revoke_request(&self, id: i64, revoked_by: &str, audit: AuditEvent) -> StoreResult<AccessRequestRecord>;
    /// Approves (the window starts now) or denies a request's pending grants, or else its pending
    /// extension. The requester can never decide their own request, nor whoever asked for an
    /// extension that extension (`SelfApprovalNotAllowed`).
    async fn decide_request(
        &self,
        id: i64,
        approve: bool,
        decider: &str,
        reason: Option<String>,
        now: OffsetDateTime,
        audit: AuditEvent,
    ) -> StoreResult<AccessRequestRecord>;
    /// Moves the end of a request's live grants to `new_end` (later than now, within each port's
    /// maximum counted from now). When a port needs approval, nothing moves yet: the extension is
    /// kept as `pending_extension` until `decide_request` approves or denies it.
    async fn extend_request(
        &self,
        id: i64,
        new_end: OffsetDateTime,
        now: OffsetDateTime,
        audit: AuditEvent,
    ) -> StoreResult<AccessRequestRecord>;
    /// A request by id with its policy's id.
    async fn get_request(&self, id: i64) -> StoreResult<Option<(String, AccessRequestRecord)>>;
    /// Requests (with their policy's id) that still hold a live, pending or scheduled grant,
    /// newest first; only `requestor`'s when given.
    async fn open_requests(
        &self,
        requestor: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<(String, AccessRequestRecord)>>;
}

/// VMs and what is known about them (access facts, the policy protecting one, security policies),
/// join tokens, agents and the enforcement state each one is given.
#[async_trait]
pub trait AgentStore: Send + Sync + 'static {
    /// Registers or replaces a VM. Returns the VM and whether it was new. A gateway is looked up
    /// by name in the VM's own subscription; its mapped ports must stay unique (`MappedPortInUse`);
    /// a VM a cloud connector enforces is not attached to one (`VirtualMachineEnforcedElsewhere`).
    async fn put_vm(&self, vm: VmSpec, audit: AuditEvent) -> StoreResult<(Vm, bool)>;
    async fn list_vms(&self) -> StoreResult<Vec<Vm>>;
    async fn get_vm(&self, id: &VmId) -> StoreResult<Option<Vm>>;
    /// Removes a VM; refused (`VirtualMachineInUse`) while a policy names it. Its host agent is
    /// revoked with it: a VM registered again under the name never gets the old credential back.
    async fn delete_vm(&self, id: &VmId, audit: AuditEvent) -> StoreResult<Vm>;
    /// How often and by whom a VM was opened since `since`.
    async fn vm_access(&self, vm: &VmId, since: OffsetDateTime) -> StoreResult<VmAccess>;
    /// The policy that protects a VM, if one does.
    async fn policy_of_vm(&self, vm: &VmId) -> StoreResult<Option<jitgate_core::Policy>>;
    /// [`AgentStore::vm_access`] of many VMs in one read, by VM key; every VM asked for is in it.
    async fn vm_access_many(
        &self,
        vms: &[VmId],
        since: OffsetDateTime,
    ) -> StoreResult<std::collections::HashMap<String, VmAccess>>;
    /// The policy naming each of these VMs with the VM's own entry, in one read, by VM key; a VM
    /// no policy names is absent.
    async fn policies_of_vms(&self, vms: &[VmId]) -> StoreResult<std::collections::HashMap<String, VmPolicy>>;
    /// The keys (lower-cased ids) of every VM a policy names, in one read: what the portal's
    /// inventory needs to place thousands of VMs without a query per VM.
    async fn configured_vm_keys(&self) -> StoreResult<std::collections::HashSet<String>>;
    async fn put_security_policy(
        &self,
        scope: &str,
        jit_enabled: bool,
        audit: AuditEvent,
    ) -> StoreResult<SecurityPolicy>;
    async fn list_security_policies(&self) -> StoreResult<Vec<SecurityPolicy>>;
    /// The revision of enforcement-relevant state; bumped by every change an agent must see.
    async fn revision(&self) -> StoreResult<u64>;
    /// Stores a one-time join token (by its hash).
    async fn create_join_token(&self, spec: JoinTokenSpec, token_hash: &str, audit: AuditEvent) -> StoreResult<()>;
    /// Join tokens (never their secrets): scope, expiry, creator, and when used.
    async fn list_join_tokens(&self) -> StoreResult<Vec<JoinTokenRecord>>;
    /// Consumes a join token and creates the agent; in host mode also registers its VM. A host
    /// join creates a new VM, or binds to the VM its token was made for (`JoinTokenSpec::vm`,
    /// replacing that VM's earlier agent: audited with the old and new agent and address);
    /// joining as any other registered VM is refused (`VirtualMachineExists`), as is joining as
    /// a VM behind a gateway (`VirtualMachineBehindGateway`). A gateway's name is unique within
    /// its subscription (`GatewayExists`).
    async fn join_agent(&self, join: AgentJoin, audit: AuditEvent) -> StoreResult<AgentRecord>;
    async fn agent_by_credential(&self, credential_hash: &str) -> StoreResult<Option<AgentRecord>>;
    async fn list_agents(&self) -> StoreResult<Vec<AgentRecord>>;
    async fn get_agent(&self, id: &str) -> StoreResult<Option<AgentRecord>>;
    /// The agents of `ids` that exist, in the order asked, each once (one read for any number).
    async fn get_agents(&self, ids: &[String]) -> StoreResult<Vec<AgentRecord>>;
    /// The gateway agent of this name in this subscription (names compare case-insensitively).
    async fn gateway_agent(&self, subscription: &str, name: &str) -> StoreResult<Option<AgentRecord>>;
    /// Revokes and removes an agent: its credential stops working at once and the VMs it
    /// enforced have no enforcement point until another agent joins for them.
    /// `AgentNotFound` when there is no such agent.
    async fn delete_agent(&self, id: &str, audit: AuditEvent) -> StoreResult<AgentRecord>;
    /// Replaces an agent's credential, provided it still is `old_hash` (`AgentNotFound` if not).
    async fn rotate_agent_credential(
        &self,
        id: &str,
        old_hash: &str,
        new_hash: &str,
        audit: AuditEvent,
    ) -> StoreResult<AgentRecord>;
    /// What one agent must enforce now (`AgentNotFound` once it was removed).
    async fn agent_state(&self, agent_id: &str, now: OffsetDateTime) -> StoreResult<EnforcementState>;
    /// Notes that a state answer at `revision` was delivered to the agent. A store may return
    /// before the note is written, once it is ordered before every change handed to it later
    /// (the agent's report of that revision among them): reads may not see it yet.
    async fn agent_delivered(&self, agent_id: &str, revision: u64) -> StoreResult<()>;
    /// Records an agent's report (last seen, revision applied, nftables health). A revision never
    /// delivered to that agent is refused (`RevisionNotDelivered`, audited).
    async fn agent_report(&self, agent_id: &str, report: AgentReport) -> StoreResult<()>;
    /// The agents that enforce the given VMs (host agents on them, gateways in front of them).
    async fn agents_for_vms(&self, vm_ids: &[String]) -> StoreResult<Vec<AgentRecord>>;
    /// A cloud connector's whole inventory (see [`cloud`]): registers or updates each VM as
    /// enforced by it, and marks its earlier VMs missing now Unsupported; refused whole
    /// (`VirtualMachineEnforcedElsewhere`) when another enforcement point holds one.
    async fn put_cloud_inventory(
        &self,
        agent_id: &str,
        vms: Vec<CloudVm>,
        audit: AuditEvent,
    ) -> StoreResult<Inventoried>;
    /// A cloud connector's enforcement report: one audit record per removal, its failing VMs
    /// replaced (true: they changed); refused whole (400) when it names a VM not the connector's.
    async fn report_cloud_enforcement(
        &self,
        agent_id: &str,
        report: EnforcementReport,
        audit: AuditEvent,
    ) -> StoreResult<bool>;
}

/// Principals (local and OIDC), API tokens, custom role definitions and role assignments.
#[async_trait]
pub trait IdentityStore: Send + Sync + 'static {
    /// On an empty store: creates the owner principal with one token (stored as its hash,
    /// expiring at `expires`) and returns true. On a store that has principals: does nothing and
    /// returns false.
    async fn bootstrap(
        &self,
        owner: &str,
        token_hash: &str,
        expires: Option<OffsetDateTime>,
        audit: AuditEvent,
    ) -> StoreResult<bool>;
    /// The token with this hash and its principal, if the token is valid at `now` (not revoked,
    /// not expired).
    async fn authenticate(&self, token_hash: &str, now: OffsetDateTime) -> StoreResult<Option<TokenAuth>>;
    /// Creates a local principal (`User` or `ServicePrincipal`). The name must pass
    /// `jitgate_core::identity::validate_local_name` (else `InvalidPrincipal`, 400);
    /// `PrincipalExists` when it is taken.
    async fn create_principal(&self, name: &str, kind: &str, audit: AuditEvent) -> StoreResult<Principal>;
    /// The principal of an OIDC identity, found by (issuer, subject) only, created (and audited)
    /// on its first sign-in with the derived name and no role assignments. A changed display
    /// name is stored (and audited). Refused (`PrincipalExists`) if the derived name is held by
    /// another principal: an identity never becomes someone else.
    async fn oidc_principal(&self, sign_in: OidcSignIn, audit: AuditEvent) -> StoreResult<Principal>;
    async fn list_principals(&self) -> StoreResult<Vec<Principal>>;
    async fn get_principal(&self, name: &str) -> StoreResult<Option<Principal>>;
    /// Deletes a principal with its tokens (and the tokens they created), role assignments and
    /// own webhooks, and revokes its live, pending and scheduled grants; its name is freed.
    async fn delete_principal(&self, name: &str, audit: AuditEvent) -> StoreResult<Principal>;
    /// Stores a new token (its hash) for a principal. A token made by another token must end no
    /// later than it, and that token must still be valid at `audit.time` (else `ParentTokenInvalid`).
    async fn create_token(&self, token: NewToken, audit: AuditEvent) -> StoreResult<TokenRecord>;
    async fn list_tokens(&self, principal: &str) -> StoreResult<Vec<TokenRecord>>;
    async fn get_token(&self, id: i64) -> StoreResult<Option<TokenRecord>>;
    /// Revokes a token and, in the same transaction, every token created by it or by those.
    async fn revoke_token(&self, id: i64, audit: AuditEvent) -> StoreResult<TokenRecord>;
    /// Creates or replaces a custom role. Returns it and whether it was new.
    async fn put_role_definition(&self, role: RoleDefinition, audit: AuditEvent)
        -> StoreResult<(RoleDefinition, bool)>;
    async fn list_role_definitions(&self) -> StoreResult<Vec<RoleDefinition>>;
    async fn get_role_definition(&self, name: &str) -> StoreResult<Option<RoleDefinition>>;
    /// Deletes a custom role; refused (`RoleDefinitionInUse`) while assigned.
    async fn delete_role_definition(&self, name: &str, audit: AuditEvent) -> StoreResult<RoleDefinition>;
    async fn create_role_assignment(
        &self,
        principal: &str,
        role: &str,
        scope: &str,
        audit: AuditEvent,
    ) -> StoreResult<RoleAssignment>;
    async fn list_role_assignments(&self, principal: Option<&str>) -> StoreResult<Vec<RoleAssignment>>;
    async fn get_role_assignment(&self, id: &str) -> StoreResult<Option<RoleAssignment>>;
    async fn delete_role_assignment(&self, id: &str, audit: AuditEvent) -> StoreResult<RoleAssignment>;
}

/// The audit log: standalone records, reads and queries, verification, sealed archives; and
/// the readiness round trip and the commit observer.
#[async_trait]
pub trait AuditStore: Send + Sync + 'static {
    /// Appends a standalone audit record (a refusal decided before the store was asked).
    async fn record(&self, event: AuditEvent) -> StoreResult<()>;
    /// Appends many standalone audit records in one transaction (imports, benchmarks).
    async fn record_many(&self, events: Vec<AuditEvent>) -> StoreResult<()>;
    /// Audit records with `seq > after`, oldest first.
    async fn audit_records(&self, after: u64, limit: usize) -> StoreResult<Vec<AuditRecord>>;
    /// Audit records matching `filter` with `seq > after`, oldest first.
    async fn query_audit(&self, filter: &AuditFilter, after: u64, limit: usize) -> StoreResult<Vec<AuditRecord>>;
    /// Checks the whole live chain (from the last sealed archive on).
    async fn verify_audit(&self) -> StoreResult<AuditVerification>;
    /// The oldest records written before `before` (for archiving), at most `limit`.
    async fn audit_before(&self, before: OffsetDateTime, limit: usize) -> StoreResult<Vec<AuditRecord>>;
    /// After the records up to `through_seq` were written to the sealed archive `file`: removes them
    /// from the live log, remembers where the chain continues, and records the archiving.
    async fn seal_archive(
        &self,
        through_seq: u64,
        last_hash: [u8; 32],
        file: &str,
        audit: AuditEvent,
    ) -> StoreResult<usize>;
    /// A cheap round trip, for readiness.
    async fn ping(&self) -> StoreResult<()>;
    /// Tells `observer` of every transaction the store commits from now on (for metrics: the
    /// commit latency, the group-commit batch size, the audit records written). The first
    /// observer installed stays.
    fn observe_commits(&self, observer: std::sync::Arc<dyn observe::CommitObserver>);
}

/// Webhooks and the delivery outbox (deliveries are queued by the changes that cause them).
#[async_trait]
pub trait WebhookStore: Send + Sync + 'static {
    async fn create_webhook(&self, hook: Webhook, audit: AuditEvent) -> StoreResult<Webhook>;
    async fn list_webhooks(&self) -> StoreResult<Vec<Webhook>>;
    async fn get_webhook(&self, id: &str) -> StoreResult<Option<Webhook>>;
    async fn delete_webhook(&self, id: &str, audit: AuditEvent) -> StoreResult<Webhook>;
    /// Claims at most `limit` deliveries due at `now` (pending, next attempt reached), oldest
    /// first: each is not due again before `lease_until`, so no later pass sends it again while
    /// this attempt is under way; [`WebhookStore::delivery_attempted`] then sets its next attempt. A
    /// worker that dies mid-attempt leaves the lease to run out, and the delivery is tried again.
    async fn claim_deliveries(
        &self,
        now: OffsetDateTime,
        lease_until: OffsetDateTime,
        limit: usize,
    ) -> StoreResult<Vec<Delivery>>;
    /// Records an attempt: delivered, or failed with the next attempt (`None`: give up).
    async fn delivery_attempted(
        &self,
        id: i64,
        ok: bool,
        error: Option<String>,
        next: Option<OffsetDateTime>,
        now: OffsetDateTime,
    ) -> StoreResult<()>;
    async fn list_deliveries(&self, webhook_id: &str, limit: usize) -> StoreResult<Vec<Delivery>>;
    /// The earliest pending delivery.
    async fn next_delivery(&self) -> StoreResult<Option<OffsetDateTime>>;
    /// How many deliveries are waiting to be sent or retried (the outbox's depth).
    async fn pending_deliveries(&self) -> StoreResult<u64>;
}

/// Several servers on one store: signals from the others, and leases, so that a background
/// task (the expiry sweep, audit retention) runs on one server at a time and moves to another
/// when its holder stops renewing.
#[async_trait]
pub trait ReplicaStore: Send + Sync + 'static {
    /// Sends to `to`, until it closes, what the changes other servers commit mean here (see
    /// [`Signal`]). Returns at once for a store no other server writes. Never fails: a lost
    /// connection is made again, and [`Signal::Resync`] says so.
    async fn listen(&self, to: tokio::sync::mpsc::Sender<Signal>);
    /// Takes or renews the lease `name` for `holder` until `until`: true when `holder` holds it
    /// now (it was free, had run out by `now`, or was already its own).
    async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        now: OffsetDateTime,
        until: OffsetDateTime,
    ) -> StoreResult<bool>;
    /// Gives the lease up, if `holder` holds it, so another server takes it at once.
    async fn release_lease(&self, name: &str, holder: &str) -> StoreResult<()>;
}

/// Short-lived state the portal keeps between a browser's requests — signed-in sessions and SSO
/// sign-ins in flight — kept in the store, so that any replica serves any request. Entries are
/// found by `kind` and `key` (the server passes a hash of the browser's secret, never the secret),
/// and are gone once `expires` has passed.
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Keeps `value` under (`kind`, `key`) from `created` until `expires`, replacing what was
    /// there. Entries of `kind` that have expired by `created` go; past `limit` live entries of
    /// `kind`, the oldest go.
    async fn put_ephemeral(
        &self,
        kind: &str,
        key: &str,
        value: &str,
        created: OffsetDateTime,
        expires: OffsetDateTime,
        limit: usize,
    ) -> StoreResult<()>;
    /// The value under (`kind`, `key`), unless it has expired by `now`.
    async fn get_ephemeral(&self, kind: &str, key: &str, now: OffsetDateTime) -> StoreResult<Option<String>>;
    /// Removes the entry and returns its value, unless it had expired by `now` (it goes anyway).
    async fn take_ephemeral(&self, kind: &str, key: &str, now: OffsetDateTime) -> StoreResult<Option<String>>;
}
