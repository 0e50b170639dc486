//! Who is calling: the request context (the caller's address through the trusted proxies, the
//! correlation ids) and the [`Caller`] extractor every authenticated handler takes.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Request};

use crate::error::ApiError;
use crate::tls::PeerAddr;
use crate::{arm, caller_ip, request_ctx, App, Correlation, Credential, Principal, RequestCtx, ServerConfig, SignedIn};

/// Extracts the request context inside handlers that take the whole request.
pub(crate) fn ctx_of(peer: PeerAddr, req: &Request<Body>) -> RequestCtx {
    ctx_from(peer, req.headers(), req.extensions())
}

pub(crate) fn ctx_from(peer: PeerAddr, headers: &HeaderMap, extensions: &axum::http::Extensions) -> RequestCtx {
    let trusted = extensions.get::<Arc<ServerConfig>>().map(|c| c.trusted_proxies.as_slice()).unwrap_or_default();
    let forwarded = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok());
    request_ctx(caller_ip(peer.0.ip(), forwarded, trusted), extensions.get::<Correlation>())
}

/// An authenticated caller, as a handler argument: the request's context, the principal behind
/// its bearer token (a failure is audited and answered with 401), the credential that proved it,
/// and the query string.
pub struct Caller {
    pub ctx: RequestCtx,
    pub principal: Principal,
    pub credential: Credential,
    pub query: arm::Query,
}

impl axum::extract::FromRequestParts<App> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, app: &App) -> Result<Self, ApiError> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<PeerAddr>>()
            .map(|c| c.0)
            .unwrap_or(PeerAddr(std::net::SocketAddr::from(([0, 0, 0, 0], 0))));
        let ctx = ctx_from(peer, &parts.headers, &parts.extensions);
        let SignedIn { principal, credential } = app.sign_in(&parts.headers, &ctx, parts.uri.path()).await?;
        Ok(Caller { ctx, principal, credential, query: arm::Query::parse(parts.uri.query()) })
    }
}
