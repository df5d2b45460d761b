//! Goal: `countiq load --sweep-connections LIST` runs one complete, checked
//! point per count, in the order given, and refuses what it cannot do
//! before any request is sent.
//!
//! Method: the honest stub of `common` on 127.0.0.1:0. Each point is bounded
//! by `--requests` (with a generous `--duration`), so the assertions depend
//! on what happened, not on timing. Refusals are checked against a URL
//! where nothing listens: a refusal that came after an attempt to connect
//! would be `Unreachable`, not the named flag.

mod common;

use std::time::Duration;

use common::Mode;
use countiq_load::LoadError;

/// A loopback port nobody listens on (bound, then released).
fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_of_1_2_4_gives_three_checked_points_in_order() {
    let url = common::start(Mode::Honest, Duration::ZERO).await;
    let args = common::args(
        &url,
        &[
            "--sweep-connections",
            "1,2,4",
            "--requests",
            "200",
            "--duration",
            "60s",
            "--items",
            "2",
            "--check",
        ],
    );
    let sweep = countiq_load::sweep(args).await.expect("sweep");
    assert_eq!(sweep.connections, vec![1, 2, 4]);
    let counts: Vec<u32> = sweep.points.iter().map(|p| p.connections).collect();
    assert_eq!(counts, vec![1, 2, 4]);
    assert!(sweep.history_checked);
    for p in &sweep.points {
        assert!(p.ok(), "point {} should pass: {p:#?}", p.connections);
        assert!(p.history_check.is_some(), "each point is checked");
        assert_eq!(p.check.items_checked, 2, "each point has its own items");
        assert!(p.replies > 0 && p.replies <= 200, "{}", p.replies);
        assert_eq!(p.errors, 0);
    }
    assert!(sweep.ok());

    // The JSON: one document, the points as single-run reports.
    let json = serde_json::to_value(&sweep).expect("json");
    let points = json["points"].as_array().expect("points array");
    assert_eq!(points.len(), 3);
    for (p, n) in points.iter().zip([1, 2, 4]) {
        assert_eq!(p["connections"], n);
        assert!(p["requests_per_s"].is_number() && p["latency_us"]["p99"].is_number());
        assert_eq!(p["history_check"]["linearizable"], true);
    }

    // The table: a header, then one row per count, in order.
    let mut out = Vec::new();
    countiq_load::write_sweep_human(&mut out, &sweep).expect("render");
    let text = String::from_utf8(out).expect("utf-8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert!(lines[1].split_whitespace().eq([
        "connections",
        "req/s",
        "p50",
        "µs",
        "p90",
        "µs",
        "p99",
        "µs",
        "errors",
        "check"
    ]));
    for (line, n) in lines[2..].iter().zip(["1", "2", "4"]) {
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cells.len(), 7, "{line}");
        assert_eq!(cells[0], n, "{line}");
        assert_eq!(cells[6], "pass", "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_point_fails_the_sweep() {
    // The early-acknowledging stub loses updates under concurrency: the
    // point with 4 connections is caught by the history check (the
    // setting of history_check.rs, which asserts the same).
    let url = common::start(Mode::AckBeforeApply, Duration::ZERO).await;
    let args = common::args(
        &url,
        &[
            "--sweep-connections",
            "4",
            "--scenario",
            "read-your-writes",
            "--requests",
            "400",
            "--duration",
            "60s",
            "--check",
        ],
    );
    let sweep = countiq_load::sweep(args).await.expect("sweep");
    assert!(!sweep.ok());
    let mut out = Vec::new();
    countiq_load::write_sweep_human(&mut out, &sweep).expect("render");
    let text = String::from_utf8(out).expect("utf-8");
    assert!(
        text.lines().nth(2).is_some_and(|l| l.ends_with("FAIL")),
        "{text}"
    );
    assert!(
        text.contains("point with 4 connections failed its check"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_sweep_cannot_do_is_refused_before_connecting() {
    let url = dead_url();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("f").to_str().expect("utf-8").to_string();
    for (flag, extra) in [
        ("--report", &["--report", &file]),
        ("--history", &["--history", &file]),
    ] {
        let mut argv = vec!["--sweep-connections", "1,2"];
        argv.extend_from_slice(extra);
        let err = countiq_load::sweep(common::args(&url, &argv))
            .await
            .expect_err("refused");
        assert!(
            matches!(err, LoadError::Conflict { flag: f, .. } if f == flag),
            "{flag}: {err:?}"
        );
        assert!(!dir.path().join("f").exists(), "nothing written");
    }
    // A bad value of another flag is refused for the sweep as a whole.
    let args = common::args(&url, &["--sweep-connections", "1,2", "--items", "0"]);
    let err = countiq_load::sweep(args).await.expect_err("refused");
    assert!(
        matches!(
            err,
            LoadError::Flag {
                flag: "--items",
                ..
            }
        ),
        "{err:?}"
    );
    // A single run refuses a list: only `sweep` runs one.
    let args = common::args(&url, &["--sweep-connections", "1,2"]);
    let err = countiq_load::run(args).await.expect_err("refused");
    assert!(matches!(err, LoadError::Conflict { .. }), "{err:?}");
}

#[test]
fn bad_lists_are_refused_by_the_command_line() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        load: countiq_load::LoadArgs,
    }
    for bad in ["", "0", "1,0", "1,2,2", "4097", "1,,4", "one"] {
        let argv = ["load", "--sweep-connections", bad];
        let err = Cli::try_parse_from(argv)
            .err()
            .unwrap_or_else(|| panic!("{bad:?} accepted"));
        assert!(
            err.to_string().contains("--sweep-connections"),
            "{bad:?}: {err}"
        );
    }
}
