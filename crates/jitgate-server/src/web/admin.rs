//! Access control (role definitions and assignments, Create least-privileged requester role,
//! assign a role at a scope) and Enforcement points (agents with their last contact and state,
//! one-time join tokens shown once with the command that runs the agent). Every form calls the
//! function the native API's handler calls.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use maud::{html, Markup};

use jitgate_api_types::agent::{JoinTokenIn, JoinTokenOut};
use jitgate_api_types::rbac::{RoleAssignmentIn, RoleDefinitionIo};
use jitgate_core::rbac::{actions, built_in_roles, REQUESTER_ACTIONS};

use super::layout::{self, chip, csrf, Nav, Tone};
use super::{error_page, html, redirect, Fields, Viewer};
use crate::error::ApiError;
use crate::App;

/// The name the least-privileged role gets unless another is typed.
pub const REQUESTER_ROLE: &str = "JIT Access Role";

fn done(uri: &Uri) -> Option<&'static str> {
    match Fields::parse(uri.query().unwrap_or("").as_bytes()).get("done") {
        Some("role") => Some("The least-privileged requester role was created."),
        Some("assigned") => Some("The role was assigned."),
        _ => None,
    }
}

/// A scope to suggest: the first subscription with a VM, else `/`.
async fn suggested_scope(app: &App) -> String {
    match app.store.list_vms().await {
        Ok(vms) => vms.first().map(|v| format!("/subscriptions/{}", v.spec.id.subscription())).unwrap_or("/".into()),
        Err(_) => "/".into(),
    }
}

/// `GET /access-control`.
pub async fn access_control(State(app): State<App>, viewer: Viewer, uri: Uri) -> Response {
    match access_control_page(&app, &viewer, done(&uri), None).await {
        Ok(m) => html(StatusCode::OK, m),
        Err(e) => error_page(Some(&viewer), e),
    }
}

