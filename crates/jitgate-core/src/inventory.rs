//! The inventory of VMs as the portal's JIT page groups them: which VM is Configured, Not
//! configured or Unsupported, and why; and how well a configured VM's ports are enforced.

use crate::rbac::scope_covers;

/// The inventory views of `GET /api/v1/vms?view=…`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// A JIT policy names the VM.
    Configured,
    /// No policy names the VM, and one could.
    NotConfigured,
    /// No policy names the VM, and JIT cannot protect it (see the reason).
    Unsupported,
}

impl View {
    /// The view named by `s` (case-insensitive), or `None`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "configured" => Some(View::Configured),
            "notconfigured" => Some(View::NotConfigured),
            "unsupported" => Some(View::Unsupported),
            _ => None,
        }
    }
}

/// What is known of the enforcement point of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enforcer<'a> {
    pub name: &'a str,
    /// What the agent last reported of nftables (`None`: nothing yet).
    pub nft_usable: Option<bool>,
    pub nft_error: Option<&'a str>,
    /// The agent stopped reporting.
    pub stale: bool,
}

/// Why nothing enforces a VM's grants, if so: no enforcement point, or one that cannot program
/// nftables.
pub fn enforcement_gap(gateway: Option<&str>, enforcer: Option<&Enforcer<'_>>) -> Option<String> {
    match enforcer {
        None => Some(match gateway {
            Some(gw) => format!("no enforcement point: gateway '{gw}' has not joined (or was revoked)"),
            None => {
                "no enforcement point: no agent runs on the VM (or it was revoked) and no gateway is in front of it"
                    .into()
            }
        }),
        Some(e) if e.nft_usable == Some(false) => {
            Some(format!("nftables unusable on {}: {}", e.name, e.nft_error.unwrap_or("no reason given")))
        }
        Some(_) => None,
    }
}

/// [`enforcement_gap`] of a VM a cloud connector registered: the reason the connector gave (or
/// [`crate::cloud::NOT_FOUND_REASON`]) first, then a connector that is gone or cannot work.
pub fn cloud_gap(unsupported_reason: Option<&str>, enforcer: Option<&Enforcer<'_>>) -> Option<String> {
    match (unsupported_reason, enforcer) {
        (Some(reason), _) => Some(reason.to_owned()),
        (None, None) => Some("no enforcement point: the cloud connector that registered it was removed".into()),
        (None, Some(_)) => enforcement_gap(None, enforcer),
    }
}

/// The facts that place a VM in a view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmFacts<'a> {
    /// The VM's ARM id.
    pub id: &'a str,
    /// A classic (non-ARM) deployment.
    pub classic: bool,
    /// A JIT policy names the VM.
    pub configured: bool,
    /// See [`enforcement_gap`].
    pub enforcement_gap: Option<&'a str>,
}

/// The view a VM belongs to and why JIT cannot protect it (`None` for a configured VM). The
/// reasons come in the order the portal gives them: a classic deployment, a security policy
/// disabling JIT over the VM (`disabled_scopes`), no usable enforcement point.
pub fn classify(vm: &VmFacts<'_>, disabled_scopes: &[String]) -> (View, Option<String>) {
    let reason = if vm.classic {
        Some("classic deployment: JIT protects ARM virtual machines only".to_string())
    } else if let Some(scope) = disabled_scopes.iter().find(|s| scope_covers(s, vm.id)) {
        Some(format!("JIT is disabled by a security policy on '{scope}'"))
    } else {
        vm.enforcement_gap.map(str::to_owned)
    };
    match (vm.configured, reason) {
        (true, _) => (View::Configured, None),
        (false, Some(r)) => (View::Unsupported, Some(r)),
        (false, None) => (View::NotConfigured, None),
    }
}

/// How a configured VM's ports are enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnforcementState {
    NotEnforced,
    Unusable,
    Stale,
    /// A cloud connector reports that it cannot change the VM's rules (the warning is its error).
    Failed,
    Enforced,
}

impl EnforcementState {
    /// The state of a VM enforced by `enforcer` (`None`: nothing enforces it).
    pub fn of(enforcer: Option<&Enforcer<'_>>) -> Self {
        match enforcer {
            None => EnforcementState::NotEnforced,
            Some(e) if e.nft_usable == Some(false) => EnforcementState::Unusable,
            Some(e) if e.stale => EnforcementState::Stale,
            Some(_) => EnforcementState::Enforced,
        }
    }

    /// The state of a VM a cloud connector registered: `NotEnforced` while it is `unsupported`
    /// (the connector does not enforce it), `Failed` while the connector reports `failure` for
    /// it, else [`EnforcementState::of`].
    pub fn of_cloud(enforcer: Option<&Enforcer<'_>>, unsupported: bool, failure: Option<&str>) -> Self {
        match (EnforcementState::of(enforcer), failure) {
            _ if unsupported => EnforcementState::NotEnforced,
            (EnforcementState::Enforced | EnforcementState::Stale, Some(_)) => EnforcementState::Failed,
            (state, _) => state,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EnforcementState::NotEnforced => "NotEnforced",
            EnforcementState::Failed => "Failed",
            EnforcementState::Unusable => "Unusable",
            EnforcementState::Stale => "Stale",
            EnforcementState::Enforced => "Enforced",
        }
    }

