//! Disk doubles for storage tests (kept in the library, feature-free, so
//! integration tests in `tests/` can use them; nothing in the server does).
//!
//! - [`MemDisk`]: segments in memory that remember how much of each file was
//!   synced. Like `DirDisk`, a prepared file is `segment_bytes` zeros, durable
//!   under a `next-….prep` name; installing it writes the header and renames
//!   it, durably; records are then written over the zeros. [`MemDisk::cut`]
//!   models a power cut: it materialises into a directory, per file, the
//!   synced bytes plus a random prefix of the unsynced ones (a torn write);
//!   the rest of the preallocated area reads as the zeros it held before
//!   (unsynced bytes written past the preallocated size are lost with the
//!   size). Unused prepared files are materialised too, as a crash leaves
//!   them.
//! - [`FaultyDisk`]: wraps another disk and fails its Nth write, sync or
//!   preparation with a chosen errno (EIO, ENOSPC; an ENOSPC write first
//!   writes half of its bytes, as a short write would).
//! - [`ChanWaiter`]: a pipeline waiter that sends its result on a channel.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};

use rand::Rng;

use super::pipeline::{Failed, Waiter};
use super::segment::{
    encode_header, next_prepared_number, prepared_name, segment_name, LogDisk, SegmentFile,
    SEGMENT_HEADER_BYTES,
};

#[derive(Debug, Default)]
struct MemFile {
    /// The bytes a reader sees now: what was written, then the rest of the
    /// preallocated zeros.
    data: Vec<u8>,
    /// Bytes written from the start of the file (header and records).
    written: usize,
    /// Of those, the bytes known durable: a power cut keeps these.
    synced: usize,
    /// The size the file was prepared with (durable zeros).
    prealloc: usize,
}

impl MemFile {
    /// The file as a power cut that kept `written_kept` written bytes
    /// leaves it: those, then zeros up to the preallocated size.
    fn image(&self, written_kept: usize) -> Vec<u8> {
        let mut out = self.data[..written_kept].to_vec();
        out.resize(self.prealloc.max(written_kept), 0);
        out
    }
}

type Files = Arc<Mutex<BTreeMap<String, MemFile>>>;

fn lock(files: &Files) -> MutexGuard<'_, BTreeMap<String, MemFile>> {
    // A test double: a poisoned lock means a test thread panicked already.
    files.lock().expect("MemDisk lock poisoned")
}

/// An in-memory log disk that can lose power.
#[derive(Debug, Clone, Default)]
pub struct MemDisk {
    files: Files,
}

pub struct MemSegment {
    files: Files,
    name: String,
    len: u64,
}

impl MemDisk {
    pub fn new() -> Self {
        MemDisk::default()
    }

    /// Write the state a power cut at this instant would leave into `dir`:
    /// per file, the synced bytes plus a random prefix of the unsynced
    /// ones, then the preallocated zeros.
    pub fn cut(&self, dir: &Path, rng: &mut impl Rng) -> io::Result<()> {
        let files = lock(&self.files);
        for (name, f) in files.iter() {
            let keep = rng.random_range(f.synced..=f.written);
            fs::write(dir.join(name), f.image(keep))?;
        }
        Ok(())
    }
}

/// A prepared file of a `MemDisk`: its temporary name.
#[derive(Debug)]
pub struct MemPrepared {
    name: String,
}

impl LogDisk for MemDisk {
    type File = MemSegment;
    type Prepared = MemPrepared;

    fn prepare(&mut self, bytes: u64) -> io::Result<MemPrepared> {
        let name = prepared_name(next_prepared_number());
        let bytes = usize::try_from(bytes).map_err(io::Error::other)?;
        // Like DirDisk: zeros written and synced, so they survive a cut.
        let file = MemFile {
            data: vec![0; bytes],
            written: 0,
            synced: 0,
            prealloc: bytes,
        };
        let mut files = lock(&self.files);
        if files.insert(name.clone(), file).is_some() {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, name));
        }
        Ok(MemPrepared { name })
    }

    fn install(&mut self, prepared: MemPrepared, first_lsn: u64) -> io::Result<MemSegment> {
        let name = segment_name(first_lsn);
        let mut files = lock(&self.files);
        if files.contains_key(&name) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, name));
        }
        let mut f = files
            .remove(&prepared.name)
            .ok_or(io::ErrorKind::NotFound)?;
        // Like DirDisk: header written and synced, rename and directory
        // synced, all before this returns (one step under the lock).
        let header = encode_header(first_lsn);
        if f.data.len() < header.len() {
            f.data.resize(header.len(), 0);
        }
        f.data[..header.len()].copy_from_slice(&header);
        f.written = header.len();
        f.synced = header.len();
        files.insert(name.clone(), f);
        Ok(MemSegment {
            files: self.files.clone(),
            name,
            len: SEGMENT_HEADER_BYTES as u64,
        })
    }
}

