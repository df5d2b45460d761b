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
//! - `history`  — the recorded history (`--history`): one JSON line per request.
//! - `check`    — the final-quantity arithmetic (`check::tally`) and the
//!   linearizability check of a history (per item, owner-wide by LSN, names).
//! - `html`     — the self-contained HTML report (`--report`).
//! - `setup`    — creating items before, reading them back after.
//! - `worker`   — the measured phase and the progress line.
//! - `report`   — `LoadReport`, its JSON form and `write_human`.
//! - `sweep`    — `--sweep-connections`: one run per connection count, the curve.

mod args;
pub mod check;
mod client;
pub mod contract;
mod error;
pub mod history;
pub mod html;
mod pacing;
mod plan;
mod report;
mod setup;
mod stats;
mod sweep;
mod target;
mod token;
mod worker;

use std::io::IsTerminal;
use std::sync::Arc;

use rand::Rng;

pub use args::{ConnectionList, LoadArgs, Scenario};
pub use check::tally::ItemVerdict;
pub use check::{check_history, write_verdict, Verdict, Violation};
pub use error::LoadError;
pub use report::{write_human, CheckReport, LatencyUs, LoadReport};
pub use sweep::{sweep, write_sweep_human, SweepReport};
pub use token::{load_secret, mint, TOKEN_TTL};

use plan::{OwnerPlan, Plan};
use setup::ItemSpec;
use worker::{Drive, Pacing};

/// Runs one load test as `args` describe and returns its report. Nothing is
/// printed on stdout (the caller prints the report, as JSON or for a person);
/// the progress line goes to stderr. Errors are setup failures (bad flags,
/// unreachable or non-loopback target, no secret, items not creatable); a
/// failed correctness check is a report whose [`LoadReport::ok`] is false.
///
/// A `--sweep-connections` list is refused here: [`sweep`] runs those.
pub async fn run(args: LoadArgs) -> Result<LoadReport, LoadError> {
    if args.sweep_connections.is_some() {
        return Err(LoadError::Conflict {
            flag: "--sweep-connections",
            with: "a single run",
            why: "countiq_load::sweep runs a sweep",
        });
    }
    args.validate()?;
    let target = target::resolve(&args.url, args.allow_remote).await?;
    let secret = token::load_secret(args.jwt_secret.as_deref(), &args.data_dir)?;
    let run_id = format!("{:016x}", rand::rng().random::<u64>());
    let owners = make_owners(&args, &run_id, &secret)?;
    let specs = Arc::new(item_specs(&args, &run_id));
    let recorder = Arc::new(history::Recorder::new(args.recording()));
    let server_version = setup::server_version(&target, args.timeout).await;
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
    let (items, mut records) = setup::create_items(
        &target,
        args.timeout,
        unfilled.clone(),
        specs,
        recorder.clone(),
    )
    .await?;
    let plan = Arc::new(Plan {
        items,
        ..Plan::clone(&unfilled)
    });

    let (stats, elapsed, measured) = worker::drive(Drive {
        plan: plan.clone(),
        target: target.clone(),
        timeout: args.timeout,
        connections: args.connections,
        duration: args.duration,
        pacing: args
            .rate
            .map_or(Pacing::Closed, |rate| Pacing::Open { rate }),
        requests: args.requests,
        progress: args.progress || (!args.json && std::io::stderr().is_terminal()),
        wait: if args.coarse_pacing {
            pacing::Wait::Coarse
        } else {
            pacing::Wait::Precise
        },
        recorder: recorder.clone(),
        inject_timeout: args.inject_timeout,
        inject_timeout_pct: args.inject_timeout_pct,
    })
    .await;
    records.extend(measured);
    let resolved =
        worker::resolve_unknowns(&plan, &target, args.timeout, &recorder, &records).await;
    records.extend(resolved);
    let (finals, final_reads) =
        setup::read_final(&target, args.timeout, plan.clone(), recorder.clone()).await;
    records.extend(final_reads);
    records.sort_by_key(|r| (r.invoke_ns, r.id));
    if let Some(path) = &args.history {
        history::write(path, &records).map_err(|source| LoadError::History {
            path: path.clone(),
            source,
        })?;
    }
    let verdict = args.check.then(|| check::check_history(&records));
    let facts = report::RunFacts {
        url: args.url.clone(),
        connections: args.connections,
        target_rate: args.rate,
        elapsed,
        command: command_line(),
        server_version,
    };
    let mut report = report::build(facts, &plan, stats, &finals, verdict);
    report.timeline = html::timeline(&records);
    if let Some(path) = &args.report {
        html::write(path, &report, &records).map_err(|source| LoadError::History {
            path: path.clone(),
            source,
        })?;
    }
    Ok(report)
}

/// The command line as run, for the report.
fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}

/// Arguments of `countiq check FILE`.
#[derive(clap::Args, Debug, Clone)]
pub struct CheckArgs {
    /// A history written by `countiq load --history FILE`.
    pub file: std::path::PathBuf,
    /// Print the verdict as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `countiq check FILE`: reads a history, prints the verdict; Ok(true) when
/// linearizable.
pub fn check_file(args: &CheckArgs, out: &mut impl std::io::Write) -> Result<bool, LoadError> {
    let records = history::read(&args.file).map_err(|source| LoadError::History {
        path: args.file.clone(),
        source,
    })?;
    let verdict = check::check_history(&records);
    let written = if args.json {
        serde_json::to_writer_pretty(&mut *out, &verdict)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out))
    } else {
        check::write_verdict(out, &verdict)
    };
    written.map_err(|source| LoadError::History {
        path: args.file.clone(),
        source,
    })?;
    Ok(verdict.linearizable)
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
                name: name.clone(),
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
