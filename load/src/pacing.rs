//! Open-loop pacing and the coordinated-omission correction (as in wrk2).
//!
//! A closed-loop client sends its next request only after the previous reply,
//! so a stalled server also stalls the client and the stall is recorded once
//! instead of for every request that should have been sent meanwhile. In open
//! loop each connection follows a fixed schedule; a request's latency is
//! measured from its *intended* send time, so time spent waiting behind a
//! slow reply counts. The schedule is pure arithmetic; [`wait_until`] is
//! the one place that reads the clock.
//!
//! Waiting precisely matters because the latency is counted from the
//! intended time: tokio's timer has a 1 ms granularity and fires on the
//! tick after its deadline, so a plain `sleep_until` sends up to ~1 ms late
//! and that lateness was reported as latency (p50 1.46 ms for an 80 µs
//! round trip at 500 req/s). [`wait_until`] sleeps on the timer only until
//! [`SPIN_WINDOW`] before the send time and spends the rest yielding to the
//! runtime, reading the monotonic clock between yields.

use std::time::Duration;

use tokio::time::Instant;

/// How long before the send time the coarse timer sleep ends: one tick of
/// tokio's 1 ms timer plus a margin for a busy runtime. The remainder is
/// spent in `yield_now` (other tasks run meanwhile), so this is also the most
/// CPU one connection spends waiting per request.
pub(crate) const SPIN_WINDOW: Duration = Duration::from_micros(1_200);

/// How an open-loop client waits for its next send time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Timer sleep to `SPIN_WINDOW` before, then yield until the time.
    Precise,
    /// tokio's `sleep_until` alone (the old behaviour, kept to measure the
    /// difference side by side: `--coarse-pacing`).
    Coarse,
}

/// Returns at `at` or just after it (never before).
pub(crate) async fn wait_until(at: Instant, wait: Wait) {
    if wait == Wait::Coarse {
        tokio::time::sleep_until(at).await;
        return;
    }
    if let Some(coarse) = at.checked_sub(SPIN_WINDOW) {
        if Instant::now() < coarse {
            tokio::time::sleep_until(coarse).await;
        }
    }
    while Instant::now() < at {
        tokio::task::yield_now().await;
    }
}

/// Intended send time of connection `worker`'s `k`-th request, as an offset
/// from the start of the run. The total `rate` is split evenly: each of the
/// `connections` sends every `connections / rate` seconds, and connection `i`
/// is shifted by `i / rate` so the sends interleave instead of bursting.
pub(crate) fn intended_offset(worker: u32, connections: u32, rate: f64, k: u64) -> Duration {
    debug_assert!(rate > 0.0, "rate is validated positive");
    let interval_s = f64::from(connections) / rate;
    let phase_s = f64::from(worker) / rate;
    // k fits f64 exactly far beyond any bounded run (2^53 requests).
    Duration::from_secs_f64(phase_s + k as f64 * interval_s)
}

/// Corrected latency: from the intended send time (not the actual one) to the
/// reply. Zero if the reply came "before" the intended time, which only a
/// clock oddity can cause.
pub(crate) fn corrected_latency(intended: Duration, completed: Duration) -> Duration {
    completed.saturating_sub(intended)
}

#[cfg(test)]
mod tests {
    //! Goal: the schedule honours the total rate and the correction charges
    //! queueing delay; method: exact arithmetic on chosen values.
    use super::*;

    #[test]
    fn schedule_splits_rate_over_connections() {
        // 1000 req/s over 4 connections: each sends every 4 ms, phases 1 ms apart.
        assert_eq!(intended_offset(0, 4, 1000.0, 0), Duration::ZERO);
        assert_eq!(intended_offset(1, 4, 1000.0, 0), Duration::from_millis(1));
        assert_eq!(intended_offset(0, 4, 1000.0, 1), Duration::from_millis(4));
        assert_eq!(intended_offset(3, 4, 1000.0, 10), Duration::from_millis(43));
    }

    #[test]
    fn all_connections_together_send_at_rate() {
        let horizon = Duration::from_secs(1);
        let sends: usize = (0..8)
            .map(|w| {
                (0..)
                    .take_while(|&k| intended_offset(w, 8, 800.0, k) < horizon)
                    .count()
            })
            .sum();
        assert_eq!(sends, 800);
    }

    #[test]
    fn latency_counts_from_intended_time() {
        // Intended at 10 ms, actually sent at 50 ms (stuck behind a slow
        // reply), answered at 51 ms: the user waited 41 ms, not 1 ms.
        let intended = Duration::from_millis(10);
        let completed = Duration::from_millis(51);
        assert_eq!(
            corrected_latency(intended, completed),
            Duration::from_millis(41)
        );
        assert_eq!(corrected_latency(completed, intended), Duration::ZERO);
    }

    #[tokio::test]
    async fn precise_wait_never_returns_early() {
        // The property the measurement needs: no send before its time.
        // (How late it is, is measured in load/tests/pacing.rs.)
        for micros in [0u64, 50, 900, 1_300, 2_500] {
            let at = Instant::now() + Duration::from_micros(micros);
            wait_until(at, Wait::Precise).await;
            assert!(Instant::now() >= at, "returned early for {micros} µs");
        }
    }
}
