//! Histograms must not grow without bound when nobody scrapes `/metrics`.
//!
//! The Prometheus recorder buffers every recorded value until it is drained
//! (by a scrape or by `telemetry::drain_histograms`, which the server's
//! sampler calls every second). Before the drain existed, a node that was
//! never scraped grew by ~8 bytes per sample, forever. This binary counts
//! live heap bytes exactly with `countiq::alloc_count`.

use countiq::alloc_count::{live_bytes, Counting};
use countiq::telemetry;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const SAMPLES: usize = 500_000;

#[test]
fn draining_keeps_histogram_memory_bounded() {
    telemetry::install();
    let histogram = metrics::histogram!("countiq_test_memory_seconds");
    histogram.record(0.001);
    telemetry::drain_histograms();

    // Undrained, the samples are all kept: at least 8 bytes each.
    let before = live_bytes();
    for i in 0..SAMPLES {
        histogram.record(i as f64 * 1e-6);
    }
    let grown = live_bytes() - before;
    assert!(
        grown >= (SAMPLES * 8) as i64,
        "the recorder buffers raw samples: {grown} bytes for {SAMPLES} samples"
    );

    // Drained, they are folded into buckets. Three more rounds, each
    // drained, must not add up: undrained they would hold 4x `grown`.
    // (The recorder frees drained blocks through epoch-based deferral, so
    // up to about one round's blocks may still be waiting to be freed.)
    telemetry::drain_histograms();
    for _ in 0..3 {
        for i in 0..SAMPLES {
            histogram.record(i as f64 * 1e-6);
        }
        telemetry::drain_histograms();
    }
    let kept = live_bytes() - before;
    assert!(
        kept < 2 * grown,
        "after draining, {kept} bytes are still held (undrained: {grown})"
    );
    // The values were counted, not dropped.
    let text = telemetry::render();
    let count_line = text
        .lines()
        .find(|l| l.starts_with("countiq_test_memory_seconds_count"))
        .expect("the histogram is rendered");
    let count: usize = count_line.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(count, 1 + 4 * SAMPLES);
}
