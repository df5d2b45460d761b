//! Goal: the reservation and history routes keep their contract (API.md
//! "Reservations", "History"): holds never make `available` negative,
//! commit and release are exactly-once and key-aware, expired holds are
//! released by the owner's actor, history pages newest first, and all of
//! it survives a restart. Method: a real server on a temp dir, driven over
//! HTTP; every refusal is followed by a read proving nothing changed.
mod common;
mod support;

use std::time::{Duration, Instant};

use common::{Resp, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use support::{assert_problem, id_of, Req};

async fn reserve(s: &TestServer, id: &str, qty: i64, ttl: i64, key: Option<&str>) -> Resp {
    let mut req = Req::new(Method::POST, format!("/items/{id}/reservations"), "alice")
        .json(&json!({"qty": qty, "ttl": ttl}).to_string());
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    req.send(s).await
}

async fn commit(s: &TestServer, rid: &str, key: Option<&str>) -> Resp {
    let mut req = Req::new(Method::POST, format!("/reservations/{rid}/commit"), "alice");
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    req.send(s).await
}

async fn release(s: &TestServer, rid: &str) -> Resp {
    Req::new(Method::DELETE, format!("/reservations/{rid}"), "alice")
        .send(s)
        .await
}

/// (qty, reserved, available, version) of an item.
async fn levels(s: &TestServer, id: &str) -> (u64, u64, u64, u64) {
    let r = s.get("alice", id).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.raw);
    let n = |f: &str| r.body[f].as_u64().unwrap();
    (n("qty"), n("reserved"), n("available"), n("version"))
}

async fn history(s: &TestServer, id: &str, query: &str) -> Resp {
    Req::new(Method::GET, format!("/items/{id}/history{query}"), "alice")
        .send(s)
        .await
}

