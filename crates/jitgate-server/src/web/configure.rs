//! The "JIT VM access configuration" panel: Enable JIT on the selected VMs, or Edit one VM's
//! ports. Save builds the policy body and hands it to [`crate::arm::put_policy`], the code path
//! of the ARM API's PUT, so validation (the 56-character rule included), authorization and audit
//! are the API's; its error is shown next to the field it names.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use maud::{html, Markup};

use jitgate_core::audit::ops;
use jitgate_core::inventory::View;
use jitgate_core::policy::{PolicyDraft, PortDraft, VmDraft, SUGGESTED_PORTS};
use jitgate_core::{PolicyRef, PortRule, SourceSpec, VmId};
use jitgate_store::Vm;

use super::jit::{default_policy, with_panel};
use super::layout::csrf;
use super::{error_page, redirect, Fields, Viewer};
use crate::error::ApiError;
use crate::App;

/// One port row of the form, as typed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortRow {
    pub number: String,
    /// `*`, `TCP` or `UDP`.
    pub protocol: String,
    /// `request` (the requester's address, any allowed) or `ranges`.
    pub source: String,
    pub ranges: String,
    pub hours: String,
}

impl PortRow {
    fn suggested(number: u16) -> Self {
        PortRow {
            number: number.to_string(),
            protocol: "*".into(),
            source: "request".into(),
            ranges: String::new(),
            hours: "3".into(),
        }
    }

    fn of_rule(r: &PortRule) -> Self {
        let prefixes: Vec<&str> = r.sources.prefixes().iter().map(|p| p.text()).collect();
        let any = prefixes.iter().all(|p| *p == "*");
        let secs = r.max_duration.duration().whole_seconds();
        let hours = if secs % 3600 == 0 { (secs / 3600).to_string() } else { format!("{:.2}", secs as f64 / 3600.0) };
        PortRow {
            number: r.number.to_string(),
            protocol: r.protocol.as_str().into(),
            source: if any { "request".into() } else { "ranges".into() },
            ranges: if any { String::new() } else { prefixes.join(", ") },
            hours,
        }
    }

    /// The API's port draft for this row; an earlier rule for the same port keeps its jitgate
    /// extensions (approval, mapped port, cut sessions).
    fn draft(&self, earlier: Option<&PortRule>) -> PortDraft {
        let hours = self.hours.trim();
        let max_duration = match hours.parse::<f64>() {
            Ok(h) if h.is_finite() && h > 0.0 && h.fract() == 0.0 => format!("PT{}H", h as i64),
            Ok(h) if h.is_finite() && h > 0.0 && (h * 60.0).fract() == 0.0 => format!("PT{}M", (h * 60.0) as i64),
            _ => format!("PT{hours}H"),
        };
        let (prefix, prefixes) = if self.source == "ranges" {
            let list: Vec<String> =
                self.ranges.split([',', ' ', '\n', '\r', '\t']).filter(|s| !s.is_empty()).map(str::to_owned).collect();
            (None, Some(list))
        } else {
            (Some("*".to_owned()), None)
        };
        PortDraft {
            number: Some(self.number.trim().parse::<i64>().unwrap_or(-1)),
            protocol: Some(self.protocol.clone()),
            prefix,
            prefixes,
            max_duration: Some(max_duration),
            cut_sessions: earlier.map(|r| r.cut_sessions),
            mapped_port: earlier.and_then(|r| r.mapped_port).map(i64::from),
            require_approval: earlier.map(|r| r.require_approval),
            approval_timeout: earlier.and_then(|r| r.approval_timeout.as_ref()).map(|d| d.text().to_owned()),
        }
    }
}

/// A stored rule as the API's draft (the VMs of a policy that the form leaves alone).
pub fn rule_draft(r: &PortRule) -> PortDraft {
    let (prefix, prefixes) = match &r.sources {
        SourceSpec::Single(p) => (Some(p.text().to_owned()), None),
        SourceSpec::Multiple(v) => (None, Some(v.iter().map(|p| p.text().to_owned()).collect())),
    };
    PortDraft {
        number: Some(i64::from(r.number)),
        protocol: Some(r.protocol.as_str().into()),
        prefix,
        prefixes,
        max_duration: Some(r.max_duration.text().to_owned()),
        cut_sessions: Some(r.cut_sessions),
        mapped_port: r.mapped_port.map(i64::from),
        require_approval: Some(r.require_approval),
        approval_timeout: r.approval_timeout.as_ref().map(|d| d.text().to_owned()),
    }
}

