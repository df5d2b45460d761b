//! loom models of the commit pipeline (`src/storage/pipeline.rs`, compiled
//! here against loom's types). Each invariant of the module docs has a model
//! of the correct pipeline, and each model has a "teeth" test: the same model
//! over a deliberately broken `Pipeline<_, FAULT>` that loom must fail.
//!
//! The writer thread of the models does what `storage::wal::Log::run`
//! does, with a "disk" instead of a file: `next_batch`, then (if the batch
//! has records) "write + sync", which stores the batch's last LSN in
//! `Disk::synced`, then `complete`. A leader (an appender that found the
//! log idle) does what `wal::Log::lead` does: `lead_batch`, the same
//! "write + sync", `complete`, `end_lead`. Waiters check the disk, not the
//! pipeline's own watermark: an `Ok` must never reach a caller before its
//! LSN is on the disk; the disk checks that batches reach it one holder at
//! a time, in LSN order, and never after the writer thread has stopped.

use std::sync::{Arc, Mutex as StdMutex};

use loom::sync::atomic::{AtomicU64, Ordering};
use loom::sync::{Condvar, Mutex};
use loom::thread;
use loom_tests::pipeline::{fault, Failed, Pipeline, Waiter};

/// Run `f` under loom with a bounded number of preemptions (the plain
/// `cargo test` command uses this bound; no environment variable needed).
fn check(preemptions: usize, f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(preemptions);
    let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = runs.clone();
    builder.check(move || {
        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        f()
    });
    // Shown with `--nocapture`: how many schedules loom explored.
    println!(
        "loom explored {} schedules",
        runs.load(std::sync::atomic::Ordering::Relaxed)
    );
}

/// The disk the model's token holders "sync" to. `synced` is the highest
/// LSN whose bytes have been synced; `lsns` is every LSN written, in order.
/// `lsns` and `stopped` are checked, not relied on for ordering, so they
/// need not be modelled (std types keep loom's state space small).
#[derive(Default)]
struct Disk {
    synced: AtomicU64,
    lsns: StdMutex<Vec<u64>>,
    /// The writer thread has returned (the real one drops the files then).
    stopped: std::sync::atomic::AtomicBool,
}

impl Disk {
    /// "write + sync" one batch's records (what `wal::Log::persist` does).
    fn write(&self, bytes: &[u8], records: u64, last_lsn: u64) {
        assert!(
            !self.stopped.load(std::sync::atomic::Ordering::SeqCst),
            "disk: written after the writer thread stopped"
        );
        let lsns: Vec<u64> = bytes
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(lsns.len() as u64, records);
        assert_eq!(*lsns.last().unwrap(), last_lsn);
        {
            let mut on_disk = self.lsns.lock().unwrap();
            let expected = on_disk.last().map_or(1, |l| l + 1);
            assert_eq!(lsns[0], expected, "disk: written out of LSN order");
            on_disk.extend(lsns);
        }
        // The sync returned: only now is the batch durable.
        self.synced.store(last_lsn, Ordering::SeqCst);
    }

    /// A waiters-only batch claims everything appended so far is durable:
    /// that must already be on the disk.
    fn check_empty(&self, last_lsn: u64) {
        assert!(
            self.synced.load(Ordering::SeqCst) >= last_lsn,
            "disk: an empty batch claims LSN {last_lsn} durable"
        );
    }
}

/// One caller's reply slot: how often it was completed and with what.
/// Shared by the waiter (which completes it) and the caller (which may wait
/// for it).
#[derive(Default)]
struct Reply {
    outcome: Mutex<Vec<Result<(), Failed>>>,
    done: Condvar,
}

impl Reply {
    /// Block until completed (what an HTTP handler awaiting its oneshot
    /// does). A lost completion turns into a loom deadlock.
    fn wait(&self) -> Result<(), Failed> {
        let mut o = self.outcome.lock().unwrap();
        while o.is_empty() {
            o = self.done.wait(o).unwrap();
        }
        o[0]
    }

