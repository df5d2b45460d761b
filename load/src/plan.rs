//! What one run does: the owners with their tokens, the items created for
//! them, and the choice of the next operation for each scenario. Shared
//! read-only by every virtual client.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method};
use rand::Rng;
use serde_json::json;

use crate::args::Scenario;
use crate::history::{Req, TxnOp};

/// `mixed`: percentage of PATCH requests; the next `MIXED_GET_PCT` are GETs,
/// the rest POST /items.
const MIXED_PATCH_PCT: u32 = 70;
const MIXED_GET_PCT: u32 = 20;

/// One owner namespace used by the run.
pub(crate) struct OwnerPlan {
    /// The owner id (the token's `sub`), as the history names it.
    pub name: String,
    /// `Bearer <jwt>` for this owner.
    pub token: HeaderValue,
}

/// One item the run created and will check.
#[derive(Clone)]
pub(crate) struct ItemPlan {
    /// Server-assigned id (validated to be path-safe).
    pub id: String,
    /// Index into `Plan::owners`.
    pub owner: usize,
    /// The name it was created with (a PUT must repeat it).
    pub name: String,
}

/// What one virtual client remembers between its requests (the scenarios
/// that read, then act on what they read).
#[derive(Debug, Default, Clone)]
pub(crate) struct ClientMemory {
    /// The item of this client's previous request.
    pub last_item: usize,
    /// The version this client last saw of `last_item`.
    pub last_version: Option<u64>,
}

/// The immutable description of a run, shared by all clients. Cloning is
/// cheap until `items` is filled (setup clones the plan it created them with).
#[derive(Clone)]
pub(crate) struct Plan {
    pub scenario: Scenario,
    pub owners: Arc<[OwnerPlan]>,
    pub items: Vec<ItemPlan>,
    pub delta_min: i64,
    pub delta_max: i64,
    /// Ops per transaction.
    pub batch: u32,
    pub start_qty: i64,
    /// Makes names unique per run (owners, items, created items).
    pub run_id: String,
}

/// One request a virtual client makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    /// PATCH /items/{id}/qty.
    Patch { item: usize, delta: i64 },
    /// GET /items/{id}.
    Get { item: usize },
    /// POST /items with a fresh name (mixed only; not checked).
    Create { name: String },
    /// POST /transactions with `(item, delta)` ops.
    Txn { ops: Vec<(usize, i64)> },
    /// PUT /items/{id} (same name, new qty), with `If-Match` when known.
    Put {
        item: usize,
        qty: i64,
        if_match: Option<u64>,
    },
}

impl Op {
    /// Whether the op can change a checked item.
    pub fn mutates_checked_items(&self) -> bool {
        matches!(self, Op::Patch { .. } | Op::Txn { .. } | Op::Put { .. })
    }

    /// Whether the op may carry an `Idempotency-Key`.
    pub fn is_write(&self) -> bool {
        !matches!(self, Op::Get { .. })
    }

    /// Net delta per checked item, for the unknown-outcome range. A
    /// transaction is atomic, so it counts once per item with its net sum.
    pub fn net_deltas(&self) -> Vec<(usize, i128)> {
        match self {
            Op::Patch { item, delta } => vec![(*item, i128::from(*delta))],
            Op::Txn { ops } => {
                let mut net: Vec<(usize, i128)> = Vec::new();
                for &(item, delta) in ops {
                    match net.iter_mut().find(|(i, _)| *i == item) {
                        Some(entry) => entry.1 += i128::from(delta),
                        None => net.push((item, i128::from(delta))),
                    }
                }
                net
            }
            Op::Get { .. } | Op::Create { .. } | Op::Put { .. } => Vec::new(),
        }
    }
}

