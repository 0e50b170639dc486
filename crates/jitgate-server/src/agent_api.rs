//! The agent protocol: `POST /agent/v1/join`, `GET /agent/v1/state` (long-poll),
//! `POST /agent/v1/applied` and `POST /agent/v1/rotate`, and a cloud connector's
//! `PUT /agent/v1/inventory` and `POST /agent/v1/enforcement` (`crate::agent_cloud`). An agent
//! authenticates with its own credential and only ever sees its own state. Everything an agent sends is bounded
//! (`jitgate_core::enforcement::limits`) before it is stored, audited or shown.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;

use jitgate_api_types::agent::{AppliedIn, GrantOut, JoinIn, JoinOut, PortOut, RotateOut, StateOut};
use jitgate_api_types::parse_json;
use jitgate_core::audit::ops;
use jitgate_core::enforcement::{check_join, limits, printable, report_error, EnforcementState, JoinDraft};
use jitgate_store::{AgentJoin, AgentRecord, AgentReport, StoreError};

use crate::arm::Query;
use crate::auth;
use crate::error::{json, ApiError};
use crate::tls::PeerAddr;
use crate::App;
use crate::RequestCtx;

/// Prefix of agent credentials.
pub const CREDENTIAL_PREFIX: &str = "jga_";
/// The longest a state long-poll is held open.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// The default long-poll hold.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);

pub fn router() -> Router<App> {
    Router::new()
        .route("/agent/v1/join", post(join))
        .route("/agent/v1/state", get(state))
        .route("/agent/v1/applied", post(applied))
        .route("/agent/v1/rotate", post(rotate))
        .route("/agent/v1/inventory", put(crate::agent_cloud::inventory))
        .route("/agent/v1/enforcement", post(crate::agent_cloud::enforcement))
}

/// What an agent is told when its credential is refused.
const REVOKED: &str = "The agent credential is not accepted: the agent was revoked (DELETE /api/v1/agents/{id}), \
     removed with its VM, replaced by a re-join, or its credential was rotated. Join again with a new join token.";

/// A join or report body: at most `limits::BODY_BYTES` (or the server's smaller body limit).
async fn read_small_body(app: &App, body: Body) -> Result<bytes::Bytes, ApiError> {
    let limit = limits::BODY_BYTES.min(app.config.max_body_bytes);
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            format!("an agent request body is at most {limit} bytes"),
        )
    })
}

/// An error whose message may quote what an unauthenticated caller sent: kept printable and
/// short, for the answer and for the audit record.
pub(crate) fn bounded(mut e: ApiError) -> ApiError {
    e.message = printable(&e.message, 300);
    e.target = e.target.map(|t| printable(&t, 100));
    e
}

/// A removed agent's calls are answered as an unknown credential.
pub(crate) fn agent_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Rejected(i) if i.code == jitgate_core::join::AGENT_NOT_FOUND => {
            ApiError::unauthorized("InvalidAuthenticationToken", REVOKED)
        }
        other => other.into(),
    }
}

/// How an agent is named as the caller of its audit records.
pub(crate) fn agent_caller(agent: &AgentRecord) -> String {
    format!("agent:{}", agent.id)
}

/// An agent's resource id in audit records.
pub(crate) fn agent_resource(agent: &AgentRecord) -> String {
    format!("/agents/{}", agent.id)
}

fn respond(r: Result<Response, ApiError>) -> Response {
    r.unwrap_or_else(IntoResponse::into_response)
}

/// An authenticated agent, as a handler argument: the request's context, the agent behind its
/// credential, that credential (a rotation replaces it) and the query string. A refused
/// credential is audited as a failed sign-in, compactly and rate limited per source and
/// credential like a person's (see `crate::limits`), and answered 401 (429 past the limit).
pub struct AgentCaller {
    pub ctx: RequestCtx,
    pub agent: AgentRecord,
    pub credential: String,
    pub query: Query,
}

