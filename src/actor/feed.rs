//! The live change feed's owner side: a per-owner hub that the WAL writer
//! feeds once a record is durable, the replay of older records from the
//! log for a resuming subscriber, and the [`Follower`] that joins the two
//! into one sequence (the transport only renders what it yields).
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
//!   an earlier subscriber). [`Follower`] is that protocol.
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

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc, OwnedSemaphorePermit};
use tokio::task::JoinHandle;

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
/// Replayed records between the blocking log reader and its follower.
const REPLAY_BUFFER_EVENTS: usize = 64;

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
fn replay(
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
fn oldest_lsn(dir: &Path) -> Result<Option<u64>, crate::storage::Error> {
    reader::oldest_lsn(dir)
}

/// What a [`Follower`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedItem {
    /// One durable change of the owner: each once, in LSN order.
    Change(Arc<Change>),
    /// The point asked for is not in this log (beyond its newest record,
    /// or older than its oldest): what follows is live after `lsn`; the
    /// reader re-reads its items.
    Reset { lsn: u64, oldest_lsn: Option<u64> },
    /// The follower fell more than [`FEED_BUFFER_EVENTS`] behind; nothing
    /// follows. `lsn` is the last change it yielded (or its start).
    Lagged { lsn: u64 },
}

/// One subscriber's sequence: the owner's changes after a point, first
/// from the log, then live, without a gap or a duplicate at the switch
/// (the invariant above). Pulled: nothing is read ahead of the consumer,
/// so the broadcast ring is the one buffer and the one bound. Dropping it
/// ends the replay (the reader stops at its next send) and gives the
/// subscription's slots back.
pub struct Follower {
    sub: Subscription,
    owner: OwnerId,
    log_dir: PathBuf,
    /// The last LSN the consumer has (or is told to start from).
    sent: u64,
    state: Step,
}

enum Step {
    Start {
        after: Option<u64>,
        /// The node's durable LSN when the subscription opened: a point
        /// above it is not from this log.
        newest: u64,
    },
    Replay {
        rx: mpsc::Receiver<Change>,
        reader: JoinHandle<Result<(), RangeError>>,
    },
    Live,
    Done,
}

impl Follower {
    /// Follow `sub` (of `owner`, whose log is in `log_dir`) after `after`
    /// (None: live only). `newest`: the node's durable LSN now.
    pub fn new(
        sub: Subscription,
        owner: OwnerId,
        log_dir: PathBuf,
        newest: u64,
        after: Option<u64>,
    ) -> Self {
        Follower {
            sent: sub.lsn,
            sub,
            owner,
            log_dir,
            state: Step::Start { after, newest },
        }
    }

    /// The owner's LSN when the subscription opened: live changes follow it.
    pub fn lsn(&self) -> u64 {
        self.sub.lsn
    }

    /// The next item; `None` once the sequence has ended (after `Lagged`, a
    /// failed replay, or the node's end). Cancel-safe: an unfinished call
    /// loses nothing.
    pub async fn next(&mut self) -> Option<FeedItem> {
        loop {
            match &mut self.state {
                Step::Start { after, newest } => {
                    let (after, newest, start) = (*after, *newest, self.sub.lsn);
                    self.state = Step::Live;
                    match after {
                        None => {}
                        Some(after) if after > newest => {
                            let oldest_lsn = oldest_lsn(&self.log_dir).ok().flatten();
                            return Some(FeedItem::Reset {
                                lsn: start,
                                oldest_lsn,
                            });
                        }
                        Some(after) if after < start => {
                            self.state = self.start_replay(after, start)
                        }
                        // Between the owner's last LSN and the node's:
                        // nothing of this owner to replay; skip up to it.
                        Some(after) => self.sent = after,
                    }
                }
                Step::Replay { rx, reader } => {
                    if let Some(change) = rx.recv().await {
                        return Some(FeedItem::Change(Arc::new(change)));
                    }
                    let done = reader.await;
                    self.state = Step::Live;
                    match done {
                        Ok(Ok(())) => {}
                        Ok(Err(RangeError::Gone { oldest_lsn })) => {
                            return Some(FeedItem::Reset {
                                lsn: self.sent,
                                oldest_lsn: Some(oldest_lsn),
                            })
                        }
                        Ok(Err(RangeError::Storage(error))) => {
                            tracing::error!(%error, owner = %self.owner, "change feed replay failed");
                            self.state = Step::Done;
                        }
                        Err(error) => {
                            tracing::error!(%error, "change feed replay task failed");
                            self.state = Step::Done;
                        }
                    }
                }
                Step::Live => match self.sub.live.recv().await {
                    Ok(change) if change.lsn <= self.sent => {}
                    Ok(change) => {
                        self.sent = change.lsn;
                        return Some(FeedItem::Change(change));
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        self.state = Step::Done;
                        return Some(FeedItem::Lagged { lsn: self.sent });
                    }
                    Err(broadcast::error::RecvError::Closed) => self.state = Step::Done,
                },
                Step::Done => return None,
            }
        }
    }

    /// Start reading `(after, upto]` from the log on a blocking thread;
    /// live resumes after `upto` (`sent` is already the start LSN).
    fn start_replay(&self, after: u64, upto: u64) -> Step {
        let (tx, rx) = mpsc::channel(REPLAY_BUFFER_EVENTS);
        let (dir, owner) = (self.log_dir.clone(), self.owner.clone());
        let reader = tokio::task::spawn_blocking(move || {
            replay(&dir, &owner, after, upto, |c| tx.blocking_send(c).is_ok())
        });
        Step::Replay { rx, reader }
    }
}
