//! The WAL: turns pipeline batches into durable segment bytes, on the
//! thread of whoever holds the commit token (`pipeline` module docs): an
//! owner actor that found the log idle (a leader: one request at a time is
//! written and synced on the actor's own thread, and its reply goes out
//! from there, with no hand-off to another thread and back), or the one
//! writer thread, which takes over whenever more than one batch is waiting.
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
//! a batch's write and its reply: while the log fills one segment, the
//! next one is already prepared and waiting. Rolling to it is left to the
//! writer thread (a leader that finds the segment full passes the token
//! on). A failed preparation is handed to the writer and fails the log when
//! the writer needs that file (at the roll), like a failed write; the
//! preparer then stops, so nothing is retried.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::Notify;

use super::pipeline::{Failed, Pipeline, Waiter};
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

/// Handle to the running log.
pub struct Wal<W> {
    pub pipeline: Arc<Pipeline<W>>,
    pub stats: Arc<WalStats>,
    /// Notified each time a batch is taken (room for more bytes).
    pub room: Arc<Notify>,
    log: Arc<dyn Lead<W>>,
    thread: std::sync::Mutex<Option<JoinHandle<io::Result<()>>>>,
}

impl<W: Waiter + Send + 'static> Wal<W> {
    /// Start the writer thread on `disk`. The first segment starts at the
    /// pipeline's next LSN. `on_fatal` runs once, on the thread that saw it,
    /// if the log fails.
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
        let log = Arc::new(Log {
            files: std::sync::Mutex::new(None),
            pipeline: pipeline.clone(),
            room: room.clone(),
            config,
            stats: stats.clone(),
            on_fatal: std::sync::Mutex::new(Some(Box::new(on_fatal))),
            failure: std::sync::Mutex::new(None),
        });
        let (started_tx, started) = mpsc::sync_channel(1);
        let writer = log.clone();
        let thread = std::thread::Builder::new()
            .name("countiq-wal".into())
            .spawn(move || writer.run(disk, started_tx))?;
        // A receive error means the thread ended before sending (it could
        // not start its preparer, or panicked): reported like any failure.
        let _ = started.recv();
        Ok(Wal {
            pipeline,
            stats,
            room,
            log,
            thread: std::sync::Mutex::new(Some(thread)),
        })
    }

    /// What appenders (the owner actors) hold: the pipeline, the room
    /// signal and the means to lead, without the writer thread itself.
    pub fn appender(&self) -> Appender<W> {
        Appender {
            pipeline: self.pipeline.clone(),
            room: self.room.clone(),
            log: self.log.clone(),
        }
    }

    /// Stop accepting records, write and sync what is pending, join the
    /// writer. Returns the log's result: the first failure, if any.
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

/// The appending side of a running log: the commit pipeline, the signal
/// given each time a batch is taken, and the means to lead. Cheap to clone;
/// the writer thread stays with the [`Wal`] (the node owns it).
pub struct Appender<W> {
    pub pipeline: Arc<Pipeline<W>>,
    room: Arc<Notify>,
    log: Arc<dyn Lead<W>>,
}

impl<W> Clone for Appender<W> {
    fn clone(&self) -> Self {
        Appender {
            pipeline: self.pipeline.clone(),
            room: self.room.clone(),
            log: self.log.clone(),
        }
    }
}

impl<W: Waiter> Appender<W> {
    /// Append a record (see [`Pipeline::append_leading`]); when the log was
    /// idle the caller leads it: the returned [`Leading`] persists the batch
    /// on the caller's thread, or hands it to the writer thread.
    pub fn append(
        &self,
        encode: impl FnOnce(u64, &mut Vec<u8>),
        waiter: Option<W>,
    ) -> Result<(u64, Option<Leading<W>>), Failed> {
        let appended = self.pipeline.append_leading(encode, waiter)?;
        let lead = appended.lead.then(|| Leading {
            log: Some(self.log.clone()),
        });
        Ok((appended.lsn, lead))
    }

