//! Recovery: from a data directory to every owner's state and the next LSN,
//! at start-up, before the WAL writer runs.
//!
//! Steps: lock the directory; load the newest valid snapshot; replay the log
//! (per owner, only records after that owner's snapshot LSN), checking each
//! event against the state before applying it; cut a torn tail off the last
//! segment (truncate + fsync, so a later restart never sees that garbage in
//! front of the next segment's records; the file loses its preallocation,
//! which no one needs: the writer never reopens a segment); trim the last
//! segment's clean zero tail the same way (unused preallocated space, not
//! an error: only bytes the reader saw as zeros are cut); remove an empty
//! last segment (the writer always starts a new segment at the recovered
//! next LSN, and never replaces an existing one); delete prepared files
//! (`next-….prep`) a stopped writer left; sweep expired idempotency keys.
//!
//! Consistency checks beyond the reader's: the log must start at LSN 1
//! (no snapshot) or at or before the snapshot's covers LSN, and it must
//! reach every LSN the snapshot reflects. Either failing means durable
//! records are missing: a hard `Corrupt` error, not a guess.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::codec::Record;
use super::error::{io_at, Error};
use super::reader::{self, ScanReport, SegmentSummary, TornTail};
use super::segment::sync_dir;
use super::snapshot::{self, LoadedSnapshot};
use crate::domain::{Micros, OwnerId, OwnerState};

/// The lock file that keeps two servers off one data directory.
pub const LOCK_FILE: &str = "LOCK";

/// Holds the exclusive lock on a data directory until dropped.
#[derive(Debug)]
pub struct DirLock {
    /// The open lock file: `flock` locks live as long as this descriptor.
    _file: File,
    pub path: PathBuf,
}

/// Take the directory's exclusive lock, or fail at once with `Locked`.
pub fn lock_dir(dir: &Path) -> Result<DirLock, Error> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io_at(&path))?;
    // SAFETY: flock on a descriptor we own and keep open; no memory involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(Error::Locked {
                dir: dir.to_owned(),
                lock_file: path,
            });
        }
        return Err(Error::io(&path, e));
    }
    Ok(DirLock { _file: file, path })
}

/// One owner after recovery.
#[derive(Debug, Clone)]
pub struct RecoveredOwner {
    pub state: OwnerState,
    /// The LSN of the owner's last applied record (0: none).
    pub last_lsn: u64,
}

/// What recovery found and did (logged at start-up, shown by tools).
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    /// The snapshot used, and the LSN it covers.
    pub snapshot: Option<(PathBuf, u64)>,
    /// Newer snapshots that were invalid and skipped.
    pub snapshots_skipped: Vec<(PathBuf, String)>,
    pub segments: usize,
    pub records_replayed: u64,
    /// Records already reflected in the snapshot.
    pub records_skipped: u64,
    /// The torn tail found (and, by `recover`, cut).
    pub torn: Option<TornTail>,
    pub torn_bytes_cut: u64,
    /// Unused preallocated zeros trimmed off the last segment (not torn).
    pub zero_tail_bytes_trimmed: u64,
    /// Empty or torn-header last segments removed.
    pub segments_removed: Vec<PathBuf>,
    /// Prepared files (`next-….prep`) deleted: never part of the log.
    pub prepared_removed: Vec<PathBuf>,
    pub keys_expired: u64,
    pub duration: Duration,
}

/// The state recovered from a data directory, with the directory's lock.
#[derive(Debug)]
pub struct Recovered {
    pub owners: HashMap<OwnerId, RecoveredOwner>,
    /// The LSN the WAL writer starts at (its first segment's name).
    pub next_lsn: u64,
    pub report: RecoveryReport,
    /// Keep this alive as long as the server writes to the directory.
    pub lock: DirLock,
}

/// What `recover_readonly` returns: the same state, no lock, nothing cut.
#[derive(Debug)]
pub struct RecoveredState {
    pub owners: HashMap<OwnerId, RecoveredOwner>,
    pub next_lsn: u64,
    pub report: RecoveryReport,
}

