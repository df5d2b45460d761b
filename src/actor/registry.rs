//! The owner registry: owner id → that owner's [`Slot`] (a running actor's
//! mailbox, or the state it parked).
//!
//! - Activation: a new owner gets a parked slot with an empty state, created
//!   in the DashMap entry's lock, so racing first requests share one slot;
//!   the slot starts exactly one actor under its own lock.
//! - Parking: an idle actor hands its state back to its slot
//!   (`OwnerActor::try_park` → [`Slot::park`]); the next request starts a new
//!   actor from it. Parked owners cost their state and one map entry, not a
//!   task and a mailbox.
//! - Calls: [`Slot::send`] does a non-blocking `try_send` into the bounded
//!   mailbox *under the slot lock*, so a send can never fall between a
//!   parking actor's close and drain (see `slot.rs` for why that matters
//!   with tokio's permit-then-push channels; loom-tests/tests/slot.rs checks
//!   it). Full → `Overloaded` at once (the transport answers 503 with
//!   Retry-After).
//!
//! Lock order: DashMap shard → (released) → slot → commit pipeline. No map
//! guard is held while a slot is locked or across an await.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use tokio::sync::Semaphore;

use super::feed::{SubscribeError, Subscription, SUBSCRIBERS_PER_NODE_MAX};
use super::slot::{Mailbox, SendError, Slot, View};
use super::{
    spawn, Call, CallError, HistoryPage, Msg, OwnerCopy, OwnerHandle, Page, Read, Reply, Shared,
    Written,
};
use crate::domain::idempotency::{Fingerprint, IdemKey};
use crate::domain::{Command, Item, OwnerId, OwnerState};

/// What an idle actor leaves behind.
#[derive(Default)]
pub(crate) struct Parked {
    pub state: OwnerState,
    pub last_lsn: u64,
    /// The change-feed hub, kept while parked: a parked owner's
    /// subscribers stay connected.
    pub feed: Option<super::feed::Hub>,
}

pub(crate) type OwnerSlot = Slot<OwnerHandle, Parked>;

impl Mailbox for OwnerHandle {
    type Msg = Msg;

    fn try_send(&self, msg: Msg) -> Result<(), SendError<Msg>> {
        self.tx.try_send(msg).map_err(|e| match e {
            mpsc::error::TrySendError::Full(m) => SendError::Full(m),
            mpsc::error::TrySendError::Closed(m) => SendError::Closed(m),
        })
    }
}

struct Inner {
    /// foldhash, not the default SipHash: the map is looked up on every
    /// request, and its keys are owner ids from verified tokens, which a
    /// client cannot choose freely to make them collide.
    slots: DashMap<OwnerId, Arc<OwnerSlot>, foldhash::fast::RandomState>,
    shared: Arc<Shared>,
    /// Actors started, ever (the `countiq_actor_activations_total` metric,
    /// kept here too so tests can count activations exactly).
    activations: AtomicU64,
    /// The node-wide bound on change-feed subscriptions.
    subscribers: Arc<Semaphore>,
}

/// Cloneable entry point to every owner.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

impl Registry {
    pub fn new(shared: Arc<Shared>) -> Self {
        Registry {
            inner: Arc::new(Inner {
                slots: DashMap::default(),
                shared,
                activations: AtomicU64::new(0),
                subscribers: Arc::new(Semaphore::new(SUBSCRIBERS_PER_NODE_MAX)),
            }),
        }
    }

    /// Whether the log has failed: nothing more will be acknowledged.
    pub fn log_failed(&self) -> bool {
        self.inner.shared.log.pipeline.has_failed()
    }

    /// The next LSN the log will assign (the checkpointer's "covers").
    pub fn next_lsn(&self) -> u64 {
        self.inner.shared.log.pipeline.next_lsn()
    }

    /// Resolves once every record up to `lsn` is durable; `Unavailable` if
    /// the log fails first.
    pub async fn barrier(&self, lsn: u64) -> Result<(), CallError> {
        let (tx, rx) = oneshot::channel();
        (self.inner.shared.log.pipeline).when_durable(lsn, Reply::Barrier(tx));
        rx.await.unwrap_or(Err(CallError::Unavailable))
    }

