//! The on-disk codec: the only module that knows bincode.
//!
//! Domain types are never encoded directly. Each on-disk shape has its own
//! `…V1` type here, converted from and to the domain, so the domain can change
//! without changing bytes on disk, and a future `V2` can sit beside `V1`
//! (every file header carries the format version that selects it).
//!
//! Encoding: bincode 2.0.1, little endian, variable-length integers
//! (`CONFIG`). Decoding is bounded by `RECORD_BYTES_MAX`, so a corrupt length
//! can never make us allocate gigabytes. A frame is `u32 len`, `u32 CRC32C`
//! over len and payload, then the payload (a `RecordV1` in the log, a
//! snapshot frame in a snapshot). The byte layout of frames, records and
//! snapshot frames, with the encoding rules and an example, is in
//! `snapshots/FORMAT.md`, the one full copy.

use bincode::config::{Configuration, LittleEndian, Varint};
use bincode::{Decode, Encode};
use thiserror::Error;
use uuid::Uuid;

use crate::domain::idempotency::{IdemKey, KeyRecord, StoredResponse};
use crate::domain::{
    Change, Event, HistoryEntry, Hold, Item, ItemName, Note, Outcome, OwnerId, Qty, QtyVersion,
    Reason, Reference, Rejection, TxChange, HISTORY_PER_ITEM_MAX,
};

/// Largest encoded record payload. A 1000-op transaction with its stored
/// idempotent response (1000 items with 200-character names) is ~300 KiB.
pub const RECORD_BYTES_MAX: usize = 1 << 20;
/// Frame header: length + CRC.
pub const FRAME_HEADER_BYTES: usize = 8;

pub type Config = Configuration<LittleEndian, Varint>;
pub const CONFIG: Config = bincode::config::standard()
    .with_little_endian()
    .with_variable_int_encoding();

/// Why bytes could not be turned back into a record.
#[derive(Debug, Error)]
pub enum CodecError {
    #[error("bincode: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    #[error("{0} trailing bytes after the payload")]
    Trailing(usize),
    #[error("invalid value in record: {0}")]
    Invalid(&'static str),
}

/// One WAL record: a transition of one owner, with the idempotency key that
/// guards it (both, either, never neither).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub lsn: u64,
    pub owner: OwnerId,
    pub event: Option<Event>,
    pub key: Option<KeyRecord>,
}

// ---- on-disk shapes, version 1 -------------------------------------------

#[derive(Debug, Encode, Decode)]
struct RecordV1 {
    lsn: u64,
    owner: String,
    event: Option<EventV1>,
    key: Option<KeyRecordV1>,
}

#[derive(Debug, Encode, Decode)]
struct ItemV1 {
    id: u128,
    name: String,
    qty: u64,
    version: u64,
    created_at: i64,
    updated_at: i64,
}

#[derive(Debug, Encode, Decode)]
struct QtyVersionV1 {
    id: u128,
    qty: u64,
    version: u64,
}

#[derive(Debug, Encode, Decode)]
enum EventV1 {
    Created(ItemV1),
    Replaced(ItemV1),
    QtySet { change: QtyVersionV1, at: i64 },
    Deleted { id: u128 },
    Transacted { changes: Vec<QtyVersionV1>, at: i64 },
}

#[derive(Debug, Encode, Decode)]
struct KeyRecordV1 {
    key: String,
    fingerprint: [u8; 32],
    response: ResponseV1,
    expires_at: i64,
}

#[derive(Debug, Encode, Decode)]
enum ResponseV1 {
    Created(ItemV1),
    Updated(ItemV1),
    Deleted,
    Transacted(Vec<ItemV1>),
    Rejected(RejectionV1),
}

#[derive(Debug, Encode, Decode)]
enum RejectionV1 {
    NotFound { op_index: Option<u32> },
    NameTaken,
    QtyBelowZero { op_index: Option<u32> },
    QtyOverflow { op_index: Option<u32> },
    VersionMismatch { current: u64 },
    ItemLimit,
}

// ---- on-disk shapes, version 3 (segments v3, snapshots v2) -----------------
//
// Version 3 adds reservations and history: items carry `reserved`, four
// hold events, the hold outcome and rejections. Version 1 shapes are read by
// upgrading them to version 3 (`From<…V1> for …V3`), then converting once.

#[derive(Debug, Encode, Decode)]
struct RecordV3 {
    lsn: u64,
    owner: String,
    event: Option<EventV3>,
    key: Option<KeyRecordV3>,
}

#[derive(Debug, Encode, Decode)]
struct ItemV3 {
    id: u128,
    name: String,
    qty: u64,
    reserved: u64,
    version: u64,
    created_at: i64,
    updated_at: i64,
}

#[derive(Debug, Encode, Decode)]
struct HoldV3 {
    id: u128,
    item: u128,
    qty: u64,
    created_at: i64,
    expires_at: i64,
}

#[derive(Debug, Encode, Decode)]
enum EventV3 {
    Created(ItemV3),
    Replaced(ItemV3),
    QtySet {
        change: QtyVersionV1,
        at: i64,
    },
    Deleted {
        id: u128,
    },
    Transacted {
        changes: Vec<QtyVersionV1>,
        at: i64,
    },
    Reserved {
        hold: HoldV3,
        version: u64,
    },
    HoldCommitted {
        hold: u128,
        change: QtyVersionV1,
        at: i64,
    },
    HoldReleased {
        hold: u128,
        version: u64,
        at: i64,
    },
    HoldsExpired {
        holds: Vec<u128>,
        at: i64,
    },
}

#[derive(Debug, Encode, Decode)]
struct KeyRecordV3 {
    key: String,
    fingerprint: [u8; 32],
    response: ResponseV3,
    expires_at: i64,
}

#[derive(Debug, Encode, Decode)]
enum ResponseV3 {
    Created(ItemV3),
    Updated(ItemV3),
    Deleted,
    Transacted(Vec<ItemV3>),
    Rejected(RejectionV3),
    Reserved(HoldV3, ItemV3),
}

#[derive(Debug, Encode, Decode)]
enum RejectionV3 {
    NotFound {
        op_index: Option<u32>,
    },
    NameTaken,
    QtyBelowZero {
        op_index: Option<u32>,
    },
    QtyOverflow {
        op_index: Option<u32>,
    },
    VersionMismatch {
        current: u64,
    },
    ItemLimit,
    InsufficientAvailable {
        available: u64,
        op_index: Option<u32>,
    },
    HoldLimit,
    HoldNotFound,
}

/// One item's history in a snapshot (a chunk element).
#[derive(Debug, Encode, Decode)]
struct HistoryV3 {
    item: u128,
    entries: Vec<EntryV3>,
}

#[derive(Debug, Encode, Decode)]
struct EntryV3 {
    version: u64,
    at: i64,
    change: ChangeV3,
    qty: u64,
    reserved: u64,
    delta: i64,
    key: Option<String>,
}

#[derive(Debug, Encode, Decode)]
enum ChangeV3 {
    Created,
    Replaced,
    Adjusted,
    Transacted,
    Reserved(u128),
    Committed(u128),
    Released(u128),
    Expired(u128),
}

// ---- on-disk shapes, version 4 (segments v4, snapshots v3) -----------------
//
// Version 4 adds the `reason` and `reference` of qty-changing writes (a
// `NoteV4` on those events and on history entries) and holds inside
// transactions (placed, committed and released hold lists on `Transacted`,
// holds in its stored response, an `op_index` on the hold rejections and a
// new `NoteConflict`). Version 3 shapes are read by upgrading them to
// version 4 (`From<…V3> for …V4`: no notes, no holds in transactions);
// version 1 goes through version 3 first.

#[derive(Debug, Encode, Decode)]
struct RecordV4 {
    lsn: u64,
    owner: String,
    event: Option<EventV4>,
    key: Option<KeyRecordV4>,
}

