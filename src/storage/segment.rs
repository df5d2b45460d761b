//! WAL segment files: naming, header, creation with the directory fsync that
//! makes a new file's existence durable.
//!
//! A segment is `wal-<first LSN, 20 digits>.log`: a 32-byte header followed
//! by framed records (see `codec`). Names sort in LSN order.
//!
//! ```text
//! 0   8  magic      b"CIQWAL\0\0"
//! 8   4  version    u32 LE = 1 (selects the record codec)
//! 12  4  reserved   0
//! 16  8  first_lsn  u64 LE: LSN of the first record in this segment
//! 24  4  crc        CRC32C of bytes 0..24
//! 28  4  reserved   0
//! ```

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub const SEGMENT_MAGIC: [u8; 8] = *b"CIQWAL\0\0";
pub const SEGMENT_VERSION: u32 = 1;
pub const SEGMENT_HEADER_BYTES: usize = 32;
/// Default segment size before the writer rolls to a new file.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 << 20;

pub fn segment_name(first_lsn: u64) -> String {
    format!("wal-{first_lsn:020}.log")
}

/// The first LSN encoded in a segment file name, if it is one.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("wal-")?.strip_suffix(".log")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())?
}

pub fn encode_header(first_lsn: u64) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut h = [0u8; SEGMENT_HEADER_BYTES];
    h[0..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&first_lsn.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Why a segment header is unusable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("file is shorter than a segment header")]
    Short,
    #[error("bad magic: not a CountIQ WAL segment")]
    Magic,
    #[error("unsupported segment format version {0} (this build reads {SEGMENT_VERSION})")]
    Version(u32),
    #[error("header checksum mismatch")]
    Crc,
}

/// Parse a header; returns the first LSN.
pub fn decode_header(bytes: &[u8]) -> Result<u64, HeaderError> {
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
    if version != SEGMENT_VERSION {
        return Err(HeaderError::Version(version));
    }
    Ok(u64::from_le_bytes(
        bytes[16..24].try_into().expect("8 bytes"),
    ))
}

/// fsync a directory, so that a created, renamed or removed entry in it is
/// durable (a file's own fsync does not cover its directory entry).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// An open segment the writer appends to.
// `len` is a size in bytes that is never zero (the header), not a collection
// length: an `is_empty` would always be false.
#[allow(clippy::len_without_is_empty)]
pub trait SegmentFile: Send {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()>;
    fn sync_data(&mut self) -> io::Result<()>;
    /// Bytes in the file, header included.
    fn len(&self) -> u64;
}

/// Where segments live. The real one is a directory; tests substitute a
/// disk that fails on command or forgets everything not synced.
pub trait LogDisk: Send + 'static {
    type File: SegmentFile;
    /// Create the segment starting at `first_lsn`, write its header, and
    /// make both the file and its directory entry durable.
    fn create_segment(&mut self, first_lsn: u64) -> io::Result<Self::File>;
}

/// The real disk: a directory of segment files.
pub struct DirDisk {
    dir: PathBuf,
}

impl DirDisk {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DirDisk { dir: dir.into() }
    }
}

pub struct DirSegment {
    file: File,
    len: u64,
}

impl SegmentFile for DirSegment {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)?;
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

impl LogDisk for DirDisk {
    type File = DirSegment;

    fn create_segment(&mut self, first_lsn: u64) -> io::Result<DirSegment> {
        let path = self.dir.join(segment_name(first_lsn));
        // create_new: a segment is never reopened for writing; recovery
        // always starts a fresh one, so a name clash is a bug to surface.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        file.write_all(&encode_header(first_lsn))?;
        file.sync_all()?;
        sync_dir(&self.dir)?;
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
            "x",
        ] {
            assert_eq!(parse_segment_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn header_roundtrips_and_every_flaw_is_named() {
        let h = encode_header(77);
        assert_eq!(decode_header(&h), Ok(77));
        assert_eq!(decode_header(&h[..31]), Err(HeaderError::Short));
        let mut bad = h;
        bad[0] ^= 1;
        assert_eq!(decode_header(&bad), Err(HeaderError::Magic));
        let mut bad = h;
        bad[17] ^= 1;
        assert_eq!(decode_header(&bad), Err(HeaderError::Crc));
        let mut v2 = h;
        v2[8] = 2;
        let crc = crc32c::crc32c(&v2[0..24]);
        v2[24..28].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_header(&v2), Err(HeaderError::Version(2)));
    }
}