impl FromRequestParts<App> for AgentCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, ApiError> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<PeerAddr>>()
            .map(|c| c.0)
            .unwrap_or(PeerAddr(std::net::SocketAddr::from(([0, 0, 0, 0], 0))));
        let ctx = crate::ctx_from(peer, &parts.headers, &parts.extensions);
        let found = match auth::bearer(&parts.headers) {
            Ok(token) if token.len() > limits::JOIN_TOKEN => None,
            Ok(token) => app.store.agent_by_credential(&auth::hash_token(token)).await?.map(|a| (a, token)),
            Err(e) => return Err(refuse_credential(app, &ctx, parts, e).await),
        };
        match found {
            Some((agent, token)) => {
                crate::trace::record_caller(&format!("agent:{}", agent.id));
                let credential = token.to_owned();
                Ok(AgentCaller { ctx, agent, credential, query: Query::parse(parts.uri.query()) })
            }
            None => {
                let e = ApiError::unauthorized("InvalidAuthenticationToken", REVOKED);
                Err(refuse_credential(app, &ctx, parts, e).await)
            }
        }
    }
}

/// The one refusal path for an agent credential: a failed sign-in record at the path called.
async fn refuse_credential(app: &App, ctx: &RequestCtx, parts: &Parts, e: ApiError) -> ApiError {
    let audit = app.audit(ctx, "anonymous", ops::SIGN_IN, &printable(parts.uri.path(), 100));
    app.signin_failure(audit, auth::bearer(&parts.headers).ok(), e).await
}

/// Joins are rate limited per source address: a refused join counts, and while a source has
/// none left its joins are answered 429 before they are looked at (see `crate::limits`).
async fn join(State(app): State<App>, ConnectInfo(peer): ConnectInfo<PeerAddr>, req: Request<Body>) -> Response {
    let ctx = crate::ctx_of(peer, &req);
    if let Err(e) = app.join_allowed(&app.audit(&ctx, "agent", ops::AGENT_JOIN, "/agent/v1/join")).await {
        return e.into_response();
    }
    let answer = join_inner(&app, peer, req).await;
    if answer.as_ref().is_err_and(|e| e.status.is_client_error()) {
        app.join_refused(ctx.caller_ip);
    }
    respond(answer)
}

/// A bad join token is an authentication failure (401), not a malformed request.
fn join_token_unauthorized(mut e: ApiError) -> ApiError {
    if e.code == "InvalidJoinToken" {
        e.status = StatusCode::UNAUTHORIZED;
    }
    e
}

async fn join_inner(app: &App, peer: PeerAddr, req: Request<Body>) -> Result<Response, ApiError> {
    let ctx = crate::ctx_of(peer, &req);
    let audit = app.audit(&ctx, "agent", ops::AGENT_JOIN, "/agent/v1/join");
    let checked = async {
        let body = read_small_body(app, req.into_body()).await?;
        let input = parse_json::<JoinIn>(&body)?;
        let draft = JoinDraft::from(input);
        check_join(draft).map_err(|invalid| join_token_unauthorized(invalid.into()))
    }
    .await;
    let input = match checked {
        Ok(c) => c,
        Err(e) => return Err(app.refuse(audit, bounded(e)).await),
    };
    let credential = format!("{CREDENTIAL_PREFIX}{}", &auth::new_token()[auth::TOKEN_PREFIX.len()..]);
    let join = AgentJoin {
        token_hash: auth::hash_token(&input.join_token),
        credential_hash: auth::hash_token(&credential),
        id: uuid::Uuid::new_v4().to_string(),
        agent: input.agent,
        now: app.clock.now(),
    };
    let agent = app.store.join_agent(join, audit).await.map_err(|e| join_token_unauthorized(e.into()))?;
    app.changed();
    let out = JoinOut {
        agent_id: agent.id,
        credential,
        name: agent.name,
        mode: agent.mode.as_str().into(),
        subscription: agent.subscription,
        resource_group: agent.resource_group,
        location: agent.location,
        vm_id: agent.vm_id,
    };
    Ok(json(StatusCode::CREATED, &out))
}

