//! Each rule at its edge: the longest value it keeps, the first it refuses, and the messages and
//! records that show what was cut or left out.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may panic on a failed expectation.

use std::borrow::Cow;

use jitgate_core::audit::{truncate_field, AuditEvent, AuditStatus, MAX_NAME_CHARS, MAX_VALUE_CHARS};
use jitgate_core::destination::{check_url, denied_range, Host, Rules};
use jitgate_core::duration::format_iso8601;
use jitgate_core::enforcement::{check_join, limits, AgentMode, JoinDraft};
use jitgate_core::identity::{display_name, token_expiry, validate_subject, TokenLimits, MAX_SUBJECT};
use jitgate_core::ids::{shown, validate_subscription, VmId};
use jitgate_core::join::{removed, LISTED_VMS};
use jitgate_core::policy::{validate, PolicyDraft, DEFAULT_KIND};
use jitgate_core::rbac::{actions, Denied};
use jitgate_core::{AccessDuration, PolicyRef, SourcePrefix};
use time::{Duration, OffsetDateTime};

const SUB: &str = "20ff7fc3-e762-44dd-bd96-b71116dcdc23";

fn audit() -> AuditEvent {
    AuditEvent {
        time: OffsetDateTime::UNIX_EPOCH,
        operation: "op".into(),
        status: AuditStatus::Started,
        caller: "me".into(),
        caller_ip: None,
        resource_id: "/r".into(),
        correlation_id: "c".into(),
        properties: Default::default(),
    }
}

#[test]
fn an_oidc_subject_of_the_longest_allowed_length_is_accepted() {
    assert!(validate_subject(&"s".repeat(MAX_SUBJECT)).is_ok(), "OpenID Connect allows 255 characters");
    assert!(validate_subject(&"s".repeat(MAX_SUBJECT + 1)).is_err());
}

#[test]
fn an_agents_removal_record_names_up_to_fifty_vms_and_counts_the_rest() {
    let vms = |n: usize| (0..n).map(|i| format!("vm{i}")).collect::<Vec<_>>();
    let all = removed(audit(), "a1", "gw", AgentMode::Gateway, &vms(LISTED_VMS));
    assert_eq!(all.properties["unenforcedVms"], vms(LISTED_VMS).join(" "), "fifty are listed whole");
    let more = removed(audit(), "a1", "gw", AgentMode::Gateway, &vms(LISTED_VMS + 1));
    assert_eq!(more.properties["unenforcedVms"], format!("{} (and 1 more)", vms(LISTED_VMS).join(" ")));
}

#[test]
fn a_subscription_id_is_one_whole_guid() {
    assert!(validate_subscription(SUB).is_ok());
    for bad in [
        "20ff7fc3",
        "20ff7fc3-e762-44dd-bd96",
        "20ff7fc3-e762-44dd-bd96-b71116dcdc2",
        "20ff7fc3-e762-44dd-bd96-b71116dcdc23-0000",
        "20ff7fc3-e762-44dd-bd96-b71116dcdc2g",
        "20ff7fc3e762-44dd-bd96-b71116dcdc23-",
    ] {
        assert!(validate_subscription(bad).is_err(), "{bad}");
        let vm = format!("/subscriptions/{bad}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1");
        assert!(VmId::parse(&vm).is_err(), "{vm}");
    }
}

#[test]
fn a_name_quoted_in_a_message_is_cut_after_eighty_characters_with_a_mark() {
    let eighty = "a".repeat(80);
    assert_eq!(shown(&eighty), eighty, "eighty are shown whole");
    for long in [81, 500] {
        assert_eq!(shown(&"a".repeat(long)), format!("{eighty}…"), "{long} characters");
    }
    let m = validate_subscription(&"b".repeat(500)).expect_err("not a GUID");
    assert!(m.contains(&format!("'{}…'", "b".repeat(80))), "{m}");
}

#[test]
fn a_field_within_its_bound_in_characters_is_kept_whole_however_many_bytes_it_has() {
    let accented = "é".repeat(MAX_NAME_CHARS);
    assert!(accented.len() > MAX_NAME_CHARS);
    assert_eq!(truncate_field(&accented, MAX_NAME_CHARS), Cow::Borrowed(accented.as_str()));
    let mut event = audit().with("reason", "ü".repeat(MAX_VALUE_CHARS));
    event.caller = accented.clone();
    assert!(event.is_bounded());
    let bounded = event.clone().bounded();
    assert_eq!(bounded, event, "nothing is cut");
}

