//! What keeps one caller from exhausting the server or its audit log: the configured limits
//! ([`LimitConfig`]), the rate limiters of the running server ([`Limits`]) and the task that
//! writes the summaries of failed and rate-limited attempts ([`run`]).
//!
//! - Failed sign-ins, per source address and per presented credential: a valid credential is
//!   never refused; a failure takes one token from both buckets, and when either is empty the
//!   answer is 429 instead of 401.
//! - Initiates and token creations, per principal: each takes a token; none left is 429.
//! - Agent joins, per source address: a refused join takes a token; while none is left every
//!   join from that source is answered 429 before it is looked at.
//!
//! A 429 carries `Retry-After` and Azure's error body, and is not audited on its own: it is
//! counted in the summary record of its source ([`crate::failures`]).

use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use tokio::sync::watch;

use jitgate_core::audit::AuditEvent;

use crate::error::ApiError;
use crate::failures::FailureLog;
use crate::ratelimit::{retry_after_secs, source_key, Limiter, Rate};
use crate::App;

/// Limits of the HTTP layer, from `jitgate serve`'s flags.
#[derive(Debug, Clone)]
pub struct LimitConfig {
    /// Failed sign-ins per source address, and per presented credential (`--rate-limit-signin`).
    pub signin: Option<Rate>,
    /// Initiates per principal (`--rate-limit-initiate`).
    pub initiate: Option<Rate>,
    /// Token creations per principal (`--rate-limit-tokens`).
    pub tokens: Option<Rate>,
    /// Refused agent joins per source address (`--rate-limit-join`).
    pub join: Option<Rate>,
    /// The interval over which failed and rate-limited attempts are summarised in the audit log.
    pub audit_summary_interval: Duration,
    /// How long a client may take to send a request's headers (and the longest an idle
    /// keep-alive connection is kept) (`--header-timeout`).
    pub header_timeout: Duration,
    /// How long a client may take to send a request's body (`--body-timeout`).
    pub body_timeout: Duration,
    /// Open connections per source address; 0: no cap (`--max-connections-per-source`).
    pub connections_per_source: usize,
    /// Concurrent state long-polls per agent credential (`--max-long-polls-per-agent`).
    pub long_polls_per_agent: usize,
}

impl LimitConfig {
    pub const DEFAULT_SIGNIN: Rate = Rate::per_minute(30);
    pub const DEFAULT_INITIATE: Rate = Rate::per_minute(60);
    pub const DEFAULT_TOKENS: Rate = Rate::per_minute(10);
    pub const DEFAULT_JOIN: Rate = Rate::per_minute(30);
    pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
    pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
    pub const DEFAULT_CONNECTIONS_PER_SOURCE: usize = 256;
    pub const DEFAULT_LONG_POLLS_PER_AGENT: usize = 4;
    pub const DEFAULT_SUMMARY_INTERVAL: Duration = Duration::from_secs(60);
}

impl Default for LimitConfig {
    fn default() -> Self {
        LimitConfig {
            signin: Some(Self::DEFAULT_SIGNIN),
            initiate: Some(Self::DEFAULT_INITIATE),
            tokens: Some(Self::DEFAULT_TOKENS),
            join: Some(Self::DEFAULT_JOIN),
            audit_summary_interval: Self::DEFAULT_SUMMARY_INTERVAL,
            header_timeout: Self::DEFAULT_HEADER_TIMEOUT,
            body_timeout: Self::DEFAULT_BODY_TIMEOUT,
            connections_per_source: Self::DEFAULT_CONNECTIONS_PER_SOURCE,
            long_polls_per_agent: Self::DEFAULT_LONG_POLLS_PER_AGENT,
        }
    }
}

/// What a principal-keyed limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Initiate,
    CreateToken,
}

/// The rate limiters and the failure log of a running server.
#[derive(Debug)]
pub struct Limits {
    signin_sources: Mutex<Limiter<IpAddr>>,
    signin_credentials: Mutex<Limiter<u64>>,
    initiate: Mutex<Limiter<String>>,
    tokens: Mutex<Limiter<String>>,
    join: Mutex<Limiter<IpAddr>>,
    failures: Mutex<FailureLog>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The key of a presented credential: 64 bits of its SHA-256 (no secret is kept).
fn credential_key(credential: &str) -> u64 {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(credential.as_bytes());
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// The 429 answer.
pub fn too_many(what: &str, wait: Duration) -> ApiError {
    let secs = retry_after_secs(wait);
    let mut e = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "TooManyRequests",
        format!("Too many {what}. Retry after {secs} seconds."),
    );
    e.retry_after = Some(secs);
    e
}

impl Limits {
    pub fn new(config: &LimitConfig) -> Self {
        Limits {
            signin_sources: Mutex::new(Limiter::new(config.signin)),
            signin_credentials: Mutex::new(Limiter::new(config.signin)),
            initiate: Mutex::new(Limiter::new(config.initiate)),
            tokens: Mutex::new(Limiter::new(config.tokens)),
            join: Mutex::new(Limiter::new(config.join)),
            failures: Mutex::new(FailureLog::new(config.audit_summary_interval)),
        }
    }

    /// A failed sign-in from `source` with `credential`: `Ok` when it may be answered 401 (it
    /// is counted), `Err(wait)` when it must be answered 429.
    pub fn signin_failed(&self, source: IpAddr, credential: Option<&str>, now: Instant) -> Result<(), Duration> {
        let source = source_key(source);
        let credential = credential.map(credential_key);
        let mut sources = lock(&self.signin_sources);
        let mut credentials = lock(&self.signin_credentials);
        sources.check(&source, now)?;
        if let Some(c) = &credential {
            credentials.check(c, now)?;
            credentials.charge(c, now);
        }
        sources.charge(&source, now);
        Ok(())
    }

