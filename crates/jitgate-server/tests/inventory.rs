//! `GET /api/v1/vms` paged and filtered: walking every page through `nextLink` shows every VM
//! once, in key order, with the filters kept; bad `$top` and `$skipToken` are refused with
//! Azure's error body; a reader scoped to resource groups pages only their VMs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may panic on a failed expectation.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use serde_json::Value;
use time::{Duration, OffsetDateTime};
use tower::ServiceExt;

use jitgate_core::audit::{AuditEvent, AuditStatus};
use jitgate_core::enforcement::{AgentMode, JoiningAgent};
use jitgate_core::initiate::{InitiateDraft, InitiatePortDraft, InitiateVmDraft};
use jitgate_core::policy::{validate, PolicyDraft, VmDraft};
use jitgate_core::{OsType, PolicyRef, VmId};
use jitgate_server::tls::PeerAddr;
use jitgate_server::{auth, App, Clock, ServerConfig};
use jitgate_store::prelude::*;
use jitgate_store::{AgentJoin, InitiateCommand, JoinTokenSpec, NewToken, TokenOrigin, VmSpec};
use jitgate_store_sqlite::SqliteStore;

const SUB_A: &str = "a0000000-0000-4000-8000-00000000000a";
const SUB_B: &str = "b0000000-0000-4000-8000-00000000000b";
/// VMs per resource group.
const PER_GROUP: usize = 7;

fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_900_000_000).expect("time")
}

struct FixedClock;

impl Clock for FixedClock {
    fn now(&self) -> OffsetDateTime {
        now()
    }
}

fn audit(what: &str) -> AuditEvent {
    AuditEvent {
        time: now(),
        operation: what.into(),
        status: AuditStatus::Started,
        caller: "test".into(),
        caller_ip: None,
        resource_id: "/".into(),
        correlation_id: "test".into(),
        properties: Default::default(),
    }
}

/// One VM of the fixture and the view it is in.
#[derive(Debug, Clone)]
struct Fixture {
    id: String,
    key: String,
    sub: &'static str,
    group: String,
    location: &'static str,
    name: String,
    view: &'static str,
}

struct Harness {
    _dir: tempfile::TempDir,
    store: Arc<SqliteStore>,
    router: Router,
    token: String,
    vms: Vec<Fixture>,
}

fn groups() -> Vec<(&'static str, String)> {
    let mut out: Vec<(&'static str, String)> = (0..4).map(|g| (SUB_A, format!("rg{g}"))).collect();
    out.push((SUB_B, "Rg0".into()));
    out
}

async fn join_gateway(store: &SqliteStore, sub: &str, name: &str) {
    let token_hash = auth::hash_token(&format!("jgj_{name}"));
    let spec = JoinTokenSpec {
        subscription: sub.into(),
        resource_group: "gateways".into(),
        location: "westeurope".into(),
        mode: AgentMode::Gateway,
        expires: now() + Duration::hours(1),
        vm: None,
    };
    store.create_join_token(spec, &token_hash, audit("token")).await.expect("join token");
    let join = AgentJoin {
        token_hash,
        credential_hash: auth::hash_token(&format!("jga_{name}")),
        id: format!("agent-{name}"),
        agent: JoiningAgent {
            name: name.into(),
            mode: AgentMode::Gateway,
            os_type: OsType::Linux,
            addresses: vec!["10.0.0.1".parse().expect("ip")],
            public_address: None,
            hostname: name.into(),
            name_is_hostname: false,
        },
        now: now(),
    };
    store.join_agent(join, audit("join")).await.expect("join");
}

/// Five resource groups over two subscriptions, seven VMs in each behind their subscription's
/// gateway: vm0, vm3 and vm6 configured, vm5 classic (unsupported), the others not configured.
async fn harness() -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = jitgate_store::secrets::Keyring::generate().expect("keys");
    let store = Arc::new(SqliteStore::open(&dir.path().join("db"), keys).expect("store"));
    let token = auth::new_token();
    assert!(store.bootstrap("owner", &auth::hash_token(&token), None, audit("bootstrap")).await.expect("bootstrap"));
    join_gateway(&store, SUB_A, "gwa").await;
    join_gateway(&store, SUB_B, "gwb").await;
    let mut vms = Vec::new();
    for (g, (sub, group)) in groups().into_iter().enumerate() {
        let location = if g % 2 == 0 { "westeurope" } else { "eastus" };
        let mut configured = Vec::new();
        for i in 0..PER_GROUP {
            let name = format!("vm{i}");
            let id = VmId::parse(&format!(
                "/subscriptions/{sub}/resourceGroups/{group}/providers/Microsoft.Compute/virtualMachines/{name}"
            ))
            .expect("id");
            let spec = VmSpec {
                id: id.clone(),
                os_type: OsType::Linux,
                location: location.into(),
                address: Some(format!("10.1.{g}.{}", i + 1).parse().expect("ip")),
                gateway: Some(if sub == SUB_A { "gwa" } else { "gwb" }.into()),
                classic: i == 5,
            };
            store.put_vm(spec, audit("vm")).await.expect("vm");
            let view = match i {
                0 | 3 | 6 => "configured",
                5 => "unsupported",
                _ => "notConfigured",
            };
            if view == "configured" {
                configured.push(VmDraft { id: id.as_str().into(), ports: None, public_ip_address: None });
            }
            vms.push(Fixture {
                key: id.key(),
                id: id.as_str().into(),
                sub,
                group: group.clone(),
                location,
                name,
                view,
            });
        }
        let r = PolicyRef::new(sub, &group, location, "default").expect("ref");
        let policy = validate(r, PolicyDraft { kind: None, vms: configured }).expect("valid");
        store.put_policy(policy, audit("policy")).await.expect("policy");
    }
    vms.sort_by(|a, b| a.key.cmp(&b.key));
    let app = App::new(store.clone(), Arc::new(FixedClock), ServerConfig::default());
    Harness { _dir: dir, store, router: jitgate_server::router(app), token, vms }
}

