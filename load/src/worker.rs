//! The measured phase: one task per virtual client, closed or open loop,
//! plus the once-a-second progress line. Every loop ends at the deadline or
//! when the shared request budget (`--requests`) runs out.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::SeedableRng;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::client::{Client, Failure};
use crate::pacing::{corrected_latency, intended_offset};
use crate::plan::{Op, Plan};
use crate::stats::Stats;
use crate::target::Target;

/// Pause after a failed connect, so a dead server is not hammered in a spin.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);
/// Progress line period.
const PROGRESS_PERIOD: Duration = Duration::from_secs(1);

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
}

/// Counters the progress line reads while clients run.
#[derive(Default)]
struct Progress {
    replies: AtomicU64,
    failures: AtomicU64,
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

/// Runs the measured phase; returns the merged stats and the elapsed time.
pub(crate) async fn drive(drive: Drive) -> (Stats, Duration) {
    let start = Instant::now();
    let items = drive.plan.items.len();
    let shared = Arc::new(Shared {
        deadline: start + drive.duration,
        budget: drive.requests.map(AtomicU64::new),
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
    for handle in handles {
        total.merge(join(handle).await);
    }
    let elapsed = start.elapsed();
    if let Some(p) = progress {
        p.abort();
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            // End the `\r`-rewritten line.
            eprintln!();
        }
    }
    (total, elapsed)
}

/// Waits for a task this tool spawned and never aborts, so the only way it
/// can fail is a panic, a bug in this tool: surface it here.
pub(crate) async fn join<T>(task: JoinHandle<T>) -> T {
    match task.await {
        Ok(value) => value,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

async fn client_loop(shared: Arc<Shared>, worker: u32) -> Stats {
    let d = &shared.drive;
    let mut client = Client::new(d.target.clone(), d.timeout);
    let mut rng = SmallRng::from_rng(&mut rand::rng());
    let mut stats = Stats::new(d.plan.items.len());
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
            tokio::time::sleep_until(t).await;
        }
        let op = d.plan.next_op(&mut rng, worker, seq);
        let sent = Instant::now();
        let outcome = execute(&mut client, &d.plan, &op).await;
        let done = Instant::now();
        let latency = match scheduled {
            None => done - sent,
            Some(t) => corrected_latency(t - shared.start, done - shared.start),
        };
        let connect_failed = matches!(outcome, Err(Failure::Connect));
        let counter = if outcome.is_ok() {
            &shared.progress.replies
        } else {
            &shared.progress.failures
        };
        counter.fetch_add(1, Ordering::Relaxed);
        stats.record(&d.plan, &op, outcome, latency);
        if connect_failed {
            tokio::time::sleep(
                RECONNECT_PAUSE.min(shared.deadline.saturating_duration_since(done)),
            )
            .await;
        }
    }
    stats
}

async fn execute(
    client: &mut Client,
    plan: &Plan,
    op: &Op,
) -> Result<crate::client::Reply, Failure> {
    let (method, path, owner, body) = plan.encode(op);
    client
        .request(method, &path, &plan.owners[owner].token, body)
        .await
}

async fn progress_loop(shared: Arc<Shared>) {
    let mut ticker = tokio::time::interval_at(shared.start + PROGRESS_PERIOD, PROGRESS_PERIOD);
    let mut last = 0u64;
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    loop {
        ticker.tick().await;
        let replies = shared.progress.replies.load(Ordering::Relaxed);
        let failures = shared.progress.failures.load(Ordering::Relaxed);
        let line = format!(
            "[{:>4.0}s] {:>9} req/s  replies {:>10}  no reply {:>6}",
            shared.start.elapsed().as_secs_f64(),
            replies - last,
            replies,
            failures
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
