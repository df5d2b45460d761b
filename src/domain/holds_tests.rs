//! Unit tests of reservations and history: each rule in its positive and
//! negative space, the invariants after every step, and replay = live.

use super::idempotency::IdemKey;
use super::*;

const SEC: Micros = 1_000_000;

fn ctx(now: Micros, id: u128) -> Ctx {
    Ctx {
        now,
        new_id: Uuid::from_u128(id),
    }
}

fn qty(n: i64) -> Qty {
    Qty::new(n).unwrap()
}

/// `q` units for `ttl` µs (whole seconds).
fn terms(q: i64, ttl: Micros) -> HoldTerms {
    assert_eq!(ttl % SEC, 0, "a hold's ttl is whole seconds");
    HoldTerms::new(q, ttl / SEC).unwrap()
}

/// Goal: a hold's terms are bounded where they are made, so no command can
/// carry an empty or endless hold, and each refusal names its field.
/// Method: each bound's edge on both sides.
#[test]
fn hold_terms_are_bounded_and_name_the_field() {
    let day = HOLD_TTL_SECS_MAX as i64;
    let ok = HoldTerms::new(1, 1).unwrap();
    assert_eq!((ok.qty().get(), ok.ttl()), (1, SEC));
    let max = HoldTerms::new(QTY_MAX as i64, day).unwrap();
    assert_eq!((max.qty().get(), max.ttl()), (QTY_MAX, day as Micros * SEC));
    let refused = |q: i64, t: i64| HoldTerms::new(q, t).unwrap_err();
    assert_eq!(refused(0, 1), HoldTermsError::QtyZero);
    assert_eq!(
        refused(-1, 1),
        HoldTermsError::Qty(ValueError::QtyNegative(-1))
    );
    let over = QTY_MAX as i64 + 1;
    assert_eq!(
        refused(over, 1),
        HoldTermsError::Qty(ValueError::QtyTooLarge(over))
    );
    assert_eq!(refused(1, 0), HoldTermsError::Ttl(0));
    assert_eq!(refused(1, day + 1), HoldTermsError::Ttl(day + 1));
    assert_eq!(
        refused(0, 0),
        HoldTermsError::QtyZero,
        "qty is checked first"
    );
    assert_eq!(refused(0, 1).field(), "qty");
    assert_eq!(refused(1, -5).field(), "ttl");
    assert_eq!(refused(0, 1).to_string(), "a reservation holds at least 1");
    assert_eq!(
        refused(1, 0).to_string(),
        format!("must be 1 to {HOLD_TTL_SECS_MAX} seconds, got 0")
    );
}

/// Everything observable, sorted: items, holds, histories.
fn observe(s: &OwnerState) -> (Vec<Item>, Vec<Hold>, OwnerExtra) {
    let mut items: Vec<Item> = s.items().cloned().collect();
    items.sort_by_key(|i| i.id);
    let mut extra = s.snapshot_extra();
    extra.holds.sort_by_key(|h| h.id);
    extra.history.sort_by_key(|(id, _)| *id);
    (items, extra.holds.clone(), extra)
}

/// A state and the events it logged, to replay.
#[derive(Default)]
struct Live {
    s: OwnerState,
    log: Vec<(Event, Option<IdemKey>)>,
}

impl Live {
    fn run(&mut self, cmd: Command, c: Ctx) -> Result<Outcome, Rejection> {
        self.run_keyed(cmd, c, None)
    }

    fn run_keyed(&mut self, cmd: Command, c: Ctx, key: Option<&str>) -> Result<Outcome, Rejection> {
        let before = observe(&self.s);
        let stamp = key.map(|k| KeyStamp {
            key: IdemKey::parse(k).unwrap(),
            fingerprint: [0; 32],
            expires_at: i64::MAX,
        });
        let applied = self.s.apply(&cmd, c, stamp);
        if applied.result.is_err() {
            assert_eq!(observe(&self.s), before, "a rejection changes nothing");
        }
        if let Some(e) = applied.event {
            self.log.push((e, applied.key.map(|k| k.key)));
        }
        self.s.check_invariants().unwrap();
        applied.result
    }

