//! The jitgate agent: an enforcement point.
//!
//! It joins once with a one-time token and keeps its own credential in the state directory
//! (mode 0600); from then on it starts from that credential. It long-polls its desired state,
//! turns it into a [`Desired`](jitgate_enforce::Desired) (each grant's deadline from the *remaining* time the server sent,
//! counted from the arrival of the answer, so clock skew between hosts never moves a window; at
//! most the one-way network latency is added), plans the change
//! against what it applied last, applies it in one atomic step, and reports the revision.
//! If the server is unreachable it keeps what it applied and retries with backoff; grants expire
//! in the kernel regardless. It watches the firewall too: when someone else deletes or changes
//! its table (`nft flush ruleset`, a firewall reload), it puts the last applied state back at
//! once, each grant with the time it has left.

mod cache;
pub mod control;
pub mod convert;
mod enforcer;
pub mod prom;
#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use enforcer::Enforcer;
use jitgate_api_types::agent::{AppliedIn, JoinIn, StateOut};
use jitgate_enforce::{Firewall, Mode};

pub use control::{CallError, ClientError, Control, HttpControl};

/// Where the agent keeps its credential and its last applied state.
pub const CREDENTIAL_FILE: &str = "agent.json";
pub const STATE_FILE: &str = "state.json";

/// How the agent was started.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The control plane's replicas, tried in this order (empty: the stored ones).
    pub servers: Vec<String>,
    pub join_token: Option<String>,
    pub ca_cert: Option<PathBuf>,
    /// Trust the server by these SHA-256 fingerprints (certificate or public key) instead of a CA.
    pub pins: Vec<[u8; 32]>,
    pub state_dir: PathBuf,
    pub mode: Mode,
    pub vm_name: Option<String>,
    /// Gateway mode: the address clients connect to (shown to requesters as `publicIpAddress`).
    pub public_address: Option<IpAddr>,
    /// How long one long-poll may be held by the server.
    pub poll_wait: Duration,
    /// Replace the stored credential with a new one before running.
    pub rotate_credential: bool,
    /// Where the loop counts what it does (served by `--metrics-listen`).
    pub metrics: Arc<prom::AgentMetrics>,
}

/// The agent's own credential, as stored in the state directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Credential {
    /// The server the agent joined through (or the first of the list it was last started with).
    pub server: String,
    /// Every replica the agent was given; a later start with `--server` replaces the list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<String>,
    pub agent_id: String,
    pub credential: String,
    pub name: String,
    pub mode: String,
    #[serde(default)]
    pub ca_cert: Option<PathBuf>,
    /// The SHA-256 fingerprints the server is trusted by (`AB:CD:…`), when given instead of a CA.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub server_fingerprints: Vec<String>,
}

impl Credential {
    /// What a join answered, kept with the server that answered it, every replica given (when
    /// there are several), the CA certificate and the server fingerprints trusted.
    pub fn joined(
        out: jitgate_api_types::agent::JoinOut,
        server: String,
        servers: Vec<String>,
        ca_cert: Option<PathBuf>,
        server_fingerprints: Vec<String>,
    ) -> Self {
        Credential {
            server,
            servers: if servers.len() > 1 { servers } else { Vec::new() },
            agent_id: out.agent_id,
            credential: out.credential,
            name: out.name,
            mode: out.mode,
            ca_cert,
            server_fingerprints,
        }
    }

    /// The stored fingerprints; one that cannot be read is an error naming the file.
    fn pins(&self, state_dir: &Path) -> Result<Vec<[u8; 32]>, AgentError> {
        self.server_fingerprints
            .iter()
            .map(|p| {
                jitgate_core::certinfo::parse_pin(p)
                    .map_err(|e| AgentError::BadFingerprint { path: state_dir.join(CREDENTIAL_FILE), message: e })
            })
            .collect()
    }
}

fn pin_texts(pins: &[[u8; 32]]) -> Vec<String> {
    pins.iter().map(|p| jitgate_core::certinfo::colon_hex(p)).collect()
}

/// The last state the agent applied, with the wall-clock time it was fetched (to restore after
/// a restart while the server is unreachable).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CachedState {
    fetched_unix_ms: u64,
    /// The boot the state was fetched in, and the time since that boot then (see
    /// `cache::elapsed_ms`); absent in files of older agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    boot_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fetched_boot_ms: Option<u64>,
    state: StateOut,
}

