//! Authorization: who may do what where. Each principal's role assignments are resolved once
//! (built-in or custom roles) and cached until any role or assignment changes; a check is then a
//! walk over that principal's assignments, in memory.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::http::StatusCode;

use jitgate_core::rbac::{self, built_in_roles, RoleDefinition};
use jitgate_store::{Principal, Store, StoreResult};

use crate::error::ApiError;

/// One principal's resolved assignments: (scope, role).
#[derive(Debug, Default)]
pub struct Grants {
    pub assignments: Vec<(String, Arc<RoleDefinition>)>,
}

impl Grants {
    /// The first assignment that allows `action` over `resource`, as "Role at scope".
    pub fn allowing(&self, action: &str, resource: &str) -> Option<String> {
        self.assignments
            .iter()
            .find(|(scope, role)| rbac::scope_covers(scope, resource) && role.allows(action))
            .map(|(scope, role)| format!("{} at {}", role.name, scope))
    }

    pub fn permits(&self, action: &str, resource: &str) -> bool {
        self.allowing(action, resource).is_some()
    }

    /// The first assignment, at whatever scope, whose role allows `action` ("Role at scope"): for
    /// rights that concern only the caller's own things, wherever they are.
    pub fn allowing_somewhere(&self, action: &str) -> Option<String> {
        self.assignments
            .iter()
            .find(|(_, role)| role.allows(action))
            .map(|(scope, role)| format!("{} at {}", role.name, scope))
    }
}

/// The cache of resolved grants, cleared whenever roles or assignments change.
#[derive(Default)]
pub struct Authz {
    cache: RwLock<HashMap<i64, Arc<Grants>>>,
}

impl Authz {
    /// Forgets every resolved grant (after any change to roles, assignments or principals).
    pub fn invalidate(&self) {
        if let Ok(mut c) = self.cache.write() {
            c.clear();
        }
    }

    /// The principal's grants, from the cache or resolved from the store.
    pub async fn grants(&self, store: &dyn Store, principal: &Principal) -> StoreResult<Arc<Grants>> {
        if let Some(g) = self.cache.read().ok().and_then(|c| c.get(&principal.id).cloned()) {
            return Ok(g);
        }
        let built_in: Vec<Arc<RoleDefinition>> = built_in_roles().into_iter().map(Arc::new).collect();
        let mut custom: HashMap<String, Option<Arc<RoleDefinition>>> = HashMap::new();
        let mut assignments = Vec::new();
        for a in store.list_role_assignments(Some(&principal.name)).await? {
            let role = match built_in.iter().find(|r| r.name.eq_ignore_ascii_case(&a.role)) {
                Some(r) => Some(r.clone()),
                None => {
                    let key = a.role.to_ascii_lowercase();
                    if !custom.contains_key(&key) {
                        custom.insert(key.clone(), store.get_role_definition(&a.role).await?.map(Arc::new));
                    }
                    custom.get(&key).cloned().flatten()
                }
            };
            if let Some(role) = role {
                assignments.push((a.scope, role));
            }
        }
        let grants = Arc::new(Grants { assignments });
        if let Ok(mut c) = self.cache.write() {
            c.insert(principal.id, grants.clone());
        }
        Ok(grants)
    }
}

/// Azure's 403: `AuthorizationFailed`, naming the missing action and the scope.
pub fn denied(principal: &str, action: &str, scope: &str) -> ApiError {
    let d = rbac::Denied { principal: principal.into(), action: action.into(), scope: scope.into() };
    ApiError::new(StatusCode::FORBIDDEN, "AuthorizationFailed", d.to_string())
}
