//! Identity and authorization shapes: principals, tokens, role definitions (Azure's JSON form,
//! as `az role definition create` takes it) and role assignments.

use serde::{Deserialize, Serialize};

use jitgate_core::rbac::RoleDefinition;
use jitgate_core::Invalid;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PrincipalIn {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(rename = "type")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PrincipalOut {
    /// What role assignments and tokens refer to (`oidc:…` for an OIDC identity).
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// An OIDC identity's display claim, cleaned; shown only, never used to find the principal.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub display_name: Option<String>,
    /// An OIDC identity's issuer and subject (`sub`), which the principal is keyed by.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub issuer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub subject: Option<String>,
}

/// `GET /api/v1/whoami`: the caller, the credential it signed in with, and its role assignments.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WhoAmIOut {
    pub principal: PrincipalOut,
    /// `token` (a jitgate API token) or `idToken` (an OIDC sign-in).
    pub credential: String,
    /// The API token's id (`jitgate token revoke ID`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub token_id: Option<i64>,
    /// When the credential stops working; absent: never.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub expires_on: Option<String>,
    pub role_assignments: Vec<RoleAssignmentOut>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenIn {
    /// ISO-8601 lifetime; absent: as long as the server's maximum and the creating credential allow.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenCreatedOut {
    pub id: i64,
    /// The secret, shown only here.
    pub token: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub expires_on: Option<String>,
    /// What created it: `token` (with `parentId`), `idToken` or `server`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub created_with: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub parent_id: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenOut {
    pub id: i64,
    pub principal: String,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub expires_on: Option<String>,
    pub revoked: bool,
    /// What created it: `token` (with `parentId`), `idToken` or `server`; absent for tokens made
    /// before this was recorded.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub created_with: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub parent_id: Option<i64>,
}

/// Azure's role definition JSON. Field names are Azure's (`Name`, `Actions` …); camelCase is
/// accepted too.
#[derive(Debug, Serialize, Deserialize)]
pub struct RoleDefinitionIo {
    #[serde(rename = "Name", alias = "name", alias = "roleName", default)]
    pub name: Option<String>,
    #[serde(rename = "Id", alias = "id", default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "IsCustom", alias = "isCustom", default, skip_serializing_if = "Option::is_none")]
    pub is_custom: Option<bool>,
    #[serde(rename = "Description", alias = "description", default)]
    pub description: Option<String>,
    #[serde(rename = "Actions", alias = "actions", default)]
    pub actions: Option<Vec<String>>,
    #[serde(rename = "NotActions", alias = "notActions", default)]
    pub not_actions: Option<Vec<String>>,
    #[serde(rename = "DataActions", alias = "dataActions", default, skip_serializing_if = "Option::is_none")]
    pub data_actions: Option<Vec<String>>,
    #[serde(rename = "NotDataActions", alias = "notDataActions", default, skip_serializing_if = "Option::is_none")]
    pub not_data_actions: Option<Vec<String>>,
    #[serde(rename = "AssignableScopes", alias = "assignableScopes", default)]
    pub assignable_scopes: Option<Vec<String>>,
}

/// `/`, or an ARM path below a subscription: `/subscriptions/{guid}[/resourceGroups/{rg}[/…]]`.
pub fn validate_scope(scope: &str) -> Result<(), String> {
    if scope == "/" {
        return Ok(());
    }
    if scope.len() > 1024 {
        return Err(format!("a scope is at most 1024 bytes (UTF-8); this one has {}", scope.len()));
    }
    let parts: Vec<&str> = scope.trim_end_matches('/').split('/').collect();
    let bad = || {
        format!(
            "scope '{}' is not '/' or /subscriptions/{{id}}[/resourceGroups/{{name}}[/providers/…]]",
            jitgate_core::ids::shown_max(scope, 200)
        )
    };
    if parts.len() < 3
        || !parts[0].is_empty()
        || !parts[1].eq_ignore_ascii_case("subscriptions")
        || parts.iter().skip(1).any(|p| p.is_empty())
    {
        return Err(bad());
    }
    // Every segment is a resource name ARM would accept: no '%', '\', '?', '#', no control or
    // invisible characters, no '.' or '..'.
    for p in &parts[1..] {
        jitgate_core::ids::check_arm_segment("scope segment", p, 260)?;
    }
    jitgate_core::ids::validate_subscription(parts[2])?;
    if parts.len() > 3 {
        if !parts[3].eq_ignore_ascii_case("resourceGroups") || parts.len() < 5 {
            return Err(bad());
        }
        jitgate_core::ids::validate_resource_group(parts[4])?;
        if parts.len() > 5 && (!parts[5].eq_ignore_ascii_case("providers") || parts.len() < 8) {
            return Err(bad());
        }
    }
    Ok(())
}

impl RoleDefinitionIo {
    /// Checks the body and makes the role `name` (the path's name wins when the body has none;
    /// they must agree when both are given).
    pub fn into_role(self, name: &str, id: String) -> Result<RoleDefinition, Invalid> {
        let bad = |field: &str, m: String| Invalid::input("InvalidRoleDefinition", Some(field.into()), m);
        if let Some(n) = &self.name {
            if !n.eq_ignore_ascii_case(name) {
                return Err(bad("Name", format!("the body names the role '{n}' but the path names '{name}'")));
            }
        }
        if name.trim() != name {
            return Err(bad("Name", "a role name cannot start or end with a space".into()));
        }
        jitgate_core::ids::check_arm_segment("role name", name, 128).map_err(|m| bad("Name", m))?;
        let check = |field: &str, list: &[String]| -> Result<(), Invalid> {
            for a in list {
                if a.is_empty() || a.len() > 512 || a.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(bad(
                        field,
                        format!("'{a}' is not an action string such as Microsoft.Compute/virtualMachines/read"),
                    ));
                }
            }
            Ok(())
        };
        let actions = self.actions.unwrap_or_default();
        if actions.is_empty() {
            return Err(bad("Actions", "a role needs at least one action".into()));
        }
        check("Actions", &actions)?;
        let not_actions = self.not_actions.unwrap_or_default();
        check("NotActions", &not_actions)?;
        let scopes = self.assignable_scopes.unwrap_or_default();
        if scopes.is_empty() {
            return Err(bad("AssignableScopes", "name at least one assignable scope, e.g. /subscriptions/{id}".into()));
        }
        for s in &scopes {
            validate_scope(s).map_err(|m| bad("AssignableScopes", m))?;
        }
        Ok(RoleDefinition {
            name: self.name.unwrap_or_else(|| name.to_owned()),
            id,
            description: self.description.unwrap_or_default(),
            actions,
            not_actions,
            assignable_scopes: scopes,
            built_in: false,
        })
    }

    pub fn from_role(r: &RoleDefinition) -> Self {
        RoleDefinitionIo {
            name: Some(r.name.clone()),
            id: Some(r.id.clone()),
            is_custom: Some(!r.built_in),
            description: Some(r.description.clone()),
            actions: Some(r.actions.clone()),
            not_actions: Some(r.not_actions.clone()),
            data_actions: Some(vec![]),
            not_data_actions: Some(vec![]),
            assignable_scopes: Some(r.assignable_scopes.clone()),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RoleAssignmentIn {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoleAssignmentOut {
    pub id: String,
    pub principal: String,
    pub role: String,
    pub scope: String,
    pub created_at: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_are_root_or_below_a_subscription() {
        let sub = "/subscriptions/20ff7fc3-e762-44dd-bd96-b71116dcdc23";
        for ok in [
            "/".to_string(),
            sub.to_string(),
            format!("{sub}/resourceGroups/rg1"),
            format!("{sub}/resourceGroups/rg1/providers/Microsoft.Compute/virtualMachines/vm1"),
        ] {
            assert!(validate_scope(&ok).is_ok(), "{ok}");
        }
        for bad in [
            "".to_string(),
            "subscriptions/x".into(),
            "/subscriptions/nope".into(),
            format!("{sub}/resourceGroups"),
            format!("{sub}/things/x"),
            format!("{sub}/resourceGroups/rg/providers/x"),
            format!("{sub}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/.."),
            format!("{sub}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/a%2Fb"),
            format!("{sub}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/a{}b", '\u{202E}'),
            format!("{sub}/resourceGroups/../providers/Microsoft.Compute/virtualMachines/vm"),
            format!("{sub}/resourceGroups/rg/providers/{}", "x/".repeat(600)),
        ] {
            assert!(validate_scope(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn role_definitions_in_azure_form() {
        let body = r#"{"Name":"JIT Access Role","IsCustom":true,"Description":"d","Actions":["Microsoft.Compute/virtualMachines/read"],"NotActions":[],"AssignableScopes":["/subscriptions/20ff7fc3-e762-44dd-bd96-b71116dcdc23"]}"#;
        let io: RoleDefinitionIo = serde_json::from_str(body).expect("parse");
        let role = io.into_role("JIT Access Role", "id".into()).expect("valid");
        assert_eq!(role.actions, ["Microsoft.Compute/virtualMachines/read"]);
        let out = serde_json::to_value(RoleDefinitionIo::from_role(&role)).expect("json");
        assert_eq!(out["AssignableScopes"][0], "/subscriptions/20ff7fc3-e762-44dd-bd96-b71116dcdc23");
        assert_eq!(out["IsCustom"], true);
        let camel: RoleDefinitionIo =
            serde_json::from_str(r#"{"actions":["*/read"],"assignableScopes":["/"]}"#).expect("camelCase");
        assert!(camel.into_role("r", "id".into()).is_ok());
        for bad in [
            r#"{"Name":"other","Actions":["a"],"AssignableScopes":["/"]}"#,
            r#"{"Actions":[],"AssignableScopes":["/"]}"#,
            r#"{"Actions":["a b"],"AssignableScopes":["/"]}"#,
            r#"{"Actions":["a"],"AssignableScopes":[]}"#,
            r#"{"Actions":["a"],"AssignableScopes":["/nope"]}"#,
        ] {
            let io: RoleDefinitionIo = serde_json::from_str(bad).expect("parse");
            assert!(io.into_role("r", "id".into()).is_err(), "{bad}");
        }
    }
}
