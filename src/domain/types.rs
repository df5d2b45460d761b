//! Value types whose constructors enforce the invariants: a `Qty`, `Delta`,
//! `ItemName` or `OwnerId` that exists is valid, so the rest of the code never
//! re-checks them.

use std::fmt;
use std::sync::Arc;

use thiserror::Error;

/// Largest quantity: 2^53 − 1, exactly representable by every JSON client.
pub const QTY_MAX: u64 = (1 << 53) - 1;
/// Largest absolute delta, for the same reason.
pub const DELTA_ABS_MAX: i64 = (1 << 53) - 1;
/// Item names are 1..=200 characters (Unicode scalar values) after trimming.
pub const NAME_CHARS_MAX: usize = 200;
/// Owner ids are 1..=64 characters of `[A-Za-z0-9._-]`.
pub const OWNER_ID_BYTES_MAX: usize = 64;
/// A change's reason code is 1..=32 bytes of `^[a-z][a-z0-9_.-]*$`.
pub const REASON_BYTES_MAX: usize = 32;
/// A change's reference (an order id, a ticket) is 1..=128 bytes of
/// printable text: no control characters.
pub const REFERENCE_BYTES_MAX: usize = 128;

/// Why a raw value is not a valid domain value. Transport maps these to 400s.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ValueError {
    #[error("name must not be empty after trimming")]
    NameEmpty,
    #[error("name must be at most {NAME_CHARS_MAX} characters, got {0}")]
    NameTooLong(usize),
    #[error("name must not contain control characters")]
    NameControlChar,
    #[error("qty must be at least 0, got {0}")]
    QtyNegative(i64),
    #[error("qty must be at most {QTY_MAX}, got {0}")]
    QtyTooLarge(i64),
    #[error("delta must be within ±{DELTA_ABS_MAX}, got {0}")]
    DeltaOutOfRange(i64),
    #[error("owner id must be 1-{OWNER_ID_BYTES_MAX} characters of [A-Za-z0-9._-]")]
    OwnerId,
    #[error("reason must be 1-{REASON_BYTES_MAX} bytes matching ^[a-z][a-z0-9_.-]*$ (e.g. sale, restock), got {0:?}")]
    Reason(String),
    #[error("reference must not be empty")]
    ReferenceEmpty,
    #[error("reference must be at most {REFERENCE_BYTES_MAX} bytes, got {0}")]
    ReferenceTooLong(usize),
    #[error("reference must not contain control characters")]
    ReferenceControlChar,
}

/// A quantity in `0..=QTY_MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Qty(u64);

impl Qty {
    pub const ZERO: Qty = Qty(0);

    pub fn new(raw: i64) -> Result<Qty, ValueError> {
        if raw < 0 {
            return Err(ValueError::QtyNegative(raw));
        }
        if raw as u64 > QTY_MAX {
            return Err(ValueError::QtyTooLarge(raw));
        }
        Ok(Qty(raw as u64))
    }

    /// For values read back from our own log/snapshot, which were valid when
    /// written; a violation there is corruption the codec reports.
    pub fn from_stored(raw: u64) -> Option<Qty> {
        (raw <= QTY_MAX).then_some(Qty(raw))
    }

    pub fn get(self) -> u64 {
        self.0
    }

    /// `self + delta`, or why it is out of range. Checked arithmetic: both
    /// operands are bounded by 2^53, so the i64 sum cannot overflow, and the
    /// result is checked against both ends.
    pub fn apply(self, delta: Delta) -> Result<Qty, QtyBound> {
        let sum = self.0 as i64 + delta.get();
        if sum < 0 {
            Err(QtyBound::BelowZero)
        } else if sum as u64 > QTY_MAX {
            Err(QtyBound::Overflow)
        } else {
            Ok(Qty(sum as u64))
        }
    }
}

/// Which end of the quantity range a delta would cross.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QtyBound {
    BelowZero,
    Overflow,
}

/// A quantity change in `-DELTA_ABS_MAX..=DELTA_ABS_MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Delta(i64);

