//! Unit tests of the server's shared pieces: the layers, staleness, the caller's address.

use super::*;

/// Log lines written by a test's own subscriber.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

fn boom() -> &'static str {
    panic!("boom at step 42")
}

#[tokio::test]
async fn a_panic_answers_500_with_the_request_ids_and_its_message_is_logged_with_them() {
    use tower::ServiceExt;
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt().with_writer(logs.clone()).with_ansi(false).finish();
    // Other tests' threads serve requests with no subscriber: a second live subscriber makes
    // tracing ask this one too when they register the request span (see the agent's log test).
    let _second = tracing::Dispatch::new(tracing_subscriber::registry());
    let _guard = tracing::subscriber::set_default(subscriber);
    tracing::callsite::rebuild_interest_cache();
    let routes: Router<()> = Router::new().route("/boom", get(|| async { boom() }));
    let config = ServerConfig { list_page_size: 10, max_body_bytes: 1024, ..Default::default() };
    let req = Request::builder().uri("/boom").body(axum::body::Body::empty()).expect("request");
    let resp = layers(routes, Arc::new(config)).oneshot(req).await.expect("answer");
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let request_id = resp.headers().get("x-ms-request-id").and_then(|v| v.to_str().ok()).expect("request id");
    let text = String::from_utf8(logs.0.lock().expect("logs").clone()).expect("utf-8");
    let line = text.lines().find(|l| l.contains("a request handler panicked")).expect("a panic line");
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains("boom at step 42"), "{line}");
    assert!(line.contains(request_id), "{line}");
    let body = axum::body::to_bytes(resp.into_body(), 4096).await.expect("body");
    assert!(!String::from_utf8_lossy(&body).contains("boom"), "the panic stays out of the answer");
}

struct FixedClock(OffsetDateTime);

impl Clock for FixedClock {
    fn now(&self) -> OffsetDateTime {
        self.0
    }
}

#[test]
fn agents_that_stop_reporting_are_stale() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = jitgate_store::secrets::Keyring::generate().expect("keys");
    let store = jitgate_store_sqlite::SqliteStore::open(&dir.path().join("db"), keys).expect("store");
    let now = OffsetDateTime::from_unix_timestamp(1_900_000_000).expect("time");
    let config = ServerConfig { list_page_size: 10, max_body_bytes: 1024, ..Default::default() };
    let app = App::new(Arc::new(store), Arc::new(FixedClock(now)), config);
    let agent = |last_seen: Option<OffsetDateTime>| jitgate_store::AgentRecord {
        id: "a".into(),
        name: "a".into(),
        mode: jitgate_core::enforcement::AgentMode::Host,
        subscription: "s".into(),
        resource_group: "rg".into(),
        location: "l".into(),
        vm_id: None,
        addresses: vec![],
        public_address: None,
        joined: now,
        last_seen,
        applied_revision: 0,
        delivered_revision: 0,
        nft_usable: None,
        nft_error: None,
    };
    assert!(app.is_stale(&agent(None)), "never reported");
    assert!(!app.is_stale(&agent(Some(now - time::Duration::seconds(10)))));
    assert!(app.is_stale(&agent(Some(now - STALE_AFTER - time::Duration::seconds(1)))));
}

#[test]
fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
    let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
    assert_eq!(caller_ip(ip("198.51.100.1"), Some("203.0.113.9"), &trusted), ip("198.51.100.1"), "untrusted peer");
    assert_eq!(caller_ip(ip("10.0.0.5"), Some("203.0.113.9"), &trusted), ip("203.0.113.9"));
    assert_eq!(
        caller_ip(ip("10.0.0.5"), Some("1.2.3.4, 203.0.113.9, 10.0.0.7"), &trusted),
        ip("203.0.113.9"),
        "right-most untrusted hop"
    );
    assert_eq!(caller_ip(ip("10.0.0.5"), None, &trusted), ip("10.0.0.5"));
    assert_eq!(caller_ip(ip("10.0.0.5"), Some("garbage"), &trusted), ip("10.0.0.5"));
    assert_eq!(caller_ip(ip("::ffff:198.51.100.1"), None, &[]), ip("198.51.100.1"));
}

#[tokio::test]
async fn server_timing_is_sent_only_when_asked_and_names_the_stages_a_request_went_through() {
    use tower::ServiceExt;
    let routes: Router<()> = Router::new().route(
        "/work",
        get(|| async {
            jitgate_store::timing::since(jitgate_store::timing::Stage::Parse, std::time::Instant::now());
            jitgate_store::timing::timed(
                jitgate_store::timing::Stage::Write,
                tokio::time::sleep(std::time::Duration::from_millis(2)),
            )
            .await;
            "done"
        }),
    );
    for on in [false, true] {
        let config = ServerConfig { server_timing: on, ..Default::default() };
        let req = Request::builder().uri("/work").body(axum::body::Body::empty()).expect("request");
        let resp = layers(routes.clone(), Arc::new(config)).oneshot(req).await.expect("answer");
        assert_eq!(resp.status(), StatusCode::OK);
        let header = resp.headers().get("server-timing").and_then(|v| v.to_str().ok()).map(str::to_owned);
        if !on {
            assert_eq!(header, None, "off by default: it tells clients how the server spends its time");
            continue;
        }
        let header = header.expect("a Server-Timing header");
        let stages = jitgate_store::timing::parse_header(&header);
        let get = |n: &str| stages.iter().find(|(k, _)| k == n).map(|(_, v)| *v);
        assert!(get("write").is_some_and(|w| w >= 2.0), "{header}");
        assert!(get("total").is_some_and(|t| t >= get("write").unwrap_or(0.0)), "{header}");
        assert_eq!(get("queue"), None, "a stage the request did not go through is left out: {header}");
    }
}

#[tokio::test]
async fn inventory_snapshots_survive_grant_changes_and_not_inventory_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = jitgate_store::secrets::Keyring::generate().expect("keys");
    let store = jitgate_store_sqlite::SqliteStore::open(&dir.path().join("db"), keys).expect("store");
    let app = App::new(Arc::new(store), Arc::new(SystemClock), ServerConfig::default());
    let first = app.portal_inventory.get(&app).await.expect("snapshot");
    let again = app.portal_inventory.get(&app).await.expect("snapshot");
    assert!(Arc::ptr_eq(&first, &again), "unchanged: the same snapshot");
    app.grants_changed();
    let after_grants = app.portal_inventory.get(&app).await.expect("snapshot");
    assert!(Arc::ptr_eq(&first, &after_grants), "an initiate does not make pages read every VM");
    app.changed();
    let after_change = app.portal_inventory.get(&app).await.expect("snapshot");
    assert!(!Arc::ptr_eq(&first, &after_change), "a VM, policy or agent change is read again");
    crate::replicas::wake(&app, jitgate_store::Signal::Changed(7));
    let after_signal = app.portal_inventory.get(&app).await.expect("snapshot");
    assert!(!Arc::ptr_eq(&after_change, &after_signal), "a change on another replica is read again");
}
