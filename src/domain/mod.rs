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

pub mod idempotency;
mod types;

use std::collections::{BTreeSet, HashMap};

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
    pub version: u64,
    pub created_at: Micros,
    pub updated_at: Micros,
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

/// One op of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxOp {
    pub item: Uuid,
    pub delta: Delta,
}

/// A request to change the state. Inputs are already valid values; what is
/// left to decide depends on the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Create {
        name: ItemName,
        qty: Qty,
    },
    Replace {
        id: Uuid,
        name: ItemName,
        qty: Qty,
        if_match: Option<Precondition>,
    },
    Adjust {
        id: Uuid,
        delta: Delta,
        if_match: Option<Precondition>,
    },
    Delete {
        id: Uuid,
    },
    /// 1..=TX_OPS_MAX ops, applied in order, all or nothing.
    Transact {
        ops: Vec<TxOp>,
    },
}

/// What the caller supplies so that `decide` stays pure.
#[derive(Debug, Clone, Copy)]
pub struct Ctx {
    pub now: Micros,
    /// The id a `Create` gets (UUID v7 from the actor). Other commands
    /// ignore it, so the actor passes the nil id for them and skips
    /// generating one.
    pub new_id: Uuid,
}

/// A quantity and version after a change, as recorded in events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QtyVersion {
    pub id: Uuid,
    pub qty: Qty,
    pub version: u64,
}

/// The facts of an accepted transition. Every value is final, so replaying an
/// event needs no clock, no randomness and no checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Created(Item),
    Replaced(Item),
    QtySet {
        change: QtyVersion,
        at: Micros,
    },
    Deleted {
        id: Uuid,
    },
    /// A transaction's net effect: each touched item once, in order of first
    /// appearance, each with version + 1.
    Transacted {
        changes: Vec<QtyVersion>,
        at: Micros,
    },
}

