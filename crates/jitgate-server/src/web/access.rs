//! My access (the viewer's live, pending and scheduled grants with time left, Revoke and
//! Extend) and Approvals (pending requests with Approve / Deny for those allowed to decide them;
//! one's own are not offered, and the store refuses them as in the API). Each button posts to
//! the same function the native API's handler calls.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use maud::{html, Markup};

use jitgate_core::audit::ops;
use jitgate_core::initiate::GrantStatus;
use jitgate_core::rbac::actions;
use jitgate_core::AccessDuration;
use jitgate_store::AccessRequestRecord;

use super::layout::{self, csrf, grant_chip, Nav};
use super::{error_page, html, redirect, Fields, Viewer};
use crate::error::ApiError;
use crate::App;

/// The most requests listed.
const LIMIT: usize = 200;

fn time_left(end: time::OffsetDateTime, now: time::OffsetDateTime) -> String {
    let left = (end - now).whole_seconds().max(0);
    let (h, m) = (left / 3600, (left % 3600) / 60);
    if left == 0 {
        "ended".into()
    } else if h > 0 {
        format!("{h} h {m} min")
    } else {
        format!("{m} min {} s", left % 60)
    }
}

fn notice(uri: &Uri) -> Option<&'static str> {
    let f = Fields::parse(uri.query().unwrap_or("").as_bytes());
    match f.get("done") {
        Some("revoked") => Some("Revoked: the ports are closing."),
        Some("extended") => Some("Extended."),
        Some("approved") => Some("Approved: the ports are opening."),
        Some("denied") => Some("Denied."),
        _ => None,
    }
}

/// `GET /access`.
pub async fn page(State(app): State<App>, viewer: Viewer, uri: Uri) -> Response {
    let mine = match app.store.open_requests(Some(&viewer.principal.name), LIMIT).await {
        Ok(r) => r,
        Err(e) => return error_page(Some(&viewer), e.into()),
    };
    let pending = match pending_for(&app, &viewer).await {
        Ok(p) => p,
        Err(e) => return error_page(Some(&viewer), e),
    };
    let now = app.clock.now();
    let body = html! {
        h1 { "My access" }
        @if let Some(n) = notice(&uri) { div.notice.ok role="status" { (n) } }
        h2 { "Active and pending requests" }
        (my_table(&viewer, &mine, now))
        @if !pending.is_empty() {
            h2 { "Waiting for your approval" }
            (pending_table(&viewer, &pending, now))
        }
    };
    html(StatusCode::OK, layout::page(&viewer, "My access", Nav::MyAccess, body))
}

/// `GET /approvals`.
pub async fn approvals(State(app): State<App>, viewer: Viewer, uri: Uri) -> Response {
    let pending = match pending_for(&app, &viewer).await {
        Ok(p) => p,
        Err(e) => return error_page(Some(&viewer), e),
    };
    let now = app.clock.now();
    let body = html! {
        h1 { "Approvals" }
        @if let Some(n) = notice(&uri) { div.notice.ok role="status" { (n) } }
        @if pending.is_empty() { p.muted { "No request is waiting for an approver you can act as." } }
        @else { (pending_table(&viewer, &pending, now)) }
    };
    html(StatusCode::OK, layout::page(&viewer, "Approvals", Nav::Approvals, body))
}

/// Pending requests on policies the viewer may approve for.
async fn pending_for(app: &App, viewer: &Viewer) -> Result<Vec<(String, AccessRequestRecord)>, ApiError> {
    let grants = app.authz.grants(app.store.as_ref(), &viewer.principal).await?;
    let all = app.store.open_requests(None, LIMIT).await?;
    Ok(all
        .into_iter()
        .filter(|(policy, r)| {
            r.grants.iter().any(|g| g.status == GrantStatus::Pending) && grants.permits(actions::POLICY_APPROVE, policy)
        })
        .collect())
}

fn vm_name(id: &str) -> &str {
    id.rsplit('/').next().unwrap_or(id)
}