    fn create(&mut self, q: i64, id: u128) -> Uuid {
        let cmd = Command::Create {
            name: ItemName::new(&format!("item {id}")).unwrap(),
            qty: qty(q),
            note: crate::domain::Note::NONE,
        };
        match self.run(cmd, ctx(SEC, id)) {
            Ok(Outcome::Created(item)) => item.id,
            other => panic!("{other:?}"),
        }
    }

    fn reserve(
        &mut self,
        item: Uuid,
        q: i64,
        ttl: Micros,
        now: Micros,
        id: u128,
    ) -> Result<Hold, Rejection> {
        let cmd = Command::Reserve {
            item,
            terms: terms(q, ttl),
        };
        self.run(cmd, ctx(now, id)).map(|o| match o {
            Outcome::Reserved(hold, item) => {
                assert_eq!(item.reserved, self.s.get(&hold.item).unwrap().reserved);
                hold
            }
            other => panic!("{other:?}"),
        })
    }

    /// Replay the log into a fresh state the way recovery does.
    fn replayed(&self) -> OwnerState {
        let mut r = OwnerState::default();
        for (e, key) in &self.log {
            r.check_event(e).unwrap();
            r.evolve_keyed(e, key.as_ref());
        }
        r
    }
}

fn adjust(id: Uuid, d: i64) -> Command {
    Command::Adjust {
        id,
        delta: Delta::new(d).unwrap(),
        if_match: None,
        note: crate::domain::Note::NONE,
    }
}

/// Goal: a hold takes from `available`, never more than there is, and no
/// qty change may go below what is reserved. Method: qty 10, hold 7, then
/// a hold of 4, a PATCH of -4, a PUT to 6 and a transaction of -4 are all
/// refused with `InsufficientAvailable { available: 3 }` and change
/// nothing; -3 is accepted.
#[test]
fn holds_never_make_available_negative() {
    let mut l = Live::default();
    let id = l.create(10, 1);
    let hold = l.reserve(id, 7, 60 * SEC, 2 * SEC, 100).unwrap();
    let item = l.s.get(&id).unwrap().clone();
    assert_eq!(
        (
            item.qty.get(),
            item.reserved.get(),
            item.available(),
            item.version
        ),
        (10, 7, 3, 2)
    );
    assert_eq!(
        (hold.item, hold.qty.get(), hold.expires_at),
        (id, 7, 62 * SEC)
    );
    let short = Rejection::InsufficientAvailable {
        available: 3,
        op_index: None,
    };
    assert_eq!(l.reserve(id, 4, SEC, 3 * SEC, 101), Err(short.clone()));
    assert_eq!(l.run(adjust(id, -4), ctx(3 * SEC, 0)), Err(short.clone()));
    let put = Command::Replace {
        id,
        name: item.name.clone(),
        qty: qty(6),
        if_match: None,
        note: crate::domain::Note::NONE,
    };
    assert_eq!(l.run(put, ctx(3 * SEC, 0)), Err(short));
    let tx = Command::Transact {
        ops: vec![TxOp::adjust(id, Delta::new(-4).unwrap())],
    };
    assert_eq!(
        l.run(tx, ctx(3 * SEC, 0)),
        Err(Rejection::InsufficientAvailable {
            available: 3,
            op_index: Some(0)
        })
    );
    let ok = l.run(adjust(id, -3), ctx(3 * SEC, 0)).unwrap();
    assert!(matches!(ok, Outcome::Updated(i) if i.qty.get() == 7 && i.available() == 0));
}

