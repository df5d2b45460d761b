//! `--sweep-connections LIST`: the chosen scenario once per connection
//! count, and the curve (req/s and latency against connections).
//!
//! Each point is a complete run of its own (`crate::run` with
//! `--connections` set to the count): its own items, created with the same
//! `--items`/`--owners`/`--start-qty`, for `--duration`, with its own
//! final-quantity check and, with `--check`, its own linearizability
//! verdict. So no point's check depends on another's, and each point's
//! JSON is exactly a single run's report. Every point is validated before
//! the first request of the first point is sent.

use std::io::{self, Write};

use serde::Serialize;

use crate::args::LoadArgs;
use crate::error::LoadError;
use crate::report::{write_human, LoadReport};

/// The curve: one report per connection count, in the order given.
#[derive(Debug, Clone, Serialize)]
pub struct SweepReport {
    pub scenario: String,
    pub url: String,
    /// "closed" or "open".
    pub mode: String,
    /// `--duration` of each point, in seconds.
    pub duration_s: f64,
    /// The connection counts, as given.
    pub connections: Vec<u32>,
    /// Whether `--check` (the linearizability check) ran on every point.
    pub history_checked: bool,
    /// One single-run report per count (`connections` is the count).
    pub points: Vec<LoadReport>,
}

impl SweepReport {
    /// Whether every point's checks passed (the exit code follows this).
    pub fn ok(&self) -> bool {
        self.points.iter().all(LoadReport::ok)
    }
}

/// Refuses what a sweep cannot do, naming the flag: it needs a list, and
/// its points would overwrite one `--history` or `--report` file.
pub(crate) fn validate(args: &LoadArgs) -> Result<Vec<LoadArgs>, LoadError> {
    let Some(list) = &args.sweep_connections else {
        return Err(LoadError::Flag {
            flag: "--sweep-connections",
            expected: "given for a sweep".into(),
        });
    };
    if args.history.is_some() {
        return Err(LoadError::Conflict {
            flag: "--history",
            with: "--sweep-connections",
            why: "every point would write the same file; record single runs instead",
        });
    }
    if args.report.is_some() {
        return Err(LoadError::Conflict {
            flag: "--report",
            with: "--sweep-connections",
            why: "the HTML report describes one run; the sweep prints its curve as a \
                  table or --json, and a single run with --connections N gives the page",
        });
    }
    let points: Vec<LoadArgs> = list
        .counts()
        .iter()
        .map(|&n| LoadArgs {
            connections: n,
            sweep_connections: None,
            ..args.clone()
        })
        .collect();
    for point in &points {
        point.validate()?;
    }
    Ok(points)
}

/// Runs the sweep `args.sweep_connections` describes; see the module doc.
/// A setup failure of any point ends the sweep with that error.
pub async fn sweep(args: LoadArgs) -> Result<SweepReport, LoadError> {
    let points_args = validate(&args)?;
    let mut points = Vec::with_capacity(points_args.len());
    for point in points_args {
        points.push(crate::run(point).await?);
    }
    Ok(SweepReport {
        scenario: args.scenario.name().to_string(),
        url: args.url.clone(),
        mode: if args.rate.is_some() {
            "open"
        } else {
            "closed"
        }
        .to_string(),
        duration_s: args.duration.as_secs_f64(),
        connections: points.iter().map(|p| p.connections).collect(),
        history_checked: args.check,
        points,
    })
}

/// Writes the curve for a person: one row per point, then the full report
/// of every point whose check failed.
pub fn write_sweep_human(out: &mut impl Write, s: &SweepReport) -> io::Result<()> {
    writeln!(
        out,
        "countiq load sweep: {} | {} loop | {} s per point | {}",
        s.scenario, s.mode, s.duration_s, s.url
    )?;
    // With --check the verdict covers both checks; without it only the
    // final-quantity check (which always runs).
    let check = if s.history_checked {
        "check"
    } else {
        "qty check"
    };
    writeln!(
        out,
        "{:>11} {:>11} {:>9} {:>9} {:>9} {:>8}  {check}",
        "connections", "req/s", "p50 µs", "p90 µs", "p99 µs", "errors"
    )?;
    for p in &s.points {
        let l = &p.latency_us;
        let verdict = if p.ok() { "pass" } else { "FAIL" };
        writeln!(
            out,
            "{:>11} {:>11.0} {:>9} {:>9} {:>9} {:>8}  {verdict}",
            p.connections, p.requests_per_s, l.p50, l.p90, l.p99, p.errors
        )?;
    }
    for p in s.points.iter().filter(|p| !p.ok()) {
        writeln!(out)?;
        writeln!(
            out,
            "point with {} connections failed its check:",
            p.connections
        )?;
        write_human(out, p)?;
    }
    Ok(())
}
