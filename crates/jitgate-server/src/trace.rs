//! One tracing span per request, so that every line logged while serving it — a refusal, a
//! store error, a panic — names the request: `request{method route request_id correlation_id
//! caller}`. The route is the route's name, the same as the metrics' `route` label (the pattern
//! `/api/v1/vms/{id}` as registered, `arm.initiate` for an Azure path, `unmatched`), never the
//! raw path; the caller is recorded once it has signed in. `layers::correlate` opens the span.

/// The name of the request span.
pub const SPAN: &str = "request";

/// The span of one request, with its route when the router matched one by its pattern (else
/// the handler names it with [`record_route`]) and the caller left to [`record_caller`].
pub fn request_span(
    method: &axum::http::Method,
    route: Option<&str>,
    request_id: &str,
    correlation_id: &str,
) -> tracing::Span {
    let span = tracing::info_span!(
        SPAN,
        %method,
        route = tracing::field::Empty,
        request_id,
        correlation_id,
        caller = tracing::field::Empty,
    );
    if let Some(route) = route {
        span.record("route", route);
    }
    span
}

/// Names the route of the request being served (its span's `route`), for requests the router
/// does not match by pattern (the Azure paths, parsed into [`crate::arm::route::ArmRoute`]).
pub fn record_route(name: &str) {
    tracing::Span::current().record("route", name);
}

/// Names who is calling (its span's `caller`): a principal once signed in, or `agent:ID`.
pub fn record_caller(name: &str) {
    tracing::Span::current().record("caller", name);
}
