//! The one per-request layer around every route: the in-flight bound, the
//! request id, the problem format for bodies made outside our handlers, the
//! request histogram and the DEBUG span.
//!
//! These were six tower layers (`SetRequestId`, `PropagateRequestId`,
//! `LoadShed` + `ConcurrencyLimit`, `Trace`, `Timeout`, two axum `from_fn`
//! middlewares). Each boxed its future or cloned the boxed inner route per
//! request; together they cost ~1.5 µs of CPU per request, a tenth of a
//! durable PATCH (BENCHMARKS.md). Here they are one service and one boxed
//! future. It is applied with `Router::layer`, so it runs after routing and
//! sees the route template (`MatchedPath`) for its metric labels; the
//! fallback (404) and axum's 405s pass through it too.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tower::{Layer, Service};
use tracing::Instrument;

use super::error::{ApiError, PROBLEM_JSON};
use super::request_metrics::RequestLabels;

/// The request-id header: taken from the request, or generated; always
/// echoed on the response.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The layer: `Router::layer(FrontLayer::new(max_in_flight))`.
///
/// There is no whole-request timeout here. What a client can stall is
/// bounded where it happens: the head by hyper's header-read timeout, the
/// body by the body-read timeout in `extract::JsonBody` (408). The rest of
/// a request is the server's own work, and a write's reply waits for its
/// log record to be durable: answering 408 ("you were too slow") there
/// would be wrong, and would not undo the write. A log that cannot sync
/// fails and answers 503. (A per-request timer was also ~2% of the
/// user-space instructions of a durable PATCH: a timer-wheel insert and
/// removal each.)
#[derive(Clone)]
pub struct FrontLayer {
    in_flight: Arc<AtomicUsize>,
    max_in_flight: usize,
}

impl FrontLayer {
    /// At most `max_in_flight` requests inside handlers at once (more get
    /// 503 `overloaded` at once).
    pub fn new(max_in_flight: usize) -> Self {
        FrontLayer {
            in_flight: Arc::new(AtomicUsize::new(0)),
            max_in_flight,
        }
    }
}

impl<S> Layer<S> for FrontLayer {
    type Service = Front<S>;

