//! The jitgate agent: an enforcement point.
//!
//! It joins once with a one-time token and keeps its own credential in the state directory
//! (mode 0600); from then on it starts from that credential. It long-polls its desired state,
//! turns it into a [`Desired`] (each grant's deadline from the *remaining* time the server sent,
//! counted from the arrival of the answer, so clock skew between hosts never moves a window; at
//! most the one-way network latency is added), plans the change
//! against what it applied last, applies it in one atomic step, and reports the revision.
//! If the server is unreachable it keeps what it applied and retries with backoff; grants expire
//! in the kernel regardless.

pub mod convert;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use jitgate_api_types::agent::{AppliedIn, JoinIn, JoinOut, RotateOut, StateOut};
use jitgate_enforce::{plan, Desired, Firewall, Mode, Plan};

/// Where the agent keeps its credential and its last applied state.
pub const CREDENTIAL_FILE: &str = "agent.json";
pub const STATE_FILE: &str = "state.json";

/// How the agent was started.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub server: Option<String>,
    pub join_token: Option<String>,
    pub ca_cert: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub mode: Mode,
    pub vm_name: Option<String>,
    /// Gateway mode: the address clients connect to (shown to requesters as `publicIpAddress`).
    pub public_address: Option<IpAddr>,
    /// How long one long-poll may be held by the server.
    pub poll_wait: Duration,
    /// Replace the stored credential with a new one before running.
    pub rotate_credential: bool,
}

/// The agent's own credential, as stored in the state directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Credential {
    pub server: String,
    pub agent_id: String,
    pub credential: String,
    pub name: String,
    pub mode: String,
    #[serde(default)]
    pub ca_cert: Option<PathBuf>,
}

/// The last state the agent applied, with the wall-clock time it was fetched (to restore after
/// a restart while the server is unreachable).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CachedState {
    fetched_unix_ms: u64,
    state: StateOut,
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
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

/// Loads the stored credential, or joins with the join token and stores the new one.
pub async fn credential(cfg: &AgentConfig) -> anyhow::Result<Credential> {
    std::fs::create_dir_all(&cfg.state_dir).with_context(|| format!("creating {}", cfg.state_dir.display()))?;
    let path = cfg.state_dir.join(CREDENTIAL_FILE);
    if let Ok(data) = std::fs::read(&path) {
        let mut c: Credential = serde_json::from_slice(&data).with_context(|| format!("reading {}", path.display()))?;
        if let Some(server) = &cfg.server {
            c.server = server.trim_end_matches('/').to_owned();
        }
        if cfg.ca_cert.is_some() {
            c.ca_cert = cfg.ca_cert.clone();
        }
        return Ok(c);
    }
    let Some(server) = cfg.server.as_deref() else { bail!("not joined yet: give --server and --join-token") };
    let Some(token) = cfg.join_token.as_deref() else {
        bail!("not joined yet: give --join-token (from `jitgate agent token create`)")
    };
    let server = server.trim_end_matches('/').to_owned();
    let client = jitgate_cli::client::http_client(cfg.ca_cert.as_deref())?;
    let name = cfg.vm_name.clone().unwrap_or_else(hostname);
    let body = JoinIn {
        join_token: token.to_owned(),
        name: name.clone(),
        mode: cfg.mode.as_str().into(),
        os_type: "Linux".into(),
        addresses: local_addresses().iter().map(|a| a.to_string()).collect(),
        public_address: cfg.public_address.map(|a| a.to_string()),
        hostname: hostname(),
    };
    let resp = client.post(format!("{server}/agent/v1/join")).json(&body).send().await.context("joining")?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("join refused ({status}): {text}");
    }
    let out: JoinOut = serde_json::from_str(&text).context("reading the join answer")?;
    let c = Credential {
        server,
        agent_id: out.agent_id,
        credential: out.credential,
        name: out.name,
        mode: out.mode,
        ca_cert: cfg.ca_cert.clone(),
    };
    write_private(&path, &serde_json::to_vec_pretty(&c)?)?;
    tracing::info!(agent = %c.agent_id, name = %c.name, vm = ?out.vm_id, "joined");
    Ok(c)
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
pub async fn rotate(cfg: &AgentConfig, cred: &Credential) -> anyhow::Result<Credential> {
    let client = jitgate_cli::client::http_client(cred.ca_cert.as_deref())?;
    let resp = client
        .post(format!("{}/agent/v1/rotate", cred.server))
        .bearer_auth(&cred.credential)
        .send()
        .await
        .context("rotating the credential")?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if status == reqwest::StatusCode::UNAUTHORIZED {
        bail!("{}", refused_message(&cfg.state_dir));
    }
    if !status.is_success() {
        bail!("rotating the credential failed ({status}): {text}");
    }
    let out: RotateOut = serde_json::from_str(&text).context("reading the rotation answer")?;
    let mut next = cred.clone();
    next.credential = out.credential;
    let path = cfg.state_dir.join(CREDENTIAL_FILE);
    write_private(&path, &serde_json::to_vec_pretty(&next)?)?;
    tracing::info!(agent = %next.agent_id, "rotated the credential");
    Ok(next)
}

fn load_cache(dir: &Path) -> Option<CachedState> {
    std::fs::read(dir.join(STATE_FILE)).ok().and_then(|d| serde_json::from_slice(&d).ok())
}

