//! WAL segment files: naming, header, preparation (ahead of time, on the
//! writer's preparer thread) and installation (header, name) with the
//! directory fsync that makes a new segment's existence durable.
//!
//! A segment is `wal-<first LSN, 20 digits>.log`: a 32-byte header (magic,
//! version, first LSN, CRC32C) followed by framed records (see `codec`).
//! Names sort in LSN order. Version 2, written by this build, is made from
//! a prepared file (`next-<n>.prep`): with `--fsync always` it is
//! preallocated with written zeros, so a group commit's `fdatasync` flushes
//! data only, and the zeros after the last record are the clean end of the
//! segment (see `reader`); with `--fsync never` it is appended. Version 1
//! files (appended) are still read. Byte layout and rules:
//! `snapshots/FORMAT.md`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub const SEGMENT_MAGIC: [u8; 8] = *b"CIQWAL\0\0";
/// The version this build writes: preallocated, zero tail (as version 2),
/// records in the version 4 shapes (reasons and references, holds in
/// transactions; see `codec::RECORDS_V4`). Version 3 records
/// (reservations and history, `codec::RECORDS_V3`) are still read.
pub const SEGMENT_VERSION: u32 = 4;
/// The first preallocated version (zero tail); versions 2 to 4 are.
pub const SEGMENT_VERSION_PREALLOCATED: u32 = 2;
/// The oldest version this build reads: appended, no zero tail.
pub const SEGMENT_VERSION_V1: u32 = 1;
pub const SEGMENT_HEADER_BYTES: usize = 32;
/// Default segment size before the writer rolls to a new file; also the
/// size a segment is preallocated to.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 << 20;

pub fn segment_name(first_lsn: u64) -> String {
    format!("wal-{first_lsn:020}.log")
}

/// The first LSN encoded in a segment file name, if it is one.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    parse_numbered(name, "wal-", ".log")
}

/// A prepared file's temporary name: `next-<n, 20 digits>.prep`, `n` a
/// per-process counter. Never a segment name, so readers skip it; recovery
/// deletes every one it finds (nothing in it is part of the log).
pub fn prepared_name(n: u64) -> String {
    format!("next-{n:020}.prep")
}

/// The counter in a prepared file's name, if it is one.
pub fn parse_prepared_name(name: &str) -> Option<u64> {
    parse_numbered(name, "next-", ".prep")
}

fn parse_numbered(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())?
}

/// A fresh number for a prepared file's name. Process-wide, so two writers
/// in one process (tests) never pick the same name; across processes,
/// recovery has removed every earlier prepared file before a writer starts.
pub fn next_prepared_number() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The header of the current version.
pub fn encode_header(first_lsn: u64) -> [u8; SEGMENT_HEADER_BYTES] {
    encode_header_version(SEGMENT_VERSION, first_lsn)
}

/// A header with any version number (golden files and tests of old or
/// future versions).
pub fn encode_header_version(version: u32, first_lsn: u64) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut h = [0u8; SEGMENT_HEADER_BYTES];
    h[0..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&version.to_le_bytes());
    h[16..24].copy_from_slice(&first_lsn.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

/// A decoded segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// `SEGMENT_VERSION_V1` or `SEGMENT_VERSION`.
    pub version: u32,
    pub first_lsn: u64,
}

/// Why a segment header is unusable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("file is shorter than a segment header")]
    Short,
    #[error("bad magic: not a CountIQ WAL segment")]
    Magic,
    #[error("unsupported segment format version {0} (this build reads {SEGMENT_VERSION_V1} to {SEGMENT_VERSION})")]
    Version(u32),
    #[error("header checksum mismatch")]
    Crc,
}

