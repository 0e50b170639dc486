//! Sign in with an API token (or an OIDC ID token pasted as one), sign out. Both are audited;
//! failed sign-ins go through the API's own compact, rate-limited audit of failures.

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use maud::html;

use jitgate_core::audit::ops;

use super::layout::bare;
use super::session::{self, Proof};
use super::{html, redirect, Fields, Viewer};
use crate::error::ApiError;
use crate::{App, Credential, SignedIn};

#[derive(Debug, serde::Deserialize)]
pub struct Next {
    next: Option<String>,
}

/// Only a path of this portal may be a target after sign-in.
pub(super) fn local_target(next: Option<&str>) -> &str {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') && !n.starts_with("/signin") => n,
        _ => "/jit",
    }
}

pub(super) fn form_page(status: StatusCode, sso: bool, token: &str, next: &str, error: Option<&str>) -> Response {
    let body = html! {
        div.signin {
            h1 { "Sign in to jitgate" }
            @if let Some(e) = error {
                div.notice.error role="alert" id="signin-error" { (e) }
            }
            form method="post" action="/signin" {
                input type="hidden" name="csrf" value=(token);
                input type="hidden" name="next" value=(next);
                div.field {
                    label for="token" { "Token" }
                    input #token type="password" name="token" autocomplete="off" required
                        aria-describedby=[error.map(|_| "signin-error")];
                }
                button.primary type="submit" { "Sign in" }
            }
            @if sso {
                p { a.button href={ "/signin/sso?next=" (super::enc(next)) } { "Sign in with SSO" } }
            }
            p.muted { "Use an API token (" code { "jitgate token create" } ") or the first-start admin token." }
        }
    };
    let mut resp = html(status, bare("Sign in", body));
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(session::SIGNIN_COOKIE, token, 3600)) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

/// `GET /signin`: the form (or the JIT page for someone signed in).
pub async fn form(State(app): State<App>, viewer: Option<Viewer>, Query(q): Query<Next>) -> Response {
    let next = local_target(q.next.as_deref()).to_owned();
    if viewer.is_some() {
        return redirect(&next);
    }
    form_page(StatusCode::OK, app.oidc.is_some(), &session::random_id(), &next, None)
}

/// `POST /signin`: checks the form's token against its cookie, then the API token the same way
/// the API does; on success starts a session no longer than the token's life.
pub async fn submit(State(app): State<App>, headers: HeaderMap, req: axum::extract::Request<Body>) -> Response {
    let (parts, body) = req.into_parts();
    let ctx = super::ctx_of_parts(&parts);
    let bytes = match crate::arm::read_body(&app, body).await {
        Ok(b) => b,
        Err(e) => return super::error_page(None, e),
    };
    let fields = Fields::parse(&bytes);
    let next = local_target(fields.get("next")).to_owned();
    let cookie = session::cookie(&headers, session::SIGNIN_COOKIE);
    let form_ok = matches!((cookie, fields.get("csrf")), (Some(c), Some(f)) if session::same_secret(c, f));
    if !form_ok || !super::same_origin(&app, &headers) {
        let msg = "The sign-in form expired or did not come from this portal. Try again.";
        return form_page(StatusCode::FORBIDDEN, app.oidc.is_some(), &session::random_id(), &next, Some(msg));
    }
    let token = fields.text("token").unwrap_or("");
    let mut auth = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}")) {
        auth.insert(header::AUTHORIZATION, v);
    }
    let signed_in = app.sign_in(&auth, &ctx, "/signin").await;
    let SignedIn { principal, credential } = match signed_in {
        Ok(s) => s,
        Err(e) => {
            let status = if e.status == StatusCode::TOO_MANY_REQUESTS { e.status } else { StatusCode::UNAUTHORIZED };
            let msg = match e.status {
                StatusCode::TOO_MANY_REQUESTS => e.message,
                s if s.is_server_error() => e.message,
                _ => "Sign-in failed: the token is invalid, expired or revoked.".to_owned(),
            };
            return form_page(status, app.oidc.is_some(), &session::random_id(), &next, Some(&msg));
        }
    };
    let (proof, method) = match credential {
        Credential::Token { .. } => (Proof::Token { hash: crate::auth::hash_token(token) }, "token"),
        Credential::IdToken { .. } => (Proof::IdToken, "oidc"),
    };
    let event = app
        .audit(&ctx, &principal.name, ops::SIGN_IN, "/signin")
        .succeeded()
        .with("method", format!("portal {method}"));
    if let Err(e) = app.store.record(event).await {
        return super::error_page(None, ApiError::from(e));
    }
    let s = super::new_session(&app, &principal.name, proof, credential.expires());
    let max_age = (s.expires - s.created).whole_seconds();
    let id = match app.sessions.create(s).await {
        Ok(id) => id,
        Err(e) => return super::error_page(None, ApiError::from(e)),
    };
    let mut resp = redirect(&next);
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(session::COOKIE, &id, max_age)) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(session::SIGNIN_COOKIE, "", 0)) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

/// `POST /signout`: ends the session (audited) and clears the cookie.
pub async fn sign_out(State(app): State<App>, viewer: Viewer, headers: HeaderMap, body: Body) -> Response {
    if let Err(refused) = super::checked_form(&app, &viewer, &headers, body, ops::SIGN_OUT, "/signout").await {
        return refused;
    }
    if let Some(id) = session::cookie(&headers, session::COOKIE) {
        if let Err(e) = app.sessions.remove(id, app.clock.now()).await {
            return super::error_page(None, ApiError::from(e));
        }
    }
    let event = app.audit(&viewer.ctx, &viewer.principal.name, ops::SIGN_OUT, "/signout").succeeded();
    if let Err(e) = app.store.record(event).await {
        return super::error_page(None, ApiError::from(e));
    }
    let mut resp = redirect("/signin");
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(session::COOKIE, "", 0)) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}
