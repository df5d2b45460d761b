//! Goal: `countiq load --history --check` passes on a correct server in
//! every experiment scenario and catches the two classic broken servers: one
//! that acknowledges a write before applying it, one that serves stale
//! reads; `countiq check FILE` reaches the same verdict from the file.
//!
//! Method: the in-test stub of `common` (honest or broken) on 127.0.0.1:0;
//! each run is bounded by `--requests` (and a generous `--duration`), so
//! the assertions depend on what happened, not on timing. The broken
//! stubs' faults are sure to show: read-your-writes reads every write back
//! on the connection that made it, at once, while the early-acknowledging
//! stub stores the write 3 ms later and the stale one refreshes its reads
//! every 20 ms. (The final-quantity check may or may not notice the stale
//! stub: its final read can itself be stale; nothing asserts on it.)

mod common;

use std::time::Duration;

use common::Mode;

async fn run(
    mode: Mode,
    delay: Duration,
    extra: &[&str],
) -> (countiq_load::LoadReport, tempfile::TempDir) {
    let url = common::start(mode, delay).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let history = dir.path().join("history.jsonl");
    let history = history.to_str().expect("utf-8 path").to_string();
    let mut argv = vec![
        "--history",
        &history,
        "--check",
        "--duration",
        "60s",
        "--timeout",
        "5s",
    ];
    argv.extend_from_slice(extra);
    let report = countiq_load::run(common::args(&url, &argv))
        .await
        .expect("run");
    (report, dir)
}

fn verdict(report: &countiq_load::LoadReport) -> &countiq_load::Verdict {
    report
        .history_check
        .as_ref()
        .expect("--check gives a verdict")
}

/// The file alone gives the same verdict (`countiq check FILE`).
fn file_verdict(dir: &tempfile::TempDir) -> bool {
    let args = countiq_load::CheckArgs {
        file: dir.path().join("history.jsonl"),
        json: false,
    };
    let mut out = Vec::new();
    countiq_load::check_file(&args, &mut out).expect("readable history")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_passes_on_a_correct_server() {
    let scenarios: &[&[&str]] = &[
        &["--scenario", "hot-owner", "--items", "2"],
        &["--scenario", "read-your-writes", "--items", "2"],
        &["--scenario", "contended-put", "--items", "1"],
        &["--scenario", "racing-creates"],
    ];
    for scenario in scenarios {
        let mut argv = vec!["--connections", "8", "--requests", "800"];
        argv.extend_from_slice(scenario);
        let (report, dir) = run(Mode::Honest, Duration::ZERO, &argv).await;
        let v = verdict(&report);
        assert!(report.ok() && v.linearizable, "{scenario:?}: {report:#?}");
        assert!(v.operations >= 800, "{scenario:?}: {v:#?}");
        assert!(v.writes_with_lsn > 0, "{scenario:?}: {v:#?}");
        assert!(
            file_verdict(&dir),
            "{scenario:?}: the file's verdict differs"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contended_put_and_racing_creates_do_contend() {
    let argv = [
        "--scenario",
        "contended-put",
        "--connections",
        "8",
        "--requests",
        "800",
    ];
    let (report, _dir) = run(Mode::Honest, Duration::ZERO, &argv).await;
    assert!(
        report.by_status.contains_key(&412),
        "{:?}",
        report.by_status
    );
    let argv = [
        "--scenario",
        "racing-creates",
        "--connections",
        "8",
        "--requests",
        "800",
    ];
    let (report, _dir) = run(Mode::Honest, Duration::ZERO, &argv).await;
    assert!(
        report.by_status.contains_key(&409),
        "{:?}",
        report.by_status
    );
    assert!(verdict(&report).linearizable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_retries_resolve_injected_timeouts() {
    // Writes are applied, then answered 0-4 ms later; half the requests
    // give up after 1 ms and are retried with the same key.
    let argv = [
        "--scenario",
        "idempotent-retries",
        "--connections",
        "4",
        "--requests",
        "400",
        "--inject-timeout",
        "1ms",
        "--inject-timeout-pct",
        "50",
    ];
    let (report, dir) = run(Mode::Honest, Duration::from_millis(4), &argv).await;
    let v = verdict(&report);
    assert!(report.ok() && v.linearizable, "{report:#?}");
    // Every timed-out write was resolved by a retry or a replay.
    assert_eq!(v.unknown, 0, "{v:#?}");
    let text = std::fs::read_to_string(dir.path().join("history.jsonl")).expect("history");
    let timeouts = text.matches("\"unknown\":\"timeout\"").count();
    assert!(timeouts > 0, "no injected timeout fired");
    eprintln!("idempotent-retries: {timeouts} injected timeouts, all resolved");
    assert!(
        text.contains("\"replayed\":true"),
        "retries were answered by replays"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_acknowledges_before_applying_is_caught() {
    let argv = [
        "--scenario",
        "read-your-writes",
        "--connections",
        "4",
        "--requests",
        "400",
    ];
    let (report, dir) = run(Mode::AckBeforeApply, Duration::ZERO, &argv).await;
    let v = verdict(&report);
    assert!(!v.linearizable && !report.ok(), "{v:#?}");
    assert!(
        !v.violations.is_empty() && !v.violations[0].ops.is_empty(),
        "{v:#?}"
    );
    assert!(!file_verdict(&dir));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_stale_reads_is_caught() {
    let argv = [
        "--scenario",
        "read-your-writes",
        "--connections",
        "4",
        "--requests",
        "400",
    ];
    let (report, dir) = run(Mode::StaleReads, Duration::ZERO, &argv).await;
    let v = verdict(&report);
    assert!(!v.linearizable && !report.ok(), "{v:#?}");
    let kinds: Vec<_> = v.violations.iter().map(|x| x.kind).collect();
    assert!(kinds.contains(&"real_time_order"), "{kinds:?}");
    assert!(!file_verdict(&dir));
}
