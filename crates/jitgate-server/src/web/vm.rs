//! stub
use axum::response::Response;
pub async fn page() -> Response {
    super::redirect("/jit")
}
pub async fn enable() -> Response {
    super::redirect("/jit")
}