impl Plan {
    /// Picks the next op for a client; `seq` numbers the client's requests
    /// (used for unique names).
    pub fn next_op(&self, rng: &mut impl Rng, worker: u32, seq: u64, memory: &ClientMemory) -> Op {
        let even = seq % 2 == 0;
        match self.scenario {
            Scenario::HotOwner | Scenario::Uniform | Scenario::IdempotentRetries => self.patch(rng),
            // Write, then read the same item back on the same connection.
            Scenario::ReadYourWrites if even => self.patch(rng),
            Scenario::ReadYourWrites => Op::Get {
                item: memory.last_item,
            },
            // Read, then replace conditionally on the version read.
            Scenario::ContendedPut if even => Op::Get {
                item: self.any_item(rng),
            },
            Scenario::ContendedPut => Op::Put {
                item: memory.last_item,
                qty: rng.random_range(0..=self.start_qty),
                if_match: memory.last_version,
            },
            // Every client's n-th request creates the same name.
            Scenario::RacingCreates => Op::Create {
                name: format!("cq-{}-race-{seq}", self.run_id),
            },
            Scenario::Mixed => match rng.random_range(0..100) {
                p if p < MIXED_PATCH_PCT => self.patch(rng),
                p if p < MIXED_PATCH_PCT + MIXED_GET_PCT => Op::Get {
                    item: self.any_item(rng),
                },
                _ => Op::Create {
                    name: format!("cq-{}-w{worker}-n{seq}", self.run_id),
                },
            },
            Scenario::Transactions => Op::Txn {
                ops: (0..self.batch)
                    .map(|_| (self.any_item(rng), self.delta(rng)))
                    .collect(),
            },
        }
    }

    fn patch(&self, rng: &mut impl Rng) -> Op {
        Op::Patch {
            item: self.any_item(rng),
            delta: self.delta(rng),
        }
    }

    fn any_item(&self, rng: &mut impl Rng) -> usize {
        rng.random_range(0..self.items.len())
    }

    fn delta(&self, rng: &mut impl Rng) -> i64 {
        rng.random_range(self.delta_min..=self.delta_max)
    }

    /// The op as the history records it (server ids), with its owner index.
    pub fn to_req(&self, op: &Op) -> (Req, usize) {
        let item = |i: usize| self.items[i].id.clone();
        match op {
            Op::Patch { item: i, delta } => (
                Req::Patch {
                    item: item(*i),
                    delta: *delta,
                    if_match: None,
                },
                self.items[*i].owner,
            ),
            Op::Get { item: i } => (Req::Get { item: item(*i) }, self.items[*i].owner),
            Op::Create { name } => (
                Req::Create {
                    name: name.clone(),
                    qty: 0,
                },
                0,
            ),
            Op::Put {
                item: i,
                qty,
                if_match,
            } => (
                Req::Put {
                    item: item(*i),
                    name: self.items[*i].name.clone(),
                    qty: *qty,
                    if_match: *if_match,
                },
                self.items[*i].owner,
            ),
            Op::Txn { ops } => (
                Req::Txn {
                    ops: ops
                        .iter()
                        .map(|(i, delta)| TxnOp {
                            item: item(*i),
                            delta: *delta,
                        })
                        .collect(),
                },
                ops.first().map_or(0, |(i, _)| self.items[*i].owner),
            ),
        }
    }
}

/// Method, API path, JSON body and `If-Match` version of a recorded request
/// (used to replay it, with its idempotency key, when its outcome was unknown).
pub(crate) fn encode_req(req: &Req) -> (Method, String, Option<Bytes>, Option<u64>) {
    let body = |v: serde_json::Value| Some(Bytes::from(v.to_string()));
    match req {
        Req::Create { name, qty } => (
            Method::POST,
            "/items".into(),
            body(json!({ "name": name, "qty": qty })),
            None,
        ),
        Req::Get { item } => (Method::GET, format!("/items/{item}"), None, None),
        Req::Put {
            item,
            name,
            qty,
            if_match,
        } => (
            Method::PUT,
            format!("/items/{item}"),
            body(json!({ "name": name, "qty": qty })),
            *if_match,
        ),
        Req::Patch {
            item,
            delta,
            if_match,
        } => (
            Method::PATCH,
            format!("/items/{item}/qty"),
            body(json!({ "delta": delta })),
            *if_match,
        ),
        Req::Txn { ops } => {
            let ops: Vec<_> = ops
                .iter()
                .map(|o| json!({ "item": o.item, "delta": o.delta }))
                .collect();
            (
                Method::POST,
                "/transactions".into(),
                body(json!({ "ops": ops })),
                None,
            )
        }
    }
}