/// Why the agent stopped (or could not start). A shutdown is not an error: [`run`] returns
/// `Ok(())` for it.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No stored credential and no server to join.
    #[error("not joined yet: give --server and --join-token")]
    NoServer,
    /// No stored credential and no join token.
    #[error("not joined yet: give --join-token (from `jitgate agent token create`)")]
    NoJoinToken,
    /// The server refused the agent's credential (401).
    #[error("{}", refused_message(.state_dir))]
    Refused { state_dir: PathBuf },
    /// A file in the state directory could not be read or written.
    #[error("{what} {}", .path.display())]
    File {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The stored credential is not what this agent writes.
    #[error("reading {}", .path.display())]
    BadCredential {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A stored server fingerprint is not one.
    #[error("reading {}: {message}", .path.display())]
    BadFingerprint { path: PathBuf, message: String },
    /// The HTTP client could not be built.
    #[error("setting up the connection to the server")]
    Client(#[from] ClientError),
    /// The server refused to let the agent join: its reason, and what to do.
    #[error("the server refused to let this agent join ({status}): {message}. {}", join_advice(.message))]
    JoinRefused { status: u16, message: String },
    /// Joining or rotating failed.
    #[error("{what}")]
    Call {
        what: &'static str,
        #[source]
        source: CallError,
    },
}

impl AgentError {
    fn call<'a>(what: &'static str, state_dir: &'a Path) -> impl FnOnce(CallError) -> AgentError + 'a {
        move |source| match source {
            CallError::Unauthorized => AgentError::Refused { state_dir: state_dir.to_owned() },
            source => AgentError::Call { what, source },
        }
    }
}

/// The agent's clock: the monotonic clock, as the runtime sees it (so that tests can pause it).
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), AgentError> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    fn file_error(path: &Path) -> impl FnOnce(std::io::Error) -> AgentError {
        let path = path.to_owned();
        move |source| AgentError::File { what: "writing", path, source }
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(&tmp).map_err(file_error(&tmp))?;
    f.write_all(data).and_then(|()| f.sync_all()).map_err(file_error(&tmp))?;
    std::fs::rename(&tmp, path).map_err(file_error(path))?;
    Ok(())
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs cannot fail; an empty file would be refused when read.
    serde_json::to_vec_pretty(value).unwrap_or_default()
}

/// The host's name, for the default VM name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The host's global addresses (from `ip -o addr`), loopback and link-local left out.
pub fn local_addresses() -> Vec<IpAddr> {
    let Ok(out) = std::process::Command::new("ip").args(["-o", "addr", "show"]).output() else { return vec![] };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            while let Some(w) = it.next() {
                if w == "inet" || w == "inet6" {
                    return it.next().and_then(|a| a.split('/').next()).and_then(|a| a.parse::<IpAddr>().ok());
                }
            }
            None
        })
        .filter(|ip| {
            !ip.is_loopback()
                && !matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
                && !matches!(ip, IpAddr::V4(v4) if v4.is_link_local())
        })
        .collect()
}

/// The stored credential, with the servers and CA certificate given on the command line in
/// place of the stored ones; `None` when the agent has not joined yet.
pub fn stored_credential(cfg: &AgentConfig) -> Result<Option<Credential>, AgentError> {
    let path = cfg.state_dir.join(CREDENTIAL_FILE);
    let Ok(data) = std::fs::read(&path) else { return Ok(None) };
    let mut c: Credential =
        serde_json::from_slice(&data).map_err(|source| AgentError::BadCredential { path: path.clone(), source })?;
    let given = given_servers(cfg);
    if let Some(first) = given.first() {
        c.server = first.clone();
        c.servers = given;
    }
    if cfg.ca_cert.is_some() {
        c.ca_cert = cfg.ca_cert.clone();
    }
    if !cfg.pins.is_empty() {
        c.server_fingerprints = pin_texts(&cfg.pins);
    }
    Ok(Some(c))
}

/// The servers given at start: each `--server`, comma lists split, trailing slashes removed.
pub fn given_servers(cfg: &AgentConfig) -> Vec<String> {
    cfg.servers.iter().flat_map(|s| jitgate_client::split_urls(s)).collect()
}

