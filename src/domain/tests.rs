//! Unit tests of the transition function: each rule in its positive and its
//! negative space. Every rejection is followed by a check that the state is
//! exactly as before (`fingerprint` compares all items).

use super::*;

fn ctx(n: u128) -> Ctx {
    Ctx {
        now: 1_000 + n as i64,
        new_id: Uuid::from_u128(n),
    }
}

fn name(s: &str) -> ItemName {
    ItemName::new(s).unwrap()
}

fn qty(n: i64) -> Qty {
    Qty::new(n).unwrap()
}

fn delta(n: i64) -> Delta {
    Delta::new(n).unwrap()
}

/// Apply a command the way the actor does (`OwnerState::apply`, unkeyed).
fn run(s: &mut OwnerState, cmd: Command, c: Ctx) -> Result<Outcome, Rejection> {
    s.apply(&cmd, c, None).result
}

fn create(s: &mut OwnerState, n: &str, q: i64, id: u128) -> Item {
    match run(
        s,
        Command::Create {
            name: name(n),
            qty: qty(q),
            note: crate::domain::Note::NONE,
        },
        ctx(id),
    ) {
        Ok(Outcome::Created(item)) => item,
        other => panic!("create failed: {other:?}"),
    }
}

/// Everything observable about a state, sorted, to compare before/after.
fn observe(s: &OwnerState) -> Vec<Item> {
    let mut items: Vec<Item> = s.items().cloned().collect();
    items.sort_by_key(|i| i.id);
    items
}

/// Decide `cmd`, expect `want`, and prove the state did not change.
fn assert_rejected(s: &OwnerState, cmd: Command, want: Rejection) {
    let before = observe(s);
    let got = s.decide(&cmd, ctx(999));
    assert_eq!(got, Err(want));
    assert_eq!(
        observe(s),
        before,
        "a rejection must leave the state untouched"
    );
}

#[test]
fn create_starts_at_version_one_with_times_from_ctx() {
    let mut s = OwnerState::default();
    let item = create(&mut s, " milk ", 3, 7);
    assert_eq!(item.id, Uuid::from_u128(7));
    assert_eq!(item.name.as_str(), "milk");
    assert_eq!(item.qty.get(), 3);
    assert_eq!(item.version, 1);
    assert_eq!(item.created_at, 1_007);
    assert_eq!(item.updated_at, 1_007);
    assert_eq!(s.get(&item.id), Some(&item));
}

#[test]
fn names_are_unique_per_owner_case_insensitively() {
    let mut s = OwnerState::default();
    create(&mut s, "milk", 1, 1);
    for clash in ["milk", "MILK", " Milk "] {
        assert_rejected(
            &s,
            Command::Create {
                name: name(clash),
                qty: qty(0),
                note: crate::domain::Note::NONE,
            },
            Rejection::NameTaken,
        );
    }
    create(&mut s, "milk2", 1, 2);
    let mut other_owner = OwnerState::default();
    create(&mut other_owner, "milk", 1, 3);
}

#[test]
fn adjust_applies_delta_and_bumps_version() {
    let mut s = OwnerState::default();
    let item = create(&mut s, "milk", 3, 1);
    let cmd = Command::Adjust {
        id: item.id,
        delta: delta(-3),
        if_match: None,
        note: crate::domain::Note::NONE,
    };
    let Ok(Outcome::Updated(after)) = run(&mut s, cmd, ctx(2)) else {
        panic!()
    };
    assert_eq!(after.qty.get(), 0);
    assert_eq!(after.version, 2);
    assert_eq!(after.updated_at, 1_002);
    assert_eq!(after.created_at, item.created_at);
}

#[test]
fn adjust_refuses_to_leave_the_range() {
    let mut s = OwnerState::default();
    let item = create(&mut s, "milk", 3, 1);
    let cmd = |d| Command::Adjust {
        id: item.id,
        delta: delta(d),
        if_match: None,
        note: crate::domain::Note::NONE,
    };
    assert_rejected(&s, cmd(-4), Rejection::QtyBelowZero { op_index: None });
    let top = (QTY_MAX - 3) as i64;
    assert!(
        run(&mut s, cmd(top), ctx(2)).is_ok(),
        "exactly QTY_MAX is allowed"
    );
    assert_rejected(&s, cmd(1), Rejection::QtyOverflow { op_index: None });
}

