//! What one virtual client observed: latencies, statuses, error codes, and
//! the per-item tallies and invariants the correctness check needs. Each
//! client fills its own `Stats` (no sharing on the hot path); they are merged
//! once at the end.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Deserialize;

use crate::check::tally::ItemTally;
use crate::client::{Failure, Reply};
use crate::plan::{Op, Plan};

/// Histogram range in µs: 1 µs to 10 min, 3 significant digits.
const LATENCY_US_MAX: u64 = 600_000_000;
const LATENCY_SIGFIG: u8 = 3;
/// Example messages kept per client for anomalies (the counts are exact).
const ANOMALY_SAMPLES_MAX: usize = 5;
/// Error code used when a non-2xx body is not a problem document.
const NO_ERROR_CODE: &str = "(no error code)";

/// The item fields the check reads; others are ignored.
#[derive(Deserialize)]
struct ItemView {
    id: String,
    qty: i64,
    version: u64,
}

#[derive(Deserialize)]
struct TxnView {
    items: Vec<ItemView>,
}

#[derive(Deserialize)]
struct Problem {
    error: Option<String>,
}

/// Everything one client counted.
pub(crate) struct Stats {
    /// Latency of every request that got a reply, in µs.
    pub latency_us: Histogram<u64>,
    pub by_status: BTreeMap<u16, u64>,
    pub by_error_code: BTreeMap<String, u64>,
    /// Requests without a reply, by failure kind.
    pub by_failure: BTreeMap<&'static str, u64>,
    /// Requests that got a reply.
    pub replies: u64,
    /// Deltas in acknowledged PATCHes and transactions.
    pub deltas_acked: u64,
    /// Per checked item (index as in `Plan::items`).
    pub tallies: Vec<ItemTally>,
    /// Requests whose outcome is unknown.
    pub unknown_outcomes: u64,
    /// Replies that showed a negative qty.
    pub negative_qty_seen: u64,
    /// 200 PATCH replies whose version did not exceed the last one this
    /// connection saw for the item.
    pub version_regressions: u64,
    /// 2xx replies that were not the documented JSON.
    pub malformed_replies: u64,
    pub anomaly_samples: Vec<String>,
    /// Last version this connection saw per item from a 200 PATCH.
    last_version: Vec<u64>,
}

impl Stats {
    pub fn new(items: usize) -> Self {
        Stats {
            latency_us: new_histogram(),
            by_status: BTreeMap::new(),
            by_error_code: BTreeMap::new(),
            by_failure: BTreeMap::new(),
            replies: 0,
            deltas_acked: 0,
            tallies: vec![ItemTally::default(); items],
            unknown_outcomes: 0,
            negative_qty_seen: 0,
            version_regressions: 0,
            malformed_replies: 0,
            anomaly_samples: Vec::new(),
            last_version: vec![0; items],
        }
    }

    /// Records the outcome of one op.
    pub fn record(
        &mut self,
        plan: &Plan,
        op: &Op,
        outcome: Result<Reply, Failure>,
        latency: Duration,
    ) {
        match outcome {
            Ok(reply) => {
                let us = u64::try_from(latency.as_micros())
                    .unwrap_or(u64::MAX)
                    .max(1);
                self.latency_us.saturating_record(us);
                self.replies += 1;
                *self.by_status.entry(reply.status).or_default() += 1;
                self.on_reply(plan, op, &reply);
            }
            Err(failure) => {
                *self.by_failure.entry(failure.name()).or_default() += 1;
                if failure.outcome_unknown() {
                    self.on_unknown(op);
                }
            }
        }
    }

    fn on_reply(&mut self, plan: &Plan, op: &Op, reply: &Reply) {
        match reply.status {
            200 | 201 => self.on_success(plan, op, reply),
            // 503 (overloaded, not ready) and 421 (misdirected: another node
            // of a cluster holds the owner) are refused before anything is
            // applied: counted, not acknowledged, not unknown.
            503 | 421 => self.count_error_code(reply),
            // Any other 5xx may come after the transition was applied.
            500..=599 => {
                self.count_error_code(reply);
                self.on_unknown(op);
            }
            _ => self.count_error_code(reply),
        }
    }

