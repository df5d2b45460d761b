//! Reservations (holds) and per-item history: `POST
//! /items/{id}/reservations`, `POST /reservations/{id}/commit`, `DELETE
//! /reservations/{id}`, `GET /items/{id}/history`. Parse strictly, build a
//! `Command`, ask the owner; the rules are the domain's.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::bodies::{CommitBody, ReserveBody};
use super::extract::{
    idempotency, item_id, JsonBody, OptionalJsonBody, Owner, PageQuery, RawId, WriteHeaders,
};
use super::items::{bad_param, note, write};
use super::json::{set_lsn, HistoryJson};
use super::{openapi, routes, ApiError, AppState};
use crate::actor::HistoryPage;
use crate::domain::{Command, HoldTerms};

#[utoipa::path(
    post,
    path = "/items/{id}/reservations",
    tag = "reservations",
    summary = "Hold qty units of an item for ttl seconds",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Item id (UUID)"), openapi::KeyHeader),
    request_body(content = ReserveBody, content_type = "application/json"),
    responses(
        (status = 201, description = "Reserved; the item's reserved grew by qty", body = super::json::ReservationJson, headers(("CountIQ-LSN" = u64, description = "the log position this response reflects"), ("Idempotent-Replayed" = Option<String>, description = "true on a replayed response"), ("Location" = String, description = "/reservations/<id>"))),
        (status = 404, response = openapi::NotFound),
        (status = 409, response = openapi::HoldConflict),
        openapi::BodyWriteErrors
    )
)]
pub(super) async fn reserve(
    State(s): State<AppState>,
    Owner(owner): Owner,
    RawId(id): RawId,
    WriteHeaders(headers): WriteHeaders,
    JsonBody(body): JsonBody<ReserveBody>,
) -> Result<Response, ApiError> {
    let id = item_id(&id)?;
    let key = idempotency(
        &headers,
        "POST",
        routes::ITEM_RESERVATIONS,
        Some(id),
        Some(&body),
    )?;
    let terms = HoldTerms::new(body.qty, body.ttl)
        .map_err(|e| ApiError::InvalidBody(format!("{}: {e}", e.field())))?;
    write(&s, &owner, Command::Reserve { item: id, terms }, key).await
}

#[utoipa::path(
    post,
    path = "/reservations/{id}/commit",
    tag = "reservations",
    summary = "Turn a hold into a decrease (qty and reserved fall by its qty)",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Reservation id (UUID)"), openapi::KeyHeader),
    request_body(content = Option<CommitBody>, content_type = "application/json", description = "Optional: the decrease's reason and reference. No body and `{}` are the same request."),
    responses(
        (status = 200, description = "Committed; the item after it", body = super::json::ItemJson, headers(("ETag" = String, description = "\"<version>\""), ("CountIQ-LSN" = u64, description = "the log position this response reflects"), ("Idempotent-Replayed" = Option<String>, description = "true on a replayed response"))),
        (status = 404, response = openapi::NotFound),
        openapi::BodyWriteErrors
    )
)]
pub(super) async fn commit(
    State(s): State<AppState>,
    Owner(owner): Owner,
    RawId(id): RawId,
    WriteHeaders(headers): WriteHeaders,
    OptionalJsonBody(body): OptionalJsonBody<CommitBody>,
) -> Result<Response, ApiError> {
    let hold = hold_id(&id)?;
    let body = body.unwrap_or_default();
    let fingerprinted = (!body.is_empty()).then_some(&body);
    let key = idempotency(
        &headers,
        "POST",
        routes::RESERVATION_COMMIT,
        Some(hold),
        fingerprinted,
    )?;
    let note = note("", &body.reason, &body.reference)?;
    write(&s, &owner, Command::CommitHold { hold, note }, key).await
}

#[utoipa::path(
    delete,
    path = "/reservations/{id}",
    tag = "reservations",
    summary = "Release a hold (idempotent)",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Reservation id (UUID)"), openapi::KeyHeader),
    responses(
        (status = 204, description = "Released, or already gone (committed, released or expired)", headers(("Idempotent-Replayed" = Option<String>, description = "true on a replayed response"), ("CountIQ-LSN" = u64, description = "the log position this response reflects"))),
        (status = 400, response = openapi::BadRequest),
        (status = 401, response = openapi::Unauthorized),
        (status = 422, response = openapi::KeyReused),
        (status = 429, response = openapi::KeysExhausted),
        (status = 503, response = openapi::Unavailable)
    )
)]
pub(super) async fn release(
    State(s): State<AppState>,
    Owner(owner): Owner,
    RawId(id): RawId,
    WriteHeaders(headers): WriteHeaders,
) -> Result<Response, ApiError> {
    // As for DELETE /items/{id}: a malformed id names no hold, a no-op.
    let Ok(hold) = hold_id(&id) else {
        idempotency::<()>(&headers, "DELETE", routes::RESERVATION, None, None)?;
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let key = idempotency::<()>(&headers, "DELETE", routes::RESERVATION, Some(hold), None)?;
    write(&s, &owner, Command::ReleaseHold { hold }, key).await
}

#[utoipa::path(
    get,
    path = "/items/{id}/history",
    tag = "reservations",
    summary = "An item's transitions, newest first (the last HISTORY_PER_ITEM_MAX = 32)",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "Item id (UUID)"), ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size, default 100"), ("cursor" = Option<String>, Query, description = "next_cursor of the previous page")),
    responses(
        (status = 200, description = "One page, newest first", body = openapi::HistoryDoc, headers(("CountIQ-LSN" = u64, description = "the log position this response reflects"))),
        (status = 400, response = openapi::BadRequest),
        (status = 401, response = openapi::Unauthorized),
        (status = 404, response = openapi::NotFound),
        (status = 503, response = openapi::Unavailable)
    )
)]
pub(super) async fn history(
    State(s): State<AppState>,
    Owner(owner): Owner,
    RawId(id): RawId,
    PageQuery { limit, cursor }: PageQuery,
) -> Result<Response, ApiError> {
    let id = item_id(&id)?;
    let before = cursor.as_deref().map(history_cursor).transpose()?;
    let read = s.registry()?.history(&owner, id, before, limit).await?;
    let HistoryPage { entries, more } = read.value.ok_or(ApiError::NotFound)?;
    let next_cursor = more
        .then(|| entries.last().map(|e| e.version.to_string()))
        .flatten();
    let body = serde_json::json!({
        "entries": entries.iter().map(HistoryJson::from).collect::<Vec<_>>(),
        "next_cursor": next_cursor,
    });
    let mut response = axum::Json(body).into_response();
    set_lsn(&mut response, read.lsn);
    Ok(response)
}

/// A reservation id from the path: anything but a UUID names no hold (404
/// `reservation_not_found`).
fn hold_id(raw: &str) -> Result<uuid::Uuid, ApiError> {
    uuid::Uuid::try_parse(raw)
        .map_err(|_| ApiError::Rejected(crate::domain::Rejection::HoldNotFound { op_index: None }))
}

/// A history cursor: the version of the last entry of the previous page
/// (entries below it follow).
fn history_cursor(raw: &str) -> Result<u64, ApiError> {
    raw.parse::<u64>()
        .ok()
        .filter(|v| *v >= 1 && raw.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| {
            bad_param(
                "invalid_cursor",
                "cursor is not one this server issued".into(),
            )
        })
}
