//! `jitgate bench soak`: a long run of mixed traffic against a real `jitgate serve` (SQLite).
//!
//! - Enforcement points: `--agents` agents in this process (`jitgate_agent::run_with` over
//!   HTTPS, each on a `FakeFirewall` of its own, one VM each) and `--real-agents` real
//!   `jitgate agent` processes on nftables, each in a network namespace joined to the server's
//!   namespace by a veth (the server and this process's agents then run in that namespace).
//! - Traffic: initiates at `--rate` per second from a requester principal, each for one VM's
//!   port 22 from a source of its own for 2–10 s; the VMs are spread over ten policies, of
//!   which every fourth needs an approver (the admin approves most requests after 0.3–1.5 s
//!   and denies one in five); one live grant in six is revoked before its end; a policy is
//!   edited every 15 s (a second port added or removed, the longest window changed), which makes
//!   its agents replace their whole table.
//! - Watching (`bench_soak_watch`): each firewall looked at ten times a second (the real ones
//!   three times), each grant's element followed from its first sighting to its removal; every
//!   `--sample-every` the server's RSS, open descriptors, WAL size and live grants (`/metrics`)
//!   beside the elements in the firewalls.
//! - Verdict: failure (exit 1) on an element alive more than 1 s past its grant's end (2 s past
//!   its revoke), an element of a grant that was never approved, live grants or elements left
//!   after the last end, an agent that stopped, a failed (5xx or unanswered) call, or growth over
//!   the second half beyond the bounds in `bench_soak_watch`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use tokio::sync::watch;

use jitgate_agent::prom::AgentMetrics;
use jitgate_agent::{AgentConfig, HttpControl};
use jitgate_api_types::agent::JoinTokenIn;
use jitgate_api_types::arm::{PolicyIn, PolicyPropertiesIn, PolicyVmIn, PortRuleIn};
use jitgate_api_types::native::DecisionIn;
use jitgate_api_types::rbac::{PrincipalIn, RoleAssignmentIn, TokenIn};
use jitgate_cli::bench::{SoakArgs, BENCH_SERVER_FLAGS};
use jitgate_client::arm::PolicyRef;
use jitgate_client::local::LocalServer;
use jitgate_client::native::Decision;
use jitgate_client::{Client, ClientError, Settings};
use jitgate_enforce::fake::FakeFirewall;
use jitgate_enforce::Mode;
use jitgate_netns::{self as netns, veth, KillOnDrop, Netns};

use crate::bench_enforce::Rss;
use crate::bench_soak_report::Report;
use crate::bench_soak_watch::{self as w, lock, Fw, Sample, Shared, Tracked};

const SUB: &str = "b0000000-0000-4000-8000-000000000005";
const RG: &str = "soak";
const POLICIES: usize = 10;
const REQUESTER: &str = "soak-requester";
const EDIT_EVERY: Duration = Duration::from_secs(15);

static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn vm_id(name: &str) -> String {
    format!("/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachines/{name}")
}

fn policy_ref(k: usize) -> PolicyRef {
    PolicyRef {
        subscription: SUB.into(),
        resource_group: RG.into(),
        location: "westeurope".into(),
        name: format!("soak-{k}"),
    }
}

/// A small deterministic generator (xorshift64*): the soak needs variety, not secrecy.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A real agent's namespace and the server's address on its veth.
struct RealNs {
    ns: Netns,
    server_addr: String,
}

pub async fn run(args: SoakArgs) -> anyhow::Result<()> {
    println!(
        "jitgate bench soak: {} of traffic; jitgate serve (SQLite) as a real process; agents: {} in this process on fake firewalls, {} real ones on nftables in network namespaces",
        human(args.duration),
        args.agents,
        args.real_agents
    );
    // Ctrl-C ends the traffic early; the grants are still watched to their end and the
    // namespaces removed, and the run counts as failed.
    tokio::spawn(async {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("soak: interrupted; watching the last grants to their end, then stopping");
            INTERRUPTED.store(true, Relaxed);
        }
    });
    println!("{}", crate::yardstick::Machine::detect());
    let report = if args.real_agents == 0 {
        soak(&args, &[]).await?
    } else {
        if let Some(why) = netns::unavailable() {
            bail!("the real agents: this benchmark {why} (--real-agents 0 runs without them)");
        }
        tokio::task::spawn_blocking(move || in_namespaces(&args)).await??
    };
    report.print();
    if INTERRUPTED.load(Relaxed) {
        bail!("the soak was interrupted");
    }
    match report.failures.is_empty() {
        true => Ok(()),
        false => Err(anyhow!("the soak failed: {}", report.failures.join("; "))),
    }
}

