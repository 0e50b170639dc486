//! The Request access panel and Open ports: for each selected VM the ports to open, the source
//! (My IP as the server sees it, or a range), the time up to each port's maximum and a
//! justification. Open ports hands one initiate per policy to [`crate::arm::initiate_request`],
//! the ARM API's code path, then shows the progress page.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use maud::{html, Markup};

use jitgate_core::audit::ops;
use jitgate_core::initiate::{InitiateDraft, InitiatePortDraft, InitiateVmDraft};
use jitgate_core::inventory::View;
use jitgate_core::{Policy, PolicyVm, VmId};
use jitgate_store::Vm;

use super::jit::with_panel;
use super::layout::csrf;
use super::{error_page, redirect, Fields, Viewer};
use crate::error::ApiError;
use crate::App;

/// A selected VM with the policy rules of its ports.
pub struct Target {
    pub vm: Vm,
    pub policy: Policy,
}

impl Target {
    pub fn rules(&self) -> Option<&PolicyVm> {
        self.policy.vm(&self.vm.spec.id.key())
    }
}

/// The VMs named by `vm` fields, each with its policy; a VM without one is an error.
pub async fn targets(app: &App, f: &Fields) -> Result<Vec<Target>, ApiError> {
    let mut out = Vec::new();
    let mut seen = Vec::new();
    for raw in f.all("vm") {
        if seen.contains(&raw) {
            continue;
        }
        seen.push(raw);
        let id = VmId::parse(raw).map_err(|m| ApiError::bad_request("InvalidVirtualMachine", m))?;
        let vm = app
            .store
            .get_vm(&id)
            .await?
            .ok_or_else(|| ApiError::not_found("VirtualMachineNotFound", format!("no VM '{raw}'")))?;
        let policy = app.store.policy_of_vm(&id).await?.ok_or_else(|| {
            ApiError::bad_request("JitNotEnabled", format!("JIT is not enabled on '{}': enable it first", id.name()))
        })?;
        out.push(Target { vm, policy });
    }
    if out.is_empty() {
        return Err(ApiError::bad_request("NoVirtualMachineSelected", "Select at least one VM first."));
    }
    Ok(out)
}

/// Hours a window may last, as choices: 1, 2, … up to the maximum (or the maximum alone when
/// it is under an hour), as ISO-8601 durations with their words.
pub fn windows(max: time::Duration) -> Vec<(String, String)> {
    let hours = max.whole_hours();
    if hours < 1 {
        let m = max.whole_minutes().max(1);
        return vec![(format!("PT{m}M"), format!("{m} minutes"))];
    }
    (1..=hours).map(|h| (format!("PT{h}H"), if h == 1 { "1 hour".into() } else { format!("{h} hours") })).collect()
}

/// `GET /jit/request?vm=…`: the panel.
pub async fn panel(State(app): State<App>, viewer: Viewer, uri: Uri) -> Response {
    let f = Fields::parse(uri.query().unwrap_or("").as_bytes());
    match targets(&app, &f).await {
        Ok(t) => render(&app, &viewer, &t, &Fields::default(), None, StatusCode::OK).await,
        Err(e) => error_page(Some(&viewer), e),
    }
}

async fn render(
    app: &App,
    viewer: &Viewer,
    targets: &[Target],
    previous: &Fields,
    error: Option<&ApiError>,
    status: StatusCode,
) -> Response {
    let form = form(viewer, targets, previous, error, "Open ports");
    with_panel(app, viewer, View::Configured, status, "Request access", form).await
}

