//! Goal: `CountIQ-LSN` gives an owner-wide order that agrees with every
//! item's version order, so a history checker can order transactions across
//! items. Method: a real server; sequential and concurrent writes, reads,
//! rejections and replays, each response's header compared with what the
//! contract says it must be.
mod common;
mod support;

use std::collections::BTreeMap;

use common::{Resp, TestServer};
use reqwest::{Method, StatusCode};
use support::{id_of, Req};

fn lsn(r: &Resp) -> Option<u64> {
    r.header("countiq-lsn")
        .map(|v| v.parse().expect("an integer"))
}

/// Sequential writes get strictly increasing LSNs; a read reflects the last
/// one; an unlogged rejection carries the state it saw; a replay carries
/// none; a keyed rejection is logged (its key) and gets a new LSN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_response_names_the_state_it_reflects() {
    let s = TestServer::start().await;
    let fresh = s
        .send(Method::GET, "/items", Some("alice"), None, &[])
        .await;
    assert_eq!(lsn(&fresh), Some(0), "a new owner has logged nothing");
    let created = Req::new(Method::POST, "/items", "alice")
        .json(r#"{"name": "milk", "qty": 1}"#)
        .send(&s)
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let id = id_of(&created.body);
    let mut last = lsn(&created).expect("a write has an LSN");
    for _ in 0..5 {
        let r = s.patch("alice", &id, 1).await;
        let now = lsn(&r).expect("a write has an LSN");
        assert!(now > last, "{now} after {last}");
        last = now;
    }
    assert_eq!(lsn(&s.get("alice", &id).await), Some(last));
    let refused = s.patch("alice", &id, -100).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        lsn(&refused),
        Some(last),
        "an unlogged rejection saw `last`"
    );
    let keyed = |delta: i64| {
        Req::new(Method::PATCH, format!("/items/{id}/qty"), "alice")
            .json(&format!(r#"{{"delta": {delta}}}"#))
            .header("idempotency-key", "k-1")
    };
    let first = keyed(-100).send(&s).await;
    assert_eq!(first.status, StatusCode::BAD_REQUEST);
    let keyed_lsn = lsn(&first).expect("a keyed rejection is logged");
    assert!(keyed_lsn > last);
    let replay = keyed(-100).send(&s).await;
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(
        lsn(&replay),
        None,
        "a replay does not know its original LSN"
    );
    // Another owner's writes interleave in the same log but never reorder
    // alice's: her next write is above everything she saw.
    s.create("bob", "bread", 1).await;
    let after = s.patch("alice", &id, 1).await;
    assert!(lsn(&after).unwrap() > keyed_lsn);
}

/// Concurrent writes to two items and transactions across both: sorting
/// every acknowledged response by LSN gives each item's versions in
/// strictly increasing order, and no LSN is handed out twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lsn_order_agrees_with_every_items_version_order() {
    let s = std::sync::Arc::new(TestServer::start().await);
    let a = id_of(&s.create("alice", "a", 1000).await);
    let b = id_of(&s.create("alice", "b", 1000).await);
    let mut tasks = Vec::new();
    for t in 0..8 {
        let (s, a, b) = (s.clone(), a.clone(), b.clone());
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for i in 0..25 {
                let r = if (t + i) % 3 == 0 {
                    let body = format!(
                        r#"{{"ops": [{{"item": "{a}", "delta": 1}}, {{"item": "{b}", "delta": -1}}]}}"#
                    );
                    Req::new(Method::POST, "/transactions", "alice").json(&body).send(&s).await
                } else {
                    s.patch("alice", if i % 2 == 0 { &a } else { &b }, 1).await
                };
                assert_eq!(r.status, StatusCode::OK, "{}", r.raw);
                let items = match r.body.get("items") {
                    Some(items) => items.as_array().unwrap().clone(),
                    None => vec![r.body.clone()],
                };
                let versions: Vec<(String, u64)> = items
                    .iter()
                    .map(|i| (id_of(i), i["version"].as_u64().unwrap()))
                    .collect();
                seen.push((lsn(&r).expect("a write has an LSN"), versions));
            }
            seen
        }));
    }
    let mut by_lsn = BTreeMap::new();
    for t in tasks {
        for (lsn, versions) in t.await.unwrap() {
            assert!(by_lsn.insert(lsn, versions).is_none(), "LSN {lsn} twice");
        }
    }
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    for (lsn, versions) in &by_lsn {
        for (item, version) in versions {
            let before = last.insert(item.clone(), *version).unwrap_or(1);
            assert_eq!(*version, before + 1, "item {item} at LSN {lsn}");
        }
    }
}
