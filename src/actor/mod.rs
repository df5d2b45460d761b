//! The service layer: one tokio task per owner namespace.
//!
//! An owner actor owns that owner's [`OwnerState`] and handles its mailbox
//! one message at a time, so the transitions of one owner are serialized
//! without locks. Each message is handled synchronously, with no `.await`
//! inside, so no invariant ever spans an await point:
//!
//! 1. `OwnerState::apply`: decide against the state (a rejection leaves it
//!    untouched), on success evolve at once (the next message sees the new
//!    state), and store a keyed request's answer under its key;
//! 2. append the event, with its idempotency record if any, to the commit
//!    pipeline as one WAL record;
//! 3. hand the reply to the pipeline, which sends it once the owner's last
//!    LSN is durable (the reply carries that LSN: `CountIQ-LSN`). The actor goes straight on to the next message: it
//!    never waits for fsync (pipelining). Reads and rejections wait for the
//!    owner's last LSN too, so nobody sees state a crash could take back.
//!
//! The [`Registry`](registry::Registry) activates exactly one actor per owner
//! and parks idle ones without losing a message.

pub mod feed;
pub mod registry;
pub(crate) mod slot;

use std::sync::{Arc, Weak};

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::domain::idempotency::{
    Fingerprint, IdemKey, KeyTable, Lookup, StoredResponse, KEY_SWEEP_PER_WRITE,
};
use crate::domain::{
    Command, Ctx, HistoryEntry, Item, KeyStamp, Micros, OwnerExtra, OwnerId, OwnerState, TxOp,
};
use crate::storage::codec::encode_record;
use crate::storage::pipeline::{Failed, Waiter};
use crate::storage::wal::{Appender, Leading};

/// Mailbox depth per owner. A full mailbox answers 503 `overloaded` at once
/// (`try_send`); it never queues without bound.
pub const MAILBOX_DEPTH_DEFAULT: usize = 4096;
/// Messages an actor takes from its mailbox per wake-up.
const MAILBOX_BATCH_MAX: usize = 256;
/// Lone passes in a row (this one included) before an actor leads the log
/// on its own thread (`OwnerActor::commit`). Three: at 4-8 connections a
/// pass is alone now and then by chance, and leading then was 8-15%
/// slower than handing off; a leader answering 4-8 requests from its one
/// worker was slower too, so a lone pass is one request
/// (BENCHMARKS.md, issue 19).
const LEAD_AFTER_LONE_PASSES: u32 = 3;

/// A read's answer and the owner's LSN it reflects: the state after every
/// record of this owner up to `lsn` (0: nothing was ever logged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read<T> {
    pub value: T,
    pub lsn: u64,
}

/// One page of an owner's items in listing order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub items: Vec<Item>,
    /// Whether more items follow the last one.
    pub more: bool,
}

/// One page of an item's history, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    pub entries: Vec<HistoryEntry>,
    /// Whether older entries follow the last one.
    pub more: bool,
}

/// What a write got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// A state-machine answer. `lsn`: the record that logged it, or for an
    /// unlogged rejection the owner's state it was decided against; `None`
    /// on a replay from a stored key (the original's LSN is not kept).
    Done {
        result: StoredResponse,
        replayed: bool,
        lsn: Option<u64>,
    },
    /// The key is stored for a different request.
    KeyReused,
    /// The owner's key table is full of unexpired keys.
    KeysExhausted { retry_after: Duration },
}

/// Why a call got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("the owner's mailbox is full")]
    Overloaded,
    #[error("the log has failed; the outcome is unknown")]
    Unavailable,
}

/// The state a snapshot persists for one owner, copied by its actor.
pub struct OwnerCopy {
    pub owner: OwnerId,
    pub last_lsn: u64,
    pub items: Vec<Item>,
    pub keys: KeyTable,
    pub extra: OwnerExtra,
}

type Respond<T> = oneshot::Sender<Result<T, CallError>>;

/// A caller's request, with where its answer goes.
pub(crate) enum Call {
    Get {
        id: Uuid,
        tx: Respond<Read<Option<Item>>>,
    },
    List {
        after: Option<Uuid>,
        limit: usize,
        tx: Respond<Read<Page>>,
    },
    Write {
        cmd: Command,
        key: Option<(IdemKey, Fingerprint)>,
        tx: Respond<Written>,
    },
    History {
        id: Uuid,
        before: Option<u64>,
        limit: usize,
        tx: Respond<Read<Option<HistoryPage>>>,
    },
    /// Open a change-feed receiver (`None`: the owner's bound is reached).
    Subscribe {
        tx: Respond<Read<Option<FeedReceiver>>>,
    },
}

