//! Several replicas behind one [`Client`]: which server is in use, how a call moves on to the
//! next one, and the error naming every server tried.
//!
//! A call goes to the server in use first, then to each other in turn (round robin). It moves
//! on after a connection that could not be made (any call: nothing was sent), and — for a call
//! that is safe to repeat (GET, PUT, DELETE, one with an idempotency key or marked repeatable) —
//! after any other transport failure, a timeout, or a 502/503/504. When every server failed, a
//! call that is safe to repeat starts over after a backoff, [`Settings::retries`] times (a
//! server that timed out is not asked again within the call). The server that answers is used
//! from then on, and [`Settings::on_switch`] hears of the change once.
//!
//! [`Settings::retries`]: crate::Settings::retries
//! [`Settings::on_switch`]: crate::Settings::on_switch

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::{is_transient, refusal, Call, Client, ClientError};

/// A call landed on another server than the one in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switch {
    /// The server the client was using.
    pub from: String,
    /// The server that answered, in use from now on.
    pub to: String,
    /// Why `from` did not answer.
    pub after: String,
}

/// What [`crate::Settings::on_switch`] calls.
#[derive(Clone)]
pub struct SwitchHook(pub(crate) Arc<dyn Fn(&Switch) + Send + Sync>);

impl std::fmt::Debug for SwitchHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SwitchHook")
    }
}

/// The servers of one client and which of them is in use.
#[derive(Debug)]
pub(crate) struct Servers {
    urls: Vec<String>,
    current: AtomicUsize,
    on_switch: Option<SwitchHook>,
}

impl Servers {
    pub(crate) fn new(urls: Vec<String>, on_switch: Option<SwitchHook>) -> Self {
        Servers { urls, current: AtomicUsize::new(0), on_switch }
    }

    pub(crate) fn urls(&self) -> &[String] {
        &self.urls
    }

    pub(crate) fn current_url(&self) -> &str {
        self.urls.get(self.current.load(Ordering::Relaxed)).map_or("", String::as_str)
    }

    /// `path` as a path on any server: an absolute URL on one of the servers loses its base; any
    /// other absolute URL is kept.
    pub(crate) fn relative(&self, path: &str) -> String {
        if !(path.starts_with("http://") || path.starts_with("https://")) {
            return path.to_owned();
        }
        for base in &self.urls {
            if let Some(rest) = path.strip_prefix(base.as_str()) {
                if rest.starts_with('/') {
                    return rest.to_owned();
                }
            }
        }
        path.to_owned()
    }

    /// Server `i` answered a call that began at `start`: it is in use from now on.
    fn settle(&self, start: usize, i: usize, tried: &[(String, ClientError)]) {
        if i == start || self.current.compare_exchange(start, i, Ordering::AcqRel, Ordering::Relaxed).is_err() {
            return;
        }
        if let Some(hook) = &self.on_switch {
            let from = self.urls.get(start).cloned().unwrap_or_default();
            let after = tried.iter().find(|(u, _)| *u == from).map(|(_, e)| why(e)).unwrap_or_default();
            let to = self.urls.get(i).cloned().unwrap_or_default();
            (hook.0)(&Switch { from, to, after });
        }
    }
}

impl Client {
    /// Sends `call` to the server in use, moving on to the others and retrying as the module
    /// documentation says; a success answer, or the refusal as [`ClientError::Api`].
    pub(crate) async fn send(&self, call: Call) -> Result<reqwest::Response, ClientError> {
        let servers = &self.servers;
        let fixed = call.url.starts_with("http://") || call.url.starts_with("https://") || servers.urls.is_empty();
        let n = if fixed { 1 } else { servers.urls.len() };
        let start = if fixed { 0 } else { servers.current.load(Ordering::Relaxed) % n };
        let base = |i: usize| if fixed { String::new() } else { servers.urls[i].clone() };
        let passes = if call.idempotent { self.retries.saturating_add(1) } else { 1 };
        let mut tried: Vec<(String, ClientError)> = Vec::new();
        let mut timed_out = vec![false; n];
        let mut wait = self.backoff;
        for pass in 0..passes {
            if pass > 0 {
                if timed_out.iter().all(|t| *t) {
                    break;
                }
                tokio::time::sleep(wait).await;
                wait = wait.saturating_mul(2);
            }
            for k in 0..n {
                let i = (start + k) % n;
                if timed_out[i] {
                    continue;
                }
                let url = format!("{}{}", base(i), call.url);
                let failure = match self.attempt(&call, &url).await {
                    Ok(resp) if !is_transient(resp.status()) => {
                        if let Some(hook) = &self.on_server_timing {
                            if let Some(v) = resp.headers().get("server-timing").and_then(|v| v.to_str().ok()) {
                                (hook.0)(v);
                            }
                        }
                        if !fixed {
                            servers.settle(start, i, &tried);
                        }
                        return if resp.status().is_success() { Ok(resp) } else { Err(refusal(resp).await) };
                    }
                    Ok(resp) if call.idempotent => refusal(resp).await,
                    Ok(resp) => return Err(refusal(resp).await),
                    // The connection could not be made: nothing was sent, any call may move on.
                    Err(e) if e.is_connect() => ClientError::Transport(e),
                    Err(e) if call.idempotent && !e.is_builder() => {
                        timed_out[i] = e.is_timeout();
                        ClientError::Transport(e)
                    }
                    Err(e) => return Err(ClientError::Transport(e)),
                };
                let key = if fixed { url } else { base(i) };
                match tried.iter_mut().find(|(u, _)| *u == key) {
                    Some(slot) => slot.1 = failure,
                    None => tried.push((key, failure)),
                }
            }
        }
        Err(unavailable(tried))
    }
}

/// The error after every server failed: one server's own, or [`ClientError::Unavailable`].
fn unavailable(mut tried: Vec<(String, ClientError)>) -> ClientError {
    if tried.len() == 1 {
        if let Some((_, e)) = tried.pop() {
            return e;
        }
    }
    ClientError::Unavailable { tried }
}

/// `url: why` for each server tried.
pub(crate) fn describe(tried: &[(String, ClientError)]) -> String {
    tried.iter().map(|(url, e)| format!("{url}: {}", why(e))).collect::<Vec<_>>().join("; ")
}

/// Why one call failed, short: a transport failure by its innermost cause.
fn why(e: &ClientError) -> String {
    match e {
        ClientError::Transport(t) if t.is_timeout() => "timed out".to_owned(),
        ClientError::Transport(t) => {
            let mut cause: &dyn std::error::Error = t;
            while let Some(next) = cause.source() {
                cause = next;
            }
            match cause.downcast_ref::<std::io::Error>() {
                Some(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => "the connection was closed".to_owned(),
                _ => cause.to_string(),
            }
        }
        e => e.to_string(),
    }
}

#[cfg(test)]
mod tests;