    /// Wait until the pending buffer has room (backpressure for actors).
    /// Never call it while holding a [`Leading`]: the batch it waits for
    /// would be the one it holds back.
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

/// The commit token, held by an appender that found the log idle. Nothing
/// it appended (or that joined it) is written until it either
/// [`persist`](Leading::persist)s or is dropped; dropping hands the token
/// and the batch to the writer thread, so a forgotten lead costs a hop,
/// never a lost record.
#[must_use = "dropping a lead hands its batch to the writer thread"]
pub struct Leading<W: Waiter> {
    /// `None` once persisted.
    log: Option<Arc<dyn Lead<W>>>,
}

impl<W: Waiter> Leading<W> {
    /// Write (and with `--fsync always` sync) everything pending on this
    /// thread, answer its waiters from here, then free the token or pass it
    /// to the writer thread if more arrived meanwhile. Blocks for one
    /// write (+ fdatasync): call it only where blocking that long is fine.
    pub fn persist(mut self) {
        if let Some(log) = self.log.take() {
            log.lead();
        }
    }

    /// Pass the token and the batch to the writer thread (what dropping
    /// does), e.g. when more requests are waiting than one leader should
    /// keep its thread for.
    pub fn hand_off(self) {}
}

impl<W: Waiter> Drop for Leading<W> {
    fn drop(&mut self) {
        if let Some(log) = self.log.take() {
            log.pipeline().end_lead();
        }
    }
}

/// What a leader needs of the log, without its disk type.
trait Lead<W>: Send + Sync {
    fn pipeline(&self) -> &Pipeline<W>;
    /// Persist one batch on the calling thread, then `end_lead`.
    fn lead(&self);
}

/// The segment files: only the commit token's holder locks them, so the
/// lock is never waited for (it orders a leader's write after the writer
/// thread's last, for the compiler and the reader alike).
struct Files<D: LogDisk> {
    segment: D::File,
    /// Dropped (stopped and joined) when the writer thread returns, so that
    /// nothing touches the directory after that.
    preparer: Preparer<D::Prepared>,
    disk: D,
    /// A leader's reused batch buffer (the writer thread keeps its own).
    spare: Vec<u8>,
}

struct Log<D: LogDisk, W> {
    /// `None` until the first segment is installed and after the writer
    /// thread has returned.
    files: std::sync::Mutex<Option<Files<D>>>,
    pipeline: Arc<Pipeline<W>>,
    room: Arc<Notify>,
    config: WalConfig,
    stats: Arc<WalStats>,
    on_fatal: std::sync::Mutex<Option<OnFatal>>,
    /// A leader's failure, for the writer thread to return at shutdown.
    failure: std::sync::Mutex<Option<io::Error>>,
}

type OnFatal = Box<dyn FnOnce(&io::Error) + Send>;

impl<D: LogDisk, W: Waiter + Send> Lead<W> for Log<D, W> {
    fn pipeline(&self) -> &Pipeline<W> {
        &self.pipeline
    }

    fn lead(&self) {
        let mut files = self.files.lock().expect("WAL files lock poisoned");
        let Some(f) = files.as_mut() else {
            // Not started, or stopped: only a closing writer could take it.
            drop(files);
            return self.pipeline.end_lead();
        };
        if f.segment.len() >= self.config.segment_bytes {
            // Rolling waits for the preparer and installs a file: left to
            // the writer thread.
            drop(files);
            return self.pipeline.end_lead();
        }
        let batch = self.pipeline.lead_batch(std::mem::take(&mut f.spare));
        self.room.notify_waiters();
        if batch.records > 0 {
            let first_lsn = batch.last_lsn + 1 - batch.records;
            if let Err(e) = self.persist(f, &batch.bytes, first_lsn, batch.records) {
                drop(files);
                self.pipeline.fail(Some(batch));
                self.room.notify_waiters();
                let e = self.fatal(e);
                *self.failure.lock().expect("WAL failure lock poisoned") = Some(e);
                return;
            }
        }
        if batch.records > 0 {
            metrics::counter!("countiq_wal_batches_led_total").increment(1);
        }
        f.spare = self.pipeline.complete(batch);
        drop(files);
        self.pipeline.end_lead();
    }
}

impl<D: LogDisk, W: Waiter> Log<D, W> {
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

