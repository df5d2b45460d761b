//! Open-loop pacing and the coordinated-omission correction (as in wrk2).
//!
//! A closed-loop client sends its next request only after the previous reply,
//! so a stalled server also stalls the client and the stall is recorded once
//! instead of for every request that should have been sent meanwhile. In open
//! loop each connection follows a fixed schedule; a request's latency is
//! measured from its *intended* send time, so time spent waiting behind a
//! slow reply counts. Pure arithmetic, no clock reads.

use std::time::Duration;

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
}