/// Goal: commit moves a hold into qty exactly once; release and a second
/// commit find nothing. Method: qty 10, hold 4, commit → qty 6, reserved 0;
/// commit again → `HoldNotFound`; release → accepted with no event.
#[test]
fn commit_is_a_decrease_once_and_release_after_it_is_a_no_op() {
    let mut l = Live::default();
    let id = l.create(10, 1);
    let hold = l.reserve(id, 4, 60 * SEC, 2 * SEC, 100).unwrap();
    let done = l.run(
        Command::CommitHold {
            hold: hold.id,
            note: crate::domain::Note::NONE,
        },
        ctx(3 * SEC, 0),
    );
    let Ok(Outcome::Updated(item)) = done else {
        panic!("{done:?}")
    };
    assert_eq!(
        (item.qty.get(), item.reserved.get(), item.version),
        (6, 0, 3)
    );
    assert_eq!(
        l.run(
            Command::CommitHold {
                hold: hold.id,
                note: crate::domain::Note::NONE
            },
            ctx(4 * SEC, 0)
        ),
        Err(Rejection::HoldNotFound { op_index: None })
    );
    let logged = l.log.len();
    assert_eq!(
        l.run(Command::ReleaseHold { hold: hold.id }, ctx(4 * SEC, 0)),
        Ok(Outcome::Deleted)
    );
    assert_eq!(l.log.len(), logged, "releasing a gone hold logs nothing");
}

/// Goal: expiry is decided by the time the caller passes, releases only
/// holds due by then, at most HOLD_EXPIRE_PER_STEP per step, and records
/// that time. Method: holds due at 10 s, 20 s and (HOLD_EXPIRE_PER_STEP+1)
/// more at 30 s; expire at 9 s (nothing), 10 s (one), 30 s (a full step,
/// then the rest).
#[test]
fn expiry_is_bounded_and_uses_the_time_it_is_given() {
    let mut l = Live::default();
    let a = l.create(1000, 1);
    let b = l.create(1000, 2);
    l.reserve(a, 1, 10 * SEC, 0, 100).unwrap();
    l.reserve(a, 1, 20 * SEC, 0, 101).unwrap();
    for n in 0..=HOLD_EXPIRE_PER_STEP as u128 {
        l.reserve(b, 1, 30 * SEC, 0, 200 + n).unwrap();
    }
    assert_eq!(l.s.next_hold_expiry(), Some(10 * SEC));
    assert_eq!(
        l.s.decide(&Command::ExpireHolds, ctx(10 * SEC - 1, 0)),
        Ok(None)
    );
    l.run(Command::ExpireHolds, ctx(10 * SEC, 0)).unwrap();
    assert_eq!(
        l.log.last().map(|(e, _)| e.clone()),
        Some(Event::HoldsExpired {
            holds: vec![Uuid::from_u128(100)],
            at: 10 * SEC
        })
    );
    assert_eq!(l.s.get(&a).unwrap().reserved.get(), 1);
    l.run(Command::ExpireHolds, ctx(30 * SEC, 0)).unwrap();
    let Some((Event::HoldsExpired { holds, .. }, _)) = l.log.last() else {
        panic!()
    };
    assert_eq!(holds.len(), HOLD_EXPIRE_PER_STEP);
    assert_eq!(l.s.holds().count(), 2, "66 due, 64 per step");
    l.run(Command::ExpireHolds, ctx(30 * SEC, 0)).unwrap();
    assert_eq!(l.s.holds().count(), 0);
    assert_eq!(l.s.next_hold_expiry(), None);
    let replayed = l.replayed();
    assert_eq!(observe(&replayed), observe(&l.s), "replay needs no clock");
}

