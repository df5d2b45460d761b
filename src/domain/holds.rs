//! Reservations (holds) and per-item history: the value types and bounds.
//! The transitions live in `OwnerState` (mod.rs) next to the others.
//!
//! Invariants (checked by `OwnerState::check_invariants` in tests):
//! - every item's `reserved` is the sum of its holds' `qty`, and
//!   `reserved <= qty` (so `available = qty - reserved` is never negative);
//! - every hold names an existing item and sits once in the expiry index;
//! - an item has at most `HOLDS_PER_ITEM_MAX` holds, an owner at most
//!   `HOLDS_PER_OWNER_MAX`;
//! - an item's history holds at most `HISTORY_PER_ITEM_MAX` entries, newest
//!   last, versions strictly increasing.

use uuid::Uuid;

use super::idempotency::IdemKey;
use super::{Micros, Note, Qty, ValueError};

/// Open holds on one item.
pub const HOLDS_PER_ITEM_MAX: usize = 100;
/// Open holds of one owner.
pub const HOLDS_PER_OWNER_MAX: usize = 10_000;
/// A hold's time to live, in seconds: 1..=HOLD_TTL_SECS_MAX (one day).
pub const HOLD_TTL_SECS_MAX: u64 = 24 * 60 * 60;
/// Holds one expiry step releases. The actor runs one step per message and
/// per timer tick, so a burst of expiries never stalls the owner.
pub const HOLD_EXPIRE_PER_STEP: usize = 64;
/// History entries kept per item, newest kept. History is owner state, so
/// it is in snapshots and survives log truncation; older entries are gone.
/// An entry is 88 bytes inline (a test holds it), its `Note` one pointer
/// of them when the write had no reason or reference; with them it adds
/// one allocation of at most 48 + `REASON_BYTES_MAX` +
/// `REFERENCE_BYTES_MAX` = 208 bytes (shared by the event and every entry
/// it made). So one item's history is at most 32 × (88 + 208) ≈ 9.3 KiB.
pub const HISTORY_PER_ITEM_MAX: usize = 32;

/// What a hold asks for: `qty` in 1..=QTY_MAX units for `ttl` in
/// 1..=HOLD_TTL_SECS_MAX seconds. A `Reserve` command or op can only carry
/// valid terms, so the domain never sees an empty or endless hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldTerms {
    qty: Qty,
    ttl: Micros,
}

/// Why hold terms are refused; [`HoldTermsError::field`] names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HoldTermsError {
    #[error(transparent)]
    Qty(ValueError),
    #[error("a reservation holds at least 1")]
    QtyZero,
    #[error("must be 1 to {HOLD_TTL_SECS_MAX} seconds, got {0}")]
    Ttl(i64),
}

impl HoldTermsError {
    /// The request field the error is about: `qty` or `ttl`.
    pub fn field(&self) -> &'static str {
        match self {
            HoldTermsError::Qty(_) | HoldTermsError::QtyZero => "qty",
            HoldTermsError::Ttl(_) => "ttl",
        }
    }
}

impl HoldTerms {
    /// `qty` units for `ttl_secs` seconds, or the first bound it breaks
    /// (qty before ttl).
    pub fn new(qty: i64, ttl_secs: i64) -> Result<HoldTerms, HoldTermsError> {
        let qty = Qty::new(qty).map_err(HoldTermsError::Qty)?;
        if qty == Qty::ZERO {
            return Err(HoldTermsError::QtyZero);
        }
        if !(1..=HOLD_TTL_SECS_MAX as i64).contains(&ttl_secs) {
            return Err(HoldTermsError::Ttl(ttl_secs));
        }
        Ok(HoldTerms {
            qty,
            ttl: ttl_secs as Micros * 1_000_000,
        })
    }

    pub fn qty(self) -> Qty {
        self.qty
    }

    /// The time to live in µs (a whole number of seconds).
    pub fn ttl(self) -> Micros {
        self.ttl
    }
}

/// A reservation of `qty` units of `item` until `expires_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    pub id: Uuid,
    pub item: Uuid,
    pub qty: Qty,
    pub created_at: Micros,
    pub expires_at: Micros,
}

/// What a history entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Created,
    Replaced,
    Adjusted,
    Transacted,
    Reserved { hold: Uuid },
    Committed { hold: Uuid },
    Released { hold: Uuid },
    Expired { hold: Uuid },
}

/// One transition of one item: the version it produced, when, the qty and
/// reserved after it, the qty change, the request's reason and reference
/// (its `Note`) and the idempotency key if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub version: u64,
    pub at: Micros,
    pub change: Change,
    pub qty: Qty,
    pub reserved: Qty,
    /// `qty` minus the qty before (0 for holds that do not move qty).
    pub delta: i64,
    pub key: Option<IdemKey>,
    /// `reason` and `reference` of the write (empty for holds placed or
    /// released, expiries, and writes sent without them).
    pub note: Note,
}

/// The holds and histories of one owner, as a snapshot carries them (next
/// to its items and keys).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnerExtra {
    pub holds: Vec<Hold>,
    pub history: Vec<(Uuid, Vec<HistoryEntry>)>,
}
