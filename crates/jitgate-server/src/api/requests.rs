//! Access requests: reading one, revoking, approving, denying and extending.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;

use jitgate_api_types::arm::request_out;
use jitgate_api_types::datetime;
use jitgate_api_types::native::{DecisionIn, ExtendIn, NativeRequestOut};
use jitgate_api_types::parse_json;
use jitgate_core::audit::ops;
use jitgate_core::rbac::actions;
use jitgate_core::AccessDuration;

use crate::arm::read_body;
use crate::error::{json, ApiError};
use crate::{App, Caller};

pub(crate) fn request_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| ApiError::bad_request("InvalidRequestId", format!("'{raw}' is not a request id")))
}

pub(super) async fn get_request(
    State(app): State<App>,
    Path(id): Path<String>,
    Caller { principal, .. }: Caller,
) -> Result<Response, ApiError> {
    let id = request_id(&id)?;
    match app.store.get_request(id).await? {
        Some((policy, r)) => {
            app.authorize(&principal, actions::POLICY_READ, &policy).await?;
            Ok(json(StatusCode::OK, &native_request(&r, Some(policy))))
        }
        None => Err(jitgate_core::lifecycle::request_not_found(id).into()),
    }
}

pub(super) async fn revoke(
    State(app): State<App>,
    Path(id): Path<String>,
    Caller { ctx, principal, query, .. }: Caller,
) -> Result<Response, ApiError> {
    let audit = app.audit(&ctx, &principal.name, ops::REQUEST_REVOKE, &format!("/api/v1/requests/{id}"));
    let (id, wait) = match request_id(&id).and_then(|id| Ok((id, crate::arm::wait_option(&query)?))) {
        Ok(x) => x,
        Err(e) => return Err(app.refuse(audit, e).await),
    };
    let request = revoke_request(&app, &principal, id, audit).await?;
    answer_request(&app, &request, wait).await
}

/// Ends a request's grants: the authorization, store change, audit and wake-up shared by the
/// API and the portal's Revoke.
pub(crate) async fn revoke_request(
    app: &App,
    principal: &jitgate_store::Principal,
    id: i64,
    mut audit: jitgate_core::audit::AuditEvent,
) -> Result<jitgate_store::AccessRequestRecord, ApiError> {
    // The requester may end their own grants ("I'm done"); anyone else needs to be able
    // to change the policy.
    if let Some((policy, request)) = app.store.get_request(id).await? {
        let action = if request.requestor == principal.name { actions::POLICY_INITIATE } else { actions::POLICY_WRITE };
        app.authorize_change(principal, action, &policy, &mut audit).await?;
    }
    let request = app.store.revoke_request(id, &principal.name, audit).await?;
    app.metrics.revoked();
    app.grants_changed();
    Ok(request)
}

pub(super) async fn approve(
    State(app): State<App>,
    Path(id): Path<String>,
    caller: Caller,
    body: Body,
) -> Result<Response, ApiError> {
    decide(&app, id, caller, body, true).await
}

pub(super) async fn deny(
    State(app): State<App>,
    Path(id): Path<String>,
    caller: Caller,
    body: Body,
) -> Result<Response, ApiError> {
    decide(&app, id, caller, body, false).await
}

/// `POST /api/v1/requests/{id}/approve[?wait=applied]` and `…/deny` `{"reason"}`: needs
/// `…/jitNetworkAccessPolicies/approve/action` on the policy; never on one's own request.
async fn decide(
    app: &App,
    id: String,
    Caller { ctx, principal, query, .. }: Caller,
    body: Body,
    approve: bool,
) -> Result<Response, ApiError> {
    let op = if approve { ops::REQUEST_APPROVE } else { ops::REQUEST_DENY };
    let audit = app.audit(&ctx, &principal.name, op, &format!("/api/v1/requests/{id}"));
    let checked = async {
        let id = request_id(&id)?;
        let wait = crate::arm::wait_option(&query)?;
        let bytes = read_body(app, body).await?;
        Ok::<_, ApiError>((id, wait, bytes))
    }
    .await;
    let (id, wait, bytes) = match checked {
        Ok(x) => x,
        Err(e) => return Err(app.refuse(audit, e).await),
    };
    // The reason is optional and free text: a body that is not JSON gives none.
    let reason = DecisionIn::parse_lenient(&bytes).reason;
    let request = decide_request(app, &principal, id, approve, reason, audit).await?;
    answer_request(app, &request, wait.filter(|_| approve)).await
}