/// Goal: the per-item hold bound is enforced (and the owner bound has the
/// same check). Method: HOLDS_PER_ITEM_MAX holds of 1, the next is
/// `HoldLimit` and changes nothing; another item still takes holds.
#[test]
fn holds_per_item_are_bounded() {
    let mut l = Live::default();
    let a = l.create(1000, 1);
    let b = l.create(1000, 2);
    for n in 0..HOLDS_PER_ITEM_MAX as u128 {
        l.reserve(a, 1, SEC, 0, 100 + n).unwrap();
    }
    assert_eq!(
        l.reserve(a, 1, SEC, 0, 99_999),
        Err(Rejection::HoldLimit { op_index: None })
    );
    assert!(l.reserve(b, 1, SEC, 0, 99_998).is_ok());
}

/// Goal: history keeps the newest HISTORY_PER_ITEM_MAX entries, pages
/// newest first, records delta, reserved and the key; deleting the item
/// drops its holds and history. Method: 40 PATCHes of +1 (one keyed),
/// then read pages of 10 and check versions; then delete.
#[test]
fn history_is_bounded_newest_first_and_paged() {
    let mut l = Live::default();
    let id = l.create(0, 1);
    for n in 0..40 {
        let key = (n == 39).then_some("k-last");
        l.run_keyed(adjust(id, 1), ctx(2 * SEC + n, 0), key)
            .unwrap();
    }
    let hold = l.reserve(id, 5, SEC, 3 * SEC, 100).unwrap();
    // 1 create + 40 adjusts + 1 reserve = versions 1..=42; the last 32 kept.
    let (page, more) = l.s.history(&id, None, 10).unwrap();
    assert!(more);
    let versions: Vec<u64> = page.iter().map(|e| e.version).collect();
    assert_eq!(versions, (33..=42).rev().collect::<Vec<_>>());
    assert_eq!(page[0].change, Change::Reserved { hold: hold.id });
    assert_eq!(
        (page[0].qty.get(), page[0].reserved.get(), page[0].delta),
        (40, 5, 0)
    );
    assert_eq!(page[1].key.as_ref().map(|k| k.as_str()), Some("k-last"));
    assert_eq!((page[1].change, page[1].delta), (Change::Adjusted, 1));
    let mut all = Vec::new();
    let mut before = None;
    loop {
        let (page, more) = l.s.history(&id, before, 10).unwrap();
        before = page.last().map(|e| e.version);
        all.extend(page);
        if !more {
            break;
        }
    }
    assert_eq!(all.len(), HISTORY_PER_ITEM_MAX);
    assert_eq!(
        all.last().unwrap().version,
        42 - HISTORY_PER_ITEM_MAX as u64 + 1
    );
    assert_eq!(
        observe(&l.replayed()),
        observe(&l.s),
        "replay rebuilds history and keys"
    );
    l.run(Command::Delete { id }, ctx(4 * SEC, 0)).unwrap();
    assert_eq!(l.s.history(&id, None, 10), None);
    assert_eq!(l.s.holds().count(), 0);
    assert_eq!(l.s.next_hold_expiry(), None);
}

/// Goal: a snapshot's holds and histories restore to the same state, and
/// ones that do not fit the items are refused. Method: restore a copy;
/// then restore with a hold dropped (reserved no longer matches).
#[test]
fn snapshot_extra_round_trips_and_mismatches_are_refused() {
    let mut l = Live::default();
    let id = l.create(10, 1);
    l.reserve(id, 3, 60 * SEC, 0, 100).unwrap();
    l.reserve(id, 2, 60 * SEC, 0, 101).unwrap();
    let (items, keys) = l.s.snapshot_view();
    let mut restored = OwnerState::from_items(items.clone(), keys.clone()).unwrap();
    restored.restore_extra(l.s.snapshot_extra()).unwrap();
    restored.check_invariants().unwrap();
    assert_eq!(observe(&restored), observe(&l.s));
    let mut bad = l.s.snapshot_extra();
    bad.holds.pop();
    let mut state = OwnerState::from_items(items, keys).unwrap();
    assert!(state.restore_extra(bad).is_err());
}

