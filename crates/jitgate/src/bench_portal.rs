//! `jitgate bench portal`: the server's time to render the JIT VM access page over many VMs
//! (half of them configured), and the page's size, through the real router, store and session
//! (in process, no socket: the figure is the server's own time). Its yardstick, measured in the
//! same run, is a bare request through the same router (`GET /healthz`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, ensure, Context};
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use tower::ServiceExt;

use jitgate_cli::bench::PortalArgs;
use jitgate_core::audit::{AuditEvent, AuditStatus};
use jitgate_core::enforcement::{AgentMode, JoiningAgent};
use jitgate_core::OsType;
use jitgate_server::tls::PeerAddr;
use jitgate_server::{auth, App, ServerConfig, SystemClock};
use jitgate_store::prelude::*;
use jitgate_store::{AgentJoin, AgentReport, JoinTokenSpec};
use jitgate_store_sqlite::SqliteStore;

const SUBS: [&str; 2] = ["b0000000-0000-4000-8000-000000000001", "b0000000-0000-4000-8000-000000000002"];
const PER_GROUP: usize = 100;

/// A `Started` audit event of the benchmarks, for changes they make through the store directly.
pub(crate) fn event(what: &str) -> AuditEvent {
    AuditEvent {
        time: time::OffsetDateTime::now_utc(),
        operation: what.into(),
        status: AuditStatus::Started,
        caller: "bench".into(),
        caller_ip: None,
        resource_id: "/".into(),
        correlation_id: "bench".into(),
        properties: Default::default(),
    }
}

/// One answer: status, the `Set-Cookie` values, the body.
struct Answer {
    status: StatusCode,
    cookies: Vec<String>,
    body: bytes::Bytes,
}

async fn send(router: &Router, req: Request<Body>) -> anyhow::Result<Answer> {
    let mut req = req;
    req.extensions_mut().insert(ConnectInfo(PeerAddr(SocketAddr::from(([127, 0, 0, 1], 40000)))));
    let resp = router.clone().oneshot(req).await?;
    let (parts, body) = resp.into_parts();
    let cookies = parts
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .map(str::to_owned)
        .collect();
    Ok(Answer { status: parts.status, cookies, body: axum::body::to_bytes(body, usize::MAX).await? })
}

fn get(uri: &str, cookie: &str) -> anyhow::Result<Request<Body>> {
    Ok(Request::builder().uri(uri).header(header::COOKIE, cookie).body(Body::empty())?)
}

/// Signs in through the portal's form, as a browser does; returns the session cookie.
async fn sign_in(router: &Router, token: &str) -> anyhow::Result<String> {
    let form = send(router, get("/signin", "")?).await?;
    let signin_cookie = form.cookies.first().context("the sign-in form sets its cookie")?.clone();
    let csrf = signin_cookie.split_once('=').map(|(_, v)| v.to_owned()).unwrap_or_default();
    let body = format!("csrf={csrf}&next=%2Fjit&token={token}");
    let req = Request::builder()
        .method(Method::POST)
        .uri("/signin")
        .header(header::COOKIE, &signin_cookie)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header("sec-fetch-site", "same-origin")
        .body(Body::from(body))?;
    let answer = send(router, req).await?;
    ensure!(answer.status.is_redirection(), "sign-in answered {}", answer.status);
    answer
        .cookies
        .into_iter()
        .find(|c| c.starts_with(jitgate_server::web::session::COOKIE))
        .context("no session cookie after sign-in")
}

fn policy_body(sub: &str, group: &str) -> String {
    let vms: Vec<String> = (0..PER_GROUP)
        .map(|i| {
            format!(
                r#"{{"id":"/subscriptions/{sub}/resourceGroups/{group}/providers/Microsoft.Compute/virtualMachines/vm{i}","ports":[{{"number":22,"protocol":"*","allowedSourceAddressPrefix":"*","maxRequestAccessDuration":"PT3H"}}]}}"#
            )
        })
        .collect();
    format!(r#"{{"properties":{{"virtualMachines":[{}]}}}}"#, vms.join(","))
}

fn location(group: usize) -> &'static str {
    if group.is_multiple_of(3) {
        "eastus"
    } else {
        "westeurope"
    }
}

