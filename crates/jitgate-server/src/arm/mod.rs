//! The Azure-compatible API: `Microsoft.Security/locations/jitNetworkAccessPolicies`,
//! api-version 2020-01-01, every operation of the contract.

pub mod route;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use jitgate_store::timing::{self, timed, Stage};
use percent_encoding::percent_decode_str;

use jitgate_api_types::arm::{self as dto, InitiateIn, PolicyIn, PolicyListOut};
use jitgate_api_types::parse_json;
use jitgate_core::audit::AuditEvent;
use jitgate_core::initiate::{GrantStatus, InitiateDraft};
use jitgate_core::inventory::EnforcementState;
use jitgate_core::policy::validate;
use jitgate_core::policy::PolicyDraft;
use jitgate_core::rbac::actions;
use jitgate_core::records::PolicyRecord;
use jitgate_core::PolicyRef;
use jitgate_store::{InitiateCommand, InitiateOutcome, ListScope, Principal};

use crate::error::{json, ApiError};
use crate::tls::PeerAddr;
use crate::{App, RequestCtx};

use self::route::ArmRoute;

/// The api-versions whose shapes jitgate serves (the preview has the same shapes).
pub const API_VERSIONS: [&str; 2] = [dto::API_VERSION, "2015-06-01-preview"];

/// Handles one request under `/subscriptions/`; the answer carries the route's name for the
/// metrics (`arm.unknown` for a path that is none of the API's).
pub async fn handle(app: App, peer: PeerAddr, req: Request<Body>) -> Response {
    let mut name = "arm.unknown";
    let mut resp = match handle_inner(&app, peer, req, &mut name).await {
        Ok(resp) => resp,
        Err(e) => {
            if name == "arm.unknown" {
                crate::trace::record_route(name);
            }
            e.into_response()
        }
    };
    resp.extensions_mut().insert(crate::prom::RouteName(name));
    resp
}

