//! Transport: `fn app(state) -> Router`, the handlers, and response shapes.
//!
//! Handlers authenticate, parse strictly, build a domain `Command`, call the
//! owner's actor and map the answer to a response. No business rules here.

mod error;
mod extract;
pub mod front;
pub mod openapi;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::Router;
use base64::Engine;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use error::{ApiError, OWNER_NODE_HEADER, PROBLEM_JSON};
use extract::{idempotency, if_match, item_id, JsonBody, Owner, RawId, WriteHeaders};

use crate::actor::registry::Registry;
use crate::actor::{Answer, Request};
use crate::auth::Auth;
use crate::domain::{Command, Delta, Item, ItemName, Outcome, Qty, TxOp, TX_OPS_MAX};

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

/// What handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<StateInner>,
}

struct StateInner {
    auth: Auth,
    /// Set once recovery has finished; until then every `/items` route
    /// answers 503 `not_ready`.
    registry: OnceLock<Registry>,
    /// Cleared when the node stops taking writes (log failure, shutdown).
    accepting: AtomicBool,
    /// Set when the node is one of a cluster: owners it does not hold are
    /// answered 421 right after authentication.
    cluster: OnceLock<crate::cluster::Placement>,
}

impl AppState {
    pub fn new(auth: Auth) -> Self {
        AppState {
            inner: Arc::new(StateInner {
                auth,
                registry: OnceLock::new(),
                accepting: AtomicBool::new(true),
                cluster: OnceLock::new(),
            }),
        }
    }

    /// Recovery finished: start serving `/items`.
    pub fn set_ready(&self, registry: Registry) {
        let _ = self.inner.registry.set(registry);
    }

    /// This node is one of a cluster (set before serving).
    pub fn set_cluster(&self, placement: crate::cluster::Placement) {
        let _ = self.inner.cluster.set(placement);
    }

    /// The cluster hook: Ok unless another node holds `owner` (421).
    pub(crate) fn check_owner(&self, owner: &crate::domain::OwnerId) -> Result<(), ApiError> {
        match self.inner.cluster.get() {
            Some(placement) => Ok(placement.check_owner(owner)?),
            None => Ok(()),
        }
    }

    /// Stop serving `/items` (503 `not_ready`): log failure or shutdown.
    pub fn stop_accepting(&self) {
        self.inner.accepting.store(false, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        let failed = self
            .inner
            .registry
            .get()
            .is_none_or(|r| r.shared().wal.pipeline.has_failed());
        !failed && self.inner.accepting.load(Ordering::Acquire)
    }

    fn registry(&self) -> Result<&Registry, ApiError> {
        self.inner.registry.get().ok_or(ApiError::NotReady)
    }

    pub(crate) fn auth(&self) -> &Auth {
        &self.inner.auth
    }
}

/// The whole HTTP API, with the per-request layer (`front`) around every
/// route.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/items", get(list_items).post(create_item))
        .route(
            "/items/{id}",
            get(get_item).put(replace_item).delete(delete_item),
        )
        .route("/items/{id}/qty", patch(adjust_qty))
        .route("/transactions", post(transact))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi::openapi_json))
        .fallback(|| async { ApiError::NotFound })
        .layer(front::FrontLayer::new(IN_FLIGHT_MAX))
        .with_state(state)
}

// ---- bodies -----------------------------------------------------------------

/// A new item. `name` is trimmed; unique per owner, case-insensitively.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*$",
        example = "milk"
    )]
    name: String,
    #[serde(default)]
    #[schema(minimum = 0, maximum = 9007199254740991_i64, default = 0)]
    qty: i64,
}

/// A full replacement: both fields are required.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ReplaceBody {
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*$"
    )]
    name: String,
    #[schema(minimum = 0, maximum = 9007199254740991_i64)]
    qty: i64,
}

/// A quantity change, applied atomically.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct AdjustBody {
    #[schema(minimum = -9007199254740991_i64, maximum = 9007199254740991_i64)]
    delta: i64,
}

/// 1-1000 ops of one owner, applied in order, all or nothing.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct TxBody {
    #[schema(min_items = 1, max_items = 1000)]
    ops: Vec<TxOpBody>,
}

