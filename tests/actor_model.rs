//! Goal: the owner actor (registry → actor → domain → log) behaves exactly
//! like a simple reference model for any sequence of commands. Method:
//! proptest generates sequences of create (names from a small pool, so
//! case-insensitive collisions happen), replace (with every kind of
//! If-Match), adjust (deltas that cross both bounds), delete, transact
//! (1-5 ops incl. missing ids: deltas, and reserve, commit and release of
//! holds, with reasons that may conflict on one item), reserve (holds that may exceed what is
//! available), commit and release (of open, gone and unknown holds), get
//! and paged list; each is sent through
//! `Node::registry().call` without HTTP, and after every step both the
//! answer and the whole listed state are compared with a `BTreeMap` model.
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};

use countiq::actor::{Page, SystemClock, Written};
use countiq::domain::{
    Command, Delta, HoldTerms, Item, ItemName, Outcome, OwnerId, Precondition, Qty, Rejection, TxOp,
};
use countiq::node::{Node, NodeConfig};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use uuid::Uuid;

const QTY_MAX: i64 = countiq::domain::QTY_MAX as i64;
const NAMES: &[&str] = &[
    "milk", "Milk", " MILK ", "eggs", "bread", "Bread", "oat milk",
];

#[derive(Debug, Clone)]
enum IfMatch {
    Absent,
    Any,
    Current,
    Stale,
    Empty,
}

#[derive(Debug, Clone)]
enum Step {
    Create {
        name: usize,
        qty: i64,
    },
    Replace {
        item: Index,
        name: usize,
        qty: i64,
        if_match: IfMatch,
    },
    Adjust {
        item: Index,
        delta: i64,
        if_match: IfMatch,
    },
    Delete {
        item: Index,
    },
    Transact {
        ops: Vec<TxStep>,
    },
    Reserve {
        item: Index,
        qty: i64,
    },
    Commit {
        hold: Index,
    },
    Release {
        hold: Index,
    },
    Get {
        item: Index,
    },
    List {
        after: Option<Index>,
        limit: usize,
    },
}

/// One transaction op; the `usize` picks a reason (none, `sale`, `restock`).
#[derive(Debug, Clone)]
enum TxStep {
    Adjust(Index, i64, usize),
    Reserve(Index, i64),
    Commit(Index, usize),
    Release(Index),
}

const REASONS: [Option<&str>; 3] = [None, Some("sale"), Some("restock")];

fn note(reason: usize) -> countiq::domain::Note {
    let reason = REASONS[reason % REASONS.len()];
    countiq::domain::Note::new(
        reason.map(|r| countiq::domain::Reason::new(r).unwrap()),
        None,
    )
}

/// A resolved transaction op of the model.
#[derive(Debug, Clone, Copy)]
enum TxM {
    Adjust(Uuid, i64, usize),
    Reserve(Uuid, i64),
    Commit(Uuid, usize),
    Release(Uuid),
}

fn tx_step() -> impl Strategy<Value = TxStep> {
    prop_oneof![
        6 => (any::<Index>(), delta(), 0usize..3).prop_map(|(i, d, r)| TxStep::Adjust(i, d, r)),
        2 => (any::<Index>(), 1i64..15).prop_map(|(i, q)| TxStep::Reserve(i, q)),
        1 => (any::<Index>(), 0usize..3).prop_map(|(h, r)| TxStep::Commit(h, r)),
        1 => any::<Index>().prop_map(TxStep::Release),
    ]
}

/// The model of one item.
#[derive(Debug, Clone, PartialEq, Eq)]
struct M {
    name: String,
    qty: i64,
    reserved: i64,
    version: u64,
}

type Model = BTreeMap<Uuid, M>;
/// Open holds: id → (item, qty).
type Holds = BTreeMap<Uuid, (Uuid, i64)>;
/// Holds live for an hour: none expires during a case (expiry has its own
/// tests, with a clock the test controls or a deadline).
const HOLD_TTL_SECS: i64 = 3_600;

