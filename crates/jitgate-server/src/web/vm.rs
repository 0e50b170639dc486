//! A VM's page (`/vms/{subscription}/{group}/{name}`), the seed's "Azure virtual machines" path:
//! Configuration says whether JIT is enabled and offers Enable just-in-time with the OS
//! defaults; Connect prompts to enable JIT, or offers Request access pre-filled.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use maud::html;

use jitgate_core::audit::ops;
use jitgate_core::inventory::View;
use jitgate_core::policy::{PolicyDraft, VmDraft};
use jitgate_core::rbac::actions;
use jitgate_core::VmId;

use super::configure::rule_draft;
use super::jit::{default_policy, enforcement_icon, place, vm_href};
use super::layout::{self, chip, csrf, Nav, Tone};
use super::request::{form as request_form, Target};
use super::{enc, error_page, html, redirect, Fields, Viewer};
use crate::error::ApiError;
use crate::App;

fn vm_id(sub: &str, group: &str, name: &str) -> Result<VmId, ApiError> {
    VmId::parse(&format!(
        "/subscriptions/{sub}/resourceGroups/{group}/providers/Microsoft.Compute/virtualMachines/{name}"
    ))
    .map_err(|m| ApiError::bad_request("InvalidVirtualMachine", m))
}

/// `GET /vms/{subscription}/{group}/{name}`.
pub async fn page(
    State(app): State<App>,
    viewer: Viewer,
    Path((sub, group, name)): Path<(String, String, String)>,
) -> Response {
    match render(&app, &viewer, &sub, &group, &name).await {
        Ok(r) => r,
        Err(e) => error_page(Some(&viewer), e),
    }
}

async fn render(app: &App, viewer: &Viewer, sub: &str, group: &str, name: &str) -> Result<Response, ApiError> {
    let id = vm_id(sub, group, name)?;
    app.authorize(&viewer.principal, actions::VM_READ, id.as_str()).await?;
    let vm = app.store.get_vm(&id).await?.ok_or_else(|| {
        ApiError::not_found("VirtualMachineNotFound", format!("virtual machine '{name}' is not registered"))
    })?;
    let grants = app.authz.grants(app.store.as_ref(), &viewer.principal).await?;
    let configured = app.store.configured_vm_keys().await?;
    let disabled: Vec<String> =
        app.store.list_security_policies().await?.into_iter().filter(|p| !p.jit_enabled).map(|p| p.scope).collect();
    let placed = place(app, &vm, &configured, &disabled);
    let (view, reason) = (placed.view, placed.reason.clone());
    let policy = app.store.policy_of_vm(&id).await?;
    let may_enable = default_policy(&vm).is_ok_and(|r| grants.permits(actions::POLICY_WRITE, &r.id()));
    let may_edit = policy.as_ref().is_some_and(|p| grants.permits(actions::POLICY_WRITE, &p.reference.id()));
    let may_request = policy.as_ref().is_some_and(|p| grants.permits(actions::POLICY_INITIATE, &p.reference.id()));
    let os = vm.spec.os_type;
    let target = policy.map(|policy| Target { vm: vm.clone(), policy });
    let body = html! {
        h1 { (vm.spec.id.name()) }
        p.muted { "Virtual machine · " (vm.spec.id.resource_group()) " · " (vm.spec.location) " · " (os.as_str()) }
        div.cards {
            section.card aria-labelledby="configuration" {
                h2 #configuration { "Configuration" }
                dl.kv {
                    dt { "Just-in-time VM access" }
                    dd { @if target.is_some() { (chip(Tone::Ok, "Enabled")) } @else { (chip(Tone::Info, "Not enabled")) } }
                    dt { "Enforcement" } dd { (enforcement_icon(&vm)) }
                    @if let Some(t) = &target { @if let Some(rules) = t.rules() {
                        dt { "Ports" }
                        dd { @for r in &rules.ports { (r.number) " (max " (r.max_duration.text()) ") " } }
                    } }
                }
                @if let Some(r) = reason.as_deref().filter(|_| view == View::Unsupported) {
                    div.notice.error { "JIT cannot protect this VM: " (r) }
                } @else if target.is_none() && may_enable {
                    form method="post" action={ (vm_href(&vm)) "/enable" } {
                        (csrf(viewer))
                        p.muted { "Opens nothing: closes port " (os.default_port()) " (" (os.as_str()) ") to everyone until someone asks, for at most three hours from any source." }
                        button.primary type="submit" { "Enable just-in-time" }
                    }
                }
                @if target.is_some() && may_edit {
                    p { a href={ "/jit/configure?vm=" (enc(vm.spec.id.as_str())) } { "Edit the JIT configuration on the JIT page" } }
                }
            }
            section.card aria-labelledby="connect" {
                h2 #connect { "Connect" }
                @match &target {
                    None => p { "This VM's ports are not under just-in-time access. Enable just-in-time in Configuration to connect through it." },
                    Some(_) if !may_request => p.muted { "You may not request access to this VM." },
                    Some(t) => (request_form(viewer, std::slice::from_ref(t), &Fields::default(), None, "Request access")),
                }
            }
        }
    };
    Ok(html(StatusCode::OK, layout::page(viewer, vm.spec.id.name(), Nav::Jit, body)))
}

/// `POST /vms/{subscription}/{group}/{name}/enable`: the VM joins the `default` policy of its
/// group with its OS's default rule, through the ARM API's put path.
pub async fn enable(
    State(app): State<App>,
    viewer: Viewer,
    Path((sub, group, name)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Err(refused) = super::checked_form(&app, &viewer, &headers, body, ops::POLICY_WRITE, "/vms").await {
        return refused;
    }
    let result = async {
        let id = vm_id(&sub, &group, &name)?;
        let vm = app
            .store
            .get_vm(&id)
            .await?
            .ok_or_else(|| ApiError::not_found("VirtualMachineNotFound", format!("no VM '{name}'")))?;
        let r = default_policy(&vm)?;
        let existing = app.store.get_policy(&r).await?.map(|p| p.policy);
        let mut draft = PolicyDraft { kind: existing.as_ref().map(|p| p.kind.clone()), vms: Vec::new() };
        for v in existing.iter().flat_map(|p| &p.vms).filter(|v| v.id.key() != id.key()) {
            draft.vms.push(VmDraft {
                id: v.id.as_str().to_owned(),
                ports: Some(v.ports.iter().map(rule_draft).collect()),
                public_ip_address: v.public_ip_address.clone(),
            });
        }
        // No ports: the OS defaults, as the API gives them.
        draft.vms.push(VmDraft { id: id.as_str().to_owned(), ports: None, public_ip_address: None });
        let audit = app.audit(&viewer.ctx, &viewer.principal.name, ops::POLICY_WRITE, &r.id());
        crate::arm::put_policy(&app, &viewer.principal, r, Ok(draft), audit).await?;
        Ok::<_, ApiError>(vm_href(&vm))
    }
    .await;
    match result {
        Ok(back) => redirect(&back),
        Err(e) => error_page(Some(&viewer), e),
    }
}
