use super::*;

#[test]
fn each_change_makes_its_events() {
    assert_eq!(on_initiate(false), [REQUESTED]);
    assert_eq!(on_initiate(true), [REQUESTED, OPENED]);
    assert_eq!(on_decision(true), [APPROVED, OPENED]);
    assert_eq!(on_decision(false), [DENIED]);
    assert_eq!(on_extension_decision(true), [APPROVED]);
    assert_eq!(on_extension_decision(false), [DENIED]);
}

#[test]
fn a_webhook_hears_the_events_it_names_or_all() {
    assert!(wants("", EXPIRED), "no list: every event");
    assert!(wants("opened EXPIRED", EXPIRED), "names compare without case");
    assert!(!wants("opened", EXPIRED));
    let policy =
        "/subscriptions/ABC/resourceGroups/rg/providers/Microsoft.Security/locations/l/jitNetworkAccessPolicies/p";
    assert_eq!(subscription_of(policy), "abc");
    assert_eq!(subscription_of("nonsense"), "");
}

#[test]
fn an_attempt_delivers_retries_or_gives_up() {
    let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("valid time");
    let later = now + time::Duration::minutes(1);
    assert_eq!(attempted(true, Some(later), now), (DELIVERED, now));
    assert_eq!(attempted(false, Some(later), now), (PENDING, later));
    assert_eq!(attempted(false, None, now), (FAILED, now));
}

#[test]
fn a_webhook_record_names_whose_requests_it_hears() {
    let audit = crate::audit::test_event(OffsetDateTime::UNIX_EPOCH);
    let event = webhook_created(audit, "w1", "https://hooks.example", None, Some("alice"));
    assert_eq!(event.status, crate::audit::AuditStatus::Succeeded);
    assert_eq!((event.properties["subscription"].as_str(), event.properties["principal"].as_str()), ("", "alice"));
    assert_eq!(webhook_not_found("w1").code, WEBHOOK_NOT_FOUND);
}
