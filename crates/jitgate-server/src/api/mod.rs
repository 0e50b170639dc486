//! jitgate's native API (`/api/v1`), one module per resource; axum routes by method and every
//! handler takes the [`crate::Caller`] extractor.
//!
//! - `PUT /api/v1/vms` `{"id","osType","location","address"?}` → 201 new, 200 replaced
//! - `GET /api/v1/vms[?view=…&subscription=…&resourceGroup=…&location=…&name=…&$top=…&$skipToken=…]`
//!   → `{"value":[…],"nextLink"?}`; `GET /api/v1/vms?id=…` → one VM or 404
//! - `DELETE /api/v1/vms?id=…` → 200 with the removed VM; 404 unknown; 409 while a policy names it
//! - `POST /api/v1/agentTokens` → 201 a one-time join token; `GET /api/v1/agents`;
//!   `DELETE /api/v1/agents/{id}` → 200 the revoked and removed agent
//! - `GET /api/v1/requests/{id}`; `POST /api/v1/requests/{id}/revoke[?wait=applied]`

mod agents;
mod inventory;
mod paging;
mod requests;
mod vms;

use axum::routing::{get, post};
use axum::Router;

use jitgate_store::Vm;

use crate::App;

pub use agents::JOIN_TOKEN_PREFIX;
pub(crate) use agents::{agent_scope, create_join_token};
pub use jitgate_core::inventory::View;
pub(crate) use requests::{decide_request, extend_request, request_id, revoke_request};

/// What the inventory rules of core see of an agent (stale or not, nftables usable or not).
pub fn enforcer_of<'a>(app: &App, a: &'a jitgate_store::AgentRecord) -> jitgate_core::inventory::Enforcer<'a> {
    vms::enforcer(app, a)
}

/// Why JIT cannot protect `vm` now, if it cannot: its cloud connector's reason, or what its
/// enforcement point lacks.
pub fn gap_of(app: &App, vm: &Vm) -> Option<String> {
    let enforcer = vm.agent.as_ref().map(|a| enforcer_of(app, a));
    match &vm.cloud {
        Some(c) => jitgate_core::inventory::cloud_gap(c.unsupported_reason.as_deref(), enforcer.as_ref()),
        None => jitgate_core::inventory::enforcement_gap(vm.spec.gateway.as_deref(), enforcer.as_ref()),
    }
}

/// How `vm`'s ports are enforced, with the warning shown (a cloud connector's own error when it
/// fails).
pub fn state_of(app: &App, vm: &Vm) -> (jitgate_core::inventory::EnforcementState, Option<String>) {
    use jitgate_core::inventory::EnforcementState;
    let enforcer = vm.agent.as_ref().map(|a| enforcer_of(app, a));
    let failure = vm.cloud.as_ref().and_then(|c| c.failure.as_deref());
    let unsupported = vm.cloud.as_ref().and_then(|c| c.unsupported_reason.as_deref());
    let state = match &vm.cloud {
        Some(_) => EnforcementState::of_cloud(enforcer.as_ref(), unsupported.is_some(), failure),
        None => EnforcementState::of(enforcer.as_ref()),
    };
    let warning = match (state, failure, unsupported) {
        (EnforcementState::Failed, Some(f), _) => Some(f.to_owned()),
        (EnforcementState::NotEnforced, _, Some(r)) => Some(format!("not enforced: {r}")),
        _ => state.warning().map(str::to_owned),
    };
    (state, warning)
}

pub fn router() -> Router<App> {
    Router::new()
        .route("/api/v1/vms", get(vms::get_vms).put(vms::put_vm).delete(vms::delete_vm))
        .route("/api/v1/agentTokens", post(agents::agent_tokens).get(agents::list_agent_tokens))
        .route("/api/v1/agents", get(agents::agents))
        .route("/api/v1/agents/{id}", axum::routing::delete(agents::delete_agent))
        .route("/api/v1/requests/{id}", get(requests::get_request))
        .route("/api/v1/requests/{id}/revoke", post(requests::revoke))
        .route("/api/v1/requests/{id}/approve", post(requests::approve))
        .route("/api/v1/requests/{id}/deny", post(requests::deny))
        .route("/api/v1/requests/{id}/extend", post(requests::extend))
}
