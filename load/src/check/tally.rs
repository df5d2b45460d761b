//! The final-quantity check: after the run, every item's quantity must equal its
//! start quantity plus the deltas the server acknowledged (200).
//!
//! A request that got no reply (timeout, connection error, 5xx other than
//! 503) may or may not have been applied. Each such request widens the
//! accepted range: its negative part can lower the final quantity, its
//! positive part raise it. With no unknown outcome the range is one value and
//! the check is exact. A transaction is atomic, so its net delta per item is
//! what widens that item's range. Pure arithmetic; sums are `i128` so that no
//! run can overflow them.

use serde::Serialize;

/// What the clients learned about one item during the run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ItemTally {
    /// Sum of acknowledged deltas.
    pub acked: i128,
    /// Sum of the negative net deltas of requests with unknown outcome.
    pub unknown_down: i128,
    /// Sum of the positive net deltas of requests with unknown outcome.
    pub unknown_up: i128,
    /// Requests with unknown outcome that touched this item.
    pub unknown_count: u64,
    /// A PUT (possibly) replaced the qty: only the history check can judge
    /// this item, so the range is the whole 0..=2^53-1.
    pub overwritten: bool,
}

impl ItemTally {
    /// Records an acknowledged (applied) net delta.
    pub fn ack(&mut self, delta: i128) {
        self.acked += delta;
    }

    /// Records a net delta that may or may not have been applied.
    pub fn unknown(&mut self, delta: i128) {
        if delta < 0 {
            self.unknown_down += delta;
        } else {
            self.unknown_up += delta;
        }
        self.unknown_count += 1;
    }

    /// Adds another client's tally for the same item.
    pub fn merge(&mut self, other: &ItemTally) {
        self.acked += other.acked;
        self.unknown_down += other.unknown_down;
        self.unknown_up += other.unknown_up;
        self.unknown_count += other.unknown_count;
        self.overwritten |= other.overwritten;
    }

    /// The inclusive range the final quantity may fall in.
    pub fn expected_range(&self, start: i128) -> (i128, i128) {
        if self.overwritten {
            return (0, i128::from(crate::contract::JSON_INT_MAX));
        }
        let exact = start + self.acked;
        (exact + self.unknown_down, exact + self.unknown_up)
    }
}

/// The verdict for one item.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ItemVerdict {
    /// Item id.
    pub id: String,
    /// Quantity the item was created with.
    pub start_qty: i128,
    /// Sum of acknowledged deltas.
    pub acked_delta: i128,
    /// Requests with unknown outcome on this item.
    pub unknown_outcomes: u64,
    /// Lowest acceptable final quantity.
    pub expected_min: i128,
    /// Highest acceptable final quantity.
    pub expected_max: i128,
    /// Quantity read back with GET; None when that read failed.
    pub final_qty: Option<i128>,
    /// Whether `final_qty` is in range.
    pub ok: bool,
}

/// Judges one item from its tally and the quantity read back.
pub(crate) fn judge(
    id: &str,
    start: i128,
    tally: &ItemTally,
    final_qty: Option<i128>,
) -> ItemVerdict {
    let (min, max) = tally.expected_range(start);
    ItemVerdict {
        id: id.to_string(),
        start_qty: start,
        acked_delta: tally.acked,
        unknown_outcomes: tally.unknown_count,
        expected_min: min,
        expected_max: max,
        final_qty,
        ok: final_qty.is_some_and(|q| (min..=max).contains(&q)),
    }
}

#[cfg(test)]
mod tests {
    //! Goal: exact when every outcome is known, a sound range otherwise;
    //! method: hand-computed tallies.
    use super::*;

    #[test]
    fn exact_without_unknowns() {
        let mut t = ItemTally::default();
        t.ack(5);
        t.ack(-2);
        assert_eq!(t.expected_range(100), (103, 103));
        assert!(judge("a", 100, &t, Some(103)).ok);
        assert!(!judge("a", 100, &t, Some(102)).ok);
        assert!(!judge("a", 100, &t, Some(104)).ok);
    }

    #[test]
    fn unknowns_widen_both_ways() {
        let mut t = ItemTally::default();
        t.ack(1);
        t.unknown(-3);
        t.unknown(2);
        t.unknown(0);
        assert_eq!(t.expected_range(10), (8, 13));
        assert_eq!(t.unknown_count, 3);
        for q in 8..=13 {
            assert!(judge("a", 10, &t, Some(q)).ok, "qty {q} is explainable");
        }
        assert!(!judge("a", 10, &t, Some(7)).ok);
        assert!(!judge("a", 10, &t, Some(14)).ok);
    }

    #[test]
    fn failed_read_fails_the_item() {
        let verdict = judge("a", 10, &ItemTally::default(), None);
        assert!(!verdict.ok);
    }

    #[test]
    fn merge_adds_everything() {
        let mut a = ItemTally::default();
        a.ack(2);
        a.unknown(-1);
        let mut b = ItemTally::default();
        b.ack(3);
        b.unknown(4);
        a.merge(&b);
        assert_eq!(
            a,
            ItemTally {
                acked: 5,
                unknown_down: -1,
                unknown_up: 4,
                unknown_count: 2,
                overwritten: false,
            }
        );
    }
}
