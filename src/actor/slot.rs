//! One owner's activation slot: either a running actor (its mailbox handle)
//! or the parked state it left behind. This is the registry's activation vs
//! parking protocol as a primitive of our own, written only against
//! `crate::sync`, so that loom can model-check it (`loom-tests/tests/slot.rs`);
//! loom cannot see inside DashMap or tokio's channels.
//!
//! # The protocol
//! One lock per slot orders every decision about the owner:
//! - [`Slot::send`] runs under the lock: if the slot is parked it starts the
//!   next actor from the parked state (`activate`), then it hands the
//!   message to the running actor's mailbox with a non-blocking `try_send`,
//!   *still under the lock*.
//! - [`Slot::park`] runs under the same lock: close the mailbox, handle every
//!   message already in it, then store the state as `Parked`.
//!
//! So a send either completes entirely before a park (the message is in the
//! mailbox, and the drain handles it) or starts after it (the slot is parked,
//! and the send starts the next actor). Never both, never neither.
//!
//! Why the send must be under the lock: tokio's bounded `try_send` takes a
//! permit and only then pushes the message. A sender that got its permit
//! before `close` pushes after it, and a `try_recv` drain that ran in between
//! saw an empty mailbox: the message is left in a closed channel nobody reads
//! (tokio's `Receiver::close` docs: only `recv()` until `None` drains
//! everything, and that needs an `.await`). Resending on `Closed` does not
//! help, because that send *succeeded*. Sending under the lock closes this
//! window: park cannot run between the permit and the push.
//!
//! The lock is held only for non-blocking work: `try_send`, starting an
//! actor (spawning a task), and the park's drain, which handles messages
//! synchronously (actor handling never awaits). Lock order: slot, then the
//! commit pipeline's lock (the drain appends); never the reverse.
//!
//! # Deliberate faults
//! `Slot<H, S, FAULT>` takes a const parameter that defaults to
//! [`fault::NONE`]; the other values exist only for the loom models to
//! prove they catch them. The `if FAULT == ..` tests are on constants, so
//! the service's `Slot<H, S>` is exactly the correct code.

use crate::sync::{Mutex, MutexGuard};

/// Deliberately broken variants of the protocol, for the loom models only.
pub mod fault {
    /// The correct protocol.
    pub const NONE: u8 = 0;
    /// The registry before this primitive: clone the handle under the lock,
    /// send after releasing it, resend on `Closed`.
    pub const SEND_OUTSIDE_LOCK: u8 = 1;
    /// Park closes and drains the mailbox before taking the slot lock.
    pub const CLOSE_OUTSIDE_LOCK: u8 = 2;
    /// Park stores the state as parked and releases the lock, then drains.
    pub const PARK_BEFORE_DRAIN: u8 = 3;
}

/// Sends that find a closed mailbox before giving up (only with
/// [`fault::SEND_OUTSIDE_LOCK`]; the correct protocol never retries).
const CLOSED_RETRIES_MAX: usize = 4;

/// Why a message was not delivered. The message comes back.
#[derive(Debug, PartialEq, Eq)]
pub enum SendError<M> {
    /// The mailbox is at its bound: answer "overloaded" at once.
    Full(M),
    /// The running actor's mailbox is closed although the actor never
    /// parked: it died (panicked). The owner is unavailable.
    Closed(M),
}

/// The sending side of an actor's mailbox, as the slot needs it.
pub trait Mailbox: Clone {
    type Msg;
    /// Non-blocking send. Must not block or await: it runs under the slot
    /// lock. `Closed` once the receiver has been closed.
    fn try_send(&self, msg: Self::Msg) -> Result<(), SendError<Self::Msg>>;
}

/// The actor side of parking: what [`Slot::park`] does, in this order,
/// under the slot lock.
pub trait Parking {
    type State;
    /// Close the mailbox: every later `try_send` returns `Closed`.
    fn close_mailbox(&mut self);
    /// Handle every message still in the (closed) mailbox, synchronously.
    fn drain_mailbox(&mut self);
    /// Give up the owner's state; the actor stops right after.
    fn take_state(&mut self) -> Self::State;
}

enum State<H, S> {
    Active(H),
    Parked(S),
    /// Only while `activate` runs under the lock. Left behind (with the lock
    /// poisoned) only if `activate` panicked.
    Activating,
}

