//! Authorization as Azure does it: role definitions with `Actions` and `NotActions`, role
//! assignments at a scope (inherited downwards), effective actions = the union over assignments
//! of (Actions minus NotActions), case-insensitive, `*` matching any run of characters, and a
//! deny when nothing allows.

use std::fmt;

/// Action strings jitgate checks, in Azure's form.
pub mod actions {
    pub const POLICY_READ: &str = "Microsoft.Security/locations/jitNetworkAccessPolicies/read";
    pub const POLICY_WRITE: &str = "Microsoft.Security/locations/jitNetworkAccessPolicies/write";
    pub const POLICY_DELETE: &str = "Microsoft.Security/locations/jitNetworkAccessPolicies/delete";
    pub const POLICY_INITIATE: &str = "Microsoft.Security/locations/jitNetworkAccessPolicies/initiate/action";
    /// jitgate's own: approving (or denying) someone else's request on a port that needs it.
    pub const POLICY_APPROVE: &str = "Microsoft.Security/locations/jitNetworkAccessPolicies/approve/action";
    pub const VM_READ: &str = "Microsoft.Compute/virtualMachines/read";
    pub const VM_WRITE: &str = "Microsoft.Compute/virtualMachines/write";
    pub const VM_DELETE: &str = "Microsoft.Compute/virtualMachines/delete";
    pub const ROLE_DEFINITION_READ: &str = "Microsoft.Authorization/roleDefinitions/read";
    pub const ROLE_DEFINITION_WRITE: &str = "Microsoft.Authorization/roleDefinitions/write";
    pub const ROLE_DEFINITION_DELETE: &str = "Microsoft.Authorization/roleDefinitions/delete";
    pub const ROLE_ASSIGNMENT_READ: &str = "Microsoft.Authorization/roleAssignments/read";
    pub const ROLE_ASSIGNMENT_WRITE: &str = "Microsoft.Authorization/roleAssignments/write";
    pub const ROLE_ASSIGNMENT_DELETE: &str = "Microsoft.Authorization/roleAssignments/delete";
    /// jitgate's own: managing principals and their tokens.
    pub const PRINCIPAL_READ: &str = "Microsoft.Authorization/principals/read";
    pub const PRINCIPAL_WRITE: &str = "Microsoft.Authorization/principals/write";
    /// Reading the audit log (Azure's Activity Log read action).
    pub const AUDIT_READ: &str = "Microsoft.Insights/eventtypes/values/read";
    /// Reading the server's Prometheus metrics (`GET /metrics`) from an address
    /// `--metrics-allow` does not name (Azure Monitor's metrics read action). Checked at `/`:
    /// the metrics count everything the server does, whatever its scope. Reader, Security
    /// Reader, Security Admin, Contributor and Owner allow it (`*/read`, `Microsoft.Insights/*/read`,
    /// `*`); the JIT requester does not.
    pub const METRICS_READ: &str = "Microsoft.Insights/metrics/read";
    /// jitgate's own: webhooks about every request in a subscription (checked at the
    /// subscription), and reading their delivery details.
    pub const WEBHOOK_READ: &str = "Microsoft.Security/webhooks/read";
    pub const WEBHOOK_WRITE: &str = "Microsoft.Security/webhooks/write";
    pub const WEBHOOK_DELETE: &str = "Microsoft.Security/webhooks/delete";
    /// jitgate's own: a webhook about one's own requests only. Needed at some scope (any
    /// assignment that allows it); the events it carries are the caller's own.
    pub const WEBHOOK_NOTIFY_OWN: &str = "Microsoft.Security/webhooks/notifyOwn/action";
}

/// A role: what it allows (`Actions`) minus what it takes away (`NotActions`), and where it may
/// be assigned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleDefinition {
    pub name: String,
    pub id: String,
    pub description: String,
    pub actions: Vec<String>,
    pub not_actions: Vec<String>,
    pub assignable_scopes: Vec<String>,
    pub built_in: bool,
}

