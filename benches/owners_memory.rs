//! Memory per owner: create N owners with one item each through the real
//! node (no HTTP), read the live heap with every actor running, then let
//! them park (idle timeout) and read it again. Live heap bytes are counted
//! exactly by a counting global allocator.
//!
//!     cargo bench --bench owners_memory            # N = 100000
//!     COUNTIQ_BENCH_OWNERS=200000 cargo bench --bench owners_memory

use std::time::Duration;

use countiq::actor::{ActorConfig, SystemClock, Written};
use countiq::alloc_count::{live_bytes, Counting};
use countiq::domain::{Command, ItemName, OwnerId, Qty};
use countiq::node::{Node, NodeConfig};
use countiq::storage::wal::FsyncPolicy;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live_heap_bytes() -> u64 {
    live_bytes().max(0) as u64
}

fn main() {
    let owners: usize = std::env::var("COUNTIQ_BENCH_OWNERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir_in(".").unwrap();
        let idle = Duration::from_secs(3);
        let mut config = NodeConfig::new(dir.path());
        config.fsync = FsyncPolicy::Never; // this measures memory, not the disk
        config.snapshot_every_records = 0;
        config.snapshot_interval = None;
        config.actor = ActorConfig {
            idle_after: Some(idle),
            ..ActorConfig::default()
        };
        let node = Node::open(config, Box::new(SystemClock)).await.unwrap();
        let before = live_heap_bytes();
        let mut tasks = Vec::new();
        for chunk in 0..64 {
            let node = node.clone();
            tasks.push(tokio::spawn(async move {
                for i in (chunk..owners).step_by(64) {
                    let owner = OwnerId::new(&format!("owner-{i}")).unwrap();
                    let cmd = Command::Create {
                        name: ItemName::new("milk").unwrap(),
                        qty: Qty::new(1).unwrap(),
                        note: countiq::domain::Note::NONE,
                    };
                    let answer = node.registry().write(&owner, cmd, None).await;
                    assert!(
                        matches!(answer, Ok(Written::Done { result: Ok(_), .. })),
                        "{answer:?}"
                    );
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let active = live_heap_bytes();
        let stats = node.registry().stats(0);
        assert_eq!(stats.active, owners);
        tokio::time::sleep(idle + Duration::from_secs(2)).await;
        let stats_parked = node.registry().stats(0);
        let parked = live_heap_bytes();
        println!("| owners | state | heap growth | per owner |");
        println!("|---|---|---|---|");
        let per = |bytes: u64| bytes.saturating_sub(before) as f64 / owners as f64;
        println!(
            "| {owners} | all active ({} actors) | {:.1} MiB | {:.0} B |",
            stats.active,
            (active - before) as f64 / 1048576.0,
            per(active)
        );
        println!(
            "| {owners} | parked ({} active) | {:.1} MiB | {:.0} B |",
            stats_parked.active,
            parked.saturating_sub(before) as f64 / 1048576.0,
            per(parked)
        );
        node.shutdown().await.unwrap();
    });
}