#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct TxOpBody {
    item: Uuid,
    #[schema(minimum = -9007199254740991_i64, maximum = 9007199254740991_i64)]
    delta: i64,
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    limit: Option<String>,
    cursor: Option<String>,
}

fn invalid<E: std::fmt::Display>(field: &str) -> impl FnOnce(E) -> ApiError + '_ {
    move |e| ApiError::InvalidBody(format!("{field}: {e}"))
}

// ---- handlers ---------------------------------------------------------------

#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain")))]
async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::telemetry::render(),
    )
}

#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, description = "The process is alive")))]
async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "ok"}))
}

#[utoipa::path(get, path = "/readyz", tag = "ops", responses(
    (status = 200, description = "Recovered and taking writes"),
    (status = 503, response = openapi::Unavailable)
))]
async fn readyz(State(state): State<AppState>) -> Response {
    if state.is_ready() {
        axum::Json(serde_json::json!({"status": "ready"})).into_response()
    } else {
        ApiError::NotReady.into_response()
    }
}

#[utoipa::path(
    get,
    path = "/items/{id}",
    tag = "items",
    summary = "Read one item",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Item id (UUID)")),
    responses(
        (status = 200, description = "The item", body = ItemJson, headers(("ETag" = String, description = "\"<version>\""))),
        (status = 401, response = openapi::Unauthorized),
        (status = 404, response = openapi::NotFound),
        (status = 503, response = openapi::Unavailable)
    )
)]
async fn get_item(
    State(s): State<AppState>,
    Owner(owner): Owner,
    RawId(id): RawId,
) -> Result<Response, ApiError> {
    let id = item_id(&id)?;
    match s.registry()?.call(&owner, Request::Get(id)).await? {
        Answer::Found(Some(item)) => Ok(item_response(StatusCode::OK, &item, false)),
        Answer::Found(None) => Err(ApiError::NotFound),
        _ => Err(ApiError::Internal),
    }
}

#[utoipa::path(
    get,
    path = "/items",
    tag = "items",
    summary = "List items in a stable order",
    security(("bearer" = [])),
    params(("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size, default 100"), ("cursor" = Option<String>, Query, description = "next_cursor of the previous page")),
    responses(
        (status = 200, description = "One page", body = openapi::ItemPage),
        (status = 400, response = openapi::BadRequest),
        (status = 401, response = openapi::Unauthorized),
        (status = 503, response = openapi::Unavailable)
    )
)]
async fn list_items(
    State(s): State<AppState>,
    Owner(owner): Owner,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| bad_param("invalid_query", e.body_text()))?;
    let limit = match q.limit.as_deref() {
        None => LIST_LIMIT_DEFAULT,
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=LIST_LIMIT_MAX).contains(n))
            .ok_or_else(|| {
                bad_param(
                    "invalid_limit",
                    format!("limit must be an integer from 1 to {LIST_LIMIT_MAX}"),
                )
            })?,
    };
    let after = q.cursor.as_deref().map(decode_cursor).transpose()?;
    match s
        .registry()?
        .call(&owner, Request::List { after, limit })
        .await?
    {
        Answer::Page { items, more } => {
            let next_cursor = more
                .then(|| items.last().map(|i| encode_cursor(i.id)))
                .flatten();
            let body = serde_json::json!({
                "items": items.iter().map(ItemJson::from).collect::<Vec<_>>(),
                "next_cursor": next_cursor,
            });
            Ok(axum::Json(body).into_response())
        }
        _ => Err(ApiError::Internal),
    }
}

