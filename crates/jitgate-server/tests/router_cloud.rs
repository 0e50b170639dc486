//! The cloud connector's calls through the router, without a socket: `PUT /agent/v1/inventory`
//! and `POST /agent/v1/enforcement`, their refusals, the state a connector is given, the
//! inventory views of its VMs and the rule limit of a VM's security group.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may panic on a failed expectation.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use serde_json::{json, Value};
use time::OffsetDateTime;
use tower::ServiceExt;

use jitgate_core::audit::{ops, AuditStatus};
use jitgate_core::cloud;
use jitgate_server::tls::PeerAddr;
use jitgate_server::{auth, App, Clock, ServerConfig};
use jitgate_store::prelude::*;
use jitgate_store_sqlite::SqliteStore;

const SUB: &str = "20ff7fc3-e762-44dd-bd96-b71116dcdc23";
const POLICY: &str = "/subscriptions/20ff7fc3-e762-44dd-bd96-b71116dcdc23/resourceGroups/aws-prod/providers/\
                      Microsoft.Security/locations/eastus/jitNetworkAccessPolicies/default";

struct FixedClock(OffsetDateTime);

impl Clock for FixedClock {
    fn now(&self) -> OffsetDateTime {
        self.0
    }
}

struct Harness {
    _dir: tempfile::TempDir,
    store: Arc<SqliteStore>,
    router: Router,
    token: String,
}

struct Answer {
    status: StatusCode,
    body: Value,
}

impl Answer {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_default()
    }

    fn message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or_default()
    }
}

fn vm_id(name: &str) -> String {
    format!("/subscriptions/{SUB}/resourceGroups/aws-prod/providers/Microsoft.Compute/virtualMachines/{name}")
}

fn instance(name: &str, address: &str) -> Value {
    json!({"name": name, "osType": "Linux", "address": address,
           "cloud": {"provider": "aws", "instanceId": name, "vpcId": "vpc-1", "securityGroups": ["sg-app"]}})
}

async fn harness() -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = jitgate_store::secrets::Keyring::generate().expect("keys");
    let store = Arc::new(SqliteStore::open(&dir.path().join("db"), keys).expect("store"));
    let now = OffsetDateTime::from_unix_timestamp(1_900_000_000).expect("time");
    let token = auth::new_token();
    let audit = auth::bootstrap_event("owner", now);
    assert!(store.bootstrap("owner", &auth::hash_token(&token), None, audit).await.expect("bootstrap"));
    let app = App::new(store.clone(), Arc::new(FixedClock(now)), ServerConfig::default());
    Harness { _dir: dir, store, router: jitgate_server::router(app), token }
}

impl Harness {
    async fn send(&self, method: Method, uri: &str, token: Option<&str>, body: impl Into<Body>) -> Answer {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let mut req = req.header(header::CONTENT_TYPE, "application/json").body(body.into()).expect("request");
        req.extensions_mut().insert(ConnectInfo(PeerAddr(SocketAddr::from(([192, 0, 2, 7], 40000)))));
        let resp = self.router.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 24).await.expect("body");
        let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).expect("JSON") };
        Answer { status, body }
    }

    async fn owner(&self, method: Method, uri: &str, body: impl Into<Body>) -> Answer {
        self.send(method, uri, Some(&self.token.clone()), body).await
    }

    /// An agent joined in `mode` with `name`: its credential.
    async fn join(&self, mode: &str, name: &str) -> String {
        let t = json!({"subscription": SUB, "resourceGroup": "aws-prod", "location": "eastus", "mode": mode});
        let t = self.owner(Method::POST, "/api/v1/agentTokens", t.to_string()).await;
        assert_eq!(t.status, StatusCode::CREATED, "{:?}", t.body);
        let join = json!({"joinToken": t.body["token"], "name": name, "mode": mode, "osType": "Linux",
                          "hostname": name, "addresses": ["10.0.0.5"]});
        let j = self.send(Method::POST, "/agent/v1/join", None, join.to_string()).await;
        assert_eq!(j.status, StatusCode::CREATED, "{:?}", j.body);
        j.body["credential"].as_str().expect("credential").to_owned()
    }

    async fn inventory(&self, credential: &str, vms: Vec<Value>) -> Answer {
        self.send(Method::PUT, "/agent/v1/inventory", Some(credential), json!({ "vms": vms }).to_string()).await
    }

    async fn records(&self, operation: &str, status: AuditStatus) -> Vec<jitgate_store::AuditRecord> {
        let all = self.store.audit_records(0, 100_000).await.expect("audit");
        all.into_iter().filter(|r| r.event.operation == operation && r.event.status == status).collect()
    }

    async fn view(&self, view: &str) -> Vec<Value> {
        let a = self.owner(Method::GET, &format!("/api/v1/vms?view={view}"), Body::empty()).await;
        assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
        a.body["value"].as_array().cloned().unwrap_or_default()
    }
}

