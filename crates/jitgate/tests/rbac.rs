//! Identity and authorization end to end, against the real server: every built-in role × every
//! operation × a scope inside and outside its assignment; escalation attempts; OIDC ID tokens
//! checked against a JWKS this test serves on loopback; X-Forwarded-For from trusted proxies.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may panic on a failed expectation.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

use base64::Engine;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use jitgate_testkit::{as_user, vm_id, Answer, TestServer, SUB};

const BIN: &str = env!("CARGO_BIN_EXE_jitgate");

fn rg_scope(rg: &str) -> String {
    format!("/subscriptions/{SUB}/resourceGroups/{rg}")
}

fn policy_body(vm: &str) -> Value {
    json!({"properties": {"virtualMachines": [{"id": vm, "ports": [
        {"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "*", "maxRequestAccessDuration": "PT3H"}]}]}})
}

fn initiate_body(vm: &str) -> Value {
    json!({"virtualMachines": [{"id": vm, "ports": [{"number": 22, "duration": "PT5M", "allowedSourceAddressPrefix": "*"}]}]})
}

/// What each built-in role may do inside its scope: get, list, put, delete, initiate, VM read.
const MATRIX: [(&str, [bool; 6]); 6] = [
    ("Owner", [true, true, true, true, true, true]),
    ("Contributor", [true, true, true, true, true, true]),
    ("Reader", [true, true, false, false, false, true]),
    ("Security Admin", [true, true, true, true, true, true]),
    ("Security Reader", [true, true, false, false, false, true]),
    ("JIT Network Access Requester", [true, true, false, false, true, true]),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_built_in_role_on_every_operation_inside_and_outside_its_scope() {
    let s = TestServer::start(BIN, &[]);
    let mut disposable = Vec::new();
    for rg in ["inside", "outside"] {
        let vm = s.register_vm(rg, "vm", "Linux").await;
        assert_eq!(
            s.json(Method::PUT, &s.policy_url(rg, "westeurope", "default"), &policy_body(&vm)).await.status,
            StatusCode::OK
        );
        for (i, _) in MATRIX.iter().enumerate() {
            let d = s.register_vm(rg, &format!("d{i}"), "Linux").await;
            let a = s.json(Method::PUT, &s.policy_url(rg, "westeurope", &format!("del{i}")), &policy_body(&d)).await;
            assert_eq!(a.status, StatusCode::OK);
            disposable.push(d);
        }
    }
    let list_url = s.url(&format!(
        "/subscriptions/{SUB}/providers/Microsoft.Security/jitNetworkAccessPolicies?api-version=2020-01-01"
    ));
    for (i, (role, allowed)) in MATRIX.iter().enumerate() {
        let name = format!("user{i}");
        let token = s.principal(&name).await;
        assert_eq!(s.assign(&name, role, &rg_scope("inside")).await.status, StatusCode::CREATED);
        for (rg, inside) in [("inside", true), ("outside", false)] {
            let expect = |k: usize| inside && allowed[k];
            let vm = vm_id(rg, "vm");
            let checks: Vec<(&str, Answer, bool)> = vec![
                (
                    "get",
                    as_user(&s, &token, Method::GET, &s.policy_url(rg, "westeurope", "default"), None).await,
                    expect(0),
                ),
                (
                    "put",
                    as_user(
                        &s,
                        &token,
                        Method::PUT,
                        &s.policy_url(rg, "westeurope", "default"),
                        Some(&policy_body(&vm)),
                    )
                    .await,
                    expect(2),
                ),
                (
                    "delete",
                    as_user(&s, &token, Method::DELETE, &s.policy_url(rg, "westeurope", &format!("del{i}")), None)
                        .await,
                    expect(3),
                ),
                (
                    "initiate",
                    as_user(
                        &s,
                        &token,
                        Method::POST,
                        &s.initiate_url(rg, "westeurope", "default"),
                        Some(&initiate_body(&vm)),
                    )
                    .await,
                    expect(4),
                ),
                (
                    "vm read",
                    as_user(&s, &token, Method::GET, &s.url(&format!("/api/v1/vms?id={vm}")), None).await,
                    expect(5),
                ),
            ];
            for (op, answer, ok) in checks {
                if ok {
                    assert!(answer.status.is_success(), "{role} {op} {rg}: {answer:?}");
                } else {
                    assert_eq!(answer.status, StatusCode::FORBIDDEN, "{role} {op} {rg}: {answer:?}");
                    assert_eq!(answer.code(), "AuthorizationFailed");
                    let message = answer.body["error"]["message"].as_str().unwrap_or("");
                    assert!(
                        message.contains(&name) && message.contains("Microsoft."),
                        "names the principal and the action: {message}"
                    );
                }
            }
            // Lists return only what the caller may read.
            let listed = as_user(&s, &token, Method::GET, &list_url, None).await;
            assert_eq!(listed.status, StatusCode::OK);
            let ids: Vec<&str> =
                listed.body["value"].as_array().into_iter().flatten().filter_map(|p| p["id"].as_str()).collect();
            let sees = ids.iter().any(|id| id.contains(&format!("/resourceGroups/{rg}/")));
            assert_eq!(sees, expect(1), "{role} list sees {rg}: {ids:?}");
        }
    }
    // Every decision on a state-changing call is audited with the principal.
    let db = s.server.data_dir.join("jitgate.db");
    let mut s = s;
    assert!(s.server.stop().expect("stop"));
    let conn = rusqlite::Connection::open(db).expect("db");
    let denied: i64 = conn
        .query_row(
            "SELECT count(*) FROM audit WHERE status = 'Failed' AND caller = 'user2' AND properties LIKE '%AuthorizationFailed%'",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert!(denied >= 3, "the Reader's refused put, delete and initiate are audited ({denied})");
    let allowed: i64 = conn
        .query_row("SELECT count(*) FROM audit WHERE status = 'Succeeded' AND caller = 'user0' AND properties LIKE '%authorizedBy%'", [], |r| r.get(0))
        .expect("count");
    assert!(allowed >= 3, "the Owner's allowed changes carry what allowed them ({allowed})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escalation_attempts_all_fail() {
    let s = TestServer::start(BIN, &[]);
    let vm = s.register_vm("inside", "vm", "Linux").await;
    // Every setup step is checked: a refusal below proves something only if the setup held.
    let put = s.json(Method::PUT, &s.policy_url("inside", "westeurope", "default"), &policy_body(&vm)).await;
    assert!(put.status.is_success(), "{put:?}");

    // A requester cannot assign itself (or anyone) a role.
    let alice = s.principal("alice").await;
    let a = s.assign("alice", "JIT Network Access Requester", &rg_scope("inside")).await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
    let a = as_user(
        &s,
        &alice,
        Method::POST,
        &s.url("/api/v1/roleAssignments"),
        Some(&json!({"principal": "alice", "role": "Owner", "scope": rg_scope("inside")})),
    )
    .await;
    assert_eq!((a.status, a.code()), (StatusCode::FORBIDDEN, "AuthorizationFailed"), "{a:?}");
    assert!(a.body["error"]["message"].as_str().unwrap_or("").contains("roleAssignments/write"));
    let a = as_user(&s, &alice, Method::POST, &s.url("/api/v1/principals/owner/tokens"), Some(&json!({}))).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "no tokens for someone else: {a:?}");

    // An owner of a resource group cannot define a role for the whole subscription.
    let bob = s.principal("bob").await;
    let a = s.assign("bob", "Owner", &rg_scope("inside")).await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
    let broad = json!({"Name": "Broad", "Actions": ["*"], "AssignableScopes": [format!("/subscriptions/{SUB}")]});
    let a = as_user(&s, &bob, Method::PUT, &s.url("/api/v1/roleDefinitions/Broad"), Some(&broad)).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{a:?}");
    let narrow = json!({"Name": "Narrow", "Actions": ["*/read"], "AssignableScopes": [rg_scope("inside")]});
    let a = as_user(&s, &bob, Method::PUT, &s.url("/api/v1/roleDefinitions/Narrow"), Some(&narrow)).await;
    assert_eq!(a.status, StatusCode::CREATED, "within its own scope it may: {a:?}");
    let a = as_user(
        &s,
        &bob,
        Method::POST,
        &s.url("/api/v1/roleAssignments"),
        Some(&json!({"principal": "bob", "role": "Owner", "scope": format!("/subscriptions/{SUB}")})),
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "no assignment above its scope: {a:?}");
    let a = s
        .json(
            Method::PUT,
            &s.url("/api/v1/roleDefinitions/Owner"),
            &json!({"Actions": ["*"], "AssignableScopes": ["/"]}),
        )
        .await;
    assert_eq!((a.status, a.code()), (StatusCode::CONFLICT, "RoleDefinitionIsBuiltIn"), "built-ins cannot be changed");

    // A custom role whose NotActions remove initiate cannot initiate.
    let no_init = json!({"Name": "No Initiate", "Actions": ["*"], "NotActions": ["Microsoft.Security/locations/jitNetworkAccessPolicies/initiate/action"], "AssignableScopes": ["/"]});
    assert_eq!(
        s.json(Method::PUT, &s.url("/api/v1/roleDefinitions/No%20Initiate"), &no_init).await.status,
        StatusCode::CREATED
    );
    let carol = s.principal("carol").await;
    let a = s.assign("carol", "No Initiate", &rg_scope("inside")).await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
    let a = as_user(
        &s,
        &carol,
        Method::POST,
        &s.initiate_url("inside", "westeurope", "default"),
        Some(&initiate_body(&vm)),
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{a:?}");
    assert_eq!(
        as_user(&s, &carol, Method::GET, &s.policy_url("inside", "westeurope", "default"), None).await.status,
        StatusCode::OK
    );

    // A revoked token is refused; the principal's other token is not. (A token's end is tested on
    // a test clock in jitgate-server's router tests.)
    let t = s.json(Method::POST, &s.url("/api/v1/principals/carol/tokens"), &json!({"expiresIn": "PT1H"})).await;
    let short = t.body["token"].as_str().expect("token").to_owned();
    assert_eq!(
        as_user(&s, &short, Method::GET, &s.policy_url("inside", "westeurope", "default"), None).await.status,
        StatusCode::OK
    );
    let list = s.send(Method::GET, &s.url("/api/v1/principals/carol/tokens"), None).await;
    let first = list.body["value"][0]["id"].as_i64().expect("id");
    assert!(list.body.to_string().find("jg_").is_none(), "token lists carry no secrets");
    assert_eq!(s.send(Method::DELETE, &s.url(&format!("/api/v1/tokens/{first}")), None).await.status, StatusCode::OK);
    let a = as_user(&s, &carol, Method::GET, &s.policy_url("inside", "westeurope", "default"), None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "revoked: {a:?}");
    let a = as_user(&s, &short, Method::GET, &s.policy_url("inside", "westeurope", "default"), None).await;
    assert_eq!(a.status, StatusCode::OK, "carol's other token still works: {a:?}");

    // A token of subscription A cannot act on subscription B.
    let other_sub = "11111111-2222-3333-4444-555555555555";
    let dave = s.principal("dave").await;
    let a = s.assign("dave", "Owner", &format!("/subscriptions/{other_sub}")).await;
    assert_eq!(a.status, StatusCode::CREATED, "dave owns the other subscription: {a:?}");
    let a = as_user(&s, &dave, Method::GET, &s.policy_url("inside", "westeurope", "default"), None).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let a = as_user(&s, &dave, Method::PUT, &s.policy_url("inside", "westeurope", "default"), Some(&policy_body(&vm)))
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let listed = as_user(
        &s,
        &dave,
        Method::GET,
        &s.url(&format!(
            "/subscriptions/{SUB}/providers/Microsoft.Security/jitNetworkAccessPolicies?api-version=2020-01-01"
        )),
        None,
    )
    .await;
    assert_eq!(listed.body["value"], json!([]));

    // The requester may revoke its own request; others' need more.
    let mine = as_user(
        &s,
        &alice,
        Method::POST,
        &s.initiate_url("inside", "westeurope", "default"),
        Some(&initiate_body(&vm)),
    )
    .await;
    assert_eq!(mine.status, StatusCode::ACCEPTED, "{mine:?}");
    let id = mine.body["id"].as_i64().expect("id");
    let theirs = s.json(Method::POST, &s.initiate_url("inside", "westeurope", "default"), &json!({"virtualMachines": [{"id": vm, "ports": [{"number": 22, "duration": "PT5M", "allowedSourceAddressPrefix": "10.1.1.1"}]}]})).await;
    let their_id = theirs.body["id"].as_i64().expect("id");
    assert_eq!(
        as_user(&s, &alice, Method::POST, &s.url(&format!("/api/v1/requests/{their_id}/revoke")), None).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        as_user(&s, &alice, Method::POST, &s.url(&format!("/api/v1/requests/{id}/revoke")), None).await.status,
        StatusCode::OK
    );
}

/// Serves an OIDC discovery document and a JWKS on loopback; returns the issuer URL.
fn serve_jwks(jwks: Value) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let issuer = format!("http://{}", listener.local_addr().expect("addr"));
    let discovery = json!({"issuer": issuer, "jwks_uri": format!("{issuer}/jwks")}).to_string();
    let jwks = jwks.to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).map(|n| n == 0).unwrap_or(true) || h.trim().is_empty() {
                    break;
                }
            }
            let body = if line.contains("/jwks") { &jwks } else { &discovery };
            let resp = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            let _ = reader.get_mut().write_all(resp.as_bytes());
        }
    });
    issuer
}

fn ec_key() -> (jsonwebtoken::EncodingKey, Value) {
    let kp = rcgen::KeyPair::generate().expect("key");
    let raw = kp.public_key_raw().to_vec();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwk = json!({"kty": "EC", "crv": "P-256", "x": b64(&raw[1..33]), "y": b64(&raw[33..65]), "kid": "k1", "alg": "ES256", "use": "sig"});
    (jsonwebtoken::EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).expect("pem"), jwk)
}

fn jwt(key: &jsonwebtoken::EncodingKey, claims: Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("k1".into());
    jsonwebtoken::encode(&header, &claims, key).expect("sign")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_id_tokens_sign_humans_in_and_bad_ones_are_refused() {
    let (key, jwk) = ec_key();
    let issuer = serve_jwks(json!({"keys": [jwk]}));
    let s = TestServer::start(BIN, &["--oidc-issuer", &issuer, "--oidc-audience", "jitgate-test"]);
    let vm = s.register_vm("rg1", "vm", "Linux").await;
    let put = s.json(Method::PUT, &s.policy_url("rg1", "westeurope", "default"), &policy_body(&vm)).await;
    assert!(put.status.is_success(), "{put:?}");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = |patch: Value| {
        let mut c = json!({"iss": issuer, "aud": "jitgate-test", "sub": "u-1", "preferred_username": "erin", "iat": now, "nbf": now - 5, "exp": now + 300});
        for (k, v) in patch.as_object().into_iter().flatten() {
            c[k] = v.clone();
        }
        c
    };
    let url = s.policy_url("rg1", "westeurope", "default");
    let good = jwt(&key, claims(json!({})));
    // Signed in (a principal now exists), but no role yet: 403, not 401.
    let a = as_user(&s, &good, Method::GET, &url, None).await;
    assert_eq!((a.status, a.code()), (StatusCode::FORBIDDEN, "AuthorizationFailed"), "{a:?}");
    assert!(a.body["error"]["message"].as_str().unwrap_or("").contains("(erin)"), "shown with its display name");
    // The principal is the identity (issuer, sub), named oidc:…; "erin" is only its display name.
    let principals = s.send(Method::GET, &s.url("/api/v1/principals"), None).await;
    let erin = principals.body["value"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["displayName"] == "erin")
        .and_then(|p| p["name"].as_str())
        .expect("listed with its display name")
        .to_owned();
    assert!(erin.starts_with("oidc:"), "{erin}");
    assert_eq!(s.assign(&erin, "Reader", &format!("/subscriptions/{SUB}")).await.status, StatusCode::CREATED);
    assert_eq!(as_user(&s, &good, Method::GET, &url, None).await.status, StatusCode::OK);
    // The sign-in is audited once, not on every request.
    let signins = s
        .send(
            Method::GET,
            &s.url(&format!(
                "/api/v1/audit?caller={erin}&operation=Microsoft.Authorization/signIn/action&status=Succeeded"
            )),
            None,
        )
        .await;
    assert_eq!(signins.body["value"].as_array().map(Vec::len), Some(1), "{signins:?}");
    assert_eq!(signins.body["value"][0]["properties"]["method"], "oidc");

    let (other_key, _) = ec_key();
    for (why, token) in [
        ("forged signature", jwt(&other_key, claims(json!({})))),
        ("expired", jwt(&key, claims(json!({"exp": now - 120, "nbf": now - 600})))),
        ("wrong audience", jwt(&key, claims(json!({"aud": "someone-else"})))),
        ("wrong issuer", jwt(&key, claims(json!({"iss": "https://evil.example"})))),
        ("not yet valid", jwt(&key, claims(json!({"nbf": now + 600})))),
        ("garbage", "a.b.c".to_string()),
    ] {
        let a = as_user(&s, &token, Method::GET, &url, None).await;
        assert_eq!((a.status, a.code()), (StatusCode::UNAUTHORIZED, "InvalidAuthenticationToken"), "{why}: {a:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_counts_only_from_trusted_proxies() {
    let body = |vm: &str| json!({"virtualMachines": [{"id": vm, "ports": [{"number": 22, "duration": "PT5M"}]}]});
    for (flags, expected) in [(vec!["--trusted-proxy", "127.0.0.1/32"], "203.0.113.9"), (vec![], "127.0.0.1")] {
        let s = TestServer::start(BIN, &flags);
        let vm = s.register_vm("rg1", "vm", "Linux").await;
        let put = s.json(Method::PUT, &s.policy_url("rg1", "westeurope", "default"), &policy_body(&vm)).await;
        assert!(put.status.is_success(), "{put:?}");
        let auth = format!("Bearer {}", s.server.token);
        let text = body(&vm).to_string();
        let a = s
            .send_with(
                Method::POST,
                &s.initiate_url("rg1", "westeurope", "default"),
                Some(text.as_bytes()),
                &[("Authorization", auth.as_str()), ("X-Forwarded-For", "203.0.113.9")],
            )
            .await;
        assert_eq!(a.status, StatusCode::ACCEPTED, "{a:?}");
        assert_eq!(a.body["virtualMachines"][0]["ports"][0]["allowedSourceAddressPrefix"], expected, "{flags:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_creates_the_least_privileged_role_and_assigns_it() {
    let s = TestServer::start(BIN, &[]);
    let scope = format!("/subscriptions/{SUB}");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(BIN)
            .args(args)
            .env("JITGATE_URL", &s.server.url)
            .env("JITGATE_TOKEN", &s.server.token)
            .env("JITGATE_CA_CERT", &s.server.ca_cert)
            .output()
            .expect("cli runs");
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let printed: Value = serde_json::from_str(&run(&[
        "role",
        "create-least-privileged",
        "--name",
        "JIT Access Role",
        "--scope",
        &scope,
    ]))
    .expect("json");
    assert_eq!(printed["Name"], "JIT Access Role");
    assert_eq!(printed["AssignableScopes"], json!([scope]));
    let actions: Vec<&str> = printed["Actions"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    // Written out, not taken from the code that made them: the seed's least-privileged list
    // (Set-JitLeastPrivilegedRole), the policy read, and the notification of one's own requests.
    assert_eq!(
        actions,
        [
            "Microsoft.Security/locations/jitNetworkAccessPolicies/initiate/action",
            "Microsoft.Security/locations/jitNetworkAccessPolicies/*/read",
            "Microsoft.Security/locations/jitNetworkAccessPolicies/read",
            "Microsoft.Compute/virtualMachines/read",
            "Microsoft.Network/networkInterfaces/*/read",
            "Microsoft.Network/publicIPAddresses/read",
            "Microsoft.Security/webhooks/notifyOwn/action",
        ]
    );
    assert!(run(&["role", "list"]).contains("JIT Access Role"));
    s.principal("frank").await;
    let assigned: Value = serde_json::from_str(&run(&[
        "role",
        "assign",
        "--principal",
        "frank",
        "--role",
        "JIT Access Role",
        "--scope",
        &rg_scope("rg1"),
        "-o",
        "json",
    ]))
    .expect("json");
    assert_eq!(assigned["role"], "JIT Access Role");
}

/// A tiny OIDC provider on loopback: discovery, JWKS, a device authorization endpoint, and a
/// token endpoint that says `authorization_pending` once (400, as RFC 8628 §3.5 has it), then
/// hands out the ID token beside an access token (RFC 6749 §5.1); and an
/// authorization endpoint that redirects straight back with a code, which the token endpoint
/// exchanges only for the PKCE verifier that matches the challenge and the same redirect URI.
fn serve_idp(jwks: Value, mint: impl Fn(&str) -> String + Send + 'static) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let issuer = format!("http://{}", listener.local_addr().expect("addr"));
    let iss = issuer.clone();
    std::thread::spawn(move || {
        let mut polls = 0;
        // (code_challenge, redirect_uri) of the last authorization request.
        let mut pending: Option<(String, String)> = None;
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let mut len = 0usize;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).map(|n| n == 0).unwrap_or(true) || h.trim().is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; len];
            let _ = std::io::Read::read_exact(&mut reader, &mut body);
            let target = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
            let query = |text: &str, key: &str| {
                reqwest::Url::parse(&format!("http://idp/?{text}"))
                    .ok()
                    .and_then(|u| u.query_pairs().find(|(k, _)| k == key).map(|(_, v)| v.into_owned()))
            };
            if target.starts_with("/authorize?") {
                let q = target.trim_start_matches("/authorize?");
                assert_eq!(query(q, "code_challenge_method").as_deref(), Some("S256"));
                assert_eq!(query(q, "client_id").as_deref(), Some("jitgate-test"));
                let redirect = query(q, "redirect_uri").unwrap_or_default();
                pending = Some((query(q, "code_challenge").unwrap_or_default(), redirect.clone()));
                let state = query(q, "state").unwrap_or_default();
                let resp = format!("HTTP/1.1 302 Found\r\nLocation: {redirect}?code=ac-1&state={state}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                let _ = reader.get_mut().write_all(resp.as_bytes());
                continue;
            }
            let form = String::from_utf8_lossy(&body).into_owned();
            let answer = if line.contains("/.well-known/openid-configuration") {
                json!({"issuer": iss, "jwks_uri": format!("{iss}/jwks"), "device_authorization_endpoint": format!("{iss}/device"), "authorization_endpoint": format!("{iss}/authorize"), "token_endpoint": format!("{iss}/token")})
            } else if query(&form, "grant_type").as_deref() == Some("authorization_code") {
                let verifier = query(&form, "code_verifier").unwrap_or_default();
                let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .encode(<sha2::Sha256 as sha2::Digest>::digest(verifier.as_bytes()));
                let expected = pending.take();
                if query(&form, "code").as_deref() == Some("ac-1")
                    && expected == Some((challenge, query(&form, "redirect_uri").unwrap_or_default()))
                {
                    json!({"id_token": mint(&iss), "access_token": "at-1", "token_type": "Bearer"})
                } else {
                    json!({"error": "invalid_grant"})
                }
            } else if line.contains("/jwks") {
                jwks.clone()
            } else if line.contains("/device") {
                assert!(String::from_utf8_lossy(&body).contains("client_id=jitgate-test"));
                json!({"device_code": "dc-1", "user_code": "WDJB-MJHT", "verification_uri": format!("{iss}/activate"), "interval": 1, "expires_in": 60})
            } else {
                polls += 1;
                if polls == 1 {
                    json!({"error": "authorization_pending"})
                } else {
                    json!({"id_token": mint(&iss), "access_token": "at-2", "token_type": "Bearer"})
                }
            };
            let text = answer.to_string();
            let status = if answer.get("error").is_some() { "400 Bad Request" } else { "200 OK" };
            let resp = format!("HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}", text.len());
            let _ = reader.get_mut().write_all(resp.as_bytes());
        }
    });
    issuer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jitgate_login_oidc_signs_in_with_the_device_flow() {
    let (key, jwk) = ec_key();
    let issuer = serve_idp(json!({"keys": [jwk]}), move |iss| {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        jwt(
            &key,
            json!({"iss": iss, "aud": "jitgate-test", "sub": "u-9", "preferred_username": "gina", "iat": now, "exp": now + 600}),
        )
    });
    let s = TestServer::start(BIN, &["--oidc-issuer", &issuer, "--oidc-audience", "jitgate-test"]);
    let cfg = s.send_with(Method::GET, &s.url("/api/v1/auth/config"), None, &[]).await;
    assert_eq!(cfg.body["oidcClientId"], "jitgate-test");
    let dir = tempfile::tempdir().expect("tempdir");
    let profile = dir.path().join("profile.json");
    let run = |args: &[&str]| {
        std::process::Command::new(BIN)
            .args(args)
            .env("JITGATE_CONFIG", &profile)
            .env_remove("JITGATE_TOKEN")
            .env_remove("JITGATE_URL")
            .env_remove("JITGATE_CA_CERT")
            .output()
            .expect("runs")
    };
    let ca = s.server.ca_cert.display().to_string();
    let out = run(&["login", "--url", &s.server.url, "--ca-cert", &ca, "--oidc", "--subscription", SUB]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("WDJB-MJHT"), "shows the code to enter");
    // The profile now signs gina in; she has no role yet, so lists are empty rather than refused.
    let listed = run(&["policy", "list", "-o", "json"]);
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    let principals = s.send(Method::GET, &s.url("/api/v1/principals"), None).await;
    assert!(
        principals.body["value"].as_array().into_iter().flatten().any(|p| p["displayName"] == "gina"),
        "{principals:?}"
    );
}

/// Runs `jitgate login --oidc --browser`, plays the browser: reads the link the CLI prints and
/// fetches it (following the issuer's redirect back to the CLI's loopback listener), or, with
/// `forge_state`, calls the loopback listener directly with a state the CLI never issued.
async fn browser_login(s: &TestServer, profile: &std::path::Path, forge_state: bool) -> (std::process::Output, String) {
    let ca = s.server.ca_cert.display().to_string();
    let mut child = std::process::Command::new(BIN)
        .args(["login", "--url", &s.server.url, "--ca-cert", &ca, "--oidc", "--browser", "--subscription", SUB])
        .env("JITGATE_CONFIG", profile)
        .env("BROWSER", "true")
        .env_remove("JITGATE_TOKEN")
        .env_remove("JITGATE_URL")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("runs");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    while !line.contains("open http") {
        line.clear();
        if stderr.read_line(&mut line).expect("reads") == 0 {
            panic!("login ended without printing a link: {:?}", child.wait_with_output());
        }
    }
    let link = line.split_whitespace().last().expect("link").to_owned();
    let browser = reqwest::Client::new();
    let page = if forge_state {
        let u = reqwest::Url::parse(&link).expect("url");
        let redirect =
            u.query_pairs().find(|(k, _)| k == "redirect_uri").map(|(_, v)| v.into_owned()).expect("redirect_uri");
        assert!(redirect.starts_with("http://127.0.0.1:"), "loopback redirect: {redirect}");
        browser.get(format!("{redirect}?code=ac-1&state=forged")).send().await
    } else {
        browser.get(&link).send().await
    };
    let page = page.expect("the browser reaches the CLI").text().await.unwrap_or_default();
    let out = child.wait_with_output().expect("waits");
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut stderr, &mut rest);
    (std::process::Output { stderr: rest.into_bytes(), ..out }, page)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jitgate_login_oidc_browser_uses_pkce_and_a_loopback_redirect() {
    let (key, jwk) = ec_key();
    let issuer = serve_idp(json!({"keys": [jwk]}), move |iss| {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        jwt(
            &key,
            json!({"iss": iss, "aud": "jitgate-test", "sub": "u-10", "preferred_username": "hana", "iat": now, "exp": now + 600}),
        )
    });
    let s = TestServer::start(BIN, &["--oidc-issuer", &issuer, "--oidc-audience", "jitgate-test"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let profile = dir.path().join("profile.json");

    // An answer with a state the CLI did not issue is refused and nothing is saved.
    let (forged, page) = browser_login(&s, &profile, true).await;
    assert_eq!(forged.status.code(), Some(3), "{}", String::from_utf8_lossy(&forged.stderr));
    assert!(page.contains("did not match"), "{page}");
    assert!(!profile.exists(), "a refused sign-in writes no profile");

    let (out, page) = browser_login(&s, &profile, false).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(page.contains("Signed in"), "{page}");
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&profile).expect("profile")).expect("json");
    let token = saved["token"].as_str().expect("token saved").to_owned();
    let me = s.send(Method::GET, &s.url("/api/v1/principals"), None).await;
    assert!(me.body["value"].as_array().into_iter().flatten().any(|p| p["displayName"] == "hana"), "{me:?}");
    let bearer = format!("Bearer {token}");
    let listed = s.send_with(Method::GET, &s.url("/api/v1/roleDefinitions"), None, &[("Authorization", &bearer)]).await;
    assert_eq!(listed.status, StatusCode::OK, "the saved ID token signs hana in: {listed:?}");
}
