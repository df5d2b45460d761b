//! Crash tests against the real binary (sled-style: run, kill, reopen,
//! verify), for the durability promise of API.md.
//!
//! Method: spawn `countiq serve` on a data dir, drive concurrent PATCH /
//! POST / DELETE on one hot owner and several others, then kill it at a
//! random moment (SIGKILL) or stop it (SIGTERM), restart it on the same dir
//! and compare with a client-side model:
//! - every acknowledged transition is present (qty == start + acknowledged
//!   deltas, exactly, up to the requests that were in flight at the kill,
//!   whose outcome is unknown and may land either way);
//! - nothing refused is present (refused deltas are not in that sum, so a
//!   refused delta that got applied breaks the equality);
//! - acknowledged creates exist and acknowledged deletes are gone;
//! - qty ≥ 0 and names are unique per owner (case-insensitively).
//!
//! 20 rounds each by default; `COUNTIQ_SOAK=1` runs 500.

mod sse;

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rand::Rng;
use reqwest::StatusCode;
use serde_json::{json, Value};

const SECRET: &str = "crash-test-secret-0123456789abcdef012345";
const HOT_OWNER: &str = "hot";
const OTHER_OWNERS: [&str; 3] = ["o1", "o2", "o3"];
const CLIENTS: usize = 16;

fn rounds() -> usize {
    if std::env::var_os("COUNTIQ_SOAK").is_some() {
        500
    } else {
        20
    }
}

