//! The layers around every route: request ids, the request's tracing span and the access log
//! (`correlate`, which also counts each answer in the metrics), Azure error bodies for answers without one, and the
//! catch-panic layer.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use tracing::Instrument;

use crate::error::ApiError;
use crate::prom::{self, ServerMetrics};
use crate::trace;
use crate::{Correlation, ServerConfig};

/// Sets `x-ms-request-id` and `x-ms-correlation-request-id` on every answer, logs it and counts
/// it in the metrics (by the route's name: see [`prom::route_of`]).
async fn correlate(mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let client_request_id = req
        .headers()
        .get("x-ms-client-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned);
    let request_id = uuid::Uuid::new_v4().to_string();
    let correlation_id = client_request_id.clone().unwrap_or_else(|| request_id.clone());
    req.extensions_mut().insert(Correlation { correlation_id: correlation_id.clone(), client_request_id });
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let timed = req.extensions().get::<Arc<ServerConfig>>().is_some_and(|c| c.server_timing);
    let metrics = req.extensions().get::<Arc<ServerMetrics>>().cloned();
    let matched = req.extensions().get::<MatchedPath>().cloned();
    // Everything logged while the request is served names it (see `trace`).
    let span = trace::request_span(&method, matched.as_ref().map(|p| p.as_str()), &request_id, &correlation_id);
    let mut resp = if timed {
        let stages = Arc::new(jitgate_store::timing::Stages::default());
        let mut resp = jitgate_store::timing::scope(stages.clone(), next.run(req)).instrument(span.clone()).await;
        if let Ok(v) = HeaderValue::from_str(&stages.header(started.elapsed())) {
            resp.headers_mut().insert("server-timing", v);
        }
        resp
    } else {
        next.run(req).instrument(span.clone()).await
    };
    for (name, value) in [("x-ms-request-id", &request_id), ("x-ms-correlation-request-id", &correlation_id)] {
        if let Ok(v) = HeaderValue::from_str(value) {
            resp.headers_mut().insert(name, v);
        }
    }
    let _inside = span.enter();
    if let Some(Panicked(message)) = resp.extensions_mut().remove::<Panicked>() {
        tracing::error!(path, panic = message, "a request handler panicked");
    }
    let elapsed = started.elapsed();
    if let Some(m) = metrics {
        let route = prom::route_of(resp.extensions().get::<prom::RouteName>(), matched.as_ref().map(|p| p.as_str()));
        m.http(route, &method, resp.status(), elapsed);
    }
    tracing::info!(path, status = resp.status().as_u16(), elapsed_us = elapsed.as_micros() as u64, "request");
    resp
}

/// Gives every error answer Azure's error body: axum's own answers (405 with `Allow`, a path
/// parameter that does not parse, …) come without one or as plain text. A body that is already
/// JSON (or a portal page) is kept.
async fn error_bodies(req: Request, next: Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json") || v.starts_with("text/html"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let text = jitgate_core::audit::truncate_field(text.trim(), 512);
    let allow = parts.headers.get(axum::http::header::ALLOW).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let path = jitgate_core::audit::truncate_field(&path, 256);
    let (code, message) = match status {
        StatusCode::METHOD_NOT_ALLOWED => (
            "MethodNotAllowed",
            format!("{method} is not supported on '{path}'; allowed: {}", allow.as_deref().unwrap_or("none")),
        ),
        StatusCode::NOT_FOUND => ("NotFound", format!("no route for {method} {path}")),
        StatusCode::PAYLOAD_TOO_LARGE => ("RequestEntityTooLarge", "the request body is too large".to_owned()),
        StatusCode::REQUEST_TIMEOUT => ("RequestTimeout", "the request did not arrive in time".to_owned()),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("UnsupportedMediaType", "the request body must be JSON".to_owned()),
        StatusCode::TOO_MANY_REQUESTS => ("TooManyRequests", "too many requests".to_owned()),
        s if s.is_server_error() => {
            let mut e = ApiError::internal();
            e.status = s;
            return e.into_response();
        }
        _ => (
            "BadRequest",
            if text.is_empty() { format!("{method} {path} is not a valid request") } else { text.into_owned() },
        ),
    };
    let mut err = ApiError::new(status, code, message);
    err.allow = allow;
    let mut out = err.into_response();
    for (name, value) in parts.headers.iter() {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            out.headers_mut().entry(name.clone()).or_insert_with(|| value.clone());
        }
    }
    out
}

/// A panic's message, carried on the 500 answer from [`panic_response`] to [`correlate`], which
/// logs it with the request id.
#[derive(Debug, Clone)]
struct Panicked(String);

fn panic_response(payload: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = match (payload.downcast_ref::<&str>(), payload.downcast_ref::<String>()) {
        (Some(s), _) => (*s).to_owned(),
        (None, Some(s)) => s.clone(),
        (None, None) => "(a panic without a message)".to_owned(),
    };
    let mut resp = ApiError::internal().into_response();
    resp.extensions_mut().insert(Panicked(message));
    resp
}

/// The layers around every route, innermost first: Azure error bodies, the catch-panic layer
/// (inside `correlate`, so a panic's 500 carries the request ids and its message is logged with
/// them), `correlate`, the server config.
pub(crate) fn layers<S: Clone + Send + Sync + 'static>(routes: Router<S>, config: Arc<ServerConfig>) -> Router<S> {
    routes
        .layer(axum::middleware::from_fn(error_bodies))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panic_response))
        .layer(axum::middleware::from_fn(correlate))
        .layer(axum::Extension(config))
}
