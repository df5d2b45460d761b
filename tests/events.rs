//! Contract tests of `GET /events`, the live change feed (docs/API.md
//! "Change feed"): what a subscriber sees (each durable transition of its
//! own owner once, in LSN order, `id` = the write's `CountIQ-LSN`), resume
//! with `Last-Event-ID`, the bounds, a slow reader, and shutdown. The
//! crash/restart and truncation cases are in `tests/crash.rs`.
mod common;
mod sse;

use common::TestServer;
use countiq::actor::feed::{FEED_BUFFER_EVENTS, SUBSCRIBERS_PER_OWNER_MAX};
use reqwest::{Method, StatusCode};
use serde_json::json;
use sse::Stream;

/// A write's `CountIQ-LSN`.
fn lsn_of(r: &common::Resp) -> u64 {
    r.header("countiq-lsn")
        .expect("CountIQ-LSN")
        .parse()
        .unwrap()
}

async fn open(s: &TestServer, owner: &str, last: Option<u64>) -> Stream {
    let r = sse::open(&s.http, &s.base, &s.token(owner), last).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    Stream::new(r)
}

async fn patch(s: &TestServer, owner: &str, id: &str, delta: i64) -> u64 {
    let path = format!("/items/{id}/qty");
    let r = (s.send(
        Method::PATCH,
        &path,
        Some(owner),
        Some(json!({"delta": delta})),
        &[],
    ))
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.raw);
    lsn_of(&r)
}

/// (id, kind) of each event.
fn ids_kinds(events: &[sse::Sse]) -> Vec<(Option<u64>, String)> {
    events.iter().map(|e| (e.id, e.event.clone())).collect()
}

/// Goal: a subscriber gets every transition of its owner, once, in order,
/// each with the LSN its write answered as `CountIQ-LSN`, and none of
/// another owner's. Method: open alice's stream, then run every kind of
/// write as alice with bob's writes in between; compare the stream's
/// (id, kind) list with the writes' (LSN, kind) list exactly, and the data
/// of each kind with the write's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_events_are_the_owners_writes_with_their_lsns() {
    let s = TestServer::start().await;
    let mut stream = open(&s, "alice", None).await;
    let bob = s.create("bob", "bob-milk", 1).await;
    let mut expected = Vec::new();
    let r = (s.send(
        Method::POST,
        "/items",
        Some("alice"),
        Some(json!({"name": "milk", "qty": 3})),
        &[],
    ))
    .await;
    let id = r.body["id"].as_str().unwrap().to_string();
    expected.push((Some(lsn_of(&r)), "item.created".to_string()));
    patch(&s, "bob", bob["id"].as_str().unwrap(), 1).await;
    expected.push((Some(patch(&s, "alice", &id, -1).await), "item.qty".into()));
    let r = (s.send(
        Method::PUT,
        &format!("/items/{id}"),
        Some("alice"),
        Some(json!({"name": "oat milk", "qty": 9, "reason": "correction"})),
        &[],
    ))
    .await;
    expected.push((Some(lsn_of(&r)), "item.replaced".into()));
    let op = json!({"item": id, "delta": 1, "reason": "restock", "reference": "po 7"});
    let ops = json!({"ops": [op, op]});
    let r = s
        .send(Method::POST, "/transactions", Some("alice"), Some(ops), &[])
        .await;
    expected.push((Some(lsn_of(&r)), "transaction".into()));
    let refused = patch_refused(&s, &id).await;
    assert_eq!(refused, StatusCode::BAD_REQUEST);
    let r = s
        .send(
            Method::DELETE,
            &format!("/items/{id}"),
            Some("alice"),
            None,
            &[],
        )
        .await;
    expected.push((Some(lsn_of(&r)), "item.deleted".into()));

    let events = stream.take(expected.len()).await;
    assert_eq!(ids_kinds(&events), expected);
    assert_eq!(events[0].data["item"]["name"], "milk");
    assert_eq!(events[1].data["qty"], 2);
    assert_eq!(events[1].data["version"], 2);
    assert_eq!(events[2].data["item"]["qty"], 9);
    // reason and reference ride on every qty-changing event, null when
    // the write had none.
    assert_eq!(
        (&events[0].data["reason"], &events[0].data["reference"]),
        (&json!(null), &json!(null))
    );
    assert_eq!(
        (&events[2].data["reason"], &events[2].data["reference"]),
        (&json!("correction"), &json!(null))
    );
    assert_eq!(
        events[3].data["items"],
        json!([{"id": id, "qty": 11, "version": 4, "reason": "restock", "reference": "po 7"}])
    );
    assert_eq!(
        (&events[3].data["reserved"], &events[3].data["committed"]),
        (&json!([]), &json!([]))
    );
    assert_eq!(events[4].data["id"], id);
    for e in &events {
        assert_eq!(e.data["lsn"], json!(e.id.unwrap()), "data.lsn is the id");
    }
}

