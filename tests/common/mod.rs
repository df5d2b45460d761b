//! Test harness: a real CountIQ server (the production router and node) on
//! 127.0.0.1:0 over a data dir, driven with reqwest. `restart` stops it
//! gracefully and starts a new one on the same dir, so tests can check what
//! recovery brings back.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use countiq::auth::Verifier;
use countiq::domain::OwnerId;
use countiq::node::NodeConfig;
use countiq::server::{serve, ServeConfig, Stopped};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::sync::oneshot;

pub const SECRET: &[u8] = b"test-secret-0123456789abcdef-0123456789";

pub struct TestServer {
    pub base: String,
    pub http: reqwest::Client,
    dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    tweak: fn(&mut NodeConfig),
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<Stopped, countiq::server::ServeError>>>,
}

/// A response, read whole.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub raw: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    /// The `error` code of a problem body.
    pub fn code(&self) -> &str {
        self.body["error"].as_str().unwrap_or("")
    }
}

fn no_tweak(_: &mut NodeConfig) {}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(no_tweak).await
    }

    pub async fn start_with(tweak: fn(&mut NodeConfig)) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let mut s = Self::start_in(&dir, tweak).await;
        s._tmp = Some(tmp);
        s
    }

    /// Start on an existing data dir (recovering what it holds).
    pub async fn start_in(dir: &Path, tweak: fn(&mut NodeConfig)) -> Self {
        // Quiet, but the snapshot-by-count default stays: restart tests
        // rely on a snapshot only when they take one or write 5M records.
        let mut node = NodeConfig::quiet(dir);
        node.snapshot_every_records = countiq::node::SNAPSHOT_EVERY_RECORDS_DEFAULT;
        node.segment_bytes = TEST_SEGMENT_BYTES;
        tweak(&mut node);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let config = ServeConfig {
            addr,
            node,
            jwt_secret: SECRET.to_vec(),
        };
        let task = tokio::spawn(serve(config, listener, async move {
            let _ = stopped.await;
        }));
        let s = TestServer {
            base: format!("http://{addr}"),
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(256)
                .build()
                .expect("client"),
            dir: dir.to_path_buf(),
            _tmp: None,
            tweak,
            stop: Some(stop),
            task: Some(task),
        };
        s.wait_ready().await;
        s
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    async fn wait_ready(&self) {
        for _ in 0..500 {
            if let Ok(r) = self.http.get(format!("{}/readyz", self.base)).send().await {
                if r.status() == StatusCode::OK {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("server did not become ready");
    }

    /// Graceful stop: drain, final snapshot, close the log.
    pub async fn stop(&mut self) -> Stopped {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self.task.take().expect("running");
        task.await.expect("server task").expect("server result")
    }

    /// Stop gracefully and start again on the same dir.
    pub async fn restart(mut self) -> Self {
        let stopped = self.stop().await;
        assert!(matches!(stopped, Stopped::Gracefully), "{stopped:?}");
        let tmp = self._tmp.take();
        let mut s = Self::start_in(&self.dir, self.tweak).await;
        s._tmp = tmp;
        s
    }

    pub fn token(&self, owner: &str) -> String {
        Verifier::new(SECRET).mint(
            &OwnerId::new(owner).expect("owner"),
            Duration::from_secs(3600),
        )
    }

    /// Send a request as `owner` (None: no Authorization) with an optional
    /// JSON body and extra headers.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        owner: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(o) = owner {
            req = req.bearer_auth(self.token(o));
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        read(req.send().await.expect("request")).await
    }

    /// The body of an unauthenticated GET (the ops routes), as text.
    pub async fn text(&self, path: &str) -> String {
        let r = self.http.get(format!("{}{path}", self.base)).send().await;
        r.expect("request").text().await.expect("body")
    }

    /// Send a raw body with a given content type.
    pub async fn send_raw(
        &self,
        method: Method,
        path: &str,
        owner: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Resp {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(self.token(owner));
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        read(req.body(body).send().await.expect("request")).await
    }

    pub async fn create(&self, owner: &str, name: &str, qty: i64) -> Value {
        let r = self
            .send(
                Method::POST,
                "/items",
                Some(owner),
                Some(serde_json::json!({"name": name, "qty": qty})),
                &[],
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.raw);
        r.body
    }

    pub async fn get(&self, owner: &str, id: &str) -> Resp {
        self.send(Method::GET, &format!("/items/{id}"), Some(owner), None, &[])
            .await
    }

    pub async fn patch(&self, owner: &str, id: &str, delta: i64) -> Resp {
        let body = serde_json::json!({"delta": delta});
        self.send(
            Method::PATCH,
            &format!("/items/{id}/qty"),
            Some(owner),
            Some(body),
            &[],
        )
        .await
    }
}

pub async fn read(r: reqwest::Response) -> Resp {
    let status = r.status();
    let headers = r.headers().clone();
    let raw = r.text().await.expect("body");
    let body = serde_json::from_str(&raw).unwrap_or(Value::Null);
    Resp {
        status,
        headers,
        body,
        raw,
    }
}

// ---- node-level helpers (no HTTP) ------------------------------------------

/// WAL segment size for test nodes: the CLI's minimum (1 MiB). Every
/// start zero-fills its first segment and prepares the next one; at the
/// 64 MiB default that is 128 MiB of disk writes per test server.
pub const TEST_SEGMENT_BYTES: u64 = 1 << 20;

/// A node config for tests: no parking, no background snapshots, 1 MiB
/// segments.
pub fn node_config(dir: &Path) -> NodeConfig {
    NodeConfig {
        segment_bytes: TEST_SEGMENT_BYTES,
        ..NodeConfig::quiet(dir)
    }
}

/// Create an item with qty 0 through the actor; returns its id.
pub async fn create_item(node: &countiq::node::Node, owner: &OwnerId, name: &str) -> uuid::Uuid {
    use countiq::actor::Written;
    use countiq::domain::{Command, ItemName, Outcome, Qty};
    let cmd = Command::Create {
        name: ItemName::new(name).unwrap(),
        qty: Qty::ZERO,
        note: countiq::domain::Note::NONE,
    };
    match node.registry().write(owner, cmd, None).await {
        Ok(Written::Done {
            result: Ok(Outcome::Created(item)),
            ..
        }) => item.id,
        other => panic!("create failed: {other:?}"),
    }
}
