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

use crate::App;

pub use agents::JOIN_TOKEN_PREFIX;
pub(crate) use agents::{agent_scope, create_join_token};
pub use jitgate_core::inventory::View;
pub(crate) use requests::{decide_request, extend_request, request_id, revoke_request};

/// What the inventory rules of core see of an agent (stale or not, nftables usable or not).
pub fn enforcer_of<'a>(app: &App, a: &'a jitgate_store::AgentRecord) -> jitgate_core::inventory::Enforcer<'a> {
    vms::enforcer(app, a)
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
