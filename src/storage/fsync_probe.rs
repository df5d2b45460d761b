//! `countiq wal fsync-probe`: how long one append + `fdatasync` takes on
//! this disk, done the way the WAL writer does it with `--fsync always`.
//!
//! The file is made by the real segment code (`segment::DirDisk`): prepared
//! (zero-filled to the default segment size and synced, `LogDisk::prepare`)
//! and installed (header, rename, directory sync, `LogDisk::install`), then
//! written in place with `SegmentFile::write_all` + `sync_data`, the calls
//! a group commit makes. Everything happens in a fresh directory of our own
//! inside the given one, so no existing file (a live data directory's
//! segments included) is opened, and it is removed at the end, also on an
//! error. The probe never writes past the preallocated end (the WAL rolls
//! to a new segment before it would), so each sync flushes data only.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use uuid::Uuid;

use super::codec::encode_record;
use super::segment::{DirDisk, LogDisk, SegmentFile, SEGMENT_BYTES_DEFAULT, SEGMENT_HEADER_BYTES};
use crate::domain::{Event, Note, OwnerId, Qty, QtyVersion};

/// Default number of append + sync rounds.
pub const PROBE_COUNT_DEFAULT: u32 = 2000;
/// At most this many rounds (a few seconds to a minute on a real disk).
pub const PROBE_COUNT_MAX: u32 = 100_000;
/// At most this many bytes per append (one batch of records).
pub const PROBE_BYTES_MAX: u32 = 1 << 20;
/// The preallocated file: one segment of the default size. `count × bytes`
/// must fit after its header.
pub const PROBE_FILE_BYTES: u64 = SEGMENT_BYTES_DEFAULT;

/// What the probe measured; latencies in µs (nearest rank, rounded).
#[derive(Debug, Clone, Serialize)]
pub struct ProbeReport {
    /// The directory whose file system was measured.
    pub dir: PathBuf,
    pub count: u32,
    /// Bytes per append.
    pub bytes: u32,
    /// Size of the preallocated file.
    pub file_bytes: u64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
}

/// The size of one framed PATCH record as the WAL writes it (a `QtySet`
/// event without an idempotency key, on an owner named like the load
/// generator's, `cq-<16 hex>-hot`, with a realistic LSN, quantity,
/// version and timestamp), from the codec itself.
pub fn patch_record_bytes() -> u32 {
    let owner = OwnerId::new("cq-0123456789abcdef-hot").expect("a valid owner id");
    let at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    let event = Event::QtySet {
        change: QtyVersion {
            id: Uuid::now_v7(),
            qty: Qty::new(1_000_000_000).expect("a valid qty"),
            version: 1_000_000,
        },
        at,
        note: Note::default(),
    };
    let mut frame = Vec::new();
    encode_record(1_000_000, &owner, Some(&event), None, &mut frame);
    frame.len() as u32
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Checks the bounds: `count` in [1, `PROBE_COUNT_MAX`], `bytes` in [1,
/// `PROBE_BYTES_MAX`], and `count × bytes` within the preallocated file.
pub fn check_bounds(count: u32, bytes: u32) -> io::Result<()> {
    if !(1..=PROBE_COUNT_MAX).contains(&count) {
        return Err(invalid(format!(
            "--count must be in [1, {PROBE_COUNT_MAX}], got {count}"
        )));
    }
    if !(1..=PROBE_BYTES_MAX).contains(&bytes) {
        return Err(invalid(format!(
            "--bytes must be in [1, {PROBE_BYTES_MAX}], got {bytes}"
        )));
    }
    let room = PROBE_FILE_BYTES - SEGMENT_HEADER_BYTES as u64;
    if u64::from(count) * u64::from(bytes) > room {
        return Err(invalid(format!(
            "--count × --bytes must be at most {room} (one {} MiB segment after its header), \
             got {count} × {bytes}",
            PROBE_FILE_BYTES >> 20
        )));
    }
    Ok(())
}

/// Our own directory inside `parent`, removed (with what is in it) on drop.
struct ProbeDir(PathBuf);

impl ProbeDir {
    fn create(parent: &Path) -> io::Result<ProbeDir> {
        let pid = std::process::id();
        let mut last = None;
        for n in 0..100u32 {
            let path = parent.join(format!(".countiq-fsync-probe-{pid}-{n}"));
            // create_dir, not create_dir_all: fails if it exists, so we
            // never use (or later remove) a directory we did not make.
            match fs::create_dir(&path) {
                Ok(()) => return Ok(ProbeDir(path)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no probe directory name left")))
    }
}

impl Drop for ProbeDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Runs the probe in `dir` (see the module doc): `count` times append
/// `bytes` bytes and `sync_data`, each timed.
pub fn probe(dir: &Path, count: u32, bytes: u32) -> io::Result<ProbeReport> {
    check_bounds(count, bytes)?;
    let own = ProbeDir::create(dir).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("creating a directory in {}: {e}", dir.display()),
        )
    })?;
    let mut disk = DirDisk::new(&own.0);
    let prepared = disk.prepare(PROBE_FILE_BYTES)?;
    let mut segment = disk.install(prepared, 1)?;
    // Not zeros, so nothing along the way could treat the write as a hole.
    let payload: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8 + 1).collect();
    let mut ns: Vec<u64> = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let start = Instant::now();
        segment.write_all(&payload)?;
        segment.sync_data()?;
        ns.push(start.elapsed().as_nanos() as u64);
    }
    drop(segment);
    drop(own);
    ns.sort_unstable();
    let us = |v: u64| (v as f64 / 100.0).round() / 10.0;
    let mean = ns.iter().map(|&v| v as f64).sum::<f64>() / ns.len() as f64;
    Ok(ProbeReport {
        dir: dir.to_path_buf(),
        count,
        bytes,
        file_bytes: PROBE_FILE_BYTES,
        p50_us: us(nearest_rank(&ns, 0.50)),
        p90_us: us(nearest_rank(&ns, 0.90)),
        p99_us: us(nearest_rank(&ns, 0.99)),
        max_us: us(*ns.last().expect("count >= 1")),
        mean_us: (mean / 100.0).round() / 10.0,
    })
}

