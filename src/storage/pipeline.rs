//! The commit pipeline: how a record gets from an actor to disk, and how its
//! reply waits for it.
//!
//! Actors call [`Pipeline::append_leading`] (assign the next LSN and encode
//! the record into the shared pending buffer) and [`Pipeline::when_durable`]
//! (complete a reply once an LSN is durable). Whoever holds the *commit
//! token* takes *everything* pending as one batch, writes and syncs it, then
//! calls [`Pipeline::complete`] (advance the durable watermark, complete the
//! batch's waiters) or [`Pipeline::fail`].
//!
//! # The commit token: leader or writer thread
//! Exactly one party at a time may take and persist batches. The token is
//! - **free**: nothing is pending and every assigned LSN is durable (the
//!   log is idle);
//! - held by a **leader**: the appender that found the log idle
//!   ([`Pipeline::append_leading`] said so). It may persist the batch on its
//!   own thread ([`Pipeline::lead_batch`], then `complete`): one request at a
//!   time then costs no hand-off to another thread and back. Then
//!   [`Pipeline::end_lead`] frees the token, or, if more arrived meanwhile,
//!   passes it to the writer thread. A leader may also pass it at once
//!   (`end_lead` without leading);
//! - held by the **writer thread**: it loops on [`Pipeline::next_batch`]
//!   while there is work and frees the token when there is none.
//!
//! An append or a wait that finds the token held only adds to the pending
//! batch: the holder takes it before it lets the token go, so nobody needs
//! waking. This is group commit with pipelining: while the holder syncs
//! batch *n*, actors keep applying transitions and filling batch *n+1*; one
//! fsync covers every record that arrived meanwhile.
//! [`Pipeline::append`] (no leading) hands an idle log's token straight to
//! the writer thread.
//!
//! # Invariants (model-checked in `loom-tests/`)
//! 1. No waiter is completed with `Ok` before its LSN is durable (the
//!    holder stores the watermark only after the batch's sync returned, and
//!    every waiter in a batch has an LSN ≤ the batch's last LSN).
//! 2. Every waiter is completed exactly once: with `Ok` by the batch that
//!    covers it, or with `Err(Failed)` when the log has failed, including
//!    waiters registered after the failure. None is forgotten.
//! 3. LSNs are assigned in append order under one lock, and only the
//!    token's one holder takes batches, so bytes in the log appear in LSN
//!    order and each owner's records in its own apply order.
//! 4. A free token means nothing is pending: the token is let go only under
//!    the lock that appends take, after looking at what is pending. So no
//!    record or waiter is ever left with nobody to write or answer it.
//!
//! This file uses only `crate::sync` (std or loom) so loom can check it.
//!
//! # Deliberate faults
//! `Pipeline<W, FAULT>` takes a const parameter that defaults to
//! [`fault::NONE`]. The loom models instantiate the other values to show
//! that they catch each bug; every `if FAULT == ..` is on a constant, so the
//! service's `Pipeline<W>` compiles to exactly the correct code.

use crate::sync::{AtomicU64, Condvar, Mutex, MutexGuard, Ordering};

/// The log can no longer make anything durable (a write or sync failed).
/// The outcome of every transition not yet acknowledged is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failed;

/// Something to run once an LSN is durable (or the log has failed): the
/// actor's pending reply.
pub trait Waiter {
    fn complete(self, result: Result<(), Failed>);

    /// The LSN `append` gave the record this waiter waits for, told before
    /// the waiter is queued (a reply that reports its record's LSN).
    fn assigned(&mut self, _lsn: u64) {}
}

/// What the writer takes in one go.
pub struct Batch<W> {
    /// The framed records, in LSN order.
    pub bytes: Vec<u8>,
    /// LSN of the last record in `bytes`, or of the last record ever
    /// appended when `bytes` is empty (then only waiters are carried).
    pub last_lsn: u64,
    /// Number of records in `bytes`.
    pub records: u64,
    waiters: Vec<W>,
}

