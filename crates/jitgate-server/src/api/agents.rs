//! Enforcement points: one-time join tokens and the agents that joined.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;

use jitgate_api_types::agent::{AgentOut, JoinTokenIn, JoinTokenInfoOut, JoinTokenOut};
use jitgate_api_types::datetime;
use jitgate_api_types::native::ListOut;
use jitgate_api_types::parse_json;
use jitgate_core::audit::ops;
use jitgate_core::enforcement::AgentMode;
use jitgate_core::ids::{validate_resource_group, validate_subscription, validate_vm_name};
use jitgate_core::rbac::actions;
use jitgate_core::AccessDuration;
use jitgate_store::{AgentRecord, JoinTokenSpec};

use crate::arm::read_body;
use crate::auth;
use crate::error::{json, ApiError};
use crate::{App, Caller};

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

/// Prefix of one-time join tokens.
pub const JOIN_TOKEN_PREFIX: &str = "jgj_";

/// `POST /api/v1/agentTokens` `{"subscription","resourceGroup","location","mode"?,"vm"?,"ttl"?}`:
/// 201 a one-time join token.
pub(super) async fn agent_tokens(
    State(app): State<App>,
    Caller { ctx, principal, .. }: Caller,
    body: Body,
) -> Result<Response, ApiError> {
    let input = match read_body(&app, body).await {
        Ok(b) => parse_json::<JoinTokenIn>(&b).map_err(ApiError::from),
        Err(e) => Err(e),
    };
    let out = create_join_token(&app, &ctx, &principal, input).await?;
    Ok(json(StatusCode::CREATED, &out))
}

/// Makes a one-time join token: the validation, authorization and audit of
/// `POST /api/v1/agentTokens`, shared with the portal's Enforcement points page. `input` is the
/// parsed body, or why it could not be read.
pub(crate) async fn create_join_token(
    app: &App,
    ctx: &crate::RequestCtx,
    principal: &jitgate_store::Principal,
    input: Result<JoinTokenIn, ApiError>,
) -> Result<JoinTokenOut, ApiError> {
    let audit = app.audit(ctx, &principal.name, ops::JOIN_TOKEN_WRITE, "/api/v1/agentTokens");
    let checked = async {
        let input = input?;
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
            bad(
                "mode",
                format!("mode '{}' is not host, gateway or cloud", jitgate_core::enforcement::quote(&mode_text)),
            )
        })?;
        if let Some(vm) = &input.vm {
            if mode != AgentMode::Host {
                return Err(bad(
                    "vm",
                    "only host-mode tokens are made for one VM; a gateway or a cloud connector joins under its own name"
                        .into(),
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
    app.authorize_change(principal, actions::VM_WRITE, &token_scope(&spec), &mut audit).await?;
    let token = format!("{JOIN_TOKEN_PREFIX}{}", &auth::new_token()[auth::TOKEN_PREFIX.len()..]);
    app.store.create_join_token(spec.clone(), &auth::hash_token(&token), audit).await?;
    Ok(JoinTokenOut {
        token,
        expires_on: datetime::format(spec.expires),
        subscription: spec.subscription,
        resource_group: spec.resource_group,
        location: spec.location,
        mode: spec.mode.as_str().into(),
        vm: spec.vm,
    })
}

/// Where a join token registers VMs: its resource group, or the one VM it was made for.
fn token_scope(spec: &JoinTokenSpec) -> String {
    // A cloud connector registers VMs in any resource group of its subscription (its mapping
    // chooses them): its token is made at the subscription.
    if spec.mode == AgentMode::Cloud {
        return format!("/subscriptions/{}", spec.subscription);
    }
    let rg = format!("/subscriptions/{}/resourceGroups/{}", spec.subscription, spec.resource_group);
    match &spec.vm {
        Some(vm) => format!("{rg}/providers/Microsoft.Compute/virtualMachines/{vm}"),
        None => rg,
    }
}

/// Where an agent is managed: its VM (host mode), the resource group it joined (gateway) or
/// its subscription (a cloud connector, whose VMs may be in any of its resource groups).
pub(crate) fn agent_scope(a: &AgentRecord) -> String {
    if a.mode == AgentMode::Cloud {
        return format!("/subscriptions/{}", a.subscription);
    }
    a.vm_id.clone().unwrap_or_else(|| format!("/subscriptions/{}/resourceGroups/{}", a.subscription, a.resource_group))
}

/// `DELETE /api/v1/agents/{id}`: revokes the agent's credential and removes it; the VMs it
/// enforced have no enforcement point until an agent joins for them. Needs
/// `Microsoft.Compute/virtualMachines/write` where the agent is managed.
pub(super) async fn delete_agent(
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
pub(super) async fn list_agent_tokens(
    State(app): State<App>,
    Caller { principal, .. }: Caller,
) -> Result<Response, ApiError> {
    let grants = app.authz.grants(app.store.as_ref(), &principal).await?;
    let now = app.clock.now();
    let value: Vec<JoinTokenInfoOut> = app
        .store
        .list_join_tokens()
        .await?
        .into_iter()
        .filter(|t| grants.permits(actions::VM_WRITE, &token_scope(&t.spec)))
        .map(|t| {
            let state = if t.used.is_some() {
                "used"
            } else if t.spec.expires <= now {
                "expired"
            } else {
                "unused"
            };
            JoinTokenInfoOut {
                subscription: t.spec.subscription,
                resource_group: t.spec.resource_group,
                location: t.spec.location,
                mode: t.spec.mode.as_str().into(),
                created_at: datetime::format(t.created),
                created_by: t.created_by,
                expires_on: datetime::format(t.spec.expires),
                used_at: t.used.map(datetime::format),
                state: state.into(),
                vm: t.spec.vm,
            }
        })
        .collect();
    Ok(json(StatusCode::OK, &ListOut { value }))
}

pub(super) async fn agents(State(app): State<App>, Caller { principal, .. }: Caller) -> Result<Response, ApiError> {
    let list = app.store.list_agents().await?;
    let grants = app.authz.grants(app.store.as_ref(), &principal).await?;
    let value =
        list.iter().filter(|a| grants.permits(actions::VM_READ, &agent_scope(a))).map(|a| agent_out(&app, a)).collect();
    Ok(json(StatusCode::OK, &ListOut { value }))
}
