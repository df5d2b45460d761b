//! A running node without its transport: recovery, the commit pipeline and
//! WAL writer, the owner registry, and the checkpointer that writes
//! snapshots. The HTTP server (`server`) and the in-process tests and
//! benchmarks all start the same `Node`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::actor::registry::Registry;
use crate::actor::{ActorConfig, Clock, Reply, Shared};
use crate::storage::pipeline::Pipeline;
use crate::storage::recovery::recover;
use crate::storage::segment::{DirDisk, LogDisk, SEGMENT_BYTES_DEFAULT};
use crate::storage::snapshot::{prune, write_snapshot, OwnerSnapshot, SnapshotInfo};
use crate::storage::wal::{FsyncPolicy, Wal, WalConfig};

/// Defaults for snapshots: often enough that replay after a crash stays
/// around a few seconds, rarely enough that copying state is cheap.
pub const SNAPSHOT_EVERY_RECORDS_DEFAULT: u64 = 5_000_000;
pub const SNAPSHOT_INTERVAL_DEFAULT: Duration = Duration::from_secs(600);
/// How often the checkpointer looks at the log.
const CHECKPOINT_POLL: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub data_dir: PathBuf,
    pub fsync: FsyncPolicy,
    pub segment_bytes: u64,
    pub actor: ActorConfig,
    /// Snapshot after this many records since the last one (0 = never by count).
    pub snapshot_every_records: u64,
    /// Snapshot after this long, if anything was written (None = never by time).
    pub snapshot_interval: Option<Duration>,
}

