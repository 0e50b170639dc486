//! Notifications: webhooks per subscription (administrators) or per principal (requesters),
//! for `requested`, `approved`, `denied`, `opened`, `expiringSoon` (5 minutes before the end),
//! `revoked` and `expired`. Events are queued in
//! the same transaction as their change (nothing is lost) and delivered by a background worker,
//! each delivery on its own task with a timeout, so a slow or dead receiver never delays a grant.
//!
//! Every POST carries `X-Jitgate-Event`, `X-Jitgate-Delivery`, `X-Jitgate-Timestamp` (Unix
//! seconds) and `X-Jitgate-Signature: sha256=HEX(HMAC-SHA256(secret, "{timestamp}.{body}"))`;
//! receivers should refuse timestamps more than a few minutes old, which stops replays.
//!
//! - `POST /api/v1/webhooks` `{"subscription"|"principal","url","secret"?,"events"?}` → 201 (the secret is shown only here)
//! - `GET /api/v1/webhooks`; `DELETE /api/v1/webhooks/{id}`; `GET /api/v1/webhooks/{id}/deliveries`
//!
//! Webhooks must not become a way to make the server reach what the caller cannot
//! (server-side request forgery): URLs are https (http only when the operator allows it), carry no
//! credentials, and their destination is checked against [`jitgate_core::destination`]'s deny list
//! when the webhook is created and again at every delivery — names are resolved by the worker
//! itself, every address is checked, and the connection goes to the checked addresses only, so a
//! DNS answer cannot change between check and use. Redirects are never followed (a 3xx is a failed
//! attempt). Who did not set up the server sees only the category of a failed attempt, never the
//! detail (which would tell whether some host answered).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{delete, get, post};
use axum::Router;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::sync::{watch, Semaphore};

use jitgate_api_types::datetime;
use jitgate_api_types::native::ListOut;
use jitgate_api_types::parse_json;
use jitgate_core::destination::{self, Host, Rules};
use jitgate_core::rbac::actions;
use jitgate_store::{Delivery, Principal, Webhook};

use crate::arm::read_body;
use crate::error::{json, ApiError};
use crate::{auth, App, Caller};

pub use jitgate_core::rbac::actions::{WEBHOOK_DELETE, WEBHOOK_NOTIFY_OWN, WEBHOOK_READ, WEBHOOK_WRITE};
pub const EVENTS: [&str; 7] = jitgate_core::outbox::EVENTS;
pub use jitgate_core::outbox::MAX_ATTEMPTS;
const TIMEOUT: Duration = Duration::from_secs(5);
/// How long a claimed delivery stays out of other passes: longer than any attempt takes.
const LEASE: time::Duration = time::Duration::seconds(60);
const PARALLEL: usize = 16;
/// The shortest time between two looks at the queue: every change wakes the worker, and under a
/// stream of changes it looks at most this often instead of once per change.
const MIN_GAP: Duration = Duration::from_millis(20);
/// Secrets: at least this long (guessable ones make the signature worthless), at most that.
const SECRET_MIN: usize = 16;
const SECRET_MAX: usize = 256;
/// The longest principal name a webhook may name.
const PRINCIPAL_MAX: usize = 256;