#[utoipa::path(
    post,
    path = "/items",
    tag = "items",
    summary = "Create an item",
    security(("bearer" = [])),
    params(openapi::KeyHeader),
    request_body(content = CreateBody, content_type = "application/json"),
    responses(
        (status = 201, description = "Created", body = ItemJson, headers(("ETag" = String, description = "\"<version>\""), ("Idempotent-Replayed" = Option<String>, description = "true on a replayed response"), ("Location" = String, description = "/items/<id>"))),
        (status = 400, response = openapi::BadRequest),
        (status = 401, response = openapi::Unauthorized),
        (status = 409, response = openapi::Conflict),
        (status = 413, response = openapi::PayloadTooLarge),
        (status = 415, response = openapi::UnsupportedMediaType),
        (status = 422, response = openapi::KeyReused),
        (status = 429, response = openapi::KeysExhausted),
        (status = 503, response = openapi::Unavailable)
    )
)]
async fn create_item(
    State(s): State<AppState>,
    Owner(owner): Owner,
    WriteHeaders(headers): WriteHeaders,
    JsonBody(body): JsonBody<CreateBody>,
) -> Result<Response, ApiError> {
    let key = idempotency(&headers, "POST", "/items", None, Some(&body))?;
    let cmd = Command::Create {
        name: ItemName::new(&body.name).map_err(invalid("name"))?,
        qty: Qty::new(body.qty).map_err(invalid("qty"))?,
    };
    write(&s, &owner, cmd, key).await
}

#[utoipa::path(
    put,
    path = "/items/{id}",
    tag = "items",
    summary = "Replace an item (name and qty)",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Item id (UUID)"), openapi::IfMatchHeader, openapi::KeyHeader),
    request_body(content = ReplaceBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Replaced", body = ItemJson, headers(("ETag" = String, description = "\"<version>\""), ("Idempotent-Replayed" = Option<String>, description = "true on a replayed response"))),
        (status = 400, response = openapi::BadRequest),
        (status = 401, response = openapi::Unauthorized),
        (status = 404, response = openapi::NotFound),
        (status = 409, response = openapi::Conflict),
        (status = 412, response = openapi::PreconditionFailed),
        (status = 413, response = openapi::PayloadTooLarge),
        (status = 415, response = openapi::UnsupportedMediaType),
        (status = 422, response = openapi::KeyReused),
        (status = 429, response = openapi::KeysExhausted),
        (status = 503, response = openapi::Unavailable)
    )
)]
async fn replace_item(
    State(s): State<AppState>,
    Owner(owner): Owner,
    RawId(id): RawId,
    WriteHeaders(headers): WriteHeaders,
    JsonBody(body): JsonBody<ReplaceBody>,
) -> Result<Response, ApiError> {
    let id = item_id(&id)?;
    let key = idempotency(&headers, "PUT", "/items/{id}", Some(id), Some(&body))?;
    let cmd = Command::Replace {
        id,
        name: ItemName::new(&body.name).map_err(invalid("name"))?,
        qty: Qty::new(body.qty).map_err(invalid("qty"))?,
        if_match: if_match(&headers),
    };
    write(&s, &owner, cmd, key).await
}

#[utoipa::path(
    patch,
    path = "/items/{id}/qty",
    tag = "items",
    summary = "Change qty by a delta, atomically",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Item id (UUID)"), openapi::IfMatchHeader, openapi::KeyHeader),
    request_body(content = AdjustBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Applied", body = ItemJson, headers(("ETag" = String, description = "\"<version>\""), ("Idempotent-Replayed" = Option<String>, description = "true on a replayed response"))),
        (status = 400, response = openapi::BadRequest),
        (status = 401, response = openapi::Unauthorized),
        (status = 404, response = openapi::NotFound),
        (status = 412, response = openapi::PreconditionFailed),
        (status = 413, response = openapi::PayloadTooLarge),
        (status = 415, response = openapi::UnsupportedMediaType),
        (status = 422, response = openapi::KeyReused),
        (status = 429, response = openapi::KeysExhausted),
        (status = 503, response = openapi::Unavailable)
    )
)]
async fn adjust_qty(
    State(s): State<AppState>,
    Owner(owner): Owner,
    RawId(id): RawId,
    WriteHeaders(headers): WriteHeaders,
    JsonBody(body): JsonBody<AdjustBody>,
) -> Result<Response, ApiError> {
    let id = item_id(&id)?;
    let key = idempotency(&headers, "PATCH", "/items/{id}/qty", Some(id), Some(&body))?;
    let cmd = Command::Adjust {
        id,
        delta: Delta::new(body.delta).map_err(invalid("delta"))?,
        if_match: if_match(&headers),
    };
    write(&s, &owner, cmd, key).await
}

