//! Per-item linearizability, using the versions as the order of writes.
//!
//! Model: an item is absent (version 0) until created at version 1; every
//! applied write makes version `v + 1` from version `v`. A reply states the
//! version it produced or read, so the writes of an item form one chain and
//! the question "is there a legal order" becomes three checks:
//!
//! 1. **Chain.** Each version is acknowledged at most once, and replaying
//!    the writes in version order from the creation reproduces every qty a
//!    reply showed. A version no reply claims must be explained by an
//!    operation whose outcome is unknown (a small bounded search picks
//!    which); one that nobody can explain is a lost or invented write.
//! 2. **Answers.** Every read, 404, 400 `qty_below_zero`/`qty_overflow` and
//!    412 must match some version's state (for a read: its version and
//!    qty).
//! 3. **Real time.** Choose a point `t_v` inside each write's interval with
//!    `t_1 < t_2 < …`, and for each answer a version `v` with
//!    `t_v < complete` and `t_{v+1} > invoke` (the state it saw existed
//!    during its interval). With the versions fixed this is a chain of
//!    difference constraints, solved greedily (earliest points); only an
//!    answer that several versions explain (a rejection) needs a choice.
//!
//! An operation whose outcome is unknown may or may not have applied. A
//! transaction is checked on each item it touches (its per-item part);
//! that it is one atomic step across items is what the owner-wide LSN check
//! adds (`owner`).

use std::collections::BTreeMap;

use crate::contract::JSON_INT_MAX;
use crate::history::Req;

use super::ops::{Op, Res};
use super::Violation;

/// Steps of the searches (gap filling, rejection placement) per item; past
/// it the item is reported as undecided, never as passed.
pub(crate) const SEARCH_STEPS_MAX: u64 = 2_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    qty: i128,
    version: u64,
}

/// What a write does to this item.
#[derive(Debug, Clone)]
enum Effect {
    Create {
        qty: i128,
    },
    Set {
        qty: i128,
        if_match: Option<u64>,
    },
    Deltas {
        deltas: Vec<i64>,
        if_match: Option<u64>,
    },
}

/// A condition an answer puts on the state it saw.
#[derive(Debug, Clone)]
enum Cond {
    Is {
        version: u64,
        qty: i128,
    },
    Absent,
    /// The deltas' running sum leaves 0..=max at the last one, not before.
    OutOfRange {
        deltas: Vec<i64>,
        below: bool,
        if_match: Option<u64>,
    },
    /// A transaction that failed on another item: this item's deltas before
    /// the failing op all kept it in range.
    PriorOk {
        deltas: Vec<i64>,
    },
    Mismatch {
        current: u64,
        if_match: Option<u64>,
    },
    /// An answer this request can never get (e.g. `qty_below_zero` on a GET).
    Never,
}

struct Write {
    op: usize,
    effect: Effect,
    /// Reported (version, qty); None for an unknown outcome.
    reported: Option<State>,
}

struct Obs {
    op: usize,
    cond: Cond,
}

/// Result of checking one item.
pub(crate) enum ItemResult {
    Ok,
    Violation(Box<Violation>),
    Undecided(String),
}

fn in_range(qty: i128) -> bool {
    (0..=i128::from(JSON_INT_MAX)).contains(&qty)
}

fn matches_tag(if_match: Option<u64>, version: u64) -> bool {
    if_match.is_none_or(|m| m == version)
}

/// The state after `effect`, or None when it would be refused.
fn apply(effect: &Effect, prev: Option<State>) -> Option<State> {
    match (effect, prev) {
        (Effect::Create { qty }, None) => Some(State {
            qty: *qty,
            version: 1,
        }),
        (Effect::Create { .. }, Some(_)) | (_, None) => None,
        (Effect::Set { qty, if_match }, Some(s)) => {
            matches_tag(*if_match, s.version).then_some(State {
                qty: *qty,
                version: s.version + 1,
            })
        }
        (Effect::Deltas { deltas, if_match }, Some(s)) => {
            if !matches_tag(*if_match, s.version) {
                return None;
            }
            let mut qty = s.qty;
            for d in deltas {
                qty += i128::from(*d);
                if !in_range(qty) {
                    return None;
                }
            }
            Some(State {
                qty,
                version: s.version + 1,
            })
        }
    }
}

