//! Identities and tokens, end to end against the real server (issue 9, findings 1 and 3):
//! - an OIDC sign-in is the identity (issuer, `sub`), never a local principal by name, whatever
//!   its display claim says (`OWNER`, `o\u{202E}wner`, look-alikes);
//! - local principal names are a strict set;
//! - a token never outlives the credential that made it, is revoked with it, and no token lives
//!   longer than `--max-token-lifetime`.
//!
//! ID tokens are signed with a key made here and checked through `--oidc-jwks-file`, so no
//! issuer needs to be reachable.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may panic on a failed expectation.

use std::path::Path;

use base64::Engine;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use jitgate_testkit::{as_user, cli, Answer, LocalServer, TestServer, SUB};

const BIN: &str = env!("CARGO_BIN_EXE_jitgate");
const ISSUER: &str = "https://idp-a.example/realms/ops";
const AUDIENCE: &str = "jitgate-test";

/// A signing key and the JWKS file (in `dir`) that holds its public half.
struct Idp {
    key: jsonwebtoken::EncodingKey,
    jwks: std::path::PathBuf,
}

impl Idp {
    fn new(dir: &Path) -> Self {
        let kp = rcgen::KeyPair::generate().expect("key");
        let raw = kp.public_key_raw().to_vec();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwk = json!({"kty": "EC", "crv": "P-256", "x": b64(&raw[1..33]), "y": b64(&raw[33..65]), "kid": "k1", "alg": "ES256", "use": "sig"});
        let jwks = dir.join("jwks.json");
        std::fs::write(&jwks, json!({"keys": [jwk]}).to_string()).expect("jwks file");
        let key = jsonwebtoken::EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).expect("pem");
        Idp { key, jwks }
    }

    /// The flags that make the server trust this key for `issuer`.
    fn flags<'a>(&'a self, issuer: &'a str) -> Vec<&'a str> {
        let jwks = self.jwks.to_str().expect("utf-8 path");
        vec!["--oidc-issuer", issuer, "--oidc-audience", AUDIENCE, "--oidc-jwks-file", jwks]
    }

    /// An ID token of `issuer` for `sub`, valid for `lifetime` seconds, with extra claims.
    fn id_token(&self, issuer: &str, sub: &str, lifetime: i64, extra: Value) -> String {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let mut claims =
            json!({"iss": issuer, "aud": AUDIENCE, "sub": sub, "iat": now, "nbf": now - 5, "exp": now + lifetime});
        for (k, v) in extra.as_object().into_iter().flatten() {
            claims[k] = v.clone();
        }
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some("k1".into());
        jsonwebtoken::encode(&header, &claims, &self.key).expect("sign")
    }
}

fn time_of(v: &Value) -> OffsetDateTime {
    OffsetDateTime::parse(v.as_str().unwrap_or_else(|| panic!("a time: {v}")), &Rfc3339).expect("RFC 3339")
}

/// The principals as the admin sees them.
async fn principals(s: &TestServer) -> Vec<Value> {
    let a = s.send(Method::GET, &s.url("/api/v1/principals"), None).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    a.body["value"].as_array().cloned().unwrap_or_default()
}

/// The principal of an OIDC subject, as listed.
async fn oidc_principal(s: &TestServer, sub: &str) -> Value {
    principals(s).await.into_iter().find(|p| p["subject"] == sub).unwrap_or_else(|| panic!("no principal for {sub}"))
}

async fn tokens_of(s: &TestServer, name: &str) -> Vec<Value> {
    let a = s.send(Method::GET, &s.url(&format!("/api/v1/principals/{name}/tokens")), None).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    a.body["value"].as_array().cloned().unwrap_or_default()
}

async fn mint(s: &TestServer, bearer: &str, principal: &str, body: Value) -> Answer {
    as_user(s, bearer, Method::POST, &s.url(&format!("/api/v1/principals/{principal}/tokens")), Some(&body)).await
}

