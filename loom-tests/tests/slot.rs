//! loom model of owner activation vs parking (`src/actor/slot.rs`, compiled
//! here against loom's types): sender threads (requests for the owner) race
//! the owner's actor parking itself. Checked, over every interleaving:
//! every message that was sent is handled exactly once, only by an actor
//! that holds the owner's state, and at most one actor holds that state at
//! any time. Each broken `Slot<_, _, FAULT>` must be caught.
//!
//! The mailbox double reproduces the one property of tokio's bounded
//! channel that matters here: `try_send` takes a permit (failing with
//! `Closed` once the receiver closed) and pushes the message in a separate
//! step, so a send that got its permit before `close` lands after it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as StdMutex};

use loom::sync::Mutex;
use loom::thread;
use loom_tests::slot::{fault, Mailbox, Parking, SendError, Slot, View};

/// Messages are numbered; the owner's state is the list of messages it has
/// applied, in order.
type Msg = u32;
type OwnerState = Vec<Msg>;

#[derive(Default)]
struct Queue {
    msgs: VecDeque<Msg>,
    closed: bool,
}

/// A tokio-like mailbox: sender and receiver share it.
#[derive(Clone, Default)]
struct TokioLike(Arc<Mutex<Queue>>);

impl Mailbox for TokioLike {
    type Msg = Msg;
    fn try_send(&self, msg: Msg) -> Result<(), SendError<Msg>> {
        // Step 1: the permit (tokio's semaphore), refused once closed.
        if self.0.lock().unwrap().closed {
            return Err(SendError::Closed(msg));
        }
        // Step 2: the push, which a closed receiver no longer prevents.
        self.0.lock().unwrap().msgs.push_back(msg);
        Ok(())
    }
}

impl TokioLike {
    fn close(&self) {
        self.0.lock().unwrap().closed = true;
    }
    fn try_recv(&self) -> Option<Msg> {
        self.0.lock().unwrap().msgs.pop_front()
    }
}

/// What the checks need to see across threads. Written by whichever thread
/// is running under loom; read after every thread is joined, so it need not
/// be modelled.
#[derive(Default)]
struct World {
    /// (message, actor id) for every handling.
    handled: StdMutex<Vec<(Msg, usize)>>,
    /// Actors that hold the owner's state right now.
    holders: AtomicUsize,
    /// Actors started so far (ids).
    started: AtomicUsize,
    /// The threads of the actors started by `send` (the model's
    /// `tokio::spawn`), joined by main at the end.
    actors: StdMutex<Vec<thread::JoinHandle<()>>>,
}

/// One actor: its mailbox's receiving side and, while it runs, the state.
struct Actor {
    id: usize,
    mailbox: TokioLike,
    state: Option<OwnerState>,
    world: Arc<World>,
}

impl Actor {
    fn start(id: usize, state: OwnerState, world: &Arc<World>) -> Actor {
        let holders = world.holders.fetch_add(1, Ordering::SeqCst) + 1;
        assert_eq!(holders, 1, "two actors hold the owner's state");
        Actor {
            id,
            mailbox: TokioLike::default(),
            state: Some(state),
            world: world.clone(),
        }
    }

    fn handle(&mut self, msg: Msg) {
        let state = self
            .state
            .as_mut()
            .expect("a message handled by an actor that does not hold the owner's state");
        state.push(msg);
        self.world.handled.lock().unwrap().push((msg, self.id));
    }

    /// What a running actor does with its mailbox between parks.
    fn run(&mut self) {
        while let Some(msg) = self.mailbox.try_recv() {
            self.handle(msg);
        }
    }
}

impl Parking for Actor {
    type State = OwnerState;
    fn close_mailbox(&mut self) {
        self.mailbox.close();
    }
    fn drain_mailbox(&mut self) {
        self.run();
    }
    fn take_state(&mut self) -> OwnerState {
        self.world.holders.fetch_sub(1, Ordering::SeqCst);
        self.state.take().expect("the state is given up once")
    }
}

/// Run `f` under loom with a bounded number of preemptions.
fn check(preemptions: usize, f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(preemptions);
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    builder.check(move || {
        counted.fetch_add(1, Ordering::Relaxed);
        f()
    });
    println!("loom explored {} schedules", runs.load(Ordering::Relaxed));
}

type TestSlot<const F: u8> = Slot<TokioLike, OwnerState, F>;

