//! "Sign in with SSO": the OIDC authorization-code flow with PKCE against the configured issuer.
//! The browser is sent to the issuer with a random `state`, `nonce` and S256 code challenge; on
//! its return the `state` must match the cookie of the browser that left, the code is redeemed
//! with the verifier, and the ID token goes through the same validation and principal lookup as
//! an ID token sent to the API (`Oidc::validate`, `App::oidc_sign_in`, which audits the
//! sign-in), plus the nonce check. The session lasts no longer than the ID token.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::Response;
use base64::Engine;
use maud::html;
use sha2::{Digest, Sha256};

use jitgate_core::audit::ops;

use super::layout::bare;
use super::session::{self, Proof, SsoStart};
use super::signin::{form_page, local_target};
use super::{html, Fields};
use crate::error::ApiError;
use crate::{App, SignedIn};

fn refused(app: &App, next: &str, message: &str, status: StatusCode) -> Response {
    form_page(status, app.oidc.is_some(), &session::random_id(), next, Some(message))
}

/// `GET /signin/sso?next=…`: off to the identity provider.
pub async fn start(State(app): State<App>, headers: HeaderMap, uri: Uri) -> Response {
    let f = Fields::parse(uri.query().unwrap_or("").as_bytes());
    let next = local_target(f.get("next")).to_owned();
    let Some(oidc) = app.oidc.clone() else {
        return refused(&app, &next, "Single sign-on is not configured on this server.", StatusCode::NOT_FOUND);
    };
    let (authorize, token_endpoint) = match oidc.endpoints().await {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "SSO: the issuer's endpoints");
            let msg = format!("The identity provider cannot be reached: {e}");
            return refused(&app, &next, &msg, StatusCode::BAD_GATEWAY);
        }
    };
    let (state, nonce, verifier) = (session::random_id(), session::random_id(), session::random_id());
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let redirect_uri = format!("{}/signin/sso/callback", super::base_url(&app, &headers));
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("response_type", "code"),
            ("client_id", oidc.audience()),
            ("redirect_uri", redirect_uri.as_str()),
            ("scope", "openid profile email"),
            ("state", state.as_str()),
            ("nonce", nonce.as_str()),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ])
        .finish();
    let sep = if authorize.contains('?') { '&' } else { '?' };
    let location = format!("{authorize}{sep}{query}");
    let now = app.clock.now();
    let start = SsoStart { nonce, verifier, redirect_uri, token_endpoint, next, started: now };
    if let Err(e) = app.sessions.start_sso(&state, start).await {
        return super::error_page(None, ApiError::from(e));
    }
    let mut resp = super::redirect(&location);
    let cookie = format!(
        "{}={state}; Max-Age={}; Path=/; Secure; HttpOnly; SameSite=Lax",
        session::SSO_COOKIE,
        session::SSO_WINDOW.whole_seconds()
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

/// `GET /signin/sso/callback?code=…&state=…`: back from the identity provider.
pub async fn callback(State(app): State<App>, req: axum::extract::Request) -> Response {
    let (parts, _) = req.into_parts();
    let ctx = super::ctx_of_parts(&parts);
    let f = Fields::parse(parts.uri.query().unwrap_or("").as_bytes());
    let state = f.get("state").unwrap_or("");
    let bound = session::cookie(&parts.headers, session::SSO_COOKIE).is_some_and(|c| session::same_secret(c, state));
    let now = app.clock.now();
    let start = match bound {
        true => match app.sessions.take_sso(state, now).await {
            Ok(start) => start,
            Err(e) => return super::error_page(None, ApiError::from(e)),
        },
        false => None,
    };
    let (Some(start), Some(oidc)) = (start, app.oidc.clone()) else {
        let msg = "This sign-in did not start in this browser or took too long. Try again.";
        return refused(&app, "/jit", msg, StatusCode::BAD_REQUEST);
    };
    let audit = app.audit(&ctx, "anonymous", ops::SIGN_IN, "/signin/sso");
    let id_token = match (f.get("error"), f.text("code")) {
        (None, Some(code)) => oidc.redeem(&start.token_endpoint, code, &start.redirect_uri, &start.verifier).await,
        (error, _) => Err(crate::oidc::OidcError::NoIdToken(error.unwrap_or("no code").to_owned())),
    };
    let checked = match id_token {
        Ok(t) => match oidc.validate(&t).await {
            Ok(id) if id.nonce.as_deref().is_some_and(|n| session::same_secret(n, &start.nonce)) => Ok((t, id)),
            Ok(_) => Err("the ID token's nonce is not the one this sign-in sent".to_owned()),
            Err(e) => Err(e.to_string()),
        },
        Err(e) => Err(e.to_string()),
    };
    let (token, id) = match checked {
        Ok(x) => x,
        Err(why) => {
            let err = ApiError::unauthorized("InvalidAuthenticationToken", format!("SSO sign-in refused: {why}"));
            let err = app.signin_failure(audit, None, err).await;
            return refused(&app, &start.next, &err.message, StatusCode::UNAUTHORIZED);
        }
    };
    let expires = id.expires;
    let SignedIn { principal, .. } = match app.oidc_sign_in(&oidc, &token, id, &ctx).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) | Err(e) => return refused(&app, &start.next, &e.message, e.status),
    };
    let s = super::new_session(&app, &principal.name, Proof::IdToken, Some(expires));
    let max_age = (s.expires - s.created).whole_seconds();
    let id = match app.sessions.create(s).await {
        Ok(id) => id,
        Err(e) => return super::error_page(None, ApiError::from(e)),
    };
    // A page, not a redirect: the session cookie is SameSite=Strict, and a redirect chain that
    // began at the identity provider would not send it.
    let body = html! {
        meta http-equiv="refresh" content={ "0;url=" (start.next) };
        div.signin { h1 { "Signed in" } p { a href=(start.next) { "Continue" } } }
    };
    let mut resp = html(StatusCode::OK, bare("Signed in", body));
    for c in [session::set_cookie(session::COOKIE, &id, max_age), session::set_cookie(session::SSO_COOKIE, "", 0)] {
        if let Ok(v) = HeaderValue::from_str(&c) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    resp
}