/// A change-feed receiver, as the actor hands it out.
pub(crate) type FeedReceiver = tokio::sync::broadcast::Receiver<Arc<feed::Change>>;

pub(crate) enum Msg {
    /// Boxed so a mailbox slot is two words: tokio allocates mailbox slots
    /// 32 at a time, and an idle owner should not pay for 32 full requests.
    Call(Box<Call>),
    Copy {
        tx: oneshot::Sender<OwnerCopy>,
    },
}

/// An answer waiting in the commit pipeline for its LSN to become durable.
pub enum Reply {
    Item(Respond<Read<Option<Item>>>, Read<Option<Item>>),
    Page(Respond<Read<Page>>, Read<Page>),
    History(
        Respond<Read<Option<HistoryPage>>>,
        Read<Option<HistoryPage>>,
    ),
    Write(Respond<Written>, Written),
    /// Nothing to answer but "durable" (a snapshot waiting for the log).
    Barrier(Respond<()>),
    /// A new change-feed receiver, released once the owner's LSN it starts
    /// after is durable.
    Subscribed(
        Respond<Read<Option<FeedReceiver>>>,
        Read<Option<FeedReceiver>>,
    ),
    /// A write with subscribers listening: its reply, then its event to the
    /// owner's hub once durable (`feed`).
    Publish(Box<feed::Publish>),
}

impl Waiter for Reply {
    fn complete(self, result: Result<(), Failed>) {
        match self {
            Reply::Item(tx, answer) => deliver(tx, answer, result),
            Reply::Page(tx, answer) => deliver(tx, answer, result),
            Reply::History(tx, answer) => deliver(tx, answer, result),
            Reply::Write(tx, answer) => deliver(tx, answer, result),
            Reply::Barrier(tx) => deliver(tx, (), result),
            Reply::Subscribed(tx, answer) => deliver(tx, answer, result),
            Reply::Publish(publish) => publish.complete(result),
        }
    }

    fn assigned(&mut self, lsn: u64) {
        match self {
            Reply::Write(_, Written::Done { lsn: at, .. }) => *at = Some(lsn),
            Reply::Publish(publish) => publish.assigned(lsn),
            _ => {}
        }
    }
}

fn deliver<T>(tx: Respond<T>, answer: T, result: Result<(), Failed>) {
    // A caller that gave up (client went away) is not an error.
    let _ = tx.send(
        result
            .map(|()| answer)
            .map_err(|Failed| CallError::Unavailable),
    );
}

/// The item and outcome of a transition, for its DEBUG event.
fn describe_transition(cmd: &Command, result: &StoredResponse) -> (String, String) {
    let item = match (cmd, result) {
        (_, Ok(crate::domain::Outcome::Created(item))) => item.id.to_string(),
        (Command::Replace { id, .. } | Command::Adjust { id, .. } | Command::Delete { id }, _) => {
            id.to_string()
        }
        (Command::Transact { ops }, _) => format!("{} ops", ops.len()),
        (Command::Reserve { item, .. }, _) => item.to_string(),
        (Command::CommitHold { hold, .. } | Command::ReleaseHold { hold }, _) => {
            format!("hold {hold}")
        }
        (Command::Create { .. } | Command::ExpireHolds, _) => "-".into(),
    };
    let outcome = match result {
        Ok(_) => "applied".to_string(),
        Err(rejection) => format!("{rejection:?}"),
    };
    (item, outcome)
}

/// The per-transition DEBUG event: owner, item, the record's LSN (none when
/// nothing was logged: a rejection without a key), outcome, time in the actor.
fn trace_transition(
    owner: &OwnerId,
    item: &str,
    outcome: &str,
    lsn: Option<u64>,
    started: std::time::Instant,
) {
    let micros = started.elapsed().as_micros() as u64;
    tracing::debug!(%owner, item, ?lsn, outcome, micros, "transition");
}

/// Source of time and ids; tests substitute a fixed clock.
pub trait Clock: Send + Sync + 'static {
    fn now_micros(&self) -> Micros;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now_micros(&self) -> Micros {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        since.as_micros() as Micros
    }
}

