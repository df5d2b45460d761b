//! Goal: the load generator, a client of the HTTP contract that shares no
//! code with the server, agrees with the real server: its contract bounds
//! are the server's, its secret rules read the same key, its tokens verify,
//! and every scenario run against a real node passes its own check.
//!
//! Method: compare `countiq_load::contract` with the server's constants and
//! owner-id rule; mint with `countiq_load::mint` and verify with
//! `countiq::auth::Verifier`; load a secret file with both crates; then start the
//! production server (`countiq::server::serve`, fsync always) in-process on
//! 127.0.0.1:0 over a temp data dir, let it create its secret there, and run
//! each scenario for a bounded number of requests with `--data-dir` pointing
//! at it. A wrong token would make setup fail (401), a lost or doubled delta
//! would fail the check, and the server must stop gracefully afterwards.

use std::path::Path;
use std::time::Duration;

use clap::Parser;
use countiq::auth::{self, Verifier};
use countiq::domain::{self, OwnerId};
use countiq::node::NodeConfig;
use countiq::server::{serve, ServeConfig, Stopped};
use countiq_load::{contract, LoadArgs, LoadReport};
use tokio::sync::oneshot;

/// Small segments: every test node zero-fills one ahead of the writer.
const SEGMENT_BYTES: u64 = 1 << 20;
/// Readiness polls before giving up, `READY_POLL` apart.
const READY_POLLS_MAX: u32 = 1000;
const READY_POLL: Duration = Duration::from_millis(10);

#[test]
fn contract_bounds_are_the_servers() {
    assert_eq!(contract::OWNER_ID_BYTES_MAX, domain::OWNER_ID_BYTES_MAX);
    assert_eq!(contract::SECRET_BYTES_MIN, auth::SECRET_BYTES_MIN);
    assert_eq!(contract::SECRET_FILE_NAME, auth::SECRET_FILE_NAME);
    assert_eq!(contract::TX_OPS_MAX as usize, domain::TX_OPS_MAX);
    assert_eq!(contract::JSON_INT_MAX as u64, domain::QTY_MAX);
    assert_eq!(contract::JSON_INT_MAX, domain::DELTA_ABS_MAX);
}

#[test]
fn owner_id_rule_is_the_servers() {
    let singles = (0u8..=127).map(|b| char::from(b).to_string());
    let edges = ["", "é", "ab/c", "a b"].map(String::from);
    let lengths = [63, 64, 65].map(|n| "o".repeat(n));
    for id in singles.chain(edges).chain(lengths) {
        assert_eq!(
            contract::is_owner_id(&id),
            OwnerId::new(&id).is_ok(),
            "owner id {id:?}"
        );
    }
}

#[test]
fn minted_tokens_verify_with_the_servers_auth() {
    let secret = b"0123456789abcdef0123456789abcdef";
    let header = countiq_load::mint(secret, "owner-1").expect("mint");
    let header = header.to_str().expect("ascii");
    let owner = Verifier::new(secret).verify_header(Some(header));
    assert_eq!(owner, Ok(OwnerId::new("owner-1").expect("owner")));
    let stranger = Verifier::new(b"another-secret-another-secret-xx");
    assert!(stranger.verify_header(Some(header)).is_err());
}