    /// The completions, after every thread has been joined.
    fn outcomes(&self) -> Vec<Result<(), Failed>> {
        self.outcome.lock().unwrap().clone()
    }
}

/// The test waiter: on completion it records the outcome and checks, on
/// `Ok`, that the disk it observes at that moment covers its LSN.
struct TestWaiter {
    lsn: u64,
    disk: Arc<Disk>,
    reply: Arc<Reply>,
}

impl Waiter for TestWaiter {
    /// The LSN the append really gave (the one guessed before appending
    /// may have gone to a racing appender).
    fn assigned(&mut self, lsn: u64) {
        self.lsn = lsn;
    }

    fn complete(self, result: Result<(), Failed>) {
        if result.is_ok() {
            let synced = self.disk.synced.load(Ordering::SeqCst);
            assert!(
                synced >= self.lsn,
                "waiter for LSN {} completed Ok while the disk has only {synced}",
                self.lsn
            );
        }
        let mut o = self.reply.outcome.lock().unwrap();
        o.push(result);
        assert_eq!(o.len(), 1, "waiter for LSN {} completed twice", self.lsn);
        drop(o);
        self.reply.done.notify_all();
    }
}

/// A fresh waiter for `lsn` and the caller's end of it.
fn waiter(lsn: u64, disk: &Arc<Disk>) -> (TestWaiter, Arc<Reply>) {
    let reply = Arc::new(Reply::default());
    let w = TestWaiter {
        lsn,
        disk: disk.clone(),
        reply: reply.clone(),
    };
    (w, reply)
}

/// The record "encoding": the LSN itself, so the disk can tell which LSNs
/// it holds.
fn encode(lsn: u64, buf: &mut Vec<u8>) {
    buf.extend_from_slice(&lsn.to_le_bytes());
}

/// How the model writer treats batches with records.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SyncResult {
    Succeeds,
    Fails,
}

/// The writer thread's loop (as in `wal::Log::run`).
fn writer<const F: u8>(p: &Pipeline<TestWaiter, F>, disk: &Disk, sync: SyncResult) {
    let mut spare = Vec::new();
    while let Some(batch) = p.next_batch(spare) {
        if batch.records > 0 {
            if sync == SyncResult::Fails {
                p.fail(Some(batch));
                disk.stopped
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                return;
            }
            disk.write(&batch.bytes, batch.records, batch.last_lsn);
        } else {
            disk.check_empty(batch.last_lsn);
        }
        spare = p.complete(batch);
    }
    disk.stopped
        .store(true, std::sync::atomic::Ordering::SeqCst);
}

/// A fresh disk, a pipeline starting at LSN 1, and the model's writer
/// thread on them (`sync`: how its batches with records end).
fn start<const F: u8>(
    sync: SyncResult,
) -> (
    Arc<Disk>,
    Arc<Pipeline<TestWaiter, F>>,
    thread::JoinHandle<()>,
) {
    let disk = Arc::new(Disk::default());
    let p = Arc::new(Pipeline::<TestWaiter, F>::new(1));
    let w = {
        let (p, disk) = (p.clone(), disk.clone());
        thread::spawn(move || writer(&p, &disk, sync))
    };
    (disk, p, w)
}

/// An appender that leads when it finds the log idle (as an owner actor
/// does: `Appender::append`, then `Leading::persist`): append with a
/// waiter; if it got the token, take the batch, "write + sync" it (or fail
/// it), complete it and end the lead. Returns the append's result and the
/// caller's reply.
fn append_and_lead<const F: u8>(
    p: &Pipeline<TestWaiter, F>,
    disk: &Arc<Disk>,
    sync: SyncResult,
) -> (Result<u64, Failed>, Arc<Reply>) {
    let (wt, reply) = waiter(p.next_lsn(), disk);
    let appended = match p.append_leading(encode, Some(wt)) {
        Ok(a) => a,
        Err(Failed) => return (Err(Failed), reply),
    };
    if appended.lead {
        let batch = p.lead_batch(Vec::new());
        if batch.records > 0 {
            if sync == SyncResult::Fails {
                p.fail(Some(batch));
                p.end_lead();
                return (Ok(appended.lsn), reply);
            }
            disk.write(&batch.bytes, batch.records, batch.last_lsn);
        } else {
            disk.check_empty(batch.last_lsn);
        }
        p.complete(batch);
        p.end_lead();
    }
    (Ok(appended.lsn), reply)
}

