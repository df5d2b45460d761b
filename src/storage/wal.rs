//! The WAL writer: one OS thread for all owners that turns pipeline batches
//! into durable segment bytes.
//!
//! Per batch: one `write`, one `fdatasync` (`--fsync always`), then the
//! durable watermark moves and the batch's replies go out. A failed write or
//! sync is never retried on the same file (the "fsyncgate" lesson: after a
//! failed fsync the kernel may have dropped the dirty pages, and a retry
//! that succeeds proves nothing). The pipeline is marked failed, every
//! waiting reply gets 503, and `on_fatal` tells the server to stop; restart
//! recovers from what is durable.
//!
//! Segment files are prepared ahead of time by a second thread, the
//! preparer (with `--fsync always` zero-filled to their full size; see
//! `segment` and `snapshots/FORMAT.md`), so zero-filling never runs between
//! a batch's write and its reply: while the writer fills one segment, the
//! next one is already prepared and waiting. A failed preparation is
//! handed to the writer and fails the log when the writer needs that file
//! (at the roll), like a failed write; the preparer then stops, so nothing
//! is retried.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::Notify;

use super::pipeline::{Pipeline, Waiter};
use super::segment::{LogDisk, SegmentFile, SEGMENT_HEADER_BYTES};

/// Pending bytes above which actors wait before appending more: bounds the
/// memory between the actors and the disk.
pub const PENDING_BYTES_MAX: usize = 32 << 20;

/// When a batch is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// `fdatasync` every batch before any reply: survives power loss.
    Always,
    /// `write` only: survives a process crash (the page cache survives
    /// kill -9), not a power cut or kernel crash.
    Never,
}

#[derive(Debug, Clone, Copy)]
pub struct WalConfig {
    pub fsync: FsyncPolicy,
    /// Roll to a new segment once the current one is at least this big;
    /// also the size each segment is preallocated to.
    pub segment_bytes: u64,
}

/// Counters kept by the writer (benchmarks, tests; metrics have their own).
#[derive(Debug, Default)]
pub struct WalStats {
    pub batches: AtomicU64,
    pub records: AtomicU64,
    pub syncs: AtomicU64,
    pub bytes: AtomicU64,
}

/// Handle to the running writer.
pub struct Wal<W> {
    pub pipeline: Arc<Pipeline<W>>,
    pub stats: Arc<WalStats>,
    /// Notified each time the writer takes a batch (room for more bytes).
    pub room: Arc<Notify>,
    thread: std::sync::Mutex<Option<JoinHandle<io::Result<()>>>>,
}

impl<W: Waiter + Send + 'static> Wal<W> {
    /// Start the writer on `disk`. The first segment starts at the
    /// pipeline's next LSN. `on_fatal` runs once, on the writer thread, if
    /// the log fails.
    ///
    /// Blocks until the writer holds its first segment (prepared and
    /// installed: one zero-fill of `segment_bytes`) or has failed to get it
    /// (then the pipeline is failed and `on_fatal` runs, as for any later
    /// failure). So a started log takes writes at once, and its first
    /// segment is on disk before anything else (a snapshot's prune) looks.
    pub fn start<D: LogDisk>(
        disk: D,
        pipeline: Arc<Pipeline<W>>,
        config: WalConfig,
        on_fatal: impl FnOnce(&io::Error) + Send + 'static,
    ) -> io::Result<Self> {
        let room = Arc::new(Notify::new());
        let stats = Arc::new(WalStats::default());
        let writer = Writer {
            disk,
            pipeline: pipeline.clone(),
            room: room.clone(),
            config,
            stats: stats.clone(),
        };
        let (started_tx, started) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("countiq-wal".into())
            .spawn(move || {
                let result = writer.run(started_tx);
                if let Err(e) = &result {
                    on_fatal(e);
                }
                result
            })?;
        // A receive error means the thread ended before sending (it could
        // not start its preparer, or panicked): reported like any failure.
        let _ = started.recv();
        Ok(Wal {
            pipeline,
            stats,
            room,
            thread: std::sync::Mutex::new(Some(thread)),
        })
    }

    /// What appenders (the owner actors) hold: the pipeline and the
    /// writer's room signal, without the writer thread itself.
    pub fn appender(&self) -> Appender<W> {
        Appender {
            pipeline: self.pipeline.clone(),
            room: self.room.clone(),
        }
    }

    /// Stop accepting records, write and sync what is pending, join the
    /// writer. Returns the writer's result.
    pub fn shutdown(&self) -> io::Result<()> {
        self.pipeline.close();
        let thread = self.thread.lock().map(|mut t| t.take()).unwrap_or(None);
        match thread {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("WAL writer panicked"))),
            None => Ok(()),
        }
    }
}