#[test]
fn secret_is_read_as_the_server_reads_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The server creates the file on first use; the load generator reads it.
    let created = auth::load_secret(None, None, dir.path()).expect("server creates");
    let read = countiq_load::load_secret(None, dir.path()).expect("load reads");
    assert_eq!(read, created);
    // Whitespace around a hand-written secret is trimmed by both.
    let padded = format!("\t {} \n\n", "k".repeat(40));
    std::fs::write(dir.path().join(auth::SECRET_FILE_NAME), &padded).expect("write");
    let server = auth::load_secret(None, None, dir.path()).expect("server reads");
    assert_eq!(
        countiq_load::load_secret(None, dir.path()).expect("load"),
        server
    );
    let server = auth::load_secret(Some(&padded), None, dir.path()).expect("server");
    assert_eq!(
        countiq_load::load_secret(Some(&padded), dir.path()).expect("load"),
        server
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_owner_passes_against_the_real_server() {
    let report = run_against_real_server(&["--scenario", "hot-owner", "--items", "2"]).await;
    assert_eq!(report.check.items_checked, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_pass_against_the_real_server() {
    let args = [
        "--scenario",
        "transactions",
        "--items",
        "3",
        "--batch",
        "10",
    ];
    let report = run_against_real_server(&args).await;
    assert_eq!(report.deltas_acked, report.replies * 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uniform_passes_against_the_real_server() {
    let report = run_against_real_server(&["--scenario", "uniform", "--owners", "5"]).await;
    assert_eq!(report.check.items_checked, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_passes_against_the_real_server() {
    let report = run_against_real_server(&["--scenario", "mixed"]).await;
    // About 30 of the 300 requests create items (10%); none is unlikely
    // enough (0.9^300) to mean the POST path is not exercised.
    assert!(
        report.by_status.contains_key(&201),
        "{:?}",
        report.by_status
    );
    assert!(
        report.by_status.contains_key(&200),
        "{:?}",
        report.by_status
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_owner_with_64_connections_is_linearizable_on_the_real_server() {
    // Goal: the done-when run of issue 15: 64 connections on one hot owner,
    // every request recorded (--history), the history checked (--check).
    let dir = tempfile::tempdir().expect("tempdir");
    let history = dir.path().join("history.jsonl");
    let (url, stop, server) = start_node(dir.path()).await;
    let history_arg = history.to_str().expect("utf-8 path");
    let argv = [
        "load",
        "--url",
        &url,
        "--scenario",
        "hot-owner",
        "--items",
        "4",
        "--connections",
        "64",
        "--requests",
        "3000",
        "--duration",
        "120s",
        "--timeout",
        "30s",
        "--history",
        history_arg,
        "--check",
    ];
    let mut args = Cli::try_parse_from(argv).expect("valid arguments").load;
    args.data_dir = dir.path().to_path_buf();
    args.jwt_secret = None;
    let report = countiq_load::run(args).await.expect("setup succeeds");
    let verdict = report
        .history_check
        .clone()
        .expect("--check gives a verdict");
    // The file alone gives the same verdict (`countiq check FILE`).
    let check = countiq_load::CheckArgs {
        file: history.clone(),
        json: false,
    };
    let from_file = countiq_load::check_file(&check, &mut Vec::new()).expect("readable");
    let _ = stop.send(());
    let stopped = server.await.expect("server task").expect("server result");
    assert!(matches!(stopped, Stopped::Gracefully), "{stopped:?}");
    assert!(
        report.ok() && verdict.linearizable && from_file,
        "{report:#?}"
    );
    // The owner-wide check ran on the server's CountIQ-LSN headers.
    assert!(
        verdict.writes_with_lsn > 0,
        "no write carried CountIQ-LSN: {verdict:#?}"
    );
    // Setup (4 creates), 3000 keyed PATCHes and 4 final reads, all known.
    assert!(verdict.operations >= 3008, "{verdict:#?}");
    assert_eq!(verdict.unknown, 0, "{verdict:#?}");
    assert_eq!(verdict.items, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn experiment_scenarios_are_linearizable_on_the_real_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (url, stop, server) = start_node(dir.path()).await;
    let scenarios: &[(&str, u16)] = &[
        ("read-your-writes", 200),
        ("contended-put", 412),
        ("racing-creates", 409),
        ("idempotent-retries", 200),
    ];
    for &(scenario, expected_status) in scenarios {
        let argv = [
            "load",
            "--url",
            &url,
            "--scenario",
            scenario,
            "--connections",
            "8",
            "--requests",
            "400",
            "--duration",
            "120s",
            "--timeout",
            "30s",
            "--check",
        ];
        let mut args = Cli::try_parse_from(argv).expect("valid arguments").load;
        args.data_dir = dir.path().to_path_buf();
        args.jwt_secret = None;
        let report = countiq_load::run(args).await.expect("setup succeeds");
        let verdict = report.history_check.as_ref().expect("verdict");
        assert!(
            report.ok() && verdict.linearizable,
            "{scenario}: {report:#?}"
        );
        assert!(
            report.by_status.contains_key(&expected_status),
            "{scenario}: {:?}",
            report.by_status
        );
    }
    let _ = stop.send(());
    let stopped = server.await.expect("server task").expect("server result");
    assert!(matches!(stopped, Stopped::Gracefully), "{stopped:?}");
}

/// Starts a real node, runs `countiq load` with `scenario` against it for a
/// bounded number of requests, stops the node, and returns the report after
/// the checks every scenario shares: the correctness check passed, every
/// request got a 2xx reply, and the node stopped gracefully.
async fn run_against_real_server(scenario: &[&str]) -> LoadReport {
    let dir = tempfile::tempdir().expect("tempdir");
    let (url, stop, server) = start_node(dir.path()).await;
    let mut argv = vec!["load", "--url", &url, "--connections", "4"];
    argv.extend(["--requests", "300", "--duration", "60s", "--timeout", "30s"]);
    argv.extend(scenario);
    let mut args = Cli::try_parse_from(argv).expect("valid arguments").load;
    args.data_dir = dir.path().to_path_buf();
    // The secret must come from the data dir the server wrote, even if the
    // environment sets COUNTIQ_JWT_SECRET.
    args.jwt_secret = None;
    let report = countiq_load::run(args).await.expect("setup succeeds");
    let _ = stop.send(());
    let stopped = server.await.expect("server task").expect("server result");
    assert!(matches!(stopped, Stopped::Gracefully), "{stopped:?}");
    assert!(report.ok(), "check must pass: {report:#?}");
    assert!(report.replies > 0, "no replies: {report:#?}");
    assert!(report.no_reply.is_empty(), "{:?}", report.no_reply);
    assert!(
        report.by_status.keys().all(|s| (200..300).contains(s)),
        "{:?}",
        report.by_status
    );
    report
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    load: LoadArgs,
}

/// The server task; its error is kept as text so this test does not depend
/// on the server's error type.
type ServerTask = tokio::task::JoinHandle<Result<Stopped, String>>;

/// The production server on 127.0.0.1:0 over `dir`, with the secret it
/// creates there (as `countiq serve` does), once it is ready.
async fn start_node(dir: &Path) -> (String, oneshot::Sender<()>, ServerTask) {
    let jwt_secret = auth::load_secret(None, None, dir).expect("secret");
    let mut node = NodeConfig::new(dir);
    node.segment_bytes = SEGMENT_BYTES;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind port 0");
    let addr = listener.local_addr().expect("local addr");
    let config = ServeConfig {
        addr,
        node,
        jwt_secret,
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let shutdown = async move {
        let _ = stopped.await;
    };
    let server = tokio::spawn(async move {
        let result = serve(config, listener, shutdown).await;
        result.map_err(|e| e.to_string())
    });
    let url = format!("http://{addr}");
    wait_ready(&url).await;
    (url, stop, server)
}

/// Polls `/readyz` until it answers 200 (recovery done), a bounded number
/// of times.
async fn wait_ready(url: &str) {
    let http = reqwest::Client::new();
    for _ in 0..READY_POLLS_MAX {
        let probe = http.get(format!("{url}/readyz")).send().await;
        if probe.is_ok_and(|r| r.status() == reqwest::StatusCode::OK) {
            return;
        }
        tokio::time::sleep(READY_POLL).await;
    }
    panic!("server at {url} not ready after {READY_POLLS_MAX} polls");
}