#[tokio::test]
async fn only_a_cloud_connector_reports_and_every_refusal_changes_nothing() {
    let h = harness().await;
    let host = h.join("host", "web1").await;
    let a = h.inventory(&host, vec![instance("i-1", "10.9.0.1")]).await;
    assert_eq!((a.status, a.code()), (StatusCode::CONFLICT, cloud::NOT_A_CLOUD_CONNECTOR), "{:?}", a.body);
    let a = h.send(Method::POST, "/agent/v1/enforcement", Some(&host), "{}").await;
    assert_eq!((a.status, a.code()), (StatusCode::CONFLICT, cloud::NOT_A_CLOUD_CONNECTOR), "{:?}", a.body);
    assert_eq!(h.records(ops::AGENT_INVENTORY, AuditStatus::Failed).await.len(), 1, "refusals are audited");

    let connector = h.join("cloud", "aws-prod").await;
    let revision = h.store.revision().await.expect("revision");
    // Too big a body: 413, read no further.
    let huge = vec![b' '; cloud::limits::INVENTORY_BODY_BYTES + 1];
    let a = h.send(Method::PUT, "/agent/v1/inventory", Some(&connector), huge).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE, "{:?}", a.body);
    // Too many VMs: 400.
    let many: Vec<Value> =
        (0..=cloud::limits::VMS).map(|i| json!({"name": format!("i-{i}"), "osType": "Linux"})).collect();
    let a = h.inventory(&connector, many).await;
    assert_eq!((a.status, a.code()), (StatusCode::BAD_REQUEST, cloud::INVALID_INVENTORY), "{:?}", a.body);
    assert!(a.message().contains("at most 10000"), "{}", a.message());
    // A bad entry is named.
    let mut bad = instance("i-2", "10.9.0.2");
    bad["osType"] = json!("Plan9");
    let a = h.inventory(&connector, vec![instance("i-1", "10.9.0.1"), bad]).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{:?}", a.body);
    assert_eq!(a.body["error"]["target"], json!("vms[1].osType"), "{:?}", a.body);
    let a = h.inventory(&connector, vec![instance("i 1", "10.9.0.1")]).await;
    assert_eq!(a.body["error"]["target"], json!("vms[0].name"), "{:?}", a.body);
    // A VM a host agent enforces: the whole report is refused, naming it.
    let a = h.inventory(&connector, vec![instance("i-1", "10.9.0.1"), instance("web1", "10.0.0.5")]).await;
    assert_eq!((a.status, a.code()), (StatusCode::CONFLICT, cloud::VM_ENFORCED_ELSEWHERE), "{:?}", a.body);
    assert!(a.message().contains("web1") && a.message().contains("host agent"), "{}", a.message());
    assert_eq!(h.store.revision().await.expect("revision"), revision, "nothing changed");
    let vms = h.store.list_vms().await.expect("vms");
    assert!(vms.iter().all(|v| v.cloud.is_none()), "no VM was registered: {vms:?}");

    // A removal or failure of a VM that is not the connector's: 400, nothing written.
    let removal = json!({"requestId": 1, "vmId": vm_id("web1"), "protocol": "TCP", "port": 22,
                         "source": "203.0.113.7", "reason": "expired", "removedAt": "2030-03-17T17:46:40Z"});
    let a = h
        .send(Method::POST, "/agent/v1/enforcement", Some(&connector), json!({"removals": [removal]}).to_string())
        .await;
    assert_eq!((a.status, a.code()), (StatusCode::BAD_REQUEST, cloud::INVALID_ENFORCEMENT_REPORT), "{:?}", a.body);
    assert_eq!(a.body["error"]["target"], json!("removals[0].vmId"), "{:?}", a.body);
    assert!(h.records(ops::GRANT_RULE_REMOVE, AuditStatus::Succeeded).await.is_empty());
    let many: Vec<Value> = (0..=cloud::limits::REMOVALS).map(|_| removal.clone()).collect();
    let a =
        h.send(Method::POST, "/agent/v1/enforcement", Some(&connector), json!({"removals": many}).to_string()).await;
    assert_eq!(a.body["error"]["target"], json!("removals"), "{:?}", a.body);
}