/// Loads the stored credential, or joins with the join token and stores the new one.
pub async fn credential(cfg: &AgentConfig, control: &impl Control) -> Result<Credential, AgentError> {
    std::fs::create_dir_all(&cfg.state_dir).map_err(|source| AgentError::File {
        what: "creating",
        path: cfg.state_dir.clone(),
        source,
    })?;
    if let Some(c) = stored_credential(cfg)? {
        return Ok(c);
    }
    let servers = given_servers(cfg);
    if servers.is_empty() {
        return Err(AgentError::NoServer);
    }
    let Some(token) = cfg.join_token.as_deref() else { return Err(AgentError::NoJoinToken) };
    let name = cfg.vm_name.clone().unwrap_or_else(hostname);
    let body = JoinIn {
        join_token: token.to_owned(),
        name: name.clone(),
        mode: cfg.mode.as_str().into(),
        os_type: "Linux".into(),
        addresses: local_addresses().iter().map(|a| a.to_string()).collect(),
        public_address: cfg.public_address.map(|a| a.to_string()),
        hostname: hostname(),
        name_is_hostname: cfg.vm_name.is_none(),
    };
    let out = control.join(&body).await.map_err(|source| match source {
        // At join a 401 is the join token's refusal, not a credential's.
        CallError::Status { status, body } if status.is_client_error() => {
            AgentError::JoinRefused { status: status.as_u16(), message: body }
        }
        CallError::Unauthorized => {
            AgentError::JoinRefused { status: 401, message: "the join token was refused".into() }
        }
        source => AgentError::Call { what: "joining", source },
    })?;
    let server = control.server().unwrap_or(&servers[0]).to_owned();
    let vm = out.vm_id.clone();
    let c = Credential::joined(out, server, servers, cfg.ca_cert.clone(), pin_texts(&cfg.pins));
    write_private(&cfg.state_dir.join(CREDENTIAL_FILE), &to_json(&c))?;
    tracing::info!(agent = %c.agent_id, name = %c.name, vm = ?vm, "joined");
    Ok(c)
}

/// What to do after a refused join, by its reason.
fn join_advice(message: &str) -> &'static str {
    if message.contains("VirtualMachineExists") {
        "To put this agent on that VM, make a token for it: jitgate agent token create … --vm NAME"
    } else if message.contains("was made for virtual machine") {
        "Start the agent without --vm-name (it then joins as the token's VM), or make a token for the VM you named"
    } else if message.contains("GatewayExists") {
        "Remove the old gateway agent first (jitgate agent rm ID), or join under another --vm-name"
    } else {
        "Join tokens are single-use and expire: make a new one with jitgate agent token create … (--vm NAME for a VM that is already registered)"
    }
}

/// What the agent says when the server refuses its credential (401), and how to recover.
pub fn refused_message(state_dir: &Path) -> String {
    format!(
        "the server refused this agent's credential (401): it was revoked (jitgate agent rm), removed with its VM, \
         replaced by another agent joining for this VM, or rotated by another copy of this agent. To join again: \
         create a join token (jitgate agent token create … --vm NAME for an existing VM), remove {}, and start the \
         agent with --join-token",
        state_dir.join(CREDENTIAL_FILE).display()
    )
}

/// Asks the server for a new credential and stores it (0600) in place of the old one, which
/// stops working at once.
pub async fn rotate(cfg: &AgentConfig, cred: &Credential, control: &impl Control) -> Result<Credential, AgentError> {
    let out =
        control.rotate(&cred.credential).await.map_err(AgentError::call("rotating the credential", &cfg.state_dir))?;
    let mut next = cred.clone();
    next.credential = out.credential;
    write_private(&cfg.state_dir.join(CREDENTIAL_FILE), &to_json(&next))?;
    tracing::info!(agent = %next.agent_id, "rotated the credential");
    Ok(next)
}

fn load_cache(dir: &Path) -> Option<CachedState> {
    std::fs::read(dir.join(STATE_FILE)).ok().and_then(|d| serde_json::from_slice(&d).ok())
}

