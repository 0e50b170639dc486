//! stub
use axum::response::Response;
pub async fn page() -> Response {
    super::redirect("/jit")
}
pub async fn events() -> Response {
    super::redirect("/jit")
}