async fn handle_inner(
    app: &App,
    peer: PeerAddr,
    req: Request<Body>,
    name: &mut &'static str,
) -> Result<Response, ApiError> {
    let ctx = crate::ctx_of(peer, &req);
    let (parts, body) = req.into_parts();
    let route = route::parse(&parts.method, parts.uri.path())?;
    *name = route.name();
    crate::trace::record_route(name);
    let resource_id = match &route {
        ArmRoute::Get(r) | ArmRoute::Put(r) | ArmRoute::Delete(r) | ArmRoute::Initiate(r) => r.id(),
        ArmRoute::List(_) => parts.uri.path().to_owned(),
    };
    let principal = timed(Stage::Authenticate, app.authenticate(&parts.headers, &ctx, &resource_id)).await?;
    let mut audit = app.audit(&ctx, &principal.name, route.operation(), &resource_id);
    if let ArmRoute::Initiate(_) = route {
        timed(Stage::Authorize, app.rate_limit(crate::limits::Action::Initiate, &principal.name, &audit)).await?;
    }
    let query = Query::parse(parts.uri.query());
    if let Err(e) = check_api_version(&query) {
        return Err(if route.is_mutation() { app.refuse(audit, e).await } else { e });
    }
    match &route {
        ArmRoute::Get(r) => {
            app.authorize(&principal, actions::POLICY_READ, &r.id()).await?;
        }
        ArmRoute::Delete(r) => app.authorize_change(&principal, actions::POLICY_DELETE, &r.id(), &mut audit).await?,
        // Put and initiate are authorized by the functions the portal calls too.
        ArmRoute::List(_) | ArmRoute::Put(_) | ArmRoute::Initiate(_) => {}
    }
    match route {
        ArmRoute::List(scope) => list(app, &principal, &scope, &query, &parts.headers, &parts.uri).await,
        ArmRoute::Get(r) => get(app, &r).await,
        ArmRoute::Put(r) => {
            let draft = read_body(app, body)
                .await
                .and_then(|b| parse_json::<PolicyIn>(&b).and_then(PolicyIn::into_draft).map_err(Into::into));
            let record = put_policy(app, &principal, r, draft, audit).await?;
            let mut body = dto::policy_out(&record);
            let ids: Vec<String> = body.properties.virtual_machines.iter().map(|v| v.id.clone()).collect();
            let states = app.enforcement_of(&ids).await?;
            for vm in &mut body.properties.virtual_machines {
                if let Some(state) = unenforced(&states, &vm.id) {
                    vm.enforcement = Some(state.as_str().into());
                    vm.enforcement_warning = state.warning().map(str::to_owned);
                }
            }
            // The SDK accepts only 200, for a new policy and a replaced one alike.
            Ok(with_enforcement_header(json(StatusCode::OK, &body), &states))
        }
        ArmRoute::Delete(r) => delete(app, &r, audit).await,
        ArmRoute::Initiate(r) => {
            let parsed = timed(Stage::Parse, async {
                read_body(app, body).await.and_then(|b| {
                    let wait = wait_option(&query)?;
                    Ok((wait, parse_json::<InitiateIn>(&b).and_then(InitiateIn::into_draft)?))
                })
            })
            .await;
            let (wait, draft) = match parsed {
                Ok((wait, draft)) => (wait, Ok(draft)),
                Err(e) => (None, Err(e)),
            };
            // How the VMs asked for are enforced is read while the request is written (for a
            // request of a few VMs: a large one, or one refused, reads nothing before the check).
            let asked: Vec<String> = match &draft {
                Ok(d) if d.vms.len() <= 8 => d.vms.iter().map(|v| v.id.trim_end_matches('/').to_owned()).collect(),
                _ => Vec::new(),
            };
            let (outcome, states) = tokio::join!(
                initiate_request(app, &ctx, &principal, r, draft, audit),
                timed(Stage::Read, app.enforcement_of(&asked))
            );
            let outcome = outcome?;
            let mut body = dto::request_out(&outcome.request);
            let vms: Vec<String> = outcome.request.grants.iter().map(|g| g.vm_id.clone()).collect();
            let states = match states {
                Ok(s) if vms.iter().all(|v| s.iter().any(|(id, _)| id.eq_ignore_ascii_case(v))) => s,
                _ => timed(Stage::Read, app.enforcement_of(&vms)).await?,
            };
            mark_request(&mut body, &states);
            match wait {
                None => Ok(with_enforcement_header(json(StatusCode::ACCEPTED, &body), &states)),
                // The grant is recorded either way; waiting only decides when (and how) we answer.
                Some(timeout) => {
                    let revision = app.store.revision().await?;
                    enforced_answer(app, &states, revision, timeout, StatusCode::ACCEPTED, &body, outcome.request.id)
                        .await
                }
            }
        }
    }
}

/// The decoded query string (`+` is a space, as form encoding has it).
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(raw: Option<&str>) -> Self {
        let decode = |s: &str| percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned();
        Query(
            raw.unwrap_or("")
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| match p.split_once('=') {
                    Some((k, v)) => (decode(k), decode(v)),
                    None => (decode(p), String::new()),
                })
                .collect(),
        )
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v.as_str())
    }
}

fn check_api_version(q: &Query) -> Result<(), ApiError> {
    match q.get("api-version") {
        None | Some("") => Err(ApiError::bad_request(
            "MissingApiVersionParameter",
            format!(
                "The api-version query parameter (?api-version=) is required for all requests; use {}.",
                dto::API_VERSION
            ),
        )),
        Some(v) if API_VERSIONS.contains(&v) => Ok(()),
        Some(v) => Err(ApiError::bad_request(
            "InvalidApiVersionParameter",
            format!("The api-version '{v}' is invalid. The supported versions are '{}'.", API_VERSIONS.join("', '")),
        )),
    }
}

/// Reads the whole body, refusing more than the configured limit with 413 and a body that does
/// not arrive within the body timeout with 408.
pub async fn read_body(app: &App, body: Body) -> Result<bytes::Bytes, ApiError> {
    read_body_within(app, body, app.config.max_body_bytes).await
}