struct Answer {
    status: StatusCode,
    body: Value,
}

impl Harness {
    async fn get_as(&self, token: &str, uri: &str) -> Answer {
        let mut req = Request::builder()
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::HOST, "jit.test")
            .body(Body::empty())
            .expect("request");
        req.extensions_mut().insert(ConnectInfo(PeerAddr(SocketAddr::from(([192, 0, 2, 7], 40000)))));
        let resp = self.router.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 24).await.expect("body");
        Answer { status, body: serde_json::from_slice(&bytes).expect("JSON") }
    }

    /// Every page from `first` on, through `nextLink`: the ids, and the size of each page.
    async fn walk_as(&self, token: &str, first: &str) -> (Vec<String>, Vec<usize>) {
        let (mut ids, mut sizes) = (Vec::new(), Vec::new());
        let mut next = Some(first.to_owned());
        while let Some(uri) = next.take() {
            let a = self.get_as(token, &uri).await;
            assert_eq!(a.status, StatusCode::OK, "{uri}: {}", a.body);
            let page = a.body["value"].as_array().expect("value");
            sizes.push(page.len());
            ids.extend(page.iter().map(|v| v["id"].as_str().expect("id").to_owned()));
            if let Some(link) = a.body.get("nextLink").and_then(Value::as_str) {
                let path = link
                    .strip_prefix("https://jit.test")
                    .or_else(|| link.strip_prefix("http://jit.test"))
                    .unwrap_or_else(|| panic!("{link} is not an absolute link to this server"));
                assert!(path.starts_with("/api/v1/vms?"), "{link}");
                next = Some(path.to_owned());
            }
            assert!(sizes.len() <= 100, "the walk ends");
        }
        (ids, sizes)
    }

    async fn walk(&self, first: &str) -> (Vec<String>, Vec<usize>) {
        self.walk_as(&self.token.clone(), first).await
    }

    fn ids(&self, keep: impl Fn(&Fixture) -> bool) -> Vec<String> {
        self.vms.iter().filter(|v| keep(v)).map(|v| v.id.clone()).collect()
    }

    /// A principal holding Reader at each scope, and its token.
    async fn reader(&self, name: &str, scopes: &[String]) -> String {
        self.store.create_principal(name, "User", audit("principal")).await.expect("principal");
        for scope in scopes {
            self.store.create_role_assignment(name, "Reader", scope, audit("assign")).await.expect("assignment");
        }
        let token = auth::new_token();
        let new = NewToken {
            principal: name.into(),
            token_hash: auth::hash_token(&token),
            expires: Some(now() + Duration::days(1)),
            origin: TokenOrigin::Server,
        };
        self.store.create_token(new, audit("token")).await.expect("token");
        token
    }
}

/// Page sizes of a walk of `total` items by `top`: full pages, then the rest.
fn full_pages(total: usize, top: usize) -> Vec<usize> {
    let mut out = vec![top; total / top];
    if !total.is_multiple_of(top) || total == 0 {
        out.push(total % top);
    }
    out
}