/// The appending side of a running log: the commit pipeline and the signal
/// the writer gives each time it takes a batch. Cheap to clone; the writer
/// thread stays with the [`Wal`] (the node owns it).
pub struct Appender<W> {
    pub pipeline: Arc<Pipeline<W>>,
    room: Arc<Notify>,
}

impl<W> Clone for Appender<W> {
    fn clone(&self) -> Self {
        Appender {
            pipeline: self.pipeline.clone(),
            room: self.room.clone(),
        }
    }
}

impl<W: Waiter> Appender<W> {
    /// Wait until the pending buffer has room (backpressure for actors).
    pub async fn wait_for_room(&self) {
        // Fast path (nearly always): room now. No `Notify` registration,
        // whose waiter-list lock an actor would otherwise take per wake-up.
        if self.pipeline.pending_bytes() < PENDING_BYTES_MAX {
            return;
        }
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.pipeline.pending_bytes() < PENDING_BYTES_MAX || self.pipeline.has_failed() {
                return;
            }
            notified.await;
        }
    }
}

struct Writer<D, W> {
    disk: D,
    pipeline: Arc<Pipeline<W>>,
    room: Arc<Notify>,
    config: WalConfig,
    stats: Arc<WalStats>,
}

impl<D: LogDisk, W: Waiter> Writer<D, W> {
    /// How big a prepared segment is. Preallocation only pays where a
    /// sync follows each batch (`--fsync always`: the sync then flushes
    /// data only). With `--fsync never` nothing waits for a sync, and
    /// zero-filling would write every byte twice and cap the log at half
    /// the disk's bandwidth, so those segments are created empty (just the
    /// header's room) and grow by appends, as in format v1.
    fn preallocate_bytes(&self) -> u64 {
        match self.config.fsync {
            FsyncPolicy::Always => self.config.segment_bytes,
            FsyncPolicy::Never => 0,
        }
    }

    /// `started` is sent to once the first segment is installed or could
    /// not be.
    fn run(mut self, started: mpsc::SyncSender<()>) -> io::Result<()> {
        // The first segment is named after the first LSN not yet durable.
        // Not `next_lsn()`: appends may already have happened by the time
        // this thread runs, and a segment must be named after the LSN of
        // its first record. Nothing is durable before the writer's first
        // batch, so `durable + 1` is the pipeline's starting LSN.
        let first_lsn = self.pipeline.durable_lsn() + 1;
        // Dropped (stopped and joined) on every return below.
        let preparer = match Preparer::start(self.disk.clone(), self.preallocate_bytes()) {
            Ok(p) => p,
            Err(e) => return Err(self.fail_empty(e)),
        };
        let first = preparer
            .next()
            .and_then(|prepared| self.disk.install(prepared, first_lsn));
        // `start` is waiting for this (capacity 1: never blocks).
        let _ = started.send(());
        let mut segment = match first {
            Ok(s) => s,
            Err(e) => return Err(self.fail_empty(e)),
        };
        let mut spare = Vec::new();
        while let Some(batch) = self.pipeline.next_batch(spare) {
            self.room.notify_waiters();
            if batch.records > 0 {
                let first_lsn = batch.last_lsn + 1 - batch.records;
                let persisted = self.persist(
                    &mut segment,
                    &preparer,
                    &batch.bytes,
                    first_lsn,
                    batch.records,
                );
                if let Err(e) = persisted {
                    self.pipeline.fail(Some(batch));
                    self.room.notify_waiters();
                    return Err(e);
                }
            }
            spare = self.pipeline.complete(batch);
        }
        // Closing: with `--fsync never` this is the sync that makes a
        // graceful shutdown durable.
        segment.sync_data()
    }