/// [`read_body`] with another size limit (a cloud connector's inventory is larger than any ARM
/// body).
pub(crate) async fn read_body_within(app: &App, body: Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
    let timeout = app.config.limits.body_timeout;
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            format!("the request body is larger than {limit} bytes"),
        )),
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "RequestTimeout",
            format!("the request body did not arrive within {} s", timeout.as_secs_f64()),
        )),
    }
}

async fn list(
    app: &App,
    principal: &Principal,
    scope: &ListScope,
    q: &Query,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<Response, ApiError> {
    let engine = &base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let after = match q.get("$skiptoken") {
        None | Some("") => None,
        Some(t) => Some(engine.decode(t.trim()).ok().and_then(|b| String::from_utf8(b).ok()).ok_or_else(|| {
            ApiError::bad_request("InvalidSkipToken", format!("'{t}' is not a skip token from a nextLink"))
        })?),
    };
    let size = app.config.list_page_size.max(1);
    let mut page = app.store.list_policies(scope, after.as_deref(), size + 1).await?;
    let next_link = if page.len() > size {
        page.truncate(size);
        page.last().map(|last| {
            let token = engine.encode(last.policy.reference.key());
            format!("{}{}?api-version={}&$skiptoken={token}", base_url(app, headers, uri), uri.path(), dto::API_VERSION)
        })
    } else {
        None
    };
    // A list returns only what the caller may read.
    let grants = app.authz.grants(app.store.as_ref(), principal).await?;
    let value = page
        .iter()
        .filter(|p| grants.permits(actions::POLICY_READ, &p.policy.reference.id()))
        .map(dto::policy_out)
        .collect();
    let body = PolicyListOut { value, next_link };
    Ok(json(StatusCode::OK, &body))
}

/// The base of absolute links: the configured public URL, else the scheme and `Host` (HTTP/1.1)
/// or `:authority` (HTTP/2) of the request.
pub(crate) fn base_url(app: &App, headers: &HeaderMap, uri: &Uri) -> String {
    if let Some(u) = &app.config.public_url {
        return u.trim_end_matches('/').to_owned();
    }
    let scheme = if app.config.tls { "https" } else { "http" };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b)))
        .unwrap_or("localhost");
    format!("{scheme}://{host}")
}

fn policy_not_found(r: &PolicyRef) -> ApiError {
    jitgate_core::initiate::policy_not_found(r).into()
}

async fn get(app: &App, r: &PolicyRef) -> Result<Response, ApiError> {
    match app.store.get_policy(r).await? {
        Some(record) => Ok(json(StatusCode::OK, &dto::policy_out(&record))),
        None => Err(policy_not_found(r)),
    }
}

/// Writes a policy: the authorization, validation, audit and wake-up of `PUT` on a policy, the
/// one code path of the ARM API and the portal's Enable/Edit. `draft` is the parsed body, or why
/// it could not be read (a refusal, audited like any other).
pub async fn put_policy(
    app: &App,
    principal: &Principal,
    r: PolicyRef,
    draft: Result<PolicyDraft, ApiError>,
    mut audit: AuditEvent,
) -> Result<PolicyRecord, ApiError> {
    app.authorize_change(principal, actions::POLICY_WRITE, &r.id(), &mut audit).await?;
    let validated = match draft.and_then(|d| validate(r, d).map_err(Into::into)) {
        Ok(v) => v,
        Err(e) => return Err(app.refuse(audit, e).await),
    };
    let record = app.store.put_policy(validated, audit).await?;
    app.changed();
    Ok(record)
}

async fn delete(app: &App, r: &PolicyRef, audit: AuditEvent) -> Result<Response, ApiError> {
    if app.store.delete_policy(r, audit).await? {
        app.sweeper.notify_one();
        app.changed();
        Ok(StatusCode::OK.into_response())
    } else {
        Ok(StatusCode::NO_CONTENT.into_response())
    }
}