impl SegmentFile for MemSegment {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut files = lock(&self.files);
        let f = files.get_mut(&self.name).ok_or(io::ErrorKind::NotFound)?;
        let (at, end) = (f.written, f.written + bytes.len());
        if f.data.len() < end {
            f.data.resize(end, 0);
        }
        f.data[at..end].copy_from_slice(bytes);
        f.written = end;
        self.len += bytes.len() as u64;
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        let mut files = lock(&self.files);
        let f = files.get_mut(&self.name).ok_or(io::ErrorKind::NotFound)?;
        f.synced = f.written;
        Ok(())
    }

    fn len(&self) -> u64 {
        self.len
    }
}

/// Which call fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultOp {
    Write,
    Sync,
    /// `LogDisk::prepare` (the first one prepares the first segment).
    Prepare,
}

/// Fail the `nth` (1-based) call of `op` with `errno`.
#[derive(Debug)]
pub struct Fault {
    pub op: FaultOp,
    pub nth: u64,
    pub errno: i32,
    writes: AtomicU64,
    syncs: AtomicU64,
    prepares: AtomicU64,
    /// How many calls have failed (exactly one once the fault fired).
    pub fired: AtomicU64,
}

impl Fault {
    pub fn new(op: FaultOp, nth: u64, errno: i32) -> Arc<Fault> {
        Arc::new(Fault {
            op,
            nth,
            errno,
            writes: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            prepares: AtomicU64::new(0),
            fired: AtomicU64::new(0),
        })
    }

    fn counter(&self, op: FaultOp) -> &AtomicU64 {
        match op {
            FaultOp::Write => &self.writes,
            FaultOp::Sync => &self.syncs,
            FaultOp::Prepare => &self.prepares,
        }
    }

    /// How many calls of `op` were made, the failed one included.
    pub fn calls(&self, op: FaultOp) -> u64 {
        self.counter(op).load(Ordering::SeqCst)
    }

    fn check(&self, op: FaultOp) -> io::Result<()> {
        let n = self.counter(op).fetch_add(1, Ordering::SeqCst) + 1;
        if op == self.op && n == self.nth {
            self.fired.fetch_add(1, Ordering::SeqCst);
            return Err(io::Error::from_raw_os_error(self.errno));
        }
        Ok(())
    }
}

/// A disk whose Nth write, sync or preparation fails.
#[derive(Clone)]
pub struct FaultyDisk<D> {
    pub inner: D,
    pub fault: Arc<Fault>,
}

pub struct FaultySegment<F> {
    inner: F,
    fault: Arc<Fault>,
}

impl<D: LogDisk> LogDisk for FaultyDisk<D> {
    type File = FaultySegment<D::File>;
    type Prepared = D::Prepared;

    fn prepare(&mut self, bytes: u64) -> io::Result<D::Prepared> {
        self.fault.check(FaultOp::Prepare)?;
        self.inner.prepare(bytes)
    }

    fn install(&mut self, prepared: D::Prepared, first_lsn: u64) -> io::Result<Self::File> {
        Ok(FaultySegment {
            inner: self.inner.install(prepared, first_lsn)?,
            fault: self.fault.clone(),
        })
    }
}

impl<F: SegmentFile> SegmentFile for FaultySegment<F> {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        if let Err(e) = self.fault.check(FaultOp::Write) {
            if self.fault.errno == libc::ENOSPC {
                // A full disk takes part of a write before refusing.
                self.inner.write_all(&bytes[..bytes.len() / 2])?;
            }
            return Err(e);
        }
        self.inner.write_all(bytes)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.fault.check(FaultOp::Sync)?;
        self.inner.sync_data()
    }

    fn len(&self) -> u64 {
        self.inner.len()
    }
}

/// A waiter that reports its result on a channel.
pub struct ChanWaiter(pub mpsc::Sender<Result<(), Failed>>);

impl Waiter for ChanWaiter {
    fn complete(self, result: Result<(), Failed>) {
        // The receiver may have given up; that is not an error.
        let _ = self.0.send(result);
    }
}