#[test]
fn a_refusal_names_the_caller_the_action_and_the_scope_as_azure_does() {
    let denied = Denied {
        principal: "alice".into(),
        action: actions::POLICY_WRITE.into(),
        scope: format!("/subscriptions/{SUB}/resourceGroups/rg1"),
    };
    assert_eq!(
        denied.to_string(),
        format!(
            "The client 'alice' does not have authorization to perform action '{}' over scope \
             '/subscriptions/{SUB}/resourceGroups/rg1' or the scope is invalid.",
            actions::POLICY_WRITE
        )
    );
}

#[test]
fn a_refused_webhook_destination_says_what_the_address_is_and_how_to_allow_it() {
    let message = check_url("https", false, Some(Host::Ip("169.254.169.254".parse().unwrap())), &Rules::default())
        .expect_err("link-local");
    assert!(message.starts_with("169.254.169.254 is a link-local address (169.254.0.0/16)"), "{message}");
    assert!(message.contains("unless the operator allows the range"), "{message}");
    let localhost =
        check_url("https", false, Some(Host::Domain("localhost")), &Rules::default()).expect_err("loopback");
    assert!(localhost.starts_with("127.0.0.1 is a loopback address (127.0.0.0/8)"), "{localhost}");
}

#[test]
fn a_duration_reads_back_as_it_was_written() {
    for text in ["PT3H", "pt90m", "P1DT2H", "PT0,5H"] {
        let d = AccessDuration::parse(text).unwrap();
        assert_eq!(d.to_string(), text);
    }
    assert_eq!(AccessDuration::from_seconds(5400).to_string(), "PT1H30M");
}

#[test]
fn a_join_with_every_field_at_its_bound_is_accepted_and_fits_the_body_limit() {
    // Every field at its bound: the join is accepted, and its text alone (before any JSON quoting
    // or field names) fits in the body an agent may send.
    let longest_address = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255";
    assert_eq!(longest_address.len(), limits::ADDRESS_TEXT);
    let draft = JoinDraft {
        join_token: "t".repeat(limits::JOIN_TOKEN),
        name: "v".repeat(64),
        mode: "gateway".into(),
        os_type: "Windows".into(),
        addresses: vec![longest_address.to_owned(); limits::ADDRESSES],
        public_address: Some(longest_address.to_owned()),
        hostname: "h".repeat(limits::HOSTNAME),
        name_is_hostname: true,
    };
    let text: usize = draft.join_token.len()
        + draft.name.len()
        + draft.mode.len()
        + draft.os_type.len()
        + draft.addresses.iter().map(String::len).sum::<usize>()
        + draft.public_address.as_ref().map_or(0, String::len)
        + draft.hostname.len();
    let joined = check_join(draft).expect("every field at its bound is accepted");
    assert_eq!(joined.agent.public_address, Some(longest_address.parse().unwrap()));
    assert!(text < limits::BODY_BYTES, "{text} bytes of fields, a body of at most {}", limits::BODY_BYTES);
}

#[test]
fn a_display_name_after_a_long_run_of_spaces_or_invisible_characters_is_found() {
    for padding in [" ".repeat(100), "\u{200B}".repeat(100), "\t \n".repeat(40)] {
        assert_eq!(display_name(&format!("{padding}Erin Smith")).as_deref(), Ok("Erin Smith"), "{padding:?}");
    }
}

#[test]
fn a_policy_keeps_the_kind_it_was_sent_and_a_blank_one_is_basic() {
    let reference = PolicyRef::new(SUB, "rg1", "westeurope", "default").unwrap();
    let kind_of = |kind: Option<&str>| {
        let draft = PolicyDraft { kind: kind.map(str::to_owned), vms: Vec::new() };
        validate(reference.clone(), draft).unwrap().kind
    };
    assert_eq!(kind_of(Some("Standard")), "Standard");
    for blank in [None, Some(""), Some("  ")] {
        assert_eq!(kind_of(blank), DEFAULT_KIND, "{blank:?}");
    }
}

#[test]
fn a_source_prefix_reads_as_it_is_kept() {
    for (text, kept) in [("*", "*"), ("10.0.0.0/24", "10.0.0.0/24"), (" 2001:DB8::1 ", "2001:db8::1")] {
        assert_eq!(SourcePrefix::parse(text).unwrap().to_string(), kept);
    }
    assert_eq!(SourcePrefix::parse_stored("10.0.0.7/24").unwrap().to_string(), "10.0.0.7/24", "as stored");
}