// ---------------------------------------------------------------------------
// Invariant 1: no Ok before the LSN is durable.

/// Two appenders (one with its waiter in `append`, one with `append` then
/// `when_durable`, which may take the fast path) race the writer's
/// next_batch → sync → complete. Every waiter asserts, when completed Ok,
/// that the disk covers its LSN.
/// Catches: a watermark published before the sync (ack before fsync), and a
/// batch whose waiters have LSNs beyond its last LSN.
fn durable_before_ok<const F: u8>(preemptions: usize) {
    check(preemptions, || {
        let (disk, p, w) = start::<F>(SyncResult::Succeeds);
        let a = {
            let (p, disk) = (p.clone(), disk.clone());
            thread::spawn(move || {
                let lsn = p.append(encode, None).unwrap();
                let (wt, reply) = waiter(lsn, &disk);
                p.when_durable(lsn, wt);
                reply.wait()
            })
        };
        let (wt, reply) = waiter(p.next_lsn(), &disk);
        let lsn = p.append(encode, Some(wt)).unwrap();
        assert_eq!(reply.wait(), Ok(()));
        assert!(disk.synced.load(Ordering::SeqCst) >= lsn);
        assert_eq!(a.join().unwrap(), Ok(()));
        p.close();
        w.join().unwrap();
    });
}

#[test]
fn durable_before_ok_holds() {
    // Goal: invariant 1 on the real pipeline, 3 preemptions.
    durable_before_ok::<{ fault::NONE }>(3);
}

#[test]
#[should_panic(expected = "completed Ok while the disk has only")]
fn durable_before_ok_catches_early_watermark() {
    // Teeth: `next_batch` publishes the watermark when it hands out the
    // batch, before the sync; loom finds the `when_durable` fast path that
    // acknowledges an LSN the disk does not have.
    durable_before_ok::<{ fault::EARLY_WATERMARK }>(2);
}

// ---------------------------------------------------------------------------
// Invariant 2a: `when_durable` racing the writer's batch is never lost.

/// An actor appends a record (no waiter), then asks `when_durable` for it
/// and blocks until answered, while the writer takes, syncs and completes
/// that record's batch and parks. The check of the watermark in
/// `when_durable` and the writer's `complete` + park interleave in every
/// order; the waiter must be completed exactly once (completion asserts
/// once; a lost one leaves the caller waiting → loom reports a deadlock).
/// A second actor appends with a waiter at the same time, so batch
/// boundaries fall everywhere. `close` comes only after both answers, so it
/// cannot rescue a lost wake-up.
/// Catches: a token handed to a parked writer without waking it, or a
/// waiter not queued at all when the fast-path check missed.
fn when_durable_race<const F: u8>(preemptions: usize) {
    check(preemptions, || {
        let (disk, p, w) = start::<F>(SyncResult::Succeeds);
        let other = {
            let (p, disk) = (p.clone(), disk.clone());
            thread::spawn(move || {
                let (wt, reply) = waiter(p.next_lsn(), &disk);
                p.append(encode, Some(wt)).unwrap();
                reply.wait()
            })
        };
        let lsn = p.append(encode, None).unwrap();
        let (wt, reply) = waiter(lsn, &disk);
        p.when_durable(lsn, wt);
        assert_eq!(reply.wait(), Ok(()));
        assert_eq!(reply.outcomes().len(), 1);
        assert_eq!(other.join().unwrap(), Ok(()));
        p.close();
        w.join().unwrap();
    });
}