#[derive(Debug, Deserialize)]
struct WebhookIn {
    subscription: Option<String>,
    principal: Option<String>,
    url: Option<String>,
    secret: Option<String>,
    events: Option<Vec<String>>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct WebhookOut {
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    subscription: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    principal: Option<String>,
    url: String,
    events: Vec<String>,
    /// Only in the creation answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
    created_at: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct DeliveryOut {
    id: i64,
    event: String,
    state: String,
    attempts: u32,
    next_attempt: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_error: Option<String>,
    created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    delivered_at: Option<String>,
}

fn out(h: &Webhook, secret: bool) -> WebhookOut {
    WebhookOut {
        id: h.id.clone(),
        subscription: h.subscription.clone(),
        principal: h.principal.clone(),
        url: h.url.clone(),
        events: h.events.clone(),
        secret: secret.then(|| h.secret.clone()),
        created_at: datetime::format(h.created),
    }
}

pub fn router() -> Router<App> {
    Router::new()
        .route("/api/v1/webhooks", post(create).get(list))
        .route("/api/v1/webhooks/{id}", delete(remove))
        .route("/api/v1/webhooks/{id}/deliveries", get(deliveries))
}

/// The scope a webhook's management is checked at: its subscription, or `/` for someone else's.
fn scope_of(h: &Webhook) -> String {
    h.subscription.as_ref().map(|s| format!("/subscriptions/{s}")).unwrap_or_else(|| "/".into())
}

/// What managing a webhook needs, by what it is: `own` for the caller's own webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Read,
    Write,
    Delete,
}

/// Whether `who` may `verb` webhook `h`: "Role at scope" when allowed, the refusal otherwise.
///
/// - a subscription's webhook: `Microsoft.Security/webhooks/{read,write,delete}` at the
///   subscription;
/// - one's own: reading and deleting always; creating needs
///   `Microsoft.Security/webhooks/notifyOwn/action` (or the subscription-wide write) from any
///   assignment — a principal with no role at all cannot make the server send anything;
/// - someone else's: the principal-management rights at `/`.
async fn may(app: &App, who: &Principal, h: &Webhook, verb: Verb) -> Result<Result<String, ApiError>, ApiError> {
    let grants = app.authz.grants(app.store.as_ref(), who).await?;
    let own = h.principal.as_deref() == Some(who.name.as_str());
    let (action, scope) = match (own, h.principal.is_some(), verb) {
        (true, _, Verb::Read | Verb::Delete) => return Ok(Ok("owner of the webhook".into())),
        (true, _, Verb::Write) => {
            let by = grants.allowing_somewhere(WEBHOOK_NOTIFY_OWN).or_else(|| grants.allowing_somewhere(WEBHOOK_WRITE));
            return Ok(by.ok_or_else(|| crate::authz::denied(&who.label(), WEBHOOK_NOTIFY_OWN, "/")));
        }
        (false, true, Verb::Read) => (actions::PRINCIPAL_READ, "/".to_owned()),
        (false, true, Verb::Write | Verb::Delete) => (actions::PRINCIPAL_WRITE, "/".to_owned()),
        (false, false, Verb::Read) => (WEBHOOK_READ, scope_of(h)),
        (false, false, Verb::Write) => (WEBHOOK_WRITE, scope_of(h)),
        (false, false, Verb::Delete) => (WEBHOOK_DELETE, scope_of(h)),
    };
    Ok(grants.allowing(action, &scope).ok_or_else(|| crate::authz::denied(&who.label(), action, &scope)))
}

/// Whether `who` sees the detail of failed attempts (else only their category): whoever may
/// manage webhooks server-wide, i.e. holds `Microsoft.Security/webhooks/write` at `/`.
async fn sees_details(app: &App, who: &Principal) -> Result<bool, ApiError> {
    app.can(who, WEBHOOK_WRITE, "/").await
}

/// Parses a webhook URL strictly and checks it against the operator's rules. Returns the URL as
/// it will be used (normalised: `2130706433` becomes `127.0.0.1`, so what was checked is what is
/// sent).
pub fn check_url(text: &str, rules: &Rules) -> Result<reqwest::Url, String> {
    if text.len() > destination::MAX_URL_LEN {
        return Err(format!("longer than {} characters", destination::MAX_URL_LEN));
    }
    if text.chars().any(|c| c.is_control() || c.is_whitespace() || c == '\\') {
        return Err("contains spaces, control characters or backslashes".into());
    }
    let lower = text.get(..8).unwrap_or(text).to_ascii_lowercase();
    if !lower.starts_with("https://") && !lower.starts_with("http://") {
        return Err("must start with https://".into());
    }
    let url = reqwest::Url::parse(text).map_err(|e| e.to_string())?;
    if url.fragment().is_some() {
        return Err("a fragment (#…) is never sent; leave it out".into());
    }
    let host = match url.host() {
        Some(url::Host::Ipv4(v4)) => Some(Host::Ip(v4.into())),
        Some(url::Host::Ipv6(v6)) => Some(Host::Ip(v6.into())),
        Some(url::Host::Domain(d)) => Some(Host::Domain(d)),
        None => None,
    };
    let userinfo = !url.username().is_empty() || url.password().is_some();
    destination::check_url(url.scheme(), userinfo, host, rules)?;
    Ok(url)
}

async fn create(
    State(app): State<App>,
    Caller { ctx, principal, .. }: Caller,
    body: Body,
) -> Result<Response, ApiError> {
    let mut audit = app.audit(&ctx, &principal.name, WEBHOOK_WRITE, "/api/v1/webhooks");
    let checked = async {
        let b = read_body(&app, body).await?;
        let input: WebhookIn = parse_json(&b)?;
        let bad = |target: &str, m: String| {
            let mut e = ApiError::bad_request("InvalidWebhook", m);
            e.target = Some(target.into());
            e
        };
        let text = input.url.ok_or_else(|| bad("url", "url is required".into()))?;
        let url = check_url(&text, &app.config.webhooks).map_err(|e| {
            let shown: String = text.chars().take(200).collect();
            bad("url", format!("url '{shown}' is refused: {e}"))
        })?;
        let mut events: Vec<String> = Vec::new();
        for e in input.events.unwrap_or_default() {
            let Some(known) = EVENTS.iter().find(|k| k.eq_ignore_ascii_case(&e)) else {
                let shown: String = e.chars().take(40).collect();
                return Err(bad("events", format!("event '{shown}' is not one of {}", EVENTS.join(", "))));
            };
            if !events.iter().any(|x| x == known) {
                events.push(known.to_string());
            }
        }
        let (subscription, principal_name) = match (input.subscription, input.principal) {
            (Some(s), None) => {
                jitgate_core::ids::validate_subscription(&s).map_err(|m| bad("subscription", m))?;
                (Some(s), None)
            }
            (None, Some(p)) => {
                if p.is_empty() || p.chars().count() > PRINCIPAL_MAX || p.chars().any(char::is_control) {
                    return Err(bad(
                        "principal",
                        format!("principal must be 1 to {PRINCIPAL_MAX} printable characters"),
                    ));
                }
                (None, Some(p))
            }
            _ => {
                return Err(ApiError::bad_request(
                    "InvalidWebhook",
                    "set exactly one of subscription (every request in it) and principal (its own requests)",
                ))
            }
        };
        let secret =
            input.secret.unwrap_or_else(|| format!("whsec_{}", &auth::new_token()[auth::TOKEN_PREFIX.len()..]));
        if secret.len() < SECRET_MIN || secret.len() > SECRET_MAX || secret.chars().any(char::is_control) {
            return Err(bad("secret", format!("secret must be {SECRET_MIN} to {SECRET_MAX} printable characters")));
        }
        Ok::<_, ApiError>(Webhook {
            id: uuid::Uuid::new_v4().to_string(),
            subscription,
            principal: principal_name,
            url: url.to_string(),
            secret,
            events,
            created: app.clock.now(),
        })
    }
    .await;
    let hook = match checked {
        Ok(h) => h,
        Err(e) => return Err(app.refuse(audit, e).await),
    };
    audit.resource_id = scope_of(&hook);
    match may(&app, &principal, &hook, Verb::Write).await? {
        Ok(by) => {
            audit.properties.insert("authorizedBy".into(), by);
        }
        Err(e) => return Err(app.refuse(audit, e).await),
    }
    let stored = app.store.create_webhook(hook, audit).await?;
    Ok(json(StatusCode::CREATED, &out(&stored, true)))
}

async fn list(State(app): State<App>, Caller { principal, .. }: Caller) -> Result<Response, ApiError> {
    let mut value = Vec::new();
    for h in app.store.list_webhooks().await? {
        if may(&app, &principal, &h, Verb::Read).await?.is_ok() {
            value.push(out(&h, false));
        }
    }
    Ok(json(StatusCode::OK, &ListOut { value }))
}

/// Webhook ids are UUIDs: anything longer is not one.
fn bounded_id(id: &str) -> Result<&str, ApiError> {
    if id.len() > 64 {
        return Err(ApiError::not_found("WebhookNotFound", "no such webhook"));
    }
    Ok(id)
}

async fn remove(
    State(app): State<App>,
    Path(id): Path<String>,
    Caller { ctx, principal, .. }: Caller,
) -> Result<Response, ApiError> {
    let shown: String = id.chars().take(64).collect();
    let mut audit = app.audit(&ctx, &principal.name, WEBHOOK_DELETE, &format!("/api/v1/webhooks/{shown}"));
    let found = match bounded_id(&id) {
        Ok(id) => app.store.get_webhook(id).await?,
        Err(e) => return Err(app.refuse(audit, e).await),
    };
    let Some(h) = found else {
        return Err(app.refuse(audit, ApiError::not_found("WebhookNotFound", format!("no webhook {shown}"))).await);
    };
    match may(&app, &principal, &h, Verb::Delete).await? {
        Ok(by) => {
            audit.properties.insert("authorizedBy".into(), by);
        }
        Err(e) => return Err(app.refuse(audit, e).await),
    }
    let h = app.store.delete_webhook(&id, audit).await?;
    Ok(json(StatusCode::OK, &out(&h, false)))
}

async fn deliveries(
    State(app): State<App>,
    Path(id): Path<String>,
    Caller { principal, .. }: Caller,
) -> Result<Response, ApiError> {
    let Some(h) = app.store.get_webhook(bounded_id(&id)?).await? else {
        return Err(ApiError::not_found("WebhookNotFound", format!("no webhook {id}")));
    };
    may(&app, &principal, &h, Verb::Read).await??;
    let details = sees_details(&app, &principal).await?;
    let value: Vec<DeliveryOut> = app
        .store
        .list_deliveries(&id, 200)
        .await?
        .into_iter()
        .map(|d| DeliveryOut {
            id: d.id,
            event: d.event,
            state: d.state,
            attempts: d.attempts,
            next_attempt: datetime::format(d.next_attempt),
            last_error: d.last_error.map(|e| if details { e } else { FailureKind::of(&e).as_str().to_owned() }),
            created_at: datetime::format(d.created),
            delivered_at: d.delivered.map(datetime::format),
        })
        .collect();
    Ok(json(StatusCode::OK, &ListOut { value }))
}

/// What went wrong with an attempt, as everyone may see it. The stored `lastError` is
/// `"{kind}: {detail}"`; only those who set up the server see the detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The destination is refused (deny list, scheme): nothing was sent.
    Blocked,
    /// No answer in time.
    Timeout,
    /// No connection (name unknown, refused, TLS failed).
    ConnectionFailed,
    /// The receiver answered, but not with 2xx (a redirect included: redirects are not followed).
    HttpStatus,
    /// The server stopped during the attempt (the receiver may have got it); tried again soon
    /// after the restart.
    Interrupted,
    /// A failure recorded before categories existed.
    Failed,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Blocked => "Blocked",
            FailureKind::Timeout => "Timeout",
            FailureKind::ConnectionFailed => "ConnectionFailed",
            FailureKind::HttpStatus => "HttpStatus",
            FailureKind::Interrupted => "Interrupted",
            FailureKind::Failed => "Failed",
        }
    }

    /// The category of a stored `lastError`.
    pub fn of(last_error: &str) -> FailureKind {
        let head = last_error.split(':').next().unwrap_or("");
        [
            FailureKind::Blocked,
            FailureKind::Timeout,
            FailureKind::ConnectionFailed,
            FailureKind::HttpStatus,
            FailureKind::Interrupted,
        ]
        .into_iter()
        .find(|k| k.as_str() == head)
        .unwrap_or(FailureKind::Failed)
    }
}

