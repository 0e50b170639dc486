//! stub
use axum::response::Response;
pub async fn access_control() -> Response {
    super::redirect("/jit")
}
pub async fn requester_role() -> Response {
    super::redirect("/jit")
}
pub async fn assign() -> Response {
    super::redirect("/jit")
}
pub async fn enforcement_points() -> Response {
    super::redirect("/jit")
}
pub async fn join_token() -> Response {
    super::redirect("/jit")
}