fn percentile(sorted: &[f64], p: usize) -> f64 {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

pub async fn run(args: PortalArgs) -> anyhow::Result<()> {
    if args.vms < PER_GROUP || args.renders == 0 {
        bail!("--vms must be at least {PER_GROUP} and --renders at least 1");
    }
    let dir = tempfile::tempdir()?;
    let keys = jitgate_store::secrets::Keyring::generate()?;
    let store = Arc::new(SqliteStore::open(&dir.path().join("bench.db"), keys)?);
    let token = auth::new_token();
    store.bootstrap("owner", &auth::hash_token(&token), None, event("bootstrap")).await?;
    let groups = args.vms / PER_GROUP;
    // Every VM with its own host agent that has reported in, straight into the store (the API
    // would rate-limit a single writer this fast): join token, join, report.
    let now = time::OffsetDateTime::now_utc();
    let mut tasks = Vec::with_capacity(args.vms);
    for g in 0..groups {
        for i in 0..PER_GROUP {
            let store = store.clone();
            let token_hash = auth::hash_token(&format!("jgj_bench_{g}_{i}"));
            let token = JoinTokenSpec {
                subscription: SUBS[g % SUBS.len()].into(),
                resource_group: format!("rg{g}"),
                location: location(g).into(),
                mode: AgentMode::Host,
                expires: now + time::Duration::hours(1),
                vm: None,
            };
            let join = AgentJoin {
                token_hash: token_hash.clone(),
                credential_hash: auth::hash_token(&format!("jga_bench_{g}_{i}")),
                id: format!("agent-{g}-{i}"),
                agent: JoiningAgent {
                    name: format!("vm{i}"),
                    mode: AgentMode::Host,
                    os_type: OsType::Linux,
                    addresses: vec![std::net::IpAddr::from([10, (g / 250) as u8, (g % 250) as u8, i as u8 + 1])],
                    public_address: None,
                    hostname: format!("vm{i}"),
                    name_is_hostname: false,
                },
                now,
            };
            tasks.push(tokio::spawn(async move {
                store.create_join_token(token, &token_hash, event("token")).await?;
                let agent = store.join_agent(join, event("join")).await?;
                let report = AgentReport { revision: 0, nft_usable: true, nft_error: None, now };
                store.agent_report(&agent.id, report).await
            }));
        }
    }
    for t in tasks {
        t.await??;
    }
    let config = ServerConfig::default();
    let app = App::new(store.clone(), Arc::new(SystemClock), config);
    let router = jitgate_server::router(app);
    // Half the resource groups get a policy over all their VMs, through the ARM API.
    for g in (0..groups).step_by(2) {
        let sub = SUBS[g % SUBS.len()];
        let location = location(g);
        let uri = format!("/subscriptions/{sub}/resourceGroups/rg{g}/providers/Microsoft.Security/locations/{location}/jitNetworkAccessPolicies/default?api-version=2020-01-01");
        let req = Request::builder()
            .method(Method::PUT)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(policy_body(sub, &format!("rg{g}"))))?;
        let answer = send(&router, req).await?;
        ensure!(answer.status.is_success(), "policy put: {} {}", answer.status, String::from_utf8_lossy(&answer.body));
    }
    let cookie = sign_in(&router, &token).await?;

    println!(
        "jitgate bench portal: {} VMs in {groups} resource groups over {} subscriptions, {} configured; {} renders per page",
        groups * PER_GROUP,
        SUBS.len(),
        groups.div_ceil(2) * PER_GROUP,
        args.renders
    );
    let mut yardstick = Vec::with_capacity(args.renders);
    for _ in 0..args.renders {
        let t = Instant::now();
        let a = send(&router, get("/healthz", "")?).await?;
        yardstick.push(t.elapsed().as_secs_f64() * 1000.0);
        ensure!(a.status.is_success(), "healthz answered {}", a.status);
    }
    yardstick.sort_by(f64::total_cmp);
    println!(
        "yardstick GET /healthz through the same router: p50 {:.3} ms  p99 {:.3} ms",
        yardstick[yardstick.len() / 2],
        percentile(&yardstick, 99)
    );
    let mut reads = Vec::with_capacity(args.renders);
    for _ in 0..args.renders {
        let t = Instant::now();
        let vms = store.list_vms().await?;
        reads.push(t.elapsed().as_secs_f64() * 1000.0);
        ensure!(vms.len() == groups * PER_GROUP, "all VMs listed");
    }
    reads.sort_by(f64::total_cmp);
    println!(
        "of which the store's VM list alone: p50 {:.2} ms  p99 {:.2} ms",
        reads[reads.len() / 2],
        percentile(&reads, 99)
    );
    for (label, uri) in [
        ("Configured tab", "/jit?tab=configured"),
        ("Not configured tab", "/jit?tab=notconfigured"),
        ("search (vm7 in rg1*)", "/jit?tab=configured&q=vm7&group=rg10"),
        ("last page", "/jit?tab=notconfigured&page=100"),
    ] {
        let mut times = Vec::with_capacity(args.renders);
        let mut size = 0;
        for _ in 0..args.renders {
            let t = Instant::now();
            let a = send(&router, get(uri, &cookie)?).await?;
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            ensure!(a.status == StatusCode::OK, "{uri} answered {}", a.status);
            size = a.body.len();
        }
        times.sort_by(f64::total_cmp);
        let p99 = percentile(&times, 99);
        println!(
            "{label:<22} {uri:<40} p50 {:>7.2} ms  p99 {p99:>7.2} ms  max {:>7.2} ms  {:>6.1} KiB  ({:.0}× the yardstick p50)",
            times[times.len() / 2],
            times[times.len() - 1],
            size as f64 / 1024.0,
            times[times.len() / 2] / yardstick[yardstick.len() / 2].max(1e-6),
        );
    }
    println!("target: p99 ≤ 50 ms for the JIT page with 10,000 VMs");
    Ok(())
}
