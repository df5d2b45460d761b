//! The pure state machine of one owner's namespace: `S' = f(S, input)`.
//!
//! A transition is split in two, the way event-sourced systems do it:
//! - [`OwnerState::decide`] takes `&self` and a [`Command`] and returns either
//!   an [`Event`] (the facts to record, with every value fixed: ids, times,
//!   resulting quantities and versions) or a [`Rejection`]. It cannot change
//!   the state, so a rejected command leaves the state untouched by
//!   construction, not by care.
//! - [`OwnerState::evolve`] applies an accepted event. It is what the actor
//!   runs after `decide`, and what recovery runs when it replays the log, so
//!   live and replayed states cannot drift apart.
//!
//! No tokio, no I/O, no clock: the caller passes the time and the new id in
//! [`Ctx`]. This is the place for every business rule.

mod holds;
pub mod idempotency;
mod types;

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

pub use holds::*;

pub use types::*;
use uuid::Uuid;

/// Most items one owner may hold. The per-owner maps are in memory; this
/// bounds one namespace at a few GiB.
pub const ITEMS_PER_OWNER_MAX: usize = 1 << 24;
/// Ops in one transaction, 1..=1000 (API.md).
pub const TX_OPS_MAX: usize = 1000;

/// An item as the API shows it. `version` starts at 1 and grows by one on
/// every change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub id: Uuid,
    pub name: ItemName,
    pub qty: Qty,
    /// Units held by open reservations: the sum of the item's holds, never
    /// above `qty`. `available = qty - reserved`.
    pub reserved: Qty,
    pub version: u64,
    pub created_at: Micros,
    pub updated_at: Micros,
}

impl Item {
    /// `qty - reserved`: what a new hold or a decrease may take.
    pub fn available(&self) -> u64 {
        self.qty.get() - self.reserved.get()
    }
}

/// `If-Match` as the domain sees it: `*` (any current version) or a list of
/// versions, one of which must be current. An empty list never matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    Any,
    OneOf(Vec<u64>),
}

impl Precondition {
    fn holds(&self, version: u64) -> bool {
        match self {
            Precondition::Any => true,
            Precondition::OneOf(v) => v.contains(&version),
        }
    }
}

/// One op of a transaction. Ops are applied in order against a working
/// copy; each sees the ones before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxOp {
    /// Add `delta` to the item's qty.
    Adjust {
        item: Uuid,
        delta: Delta,
        note: Note,
    },
    /// Hold units of `item` on `terms`, as `Command::Reserve` does; the
    /// n-th reserve op's hold id is `tx_hold_id(Ctx::new_id, n)`.
    Reserve { item: Uuid, terms: HoldTerms },
    /// Commit an open hold, as `Command::CommitHold` does.
    Commit { hold: Uuid, note: Note },
    /// Release an open hold. Unlike `Command::ReleaseHold`, a hold that is
    /// not open refuses the transaction (the client asked for a change it
    /// cannot get atomically).
    Release { hold: Uuid },
}

impl TxOp {
    /// A plain `{item, delta}` op without a note.
    pub fn adjust(item: Uuid, delta: Delta) -> TxOp {
        TxOp::Adjust {
            item,
            delta,
            note: Note::NONE,
        }
    }

    /// The note of an op that changes qty (adjust, commit).
    fn note(&self) -> Option<&Note> {
        match self {
            TxOp::Adjust { note, .. } | TxOp::Commit { note, .. } => Some(note),
            TxOp::Reserve { .. } | TxOp::Release { .. } => None,
        }
    }
}

/// The id of the `n`-th hold a transaction places (0-based, in op order):
/// the actor's fresh UUID v7 with `n` xor-ed into its random low bits, so a
/// transaction needs one fresh id however many holds it places, and the
/// ids are fixed in its event.
pub fn tx_hold_id(base: Uuid, n: usize) -> Uuid {
    assert!(n < TX_OPS_MAX, "at most TX_OPS_MAX holds per transaction");
    Uuid::from_u128(base.as_u128() ^ n as u128)
}

/// A request to change the state. Inputs are already valid values; what is
/// left to decide depends on the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Create {
        name: ItemName,
        qty: Qty,
        note: Note,
    },
    Replace {
        id: Uuid,
        name: ItemName,
        qty: Qty,
        if_match: Option<Precondition>,
        note: Note,
    },
    Adjust {
        id: Uuid,
        delta: Delta,
        if_match: Option<Precondition>,
        note: Note,
    },
    Delete {
        id: Uuid,
    },
    /// 1..=TX_OPS_MAX ops, applied in order, all or nothing.
    Transact {
        ops: Vec<TxOp>,
    },
    /// Hold units of `item` on `terms` (qty ≥ 1, a bounded ttl); the
    /// hold's id is `Ctx::new_id`.
    Reserve {
        item: Uuid,
        terms: HoldTerms,
    },
    /// Turn a hold into a decrease: qty and reserved both fall by its qty.
    CommitHold {
        hold: Uuid,
        note: Note,
    },
    /// Drop a hold (accepted without an event when it is already gone).
    ReleaseHold {
        hold: Uuid,
    },
    /// Release up to `HOLD_EXPIRE_PER_STEP` holds whose expiry is at or
    /// before `Ctx::now` (the actor's own message; never from a client).
    ExpireHolds,
}

/// What the caller supplies so that `decide` stays pure.
#[derive(Debug, Clone, Copy)]
pub struct Ctx {
    pub now: Micros,
    /// The id a `Create` or `Reserve` gets (UUID v7 from the actor), and
    /// the base of the hold ids of a transaction with reserve ops
    /// (`tx_hold_id`). Other commands ignore it, so the actor passes the
    /// nil id for them and skips generating one.
    pub new_id: Uuid,
}