    /// What the portal warns of in this state.
    pub fn warning(self) -> Option<&'static str> {
        match self {
            EnforcementState::NotEnforced => Some(
                "no enforcement point: nothing closes these ports; run an agent on the VM or attach it to a gateway",
            ),
            EnforcementState::Unusable => {
                Some("the enforcement point cannot program nftables: these ports are not closed")
            }
            EnforcementState::Stale => Some("the enforcement point stopped reporting: its state is unknown"),
            EnforcementState::Failed => Some("the cloud connector cannot change this VM's security group rules"),
            EnforcementState::Enforced => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VM: &str = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1";

    fn enforcer(nft_usable: Option<bool>, stale: bool) -> Enforcer<'static> {
        Enforcer { name: "agent1", nft_usable, nft_error: Some("no kernel support"), stale }
    }

    #[test]
    fn views_parse_case_insensitively() {
        assert_eq!(View::parse("Configured"), Some(View::Configured));
        assert_eq!(View::parse("notConfigured"), Some(View::NotConfigured));
        assert_eq!(View::parse("UNSUPPORTED"), Some(View::Unsupported));
        assert_eq!(View::parse("not-configured"), None);
        assert_eq!(View::parse(""), None);
    }

    #[test]
    fn the_enforcement_gap_names_what_is_missing() {
        let gap = |gw: Option<&str>, e: Option<Enforcer<'static>>| enforcement_gap(gw, e.as_ref());
        assert!(gap(None, None).is_some_and(|r| r.contains("no agent runs on the VM")));
        assert!(gap(Some("gw1"), None).is_some_and(|r| r.contains("gateway 'gw1' has not joined")));
        assert_eq!(
            gap(None, Some(enforcer(Some(false), false))).as_deref(),
            Some("nftables unusable on agent1: no kernel support")
        );
        let no_error = Enforcer { nft_error: None, ..enforcer(Some(false), false) };
        assert_eq!(
            enforcement_gap(None, Some(&no_error)).as_deref(),
            Some("nftables unusable on agent1: no reason given")
        );
        assert_eq!(gap(None, Some(enforcer(Some(true), true))), None, "a stale agent is still an enforcement point");
        assert_eq!(gap(None, Some(enforcer(None, false))), None, "nothing reported yet");
    }

    #[test]
    fn classification_table() {
        let disabled = vec!["/subscriptions/s/resourceGroups/rg".to_string()];
        let other = vec!["/subscriptions/s/resourceGroups/other".to_string()];
        let facts = |classic, configured, gap: Option<&'static str>| VmFacts {
            id: VM,
            classic,
            configured,
            enforcement_gap: gap,
        };
        let cases: Vec<(VmFacts<'static>, &[String], View, Option<&str>)> = vec![
            (facts(false, false, None), &[], View::NotConfigured, None),
            (facts(false, false, None), &other, View::NotConfigured, None),
            (facts(false, true, None), &[], View::Configured, None),
            (facts(true, true, Some("gap")), &disabled, View::Configured, None),
            (
                facts(true, false, Some("gap")),
                &disabled,
                View::Unsupported,
                Some("classic deployment: JIT protects ARM virtual machines only"),
            ),
            (
                facts(false, false, Some("gap")),
                &disabled,
                View::Unsupported,
                Some("JIT is disabled by a security policy on '/subscriptions/s/resourceGroups/rg'"),
            ),
            (facts(false, false, Some("gap")), &other, View::Unsupported, Some("gap")),
        ];
        for (vm, scopes, view, reason) in cases {
            assert_eq!(classify(&vm, scopes), (view, reason.map(str::to_owned)), "{vm:?} under {scopes:?}");
        }
    }

    #[test]
    fn enforcement_states_and_warnings() {
        let cases = [
            (None, EnforcementState::NotEnforced, "NotEnforced", true),
            (Some(enforcer(Some(false), true)), EnforcementState::Unusable, "Unusable", true),
            (Some(enforcer(Some(true), true)), EnforcementState::Stale, "Stale", true),
            (Some(enforcer(None, false)), EnforcementState::Enforced, "Enforced", false),
            (Some(enforcer(Some(true), false)), EnforcementState::Enforced, "Enforced", false),
        ];
        for (e, state, text, warns) in cases {
            assert_eq!(EnforcementState::of(e.as_ref()), state, "{e:?}");
            assert_eq!(state.as_str(), text);
            assert_eq!(state.warning().is_some(), warns, "{state:?}");
        }
    }

    #[test]
    fn a_cloud_vm_fails_while_its_connector_says_so_and_is_unenforced_while_unsupported() {
        let live = enforcer(Some(true), false);
        let of = |e: Option<&Enforcer<'_>>, unsupported, failure| EnforcementState::of_cloud(e, unsupported, failure);
        assert_eq!(of(Some(&live), false, None), EnforcementState::Enforced);
        assert_eq!(of(Some(&live), false, Some("denied")), EnforcementState::Failed);
        assert_eq!(of(Some(&enforcer(Some(true), true)), false, Some("denied")), EnforcementState::Failed);
        assert_eq!(of(Some(&enforcer(Some(true), true)), false, None), EnforcementState::Stale);
        assert_eq!(of(None, false, Some("denied")), EnforcementState::NotEnforced);
        assert_eq!(of(Some(&live), true, Some("denied")), EnforcementState::NotEnforced);
        assert_eq!(EnforcementState::Failed.as_str(), "Failed");
        assert_eq!(cloud_gap(Some("terminated"), Some(&live)).as_deref(), Some("terminated"));
        assert!(cloud_gap(None, None).is_some_and(|g| g.contains("cloud connector")));
        assert_eq!(cloud_gap(None, Some(&live)), None);
    }
}
