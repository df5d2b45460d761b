//! The `countiq load` command line: every knob of the load generator, with
//! its default and its limit. Validation lives here so the rest of the crate
//! can assume sane values.

use std::path::PathBuf;
use std::time::Duration;

use crate::contract::{JSON_INT_MAX, TX_OPS_MAX};
use crate::error::LoadError;

/// More virtual clients than this would only measure the client itself.
pub(crate) const CONNECTIONS_MAX: u32 = 4096;
/// Owners created by the `uniform` scenario (one item each, one POST each).
pub(crate) const OWNERS_MAX: u32 = 100_000;
/// Items on the hot owner (`hot-owner`, `mixed`, `transactions`).
pub(crate) const ITEMS_MAX: u32 = 10_000;
/// The API accepts 1–1000 ops per transaction.
pub(crate) const BATCH_MAX: u32 = TX_OPS_MAX;
/// One run never lasts longer than this.
pub(crate) const DURATION_MAX: Duration = Duration::from_secs(3600);
/// Per-request timeout bounds.
pub(crate) const TIMEOUT_MAX: Duration = Duration::from_secs(120);
/// Open-loop target rate bound (requests per second, all connections together).
pub(crate) const RATE_MAX: f64 = 10_000_000.0;

/// The workload shape.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// All traffic on one owner: PATCH /items/{id}/qty over `--items` items.
    HotOwner,
    /// `--owners` owners with one item each; PATCH spread uniformly.
    Uniform,
    /// Hot owner: 70% PATCH, 20% GET, 10% POST /items.
    Mixed,
    /// Hot owner: POST /transactions with `--batch` ops over `--items` items.
    Transactions,
    /// Hot owner: each client alternates PATCH and a GET of the same item.
    ReadYourWrites,
    /// Hot owner: each client GETs an item, then PUTs it with `If-Match`.
    ContendedPut,
    /// Hot owner: every client's n-th request creates the same name.
    RacingCreates,
    /// Hot owner: keyed PATCHes, `--inject-timeout-pct` of them with the
    /// client timeout `--inject-timeout`, retried with the same key.
    IdempotentRetries,
}

impl Scenario {
    /// The name used on the command line and in reports.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Scenario::HotOwner => "hot-owner",
            Scenario::Uniform => "uniform",
            Scenario::Mixed => "mixed",
            Scenario::Transactions => "transactions",
            Scenario::ReadYourWrites => "read-your-writes",
            Scenario::ContendedPut => "contended-put",
            Scenario::RacingCreates => "racing-creates",
            Scenario::IdempotentRetries => "idempotent-retries",
        }
    }
}

/// Arguments of `countiq load`: drive a running CountIQ server over loopback
/// HTTP/1.1 and check, at the end, that no acknowledged delta was lost.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// Base URL of the server (http only; loopback unless --allow-remote).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,

    /// Workload shape.
    #[arg(long, value_enum, default_value_t = Scenario::HotOwner)]
    pub scenario: Scenario,

    /// Virtual clients, one keep-alive connection each.
    #[arg(long, default_value_t = 64)]
    pub connections: u32,

    /// Run the scenario once per connection count in LIST (comma-separated,
    /// e.g. 1,2,4,8,16,64; each 1-4096, no repeats), each point for
    /// --duration on a set-up of its own, and print the curve.
    #[arg(long, value_name = "LIST", value_parser = ConnectionList::parse, conflicts_with = "connections")]
    pub sweep_connections: Option<ConnectionList>,

    /// How long the measured phase lasts (e.g. 10s, 1m).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,

    /// Stop after this many requests in total (the duration still bounds the run).
    #[arg(long)]
    pub requests: Option<u64>,

    /// Open loop: target requests/s over all connections; latency is measured
    /// from each request's intended send time (coordinated-omission corrected).
    #[arg(long)]
    pub rate: Option<f64>,

    /// Items on the hot owner (hot-owner, mixed, transactions).
    #[arg(long, default_value_t = 1)]
    pub items: u32,

    /// Owners, one item each (uniform).
    #[arg(long, default_value_t = 1000)]
    pub owners: u32,

    /// Ops per POST /transactions (transactions).
    #[arg(long, default_value_t = 100)]
    pub batch: u32,

    /// Smallest random delta (inclusive).
    #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
    pub delta_min: i64,

    /// Largest random delta (inclusive).
    #[arg(long, default_value_t = 1, allow_hyphen_values = true)]
    pub delta_max: i64,

    /// Quantity each item is created with, so random deltas rarely reach 0.
    #[arg(long, default_value_t = 1_000_000)]
    pub start_qty: i64,

    /// HS256 secret (raw bytes of the string); else <data-dir>/jwt.secret.
    #[arg(long, env = "COUNTIQ_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// Server data directory, read only for `jwt.secret`.
    #[arg(long, default_value = "./data")]
    pub data_dir: PathBuf,

    /// Per-request timeout; a request without a reply has an unknown outcome.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,

    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,

    /// Print a progress line every second on stderr even when it is not a terminal.
    #[arg(long)]
    pub progress: bool,

    /// Allow a --url that does not resolve to loopback (127.0.0.0/8, ::1).
    #[arg(long)]
    pub allow_remote: bool,

    /// Record every request as one JSON line in FILE (format: README,
    /// "History"); every write then carries an Idempotency-Key, and unknown
    /// outcomes are resolved at the end by replaying them with their keys.
    #[arg(long, value_name = "FILE")]
    pub history: Option<PathBuf>,

    /// Check the recorded history for linearizability (implies recording;
    /// the exit code is 1 when it fails).
    #[arg(long)]
    pub check: bool,

    /// Write a self-contained HTML report to FILE (implies recording).
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,

    /// idempotent-retries: the short client timeout injected.
    #[arg(long, default_value = "1ms", value_parser = humantime::parse_duration)]
    pub inject_timeout: Duration,

    /// idempotent-retries: percentage of requests sent with --inject-timeout.
    #[arg(long, default_value_t = 20)]
    pub inject_timeout_pct: u32,

    /// Pace the open loop with tokio's timer alone (the old, late pacing;
    /// kept to measure the difference side by side).
    #[arg(long, hide = true)]
    pub coarse_pacing: bool,
}

