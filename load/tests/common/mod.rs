//! A stub of the subset of the API the scenarios use (POST /items, GET and
//! PUT /items/{id}, PATCH /items/{id}/qty, with If-Match, Idempotency-Key,
//! CountIQ-LSN and Idempotent-Replayed), over one `Mutex`, in honest and
//! deliberately broken variants. Shared by the tests of this directory.
#![allow(dead_code)] // each test file uses a part

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use clap::Parser;
use serde::Deserialize;
use serde_json::{json, Value};

/// How the stub misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Honest,
    /// PATCH replies with the new state at once and stores it
    /// `ACK_EARLY_DELAY` later, computed from the state it read (so a
    /// concurrent PATCH computes from the old state: lost updates).
    AckBeforeApply,
    /// GET answers from a copy of the store refreshed every
    /// `STALE_REFRESH`.
    StaleReads,
}

pub const ACK_EARLY_DELAY: Duration = Duration::from_millis(3);
pub const STALE_REFRESH: Duration = Duration::from_millis(20);

#[derive(Clone, Debug)]
struct Item {
    name: String,
    qty: i64,
    version: u64,
}

#[derive(Default)]
struct Store {
    items: HashMap<String, Item>,
    next_id: u64,
    lsn: u64,
    /// (key) -> (status, body, lsn) of the first answer.
    keys: HashMap<String, (u16, String, u64)>,
}

pub struct Stub {
    mode: Mode,
    /// Applied PATCH/PUT wait up to this long (random) before replying.
    pub reply_delay_max: Duration,
    /// Every PATCH first busy-waits this long (a known service time).
    pub service_busy: Duration,
    store: Mutex<Store>,
    stale: Mutex<HashMap<String, Item>>,
}

fn item_json(id: &str, item: &Item) -> Value {
    json!({"id": id, "name": item.name, "qty": item.qty, "version": item.version,
           "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"})
}

fn problem(status: u16, code: &str, extra: Value) -> (u16, String) {
    let mut body = json!({"type": "about:blank", "status": status, "error": code});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    (status, body.to_string())
}

fn respond(status: u16, body: String, lsn: Option<u64>, replayed: bool) -> Response {
    let mut resp = (
        StatusCode::from_u16(status).expect("status"),
        [("content-type", "application/json")],
        body,
    )
        .into_response();
    if let Some(lsn) = lsn {
        resp.headers_mut().insert("countiq-lsn", lsn.into());
    }
    if replayed {
        resp.headers_mut()
            .insert("idempotent-replayed", "true".parse().expect("header"));
    }
    resp
}

fn if_match(headers: &HeaderMap) -> Option<u64> {
    let raw = headers.get("if-match")?.to_str().ok()?;
    raw.trim().trim_matches('"').parse().ok()
}

