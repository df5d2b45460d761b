//! Request parsing: strict JSON bodies, the authenticated owner, `If-Match`,
//! `Idempotency-Key`. Transport rules only; no business rules.

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::bodies::Obj;
use super::error::ApiError;
use super::{AppState, BODY_BYTES_MAX, BODY_READ_TIMEOUT, LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX};
use crate::auth::AuthError;
use crate::domain::idempotency::{Fingerprint, IdemKey};
use crate::domain::{OwnerId, Precondition};

/// A JSON body parsed strictly: `Content-Type` must be JSON (415), the body
/// at most `BODY_BYTES_MAX` (413) and complete within `BODY_READ_TIMEOUT`
/// (408), and the shape exact (400 `invalid_body`): a JSON object (see
/// `bodies` for what else is refused).
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let (parts, body) = req.into_parts();
        if !is_json(&parts.headers) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > BODY_BYTES_MAX as u64) {
            return Err(ApiError::PayloadTooLarge);
        }
        // Lazy: the timer is only registered if the body is not all there
        // at the first poll, which for a small body it nearly always is.
        let bytes = tokio::time::timeout(BODY_READ_TIMEOUT, read_limited(body))
            .await
            .map_err(|_elapsed| ApiError::RequestTimeout)??;
        serde_json::from_slice::<Obj<T>>(&bytes)
            .map(|Obj(body)| JsonBody(body))
            .map_err(|e| ApiError::InvalidBody(e.to_string()))
    }
}

/// An optional JSON body (`POST /reservations/{id}/commit`): an empty body
/// is `None` whatever its `Content-Type`; otherwise the rules of
/// [`JsonBody`] (415, 413, 408, 400 `invalid_body`).
pub struct OptionalJsonBody<T>(pub Option<T>);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for OptionalJsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let (parts, body) = req.into_parts();
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > BODY_BYTES_MAX as u64) {
            return Err(ApiError::PayloadTooLarge);
        }
        let bytes = tokio::time::timeout(BODY_READ_TIMEOUT, read_limited(body))
            .await
            .map_err(|_elapsed| ApiError::RequestTimeout)??;
        if bytes.is_empty() {
            return Ok(OptionalJsonBody(None));
        }
        if !is_json(&parts.headers) {
            return Err(ApiError::UnsupportedMediaType);
        }
        serde_json::from_slice::<Obj<T>>(&bytes)
            .map(|Obj(body)| OptionalJsonBody(Some(body)))
            .map_err(|e| ApiError::InvalidBody(e.to_string()))
    }
}

/// The whole body, at most `BODY_BYTES_MAX` bytes (413 beyond). A small
/// body nearly always arrives as one data frame: that frame's bytes
/// are returned as they are, without copying them into a collection.
async fn read_limited(body: Body) -> Result<bytes::Bytes, ApiError> {
    let read_error = |e: axum::BoxError| {
        if e.downcast_ref::<LengthLimitError>().is_some() {
            ApiError::PayloadTooLarge
        } else {
            ApiError::InvalidBody("the body could not be read".into())
        }
    };
    let mut body = Limited::new(body, BODY_BYTES_MAX);
    let mut first: Option<bytes::Bytes> = None;
    let mut joined: Option<bytes::BytesMut> = None;
    while let Some(frame) = body.frame().await {
        // Trailers carry no body bytes; they are ignored.
        let Ok(data) = frame.map_err(read_error)?.into_data() else {
            continue;
        };
        match (&mut joined, first.take()) {
            (Some(all), _) => all.extend_from_slice(&data),
            (None, None) => first = Some(data),
            (None, Some(earlier)) => {
                let mut all = bytes::BytesMut::with_capacity(earlier.len() + data.len());
                all.extend_from_slice(&earlier);
                all.extend_from_slice(&data);
                joined = Some(all);
            }
        }
    }
    Ok(match joined {
        Some(all) => all.freeze(),
        None => first.unwrap_or_default(),
    })
}