/// A write's reason and reference; `None` in the `Option<NoteV4>` that
/// carries it when both are absent (one byte on disk).
#[derive(Debug, Encode, Decode)]
struct NoteV4 {
    reason: Option<String>,
    reference: Option<String>,
}

#[derive(Debug, Encode, Decode)]
struct TxChangeV4 {
    change: QtyVersionV1,
    note: Option<NoteV4>,
}

#[derive(Debug, Encode, Decode)]
enum EventV4 {
    Created {
        item: ItemV3,
        note: Option<NoteV4>,
    },
    Replaced {
        item: ItemV3,
        note: Option<NoteV4>,
    },
    QtySet {
        change: QtyVersionV1,
        at: i64,
        note: Option<NoteV4>,
    },
    Deleted {
        id: u128,
    },
    Transacted {
        changes: Vec<TxChangeV4>,
        placed: Vec<HoldV3>,
        committed: Vec<u128>,
        released: Vec<u128>,
        at: i64,
    },
    Reserved {
        hold: HoldV3,
        version: u64,
    },
    HoldCommitted {
        hold: u128,
        change: QtyVersionV1,
        at: i64,
        note: Option<NoteV4>,
    },
    HoldReleased {
        hold: u128,
        version: u64,
        at: i64,
    },
    HoldsExpired {
        holds: Vec<u128>,
        at: i64,
    },
}

#[derive(Debug, Encode, Decode)]
struct KeyRecordV4 {
    key: String,
    fingerprint: [u8; 32],
    response: ResponseV4,
    expires_at: i64,
}

#[derive(Debug, Encode, Decode)]
enum ResponseV4 {
    Created(ItemV3),
    Updated(ItemV3),
    Deleted,
    Transacted(Vec<ItemV3>, Vec<HoldV3>),
    Rejected(RejectionV4),
    Reserved(HoldV3, ItemV3),
}

#[derive(Debug, Encode, Decode)]
enum RejectionV4 {
    NotFound {
        op_index: Option<u32>,
    },
    NameTaken,
    QtyBelowZero {
        op_index: Option<u32>,
    },
    QtyOverflow {
        op_index: Option<u32>,
    },
    VersionMismatch {
        current: u64,
    },
    ItemLimit,
    InsufficientAvailable {
        available: u64,
        op_index: Option<u32>,
    },
    HoldLimit {
        op_index: Option<u32>,
    },
    HoldNotFound {
        op_index: Option<u32>,
    },
    NoteConflict {
        op_index: Option<u32>,
    },
}

/// One item's history in a version 3 snapshot (a chunk element).
#[derive(Debug, Encode, Decode)]
struct HistoryV4 {
    item: u128,
    entries: Vec<EntryV4>,
}

#[derive(Debug, Encode, Decode)]
struct EntryV4 {
    version: u64,
    at: i64,
    change: ChangeV3,
    qty: u64,
    reserved: u64,
    delta: i64,
    key: Option<String>,
    note: Option<NoteV4>,
}

// ---- version 3 → version 4 (reading old files) ------------------------------

impl From<EventV3> for EventV4 {
    fn from(e: EventV3) -> Self {
        match e {
            EventV3::Created(item) => EventV4::Created { item, note: None },
            EventV3::Replaced(item) => EventV4::Replaced { item, note: None },
            EventV3::QtySet { change, at } => EventV4::QtySet {
                change,
                at,
                note: None,
            },
            EventV3::Deleted { id } => EventV4::Deleted { id },
            EventV3::Transacted { changes, at } => EventV4::Transacted {
                changes: changes
                    .into_iter()
                    .map(|change| TxChangeV4 { change, note: None })
                    .collect(),
                placed: Vec::new(),
                committed: Vec::new(),
                released: Vec::new(),
                at,
            },
            EventV3::Reserved { hold, version } => EventV4::Reserved { hold, version },
            EventV3::HoldCommitted { hold, change, at } => EventV4::HoldCommitted {
                hold,
                change,
                at,
                note: None,
            },
            EventV3::HoldReleased { hold, version, at } => {
                EventV4::HoldReleased { hold, version, at }
            }
            EventV3::HoldsExpired { holds, at } => EventV4::HoldsExpired { holds, at },
        }
    }
}

impl From<RejectionV3> for RejectionV4 {
    fn from(r: RejectionV3) -> Self {
        match r {
            RejectionV3::NotFound { op_index } => RejectionV4::NotFound { op_index },
            RejectionV3::NameTaken => RejectionV4::NameTaken,
            RejectionV3::QtyBelowZero { op_index } => RejectionV4::QtyBelowZero { op_index },
            RejectionV3::QtyOverflow { op_index } => RejectionV4::QtyOverflow { op_index },
            RejectionV3::VersionMismatch { current } => RejectionV4::VersionMismatch { current },
            RejectionV3::ItemLimit => RejectionV4::ItemLimit,
            RejectionV3::InsufficientAvailable {
                available,
                op_index,
            } => RejectionV4::InsufficientAvailable {
                available,
                op_index,
            },
            RejectionV3::HoldLimit => RejectionV4::HoldLimit { op_index: None },
            RejectionV3::HoldNotFound => RejectionV4::HoldNotFound { op_index: None },
        }
    }
}

impl From<ResponseV3> for ResponseV4 {
    fn from(r: ResponseV3) -> Self {
        match r {
            ResponseV3::Created(i) => ResponseV4::Created(i),
            ResponseV3::Updated(i) => ResponseV4::Updated(i),
            ResponseV3::Deleted => ResponseV4::Deleted,
            ResponseV3::Transacted(items) => ResponseV4::Transacted(items, Vec::new()),
            ResponseV3::Rejected(rej) => ResponseV4::Rejected(rej.into()),
            ResponseV3::Reserved(h, i) => ResponseV4::Reserved(h, i),
        }
    }
}

impl From<KeyRecordV3> for KeyRecordV4 {
    fn from(k: KeyRecordV3) -> Self {
        KeyRecordV4 {
            key: k.key,
            fingerprint: k.fingerprint,
            response: k.response.into(),
            expires_at: k.expires_at,
        }
    }
}

impl From<RecordV3> for RecordV4 {
    fn from(r: RecordV3) -> Self {
        RecordV4 {
            lsn: r.lsn,
            owner: r.owner,
            event: r.event.map(Into::into),
            key: r.key.map(Into::into),
        }
    }
}

impl From<EntryV3> for EntryV4 {
    fn from(e: EntryV3) -> Self {
        EntryV4 {
            version: e.version,
            at: e.at,
            change: e.change,
            qty: e.qty,
            reserved: e.reserved,
            delta: e.delta,
            key: e.key,
            note: None,
        }
    }
}

impl From<HistoryV3> for HistoryV4 {
    fn from(h: HistoryV3) -> Self {
        HistoryV4 {
            item: h.item,
            entries: h.entries.into_iter().map(Into::into).collect(),
        }
    }
}

// ---- version 1 → version 3 (reading old files) ------------------------------

impl From<ItemV1> for ItemV3 {
    fn from(i: ItemV1) -> Self {
        ItemV3 {
            id: i.id,
            name: i.name,
            qty: i.qty,
            reserved: 0,
            version: i.version,
            created_at: i.created_at,
            updated_at: i.updated_at,
        }
    }
}

impl From<EventV1> for EventV3 {
    fn from(e: EventV1) -> Self {
        match e {
            EventV1::Created(i) => EventV3::Created(i.into()),
            EventV1::Replaced(i) => EventV3::Replaced(i.into()),
            EventV1::QtySet { change, at } => EventV3::QtySet { change, at },
            EventV1::Deleted { id } => EventV3::Deleted { id },
            EventV1::Transacted { changes, at } => EventV3::Transacted { changes, at },
        }
    }
}

