//! The measured phase: one task per virtual client, closed or open loop,
//! plus the once-a-second progress line. Every loop ends at the deadline or
//! when the shared request budget (`--requests`) runs out.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::args::Scenario;
use crate::client::{Client, Failure, Reply};
use crate::history::{self, Attempt, Record, Recorder, HISTORY_RECORDS_MAX};
use crate::pacing::{corrected_latency, intended_offset, wait_until, Wait};
use crate::plan::{ClientMemory, Op, Plan};
use crate::stats::Stats;
use crate::target::Target;

/// Pause after a failed connect, so a dead server is not hammered in a spin.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);
/// Progress line period; the first line comes after `PROGRESS_FIRST`, so
/// runs of a few seconds stay quiet.
const PROGRESS_PERIOD: Duration = Duration::from_secs(1);
const PROGRESS_FIRST: Duration = Duration::from_secs(3);
/// idempotent-retries: retries of one request after no reply (same key).
const RETRIES_MAX: u32 = 3;
/// Requests a recording run sends at most: half the record bound, so that
/// retries and resolving replays fit too.
const RECORDED_REQUESTS_MAX: u64 = HISTORY_RECORDS_MAX as u64 / 2;

/// How requests are paced.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Pacing {
    /// Next request as soon as the previous reply arrives.
    Closed,
    /// Fixed schedule at this total rate (requests/s).
    Open { rate: f64 },
}

/// Run-wide settings shared by every client.
pub(crate) struct Drive {
    pub plan: Arc<Plan>,
    pub target: Target,
    pub timeout: Duration,
    pub connections: u32,
    pub duration: Duration,
    pub pacing: Pacing,
    /// `--requests`: total budget, or None for unbounded (time still bounds).
    pub requests: Option<u64>,
    pub progress: bool,
    pub wait: Wait,
    /// The run's clock; records every request when on.
    pub recorder: Arc<Recorder>,
    /// idempotent-retries: the injected timeout and how often (percent).
    pub inject_timeout: Duration,
    pub inject_timeout_pct: u32,
}

/// Counters the progress line reads while clients run.
struct Progress {
    replies: AtomicU64,
    failures: AtomicU64,
    /// Latency so far (µs), for the progress line's p99.
    latency_us: Mutex<Histogram<u64>>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            replies: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            // Constant, valid bounds: 1 µs to 10 min, 2 digits.
            latency_us: Mutex::new(
                Histogram::new_with_bounds(1, 600_000_000, 2).expect("valid histogram bounds"),
            ),
        }
    }
}

/// State shared by the clients of one run.
struct Shared {
    drive: Drive,
    start: Instant,
    deadline: Instant,
    budget: Option<AtomicU64>,
    progress: Progress,
}

impl Shared {
    /// Takes one request from the budget; false when it is exhausted.
    fn claim(&self) -> bool {
        match &self.budget {
            None => true,
            Some(left) => left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok(),
        }
    }
}

/// Runs the measured phase; returns the merged stats, the elapsed time and
/// the records (empty unless recording).
pub(crate) async fn drive(drive: Drive) -> (Stats, Duration, Vec<Record>) {
    let start = Instant::now();
    let items = drive.plan.items.len();
    let budget = match (drive.requests, drive.recorder.on) {
        (Some(n), true) => Some(n.min(RECORDED_REQUESTS_MAX)),
        (None, true) => Some(RECORDED_REQUESTS_MAX),
        (n, false) => n,
    };
    let shared = Arc::new(Shared {
        deadline: start + drive.duration,
        budget: budget.map(AtomicU64::new),
        start,
        progress: Progress::default(),
        drive,
    });
    let progress = shared
        .drive
        .progress
        .then(|| tokio::spawn(progress_loop(shared.clone())));
    let handles: Vec<_> = (0..shared.drive.connections)
        .map(|w| tokio::spawn(client_loop(shared.clone(), w)))
        .collect();
    let mut total = Stats::new(items);
    let mut records = Vec::new();
    for handle in handles {
        let (stats, mine) = join(handle).await;
        total.merge(stats);
        records.extend(mine);
    }
    let elapsed = start.elapsed();
    if let Some(p) = progress {
        p.abort();
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            // End the `\r`-rewritten line.
            eprintln!();
        }
    }
    (total, elapsed, records)
}

