//! The `/items` and `/transactions` handlers: authenticate, parse
//! strictly, build a domain `Command`, ask the owner through the registry,
//! render the answer. No business rules here.

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::bodies::{AdjustBody, CreateBody, Obj, ReplaceBody, TxBody, TxOpBody};
use super::extract::{
    idempotency, if_match, item_id, JsonBody, Owner, PageQuery, RawId, WriteHeaders,
};
use super::json::{item_response, outcome_response, set_lsn, ItemJson};
use super::{cursor, openapi, routes, ApiError, AppState};
use crate::actor::{Page, Written};
use crate::domain::idempotency::{Fingerprint, IdemKey};
use crate::domain::{
    Command, Delta, HoldTerms, ItemName, Note, OwnerId, Qty, Reason, Reference, TxOp, TX_OPS_MAX,
};

#[utoipa::path(
    get,
    path = "/items/{id}",
    tag = "items",
    summary = "Read one item",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Item id (UUID)")),
    responses(
        (status = 200, description = "The item", body = ItemJson, headers(("ETag" = String, description = "\"<version>\""), ("CountIQ-LSN" = u64, description = "the log position this response reflects"))),
        (status = 401, response = openapi::Unauthorized),
        (status = 404, response = openapi::NotFound),
        (status = 503, response = openapi::Unavailable)
    )
)]
pub(super) async fn get_item(
    State(s): State<AppState>,
    Owner(owner): Owner,
    RawId(id): RawId,
) -> Result<Response, ApiError> {
    let id = item_id(&id)?;
    let read = s.registry()?.get(&owner, id).await?;
    let item = read.value.ok_or(ApiError::NotFound)?;
    let mut response = item_response(StatusCode::OK, &item, false);
    set_lsn(&mut response, read.lsn);
    Ok(response)
}

