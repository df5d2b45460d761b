//! Goal: a node of a cluster refuses (421) every request for an owner the
//! ring gives to another node, after authentication and before anything is
//! applied or any idempotency key stored, naming the owning node; and a
//! node refuses to start over data written under another membership.
//! Method: two real nodes in-process on 127.0.0.1 with one cluster file;
//! every route sent for one owner to the wrong node, then the state of both
//! read back (the right node over HTTP, the wrong node's log on disk after
//! a graceful stop); restarts with changed membership must fail.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use countiq::auth::Verifier;
use countiq::cluster::{Cluster, GuardError, Placement};
use countiq::domain::OwnerId;
use countiq::node::NodeConfig;
use countiq::server::{serve_in_cluster, ServeConfig, Stopped};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::sync::oneshot;

const SECRET: &[u8] = b"cluster-test-secret-0123456789abcdef";
/// Waiting for a node to become ready, at most (a condition, not a sleep).
const READY_DEADLINE: Duration = Duration::from_secs(20);

struct Node {
    base: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<Stopped, countiq::server::ServeError>>,
}

impl Node {
    async fn stop(mut self) -> Stopped {
        let _ = self.stop.take().expect("running").send(());
        self.task.await.expect("task").expect("server result")
    }
}

fn cluster_file(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("[[node]]\nid = \"node{}\"\naddr = \"{a}\"\n", i + 1))
        .collect()
}