    /// Write one batch (rolling the segment first if it is full) and, with
    /// `--fsync always`, sync it.
    fn persist(
        &mut self,
        segment: &mut D::File,
        preparer: &Preparer<D::Prepared>,
        bytes: &[u8],
        first_lsn: u64,
        records: u64,
    ) -> io::Result<()> {
        if segment.len() >= self.config.segment_bytes {
            // The old segment is complete and synced: every batch in it was.
            // With `--fsync never` sync it now, so that a segment is
            // complete before the next one exists.
            if self.config.fsync == FsyncPolicy::Never {
                segment.sync_data()?;
            }
            // Normally ready long ago; this waits only when segments fill
            // faster than the preparer zero-fills them.
            let waited = Instant::now();
            let prepared = preparer.next()?;
            metrics::histogram!("countiq_wal_segment_wait_seconds")
                .record(waited.elapsed().as_secs_f64());
            *segment = self.disk.install(prepared, first_lsn)?;
            metrics::counter!("countiq_wal_segments_created_total").increment(1);
        }
        segment.write_all(bytes)?;
        // The deliberately broken variant acknowledges after the write but
        // before any sync; the power-cut test must catch it (README).
        let sync =
            self.config.fsync == FsyncPolicy::Always && !cfg!(feature = "broken-ack-before-fsync");
        if sync {
            let started = Instant::now();
            segment.sync_data()?;
            self.stats.syncs.fetch_add(1, Ordering::Relaxed);
            metrics::histogram!("countiq_wal_fsync_seconds")
                .record(started.elapsed().as_secs_f64());
        }
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats.records.fetch_add(records, Ordering::Relaxed);
        self.stats
            .bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        metrics::histogram!("countiq_wal_batch_records").record(records as f64);
        metrics::counter!("countiq_wal_bytes_written_total").increment(bytes.len() as u64);
        metrics::counter!("countiq_wal_records_total").increment(records);
        Ok(())
    }

    /// The writer could not even start: fail whatever is queued.
    fn fail_empty(&self, e: io::Error) -> io::Error {
        self.pipeline.fail(None);
        e
    }
}

/// The preparer thread: zero-fills the next segment file ahead of time and
/// hands it to the writer. The channel is a rendezvous (capacity 0), so at
/// most one prepared file waits, and the thread prepares the next one only
/// after the writer took the last: one preparation per segment, bounded
/// disk use (one `segment_bytes` file beyond the open segment).
struct Preparer<P> {
    /// `Option` only so that `drop` can close it before joining.
    rx: Option<mpsc::Receiver<io::Result<P>>>,
    thread: Option<JoinHandle<()>>,
}

impl<P: Send + 'static> Preparer<P> {
    fn start<D: LogDisk<Prepared = P>>(mut disk: D, segment_bytes: u64) -> io::Result<Self> {
        // A file smaller than a header could not be installed.
        let bytes = segment_bytes.max(SEGMENT_HEADER_BYTES as u64);
        let (tx, rx) = mpsc::sync_channel(0);
        let thread = std::thread::Builder::new()
            .name("countiq-wal-prep".into())
            .spawn(move || loop {
                let prepared = disk.prepare(bytes);
                let failed = prepared.is_err();
                // An error is sent like a file and ends the thread: never
                // retried. A send fails once the writer has stopped.
                if tx.send(prepared).is_err() || failed {
                    return;
                }
            })?;
        Ok(Preparer {
            rx: Some(rx),
            thread: Some(thread),
        })
    }

    /// The next prepared file, waiting while it is being prepared.
    fn next(&self) -> io::Result<P> {
        let rx = self.rx.as_ref().expect("open until dropped");
        rx.recv().unwrap_or_else(|_| {
            Err(io::Error::other(
                "the WAL segment preparer stopped (it panicked)",
            ))
        })
    }
}

impl<P> Drop for Preparer<P> {
    /// Stop and join the thread, so that nothing touches the directory once
    /// the writer has returned. Closing the channel makes a pending `send`
    /// fail at once; a preparation under way finishes first (at most one
    /// zero-fill of `segment_bytes`). The unused prepared file stays on disk
    /// until recovery removes it.
    fn drop(&mut self) {
        self.rx = None;
        if let Some(thread) = self.thread.take() {
            // A panic there was already reported as `next`'s error, if the
            // writer ever asked.
            let _ = thread.join();
        }
    }
}