#[tokio::test]
async fn a_connectors_vms_are_registered_enforced_reported_and_bounded() {
    let h = harness().await;
    let connector = h.join("cloud", "aws-prod").await;
    let mut gone = instance("i-2", "10.9.0.2");
    gone["publicAddress"] = json!("203.0.113.50");
    let a = h.inventory(&connector, vec![instance("i-1", "10.9.0.1"), gone]).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!((a.body["registered"].clone(), a.body["unsupported"].clone()), (json!(2), json!(0)));
    assert_eq!(a.body["revision"].as_u64(), Some(h.store.revision().await.expect("revision")));
    let vm = h.owner(Method::GET, &format!("/api/v1/vms?id={}", vm_id("i-2")), Body::empty()).await;
    assert_eq!(vm.status, StatusCode::OK, "{:?}", vm.body);
    assert_eq!(vm.body["enforcement"]["mode"], json!("cloud"), "{:?}", vm.body);
    assert_eq!(vm.body["cloud"]["vpcId"], json!("vpc-1"), "{:?}", vm.body);
    assert_eq!(vm.body["publicAddress"], json!("203.0.113.50"), "{:?}", vm.body);

    // A mapped port is refused on a cloud VM; the policy without one is stored.
    let port =
        json!({"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "*", "maxRequestAccessDuration": "PT3H"});
    let mut mapped = port.clone();
    mapped["mappedPort"] = json!(50022);
    let policy = |p: &Value| {
        json!({"kind": "Basic", "properties": {"virtualMachines": [
            {"id": vm_id("i-1"), "ports": [p]}, {"id": vm_id("i-2"), "ports": [port]}]}})
        .to_string()
    };
    let url = format!("{POLICY}?api-version=2020-01-01");
    let a = h.owner(Method::PUT, &url, policy(&mapped)).await;
    assert_eq!((a.status, a.code()), (StatusCode::BAD_REQUEST, cloud::NO_DNAT_IN_CLOUD), "{:?}", a.body);
    let a = h.owner(Method::PUT, &url, policy(&port)).await;
    assert!(a.status.is_success(), "{:?}", a.body);

    // Sixty distinct rules fit in i-1's security group; the sixty-first does not.
    let initiate = |sources: Vec<String>| {
        json!({"virtualMachines": [{"id": vm_id("i-1"), "ports": [
            {"number": 22, "duration": "PT1H", "allowedSourceAddressPrefixes": sources}]}]})
        .to_string()
    };
    let sixty: Vec<String> = (1..=60).map(|i| format!("198.51.100.{i}")).collect();
    let url = format!("{POLICY}/initiate?api-version=2020-01-01");
    let a = h.owner(Method::POST, &url, initiate(sixty.clone())).await;
    assert!(a.status.is_success(), "{:?}", a.body);
    let a = h.owner(Method::POST, &url, initiate(vec!["198.51.100.61".into()])).await;
    assert_eq!((a.status, a.code()), (StatusCode::CONFLICT, cloud::RULE_LIMIT_REACHED), "{:?}", a.body);
    assert!(a.message().contains("60 inbound rules; 60 are in use and this request needs 1"), "{}", a.message());
    let a = h.owner(Method::POST, &url, initiate(sixty[..2].to_vec())).await;
    assert!(a.status.is_success(), "the same sources and port aggregate: {:?}", a.body);
    let request_id = a.body["id"].as_str().unwrap_or_default().rsplit('/').next().unwrap_or_default().to_owned();

    // The connector's state: both VMs' ports, the grants at i-1's private address.
    let s = h.send(Method::GET, "/agent/v1/state", Some(&connector), Body::empty()).await;
    assert_eq!(s.status, StatusCode::OK, "{:?}", s.body);
    assert_eq!(s.body["mode"], json!("cloud"));
    assert_eq!(s.body["ports"].as_array().map(Vec::len), Some(2), "{:?}", s.body);
    let grants = s.body["grants"].as_array().cloned().unwrap_or_default();
    assert_eq!(grants.len(), 2, "one grant per request: {grants:?}");
    assert!(grants.iter().all(|g| g["address"] == json!("10.9.0.1")), "{grants:?}");

    // A second inventory without i-2: Unsupported with the reason, never deleted, not enforced.
    let a = h.inventory(&connector, vec![instance("i-1", "10.9.0.1")]).await;
    assert_eq!(a.body["unsupported"], json!(1), "{:?}", a.body);
    let s = h.send(Method::GET, "/agent/v1/state", Some(&connector), Body::empty()).await;
    assert_eq!(s.body["ports"].as_array().map(Vec::len), Some(1), "{:?}", s.body);
    let configured = h.view("configured").await;
    let i2 = configured.iter().find(|v| v["name"] == json!("i-2")).expect("still configured");
    assert_eq!(i2["enforcementState"], json!("NotEnforced"), "{i2:?}");
    assert_eq!(i2["warning"], json!(format!("not enforced: {}", cloud::NOT_FOUND_REASON)), "{i2:?}");

    // A removal is audited; a failure shows Failed with the cloud's error.
    let removal = json!({"requestId": request_id.parse::<i64>().unwrap_or(1), "vmId": vm_id("i-1"), "protocol": "TCP",
                         "port": 22, "source": "198.51.100.1", "reason": "revoked", "removedAt": "2030-03-17T17:46:40Z"});
    let failure = json!({"vmId": vm_id("i-1"), "error": "UnauthorizedOperation: not allowed to modify sg-app"});
    let report = json!({"removals": [removal], "failures": [failure]}).to_string();
    let a = h.send(Method::POST, "/agent/v1/enforcement", Some(&connector), report).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{:?}", a.body);
    let removed = h.records(ops::GRANT_RULE_REMOVE, AuditStatus::Succeeded).await;
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0].event.resource_id, vm_id("i-1"));
    assert_eq!(removed[0].event.properties.get("reason").map(String::as_str), Some("revoked"));
    let configured = h.view("configured").await;
    let i1 = configured.iter().find(|v| v["name"] == json!("i-1")).expect("configured");
    assert_eq!(i1["enforcementState"], json!("Failed"), "{i1:?}");
    assert_eq!(i1["warning"], json!("UnauthorizedOperation: not allowed to modify sg-app"), "{i1:?}");
    // An initiate answer marks the failing VM too.
    let a = h.owner(Method::POST, &url, initiate(sixty[..1].to_vec())).await;
    assert!(a.status.is_success(), "{:?}", a.body);
    assert_eq!(a.body["virtualMachines"][0]["enforcement"], json!("Failed"), "{:?}", a.body);
    // An empty list clears it.
    let a = h.send(Method::POST, "/agent/v1/enforcement", Some(&connector), "{}").await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{:?}", a.body);
    let configured = h.view("configured").await;
    let i1 = configured.iter().find(|v| v["name"] == json!("i-1")).expect("configured");
    assert_ne!(i1["enforcementState"], json!("Failed"), "{i1:?}");
}

