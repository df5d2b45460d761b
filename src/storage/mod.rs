//! Storage: the write-ahead log, snapshots, recovery, and the on-disk codec.
//!
//! - `codec`: the only module that knows bincode; record framing.
//! - `segment`: WAL segment files (header, naming, creation).
//! - `pipeline`: group commit: LSN assignment, pending bytes, durable
//!   watermark and its waiters (model-checked by loom).
//! - `wal`: the writer thread that makes batches durable.

pub mod codec;
pub mod pipeline;
pub mod recovery;
pub mod segment;
pub mod snapshot;
pub mod wal;