/// A running `countiq serve`; killed and reaped when dropped.
struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start the binary on `dir` with an OS-chosen port, read the port from
/// its JSON log, wait until ready.
async fn start(dir: &Path) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_countiq"))
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--snapshot-every-records",
            "2000",
            // The minimum: segments roll under load, so kills also land
            // around a roll, and each start zero-fills 2 MiB, not 128.
            "--segment-bytes",
            "1048576",
        ])
        .arg("--data-dir")
        .arg(dir)
        .env("COUNTIQ_JWT_SECRET", SECRET)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn countiq");
    let stderr = child.stderr.take();
    // From here on the guard reaps the child on every path, panics included.
    let mut server = Server {
        child,
        base: String::new(),
    };
    let stderr = stderr.expect("stderr is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            // The server's warnings, errors and non-log output (an exit
            // error) go to the test's output (shown when a test fails), so
            // a failed round says why.
            let json = line.starts_with('{');
            if !json || line.contains("\"level\":\"ERROR\"") || line.contains("\"level\":\"WARN\"")
            {
                eprintln!("server: {line}");
            }
            if !sent && line.contains("\"listening\"") {
                let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                if let Some(addr) = v["fields"]["addr"].as_str() {
                    let _ = tx.send(addr.to_string());
                    sent = true;
                }
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("server printed its address");
    server.base = format!("http://{addr}");
    let http = reqwest::Client::new();
    for _ in 0..3000 {
        if let Ok(r) = http.get(format!("{}/readyz", server.base)).send().await {
            if r.status() == StatusCode::OK {
                return server;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("server did not become ready");
}

fn token(owner: &str) -> String {
    let auth = countiq::auth::Verifier::new(SECRET.as_bytes());
    auth.mint(
        &countiq::domain::OwnerId::new(owner).unwrap(),
        Duration::from_secs(3600),
    )
}

/// What the clients learned in one round.
#[derive(Default)]
struct Outcomes {
    /// item id → acknowledged delta sum.
    acked: BTreeMap<String, i64>,
    /// item id → deltas whose outcome is unknown (no response).
    unknown: BTreeMap<String, Vec<i64>>,
    created: Vec<(String, String)>,
    deleted: Vec<(String, String)>,
    /// Creates / deletes with no response.
    unknown_items: HashSet<String>,
}

/// The client-side model across rounds.
struct Model {
    /// (owner, item id) → expected qty.
    qty: BTreeMap<(String, String), i64>,
    hot_item: String,
}

async fn setup(base: &str) -> Model {
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{base}/items"))
        .bearer_auth(token(HOT_OWNER))
        .json(&json!({"name": "hot", "qty": 1000}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let item: Value = r.json().await.unwrap();
    let hot_item = item["id"].as_str().unwrap().to_string();
    let mut qty = BTreeMap::new();
    qty.insert((HOT_OWNER.to_string(), hot_item.clone()), 1000);
    Model { qty, hot_item }
}

/// One client: random ops until the server dies or `ops` are done.
async fn client(base: String, hot_item: String, seed: u64, ops: usize) -> Outcomes {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    let mut out = Outcomes::default();
    let mut mine: Vec<(String, String)> = Vec::new();
    for n in 0..ops {
        let roll = rng.random_range(0..10);
        if roll < 7 {
            let delta = rng.random_range(-3..=3);
            let url = format!("{base}/items/{hot_item}/qty");
            let r = http
                .patch(&url)
                .bearer_auth(token(HOT_OWNER))
                .json(&json!({"delta": delta}))
                .send()
                .await;
            match r {
                Ok(r) if r.status() == StatusCode::OK => {
                    let v: Value = r.json().await.unwrap();
                    assert!(v["qty"].as_i64().unwrap() >= 0);
                    *out.acked.entry(hot_item.clone()).or_default() += delta;
                }
                Ok(r) if r.status() == StatusCode::BAD_REQUEST => {}
                Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE => {
                    out.unknown.entry(hot_item.clone()).or_default().push(delta);
                }
                Ok(r) => panic!("unexpected PATCH status {}", r.status()),
                Err(_) => {
                    out.unknown.entry(hot_item.clone()).or_default().push(delta);
                    return out;
                }
            }
        } else if roll < 9 || mine.is_empty() {
            let owner = OTHER_OWNERS[rng.random_range(0..OTHER_OWNERS.len())];
            let name = format!("item-{seed}-{n}");
            let r = http
                .post(format!("{base}/items"))
                .bearer_auth(token(owner))
                .json(&json!({"name": name, "qty": 5}))
                .send()
                .await;
            match r {
                Ok(r) if r.status() == StatusCode::CREATED => {
                    let v: Value = r.json().await.unwrap();
                    let id = v["id"].as_str().unwrap().to_string();
                    out.created.push((owner.to_string(), id.clone()));
                    mine.push((owner.to_string(), id));
                }
                Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE => return out,
                Ok(r) => panic!("unexpected POST status {}", r.status()),
                Err(_) => return out,
            }
        } else {
            let (owner, id) = mine.swap_remove(rng.random_range(0..mine.len()));
            let r = http
                .delete(format!("{base}/items/{id}"))
                .bearer_auth(token(&owner))
                .send()
                .await;
            match r {
                Ok(r) if r.status() == StatusCode::NO_CONTENT => out.deleted.push((owner, id)),
                Ok(_) | Err(_) => {
                    out.unknown_items.insert(id);
                    return out;
                }
            }
        }
    }
    out
}

/// Check the restarted server against the model, then fold what the
/// server shows for unknown outcomes into the model.
async fn verify(base: &str, model: &mut Model, rounds_out: Vec<Outcomes>) {
    let http = reqwest::Client::new();
    let mut unknown: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut unknown_items = HashSet::new();
    for out in rounds_out {
        for (id, d) in out.acked {
            *model
                .qty
                .get_mut(&(HOT_OWNER.to_string(), id))
                .expect("hot item") += d;
        }
        for (id, ds) in out.unknown {
            unknown.entry(id).or_default().extend(ds);
        }
        for (owner, id) in out.created {
            model.qty.insert((owner, id), 5);
        }
        for (owner, id) in out.deleted {
            model.qty.remove(&(owner, id));
        }
        unknown_items.extend(out.unknown_items);
    }
    // What the server holds, per owner, read page by page (one request per
    // 1000 items, so a long soak stays linear). Names unique, qty >= 0.
    let mut server: BTreeMap<(String, String), i64> = BTreeMap::new();
    for owner in std::iter::once(HOT_OWNER).chain(OTHER_OWNERS) {
        let mut names = HashSet::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut url = format!("{base}/items?limit=1000");
            if let Some(c) = &cursor {
                url.push_str(&format!("&cursor={c}"));
            }
            let page: Value = http
                .get(url)
                .bearer_auth(token(owner))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            for item in page["items"].as_array().unwrap() {
                let name = item["name"].as_str().unwrap().to_lowercase();
                assert!(names.insert(name), "names must stay unique for {owner}");
                let qty = item["qty"].as_i64().unwrap();
                assert!(qty >= 0);
                server.insert(
                    (owner.to_string(), item["id"].as_str().unwrap().to_string()),
                    qty,
                );
            }
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
    }
    model.qty.retain(|(_, id), _| !unknown_items.contains(id)); // a delete in flight may or may not have landed
    for ((owner, id), expected) in model.qty.iter_mut() {
        let got = *server
            .get(&(owner.clone(), id.clone()))
            .unwrap_or_else(|| panic!("acknowledged item {id} of {owner} must exist"));
        let ds = unknown.get(id).cloned().unwrap_or_default();
        let low = *expected + ds.iter().filter(|d| **d < 0).sum::<i64>();
        let high = *expected + ds.iter().filter(|d| **d > 0).sum::<i64>();
        assert!(
            (low..=high).contains(&got),
            "item {id}: qty {got} outside [{low}, {high}] (acknowledged {expected}, unknown {ds:?})"
        );
        *expected = got;
    }
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill failed");
}

async fn crash_rounds(sig: libc::c_int) {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path()).await;
    let mut model = setup(&server.base).await;
    let mut rng = rand::rng();
    for round in 0..rounds() {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                tokio::spawn(client(
                    server.base.clone(),
                    model.hot_item.clone(),
                    (round * 1000 + c) as u64,
                    400,
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(rng.random_range(20..200))).await;
        signal(&server.child, sig);
        let status = tokio::task::block_in_place(|| server.child.wait()).unwrap();
        if sig == libc::SIGTERM {
            assert!(
                status.success(),
                "graceful stop must exit 0, got {status:?}"
            );
        }
        let mut outs = Vec::new();
        for c in clients {
            outs.push(c.await.unwrap());
        }
        server = start(dir.path()).await;
        verify(&server.base, &mut model, outs).await;
    }
    drop(server);
}

/// Goal: kill -9 at random moments loses nothing acknowledged and applies
/// nothing refused. Method: see the module docs; 20 rounds (500 with
/// COUNTIQ_SOAK=1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_nothing_acknowledged() {
    crash_rounds(libc::SIGKILL).await;
}

/// Goal: SIGTERM drains in-flight requests, snapshots, and exits 0, and
/// nothing acknowledged is lost across 20 graceful restarts under load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_exits_cleanly_and_loses_nothing() {
    crash_rounds(libc::SIGTERM).await;
}

/// One keyed request and its answer, as a client sees it.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    status: StatusCode,
    body: String,
    location: Option<String>,
    etag: Option<String>,
}

async fn keyed(
    base: &str,
    method: reqwest::Method,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> (Seen, bool) {
    let http = reqwest::Client::new();
    let mut req = http
        .request(method, format!("{base}{path}"))
        .bearer_auth(token("keys"))
        .header("Idempotency-Key", key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let header = |n: &str| r.headers().get(n).map(|v| v.to_str().unwrap().to_string());
    let (location, etag) = (header("location"), header("etag"));
    let replayed = header("idempotent-replayed").as_deref() == Some("true");
    let seen = Seen {
        status: r.status(),
        location,
        etag,
        body: r.text().await.unwrap(),
    };
    (seen, replayed)
}

async fn stop(mut server: Server, sig: libc::c_int) {
    signal(&server.child, sig);
    let status = tokio::task::block_in_place(|| server.child.wait()).unwrap();
    if sig == libc::SIGTERM {
        assert!(status.success(), "{status:?}");
    }
}

fn segments(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("wal-"))
        .collect();
    names.sort();
    names
}

/// Goal: an acknowledged keyed request replays with its first response, and
/// never applies twice, after kill -9 right after the acknowledgement, and
/// again after snapshots have made the log that held it redundant and it
/// was deleted (truncation). Method: the real binary; a keyed POST, PATCH
/// and a keyed PATCH that was refused (400); kill -9; restart; replay all
/// three (same status, body, Location, ETag, plus Idempotent-Replayed) and
/// check qty; then two graceful restarts (each writes a snapshot; the
/// second prunes the first segment), check the segment is gone, and replay
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_replays_survive_kill_9_snapshots_and_truncation() {
    use reqwest::Method;
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let (created, _) = keyed(
        &server.base,
        Method::POST,
        "/items",
        "k-create",
        Some(json!({"name": "milk", "qty": 5})),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let id = serde_json::from_str::<Value>(&created.body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let qty_path = format!("/items/{id}/qty");
    let (patched, _) = keyed(
        &server.base,
        Method::PATCH,
        &qty_path,
        "k-patch",
        Some(json!({"delta": -2})),
    )
    .await;
    assert_eq!(patched.status, StatusCode::OK);
    let (refused, _) = keyed(
        &server.base,
        Method::PATCH,
        &qty_path,
        "k-refused",
        Some(json!({"delta": -100})),
    )
    .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    stop(server, libc::SIGKILL).await;

    let first_segment = segments(dir.path())[0].clone();
    let check = |base: String| {
        let (created, patched, refused, qty_path, id) =
            (&created, &patched, &refused, qty_path.clone(), id.clone());
        async move {
            let body = Some(json!({"name": "milk", "qty": 5}));
            assert_eq!(
                keyed(&base, Method::POST, "/items", "k-create", body).await,
                (created.clone(), true)
            );
            let again = keyed(
                &base,
                Method::PATCH,
                &qty_path,
                "k-patch",
                Some(json!({"delta": -2})),
            )
            .await;
            assert_eq!(again, (patched.clone(), true));
            let again = keyed(
                &base,
                Method::PATCH,
                &qty_path,
                "k-refused",
                Some(json!({"delta": -100})),
            )
            .await;
            assert_eq!(again, (refused.clone(), true));
            let http = reqwest::Client::new();
            let item: Value = http
                .get(format!("{base}/items/{id}"))
                .bearer_auth(token("keys"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(item["qty"], 3, "each keyed transition applied exactly once");
            assert_eq!(item["version"], 2);
        }
    };
    let server = start(dir.path()).await;
    check(server.base.clone()).await;
    stop(server, libc::SIGTERM).await; // snapshot 1
    let server = start(dir.path()).await;
    stop(server, libc::SIGTERM).await; // snapshot 2; prune drops what snapshot 1 covers
    assert!(
        !segments(dir.path()).contains(&first_segment),
        "the segment with the keyed records was truncated away"
    );
    let server = start(dir.path()).await;
    check(server.base.clone()).await;
    stop(server, libc::SIGKILL).await;
}

/// Goal: kill -9 in the middle of a load of transactions loses no
/// acknowledged transaction and never applies part of one. Method: every
/// transaction moves stock from item A to item B (`A -= d, B += d`, some
/// with A repeated), so any partial application breaks `A + B`, which must
/// stay exactly at its start; A must equal its start minus the acknowledged
/// moves, up to the moves whose outcome is unknown (in flight at the kill).
/// 10 rounds (SOAK: 100).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_transactions_never_applies_part_of_one() {
    const START: i64 = 1_000_000;
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path()).await;
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for name in ["a", "b"] {
        let r = http
            .post(format!("{}/items", server.base))
            .bearer_auth(token("tx"))
            .json(&json!({"name": name, "qty": START}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        ids.push(
            r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let (a, b) = (ids[0].clone(), ids[1].clone());
    let mut expected_a = START;
    let mut acked_total = 0;
    let rounds = if std::env::var_os("COUNTIQ_SOAK").is_some() {
        100
    } else {
        10
    };
    let mut rng = rand::rng();
    for round in 0..rounds {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let (base, a, b) = (server.base.clone(), a.clone(), b.clone());
                tokio::spawn(async move {
                    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
                    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64((round * 100 + c) as u64);
                    let (mut acked, mut unknown) = (0i64, 0i64);
                    for _ in 0..300 {
                        let d: i64 = rng.random_range(1..=5);
                        // Split the move on A in two ops half the time.
                        let ops = if rng.random_bool(0.5) {
                            json!([{"item": a, "delta": -d}, {"item": b, "delta": d}])
                        } else {
                            json!([{"item": a, "delta": -1}, {"item": b, "delta": d}, {"item": a, "delta": 1 - d}])
                        };
                        let r = http.post(format!("{base}/transactions")).bearer_auth(token("tx")).json(&json!({"ops": ops})).send().await;
                        match r {
                            Ok(r) if r.status() == StatusCode::OK => acked += d,
                            Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE => unknown += d,
                            Ok(r) => panic!("unexpected status {}", r.status()),
                            Err(_) => {
                                unknown += d;
                                break;
                            }
                        }
                    }
                    (acked, unknown)
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(rng.random_range(20..200))).await;
        stop(server, libc::SIGKILL).await;
        let (mut acked, mut unknown) = (0, 0);
        for c in clients {
            let (ac, un) = c.await.unwrap();
            acked += ac;
            unknown += un;
        }
        server = start(dir.path()).await;
        let qty = |id: String| {
            let (http, base) = (http.clone(), server.base.clone());
            async move {
                let v: Value = http
                    .get(format!("{base}/items/{id}"))
                    .bearer_auth(token("tx"))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                v["qty"].as_i64().unwrap()
            }
        };
        let (qa, qb) = (qty(a.clone()).await, qty(b.clone()).await);
        assert_eq!(
            qa + qb,
            2 * START,
            "round {round}: a transaction was applied in part"
        );
        let high = expected_a - acked;
        assert!(
            (high - unknown..=high).contains(&qa),
            "round {round}: A = {qa}, expected {high} minus at most {unknown}"
        );
        expected_a = qa;
        acked_total += acked;
    }
    assert!(
        acked_total > 0,
        "the load must have been acknowledged at all"
    );
    drop(server);
}

/// Goal: reservations keep their promise across kill -9: every
/// acknowledged hold is still open after the restart (and commits once),
/// every acknowledged commit is in qty exactly once, and holds that expire
/// are released after the restart from the log and the clock, never
/// twice. Method: one client reserves 1 unit with a long ttl, reserves 1
/// with a 1 s ttl, or commits one of its open holds, in random order,
/// until kill -9 at a random moment; after each restart the item's qty
/// must be start − acknowledged commits (minus at most the one in flight),
/// and once the short holds have expired (waited for with a deadline)
/// `reserved` must be the acknowledged open holds plus at most the ops in
/// flight. At the end every acknowledged open hold must commit (200).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_holds_open_and_expiring_keeps_reservations_exact() {
    const START: i64 = 1_000_000;
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path()).await;
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/items", server.base))
        .bearer_auth(token("holds"))
        .json(&json!({"name": "held", "qty": START}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut open: Vec<String> = Vec::new();
    let (mut committed, mut unknown) = (0i64, 0i64);
    let mut rng = rand::rng();
    for round in 0..5u64 {
        let (base, item, mut mine) = (server.base.clone(), id.clone(), std::mem::take(&mut open));
        let client = tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap();
            let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(round);
            let (mut committed, mut unknown) = (0i64, 0i64);
            for _ in 0..2000 {
                let choice = rng.random_range(0..3);
                let r = if choice == 2 && !mine.is_empty() {
                    let rid = mine.swap_remove(rng.random_range(0..mine.len()));
                    let r = http
                        .post(format!("{base}/reservations/{rid}/commit"))
                        .bearer_auth(token("holds"))
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status() == StatusCode::OK => {
                            committed += 1;
                            continue;
                        }
                        Ok(r) if r.status() != StatusCode::SERVICE_UNAVAILABLE => {
                            panic!("commit: {}", r.status())
                        }
                        _ => {
                            unknown += 1;
                            break;
                        }
                    }
                } else {
                    let ttl = if choice == 0 { 3600 } else { 1 };
                    let r = http
                        .post(format!("{base}/items/{item}/reservations"))
                        .bearer_auth(token("holds"))
                        .json(&json!({"qty": 1, "ttl": ttl}))
                        .send()
                        .await;
                    (r, ttl)
                };
                match r {
                    (Ok(r), ttl) if r.status() == StatusCode::CREATED => {
                        let v: Value = r.json().await.unwrap();
                        if ttl > 1 {
                            mine.push(v["id"].as_str().unwrap().to_string());
                        }
                    }
                    (Ok(r), _) if r.status() == StatusCode::CONFLICT => {
                        // 100 holds per item: a refusal that changes
                        // nothing; anything else is a bug.
                        let v: Value = r.json().await.unwrap();
                        assert_eq!(v["error"], json!("reservation_limit_reached"), "{v}");
                    }
                    _ => {
                        unknown += 1;
                        break;
                    }
                }
            }
            (mine, committed, unknown)
        });
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..300))).await;
        stop(server, libc::SIGKILL).await;
        let (mine, c, u) = client.await.unwrap();
        open = mine;
        committed += c;
        unknown += u;
        server = start(dir.path()).await;
        let read = || {
            let (http, base, id) = (http.clone(), server.base.clone(), id.clone());
            async move {
                let v: Value = http
                    .get(format!("{base}/items/{id}"))
                    .bearer_auth(token("holds"))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                (v["qty"].as_i64().unwrap(), v["reserved"].as_i64().unwrap())
            }
        };
        let (qty, _) = read().await;
        let high = START - committed;
        assert!(
            (high - unknown..=high).contains(&qty),
            "round {round}: qty {qty}, expected {high} minus at most {unknown}"
        );
        let want = open.len() as i64;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let reserved = loop {
            let (_, reserved) = read().await;
            if reserved <= want + unknown {
                break reserved;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: the short holds never expired ({reserved} reserved)"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(
            reserved >= want,
            "round {round}: {reserved} reserved, {want} acknowledged open holds"
        );
    }
    for rid in &open {
        let r = http
            .post(format!("{}/reservations/{rid}/commit", server.base))
            .bearer_auth(token("holds"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "acknowledged hold {rid} lost");
    }
    assert!(
        committed + open.len() as i64 > 0,
        "the load was acknowledged"
    );
    drop(server);
}

/// Goal: a write's reason and reference survive kill -9 with its history
/// entry, and a hold placed by a transaction survives with it. Method: a
/// client PATCHes -1 with `reason: sale` and a distinct reference (and
/// every tenth write is a transaction that also reserves one unit) until
/// kill -9 at a random moment; after the restart the item's history (its
/// newest HISTORY_PER_ITEM_MAX entries) holds, for every acknowledged write
/// in that window, an entry at the acknowledged version with exactly the
/// reason and reference sent, and every acknowledged transaction hold
/// still commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_keeps_reasons_and_references_in_history() {
    use countiq::domain::HISTORY_PER_ITEM_MAX;
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path()).await;
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/items", server.base))
        .bearer_auth(token("notes"))
        .json(&json!({"name": "noted", "qty": 1_000_000, "reason": "restock"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut rng = rand::rng();
    let mut holds: Vec<String> = Vec::new();
    for round in 0..3u64 {
        let (base, item, prior) = (server.base.clone(), id.clone(), holds.len());
        let client = tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap();
            // version → reference, for every acknowledged write
            let mut acked: Vec<(u64, String)> = Vec::new();
            let mut holds = Vec::new();
            for n in 0..5000u64 {
                let reference = format!("order {round}-{n}");
                // At most 60 holds: the item's bound is 100.
                let tx = n % 10 == 9 && prior + holds.len() < 60;
                let r = if tx {
                    let ops = json!({"ops": [
                        {"item": item, "delta": -1, "reason": "sale", "reference": reference},
                        {"reserve": {"item": item, "qty": 1, "ttl": 3600}},
                    ]});
                    http.post(format!("{base}/transactions")).json(&ops)
                } else {
                    let body = json!({"delta": -1, "reason": "sale", "reference": reference});
                    http.patch(format!("{base}/items/{item}/qty")).json(&body)
                };
                let Ok(r) = r.bearer_auth(token("notes")).send().await else {
                    break;
                };
                if r.status() != StatusCode::OK {
                    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
                    break;
                }
                let Ok(v) = r.json::<Value>().await else {
                    break;
                };
                let version = if tx {
                    holds.push(v["reservations"][0]["id"].as_str().unwrap().to_string());
                    v["items"][0]["version"].as_u64().unwrap()
                } else {
                    v["version"].as_u64().unwrap()
                };
                acked.push((version, reference));
            }
            (acked, holds)
        });
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..400))).await;
        stop(server, libc::SIGKILL).await;
        let (acked, mine) = client.await.unwrap();
        holds.extend(mine);
        server = start(dir.path()).await;
        let h: Value = http
            .get(format!("{}/items/{id}/history?limit=1000", server.base))
            .bearer_auth(token("notes"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let entries = h["entries"].as_array().unwrap();
        assert!(entries.len() <= HISTORY_PER_ITEM_MAX);
        let oldest = entries.last().unwrap()["version"].as_u64().unwrap();
        let mut checked = 0;
        for (version, reference) in acked.iter().filter(|(v, _)| *v >= oldest) {
            let e = entries
                .iter()
                .find(|e| e["version"] == json!(version))
                .unwrap_or_else(|| panic!("round {round}: acknowledged v{version} lost: {h}"));
            assert_eq!(
                (&e["reason"], &e["reference"]),
                (&json!("sale"), &json!(reference)),
                "round {round}: v{version}"
            );
            checked += 1;
        }
        assert!(
            acked.is_empty() || checked > 0,
            "round {round}: nothing acknowledged was checked"
        );
    }
    for rid in &holds {
        let r = http
            .post(format!("{}/reservations/{rid}/commit", server.base))
            .bearer_auth(token("notes"))
            .json(&json!({"reason": "sale"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "acknowledged hold {rid} lost");
    }
    drop(server);
}

/// A write as owner "feed"; returns its `CountIQ-LSN` and body.
async fn feed_write(base: &str, method: reqwest::Method, path: &str, body: Value) -> (u64, Value) {
    let r = reqwest::Client::new()
        .request(method, format!("{base}{path}"))
        .bearer_auth(token("feed"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let lsn = r.headers()["countiq-lsn"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    (lsn, r.json().await.unwrap())
}

async fn feed_stream(base: &str, last_event_id: Option<u64>) -> sse::Stream {
    let http = reqwest::Client::new();
    let r = sse::open(&http, base, &token("feed"), last_event_id).await;
    assert_eq!(r.status(), StatusCode::OK);
    sse::Stream::new(r)
}

/// Goal: the change feed resumes across kill -9 with `Last-Event-ID`,
/// exactly (the rest from the recovered log, then live: no gap, no
/// duplicate), and says `reset` once the point it asks for was truncated
/// away by snapshots. Method: the real binary; a stream sees a create and
/// two PATCHes (ids = the writes' CountIQ-LSNs); kill -9; restart; resume
/// after the create: the two PATCHes come back from the log, then a new
/// PATCH live; then two graceful restarts (snapshot, then snapshot + prune
/// of the first segment); resume after the create again: `reset` with the
/// log's new oldest LSN, then the next PATCH live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_feed_resumes_across_kill_9_and_resets_after_truncation() {
    use reqwest::Method;
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut stream = feed_stream(&server.base, None).await;
    let (created, item) = feed_write(
        &server.base,
        Method::POST,
        "/items",
        json!({"name": "tea", "qty": 10}),
    )
    .await;
    let qty_path = format!("/items/{}/qty", item["id"].as_str().unwrap());
    let (p1, _) = feed_write(&server.base, Method::PATCH, &qty_path, json!({"delta": -1})).await;
    let (p2, _) = feed_write(&server.base, Method::PATCH, &qty_path, json!({"delta": -1})).await;
    let ids: Vec<_> = stream.take(3).await.iter().map(|e| e.id).collect();
    assert_eq!(ids, vec![Some(created), Some(p1), Some(p2)]);
    stop(server, libc::SIGKILL).await;
    let first_segment = segments(dir.path())[0].clone();

    let server = start(dir.path()).await;
    let mut resumed = feed_stream(&server.base, Some(created)).await;
    let (p3, _) = feed_write(&server.base, Method::PATCH, &qty_path, json!({"delta": -1})).await;
    let events = resumed.take(3).await;
    let ids: Vec<_> = events.iter().map(|e| e.id).collect();
    assert_eq!(ids, vec![Some(p1), Some(p2), Some(p3)], "log, then live");
    let qtys: Vec<_> = events.iter().map(|e| e.data["qty"].clone()).collect();
    assert_eq!(qtys, vec![json!(9), json!(8), json!(7)]);
    drop(resumed);
    stop(server, libc::SIGTERM).await; // snapshot 1
    let server = start(dir.path()).await;
    stop(server, libc::SIGTERM).await; // snapshot 2; prune drops what snapshot 1 covers
    assert!(
        !segments(dir.path()).contains(&first_segment),
        "the segment with the feed's first events was truncated away"
    );

    let server = start(dir.path()).await;
    let mut gone = feed_stream(&server.base, Some(created)).await;
    let reset = gone.next().await.unwrap();
    assert_eq!(reset.event, "reset");
    let oldest = reset.data["oldest_lsn"].as_u64().unwrap();
    assert!(
        oldest > created + 1,
        "oldest {oldest} is past the requested point {created}"
    );
    assert_eq!(
        reset.id,
        Some(p3),
        "the stream goes on after the owner's last LSN"
    );
    let (p4, _) = feed_write(&server.base, Method::PATCH, &qty_path, json!({"delta": -1})).await;
    let next = gone.next().await.unwrap();
    assert_eq!((next.id, next.event.as_str()), (Some(p4), "item.qty"));
    stop(server, libc::SIGKILL).await;
}
