//! After Open ports: each grant's state and each enforcement point's progress until every one
//! has applied the change, then the connection details. Live over server-sent events woken by
//! the same notification as `?wait=applied` (agents' reports); without JavaScript the page
//! reloads itself until done.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};

use jitgate_core::enforcement::AgentMode;
use jitgate_core::initiate::GrantStatus;
use jitgate_core::rbac::actions;
use jitgate_store::AccessRequestRecord;

use super::layout::{self, chip, grant_chip, Nav, Tone};
use super::{html, Fields, Viewer};
use crate::error::ApiError;
use crate::App;

/// How long the event stream follows a request before the page falls back to reloading.
const FOLLOW_FOR: Duration = Duration::from_secs(120);

struct Watch {
    ids: Vec<i64>,
    revision: u64,
}

fn parse(uri: &Uri) -> Result<Watch, ApiError> {
    let f = Fields::parse(uri.query().unwrap_or("").as_bytes());
    let ids: Vec<i64> = f.all("id").filter_map(|i| crate::api::request_id(i).ok()).take(20).collect();
    let revision = f.get("rev").and_then(|r| r.parse::<u64>().ok()).unwrap_or(0);
    if ids.is_empty() {
        return Err(ApiError::bad_request("InvalidRequestId", "name the requests to follow"));
    }
    Ok(Watch { ids, revision })
}

/// The requests the viewer may see: their own, or any of a policy they may read.
async fn load(app: &App, viewer: &Viewer, ids: &[i64]) -> Result<Vec<AccessRequestRecord>, ApiError> {
    let mut out = Vec::new();
    for id in ids {
        let Some((policy, r)) = app.store.get_request(*id).await? else {
            return Err(jitgate_core::lifecycle::request_not_found(*id).into());
        };
        if r.requestor != viewer.principal.name {
            app.authorize(&viewer.principal, actions::POLICY_READ, &policy).await?;
        }
        out.push(r);
    }
    Ok(out)
}

/// The progress section and whether it is final.
async fn fragment(app: &App, viewer: &Viewer, w: &Watch) -> Result<(Markup, bool), ApiError> {
    let requests = load(app, viewer, &w.ids).await?;
    let now = app.clock.now();
    let live: Vec<String> = requests
        .iter()
        .flat_map(|r| &r.grants)
        .filter(|g| g.status == GrantStatus::Initiated && g.end_time > now)
        .map(|g| g.vm_id.clone())
        .collect();
    let agents = app.store.agents_for_vms(&live).await?;
    let waiting: Vec<&str> =
        agents.iter().filter(|a| a.applied_revision < w.revision).map(|a| a.name.as_str()).collect();
    let failed: Vec<String> = agents
        .iter()
        .filter(|a| a.applied_revision >= w.revision && a.nft_usable == Some(false))
        .map(|a| format!("{}: {}", a.name, a.nft_error.as_deref().unwrap_or("nftables unusable")))
        .collect();
    let done = waiting.is_empty();
    let pending = requests.iter().flat_map(|r| &r.grants).any(|g| g.status == GrantStatus::Pending);
    let mut vms = std::collections::HashMap::new();
    for g in requests.iter().flat_map(|r| &r.grants) {
        if !vms.contains_key(&g.vm_id) {
            if let Ok(id) = jitgate_core::VmId::parse(&g.vm_id) {
                vms.insert(g.vm_id.clone(), app.store.get_vm(&id).await?);
            }
        }
    }
    let markup = html! {
        @if !done {
            div.notice role="status" { "Opening ports… waiting for " (waiting.join(", ")) " to apply the change." }
        } @else if !failed.is_empty() {
            div.notice.error role="alert" { "Recorded, but not enforced: " (failed.join("; ")) }
        } @else if live.is_empty() && pending {
            div.notice role="status" { "Pending approval: the ports open once an approver approves the request (see " a href="/access" { "My access" } ")." }
        } @else if agents.is_empty() && !live.is_empty() {
            div.notice.error role="alert" { "Recorded, but no enforcement point enforces these VMs." }
        } @else {
            div.notice.ok role="status" { "Done: every enforcement point has applied the change." }
        }
        @for r in &requests {
            h2 { "Request " (r.id) }
            div.table-wrap tabindex="0" role="region" aria-label={ "Request " (r.id) } { table {
                thead { tr { th { "Virtual machine" } th { "Port" } th { "State" } th { "Enforcement" } th { "Connect to" } th { "Ends" } } }
                tbody {
                    @for g in &r.grants {
                        @let vm = vms.get(&g.vm_id).and_then(|v| v.as_ref());
                        @let agent = vm.and_then(|v| v.agent.as_ref());
                        tr {
                            td { (g.vm_id.rsplit('/').next().unwrap_or(&g.vm_id)) }
                            td { (g.number) }
                            td { (grant_chip(g, now)) }
                            td {
                                @match agent {
                                    None => (chip(Tone::Warn, "No enforcement point")),
                                    Some(a) if g.status != GrantStatus::Initiated => span.muted { (a.name) },
                                    Some(a) if a.applied_revision >= w.revision => { (chip(Tone::Ok, "Applied")) " " span.muted { (a.name) } },
                                    Some(a) => { (chip(Tone::Warn, "Applying")) " " span.muted { (a.name) } },
                                }
                            }
                            td {
                                @if let Some(target) = connect_to(g, vm) {
                                    @if done && g.status == GrantStatus::Initiated {
                                        code { (target) } " "
                                        button type="button" data-copy=(target) aria-label={ "Copy " (target) } { "Copy" }
                                    } @else { span.muted { (target) } }
                                }
                            }
                            td { (layout::when(g.end_time)) }
                        }
                    }
                }
            } }
        }
    };
    Ok((markup, done))
}