fn key(headers: &HeaderMap) -> Option<String> {
    headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

impl Stub {
    /// Runs the decision under the lock, storing and replaying keyed answers.
    fn decide(
        &self,
        headers: &HeaderMap,
        f: impl FnOnce(&mut Store) -> (u16, String, bool),
    ) -> (u16, String, Option<u64>, bool) {
        let mut store = self.store.lock().expect("stub lock");
        let key = key(headers);
        if let Some(k) = &key {
            if let Some((status, body, lsn)) = store.keys.get(k).cloned() {
                return (status, body, (lsn > 0).then_some(lsn), true);
            }
        }
        let (status, body, applied) = f(&mut store);
        let lsn = if applied {
            store.lsn += 1;
            store.lsn
        } else {
            0
        };
        if let Some(k) = key {
            store.keys.insert(k, (status, body.clone(), lsn));
        }
        (status, body, (lsn > 0).then_some(lsn), false)
    }

    async fn delay(&self) {
        if !self.reply_delay_max.is_zero() {
            let max = self.reply_delay_max.as_micros() as u64;
            let us = rand::random_range(0..=max);
            tokio::time::sleep(Duration::from_micros(us)).await;
        }
    }
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

async fn create(
    State(s): State<Arc<Stub>>,
    headers: HeaderMap,
    Json(new): Json<NewItem>,
) -> Response {
    let (status, body, lsn, replayed) = s.decide(&headers, |store| {
        let folded = new.name.trim().to_lowercase();
        if store
            .items
            .values()
            .any(|i| i.name.trim().to_lowercase() == folded)
        {
            let (st, b) = problem(409, "name_taken", json!({}));
            return (st, b, false);
        }
        store.next_id += 1;
        let id = format!("00000000-0000-7000-8000-{:012x}", store.next_id);
        let item = Item {
            name: new.name.clone(),
            qty: new.qty,
            version: 1,
        };
        let body = item_json(&id, &item).to_string();
        store.items.insert(id, item);
        (201, body, true)
    });
    respond(status, body, lsn, replayed)
}

async fn read(State(s): State<Arc<Stub>>, Path(id): Path<String>) -> Response {
    let found = if s.mode == Mode::StaleReads {
        s.stale.lock().expect("stale lock").get(&id).cloned()
    } else {
        s.store.lock().expect("stub lock").items.get(&id).cloned()
    };
    match found {
        Some(item) => respond(200, item_json(&id, &item).to_string(), None, false),
        None => {
            let (st, b) = problem(404, "not_found", json!({}));
            respond(st, b, None, false)
        }
    }
}

async fn adjust(
    State(s): State<Arc<Stub>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(d): Json<Delta>,
) -> Response {
    let busy = std::time::Instant::now();
    while busy.elapsed() < s.service_busy {
        std::hint::spin_loop();
    }
    let tag = if_match(&headers);
    let mut late: Option<Item> = None;
    let (status, body, lsn, replayed) = s.decide(&headers, |store| {
        let Some(item) = store.items.get_mut(&id) else {
            let (st, b) = problem(404, "not_found", json!({}));
            return (st, b, false);
        };
        if tag.is_some_and(|t| t != item.version) {
            let (st, b) = problem(
                412,
                "version_mismatch",
                json!({"current_version": item.version}),
            );
            return (st, b, false);
        }
        if item.qty + d.delta < 0 {
            let (st, b) = problem(400, "qty_below_zero", json!({}));
            return (st, b, false);
        }
        let new = Item {
            name: item.name.clone(),
            qty: item.qty + d.delta,
            version: item.version + 1,
        };
        let body = item_json(&id, &new).to_string();
        match s.mode {
            Mode::AckBeforeApply => late = Some(new),
            _ => *item = new,
        }
        (200, body, true)
    });
    if let Some(new) = late {
        let (stub, id) = (s.clone(), id.clone());
        tokio::spawn(async move {
            tokio::time::sleep(ACK_EARLY_DELAY).await;
            stub.store.lock().expect("stub lock").items.insert(id, new);
        });
    }
    if status == 200 && !replayed {
        s.delay().await;
    }
    respond(status, body, lsn, replayed)
}

async fn replace(
    State(s): State<Arc<Stub>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(new): Json<NewItem>,
) -> Response {
    let tag = if_match(&headers);
    let (status, body, lsn, replayed) = s.decide(&headers, |store| {
        let Some(item) = store.items.get_mut(&id) else {
            let (st, b) = problem(404, "not_found", json!({}));
            return (st, b, false);
        };
        if tag.is_some_and(|t| t != item.version) {
            let (st, b) = problem(
                412,
                "version_mismatch",
                json!({"current_version": item.version}),
            );
            return (st, b, false);
        }
        *item = Item {
            name: new.name.clone(),
            qty: new.qty,
            version: item.version + 1,
        };
        (200, item_json(&id, item).to_string(), true)
    });
    if status == 200 && !replayed {
        s.delay().await;
    }
    respond(status, body, lsn, replayed)
}

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok", "version": "stub-1"}))
}

/// Starts a stub on 127.0.0.1:0; returns its URL.
pub async fn start(mode: Mode, reply_delay_max: Duration) -> String {
    start_with(mode, reply_delay_max, Duration::ZERO).await
}

/// As `start`, with a busy service time for every PATCH.
pub async fn start_with(mode: Mode, reply_delay_max: Duration, service_busy: Duration) -> String {
    let stub = Arc::new(Stub {
        mode,
        reply_delay_max,
        service_busy,
        store: Mutex::new(Store::default()),
        stale: Mutex::new(HashMap::new()),
    });
    if mode == Mode::StaleReads {
        let s = stub.clone();
        tokio::spawn(async move {
            loop {
                let copy = s.store.lock().expect("stub lock").items.clone();
                *s.stale.lock().expect("stale lock") = copy;
                tokio::time::sleep(STALE_REFRESH).await;
            }
        });
    }
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/items", post(create))
        .route("/items/{id}", get(read).put(replace))
        .route("/items/{id}/qty", patch(adjust))
        .with_state(stub);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind port 0");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    load: countiq_load::LoadArgs,
}

/// `countiq load` arguments against `url` with a test secret.
pub fn args(url: &str, extra: &[&str]) -> countiq_load::LoadArgs {
    let mut argv = vec![
        "load",
        "--url",
        url,
        "--jwt-secret",
        "test-secret-0123456789abcdef0123456789",
    ];
    argv.extend_from_slice(extra);
    Cli::try_parse_from(argv).expect("valid arguments").load
}
