//! Targets for the short texts jitgate parses: ISO-8601 durations, RFC 3339 times, source
//! prefixes, ARM resource ids and scopes.

use jitgate_api_types::datetime;
use jitgate_api_types::rbac::validate_scope;
use jitgate_core::duration::format_iso8601;
use jitgate_core::ids::{validate_location, validate_subscription, PolicyRef, VmId};
use jitgate_core::rbac::scope_covers;
use jitgate_core::{rfc3339, AccessDuration, SourcePrefix};
use time::{Duration, UtcOffset};

use crate::{split_line, MESSAGE_LIMIT};

fn short(what: &str, input: &str, message: &str) {
    assert!(
        message.len() <= MESSAGE_LIMIT,
        "{what}: a {}-byte message for a {}-byte input",
        message.len(),
        input.len()
    );
}

/// `maxRequestAccessDuration`, `duration`, `approvalTimeout`, token lifetimes.
pub fn duration(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let parsed = match AccessDuration::parse(text) {
        Ok(d) => d,
        Err(e) => return short("duration", text, &e.0),
    };
    assert_eq!(parsed.text(), text, "the text is kept as given");
    let d = parsed.duration();
    assert!(d >= Duration::ZERO, "{text:?} parsed as the negative {d}");
    // The canonical form reads back as the same whole seconds, and is a fixed point.
    let canonical = format_iso8601(d);
    let again = AccessDuration::parse(&canonical).unwrap_or_else(|e| panic!("{canonical:?} (from {text:?}): {e}"));
    assert_eq!(again.duration().whole_seconds(), d.whole_seconds(), "{text:?} → {canonical:?}");
    assert_eq!(format_iso8601(again.duration()), canonical);
    assert_eq!(AccessDuration::from_seconds(d.whole_seconds()).text(), canonical);
    // Letter case and surrounding blanks do not change the value.
    let lower = AccessDuration::parse(&format!(" {} ", text.to_ascii_lowercase()));
    assert_eq!(lower.map(|l| l.duration()), Ok(d), "{text:?} in lower case");
}

/// `endTimeUtc`, `startTimeUtc`, and every time jitgate writes back.
pub fn datetime(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let t = match datetime::parse(text) {
        Ok(t) => t,
        Err(e) => return short("datetime", text, &e),
    };
    assert_eq!(t.offset(), UtcOffset::UTC, "{text:?} is kept in UTC");
    // The wire form (seven digits, `Z`) reads back as the time cut to 100 ns, and is a fixed point.
    let wire = datetime::format(t);
    let back = datetime::parse(&wire).unwrap_or_else(|e| panic!("{wire:?} (from {text:?}) does not read back: {e}"));
    assert_eq!(back, t - Duration::nanoseconds(i64::from(t.nanosecond() % 100)), "{text:?} → {wire:?}");
    assert_eq!(datetime::format(back), wire);
    // The form of messages and audit records reads back exactly.
    let written = rfc3339(t);
    assert_eq!(datetime::parse(&written), Ok(t), "{text:?} → {written:?}");
}

/// Source prefixes (`allowedSourceAddressPrefix(es)`), one to three, a line each.
pub fn prefix(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut parsed = Vec::new();
    for line in text.split('\n').take(3) {
        match SourcePrefix::parse(line) {
            Ok(p) => {
                check_prefix(line, &p);
                parsed.push(p);
            }
            Err(e) => short("prefix", line, &e),
        }
        if let Ok(stored) = SourcePrefix::parse_stored(line) {
            assert!(stored.net().is_none_or(|n| n.trunc() == n), "{line:?}: a stored prefix keeps host bits");
            if let Ok(strict) = SourcePrefix::parse(line) {
                assert_eq!(stored.canonical(), strict.canonical(), "{line:?}");
            }
        }
    }
    for a in &parsed {
        for b in &parsed {
            let (ab, ba) = (a.covers(b), b.covers(a));
            assert_eq!(ab && ba, a.canonical() == b.canonical(), "{a} and {b} cover each other");
            for c in &parsed {
                if ab && b.covers(c) {
                    assert!(a.covers(c), "{a} covers {b} covers {c}, but not {a} {c}");
                }
            }
        }
    }
}