fn human(d: Duration) -> String {
    match d.as_secs() {
        s if s >= 3600 && s % 3600 == 0 => format!("{} h", s / 3600),
        s if s >= 60 && s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

/// The server's namespace, one namespace per real agent joined to it by a veth; the soak then
/// runs on a runtime of its own inside the server's namespace.
fn in_namespaces(args: &SoakArgs) -> anyhow::Result<Report> {
    let server_ns = Netns::new("ss")?;
    let mut real = Vec::new();
    for i in 0..args.real_agents {
        let ns = Netns::new("sa")?;
        let server_addr = format!("10.79.{i}.1");
        veth(&server_ns, &format!("{server_addr}/24"), &ns, &format!("10.79.{i}.2/24"))?;
        real.push(RealNs { ns, server_addr });
    }
    server_ns.run(|| {
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        rt.block_on(soak(args, &real))
    })?
}

/// Counts of what the driver did.
#[derive(Default)]
pub(crate) struct Counts {
    pub initiated: AtomicU64,
    pub pending: AtomicU64,
    pub approved: AtomicU64,
    pub denied: AtomicU64,
    pub revoked: AtomicU64,
    pub edits: AtomicU64,
    pub refused: AtomicU64,
    pub failed: AtomicU64,
}

impl Counts {
    /// Counts a failed call: a 4xx is a refusal (a race the traffic can make: a revoke after the
    /// end), anything else a failure.
    fn error(&self, what: &str, e: &ClientError) {
        let counter = match e {
            ClientError::Api { status, .. } if *status < 500 => &self.refused,
            _ => &self.failed,
        };
        if counter.fetch_add(1, Relaxed) < 5 {
            eprintln!("soak: {what}: {e}");
        }
    }
}

pub(crate) struct World {
    pub admin: Client,
    pub requester: Client,
    /// Per VM: its id and its policy.
    pub vms: Vec<(String, usize)>,
    /// The VMs of each policy.
    pub policies: Vec<Vec<String>>,
    /// The first `fakes` VMs are the in-process agents'; the others the real agents'.
    pub fakes: usize,
    pub tracker: Shared,
    pub counts: Counts,
}

impl World {
    fn approval(k: usize) -> bool {
        k % 4 == 3
    }

    async fn put_policy(&self, k: usize, edit: u64) -> Result<(), ClientError> {
        let mut ports = vec![22];
        if edit % 2 == 1 {
            ports.push(2022);
        }
        let rules = |vm: &String| PolicyVmIn {
            id: Some(vm.clone()),
            ports: Some(
                ports
                    .iter()
                    .map(|p| PortRuleIn {
                        number: Some(*p),
                        protocol: Some("TCP".into()),
                        allowed_source_address_prefix: Some("*".into()),
                        max_request_access_duration: Some(if edit % 3 == 2 { "PT2H" } else { "PT1H" }.into()),
                        require_approval: Self::approval(k).then_some(true),
                        ..PortRuleIn::default()
                    })
                    .collect(),
            ),
            public_ip_address: None,
        };
        let body = PolicyIn {
            kind: Some("Basic".into()),
            properties: Some(PolicyPropertiesIn {
                virtual_machines: Some(self.policies[k].iter().map(rules).collect()),
            }),
        };
        self.admin.arm().put_policy(&policy_ref(k), &body).await.map(drop)
    }

    /// One request: initiate, then perhaps approve or deny it, perhaps revoke it.
    async fn request(self: Arc<Self>, n: u64, vm: usize, fw: usize, seed: u64) {
        let mut rng = Rng(seed | 1);
        let (vm_id, k) = &self.vms[vm];
        let source = format!("10.{}.{}.{}", 100 + ((n >> 16) & 0x7f), (n >> 8) & 0xff, n & 0xff);
        let secs = 2 + rng.below(9);
        let body = jitgate_cli::access::initiate_body(
            vm_id,
            &[22],
            &source,
            None,
            Some(format!("PT{secs}S")),
            Some("soak".into()),
        );
        let answer = match self.requester.arm().initiate(&policy_ref(*k).id(), &body, false).await {
            Ok(a) => a,
            Err(e) => return self.counts.error("initiate", &e),
        };
        self.counts.initiated.fetch_add(1, Relaxed);
        let Some(id) = answer.id else {
            self.counts.failed.fetch_add(1, Relaxed);
            return;
        };
        let port = answer.virtual_machines.first().and_then(|v| v.ports.first());
        let pending = port.is_some_and(|p| p.status == "Pending");
        let end_ms = if pending { None } else { port.and_then(|p| parse_ms(&p.end_time_utc)) };
        let tracked = Tracked { fw, source: source.parse().ok(), end_ms, ..Tracked::default() };
        lock(&self.tracker).grants.insert(id, tracked);
        let end_ms = if pending {
            self.counts.pending.fetch_add(1, Relaxed);
            tokio::time::sleep(Duration::from_millis(300 + rng.below(1200))).await;
            let deny = rng.below(5) == 0;
            let (decision, reason) = if deny { (Decision::Deny, "soak: denied") } else { (Decision::Approve, "soak") };
            let body = DecisionIn { reason: Some(reason.into()) };
            match self.admin.native().decide(id, decision, &body, false).await {
                Ok(_) if deny => {
                    self.counts.denied.fetch_add(1, Relaxed);
                    if let Some(g) = lock(&self.tracker).grants.get_mut(&id) {
                        g.denied = true;
                    }
                    return;
                }
                Ok(out) => {
                    self.counts.approved.fetch_add(1, Relaxed);
                    let end = out.request.virtual_machines.first().and_then(|v| v.ports.first());
                    let end = end.and_then(|p| parse_ms(&p.end_time_utc));
                    if let Some(g) = lock(&self.tracker).grants.get_mut(&id) {
                        g.end_ms = end;
                    }
                    return;
                }
                Err(e) => return self.counts.error(if deny { "deny" } else { "approve" }, &e),
            }
        } else {
            end_ms
        };
        // One grant in six is revoked before its end (never in its last 700 ms).
        let Some(end_ms) = end_ms else { return };
        if rng.below(6) == 0 {
            let left = end_ms - w::unix_ms() - 700;
            if left > 0 {
                tokio::time::sleep(Duration::from_millis(rng.below(left as u64))).await;
                match self.admin.native().revoke(id, false).await {
                    Ok(_) => {
                        let at = w::unix_ms();
                        self.counts.revoked.fetch_add(1, Relaxed);
                        if let Some(g) = lock(&self.tracker).grants.get_mut(&id) {
                            g.revoked_ms = Some(at);
                        }
                    }
                    Err(e) => self.counts.error("revoke", &e),
                }
            }
        }
    }
}

fn parse_ms(text: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    Some((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

fn client(url: &str, token: String, ca: &Path) -> Result<Client, ClientError> {
    Client::new(Settings::new(url).token(token).ca_cert_path(Some(ca)))
}

async fn join_token(admin: &Client) -> anyhow::Result<String> {
    let ask = JoinTokenIn {
        subscription: Some(SUB.into()),
        resource_group: Some(RG.into()),
        location: Some("westeurope".into()),
        mode: Some("host".into()),
        ttl: None,
        vm: None,
    };
    Ok(admin.native().create_join_token(&ask).await.map_err(|e| anyhow!("join token: {e}"))?.token)
}

async fn soak(args: &SoakArgs, real: &[RealNs]) -> anyhow::Result<Report> {
    let tmp = tempfile::tempdir()?;
    let exe = std::env::current_exe().context("locating the jitgate binary")?;
    let mut flags: Vec<String> = BENCH_SERVER_FLAGS.iter().map(|f| f.to_string()).collect();
    flags.extend(["--rate-limit-join", "off", "--rate-limit-tokens", "off"].map(String::from));
    for r in real {
        flags.extend(["--tls-san".to_owned(), r.server_addr.clone()]);
    }
    let listen = if real.is_empty() { "127.0.0.1:0" } else { "0.0.0.0:0" };
    let data_dir = tmp.path().join("server");
    let server = {
        let (exe, data_dir) = (exe.clone(), data_dir.clone());
        tokio::task::spawn_blocking(move || {
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            LocalServer::start_with(&[], &exe, &data_dir, listen, &flags)
        })
        .await??
    };
    let port: u16 = server.url.rsplit(':').next().and_then(|p| p.parse().ok()).context("the server's port")?;
    let url = format!("https://127.0.0.1:{port}");
    let pid = server.pid().context("the server's process")?;
    let admin = client(&url, server.token.clone(), &server.ca_cert)?;
    let n = admin.native();
    n.create_principal(&PrincipalIn { name: Some(REQUESTER.into()), kind: Some("User".into()) }).await?;
    let assign = RoleAssignmentIn {
        principal: Some(REQUESTER.into()),
        role: Some("JIT Network Access Requester".into()),
        scope: Some(format!("/subscriptions/{SUB}")),
    };
    n.assign_role(&assign).await?;
    let token = n.create_token(REQUESTER, &TokenIn { expires_in: None }).await?.token;
    let requester = client(&url, token, &server.ca_cert)?;

    // The enforcement points.
    let (stop_agents, stopped) = watch::channel(false);
    let mut fws = Vec::new();
    let mut names = Vec::new();
    let mut agents = Vec::new();
    for i in 0..args.agents {
        let name = format!("fake-{i}");
        let fw = FakeFirewall::new(Instant::now);
        fws.push(Fw::Fake(fw.handle()));
        let cfg = AgentConfig {
            servers: vec![url.clone()],
            join_token: Some(join_token(&admin).await?),
            ca_cert: Some(server.ca_cert.clone()),
            pins: vec![],
            state_dir: tmp.path().join("agents").join(&name),
            mode: Mode::Host,
            vm_name: Some(name.clone()),
            public_address: None,
            poll_wait: Duration::from_secs(30),
            rotate_credential: false,
            metrics: Arc::new(AgentMetrics::new()),
        };
        let mut stop = stopped.clone();
        agents.push(tokio::spawn(async move {
            let control = HttpControl::new(&cfg.servers, cfg.ca_cert.as_deref(), vec![])?;
            let shutdown = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            jitgate_agent::run_with(cfg, &control, fw, shutdown).await.map_err(anyhow::Error::from)
        }));
        names.push(name);
    }
    let mut procs: Vec<KillOnDrop> = Vec::new();
    for (i, r) in real.iter().enumerate() {
        let name = format!("real-{i}");
        let mut cmd = r.ns.cmd(&exe);
        cmd.args(["agent", "--server", &format!("https://{}:{port}", r.server_addr), "--join-token"])
            .arg(join_token(&admin).await?)
            .args(["--vm-name", &name, "--state-dir"])
            .arg(tmp.path().join("agents").join(&name))
            .arg("--ca-cert")
            .arg(&server.ca_cert)
            .env("JITGATE_LOG", "warn");
        procs.push(KillOnDrop::spawn(cmd)?);
        fws.push(Fw::Real(r.ns.name.clone()));
        names.push(name);
    }
    let ids: Vec<String> = names.iter().map(|n| vm_id(n)).collect();
    let joined = Instant::now();
    loop {
        let listed = admin.native().vms(None).await?;
        let have = ids.iter().filter(|id| listed.iter().any(|v| v.id.eq_ignore_ascii_case(id))).count();
        if have == ids.len() {
            break;
        }
        if joined.elapsed() > Duration::from_secs(120) {
            bail!("only {have} of {} agents joined within 120 s", ids.len());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("setup: {} agents joined in {:.1} s", ids.len(), joined.elapsed().as_secs_f64());

    let p = POLICIES.min(ids.len());
    let mut policies = vec![Vec::new(); p];
    let vms: Vec<(String, usize)> = ids.iter().enumerate().map(|(j, id)| (id.clone(), j % p)).collect();
    for (id, k) in &vms {
        policies[*k].push(id.clone());
    }
    let world = Arc::new(World {
        admin,
        requester,
        vms,
        policies,
        fakes: args.agents as usize,
        tracker: Shared::default(),
        counts: Counts::default(),
    });
    for k in 0..p {
        world.put_policy(k, 0).await.map_err(|e| anyhow!("policy soak-{k}: {e}"))?;
    }

    let (stop_watch, watching) = watch::channel(false);
    let watcher = tokio::spawn(w::watch(fws, world.tracker.clone(), watching));
    let sampler = Sampler {
        pid,
        wal: data_dir.join("jitgate.db-wal"),
        metrics_url: format!("{url}/metrics"),
        http: reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&server.ca_cert)?)?)
            .build()?,
        agents: procs.iter().map(|p| p.0.id()).collect(),
    };

    // The traffic.
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut rng = Rng(0x5eed_50a4);
    let mut requests = tokio::task::JoinSet::new();
    let every = Duration::from_secs_f64(1.0 / args.rate.clamp(0.01, 1000.0));
    let sample_every = Duration::from_secs(args.sample_every);
    let (mut next_request, mut next_sample, mut next_edit) = (started, started, started + EDIT_EVERY);
    let (mut count, mut edits, mut next_progress) = (0u64, 0u64, started + Duration::from_secs(60));
    while started.elapsed() < args.duration && !INTERRUPTED.load(Relaxed) {
        let now = Instant::now();
        if now >= next_sample {
            samples.push(sampler.sample(started, &world.tracker).await);
            next_sample += sample_every;
        }
        if now >= next_edit {
            edits += 1;
            let k = (edits as usize) % p;
            match world.put_policy(k, edits).await {
                Ok(()) => world.counts.edits.fetch_add(1, Relaxed),
                Err(e) => {
                    world.counts.error("policy edit", &e);
                    0
                }
            };
            next_edit += EDIT_EVERY;
        }
        if now >= next_progress {
            if let Some(s) = samples.last() {
                eprintln!(
                    "soak: {:.0} s, {} initiates, server RSS {:.1} MiB, {} fds, live grants {:?}, elements {}",
                    s.t_s,
                    world.counts.initiated.load(Relaxed),
                    s.rss_kib / 1024.0,
                    s.fds,
                    s.live_grants,
                    s.elements
                );
            }
            next_progress += Duration::from_secs(60);
        }
        while now >= next_request {
            // A quarter of the requests go to the real agents' VMs.
            let vm = if !real.is_empty() && rng.below(4) == 0 {
                args.agents as usize + rng.below(real.len() as u64) as usize
            } else {
                rng.below(args.agents as u64) as usize
            };
            requests.spawn(world.clone().request(count, vm, vm, rng.next()));
            count += 1;
            next_request += every;
        }
        while requests.try_join_next().is_some() {}
        let wake = next_request.min(next_sample).min(next_edit);
        tokio::time::sleep(wake.saturating_duration_since(Instant::now()).min(Duration::from_millis(100))).await;
    }
    let run_s = started.elapsed().as_secs_f64();
    while requests.join_next().await.is_some() {}

    // Every grant closes; then the firewalls and the server must hold none.
    let last_close = lock(&world.tracker).grants.values().filter_map(Tracked::close_ms).max().unwrap_or(0);
    let wait = (last_close + 2 * w::LATE_LIMIT_MS - w::unix_ms()).clamp(0, 20_000) as u64;
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let mut last = sampler.sample(started, &world.tracker).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while (last.live_grants != Some(0.0) || last.elements != 0) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        last = sampler.sample(started, &world.tracker).await;
    }
    let _ = stop_watch.send(true);
    let _ = watcher.await;
    let _ = stop_agents.send(true);
    let mut stopped_early = Vec::new();
    for (i, a) in agents.into_iter().enumerate() {
        match a.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => stopped_early.push(format!("agent fake-{i} stopped: {e:#}")),
            Err(e) => stopped_early.push(format!("agent fake-{i} panicked: {e}")),
        }
    }
    for (i, p) in procs.iter_mut().enumerate() {
        if let Ok(Some(status)) = p.0.try_wait() {
            stopped_early.push(format!("real agent {i} exited with {status}"));
        }
    }
    let server_alive = Rss::of(pid).is_some();
    let report = Report::judge(&world, samples, last, run_s, edits, stopped_early, server_alive);
    drop(procs);
    drop(server);
    Ok(report)
}

struct Sampler {
    pid: u32,
    wal: PathBuf,
    metrics_url: String,
    http: reqwest::Client,
    agents: Vec<u32>,
}

impl Sampler {
    async fn sample(&self, started: Instant, tracker: &Shared) -> Sample {
        let rss = Rss::of(self.pid).map(|r| r.now_kib as f64).unwrap_or(f64::NAN);
        let anon = w::anon_kib(self.pid).unwrap_or(f64::NAN);
        let fds = std::fs::read_dir(format!("/proc/{}/fd", self.pid)).map(|d| d.count() as f64).unwrap_or(f64::NAN);
        let wal = std::fs::metadata(&self.wal).map(|m| m.len() as f64).unwrap_or(0.0);
        let live_grants = match self.http.get(&self.metrics_url).send().await {
            Ok(r) => r.text().await.ok().and_then(|t| {
                t.lines().find_map(|l| l.strip_prefix("jitgate_live_grants ")).and_then(|v| v.trim().parse().ok())
            }),
            Err(_) => None,
        };
        let t = lock(tracker);
        let agent_rss_kib = self.agents.iter().filter_map(|p| w::anon_kib(*p)).reduce(f64::max);
        Sample {
            t_s: started.elapsed().as_secs_f64(),
            rss_kib: rss,
            anon_kib: anon,
            fds,
            wal_bytes: wal,
            live_grants,
            elements: t.fake_elements + t.real_elements,
            agent_rss_kib,
        }
    }
}