/// Recover `dir` (created if missing) for writing: lock, load, replay, cut
/// a torn tail or trim a zero tail, remove an empty last segment and
/// prepared files, sweep keys expired at `now`.
pub fn recover(dir: &Path, now: Micros) -> Result<Recovered, Error> {
    fs::create_dir_all(dir).map_err(io_at(dir))?;
    let lock = lock_dir(dir)?;
    let (mut state, scan) = replay(dir, now)?;
    repair(dir, &scan, &mut state.report)?;
    Ok(Recovered {
        owners: state.owners,
        next_lsn: state.next_lsn,
        report: state.report,
        lock,
    })
}

/// The same state `recover` would produce, without locking or changing
/// anything (tools; tests that look at a live directory). A torn tail is
/// reported in `report.torn` but not cut.
pub fn recover_readonly(dir: &Path, now: Micros) -> Result<RecoveredState, Error> {
    Ok(replay(dir, now)?.0)
}

fn replay(dir: &Path, now: Micros) -> Result<(RecoveredState, ScanReport), Error> {
    let started = Instant::now();
    let snap = snapshot::load_newest(dir)?;
    let mut r = Replayer::new(snap.as_ref())?;
    let mut report = RecoveryReport::default();
    if let Some(s) = snap {
        report.snapshot = Some((s.path, s.covers));
        report.snapshots_skipped = s.skipped;
    }
    let scan = reader::scan_dir(dir, |rec, file, offset| r.apply(rec, file, offset))?;
    let next_lsn = r.next_lsn(&scan)?;
    for o in r.owners.values_mut() {
        report.keys_expired += o.state.keys.sweep(now, usize::MAX) as u64;
    }
    report.segments = scan.segments.len();
    report.records_replayed = r.replayed;
    report.records_skipped = r.skipped;
    report.torn = scan.torn.clone();
    report.duration = started.elapsed();
    let recovered = RecoveredState {
        owners: r.owners,
        next_lsn,
        report,
    };
    Ok((recovered, scan))
}

/// Replay state: the owners so far, and what the snapshot promised.
struct Replayer {
    owners: HashMap<OwnerId, RecoveredOwner>,
    /// The snapshot's covers LSN and path.
    snapshot: Option<(u64, PathBuf)>,
    /// The highest LSN any owner section of the snapshot reflects.
    snapshot_lsn_max: u64,
    started: bool,
    replayed: u64,
    skipped: u64,
}

impl Replayer {
    fn new(snap: Option<&LoadedSnapshot>) -> Result<Self, Error> {
        let mut r = Replayer {
            owners: HashMap::new(),
            snapshot: snap.map(|s| (s.covers, s.path.clone())),
            snapshot_lsn_max: 0,
            started: false,
            replayed: 0,
            skipped: 0,
        };
        let Some(snap) = snap else { return Ok(r) };
        for o in &snap.owners {
            let state = OwnerState::from_items(o.items.iter().cloned(), o.keys.clone())
                .and_then(|mut state| {
                    state.restore_extra(o.extra.clone())?;
                    Ok(state)
                })
                .map_err(|e| {
                    Error::corrupt(&snap.path, 0, None, format!("owner {}: {e}", o.owner))
                })?;
            r.snapshot_lsn_max = r.snapshot_lsn_max.max(o.last_lsn);
            r.owners.insert(
                o.owner.clone(),
                RecoveredOwner {
                    state,
                    last_lsn: o.last_lsn,
                },
            );
        }
        Ok(r)
    }

    fn apply(&mut self, rec: Record, file: &Path, offset: u64) -> Result<(), Error> {
        if !self.started {
            self.started = true;
            self.check_log_start(rec.lsn, file)?;
        }
        let owner = self
            .owners
            .entry(rec.owner)
            .or_insert_with(|| RecoveredOwner {
                state: OwnerState::default(),
                last_lsn: 0,
            });
        if rec.lsn <= owner.last_lsn {
            self.skipped += 1;
            return Ok(());
        }
        if let Some(event) = &rec.event {
            owner.state.check_event(event).map_err(|why| {
                Error::corrupt(
                    file,
                    offset,
                    Some(rec.lsn),
                    format!("record does not fit its owner's state: {why}"),
                )
            })?;
            owner
                .state
                .evolve_keyed(event, rec.key.as_ref().map(|k| &k.key));
        }
        if let Some(key) = rec.key {
            owner.state.keys.insert(key);
        }
        owner.last_lsn = rec.lsn;
        self.replayed += 1;
        Ok(())
    }

