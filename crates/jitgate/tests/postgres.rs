//! End-to-end on PostgreSQL: the real binary serving with `--database-url`, two replicas on one
//! database — a policy written through one, an initiate through the other, over HTTPS — and the
//! audit chain, written by both, verifies.
//!
//! The database is made for the test on the PostgreSQL at 127.0.0.1:5432 and dropped after it;
//! where none answers, the test is skipped (and fails under `CI=true`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may panic on a failed expectation.

use reqwest::{Method, StatusCode};
use serde_json::json;
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

use jitgate_store_postgres::testdb::TestDatabase;
use jitgate_testkit::LocalServer;
use jitgate_testkit::TestServer;

const BIN: &str = env!("CARGO_BIN_EXE_jitgate");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_of_the_binary_serve_one_postgresql_database() {
    let db = match TestDatabase::create().await {
        Ok(db) => db,
        Err(why) => return jitgate_netns::skip("two_replicas_of_the_binary_serve_one_postgresql_database", &why),
    };
    let a = TestServer::start(BIN, &["--database-url", db.url()]);
    assert!(!a.server.token.is_empty(), "the first replica made the Owner on the empty database");
    // The second replica shares the database and the secrets key; it makes no second Owner.
    let key = a.server.data_dir.join("secrets.key");
    let key = key.to_str().expect("utf-8 path");
    let mut b = LocalServer::start(std::path::Path::new(BIN), &["--database-url", db.url(), "--secrets-key-file", key])
        .expect("replica b");
    assert!(b.token.is_empty(), "the database already had its Owner");
    b.token = a.server.token.clone();
    let b = TestServer::from(b);
    for s in [&a, &b] {
        assert!(!s.server.data_dir.join("jitgate.db").exists(), "no SQLite file: the store is PostgreSQL");
    }

    let vm = a.register_vm("rg1", "vm1", "Linux").await;
    let rules = json!([{"id": vm, "ports": [
        {"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "*", "maxRequestAccessDuration": "PT3H"}
    ]}]);
    let policy = json!({"kind": "Basic", "properties": {"virtualMachines": rules}});
    let put = a.json(Method::PUT, &a.policy_url("rg1", "westeurope", "default"), &policy).await;
    assert_eq!(put.status, StatusCode::OK, "{put:?}");

    let end = (OffsetDateTime::now_utc() + Duration::minutes(30)).format(&Rfc3339).expect("format");
    let body =
        json!({"virtualMachines": [{"id": vm, "ports": [{"number": 22, "endTimeUtc": end}]}], "justification": "pg"});
    let init = b.json(Method::POST, &b.initiate_url("rg1", "westeurope", "default"), &body).await;
    assert_eq!(init.status, StatusCode::ACCEPTED, "{init:?}");
    assert_eq!(init.body["virtualMachines"][0]["ports"][0]["status"], "Initiated");

    // The first replica sees the request the second recorded.
    let got = a.send(Method::GET, &a.policy_url("rg1", "westeurope", "default"), None).await;
    assert_eq!(got.body["properties"]["requests"].as_array().map(Vec::len), Some(1), "{got:?}");

    for s in [&a, &b] {
        let v = s.send(Method::GET, &s.url("/api/v1/audit/verify"), None).await;
        assert_eq!(v.status, StatusCode::OK, "{v:?}");
        assert_eq!(v.body["valid"], true, "{v:?}");
        assert!(v.body["records"].as_u64().unwrap_or(0) >= 4, "bootstrap, VM, policy, initiate: {v:?}");
    }
    drop((a, b));
}
