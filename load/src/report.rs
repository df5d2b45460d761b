//! The result of a run: a serialisable `LoadReport` (for `--json`) built from
//! the merged stats and the final reads, and its human rendering.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::check::tally::{judge, ItemVerdict};
use crate::check::{write_verdict, Verdict};
use crate::plan::Plan;
use crate::stats::Stats;

/// Item verdicts listed in a report; beyond this only the counts are kept,
/// so a `uniform` run over many owners stays readable.
const VERDICTS_LISTED_MAX: usize = 20;

/// Latency percentiles in µs (from an HDR histogram, 3 significant digits).
#[derive(Debug, Clone, Serialize)]
pub struct LatencyUs {
    pub count: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

/// The correctness verdict.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// True when every condition below holds.
    pub passed: bool,
    pub items_checked: usize,
    pub items_failed: usize,
    /// Items whose final GET failed (counted in `items_failed` too).
    pub items_unread: usize,
    /// Requests without a reply that may have been applied.
    pub unknown_outcomes: u64,
    pub negative_qty_seen: u64,
    pub version_regressions: u64,
    pub malformed_replies: u64,
    /// Failed items first, then others, up to a bound.
    pub items: Vec<ItemVerdict>,
    /// A few example anomaly messages.
    pub anomaly_samples: Vec<String>,
}

/// Everything `countiq load` measured and checked.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub scenario: String,
    pub url: String,
    pub connections: u32,
    /// "closed" or "open".
    pub mode: String,
    /// Open loop: the target rate (requests/s).
    pub target_rate: Option<f64>,
    pub elapsed_s: f64,
    /// Requests that got an HTTP reply (any status).
    pub replies: u64,
    pub requests_per_s: f64,
    /// Deltas in acknowledged PATCHes and transactions.
    pub deltas_acked: u64,
    pub deltas_per_s: f64,
    /// Coordinated-omission corrected in open loop.
    pub latency_us: LatencyUs,
    pub by_status: BTreeMap<u16, u64>,
    pub by_error_code: BTreeMap<String, u64>,
    /// Requests without a reply: connect, timeout, io.
    pub no_reply: BTreeMap<String, u64>,
    /// 400 `qty_below_zero`: legitimate refusals, not acknowledged.
    pub refused_qty_below_zero: u64,
    /// 503 `overloaded`.
    pub overloaded: u64,
    /// Requests that failed: a 5xx reply or no reply at all (4xx answers
    /// such as `qty_below_zero` or 412 are the API working, not errors).
    pub errors: u64,
    pub check: CheckReport,
    /// `--check`: the linearizability verdict on the recorded history.
    pub history_check: Option<Verdict>,
    /// The command line as run.
    pub command: String,
    /// `GET /healthz`'s `version`, when the server states one.
    pub server_version: Option<String>,
    /// Per second (recorded runs: `--history`, `--check`, `--report`):
    /// replies and latency, the figures of the report's plots.
    pub timeline: Vec<crate::html::Second>,
}

impl LoadReport {
    /// Whether the correctness check passed (the process exit code follows this).
    pub fn ok(&self) -> bool {
        self.check.passed && self.history_check.as_ref().is_none_or(|v| v.linearizable)
    }
}

/// Facts about the run that are not in the stats.
pub(crate) struct RunFacts {
    pub url: String,
    pub connections: u32,
    pub target_rate: Option<f64>,
    pub elapsed: Duration,
    pub command: String,
    pub server_version: Option<String>,
}

/// Builds the report from the merged stats and the final quantities.
pub(crate) fn build(
    facts: RunFacts,
    plan: &Plan,
    stats: Stats,
    finals: &[Option<i128>],
    history_check: Option<Verdict>,
) -> LoadReport {
    let secs = facts.elapsed.as_secs_f64().max(f64::EPSILON);
    let code = |c: &str| stats.by_error_code.get(c).copied().unwrap_or(0);
    LoadReport {
        scenario: plan.scenario.name().to_string(),
        url: facts.url,
        connections: facts.connections,
        mode: if facts.target_rate.is_some() {
            "open"
        } else {
            "closed"
        }
        .to_string(),
        target_rate: facts.target_rate,
        elapsed_s: secs,
        replies: stats.replies,
        requests_per_s: stats.replies as f64 / secs,
        deltas_acked: stats.deltas_acked,
        deltas_per_s: stats.deltas_acked as f64 / secs,
        latency_us: latency(&stats.latency_us),
        refused_qty_below_zero: code("qty_below_zero"),
        overloaded: code("overloaded"),
        errors: stats.by_failure.values().sum::<u64>()
            + stats
                .by_status
                .iter()
                .filter(|(s, _)| **s >= 500)
                .map(|(_, n)| n)
                .sum::<u64>(),
        by_status: stats.by_status.clone(),
        by_error_code: stats.by_error_code.clone(),
        no_reply: stats
            .by_failure
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect(),
        check: check(plan, &stats, finals),
        history_check,
        command: facts.command,
        server_version: facts.server_version,
        timeline: Vec::new(),
    }
}

