//! Identity and authorization endpoints (`/api/v1`):
//! - `GET /api/v1/whoami`: the caller, its credential and its role assignments (anyone signed in)
//! - `POST /api/v1/principals` `{"name","type":"User"|"ServicePrincipal"}` → 201; `GET`; `DELETE /api/v1/principals/{name}`
//! - `POST /api/v1/principals/{name}/tokens` `{"expiresIn":"PT1H"}` → 201 `{"id","token","expiresOn"}` (the
//!   token is shown only here); `GET` lists without secrets; `DELETE /api/v1/tokens/{id}` revokes
//! - `PUT /api/v1/roleDefinitions/{name}` (Azure's role definition JSON); `GET /api/v1/roleDefinitions[/{name}]`; `DELETE`
//! - `POST /api/v1/roleAssignments` `{"principal","role","scope"}` → 201 with its `id`;
//!   `GET /api/v1/roleAssignments?principal=…`; `DELETE /api/v1/roleAssignments/{id}`

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{delete, get, post};
use axum::Router;

use jitgate_api_types::datetime;
use jitgate_api_types::native::ListOut;
use jitgate_api_types::parse_json;
use jitgate_api_types::rbac::{
    validate_scope, PrincipalIn, PrincipalOut, RoleAssignmentIn, RoleAssignmentOut, RoleDefinitionIo, TokenCreatedOut,
    TokenIn, TokenOut, WhoAmIOut,
};
use jitgate_core::audit::AuditEvent;
use jitgate_core::identity::{self, TokenLimits};
use jitgate_core::rbac::{actions, built_in_roles, RoleDefinition};
use jitgate_core::AccessDuration;
use jitgate_store::{NewToken, Principal, RoleAssignment, TokenOrigin, TokenRecord};

use crate::arm::read_body;
use crate::error::{json, ApiError};
use crate::{auth, authz};
use crate::{App, Caller};

pub fn router() -> Router<App> {
    Router::new()
        .route("/api/v1/whoami", get(whoami))
        .route("/api/v1/principals", post(create_principal).get(list_principals))
        .route("/api/v1/principals/{name}", delete(delete_principal))
        .route("/api/v1/principals/{name}/tokens", post(create_token).get(list_tokens))
        .route("/api/v1/tokens/{id}", delete(revoke_token))
        .route("/api/v1/roleDefinitions", get(list_roles))
        .route("/api/v1/roleDefinitions/{name}", get(get_role).put(put_role).delete(delete_role))
        .route("/api/v1/roleAssignments", post(create_assignment).get(list_assignments))
        .route("/api/v1/roleAssignments/{id}", delete(delete_assignment))
}

fn principal_out(p: &Principal) -> PrincipalOut {
    PrincipalOut {
        name: p.name.clone(),
        kind: p.kind.clone(),
        display_name: p.display_name.clone(),
        issuer: p.oidc.as_ref().map(|o| o.issuer.clone()),
        subject: p.oidc.as_ref().map(|o| o.subject.clone()),
    }
}

fn origin_out(origin: Option<TokenOrigin>) -> (Option<String>, Option<i64>) {
    match origin {
        Some(TokenOrigin::Token(parent)) => (Some("token".into()), Some(parent)),
        Some(o) => (Some(o.as_str().into()), None),
        None => (None, None),
    }
}

fn token_out(t: &TokenRecord) -> TokenOut {
    let (created_with, parent_id) = origin_out(t.origin);
    TokenOut {
        id: t.id,
        principal: t.principal.clone(),
        created_at: datetime::format(t.created),
        expires_on: t.expires.map(datetime::format),
        revoked: t.revoked.is_some(),
        created_with,
        parent_id,
    }
}

fn assignment_out(a: &RoleAssignment) -> RoleAssignmentOut {
    RoleAssignmentOut {
        id: a.id.clone(),
        principal: a.principal.clone(),
        role: a.role.clone(),
        scope: a.scope.clone(),
        created_at: datetime::format(a.created),
    }
}

fn bad(code: &str, field: &str, message: impl Into<String>) -> ApiError {
    let mut e = ApiError::bad_request(code, message);
    e.target = Some(field.into());
    e
}