    fn count_error_code(&mut self, reply: &Reply) {
        let code = serde_json::from_slice::<Problem>(&reply.body)
            .ok()
            .and_then(|p| p.error);
        *self
            .by_error_code
            .entry(code.unwrap_or_else(|| NO_ERROR_CODE.to_string()))
            .or_default() += 1;
    }

    fn on_unknown(&mut self, op: &Op) {
        if !op.mutates_checked_items() {
            return;
        }
        self.unknown_outcomes += 1;
        if let Op::Put { item, .. } = op {
            self.tallies[*item].overwritten = true;
        }
        for (item, delta) in op.net_deltas() {
            self.tallies[item].unknown(delta);
        }
    }

    fn on_success(&mut self, plan: &Plan, op: &Op, reply: &Reply) {
        match op {
            Op::Patch { item, delta } => {
                // Acknowledged even if the body is odd: the server said 200.
                self.tallies[*item].ack(i128::from(*delta));
                self.deltas_acked += 1;
                if let Some(view) = self.parse_item(reply) {
                    self.check_patch_reply(plan, *item, &view);
                }
            }
            Op::Txn { ops } => {
                for (item, delta) in op.net_deltas() {
                    self.tallies[item].ack(delta);
                }
                self.deltas_acked += ops.len() as u64;
                match serde_json::from_slice::<TxnView>(&reply.body) {
                    Ok(txn) => txn.items.iter().for_each(|view| self.check_qty(view)),
                    Err(e) => self.malformed(format!("transaction reply: {e}")),
                }
            }
            Op::Put { item, .. } => {
                self.tallies[*item].overwritten = true;
                if let Some(view) = self.parse_item(reply) {
                    self.check_qty(&view);
                }
            }
            Op::Get { .. } | Op::Create { .. } => {
                if let Some(view) = self.parse_item(reply) {
                    self.check_qty(&view);
                }
            }
        }
    }

    fn parse_item(&mut self, reply: &Reply) -> Option<ItemView> {
        match serde_json::from_slice::<ItemView>(&reply.body) {
            Ok(view) => Some(view),
            Err(e) => {
                self.malformed(format!("item reply: {e}"));
                None
            }
        }
    }

    fn check_patch_reply(&mut self, plan: &Plan, item: usize, view: &ItemView) {
        self.check_qty(view);
        if view.id != plan.items[item].id {
            self.malformed(format!(
                "PATCH of {} answered with item {}",
                plan.items[item].id, view.id
            ));
        }
        let last = self.last_version[item];
        if view.version <= last {
            self.version_regressions += 1;
            self.sample(format!(
                "item {}: version {} after {last} on one connection",
                view.id, view.version
            ));
        }
        self.last_version[item] = last.max(view.version);
    }

    fn check_qty(&mut self, view: &ItemView) {
        if view.qty < 0 {
            self.negative_qty_seen += 1;
            self.sample(format!("item {}: reply showed qty {}", view.id, view.qty));
        }
    }

    fn malformed(&mut self, message: String) {
        self.malformed_replies += 1;
        self.sample(message);
    }

    fn sample(&mut self, message: String) {
        if self.anomaly_samples.len() < ANOMALY_SAMPLES_MAX {
            self.anomaly_samples.push(message);
        }
    }

    /// Adds another client's observations (per-connection state is not merged).
    pub fn merge(&mut self, other: Stats) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.latency_us.add(&other.latency_us);
        merge_counts(&mut self.by_status, other.by_status);
        merge_counts(&mut self.by_error_code, other.by_error_code);
        merge_counts(&mut self.by_failure, other.by_failure);
        self.replies += other.replies;
        self.deltas_acked += other.deltas_acked;
        for (mine, theirs) in self.tallies.iter_mut().zip(&other.tallies) {
            mine.merge(theirs);
        }
        self.unknown_outcomes += other.unknown_outcomes;
        self.negative_qty_seen += other.negative_qty_seen;
        self.version_regressions += other.version_regressions;
        self.malformed_replies += other.malformed_replies;
        for s in other.anomaly_samples {
            if self.anomaly_samples.len() < ANOMALY_SAMPLES_MAX {
                self.anomaly_samples.push(s);
            }
        }
    }
}