/// Goal: replay refuses hold events that do not fit the state. Method:
/// a commit of an unknown hold, an expiry before the hold's time, and a
/// hold larger than what is available.
#[test]
fn check_event_refuses_hold_events_that_do_not_fit() {
    let mut l = Live::default();
    let id = l.create(10, 1);
    let hold = l.reserve(id, 4, 60 * SEC, 0, 100).unwrap();
    let s = &l.s;
    let unknown = Event::HoldReleased {
        hold: Uuid::from_u128(5),
        version: 3,
        at: 0,
    };
    let early = Event::HoldsExpired {
        holds: vec![hold.id],
        at: 60 * SEC - 1,
    };
    let too_big = Event::Reserved {
        hold: Hold {
            id: Uuid::from_u128(7),
            item: id,
            qty: qty(7),
            created_at: 0,
            expires_at: 1,
        },
        version: 3,
    };
    for e in [unknown, early, too_big] {
        assert!(s.check_event(&e).is_err(), "{e:?}");
    }
}

// ---- reasons and references; holds inside transactions ----------------------

fn note(reason: Option<&str>, reference: Option<&str>) -> Note {
    Note::new(
        reason.map(|r| Reason::new(r).unwrap()),
        reference.map(|r| Reference::new(r).unwrap()),
    )
}

fn notes_of(s: &OwnerState, id: Uuid) -> Vec<(u64, Option<String>, Option<String>)> {
    let (entries, _) = s.history(&id, None, 100).unwrap();
    entries
        .iter()
        .map(|e| {
            (
                e.version,
                e.note.reason().map(|r| r.as_str().to_owned()),
                e.note.reference().map(|r| r.as_str().to_owned()),
            )
        })
        .collect()
}

fn tx(ops: Vec<TxOp>) -> Command {
    Command::Transact { ops }
}

/// Goal: every qty-changing write keeps its reason and reference in the
/// item's history, and the event carries them, so replay gives the same
/// history. Method: create, PUT, PATCH, a transaction op and a commit, each
/// with a different note; the history (newest first) shows each on its own
/// version, holds placed show none; the replayed state is equal.
#[test]
fn notes_reach_the_history_of_every_qty_change_and_survive_replay() {
    let mut l = Live::default();
    let create = Command::Create {
        name: ItemName::new("milk").unwrap(),
        qty: qty(10),
        note: note(Some("restock"), Some("po-1")),
    };
    let Ok(Outcome::Created(item)) = l.run(create, ctx(SEC, 1)) else {
        panic!()
    };
    let id = item.id;
    let put = Command::Replace {
        id,
        name: ItemName::new("milk").unwrap(),
        qty: qty(12),
        if_match: None,
        note: note(Some("correction"), None),
    };
    l.run(put, ctx(2 * SEC, 0)).unwrap();
    let patch = Command::Adjust {
        id,
        delta: Delta::new(-1).unwrap(),
        if_match: None,
        note: note(Some("sale"), Some("order 1")),
    };
    l.run_keyed(patch, ctx(3 * SEC, 0), Some("k-1")).unwrap();
    let op = TxOp::Adjust {
        item: id,
        delta: Delta::new(-2).unwrap(),
        note: note(None, Some("order 2")),
    };
    l.run(tx(vec![op]), ctx(4 * SEC, 0)).unwrap();
    let hold = l.reserve(id, 3, 60 * SEC, 5 * SEC, 50).unwrap();
    let commit = Command::CommitHold {
        hold: hold.id,
        note: note(Some("sale"), Some("order 3")),
    };
    l.run(commit, ctx(6 * SEC, 0)).unwrap();
    let s = |x: &str| Some(x.to_owned());
    let want = vec![
        (6, s("sale"), s("order 3")),
        (5, None, None),
        (4, None, s("order 2")),
        (3, s("sale"), s("order 1")),
        (2, s("correction"), None),
        (1, s("restock"), s("po-1")),
    ];
    assert_eq!(notes_of(&l.s, id), want);
    let (entries, _) = l.s.history(&id, None, 100).unwrap();
    assert_eq!(entries[3].key.as_ref().map(|k| k.as_str()), Some("k-1"));
    let replayed = l.replayed();
    assert_eq!(notes_of(&replayed, id), want);
    assert_eq!(observe(&replayed), observe(&l.s));
}

