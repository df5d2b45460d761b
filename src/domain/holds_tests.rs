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
            qty: qty(q),
            ttl,
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
