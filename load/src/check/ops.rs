//! From attempts to logical operations: attempts that share an idempotency
//! key (per owner) are one operation, applied at most once; each operation
//! gets one interval and one classified result.
//!
//! The interval starts at the first attempt's invoke. It ends at the
//! earliest complete time among the attempts with a definite answer (the
//! operation took effect, if at all, before that answer was sent), or never
//! when no attempt had one (the outcome is unknown).

use std::collections::BTreeMap;

use crate::history::{ItemState, Record, Req};

use super::Violation;

/// How the checker reads one operation's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Res {
    /// 2xx on a write: the state(s) it produced, with the owner-wide LSN.
    Applied {
        items: Vec<ItemState>,
        lsn: Option<u64>,
    },
    /// 200 on a GET.
    Read(ItemState),
    /// 404: no such item at the linearization point.
    NotFound,
    /// 400 `qty_below_zero` (a transaction's `op_index` when known).
    BelowZero { op_index: Option<u32> },
    /// 400 `qty_overflow`.
    Overflow { op_index: Option<u32> },
    /// 412 with the version that was current.
    Mismatch { current: u64 },
    /// 409 `name_taken`.
    NameTaken,
    /// Refused before the state machine (401, 408, 413, 415, 421
    /// `misdirected_owner`, 422, 429, 503 `overloaded` / `not_ready`, other
    /// 400s): no state change, nothing learned about the state.
    NoEffect,
    /// No reply, a 500, or 503 `unavailable`: may or may not have applied.
    Unknown,
}

impl Res {
    fn definite(&self) -> bool {
        !matches!(self, Res::NoEffect | Res::Unknown)
    }
}

/// One logical operation.
#[derive(Debug, Clone)]
pub(crate) struct Op {
    /// Index in `Ops::all`.
    pub index: usize,
    /// The records it merges, first attempt first.
    pub records: Vec<Record>,
    pub owner: String,
    pub req: Req,
    pub inv: u64,
    /// None: unknown outcome.
    pub ret: Option<u64>,
    pub res: Res,
}

/// Classifies one attempt.
pub(crate) fn classify(r: &Record) -> Res {
    let Some(reply) = r.reply() else {
        return Res::Unknown;
    };
    let code = reply.error.as_deref();
    match (reply.status, &r.request) {
        (200, Req::Get { item }) => match reply.items.iter().find(|s| &s.id == item) {
            Some(s) => Res::Read(s.clone()),
            None => Res::NoEffect,
        },
        (200 | 201, _) => Res::Applied {
            items: reply.items.clone(),
            lsn: reply.lsn,
        },
        (404, _) => Res::NotFound,
        (400, _) if code == Some("qty_below_zero") => Res::BelowZero {
            op_index: reply.op_index,
        },
        (400, _) if code == Some("qty_overflow") => Res::Overflow {
            op_index: reply.op_index,
        },
        (412, _) => match reply.current_version {
            Some(current) => Res::Mismatch { current },
            None => Res::NoEffect,
        },
        (409, _) if code == Some("name_taken") => Res::NameTaken,
        (503, _) if code == Some("unavailable") => Res::Unknown,
        (500..=599, _) if !matches!(code, Some("overloaded" | "not_ready")) => Res::Unknown,
        _ => Res::NoEffect,
    }
}

/// Merges attempts into operations; disagreeing replays of one key and a
/// key applied twice are violations.
pub(crate) fn merge(records: &[Record], violations: &mut Vec<Violation>) -> Vec<Op> {
    let mut groups: BTreeMap<(String, String), Vec<Record>> = BTreeMap::new();
    let mut singles = Vec::new();
    for r in records {
        match &r.key {
            Some(key) => groups
                .entry((r.owner.clone(), key.clone()))
                .or_default()
                .push(r.clone()),
            None => singles.push(vec![r.clone()]),
        }
    }
    let mut ops: Vec<Op> = Vec::new();
    for mut attempts in groups.into_values().chain(singles) {
        attempts.sort_by_key(|r| (r.invoke_ns, r.id));
        let index = ops.len();
        if let Some(op) = merge_one(index, attempts, violations) {
            ops.push(op);
        }
    }
    ops.sort_by_key(|o| (o.inv, o.records[0].id));
    for (i, op) in ops.iter_mut().enumerate() {
        op.index = i;
    }
    ops
}