/// `application/json`, `application/<x>+json`, with any parameters.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    // Compared without case and without allocating: this runs per write.
    let essence = value.split(';').next().unwrap_or("").trim().as_bytes();
    let starts = |prefix: &[u8]| {
        essence.len() >= prefix.len() && essence[..prefix.len()].eq_ignore_ascii_case(prefix)
    };
    let ends = |suffix: &[u8]| {
        essence.len() >= suffix.len()
            && essence[essence.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
    };
    essence.eq_ignore_ascii_case(b"application/json") || (starts(b"application/") && ends(b"+json"))
}

/// The owner named by a valid bearer token. Checks readiness first: a node
/// that has not finished recovery (or whose log failed) answers 503.
pub struct Owner(pub OwnerId);

impl FromRequestParts<AppState> for Owner {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if !state.is_serving() {
            return Err(ApiError::NotReady);
        }
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let owner = state.auth().verify_header(value).map_err(|e| match e {
            AuthError::KeysNotLoaded => ApiError::NotReady,
            e => ApiError::Unauthorized(e),
        })?;
        tracing::Span::current().record("owner", owner.as_str());
        // After authentication, before the body, the key or the actor: a
        // misdirected request applies and stores nothing (421).
        state.check_owner(&owner)?;
        Ok(Owner(owner))
    }
}

/// `?limit=&cursor=` of a paged route: `limit` 1 to `LIST_LIMIT_MAX`
/// (default `LIST_LIMIT_DEFAULT`; 400 `invalid_limit` otherwise), the
/// cursor as text (each route decodes its own), anything else in the query
/// 400 `invalid_query`.
pub struct PageQuery {
    pub limit: usize,
    pub cursor: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for PageQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        /// As text, so that a bad limit gets its own code.
        #[derive(serde::Deserialize)]
        struct Raw {
            limit: Option<String>,
            cursor: Option<String>,
        }
        let Query(raw) = Query::<Raw>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::BadParameter {
                code: "invalid_query",
                detail: e.body_text(),
            })?;
        let limit = match raw.limit.as_deref() {
            None => LIST_LIMIT_DEFAULT,
            Some(text) => text
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=LIST_LIMIT_MAX).contains(n))
                .ok_or_else(|| ApiError::BadParameter {
                    code: "invalid_limit",
                    detail: format!("limit must be an integer from 1 to {LIST_LIMIT_MAX}"),
                })?,
        };
        Ok(PageQuery {
            limit,
            cursor: raw.cursor,
        })
    }
}

/// The raw `{id}` path segment. axum's `Path<String>` refuses a segment
/// that is not UTF-8 after percent-decoding (`/items/%FF`) with a plain 400;
/// such a segment names no item either, so it becomes the empty id, which
/// `item_id` turns into 404 (and `DELETE` into 204) like any malformed id.
pub struct RawId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for RawId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let id = axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(id)| id)
            .unwrap_or_default();
        Ok(RawId(id))
    }
}

/// An item id from the path. Anything that is not a UUID names no item: 404.
pub fn item_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::try_parse(raw).map_err(|_| ApiError::NotFound)
}

/// The request headers a write reads (`Idempotency-Key`, `If-Match`),
/// copied out of the request. axum's `HeaderMap` extractor clones every
/// header; a request without either header costs no allocation here.
pub struct WriteHeaders(pub HeaderMap);

impl<S: Send + Sync> FromRequestParts<S> for WriteHeaders {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let mut headers = HeaderMap::new();
        for name in [IDEMPOTENCY_KEY, header::IF_MATCH] {
            for value in parts.headers.get_all(&name) {
                headers.append(name.clone(), value.clone());
            }
        }
        Ok(WriteHeaders(headers))
    }
}

const IDEMPOTENCY_KEY: header::HeaderName = header::HeaderName::from_static("idempotency-key");

