//! Issue 9, findings 8, 14 and 15, end to end: webhooks are no server-side request forgery tool
//! (deny list at creation and delivery, https, no credentials, no redirects, a role to create
//! them, categories for non-admins), one webhook's deletion cannot silence another's deliveries,
//! and what the server keeps on disk is its owner's alone, with webhook secrets sealed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may panic on a failed expectation.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use jitgate_testkit::webhooks::{
    closed_url, create_webhook, events, receiver, receiver_answering, Seen, LOOPBACK_RECEIVERS,
};
use jitgate_testkit::{as_user, eventually, Answer, LocalServer, TestServer, SUB};

const BIN: &str = env!("CARGO_BIN_EXE_jitgate");

fn requests_seen(seen: &Seen, id: i64) -> Vec<String> {
    seen.lock()
        .map(|v| v.iter().filter(|e| e.body["requestId"] == id).map(|e| e.event.clone()).collect())
        .unwrap_or_default()
}

fn policy(vm: &str) -> Value {
    json!({"properties": {"virtualMachines": [{"id": vm, "ports": [
        {"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "*", "maxRequestAccessDuration": "PT3H"}]}]}})
}

fn initiate(vm: &str, source: &str) -> Value {
    json!({"virtualMachines": [{"id": vm, "ports": [{"number": 22, "duration": "PT10M", "allowedSourceAddressPrefix": source}]}]})
}

/// Initiates access to port 22 of `vm` from `source` on rg1's policy `default`, as the holder of
/// `token`.
async fn initiate_as(s: &TestServer, token: &str, vm: &str, source: &str) -> Answer {
    let url = s.initiate_url("rg1", "westeurope", "default");
    as_user(s, token, Method::POST, &url, Some(&initiate(vm, source))).await
}

/// A server that delivers to loopback receivers, with VM `vm` of rg1 under its policy `default`
/// and `alice`, a requester in the subscription; returns (server, VM id, alice's token).
async fn with_requester() -> (TestServer, String, String) {
    let s = TestServer::start(BIN, &LOOPBACK_RECEIVERS);
    let vm = s.register_vm("rg1", "vm", "Linux").await;
    let a = s.json(Method::PUT, &s.policy_url("rg1", "westeurope", "default"), &policy(&vm)).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let alice = s.principal_with_role("alice", "JIT Network Access Requester", &format!("/subscriptions/{SUB}")).await;
    (s, vm, alice)
}

async fn deliveries(s: &TestServer, token: &str, hook: &str) -> Vec<Value> {
    let a = as_user(s, token, Method::GET, &s.url(&format!("/api/v1/webhooks/{hook}/deliveries")), None).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    a.body["value"].as_array().cloned().unwrap_or_default()
}

async fn failed_records(s: &TestServer) -> usize {
    s.audit("status=Failed&top=1000").await.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_to_internal_destinations_credentials_or_plain_http_are_refused_by_default() {
    let s = TestServer::start(BIN, &[]);
    let (loopback_receiver, seen) = receiver("never-used-secret-0123");
    let port = loopback_receiver.split(':').nth(2).and_then(|p| p.split('/').next()).unwrap_or("1").to_owned();
    let refused = [
        // plain http, even to a public name
        "http://hooks.example.com/x".to_owned(),
        loopback_receiver.clone(),
        // loopback in its spellings
        format!("https://127.0.0.1:{port}/hook"),
        "https://2130706433/".into(),
        "https://0x7f.1/".into(),
        "https://0x7f000001/".into(),
        "https://0177.0.0.1/".into(),
        "https://127.1/".into(),
        "https://localhost/".into(),
        "https://LocalHost./".into(),
        "https://[::1]/".into(),
        "https://[::ffff:127.0.0.1]/".into(),
        // the cloud metadata address in every spelling
        "https://169.254.169.254/latest/meta-data/".into(),
        "https://[::ffff:169.254.169.254]/".into(),
        "https://[::ffff:a9fe:a9fe]/".into(),
        "https://2852039166/".into(),
        "https://0xa9fea9fe/".into(),
        "https://0xa9.0xfe.0xa9.0xfe/".into(),
        "https://0251.0376.0251.0376/".into(),
        "https://169.254.43518/".into(),
        "https://[64:ff9b::a9fe:a9fe]/".into(),
        "https://[fe80::1]/".into(),
        // private, shared, multicast, unspecified
        "https://10.0.0.1/".into(),
        "https://172.16.5.4/".into(),
        "https://192.168.1.1/".into(),
        "https://100.64.0.1/".into(),
        "https://[fd00::1]/".into(),
        "https://224.0.0.1/".into(),
        "https://0.0.0.0/".into(),
        "https://255.255.255.255/".into(),
        // credentials in the URL, and sloppy forms
        "https://user:pw@hooks.example.com/".into(),
        "https://user@hooks.example.com/".into(),
        "https:hooks.example.com/".into(),
        "https://hooks.example.com/\\@127.0.0.1/".into(),
        "ftp://hooks.example.com/".into(),
        format!("https://hooks.example.com/{}", "a".repeat(3000)),
    ];
    let owner = &s.server.token;
    let before = failed_records(&s).await;
    for url in &refused {
        let a = create_webhook(&s, owner, json!({"subscription": SUB, "url": url})).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{url}: {a:?}");
        assert_eq!(a.code(), "InvalidWebhook", "{url}");
        assert_eq!(a.body["error"]["target"], "url", "{url}");
        assert!(a.body["error"]["message"].as_str().unwrap_or("").len() < 1000, "bounded message");
        let own = create_webhook(&s, owner, json!({"principal": "owner", "url": url})).await;
        assert_eq!(own.status, StatusCode::BAD_REQUEST, "{url}: {own:?}");
    }
    assert_eq!(failed_records(&s).await, before + 2 * refused.len(), "every refusal is audited");
    let listed = s.send(Method::GET, &s.url("/api/v1/webhooks"), None).await;
    assert_eq!(listed.body["value"], json!([]), "nothing was created");
    // A public https receiver is fine; the stored URL is the normalised one.
    let ok = create_webhook(&s, owner, json!({"subscription": SUB, "url": "HTTPS://Hooks.Example.COM/x"})).await;
    assert_eq!(ok.status, StatusCode::CREATED, "{ok:?}");
    assert_eq!(ok.body["url"], "https://hooks.example.com/x");
    assert!(events(&seen).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_webhooks_needs_a_notification_right() {
    let s = TestServer::start(BIN, &[]);
    let url = "https://hooks.example.com/x";
    let rg = format!("/subscriptions/{SUB}/resourceGroups/rg1");
    let nobody = s.principal("nobody").await;
    let reader = s.principal_with_role("reader", "Reader", "/").await;
    let requester = s.principal_with_role("requester", "JIT Network Access Requester", &rg).await;
    let secadmin = s.principal_with_role("secadmin", "Security Admin", &format!("/subscriptions/{SUB}")).await;
    // No role at all, or only reading: nothing, not even about one's own requests.
    for (token, name) in [(&nobody, "nobody"), (&reader, "reader")] {
        let a = create_webhook(&s, token, json!({"principal": name, "url": url})).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{name}: {a:?}");
        assert_eq!(a.code(), "AuthorizationFailed");
        assert!(a.body["error"]["message"].as_str().unwrap_or("").contains("webhooks/notifyOwn/action"), "{a:?}");
    }
    // The requester: about its own requests only.
    let own = create_webhook(&s, &requester, json!({"principal": "requester", "url": url})).await;
    assert_eq!(own.status, StatusCode::CREATED, "{own:?}");
    for body in [json!({"subscription": SUB, "url": url}), json!({"principal": "secadmin", "url": url})] {
        let a = create_webhook(&s, &requester, body.clone()).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{body}: {a:?}");
    }
    // A security admin of the subscription: every request there, but not another subscription's.
    let sub = create_webhook(&s, &secadmin, json!({"subscription": SUB, "url": url})).await;
    assert_eq!(sub.status, StatusCode::CREATED, "{sub:?}");
    let other =
        create_webhook(&s, &secadmin, json!({"subscription": "00000000-0000-4000-8000-000000000001", "url": url}))
            .await;
    assert_eq!(other.status, StatusCode::FORBIDDEN);
    // Deleting: one's own always; someone else's subscription webhook needs the delete right.
    let sub_id = sub.body["id"].as_str().expect("id");
    let denied = as_user(&s, &requester, Method::DELETE, &s.url(&format!("/api/v1/webhooks/{sub_id}")), None).await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    let own_id = own.body["id"].as_str().expect("id");
    let gone = as_user(&s, &requester, Method::DELETE, &s.url(&format!("/api/v1/webhooks/{own_id}")), None).await;
    assert_eq!(gone.status, StatusCode::OK, "{gone:?}");
    let long =
        as_user(&s, &secadmin, Method::DELETE, &s.url(&format!("/api/v1/webhooks/{}", "x".repeat(5000))), None).await;
    assert_eq!(long.status, StatusCode::NOT_FOUND, "{long:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_not_followed_and_requesters_see_only_the_category_of_a_failure() {
    let (s, vm, alice) = with_requester().await;
    let (elsewhere, elsewhere_seen) = receiver("admin-secret-0123456789");
    let (redirecting, redirect_seen) = receiver_answering(
        "admin-secret-0123456789",
        format!("HTTP/1.1 307 Temporary Redirect\r\nLocation: {elsewhere}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    );
    let body =
        json!({"subscription": SUB, "url": redirecting, "secret": "admin-secret-0123456789", "events": ["requested"]});
    let admin = create_webhook(&s, &s.server.token, body).await;
    assert_eq!(admin.status, StatusCode::CREATED, "{admin:?}");
    let own =
        create_webhook(&s, &alice, json!({"principal": "alice", "url": closed_url(), "events": ["requested"]})).await;
    assert_eq!(own.status, StatusCode::CREATED, "{own:?}");
    let granted = initiate_as(&s, &alice, &vm, "203.0.113.4").await;
    assert_eq!(granted.status, StatusCode::ACCEPTED);

    let (admin_id, own_id) = (admin.body["id"].as_str().expect("id"), own.body["id"].as_str().expect("id"));
    let token = s.server.token.clone();
    let tried = eventually(Duration::from_secs(10), async || {
        let a = deliveries(&s, &token, admin_id).await;
        let o = deliveries(&s, &alice, own_id).await;
        a.first().is_some_and(|d| d["attempts"].as_u64() >= Some(1))
            && o.first().is_some_and(|d| d["attempts"].as_u64() >= Some(1))
    })
    .await;
    assert!(tried, "both deliveries were attempted");
    assert_eq!(events(&redirect_seen), ["requested"], "the receiver got the signed POST");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(events(&elsewhere_seen).is_empty(), "the 307 was not followed: the signed body went nowhere else");
    let a = deliveries(&s, &token, admin_id).await;
    let detail = a[0]["lastError"].as_str().unwrap_or("");
    assert!(
        detail.starts_with("HttpStatus: ") && detail.contains("307"),
        "the administrator sees the detail: {detail}"
    );
    assert_eq!(a[0]["state"], "Pending", "a redirect is a failed attempt, retried later");
    // The requester sees what kind of failure, not whether or how some host answered.
    let mine = deliveries(&s, &alice, own_id).await;
    assert_eq!(mine[0]["lastError"], "ConnectionFailed", "{mine:?}");
    let as_admin = deliveries(&s, &token, own_id).await;
    let full = as_admin[0]["lastError"].as_str().unwrap_or("");
    assert!(full.starts_with("ConnectionFailed: ") && full.len() > "ConnectionFailed: ".len(), "{full}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destinations_are_checked_again_at_every_delivery() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut first = TestServer::from(LocalServer::start_in(Path::new(BIN), &data, &LOOPBACK_RECEIVERS).expect("start"));
    let token = first.server.token.clone();
    let (url, seen) = receiver("delivery-time-secret-0123");
    let body = json!({"subscription": SUB, "url": url, "secret": "delivery-time-secret-0123"});
    let hook = create_webhook(&first, &token, body).await;
    let hook_id = hook.body["id"].as_str().expect("created").to_owned();
    assert!(first.server.stop().expect("stop"));

    // The operator takes the loopback range back: the stored webhook is refused at delivery.
    let s = TestServer::from(LocalServer::start_in(Path::new(BIN), &data, &["--webhook-allow-http"]).expect("restart"));
    let vm = s.register_vm("rg1", "vm", "Linux").await;
    s.json(Method::PUT, &s.policy_url("rg1", "westeurope", "default"), &policy(&vm)).await;
    let granted =
        s.json(Method::POST, &s.initiate_url("rg1", "westeurope", "default"), &initiate(&vm, "203.0.113.4")).await;
    assert_eq!(granted.status, StatusCode::ACCEPTED);
    let blocked = eventually(Duration::from_secs(10), async || {
        deliveries(&s, &token, &hook_id)
            .await
            .iter()
            .any(|d| d["lastError"].as_str().unwrap_or("").starts_with("Blocked: "))
    })
    .await;
    assert!(blocked, "{:?}", deliveries(&s, &token, &hook_id).await);
    let d = deliveries(&s, &token, &hook_id).await;
    assert!(d.iter().any(|d| d["lastError"].as_str().unwrap_or("").contains("loopback")), "{d:?}");
    assert!(events(&seen).is_empty(), "nothing reached the receiver");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_webhook_cannot_silence_the_deliveries_of_another() {
    let (s, vm, alice) = with_requester().await;
    let (admin_url, admin_seen) = receiver("admin-secret-0123456789");
    let body = json!({"subscription": SUB, "url": admin_url, "secret": "admin-secret-0123456789"});
    let admin = create_webhook(&s, &s.server.token, body).await;
    assert_eq!(admin.status, StatusCode::CREATED, "{admin:?}");
    // The requester's own webhook points at an address that always fails.
    let own = create_webhook(&s, &alice, json!({"principal": "alice", "url": closed_url()})).await;
    assert_eq!(own.status, StatusCode::CREATED, "{own:?}");
    let own_id = own.body["id"].as_str().expect("id").to_owned();

    let first = initiate_as(&s, &alice, &vm, "203.0.113.4").await;
    let first_id = first.body["id"].as_i64().expect("id");
    let attempted = eventually(Duration::from_secs(10), async || {
        let d = deliveries(&s, &alice, &own_id).await;
        d.len() == 2 && d.iter().all(|d| d["attempts"].as_u64() >= Some(1))
    })
    .await;
    assert!(attempted, "the failing deliveries were tried");
    let gone = as_user(&s, &alice, Method::DELETE, &s.url(&format!("/api/v1/webhooks/{own_id}")), None).await;
    assert_eq!(gone.status, StatusCode::OK);

    let second = initiate_as(&s, &alice, &vm, "203.0.113.5").await;
    let second_id = second.body["id"].as_i64().expect("id");
    let heard = eventually(Duration::from_secs(10), async || {
        let mut e = requests_seen(&admin_seen, second_id);
        e.sort();
        e == ["opened", "requested"]
    })
    .await;
    let mut first_events = requests_seen(&admin_seen, first_id);
    first_events.sort();
    assert_eq!(first_events, ["opened", "requested"]);
    assert!(heard, "the administrator hears of the second request: {:?}", events(&admin_seen));
    let token = s.server.token.clone();
    let admin_id = admin.body["id"].as_str().expect("id");
    // The receiver hears an event a moment before the worker records the attempt: wait for that.
    let settled = eventually(Duration::from_secs(10), async || {
        let all = deliveries(&s, &token, admin_id).await;
        all.len() == 4 && all.iter().all(|d| d["state"] == "Delivered")
    })
    .await;
    let all = deliveries(&s, &token, admin_id).await;
    assert!(settled, "four deliveries, none left pending: {all:?}");
    let mut ids: Vec<i64> = all.iter().filter_map(|d| d["id"].as_i64()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 4);
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_private_in_an_open_data_directory_and_wrong_modes_are_tightened() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("mkdir");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).expect("chmod 755");
    let mut s = TestServer::from(LocalServer::start_in(Path::new(BIN), &data, &[]).expect("start"));
    let put = s
        .json(
            Method::PUT,
            &s.url("/api/v1/vms"),
            &json!({"id": jitgate_testkit::vm_id("rg", "vm"), "osType": "Linux", "location": "westeurope"}),
        )
        .await;
    assert!(put.status.is_success());
    let files: Vec<PathBuf> =
        ["jitgate.db", "jitgate.db-wal", "jitgate.db-shm", "secrets.key", "tls/key.pem", "tls/cert.pem"]
            .iter()
            .map(|f| data.join(f))
            .chain([data.with_extension("admin-token")])
            .collect();
    for f in &files {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
    assert_eq!(mode(&data.join("tls")), 0o700);
    assert_eq!(mode(&data), 0o755, "the directory is the operator's: warned about, not changed");
    assert!(s.server.stop().expect("stop"));

    // A database left readable by an older version is tightened at the next start, and said so.
    std::fs::set_permissions(data.join("jitgate.db"), std::fs::Permissions::from_mode(0o644)).expect("chmod");
    std::fs::set_permissions(data.join("tls/key.pem"), std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let stderr = serve_until_listening(&data);
    assert!(stderr.contains("data directory") && stderr.contains("0755"), "warned about the directory: {stderr}");
    assert!(stderr.contains("jitgate.db was mode 0644"), "said what it tightened: {stderr}");
    assert_eq!(mode(&data.join("jitgate.db")), 0o600);
    assert_eq!(mode(&data.join("tls/key.pem")), 0o600);
}

/// `jitgate serve` on `data`, on a free loopback port.
fn serve(data: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(BIN);
    cmd.arg("serve").arg("--data-dir").arg(data).args(["--listen", "127.0.0.1:0"]);
    cmd
}

/// Runs `jitgate serve` on `data` until it listens, stops it, and returns what it wrote on stderr.
#[cfg(unix)]
fn serve_until_listening(data: &Path) -> String {
    use std::process::Stdio;
    let log = tempfile::NamedTempFile::new().expect("log file");
    let mut child =
        serve(data).stdout(Stdio::piped()).stderr(Stdio::from(log.reopen().expect("reopen"))).spawn().expect("serve");
    let stdout = child.stdout.take().expect("stdout");
    let listening = BufReader::new(stdout).lines().map_while(Result::ok).any(|l| l.starts_with("jitgate listening on"));
    let _ = child.kill();
    let _ = child.wait();
    assert!(listening, "the server started");
    std::fs::read_to_string(log.path()).unwrap_or_default()
}

fn db_holds(data: &Path, needle: &str) -> bool {
    ["jitgate.db", "jitgate.db-wal"].iter().any(|f| {
        let bytes = std::fs::read(data.join(f)).unwrap_or_default();
        bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_secrets_are_sealed_a_wrong_key_stops_the_start_and_rotation_keeps_webhooks_working() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let secret = "sealed-webhook-secret-0123456789";
    let (url, seen) = receiver("sealed-webhook-secret-0123456789");
    let s = TestServer::from(LocalServer::start_in(Path::new(BIN), &data, &LOOPBACK_RECEIVERS).expect("start"));
    let token = s.server.token.clone();
    let made = create_webhook(&s, &token, json!({"subscription": SUB, "url": url, "secret": secret})).await;
    assert_eq!(made.status, StatusCode::CREATED, "{made:?}");
    assert_eq!(made.body["secret"], secret, "shown once, in the clear");
    assert!(!db_holds(&data, secret), "the secret is not in the database files");

    // Rotation is refused while the server runs.
    let rotate = || {
        std::process::Command::new(BIN).args(["secrets", "rotate", "--data-dir"]).arg(&data).output().expect("rotate")
    };
    let busy = rotate();
    assert!(!busy.status.success());
    assert!(
        String::from_utf8_lossy(&busy.stderr).contains("stop it first"),
        "{}",
        String::from_utf8_lossy(&busy.stderr)
    );
    let mut server = s.server;
    assert!(server.stop().expect("stop"));
    let key_before = std::fs::read_to_string(data.join("secrets.key")).expect("key file");

    // A wrong key stops the start with an error that names the problem.
    let wrong = dir.path().join("wrong.key");
    let generated = std::process::Command::new(BIN).args(["secrets", "generate"]).output().expect("generate");
    std::fs::write(&wrong, &generated.stdout).expect("write");
    let started = serve(&data).arg("--secrets-key-file").arg(&wrong).output().expect("serve");
    assert!(!started.status.success(), "the server does not start with the wrong key");
    let err = String::from_utf8_lossy(&started.stderr);
    assert!(err.contains("secrets key") && err.contains("not the one"), "{err}");
    let by_env = serve(&data)
        .env("JITGATE_SECRETS_KEY", String::from_utf8_lossy(&generated.stdout).trim())
        .output()
        .expect("serve");
    assert!(!by_env.status.success());
    assert!(String::from_utf8_lossy(&by_env.stderr).contains("JITGATE_SECRETS_KEY"), "names where the key came from");

    // Rotation: a new key, every secret re-sealed, the old key retired; webhooks keep working.
    let rotated = rotate();
    assert!(rotated.status.success(), "{}", String::from_utf8_lossy(&rotated.stderr));
    let key_after = std::fs::read_to_string(data.join("secrets.key")).expect("key file");
    assert_ne!(key_before, key_after);
    let old_key = key_before.lines().find(|l| !l.starts_with('#')).expect("a key line");
    assert!(!key_after.contains(old_key), "the old key is retired from the file");
    #[cfg(unix)]
    assert_eq!(mode(&data.join("secrets.key")), 0o600);
    assert!(!db_holds(&data, secret));
    let old_only = dir.path().join("old.key");
    std::fs::write(&old_only, &key_before).expect("write");
    let with_old = serve(&data).arg("--secrets-key-file").arg(&old_only).output().expect("serve");
    assert!(!with_old.status.success(), "the retired key opens nothing any more");

    let s = TestServer::from(LocalServer::start_in(Path::new(BIN), &data, &LOOPBACK_RECEIVERS).expect("restart"));
    let vm = s.register_vm("rg1", "vm", "Linux").await;
    s.json(Method::PUT, &s.policy_url("rg1", "westeurope", "default"), &policy(&vm)).await;
    let granted = initiate_as(&s, &token, &vm, "203.0.113.9").await;
    assert_eq!(granted.status, StatusCode::ACCEPTED);
    let delivered = eventually(Duration::from_secs(10), async || events(&seen).len() >= 2).await;
    assert!(delivered, "{:?}", events(&seen));
    assert!(seen.lock().expect("lock").iter().all(|e| e.valid), "signed with the same secret after the rotation");
    let audit = s.audit("operation=jitgate/secrets/seal/action").await;
    assert_eq!(audit.len(), 1, "the rotation is in the audit log: {audit:?}");
}
