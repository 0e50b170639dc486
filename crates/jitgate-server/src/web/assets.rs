//! The portal's one stylesheet and one script, embedded in the binary and served under names
//! that carry their content hash, so they can be cached for a year.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

const CSS: &str = include_str!("assets/portal.css");
const JS: &str = include_str!("assets/portal.js");

/// One embedded file.
#[derive(Debug)]
pub struct Asset {
    /// `portal.<hash>.css`: changes whenever the content does.
    pub name: String,
    pub content: &'static str,
    pub content_type: &'static str,
}

fn asset(stem: &str, ext: &str, content: &'static str, content_type: &'static str) -> Asset {
    let hash = hex::encode(&Sha256::digest(content.as_bytes())[..6]);
    Asset { name: format!("{stem}.{hash}.{ext}"), content, content_type }
}

pub static STYLE: LazyLock<Asset> = LazyLock::new(|| asset("portal", "css", CSS, "text/css; charset=utf-8"));
pub static SCRIPT: LazyLock<Asset> = LazyLock::new(|| asset("portal", "js", JS, "text/javascript; charset=utf-8"));

/// `GET /assets/{name}`: an embedded file by its hashed name, cacheable for a year.
pub async fn serve(Path(name): Path<String>) -> Response {
    let found = [&*STYLE, &*SCRIPT].into_iter().find(|a| a.name == name);
    match found {
        Some(a) => {
            let mut resp = (StatusCode::OK, a.content).into_response();
            let h = resp.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(a.content_type));
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000, immutable"));
            h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
            resp
        }
        None => crate::error::ApiError::not_found("NotFound", format!("no asset named '{name}'")).into_response(),
    }
}