impl Delta {
    pub fn new(raw: i64) -> Result<Delta, ValueError> {
        if !(-DELTA_ABS_MAX..=DELTA_ABS_MAX).contains(&raw) {
            return Err(ValueError::DeltaOutOfRange(raw));
        }
        Ok(Delta(raw))
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

/// A trimmed item name, 1..=200 characters, no control characters.
///
/// Stored as `Arc<str>` so that cloning an owner's state for a snapshot copies
/// a pointer, not every name (this keeps the snapshot pause short).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ItemName(Arc<str>);

impl ItemName {
    pub fn new(raw: &str) -> Result<ItemName, ValueError> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(ValueError::NameEmpty);
        }
        let chars = trimmed.chars().count();
        if chars > NAME_CHARS_MAX {
            return Err(ValueError::NameTooLong(chars));
        }
        if trimmed.chars().any(char::is_control) {
            return Err(ValueError::NameControlChar);
        }
        Ok(ItemName(Arc::from(trimmed)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The uniqueness key: names are unique per owner, case-insensitively.
    /// Full Unicode lowercase mapping, so `MILK`, `Milk` and `milk` collide.
    pub fn unique_key(&self) -> NameKey {
        NameKey(Arc::from(self.0.to_lowercase()))
    }
}

impl fmt::Debug for ItemName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// Case-folded name used by the per-owner uniqueness index.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NameKey(Arc<str>);

/// An owner id: 1..=64 characters of `[A-Za-z0-9._-]`. It is the JWT `sub`,
/// and it names the namespace on disk, so the charset is deliberately narrow.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OwnerId(Arc<str>);

impl OwnerId {
    pub fn new(raw: &str) -> Result<OwnerId, ValueError> {
        let ok_len = (1..=OWNER_ID_BYTES_MAX).contains(&raw.len());
        let ok_chars = raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !(ok_len && ok_chars) {
            return Err(ValueError::OwnerId);
        }
        Ok(OwnerId(Arc::from(raw)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for OwnerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for OwnerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a quantity changed: a short code such as `sale`, `restock` or
/// `correction`, 1..=`REASON_BYTES_MAX` bytes of `^[a-z][a-z0-9_.-]*$`.
/// Not trimmed: a code with spaces is refused, not repaired.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Reason(Box<str>);

impl Reason {
    pub fn new(raw: &str) -> Result<Reason, ValueError> {
        let bytes = raw.as_bytes();
        let ok = (1..=REASON_BYTES_MAX).contains(&bytes.len())
            && bytes[0].is_ascii_lowercase()
            && bytes.iter().all(|&b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
            });
        if !ok {
            let shown: String = raw.chars().take(REASON_BYTES_MAX + 8).collect();
            return Err(ValueError::Reason(shown));
        }
        Ok(Reason(raw.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// What a change refers to outside CountIQ (an order id, a ticket):
/// 1..=`REFERENCE_BYTES_MAX` bytes, no control characters. Validated like
/// an item name, but bounded in bytes and kept exactly as sent (not
/// trimmed: a reference is compared by the client, byte for byte).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Reference(Box<str>);

impl Reference {
    pub fn new(raw: &str) -> Result<Reference, ValueError> {
        if raw.is_empty() {
            return Err(ValueError::ReferenceEmpty);
        }
        if raw.len() > REFERENCE_BYTES_MAX {
            return Err(ValueError::ReferenceTooLong(raw.len()));
        }
        if raw.chars().any(char::is_control) {
            return Err(ValueError::ReferenceControlChar);
        }
        Ok(Reference(raw.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// The optional `reason` and `reference` of a qty-changing write, as its
/// event and its history entries carry them. One pointer wide: absent (the
/// common case) costs 8 bytes per history entry and nothing on the heap;
/// present, one shared allocation holds both (cloning it into the event and
/// the history entries copies the pointer).
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Note(Option<Arc<NoteParts>>);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct NoteParts {
    reason: Option<Reason>,
    reference: Option<Reference>,
}

impl Note {
    /// No reason, no reference.
    pub const NONE: Note = Note(None);

    pub fn new(reason: Option<Reason>, reference: Option<Reference>) -> Note {
        if reason.is_none() && reference.is_none() {
            return Note(None);
        }
        Note(Some(Arc::new(NoteParts { reason, reference })))
    }

    pub fn reason(&self) -> Option<&Reason> {
        self.0.as_ref().and_then(|p| p.reason.as_ref())
    }

    pub fn reference(&self) -> Option<&Reference> {
        self.0.as_ref().and_then(|p| p.reference.as_ref())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }
}

impl fmt::Debug for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            None => f.write_str("Note::NONE"),
            Some(p) => f
                .debug_struct("Note")
                .field("reason", &p.reason)
                .field("reference", &p.reference)
                .finish(),
        }
    }
}

/// Wall-clock time in microseconds since the Unix epoch. Chosen by the actor
/// when a transition is decided and stored in the event, so replay is exact.
pub type Micros = i64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qty_accepts_its_whole_range_and_nothing_else() {
        assert_eq!(Qty::new(0).map(Qty::get), Ok(0));
        assert_eq!(Qty::new(QTY_MAX as i64).map(Qty::get), Ok(QTY_MAX));
        assert_eq!(Qty::new(-1), Err(ValueError::QtyNegative(-1)));
        assert_eq!(
            Qty::new(QTY_MAX as i64 + 1),
            Err(ValueError::QtyTooLarge(QTY_MAX as i64 + 1))
        );
        assert_eq!(Qty::new(i64::MIN), Err(ValueError::QtyNegative(i64::MIN)));
        assert_eq!(Qty::new(i64::MAX), Err(ValueError::QtyTooLarge(i64::MAX)));
    }

    #[test]
    fn delta_range_is_symmetric() {
        assert!(Delta::new(DELTA_ABS_MAX).is_ok());
        assert!(Delta::new(-DELTA_ABS_MAX).is_ok());
        assert!(Delta::new(0).is_ok());
        assert!(Delta::new(DELTA_ABS_MAX + 1).is_err());
        assert!(Delta::new(-DELTA_ABS_MAX - 1).is_err());
        assert!(Delta::new(i64::MIN).is_err());
        assert!(Delta::new(i64::MAX).is_err());
    }

    #[test]
    fn qty_apply_is_checked_at_both_ends() {
        let max = Qty::new(QTY_MAX as i64).unwrap();
        let zero = Qty::ZERO;
        let one = Delta::new(1).unwrap();
        let minus_one = Delta::new(-1).unwrap();
        assert_eq!(max.apply(one), Err(QtyBound::Overflow));
        assert_eq!(zero.apply(minus_one), Err(QtyBound::BelowZero));
        assert_eq!(max.apply(minus_one).map(Qty::get), Ok(QTY_MAX - 1));
        let big = Delta::new(DELTA_ABS_MAX).unwrap();
        let neg_big = Delta::new(-DELTA_ABS_MAX).unwrap();
        assert_eq!(max.apply(big), Err(QtyBound::Overflow));
        assert_eq!(max.apply(neg_big).map(Qty::get), Ok(0));
        assert_eq!(zero.apply(neg_big), Err(QtyBound::BelowZero));
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(ItemName::new("  milk \t").unwrap().as_str(), "milk");
        assert_eq!(ItemName::new("   "), Err(ValueError::NameEmpty));
        assert_eq!(ItemName::new(""), Err(ValueError::NameEmpty));
        let exactly = "é".repeat(NAME_CHARS_MAX);
        assert!(
            ItemName::new(&exactly).is_ok(),
            "200 two-byte chars are 200 chars"
        );
        let over = "a".repeat(NAME_CHARS_MAX + 1);
        assert_eq!(ItemName::new(&over), Err(ValueError::NameTooLong(201)));
        assert_eq!(ItemName::new("mi\u{0}lk"), Err(ValueError::NameControlChar));
        assert_eq!(ItemName::new("mi\nlk"), Err(ValueError::NameControlChar));
        assert_eq!(
            ItemName::new("mi\u{7f}lk"),
            Err(ValueError::NameControlChar)
        );
    }

    #[test]
    fn name_keys_fold_case() {
        let a = ItemName::new("Milk").unwrap().unique_key();
        let b = ItemName::new(" mILK ").unwrap().unique_key();
        let c = ItemName::new("milk2").unwrap().unique_key();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn reasons_are_short_lowercase_codes() {
        for ok in ["sale", "restock", "a", "x1", "cycle_count", "po.v2-b"] {
            assert_eq!(Reason::new(ok).unwrap().as_str(), ok);
        }
        assert!(Reason::new(&"a".repeat(REASON_BYTES_MAX)).is_ok());
        for bad in [
            "", "Sale", "1sale", "_x", "-x", ".x", "sa le", " sale", "sale ", "sälé", "sale!",
            "sa\nle", "SALE",
        ] {
            assert!(
                matches!(Reason::new(bad), Err(ValueError::Reason(_))),
                "{bad:?}"
            );
        }
        assert!(Reason::new(&"a".repeat(REASON_BYTES_MAX + 1)).is_err());
    }

    #[test]
    fn references_are_bounded_printable_text_kept_as_sent() {
        assert_eq!(Reference::new(" order 42 ").unwrap().as_str(), " order 42 ");
        assert_eq!(
            Reference::new("Bestellung Nr. 7 ✓").unwrap().as_str(),
            "Bestellung Nr. 7 ✓"
        );
        assert!(Reference::new(&"r".repeat(REFERENCE_BYTES_MAX)).is_ok());
        // Bytes, not characters: 65 two-byte characters are 130 bytes.
        assert_eq!(
            Reference::new(&"é".repeat(65)),
            Err(ValueError::ReferenceTooLong(130))
        );
        assert_eq!(
            Reference::new(&"r".repeat(REFERENCE_BYTES_MAX + 1)),
            Err(ValueError::ReferenceTooLong(REFERENCE_BYTES_MAX + 1))
        );
        assert_eq!(Reference::new(""), Err(ValueError::ReferenceEmpty));
        for bad in ["a\u{0}b", "a\nb", "a\tb", "\u{7f}", "x\u{85}"] {
            assert_eq!(
                Reference::new(bad),
                Err(ValueError::ReferenceControlChar),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn notes_are_one_pointer_and_empty_when_both_are_absent() {
        assert_eq!(std::mem::size_of::<Note>(), std::mem::size_of::<usize>());
        assert!(Note::new(None, None).is_empty());
        assert_eq!(Note::new(None, None), Note::NONE);
        let n = Note::new(Some(Reason::new("sale").unwrap()), None);
        assert!(!n.is_empty());
        assert_eq!(n.reason().map(Reason::as_str), Some("sale"));
        assert_eq!(n.reference(), None);
    }

    #[test]
    fn owner_ids_are_narrow() {
        assert!(OwnerId::new("alice").is_ok());
        assert!(OwnerId::new("a.b_c-D9").is_ok());
        assert!(OwnerId::new(&"x".repeat(64)).is_ok());
        assert!(OwnerId::new(&"x".repeat(65)).is_err());
        assert!(OwnerId::new("").is_err());
        assert!(OwnerId::new("a/b").is_err());
        assert!(OwnerId::new("a b").is_err());
        assert!(OwnerId::new("ålice").is_err());
    }
}
