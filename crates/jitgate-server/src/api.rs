//! jitgate's native API (`/api/v1`). For now: VM registration, which a policy needs before it
//! can name a VM (agents will register their own VMs later).
//!
//! - `PUT /api/v1/vms` `{"id","osType","location","address"?}` → 201 new, 200 replaced
//! - `GET /api/v1/vms` → `{"value":[…]}`; `GET /api/v1/vms?id=…` → one VM or 404
//! - `DELETE /api/v1/vms?id=…` → 200 with the removed VM; 404 unknown; 409 while a policy names it
//! - `POST /api/v1/agentTokens` → 201 a one-time join token; `GET /api/v1/agents`;
//!   `DELETE /api/v1/agents/{id}` → 200 the revoked and removed agent
//! - `GET /api/v1/requests/{id}`; `POST /api/v1/requests/{id}/revoke[?wait=applied]`

use axum::body::Body;
use axum::extract::Path;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use jitgate_api_types::agent::{AgentOut, JoinTokenIn, JoinTokenOut};
use jitgate_api_types::arm::request_out;
use jitgate_api_types::datetime;
use jitgate_api_types::native::{ConnectionDetailsOut, ConnectionPortOut, EnforcementOut, ListOut, VmIn, VmOut};
use jitgate_api_types::parse_json;
use jitgate_core::audit::ops;
use jitgate_core::enforcement::AgentMode;
use jitgate_core::ids::{validate_resource_group, validate_subscription, validate_vm_name};
use jitgate_core::invalid::codes;
use jitgate_core::rbac::actions;
use jitgate_core::{AccessDuration, VmId};
use jitgate_store::{AgentRecord, JoinTokenSpec, Vm, VmSpec};

use crate::arm::{read_body, Query};
use crate::auth;
use crate::error::{json, ApiError};
use crate::tls::PeerAddr;
use crate::{App, Caller};

pub fn router() -> Router<App> {
    Router::new()
        .route("/api/v1/vms", get(vms).put(vms).delete(vms))
        .route("/api/v1/agentTokens", post(agent_tokens).get(list_agent_tokens))
        .route("/api/v1/agents", get(agents))
        .route("/api/v1/agents/{id}", axum::routing::delete(delete_agent))
        .route("/api/v1/requests/{id}", get(get_request))
        .route("/api/v1/requests/{id}/revoke", post(revoke))
        .route("/api/v1/requests/{id}/approve", post(approve))
        .route("/api/v1/requests/{id}/deny", post(deny))
        .route("/api/v1/requests/{id}/extend", post(extend))
}

fn vm_out(app: &App, vm: &Vm) -> VmOut {
    let s = &vm.spec;
    let mut out = VmOut::new(&s.id, s.os_type, &s.location, s.address, vm.created, vm.updated);
    out.gateway = s.gateway.clone();
    match &vm.agent {
        None => {
            out.unsupported_reason = Some(match &s.gateway {
                Some(gw) => format!("no enforcement point: gateway '{gw}' has not joined (or was revoked)"),
                None => {
                    "no enforcement point: no agent runs on the VM (or it was revoked) and no gateway is in front of it"
                        .into()
                }
            });
        }
        Some(a) => {
            out.enforcement = Some(EnforcementOut {
                agent: a.name.clone(),
                mode: a.mode.as_str().into(),
                last_seen: a.last_seen.map(datetime::format),
                stale: app.is_stale(a),
            });
            if a.nft_usable == Some(false) {
                out.unsupported_reason = Some(format!(
                    "nftables unusable on {}: {}",
                    a.name,
                    a.nft_error.as_deref().unwrap_or("no reason given")
                ));
            }
        }
    }
    out
}

fn agent_out(app: &App, a: &AgentRecord) -> AgentOut {
    AgentOut {
        id: a.id.clone(),
        name: a.name.clone(),
        mode: a.mode.as_str().into(),
        subscription: a.subscription.clone(),
        resource_group: a.resource_group.clone(),
        location: a.location.clone(),
        vm_id: a.vm_id.clone(),
        addresses: a.addresses.iter().map(|x| x.to_string()).collect(),
        public_address: a.public_address.map(|x| x.to_string()),
        joined_at: datetime::format(a.joined),
        last_seen: a.last_seen.map(datetime::format),
        applied_revision: a.applied_revision,
        delivered_revision: a.delivered_revision,
        stale: app.is_stale(a),
        nftables_usable: a.nft_usable,
        nftables_error: a.nft_error.clone(),
    }
}