#[test]
fn when_durable_race_completes_once() {
    // Goal: invariant 2 for the when_durable / batch race, 3 preemptions.
    when_durable_race::<{ fault::NONE }>(3);
}

#[test]
#[should_panic(expected = "deadlock")]
fn when_durable_race_catches_skipped_wake() {
    // Teeth: handing an idle log's token to the writer thread does not
    // wake it; loom finds the schedule where the writer parked before the
    // append: it never takes the record, and nobody ever answers.
    when_durable_race::<{ fault::SKIP_WAKE }>(2);
}

// ---------------------------------------------------------------------------
// Invariant 2b: failure completes everybody, once, never with a false Ok.

/// The writer fails the first batch with records (a failed write/sync),
/// racing two appenders (an append with a waiter; an append without one
/// followed by `when_durable`). Nothing is ever synced, so every waiter
/// must end with `Err(Failed)`: waiters in the failed batch, waiters queued
/// meanwhile, and waiters arriving after the failure. After joining every
/// thread, each waiter has been completed exactly once.
/// Catches: `fail` forgetting queued waiters (a request that hangs
/// forever), and any `Ok` for an LSN that never reached the disk (e.g. a
/// watermark published before the sync that then failed).
fn fail_completes_all<const F: u8>(preemptions: usize) {
    check(preemptions, || {
        let (disk, p, w) = start::<F>(SyncResult::Fails);
        let a = {
            let (p, disk) = (p.clone(), disk.clone());
            thread::spawn(move || {
                let (wt, reply) = waiter(p.next_lsn(), &disk);
                let _ = p.append(encode, Some(wt));
                reply
            })
        };
        let mut replies = Vec::new();
        if let Ok(lsn) = p.append(encode, None) {
            let (wt, reply) = waiter(lsn, &disk);
            p.when_durable(lsn, wt);
            replies.push(reply);
        }
        replies.push(a.join().unwrap());
        w.join().unwrap();
        assert_eq!(disk.synced.load(Ordering::SeqCst), 0);
        for reply in replies {
            assert_eq!(
                reply.outcomes(),
                vec![Err(Failed)],
                "every waiter fails exactly once"
            );
        }
        assert!(p.has_failed());
    });
}

#[test]
fn fail_completes_every_waiter_once() {
    // Goal: invariant 2 under failure, 3 preemptions.
    fail_completes_all::<{ fault::NONE }>(3);
}

#[test]
#[should_panic(expected = "every waiter fails exactly once")]
fn fail_catches_forgotten_queued_waiters() {
    // Teeth: `fail` fails only the batch's waiters; loom finds the waiter
    // queued while the writer held the failing batch, never completed.
    fail_completes_all::<{ fault::FAIL_LEAVES_QUEUED }>(2);
}

#[test]
#[should_panic(expected = "completed Ok while the disk has only")]
fn fail_catches_ok_for_failed_lsn() {
    // Teeth: with the watermark published before the sync, a `when_durable`
    // during the failing sync answers Ok for an LSN that is never durable.
    fail_completes_all::<{ fault::EARLY_WATERMARK }>(2);
}

// ---------------------------------------------------------------------------
// Close: everything appended before `close` is written before the writer
// stops.

