//! The service layer: one tokio task per owner namespace.
//!
//! An owner actor owns that owner's [`OwnerState`] and handles its mailbox
//! one message at a time, so the transitions of one owner are serialized
//! without locks. Each message is handled synchronously, with no `.await`
//! inside, so no invariant ever spans an await point:
//!
//! 1. `decide` against the state; a rejection leaves it untouched;
//! 2. on success `evolve` at once (the next message sees the new state) and
//!    append the event, with its idempotency record if any, to the commit
//!    pipeline as one WAL record;
//! 3. hand the reply to the pipeline, which sends it once the owner's last
//!    LSN is durable. The actor goes straight on to the next message: it
//!    never waits for fsync (pipelining). Reads and rejections wait for the
//!    owner's last LSN too, so nobody sees state a crash could take back.
//!
//! The [`Registry`](registry::Registry) activates exactly one actor per owner
//! and parks idle ones without losing a message.

pub mod registry;
pub(crate) mod slot;

use std::sync::{Arc, Weak};

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::domain::idempotency::{
    Fingerprint, IdemKey, KeyRecord, KeyTable, Lookup, StoredResponse, KEY_SWEEP_PER_WRITE,
};
use crate::domain::{Command, Ctx, Item, Micros, OwnerId, OwnerState};
use crate::storage::codec::encode_record;
use crate::storage::pipeline::{Failed, Pipeline, Waiter};
use crate::storage::wal::Wal;

/// Mailbox depth per owner. A full mailbox answers 503 `overloaded` at once
/// (`try_send`); it never queues without bound.
pub const MAILBOX_DEPTH_DEFAULT: usize = 4096;
/// Messages an actor takes from its mailbox per wake-up.
const MAILBOX_BATCH_MAX: usize = 256;

/// What a caller asks an owner.
#[derive(Debug)]
pub enum Request {
    Get(Uuid),
    List {
        after: Option<Uuid>,
        limit: usize,
    },
    Write {
        cmd: Command,
        key: Option<(IdemKey, Fingerprint)>,
    },
}

/// What an owner answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Found(Option<Item>),
    Page {
        items: Vec<Item>,
        more: bool,
    },
    /// A state-machine outcome; `replayed` when it came from a stored key.
    Done {
        result: StoredResponse,
        replayed: bool,
    },
    /// The key is stored for a different request.
    KeyReused,
    /// The owner's key table is full of unexpired keys.
    KeysExhausted {
        retry_after: Duration,
    },
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
}

pub(crate) enum Msg {
    /// Boxed so a mailbox slot is two pointers: tokio allocates mailbox
    /// slots 32 at a time, and an idle owner should not pay for 32 full
    /// requests.
    Call {
        req: Box<Request>,
        tx: oneshot::Sender<Result<Answer, CallError>>,
    },
    Copy {
        tx: oneshot::Sender<OwnerCopy>,
    },
}

/// A reply waiting in the commit pipeline for its LSN to become durable.
pub struct Reply {
    tx: oneshot::Sender<Result<Answer, CallError>>,
    answer: Answer,
}

impl Reply {
    /// A reply that carries nothing: used to wait for durability alone.
    pub fn barrier(tx: oneshot::Sender<Result<Answer, CallError>>) -> Self {
        Reply {
            tx,
            answer: Answer::Found(None),
        }
    }
}

impl Waiter for Reply {
    fn complete(self, result: Result<(), Failed>) {
        // A caller that gave up (client went away) is not an error.
        let _ = self.tx.send(
            result
                .map(|()| self.answer)
                .map_err(|Failed| CallError::Unavailable),
        );
    }
}

