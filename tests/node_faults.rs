//! A failed WAL write or fsync at the node level (the actors, the pipeline
//! and the writer together), for the durability promise's failure half:
//! "a failed fsync is never retried on the same file: stop, fail, recover".
//!
//! Method: a real node whose WAL disk fails the Nth write (EIO), the Nth
//! sync (EIO), the Nth write half-way (ENOSPC) or the 2nd segment
//! preparation (ENOSPC: the log fails at its first roll). 16 tasks send +1
//! deltas to one item until their call fails. Checks:
//! - once any caller saw a failure, no later call is acknowledged (every
//!   task's answers are a run of Ok followed only by Unavailable);
//! - the node reports the failure (the server exits on it);
//! - a new node recovered from the same directory holds every acknowledged
//!   delta: qty is at least the acknowledged count and at most that plus
//!   the calls whose outcome was unknown (one per task).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use countiq::actor::{CallError, SystemClock, Written};
use countiq::domain::{Command, Delta, OwnerId};
use countiq::node::Node;
use countiq::storage::segment::DirDisk;
use countiq::storage::testing::{Fault, FaultOp, FaultyDisk};

const TASKS: usize = 16;

async fn run(op: FaultOp, nth: u64, errno: i32) {
    let dir = tempfile::tempdir().unwrap();
    let fault = Fault::new(op, nth, errno);
    let disk = FaultyDisk {
        inner: DirDisk::new(dir.path()),
        fault: fault.clone(),
    };
    let node = Node::open_on(common::node_config(dir.path()), Box::new(SystemClock), disk)
        .await
        .unwrap();
    let owner = OwnerId::new("victim").unwrap();
    let id = common::create_item(&node, &owner, "milk").await;
    let failed_seen = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (node, owner, failed_seen) = (node.clone(), owner.clone(), failed_seen.clone());
        tasks.push(tokio::spawn(async move {
            let mut acked = 0u64;
            loop {
                let failure_known_before = failed_seen.load(Ordering::SeqCst);
                let cmd = Command::Adjust {
                    id,
                    delta: Delta::new(1).unwrap(),
                    if_match: None,
                    note: countiq::domain::Note::NONE,
                };
                match node.registry().write(&owner, cmd, None).await {
                    Ok(Written::Done { result: Ok(_), .. }) => {
                        assert!(
                            !failure_known_before,
                            "acknowledged after a failure was reported"
                        );
                        acked += 1;
                    }
                    Err(CallError::Unavailable) => {
                        failed_seen.store(true, Ordering::SeqCst);
                        return acked;
                    }
                    other => panic!("unexpected answer {other:?}"),
                }
            }
        }));
    }
    let mut acked = 0;
    for t in tasks {
        acked += t.await.unwrap();
    }
    assert_eq!(
        fault.fired.load(Ordering::SeqCst),
        1,
        "the fault fired once and was never retried"
    );
    // The writer fails every waiter first, then reports; wait for the report
    // the way the server does (bounded).
    let mut fatal = node.fatal();
    let wait = async { fatal.wait_for(Option::is_some).await.is_ok() };
    let reported = tokio::time::timeout(std::time::Duration::from_secs(10), wait).await;
    assert_eq!(reported, Ok(true), "the node reports the log failure");
    // Every later call fails at once.
    let cmd = Command::Adjust {
        id,
        delta: Delta::new(1).unwrap(),
        if_match: None,
        note: countiq::domain::Note::NONE,
    };
    let later = node.registry().write(&owner, cmd, None).await;
    assert_eq!(later, Err(CallError::Unavailable));
    drop(node); // releases the data dir lock

    let node = Node::open(common::node_config(dir.path()), Box::new(SystemClock))
        .await
        .unwrap();
    let item = node.registry().get(&owner, id).await.unwrap().value;
    let qty = item.expect("the item exists").qty.get();
    let unknown = TASKS as u64;
    assert!(
        (acked..=acked + unknown).contains(&qty),
        "{op:?} #{nth} errno {errno}: recovered qty {qty}, acknowledged {acked}, unknown ≤ {unknown}"
    );
    node.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_error_stops_acknowledging_and_recovers() {
    run(FaultOp::Write, 20, libc::EIO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_error_stops_acknowledging_and_recovers() {
    run(FaultOp::Sync, 20, libc::EIO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_stops_acknowledging_and_recovers() {
    run(FaultOp::Write, 20, libc::ENOSPC).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_preparation_error_stops_acknowledging_and_recovers() {
    run(FaultOp::Prepare, 2, libc::ENOSPC).await;
}