/// A refused PATCH (qty below zero): no event.
async fn patch_refused(s: &TestServer, id: &str) -> StatusCode {
    let path = format!("/items/{id}/qty");
    let body = Some(json!({"delta": -1000}));
    s.send(Method::PATCH, &path, Some("alice"), body, &[])
        .await
        .status
}

/// Goal: `Last-Event-ID` resumes exactly after that event: the rest from
/// the log, then live, without a gap or a duplicate at the switch. Method:
/// six PATCHes; open with the LSN of the second; while the stream replays,
/// write three more; the stream must hold exactly writes 3..9 in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_replays_from_the_log_then_goes_live_without_gap_or_duplicate() {
    let s = TestServer::start().await;
    let item = s.create("carol", "flour", 100).await;
    let id = item["id"].as_str().unwrap();
    let mut lsns = Vec::new();
    for _ in 0..6 {
        lsns.push(patch(&s, "carol", id, -1).await);
    }
    let mut stream = open(&s, "carol", Some(lsns[1])).await;
    assert_eq!(
        stream.response.headers()["countiq-lsn"],
        lsns[5].to_string().as_str(),
        "live events follow the owner's last LSN"
    );
    for _ in 0..3 {
        lsns.push(patch(&s, "carol", id, -1).await);
    }
    let events = stream.take(7).await;
    let ids: Vec<u64> = events.iter().map(|e| e.id.unwrap()).collect();
    assert_eq!(ids, lsns[2..].to_vec());
    let qtys: Vec<i64> = events
        .iter()
        .map(|e| e.data["qty"].as_i64().unwrap())
        .collect();
    assert_eq!(qtys, (91..=97).rev().collect::<Vec<_>>());
    // Resuming from the last one: nothing is replayed, the next is live.
    let mut again = open(&s, "carol", Some(*lsns.last().unwrap())).await;
    let next = patch(&s, "carol", id, -1).await;
    assert_eq!(again.next().await.unwrap().id, Some(next));
}