async fn access_control_page(
    app: &App,
    viewer: &Viewer,
    notice: Option<&str>,
    error: Option<&ApiError>,
) -> Result<Markup, ApiError> {
    let grants = app.authz.grants(app.store.as_ref(), &viewer.principal).await?;
    let mut roles = built_in_roles();
    roles.extend(app.store.list_role_definitions().await?);
    let assignments: Vec<_> = app
        .store
        .list_role_assignments(None)
        .await?
        .into_iter()
        .filter(|a| a.principal == viewer.principal.name || grants.permits(actions::ROLE_ASSIGNMENT_READ, &a.scope))
        .collect();
    let may_define = grants.allowing_somewhere(actions::ROLE_DEFINITION_WRITE).is_some();
    let may_assign = grants.allowing_somewhere(actions::ROLE_ASSIGNMENT_WRITE).is_some();
    let principals = if grants.allowing_somewhere(actions::PRINCIPAL_READ).is_some() {
        app.store.list_principals().await?
    } else {
        vec![]
    };
    let scope = suggested_scope(app).await;
    let body = html! {
        h1 { "Access control" }
        @if let Some(n) = notice { div.notice.ok role="status" { (n) } }
        @if let Some(e) = error { div.notice.error role="alert" { (e.message) } }
        div.cards {
            @if may_define {
                section.card aria-labelledby="requester-role" {
                    h2 #requester-role { "Least-privileged requester" }
                    p.muted { "A role that may read JIT policies and VMs and request access, nothing else (the seed's Set-JitLeastPrivilegedRole)." }
                    form method="post" action="/access-control/requester-role" {
                        (csrf(viewer))
                        div.field { label for="role-name" { "Role name" } input #role-name name="name" value=(REQUESTER_ROLE) required; }
                        div.field { label for="role-scope" { "Assignable scope" } input #role-scope name="scope" value=(scope) required; }
                        button.primary type="submit" { "Create least-privileged requester role" }
                    }
                }
            }
            @if may_assign {
                section.card aria-labelledby="assign" {
                    h2 #assign { "Assign a role" }
                    form method="post" action="/access-control/assignments" {
                        (csrf(viewer))
                        div.field {
                            label for="assign-principal" { "Principal" }
                            @if principals.is_empty() { input #assign-principal name="principal" required; }
                            @else { select #assign-principal name="principal" { @for p in &principals { option value=(p.name) { (p.label()) } } } }
                        }
                        div.field {
                            label for="assign-role" { "Role" }
                            select #assign-role name="role" { @for r in &roles { option value=(r.name) { (r.name) } } }
                        }
                        div.field { label for="assign-scope" { "Scope" } input #assign-scope name="scope" value=(scope) required; }
                        button.primary type="submit" { "Assign role" }
                    }
                }
            }
        }
        h2 { "Role assignments" }
        div.table-wrap tabindex="0" role="region" aria-label="Role assignments" { table {
            thead { tr { th { "Principal" } th { "Role" } th { "Scope" } th { "Since" } } }
            tbody {
                @for a in &assignments {
                    tr { td { (a.principal) } td { (a.role) } td.wrap { code { (a.scope) } } td { (layout::when(a.created)) } }
                }
            }
        } }
        h2 { "Role definitions" }
        div.table-wrap tabindex="0" role="region" aria-label="Role definitions" { table {
            thead { tr { th { "Role" } th { "Type" } th { "Actions" } th { "Not actions" } th { "Assignable scopes" } } }
            tbody {
                @for r in &roles {
                    tr {
                        td { (r.name) }
                        td { @if r.built_in { (chip(Tone::Info, "Built-in")) } @else { (chip(Tone::Ok, "Custom")) } }
                        td.wrap { @for a in &r.actions { code { (a) } br; } }
                        td.wrap { @for a in &r.not_actions { code { (a) } br; } }
                        td.wrap { @for s in &r.assignable_scopes { code { (s) } br; } }
                    }
                }
            }
        } }
    };
    Ok(layout::page(viewer, "Access control", Nav::AccessControl, body))
}

/// `POST /access-control/requester-role`: the role of `jitgate role create-least-privileged`.
pub async fn requester_role(State(app): State<App>, viewer: Viewer, headers: HeaderMap, body: Body) -> Response {
    let op = actions::ROLE_DEFINITION_WRITE;
    let f = match super::checked_form(&app, &viewer, &headers, body, op, "/api/v1/roleDefinitions").await {
        Ok(f) => f,
        Err(refused) => return refused,
    };
    let name = f.text("name").unwrap_or(REQUESTER_ROLE).to_owned();
    let scope = f.text("scope").unwrap_or("/").to_owned();
    let input = serde_json::from_value::<RoleDefinitionIo>(serde_json::json!({
        "Name": name,
        "IsCustom": true,
        "Description": "Least-privileged just-in-time requester: request access and see JIT policies, nothing else.",
        "Actions": REQUESTER_ACTIONS,
        "NotActions": [],
        "AssignableScopes": [scope],
    }))
    .map_err(|e| ApiError::bad_request("InvalidRoleDefinition", e.to_string()));
    match crate::api_rbac::put_role_definition(&app, &viewer.ctx, &viewer.principal, &name, input).await {
        Ok(_) => redirect("/access-control?done=role"),
        Err(e) => refused_page(&app, &viewer, e).await,
    }
}

/// `POST /access-control/assignments`.
pub async fn assign(State(app): State<App>, viewer: Viewer, headers: HeaderMap, body: Body) -> Response {
    let op = actions::ROLE_ASSIGNMENT_WRITE;
    let f = match super::checked_form(&app, &viewer, &headers, body, op, "/api/v1/roleAssignments").await {
        Ok(f) => f,
        Err(refused) => return refused,
    };
    let text = |k: &str| f.text(k).map(str::to_owned);
    let input = RoleAssignmentIn { principal: text("principal"), role: text("role"), scope: text("scope") };
    match crate::api_rbac::assign_role(&app, &viewer.ctx, &viewer.principal, Ok(input)).await {
        Ok(_) => redirect("/access-control?done=assigned"),
        Err(e) => refused_page(&app, &viewer, e).await,
    }
}

/// The Access control page again with the API's refusal on top (a 403 stays an error page).
async fn refused_page(app: &App, viewer: &Viewer, e: ApiError) -> Response {
    if e.status == StatusCode::FORBIDDEN || e.status.is_server_error() {
        return error_page(Some(viewer), e);
    }
    match access_control_page(app, viewer, None, Some(&e)).await {
        Ok(m) => html(e.status, m),
        Err(e) => error_page(Some(viewer), e),
    }
}

/// `GET /enforcement-points`.
pub async fn enforcement_points(State(app): State<App>, viewer: Viewer, headers: HeaderMap) -> Response {
    match points_page(&app, &viewer, &headers, None, None).await {
        Ok(m) => html(StatusCode::OK, m),
        Err(e) => error_page(Some(&viewer), e),
    }
}

async fn points_page(
    app: &App,
    viewer: &Viewer,
    headers: &HeaderMap,
    created: Option<&JoinTokenOut>,
    error: Option<&ApiError>,
) -> Result<Markup, ApiError> {
    let grants = app.authz.grants(app.store.as_ref(), &viewer.principal).await?;
    let agents: Vec<_> = app
        .store
        .list_agents()
        .await?
        .into_iter()
        .filter(|a| grants.permits(actions::VM_READ, &crate::api::agent_scope(a)))
        .collect();
    let may_create = grants.allowing_somewhere(actions::VM_WRITE).is_some();
    let sub = suggested_scope(app).await.trim_start_matches("/subscriptions/").trim_start_matches('/').to_owned();
    let url = super::base_url(app, headers);
    let body = html! {
        h1 { "Enforcement points" }
        @if let Some(t) = created {
            div.notice.ok role="status" {
                p { strong { "Join token created." } " It is shown only now and works once, until " (t.expires_on) "." }
                code.secret { (t.token) }
                @if t.mode == "cloud" {
                    p { "Give it to the cloud connector: it joins with it once, then finds the account's instances itself." }
                } @else {
                    p { "Run on the " (if t.mode == "gateway" { "gateway" } else { "VM" }) " (as root, with the server's certificate in cert.pem):" }
                    @let cmd = format!("jitgate agent --server {url} --join-token {} --ca-cert cert.pem --state-dir /var/lib/jitgate-agent{}",
                        t.token, if t.mode == "gateway" { " --mode gateway" } else { "" });
                    code.secret { (cmd) }
                    button type="button" data-copy=(cmd) { "Copy command" }
                }
            }
        }
        @if let Some(e) = error { div.notice.error role="alert" { (e.message) } }
        @if may_create {
            details open[error.is_some()] {
                summary { "Create a join token" }
                form method="post" action="/enforcement-points/join-tokens" {
                    (csrf(viewer))
                    div.toolbar {
                        div.field { label for="jt-sub" { "Subscription" } input #jt-sub name="subscription" value=(sub) required; }
                        div.field { label for="jt-rg" { "Resource group" } input #jt-rg name="resourceGroup" required; }
                        div.field { label for="jt-loc" { "Location" } input #jt-loc name="location" value="westeurope" required; }
                        div.field { label for="jt-mode" { "Mode" } select #jt-mode name="mode" { option value="host" { "Host" } option value="gateway" { "Gateway" } option value="cloud" { "Cloud connector" } } }
                        div.field { label for="jt-vm" { "VM name (host mode, optional)" } input #jt-vm name="vm"; }
                    }
                    button.primary type="submit" { "Create join token" }
                }
            }
        }
        div.table-wrap tabindex="0" role="region" aria-label="Enforcement points" { table {
            thead { tr { th { "Name" } th { "Mode" } th { "Resource group" } th { "Last contact" } th { "State" } th { "Applied revision" } } }
            tbody {
                @for a in &agents {
                    tr {
                        td { (a.name) }
                        td { (a.mode.as_str()) }
                        td { (a.resource_group) " · " (a.location) }
                        td { @match a.last_seen { Some(t) => (layout::when(t)), None => span.muted { "Never" } } }
                        td {
                            @if app.is_stale(a) { (chip(Tone::Warn, "Stale")) " " }
                            @match a.nft_usable {
                                Some(true) => (chip(Tone::Ok, "Enforcing")),
                                Some(false) => { (chip(Tone::Bad, "nftables unusable")) " " span.muted { (a.nft_error.as_deref().unwrap_or("")) } },
                                None => (chip(Tone::Info, "No report yet")),
                            }
                        }
                        td { (a.applied_revision) }
                    }
                }
                @if agents.is_empty() { tr { td colspan="6" { "No enforcement point has joined yet." } } }
            }
        } }
    };
    Ok(layout::page(viewer, "Enforcement points", Nav::EnforcementPoints, body))
}

/// `POST /enforcement-points/join-tokens`: the token is shown once, on the page answered.
pub async fn join_token(State(app): State<App>, viewer: Viewer, headers: HeaderMap, body: Body) -> Response {
    let op = jitgate_core::audit::ops::JOIN_TOKEN_WRITE;
    let f = match super::checked_form(&app, &viewer, &headers, body, op, "/api/v1/agentTokens").await {
        Ok(f) => f,
        Err(refused) => return refused,
    };
    let text = |k: &str| f.text(k).map(str::to_owned);
    let input = JoinTokenIn {
        subscription: text("subscription"),
        resource_group: text("resourceGroup"),
        location: text("location"),
        mode: text("mode"),
        ttl: None,
        vm: text("vm"),
    };
    let created = crate::api::create_join_token(&app, &viewer.ctx, &viewer.principal, Ok(input)).await;
    let (status, page) = match &created {
        Ok(t) => (StatusCode::CREATED, points_page(&app, &viewer, &headers, Some(t), None).await),
        Err(e) if e.status == StatusCode::FORBIDDEN || e.status.is_server_error() => {
            return error_page(Some(&viewer), e.clone())
        }
        Err(e) => (e.status, points_page(&app, &viewer, &headers, None, Some(e)).await),
    };
    match page {
        Ok(m) => html(status, m),
        Err(e) => error_page(Some(&viewer), e),
    }
}