fn holds(cond: &Cond, state: Option<State>) -> bool {
    match (cond, state) {
        (Cond::Absent, s) => s.is_none(),
        (Cond::Never, _) => false,
        (_, None) => false,
        (Cond::Is { version, qty }, Some(s)) => s.version == *version && s.qty == *qty,
        (
            Cond::OutOfRange {
                deltas,
                below,
                if_match,
            },
            Some(s),
        ) => {
            if !matches_tag(*if_match, s.version) {
                return false;
            }
            let mut qty = s.qty;
            for (i, d) in deltas.iter().enumerate() {
                qty += i128::from(*d);
                let last = i + 1 == deltas.len();
                if !in_range(qty) {
                    return last && (qty < 0) == *below;
                }
            }
            false
        }
        (Cond::PriorOk { deltas }, Some(s)) => {
            let mut qty = s.qty;
            deltas.iter().all(|d| {
                qty += i128::from(*d);
                in_range(qty)
            })
        }
        (Cond::Mismatch { current, if_match }, Some(s)) => {
            s.version == *current && !matches_tag(*if_match, s.version)
        }
    }
}

/// The deltas of a transaction on `item`, up to and including op `upto`.
fn txn_deltas(ops: &[crate::history::TxnOp], item: &str, upto: usize) -> Vec<i64> {
    ops.iter()
        .take(upto)
        .filter(|o| o.item == item)
        .map(|o| o.delta)
        .collect()
}

/// Sorts one operation into this item's writes or answers.
fn classify(op: &Op, item: &str, writes: &mut Vec<Write>, obs: &mut Vec<Obs>) {
    let reported = |items: &[crate::history::ItemState]| {
        items.iter().find(|s| s.id == item).map(|s| State {
            qty: i128::from(s.qty),
            version: s.version,
        })
    };
    let effect = match &op.req {
        Req::Create { qty, .. } => Effect::Create {
            qty: i128::from(*qty),
        },
        Req::Get { .. } => Effect::Deltas {
            deltas: Vec::new(),
            if_match: None,
        },
        Req::Put { qty, if_match, .. } => Effect::Set {
            qty: i128::from(*qty),
            if_match: *if_match,
        },
        Req::Patch {
            delta, if_match, ..
        } => Effect::Deltas {
            deltas: vec![*delta],
            if_match: *if_match,
        },
        Req::Txn { ops } => Effect::Deltas {
            deltas: txn_deltas(ops, item, ops.len()),
            if_match: None,
        },
    };
    let if_match = match &op.req {
        Req::Put { if_match, .. } | Req::Patch { if_match, .. } => *if_match,
        _ => None,
    };
    let push_obs = |obs: &mut Vec<Obs>, cond| obs.push(Obs { op: op.index, cond });
    match (&op.res, &op.req) {
        (Res::Read(s), _) => push_obs(
            obs,
            Cond::Is {
                version: s.version,
                qty: i128::from(s.qty),
            },
        ),
        (_, Req::Get { .. }) if op.res == Res::NotFound => push_obs(obs, Cond::Absent),
        (Res::Applied { items, .. }, _) => writes.push(Write {
            op: op.index,
            effect,
            reported: reported(items),
        }),
        (Res::Unknown, Req::Get { .. }) => {}
        (Res::Unknown, _) => writes.push(Write {
            op: op.index,
            effect,
            reported: None,
        }),
        (Res::NotFound, _) => push_obs(obs, Cond::Absent),
        (Res::BelowZero { op_index } | Res::Overflow { op_index }, req) => {
            let below = matches!(op.res, Res::BelowZero { .. });
            let cond = match (req, op_index) {
                (Req::Patch { delta, .. }, _) => Cond::OutOfRange {
                    deltas: vec![*delta],
                    below,
                    if_match,
                },
                (Req::Txn { ops }, Some(i)) => {
                    let i = *i as usize;
                    if ops.get(i).is_some_and(|o| o.item == item) {
                        Cond::OutOfRange {
                            deltas: txn_deltas(ops, item, i + 1),
                            below,
                            if_match: None,
                        }
                    } else {
                        Cond::PriorOk {
                            deltas: txn_deltas(ops, item, i),
                        }
                    }
                }
                _ => Cond::Never,
            };
            push_obs(obs, cond);
        }
        (Res::Mismatch { current }, _) => push_obs(
            obs,
            Cond::Mismatch {
                current: *current,
                if_match,
            },
        ),
        (Res::NameTaken | Res::NoEffect, _) => {}
    }
}