    /// The first record must continue what the snapshot (or nothing) left.
    fn check_log_start(&self, first: u64, file: &Path) -> Result<(), Error> {
        let floor = self.snapshot.as_ref().map_or(1, |(covers, _)| *covers);
        let ok = match self.snapshot {
            Some(_) => first <= floor,
            None => first == 1,
        };
        if ok {
            return Ok(());
        }
        Err(Error::corrupt(
            file,
            0,
            Some(first),
            format!("the log starts at LSN {first}, but records from LSN {floor} on are needed (missing segments?)"),
        ))
    }

    /// next LSN = max(last LSN in the log, what the snapshot reflects) + 1;
    /// an error if the snapshot reflects LSNs the log does not reach.
    fn next_lsn(&self, scan: &ScanReport) -> Result<u64, Error> {
        let covered = self
            .snapshot
            .as_ref()
            .map_or(0, |(c, _)| c.saturating_sub(1));
        let snapshot_max = covered.max(self.snapshot_lsn_max);
        if let (Some(last), Some((_, path))) = (scan.last_lsn, &self.snapshot) {
            if snapshot_max > last {
                return Err(Error::corrupt(
                    path,
                    0,
                    Some(last + 1),
                    format!("the snapshot reflects LSN {snapshot_max}, but the log ends at {last}: durable records are missing"),
                ));
            }
        }
        Ok(scan.last_lsn.unwrap_or(0).max(snapshot_max) + 1)
    }
}

/// Cut a torn tail or trim a zero tail, remove an empty last segment and
/// every prepared file, durably.
fn repair(dir: &Path, scan: &ScanReport, report: &mut RecoveryReport) -> Result<(), Error> {
    let mut dir_changed = false;
    for path in reader::list_prepared(dir)? {
        fs::remove_file(&path).map_err(io_at(&path))?;
        report.prepared_removed.push(path);
        dir_changed = true;
    }
    if let Some(last) = scan.segments.last() {
        dir_changed |= repair_last(last, scan.torn.as_ref(), report)?;
    }
    if dir_changed {
        sync_dir(dir).map_err(io_at(dir))?;
    }
    Ok(())
}

/// The last segment's part of `repair`; returns whether it removed it.
fn repair_last(
    last: &SegmentSummary,
    torn: Option<&TornTail>,
    report: &mut RecoveryReport,
) -> Result<bool, Error> {
    if let Some(torn) = torn {
        tracing::warn!(
            file = %torn.file.display(),
            offset = torn.offset,
            bytes = torn.bytes,
            reason = %torn.reason,
            "cutting the torn tail of the last WAL segment"
        );
        if !torn.header {
            cut(&torn.file, torn.offset)?;
        }
        report.torn_bytes_cut = torn.bytes;
    }
    if last.records == 0 {
        // Holds nothing, and the writer will create the segment for the
        // next LSN, which may be this very name.
        fs::remove_file(&last.path).map_err(io_at(&last.path))?;
        report.segments_removed.push(last.path.clone());
        return Ok(true);
    }
    if last.zero_tail_bytes > 0 {
        // The writer never reopens a segment: its unused preallocated
        // space would stay allocated until prune deletes the file.
        tracing::info!(
            file = %last.path.display(),
            offset = last.valid_bytes,
            bytes = last.zero_tail_bytes,
            "trimming the unused preallocated end of the last WAL segment"
        );
        cut(&last.path, last.valid_bytes)?;
        report.zero_tail_bytes_trimmed = last.zero_tail_bytes;
    }
    Ok(false)
}

/// Truncate `file` to `len` bytes, durably.
fn cut(file: &Path, len: u64) -> Result<(), Error> {
    let f = OpenOptions::new()
        .write(true)
        .open(file)
        .map_err(io_at(file))?;
    f.set_len(len).map_err(io_at(file))?;
    f.sync_all().map_err(io_at(file))
}
