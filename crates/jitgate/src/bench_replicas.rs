//! `jitgate bench replicas`: jitgate on PostgreSQL, as one and as two replicas.
//!
//! - The yardstick, measured first in the same run: PostgreSQL's own commit rate for a
//!   transaction of an initiate's shape (lock the chain head, insert a grant and a chained audit
//!   row, move the head), serial and from as many connections as there are clients.
//! - The audit chain under concurrent appends from two store handles (two replicas' writers).
//! - Initiates per second and their latency with 1 and 2 replicas on one fresh database, the
//!   clients spread over the replicas.
//! - Fan-out: simulated agents (no firewall: each reports what it is sent) long-poll the two
//!   replicas; one initiate touches every agent's VM, timed until all of them have reported it
//!   applied (`?wait=applied`).
//! - Memory: each replica's RSS with all the VMs registered and the agents connected; and, as
//!   root, a real agent's RSS in a network namespace after it applied 100 grants.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use tokio_postgres::NoTls;

use jitgate_api_types::agent::{AppliedIn, JoinIn, JoinTokenIn};
use jitgate_api_types::arm::{InitiateIn, InitiatePortIn, InitiateVmIn};
use jitgate_api_types::arm::{PolicyIn, PolicyPropertiesIn, PolicyVmIn, PortRuleIn};
use jitgate_api_types::native::VmIn;
use jitgate_cli::bench::{bench_target, drive, ms, ReplicasArgs, BENCH_SERVER_FLAGS};
use jitgate_client::arm::PolicyRef;
use jitgate_client::local::LocalServer;
use jitgate_client::{Client, Settings};
use jitgate_store_postgres::testdb::TestDatabase;

use crate::bench_enforce::Rss;

const SUB: &str = "b0000000-0000-4000-8000-000000000003";
const RG: &str = "fanout";

/// Replicas of `jitgate serve` on one database: the first made the Owner and the secrets key;
/// the others share the key.
struct Replicas {
    servers: Vec<LocalServer>,
    clients: Vec<Client>,
}

impl Replicas {
    async fn start(n: usize, database: &str) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating the jitgate binary")?;
        let mut servers: Vec<LocalServer> = Vec::new();
        for i in 0..n {
            let mut flags: Vec<String> = BENCH_SERVER_FLAGS.iter().map(|f| f.to_string()).collect();
            flags.extend(
                ["--rate-limit-join", "off", "--rate-limit-tokens", "off", "--database-url", database]
                    .map(String::from),
            );
            if let Some(first) = servers.first() {
                flags.push("--secrets-key-file".into());
                flags.push(first.data_dir.join("secrets.key").display().to_string());
            }
            let exe = exe.clone();
            let server = tokio::task::spawn_blocking(move || {
                let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
                LocalServer::start(&exe, &flags)
            })
            .await??;
            if i > 0 && !server.token.is_empty() {
                return Err(anyhow!("replica {i} made an Owner of its own: it is not on the shared database"));
            }
            servers.push(server);
        }
        let token = servers.first().map(|s| s.token.clone()).unwrap_or_default();
        let clients = servers
            .iter()
            .map(|s| Client::new(Settings::new(s.url.as_str()).token(token.clone()).ca_cert_path(Some(&s.ca_cert))))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Replicas { servers, clients })
    }

    fn rss(&self) -> Vec<Option<Rss>> {
        self.servers.iter().map(|s| s.pid().and_then(Rss::of)).collect()
    }
}

pub async fn run(args: ReplicasArgs) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!(
        "jitgate bench replicas: jitgate serve on PostgreSQL ({}), {cores} cores, release build {}",
        jitgate_store_postgres::redact(&args.postgres),
        if cfg!(debug_assertions) { "NO (debug build: figures are not representative)" } else { "yes" }
    );
    if !args.fan_out_only {
        rates(&args).await?;
    }
    let db = TestDatabase::create_on(&args.postgres).await.map_err(|e| anyhow!("{e}"))?;
    let replicas = Replicas::start(2, db.url()).await?;
    fan_out(&replicas, &args).await?;
    drop(replicas);

    if args.fan_out_only {
        println!("agent memory: not measured (--fan-out-only)");
    } else if rustix::process::geteuid().is_root() {
        let (_, agent) = tokio::task::spawn_blocking(|| crate::bench_enforce::open_run(100, 0)).await??;
        println!("agent (a real jitgate agent on nftables, in a network namespace, after 100 grants): {agent}");
    } else {
        println!("agent memory: not measured (run as root: a real agent programs nftables in a network namespace)");
    }
    Ok(())
}

