//! Turns an Azure resource path into one value of a closed enum, or the error to answer.
//!
//! ARM paths compare case-insensitively (`resourcegroups` = `resourceGroups`), segments are
//! percent-decoded one by one (a `%2F` inside a name never splits it), and a trailing slash is
//! tolerated.

use axum::http::{Method, StatusCode};
use percent_encoding::percent_decode_str;

use jitgate_core::PolicyRef;
use jitgate_store::ListScope;

use crate::error::ApiError;

/// What an ARM request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArmRoute {
    List(ListScope),
    Get(PolicyRef),
    Put(PolicyRef),
    Delete(PolicyRef),
    Initiate(PolicyRef),
}

impl ArmRoute {
    /// The Activity Log name of the operation.
    pub fn operation(&self) -> &'static str {
        use jitgate_core::audit::ops;
        match self {
            ArmRoute::List(_) | ArmRoute::Get(_) => ops::POLICY_READ,
            ArmRoute::Put(_) => ops::POLICY_WRITE,
            ArmRoute::Delete(_) => ops::POLICY_DELETE,
            ArmRoute::Initiate(_) => ops::POLICY_INITIATE,
        }
    }

    /// The route's name in metrics (`arm.list`, `arm.get`, …).
    pub fn name(&self) -> &'static str {
        match self {
            ArmRoute::List(_) => "arm.list",
            ArmRoute::Get(_) => "arm.get",
            ArmRoute::Put(_) => "arm.put",
            ArmRoute::Delete(_) => "arm.delete",
            ArmRoute::Initiate(_) => "arm.initiate",
        }
    }

    pub fn is_mutation(&self) -> bool {
        !matches!(self, ArmRoute::List(_) | ArmRoute::Get(_))
    }
}

fn not_found(path: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "InvalidResourceType",
        format!("no resource type at '{path}'; jitgate serves Microsoft.Security/locations/jitNetworkAccessPolicies"),
    )
}

fn method_not_allowed(method: &Method, path: &str, allow: &str) -> ApiError {
    let mut e = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        format!("{method} is not supported on '{path}'; allowed: {allow}"),
    );
    e.allow = Some(allow.into());
    e
}

fn decode(seg: &str) -> Result<String, ApiError> {
    percent_decode_str(seg)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| ApiError::bad_request("InvalidUri", format!("path segment '{seg}' is not UTF-8 once decoded")))
}

