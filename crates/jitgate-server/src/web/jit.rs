//! The JIT VM access page: the Configured, Not configured and Unsupported tabs with search,
//! filters and paging. Placing VMs in tabs needs no query per VM (the VMs, the configured VM
//! keys and the security policies are three reads); only the rows of the page shown are looked
//! up further (their policy entries and access statistics, one read each for the page).

use std::collections::{BTreeSet, HashSet};

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use maud::{html, Markup};

use jitgate_core::enforcement::AgentMode;
use jitgate_core::inventory::{classify, View, VmFacts};
use jitgate_core::rbac::actions;
use jitgate_core::PolicyRef;
use jitgate_store::{Vm, VmPolicy};

use super::inventory::Snapshot;
use super::layout::{self, chip, Nav, Tone};
use super::{enc, html, Fields, Viewer};
use crate::authz::Grants;
use crate::error::ApiError;
use crate::App;

/// Rows per page.
pub const PAGE_SIZE: usize = 50;

/// The page's query: tab, search, filters, page number.
#[derive(Debug, Clone, Default)]
pub struct JitQuery {
    pub view: Option<View>,
    pub search: String,
    pub subscription: String,
    pub group: String,
    pub location: String,
    pub page: usize,
}

impl JitQuery {
    pub fn parse(raw: Option<&str>) -> Self {
        let f = Fields::parse(raw.unwrap_or("").as_bytes());
        let s = |k: &str| f.text(k).unwrap_or("").to_owned();
        JitQuery {
            view: f.get("tab").and_then(View::parse),
            search: s("q"),
            subscription: s("subscription"),
            group: s("group"),
            location: s("location"),
            page: f.get("page").and_then(|p| p.parse::<usize>().ok()).unwrap_or(1).max(1),
        }
    }

    fn link(&self, view: View, page: usize) -> String {
        let mut out = format!("/jit?tab={}", view_key(view));
        for (k, v) in [("q", &self.search), ("subscription", &self.subscription), ("group", &self.group)] {
            if !v.is_empty() {
                out.push_str(&format!("&{k}={}", enc(v)));
            }
        }
        if !self.location.is_empty() {
            out.push_str(&format!("&location={}", enc(&self.location)));
        }
        if page > 1 {
            out.push_str(&format!("&page={page}"));
        }
        out
    }

    fn matches(&self, vm: &Vm) -> bool {
        let id = &vm.spec.id;
        (self.search.is_empty() || contains_ci(id.name(), &self.search))
            && (self.subscription.is_empty() || id.subscription().eq_ignore_ascii_case(&self.subscription))
            && (self.group.is_empty() || id.resource_group().eq_ignore_ascii_case(&self.group))
            && (self.location.is_empty() || vm.spec.location.eq_ignore_ascii_case(&self.location))
    }
}

fn contains_ci(hay: &str, needle: &str) -> bool {
    hay.to_ascii_lowercase().contains(&needle.to_ascii_lowercase())
}

pub fn view_key(v: View) -> &'static str {
    match v {
        View::Configured => "configured",
        View::NotConfigured => "notconfigured",
        View::Unsupported => "unsupported",
    }
}

fn view_label(v: View) -> &'static str {
    match v {
        View::Configured => "Configured",
        View::NotConfigured => "Not configured",
        View::Unsupported => "Unsupported",
    }
}

/// One VM placed in its tab.
pub struct Placed<'a> {
    pub vm: &'a Vm,
    pub view: View,
    pub reason: Option<String>,
}

/// Every VM of `snapshot` the viewer may read, placed in its tab (no read per VM).
pub fn place_all<'a>(app: &App, snapshot: &'a Snapshot, grants: &Grants) -> Vec<Placed<'a>> {
    snapshot
        .vms
        .iter()
        .filter(|vm| grants.permits(actions::VM_READ, vm.spec.id.as_str()))
        .map(|vm| place(app, vm, &snapshot.configured, &snapshot.disabled))
        .collect()
}

pub fn place<'a>(app: &App, vm: &'a Vm, configured: &HashSet<String>, disabled: &[String]) -> Placed<'a> {
    let gap = crate::api::gap_of(app, vm);
    let facts = VmFacts {
        id: vm.spec.id.as_str(),
        classic: vm.spec.classic,
        configured: configured.contains(&vm.spec.id.key()),
        enforcement_gap: gap.as_deref(),
    };
    let (view, reason) = classify(&facts, disabled);
    Placed { vm, view, reason }
}