/// The agent's loop over HTTPS; returns `Ok(())` when `shutdown` completes. The firewall table
/// stays in place.
pub async fn run<F: Firewall>(
    cfg: AgentConfig,
    firewall: F,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    let stored = stored_credential(&cfg)?;
    let (servers, ca_cert, pins) = match &stored {
        Some(c) if c.servers.is_empty() => (vec![c.server.clone()], c.ca_cert.clone(), c.pins(&cfg.state_dir)?),
        Some(c) => (c.servers.clone(), c.ca_cert.clone(), c.pins(&cfg.state_dir)?),
        None => (given_servers(&cfg), cfg.ca_cert.clone(), cfg.pins.clone()),
    };
    if servers.is_empty() {
        return Err(AgentError::NoServer);
    }
    let control = HttpControl::new(&servers, ca_cert.as_deref(), pins)?;
    run_with(cfg, &control, firewall, shutdown).await
}

/// The first backoff after a failure; it doubles up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(250);
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The agent's loop against any [`Control`]: join (or load the credential), restore the last
/// applied state, then long-poll, apply and report until `shutdown` completes. Every line it
/// logs once it has its credential is inside the span `agent{agent_id vm mode}`.
pub async fn run_with<F: Firewall>(
    cfg: AgentConfig,
    control: &impl Control,
    firewall: F,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    use tracing::Instrument;
    let span = tracing::info_span!(
        "agent",
        agent_id = tracing::field::Empty,
        vm = tracing::field::Empty,
        mode = tracing::field::Empty
    );
    run_agent(cfg, control, firewall, shutdown).instrument(span).await
}

async fn run_agent<F: Firewall>(
    cfg: AgentConfig,
    control: &impl Control,
    firewall: F,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    let mut cred = credential(&cfg, control).await?;
    if cfg.rotate_credential {
        cred = rotate(&cfg, &cred, control).await?;
    }
    let span = tracing::Span::current();
    span.record("agent_id", cred.agent_id.as_str());
    span.record("vm", cred.name.as_str());
    span.record("mode", cred.mode.as_str());
    let refused = || AgentError::Refused { state_dir: cfg.state_dir.clone() };
    let mode = Mode::parse(&cred.mode).unwrap_or(cfg.mode);
    let health = firewall.usable().map_err(|e| e.to_string());
    if let Err(e) = &health {
        tracing::error!(error = %e, "nftables is not usable here; reporting it to the server");
    }
    let metrics = cfg.metrics.clone();
    // Watching from the start: a table deleted by someone else is put back at once.
    let mut fw = Enforcer::new(firewall, metrics.clone(), health.is_ok());
    // Restore what was last applied, with the time that has passed since, until the server answers.
    if health.is_ok() {
        if let Some(cache) = load_cache(&cfg.state_dir) {
            let saved = (cache.boot_id.as_deref(), cache.fetched_boot_ms, cache.fetched_unix_ms);
            let boot = cache::boot_clock();
            let elapsed = cache::elapsed_ms(saved, boot.as_ref().map(|(id, ms)| (id.as_str(), *ms)), unix_ms());
            let desired = convert::desired(&cache.state, mode, now(), Duration::from_millis(elapsed));
            match fw.restore(desired) {
                Ok(()) => {
                    tracing::info!(revision = cache.state.revision, "restored the last applied state");
                    metrics.revision(cache.state.revision);
                }
                Err(e) => tracing::warn!(error = %e, "could not restore the last applied state"),
            }
        }
    }
    let mut after: Option<u64> = None;
    let mut backoff = FIRST_BACKOFF;
    // Dropped when the loop ends, which waits until the last state saved is on disk.
    let cache_writer = cache::CacheWriter::start(cfg.state_dir.join(STATE_FILE));
    tokio::pin!(shutdown);
    'poll: loop {
        let poll = control.state(&cred.credential, after, cfg.poll_wait);
        tokio::pin!(poll);
        // The long-poll stays in flight while the table is put back.
        let answer = loop {
            tokio::select! {
                r = &mut poll => break r,
                what = fw.tampered() => {
                    if !fw.put_back(&what) {
                        // Ask for the whole state at once: its replacement is the next try.
                        after = None;
                        continue 'poll;
                    }
                }
                _ = &mut shutdown => return Ok(()),
            }
        };
        metrics.server(reached(&answer));
        let state = match answer {
            Ok(state) => state,
            Err(CallError::Unauthorized) => return Err(refused()),
            Err(e) => {
                match &e {
                    CallError::Unreadable(_) => tracing::warn!(error = %e, "unreadable state; retrying"),
                    CallError::Status { status, .. } => {
                        tracing::warn!(status = %status, "state request failed; keeping the applied state")
                    }
                    _ => match clock_hint(&e.to_string()) {
                        Some(hint) => tracing::warn!(error = %e, hint, "server unreachable; keeping the applied state"),
                        None => tracing::warn!(error = %e, "server unreachable; keeping the applied state"),
                    },
                }
                match sleep_or_stop(&mut backoff, &mut shutdown, &mut fw).await {
                    Wake::Retry => continue,
                    Wake::Shutdown => return Ok(()),
                }
            }
        };
        backoff = FIRST_BACKOFF;
        // Remaining times were computed when the server answered (a long-poll may have been held
        // for a while): count them from the arrival of the answer.
        let received = now();
        let revision = state.revision;
        let (usable, error) = match &health {
            Err(e) => (false, Some(e.clone())),
            Ok(()) => match fw.reconcile(convert::desired(&state, mode, received, Duration::ZERO), revision) {
                Ok(()) => {
                    metrics.revision(revision);
                    let ago = now().saturating_duration_since(received).as_millis() as u64;
                    let boot = cache::boot_clock();
                    let cache = CachedState {
                        fetched_unix_ms: unix_ms().saturating_sub(ago),
                        fetched_boot_ms: boot.as_ref().map(|(_, ms)| ms.saturating_sub(ago)),
                        boot_id: boot.map(|(id, _)| id),
                        state,
                    };
                    if let Ok(data) = serde_json::to_vec(&cache) {
                        cache_writer.save(data, &cfg.state_dir.join(STATE_FILE));
                    }
                    (true, None)
                }
                Err(e) => {
                    tracing::error!(error = %e, "applying the state failed");
                    (false, Some(e.to_string()))
                }
            },
        };
        let report = AppliedIn { revision, nftables_usable: usable, nftables_error: error };
        let reported = control.applied(&cred.credential, &report).await;
        metrics.server(reached(&reported));
        metrics.upkeep();
        match reported {
            Ok(()) => {}
            Err(CallError::Unauthorized) => return Err(refused()),
            Err(CallError::Status { status, .. }) => {
                tracing::warn!(status = %status, "the server refused the report of the applied revision")
            }
            Err(e) => tracing::warn!(error = %e, "could not report the applied revision"),
        }
        if usable {
            after = Some(revision);
        } else if let Wake::Shutdown = sleep_or_stop(&mut backoff, &mut shutdown, &mut fw).await {
            return Ok(());
        }
    }
}

