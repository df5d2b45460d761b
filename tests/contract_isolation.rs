//! Goal: an owner only ever sees and changes its own namespace; another
//! owner's item is indistinguishable from a missing one. Method: bob sends
//! every route (with and without keys and preconditions) at alice's item;
//! each answer is compared with the answer for a never-existing id, and
//! alice's whole state is compared before and after.
mod common;
mod support;

use common::TestServer;
use reqwest::{Method, StatusCode};
use serde_json::json;
use support::{all_items, assert_problem, id_of, Req};

/// Method, path, optional JSON body, extra headers.
type Case<'a> = (Method, String, Option<String>, Vec<(&'a str, &'a str)>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_owners_item_is_invisible_and_unchanged() {
    let s = TestServer::start().await;
    let mine = id_of(&s.create("alice", "milk", 5).await);
    s.patch("alice", &mine, 1).await;
    let bobs = id_of(&s.create("bob", "bread", 1).await);
    let alice_before = all_items(&s, "alice").await;
    let bob_before = all_items(&s, "bob").await;
    let never = uuid::Uuid::now_v7().to_string();

    for (n, target) in [&mine, &never].into_iter().enumerate() {
        let key = format!("iso-{n}");
        let cases: Vec<Case> = vec![
            (Method::GET, format!("/items/{target}"), None, vec![]),
            (
                Method::PUT,
                format!("/items/{target}"),
                Some(r#"{"name": "stolen", "qty": 0}"#.into()),
                vec![],
            ),
            (
                Method::PUT,
                format!("/items/{target}"),
                Some(r#"{"name": "stolen", "qty": 0}"#.into()),
                vec![("if-match", "\"2\"")],
            ),
            (
                Method::PUT,
                format!("/items/{target}"),
                Some(r#"{"name": "stolen", "qty": 0}"#.into()),
                vec![("if-match", "*")],
            ),
            (
                Method::PATCH,
                format!("/items/{target}/qty"),
                Some(r#"{"delta": -1}"#.into()),
                vec![],
            ),
            (
                Method::PATCH,
                format!("/items/{target}/qty"),
                Some(r#"{"delta": -100}"#.into()),
                vec![],
            ),
            (
                Method::PATCH,
                format!("/items/{target}/qty"),
                Some(r#"{"delta": 1}"#.into()),
                vec![("if-match", "\"1\""), ("idempotency-key", key.as_str())],
            ),
            (
                Method::POST,
                "/transactions".into(),
                Some(
                    json!({"ops": [{"item": bobs, "delta": 1}, {"item": target, "delta": -1}]})
                        .to_string(),
                ),
                vec![],
            ),
        ];
        for (method, path, body, headers) in cases {
            let mut req = Req::new(method.clone(), &path, "bob");
            if let Some(b) = &body {
                req = req.json(b);
            }
            for (k, v) in headers {
                req = req.header(k, v);
            }
            let r = req.send(&s).await;
            assert_problem(&r, StatusCode::NOT_FOUND, "not_found");
            if path == "/transactions" {
                assert_eq!(r.body["op_index"], 1, "{}", r.raw);
            }
        }
        let r = Req::new(Method::DELETE, format!("/items/{target}"), "bob")
            .send(&s)
            .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);
        let r = Req::new(Method::DELETE, format!("/items/{target}"), "bob")
            .header("idempotency-key", format!("del-{n}"))
            .send(&s)
            .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);
    }
    assert_eq!(
        all_items(&s, "alice").await,
        alice_before,
        "alice unchanged"
    );
    assert_eq!(all_items(&s, "bob").await, bob_before, "bob unchanged");

    // Listing never shows the other owner's items, and a cursor made from
    // alice's id does not open bob's namespace to her items.
    let r = Req::new(Method::GET, "/items", "bob").send(&s).await;
    let ids: Vec<String> = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(id_of)
        .collect();
    assert_eq!(ids, vec![bobs.clone()]);
    let r = Req::new(Method::GET, "/items", "carol").send(&s).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["items"], json!([]));
    assert_eq!(r.body["next_cursor"], serde_json::Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_are_unique_per_owner_not_globally() {
    // Goal: two owners may each have "milk"; one owner may not have it
    // twice (in any case); renames collide only within an owner.
    let s = TestServer::start().await;
    let a = id_of(&s.create("alice", "milk", 1).await);
    let b = id_of(&s.create("bob", "Milk", 2).await);
    assert_ne!(a, b);
    let r = Req::new(Method::POST, "/items", "alice")
        .json(r#"{"name": "MILK"}"#)
        .send(&s)
        .await;
    assert_problem(&r, StatusCode::CONFLICT, "name_taken");
    let bread = id_of(&s.create("bob", "bread", 0).await);
    // alice has "milk"; bob may rename his bread to "milk " only if he has
    // no milk: he has, so 409; after deleting it, 200.
    let r = Req::new(Method::PUT, format!("/items/{bread}"), "bob")
        .json(r#"{"name": "milk ", "qty": 0}"#)
        .send(&s)
        .await;
    assert_problem(&r, StatusCode::CONFLICT, "name_taken");
    Req::new(Method::DELETE, format!("/items/{b}"), "bob")
        .send(&s)
        .await;
    let r = Req::new(Method::PUT, format!("/items/{bread}"), "bob")
        .json(r#"{"name": "milk ", "qty": 0}"#)
        .send(&s)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.raw);
    // alice's milk is untouched by all of this.
    let r = s.get("alice", &a).await;
    assert_eq!(r.body["name"], "milk");
    assert_eq!(r.body["qty"], 1);
    assert_eq!(r.body["version"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_are_scoped_to_the_owner() {
    // Goal: the same key used by two owners guards two separate requests.
    // Method: alice and bob each create with key "k"; both run (201, not a
    // replay of the other's) and each sees only its own item.
    let s = TestServer::start().await;
    let mut ids = Vec::new();
    for owner in ["alice", "bob"] {
        let r = Req::new(Method::POST, "/items", owner)
            .json(r#"{"name": "milk", "qty": 1}"#)
            .header("idempotency-key", "k")
            .send(&s)
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.raw);
        assert_eq!(r.header("idempotent-replayed"), None);
        ids.push(id_of(&r.body));
    }
    assert_ne!(ids[0], ids[1]);
    // Same key, different body for bob: still bob's own key, so a reuse.
    let r = Req::new(Method::POST, "/items", "bob")
        .json(r#"{"name": "other", "qty": 1}"#)
        .header("idempotency-key", "k")
        .send(&s)
        .await;
    assert_problem(
        &r,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    );
    for (owner, id) in [("alice", &ids[0]), ("bob", &ids[1])] {
        let all = all_items(&s, owner).await;
        assert_eq!(all.keys().collect::<Vec<_>>(), vec![id]);
    }
}