/// `If-Match`: absent → `None`; `*` → any version; otherwise the strong
/// entity tags `"<version>"` listed. Weak or unparseable tags never match
/// (If-Match uses strong comparison), so a stale or foreign tag gives 412.
pub fn if_match(headers: &HeaderMap) -> Option<Precondition> {
    let values: Vec<&str> = headers
        .get_all(header::IF_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    headers.get(header::IF_MATCH)?;
    let tags: Vec<&str> = values
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    if tags.contains(&"*") {
        return Some(Precondition::Any);
    }
    let versions = tags
        .iter()
        .filter_map(|t| t.strip_prefix('"')?.strip_suffix('"')?.parse::<u64>().ok())
        .collect();
    Some(Precondition::OneOf(versions))
}

/// `Idempotency-Key` with the request fingerprint, or `None` without a key.
/// The fingerprint is SHA-256 over method, route, item id and the canonical
/// body: the parsed body serialized again, so whitespace, key order and
/// number spelling of the raw bytes do not matter.
pub fn idempotency<B: Serialize>(
    headers: &HeaderMap,
    method: &str,
    route: &str,
    id: Option<Uuid>,
    body: Option<&B>,
) -> Result<Option<(IdemKey, Fingerprint)>, ApiError> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let bad = || ApiError::BadParameter {
        code: "invalid_idempotency_key",
        detail: "Idempotency-Key must be one value of 1-255 visible ASCII characters".into(),
    };
    if values.next().is_some() {
        return Err(bad());
    }
    let key = value
        .to_str()
        .ok()
        .and_then(IdemKey::parse)
        .ok_or_else(bad)?;
    let mut h = Sha256::new();
    for part in [
        method.as_bytes(),
        route.as_bytes(),
        id.map(|i| *i.as_bytes()).unwrap_or_default().as_slice(),
    ] {
        h.update((part.len() as u32).to_le_bytes());
        h.update(part);
    }
    if let Some(body) = body {
        h.update(serde_json::to_vec(body).expect("a parsed body serializes"));
    }
    Ok(Some((key, h.finalize().into())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn content_types() {
        assert!(is_json(&headers(&[("content-type", "application/json")])));
        assert!(is_json(&headers(&[(
            "content-type",
            "Application/JSON; charset=utf-8"
        )])));
        assert!(is_json(&headers(&[(
            "content-type",
            "application/merge-patch+json"
        )])));
        assert!(!is_json(&headers(&[("content-type", "text/plain")])));
        assert!(!is_json(&headers(&[("content-type", "application/jsonx")])));
        assert!(!is_json(&headers(&[])));
    }

    /// Only the two headers a write reads are copied, every value of each
    /// (two `Idempotency-Key`s must still be seen, to be refused).
    #[tokio::test]
    async fn write_headers_copy_exactly_key_and_if_match() {
        let req = axum::http::Request::builder()
            .header("authorization", "Bearer x")
            .header("idempotency-key", "a")
            .header("idempotency-key", "b")
            .header("if-match", "\"3\"")
            .header("content-type", "application/json")
            .body(())
            .unwrap();
        let (mut parts, ()) = req.into_parts();
        let WriteHeaders(h) = WriteHeaders::from_request_parts(&mut parts, &())
            .await
            .unwrap();
        assert_eq!(h.len(), 3);
        let keys: Vec<_> = h.get_all("idempotency-key").iter().collect();
        assert_eq!(keys, ["a", "b"]);
        assert_eq!(h["if-match"], "\"3\"");
        assert!(idempotency::<()>(&h, "DELETE", "/x", None, None).is_err());
    }

    #[test]
    fn if_match_forms() {
        assert_eq!(if_match(&headers(&[])), None);
        assert_eq!(
            if_match(&headers(&[("if-match", "*")])),
            Some(Precondition::Any)
        );
        assert_eq!(
            if_match(&headers(&[("if-match", "\"3\"")])),
            Some(Precondition::OneOf(vec![3]))
        );
        assert_eq!(
            if_match(&headers(&[
                ("if-match", "\"3\", W/\"4\""),
                ("if-match", "\"5\"")
            ])),
            Some(Precondition::OneOf(vec![3, 5]))
        );
        assert_eq!(
            if_match(&headers(&[("if-match", "3")])),
            Some(Precondition::OneOf(vec![]))
        );
    }

    #[test]
    fn fingerprints_separate_method_route_id_and_body() {
        let h = headers(&[("idempotency-key", "k")]);
        let id = Some(Uuid::from_u128(1));
        let fp = |m, r, id, b: &serde_json::Value| {
            idempotency(&h, m, r, id, Some(b)).unwrap().unwrap().1
        };
        let body = serde_json::json!({"delta": 1});
        let base = fp("PATCH", "/items/{id}/qty", id, &body);
        assert_eq!(base, fp("PATCH", "/items/{id}/qty", id, &body));
        assert_ne!(base, fp("PUT", "/items/{id}/qty", id, &body));
        assert_ne!(base, fp("PATCH", "/items/{id}", id, &body));
        assert_ne!(
            base,
            fp("PATCH", "/items/{id}/qty", Some(Uuid::from_u128(2)), &body)
        );
        assert_ne!(
            base,
            fp(
                "PATCH",
                "/items/{id}/qty",
                id,
                &serde_json::json!({"delta": 2})
            )
        );
        let none = headers(&[]);
        assert_eq!(
            idempotency(&none, "PATCH", "/x", None, Some(&body)).unwrap(),
            None
        );
        let two = headers(&[("idempotency-key", "a"), ("idempotency-key", "b")]);
        assert!(idempotency(&two, "PATCH", "/x", None, Some(&body)).is_err());
        let bad = headers(&[("idempotency-key", "a b")]);
        assert!(idempotency(&bad, "PATCH", "/x", None, Some(&body)).is_err());
    }

    /// A body delivered as the given data frames, one per poll; then the
    /// end, or, if `stall`, nothing ever again (a client that stops
    /// mid-body).
    struct Frames {
        chunks: std::collections::VecDeque<bytes::Bytes>,
        stall: bool,
    }

    impl axum::body::HttpBody for Frames {
        type Data = bytes::Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
            match self.chunks.pop_front() {
                Some(data) => std::task::Poll::Ready(Some(Ok(http_body::Frame::data(data)))),
                None if self.stall => std::task::Poll::Pending,
                None => std::task::Poll::Ready(None),
            }
        }
    }

    fn frames(chunks: &[&[u8]], stall: bool) -> Body {
        Body::new(Frames {
            chunks: chunks
                .iter()
                .map(|c| bytes::Bytes::copy_from_slice(c))
                .collect(),
            stall,
        })
    }

    fn body(chunks: &[&[u8]]) -> Body {
        frames(chunks, false)
    }

    /// One frame is returned as it is, several are joined in order, none is
    /// an empty body, and the limit holds across frames.
    #[tokio::test]
    async fn bodies_are_read_whole_and_bounded() {
        assert_eq!(
            &read_limited(body(&[b"{\"delta\":1}"])).await.unwrap()[..],
            b"{\"delta\":1}"
        );
        assert_eq!(
            &read_limited(body(&[b"{\"de", b"lta\"", b":1}"]))
                .await
                .unwrap()[..],
            b"{\"delta\":1}"
        );
        assert!(read_limited(body(&[])).await.unwrap().is_empty());
        let half = vec![b' '; BODY_BYTES_MAX / 2 + 1];
        assert!(matches!(
            read_limited(body(&[&half, &half])).await,
            Err(ApiError::PayloadTooLarge)
        ));
        let exact = vec![b' '; BODY_BYTES_MAX];
        assert_eq!(
            read_limited(body(&[&exact[..10], &exact[10..]]))
                .await
                .unwrap()
                .len(),
            BODY_BYTES_MAX
        );
    }

    /// A body that stops arriving gets 408 once `BODY_READ_TIMEOUT` has
    /// passed (tokio's clock is paused and jumps to the next timer), and not
    /// before.
    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_gets_408_after_the_body_timeout() {
        let req = Request::builder()
            .method("PATCH")
            .uri("/items/x/qty")
            .header(header::CONTENT_TYPE, "application/json")
            .body(frames(&[b"{\"de"], true))
            .unwrap();
        let started = tokio::time::Instant::now();
        let result = JsonBody::<serde_json::Value>::from_request(req, &()).await;
        assert!(matches!(result, Err(ApiError::RequestTimeout)));
        assert_eq!(started.elapsed(), BODY_READ_TIMEOUT);
    }
}
