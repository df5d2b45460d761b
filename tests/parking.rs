//! Idle-owner parking under load.
//!
//! Goal: a message sent while an owner's actor is parking is never lost and
//! never handled twice, and the state survives any number of park /
//! re-activate cycles. Method: the real node (no HTTP) with an idle timeout
//! of 1 ms, so actors park constantly; 32 tasks send +1 deltas to one item
//! with random gaps of 0–2 ms (long enough for the actor to park between
//! some of them). Every call must be answered, and the final qty must equal
//! the number of acknowledged deltas exactly; the version chain must have
//! no gaps or repeats. A metric-independent check that parking really
//! happened: the item's owner is found parked at the end.

use std::collections::BTreeSet;
use std::time::Duration;

use countiq::actor::{ActorConfig, Answer, Request, SystemClock};
use countiq::domain::{Command, Delta, ItemName, Outcome, OwnerId, Qty};
use countiq::node::{Node, NodeConfig};
use rand::Rng;

const TASKS: usize = 32;
const DELTAS_PER_TASK: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_racing_a_parking_actor_are_never_lost() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = NodeConfig::new(dir.path());
    config.actor = ActorConfig {
        idle_after: Some(Duration::from_millis(1)),
        ..ActorConfig::default()
    };
    config.snapshot_interval = None;
    let node = Node::open(config, Box::new(SystemClock)).await.unwrap();
    let owner = OwnerId::new("parky").unwrap();
    let create = Command::Create {
        name: ItemName::new("milk").unwrap(),
        qty: Qty::ZERO,
    };
    let id = match node
        .registry()
        .call(
            &owner,
            Request::Write {
                cmd: create,
                key: None,
            },
        )
        .await
    {
        Ok(Answer::Done {
            result: Ok(Outcome::Created(item)),
            ..
        }) => item.id,
        other => panic!("{other:?}"),
    };
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (node, owner) = (node.clone(), owner.clone());
        tasks.push(tokio::spawn(async move {
            let mut versions = Vec::new();
            for _ in 0..DELTAS_PER_TASK {
                let gap = rand::rng().random_range(0..=2);
                tokio::time::sleep(Duration::from_millis(gap)).await;
                let cmd = Command::Adjust {
                    id,
                    delta: Delta::new(1).unwrap(),
                    if_match: None,
                };
                match node
                    .registry()
                    .call(&owner, Request::Write { cmd, key: None })
                    .await
                {
                    Ok(Answer::Done {
                        result: Ok(Outcome::Updated(item)),
                        ..
                    }) => versions.push(item.version),
                    other => panic!("every call must be answered: {other:?}"),
                }
            }
            versions
        }));
    }
    let mut versions = BTreeSet::new();
    for t in tasks {
        for v in t.await.unwrap() {
            assert!(
                versions.insert(v),
                "version {v} handed out twice: a message was handled twice"
            );
        }
    }
    let acked = (TASKS * DELTAS_PER_TASK) as u64;
    let expected: BTreeSet<u64> = (2..=acked + 1).collect();
    assert_eq!(versions, expected, "versions form one gap-free chain");
    match node.registry().call(&owner, Request::Get(id)).await {
        Ok(Answer::Found(Some(item))) => assert_eq!(item.qty.get(), acked),
        other => panic!("{other:?}"),
    }
    // After the last call the actor parks again within ~1 ms.
    let mut parked = false;
    for _ in 0..1000 {
        if node.registry().stats(1).active == 0 {
            parked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(parked, "an idle owner parks");
    node.shutdown().await.unwrap();
}