/// The nearest-rank quantile `q` of sorted, non-empty `sorted`.
fn nearest_rank(sorted: &[u64], q: f64) -> u64 {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The report for a person: what was done, then one line of figures.
pub fn write_human(out: &mut impl io::Write, r: &ProbeReport) -> io::Result<()> {
    writeln!(
        out,
        "fsync-probe: {} × ({}-byte append + fdatasync) in {}, on a {} MiB file prepared as a WAL segment for --fsync always",
        r.count,
        r.bytes,
        r.dir.display(),
        r.file_bytes >> 20
    )?;
    writeln!(
        out,
        "count {}  p50 {}  p90 {}  p99 {}  max {}  mean {}  (µs)",
        r.count, r.p50_us, r.p90_us, r.p99_us, r.max_us, r.mean_us
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::codec::{decode_payload, parse_frame, FrameParse, RECORD_BYTES_MAX};

    #[test]
    fn nearest_rank_picks_the_documented_element() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(nearest_rank(&v, 0.50), 50);
        assert_eq!(nearest_rank(&v, 0.99), 99);
        assert_eq!(nearest_rank(&v, 1.0), 100);
        assert_eq!(nearest_rank(&[7], 0.5), 7);
        assert_eq!(nearest_rank(&[1, 2], 0.0), 1);
    }

    #[test]
    fn the_default_size_is_one_framed_patch_record() {
        // Goal: the default --bytes is what the WAL appends for one PATCH;
        // method: the encoded frame parses back as one whole QtySet record.
        let n = patch_record_bytes() as usize;
        assert!((40..200).contains(&n), "{n}");
        let owner = OwnerId::new("cq-0123456789abcdef-hot").unwrap();
        let event = Event::QtySet {
            change: QtyVersion {
                id: Uuid::now_v7(),
                qty: Qty::new(1_000_000_000).unwrap(),
                version: 1_000_000,
            },
            at: 1_800_000_000_000_000,
            note: Note::default(),
        };
        let mut frame = Vec::new();
        encode_record(1_000_000, &owner, Some(&event), None, &mut frame);
        assert_eq!(frame.len(), n);
        match parse_frame(&frame, RECORD_BYTES_MAX) {
            FrameParse::Complete {
                payload,
                frame_bytes,
            } => {
                assert_eq!(frame_bytes, n);
                let record = decode_payload(payload).unwrap();
                assert!(matches!(record.event, Some(Event::QtySet { .. })));
            }
            _ => panic!("not one whole frame"),
        }
    }

    #[test]
    fn bounds_are_enforced_at_their_edges() {
        assert!(check_bounds(1, 1).is_ok());
        assert!(check_bounds(PROBE_COUNT_MAX, 64).is_ok());
        assert!(check_bounds(0, 64).is_err());
        assert!(check_bounds(PROBE_COUNT_MAX + 1, 64).is_err());
        assert!(check_bounds(1, 0).is_err());
        assert!(check_bounds(1, PROBE_BYTES_MAX).is_ok());
        assert!(check_bounds(1, PROBE_BYTES_MAX + 1).is_err());
        // 64 appends of 1 MiB fill the file past its header.
        let err = check_bounds(64, PROBE_BYTES_MAX).unwrap_err();
        assert!(err.to_string().contains("--count × --bytes"), "{err}");
        assert!(check_bounds(63, PROBE_BYTES_MAX).is_ok());
    }
}