/// Goal: a transaction reserves, commits and releases holds atomically
/// with its deltas, each touched item once at version + 1, the new holds in
/// op order in the outcome with ids fixed in the event. Method: two items;
/// one transaction reserves 2 of A and 3 of B, adjusts A; a second commits
/// A's hold with a note and releases B's; check qty, reserved, versions,
/// hold ids, the history and that replay gives the same state.
#[test]
fn transactions_reserve_commit_and_release_atomically() {
    let mut l = Live::default();
    let a = l.create(10, 1);
    let b = l.create(5, 2);
    let base = 0xAB00_u128 << 64;
    let first = tx(vec![
        TxOp::Reserve {
            item: a,
            terms: terms(2, 30 * SEC),
        },
        TxOp::Reserve {
            item: b,
            terms: terms(3, 60 * SEC),
        },
        TxOp::adjust(a, Delta::new(1).unwrap()),
    ]);
    let Ok(Outcome::Transacted(items, holds)) = l.run(first, ctx(10 * SEC, base)) else {
        panic!()
    };
    let ids: Vec<Uuid> = holds.iter().map(|h| h.id).collect();
    assert_eq!(
        ids,
        vec![
            tx_hold_id(Uuid::from_u128(base), 0),
            tx_hold_id(Uuid::from_u128(base), 1)
        ]
    );
    assert_ne!(ids[0], ids[1]);
    assert_eq!(
        (holds[0].item, holds[0].qty.get(), holds[0].expires_at),
        (a, 2, 40 * SEC)
    );
    assert_eq!(holds[1].expires_at, 70 * SEC, "expiry as for single holds");
    let seen: Vec<(Uuid, u64, u64, u64)> = items
        .iter()
        .map(|i| (i.id, i.qty.get(), i.reserved.get(), i.version))
        .collect();
    assert_eq!(seen, vec![(a, 11, 2, 2), (b, 5, 3, 2)]);
    assert_eq!(l.s.next_hold_expiry(), Some(40 * SEC));

    let second = tx(vec![
        TxOp::Commit {
            hold: ids[0],
            note: note(Some("sale"), Some("order-9")),
        },
        TxOp::Release { hold: ids[1] },
    ]);
    let Ok(Outcome::Transacted(items, holds)) = l.run(second, ctx(11 * SEC, 0)) else {
        panic!()
    };
    assert!(holds.is_empty());
    let seen: Vec<(Uuid, u64, u64, u64)> = items
        .iter()
        .map(|i| (i.id, i.qty.get(), i.reserved.get(), i.version))
        .collect();
    assert_eq!(seen, vec![(a, 9, 0, 3), (b, 5, 0, 3)]);
    assert!(l.s.hold(&ids[0]).is_none() && l.s.hold(&ids[1]).is_none());
    let (entries, _) = l.s.history(&a, None, 1).unwrap();
    assert_eq!(
        (entries[0].change, entries[0].delta, entries[0].note.clone()),
        (Change::Transacted, -2, note(Some("sale"), Some("order-9")))
    );
    assert_eq!(observe(&l.replayed()), observe(&l.s));
}