/// Approves or denies a pending request (never one's own: the store refuses it): shared by the
/// API and the portal's Approve / Deny.
pub(crate) async fn decide_request(
    app: &App,
    principal: &jitgate_store::Principal,
    id: i64,
    approve: bool,
    reason: Option<String>,
    mut audit: jitgate_core::audit::AuditEvent,
) -> Result<jitgate_store::AccessRequestRecord, ApiError> {
    if let Some((policy, _)) = app.store.get_request(id).await? {
        audit.resource_id = policy.clone();
        app.authorize_change(principal, actions::POLICY_APPROVE, &policy, &mut audit).await?;
    }
    let request = app.store.decide_request(id, approve, &principal.name, reason, app.clock.now(), audit).await?;
    app.metrics.decided(approve);
    app.grants_changed();
    app.sweeper.notify_one();
    Ok(request)
}

/// `POST /api/v1/requests/{id}/extend` `{"duration":"PT1H"}` or `{"endTimeUtc":…}`: moves the
/// end of a live grant, at most the port's maximum from now. The requester may extend their own.
pub(super) async fn extend(
    State(app): State<App>,
    Path(id): Path<String>,
    Caller { ctx, principal, query, .. }: Caller,
    body: Body,
) -> Result<Response, ApiError> {
    let audit = app.audit(&ctx, &principal.name, ops::REQUEST_EXTEND, &format!("/api/v1/requests/{id}"));
    let now = app.clock.now();
    let checked = async {
        let id = request_id(&id)?;
        let wait = crate::arm::wait_option(&query)?;
        let bytes = read_body(&app, body).await?;
        let input: ExtendIn = parse_json(&bytes)?;
        let bad = |m: String| ApiError::bad_request("InvalidExtension", m);
        let new_end = match (input.duration.as_deref(), input.end_time_utc.as_deref()) {
            (Some(d), None) => now + AccessDuration::parse(d).map_err(|e| bad(e.0))?.duration(),
            (None, Some(t)) => datetime::parse(t).map_err(bad)?,
            _ => return Err(bad("set exactly one of duration and endTimeUtc".into())),
        };
        Ok::<_, ApiError>((id, wait, new_end))
    }
    .await;
    let (id, wait, new_end) = match checked {
        Ok(x) => x,
        Err(e) => return Err(app.refuse(audit, e).await),
    };
    let request = extend_request(&app, &principal, id, new_end, audit).await?;
    answer_request(&app, &request, wait).await
}

/// Moves the end of a request's live grants: shared by the API and the portal's Extend.
pub(crate) async fn extend_request(
    app: &App,
    principal: &jitgate_store::Principal,
    id: i64,
    new_end: time::OffsetDateTime,
    mut audit: jitgate_core::audit::AuditEvent,
) -> Result<jitgate_store::AccessRequestRecord, ApiError> {
    if let Some((policy, request)) = app.store.get_request(id).await? {
        let action = if request.requestor == principal.name { actions::POLICY_INITIATE } else { actions::POLICY_WRITE };
        app.authorize_change(principal, action, &policy, &mut audit).await?;
    }
    let request = app.store.extend_request(id, new_end, app.clock.now(), audit).await?;
    app.grants_changed();
    app.sweeper.notify_one();
    Ok(request)
}

/// A request in the native API (see [`NativeRequestOut`]).
fn native_request(r: &jitgate_store::AccessRequestRecord, policy_id: Option<String>) -> NativeRequestOut {
    NativeRequestOut {
        request: request_out(r),
        policy_id,
        pending_extension_end_time_utc: r.pending_extension.map(datetime::format),
    }
}

/// A request after a change to it: at once, or (`?wait=applied`) once its enforcement points
/// have applied the change.
async fn answer_request(
    app: &App,
    request: &jitgate_store::AccessRequestRecord,
    wait: Option<std::time::Duration>,
) -> Result<Response, ApiError> {
    let mut body = native_request(request, None);
    match wait {
        None => Ok(json(StatusCode::OK, &body)),
        Some(timeout) => {
            let vms: Vec<String> = request.grants.iter().map(|g| g.vm_id.clone()).collect();
            let states = app.enforcement_of(&vms).await?;
            crate::arm::mark_request(&mut body.request, &states);
            let revision = app.store.revision().await?;
            crate::arm::enforced_answer(app, &states, revision, timeout, StatusCode::OK, &body, request.id).await
        }
    }
}
