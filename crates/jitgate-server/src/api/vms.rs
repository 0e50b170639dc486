//! Virtual machines: registration, listing (with the inventory views) and removal.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;

use jitgate_api_types::datetime;
use jitgate_api_types::native::{EnforcementOut, VmIn, VmOut};
use jitgate_api_types::parse_json;
use jitgate_core::audit::ops;
use jitgate_core::invalid::codes;
use jitgate_core::inventory::Enforcer;
use jitgate_core::rbac::actions;
use jitgate_core::VmId;
use jitgate_store::{AgentRecord, Vm, VmSpec};

use super::agents::agent_scope;
use super::inventory::list;
use crate::arm::{read_body, Query};
use crate::error::{json, ApiError};
use crate::{App, Caller};

pub(super) fn vm_out(app: &App, vm: &Vm) -> VmOut {
    let s = &vm.spec;
    let mut out = VmOut::new(&s.id, s.os_type, &s.location, s.address, vm.created, vm.updated);
    out.gateway = s.gateway.clone();
    out.unsupported_reason = super::gap_of(app, vm);
    if let Some(c) = &vm.cloud {
        out.cloud = Some((&c.facts).into());
        out.public_address = c.public_address.map(|a| a.to_string());
    }
    out.enforcement = vm.agent.as_ref().map(|a| EnforcementOut {
        agent: a.name.clone(),
        mode: a.mode.as_str().into(),
        last_seen: a.last_seen.map(datetime::format),
        stale: app.is_stale(a),
    });
    out
}

/// What the inventory rules of core see of an agent.
pub(super) fn enforcer<'a>(app: &App, a: &'a AgentRecord) -> Enforcer<'a> {
    Enforcer { name: &a.name, nft_usable: a.nft_usable, nft_error: a.nft_error.as_deref(), stale: app.is_stale(a) }
}

fn id_param(q: &Query) -> Result<Option<VmId>, ApiError> {
    match q.get("id") {
        None => Ok(None),
        Some(id) => VmId::parse(id).map(Some).map_err(|m| {
            let mut e = ApiError::bad_request(codes::INVALID_VM, m);
            e.target = Some("id".into());
            e
        }),
    }
}

/// `GET /api/v1/vms[?id=…]`: one VM, or the VMs the caller may read (an inventory view of them,
/// filtered and paged: see [`super::inventory::list`]).
pub(super) async fn get_vms(
    State(app): State<App>,
    Caller { principal, query, .. }: Caller,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    match id_param(&query)? {
        None => list(&app, &principal, &query, &headers, &uri).await,
        Some(id) => {
            app.authorize(&principal, actions::VM_READ, id.as_str()).await?;
            let found = app.store.get_vm(&id).await?;
            match found {
                Some(vm) => Ok(json(StatusCode::OK, &vm_out(&app, &vm))),
                None => Err(jitgate_core::vm_put::not_registered(&id).into()),
            }
        }
    }
}

/// `PUT /api/v1/vms` `{"id","osType","location","address"?,"gateway"?}`: 201 new, 200 replaced.
pub(super) async fn put_vm(
    State(app): State<App>,
    Caller { ctx, principal, .. }: Caller,
    body: Body,
) -> Result<Response, ApiError> {
    let audit = app.audit(&ctx, &principal.name, ops::VM_WRITE, "/api/v1/vms");
    let reg = match read_body(&app, body)
        .await
        .and_then(|b| parse_json::<VmIn>(&b).and_then(VmIn::validate).map_err(Into::into))
    {
        Ok(r) => r,
        Err(e) => return Err(app.refuse(audit, e).await),
    };
    let mut audit = audit;
    audit.resource_id = reg.id.as_str().to_owned();
    app.authorize_change(&principal, actions::VM_WRITE, reg.id.as_str(), &mut audit).await?;
    // A gateway is a resource of its own subscription and resource group: attaching a VM
    // to it routes the VM's grants through it, so the caller must be able to manage it.
    // It is looked up in the VM's subscription only (the store refuses unknown names).
    if let Some(gw) = &reg.gateway {
        if let Some(g) = app.store.gateway_agent(reg.id.subscription(), gw).await? {
            app.authorize_change(&principal, actions::VM_WRITE, &agent_scope(&g), &mut audit).await?;
        }
    }
    let spec = VmSpec {
        id: reg.id,
        os_type: reg.os_type,
        location: reg.location,
        address: reg.address,
        gateway: reg.gateway,
        classic: reg.classic,
    };
    let (vm, created) = app.store.put_vm(spec, audit).await?;
    app.changed();
    Ok(json(if created { StatusCode::CREATED } else { StatusCode::OK }, &vm_out(&app, &vm)))
}

/// `DELETE /api/v1/vms?id=…`: 200 with the removed VM; 404 unknown; 409 while a policy names it.
pub(super) async fn delete_vm(
    State(app): State<App>,
    Caller { ctx, principal, query, .. }: Caller,
) -> Result<Response, ApiError> {
    let audit = app.audit(&ctx, &principal.name, ops::VM_DELETE, "/api/v1/vms");
    let id = match id_param(&query) {
        Ok(Some(id)) => id,
        Ok(None) => {
            let e = ApiError::bad_request(codes::INVALID_VM, "name the VM to remove: DELETE /api/v1/vms?id=<ARM id>");
            return Err(app.refuse(audit, e).await);
        }
        Err(e) => return Err(app.refuse(audit, e).await),
    };
    let mut audit = audit;
    audit.resource_id = id.as_str().to_owned();
    app.authorize_change(&principal, actions::VM_DELETE, id.as_str(), &mut audit).await?;
    let vm = app.store.delete_vm(&id, audit).await?;
    app.changed();
    Ok(json(StatusCode::OK, &vm_out(&app, &vm)))
}
