//! Many agents at once on PostgreSQL: credential look-ups and state reads made together are
//! served in rounds, and each call still gets its own answer — the right agent for each
//! credential, none for an unknown or replaced one, and each agent only its own VM's state.
//!
//! The test makes its own database on the PostgreSQL at 127.0.0.1:5432 and drops it at the end;
//! where none answers, it is skipped (and fails under `CI=true`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may panic on a failed expectation.

use std::sync::Arc;

use time::{Duration, OffsetDateTime};

use jitgate_core::enforcement::{AgentMode, JoiningAgent};
use jitgate_core::policy::{validate, PolicyDraft, PortDraft, VmDraft};
use jitgate_core::{OsType, PolicyRef};
use jitgate_store::conformance::{event, SUB};
use jitgate_store::prelude::*;
use jitgate_store::secrets::Keyring;
use jitgate_store::{AgentJoin, JoinTokenSpec};
use jitgate_store_postgres::testdb::TestDatabase;
use jitgate_store_postgres::PgStore;

const AGENTS: u16 = 40;

fn vm_id(name: &str) -> String {
    format!("/subscriptions/{SUB}/resourceGroups/fanout/providers/Microsoft.Compute/virtualMachines/{name}")
}

/// Joins host agent `agent-i` (credential hash `cred-i`), which registers its VM.
async fn join(store: &PgStore, i: u16) {
    let spec = JoinTokenSpec {
        subscription: SUB.into(),
        resource_group: "fanout".into(),
        location: "westeurope".into(),
        mode: AgentMode::Host,
        expires: OffsetDateTime::now_utc() + Duration::hours(1),
        vm: None,
    };
    let token = format!("jt-{i}");
    store.create_join_token(spec, &token, event("token")).await.expect("join token");
    let join = AgentJoin {
        token_hash: token,
        credential_hash: format!("cred-{i}"),
        id: format!("id-{i}"),
        agent: JoiningAgent {
            name: format!("agent-{i}"),
            mode: AgentMode::Host,
            os_type: OsType::Linux,
            addresses: vec![format!("10.0.{}.{}", i / 200, i % 200 + 1).parse().expect("ip")],
            public_address: None,
            hostname: format!("agent-{i}"),
            name_is_hostname: false,
        },
        now: OffsetDateTime::now_utc(),
    };
    store.join_agent(join, event("join")).await.expect("join");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_calling_together_each_get_their_own_answer() {
    let db = match TestDatabase::create().await {
        Ok(db) => db,
        Err(why) => return jitgate_netns::skip("agents_calling_together_each_get_their_own_answer", &why),
    };
    let keys = Keyring::generate().expect("random");
    let store = Arc::new(PgStore::open(db.url(), keys).await.expect("open"));
    for i in 0..AGENTS {
        join(&store, i).await;
    }
    // One policy over every agent's VM, each VM with a port of its own: 1000 + i.
    let draft = PolicyDraft {
        kind: None,
        vms: (0..AGENTS)
            .map(|i| VmDraft {
                id: vm_id(&format!("agent-{i}")),
                ports: Some(vec![PortDraft {
                    number: Some(1000 + i64::from(i)),
                    protocol: Some("TCP".into()),
                    prefix: Some("*".into()),
                    max_duration: Some("PT3H".into()),
                    ..Default::default()
                }]),
                public_ip_address: None,
            })
            .collect(),
    };
    let policy = PolicyRef::new(SUB, "fanout", "westeurope", "all").expect("policy ref");
    store.put_policy(validate(policy, draft).expect("valid"), event("put")).await.expect("policy");

    // Every agent authenticates twice and reads its state, and strangers try, all at once.
    let mut calls = Vec::new();
    for i in 0..AGENTS {
        for _ in 0..2 {
            let store_ = store.clone();
            calls.push(tokio::spawn(async move {
                let found = store_.agent_by_credential(&format!("cred-{i}")).await.expect("look-up");
                assert_eq!(found.map(|a| a.id), Some(format!("id-{i}")), "credential {i}");
            }));
        }
        let store_ = store.clone();
        calls.push(tokio::spawn(async move {
            let state = store_.agent_state(&format!("id-{i}"), OffsetDateTime::now_utc()).await.expect("state");
            let ports: Vec<(String, u16)> =
                state.ports.iter().map(|p| (p.vm_id.to_ascii_lowercase(), p.number)).collect();
            let own = vm_id(&format!("agent-{i}")).to_ascii_lowercase();
            assert_eq!(ports, vec![(own, 1000 + i)], "agent {i} sees its own VM only");
        }));
        let store_ = store.clone();
        calls.push(tokio::spawn(async move {
            assert!(store_.agent_by_credential(&format!("stranger-{i}")).await.expect("look-up").is_none());
        }));
    }
    for call in calls {
        call.await.expect("a call failed");
    }

    // A replaced credential stops working at once; its replacement works.
    store.rotate_agent_credential("id-0", "cred-0", "cred-0-new", event("rotate")).await.expect("rotate");
    let (old, new) = tokio::join!(store.agent_by_credential("cred-0"), store.agent_by_credential("cred-0-new"));
    assert!(old.expect("look-up").is_none(), "the old credential is refused");
    assert_eq!(new.expect("look-up").map(|a| a.id), Some("id-0".into()));
    // A removed agent has no state.
    store.delete_agent("id-1", event("delete")).await.expect("delete");
    assert!(store.agent_state("id-1", OffsetDateTime::now_utc()).await.is_err());
    assert!(store.agent_by_credential("cred-1").await.expect("look-up").is_none());
}