#[cfg(test)]
impl Plan {
    /// A one-owner plan over items with these ids: deltas in -2..=3,
    /// transactions of 5 ops, start quantity 10.
    pub(crate) fn for_tests(scenario: Scenario, ids: &[&str]) -> Plan {
        let token = HeaderValue::from_static("Bearer t");
        let item = |id: &&str| ItemPlan {
            id: id.to_string(),
            owner: 0,
            name: format!("name-{id}"),
        };
        Plan {
            scenario,
            owners: vec![OwnerPlan {
                name: "o".into(),
                token,
            }]
            .into(),
            items: ids.iter().map(item).collect(),
            delta_min: -2,
            delta_max: 3,
            batch: 5,
            start_qty: 10,
            run_id: "r".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    //! Goal: ops follow the scenario and encode to the API's shapes; method:
    //! a seeded RNG over a small plan.
    use super::*;
    use rand::SeedableRng;

    fn plan(scenario: Scenario) -> Plan {
        Plan::for_tests(scenario, &["a", "b"])
    }

    #[test]
    fn mixed_ratios_are_roughly_70_20_10() {
        let p = plan(Scenario::Mixed);
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        let (mut patch, mut get, mut create) = (0, 0, 0);
        for seq in 0..10_000 {
            match p.next_op(&mut rng, 0, seq, &ClientMemory::default()) {
                Op::Patch { delta, .. } => {
                    assert!((-2..=3).contains(&delta));
                    patch += 1;
                }
                Op::Get { .. } => get += 1,
                Op::Create { .. } => create += 1,
                Op::Txn { .. } | Op::Put { .. } => panic!("no transactions or PUTs in mixed"),
            }
        }
        assert!((6_700..7_300).contains(&patch), "patch {patch}");
        assert!((1_700..2_300).contains(&get), "get {get}");
        assert!((700..1_300).contains(&create), "create {create}");
    }

    #[test]
    fn transaction_has_batch_ops_and_net_deltas() {
        let p = plan(Scenario::Transactions);
        let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
        let op = p.next_op(&mut rng, 0, 0, &ClientMemory::default());
        let Op::Txn { ops } = &op else {
            panic!("expected a transaction")
        };
        assert_eq!(ops.len(), 5);
        let net_total: i128 = op.net_deltas().iter().map(|(_, d)| d).sum();
        assert_eq!(
            net_total,
            ops.iter().map(|(_, d)| i128::from(*d)).sum::<i128>()
        );
        let (method, path, body, _) = encode_req(&p.to_req(&op).0);
        assert_eq!(method, Method::POST);
        assert_eq!(path, "/transactions");
        let v: serde_json::Value = serde_json::from_slice(&body.expect("body")).expect("json");
        assert_eq!(v["ops"].as_array().map(Vec::len), Some(5));
    }

    #[test]
    fn patch_encodes_delta_body() {
        let p = plan(Scenario::HotOwner);
        let (req, owner) = p.to_req(&Op::Patch { item: 1, delta: -1 });
        let (method, path, body, _) = encode_req(&req);
        assert_eq!(
            (method, path.as_str(), owner),
            (Method::PATCH, "/items/b/qty", 0)
        );
        assert_eq!(body.as_deref(), Some(&b"{\"delta\":-1}"[..]));
    }
}