    /// How many actors this registry has started (activations, including
    /// re-activations of parked owners).
    pub fn activations(&self) -> u64 {
        self.inner.activations.load(Ordering::Relaxed)
    }

    /// Install recovered owners as parked (activated on first use).
    pub fn load(&self, owner: OwnerId, state: OwnerState, last_lsn: u64) {
        let slot = Arc::new(Slot::parked(Parked {
            state,
            last_lsn,
            feed: None,
        }));
        let previous = self.inner.slots.insert(owner, slot);
        assert!(previous.is_none(), "an owner is loaded once");
    }

    /// The owner's slot, created (parked, empty) on first use.
    fn slot(&self, owner: &OwnerId) -> Arc<OwnerSlot> {
        if let Some(slot) = self.inner.slots.get(owner) {
            return slot.clone();
        }
        let entry = self.inner.slots.entry(owner.clone());
        entry
            .or_insert_with(|| Arc::new(Slot::parked(Parked::default())))
            .clone()
    }

    /// Start `owner`'s actor from its parked state. Runs under the slot
    /// lock (from `Slot::send`): it only spawns.
    fn start(&self, owner: &OwnerId, parked: Parked, slot: &Arc<OwnerSlot>) -> OwnerHandle {
        metrics::counter!("countiq_actor_activations_total").increment(1);
        self.inner.activations.fetch_add(1, Ordering::Relaxed);
        let shared = self.inner.shared.clone();
        spawn(
            owner.clone(),
            parked.state,
            parked.last_lsn,
            parked.feed,
            shared,
            Arc::downgrade(slot),
        )
    }

    /// One item of `owner`, once the state it reflects is durable.
    pub async fn get(&self, owner: &OwnerId, id: Uuid) -> Result<Read<Option<Item>>, CallError> {
        self.call(owner, |tx| Call::Get { id, tx }).await
    }