/// A quantity and version after a change, as recorded in events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QtyVersion {
    pub id: Uuid,
    pub qty: Qty,
    pub version: u64,
}

/// One item's net change in a transaction, with the note of its
/// qty-changing ops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxChange {
    pub change: QtyVersion,
    pub note: Note,
}

impl From<QtyVersion> for TxChange {
    /// A change without a note.
    fn from(change: QtyVersion) -> Self {
        TxChange {
            change,
            note: Note::NONE,
        }
    }
}

/// The facts of an accepted transition. Every value is final, so replaying an
/// event needs no clock, no randomness and no checks. The `Note` of a
/// qty-changing event is the request's reason and reference; it goes into
/// the items' history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Created(Item, Note),
    Replaced(Item, Note),
    QtySet {
        change: QtyVersion,
        at: Micros,
        note: Note,
    },
    Deleted {
        id: Uuid,
    },
    /// A transaction's net effect: each touched item once, in order of first
    /// appearance, each with version + 1 (its qty after; its reserved
    /// follows from the holds); the holds it placed (in op order), committed
    /// (their qty left the item's qty and reserved) and released.
    Transacted {
        changes: Vec<TxChange>,
        placed: Vec<Hold>,
        committed: Vec<Uuid>,
        released: Vec<Uuid>,
        at: Micros,
    },
    /// A hold was placed; its item is at `version` (reserved grew by
    /// `hold.qty`) as of `hold.created_at`.
    Reserved {
        hold: Hold,
        version: u64,
    },
    /// A hold became a decrease: `change` is the item's qty and version
    /// after it (reserved fell by the hold's qty).
    HoldCommitted {
        hold: Uuid,
        change: QtyVersion,
        at: Micros,
        note: Note,
    },
    /// A hold was released by the client; its item is at `version`.
    HoldReleased {
        hold: Uuid,
        version: u64,
        at: Micros,
    },
    /// Holds released by expiry, in order, at `at` (the actor's clock when
    /// it decided, stored so replay never reads a clock). Each release
    /// advances its item's version by one.
    HoldsExpired {
        holds: Vec<Uuid>,
        at: Micros,
    },
}

/// The answer to an accepted command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Created(Item),
    Updated(Item),
    Deleted,
    /// Each touched item once (order of first appearance), and the holds
    /// the transaction placed, in op order.
    Transacted(Vec<Item>, Vec<Hold>),
    /// A new hold, and its item after it.
    Reserved(Hold, Item),
}

/// The idempotency key a request came with, and when its record expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyStamp {
    pub key: idempotency::IdemKey,
    pub fingerprint: idempotency::Fingerprint,
    pub expires_at: Micros,
}

/// What [`OwnerState::apply`] did: the event to log (none for a rejection
/// or deleting a missing item), the answer, and the key record to log with
/// the event (already stored in the key table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub event: Option<Event>,
    pub result: idempotency::StoredResponse,
    pub key: Option<idempotency::KeyRecord>,
}

impl Applied {
    /// Whether there is anything to write to the log.
    pub fn is_logged(&self) -> bool {
        self.event.is_some() || self.key.is_some()
    }
}

/// Why a command was refused. `op_index` is set for transaction ops.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("item not found")]
    NotFound { op_index: Option<u32> },
    #[error("an item with this name already exists")]
    NameTaken,
    #[error("qty cannot go below 0")]
    QtyBelowZero { op_index: Option<u32> },
    #[error("qty cannot exceed {QTY_MAX}")]
    QtyOverflow { op_index: Option<u32> },
    #[error("If-Match does not match the current version {current}")]
    VersionMismatch { current: u64 },
    #[error("this owner already holds {ITEMS_PER_OWNER_MAX} items")]
    ItemLimit,
    #[error("only {available} units are available (qty minus reserved)")]
    InsufficientAvailable {
        available: u64,
        op_index: Option<u32>,
    },
    #[error("too many open reservations (at most {HOLDS_PER_ITEM_MAX} per item and {HOLDS_PER_OWNER_MAX} per owner)")]
    HoldLimit { op_index: Option<u32> },
    #[error("reservation not found")]
    HoldNotFound { op_index: Option<u32> },
    #[error("the ops that change one item's qty in a transaction must carry the same reason and reference")]
    NoteConflict { op_index: Option<u32> },
}

/// One owner's namespace: its items, the indexes that keep names unique and
/// listing stable, and its idempotency keys.
#[derive(Debug, Clone, Default)]
pub struct OwnerState {
    items: HashMap<Uuid, Item>,
    /// Case-folded name → id: uniqueness per owner.
    names: HashMap<NameKey, Uuid>,
    /// Ids in order: the stable listing order (UUID v7, so creation order).
    order: BTreeSet<Uuid>,
    pub keys: idempotency::KeyTable,
    /// Open holds by id.
    holds: HashMap<Uuid, Hold>,
    /// (expires_at, hold id): the next holds to expire first.
    hold_expiry: BTreeSet<(Micros, Uuid)>,
    /// (item, hold id): an item's holds.
    holds_by_item: BTreeSet<(Uuid, Uuid)>,
    /// Each item's last `HISTORY_PER_ITEM_MAX` transitions, oldest first.
    history: HashMap<Uuid, VecDeque<HistoryEntry>>,
}