/// The connection counts of a sweep (`--sweep-connections`): non-empty,
/// each in [1, `CONNECTIONS_MAX`], no count twice, in the order given. Only
/// `parse` makes one, so every value is valid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionList(Vec<u32>);

impl ConnectionList {
    /// Parses `1,2,4,8` (spaces around a count are allowed); the error says
    /// which count is wrong and why.
    pub fn parse(raw: &str) -> Result<ConnectionList, String> {
        if raw.trim().is_empty() {
            return Err("the list is empty (expected counts like 1,2,4,8)".into());
        }
        let mut counts: Vec<u32> = Vec::new();
        for part in raw.split(',') {
            let part = part.trim();
            if part.is_empty() {
                return Err(format!(
                    "empty count in {raw:?} (expected counts like 1,2,4,8)"
                ));
            }
            let n: u32 = part
                .parse()
                .map_err(|_| format!("{part:?} is not a connection count"))?;
            if n == 0 || n > CONNECTIONS_MAX {
                return Err(format!(
                    "each count must be in [1, {CONNECTIONS_MAX}], got {n}"
                ));
            }
            if counts.contains(&n) {
                return Err(format!("{n} appears more than once"));
            }
            counts.push(n);
        }
        Ok(ConnectionList(counts))
    }

    /// The counts, in the order given.
    pub fn counts(&self) -> &[u32] {
        &self.0
    }
}

impl LoadArgs {
    /// Whether the run keeps every request (history, check or report).
    pub(crate) fn recording(&self) -> bool {
        self.history.is_some() || self.check || self.report.is_some()
    }

    /// Rejects values outside the named limits, with a message naming the flag.
    pub(crate) fn validate(&self) -> Result<(), LoadError> {
        check_range(
            "--connections",
            self.connections.into(),
            1,
            CONNECTIONS_MAX.into(),
        )?;
        check_range("--items", self.items.into(), 1, ITEMS_MAX.into())?;
        check_range("--owners", self.owners.into(), 1, OWNERS_MAX.into())?;
        check_range("--batch", self.batch.into(), 1, BATCH_MAX.into())?;
        check_range("--delta-min", self.delta_min, -JSON_INT_MAX, JSON_INT_MAX)?;
        check_range("--delta-max", self.delta_max, self.delta_min, JSON_INT_MAX)?;
        check_range("--start-qty", self.start_qty, 0, JSON_INT_MAX)?;
        check_duration("--duration", self.duration, DURATION_MAX)?;
        check_duration("--timeout", self.timeout, TIMEOUT_MAX)?;
        check_range(
            "--inject-timeout-pct",
            self.inject_timeout_pct.into(),
            0,
            100,
        )?;
        check_duration("--inject-timeout", self.inject_timeout, self.timeout)?;
        if self.requests == Some(0) {
            return Err(flag("--requests", "at least 1".into()));
        }
        if let Some(rate) = self.rate {
            if !(rate.is_finite() && rate > 0.0 && rate <= RATE_MAX) {
                return Err(flag("--rate", format!("in (0, {RATE_MAX}]")));
            }
        }
        Ok(())
    }
}

fn flag(flag: &'static str, expected: String) -> LoadError {
    LoadError::Flag { flag, expected }
}

