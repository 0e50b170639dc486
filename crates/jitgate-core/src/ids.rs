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
                "'{}' is not a virtual machine id of the form \
                 /subscriptions/{{subscriptionId}}/resourceGroups/{{resourceGroup}}/providers/Microsoft.Compute/virtualMachines/{{name}}",
                shown_max(text, 300)
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
        Err(format!("subscription id '{}' is not a GUID such as 20ff7fc3-e762-44dd-bd96-b71116dcdc23", shown(s)))
    }
}

/// A name from outside as it may appear in a message: escaped, and cut after 80 characters.
pub fn shown(s: &str) -> String {
    shown_max(s, 80)
}

/// Like [`shown`], cut after `max` characters.
pub fn shown_max(s: &str, max: usize) -> String {
    let text: String = s.chars().take(max).flat_map(char::escape_debug).collect();
    if s.chars().count() > max {
        format!("{text}…")
    } else {
        text
    }
}

/// Characters ARM refuses in any resource name segment: they would change how an id splits into
/// segments (`/`, `\`), or how it reads in a URL (`%`, `?`, `#`).
const ARM_FORBIDDEN: &[char] = &['/', '\\', '%', '?', '#'];

/// Invisible characters that make two names look alike or reorder how they display: zero-width
/// spaces and joiners, bidirectional embeddings, overrides and isolates (U+202E …), word joiners,
/// the byte-order mark and the soft hyphen.
pub fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
}

/// Why `s` cannot be one segment of an ARM id (`what` names it in the message), checking what
/// every resource name must satisfy: 1 to `max` characters, no control or invisible characters,
/// none of `/ \ % ? #`, and not made of dots alone (`.` and `..` are path navigation).
pub fn check_arm_segment(what: &str, s: &str, max: usize) -> Result<(), String> {
    let shown = shown(s);
    if s.is_empty() || s.chars().count() > max {
        return Err(format!("{what} '{shown}' must be 1 to {max} characters"));
    }
    if let Some(c) = s.chars().find(|c| c.is_control() || is_invisible(*c)) {
        return Err(format!("{what} '{shown}' contains the control or invisible character U+{:04X}", c as u32));
    }
    if let Some(c) = s.chars().find(|c| ARM_FORBIDDEN.contains(c)) {
        return Err(format!("{what} '{shown}' contains '{c}', which is not allowed in a resource name"));
    }
    if s.chars().all(|c| c == '.') {
        return Err(format!("{what} '{shown}' cannot be made of dots alone"));
    }
    Ok(())
}

/// Resource group names: 1 to 90 characters of letters, digits, `-`, `_`, `.`, `(` and `)`, not
/// ending in `.` (as in Azure).
pub fn validate_resource_group(s: &str) -> Result<(), String> {
    check_arm_segment("resource group name", s, 90)?;
    let ok = s.chars().all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | '(' | ')')) && !s.ends_with('.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "resource group name '{}' must be 1 to 90 letters, digits, '-', '_', '.', '(' or ')', not ending in '.'",
            shown(s)
        ))
    }
}

/// ASC locations (`westeurope`): 1 to 90 characters, an ARM segment.
pub fn validate_location(s: &str) -> Result<(), String> {
    check_arm_segment("location", s, 90)
}

/// Policy names: 1 to 260 characters, an ARM segment.
pub fn validate_policy_name(s: &str) -> Result<(), String> {
    check_arm_segment("policy name", s, 260)
}

/// VM names: 1 to 64 characters, an ARM segment, without spaces.
pub fn validate_vm_name(s: &str) -> Result<(), String> {
    check_arm_segment("virtual machine name", s, 64)?;
    if s.chars().any(char::is_whitespace) {
        return Err(format!("virtual machine name '{}' must be 1 to 64 characters without spaces", shown(s)));
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
        assert!(PolicyRef::new(SUB, "rg(1).x_y-z", "westeurope", "a.b c").is_ok());
        assert!(PolicyRef::new(SUB, "rg", "westeurope", "").is_err());
    }

    #[test]
    fn policy_refs_differing_only_in_case_share_one_key() {
        let p = PolicyRef::new(SUB, "rg1", "westeurope", "default").expect("valid");
        let q = PolicyRef::new(&SUB.to_ascii_uppercase(), "RG1", "WestEurope", "Default").expect("valid");
        assert_ne!(p.id(), q.id(), "each keeps its casing");
        assert_eq!(p.key(), q.key());
        assert_eq!(p.key(), p.id().to_ascii_lowercase());
        let other = PolicyRef::new(SUB, "rg1", "westeurope", "other").expect("valid");
        assert_ne!(p.key(), other.key());
    }

    #[test]
    fn names_that_would_change_how_an_id_splits_are_refused() {
        // A '/' in a name would put the resource below another one's scope; '..' navigates.
        for bad in ["h/1", "h\\1", "h%2F1", "a?b", "a#b", ".", "..", "...", "a\u{202E}b", "a\u{200B}", "a\nb", ""] {
            assert!(validate_policy_name(bad).is_err(), "policy {bad:?}");
            assert!(validate_vm_name(bad).is_err(), "vm {bad:?}");
            assert!(validate_resource_group(bad).is_err(), "rg {bad:?}");
            assert!(validate_location(bad).is_err(), "location {bad:?}");
            assert_eq!(
                PolicyRef::new(SUB, "rg", "westeurope", bad).map_err(|e| e.code),
                Err(codes::INVALID_POLICY),
                "{bad:?}"
            );
        }
        for good in ["default", "a.b", "web-1_x", ".hidden", "x."] {
            assert!(validate_policy_name(good).is_ok(), "{good:?}");
        }
        assert!(validate_resource_group("rg.").is_err(), "ARM refuses a trailing dot in a resource group");
        assert!(validate_vm_name(&"v".repeat(64)).is_ok());
        assert!(validate_vm_name(&"v".repeat(65)).is_err());
        let vm = format!("/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/..");
        assert!(VmId::parse(&vm).is_err());
    }

    #[test]
    fn messages_about_long_names_stay_short() {
        let long = "x/".repeat(30_000);
        let m = validate_policy_name(&long).expect_err("too long");
        assert!(m.len() < 300, "{} bytes", m.len());
        let m = VmId::parse(&long).expect_err("not an id");
        assert!(m.len() < 600, "{} bytes", m.len());
        assert!(validate_subscription(&long).expect_err("not a GUID").len() < 300);
        assert_eq!(shown("a\u{202E}b"), "a\\u{202e}b");
    }
}