/// Reads and parses the body, recording a refusal when it is bad.
async fn parse_body<T: serde::de::DeserializeOwned>(app: &App, body: Body, audit: &AuditEvent) -> Result<T, ApiError> {
    let parsed = match read_body(app, body).await {
        Ok(b) => parse_json::<T>(&b).map_err(ApiError::from),
        Err(e) => Err(e),
    };
    match parsed {
        Ok(v) => Ok(v),
        Err(e) => Err(app.refuse(audit.clone(), e).await),
    }
}

/// Who the caller is: anyone signed in may ask, and sees only their own assignments.
async fn whoami(State(app): State<App>, c: Caller) -> Result<Response, ApiError> {
    let assignments = app.store.list_role_assignments(Some(&c.principal.name)).await?;
    let (credential, token_id) = match &c.credential {
        crate::Credential::Token { id, .. } => ("token", Some(*id)),
        crate::Credential::IdToken { .. } => ("idToken", None),
    };
    let out = WhoAmIOut {
        principal: principal_out(&c.principal),
        credential: credential.into(),
        token_id,
        expires_on: c.credential.expires().map(datetime::format),
        role_assignments: assignments
            .iter()
            .filter(|a| a.principal.eq_ignore_ascii_case(&c.principal.name))
            .map(assignment_out)
            .collect(),
    };
    Ok(json(StatusCode::OK, &out))
}

async fn create_principal(State(app): State<App>, c: Caller, body: Body) -> Result<Response, ApiError> {
    let mut audit = app.audit(&c.ctx, &c.principal.name, actions::PRINCIPAL_WRITE, "/api/v1/principals");
    app.authorize_change(&c.principal, actions::PRINCIPAL_WRITE, "/", &mut audit).await?;
    let input: PrincipalIn = parse_body(&app, body, &audit).await?;
    let checked = (|| {
        let name = input.name.ok_or_else(|| bad("InvalidPrincipal", "name", "name is required"))?;
        identity::validate_local_name(&name)?;
        let kind = input.kind.unwrap_or_else(|| "User".into());
        let kind = match kind.to_ascii_lowercase().as_str() {
            "user" => "User",
            "serviceprincipal" => "ServicePrincipal",
            _ => return Err(bad("InvalidPrincipal", "type", format!("type '{kind}' is not User or ServicePrincipal"))),
        };
        Ok((name, kind))
    })();
    let (name, kind) = match checked {
        Ok(x) => x,
        Err(e) => return Err(app.refuse(audit, e).await),
    };
    audit.resource_id = format!("/api/v1/principals/{name}");
    let p = app.store.create_principal(&name, kind, audit).await?;
    Ok(json(StatusCode::CREATED, &principal_out(&p)))
}

async fn list_principals(State(app): State<App>, c: Caller) -> Result<Response, ApiError> {
    app.authorize(&c.principal, actions::PRINCIPAL_READ, "/").await?;
    let list = app.store.list_principals().await?;
    Ok(json(StatusCode::OK, &ListOut { value: list.iter().map(principal_out).collect() }))
}

async fn delete_principal(State(app): State<App>, Path(name): Path<String>, c: Caller) -> Result<Response, ApiError> {
    let resource = format!("/api/v1/principals/{name}");
    let mut audit = app.audit(&c.ctx, &c.principal.name, actions::PRINCIPAL_WRITE, &resource);
    app.authorize_change(&c.principal, actions::PRINCIPAL_WRITE, "/", &mut audit).await?;
    if name.eq_ignore_ascii_case(&c.principal.name) {
        let e = ApiError::bad_request("CannotDeleteSelf", "a principal cannot delete itself");
        return Err(app.refuse(audit, e).await);
    }
    let p = app.store.delete_principal(&name, audit).await?;
    app.authz.invalidate();
    // Its grants were revoked with it: agents close them now, not at their end time.
    app.changed();
    Ok(json(StatusCode::OK, &principal_out(&p)))
}

/// Managing one's own tokens needs no extra right; anyone else's needs the principal action.
async fn self_or(
    app: &App,
    caller: &Principal,
    owner: &str,
    action: &str,
    audit: &mut AuditEvent,
) -> Result<(), ApiError> {
    if caller.name == owner {
        audit.properties.insert("authorizedBy".into(), "own credential".into());
        return Ok(());
    }
    app.authorize_change(caller, action, "/", audit).await
}