/// The errors of a save, by where they show.
#[derive(Debug, Default)]
pub struct Errors {
    /// Not about one field.
    pub general: Vec<String>,
    /// `(row, field)` → message.
    pub fields: BTreeMap<(usize, &'static str), String>,
    /// VM id → message (the 56-character rule, a VM in another policy).
    pub vms: BTreeMap<String, String>,
}

impl Errors {
    fn field(&self, row: usize, name: &'static str) -> Option<&str> {
        self.fields.get(&(row, name)).map(String::as_str)
    }

    fn is_empty(&self) -> bool {
        self.general.is_empty() && self.fields.is_empty() && self.vms.is_empty()
    }

    /// Places an API error by its target (`properties.virtualMachines[i].ports[j].field`);
    /// `vm_at` names the VM at index `i` of the body, when it is one of the form's.
    fn place(&mut self, e: &ApiError, vm_at: &dyn Fn(usize) -> Option<String>) {
        if let Some(t) = e.target.as_deref() {
            if let Some((i, rest)) = t.strip_prefix("properties.virtualMachines[").and_then(|r| r.split_once(']')) {
                let vm = i.parse::<usize>().ok().and_then(vm_at);
                if let (Some(_), Some((j, field))) =
                    (&vm, rest.strip_prefix(".ports[").and_then(|r| r.split_once("].")))
                {
                    let name = match field {
                        "number" => Some("number"),
                        "protocol" => Some("protocol"),
                        "maxRequestAccessDuration" => Some("hours"),
                        f if f.starts_with("allowedSourceAddressPrefix") => Some("ranges"),
                        _ => None,
                    };
                    if let (Some(name), Ok(j)) = (name, j.parse::<usize>()) {
                        self.fields.insert((j, name), e.message.clone());
                        return;
                    }
                }
                if let Some(vm) = vm {
                    self.vms.insert(vm, e.message.clone());
                    return;
                }
            }
        }
        self.general.push(e.message.clone());
    }
}

fn selected_ids(f: &Fields) -> Vec<String> {
    let mut ids: Vec<String> = f.all("vm").map(str::to_owned).collect();
    ids.dedup();
    ids
}

async fn load_vms(app: &App, ids: &[String]) -> Result<Vec<Vm>, ApiError> {
    let mut out = Vec::with_capacity(ids.len());
    for raw in ids {
        let id = VmId::parse(raw).map_err(|m| ApiError::bad_request("InvalidVirtualMachine", m))?;
        match app.store.get_vm(&id).await? {
            Some(vm) => out.push(vm),
            None => return Err(ApiError::not_found("VirtualMachineNotFound", format!("no VM '{raw}'"))),
        }
    }
    Ok(out)
}

/// `GET /jit/configure?vm=…`: the panel, with the recommended ports, or one VM's own.
pub async fn panel(State(app): State<App>, viewer: Viewer, uri: Uri) -> Response {
    let f = Fields::parse(uri.query().unwrap_or("").as_bytes());
    let ids = selected_ids(&f);
    if ids.is_empty() {
        let e = ApiError::bad_request("NoVirtualMachineSelected", "Select at least one VM first.");
        return error_page(Some(&viewer), e);
    }
    let vms = match load_vms(&app, &ids).await {
        Ok(v) => v,
        Err(e) => return error_page(Some(&viewer), e),
    };
    let mut rows: Vec<PortRow> = SUGGESTED_PORTS.iter().map(|p| PortRow::suggested(*p)).collect();
    let mut editing = false;
    if let [vm] = vms.as_slice() {
        if let Ok(Some(policy)) = app.store.policy_of_vm(&vm.spec.id).await {
            if let Some(v) = policy.vm(&vm.spec.id.key()) {
                rows = v.ports.iter().map(PortRow::of_rule).collect();
                editing = true;
            }
        }
    }
    render(&app, &viewer, &vms, &rows, editing, &Errors::default(), StatusCode::OK).await
}

async fn render(
    app: &App,
    viewer: &Viewer,
    vms: &[Vm],
    rows: &[PortRow],
    editing: bool,
    errors: &Errors,
    status: StatusCode,
) -> Response {
    let title = "JIT VM access configuration";
    let tab = if editing { View::Configured } else { View::NotConfigured };
    with_panel(app, viewer, tab, status, title, form(viewer, vms, rows, editing, errors)).await
}

fn form(viewer: &Viewer, vms: &[Vm], rows: &[PortRow], editing: bool, errors: &Errors) -> Markup {
    let err_id = |i: usize, f: &str| format!("p{i}-{f}-error");
    html! {
        form method="post" action="/jit/configure" novalidate {
            (csrf(viewer))
            input type="hidden" name="mode" value=(if editing { "edit" } else { "enable" });
            p { (if editing { "Edit the ports of " } else { "Enable JIT on " }) (vms.len()) (if vms.len() == 1 { " VM" } else { " VMs" }) ":" }
            ul {
                @for vm in vms {
                    li {
                        input type="hidden" name="vm" value=(vm.spec.id.as_str());
                        strong { (vm.spec.id.name()) } " " span.muted { (vm.spec.id.resource_group()) }
                        @if let Some(m) = errors.vms.get(vm.spec.id.as_str()) { p.field-error role="alert" { (m) } }
                    }
                }
            }
            @for m in &errors.general { div.notice.error role="alert" { (m) } }
            div.actions {
                button.primary type="submit" name="action" value="save" { "Save" }
                a.button href=(if editing { "/jit?tab=configured" } else { "/jit?tab=notconfigured" }) { "Cancel" }
            }
            input type="hidden" name="rows" value=(rows.len());
            div.table-wrap tabindex="0" role="region" aria-label="Ports" {
                table.ports {
                    thead { tr { th { "Port" } th { "Protocol" } th { "Allowed source IPs" } th { "Maximum request time" } th { span.visually-hidden { "Remove" } } } }
                    tbody {
                        @for (i, r) in rows.iter().enumerate() {
                            @let n = if r.number.is_empty() { "new port".to_owned() } else { format!("port {}", r.number) };
                            tr {
                                td {
                                    label.visually-hidden for={ "p" (i) "-number" } { "Port" }
                                    input #{ "p" (i) "-number" } type="number" min="1" max="65535" name={ "p" (i) ".number" } value=(r.number)
                                        aria-invalid=[errors.field(i, "number").map(|_| "true")]
                                        aria-describedby=[errors.field(i, "number").map(|_| err_id(i, "number"))];
                                    @if let Some(m) = errors.field(i, "number") { p.field-error id=(err_id(i, "number")) { (m) } }
                                }
                                td {
                                    label.visually-hidden for={ "p" (i) "-protocol" } { "Protocol" }
                                    select #{ "p" (i) "-protocol" } name={ "p" (i) ".protocol" } {
                                        @for (v, l) in [("*", "Any"), ("TCP", "TCP"), ("UDP", "UDP")] {
                                            option value=(v) selected[r.protocol.eq_ignore_ascii_case(v)] { (l) }
                                        }
                                    }
                                    @if let Some(m) = errors.field(i, "protocol") { p.field-error { (m) } }
                                }
                                td {
                                    fieldset.bare {
                                        legend.visually-hidden { "Allowed source IPs for " (n) }
                                        label { input type="radio" name={ "p" (i) ".source" } value="request" checked[r.source != "ranges"]; " Per request" }
                                        " "
                                        label { input type="radio" name={ "p" (i) ".source" } value="ranges" checked[r.source == "ranges"]; " CIDR ranges" }
                                    }
                                    label.visually-hidden for={ "p" (i) "-ranges" } { "Allowed CIDR ranges for " (n) }
                                    input.cidrs #{ "p" (i) "-ranges" } type="text" name={ "p" (i) ".ranges" } value=(r.ranges) placeholder="10.0.0.0/8, 192.0.2.0/24"
                                        aria-invalid=[errors.field(i, "ranges").map(|_| "true")]
                                        aria-describedby=[errors.field(i, "ranges").map(|_| err_id(i, "ranges"))];
                                    @if let Some(m) = errors.field(i, "ranges") { p.field-error id=(err_id(i, "ranges")) { (m) } }
                                }
                                td {
                                    label.visually-hidden for={ "p" (i) "-hours" } { "Maximum request time (hours) for " (n) }
                                    input #{ "p" (i) "-hours" } type="number" min="1" max="24" step="any" name={ "p" (i) ".hours" } value=(r.hours)
                                        aria-invalid=[errors.field(i, "hours").map(|_| "true")]
                                        aria-describedby=[errors.field(i, "hours").map(|_| err_id(i, "hours"))];
                                    " hours"
                                    @if let Some(m) = errors.field(i, "hours") { p.field-error id=(err_id(i, "hours")) { (m) } }
                                }
                                td { button type="submit" name="remove" value=(i) aria-label={ "Remove " (n) } formnovalidate { "Remove" } }
                            }
                        }
                    }
                }
            }
            div.actions { button type="submit" name="action" value="add" { "Add" } }
        }
    }
}

