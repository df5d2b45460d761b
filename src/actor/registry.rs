//! The owner registry: owner id → running actor or parked state.
//!
//! - Activation: the first request for an owner spawns its actor inside the
//!   DashMap entry's lock, so when many first requests race, exactly one
//!   actor starts and every racer gets its handle.
//! - Passivation: an idle actor parks its state back into its slot (see
//!   `OwnerActor::try_park`); the next request starts a new actor from it.
//!   Parked owners cost their state and one map entry, not a task and a
//!   mailbox.
//! - Calls: `try_send` into the bounded mailbox. Full → `Overloaded` at once
//!   (the transport answers 503 with Retry-After). Closed (the actor parked
//!   between lookup and send) → the message comes back in the error and is
//!   sent again to the next actor: never lost.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use tokio::sync::{mpsc, oneshot};

use super::{spawn, Answer, CallError, Msg, OwnerCopy, OwnerHandle, Request, Shared};
use crate::domain::{OwnerId, OwnerState};

/// Re-resolutions after `Closed` before giving up. One is always enough
/// (a parked slot stays parked until someone activates it); the bound only
/// turns a bug into an error instead of a spin.
const CLOSED_RETRIES_MAX: usize = 4;

pub(crate) struct Parked {
    pub state: OwnerState,
    pub last_lsn: u64,
}

pub(crate) enum Slot {
    Active(OwnerHandle),
    Parked(Parked),
}

pub(crate) struct Inner {
    pub slots: DashMap<OwnerId, Slot>,
    shared: Arc<Shared>,
    /// Actors started, ever (the `countiq_actor_activations_total` metric,
    /// readable in-process so tests can prove one activation per owner).
    activations: AtomicU64,
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
                slots: DashMap::new(),
                shared,
                activations: AtomicU64::new(0),
            }),
        }
    }

    /// How many actors this registry has started (activations, including
    /// restarts of parked owners).
    pub fn activations(&self) -> u64 {
        self.inner.activations.load(Ordering::Relaxed)
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// Install recovered owners as parked (activated on first use).
    pub fn load(&self, owner: OwnerId, state: OwnerState, last_lsn: u64) {
        let previous = self
            .inner
            .slots
            .insert(owner, Slot::Parked(Parked { state, last_lsn }));
        assert!(previous.is_none(), "an owner is loaded once");
    }

    /// The running actor of `owner`, started if needed.
    fn handle(&self, owner: &OwnerId) -> OwnerHandle {
        if let Some(slot) = self.inner.slots.get(owner) {
            if let Slot::Active(h) = &*slot {
                return h.clone();
            }
        }
        let start = |state, last_lsn| {
            metrics::counter!("countiq_actor_activations_total").increment(1);
            self.inner.activations.fetch_add(1, Ordering::Relaxed);
            spawn(
                owner.clone(),
                state,
                last_lsn,
                self.inner.shared.clone(),
                Arc::downgrade(&self.inner),
            )
        };
        match self.inner.slots.entry(owner.clone()) {
            Entry::Occupied(mut e) => match e.get_mut() {
                Slot::Active(h) => h.clone(),
                slot @ Slot::Parked(_) => {
                    let Slot::Parked(parked) = std::mem::replace(slot, Slot::Parked(placeholder()))
                    else {
                        unreachable!()
                    };
                    let h = start(parked.state, parked.last_lsn);
                    *slot = Slot::Active(h.clone());
                    h
                }
            },
            Entry::Vacant(e) => {
                let h = start(OwnerState::default(), 0);
                e.insert(Slot::Active(h.clone()));
                h
            }
        }
    }

    /// Ask `owner`'s actor and wait for the answer (which the pipeline
    /// releases only once the state it reports is durable).
    pub async fn call(&self, owner: &OwnerId, req: Request) -> Result<Answer, CallError> {
        let (tx, rx) = oneshot::channel();
        let mut msg = Msg::Call {
            req: Box::new(req),
            tx,
        };
        for _ in 0..CLOSED_RETRIES_MAX {
            match self.handle(owner).tx.try_send(msg) {
                Ok(()) => return rx.await.unwrap_or(Err(CallError::Unavailable)),
                Err(mpsc::error::TrySendError::Full(_)) => return Err(CallError::Overloaded),
                Err(mpsc::error::TrySendError::Closed(back)) => msg = back,
            }
        }
        Err(CallError::Unavailable)
    }

    /// Copy every owner's persistent state (for a snapshot). Active owners
    /// copy their own state between two messages; parked ones are copied
    /// here. No map guard is held across an await.
    pub async fn copy_all(&self) -> Vec<OwnerCopy> {
        let mut copies = Vec::new();
        let mut active = Vec::new();
        for slot in self.inner.slots.iter() {
            match slot.value() {
                Slot::Active(h) => active.push((slot.key().clone(), h.clone())),
                Slot::Parked(p) => copies.push(copy_parked(slot.key(), p)),
            }
        }
        for (owner, handle) in active {
            copies.push(self.copy_active(owner, handle).await);
        }
        copies
    }

    async fn copy_active(&self, owner: OwnerId, mut handle: OwnerHandle) -> OwnerCopy {
        loop {
            let (tx, rx) = oneshot::channel();
            // `send` (not `try_send`): a snapshot may wait for a busy mailbox.
            if handle.tx.send(Msg::Copy { tx }).await.is_ok() {
                if let Ok(copy) = rx.await {
                    return copy;
                }
            }
            // The actor parked meanwhile: copy the parked state, or follow
            // the actor that replaced it.
            match self.inner.slots.get(&owner).as_deref() {
                Some(Slot::Parked(p)) => return copy_parked(&owner, p),
                Some(Slot::Active(h)) => handle = h.clone(),
                None => unreachable!("slots are never removed"),
            }
        }
    }

    /// Owners known, active, and the `top` deepest mailboxes (metrics).
    pub fn stats(&self, top: usize) -> RegistryStats {
        let mut stats = RegistryStats::default();
        for slot in self.inner.slots.iter() {
            stats.owners += 1;
            if let Slot::Active(h) = slot.value() {
                stats.active += 1;
                let depth = h.tx.max_capacity() - h.tx.capacity();
                if depth > 0 {
                    stats.top.push((slot.key().clone(), depth));
                }
            }
        }
        stats.top.sort_by(|a, b| b.1.cmp(&a.1));
        stats.top.truncate(top);
        stats
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
    }
}