/// Parse a header.
pub fn decode_header(bytes: &[u8]) -> Result<Header, HeaderError> {
    if bytes.len() < SEGMENT_HEADER_BYTES {
        return Err(HeaderError::Short);
    }
    if bytes[0..8] != SEGMENT_MAGIC {
        return Err(HeaderError::Magic);
    }
    let crc = u32::from_le_bytes(bytes[24..28].try_into().expect("4 bytes"));
    if crc != crc32c::crc32c(&bytes[0..24]) {
        return Err(HeaderError::Crc);
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if !(SEGMENT_VERSION_V1..=SEGMENT_VERSION).contains(&version) {
        return Err(HeaderError::Version(version));
    }
    Ok(Header {
        version,
        first_lsn: u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes")),
    })
}

/// fsync a directory, so that a created, renamed or removed entry in it is
/// durable (a file's own fsync does not cover its directory entry).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// An open segment the writer writes to.
// `len` is a size in bytes that is never zero (the header), not a collection
// length: an `is_empty` would always be false.
#[allow(clippy::len_without_is_empty)]
pub trait SegmentFile: Send {
    /// Write `bytes` at offset `len()` (over the preallocated zeros, or past
    /// them: the file then grows).
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()>;
    fn sync_data(&mut self) -> io::Result<()>;
    /// Bytes written so far, header included: where the next write goes.
    /// Not the file's size, which is the preallocated size until a write
    /// goes past it.
    fn len(&self) -> u64;
}

/// Where segments live. The real one is a directory; tests substitute a
/// disk that fails on command or forgets everything not synced.
///
/// A segment is made in two steps so that zero-filling stays off the commit
/// path: `prepare` runs ahead of time on the writer's preparer thread (on a
/// clone of the disk), `install` on the writer thread when it rolls.
pub trait LogDisk: Clone + Send + 'static {
    type File: SegmentFile;
    /// A prepared file: zero-filled, durable, under a temporary name.
    type Prepared: Send + 'static;
    /// Create a file of `bytes` zero bytes (written, not a hole or an
    /// unwritten extent) under a temporary name and sync it.
    fn prepare(&mut self, bytes: u64) -> io::Result<Self::Prepared>;
    /// Make `prepared` the segment starting at `first_lsn`: write and sync
    /// its header, rename it to `segment_name(first_lsn)` (an existing file
    /// of that name is an error, never replaced), sync the directory.
    fn install(&mut self, prepared: Self::Prepared, first_lsn: u64) -> io::Result<Self::File>;
}

/// The real disk: a directory of segment files.
#[derive(Debug, Clone)]
pub struct DirDisk {
    dir: PathBuf,
}

impl DirDisk {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DirDisk { dir: dir.into() }
    }
}

/// A prepared file in a directory.
#[derive(Debug)]
pub struct DirPrepared {
    file: File,
    path: PathBuf,
}

pub struct DirSegment {
    file: File,
    len: u64,
}

impl SegmentFile for DirSegment {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        // Positional: no O_APPEND and no shared cursor; `len` is the offset.
        self.file.write_all_at(bytes, self.len)?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn len(&self) -> u64 {
        self.len
    }
}

/// Zeros written per `write` while preparing (a static: no allocation).
static ZEROS: [u8; 1 << 20] = [0; 1 << 20];