#[utoipa::path(
    delete,
    path = "/items/{id}",
    tag = "items",
    summary = "Delete an item (idempotent)",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Item id (UUID)"), openapi::KeyHeader),
    responses(
        (status = 204, description = "Deleted, or already gone", headers(("Idempotent-Replayed" = Option<String>, description = "true on a replayed response"))),
        (status = 400, response = openapi::BadRequest),
        (status = 401, response = openapi::Unauthorized),
        (status = 422, response = openapi::KeyReused),
        (status = 429, response = openapi::KeysExhausted),
        (status = 503, response = openapi::Unavailable)
    )
)]
async fn delete_item(
    State(s): State<AppState>,
    Owner(owner): Owner,
    RawId(id): RawId,
    WriteHeaders(headers): WriteHeaders,
) -> Result<Response, ApiError> {
    // A malformed id names no item: deleting it is the same no-op as
    // deleting a missing one (204), but there is nothing to record.
    let Ok(id) = item_id(&id) else {
        idempotency::<()>(&headers, "DELETE", "/items/{id}", None, None)?;
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let key = idempotency::<()>(&headers, "DELETE", "/items/{id}", Some(id), None)?;
    write(&s, &owner, Command::Delete { id }, key).await
}

#[utoipa::path(
    post,
    path = "/transactions",
    tag = "items",
    summary = "Apply 1-1000 deltas atomically",
    security(("bearer" = [])),
    params(openapi::KeyHeader),
    request_body(content = TxBody, content_type = "application/json"),
    responses(
        (status = 200, description = "All ops applied", body = openapi::TxResult, headers(("Idempotent-Replayed" = Option<String>, description = "true on a replayed response"))),
        (status = 400, response = openapi::BadRequest),
        (status = 401, response = openapi::Unauthorized),
        (status = 404, response = openapi::NotFound),
        (status = 413, response = openapi::PayloadTooLarge),
        (status = 415, response = openapi::UnsupportedMediaType),
        (status = 422, response = openapi::KeyReused),
        (status = 429, response = openapi::KeysExhausted),
        (status = 503, response = openapi::Unavailable)
    )
)]
async fn transact(
    State(s): State<AppState>,
    Owner(owner): Owner,
    WriteHeaders(headers): WriteHeaders,
    JsonBody(body): JsonBody<TxBody>,
) -> Result<Response, ApiError> {
    if !(1..=TX_OPS_MAX).contains(&body.ops.len()) {
        return Err(ApiError::InvalidBody(format!(
            "ops must hold 1 to {TX_OPS_MAX} operations, got {}",
            body.ops.len()
        )));
    }
    let key = idempotency(&headers, "POST", "/transactions", None, Some(&body))?;
    let ops = body
        .ops
        .iter()
        .enumerate()
        .map(|(i, op)| {
            let delta = Delta::new(op.delta)
                .map_err(|e| ApiError::InvalidBody(format!("ops[{i}].delta: {e}")))?;
            Ok(TxOp {
                item: op.item,
                delta,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    write(&s, &owner, Command::Transact { ops }, key).await
}

/// Send a write to the owner and render its answer.
async fn write(
    s: &AppState,
    owner: &crate::domain::OwnerId,
    cmd: Command,
    key: Option<(
        crate::domain::idempotency::IdemKey,
        crate::domain::idempotency::Fingerprint,
    )>,
) -> Result<Response, ApiError> {
    match s
        .registry()?
        .call(owner, Request::Write { cmd, key })
        .await?
    {
        Answer::Done { result, replayed } => {
            let mut response = match result {
                Ok(outcome) => outcome_response(&outcome),
                Err(rejection) => ApiError::Rejected(rejection).into_response(),
            };
            if replayed {
                response
                    .headers_mut()
                    .insert("idempotent-replayed", HeaderValue::from_static("true"));
            }
            Ok(response)
        }
        Answer::KeyReused => Err(ApiError::KeyReused),
        Answer::KeysExhausted { retry_after } => Err(ApiError::KeysExhausted { retry_after }),
        Answer::Found(_) | Answer::Page { .. } => Err(ApiError::Internal),
    }
}

// ---- responses --------------------------------------------------------------

/// An item as JSON (API.md "Item").
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Item)]
struct ItemJson<'a> {
    id: Uuid,
    name: &'a str,
    #[schema(minimum = 0, maximum = 9007199254740991_i64)]
    qty: u64,
    /// Starts at 1, +1 on every change; `ETag` is `"<version>"`.
    #[schema(minimum = 1)]
    version: u64,
    /// RFC 3339, UTC.
    #[schema(value_type = String)]
    created_at: Rfc3339,
    #[schema(value_type = String)]
    updated_at: Rfc3339,
}

impl<'a> From<&'a Item> for ItemJson<'a> {
    fn from(i: &'a Item) -> Self {
        ItemJson {
            id: i.id,
            name: i.name.as_str(),
            qty: i.qty.get(),
            version: i.version,
            created_at: Rfc3339(i.created_at),
            updated_at: Rfc3339(i.updated_at),
        }
    }
}