async fn start(
    dir: &Path,
    listener: tokio::net::TcpListener,
    placement: Option<Placement>,
) -> Result<Node, anyhow::Error> {
    let addr = listener.local_addr()?;
    let mut node = NodeConfig::new(dir);
    node.snapshot_interval = None;
    let config = ServeConfig {
        addr,
        node,
        jwt_secret: SECRET.to_vec(),
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let mut task = tokio::spawn(serve_in_cluster(config, placement, listener, async move {
        let _ = stopped.await;
    }));
    let base = format!("http://{addr}");
    let deadline = tokio::time::Instant::now() + READY_DEADLINE;
    loop {
        if task.is_finished() {
            // The guard refused (or start-up failed): hand back its error.
            let result = (&mut task).await?;
            return Err(
                match result.expect_err("a server that stopped before ready") {
                    countiq::server::ServeError::Cluster(guard) => guard.into(),
                    other => other.into(),
                },
            );
        }
        if let Ok(r) = reqwest::get(format!("{base}/readyz")).await {
            if r.status() == StatusCode::OK {
                break;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "node not ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(Node {
        base,
        stop: Some(stop),
        task,
    })
}

fn token(owner: &str) -> String {
    Verifier::new(SECRET).mint(&OwnerId::new(owner).unwrap(), Duration::from_secs(600))
}

async fn send(
    base: &str,
    method: Method,
    path: &str,
    owner: Option<&str>,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut req = reqwest::Client::new().request(method, format!("{base}{path}"));
    if let Some(o) = owner {
        req = req.bearer_auth(token(o));
    }
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.expect("reply")
}

/// An owner the cluster gives to `id`.
fn owner_of(cluster: &Cluster, id: &str) -> String {
    (0..)
        .map(|i| format!("owner-{i}"))
        .find(|o| cluster.owner_node(o).id == id)
        .unwrap()
}

async fn listeners() -> (tokio::net::TcpListener, tokio::net::TcpListener, Cluster) {
    let a = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let text = cluster_file(&[a.local_addr().unwrap(), b.local_addr().unwrap()]);
    (a, b, Cluster::parse(&text).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misdirected_requests_change_nothing_on_either_node() {
    let (dir1, dir2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (l1, l2, cluster) = listeners().await;
    let node2_addr = l2.local_addr().unwrap();
    let node1 = start(dir1.path(), l1, Some(cluster.placement("node1").unwrap()))
        .await
        .unwrap();
    let node2 = start(dir2.path(), l2, Some(cluster.placement("node2").unwrap()))
        .await
        .unwrap();
    let bob = owner_of(&cluster, "node2");

    // One real item on the right node, so the wrong node gets real ids.
    let created = send(
        &node2.base,
        Method::POST,
        "/items",
        Some(&bob),
        Some(json!({"name": "milk", "qty": 5})),
        &[],
    )
    .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let item: Value = created.json().await.unwrap();
    let id = item["id"].as_str().unwrap().to_string();
    let before: Value = send(&node2.base, Method::GET, "/items", Some(&bob), None, &[])
        .await
        .json()
        .await
        .unwrap();

    let key = [("idempotency-key", "k-1")];
    let txn = json!({"ops": [{"item": id, "delta": 1}]});
    let requests: Vec<(Method, String, Option<Value>)> = vec![
        (
            Method::POST,
            "/items".into(),
            Some(json!({"name": "eggs", "qty": 1})),
        ),
        (Method::GET, format!("/items/{id}"), None),
        (Method::GET, "/items".into(), None),
        (
            Method::PUT,
            format!("/items/{id}"),
            Some(json!({"name": "x", "qty": 9})),
        ),
        (
            Method::PATCH,
            format!("/items/{id}/qty"),
            Some(json!({"delta": -5})),
        ),
        (Method::DELETE, format!("/items/{id}"), None),
        (Method::POST, "/transactions".into(), Some(txn)),
        // A bad body is still 421: ownership is checked before the body.
        (
            Method::PATCH,
            format!("/items/{id}/qty"),
            Some(json!({"delta": "no"})),
        ),
    ];
    for (method, path, body) in requests {
        let r = send(&node1.base, method.clone(), &path, Some(&bob), body, &key).await;
        assert_eq!(
            r.status(),
            StatusCode::MISDIRECTED_REQUEST,
            "{method} {path}"
        );
        let header = |h: &str| {
            r.headers()
                .get(h)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        assert_eq!(header("cache-control").as_deref(), Some("no-store"));
        assert_eq!(
            header("countiq-owner-node"),
            Some(format!("node2 {node2_addr}"))
        );
        assert_eq!(
            header("content-type").as_deref(),
            Some("application/problem+json")
        );
        let problem: Value = r.json().await.unwrap();
        assert_eq!(problem["error"], "misdirected_owner");
        assert_eq!(problem["status"], 421);
    }
    // Authentication comes first: no token is 401 on any node.
    let anon = send(&node1.base, Method::GET, "/items", None, None, &[]).await;
    assert_eq!(anon.status(), StatusCode::UNAUTHORIZED);

    // The right node: unchanged, and the key was never stored anywhere, so
    // it runs fresh here (no replay of a response from node1).
    let after: Value = send(&node2.base, Method::GET, "/items", Some(&bob), None, &[])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(before, after);
    let keyed = send(
        &node2.base,
        Method::PATCH,
        &format!("/items/{id}/qty"),
        Some(&bob),
        Some(json!({"delta": 1})),
        &key,
    )
    .await;
    assert_eq!(keyed.status(), StatusCode::OK);
    assert!(keyed.headers().get("idempotent-replayed").is_none());
    assert_eq!(keyed.json::<Value>().await.unwrap()["qty"], 6);

    // The wrong node: its log holds no record at all.
    let stopped = node1.stop().await;
    assert!(matches!(stopped, Stopped::Gracefully), "{stopped:?}");
    let report = countiq::storage::tools::verify(dir1.path(), &mut Vec::new()).unwrap();
    assert_eq!(
        report.scan.records, 0,
        "node1 logged something for a misdirected owner"
    );
    let stopped = node2.stop().await;
    assert!(matches!(stopped, Stopped::Gracefully), "{stopped:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_to_start_with_a_changed_ring_over_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let (l1, l2, cluster) = listeners().await;
    let addr1 = l1.local_addr().unwrap();
    drop(l2);
    let node1 = start(dir.path(), l1, Some(cluster.placement("node1").unwrap()))
        .await
        .unwrap();
    let alice = owner_of(&cluster, "node1");
    let r = send(
        &node1.base,
        Method::POST,
        "/items",
        Some(&alice),
        Some(json!({"name": "a"})),
        &[],
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let stopped = node1.stop().await;
    assert!(matches!(stopped, Stopped::Gracefully), "{stopped:?}");

    // A third node added: the ring changed, so node1 must not start.
    let extra: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let mut addrs: Vec<SocketAddr> = cluster.members().iter().map(|m| m.addr.into()).collect();
    addrs.push(extra);
    let grown = Cluster::parse(&cluster_file(&addrs)).unwrap();
    for placement in [
        Some(grown.placement("node1").unwrap()),
        Some(cluster.placement("node2").unwrap()),
        None,
    ] {
        let l = tokio::net::TcpListener::bind(addr1).await.unwrap();
        let err = start(dir.path(), l, placement)
            .await
            .err()
            .expect("refused");
        let guard = err
            .downcast_ref::<GuardError>()
            .unwrap_or_else(|| panic!("not a guard error: {err:#}"));
        assert!(
            matches!(
                guard,
                GuardError::Changed { .. } | GuardError::ClusterDataWithoutCluster { .. }
            ),
            "{guard}"
        );
    }
    // The same membership still starts, with the data intact.
    let l = tokio::net::TcpListener::bind(addr1).await.unwrap();
    let node1 = start(dir.path(), l, Some(cluster.placement("node1").unwrap()))
        .await
        .unwrap();
    let list: Value = send(&node1.base, Method::GET, "/items", Some(&alice), None, &[])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let stopped = node1.stop().await;
    assert!(matches!(stopped, Stopped::Gracefully), "{stopped:?}");
}