/// Who may take and persist batches (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Free,
    Leader,
    Writer,
}

struct Pending<W> {
    /// The LSN the next append gets. LSNs start at 1; 0 means "nothing".
    next_lsn: u64,
    bytes: Vec<u8>,
    records: u64,
    waiters: Vec<W>,
    failed: bool,
    closing: bool,
    token: Token,
    /// The writer is parked on `work`: only then is a notify needed.
    writer_parked: bool,
}

impl<W> Pending<W> {
    fn has_work(&self) -> bool {
        self.records > 0 || !self.waiters.is_empty()
    }
}

/// What [`Pipeline::append_leading`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub lsn: u64,
    /// The log was idle: the caller now holds the commit token and must
    /// either lead (`lead_batch`, persist, `complete`, then `end_lead`) or
    /// pass it on (`end_lead` alone). Nothing is written until it does.
    pub lead: bool,
}

/// Deliberately broken variants of the pipeline, for the loom models only
/// (see the module docs). Never instantiate anything but `NONE` in the
/// service.
pub mod fault {
    /// The correct pipeline.
    pub const NONE: u8 = 0;
    /// Taking a batch publishes its watermark when the batch is handed out,
    /// i.e. before the holder's sync (ack before fsync).
    pub const EARLY_WATERMARK: u8 = 1;
    /// Passing the token to the writer thread does not wake it when it is
    /// parked (a lost wake-up).
    pub const SKIP_WAKE: u8 = 2;
    /// `fail` completes the failed batch's waiters but leaves the queued
    /// ones in the queue, where no writer will ever take them.
    pub const FAIL_LEAVES_QUEUED: u8 = 3;
    /// `next_batch` returns `None` as soon as the pipeline is closing, even
    /// with records still pending.
    pub const CLOSE_DROPS_PENDING: u8 = 4;
    /// `end_lead` frees the token without looking at what arrived while the
    /// leader persisted (records and waiters with nobody to take them).
    pub const RELEASE_WITH_WORK: u8 = 5;
    /// `append_leading` makes every appender a leader, even while the token
    /// is held (two holders persisting batches at once).
    pub const LEAD_WHILE_HELD: u8 = 6;
    /// `when_durable` on an idle log queues its waiter instead of answering
    /// it (nobody holds the token, so nobody ever takes it).
    pub const QUEUE_WHEN_IDLE: u8 = 7;
}

pub struct Pipeline<W, const FAULT: u8 = { fault::NONE }> {
    pending: Mutex<Pending<W>>,
    work: Condvar,
    /// Highest LSN known durable. Written only by the token's holder, after
    /// sync.
    durable: AtomicU64,
}