/// Settings every actor shares.
#[derive(Debug, Clone, Copy)]
pub struct ActorConfig {
    pub mailbox_depth: usize,
    /// Park an owner after this long without messages; `None` never parks.
    pub idle_after: Option<Duration>,
    pub key_ttl: Duration,
}

impl Default for ActorConfig {
    fn default() -> Self {
        ActorConfig {
            mailbox_depth: MAILBOX_DEPTH_DEFAULT,
            idle_after: Some(Duration::from_secs(300)),
            key_ttl: Duration::from_secs(crate::domain::idempotency::KEY_TTL_DEFAULT_SECS),
        }
    }
}

/// What all actors share: the log's appending side and the settings.
pub struct Shared {
    pub log: Appender<Reply>,
    pub config: ActorConfig,
    pub clock: Box<dyn Clock>,
    /// Where the log's segments are (the change feed's replay reads them).
    pub log_dir: std::path::PathBuf,
    /// Calls in flight on this node: sent to an actor and not yet answered
    /// (or given up on). An actor leads the log on its own thread only when
    /// every one of them is in its own pass (`OwnerActor::commit`).
    pub calls: CallsInFlight,
}

/// A count of calls in flight, kept by the registry around each call.
#[derive(Debug, Default)]
pub struct CallsInFlight(std::sync::atomic::AtomicUsize);

impl CallsInFlight {
    /// Count one call until the returned guard is dropped.
    pub(crate) fn enter(&self) -> CallGuard<'_> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        CallGuard(self)
    }

    pub fn get(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// One call in flight (see [`CallsInFlight::enter`]).
pub(crate) struct CallGuard<'a>(&'a CallsInFlight);

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        (self.0)
            .0
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A cloneable handle to a running actor: a mailbox sender.
#[derive(Clone)]
pub(crate) struct OwnerHandle {
    tx: mpsc::Sender<Msg>,
}

/// The task half. Not cloneable; owned by the spawned task.
struct OwnerActor {
    owner: OwnerId,
    state: OwnerState,
    /// LSN of the last record this owner appended (or recovered). Every
    /// reply waits until it is durable.
    last_lsn: u64,
    rx: mpsc::Receiver<Msg>,
    /// The change-feed hub while the owner has (or recently had)
    /// subscribers; `None` keeps the write path free of feed work.
    feed: Option<feed::Hub>,
    shared: Arc<Shared>,
    /// Weak: the slot holds our mailbox sender, and a strong reference
    /// back would keep the mailbox open forever (no shutdown by drop).
    slot: Weak<registry::OwnerSlot>,
    /// The commit token, while this actor leads the log: taken by an
    /// append that found the log idle, resolved by [`Self::commit`] at the
    /// end of the same pass, never held across an `.await`.
    lead: Option<Leading<Reply>>,
    /// Passes in a row that were alone (one request, the only call in
    /// flight on the node): the lead is taken only after a streak.
    lone_passes: u32,
}

/// Start an actor for `owner` with `state`; returns its handle.
fn spawn(
    owner: OwnerId,
    state: OwnerState,
    last_lsn: u64,
    feed: Option<feed::Hub>,
    shared: Arc<Shared>,
    slot: Weak<registry::OwnerSlot>,
) -> OwnerHandle {
    let (tx, rx) = mpsc::channel(shared.config.mailbox_depth);
    let actor = OwnerActor {
        owner,
        state,
        last_lsn,
        rx,
        feed,
        shared,
        slot,
        lead: None,
        lone_passes: 0,
    };
    tokio::spawn(actor.run());
    OwnerHandle { tx }
}