impl From<RejectionV1> for RejectionV3 {
    fn from(r: RejectionV1) -> Self {
        match r {
            RejectionV1::NotFound { op_index } => RejectionV3::NotFound { op_index },
            RejectionV1::NameTaken => RejectionV3::NameTaken,
            RejectionV1::QtyBelowZero { op_index } => RejectionV3::QtyBelowZero { op_index },
            RejectionV1::QtyOverflow { op_index } => RejectionV3::QtyOverflow { op_index },
            RejectionV1::VersionMismatch { current } => RejectionV3::VersionMismatch { current },
            RejectionV1::ItemLimit => RejectionV3::ItemLimit,
        }
    }
}

impl From<ResponseV1> for ResponseV3 {
    fn from(r: ResponseV1) -> Self {
        match r {
            ResponseV1::Created(i) => ResponseV3::Created(i.into()),
            ResponseV1::Updated(i) => ResponseV3::Updated(i.into()),
            ResponseV1::Deleted => ResponseV3::Deleted,
            ResponseV1::Transacted(items) => {
                ResponseV3::Transacted(items.into_iter().map(Into::into).collect())
            }
            ResponseV1::Rejected(rej) => ResponseV3::Rejected(rej.into()),
        }
    }
}

impl From<KeyRecordV1> for KeyRecordV3 {
    fn from(k: KeyRecordV1) -> Self {
        KeyRecordV3 {
            key: k.key,
            fingerprint: k.fingerprint,
            response: k.response.into(),
            expires_at: k.expires_at,
        }
    }
}

impl From<RecordV1> for RecordV3 {
    fn from(r: RecordV1) -> Self {
        RecordV3 {
            lsn: r.lsn,
            owner: r.owner,
            event: r.event.map(Into::into),
            key: r.key.map(Into::into),
        }
    }
}

// ---- domain → disk ---------------------------------------------------------

impl From<&Item> for ItemV3 {
    fn from(i: &Item) -> Self {
        ItemV3 {
            id: i.id.as_u128(),
            name: i.name.as_str().to_owned(),
            qty: i.qty.get(),
            reserved: i.reserved.get(),
            version: i.version,
            created_at: i.created_at,
            updated_at: i.updated_at,
        }
    }
}

impl From<&Hold> for HoldV3 {
    fn from(h: &Hold) -> Self {
        HoldV3 {
            id: h.id.as_u128(),
            item: h.item.as_u128(),
            qty: h.qty.get(),
            created_at: h.created_at,
            expires_at: h.expires_at,
        }
    }
}

impl From<&QtyVersion> for QtyVersionV1 {
    fn from(c: &QtyVersion) -> Self {
        QtyVersionV1 {
            id: c.id.as_u128(),
            qty: c.qty.get(),
            version: c.version,
        }
    }
}

// ---- domain → version 3 (tests and golden files of old formats only) ------
//
// Only values that version 3 can express: a note, a transaction with hold
// ops, or a hold rejection with an op index panics (a test bug, never data).

fn assert_no_note(note: &Note) {
    assert!(note.is_empty(), "version 3 has no reason or reference");
}

impl From<&Event> for EventV3 {
    fn from(e: &Event) -> Self {
        match e {
            Event::Created(i, note) => {
                assert_no_note(note);
                EventV3::Created(i.into())
            }
            Event::Replaced(i, note) => {
                assert_no_note(note);
                EventV3::Replaced(i.into())
            }
            Event::QtySet { change, at, note } => {
                assert_no_note(note);
                EventV3::QtySet {
                    change: change.into(),
                    at: *at,
                }
            }
            Event::Deleted { id } => EventV3::Deleted { id: id.as_u128() },
            Event::Transacted {
                changes,
                placed,
                committed,
                released,
                at,
            } => {
                assert!(
                    placed.is_empty() && committed.is_empty() && released.is_empty(),
                    "version 3 has no holds in transactions"
                );
                EventV3::Transacted {
                    changes: changes
                        .iter()
                        .map(|c| {
                            assert_no_note(&c.note);
                            (&c.change).into()
                        })
                        .collect(),
                    at: *at,
                }
            }
            Event::Reserved { hold, version } => EventV3::Reserved {
                hold: hold.into(),
                version: *version,
            },
            Event::HoldCommitted {
                hold,
                change,
                at,
                note,
            } => {
                assert_no_note(note);
                EventV3::HoldCommitted {
                    hold: hold.as_u128(),
                    change: change.into(),
                    at: *at,
                }
            }
            Event::HoldReleased { hold, version, at } => EventV3::HoldReleased {
                hold: hold.as_u128(),
                version: *version,
                at: *at,
            },
            Event::HoldsExpired { holds, at } => EventV3::HoldsExpired {
                holds: holds.iter().map(|h| h.as_u128()).collect(),
                at: *at,
            },
        }
    }
}

impl From<&Rejection> for RejectionV3 {
    fn from(r: &Rejection) -> Self {
        match *r {
            Rejection::NotFound { op_index } => RejectionV3::NotFound { op_index },
            Rejection::NameTaken => RejectionV3::NameTaken,
            Rejection::QtyBelowZero { op_index } => RejectionV3::QtyBelowZero { op_index },
            Rejection::QtyOverflow { op_index } => RejectionV3::QtyOverflow { op_index },
            Rejection::VersionMismatch { current } => RejectionV3::VersionMismatch { current },
            Rejection::ItemLimit => RejectionV3::ItemLimit,
            Rejection::InsufficientAvailable {
                available,
                op_index,
            } => RejectionV3::InsufficientAvailable {
                available,
                op_index,
            },
            Rejection::HoldLimit { op_index: None } => RejectionV3::HoldLimit,
            Rejection::HoldNotFound { op_index: None } => RejectionV3::HoldNotFound,
            ref other => panic!("version 3 cannot express {other:?}"),
        }
    }
}

impl From<&StoredResponse> for ResponseV3 {
    fn from(r: &StoredResponse) -> Self {
        match r {
            Ok(Outcome::Created(i)) => ResponseV3::Created(i.into()),
            Ok(Outcome::Updated(i)) => ResponseV3::Updated(i.into()),
            Ok(Outcome::Deleted) => ResponseV3::Deleted,
            Ok(Outcome::Transacted(items, holds)) => {
                assert!(holds.is_empty(), "version 3 has no holds in transactions");
                ResponseV3::Transacted(items.iter().map(Into::into).collect())
            }
            Ok(Outcome::Reserved(h, i)) => ResponseV3::Reserved(h.into(), i.into()),
            Err(rej) => ResponseV3::Rejected(rej.into()),
        }
    }
}

impl From<&KeyRecord> for KeyRecordV3 {
    fn from(k: &KeyRecord) -> Self {
        KeyRecordV3 {
            key: k.key.as_str().to_owned(),
            fingerprint: k.fingerprint,
            response: (&k.response).into(),
            expires_at: k.expires_at,
        }
    }
}

impl From<&Change> for ChangeV3 {
    fn from(c: &Change) -> Self {
        match *c {
            Change::Created => ChangeV3::Created,
            Change::Replaced => ChangeV3::Replaced,
            Change::Adjusted => ChangeV3::Adjusted,
            Change::Transacted => ChangeV3::Transacted,
            Change::Reserved { hold } => ChangeV3::Reserved(hold.as_u128()),
            Change::Committed { hold } => ChangeV3::Committed(hold.as_u128()),
            Change::Released { hold } => ChangeV3::Released(hold.as_u128()),
            Change::Expired { hold } => ChangeV3::Expired(hold.as_u128()),
        }
    }
}

// ---- domain → version 4 (what this build writes) --------------------------

fn note_v4(note: &Note) -> Option<NoteV4> {
    if note.is_empty() {
        return None;
    }
    Some(NoteV4 {
        reason: note.reason().map(|r| r.as_str().to_owned()),
        reference: note.reference().map(|r| r.as_str().to_owned()),
    })
}