/// Whether `pattern` (with `*` wildcards) matches `action`, ignoring case.
pub fn action_matches(pattern: &str, action: &str) -> bool {
    glob(pattern.as_bytes(), action.as_bytes())
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    // Iterative wildcard match with backtracking to the last `*`: O(len(p) * len(s)) worst case.
    let (mut pi, mut si) = (0usize, 0usize);
    let (mut star, mut mark) = (None::<usize>, 0usize);
    while si < s.len() {
        if pi < p.len() && p[pi] != b'*' && p[pi].eq_ignore_ascii_case(&s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

/// Whether an assignment at `scope` covers `resource` (the same scope or one below it).
/// `/` covers everything.
pub fn scope_covers(scope: &str, resource: &str) -> bool {
    let scope = scope.trim_end_matches('/');
    if scope.is_empty() {
        return true;
    }
    let resource = resource.trim_end_matches('/');
    resource.len() >= scope.len()
        && resource.as_bytes()[..scope.len()].eq_ignore_ascii_case(scope.as_bytes())
        && (resource.len() == scope.len() || resource.as_bytes()[scope.len()] == b'/')
}

impl RoleDefinition {
    /// Whether this role allows `action` (Actions minus NotActions).
    pub fn allows(&self, action: &str) -> bool {
        self.actions.iter().any(|p| action_matches(p, action))
            && !self.not_actions.iter().any(|p| action_matches(p, action))
    }

    /// Whether the role may be assigned at `scope`.
    pub fn assignable_at(&self, scope: &str) -> bool {
        self.assignable_scopes.iter().any(|s| scope_covers(s, scope))
    }
}

/// One role assignment, resolved: its scope and its role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant<'a> {
    pub scope: &'a str,
    pub role: &'a RoleDefinition,
}

/// Whether any assignment covering `resource` allows `action`. Deny by default.
pub fn permits(assignments: &[Grant<'_>], action: &str, resource: &str) -> bool {
    assignments.iter().any(|a| scope_covers(a.scope, resource) && a.role.allows(action))
}

/// A refusal: the action that is missing and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub principal: String,
    pub action: String,
    pub scope: String,
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "The client '{}' does not have authorization to perform action '{}' over scope '{}' or the scope is invalid.",
            self.principal, self.action, self.scope
        )
    }
}

fn role(name: &str, id: &str, description: &str, actions: &[&str], not_actions: &[&str]) -> RoleDefinition {
    RoleDefinition {
        name: name.into(),
        id: id.into(),
        description: description.into(),
        actions: actions.iter().map(|s| s.to_string()).collect(),
        not_actions: not_actions.iter().map(|s| s.to_string()).collect(),
        assignable_scopes: vec!["/".into()],
        built_in: true,
    }
}

/// The actions a least-privileged JIT requester needs (the seed's request-access list, plus the
/// policy read that Set-JitLeastPrivilegedRole grants so a requester can see what it may request,
/// plus jitgate's own right to be told about one's own requests — a request waiting for approval
/// is only useful if its requester hears the answer).
pub const REQUESTER_ACTIONS: [&str; 7] = [
    "Microsoft.Security/locations/jitNetworkAccessPolicies/initiate/action",
    "Microsoft.Security/locations/jitNetworkAccessPolicies/*/read",
    "Microsoft.Security/locations/jitNetworkAccessPolicies/read",
    "Microsoft.Compute/virtualMachines/read",
    "Microsoft.Network/networkInterfaces/*/read",
    "Microsoft.Network/publicIPAddresses/read",
    actions::WEBHOOK_NOTIFY_OWN,
];

