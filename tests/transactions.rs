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