/// The status of reading the policy `rg1/default` (needs a role over it).
async fn read_policy(s: &TestServer, bearer: &str) -> StatusCode {
    as_user(s, bearer, Method::GET, &s.policy_url("rg1", "westeurope", "default"), None).await.status
}

/// The status of a call any signed-in caller may make.
async fn whoami_status(s: &TestServer, bearer: &str) -> StatusCode {
    as_user(s, bearer, Method::GET, &s.url("/api/v1/roleDefinitions"), None).await.status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oidc_display_claim_never_makes_the_caller_a_local_principal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let idp = Idp::new(dir.path());
    let s = TestServer::start(BIN, &idp.flags(ISSUER));
    let owner_tokens = tokens_of(&s, "owner").await.len();
    for (i, (claim, shown)) in [
        (json!({"preferred_username": "OWNER"}), Some("OWNER")),
        (json!({"preferred_username": "owner"}), Some("owner")),
        (json!({"preferred_username": "Owner", "email": "owner"}), Some("Owner")),
        (json!({"preferred_username": "o\u{202E}wner"}), Some("owner")),
        (json!({"preferred_username": "ｏｗｎｅｒ"}), Some("owner")),
        (json!({"preferred_username": "\u{43E}wner"}), None), // Cyrillic о: mixed scripts, not shown
        (json!({"email": "owner"}), Some("owner")),
        (
            json!({"preferred_username": "oidc:0123456789abcdef0123456789abcdef"}),
            Some("oidc:0123456789abcdef0123456789abcdef"),
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let sub = format!("attacker-{i}");
        let token = idp.id_token(ISSUER, &sub, 300, claim.clone());
        let a = mint(&s, &token, "owner", json!({})).await;
        assert_eq!((a.status, a.code()), (StatusCode::FORBIDDEN, "AuthorizationFailed"), "{claim}: {a:?}");
        let a = as_user(&s, &token, Method::GET, &s.url("/api/v1/roleAssignments?principal=owner"), None).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{claim}: {a:?}");
        let a = as_user(&s, &token, Method::GET, &s.url("/api/v1/roleAssignments?principal=OWNER"), None).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{claim}: {a:?}");
        let a = as_user(&s, &token, Method::POST, &s.url("/api/v1/principals"), Some(&json!({"name": "x"}))).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{claim}: no rights at all: {a:?}");
        // Its own assignments: none.
        let me = oidc_principal(&s, &sub).await;
        let name = me["name"].as_str().expect("name").to_owned();
        assert!(name.starts_with("oidc:") && name.len() == 37, "{name}");
        assert_eq!((me["issuer"].as_str(), me["displayName"].as_str()), (Some(ISSUER), shown), "{claim}");
        let own =
            as_user(&s, &token, Method::GET, &s.url(&format!("/api/v1/roleAssignments?principal={name}")), None).await;
        assert_eq!((own.status, own.body["value"].clone()), (StatusCode::OK, json!([])), "{claim}");
    }
    assert_eq!(tokens_of(&s, "owner").await.len(), owner_tokens, "no token was made for the owner");
    let assignments = s.send(Method::GET, &s.url("/api/v1/roleAssignments"), None).await;
    assert_eq!(assignments.body["value"].as_array().map(Vec::len), Some(1), "only the Owner's: {assignments:?}");
    // Eight identities, eight principals besides the owner, none of them named by its claim.
    let all = principals(&s).await;
    assert_eq!(all.len(), 9, "{all:?}");
    assert_eq!(all.iter().filter(|p| p["name"].as_str().is_some_and(|n| n.eq_ignore_ascii_case("owner"))).count(), 1);
    // Refused display names are audited with the sign-in.
    let signins = s.audit("operation=Microsoft.Authorization/signIn/action&status=Succeeded").await;
    let refused: Vec<&Value> = signins.iter().filter(|r| r["properties"]["displayNameRefused"].is_string()).collect();
    assert_eq!(refused.len(), 1, "{signins:?}");
    assert!(refused[0]["properties"]["displayNameRefused"].as_str().unwrap_or("").contains("Cyrillic"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oidc_identity_is_its_issuer_and_subject_and_gains_roles_only_by_assignment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let idp = Idp::new(dir.path());
    let s = TestServer::start(BIN, &idp.flags(ISSUER));
    let vm = s.register_vm("rg1", "vm", "Linux").await;
    let policy = json!({"properties": {"virtualMachines": [{"id": vm, "ports": [
        {"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "*", "maxRequestAccessDuration": "PT3H"}]}]}});
    assert_eq!(
        s.json(Method::PUT, &s.policy_url("rg1", "westeurope", "default"), &policy).await.status,
        StatusCode::OK
    );
    let erin = idp.id_token(ISSUER, "u-7", 300, json!({"preferred_username": "erin"}));
    assert_eq!(whoami_status(&s, &erin).await, StatusCode::OK, "signed in, even without roles");
    let p = oidc_principal(&s, "u-7").await;
    let name = p["name"].as_str().expect("name").to_owned();
    let scope = format!("/subscriptions/{SUB}");
    assert_eq!(read_policy(&s, &erin).await, StatusCode::FORBIDDEN, "no roles yet");
    assert_eq!(s.assign(&name, "Reader", &scope).await.status, StatusCode::CREATED);
    assert_eq!(read_policy(&s, &erin).await, StatusCode::OK);
    let url = s.url(&format!(
        "/subscriptions/{SUB}/providers/Microsoft.Security/jitNetworkAccessPolicies?api-version=2020-01-01"
    ));
    assert_eq!(as_user(&s, &erin, Method::GET, &url, None).await.status, StatusCode::OK);

    // Same (issuer, sub), another display claim: the same principal, with its roles; the new
    // display name is shown.
    let renamed = idp.id_token(ISSUER, "u-7", 300, json!({"preferred_username": "erin.new"}));
    assert_eq!(read_policy(&s, &renamed).await, StatusCode::OK);
    let p = oidc_principal(&s, "u-7").await;
    assert_eq!((p["name"].as_str(), p["displayName"].as_str()), (Some(name.as_str()), Some("erin.new")));

    // Another subject claiming the same display name is someone else, without erin's roles.
    let other = idp.id_token(ISSUER, "u-8", 300, json!({"preferred_username": "erin"}));
    assert_eq!(read_policy(&s, &other).await, StatusCode::FORBIDDEN);
    assert_ne!(oidc_principal(&s, "u-8").await["name"], json!(name));
    // The CLI shows who is who.
    let out = std::process::Command::new(BIN)
        .args(["principal", "list"])
        .env("JITGATE_URL", &s.server.url)
        .env("JITGATE_TOKEN", &s.server.token)
        .env("JITGATE_CA_CERT", &s.server.ca_cert)
        .output()
        .expect("cli runs");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(table.lines().any(|l| l.contains(&name) && l.contains("erin.new") && l.contains(ISSUER)), "{table}");
    // Nor can anyone create a local principal with an OIDC identity's name.
    let a = s.json(Method::POST, &s.url("/api/v1/principals"), &json!({"name": name})).await;
    assert_eq!((a.status, a.code()), (StatusCode::BAD_REQUEST, "InvalidPrincipal"), "{a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_issuers_with_the_same_subject_are_two_principals() {
    let dir = tempfile::tempdir().expect("tempdir");
    let idp = Idp::new(dir.path());
    let data = dir.path().join("data");
    let issuer_b = "https://idp-b.example";
    let first = LocalServer::start_in(Path::new(BIN), &data, &idp.flags(ISSUER)).expect("first start");
    let admin = first.token.clone();
    let client = jitgate_client::http_client(Some(&first.ca_cert)).expect("client");
    let get = |url: String, bearer: String| {
        let client = client.clone();
        async move {
            let r = client.get(url).bearer_auth(bearer).send().await.expect("send");
            (r.status(), r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let roles = |url: &str| format!("{url}/api/v1/roleDefinitions");
    let a_token = idp.id_token(ISSUER, "shared-sub", 300, json!({"preferred_username": "sam"}));
    assert_eq!(get(roles(&first.url), a_token.clone()).await.0, StatusCode::OK);
    drop(first);

    // The same store, now trusting another issuer; a token of the first issuer is refused there.
    let second = LocalServer::start_in(Path::new(BIN), &data, &idp.flags(issuer_b)).expect("second start");
    let b_token = idp.id_token(issuer_b, "shared-sub", 300, json!({"preferred_username": "sam"}));
    assert_eq!(get(roles(&second.url), b_token).await.0, StatusCode::OK);
    assert_eq!(get(roles(&second.url), a_token).await.0, StatusCode::UNAUTHORIZED, "other issuer");
    let (status, listed) = get(format!("{}/api/v1/principals", second.url), admin).await;
    assert_eq!(status, StatusCode::OK);
    let sams: Vec<&Value> =
        listed["value"].as_array().into_iter().flatten().filter(|p| p["subject"] == "shared-sub").collect();
    assert_eq!(sams.len(), 2, "{listed}");
    assert_ne!(sams[0]["name"], sams[1]["name"]);
    let issuers: Vec<&str> = sams.iter().filter_map(|p| p["issuer"].as_str()).collect();
    assert!(issuers.contains(&ISSUER) && issuers.contains(&issuer_b), "{issuers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_principal_names_are_a_strict_set_and_refusals_are_audited() {
    let s = TestServer::start(BIN, &[]);
    let before = principals(&s).await.len();
    let long = "a".repeat(65);
    for bad in [
        "oidc:0123456789abcdef0123456789abcdef",
        "o\u{202E}wner",
        "\u{43E}wner",
        "ｏｗｎｅｒ",
        "own er",
        "a#deleted-1",
        "../owner",
        "-x",
        "",
        long.as_str(),
    ] {
        let a = s.json(Method::POST, &s.url("/api/v1/principals"), &json!({"name": bad})).await;
        assert_eq!((a.status, a.code()), (StatusCode::BAD_REQUEST, "InvalidPrincipal"), "{bad:?}: {a:?}");
        assert_eq!(a.body["error"]["target"], "name", "{a:?}");
        assert!(a.body["error"]["message"].as_str().is_some_and(str::is_ascii), "echoed escaped: {a:?}");
    }
    assert_eq!(principals(&s).await.len(), before, "nothing was created");
    let refusals = s.audit("operation=Microsoft.Authorization/principals/write&status=Failed").await;
    assert_eq!(refusals.len(), 10, "{refusals:?}");
    for ok in ["alice", "svc.deploy-2", "ci@example.com"] {
        let a = s.json(Method::POST, &s.url("/api/v1/principals"), &json!({"name": ok})).await;
        assert_eq!(a.status, StatusCode::CREATED, "{ok}: {a:?}");
    }
    let a = s.json(Method::POST, &s.url("/api/v1/principals"), &json!({"name": "ALICE"})).await;
    assert_eq!((a.status, a.code()), (StatusCode::CONFLICT, "PrincipalExists"), "names ignore case: {a:?}");
}

/// Creates `name` with a token of `expires_in` (made by the admin); returns the token.
async fn principal_with_token(s: &TestServer, name: &str, expires_in: &str) -> (String, Value) {
    let a = s.json(Method::POST, &s.url("/api/v1/principals"), &json!({"name": name})).await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
    let t = s
        .json(Method::POST, &s.url(&format!("/api/v1/principals/{name}/tokens")), &json!({"expiresIn": expires_in}))
        .await;
    assert_eq!(t.status, StatusCode::CREATED, "{t:?}");
    (t.body["token"].as_str().expect("token").to_owned(), t.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_cannot_mint_tokens_that_outlive_it_and_they_end_with_it() {
    let s = TestServer::start(BIN, &[]);
    let (parent, made) = principal_with_token(&s, "alice", "PT5M").await;
    let parent_end = time_of(&made["expiresOn"]);

    // Asking for more than the parent has left is refused, and nothing is stored.
    let before = tokens_of(&s, "alice").await.len();
    for long in ["P36500D", "PT6M", "P1D"] {
        let a = mint(&s, &parent, "alice", json!({"expiresIn": long})).await;
        assert_eq!((a.status, a.code()), (StatusCode::BAD_REQUEST, "TokenLifetimeTooLong"), "{long}: {a:?}");
        assert_eq!(a.body["error"]["target"], "expiresIn");
    }
    assert_eq!(tokens_of(&s, "alice").await.len(), before);
    assert_eq!(made["createdWith"], "token", "the admin's token made it: {made}");
    // Without expiresIn it lives as long as the parent, no longer.
    let child = mint(&s, &parent, "alice", json!({})).await;
    assert_eq!(child.status, StatusCode::CREATED, "{child:?}");
    assert!(time_of(&child.body["expiresOn"]) <= parent_end, "{child:?}");
    assert_eq!(child.body["parentId"], made["id"], "{child:?}");
    let child_token = child.body["token"].as_str().expect("token").to_owned();
    let grandchild = mint(&s, &child_token, "alice", json!({"expiresIn": "PT1M"})).await;
    assert_eq!(grandchild.status, StatusCode::CREATED, "{grandchild:?}");
    let grandchild_token = grandchild.body["token"].as_str().expect("token").to_owned();
    // An empty body is the same as {}.
    let bare = as_user(&s, &parent, Method::POST, &s.url("/api/v1/principals/alice/tokens"), None).await;
    assert_eq!(bare.status, StatusCode::CREATED, "{bare:?}");
    assert!(time_of(&bare.body["expiresOn"]) <= parent_end);
    let bare_token = bare.body["token"].as_str().expect("token").to_owned();
    assert_eq!(whoami_status(&s, &grandchild_token).await, StatusCode::OK);

    // Revoking the parent revokes everything it made, at once.
    let a = as_user(&s, &parent, Method::DELETE, &s.url(&format!("/api/v1/tokens/{}", made["id"])), None).await;
    assert_eq!(a.status, StatusCode::OK, "one's own token: {a:?}");
    for (what, t) in
        [("parent", &parent), ("child", &child_token), ("grandchild", &grandchild_token), ("bare", &bare_token)]
    {
        let a = as_user(&s, t, Method::GET, &s.url("/api/v1/roleDefinitions"), None).await;
        assert_eq!((a.status, a.code()), (StatusCode::UNAUTHORIZED, "InvalidAuthenticationToken"), "{what}: {a:?}");
    }
    let listed = tokens_of(&s, "alice").await;
    assert!(listed.iter().all(|t| t["revoked"] == true), "{listed:?}");
    let audit = s.audit(&format!("resourceId=/api/v1/tokens/{}", made["id"])).await;
    let revocation = audit.last().cloned().unwrap_or(Value::Null);
    assert_eq!(revocation["properties"]["revokedDescendantTokens"], "3", "{audit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_made_by_a_token_stop_working_when_it_expires() {
    let s = TestServer::start(BIN, &[]);
    let (parent, made) = principal_with_token(&s, "bob", "PT2S").await;
    let child = mint(&s, &parent, "bob", json!({})).await;
    assert_eq!(child.status, StatusCode::CREATED, "{child:?}");
    assert!(time_of(&child.body["expiresOn"]) <= time_of(&made["expiresOn"]));
    let child_token = child.body["token"].as_str().expect("token").to_owned();
    assert_eq!(whoami_status(&s, &child_token).await, StatusCode::OK);
    let wait = time_of(&made["expiresOn"]) - OffsetDateTime::now_utc() + time::Duration::milliseconds(100);
    tokio::time::sleep(std::time::Duration::from_millis(wait.whole_milliseconds().clamp(0, 3000) as u64)).await;
    assert_eq!(whoami_status(&s, &parent).await, StatusCode::UNAUTHORIZED, "the parent expired");
    assert_eq!(whoami_status(&s, &child_token).await, StatusCode::UNAUTHORIZED, "and its child with it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_minted_with_an_id_token_ends_no_later_than_the_id_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let idp = Idp::new(dir.path());
    let s = TestServer::start(BIN, &idp.flags(ISSUER));
    let id_token = idp.id_token(ISSUER, "u-20", 120, json!({"preferred_username": "ida"}));
    let exp = OffsetDateTime::now_utc().unix_timestamp() + 120;
    assert_eq!(whoami_status(&s, &id_token).await, StatusCode::OK);
    let name = oidc_principal(&s, "u-20").await["name"].as_str().expect("name").to_owned();

    for long in ["P36500D", "PT1H"] {
        let a = mint(&s, &id_token, &name, json!({"expiresIn": long})).await;
        assert_eq!((a.status, a.code()), (StatusCode::BAD_REQUEST, "TokenLifetimeTooLong"), "{long}: {a:?}");
    }
    let a = mint(&s, &id_token, &name, json!({})).await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
    assert!(time_of(&a.body["expiresOn"]).unix_timestamp() <= exp, "{a:?}");
    assert_eq!((a.body["createdWith"].as_str(), a.body["parentId"].as_i64()), (Some("idToken"), None));
    let a = mint(&s, &id_token, &name, json!({"expiresIn": "PT1M"})).await;
    assert_eq!(a.status, StatusCode::CREATED, "within the ID token's life: {a:?}");

    // A jg_ token made with an ID token stops working when the ID token expires (the server
    // accepts ID tokens a minute past exp as clock leeway; the jg_ token gets none).
    let brief = idp.id_token(ISSUER, "u-21", 2, json!({"preferred_username": "ivy"}));
    let brief_exp = OffsetDateTime::now_utc().unix_timestamp() + 2;
    assert_eq!(whoami_status(&s, &brief).await, StatusCode::OK);
    let ivy = oidc_principal(&s, "u-21").await["name"].as_str().expect("name").to_owned();
    let minted = mint(&s, &brief, &ivy, json!({})).await;
    assert_eq!(minted.status, StatusCode::CREATED, "{minted:?}");
    assert!(time_of(&minted.body["expiresOn"]).unix_timestamp() <= brief_exp);
    let jg = minted.body["token"].as_str().expect("token").to_owned();
    assert_eq!(whoami_status(&s, &jg).await, StatusCode::OK);
    let wait = time_of(&minted.body["expiresOn"]) - OffsetDateTime::now_utc() + time::Duration::milliseconds(100);
    tokio::time::sleep(std::time::Duration::from_millis(wait.whole_milliseconds().clamp(0, 3000) as u64)).await;
    assert_eq!(whoami_status(&s, &jg).await, StatusCode::UNAUTHORIZED, "ended with its ID token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_maximum_token_lifetime_bounds_every_token_and_unlimited_needs_the_operator() {
    // Default: 90 days, the first start's Owner token included.
    let s = TestServer::start(BIN, &[]);
    let now = OffsetDateTime::now_utc();
    let owner = tokens_of(&s, "owner").await;
    let boot = time_of(&owner[0]["expiresOn"]);
    assert!(boot > now + time::Duration::days(89) && boot <= now + time::Duration::days(90), "{owner:?}");
    assert_eq!(owner[0]["createdWith"], "server");
    assert!(s.server.stdout().contains("It expires at"), "the first start says so:\n{}", s.server.stdout());
    let a = mint(&s, &s.server.token, "owner", json!({"expiresIn": "P91D"})).await;
    assert_eq!((a.status, a.code()), (StatusCode::BAD_REQUEST, "TokenLifetimeTooLong"), "{a:?}");
    assert!(a.body["error"]["message"].as_str().unwrap_or("").contains("P90D"), "{a:?}");
    let a = mint(&s, &s.server.token, "owner", json!({})).await;
    assert!(time_of(&a.body["expiresOn"]) <= boot, "{a:?}");

    // --max-token-lifetime 1h.
    let s = TestServer::start(BIN, &["--max-token-lifetime", "1h"]);
    let now = OffsetDateTime::now_utc();
    let boot = time_of(&tokens_of(&s, "owner").await[0]["expiresOn"]);
    assert!(boot <= now + time::Duration::hours(1) && boot > now + time::Duration::minutes(59));
    let a = mint(&s, &s.server.token, "owner", json!({"expiresIn": "PT2H"})).await;
    assert_eq!((a.status, a.code()), (StatusCode::BAD_REQUEST, "TokenLifetimeTooLong"), "{a:?}");
    let a = mint(&s, &s.server.token, "owner", json!({"expiresIn": "PT30M"})).await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
    // The CLI prints the token alone on stdout and its expiry on stderr.
    let out = cli(BIN, &s, &["token", "create", "--principal", "owner", "--expires-in", "10m"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).trim().starts_with("jg_"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expires 20"), "{}", String::from_utf8_lossy(&out.stderr));
    let refused = cli(BIN, &s, &["token", "create", "--principal", "owner", "--expires-in", "2h"]);
    assert_eq!(refused.status.code(), Some(1), "{}", String::from_utf8_lossy(&refused.stderr));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("TokenLifetimeTooLong"));

    // Only the operator can allow tokens that never expire.
    let s = TestServer::start(BIN, &["--max-token-lifetime", "none"]);
    assert!(tokens_of(&s, "owner").await[0]["expiresOn"].is_null());
    let a = mint(&s, &s.server.token, "owner", json!({})).await;
    assert_eq!((a.status, a.body["expiresOn"].is_null()), (StatusCode::CREATED, true), "{a:?}");
    let a = mint(&s, &s.server.token, "owner", json!({"expiresIn": "P36500D"})).await;
    assert_eq!(a.status, StatusCode::CREATED, "{a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_can_be_given_a_new_token_by_a_restart_with_the_break_glass_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let first = LocalServer::start_in(Path::new(BIN), &data, &[]).expect("first start");
    let old = first.token.clone();
    drop(first);
    std::fs::remove_file(data.with_extension("admin-token")).expect("token file");
    let second = LocalServer::start_in(Path::new(BIN), &data, &["--reissue-owner-token", "--max-token-lifetime", "2h"])
        .expect("restart");
    let second = TestServer::from(second);
    let new = second.server.token.clone();
    assert!(new.starts_with("jg_") && new != old, "a new token is written: {new:?}");
    let stdout = second.server.stdout();
    assert!(stdout.contains(&new) && stdout.contains("It expires at"), "{stdout}");
    let newest = tokens_of(&second, "owner").await.last().cloned().expect("tokens");
    assert_eq!(newest["createdWith"], "server");
    assert!(time_of(&newest["expiresOn"]) <= OffsetDateTime::now_utc() + time::Duration::hours(2));
    let audit = second.audit("caller=jitgate").await;
    assert!(audit.iter().any(|r| r["properties"]["reason"] == "--reissue-owner-token"));
    drop(second);
    // Without the flag, a restart makes nothing.
    std::fs::remove_file(data.with_extension("admin-token")).expect("token file");
    let third = LocalServer::start_in(Path::new(BIN), &data, &[]).expect("restart");
    assert!(third.token.is_empty() && !third.stdout().contains("jg_"), "{}", third.stdout());
}