/// The policy a VM joins when JIT is enabled on it from the portal: `default` in its resource
/// group and location (as the Azure portal does).
pub fn default_policy(vm: &Vm) -> Result<PolicyRef, ApiError> {
    let id = &vm.spec.id;
    Ok(PolicyRef::new(id.subscription(), id.resource_group(), &vm.spec.location, "default")?)
}

/// `GET /jit`.
pub async fn page(State(app): State<App>, viewer: Viewer, uri: Uri) -> Response {
    let q = JitQuery::parse(uri.query());
    match content(&app, &viewer, &q).await {
        Ok(body) => html(StatusCode::OK, layout::page(&viewer, "JIT VM access", Nav::Jit, body)),
        Err(e) => super::error_page(Some(&viewer), e),
    }
}

/// The page's content (also the background of the side panels).
pub async fn content(app: &App, viewer: &Viewer, q: &JitQuery) -> Result<Markup, ApiError> {
    let grants = app.authz.grants(app.store.as_ref(), &viewer.principal).await?;
    let snapshot = app.portal_inventory.get(app).await?;
    let placed = place_all(app, &snapshot, &grants);
    let (mut subs, mut groups, mut locations) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for p in &placed {
        subs.insert(p.vm.spec.id.subscription().to_owned());
        groups.insert(p.vm.spec.id.resource_group().to_owned());
        locations.insert(p.vm.spec.location.to_ascii_lowercase());
    }
    let view = q.view.unwrap_or(View::Configured);
    let mut counts = [0usize; 3];
    let mut shown: Vec<&Placed> = Vec::new();
    for p in placed.iter().filter(|p| q.matches(p.vm)) {
        counts[p.view as usize] += 1;
        if p.view == view {
            shown.push(p);
        }
    }
    let total = shown.len();
    let pages = total.div_ceil(PAGE_SIZE).max(1);
    let page = q.page.min(pages);
    let rows: Vec<&Placed> = shown.into_iter().skip((page - 1) * PAGE_SIZE).take(PAGE_SIZE).collect();
    let table = match view {
        View::Configured => configured_table(app, &grants, &rows).await?,
        View::NotConfigured => not_configured_table(&grants, &rows),
        View::Unsupported => unsupported_table(&rows),
    };
    let filters = html! {
        form.toolbar method="get" action="/jit" role="search" {
            input type="hidden" name="tab" value=(view_key(view));
            div.field { label for="q" { "Search" } input #q type="search" name="q" value=(q.search) placeholder="VM name"; }
            (select("subscription", "Subscription", &subs, &q.subscription))
            (select("group", "Resource group", &groups, &q.group))
            (select("location", "Location", &locations, &q.location))
            button type="submit" { "Apply" }
        }
    };
    Ok(html! {
        h1 { "Just-in-time VM access" }
        p.muted { "Ports stay closed until someone with the right role asks; each request opens them for a limited time, from a given source, and is audited." }
        (filters)
        div role="tablist" aria-label="VM groups" {
            @for v in [View::Configured, View::NotConfigured, View::Unsupported] {
                a role="tab" id={ "tab-" (view_key(v)) } href=(q.link(v, 1))
                    aria-selected=(if v == view { "true" } else { "false" })
                    aria-controls="tabpanel" { (view_label(v)) }
            }
        }
        section #tabpanel role="tabpanel" aria-labelledby={ "tab-" (view_key(view)) } {
            p.muted { (plural(counts[view as usize], "VM")) @if pages > 1 { " · page " (page) " of " (pages) } }
            (table)
            @if pages > 1 {
                nav.pager aria-label="Pages" {
                    @if page > 1 { a href=(q.link(view, page - 1)) { "Previous page" } }
                    span { "Page " (page) " of " (pages) }
                    @if page < pages { a href=(q.link(view, page + 1)) { "Next page" } }
                }
            }
        }
    })
}

/// `1 VM`, `3 VMs`.
pub fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