/// Asks for access: the authorization (initiate on the policy, read on every VM), the decision
/// inside the store, audit and wake-ups of `initiate`, the one code path of the ARM API and the
/// portal's Request access. `draft` is the parsed body, or why it could not be read.
pub async fn initiate_request(
    app: &App,
    ctx: &RequestCtx,
    principal: &Principal,
    r: PolicyRef,
    draft: Result<InitiateDraft, ApiError>,
    audit: AuditEvent,
) -> Result<InitiateOutcome, ApiError> {
    use crate::prom::InitiateResult;
    let outcome = initiate_checked(app, ctx, principal, r, draft, audit).await;
    let result = match &outcome {
        Ok(o) if o.replayed => return outcome,
        Ok(o) if o.request.grants.iter().all(|g| g.status == GrantStatus::Initiated) => InitiateResult::Granted,
        Ok(_) => InitiateResult::Pending,
        Err(e) if e.status.is_server_error() => InitiateResult::Failed,
        Err(_) => InitiateResult::Refused,
    };
    app.metrics.initiate(result);
    outcome
}

async fn initiate_checked(
    app: &App,
    ctx: &RequestCtx,
    principal: &Principal,
    r: PolicyRef,
    draft: Result<InitiateDraft, ApiError>,
    mut audit: AuditEvent,
) -> Result<InitiateOutcome, ApiError> {
    let authorizing = std::time::Instant::now();
    app.authorize_change(principal, actions::POLICY_INITIATE, &r.id(), &mut audit).await?;
    let draft = match draft {
        Ok(d) => d,
        Err(e) => return Err(app.refuse(audit, e).await),
    };
    // Initiate also needs read access to every VM it opens.
    for vm in &draft.vms {
        app.authorize_change(principal, actions::VM_READ, vm.id.trim_end_matches('/'), &mut audit).await?;
    }
    timing::since(Stage::Authorize, authorizing);
    let cmd = InitiateCommand {
        policy: r,
        draft,
        caller: Some(ctx.caller_ip),
        requestor: principal.name.clone(),
        client_request_id: ctx.client_request_id.clone(),
        now: app.clock.now(),
    };
    let outcome = app.store.initiate(cmd, audit).await?;
    if !outcome.replayed {
        app.sweeper.for_request(&outcome.request);
        app.grants_changed();
    }
    Ok(outcome)
}

/// The state of `vm` in `states` when it is not enforced.
fn unenforced(states: &[(String, EnforcementState)], vm: &str) -> Option<EnforcementState> {
    states
        .iter()
        .find(|(id, _)| id.eq_ignore_ascii_case(vm))
        .map(|(_, s)| *s)
        .filter(|s| *s != EnforcementState::Enforced)
}

/// Marks each VM of a request answer that no live enforcement point serves.
pub fn mark_request(body: &mut jitgate_api_types::arm::RequestOut, states: &[(String, EnforcementState)]) {
    for vm in &mut body.virtual_machines {
        if let Some(state) = unenforced(states, &vm.id) {
            vm.enforcement = Some(state.as_str().into());
            vm.enforcement_warning = state.warning().map(str::to_owned);
        }
    }
}

/// `x-jitgate-enforcement: not enforced: VM (why); …` on an answer that concerns VMs no live
/// enforcement point serves.
fn with_enforcement_header(mut resp: Response, states: &[(String, EnforcementState)]) -> Response {
    let gaps: Vec<String> = states
        .iter()
        .filter(|(_, s)| *s != EnforcementState::Enforced)
        .map(|(id, s)| format!("{} ({})", id.rsplit('/').next().unwrap_or(id), s.as_str()))
        .collect();
    if !gaps.is_empty() {
        if let Ok(v) = axum::http::HeaderValue::from_str(&format!("not enforced: {}", gaps.join(", "))) {
            resp.headers_mut().insert("x-jitgate-enforcement", v);
        }
    }
    resp
}

