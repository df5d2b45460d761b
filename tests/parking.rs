//! Idle-owner parking under load.
//!
//! Goal: a message sent while an owner's actor is parking is never lost and
//! never handled twice, and the state survives any number of park /
//! re-activate cycles. Method: the real node (no HTTP) with an idle timeout
//! of 1 ms, so actors park constantly; 32 tasks send +1 deltas to one item
//! with random gaps of 0–2 ms (so some sends race a park in progress), in
//! 10 rounds; before each round the test waits until the owner has parked,
//! so every round starts by re-activating it (activations ≥ rounds, exact).
//! Every call must be answered, the final qty must equal the number of
//! acknowledged deltas exactly, and the version chain must have no gaps or
//! repeats.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use countiq::actor::{SystemClock, Written};
use countiq::domain::{Command, Delta, Outcome, OwnerId};
use countiq::node::Node;
use rand::Rng;

const ROUNDS: usize = 10;
const TASKS: usize = 32;
const DELTAS_PER_TASK: usize = 10;

/// Wait (bounded) until the owner's actor has parked: a condition, polled.
async fn wait_until_parked(node: &Node) {
    for _ in 0..5000 {
        if node.registry().counts().1 == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("an idle owner must park within 5 s of a 1 ms idle timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_racing_a_parking_actor_are_never_lost() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::node_config(dir.path());
    config.actor.idle_after = Some(Duration::from_millis(1));
    let node = Node::open(config, Box::new(SystemClock)).await.unwrap();
    let owner = OwnerId::new("parky").unwrap();
    let id = common::create_item(&node, &owner, "milk").await;
    let mut versions = BTreeSet::new();
    for round in 0..ROUNDS {
        wait_until_parked(&node).await;
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
                        note: countiq::domain::Note::NONE,
                    };
                    match node.registry().write(&owner, cmd, None).await {
                        Ok(Written::Done {
                            result: Ok(Outcome::Updated(item)),
                            ..
                        }) => versions.push(item.version),
                        other => panic!("every call must be answered: {other:?}"),
                    }
                }
                versions
            }));
        }
        for t in tasks {
            for v in t.await.unwrap() {
                assert!(
                    versions.insert(v),
                    "version {v} handed out twice: a message was handled twice"
                );
            }
        }
        assert!(
            node.registry().activations() > round as u64,
            "each round starts from a parked owner"
        );
    }
    let acked = (ROUNDS * TASKS * DELTAS_PER_TASK) as u64;
    let expected: BTreeSet<u64> = (2..=acked + 1).collect();
    assert_eq!(versions, expected, "versions form one gap-free chain");
    let item = node.registry().get(&owner, id).await.unwrap().value;
    assert_eq!(item.expect("the item exists").qty.get(), acked);
    eprintln!(
        "{} activations of one owner during {acked} deltas",
        node.registry().activations()
    );
    node.shutdown().await.unwrap();
}