#[tokio::test]
async fn walking_the_pages_shows_every_vm_once_in_key_order() {
    let h = harness().await;
    let all = h.ids(|_| true);
    assert_eq!(all.len(), groups().len() * PER_GROUP);
    // Without $top: everything in one answer, without a nextLink (as before paging).
    let (ids, sizes) = h.walk("/api/v1/vms").await;
    assert_eq!((ids, sizes), (all.clone(), vec![all.len()]));
    for view in ["", "configured", "notConfigured", "unsupported"] {
        let expected = h.ids(|v| view.is_empty() || v.view == view);
        assert!(!expected.is_empty(), "{view}");
        for top in [1, 4, 1000] {
            let (ids, sizes) = h.walk(&format!("/api/v1/vms?view={view}&$top={top}")).await;
            assert_eq!(ids, expected, "view {view:?} by {top}");
            assert_eq!(sizes, full_pages(expected.len(), top), "view {view:?} by {top}");
        }
    }
    // A page of a view holds that view's VMs only, with the view's fields.
    let a = h.get_as(&h.token, "/api/v1/vms?view=configured&$top=2").await;
    let page = a.body["value"].as_array().expect("value");
    assert_eq!(page.len(), 2);
    assert!(page.iter().all(|v| v["policyId"].is_string() && v["connectionDetails"]["ports"].is_array()), "{page:?}");
    let a = h.get_as(&h.token, "/api/v1/vms?view=unsupported&$top=1").await;
    assert!(a.body["value"][0]["unsupportedReason"].as_str().unwrap_or("").contains("classic"), "{}", a.body);
}

#[tokio::test]
async fn filters_are_applied_on_the_server_and_kept_in_next_links() {
    let h = harness().await;
    let cases: Vec<(String, Vec<String>)> = vec![
        (format!("subscription={}", SUB_B.to_uppercase()), h.ids(|v| v.sub == SUB_B)),
        (format!("subscription={SUB_A}&resourceGroup=RG2"), h.ids(|v| v.sub == SUB_A && v.group == "rg2")),
        ("resourceGroup=rg0".into(), h.ids(|v| v.group.eq_ignore_ascii_case("rg0"))),
        ("location=EastUS".into(), h.ids(|v| v.location == "eastus")),
        ("name=VM3".into(), h.ids(|v| v.name == "vm3")),
        ("name=vm*".into(), h.ids(|_| true)),
        ("name=nothing*".into(), vec![]),
        (
            format!("view=notConfigured&subscription={SUB_A}&location=westeurope&name=vm1"),
            h.ids(|v| v.view == "notConfigured" && v.sub == SUB_A && v.location == "westeurope" && v.name == "vm1"),
        ),
    ];
    for (filters, expected) in cases {
        for top in [1, 3] {
            let (ids, sizes) = h.walk(&format!("/api/v1/vms?{filters}&$top={top}")).await;
            assert_eq!(ids, expected, "{filters} by {top}");
            assert_eq!(sizes, full_pages(expected.len(), top), "{filters} by {top}");
        }
    }
}

#[tokio::test]
async fn bad_top_and_skip_tokens_are_refused_with_an_azure_error() {
    let h = harness().await;
    for (query, code) in [
        ("$top=0", "InvalidTop"),
        ("$top=1001", "InvalidTop"),
        ("$top=-1", "InvalidTop"),
        ("$top=ten", "InvalidTop"),
        ("$top=", "InvalidTop"),
        ("$skipToken=%25%25", "InvalidSkipToken"),
        ("$skipToken=bm90IGEga2V5", "InvalidSkipToken"),
        ("$top=2&$skipToken=L2V0Yy9wYXNzd2Q", "InvalidSkipToken"),
        ("view=bogus&$top=2", "InvalidView"),
    ] {
        let a = h.get_as(&h.token, &format!("/api/v1/vms?{query}")).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{query}: {}", a.body);
        assert_eq!(a.body["error"]["code"], code, "{query}: {}", a.body);
        assert!(a.body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{query}: {}", a.body);
    }
    // A token from a nextLink whose text was changed by one character is refused or pages on
    // from a VM key; never a failure of the server.
    let a = h.get_as(&h.token, "/api/v1/vms?$top=3").await;
    let link = a.body["nextLink"].as_str().expect("next link").to_owned();
    let token = link.split("$skipToken=").nth(1).expect("token").to_owned();
    for at in 0..token.len() {
        let mut tampered = token.clone().into_bytes();
        tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).expect("ascii");
        let a = h.get_as(&h.token, &format!("/api/v1/vms?$top=3&$skipToken={tampered}")).await;
        assert!(
            a.status == StatusCode::OK || a.body["error"]["code"] == "InvalidSkipToken",
            "{tampered}: {} {}",
            a.status,
            a.body
        );
    }
}

