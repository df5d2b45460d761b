//! Goal: one hot item under heavy concurrent PATCH traffic behaves exactly
//! like a serial counter, and racing first requests of a new owner lose
//! nothing. Method: 64 clients x 500 seeded random deltas in [-3, 3]; every
//! answer is recorded, and the accepted ones, ordered by version, must form
//! one chain `qty(v) = qty(v-1) + delta(v)` from the start to the final GET
//! (which implies final = start + sum of acknowledged deltas, unique
//! versions, and no lost or phantom update). No timing is asserted.
mod common;
mod support;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::TestServer;
use rand::{Rng, SeedableRng};
use reqwest::{Method, StatusCode};
use support::{all_items, id_of, qty_version, Req};

const CLIENTS: u64 = 64;
const REQUESTS_PER_CLIENT: usize = 500;
const START_QTY: i64 = 100;

/// What one client saw for one request.
enum Seen {
    Applied { delta: i64, qty: i64, version: u64 },
    BelowZero,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_item_is_a_serial_counter() {
    let s = Arc::new(TestServer::start().await);
    let id = id_of(&s.create("hot", "counter", START_QTY).await);
    let start = Arc::new(tokio::sync::Barrier::new(CLIENTS as usize));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let s = s.clone();
            let id = id.clone();
            let start = start.clone();
            tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(c);
                let mut seen = Vec::with_capacity(REQUESTS_PER_CLIENT);
                start.wait().await;
                for _ in 0..REQUESTS_PER_CLIENT {
                    let delta: i64 = rng.random_range(-3..=3);
                    let r = s.patch("hot", &id, delta).await;
                    match r.status {
                        StatusCode::OK => {
                            let qty = r.body["qty"].as_i64().expect("qty is an integer");
                            let version = r.body["version"].as_u64().expect("version");
                            assert!(qty >= 0, "a response showed qty {qty}");
                            assert_eq!(r.header("etag"), Some(format!("\"{version}\"").as_str()));
                            seen.push(Seen::Applied {
                                delta,
                                qty,
                                version,
                            });
                        }
                        StatusCode::BAD_REQUEST => {
                            assert_eq!(r.code(), "qty_below_zero", "{}", r.raw);
                            assert!(delta < 0, "only a negative delta can be refused");
                            seen.push(Seen::BelowZero);
                        }
                        other => panic!("unexpected {other}: {}", r.raw),
                    }
                }
                seen
            })
        })
        .collect();

    let mut by_version: BTreeMap<u64, (i64, i64)> = BTreeMap::new();
    let mut refused = 0usize;
    for client in clients {
        for seen in client.await.expect("client task") {
            match seen {
                Seen::Applied {
                    delta,
                    qty,
                    version,
                } => {
                    let dup = by_version.insert(version, (delta, qty));
                    assert!(dup.is_none(), "version {version} acknowledged twice");
                }
                Seen::BelowZero => refused += 1,
            }
        }
    }
    let applied = by_version.len();
    assert_eq!(applied + refused, (CLIENTS as usize) * REQUESTS_PER_CLIENT);

    // The chain: versions 2..=applied+1, each qty = previous qty + its delta.
    let mut qty = START_QTY;
    let mut expected_version = 1;
    for (version, (delta, after)) in &by_version {
        expected_version += 1;
        assert_eq!(*version, expected_version, "versions are dense");
        qty += delta;
        assert_eq!(*after, qty, "version {version}: lost or reordered update");
    }
    let sum: i64 = by_version.values().map(|(d, _)| d).sum();
    let (final_qty, final_version) = qty_version(&s, "hot", &id).await;
    assert_eq!(final_qty as i64, START_QTY + sum);
    assert_eq!(final_version, 1 + applied as u64);
    eprintln!("hot item: {applied} applied, {refused} refused qty_below_zero");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_first_requests_of_a_new_owner_all_land() {
    // Goal: 100 concurrent first requests of a brand-new owner, each
    // creating a distinct item, all succeed and the owner ends with exactly
    // those 100 items. (The single-activation proof is the unit test
    // `actor::registry::tests::racing_first_calls_activate_exactly_one_actor`.)
    let s = Arc::new(TestServer::start().await);
    let start = Arc::new(tokio::sync::Barrier::new(100));
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let s = s.clone();
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                let r = Req::new(Method::POST, "/items", "newcomer")
                    .json(&format!(r#"{{"name": "item-{i}", "qty": {i}}}"#))
                    .send(&s)
                    .await;
                assert_eq!(r.status, StatusCode::CREATED, "{}", r.raw);
                (id_of(&r.body), i)
            })
        })
        .collect();
    let mut expected = BTreeMap::new();
    for t in tasks {
        let (id, i) = t.await.unwrap();
        expected.insert(id, i);
    }
    let all = all_items(&s, "newcomer").await;
    assert_eq!(all.len(), 100);
    for (id, item) in &all {
        let i = expected[id];
        assert_eq!(item["name"], format!("item-{i}"));
        assert_eq!(item["qty"], i);
        assert_eq!(item["version"], 1);
    }
}

fn tiny_mailbox(c: &mut countiq::node::NodeConfig) {
    c.actor.mailbox_depth = 1;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_mailbox_sheds_load_without_effect() {
    // Goal: when the owner's mailbox is full the answer is 503 `overloaded`
    // with Retry-After, and a shed request has no effect. Method: a mailbox
    // of depth 1 and 64 concurrent +1 PATCHes; whatever mix of 200 and 503
    // results, the final qty must equal the number of 200s exactly.
    let s = Arc::new(TestServer::start_with(tiny_mailbox).await);
    let id = id_of(&s.create("busy", "counter", 0).await);
    let start = Arc::new(tokio::sync::Barrier::new(64));
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (s, id, start) = (s.clone(), id.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                let mut ok = 0u64;
                for _ in 0..20 {
                    let r = s.patch("busy", &id, 1).await;
                    match r.status {
                        StatusCode::OK => ok += 1,
                        StatusCode::SERVICE_UNAVAILABLE => {
                            assert_eq!(r.code(), "overloaded", "{}", r.raw);
                            assert!(r.header("retry-after").is_some(), "Retry-After");
                        }
                        other => panic!("unexpected {other}: {}", r.raw),
                    }
                }
                ok
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap();
    }
    assert_eq!(qty_version(&s, "busy", &id).await, (ok, 1 + ok));
    eprintln!("tiny mailbox: {ok} of 1280 applied");
}
