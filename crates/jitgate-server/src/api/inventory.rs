//! `GET /api/v1/vms` as a list: the VMs the caller may read, or one inventory view of them (as
//! the portal's JIT page groups VMs), filtered and paged (see [`super::paging`]).
//!
//! A page costs a fixed number of store reads whatever the number of VMs: which VMs it shows
//! comes from the inventory snapshot (`crate::web::inventory`: every VM placed in its view,
//! read again only when the store's revision moves); then, for the VMs of the page only, their
//! enforcement points are read fresh (one read) and, in the Configured view, their policy
//! entries and access facts (one read each). Which view a VM is in follows what its agent
//! reports of nftables within the snapshot's freshness (about two seconds); the fields shown
//! are read with the page.

use std::collections::HashMap;

use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;

use jitgate_api_types::datetime;
use jitgate_api_types::native::{ConnectionDetailsOut, ConnectionPortOut, PageOut, VmOut};
use jitgate_core::enforcement::AgentMode;
use jitgate_core::inventory::{classify, View, VmFacts};
use jitgate_core::VmId;
use jitgate_store::{AgentRecord, Principal, Vm, VmAccess, VmPolicy};

use super::paging::{select, ListParams};
use super::vms::vm_out;
use crate::arm::Query;
use crate::error::{json, ApiError};
use crate::web::inventory::Snapshot;
use crate::App;

/// Pages up to this size read their VMs' enforcement points by VM; larger ones read all agents.
const AGENTS_BY_VM: usize = 1000;

/// The view named by the `view` query parameter.
pub(super) fn parse_view(s: &str) -> Result<View, ApiError> {
    View::parse(s).ok_or_else(|| {
        ApiError::bad_request("InvalidView", format!("view '{s}' is not configured, notConfigured or unsupported"))
    })
}

/// `GET /api/v1/vms[?view=…][&subscription=…][&resourceGroup=…][&location=…][&name=…][&$top=…][&$skipToken=…]`.
pub(super) async fn list(
    app: &App,
    principal: &Principal,
    query: &Query,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<Response, ApiError> {
    let params = ListParams::parse(query)?;
    let grants = app.authz.grants(app.store.as_ref(), principal).await?;
    let snapshot = app.portal_inventory.get(app).await?;
    let (page, more) = select(&snapshot, &grants, &params);
    let vms = with_fresh_agents(app, page.iter().map(|&i| &snapshot.vms[i])).await?;
    let value = match params.view {
        None => vms.iter().map(|vm| vm_out(app, vm)).collect(),
        Some(view) => entries(app, &snapshot, &vms, view).await?,
    };
    let next_link = match (more, page.last()) {
        (true, Some(&last)) => Some(format!(
            "{}{}?{}",
            crate::arm::base_url(app, headers, uri),
            uri.path(),
            params.next_query(&snapshot.keys[last])
        )),
        _ => None,
    };
    Ok(json(StatusCode::OK, &PageOut { value, next_link }))
}

/// The VMs of a page with their enforcement points as they are now (the snapshot's may miss an
/// agent's last report): one read.
async fn with_fresh_agents<'a>(app: &App, page: impl Iterator<Item = &'a Vm>) -> Result<Vec<Vm>, ApiError> {
    let mut vms: Vec<Vm> = page.cloned().collect();
    let agents: Vec<AgentRecord> = if vms.is_empty() {
        Vec::new()
    } else if vms.len() <= AGENTS_BY_VM {
        let ids: Vec<String> = vms.iter().map(|v| v.spec.id.as_str().to_owned()).collect();
        app.store.agents_for_vms(&ids).await?
    } else {
        app.store.list_agents().await?
    };
    let fresh: HashMap<&str, &AgentRecord> = agents.iter().map(|a| (a.id.as_str(), a)).collect();
    for vm in &mut vms {
        if let Some(a) = vm.agent.as_mut() {
            if let Some(now) = fresh.get(a.id.as_str()) {
                *a = (*now).clone();
            }
        }
    }
    Ok(vms)
}

/// The entries of one view's page, with the view's fields.
async fn entries(app: &App, snapshot: &Snapshot, vms: &[Vm], view: View) -> Result<Vec<VmOut>, ApiError> {
    let (policies, access) = if view == View::Configured && !vms.is_empty() {
        let ids: Vec<VmId> = vms.iter().map(|v| v.spec.id.clone()).collect();
        let since = app.clock.now() - time::Duration::days(7);
        (app.store.policies_of_vms(&ids).await?, app.store.vm_access_many(&ids, since).await?)
    } else {
        (HashMap::new(), HashMap::new())
    };
    Ok(vms
        .iter()
        .map(|vm| {
            let key = vm.spec.id.key();
            entry(app, snapshot, vm, policies.get(&key), access.get(&key))
        })
        .collect())
}

fn entry(app: &App, snapshot: &Snapshot, vm: &Vm, policy: Option<&VmPolicy>, access: Option<&VmAccess>) -> VmOut {
    let mut entry = vm_out(app, vm);
    let facts = VmFacts {
        id: vm.spec.id.as_str(),
        classic: vm.spec.classic,
        configured: snapshot.configured.contains(&vm.spec.id.key()),
        enforcement_gap: entry.unsupported_reason.as_deref(),
    };
    let (_, reason) = classify(&facts, &snapshot.disabled);
    entry.classic = vm.spec.classic.then_some(true);
    entry.unsupported_reason = reason;
    let Some(p) = policy else { return entry };
    let access = access.cloned().unwrap_or_default();
    entry.policy_id = Some(p.policy.id());
    entry.approved_requests_last7_days = Some(access.approved_since);
    entry.last_access = access.last_access.map(datetime::format);
    entry.last_user = access.last_user;
    let (state, warning) = super::state_of(app, vm);
    entry.enforcement_state = Some(state.as_str().into());
    entry.warning = warning;
    entry.connection_details = Some(ConnectionDetailsOut {
        ports: p
            .vm
            .ports
            .iter()
            .map(|r| ConnectionPortOut {
                number: r.number,
                protocol: r.protocol.as_str().into(),
                allowed_source_address_prefixes: r.sources.prefixes().iter().map(|x| x.text().to_owned()).collect(),
                max_request_access_duration: r.max_duration.text().to_owned(),
                mapped_port: r.mapped_port,
            })
            .collect(),
        enforcement_point: vm.agent.as_ref().map(|a| a.name.clone()),
        mode: vm.agent.as_ref().map(|a| a.mode.as_str().to_owned()),
        public_ip_address: match &vm.cloud {
            Some(c) => c.public_address.map(|a| a.to_string()),
            None => vm
                .agent
                .as_ref()
                .filter(|a| a.mode == AgentMode::Gateway)
                .and_then(|a| a.public_address)
                .map(|a| a.to_string()),
        },
    });
    entry
}