/// The commit yardstick, the audit chain under two writers, and initiates with 1 and 2 replicas.
async fn rates(args: &ReplicasArgs) -> anyhow::Result<()> {
    let yard = TestDatabase::create_on(&args.postgres).await.map_err(|e| anyhow!("{e}"))?;
    let (serial, parallel) = commit_yardstick(yard.url(), args.concurrency as usize).await?;
    drop(yard);
    println!(
        "yardstick: PostgreSQL commits of an initiate-shaped transaction: serial {serial:.0}/s, {} connections {parallel:.0}/s",
        args.concurrency
    );

    let db = TestDatabase::create_on(&args.postgres).await.map_err(|e| anyhow!("{e}"))?;
    let (took, valid) = audit_appends(db.url(), 10_000).await?;
    drop(db);
    println!(
        "audit chain: 10,000 records appended at once through two store handles (two replicas' pools) in {:.2} s ({:.0}/s), chain {}",
        took.as_secs_f64(),
        10_000.0 / took.as_secs_f64().max(1e-9),
        if valid { "verifies" } else { "BROKEN" }
    );

    for n in [1usize, 2] {
        let db = TestDatabase::create_on(&args.postgres).await.map_err(|e| anyhow!("{e}"))?;
        let replicas = Replicas::start(n, db.url()).await?;
        let target = bench_target(&replicas.clients[0]).await?;
        let m = drive(&replicas.clients, &target, args.concurrency, args.warmup, args.seconds).await?;
        println!(
            "{n} replica{}: {:.0} initiates/s ({:.2}x the parallel commit yardstick), {} failed; latency ms p50 {:.2}  p99 {:.2}  max {:.2}",
            if n == 1 { " " } else { "s" },
            m.rate(),
            m.rate() / parallel.max(1.0),
            m.errors,
            ms(m.pct(0.5)),
            ms(m.pct(0.99)),
            ms(m.pct(1.0)),
        );
    }

    Ok(())
}