/// Where to connect for a grant: the gateway's address and mapped port, or the VM's own.
fn connect_to(g: &jitgate_core::records::GrantRecord, vm: Option<&jitgate_store::Vm>) -> Option<String> {
    let gateway = vm.and_then(|v| v.agent.as_ref()).is_some_and(|a| a.mode == AgentMode::Gateway);
    if gateway {
        let ip = g.public_ip.as_deref()?;
        let port = g.mapped_port.unwrap_or(g.number);
        return Some(if ip.contains(':') { format!("[{ip}]:{port}") } else { format!("{ip}:{port}") });
    }
    let addr = vm.and_then(|v| v.spec.address)?;
    Some(match addr {
        std::net::IpAddr::V6(a) => format!("[{a}]:{}", g.number),
        a => format!("{a}:{}", g.number),
    })
}

/// `GET /requests/progress?id=…&rev=…`.
pub async fn page(State(app): State<App>, viewer: Viewer, uri: Uri) -> Response {
    let watch = match parse(&uri) {
        Ok(w) => w,
        Err(e) => return super::error_page(Some(&viewer), e),
    };
    let (section, done) = match fragment(&app, &viewer, &watch).await {
        Ok(x) => x,
        Err(e) => return super::error_page(Some(&viewer), e),
    };
    let events = format!("/requests/events?{}", uri.query().unwrap_or(""));
    let body = html! {
        h1 { "Open ports" }
        section #progress aria-live="polite" data-progress-url=[(!done).then_some(events)] { (section) }
        p { a href="/access" { "My access" } " · " a href="/jit" { "Back to JIT VM access" } }
    };
    html(StatusCode::OK, layout::page_with(&viewer, "Open ports", Nav::Jit, body, (!done).then_some(2)))
}

/// `GET /requests/events?id=…&rev=…`: `progress` events, then one `done`.
pub async fn events(State(app): State<App>, viewer: Viewer, uri: Uri) -> Response {
    let watch = match parse(&uri) {
        Ok(w) => w,
        Err(e) => return e.into_response(),
    };
    let deadline = tokio::time::Instant::now() + FOLLOW_FOR;
    let state = (app, viewer, watch, true, false);
    let stream = futures_util::stream::unfold(state, move |(app, viewer, watch, first, finished)| async move {
        if finished || tokio::time::Instant::now() >= deadline {
            return None;
        }
        if !first {
            let notified = app.applied.notified();
            let mut changes = app.changes.subscribe();
            tokio::select! {
                _ = notified => {}
                _ = changes.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
        let (event, done) = match fragment(&app, &viewer, &watch).await {
            Ok((m, done)) => {
                (Event::default().event(if done { "done" } else { "progress" }).data(m.into_string()), done)
            }
            Err(e) => {
                (Event::default().event("done").data(html! { div.notice.error { (e.message) } }.into_string()), true)
            }
        };
        Some((Ok::<_, Infallible>(event), (app, viewer, watch, false, done)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}