impl From<&Event> for EventV4 {
    fn from(e: &Event) -> Self {
        match e {
            Event::Created(i, note) => EventV4::Created {
                item: i.into(),
                note: note_v4(note),
            },
            Event::Replaced(i, note) => EventV4::Replaced {
                item: i.into(),
                note: note_v4(note),
            },
            Event::QtySet { change, at, note } => EventV4::QtySet {
                change: change.into(),
                at: *at,
                note: note_v4(note),
            },
            Event::Deleted { id } => EventV4::Deleted { id: id.as_u128() },
            Event::Transacted {
                changes,
                placed,
                committed,
                released,
                at,
            } => EventV4::Transacted {
                changes: changes
                    .iter()
                    .map(|c| TxChangeV4 {
                        change: (&c.change).into(),
                        note: note_v4(&c.note),
                    })
                    .collect(),
                placed: placed.iter().map(Into::into).collect(),
                committed: committed.iter().map(|h| h.as_u128()).collect(),
                released: released.iter().map(|h| h.as_u128()).collect(),
                at: *at,
            },
            Event::Reserved { hold, version } => EventV4::Reserved {
                hold: hold.into(),
                version: *version,
            },
            Event::HoldCommitted {
                hold,
                change,
                at,
                note,
            } => EventV4::HoldCommitted {
                hold: hold.as_u128(),
                change: change.into(),
                at: *at,
                note: note_v4(note),
            },
            Event::HoldReleased { hold, version, at } => EventV4::HoldReleased {
                hold: hold.as_u128(),
                version: *version,
                at: *at,
            },
            Event::HoldsExpired { holds, at } => EventV4::HoldsExpired {
                holds: holds.iter().map(|h| h.as_u128()).collect(),
                at: *at,
            },
        }
    }
}

impl From<&Rejection> for RejectionV4 {
    fn from(r: &Rejection) -> Self {
        match *r {
            Rejection::NotFound { op_index } => RejectionV4::NotFound { op_index },
            Rejection::NameTaken => RejectionV4::NameTaken,
            Rejection::QtyBelowZero { op_index } => RejectionV4::QtyBelowZero { op_index },
            Rejection::QtyOverflow { op_index } => RejectionV4::QtyOverflow { op_index },
            Rejection::VersionMismatch { current } => RejectionV4::VersionMismatch { current },
            Rejection::ItemLimit => RejectionV4::ItemLimit,
            Rejection::InsufficientAvailable {
                available,
                op_index,
            } => RejectionV4::InsufficientAvailable {
                available,
                op_index,
            },
            Rejection::HoldLimit { op_index } => RejectionV4::HoldLimit { op_index },
            Rejection::HoldNotFound { op_index } => RejectionV4::HoldNotFound { op_index },
            Rejection::NoteConflict { op_index } => RejectionV4::NoteConflict { op_index },
        }
    }
}

impl From<&StoredResponse> for ResponseV4 {
    fn from(r: &StoredResponse) -> Self {
        match r {
            Ok(Outcome::Created(i)) => ResponseV4::Created(i.into()),
            Ok(Outcome::Updated(i)) => ResponseV4::Updated(i.into()),
            Ok(Outcome::Deleted) => ResponseV4::Deleted,
            Ok(Outcome::Transacted(items, holds)) => ResponseV4::Transacted(
                items.iter().map(Into::into).collect(),
                holds.iter().map(Into::into).collect(),
            ),
            Ok(Outcome::Reserved(h, i)) => ResponseV4::Reserved(h.into(), i.into()),
            Err(rej) => ResponseV4::Rejected(rej.into()),
        }
    }
}

impl From<&KeyRecord> for KeyRecordV4 {
    fn from(k: &KeyRecord) -> Self {
        KeyRecordV4 {
            key: k.key.as_str().to_owned(),
            fingerprint: k.fingerprint,
            response: (&k.response).into(),
            expires_at: k.expires_at,
        }
    }
}

impl From<&HistoryEntry> for EntryV4 {
    fn from(e: &HistoryEntry) -> Self {
        EntryV4 {
            version: e.version,
            at: e.at,
            change: (&e.change).into(),
            qty: e.qty.get(),
            reserved: e.reserved.get(),
            delta: e.delta,
            key: e.key.as_ref().map(|k| k.as_str().to_owned()),
            note: note_v4(&e.note),
        }
    }
}

// ---- domain → version 1 (tests and golden files of old formats only) ------
//
// Only values that version 1 can express: an item with holds, a hold event,
// outcome or rejection panics (a test bug, never data).

impl From<&Item> for ItemV1 {
    fn from(i: &Item) -> Self {
        assert_eq!(i.reserved, Qty::ZERO, "version 1 has no reservations");
        ItemV1 {
            id: i.id.as_u128(),
            name: i.name.as_str().to_owned(),
            qty: i.qty.get(),
            version: i.version,
            created_at: i.created_at,
            updated_at: i.updated_at,
        }
    }
}

impl From<&Event> for EventV1 {
    fn from(e: &Event) -> Self {
        // Through version 3, which panics on notes and holds in
        // transactions; then only version 1's five kinds are left.
        match EventV3::from(e) {
            EventV3::Created(i) => EventV1::Created(item_v1(i)),
            EventV3::Replaced(i) => EventV1::Replaced(item_v1(i)),
            EventV3::QtySet { change, at } => EventV1::QtySet { change, at },
            EventV3::Deleted { id } => EventV1::Deleted { id },
            EventV3::Transacted { changes, at } => EventV1::Transacted { changes, at },
            _ => panic!("version 1 cannot express {e:?}"),
        }
    }
}

fn item_v1(i: ItemV3) -> ItemV1 {
    assert_eq!(i.reserved, 0, "version 1 has no reservations");
    ItemV1 {
        id: i.id,
        name: i.name,
        qty: i.qty,
        version: i.version,
        created_at: i.created_at,
        updated_at: i.updated_at,
    }
}

impl From<&Rejection> for RejectionV1 {
    fn from(r: &Rejection) -> Self {
        match *r {
            Rejection::NotFound { op_index } => RejectionV1::NotFound { op_index },
            Rejection::NameTaken => RejectionV1::NameTaken,
            Rejection::QtyBelowZero { op_index } => RejectionV1::QtyBelowZero { op_index },
            Rejection::QtyOverflow { op_index } => RejectionV1::QtyOverflow { op_index },
            Rejection::VersionMismatch { current } => RejectionV1::VersionMismatch { current },
            Rejection::ItemLimit => RejectionV1::ItemLimit,
            ref other => panic!("version 1 cannot express {other:?}"),
        }
    }
}

impl From<&StoredResponse> for ResponseV1 {
    fn from(r: &StoredResponse) -> Self {
        match r {
            Ok(Outcome::Created(i)) => ResponseV1::Created(i.into()),
            Ok(Outcome::Updated(i)) => ResponseV1::Updated(i.into()),
            Ok(Outcome::Deleted) => ResponseV1::Deleted,
            Ok(Outcome::Transacted(items, holds)) if holds.is_empty() => {
                ResponseV1::Transacted(items.iter().map(Into::into).collect())
            }
            Err(rej) => ResponseV1::Rejected(rej.into()),
            Ok(other) => panic!("version 1 cannot express {other:?}"),
        }
    }
}

impl From<&KeyRecord> for KeyRecordV1 {
    fn from(k: &KeyRecord) -> Self {
        KeyRecordV1 {
            key: k.key.as_str().to_owned(),
            fingerprint: k.fingerprint,
            response: (&k.response).into(),
            expires_at: k.expires_at,
        }
    }
}

// ---- disk → domain (validating) -------------------------------------------

fn qty(raw: u64) -> Result<Qty, CodecError> {
    Qty::from_stored(raw).ok_or(CodecError::Invalid("qty out of range"))
}

impl TryFrom<ItemV3> for Item {
    type Error = CodecError;
    fn try_from(i: ItemV3) -> Result<Self, CodecError> {
        let name = ItemName::new(&i.name).map_err(|_| CodecError::Invalid("item name"))?;
        if name.as_str() != i.name || i.version == 0 || i.reserved > i.qty {
            return Err(CodecError::Invalid("item name, version or reserved"));
        }
        Ok(Item {
            id: Uuid::from_u128(i.id),
            name,
            qty: qty(i.qty)?,
            reserved: qty(i.reserved)?,
            version: i.version,
            created_at: i.created_at,
            updated_at: i.updated_at,
        })
    }
}