fn rows_of(f: &Fields) -> Vec<PortRow> {
    let count = f.get("rows").and_then(|n| n.parse::<usize>().ok()).unwrap_or(0).min(64);
    (0..count)
        .map(|i| {
            let get = |k: &str| f.get(&format!("p{i}.{k}")).unwrap_or("").trim().to_owned();
            PortRow {
                number: get("number"),
                protocol: get("protocol"),
                source: get("source"),
                ranges: get("ranges"),
                hours: get("hours"),
            }
        })
        .collect()
}

/// `POST /jit/configure`: Add, Remove (re-rendered) or Save (written through the API's path).
pub async fn save(State(app): State<App>, viewer: Viewer, headers: HeaderMap, body: Body) -> Response {
    let f = match super::checked_form(&app, &viewer, &headers, body, ops::POLICY_WRITE, "/jit/configure").await {
        Ok(f) => f,
        Err(refused) => return refused,
    };
    let ids = selected_ids(&f);
    let vms = match load_vms(&app, &ids).await {
        Ok(v) if !v.is_empty() => v,
        Ok(_) => return error_page(Some(&viewer), ApiError::bad_request("NoVirtualMachineSelected", "Select a VM.")),
        Err(e) => return error_page(Some(&viewer), e),
    };
    let editing = f.get("mode") == Some("edit");
    let mut rows = rows_of(&f);
    if let Some(i) = f.get("remove").and_then(|i| i.parse::<usize>().ok()) {
        if i < rows.len() {
            rows.remove(i);
        }
        return render(&app, &viewer, &vms, &rows, editing, &Errors::default(), StatusCode::OK).await;
    }
    if f.get("action") == Some("add") {
        rows.push(PortRow { protocol: "*".into(), source: "request".into(), hours: "3".into(), ..Default::default() });
        return render(&app, &viewer, &vms, &rows, editing, &Errors::default(), StatusCode::OK).await;
    }
    let mut errors = Errors::default();
    for (i, r) in rows.iter().enumerate() {
        if r.number.parse::<u16>().map_or(true, |n| n == 0) {
            errors.fields.insert((i, "number"), "Enter a port number from 1 to 65535.".into());
        }
    }
    if rows.is_empty() {
        errors.general.push("Add at least one port.".into());
    }
    if !errors.is_empty() {
        return render(&app, &viewer, &vms, &rows, editing, &errors, StatusCode::BAD_REQUEST).await;
    }
    // Each VM goes to the policy that already names it, else to `default` of its group.
    let mut targets: BTreeMap<String, (PolicyRef, Vec<&Vm>)> = BTreeMap::new();
    for vm in &vms {
        let r = match app.store.policy_of_vm(&vm.spec.id).await {
            Ok(Some(p)) => p.reference,
            Ok(None) => match default_policy(vm) {
                Ok(r) => r,
                Err(e) => return error_page(Some(&viewer), e),
            },
            Err(e) => return error_page(Some(&viewer), e.into()),
        };
        targets.entry(r.key()).or_insert_with(|| (r, Vec::new())).1.push(vm);
    }
    for (_, (r, chosen)) in targets {
        let existing = match app.store.get_policy(&r).await {
            Ok(p) => p.map(|p| p.policy),
            Err(e) => return error_page(Some(&viewer), e.into()),
        };
        let chosen_keys: Vec<String> = chosen.iter().map(|v| v.spec.id.key()).collect();
        let mut draft = PolicyDraft { kind: existing.as_ref().map(|p| p.kind.clone()), vms: Vec::new() };
        let mut form_index: BTreeMap<usize, String> = BTreeMap::new();
        for v in existing.iter().flat_map(|p| &p.vms).filter(|v| !chosen_keys.contains(&v.id.key())) {
            draft.vms.push(VmDraft {
                id: v.id.as_str().to_owned(),
                ports: Some(v.ports.iter().map(rule_draft).collect()),
                public_ip_address: v.public_ip_address.clone(),
            });
        }
        for vm in &chosen {
            let before = existing.as_ref().and_then(|p| p.vm(&vm.spec.id.key()));
            form_index.insert(draft.vms.len(), vm.spec.id.as_str().to_owned());
            draft.vms.push(VmDraft {
                id: vm.spec.id.as_str().to_owned(),
                ports: Some(rows.iter().map(|row| row.draft(before.and_then(|b| b.port(row_number(row))))).collect()),
                public_ip_address: before.and_then(|b| b.public_ip_address.clone()),
            });
        }
        let audit = app.audit(&viewer.ctx, &viewer.principal.name, ops::POLICY_WRITE, &r.id());
        if let Err(e) = crate::arm::put_policy(&app, &viewer.principal, r, Ok(draft), audit).await {
            if e.status == StatusCode::FORBIDDEN || e.status.is_server_error() {
                return error_page(Some(&viewer), e);
            }
            errors.place(&e, &|i| form_index.get(&i).cloned());
            return render(&app, &viewer, &vms, &rows, editing, &errors, e.status).await;
        }
    }
    redirect("/jit?tab=configured")
}

fn row_number(row: &PortRow) -> u16 {
    row.number.trim().parse().unwrap_or(0)
}