impl<W: Waiter, const FAULT: u8> Pipeline<W, FAULT> {
    /// A pipeline whose first append gets `next_lsn`; everything below it is
    /// already durable (recovered from disk).
    pub fn new(next_lsn: u64) -> Self {
        assert!(next_lsn >= 1, "LSNs start at 1");
        Pipeline {
            pending: Mutex::new(Pending {
                next_lsn,
                bytes: Vec::new(),
                records: 0,
                waiters: Vec::new(),
                failed: false,
                closing: false,
                token: Token::Free,
                writer_parked: false,
            }),
            work: Condvar::new(),
            durable: AtomicU64::new(next_lsn - 1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Pending<W>> {
        // A poisoned lock means a panic inside one of these short critical
        // sections, which only encode or push: that is a bug, and the
        // process must not go on acknowledging writes.
        self.pending.lock().expect("pipeline lock poisoned")
    }

    /// Highest durable LSN.
    pub fn durable_lsn(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    /// The LSN the next append will get (snapshot coordination).
    pub fn next_lsn(&self) -> u64 {
        self.lock().next_lsn
    }

    /// Bytes waiting for the writer (backpressure).
    pub fn pending_bytes(&self) -> usize {
        self.lock().bytes.len()
    }

    /// Assign the next LSN and let `encode` append the framed record to the
    /// pending buffer. If `waiter` is given it is completed once that LSN is
    /// durable (one lock for both: the hot path). An idle log's token goes
    /// to the writer thread.
    pub fn append(
        &self,
        encode: impl FnOnce(u64, &mut Vec<u8>),
        waiter: Option<W>,
    ) -> Result<u64, Failed> {
        let (lsn, mut p) = self.push(encode, waiter)?;
        if p.token == Token::Free {
            p.token = Token::Writer;
            self.wake_writer(p);
        }
        Ok(lsn)
    }

    /// As [`append`](Self::append), but an appender that finds the log idle
    /// takes the commit token itself (`lead`: see [`Appended`]).
    pub fn append_leading(
        &self,
        encode: impl FnOnce(u64, &mut Vec<u8>),
        waiter: Option<W>,
    ) -> Result<Appended, Failed> {
        let (lsn, mut p) = self.push(encode, waiter)?;
        let lead = p.token == Token::Free || FAULT == fault::LEAD_WHILE_HELD;
        if lead {
            p.token = Token::Leader;
        }
        Ok(Appended { lsn, lead })
    }

    /// Assign an LSN, encode, queue the waiter; the lock stays held.
    fn push(
        &self,
        encode: impl FnOnce(u64, &mut Vec<u8>),
        waiter: Option<W>,
    ) -> Result<(u64, MutexGuard<'_, Pending<W>>), Failed> {
        let mut p = self.lock();
        if p.failed || p.closing {
            drop(p);
            if let Some(w) = waiter {
                w.complete(Err(Failed));
            }
            return Err(Failed);
        }
        let lsn = p.next_lsn;
        p.next_lsn += 1;
        p.records += 1;
        encode(lsn, &mut p.bytes);
        if let Some(mut w) = waiter {
            w.assigned(lsn);
            p.waiters.push(w);
        }
        Ok((lsn, p))
    }

    /// Complete `waiter` once `lsn` is durable: at once if it already is.
    /// `lsn` must have been returned by an append (or be recovered, ≤
    /// durable).
    pub fn when_durable(&self, lsn: u64, waiter: W) {
        if self.durable.load(Ordering::Acquire) >= lsn {
            waiter.complete(Ok(()));
            return;
        }
        let mut p = self.lock();
        if p.failed {
            drop(p);
            waiter.complete(Err(Failed));
            return;
        }
        debug_assert!(lsn < p.next_lsn, "waiting for an LSN never assigned");
        if p.token == Token::Free && FAULT != fault::QUEUE_WHEN_IDLE {
            // Idle: the last holder stored the watermark before it let the
            // token go under this lock, so every assigned LSN is durable.
            drop(p);
            debug_assert!(self.durable.load(Ordering::Acquire) >= lsn);
            waiter.complete(Ok(()));
            return;
        }
        // The holder takes it (with or without bytes to write) before it
        // lets the token go.
        p.waiters.push(waiter);
    }

    fn wake_writer(&self, mut p: MutexGuard<'_, Pending<W>>) {
        if p.writer_parked && FAULT != fault::SKIP_WAKE {
            p.writer_parked = false;
            drop(p);
            self.work.notify_one();
        }
    }

    /// Everything pending, as one batch.
    fn take(&self, p: &mut Pending<W>, spare: Vec<u8>) -> Batch<W> {
        debug_assert!(spare.is_empty());
        let bytes = std::mem::replace(&mut p.bytes, spare);
        let records = std::mem::take(&mut p.records);
        let waiters = std::mem::take(&mut p.waiters);
        if FAULT == fault::EARLY_WATERMARK {
            self.durable.store(p.next_lsn - 1, Ordering::Release);
        }
        Batch {
            bytes,
            last_lsn: p.next_lsn - 1,
            records,
            waiters,
        }
    }

    /// Writer thread: block until it holds the token with something to do
    /// and take all of it; an idle writer lets the token go first. `spare`
    /// is an empty buffer to swap in (reused allocation). `None` once the
    /// pipeline is closing (or failed) and the log is idle.
    pub fn next_batch(&self, spare: Vec<u8>) -> Option<Batch<W>> {
        let mut p = self.lock();
        loop {
            if FAULT == fault::CLOSE_DROPS_PENDING && p.closing {
                return None;
            }
            if p.token == Token::Writer {
                if p.has_work() {
                    break;
                }
                p.token = Token::Free;
            }
            if p.token == Token::Free && (p.closing || p.failed) {
                return None;
            }
            p.writer_parked = true;
            p = self.work.wait(p).expect("pipeline lock poisoned");
        }
        Some(self.take(&mut p, spare))
    }

    /// Leader: take everything pending (its own record and whatever joined
    /// it) as one batch, to persist on the leader's thread.
    pub fn lead_batch(&self, spare: Vec<u8>) -> Batch<W> {
        let mut p = self.lock();
        debug_assert!(p.token == Token::Leader || FAULT == fault::LEAD_WHILE_HELD);
        self.take(&mut p, spare)
    }

    /// Leader: done (after `complete`), or not leading at all. Frees the
    /// token when nothing is pending; otherwise the writer thread takes it
    /// over with what arrived meanwhile (a leader persists one batch, so
    /// the thread it borrowed is not held for longer).
    pub fn end_lead(&self) {
        let mut p = self.lock();
        if p.failed {
            // `fail` freed the token and answered everyone.
            return;
        }
        debug_assert!(p.token == Token::Leader || FAULT == fault::LEAD_WHILE_HELD);
        if p.has_work() && FAULT != fault::RELEASE_WITH_WORK {
            p.token = Token::Writer;
        } else {
            p.token = Token::Free;
            if !p.closing {
                return;
            }
            // A closing writer waits for an idle log before it stops.
        }
        self.wake_writer(p);
    }

    /// The holder: the batch is durable. Advance the watermark, then
    /// complete its waiters. Returns the emptied byte buffer for reuse.
    pub fn complete(&self, batch: Batch<W>) -> Vec<u8> {
        let Batch {
            mut bytes,
            last_lsn,
            waiters,
            ..
        } = batch;
        let previous = self.durable.load(Ordering::Relaxed);
        assert!(
            last_lsn >= previous,
            "the durable watermark never moves back"
        );
        // Release: a thread that sees the new watermark also sees that the
        // bytes were written (no-one reads them through memory, but the
        // ordering states the rule: watermark after sync, never before).
        self.durable.store(last_lsn, Ordering::Release);
        for w in waiters {
            w.complete(Ok(()));
        }
        bytes.clear();
        bytes
    }

    /// The holder: the batch could not be made durable. Mark the log failed,
    /// free the token and fail every waiter, queued or in the batch; later
    /// appends and waits fail at once, and the writer thread stops.
    pub fn fail(&self, batch: Option<Batch<W>>) {
        let queued = {
            let mut p = self.lock();
            p.failed = true;
            p.token = Token::Free;
            p.bytes = Vec::new();
            p.records = 0;
            let queued = if FAULT == fault::FAIL_LEAVES_QUEUED {
                Vec::new()
            } else {
                std::mem::take(&mut p.waiters)
            };
            p.writer_parked = false;
            queued
        };
        self.work.notify_one();
        let in_batch = batch.map(|b| b.waiters).unwrap_or_default();
        for w in in_batch.into_iter().chain(queued) {
            w.complete(Err(Failed));
        }
    }

    /// Whether the log has failed.
    pub fn has_failed(&self) -> bool {
        self.lock().failed
    }

    /// Stop accepting appends; the holder finishes what is pending, and once
    /// the log is idle `next_batch` returns `None`.
    pub fn close(&self) {
        let mut p = self.lock();
        p.closing = true;
        p.writer_parked = false;
        drop(p);
        self.work.notify_one();
    }
}