/// `?wait=applied[&timeout=SECONDS]`: the longest to wait for the enforcement points.
pub fn wait_option(q: &Query) -> Result<Option<std::time::Duration>, ApiError> {
    match q.get("wait") {
        None | Some("") => Ok(None),
        Some(w) if w.eq_ignore_ascii_case("applied") => {
            let secs = match q.get("timeout") {
                None => 10.0,
                Some(t) => t
                    .trim_end_matches('s')
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s > 0.0 && *s <= 120.0)
                    .ok_or_else(|| {
                        ApiError::bad_request("InvalidTimeout", format!("timeout '{t}' is not 0 < seconds <= 120"))
                    })?,
            };
            Ok(Some(std::time::Duration::from_secs_f64(secs)))
        }
        Some(w) => Err(ApiError::bad_request("InvalidWait", format!("wait '{w}' is not supported; use wait=applied"))),
    }
}

/// Answers `body` with `status` once every enforcement point of the VMs in `states` has applied
/// `revision`, or with a clear error naming who did not. `x-jitgate-enforcement` says who
/// applied it; VMs with no enforcement point are not waited for: when there are any, the answer
/// comes at once after the others and its header says `not enforced: …` (the body marks them).
pub async fn enforced_answer<T: serde::Serialize>(
    app: &App,
    states: &[(String, EnforcementState)],
    revision: u64,
    timeout: std::time::Duration,
    status: StatusCode,
    body: &T,
    request_id: i64,
) -> Result<Response, ApiError> {
    let vms: Vec<String> = states.iter().map(|(id, _)| id.clone()).collect();
    if states.iter().any(|(_, s)| *s == EnforcementState::NotEnforced) {
        let enforced: Vec<String> =
            states.iter().filter(|(_, s)| *s != EnforcementState::NotEnforced).map(|(id, _)| id.clone()).collect();
        if !enforced.is_empty() {
            if let Err(e) = app.wait_applied(&enforced, revision, timeout).await? {
                return Err(wait_error(e, request_id, timeout));
            }
        }
        return Ok(with_enforcement_header(json(status, body), states));
    }
    match app.wait_applied(&vms, revision, timeout).await? {
        Ok(agents) => {
            let mut resp = json(status, body);
            let value = if agents.is_empty() { "none".to_owned() } else { format!("applied by {}", agents.join(", ")) };
            if let Ok(v) = axum::http::HeaderValue::from_str(&value) {
                resp.headers_mut().insert("x-jitgate-enforcement", v);
            }
            Ok(resp)
        }
        Err(e) => Err(wait_error(e, request_id, timeout)),
    }
}

/// The error for a wait that did not end in "applied".
fn wait_error(e: crate::EnforcementWait, request_id: i64, timeout: std::time::Duration) -> ApiError {
    match e {
        crate::EnforcementWait::TimedOut(agents) => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "EnforcementTimeout",
            format!(
                "request {request_id} is recorded, but enforcement point(s) {} did not apply it within {:.1} s; it takes effect when they do",
                agents.join(", "),
                timeout.as_secs_f64()
            ),
        ),
        crate::EnforcementWait::Failed { agent, error } => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "EnforcementFailed",
            format!("request {request_id} is recorded, but enforcement point {agent} cannot program nftables: {error}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_are_decoded() {
        let q = Query::parse(Some("api-version=2020-01-01&%24skiptoken=a%20b+c&flag"));
        assert_eq!(q.get("api-version"), Some("2020-01-01"));
        assert_eq!(q.get("$skiptoken"), Some("a b c"));
        assert_eq!(q.get("flag"), Some(""));
        assert_eq!(q.get("missing"), None);
    }

    #[test]
    fn api_version_must_be_present_and_known() {
        assert_eq!(
            check_api_version(&Query::parse(None)).map_err(|e| e.code),
            Err("MissingApiVersionParameter".into())
        );
        assert_eq!(
            check_api_version(&Query::parse(Some("api-version=2023-01-01"))).map_err(|e| e.code),
            Err("InvalidApiVersionParameter".into())
        );
        assert!(check_api_version(&Query::parse(Some("api-version=2020-01-01"))).is_ok());
    }
}