impl TryFrom<HoldV3> for Hold {
    type Error = CodecError;
    fn try_from(h: HoldV3) -> Result<Self, CodecError> {
        if h.qty == 0 || h.expires_at < h.created_at {
            return Err(CodecError::Invalid("hold qty or expiry"));
        }
        Ok(Hold {
            id: Uuid::from_u128(h.id),
            item: Uuid::from_u128(h.item),
            qty: qty(h.qty)?,
            created_at: h.created_at,
            expires_at: h.expires_at,
        })
    }
}

impl TryFrom<QtyVersionV1> for QtyVersion {
    type Error = CodecError;
    fn try_from(c: QtyVersionV1) -> Result<Self, CodecError> {
        Ok(QtyVersion {
            id: Uuid::from_u128(c.id),
            qty: qty(c.qty)?,
            version: c.version,
        })
    }
}

fn all<V, T: TryFrom<V, Error = CodecError>>(v: Vec<V>) -> Result<Vec<T>, CodecError> {
    v.into_iter().map(TryInto::try_into).collect()
}

fn note(raw: Option<NoteV4>) -> Result<Note, CodecError> {
    let Some(n) = raw else {
        return Ok(Note::NONE);
    };
    let reason = n
        .reason
        .map(|r| Reason::new(&r).map_err(|_| CodecError::Invalid("reason")))
        .transpose()?;
    let reference = n
        .reference
        .map(|r| Reference::new(&r).map_err(|_| CodecError::Invalid("reference")))
        .transpose()?;
    if reason.is_none() && reference.is_none() {
        return Err(CodecError::Invalid(
            "a note with neither reason nor reference",
        ));
    }
    Ok(Note::new(reason, reference))
}

impl TryFrom<EventV4> for Event {
    type Error = CodecError;
    fn try_from(e: EventV4) -> Result<Self, CodecError> {
        let ids = |v: Vec<u128>| v.into_iter().map(Uuid::from_u128).collect();
        Ok(match e {
            EventV4::Created { item, note: n } => Event::Created(item.try_into()?, note(n)?),
            EventV4::Replaced { item, note: n } => Event::Replaced(item.try_into()?, note(n)?),
            EventV4::QtySet {
                change,
                at,
                note: n,
            } => Event::QtySet {
                change: change.try_into()?,
                at,
                note: note(n)?,
            },
            EventV4::Deleted { id } => Event::Deleted {
                id: Uuid::from_u128(id),
            },
            EventV4::Transacted {
                changes,
                placed,
                committed,
                released,
                at,
            } => Event::Transacted {
                changes: changes
                    .into_iter()
                    .map(|c| {
                        Ok(TxChange {
                            change: c.change.try_into()?,
                            note: note(c.note)?,
                        })
                    })
                    .collect::<Result<_, CodecError>>()?,
                placed: all(placed)?,
                committed: ids(committed),
                released: ids(released),
                at,
            },
            EventV4::Reserved { hold, version } => Event::Reserved {
                hold: hold.try_into()?,
                version,
            },
            EventV4::HoldCommitted {
                hold,
                change,
                at,
                note: n,
            } => Event::HoldCommitted {
                hold: Uuid::from_u128(hold),
                change: change.try_into()?,
                at,
                note: note(n)?,
            },
            EventV4::HoldReleased { hold, version, at } => Event::HoldReleased {
                hold: Uuid::from_u128(hold),
                version,
                at,
            },
            EventV4::HoldsExpired { holds, at } => Event::HoldsExpired {
                holds: ids(holds),
                at,
            },
        })
    }
}

impl From<RejectionV4> for Rejection {
    fn from(r: RejectionV4) -> Self {
        match r {
            RejectionV4::NotFound { op_index } => Rejection::NotFound { op_index },
            RejectionV4::NameTaken => Rejection::NameTaken,
            RejectionV4::QtyBelowZero { op_index } => Rejection::QtyBelowZero { op_index },
            RejectionV4::QtyOverflow { op_index } => Rejection::QtyOverflow { op_index },
            RejectionV4::VersionMismatch { current } => Rejection::VersionMismatch { current },
            RejectionV4::ItemLimit => Rejection::ItemLimit,
            RejectionV4::InsufficientAvailable {
                available,
                op_index,
            } => Rejection::InsufficientAvailable {
                available,
                op_index,
            },
            RejectionV4::HoldLimit { op_index } => Rejection::HoldLimit { op_index },
            RejectionV4::HoldNotFound { op_index } => Rejection::HoldNotFound { op_index },
            RejectionV4::NoteConflict { op_index } => Rejection::NoteConflict { op_index },
        }
    }
}

impl TryFrom<ResponseV4> for StoredResponse {
    type Error = CodecError;
    fn try_from(r: ResponseV4) -> Result<Self, CodecError> {
        Ok(match r {
            ResponseV4::Created(i) => Ok(Outcome::Created(i.try_into()?)),
            ResponseV4::Updated(i) => Ok(Outcome::Updated(i.try_into()?)),
            ResponseV4::Deleted => Ok(Outcome::Deleted),
            ResponseV4::Transacted(items, holds) => {
                Ok(Outcome::Transacted(all(items)?, all(holds)?))
            }
            ResponseV4::Reserved(h, i) => Ok(Outcome::Reserved(h.try_into()?, i.try_into()?)),
            ResponseV4::Rejected(rej) => Err(rej.into()),
        })
    }
}

impl TryFrom<KeyRecordV4> for KeyRecord {
    type Error = CodecError;
    fn try_from(k: KeyRecordV4) -> Result<Self, CodecError> {
        Ok(KeyRecord {
            key: IdemKey::parse(&k.key).ok_or(CodecError::Invalid("idempotency key"))?,
            fingerprint: k.fingerprint,
            response: k.response.try_into()?,
            expires_at: k.expires_at,
        })
    }
}

impl From<ChangeV3> for Change {
    fn from(c: ChangeV3) -> Self {
        let id = Uuid::from_u128;
        match c {
            ChangeV3::Created => Change::Created,
            ChangeV3::Replaced => Change::Replaced,
            ChangeV3::Adjusted => Change::Adjusted,
            ChangeV3::Transacted => Change::Transacted,
            ChangeV3::Reserved(h) => Change::Reserved { hold: id(h) },
            ChangeV3::Committed(h) => Change::Committed { hold: id(h) },
            ChangeV3::Released(h) => Change::Released { hold: id(h) },
            ChangeV3::Expired(h) => Change::Expired { hold: id(h) },
        }
    }
}

impl TryFrom<EntryV4> for HistoryEntry {
    type Error = CodecError;
    fn try_from(e: EntryV4) -> Result<Self, CodecError> {
        let key = match e.key {
            Some(k) => Some(IdemKey::parse(&k).ok_or(CodecError::Invalid("history key"))?),
            None => None,
        };
        Ok(HistoryEntry {
            version: e.version,
            at: e.at,
            change: e.change.into(),
            qty: qty(e.qty)?,
            reserved: qty(e.reserved)?,
            delta: e.delta,
            key,
            note: note(e.note)?,
        })
    }
}

impl TryFrom<HistoryV4> for (Uuid, Vec<HistoryEntry>) {
    type Error = CodecError;
    fn try_from(h: HistoryV4) -> Result<Self, CodecError> {
        if h.entries.is_empty() || h.entries.len() > HISTORY_PER_ITEM_MAX {
            return Err(CodecError::Invalid("history length"));
        }
        Ok((Uuid::from_u128(h.item), all(h.entries)?))
    }
}

/// Upgrade a decoded old value one version and convert it (old files).
fn upgrade<Old, New: From<Old>, T: TryFrom<New, Error = CodecError>>(
    v: Old,
) -> Result<T, CodecError> {
    New::from(v).try_into()
}

