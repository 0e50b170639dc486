//! Running jitgate in production: the config file and its precedence as the binary sees it,
//! request spans in the JSON logs, and 413 answers to bodies over the limit.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may panic on a failed expectation.

use std::path::Path;
use std::process::{Command, Output};

use tokio::io::AsyncWriteExt;

use jitgate_testkit::{as_user, LocalServer, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_jitgate");

/// `jitgate ARGS` with exactly the environment `env` (nothing inherited).
fn jitgate(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(BIN);
    c.env_clear().args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("jitgate runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The line of `key` in a `--print-config` output.
fn setting<'a>(printed: &'a str, key: &str) -> &'a str {
    let prefix = format!("{key} = ");
    printed.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("no {key} in:\n{printed}"))
}

const FILE: &str = r#"
listen = "127.0.0.1:7001"
list_page_size = 11
server_timing = true
tls_san = ["file-a", "file-b"]
public_url = "https://file.example"
max_body_bytes = 4096
webhook_allow_http = true
trusted_proxy = ["10.0.0.0/8"]
"#;

#[test]
fn flags_win_over_the_environment_which_wins_over_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jitgate.toml");
    std::fs::write(&file, FILE).unwrap();
    let f = file.to_str().unwrap();
    let env = [
        // string, number, list and bool from the environment…
        ("JITGATE_LISTEN", "127.0.0.1:7002"),
        ("JITGATE_LIST_PAGE_SIZE", "12"),
        ("JITGATE_TLS_SAN", "env-a,env-b"),
        ("JITGATE_SERVER_TIMING", "false"),
        // …and the same kinds again, where a flag also says something.
        ("JITGATE_PUBLIC_URL", "https://env.example"),
        ("JITGATE_MAX_BODY_BYTES", "8192"),
        ("JITGATE_TRUSTED_PROXY", "10.1.0.0/16"),
        ("JITGATE_WEBHOOK_ALLOW_HTTP", "false"),
    ];
    let flags = [
        "serve",
        "--config",
        f,
        "--print-config",
        "--public-url",
        "https://flag.example",
        "--max-body-bytes",
        "16384",
        "--trusted-proxy",
        "10.2.0.0/16",
        "--webhook-allow-http",
    ];
    // The file alone.
    let o = jitgate(&["serve", "--config", f, "--print-config"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert_eq!(setting(&out, "listen"), "listen = \"127.0.0.1:7001\"  # file");
    assert_eq!(setting(&out, "list_page_size"), "list_page_size = 11  # file");
    assert_eq!(setting(&out, "tls_san"), "tls_san = [\"file-a\", \"file-b\"]  # file");
    assert_eq!(setting(&out, "server_timing"), "server_timing = true  # file");
    assert_eq!(setting(&out, "lease_ttl"), "lease_ttl = \"15s\"  # default");
    // The environment over the file.
    let o = jitgate(&["serve", "--config", f, "--print-config"], &env);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert_eq!(setting(&out, "listen"), "listen = \"127.0.0.1:7002\"  # env JITGATE_LISTEN");
    assert_eq!(setting(&out, "list_page_size"), "list_page_size = 12  # env JITGATE_LIST_PAGE_SIZE");
    assert_eq!(setting(&out, "tls_san"), "tls_san = [\"env-a\", \"env-b\"]  # env JITGATE_TLS_SAN");
    assert_eq!(setting(&out, "server_timing"), "server_timing = false  # env JITGATE_SERVER_TIMING");
    // Flags over both.
    let o = jitgate(&flags, &env);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert_eq!(setting(&out, "public_url"), "public_url = \"https://flag.example\"  # flag");
    assert_eq!(setting(&out, "max_body_bytes"), "max_body_bytes = 16384  # flag");
    assert_eq!(setting(&out, "trusted_proxy"), "trusted_proxy = [\"10.2.0.0/16\"]  # flag");
    assert_eq!(setting(&out, "webhook_allow_http"), "webhook_allow_http = true  # flag");
    // The config file itself may come from the environment.
    let o = jitgate(&["serve", "--print-config"], &[("JITGATE_CONFIG_FILE", f)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(setting(&stdout(&o), "listen"), "listen = \"127.0.0.1:7001\"  # file");
}

#[test]
fn the_binary_refuses_an_unknown_key_and_a_wrong_type_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jitgate.toml");
    std::fs::write(&file, "listen = \"127.0.0.1:0\"\nlisten_adress = \"x\"\n").unwrap();
    let o = jitgate(&["serve", "--config", file.to_str().unwrap()], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("unknown key `listen_adress`") && e.contains(file.to_str().unwrap()), "{e}");
    std::fs::write(&file, "[listen]\nport = 1\n").unwrap();
    let o = jitgate(&["serve", "--config", file.to_str().unwrap()], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("key `listen` must be a string or a number, not a table"), "{}", stderr(&o));
    // Nothing was started: no data directory was made.
    assert!(!dir.path().join("jitgate-data").exists());
}

#[test]
fn print_config_masks_the_database_password_and_reads_back_as_config() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("JITGATE_DATABASE_URL", "postgres://jit:hunter2-secret@db.example:5432/jit")];
    let o = jitgate(&["serve", "--print-config", "--listen", "127.0.0.1:7003", "--tls-san", "a,b"], &env);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(!out.contains("hunter2"), "{out}");
    assert_eq!(
        setting(&out, "database_url"),
        "database_url = \"postgres://jit:********@db.example:5432/jit\"  # env JITGATE_DATABASE_URL, masked"
    );
    let file = dir.path().join("printed.toml");
    std::fs::write(&file, &out).unwrap();
    let o = jitgate(&["serve", "--config", file.to_str().unwrap(), "--print-config"], &[]);
    assert!(o.status.success(), "the printed settings are a valid config file: {}", stderr(&o));
    let again = stdout(&o);
    let values = |s: &str| -> Vec<String> {
        s.lines().filter(|l| !l.starts_with('#')).map(|l| l.split("  #").next().unwrap().to_owned()).collect()
    };
    assert_eq!(values(&out), values(&again));
    assert_eq!(setting(&again, "listen"), "listen = \"127.0.0.1:7003\"  # file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_runs_with_the_settings_of_its_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jitgate.toml");
    std::fs::write(&file, "max_body_bytes = 2048\nserver_timing = true\n").unwrap();
    let s = TestServer::start(BIN, &["--config", file.to_str().unwrap()]);
    let big = vec![b' '; 4096];
    let a = s.send(Method::PUT, &s.policy_url("rg1", "westeurope", "p"), Some(&big)).await;
    assert_eq!((a.status, a.code()), (StatusCode::PAYLOAD_TOO_LARGE, "RequestEntityTooLarge"), "{a:?}");
    assert!(a.headers.contains_key("server-timing"), "server_timing = true from the file: {:?}", a.headers);
}