    /// The writer thread. `started` is sent to once the first segment is
    /// installed or could not be.
    fn run(&self, mut disk: D, started: mpsc::SyncSender<()>) -> io::Result<()> {
        // The first segment is named after the first LSN not yet durable.
        // Not `next_lsn()`: appends may already have happened by the time
        // this thread runs, and a segment must be named after the LSN of
        // its first record. Nothing is durable before the first batch, so
        // `durable + 1` is the pipeline's starting LSN.
        let first_lsn = self.pipeline.durable_lsn() + 1;
        let preparer = match Preparer::start(disk.clone(), self.preallocate_bytes()) {
            Ok(p) => p,
            Err(e) => return Err(self.fail_empty(e)),
        };
        let first = preparer
            .next()
            .and_then(|prepared| disk.install(prepared, first_lsn));
        match first {
            Ok(segment) => {
                *self.files.lock().expect("WAL files lock poisoned") = Some(Files {
                    segment,
                    preparer,
                    disk,
                    spare: Vec::new(),
                });
                // `start` is waiting for this (capacity 1: never blocks).
                let _ = started.send(());
            }
            Err(e) => {
                drop(preparer);
                let _ = started.send(());
                return Err(self.fail_empty(e));
            }
        }
        let mut spare = Vec::new();
        while let Some(batch) = self.pipeline.next_batch(spare) {
            self.room.notify_waiters();
            let mut files = self.files.lock().expect("WAL files lock poisoned");
            let f = files.as_mut().expect("installed before the first batch");
            if batch.records > 0 {
                let first_lsn = batch.last_lsn + 1 - batch.records;
                if let Err(e) = self.persist(f, &batch.bytes, first_lsn, batch.records) {
                    // Stop the preparer before anyone else can look.
                    files.take();
                    self.pipeline.fail(Some(batch));
                    self.room.notify_waiters();
                    return Err(self.fatal(e));
                }
            }
            drop(files);
            spare = self.pipeline.complete(batch);
        }
        // Closing with the log idle, or failed (a leader's write or sync).
        let files = self.files.lock().expect("WAL files lock poisoned").take();
        if self.pipeline.has_failed() {
            let failure = self
                .failure
                .lock()
                .expect("WAL failure lock poisoned")
                .take();
            return Err(failure.unwrap_or_else(|| io::Error::other("the WAL has failed")));
        }
        // With `--fsync never` this is the sync that makes a graceful
        // shutdown durable.
        match files {
            Some(mut f) => f.segment.sync_data(),
            None => Ok(()),
        }
    }

    /// Write one batch (rolling the segment first if it is full) and, with
    /// `--fsync always`, sync it.
    fn persist(
        &self,
        f: &mut Files<D>,
        bytes: &[u8],
        first_lsn: u64,
        records: u64,
    ) -> io::Result<()> {
        if f.segment.len() >= self.config.segment_bytes {
            // The old segment is complete and synced: every batch in it was.
            // With `--fsync never` sync it now, so that a segment is
            // complete before the next one exists.
            if self.config.fsync == FsyncPolicy::Never {
                f.segment.sync_data()?;
            }
            // Normally ready long ago; this waits only when segments fill
            // faster than the preparer zero-fills them.
            let waited = Instant::now();
            let prepared = f.preparer.next()?;
            metrics::histogram!("countiq_wal_segment_wait_seconds")
                .record(waited.elapsed().as_secs_f64());
            f.segment = f.disk.install(prepared, first_lsn)?;
            metrics::counter!("countiq_wal_segments_created_total").increment(1);
        }
        f.segment.write_all(bytes)?;
        // The deliberately broken variant acknowledges after the write but
        // before any sync; the power-cut test must catch it (README).
        let sync =
            self.config.fsync == FsyncPolicy::Always && !cfg!(feature = "broken-ack-before-fsync");
        if sync {
            let started = Instant::now();
            f.segment.sync_data()?;
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

    /// Run `on_fatal` (once, whoever fails first) and give the error back.
    fn fatal(&self, e: io::Error) -> io::Error {
        let on_fatal = self.on_fatal.lock().expect("WAL lock poisoned").take();
        if let Some(f) = on_fatal {
            f(&e);
        }
        e
    }

    /// The writer could not even start: fail whatever is queued.
    fn fail_empty(&self, e: io::Error) -> io::Error {
        self.pipeline.fail(None);
        self.fatal(e)
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
