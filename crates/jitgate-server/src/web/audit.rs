//! stub
use axum::response::Response;
pub async fn page() -> Response {
    super::redirect("/jit")
}
pub async fn export() -> Response {
    super::redirect("/jit")
}
