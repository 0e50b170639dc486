//! The web portal, served by the same process and the same services as the API: pages are
//! maud templates rendered by handlers that call the functions the API handlers call (one
//! authorization check, one validation, one audit path).
//!
//! Security: a session cookie (HttpOnly, Secure, SameSite=Strict) holding an opaque id
//! ([`session`]); a CSRF token per session in every form, checked with the `Origin` of the post;
//! `Content-Security-Policy: default-src 'self'` and no inline script or style; assets embedded
//! in the binary under names carrying their content hash ([`assets`]).

mod access;
mod admin;
pub mod assets;
mod audit;
mod configure;
pub mod inventory;
mod jit;
mod layout;
mod progress;
mod request;
pub mod session;
mod signin;
mod sso;
mod vm;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::Markup;

use jitgate_store::Principal;

use crate::error::ApiError;
use crate::tls::PeerAddr;
use crate::{App, Credential, RequestCtx};

use self::session::{Proof, Session};

/// The policy every portal answer carries.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The portal's routes (merged into [`crate::router`]).
pub fn router() -> Router<App> {
    let pages = Router::new()
        .route("/", get(home))
        .route("/signin", get(signin::form).post(signin::submit))
        .route("/signout", post(signin::sign_out))
        .route("/signin/sso", get(sso::start))
        .route("/signin/sso/callback", get(sso::callback))
        .route("/jit", get(jit::page))
        .route("/jit/configure", get(configure::panel).post(configure::save))
        .route("/jit/request", get(request::panel).post(request::open))
        .route("/requests/progress", get(progress::page))
        .route("/requests/events", get(progress::events))
        .route("/vms/{subscription}/{group}/{name}", get(vm::page))
        .route("/vms/{subscription}/{group}/{name}/enable", post(vm::enable))
        .route("/access", get(access::page))
        .route("/access/{id}/{action}", post(access::act))
        .route("/approvals", get(access::approvals))
        .route("/audit", get(audit::page))
        .route("/audit/export", get(audit::export))
        .route("/access-control", get(admin::access_control))
        .route("/access-control/requester-role", post(admin::requester_role))
        .route("/access-control/assignments", post(admin::assign))
        .route("/enforcement-points", get(admin::enforcement_points))
        .route("/enforcement-points/join-tokens", post(admin::join_token))
        .layer(axum::middleware::from_fn(security_headers));
    Router::new().merge(pages).route("/assets/{name}", get(assets::serve))
}

/// Headers of every page: the CSP, no sniffing, no framing, no referrer to other sites, no
/// caching. An HTTP/2
/// request names its host in `:authority`, not `Host`: it is copied to `Host` first, so that
/// the origin check of forms and the links the portal writes see it.
async fn security_headers(mut req: Request, next: Next) -> Response {
    if !req.headers().contains_key(header::HOST) {
        if let Some(v) = req.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()) {
            req.headers_mut().insert(header::HOST, v);
        }
    }
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Not `no-referrer`: under it browsers send `Origin: null` with forms, and the origin check
    // of every post would refuse them.
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    resp
}

async fn home(viewer: Option<Viewer>) -> Response {
    match viewer {
        Some(_) => redirect("/jit"),
        None => redirect("/signin"),
    }
}

/// A signed-in person: the session and the principal it proves, re-checked on this request.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub ctx: RequestCtx,
    pub principal: Principal,
    pub credential: Credential,
    pub csrf: String,
}

/// The request's context (caller address through the trusted proxies, correlation id).
pub(crate) fn ctx_of_parts(parts: &axum::http::request::Parts) -> RequestCtx {
    let peer = parts
        .extensions
        .get::<ConnectInfo<PeerAddr>>()
        .map(|c| c.0)
        .unwrap_or(PeerAddr(std::net::SocketAddr::from(([0, 0, 0, 0], 0))));
    crate::ctx_from(peer, &parts.headers, &parts.extensions)
}

/// The session behind the request's cookie, if it and its credential are still valid. A
/// session whose token was revoked or whose principal was deleted is ended here.
pub(crate) async fn viewer_of(app: &App, parts: &axum::http::request::Parts) -> Result<Option<Viewer>, ApiError> {
    let Some(id) = session::cookie(&parts.headers, session::COOKIE) else { return Ok(None) };
    let now = app.clock.now();
    let Some(s) = app.sessions.get(id, now).await? else { return Ok(None) };
    let proved = match &s.proof {
        Proof::Token { hash } => app
            .store
            .authenticate(hash, now)
            .await?
            .filter(|t| t.principal.name == s.principal)
            .map(|t| (t.principal, Credential::Token { id: t.token_id, expires: t.expires })),
        Proof::IdToken => {
            app.store.get_principal(&s.principal).await?.map(|p| (p, Credential::IdToken { expires: s.expires }))
        }
    };
    match proved {
        Some((principal, credential)) => {
            crate::trace::record_caller(&principal.name);
            Ok(Some(Viewer { ctx: ctx_of_parts(parts), principal, credential, csrf: s.csrf }))
        }
        None => {
            app.sessions.remove(id, now).await?;
            Ok(None)
        }
    }
}