/// Start an actor from `state` on a thread of its own: it handles its
/// mailbox and then parks at once (its idle timeout fires), so every
/// activation races the next park. Returns its mailbox for the slot.
fn spawn_actor<const F: u8>(
    state: OwnerState,
    slot: &Arc<TestSlot<F>>,
    world: &Arc<World>,
) -> TokioLike {
    let id = world.started.fetch_add(1, Ordering::SeqCst);
    let mut actor = Actor::start(id, state, world);
    let mailbox = actor.mailbox.clone();
    let slot = slot.clone();
    let t = thread::spawn(move || {
        actor.run();
        slot.park(&mut actor);
    });
    world.actors.lock().unwrap().push(t);
    mailbox
}

/// Two requests (main and one thread) each send one message to an owner whose actor is
/// running and about to park. Every actor (the first one, and any that a
/// send starts from the parked state) runs on its own thread, handles its
/// mailbox and parks, so sends race parks and activations race parks.
/// After every thread has finished, the owner is parked, and: every send
/// returned Ok, every message was handled exactly once, only by an actor
/// holding the state, the state was never held by two actors, and the
/// parked state holds every message.
/// Catches: a message that gets into a mailbox after its actor drained it
/// (a lost request), a message handled after the state left its actor,
/// and two actors holding one owner's state.
fn activation_vs_parking<const F: u8>(preemptions: usize) {
    check(preemptions, || {
        let world = Arc::new(World::default());
        let slot = Arc::new(TestSlot::<F>::parked(Vec::new()));
        // The owner's first actor starts (from an empty state) with
        // message 0, before the race.
        slot.send(0, |state| spawn_actor(state, &slot, &world))
            .unwrap();
        // Request 1 on its own thread, request 2 from this one (loom allows
        // five threads: main, one sender, up to three actors).
        let sender = {
            let (slot, world) = (slot.clone(), world.clone());
            thread::spawn(move || slot.send(1, |state| spawn_actor(state, &slot, &world)))
        };
        let sent = slot.send(2, |state| spawn_actor(state, &slot, &world));
        assert_eq!(sent, Ok(()), "lost request: a send failed");
        let sent = sender.join().unwrap();
        assert_eq!(sent, Ok(()), "lost request: a send failed");
        loop {
            let Some(t) = world.actors.lock().unwrap().pop() else {
                break;
            };
            t.join().unwrap();
        }
        assert_eq!(world.holders.load(Ordering::SeqCst), 0);
        let mut handled = world.handled.lock().unwrap().clone();
        handled.sort();
        let msgs: Vec<Msg> = handled.iter().map(|&(m, _)| m).collect();
        assert_eq!(
            msgs,
            vec![0, 1, 2],
            "lost request: a message never handled, or handled twice"
        );
        let mut parked = slot.inspect(|v| match v {
            View::Parked(s) => s.clone(),
            View::Active(_) => panic!("every actor parked, the slot must be parked"),
        });
        parked.sort();
        assert_eq!(parked, vec![0, 1, 2], "the parked state lost a transition");
    });
}

#[test]
fn activation_vs_parking_loses_nothing() {
    // Goal: the slot protocol, 3 preemptions.
    activation_vs_parking::<{ fault::NONE }>(3);
}

#[test]
#[should_panic(expected = "lost request")]
fn activation_catches_send_outside_lock() {
    // Teeth: today's registry (handle cloned under the lock, `try_send`
    // after it). loom finds: a sender takes its permit; the actor closes,
    // drains an empty mailbox, parks; the sender pushes into the dead
    // mailbox and reports success. The message is never handled.
    activation_vs_parking::<{ fault::SEND_OUTSIDE_LOCK }>(2);
}

#[test]
#[should_panic(expected = "lost request")]
fn activation_catches_close_outside_lock() {
    // Teeth: park closes and drains before taking the slot lock. loom finds
    // a sender that, under the lock, finds the slot still Active but its
    // mailbox closed (the request fails: 503 for a healthy owner), and a
    // sender holding a permit that pushes after the drain (lost).
    activation_vs_parking::<{ fault::CLOSE_OUTSIDE_LOCK }>(2);
}

#[test]
#[should_panic(expected = "does not hold the owner's state")]
fn activation_catches_park_before_drain() {
    // Teeth: park hands the state back before draining; a message already
    // in the mailbox is then handled by an actor without the state, while
    // a sender may start the next actor from a state that misses it.
    activation_vs_parking::<{ fault::PARK_BEFORE_DRAIN }>(2);
}
