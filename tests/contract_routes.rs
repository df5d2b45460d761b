//! Goal: every route of API.md answers as the contract says, and every error
//! is an RFC 9457 problem document with its stable code. Method: a real
//! server on port 0 driven by a plain HTTP client, the way the hidden
//! black-box tests drive it; tokens for the 401 cases are crafted by hand.
mod common;
mod support;

use base64::Engine;
use common::TestServer;
use reqwest::{Method, StatusCode};
use serde_json::json;
use support::{all_items, assert_problem, id_of, qty_version, Req};

const QTY_MAX: i64 = countiq::domain::QTY_MAX as i64;

fn b64(v: &serde_json::Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An HS256 JWT over arbitrary header and claims, signed with `secret`.
fn hs256(header: serde_json::Value, claims: serde_json::Value, secret: &[u8]) -> String {
    hmac_jwt(jsonwebtoken::Algorithm::HS256, &header, &claims, secret)
}

/// A JWT over arbitrary header and claims, HMAC-signed with `alg`
/// (whatever the header says, so tests can lie in it).
fn hmac_jwt(
    alg: jsonwebtoken::Algorithm,
    header: &serde_json::Value,
    claims: &serde_json::Value,
    secret: &[u8],
) -> String {
    let input = format!("{}.{}", b64(header), b64(claims));
    let key = jsonwebtoken::EncodingKey::from_secret(secret);
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &key, alg).unwrap();
    format!("{input}.{sig}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_get_and_headers() {
    // Goal: POST gives 201 + Location + ETag and the item; GET returns the
    // same item. Method: compare the two bodies field by field.
    let s = TestServer::start().await;
    let r = Req::new(Method::POST, "/items", "alice")
        .json(r#"{"name": "  milk ", "qty": 3}"#)
        .send(&s)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.raw);
    let id = id_of(&r.body);
    assert_eq!(r.header("location"), Some(format!("/items/{id}").as_str()));
    assert_eq!(r.header("etag"), Some("\"1\""));
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    assert_eq!(r.body["name"], "milk", "names are trimmed");
    assert_eq!(r.body["qty"], 3);
    assert_eq!(r.body["version"], 1);
    let uuid = uuid::Uuid::parse_str(&id).expect("id is a uuid");
    assert_eq!(uuid.get_version_num(), 7, "ids are UUID v7");
    for f in ["created_at", "updated_at"] {
        let t = r.body[f].as_str().unwrap();
        humantime::parse_rfc3339(t).unwrap_or_else(|e| panic!("{f} {t}: {e}"));
    }
    let g = s.get("alice", &id).await;
    assert_eq!(g.status, StatusCode::OK);
    assert_eq!(g.header("etag"), Some("\"1\""));
    assert_eq!(g.body, r.body);

    // qty defaults to 0; the largest qty is accepted.
    let r = Req::new(Method::POST, "/items", "alice")
        .json(r#"{"name": "eggs"}"#)
        .send(&s)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.raw);
    assert_eq!(r.body["qty"], 0);
    let r = Req::new(Method::POST, "/items", "alice")
        .json(&format!(r#"{{"name": "max", "qty": {QTY_MAX}}}"#))
        .send(&s)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.raw);
    assert_eq!(r.body["qty"], QTY_MAX);

    // Duplicate names, case-insensitive after trimming: 409.
    let r = Req::new(Method::POST, "/items", "alice")
        .json(r#"{"name": " MILK", "qty": 1}"#)
        .send(&s)
        .await;
    assert_problem(&r, StatusCode::CONFLICT, "name_taken");
    assert_eq!(all_items(&s, "alice").await.len(), 3);

    // GET of a missing item and of a malformed id: 404.
    let missing = uuid::Uuid::now_v7().to_string();
    assert_problem(
        &s.get("alice", &missing).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_problem(
        &s.get("alice", "nope").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_problem(
        &s.get("alice", "%FF").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_through_everything_once_in_a_stable_order() {
    // Goal: paging with limit/cursor visits every item exactly once, in the
    // same order every time, and the default limit is 100. Method: create
    // 257 items, page with several limits, compare with one big page.
    let s = TestServer::start().await;
    let mut created = Vec::new();
    for i in 0..257 {
        created.push(id_of(&s.create("alice", &format!("item-{i}"), i).await));
    }
    let one_page = Req::new(Method::GET, "/items?limit=1000", "alice")
        .send(&s)
        .await;
    assert_eq!(one_page.status, StatusCode::OK);
    assert_eq!(one_page.body["next_cursor"], serde_json::Value::Null);
    let order: Vec<String> = one_page.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(id_of)
        .collect();
    assert_eq!(order.len(), 257);
    assert_eq!(order, created, "stable order is creation order (UUID v7)");

    let default = Req::new(Method::GET, "/items", "alice").send(&s).await;
    assert_eq!(default.body["items"].as_array().unwrap().len(), 100);
    assert!(default.body["next_cursor"].is_string());

    for limit in [1, 7, 100, 256, 257] {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let path = match &cursor {
                Some(c) => format!("/items?limit={limit}&cursor={c}"),
                None => format!("/items?limit={limit}"),
            };
            let r = Req::new(Method::GET, path, "alice").send(&s).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.raw);
            let items = r.body["items"].as_array().unwrap();
            assert!(items.len() <= limit);
            seen.extend(items.iter().map(id_of));
            pages += 1;
            assert!(pages <= 300, "paging must end");
            match r.body["next_cursor"].as_str() {
                Some(c) => {
                    assert_eq!(items.len(), limit, "only a full page has a next one");
                    cursor = Some(c.to_string());
                }
                None => break,
            }
        }
        assert_eq!(seen, order, "limit {limit}");
    }

    for bad in ["0", "1001", "-1", "abc", "", "1.5"] {
        let r = Req::new(Method::GET, format!("/items?limit={bad}"), "alice")
            .send(&s)
            .await;
        assert_problem(&r, StatusCode::BAD_REQUEST, "invalid_limit");
    }
    for bad in ["garbage!", "AAAA", "%20"] {
        let r = Req::new(Method::GET, format!("/items?cursor={bad}"), "alice")
            .send(&s)
            .await;
        assert_problem(&r, StatusCode::BAD_REQUEST, "invalid_cursor");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_replaces_with_preconditions() {
    // Goal: PUT is a full replacement guarded by name uniqueness and
    // If-Match. Method: each refusal is followed by a GET showing no change.
    let s = TestServer::start().await;
    let id = id_of(&s.create("alice", "milk", 3).await);
    s.create("alice", "eggs", 1).await;
    let path = format!("/items/{id}");

    let r = Req::new(Method::PUT, &path, "alice")
        .json(r#"{"name": "Oat milk", "qty": 10}"#)
        .send(&s)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.raw);
    assert_eq!(r.body["name"], "Oat milk");
    assert_eq!(r.body["qty"], 10);
    assert_eq!(r.body["version"], 2);
    assert_eq!(r.header("etag"), Some("\"2\""));

    // Renaming to its own name in another case is fine.
    let r = Req::new(Method::PUT, &path, "alice")
        .json(r#"{"name": "OAT MILK", "qty": 10}"#)
        .send(&s)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.raw);
    assert_eq!(r.body["version"], 3);

    let r = Req::new(Method::PUT, &path, "alice")
        .json(r#"{"name": "Eggs", "qty": 1}"#)
        .send(&s)
        .await;
    assert_problem(&r, StatusCode::CONFLICT, "name_taken");
    assert_eq!(qty_version(&s, "alice", &id).await, (10, 3));

    for stale in ["\"2\"", "W/\"3\"", "3", "\"abc\""] {
        let r = Req::new(Method::PUT, &path, "alice")
            .json(r#"{"name": "x", "qty": 0}"#)
            .header("if-match", stale)
            .send(&s)
            .await;
        assert_problem(&r, StatusCode::PRECONDITION_FAILED, "version_mismatch");
        assert_eq!(qty_version(&s, "alice", &id).await, (10, 3), "{stale}");
    }
    let r = Req::new(Method::PUT, &path, "alice")
        .json(r#"{"name": "y", "qty": 4}"#)
        .header("if-match", "\"3\"")
        .send(&s)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.raw);
    let r = Req::new(Method::PUT, &path, "alice")
        .json(r#"{"name": "z", "qty": 5}"#)
        .header("if-match", "*")
        .send(&s)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.raw);
    assert_eq!(r.body["version"], 5);
    let r = Req::new(Method::PUT, &path, "alice")
        .json(r#"{"name": "w", "qty": 5}"#)
        .header("if-match", "\"1\", \"5\"")
        .send(&s)
        .await;
    assert_eq!(r.status, StatusCode::OK, "a list matches if one tag does");

    // Both fields are required.
    for body in [r#"{"name": "q"}"#, r#"{"qty": 1}"#] {
        let r = Req::new(Method::PUT, &path, "alice")
            .json(body)
            .send(&s)
            .await;
        assert_problem(&r, StatusCode::BAD_REQUEST, "invalid_body");
    }
    assert_eq!(qty_version(&s, "alice", &id).await, (5, 6));

    // Missing and malformed ids: 404.
    let missing = format!("/items/{}", uuid::Uuid::now_v7());
    for p in [missing.as_str(), "/items/not-a-uuid"] {
        let r = Req::new(Method::PUT, p, "alice")
            .json(r#"{"name": "q", "qty": 1}"#)
            .send(&s)
            .await;
        assert_problem(&r, StatusCode::NOT_FOUND, "not_found");
    }
    assert_eq!(all_items(&s, "alice").await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_adjusts_within_bounds() {
    // Goal: PATCH adds delta; going below 0 or above 2^53-1 is refused with
    // its code and changes nothing; If-Match guards it. Method: boundary
    // values, then a GET after every refusal.
    let s = TestServer::start().await;
    let id = id_of(&s.create("alice", "milk", 3).await);
    let r = s.patch("alice", &id, 2).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.raw);
    assert_eq!(r.body["qty"], 5);
    assert_eq!(r.body["version"], 2);
    assert_eq!(r.header("etag"), Some("\"2\""));
    let r = s.patch("alice", &id, -5).await;
    assert_eq!(r.body["qty"], 0, "down to exactly zero");
    let r = s.patch("alice", &id, 0).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["version"], 4, "a zero delta is still a change");

    assert_problem(
        &s.patch("alice", &id, -1).await,
        StatusCode::BAD_REQUEST,
        "qty_below_zero",
    );
    assert_eq!(qty_version(&s, "alice", &id).await, (0, 4));
    let r = s.patch("alice", &id, QTY_MAX).await;
    assert_eq!(r.body["qty"], QTY_MAX, "up to exactly the max");
    assert_problem(
        &s.patch("alice", &id, 1).await,
        StatusCode::BAD_REQUEST,
        "qty_overflow",
    );
    assert_eq!(qty_version(&s, "alice", &id).await, (QTY_MAX as u64, 5));
    assert_eq!(s.patch("alice", &id, -QTY_MAX).await.body["qty"], 0);
    assert_problem(
        &s.patch("alice", &id, -QTY_MAX).await,
        StatusCode::BAD_REQUEST,
        "qty_below_zero",
    );

    let path = format!("/items/{id}/qty");
    let r = Req::new(Method::PATCH, &path, "alice")
        .json(r#"{"delta": 1}"#)
        .header("if-match", "\"5\"")
        .send(&s)
        .await;
    assert_problem(&r, StatusCode::PRECONDITION_FAILED, "version_mismatch");
    assert_eq!(qty_version(&s, "alice", &id).await, (0, 6));
    let r = Req::new(Method::PATCH, &path, "alice")
        .json(r#"{"delta": 1}"#)
        .header("if-match", "\"6\"")
        .send(&s)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.raw);
    let r = Req::new(Method::PATCH, &path, "alice")
        .json(r#"{"delta": 1}"#)
        .header("if-match", "*")
        .send(&s)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.raw);
    assert_eq!(qty_version(&s, "alice", &id).await, (2, 8));

    let missing = uuid::Uuid::now_v7().to_string();
    assert_problem(
        &s.patch("alice", &missing, 1).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_problem(
        &s.patch("alice", "xyz", 1).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_is_always_204() {
    // Goal: DELETE answers 204 for an existing, a gone, a never-existing and
    // a malformed id, and only the first removes anything. Method: counts.
    let s = TestServer::start().await;
    let id = id_of(&s.create("alice", "milk", 3).await);
    let keep = id_of(&s.create("alice", "eggs", 3).await);
    for path in [
        format!("/items/{id}"),
        format!("/items/{id}"),
        format!("/items/{}", uuid::Uuid::now_v7()),
        "/items/not-a-uuid".to_string(),
        "/items/%FF".to_string(),
    ] {
        let r = Req::new(Method::DELETE, &path, "alice").send(&s).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{path}: {}", r.raw);
        assert!(r.raw.is_empty(), "204 has no body");
    }
    assert_problem(
        &s.get("alice", &id).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let left = all_items(&s, "alice").await;
    assert_eq!(left.keys().collect::<Vec<_>>(), vec![&keep]);
    // The name is free again.
    s.create("alice", "MILK", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_route() {
    // Goal: POST /transactions applies all ops and returns the touched
    // items; a failing op reports its index. (Deep checks: transactions.rs.)
    let s = TestServer::start().await;
    let a = id_of(&s.create("alice", "a", 1).await);
    let b = id_of(&s.create("alice", "b", 1).await);
    let body = json!({"ops": [{"item": a, "delta": 2}, {"item": b, "delta": -1}]});
    let r = Req::new(Method::POST, "/transactions", "alice")
        .json(&body.to_string())
        .send(&s)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.raw);
    assert_eq!(r.body["items"][0]["qty"], 3);
    assert_eq!(r.body["items"][1]["qty"], 0);
    let body = json!({"ops": [{"item": a, "delta": 1}, {"item": b, "delta": -1}]});
    let r = Req::new(Method::POST, "/transactions", "alice")
        .json(&body.to_string())
        .send(&s)
        .await;
    assert_problem(&r, StatusCode::BAD_REQUEST, "qty_below_zero");
    assert_eq!(r.body["op_index"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_wrong_methods_are_json() {
    // Goal: the router's own 404 and 405 are problem documents; 405 lists
    // the allowed methods. Method: a table of paths and methods.
    let s = TestServer::start().await;
    for path in [
        "/nope",
        "/items/x/y",
        "/items/x/qty/z",
        "/",
        "/transactions/1",
    ] {
        let r = Req::new(Method::GET, path, "alice").send(&s).await;
        assert_problem(&r, StatusCode::NOT_FOUND, "not_found");
    }
    let r = s.send(Method::GET, "/nope", None, None, &[]).await;
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "unknown route without a token"
    );
    let id = uuid::Uuid::now_v7();
    let cases = [
        (Method::DELETE, "/items".to_string(), vec!["GET", "POST"]),
        (
            Method::PATCH,
            format!("/items/{id}"),
            vec!["GET", "PUT", "DELETE"],
        ),
        (Method::GET, format!("/items/{id}/qty"), vec!["PATCH"]),
        (Method::GET, "/transactions".to_string(), vec!["POST"]),
        (Method::POST, "/healthz".to_string(), vec!["GET"]),
    ];
    for (method, path, allowed) in cases {
        let r = Req::new(method.clone(), &path, "alice").send(&s).await;
        assert_problem(&r, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
        let allow = r
            .header("allow")
            .unwrap_or_else(|| panic!("{method} {path}: no Allow"));
        let allow: Vec<String> = allow.split(',').map(|m| m.trim().to_string()).collect();
        for m in allowed {
            assert!(
                allow.iter().any(|a| a == m),
                "{method} {path}: Allow {allow:?} lacks {m}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_token_is_401_with_www_authenticate() {
    // Goal: missing, garbage, wrongly signed, expired, not-yet-valid,
    // alg:none and bad-subject tokens are all refused on every protected
    // route. Method: hand-crafted JWTs (base64url + HMAC), as a client would.
    let s = TestServer::start().await;
    let id = id_of(&s.create("alice", "milk", 3).await);
    let hs = json!({"alg": "HS256", "typ": "JWT"});
    let good = json!({"sub": "alice", "exp": now() + 600});
    let secret = common::SECRET;
    assert_eq!(
        Req::new(Method::GET, "/items", "alice")
            .send(&s)
            .await
            .status,
        StatusCode::OK
    );
    let control = hs256(hs.clone(), good.clone(), secret);
    let r = s
        .http
        .get(format!("{}/items", s.base))
        .bearer_auth(&control)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "a hand-made good token works");

    let tokens: Vec<(&str, Option<String>)> = vec![
        ("missing", None),
        ("garbage", Some("Bearer not-a-jwt".into())),
        ("three garbage parts", Some("Bearer a.b.c".into())),
        ("basic scheme", Some(format!("Basic {control}"))),
        ("empty bearer", Some("Bearer ".into())),
        (
            "wrong secret",
            Some(format!(
                "Bearer {}",
                hs256(
                    hs.clone(),
                    good.clone(),
                    b"another-secret-of-sufficient-length!!"
                )
            )),
        ),
        (
            "expired",
            Some(format!(
                "Bearer {}",
                hs256(
                    hs.clone(),
                    json!({"sub": "alice", "exp": now() - 10}),
                    secret
                )
            )),
        ),
        (
            "no exp",
            Some(format!(
                "Bearer {}",
                hs256(hs.clone(), json!({"sub": "alice"}), secret)
            )),
        ),
        (
            "not yet valid",
            Some(format!(
                "Bearer {}",
                hs256(
                    hs.clone(),
                    json!({"sub": "alice", "exp": now() + 600, "nbf": now() + 300}),
                    secret
                )
            )),
        ),
        (
            "alg none",
            Some(format!(
                "Bearer {}.{}.",
                b64(&json!({"alg": "none", "typ": "JWT"})),
                b64(&good)
            )),
        ),
        (
            "alg none with a signature",
            Some(format!(
                "Bearer {}.{}",
                b64(&json!({"alg": "none"})),
                control.split_once('.').unwrap().1
            )),
        ),
        (
            "alg HS512",
            Some(format!(
                "Bearer {}",
                hmac_jwt(
                    jsonwebtoken::Algorithm::HS512,
                    &json!({"alg": "HS512"}),
                    &good,
                    secret
                )
            )),
        ),
        (
            "tampered claims",
            Some(format!(
                "Bearer {}.{}.{}",
                b64(&hs),
                b64(&json!({"sub": "bob", "exp": now() + 600})),
                control.rsplit_once('.').unwrap().1
            )),
        ),
        (
            "bad subject",
            Some(format!(
                "Bearer {}",
                hs256(
                    hs.clone(),
                    json!({"sub": "a/b", "exp": now() + 600}),
                    secret
                )
            )),
        ),
    ];
    let routes = [
        (Method::GET, "/items".to_string(), None),
        (Method::POST, "/items".to_string(), Some(r#"{"name": "x"}"#)),
        (Method::GET, format!("/items/{id}"), None),
        (
            Method::PUT,
            format!("/items/{id}"),
            Some(r#"{"name": "x", "qty": 0}"#),
        ),
        (
            Method::PATCH,
            format!("/items/{id}/qty"),
            Some(r#"{"delta": 1}"#),
        ),
        (Method::DELETE, format!("/items/{id}"), None),
        (
            Method::POST,
            "/transactions".to_string(),
            Some(r#"{"ops": [{"item": "00000000-0000-0000-0000-000000000000", "delta": 1}]}"#),
        ),
    ];
    for (what, auth) in &tokens {
        for (method, path, body) in &routes {
            let mut req = s
                .http
                .request(method.clone(), format!("{}{}", s.base, path));
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            if let Some(b) = body {
                req = req
                    .header("content-type", "application/json")
                    .body(b.to_string());
            }
            let r = common::read(req.send().await.unwrap()).await;
            assert_problem(&r, StatusCode::UNAUTHORIZED, "unauthorized");
            let www = r.header("www-authenticate").unwrap_or("");
            assert!(
                www.starts_with("Bearer"),
                "{what} {method} {path}: WWW-Authenticate {www:?}"
            );
        }
    }
    assert_eq!(
        qty_version(&s, "alice", &id).await,
        (3, 1),
        "nothing changed"
    );
    assert_eq!(all_items(&s, "alice").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_type_and_size_limits() {
    // Goal: a body route refuses a non-JSON or missing Content-Type (415)
    // and a body over 64 KiB (413), and accepts exactly 64 KiB. Method:
    // raw bodies, then a GET to prove nothing changed.
    let s = TestServer::start().await;
    let id = id_of(&s.create("alice", "milk", 3).await);
    let routes = [
        (
            Method::POST,
            "/items".to_string(),
            r#"{"name": "x"}"#.to_string(),
        ),
        (
            Method::PUT,
            format!("/items/{id}"),
            r#"{"name": "renamed", "qty": 9}"#.to_string(),
        ),
        (
            Method::PATCH,
            format!("/items/{id}/qty"),
            r#"{"delta": 1}"#.to_string(),
        ),
        (
            Method::POST,
            "/transactions".to_string(),
            format!(r#"{{"ops": [{{"item": "{id}", "delta": 1}}]}}"#),
        ),
    ];
    for (method, path, body) in &routes {
        for ct in [
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            Some("application/jsonx"),
            None,
        ] {
            let r = s
                .send_raw(method.clone(), path, "alice", ct, body.clone().into_bytes())
                .await;
            assert_problem(
                &r,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
            );
        }
        let r = s
            .send_raw(
                method.clone(),
                path,
                "alice",
                Some("application/json; charset=utf-8"),
                body.clone().into_bytes(),
            )
            .await;
        assert!(
            r.status.is_success(),
            "{method} {path} with charset: {}",
            r.raw
        );
    }
    // The state after the accepted requests; refusals below must keep it.
    let before = all_items(&s, "alice").await;
    let (qty, version) = qty_version(&s, "alice", &id).await;

    // Over the limit: 64 KiB + 1 of valid JSON (padding in whitespace).
    for (method, path, body) in &routes {
        let mut big = body.clone().into_bytes();
        big.resize(64 * 1024 + 1, b' ');
        let r = s
            .send_raw(method.clone(), path, "alice", Some("application/json"), big)
            .await;
        assert_problem(&r, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
        // The unread body makes the connection unusable: the server says so,
        // so a pooling client does not send its next request into it.
        assert_eq!(r.header("connection"), Some("close"), "{method} {path}");
        // Also when the length is not declared up front (chunked).
        let mut big = body.clone().into_bytes();
        big.resize(200 * 1024, b' ');
        let (status, raw) = support::chunked(&s, method.as_str(), path, "alice", &big).await;
        assert_eq!(status, 413, "chunked {method} {path}: {raw}");
        assert!(raw.contains("application/problem+json"), "{raw}");
    }
    assert_eq!(qty_version(&s, "alice", &id).await, (qty, version));
    assert_eq!(all_items(&s, "alice").await, before);

    // Exactly 64 KiB is allowed.
    let mut exact = br#"{"delta": 1}"#.to_vec();
    exact.resize(64 * 1024, b' ');
    let r = s
        .send_raw(
            Method::PATCH,
            &format!("/items/{id}/qty"),
            "alice",
            Some("application/json"),
            exact,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.raw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes() {
    // Goal: /healthz and /readyz answer 200 without a token.
    let s = TestServer::start().await;
    for p in ["/healthz", "/readyz"] {
        let r = s.send(Method::GET, p, None, None, &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{p}: {}", r.raw);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_survives_deletes_between_pages() {
    // Goal: a cursor stays valid when its own item is deleted, and paging
    // then still returns every surviving item exactly once, in order.
    // Method: page by 3, deleting the last item of each page (the cursor's
    // item) before asking for the next; items created meanwhile sort last.
    let s = TestServer::start().await;
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(id_of(&s.create("alice", &format!("p{i}"), 0).await));
    }
    let mut seen = Vec::new();
    let mut deleted = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/items?limit=3&cursor={c}"),
            None => "/items?limit=3".to_string(),
        };
        let r = Req::new(Method::GET, path, "alice").send(&s).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.raw);
        let page: Vec<String> = r.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(id_of)
            .collect();
        seen.extend(page.iter().cloned());
        let Some(next) = r.body["next_cursor"].as_str() else {
            break;
        };
        let last = page.last().unwrap().clone();
        let d = Req::new(Method::DELETE, format!("/items/{last}"), "alice")
            .send(&s)
            .await;
        assert_eq!(d.status, StatusCode::NO_CONTENT);
        deleted.push(last);
        cursor = Some(next.to_string());
        assert!(seen.len() <= 20, "paging must end");
    }
    assert_eq!(
        seen, ids,
        "every item once, in order, although cursors' items are gone"
    );
    let left: Vec<String> = all_items(&s, "alice").await.into_keys().collect();
    let want: Vec<String> = ids.into_iter().filter(|i| !deleted.contains(i)).collect();
    assert_eq!(left, want);
}