    /// Up to `limit` items after `after` (exclusive), in listing order.
    /// A page of item `id`'s history, newest first, versions below
    /// `before`; `None` when the item does not exist.
    pub async fn history(
        &self,
        owner: &OwnerId,
        id: Uuid,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Read<Option<HistoryPage>>, CallError> {
        self.call(owner, |tx| Call::History {
            id,
            before,
            limit,
            tx,
        })
        .await
    }

    pub async fn list(
        &self,
        owner: &OwnerId,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Read<Page>, CallError> {
        self.call(owner, |tx| Call::List { after, limit, tx }).await
    }

    /// Run `cmd` as one transition of `owner`, keyed if `key` is given;
    /// answered once the transition (or the state a rejection saw) is
    /// durable.
    pub async fn write(
        &self,
        owner: &OwnerId,
        cmd: Command,
        key: Option<(IdemKey, Fingerprint)>,
    ) -> Result<Written, CallError> {
        self.call(owner, |tx| Call::Write { cmd, key, tx }).await
    }

    /// Open a change-feed subscription: live events of `owner` after the
    /// returned `lsn`, which is durable when this returns (module `feed`).
    /// Bounded per owner and per node.
    pub async fn subscribe(&self, owner: &OwnerId) -> Result<Subscription, SubscribeError> {
        let permit = (self.inner.subscribers.clone())
            .try_acquire_owned()
            .map_err(|_| SubscribeError::NodeFull)?;
        let read = self.call(owner, |tx| Call::Subscribe { tx }).await?;
        let live = read.value.ok_or(SubscribeError::OwnerFull)?;
        Ok(Subscription::new(live, read.lsn, permit))
    }

    /// Where the log's segments are (the change feed's replay).
    pub fn log_dir(&self) -> &std::path::Path {
        &self.inner.shared.log_dir
    }

    /// The highest durable LSN of the whole node.
    pub fn durable_lsn(&self) -> u64 {
        self.inner.shared.log.pipeline.durable_lsn()
    }

    /// Send one call to `owner`'s actor (starting it if parked) and wait.
    async fn call<T>(
        &self,
        owner: &OwnerId,
        call: impl FnOnce(oneshot::Sender<Result<T, CallError>>) -> Call,
    ) -> Result<T, CallError> {
        let _in_flight = self.inner.shared.calls.enter();
        let slot = self.slot(owner);
        let (tx, rx) = oneshot::channel();
        let msg = Msg::Call(Box::new(call(tx)));
        match slot.send(msg, |parked| self.start(owner, parked, &slot)) {
            Ok(()) => rx.await.unwrap_or(Err(CallError::Unavailable)),
            Err(SendError::Full(_)) => Err(CallError::Overloaded),
            // Only if the actor died (a panic, which aborts the server).
            Err(SendError::Closed(_)) => Err(CallError::Unavailable),
        }
    }

    /// Every slot, without holding map guards afterwards.
    fn all_slots(&self) -> Vec<(OwnerId, Arc<OwnerSlot>)> {
        let slots = self.inner.slots.iter();
        slots
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect()
    }

    /// Copy every owner's persistent state (for a snapshot). Active owners
    /// copy their own state between two messages; parked ones are copied
    /// under their slot lock. No lock is held across an await. Fails if an
    /// owner's actor is gone without parking (its task was dropped: the
    /// runtime is shutting down, or it panicked): its state cannot be read.
    pub async fn copy_all(&self) -> Result<Vec<OwnerCopy>, ActorGone> {
        let mut copies = Vec::new();
        for (owner, slot) in self.all_slots() {
            copies.push(copy_owner(owner, &slot).await?);
        }
        Ok(copies)
    }

    /// Owners known, active, and the `top` deepest mailboxes (metrics).
    pub fn stats(&self, top: usize) -> RegistryStats {
        let mut stats = RegistryStats::default();
        for (owner, slot) in self.all_slots() {
            stats.owners += 1;
            let depth = slot.inspect(|v| match v {
                View::Active(h) => Some(h.tx.max_capacity() - h.tx.capacity()),
                View::Parked(_) => None,
            });
            if let Some(depth) = depth {
                stats.active += 1;
                if depth > 0 {
                    stats.top.push((owner, depth));
                }
            }
        }
        stats
            .top
            .sort_by_key(|(_, depth)| std::cmp::Reverse(*depth));
        stats.top.truncate(top);
        stats
    }

    /// Every owner known (after recovery: every owner the data holds).
    pub fn owners(&self) -> Vec<OwnerId> {
        self.all_slots()
            .into_iter()
            .map(|(owner, _)| owner)
            .collect()
    }

    /// (owners known, actors running).
    pub fn counts(&self) -> (usize, usize) {
        let slots = self.all_slots();
        let active = slots.iter().filter(|(_, s)| s.is_active()).count();
        (slots.len(), active)
    }
}

/// One owner's copy: from its actor if it runs, else from its parked state.
/// An owner's actor ended without parking, so its state is out of reach.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the actor of owner {0:?} is gone")]
pub struct ActorGone(pub OwnerId);

async fn copy_owner(owner: OwnerId, slot: &OwnerSlot) -> Result<OwnerCopy, ActorGone> {
    loop {
        let handle = slot.inspect(|v| match v {
            View::Active(h) => Err(h.clone()),
            View::Parked(p) => Ok(copy_parked(&owner, p)),
        });
        let handle = match handle {
            Ok(copy) => return Ok(copy),
            Err(handle) => handle,
        };
        // Parking closes the mailbox and stores the parked state in one
        // hold of the slot lock, which `inspect` also takes: an `Active`
        // view with a closed mailbox is an actor that ended without
        // parking. Retrying would spin forever without yielding.
        if handle.tx.is_closed() {
            return Err(ActorGone(owner));
        }
        let (tx, rx) = oneshot::channel();
        // `send().await`, not `try_send`: a snapshot may wait for a busy
        // mailbox. If the actor parks meanwhile, the message is dropped with
        // its mailbox, `rx` fails, and the loop copies the parked state.
        if handle.tx.send(Msg::Copy { tx }).await.is_ok() {
            if let Ok(copy) = rx.await {
                return Ok(copy);
            }
        }
    }
}

/// A sample of the registry for metrics.
#[derive(Debug, Default)]
pub struct RegistryStats {
    pub owners: usize,
    pub active: usize,
    /// Deepest mailboxes first.
    pub top: Vec<(OwnerId, usize)>,
}

fn copy_parked(owner: &OwnerId, p: &Parked) -> OwnerCopy {
    let (items, keys) = p.state.snapshot_view();
    OwnerCopy {
        owner: owner.clone(),
        last_lsn: p.last_lsn,
        items,
        keys,
        extra: p.state.snapshot_extra(),
    }
}

#[cfg(test)]
mod tests {
    use crate::actor::{SystemClock, Written};
    use crate::domain::{Command, ItemName, OwnerId, Qty};
    use crate::node::{Node, NodeConfig};

    /// Goal: when 100 first requests of a new owner race, exactly one actor
    /// starts and every request is applied. Method: a real node on a temp
    /// dir, 100 concurrent `call`s on a multi-thread runtime, then the
    /// activation counter and the owner's item count.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn racing_first_calls_activate_exactly_one_actor() {
        let dir = tempfile::tempdir().unwrap();
        let config = NodeConfig::quiet(dir.path());
        let node = Node::open(config, Box::new(SystemClock)).await.unwrap();
        let owner = OwnerId::new("racer").unwrap();
        assert_eq!(node.registry().activations(), 0);
        let start = std::sync::Arc::new(tokio::sync::Barrier::new(100));
        let calls: Vec<_> = (0..100)
            .map(|i| {
                let registry = node.registry().clone();
                let owner = owner.clone();
                let start = start.clone();
                tokio::spawn(async move {
                    start.wait().await;
                    let cmd = Command::Create {
                        name: ItemName::new(&format!("item-{i}")).unwrap(),
                        qty: Qty::new(i).unwrap(),
                        note: crate::domain::Note::NONE,
                    };
                    registry.write(&owner, cmd, None).await
                })
            })
            .collect();
        for call in calls {
            let answer = call.await.unwrap().unwrap();
            assert!(
                matches!(
                    answer,
                    Written::Done {
                        result: Ok(_),
                        replayed: false,
                        ..
                    }
                ),
                "{answer:?}"
            );
        }
        assert_eq!(node.registry().activations(), 1, "exactly one actor");
        let page = node.registry().list(&owner, None, 1000).await.unwrap();
        assert_eq!(page.value.items.len(), 100);
        assert!(!page.value.more);
        assert_eq!(node.registry().counts(), (1, 1));
        // A second owner is a second activation, and only one.
        let other = OwnerId::new("other").unwrap();
        for _ in 0..3 {
            node.registry()
                .get(&other, uuid::Uuid::nil())
                .await
                .unwrap();
        }
        assert_eq!(node.registry().activations(), 2);
    }

    /// Goal: a snapshot whose owner's actor is gone without parking (its
    /// runtime was dropped under it, as at the end of a test or after a
    /// panic) fails with `ActorGone` instead of retrying forever. Method:
    /// activate an owner on one runtime, drop that runtime (which drops the
    /// actor task), then copy from another runtime under a deadline.
    #[test]
    fn copying_an_owner_whose_actor_is_gone_fails_instead_of_spinning() {
        let dir = tempfile::tempdir().unwrap();
        let config = NodeConfig::quiet(dir.path());
        let owner = OwnerId::new("orphan").unwrap();
        let first = tokio::runtime::Runtime::new().unwrap();
        let node = first.block_on(async {
            let node = Node::open(config, Box::new(SystemClock)).await.unwrap();
            node.registry()
                .get(&owner, uuid::Uuid::nil())
                .await
                .unwrap();
            node
        });
        drop(first);
        // On its own thread: the broken version spins inside one poll, so
        // no timer of its runtime could ever interrupt it.
        let (done, result) = std::sync::mpsc::channel();
        let registry = node.registry().clone();
        std::thread::spawn(move || {
            let second = tokio::runtime::Runtime::new().unwrap();
            let copied = second.block_on(registry.copy_all());
            let _ = done.send(copied.map(|c| c.len()));
        });
        let copied = result
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("copy_all returns instead of spinning");
        assert_eq!(copied, Err(super::ActorGone(owner)));
    }
}