/// What to do when the server's certificate is refused for its dates: with a CA certificate,
/// TLS checks them against this host's wall clock (grants themselves never depend on it).
pub fn clock_hint(error: &str) -> Option<&'static str> {
    (error.contains("certificate not valid yet") || error.contains("certificate expired")).then_some(
        "the server's certificate is not valid at this host's clock: set the clock (timedatectl set-ntp true), or trust the server with --server-fingerprint, which does not depend on the clock",
    )
}

/// Whether a call reached a working server: it answered, if only with a refusal (a 5xx or no
/// answer is not reaching it).
fn reached<T>(r: &Result<T, CallError>) -> bool {
    match r {
        Ok(_) | Err(CallError::Unauthorized) => true,
        Err(CallError::Status { status, .. }) => !status.is_server_error(),
        Err(CallError::Unreachable(_) | CallError::Unreadable(_)) => false,
    }
}

/// How a backoff ended.
enum Wake {
    Retry,
    Shutdown,
}

/// Sleeps for the backoff (doubling it up to [`MAX_BACKOFF`]), or less if shutdown comes first;
/// a table changed by someone else meanwhile is put back at once.
async fn sleep_or_stop<F: Firewall>(
    backoff: &mut Duration,
    shutdown: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    fw: &mut Enforcer<F>,
) -> Wake {
    let wait = tokio::time::sleep(*backoff);
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
    tokio::pin!(wait);
    loop {
        tokio::select! {
            _ = &mut wait => return Wake::Retry,
            _ = shutdown.as_mut() => return Wake::Shutdown,
            what = fw.tampered() => {
                fw.put_back(&what);
            }
        }
    }
}
