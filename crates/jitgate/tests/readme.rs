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
        jitgate_netns::skip("the_readme_walkthrough_runs_as_written", "curl is not installed (apt-get install curl)");
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

/// The first `lang` block after `heading`.
fn code_block(heading: &str, lang: &str) -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).expect("README");
    let section = readme.split(heading).nth(1).expect("section");
    let block = section.split(&format!("```{lang}")).nth(1).expect("code block");
    block.split("```").next().expect("block end").to_owned()
}

/// The Python interpreter of the Azure SDK virtualenv, when it has the SDK.
fn venv_python() -> Option<std::path::PathBuf> {
    let venv = std::env::var_os("JITGATE_AZSDK_VENV")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/azsdk-venv"));
    let python = venv.join("bin/python");
    let ok = Command::new(&python)
        .args(["-c", "import azure.mgmt.security"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    ok.then_some(python)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_python_snippet_runs_as_written() {
    let Some(python) = venv_python() else {
        jitgate_netns::skip(
            "the_readme_python_snippet_runs_as_written",
            "no virtualenv with azure-mgmt-security (JITGATE_AZSDK_VENV); run scripts/azure-sdk-venv.sh",
        );
        return;
    };
    let s = TestServer::start(BIN, &[]);
    let vm = s.register_vm("prod", "web1", "Linux").await;
    let policy = serde_json::json!({"properties": {"virtualMachines": [{"id": vm, "ports": []}]}});
    let a = s.json(reqwest::Method::PUT, &s.policy_url("prod", "westeurope", "default"), &policy).await;
    assert_eq!(a.status, 200, "{a:?}");
    let script = code_block("## Using Azure's own tools", "python");
    let (url, token, ca) = (s.server.url.clone(), s.server.token.clone(), s.server.ca_cert.clone());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .args(["-c", &script])
            .env("JITGATE_URL", url)
            .env("JITGATE_TOKEN", token)
            .env("JITGATE_CA_CERT", ca)
            .output()
    })
    .await
    .expect("join")
    .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the snippet failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.trim(), "default", "it lists the policy");
}

/// Every error code the API can answer is in the README's error table. The codes are the
/// CamelCase string literals of the server, core, the SQLite store and api-types (their code
/// outside `#[cfg(test)]`); the few CamelCase literals that are not codes are listed here.
#[test]
fn the_readme_error_table_lists_every_error_code() {
    const NOT_CODES: [&str; 9] = [
        "AssignableScopes",
        "DataActions",
        "NotActions",
        "NotDataActions",
        "IsCustom",
        "ConnectionFailed",
        "HttpStatus",
        "NotEnforced",
        "ServicePrincipal",
    ];
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README");
    let table = readme.split("### Errors").nth(1).and_then(|s| s.split("\n## ").next()).expect("error section");
    let mut files = Vec::new();
    for krate in ["jitgate-server", "jitgate-core", "jitgate-store-sqlite", "jitgate-api-types"] {
        let mut dirs = vec![root.join("crates").join(krate).join("src")];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).expect("dir").flatten() {
                let p = e.path();
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("").to_owned();
                if p.is_dir() && name != "web" && name != "tests" {
                    dirs.push(p);
                } else if name.ends_with(".rs") && name != "tests.rs" {
                    files.push(p);
                }
            }
        }
    }
    let mut missing = std::collections::BTreeSet::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("source");
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        for lit in code.split('"').skip(1).step_by(2) {
            let camel = lit.len() > 3
                && lit.chars().next().is_some_and(|c| c.is_ascii_uppercase())
                && lit.chars().all(|c| c.is_ascii_alphanumeric())
                && lit.chars().filter(char::is_ascii_uppercase).count() >= 2
                && lit.chars().any(|c| c.is_ascii_lowercase());
            if camel && !NOT_CODES.contains(&lit) && !table.contains(&format!("`{lit}`")) {
                missing.insert(format!("{lit} ({})", f.display()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "error codes missing from the README's table (or add non-codes to NOT_CODES): {missing:#?}"
    );
}
