//! Goal: every malformed or out-of-range body is refused with the specified
//! status and code, and refusing it changes nothing. Method: a matrix of raw
//! bodies per route, each followed by a full read of the owner's items
//! (qty, version, name, timestamps) compared with the state before.
mod common;
mod support;

use common::TestServer;
use reqwest::{Method, StatusCode};
use support::{all_items, assert_problem, id_of, Req};

const QTY_MAX: i64 = countiq::domain::QTY_MAX as i64;

/// Integer-field values that are not a JSON integer in range.
fn bad_ints() -> Vec<String> {
    [
        "true",
        "false",
        "1.0",
        "1e3",
        "1E3",
        "-1.5",
        "\"1\"",
        "null",
        "[]",
        "[1]",
        "{}",
        "9007199254740992",     // 2^53
        "-9007199254740992",    // -2^53
        "9223372036854775807",  // i64::MAX
        "9223372036854775808",  // > i64::MAX
        "-9223372036854775809", // < i64::MIN
        "99999999999999999999999999",
        "NaN",
        "Infinity",
        "0x10",
        "01",
        "+1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Bodies that are not one JSON object.
fn not_an_object() -> Vec<String> {
    [
        "",
        " ",
        "delta=1",
        "{",
        "{\"delta\": 1",
        "[]",
        "null",
        "1",
        "\"x\"",
        "{\"delta\": 1} x",
        "{\"delta\": 1}{\"delta\": 1}",
        "{'delta': 1}",
        "{delta: 1}",
        "\u{feff}{\"delta\": 1}",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Send `body` and expect 400 `invalid_body`; then prove nothing changed.
async fn refused(s: &TestServer, method: Method, path: &str, body: &str) {
    let before = all_items(s, "alice").await;
    let r = Req::new(method.clone(), path, "alice")
        .json(body)
        .send(s)
        .await;
    assert_problem(&r, StatusCode::BAD_REQUEST, "invalid_body");
    assert_eq!(
        all_items(s, "alice").await,
        before,
        "{method} {path} {body:?} changed the state"
    );
}

/// Send `body` and expect `status`; then prove nothing changed.
async fn refused_with(
    s: &TestServer,
    method: Method,
    path: &str,
    ct: Option<&str>,
    body: Vec<u8>,
    status: StatusCode,
    code: &str,
) {
    let before = all_items(s, "alice").await;
    let r = s.send_raw(method.clone(), path, "alice", ct, body).await;
    assert_problem(&r, status, code);
    assert_eq!(
        all_items(s, "alice").await,
        before,
        "{method} {path} changed the state"
    );
}

/// The transport refusals every body route shares: 415 and 413.
async fn transport_refusals(s: &TestServer, method: Method, path: &str, good: &str) {
    for ct in [None, Some("text/plain"), Some("application/xml")] {
        let body = good.as_bytes().to_vec();
        let unsupported = StatusCode::UNSUPPORTED_MEDIA_TYPE;
        refused_with(
            s,
            method.clone(),
            path,
            ct,
            body,
            unsupported,
            "unsupported_media_type",
        )
        .await;
    }
    let mut big = good.as_bytes().to_vec();
    big.resize(64 * 1024 + 1, b' ');
    let json = Some("application/json");
    let too_large = StatusCode::PAYLOAD_TOO_LARGE;
    refused_with(s, method, path, json, big, too_large, "body_too_large").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_bad_bodies() {
    // Goal: the whole bad-body matrix for PATCH /items/{id}/qty.
    let s = TestServer::start().await;
    let id = id_of(&s.create("alice", "milk", 5).await);
    s.patch("alice", &id, 1).await; // version 2, so a reset to 1 would show
    let path = format!("/items/{id}/qty");
    for v in bad_ints() {
        refused(&s, Method::PATCH, &path, &format!(r#"{{"delta": {v}}}"#)).await;
    }
    for body in not_an_object()
        .into_iter()
        .chain(["[1]", "[1, 2]", "[[1]]"].map(String::from))
    {
        refused(&s, Method::PATCH, &path, &body).await;
    }
    for body in [
        "{}",
        r#"{"delta": 1, "extra": 1}"#,
        r#"{"delta": 1, "Delta": 1}"#,
        r#"{"Delta": 1}"#,
        r#"{"delta": 1, "delta": 2}"#,
        r#"{"delta": 1, "delta": 1}"#,
        r#"{"delta": 1, "name": "x"}"#,
        r#"{"qty": 1}"#,
    ] {
        refused(&s, Method::PATCH, &path, body).await;
    }
    transport_refusals(&s, Method::PATCH, &path, r#"{"delta": 1}"#).await;

    // The edges of the delta range are accepted (control: the matrix above
    // fails for the value, not for the route).
    for (delta, qty) in [(0, 6), (-6, 0), (QTY_MAX, QTY_MAX), (-QTY_MAX, 0)] {
        let r = Req::new(Method::PATCH, &path, "alice")
            .json(&format!(r#"{{ "delta" : {delta} }}"#))
            .send(&s)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{delta}: {}", r.raw);
        assert_eq!(r.body["qty"], qty);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_bad_bodies() {
    // Goal: the bad-body matrix for POST /items (name and qty).
    let s = TestServer::start().await;
    s.create("alice", "milk", 5).await;
    for v in bad_ints().into_iter().chain(["-1".to_string()]) {
        refused(
            &s,
            Method::POST,
            "/items",
            &format!(r#"{{"name": "x", "qty": {v}}}"#),
        )
        .await;
    }
    for v in [
        "true",
        "1",
        "null",
        "[]",
        "{}",
        "\"\"",
        "\"   \"",
        "\"a\\u0001b\"",
        "\"a\\nb\"",
    ] {
        refused(
            &s,
            Method::POST,
            "/items",
            &format!(r#"{{"name": {v}, "qty": 1}}"#),
        )
        .await;
    }
    let long = "x".repeat(201);
    refused(
        &s,
        Method::POST,
        "/items",
        &format!(r#"{{"name": "{long}"}}"#),
    )
    .await;
    let sequences = [r#"["milk", 3]"#, r#"["milk"]"#, r#"[["milk", 3]]"#];
    for body in not_an_object()
        .into_iter()
        .chain(sequences.map(String::from))
    {
        refused(&s, Method::POST, "/items", &body).await;
    }
    for body in [
        "{}",
        r#"{"qty": 1}"#,
        r#"{"name": "x", "qty": 1, "extra": true}"#,
        r#"{"name": "x", "id": "00000000-0000-0000-0000-000000000000"}"#,
        r#"{"name": "x", "version": 3}"#,
        r#"{"name": "x", "name": "y"}"#,
        r#"{"name": "x", "qty": 1, "qty": 2}"#,
    ] {
        refused(&s, Method::POST, "/items", body).await;
    }
    transport_refusals(&s, Method::POST, "/items", r#"{"name": "x"}"#).await;
    // Controls: the edges are accepted.
    let exactly = "é".repeat(200);
    let r = Req::new(Method::POST, "/items", "alice")
        .json(&format!(r#"{{"name": "{exactly}", "qty": {QTY_MAX}}}"#))
        .send(&s)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.raw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_bad_bodies() {
    // Goal: the bad-body matrix for PUT /items/{id}; PUT needs both fields.
    let s = TestServer::start().await;
    let id = id_of(&s.create("alice", "milk", 5).await);
    s.patch("alice", &id, 1).await;
    let path = format!("/items/{id}");
    for v in bad_ints().into_iter().chain(["-1".to_string()]) {
        refused(
            &s,
            Method::PUT,
            &path,
            &format!(r#"{{"name": "x", "qty": {v}}}"#),
        )
        .await;
    }
    for v in [
        "true",
        "1",
        "null",
        "[]",
        "{}",
        "\"\"",
        "\"   \"",
        "\"a\\u0007b\"",
    ] {
        refused(
            &s,
            Method::PUT,
            &path,
            &format!(r#"{{"name": {v}, "qty": 1}}"#),
        )
        .await;
    }
    for body in not_an_object()
        .into_iter()
        .chain([r#"["oat", 5]"#, r#"["milk", 5]"#].map(String::from))
    {
        refused(&s, Method::PUT, &path, &body).await;
    }
    for body in [
        "{}",
        r#"{"name": "x"}"#,
        r#"{"qty": 1}"#,
        r#"{"name": "x", "qty": 1, "extra": 1}"#,
        r#"{"name": "x", "qty": 1, "version": 2}"#,
        r#"{"name": "x", "qty": 1, "qty": 2}"#,
        r#"{"name": "x", "name": "x", "qty": 1}"#,
    ] {
        refused(&s, Method::PUT, &path, body).await;
    }
    transport_refusals(&s, Method::PUT, &path, r#"{"name": "x", "qty": 1}"#).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_bad_bodies() {
    // Goal: the bad-body matrix for POST /transactions, for the envelope
    // and for each op.
    let s = TestServer::start().await;
    let a = id_of(&s.create("alice", "a", 5).await);
    let b = id_of(&s.create("alice", "b", 5).await);
    let tx = "/transactions";
    for v in bad_ints() {
        // The bad op is second, so a partial application would show.
        let body = format!(
            r#"{{"ops": [{{"item": "{a}", "delta": 1}}, {{"item": "{b}", "delta": {v}}}]}}"#
        );
        refused(&s, Method::POST, tx, &body).await;
    }
    for item in [
        "1",
        "null",
        "true",
        "[]",
        "\"\"",
        "\"not-a-uuid\"",
        "\"00000000-0000-0000-0000\"",
    ] {
        let body = format!(
            r#"{{"ops": [{{"item": "{a}", "delta": 1}}, {{"item": {item}, "delta": 1}}]}}"#
        );
        refused(&s, Method::POST, tx, &body).await;
    }
    for body in not_an_object() {
        refused(&s, Method::POST, tx, &body).await;
    }
    let envelopes = [
        "{}".to_string(),
        r#"{"ops": null}"#.to_string(),
        r#"{"ops": {}}"#.to_string(),
        r#"{"ops": 1}"#.to_string(),
        r#"{"ops": []}"#.to_string(),
        r#"{"ops": [null]}"#.to_string(),
        r#"{"ops": [[]]}"#.to_string(),
        r#"{"ops": [{}]}"#.to_string(),
        format!(r#"{{"ops": [{{"item": "{a}"}}]}}"#),
        r#"{"ops": [{"delta": 1}]}"#.to_string(),
        format!(r#"{{"ops": [{{"item": "{a}", "delta": 1, "extra": 1}}]}}"#),
        format!(r#"{{"ops": [{{"item": "{a}", "delta": 1, "delta": 2}}]}}"#),
        format!(r#"{{"ops": [{{"item": "{a}", "item": "{b}", "delta": 1}}]}}"#),
        format!(r#"{{"ops": [{{"item": "{a}", "delta": 1}}], "extra": 1}}"#),
        format!(r#"{{"ops": [{{"item": "{a}", "delta": 1}}], "ops": []}}"#),
        format!(
            r#"{{"ops": [{{"item": "{a}", "delta": 1}}], "ops": [{{"item": "{a}", "delta": 1}}]}}"#
        ),
        format!(r#"[{{"item": "{a}", "delta": 1}}]"#),
        // The sequence forms of the envelope and of an op.
        format!(r#"[[["{a}", 1]]]"#),
        format!(r#"{{"ops": [["{a}", 1]]}}"#),
        format!(r#"{{"ops": [{{"item": "{a}", "delta": 1}}, ["{b}", 1]]}}"#),
    ];
    for body in &envelopes {
        refused(&s, Method::POST, tx, body).await;
    }
    let good = format!(r#"{{"ops": [{{"item": "{a}", "delta": 1}}]}}"#);
    transport_refusals(&s, Method::POST, tx, &good).await;
    // Control: the good body works.
    let r = Req::new(Method::POST, tx, "alice")
        .json(&good)
        .send(&s)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.raw);
}

/// Goal: a sequence-form body is refused even with an Idempotency-Key, and
/// the key is not taken by it: the same key then works with the object
/// form (201, not a replay and not 422).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_sequence_body_stores_no_key() {
    let s = TestServer::start().await;
    let r = Req::new(Method::POST, "/items", "alice")
        .json(r#"["milk", 3]"#)
        .header("idempotency-key", "seq-1")
        .send(&s)
        .await;
    assert_problem(&r, StatusCode::BAD_REQUEST, "invalid_body");
    assert!(
        r.body["detail"]
            .as_str()
            .unwrap()
            .contains("expected a JSON object"),
        "{}",
        r.raw
    );
    assert!(all_items(&s, "alice").await.is_empty());
    let r = Req::new(Method::POST, "/items", "alice")
        .json(r#"{"name": "milk", "qty": 3}"#)
        .header("idempotency-key", "seq-1")
        .send(&s)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.raw);
    assert!(r.headers.get("idempotent-replayed").is_none());
}