/// The built-in roles, with Azure's names and ids.
pub fn built_in_roles() -> Vec<RoleDefinition> {
    vec![
        role(
            "Owner",
            "8e3af657-a8ff-443c-a75c-2fe8c4bcb635",
            "Grants full access to manage all resources, including the ability to assign roles.",
            &["*"],
            &[],
        ),
        role(
            "Contributor",
            "b24988ac-6180-42a0-ab88-20f7382dd24c",
            "Grants full access to manage all resources, but does not allow you to assign roles or manage principals.",
            &["*"],
            &[
                "Microsoft.Authorization/*/Delete",
                "Microsoft.Authorization/*/Write",
                "Microsoft.Authorization/elevateAccess/Action",
            ],
        ),
        role(
            "Reader",
            "acdd72a7-3385-48ef-bd42-f606fba81ae7",
            "View all resources, but does not allow you to make any changes.",
            &["*/read"],
            &[],
        ),
        role(
            "Security Admin",
            "fb1c8493-542b-48eb-b624-b4c8fea62acd",
            "View and update permissions for Microsoft Defender for Cloud; configure JIT policies.",
            &[
                "Microsoft.Authorization/*/read",
                "Microsoft.Security/*",
                "Microsoft.Compute/*/read",
                "Microsoft.Network/*/read",
                "Microsoft.Insights/*/read",
            ],
            &[],
        ),
        role(
            "Security Reader",
            "39bc4728-0917-49c7-9d2c-d95423bc2eb4",
            "View permissions for Microsoft Defender for Cloud: JIT status and parameters, no changes.",
            &[
                "Microsoft.Authorization/*/read",
                "Microsoft.Security/*/read",
                "Microsoft.Compute/*/read",
                "Microsoft.Network/*/read",
                "Microsoft.Insights/*/read",
            ],
            &[],
        ),
        role(
            "JIT Network Access Requester",
            "6f3c1f4e-9a2b-4d7e-8c51-0b9a1d2e3f40",
            "Request just-in-time access to the ports of VMs, and see the policies that allow it. Nothing else.",
            &REQUESTER_ACTIONS,
            &[],
        ),
    ]
}

