//! The checks: the final-quantity arithmetic of every run (`tally`), and the
//! linearizability check of a recorded history (`countiq check FILE`,
//! `countiq load --check`).
//!
//! The history check ([`check_history`]) works in four steps:
//!
//! 1. `ops`: attempts sharing an idempotency key become one operation
//!    (applied at most once: two fresh 2xx for one key, or two different
//!    answers, are violations).
//! 2. `item`: per item, the versions order the writes; the qty chain, every
//!    answer and real-time order must fit one linearization.
//! 3. Owner-wide (`owner`): every write's `CountIQ-LSN` orders all writes of
//!    the owner, transactions included: each LSN answers one operation, the
//!    LSN order respects real time and agrees with every item's versions.
//! 4. Names: two successful creates of one name (case-insensitive) never
//!    coexist, and a 409 `name_taken` has a create that could have won.
//!
//! A violation comes with the smallest set of operations found that shows
//! it (usually two), their times, and what a correct system would have
//! answered.

mod item;
mod ops;
mod owner;
pub(crate) mod tally;

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::history::{Record, Req};
use item::ItemResult;
use ops::{Op, Res};

/// Violations listed in a verdict (the count is exact).
pub const VIOLATIONS_LISTED_MAX: usize = 10;

/// One way the history is not linearizable.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Violation {
    /// Stable name: `version_twice`, `qty_chain`, `version_gap`,
    /// `impossible_answer`, `answer_out_of_time`, `real_time_order`,
    /// `key_applied_twice`, `replay_mismatch`, `lsn_twice`, `lsn_order`,
    /// `lsn_version_order`, `name_twice`, `name_taken_by_nobody`.
    pub kind: &'static str,
    pub item: Option<String>,
    pub message: String,
    /// What a correct system would have answered.
    pub expected: String,
    /// The counter-example's operations, one line each: id, client, times,
    /// request, answer.
    pub ops: Vec<String>,
    #[serde(skip)]
    pub(crate) records: Vec<Record>,
}

impl Violation {
    pub(crate) fn new(
        kind: &'static str,
        item: Option<String>,
        message: String,
        expected: String,
        records: Vec<Record>,
    ) -> Self {
        let ops = records.iter().map(describe_record).collect();
        Violation {
            kind,
            item,
            message,
            expected,
            ops,
            records,
        }
    }
}

/// The verdict on a history.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Verdict {
    /// No violation and nothing undecided.
    pub linearizable: bool,
    pub records: usize,
    /// Logical operations (attempts merged by idempotency key).
    pub operations: usize,
    /// Operations whose outcome stayed unknown (no resolving replay).
    pub unknown: usize,
    pub items: usize,
    /// Writes that carried `CountIQ-LSN` (0: the owner-wide check had
    /// nothing to check).
    pub writes_with_lsn: usize,
    pub violations_total: usize,
    pub violations: Vec<Violation>,
    /// Items whose search hit its step bound (never counted as passed).
    pub undecided: Vec<String>,
}

/// Decides whether `records` (a whole run) are linearizable.
pub fn check_history(records: &[Record]) -> Verdict {
    let mut violations = Vec::new();
    let all = ops::merge(records, &mut violations);
    let mut touching: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for op in &all {
        for item in items_of(op) {
            touching.entry(item).or_default().push(op.index);
        }
    }
    let mut undecided = Vec::new();
    for (item, idx) in &touching {
        match item::check_item(item, &all, idx) {
            ItemResult::Ok => {}
            ItemResult::Violation(v) => violations.push(*v),
            ItemResult::Undecided(why) => undecided.push(why),
        }
    }
    let writes_with_lsn = owner::check(&all, &mut violations);
    check_names(&all, &mut violations);
    let violations_total = violations.len();
    violations.truncate(VIOLATIONS_LISTED_MAX);
    Verdict {
        linearizable: violations_total == 0 && undecided.is_empty(),
        records: records.len(),
        operations: all.len(),
        unknown: all.iter().filter(|o| o.res == Res::Unknown).count(),
        items: touching.len(),
        writes_with_lsn,
        violations_total,
        violations,
        undecided,
    }
}

/// The items an operation touches (a create: the item its reply names).
fn items_of(op: &Op) -> BTreeSet<String> {
    match &op.req {
        Req::Create { .. } => match &op.res {
            Res::Applied { items, .. } => items.iter().map(|s| s.id.clone()).collect(),
            _ => BTreeSet::new(),
        },
        Req::Get { item } | Req::Put { item, .. } | Req::Patch { item, .. } => {
            BTreeSet::from([item.clone()])
        }
        Req::Txn { ops } => ops.iter().map(|o| o.item.clone()).collect(),
    }
}

