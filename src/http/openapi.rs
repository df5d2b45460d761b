//! `GET /openapi.json`: the OpenAPI 3.1 document, generated from the code by
//! utoipa. Operations come from the `#[utoipa::path]` attributes on the
//! handlers in `http/items.rs`, `http/reservations.rs` and `http/ops.rs`, schemas from `ToSchema` on the very body and
//! response types the handlers use. A test (`tests/openapi.rs`) checks that
//! every route of the router is documented and nothing else is.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use utoipa::openapi::schema::{AdditionalProperties, Object, Schema};
use utoipa::openapi::RefOr;

use super::bodies::{
    AdjustBody, CommitBody, CreateBody, ReplaceBody, ReserveBody, TxAdjustBody, TxBody,
    TxCommitBody, TxOpBody, TxReleaseBody, TxReserveBody,
};
use super::error::Problem;
use super::json::{HistoryJson, HoldJson, ItemJson, ReservationJson};
use crate::domain::{
    DELTA_ABS_MAX, HOLD_TTL_SECS_MAX, NAME_CHARS_MAX, QTY_MAX, REASON_BYTES_MAX,
    REFERENCE_BYTES_MAX, TX_OPS_MAX,
};

/// `GET /items/{id}/history` answer.
#[derive(ToSchema)]
#[allow(dead_code)] // documentation only
pub(super) struct HistoryDoc {
    entries: Vec<HistoryJson<'static>>,
    /// `null` on the last page.
    next_cursor: Option<String>,
}

/// `GET /items` answer.
#[derive(ToSchema)]
#[allow(dead_code)] // documentation only: the handler builds it as JSON
pub(super) struct ItemPage {
    items: Vec<ItemJson<'static>>,
    /// Opaque; `null` on the last page.
    next_cursor: Option<String>,
}

/// `POST /transactions` answer: each touched item once, in order of first
/// appearance, and the holds its reserve ops placed, in op order (empty
/// without reserve ops).
#[derive(ToSchema)]
#[allow(dead_code)] // documentation only
pub(super) struct TxResult {
    items: Vec<ItemJson<'static>>,
    reservations: Vec<HoldJson>,
}

/// `Idempotency-Key`, declared once for every keyed write.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // documentation only: handlers read the header map
pub(super) struct KeyHeader {
    /// 1-255 visible ASCII characters (or the quoted sf-string form);
    /// retries with the same key and request return the first response.
    /// Kept 24 h by default (`--idempotency-ttl`).
    // The pattern is `IdemKey::parse`'s rule: a bare key that does not
    // start with a quote, or the quoted form whose inside unescapes
    // (backslash-quote, backslash-backslash) to the key. Spaces around the
    // value, which the parser trims, are left out.
    #[serde(rename = "Idempotency-Key")]
    #[param(
        nullable = false,
        pattern = r#"^(?:[!#-~][!-~]{0,254}|"(?:[!#-\[\]-~]|\\["\\]){1,255}")$"#
    )]
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
    BadRequest => "invalid_body, qty_below_zero, qty_overflow, conflicting_notes, invalid_limit, invalid_cursor, invalid_idempotency_key";
    Unauthorized => "unauthorized: missing or invalid bearer token", headers(("WWW-Authenticate" = String));
    NotFound => "not_found";
    Conflict => "name_taken, item_limit_reached or insufficient_available";
    HoldConflict => "insufficient_available or reservation_limit_reached";
    PreconditionFailed => "version_mismatch: a stale If-Match";
    PayloadTooLarge => "body_too_large: over 64 KiB";
    UnsupportedMediaType => "unsupported_media_type: the body must be JSON";
    KeyReused => "idempotency_key_reused: the key was used for a different request";
    KeysExhausted => "idempotency_keys_exhausted", headers(("Retry-After" = u64));
    Unavailable => "overloaded, not_ready or unavailable", headers(("Retry-After" = u64));
    TooManySubscribers => "too_many_subscribers: the owner's open event streams are at their bound", headers(("Retry-After" = u64));
}