async fn create_token(
    State(app): State<App>,
    Path(name): Path<String>,
    c: Caller,
    body: Body,
) -> Result<Response, ApiError> {
    let resource = format!("/api/v1/principals/{name}/tokens");
    let mut audit = app.audit(&c.ctx, &c.principal.name, actions::PRINCIPAL_WRITE, &resource);
    app.rate_limit(crate::limits::Action::CreateToken, &c.principal.name, &audit).await?;
    self_or(&app, &c.principal, &name, actions::PRINCIPAL_WRITE, &mut audit).await?;
    let bytes = match read_body(&app, body).await {
        Ok(b) => b,
        Err(e) => return Err(app.refuse(audit, e).await),
    };
    let input: TokenIn = if bytes.iter().all(u8::is_ascii_whitespace) {
        TokenIn::default()
    } else {
        match parse_json(&bytes) {
            Ok(i) => i,
            Err(e) => return Err(app.refuse(audit, e.into()).await),
        }
    };
    let requested = match input.expires_in.as_deref() {
        None => None,
        Some(text) if text.len() > 64 => {
            return Err(app
                .refuse(audit, bad("InvalidToken", "expiresIn", "expiresIn is not a duration such as PT8H"))
                .await)
        }
        Some(text) => match AccessDuration::parse(text) {
            Ok(d) => Some(d.duration()),
            Err(e) => return Err(app.refuse(audit, bad("InvalidToken", "expiresIn", e.0)).await),
        },
    };
    // No longer than the server allows, and never longer than the credential asking for it.
    let limits = TokenLimits { max: app.config.max_token_lifetime, parent_expires: c.credential.expires() };
    let expires = match identity::token_expiry(requested, app.clock.now(), limits) {
        Ok(e) => e,
        Err(invalid) => return Err(app.refuse(audit, invalid.into()).await),
    };
    let token = auth::new_token();
    let new =
        NewToken { principal: name, token_hash: auth::hash_token(&token), expires, origin: c.credential.origin() };
    let t = app.store.create_token(new, audit).await?;
    let (created_with, parent_id) = origin_out(t.origin);
    let out = TokenCreatedOut { id: t.id, token, expires_on: t.expires.map(datetime::format), created_with, parent_id };
    Ok(json(StatusCode::CREATED, &out))
}

async fn list_tokens(State(app): State<App>, Path(name): Path<String>, c: Caller) -> Result<Response, ApiError> {
    if c.principal.name != name {
        app.authorize(&c.principal, actions::PRINCIPAL_READ, "/").await?;
    }
    let list = app.store.list_tokens(&name).await?;
    Ok(json(StatusCode::OK, &ListOut { value: list.iter().map(token_out).collect() }))
}

async fn revoke_token(State(app): State<App>, Path(id): Path<String>, c: Caller) -> Result<Response, ApiError> {
    let resource = format!("/api/v1/tokens/{id}");
    let mut audit = app.audit(&c.ctx, &c.principal.name, actions::PRINCIPAL_WRITE, &resource);
    let Some(id) = id.parse::<i64>().ok() else {
        return Err(app
            .refuse(audit, ApiError::bad_request("InvalidTokenId", format!("'{id}' is not a token id")))
            .await);
    };
    let owner = app.store.get_token(id).await?.map(|t| t.principal).unwrap_or_default();
    self_or(&app, &c.principal, &owner, actions::PRINCIPAL_WRITE, &mut audit).await?;
    let t = app.store.revoke_token(id, audit).await?;
    Ok(json(StatusCode::OK, &token_out(&t)))
}

fn built_in(name: &str) -> Option<RoleDefinition> {
    built_in_roles().into_iter().find(|r| r.name.eq_ignore_ascii_case(name))
}

/// A built-in role or a custom one.
pub(crate) async fn find_role(app: &App, name: &str) -> Result<Option<RoleDefinition>, ApiError> {
    match built_in(name) {
        Some(r) => Ok(Some(r)),
        None => Ok(app.store.get_role_definition(name).await?),
    }
}

async fn list_roles(State(app): State<App>, _caller: Caller) -> Result<Response, ApiError> {
    let mut roles = built_in_roles();
    roles.extend(app.store.list_role_definitions().await?);
    Ok(json(StatusCode::OK, &ListOut { value: roles.iter().map(RoleDefinitionIo::from_role).collect() }))
}

