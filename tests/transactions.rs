//! Goal: `POST /transactions` is one atomic, ordered state transition
//! (API.md, issue 8). Method: hand-picked cases for order, repetition,
//! result shape, failure position and the op-count limits, each followed by
//! a full read of the owner's items; then a proptest of random transactions
//! over a few items compared with a reference model, over HTTP.
mod common;
mod support;

use std::collections::BTreeMap;

use common::{Resp, TestServer};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use support::{all_items, assert_problem, id_of, Req};

const QTY_MAX: i64 = countiq::domain::QTY_MAX as i64;

async fn transact(s: &TestServer, owner: &str, ops: &[(&str, i64)]) -> Resp {
    let ops: Vec<Value> = ops
        .iter()
        .map(|(item, delta)| json!({"item": item, "delta": delta}))
        .collect();
    Req::new(Method::POST, "/transactions", owner)
        .json(&json!({ "ops": ops }).to_string())
        .send(s)
        .await
}

/// Send a transaction that must fail with `code` at `op_index`, and prove
/// that nothing changed at all.
async fn fails(s: &TestServer, ops: &[(&str, i64)], status: StatusCode, code: &str, op_index: u64) {
    let before = all_items(s, "alice").await;
    let r = transact(s, "alice", ops).await;
    assert_problem(&r, status, code);
    assert_eq!(r.body["op_index"], op_index, "{}", r.raw);
    assert_eq!(
        all_items(s, "alice").await,
        before,
        "a failed transaction changed state"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_apply_in_order_and_each_item_is_returned_once() {
    let s = TestServer::start().await;
    let a = id_of(&s.create("alice", "a", 0).await);
    let b = id_of(&s.create("alice", "b", 10).await);
    let c = id_of(&s.create("alice", "c", 5).await);

    // Order matters: +5 then -3 from 0 works...
    let r = transact(&s, "alice", &[(&a, 5), (&a, -3)]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.raw);
    assert_eq!(
        r.body["items"].as_array().unwrap().len(),
        1,
        "one entry per item"
    );
    assert_eq!(r.body["items"][0]["qty"], 2);
    assert_eq!(
        r.body["items"][0]["version"], 2,
        "+1 per touched item, not per op"
    );
    // ...but -3 then +3 from 2 fails at op 0 although the net is 0.
    fails(
        &s,
        &[(&a, -3), (&a, 3)],
        StatusCode::BAD_REQUEST,
        "qty_below_zero",
        0,
    )
    .await;

    // Repetition, first-appearance order, each touched once.
    let r = transact(
        &s,
        "alice",
        &[(&b, -1), (&a, 1), (&b, -1), (&c, 0), (&a, 1), (&b, 5)],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.raw);
    let items = r.body["items"].as_array().unwrap();
    let ids: Vec<String> = items.iter().map(id_of).collect();
    assert_eq!(ids, vec![b.clone(), a.clone(), c.clone()]);
    assert_eq!(items[0]["qty"], 13);
    assert_eq!(items[1]["qty"], 4);
    assert_eq!(items[2]["qty"], 5);
    for (item, version) in items.iter().zip([2, 3, 2]) {
        assert_eq!(item["version"], version, "{item}");
    }
    // The response items equal what GET shows, and they share one time.
    let all = all_items(&s, "alice").await;
    for item in items {
        assert_eq!(&all[&id_of(item)], item);
    }
    assert_eq!(items[0]["updated_at"], items[1]["updated_at"]);

    // A long transaction may dip and recover as long as no prefix is < 0.
    let r = transact(&s, "alice", &[(&c, -5), (&c, 3), (&c, -3), (&c, 1)]).await;
    assert_eq!(r.body["items"][0]["qty"], 1, "{}", r.raw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_op_changes_nothing_and_is_named() {
    let s = TestServer::start().await;
    let a = id_of(&s.create("alice", "a", 1).await);
    let b = id_of(&s.create("alice", "b", QTY_MAX - 1).await);
    let gone = id_of(&s.create("alice", "gone", 1).await);
    Req::new(Method::DELETE, format!("/items/{gone}"), "alice")
        .send(&s)
        .await;
    let missing = uuid::Uuid::now_v7().to_string();
    let bobs = id_of(&s.create("bob", "b", 1).await);

    let (ok1, ok2) = ((a.as_str(), 1), (b.as_str(), -1));
    let bad = StatusCode::BAD_REQUEST;
    let nf = StatusCode::NOT_FOUND;
    fails(&s, &[ok1, (&a, -3)], bad, "qty_below_zero", 1).await;
    fails(&s, &[ok1, ok2, (&b, 1), (&b, 2)], bad, "qty_overflow", 3).await;
    fails(&s, &[(&b, QTY_MAX)], bad, "qty_overflow", 0).await;
    fails(&s, &[ok1, ok2, ok1, (&missing, 1)], nf, "not_found", 3).await;
    fails(&s, &[(&gone, 1), ok1], nf, "not_found", 0).await;
    fails(&s, &[ok1, (&bobs, 1)], nf, "not_found", 1).await;
    // The first failing op is reported, not a later one.
    fails(
        &s,
        &[ok1, (&a, -5), (&missing, 1)],
        bad,
        "qty_below_zero",
        1,
    )
    .await;
    fails(&s, &[ok1, (&missing, 1), (&a, -5)], nf, "not_found", 1).await;
    // 404 with op_index even for a zero delta.
    fails(&s, &[(&missing, 0)], nf, "not_found", 0).await;
    assert_eq!(s.get("bob", &bobs).await.body["version"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn op_count_limits() {
    // Goal: 1..=1000 ops. 0 and 1001 are invalid_body and change nothing;
    // exactly 1000 is applied as one transition.
    let s = TestServer::start().await;
    let a = id_of(&s.create("alice", "a", 0).await);
    let before = all_items(&s, "alice").await;
    for n in [0usize, 1001] {
        let ops: Vec<(&str, i64)> = vec![(&a, 1); n];
        let r = transact(&s, "alice", &ops).await;
        assert_problem(&r, StatusCode::BAD_REQUEST, "invalid_body");
        assert_eq!(all_items(&s, "alice").await, before, "{n} ops");
    }
    let ops: Vec<(&str, i64)> = vec![(&a, 1); 1000];
    let r = transact(&s, "alice", &ops).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.raw);
    assert_eq!(r.body["items"][0]["qty"], 1000);
    assert_eq!(r.body["items"][0]["version"], 2);
    // 1000 ops failing at the very last one.
    let mut ops: Vec<(&str, i64)> = vec![(&a, -1); 999];
    ops.push((&a, -2));
    fails(&s, &ops, StatusCode::BAD_REQUEST, "qty_below_zero", 999).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_op_shapes_are_invalid_body() {
    let s = TestServer::start().await;
    let a = id_of(&s.create("alice", "a", 5).await);
    let before = all_items(&s, "alice").await;
    for body in [
        json!({"ops": [{"item": a}]}),
        json!({"ops": [{"delta": 1}]}),
        json!({"ops": [{"item": a, "delta": 1.5}]}),
        json!({"ops": [{"item": a, "delta": "1"}]}),
        json!({"ops": [{"item": a, "delta": QTY_MAX + 1}]}),
        json!({"ops": [{"item": a, "delta": -QTY_MAX - 1}]}),
        json!({"ops": [{"item": "nope", "delta": 1}]}),
        json!({"ops": [{"item": a, "delta": 1, "x": 0}]}),
        json!({"ops": [{"item": a, "delta": 1}], "atomic": true}),
        json!({"ops": [a]}),
        json!({"ops": {"item": a, "delta": 1}}),
    ] {
        let r = Req::new(Method::POST, "/transactions", "alice")
            .json(&body.to_string())
            .send(&s)
            .await;
        assert_problem(&r, StatusCode::BAD_REQUEST, "invalid_body");
    }
    assert_eq!(all_items(&s, "alice").await, before);
}

/// The reference model: id → (qty, version).
type Model = BTreeMap<String, (i64, u64)>;

/// What the model expects: the touched items in first-appearance order, or
/// (code, op_index).
fn model_apply(
    model: &mut Model,
    ops: &[(String, i64)],
) -> Result<Vec<String>, (&'static str, u64)> {
    let mut work = model.clone();
    let mut touched: Vec<String> = Vec::new();
    for (i, (id, delta)) in ops.iter().enumerate() {
        let Some((qty, version)) = work.get_mut(id) else {
            return Err(("not_found", i as u64));
        };
        if !touched.contains(id) {
            touched.push(id.clone());
            *version += 1;
        }
        let next = *qty + delta;
        if next < 0 {
            return Err(("qty_below_zero", i as u64));
        }
        if next > QTY_MAX {
            return Err(("qty_overflow", i as u64));
        }
        *qty = next;
    }
    *model = work;
    Ok(touched)
}

#[test]
fn random_transactions_match_the_model() {
    // Goal: for random transactions over three items (plus a missing id,
    // and deltas that hit both bounds), the answer and the whole state
    // after it match a model where a failure at any position changes
    // nothing. Method: proptest; one server, a fresh owner per case.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let s = rt.block_on(TestServer::start());
    let delta = prop_oneof![
        8 => -6i64..=6,
        1 => Just(QTY_MAX),
        1 => Just(-QTY_MAX),
    ];
    let op = (0usize..4, delta);
    let tx = proptest::collection::vec(op, 1..12);
    let case = (
        proptest::collection::vec(0i64..8, 3),
        proptest::collection::vec(tx, 1..8),
    );
    let mut runner = TestRunner::new(Config {
        cases: 64,
        failure_persistence: None,
        ..Config::default()
    });
    let n = std::sync::atomic::AtomicU32::new(0);
    runner
        .run(&case, |(start, txs)| {
            let owner = format!(
                "prop-{}",
                n.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            );
            rt.block_on(async {
                let mut model = Model::new();
                let mut ids = Vec::new();
                for (i, qty) in start.iter().enumerate() {
                    let id = id_of(&s.create(&owner, &format!("i{i}"), *qty).await);
                    model.insert(id.clone(), (*qty, 1));
                    ids.push(id);
                }
                ids.push(uuid::Uuid::now_v7().to_string()); // never exists
                for tx in txs {
                    let ops: Vec<(String, i64)> =
                        tx.iter().map(|(i, d)| (ids[*i].clone(), *d)).collect();
                    let refs: Vec<(&str, i64)> =
                        ops.iter().map(|(i, d)| (i.as_str(), *d)).collect();
                    let r = transact(&s, &owner, &refs).await;
                    match model_apply(&mut model, &ops) {
                        Ok(touched) => {
                            prop_assert_eq!(r.status, StatusCode::OK, "{}", r.raw);
                            let got: Vec<String> = r.body["items"]
                                .as_array()
                                .unwrap()
                                .iter()
                                .map(id_of)
                                .collect();
                            prop_assert_eq!(got, touched);
                        }
                        Err((code, op_index)) => {
                            prop_assert!(r.status.is_client_error(), "{}", r.raw);
                            prop_assert_eq!(r.code(), code);
                            prop_assert_eq!(r.body["op_index"].as_u64(), Some(op_index));
                        }
                    }
                    let state: Model = all_items(&s, &owner)
                        .await
                        .into_iter()
                        .map(|(id, v)| {
                            let qty = v["qty"].as_i64().unwrap();
                            (id, (qty, v["version"].as_u64().unwrap()))
                        })
                        .collect();
                    prop_assert_eq!(&state, &model);
                }
                Ok(())
            })
        })
        .unwrap();
}

async fn tx_raw(s: &TestServer, body: Value) -> Resp {
    Req::new(Method::POST, "/transactions", "alice")
        .json(&body.to_string())
        .send(s)
        .await
}

/// Goal: a transaction reserves several items atomically with its other
/// ops, returns the new holds in op order, and a later transaction commits
/// and releases them (API.md "Transactions"). Method: reserve 2 of A and 3
/// of B next to a delta on A; check the answer, the items' reserved and
/// versions, that each hold is a real reservation (its single-item commit
/// route knows it), then commit one and release the other in one
/// transaction with a reason; the history shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_reserve_several_items_and_commit_or_release_them() {
    let s = TestServer::start().await;
    let a = id_of(&s.create("alice", "a", 10).await);
    let b = id_of(&s.create("alice", "b", 5).await);
    let r = tx_raw(
        &s,
        json!({"ops": [
            {"reserve": {"item": a, "qty": 2, "ttl": 600}},
            {"item": a, "delta": 1, "reason": "restock"},
            {"reserve": {"item": b, "qty": 3, "ttl": 300}},
        ]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.raw);
    let holds = r.body["reservations"].as_array().unwrap().clone();
    assert_eq!(holds.len(), 2, "{}", r.raw);
    assert_eq!(
        (holds[0]["item_id"].as_str(), holds[0]["qty"].as_u64()),
        (Some(&*a), Some(2))
    );
    assert_eq!(
        (holds[1]["item_id"].as_str(), holds[1]["qty"].as_u64()),
        (Some(&*b), Some(3))
    );
    assert_ne!(holds[0]["id"], holds[1]["id"]);
    let items = r.body["items"].as_array().unwrap();
    let seen: Vec<(u64, u64, u64)> = items
        .iter()
        .map(|i| {
            let n = |f: &str| i[f].as_u64().unwrap();
            (n("qty"), n("reserved"), n("version"))
        })
        .collect();
    assert_eq!(seen, vec![(11, 2, 2), (5, 3, 2)]);
    let ha = holds[0]["id"].as_str().unwrap().to_string();
    let hb = holds[1]["id"].as_str().unwrap().to_string();
    // The holds are ordinary reservations.
    let r = Req::new(Method::DELETE, format!("/reservations/{hb}"), "alice")
        .send(&s)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    // Releasing it again inside a transaction refuses the transaction.
    let before = all_items(&s, "alice").await;
    let r = tx_raw(
        &s,
        json!({"ops": [
            {"commit": {"reservation": ha}},
            {"release": {"reservation": hb}},
        ]}),
    )
    .await;
    assert_problem(&r, StatusCode::NOT_FOUND, "reservation_not_found");
    assert_eq!(r.body["op_index"], 1, "{}", r.raw);
    assert_eq!(all_items(&s, "alice").await, before, "nothing changed");
    let r = tx_raw(
        &s,
        json!({"ops": [
            {"commit": {"reservation": ha, "reason": "sale", "reference": "order-7"}},
            {"item": b, "delta": -1, "reason": "sale", "reference": "order-7"},
        ]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.raw);
    assert_eq!(r.body["reservations"], json!([]));
    assert_eq!(r.body["items"][0]["qty"], 9);
    assert_eq!(r.body["items"][0]["reserved"], 0);
    let h = Req::new(Method::GET, format!("/items/{a}/history?limit=1"), "alice")
        .send(&s)
        .await;
    let e = &h.body["entries"][0];
    assert_eq!(
        (&e["change"], &e["delta"], &e["reason"], &e["reference"]),
        (
            &json!("transacted"),
            &json!(-2),
            &json!("sale"),
            &json!("order-7")
        ),
        "{}",
        h.raw
    );
}

/// Goal: every refusal of a hold op refuses the whole transaction with its
/// op index, and nothing changes (items, reserved, holds). Method: one
/// failing op of each kind after ops that alone would succeed; then the
/// op-shape and value errors (400 `invalid_body`, naming the op).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_op_refusals_name_the_op_and_change_nothing() {
    let s = TestServer::start().await;
    let a = id_of(&s.create("alice", "a", 3).await);
    let b = id_of(&s.create("alice", "b", 3).await);
    let missing = "01900000-0000-7000-8000-000000000000";
    let cases = [
        (
            json!([{"reserve": {"item": a, "qty": 2, "ttl": 60}}, {"reserve": {"item": a, "qty": 2, "ttl": 60}}]),
            StatusCode::CONFLICT,
            "insufficient_available",
            1,
        ),
        (
            json!([{"item": b, "delta": 1}, {"reserve": {"item": missing, "qty": 1, "ttl": 60}}]),
            StatusCode::NOT_FOUND,
            "not_found",
            1,
        ),
        (
            json!([{"item": b, "delta": 1}, {"item": b, "delta": 1}, {"commit": {"reservation": missing}}]),
            StatusCode::NOT_FOUND,
            "reservation_not_found",
            2,
        ),
        (
            json!([{"item": b, "delta": 1, "reason": "sale"}, {"item": b, "delta": 1, "reason": "restock"}]),
            StatusCode::BAD_REQUEST,
            "conflicting_notes",
            1,
        ),
        (
            json!([{"reserve": {"item": b, "qty": 3, "ttl": 60}}, {"item": b, "delta": -1}]),
            StatusCode::CONFLICT,
            "insufficient_available",
            1,
        ),
    ];
    for (ops, status, code, index) in cases {
        let before = all_items(&s, "alice").await;
        let r = tx_raw(&s, json!({ "ops": ops })).await;
        assert_problem(&r, status, code);
        assert_eq!(r.body["op_index"], index, "{ops}: {}", r.raw);
        assert_eq!(all_items(&s, "alice").await, before, "{ops} changed state");
    }
    let shape = [
        (
            json!([{"reserve": {"item": a, "qty": 0, "ttl": 60}}]),
            "ops[0].reserve.qty",
        ),
        (
            json!([{"reserve": {"item": a, "qty": 1, "ttl": 0}}]),
            "ops[0].reserve.ttl",
        ),
        (
            json!([{"item": a, "delta": 1}, {"reserve": {"item": a, "qty": 1, "ttl": 86401}}]),
            "ops[1].reserve.ttl",
        ),
        (
            json!([{"item": a, "delta": 1, "reserve": {"item": a, "qty": 1, "ttl": 1}}]),
            "exactly one of",
        ),
        (
            json!([{"release": {"reservation": missing, "reason": "x"}}]),
            "unknown field",
        ),
        (json!([{"kind": "reserve"}]), "unknown field"),
    ];
    for (ops, detail) in shape {
        let before = all_items(&s, "alice").await;
        let r = tx_raw(&s, json!({ "ops": ops })).await;
        assert_problem(&r, StatusCode::BAD_REQUEST, "invalid_body");
        assert!(
            r.body["detail"].as_str().unwrap().contains(detail),
            "{ops}: {}",
            r.raw
        );
        assert_eq!(all_items(&s, "alice").await, before);
    }
}
