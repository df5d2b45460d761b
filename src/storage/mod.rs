//! Storage: the write-ahead log, snapshots, recovery, and the on-disk codec.
//!
//! - `codec`: the only module that knows bincode; record and snapshot frames.
//! - `segment`: WAL segment files (header, naming, preallocation).
//! - `pipeline`: group commit: LSN assignment, pending bytes, durable
//!   watermark and its waiters (model-checked by loom).
//! - `wal`: the writer thread that makes batches durable, and its preparer
//!   thread that zero-fills the next segment ahead of time.
//! - `reader`: scanning segments back in LSN order; torn tail vs corruption.
//! - `snapshot`: one file with every owner's state; load with fallback; prune.
//! - `recovery`: lock the data dir, snapshot + replay, cut a torn tail,
//!   remove prepared files.
//! - `tools`: read-only `wal verify` and `wal dump`.
//! - `fsync_probe`: `wal fsync-probe`, this disk's append + fdatasync latency
//!   through the real segment code.
//! - `error`: the storage error a caller can act on.
//! - `testing`: disk doubles (in-memory power cut, injected faults) for tests.

pub mod codec;
pub mod error;
pub mod fsync_probe;
pub mod pipeline;
pub mod reader;
pub mod recovery;
pub mod segment;
pub mod snapshot;
pub mod testing;
pub mod tools;
pub mod wal;

pub use error::Error;