/// The item and outcome of a transition, for its DEBUG event.
fn describe_transition(cmd: &Command, result: &StoredResponse) -> (String, String) {
    let item = match (cmd, result) {
        (_, Ok(crate::domain::Outcome::Created(item))) => item.id.to_string(),
        (Command::Replace { id, .. } | Command::Adjust { id, .. } | Command::Delete { id }, _) => {
            id.to_string()
        }
        (Command::Transact { ops }, _) => format!("{} ops", ops.len()),
        (Command::Create { .. }, _) => "-".into(),
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

/// What all actors share: the log and the settings.
pub struct Shared {
    pub wal: Wal<Reply>,
    pub config: ActorConfig,
    pub clock: Box<dyn Clock>,
}

impl Shared {
    fn pipeline(&self) -> &Pipeline<Reply> {
        &self.wal.pipeline
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
    shared: Arc<Shared>,
    /// Weak: the slot holds our mailbox sender, and a strong reference
    /// back would keep the mailbox open forever (no shutdown by drop).
    slot: Weak<registry::OwnerSlot>,
}

/// Start an actor for `owner` with `state`; returns its handle.
fn spawn(
    owner: OwnerId,
    state: OwnerState,
    last_lsn: u64,
    shared: Arc<Shared>,
    slot: Weak<registry::OwnerSlot>,
) -> OwnerHandle {
    let (tx, rx) = mpsc::channel(shared.config.mailbox_depth);
    let actor = OwnerActor {
        owner,
        state,
        last_lsn,
        rx,
        shared,
        slot,
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
            let received = match self.shared.config.idle_after {
                Some(idle) => match tokio::time::timeout(
                    idle,
                    self.rx.recv_many(&mut batch, MAILBOX_BATCH_MAX),
                )
                .await
                {
                    Ok(n) => n,
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
            if received < MAILBOX_BATCH_MAX {
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
            self.shared.wal.wait_for_room().await;
            for msg in batch.drain(..) {
                self.handle(msg);
            }
        }
    }

    /// Handle one message. Synchronous on purpose (see the module docs).
    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Call { req, tx } => match *req {
                Request::Get(id) => self.respond(tx, Answer::Found(self.state.get(&id).cloned())),
                Request::List { after, limit } => {
                    let (items, more) = self.state.list(after, limit);
                    self.respond(tx, Answer::Page { items, more });
                }
                Request::Write { cmd, key } => self.write(cmd, key, tx),
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
                });
            }
        }
    }

    /// Send `answer` once everything this owner has applied is durable.
    fn respond(&self, tx: oneshot::Sender<Result<Answer, CallError>>, answer: Answer) {
        self.shared
            .pipeline()
            .when_durable(self.last_lsn, Reply { tx, answer });
    }

    fn write(
        &mut self,
        cmd: Command,
        key: Option<(IdemKey, Fingerprint)>,
        tx: oneshot::Sender<Result<Answer, CallError>>,
    ) {
        // One DEBUG event per transition; nothing is measured when disabled.
        let started = tracing::enabled!(tracing::Level::DEBUG).then(std::time::Instant::now);
        let now = self.shared.clock.now_micros();
        let swept = self.state.keys.sweep(now, KEY_SWEEP_PER_WRITE);
        if swept > 0 {
            metrics::counter!("countiq_idempotency_expired_total").increment(swept as u64);
        }
        if let Some((k, fp)) = &key {
            if let Some(answer) = self.check_key(k, fp, now) {
                return self.respond(tx, answer);
            }
        }
        let new_id = match cmd {
            Command::Create { .. } => Uuid::now_v7(),
            _ => Uuid::nil(),
        };
        let ctx = Ctx { now, new_id };
        let (event, result) = match self.state.decide(&cmd, ctx) {
            Ok(event) => {
                if let Some(e) = &event {
                    self.state.evolve(e);
                }
                let outcome = self.state.outcome(&cmd, event.as_ref());
                (event, Ok(outcome))
            }
            Err(rejection) => (None, Err(rejection)),
        };
        let ttl_micros = self.shared.config.key_ttl.as_micros() as Micros;
        let key_record = key.map(|(key, fingerprint)| KeyRecord {
            key,
            fingerprint,
            response: result.clone(),
            expires_at: now.saturating_add(ttl_micros),
        });
        let trace = started.map(|at| (at, describe_transition(&cmd, &result)));
        let answer = Answer::Done {
            result,
            replayed: false,
        };
        if event.is_none() && key_record.is_none() {
            // Nothing to record (a rejection, or deleting a missing item).
            if let Some((at, (item, outcome))) = trace {
                trace_transition(&self.owner, &item, &outcome, None, at);
            }
            return self.respond(tx, answer);
        }
        if let Some(record) = &key_record {
            self.state.keys.insert(record.clone());
        }
        let owner = &self.owner;
        let encode = |lsn, buf: &mut Vec<u8>| {
            encode_record(lsn, owner, event.as_ref(), key_record.as_ref(), buf)
        };
        let appended = self
            .shared
            .pipeline()
            .append(encode, Some(Reply { tx, answer }));
        if let Ok(lsn) = appended {
            self.last_lsn = lsn;
        }
        if let Some((at, (item, outcome))) = trace {
            trace_transition(&self.owner, &item, &outcome, appended.ok(), at);
        }
        // On Err the pipeline has already failed the reply (503); the log is
        // dead and the node is stopping, so the in-memory state no longer
        // matters.
    }

    /// The answer for a keyed request that must not run again, if any.
    fn check_key(&mut self, key: &IdemKey, fp: &Fingerprint, now: Micros) -> Option<Answer> {
        match self.state.keys.lookup(key, fp, now) {
            Lookup::Replay(stored) => {
                metrics::counter!("countiq_idempotency_hits_total").increment(1);
                Some(Answer::Done {
                    result: stored.clone(),
                    replayed: true,
                })
            }
            Lookup::Reused => {
                metrics::counter!("countiq_idempotency_reuse_conflicts_total").increment(1);
                Some(Answer::KeyReused)
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
                Some(Answer::KeysExhausted { retry_after: wait })
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
    }

    fn take_state(&mut self) -> registry::Parked {
        let mut state = std::mem::take(&mut self.state);
        state.shrink();
        registry::Parked {
            state,
            last_lsn: self.last_lsn,
        }
    }
}
