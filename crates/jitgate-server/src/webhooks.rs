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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
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
use jitgate_core::rbac::actions;
use jitgate_store::{Delivery, Webhook};

use crate::arm::read_body;
use crate::error::{json, ApiError};
use crate::{auth, App, Caller};

pub const WEBHOOK_WRITE: &str = "Microsoft.Security/webhooks/write";
pub const WEBHOOK_READ: &str = "Microsoft.Security/webhooks/read";
pub const EVENTS: [&str; 7] = ["requested", "approved", "denied", "opened", "expiringSoon", "revoked", "expired"];
/// Attempts before a delivery is given up (backoff 1 s, 2 s, 4 s … between them).
pub const MAX_ATTEMPTS: u32 = 8;
const TIMEOUT: Duration = Duration::from_secs(5);
const PARALLEL: usize = 16;

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

async fn may(app: &App, who: &jitgate_store::Principal, h: &Webhook, action: &str) -> Result<bool, ApiError> {
    if h.principal.as_deref() == Some(who.name.as_str()) {
        return Ok(true);
    }
    let act = if h.principal.is_some() {
        if action == WEBHOOK_WRITE {
            actions::PRINCIPAL_WRITE
        } else {
            actions::PRINCIPAL_READ
        }
    } else {
        action
    };
    app.can(who, act, &scope_of(h)).await
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
        let bad = |m: String| ApiError::bad_request("InvalidWebhook", m);
        let url = input.url.ok_or_else(|| bad("url is required".into()))?;
        let parsed = reqwest::Url::parse(&url).map_err(|e| bad(format!("url '{url}': {e}")))?;
        if !matches!(parsed.scheme(), "https" | "http") {
            return Err(bad(format!("url '{url}' is not http(s)")));
        }
        let events = input.events.unwrap_or_default();
        if let Some(e) = events.iter().find(|e| !EVENTS.iter().any(|k| k.eq_ignore_ascii_case(e))) {
            return Err(bad(format!("event '{e}' is not one of {}", EVENTS.join(", "))));
        }
        let (subscription, principal_name) = match (input.subscription, input.principal) {
            (Some(s), None) => {
                jitgate_core::ids::validate_subscription(&s).map_err(bad)?;
                (Some(s), None)
            }
            (None, Some(p)) => (None, Some(p)),
            _ => {
                return Err(bad(
                    "set exactly one of subscription (every request in it) and principal (its own requests)".into(),
                ))
            }
        };
        let secret =
            input.secret.unwrap_or_else(|| format!("whsec_{}", &auth::new_token()[auth::TOKEN_PREFIX.len()..]));
        if secret.len() < 16 {
            return Err(bad("secret must be at least 16 characters".into()));
        }
        Ok::<_, ApiError>(Webhook {
            id: uuid::Uuid::new_v4().to_string(),
            subscription,
            principal: principal_name,
            url,
            secret,
            events: events
                .iter()
                .map(|e| EVENTS.iter().find(|k| k.eq_ignore_ascii_case(e)).map(|k| k.to_string()).unwrap_or_default())
                .collect(),
            created: app.clock.now(),
        })
    }
    .await;
    let hook = match checked {
        Ok(h) => h,
        Err(e) => return Err(app.refuse(audit, e).await),
    };
    if !may(&app, &principal, &hook, WEBHOOK_WRITE).await? {
        let e = crate::authz::denied(&principal.label(), WEBHOOK_WRITE, &scope_of(&hook));
        return Err(app.refuse(audit, e).await);
    }
    audit.resource_id = scope_of(&hook);
    let stored = app.store.create_webhook(hook, audit).await?;
    Ok(json(StatusCode::CREATED, &out(&stored, true)))
}

async fn list(State(app): State<App>, Caller { principal, .. }: Caller) -> Result<Response, ApiError> {
    let mut value = Vec::new();
    for h in app.store.list_webhooks().await? {
        if may(&app, &principal, &h, WEBHOOK_READ).await? {
            value.push(out(&h, false));
        }
    }
    Ok(json(StatusCode::OK, &ListOut { value }))
}

