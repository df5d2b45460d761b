//! Goal: the three-node compose cluster behind nginx routes every owner to
//! the node that holds it and keeps owners independent under faults.
//! Method: build the images with the project's scripts (cached), bring up
//! `deploy/compose.yaml` under a unique project name and subnet, and tear it
//! down at the end even on failure (a Drop guard). In order:
//!
//! 1. golden ring: 1,000 owners through nginx; the node nginx chose
//!    (`CountIQ-Upstream`) is the node our ring names, for every owner;
//! 2. `countiq load --scenario uniform --owners 1000` through nginx: the
//!    check passes, every reply is 200 (no 421), every node served writes;
//! 3. a request sent straight to the wrong node: 421 naming the right one,
//!    and nothing changed on either node;
//! 4. kill -9 of one node under load, then restart; 5. a network partition
//!    of one node (disconnected from the compose network), then reconnect.
//!    In both: every request for the other nodes' owners is 200, the
//!    victim's owners get only 502/503/504 (never a hang, never 421), and
//!    afterwards every item's qty is start + acknowledged deltas (within
//!    the range of the 502/504s, whose outcome is unknown).
//! 6. `docker stop` of a node (SIGTERM): it drains, writes its final
//!    snapshot and exits 0.
//!
//! Skips (passes, printing why) only when `docker info` fails.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use countiq::auth::Verifier;
use countiq::cluster::Cluster;
use countiq::domain::OwnerId;
use rand::Rng;
use serde_json::{json, Value};

/// The image tag the tests build (the binary `cargo test` built), so a
/// test run never replaces the release image of `scripts/cluster-up.sh`.
const TEST_IMAGE: &str = "countiq:cluster-test";
/// Owners in the ring and load phases (the 1,000).
const OWNERS: usize = 1000;
/// Owners and concurrent clients in the fault phases.
const FAULT_OWNERS: usize = 300;
const FAULT_CLIENTS: usize = 16;
/// Phase lengths of a fault run: before the fault, during it, after repair.
const FAULT_BEFORE: Duration = Duration::from_secs(2);
/// A killed node is down this long. A partition lasts longer than nginx's
/// read timeout: a shorter one only delays the requests in flight (TCP
/// retransmits them after the reconnect and they succeed), which would
/// show nothing about how the victim's owners fail.
const KILL_DOWN: Duration = Duration::from_secs(3);
const PARTITION_DOWN: Duration =
    Duration::from_secs(countiq::cluster::PROXY_READ_TIMEOUT_S as u64 + 3);
const FAULT_AFTER: Duration = Duration::from_secs(2);
/// A reply must come within this (nginx's own bounds are 0.5 s to connect
/// and 5 s to read; this only separates "answered" from "hung").
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Waiting for a restarted or reconnected node to be healthy, at most.
const HEALTHY_DEADLINE: Duration = Duration::from_secs(60);
const START_QTY: i64 = 1_000_000;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// One compose project; `Drop` takes it down with its volumes.
struct Project {
    name: String,
    subnet: String,
    dir: PathBuf,
    secret: String,
}

impl Project {
    fn env(&self, cmd: &mut Command) {
        cmd.current_dir(repo())
            .env("COUNTIQ_PROJECT", &self.name)
            .env("COUNTIQ_SUBNET", &self.subnet)
            .env("COUNTIQ_CLUSTER_DIR", &self.dir)
            .env("COUNTIQ_JWT_SECRET", &self.secret)
            .env("COUNTIQ_IMAGE", TEST_IMAGE)
            .env("COUNTIQ_BIN", env!("CARGO_BIN_EXE_countiq"));
    }

    fn compose(&self, args: &[&str]) -> Result<String, String> {
        let v2 = Command::new("docker").args(["compose", "version"]).output();
        let mut cmd = if v2.is_ok_and(|o| o.status.success()) {
            let mut c = Command::new("docker");
            c.arg("compose");
            c
        } else {
            Command::new("docker-compose")
        };
        cmd.args(["-p", &self.name, "-f", "deploy/compose.yaml"])
            .args(args);
        self.env(&mut cmd);
        run(&mut cmd)
    }

    fn container(&self, service: &str) -> String {
        self.compose(&["ps", "-q", service]).expect("compose ps")
    }

    fn network(&self) -> String {
        format!("{}_countiq", self.name)
    }