/// Two appenders (two records and one) append with waiters while main closes the
/// pipeline and the writer drains. Appends that returned an LSN must be on
/// the disk and answered Ok when the writer has stopped; appends refused
/// (after close) must be answered Err; nobody is answered twice or never.
/// Catches: a writer that stops on `closing` with records still pending
/// (acknowledged-as-accepted writes that are never written, replies that
/// never come).
fn close_drains<const F: u8>(preemptions: usize) {
    check(preemptions, || {
        let (disk, p, w) = start::<F>(SyncResult::Succeeds);
        let appender = |n: usize| {
            let (p, disk) = (p.clone(), disk.clone());
            thread::spawn(move || {
                let mut out = Vec::new();
                for _ in 0..n {
                    let (wt, reply) = waiter(p.next_lsn(), &disk);
                    out.push((p.append(encode, Some(wt)), reply));
                }
                out
            })
        };
        let (a, b) = (appender(2), appender(1));
        p.close();
        let mut appended = a.join().unwrap();
        appended.extend(b.join().unwrap());
        w.join().unwrap();
        let on_disk = disk.lsns.lock().unwrap().clone();
        for (result, reply) in appended {
            match result {
                Ok(lsn) => {
                    assert!(on_disk.contains(&lsn), "accepted LSN {lsn} never written");
                    assert_eq!(
                        reply.outcomes(),
                        vec![Ok(())],
                        "LSN {lsn} not answered once"
                    );
                }
                Err(Failed) => assert_eq!(reply.outcomes(), vec![Err(Failed)]),
            }
        }
    });
}

#[test]
fn close_drains_everything_pending() {
    // Goal: close semantics, 3 preemptions.
    close_drains::<{ fault::NONE }>(3);
}

#[test]
#[should_panic(expected = "never written")]
fn close_catches_dropped_pending() {
    // Teeth: `next_batch` returns None as soon as `closing` is set; loom
    // finds the append that got its LSN just before the close and is lost.
    close_drains::<{ fault::CLOSE_DROPS_PENDING }>(2);
}

// ---------------------------------------------------------------------------
// Leaders: an appender that finds the log idle writes and syncs itself.

/// Two appenders append with waiters and lead when they find the log idle,
/// while a third party reads (`when_durable` of the last LSN it saw) and
/// the writer thread takes over whatever a leader leaves behind. Every
/// waiter must be answered Ok exactly once, after the disk covers it; the
/// disk must see one holder at a time, in LSN order. `close` only after
/// every answer, so it cannot rescue a forgotten record.
/// Catches: a leader granted while the token is held (two holders), a
/// leader that frees the token with work pending, a read queued on an idle
/// log, a hand-off that does not wake the writer, and ack before sync on
/// the leader's path.
fn leaders<const F: u8>(preemptions: usize) {
    check(preemptions, || {
        let (disk, p, w) = start::<F>(SyncResult::Succeeds);
        let a = {
            let (p, disk) = (p.clone(), disk.clone());
            thread::spawn(move || {
                let (result, reply) = append_and_lead(&p, &disk, SyncResult::Succeeds);
                (result, reply.wait())
            })
        };
        let reader = {
            let (p, disk) = (p.clone(), disk.clone());
            thread::spawn(move || {
                // The LSN a read would wait for: whatever was assigned.
                let lsn = p.next_lsn() - 1;
                let (wt, reply) = waiter(lsn, &disk);
                p.when_durable(lsn, wt);
                reply.wait()
            })
        };
        let (result, reply) = append_and_lead(&p, &disk, SyncResult::Succeeds);
        assert!(result.is_ok());
        assert_eq!(reply.wait(), Ok(()));
        assert_eq!(reply.outcomes().len(), 1);
        let (other, answer) = a.join().unwrap();
        assert!(other.is_ok());
        assert_eq!(answer, Ok(()));
        assert_eq!(reader.join().unwrap(), Ok(()));
        p.close();
        w.join().unwrap();
        assert_eq!(*disk.lsns.lock().unwrap(), vec![1, 2]);
    });
}

#[test]
fn leaders_answer_once_in_order() {
    // Goal: invariants 1-4 with leaders, 3 preemptions.
    leaders::<{ fault::NONE }>(3);
}

#[test]
#[should_panic(expected = "completed Ok while the disk has only")]
fn leaders_catch_two_holders() {
    // Teeth: every appender leads; loom finds the second holder taking an
    // empty batch and completing it (and so the other's waiter) while the
    // first holder's write of that LSN is still under way.
    leaders::<{ fault::LEAD_WHILE_HELD }>(2);
}

