//! The jitgate control plane: the Azure-compatible JIT policy API, jitgate's native API, bearer
//! authentication, the expiry sweeper and health endpoints, served by [`run`].
//!
//! Handlers follow one shape: parse the request into a closed enum ([`arm::route`]), check it
//! with the pure domain (jitgate-core), hand the change and its audit record to the store in one
//! call, and map any failure through [`error::ApiError`] to Azure's error body.

pub mod agent_api;
mod agent_cloud;
pub mod api;
pub mod api_audit;
pub mod api_rbac;
pub mod arm;
pub mod auth;
pub mod authz;
mod caller;
pub mod certs;
pub mod conn;
mod drain;
pub mod error;
pub mod failures;
mod layers;
pub mod limits;
pub mod longpoll;
pub mod oidc;
pub mod prom;
pub mod ratelimit;
pub mod replicas;
pub mod retention;
pub mod sweeper;
pub use caller::Caller;
pub(crate) use caller::{ctx_from, ctx_of};
pub mod tls;
pub mod trace;
mod waits;
pub mod web;
pub mod webhooks;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use time::OffsetDateTime;
use tokio::sync::{watch, Notify};

use jitgate_core::audit::{ops, AuditEvent, AuditStatus};
use jitgate_core::identity;
use jitgate_store::{OidcSignIn, Principal, Store, StoreError, TokenOrigin};

use crate::error::{json, ApiError};
use crate::tls::{PeerAddr, ServerListener};
pub(crate) use layers::layers;

/// Where the current time comes from (a fixed or stepped clock in tests).
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> OffsetDateTime;
}

/// The system's UTC clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// Settings of the HTTP layer.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Whether connections are TLS (decides the scheme of `nextLink`).
    pub tls: bool,
    /// Policies per page of a list answer.
    pub list_page_size: usize,
    /// The largest request body accepted.
    pub max_body_bytes: usize,
    /// The externally visible base URL (`https://jit.example.com`), for `nextLink`; when unset,
    /// the request's `Host` is used.
    pub public_url: Option<String>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Audit records older than this move to sealed archives in the directory.
    pub audit_retention: Option<(time::Duration, std::path::PathBuf)>,
    /// Where webhooks may be sent (default: https to public addresses only).
    pub webhooks: jitgate_core::destination::Rules,
    /// The longest life of an API token; `None`: the operator allows tokens that never expire.
    pub max_token_lifetime: Option<time::Duration>,
    /// Rate limits, slow-client timeouts, connection and long-poll caps.
    pub limits: limits::LimitConfig,
    /// How long a background task's lease lasts unrenewed (several replicas on one store).
    pub lease_ttl: std::time::Duration,
    /// Whether answers carry a `Server-Timing` header (see [`jitgate_store::timing`]).
    pub server_timing: bool,
    /// Who may read `GET /metrics` without a token (see [`prom`]).
    pub metrics_allow: Vec<ipnet::IpNet>,
}

impl ServerConfig {
    pub const DEFAULT_PAGE_SIZE: usize = 100;
    pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;
    /// The default of `--max-token-lifetime`.
    pub const DEFAULT_MAX_TOKEN_LIFETIME: time::Duration = time::Duration::days(90);
}

/// The defaults of `jitgate serve`'s flags: TLS, 100 policies a page, 1 MiB bodies, no proxy
/// trusted, no retention, public https webhooks only, tokens of at most 90 days, default limits,
/// metrics readable without a token from loopback.
impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            tls: true,
            list_page_size: Self::DEFAULT_PAGE_SIZE,
            max_body_bytes: Self::DEFAULT_MAX_BODY,
            public_url: None,
            trusted_proxies: vec![],
            audit_retention: None,
            webhooks: Default::default(),
            max_token_lifetime: Some(Self::DEFAULT_MAX_TOKEN_LIFETIME),
            limits: Default::default(),
            lease_ttl: replicas::DEFAULT_LEASE_TTL,
            server_timing: false,
            metrics_allow: prom::default_allow(),
        }
    }
}

/// What authenticated a request, so that what the caller creates can be bounded by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// A jitgate API token: its id, and when it expires (`None`: never).
    Token { id: i64, expires: Option<OffsetDateTime> },
    /// An OIDC ID token, valid until its `exp`.
    IdToken { expires: OffsetDateTime },
}

