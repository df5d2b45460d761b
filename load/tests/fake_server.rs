//! Goal: `countiq_load::run` drives a real HTTP server end to end and its
//! correctness check both passes on a correct server and fails on one that
//! loses an acknowledged delta.
//!
//! Method: a tiny in-test axum server on 127.0.0.1:0 implements just enough
//! of the API (POST /items, GET /items/{id}, PATCH /items/{id}/qty) over a
//! `Mutex<HashMap>`. It checks that a bearer token is present but not its
//! signature (tokens are checked against the real server in
//! `real_server.rs`). The `hot-owner`
//! scenario runs for about a second against it, once honest and once with
//! the server told to acknowledge one non-zero delta without applying it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use clap::Parser;
use serde::Deserialize;
use serde_json::{json, Value};

/// How long each load run lasts.
const RUN: &str = "1s";

#[derive(Default)]
struct Fake {
    items: Mutex<HashMap<String, (String, i64, u64)>>,
    next_id: AtomicU64,
    /// When set, the next PATCH with a non-zero delta is acknowledged (200,
    /// new qty and version in the reply) but its delta is not stored.
    drop_one_ack: AtomicBool,
}

#[derive(Deserialize)]
struct NewItem {
    name: String,
    qty: i64,
}

#[derive(Deserialize)]
struct Delta {
    delta: i64,
}

fn item_json(id: &str, name: &str, qty: i64, version: u64) -> Value {
    json!({"id": id, "name": name, "qty": qty, "version": version,
           "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"})
}

fn problem(status: StatusCode, code: &str) -> Response {
    let body = json!({"type": "about:blank", "status": status.as_u16(), "error": code});
    (
        status,
        [("content-type", "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}

fn authorized(headers: &HeaderMap) -> bool {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("Bearer "))
}

async fn create(
    State(f): State<Arc<Fake>>,
    headers: HeaderMap,
    Json(new): Json<NewItem>,
) -> Response {
    if !authorized(&headers) {
        return problem(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let mut items = f.items.lock().expect("fake lock");
    if items
        .values()
        .any(|(name, _, _)| name.eq_ignore_ascii_case(&new.name))
    {
        return problem(StatusCode::CONFLICT, "name_taken");
    }
    let id = format!(
        "00000000-0000-7000-8000-{:012x}",
        f.next_id.fetch_add(1, Ordering::Relaxed)
    );
    items.insert(id.clone(), (new.name.clone(), new.qty, 1));
    (
        StatusCode::CREATED,
        Json(item_json(&id, &new.name, new.qty, 1)),
    )
        .into_response()
}

async fn read(State(f): State<Arc<Fake>>, Path(id): Path<String>) -> Response {
    match f.items.lock().expect("fake lock").get(&id) {
        Some((name, qty, version)) => Json(item_json(&id, name, *qty, *version)).into_response(),
        None => problem(StatusCode::NOT_FOUND, "not_found"),
    }
}

async fn adjust(
    State(f): State<Arc<Fake>>,
    Path(id): Path<String>,
    Json(d): Json<Delta>,
) -> Response {
    let mut items = f.items.lock().expect("fake lock");
    let Some((name, qty, version)) = items.get_mut(&id) else {
        return problem(StatusCode::NOT_FOUND, "not_found");
    };
    let new_qty = *qty + d.delta;
    if new_qty < 0 {
        return problem(StatusCode::BAD_REQUEST, "qty_below_zero");
    }
    *version += 1;
    let lose = d.delta != 0 && f.drop_one_ack.swap(false, Ordering::Relaxed);
    if !lose {
        *qty = new_qty;
    }
    Json(item_json(&id, name, new_qty, *version)).into_response()
}

async fn start_fake(drop_one_ack: bool) -> (String, Arc<Fake>) {
    let fake = Arc::new(Fake {
        drop_one_ack: AtomicBool::new(drop_one_ack),
        ..Fake::default()
    });
    let app = Router::new()
        .route("/items", post(create))
        .route("/items/{id}", get(read))
        .route("/items/{id}/qty", patch(adjust))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind port 0");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), fake)
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    load: countiq_load::LoadArgs,
}

fn args(url: &str, extra: &[&str]) -> countiq_load::LoadArgs {
    let mut argv = vec![
        "load",
        "--url",
        url,
        "--scenario",
        "hot-owner",
        "--connections",
        "8",
    ];
    argv.extend_from_slice(&[
        "--duration",
        RUN,
        "--jwt-secret",
        "test-secret-0123456789abcdef0123456789",
        "--timeout",
        "5s",
    ]);
    argv.extend_from_slice(extra);
    Cli::try_parse_from(argv).expect("valid arguments").load
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_owner_check_passes_on_a_correct_server() {
    let (url, fake) = start_fake(false).await;
    let report = countiq_load::run(args(&url, &["--items", "2"]))
        .await
        .expect("run");
    assert!(report.ok(), "check should pass: {report:#?}");
    assert!(report.replies > 100, "too few replies: {}", report.replies);
    assert_eq!(report.check.items_checked, 2);
    assert_eq!(report.check.unknown_outcomes, 0);
    assert_eq!(report.by_status.get(&200).copied(), Some(report.replies));
    // The fake's own state agrees with what the tool read back.
    let total: i64 = fake
        .items
        .lock()
        .expect("fake lock")
        .values()
        .map(|(_, q, _)| *q)
        .sum();
    let acked: i128 = report.check.items.iter().map(|v| v.acked_delta).sum();
    assert_eq!(i128::from(total), 2 * 1_000_000 + acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_owner_check_fails_when_an_acknowledged_delta_is_lost() {
    let (url, fake) = start_fake(true).await;
    let report = countiq_load::run(args(&url, &[])).await.expect("run");
    assert!(
        !fake.drop_one_ack.load(Ordering::Relaxed),
        "the fake should have dropped a delta"
    );
    assert!(!report.ok(), "check must fail: {report:#?}");
    assert_eq!(report.check.items_failed, 1);
    assert_eq!(report.check.version_regressions, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_non_loopback_target() {
    let err = countiq_load::run(args("http://192.0.2.1:8080", &[]))
        .await
        .expect_err("must refuse");
    assert!(
        matches!(err, countiq_load::LoadError::NotLoopback { .. }),
        "{err:?}"
    );
}