async fn get_role(State(app): State<App>, Path(name): Path<String>, _caller: Caller) -> Result<Response, ApiError> {
    match find_role(&app, &name).await? {
        Some(r) => Ok(json(StatusCode::OK, &RoleDefinitionIo::from_role(&r))),
        None => Err(ApiError::not_found("RoleDefinitionNotFound", format!("no role named '{name}'"))),
    }
}

fn read_only(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "RoleDefinitionIsBuiltIn",
        format!("'{name}' is a built-in role and cannot be changed"),
    )
}

async fn put_role(
    State(app): State<App>,
    Path(name): Path<String>,
    c: Caller,
    body: Body,
) -> Result<Response, ApiError> {
    let input = match read_body(&app, body).await {
        Ok(b) => parse_json::<RoleDefinitionIo>(&b).map_err(ApiError::from),
        Err(e) => Err(e),
    };
    let (stored, created) = put_role_definition(&app, &c.ctx, &c.principal, &name, input).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok(json(status, &RoleDefinitionIo::from_role(&stored)))
}

/// Creates or replaces a custom role: the validation, authorization and audit of
/// `PUT /api/v1/roleDefinitions/{name}`, shared with the portal's "Create least-privileged
/// requester role". `input` is the parsed body, or why it could not be read.
pub(crate) async fn put_role_definition(
    app: &App,
    ctx: &crate::RequestCtx,
    caller: &Principal,
    name: &str,
    input: Result<RoleDefinitionIo, ApiError>,
) -> Result<(RoleDefinition, bool), ApiError> {
    let resource = format!("/api/v1/roleDefinitions/{name}");
    let mut audit = app.audit(ctx, &caller.name, actions::ROLE_DEFINITION_WRITE, &resource);
    if built_in(name).is_some() {
        return Err(app.refuse(audit, read_only(name)).await);
    }
    let input = match input {
        Ok(i) => i,
        Err(e) => return Err(app.refuse(audit, e).await),
    };
    let existing = app.store.get_role_definition(name).await?;
    let id = existing.as_ref().map(|r| r.id.clone()).unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let role = match input.into_role(name, id) {
        Ok(r) => r,
        Err(e) => return Err(app.refuse(audit, e.into()).await),
    };
    // One may only define roles where one may write role definitions: every scope the role
    // can be assigned at (and, when replacing, every scope it could be assigned at before).
    let old_scopes = existing.map(|r| r.assignable_scopes).unwrap_or_default();
    for scope in role.assignable_scopes.iter().chain(old_scopes.iter()) {
        app.authorize_change(caller, actions::ROLE_DEFINITION_WRITE, scope, &mut audit).await?;
    }
    let (stored, created) = app.store.put_role_definition(role, audit).await?;
    app.authz.invalidate();
    Ok((stored, created))
}

async fn delete_role(State(app): State<App>, Path(name): Path<String>, c: Caller) -> Result<Response, ApiError> {
    let resource = format!("/api/v1/roleDefinitions/{name}");
    let mut audit = app.audit(&c.ctx, &c.principal.name, actions::ROLE_DEFINITION_DELETE, &resource);
    if built_in(&name).is_some() {
        return Err(app.refuse(audit, read_only(&name)).await);
    }
    let Some(existing) = app.store.get_role_definition(&name).await? else {
        let e = ApiError::not_found("RoleDefinitionNotFound", format!("no custom role named '{name}'"));
        return Err(app.refuse(audit, e).await);
    };
    for scope in &existing.assignable_scopes {
        app.authorize_change(&c.principal, actions::ROLE_DEFINITION_DELETE, scope, &mut audit).await?;
    }
    let role = app.store.delete_role_definition(&name, audit).await?;
    app.authz.invalidate();
    Ok(json(StatusCode::OK, &RoleDefinitionIo::from_role(&role)))
}

async fn create_assignment(State(app): State<App>, c: Caller, body: Body) -> Result<Response, ApiError> {
    let input = match read_body(&app, body).await {
        Ok(b) => parse_json::<RoleAssignmentIn>(&b).map_err(ApiError::from),
        Err(e) => Err(e),
    };
    let a = assign_role(&app, &c.ctx, &c.principal, input).await?;
    Ok(json(StatusCode::CREATED, &assignment_out(&a)))
}