/// Goal: bad input and the per-owner bound are refused with their stable
/// codes; a closed stream gives its slot back. Method: a malformed and a
/// repeated Last-Event-ID (400), no token (401), an id from beyond this
/// log (a `reset` event), then SUBSCRIBERS_PER_OWNER_MAX open streams and
/// one more (429), then close one and wait (with a deadline) until a new
/// one is admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ids_missing_tokens_and_the_owner_bound_are_refused() {
    let s = TestServer::start().await;
    for bad in [vec!["abc"], vec!["-1"], vec!["1", "2"]] {
        let mut req = s
            .http
            .get(format!("{}/events", s.base))
            .bearer_auth(s.token("dan"));
        for v in &bad {
            req = req.header("last-event-id", *v);
        }
        let r = common::read(req.send().await.unwrap()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad:?}");
        assert_eq!(r.code(), "invalid_last_event_id");
    }
    let r = common::read(
        s.http
            .get(format!("{}/events", s.base))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    let mut future = open(&s, "dan", Some(1_000_000)).await;
    let reset = future.next().await.unwrap();
    assert_eq!(reset.event, "reset");
    assert_eq!(reset.data["oldest_lsn"], 1);
    drop(future);

    let mut open_streams = Vec::new();
    while open_streams.len() < SUBSCRIBERS_PER_OWNER_MAX {
        let r = sse::open(&s.http, &s.base, &s.token("erin"), None).await;
        if r.status() == StatusCode::OK {
            open_streams.push(r);
            continue;
        }
        // The `future` stream above was dan's; erin's slots are all ours,
        // but one we dropped may still be closing.
        panic!("stream {} refused: {}", open_streams.len(), r.status());
    }
    let over = common::read(sse::open(&s.http, &s.base, &s.token("erin"), None).await).await;
    assert_eq!(over.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(over.code(), "too_many_subscribers");
    assert!(over.header("retry-after").is_some());
    // Another owner is not affected.
    drop(open(&s, "frank", None).await);
    open_streams.pop();
    let deadline = std::time::Instant::now() + sse::EVENT_DEADLINE;
    loop {
        let r = sse::open(&s.http, &s.base, &s.token("erin"), None).await;
        if r.status() == StatusCode::OK {
            break;
        }
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(std::time::Instant::now() < deadline, "the slot came back");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Goal: a reader that does not read never slows its owner: the writes all
/// complete, and the reader is told `lagged` and disconnected. Method: the
/// in-process router (`oneshot`), whose response body nobody polls, so
/// nothing is buffered by sockets; FEED_BUFFER_EVENTS + 200 writes through
/// the registry, all awaited; then read the body: consecutive events from
/// the first write (none: nothing is read ahead of the body), then `lagged`
/// naming the last one delivered (or the start), then the end of the
/// stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_is_told_it_lagged_and_never_slows_the_owner() {
    use axum::body::Body;
    use countiq::actor::{SystemClock, Written};
    use countiq::domain::{Command, Delta, ItemName, OwnerId, Qty};
    use countiq::http::{app, AppState};
    use countiq::node::{Node, NodeConfig};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(NodeConfig::quiet(dir.path()), Box::new(SystemClock))
        .await
        .unwrap();
    let state = AppState::new(countiq::auth::Verifier::new(common::SECRET));
    state.set_ready(node.registry().clone());
    let owner = OwnerId::new("slow").unwrap();
    let create = Command::Create {
        name: ItemName::new("x").unwrap(),
        qty: Qty::new(0).unwrap(),
        note: countiq::domain::Note::NONE,
    };
    let Written::Done {
        result: Ok(countiq::domain::Outcome::Created(item)),
        ..
    } = node.registry().write(&owner, create, None).await.unwrap()
    else {
        panic!("created");
    };
    let token = countiq::auth::Verifier::new(common::SECRET)
        .mint(&owner, std::time::Duration::from_secs(3600));
    let req = axum::http::Request::get("/events")
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    let response = app(state).oneshot(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let start: u64 = response.headers()["countiq-lsn"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let writes = FEED_BUFFER_EVENTS + 200;
    let mut lsns = Vec::new();
    for _ in 0..writes {
        let cmd = Command::Adjust {
            id: item.id,
            delta: Delta::new(1).unwrap(),
            if_match: None,
            note: countiq::domain::Note::NONE,
        };
        match node.registry().write(&owner, cmd, None).await.unwrap() {
            Written::Done {
                result: Ok(_),
                lsn: Some(lsn),
                ..
            } => lsns.push(lsn),
            other => panic!("{other:?}"),
        }
    }
    let mut body = response.into_body();
    let mut frames = sse::Frames::default();
    let mut events = Vec::new();
    loop {
        let frame = tokio::time::timeout(sse::EVENT_DEADLINE, body.frame())
            .await
            .expect("the body moves");
        let Some(frame) = frame else { break };
        if let Ok(data) = frame.unwrap().into_data() {
            events.extend(frames.push(&data));
        }
    }
    let (last, delivered) = events.split_last().expect("events");
    assert_eq!(last.event, "lagged");
    assert!(delivered.len() < writes, "the reader fell behind");
    let ids: Vec<u64> = delivered.iter().map(|e| e.id.unwrap()).collect();
    assert_eq!(
        ids,
        lsns[..delivered.len()].to_vec(),
        "in order, none skipped before the lag"
    );
    // The last LSN the reader has: its last event, or the stream's start.
    assert_eq!(
        last.data["lsn"],
        json!(ids.last().copied().unwrap_or(start))
    );
}

/// Goal: graceful shutdown ends open streams cleanly (so the drain does not
/// wait on them). Method: open a stream, stop the server; the stream must
/// end with a clean end of body (not a broken connection) and the server
/// stop gracefully.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_streams() {
    let mut s = TestServer::start().await;
    let mut stream = open(&s, "gina", None).await;
    let reader = tokio::spawn(async move { stream.next().await });
    let stopped = s.stop().await;
    assert!(matches!(stopped, countiq::server::Stopped::Gracefully));
    let end: Option<sse::Sse> = reader.await.unwrap();
    assert_eq!(end, None, "the stream ended cleanly");
}

/// Goal: under concurrent writers to one owner, the feed is exactly the
/// acknowledged writes in LSN order (the writer publishes batch by batch,
/// in waiter order). Method: 8 tasks × 50 PATCHes on one item while a
/// stream is open; the stream's 400 ids must be strictly increasing and
/// equal, as a set, to the 400 acknowledged CountIQ-LSNs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_arrive_once_each_in_lsn_order() {
    let s = std::sync::Arc::new(TestServer::start().await);
    let item = s.create("hana", "salt", 0).await;
    let id = item["id"].as_str().unwrap().to_string();
    let mut stream = open(&s, "hana", None).await;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (s, id) = (s.clone(), id.clone());
            tokio::spawn(async move {
                let mut lsns = Vec::new();
                for _ in 0..50 {
                    lsns.push(patch(&s, "hana", &id, 1).await);
                }
                lsns
            })
        })
        .collect();
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    acked.sort_unstable();
    let ids: Vec<u64> = stream
        .take(acked.len())
        .await
        .iter()
        .map(|e| e.id.unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "strictly increasing");
    assert_eq!(ids, acked);
}