/// Checks one item over the operations that touch it.
pub(crate) fn check_item(item: &str, all: &[Op], touching: &[usize]) -> ItemResult {
    let (mut writes, mut obs) = (Vec::new(), Vec::new());
    for &i in touching {
        classify(&all[i], item, &mut writes, &mut obs);
    }
    let mut by_version: BTreeMap<u64, usize> = BTreeMap::new();
    for (w, write) in writes.iter().enumerate() {
        let Some(s) = write.reported else { continue };
        if let Some(&other) = by_version.get(&s.version) {
            return violation(
                all,
                "version_twice",
                item,
                format!("version {} was acknowledged twice", s.version),
                "each version is produced by exactly one write; the later write should have got a higher version".into(),
                &[writes[other].op, write.op],
            );
        }
        by_version.insert(s.version, w);
    }
    let Some((&first_version, &first_write)) = by_version.iter().next() else {
        return ItemResult::Ok;
    };
    // From the creation when it is in the history, else from the first
    // version whose state a reply showed.
    let created = matches!(writes[first_write].effect, Effect::Create { .. }) && first_version == 1;
    let base = if created { 0 } else { first_version };
    let base_state = if created {
        None
    } else {
        writes[first_write].reported
    };
    let vmax = by_version
        .keys()
        .copied()
        .chain(obs.iter().filter_map(|o| match o.cond {
            Cond::Is { version, .. }
            | Cond::Mismatch {
                current: version, ..
            } => Some(version),
            _ => None,
        }))
        .max()
        .unwrap_or(base);
    // The answer naming the highest version when no write produced it.
    let claims_vmax = obs
        .iter()
        .find(|o| match o.cond {
            Cond::Is { version, .. } => version == vmax && !by_version.contains_key(&vmax),
            _ => false,
        })
        .map(|o| o.op);
    let mut chain = Chain {
        all,
        item,
        writes: &writes,
        by_version: &by_version,
        base,
        vmax,
        claims_vmax,
        steps: 0,
    };
    let (states, order) = match chain.solve(base_state) {
        Ok(found) => found,
        Err(result) => return result,
    };
    Timing {
        all,
        item,
        base,
        vmax,
        states: &states,
        order: &order,
        writes: &writes,
        steps: chain.steps,
    }
    .check(&obs)
}

fn violation(
    all: &[Op],
    kind: &'static str,
    item: &str,
    message: String,
    expected: String,
    ops: &[usize],
) -> ItemResult {
    let records = ops.iter().map(|&i| all[i].records[0].clone()).collect();
    let mut v = Violation::new(kind, Some(item.to_string()), message, expected, records);
    v.ops = ops.iter().map(|&i| super::describe(&all[i])).collect();
    ItemResult::Violation(Box::new(v))
}

