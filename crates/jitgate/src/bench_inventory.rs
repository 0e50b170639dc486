//! `jitgate bench inventory`: the server's time to answer a page of VMs of each inventory view
//! of `GET /api/v1/vms` (the first page, and one in the middle reached through `nextLink`) over
//! many registered VMs, through the real router and store (in process, no socket: the figure is
//! the server's own time). Its yardstick, measured in the same run, is a bare request through the
//! same router (`GET /healthz`).
//!
//! The VMs are registered straight into the store, many at a time (the writer commits them in
//! batches): 100 resource groups over two subscriptions, each behind its subscription's gateway;
//! one VM in 20 is a classic deployment and one in 20 has no enforcement point (both
//! unsupported); a policy per resource group names the first half of its VMs, and the first
//! five of those have been opened once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, ensure, Context};
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use tower::ServiceExt;

use jitgate_cli::bench::InventoryArgs;
use jitgate_core::enforcement::{AgentMode, JoiningAgent};
use jitgate_core::initiate::{InitiateDraft, InitiatePortDraft, InitiateVmDraft};
use jitgate_core::policy::{validate, PolicyDraft, VmDraft};
use jitgate_core::{OsType, PolicyRef, VmId};
use jitgate_server::tls::PeerAddr;
use jitgate_server::{auth, App, ServerConfig, SystemClock};
use jitgate_store::prelude::*;
use jitgate_store::{AgentJoin, AgentReport, InitiateCommand, JoinTokenSpec, VmSpec};
use jitgate_store_sqlite::SqliteStore;

use crate::bench_portal::event;

const SUBS: [&str; 2] = ["c0000000-0000-4000-8000-000000000001", "c0000000-0000-4000-8000-000000000002"];
const GROUPS: usize = 100;
/// VMs registered at once (the writer batches what waits).
const IN_FLIGHT: usize = 4000;

fn location(group: usize) -> &'static str {
    if group.is_multiple_of(3) {
        "eastus"
    } else {
        "westeurope"
    }
}

fn vm_id(group: usize, i: usize) -> anyhow::Result<VmId> {
    let sub = SUBS[group % SUBS.len()];
    VmId::parse(&format!(
        "/subscriptions/{sub}/resourceGroups/rg{group}/providers/Microsoft.Compute/virtualMachines/vm{i:06}"
    ))
    .map_err(anyhow::Error::msg)
}

fn percentile(sorted: &[f64], p: usize) -> f64 {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

async fn get(router: &Router, uri: &str, token: &str) -> anyhow::Result<(StatusCode, bytes::Bytes)> {
    let mut req = Request::builder()
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::HOST, "bench.local")
        .body(Body::empty())?;
    req.extensions_mut().insert(ConnectInfo(PeerAddr(SocketAddr::from(([127, 0, 0, 1], 40000)))));
    let resp = router.clone().oneshot(req).await?;
    let status = resp.status();
    Ok((status, axum::body::to_bytes(resp.into_body(), usize::MAX).await?))
}

/// The path and query of a `nextLink`.
fn path_of(link: &str) -> anyhow::Result<String> {
    let at = link.find("/api/v1/vms").context("a nextLink to the VM list")?;
    Ok(link[at..].to_owned())
}

async fn join_gateway(store: &SqliteStore, sub: &str, name: &str) -> anyhow::Result<()> {
    let now = time::OffsetDateTime::now_utc();
    let token_hash = auth::hash_token(&format!("jgj_bench_{name}"));
    let spec = JoinTokenSpec {
        subscription: sub.into(),
        resource_group: "gateways".into(),
        location: "westeurope".into(),
        mode: AgentMode::Gateway,
        expires: now + time::Duration::hours(1),
        vm: None,
    };
    store.create_join_token(spec, &token_hash, event("token")).await?;
    let join = AgentJoin {
        token_hash,
        credential_hash: auth::hash_token(&format!("jga_bench_{name}")),
        id: format!("agent-{name}"),
        agent: JoiningAgent {
            name: name.into(),
            mode: AgentMode::Gateway,
            os_type: OsType::Linux,
            addresses: vec![std::net::IpAddr::from([10, 255, 0, 1])],
            public_address: Some(std::net::IpAddr::from([203, 0, 113, 1])),
            hostname: name.into(),
            name_is_hostname: false,
        },
        now,
    };
    let agent = store.join_agent(join, event("join")).await?;
    store.agent_report(&agent.id, AgentReport { revision: 0, nft_usable: true, nft_error: None, now }).await?;
    Ok(())
}

