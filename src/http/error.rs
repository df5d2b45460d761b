//! `ApiError`: the one place where outcomes become error responses.
//!
//! Every error is an RFC 9457 problem document (`application/problem+json`)
//! with a stable snake_case `error` code. Internal errors become an opaque
//! 500; nothing here logs (the per-request layer in `front.rs` logs a 500
//! at ERROR and every other response at DEBUG).

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::actor::CallError;
use crate::auth::AuthError;
use crate::domain::Rejection;

pub const PROBLEM_JSON: &str = "application/problem+json";
/// Retry-After for 503s: the mailbox drains in well under a second.
const RETRY_AFTER_SECS: u64 = 1;
/// On a 421: `<node id> <ip:port>` of the node that holds the owner.
pub const OWNER_NODE_HEADER: &str = "countiq-owner-node";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// 400 `invalid_body`: malformed JSON, wrong shape or out-of-range value.
    InvalidBody(String),
    /// 400 `invalid_query` / `invalid_limit` / `invalid_cursor` / `invalid_idempotency_key`.
    BadParameter {
        code: &'static str,
        detail: String,
    },
    /// 401 `unauthorized`, with the reason in `WWW-Authenticate`.
    Unauthorized(AuthError),
    /// 404 (unknown route, or an item that does not exist for this owner).
    NotFound,
    MethodNotAllowed,
    UnsupportedMediaType,
    PayloadTooLarge,
    RequestTimeout,
    Rejected(Rejection),
    KeyReused,
    KeysExhausted {
        retry_after: Duration,
    },
    Overloaded,
    /// 429 `too_many_subscribers`: the owner's change-feed bound.
    TooManySubscribers,
    /// 503 `feed_overloaded`: the node's change-feed bound.
    FeedOverloaded,
    NotReady,
    /// 503 `not_ready` from `/readyz`, saying why (a JWKS never loaded).
    NotReadyBecause(String),
    /// The log failed; the outcome of this request is unknown.
    Unavailable,
    /// 421 `misdirected_owner`: another node of the cluster holds this
    /// owner; nothing was applied or stored here.
    Misdirected(crate::cluster::Misdirected),
    Internal,
}

/// An RFC 9457 problem document with a stable machine `error` code.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Problem<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    title: &'a str,
    status: u16,
    detail: String,
    error: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    op_index: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    current_version: Option<u64>,
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, String) {
        use ApiError::*;
        match self {
            InvalidBody(d) => (StatusCode::BAD_REQUEST, "invalid_body", d.clone()),
            BadParameter { code, detail } => (StatusCode::BAD_REQUEST, code, detail.clone()),
            Unauthorized(e) => (StatusCode::UNAUTHORIZED, "unauthorized", format!("a valid bearer token is required: {e}")),
            NotFound => (StatusCode::NOT_FOUND, "not_found", "no such resource".into()),
            MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "see the Allow header".into()),
            UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the body must be application/json".into(),
            ),
            PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the body must be at most {} bytes", super::BODY_BYTES_MAX),
            ),
            RequestTimeout => (StatusCode::REQUEST_TIMEOUT, "request_timeout", "the request body did not arrive in time".into()),
            Rejected(r) => rejection_parts(r),
            KeyReused => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this Idempotency-Key was used for a different request".into(),
            ),
            KeysExhausted { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "idempotency_keys_exhausted",
                format!(
                    "this owner holds {} unexpired idempotency keys; retry later or send without a key",
                    crate::domain::idempotency::KEYS_PER_OWNER_MAX
                ),
            ),
            Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "overloaded", "the owner's queue is full; retry shortly".into()),
            TooManySubscribers => (
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_subscribers",
                format!(
                    "this owner has {} open event streams; close one first",
                    crate::actor::feed::SUBSCRIBERS_PER_OWNER_MAX
                ),
            ),
            FeedOverloaded => (
                StatusCode::SERVICE_UNAVAILABLE,
                "feed_overloaded",
                format!(
                    "the node serves {} event streams; retry shortly",
                    crate::actor::feed::SUBSCRIBERS_PER_NODE_MAX
                ),
            ),
            NotReady => (StatusCode::SERVICE_UNAVAILABLE, "not_ready", "the node is not ready".into()),
            NotReadyBecause(why) => (StatusCode::SERVICE_UNAVAILABLE, "not_ready", why.clone()),
            Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the node cannot make writes durable; the outcome of this request is unknown".into(),
            ),
            Misdirected(m) => (
                StatusCode::MISDIRECTED_REQUEST,
                "misdirected_owner",
                format!("this owner is held by node {}; send it there (header {OWNER_NODE_HEADER})", m.node_id),
            ),
            Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error".into()),
        }
    }
}