#[utoipa::path(
    get,
    path = "/items",
    tag = "items",
    summary = "List items in a stable order",
    security(("bearer" = [])),
    params(("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size, default 100"), ("cursor" = Option<String>, Query, description = "next_cursor of the previous page")),
    responses(
        (status = 200, description = "One page", body = openapi::ItemPage, headers(("CountIQ-LSN" = u64, description = "the log position this response reflects"))),
        (status = 400, response = openapi::BadRequest),
        (status = 401, response = openapi::Unauthorized),
        (status = 503, response = openapi::Unavailable)
    )
)]
pub(super) async fn list_items(
    State(s): State<AppState>,
    Owner(owner): Owner,
    PageQuery { limit, cursor }: PageQuery,
) -> Result<Response, ApiError> {
    let after = cursor.as_deref().map(cursor::decode).transpose()?;
    let read = s.registry()?.list(&owner, after, limit).await?;
    let Page { items, more } = read.value;
    let next_cursor = more
        .then(|| items.last().map(|i| cursor::encode(i.id)))
        .flatten();
    let body = serde_json::json!({
        "items": items.iter().map(ItemJson::from).collect::<Vec<_>>(),
        "next_cursor": next_cursor,
    });
    let mut response = axum::Json(body).into_response();
    set_lsn(&mut response, read.lsn);
    Ok(response)
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
        (status = 201, description = "Created", body = ItemJson, headers(("ETag" = String, description = "\"<version>\""), ("CountIQ-LSN" = u64, description = "the log position this response reflects"), ("Idempotent-Replayed" = Option<String>, description = "true on a replayed response"), ("Location" = String, description = "/items/<id>"))),
        (status = 409, response = openapi::Conflict),
        openapi::BodyWriteErrors
    )
)]
pub(super) async fn create_item(
    State(s): State<AppState>,
    Owner(owner): Owner,
    WriteHeaders(headers): WriteHeaders,
    JsonBody(body): JsonBody<CreateBody>,
) -> Result<Response, ApiError> {
    let key = idempotency(&headers, "POST", routes::ITEMS, None, Some(&body))?;
    let cmd = Command::Create {
        name: ItemName::new(&body.name).map_err(invalid("name"))?,
        qty: Qty::new(body.qty).map_err(invalid("qty"))?,
        note: note("", &body.reason, &body.reference)?,
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
        (status = 200, description = "Replaced", body = ItemJson, headers(("ETag" = String, description = "\"<version>\""), ("CountIQ-LSN" = u64, description = "the log position this response reflects"), ("Idempotent-Replayed" = Option<String>, description = "true on a replayed response"))),
        (status = 404, response = openapi::NotFound),
        (status = 409, response = openapi::Conflict),
        (status = 412, response = openapi::PreconditionFailed),
        openapi::BodyWriteErrors
    )
)]
pub(super) async fn replace_item(
    State(s): State<AppState>,
    Owner(owner): Owner,
    RawId(id): RawId,
    WriteHeaders(headers): WriteHeaders,
    JsonBody(body): JsonBody<ReplaceBody>,
) -> Result<Response, ApiError> {
    let id = item_id(&id)?;
    let key = idempotency(&headers, "PUT", routes::ITEM, Some(id), Some(&body))?;
    let cmd = Command::Replace {
        id,
        name: ItemName::new(&body.name).map_err(invalid("name"))?,
        qty: Qty::new(body.qty).map_err(invalid("qty"))?,
        if_match: if_match(&headers),
        note: note("", &body.reason, &body.reference)?,
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
        (status = 200, description = "Applied", body = ItemJson, headers(("ETag" = String, description = "\"<version>\""), ("CountIQ-LSN" = u64, description = "the log position this response reflects"), ("Idempotent-Replayed" = Option<String>, description = "true on a replayed response"))),
        (status = 404, response = openapi::NotFound),
        (status = 409, response = openapi::Conflict),
        (status = 412, response = openapi::PreconditionFailed),
        openapi::BodyWriteErrors
    )
)]
pub(super) async fn adjust_qty(
    State(s): State<AppState>,
    Owner(owner): Owner,
    RawId(id): RawId,
    WriteHeaders(headers): WriteHeaders,
    JsonBody(body): JsonBody<AdjustBody>,
) -> Result<Response, ApiError> {
    let id = item_id(&id)?;
    let key = idempotency(&headers, "PATCH", routes::ITEM_QTY, Some(id), Some(&body))?;
    let cmd = Command::Adjust {
        id,
        delta: Delta::new(body.delta).map_err(invalid("delta"))?,
        if_match: if_match(&headers),
        note: note("", &body.reason, &body.reference)?,
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
        (status = 204, description = "Deleted, or already gone", headers(("Idempotent-Replayed" = Option<String>, description = "true on a replayed response"), ("CountIQ-LSN" = u64, description = "the log position this response reflects"))),
        (status = 400, response = openapi::BadRequest),
        (status = 401, response = openapi::Unauthorized),
        (status = 422, response = openapi::KeyReused),
        (status = 429, response = openapi::KeysExhausted),
        (status = 503, response = openapi::Unavailable)
    )
)]
pub(super) async fn delete_item(
    State(s): State<AppState>,
    Owner(owner): Owner,
    RawId(id): RawId,
    WriteHeaders(headers): WriteHeaders,
) -> Result<Response, ApiError> {
    // A malformed id names no item: deleting it is the same no-op as
    // deleting a missing one (204), but there is nothing to record.
    let Ok(id) = item_id(&id) else {
        idempotency::<()>(&headers, "DELETE", routes::ITEM, None, None)?;
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let key = idempotency::<()>(&headers, "DELETE", routes::ITEM, Some(id), None)?;
    write(&s, &owner, Command::Delete { id }, key).await
}

#[utoipa::path(
    post,
    path = "/transactions",
    tag = "items",
    summary = "Apply 1-1000 ops (deltas, reserve, commit, release) atomically",
    security(("bearer" = [])),
    params(openapi::KeyHeader),
    request_body(content = TxBody, content_type = "application/json"),
    responses(
        (status = 200, description = "All ops applied", body = openapi::TxResult, headers(("Idempotent-Replayed" = Option<String>, description = "true on a replayed response"), ("CountIQ-LSN" = u64, description = "the log position this response reflects"))),
        (status = 404, response = openapi::NotFound),
        (status = 409, response = openapi::HoldConflict),
        openapi::BodyWriteErrors
    )
)]
pub(super) async fn transact(
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
    let key = idempotency(&headers, "POST", routes::TRANSACTIONS, None, Some(&body))?;
    let ops = body
        .ops
        .iter()
        .enumerate()
        .map(|(i, Obj(op))| tx_op(i, op))
        .collect::<Result<Vec<_>, ApiError>>()?;
    write(&s, &owner, Command::Transact { ops }, key).await
}

