//! The commit pipeline: how a record gets from an actor to disk, and how its
//! reply waits for it.
//!
//! Actors call [`Pipeline::append`] (assign the next LSN and encode the record
//! into the shared pending buffer) and [`Pipeline::when_durable`] (complete a
//! reply once an LSN is durable). One writer thread loops on
//! [`Pipeline::next_batch`] (take *everything* pending), writes and syncs it,
//! then calls [`Pipeline::complete`] (advance the durable watermark, complete
//! the batch's waiters) or [`Pipeline::fail`].
//!
//! This is group commit with pipelining: while the writer syncs batch *n*,
//! actors keep applying transitions and filling batch *n+1*; one fsync covers
//! every record that arrived meanwhile. An actor never blocks on the disk.
//!
//! # Invariants (model-checked in `loom-tests/`)
//! 1. No waiter is completed with `Ok` before its LSN is durable (the writer
//!    stores the watermark only after the batch's sync returned, and every
//!    waiter in a batch has an LSN ≤ the batch's last LSN).
//! 2. Every waiter is completed exactly once: with `Ok` by the batch that
//!    covers it, or with `Err(Failed)` when the log has failed, including
//!    waiters registered after the failure. None is forgotten.
//! 3. LSNs are assigned in append order under one lock, so bytes in the log
//!    appear in LSN order and each owner's records in its own apply order.
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

struct Pending<W> {
    /// The LSN the next append gets. LSNs start at 1; 0 means "nothing".
    next_lsn: u64,
    bytes: Vec<u8>,
    records: u64,
    waiters: Vec<W>,
    failed: bool,
    closing: bool,
    /// The writer is parked on `work`: only then is a notify needed.
    writer_parked: bool,
}

/// Deliberately broken variants of the pipeline, for the loom models only
/// (see the module docs). Never instantiate anything but `NONE` in the
/// service.
pub mod fault {
    /// The correct pipeline.
    pub const NONE: u8 = 0;
    /// `next_batch` publishes the batch's watermark when it hands the batch
    /// out, i.e. before the writer's sync (ack before fsync).
    pub const EARLY_WATERMARK: u8 = 1;
    /// `when_durable` queues its waiter without waking a parked writer (a
    /// lost wake-up).
    pub const SKIP_WAKE: u8 = 2;
    /// `fail` completes the failed batch's waiters but leaves the queued
    /// ones in the queue, where no writer will ever take them.
    pub const FAIL_LEAVES_QUEUED: u8 = 3;
    /// `next_batch` returns `None` as soon as the pipeline is closing, even
    /// with records still pending.
    pub const CLOSE_DROPS_PENDING: u8 = 4;
}

pub struct Pipeline<W, const FAULT: u8 = { fault::NONE }> {
    pending: Mutex<Pending<W>>,
    work: Condvar,
    /// Highest LSN known durable. Written only by the writer, after sync.
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
    /// durable (one lock for both: the hot path).
    pub fn append(
        &self,
        encode: impl FnOnce(u64, &mut Vec<u8>),
        waiter: Option<W>,
    ) -> Result<u64, Failed> {
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
        self.wake_writer(p);
        Ok(lsn)
    }

    /// Complete `waiter` once `lsn` is durable: at once if it already is.
    /// `lsn` must have been returned by `append` (or be recovered, ≤ durable).
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
        // Not durable at the check above. It may have become durable since;
        // queueing anyway is still correct: the writer completes queued
        // waiters in its next round, with or without bytes to write.
        p.waiters.push(waiter);
        if FAULT == fault::SKIP_WAKE {
            return;
        }
        self.wake_writer(p);
    }

    fn wake_writer(&self, mut p: MutexGuard<'_, Pending<W>>) {
        if p.writer_parked {
            p.writer_parked = false;
            drop(p);
            self.work.notify_one();
        }
    }

    /// Writer side: block until there is something to do and take all of it.
    /// `spare` is an empty buffer to swap in (reused allocation). `None`
    /// once the pipeline is closing and everything has been handed out.
    pub fn next_batch(&self, spare: Vec<u8>) -> Option<Batch<W>> {
        debug_assert!(spare.is_empty());
        let mut p = self.lock();
        loop {
            if FAULT == fault::CLOSE_DROPS_PENDING && p.closing {
                return None;
            }
            if p.records > 0 || !p.waiters.is_empty() {
                break;
            }
            if p.closing || p.failed {
                return None;
            }
            p.writer_parked = true;
            p = self.work.wait(p).expect("pipeline lock poisoned");
        }
        let bytes = std::mem::replace(&mut p.bytes, spare);
        let records = std::mem::take(&mut p.records);
        let waiters = std::mem::take(&mut p.waiters);
        if FAULT == fault::EARLY_WATERMARK {
            self.durable.store(p.next_lsn - 1, Ordering::Release);
        }
        Some(Batch {
            bytes,
            last_lsn: p.next_lsn - 1,
            records,
            waiters,
        })
    }

    /// Writer side: the batch is durable. Advance the watermark, then
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

    /// Writer side: the batch could not be made durable. Mark the log failed
    /// and fail every waiter, queued or in the batch; later appends and
    /// waits fail at once.
    pub fn fail(&self, batch: Option<Batch<W>>) {
        let queued = {
            let mut p = self.lock();
            p.failed = true;
            p.bytes = Vec::new();
            p.records = 0;
            if FAULT == fault::FAIL_LEAVES_QUEUED {
                Vec::new()
            } else {
                std::mem::take(&mut p.waiters)
            }
        };
        let in_batch = batch.map(|b| b.waiters).unwrap_or_default();
        for w in in_batch.into_iter().chain(queued) {
            w.complete(Err(Failed));
        }
    }

    /// Whether the log has failed.
    pub fn has_failed(&self) -> bool {
        self.lock().failed
    }

    /// Stop accepting appends; the writer drains what is pending and then
    /// `next_batch` returns `None`.
    pub fn close(&self) {
        let mut p = self.lock();
        p.closing = true;
        p.writer_parked = false;
        drop(p);
        self.work.notify_one();
    }
}