/// Names: at most one successful create per (owner, folded name), and a
/// 409 `name_taken` needs a create of that name invoked before it ended
/// (or an unknown one). No scenario deletes or renames, so a name once
/// taken stays taken.
fn check_names(all: &[Op], violations: &mut Vec<Violation>) {
    let mut by_name: BTreeMap<(String, String), Vec<&Op>> = BTreeMap::new();
    for op in all {
        if let Req::Create { name, .. } = &op.req {
            let folded = name.trim().to_lowercase();
            by_name
                .entry((op.owner.clone(), folded))
                .or_default()
                .push(op);
        }
    }
    for ops in by_name.values() {
        let won: Vec<&&Op> = ops
            .iter()
            .filter(|o| matches!(o.res, Res::Applied { .. }))
            .collect();
        if let [a, b, ..] = won.as_slice() {
            violations.push(Violation::new(
                "name_twice",
                None,
                "two creates of one name both succeeded".into(),
                "the later create should have answered 409 name_taken".into(),
                vec![a.records[0].clone(), b.records[0].clone()],
            ));
        }
        for lost in ops.iter().filter(|o| o.res == Res::NameTaken) {
            let ret = lost.ret.unwrap_or(u64::MAX);
            let possible = ops.iter().any(|o| {
                o.index != lost.index
                    && matches!(o.res, Res::Applied { .. } | Res::Unknown)
                    && o.inv < ret
            });
            if !possible {
                violations.push(Violation::new(
                    "name_taken_by_nobody",
                    None,
                    "409 name_taken, but no create of that name began before this answer".into(),
                    "a correct system would have answered 201 Created".into(),
                    vec![lost.records[0].clone()],
                ));
            }
        }
    }
}

pub(crate) fn describe_res(res: &Res) -> String {
    match res {
        Res::Applied { items, lsn } => {
            let states: Vec<String> = items
                .iter()
                .map(|s| format!("v{} qty {}", s.version, s.qty))
                .collect();
            let lsn = lsn.map(|l| format!(" lsn {l}")).unwrap_or_default();
            format!("applied [{}]{lsn}", states.join(", "))
        }
        Res::Read(s) => format!("read v{} qty {}", s.version, s.qty),
        Res::NotFound => "404 not_found".into(),
        Res::BelowZero { .. } => "400 qty_below_zero".into(),
        Res::Overflow { .. } => "400 qty_overflow".into(),
        Res::Mismatch { current } => format!("412 current_version {current}"),
        Res::NameTaken => "409 name_taken".into(),
        Res::NoEffect => "refused before the state machine".into(),
        Res::Unknown => "unknown".into(),
    }
}

pub(crate) fn describe(op: &Op) -> String {
    let ret = op
        .ret
        .map_or_else(|| "—".to_string(), |r| format!("{r} ns"));
    format!(
        "op {} (client {}) [{} ns → {ret}] {} => {}",
        op.records[0].id,
        op.records[0].client,
        op.inv,
        describe_req(&op.req),
        describe_res(&op.res)
    )
}

fn describe_record(r: &Record) -> String {
    let ret = r
        .complete_ns
        .map_or_else(|| "—".to_string(), |c| format!("{c} ns"));
    let outcome = match r.reply() {
        Some(_) => describe_res(&ops::classify(r)),
        None => "no reply".into(),
    };
    let key = r
        .key
        .as_deref()
        .map(|k| format!(" key {k}"))
        .unwrap_or_default();
    format!(
        "op {} (client {}) [{} ns → {ret}] {}{key} => {outcome}",
        r.id,
        r.client,
        r.invoke_ns,
        describe_req(&r.request)
    )
}

fn describe_req(req: &Req) -> String {
    let tag = |m: &Option<u64>| m.map(|v| format!(" If-Match \"{v}\"")).unwrap_or_default();
    match req {
        Req::Create { name, qty } => format!("POST /items {name:?} qty {qty}"),
        Req::Get { item } => format!("GET /items/{item}"),
        Req::Put {
            item,
            qty,
            if_match,
            ..
        } => format!("PUT /items/{item} qty {qty}{}", tag(if_match)),
        Req::Patch {
            item,
            delta,
            if_match,
        } => {
            format!("PATCH /items/{item}/qty delta {delta}{}", tag(if_match))
        }
        Req::Txn { ops } => {
            let ops: Vec<String> = ops
                .iter()
                .map(|o| format!("{}{:+}", short(&o.item), o.delta))
                .collect();
            format!("POST /transactions [{}]", ops.join(" "))
        }
    }
}

/// The last 8 characters of an id, enough to tell a run's items apart.
fn short(id: &str) -> &str {
    let cut = id.len().saturating_sub(8);
    id.get(cut..).unwrap_or(id)
}

/// Writes a verdict for a person.
pub fn write_verdict(out: &mut impl std::io::Write, v: &Verdict) -> std::io::Result<()> {
    let word = if v.linearizable {
        "LINEARIZABLE"
    } else {
        "NOT LINEARIZABLE"
    };
    writeln!(
        out,
        "history check  {word}: {} records, {} operations ({} unknown), {} items, {} writes with LSN, {} violations",
        v.records, v.operations, v.unknown, v.items, v.writes_with_lsn, v.violations_total
    )?;
    for viol in &v.violations {
        let item = viol
            .item
            .as_deref()
            .map(|i| format!(" item {i}"))
            .unwrap_or_default();
        writeln!(out, "  {}{item}: {}", viol.kind, viol.message)?;
        for op in &viol.ops {
            writeln!(out, "    {op}")?;
        }
        writeln!(out, "    expected: {}", viol.expected)?;
    }
    for u in &v.undecided {
        writeln!(out, "  undecided: {u}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
