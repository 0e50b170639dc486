//! stub
use axum::response::Response;
pub async fn page() -> Response {
    super::redirect("/jit")
}
pub async fn approvals() -> Response {
    super::redirect("/jit")
}
pub async fn act() -> Response {
    super::redirect("/jit")
}
