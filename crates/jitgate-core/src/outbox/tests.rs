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
fn failed_deliveries_back_off_doubling_and_fail_after_the_last_attempt() {
    let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("valid time");
    // Every attempt fails: seven retries 1, 2, 4 … 64 s apart, then Failed.
    let mut at = now;
    let mut gaps = Vec::new();
    let mut state = PENDING;
    for attempt in 1..=MAX_ATTEMPTS {
        let next = retry_at(attempt, false, at);
        let (s, due) = attempted(false, next, at);
        state = s;
        if let Some(next) = next {
            gaps.push((next - at).whole_seconds());
            at = due;
        } else {
            assert_eq!(attempt, MAX_ATTEMPTS, "gave up early, at attempt {attempt}");
        }
    }
    assert_eq!(gaps, [1, 2, 4, 8, 16, 32, 64]);
    assert_eq!(state, FAILED);
    assert_eq!(MAX_ATTEMPTS, 8);
    // A success at any attempt ends it; so does an attempt past the limit.
    assert_eq!(retry_at(3, true, now), None);
    assert_eq!(attempted(true, retry_at(3, true, now), now), (DELIVERED, now));
    assert_eq!(retry_at(MAX_ATTEMPTS + 5, false, now), None);
    // A nonsensical attempt 0 does not underflow.
    assert_eq!(retry_at(0, false, now), Some(now + time::Duration::seconds(1)));
}

#[test]
fn a_webhook_record_names_whose_requests_it_hears() {
    let audit = crate::audit::test_event(OffsetDateTime::UNIX_EPOCH);
    let event = webhook_created(audit, "w1", "https://hooks.example", None, Some("alice"));
    assert_eq!(event.status, crate::audit::AuditStatus::Succeeded);
    assert_eq!((event.properties["subscription"].as_str(), event.properties["principal"].as_str()), ("", "alice"));
    assert_eq!(webhook_not_found("w1").code, WEBHOOK_NOT_FOUND);
}