/// Step 1: the write behind every version, the unknown ones by search.
struct Chain<'a> {
    all: &'a [Op],
    item: &'a str,
    writes: &'a [Write],
    by_version: &'a BTreeMap<u64, usize>,
    base: u64,
    vmax: u64,
    /// A read naming `vmax` that no write produced (for the counter-example).
    claims_vmax: Option<usize>,
    steps: u64,
}

/// A gap's choice point: the version, the candidate tried (index into
/// `unknown`).
struct Frame {
    version: u64,
    tried: usize,
}

impl Chain<'_> {
    /// States `base..=vmax` and the write index behind each version above base.
    #[allow(clippy::type_complexity)]
    fn solve(
        &mut self,
        base_state: Option<State>,
    ) -> Result<(Vec<Option<State>>, Vec<usize>), ItemResult> {
        let unknown: Vec<usize> = (0..self.writes.len())
            .filter(|&w| self.writes[w].reported.is_none())
            .collect();
        let mut used = vec![false; unknown.len()];
        let mut states = vec![base_state];
        let mut order: Vec<usize> = Vec::new();
        let mut frames: Vec<Frame> = Vec::new();
        let mut next_try = 0usize;
        // The first failure at the highest version: the counter-example.
        let mut deepest: Option<(u64, ItemResult)> = None;
        let mut v = self.base + 1;
        loop {
            self.steps += 1;
            if self.steps > SEARCH_STEPS_MAX {
                return Err(ItemResult::Undecided(format!(
                    "item {}: more than {SEARCH_STEPS_MAX} search steps explaining unacknowledged versions",
                    self.item
                )));
            }
            if v > self.vmax {
                return Ok((states, order));
            }
            let prev = *states.last().expect("base state");
            let advanced = match self.by_version.get(&v) {
                Some(&w) => {
                    let got = apply(&self.writes[w].effect, prev);
                    if got.is_some() && got == self.writes[w].reported {
                        order.push(w);
                        states.push(got);
                        true
                    } else {
                        if deepest.as_ref().is_none_or(|(d, _)| v > *d) {
                            deepest = Some((v, self.chain_violation(v, w, got, &order)));
                        }
                        false
                    }
                }
                None => {
                    let pick = (next_try..unknown.len()).find(|&u| {
                        !used[u] && apply(&self.writes[unknown[u]].effect, prev).is_some()
                    });
                    match pick {
                        Some(u) => {
                            used[u] = true;
                            frames.push(Frame {
                                version: v,
                                tried: u,
                            });
                            order.push(unknown[u]);
                            states.push(apply(&self.writes[unknown[u]].effect, prev));
                            true
                        }
                        None => {
                            if deepest.as_ref().is_none_or(|(d, _)| v > *d) {
                                deepest = Some((v, self.gap_violation(v, &order)));
                            }
                            false
                        }
                    }
                }
            };
            next_try = 0;
            if advanced {
                v += 1;
                continue;
            }
            // Backtrack to the last gap and try its next candidate.
            let Some(frame) = frames.pop() else {
                return Err(deepest.map(|(_, r)| r).unwrap_or(ItemResult::Ok));
            };
            let keep = (frame.version - self.base) as usize;
            states.truncate(keep);
            order.truncate(keep - 1);
            used[frame.tried] = false;
            next_try = frame.tried + 1;
            v = frame.version;
        }
    }

    fn producer(&self, order: &[usize], version: u64) -> Option<usize> {
        version
            .checked_sub(self.base + 1)
            .and_then(|i| order.get(i as usize))
            .map(|&w| self.writes[w].op)
    }

    fn chain_violation(&self, v: u64, w: usize, got: Option<State>, order: &[usize]) -> ItemResult {
        let reported = self.writes[w].reported.expect("known write");
        let expected = match got {
            Some(s) => format!("200 with qty {} at version {}", s.qty, s.version),
            None => "a rejection (qty out of range, or 412 for a stale If-Match)".into(),
        };
        let mut ops: Vec<usize> = self.producer(order, v - 1).into_iter().collect();
        ops.push(self.writes[w].op);
        violation(
            self.all,
            "qty_chain",
            self.item,
            format!(
                "version {v} reported qty {}, which the write does not produce from version {}",
                reported.qty,
                v - 1
            ),
            format!("a correct system would have answered {expected}"),
            &ops,
        )
    }

    fn gap_violation(&self, v: u64, order: &[usize]) -> ItemResult {
        let mut ops: Vec<usize> = self.producer(order, v - 1).into_iter().collect();
        match ((v + 1)..=self.vmax).find_map(|u| self.by_version.get(&u)) {
            Some(next) => ops.push(self.writes[*next].op),
            None => ops.extend(self.claims_vmax),
        }
        violation(
            self.all,
            "version_gap",
            self.item,
            format!("no acknowledged or unknown write can produce version {v}"),
            format!("versions grow by one per applied write: the write after version {} should have answered version {v}", v - 1),
            &ops,
        )
    }
}