fn respond(r: Result<Response, ApiError>) -> Response {
    r.unwrap_or_else(IntoResponse::into_response)
}

/// Prefix of one-time join tokens.
pub const JOIN_TOKEN_PREFIX: &str = "jgj_";

async fn agent_tokens(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    req: Request<Body>,
) -> Response {
    respond(agent_tokens_inner(&app, peer, req).await)
}

async fn agent_tokens_inner(app: &App, peer: PeerAddr, req: Request<Body>) -> Result<Response, ApiError> {
    let ctx = crate::ctx_of(peer, &req);
    let (parts, body) = req.into_parts();
    let principal = app.authenticate(&parts.headers, &ctx, "/api/v1/agentTokens").await?;
    let audit = app.audit(&ctx, &principal.name, ops::JOIN_TOKEN_WRITE, "/api/v1/agentTokens");
    let checked = async {
        let body = read_body(app, body).await?;
        let input: JoinTokenIn = parse_json(&body)?;
        let bad = |field: &str, m: String| {
            let mut e = ApiError::bad_request("InvalidJoinTokenRequest", m);
            e.target = Some(field.into());
            e
        };
        let subscription = input.subscription.ok_or_else(|| bad("subscription", "subscription is required".into()))?;
        validate_subscription(&subscription).map_err(|m| bad("subscription", m))?;
        let resource_group =
            input.resource_group.ok_or_else(|| bad("resourceGroup", "resourceGroup is required".into()))?;
        validate_resource_group(&resource_group).map_err(|m| bad("resourceGroup", m))?;
        let location = input.location.ok_or_else(|| bad("location", "location is required, e.g. westeurope".into()))?;
        jitgate_core::ids::validate_location(&location).map_err(|m| bad("location", m))?;
        let mode_text = input.mode.unwrap_or_else(|| "host".into());
        let mode = AgentMode::parse(&mode_text).ok_or_else(|| {
            bad("mode", format!("mode '{}' is not host or gateway", jitgate_core::enforcement::quote(&mode_text)))
        })?;
        if let Some(vm) = &input.vm {
            if mode != AgentMode::Host {
                return Err(bad(
                    "vm",
                    "only host-mode tokens are made for one VM; a gateway joins under its own name".into(),
                ));
            }
            validate_vm_name(vm).map_err(|_| {
                let shown = jitgate_core::enforcement::quote(vm);
                bad("vm", format!("virtual machine name '{shown}' must be 1 to 64 characters without spaces"))
            })?;
        }
        let ttl = match input.ttl {
            None => time::Duration::hours(1),
            Some(t) => AccessDuration::parse(&t).map_err(|e| bad("ttl", e.0))?.duration(),
        };
        if ttl <= time::Duration::ZERO || ttl > time::Duration::days(7) {
            return Err(bad("ttl", "ttl must be positive and at most P7D".into()));
        }
        Ok::<_, ApiError>(JoinTokenSpec {
            subscription,
            resource_group,
            location,
            mode,
            expires: app.clock.now() + ttl,
            vm: input.vm,
        })
    }
    .await;
    let spec = match checked {
        Ok(s) => s,
        Err(e) => return Err(app.refuse(audit, e).await),
    };
    // Joining registers VMs in the token's resource group; a token made for one VM registers or
    // re-binds only that VM.
    let mut audit = audit;
    app.authorize_change(&principal, actions::VM_WRITE, &token_scope(&spec), &mut audit).await?;
    let token = format!("{JOIN_TOKEN_PREFIX}{}", &auth::new_token()[auth::TOKEN_PREFIX.len()..]);
    app.store.create_join_token(spec.clone(), &auth::hash_token(&token), audit).await?;
    let out = JoinTokenOut {
        token,
        expires_on: datetime::format(spec.expires),
        subscription: spec.subscription,
        resource_group: spec.resource_group,
        location: spec.location,
        mode: spec.mode.as_str().into(),
        vm: spec.vm,
    };
    Ok(json(StatusCode::CREATED, &out))
}

