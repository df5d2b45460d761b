//! Goal: every malformed or out-of-range body is refused with the specified
//! status and code, and refusing it changes nothing. Method: a matrix of raw
//! bodies per route, each followed by a full read of the owner's items
//! (qty, version, name, timestamps) compared with the state before.
mod common;
mod support;

use common::TestServer;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
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

/// Goal: a bad `reason` or `reference` on any qty-changing write is 400
/// `invalid_body` naming the field, changes nothing and stores no key
/// (the same key then works with a good body: not a replay, not 422).
/// Method: each bad value on POST, PUT, PATCH, a transaction op, a commit
/// op and the commit route; then the key check on PATCH.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_reasons_and_references_are_refused_and_store_no_key() {
    let s = TestServer::start().await;
    let id = id_of(&s.create("alice", "milk", 5).await);
    let bad: Vec<(Value, &str)> = vec![
        (json!({"reason": ""}), "reason: "),
        (json!({"reason": "Sale"}), "reason: "),
        (json!({"reason": "sale now"}), "reason: "),
        (json!({"reason": "1x"}), "reason: "),
        (json!({"reason": "a".repeat(33)}), "reason: "),
        (json!({"reason": null}), "invalid type: null"),
        (json!({"reason": 7}), "invalid type"),
        (json!({"reference": ""}), "reference: "),
        (json!({"reference": "a\nb"}), "reference: "),
        (json!({"reference": "\u{7f}"}), "reference: "),
        (json!({"reference": "r".repeat(129)}), "reference: "),
        (json!({"reference": "é".repeat(65)}), "reference: "),
        (json!({"reference": null}), "invalid type: null"),
    ];
    let with = |base: Value, extra: &Value| {
        let mut b = base;
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    let hold = Req::new(Method::POST, format!("/items/{id}/reservations"), "alice")
        .json(r#"{"qty": 1, "ttl": 600}"#)
        .send(&s)
        .await;
    let rid = hold.body["id"].as_str().unwrap().to_string();
    for (extra, detail) in &bad {
        let op = with(json!({"item": id, "delta": 1}), extra);
        let commit_op = with(json!({"reservation": rid}), extra);
        let cases: Vec<(Method, String, Value, String)> = vec![
            (
                Method::POST,
                "/items".into(),
                with(json!({"name": "oat", "qty": 1}), extra),
                String::new(),
            ),
            (
                Method::PUT,
                format!("/items/{id}"),
                with(json!({"name": "milk", "qty": 6}), extra),
                String::new(),
            ),
            (
                Method::PATCH,
                format!("/items/{id}/qty"),
                with(json!({"delta": 1}), extra),
                String::new(),
            ),
            (
                Method::POST,
                "/transactions".into(),
                json!({"ops": [{"item": id, "delta": 1}, op]}),
                "ops[1].".into(),
            ),
            (
                Method::POST,
                "/transactions".into(),
                json!({"ops": [{"commit": commit_op}]}),
                "ops[0].commit.".into(),
            ),
            (
                Method::POST,
                format!("/reservations/{rid}/commit"),
                extra.clone(),
                String::new(),
            ),
        ];
        for (method, path, body, prefix) in cases {
            let before = all_items(&s, "alice").await;
            let r = Req::new(method.clone(), &path, "alice")
                .json(&body.to_string())
                .header("idempotency-key", "note-1")
                .send(&s)
                .await;
            assert_problem(&r, StatusCode::BAD_REQUEST, "invalid_body");
            let text = r.body["detail"].as_str().unwrap();
            let want = if detail.starts_with("invalid type") {
                detail.to_string()
            } else {
                format!("{prefix}{detail}")
            };
            assert!(
                text.contains(&want),
                "{method} {path} {body}: {text} lacks {want:?}"
            );
            assert_eq!(
                all_items(&s, "alice").await,
                before,
                "{method} {path} {body}"
            );
        }
    }
    // The key was never stored: it works now, first time.
    let r = Req::new(Method::PATCH, format!("/items/{id}/qty"), "alice")
        .json(r#"{"delta": 1, "reason": "restock", "reference": "po 1"}"#)
        .header("idempotency-key", "note-1")
        .send(&s)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.raw);
    assert!(r.headers.get("idempotent-replayed").is_none());
    // Exactly at the bounds: accepted.
    let body = json!({"delta": 0, "reason": "a".repeat(32), "reference": "é".repeat(64)});
    let r = Req::new(Method::PATCH, format!("/items/{id}/qty"), "alice")
        .json(&body.to_string())
        .send(&s)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.raw);
}

/// Goal: reason and reference are part of the request's fingerprint: the
/// same key with a different reason (or a reference added) is 422, with
/// the same ones it is a replay; a body without them keeps the
/// fingerprint it always had. Method: PATCH and the commit route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reason_and_reference_are_in_the_idempotency_fingerprint() {
    let s = TestServer::start().await;
    let id = id_of(&s.create("alice", "milk", 5).await);
    let path = format!("/items/{id}/qty");
    let patch = |body: &'static str| {
        Req::new(Method::PATCH, path.clone(), "alice")
            .json(body)
            .header("idempotency-key", "fp-1")
    };
    let first = patch(r#"{"delta": -1, "reason": "sale"}"#).send(&s).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.raw);
    let again = patch(r#"{"reason": "sale", "delta": -1}"#).send(&s).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    for other in [
        r#"{"delta": -1, "reason": "theft"}"#,
        r#"{"delta": -1}"#,
        r#"{"delta": -1, "reason": "sale", "reference": "o-1"}"#,
    ] {
        let r = patch(other).send(&s).await;
        assert_problem(
            &r,
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
        );
    }
    assert_eq!(support::qty_version(&s, "alice", &id).await, (4, 2));
    // Commit: no body and `{}` are one request; a reason makes another.
    let mut rids = Vec::new();
    for _ in 0..2 {
        let r = Req::new(Method::POST, format!("/items/{id}/reservations"), "alice")
            .json(r#"{"qty": 1, "ttl": 600}"#)
            .send(&s)
            .await;
        rids.push(r.body["id"].as_str().unwrap().to_string());
    }
    let commit = |rid: &str, body: Option<&'static str>| {
        let req = Req::new(Method::POST, format!("/reservations/{rid}/commit"), "alice")
            .header("idempotency-key", format!("c-{rid}"));
        match body {
            Some(b) => req.json(b),
            None => req,
        }
    };
    let r = commit(&rids[0], None).send(&s).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.raw);
    let r = commit(&rids[0], Some("{}")).send(&s).await;
    assert_eq!(r.headers["idempotent-replayed"], "true", "{}", r.raw);
    let r = commit(&rids[0], Some(r#"{"reason": "sale"}"#))
        .send(&s)
        .await;
    assert_problem(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    );
    let r = commit(&rids[1], Some(r#"{"reason": "sale", "reference": "o-2"}"#))
        .send(&s)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.raw);
    let r = commit(&rids[1], Some(r#"{"reason": "sale"}"#))
        .send(&s)
        .await;
    assert_problem(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    );
    // A commit body must be JSON when there is one.
    let r = s
        .send_raw(
            Method::POST,
            &format!("/reservations/{}/commit", rids[1]),
            "alice",
            Some("text/plain"),
            b"{}".to_vec(),
        )
        .await;
    assert_problem(
        &r,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
}