impl axum::extract::FromRequestParts<App> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, app: &App) -> Result<Self, Response> {
        match viewer_of(app, parts).await {
            Ok(Some(v)) => Ok(v),
            Ok(None) => {
                let back = if parts.method == Method::GET {
                    parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
                } else {
                    "/"
                };
                let target = format!("/signin?next={}", percent_encoding::utf8_percent_encode(back, FORM));
                Err(redirect(&target))
            }
            Err(e) => Err(error_page(None, e)),
        }
    }
}

impl axum::extract::OptionalFromRequestParts<App> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, app: &App) -> Result<Option<Self>, Response> {
        viewer_of(app, parts).await.map_err(|e| error_page(None, e))
    }
}

/// Characters escaped in a query value.
pub(crate) const FORM: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// `s` percent-encoded for a query string.
pub(crate) fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, FORM).to_string()
}

/// A posted form's fields, in order (repeated names kept), after the CSRF check.
#[derive(Debug, Default)]
pub struct Fields(pub Vec<(String, String)>);

impl Fields {
    pub fn parse(bytes: &[u8]) -> Self {
        Fields(url::form_urlencoded::parse(bytes).into_owned().collect())
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0.iter().filter(move |(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// A trimmed, non-empty value.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.get(name).map(str::trim).filter(|v| !v.is_empty())
    }
}

/// Whether a post comes from this portal: an `Origin` (or `Sec-Fetch-Site`) that says otherwise
/// refuses it, whatever the token. The origin may be this request's host or the configured
/// public URL's (behind a proxy that rewrites `Host`).
pub(crate) fn same_origin(app: &App, headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if !matches!(site, "same-origin" | "none") {
            return false;
        }
    }
    match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(origin) => {
            let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
            let origin_host = origin.split_once("://").map(|(_, h)| h).unwrap_or("");
            let public = app.config.public_url.as_deref().and_then(|u| u.split_once("://")).map(|(_, h)| h);
            let public = public.map(|h| h.split('/').next().unwrap_or(h));
            (!host.is_empty() && origin_host.eq_ignore_ascii_case(host))
                || public.is_some_and(|p| !p.is_empty() && origin_host.eq_ignore_ascii_case(p))
        }
    }
}

/// Reads a posted form and checks its CSRF token against the session's (and its origin). A
/// refusal is audited and answered 403 before anything is looked at.
pub(crate) async fn checked_form(
    app: &App,
    viewer: &Viewer,
    headers: &HeaderMap,
    body: Body,
    operation: &str,
    resource: &str,
) -> Result<Fields, Response> {
    let bytes = match crate::arm::read_body(app, body).await {
        Ok(b) => b,
        Err(e) => return Err(error_page(Some(viewer), e)),
    };
    let fields = Fields::parse(&bytes);
    let token_ok = fields.get("csrf").is_some_and(|t| session::same_secret(t, &viewer.csrf));
    if token_ok && same_origin(app, headers) {
        return Ok(fields);
    }
    let audit = app.audit(&viewer.ctx, &viewer.principal.name, operation, resource);
    let err = ApiError::new(
        StatusCode::FORBIDDEN,
        "InvalidCsrfToken",
        "This form did not come from this portal session (missing or wrong CSRF token); nothing was changed. \
         Reload the page and try again.",
    );
    let err = app.refuse(audit, err).await;
    Err(error_page(Some(viewer), err))
}

/// An HTML answer.
pub(crate) fn html(status: StatusCode, markup: Markup) -> Response {
    let mut resp = (status, markup.into_string()).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    resp
}

/// `303 See Other` to a path of the portal.
pub(crate) fn redirect(to: &str) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// An error as a page (inside the layout when someone is signed in).
pub(crate) fn error_page(viewer: Option<&Viewer>, e: ApiError) -> Response {
    e.log();
    let body = maud::html! {
        div.notice.error role="alert" {
            h1 { (e.status.canonical_reason().unwrap_or("Error")) }
            p { (e.message) }
            p.muted { "Code: " code { (e.code) } }
        }
    };
    let page = match viewer {
        Some(v) => layout::page(v, "Error", layout::Nav::None, body),
        None => layout::bare("Error", body),
    };
    html(e.status, page)
}

/// Session bookkeeping for sign-in.
pub(crate) fn new_session(app: &App, principal: &str, proof: Proof, expires: Option<time::OffsetDateTime>) -> Session {
    let now = app.clock.now();
    let cap = now + session::MAX_AGE;
    let expires = expires.map_or(cap, |e| e.min(cap));
    Session { principal: principal.to_owned(), proof, csrf: session::random_id(), created: now, expires }
}

/// This server's URL as browsers and agents reach it: the public URL, else the request's host.
pub(crate) fn base_url(app: &App, headers: &HeaderMap) -> String {
    if let Some(u) = &app.config.public_url {
        return u.trim_end_matches('/').to_owned();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b)))
        .unwrap_or("127.0.0.1:8443");
    format!("{}://{host}", if app.config.tls { "https" } else { "http" })
}