#[tokio::test]
async fn holds_commit_release_and_refusals() {
    let s = TestServer::start().await;
    let id = id_of(&s.create("alice", "milk", 10).await);

    let r = reserve(&s, &id, 7, 60, None).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.raw);
    let rid = r.body["id"].as_str().unwrap().to_string();
    assert_eq!(
        r.header("location"),
        Some(format!("/reservations/{rid}").as_str())
    );
    assert_eq!(r.body["item_id"], json!(id));
    assert_eq!(
        (
            r.body["item"]["reserved"].clone(),
            r.body["item"]["available"].clone()
        ),
        (json!(7), json!(3))
    );
    assert_eq!(levels(&s, &id).await, (10, 7, 3, 2));

    // Refusals: each names its code and changes nothing.
    assert_problem(
        &reserve(&s, &id, 4, 60, None).await,
        StatusCode::CONFLICT,
        "insufficient_available",
    );
    assert_problem(
        &s.patch("alice", &id, -4).await,
        StatusCode::CONFLICT,
        "insufficient_available",
    );
    let tx = json!({"ops": [{"item": id, "delta": -4}]});
    let r = s
        .send(Method::POST, "/transactions", Some("alice"), Some(tx), &[])
        .await;
    assert_problem(&r, StatusCode::CONFLICT, "insufficient_available");
    assert_eq!(r.body["op_index"], json!(0));
    for bad in [
        json!({"qty": 0, "ttl": 60}),
        json!({"qty": 1, "ttl": 0}),
        json!({"qty": 1, "ttl": 86_401}),
        json!({"qty": 1}),
    ] {
        let r = Req::new(Method::POST, format!("/items/{id}/reservations"), "alice")
            .json(&bad.to_string())
            .send(&s)
            .await;
        assert_problem(&r, StatusCode::BAD_REQUEST, "invalid_body");
    }
    let missing = uuid::Uuid::now_v7();
    assert_problem(
        &reserve(&s, &missing.to_string(), 1, 60, None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_problem(
        &commit(&s, "not-a-uuid", None).await,
        StatusCode::NOT_FOUND,
        "reservation_not_found",
    );
    // Another owner cannot see or commit alice's hold.
    let r = s
        .send(
            Method::POST,
            &format!("/reservations/{rid}/commit"),
            Some("bob"),
            None,
            &[],
        )
        .await;
    assert_problem(&r, StatusCode::NOT_FOUND, "reservation_not_found");
    assert_eq!(
        levels(&s, &id).await,
        (10, 7, 3, 2),
        "refusals change nothing"
    );

    // Commit: qty and reserved fall together, once.
    let r = commit(&s, &rid, Some("c-1")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.raw);
    assert_eq!(
        (r.body["qty"].clone(), r.body["reserved"].clone()),
        (json!(3), json!(0))
    );
    let again = commit(&s, &rid, Some("c-1")).await;
    assert_eq!(
        (again.status, again.raw.as_str()),
        (r.status, r.raw.as_str())
    );
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_problem(
        &commit(&s, &rid, None).await,
        StatusCode::NOT_FOUND,
        "reservation_not_found",
    );
    assert_eq!(release(&s, &rid).await.status, StatusCode::NO_CONTENT);
    assert_eq!(
        levels(&s, &id).await,
        (3, 0, 3, 3),
        "committed exactly once"
    );

    // Release: reserved falls, qty stays; releasing again is still 204.
    let r = reserve(&s, &id, 2, 60, None).await;
    let rid2 = r.body["id"].as_str().unwrap().to_string();
    assert_eq!(release(&s, &rid2).await.status, StatusCode::NO_CONTENT);
    assert_eq!(release(&s, &rid2).await.status, StatusCode::NO_CONTENT);
    assert_eq!(levels(&s, &id).await, (3, 0, 3, 5));
}

#[tokio::test]
async fn expired_holds_are_released_by_the_actor_and_logged() {
    // A 1 s hold; the test waits on the condition (reserved back to 0)
    // with a deadline, polling. The release must come from the actor's
    // timer or from the first message after the expiry, and it must be in
    // the log: after a restart the item and its history are the same.
    let s = TestServer::start().await;
    let id = id_of(&s.create("alice", "eggs", 5).await);
    let r = reserve(&s, &id, 5, 1, None).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.raw);
    let rid = r.body["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (qty, reserved, _, _) = levels(&s, &id).await;
        if reserved == 0 {
            assert_eq!(qty, 5);
            break;
        }
        assert!(Instant::now() < deadline, "the hold never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let h = history(&s, &id, "").await;
    assert_eq!(h.body["entries"][0]["change"], json!("expired"));
    assert_eq!(h.body["entries"][0]["reservation_id"], json!(rid));
    assert_problem(
        &commit(&s, &rid, None).await,
        StatusCode::NOT_FOUND,
        "reservation_not_found",
    );
    let before = (levels(&s, &id).await, h.raw);
    let s = s.restart().await;
    let after = (levels(&s, &id).await, history(&s, &id, "").await.raw);
    assert_eq!(after, before, "the expiry replays from the log");
}

#[tokio::test]
async fn history_pages_newest_first_and_survives_a_restart() {
    let s = TestServer::start().await;
    let id = id_of(&s.create("alice", "flour", 0).await);
    for _ in 0..5 {
        assert_eq!(s.patch("alice", &id, 2).await.status, StatusCode::OK);
    }
    let r = Req::new(Method::PATCH, format!("/items/{id}/qty"), "alice")
        .header("idempotency-key", "p-1")
        .json(r#"{"delta": -1, "reason": "sale", "reference": "order 1042"}"#)
        .send(&s)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    // versions 1 (created) .. 7 (the keyed -1)
    let page = history(&s, &id, "?limit=3").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.raw);
    let versions = |p: &Resp| -> Vec<u64> {
        p.body["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["version"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(versions(&page), [7, 6, 5]);
    let top = &page.body["entries"][0];
    assert_eq!(
        (
            top["change"].clone(),
            top["delta"].clone(),
            top["qty"].clone()
        ),
        (json!("adjusted"), json!(-1), json!(9))
    );
    assert_eq!(top["idempotency_key"], json!("p-1"));
    assert_eq!(
        (&top["reason"], &top["reference"]),
        (&json!("sale"), &json!("order 1042"))
    );
    assert!(page.body["entries"][1].get("idempotency_key").is_none());
    assert_eq!(
        (
            &page.body["entries"][1]["reason"],
            &page.body["entries"][1]["reference"]
        ),
        (&Value::Null, &Value::Null),
        "null when the write had none"
    );
    let cursor = page.body["next_cursor"].as_str().unwrap().to_string();
    let next = history(&s, &id, &format!("?limit=3&cursor={cursor}")).await;
    assert_eq!(versions(&next), [4, 3, 2]);
    let last = history(
        &s,
        &id,
        &format!(
            "?limit=3&cursor={}",
            next.body["next_cursor"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(versions(&last), [1]);
    assert_eq!(last.body["entries"][0]["change"], json!("created"));
    assert_eq!(last.body["next_cursor"], Value::Null);
    assert_problem(
        &history(&s, &id, "?cursor=abc").await,
        StatusCode::BAD_REQUEST,
        "invalid_cursor",
    );
    assert_problem(
        &history(&s, &id, "?limit=0").await,
        StatusCode::BAD_REQUEST,
        "invalid_limit",
    );
    assert_problem(
        &history(&s, &uuid::Uuid::now_v7().to_string(), "").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    // A commit may carry a reason and reference too.
    let hold = reserve(&s, &id, 2, 600, None).await;
    let rid = hold.body["id"].as_str().unwrap().to_string();
    let r = Req::new(Method::POST, format!("/reservations/{rid}/commit"), "alice")
        .json(r#"{"reason": "sale", "reference": "order 1043"}"#)
        .send(&s)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.raw);
    let top = history(&s, &id, "?limit=1").await;
    let e = &top.body["entries"][0];
    assert_eq!(
        (&e["change"], &e["reason"], &e["reference"]),
        (&json!("committed"), &json!("sale"), &json!("order 1043"))
    );
    let before = history(&s, &id, "").await.raw;
    let s = s.restart().await;
    assert_eq!(
        history(&s, &id, "").await.raw,
        before,
        "notes survive a restart"
    );
    // Deleting the item drops its history.
    let r = s
        .send(
            Method::DELETE,
            &format!("/items/{id}"),
            Some("alice"),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_problem(
        &history(&s, &id, "").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
}