async fn populate(store: &Arc<SqliteStore>, per_group: usize) -> anyhow::Result<()> {
    for (i, sub) in SUBS.iter().enumerate() {
        join_gateway(store, sub, &format!("gw{i}")).await?;
    }
    let mut specs = Vec::with_capacity(GROUPS * per_group);
    for g in 0..GROUPS {
        for i in 0..per_group {
            let gateway = (i % 20 != 18).then(|| format!("gw{}", g % SUBS.len()));
            specs.push(VmSpec {
                id: vm_id(g, i)?,
                os_type: OsType::Linux,
                location: location(g).into(),
                address: gateway
                    .as_ref()
                    .map(|_| std::net::IpAddr::from([10, (g / 250) as u8, (i / 250) as u8, (i % 250) as u8 + 1])),
                gateway,
                classic: i % 20 == 19,
            });
        }
    }
    while !specs.is_empty() {
        let chunk: Vec<VmSpec> = specs.drain(..specs.len().min(IN_FLIGHT)).collect();
        let tasks: Vec<_> = chunk
            .into_iter()
            .map(|spec| {
                let store = store.clone();
                tokio::spawn(async move { store.put_vm(spec, event("vm")).await })
            })
            .collect();
        for t in tasks {
            t.await??;
        }
    }
    let now = time::OffsetDateTime::now_utc();
    for g in 0..GROUPS {
        let r = PolicyRef::new(SUBS[g % SUBS.len()], &format!("rg{g}"), location(g), "default")?;
        let vms = (0..per_group.div_ceil(2))
            .map(|i| Ok(VmDraft { id: vm_id(g, i)?.as_str().into(), ports: None, public_ip_address: None }))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let policy =
            validate(r.clone(), PolicyDraft { kind: None, vms }).map_err(|e| anyhow::anyhow!("{}", e.message))?;
        store.put_policy(policy, event("policy")).await?;
        let opened = (0..per_group.div_ceil(2).min(5))
            .map(|i| {
                Ok(InitiateVmDraft {
                    id: vm_id(g, i)?.as_str().into(),
                    ports: vec![InitiatePortDraft {
                        number: Some(22),
                        end_time: Some(now + time::Duration::minutes(30)),
                        prefix: Some("198.51.100.1".into()),
                        ..Default::default()
                    }],
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let cmd = InitiateCommand {
            policy: r,
            draft: InitiateDraft { vms: opened, justification: None, start_time: None },
            caller: None,
            requestor: "bench".into(),
            client_request_id: None,
            now,
        };
        store.initiate(cmd, event("initiate")).await?;
    }
    Ok(())
}

/// Times `uri`: sorted milliseconds, and the size of the answer.
async fn time_get(router: &Router, uri: &str, token: &str, n: usize) -> anyhow::Result<(Vec<f64>, usize)> {
    let mut times = Vec::with_capacity(n);
    let mut size = 0;
    for _ in 0..n {
        let t = Instant::now();
        let (status, body) = get(router, uri, token).await?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        ensure!(status == StatusCode::OK, "{uri} answered {status}: {}", String::from_utf8_lossy(&body));
        size = body.len();
    }
    times.sort_by(f64::total_cmp);
    Ok((times, size))
}

pub async fn run(args: InventoryArgs) -> anyhow::Result<()> {
    if args.vms < GROUPS || args.requests == 0 || !(1..=1000).contains(&args.top) {
        bail!("--vms must be at least {GROUPS}, --requests at least 1 and --top 1..=1000");
    }
    let per_group = args.vms / GROUPS;
    let dir = tempfile::tempdir()?;
    let keys = jitgate_store::secrets::Keyring::generate()?;
    let store = Arc::new(SqliteStore::open(&dir.path().join("bench.db"), keys)?);
    let token = auth::new_token();
    store.bootstrap("owner", &auth::hash_token(&token), None, event("bootstrap")).await?;
    let t = Instant::now();
    populate(&store, per_group).await?;
    let total = GROUPS * per_group;
    println!(
        "jitgate bench inventory: {total} VMs in {GROUPS} resource groups over {} subscriptions ({} configured, \
         about {} unsupported), registered in {:.1} s; pages of {}, {} requests each",
        SUBS.len(),
        GROUPS * per_group.div_ceil(2),
        total / 10,
        t.elapsed().as_secs_f64(),
        args.top,
        args.requests
    );
    let app = App::new(store.clone(), Arc::new(SystemClock), ServerConfig::default());
    let router = jitgate_server::router(app);

    let (yardstick, _) = time_get(&router, "/healthz", &token, args.requests).await?;
    let yard = yardstick[yardstick.len() / 2].max(1e-6);
    println!(
        "yardstick GET /healthz through the same router: p50 {:.3} ms  p99 {:.3} ms",
        yard,
        percentile(&yardstick, 99)
    );
    // The first list reads and places every VM (the snapshot kept until the store changes).
    let first = format!("/api/v1/vms?view=configured&$top={}", args.top);
    let t = Instant::now();
    let (status, _) = get(&router, &first, &token).await?;
    ensure!(status == StatusCode::OK, "{first} answered {status}");
    println!(
        "first page after a change (reads and places all {total} VMs): {:.1} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );

    let sub = SUBS[(GROUPS / 2) % SUBS.len()];
    let mut pages: Vec<(String, String)> = Vec::new();
    for view in ["configured", "notConfigured", "unsupported"] {
        let first = format!("/api/v1/vms?view={view}&$top={}", args.top);
        // A page further on, reached by following nextLink past a twentieth of the VMs.
        let mut uri = first.clone();
        let mut skipped = 0;
        loop {
            let (status, body) = get(&router, &uri, &token).await?;
            ensure!(status == StatusCode::OK, "{uri} answered {status}");
            let page: serde_json::Value = serde_json::from_slice(&body)?;
            let n = page["value"].as_array().map_or(0, Vec::len);
            match page["nextLink"].as_str() {
                Some(link) if skipped + n <= args.vms / 20 => {
                    skipped += n;
                    uri = path_of(link)?;
                }
                _ => break,
            }
        }
        pages.push((format!("{view}, first page"), first));
        pages.push((format!("{view}, page after {skipped}"), uri));
    }
    pages.push((
        "configured in one resource group".into(),
        format!("/api/v1/vms?view=configured&subscription={sub}&resourceGroup=rg{}&$top={}", GROUPS / 2, args.top),
    ));
    pages.push(("all VMs, first page".into(), format!("/api/v1/vms?$top={}", args.top)));
    let mut worst: f64 = 0.0;
    for (label, uri) in &pages {
        let (times, size) = time_get(&router, uri, &token, args.requests).await?;
        let p99 = percentile(&times, 99);
        worst = worst.max(p99);
        println!(
            "{label:<36} p50 {:>7.2} ms  p99 {p99:>7.2} ms  max {:>7.2} ms  {:>6.1} KiB  ({:.0}× the yardstick p50)",
            times[times.len() / 2],
            times[times.len() - 1],
            size as f64 / 1024.0,
            times[times.len() / 2] / yard,
        );
    }
    println!("target: p99 ≤ 20 ms for a page of 100 out of 10,000 and 100,000 VMs (worst p99 here: {worst:.2} ms)");
    Ok(())
}