fn latency(h: &Histogram<u64>) -> LatencyUs {
    LatencyUs {
        count: h.len(),
        mean: h.mean(),
        p50: h.value_at_quantile(0.50),
        p90: h.value_at_quantile(0.90),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
        max: h.max(),
    }
}

fn check(plan: &Plan, stats: &Stats, finals: &[Option<i128>]) -> CheckReport {
    let start = i128::from(plan.start_qty);
    let mut verdicts: Vec<ItemVerdict> = plan
        .items
        .iter()
        .zip(&stats.tallies)
        .zip(finals)
        .map(|((item, tally), final_qty)| judge(&item.id, start, tally, *final_qty))
        .collect();
    let items_failed = verdicts.iter().filter(|v| !v.ok).count();
    let items_unread = verdicts.iter().filter(|v| v.final_qty.is_none()).count();
    // Failed items first (stable), then truncate.
    verdicts.sort_by_key(|v| v.ok);
    verdicts.truncate(VERDICTS_LISTED_MAX);
    let passed = items_failed == 0
        && !plan.items.is_empty()
        && stats.negative_qty_seen == 0
        && stats.version_regressions == 0
        && stats.malformed_replies == 0;
    CheckReport {
        passed,
        items_checked: plan.items.len(),
        items_failed,
        items_unread,
        unknown_outcomes: stats.unknown_outcomes,
        negative_qty_seen: stats.negative_qty_seen,
        version_regressions: stats.version_regressions,
        malformed_replies: stats.malformed_replies,
        items: verdicts,
        anomaly_samples: stats.anomaly_samples.clone(),
    }
}

/// Writes the report for a person (what `countiq load` prints on stdout
/// without `--json`).
pub fn write_human(out: &mut impl Write, r: &LoadReport) -> io::Result<()> {
    let rate = r
        .target_rate
        .map(|t| format!(" at {t:.0} req/s target"))
        .unwrap_or_default();
    writeln!(
        out,
        "countiq load: {} | {} loop{rate} | {} connections | {:.2} s | {}",
        r.scenario, r.mode, r.connections, r.elapsed_s, r.url
    )?;
    writeln!(
        out,
        "  throughput   {:.0} req/s ({} replies)",
        r.requests_per_s, r.replies
    )?;
    writeln!(
        out,
        "  deltas       {:.0} acknowledged deltas/s ({} total)",
        r.deltas_per_s, r.deltas_acked
    )?;
    let l = &r.latency_us;
    let corrected = if r.mode == "open" {
        " (from intended send time)"
    } else {
        ""
    };
    writeln!(
        out,
        "  latency µs   p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  mean {:.0}{corrected}",
        l.p50, l.p90, l.p99, l.p999, l.max, l.mean
    )?;
    let statuses = r.by_status.iter().map(|(k, v)| (k.to_string(), *v));
    writeln!(out, "  status       {}", join_counts(statuses))?;
    for (label, counts) in [("error codes", &r.by_error_code), ("no reply", &r.no_reply)] {
        if !counts.is_empty() {
            let counts = counts.iter().map(|(k, v)| (k.clone(), *v));
            writeln!(out, "  {label:<11}  {}", join_counts(counts))?;
        }
    }
    write_check(out, &r.check)?;
    match &r.history_check {
        Some(v) => write_verdict(out, v),
        None => Ok(()),
    }
}

