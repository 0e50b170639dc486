//! The README's curl walkthrough, run as written against a fresh server, so it never rots.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may panic on a failed expectation.

use std::process::Command;

use jitgate_testkit::TestServer;

const BIN: &str = env!("CARGO_BIN_EXE_jitgate");

fn walkthrough() -> String {
    section("## Five-minute walkthrough (curl)")
}

/// The first bash block after `heading`.
fn section(heading: &str) -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).expect("README");
    let section = readme.split(heading).nth(1).expect("walkthrough section");
    let block = section.split("```bash").nth(1).expect("bash block");
    block.split("```").next().expect("block end").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_walkthrough_runs_as_written() {
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("SKIPPED the_readme_walkthrough_runs_as_written: curl is not installed");
        return;
    }
    let s = TestServer::start(BIN, &[]);
    let script = walkthrough();
    let (url, token, ca) = (s.server.url.clone(), s.server.token.clone(), s.server.ca_cert.clone());
    let out = tokio::task::spawn_blocking(move || {
        Command::new("bash")
            .args(["-euo", "pipefail", "-c", &script])
            .env("JITGATE_URL", url)
            .env("JITGATE_TOKEN", token)
            .env("JITGATE_CA_CERT", ca)
            .output()
    })
    .await
    .expect("join")
    .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "walkthrough failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("\"statusReason\":\"UserRequested\""), "{stdout}");
    assert!(stdout.contains("\"justification\":\"patching openssl\""), "{stdout}");
    assert!(stdout.trim_end().ends_with("200"), "the delete answered 200:\n{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_cli_walkthrough_runs_as_written() {
    let s = TestServer::start(BIN, &[]);
    let script = section("## Five-minute walkthrough (CLI)");
    let bin_dir = std::path::Path::new(BIN).parent().expect("dir").to_path_buf();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let (url, token, ca) = (s.server.url.clone(), s.server.token.clone(), s.server.ca_cert.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("profile.json");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("bash")
            .args(["-euo", "pipefail", "-c", &script])
            .env("PATH", path)
            .env("JITGATE_URL", url)
            .env("JITGATE_TOKEN", token)
            .env("JITGATE_CA_CERT", ca)
            .env("JITGATE_CONFIG", config)
            .output()
    })
    .await
    .expect("join")
    .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "CLI walkthrough failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("web1") && stdout.contains("CONNECT TO"), "{stdout}");
    assert!(stdout.contains("deleted policy default"), "{stdout}");
}