fn select(name: &str, label: &str, options: &BTreeSet<String>, current: &str) -> Markup {
    html! {
        div.field {
            label for=(name) { (label) }
            select #(name) name=(name) {
                option value="" { "All" }
                @for o in options {
                    option value=(o) selected[o.eq_ignore_ascii_case(current)] { (o) }
                }
            }
        }
    }
}

/// The VM page's path.
pub fn vm_href(vm: &Vm) -> String {
    let id = &vm.spec.id;
    format!("/vms/{}/{}/{}", enc(id.subscription()), enc(id.resource_group()), enc(id.name()))
}

/// How a configured VM is enforced: an icon with its name for assistive technology, and words.
pub fn enforcement_icon(vm: &Vm) -> Markup {
    match &vm.agent {
        Some(a) if a.mode == AgentMode::Gateway => html! {
            span role="img" aria-label="Gateway enforcement" title="Gateway enforcement" { "⇄" } " gateway " (a.name)
            @if let Some(ip) = a.public_address { " (" (ip) ")" }
        },
        Some(a) if a.mode == AgentMode::Cloud => html! {
            span role="img" aria-label="Cloud enforcement" title="Cloud enforcement" { "☁" } " cloud " (a.name)
            @if let Some(f) = vm.cloud.as_ref().and_then(|c| c.failure.as_deref()) {
                " " span title=(f) { (chip(Tone::Bad, "Failed")) } " " (f)
            }
        },
        Some(a) => {
            html! { span role="img" aria-label="Host enforcement" title="Host enforcement" { "▣" } " host " (a.name) }
        }
        None => chip(Tone::Warn, "No enforcement point"),
    }
}

/// A port as the connection details give it: `22`, or `22 via :2201` behind a gateway.
fn port_text(r: &jitgate_core::PortRule) -> String {
    match r.mapped_port {
        Some(m) => format!("{} via :{m}", r.number),
        None => r.number.to_string(),
    }
}