/// Goal: a hold placed in a transaction expires exactly like a single one,
/// from the time in the log. Method: reserve in a transaction, expire at
/// its time: released, and replay agrees.
#[test]
fn holds_from_transactions_expire_like_single_holds() {
    let mut l = Live::default();
    let a = l.create(4, 1);
    let op = TxOp::Reserve {
        item: a,
        terms: terms(4, 5 * SEC),
    };
    l.run(tx(vec![op]), ctx(SEC, 77)).unwrap();
    assert_eq!(l.s.get(&a).unwrap().available(), 0);
    l.run(Command::ExpireHolds, ctx(6 * SEC - 1, 0)).unwrap();
    assert_eq!(l.s.get(&a).unwrap().reserved.get(), 4, "not due yet");
    l.run(Command::ExpireHolds, ctx(6 * SEC, 0)).unwrap();
    assert_eq!(l.s.get(&a).unwrap().reserved.get(), 0);
    assert_eq!(observe(&l.replayed()), observe(&l.s));
}

/// Goal: any refusal refuses the whole transaction with the failing op's
/// index, and nothing changes (`Live::run` checks that). Method: one
/// refusal of each kind after ops that would have succeeded.
#[test]
fn a_refused_op_refuses_the_whole_transaction_with_its_index() {
    let mut l = Live::default();
    let a = l.create(5, 1);
    let b = l.create(5, 2);
    let open = l.reserve(b, 1, 60 * SEC, SEC, 90).unwrap();
    let reserve = |item, q| TxOp::Reserve {
        item,
        terms: terms(q, SEC),
    };
    let gone = Uuid::from_u128(12345);
    let cases: Vec<(Vec<TxOp>, Rejection)> = vec![
        (
            vec![reserve(a, 2), reserve(a, 4)],
            Rejection::InsufficientAvailable {
                available: 3,
                op_index: Some(1),
            },
        ),
        (
            vec![reserve(a, 5), TxOp::adjust(a, Delta::new(-1).unwrap())],
            Rejection::InsufficientAvailable {
                available: 0,
                op_index: Some(1),
            },
        ),
        (
            vec![
                reserve(a, 1),
                TxOp::Commit {
                    hold: gone,
                    note: Note::NONE,
                },
            ],
            Rejection::HoldNotFound { op_index: Some(1) },
        ),
        (
            vec![
                TxOp::Release { hold: open.id },
                TxOp::Release { hold: open.id },
            ],
            Rejection::HoldNotFound { op_index: Some(1) },
        ),
        (
            vec![
                TxOp::Commit {
                    hold: open.id,
                    note: Note::NONE,
                },
                TxOp::Release { hold: open.id },
            ],
            Rejection::HoldNotFound { op_index: Some(1) },
        ),
        (
            vec![reserve(a, 1), reserve(Uuid::from_u128(999), 1)],
            Rejection::NotFound { op_index: Some(1) },
        ),
        (
            vec![
                TxOp::adjust(a, Delta::new(1).unwrap()),
                TxOp::Adjust {
                    item: a,
                    delta: Delta::new(1).unwrap(),
                    note: note(Some("sale"), None),
                },
            ],
            Rejection::NoteConflict { op_index: Some(1) },
        ),
        (
            vec![
                TxOp::Adjust {
                    item: b,
                    delta: Delta::new(1).unwrap(),
                    note: note(Some("sale"), None),
                },
                TxOp::Commit {
                    hold: open.id,
                    note: note(Some("sale"), Some("o-1")),
                },
            ],
            Rejection::NoteConflict { op_index: Some(1) },
        ),
    ];
    for (ops, want) in cases {
        assert_eq!(
            l.run(tx(ops.clone()), ctx(2 * SEC, 500)),
            Err(want),
            "{ops:?}"
        );
    }
    // Equal notes on one item, and different notes on different items, are
    // fine; reserve and release ops carry none and do not conflict.
    let ok = vec![
        TxOp::Adjust {
            item: a,
            delta: Delta::new(1).unwrap(),
            note: note(Some("restock"), None),
        },
        reserve(a, 1),
        TxOp::Adjust {
            item: a,
            delta: Delta::new(1).unwrap(),
            note: note(Some("restock"), None),
        },
        TxOp::Adjust {
            item: b,
            delta: Delta::new(-1).unwrap(),
            note: note(Some("sale"), None),
        },
    ];
    l.run(tx(ok), ctx(3 * SEC, 600)).unwrap();
}