/// The agent's loop; returns when `shutdown` completes. The firewall table stays in place.
pub async fn run<F: Firewall>(
    cfg: AgentConfig,
    mut firewall: F,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut cred = credential(&cfg).await?;
    if cfg.rotate_credential {
        cred = rotate(&cfg, &cred).await?;
    }
    let mode = Mode::parse(&cred.mode).unwrap_or(cfg.mode);
    let client = jitgate_cli::client::http_client(cred.ca_cert.as_deref())?;
    let health = firewall.usable().map_err(|e| e.to_string());
    if let Err(e) = &health {
        tracing::error!(error = %e, "nftables is not usable here; reporting it to the server");
    }
    let mut applied: Option<Desired> = None;
    // Restore what was last applied, with the time that has passed since, until the server answers.
    if health.is_ok() {
        if let Some(cache) = load_cache(&cfg.state_dir) {
            let elapsed = unix_ms().saturating_sub(cache.fetched_unix_ms);
            let desired = convert::desired(&cache.state, mode, Instant::now(), Duration::from_millis(elapsed));
            match firewall.replace(&desired, Instant::now()) {
                Ok(()) => {
                    tracing::info!(revision = cache.state.revision, "restored the last applied state");
                    applied = Some(desired);
                }
                Err(e) => tracing::warn!(error = %e, "could not restore the last applied state"),
            }
        }
    }
    let mut after: Option<u64> = None;
    let mut backoff = Duration::from_millis(250);
    tokio::pin!(shutdown);
    loop {
        let mut url = format!("{}/agent/v1/state?wait={}", cred.server, cfg.poll_wait.as_secs());
        if let Some(a) = after {
            url.push_str(&format!("&after={a}"));
        }
        let fetch =
            client.get(&url).bearer_auth(&cred.credential).timeout(cfg.poll_wait + Duration::from_secs(15)).send();
        let resp = tokio::select! {
            r = fetch => r,
            _ = &mut shutdown => return Ok(()),
        };
        let state: StateOut = match resp {
            Ok(r) if r.status().is_success() => match r.json().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable state; retrying");
                    sleep_or_stop(&mut backoff, &mut shutdown).await?;
                    continue;
                }
            },
            Ok(r) if r.status() == reqwest::StatusCode::UNAUTHORIZED => bail!("{}", refused_message(&cfg.state_dir)),
            Ok(r) => {
                tracing::warn!(status = %r.status(), "state request failed; keeping the applied state");
                if sleep_or_stop(&mut backoff, &mut shutdown).await.is_err() {
                    return Ok(());
                }
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "server unreachable; keeping the applied state");
                if sleep_or_stop(&mut backoff, &mut shutdown).await.is_err() {
                    return Ok(());
                }
                continue;
            }
        };
        backoff = Duration::from_millis(250);
        // Remaining times were computed when the server answered (a long-poll may have been held
        // for a while): count them from the arrival of the answer.
        let received = Instant::now();
        let revision = state.revision;
        let (usable, error) = match &health {
            Err(e) => (false, Some(e.clone())),
            Ok(()) => {
                let desired = convert::desired(&state, mode, received, Duration::ZERO);
                let now = Instant::now();
                let result = match plan(applied.as_ref(), &desired, now) {
                    Plan::Nothing => Ok(()),
                    Plan::Replace(d) => firewall.replace(&d, now),
                    Plan::Batch(ops) => firewall.apply(&ops).or_else(|e| {
                        tracing::warn!(error = %e, "batch failed; replacing the table instead");
                        firewall.replace(&desired, Instant::now())
                    }),
                };
                match result {
                    Ok(()) => {
                        applied = Some(desired);
                        let cache = CachedState {
                            fetched_unix_ms: unix_ms().saturating_sub(received.elapsed().as_millis() as u64),
                            state,
                        };
                        if let Ok(data) = serde_json::to_vec(&cache) {
                            if let Err(e) = write_private(&cfg.state_dir.join(STATE_FILE), &data) {
                                tracing::warn!(error = %e, "could not save the applied state");
                            }
                        }
                        (true, None)
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "applying the state failed");
                        applied = None;
                        (false, Some(e.to_string()))
                    }
                }
            }
        };
        let report = AppliedIn { revision, nftables_usable: usable, nftables_error: error };
        let sent = client
            .post(format!("{}/agent/v1/applied", cred.server))
            .bearer_auth(&cred.credential)
            .json(&report)
            .send()
            .await;
        match sent {
            Err(e) => tracing::warn!(error = %e, "could not report the applied revision"),
            Ok(r) if r.status() == reqwest::StatusCode::UNAUTHORIZED => bail!("{}", refused_message(&cfg.state_dir)),
            Ok(r) if !r.status().is_success() => {
                tracing::warn!(status = %r.status(), "the server refused the report of the applied revision")
            }
            Ok(_) => {}
        }
        if usable {
            after = Some(revision);
        } else if sleep_or_stop(&mut backoff, &mut shutdown).await.is_err() {
            return Ok(());
        }
    }
}

/// Sleeps for the backoff (doubling it up to 30 s); `Err` when shutdown came first.
async fn sleep_or_stop(
    backoff: &mut Duration,
    shutdown: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> anyhow::Result<()> {
    let wait = *backoff;
    *backoff = (*backoff * 2).min(Duration::from_secs(30));
    tokio::select! {
        _ = tokio::time::sleep(wait) => Ok(()),
        _ = shutdown.as_mut() => bail!("shutdown"),
    }
}