/// A failed attempt: its category and what exactly happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    pub detail: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.detail)
    }
}

/// A resolved name that leads somewhere the deny list refuses.
#[derive(Debug)]
struct BlockedName(String);

impl std::fmt::Display for BlockedName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BlockedName {}

/// The worker's resolver: resolves a name itself and answers only when **every** address is an
/// allowed destination. reqwest connects to exactly the addresses answered here, so a second,
/// different DNS answer (rebinding) never reaches the connection.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    allowed: Arc<Vec<ipnet::IpNet>>,
}

impl GuardedResolver {
    pub fn new(allowed: Vec<ipnet::IpNet>) -> Self {
        GuardedResolver { allowed: Arc::new(allowed) }
    }

    /// The checked addresses of `host`.
    pub async fn lookup(&self, host: &str) -> Result<Vec<SocketAddr>, Box<dyn std::error::Error + Send + Sync>> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, 0)).await?.collect();
        if addrs.is_empty() {
            return Err(format!("{host} has no address").into());
        }
        for a in &addrs {
            if let Err(b) = destination::check(a.ip(), &self.allowed) {
                return Err(Box::new(BlockedName(format!("{host} resolves to {b}"))));
            }
        }
        Ok(addrs)
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let (this, host) = (self.clone(), name.as_str().to_owned());
        Box::pin(async move {
            let addrs = this.lookup(&host).await?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The HTTP client of the delivery worker: our resolver, no proxy (a proxy would resolve and
/// connect on our behalf, past the checks), no redirects, a timeout per attempt.
pub fn delivery_client(rules: &Rules) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(TIMEOUT)
        .use_rustls_tls()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(GuardedResolver::new(rules.allowed.clone())))
        .build()
}

/// The signature header value for `body` sent at `timestamp`.
pub fn sign(secret: &str, timestamp: i64, body: &str) -> String {
    // HMAC takes keys of any length, so this cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else { return String::new() };
    mac.update(format!("{timestamp}.{body}").as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The delivery worker: runs until `stop`. Each pass claims what is due (at most as many as may
/// run at once); a claimed delivery is out of later passes until its attempt is recorded, so no
/// memory of what was tried is kept here. At `stop` the attempts in flight are cut short and
/// recorded as `Interrupted` (due again a second later) before the worker ends: a delivery cut
/// off unrecorded would wait out its claim ([`LEASE`]) after a restart.
pub async fn run(app: App, mut stop: watch::Receiver<bool>) {
    let client = match delivery_client(&app.config.webhooks) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "webhook deliveries disabled: no HTTP client");
            return;
        }
    };
    let limit = Arc::new(Semaphore::new(PARALLEL));
    let mut last: Option<std::time::Instant> = None;
    loop {
        if let Some(gap) = last.map(|l| MIN_GAP.saturating_sub(l.elapsed())).filter(|g| !g.is_zero()) {
            tokio::select! {
                _ = tokio::time::sleep(gap) => {}
                _ = stop.changed() => break,
            }
        }
        last = Some(std::time::Instant::now());
        let now = app.clock.now();
        let next = app.store.next_delivery().await.ok().flatten();
        let free = limit.available_permits();
        if free > 0 && next.is_some_and(|t| t <= now) {
            match app.store.claim_deliveries(now, now + LEASE, free).await {
                Ok(due) => {
                    for d in due {
                        let Ok(permit) = limit.clone().acquire_owned().await else { return };
                        let (app, client, stop) = (app.clone(), client.clone(), stop.clone());
                        tokio::spawn(async move {
                            deliver(&app, &client, &d, stop).await;
                            drop(permit);
                            app.deliveries.notify_one();
                        });
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not claim webhook deliveries"),
            }
        }
        let wait = match app.store.next_delivery().await {
            Ok(Some(t)) => Duration::try_from(t - app.clock.now())
                .unwrap_or(Duration::ZERO)
                .clamp(Duration::from_millis(20), Duration::from_secs(1)),
            _ => Duration::from_secs(1),
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = app.deliveries.notified() => {}
            _ = stop.changed() => break,
        }
    }
    // The attempts in flight end at once (see `deliver`); only their records are waited for.
    let _ = tokio::time::timeout(TIMEOUT, limit.acquire_many(PARALLEL as u32)).await;
}

/// Completes once `stop` says the server stops (never, if its sender is gone without saying so).
async fn stopping(mut stop: watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The error and its causes, as one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// One attempt: the destination is checked again (the operator's rules may have changed since
/// the webhook was made), then the signed POST goes out through the guarded client.
async fn attempt(app: &App, client: &reqwest::Client, d: &Delivery) -> Result<(), Failure> {
    let blocked = |detail: String| Failure { kind: FailureKind::Blocked, detail };
    let url = check_url(&d.url, &app.config.webhooks).map_err(blocked)?;
    let ts = app.clock.now().unix_timestamp();
    let sent = client
        .post(url)
        .header("Content-Type", "application/json")
        .header("User-Agent", "jitgate-webhooks")
        .header("X-Jitgate-Event", &d.event)
        .header("X-Jitgate-Delivery", d.id.to_string())
        .header("X-Jitgate-Timestamp", ts.to_string())
        .header("X-Jitgate-Signature", sign(&d.secret, ts, &d.payload))
        .body(d.payload.clone())
        .send()
        .await;
    match sent {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) if r.status().is_redirection() => Err(Failure {
            kind: FailureKind::HttpStatus,
            detail: format!("the receiver answered {} (redirects are not followed)", r.status()),
        }),
        Ok(r) => {
            Err(Failure { kind: FailureKind::HttpStatus, detail: format!("the receiver answered {}", r.status()) })
        }
        Err(e) if e.is_timeout() => {
            Err(Failure { kind: FailureKind::Timeout, detail: format!("no answer within {} s", TIMEOUT.as_secs()) })
        }
        Err(e) => {
            let mut source: Option<&dyn std::error::Error> = Some(&e);
            while let Some(s) = source {
                if let Some(b) = s.downcast_ref::<BlockedName>() {
                    return Err(blocked(b.0.clone()));
                }
                source = s.source();
            }
            Err(Failure { kind: FailureKind::ConnectionFailed, detail: chain(&e) })
        }
    }
}

async fn deliver(app: &App, client: &reqwest::Client, d: &Delivery, stop: watch::Receiver<bool>) {
    let outcome = tokio::select! {
        outcome = attempt(app, client, d) => outcome,
        () = stopping(stop) => Err(Failure {
            kind: FailureKind::Interrupted,
            detail: "jitgate stopped during the attempt; it is made again after the restart".into(),
        }),
    };
    if let Err(f) = &outcome {
        tracing::info!(delivery = d.id, webhook = %d.webhook_id, error = %f, "webhook delivery failed");
    }
    let attempts = d.attempts + 1;
    let ok = outcome.is_ok();
    let next = jitgate_core::outbox::retry_at(attempts, ok, app.clock.now());
    let error = outcome.err().map(|f| f.to_string());
    if let Err(e) = app.store.delivery_attempted(d.id, ok, error, next, app.clock.now()).await {
        tracing::warn!(error = %e, delivery = d.id, "could not record a webhook delivery");
    }
    app.metrics.delivery(match (ok, next) {
        (true, _) => crate::prom::DeliveryOutcome::Delivered,
        (false, Some(_)) => crate::prom::DeliveryOutcome::Failed,
        (false, None) => crate::prom::DeliveryOutcome::Abandoned,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strict() -> Rules {
        Rules::default()
    }

    #[test]
    fn urls_are_parsed_strictly_and_normalised_before_the_deny_list() {
        let ok = check_url("https://hooks.example.com/x?y=1", &strict()).expect("public https");
        assert_eq!(ok.as_str(), "https://hooks.example.com/x?y=1");
        for bad in [
            "https://169.254.169.254/latest/meta-data",
            "https://[::ffff:169.254.169.254]/",
            "https://[::ffff:a9fe:a9fe]/",
            "https://2852039166/",
            "https://0xa9fea9fe/",
            "https://0251.0376.0251.0376/",
            "https://169.254.43518/",
            "https://2130706433/",
            "https://0x7f.1/",
            "https://127.1/",
            "https://localhost/",
            "https://LOCALHOST./",
            "https://10.0.0.1/",
            "https://[fd00::1]/",
            "https://[::1]:8443/",
            "https://user:pw@hooks.example.com/",
            "https://user@hooks.example.com/",
            "http://hooks.example.com/",
            "https:hooks.example.com/",
            "https://hooks.example.com/#frag",
            "https://hooks.example.com/\\x",
            "https://hooks.example.com/ x",
            "ftp://hooks.example.com/",
            "https://",
        ] {
            assert!(check_url(bad, &strict()).is_err(), "{bad} should be refused");
        }
        let lax = Rules { allow_http: true, allowed: vec!["127.0.0.0/8".parse().expect("net")] };
        assert_eq!(check_url("http://2130706433:9/h", &lax).expect("allowed").as_str(), "http://127.0.0.1:9/h");
        assert!(check_url("http://169.254.169.254/", &lax).is_err(), "only the allowed range");
    }

    #[tokio::test]
    async fn the_resolver_refuses_names_that_lead_to_denied_addresses() {
        let guarded = GuardedResolver::new(vec![]);
        let err = guarded.lookup("localhost").await.expect_err("localhost is loopback");
        assert!(err.to_string().contains("loopback"), "{err}");
        let allowed = GuardedResolver::new(vec!["127.0.0.0/8".parse().expect("net"), "::1/128".parse().expect("net")]);
        let addrs = allowed.lookup("localhost").await.expect("allowed by the operator");
        assert!(addrs.iter().all(|a| a.ip().is_loopback()));
    }

    #[test]
    fn failures_reduce_to_their_category() {
        let f = Failure { kind: FailureKind::ConnectionFailed, detail: "10.1.1.1:443: connection refused".into() };
        assert_eq!(FailureKind::of(&f.to_string()), FailureKind::ConnectionFailed);
        assert_eq!(FailureKind::of("Blocked: 127.0.0.1 is a loopback address"), FailureKind::Blocked);
        assert_eq!(FailureKind::of("the receiver answered 500"), FailureKind::Failed, "from before categories");
    }
}
