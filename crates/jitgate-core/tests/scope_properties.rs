//! Properties of scope containment (`rbac::scope_covers`, what every role assignment and every
//! assignable scope is checked with): a scope covers itself and everything below it, never
//! anything above it or beside it — not even a sibling whose name starts with its own — ASCII
//! letter case and trailing slashes do not count, and containment is transitive. All of it is
//! one rule, checked against a model: the scope's segments are a prefix of the resource's.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may panic on a failed expectation.

use jitgate_core::ids::VmId;
use jitgate_core::rbac::{built_in_roles, permits, scope_covers, Grant, RoleDefinition};
use proptest::prelude::*;

const SUB: &str = "20ff7fc3-e762-44dd-bd96-b71116dcdc23";

/// Segment names that are prefixes of each other, differ in case, contain dots or are not ASCII.
fn segment() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "subscriptions",
        "SUBSCRIPTIONS",
        SUB,
        "resourceGroups",
        "rg",
        "rg1",
        "RG1",
        "rg10",
        "providers",
        "Microsoft.Compute",
        "virtualMachines",
        "vm",
        "vm1",
        "VM1",
        "vm1.old",
        "Ärger",
        "ärger",
        "",
    ])
    .prop_map(String::from)
}

fn path() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(segment(), 0..7)
}

fn scope(segments: &[String]) -> String {
    if segments.is_empty() {
        return "/".into();
    }
    segments.iter().map(|s| format!("/{s}")).collect()
}

/// The model: a scope covers a resource when its segments (after trailing slashes) are the
/// first segments of the resource's, letter case of ASCII aside.
fn model(scope: &str, resource: &str) -> bool {
    let segments = |s: &str| -> Vec<String> {
        let t = s.trim_end_matches('/');
        if t.is_empty() {
            return Vec::new();
        }
        t.split('/').map(str::to_owned).collect()
    };
    let (s, r) = (segments(scope), segments(resource));
    s.len() <= r.len() && s.iter().zip(&r).all(|(a, b)| a.eq_ignore_ascii_case(b))
}

fn role(name: &str) -> RoleDefinition {
    built_in_roles().into_iter().find(|r| r.name == name).expect("built-in role")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn containment_is_the_segment_prefix_rule(a in path(), b in path(), slash in 0usize..3) {
        let (s, r) = (scope(&a), format!("{}{}", scope(&b), "/".repeat(slash)));
        prop_assert_eq!(scope_covers(&s, &r), model(&s, &r), "{} over {}", s, r);
    }

    #[test]
    fn a_scope_covers_what_is_below_it_and_nothing_above_or_beside(
        base in path(), below in prop::collection::vec(segment(), 1..4), suffix in "[a-zA-Z0-9.]{1,3}",
    ) {
        let s = scope(&base);
        let mut deeper = base.clone();
        deeper.extend(below.iter().cloned());
        let d = scope(&deeper);
        prop_assert!(scope_covers(&s, &s), "{} covers itself", s);
        prop_assert!(scope_covers(&s, &d), "{} covers {}", s, d);
        prop_assert!(scope_covers("/", &d));
        if !below.iter().all(String::is_empty) {
            prop_assert!(!scope_covers(&d, &s), "{} is below {}, yet covers it", d, s);
        }
        // A sibling whose name starts with the scope's own name is not below it.
        if let Some(last) = base.last().filter(|l| !l.is_empty()) {
            let mut sibling = base.clone();
            *sibling.last_mut().unwrap() = format!("{last}{suffix}");
            let sib = scope(&sibling);
            prop_assert!(!scope_covers(&s, &sib), "{} covers its sibling {}", s, sib);
            prop_assert!(!scope_covers(&sib, &s), "{} covers its sibling {}", sib, s);
        }
    }

    #[test]
    fn ascii_case_and_trailing_slashes_do_not_count(a in path(), b in path(), n in 0usize..3) {
        let (s, r) = (scope(&a), scope(&b));
        let covers = scope_covers(&s, &r);
        prop_assert_eq!(scope_covers(&s.to_ascii_uppercase(), &r), covers);
        prop_assert_eq!(scope_covers(&s, &r.to_ascii_lowercase()), covers);
        prop_assert_eq!(scope_covers(&format!("{s}{}", "/".repeat(n)), &r), covers);
        prop_assert_eq!(scope_covers(&s, &format!("{r}{}", "/".repeat(n))), covers);
        // Only ASCII: `Ä` and `ä` are different names.
        let (ae, lower) = (scope(&["Ärger".to_string()]), scope(&["ärger".to_string()]));
        prop_assert!(!scope_covers(&ae, &lower) && scope_covers(&ae, &ae.to_ascii_lowercase()));
    }

    #[test]
    fn containment_is_transitive_and_antisymmetric(a in path(), b in path(), c in path()) {
        let (a, b, c) = (scope(&a), scope(&b), scope(&c));
        if scope_covers(&a, &b) && scope_covers(&b, &c) {
            prop_assert!(scope_covers(&a, &c), "{} ⊇ {} ⊇ {}, not {}", a, b, c, c);
        }
        if scope_covers(&a, &b) && scope_covers(&b, &a) {
            prop_assert!(a.trim_end_matches('/').eq_ignore_ascii_case(b.trim_end_matches('/')));
        }
    }

    #[test]
    fn an_assignment_allows_exactly_below_its_scope(a in path(), b in path(), which in 0usize..3) {
        let name = ["Reader", "Contributor", "JIT Network Access Requester"][which];
        let r = role(name);
        let (s, resource) = (scope(&a), scope(&b));
        let grants = [Grant { scope: &s, role: &r }];
        for action in ["Microsoft.Compute/virtualMachines/read", "Microsoft.Security/locations/jitNetworkAccessPolicies/write"] {
            prop_assert_eq!(permits(&grants, action, &resource), scope_covers(&s, &resource) && r.allows(action));
        }
        let mut custom = r.clone();
        custom.assignable_scopes = vec![s.clone()];
        prop_assert_eq!(custom.assignable_at(&resource), scope_covers(&s, &resource));
    }

    #[test]
    fn a_vms_levels_cover_it_and_their_neighbours_do_not(
        rg in "[a-zA-Z0-9_.()-]{1,12}", vm in "[a-zA-Z0-9_.-]{1,12}", suffix in "[a-zA-Z0-9]{1,3}",
    ) {
        prop_assume!(!rg.ends_with('.') && !rg.chars().all(|c| c == '.') && !vm.chars().all(|c| c == '.'));
        let text = format!("/subscriptions/{SUB}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{vm}");
        let id = VmId::parse(&text).expect("a valid VM id");
        let sub_scope = format!("/subscriptions/{SUB}");
        let rg_scope = format!("{sub_scope}/resourceGroups/{rg}");
        for s in [sub_scope.as_str(), rg_scope.as_str(), id.as_str(), &id.key()] {
            prop_assert!(scope_covers(s, id.as_str()), "{} covers {}", s, id);
        }
        let other_rg = format!("{sub_scope}/resourceGroups/{rg}{suffix}");
        let inside_other = format!("{other_rg}/x");
        let other_vm = format!("{text}{suffix}");
        prop_assert!(!scope_covers(&other_rg, id.as_str()) && !scope_covers(&rg_scope, &inside_other));
        prop_assert!(!scope_covers(id.as_str(), &other_vm), "a VM's scope covers another VM");
    }
}
