//! The audit log as a product, security policies, and the inventory views:
//! - `GET /api/v1/audit?from=&to=&caller=&resourceId=&operation=&status=&top=` → `{"value":[…],"nextLink"?}`
//! - `GET /api/v1/audit/verify` → `{"valid":true,"records":N}` or `{"valid":false,"firstInvalid":SEQ,…}`
//! - `PUT /api/v1/securityPolicies` `{"scope","jitEnabled"}`; `GET /api/v1/securityPolicies`

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;

use jitgate_api_types::audit::{AuditPageOut, AuditRecordOut, AuditVerifyOut, SecurityPolicyIn, SecurityPolicyOut};
use jitgate_api_types::datetime;
use jitgate_api_types::native::ListOut;
use jitgate_api_types::parse_json;
use jitgate_api_types::rbac::validate_scope;
use jitgate_core::audit::AuditStatus;
use jitgate_core::rbac::actions;
use jitgate_store::{AuditFilter, AuditRecord};

use crate::arm::{read_body, Query};
use crate::error::{json, ApiError};
use crate::{App, Caller};

/// Changing where JIT may be enabled.
pub const SECURITY_POLICY_WRITE: &str = "Microsoft.Security/policies/write";
pub const SECURITY_POLICY_READ: &str = "Microsoft.Security/policies/read";
/// Records per audit page by default, and at most.
const DEFAULT_TOP: usize = 100;
const MAX_TOP: usize = 1000;

pub fn router() -> Router<App> {
    Router::new()
        .route("/api/v1/audit", get(list))
        .route("/api/v1/audit/verify", get(verify))
        .route("/api/v1/securityPolicies", get(list_policies).put(put_policy))
}

pub fn record_out(r: &AuditRecord) -> AuditRecordOut {
    AuditRecordOut {
        sequence: r.seq,
        event_timestamp: datetime::format(r.event.time),
        operation_name: r.event.operation.clone(),
        status: r.event.status.as_str().into(),
        caller: r.event.caller.clone(),
        caller_ip_address: r.event.caller_ip.clone(),
        resource_id: r.event.resource_id.clone(),
        correlation_id: r.event.correlation_id.clone(),
        properties: r.event.properties.clone(),
        hash: hex::encode(r.hash),
        previous_hash: hex::encode(r.prev_hash),
    }
}

pub(crate) fn filter(q: &Query) -> Result<AuditFilter, ApiError> {
    let time = |name: &str| {
        q.get(name)
            .filter(|v| !v.is_empty())
            .map(|v| datetime::parse(v).map_err(|m| ApiError::bad_request("InvalidAuditQuery", format!("{name}: {m}"))))
            .transpose()
    };
    let text = |name: &str| q.get(name).filter(|v| !v.is_empty()).map(String::from);
    let status = match q.get("status").filter(|v| !v.is_empty()) {
        None => None,
        Some(s) => Some(AuditStatus::parse(s).ok_or_else(|| {
            ApiError::bad_request("InvalidAuditQuery", format!("status '{s}' is not Started, Succeeded or Failed"))
        })?),
    };
    Ok(AuditFilter {
        from: time("from")?,
        to: time("to")?,
        caller: text("caller"),
        resource_id: text("resourceId"),
        operation: text("operation"),
        status,
    })
}