fn rejection_parts(r: &Rejection) -> (StatusCode, &'static str, String) {
    let detail = r.to_string();
    match r {
        Rejection::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found", detail),
        Rejection::NameTaken => (StatusCode::CONFLICT, "name_taken", detail),
        Rejection::QtyBelowZero { .. } => (StatusCode::BAD_REQUEST, "qty_below_zero", detail),
        Rejection::QtyOverflow { .. } => (StatusCode::BAD_REQUEST, "qty_overflow", detail),
        Rejection::VersionMismatch { .. } => {
            (StatusCode::PRECONDITION_FAILED, "version_mismatch", detail)
        }
        Rejection::ItemLimit => (StatusCode::CONFLICT, "item_limit_reached", detail),
        Rejection::InsufficientAvailable { .. } => {
            (StatusCode::CONFLICT, "insufficient_available", detail)
        }
        Rejection::HoldLimit { .. } => (StatusCode::CONFLICT, "reservation_limit_reached", detail),
        Rejection::HoldNotFound { .. } => (StatusCode::NOT_FOUND, "reservation_not_found", detail),
        Rejection::NoteConflict { .. } => (StatusCode::BAD_REQUEST, "conflicting_notes", detail),
    }
}

impl From<CallError> for ApiError {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Overloaded => ApiError::Overloaded,
            CallError::Unavailable => ApiError::Unavailable,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, detail) = self.parts();
        let (op_index, current_version) = match &self {
            ApiError::Rejected(
                Rejection::NotFound { op_index }
                | Rejection::QtyBelowZero { op_index }
                | Rejection::QtyOverflow { op_index }
                | Rejection::InsufficientAvailable { op_index, .. }
                | Rejection::HoldLimit { op_index }
                | Rejection::HoldNotFound { op_index }
                | Rejection::NoteConflict { op_index },
            ) => (*op_index, None),
            ApiError::Rejected(Rejection::VersionMismatch { current }) => (None, Some(*current)),
            _ => (None, None),
        };
        let problem = Problem {
            kind: "about:blank",
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail,
            error: code,
            op_index,
            current_version,
        };
        let body = serde_json::to_vec(&problem).expect("a problem document always serializes");
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        let retry_after = match &self {
            ApiError::Overloaded
            | ApiError::NotReady
            | ApiError::NotReadyBecause(_)
            | ApiError::Unavailable
            | ApiError::TooManySubscribers
            | ApiError::FeedOverloaded => Some(RETRY_AFTER_SECS),
            ApiError::KeysExhausted { retry_after } => Some(retry_after.as_secs().max(1)),
            _ => None,
        };
        if let Some(secs) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let ApiError::Unauthorized(e) = &self {
            let challenge = HeaderValue::from_str(&e.www_authenticate())
                .expect("auth error texts are header-safe");
            headers.insert(header::WWW_AUTHENTICATE, challenge);
        }
        if self == ApiError::PayloadTooLarge {
            // The oversized body is not read, so the connection cannot carry
            // another request: say so, or a client may reuse it and fail.
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let ApiError::Misdirected(m) = &self {
            // The answer depends on the cluster file, not on the resource:
            // no cache may keep it past a membership change.
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            if let Ok(v) = HeaderValue::from_str(&format!("{} {}", m.node_id, m.addr)) {
                headers.insert(OWNER_NODE_HEADER, v);
            }
        }
        response
    }
}

impl From<crate::cluster::Misdirected> for ApiError {
    fn from(m: crate::cluster::Misdirected) -> Self {
        ApiError::Misdirected(m)
    }
}