/// `e` with what was being done to which file in front of its message (the
/// kind is kept).
fn context(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

impl LogDisk for DirDisk {
    type File = DirSegment;
    type Prepared = DirPrepared;

    fn prepare(&mut self, bytes: u64) -> io::Result<DirPrepared> {
        let path = self.dir.join(prepared_name(next_prepared_number()));
        let fill = |path: &Path| -> io::Result<File> {
            // create_new: never write into a file we did not just create.
            let mut file = OpenOptions::new().write(true).create_new(true).open(path)?;
            let mut left = bytes;
            while left > 0 {
                let n = left.min(ZEROS.len() as u64) as usize;
                file.write_all(&ZEROS[..n])?;
                left -= n as u64;
            }
            // Data and size (the file is new): after this, overwriting any
            // of its bytes changes no metadata that fdatasync must flush.
            file.sync_all()?;
            Ok(file)
        };
        let file = fill(&path).map_err(|e| context(e, "preparing WAL segment", &path))?;
        Ok(DirPrepared { file, path })
    }

    fn install(&mut self, prepared: DirPrepared, first_lsn: u64) -> io::Result<DirSegment> {
        let DirPrepared { file, path: from } = prepared;
        let to = self.dir.join(segment_name(first_lsn));
        // Header first and durable: a file with a segment name always has
        // a valid header.
        file.write_all_at(&encode_header(first_lsn), 0)
            .and_then(|()| file.sync_data())
            .map_err(|e| context(e, "writing the header of", &from))?;
        // The writer is the only creator of segments in a locked directory,
        // so checking first is enough to never replace a segment (a clash
        // is a bug to surface, as `create_new` did before preallocation).
        if fs::exists(&to).map_err(|e| context(e, "checking", &to))? {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("installing WAL segment {}: it already exists", to.display()),
            ));
        }
        fs::rename(&from, &to).map_err(|e| context(e, "renaming to", &to))?;
        sync_dir(&self.dir).map_err(|e| context(e, "syncing directory", &self.dir))?;
        Ok(DirSegment {
            file,
            len: SEGMENT_HEADER_BYTES as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_by_lsn_and_roundtrip() {
        assert_eq!(segment_name(1), "wal-00000000000000000001.log");
        assert_eq!(parse_segment_name(&segment_name(u64::MAX)), Some(u64::MAX));
        assert!(segment_name(9) < segment_name(10));
        for bad in [
            "wal-1.log",
            "wal-0000000000000000000x.log",
            "snap-00000000000000000001.snap",
            "next-00000000000000000001.prep",
            "x",
        ] {
            assert_eq!(parse_segment_name(bad), None, "{bad}");
        }
        assert_eq!(parse_prepared_name(&prepared_name(7)), Some(7));
        assert_eq!(parse_prepared_name(&segment_name(7)), None);
    }

    #[test]
    fn header_roundtrips_and_every_flaw_is_named() {
        let h = encode_header(77);
        let v2 = Header {
            version: SEGMENT_VERSION,
            first_lsn: 77,
        };
        assert_eq!(decode_header(&h), Ok(v2));
        let v1 = encode_header_version(SEGMENT_VERSION_V1, 77);
        assert_eq!(
            decode_header(&v1),
            Ok(Header {
                version: 1,
                first_lsn: 77
            })
        );
        assert_eq!(decode_header(&h[..31]), Err(HeaderError::Short));
        let mut bad = h;
        bad[0] ^= 1;
        assert_eq!(decode_header(&bad), Err(HeaderError::Magic));
        let mut bad = h;
        bad[17] ^= 1;
        assert_eq!(decode_header(&bad), Err(HeaderError::Crc));
        for unknown in [0, SEGMENT_VERSION + 1] {
            let h = encode_header_version(unknown, 77);
            assert_eq!(decode_header(&h), Err(HeaderError::Version(unknown)));
        }
    }

    #[test]
    fn a_prepared_file_is_zeros_until_installed_then_written_in_place() {
        // Goal: prepare makes a full-size file of zeros under a temporary
        // name; install gives it a header and its segment name without
        // changing its size; writes land at `len`; a name clash is refused.
        let dir = tempfile::tempdir().unwrap();
        let mut disk = DirDisk::new(dir.path());
        let prepared = disk.prepare(4096).unwrap();
        let prep_path = prepared.path.clone();
        assert!(parse_prepared_name(prep_path.file_name().unwrap().to_str().unwrap()).is_some());
        assert_eq!(fs::read(&prep_path).unwrap(), vec![0u8; 4096]);

        let mut seg = disk.install(prepared, 5).unwrap();
        assert!(!prep_path.exists());
        let path = dir.path().join(segment_name(5));
        seg.write_all(b"abc").unwrap();
        seg.sync_data().unwrap();
        assert_eq!(seg.len(), SEGMENT_HEADER_BYTES as u64 + 3);
        let bytes = fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 4096, "installing and writing keep the size");
        assert_eq!(&bytes[..SEGMENT_HEADER_BYTES], &encode_header(5));
        assert_eq!(
            &bytes[SEGMENT_HEADER_BYTES..SEGMENT_HEADER_BYTES + 3],
            b"abc"
        );
        assert!(bytes[SEGMENT_HEADER_BYTES + 3..].iter().all(|&b| b == 0));

        // A write past the preallocated end grows the file.
        seg.write_all(&[7u8; 5000]).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), 32 + 3 + 5000);

        let again = disk.prepare(64).unwrap();
        let err = disk.install(again, 5).err().expect("name clash");
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert!(err.to_string().contains(&segment_name(5)), "{err}");
        assert_eq!(fs::read(&path).unwrap().len(), 32 + 3 + 5000, "untouched");
    }
}