/// Where a join token registers VMs: its resource group, or the one VM it was made for.
fn token_scope(spec: &JoinTokenSpec) -> String {
    let rg = format!("/subscriptions/{}/resourceGroups/{}", spec.subscription, spec.resource_group);
    match &spec.vm {
        Some(vm) => format!("{rg}/providers/Microsoft.Compute/virtualMachines/{vm}"),
        None => rg,
    }
}

/// Where an agent is managed: its VM (host mode) or the resource group it joined (gateway).
fn agent_scope(a: &AgentRecord) -> String {
    a.vm_id.clone().unwrap_or_else(|| format!("/subscriptions/{}/resourceGroups/{}", a.subscription, a.resource_group))
}

/// `DELETE /api/v1/agents/{id}`: revokes the agent's credential and removes it; the VMs it
/// enforced have no enforcement point until an agent joins for them. Needs
/// `Microsoft.Compute/virtualMachines/write` where the agent is managed.
async fn delete_agent(
    State(app): State<App>,
    Path(id): Path<String>,
    Caller { ctx, principal, .. }: Caller,
) -> Result<Response, ApiError> {
    let shown = jitgate_core::enforcement::quote(&id);
    let mut audit = app.audit(&ctx, &principal.name, ops::AGENT_DELETE, &format!("/api/v1/agents/{shown}"));
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        let e = ApiError::not_found("AgentNotFound", format!("agent '{shown}' is not known"));
        return Err(app.refuse(audit, e).await);
    }
    if let Some(agent) = app.store.get_agent(&id).await? {
        app.authorize_change(&principal, actions::VM_WRITE, &agent_scope(&agent), &mut audit).await?;
    }
    let agent = app.store.delete_agent(&id, audit).await?;
    app.changed();
    Ok(json(StatusCode::OK, &agent_out(&app, &agent)))
}

/// `GET /api/v1/agentTokens`: join tokens where the caller may register VMs, without secrets.
async fn list_agent_tokens(State(app): State<App>, Caller { principal, .. }: Caller) -> Result<Response, ApiError> {
    let grants = app.authz.grants(app.store.as_ref(), &principal).await?;
    let now = app.clock.now();
    let value: Vec<serde_json::Value> = app
        .store
        .list_join_tokens()
        .await?
        .into_iter()
        .filter(|t| grants.permits(actions::VM_WRITE, &token_scope(&t.spec)))
        .map(|t| {
            let state = if t.used.is_some() { "used" } else if t.spec.expires <= now { "expired" } else { "unused" };
            serde_json::json!({
                "subscription": t.spec.subscription, "resourceGroup": t.spec.resource_group, "location": t.spec.location,
                "mode": t.spec.mode.as_str(), "createdAt": datetime::format(t.created), "createdBy": t.created_by,
                "expiresOn": datetime::format(t.spec.expires), "usedAt": t.used.map(datetime::format), "state": state,
                "vm": t.spec.vm,
            })
        })
        .collect();
    Ok(json(StatusCode::OK, &ListOut { value }))
}

async fn agents(State(app): State<App>, Caller { principal, .. }: Caller) -> Result<Response, ApiError> {
    let list = app.store.list_agents().await?;
    let grants = app.authz.grants(app.store.as_ref(), &principal).await?;
    let value =
        list.iter().filter(|a| grants.permits(actions::VM_READ, &agent_scope(a))).map(|a| agent_out(&app, a)).collect();
    Ok(json(StatusCode::OK, &ListOut { value }))
}

fn request_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| ApiError::bad_request("InvalidRequestId", format!("'{raw}' is not a request id")))
}