fn write_check(out: &mut impl Write, c: &CheckReport) -> io::Result<()> {
    let verdict = if c.passed { "PASSED" } else { "FAILED" };
    writeln!(
        out,
        "  check        {verdict}: {}/{} items match start + acknowledged deltas; unknown outcomes: {}; \
         negative qty seen: {}; version regressions: {}; malformed replies: {}",
        c.items_checked - c.items_failed,
        c.items_checked,
        c.unknown_outcomes,
        c.negative_qty_seen,
        c.version_regressions,
        c.malformed_replies
    )?;
    for v in c.items.iter().filter(|v| !v.ok) {
        let got = v
            .final_qty
            .map_or_else(|| "unreadable".to_string(), |q| q.to_string());
        writeln!(
            out,
            "    item {}: final qty {got}, expected {}..={} (start {} + acked {}, {} unknown)",
            v.id, v.expected_min, v.expected_max, v.start_qty, v.acked_delta, v.unknown_outcomes
        )?;
    }
    for s in &c.anomaly_samples {
        writeln!(out, "    anomaly: {s}")?;
    }
    Ok(())
}

fn join_counts(it: impl Iterator<Item = (String, u64)>) -> String {
    it.map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join("  ")
}

#[cfg(test)]
mod tests {
    //! Goal: the verdict and every failed item reach both the JSON and the
    //! text a person reads; method: build reports from hand-made tallies and
    //! final quantities for a two-item plan (start 10), and render them.
    use super::*;
    use crate::args::Scenario;

    /// Item `a` had +5 acknowledged, item `b` nothing; `finals` as read back.
    fn report(finals: &[Option<i128>]) -> LoadReport {
        report_with(finals, Stats::new(2))
    }

    /// As `report`, with other counts in `stats`.
    fn report_with(finals: &[Option<i128>], mut stats: Stats) -> LoadReport {
        let plan = Plan::for_tests(Scenario::HotOwner, &["a", "b"]);
        stats.tallies[0].ack(5);
        let facts = RunFacts {
            url: "http://127.0.0.1:1".into(),
            connections: 1,
            target_rate: None,
            elapsed: Duration::from_secs(1),
            command: "countiq load".into(),
            server_version: None,
        };
        build(facts, &plan, stats, finals, None)
    }

    fn render(r: &LoadReport) -> String {
        let mut out = Vec::new();
        write_human(&mut out, r).expect("write to a Vec");
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn matching_quantities_pass() {
        let r = report(&[Some(15), Some(10)]);
        assert!(r.ok());
        let json = serde_json::to_value(&r).expect("json");
        assert_eq!(json["check"]["passed"], true);
        let text = render(&r);
        assert!(text.contains("check        PASSED: 2/2 items"), "{text}");
        assert!(!text.contains("    item "), "{text}");
    }

    #[test]
    fn a_lost_delta_fails_and_names_the_item() {
        let r = report(&[Some(15), Some(9)]);
        assert!(!r.ok());
        assert_eq!(r.check.items_failed, 1);
        assert_eq!(
            serde_json::to_value(&r).expect("json")["check"]["passed"],
            false
        );
        let text = render(&r);
        assert!(text.contains("check        FAILED: 1/2 items"), "{text}");
        assert!(
            text.contains("item b: final qty 9, expected 10..=10"),
            "{text}"
        );
        assert!(!text.contains("item a:"), "{text}");
    }

    #[test]
    fn an_unread_item_fails() {
        let r = report(&[None, Some(10)]);
        assert!(!r.ok());
        assert_eq!(r.check.items_unread, 1);
        assert!(render(&r).contains("item a: final qty unreadable"));
    }

    #[test]
    fn counts_are_listed_in_their_columns() {
        let stats = || {
            let mut stats = Stats::new(2);
            stats.by_status.insert(200, 7);
            stats.by_error_code.insert("overloaded".into(), 2);
            stats.by_failure.insert("timeout", 1);
            stats
        };
        let r = report_with(&[Some(15), Some(10)], stats());
        assert_eq!(r.errors, 1, "the timeout; no 5xx yet");
        let mut more = stats();
        more.by_status.insert(503, 2);
        more.by_status.insert(409, 4);
        let errors = report_with(&[Some(15), Some(10)], more).errors;
        assert_eq!(errors, 3, "+ the 503s, not the 409s");
        let text = render(&r);
        assert!(text.contains("\n  status       200: 7\n"), "{text}");
        assert!(text.contains("\n  error codes  overloaded: 2\n"), "{text}");
        assert!(text.contains("\n  no reply     timeout: 1\n"), "{text}");
    }
}