async fn list(
    State(app): State<App>,
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
    Caller { principal, query: q, .. }: Caller,
) -> Result<Response, ApiError> {
    let f = filter(&q)?;
    let after = match q.get("$skiptoken").filter(|v| !v.is_empty()) {
        None => 0,
        Some(t) => t
            .parse::<u64>()
            .map_err(|_| ApiError::bad_request("InvalidSkipToken", format!("'{t}' is not a skip token")))?,
    };
    let top = match q.get("top").or(q.get("$top")) {
        None => DEFAULT_TOP,
        Some(t) => t
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_TOP).contains(n))
            .ok_or_else(|| ApiError::bad_request("InvalidAuditQuery", format!("top '{t}' is not 1..{MAX_TOP}")))?,
    };
    // A caller sees the records of resources where it may read the audit log.
    let grants = app.authz.grants(app.store.as_ref(), &principal).await?;
    if !grants.assignments.iter().any(|(_, role)| role.allows(actions::AUDIT_READ)) {
        return Err(crate::authz::denied(&principal.label(), actions::AUDIT_READ, "/"));
    }
    let page = app.store.query_audit(&f, after, top).await?;
    let value: Vec<AuditRecordOut> =
        page.iter().filter(|r| grants.permits(actions::AUDIT_READ, &r.event.resource_id)).map(record_out).collect();
    let next_link = (page.len() == top).then(|| {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or(uri.authority().map(|a| a.as_str()))
            .unwrap_or("localhost");
        let scheme = if app.config.tls { "https" } else { "http" };
        let base = app.config.public_url.clone().unwrap_or_else(|| format!("{scheme}://{host}"));
        let mut pairs: Vec<String> = ["from", "to", "caller", "resourceId", "operation", "status"]
            .iter()
            .filter_map(|k| {
                q.get(k).filter(|v| !v.is_empty()).map(|v| {
                    format!("{k}={}", percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC))
                })
            })
            .collect();
        pairs.push(format!("top={top}"));
        pairs.push(format!("$skiptoken={}", page.last().map(|r| r.seq).unwrap_or(after)));
        format!("{}/api/v1/audit?{}", base.trim_end_matches('/'), pairs.join("&"))
    });
    Ok(json(StatusCode::OK, &AuditPageOut { value, next_link }))
}

async fn verify(State(app): State<App>, Caller { principal, .. }: Caller) -> Result<Response, ApiError> {
    app.authorize(&principal, actions::AUDIT_READ, "/").await?;
    let v = app.store.verify_audit().await?;
    Ok(json(
        StatusCode::OK,
        &AuditVerifyOut {
            valid: v.valid,
            records: v.records,
            first_invalid: v.first_invalid,
            archived_through: v.archived_through,
        },
    ))
}

async fn list_policies(State(app): State<App>, Caller { principal, .. }: Caller) -> Result<Response, ApiError> {
    let grants = app.authz.grants(app.store.as_ref(), &principal).await?;
    let value: Vec<SecurityPolicyOut> = app
        .store
        .list_security_policies()
        .await?
        .into_iter()
        .filter(|p| grants.permits(SECURITY_POLICY_READ, &p.scope))
        .map(|p| SecurityPolicyOut {
            scope: p.scope,
            jit_enabled: p.jit_enabled,
            updated_at: datetime::format(p.updated),
        })
        .collect();
    Ok(json(StatusCode::OK, &ListOut { value }))
}

async fn put_policy(
    State(app): State<App>,
    Caller { ctx, principal, .. }: Caller,
    body: Body,
) -> Result<Response, ApiError> {
    let mut audit = app.audit(&ctx, &principal.name, SECURITY_POLICY_WRITE, "/api/v1/securityPolicies");
    let checked = async {
        let b = read_body(&app, body).await?;
        let input: SecurityPolicyIn = parse_json(&b)?;
        let scope = input.scope.ok_or_else(|| ApiError::bad_request("InvalidSecurityPolicy", "scope is required"))?;
        validate_scope(&scope).map_err(|m| ApiError::bad_request("InvalidSecurityPolicy", m))?;
        if scope == "/" || scope.split('/').count() > 5 {
            return Err(ApiError::bad_request("InvalidSecurityPolicy", "scope is a subscription or a resource group"));
        }
        let enabled = input
            .jit_enabled
            .ok_or_else(|| ApiError::bad_request("InvalidSecurityPolicy", "jitEnabled is required"))?;
        Ok::<_, ApiError>((scope, enabled))
    }
    .await;
    let (scope, enabled) = match checked {
        Ok(x) => x,
        Err(e) => return Err(app.refuse(audit, e).await),
    };
    audit.resource_id = scope.clone();
    app.authorize_change(&principal, SECURITY_POLICY_WRITE, &scope, &mut audit).await?;
    let p = app.store.put_security_policy(&scope, enabled, audit).await?;
    app.portal_inventory.clear();
    app.changed();
    Ok(json(
        StatusCode::OK,
        &SecurityPolicyOut { scope: p.scope, jit_enabled: p.jit_enabled, updated_at: datetime::format(p.updated) },
    ))
}