async fn get_request(
    State(app): State<App>,
    Path(id): Path<String>,
    Caller { principal, .. }: Caller,
) -> Result<Response, ApiError> {
    let id = request_id(&id)?;
    match app.store.get_request(id).await? {
        Some((policy, r)) => {
            app.authorize(&principal, actions::POLICY_READ, &policy).await?;
            let mut v = native_request(&r);
            v["policyId"] = serde_json::Value::String(policy);
            Ok(json(StatusCode::OK, &v))
        }
        None => Err(ApiError::not_found("RequestNotFound", format!("access request {id} was not found"))),
    }
}

async fn revoke(
    State(app): State<App>,
    Path(id): Path<String>,
    Caller { ctx, principal, query, .. }: Caller,
) -> Result<Response, ApiError> {
    let audit = app.audit(&ctx, &principal.name, ops::REQUEST_REVOKE, &format!("/api/v1/requests/{id}"));
    let (id, wait) = match request_id(&id).and_then(|id| Ok((id, crate::arm::wait_option(&query)?))) {
        Ok(x) => x,
        Err(e) => return Err(app.refuse(audit, e).await),
    };
    // The requester may end their own grants ("I'm done"); anyone else needs to be able
    // to change the policy.
    let mut audit = audit;
    if let Some((policy, request)) = app.store.get_request(id).await? {
        let action = if request.requestor == principal.name { actions::POLICY_INITIATE } else { actions::POLICY_WRITE };
        app.authorize_change(&principal, action, &policy, &mut audit).await?;
    }
    let request = app.store.revoke_request(id, &principal.name, audit).await?;
    app.changed();
    answer_request(&app, &request, wait).await
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
        "GET" | "HEAD" => match id_param(&query)? {
            None => {
                let list = app.store.list_vms().await?;
                let grants = app.authz.grants(app.store.as_ref(), &principal).await?;
                let visible: Vec<&Vm> =
                    list.iter().filter(|v| grants.permits(actions::VM_READ, v.spec.id.as_str())).collect();
                let value = match query.get("view") {
                    None | Some("") => visible.iter().map(|v| vm_out(app, v)).collect(),
                    Some(view) => {
                        let view = View::parse(view)?;
                        inventory(app, &visible, view).await?
                    }
                };
                Ok(json(StatusCode::OK, &ListOut { value }))
            }
            Some(id) => {
                app.authorize(&principal, actions::VM_READ, id.as_str()).await?;
                let found = app.store.get_vm(&id).await?;
                match found {
                    Some(vm) => Ok(json(StatusCode::OK, &vm_out(app, &vm))),
                    None => Err(ApiError::not_found(
                        codes::VM_NOT_FOUND,
                        format!("virtual machine '{id}' is not registered"),
                    )),
                }
            }
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
            Ok(json(if created { StatusCode::CREATED } else { StatusCode::OK }, &vm_out(app, &vm)))
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
            app.authorize_change(&principal, actions::VM_DELETE, id.as_str(), &mut audit).await?;
            let vm = app.store.delete_vm(&id, audit).await?;
            app.changed();
            Ok(json(StatusCode::OK, &vm_out(app, &vm)))
        }
        other => {
            let mut e = ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!("{other} is not supported on /api/v1/vms; use GET, PUT or DELETE"),
            );
            e.allow = Some("GET,HEAD,PUT,DELETE".into());
            Err(e)
        }
    }
}

async fn approve(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    Path(id): Path<String>,
    req: Request<Body>,
) -> Response {
    respond(decide(&app, peer, id, req, true).await)
}

async fn deny(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    Path(id): Path<String>,
    req: Request<Body>,
) -> Response {
    respond(decide(&app, peer, id, req, false).await)
}

