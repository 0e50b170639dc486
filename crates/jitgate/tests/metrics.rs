//! End-to-end: `GET /metrics` after a scripted workload shows exactly the counts it caused, the
//! exposition passes `promtool check metrics`, and who may read it without a token.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may panic on a failed expectation.

use std::collections::BTreeMap;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use jitgate_testkit::{as_user, TestServer};

const BIN: &str = env!("CARGO_BIN_EXE_jitgate");

/// Every sample of an exposition, by series (`name{labels}` as written).
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.rsplit_once(' ').and_then(|(k, v)| Some((k.to_owned(), v.parse().ok()?))))
        .collect()
}

/// The metrics as read from loopback, optionally as if forwarded for `from`, with `token`.
async fn scrape(s: &TestServer, from: Option<&str>, token: Option<&str>) -> (StatusCode, String, Option<String>) {
    let mut req = s.client.get(s.url("/metrics"));
    if let Some(ip) = from {
        req = req.header("X-Forwarded-For", ip);
    }
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("scrape");
    let status = resp.status();
    let content_type = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).map(String::from);
    (status, resp.text().await.expect("body"), content_type)
}

async fn metrics(s: &TestServer) -> BTreeMap<String, f64> {
    let (status, text, _) = scrape(s, None, None).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    samples(&text)
}

/// How much `series` moved between two scrapes (a series not yet written counts as 0).
fn moved(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, series: &str) -> f64 {
    after.get(series).copied().unwrap_or(0.0) - before.get(series).copied().unwrap_or(0.0)
}