/// Stand-in while a parked state is moved out of its slot under the lock.
fn placeholder() -> Parked {
    Parked {
        state: OwnerState::default(),
        last_lsn: 0,
    }
}

#[cfg(test)]
mod tests {
    use crate::actor::{ActorConfig, Answer, Request, SystemClock};
    use crate::domain::{Command, ItemName, OwnerId, Qty};
    use crate::node::{Node, NodeConfig};

    /// Goal: when 100 first requests of a new owner race, exactly one actor
    /// starts and every request is applied. Method: a real node on a temp
    /// dir, 100 concurrent `call`s on a multi-thread runtime, then the
    /// activation counter and the owner's item count.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn racing_first_calls_activate_exactly_one_actor() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = NodeConfig::new(dir.path());
        config.actor = ActorConfig {
            idle_after: None,
            ..ActorConfig::default()
        };
        config.snapshot_interval = None;
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
                    };
                    registry
                        .call(&owner, Request::Write { cmd, key: None })
                        .await
                })
            })
            .collect();
        for call in calls {
            let answer = call.await.unwrap().unwrap();
            assert!(
                matches!(
                    answer,
                    Answer::Done {
                        result: Ok(_),
                        replayed: false
                    }
                ),
                "{answer:?}"
            );
        }
        assert_eq!(node.registry().activations(), 1, "exactly one actor");
        let page = node
            .registry()
            .call(
                &owner,
                Request::List {
                    after: None,
                    limit: 1000,
                },
            )
            .await
            .unwrap();
        let Answer::Page { items, more } = page else {
            panic!("{page:?}")
        };
        assert_eq!(items.len(), 100);
        assert!(!more);
        assert_eq!(node.registry().counts(), (1, 1));
        // A second owner is a second activation, and only one.
        let other = OwnerId::new("other").unwrap();
        for _ in 0..3 {
            node.registry()
                .call(&other, Request::Get(uuid::Uuid::nil()))
                .await
                .unwrap();
        }
        assert_eq!(node.registry().activations(), 2);
    }
}
