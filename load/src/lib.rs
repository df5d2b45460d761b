//! # `countiq load` — the load generator and end-to-end correctness check
//!
//! Drives a running CountIQ server over loopback HTTP/1.1 with one keep-alive
//! connection per virtual client, measures throughput and latency, and at the
//! end proves that no acknowledged delta was lost: every item's final `qty`
//! must equal its start quantity plus the deltas whose 200 reply arrived
//! (within the range explained by requests that got no reply).
//!
//! It exists so that CountIQ's performance claims come with a correctness
//! check attached, measured the same way as the peers in `bench/`.
//!
//! It is a client of the HTTP contract only: it does not depend on the
//! `countiq` package (whose binary runs it as `countiq load`), mints its own
//! tokens, and states the contract's bounds it relies on in `contract`.
//! The entry point is [`run`]; it prints nothing on stdout and returns a
//! [`LoadReport`], which [`write_human`] renders and serde serialises.
//!
//! # Layout
//!
//! - `args`     — `LoadArgs` (clap), scenarios, limits and validation.
//! - `contract` — the API's bounds this crate relies on (owner ids, secret, ops).
//! - `error`    — `LoadError`, the setup failures.
//! - `target`   — `--url` parsing; refuses non-loopback targets.
//! - `token`    — the HS256 secret and the per-owner JWTs.
//! - `client`   — one hyper 1 HTTP/1.1 connection per virtual client.
//! - `plan`     — owners, items, and the next op for each scenario.
//! - `pacing`   — open-loop schedule and coordinated-omission correction.
//! - `stats`    — per-client counts, histogram, and check tallies.
//! - `check`    — the final-quantity arithmetic, including unknown outcomes.
//! - `setup`    — creating items before, reading them back after.
//! - `worker`   — the measured phase and the progress line.
//! - `report`   — `LoadReport`, its JSON form and `write_human`.

mod args;
pub mod check;
mod client;
pub mod contract;
mod error;
pub mod history;
mod pacing;
mod plan;
mod report;
mod setup;
mod stats;
mod target;
mod token;
mod worker;

use std::io::IsTerminal;
use std::sync::Arc;

use rand::Rng;

pub use args::{LoadArgs, Scenario};
pub use check::tally::ItemVerdict;
pub use check::{check_history, write_verdict, Verdict, Violation};
pub use error::LoadError;
pub use report::{write_human, CheckReport, LatencyUs, LoadReport};
pub use token::{load_secret, mint, TOKEN_TTL};

use plan::{OwnerPlan, Plan};
use setup::ItemSpec;
use worker::{Drive, Pacing};

/// Runs one load test as `args` describe and returns its report. Nothing is
/// printed on stdout (the caller prints the report, as JSON or for a person);
/// the progress line goes to stderr. Errors are setup failures (bad flags,
/// unreachable or non-loopback target, no secret, items not creatable); a
/// failed correctness check is a report whose [`LoadReport::ok`] is false.
pub async fn run(args: LoadArgs) -> Result<LoadReport, LoadError> {
    args.validate()?;
    let target = target::resolve(&args.url, args.allow_remote).await?;
    let secret = token::load_secret(args.jwt_secret.as_deref(), &args.data_dir)?;
    let run_id = format!("{:016x}", rand::rng().random::<u64>());
    let owners = make_owners(&args, &run_id, &secret)?;
    let specs = Arc::new(item_specs(&args, &run_id));
    let unfilled = Arc::new(Plan {
        scenario: args.scenario,
        owners,
        items: Vec::new(),
        delta_min: args.delta_min,
        delta_max: args.delta_max,
        batch: args.batch,
        start_qty: args.start_qty,
        run_id,
    });
    let items = setup::create_items(&target, args.timeout, unfilled.clone(), specs).await?;
    let plan = Arc::new(Plan {
        items,
        ..Plan::clone(&unfilled)
    });

    let (stats, elapsed) = worker::drive(Drive {
        plan: plan.clone(),
        target: target.clone(),
        timeout: args.timeout,
        connections: args.connections,
        duration: args.duration,
        pacing: args
            .rate
            .map_or(Pacing::Closed, |rate| Pacing::Open { rate }),
        requests: args.requests,
        progress: args.progress || std::io::stderr().is_terminal(),
    })
    .await;
    let finals = setup::read_final(&target, args.timeout, plan.clone()).await;
    let facts = report::RunFacts {
        url: args.url.clone(),
        connections: args.connections,
        target_rate: args.rate,
        elapsed,
    };
    Ok(report::build(facts, &plan, stats, &finals))
}

/// One owner for the hot scenarios, `--owners` for `uniform`; each gets a
/// token (owners exist only as token subjects). The names stay well within
/// the contract's owner ids: `cq-` + 16 hex digits + `-o99999` at most.
fn make_owners(
    args: &LoadArgs,
    run_id: &str,
    secret: &[u8],
) -> Result<Arc<[OwnerPlan]>, LoadError> {
    let names: Vec<String> = match args.scenario {
        Scenario::Uniform => (0..args.owners)
            .map(|i| format!("cq-{run_id}-o{i}"))
            .collect(),
        _ => vec![format!("cq-{run_id}-hot")],
    };
    names
        .iter()
        .map(|name| {
            Ok(OwnerPlan {
                token: token::mint(secret, name)?,
            })
        })
        .collect()
}

/// The checked items: `--items` on the hot owner, or one per owner.
fn item_specs(args: &LoadArgs, run_id: &str) -> Vec<ItemSpec> {
    match args.scenario {
        Scenario::Uniform => (0..args.owners as usize)
            .map(|i| ItemSpec {
                owner: i,
                name: format!("cq-{run_id}-item"),
            })
            .collect(),
        _ => (0..args.items)
            .map(|i| ItemSpec {
                owner: 0,
                name: format!("cq-{run_id}-item-{i}"),
            })
            .collect(),
    }
}
