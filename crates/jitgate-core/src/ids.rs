//! ARM resource identities: virtual machines and JIT policies.
//!
//! ARM names compare case-insensitively; responses keep the casing the caller first used. Every
//! identity therefore has a `key()` (lower-cased, for lookups) beside its display form.

use std::fmt;

use crate::invalid::{codes, Invalid};

/// The resource type of a policy, as it appears in `type` and in ids.
pub const POLICY_TYPE: &str = "Microsoft.Security/locations/jitNetworkAccessPolicies";

/// The ARM id of a virtual machine:
/// `/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{name}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmId {
    text: String,
    subscription: String,
    resource_group: String,
    name: String,
}

impl VmId {
    pub fn parse(text: &str) -> Result<Self, String> {
        let err = || {
            format!(
                "'{text}' is not a virtual machine id of the form \
                 /subscriptions/{{subscriptionId}}/resourceGroups/{{resourceGroup}}/providers/Microsoft.Compute/virtualMachines/{{name}}"
            )
        };
        let trimmed = text.strip_suffix('/').unwrap_or(text);
        let parts: Vec<&str> = trimmed.split('/').collect();
        if parts.len() != 9 || !parts[0].is_empty() {
            return Err(err());
        }
        let expect = [
            (1, "subscriptions"),
            (3, "resourceGroups"),
            (5, "providers"),
            (6, "Microsoft.Compute"),
            (7, "virtualMachines"),
        ];
        if expect.iter().any(|(i, word)| !parts[*i].eq_ignore_ascii_case(word)) {
            return Err(err());
        }
        validate_subscription(parts[2]).map_err(|m| format!("{}: {m}", err()))?;
        validate_resource_group(parts[4]).map_err(|m| format!("{}: {m}", err()))?;
        validate_vm_name(parts[8]).map_err(|m| format!("{}: {m}", err()))?;
        Ok(VmId {
            text: trimmed.to_owned(),
            subscription: parts[2].to_owned(),
            resource_group: parts[4].to_owned(),
            name: parts[8].to_owned(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
    pub fn key(&self) -> String {
        self.text.to_ascii_lowercase()
    }
    pub fn subscription(&self) -> &str {
        &self.subscription
    }
    pub fn resource_group(&self) -> &str {
        &self.resource_group
    }
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for VmId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Where a JIT policy lives: subscription, resource group, ASC location and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRef {
    pub subscription: String,
    pub resource_group: String,
    pub location: String,
    pub name: String,
}

impl PolicyRef {
    /// Checks every part the way ARM does and builds the reference.
    pub fn new(subscription: &str, resource_group: &str, location: &str, name: &str) -> Result<Self, Invalid> {
        validate_subscription(subscription).map_err(|m| Invalid::input("InvalidSubscriptionId", None, m))?;
        validate_resource_group(resource_group).map_err(|m| Invalid::input("InvalidResourceGroupName", None, m))?;
        validate_location(location).map_err(|m| Invalid::input("InvalidLocation", None, m))?;
        validate_policy_name(name).map_err(|m| Invalid::input(codes::INVALID_POLICY, None, m))?;
        Ok(PolicyRef {
            subscription: subscription.to_owned(),
            resource_group: resource_group.to_owned(),
            location: location.to_owned(),
            name: name.to_owned(),
        })
    }

    /// The full ARM id.
    pub fn id(&self) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Security/locations/{}/jitNetworkAccessPolicies/{}",
            self.subscription, self.resource_group, self.location, self.name
        )
    }

    /// The id lower-cased: the identity used for lookups.
    pub fn key(&self) -> String {
        self.id().to_ascii_lowercase()
    }
}

/// Subscription ids are GUIDs (`^[0-9A-Fa-f]{8}-([0-9A-Fa-f]{4}-){3}[0-9A-Fa-f]{12}$`).
pub fn validate_subscription(s: &str) -> Result<(), String> {
    let groups: Vec<&str> = s.split('-').collect();
    let lens = [8, 4, 4, 4, 12];
    let ok = groups.len() == 5
        && groups.iter().zip(lens).all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()));
    if ok {
        Ok(())
    } else {
        Err(format!("subscription id '{s}' is not a GUID such as 20ff7fc3-e762-44dd-bd96-b71116dcdc23"))
    }
}

/// Resource group names: 1 to 90 characters of letters, digits, `-`, `_`, `.`, `(` and `)`.
pub fn validate_resource_group(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.chars().count() <= 90
        && s.chars().all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | '(' | ')'));
    if ok {
        Ok(())
    } else {
        Err(format!("resource group name '{s}' must be 1 to 90 letters, digits, '-', '_', '.', '(' or ')'"))
    }
}

fn validate_location(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 90 || s.chars().any(|c| c.is_control() || c == '/') {
        return Err(format!("location '{s}' must be 1 to 90 printable characters without '/'"));
    }
    Ok(())
}

fn validate_policy_name(s: &str) -> Result<(), String> {
    if s.is_empty() || s.chars().count() > 260 || s.chars().any(|c| c.is_control()) {
        return Err("the policy name must be 1 to 260 printable characters".into());
    }
    Ok(())
}

/// VM names: 1 to 64 characters without control characters or `/`.
pub fn validate_vm_name(s: &str) -> Result<(), String> {
    if s.is_empty() || s.chars().count() > 64 || s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!("virtual machine name '{s}' must be 1 to 64 characters without spaces"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUB: &str = "20ff7fc3-e762-44dd-bd96-b71116dcdc23";

    #[test]
    fn parses_a_vm_id_case_insensitively_and_keeps_its_casing() {
        let text =
            format!("/subscriptions/{SUB}/resourcegroups/My-RG/providers/microsoft.compute/VirtualMachines/Web1");
        let id = VmId::parse(&text).expect("valid id");
        assert_eq!(id.as_str(), text);
        assert_eq!(id.name(), "Web1");
        assert_eq!(id.resource_group(), "My-RG");
        assert_eq!(id.key(), text.to_ascii_lowercase());
    }

    #[test]
    fn refuses_malformed_vm_ids() {
        for bad in [
            "",
            "web1",
            "/subscriptions/x/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm",
            &format!("/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Network/networkInterfaces/vm"),
            &format!("/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/"),
            &format!("/subscriptions/{SUB}/resourceGroups/r g/providers/Microsoft.Compute/virtualMachines/vm"),
            &format!("/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm/extra"),
        ] {
            assert!(VmId::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn policy_refs_build_arm_ids_and_check_their_parts() {
        let p = PolicyRef::new(SUB, "rg1", "westeurope", "default").expect("valid");
        assert_eq!(
            p.id(),
            format!("/subscriptions/{SUB}/resourceGroups/rg1/providers/Microsoft.Security/locations/westeurope/jitNetworkAccessPolicies/default")
        );
        assert_eq!(
            PolicyRef::new("nope", "rg1", "westeurope", "default").map_err(|e| e.code),
            Err("InvalidSubscriptionId")
        );
        assert_eq!(
            PolicyRef::new(SUB, "my rg", "westeurope", "default").map_err(|e| e.code),
            Err("InvalidResourceGroupName")
        );
        assert_eq!(
            PolicyRef::new(SUB, &"r".repeat(91), "westeurope", "default").map_err(|e| e.code),
            Err("InvalidResourceGroupName")
        );
        assert!(PolicyRef::new(SUB, "rg(1).x_y-z", "westeurope", "a/b c").is_ok());
        assert!(PolicyRef::new(SUB, "rg", "westeurope", "").is_err());
    }
}