/// The JSON log lines of a server's stderr.
fn log_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_in_the_json_log_names_its_request_route_and_caller() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serve.log");
    let server = LocalServer::start_logging(Path::new(BIN), &["--log-format", "json"], &log).unwrap();
    let s = TestServer::from(server);
    let token = s.principal("mallory").await;
    let url = s.policy_url("rg1", "westeurope", "default");
    let a = as_user(&s, &token, Method::GET, &url, None).await;
    assert_eq!((a.status, a.code()), (StatusCode::FORBIDDEN, "AuthorizationFailed"), "{a:?}");
    let correlation = a.headers["x-ms-correlation-request-id"].to_str().unwrap().to_owned();
    let request = a.headers["x-ms-request-id"].to_str().unwrap().to_owned();
    let lines = log_lines(&log);
    let refusal = lines
        .iter()
        .find(|l| l["fields"]["message"] == "refused" && l["span"]["correlation_id"] == correlation.as_str())
        .unwrap_or_else(|| panic!("no refusal line for {correlation}:\n{lines:#?}"));
    assert_eq!(refusal["fields"]["status"], 403, "{refusal}");
    assert_eq!(refusal["fields"]["code"], "AuthorizationFailed", "{refusal}");
    let span = &refusal["span"];
    assert_eq!(span["name"], "request", "{refusal}");
    assert_eq!(span["request_id"], request.as_str(), "{refusal}");
    assert_eq!(span["route"], "arm.get", "{refusal}");
    assert_eq!(span["caller"], "mallory", "{refusal}");
    assert_eq!(span["method"], "GET", "{refusal}");
    // A native route is named as registered, not by its raw path; the client's request id is the
    // correlation id.
    let url = s.url("/api/v1/requests/424242");
    let a = s.send_with(Method::GET, &url, None, &[("x-ms-client-request-id", "trace-me-42")]).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{a:?}");
    let lines = log_lines(&log);
    let line = lines
        .iter()
        .find(|l| l["fields"]["message"] == "refused" && l["span"]["correlation_id"] == "trace-me-42")
        .unwrap_or_else(|| panic!("no line for trace-me-42:\n{lines:#?}"));
    assert_eq!(line["span"]["route"], "/api/v1/requests/{id}", "{line}");
    assert!(line["span"]["caller"].is_null(), "not signed in: {line}");
}

/// A client that trusts the server's certificate, HTTP/1.1 only or HTTP/2 as the server offers.
fn client(ca: &Path, http1_only: bool) -> reqwest::Client {
    let pem = std::fs::read(ca).unwrap();
    let builder =
        reqwest::Client::builder().use_rustls_tls().add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap());
    let builder = if http1_only { builder.http1_only() } else { builder };
    builder.build().unwrap()
}

const TEN_MB: usize = 10 * 1024 * 1024;