/// A version-1 key record, upgraded through version 3 to version 4.
fn key_from_v1(k: KeyRecordV1) -> Result<KeyRecord, CodecError> {
    KeyRecordV4::from(KeyRecordV3::from(k)).try_into()
}

// ---- records ---------------------------------------------------------------

/// Append one framed record (header + payload) to `out`. Called by the log
/// buffer under its lock, so it must be cheap: the hot `QtySet` path encodes
/// without allocating.
///
/// The fields are encoded one after another, which is byte-for-byte how
/// bincode encodes `RecordV4` (a struct is the concatenation of its fields);
/// `decode_payload` reads them back as `RecordV4`. Always the current
/// version (segment format 4).
pub fn encode_record(
    lsn: u64,
    owner: &OwnerId,
    event: Option<&Event>,
    key: Option<&KeyRecord>,
    out: &mut Vec<u8>,
) {
    encode_record_version(RECORDS_V4, lsn, owner, event, key, out)
}

/// `encode_record` in the record shapes of segment format
/// `segment_version`: `RecordV1` below `RECORDS_V3`, `RecordV3` below
/// `RECORDS_V4` (tests and golden files of old formats; panics on values
/// the old version cannot express).
pub fn encode_record_version(
    segment_version: u32,
    lsn: u64,
    owner: &OwnerId,
    event: Option<&Event>,
    key: Option<&KeyRecord>,
    out: &mut Vec<u8>,
) {
    assert!(
        event.is_some() || key.is_some(),
        "a record carries an event, a key, or both"
    );
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER_BYTES]);
    let mut enc = |v: &dyn EncodeDyn| v.encode_to(out);
    enc(&lsn);
    enc(&owner.as_str());
    if segment_version >= RECORDS_V4 {
        enc(&event.map(EventV4::from));
        enc(&key.map(KeyRecordV4::from));
    } else if segment_version >= RECORDS_V3 {
        enc(&event.map(EventV3::from));
        enc(&key.map(KeyRecordV3::from));
    } else {
        enc(&event.map(EventV1::from));
        enc(&key.map(KeyRecordV1::from));
    }
    let len = out.len() - start - FRAME_HEADER_BYTES;
    assert!(
        len <= RECORD_BYTES_MAX,
        "record of {len} bytes exceeds RECORD_BYTES_MAX"
    );
    let len_bytes = (len as u32).to_le_bytes();
    let crc = frame_crc(&len_bytes, &out[start + FRAME_HEADER_BYTES..]);
    out[start..start + 4].copy_from_slice(&len_bytes);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Object-safe helper so `encode_record` can encode heterogeneous fields in
/// one closure.
trait EncodeDyn {
    fn encode_to(&self, out: &mut Vec<u8>);
}

impl<T: Encode> EncodeDyn for T {
    fn encode_to(&self, out: &mut Vec<u8>) {
        // Writing into a Vec cannot fail, and our types have no failing
        // Encode impls: an error here is a bug.
        bincode::encode_into_std_write(self, out, CONFIG).expect("encoding into a Vec cannot fail");
    }
}

/// CRC32C over the length bytes followed by the payload.
pub fn frame_crc(len_bytes: &[u8; 4], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(len_bytes), payload)
}

/// Decode a payload whose CRC has been checked, in the current record
/// format (segment version 4).
pub fn decode_payload(payload: &[u8]) -> Result<Record, CodecError> {
    decode_record(payload, RECORDS_V4)
}

/// The first segment version whose records are `RecordV3`; versions 1 and
/// 2 hold `RecordV1`.
pub const RECORDS_V3: u32 = 3;
/// The first segment version whose records are `RecordV4` (reasons and
/// references, holds in transactions).
pub const RECORDS_V4: u32 = 4;

/// Decode a payload whose CRC has been checked, from a segment of format
/// `segment_version`.
pub fn decode_record(payload: &[u8], segment_version: u32) -> Result<Record, CodecError> {
    let limit = CONFIG.with_limit::<RECORD_BYTES_MAX>();
    let (raw, used): (RecordV4, usize) = if segment_version >= RECORDS_V4 {
        bincode::decode_from_slice(payload, limit)?
    } else if segment_version >= RECORDS_V3 {
        let (v3, used): (RecordV3, usize) = bincode::decode_from_slice(payload, limit)?;
        (v3.into(), used)
    } else {
        let (v1, used): (RecordV1, usize) = bincode::decode_from_slice(payload, limit)?;
        (RecordV3::from(v1).into(), used)
    };
    if used != payload.len() {
        return Err(CodecError::Trailing(payload.len() - used));
    }
    if raw.event.is_none() && raw.key.is_none() {
        return Err(CodecError::Invalid("record with neither event nor key"));
    }
    Ok(Record {
        lsn: raw.lsn,
        owner: OwnerId::new(&raw.owner).map_err(|_| CodecError::Invalid("owner id"))?,
        event: raw.event.map(TryInto::try_into).transpose()?,
        key: raw.key.map(TryInto::try_into).transpose()?,
    })
}

// ---- frames ----------------------------------------------------------------

/// What the bytes at some offset hold, as far as the framing can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameParse<'a> {
    /// A whole frame whose CRC matches: `payload`, and the frame's total size.
    Complete {
        payload: &'a [u8],
        frame_bytes: usize,
    },
    /// The buffer ends before the frame does (a torn write looks like this).
    Incomplete,
    /// The length field is 0 or above the caller's limit.
    BadLength(u32),
    /// Length plausible, checksum wrong.
    BadCrc,
}

/// Parse the frame at the front of `buf`; `payload_max` bounds the length
/// field so a corrupt length never makes a reader wait for or allocate
/// gigabytes.
pub fn parse_frame(buf: &[u8], payload_max: usize) -> FrameParse<'_> {
    if buf.len() < FRAME_HEADER_BYTES {
        return FrameParse::Incomplete;
    }
    let len_bytes: [u8; 4] = buf[0..4].try_into().expect("4 bytes");
    let len = u32::from_le_bytes(len_bytes);
    if len == 0 || len as usize > payload_max {
        return FrameParse::BadLength(len);
    }
    let frame_bytes = FRAME_HEADER_BYTES + len as usize;
    if buf.len() < frame_bytes {
        return FrameParse::Incomplete;
    }
    let payload = &buf[FRAME_HEADER_BYTES..frame_bytes];
    let crc = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
    // The `broken-skip-crc` feature exists only to prove that the tests
    // notice a reader that trusts unchecked bytes.
    if !cfg!(feature = "broken-skip-crc") && crc != frame_crc(&len_bytes, payload) {
        return FrameParse::BadCrc;
    }
    FrameParse::Complete {
        payload,
        frame_bytes,
    }
}

/// Append `payload` as one frame (len, crc, payload) to `out`.
pub fn encode_frame(payload: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(payload.len()).expect("frame payload fits in u32");
    let len_bytes = len.to_le_bytes();
    out.extend_from_slice(&len_bytes);
    out.extend_from_slice(&frame_crc(&len_bytes, payload).to_le_bytes());
    out.extend_from_slice(payload);
}

// ---- snapshot frames (used by storage::snapshot) ---------------------------
//
// A snapshot frame payload is a one-byte kind followed by bincode values:
//
//   1 Owner    SnapOwnerV1 { owner, last_lsn, items, keys }            (v1)
//              SnapOwnerV2 { owner, last_lsn, items, keys, holds, histories } (v2)
//   2 Items    u32 count, then count × ItemV1 (v1) / ItemV3 (v2)
//   3 Keys     u32 count, then count × KeyRecordV1 (v1) / KeyRecordV3 (v2)
//              / KeyRecordV4 (v3)
//   4 Trailer  SnapTrailerV1 { owners, items, keys }
//   5 Holds    u32 count, then count × HoldV3                           (v2)
//   6 History  u32 count, then count × HistoryV3 (v2) / HistoryV4 (v3)

/// Most items or keys in one snapshot frame.
pub const SNAP_CHUNK_ELEMS_MAX: u32 = 4096;
/// Largest snapshot frame payload: a chunk is closed before it would grow
/// past this, and one element (≤ one record) always fits.
pub const SNAP_FRAME_BYTES_MAX: usize = 4 * RECORD_BYTES_MAX;