/// `POST /api/v1/requests/{id}/approve[?wait=applied]` and `…/deny` `{"reason"}`: needs
/// `…/jitNetworkAccessPolicies/approve/action` on the policy; never on one's own request.
async fn decide(
    app: &App,
    peer: PeerAddr,
    id: String,
    req: Request<Body>,
    approve: bool,
) -> Result<Response, ApiError> {
    let ctx = crate::ctx_of(peer, &req);
    let (parts, body) = req.into_parts();
    let query = Query::parse(parts.uri.query());
    let principal = app.authenticate(&parts.headers, &ctx, "/api/v1/requests").await?;
    let op = if approve { ops::REQUEST_APPROVE } else { ops::REQUEST_DENY };
    let mut audit = app.audit(&ctx, &principal.name, op, &format!("/api/v1/requests/{id}"));
    let (id, wait) = match request_id(&id).and_then(|id| Ok((id, crate::arm::wait_option(&query)?))) {
        Ok(x) => x,
        Err(e) => return Err(app.refuse(audit, e).await),
    };
    let bytes = read_body(app, body).await?;
    let reason =
        serde_json::from_slice::<serde_json::Value>(&bytes).ok().and_then(|v| v["reason"].as_str().map(String::from));
    if let Some((policy, _)) = app.store.get_request(id).await? {
        audit.resource_id = policy.clone();
        app.authorize_change(&principal, actions::POLICY_APPROVE, &policy, &mut audit).await?;
    }
    let request = app.store.decide_request(id, approve, &principal.name, reason, app.clock.now(), audit).await?;
    app.changed();
    app.sweeper.notify_one();
    answer_request(app, &request, wait.filter(|_| approve)).await
}

/// `POST /api/v1/requests/{id}/extend` `{"duration":"PT1H"}` or `{"endTimeUtc":…}`: moves the
/// end of a live grant, at most the port's maximum from now. The requester may extend their own.
async fn extend(
    State(app): State<App>,
    Path(id): Path<String>,
    Caller { ctx, principal, query, .. }: Caller,
    body: Body,
) -> Result<Response, ApiError> {
    let mut audit = app.audit(&ctx, &principal.name, ops::REQUEST_EXTEND, &format!("/api/v1/requests/{id}"));
    let now = app.clock.now();
    let checked = async {
        let id = request_id(&id)?;
        let wait = crate::arm::wait_option(&query)?;
        let bytes = read_body(&app, body).await?;
        let v: serde_json::Value = parse_json(&bytes)?;
        let bad = |m: String| ApiError::bad_request("InvalidExtension", m);
        let new_end = match (v["duration"].as_str(), v["endTimeUtc"].as_str()) {
            (Some(d), None) => now + AccessDuration::parse(d).map_err(|e| bad(e.0))?.duration(),
            (None, Some(t)) => datetime::parse(t).map_err(bad)?,
            _ => return Err(bad("set exactly one of duration and endTimeUtc".into())),
        };
        Ok::<_, ApiError>((id, wait, new_end))
    }
    .await;
    let (id, wait, new_end) = match checked {
        Ok(x) => x,
        Err(e) => return Err(app.refuse(audit, e).await),
    };
    if let Some((policy, request)) = app.store.get_request(id).await? {
        let action = if request.requestor == principal.name { actions::POLICY_INITIATE } else { actions::POLICY_WRITE };
        app.authorize_change(&principal, action, &policy, &mut audit).await?;
    }
    let request = app.store.extend_request(id, new_end, now, audit).await?;
    app.changed();
    app.sweeper.notify_one();
    answer_request(&app, &request, wait).await
}

/// A request in the native API: the ARM shape plus `pendingExtensionEndTimeUtc` while an
/// extension waits for an approver.
fn native_request(r: &jitgate_store::AccessRequestRecord) -> serde_json::Value {
    let mut v = serde_json::to_value(request_out(r)).unwrap_or_default();
    if let Some(end) = r.pending_extension {
        v["pendingExtensionEndTimeUtc"] = serde_json::Value::String(datetime::format(end));
    }
    v
}

/// A request after a change to it: at once, or (`?wait=applied`) once its enforcement points
/// have applied the change.
async fn answer_request(
    app: &App,
    request: &jitgate_store::AccessRequestRecord,
    wait: Option<std::time::Duration>,
) -> Result<Response, ApiError> {
    let body = native_request(request);
    match wait {
        None => Ok(json(StatusCode::OK, &body)),
        Some(timeout) => {
            let vms: Vec<String> = request.grants.iter().map(|g| g.vm_id.clone()).collect();
            let revision = app.store.revision().await?;
            crate::arm::enforced_answer(app, &vms, revision, timeout, StatusCode::OK, &body, request.id).await
        }
    }
}