#[test]
fn missing_items_are_not_found_but_delete_is_idempotent() {
    let mut s = OwnerState::default();
    let ghost = Uuid::from_u128(42);
    let nf = Rejection::NotFound { op_index: None };
    assert_rejected(
        &s,
        Command::Adjust {
            id: ghost,
            delta: delta(1),
            if_match: None,
            note: crate::domain::Note::NONE,
        },
        nf.clone(),
    );
    let replace = Command::Replace {
        id: ghost,
        name: name("x"),
        qty: qty(1),
        if_match: None,
        note: crate::domain::Note::NONE,
    };
    assert_rejected(&s, replace, nf);
    assert_eq!(s.decide(&Command::Delete { id: ghost }, ctx(1)), Ok(None));
    let item = create(&mut s, "milk", 1, 1);
    assert_eq!(
        run(&mut s, Command::Delete { id: item.id }, ctx(2)),
        Ok(Outcome::Deleted)
    );
    assert!(s.get(&item.id).is_none());
    assert_eq!(
        run(&mut s, Command::Delete { id: item.id }, ctx(3)),
        Ok(Outcome::Deleted)
    );
    create(&mut s, "MILK", 1, 4); // the name is free again
}

#[test]
fn replace_keeps_identity_and_checks_names() {
    let mut s = OwnerState::default();
    let milk = create(&mut s, "milk", 1, 1);
    let eggs = create(&mut s, "eggs", 1, 2);
    let to = |n: &str| Command::Replace {
        id: eggs.id,
        name: name(n),
        qty: qty(9),
        if_match: None,
        note: crate::domain::Note::NONE,
    };
    assert_rejected(&s, to("Milk"), Rejection::NameTaken);
    let Ok(Outcome::Updated(after)) = run(&mut s, to("EGGS"), ctx(3)) else {
        panic!()
    };
    assert_eq!(
        after.name.as_str(),
        "EGGS",
        "renaming to itself in another case is fine"
    );
    assert_eq!(
        (after.qty.get(), after.version, after.created_at),
        (9, 2, eggs.created_at)
    );
    let Ok(Outcome::Updated(_)) = run(&mut s, to("bread"), ctx(4)) else {
        panic!()
    };
    create(&mut s, "eggs", 1, 5); // the old name was released
    assert_eq!(s.get(&milk.id).map(|i| i.version), Some(1));
}

#[test]
fn preconditions_compare_versions() {
    let mut s = OwnerState::default();
    let item = create(&mut s, "milk", 5, 1);
    let adjust = |p| Command::Adjust {
        id: item.id,
        delta: delta(1),
        if_match: Some(p),
        note: crate::domain::Note::NONE,
    };
    assert_rejected(
        &s,
        adjust(Precondition::OneOf(vec![2])),
        Rejection::VersionMismatch { current: 1 },
    );
    assert_rejected(
        &s,
        adjust(Precondition::OneOf(vec![])),
        Rejection::VersionMismatch { current: 1 },
    );
    assert!(run(&mut s, adjust(Precondition::OneOf(vec![3, 1])), ctx(2)).is_ok());
    assert!(run(&mut s, adjust(Precondition::Any), ctx(3)).is_ok());
    let replace = Command::Replace {
        id: item.id,
        name: name("milk"),
        qty: qty(0),
        if_match: Some(Precondition::OneOf(vec![1])),
        note: crate::domain::Note::NONE,
    };
    assert_rejected(&s, replace, Rejection::VersionMismatch { current: 3 });
}

#[test]
fn transactions_apply_in_order_all_or_nothing() {
    let mut s = OwnerState::default();
    let a = create(&mut s, "a", 1, 1);
    let b = create(&mut s, "b", 0, 2);
    let op = |id, d| TxOp::adjust(id, delta(d));
    // -1 on `a` only works because +1 came first: ops see the previous ones.
    let ok = Command::Transact {
        ops: vec![op(a.id, 1), op(a.id, -2), op(b.id, 5), op(a.id, 3)],
    };
    let Ok(Outcome::Transacted(items, _)) = run(&mut s, ok, ctx(3)) else {
        panic!()
    };
    let got: Vec<_> = items
        .iter()
        .map(|i| (i.id, i.qty.get(), i.version))
        .collect();
    assert_eq!(
        got,
        vec![(a.id, 3, 2), (b.id, 5, 2)],
        "each item once, first-appearance order"
    );

    let ghost = Uuid::from_u128(99);
    let bad = |ops| Command::Transact { ops };
    assert_rejected(
        &s,
        bad(vec![op(a.id, 1), op(ghost, 1)]),
        Rejection::NotFound { op_index: Some(1) },
    );
    assert_rejected(
        &s,
        bad(vec![op(b.id, -5), op(b.id, -1)]),
        Rejection::QtyBelowZero { op_index: Some(1) },
    );
    let top = QTY_MAX as i64;
    assert_rejected(
        &s,
        bad(vec![op(a.id, -3), op(a.id, top), op(a.id, 1)]),
        Rejection::QtyOverflow { op_index: Some(2) },
    );
    assert_rejected(
        &s,
        bad(vec![op(a.id, -4)]),
        Rejection::QtyBelowZero { op_index: Some(0) },
    );
}

