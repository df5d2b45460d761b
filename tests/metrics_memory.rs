//! Histograms must not grow without bound when nobody scrapes `/metrics`.
//!
//! The Prometheus recorder buffers every recorded value until it is drained
//! (by a scrape or by `telemetry::drain_histograms`, which the server's
//! sampler calls every second). Before the drain existed, a node that was
//! never scraped grew by ~8 bytes per sample, forever. This binary counts
//! live heap bytes exactly with its own global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering};

use countiq::telemetry;

struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);

// SAFETY: forwards to the system allocator and only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

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
    let before = LIVE.load(Ordering::Relaxed);
    for i in 0..SAMPLES {
        histogram.record(i as f64 * 1e-6);
    }
    let grown = LIVE.load(Ordering::Relaxed) - before;
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
    let kept = LIVE.load(Ordering::Relaxed) - before;
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