/// Microseconds since the epoch, serialized as RFC 3339 (UTC, µs) straight
/// into the output: no intermediate `String` per timestamp.
struct Rfc3339(i64);

impl Serialize for Rfc3339 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; RFC3339_MICROS_LEN];
        s.serialize_str(rfc3339_micros(self.0, &mut buf))
    }
}

/// Length of `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
const RFC3339_MICROS_LEN: usize = 27;

/// `micros` since the epoch (clamped to 0..=9999-12-31) as RFC 3339 in UTC
/// with microseconds, the same text as `humantime::format_rfc3339_micros`.
/// Written by hand into a stack buffer: it runs twice per item response,
/// and going through `fmt` cost more than the rest of the JSON.
fn rfc3339_micros(micros: i64, buf: &mut [u8; RFC3339_MICROS_LEN]) -> &str {
    const MAX: i64 = 253_402_300_799_999_999; // 9999-12-31T23:59:59.999999Z
    let micros = micros.clamp(0, MAX);
    let secs = micros / 1_000_000;
    let frac = micros % 1_000_000;
    let (days, sod) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut put = |at: usize, value: i64, width: usize| {
        let mut v = value;
        for i in (at..at + width).rev() {
            buf[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, year, 4);
    put(5, month, 2);
    put(8, day, 2);
    put(11, sod / 3600, 2);
    put(14, sod / 60 % 60, 2);
    put(17, sod % 60, 2);
    put(20, frac, 6);
    for (at, sep) in [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
        (26, b'Z'),
    ] {
        buf[at] = sep;
    }
    std::str::from_utf8(buf).expect("digits and separators are ASCII")
}

fn item_response(status: StatusCode, item: &Item, created: bool) -> Response {
    let mut body = Vec::new();
    write_item_json(item, &mut body);
    let mut response = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::ETAG, etag(item.version));
    if created {
        let location = format!("/items/{}", item.id);
        headers.insert(
            header::LOCATION,
            HeaderValue::from_str(&location).expect("uuid is ASCII"),
        );
    }
    response
}

/// An item as JSON, byte for byte what `serde_json` makes of [`ItemJson`]
/// (a test holds them equal), written straight into `out`. This is the
/// body of every write's reply: through serde, escaping-scanning the id and
/// the two timestamps, which need no escaping, cost about as much as the
/// rest of the handler. Only the name is escaped (by `serde_json`).
fn write_item_json(item: &Item, out: &mut Vec<u8>) {
    let name = item.name.as_str();
    out.reserve(150 + name.len());
    let mut numbers = itoa::Buffer::new();
    let mut uuid = Uuid::encode_buffer();
    let mut time = [0u8; RFC3339_MICROS_LEN];
    out.extend_from_slice(b"{\"id\":\"");
    out.extend_from_slice(item.id.hyphenated().encode_lower(&mut uuid).as_bytes());
    out.extend_from_slice(b"\",\"name\":");
    serde_json::to_writer(&mut *out, name).expect("writing to a Vec cannot fail");
    out.extend_from_slice(b",\"qty\":");
    out.extend_from_slice(numbers.format(item.qty.get()).as_bytes());
    out.extend_from_slice(b",\"version\":");
    out.extend_from_slice(numbers.format(item.version).as_bytes());
    out.extend_from_slice(b",\"created_at\":\"");
    out.extend_from_slice(rfc3339_micros(item.created_at, &mut time).as_bytes());
    out.extend_from_slice(b"\",\"updated_at\":\"");
    out.extend_from_slice(rfc3339_micros(item.updated_at, &mut time).as_bytes());
    out.extend_from_slice(b"\"}");
}

/// `"<version>"`, written without a format string.
fn etag(version: u64) -> HeaderValue {
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(version).as_bytes();
    let mut quoted = [b'"'; 22];
    quoted[1..=digits.len()].copy_from_slice(digits);
    HeaderValue::from_bytes(&quoted[..digits.len() + 2]).expect("digits and quotes")
}

fn outcome_response(outcome: &Outcome) -> Response {
    match outcome {
        Outcome::Created(item) => item_response(StatusCode::CREATED, item, true),
        Outcome::Updated(item) => item_response(StatusCode::OK, item, false),
        Outcome::Deleted => StatusCode::NO_CONTENT.into_response(),
        Outcome::Transacted(items) => {
            let body =
                serde_json::json!({"items": items.iter().map(ItemJson::from).collect::<Vec<_>>()});
            axum::Json(body).into_response()
        }
    }
}

fn bad_param(code: &'static str, detail: String) -> ApiError {
    ApiError::BadParameter { code, detail }
}

/// Cursors are opaque: base64url of the last id of the previous page.
fn encode_cursor(id: Uuid) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id.as_bytes())
}

