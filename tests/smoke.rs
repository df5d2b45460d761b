//! Goal: the harness works end to end (create, read back, restart, read
//! again). Method: a real server on port 0, restarted on the same dir.
mod common;

use common::TestServer;
use reqwest::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_then_read_back_across_a_restart() {
    let s = TestServer::start().await;
    let item = s.create("alice", "milk", 3).await;
    let id = item["id"].as_str().unwrap().to_string();
    let r = s.patch("alice", &id, 2).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["qty"], 5);
    let s = s.restart().await;
    let r = s.get("alice", &id).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.raw);
    assert_eq!(r.body["qty"], 5);
    assert_eq!(r.body["version"], 2);
}
