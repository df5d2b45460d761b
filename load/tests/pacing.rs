//! Goal: open-loop latency measures the server, not the pacing timer: it
//! is counted from each request's intended send time, the intended times
//! follow the schedule exactly, and no request is sent before its time.
//!
//! Method: the stub of `common` with a known service time (every PATCH
//! busy-waits 200 µs, no sleep); one connection at 500 req/s for 2 s
//! (1,000 requests) with `--history`, which records each attempt's
//! intended and actual send time and its completion. Exact checks on that
//! file; no assertion on speed, which the box's other load decides (the
//! closed-loop, open-loop and `--coarse-pacing` p50s of three interleaved
//! rounds are printed with `--nocapture`, for the record: BENCHMARKS
//! history, "Open-loop pacing").

mod common;

use std::time::Duration;

/// Interleaved rounds of (closed, open, coarse) runs.
const ROUNDS: usize = 3;

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
async fn open_loop_latency_counts_from_the_schedule_and_never_sends_early() {
    let url = common::start_with(common::Mode::Honest, Duration::ZERO, SERVICE).await;
    // Warm the connection path once (first-use costs stay out of both).
    p50(&url, &["--requests", "1000", "--duration", "60s"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("h.jsonl");
    let path = file.to_str().expect("utf-8 path");
    let reported = p50(
        &url,
        &["--rate", "500", "--duration", "2s", "--history", path],
    )
    .await;
    let mut records = countiq_load::history::read(&file).expect("history");
    // The one virtual client's attempts (not the set-up's or the final
    // reads, which no schedule paces).
    records.retain(|r| r.client == 0);
    records.sort_by_key(|r| r.id);
    assert!(records.len() >= 900, "{} records", records.len());
    let mut from_schedule = Vec::new();
    let mut late = Vec::new();
    let mut previous: Option<u64> = None;
    for r in &records {
        let intended = r
            .intended_ns
            .expect("open loop: every attempt has its intended time");
        assert!(
            r.invoke_ns >= intended,
            "request {} sent {} ns before its time",
            r.id,
            intended - r.invoke_ns
        );
        if let Some(p) = previous {
            // 500 req/s on one connection: one every 2 ms, to the ns
            // (rounding of the two conversions aside).
            let gap = intended - p;
            assert!(
                gap.abs_diff(2_000_000) <= 2,
                "intended times {gap} ns apart"
            );
        }
        previous = Some(intended);
        let complete = r.complete_ns.expect("the stub answers every request");
        from_schedule.push((complete - intended) / 1_000);
        late.push((r.invoke_ns - intended) / 1_000);
    }
    from_schedule.sort_unstable();
    late.sort_unstable();
    let ours = from_schedule[(from_schedule.len() - 1) / 2];
    // The report's histogram keeps 3 significant digits.
    assert!(
        reported.abs_diff(ours) <= ours / 100 + 2,
        "report p50 {reported} µs, from the schedule {ours} µs"
    );
    eprintln!(
        "pacing: open-loop p50 {ours} µs, send lateness p50 {} µs over {} sends",
        late[late.len() / 2],
        late.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pacing_figures_for_the_record() {
    // Goal: print closed-loop, open-loop and `--coarse-pacing` p50s side by
    // side (three interleaved rounds) for BENCHMARKS; asserts only that
    // every run completed. Method: as above, without the history.
    let url = common::start_with(common::Mode::Honest, Duration::ZERO, SERVICE).await;
    p50(&url, &["--requests", "1000", "--duration", "60s"]).await;
    let (mut closed, mut open, mut coarse) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        closed.push(p50(&url, &["--requests", "1000", "--duration", "60s"]).await);
        open.push(p50(&url, &["--rate", "500", "--duration", "2s"]).await);
        let old = ["--rate", "500", "--duration", "2s", "--coarse-pacing"];
        coarse.push(p50(&url, &old).await);
    }
    eprintln!("pacing: closed-loop p50 {closed:?} µs, open-loop p50 {open:?} µs (tokio timer alone: {coarse:?} µs)");
}