impl OwnerActor {
    async fn run(mut self) {
        // Grows to the batch sizes this owner really sees: an idle owner
        // keeps a few slots, not MAILBOX_BATCH_MAX of them.
        let mut batch = Vec::new();
        loop {
            // With open holds the actor wakes when the next one is due (and
            // does not park); otherwise it waits for mail or parks when idle.
            let expiry = self.until_next_expiry();
            let wait = match (self.shared.config.idle_after, expiry) {
                (Some(idle), Some(due)) => Some(idle.min(due)),
                (idle, due) => idle.or(due),
            };
            let received = match wait {
                Some(wait) => match tokio::time::timeout(
                    wait,
                    self.rx.recv_many(&mut batch, MAILBOX_BATCH_MAX),
                )
                .await
                {
                    Ok(n) => n,
                    Err(_elapsed) if expiry.is_some() => {
                        self.shared.log.wait_for_room().await;
                        self.expire_due();
                        // Nobody waits for an expiry: no reason to borrow
                        // this thread for its sync.
                        if let Some(lead) = self.lead.take() {
                            lead.hand_off();
                        }
                        continue;
                    }
                    Err(_elapsed) => {
                        self.try_park();
                        return;
                    }
                },
                None => self.rx.recv_many(&mut batch, MAILBOX_BATCH_MAX).await,
            };
            if received == 0 {
                // Every handle is gone: the registry was dropped (shutdown).
                return;
            }
            // One message, the only call in flight: one request at a time,
            // nobody else about to send; handle it now (a yield costs a
            // round through the scheduler, which wakes the other worker to
            // steal).
            if received < MAILBOX_BATCH_MAX && !self.alone(received) {
                // Let the callers that are ready to run send first, then take
                // what they sent too: one wake-up and one pass per batch of
                // requests instead of one per request (tokio's LIFO slot
                // would otherwise run this task right after each sender).
                tokio::task::yield_now().await;
                while batch.len() < MAILBOX_BATCH_MAX {
                    match self.rx.try_recv() {
                        Ok(msg) => batch.push(msg),
                        Err(_) => break,
                    }
                }
            }
            self.shared.log.wait_for_room().await;
            let handled = batch.len();
            for msg in batch.drain(..) {
                self.handle(msg);
            }
            self.commit(handled);
        }
    }

    /// End of a pass over the mailbox. If this actor leads the log (its
    /// first append found it idle), it writes and syncs the batch on this
    /// thread when nobody else is waiting: the pass was small, and every
    /// call in flight on the node is in it (none in this mailbox, none at
    /// another owner, none waiting for an earlier batch). Those callers
    /// wait for exactly this batch, and answering them from here saves two
    /// cross-thread wake-ups (to the writer thread and back). Otherwise the
    /// writer thread takes the batch and this actor goes on applying
    /// messages while it syncs (pipelining): a worker blocked in fdatasync
    /// would also stop polling the sockets of the requests that wait.
    ///
    /// A pass that is alone only by chance (a few clients, all between two
    /// requests at that moment) would block this worker while the others
    /// arrive, so the actor leads only after `LEAD_AFTER_LONE_PASSES` lone
    /// passes in a row: a client that sends one request at a time.
    fn commit(&mut self, handled: usize) {
        let alone = self.alone(handled) && self.rx.is_empty();
        self.lone_passes = if alone {
            self.lone_passes.saturating_add(1)
        } else {
            0
        };
        if let Some(lead) = self.lead.take() {
            if alone && self.lone_passes >= LEAD_AFTER_LONE_PASSES {
                lead.persist();
            } else {
                lead.hand_off();
            }
        }
    }

    /// Handle one message. Synchronous on purpose (see the module docs).
    fn handle(&mut self, msg: Msg) {
        // Due holds are released before any call sees the state (one
        // bounded step per message; the timer in `run` does the rest).
        if matches!(msg, Msg::Call(_)) && self.state.next_hold_expiry().is_some() {
            self.expire_due();
        }
        match msg {
            Msg::Call(call) => match *call {
                Call::Get { id, tx } => {
                    let value = self.state.get(&id).cloned();
                    self.respond(Reply::Item(tx, self.read(value)));
                }
                Call::List { after, limit, tx } => {
                    let (items, more) = self.state.list(after, limit);
                    self.respond(Reply::Page(tx, self.read(Page { items, more })));
                }
                Call::Write { cmd, key, tx } => self.write(cmd, key, tx),
                Call::History {
                    id,
                    before,
                    limit,
                    tx,
                } => {
                    let page = (self.state.history(&id, before, limit))
                        .map(|(entries, more)| HistoryPage { entries, more });
                    self.respond(Reply::History(tx, self.read(page)));
                }
                Call::Subscribe { tx } => {
                    let hub = self.feed.get_or_insert_with(feed::hub);
                    let room = hub.receiver_count() < feed::SUBSCRIBERS_PER_OWNER_MAX;
                    let receiver = room.then(|| hub.subscribe());
                    self.respond(Reply::Subscribed(tx, self.read(receiver)));
                }
            },
            Msg::Copy { tx } => {
                let started = std::time::Instant::now();
                let (items, keys) = self.state.snapshot_view();
                metrics::histogram!("countiq_snapshot_owner_pause_seconds")
                    .record(started.elapsed().as_secs_f64());
                let _ = tx.send(OwnerCopy {
                    owner: self.owner.clone(),
                    last_lsn: self.last_lsn,
                    items,
                    keys,
                    extra: self.state.snapshot_extra(),
                });
            }
        }
    }