/// The errors of every keyed write with a body (POST, PUT, PATCH,
/// transactions), declared once; each route adds its own (404, 409, 412).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // documentation only
pub(super) enum BodyWriteErrors {
    #[response(status = 400)]
    BadRequest(#[ref_response] BadRequest),
    #[response(status = 401)]
    Unauthorized(#[ref_response] Unauthorized),
    #[response(status = 413)]
    PayloadTooLarge(#[ref_response] PayloadTooLarge),
    #[response(status = 415)]
    UnsupportedMediaType(#[ref_response] UnsupportedMediaType),
    #[response(status = 422)]
    KeyReused(#[ref_response] KeyReused),
    #[response(status = 429)]
    KeysExhausted(#[ref_response] KeysExhausted),
    #[response(status = 503)]
    Unavailable(#[ref_response] Unavailable),
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
        super::items::create_item,
        super::items::list_items,
        super::items::get_item,
        super::items::replace_item,
        super::items::adjust_qty,
        super::items::delete_item,
        super::items::transact,
        super::reservations::reserve,
        super::reservations::commit,
        super::reservations::release,
        super::reservations::history,
        super::events::events,
        super::ops::healthz,
        super::ops::readyz,
        super::ops::metrics,
        openapi_json,
    ),
    components(
        schemas(CreateBody, ReplaceBody, AdjustBody, TxBody, TxOpBody, TxAdjustBody, TxReserveBody,
            TxCommitBody, TxReleaseBody, ItemJson, ItemPage, TxResult, HoldJson, Problem,
            ReserveBody, CommitBody, ReservationJson, HistoryJson, HistoryDoc),
        responses(BadRequest, Unauthorized, NotFound, Conflict, HoldConflict, PreconditionFailed, PayloadTooLarge,
            UnsupportedMediaType, KeyReused, KeysExhausted, Unavailable, TooManySubscribers)
    ),
    modifiers(&BearerAuth, &Bounds, &NoNullBodies),
    tags((name = "items", description = "One owner's items"), (name = "reservations", description = "Holds with expiry, and per-item history"), (name = "ops", description = "Health, readiness, metrics"))
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

/// The numeric bounds of the bodies, from the domain's constants (utoipa's
/// attributes take literals only, and the numbers were written out seven
/// times). `tests/openapi.rs` checks them against the constants.
struct Bounds;

impl Modify for Bounds {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let Some(components) = openapi.components.as_mut() else {
            return;
        };
        let qty = (0, QTY_MAX as i64);
        let delta = (-DELTA_ABS_MAX, DELTA_ABS_MAX);
        for (schema, field, (min, max)) in [
            ("CreateBody", "qty", qty),
            ("ReplaceBody", "qty", qty),
            ("AdjustBody", "delta", delta),
            ("TxAdjustBody", "delta", delta),
            ("TxReserveBody", "qty", (1, QTY_MAX as i64)),
            ("TxReserveBody", "ttl", (1, HOLD_TTL_SECS_MAX as i64)),
            ("Item", "qty", qty),
            ("Item", "reserved", qty),
            ("Item", "available", qty),
            ("ReserveBody", "qty", (1, QTY_MAX as i64)),
            ("ReserveBody", "ttl", (1, HOLD_TTL_SECS_MAX as i64)),
        ] {
            if let Some(object) = property(&mut components.schemas, schema, field) {
                object.minimum = Some(utoipa::Number::Int(min as isize));
                object.maximum = Some(utoipa::Number::Int(max as isize));
            }
        }
        for schema in ["CreateBody", "ReplaceBody"] {
            if let Some(object) = property(&mut components.schemas, schema, "name") {
                object.min_length = Some(1);
                object.max_length = Some(NAME_CHARS_MAX);
            }
        }
        // The reason's charset is ASCII, so its byte bound is a length. The
        // reference's is in bytes of UTF-8, which JSON Schema cannot say:
        // `maxLength` counts characters, so the schema states the bound for
        // ASCII text and the description says bytes.
        // Every request body that has the fields (the six qty-changing
        // writes'), found by looking, so a new body cannot be left out.
        let noted: Vec<String> = components
            .schemas
            .iter()
            .filter(|(name, schema)| {
                name.ends_with("Body")
                    && matches!(schema, RefOr::T(Schema::Object(o)) if o.properties.contains_key("reason"))
            })
            .map(|(name, _)| name.clone())
            .collect();
        for schema in &noted {
            for (field, max) in [
                ("reason", REASON_BYTES_MAX),
                ("reference", REFERENCE_BYTES_MAX),
            ] {
                if let Some(object) = property(&mut components.schemas, schema, field) {
                    object.min_length = Some(1);
                    object.max_length = Some(max);
                }
            }
        }
        // A hold op is an object with exactly one key (`reserve`, `commit`
        // or `release`): like every body, it refuses unknown fields.
        if let Some(RefOr::T(Schema::OneOf(op))) = components.schemas.get_mut("TxOpBody") {
            for shape in op.items.iter_mut() {
                if let RefOr::T(Schema::Object(o)) = shape {
                    o.additional_properties = Some(Box::new(AdditionalProperties::FreeForm(false)));
                }
            }
        }
        if let Some(RefOr::T(Schema::Object(tx))) = components.schemas.get_mut("TxBody") {
            if let Some(RefOr::T(Schema::Array(ops))) = tx.properties.get_mut("ops") {
                ops.min_items = Some(1);
                ops.max_items = Some(TX_OPS_MAX);
            }
        }
    }
}

/// An optional body (`Option<T>` in `request_body`) is documented by
/// utoipa as "`null` or T". On the wire it is "no body or T": a JSON
/// `null` body is 400 like any body that is not an object (API.md,
/// "Objects only"). So the schema is T, and the body stays not required.
struct NoNullBodies;

impl Modify for NoNullBodies {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::schema::{SchemaType, Type};
        let is_null = |s: &RefOr<Schema>| matches!(s, RefOr::T(Schema::Object(o)) if o.schema_type == SchemaType::Type(Type::Null));
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ];
            for op in operations.into_iter().flatten() {
                let Some(body) = op.request_body.as_mut() else {
                    continue;
                };
                for content in body.content.values_mut() {
                    if let Some(RefOr::T(Schema::OneOf(one_of))) = &content.schema {
                        if let [a, b] = one_of.items.as_slice() {
                            let keep = match (is_null(a), is_null(b)) {
                                (true, false) => Some(b.clone()),
                                (false, true) => Some(a.clone()),
                                _ => None,
                            };
                            if keep.is_some() {
                                content.schema = keep;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `schema.field` of a component schema, if both are inline objects.
fn property<'a>(
    schemas: &'a mut std::collections::BTreeMap<String, RefOr<Schema>>,
    schema: &str,
    field: &str,
) -> Option<&'a mut Object> {
    let RefOr::T(Schema::Object(parent)) = schemas.get_mut(schema)? else {
        return None;
    };
    match parent.properties.get_mut(field)? {
        RefOr::T(Schema::Object(object)) => Some(object),
        _ => None,
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
