//! The synchronisation types our own concurrency primitives are written
//! against. In the service they are `std`'s; `loom-tests/` compiles the same
//! primitive source files (via `#[path]`) next to a `sync` module that maps
//! these names to `loom`'s types, so loom model-checks the real code, not a
//! copy. Anything that orders events between threads and decides correctness
//! (the commit pipeline, the activation gate) uses only this module.

pub use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
pub use std::sync::{Arc, Condvar, Mutex, MutexGuard};