#[test]
fn list_pages_in_id_order() {
    let mut s = OwnerState::default();
    for i in (1..=5u128).rev() {
        create(&mut s, &format!("n{i}"), 0, i);
    }
    let (page, more) = s.list(None, 2);
    assert_eq!(
        page.iter().map(|i| i.id.as_u128()).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert!(more);
    let (page, more) = s.list(Some(Uuid::from_u128(2)), 3);
    assert_eq!(
        page.iter().map(|i| i.id.as_u128()).collect::<Vec<_>>(),
        vec![3, 4, 5]
    );
    assert!(!more);
    let (page, more) = s.list(Some(Uuid::from_u128(5)), 3);
    assert!(page.is_empty());
    assert!(!more);
}

#[test]
fn from_items_rebuilds_indexes() {
    let mut s = OwnerState::default();
    create(&mut s, "milk", 1, 1);
    create(&mut s, "eggs", 2, 2);
    let (items, keys) = s.snapshot_view();
    let rebuilt = OwnerState::from_items(items.clone(), keys).unwrap();
    assert_eq!(observe(&rebuilt), observe(&s));
    assert_rejected(
        &rebuilt,
        Command::Create {
            name: name("MILK"),
            qty: qty(0),
            note: crate::domain::Note::NONE,
        },
        Rejection::NameTaken,
    );
    let mut dup = items.clone();
    dup[1].name = dup[0].name.clone();
    assert!(OwnerState::from_items(dup, Default::default()).is_err());
}

#[test]
fn check_event_accepts_what_decide_produces_and_refuses_what_evolve_would_panic_on() {
    // Goal: replay can refuse a misfit event instead of panicking in evolve.
    // Method: every event decide produces passes check_event; hand-made
    // events with a missing item, a skipped version, a taken name, a reused
    // id or a doubly-changed item are refused.
    let mut s = OwnerState::default();
    let a = create(&mut s, "milk", 1, 1);
    let b = create(&mut s, "eggs", 2, 2);
    let cmds = [
        Command::Adjust {
            id: a.id,
            delta: delta(2),
            if_match: None,
            note: crate::domain::Note::NONE,
        },
        Command::Replace {
            id: b.id,
            name: name("Eggs"),
            qty: qty(5),
            if_match: None,
            note: crate::domain::Note::NONE,
        },
        Command::Transact {
            ops: vec![TxOp::adjust(a.id, delta(1)), TxOp::adjust(b.id, delta(-1))],
        },
        Command::Create {
            name: name("flour"),
            qty: qty(0),
            note: crate::domain::Note::NONE,
        },
        Command::Delete { id: a.id },
    ];
    for (n, cmd) in cmds.iter().enumerate() {
        let ev = s.decide(cmd, ctx(10 + n as u128)).unwrap().unwrap();
        assert_eq!(s.check_event(&ev), Ok(()), "{ev:?}");
        s.evolve(&ev);
    }
    let b_now = s.get(&b.id).unwrap().clone();
    let missing = Uuid::from_u128(99);
    let bad = [
        Event::Deleted { id: missing },
        Event::QtySet {
            change: QtyVersion {
                id: b.id,
                qty: qty(1),
                version: b_now.version + 2,
            },
            at: 0,
            note: crate::domain::Note::NONE,
        },
        Event::Created(
            Item {
                id: Uuid::from_u128(50),
                ..b_now.clone()
            },
            crate::domain::Note::NONE,
        ),
        Event::Created(
            Item {
                name: name("new"),
                ..b_now.clone()
            },
            crate::domain::Note::NONE,
        ),
        Event::Replaced(
            Item {
                id: missing,
                ..b_now.clone()
            },
            crate::domain::Note::NONE,
        ),
        Event::Transacted {
            changes: vec![
                QtyVersion {
                    id: b.id,
                    qty: qty(1),
                    version: b_now.version + 1,
                }
                .into(),
                QtyVersion {
                    id: b.id,
                    qty: qty(2),
                    version: b_now.version + 1,
                }
                .into(),
            ],
            placed: vec![],
            committed: vec![],
            released: vec![],
            at: 0,
        },
    ];
    for ev in bad {
        assert!(s.check_event(&ev).is_err(), "{ev:?} must be refused");
    }
}