/// The role `jitgate role create-least-privileged` makes (what Set-JitLeastPrivilegedRole does).
pub fn least_privileged_role(name: &str, scope: &str, id: &str) -> RoleDefinition {
    RoleDefinition {
        name: name.into(),
        id: id.into(),
        description: "Least-privileged just-in-time requester: request access and see JIT policies, nothing else."
            .into(),
        actions: REQUESTER_ACTIONS.iter().map(|s| s.to_string()).collect(),
        not_actions: vec![],
        assignable_scopes: vec![scope.into()],
        built_in: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(name: &str) -> RoleDefinition {
        built_in_roles().into_iter().find(|r| r.name == name).expect("built-in role")
    }

    #[test]
    fn wildcards_match_inside_segments_and_ignore_case() {
        assert!(action_matches("*", "Microsoft.Compute/virtualMachines/read"));
        assert!(action_matches("*/read", "Microsoft.Compute/virtualMachines/read"));
        assert!(!action_matches("*/read", "Microsoft.Compute/virtualMachines/write"));
        assert!(action_matches(
            "Microsoft.Security/locations/jitNetworkAccessPolicies/*/read",
            "microsoft.security/LOCATIONS/jitNetworkAccessPolicies/x/read"
        ));
        assert!(!action_matches(
            "Microsoft.Security/locations/jitNetworkAccessPolicies/*/read",
            "Microsoft.Security/locations/jitNetworkAccessPolicies/read"
        ));
        assert!(action_matches("Microsoft.Net*/read", "Microsoft.Network/publicIPAddresses/read"));
        assert!(action_matches("Microsoft.Authorization/*/Write", "Microsoft.Authorization/roleAssignments/write"));
        assert!(!action_matches("Microsoft.Compute/virtualMachines/read", "Microsoft.Compute/virtualMachines/readx"));
        assert!(action_matches("a*b*c", "aXXbYYc"));
        assert!(!action_matches("a*b*c", "aXXbYY"));
        // A star matches nothing too, also at the end of the pattern, past the end of the action.
        assert!(action_matches("Microsoft.Compute/virtualMachines/read*", "Microsoft.Compute/virtualMachines/read"));
        assert!(action_matches("a**", "a"));
        assert!(!action_matches("a**b", "a"));
    }

    #[test]
    fn scopes_are_inherited_downwards_only() {
        let sub = "/subscriptions/20ff7fc3-e762-44dd-bd96-b71116dcdc23";
        let rg = format!("{sub}/resourceGroups/rg1");
        let vm = format!("{rg}/providers/Microsoft.Compute/virtualMachines/vm1");
        assert!(scope_covers("/", &vm));
        assert!(scope_covers(sub, &vm));
        assert!(scope_covers(&rg.to_uppercase(), &vm));
        assert!(scope_covers(&vm, &vm));
        assert!(!scope_covers(&vm, &rg), "not upwards");
        assert!(!scope_covers(&format!("{sub}/resourceGroups/rg"), &vm), "segment boundary");
        assert!(!scope_covers("/subscriptions/other", &vm));
    }

    #[test]
    fn effective_actions_are_actions_minus_not_actions_unioned_over_assignments() {
        let contributor = find("Contributor");
        assert!(contributor.allows(actions::POLICY_WRITE));
        assert!(!contributor.allows(actions::ROLE_ASSIGNMENT_WRITE), "NotActions win within a role");
        let mut no_initiate = find("JIT Network Access Requester");
        no_initiate.not_actions = vec!["Microsoft.Security/locations/jitNetworkAccessPolicies/initiate/action".into()];
        assert!(!no_initiate.allows(actions::POLICY_INITIATE));
        let reader = find("Reader");
        let rg = "/subscriptions/s/resourceGroups/rg";
        let grants = [Grant { scope: rg, role: &reader }, Grant { scope: "/subscriptions/s", role: &contributor }];
        assert!(permits(&grants, actions::POLICY_WRITE, &format!("{rg}/x")), "union over assignments");
        assert!(!permits(&grants, actions::POLICY_WRITE, "/subscriptions/other/x"), "deny by default");
        assert!(!permits(&[], actions::POLICY_READ, rg));
    }

    #[test]
    fn the_requester_role_can_request_and_read_but_nothing_else() {
        let r = find("JIT Network Access Requester");
        for ok in [
            actions::POLICY_INITIATE,
            actions::POLICY_READ,
            actions::VM_READ,
            "Microsoft.Network/publicIPAddresses/read",
        ] {
            assert!(r.allows(ok), "{ok}");
        }
        for no in [
            actions::POLICY_WRITE,
            actions::POLICY_DELETE,
            actions::VM_WRITE,
            actions::ROLE_ASSIGNMENT_WRITE,
            actions::AUDIT_READ,
            actions::WEBHOOK_WRITE,
            actions::WEBHOOK_READ,
            actions::WEBHOOK_DELETE,
        ] {
            assert!(!r.allows(no), "{no}");
        }
        assert!(r.allows(actions::WEBHOOK_NOTIFY_OWN), "told about its own requests");
        let reader = find("Security Reader");
        assert!(reader.allows(actions::POLICY_READ) && !reader.allows(actions::POLICY_INITIATE));
        for role in ["Reader", "Security Reader"] {
            let r = find(role);
            assert!(!r.allows(actions::WEBHOOK_WRITE) && !r.allows(actions::WEBHOOK_NOTIFY_OWN), "{role}");
        }
        for role in ["Owner", "Contributor", "Security Admin"] {
            let r = find(role);
            for a in [actions::WEBHOOK_WRITE, actions::WEBHOOK_DELETE, actions::WEBHOOK_NOTIFY_OWN] {
                assert!(r.allows(a), "{role}: {a}");
            }
        }
        for role in ["Owner", "Contributor", "Reader", "Security Admin", "Security Reader"] {
            assert!(find(role).allows(actions::METRICS_READ), "{role} reads metrics");
        }
        assert!(!r.allows(actions::METRICS_READ), "the requester does not read metrics");
        let lp = least_privileged_role("JIT Access Role", "/subscriptions/s", "id");
        assert_eq!(lp.actions, r.actions);
        assert!(lp.assignable_at("/subscriptions/s/resourceGroups/rg"));
        assert!(!lp.assignable_at("/subscriptions/t"));
    }
}
