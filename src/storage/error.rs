//! The storage layer's error: one enum whose variants say what a caller (the
//! server at start-up, the `wal verify` tool, an operator) can do about it.
//!
//! - `Io`: the OS refused (permissions, disk full, EIO). Fix the disk/dir.
//! - `Corrupt`: bytes that are not what we wrote, at a place a crash cannot
//!   explain (not the tail of the last segment). Never skipped: an operator
//!   must look (restore a backup, or cut the log at `offset` knowingly).
//! - `Version`: a file written by a newer format this build cannot read.
//! - `Format`: a file that is not ours at all (bad magic, bad name).
//! - `Locked`: another process holds the data directory.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Everything that can go wrong reading or writing the data directory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("corrupt data in {} at offset {offset}{}: {reason}", file.display(), LsnSuffix(*lsn))]
    Corrupt {
        file: PathBuf,
        offset: u64,
        /// The LSN of the damaged record, when it can be known (the LSN
        /// expected there, or the one a CRC-valid record carries).
        lsn: Option<u64>,
        reason: String,
    },
    #[error("{} has format version {found}; this build reads versions up to {supported}", file.display())]
    Version {
        file: PathBuf,
        found: u32,
        /// The newest version this build reads.
        supported: u32,
    },
    #[error("{} is not a CountIQ file: {reason}", file.display())]
    Format { file: PathBuf, reason: String },
    #[error("data directory {} is in use by another process (lock file {})", dir.display(), lock_file.display())]
    Locked { dir: PathBuf, lock_file: PathBuf },
}

struct LsnSuffix(Option<u64>);

impl fmt::Display for LsnSuffix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(lsn) => write!(f, " (LSN {lsn})"),
            None => Ok(()),
        }
    }
}

impl Error {
    /// Wrap an I/O error with the path it concerns.
    pub fn io(path: &Path, source: io::Error) -> Error {
        Error::Io {
            path: path.to_owned(),
            source,
        }
    }

    pub fn corrupt(file: &Path, offset: u64, lsn: Option<u64>, reason: impl Into<String>) -> Self {
        Error::Corrupt {
            file: file.to_owned(),
            offset,
            lsn,
            reason: reason.into(),
        }
    }
}

/// `map_err` helper: `.map_err(io_at(&path))`.
pub fn io_at(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::io(path, source)
}