async fn configured_table(app: &App, grants: &Grants, rows: &[&Placed<'_>]) -> Result<Markup, ApiError> {
    let since = app.clock.now() - time::Duration::days(7);
    // The policy entries and access statistics of the rows shown: one read each for the page.
    let ids: Vec<jitgate_core::VmId> = rows.iter().map(|p| p.vm.spec.id.clone()).collect();
    let (mut policies, mut access) = if ids.is_empty() {
        Default::default()
    } else {
        (app.store.policies_of_vms(&ids).await?, app.store.vm_access_many(&ids, since).await?)
    };
    let details: Vec<(Option<VmPolicy>, jitgate_store::VmAccess)> =
        ids.iter().map(|id| (policies.remove(&id.key()), access.remove(&id.key()).unwrap_or_default())).collect();
    let may_initiate =
        |p: &Option<VmPolicy>| p.as_ref().is_some_and(|p| grants.permits(actions::POLICY_INITIATE, &p.policy.id()));
    let any_initiate = details.iter().any(|(p, _)| may_initiate(p));
    Ok(html! {
        form method="get" action="/jit/request" data-count-button {
            @if any_initiate {
                div.actions {
                    button.primary type="submit" data-count-label="Request access" { "Request access" }
                }
            }
            div.table-wrap tabindex="0" role="region" aria-label="Configured VMs" {
                table {
                    thead { tr {
                        @if any_initiate { th { input type="checkbox" data-select-all aria-label="Select all VMs"; } }
                        th { "Virtual machine" } th { "Approved (7 days)" } th { "Last access" }
                        th { "Connection details" } th { "Last user" } th { span.visually-hidden { "Actions" } }
                    } }
                    tbody {
                        @for (p, (policy, access)) in rows.iter().zip(&details) {
                            @let vm = p.vm;
                            tr {
                                @if any_initiate { td {
                                    @if may_initiate(policy) {
                                        input type="checkbox" name="vm" value=(vm.spec.id.as_str()) aria-label={ "Select " (vm.spec.id.name()) };
                                    }
                                } }
                                td { a href=(vm_href(vm)) { (vm.spec.id.name()) } br; span.muted { (vm.spec.id.resource_group()) " · " (vm.spec.location) } }
                                td { (plural(access.approved_since as usize, "request")) }
                                td { @match access.last_access { Some(t) => (layout::when(t)), None => span.muted { "Never" } } }
                                td {
                                    (enforcement_icon(vm))
                                    @if let Some(entry) = policy {
                                        br; span.muted { "Ports " (entry.vm.ports.iter().map(port_text).collect::<Vec<_>>().join(", ")) }
                                    }
                                }
                                td { @match &access.last_user { Some(u) => (u), None => span.muted { "None" } } }
                                td {
                                    @if policy.as_ref().is_some_and(|p| grants.permits(actions::POLICY_WRITE, &p.policy.id())) {
                                        a href={ "/jit/configure?vm=" (enc(vm.spec.id.as_str())) } { "Edit" }
                                    }
                                }
                            }
                        }
                        @if rows.is_empty() { tr { td colspan="7" { "No VM here yet: enable JIT on a VM in the Not configured tab." } } }
                    }
                }
            }
        }
    })
}

fn not_configured_table(grants: &Grants, rows: &[&Placed<'_>]) -> Markup {
    let may_enable = |vm: &Vm| default_policy(vm).is_ok_and(|r| grants.permits(actions::POLICY_WRITE, &r.id()));
    let any_enable = rows.iter().any(|p| may_enable(p.vm));
    html! {
        form method="get" action="/jit/configure" data-count-button {
            @if any_enable {
                div.actions {
                    button.primary type="submit" data-count-label="Enable JIT on {n} VM{s}" { "Enable JIT on 0 VMs" }
                }
            }
            div.table-wrap tabindex="0" role="region" aria-label="Not configured VMs" {
                table {
                    thead { tr {
                        @if any_enable { th { input type="checkbox" data-select-all aria-label="Select all VMs"; } }
                        th { "Virtual machine" } th { "Resource group" } th { "Location" } th { "OS" } th { "Enforcement" }
                    } }
                    tbody {
                        @for p in rows {
                            @let vm = p.vm;
                            tr {
                                @if any_enable { td { @if may_enable(vm) {
                                    input type="checkbox" name="vm" value=(vm.spec.id.as_str()) aria-label={ "Select " (vm.spec.id.name()) };
                                } } }
                                td { a href=(vm_href(vm)) { (vm.spec.id.name()) } }
                                td { (vm.spec.id.resource_group()) }
                                td { (vm.spec.location) }
                                td { (vm.spec.os_type.as_str()) }
                                td { (enforcement_icon(vm)) }
                            }
                        }
                        @if rows.is_empty() { tr { td colspan="6" { "Every VM you can see is configured or unsupported." } } }
                    }
                }
            }
        }
    }
}

fn unsupported_table(rows: &[&Placed<'_>]) -> Markup {
    html! {
        div.table-wrap tabindex="0" role="region" aria-label="Unsupported VMs" {
            table {
                thead { tr { th { "Virtual machine" } th { "Resource group" } th { "Location" } th { "Reason" } } }
                tbody {
                    @for p in rows {
                        tr {
                            td { a href=(vm_href(p.vm)) { (p.vm.spec.id.name()) } }
                            td { (p.vm.spec.id.resource_group()) }
                            td { (p.vm.spec.location) }
                            td.wrap { (p.reason.as_deref().unwrap_or("")) }
                        }
                    }
                    @if rows.is_empty() { tr { td colspan="4" { "No unsupported VM." } } }
                }
            }
        }
    }
}

/// A side panel over the JIT page (opened on `tab`).
pub async fn with_panel(
    app: &App,
    viewer: &Viewer,
    tab: View,
    status: StatusCode,
    title: &str,
    panel: Markup,
) -> Response {
    let q = JitQuery { view: Some(tab), page: 1, ..Default::default() };
    let behind = match content(app, viewer, &q).await {
        Ok(m) => m,
        Err(e) => return super::error_page(Some(viewer), e),
    };
    // The panel comes first in the document (it is drawn over the page), so that keyboard and
    // screen-reader users meet it before the page behind it.
    let body = html! {
        div.panel role="dialog" aria-modal="true" aria-labelledby="panel-title" {
            a.close.button href=(q.link(tab, 1)) aria-label="Close panel" { "✕" }
            h2 #panel-title { (title) }
            (panel)
        }
        div.panel-backdrop {}
        (behind)
    };
    html(status, layout::page(viewer, title, Nav::Jit, body))
}