/// A read-only view of a slot, for copying parked state (snapshots).
pub enum View<'a, H, S> {
    Active(&'a H),
    Parked(&'a S),
}

/// One owner: its running actor's mailbox (`H`) or its parked state (`S`).
pub struct Slot<H, S, const FAULT: u8 = { fault::NONE }> {
    state: Mutex<State<H, S>>,
}

impl<H: Mailbox, S, const FAULT: u8> Slot<H, S, FAULT> {
    /// A slot whose owner is not running (recovered, or new with the
    /// default state): the first `send` starts its actor.
    pub fn parked(state: S) -> Self {
        Slot {
            state: Mutex::new(State::Parked(state)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<H, S>> {
        // Poisoned means `activate` or a drain panicked: the owner's state
        // is lost or half-handled; refusing the owner is all that is safe.
        self.state.lock().expect("owner slot lock poisoned")
    }

    /// The running actor's mailbox, starting the actor from the parked
    /// state if needed. Under the lock.
    fn running<'g>(
        state: &'g mut MutexGuard<'_, State<H, S>>,
        activate: impl FnOnce(S) -> H,
    ) -> &'g H {
        if let State::Parked(_) = **state {
            let State::Parked(parked) = std::mem::replace(&mut **state, State::Activating) else {
                unreachable!()
            };
            **state = State::Active(activate(parked));
        }
        match &**state {
            State::Active(h) => h,
            _ => unreachable!("an activation panicked and left the slot poisoned"),
        }
    }

    /// Deliver `msg` to the owner's running actor; if it is parked, start
    /// the next actor from its state with `activate` first. The `try_send`
    /// runs under the slot lock, so it can never interleave with a park
    /// (module docs). `activate` runs under the lock: it must only spawn.
    pub fn send(
        &self,
        msg: H::Msg,
        activate: impl FnOnce(S) -> H,
    ) -> Result<(), SendError<H::Msg>> {
        if FAULT == fault::SEND_OUTSIDE_LOCK {
            return self.send_outside_lock(msg, activate);
        }
        let mut state = self.lock();
        Self::running(&mut state, activate).try_send(msg)
    }

    /// The broken protocol of [`fault::SEND_OUTSIDE_LOCK`].
    fn send_outside_lock(
        &self,
        mut msg: H::Msg,
        activate: impl FnOnce(S) -> H,
    ) -> Result<(), SendError<H::Msg>> {
        let mut activate = Some(activate);
        for _ in 0..CLOSED_RETRIES_MAX {
            let handle = {
                let mut state = self.lock();
                let activate = |s| (activate.take().expect("one activation per send"))(s);
                Self::running(&mut state, activate).clone()
            };
            match handle.try_send(msg) {
                Err(SendError::Closed(back)) => msg = back,
                done => return done,
            }
        }
        Err(SendError::Closed(msg))
    }

    /// Actor side: hand the state back and stop. Under the slot lock: close
    /// the mailbox, handle what is in it, store the state as parked. The
    /// caller must be the slot's running actor.
    pub fn park<A: Parking<State = S>>(&self, actor: &mut A) {
        if FAULT == fault::CLOSE_OUTSIDE_LOCK {
            actor.close_mailbox();
            actor.drain_mailbox();
            let mut state = self.lock();
            *state = State::Parked(actor.take_state());
            return;
        }
        let mut state = self.lock();
        assert!(
            matches!(*state, State::Active(_)),
            "only the running actor parks its slot"
        );
        actor.close_mailbox();
        if FAULT == fault::PARK_BEFORE_DRAIN {
            *state = State::Parked(actor.take_state());
            drop(state);
            actor.drain_mailbox();
            return;
        }
        actor.drain_mailbox();
        *state = State::Parked(actor.take_state());
    }

    /// Look at the slot under its lock (e.g. copy a parked state, or clone
    /// the running actor's handle).
    pub fn inspect<R>(&self, f: impl FnOnce(View<'_, H, S>) -> R) -> R {
        match &*self.lock() {
            State::Active(h) => f(View::Active(h)),
            State::Parked(s) => f(View::Parked(s)),
            State::Activating => unreachable!("an activation panicked and left the slot poisoned"),
        }
    }

    /// Whether an actor is running (metrics).
    pub fn is_active(&self) -> bool {
        self.inspect(|v| matches!(v, View::Active(_)))
    }
}
