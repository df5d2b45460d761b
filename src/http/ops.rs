//! Operations routes: liveness, readiness, metrics.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::{openapi, ApiError, AppState};

#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain")))]
pub(super) async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::telemetry::render(),
    )
}

#[utoipa::path(get, path = "/healthz", tag = "ops",
    responses((status = 200, description = "The process is alive: `{\"status\":\"ok\",\"version\":\"<server version>\"}`")))]
pub(super) async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
}

#[utoipa::path(get, path = "/readyz", tag = "ops", responses(
    (status = 200, description = "Recovered and taking writes"),
    (status = 503, response = openapi::Unavailable)
))]
pub(super) async fn readyz(State(state): State<AppState>) -> Response {
    // Recovering (or stopping, or the log failed) comes first: a provider
    // reason shown meanwhile would say the owner routes answer, and they
    // do not yet.
    if !state.is_serving() {
        ApiError::NotReady.into_response()
    } else if let Some(why) = state.auth().not_ready_reason() {
        ApiError::NotReadyBecause(why).into_response()
    } else if state.is_ready() {
        axum::Json(serde_json::json!({"status": "ready"})).into_response()
    } else {
        ApiError::NotReady.into_response()
    }
}