/// Send a write to the owner and render its answer.
pub(super) async fn write(
    s: &AppState,
    owner: &OwnerId,
    cmd: Command,
    key: Option<(IdemKey, Fingerprint)>,
) -> Result<Response, ApiError> {
    match s.registry()?.write(owner, cmd, key).await? {
        Written::Done {
            result,
            replayed,
            lsn,
        } => {
            let mut response = match result {
                Ok(outcome) => outcome_response(&outcome),
                Err(rejection) => ApiError::Rejected(rejection).into_response(),
            };
            if replayed {
                response
                    .headers_mut()
                    .insert("idempotent-replayed", HeaderValue::from_static("true"));
            }
            if let Some(lsn) = lsn {
                set_lsn(&mut response, lsn);
            }
            Ok(response)
        }
        Written::KeyReused => Err(ApiError::KeyReused),
        Written::KeysExhausted { retry_after } => Err(ApiError::KeysExhausted { retry_after }),
    }
}

/// One parsed op as a domain `TxOp`; errors name the op (`ops[2].qty: …`).
fn tx_op(i: usize, op: &TxOpBody) -> Result<TxOp, ApiError> {
    let bad = |field: &str, e: String| ApiError::InvalidBody(format!("ops[{i}].{field}: {e}"));
    Ok(match op {
        TxOpBody::Adjust(op) => TxOp::Adjust {
            item: op.item,
            delta: Delta::new(op.delta).map_err(|e| bad("delta", e.to_string()))?,
            note: note(&format!("ops[{i}]."), &op.reason, &op.reference)?,
        },
        TxOpBody::Reserve { reserve: Obj(r) } => {
            let terms = HoldTerms::new(r.qty, r.ttl)
                .map_err(|e| bad(&format!("reserve.{}", e.field()), e.to_string()))?;
            TxOp::Reserve {
                item: r.item,
                terms,
            }
        }
        TxOpBody::Commit { commit: Obj(c) } => TxOp::Commit {
            hold: c.reservation,
            note: note(&format!("ops[{i}].commit."), &c.reason, &c.reference)?,
        },
        TxOpBody::Release { release: Obj(r) } => TxOp::Release {
            hold: r.reservation,
        },
    })
}

/// A write's optional `reason` and `reference` as a domain `Note`; a bad
/// one is 400 `invalid_body` naming the field (`prefix` locates it inside
/// the body, e.g. `ops[2].`).
pub(super) fn note(
    prefix: &str,
    reason: &Option<String>,
    reference: &Option<String>,
) -> Result<Note, ApiError> {
    let field = |name: &str| ApiError::InvalidBody(format!("{prefix}{name}"));
    let reason = reason
        .as_deref()
        .map(Reason::new)
        .transpose()
        .map_err(|e| field(&format!("reason: {e}")))?;
    let reference = reference
        .as_deref()
        .map(Reference::new)
        .transpose()
        .map_err(|e| field(&format!("reference: {e}")))?;
    Ok(Note::new(reason, reference))
}

pub(super) fn invalid<E: std::fmt::Display>(field: &str) -> impl FnOnce(E) -> ApiError + '_ {
    move |e| ApiError::InvalidBody(format!("{field}: {e}"))
}

pub(super) fn bad_param(code: &'static str, detail: String) -> ApiError {
    ApiError::BadParameter { code, detail }
}
