//! stub
use axum::response::Response;
pub async fn panel() -> Response {
    super::redirect("/jit")
}
pub async fn save() -> Response {
    super::redirect("/jit")
}