fn qty() -> impl Strategy<Value = i64> {
    prop_oneof![8 => 0i64..20, 1 => Just(QTY_MAX), 1 => Just(QTY_MAX - 1)]
}

fn delta() -> impl Strategy<Value = i64> {
    prop_oneof![8 => -25i64..=25, 1 => Just(QTY_MAX), 1 => Just(-QTY_MAX)]
}

fn if_match() -> impl Strategy<Value = IfMatch> {
    prop_oneof![
        4 => Just(IfMatch::Absent),
        1 => Just(IfMatch::Any),
        2 => Just(IfMatch::Current),
        2 => Just(IfMatch::Stale),
        1 => Just(IfMatch::Empty),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let name = 0..NAMES.len();
    prop_oneof![
        4 => (name.clone(), qty()).prop_map(|(name, qty)| Step::Create { name, qty }),
        2 => (any::<Index>(), name, qty(), if_match())
            .prop_map(|(item, name, qty, if_match)| Step::Replace { item, name, qty, if_match }),
        4 => (any::<Index>(), delta(), if_match())
            .prop_map(|(item, delta, if_match)| Step::Adjust { item, delta, if_match }),
        1 => any::<Index>().prop_map(|item| Step::Delete { item }),
        3 => proptest::collection::vec(tx_step(), 1..=5)
            .prop_map(|ops| Step::Transact { ops }),
        3 => (any::<Index>(), 1i64..15).prop_map(|(item, qty)| Step::Reserve { item, qty }),
        2 => any::<Index>().prop_map(|hold| Step::Commit { hold }),
        1 => any::<Index>().prop_map(|hold| Step::Release { hold }),
        1 => any::<Index>().prop_map(|item| Step::Get { item }),
        1 => (proptest::option::of(any::<Index>()), 1usize..4)
            .prop_map(|(after, limit)| Step::List { after, limit }),
    ]
}

/// Pick an id: one of the items the model holds, a deleted one, or one that
/// never existed (the last two are the "missing" cases).
fn pick(model: &Model, gone: &[Uuid], never: Uuid, i: &Index) -> Uuid {
    let live: Vec<Uuid> = model.keys().copied().collect();
    let n = live.len() + gone.len() + 1;
    let k = i.index(n);
    if k < live.len() {
        live[k]
    } else if k < live.len() + gone.len() {
        gone[k - live.len()]
    } else {
        never
    }
}

/// Pick a hold id: an open one, a gone one, or one that never existed.
fn pick_hold(holds: &Holds, gone: &[Uuid], never: Uuid, i: &Index) -> Uuid {
    let open: Vec<Uuid> = holds.keys().copied().collect();
    let k = i.index(open.len() + gone.len() + 1);
    if k < open.len() {
        open[k]
    } else if k < open.len() + gone.len() {
        gone[k - open.len()]
    } else {
        never
    }
}

fn key(name: &str) -> String {
    name.trim().to_lowercase()
}

fn taken_by_other(model: &Model, name: &str, me: Option<Uuid>) -> bool {
    model
        .iter()
        .any(|(id, m)| Some(*id) != me && key(&m.name) == key(name))
}

fn precondition(m: &IfMatch, version: u64) -> Option<Precondition> {
    match m {
        IfMatch::Absent => None,
        IfMatch::Any => Some(Precondition::Any),
        IfMatch::Current => Some(Precondition::OneOf(vec![version])),
        IfMatch::Stale => Some(Precondition::OneOf(vec![
            version + 1,
            version.saturating_sub(1),
        ])),
        IfMatch::Empty => Some(Precondition::OneOf(vec![])),
    }
}

fn holds(m: &IfMatch) -> bool {
    matches!(m, IfMatch::Absent | IfMatch::Any | IfMatch::Current)
}

fn as_model(item: &Item) -> M {
    M {
        name: item.name.as_str().to_string(),
        qty: item.qty.get() as i64,
        reserved: item.reserved.get() as i64,
        version: item.version,
    }
}

/// A qty an item may take: not below what it has reserved.
fn above_reserved(m: &M, qty: i64, op_index: Option<u32>) -> Result<i64, Rejection> {
    if qty < m.reserved {
        return Err(Rejection::InsufficientAvailable {
            available: (m.qty - m.reserved) as u64,
            op_index,
        });
    }
    Ok(qty)
}

fn bound(qty: i64, delta: i64, op_index: Option<u32>) -> Result<i64, Rejection> {
    let next = qty + delta;
    if next < 0 {
        Err(Rejection::QtyBelowZero { op_index })
    } else if next > QTY_MAX {
        Err(Rejection::QtyOverflow { op_index })
    } else {
        Ok(next)
    }
}

/// What a model transaction did: touched ids in first-appearance order,
/// the holds it placed (item, qty) in op order, and the holds it removed.
type TxDone = (Vec<Uuid>, Vec<(Uuid, i64)>, Vec<Uuid>);

/// The model's transaction, or the rejection of the first failing op. The
/// model (items and open holds) changes only on success; the placed holds'
/// ids come from the answer, so the caller adds them.
fn model_transact(model: &mut Model, holds: &mut Holds, ops: &[TxM]) -> Result<TxDone, Rejection> {
    let mut work = model.clone();
    let mut open = holds.clone();
    let mut touched = Vec::new();
    let mut notes: BTreeMap<Uuid, usize> = BTreeMap::new();
    let mut placed = Vec::new();
    let mut removed = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let op_index = Some(i as u32);
        let hold_item = |h: &Uuid| {
            open.get(h)
                .map(|(item, _)| *item)
                .ok_or(Rejection::HoldNotFound { op_index })
        };
        let (id, reason) = match op {
            TxM::Adjust(id, _, r) => (*id, Some(*r)),
            TxM::Reserve(id, _) => (*id, None),
            TxM::Commit(h, r) => (hold_item(h)?, Some(*r)),
            TxM::Release(h) => (hold_item(h)?, None),
        };
        let m = work.get_mut(&id).ok_or(Rejection::NotFound { op_index })?;
        if !touched.contains(&id) {
            touched.push(id);
            m.version += 1;
        }
        if let Some(r) = reason {
            match notes.get(&id) {
                Some(earlier) if *earlier != r => return Err(Rejection::NoteConflict { op_index }),
                _ => {
                    notes.insert(id, r);
                }
            }
        }
        match op {
            TxM::Adjust(_, delta, _) => {
                let next = bound(m.qty, *delta, op_index)?;
                m.qty = above_reserved(m, next, op_index)?;
            }
            TxM::Reserve(_, q) => {
                if *q > m.qty - m.reserved {
                    return Err(Rejection::InsufficientAvailable {
                        available: (m.qty - m.reserved) as u64,
                        op_index,
                    });
                }
                m.reserved += q;
                placed.push((id, *q));
            }
            TxM::Commit(h, _) | TxM::Release(h) => {
                let (_, q) = open.remove(h).expect("checked above");
                if matches!(op, TxM::Commit(..)) {
                    m.qty -= q;
                }
                m.reserved -= q;
                removed.push(*h);
            }
        }
    }
    *model = work;
    *holds = open;
    Ok((touched, placed, removed))
}