    /// `http://127.0.0.1:<port>` of a service's published port.
    fn url(&self, service: &str) -> String {
        let port = self
            .compose(&["port", service, "8080"])
            .expect("compose port");
        let port = port.rsplit(':').next().expect("host:port");
        format!("http://127.0.0.1:{port}")
    }

    fn wait_healthy(&self, service: &str) {
        let id = self.container(service);
        let deadline = Instant::now() + HEALTHY_DEADLINE;
        loop {
            let status = run(Command::new("docker").args([
                "inspect",
                "-f",
                "{{.State.Health.Status}}",
                &id,
            ]));
            if status.as_deref() == Ok("healthy") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{service} not healthy: {status:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let mut down = Command::new(repo().join("scripts/cluster-down.sh"));
        self.env(&mut down);
        if let Err(e) = run(&mut down) {
            eprintln!("cluster_compose: tearing down {} failed: {e}", self.name);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Brings the cluster up under a fresh name; another subnet if one is taken.
fn up() -> Project {
    let pid = std::process::id();
    let secret: String = (0..32)
        .map(|_| format!("{:02x}", rand::rng().random::<u8>()))
        .collect();
    let mut last_err = String::new();
    for attempt in 0..5u32 {
        let third = 32 + (pid + attempt * 37) % 200;
        let name = format!("cqtest{pid}a{attempt}");
        let project = Project {
            dir: repo().join("target/cluster").join(&name),
            subnet: format!("172.29.{third}"),
            name,
            secret: secret.clone(),
        };
        let mut cmd = Command::new(repo().join("scripts/cluster-up.sh"));
        project.env(&mut cmd);
        let started = Instant::now();
        match run(&mut cmd) {
            Ok(out) => {
                eprintln!(
                    "cluster up in {:.1}s: {out}",
                    started.elapsed().as_secs_f64()
                );
                return project;
            }
            // Drop tears down what was created before trying another subnet.
            Err(e) => last_err = e,
        }
    }
    panic!("cluster did not come up: {last_err}");
}

fn docker_works() -> Result<(), String> {
    run(Command::new("docker").arg("info")).map(|_| ())
}

struct Harness {
    project: Project,
    cluster: Cluster,
    proxy: String,
    http: reqwest::Client,
    auth: Verifier,
}

impl Harness {
    fn token(&self, owner: &str) -> String {
        self.auth
            .mint(&OwnerId::new(owner).unwrap(), Duration::from_secs(3600))
    }

    async fn create_item(&self, owner: &str) -> String {
        let r = self
            .http
            .post(format!("{}/items", self.proxy))
            .bearer_auth(self.token(owner))
            .json(&json!({"name": "item", "qty": START_QTY}))
            .send()
            .await
            .expect("create");
        assert_eq!(r.status(), 201, "create for {owner}");
        r.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    async fn qty(&self, owner: &str, id: &str) -> i64 {
        let r = self
            .http
            .get(format!("{}/items/{id}", self.proxy))
            .bearer_auth(self.token(owner))
            .send()
            .await
            .expect("read");
        assert_eq!(r.status(), 200, "read {owner}/{id}");
        r.json::<Value>().await.unwrap()["qty"].as_i64().unwrap()
    }

    /// A metric's value summed over the lines that contain every `filter`.
    async fn metric(&self, service: &str, name: &str, filters: &[&str]) -> f64 {
        let text = self
            .http
            .get(format!("{}/metrics", self.project.url(service)))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| l.starts_with(name) && filters.iter().all(|f| l.contains(f)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

#[test]
fn cluster_on_compose() {
    if let Err(why) = docker_works() {
        eprintln!("cluster_compose: SKIPPED, `docker info` failed: {why}");
        return;
    }
    let started = Instant::now();
    let project = up();
    let cluster = Cluster::load(&project.dir.join("cluster.toml")).expect("cluster file");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let h = Harness {
        proxy: project.url("nginx"),
        auth: Verifier::new(project.secret.as_bytes()),
        http: reqwest::Client::builder()
            .timeout(CLIENT_TIMEOUT)
            .pool_max_idle_per_host(64)
            .build()
            .unwrap(),
        cluster,
        project,
    };
    runtime.block_on(async {
        golden_ring(&h).await;
        uniform_load(&h).await;
        misdirected(&h).await;
        fault(&h, Fault::Kill).await;
        fault(&h, Fault::Partition).await;
    });
    graceful_stop(&h);
    eprintln!(
        "cluster_compose: all phases in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

fn graceful_stop(h: &Harness) {
    let id = h.project.container("node1");
    run(Command::new("docker").args(["stop", "--time", "30", &id])).expect("docker stop");
    let code = run(Command::new("docker").args(["inspect", "-f", "{{.State.ExitCode}}", &id]));
    assert_eq!(code.as_deref(), Ok("0"), "node1's exit after SIGTERM");
    let out = Command::new("docker")
        .args(["logs", &id])
        .output()
        .expect("docker logs");
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(
        logs.contains("stopped: final snapshot written, log closed"),
        "no final snapshot in node1's log"
    );
}

async fn golden_ring(h: &Harness) {
    let mut share: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..OWNERS {
        let owner = format!("ring-{i}");
        let r = h
            .http
            .get(format!("{}/items", h.proxy))
            .bearer_auth(h.token(&owner))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "owner {owner}");
        let upstream = r.headers()["countiq-upstream"]
            .to_str()
            .unwrap()
            .to_string();
        let ours = h.cluster.owner_node(&owner);
        assert_eq!(
            upstream,
            ours.addr.to_string(),
            "nginx and the ring disagree on {owner}"
        );
        *share.entry(ours.id.clone()).or_default() += 1;
    }
    eprintln!("golden ring: {OWNERS}/{OWNERS} owners agree; shares {share:?}");
    assert_eq!(share.len(), 3, "every node holds owners");
}

#[derive(Parser)]
struct LoadCli {
    #[command(flatten)]
    load: countiq_load::LoadArgs,
}

async fn uniform_load(h: &Harness) {
    let route = "route=\"/items/{id}/qty\"";
    let mut before = Vec::new();
    for node in ["node1", "node2", "node3"] {
        before.push(
            h.metric(
                node,
                "countiq_http_request_duration_seconds_count",
                &[route, "status=\"200\""],
            )
            .await,
        );
    }
    let history_dir = tempfile::tempdir().expect("temp dir");
    let history_path = history_dir.path().join("uniform.jsonl");
    let args = LoadCli::parse_from([
        "load",
        "--url",
        &h.proxy,
        "--scenario",
        "uniform",
        "--owners",
        &OWNERS.to_string(),
        "--connections",
        "32",
        "--duration",
        "5s",
        "--jwt-secret",
        &h.project.secret,
        "--history",
        history_path.to_str().expect("utf-8 temp path"),
        "--check",
    ])
    .load;
    let report = countiq_load::run(args).await.expect("load run");
    let verdict = report
        .history_check
        .clone()
        .expect("--check gives a verdict");
    assert!(
        verdict.linearizable && verdict.violations_total == 0,
        "the history through nginx is not linearizable: {verdict:#?}"
    );
    assert!(verdict.writes_with_lsn > 0, "no write carried CountIQ-LSN");
    eprintln!(
        "uniform load through nginx: {:.0} req/s, p99 {} µs, statuses {:?}",
        report.requests_per_s, report.latency_us.p99, report.by_status
    );
    assert!(report.ok(), "check failed: {:?}", report.check);
    assert_eq!(report.check.items_checked, OWNERS);
    assert_eq!(report.by_status.get(&421), None, "421 through the proxy");
    assert_eq!(
        report.by_status.keys().copied().collect::<Vec<_>>(),
        vec![200]
    );
    for (i, node) in ["node1", "node2", "node3"].iter().enumerate() {
        let after = h
            .metric(
                node,
                "countiq_http_request_duration_seconds_count",
                &[route, "status=\"200\""],
            )
            .await;
        let served = after - before[i];
        eprintln!("  {node} served {served} PATCHes");
        assert!(served > 0.0, "{node} served none of the load");
    }
}

async fn misdirected(h: &Harness) {
    let owner = (0..)
        .map(|i| format!("wrong-{i}"))
        .find(|o| h.cluster.owner_node(o).id == "node2")
        .unwrap();
    let id = h.create_item(&owner).await;
    let records = |node: &'static str| h.metric(node, "countiq_wal_records_total", &[]);
    let (n1, n2) = (records("node1").await, records("node2").await);
    let r = h
        .http
        .patch(format!("{}/items/{id}/qty", h.project.url("node1")))
        .bearer_auth(h.token(&owner))
        .header("idempotency-key", "misdirected-1")
        .json(&json!({"delta": -7}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 421);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let node2 = &h.cluster.members()[1];
    assert_eq!(
        r.headers()["countiq-owner-node"].to_str().unwrap(),
        format!("{} {}", node2.id, node2.addr)
    );
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"],
        "misdirected_owner"
    );
    assert_eq!(
        h.qty(&owner, &id).await,
        START_QTY,
        "the right node changed"
    );
    assert_eq!(records("node1").await, n1, "the wrong node logged a record");
    assert_eq!(records("node2").await, n2, "the right node logged a record");
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    Kill,
    Partition,
}

/// What the clients saw for one owner.
#[derive(Default, Clone)]
struct Tally {
    acked: i64,
    unknown_down: i64,
    unknown_up: i64,
}

/// Outcomes per phase (0 before the fault, 1 during it, 2 from the repair
/// on) and victim-or-not.
#[derive(Default)]
struct Seen {
    statuses: BTreeMap<(u8, bool, u16), u64>,
    latency_us: BTreeMap<(u8, bool), Vec<u64>>,
    no_reply: u64,
    tallies: Vec<Tally>,
}

async fn fault(h: &Harness, fault: Fault) {
    let victim = "node2";
    let owners: Vec<String> = (0..FAULT_OWNERS)
        .map(|i| format!("{fault:?}-{i}").to_lowercase())
        .collect();
    let mut ids = Vec::new();
    for o in &owners {
        ids.push(h.create_item(o).await);
    }
    let is_victim: Vec<bool> = owners
        .iter()
        .map(|o| h.cluster.owner_node(o).id == victim)
        .collect();
    let tokens: Arc<Vec<String>> = Arc::new(owners.iter().map(|o| h.token(o)).collect());
    let ids = Arc::new(ids);
    let is_victim = Arc::new(is_victim);
    let phase = Arc::new(AtomicU8::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // Each client keeps to one group, so clients stuck on the victim's
    // owners (up to nginx's read timeout) never slow the healthy owners'
    // load: a quarter of the clients drive the victim's owners.
    let group = |victim: bool| -> Arc<Vec<usize>> {
        Arc::new(
            (0..owners.len())
                .filter(|&i| is_victim[i] == victim)
                .collect(),
        )
    };
    let (victims, healthy) = (group(true), group(false));
    let clients: Vec<_> = (0..FAULT_CLIENTS)
        .map(|c| {
            let mine = if c % 4 == 0 {
                victims.clone()
            } else {
                healthy.clone()
            };
            let (http, proxy) = (h.http.clone(), h.proxy.clone());
            let (tokens, ids, is_victim, phase, stop) = (
                tokens.clone(),
                ids.clone(),
                is_victim.clone(),
                phase.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                let mut seen = Seen {
                    tallies: vec![Tally::default(); tokens.len()],
                    ..Seen::default()
                };
                while !stop.load(Ordering::Relaxed) {
                    let (i, delta) = {
                        let mut rng = rand::rng();
                        (
                            mine[rng.random_range(0..mine.len())],
                            if rng.random::<bool>() { 1 } else { -1 },
                        )
                    };
                    let p = phase.load(Ordering::Relaxed);
                    let sent = Instant::now();
                    let r = http
                        .patch(format!("{proxy}/items/{}/qty", ids[i]))
                        .bearer_auth(&tokens[i])
                        .json(&json!({"delta": delta}))
                        .send()
                        .await;
                    let t = &mut seen.tallies[i];
                    let Ok(r) = r else {
                        seen.no_reply += 1;
                        if delta < 0 {
                            t.unknown_down += delta
                        } else {
                            t.unknown_up += delta
                        }
                        continue;
                    };
                    let status = r.status().as_u16();
                    *seen.statuses.entry((p, is_victim[i], status)).or_default() += 1;
                    seen.latency_us
                        .entry((p, is_victim[i]))
                        .or_default()
                        .push(sent.elapsed().as_micros() as u64);
                    match status {
                        200 => t.acked += delta,
                        // nginx: the node may have applied it before it died.
                        502 | 504 => {
                            if delta < 0 {
                                t.unknown_down += delta
                            } else {
                                t.unknown_up += delta
                            }
                        }
                        _ => {}
                    }
                }
                seen
            })
        })
        .collect();
    tokio::time::sleep(FAULT_BEFORE).await;
    let container = h.project.container(victim);
    let ip = h.cluster.members()[1].addr.ip().to_string();
    let injecting = Instant::now();
    match fault {
        Fault::Kill => run(Command::new("docker").args(["kill", "--signal", "KILL", &container])),
        Fault::Partition => run(Command::new("docker").args([
            "network",
            "disconnect",
            "--force",
            &h.project.network(),
            &container,
        ])),
    }
    .expect("inject the fault");
    // Phase 1 starts once the fault is in place (the docker command itself
    // can take seconds on a busy box; requests meanwhile count as before).
    phase.store(1, Ordering::Relaxed);
    eprintln!(
        "{fault:?}: injected in {:.1}s",
        injecting.elapsed().as_secs_f64()
    );
    tokio::time::sleep(match fault {
        Fault::Kill => KILL_DOWN,
        Fault::Partition => PARTITION_DOWN,
    })
    .await;
    match fault {
        Fault::Kill => run(Command::new("docker").args(["start", &container])),
        Fault::Partition => run(Command::new("docker").args([
            "network",
            "connect",
            "--ip",
            &ip,
            &h.project.network(),
            &container,
        ])),
    }
    .expect("repair");
    // Phase 2 (repair and after) from the moment the repair is done: a
    // restarted node's owners see 503 `not_ready` while it recovers.
    phase.store(2, Ordering::Relaxed);
    let repaired = Instant::now();
    tokio::task::block_in_place(|| h.project.wait_healthy(victim));
    eprintln!(
        "{fault:?}: {victim} healthy {:.1}s after repair",
        repaired.elapsed().as_secs_f64()
    );
    tokio::time::sleep(FAULT_AFTER).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = Seen {
        tallies: vec![Tally::default(); owners.len()],
        ..Seen::default()
    };
    for c in clients {
        let s = c.await.unwrap();
        for (k, v) in s.statuses {
            *total.statuses.entry(k).or_default() += v;
        }
        for (k, v) in s.latency_us {
            total.latency_us.entry(k).or_default().extend(v);
        }
        total.no_reply += s.no_reply;
        for (t, x) in total.tallies.iter_mut().zip(s.tallies) {
            t.acked += x.acked;
            t.unknown_down += x.unknown_down;
            t.unknown_up += x.unknown_up;
        }
    }
    report_latency(fault, &mut total);
    eprintln!(
        "{fault:?}: statuses (phase, victim, status) -> count: {:?}",
        total.statuses
    );
    assert_eq!(
        total.no_reply, 0,
        "a request hung past {CLIENT_TIMEOUT:?} or lost its connection"
    );
    for (&(p, victim_owner, status), &n) in &total.statuses {
        if !victim_owner {
            assert_eq!(
                status, 200,
                "{n} requests of a healthy node's owners got {status} in phase {p}"
            );
        } else {
            assert!(
                matches!(status, 200 | 502 | 503 | 504),
                "victim owners got {status} ({n}x) in phase {p}"
            );
        }
    }
    let victim_failures: u64 = total
        .statuses
        .iter()
        .filter(|((p, v, s), _)| *p == 1 && *v && *s != 200)
        .map(|(_, n)| n)
        .sum();
    assert!(
        victim_failures > 0,
        "the fault did not affect the victim's owners"
    );
    for (i, owner) in owners.iter().enumerate() {
        let t = &total.tallies[i];
        let q = h.qty(owner, &ids[i]).await;
        let exact = START_QTY + t.acked;
        assert!(
            (exact + t.unknown_down..=exact + t.unknown_up).contains(&q),
            "{fault:?}: {owner} qty {q}, expected {exact} + [{}, {}]",
            t.unknown_down,
            t.unknown_up
        );
    }
}

/// Prints p99 per phase for healthy and victim owners (measured, never
/// asserted: the timing depends on the machine).
fn report_latency(fault: Fault, seen: &mut Seen) {
    for ((p, victim), v) in seen.latency_us.iter_mut() {
        v.sort_unstable();
        let p99 = v[(v.len() * 99 / 100).min(v.len() - 1)];
        let p50 = v[v.len() / 2];
        eprintln!(
            "{fault:?}: phase {p} {} owners: {} requests, p50 {p50} µs, p99 {p99} µs",
            if *victim { "victim" } else { "healthy" },
            v.len()
        );
    }
}