    /// How long until the next hold is due (zero if one is), if any.
    fn until_next_expiry(&self) -> Option<Duration> {
        let next = self.state.next_hold_expiry()?;
        let now = self.shared.clock.now_micros();
        Some(Duration::from_micros(next.saturating_sub(now).max(0) as u64))
    }

    /// One bounded expiry step: release up to `HOLD_EXPIRE_PER_STEP` holds
    /// due by now, logged as one `HoldsExpired` record with no reply (the
    /// time is in the event, so replay needs no clock).
    fn expire_due(&mut self) {
        let now = self.shared.clock.now_micros();
        if self.state.next_hold_expiry().is_none_or(|at| at > now) {
            return;
        }
        let ctx = Ctx {
            now,
            new_id: Uuid::nil(),
        };
        let applied = self.state.apply(&Command::ExpireHolds, ctx, None);
        let Some(event) = applied.event.as_ref() else {
            return;
        };
        // Nobody waits for an expiry, but the change feed's subscribers see
        // it once durable like any other transition.
        let publish = self.live_feed().map(|hub| {
            let (tx, _nobody) = oneshot::channel();
            Reply::Publish(Box::new(feed::Publish {
                reply: Reply::Barrier(tx),
                hub: hub.clone(),
                lsn: 0,
                event: event.clone(),
            }))
        });
        let owner = &self.owner;
        let encode = |lsn, buf: &mut Vec<u8>| encode_record(lsn, owner, Some(event), None, buf);
        if let Ok((lsn, lead)) = self.shared.log.append(encode, publish) {
            self.last_lsn = lsn;
            self.take_lead(lead);
        }
    }

    fn read<T>(&self, value: T) -> Read<T> {
        Read {
            value,
            lsn: self.last_lsn,
        }
    }

    /// Send `reply` once everything this owner has applied is durable.
    fn respond(&self, reply: Reply) {
        self.shared.log.pipeline.when_durable(self.last_lsn, reply);
    }

    fn write(&mut self, cmd: Command, key: Option<(IdemKey, Fingerprint)>, tx: Respond<Written>) {
        // One DEBUG event per transition; nothing is measured when disabled.
        let started = tracing::enabled!(tracing::Level::DEBUG).then(std::time::Instant::now);
        let now = self.shared.clock.now_micros();
        let swept = self.state.keys.sweep(now, KEY_SWEEP_PER_WRITE);
        if swept > 0 {
            metrics::counter!("countiq_idempotency_expired_total").increment(swept as u64);
        }
        if let Some((k, fp)) = &key {
            if let Some(answer) = self.check_key(k, fp, now) {
                return self.respond(Reply::Write(tx, answer));
            }
        }
        let new_id = match &cmd {
            Command::Create { .. } | Command::Reserve { .. } => Uuid::now_v7(),
            // The base of the transaction's hold ids (`tx_hold_id`).
            Command::Transact { ops }
                if ops.iter().any(|op| matches!(op, TxOp::Reserve { .. })) =>
            {
                Uuid::now_v7()
            }
            _ => Uuid::nil(),
        };
        let ttl_micros = self.shared.config.key_ttl.as_micros() as Micros;
        let stamp = key.map(|(key, fingerprint)| KeyStamp {
            key,
            fingerprint,
            expires_at: now.saturating_add(ttl_micros),
        });
        let applied = self.state.apply(&cmd, Ctx { now, new_id }, stamp);
        let trace = started.map(|at| (at, describe_transition(&cmd, &applied.result)));
        let logged = applied.is_logged();
        let answer = Written::Done {
            result: applied.result,
            replayed: false,
            lsn: Some(self.last_lsn),
        };
        if !logged {
            // Nothing to record (a rejection, or deleting a missing item).
            if let Some((at, (item, outcome))) = trace {
                trace_transition(&self.owner, &item, &outcome, None, at);
            }
            return self.respond(Reply::Write(tx, answer));
        }
        let mut reply = Reply::Write(tx, answer);
        if let (Some(hub), Some(event)) = (self.live_feed(), applied.event.as_ref()) {
            reply = Reply::Publish(Box::new(feed::Publish {
                reply,
                hub: hub.clone(),
                lsn: 0,
                event: event.clone(),
            }));
        }
        let owner = &self.owner;
        let (event, key_record) = (applied.event.as_ref(), applied.key.as_ref());
        let encode = |lsn, buf: &mut Vec<u8>| encode_record(lsn, owner, event, key_record, buf);
        // The record's LSN reaches the answer through `Waiter::assigned`.
        let appended = self.shared.log.append(encode, Some(reply));
        let lsn = appended.ok().map(|(lsn, lead)| {
            self.last_lsn = lsn;
            self.take_lead(lead);
            lsn
        });
        if let Some((at, (item, outcome))) = trace {
            trace_transition(&self.owner, &item, &outcome, lsn, at);
        }
        // On Err the pipeline has already failed the reply (503); the log is
        // dead and the node is stopping, so the in-memory state no longer
        // matters.
    }