fn mismatch(step: &Step, got: impl std::fmt::Debug, want: impl std::fmt::Debug) -> TestCaseError {
    TestCaseError::fail(format!("{step:?}: got {got:?}, model wants {want:?}"))
}

struct Harness {
    node: std::sync::Arc<Node>,
    owner: OwnerId,
}

impl Harness {
    async fn write(&self, cmd: Command) -> Result<Outcome, Rejection> {
        let written = self.node.registry().write(&self.owner, cmd, None).await;
        match written.expect("write") {
            Written::Done {
                result, replayed, ..
            } => {
                assert!(!replayed);
                result
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    async fn get(&self, id: Uuid) -> Option<Item> {
        let read = self.node.registry().get(&self.owner, id).await;
        read.expect("get").value
    }

    async fn list(&self, after: Option<Uuid>, limit: usize) -> Page {
        let read = self.node.registry().list(&self.owner, after, limit).await;
        read.expect("list").value
    }

    async fn list_all(&self) -> Vec<Item> {
        let page = self.list(None, 1000).await;
        assert!(!page.more);
        page.items
    }
}

async fn run_steps(h: &Harness, steps: Vec<Step>) -> Result<(), TestCaseError> {
    let mut model = Model::new();
    let mut gone: Vec<Uuid> = Vec::new();
    let never = Uuid::now_v7();
    let mut open_holds = Holds::new();
    let mut gone_holds: Vec<Uuid> = Vec::new();
    for step in steps {
        match &step {
            Step::Create { name, qty } => {
                let name = NAMES[*name];
                let cmd = Command::Create {
                    name: ItemName::new(name).unwrap(),
                    qty: Qty::new(*qty).unwrap(),
                    note: countiq::domain::Note::NONE,
                };
                let got = h.write(cmd).await;
                if taken_by_other(&model, name, None) {
                    prop_assert_eq!(got, Err(Rejection::NameTaken));
                } else {
                    let Ok(Outcome::Created(item)) = got else {
                        return Err(TestCaseError::fail(format!("{step:?}: {got:?}")));
                    };
                    let want = M {
                        name: name.trim().to_string(),
                        qty: *qty,
                        reserved: 0,
                        version: 1,
                    };
                    prop_assert_eq!(as_model(&item), want.clone());
                    prop_assert!(!model.contains_key(&item.id) && !gone.contains(&item.id));
                    model.insert(item.id, want);
                }
            }
            Step::Replace {
                item,
                name,
                qty,
                if_match,
            } => {
                let id = pick(&model, &gone, never, item);
                let name = NAMES[*name];
                let version = model.get(&id).map_or(1, |m| m.version);
                let cmd = Command::Replace {
                    id,
                    name: ItemName::new(name).unwrap(),
                    qty: Qty::new(*qty).unwrap(),
                    if_match: precondition(if_match, version),
                    note: countiq::domain::Note::NONE,
                };
                let got = h.write(cmd).await;
                let want = match model.get(&id) {
                    None => Err(Rejection::NotFound { op_index: None }),
                    Some(m) if !holds(if_match) => {
                        Err(Rejection::VersionMismatch { current: m.version })
                    }
                    Some(_) if taken_by_other(&model, name, Some(id)) => Err(Rejection::NameTaken),
                    Some(m) => above_reserved(m, *qty, None).map(|qty| M {
                        name: name.trim().to_string(),
                        qty,
                        reserved: m.reserved,
                        version: m.version + 1,
                    }),
                };
                match (got, want) {
                    (Ok(Outcome::Updated(item)), Ok(m)) => {
                        prop_assert_eq!(item.id, id);
                        prop_assert_eq!(as_model(&item), m.clone());
                        model.insert(id, m);
                    }
                    (Err(got), Err(want)) => prop_assert_eq!(got, want),
                    (got, want) => return Err(mismatch(&step, got, want)),
                }
            }
            Step::Adjust {
                item,
                delta,
                if_match,
            } => {
                let id = pick(&model, &gone, never, item);
                let version = model.get(&id).map_or(1, |m| m.version);
                let cmd = Command::Adjust {
                    id,
                    delta: Delta::new(*delta).unwrap(),
                    if_match: precondition(if_match, version),
                    note: countiq::domain::Note::NONE,
                };
                let got = h.write(cmd).await;
                let want = match model.get(&id) {
                    None => Err(Rejection::NotFound { op_index: None }),
                    Some(m) if !holds(if_match) => {
                        Err(Rejection::VersionMismatch { current: m.version })
                    }
                    Some(m) => bound(m.qty, *delta, None)
                        .and_then(|qty| above_reserved(m, qty, None))
                        .map(|qty| M {
                            name: m.name.clone(),
                            qty,
                            reserved: m.reserved,
                            version: m.version + 1,
                        }),
                };
                match (got, want) {
                    (Ok(Outcome::Updated(item)), Ok(m)) => {
                        prop_assert_eq!(as_model(&item), m.clone());
                        model.insert(id, m);
                    }
                    (Err(got), Err(want)) => prop_assert_eq!(got, want),
                    (got, want) => return Err(mismatch(&step, got, want)),
                }
            }
            Step::Delete { item } => {
                let id = pick(&model, &gone, never, item);
                prop_assert_eq!(h.write(Command::Delete { id }).await, Ok(Outcome::Deleted));
                if model.remove(&id).is_some() {
                    gone.push(id);
                    open_holds.retain(|hold, (item, _)| {
                        let keep = *item != id;
                        if !keep {
                            gone_holds.push(*hold);
                        }
                        keep
                    });
                }
            }
            Step::Transact { ops } => {
                let ops: Vec<TxM> = ops
                    .iter()
                    .map(|op| match op {
                        TxStep::Adjust(i, d, r) => {
                            TxM::Adjust(pick(&model, &gone, never, i), *d, *r)
                        }
                        TxStep::Reserve(i, q) => TxM::Reserve(pick(&model, &gone, never, i), *q),
                        TxStep::Commit(h, r) => {
                            TxM::Commit(pick_hold(&open_holds, &gone_holds, never, h), *r)
                        }
                        TxStep::Release(h) => {
                            TxM::Release(pick_hold(&open_holds, &gone_holds, never, h))
                        }
                    })
                    .collect();
                let cmd = Command::Transact {
                    ops: ops
                        .iter()
                        .map(|op| match *op {
                            TxM::Adjust(item, d, r) => TxOp::Adjust {
                                item,
                                delta: Delta::new(d).unwrap(),
                                note: note(r),
                            },
                            TxM::Reserve(item, q) => TxOp::Reserve {
                                item,
                                terms: HoldTerms::new(q, HOLD_TTL_SECS).unwrap(),
                            },
                            TxM::Commit(hold, r) => TxOp::Commit {
                                hold,
                                note: note(r),
                            },
                            TxM::Release(hold) => TxOp::Release { hold },
                        })
                        .collect(),
                };
                let got = h.write(cmd).await;
                match (got, model_transact(&mut model, &mut open_holds, &ops)) {
                    (Ok(Outcome::Transacted(items, holds)), Ok((touched, placed, removed))) => {
                        let ids: Vec<Uuid> = items.iter().map(|i| i.id).collect();
                        prop_assert_eq!(ids, touched);
                        for item in &items {
                            prop_assert_eq!(&as_model(item), &model[&item.id]);
                        }
                        let got: Vec<(Uuid, i64)> =
                            holds.iter().map(|h| (h.item, h.qty.get() as i64)).collect();
                        prop_assert_eq!(got, placed);
                        for hold in &holds {
                            prop_assert!(
                                !open_holds.contains_key(&hold.id)
                                    && !gone_holds.contains(&hold.id),
                                "fresh hold ids"
                            );
                            open_holds.insert(hold.id, (hold.item, hold.qty.get() as i64));
                        }
                        gone_holds.extend(removed);
                    }
                    (Err(got), Err(want)) => prop_assert_eq!(got, want),
                    (got, want) => return Err(mismatch(&step, got, want)),
                }
            }
            Step::Reserve { item, qty } => {
                let id = pick(&model, &gone, never, item);
                let cmd = Command::Reserve {
                    item: id,
                    terms: HoldTerms::new(*qty, HOLD_TTL_SECS).unwrap(),
                };
                let got = h.write(cmd).await;
                let want = match model.get(&id) {
                    None => Err(Rejection::NotFound { op_index: None }),
                    Some(m) if *qty > m.qty - m.reserved => Err(Rejection::InsufficientAvailable {
                        available: (m.qty - m.reserved) as u64,
                        op_index: None,
                    }),
                    Some(m) => Ok(M {
                        reserved: m.reserved + qty,
                        version: m.version + 1,
                        ..m.clone()
                    }),
                };
                match (got, want) {
                    (Ok(Outcome::Reserved(hold, item)), Ok(m)) => {
                        prop_assert_eq!((hold.item, hold.qty.get() as i64), (id, *qty));
                        prop_assert!(!open_holds.contains_key(&hold.id));
                        prop_assert_eq!(as_model(&item), m.clone());
                        open_holds.insert(hold.id, (id, *qty));
                        model.insert(id, m);
                    }
                    (Err(got), Err(want)) => prop_assert_eq!(got, want),
                    (got, want) => return Err(mismatch(&step, got, want)),
                }
            }
            Step::Commit { hold } => {
                let rid = pick_hold(&open_holds, &gone_holds, never, hold);
                let got = h
                    .write(Command::CommitHold {
                        hold: rid,
                        note: countiq::domain::Note::NONE,
                    })
                    .await;
                match (got, open_holds.remove(&rid)) {
                    (Ok(Outcome::Updated(item)), Some((id, q))) => {
                        let m = model.get_mut(&id).expect("a hold's item exists");
                        m.qty -= q;
                        m.reserved -= q;
                        m.version += 1;
                        prop_assert_eq!(&as_model(&item), &*m);
                        gone_holds.push(rid);
                    }
                    (Err(Rejection::HoldNotFound { .. }), None) => {}
                    (got, want) => return Err(mismatch(&step, got, want)),
                }
            }
            Step::Release { hold } => {
                let rid = pick_hold(&open_holds, &gone_holds, never, hold);
                let got = h.write(Command::ReleaseHold { hold: rid }).await;
                prop_assert_eq!(got, Ok(Outcome::Deleted));
                if let Some((id, q)) = open_holds.remove(&rid) {
                    let m = model.get_mut(&id).expect("a hold's item exists");
                    m.reserved -= q;
                    m.version += 1;
                    gone_holds.push(rid);
                }
            }
            Step::Get { item } => {
                let id = pick(&model, &gone, never, item);
                let found = h.get(id).await;
                prop_assert_eq!(found.as_ref().map(as_model), model.get(&id).cloned());
            }
            Step::List { after, limit } => {
                let after = after.as_ref().map(|i| pick(&model, &gone, never, i));
                let Page { items, more } = h.list(after, *limit).await;
                let rest: Vec<(Uuid, M)> = model
                    .iter()
                    .filter(|(id, _)| after.is_none_or(|a| **id > a))
                    .map(|(id, m)| (*id, m.clone()))
                    .collect();
                let page: Vec<(Uuid, M)> = items.iter().map(|i| (i.id, as_model(i))).collect();
                prop_assert_eq!(&page[..], &rest[..rest.len().min(*limit)]);
                prop_assert_eq!(more, rest.len() > *limit);
            }
        }
        // The whole state, after every step.
        let state: Vec<(Uuid, M)> = h
            .list_all()
            .await
            .iter()
            .map(|i| (i.id, as_model(i)))
            .collect();
        let want: Vec<(Uuid, M)> = model.iter().map(|(id, m)| (*id, m.clone())).collect();
        prop_assert_eq!(state, want, "after {:?}", step);
    }
    Ok(())
}

#[test]
fn actor_matches_the_model() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let node = rt.block_on(async {
        let config = NodeConfig::quiet(dir.path());
        Node::open(config, Box::new(SystemClock)).await.unwrap()
    });
    let mut runner = TestRunner::new(Config {
        cases: 1000,
        failure_persistence: None,
        ..Config::default()
    });
    let n = AtomicU32::new(0);
    let steps = proptest::collection::vec(step(), 1..60);
    runner
        .run(&steps, |steps| {
            // A fresh owner per case (and per shrink attempt): no leftovers.
            let owner = format!("model-{}", n.fetch_add(1, Ordering::Relaxed));
            let h = Harness {
                node: node.clone(),
                owner: OwnerId::new(&owner).unwrap(),
            };
            rt.block_on(run_steps(&h, steps))
        })
        .unwrap();
}
