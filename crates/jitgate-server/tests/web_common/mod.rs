//! The harness of the portal tests: a router over a temporary store, an owner token, and
//! helpers that speak both the API (bearer) and the portal (cookie and forms).

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)] // Test helpers.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use serde_json::json;
use time::OffsetDateTime;
use tower::ServiceExt;

use jitgate_core::audit::{AuditEvent, AuditStatus};
use jitgate_server::tls::PeerAddr;
use jitgate_server::{auth, App, Clock, ServerConfig};
use jitgate_store::prelude::*;
use jitgate_store_sqlite::SqliteStore;

pub const SUB: &str = "00000000-0000-0000-0000-000000000001";

pub struct FixedClock(pub OffsetDateTime);

impl Clock for FixedClock {
    fn now(&self) -> OffsetDateTime {
        self.0
    }
}

pub struct Harness {
    _dir: tempfile::TempDir,
    pub store: Arc<SqliteStore>,
    pub app: App,
    pub router: Router,
    pub token: String,
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn location(&self) -> &str {
        self.headers.get(header::LOCATION).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    /// The value a `Set-Cookie` header gives cookie `name`.
    pub fn set_cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| v.strip_prefix(&format!("{name}=")).map(|r| r.split(';').next().unwrap_or("").to_owned()))
    }

    /// The whole `Set-Cookie` header of cookie `name`.
    pub fn set_cookie_header(&self, name: &str) -> Option<String> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with(&format!("{name}=")))
            .map(str::to_owned)
    }

    /// The value of the first hidden input named `name`.
    pub fn hidden(&self, name: &str) -> Option<String> {
        let marker = format!(r#"name="{name}" value=""#);
        let at = self.body.find(&marker)? + marker.len();
        Some(self.body[at..].split('"').next()?.to_owned())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

pub fn assert_csp(a: &Answer) {
    let csp = a.headers.get(header::CONTENT_SECURITY_POLICY).and_then(|v| v.to_str().ok()).unwrap_or("");
    assert!(csp.starts_with("default-src 'self'"), "CSP: {csp}");
    assert!(!csp.contains("unsafe-inline"), "CSP: {csp}");
    assert!(a.headers.contains_key(header::X_CONTENT_TYPE_OPTIONS));
    // `no-referrer` would make browsers send `Origin: null` with every form.
    let referrer = a.headers.get(header::REFERRER_POLICY).and_then(|v| v.to_str().ok()).unwrap_or("");
    assert_eq!(referrer, "same-origin");
}

impl Harness {
    pub async fn new() -> Harness {
        Harness::with_oidc(None).await
    }

    pub async fn with_oidc(oidc: Option<jitgate_server::oidc::Oidc>) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = jitgate_store::secrets::Keyring::generate().expect("keys");
        let store = Arc::new(SqliteStore::open(&dir.path().join("db"), keys).expect("store"));
        let now = OffsetDateTime::now_utc();
        let token = auth::new_token();
        let audit = auth::bootstrap_event("owner", now);
        assert!(store.bootstrap("owner", &auth::hash_token(&token), None, audit).await.expect("bootstrap"));
        let app =
            App::new(store.clone(), Arc::new(jitgate_server::SystemClock), ServerConfig::default()).with_oidc(oidc);
        Harness { _dir: dir, store, router: jitgate_server::router(app.clone()), app, token }
    }

    pub async fn send(&self, method: Method, uri: &str, headers: &[(&str, &str)], body: Option<&str>) -> Answer {
        let mut req = Request::builder().method(method).uri(uri).header(header::HOST, "portal.test");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let body = body.map(|b| Body::from(b.to_owned())).unwrap_or_else(Body::empty);
        let mut req = req.body(body).expect("request");
        req.extensions_mut().insert(ConnectInfo(PeerAddr(SocketAddr::from(([192, 0, 2, 7], 40000)))));
        let resp = self.router.clone().oneshot(req).await.expect("infallible");
        let (parts, body) = resp.into_parts();
        let bytes = axum::body::to_bytes(body, 16 << 20).await.expect("body");
        Answer { status: parts.status, headers: parts.headers, body: String::from_utf8_lossy(&bytes).into_owned() }
    }

    /// A portal request with the session cookie (and a form body).
    pub async fn page(&self, method: Method, uri: &str, cookie: Option<&str>, form: Option<&str>) -> Answer {
        let mut headers = vec![];
        if let Some(c) = cookie {
            headers.push(("cookie", c));
        }
        if form.is_some() {
            headers.push(("content-type", "application/x-www-form-urlencoded"));
        }
        self.send(method, uri, &headers, form).await
    }

    /// A form post with the session's CSRF token (taken from `from`, a page that has a form).
    pub async fn post(&self, cookie: &str, from: &str, uri: &str, fields: &[(&str, &str)]) -> Answer {
        let page = self.page(Method::GET, from, Some(cookie), None).await;
        let csrf = page.hidden("csrf").unwrap_or_else(|| panic!("no csrf on {from}: {}", page.body));
        let mut all = vec![("csrf", csrf.as_str())];
        all.extend_from_slice(fields);
        let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(all).finish();
        self.page(Method::POST, uri, Some(cookie), Some(&body)).await
    }

    /// Signs in with `token` through the form; returns the `Cookie` header and the `Set-Cookie`.
    pub async fn sign_in(&self, token: &str) -> (String, String) {
        let form = self.page(Method::GET, "/signin", None, None).await;
        let pre = form.set_cookie("__Host-jitgate_signin").expect("sign-in cookie");
        let csrf = form.hidden("csrf").expect("csrf");
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs([("csrf", csrf.as_str()), ("next", "/jit"), ("token", token)])
            .finish();
        let a = self.page(Method::POST, "/signin", Some(&format!("__Host-jitgate_signin={pre}")), Some(&body)).await;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "sign-in: {}", a.body);
        let id = a.set_cookie("__Host-jitgate_session").expect("session cookie");
        (format!("__Host-jitgate_session={id}"), a.set_cookie_header("__Host-jitgate_session").unwrap_or_default())
    }

    /// An API call as the owner.
    pub async fn api(&self, method: Method, uri: &str, body: &str) -> Answer {
        let auth = format!("Bearer {}", self.token);
        let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
        self.send(method, uri, &headers, if body.is_empty() { None } else { Some(body) }).await
    }

    /// A principal with `role` at `scope` and a token; returns (token id, token).
    pub async fn principal_with_role(&self, name: &str, role: &str, scope: &str) -> (i64, String) {
        let a = self.api(Method::POST, "/api/v1/principals", &json!({"name": name, "type": "User"}).to_string()).await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
        let a = self
            .api(
                Method::POST,
                "/api/v1/roleAssignments",
                &json!({"principal": name, "role": role, "scope": scope}).to_string(),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
        let a = self.api(Method::POST, &format!("/api/v1/principals/{name}/tokens"), "{}").await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
        let v = a.json();
        (v["id"].as_i64().expect("id"), v["token"].as_str().expect("token").to_owned())
    }

    /// A VM with a host agent (joined through the agent protocol); returns the agent's credential.
    pub async fn host_vm(&self, rg: &str, name: &str) -> String {
        let body = json!({"subscription": SUB, "resourceGroup": rg, "location": "westeurope", "mode": "host"});
        let t = self.api(Method::POST, "/api/v1/agentTokens", &body.to_string()).await;
        assert_eq!(t.status, StatusCode::CREATED, "{}", t.body);
        let token = t.json()["token"].as_str().expect("token").to_owned();
        let join = json!({"joinToken": token, "name": name, "mode": "host", "osType": "Linux", "hostname": name,
            "addresses": ["10.0.0.4"]});
        let a = self
            .send(Method::POST, "/agent/v1/join", &[("content-type", "application/json")], Some(&join.to_string()))
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
        a.json()["credential"].as_str().expect("credential").to_owned()
    }

    /// A VM registered with no enforcement point.
    pub async fn bare_vm(&self, rg: &str, name: &str) {
        let body = json!({"id": vm_id(rg, name), "osType": "Linux", "location": "westeurope"});
        let a = self.api(Method::PUT, "/api/v1/vms", &body.to_string()).await;
        assert!(a.status.is_success(), "{}", a.body);
    }

    /// The `default` policy of `rg` in westeurope with these VMs and ports, through the ARM API.
    pub async fn policy(&self, rg: &str, vms: &[&str], ports: &[u16]) {
        let vms: Vec<_> = vms
            .iter()
            .map(|v| {
                json!({"id": vm_id(rg, v), "ports": ports.iter().map(|p| json!({"number": p, "protocol": "*",
                "allowedSourceAddressPrefix": "*", "maxRequestAccessDuration": "PT3H"})).collect::<Vec<_>>()})
            })
            .collect();
        let body = json!({"kind": "Basic", "properties": {"virtualMachines": vms}});
        let a = self.api(Method::PUT, &format!("{}?api-version=2020-01-01", policy_id(rg)), &body.to_string()).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    }

    /// Whether a policy names the VM.
    pub async fn configured(&self, vm: &str) -> bool {
        let id = jitgate_core::VmId::parse(vm).expect("vm id");
        AgentStore::policy_of_vm(self.store.as_ref(), &id).await.expect("policy of vm").is_some()
    }

    /// Audit records of `operation` with `status`.
    pub async fn audit(&self, operation: &str, status: AuditStatus) -> Vec<AuditEvent> {
        let records = self.store.audit_records(0, 10_000).await.expect("audit");
        records.into_iter().map(|r| r.event).filter(|e| e.operation == operation && e.status == status).collect()
    }
}

pub fn vm_id(rg: &str, name: &str) -> String {
    format!("/subscriptions/{SUB}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{name}")
}

pub fn policy_id(rg: &str) -> String {
    format!("/subscriptions/{SUB}/resourceGroups/{rg}/providers/Microsoft.Security/locations/westeurope/jitNetworkAccessPolicies/default")
}

pub fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

impl Harness {
    /// The agent fetches its state (the server records the revision delivered) and reports it
    /// applied; returns the revision.
    pub async fn agent_applies(&self, credential: &str) -> u64 {
        let auth = format!("Bearer {credential}");
        let a = self.send(Method::GET, "/agent/v1/state?wait=0", &[("authorization", auth.as_str())], None).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        let revision = a.json()["revision"].as_u64().expect("revision");
        let body = json!({"revision": revision, "nftablesUsable": true}).to_string();
        let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
        let a = self.send(Method::POST, "/agent/v1/applied", &headers, Some(&body)).await;
        assert!(a.status.is_success(), "{}", a.body);
        revision
    }
}

impl Harness {
    /// A policy whose ports need an approver.
    pub async fn approval_policy(&self, rg: &str, vm: &str, port: u16) {
        let body = json!({"kind": "Basic", "properties": {"virtualMachines": [{"id": vm_id(rg, vm), "ports": [
            {"number": port, "protocol": "*", "allowedSourceAddressPrefix": "*", "maxRequestAccessDuration": "PT3H",
             "requireApproval": true}]}]}});
        let a = self.api(Method::PUT, &format!("{}?api-version=2020-01-01", policy_id(rg)), &body.to_string()).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    }

    /// Initiates with `token` for `port` of `vm` (one hour, from 192.0.2.7); returns the request id.
    pub async fn initiate_as(&self, token: &str, rg: &str, vm: &str, port: u16) -> i64 {
        let body = json!({"virtualMachines": [{"id": vm_id(rg, vm), "ports": [
            {"number": port, "duration": "PT1H", "allowedSourceAddressPrefix": "192.0.2.7"}]}], "justification": "test"});
        let auth = format!("Bearer {token}");
        let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
        let uri = format!("{}/initiate?api-version=2020-01-01", policy_id(rg));
        let a = self.send(Method::POST, &uri, &headers, Some(&body.to_string())).await;
        assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
        a.json()["id"].as_str().and_then(|id| id.rsplit('/').next()).and_then(|n| n.parse().ok()).unwrap_or(1)
    }

    /// The statuses of a request's grants, through the API.
    pub async fn grant_statuses(&self, id: i64) -> Vec<String> {
        let a = self.api(Method::GET, &format!("/api/v1/requests/{id}"), "").await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        let v = a.json();
        v["virtualMachines"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|vm| vm["ports"].as_array().cloned().unwrap_or_default())
            .map(|p| p["status"].as_str().unwrap_or("").to_owned())
            .collect()
    }
}