fn merge_one(index: usize, attempts: Vec<Record>, violations: &mut Vec<Violation>) -> Option<Op> {
    let first = attempts.first()?.clone();
    let mut definite: Vec<(u64, Res, &Record)> = attempts
        .iter()
        .filter_map(|r| {
            let res = classify(r);
            match (res.definite(), r.complete_ns) {
                (true, Some(done)) => Some((done, res, r)),
                _ => None,
            }
        })
        .collect();
    definite.sort_by_key(|(done, _, r)| (*done, r.id));
    let fresh_applies: Vec<&Record> = definite
        .iter()
        .filter(|(_, res, r)| {
            matches!(res, Res::Applied { .. }) && !r.reply().is_some_and(|x| x.replayed)
        })
        .map(|(_, _, r)| *r)
        .collect();
    if fresh_applies.len() > 1 {
        violations.push(Violation::new(
            "key_applied_twice",
            None,
            format!(
                "idempotency key {:?} was applied {} times (replies without Idempotent-Replayed)",
                first.key.clone().unwrap_or_default(),
                fresh_applies.len()
            ),
            "the second attempt should have been a replay of the first reply".into(),
            fresh_applies.iter().take(2).map(|r| (*r).clone()).collect(),
        ));
    }
    if let Some((_, res0, r0)) = definite.first() {
        if let Some((_, _, other)) = definite.iter().find(|(_, res, _)| res != res0) {
            violations.push(Violation::new(
                "replay_mismatch",
                None,
                "two attempts with one idempotency key got different answers".into(),
                "a replay repeats the first answer exactly".into(),
                vec![(*r0).clone(), (*other).clone()],
            ));
        }
    }
    let (ret, res) = match definite.first() {
        Some((done, res, _)) => (Some(*done), res.clone()),
        None => {
            let all_no_effect = attempts.iter().all(|r| classify(r) == Res::NoEffect);
            let res = if all_no_effect {
                Res::NoEffect
            } else {
                Res::Unknown
            };
            let ret = if all_no_effect {
                attempts.iter().filter_map(|r| r.complete_ns).min()
            } else {
                None
            };
            (ret, res)
        }
    };
    Some(Op {
        index,
        owner: first.owner.clone(),
        req: first.request.clone(),
        inv: first.invoke_ns,
        ret,
        res,
        records: attempts,
    })
}

#[cfg(test)]
mod tests {
    //! Goal: attempts with one key are one operation whose interval ends at
    //! the first definite answer; a double apply and disagreeing replays are
    //! flagged; method: hand-made attempts.
    use super::*;
    use crate::history::{Outcome, Reply};

    fn attempt(id: u64, inv: u64, done: Option<u64>, reply: Option<Reply>) -> Record {
        Record {
            id,
            client: 0,
            owner: "o".into(),
            invoke_ns: inv,
            complete_ns: done,
            key: Some("k".into()),
            request: Req::Patch {
                item: "i".into(),
                delta: 1,
                if_match: None,
            },
            outcome: match reply {
                Some(r) => Outcome::Reply(r),
                None => Outcome::Unknown {
                    unknown: "timeout".into(),
                },
            },
            resolves: None,
            intended_ns: None,
        }
    }

    fn ok(version: u64, replayed: bool) -> Reply {
        Reply {
            status: 200,
            error: None,
            items: vec![ItemState {
                id: "i".into(),
                qty: 5,
                version,
            }],
            lsn: Some(version),
            replayed,
            current_version: None,
            op_index: None,
        }
    }

    #[test]
    fn a_resolved_timeout_is_one_operation() {
        let mut v = Vec::new();
        let ops = merge(
            &[
                attempt(1, 10, None, None),
                attempt(2, 50, Some(60), Some(ok(3, true))),
            ],
            &mut v,
        );
        assert!(v.is_empty(), "{v:?}");
        assert_eq!(ops.len(), 1);
        assert_eq!((ops[0].inv, ops[0].ret), (10, Some(60)));
        assert!(matches!(ops[0].res, Res::Applied { .. }));
    }

    #[test]
    fn unresolved_stays_unknown() {
        let mut v = Vec::new();
        let ops = merge(&[attempt(1, 10, None, None)], &mut v);
        assert_eq!((ops[0].ret, &ops[0].res), (None, &Res::Unknown));
    }

    #[test]
    fn double_apply_and_disagreement_are_violations() {
        let mut v = Vec::new();
        merge(
            &[
                attempt(1, 10, Some(20), Some(ok(3, false))),
                attempt(2, 30, Some(40), Some(ok(4, false))),
            ],
            &mut v,
        );
        let kinds: Vec<_> = v.iter().map(|x| x.kind).collect();
        assert_eq!(kinds, vec!["key_applied_twice", "replay_mismatch"]);
    }
}