const SNAP_KIND_OWNER: u8 = 1;
const SNAP_KIND_ITEMS: u8 = 2;
const SNAP_KIND_KEYS: u8 = 3;
const SNAP_KIND_TRAILER: u8 = 4;
const SNAP_KIND_HOLDS: u8 = 5;
const SNAP_KIND_HISTORY: u8 = 6;
/// The first snapshot version with holds and history (and `…V3` items and
/// keys).
pub const SNAP_V2: u32 = 2;
/// The first snapshot version with notes on history entries and
/// `KeyRecordV4` keys (the rest as version 2).
pub const SNAP_V3: u32 = 3;

#[derive(Debug, Encode, Decode)]
struct SnapOwnerV1 {
    owner: String,
    last_lsn: u64,
    items: u64,
    keys: u64,
}

#[derive(Debug, Encode, Decode)]
struct SnapOwnerV2 {
    owner: String,
    last_lsn: u64,
    items: u64,
    keys: u64,
    holds: u64,
    histories: u64,
}

#[derive(Debug, Encode, Decode)]
struct SnapTrailerV1 {
    owners: u64,
    items: u64,
    keys: u64,
}

/// The header frame of one owner's section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapOwner {
    pub owner: OwnerId,
    /// The owner's last applied LSN: its state reflects exactly its records
    /// with LSN ≤ this.
    pub last_lsn: u64,
    /// Items, keys, holds and item histories that follow in this section
    /// (truncation check; holds and histories are 0 in version 1).
    pub items: u64,
    pub keys: u64,
    pub holds: u64,
    pub histories: u64,
}

/// The last frame of a snapshot: totals, so a cut-off file is detected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapTrailer {
    pub owners: u64,
    pub items: u64,
    pub keys: u64,
}

/// Which elements a chunk frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapChunk {
    Items,
    Keys,
    Holds,
    History,
}

/// One decoded snapshot frame.
#[derive(Debug)]
pub enum SnapFrame {
    Owner(SnapOwner),
    Items(Vec<Item>),
    Keys(Vec<KeyRecord>),
    Trailer(SnapTrailer),
    Holds(Vec<Hold>),
    History(Vec<(Uuid, Vec<HistoryEntry>)>),
}

pub fn encode_snap_owner(h: &SnapOwner, out: &mut Vec<u8>) {
    out.push(SNAP_KIND_OWNER);
    SnapOwnerV2 {
        owner: h.owner.as_str().to_owned(),
        last_lsn: h.last_lsn,
        items: h.items,
        keys: h.keys,
        holds: h.holds,
        histories: h.histories,
    }
    .encode_to(out);
}

pub fn encode_snap_trailer(t: &SnapTrailer, out: &mut Vec<u8>) {
    out.push(SNAP_KIND_TRAILER);
    SnapTrailerV1 {
        owners: t.owners,
        items: t.items,
        keys: t.keys,
    }
    .encode_to(out);
}

/// Append one item (a chunk element) to `out`.
pub fn encode_snap_item(item: &Item, out: &mut Vec<u8>) {
    ItemV3::from(item).encode_to(out);
}

/// Append one hold (a chunk element) to `out`.
pub fn encode_snap_hold(hold: &Hold, out: &mut Vec<u8>) {
    HoldV3::from(hold).encode_to(out);
}

/// Append one item's history (a chunk element) to `out`.
pub fn encode_snap_history<'a>(
    item: &Uuid,
    entries: impl IntoIterator<Item = &'a HistoryEntry>,
    out: &mut Vec<u8>,
) {
    HistoryV4 {
        item: item.as_u128(),
        entries: entries.into_iter().map(Into::into).collect(),
    }
    .encode_to(out);
}

/// Append one key record (a chunk element) to `out`.
pub fn encode_snap_key(key: &KeyRecord, out: &mut Vec<u8>) {
    KeyRecordV4::from(key).encode_to(out);
}

/// A chunk payload: kind, count, then `body` (count encoded elements).
pub fn encode_snap_chunk(kind: SnapChunk, count: u32, body: &[u8], out: &mut Vec<u8>) {
    assert!(
        (1..=SNAP_CHUNK_ELEMS_MAX).contains(&count),
        "chunk of {count} elements"
    );
    out.push(match kind {
        SnapChunk::Items => SNAP_KIND_ITEMS,
        SnapChunk::Keys => SNAP_KIND_KEYS,
        SnapChunk::Holds => SNAP_KIND_HOLDS,
        SnapChunk::History => SNAP_KIND_HISTORY,
    });
    count.encode_to(out);
    out.extend_from_slice(body);
}

fn decode_one<T: Decode<()>>(bytes: &[u8], at: &mut usize) -> Result<T, CodecError> {
    let (value, used) =
        bincode::decode_from_slice(&bytes[*at..], CONFIG.with_limit::<RECORD_BYTES_MAX>())?;
    *at += used;
    Ok(value)
}

fn decode_chunk<V: Decode<()>, T>(
    payload: &[u8],
    at: &mut usize,
    convert: impl Fn(V) -> Result<T, CodecError>,
) -> Result<Vec<T>, CodecError> {
    let count: u32 = decode_one(payload, at)?;
    if !(1..=SNAP_CHUNK_ELEMS_MAX).contains(&count) {
        return Err(CodecError::Invalid("snapshot chunk element count"));
    }
    let mut out = Vec::with_capacity(count as usize);
    for _ in 0..count {
        out.push(convert(decode_one::<V>(payload, at)?)?);
    }
    Ok(out)
}