impl OwnerState {
    pub fn get(&self, id: &Uuid) -> Option<&Item> {
        self.items.get(id)
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Items after `after` (exclusive) in id order, at most `limit`, and
    /// whether more follow.
    pub fn list(&self, after: Option<Uuid>, limit: usize) -> (Vec<Item>, bool) {
        use std::ops::Bound::{Excluded, Unbounded};
        let lower = after.map_or(Unbounded, Excluded);
        let mut ids = self.order.range((lower, Unbounded));
        let page: Vec<Item> = ids
            .by_ref()
            .take(limit)
            .map(|id| self.items[id].clone())
            .collect();
        let more = ids.next().is_some();
        (page, more)
    }

    /// All items, in no particular order (snapshots).
    pub fn items(&self) -> impl Iterator<Item = &Item> {
        self.items.values()
    }

    /// Decide a command against the current state. Pure: `&self`.
    pub fn decide(&self, cmd: &Command, ctx: Ctx) -> Result<Option<Event>, Rejection> {
        match cmd {
            Command::Create { name, qty, note } => {
                self.decide_create(name, *qty, note, ctx).map(Some)
            }
            Command::Replace {
                id,
                name,
                qty,
                if_match,
                note,
            } => self
                .decide_replace(*id, name, *qty, if_match.as_ref(), note, ctx)
                .map(Some),
            Command::Adjust {
                id,
                delta,
                if_match,
                note,
            } => self
                .decide_adjust(*id, *delta, if_match.as_ref(), note, ctx)
                .map(Some),
            Command::Delete { id } => Ok(self
                .items
                .contains_key(id)
                .then_some(Event::Deleted { id: *id })),
            Command::Transact { ops } => self.decide_transact(ops, ctx).map(Some),
            Command::Reserve { item, terms } => self.decide_reserve(*item, *terms, ctx).map(Some),
            Command::CommitHold { hold, note } => self.decide_commit(*hold, note, ctx).map(Some),
            Command::ReleaseHold { hold } => {
                Ok(self.holds.get(hold).map(|h| Event::HoldReleased {
                    hold: *hold,
                    version: self.items[&h.item].version + 1,
                    at: ctx.now,
                }))
            }
            Command::ExpireHolds => Ok(self.decide_expire(ctx)),
        }
    }

    fn decide_reserve(&self, id: Uuid, terms: HoldTerms, ctx: Ctx) -> Result<Event, Rejection> {
        let (qty, ttl) = (terms.qty(), terms.ttl());
        let item = self.existing(id, None)?;
        if qty.get() > item.available() {
            return Err(Rejection::InsufficientAvailable {
                available: item.available(),
                op_index: None,
            });
        }
        if self.holds.len() >= HOLDS_PER_OWNER_MAX || self.holds_of(id) >= HOLDS_PER_ITEM_MAX {
            return Err(Rejection::HoldLimit { op_index: None });
        }
        assert!(
            !self.holds.contains_key(&ctx.new_id),
            "the actor must supply a fresh hold id"
        );
        Ok(Event::Reserved {
            hold: Hold {
                id: ctx.new_id,
                item: id,
                qty,
                created_at: ctx.now,
                expires_at: ctx.now.saturating_add(ttl),
            },
            version: item.version + 1,
        })
    }

    fn decide_commit(&self, hold: Uuid, note: &Note, ctx: Ctx) -> Result<Event, Rejection> {
        let h = self
            .holds
            .get(&hold)
            .ok_or(Rejection::HoldNotFound { op_index: None })?;
        let item = &self.items[&h.item];
        let change = QtyVersion {
            id: item.id,
            qty: Qty::from_stored(item.qty.get() - h.qty.get()).expect("reserved <= qty"),
            version: item.version + 1,
        };
        Ok(Event::HoldCommitted {
            hold,
            change,
            at: ctx.now,
            note: note.clone(),
        })
    }

    fn decide_expire(&self, ctx: Ctx) -> Option<Event> {
        let holds: Vec<Uuid> = self
            .hold_expiry
            .iter()
            .take_while(|(at, _)| *at <= ctx.now)
            .take(HOLD_EXPIRE_PER_STEP)
            .map(|(_, id)| *id)
            .collect();
        (!holds.is_empty()).then_some(Event::HoldsExpired { holds, at: ctx.now })
    }

    /// Open holds on `item`.
    fn holds_of(&self, item: Uuid) -> usize {
        self.holds_by_item
            .range((item, Uuid::nil())..=(item, Uuid::max()))
            .count()
    }

    /// When the next hold expires, if any (the actor's timer).
    pub fn next_hold_expiry(&self) -> Option<Micros> {
        self.hold_expiry.first().map(|(at, _)| *at)
    }

    /// An open hold.
    pub fn hold(&self, id: &Uuid) -> Option<&Hold> {
        self.holds.get(id)
    }

    /// Open holds, in no particular order (snapshots).
    pub fn holds(&self) -> impl Iterator<Item = &Hold> {
        self.holds.values()
    }

    /// A page of `id`'s history, newest first: entries with a version below
    /// `before` (all when `None`), at most `limit`, and whether more follow.
    /// `None` when the item does not exist.
    pub fn history(
        &self,
        id: &Uuid,
        before: Option<u64>,
        limit: usize,
    ) -> Option<(Vec<HistoryEntry>, bool)> {
        self.items.get(id)?;
        let entries = self.history.get(id);
        let mut older = entries
            .into_iter()
            .flatten()
            .rev()
            .filter(|e| before.is_none_or(|b| e.version < b));
        let page: Vec<HistoryEntry> = older.by_ref().take(limit).cloned().collect();
        let more = older.next().is_some();
        Some((page, more))
    }

    fn decide_create(
        &self,
        name: &ItemName,
        qty: Qty,
        note: &Note,
        ctx: Ctx,
    ) -> Result<Event, Rejection> {
        if self.names.contains_key(&name.unique_key()) {
            return Err(Rejection::NameTaken);
        }
        if self.items.len() >= ITEMS_PER_OWNER_MAX {
            return Err(Rejection::ItemLimit);
        }
        assert!(
            !self.items.contains_key(&ctx.new_id),
            "the actor must supply a fresh id"
        );
        let item = Item {
            id: ctx.new_id,
            name: name.clone(),
            qty,
            reserved: Qty::ZERO,
            version: 1,
            created_at: ctx.now,
            updated_at: ctx.now,
        };
        Ok(Event::Created(item, note.clone()))
    }

    fn decide_replace(
        &self,
        id: Uuid,
        name: &ItemName,
        qty: Qty,
        if_match: Option<&Precondition>,
        note: &Note,
        ctx: Ctx,
    ) -> Result<Event, Rejection> {
        let item = self.existing(id, if_match)?;
        if let Some(holder) = self.names.get(&name.unique_key()) {
            if *holder != id {
                return Err(Rejection::NameTaken);
            }
        }
        check_reserved(item, qty, None)?;
        let replaced = Item {
            id,
            name: name.clone(),
            qty,
            reserved: item.reserved,
            version: item.version + 1,
            created_at: item.created_at,
            updated_at: ctx.now,
        };
        Ok(Event::Replaced(replaced, note.clone()))
    }

    fn decide_adjust(
        &self,
        id: Uuid,
        delta: Delta,
        if_match: Option<&Precondition>,
        note: &Note,
        ctx: Ctx,
    ) -> Result<Event, Rejection> {
        let item = self.existing(id, if_match)?;
        let qty = item
            .qty
            .apply(delta)
            .map_err(|b| bound_rejection(b, None))?;
        check_reserved(item, qty, None)?;
        let change = QtyVersion {
            id,
            qty,
            version: item.version + 1,
        };
        Ok(Event::QtySet {
            change,
            at: ctx.now,
            note: note.clone(),
        })
    }

    fn decide_transact(&self, ops: &[TxOp], ctx: Ctx) -> Result<Event, Rejection> {
        assert!(
            (1..=TX_OPS_MAX).contains(&ops.len()),
            "transport bounds the op count before the domain sees it"
        );
        // Working copy of the touched items, in order of first appearance,
        // and of the holds; the state itself is not touched until every op
        // has passed. Every op keeps `qty >= reserved` of its item.
        struct Work {
            change: QtyVersion,
            reserved: u64,
            holds: usize,
            note: Option<Note>,
        }
        let mut work: Vec<Work> = Vec::new();
        let mut slot_of: HashMap<Uuid, usize> = HashMap::new();
        let mut placed: Vec<Hold> = Vec::new();
        let mut committed: Vec<Uuid> = Vec::new();
        let mut released: Vec<Uuid> = Vec::new();
        let mut gone: HashSet<Uuid> = HashSet::new();
        let mut owner_holds = self.holds.len();
        for (index, op) in ops.iter().enumerate() {
            let op_index = Some(index as u32);
            // The open hold an op names: open before the transaction and
            // not committed or released by an earlier op.
            let open_hold = |hold: &Uuid, gone: &HashSet<Uuid>| {
                self.holds
                    .get(hold)
                    .filter(|_| !gone.contains(hold))
                    .copied()
                    .ok_or(Rejection::HoldNotFound { op_index })
            };
            let item = match op {
                TxOp::Adjust { item, .. } | TxOp::Reserve { item, .. } => *item,
                TxOp::Commit { hold, .. } | TxOp::Release { hold } => open_hold(hold, &gone)?.item,
            };
            let slot = match slot_of.get(&item) {
                Some(&slot) => slot,
                None => {
                    let found = self
                        .items
                        .get(&item)
                        .ok_or(Rejection::NotFound { op_index })?;
                    work.push(Work {
                        change: QtyVersion {
                            id: found.id,
                            qty: found.qty,
                            version: found.version + 1,
                        },
                        reserved: found.reserved.get(),
                        holds: self.holds_of(item),
                        note: None,
                    });
                    slot_of.insert(item, work.len() - 1);
                    work.len() - 1
                }
            };
            let w = &mut work[slot];
            if let Some(note) = op.note() {
                match &w.note {
                    Some(earlier) if earlier != note => {
                        return Err(Rejection::NoteConflict { op_index })
                    }
                    _ => w.note = Some(note.clone()),
                }
            }
            let available = w.change.qty.get() - w.reserved;
            match op {
                TxOp::Adjust { delta, .. } => {
                    let next = w
                        .change
                        .qty
                        .apply(*delta)
                        .map_err(|b| bound_rejection(b, op_index))?;
                    if next.get() < w.reserved {
                        // What this op found available: earlier ops count.
                        return Err(Rejection::InsufficientAvailable {
                            available,
                            op_index,
                        });
                    }
                    w.change.qty = next;
                }
                TxOp::Reserve { terms, .. } => {
                    let qty = terms.qty();
                    if qty.get() > available {
                        return Err(Rejection::InsufficientAvailable {
                            available,
                            op_index,
                        });
                    }
                    if owner_holds >= HOLDS_PER_OWNER_MAX || w.holds >= HOLDS_PER_ITEM_MAX {
                        return Err(Rejection::HoldLimit { op_index });
                    }
                    let id = tx_hold_id(ctx.new_id, placed.len());
                    assert!(
                        !self.holds.contains_key(&id),
                        "the actor must supply a fresh hold id"
                    );
                    w.reserved += qty.get();
                    w.holds += 1;
                    owner_holds += 1;
                    placed.push(Hold {
                        id,
                        item,
                        qty,
                        created_at: ctx.now,
                        expires_at: ctx.now.saturating_add(terms.ttl()),
                    });
                }
                TxOp::Commit { hold, .. } | TxOp::Release { hold } => {
                    let h = open_hold(hold, &gone)?;
                    w.reserved -= h.qty.get();
                    w.holds -= 1;
                    owner_holds -= 1;
                    gone.insert(*hold);
                    if matches!(op, TxOp::Commit { .. }) {
                        w.change.qty = Qty::from_stored(w.change.qty.get() - h.qty.get())
                            .expect("a hold is within its item's qty");
                        committed.push(*hold);
                    } else {
                        released.push(*hold);
                    }
                }
            }
        }
        let changes = work
            .into_iter()
            .map(|w| TxChange {
                change: w.change,
                note: w.note.unwrap_or_default(),
            })
            .collect();
        Ok(Event::Transacted {
            changes,
            placed,
            committed,
            released,
            at: ctx.now,
        })
    }

    /// The item `id`, if it exists and the precondition holds.
    fn existing(&self, id: Uuid, if_match: Option<&Precondition>) -> Result<&Item, Rejection> {
        let item = self
            .items
            .get(&id)
            .ok_or(Rejection::NotFound { op_index: None })?;
        match if_match {
            Some(p) if !p.holds(item.version) => Err(Rejection::VersionMismatch {
                current: item.version,
            }),
            _ => Ok(item),
        }
    }

    /// Whether `evolve(event)` would be valid here, without changing
    /// anything. Replay calls this first, so a checksum-valid record that
    /// does not fit the state (a log that does not belong to it, or a bug)
    /// becomes an error naming the record instead of a panic. It mirrors
    /// `evolve`'s assertions and adds what `decide` guarantees: versions
    /// advance by one, a rename does not take another item's name, a
    /// transaction touches each item once.
    pub fn check_event(&self, event: &Event) -> Result<(), String> {
        match event {
            Event::Created(item, _) => {
                if self.items.contains_key(&item.id) {
                    return Err(format!("created item {} already exists", item.id));
                }
                if self.names.contains_key(&item.name.unique_key()) {
                    return Err(format!("created item's name {:?} is taken", item.name));
                }
                if item.version != 1 || item.reserved != Qty::ZERO {
                    return Err(format!(
                        "created item has version {} and reserved {:?}",
                        item.version, item.reserved
                    ));
                }
                Ok(())
            }
            Event::Replaced(item, _) => {
                let old = self.existing_for_event(&item.id)?;
                check_next_version(old, item.version)?;
                if item.reserved != old.reserved || item.qty < item.reserved {
                    return Err(format!(
                        "replaced item {} changes its reservations",
                        item.id
                    ));
                }
                match self.names.get(&item.name.unique_key()) {
                    Some(holder) if *holder != item.id => {
                        Err(format!("replaced item's name {:?} is taken", item.name))
                    }
                    _ => Ok(()),
                }
            }
            Event::QtySet { change, .. } => self.check_change(change),
            Event::Deleted { id } => self.existing_for_event(id).map(|_| ()),
            Event::Transacted {
                changes,
                placed,
                committed,
                released,
                ..
            } => self.check_transacted(changes, placed, committed, released),
            Event::Reserved { hold, version } => {
                let item = self.existing_for_event(&hold.item)?;
                check_next_version(item, *version)?;
                if self.holds.contains_key(&hold.id) {
                    return Err(format!("hold {} already exists", hold.id));
                }
                if hold.qty.get() > item.available() {
                    return Err(format!("hold {} exceeds what is available", hold.id));
                }
                Ok(())
            }
            Event::HoldCommitted { hold, change, .. } => {
                let h = self.hold_for_event(hold)?;
                let item = self.existing_for_event(&h.item)?;
                check_next_version(item, change.version)?;
                if change.id != h.item || change.qty.get() + h.qty.get() != item.qty.get() {
                    return Err(format!("commit of hold {hold} does not match its item"));
                }
                Ok(())
            }
            Event::HoldReleased { hold, version, .. } => {
                let h = self.hold_for_event(hold)?;
                check_next_version(self.existing_for_event(&h.item)?, *version)
            }
            Event::HoldsExpired { holds, at } => {
                let mut seen = BTreeSet::new();
                for hold in holds {
                    let h = self.hold_for_event(hold)?;
                    if !seen.insert(*hold) || h.expires_at > *at {
                        return Err(format!("hold {hold} expired twice or early"));
                    }
                }
                Ok(())
            }
        }
    }

    /// `check_event` of a transaction: each item once and at its next
    /// version; each hold it removes open, once; each hold it places fresh;
    /// every item a hold touches is among the changes; afterwards each
    /// item's reserved fits its qty and the hold bounds hold.
    fn check_transacted(
        &self,
        changes: &[TxChange],
        placed: &[Hold],
        committed: &[Uuid],
        released: &[Uuid],
    ) -> Result<(), String> {
        // item → (qty after, reserved after, holds after)
        let mut after: HashMap<Uuid, (u64, u64, usize)> = HashMap::new();
        for TxChange { change, .. } in changes {
            let item = self.existing_for_event(&change.id)?;
            check_next_version(item, change.version)?;
            let entry = (
                change.qty.get(),
                item.reserved.get(),
                self.holds_of(item.id),
            );
            if after.insert(change.id, entry).is_some() {
                return Err(format!("transaction changes item {} twice", change.id));
            }
        }
        let mut removed = HashSet::new();
        for hold in committed.iter().chain(released) {
            let h = self.hold_for_event(hold)?;
            let Some(a) = after.get_mut(&h.item).filter(|_| removed.insert(*hold)) else {
                return Err(format!(
                    "transaction removes hold {hold} twice or not its item"
                ));
            };
            a.1 -= h.qty.get();
            a.2 -= 1;
        }
        let mut fresh = HashSet::new();
        for hold in placed {
            let Some(a) = after.get_mut(&hold.item) else {
                return Err(format!(
                    "hold {} of an item the transaction does not change",
                    hold.id
                ));
            };
            if self.holds.contains_key(&hold.id) || !fresh.insert(hold.id) || hold.qty == Qty::ZERO
            {
                return Err(format!("hold {} is not fresh or holds nothing", hold.id));
            }
            a.1 += hold.qty.get();
            a.2 += 1;
        }
        if self.holds.len() - removed.len() + placed.len() > HOLDS_PER_OWNER_MAX {
            return Err("transaction exceeds HOLDS_PER_OWNER_MAX".into());
        }
        for (id, (qty, reserved, holds)) in &after {
            if reserved > qty || *holds > HOLDS_PER_ITEM_MAX {
                return Err(format!("item {id} would hold more than its qty or bound"));
            }
        }
        Ok(())
    }

    fn check_change(&self, change: &QtyVersion) -> Result<(), String> {
        let item = self.existing_for_event(&change.id)?;
        check_next_version(item, change.version)?;
        if change.qty < item.reserved {
            return Err(format!(
                "item {} would fall below its reserved qty",
                change.id
            ));
        }
        Ok(())
    }

    fn hold_for_event(&self, id: &Uuid) -> Result<&Hold, String> {
        self.holds
            .get(id)
            .ok_or_else(|| format!("hold {id} does not exist"))
    }

    fn existing_for_event(&self, id: &Uuid) -> Result<&Item, String> {
        self.items
            .get(id)
            .ok_or_else(|| format!("item {id} does not exist"))
    }

    /// Apply an accepted event. Used live (after `decide`) and by replay.
    /// Panics on an event that does not fit the state: that is a bug or a
    /// log that does not belong to this state, never bad input.
    pub fn evolve(&mut self, event: &Event) {
        self.evolve_keyed(event, None);
    }

    /// `evolve`, with the idempotency key the event was logged with (it
    /// goes into the items' history). Live and replay both pass it.
    pub fn evolve_keyed(&mut self, event: &Event, key: Option<&idempotency::IdemKey>) {
        match event {
            Event::Created(item, note) => {
                let clash = self.names.insert(item.name.unique_key(), item.id);
                assert!(clash.is_none(), "created item's name must be free");
                self.order.insert(item.id);
                let old = self.items.insert(item.id, item.clone());
                assert!(old.is_none(), "created item's id must be fresh");
                let delta = item.qty.get() as i64;
                self.record(item.id, Change::Created, delta, item.created_at, key, note);
            }
            Event::Replaced(item, note) => {
                let old = self.items.get_mut(&item.id).expect("replaced item exists");
                let delta = item.qty.get() as i64 - old.qty.get() as i64;
                if old.name != item.name {
                    self.names.remove(&old.name.unique_key());
                    self.names.insert(item.name.unique_key(), item.id);
                }
                *old = item.clone();
                self.record(item.id, Change::Replaced, delta, item.updated_at, key, note);
            }
            Event::QtySet { change, at, note } => {
                let delta = self.set_qty(change, *at);
                self.record(change.id, Change::Adjusted, delta, *at, key, note);
            }
            Event::Deleted { id } => {
                let old = self.items.remove(id).expect("deleted item exists");
                self.names.remove(&old.name.unique_key());
                self.order.remove(id);
                self.history.remove(id);
                let held: Vec<Uuid> = self
                    .holds_by_item
                    .range((*id, Uuid::nil())..=(*id, Uuid::max()))
                    .map(|(_, hold)| *hold)
                    .collect();
                for hold in held {
                    self.remove_hold(&hold);
                }
            }
            Event::Transacted {
                changes,
                placed,
                committed,
                released,
                at,
            } => {
                // Holds first (reserved moves), then each item's qty and
                // version, where qty >= reserved is asserted again.
                for hold in committed.iter().chain(released) {
                    self.remove_hold(hold);
                }
                for hold in placed {
                    let item = self.items.get_mut(&hold.item).expect("held item exists");
                    item.reserved = Qty::from_stored(item.reserved.get() + hold.qty.get())
                        .expect("reserved stays within the qty range");
                    let old = self.holds.insert(hold.id, *hold);
                    assert!(old.is_none(), "a hold's id must be fresh");
                    self.hold_expiry.insert((hold.expires_at, hold.id));
                    self.holds_by_item.insert((hold.item, hold.id));
                }
                for TxChange { change, note } in changes {
                    let delta = self.set_qty(change, *at);
                    self.record(change.id, Change::Transacted, delta, *at, key, note);
                }
            }
            Event::Reserved { hold, version } => {
                let item = self.items.get_mut(&hold.item).expect("held item exists");
                assert_eq!(item.version + 1, *version, "versions advance by one");
                item.reserved = Qty::from_stored(item.reserved.get() + hold.qty.get())
                    .filter(|r| *r <= item.qty)
                    .expect("a hold fits what is available");
                item.version = *version;
                item.updated_at = hold.created_at;
                let old = self.holds.insert(hold.id, *hold);
                assert!(old.is_none(), "a hold's id must be fresh");
                self.hold_expiry.insert((hold.expires_at, hold.id));
                self.holds_by_item.insert((hold.item, hold.id));
                let change = Change::Reserved { hold: hold.id };
                self.record(hold.item, change, 0, hold.created_at, key, &Note::NONE);
            }
            Event::HoldCommitted {
                hold,
                change,
                at,
                note,
            } => {
                let h = self.remove_hold(hold);
                let item = self.items.get_mut(&h.item).expect("held item exists");
                assert_eq!(item.version + 1, change.version, "versions advance by one");
                assert_eq!(change.qty.get() + h.qty.get(), item.qty.get());
                item.qty = change.qty;
                item.version = change.version;
                item.updated_at = *at;
                let delta = -(h.qty.get() as i64);
                let committed = Change::Committed { hold: *hold };
                self.record(h.item, committed, delta, *at, key, note);
            }
            Event::HoldReleased { hold, version, at } => {
                let h = self.remove_hold(hold);
                let item = self.items.get_mut(&h.item).expect("held item exists");
                assert_eq!(item.version + 1, *version, "versions advance by one");
                item.version = *version;
                item.updated_at = *at;
                let released = Change::Released { hold: *hold };
                self.record(h.item, released, 0, *at, key, &Note::NONE);
            }
            Event::HoldsExpired { holds, at } => {
                for hold in holds {
                    let h = self.remove_hold(hold);
                    assert!(h.expires_at <= *at, "a hold expires at or after its time");
                    let item = self.items.get_mut(&h.item).expect("held item exists");
                    item.version += 1;
                    item.updated_at = *at;
                    let expired = Change::Expired { hold: *hold };
                    self.record(h.item, expired, 0, *at, None, &Note::NONE);
                }
            }
        }
    }

    /// Remove a hold and its reservation on its item (the item's version
    /// is the caller's business).
    fn remove_hold(&mut self, id: &Uuid) -> Hold {
        let hold = self.holds.remove(id).expect("the hold exists");
        self.hold_expiry.remove(&(hold.expires_at, hold.id));
        self.holds_by_item.remove(&(hold.item, hold.id));
        if let Some(item) = self.items.get_mut(&hold.item) {
            item.reserved = Qty::from_stored(item.reserved.get() - hold.qty.get())
                .expect("reserved is the sum of the holds");
        }
        hold
    }

    /// Append the item's current qty/version as a history entry, dropping
    /// the oldest beyond `HISTORY_PER_ITEM_MAX`.
    fn record(
        &mut self,
        id: Uuid,
        change: Change,
        delta: i64,
        at: Micros,
        key: Option<&idempotency::IdemKey>,
        note: &Note,
    ) {
        let item = &self.items[&id];
        let entry = HistoryEntry {
            version: item.version,
            at,
            change,
            qty: item.qty,
            reserved: item.reserved,
            delta,
            key: key.cloned(),
            note: note.clone(),
        };
        let entries = self.history.entry(id).or_default();
        if entries.len() >= HISTORY_PER_ITEM_MAX {
            entries.pop_front();
        }
        entries.push_back(entry);
    }

    /// Set a qty and version; returns the qty change.
    fn set_qty(&mut self, change: &QtyVersion, at: Micros) -> i64 {
        let item = self.items.get_mut(&change.id).expect("changed item exists");
        assert_eq!(item.version + 1, change.version, "versions advance by one");
        assert!(
            change.qty >= item.reserved,
            "qty never falls below reserved"
        );
        let delta = change.qty.get() as i64 - item.qty.get() as i64;
        item.qty = change.qty;
        item.version = change.version;
        item.updated_at = at;
        delta
    }

    /// One whole transition, the one way every caller runs a command (the
    /// actor, the storage harness, the model tests): `decide`; if accepted,
    /// `evolve` and read the outcome; then, for a keyed request, store the
    /// answer under its key. A rejection changes nothing but the key table
    /// (a keyed rejection is stored so that its retry is answered the same).
    /// The caller logs `event` and `key` as one record when either is set.
    pub fn apply(&mut self, cmd: &Command, ctx: Ctx, key: Option<KeyStamp>) -> Applied {
        let (event, result) = match self.decide(cmd, ctx) {
            Ok(event) => {
                if let Some(e) = &event {
                    self.evolve_keyed(e, key.as_ref().map(|k| &k.key));
                }
                let outcome = self.outcome(cmd, event.as_ref());
                (event, Ok(outcome))
            }
            Err(rejection) => (None, Err(rejection)),
        };
        let key = key.map(|stamp| idempotency::KeyRecord {
            key: stamp.key,
            fingerprint: stamp.fingerprint,
            response: result.clone(),
            expires_at: stamp.expires_at,
        });
        if let Some(record) = &key {
            self.keys.insert(record.clone());
        }
        Applied { event, result, key }
    }

    /// The answer to an accepted command, read after `evolve`.
    fn outcome(&self, cmd: &Command, event: Option<&Event>) -> Outcome {
        let item = |id: &Uuid| {
            self.items
                .get(id)
                .expect("item of an accepted event")
                .clone()
        };
        match (cmd, event) {
            (_, Some(Event::Created(created, _))) => Outcome::Created(created.clone()),
            (_, Some(Event::Replaced(replaced, _))) => Outcome::Updated(replaced.clone()),
            (_, Some(Event::QtySet { change, .. })) => Outcome::Updated(item(&change.id)),
            (
                _,
                Some(Event::Transacted {
                    changes, placed, ..
                }),
            ) => Outcome::Transacted(
                changes.iter().map(|c| item(&c.change.id)).collect(),
                placed.clone(),
            ),
            (_, Some(Event::Reserved { hold, .. })) => Outcome::Reserved(*hold, item(&hold.item)),
            (_, Some(Event::HoldCommitted { change, .. })) => Outcome::Updated(item(&change.id)),
            (
                _,
                Some(
                    Event::Deleted { .. } | Event::HoldReleased { .. } | Event::HoldsExpired { .. },
                ),
            )
            | (Command::Delete { .. } | Command::ReleaseHold { .. } | Command::ExpireHolds, None) => {
                Outcome::Deleted
            }
            (_, None) => unreachable!("only Delete may be accepted without an event"),
        }
    }

    /// Rebuild a state from its items (snapshot load). Checks what the live
    /// path guarantees: unique ids and names.
    pub fn from_items(
        items: impl IntoIterator<Item = Item>,
        keys: idempotency::KeyTable,
    ) -> Result<Self, String> {
        let mut state = OwnerState {
            keys,
            ..OwnerState::default()
        };
        for item in items {
            if state
                .names
                .insert(item.name.unique_key(), item.id)
                .is_some()
            {
                return Err(format!("duplicate name {:?}", item.name));
            }
            state.order.insert(item.id);
            if state.items.insert(item.id, item).is_some() {
                return Err("duplicate item id".to_string());
            }
        }
        Ok(state)
    }

    /// Copy of the parts a snapshot persists (the indexes are derived).
    /// Names are `Arc`s, so this copies pointers, not strings.
    pub fn snapshot_view(&self) -> (Vec<Item>, idempotency::KeyTable) {
        (self.items.values().cloned().collect(), self.keys.clone())
    }

    /// Copy of the holds and histories (snapshots; next to `snapshot_view`).
    pub fn snapshot_extra(&self) -> OwnerExtra {
        OwnerExtra {
            holds: self.holds.values().copied().collect(),
            history: self
                .history
                .iter()
                .map(|(id, entries)| (*id, entries.iter().cloned().collect()))
                .collect(),
        }
    }

    /// Restore the holds and histories a snapshot carries, after
    /// `from_items`. Checks what the live path guarantees: each hold's item
    /// exists, each item's `reserved` is the sum of its holds, the bounds,
    /// and histories of existing items only, versions increasing.
    pub fn restore_extra(&mut self, extra: OwnerExtra) -> Result<(), String> {
        let OwnerExtra { holds, history } = extra;
        let mut sums: HashMap<Uuid, u64> = HashMap::new();
        for hold in holds {
            if !self.items.contains_key(&hold.item) {
                return Err(format!("hold {} of a missing item", hold.id));
            }
            if self.holds.insert(hold.id, hold).is_some() {
                return Err(format!("duplicate hold {}", hold.id));
            }
            self.hold_expiry.insert((hold.expires_at, hold.id));
            self.holds_by_item.insert((hold.item, hold.id));
            *sums.entry(hold.item).or_default() += hold.qty.get();
        }
        if self.holds.len() > HOLDS_PER_OWNER_MAX {
            return Err("more holds than HOLDS_PER_OWNER_MAX".into());
        }
        for item in self.items.values() {
            if sums.get(&item.id).copied().unwrap_or(0) != item.reserved.get()
                || item.reserved > item.qty
                || self.holds_of(item.id) > HOLDS_PER_ITEM_MAX
            {
                return Err(format!(
                    "item {}'s reserved does not match its holds",
                    item.id
                ));
            }
        }
        for (id, entries) in history {
            let increasing = entries.windows(2).all(|w| w[0].version < w[1].version);
            if !self.items.contains_key(&id) || entries.len() > HISTORY_PER_ITEM_MAX || !increasing
            {
                return Err(format!("invalid history of item {id}"));
            }
            if self.history.insert(id, entries.into()).is_some() {
                return Err(format!("duplicate history of item {id}"));
            }
        }
        Ok(())
    }

    /// Release spare capacity (an owner being passivated).
    pub fn shrink(&mut self) {
        self.items.shrink_to_fit();
        self.names.shrink_to_fit();
        self.keys.shrink();
        self.holds.shrink_to_fit();
        self.history.shrink_to_fit();
    }

    /// The invariants of the module docs of `holds`, for tests: reserved is
    /// the sum of the holds and never above qty, the indexes agree, the
    /// bounds hold, histories are bounded and end at the item's version.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut sums: HashMap<Uuid, u64> = HashMap::new();
        for hold in self.holds.values() {
            if !self.items.contains_key(&hold.item)
                || !self.hold_expiry.contains(&(hold.expires_at, hold.id))
                || !self.holds_by_item.contains(&(hold.item, hold.id))
            {
                return Err(format!("hold {} is not indexed or has no item", hold.id));
            }
            *sums.entry(hold.item).or_default() += hold.qty.get();
        }
        if self.hold_expiry.len() != self.holds.len()
            || self.holds_by_item.len() != self.holds.len()
            || self.holds.len() > HOLDS_PER_OWNER_MAX
        {
            return Err("hold indexes disagree or exceed the bound".into());
        }
        for item in self.items.values() {
            let sum = sums.get(&item.id).copied().unwrap_or(0);
            if sum != item.reserved.get() || item.reserved > item.qty {
                return Err(format!(
                    "item {}: reserved {:?} vs holds {sum}",
                    item.id, item.reserved
                ));
            }
            if self.holds_of(item.id) > HOLDS_PER_ITEM_MAX {
                return Err(format!("item {} has too many holds", item.id));
            }
        }
        for (id, entries) in &self.history {
            let Some(item) = self.items.get(id) else {
                return Err(format!("history of missing item {id}"));
            };
            if entries.len() > HISTORY_PER_ITEM_MAX
                || entries.back().map(|e| e.version) != Some(item.version)
            {
                return Err(format!("history of item {id} is unbounded or stale"));
            }
        }
        Ok(())
    }
}

/// A qty for `item` must stay at or above what it has reserved.
fn check_reserved(item: &Item, qty: Qty, op_index: Option<u32>) -> Result<(), Rejection> {
    if qty < item.reserved {
        return Err(Rejection::InsufficientAvailable {
            available: item.available(),
            op_index,
        });
    }
    Ok(())
}

fn check_next_version(item: &Item, version: u64) -> Result<(), String> {
    if item.version.checked_add(1) != Some(version) {
        return Err(format!(
            "item {} is at version {}, the event sets version {version}",
            item.id, item.version
        ));
    }
    Ok(())
}

fn bound_rejection(bound: QtyBound, op_index: Option<u32>) -> Rejection {
    match bound {
        QtyBound::BelowZero => Rejection::QtyBelowZero { op_index },
        QtyBound::Overflow => Rejection::QtyOverflow { op_index },
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod holds_tests;