fn decode_cursor(raw: &str) -> Result<Uuid, ApiError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(raw)
        .ok()
        .and_then(|b| Uuid::from_slice(&b).ok())
        .ok_or_else(|| {
            bad_param(
                "invalid_cursor",
                "cursor is not one this server issued".into(),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::UNIX_EPOCH;

    fn humantime_text(micros: i64) -> String {
        let t = UNIX_EPOCH + Duration::from_micros(micros.max(0) as u64);
        humantime::format_rfc3339_micros(t).to_string()
    }

    #[test]
    fn rfc3339_edges_match_humantime() {
        let mut buf = [0u8; RFC3339_MICROS_LEN];
        for micros in [
            0,
            1,
            999_999,
            1_000_000,
            86_399_999_999,
            86_400_000_000,
            951_782_400_000_000,   // 2000-02-29
            1_709_164_800_123_456, // 2024-02-29
            4_107_542_399_999_999, // 2100-02-28T23:59:59.999999
            4_107_542_400_000_000, // 2100-03-01 (no leap day in 2100)
            253_402_300_799_999_999,
        ] {
            assert_eq!(
                rfc3339_micros(micros, &mut buf),
                humantime_text(micros),
                "{micros}"
            );
        }
        assert_eq!(rfc3339_micros(-5, &mut buf), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339_micros(i64::MAX, &mut buf),
            "9999-12-31T23:59:59.999999Z"
        );
    }

    proptest! {
        #[test]
        fn rfc3339_matches_humantime(micros in 0i64..253_402_300_800_000_000) {
            let mut buf = [0u8; RFC3339_MICROS_LEN];
            prop_assert_eq!(rfc3339_micros(micros, &mut buf), humantime_text(micros));
        }

        #[test]
        fn item_json_is_what_serde_makes(
            name in "\\PC{1,40}|[a-z\"\\\\/\u{e9}\u{1F600} ]{1,20}",
            qty in 0u64..=9_007_199_254_740_991,
            version in 1u64..,
            created in 0i64..253_402_300_800_000_000,
            updated in 0i64..253_402_300_800_000_000,
            id in any::<u128>(),
        ) {
            let Ok(name) = crate::domain::ItemName::new(&name) else { return Ok(()) };
            let item = Item {
                id: Uuid::from_u128(id),
                name,
                qty: crate::domain::Qty::new(qty as i64).unwrap(),
                version,
                created_at: created,
                updated_at: updated,
            };
            let mut ours = Vec::new();
            write_item_json(&item, &mut ours);
            prop_assert_eq!(
                String::from_utf8(ours).unwrap(),
                serde_json::to_string(&ItemJson::from(&item)).unwrap()
            );
        }

        #[test]
        fn etag_is_the_quoted_version(version in any::<u64>()) {
            let value = etag(version);
            prop_assert_eq!(value.to_str().unwrap(), format!("\"{version}\""));
        }
    }
}
