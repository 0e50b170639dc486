//! stub
use axum::response::Response;
pub async fn panel() -> Response {
    super::redirect("/jit")
}
pub async fn open() -> Response {
    super::redirect("/jit")
}