#[tokio::test]
async fn the_unsupported_view_lists_a_connectors_unsupported_vms_with_their_reason() {
    let h = harness().await;
    let connector = h.join("cloud", "aws-prod").await;
    let mut no_group = instance("i-3", "10.9.0.3");
    no_group["unsupportedReason"] = json!("no security group the connector manages");
    let a = h.inventory(&connector, vec![instance("i-1", "10.9.0.1"), no_group]).await;
    assert_eq!(a.body["unsupported"], json!(1), "{:?}", a.body);
    let unsupported = h.view("unsupported").await;
    assert_eq!(unsupported.len(), 1, "{unsupported:?}");
    assert_eq!(unsupported[0]["unsupportedReason"], json!("no security group the connector manages"));
    let not_configured = h.view("notConfigured").await;
    assert!(not_configured.iter().any(|v| v["name"] == json!("i-1")), "{not_configured:?}");
}

#[tokio::test]
async fn a_cloud_join_token_needs_the_right_to_write_vms_in_the_whole_subscription() {
    let h = harness().await;
    let a = h.owner(Method::POST, "/api/v1/principals", json!({"name": "rg-admin", "type": "User"}).to_string()).await;
    assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
    let scope = format!("/subscriptions/{SUB}/resourceGroups/aws-prod");
    let assignment = json!({"principal": "rg-admin", "role": "Contributor", "scope": scope});
    let a = h.owner(Method::POST, "/api/v1/roleAssignments", assignment.to_string()).await;
    assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
    let a = h.owner(Method::POST, "/api/v1/principals/rg-admin/tokens", "{}").await;
    let token = a.body["token"].as_str().expect("token").to_owned();
    let body = |mode: &str| {
        json!({"subscription": SUB, "resourceGroup": "aws-prod", "location": "eastus", "mode": mode}).to_string()
    };
    let a = h.send(Method::POST, "/api/v1/agentTokens", Some(&token), body("host")).await;
    assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
    let a = h.send(Method::POST, "/api/v1/agentTokens", Some(&token), body("cloud")).await;
    assert_eq!((a.status, a.code()), (StatusCode::FORBIDDEN, "AuthorizationFailed"), "{:?}", a.body);
    assert!(a.message().contains(&format!("/subscriptions/{SUB}")), "{}", a.message());
}