    /// Takes one `action` of `principal`; `Err(wait)` when none is left.
    pub fn take(&self, action: Action, principal: &str, now: Instant) -> Result<(), Duration> {
        let limiter = match action {
            Action::Initiate => &self.initiate,
            Action::CreateToken => &self.tokens,
        };
        lock(limiter).try_take(&principal.to_ascii_lowercase(), now)
    }

    /// Whether `source` may try to join now.
    pub fn join_allowed(&self, source: IpAddr, now: Instant) -> Result<(), Duration> {
        lock(&self.join).check(&source_key(source), now)
    }

    /// A refused join from `source`.
    pub fn join_failed(&self, source: IpAddr, now: Instant) {
        lock(&self.join).charge(&source_key(source), now);
    }

    /// A failed attempt to aggregate: the records to write now.
    pub fn failure(&self, event: AuditEvent, now: Instant) -> Vec<AuditEvent> {
        lock(&self.failures).failure(event, now)
    }

    /// A request refused with 429: the records to write now (a closed window's summary).
    pub fn limited(&self, event: AuditEvent, now: Instant) -> Vec<AuditEvent> {
        lock(&self.failures).limited(event, now)
    }

    fn due(&self, now: Instant, wall: time::OffsetDateTime) -> Vec<AuditEvent> {
        lock(&self.failures).due(now, wall)
    }

    fn drain(&self, wall: time::OffsetDateTime) -> Vec<AuditEvent> {
        lock(&self.failures).drain(wall)
    }

    fn summary_interval(&self) -> Duration {
        lock(&self.failures).window()
    }
}

impl App {
    /// Records `audit` as a failed sign-in (compactly: see [`crate::failures`]) and returns the
    /// error to answer: `err` (401), or 429 when the source or the credential has failed too
    /// often. If a record that must be written now cannot be, the answer is a 500.
    pub(crate) async fn signin_failure(&self, audit: AuditEvent, credential: Option<&str>, err: ApiError) -> ApiError {
        let now = Instant::now();
        let source = audit.caller_ip.as_deref().and_then(|ip| ip.parse::<IpAddr>().ok());
        let verdict = match source {
            Some(ip) => self.limits.signin_failed(ip, credential, now),
            None => Ok(()),
        };
        match verdict {
            Ok(()) => {
                let event = audit.failed(format!("{}: {}", err.code, err.message));
                match self.write_now(self.limits.failure(event, now)).await {
                    Ok(()) => err,
                    Err(e) => e,
                }
            }
            Err(wait) => {
                let limited = too_many("failed sign-ins from this address or with this credential", wait);
                self.note_limited(audit, &limited, now).await;
                limited
            }
        }
    }

    /// Takes one `action` for `principal`, or answers 429 (counted in the audit summary).
    pub(crate) async fn rate_limit(&self, action: Action, principal: &str, audit: &AuditEvent) -> Result<(), ApiError> {
        let now = Instant::now();
        match self.limits.take(action, principal, now) {
            Ok(()) => Ok(()),
            Err(wait) => {
                let what = match action {
                    Action::Initiate => "initiate requests by this principal",
                    Action::CreateToken => "token creations by this principal",
                };
                let limited = too_many(what, wait);
                self.note_limited(audit.clone(), &limited, now).await;
                Err(limited)
            }
        }
    }

    /// Whether a join from this source may proceed; the 429 to answer otherwise.
    pub(crate) async fn join_allowed(&self, audit: &AuditEvent) -> Result<(), ApiError> {
        let now = Instant::now();
        let Some(ip) = audit.caller_ip.as_deref().and_then(|ip| ip.parse::<IpAddr>().ok()) else { return Ok(()) };
        match self.limits.join_allowed(ip, now) {
            Ok(()) => Ok(()),
            Err(wait) => {
                let limited = too_many("refused agent joins from this address", wait);
                self.note_limited(audit.clone(), &limited, now).await;
                Err(limited)
            }
        }
    }

    /// Counts a refused join against its source.
    pub(crate) fn join_refused(&self, source: IpAddr) {
        self.limits.join_failed(source, Instant::now());
    }

    async fn note_limited(&self, audit: AuditEvent, err: &ApiError, now: Instant) {
        let event = audit.failed(format!("{}: {}", err.code, err.message));
        if let Err(e) = self.write_now(self.limits.limited(event, now)).await {
            tracing::error!(code = %e.code, "could not write an audit summary");
        }
    }

    async fn write_now(&self, events: Vec<AuditEvent>) -> Result<(), ApiError> {
        if events.is_empty() {
            return Ok(());
        }
        Ok(self.store.record_many(events).await?)
    }
}

/// Writes the summaries of closed windows as they close, and of every window at shutdown.
pub async fn run(app: App, mut stop: watch::Receiver<bool>) {
    let tick = (app.limits.summary_interval() / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            r = stop.changed() => if r.is_err() || *stop.borrow() { break },
        }
        let due = app.limits.due(Instant::now(), app.clock.now());
        if let Err(e) = app.write_now(due).await {
            tracing::error!(code = %e.code, "could not write audit summaries");
        }
    }
    let rest = app.limits.drain(app.clock.now());
    if let Err(e) = app.write_now(rest).await {
        tracing::error!(code = %e.code, "could not write the last audit summaries");
    }
}
