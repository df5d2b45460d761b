//! `GET /openapi.json`: the OpenAPI 3.1 document, generated from the code by
//! utoipa. Operations come from the `#[utoipa::path]` attributes on the
//! handlers in `http/mod.rs`, schemas from `ToSchema` on the very body and
//! response types the handlers use. A test (`tests/openapi.rs`) checks that
//! every route of the router is documented and nothing else is.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use super::error::Problem;
use super::{AdjustBody, CreateBody, ItemJson, ReplaceBody, TxBody, TxOpBody};

/// `GET /items` answer.
#[derive(ToSchema)]
#[allow(dead_code)] // documentation only: the handler builds it as JSON
pub(super) struct ItemPage {
    items: Vec<ItemJson<'static>>,
    /// Opaque; `null` on the last page.
    next_cursor: Option<String>,
}

/// `POST /transactions` answer: each touched item once, in order of first
/// appearance.
#[derive(ToSchema)]
#[allow(dead_code)] // documentation only
pub(super) struct TxResult {
    items: Vec<ItemJson<'static>>,
}

/// `Idempotency-Key`, declared once for every keyed write.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // documentation only: handlers read the header map
pub(super) struct KeyHeader {
    /// 1-255 visible ASCII characters (or the quoted sf-string form);
    /// retries with the same key and request return the first response.
    /// Kept 24 h by default (`--idempotency-ttl`).
    #[serde(rename = "Idempotency-Key")]
    idempotency_key: Option<String>,
}

/// `If-Match`, declared once for the conditional writes.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // documentation only
pub(super) struct IfMatchHeader {
    /// `"<version>"` (strong comparison) or `*`; a stale tag gives 412.
    #[serde(rename = "If-Match")]
    if_match: Option<String>,
}

/// Each error response once, referenced by the operations (`response = ...`).
macro_rules! problem_responses {
    ($($name:ident => $desc:literal $(, headers($($h:tt)*))?;)*) => {$(
        #[derive(utoipa::ToResponse)]
        #[response(description = $desc, content_type = "application/problem+json" $(, headers($($h)*))?)]
        #[allow(dead_code)] // documentation only
        pub(super) struct $name(Problem<'static>);
    )*};
}

problem_responses! {
    BadRequest => "invalid_body, qty_below_zero, qty_overflow, invalid_limit, invalid_cursor, invalid_idempotency_key";
    Unauthorized => "unauthorized: missing or invalid bearer token", headers(("WWW-Authenticate" = String));
    NotFound => "not_found";
    Conflict => "name_taken or item_limit_reached";
    PreconditionFailed => "version_mismatch: a stale If-Match";
    PayloadTooLarge => "body_too_large: over 64 KiB";
    UnsupportedMediaType => "unsupported_media_type: the body must be JSON";
    KeyReused => "idempotency_key_reused: the key was used for a different request";
    KeysExhausted => "idempotency_keys_exhausted", headers(("Retry-After" = u64));
    Unavailable => "overloaded, not_ready or unavailable", headers(("Retry-After" = u64));
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "CountIQ",
        description = "Inventory as a state machine: owners, items, atomic deltas, idempotent retries. \
            Every reply leaves only after the state it reports is durable. \
            Idempotency keys are kept 24 hours by default (--idempotency-ttl).",
        license(name = "MIT OR Apache-2.0")
    ),
    paths(
        super::create_item,
        super::list_items,
        super::get_item,
        super::replace_item,
        super::adjust_qty,
        super::delete_item,
        super::transact,
        super::healthz,
        super::readyz,
        super::metrics,
        openapi_json,
    ),
    components(
        schemas(CreateBody, ReplaceBody, AdjustBody, TxBody, TxOpBody, ItemJson, ItemPage, TxResult, Problem),
        responses(BadRequest, Unauthorized, NotFound, Conflict, PreconditionFailed, PayloadTooLarge,
            UnsupportedMediaType, KeyReused, KeysExhausted, Unavailable)
    ),
    modifiers(&BearerAuth),
    tags((name = "items", description = "One owner's items"), (name = "ops", description = "Health, readiness, metrics"))
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .bearer_format("JWT")
            .build();
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
        }
    }
}

/// The document as JSON (built once).
pub fn document() -> &'static str {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DOC.get_or_init(|| {
        ApiDoc::openapi()
            .to_pretty_json()
            .expect("the OpenAPI document serializes")
    })
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "ops",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json")))]
pub(super) async fn openapi_json() -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        document(),
    )
}