impl Credential {
    /// When the credential stops being valid (`None`: never).
    pub fn expires(&self) -> Option<OffsetDateTime> {
        match self {
            Credential::Token { expires, .. } => *expires,
            Credential::IdToken { expires } => Some(*expires),
        }
    }

    /// What a token made with this credential records as its origin.
    pub fn origin(&self) -> TokenOrigin {
        match self {
            Credential::Token { id, .. } => TokenOrigin::Token(*id),
            Credential::IdToken { .. } => TokenOrigin::IdToken,
        }
    }
}

/// A signed-in caller: the principal and the credential that proved it.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub principal: Principal,
    pub credential: Credential,
}

/// Shared state of every handler.
#[derive(Clone)]
pub struct App {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub config: Arc<ServerConfig>,
    /// Wakes the expiry sweeper when a grant may have moved the next expiry earlier.
    pub sweeper: Arc<sweeper::Wake>,
    /// Ticks on every change an agent must see; wakes the state long-polls.
    pub changes: Arc<watch::Sender<u64>>,
    /// Wakes whoever waits for agents to apply a revision (`?wait=applied`).
    pub applied: Arc<Notify>,
    /// Resolved role assignments per principal.
    pub authz: Arc<authz::Authz>,
    /// OIDC sign-in, when configured.
    pub oidc: Option<Arc<oidc::Oidc>>,
    /// Wakes the webhook worker when events may have been queued.
    pub deliveries: Arc<Notify>,
    /// Rate limiters and the summaries of failed and rate-limited attempts.
    pub limits: Arc<limits::Limits>,
    /// The state long-polls waiting, per agent.
    pub long_polls: Arc<longpoll::LongPolls>,
    /// The portal's signed-in browsers (kept in the store).
    pub sessions: Arc<web::session::Sessions>,
    /// The portal's inventory snapshot (see [`web::inventory`]).
    pub portal_inventory: Arc<web::inventory::Cache>,
    /// This server's name among the replicas on its store (the holder of its leases).
    pub replica: Arc<str>,
    /// The Prometheus metrics (see [`prom`]).
    pub metrics: Arc<prom::ServerMetrics>,
}

/// How long an agent may stay silent before it counts as stale (two long-polls and a margin).
pub const STALE_AFTER: time::Duration = time::Duration::seconds(90);

/// Why waiting for enforcement ended without success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnforcementWait {
    /// These agents had not applied the revision in time.
    TimedOut(Vec<String>),
    /// This agent applied it but reports nftables unusable.
    Failed { agent: String, error: String },
}

/// Per-request facts every handler needs: the caller's address and the correlation id.
#[derive(Debug, Clone)]
pub struct RequestCtx {
    pub caller_ip: IpAddr,
    pub correlation_id: String,
    pub client_request_id: Option<String>,
}

/// Correlation ids put into request extensions by `layers::correlate`.
#[derive(Debug, Clone)]
struct Correlation {
    correlation_id: String,
    client_request_id: Option<String>,
}