/// The inventory views of `GET /api/v1/vms?view=…`, as the portal's JIT page groups VMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Configured,
    NotConfigured,
    Unsupported,
}

impl View {
    fn parse(s: &str) -> Result<Self, ApiError> {
        match s.to_ascii_lowercase().as_str() {
            "configured" => Ok(View::Configured),
            "notconfigured" => Ok(View::NotConfigured),
            "unsupported" => Ok(View::Unsupported),
            _ => Err(ApiError::bad_request(
                "InvalidView",
                format!("view '{s}' is not configured, notConfigured or unsupported"),
            )),
        }
    }
}

/// The VMs of one view, with the view's fields.
async fn inventory(app: &App, vms: &[&Vm], view: View) -> Result<Vec<VmOut>, ApiError> {
    let disabled: Vec<String> =
        app.store.list_security_policies().await?.into_iter().filter(|p| !p.jit_enabled).map(|p| p.scope).collect();
    let now = app.clock.now();
    let mut out = Vec::new();
    for vm in vms {
        let policy = app.store.policy_of_vm(&vm.spec.id).await?;
        let mut entry = vm_out(app, vm);
        // Why JIT cannot protect the VM, in the order the portal gives them.
        let reason = if vm.spec.classic {
            Some("classic deployment: JIT protects ARM virtual machines only".to_string())
        } else if let Some(scope) = disabled.iter().find(|s| jitgate_core::rbac::scope_covers(s, vm.spec.id.as_str())) {
            Some(format!("JIT is disabled by a security policy on '{scope}'"))
        } else {
            entry.unsupported_reason.clone()
        };
        let belongs = match (&policy, &reason) {
            (Some(_), _) => View::Configured,
            (None, Some(_)) => View::Unsupported,
            (None, None) => View::NotConfigured,
        };
        if belongs != view {
            continue;
        }
        entry.classic = vm.spec.classic.then_some(true);
        entry.unsupported_reason = reason;
        if let Some(p) = policy {
            let access = app.store.vm_access(&vm.spec.id, now - time::Duration::days(7)).await?;
            entry.policy_id = Some(p.reference.id());
            entry.unsupported_reason = None;
            entry.approved_requests_last7_days = Some(access.approved_since);
            entry.last_access = access.last_access.map(datetime::format);
            entry.last_user = access.last_user;
            let state = match &vm.agent {
                None => "NotEnforced",
                Some(a) if a.nft_usable == Some(false) => "Unusable",
                Some(a) if app.is_stale(a) => "Stale",
                Some(_) => "Enforced",
            };
            entry.enforcement_state = Some(state.into());
            entry.warning = match state {
                "NotEnforced" => Some("no enforcement point: nothing closes these ports; run an agent on the VM or attach it to a gateway".into()),
                "Unusable" => Some("the enforcement point cannot program nftables: these ports are not closed".into()),
                "Stale" => Some("the enforcement point stopped reporting: its state is unknown".into()),
                _ => None,
            };
            let ports = p.vm(&vm.spec.id.key()).map(|v| v.ports.clone()).unwrap_or_default();
            entry.connection_details = Some(ConnectionDetailsOut {
                ports: ports
                    .iter()
                    .map(|r| ConnectionPortOut {
                        number: r.number,
                        protocol: r.protocol.as_str().into(),
                        allowed_source_address_prefixes: r
                            .sources
                            .prefixes()
                            .iter()
                            .map(|x| x.text().to_owned())
                            .collect(),
                        max_request_access_duration: r.max_duration.text().to_owned(),
                        mapped_port: r.mapped_port,
                    })
                    .collect(),
                enforcement_point: vm.agent.as_ref().map(|a| a.name.clone()),
                mode: vm.agent.as_ref().map(|a| a.mode.as_str().to_owned()),
                public_ip_address: vm
                    .agent
                    .as_ref()
                    .filter(|a| a.mode == AgentMode::Gateway)
                    .and_then(|a| a.public_address)
                    .map(|a| a.to_string()),
            });
        }
        out.push(entry);
    }
    Ok(out)
}
