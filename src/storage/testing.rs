//! Disk doubles for storage tests (kept in the library, feature-free, so
//! integration tests in `tests/` can use them; nothing in the server does).
//!
//! - [`MemDisk`]: segments in memory that remember how much of each file was
//!   synced. [`MemDisk::cut`] models a power cut: it materialises into a
//!   directory only the synced bytes plus a random prefix of each file's
//!   unsynced tail (a torn write), which `recover` then reads.
//! - [`FaultyDisk`]: wraps another disk and fails its Nth write or sync with
//!   a chosen errno (EIO, ENOSPC; an ENOSPC write first writes half of its
//!   bytes, as a short write would).
//! - [`ChanWaiter`]: a pipeline waiter that sends its result on a channel.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};

use rand::Rng;

use super::pipeline::{Failed, Waiter};
use super::segment::{encode_header, segment_name, LogDisk, SegmentFile, SEGMENT_HEADER_BYTES};

#[derive(Debug, Default)]
struct MemFile {
    data: Vec<u8>,
    /// Bytes known durable: a power cut keeps these.
    synced: usize,
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
    /// per file, the synced bytes plus a random prefix of the rest.
    pub fn cut(&self, dir: &Path, rng: &mut impl Rng) -> io::Result<()> {
        let files = lock(&self.files);
        for (name, f) in files.iter() {
            let unsynced = f.data.len() - f.synced;
            let keep = f.synced + rng.random_range(0..=unsynced);
            fs::write(dir.join(name), &f.data[..keep])?;
        }
        Ok(())
    }

    /// Every file's bytes, synced or not (a process crash keeps them all).
    pub fn materialise_all(&self, dir: &Path) -> io::Result<()> {
        for (name, f) in lock(&self.files).iter() {
            fs::write(dir.join(name), &f.data)?;
        }
        Ok(())
    }
}

impl LogDisk for MemDisk {
    type File = MemSegment;

    fn create_segment(&mut self, first_lsn: u64) -> io::Result<MemSegment> {
        let name = segment_name(first_lsn);
        let mut files = lock(&self.files);
        if files.contains_key(&name) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, name));
        }
        // Like DirDisk: header written, file and directory entry synced.
        let data = encode_header(first_lsn).to_vec();
        let synced = data.len();
        files.insert(name.clone(), MemFile { data, synced });
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
        f.data.extend_from_slice(bytes);
        self.len += bytes.len() as u64;
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        let mut files = lock(&self.files);
        let f = files.get_mut(&self.name).ok_or(io::ErrorKind::NotFound)?;
        f.synced = f.data.len();
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
}

/// Fail the `nth` (1-based) call of `op` with `errno`.
#[derive(Debug)]
pub struct Fault {
    pub op: FaultOp,
    pub nth: u64,
    pub errno: i32,
    writes: AtomicU64,
    syncs: AtomicU64,
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
            fired: AtomicU64::new(0),
        })
    }

    fn check(&self, op: FaultOp) -> io::Result<()> {
        let counter = match op {
            FaultOp::Write => &self.writes,
            FaultOp::Sync => &self.syncs,
        };
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        if op == self.op && n == self.nth {
            self.fired.fetch_add(1, Ordering::SeqCst);
            return Err(io::Error::from_raw_os_error(self.errno));
        }
        Ok(())
    }
}

/// A disk whose Nth write or sync fails.
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

    fn create_segment(&mut self, first_lsn: u64) -> io::Result<Self::File> {
        Ok(FaultySegment {
            inner: self.inner.create_segment(first_lsn)?,
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
