//! The owner-wide order: every applied write's `CountIQ-LSN` (the WAL
//! sequence number of the record that made it durable, strictly increasing
//! per owner in commit order) is a total order of the owner's writes,
//! transactions included. Checked: each LSN belongs to one operation
//! (a replay repeats its original's), the LSN order respects real time
//! (points `t_1 < t_2 < …` inside the intervals, solved greedily as for an
//! item's versions), and on every item the version order is the LSN order.
//! Writes without the header (older servers, unknown outcomes) are left
//! out; with none at all there is nothing to check.

use std::collections::BTreeMap;

use super::item::{after, before};
use super::ops::{Op, Res};
use super::{describe, Violation};

/// Checks each owner's LSN order; returns how many writes carried one.
pub(crate) fn check(all: &[Op], violations: &mut Vec<Violation>) -> usize {
    let mut by_owner: BTreeMap<&str, BTreeMap<u64, &Op>> = BTreeMap::new();
    let mut counted = 0;
    for op in all {
        let Res::Applied { lsn: Some(lsn), .. } = &op.res else {
            continue;
        };
        counted += 1;
        let chain = by_owner.entry(op.owner.as_str()).or_default();
        if let Some(other) = chain.insert(*lsn, op) {
            violations.push(violation(
                "lsn_twice",
                format!("LSN {lsn} answered two different operations"),
                "each durable record answers one operation (a replay repeats its original's LSN)",
                &[other, op],
            ));
        }
    }
    for chain in by_owner.values() {
        real_time(chain, violations);
        versions_follow_lsn(chain, violations);
    }
    counted
}

fn real_time(chain: &BTreeMap<u64, &Op>, violations: &mut Vec<Violation>) {
    // (point, the operation whose invoke set it)
    let mut t: Option<(u128, &Op)> = None;
    for op in chain.values() {
        let carried = t.map(|(p, src)| (p + 1, src));
        let point = match carried {
            Some(c) if c.0 > after(op.inv) => c,
            _ => (after(op.inv), *op),
        };
        if point.0 > before(op.ret) {
            violations.push(violation(
                "lsn_order",
                format!(
                    "op {} completed at {} ns, before op {} was invoked at {} ns, yet it has the higher LSN",
                    op.records[0].id,
                    op.ret.unwrap_or(u64::MAX),
                    point.1.records[0].id,
                    point.1.inv
                ),
                "the later operation should have got the higher LSN",
                &[op, point.1],
            ));
            return;
        }
        t = Some(point);
    }
}

fn versions_follow_lsn(chain: &BTreeMap<u64, &Op>, violations: &mut Vec<Violation>) {
    let mut last: BTreeMap<&str, (u64, &Op)> = BTreeMap::new();
    for op in chain.values() {
        let Res::Applied { items, .. } = &op.res else {
            continue;
        };
        for s in items {
            if let Some((version, prev)) = last.get(s.id.as_str()) {
                if s.version <= *version {
                    violations.push(violation(
                        "lsn_version_order",
                        format!(
                            "item {}: version {} has a higher LSN than version {version}",
                            s.id, s.version
                        ),
                        "versions of an item grow in LSN (commit) order",
                        &[prev, op],
                    ));
                    return;
                }
            }
            last.insert(s.id.as_str(), (s.version, op));
        }
    }
}

fn violation(kind: &'static str, message: String, expected: &str, ops: &[&Op]) -> Violation {
    let records = ops.iter().map(|o| o.records[0].clone()).collect();
    let mut v = Violation::new(kind, None, message, expected.to_string(), records);
    v.ops = ops.iter().map(|o| describe(o)).collect();
    v
}
