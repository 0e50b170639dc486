//! The cloud connector's part of the agent protocol: `PUT /agent/v1/inventory` (the instances it
//! found, registered as VMs it enforces) and `POST /agent/v1/enforcement` (the rules it removed,
//! each audited, and the VMs whose rules it cannot change). Only an agent that joined in `cloud`
//! mode may call them (`409 NotACloudConnector` otherwise); both bodies are bounded
//! (`jitgate_core::cloud::limits`) and checked whole before anything is stored.

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use jitgate_api_types::agent::{EnforcementReportIn, InventoryIn, InventoryOut};
use jitgate_api_types::parse_json;
use jitgate_core::audit::ops;
use jitgate_core::cloud::{self, CloudVmDraft, RemovalDraft};

use crate::agent_api::{agent_caller, agent_error, agent_resource, bounded, AgentCaller};
use crate::error::{json, ApiError};
use crate::App;

/// `PUT /agent/v1/inventory` `{"vms":[…]}`: 200 `{"registered","unsupported","revision"}`.
pub(crate) async fn inventory(
    State(app): State<App>,
    AgentCaller { ctx, agent, .. }: AgentCaller,
    body: Body,
) -> Result<Response, ApiError> {
    let app = &app;
    let audit = app.audit(&ctx, &agent_caller(&agent), ops::AGENT_INVENTORY, &agent_resource(&agent));
    let checked = async {
        cloud::require_cloud(agent.mode, "PUT /agent/v1/inventory")?;
        let body = crate::arm::read_body_within(app, body, cloud::limits::INVENTORY_BODY_BYTES).await?;
        let input = parse_json::<InventoryIn>(&body).map_err(|e| bounded(e.into()))?;
        let drafts = input.vms.into_iter().map(CloudVmDraft::from).collect();
        cloud::check_inventory(drafts, &agent.subscription, &agent.resource_group).map_err(|i| bounded(i.into()))
    }
    .await;
    let vms = match checked {
        Ok(vms) => vms,
        Err(e) => return Err(app.refuse(audit, e).await),
    };
    let done = app.store.put_cloud_inventory(&agent.id, vms, audit).await.map_err(agent_error)?;
    if done.changed {
        app.changed();
    }
    let revision = app.store.revision().await?;
    let out = InventoryOut { registered: done.registered, unsupported: done.unsupported, revision };
    Ok(json(StatusCode::OK, &out))
}

/// `POST /agent/v1/enforcement` `{"removals":[…],"failures":[…]}`: 204.
pub(crate) async fn enforcement(
    State(app): State<App>,
    AgentCaller { ctx, agent, .. }: AgentCaller,
    body: Body,
) -> Result<Response, ApiError> {
    let app = &app;
    let audit = app.audit(&ctx, &agent_caller(&agent), ops::AGENT_ENFORCEMENT, &agent_resource(&agent));
    let checked = async {
        cloud::require_cloud(agent.mode, "POST /agent/v1/enforcement")?;
        let body = crate::arm::read_body_within(app, body, cloud::limits::REPORT_BODY_BYTES).await?;
        let input = parse_json::<EnforcementReportIn>(&body).map_err(|e| bounded(e.into()))?;
        let removals = input.removals.into_iter().map(RemovalDraft::from).collect();
        let failures = input.failures.into_iter().map(|f| (f.vm_id, f.error)).collect();
        cloud::check_report(removals, failures).map_err(|i| bounded(i.into()))
    }
    .await;
    let report = match checked {
        Ok(report) => report,
        Err(e) => return Err(app.refuse(audit, e).await),
    };
    if app.store.report_cloud_enforcement(&agent.id, report, audit).await.map_err(agent_error)? {
        app.changed();
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}