/// Waits for a task this tool spawned and never aborts, so the only way it
/// can fail is a panic, a bug in this tool: surface it here.
pub(crate) async fn join<T>(task: JoinHandle<T>) -> T {
    match task.await {
        Ok(value) => value,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

async fn client_loop(shared: Arc<Shared>, worker: u32) -> (Stats, Vec<Record>) {
    let d = &shared.drive;
    let mut client = Client::new(d.target.clone(), d.timeout);
    let mut rng = SmallRng::from_rng(&mut rand::rng());
    let mut stats = Stats::new(d.plan.items.len());
    let mut records = Vec::new();
    let mut memory = ClientMemory::default();
    let retries = d.plan.scenario == Scenario::IdempotentRetries;
    for seq in 0u64.. {
        let scheduled = match d.pacing {
            Pacing::Closed => None,
            Pacing::Open { rate } => {
                Some(shared.start + intended_offset(worker, d.connections, rate, seq))
            }
        };
        let now = Instant::now();
        if now >= shared.deadline
            || scheduled.is_some_and(|t| t >= shared.deadline)
            || !shared.claim()
        {
            break;
        }
        if let Some(t) = scheduled {
            wait_until(t, d.wait).await;
        }
        let op = d.plan.next_op(&mut rng, worker, seq, &memory);
        let keyed = op.is_write() && (d.recorder.on || retries);
        let key = keyed.then(|| format!("cq-{}-c{worker}-{seq}", d.plan.run_id));
        let injected = retries && rng.random_range(0..100) < d.inject_timeout_pct;
        let timeout = if injected {
            d.inject_timeout
        } else {
            d.timeout
        };
        let (req, owner) = d.plan.to_req(&op);
        let owner = &d.plan.owners[owner];
        let attempt = |timeout| Attempt {
            client: worker,
            owner: &owner.name,
            token: &owner.token,
            req: &req,
            key: key.clone(),
            timeout,
            resolves: None,
            intended: scheduled,
        };
        let (mut outcome, sent, mut done, record) =
            d.recorder.send(&mut client, attempt(timeout)).await;
        records.extend(record);
        let mut tries = 0;
        while retries && tries < RETRIES_MAX && outcome.as_ref().is_err_and(|f| f.outcome_unknown())
        {
            tries += 1;
            let again = d.recorder.send(&mut client, attempt(d.timeout)).await;
            (outcome, done) = (again.0, again.2);
            records.extend(again.3);
        }
        let latency = match scheduled {
            None => done - sent,
            Some(t) => corrected_latency(t - shared.start, done - shared.start),
        };
        remember(&mut memory, &op, &outcome);
        let connect_failed = matches!(outcome, Err(Failure::Connect));
        let counter = if outcome.is_ok() {
            &shared.progress.replies
        } else {
            &shared.progress.failures
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if d.progress && outcome.is_ok() {
            let us = u64::try_from(latency.as_micros())
                .unwrap_or(u64::MAX)
                .max(1);
            if let Ok(mut h) = shared.progress.latency_us.lock() {
                h.saturating_record(us);
            }
        }
        stats.record(&d.plan, &op, outcome, latency);
        if connect_failed {
            tokio::time::sleep(
                RECONNECT_PAUSE.min(shared.deadline.saturating_duration_since(done)),
            )
            .await;
        }
    }
    (stats, records)
}

/// What a client keeps for its next request: the item it touched and the
/// version the reply showed (a 412 shows the current one).
fn remember(memory: &mut ClientMemory, op: &Op, outcome: &Result<Reply, Failure>) {
    let item = match op {
        Op::Patch { item, .. } | Op::Get { item } | Op::Put { item, .. } => *item,
        Op::Create { .. } | Op::Txn { .. } => return,
    };
    memory.last_item = item;
    memory.last_version = outcome.as_ref().ok().and_then(|r| {
        let reply = history::reply_from(r.status, &r.body, None, false);
        reply
            .items
            .first()
            .map(|s| s.version)
            .or(reply.current_version)
    });
}

/// Replays, with its idempotency key, every operation whose outcome is
/// still unknown: a stored outcome comes back as it was (`Idempotent-Replayed`),
/// an operation that never reached the state machine is applied now. Either
/// way the history learns how it ended. Bounded by `RESOLVE_OPS_MAX`
/// operations and `RESOLVE_ATTEMPTS_MAX` attempts each.
pub(crate) async fn resolve_unknowns(
    plan: &Plan,
    target: &Target,
    timeout: Duration,
    recorder: &Recorder,
    records: &[Record],
) -> Vec<Record> {
    const RESOLVE_OPS_MAX: usize = 100_000;
    const RESOLVE_ATTEMPTS_MAX: u32 = 3;
    let mut answered = std::collections::HashSet::new();
    for r in records {
        if let (Some(key), Some(_)) = (&r.key, r.reply()) {
            answered.insert((r.owner.as_str(), key.as_str()));
        }
    }
    let mut pending: Vec<&Record> = records
        .iter()
        .filter(|r| r.reply().is_none())
        .filter(|r| {
            r.key
                .as_ref()
                .is_some_and(|k| !answered.contains(&(r.owner.as_str(), k.as_str())))
        })
        .collect();
    pending.dedup_by_key(|r| (r.owner.clone(), r.key.clone()));
    pending.truncate(RESOLVE_OPS_MAX);
    let mut client = Client::new(target.clone(), timeout);
    let mut out = Vec::new();
    for unknown in pending {
        let Some(owner) = plan.owners.iter().find(|o| o.name == unknown.owner) else {
            continue;
        };
        for _ in 0..RESOLVE_ATTEMPTS_MAX {
            let attempt = Attempt {
                client: history::CLIENT_RESOLVE,
                owner: &owner.name,
                token: &owner.token,
                req: &unknown.request,
                key: unknown.key.clone(),
                timeout,
                resolves: Some(unknown.id),
                intended: None,
            };
            let (result, _, _, record) = recorder.send(&mut client, attempt).await;
            out.extend(record);
            if result.is_ok_and(|r| r.status != 503) {
                break;
            }
        }
    }
    out
}

async fn progress_loop(shared: Arc<Shared>) {
    let mut ticker = tokio::time::interval_at(shared.start + PROGRESS_FIRST, PROGRESS_PERIOD);
    let mut last = 0u64;
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    loop {
        ticker.tick().await;
        let replies = shared.progress.replies.load(Ordering::Relaxed);
        let failures = shared.progress.failures.load(Ordering::Relaxed);
        let p99 = shared
            .progress
            .latency_us
            .lock()
            .map_or(0, |h| h.value_at_quantile(0.99));
        let line = format!(
            "[{:>4.0}s] {:>9} req/s  requests {:>10}  errors {:>6}  p99 {:>7} µs",
            shared.start.elapsed().as_secs_f64(),
            replies - last,
            replies + failures,
            failures,
            p99
        );
        last = replies;
        let mut err = std::io::stderr().lock();
        // Progress is best effort: a closed stderr must not stop the run.
        let _ = if terminal {
            write!(err, "\r{line}")
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
    }
}