fn check_prefix(line: &str, p: &SourcePrefix) {
    assert_eq!(SourcePrefix::parse(p.text()).as_ref(), Ok(p), "{line:?}: its text {:?} reads back", p.text());
    assert!(SourcePrefix::any().covers(p) && p.covers(p), "{line:?}");
    match p.net() {
        None => assert!(p.is_any() && p.text() == "*"),
        Some(net) => {
            assert_eq!(net.trunc(), net, "{line:?}: host bits kept");
            let canonical = SourcePrefix::parse(&p.canonical()).unwrap_or_else(|e| panic!("{line:?}: {e}"));
            assert_eq!(canonical.net(), Some(net));
            assert!(!p.covers(&SourcePrefix::any()), "{line:?} covers '*'");
        }
    }
}

/// ARM ids and scopes: a VM id, a policy's parts, role-assignment scopes; up to three lines.
pub fn arm_id(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (first, _) = split_line(data);
    let first = std::str::from_utf8(first).unwrap_or_default();
    match VmId::parse(first) {
        Ok(id) => check_vm_id(first, &id),
        Err(e) => short("VM id", first, &e),
    }
    let parts: Vec<&str> = first.split('/').collect();
    if let [sub, rg, location, name] = parts[..] {
        if let Ok(p) = PolicyRef::new(sub, rg, location, name) {
            assert!(validate_subscription(sub).is_ok() && validate_location(location).is_ok());
            assert!(scope_covers(&format!("/subscriptions/{sub}/resourceGroups/{rg}"), &p.id()));
            assert_eq!(p.key(), p.id().to_ascii_lowercase());
        }
    }
    let scopes: Vec<&str> = text.split('\n').take(3).collect();
    for s in &scopes {
        if let Err(e) = validate_scope(s) {
            short("scope", s, &e);
        }
        assert!(scope_covers(s, s) && scope_covers("/", s), "{s:?} covers itself, '/' covers it");
        let upper = s.to_ascii_uppercase();
        for t in &scopes {
            assert_eq!(scope_covers(&upper, t), scope_covers(s, t), "{s:?} over {t:?}: ASCII case does not count");
            assert_eq!(scope_covers(s, &t.to_ascii_lowercase()), scope_covers(s, t));
            if scope_covers(s, t) && scope_covers(t, s) {
                assert!(s.trim_end_matches('/').eq_ignore_ascii_case(t.trim_end_matches('/')), "{s:?} and {t:?}");
            }
            for u in &scopes {
                if scope_covers(s, t) && scope_covers(t, u) {
                    assert!(scope_covers(s, u), "{s:?} covers {t:?} covers {u:?}, but not {u:?}");
                }
            }
        }
        let trimmed = s.trim_end_matches('/');
        if !trimmed.is_empty() {
            assert!(!scope_covers(s, &format!("{trimmed}x")), "{s:?} covers a sibling it is a prefix of");
            assert!(scope_covers(s, &format!("{trimmed}/x")), "{s:?} covers its child");
            assert!(!scope_covers(&format!("{trimmed}/x"), s), "a child of {s:?} covers it");
        }
    }
}

fn check_vm_id(text: &str, id: &VmId) {
    assert_eq!(VmId::parse(id.as_str()).as_ref(), Ok(id), "{text:?} reads back");
    assert_eq!(id.key(), id.as_str().to_ascii_lowercase());
    let sub = format!("/subscriptions/{}", id.subscription());
    let rg = format!("{sub}/resourceGroups/{}", id.resource_group());
    for scope in [sub.as_str(), rg.as_str(), id.as_str()] {
        assert!(scope_covers(scope, id.as_str()), "{scope:?} covers {text:?}");
        // Every level of a VM's id is a scope a role can be assigned at.
        assert_eq!(validate_scope(scope), Ok(()), "{scope:?} of {text:?}");
    }
    let mut sibling = id.as_str().to_owned();
    sibling.push('x');
    assert!(!scope_covers(id.as_str(), &sibling), "{text:?} covers a VM whose name it starts");
    // A policy for the VM alone can be named after it.
    let reference = PolicyRef::new(id.subscription(), id.resource_group(), "westeurope", id.name());
    assert!(reference.is_ok(), "{text:?}: {reference:?}");
}
