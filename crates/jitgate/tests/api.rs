//! End-to-end: the real binary over TLS (its generated certificate as the only trust root),
//! every operation of the Azure contract, the native VM API, and the refusals.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may panic on a failed expectation.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

use jitgate_testkit::{vm_id, TestServer, SUB};

const BIN: &str = env!("CARGO_BIN_EXE_jitgate");

/// An end time `minutes` from now, in milliseconds as the Azure SDK writes it.
fn end_in(minutes: i64) -> String {
    let t = OffsetDateTime::now_utc() + Duration::minutes(minutes);
    let t = t.replace_nanosecond(t.nanosecond() / 1_000_000 * 1_000_000).expect("valid");
    t.format(&Rfc3339).expect("format")
}

fn policy_body(vms: Value) -> Value {
    json!({"kind": "Basic", "properties": {"virtualMachines": vms}})
}

fn rules(vm: &str) -> Value {
    json!([{"id": vm, "ports": [
        {"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "*", "maxRequestAccessDuration": "PT3H"},
        {"number": 3389, "protocol": "*", "allowedSourceAddressPrefixes": ["10.0.0.0/24", "192.168.1.0/24"], "maxRequestAccessDuration": "PT1H"}
    ]}])
}

fn initiate_body(vm: &str, port: Value) -> Value {
    json!({"virtualMachines": [{"id": vm, "ports": [port]}], "justification": "e2e"})
}

/// Follows nextLink to the end; returns the policy names in order.
async fn list_all(s: &TestServer, first: String) -> (Vec<String>, usize) {
    let (mut names, mut pages, mut url) = (Vec::new(), 0, Some(first));
    while let Some(u) = url {
        let a = s.send(Method::GET, &u, None).await;
        assert_eq!(a.status, StatusCode::OK, "{a:?}");
        assert!(a.body["value"].is_array(), "every list body has value: {a:?}");
        names.extend(
            a.body["value"].as_array().into_iter().flatten().map(|p| p["name"].as_str().unwrap_or("").to_owned()),
        );
        url = a.body["nextLink"].as_str().map(String::from);
        if let Some(link) = &url {
            assert!(link.starts_with("https://127.0.0.1:"), "absolute link: {link}");
            assert!(link.contains("api-version=2020-01-01"));
        }
        pages += 1;
    }
    (names, pages)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_azure_operation_over_tls() {
    let s = TestServer::start(BIN, &["--list-page-size", "1"]);
    let vm1 = s.register_vm("rg1", "vm1", "Linux").await;
    let vm2 = s.register_vm("rg1", "vm2", "Windows").await;
    let vm3 = s.register_vm("rg2", "vm3", "Linux").await;

    // PUT answers 200 for a new policy and for a replaced one.
    let a = s.json(Method::PUT, &s.policy_url("rg1", "westeurope", "default"), &policy_body(rules(&vm1))).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let p = &a.body;
    assert_eq!(p["id"], format!("/subscriptions/{SUB}/resourceGroups/rg1/providers/Microsoft.Security/locations/westeurope/jitNetworkAccessPolicies/default"));
    assert_eq!(p["name"], "default");
    assert_eq!(p["type"], "Microsoft.Security/locations/jitNetworkAccessPolicies");
    assert_eq!(p["location"], "westeurope");
    assert_eq!(p["kind"], "Basic");
    assert_eq!(p["properties"]["provisioningState"], "Succeeded");
    assert_eq!(p["properties"]["requests"], json!([]));
    // vm1 has no enforcement point: the answer says so in jitgate's extension fields.
    let mut vms = p["properties"]["virtualMachines"].clone();
    assert_eq!(vms[0]["enforcement"], "NotEnforced", "{vms}");
    if let Some(vm) = vms[0].as_object_mut() {
        vm.remove("enforcement");
        vm.remove("enforcementWarning");
    }
    assert_eq!(vms, rules(&vm1), "rules round-trip, singular and plural prefixes kept");
    let a = s.json(Method::PUT, &s.policy_url("rg1", "westeurope", "default"), &policy_body(rules(&vm1))).await;
    assert_eq!(a.status, StatusCode::OK);
    // A VM with no ports gets its OS default (Windows: 3389, *, any source, PT3H).
    let a = s.json(Method::PUT, &s.policy_url("rg1", "northeurope", "win"), &policy_body(json!([{"id": vm2}]))).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert_eq!(
        a.body["properties"]["virtualMachines"][0]["ports"],
        json!([{"number": 3389, "protocol": "*", "allowedSourceAddressPrefix": "*", "maxRequestAccessDuration": "PT3H"}])
    );
    let a = s
        .json(
            Method::PUT,
            &s.policy_url("rg2", "westeurope", "default"),
            &policy_body(json!([{"id": vm3, "ports": []}])),
        )
        .await;
    assert_eq!(a.body["properties"]["virtualMachines"][0]["ports"][0]["number"], 22, "Linux default");

    // GET returns what PUT stored.
    let a = s.send(Method::GET, &s.policy_url("RG1", "WestEurope", "DEFAULT"), None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body["properties"]["virtualMachines"], rules(&vm1), "names compare case-insensitively");

    // The four list scopes, one policy per page.
    let base = s.url(&format!("/subscriptions/{SUB}"));
    let v = "api-version=2020-01-01";
    let (all, pages) = list_all(&s, format!("{base}/providers/Microsoft.Security/jitNetworkAccessPolicies?{v}")).await;
    assert_eq!(all.len(), 3);
    assert_eq!(pages, 3);
    let (west, _) =
        list_all(&s, format!("{base}/providers/Microsoft.Security/locations/westeurope/jitNetworkAccessPolicies?{v}"))
            .await;
    assert_eq!(west, ["default", "default"]);
    let (rg1, _) =
        list_all(&s, format!("{base}/resourceGroups/rg1/providers/Microsoft.Security/jitNetworkAccessPolicies?{v}"))
            .await;
    assert_eq!(rg1, ["win", "default"]);
    let (rg1west, _) = list_all(
        &s,
        format!(
            "{base}/resourceGroups/rg1/providers/Microsoft.Security/locations/westeurope/jitNetworkAccessPolicies?{v}"
        ),
    )
    .await;
    assert_eq!(rg1west, ["default"]);
    let empty = s
        .send(
            Method::GET,
            &format!("{base}/resourceGroups/none/providers/Microsoft.Security/jitNetworkAccessPolicies?{v}"),
            None,
        )
        .await;
    assert_eq!(empty.body, json!({"value": []}));

    // Initiate: 202 with the request; the omitted source is the caller's own address.
    let init = s.initiate_url("rg1", "westeurope", "default");
    let end = end_in(60);
    let a = s.json(Method::POST, &init, &initiate_body(&vm1, json!({"number": 22, "endTimeUtc": end}))).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{a:?}");
    assert_eq!(a.body["requestor"], "owner");
    assert_eq!(a.body["justification"], "e2e");
    let port = &a.body["virtualMachines"][0]["ports"][0];
    assert_eq!(port["allowedSourceAddressPrefix"], "127.0.0.1");
    assert_eq!(port["status"], "Initiated");
    assert_eq!(port["statusReason"], "UserRequested");
    let echoed = OffsetDateTime::parse(port["endTimeUtc"].as_str().unwrap_or(""), &Rfc3339).expect("end time");
    assert_eq!(echoed, OffsetDateTime::parse(&end, &Rfc3339).expect("sent"));
    // With a duration, from a range inside the allowed one, 7 fractional digits accepted.
    let a = s
        .json(
            Method::POST,
            &init,
            &initiate_body(
                &vm1,
                json!({"number": 3389, "duration": "PT30M", "allowedSourceAddressPrefix": "10.0.0.7"}),
            ),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{a:?}");
    let seven = (OffsetDateTime::now_utc() + Duration::minutes(10)).format(&Rfc3339).expect("fmt");
    let seven = format!("{}.1234567Z", &seven[..19]);
    let a = s
        .json(
            Method::POST,
            &init,
            &initiate_body(
                &vm1,
                json!({"number": 3389, "endTimeUtc": seven, "allowedSourceAddressPrefixes": ["10.0.0.0/24"]}),
            ),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{a:?}");
    assert_eq!(a.body["virtualMachines"][0]["ports"][0]["endTimeUtc"], seven);
    // A newer request for the same VM, port and source supersedes the older.
    let a = s
        .json(
            Method::POST,
            &init,
            &initiate_body(&vm1, json!({"number": 22, "duration": "PT10M", "allowedSourceAddressPrefix": "127.0.0.1"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    let history = s.send(Method::GET, &s.policy_url("rg1", "westeurope", "default"), None).await.body["properties"]
        ["requests"]
        .clone();
    assert_eq!(history.as_array().map(Vec::len), Some(4));
    assert_eq!(history[0]["virtualMachines"][0]["ports"][0]["status"], "Revoked");
    assert_eq!(history[0]["virtualMachines"][0]["ports"][0]["statusReason"], "NewerRequestInitiated");
    assert_eq!(history[1]["virtualMachines"][0]["ports"][0]["status"], "Initiated");
    assert_eq!(history[3]["virtualMachines"][0]["ports"][0]["status"], "Initiated");

    // A retried POST with the same x-ms-client-request-id is answered from the first grant.
    let body =
        initiate_body(&vm1, json!({"number": 22, "duration": "PT5M", "allowedSourceAddressPrefix": "198.51.100.9"}))
            .to_string();
    let auth = format!("Bearer {}", s.server.token);
    let headers =
        [("Authorization", auth.as_str()), ("x-ms-client-request-id", "5f1e2d3c-0000-4000-8000-000000000001")];
    let first = s.send_with(Method::POST, &init, Some(body.as_bytes()), &headers).await;
    let retry = s.send_with(Method::POST, &init, Some(body.as_bytes()), &headers).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    assert_eq!(retry.status, StatusCode::ACCEPTED);
    assert_eq!(first.body, retry.body);
    assert_eq!(retry.headers["x-ms-correlation-request-id"], "5f1e2d3c-0000-4000-8000-000000000001");
    let history = s.send(Method::GET, &s.policy_url("rg1", "westeurope", "default"), None).await.body["properties"]
        ["requests"]
        .clone();
    assert_eq!(history.as_array().map(Vec::len), Some(5), "the retry added nothing");

    // DELETE: 200 when it existed, then 404 on GET and 204 on a second DELETE.
    let a = s.send(Method::DELETE, &s.policy_url("rg1", "westeurope", "default"), None).await;
    assert_eq!(a.status, StatusCode::OK);
    let a = s.send(Method::GET, &s.policy_url("rg1", "westeurope", "default"), None).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.code(), "PolicyNotFound");
    let a = s.send(Method::DELETE, &s.policy_url("rg1", "westeurope", "default"), None).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_native_vm_api() {
    let s = TestServer::start(BIN, &[]);
    let id = vm_id("rg", "web1");
    let body = json!({"id": id, "osType": "Linux", "location": "westeurope", "address": "10.0.0.4"});
    let a = s.json(Method::PUT, &s.url("/api/v1/vms"), &body).await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
    assert_eq!(a.body["name"], "web1");
    let a = s
        .json(Method::PUT, &s.url("/api/v1/vms"), &json!({"id": id, "osType": "Windows", "location": "westeurope"}))
        .await;
    assert_eq!(a.status, StatusCode::OK, "replaced");
    assert_eq!(a.body["osType"], "Windows");
    let a = s.send(Method::GET, &s.url("/api/v1/vms"), None).await;
    assert_eq!(a.body["value"].as_array().map(Vec::len), Some(1));
    let one = s.send(Method::GET, &s.url(&format!("/api/v1/vms?id={id}")), None).await;
    assert_eq!(one.body["id"], id.as_str());
    for (bad, field) in [
        (json!({"id": "web1", "osType": "Linux", "location": "w"}), "id"),
        (json!({"id": id, "osType": "Solaris", "location": "w"}), "osType"),
        (json!({"id": id, "osType": "Linux", "location": "w", "address": "nope"}), "address"),
    ] {
        let a = s.json(Method::PUT, &s.url("/api/v1/vms"), &bad).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(a.body["error"]["target"], field);
    }
    // In use by a policy: 409; after the policy is gone: 200, then 404.
    s.json(Method::PUT, &s.policy_url("rg", "westeurope", "default"), &policy_body(json!([{"id": id}]))).await;
    let del = s.url(&format!("/api/v1/vms?id={id}"));
    let a = s.send(Method::DELETE, &del, None).await;
    assert_eq!((a.status, a.code()), (StatusCode::CONFLICT, "VirtualMachineInUse"));
    s.send(Method::DELETE, &s.policy_url("rg", "westeurope", "default"), None).await;
    assert_eq!(s.send(Method::DELETE, &del, None).await.status, StatusCode::OK);
    let a = s.send(Method::DELETE, &del, None).await;
    assert_eq!((a.status, a.code()), (StatusCode::NOT_FOUND, "VirtualMachineNotFound"));
}

/// Sends a PUT that must be refused, and checks that it was refused with an Azure error body
/// and without changing the stored policy.
async fn refused_put(s: &TestServer, name: &str, body: &[u8], status: StatusCode, before: &Value) {
    let a = s.send(Method::PUT, &s.policy_url("rg1", "westeurope", name), Some(body)).await;
    assert_eq!(a.status, status, "{}: {a:?}", String::from_utf8_lossy(body));
    assert!(!a.code().is_empty() && !a.body["error"]["message"].as_str().unwrap_or("").is_empty(), "{a:?}");
    assert!(a.headers.get("retry-after").is_none());
    let now = s.send(Method::GET, &s.policy_url("rg1", "westeurope", name), None).await;
    assert_eq!(&now.body, before, "nothing changed after {}", String::from_utf8_lossy(body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_changes_nothing() {
    let s = TestServer::start(BIN, &["--max-body-bytes", "4096"]);
    let vm1 = s.register_vm("rg1", "vm1", "Linux").await;
    let long = s.register_vm("rg1", &"v".repeat(50), "Linux").await;
    let good = policy_body(rules(&vm1));
    let a = s.json(Method::PUT, &s.policy_url("rg1", "westeurope", "default"), &good).await;
    assert_eq!(a.status, StatusCode::OK);
    let stored = s.send(Method::GET, &s.policy_url("rg1", "westeurope", "default"), None).await.body;
    let missing = s.send(Method::GET, &s.policy_url("rg1", "westeurope", "fresh"), None).await.body;
    assert_eq!(missing["error"]["code"], "PolicyNotFound");

    let with_port = |port: Value| policy_body(json!([{"id": vm1, "ports": [port]}])).to_string();
    let port = |patch: Value| {
        let mut p = json!({"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "*", "maxRequestAccessDuration": "PT3H"});
        for (k, v) in patch.as_object().into_iter().flatten() {
            if v.is_null() {
                p.as_object_mut().map(|o| o.remove(k));
            } else {
                p[k] = v.clone();
            }
        }
        with_port(p)
    };
    let bad_bodies: Vec<String> = vec![
        "{not json".into(),
        "".into(),
        "[]".into(),
        json!({"properties": {"virtualMachines": "vm1"}}).to_string(),
        json!({"properties": {}}).to_string(),
        port(json!({"number": "22"})),
        port(json!({"number": 70000})),
        port(json!({"number": 0})),
        port(json!({"protocol": "ICMP"})),
        port(json!({"protocol": null})),
        port(json!({"allowedSourceAddressPrefixes": ["10.0.0.0/8"]})),
        port(json!({"allowedSourceAddressPrefix": null})),
        port(json!({"allowedSourceAddressPrefix": "10.0.0.0/33"})),
        port(json!({"allowedSourceAddressPrefix": null, "allowedSourceAddressPrefixes": ["10.0.0.1", "nope"]})),
        port(json!({"maxRequestAccessDuration": "PT25H"})),
        port(json!({"maxRequestAccessDuration": "PT1M"})),
        port(json!({"maxRequestAccessDuration": "three hours"})),
        port(json!({"maxRequestAccessDuration": null})),
        policy_body(json!([{"id": vm1}, {"id": vm1.to_uppercase().replace("SUBSCRIPTIONS", "subscriptions")}]))
            .to_string(),
        policy_body(json!([{"id": vm_id("rg1", "unregistered")}])).to_string(),
        policy_body(json!([{"id": "not-an-arm-id"}])).to_string(),
    ];
    for body in &bad_bodies {
        refused_put(&s, "default", body.as_bytes(), StatusCode::BAD_REQUEST, &stored).await;
        refused_put(&s, "fresh", body.as_bytes(), StatusCode::BAD_REQUEST, &missing).await;
    }
    // Policy name + VM name over 56 characters: "default1" (8) + 50 = 58.
    let over = policy_body(json!([{"id": long}])).to_string();
    let missing1 = s.send(Method::GET, &s.policy_url("rg1", "westeurope", "default1"), None).await.body;
    refused_put(&s, "default1", over.as_bytes(), StatusCode::BAD_REQUEST, &missing1).await;
    // Oversized body: 413.
    let huge = format!("{{\"kind\":\"{}\",\"properties\":{{\"virtualMachines\":[]}}}}", "x".repeat(8192));
    refused_put(&s, "default", huge.as_bytes(), StatusCode::PAYLOAD_TOO_LARGE, &stored).await;

    // api-version: missing or unknown.
    for url in [
        s.policy_url("rg1", "westeurope", "default").replace("?api-version=2020-01-01", ""),
        s.policy_url("rg1", "westeurope", "default").replace("2020-01-01", "2099-01-01"),
    ] {
        for method in [Method::GET, Method::PUT] {
            let a = s.send(method.clone(), &url, Some(good.to_string().as_bytes())).await;
            assert_eq!(a.status, StatusCode::BAD_REQUEST, "{method} {url}");
            assert!(a.code().contains("ApiVersionParameter"), "{a:?}");
        }
    }
    // Bad path parts.
    let a = s
        .send(
            Method::GET,
            &s.url("/subscriptions/nope/providers/Microsoft.Security/jitNetworkAccessPolicies?api-version=2020-01-01"),
            None,
        )
        .await;
    assert_eq!((a.status, a.code()), (StatusCode::BAD_REQUEST, "InvalidSubscriptionId"));

    // Initiate refusals: 4xx, an error body, and no new request in the history.
    let init = s.initiate_url("rg1", "westeurope", "default");
    let in_port = |p: Value| initiate_body(&vm1, p).to_string();
    let refusals: Vec<(String, StatusCode)> = vec![
        (in_port(json!({"number": 8080, "duration": "PT10M"})), StatusCode::BAD_REQUEST),
        (in_port(json!({"number": 22, "endTimeUtc": end_in(-5)})), StatusCode::BAD_REQUEST),
        (in_port(json!({"number": 22, "endTimeUtc": end_in(300)})), StatusCode::BAD_REQUEST),
        (in_port(json!({"number": 22, "duration": "PT4H"})), StatusCode::BAD_REQUEST),
        (in_port(json!({"number": 22, "endTimeUtc": end_in(10), "duration": "PT10M"})), StatusCode::BAD_REQUEST),
        (in_port(json!({"number": 22})), StatusCode::BAD_REQUEST),
        (in_port(json!({"number": 22, "endTimeUtc": "yesterday"})), StatusCode::BAD_REQUEST),
        (
            in_port(json!({"number": 3389, "duration": "PT10M", "allowedSourceAddressPrefix": "172.16.0.1"})),
            StatusCode::BAD_REQUEST,
        ),
        (in_port(json!({"number": 3389, "duration": "PT10M"})), StatusCode::BAD_REQUEST),
        (
            in_port(json!({"number": 22, "duration": "PT10M", "allowedSourceAddressPrefix": "999.1.1.1"})),
            StatusCode::BAD_REQUEST,
        ),
        (json!({"virtualMachines": [{"id": vm1, "ports": []}]}).to_string(), StatusCode::BAD_REQUEST),
        (json!({"virtualMachines": []}).to_string(), StatusCode::BAD_REQUEST),
        (
            json!({"virtualMachines": [{"id": long, "ports": [{"number": 22, "duration": "PT5M"}]}]}).to_string(),
            StatusCode::BAD_REQUEST,
        ),
        ("{\"virtualMachines\": 5}".into(), StatusCode::BAD_REQUEST),
        ("nope".into(), StatusCode::BAD_REQUEST),
    ];
    for (body, status) in &refusals {
        let a = s.send(Method::POST, &init, Some(body.as_bytes())).await;
        assert_eq!(a.status, *status, "{body}: {a:?}");
        assert!(!a.code().is_empty(), "{a:?}");
    }
    let a = s
        .send(
            Method::POST,
            &s.initiate_url("rg1", "westeurope", "ghost"),
            Some(in_port(json!({"number": 22, "duration": "PT5M"})).as_bytes()),
        )
        .await;
    assert_eq!((a.status, a.code()), (StatusCode::NOT_FOUND, "PolicyNotFound"));
    let after = s.send(Method::GET, &s.policy_url("rg1", "westeurope", "default"), None).await.body;
    assert_eq!(after, stored, "no refusal left a trace in the policy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_is_required_everywhere() {
    let s = TestServer::start(BIN, &[]);
    let urls = [
        s.policy_url("rg1", "westeurope", "default"),
        s.url(&format!(
            "/subscriptions/{SUB}/providers/Microsoft.Security/jitNetworkAccessPolicies?api-version=2020-01-01"
        )),
        s.url("/api/v1/vms"),
    ];
    for url in &urls {
        for headers in
            [vec![], vec![("Authorization", "Bearer jg_wrong")], vec![("Authorization", "Basic b3duZXI6eA==")]]
        {
            let a = s.send_with(Method::GET, url, None, &headers).await;
            assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{url} {headers:?}");
            assert!(a.code().starts_with("AuthenticationFailed") || a.code() == "InvalidAuthenticationToken", "{a:?}");
            assert!(a.headers.get("www-authenticate").is_some());
            assert!(a.headers.get("retry-after").is_none());
        }
    }
    let a = s.send_with(Method::GET, &s.url("/healthz"), None, &[]).await;
    assert_eq!(a.status, StatusCode::OK, "health needs no token");
    let a = s.send_with(Method::GET, &s.url("/readyz"), None, &[]).await;
    assert_eq!(a.body["status"], "ready");
    let a = s.send(Method::GET, &s.url("/no/such/thing"), None).await;
    assert_eq!((a.status, a.code()), (StatusCode::NOT_FOUND, "NotFound"));
}