    /// A pass of `messages` is alone when it is one request and that
    /// request is the only call in flight on the node.
    fn alone(&self, messages: usize) -> bool {
        messages == 1 && self.shared.calls.get() <= 1
    }

    /// Keep the commit token an append gave this actor (at most one: the
    /// token is this actor's until `commit`).
    fn take_lead(&mut self, lead: Option<Leading<Reply>>) {
        if let Some(lead) = lead {
            debug_assert!(self.lead.is_none(), "two leads at once");
            self.lead = Some(lead);
        }
    }

    /// The hub, if anyone listens; a hub whose subscribers all left is
    /// dropped here, so the next writes skip the feed again.
    fn live_feed(&mut self) -> Option<&feed::Hub> {
        if (self.feed.as_ref()).is_some_and(|hub| hub.receiver_count() == 0) {
            self.feed = None;
        }
        self.feed.as_ref()
    }

    /// The answer for a keyed request that must not run again, if any.
    fn check_key(&mut self, key: &IdemKey, fp: &Fingerprint, now: Micros) -> Option<Written> {
        match self.state.keys.lookup(key, fp, now) {
            Lookup::Replay(stored) => {
                metrics::counter!("countiq_idempotency_hits_total").increment(1);
                Some(Written::Done {
                    result: stored.clone(),
                    replayed: true,
                    lsn: None,
                })
            }
            Lookup::Reused => {
                metrics::counter!("countiq_idempotency_reuse_conflicts_total").increment(1);
                Some(Written::KeyReused)
            }
            Lookup::Miss => {
                metrics::counter!("countiq_idempotency_misses_total").increment(1);
                if self.state.keys.is_full() {
                    let swept = self.state.keys.sweep(now, usize::MAX);
                    metrics::counter!("countiq_idempotency_expired_total").increment(swept as u64);
                }
                if !self.state.keys.is_full() {
                    return None;
                }
                let next = self.state.keys.next_expiry().unwrap_or(now);
                let wait = Duration::from_micros(next.saturating_sub(now).max(1_000_000) as u64);
                Some(Written::KeysExhausted { retry_after: wait })
            }
        }
    }

    /// Idle: hand the state back to the slot and stop. `Slot::park` runs
    /// the hand-over under the slot lock: close the mailbox, handle what is
    /// in it, store the state (module `slot` explains why this loses no
    /// message and never lets two actors hold the state). Handling is
    /// synchronous, which is what makes draining under a lock possible.
    fn try_park(&mut self) {
        if let Some(slot) = self.slot.upgrade() {
            slot.park(self);
            metrics::counter!("countiq_actor_parks_total").increment(1);
        }
    }
}

impl slot::Parking for OwnerActor {
    type State = registry::Parked;

    fn close_mailbox(&mut self) {
        self.rx.close();
    }

    fn drain_mailbox(&mut self) {
        while let Ok(msg) = self.rx.try_recv() {
            self.handle(msg);
        }
        // Under the slot lock: never block on a sync here.
        if let Some(lead) = self.lead.take() {
            lead.hand_off();
        }
    }

    fn take_state(&mut self) -> registry::Parked {
        let mut state = std::mem::take(&mut self.state);
        state.shrink();
        registry::Parked {
            state,
            last_lsn: self.last_lsn,
            feed: self.feed.take(),
        }
    }
}