fn initiate(vm: &str, port: u16) -> Value {
    json!({"virtualMachines": [{"id": vm, "ports": [{"number": port, "duration": "PT1H", "allowedSourceAddressPrefix": "203.0.113.7"}]}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_workload_moves_the_counters_by_exactly_what_it_did() {
    let s = TestServer::start(BIN, &[]);
    let vm = s.register_vm("metrics", "vm1", "Linux").await;
    let port = |n: u16| json!({"number": n, "protocol": "TCP", "allowedSourceAddressPrefix": "*", "maxRequestAccessDuration": "PT3H"});
    let policy = json!({"properties": {"virtualMachines": [{"id": vm, "ports": [port(22), port(80), port(443)]}]}});
    let put = s.json(Method::PUT, &s.policy_url("metrics", "westeurope", "default"), &policy).await;
    assert_eq!(put.status, StatusCode::OK, "{put:?}");
    let reader = s.principal_with_role("watcher", "Reader", "/").await;
    let audit_before = s.audit("top=1000").await.len();
    let before = metrics(&s).await;

    // Three initiates, one refused (a Reader may not initiate), one revoke.
    let url = s.initiate_url("metrics", "westeurope", "default");
    let mut ids = Vec::new();
    for p in [22, 80, 443] {
        let a = s.json(Method::POST, &url, &initiate(&vm, p)).await;
        assert_eq!(a.status, StatusCode::ACCEPTED, "{a:?}");
        ids.push(a.body["id"].as_i64().expect("request id"));
    }
    let denied = as_user(&s, &reader, Method::POST, &url, Some(&initiate(&vm, 22))).await;
    assert_eq!((denied.status, denied.code()), (StatusCode::FORBIDDEN, "AuthorizationFailed"), "{denied:?}");
    let revoked = s.send(Method::POST, &s.url(&format!("/api/v1/requests/{}/revoke", ids[0])), None).await;
    assert_eq!(revoked.status, StatusCode::OK, "{revoked:?}");

    let after = metrics(&s).await;
    let audit_written = (s.audit("top=1000").await.len() - audit_before) as f64;
    let m = |series: &str| moved(&before, &after, series);
    for (series, expected) in [
        ("jitgate_initiates_total{result=\"granted\"}", 3.0),
        ("jitgate_initiates_total{result=\"refused\"}", 1.0),
        ("jitgate_initiates_total{result=\"pending\"}", 0.0),
        ("jitgate_initiates_total{result=\"failed\"}", 0.0),
        ("jitgate_revokes_total", 1.0),
        ("jitgate_approvals_total", 0.0),
        ("jitgate_denials_total", 0.0),
        ("jitgate_authorization_decisions_total{result=\"denied\"}", 1.0),
        ("jitgate_http_requests_total{route=\"arm.initiate\",method=\"POST\",status=\"202\"}", 3.0),
        ("jitgate_http_requests_total{route=\"arm.initiate\",method=\"POST\",status=\"403\"}", 1.0),
        ("jitgate_http_requests_total{route=\"/api/v1/requests/{id}/revoke\",method=\"POST\",status=\"200\"}", 1.0),
        ("jitgate_http_request_duration_seconds_count{route=\"arm.initiate\",method=\"POST\"}", 4.0),
        ("jitgate_audit_records_total", audit_written),
    ] {
        assert_eq!(m(series), expected, "{series}: {before:?} -> {after:?}");
    }
    assert_eq!(audit_written, 5.0, "one audit record per initiate, refusal and revoke");
    assert!(m("jitgate_authorization_decisions_total{result=\"allowed\"}") >= 4.0, "each change was allowed");
    assert!(m("jitgate_store_commit_duration_seconds_count") >= 1.0);
    assert!(m("jitgate_store_commit_batch_size_sum") >= 5.0, "each change went through a commit");
    // States, read at the scrape: two grants are open, nothing waits for a webhook, no agent.
    for (series, expected) in [
        ("jitgate_live_grants", 2.0),
        ("jitgate_webhook_queue_depth", 0.0),
        ("jitgate_agents", 0.0),
        ("jitgate_agents_connected", 0.0),
    ] {
        assert_eq!(after.get(series), Some(&expected), "{series}");
    }
    // The route label is the route's name, never the path a client sent.
    let _ = s.send(Method::GET, &s.url("/api/v1/requests/999999"), None).await;
    let _ = s.send(Method::GET, &s.url("/no/such/place-7f3a"), None).await;
    let (_, text, content_type) = scrape(&s, None, None).await;
    assert_eq!(content_type.as_deref(), Some("text/plain; version=0.0.4; charset=utf-8"));
    let last = samples(&text);
    assert_eq!(
        last.get("jitgate_http_requests_total{route=\"/api/v1/requests/{id}\",method=\"GET\",status=\"404\"}"),
        Some(&1.0),
        "{text}"
    );
    assert_eq!(last.get("jitgate_http_requests_total{route=\"unmatched\",method=\"GET\",status=\"404\"}"), Some(&1.0));
    let labels: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_once('{').and_then(|(_, rest)| rest.split_once('}')))
        .map(|(l, _)| l)
        .collect();
    assert!(labels.iter().any(|l| l.contains("route=")), "{text}");
    for raw in ["999999", "place-7f3a", "vm1", "subscriptions/"] {
        assert!(!labels.iter().any(|l| l.contains(raw)), "{raw} leaked into a label:\n{text}");
    }
    jitgate_netns::promtool::check("server_metrics_pass_promtool", &text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_elsewhere_the_metrics_need_a_token_that_may_read_them() {
    let s = TestServer::start(BIN, &["--trusted-proxy", "127.0.0.1/32"]);
    let requester = s.principal_with_role("asker", "JIT Network Access Requester", "/").await;
    let reader = s.principal_with_role("watcher", "Security Reader", "/").await;
    let elsewhere = Some("203.0.113.9");

    let (status, text, _) = scrape(&s, elsewhere, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{text}");
    let body: Value = serde_json::from_str(&text).expect("Azure's error body");
    assert_eq!(body["error"]["code"], "AuthorizationFailed", "{body}");
    assert!(body["error"]["message"].as_str().expect("message").contains("203.0.113.9"), "{body}");
    let (status, text, _) = scrape(&s, elsewhere, Some(&requester)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "the requester may not read metrics: {text}");
    assert!(text.contains("Microsoft.Insights/metrics/read"), "{text}");
    let (status, text, _) = scrape(&s, elsewhere, Some("jg_not-a-token")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{text}");
    for token in [reader.as_str(), s.server.token.as_str()] {
        let (status, text, _) = scrape(&s, elsewhere, Some(token)).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        assert!(text.contains("# TYPE jitgate_initiates_total counter"), "{text}");
    }
    // Loopback needs no token, and a forwarded address counts only from a trusted proxy.
    assert_eq!(scrape(&s, None, None).await.0, StatusCode::OK);
    drop(s);
    let untrusted = TestServer::start(BIN, &[]);
    assert_eq!(scrape(&untrusted, elsewhere, None).await.0, StatusCode::OK, "a forged header is not believed");
    drop(untrusted);

    // --metrics-allow replaces the default: the monitoring network reads, loopback needs a token.
    let s = TestServer::start(BIN, &["--trusted-proxy", "127.0.0.1/32", "--metrics-allow", "203.0.113.0/24"]);
    assert_eq!(scrape(&s, elsewhere, None).await.0, StatusCode::OK);
    assert_eq!(scrape(&s, Some("198.51.100.1"), None).await.0, StatusCode::FORBIDDEN);
    assert_eq!(scrape(&s, None, None).await.0, StatusCode::FORBIDDEN);
    assert_eq!(scrape(&s, None, Some(&s.server.token)).await.0, StatusCode::OK);
}

/// `jitgate agent --metrics-listen 127.0.0.1:0` serves its metrics over plain HTTP while the
/// server is away. (nftables is kept out of reach with `JITGATE_NFT` pointing nowhere: the agent
/// then reports it unusable and never touches this host's firewall.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_serves_its_metrics_where_metrics_listen_says() {
    let dir = tempfile::tempdir().expect("tempdir");
    let credential =
        json!({"server": "http://127.0.0.1:9", "agentId": "a1", "credential": "jga_x", "name": "vm1", "mode": "host"});
    std::fs::write(dir.path().join("agent.json"), credential.to_string()).expect("credential");
    let mut cmd = std::process::Command::new(BIN);
    cmd.args(["agent", "--state-dir"]).arg(dir.path()).args(["--metrics-listen", "127.0.0.1:0"]);
    cmd.env("JITGATE_NFT", dir.path().join("no-nft")).env_remove("JITGATE_METRICS_LISTEN");
    let mut agent = jitgate_netns::KillOnDrop::spawn(cmd).expect("agent starts");
    let line = agent.wait_for_line("metrics on").expect("the metrics address");
    let url = line.split_whitespace().last().expect("url").to_owned();
    let client = reqwest::Client::new();
    let mut text = String::new();
    let failed = jitgate_testkit::eventually(std::time::Duration::from_secs(10), async || {
        let resp = client.get(&url).send().await.expect("scrape");
        assert_eq!(resp.status(), StatusCode::OK);
        text = resp.text().await.expect("body");
        samples(&text).get("jitgate_agent_server_failures_total").is_some_and(|n| *n >= 1.0)
    })
    .await;
    assert!(failed, "the unreachable server is counted:\n{text}");
    let now = samples(&text);
    assert_eq!(now.get("jitgate_agent_server_reachable"), Some(&0.0), "{text}");
    assert_eq!(now.get("jitgate_agent_applies_total{kind=\"replace\",result=\"ok\"}"), Some(&0.0), "{text}");
    jitgate_netns::promtool::check("agent_binary_metrics_pass_promtool", &text);
    let other = client.get(url.replace("/metrics", "/other")).send().await.expect("other path");
    assert_eq!(other.status(), StatusCode::NOT_FOUND);
}
