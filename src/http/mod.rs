//! Transport: `fn app(state) -> Router`, strict parsing, response shapes.
//!
//! # Layout
//! - `routes`: the one table of route templates (router, metric labels,
//!   idempotency fingerprints; the OpenAPI test checks the document).
//! - `state`: [`AppState`], what handlers share.
//! - `front`: the per-request layer (in-flight bound, request id, metrics,
//!   span); `request_metrics`: the request histogram's labels.
//! - `extract`: strict JSON bodies, the bearer owner, `If-Match`,
//!   `Idempotency-Key` and the request fingerprint.
//! - `events`: `GET /events`, the owner's change feed (Server-Sent Events).
//! - `bodies`: the request body types (objects only).
//! - `items`: the `/items` and `/transactions` handlers; `ops`: health,
//!   readiness, metrics.
//! - `json`: the item JSON, RFC 3339 times, `ETag`, `CountIQ-LSN`;
//!   `cursor`: listing cursors.
//! - `error`: [`ApiError`], the one place outcomes become error responses.
//! - `openapi`: the generated OpenAPI document.

mod bodies;
mod cursor;
mod error;
mod events;
mod extract;
pub mod front;
mod items;
mod json;
pub mod openapi;
mod ops;
pub mod request_metrics;
mod reservations;
pub mod routes;
mod state;

use std::time::Duration;

use axum::routing::{delete, get, patch, post};
use axum::Router;

pub use error::{ApiError, OWNER_NODE_HEADER, PROBLEM_JSON};
pub use json::LSN;
pub use state::AppState;

/// Largest request body (API.md): 64 KiB.
pub const BODY_BYTES_MAX: usize = 64 * 1024;
/// Page size bounds for `GET /items`.
pub const LIST_LIMIT_MAX: usize = 1000;
pub const LIST_LIMIT_DEFAULT: usize = 100;
/// Time a client has to send a request body once its head is in (408
/// after it). The head itself has `server::HEADER_READ_TIMEOUT`.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Requests inside handlers at most; more are answered 503 `overloaded` at
/// once, before they take memory.
pub const IN_FLIGHT_MAX: usize = 4096;

/// The whole HTTP API, with the per-request layer (`front`) around every
/// route.
pub fn app(state: AppState) -> Router {
    use routes::*;
    Router::new()
        .route(ITEMS, get(items::list_items).post(items::create_item))
        .route(
            ITEM,
            get(items::get_item)
                .put(items::replace_item)
                .delete(items::delete_item),
        )
        .route(ITEM_QTY, patch(items::adjust_qty))
        .route(TRANSACTIONS, post(items::transact))
        .route(ITEM_HISTORY, get(reservations::history))
        .route(ITEM_RESERVATIONS, post(reservations::reserve))
        .route(RESERVATION, delete(reservations::release))
        .route(RESERVATION_COMMIT, post(reservations::commit))
        .route(EVENTS, get(events::events))
        .route(HEALTHZ, get(ops::healthz))
        .route(READYZ, get(ops::readyz))
        .route(METRICS, get(ops::metrics))
        .route(OPENAPI, get(openapi::openapi_json))
        .fallback(|| async { ApiError::NotFound })
        .layer(front::FrontLayer::new(IN_FLIGHT_MAX))
        .with_state(state)
}