    fn layer(&self, inner: S) -> Front<S> {
        Front {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Front<S> {
    inner: S,
    layer: FrontLayer,
}

/// One slot of the in-flight bound, given back when the request's future
/// ends (answered, timed out or dropped by a client that went away).
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn enter(counter: &Arc<AtomicUsize>, max: usize) -> Option<InFlight> {
        // Increment first, then check: a racing burst can overshoot the
        // counter transiently, but never admits more than `max`.
        if counter.fetch_add(1, Ordering::AcqRel) >= max {
            counter.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(InFlight(counter.clone()))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<S> Service<Request> for Front<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let started = Instant::now();
        let labels = RequestLabels::of(req.extensions().get::<MatchedPath>(), req.method());
        // Handlers do not read the id, so a generated one is not written
        // into the request: it goes to the span and the response only.
        let request_id = match req.headers().get(&REQUEST_ID) {
            Some(id) => id.clone(),
            None => new_request_id(),
        };
        // At DEBUG only: the fmt subscriber formats a span's fields when the
        // span is created, a measurable cost at tens of thousands of
        // requests per second. The field expressions are evaluated inside
        // the macro, so they cost nothing when the span is disabled.
        let span = tracing::debug_span!(
            "request",
            request_id = %request_id.to_str().unwrap_or(""),
            method = %req.method(),
            route = %labels.route(),
            owner = tracing::field::Empty,
        );
        let guard = InFlight::enter(&self.layer.in_flight, self.layer.max_in_flight);
        // Call the route now (routes are always ready): the boxed future
        // below is the only allocation this layer makes per request.
        let call = guard.is_some().then(|| self.inner.call(req));
        Box::pin(
            async move {
                let response = match call {
                    None => {
                        metrics::counter!("countiq_http_requests_shed_total").increment(1);
                        ApiError::Overloaded.into_response()
                    }
                    Some(call) => {
                        let Ok(response) = call.await;
                        response
                    }
                };
                drop(guard);
                let mut response = problem_for_bare_errors(response);
                response.headers_mut().insert(REQUEST_ID, request_id);
                let status = response.status();
                let elapsed = started.elapsed();
                labels.record(status, elapsed);
                // 500 is a bug: always logged. The other 5xx are states the
                // node reports on purpose (503 not ready, overloaded, log
                // failed — the failure itself is logged where it happens);
                // logging each at ERROR would flood the log exactly when
                // the node is busiest. They are counted by status either way.
                if status == StatusCode::INTERNAL_SERVER_ERROR {
                    tracing::error!(
                        status = status.as_u16(),
                        route = labels.route(),
                        latency_us = elapsed.as_micros() as u64,
                        "request failed"
                    );
                } else {
                    tracing::debug!(
                        status = status.as_u16(),
                        latency_us = elapsed.as_micros() as u64,
                        "response"
                    );
                }
                Ok(response)
            }
            .instrument(span),
        )
    }
}

/// A fresh request id: a random (v4) UUID.
fn new_request_id() -> HeaderValue {
    let mut buf = uuid::Uuid::encode_buffer();
    let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(text).expect("a UUID is a valid header value")
}

/// Responses produced outside our handlers (axum's 405 and 404-on-method,
/// a rejected extractor of axum's own) have empty or plain bodies. Give
/// them the problem format too, keeping their headers (`Allow` on 405).
fn problem_for_bare_errors(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
    if is_problem {
        return response;
    }
    let error = match status {
        StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed,
        StatusCode::NOT_FOUND => ApiError::NotFound,
        StatusCode::REQUEST_TIMEOUT => ApiError::RequestTimeout,
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType,
        s if s.is_client_error() => ApiError::InvalidBody("the request could not be parsed".into()),
        _ => ApiError::Internal,
    };
    let (mut parts, _) = response.into_parts();
    let problem = error.into_response();
    let (problem_parts, body) = problem.into_parts();
    for (name, value) in problem_parts.headers.iter() {
        parts.headers.insert(name, value.clone());
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.status = problem_parts.status;
    Response::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::get;
    use axum::Router;
    use std::time::Duration;
    use tokio::sync::{oneshot, Mutex};
    use tower::ServiceExt;

    fn get_req(path: &str) -> Request {
        Request::builder().uri(path).body(Body::empty()).unwrap()
    }

    /// The in-flight bound admits exactly `max` requests; the next one is
    /// shed at once with 503 `overloaded`; a finished request frees its
    /// slot.
    #[tokio::test]
    async fn in_flight_bound_is_exact_and_slots_come_back() {
        const MAX: usize = 3;
        // Handlers that block until released.
        let gates: Arc<Mutex<Vec<oneshot::Sender<()>>>> = Arc::default();
        let (entered_tx, mut entered_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let g = gates.clone();
        let app = Router::new()
            .route(
                "/slow",
                get(move || {
                    let g = g.clone();
                    let entered = entered_tx.clone();
                    async move {
                        let (tx, rx) = oneshot::channel();
                        g.lock().await.push(tx);
                        entered.send(()).unwrap();
                        let _ = rx.await;
                        "done"
                    }
                }),
            )
            .layer(FrontLayer::new(MAX));

        let mut pending = Vec::new();
        for _ in 0..MAX {
            pending.push(tokio::spawn(app.clone().oneshot(get_req("/slow"))));
            entered_rx.recv().await.unwrap();
        }
        let shed = tokio::time::timeout(
            Duration::from_secs(10),
            app.clone().oneshot(get_req("/slow")),
        )
        .await
        .expect("a request over the bound is answered at once, not queued")
        .unwrap();
        assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(shed.headers().contains_key(REQUEST_ID));

        // Release one; its slot is free again.
        gates.lock().await.remove(0).send(()).unwrap();
        let first = pending.remove(0).await.unwrap().unwrap();
        assert_eq!(first.status(), StatusCode::OK);
        let admitted = tokio::spawn(app.clone().oneshot(get_req("/slow")));
        entered_rx.recv().await.unwrap();
        for tx in gates.lock().await.drain(..) {
            tx.send(()).unwrap();
        }
        assert_eq!(admitted.await.unwrap().unwrap().status(), StatusCode::OK);
        for p in pending {
            assert_eq!(p.await.unwrap().unwrap().status(), StatusCode::OK);
        }
    }

    /// A given request id is echoed; a missing one is generated (a UUID).
    #[tokio::test]
    async fn request_id_is_echoed_or_generated() {
        let app = Router::new()
            .route("/ok", get(|| async { "ok" }))
            .layer(FrontLayer::new(8));
        let mut req = get_req("/ok");
        req.headers_mut()
            .insert(REQUEST_ID, HeaderValue::from_static("abc-123"));
        let r = app.clone().oneshot(req).await.unwrap();
        assert_eq!(r.headers()[&REQUEST_ID], "abc-123");
        let r = app.oneshot(get_req("/ok")).await.unwrap();
        let id = r.headers()[&REQUEST_ID].to_str().unwrap();
        assert!(uuid::Uuid::try_parse(id).is_ok(), "{id}");
    }

    /// axum's own 405 gets the problem format and keeps `Allow`.
    #[tokio::test]
    async fn bare_405_becomes_a_problem_with_allow() {
        let app = Router::new()
            .route("/ok", get(|| async { "ok" }))
            .layer(FrontLayer::new(8));
        let req = Request::builder()
            .method("DELETE")
            .uri("/ok")
            .body(Body::empty())
            .unwrap();
        let r = app.oneshot(req).await.unwrap();
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        assert!(r.headers().contains_key(header::ALLOW));
    }
}