/// The form (also the Connect section of a VM's page).
pub fn form(viewer: &Viewer, targets: &[Target], previous: &Fields, error: Option<&ApiError>, submit: &str) -> Markup {
    let fresh = previous.0.is_empty();
    // The policy asks for a justification where a port needs an approver.
    let needs_reason = targets.iter().filter_map(Target::rules).flat_map(|v| &v.ports).any(|r| r.require_approval);
    let source = previous.get("source").unwrap_or("myip");
    html! {
        form method="post" action="/jit/request" {
            (csrf(viewer))
            @if let Some(e) = error { div.notice.error role="alert" { (e.message) } }
            @for (i, t) in targets.iter().enumerate() {
                input type="hidden" name="vm" value=(t.vm.spec.id.as_str());
                fieldset {
                    legend { strong { (t.vm.spec.id.name()) } " " span.muted { (t.vm.spec.id.resource_group()) } }
                    @if let Some(rules) = t.rules() {
                        table.ports {
                            thead { tr { th { "Open" } th { "Port" } th { "Protocol" } th { "Time range" } } }
                            tbody {
                                @for r in &rules.ports {
                                    @let key = format!("{i}:{}", r.number);
                                    @let id = format!("open-{i}-{}", r.number);
                                    @let on = fresh || previous.all("port").any(|p| p == key);
                                    tr {
                                        td { input #(id) type="checkbox" name="port" value=(key) checked[on]; }
                                        td { label for=(id) { "Port " (r.number) } }
                                        td { (if r.protocol.as_str() == "*" { "Any" } else { r.protocol.as_str() }) }
                                        td {
                                            @let name = format!("time.{i}.{}", r.number);
                                            @let choices = windows(r.max_duration.duration());
                                            @let chosen = previous.get(&name).map(str::to_owned).or_else(|| choices.last().map(|c| c.0.clone()));
                                            label.visually-hidden for=(name) { "Time range for port " (r.number) }
                                            select #(name) name=(name) {
                                                @for (v, l) in &choices { option value=(v) selected[chosen.as_deref() == Some(v.as_str())] { (l) } }
                                            }
                                            @if r.require_approval { " " span.chip.warn { "Needs approval" } }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            fieldset {
                legend { "Source" }
                div { label { input type="radio" name="source" value="myip" checked[source != "range"]; " My IP (" (viewer.ctx.caller_ip) ")" } }
                div {
                    label { input type="radio" name="source" value="range" checked[source == "range"]; " IP range" }
                    " "
                    label.visually-hidden for="range" { "Allowed source IP range" }
                    input #range type="text" name="range" value=(previous.get("range").unwrap_or("")) placeholder="203.0.113.0/24";
                }
            }
            div.field {
                label for="justification" { "Justification" }
                @if needs_reason { p.muted #justification-hint { "Required: an approver reads it before the ports open." } }
                textarea #justification name="justification" maxlength="2048" required[needs_reason]
                    aria-describedby=[needs_reason.then_some("justification-hint")] { (previous.get("justification").unwrap_or("")) }
            }
            div.actions { button.primary type="submit" { (submit) } }
        }
    }
}

/// `POST /jit/request`: one initiate per policy, then the progress page.
pub async fn open(State(app): State<App>, viewer: Viewer, headers: HeaderMap, body: Body) -> Response {
    let f = match super::checked_form(&app, &viewer, &headers, body, ops::POLICY_INITIATE, "/jit/request").await {
        Ok(f) => f,
        Err(refused) => return refused,
    };
    let targets = match targets(&app, &f).await {
        Ok(t) => t,
        Err(e) => return error_page(Some(&viewer), e),
    };
    let range = f.text("range").filter(|_| f.get("source") == Some("range")).map(str::to_owned);
    let justification = f.text("justification").map(str::to_owned);
    // One draft per policy, its VMs in the order chosen.
    let mut drafts: BTreeMap<String, (jitgate_core::PolicyRef, InitiateDraft)> = BTreeMap::new();
    for (i, t) in targets.iter().enumerate() {
        let Some(rules) = t.rules() else { continue };
        let ports: Vec<InitiatePortDraft> = rules
            .ports
            .iter()
            .filter(|r| f.all("port").any(|p| p == format!("{i}:{}", r.number)))
            .map(|r| InitiatePortDraft {
                number: Some(i64::from(r.number)),
                end_time: None,
                duration: Some(f.get(&format!("time.{i}.{}", r.number)).unwrap_or("PT1H").to_owned()),
                // None: the requester's own address as the server sees it, as in the API.
                prefix: range.clone(),
                prefixes: None,
            })
            .collect();
        if ports.is_empty() {
            continue;
        }
        let entry = drafts.entry(t.policy.reference.key()).or_insert_with(|| {
            let draft = InitiateDraft { vms: vec![], justification: justification.clone(), start_time: None };
            (t.policy.reference.clone(), draft)
        });
        entry.1.vms.push(InitiateVmDraft { id: t.vm.spec.id.as_str().to_owned(), ports });
    }
    if drafts.is_empty() {
        let e = ApiError::bad_request("NoPortSelected", "Choose at least one port to open.");
        return render(&app, &viewer, &targets, &f, Some(&e), StatusCode::BAD_REQUEST).await;
    }
    let mut ids = Vec::new();
    for (_, (r, draft)) in drafts {
        let audit = app.audit(&viewer.ctx, &viewer.principal.name, ops::POLICY_INITIATE, &r.id());
        if let Err(e) = app.rate_limit(crate::limits::Action::Initiate, &viewer.principal.name, &audit).await {
            return render(&app, &viewer, &targets, &f, Some(&e), e.status).await;
        }
        match crate::arm::initiate_request(&app, &viewer.ctx, &viewer.principal, r, Ok(draft), audit).await {
            Ok(outcome) => ids.push(outcome.request.id),
            Err(e) if e.status == StatusCode::FORBIDDEN || e.status.is_server_error() => {
                return error_page(Some(&viewer), e)
            }
            Err(e) => return render(&app, &viewer, &targets, &f, Some(&e), e.status).await,
        }
    }
    let revision = match app.store.revision().await {
        Ok(r) => r,
        Err(e) => return error_page(Some(&viewer), e.into()),
    };
    let query: Vec<String> = ids.iter().map(|id| format!("id={id}")).collect();
    redirect(&format!("/requests/progress?{}&rev={revision}", query.join("&")))
}