fn merge_counts<K: Ord>(into: &mut BTreeMap<K, u64>, from: BTreeMap<K, u64>) {
    for (k, v) in from {
        *into.entry(k).or_default() += v;
    }
}

fn new_histogram() -> Histogram<u64> {
    // Constant, valid bounds: construction cannot fail.
    Histogram::new_with_bounds(1, LATENCY_US_MAX, LATENCY_SIGFIG).expect("valid histogram bounds")
}

#[cfg(test)]
mod tests {
    //! Goal: replies and failures land in the right tallies; method: feed
    //! synthetic replies for a one-item plan.
    use super::*;
    use crate::args::Scenario;

    fn plan() -> Plan {
        Plan::for_tests(Scenario::HotOwner, &["a"])
    }

    fn reply(status: u16, body: &str) -> Result<Reply, Failure> {
        Ok(Reply {
            status,
            body: bytes::Bytes::copy_from_slice(body.as_bytes()),
            lsn: None,
            replayed: false,
        })
    }

    fn item(qty: i64, version: u64) -> String {
        format!(r#"{{"id":"a","name":"n","qty":{qty},"version":{version}}}"#)
    }

    /// Stats of a one-item plan after recording `ops` in order.
    fn recorded(ops: Vec<(Op, Result<Reply, Failure>)>) -> Stats {
        let p = plan();
        let mut s = Stats::new(1);
        for (op, outcome) in ops {
            s.record(&p, &op, outcome, Duration::from_millis(1));
        }
        s
    }

    fn patch(delta: i64) -> Op {
        Op::Patch { item: 0, delta }
    }

    #[test]
    fn acked_refused_and_unknown_are_separated() {
        let refusal = r#"{"status":400,"error":"qty_below_zero"}"#;
        let s = recorded(vec![
            (patch(1), reply(200, &item(11, 2))),
            (patch(-1), reply(400, refusal)),
            (patch(-1), reply(503, r#"{"error":"overloaded"}"#)),
            (patch(-1), Err(Failure::Timeout)),
            (patch(1), Err(Failure::Connect)),
        ]);
        assert_eq!(s.tallies[0].acked, 1);
        assert_eq!(s.tallies[0].expected_range(10), (10, 11));
        assert_eq!(s.unknown_outcomes, 1);
        assert_eq!(s.by_error_code.get("qty_below_zero"), Some(&1));
        assert_eq!(s.by_error_code.get("overloaded"), Some(&1));
        assert_eq!(s.by_failure.get("connect"), Some(&1));
        assert_eq!(s.replies, 3);
    }

    #[test]
    fn misdirected_is_not_applied_and_a_proxy_502_is_unknown() {
        // A 421 (another node of a cluster holds the owner) is refused before
        // anything runs; nginx's 502 may come after the node applied it.
        let s = recorded(vec![
            (patch(5), reply(421, r#"{"error":"misdirected_owner"}"#)),
            (
                patch(-3),
                reply(502, r#"{"error":"owner_node_unreachable"}"#),
            ),
        ]);
        assert_eq!(s.tallies[0].acked, 0);
        assert_eq!(s.tallies[0].expected_range(10), (7, 10));
        assert_eq!(s.unknown_outcomes, 1);
        assert_eq!(s.by_error_code.get("misdirected_owner"), Some(&1));
        assert_eq!(s.by_error_code.get("owner_node_unreachable"), Some(&1));
    }

    #[test]
    fn version_regression_and_negative_qty_are_caught() {
        let s = recorded(vec![
            (patch(0), reply(200, &item(10, 5))),
            (patch(0), reply(200, &item(10, 5))),
            (Op::Get { item: 0 }, reply(200, &item(-1, 6))),
        ]);
        assert_eq!(s.version_regressions, 1);
        assert_eq!(s.negative_qty_seen, 1);
        assert_eq!(s.malformed_replies, 0);
    }
}