/// `GET /agent/v1/state?after=N&wait=30s`: the agent's state, at once when its revision is past
/// `after` (or `after` is absent), otherwise once it is or `wait` (at most [`MAX_WAIT`]) passed.
async fn state(State(app): State<App>, AgentCaller { agent, query: q, .. }: AgentCaller) -> Result<Response, ApiError> {
    let app = &app;
    let after: Option<u64> = q.get("after").and_then(|a| a.parse().ok());
    let wait = q
        .get("wait")
        .map(|w| w.trim_end_matches('s').parse::<u64>().map(Duration::from_secs).unwrap_or(DEFAULT_WAIT))
        .unwrap_or(DEFAULT_WAIT)
        .min(MAX_WAIT);
    let mut changes = app.changes.subscribe();
    let deadline = tokio::time::Instant::now() + wait;
    // Registered once the poll waits; past the per-agent cap the oldest poll answers at once.
    let mut ticket = None;
    loop {
        // Read the state itself (it carries the revision): one round trip when something changed.
        let state = app.store.agent_state(&agent.id, app.clock.now()).await.map_err(agent_error)?;
        let ready = after.is_none_or(|a| state.revision > a) || tokio::time::Instant::now() >= deadline;
        if !ready {
            let ticket = ticket.get_or_insert_with(|| app.long_polls.enter(&agent.id));
            tokio::select! {
                r = changes.changed() => if r.is_ok() { continue },
                _ = tokio::time::sleep_until(deadline) => continue,
                _ = ticket.replaced() => {}
            }
            // A newer poll of this agent replaced this one, or the change channel closed (shutting
            // down): answer with what there is.
        }
        // The agent may report this revision as applied only once it was sent to it.
        if state.revision > agent.delivered_revision {
            app.store.agent_delivered(&agent.id, state.revision).await.map_err(agent_error)?;
            app.metrics.state_delivered(&agent.id, state.revision);
        }
        return Ok(json(StatusCode::OK, &state_out(&state, app.clock.now())));
    }
}

/// The wire form of an agent's state: absolute end times become remaining milliseconds.
pub fn state_out(state: &EnforcementState, now: time::OffsetDateTime) -> StateOut {
    StateOut {
        revision: state.revision,
        mode: state.mode.as_str().into(),
        ports: state
            .ports
            .iter()
            .map(|p| PortOut {
                vm_id: p.vm_id.clone(),
                address: p.address.map(|a| a.to_string()),
                protocol: p.protocol.as_str().into(),
                port: p.number,
                cut_sessions: p.cut_sessions,
                mapped_port: p.mapped_port,
            })
            .collect(),
        grants: state
            .grants
            .iter()
            .map(|g| GrantOut {
                request_id: g.request_id,
                vm_id: g.vm_id.clone(),
                address: g.address.map(|a| a.to_string()),
                protocol: g.protocol.as_str().into(),
                port: g.number,
                sources: g.sources.prefixes().iter().map(|p| p.text().to_owned()).collect(),
                remaining_ms: u64::try_from((g.end_time - now).whole_milliseconds()).unwrap_or(0),
                mapped_port: g.mapped_port,
            })
            .collect(),
    }
}

/// `POST /agent/v1/applied` `{"revision","nftablesUsable","nftablesError"?}`: 204. A malformed
/// report is refused with a record.
async fn applied(
    State(app): State<App>,
    AgentCaller { ctx, agent, .. }: AgentCaller,
    body: Body,
) -> Result<Response, ApiError> {
    let app = &app;
    let checked = async {
        let body = read_small_body(app, body).await?;
        parse_json::<AppliedIn>(&body).map_err(|e| bounded(e.into()))
    }
    .await;
    let input = match checked {
        Ok(input) => input,
        Err(e) => {
            let audit = app.audit(&ctx, &agent_caller(&agent), ops::AGENT_APPLIED, &agent_resource(&agent));
            return Err(app.refuse(audit, e).await);
        }
    };
    let report = AgentReport {
        revision: input.revision,
        nft_usable: input.nftables_usable,
        // Shown to operators and requesters: printable, at most `limits::REPORT_ERROR` characters.
        nft_error: input.nftables_error.as_deref().map(report_error),
        now: app.clock.now(),
    };
    app.store.agent_report(&agent.id, report).await.map_err(agent_error)?;
    app.metrics.state_applied(&agent.id, input.revision);
    app.applied.notify_waiters();
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /agent/v1/rotate`: a new credential for the calling agent; the one it called with
/// stops working at once.
async fn rotate(
    State(app): State<App>,
    AgentCaller { ctx, agent, credential: old, .. }: AgentCaller,
) -> Result<Response, ApiError> {
    let credential = format!("{CREDENTIAL_PREFIX}{}", &auth::new_token()[auth::TOKEN_PREFIX.len()..]);
    let audit = app.audit(&ctx, &agent_caller(&agent), ops::AGENT_ROTATE, &agent_resource(&agent));
    app.store
        .rotate_agent_credential(&agent.id, &auth::hash_token(&old), &auth::hash_token(&credential), audit)
        .await
        .map_err(agent_error)?;
    Ok(json(StatusCode::OK, &RotateOut { agent_id: agent.id, credential }))
}