fn check_range(name: &'static str, value: i64, min: i64, max: i64) -> Result<(), LoadError> {
    if value < min || value > max {
        return Err(flag(name, format!("in [{min}, {max}], got {value}")));
    }
    Ok(())
}

fn check_duration(name: &'static str, value: Duration, max: Duration) -> Result<(), LoadError> {
    if value.is_zero() || value > max {
        let max = humantime::format_duration(max);
        return Err(flag(name, format!("in (0, {max}]")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Goal: every bound refuses the first value outside it, names its flag,
    //! and accepts the bound itself; method: parse real command lines.
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        load: LoadArgs,
    }

    fn parse(extra: &[&str]) -> LoadArgs {
        let argv = std::iter::once("load").chain(extra.iter().copied());
        Cli::try_parse_from(argv).expect("parses").load
    }

    /// The flag named by the validation error, or None when valid.
    fn refused_flag(extra: &[&str]) -> Option<&'static str> {
        match parse(extra).validate() {
            Ok(()) => None,
            Err(LoadError::Flag { flag, .. }) => Some(flag),
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(refused_flag(&[]), None);
    }

    #[test]
    fn each_bound_is_enforced_at_its_edge() {
        let max = JSON_INT_MAX.to_string();
        let over = (JSON_INT_MAX + 1).to_string();
        let (min, under) = (format!("-{max}"), format!("-{over}"));
        let cases: &[(&'static str, &str, &str)] = &[
            ("--connections", "4096", "4097"),
            ("--connections", "1", "0"),
            ("--items", "10000", "10001"),
            ("--owners", "100000", "100001"),
            ("--batch", "1000", "1001"),
            ("--start-qty", &max, &over),
            ("--start-qty", "0", "-1"),
            ("--delta-max", &max, &over),
            ("--delta-min", &min, &under),
            ("--duration", "1h", "3601s"),
            ("--duration", "1ms", "0s"),
            ("--timeout", "120s", "121s"),
            ("--requests", "1", "0"),
            ("--rate", "10000000", "10000001"),
            ("--rate", "0.5", "0"),
            ("--rate", "0.5", "NaN"),
            ("--inject-timeout-pct", "100", "101"),
            ("--inject-timeout", "5s", "6s"),
        ];
        for &(name, edge, beyond) in cases {
            // `--flag=value`, so that negative values parse as values.
            let (edge, beyond) = (format!("{name}={edge}"), format!("{name}={beyond}"));
            assert_eq!(refused_flag(&[&edge]), None, "{edge}");
            assert_eq!(refused_flag(&[&beyond]), Some(name), "{beyond}");
        }
    }

    #[test]
    fn delta_max_below_delta_min_is_refused() {
        let refused = refused_flag(&["--delta-min", "5", "--delta-max", "4"]);
        assert_eq!(refused, Some("--delta-max"));
        assert_eq!(
            refused_flag(&["--delta-min", "5", "--delta-max", "5"]),
            None
        );
    }

    #[test]
    fn a_connection_list_keeps_its_order() {
        let list = ConnectionList::parse("1, 2,4 ,64,16").expect("valid");
        assert_eq!(list.counts(), &[1, 2, 4, 64, 16]);
        assert_eq!(
            ConnectionList::parse("4096").expect("valid").counts(),
            &[4096]
        );
    }

    #[test]
    fn bad_connection_lists_are_refused_with_the_reason() {
        let cases = [
            ("", "empty"),
            ("  ", "empty"),
            ("1,,2", "empty count"),
            ("1,2,", "empty count"),
            ("0", "in [1, 4096], got 0"),
            ("1,4097", "in [1, 4096], got 4097"),
            ("1,2,1", "1 appears more than once"),
            ("1,x", "\"x\" is not a connection count"),
            ("-1", "not a connection count"),
        ];
        for (raw, reason) in cases {
            let err = ConnectionList::parse(raw).expect_err(raw);
            assert!(err.contains(reason), "{raw:?}: {err}");
        }
    }

    #[test]
    fn a_sweep_is_parsed_from_the_command_line_and_excludes_connections() {
        let args = parse(&["--sweep-connections", "1,2,4"]);
        let list = args.sweep_connections.expect("given");
        assert_eq!(list.counts(), &[1, 2, 4]);
        let argv = ["load", "--sweep-connections", "1,1"];
        assert!(Cli::try_parse_from(argv).is_err(), "duplicate refused");
        let argv = ["load", "--sweep-connections", "1,2", "--connections", "8"];
        assert!(
            Cli::try_parse_from(argv).is_err(),
            "conflicts with --connections"
        );
    }

    #[test]
    fn the_message_names_flag_and_bound() {
        let err = parse(&["--connections", "0"])
            .validate()
            .expect_err("refused");
        assert_eq!(err.to_string(), "--connections must be in [1, 4096], got 0");
    }
}