async fn remove(
    State(app): State<App>,
    Path(id): Path<String>,
    Caller { ctx, principal, .. }: Caller,
) -> Result<Response, ApiError> {
    let audit = app.audit(&ctx, &principal.name, WEBHOOK_WRITE, &format!("/api/v1/webhooks/{id}"));
    let Some(h) = app.store.get_webhook(&id).await? else {
        return Err(app.refuse(audit, ApiError::not_found("WebhookNotFound", format!("no webhook {id}"))).await);
    };
    if !may(&app, &principal, &h, WEBHOOK_WRITE).await? {
        return Err(app.refuse(audit, crate::authz::denied(&principal.label(), WEBHOOK_WRITE, &scope_of(&h))).await);
    }
    let h = app.store.delete_webhook(&id, audit).await?;
    Ok(json(StatusCode::OK, &out(&h, false)))
}

async fn deliveries(
    State(app): State<App>,
    Path(id): Path<String>,
    Caller { principal, .. }: Caller,
) -> Result<Response, ApiError> {
    let Some(h) = app.store.get_webhook(&id).await? else {
        return Err(ApiError::not_found("WebhookNotFound", format!("no webhook {id}")));
    };
    if !may(&app, &principal, &h, WEBHOOK_READ).await? {
        return Err(crate::authz::denied(&principal.label(), WEBHOOK_READ, &scope_of(&h)));
    }
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
            last_error: d.last_error,
            created_at: datetime::format(d.created),
            delivered_at: d.delivered.map(datetime::format),
        })
        .collect();
    Ok(json(StatusCode::OK, &ListOut { value }))
}

/// The signature header value for `body` sent at `timestamp`.
pub fn sign(secret: &str, timestamp: i64, body: &str) -> String {
    // HMAC takes keys of any length, so this cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else { return String::new() };
    mac.update(format!("{timestamp}.{body}").as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The delivery worker: runs until `stop`.
pub async fn run(app: App, mut stop: watch::Receiver<bool>) {
    let client = match reqwest::Client::builder().timeout(TIMEOUT).use_rustls_tls().build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "webhook deliveries disabled: no HTTP client");
            return;
        }
    };
    let limit = Arc::new(Semaphore::new(PARALLEL));
    // The attempt number each delivery was last tried at: a snapshot read before that attempt
    // was recorded must not send it again.
    let tried: Arc<Mutex<HashMap<i64, u32>>> = Arc::default();
    loop {
        let due = app.store.due_deliveries(app.clock.now(), 100).await.unwrap_or_default();
        for d in due {
            let fresh = tried
                .lock()
                .map(|mut t| {
                    if t.len() > 100_000 {
                        t.clear();
                    }
                    match t.get(&d.id) {
                        Some(n) if *n >= d.attempts => false,
                        _ => {
                            t.insert(d.id, d.attempts);
                            true
                        }
                    }
                })
                .unwrap_or(false);
            if !fresh {
                continue;
            }
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                if let Ok(mut t) = tried.lock() {
                    t.remove(&d.id);
                }
                break;
            };
            let (app, client) = (app.clone(), client.clone());
            tokio::spawn(async move {
                deliver(&app, &client, &d).await;
                drop(permit);
                app.deliveries.notify_one();
            });
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
            _ = stop.changed() => return,
        }
    }
}

async fn deliver(app: &App, client: &reqwest::Client, d: &Delivery) {
    let ts = app.clock.now().unix_timestamp();
    let sent = client
        .post(&d.url)
        .header("Content-Type", "application/json")
        .header("User-Agent", "jitgate-webhooks")
        .header("X-Jitgate-Event", &d.event)
        .header("X-Jitgate-Delivery", d.id.to_string())
        .header("X-Jitgate-Timestamp", ts.to_string())
        .header("X-Jitgate-Signature", sign(&d.secret, ts, &d.payload))
        .body(d.payload.clone())
        .send()
        .await;
    let (ok, error) = match sent {
        Ok(r) if r.status().is_success() => (true, None),
        Ok(r) => (false, Some(format!("the receiver answered {}", r.status()))),
        Err(e) if e.is_timeout() => (false, Some(format!("no answer within {} s", TIMEOUT.as_secs()))),
        Err(e) => (false, Some(e.to_string())),
    };
    let attempts = d.attempts + 1;
    let next = (!ok && attempts < MAX_ATTEMPTS)
        .then(|| app.clock.now() + time::Duration::seconds(1 << (attempts - 1).min(10)));
    if let Err(e) = app.store.delivery_attempted(d.id, ok, error, next, app.clock.now()).await {
        tracing::warn!(error = %e, delivery = d.id, "could not record a webhook delivery");
    }
}