/// A 10 MB body without Content-Length: chunked over HTTP/1.1, DATA frames over HTTP/2.
fn streamed() -> reqwest::Body {
    let chunks = (0..TEN_MB / 65536).map(|_| Ok::<_, std::io::Error>(vec![b' '; 65536]));
    reqwest::Body::wrap_stream(futures_util::stream::iter(chunks))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_megabyte_body_is_answered_413_not_reset() {
    let s = TestServer::start(BIN, &[]);
    let url = s.policy_url("rg1", "westeurope", "default");
    let auth = format!("Bearer {}", s.server.token);
    for (http1_only, version) in [(true, reqwest::Version::HTTP_11), (false, reqwest::Version::HTTP_2)] {
        let c = client(&s.server.ca_cert, http1_only);
        for chunked in [false, true] {
            let body = if chunked { streamed() } else { reqwest::Body::from(vec![b' '; TEN_MB]) };
            let resp = c
                .put(&url)
                .header("Authorization", &auth)
                .header("Content-Type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap_or_else(|e| panic!("{version:?} chunked={chunked}: no answer: {e:?}"));
            assert_eq!(resp.version(), version);
            assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE, "{version:?} chunked={chunked}");
            let body: Value = resp.json().await.unwrap_or_else(|e| panic!("{version:?} chunked={chunked}: {e:?}"));
            assert_eq!(body["error"]["code"], "RequestEntityTooLarge", "{body}");
            assert!(body["error"]["message"].as_str().unwrap().contains("1048576 bytes"), "{body}");
        }
        // A caller without a token is answered too, though its body is never looked at.
        let resp = c.put(&url).body(vec![b' '; TEN_MB]).send().await.expect("an answer, not a reset");
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "AuthenticationFailed", "{body}");
        // The connection still serves.
        let ok = c.get(s.url("/healthz")).send().await.unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
    }
}

/// Writes a whole 10 MB PUT (with Content-Length, or chunked) before reading anything, as a
/// simple client does, then reads the answer: its head and body.
async fn put_then_read(s: &TestServer, url: &str, chunked: bool) -> std::io::Result<(String, String)> {
    let path = url.trim_start_matches(&s.server.url);
    let mut conn = jitgate_testkit::raw_tls(s).await?;
    let length = if chunked { "Transfer-Encoding: chunked".to_owned() } else { format!("Content-Length: {TEN_MB}") };
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\n{length}\r\n\r\n",
        s.server.token
    );
    conn.write_all(head.as_bytes()).await?;
    let piece = vec![b' '; 65536];
    for _ in 0..TEN_MB / piece.len() {
        if chunked {
            conn.write_all(format!("{:x}\r\n", piece.len()).as_bytes()).await?;
            conn.write_all(&piece).await?;
            conn.write_all(b"\r\n").await?;
        } else {
            conn.write_all(&piece).await?;
        }
    }
    if chunked {
        conn.write_all(b"0\r\n\r\n").await?;
    }
    conn.flush().await?;
    let (head, body) = jitgate_testkit::read_http_answer(&mut conn).await?;
    Ok((head, String::from_utf8_lossy(&body).into_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_sends_all_ten_megabytes_before_reading_gets_the_413() {
    let s = TestServer::start(BIN, &[]);
    let url = s.policy_url("rg1", "westeurope", "default");
    for chunked in [false, true] {
        let (head, body) =
            put_then_read(&s, &url, chunked).await.unwrap_or_else(|e| panic!("chunked={chunked}: {e:?}"));
        assert!(head.starts_with("HTTP/1.1 413"), "chunked={chunked}: {head}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"]["code"], "RequestEntityTooLarge", "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_over_http2_gets_the_413_for_a_ten_megabyte_body() {
    if Command::new("curl").arg("--version").output().is_err() {
        return jitgate_netns::skip("curl_over_http2_gets_the_413_for_a_ten_megabyte_body", "curl is not installed");
    }
    let s = TestServer::start(BIN, &[]);
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body.json");
    std::fs::write(&body, vec![b' '; TEN_MB]).unwrap();
    let url = s.policy_url("rg1", "westeurope", "default");
    for version in ["--http2", "--http1.1"] {
        let out = Command::new("curl")
            .args(["-sS", version, "-X", "PUT", "--data-binary"])
            .arg(format!("@{}", body.display()))
            .arg("--cacert")
            .arg(&s.server.ca_cert)
            .args(["-H", &format!("Authorization: Bearer {}", s.server.token), "-H", "Content-Type: application/json"])
            .args(["-w", "\n%{http_code} %{http_version}", &url])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{version}: {text}{}", String::from_utf8_lossy(&out.stderr));
        let (json, status) = text.rsplit_once('\n').unwrap();
        let want = if version == "--http2" { "413 2" } else { "413 1.1" };
        assert_eq!(status, want, "{text}");
        let json: Value = serde_json::from_str(json).unwrap();
        assert_eq!(json["error"]["code"], "RequestEntityTooLarge", "{json}");
    }
}
