//! jitgate's native API (`/api/v1`). For now: VM registration, which a policy needs before it
//! can name a VM (agents will register their own VMs later).
//!
//! - `PUT /api/v1/vms` `{"id","osType","location","address"?}` → 201 new, 200 replaced
//! - `GET /api/v1/vms` → `{"value":[…]}`; `GET /api/v1/vms?id=…` → one VM or 404
//! - `DELETE /api/v1/vms?id=…` → 200 with the removed VM; 404 unknown; 409 while a policy names it

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;

use jitgate_api_types::native::{ListOut, VmIn, VmOut};
use jitgate_api_types::parse_json;
use jitgate_core::audit::ops;
use jitgate_core::invalid::codes;
use jitgate_core::VmId;
use jitgate_store::{Vm, VmSpec};

use crate::arm::{read_body, Query};
use crate::error::{json, ApiError};
use crate::tls::PeerAddr;
use crate::App;

pub fn router() -> Router<App> {
    Router::new().route("/api/v1/vms", any(vms))
}

fn vm_out(vm: &Vm) -> VmOut {
    let s = &vm.spec;
    VmOut::new(&s.id, s.os_type, &s.location, s.address, vm.created, vm.updated)
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

async fn vms(State(app): State<App>, ConnectInfo(peer): ConnectInfo<PeerAddr>, req: Request<Body>) -> Response {
    match vms_inner(&app, peer, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn vms_inner(app: &App, peer: PeerAddr, req: Request<Body>) -> Result<Response, ApiError> {
    let ctx = crate::ctx_of(peer, &req);
    let (parts, body) = req.into_parts();
    let query = Query::parse(parts.uri.query());
    let principal = app.authenticate(&parts.headers, &ctx, "/api/v1/vms").await?;
    match parts.method.as_str() {
        "GET" => match id_param(&query)? {
            None => {
                let list = app.store.list_vms().await?;
                Ok(json(StatusCode::OK, &ListOut { value: list.iter().map(vm_out).collect() }))
            }
            Some(id) => match app.store.get_vm(&id).await? {
                Some(vm) => Ok(json(StatusCode::OK, &vm_out(&vm))),
                None => {
                    Err(ApiError::not_found(codes::VM_NOT_FOUND, format!("virtual machine '{id}' is not registered")))
                }
            },
        },
        "PUT" => {
            let audit = app.audit(&ctx, &principal.name, ops::VM_WRITE, "/api/v1/vms");
            let reg = match read_body(app, body)
                .await
                .and_then(|b| parse_json::<VmIn>(&b).and_then(VmIn::validate).map_err(Into::into))
            {
                Ok(r) => r,
                Err(e) => return Err(app.refuse(audit, e).await),
            };
            let mut audit = audit;
            audit.resource_id = reg.id.as_str().to_owned();
            let spec = VmSpec { id: reg.id, os_type: reg.os_type, location: reg.location, address: reg.address };
            let (vm, created) = app.store.put_vm(spec, audit).await?;
            Ok(json(if created { StatusCode::CREATED } else { StatusCode::OK }, &vm_out(&vm)))
        }
        "DELETE" => {
            let audit = app.audit(&ctx, &principal.name, ops::VM_DELETE, "/api/v1/vms");
            let id = match id_param(&query) {
                Ok(Some(id)) => id,
                Ok(None) => {
                    let e = ApiError::bad_request(
                        codes::INVALID_VM,
                        "name the VM to remove: DELETE /api/v1/vms?id=<ARM id>",
                    );
                    return Err(app.refuse(audit, e).await);
                }
                Err(e) => return Err(app.refuse(audit, e).await),
            };
            let mut audit = audit;
            audit.resource_id = id.as_str().to_owned();
            let vm = app.store.delete_vm(&id, audit).await?;
            Ok(json(StatusCode::OK, &vm_out(&vm)))
        }
        other => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{other} is not supported on /api/v1/vms; use GET, PUT or DELETE"),
        )),
    }
}