/// Decode a snapshot frame payload whose CRC has been checked, from a
/// snapshot of format `version` (1, `SNAP_V2` or `SNAP_V3`).
pub fn decode_snap_frame(payload: &[u8], version: u32) -> Result<SnapFrame, CodecError> {
    let (&kind, _) = payload
        .split_first()
        .ok_or(CodecError::Invalid("empty snapshot frame"))?;
    let mut at = 1;
    let v2 = version >= SNAP_V2;
    let v3 = version >= SNAP_V3;
    let owner_id = |raw: &str| OwnerId::new(raw).map_err(|_| CodecError::Invalid("owner id"));
    let frame = match kind {
        SNAP_KIND_OWNER if v2 => {
            let h: SnapOwnerV2 = decode_one(payload, &mut at)?;
            SnapFrame::Owner(SnapOwner {
                owner: owner_id(&h.owner)?,
                last_lsn: h.last_lsn,
                items: h.items,
                keys: h.keys,
                holds: h.holds,
                histories: h.histories,
            })
        }
        SNAP_KIND_OWNER => {
            let h: SnapOwnerV1 = decode_one(payload, &mut at)?;
            SnapFrame::Owner(SnapOwner {
                owner: owner_id(&h.owner)?,
                last_lsn: h.last_lsn,
                items: h.items,
                keys: h.keys,
                holds: 0,
                histories: 0,
            })
        }
        SNAP_KIND_ITEMS if v2 => {
            SnapFrame::Items(decode_chunk(payload, &mut at, ItemV3::try_into)?)
        }
        SNAP_KIND_ITEMS => SnapFrame::Items(decode_chunk(
            payload,
            &mut at,
            upgrade::<ItemV1, ItemV3, _>,
        )?),
        SNAP_KIND_KEYS if v3 => {
            SnapFrame::Keys(decode_chunk(payload, &mut at, KeyRecordV4::try_into)?)
        }
        SNAP_KIND_KEYS if v2 => SnapFrame::Keys(decode_chunk(
            payload,
            &mut at,
            upgrade::<KeyRecordV3, KeyRecordV4, _>,
        )?),
        SNAP_KIND_KEYS => SnapFrame::Keys(decode_chunk(payload, &mut at, key_from_v1)?),
        SNAP_KIND_HOLDS if v2 => {
            SnapFrame::Holds(decode_chunk(payload, &mut at, HoldV3::try_into)?)
        }
        SNAP_KIND_HISTORY if v3 => {
            SnapFrame::History(decode_chunk(payload, &mut at, HistoryV4::try_into)?)
        }
        SNAP_KIND_HISTORY if v2 => SnapFrame::History(decode_chunk(
            payload,
            &mut at,
            upgrade::<HistoryV3, HistoryV4, _>,
        )?),
        SNAP_KIND_TRAILER => {
            let t: SnapTrailerV1 = decode_one(payload, &mut at)?;
            SnapFrame::Trailer(SnapTrailer {
                owners: t.owners,
                items: t.items,
                keys: t.keys,
            })
        }
        _ => return Err(CodecError::Invalid("unknown snapshot frame kind")),
    };
    if at != payload.len() {
        return Err(CodecError::Trailing(payload.len() - at));
    }
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Delta, Qty};

    fn item() -> Item {
        Item {
            id: Uuid::from_u128(7),
            name: ItemName::new("milk").unwrap(),
            qty: Qty::new(3).unwrap(),
            reserved: crate::domain::Qty::ZERO,
            version: 2,
            created_at: 10,
            updated_at: 20,
        }
    }

    fn roundtrip(event: Option<Event>, key: Option<KeyRecord>) {
        let owner = OwnerId::new("alice").unwrap();
        let mut buf = vec![0xAA]; // records append after existing bytes
        encode_record(42, &owner, event.as_ref(), key.as_ref(), &mut buf);
        let frame = &buf[1..];
        let len = u32::from_le_bytes(frame[..4].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(frame[4..8].try_into().unwrap());
        assert_eq!(frame.len(), FRAME_HEADER_BYTES + len);
        assert_eq!(crc, frame_crc(frame[..4].try_into().unwrap(), &frame[8..]));
        let rec = decode_payload(&frame[8..]).unwrap();
        assert_eq!(
            rec,
            Record {
                lsn: 42,
                owner,
                event,
                key
            }
        );
    }

    #[test]
    fn every_event_and_response_roundtrips() {
        let _ = Delta::new(1);
        let change = QtyVersion {
            id: Uuid::from_u128(7),
            qty: Qty::new(9).unwrap(),
            version: 3,
        };
        let events = [
            Event::Created(item(), crate::domain::Note::NONE),
            Event::Replaced(item(), crate::domain::Note::NONE),
            Event::QtySet {
                change,
                at: 5,
                note: crate::domain::Note::NONE,
            },
            Event::Deleted {
                id: Uuid::from_u128(7),
            },
            Event::Transacted {
                changes: vec![change.into(), change.into()],
                placed: vec![],
                committed: vec![],
                released: vec![],
                at: 6,
            },
        ];
        for e in events {
            roundtrip(Some(e), None);
        }
        // Version 4: notes on every event that carries one, holds in
        // transactions.
        use crate::domain::{Reason, Reference};
        let note = crate::domain::Note::new(
            Some(Reason::new("sale").unwrap()),
            Some(Reference::new("order 7 ✓").unwrap()),
        );
        let only_ref = crate::domain::Note::new(None, Some(Reference::new("r").unwrap()));
        let hold = Hold {
            id: Uuid::from_u128(9),
            item: Uuid::from_u128(7),
            qty: Qty::new(2).unwrap(),
            created_at: 1,
            expires_at: 2,
        };
        let noted = [
            Event::Created(item(), note.clone()),
            Event::Replaced(item(), only_ref.clone()),
            Event::QtySet {
                change,
                at: 5,
                note: note.clone(),
            },
            Event::HoldCommitted {
                hold: hold.id,
                change,
                at: 5,
                note: only_ref,
            },
            Event::Transacted {
                changes: vec![TxChange {
                    change,
                    note: note.clone(),
                }],
                placed: vec![hold],
                committed: vec![Uuid::from_u128(10)],
                released: vec![Uuid::from_u128(11)],
                at: 6,
            },
        ];
        for e in noted {
            roundtrip(Some(e), None);
        }
        let responses = [
            Ok(Outcome::Created(item())),
            Ok(Outcome::Updated(item())),
            Ok(Outcome::Deleted),
            Ok(Outcome::Transacted(vec![item()], vec![])),
            Err(Rejection::QtyBelowZero { op_index: Some(3) }),
            Err(Rejection::NotFound { op_index: None }),
            Err(Rejection::NameTaken),
            Err(Rejection::QtyOverflow { op_index: None }),
            Err(Rejection::VersionMismatch { current: 4 }),
            Err(Rejection::ItemLimit),
            Err(Rejection::HoldLimit { op_index: Some(2) }),
            Err(Rejection::HoldNotFound { op_index: None }),
            Err(Rejection::NoteConflict { op_index: Some(1) }),
            Ok(Outcome::Transacted(
                vec![item()],
                vec![Hold {
                    id: Uuid::from_u128(9),
                    item: Uuid::from_u128(7),
                    qty: Qty::new(1).unwrap(),
                    created_at: 1,
                    expires_at: 2,
                }],
            )),
        ];
        for response in responses {
            let key = KeyRecord {
                key: IdemKey::parse("k-1").unwrap(),
                fingerprint: [9; 32],
                response,
                expires_at: 99,
            };
            roundtrip(None, Some(key.clone()));
            roundtrip(
                Some(Event::Deleted {
                    id: Uuid::from_u128(1),
                }),
                Some(key),
            );
        }
    }

    #[test]
    fn invalid_values_are_refused_not_trusted() {
        let owner = OwnerId::new("alice").unwrap();
        let mut bad = item();
        bad.qty = Qty::new(1).unwrap();
        let mut buf = Vec::new();
        encode_record(
            1,
            &owner,
            Some(&Event::Created(bad, crate::domain::Note::NONE)),
            None,
            &mut buf,
        );
        // Patch the qty varint (1) to a huge value by re-encoding by hand.
        let raw = RecordV1 {
            lsn: 1,
            owner: "alice".into(),
            event: Some(EventV1::QtySet {
                change: QtyVersionV1 {
                    id: 1,
                    qty: u64::MAX,
                    version: 2,
                },
                at: 0,
            }),
            key: None,
        };
        let payload = bincode::encode_to_vec(&raw, CONFIG).unwrap();
        assert!(matches!(
            decode_record(&payload, 1),
            Err(CodecError::Invalid(_))
        ));
        let raw = RecordV1 {
            lsn: 1,
            owner: "a/b".into(),
            event: None,
            key: None,
        };
        let payload = bincode::encode_to_vec(&raw, CONFIG).unwrap();
        assert!(matches!(
            decode_record(&payload, 1),
            Err(CodecError::Invalid(_))
        ));
        // A note is validated like a request's: a bad reason or reference,
        // or a note with neither, is refused.
        for (reason, reference) in [
            (Some("Sale"), None),
            (None, Some("a\nb")),
            (Some(""), None),
            (None, None),
        ] {
            let raw = RecordV4 {
                lsn: 1,
                owner: "a".into(),
                event: Some(EventV4::QtySet {
                    change: QtyVersionV1 {
                        id: 1,
                        qty: 1,
                        version: 2,
                    },
                    at: 0,
                    note: Some(NoteV4 {
                        reason: reason.map(Into::into),
                        reference: reference.map(Into::into),
                    }),
                }),
                key: None,
            };
            let payload = bincode::encode_to_vec(&raw, CONFIG).unwrap();
            assert!(
                matches!(decode_payload(&payload), Err(CodecError::Invalid(_))),
                "{reason:?} {reference:?}"
            );
        }
        let mut trailing = bincode::encode_to_vec(
            &RecordV1 {
                lsn: 1,
                owner: "a".into(),
                event: Some(EventV1::Deleted { id: 1 }),
                key: None,
            },
            CONFIG,
        )
        .unwrap();
        trailing.push(0);
        assert!(matches!(
            decode_record(&trailing, 1),
            Err(CodecError::Trailing(1))
        ));
    }
}
