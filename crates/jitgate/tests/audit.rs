//! The audit log as a product (completeness, queries, export, verification online and offline,
//! retention into sealed archives) and the inventory views, end to end.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may panic on a failed expectation.

use std::path::Path;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use jitgate_testkit::agents::{agent_call, join_gateway, state};
use jitgate_testkit::webhooks::{create_webhook, events, hanging_receiver, receiver, LOOPBACK_RECEIVERS};
use jitgate_testkit::{as_user, eventually, vm_id, Answer, LocalServer, TestServer, SUB};

const BIN: &str = env!("CARGO_BIN_EXE_jitgate");

fn policy(vm: &str) -> Value {
    json!({"properties": {"virtualMachines": [{"id": vm, "ports": [
        {"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "*", "maxRequestAccessDuration": "PT3H"}]}]}})
}

fn initiate(vm: &str, source: &str) -> Value {
    json!({"virtualMachines": [{"id": vm, "ports": [{"number": 22, "duration": "PT10M", "allowedSourceAddressPrefix": source}]}], "justification": "audit test"})
}

async fn all_records(s: &TestServer, query: &str) -> Vec<Value> {
    s.list_all(s.url(&format!("/api/v1/audit?top=7{query}"))).await
}

fn cli(s: &TestServer, args: &[&str]) -> std::process::Output {
    jitgate_testkit::cli(BIN, s, args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_of_a_scripted_session_is_audited_once_with_its_fields() {
    let s = TestServer::start(BIN, &[]);
    let mut expected: Vec<(&str, &str, &str)> = Vec::new(); // (caller, operation suffix, status)
    let ok = StatusCode::is_success;
    let vm1 = s.register_vm("rg1", "vm1", "Linux").await;
    let vm2 = s.register_vm("rg1", "vm2", "Windows").await;
    expected.extend([("owner", "virtualMachines/write", "Succeeded"); 2]);
    assert!(ok(&s.json(Method::PUT, &s.policy_url("rg1", "westeurope", "default"), &policy(&vm1)).await.status));
    assert!(ok(&s.json(Method::PUT, &s.policy_url("rg1", "westeurope", "second"), &policy(&vm2)).await.status));
    expected.extend([("owner", "jitNetworkAccessPolicies/write", "Succeeded"); 2]);
    for (name, role) in [("alice", "JIT Network Access Requester"), ("bob", "Reader")] {
        assert_eq!(
            s.json(Method::POST, &s.url("/api/v1/principals"), &json!({"name": name})).await.status,
            StatusCode::CREATED
        );
        let a = s
            .json(
                Method::POST,
                &s.url("/api/v1/roleAssignments"),
                &json!({"principal": name, "role": role, "scope": format!("/subscriptions/{SUB}")}),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED);
        expected.extend([("owner", "principals/write", "Succeeded"), ("owner", "roleAssignments/write", "Succeeded")]);
    }
    let token = |name: &str| {
        let (s, name) = (&s, name.to_owned());
        async move {
            let t = s
                .json(Method::POST, &s.url(&format!("/api/v1/principals/{name}/tokens")), &json!({"expiresIn": "PT1H"}))
                .await;
            t.body["token"].as_str().expect("token").to_owned()
        }
    };
    let (alice, bob) = (token("alice").await, token("bob").await);
    expected.extend([("owner", "principals/write", "Succeeded"); 2]);
    // Alice requests twice and revokes one; Bob may read but not change or open anything.
    let first = as_user(
        &s,
        &alice,
        Method::POST,
        &s.initiate_url("rg1", "westeurope", "default"),
        Some(&initiate(&vm1, "203.0.113.1")),
    )
    .await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    let second = as_user(
        &s,
        &alice,
        Method::POST,
        &s.initiate_url("rg1", "westeurope", "second"),
        Some(&initiate(&vm2, "203.0.113.2")),
    )
    .await;
    assert_eq!(second.status, StatusCode::ACCEPTED);
    expected.extend([("alice", "initiate/action", "Succeeded"); 2]);
    let id = first.body["id"].as_i64().expect("id");
    assert_eq!(
        as_user(&s, &alice, Method::POST, &s.url(&format!("/api/v1/requests/{id}/revoke")), None).await.status,
        StatusCode::OK
    );
    expected.push(("alice", "requests/revoke/action", "Succeeded"));
    assert_eq!(
        as_user(&s, &bob, Method::GET, &s.policy_url("rg1", "westeurope", "default"), None).await.status,
        StatusCode::OK
    );
    assert_eq!(
        as_user(&s, &bob, Method::PUT, &s.policy_url("rg1", "westeurope", "default"), Some(&policy(&vm1))).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        as_user(&s, &bob, Method::POST, &s.initiate_url("rg1", "westeurope", "default"), Some(&initiate(&vm1, "*")))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        as_user(&s, &bob, Method::DELETE, &s.policy_url("rg1", "westeurope", "second"), None).await.status,
        StatusCode::FORBIDDEN
    );
    expected.extend([
        ("bob", "jitNetworkAccessPolicies/write", "Failed"),
        ("bob", "initiate/action", "Failed"),
        ("bob", "jitNetworkAccessPolicies/delete", "Failed"),
    ]);
    // Refusals of bad input, a failed sign-in, and more changes.
    assert_eq!(
        s.json(Method::PUT, &s.policy_url("rg1", "westeurope", "default"), &json!({"properties": {}})).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        as_user(
            &s,
            &alice,
            Method::POST,
            &s.initiate_url("rg1", "westeurope", "default"),
            Some(&json!({"virtualMachines": []}))
        )
        .await
        .status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        as_user(&s, "jg_forged", Method::GET, &s.url("/api/v1/vms"), None).await.status,
        StatusCode::UNAUTHORIZED
    );
    expected.extend([
        ("owner", "jitNetworkAccessPolicies/write", "Failed"),
        ("alice", "initiate/action", "Failed"),
        ("anonymous", "signIn/action", "Failed"),
    ]);
    let sp = s
        .json(
            Method::PUT,
            &s.url("/api/v1/securityPolicies"),
            &json!({"scope": format!("/subscriptions/{SUB}/resourceGroups/locked"), "jitEnabled": false}),
        )
        .await;
    assert_eq!(sp.status, StatusCode::OK, "{sp:?}");
    expected.push(("owner", "Microsoft.Security/policies/write", "Succeeded"));
    let role =
        json!({"Name": "Auditor", "Actions": ["Microsoft.Insights/eventtypes/values/read"], "AssignableScopes": ["/"]});
    assert_eq!(s.json(Method::PUT, &s.url("/api/v1/roleDefinitions/Auditor"), &role).await.status, StatusCode::CREATED);
    expected.push(("owner", "roleDefinitions/write", "Succeeded"));
    let jt = s
        .json(
            Method::POST,
            &s.url("/api/v1/agentTokens"),
            &json!({"subscription": SUB, "resourceGroup": "rg1", "location": "westeurope"}),
        )
        .await;
    assert_eq!(jt.status, StatusCode::CREATED);
    expected.push(("owner", "joinTokens/write", "Succeeded"));
    assert!(ok(&s.json(Method::PUT, &s.policy_url("rg1", "westeurope", "default"), &policy(&vm1)).await.status));
    expected.push(("owner", "jitNetworkAccessPolicies/write", "Succeeded"));
    assert_eq!(
        s.json(Method::POST, &s.initiate_url("rg1", "westeurope", "default"), &initiate(&vm1, "198.51.100.7"))
            .await
            .status,
        StatusCode::ACCEPTED
    );
    expected.push(("owner", "initiate/action", "Succeeded"));
    assert_eq!(
        as_user(&s, &alice, Method::POST, &s.url(&format!("/api/v1/requests/{id}/revoke")), None).await.status,
        StatusCode::CONFLICT
    );
    expected.push(("alice", "requests/revoke/action", "Failed"));
    let tokens = s.send(Method::GET, &s.url("/api/v1/principals/bob/tokens"), None).await;
    let bob_token = tokens.body["value"][0]["id"].as_i64().expect("id");
    assert_eq!(
        s.send(Method::DELETE, &s.url(&format!("/api/v1/tokens/{bob_token}")), None).await.status,
        StatusCode::OK
    );
    expected.push(("owner", "principals/write", "Succeeded"));
    assert_eq!(as_user(&s, &bob, Method::GET, &s.url("/api/v1/vms"), None).await.status, StatusCode::UNAUTHORIZED);
    // A second failed sign-in from the same address within the summary interval is counted, not
    // recorded on its own: it appears in the summary record when the interval closes.
    assert_eq!(s.send(Method::DELETE, &s.policy_url("rg1", "westeurope", "second"), None).await.status, StatusCode::OK);
    expected.push(("owner", "jitNetworkAccessPolicies/delete", "Succeeded"));
    assert_eq!(s.send(Method::DELETE, &s.url(&format!("/api/v1/vms?id={vm2}")), None).await.status, StatusCode::OK);
    expected.push(("owner", "virtualMachines/delete", "Succeeded"));
    assert!(expected.len() >= 28, "a session of about 30 operations: {}", expected.len());

    // Every operation appears exactly once, in order, with its fields.
    let records = all_records(&s, "").await;
    let got: Vec<(String, String, String)> = records
        .iter()
        .skip(1) // the first start's Owner
        .map(|r| {
            (
                r["caller"].as_str().unwrap_or("").into(),
                r["operationName"].as_str().unwrap_or("").into(),
                r["status"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    assert_eq!(got.len(), expected.len(), "{got:#?}");
    for ((caller, op, status), (ec, eop, es)) in got.iter().zip(&expected) {
        assert_eq!((caller.as_str(), status.as_str()), (*ec, *es), "{op}");
        assert!(op.ends_with(eop), "{op} vs {eop}");
    }
    for r in &records {
        for field in [
            "sequence",
            "eventTimestamp",
            "operationName",
            "status",
            "caller",
            "resourceId",
            "correlationId",
            "properties",
            "hash",
            "previousHash",
        ] {
            assert!(!r[field].is_null(), "{field} in {r}");
        }
    }
    let init = records.iter().find(|r| r["caller"] == "alice" && r["status"] == "Succeeded").expect("alice's initiate");
    assert_eq!(init["properties"]["justification"], "audit test");
    assert!(init["properties"]["sources"].as_str().unwrap_or("").contains("203.0.113.1"));
    assert!(init["properties"]["endTimeUtc"].is_string());
    assert_eq!(init["callerIpAddress"], "127.0.0.1");
    assert!(init["resourceId"].as_str().unwrap_or("").ends_with("jitNetworkAccessPolicies/default"));
    let denied = records.iter().find(|r| r["caller"] == "bob").expect("bob's refusal");
    assert!(denied["properties"]["reason"].as_str().unwrap_or("").contains("AuthorizationFailed"));

    // Filters, alone and together.
    assert!(all_records(&s, "&caller=bob").await.iter().all(|r| r["caller"] == "bob"));
    assert_eq!(all_records(&s, "&caller=bob&status=Failed").await.len(), 3);
    assert_eq!(
        all_records(
            &s,
            "&operation=Microsoft.Security/locations/jitNetworkAccessPolicies/initiate/action&status=Succeeded"
        )
        .await
        .len(),
        3
    );
    let by_vm =
        all_records(&s, &format!("&resourceId={}", vm2.to_uppercase().replace("SUBSCRIPTIONS", "subscriptions"))).await;
    assert_eq!(by_vm.len(), 2, "the VM's write and delete: {by_vm:#?}");
    assert!(all_records(&s, "&from=2000-01-01T00:00:00Z&to=2000-01-02T00:00:00Z").await.is_empty());
    let a = s.send(Method::GET, &s.url("/api/v1/audit?status=Maybe"), None).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        as_user(&s, &alice, Method::GET, &s.url("/api/v1/audit"), None).await.status,
        StatusCode::FORBIDDEN,
        "requesters read no audit"
    );

    // Export: every record once, as JSON lines and as CSV.
    let jsonl = cli(&s, &["audit", "export", "--format", "jsonl"]);
    assert!(jsonl.status.success());
    assert_eq!(String::from_utf8_lossy(&jsonl.stdout).lines().count(), records.len());
    let csv = cli(&s, &["audit", "export", "--format", "csv"]);
    let text = String::from_utf8_lossy(&csv.stdout);
    assert!(text.starts_with("sequence,eventTimestamp,operationName,status,caller"));
    assert_eq!(text.lines().count(), records.len() + 1);

    let v = s.send(Method::GET, &s.url("/api/v1/audit/verify"), None).await;
    assert_eq!(v.body["valid"], true, "{v:?}");
    assert_eq!(v.body["records"].as_u64(), Some(records.len() as u64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_is_caught_online_and_offline_and_retention_seals_archives() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut s = TestServer::from(LocalServer::start_in(Path::new(BIN), &data, &[]).expect("start"));
    let token = s.server.token.clone();
    for i in 0..12 {
        let id = vm_id("rg", &format!("vm{i}"));
        let r = s
            .json(Method::PUT, &s.url("/api/v1/vms"), &json!({"id": id, "osType": "Linux", "location": "westeurope"}))
            .await;
        assert!(r.status.is_success());
    }
    assert!(s.server.stop().expect("stop"));
    let verify = |dir: &Path| {
        std::process::Command::new(BIN).args(["audit", "verify", "--data-dir"]).arg(dir).output().expect("verify")
    };
    let intact = verify(&data);
    assert!(intact.status.success(), "{}", String::from_utf8_lossy(&intact.stdout));

    // Retention: everything older than 1 s moves to a sealed archive; the chain continues.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let mut restarted =
        TestServer::from(LocalServer::start_in(Path::new(BIN), &data, &["--audit-retention", "1s"]).expect("restart"));
    let verify_online =
        async |s: &TestServer| as_user(s, &token, Method::GET, &s.url("/api/v1/audit/verify"), None).await.body;
    let mut archived = false;
    for _ in 0..50 {
        let sealed = std::fs::read_dir(data.join("audit-archive"))
            .map(|d| {
                d.flatten().any(|e| {
                    e.file_name().to_string_lossy().ends_with(".jsonl")
                        && !e.file_name().to_string_lossy().starts_with('.')
                })
            })
            .unwrap_or(false);
        if sealed {
            archived = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(archived, "an archive was written");
    let file = std::fs::read_dir(data.join("audit-archive"))
        .expect("dir")
        .flatten()
        .find(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .expect("file")
        .path();
    assert!(std::fs::metadata(&file).expect("meta").permissions().readonly(), "the archive is sealed read-only");
    let lines = std::fs::read_to_string(&file).expect("read");
    assert_eq!(lines.lines().count(), 14, "bootstrap + 12 VMs + the seal line");
    assert!(lines.lines().last().unwrap_or("").contains("\"sealed\":true"));
    let mut v = Value::Null;
    for _ in 0..50 {
        v = verify_online(&restarted).await;
        if v["archivedThrough"] == 13 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(v["valid"], true, "{v}");
    assert_eq!(v["archivedThrough"], 13, "{v}");
    assert!(restarted.server.stop().expect("stop"));
    assert!(verify(&data).status.success(), "offline verify starts after the archive");

    // A changed field is caught offline, naming the record; and online after a restart.
    let conn = rusqlite::Connection::open(data.join("jitgate.db")).expect("db");
    let first: i64 = conn.query_row("SELECT min(seq) FROM audit", [], |r| r.get(0)).expect("min");
    conn.execute("UPDATE audit SET caller = 'mallory' WHERE seq = ?1", [first]).expect("tamper");
    drop(conn);
    let broken = verify(&data);
    assert_eq!(broken.status.code(), Some(1));
    let out = String::from_utf8_lossy(&broken.stdout);
    assert!(out.contains("BROKEN") && out.contains(&first.to_string()), "{out}");
    let again = TestServer::from(LocalServer::start_in(Path::new(BIN), &data, &[]).expect("restart"));
    let v = verify_online(&again).await;
    assert_eq!((v["valid"].clone(), v["firstInvalid"].clone()), (json!(false), json!(first)), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_views_group_vms_like_the_portal() {
    let s = TestServer::start(BIN, &[]);
    // A gateway enforcement point (joined through the API, as an agent would).
    let credential = join_gateway(&s, "gw1", json!({"addresses": ["10.0.0.1"], "publicAddress": "203.0.113.10"})).await;
    let attach = |name: &str, address: &str| json!({"id": vm_id("rg1", name), "osType": "Linux", "location": "westeurope", "address": address, "gateway": "gw1"});
    for (name, addr) in [("configured", "10.1.0.1"), ("spare", "10.1.0.2")] {
        assert_eq!(s.json(Method::PUT, &s.url("/api/v1/vms"), &attach(name, addr)).await.status, StatusCode::CREATED);
    }
    let bare = s.register_vm("rg1", "bare", "Linux").await;
    let classic = json!({"id": vm_id("rg1", "old"), "osType": "Windows", "location": "westeurope", "classic": true});
    assert_eq!(s.json(Method::PUT, &s.url("/api/v1/vms"), &classic).await.status, StatusCode::CREATED);
    let locked = json!({"id": vm_id("locked", "vm"), "osType": "Linux", "location": "westeurope", "address": "10.1.0.9", "gateway": "gw1"});
    assert_eq!(s.json(Method::PUT, &s.url("/api/v1/vms"), &locked).await.status, StatusCode::CREATED);
    let off = json!({"scope": format!("/subscriptions/{SUB}/resourceGroups/locked"), "jitEnabled": false});
    assert_eq!(s.json(Method::PUT, &s.url("/api/v1/securityPolicies"), &off).await.status, StatusCode::OK);
    let mut rule = policy(&vm_id("rg1", "configured"));
    rule["properties"]["virtualMachines"][0]["ports"][0]["mappedPort"] = json!(50022);
    rule["properties"]["virtualMachines"].as_array_mut().expect("vms").push(json!({"id": bare}));
    assert_eq!(s.json(Method::PUT, &s.policy_url("rg1", "westeurope", "default"), &rule).await.status, StatusCode::OK);
    for src in ["198.51.100.1", "198.51.100.2"] {
        let a = s
            .json(
                Method::POST,
                &s.initiate_url("rg1", "westeurope", "default"),
                &initiate(&vm_id("rg1", "configured"), src),
            )
            .await;
        assert_eq!(a.status, StatusCode::ACCEPTED);
    }
    let view = |v: &str| {
        let (s, v) = (&s, v.to_owned());
        async move {
            let a = s.send(Method::GET, &s.url(&format!("/api/v1/vms?view={v}")), None).await;
            assert_eq!(a.status, StatusCode::OK, "{a:?}");
            a.body["value"].as_array().cloned().unwrap_or_default()
        }
    };
    let names = |list: &[Value]| list.iter().map(|v| v["name"].as_str().unwrap_or("").to_owned()).collect::<Vec<_>>();

    let configured = view("configured").await;
    assert_eq!(names(&configured), ["bare", "configured"]);
    let c = &configured[1];
    assert_eq!(c["approvedRequestsLast7Days"], 2);
    assert_eq!(c["lastUser"], "owner");
    assert!(c["lastAccess"].is_string());
    assert_eq!(c["connectionDetails"]["enforcementPoint"], "gw1");
    assert_eq!(c["connectionDetails"]["mode"], "gateway");
    assert_eq!(c["connectionDetails"]["publicIpAddress"], "203.0.113.10");
    assert_eq!(c["connectionDetails"]["ports"][0]["number"], 22);
    assert_eq!(c["connectionDetails"]["ports"][0]["mappedPort"], 50022);
    assert_eq!(c["enforcementState"], "Stale", "the gateway never reported");
    let b = &configured[0];
    assert_eq!(b["enforcementState"], "NotEnforced");
    assert!(b["warning"].as_str().unwrap_or("").contains("nothing closes"));
    assert_eq!(b["approvedRequestsLast7Days"], 0);

    // Once the gateway reports the state it was sent, its VMs are enforced.
    let sent = state(&s, &credential).await;
    assert_eq!(sent.status, StatusCode::OK, "{sent:?}");
    let report = json!({"revision": sent.body["revision"], "nftablesUsable": true});
    let r = agent_call(&s, &credential, Method::POST, "/agent/v1/applied", Some(report)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(view("configured").await[1]["enforcementState"], "Enforced");

    assert_eq!(names(&view("notConfigured").await), ["spare"]);
    let unsupported = view("unsupported").await;
    let reasons: Vec<(String, String)> = unsupported
        .iter()
        .map(|v| (v["name"].as_str().unwrap_or("").into(), v["unsupportedReason"].as_str().unwrap_or("").into()))
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons.iter().any(|(n, r)| n == "old" && r.contains("classic")), "{reasons:?}");
    assert!(reasons.iter().any(|(n, r)| n == "vm" && r.contains("security policy")), "{reasons:?}");
    let none = s.register_vm("rg2", "lonely", "Linux").await;
    assert!(view("unsupported")
        .await
        .iter()
        .any(|v| v["id"] == none && v["unsupportedReason"].as_str().unwrap_or("").contains("no enforcement point")));

    // Enabling JIT where a security policy forbids it is refused, and allowed once it is lifted.
    let a =
        s.json(Method::PUT, &s.policy_url("locked", "westeurope", "default"), &policy(&vm_id("locked", "vm"))).await;
    assert_eq!((a.status, a.code()), (StatusCode::CONFLICT, "JitDisabledBySecurityPolicy"), "{a:?}");
    let on = json!({"scope": format!("/subscriptions/{SUB}/resourceGroups/locked"), "jitEnabled": true});
    assert_eq!(s.json(Method::PUT, &s.url("/api/v1/securityPolicies"), &on).await.status, StatusCode::OK);
    assert_eq!(
        s.json(Method::PUT, &s.policy_url("locked", "westeurope", "default"), &policy(&vm_id("locked", "vm")))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(s.send(Method::GET, &s.url("/api/v1/vms?view=everything"), None).await.status, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_open_nothing_until_another_principal_approves() {
    let s = TestServer::start(BIN, &[]);
    let vm = s.register_vm("rg1", "vm", "Linux").await;
    let rule = json!({"properties": {"virtualMachines": [{"id": vm, "ports": [
        {"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "*", "maxRequestAccessDuration": "PT3H", "requireApproval": true, "approvalTimeout": "PT1S"},
        {"number": 3389, "protocol": "TCP", "allowedSourceAddressPrefix": "*", "maxRequestAccessDuration": "PT3H"}]}]}});
    let a = s.json(Method::PUT, &s.policy_url("rg1", "westeurope", "default"), &rule).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body["properties"]["virtualMachines"][0]["ports"][0]["requireApproval"], true);
    // The requester (alice) and an approver (carol, Security Admin).
    let sub = format!("/subscriptions/{SUB}");
    let alice = s.principal_with_role("alice", "JIT Network Access Requester", &sub).await;
    let carol = s.principal_with_role("carol", "Security Admin", &sub).await;
    let ask = |justification: Option<&str>| {
        let mut b = json!({"virtualMachines": [{"id": vm, "ports": [{"number": 22, "duration": "PT30M", "allowedSourceAddressPrefix": "203.0.113.5"}]}]});
        if let Some(j) = justification {
            b["justification"] = json!(j);
        }
        b
    };
    let a = as_user(&s, &alice, Method::POST, &s.initiate_url("rg1", "westeurope", "default"), Some(&ask(None))).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "a justification is required: {a:?}");
    let pending = as_user(
        &s,
        &alice,
        Method::POST,
        &s.initiate_url("rg1", "westeurope", "default"),
        Some(&ask(Some("patch night"))),
    )
    .await;
    assert_eq!(pending.status, StatusCode::ACCEPTED, "{pending:?}");
    assert_eq!(pending.body["virtualMachines"][0]["ports"][0]["status"], "Pending");
    assert_eq!(pending.body["virtualMachines"][0]["ports"][0]["statusReason"], "ApprovalRequired");
    let id = pending.body["id"].as_i64().expect("id");
    // Nobody approves their own request.
    let a = as_user(&s, &alice, Method::POST, &s.url(&format!("/api/v1/requests/{id}/approve")), None).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{a:?}");
    // Carol approves: the window starts now and lasts what was asked.
    let before = time::OffsetDateTime::now_utc();
    let approved = as_user(
        &s,
        &carol,
        Method::POST,
        &s.url(&format!("/api/v1/requests/{id}/approve")),
        Some(&json!({"reason": "ok"})),
    )
    .await;
    assert_eq!(approved.status, StatusCode::OK, "{approved:?}");
    let port = &approved.body["virtualMachines"][0]["ports"][0];
    assert_eq!((port["status"].as_str(), port["statusReason"].as_str()), (Some("Initiated"), Some("Approved")));
    let end = time::OffsetDateTime::parse(
        port["endTimeUtc"].as_str().unwrap_or(""),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("end");
    let start = time::OffsetDateTime::parse(
        approved.body["startTimeUtc"].as_str().unwrap_or(""),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("start");
    let after = time::OffsetDateTime::now_utc();
    // The request was made before `before`: a window counted from the request would end before
    // `before` + 30 min.
    assert!(start < before, "the request's time {start} is before the approval {before}");
    assert!(
        end >= before + time::Duration::minutes(30) && end <= after + time::Duration::minutes(30),
        "the window starts at approval ({before} … {after}): {start} → {end}"
    );
    let again = as_user(&s, &carol, Method::POST, &s.url(&format!("/api/v1/requests/{id}/approve")), None).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "already decided");

    // Denied: stays closed. Unanswered: expires unopened.
    let second =
        as_user(&s, &alice, Method::POST, &s.initiate_url("rg1", "westeurope", "default"), Some(&ask(Some("again"))))
            .await;
    let id2 = second.body["id"].as_i64().expect("id");
    let denied = as_user(
        &s,
        &carol,
        Method::POST,
        &s.url(&format!("/api/v1/requests/{id2}/deny")),
        Some(&json!({"reason": "not tonight"})),
    )
    .await;
    assert_eq!(denied.body["virtualMachines"][0]["ports"][0]["statusReason"], "Denied");
    let third =
        as_user(&s, &alice, Method::POST, &s.initiate_url("rg1", "westeurope", "default"), Some(&ask(Some("later"))))
            .await;
    let id3 = third.body["id"].as_i64().expect("id");
    let mut reason = String::new();
    for _ in 0..30 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let r = s.send(Method::GET, &s.url(&format!("/api/v1/requests/{id3}")), None).await;
        reason = r.body["virtualMachines"][0]["ports"][0]["statusReason"].as_str().unwrap_or("").into();
        if reason == "ApprovalExpired" {
            break;
        }
    }
    assert_eq!(reason, "ApprovalExpired");
    let late = as_user(&s, &carol, Method::POST, &s.url(&format!("/api/v1/requests/{id3}/approve")), None).await;
    assert_eq!(late.status, StatusCode::CONFLICT, "too late to approve");
    // Ports without the requirement open at once, as before.
    let direct = as_user(&s, &alice, Method::POST, &s.initiate_url("rg1", "westeurope", "default"), Some(&json!({"virtualMachines": [{"id": vm, "ports": [{"number": 3389, "duration": "PT5M", "allowedSourceAddressPrefix": "*"}]}]}))).await;
    assert_eq!(direct.body["virtualMachines"][0]["ports"][0]["status"], "Initiated");
    // Every step is in the audit log.
    let records = all_records(&s, "&caller=carol").await;
    let decisions: Vec<&str> = records.iter().filter_map(|r| r["properties"]["decision"].as_str()).collect();
    assert_eq!(decisions, ["Approved", "Denied"]);
    assert_eq!(
        all_records(&s, "&caller=alice&status=Failed").await.len(),
        2,
        "the missing justification and the self-approval"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_reach_admins_and_requesters_and_a_hanging_receiver_delays_nothing() {
    // The receivers are plain http on loopback, which the server refuses unless told otherwise.
    let s = TestServer::start(BIN, &LOOPBACK_RECEIVERS);
    let vm = s.register_vm("rg1", "vm", "Linux").await;
    s.json(Method::PUT, &s.policy_url("rg1", "westeurope", "default"), &policy(&vm)).await;
    let alice = s.principal_with_role("alice", "JIT Network Access Requester", &format!("/subscriptions/{SUB}")).await;

    let (admin_url, admin_seen) = receiver("admin-secret-0123456789");
    let (own_url, own_seen) = receiver("alice-secret-0123456789");
    let hang = hanging_receiver();
    let hook = async |body: Value| create_webhook(&s, &s.server.token, body).await;
    let admin = hook(json!({"subscription": SUB, "url": admin_url, "secret": "admin-secret-0123456789"})).await;
    assert_eq!(admin.status, StatusCode::CREATED, "{admin:?}");
    assert_eq!(admin.body["secret"], "admin-secret-0123456789", "the secret is shown on creation");
    let stuck = hook(json!({"subscription": SUB, "url": hang})).await;
    assert!(stuck.body["secret"].as_str().unwrap_or("").starts_with("whsec_"), "a secret is made when none is given");
    // The requester subscribes to its own requests; it may not subscribe to everyone's.
    let own = create_webhook(&s, &alice, json!({"principal": "alice", "url": own_url, "secret": "alice-secret-0123456789", "events": ["opened", "revoked"]})).await;
    assert_eq!(own.status, StatusCode::CREATED, "{own:?}");
    let theirs = create_webhook(&s, &alice, json!({"subscription": SUB, "url": own_url})).await;
    assert_eq!(theirs.status, StatusCode::FORBIDDEN);
    assert_eq!(hook(json!({"subscription": SUB, "url": "ftp://x"})).await.status, StatusCode::BAD_REQUEST);

    let started = std::time::Instant::now();
    let granted = as_user(
        &s,
        &alice,
        Method::POST,
        &s.initiate_url("rg1", "westeurope", "default"),
        Some(&initiate(&vm, "203.0.113.4")),
    )
    .await;
    assert_eq!(granted.status, StatusCode::ACCEPTED);
    assert!(started.elapsed() < std::time::Duration::from_secs(1), "a hanging receiver never delays a grant");
    let id = granted.body["id"].as_i64().expect("id");
    assert_eq!(
        as_user(&s, &alice, Method::POST, &s.url(&format!("/api/v1/requests/{id}/revoke")), None).await.status,
        StatusCode::OK
    );

    let limit = std::time::Duration::from_millis(2500);
    eventually(limit, async || events(&admin_seen).len() >= 3 && events(&own_seen).len() >= 2).await;
    let mut admin_events = events(&admin_seen);
    admin_events.sort();
    assert_eq!(admin_events, ["opened", "requested", "revoked"], "administrators hear every event");
    let mut own_events = events(&own_seen);
    own_events.sort();
    assert_eq!(own_events, ["opened", "revoked"], "the requester hears the events it asked for");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    for got in admin_seen.lock().expect("lock").iter().chain(own_seen.lock().expect("lock").iter()) {
        assert!(got.valid, "{}: the HMAC-SHA256 signature verifies", got.event);
        assert!((now - got.timestamp).abs() < 60, "{}: a fresh timestamp", got.event);
        assert_eq!(got.body["requestId"], id);
        assert_eq!(got.body["requestor"], "alice");
    }
    // A grant about to end is announced once.
    let short = as_user(&s, &alice, Method::POST, &s.initiate_url("rg1", "westeurope", "default"), Some(&json!({"virtualMachines": [{"id": vm, "ports": [{"number": 22, "duration": "PT2M", "allowedSourceAddressPrefix": "203.0.113.6"}]}]}))).await;
    assert_eq!(short.status, StatusCode::ACCEPTED);
    eventually(limit, async || events(&admin_seen).iter().any(|e| e == "expiringSoon")).await;
    assert_eq!(events(&admin_seen).iter().filter(|e| *e == "expiringSoon").count(), 1, "{:?}", events(&admin_seen));
    // Delivery state is visible: delivered for the good receiver, still trying for the stuck one.
    let delivered = s
        .send(
            Method::GET,
            &s.url(&format!("/api/v1/webhooks/{}/deliveries", admin.body["id"].as_str().unwrap_or(""))),
            None,
        )
        .await;
    assert!(
        delivered.body["value"].as_array().into_iter().flatten().all(|d| d["state"] == "Delivered"),
        "{delivered:?}"
    );
    let waiting = s
        .send(
            Method::GET,
            &s.url(&format!("/api/v1/webhooks/{}/deliveries", stuck.body["id"].as_str().unwrap_or(""))),
            None,
        )
        .await;
    let states: Vec<&str> =
        waiting.body["value"].as_array().into_iter().flatten().filter_map(|d| d["state"].as_str()).collect();
    assert_eq!(states.len(), 6, "requested, opened, revoked; requested, opened, expiringSoon");
    assert!(states.iter().all(|st| *st == "Pending"), "{states:?}");
    let listed = as_user(&s, &alice, Method::GET, &s.url("/api/v1/webhooks"), None).await;
    assert_eq!(listed.body["value"].as_array().map(Vec::len), Some(1), "a requester sees its own webhook only");
    assert!(listed.body.to_string().find("alice-secret").is_none(), "no secrets in lists");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_requests_open_at_their_start_and_live_grants_extend_within_the_maximum() {
    let s = TestServer::start(BIN, &[]);
    // A gateway agent (joined through the API) to see what enforcement would get.
    let credential = join_gateway(&s, "gw1", json!({"addresses": []})).await;
    let vm = vm_id("rg1", "vm");
    s.json(
        Method::PUT,
        &s.url("/api/v1/vms"),
        &json!({"id": vm, "osType": "Linux", "location": "westeurope", "address": "10.1.0.1", "gateway": "gw1"}),
    )
    .await;
    let rule = json!({"properties": {"virtualMachines": [{"id": vm, "ports": [
        {"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "*", "maxRequestAccessDuration": "PT3H"},
        {"number": 3389, "protocol": "TCP", "allowedSourceAddressPrefix": "*", "maxRequestAccessDuration": "PT3H", "requireApproval": true}]}]}});
    assert_eq!(s.json(Method::PUT, &s.policy_url("rg1", "westeurope", "default"), &rule).await.status, StatusCode::OK);
    let agent_grants = || {
        let (s, credential) = (&s, credential.clone());
        async move { state(s, &credential).await.body["grants"].as_array().map(Vec::len).unwrap_or(0) }
    };

    // Scheduled: nothing opens before the start; the window counts from it.
    let start = time::OffsetDateTime::now_utc() + time::Duration::milliseconds(1500);
    let start_text = start.format(&time::format_description::well_known::Rfc3339).expect("fmt");
    let body = json!({"startTimeUtc": start_text, "virtualMachines": [{"id": vm, "ports": [{"number": 22, "duration": "PT3H", "allowedSourceAddressPrefix": "203.0.113.8"}]}]});
    let a = s.json(Method::POST, &s.initiate_url("rg1", "westeurope", "default"), &body).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{a:?}");
    assert_eq!(a.body["virtualMachines"][0]["ports"][0]["status"], "Scheduled");
    let end = time::OffsetDateTime::parse(
        a.body["virtualMachines"][0]["ports"][0]["endTimeUtc"].as_str().unwrap_or(""),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("end");
    assert!(
        (end - start - time::Duration::hours(3)).abs() < time::Duration::milliseconds(1),
        "the full 3 h from the start"
    );
    let id = a.body["id"].as_i64().expect("id");
    assert_eq!(agent_grants().await, 0, "a scheduled grant opens nothing yet");
    let mut status = String::new();
    for _ in 0..40 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        status = s.send(Method::GET, &s.url(&format!("/api/v1/requests/{id}")), None).await.body["virtualMachines"][0]
            ["ports"][0]["status"]
            .as_str()
            .unwrap_or("")
            .into();
        if status == "Initiated" {
            break;
        }
    }
    assert_eq!(status, "Initiated", "opened at its start");
    assert_eq!(agent_grants().await, 1, "and enforcement points get it");

    // Extending: later, within the maximum from now; never past it; approval ports ask again.
    let short = s.json(Method::POST, &s.initiate_url("rg1", "westeurope", "default"), &json!({"virtualMachines": [{"id": vm, "ports": [{"number": 22, "duration": "PT2H", "allowedSourceAddressPrefix": "203.0.113.9"}]}]})).await;
    let id = short.body["id"].as_i64().expect("id");
    let a = s.json(Method::POST, &s.url(&format!("/api/v1/requests/{id}/extend")), &json!({"duration": "PT1H"})).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "earlier than the current end: {a:?}");
    let now = time::OffsetDateTime::now_utc();
    let a = s.json(Method::POST, &s.url(&format!("/api/v1/requests/{id}/extend")), &json!({"endTimeUtc": (now + time::Duration::minutes(175)).format(&time::format_description::well_known::Rfc3339).expect("fmt")})).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let a = s.json(Method::POST, &s.url(&format!("/api/v1/requests/{id}/extend")), &json!({"duration": "PT4H"})).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "beyond the maximum: {a:?}");
    let appr = s.principal_with_role("approver", "Security Admin", "/").await;
    let p = s.json(Method::POST, &s.initiate_url("rg1", "westeurope", "default"), &json!({"justification": "x", "virtualMachines": [{"id": vm, "ports": [{"number": 3389, "duration": "PT10M", "allowedSourceAddressPrefix": "*"}]}]})).await;
    let pid = p.body["id"].as_i64().expect("id");
    assert_eq!(
        as_user(&s, &appr, Method::POST, &s.url(&format!("/api/v1/requests/{pid}/approve")), None).await.status,
        StatusCode::OK
    );
    // On a port that needs approval, an extension waits for an approver other than the one who
    // asked; until then, and when denied, the grant keeps its end.
    let end_of = |a: &Answer| a.body["virtualMachines"][0]["ports"][0]["endTimeUtc"].as_str().unwrap_or("").to_owned();
    let request_url = s.url(&format!("/api/v1/requests/{pid}"));
    let before = end_of(&s.send(Method::GET, &request_url, None).await);
    let a = s.json(Method::POST, &s.url(&format!("/api/v1/requests/{pid}/extend")), &json!({"duration": "PT1H"})).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let asked = a.body["pendingExtensionEndTimeUtc"].as_str().expect("the extension is pending").to_owned();
    assert_eq!(end_of(&a), before, "a pending extension moves nothing");
    let own = s.json(Method::POST, &s.url(&format!("/api/v1/requests/{pid}/approve")), &json!({})).await;
    assert_eq!((own.status, own.code()), (StatusCode::FORBIDDEN, "SelfApprovalNotAllowed"), "{own:?}");
    let ok = as_user(&s, &appr, Method::POST, &s.url(&format!("/api/v1/requests/{pid}/approve")), None).await;
    assert_eq!(ok.status, StatusCode::OK, "{ok:?}");
    assert_eq!(end_of(&ok), asked, "approved: the grant ends at the asked end");
    assert!(ok.body.get("pendingExtensionEndTimeUtc").is_none(), "{ok:?}");
    let a =
        s.json(Method::POST, &s.url(&format!("/api/v1/requests/{pid}/extend")), &json!({"duration": "PT90M"})).await;
    assert!(a.body["pendingExtensionEndTimeUtc"].is_string(), "{a:?}");
    let no = as_user(&s, &appr, Method::POST, &s.url(&format!("/api/v1/requests/{pid}/deny")), None).await;
    assert_eq!(no.status, StatusCode::OK, "{no:?}");
    assert_eq!(end_of(&no), asked, "denied: the grant keeps its end");
    assert!(no.body.get("pendingExtensionEndTimeUtc").is_none(), "{no:?}");
    let again = as_user(&s, &appr, Method::POST, &s.url(&format!("/api/v1/requests/{pid}/deny")), None).await;
    assert_eq!((again.status, again.code()), (StatusCode::CONFLICT, "RequestNotPending"), "{again:?}");
    let extends =
        s.audit("operation=Microsoft.Security/locations/jitNetworkAccessPolicies/requests/extend/action").await;
    let decisions: Vec<&str> = extends.iter().filter_map(|r| r["properties"]["decision"].as_str()).collect();
    assert_eq!(decisions, ["Pending", "Pending"], "both asks are audited as pending");
}