/// The answer to an accepted command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Created(Item),
    Updated(Item),
    Deleted,
    Transacted(Vec<Item>),
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
            Command::Create { name, qty } => self.decide_create(name, *qty, ctx).map(Some),
            Command::Replace {
                id,
                name,
                qty,
                if_match,
            } => self
                .decide_replace(*id, name, *qty, if_match.as_ref(), ctx)
                .map(Some),
            Command::Adjust {
                id,
                delta,
                if_match,
            } => self
                .decide_adjust(*id, *delta, if_match.as_ref(), ctx)
                .map(Some),
            Command::Delete { id } => Ok(self
                .items
                .contains_key(id)
                .then_some(Event::Deleted { id: *id })),
            Command::Transact { ops } => self.decide_transact(ops, ctx).map(Some),
        }
    }

    fn decide_create(&self, name: &ItemName, qty: Qty, ctx: Ctx) -> Result<Event, Rejection> {
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
        Ok(Event::Created(Item {
            id: ctx.new_id,
            name: name.clone(),
            qty,
            version: 1,
            created_at: ctx.now,
            updated_at: ctx.now,
        }))
    }

    fn decide_replace(
        &self,
        id: Uuid,
        name: &ItemName,
        qty: Qty,
        if_match: Option<&Precondition>,
        ctx: Ctx,
    ) -> Result<Event, Rejection> {
        let item = self.existing(id, if_match)?;
        if let Some(holder) = self.names.get(&name.unique_key()) {
            if *holder != id {
                return Err(Rejection::NameTaken);
            }
        }
        Ok(Event::Replaced(Item {
            id,
            name: name.clone(),
            qty,
            version: item.version + 1,
            created_at: item.created_at,
            updated_at: ctx.now,
        }))
    }

    fn decide_adjust(
        &self,
        id: Uuid,
        delta: Delta,
        if_match: Option<&Precondition>,
        ctx: Ctx,
    ) -> Result<Event, Rejection> {
        let item = self.existing(id, if_match)?;
        let qty = item
            .qty
            .apply(delta)
            .map_err(|b| bound_rejection(b, None))?;
        let change = QtyVersion {
            id,
            qty,
            version: item.version + 1,
        };
        Ok(Event::QtySet {
            change,
            at: ctx.now,
        })
    }

    fn decide_transact(&self, ops: &[TxOp], ctx: Ctx) -> Result<Event, Rejection> {
        assert!(
            (1..=TX_OPS_MAX).contains(&ops.len()),
            "transport bounds the op count before the domain sees it"
        );
        // Working copy of the touched items, in order of first appearance;
        // the state itself is not touched until every op has passed.
        let mut changes: Vec<QtyVersion> = Vec::new();
        let mut slot_of: HashMap<Uuid, usize> = HashMap::new();
        for (index, op) in ops.iter().enumerate() {
            let op_index = Some(index as u32);
            let slot = match slot_of.get(&op.item) {
                Some(&slot) => slot,
                None => {
                    let item = self
                        .items
                        .get(&op.item)
                        .ok_or(Rejection::NotFound { op_index })?;
                    changes.push(QtyVersion {
                        id: item.id,
                        qty: item.qty,
                        version: item.version + 1,
                    });
                    slot_of.insert(op.item, changes.len() - 1);
                    changes.len() - 1
                }
            };
            let change = &mut changes[slot];
            change.qty = change
                .qty
                .apply(op.delta)
                .map_err(|b| bound_rejection(b, op_index))?;
        }
        Ok(Event::Transacted {
            changes,
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
            Event::Created(item) => {
                if self.items.contains_key(&item.id) {
                    return Err(format!("created item {} already exists", item.id));
                }
                if self.names.contains_key(&item.name.unique_key()) {
                    return Err(format!("created item's name {:?} is taken", item.name));
                }
                if item.version != 1 {
                    return Err(format!("created item has version {}", item.version));
                }
                Ok(())
            }
            Event::Replaced(item) => {
                let old = self.existing_for_event(&item.id)?;
                check_next_version(old, item.version)?;
                match self.names.get(&item.name.unique_key()) {
                    Some(holder) if *holder != item.id => {
                        Err(format!("replaced item's name {:?} is taken", item.name))
                    }
                    _ => Ok(()),
                }
            }
            Event::QtySet { change, .. } => {
                check_next_version(self.existing_for_event(&change.id)?, change.version)
            }
            Event::Deleted { id } => self.existing_for_event(id).map(|_| ()),
            Event::Transacted { changes, .. } => {
                let mut seen = BTreeSet::new();
                for change in changes {
                    if !seen.insert(change.id) {
                        return Err(format!("transaction changes item {} twice", change.id));
                    }
                    check_next_version(self.existing_for_event(&change.id)?, change.version)?;
                }
                Ok(())
            }
        }
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
        match event {
            Event::Created(item) => {
                let clash = self.names.insert(item.name.unique_key(), item.id);
                assert!(clash.is_none(), "created item's name must be free");
                self.order.insert(item.id);
                let old = self.items.insert(item.id, item.clone());
                assert!(old.is_none(), "created item's id must be fresh");
            }
            Event::Replaced(item) => {
                let old = self.items.get_mut(&item.id).expect("replaced item exists");
                if old.name != item.name {
                    self.names.remove(&old.name.unique_key());
                    self.names.insert(item.name.unique_key(), item.id);
                }
                *old = item.clone();
            }
            Event::QtySet { change, at } => self.set_qty(change, *at),
            Event::Deleted { id } => {
                let old = self.items.remove(id).expect("deleted item exists");
                self.names.remove(&old.name.unique_key());
                self.order.remove(id);
            }
            Event::Transacted { changes, at } => {
                for change in changes {
                    self.set_qty(change, *at);
                }
            }
        }
    }

    fn set_qty(&mut self, change: &QtyVersion, at: Micros) {
        let item = self.items.get_mut(&change.id).expect("changed item exists");
        assert_eq!(item.version + 1, change.version, "versions advance by one");
        item.qty = change.qty;
        item.version = change.version;
        item.updated_at = at;
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
                    self.evolve(e);
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
            (_, Some(Event::Created(created))) => Outcome::Created(created.clone()),
            (_, Some(Event::Replaced(replaced))) => Outcome::Updated(replaced.clone()),
            (_, Some(Event::QtySet { change, .. })) => Outcome::Updated(item(&change.id)),
            (_, Some(Event::Transacted { changes, .. })) => {
                Outcome::Transacted(changes.iter().map(|c| item(&c.id)).collect())
            }
            (_, Some(Event::Deleted { .. })) | (Command::Delete { .. }, None) => Outcome::Deleted,
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

    /// Release spare capacity (an owner being passivated).
    pub fn shrink(&mut self) {
        self.items.shrink_to_fit();
        self.names.shrink_to_fit();
        self.keys.shrink();
    }
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