fn my_table(viewer: &Viewer, requests: &[(String, AccessRequestRecord)], now: time::OffsetDateTime) -> Markup {
    html! {
        @if requests.is_empty() { p.muted { "You hold no access right now. Ask for some on " a href="/jit" { "JIT VM access" } "." } }
        @else {
            div.table-wrap tabindex="0" role="region" aria-label="My requests" { table {
                thead { tr { th { "Request" } th { "Virtual machine" } th { "Port" } th { "State" } th { "Time left" } th { span.visually-hidden { "Actions" } } } }
                tbody {
                    @for (_, r) in requests {
                        @for (k, g) in r.grants.iter().enumerate() {
                            tr {
                                td { @if k == 0 { (r.id) } }
                                td { (vm_name(&g.vm_id)) }
                                td { (g.number) }
                                td { (grant_chip(g, now)) }
                                td {
                                    @if g.status == GrantStatus::Initiated && g.end_time > now {
                                        span data-ends=(layout::iso_seconds(g.end_time)) { (time_left(g.end_time, now)) }
                                    } @else { span.muted { "—" } }
                                }
                                td {
                                    @if k == 0 {
                                        form.inline method="post" action={ "/access/" (r.id) "/revoke" } {
                                            (csrf(viewer))
                                            button type="submit" aria-label={ "Revoke request " (r.id) } { "Revoke" }
                                        }
                                        " "
                                        @if r.grants.iter().any(|g| g.status == GrantStatus::Initiated && g.end_time > now) {
                                            form.inline method="post" action={ "/access/" (r.id) "/extend" } {
                                                (csrf(viewer))
                                                label.visually-hidden for={ "extend-" (r.id) } { "Extend request " (r.id) " by" }
                                                select #{ "extend-" (r.id) } name="duration" {
                                                    option value="PT30M" { "30 minutes" }
                                                    option value="PT1H" selected { "1 hour" }
                                                    option value="PT3H" { "3 hours" }
                                                }
                                                " "
                                                button type="submit" aria-label={ "Extend request " (r.id) } { "Extend" }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            } }
        }
    }
}

fn pending_table(viewer: &Viewer, requests: &[(String, AccessRequestRecord)], now: time::OffsetDateTime) -> Markup {
    html! {
        div.table-wrap tabindex="0" role="region" aria-label="Requests waiting for approval" { table {
            thead { tr { th { "Request" } th { "Requester" } th { "Ports" } th { "Justification" } th { "Asked" } th { span.visually-hidden { "Decision" } } } }
            tbody {
                @for (_, r) in requests {
                    tr {
                        td { (r.id) }
                        td { (r.requestor) }
                        td.wrap {
                            @for g in r.grants.iter().filter(|g| g.status == GrantStatus::Pending) {
                                (vm_name(&g.vm_id)) ":" (g.number) " " (grant_chip(g, now)) " "
                            }
                        }
                        td.wrap { (r.justification.as_deref().unwrap_or("—")) }
                        td { (layout::when(r.start_time)) }
                        td {
                            @if r.requestor == viewer.principal.name {
                                span.muted { "Your own request: another approver decides it." }
                            } @else {
                                form.inline method="post" action={ "/access/" (r.id) "/approve" } {
                                    (csrf(viewer))
                                    button.primary type="submit" aria-label={ "Approve request " (r.id) } { "Approve" }
                                }
                                " "
                                form.inline method="post" action={ "/access/" (r.id) "/deny" } {
                                    (csrf(viewer))
                                    button type="submit" aria-label={ "Deny request " (r.id) } { "Deny" }
                                }
                            }
                        }
                    }
                }
            }
        } }
    }
}

/// `POST /access/{id}/{revoke|extend|approve|deny}`.
pub async fn act(
    State(app): State<App>,
    viewer: Viewer,
    Path((id, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (op, back) = match action.as_str() {
        "revoke" => (ops::REQUEST_REVOKE, "/access"),
        "extend" => (ops::REQUEST_EXTEND, "/access"),
        "approve" => (ops::REQUEST_APPROVE, "/approvals"),
        "deny" => (ops::REQUEST_DENY, "/approvals"),
        _ => return error_page(Some(&viewer), ApiError::not_found("NotFound", format!("no action '{action}'"))),
    };
    let resource = format!("/api/v1/requests/{id}");
    let f = match super::checked_form(&app, &viewer, &headers, body, op, &resource).await {
        Ok(f) => f,
        Err(refused) => return refused,
    };
    let audit = app.audit(&viewer.ctx, &viewer.principal.name, op, &resource);
    let id = match crate::api::request_id(&id) {
        Ok(id) => id,
        Err(e) => return error_page(Some(&viewer), app.refuse(audit, e).await),
    };
    let p = &viewer.principal;
    let result = match action.as_str() {
        "revoke" => crate::api::revoke_request(&app, p, id, audit).await.map(|_| "revoked"),
        "extend" => {
            let duration = f.get("duration").unwrap_or("PT1H");
            match AccessDuration::parse(duration) {
                Ok(d) => {
                    let end = app.clock.now() + d.duration();
                    crate::api::extend_request(&app, p, id, end, audit).await.map(|_| "extended")
                }
                Err(e) => Err(app.refuse(audit, ApiError::bad_request("InvalidExtension", e.0)).await),
            }
        }
        "approve" => crate::api::decide_request(&app, p, id, true, None, audit).await.map(|_| "approved"),
        _ => {
            let reason = f.text("reason").map(str::to_owned);
            crate::api::decide_request(&app, p, id, false, reason, audit).await.map(|_| "denied")
        }
    };
    match result {
        Ok(done) => redirect(&format!("{back}?done={done}")),
        Err(e) => error_page(Some(&viewer), e),
    }
}
