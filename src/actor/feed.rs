//! The live change feed's owner side: a per-owner hub that the WAL writer
//! feeds once a record is durable, and the replay of older records from the
//! log for a resuming subscriber.
//!
//! # Invariant
//! A subscriber sees each of its owner's events exactly once, in LSN order,
//! and only once durable. The transition that makes this hold:
//! - The actor handles `Subscribe` between two messages: it creates the
//!   subscriber's receiver and answers with its `last_lsn` **A**, released
//!   (like a read) once A is durable. Every later event of the owner (LSN >
//!   A) is applied after the receiver exists, so the actor hands it to the
//!   commit pipeline together with the hub (`Reply::Publish`), and the
//!   writer publishes it right after its batch is durable, in waiter order
//!   (LSN order: waiters of one owner are queued under the pipeline lock in
//!   append order, and batches complete one after the other).
//! - Events ≤ A are already durable, so they are in the log: a resuming
//!   subscriber reads `(Last-Event-ID, A]` from the segments
//!   ([`replay`]), then takes the receiver, skipping anything ≤ the last
//!   LSN it sent (a receiver may also get older events that were queued for
//!   an earlier subscriber).
//!
//! # Cost when nobody listens
//! An owner without subscribers has no hub (`None`): the write path does
//! one `Option` check. A hub whose last subscriber left is dropped at the
//! next write. Only with subscribers does a write clone its event and pay
//! one `broadcast::send` on the writer thread.
//!
//! # Bounds
//! The hub is a `tokio::sync::broadcast` ring of [`FEED_BUFFER_EVENTS`]:
//! sending never waits, so a slow reader never slows the owner; a reader
//! more than that many events behind is told `Lagged` (the stream says
//! `event: lagged` and ends). [`SUBSCRIBERS_PER_OWNER_MAX`] and
//! [`SUBSCRIBERS_PER_NODE_MAX`] bound the receivers.

use std::path::Path;
use std::sync::Arc;

use tokio::sync::{broadcast, OwnedSemaphorePermit};

use super::{CallError, Reply};
use crate::domain::{Event, OwnerId};
use crate::storage::pipeline::{Failed, Waiter};
use crate::storage::reader::{self, RangeError};

/// Events a subscriber may fall behind the owner before it is dropped
/// (`event: lagged`): the broadcast ring's capacity, per owner.
pub const FEED_BUFFER_EVENTS: usize = 1024;
/// Open change-feed streams per owner; more are 429 `too_many_subscribers`.
pub const SUBSCRIBERS_PER_OWNER_MAX: usize = 16;
/// Open change-feed streams per node; more are 503 `feed_overloaded`.
pub const SUBSCRIBERS_PER_NODE_MAX: usize = 1024;

/// One durable event of an owner, with the LSN of its record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub lsn: u64,
    pub event: Event,
}

/// An owner's hub: the sending side of its broadcast ring.
pub(crate) type Hub = broadcast::Sender<Arc<Change>>;

/// A new hub for an owner's first subscriber.
pub(crate) fn hub() -> Hub {
    broadcast::channel(FEED_BUFFER_EVENTS).0
}

/// An open subscription: live events after `lsn`.
pub struct Subscription {
    /// Every event of the owner with an LSN above `lsn`, as it becomes
    /// durable (possibly some at or below it too: skip those).
    pub live: broadcast::Receiver<Arc<Change>>,
    /// The owner's last LSN when the subscription started; durable.
    pub lsn: u64,
    /// The node-wide subscriber slot, given back on drop.
    _permit: OwnedSemaphorePermit,
}

impl Subscription {
    pub(crate) fn new(
        live: broadcast::Receiver<Arc<Change>>,
        lsn: u64,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        Subscription {
            live,
            lsn,
            _permit: permit,
        }
    }
}

/// Why a subscription was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    #[error("the owner has {SUBSCRIBERS_PER_OWNER_MAX} open subscriptions")]
    OwnerFull,
    #[error("the node has {SUBSCRIBERS_PER_NODE_MAX} open subscriptions")]
    NodeFull,
    #[error(transparent)]
    Call(#[from] CallError),
}

/// A write's reply that also publishes its event once durable.
pub struct Publish {
    pub(crate) reply: Reply,
    pub(crate) hub: Hub,
    /// Set by the pipeline when the record gets its LSN.
    pub(crate) lsn: u64,
    pub(crate) event: Event,
}

impl Publish {
    pub(crate) fn assigned(&mut self, lsn: u64) {
        self.lsn = lsn;
        self.reply.assigned(lsn);
    }

    /// Release the reply, then (only when durable) publish. Runs on the WAL
    /// writer thread; `send` never waits (a full ring overwrites the oldest
    /// event and the laggard learns it on its next receive). A send error
    /// only means no receiver is left.
    pub(crate) fn complete(self, result: Result<(), Failed>) {
        let durable = result.is_ok();
        self.reply.complete(result);
        if durable {
            let change = Change {
                lsn: self.lsn,
                event: self.event,
            };
            let _ = self.hub.send(Arc::new(change));
        }
    }
}

/// Every event of `owner` with `after < lsn <= upto`, from the log in
/// `dir`, in LSN order, until `visit` returns `false`. Blocking (file
/// reads). `upto` must be durable. Records of other owners and records that
/// carry only an idempotency key are skipped.
pub fn replay(
    dir: &Path,
    owner: &OwnerId,
    after: u64,
    upto: u64,
    mut visit: impl FnMut(Change) -> bool,
) -> Result<(), RangeError> {
    reader::read_range(dir, after, upto, |record| match record.event {
        Some(event) if &record.owner == owner => visit(Change {
            lsn: record.lsn,
            event,
        }),
        _ => true,
    })
}

/// The first LSN the log still holds (for a `reset`).
pub fn oldest_lsn(dir: &Path) -> Result<Option<u64>, crate::storage::Error> {
    reader::oldest_lsn(dir)
}
