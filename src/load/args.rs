//! The `countiq load` command line: every knob of the load generator, with
//! its default and its limit. Validation lives here so the rest of the module
//! can assume sane values.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};

/// More virtual clients than this would only measure the client itself.
pub(crate) const CONNECTIONS_MAX: u32 = 4096;
/// Owners created by the `uniform` scenario (one item each, one POST each).
pub(crate) const OWNERS_MAX: u32 = 100_000;
/// Items on the hot owner (`hot-owner`, `mixed`, `transactions`).
pub(crate) const ITEMS_MAX: u32 = 10_000;
/// The API accepts 1–1000 ops per transaction.
pub(crate) const BATCH_MAX: u32 = 1000;
/// One run never lasts longer than this.
pub(crate) const DURATION_MAX: Duration = Duration::from_secs(3600);
/// Per-request timeout bounds.
pub(crate) const TIMEOUT_MAX: Duration = Duration::from_secs(120);
/// The largest quantity or delta every JSON client represents exactly (2^53 − 1).
pub(crate) const JSON_INT_MAX: i64 = (1 << 53) - 1;
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
}

impl Scenario {
    /// The name used on the command line and in reports.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Scenario::HotOwner => "hot-owner",
            Scenario::Uniform => "uniform",
            Scenario::Mixed => "mixed",
            Scenario::Transactions => "transactions",
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
}

impl LoadArgs {
    /// Rejects values outside the named limits, with a message naming the flag.
    pub(crate) fn validate(&self) -> Result<()> {
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
        if self.duration.is_zero() || self.duration > DURATION_MAX {
            bail!(
                "--duration must be in (0, {}]",
                humantime::format_duration(DURATION_MAX)
            );
        }
        if self.timeout.is_zero() || self.timeout > TIMEOUT_MAX {
            bail!(
                "--timeout must be in (0, {}]",
                humantime::format_duration(TIMEOUT_MAX)
            );
        }
        if self.requests == Some(0) {
            bail!("--requests must be at least 1");
        }
        if let Some(rate) = self.rate {
            if !(rate.is_finite() && rate > 0.0 && rate <= RATE_MAX) {
                bail!("--rate must be in (0, {RATE_MAX}]");
            }
        }
        Ok(())
    }
}

fn check_range(flag: &str, value: i64, min: i64, max: i64) -> Result<()> {
    if value < min || value > max {
        bail!("{flag} must be in [{min}, {max}], got {value}");
    }
    Ok(())
}