/// Step 2 and 3: answers and real time.
struct Timing<'a> {
    all: &'a [Op],
    item: &'a str,
    base: u64,
    vmax: u64,
    states: &'a [Option<State>],
    order: &'a [usize],
    writes: &'a [Write],
    steps: u64,
}

/// Bounds on the write points `t_v` (in `SUBSTEPS` per ns, so that any
/// number of points fit strictly inside one nanosecond: a point is strictly
/// inside its operation's interval), with the operation behind each bound.
#[derive(Clone)]
struct Bounds {
    lo: Vec<(u128, usize)>,
    hi: Vec<(u128, usize)>,
}

/// Sub-nanosecond steps; far more than the versions one nanosecond can hold.
pub(crate) const SUBSTEPS: u128 = 1 << 32;

/// Just after `ns` / just before `ns` (None: never).
pub(crate) fn after(ns: u64) -> u128 {
    u128::from(ns) * SUBSTEPS + 1
}
pub(crate) fn before(ns: Option<u64>) -> u128 {
    ns.map_or(u128::MAX, |ns| u128::from(ns) * SUBSTEPS - 1)
}

impl Timing<'_> {
    fn idx(&self, v: u64) -> usize {
        (v - self.base - 1) as usize
    }

    fn check(&mut self, obs: &[Obs]) -> ItemResult {
        let mut bounds = Bounds {
            lo: Vec::new(),
            hi: Vec::new(),
        };
        for &w in self.order {
            let op = &self.all[self.writes[w].op];
            bounds.lo.push((after(op.inv), op.index));
            bounds.hi.push((before(op.ret), op.index));
        }
        let mut open: Vec<(usize, Vec<u64>)> = Vec::new();
        for o in obs {
            let cands: Vec<u64> = (self.base..=self.vmax)
                .filter(|&v| holds(&o.cond, self.states[(v - self.base) as usize]))
                .collect();
            if cands.is_empty() {
                return self.impossible(o);
            }
            open.push((o.op, cands));
        }
        // Answers one version explains constrain at once; the rest are
        // narrowed against the earliest/latest schedules, then searched.
        let (single, mut multi): (Vec<_>, Vec<_>) =
            open.into_iter().partition(|(_, c)| c.len() == 1);
        for (op, c) in &single {
            self.constrain(&mut bounds, *op, c[0]);
        }
        if let Err(result) = self.feasible(&bounds) {
            return result;
        }
        multi.sort_by_key(|(op, _)| self.all[*op].inv);
        self.search(&mut bounds, &multi)
    }

    fn constrain(&self, b: &mut Bounds, op: usize, v: u64) {
        let o = &self.all[op];
        if v > self.base {
            let i = self.idx(v);
            if before(o.ret) < b.hi[i].0 {
                b.hi[i] = (before(o.ret), op);
            }
        }
        if v < self.vmax {
            let i = self.idx(v + 1);
            if after(o.inv) > b.lo[i].0 {
                b.lo[i] = (after(o.inv), op);
            }
        }
    }

    /// Earliest points; on failure the two operations that conflict.
    fn feasible(&self, b: &Bounds) -> Result<(), ItemResult> {
        let mut t: Option<(u128, usize)> = None; // (point, the op whose bound set it)
        for (i, (&(lo, lo_op), &(hi, hi_op))) in b.lo.iter().zip(&b.hi).enumerate() {
            let v = self.base + 1 + i as u64;
            let carried = t.map(|(p, s)| (p + 1, s));
            let point = match carried {
                Some(c) if c.0 > lo => c,
                _ => (lo, lo_op),
            };
            if point.0 > hi {
                return Err(self.order_violation(point.1, hi_op, v));
            }
            t = Some(point);
        }
        Ok(())
    }

    fn search(&mut self, b: &mut Bounds, multi: &[(usize, Vec<u64>)]) -> ItemResult {
        let Some(((op, cands), rest)) = multi.split_first() else {
            return ItemResult::Ok;
        };
        for &v in cands {
            self.steps += 1;
            if self.steps > SEARCH_STEPS_MAX {
                return ItemResult::Undecided(format!(
                    "item {}: more than {SEARCH_STEPS_MAX} search steps placing rejections",
                    self.item
                ));
            }
            let mut tried = b.clone();
            self.constrain(&mut tried, *op, v);
            if self.feasible(&tried).is_ok() {
                match self.search(&mut tried, rest) {
                    ItemResult::Violation(_) => continue,
                    other => return other,
                }
            }
        }
        let o = &self.all[*op];
        violation(
            self.all,
            "answer_out_of_time",
            self.item,
            format!(
                "no version that explains this answer ({}) was current during its interval",
                super::describe_res(&o.res)
            ),
            format!(
                "a correct system would have answered from the state current then: {}",
                self.current_during(o)
            ),
            &[*op],
        )
    }

    /// What the item looked like while `op` ran (earliest schedule, ignoring `op`).
    fn current_during(&self, op: &Op) -> String {
        let mut last = self.base;
        for (i, &w) in self.order.iter().enumerate() {
            let done = self.all[self.writes[w].op].ret.unwrap_or(u64::MAX);
            if done <= op.inv {
                last = self.base + 1 + i as u64;
            }
        }
        match self.states[(last - self.base) as usize] {
            Some(s) => format!("at least version {} (qty {})", s.version, s.qty),
            None => "not found".into(),
        }
    }

    fn impossible(&self, o: &Obs) -> ItemResult {
        let op = &self.all[o.op];
        violation(
            self.all,
            "impossible_answer",
            self.item,
            format!(
                "the answer {} matches no state the item ever had",
                super::describe_res(&op.res)
            ),
            format!(
                "a correct system would have answered from the state current then: {}",
                self.current_during(op)
            ),
            &[o.op],
        )
    }

    fn order_violation(&self, late_op: usize, early_op: usize, v: u64) -> ItemResult {
        let (late, early) = (&self.all[late_op], &self.all[early_op]);
        let early_done = early.ret.unwrap_or(u64::MAX);
        let expected = match &late.res {
            Res::Read(_) | Res::Mismatch { .. } | Res::NotFound => {
                let s = self.states[(v - self.base) as usize];
                format!(
                    "the later operation should have seen version {} or newer{}",
                    v,
                    s.map(|s| format!(" (qty {})", s.qty)).unwrap_or_default()
                )
            }
            _ => format!("the later write should have got a version above {v}"),
        };
        violation(
            self.all,
            "real_time_order",
            self.item,
            format!(
                "op {} completed at {early_done} ns, before op {} was invoked at {} ns, yet the versions order the later one first ({} / {})",
                early.records[0].id,
                late.records[0].id,
                late.inv,
                super::describe_res(&early.res),
                super::describe_res(&late.res)
            ),
            expected,
            &[early_op, late_op],
        )
    }
}