impl App {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, config: ServerConfig) -> Self {
        let metrics = Arc::new(prom::ServerMetrics::new());
        store.observe_commits(metrics.commit_observer());
        App {
            metrics,
            sessions: Arc::new(web::session::Sessions::new(store.clone())),
            store,
            clock,
            limits: Arc::new(limits::Limits::new(&config.limits)),
            long_polls: Arc::new(longpoll::LongPolls::new(config.limits.long_polls_per_agent)),
            config: Arc::new(config),
            sweeper: Arc::new(sweeper::Wake::default()),
            changes: Arc::new(watch::channel(0).0),
            applied: Arc::new(Notify::new()),
            authz: Arc::new(authz::Authz::default()),
            oidc: None,
            deliveries: Arc::new(Notify::new()),
            portal_inventory: Arc::new(web::inventory::Cache::default()),
            replica: replicas::replica_name().into(),
        }
    }

    /// The same app with OIDC sign-in.
    pub fn with_oidc(mut self, oidc: Option<oidc::Oidc>) -> Self {
        self.oidc = oidc.map(Arc::new);
        self
    }

    /// Checks that `principal` may perform `action` over `scope`. On success returns what allowed
    /// it ("Role at scope"); a refusal of a state-changing call is audited by the caller.
    pub async fn authorize(&self, principal: &Principal, action: &str, scope: &str) -> Result<String, ApiError> {
        let grants = self.authz.grants(self.store.as_ref(), principal).await?;
        let allowed = grants.allowing(action, scope);
        self.metrics.authorization(allowed.is_some());
        allowed.ok_or_else(|| authz::denied(&principal.label(), action, scope))
    }

    /// Like [`App::authorize`] for a state-changing call: a refusal is recorded in the audit log
    /// (with `audit`'s principal and operation), and an allow is noted in `audit`.
    pub async fn authorize_change(
        &self,
        principal: &Principal,
        action: &str,
        scope: &str,
        audit: &mut AuditEvent,
    ) -> Result<(), ApiError> {
        match self.authorize(principal, action, scope).await {
            Ok(by) => {
                audit.properties.insert("authorizedBy".into(), by);
                Ok(())
            }
            Err(e) => Err(self.refuse(audit.clone(), e).await),
        }
    }

    /// Whether `principal` may perform `action` over `scope` (for filtering lists).
    pub async fn can(&self, principal: &Principal, action: &str, scope: &str) -> Result<bool, ApiError> {
        let allowed = self.authz.grants(self.store.as_ref(), principal).await?.permits(action, scope);
        self.metrics.authorization(allowed);
        Ok(allowed)
    }

    /// Says that enforcement-relevant state changed: agents' long-polls wake at once (and the
    /// webhook worker looks for queued events).
    pub fn changed(&self) {
        self.portal_inventory.changed();
        self.grants_changed();
    }

    /// Like [`App::changed`], for a change of grants only (an initiate, approval, revocation,
    /// extension, a scheduled start): the inventory views keep their snapshot.
    pub fn grants_changed(&self) {
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
        self.deliveries.notify_one();
    }

    /// Whether an agent has gone quiet.
    pub fn is_stale(&self, agent: &jitgate_store::AgentRecord) -> bool {
        agent.last_seen.is_none_or(|seen| self.clock.now() - seen > STALE_AFTER)
    }

    /// How each of `vm_ids` is enforced now: no enforcement point, an agent that stopped
    /// reporting (silent for longer than [`STALE_AFTER`], past any long-poll window), one that
    /// cannot program nftables, a cloud connector that cannot change the VM's rules (`Failed`),
    /// or enforced. In the order given, duplicates left out.
    pub async fn enforcement_of(
        &self,
        vm_ids: &[String],
    ) -> Result<Vec<(String, jitgate_core::inventory::EnforcementState)>, ApiError> {
        use futures_util::stream::{self, StreamExt, TryStreamExt};
        // Duplicates (in any case) left out, the order kept.
        let mut seen = std::collections::HashSet::new();
        let unique: Vec<String> = vm_ids.iter().filter(|id| seen.insert(id.to_ascii_lowercase())).cloned().collect();
        // A request over many VMs: their enforcement points are looked up several at a time.
        let futures: Vec<_> = unique
            .into_iter()
            .map(|id| {
                let app = self.clone();
                async move { app.enforcement_of_one(id).await }
            })
            .collect();
        stream::iter(futures).buffered(8).try_collect().await
    }

    /// How one VM is enforced now (see [`App::enforcement_of`]).
    async fn enforcement_of_one(
        &self,
        id: String,
    ) -> Result<(String, jitgate_core::inventory::EnforcementState), ApiError> {
        use jitgate_core::inventory::EnforcementState;
        let vm = match jitgate_core::VmId::parse(&id) {
            Ok(vm) => self.store.get_vm(&vm).await?,
            Err(_) => None,
        };
        // A cloud connector's VM is also unenforced while Unsupported, and Failed while it says so.
        let state = vm.map_or(EnforcementState::NotEnforced, |vm| api::state_of(self, &vm).0);
        Ok((id, state))
    }

    /// A `Started` audit event for this request, to be completed by the store or [`App::refuse`].
    pub fn audit(&self, ctx: &RequestCtx, caller: &str, operation: &str, resource_id: &str) -> AuditEvent {
        AuditEvent {
            time: self.clock.now(),
            operation: operation.into(),
            status: AuditStatus::Started,
            caller: caller.into(),
            caller_ip: Some(ctx.caller_ip.to_string()),
            resource_id: resource_id.into(),
            correlation_id: ctx.correlation_id.clone(),
            properties: Default::default(),
        }
    }

    /// Records a refusal decided before the store was asked, then returns the error to answer.
    /// If the audit record cannot be written the answer becomes a 500: no refusal goes unrecorded.
    pub async fn refuse(&self, audit: AuditEvent, err: ApiError) -> ApiError {
        let event = audit.failed(format!("{}: {}", err.code, err.message));
        match self.store.record(event).await {
            Ok(()) => err,
            Err(e) => ApiError::from(e),
        }
    }

    /// The principal behind the request's bearer token. Failures are audited as sign-in attempts,
    /// compactly and rate limited per source and credential (see [`limits`]): past the limit the
    /// answer is 429 instead of 401.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        ctx: &RequestCtx,
        resource_id: &str,
    ) -> Result<Principal, ApiError> {
        self.sign_in(headers, ctx, resource_id).await.map(|s| s.principal)
    }

    /// The principal behind the request's bearer token and that credential. Failures are
    /// audited as sign-in attempts.
    pub async fn sign_in(
        &self,
        headers: &HeaderMap,
        ctx: &RequestCtx,
        resource_id: &str,
    ) -> Result<SignedIn, ApiError> {
        let failure = match auth::bearer(headers) {
            Ok(token) if self.oidc.is_some() && oidc::looks_like_jwt(token) => {
                let oidc = self.oidc.as_ref().map(Arc::clone);
                match oidc {
                    Some(o) => match o.validate(token).await {
                        Ok(id) => match self.oidc_sign_in(&o, token, id, ctx).await? {
                            Ok(signed_in) => {
                                trace::record_caller(&signed_in.principal.name);
                                return Ok(signed_in);
                            }
                            Err(e) => e,
                        },
                        Err(why) => ApiError::unauthorized("InvalidAuthenticationToken", why.to_string()),
                    },
                    None => ApiError::unauthorized("InvalidAuthenticationToken", "OIDC sign-in is not configured"),
                }
            }
            Ok(token) => match self.store.authenticate(&auth::hash_token(token), self.clock.now()).await? {
                Some(t) => {
                    trace::record_caller(&t.principal.name);
                    let credential = Credential::Token { id: t.token_id, expires: t.expires };
                    return Ok(SignedIn { principal: t.principal, credential });
                }
                None => ApiError::unauthorized(
                    "InvalidAuthenticationToken",
                    "The access token is invalid, expired or revoked.",
                ),
            },
            Err(e) => e,
        };
        let audit = self.audit(ctx, "anonymous", ops::SIGN_IN, resource_id);
        Err(self.signin_failure(audit, auth::bearer(headers).ok(), failure).await)
    }

    /// The principal of a valid ID token: found by (issuer, subject), created on first sign-in
    /// with its derived name and no roles. The inner `Err` is a sign-in refused by the store
    /// (already audited there).
    async fn oidc_sign_in(
        &self,
        o: &oidc::Oidc,
        token: &str,
        id: oidc::IdToken,
        ctx: &RequestCtx,
    ) -> Result<Result<SignedIn, ApiError>, ApiError> {
        let name = identity::oidc_name(&id.identity.issuer, &id.identity.subject);
        let resource = format!("/api/v1/principals/{name}");
        let (display_name, refused) = match &id.display {
            Ok(d) => (d.clone(), None),
            Err(why) => (None, Some(why.clone())),
        };
        let sign_in = OidcSignIn { identity: id.identity.clone(), display_name: display_name.clone() };
        let principal =
            match self.store.oidc_principal(sign_in, self.audit(ctx, &name, ops::PRINCIPAL_WRITE, &resource)).await {
                Ok(p) => p,
                Err(StoreError::Rejected(invalid)) => {
                    return Ok(Err(ApiError::unauthorized("InvalidAuthenticationToken", invalid.message)))
                }
                Err(e) => return Err(e.into()),
            };
        if o.first_use(token) {
            let mut event = self
                .audit(ctx, &principal.name, ops::SIGN_IN, &resource)
                .succeeded()
                .with("method", "oidc")
                .with("issuer", id.identity.issuer.clone())
                .with("subject", id.identity.subject.clone())
                .with("displayName", display_name.unwrap_or_default());
            if let Some(why) = refused {
                event = event.with("displayNameRefused", why);
            }
            self.store.record(event).await?;
        }
        Ok(Ok(SignedIn { principal, credential: Credential::IdToken { expires: id.expires } }))
    }
}