#[test]
#[should_panic(expected = "deadlock")]
fn leaders_catch_release_with_work() {
    // Teeth: a leader frees the token without looking at what joined its
    // batch meanwhile; the other appender's record waits forever.
    leaders::<{ fault::RELEASE_WITH_WORK }>(2);
}

#[test]
#[should_panic(expected = "deadlock")]
fn leaders_catch_read_queued_when_idle() {
    // Teeth: a read that finds the log idle (nothing to write) is queued
    // instead of answered; nobody holds the token to take it.
    leaders::<{ fault::QUEUE_WHEN_IDLE }>(2);
}

#[test]
#[should_panic(expected = "completed Ok while the disk has only")]
fn leaders_catch_early_watermark() {
    // Teeth: ack before sync on the leader's path: the watermark is
    // published when the leader takes its batch.
    leaders::<{ fault::EARLY_WATERMARK }>(2);
}

/// A leader's sync fails while another appender and the writer thread
/// race it: every waiter ends `Err(Failed)` exactly once, nothing is on
/// the disk, the log says failed, and the writer thread stops (no close
/// needed: a failed log ends it).
/// Catches: waiters left queued by the failing leader.
fn leader_fails<const F: u8>(preemptions: usize) {
    check(preemptions, || {
        let (disk, p, w) = start::<F>(SyncResult::Fails);
        let a = {
            let (p, disk) = (p.clone(), disk.clone());
            thread::spawn(move || append_and_lead(&p, &disk, SyncResult::Fails).1)
        };
        let mine = append_and_lead(&p, &disk, SyncResult::Fails).1;
        let other = a.join().unwrap();
        w.join().unwrap();
        assert_eq!(disk.synced.load(Ordering::SeqCst), 0);
        for reply in [mine, other] {
            assert_eq!(
                reply.outcomes(),
                vec![Err(Failed)],
                "every waiter fails exactly once"
            );
        }
        assert!(p.has_failed());
    });
}

#[test]
fn leader_failure_fails_every_waiter_once() {
    // Goal: invariant 2 under a leader's failure, 3 preemptions.
    leader_fails::<{ fault::NONE }>(3);
}

#[test]
#[should_panic(expected = "every waiter fails exactly once")]
fn leader_failure_catches_forgotten_queued_waiters() {
    // Teeth: `fail` forgets the queued waiters; loom finds the appender
    // that joined while the leader's sync was failing.
    leader_fails::<{ fault::FAIL_LEAVES_QUEUED }>(2);
}

/// `close` while an appender may be leading: the writer thread must not
/// stop (the real one then drops the segment files) before the leader has
/// written; every accepted append is on the disk and answered once.
/// Catches: a writer that stops on `closing` while the token is held.
fn close_with_leader<const F: u8>(preemptions: usize) {
    check(preemptions, || {
        let (disk, p, w) = start::<F>(SyncResult::Succeeds);
        let a = {
            let (p, disk) = (p.clone(), disk.clone());
            thread::spawn(move || append_and_lead(&p, &disk, SyncResult::Succeeds))
        };
        p.close();
        let (result, reply) = a.join().unwrap();
        w.join().unwrap();
        match result {
            Ok(lsn) => {
                assert!(disk.lsns.lock().unwrap().contains(&lsn));
                assert_eq!(reply.outcomes(), vec![Ok(())]);
            }
            Err(Failed) => assert_eq!(reply.outcomes(), vec![Err(Failed)]),
        }
    });
}

#[test]
fn close_waits_for_the_leader() {
    // Goal: close semantics with a leader, 3 preemptions.
    close_with_leader::<{ fault::NONE }>(3);
}

#[test]
#[should_panic(expected = "written after the writer thread stopped")]
fn close_catches_writer_stopping_under_a_leader() {
    // Teeth: the writer stops as soon as `closing` is set; loom finds the
    // leader that writes after the files are gone.
    close_with_leader::<{ fault::CLOSE_DROPS_PENDING }>(2);
}