#[test]
fn only_a_star_means_any_source() {
    assert!(SourcePrefix::parse("*").unwrap().is_any());
    for text in ["10.0.0.4", "0.0.0.0/0", "::/0", "2001:db8::/32"] {
        assert!(!SourcePrefix::parse(text).unwrap().is_any(), "{text}");
    }
}

/// Every range the webhook deny list names, with what it is.
const DENIED: [(&str, &str); 27] = [
    ("0.0.0.0/8", "unspecified (\"this network\")"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "shared (carrier-grade NAT)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol assignment"),
    ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "6to4 relay anycast"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "broadcast"),
    ("240.0.0.0/4", "reserved"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::/96", "IPv4-compatible (deprecated)"),
    ("64:ff9b:1::/48", "local-use NAT64"),
    ("100::/64", "discard-only"),
    ("2001:db8::/32", "documentation"),
    ("3fff::/20", "documentation"),
    ("fc00::/7", "unique local (private)"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local (deprecated)"),
    ("ff00::/8", "multicast"),
];

#[test]
fn every_denied_range_is_denied_from_its_first_address_to_its_last() {
    for (range, kind) in DENIED {
        let net: ipnet::IpNet = range.parse().unwrap();
        for ip in [net.network(), net.broadcast()] {
            let d = denied_range(ip).unwrap_or_else(|| panic!("{ip} in {range} is denied"));
            // Where two ranges meet, the address is named by the first: `::` is unspecified before it
            // is IPv4-compatible, 255.255.255.255 the broadcast address before it is reserved.
            let named_by_another =
                (range == "::/96" && ip == net.network()) || (range == "240.0.0.0/4" && ip == net.broadcast());
            if !named_by_another {
                assert_eq!((d.range, d.kind), (range, kind), "{ip}");
            }
        }
    }
    for public in [
        "11.0.0.0",
        "100.128.0.0",
        "128.0.0.0",
        "169.255.0.0",
        "172.32.0.0",
        "192.0.1.0",
        "192.0.3.0",
        "192.88.100.0",
        "192.169.0.0",
        "198.20.0.0",
        "198.51.101.0",
        "203.0.114.0",
        "223.255.255.255",
        "64:ff9b:2::",
        "100:0:0:1::",
        "2001:db9::",
        "3fff:1000::",
        "fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        "fe00::",
    ] {
        assert_eq!(denied_range(public.parse().unwrap()), None, "{public} is public");
    }
}

#[test]
fn a_duration_in_whole_seconds_is_written_with_each_part_that_is_not_zero() {
    for (secs, text) in [(45, "PT45S"), (3725, "PT1H2M5S"), (3605, "PT1H5S"), (60, "PT1M"), (0, "PT0S")] {
        assert_eq!(format_iso8601(Duration::seconds(secs)), text);
        assert_eq!(AccessDuration::from_seconds(secs).to_string(), text);
        assert_eq!(AccessDuration::parse(text).unwrap().duration().whole_seconds(), secs, "{text} reads back");
    }
}

#[test]
fn a_token_may_live_exactly_the_maximum_or_exactly_as_long_as_its_parent() {
    let now = OffsetDateTime::from_unix_timestamp(1_900_000_000).unwrap();
    let max = Duration::days(90);
    let limits = TokenLimits { max: Some(max), parent_expires: None };
    assert_eq!(token_expiry(Some(max), now, limits), Ok(Some(now + max)), "the maximum itself");
    let parent = TokenLimits { max: Some(max), parent_expires: Some(now + Duration::hours(36)) };
    assert_eq!(token_expiry(Some(Duration::hours(36)), now, parent), Ok(Some(now + Duration::hours(36))));
}

#[test]
fn a_lifetime_in_a_refusal_is_in_days_only_when_it_is_whole_days() {
    let now = OffsetDateTime::from_unix_timestamp(1_900_000_000).unwrap();
    let refusal = |max: Duration, parent: Option<Duration>| {
        let limits = TokenLimits { max: Some(max), parent_expires: parent.map(|p| now + p) };
        token_expiry(Some(Duration::days(400)), now, limits).unwrap_err().message
    };
    assert!(refusal(Duration::days(90), None).contains("(P90D, --max-token-lifetime)"));
    assert!(refusal(Duration::hours(36), None).contains("(PT36H, --max-token-lifetime)"));
    assert!(refusal(Duration::ZERO, None).contains("(PT0S, --max-token-lifetime)"), "no time at all");
    // A parent with less than a second left: nothing whole is left of it.
    let parent = refusal(Duration::days(500), Some(Duration::milliseconds(500)));
    assert!(parent.contains("(in PT0S)"), "{parent}");
}