/// Goal: reservations are on the feed like every other transition,
/// including the expiry the actor decides on its own (no request causes
/// it). Method: subscribe, create an item, hold 2 units for 1 s and 1 unit
/// for 60 s, commit the long hold, then wait (with the stream's deadline)
/// for the short one's expiry; every event's id is its LSN in order, and
/// the expiry names the short hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_and_their_expiry_are_on_the_feed() {
    let s = TestServer::start().await;
    let mut stream = open(&s, "alice", None).await;
    let id = s.create("alice", "milk", 5).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let hold = |qty: u64, ttl: u64| {
        let path = format!("/items/{id}/reservations");
        let s = &s;
        async move {
            let body = json!({"qty": qty, "ttl": ttl});
            let r = s
                .send(Method::POST, &path, Some("alice"), Some(body), &[])
                .await;
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.raw);
            (lsn_of(&r), r.body["id"].as_str().unwrap().to_string())
        }
    };
    let (short_lsn, short) = hold(2, 1).await;
    let (long_lsn, long) = hold(1, 60).await;
    let commit = format!("/reservations/{long}/commit");
    let r = s
        .send(Method::POST, &commit, Some("alice"), None, &[])
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.raw);
    let events = stream.take(5).await;
    let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "item.created",
            "reservation.created",
            "reservation.created",
            "reservation.committed",
            "reservation.expired"
        ]
    );
    assert_eq!(
        (events[1].id, events[2].id),
        (Some(short_lsn), Some(long_lsn))
    );
    assert_eq!(events[3].id, Some(lsn_of(&r)));
    assert_eq!(events[3].data["reservation"], long);
    assert_eq!(events[4].data["reservations"], json!([short]));
    let ids: Vec<u64> = events.iter().map(|e| e.id.unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
}