#[tokio::test]
async fn a_scoped_reader_pages_only_the_vms_it_may_read() {
    let h = harness().await;
    let rg = |sub: &str, g: &str| format!("/subscriptions/{sub}/resourceGroups/{g}");
    let one = h.reader("reader1", &[rg(SUB_A, "rg1")]).await;
    let (ids, sizes) = h.walk_as(&one, "/api/v1/vms?$top=2").await;
    assert_eq!(ids, h.ids(|v| v.sub == SUB_A && v.group == "rg1"));
    assert_eq!(sizes, full_pages(PER_GROUP, 2));
    let (ids, _) = h.walk_as(&one, "/api/v1/vms?view=configured&$top=2").await;
    assert_eq!(ids, h.ids(|v| v.sub == SUB_A && v.group == "rg1" && v.view == "configured"));
    assert_eq!(ids.len(), 3, "vm0, vm3, vm6");
    let (ids, _) = h.walk_as(&one, &format!("/api/v1/vms?subscription={SUB_A}&resourceGroup=rg2&$top=2")).await;
    assert!(ids.is_empty(), "a filter outside the reader's scope: {ids:?}");

    // Two scopes far apart, and one inside the other.
    let two = h
        .reader(
            "reader2",
            &[
                rg(SUB_B, "rg0"),
                rg(SUB_A, "rg3"),
                format!("{}/providers/Microsoft.Compute/virtualMachines/vm1", rg(SUB_A, "rg3")),
            ],
        )
        .await;
    let expected = h.ids(|v| (v.sub == SUB_B) || (v.sub == SUB_A && v.group == "rg3"));
    let (ids, sizes) = h.walk_as(&two, "/api/v1/vms?$top=4").await;
    assert_eq!(ids, expected);
    assert_eq!(sizes, full_pages(expected.len(), 4));
    let (ids, _) = h.walk_as(&two, "/api/v1/vms").await;
    assert_eq!(ids, expected, "without $top too");

    let nobody = h.reader("nobody", &[]).await;
    let (ids, sizes) = h.walk_as(&nobody, "/api/v1/vms?view=configured&$top=5").await;
    assert_eq!((ids.len(), sizes), (0, vec![0]));
}

#[tokio::test]
async fn a_page_of_configured_vms_carries_their_access_facts() {
    let h = harness().await;
    let target = h.vms.iter().find(|v| v.view == "configured").expect("a configured VM").clone();
    let r = PolicyRef::new(target.sub, &target.group, target.location, "default").expect("ref");
    let cmd = InitiateCommand {
        policy: r,
        draft: InitiateDraft {
            vms: vec![InitiateVmDraft {
                id: target.id.clone(),
                ports: vec![InitiatePortDraft {
                    number: Some(22),
                    end_time: Some(now() + Duration::minutes(30)),
                    prefix: Some("198.51.100.1".into()),
                    ..Default::default()
                }],
            }],
            justification: None,
            start_time: None,
        },
        caller: None,
        requestor: "zoe".into(),
        client_request_id: None,
        now: now() - Duration::hours(1),
    };
    h.store.initiate(cmd, audit("init")).await.expect("initiate");
    let (ids, _) = h.walk("/api/v1/vms?view=configured&$top=2").await;
    assert_eq!(ids, h.ids(|v| v.view == "configured"));
    let a = h
        .get_as(
            &h.token,
            &format!(
                "/api/v1/vms?view=configured&name={}&subscription={}&resourceGroup={}",
                target.name, target.sub, target.group
            ),
        )
        .await;
    let entry = &a.body["value"][0];
    assert_eq!(entry["id"], target.id.as_str(), "{}", a.body);
    assert_eq!(entry["approvedRequestsLast7Days"], 1);
    assert_eq!(entry["lastUser"], "zoe");
    assert!(entry["lastAccess"].is_string());
    assert_eq!(entry["connectionDetails"]["enforcementPoint"], "gwa");
    let other = h.get_as(&h.token, "/api/v1/vms?view=configured&$top=1000").await;
    let untouched =
        other.body["value"].as_array().expect("value").iter().filter(|v| v["id"] != target.id.as_str()).count();
    assert_eq!(untouched, h.ids(|v| v.view == "configured").len() - 1);
    assert!(other.body["value"]
        .as_array()
        .expect("value")
        .iter()
        .filter(|v| v["id"] != target.id.as_str())
        .all(|v| v["approvedRequestsLast7Days"] == 0));
}
