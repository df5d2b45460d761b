//! Goal: open-loop latency measures the server, not the pacing timer. At a
//! low rate no request waits behind another, so the open-loop p50 (counted
//! from each request's intended send time) must agree with the closed-loop
//! p50 (counted from the actual send) against the same server.
//!
//! Method: the stub of `common` with a known service time (every PATCH
//! busy-waits 200 µs, no sleep); one connection; a closed-loop run of
//! 1,000 requests, then an open-loop run at 500 req/s for 2 s (1,000
//! requests), side by side. The assertion is on the measurement's
//! correctness with a generous margin (p50 open ≤ 1.5 × p50 closed +
//! 100 µs), not on speed: the margin covers what an idle gap between
//! requests itself costs (the runtime's threads park and must be woken,
//! which a closed loop never pays). The old tokio-timer pacing, run too
//! for the record, was about 1 ms late. The numbers are printed
//! (`--nocapture`).

mod common;

use std::time::Duration;

/// The stub's service time per PATCH (a busy wait).
const SERVICE: Duration = Duration::from_micros(200);

async fn p50(url: &str, extra: &[&str]) -> u64 {
    let mut argv = vec![
        "--scenario",
        "hot-owner",
        "--connections",
        "1",
        "--timeout",
        "5s",
    ];
    argv.extend_from_slice(extra);
    let report = countiq_load::run(common::args(url, &argv))
        .await
        .expect("run");
    assert!(report.ok(), "{report:#?}");
    assert!(report.replies >= 900, "{report:#?}");
    report.latency_us.p50
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_p50_at_low_rate_matches_closed_loop() {
    let url = common::start_with(common::Mode::Honest, Duration::ZERO, SERVICE).await;
    // Warm the connection path once (first-use costs stay out of both).
    p50(&url, &["--requests", "1000", "--duration", "60s"]).await;
    let closed = p50(&url, &["--requests", "1000", "--duration", "60s"]).await;
    let open = p50(&url, &["--rate", "500", "--duration", "2s"]).await;
    let coarse = p50(
        &url,
        &["--rate", "500", "--duration", "2s", "--coarse-pacing"],
    )
    .await;
    eprintln!("pacing: closed-loop p50 {closed} µs, open-loop p50 {open} µs (tokio timer alone: {coarse} µs)");
    assert!(
        open as f64 <= closed as f64 * 1.5 + 100.0,
        "open-loop p50 {open} µs vs closed-loop {closed} µs"
    );
}
