//! The agent protocol: `POST /agent/v1/join`, `GET /agent/v1/state` (long-poll) and
//! `POST /agent/v1/applied`. An agent authenticates with its own credential and only ever sees
//! its own state.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use jitgate_api_types::agent::{AppliedIn, GrantOut, JoinIn, JoinOut, PortOut, StateOut};
use jitgate_api_types::parse_json;
use jitgate_core::audit::ops;
use jitgate_core::enforcement::{AgentMode, EnforcementState};
use jitgate_core::OsType;
use jitgate_store::{AgentJoin, AgentRecord, AgentReport};

use crate::arm::{read_body, Query};
use crate::auth;
use crate::error::{json, ApiError};
use crate::tls::PeerAddr;
use crate::App;

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
}

fn respond(r: Result<Response, ApiError>) -> Response {
    r.unwrap_or_else(IntoResponse::into_response)
}

/// The agent behind the request's credential.
async fn agent(app: &App, headers: &HeaderMap) -> Result<AgentRecord, ApiError> {
    let token = auth::bearer(headers)?;
    app.store.agent_by_credential(&auth::hash_token(token)).await?.ok_or_else(|| {
        ApiError::unauthorized("InvalidAuthenticationToken", "The agent credential is unknown; join again.")
    })
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

async fn join_inner(app: &App, peer: PeerAddr, req: Request<Body>) -> Result<Response, ApiError> {
    let ctx = crate::ctx_of(peer, &req);
    let audit = app.audit(&ctx, "agent", ops::AGENT_JOIN, "/agent/v1/join");
    let body = match read_body(app, req.into_body()).await {
        Ok(b) => b,
        Err(e) => return Err(app.refuse(audit, e).await),
    };
    let input = match parse_json::<JoinIn>(&body) {
        Ok(i) => i,
        Err(e) => return Err(app.refuse(audit, e.into()).await),
    };
    let bad = |field: &str, m: String| {
        let mut e = ApiError::bad_request("InvalidJoinRequest", m);
        e.target = Some(field.into());
        e
    };
    let checked = (|| {
        let mode = AgentMode::parse(&input.mode)
            .ok_or_else(|| bad("mode", format!("mode '{}' is not host or gateway", input.mode)))?;
        let os_type = OsType::parse(&input.os_type)
            .ok_or_else(|| bad("osType", format!("osType '{}' is not Linux or Windows", input.os_type)))?;
        jitgate_core::ids::validate_vm_name(&input.name).map_err(|m| bad("name", m))?;
        let addresses = input
            .addresses
            .iter()
            .map(|a| a.parse().map_err(|_| bad("addresses", format!("'{a}' is not an IP address"))))
            .collect::<Result<Vec<_>, _>>()?;
        let public_address = input
            .public_address
            .as_deref()
            .map(|a| a.parse().map_err(|_| bad("publicAddress", format!("'{a}' is not an IP address"))))
            .transpose()?;
        Ok::<_, ApiError>((mode, os_type, addresses, public_address))
    })();
    let (mode, os_type, addresses, public_address) = match checked {
        Ok(c) => c,
        Err(e) => return Err(app.refuse(audit, e).await),
    };
    let credential = format!("{CREDENTIAL_PREFIX}{}", &auth::new_token()[auth::TOKEN_PREFIX.len()..]);
    let join = AgentJoin {
        token_hash: auth::hash_token(input.join_token.trim()),
        credential_hash: auth::hash_token(&credential),
        id: uuid::Uuid::new_v4().to_string(),
        name: input.name.clone(),
        mode,
        os_type,
        addresses,
        public_address,
        hostname: input.hostname.chars().take(255).collect(),
        now: app.clock.now(),
    };
    let agent = app.store.join_agent(join, audit).await.map_err(|e| {
        // A bad join token is an authentication failure, not a malformed request.
        let mut err = ApiError::from(e);
        if err.code == "InvalidJoinToken" {
            err.status = StatusCode::UNAUTHORIZED;
        }
        err
    })?;
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

async fn state(State(app): State<App>, req: Request<Body>) -> Response {
    respond(state_inner(&app, req).await)
}

async fn state_inner(app: &App, req: Request<Body>) -> Result<Response, ApiError> {
    let (headers, q) = (req.headers().clone(), Query::parse(req.uri().query()));
    drop(req);
    let agent = agent(app, &headers).await?;
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
        let state = app.store.agent_state(&agent.id, app.clock.now()).await?;
        let timed_out = tokio::time::Instant::now() >= deadline;
        if after.is_none_or(|a| state.revision > a) || timed_out {
            return Ok(json(StatusCode::OK, &state_out(&state, app.clock.now())));
        }
        let ticket = ticket.get_or_insert_with(|| app.long_polls.enter(&agent.id));
        tokio::select! {
            r = changes.changed() => if r.is_err() { return Ok(json(StatusCode::OK, &state_out(&state, app.clock.now()))) },
            _ = tokio::time::sleep_until(deadline) => {}
            _ = ticket.replaced() => return Ok(json(StatusCode::OK, &state_out(&state, app.clock.now()))),
        }
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

async fn applied(State(app): State<App>, req: Request<Body>) -> Response {
    respond(applied_inner(&app, req).await)
}

async fn applied_inner(app: &App, req: Request<Body>) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let agent = agent(app, &parts.headers).await?;
    let body = read_body(app, body).await?;
    let input: AppliedIn = parse_json(&body)?;
    let report = AgentReport {
        revision: input.revision,
        nft_usable: input.nftables_usable,
        nft_error: input.nftables_error.map(|e| e.chars().take(2000).collect()),
        now: app.clock.now(),
    };
    app.store.agent_report(&agent.id, report).await?;
    app.applied.notify_waiters();
    Ok(StatusCode::NO_CONTENT.into_response())
}
