//! Azure's own Python SDK (azure-mgmt-security 7.x) against `jitgate serve`: create-or-update,
//! get, the four lists (with nextLink paging), initiate and delete, and the error paths, through
//! `SecurityCenter(...).jit_network_access_policies` (tests/azure_sdk/jit_sdk_test.py).
//!
//! Needs the virtualenv made by `scripts/azure-sdk-venv.sh` (`.ci/run` makes it); skips with a
//! printed reason when it is missing.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may panic on a failed expectation.

use std::path::PathBuf;
use std::process::Command;

use jitgate_testkit::{TestServer, SUB};

const BIN: &str = env!("CARGO_BIN_EXE_jitgate");

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn venv_python() -> Option<PathBuf> {
    let venv = std::env::var_os("JITGATE_AZSDK_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/azsdk-venv"));
    let python = venv.join("bin/python");
    let ok = Command::new(&python)
        .args(["-c", "import azure.mgmt.security"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    ok.then_some(python)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_python_sdk_works_against_jitgate() {
    sdk_checks("azure_python_sdk_works_against_jitgate", &[]).await;
}

/// The same checks against a server whose store is PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_python_sdk_works_against_jitgate_on_postgresql() {
    let test = "azure_python_sdk_works_against_jitgate_on_postgresql";
    let db = match jitgate_store_postgres::testdb::TestDatabase::create().await {
        Ok(db) => db,
        Err(why) => return jitgate_netns::skip(test, &why),
    };
    sdk_checks(test, &["--database-url", db.url()]).await;
}

/// Runs the SDK script against a server started with `extra` flags.
async fn sdk_checks(test: &str, extra: &[&str]) {
    let Some(python) = venv_python() else {
        jitgate_netns::skip(test, "no virtualenv with azure-mgmt-security; run scripts/azure-sdk-venv.sh");
        return;
    };
    let mut args = vec!["--list-page-size", "1"];
    args.extend_from_slice(extra);
    let s = TestServer::start(BIN, &args);
    let vm1 = s.register_vm("probe-rg", "probe-vm1", "Linux").await;
    let vm2 = s.register_vm("probe-rg", "probe-vm2", "Linux").await;
    let script = workspace_root().join("tests/azure_sdk/jit_sdk_test.py");
    let out = tokio::task::spawn_blocking({
        let (url, ca, token) = (s.server.url.clone(), s.server.ca_cert.clone(), s.server.token.clone());
        move || {
            Command::new(python)
                .arg(script)
                .arg(url)
                .arg("--ca-bundle")
                .arg(ca)
                .args(["--subscription", SUB, "--token", &token, "--resource-group", "probe-rg"])
                .args(["--vm-id", &vm1, "--vm2-id", &vm2])
                .output()
        }
    })
    .await
    .expect("join")
    .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "the SDK checks failed ({}):\n{stdout}\n{stderr}", out.status);
    assert!(stdout.contains("passed"), "the script reports its checks:\n{stdout}");
}