/// The caller's address: the peer's, or — only when the peer is a trusted proxy — the
/// right-most address of `X-Forwarded-For` that is not itself a trusted proxy.
pub fn caller_ip(peer: IpAddr, forwarded: Option<&str>, trusted: &[ipnet::IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    if !trusted.iter().any(|n| n.contains(&peer)) {
        return peer;
    }
    let Some(list) = forwarded else { return peer };
    let mut chosen = peer;
    for hop in list.rsplit(',') {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => {
                chosen = ip.to_canonical();
                if !trusted.iter().any(|n| n.contains(&chosen)) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    chosen
}

fn request_ctx(caller_ip: IpAddr, correlation: Option<&Correlation>) -> RequestCtx {
    match correlation {
        Some(c) => RequestCtx {
            caller_ip,
            correlation_id: c.correlation_id.clone(),
            client_request_id: c.client_request_id.clone(),
        },
        None => RequestCtx { caller_ip, correlation_id: uuid::Uuid::new_v4().to_string(), client_request_id: None },
    }
}

/// `GET /api/v1/auth/config` (no token): how humans sign in, for `jitgate login --oidc`.
async fn auth_config(State(app): State<App>) -> Response {
    let value = match &app.oidc {
        Some(o) => jitgate_api_types::native::AuthConfigOut {
            oidc_issuer: Some(o.issuer().to_owned()),
            oidc_client_id: Some(o.audience().to_owned()),
        },
        None => jitgate_api_types::native::AuthConfigOut::default(),
    };
    json(StatusCode::OK, &value)
}

async fn healthz() -> Response {
    json(StatusCode::OK, &serde_json::json!({"status": "ok"}))
}

async fn readyz(State(app): State<App>) -> Response {
    match app.store.ping().await {
        Ok(()) => json(StatusCode::OK, &serde_json::json!({"status": "ready"})),
        Err(e) => {
            tracing::warn!(error = %e, "not ready");
            json(StatusCode::SERVICE_UNAVAILABLE, &serde_json::json!({"status": "unavailable"}))
        }
    }
}

async fn fallback(State(app): State<App>, ConnectInfo(peer): ConnectInfo<PeerAddr>, req: Request<Body>) -> Response {
    if req.uri().path().to_ascii_lowercase().starts_with("/subscriptions/") {
        return arm::handle(app, peer, req).await;
    }
    trace::record_route("unmatched");
    ApiError::not_found("NotFound", format!("no route for {} {}", req.method(), req.uri().path())).into_response()
}

/// Every route of the control plane.
pub fn router(app: App) -> Router {
    let config = app.config.clone();
    let routes = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/v1/auth/config", get(auth_config))
        .route("/metrics", get(prom::handler))
        .merge(api::router())
        .merge(agent_api::router())
        .merge(api_rbac::router())
        .merge(api_audit::router())
        .merge(webhooks::router())
        .merge(web::router())
        .fallback(fallback);
    let metrics = app.metrics.clone();
    layers(routes, config).layer(axum::Extension(metrics)).with_state(app)
}

/// Serves the control plane on `listener` until `shutdown` completes, then drains in-flight
/// requests and stops the sweeper.
pub async fn run(
    listener: ServerListener,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    config: ServerConfig,
    oidc: Option<oidc::Oidc>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = App::new(store, clock, config).with_oidc(oidc);
    let (stop_tx, stop_rx) = watch::channel(false);
    let sweeper = tokio::spawn(sweeper::run(app.clone(), stop_rx.clone()));
    let hooks = tokio::spawn(webhooks::run(app.clone(), stop_rx.clone()));
    let retention = app
        .config
        .audit_retention
        .clone()
        .map(|(keep, dir)| tokio::spawn(retention::run(app.clone(), keep, dir, stop_rx)));
    let summaries = tokio::spawn(limits::run(app.clone(), stop_tx.subscribe()));
    let signals = tokio::spawn(replicas::listen(app.clone(), stop_tx.subscribe()));
    let upkeep = tokio::spawn(prom::upkeep(app.metrics.clone(), stop_tx.subscribe()));
    let timeouts = conn::Timeouts { header: app.config.limits.header_timeout, body: app.config.limits.body_timeout };
    conn::serve(listener, router(app), timeouts, shutdown).await;
    let _ = stop_tx.send(true);
    let _ = sweeper.await;
    let _ = hooks.await;
    let _ = summaries.await;
    let _ = signals.await;
    let _ = upkeep.await;
    if let Some(r) = retention {
        let _ = r.await;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
