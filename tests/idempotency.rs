//! Goal: `Idempotency-Key` makes every keyed route exactly-once (API.md
//! "Idempotency-Key", issue 4). Method: send each request twice (or 64
//! times at once) and compare the answers byte for byte, then read the
//! whole state to count the effects; refusals before the actor must store
//! nothing, which is proven by a later use of the same key that executes.
mod common;
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Resp, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::json;
use support::{all_items, assert_problem, id_of, qty_version, Req};

/// Send a keyed request with a raw JSON body (or none).
async fn keyed(
    s: &TestServer,
    method: Method,
    path: &str,
    body: Option<&str>,
    key: &str,
    extra: &[(&'static str, &str)],
) -> Resp {
    keyed_as(s, "alice", method, path, body, key, extra).await
}

async fn keyed_as(
    s: &TestServer,
    owner: &str,
    method: Method,
    path: &str,
    body: Option<&str>,
    key: &str,
    extra: &[(&'static str, &str)],
) -> Resp {
    let mut req = Req::new(method, path, owner).header("idempotency-key", key);
    if let Some(b) = body {
        req = req.json(b);
    }
    for (k, v) in extra {
        req = req.header(k, *v);
    }
    req.send(s).await
}

/// A replay: same status, body, Location and ETag, plus the replay header;
/// the first answer has no replay header.
#[track_caller]
fn assert_replay(first: &Resp, again: &Resp) {
    assert_eq!(first.header("idempotent-replayed"), None, "first answer");
    assert_eq!(again.status, first.status, "{}", again.raw);
    assert_eq!(again.raw, first.raw, "body");
    for h in ["location", "etag", "content-type"] {
        assert_eq!(again.header(h), first.header(h), "{h}");
    }
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_keyed_route_replays_and_applies_once() {
    let s = TestServer::start().await;

    // POST /items.
    let first = keyed(
        &s,
        Method::POST,
        "/items",
        Some(r#"{"name": "milk", "qty": 3}"#),
        "c1",
        &[],
    )
    .await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.raw);
    let again = keyed(
        &s,
        Method::POST,
        "/items",
        Some(r#"{ "qty":3 ,"name":"milk"}"#),
        "c1",
        &[],
    )
    .await;
    assert_replay(&first, &again);
    let all = all_items(&s, "alice").await;
    assert_eq!(all.len(), 1, "created once");
    let id = id_of(&first.body);

    // PATCH.
    let path = format!("/items/{id}/qty");
    let first = keyed(&s, Method::PATCH, &path, Some(r#"{"delta": 2}"#), "p1", &[]).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.raw);
    let again = keyed(
        &s,
        Method::PATCH,
        &path,
        Some("{\n  \"delta\" : 2\n}\n"),
        "p1",
        &[],
    )
    .await;
    assert_replay(&first, &again);
    assert_eq!(qty_version(&s, "alice", &id).await, (5, 2), "applied once");

    // PUT.
    let path = format!("/items/{id}");
    let first = keyed(
        &s,
        Method::PUT,
        &path,
        Some(r#"{"name": "oat milk", "qty": 7}"#),
        "u1",
        &[],
    )
    .await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.raw);
    // Another change in between; the replay still answers the first.
    s.patch("alice", &id, 1).await;
    let again = keyed(
        &s,
        Method::PUT,
        &path,
        Some(r#"{"qty": 7, "name": "oat milk"}"#),
        "u1",
        &[],
    )
    .await;
    assert_replay(&first, &again);
    assert_eq!(
        qty_version(&s, "alice", &id).await,
        (8, 4),
        "PUT applied once"
    );

    // POST /transactions.
    let other = id_of(&s.create("alice", "eggs", 1).await);
    let tx = json!({"ops": [{"item": id, "delta": -1}, {"item": other, "delta": 1}]}).to_string();
    let first = keyed(&s, Method::POST, "/transactions", Some(&tx), "t1", &[]).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.raw);
    let tx_reordered =
        json!({"ops": [{"delta": -1, "item": id}, {"delta": 1, "item": other}]}).to_string();
    let again = keyed(
        &s,
        Method::POST,
        "/transactions",
        Some(&tx_reordered),
        "t1",
        &[],
    )
    .await;
    assert_replay(&first, &again);
    assert_eq!(qty_version(&s, "alice", &id).await, (7, 5));
    assert_eq!(qty_version(&s, "alice", &other).await, (2, 2));

    // DELETE: the replay is 204 too and does not delete a re-created item.
    let first = keyed(&s, Method::DELETE, &path, None, "d1", &[]).await;
    assert_eq!(first.status, StatusCode::NO_CONTENT);
    let again = keyed(&s, Method::DELETE, &path, None, "d1", &[]).await;
    assert_replay(&first, &again);
    assert_eq!(all_items(&s, "alice").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_rejections_are_replayed() {
    // Goal: state-machine refusals (400, 404, 409, 412) are stored with the
    // key and replayed even after the state would now allow the request.
    let s = TestServer::start().await;
    let id = id_of(&s.create("alice", "milk", 1).await);
    s.create("alice", "eggs", 1).await;
    let qty = format!("/items/{id}/qty");
    let item = format!("/items/{id}");

    let below = keyed(
        &s,
        Method::PATCH,
        &qty,
        Some(r#"{"delta": -5}"#),
        "r-below",
        &[],
    )
    .await;
    assert_problem(&below, StatusCode::BAD_REQUEST, "qty_below_zero");
    s.patch("alice", &id, 10).await; // now -5 would succeed
    let again = keyed(
        &s,
        Method::PATCH,
        &qty,
        Some(r#"{"delta": -5}"#),
        "r-below",
        &[],
    )
    .await;
    assert_replay(&below, &again);

    let taken = keyed(
        &s,
        Method::PUT,
        &item,
        Some(r#"{"name": "EGGS", "qty": 1}"#),
        "r-taken",
        &[],
    )
    .await;
    assert_problem(&taken, StatusCode::CONFLICT, "name_taken");
    let again = keyed(
        &s,
        Method::PUT,
        &item,
        Some(r#"{"name": "EGGS", "qty": 1}"#),
        "r-taken",
        &[],
    )
    .await;
    assert_replay(&taken, &again);

    let stale = keyed(
        &s,
        Method::PATCH,
        &qty,
        Some(r#"{"delta": 1}"#),
        "r-stale",
        &[("if-match", "\"1\"")],
    )
    .await;
    assert_problem(&stale, StatusCode::PRECONDITION_FAILED, "version_mismatch");
    // The fingerprint excludes If-Match: a corrected tag is still a replay.
    let again = keyed(
        &s,
        Method::PATCH,
        &qty,
        Some(r#"{"delta": 1}"#),
        "r-stale",
        &[("if-match", "\"2\"")],
    )
    .await;
    assert_replay(&stale, &again);

    let missing = format!("/items/{}/qty", uuid::Uuid::now_v7());
    let gone = keyed(
        &s,
        Method::PATCH,
        &missing,
        Some(r#"{"delta": 1}"#),
        "r-404",
        &[],
    )
    .await;
    assert_problem(&gone, StatusCode::NOT_FOUND, "not_found");
    let again = keyed(
        &s,
        Method::PATCH,
        &missing,
        Some(r#"{"delta": 1}"#),
        "r-404",
        &[],
    )
    .await;
    assert_replay(&gone, &again);

    let tx = json!({"ops": [{"item": id, "delta": -100}]}).to_string();
    let failed = keyed(&s, Method::POST, "/transactions", Some(&tx), "r-tx", &[]).await;
    assert_problem(&failed, StatusCode::BAD_REQUEST, "qty_below_zero");
    assert_eq!(failed.body["op_index"], 0);
    let again = keyed(&s, Method::POST, "/transactions", Some(&tx), "r-tx", &[]).await;
    assert_replay(&failed, &again);

    let dup = keyed(
        &s,
        Method::POST,
        "/items",
        Some(r#"{"name": "Milk"}"#),
        "r-409",
        &[],
    )
    .await;
    assert_problem(&dup, StatusCode::CONFLICT, "name_taken");
    let again = keyed(
        &s,
        Method::POST,
        "/items",
        Some(r#"{"name": "Milk"}"#),
        "r-409",
        &[],
    )
    .await;
    assert_replay(&dup, &again);

    assert_eq!(
        qty_version(&s, "alice", &id).await,
        (11, 2),
        "nothing else applied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reusing_a_key_for_another_request_is_422() {
    // Goal: same key with another body, route, item or method is 422
    // `idempotency_key_reused` and changes nothing.
    let s = TestServer::start().await;
    let id = id_of(&s.create("alice", "milk", 1).await);
    let other = id_of(&s.create("alice", "eggs", 1).await);
    let qty = format!("/items/{id}/qty");
    let first = keyed(&s, Method::PATCH, &qty, Some(r#"{"delta": 1}"#), "k", &[]).await;
    assert_eq!(first.status, StatusCode::OK);
    let before = all_items(&s, "alice").await;
    let other_qty = format!("/items/{other}/qty");
    let item = format!("/items/{id}");
    let tx = json!({"ops": [{"item": id, "delta": 1}]}).to_string();
    let cases: Vec<(Method, &str, Option<&str>)> = vec![
        (Method::PATCH, &qty, Some(r#"{"delta": 2}"#)),
        (Method::PATCH, &qty, Some(r#"{"delta": -1}"#)),
        (Method::PATCH, &other_qty, Some(r#"{"delta": 1}"#)),
        (Method::PUT, &item, Some(r#"{"name": "milk", "qty": 2}"#)),
        (Method::DELETE, &item, None),
        (Method::POST, "/items", Some(r#"{"name": "new"}"#)),
        (Method::POST, "/transactions", Some(&tx)),
    ];
    for (method, path, body) in cases {
        let r = keyed(&s, method.clone(), path, body, "k", &[]).await;
        assert_problem(
            &r,
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
        );
        assert_eq!(all_items(&s, "alice").await, before, "{method} {path}");
    }
    // The original still replays.
    let again = keyed(&s, Method::PATCH, &qty, Some(r#"{"delta": 1}"#), "k", &[]).await;
    assert_replay(&first, &again);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_have_one_effect() {
    // Goal: 64 simultaneous requests with one key apply once and all get
    // the same answer. Method: a barrier, then count replay headers and
    // read the item.
    let s = Arc::new(TestServer::start().await);
    let id = id_of(&s.create("alice", "milk", 1).await);
    for (route, body) in [
        (format!("/items/{id}/qty"), r#"{"delta": 5}"#.to_string()),
        (
            "/items".to_string(),
            r#"{"name": "bread", "qty": 2}"#.to_string(),
        ),
    ] {
        let method = if route == "/items" {
            Method::POST
        } else {
            Method::PATCH
        };
        let key = format!("same-{}", route.len());
        let start = Arc::new(tokio::sync::Barrier::new(64));
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let (s, start, route, body, key, method) = (
                    s.clone(),
                    start.clone(),
                    route.clone(),
                    body.clone(),
                    key.clone(),
                    method.clone(),
                );
                tokio::spawn(async move {
                    start.wait().await;
                    keyed(&s, method, &route, Some(&body), &key, &[]).await
                })
            })
            .collect();
        let mut answers = Vec::new();
        for t in tasks {
            answers.push(t.await.unwrap());
        }
        let originals: Vec<&Resp> = answers
            .iter()
            .filter(|r| r.header("idempotent-replayed").is_none())
            .collect();
        assert_eq!(originals.len(), 1, "{route}: exactly one original");
        let first = originals[0];
        assert!(first.status.is_success(), "{}", first.raw);
        for r in &answers {
            assert_eq!(r.status, first.status);
            assert_eq!(r.raw, first.raw);
            assert_eq!(r.header("etag"), first.header("etag"));
            assert_eq!(r.header("location"), first.header("location"));
        }
    }
    assert_eq!(
        qty_version(&s, "alice", &id).await,
        (6, 2),
        "PATCH applied once"
    );
    assert_eq!(all_items(&s, "alice").await.len(), 2, "POST applied once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_per_owner() {
    // Goal: a key of alice never answers or blocks bob.
    let s = TestServer::start().await;
    let a = id_of(&s.create("alice", "milk", 1).await);
    let b = id_of(&s.create("bob", "milk", 1).await);
    let ra = keyed_as(
        &s,
        "alice",
        Method::PATCH,
        &format!("/items/{a}/qty"),
        Some(r#"{"delta": 1}"#),
        "shared",
        &[],
    )
    .await;
    assert_eq!(ra.status, StatusCode::OK);
    // bob: the same key on the same-shaped request executes for bob...
    let rb = keyed_as(
        &s,
        "bob",
        Method::PATCH,
        &format!("/items/{b}/qty"),
        Some(r#"{"delta": 1}"#),
        "shared",
        &[],
    )
    .await;
    assert_eq!(rb.status, StatusCode::OK);
    assert_eq!(rb.header("idempotent-replayed"), None);
    // ...and bob sending alice's exact request is bob's own (404), not a replay.
    let rx = keyed_as(
        &s,
        "bob",
        Method::PATCH,
        &format!("/items/{a}/qty"),
        Some(r#"{"delta": 1}"#),
        "other",
        &[],
    )
    .await;
    assert_problem(&rx, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(qty_version(&s, "alice", &a).await, (2, 2));
    assert_eq!(qty_version(&s, "bob", &b).await, (2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_keys_are_400_and_change_nothing() {
    // Goal: keys outside 1-255 visible ASCII are refused before anything
    // runs; the sf-string form `"abc"` is the key `abc`.
    let s = TestServer::start().await;
    let id = id_of(&s.create("alice", "milk", 1).await);
    let path = format!("/items/{id}/qty");
    let long = "k".repeat(256);
    for bad in [
        "",
        "a b",
        " a b ",
        long.as_str(),
        "\"\"",
        "\"abc",
        "\"a\"b\"",
    ] {
        let r = s
            .http
            .patch(format!("{}{}", s.base, path))
            .bearer_auth(s.token("alice"))
            .header("content-type", "application/json")
            .header(
                "idempotency-key",
                reqwest::header::HeaderValue::from_bytes(bad.as_bytes()).unwrap(),
            )
            .body(r#"{"delta": 1}"#)
            .send()
            .await
            .unwrap();
        let r = common::read(r).await;
        assert_problem(&r, StatusCode::BAD_REQUEST, "invalid_idempotency_key");
    }
    for bad in ["ключ".as_bytes(), b"caf\xe9"] {
        let r = s
            .http
            .patch(format!("{}{}", s.base, path))
            .bearer_auth(s.token("alice"))
            .header("content-type", "application/json")
            .header(
                "idempotency-key",
                reqwest::header::HeaderValue::from_bytes(bad).unwrap(),
            )
            .body(r#"{"delta": 1}"#)
            .send()
            .await
            .unwrap();
        let r = common::read(r).await;
        assert_problem(&r, StatusCode::BAD_REQUEST, "invalid_idempotency_key");
    }
    // Two keys at once.
    let r = Req::new(Method::PATCH, &path, "alice")
        .json(r#"{"delta": 1}"#)
        .header("idempotency-key", "a")
        .header("idempotency-key", "b")
        .send(&s)
        .await;
    assert_problem(&r, StatusCode::BAD_REQUEST, "invalid_idempotency_key");
    // On every keyed route.
    for (method, p, body) in [
        (Method::POST, "/items".to_string(), Some(r#"{"name": "x"}"#)),
        (
            Method::PUT,
            format!("/items/{id}"),
            Some(r#"{"name": "x", "qty": 1}"#),
        ),
        (Method::DELETE, format!("/items/{id}"), None),
        (
            Method::POST,
            "/transactions".to_string(),
            Some(r#"{"ops": [{"item": "00000000-0000-0000-0000-000000000000", "delta": 1}]}"#),
        ),
    ] {
        let r = keyed(&s, method, &p, body, "a b", &[]).await;
        assert_problem(&r, StatusCode::BAD_REQUEST, "invalid_idempotency_key");
    }
    assert_eq!(
        qty_version(&s, "alice", &id).await,
        (1, 1),
        "nothing changed"
    );
    assert_eq!(all_items(&s, "alice").await.len(), 1);

    // 255 characters are fine; `"abc"` and `abc` are one key.
    let ok = "k".repeat(255);
    let r = keyed(&s, Method::PATCH, &path, Some(r#"{"delta": 1}"#), &ok, &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.raw);
    let quoted = keyed(
        &s,
        Method::PATCH,
        &path,
        Some(r#"{"delta": 2}"#),
        "\"abc\"",
        &[],
    )
    .await;
    assert_eq!(quoted.status, StatusCode::OK, "{}", quoted.raw);
    let bare = keyed(
        &s,
        Method::PATCH,
        &path,
        Some(r#"{"delta": 2}"#),
        "abc",
        &[],
    )
    .await;
    assert_replay(&quoted, &bare);
    let reused = keyed(
        &s,
        Method::PATCH,
        &path,
        Some(r#"{"delta": 3}"#),
        "abc",
        &[],
    )
    .await;
    assert_problem(
        &reused,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    );
    assert_eq!(qty_version(&s, "alice", &id).await, (4, 3));
}

/// What, Content-Type, body, owner (None: no token).
type Refusal<'a> = (&'a str, Option<&'a str>, Vec<u8>, Option<&'a str>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_before_the_actor_store_nothing() {
    // Goal: a request refused before the state machine (bad body, bad
    // value, 401, 413, 415) does not consume its key. Method: after each
    // refusal, the same key with a good (different) request executes.
    let s = TestServer::start().await;
    let id = id_of(&s.create("alice", "milk", 1).await);
    let path = format!("/items/{id}/qty");
    let mut n = 0;
    let mut expect_qty = 1;
    let mut big = br#"{"delta": 1}"#.to_vec();
    big.resize(64 * 1024 + 1, b' ');
    let refusals: Vec<Refusal> = vec![
        (
            "bad json",
            Some("application/json"),
            b"{".to_vec(),
            Some("alice"),
        ),
        (
            "bad shape",
            Some("application/json"),
            br#"{"delta": true}"#.to_vec(),
            Some("alice"),
        ),
        (
            "out of range",
            Some("application/json"),
            br#"{"delta": 9007199254740992}"#.to_vec(),
            Some("alice"),
        ),
        (
            "415",
            Some("text/plain"),
            br#"{"delta": 1}"#.to_vec(),
            Some("alice"),
        ),
        ("413", Some("application/json"), big, Some("alice")),
        (
            "401",
            Some("application/json"),
            br#"{"delta": 1}"#.to_vec(),
            None,
        ),
    ];
    for (what, ct, body, owner) in refusals {
        n += 1;
        let key = format!("pre-{n}");
        let mut req = s
            .http
            .patch(format!("{}{}", s.base, path))
            .header("idempotency-key", &key)
            .body(body);
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        if let Some(o) = owner {
            req = req.bearer_auth(s.token(o));
        }
        let r = common::read(req.send().await.unwrap()).await;
        assert!(r.status.is_client_error(), "{what}: {}", r.raw);
        assert_eq!(qty_version(&s, "alice", &id).await.0, expect_qty, "{what}");
        let good = keyed(&s, Method::PATCH, &path, Some(r#"{"delta": 2}"#), &key, &[]).await;
        assert_eq!(good.status, StatusCode::OK, "{what}: {}", good.raw);
        assert_eq!(good.header("idempotent-replayed"), None, "{what}");
        expect_qty += 2;
        assert_eq!(good.body["qty"], expect_qty);
    }
    // POST with an invalid name, and a transaction with 0 ops, store
    // nothing either.
    let r = keyed(
        &s,
        Method::POST,
        "/items",
        Some(r#"{"name": "  "}"#),
        "pre-name",
        &[],
    )
    .await;
    assert_problem(&r, StatusCode::BAD_REQUEST, "invalid_body");
    let r = keyed(
        &s,
        Method::POST,
        "/items",
        Some(r#"{"name": "ok"}"#),
        "pre-name",
        &[],
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.raw);
    let r = keyed(
        &s,
        Method::POST,
        "/transactions",
        Some(r#"{"ops": []}"#),
        "pre-tx",
        &[],
    )
    .await;
    assert_problem(&r, StatusCode::BAD_REQUEST, "invalid_body");
    let tx = json!({"ops": [{"item": id, "delta": 1}]}).to_string();
    let r = keyed(&s, Method::POST, "/transactions", Some(&tx), "pre-tx", &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.raw);
}

const SHORT_TTL: Duration = Duration::from_millis(400);

fn short_ttl(c: &mut countiq::node::NodeConfig) {
    c.actor.key_ttl = SHORT_TTL;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_expire_after_their_ttl() {
    // Goal: after the TTL the same key executes again (even with another
    // body). Method: a server with a 400 ms TTL; the replay check runs only
    // if it certainly happened within the TTL (measured from before the
    // first request), and the expiry check after waiting out the TTL from
    // the first answer; so no outcome depends on scheduling luck.
    let s = TestServer::start_with(short_ttl).await;
    let id = id_of(&s.create("alice", "milk", 1).await);
    let path = format!("/items/{id}/qty");
    let sent = Instant::now();
    let first = keyed(
        &s,
        Method::PATCH,
        &path,
        Some(r#"{"delta": 1}"#),
        "ttl",
        &[],
    )
    .await;
    let answered = Instant::now();
    assert_eq!(first.status, StatusCode::OK);
    let again = keyed(
        &s,
        Method::PATCH,
        &path,
        Some(r#"{"delta": 1}"#),
        "ttl",
        &[],
    )
    .await;
    let mut expected_qty = 2;
    if sent.elapsed() < SHORT_TTL {
        assert_replay(&first, &again);
    } else if again.header("idempotent-replayed").is_none() {
        expected_qty += 1; // too slow to tell; it may have expired already
    }
    // The key expires at most TTL after the first answer.
    tokio::time::sleep_until((answered + SHORT_TTL + Duration::from_millis(50)).into()).await;
    let later = keyed(
        &s,
        Method::PATCH,
        &path,
        Some(r#"{"delta": 1}"#),
        "ttl",
        &[],
    )
    .await;
    assert_eq!(later.status, StatusCode::OK, "{}", later.raw);
    assert_eq!(
        later.header("idempotent-replayed"),
        None,
        "expired key runs again"
    );
    expected_qty += 1;
    assert_eq!(later.body["qty"], expected_qty);
    // An expired key may be used for a different request.
    tokio::time::sleep(SHORT_TTL + Duration::from_millis(50)).await;
    let other = keyed(
        &s,
        Method::PATCH,
        &path,
        Some(r#"{"delta": 10}"#),
        "ttl",
        &[],
    )
    .await;
    assert_eq!(other.status, StatusCode::OK, "{}", other.raw);
    assert_eq!(other.body["qty"], expected_qty + 10);
}