fn eq(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// Parses `method` + raw `path` (still percent-encoded).
pub fn parse(method: &Method, path: &str) -> Result<ArmRoute, ApiError> {
    let trimmed = path.strip_suffix('/').unwrap_or(path);
    let raw: Vec<&str> = trimmed.split('/').skip(1).collect();
    if raw.len() < 4 || !eq(raw[0], "subscriptions") || raw.iter().any(|s| s.is_empty()) {
        return Err(not_found(path));
    }
    let segs: Vec<String> = raw.iter().map(|s| decode(s)).collect::<Result<_, _>>()?;
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let sub = s[1];
    // Split off an optional resourceGroups/{rg}.
    let (rg, rest) = if eq(s[2], "resourceGroups") && s.len() > 4 { (Some(s[3]), &s[4..]) } else { (None, &s[2..]) };
    if rest.len() < 3 || !eq(rest[0], "providers") || !eq(rest[1], "Microsoft.Security") {
        return Err(not_found(path));
    }
    let rest = &rest[2..];
    let get_only =
        |route: ArmRoute| if method == Method::GET { Ok(route) } else { Err(method_not_allowed(method, path, "GET")) };
    let check_sub =
        || jitgate_core::ids::validate_subscription(sub).map_err(|m| ApiError::bad_request("InvalidSubscriptionId", m));
    let check_rg = |rg: &str| {
        jitgate_core::ids::validate_resource_group(rg).map_err(|m| ApiError::bad_request("InvalidResourceGroupName", m))
    };
    match rest {
        [p] if eq(p, "jitNetworkAccessPolicies") => {
            check_sub()?;
            let scope = match rg {
                None => ListScope::Subscription { subscription: sub.into() },
                Some(rg) => {
                    check_rg(rg)?;
                    ListScope::ResourceGroup { subscription: sub.into(), resource_group: rg.into() }
                }
            };
            get_only(ArmRoute::List(scope))
        }
        [l, loc, p] if eq(l, "locations") && eq(p, "jitNetworkAccessPolicies") => {
            check_sub()?;
            jitgate_core::ids::validate_location(loc).map_err(|m| ApiError::bad_request("InvalidLocation", m))?;
            let scope = match rg {
                None => ListScope::SubscriptionLocation { subscription: sub.into(), location: (*loc).into() },
                Some(rg) => {
                    check_rg(rg)?;
                    ListScope::ResourceGroupLocation {
                        subscription: sub.into(),
                        resource_group: rg.into(),
                        location: (*loc).into(),
                    }
                }
            };
            get_only(ArmRoute::List(scope))
        }
        [l, loc, p, name, tail @ ..] if eq(l, "locations") && eq(p, "jitNetworkAccessPolicies") && tail.len() <= 1 => {
            let Some(rg) = rg else { return Err(not_found(path)) };
            let reference = PolicyRef::new(sub, rg, loc, name).map_err(ApiError::from)?;
            match (tail, method) {
                ([], &Method::GET) => Ok(ArmRoute::Get(reference)),
                ([], &Method::PUT) => Ok(ArmRoute::Put(reference)),
                ([], &Method::DELETE) => Ok(ArmRoute::Delete(reference)),
                ([action], &Method::POST) if eq(action, "initiate") => Ok(ArmRoute::Initiate(reference)),
                ([action], _) if eq(action, "initiate") => Err(method_not_allowed(method, path, "POST")),
                ([], _) => Err(method_not_allowed(method, path, "GET, PUT, DELETE")),
                _ => Err(not_found(path)),
            }
        }
        _ => Err(not_found(path)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUB: &str = "20ff7fc3-e762-44dd-bd96-b71116dcdc23";

    fn p(method: Method, path: &str) -> Result<ArmRoute, (u16, String)> {
        parse(&method, path).map_err(|e| (e.status.as_u16(), e.code))
    }

    fn policy(rg: &str, loc: &str, name: &str) -> PolicyRef {
        PolicyRef::new(SUB, rg, loc, name).expect("valid")
    }

    #[test]
    fn the_four_list_scopes() {
        let base = format!("/subscriptions/{SUB}");
        assert_eq!(
            p(Method::GET, &format!("{base}/providers/Microsoft.Security/jitNetworkAccessPolicies")),
            Ok(ArmRoute::List(ListScope::Subscription { subscription: SUB.into() }))
        );
        assert_eq!(
            p(
                Method::GET,
                &format!("{base}/providers/Microsoft.Security/locations/westeurope/jitNetworkAccessPolicies")
            ),
            Ok(ArmRoute::List(ListScope::SubscriptionLocation {
                subscription: SUB.into(),
                location: "westeurope".into()
            }))
        );
        assert_eq!(
            p(Method::GET, &format!("{base}/resourceGroups/rg1/providers/Microsoft.Security/jitNetworkAccessPolicies")),
            Ok(ArmRoute::List(ListScope::ResourceGroup { subscription: SUB.into(), resource_group: "rg1".into() }))
        );
        assert_eq!(
            p(
                Method::GET,
                &format!("{base}/resourcegroups/rg1/providers/microsoft.security/Locations/westeurope/JitNetworkAccessPolicies/")
            ),
            Ok(ArmRoute::List(ListScope::ResourceGroupLocation {
                subscription: SUB.into(),
                resource_group: "rg1".into(),
                location: "westeurope".into()
            }))
        );
    }

    #[test]
    fn policy_operations_and_initiate() {
        let path = format!("/subscriptions/{SUB}/resourceGroups/rg1/providers/Microsoft.Security/locations/westeurope/jitNetworkAccessPolicies/default");
        let r = policy("rg1", "westeurope", "default");
        assert_eq!(p(Method::GET, &path), Ok(ArmRoute::Get(r.clone())));
        assert_eq!(p(Method::PUT, &path), Ok(ArmRoute::Put(r.clone())));
        assert_eq!(p(Method::DELETE, &path), Ok(ArmRoute::Delete(r.clone())));
        assert_eq!(p(Method::POST, &format!("{path}/initiate")), Ok(ArmRoute::Initiate(r)));
        assert_eq!(p(Method::POST, &path).map_err(|e| e.0), Err(405));
        assert_eq!(p(Method::GET, &format!("{path}/initiate")).map_err(|e| e.0), Err(405));
        assert_eq!(p(Method::POST, &format!("{path}/revoke")).map_err(|e| e.0), Err(404));
    }

    #[test]
    fn segments_are_decoded_one_by_one() {
        let path = format!(
            "/subscriptions/{SUB}/resourceGroups/rg1/providers/Microsoft.Security/locations/west%20europe/jitNetworkAccessPolicies/a%2Eb%20c"
        );
        assert_eq!(p(Method::GET, &path), Ok(ArmRoute::Get(policy("rg1", "west europe", "a.b c"))));
    }

    #[test]
    fn a_decoded_name_never_adds_segments_or_navigates() {
        // `h%2F1` would be the id `…/jitNetworkAccessPolicies/h/1`, inside the scope of a policy `h`.
        let base = format!("/subscriptions/{SUB}/resourceGroups/rg1/providers/Microsoft.Security/locations/westeurope/jitNetworkAccessPolicies");
        for name in ["h%2F1", "h%2f1", "h%5C1", "..", "%2E%2E", ".", "h%3F1", "h%231", "h%251", "a%E2%80%AEb", "a%00b"]
        {
            for method in [Method::GET, Method::PUT, Method::DELETE] {
                assert_eq!(
                    p(method.clone(), &format!("{base}/{name}")),
                    Err((400, jitgate_core::invalid::codes::INVALID_POLICY.into())),
                    "{method} {name}"
                );
            }
            assert_eq!(p(Method::POST, &format!("{base}/{name}/initiate")).map_err(|e| e.0), Err(400), "{name}");
        }
        let rg =
            format!("/subscriptions/{SUB}/resourceGroups/a%2Fb/providers/Microsoft.Security/jitNetworkAccessPolicies");
        assert_eq!(p(Method::GET, &rg), Err((400, "InvalidResourceGroupName".into())));
        let rg =
            format!("/subscriptions/{SUB}/resourceGroups/../providers/Microsoft.Security/jitNetworkAccessPolicies");
        assert_eq!(p(Method::GET, &rg), Err((400, "InvalidResourceGroupName".into())));
        let loc = format!("/subscriptions/{SUB}/providers/Microsoft.Security/locations/a%2Fb/jitNetworkAccessPolicies");
        assert_eq!(p(Method::GET, &loc), Err((400, "InvalidLocation".into())));
    }

    #[test]
    fn bad_paths_are_answered_clearly() {
        assert_eq!(p(Method::GET, "/subscriptions").map_err(|e| e.0), Err(404));
        assert_eq!(p(Method::GET, "/nothing/here/at/all").map_err(|e| e.0), Err(404));
        assert_eq!(
            p(Method::GET, "/subscriptions/not-a-guid/providers/Microsoft.Security/jitNetworkAccessPolicies"),
            Err((400, "InvalidSubscriptionId".into()))
        );
        assert_eq!(
            p(Method::GET, &format!("/subscriptions/{SUB}/resourceGroups/bad%20rg/providers/Microsoft.Security/jitNetworkAccessPolicies")),
            Err((400, "InvalidResourceGroupName".into()))
        );
        assert_eq!(
            p(Method::GET, &format!("/subscriptions/{SUB}/providers/Microsoft.Compute/virtualMachines"))
                .map_err(|e| e.0),
            Err(404)
        );
        assert_eq!(
            p(Method::PUT, &format!("/subscriptions/{SUB}/providers/Microsoft.Security/jitNetworkAccessPolicies"))
                .map_err(|e| e.0),
            Err(405)
        );
        assert_eq!(
            p(
                Method::GET,
                &format!("/subscriptions/{SUB}/providers/Microsoft.Security/locations/x/jitNetworkAccessPolicies/name")
            )
            .map_err(|e| e.0),
            Err(404),
            "a single policy needs its resource group"
        );
        assert!(p(Method::GET, &format!("/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Security/locations/x/jitNetworkAccessPolicies/%FF")).is_err());
    }
}