/// Assigns a role at a scope: the validation, authorization and audit of
/// `POST /api/v1/roleAssignments`, shared with the portal's Access control page. `input` is the
/// parsed body, or why it could not be read.
pub(crate) async fn assign_role(
    app: &App,
    ctx: &crate::RequestCtx,
    caller: &Principal,
    input: Result<RoleAssignmentIn, ApiError>,
) -> Result<RoleAssignment, ApiError> {
    let mut audit = app.audit(ctx, &caller.name, actions::ROLE_ASSIGNMENT_WRITE, "/api/v1/roleAssignments");
    let input = match input {
        Ok(i) => i,
        Err(e) => return Err(app.refuse(audit, e).await),
    };
    let checked = (|| {
        let principal =
            input.principal.ok_or_else(|| bad("InvalidRoleAssignment", "principal", "principal is required"))?;
        let role = input.role.ok_or_else(|| bad("InvalidRoleAssignment", "role", "role is required"))?;
        let scope = input.scope.ok_or_else(|| bad("InvalidRoleAssignment", "scope", "scope is required"))?;
        validate_scope(&scope).map_err(|m| bad("InvalidRoleAssignment", "scope", m))?;
        Ok((principal, role, scope))
    })();
    let (principal, role, scope) = match checked {
        Ok(x) => x,
        Err(e) => return Err(app.refuse(audit, e).await),
    };
    audit.resource_id = scope.clone();
    // Assigning a role, to oneself or anyone, needs roleAssignments/write at that scope.
    app.authorize_change(caller, actions::ROLE_ASSIGNMENT_WRITE, &scope, &mut audit).await?;
    let Some(definition) = find_role(app, &role).await? else {
        let e = ApiError::not_found("RoleDefinitionNotFound", format!("no role named '{role}'"));
        return Err(app.refuse(audit, e).await);
    };
    if !definition.assignable_at(&scope) {
        let e = bad(
            "RoleNotAssignableAtScope",
            "scope",
            format!("role '{}' can only be assigned at {}", definition.name, definition.assignable_scopes.join(", ")),
        );
        return Err(app.refuse(audit, e).await);
    }
    let a = app.store.create_role_assignment(&principal, &definition.name, &scope, audit).await?;
    app.authz.invalidate();
    Ok(a)
}

async fn list_assignments(State(app): State<App>, c: Caller) -> Result<Response, ApiError> {
    let grants = app.authz.grants(app.store.as_ref(), &c.principal).await?;
    // Asking for someone else's assignments needs the right to read assignments somewhere.
    if let Some(asked) = c.query.get("principal") {
        let reads_any = grants.assignments.iter().any(|(_, role)| role.allows(actions::ROLE_ASSIGNMENT_READ));
        if !asked.eq_ignore_ascii_case(&c.principal.name) && !reads_any {
            return Err(authz::denied(&c.principal.label(), actions::ROLE_ASSIGNMENT_READ, "/"));
        }
    }
    let list = app.store.list_role_assignments(c.query.get("principal")).await?;
    // Everyone sees their own assignments; others' where they may read assignments.
    let value = list
        .iter()
        .filter(|a| a.principal == c.principal.name || grants.permits(actions::ROLE_ASSIGNMENT_READ, &a.scope))
        .map(assignment_out)
        .collect();
    Ok(json(StatusCode::OK, &ListOut { value }))
}

async fn delete_assignment(State(app): State<App>, Path(id): Path<String>, c: Caller) -> Result<Response, ApiError> {
    let resource = format!("/api/v1/roleAssignments/{id}");
    let mut audit = app.audit(&c.ctx, &c.principal.name, actions::ROLE_ASSIGNMENT_DELETE, &resource);
    let Some(a) = app.store.get_role_assignment(&id).await? else {
        let e = ApiError::not_found("RoleAssignmentNotFound", format!("no role assignment {id}"));
        return Err(app.refuse(audit, e).await);
    };
    app.authorize_change(&c.principal, actions::ROLE_ASSIGNMENT_DELETE, &a.scope, &mut audit).await?;
    let a = app.store.delete_role_assignment(&id, audit).await?;
    app.authz.invalidate();
    Ok(json(StatusCode::OK, &assignment_out(&a)))
}
