//! In-process benchmark (no HTTP): transitions/s on ONE hot owner through
//! the real actor + commit pipeline + WAL writer, for 1, 16 and 256
//! concurrent writers, with `--fsync always` and `never`; then transactions
//! of 1, 10, 100 and 1000 ops (deltas/s). Prints a markdown table with the
//! records per fsync (the group-commit factor) and latency percentiles.
//!
//!     cargo bench --bench hot_owner                 # 3 s per row
//!     COUNTIQ_BENCH_SECS=10 cargo bench --bench hot_owner
//!
//! The data dir is a temp dir under the current directory (the project's
//! disk, as in production).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use countiq::actor::{SystemClock, Written};
use countiq::domain::{Command, Delta, ItemName, Outcome, OwnerId, Qty, TxOp};
use countiq::node::{Node, NodeConfig};
use countiq::storage::wal::FsyncPolicy;
use hdrhistogram::Histogram;

struct Row {
    label: String,
    ops_per_s: f64,
    deltas_per_s: f64,
    records_per_sync: f64,
    p50_us: u64,
    p99_us: u64,
}

fn main() {
    let secs: u64 = std::env::var("COUNTIQ_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    for fsync in [FsyncPolicy::Always, FsyncPolicy::Never] {
        for writers in [1, 16, 256] {
            rows.push(rt.block_on(run(fsync, writers, 1, 1, secs)));
        }
    }
    for ops in [1, 10, 100, 1000] {
        rows.push(rt.block_on(run(FsyncPolicy::Always, 16, ops, 10, secs)));
    }
    println!("| workload | ops/s | deltas/s | records per fsync | p50 µs | p99 µs |");
    println!("|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {:.0} | {:.0} | {:.1} | {} | {} |",
            r.label, r.ops_per_s, r.deltas_per_s, r.records_per_sync, r.p50_us, r.p99_us
        );
    }
}

/// `writers` tasks, each looping one request at a time; a request is a
/// PATCH of +1 (`tx_ops == 1`) or a transaction of `tx_ops` deltas spread
/// over `items` items.
async fn run(fsync: FsyncPolicy, writers: usize, tx_ops: usize, items: usize, secs: u64) -> Row {
    let dir = tempfile::tempdir_in(".").expect("temp dir");
    let config = NodeConfig {
        fsync,
        ..NodeConfig::quiet(dir.path())
    };
    let node = Node::open(config, Box::new(SystemClock))
        .await
        .expect("open");
    let owner = OwnerId::new("hot").unwrap();
    let mut ids = Vec::new();
    for i in 0..items {
        let cmd = Command::Create {
            name: ItemName::new(&format!("item{i}")).unwrap(),
            qty: Qty::new(0).unwrap(),
            note: countiq::domain::Note::NONE,
        };
        match node.registry().write(&owner, cmd, None).await {
            Ok(Written::Done {
                result: Ok(Outcome::Created(item)),
                ..
            }) => ids.push(item.id),
            other => panic!("create failed: {other:?}"),
        }
    }
    let ids = Arc::new(ids);
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (node, owner, ids, stop, measuring) = (
            node.clone(),
            owner.clone(),
            ids.clone(),
            stop.clone(),
            measuring.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3).unwrap();
            let mut done = 0u64;
            let one = Delta::new(1).unwrap();
            while !stop.load(Ordering::Relaxed) {
                let cmd = if tx_ops == 1 {
                    Command::Adjust {
                        id: ids[w % ids.len()],
                        delta: one,
                        if_match: None,
                        note: countiq::domain::Note::NONE,
                    }
                } else {
                    let ops = (0..tx_ops)
                        .map(|i| TxOp::adjust(ids[(w + i) % ids.len()], one))
                        .collect();
                    Command::Transact { ops }
                };
                let started = Instant::now();
                let answer = node.registry().write(&owner, cmd, None).await;
                assert!(
                    matches!(answer, Ok(Written::Done { result: Ok(_), .. })),
                    "{answer:?}"
                );
                if measuring.load(Ordering::Relaxed) {
                    hist.record(started.elapsed().as_micros() as u64).unwrap();
                    done += 1;
                }
            }
            (done, hist)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await; // warm-up
    let stats = node.wal_stats();
    let (records0, syncs0) = (
        stats.records.load(Ordering::Relaxed),
        stats.syncs.load(Ordering::Relaxed),
    );
    let t0 = Instant::now();
    measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(secs)).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = t0.elapsed().as_secs_f64();
    let (records1, syncs1) = (
        stats.records.load(Ordering::Relaxed),
        stats.syncs.load(Ordering::Relaxed),
    );
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    let mut hist = Histogram::<u64>::new(3).unwrap();
    for t in tasks {
        let (done, h) = t.await.unwrap();
        total += done;
        hist.add(h).unwrap();
    }
    node.shutdown().await.expect("shutdown");
    let syncs = (syncs1 - syncs0).max(1);
    let label = match (tx_ops, fsync) {
        (1, f) => format!("PATCH, {writers} writers, fsync {f:?}"),
        (n, f) => {
            format!("transactions of {n} ops over {items} items, {writers} writers, fsync {f:?}")
        }
    };
    Row {
        label,
        ops_per_s: total as f64 / elapsed,
        deltas_per_s: (total * tx_ops as u64) as f64 / elapsed,
        records_per_sync: if fsync == FsyncPolicy::Always {
            (records1 - records0) as f64 / syncs as f64
        } else {
            f64::NAN
        },
        p50_us: hist.value_at_quantile(0.5),
        p99_us: hist.value_at_quantile(0.99),
    }
}