/// Registers the VMs, joins the agents, writes one policy over every agent's VM, and times
/// initiates that touch them all until every agent reported them applied.
async fn fan_out(replicas: &Replicas, args: &ReplicasArgs) -> anyhow::Result<()> {
    let admin = &replicas.clients[0];
    let started = Instant::now();
    let plain = args.vms.saturating_sub(args.agents);
    let names: Vec<String> = (0..plain).map(|i| format!("idle-{i}")).collect();
    for_each_limited(names, 16, |name| {
        let admin = admin.clone();
        async move {
            let vm = VmIn {
                id: Some(vm_id(&name)),
                os_type: Some("Linux".into()),
                location: Some("westeurope".into()),
                ..VmIn::default()
            };
            admin.native().put_vm(&vm).await.map(drop).map_err(|e| anyhow!("registering {name}: {e}"))
        }
    })
    .await?;
    let (tx, mut joined) = tokio::sync::mpsc::unbounded_channel();
    let agents: Vec<u64> = (0..args.agents).collect();
    for_each_limited(agents, 16, |i| {
        let (admin, tx) = (admin.clone(), tx.clone());
        let at = replicas.clients[i as usize % replicas.clients.len()].clone();
        async move {
            let ask = JoinTokenIn {
                subscription: Some(SUB.into()),
                resource_group: Some(RG.into()),
                location: Some("westeurope".into()),
                mode: Some("host".into()),
                ttl: None,
                vm: None,
            };
            let token = admin.native().create_join_token(&ask).await.map_err(|e| anyhow!("join token: {e}"))?;
            let name = format!("agent-{i}");
            let join = JoinIn {
                join_token: token.token,
                name: name.clone(),
                mode: "host".into(),
                os_type: "Linux".into(),
                addresses: vec![format!("10.{}.{}.{}", 100 + (i >> 16), (i >> 8) & 0xff, i & 0xff)],
                public_address: None,
                hostname: name.clone(),
                name_is_hostname: false,
            };
            let out = at.agent().join(&join).await.map_err(|e| anyhow!("joining {name}: {e}"))?;
            let _ = tx.send((name, out.credential, at.url().to_owned()));
            Ok(())
        }
    })
    .await?;
    drop(tx);
    let mut agents = Vec::new();
    while let Some(a) = joined.recv().await {
        agents.push(a);
    }
    println!(
        "fan-out setup: {} VMs registered and {} agents joined over 2 replicas in {:.1} s",
        args.vms,
        agents.len(),
        started.elapsed().as_secs_f64()
    );

    // Each simulated agent: its own connection to its replica, a long-poll, a report of what it
    // was sent, again.
    let ca = replicas.servers[0].ca_cert.clone();
    let ca_other = replicas.servers.get(1).map(|s| s.ca_cert.clone());
    // When each agent received a new revision, and when its report of it was answered.
    let woken: Arc<std::sync::Mutex<Vec<(Instant, Instant)>>> = Arc::default();
    let mut loops = Vec::new();
    for (name, credential, url) in &agents {
        let ca = if Some(url.as_str()) == replicas.servers.get(1).map(|s| s.url.as_str()) {
            ca_other.clone().unwrap_or_else(|| ca.clone())
        } else {
            ca.clone()
        };
        let client = Client::new(Settings::new(url.as_str()).ca_cert_path(Some(&ca)))?;
        let (credential, name, woken) = (credential.clone(), name.clone(), woken.clone());
        loops.push(tokio::spawn(async move {
            let mut after = None;
            loop {
                match client.agent().state(&credential, after, Duration::from_secs(30)).await {
                    Ok(state) => {
                        if after != Some(state.revision) {
                            let got = Instant::now();
                            let report =
                                AppliedIn { revision: state.revision, nftables_usable: true, nftables_error: None };
                            if let Err(e) = client.agent().applied(&credential, &report).await {
                                eprintln!("{name}: report failed: {e}");
                            }
                            if let Ok(mut w) = woken.lock() {
                                w.push((got, Instant::now()));
                            }
                        }
                        after = Some(state.revision);
                    }
                    Err(e) => {
                        eprintln!("{name}: state failed: {e}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }));
    }
    let abort = AbortAll(loops);

    let vms: Vec<String> = agents.iter().map(|(name, _, _)| vm_id(name)).collect();
    let policy = PolicyRef {
        subscription: SUB.into(),
        resource_group: RG.into(),
        location: "westeurope".into(),
        name: "fanout".into(),
    };
    let rules: Vec<PolicyVmIn> = vms
        .iter()
        .map(|id| PolicyVmIn {
            id: Some(id.clone()),
            ports: Some(vec![PortRuleIn {
                number: Some(22),
                protocol: Some("TCP".into()),
                allowed_source_address_prefix: Some("*".into()),
                max_request_access_duration: Some("PT3H".into()),
                ..PortRuleIn::default()
            }]),
            public_ip_address: None,
        })
        .collect();
    let body =
        PolicyIn { kind: Some("Basic".into()), properties: Some(PolicyPropertiesIn { virtual_machines: Some(rules) }) };
    admin.arm().put_policy(&policy, &body).await.map_err(|e| anyhow!("the fan-out policy: {e}"))?;

    let mut took = Vec::new();
    let (mut first_wake, mut last_wake, mut last_report) = (Vec::new(), Vec::new(), Vec::new());
    let (mut half_wake, mut most_wake) = (Vec::new(), Vec::new());
    // CPU time used during the measured rounds: this process (the simulated agents), each
    // replica, PostgreSQL.
    let pids: Vec<Option<u32>> = replicas.servers.iter().map(|s| s.pid()).collect();
    let cpu_now = || {
        let mut v = vec![crate::bench_cpu::own().unwrap_or_default()];
        v.extend(pids.iter().map(|p| p.and_then(crate::bench_cpu::of).unwrap_or_default()));
        v.push(crate::bench_cpu::postgres());
        v
    };
    let mut cpu = vec![Duration::ZERO; pids.len() + 2];
    for round in 0..=args.rounds {
        let source = format!("198.18.{}.{}/32", (round >> 8) & 0xff, round & 0xff);
        let body = InitiateIn {
            virtual_machines: Some(
                vms.iter()
                    .map(|id| InitiateVmIn {
                        id: Some(id.clone()),
                        ports: Some(vec![InitiatePortIn {
                            number: Some(22),
                            allowed_source_address_prefix: Some(source.clone()),
                            duration: Some("PT1H".into()),
                            ..InitiatePortIn::default()
                        }]),
                    })
                    .collect(),
            ),
            justification: Some("fan-out".into()),
            start_time_utc: None,
        };
        let client = &replicas.clients[round as usize % replicas.clients.len()];
        if let Ok(mut w) = woken.lock() {
            w.clear();
        }
        let cpu_before = cpu_now();
        let sent = Instant::now();
        client.arm().initiate(&policy.id(), &body, true).await.map_err(|e| anyhow!("round {round}: {e}"))?;
        // Round 0 warms up (the first state every agent reads in full).
        if round > 0 {
            took.push(sent.elapsed());
            for (total, (after, before)) in cpu.iter_mut().zip(cpu_now().into_iter().zip(cpu_before)) {
                *total += after.saturating_sub(before);
            }
            if let Ok(w) = woken.lock() {
                let since = |t: &Instant| t.saturating_duration_since(sent);
                let mut wakes: Vec<Duration> = w.iter().map(|(g, _)| since(g)).collect();
                wakes.sort_unstable();
                let at = |p: f64| wakes.get(((wakes.len() as f64 * p) as usize).min(wakes.len().saturating_sub(1)));
                first_wake.push(wakes.first().copied().unwrap_or_default());
                half_wake.push(at(0.5).copied().unwrap_or_default());
                most_wake.push(at(0.9).copied().unwrap_or_default());
                last_wake.push(wakes.last().copied().unwrap_or_default());
                last_report.push(w.iter().map(|(_, r)| since(r)).max().unwrap_or_default());
            }
        }
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or_default()
    };
    took.sort_unstable();
    let pct = |p: f64| took[((took.len() as f64 * p).ceil() as usize).clamp(1, took.len()) - 1];
    println!(
        "fan-out: one initiate touching {} agents' VMs until all reported it applied, {} rounds: p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        agents.len(),
        took.len(),
        ms(pct(0.5)),
        ms(pct(0.99)),
        ms(pct(1.0))
    );
    println!(
        "fan-out stages (medians, from the initiate sent): first agent woken {:.1} ms, half {:.1} ms, 90% {:.1} ms, last {:.1} ms; last report answered {:.1} ms",
        ms(median(&mut first_wake)),
        ms(median(&mut half_wake)),
        ms(median(&mut most_wake)),
        ms(median(&mut last_wake)),
        ms(median(&mut last_report))
    );
    let rounds = took.len().max(1) as u32;
    let per_round: Vec<String> = cpu.iter().map(|c| format!("{:.0}", ms(*c / rounds))).collect();
    println!(
        "fan-out CPU time per round (ms; 2 cores give 2 ms per ms): benchmark's simulated agents {}, replicas {}, PostgreSQL {}",
        per_round.first().map(String::as_str).unwrap_or("?"),
        per_round.get(1..per_round.len().saturating_sub(1)).map(|r| r.join(" + ")).unwrap_or_default(),
        per_round.last().map(String::as_str).unwrap_or("?"),
    );
    for (i, rss) in replicas.rss().iter().enumerate() {
        match rss {
            Some(r) => println!(
                "replica {} with {} VMs registered and {} agents long-polling across both: {r}",
                i + 1,
                args.vms,
                agents.len()
            ),
            None => println!("replica {}: memory not readable", i + 1),
        }
    }
    drop(abort);
    Ok(())
}

fn vm_id(name: &str) -> String {
    format!("/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachines/{name}")
}

/// Aborts the tasks when dropped.
struct AbortAll(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortAll {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Runs `f` on every item, at most `limit` at a time; the first error ends it.
async fn for_each_limited<T, F, Fut>(items: Vec<T>, limit: usize, f: F) -> anyhow::Result<()>
where
    T: Send + 'static,
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let permits = Arc::new(tokio::sync::Semaphore::new(limit));
    let mut tasks = Vec::new();
    for item in items {
        let permit = permits.clone().acquire_owned().await?;
        let fut = f(item);
        tasks.push(tokio::spawn(async move {
            let out = fut.await;
            drop(permit);
            out
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// Appends `n` audit records at once through two store handles on `url` (what two replicas'
/// writers do); returns how long it took and whether the chain verifies afterwards.
async fn audit_appends(url: &str, n: usize) -> anyhow::Result<(Duration, bool)> {
    use jitgate_core::audit::{AuditEvent, AuditStatus};
    use jitgate_store::prelude::*;
    let keys = jitgate_store::secrets::Keyring::generate()?;
    let a = Arc::new(jitgate_store_postgres::PgStore::open(url, keys.clone()).await.map_err(|e| anyhow!("{e}"))?);
    let b = Arc::new(jitgate_store_postgres::PgStore::open(url, keys).await.map_err(|e| anyhow!("{e}"))?);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        let event = AuditEvent {
            time: time::OffsetDateTime::now_utc(),
            operation: format!("bench/{i}"),
            status: AuditStatus::Succeeded,
            caller: "bench".into(),
            caller_ip: None,
            resource_id: "/bench".into(),
            correlation_id: format!("bench-{i}"),
            properties: Default::default(),
        };
        tasks.push(tokio::spawn(async move { store.record(event).await }));
    }
    for t in tasks {
        t.await?.map_err(|e| anyhow!("{e}"))?;
    }
    let took = started.elapsed();
    Ok((took, a.verify_audit().await.map_err(|e| anyhow!("{e}"))?.valid))
}

/// PostgreSQL's commit rate for an initiate-shaped transaction on `url`: serially on one
/// connection, and from `connections` connections at once (3 s each).
async fn commit_yardstick(url: &str, connections: usize) -> anyhow::Result<(f64, f64)> {
    let (setup, conn) = tokio_postgres::connect(url, NoTls).await?;
    let driver = tokio::spawn(conn);
    setup
        .batch_execute(
            "CREATE TABLE y_head (id INT PRIMARY KEY, seq BIGINT NOT NULL, hash BYTEA NOT NULL);
             INSERT INTO y_head VALUES (1, 0, '\\x00');
             CREATE TABLE y_grants (gid BIGSERIAL PRIMARY KEY, source TEXT NOT NULL, end_time BIGINT NOT NULL);
             CREATE TABLE y_audit (seq BIGINT PRIMARY KEY, prev BYTEA NOT NULL, hash BYTEA NOT NULL, body TEXT NOT NULL);",
        )
        .await?;
    drop(setup);
    let _ = driver.await;
    let serial = commit_rate(url, 1).await?;
    let parallel = commit_rate(url, connections).await?;
    Ok((serial, parallel))
}

async fn commit_rate(url: &str, connections: usize) -> anyhow::Result<f64> {
    let window = Duration::from_secs(3);
    let end = Instant::now() + window;
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let url = url.to_owned();
        tasks.push(tokio::spawn(async move {
            let (client, conn) = tokio_postgres::connect(&url, NoTls).await?;
            let driver = tokio::spawn(conn);
            let lock = client.prepare("SELECT seq, hash FROM y_head WHERE id = 1 FOR UPDATE").await?;
            let grant = client.prepare("INSERT INTO y_grants (source, end_time) VALUES ($1, $2)").await?;
            let audit = client.prepare("INSERT INTO y_audit (seq, prev, hash, body) VALUES ($1, $2, $3, $4)").await?;
            let head = client.prepare("UPDATE y_head SET seq = $1, hash = $2 WHERE id = 1").await?;
            let mut n = 0u64;
            while Instant::now() < end {
                client.batch_execute("BEGIN").await?;
                let row = client.query_one(&lock, &[]).await?;
                let (seq, prev): (i64, Vec<u8>) = (row.try_get(0)?, row.try_get(1)?);
                let hash: Vec<u8> = prev.iter().map(|b| b.wrapping_add(1)).chain([seq as u8]).take(32).collect();
                client.execute(&grant, &[&"10.0.0.1/32", &(seq + 3600)]).await?;
                client.execute(&audit, &[&(seq + 1), &prev, &hash, &"{\"operation\":\"initiate\"}"]).await?;
                client.execute(&head, &[&(seq + 1), &hash]).await?;
                client.batch_execute("COMMIT").await?;
                n += 1;
            }
            drop(client);
            let _ = driver.await;
            Ok::<u64, anyhow::Error>(n)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / window.as_secs_f64())
}