/// Goal: the hold bounds hold inside a transaction, counting the holds it
/// places and removes. Method: an item with HOLDS_PER_ITEM_MAX - 1 holds:
/// two reserve ops are refused at the second (index 1); releasing one first
/// makes room for both.
#[test]
fn transactions_respect_the_hold_bounds() {
    let mut l = Live::default();
    let a = l.create(1000, 1);
    let mut open = Vec::new();
    for n in 0..HOLDS_PER_ITEM_MAX - 1 {
        open.push(l.reserve(a, 1, 60 * SEC, SEC, 1000 + n as u128).unwrap());
    }
    let reserve = TxOp::Reserve {
        item: a,
        terms: terms(1, SEC),
    };
    let two = vec![reserve.clone(), reserve.clone()];
    assert_eq!(
        l.run(tx(two), ctx(2 * SEC, 1 << 40)),
        Err(Rejection::HoldLimit { op_index: Some(1) })
    );
    let room = vec![TxOp::Release { hold: open[0].id }, reserve.clone(), reserve];
    let Ok(Outcome::Transacted(_, holds)) = l.run(tx(room), ctx(2 * SEC, 1 << 41)) else {
        panic!()
    };
    assert_eq!(holds.len(), 2);
    assert_eq!(l.s.holds().count(), HOLDS_PER_ITEM_MAX);
}

/// Goal: replay refuses a transaction event that does not fit the state.
/// Method: events that remove a missing hold, remove one twice, place a
/// hold on an item they do not change, or over-reserve, are refused.
#[test]
fn check_event_refuses_transactions_that_do_not_fit() {
    let mut l = Live::default();
    let a = l.create(3, 1);
    let h = l.reserve(a, 2, 60 * SEC, SEC, 50).unwrap();
    let v = l.s.get(&a).unwrap().version;
    let change = |q: u64| {
        TxChange::from(QtyVersion {
            id: a,
            qty: qty(q as i64),
            version: v + 1,
        })
    };
    let hold = |id: u128, item: Uuid, q: i64| Hold {
        id: Uuid::from_u128(id),
        item,
        qty: qty(q),
        created_at: SEC,
        expires_at: 2 * SEC,
    };
    let ev =
        |changes: Vec<TxChange>, placed: Vec<Hold>, committed: Vec<Uuid>, released: Vec<Uuid>| {
            Event::Transacted {
                changes,
                placed,
                committed,
                released,
                at: SEC,
            }
        };
    let bad = [
        ev(vec![change(3)], vec![], vec![Uuid::from_u128(7)], vec![]),
        ev(vec![change(1)], vec![], vec![h.id], vec![h.id]),
        ev(vec![], vec![hold(60, a, 1)], vec![], vec![]),
        ev(vec![change(3)], vec![hold(60, a, 2)], vec![], vec![]),
        ev(vec![change(3)], vec![hold(50, a, 1)], vec![h.id], vec![]),
        ev(vec![change(1)], vec![], vec![], vec![]),
    ];
    for e in bad {
        assert!(l.s.check_event(&e).is_err(), "{e:?} must be refused");
    }
    let good = ev(vec![change(1)], vec![hold(60, a, 1)], vec![h.id], vec![]);
    l.s.check_event(&good).unwrap();
}

/// Goal: the memory bound the docs state for history holds: an entry is
/// at most 88 bytes inline (DESIGN.md "Reservations, expiry and history"),
/// of which the note is one pointer. Method: `size_of`.
#[test]
fn a_history_entry_stays_small() {
    let size = std::mem::size_of::<HistoryEntry>();
    assert!(size <= 88, "HistoryEntry is {size} bytes");
    assert_eq!(std::mem::size_of::<Note>(), 8);
}
