//! Names, addresses and times from outside (issue 9, findings 2, 5 and 9), against the real
//! server: a name can never add a segment to an ARM id or step out of a scope, source prefixes
//! are canonical or refused, and a date-time without `T` is refused while one without an offset
//! is read as UTC and echoed with its `Z`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may panic on a failed expectation.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use jitgate_testkit::{as_user, vm_id, TestServer, SUB};

const BIN: &str = env!("CARGO_BIN_EXE_jitgate");

fn policy_path(name: &str) -> String {
    format!("/subscriptions/{SUB}/resourceGroups/rg1/providers/Microsoft.Security/locations/westeurope/jitNetworkAccessPolicies/{name}")
}

fn policy_body(vm: &str, source: &str) -> Value {
    json!({"properties": {"virtualMachines": [{"id": vm, "ports": [
        {"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": source, "maxRequestAccessDuration": "PT3H"}]}]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slash_or_dots_in_a_name_never_reach_below_another_scope() {
    let s = TestServer::start(BIN, &[]);
    let vm1 = s.register_vm("rg1", "vm1", "Linux").await;
    let vm2 = s.register_vm("rg1", "vm2", "Linux").await;
    // The owner makes policy `h`; a Security Admin holds the scope of `h` only.
    let h = s.url(&format!("{}?api-version=2020-01-01", policy_path("h")));
    assert_eq!(s.json(Method::PUT, &h, &policy_body(&vm1, "*")).await.status, StatusCode::OK);
    let admin = s.principal_with_role("h-admin", "Security Admin", &policy_path("h")).await;

    // (`..` itself is resolved away by every URL client before it is sent; the route's unit tests
    // send it raw. `...` is a name of dots alone that survives the trip.)
    for name in ["h%2F1", "h%2f2", "h%5C1", "...", "%2E%2E%2E", "h%3F1", "h%231", "h%251", "a%E2%80%AEb", "a%0Ab"] {
        let url = s.url(&format!("{}?api-version=2020-01-01", policy_path(name)));
        for token in [s.server.token.as_str(), admin.as_str()] {
            let a = as_user(&s, token, Method::PUT, &url, Some(&policy_body(&vm2, "*"))).await;
            assert_eq!(a.status, StatusCode::BAD_REQUEST, "PUT {name}: {a:?}");
            assert_eq!(a.code(), "InvalidJitNetworkAccessPolicy", "{a:?}");
            assert!(a.body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{a:?}");
            for method in [Method::GET, Method::DELETE] {
                let a = as_user(&s, token, method.clone(), &url, None).await;
                assert_eq!(a.status, StatusCode::BAD_REQUEST, "{method} {name}: {a:?}");
            }
        }
    }
    // Nothing was created beside `h`, and `h` is intact.
    let list = s
        .send(
            Method::GET,
            &s.url(&format!(
                "/subscriptions/{SUB}/providers/Microsoft.Security/jitNetworkAccessPolicies?api-version=2020-01-01"
            )),
            None,
        )
        .await;
    let names: Vec<&str> =
        list.body["value"].as_array().into_iter().flatten().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, ["h"], "{list:?}");

    // VM names, resource groups and role-assignment scopes follow the same rule.
    for bad in [vm_id("rg1", ".."), vm_id("rg1", "a\\b"), vm_id("rg1", "a%2Fb"), vm_id("..", "vm9")] {
        let a = s
            .json(Method::PUT, &s.url("/api/v1/vms"), &json!({"id": bad, "osType": "Linux", "location": "westeurope"}))
            .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{bad}: {a:?}");
    }
    let scope = format!("{}/..", policy_path("h"));
    let a = s
        .json(
            Method::POST,
            &s.url("/api/v1/roleAssignments"),
            &json!({"principal": "h-admin", "role": "Reader", "scope": scope}),
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_prefixes_are_canonical_or_refused() {
    let s = TestServer::start(BIN, &[]);
    let vm = s.register_vm("rg1", "vm1", "Linux").await;
    let url = s.url(&format!("{}?api-version=2020-01-01", policy_path("p")));
    for bad in ["010.0.0.0/8", "10.0.0.1/08", "10.0.0.010/32", "10.0.0.1/24", "0x0a.0.0.0/8", "2130706433"] {
        let a = s.json(Method::PUT, &url, &policy_body(&vm, bad)).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{bad}: {a:?}");
        assert_eq!(
            a.body["error"]["target"], "properties.virtualMachines[0].ports[0].allowedSourceAddressPrefix",
            "{a:?}"
        );
    }
    assert_eq!(s.send(Method::GET, &url, None).await.status, StatusCode::NOT_FOUND, "nothing was stored");

    // An IPv6 range written in capitals is kept in its one canonical spelling.
    let a = s.json(Method::PUT, &url, &policy_body(&vm, "2001:DB8:0::/32")).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert_eq!(a.body["properties"]["virtualMachines"][0]["ports"][0]["allowedSourceAddressPrefix"], "2001:db8::/32");

    // Initiate refuses the same spellings.
    let a = s.json(Method::PUT, &url, &policy_body(&vm, "10.0.0.0/8")).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let initiate = url.replace("?api-version", "/initiate?api-version");
    for bad in ["10.0.0.1/24", "010.0.0.1", "10.0.0.1/032"] {
        let body = json!({"virtualMachines": [{"id": vm, "ports": [{"number": 22, "duration": "PT5M", "allowedSourceAddressPrefix": bad}]}]});
        let a = s.json(Method::POST, &initiate, &body).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{bad}: {a:?}");
    }
    let body = json!({"virtualMachines": [{"id": vm, "ports": [{"number": 22, "duration": "PT5M", "allowedSourceAddressPrefix": "10.1.0.0/16"}]}]});
    assert_eq!(s.json(Method::POST, &initiate, &body).await.status, StatusCode::ACCEPTED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_times_without_t_are_refused_and_without_offset_are_utc() {
    let s = TestServer::start(BIN, &[]);
    let vm = s.register_vm("rg1", "vm1", "Linux").await;
    let url = s.url(&format!("{}?api-version=2020-01-01", policy_path("p")));
    assert_eq!(s.json(Method::PUT, &url, &policy_body(&vm, "*")).await.status, StatusCode::OK);
    let initiate = url.replace("?api-version", "/initiate?api-version");
    let end = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    let (date, clock) = (
        format!("{:04}-{:02}-{:02}", end.year(), u8::from(end.month()), end.day()),
        format!("{:02}:{:02}:{:02}", end.hour(), end.minute(), end.second()),
    );
    let body = |t: &str| json!({"virtualMachines": [{"id": vm, "ports": [{"number": 22, "endTimeUtc": t, "allowedSourceAddressPrefix": "10.0.0.1"}]}]});
    let a = s.json(Method::POST, &initiate, &body(&format!("{date} {clock}"))).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{a:?}");
    assert!(a.body["error"]["message"].as_str().is_some_and(|m| m.contains("'T'")), "says what to write: {a:?}");
    let a = s.json(Method::POST, &initiate, &body(&format!("{date}T{clock}"))).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{a:?}");
    let echoed = a.body["virtualMachines"][0]["ports"][0]["endTimeUtc"].as_str().unwrap_or_default().to_owned();
    assert_eq!(echoed, format!("{date}T{clock}.0000000Z"), "read as UTC and echoed with its Z: {a:?}");
}