impl NodeConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        NodeConfig {
            data_dir: data_dir.into(),
            fsync: FsyncPolicy::Always,
            segment_bytes: SEGMENT_BYTES_DEFAULT,
            actor: ActorConfig::default(),
            snapshot_every_records: SNAPSHOT_EVERY_RECORDS_DEFAULT,
            snapshot_interval: Some(SNAPSHOT_INTERVAL_DEFAULT),
        }
    }

    /// For tests, benchmarks and in-process experiments: no idle parking
    /// and no background snapshots (a test takes the ones it wants), so
    /// nothing happens that the caller did not ask for.
    pub fn quiet(data_dir: impl Into<PathBuf>) -> Self {
        NodeConfig {
            actor: ActorConfig {
                idle_after: None,
                ..ActorConfig::default()
            },
            snapshot_every_records: 0,
            snapshot_interval: None,
            ..NodeConfig::new(data_dir)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("recovery failed: {0}")]
    Recovery(#[source] crate::storage::Error),
    #[error("starting the WAL writer: {0}")]
    Io(#[from] std::io::Error),
    #[error("the log has failed; the node takes no more writes")]
    LogFailed,
    /// Writing or pruning a snapshot failed (the typed storage error:
    /// `Io`, or `Corrupt { file, offset, lsn }` met while pruning).
    #[error("snapshot: {0}")]
    Snapshot(#[source] crate::storage::Error),
    /// An owner's state could not be copied for a snapshot.
    #[error("snapshot: {0}")]
    ActorGone(#[from] crate::actor::registry::ActorGone),
    /// A blocking task did not finish: it panicked, or the runtime is
    /// shutting down under it.
    #[error("background task: {0}")]
    Join(String),
}

pub struct Node {
    registry: Registry,
    /// The log writer; the actors hold only its appending side. An `Arc`
    /// so that shutdown can join the writer on a blocking thread.
    wal: Arc<Wal<Reply>>,
    config: NodeConfig,
    /// `Some(error)` once the log has failed: the writer's own I/O error.
    fatal: watch::Receiver<Option<Arc<std::io::Error>>>,
    /// One checkpoint at a time.
    checkpoint_lock: Arc<tokio::sync::Mutex<u64>>,
    checkpointer: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Held for the node's life: the data dir's exclusive lock.
    _lock: crate::storage::recovery::DirLock,
}

impl Node {
    /// Recover from `config.data_dir` and start the log writer and the
    /// checkpointer. Owners are loaded parked and start on first use.
    pub async fn open(config: NodeConfig, clock: Box<dyn Clock>) -> Result<Arc<Node>, NodeError> {
        let disk = DirDisk::new(&config.data_dir);
        Self::open_on(config, clock, disk).await
    }

    /// `open`, with the WAL writing through `disk` (tests inject faults
    /// here; recovery and snapshots still use `config.data_dir`).
    pub async fn open_on<D: LogDisk>(
        config: NodeConfig,
        clock: Box<dyn Clock>,
        disk: D,
    ) -> Result<Arc<Node>, NodeError> {
        let started = Instant::now();
        let dir = config.data_dir.clone();
        let now = clock.now_micros();
        let recovered = tokio::task::spawn_blocking(move || recover(&dir, now))
            .await
            .map_err(|e| NodeError::Join(e.to_string()))?
            .map_err(NodeError::Recovery)?;
        let (fatal_tx, fatal) = watch::channel(None);
        let on_fatal = move |e: &std::io::Error| {
            tracing::error!(error = %e, "WAL write, fsync or segment preparation failed; the node stops taking writes");
            let copy = std::io::Error::new(e.kind(), e.to_string());
            let _ = fatal_tx.send(Some(Arc::new(copy)));
        };
        let pipeline = Arc::new(Pipeline::new(recovered.next_lsn));
        let wal_config = WalConfig {
            fsync: config.fsync,
            segment_bytes: config.segment_bytes,
        };
        // Blocking: returns once the first segment is zero-filled and installed.
        let wal =
            tokio::task::spawn_blocking(move || Wal::start(disk, pipeline, wal_config, on_fatal))
                .await
                .map_err(|e| NodeError::Join(e.to_string()))??;
        let shared = Arc::new(Shared {
            log: wal.appender(),
            config: config.actor,
            clock,
            log_dir: config.data_dir.clone(),
            calls: Default::default(),
        });
        let registry = Registry::new(shared);
        let owners = recovered.owners.len();
        for (owner, r) in recovered.owners {
            registry.load(owner, r.state, r.last_lsn);
        }
        metrics::histogram!("countiq_recovery_seconds").record(started.elapsed().as_secs_f64());
        tracing::info!(owners, next_lsn = recovered.next_lsn, report = ?recovered.report,
            elapsed_ms = started.elapsed().as_millis() as u64, "recovered");
        let node = Arc::new(Node {
            registry,
            wal: Arc::new(wal),
            config,
            fatal,
            checkpoint_lock: Arc::new(tokio::sync::Mutex::new(recovered.next_lsn)),
            checkpointer: std::sync::Mutex::new(None),
            _lock: recovered.lock,
        });
        let task = tokio::spawn(checkpointer(Arc::downgrade(&node)));
        *node.checkpointer.lock().expect("not poisoned") = Some(task);
        Ok(node)
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// Holds the writer's error once the log has failed.
    pub fn fatal(&self) -> watch::Receiver<Option<Arc<std::io::Error>>> {
        self.fatal.clone()
    }

    /// The log writer's counters (benchmarks).
    pub fn wal_stats(&self) -> &crate::storage::wal::WalStats {
        &self.wal.stats
    }

    fn pipeline(&self) -> &Pipeline<Reply> {
        &self.wal.pipeline
    }

    /// Write a snapshot of every owner, then prune old snapshots and the
    /// segments they make redundant. The snapshot covers every record below
    /// the LSN that was next when it started; each owner's section also
    /// records its own last LSN. It is written only once everything it
    /// contains is durable, so a snapshot never runs ahead of the log.
    ///
    /// One checkpoint at a time, including its blocking part: the lock's
    /// guard moves into the blocking task, so a checkpoint whose future is
    /// dropped mid-write (the background checkpointer, aborted at shutdown)
    /// still holds the lock until its file is written and pruned. Without
    /// that, the shutdown's checkpoint raced the orphaned one on the same
    /// snapshot file (found by the SIGTERM soak: ENOENT on rename).
    pub async fn checkpoint(&self) -> Result<SnapshotInfo, NodeError> {
        let last_covers = self.checkpoint_lock.clone().lock_owned().await;
        let started = Instant::now();
        let covers = self.pipeline().next_lsn();
        let copies = self.registry.copy_all().await?;
        let newest = copies
            .iter()
            .map(|c| c.last_lsn)
            .max()
            .unwrap_or(0)
            .max(covers - 1);
        (self.registry.barrier(newest).await).map_err(|_| NodeError::LogFailed)?;
        let owners: Vec<OwnerSnapshot> = copies
            .into_iter()
            .map(|c| OwnerSnapshot {
                owner: c.owner,
                last_lsn: c.last_lsn,
                items: c.items,
                keys: c.keys,
                extra: c.extra,
            })
            .collect();
        let dir = self.config.data_dir.clone();
        let info = tokio::task::spawn_blocking(move || {
            let mut last_covers = last_covers;
            let info = write_snapshot(&dir, covers, owners).map_err(NodeError::Snapshot)?;
            prune(&dir).map_err(NodeError::Snapshot)?;
            *last_covers = covers;
            Ok::<_, NodeError>(info)
        })
        .await
        .map_err(|e| NodeError::Join(e.to_string()))??;
        metrics::histogram!("countiq_snapshot_seconds").record(started.elapsed().as_secs_f64());
        tracing::info!(
            covers,
            ?info,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "snapshot written"
        );
        Ok(info)
    }

    /// Graceful stop: final snapshot, then drain and close the log. Call
    /// after the transport has stopped sending requests.
    pub async fn shutdown(&self) -> Result<(), NodeError> {
        if let Some(task) = self.checkpointer.lock().expect("not poisoned").take() {
            task.abort();
        }
        let snapshot = if self.pipeline().has_failed() {
            Err(NodeError::LogFailed)
        } else {
            self.checkpoint().await.map(|_| ())
        };
        let wal = self.wal.clone();
        let closed = tokio::task::spawn_blocking(move || wal.shutdown())
            .await
            .map_err(|e| NodeError::Join(e.to_string()))?;
        snapshot?;
        closed?;
        Ok(())
    }
}

/// Background task: snapshot every N records or T seconds.
async fn checkpointer(node: std::sync::Weak<Node>) {
    let mut last_at = Instant::now();
    loop {
        tokio::time::sleep(CHECKPOINT_POLL).await;
        let Some(node) = node.upgrade() else { return };
        if node.pipeline().has_failed() {
            return;
        }
        let last_covers = *node.checkpoint_lock.lock().await;
        let pending = node.pipeline().next_lsn().saturating_sub(last_covers);
        let by_count =
            node.config.snapshot_every_records > 0 && pending >= node.config.snapshot_every_records;
        let by_time = node
            .config
            .snapshot_interval
            .is_some_and(|t| last_at.elapsed() >= t)
            && pending > 0;
        if by_count || by_time {
            if let Err(e) = node.checkpoint().await {
                tracing::error!(error = %e, "snapshot failed");
            }
            last_at = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actor::{SystemClock, Written};
    use crate::domain::{Command, ItemName, OwnerId, Qty};

    /// Goal: a checkpoint whose future is dropped while its file is being
    /// written (as shutdown aborts the background checkpointer) never races
    /// the next checkpoint. Method: an owner with enough items that a
    /// snapshot takes a while; 30 times, start a checkpoint, drop it as soon
    /// as its temp file exists (inside the blocking write), then run a
    /// checkpoint to completion: each must succeed. Without the lock held
    /// through the blocking part, the second one renamed or pruned under the
    /// first (ENOENT) within the first rounds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_checkpoint_never_races_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = NodeConfig::quiet(dir.path());
        config.fsync = FsyncPolicy::Never;
        let node = Node::open(config, Box::new(SystemClock)).await.unwrap();
        let owner = OwnerId::new("big").unwrap();
        for i in 0..20_000 {
            let cmd = Command::Create {
                name: ItemName::new(&format!("item-{i}")).unwrap(),
                qty: Qty::new(1).unwrap(),
                note: crate::domain::Note::NONE,
            };
            let answer = node.registry().write(&owner, cmd, None).await.unwrap();
            assert!(matches!(answer, Written::Done { result: Ok(_), .. }));
        }
        let node = Arc::new(node);
        let writing = |dir: &std::path::Path| {
            std::fs::read_dir(dir)
                .unwrap()
                .filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        };
        for round in 0..30u32 {
            let n = node.clone();
            let first = tokio::spawn(async move { n.checkpoint().await });
            // Drop it once its snapshot file is being written (a temp file
            // exists), or when it finished first.
            while !writing(dir.path()) && !first.is_finished() {
                tokio::task::yield_now().await;
            }
            first.abort();
            let _ = first.await;
            node.checkpoint()
                .await
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
        }
    }
}
