//! Metrics: the Prometheus recorder, the table of every metric family, and
//! the sampler that turns registry state into gauges.
//!
//! Code everywhere records through the `metrics` facade (`counter!`,
//! `histogram!`, `gauge!`); this module installs the one process-wide
//! recorder, registers every family in [`FAMILIES`] at 0 (so a fresh node
//! already exports what dashboards and `absent()` alerts look for), and
//! renders it for `GET /metrics`. README "Metrics" lists the same families
//! (a test holds the two equal). The per-request histogram's labels live
//! with the HTTP layer (`http::request_metrics`).

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::actor::registry::Registry;

/// Owners reported individually by mailbox depth: the top few, so the
/// label set stays bounded however many owners exist.
pub const TOP_OWNERS_REPORTED: usize = 5;
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Latency buckets in seconds: 50 µs … 10 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];
/// Records per WAL batch.
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0, 16384.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Install the recorder (once per process) and return its handle.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("countiq_wal_batch_records".into()),
                    BATCH_BUCKETS,
                )
            })
            .expect("bucket lists are non-empty")
            .build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder is installed (e.g. a test that set
        // its own); the handle then renders nothing, which is harmless.
        if metrics::set_global_recorder(recorder).is_ok() {
            register_families();
        }
        handle
    })
}

/// What a family is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Which series of a family exist from start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Series {
    /// One series without labels.
    One,
    /// One series per value of one label.
    Label(&'static str, &'static [&'static str]),
    /// Registered by the HTTP layer (`http::request_metrics::register`):
    /// each route's success series.
    HttpLayer,
}

/// A metric family: name, kind, help text, and its series at start.
#[derive(Debug, Clone, Copy)]
pub struct Family {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    pub series: Series,
}

const fn family(name: &'static str, kind: Kind, help: &'static str, series: Series) -> Family {
    Family {
        name,
        kind,
        help,
        series,
    }
}

/// Every metric family the node exports, with its help text and the series
/// created at 0 on start-up.
pub const FAMILIES: &[Family] = &[
    family(
        "countiq_http_request_duration_seconds",
        Kind::Histogram,
        "Request latency by route template, method and status; its _count is the request counter.",
        Series::HttpLayer,
    ),
    family(
        "countiq_http_requests_shed_total",
        Kind::Counter,
        "Requests refused by the in-flight bound (503 overloaded).",
        Series::One,
    ),
    family(
        "countiq_http_connections_refused_total",
        Kind::Counter,
        "Connections closed by the connection bound.",
        Series::One,
    ),
    family(
        "countiq_owners",
        Kind::Gauge,
        "Owners known to this node.",
        Series::One,
    ),
    family(
        "countiq_actors_active",
        Kind::Gauge,
        "Owners with a running actor.",
        Series::One,
    ),
    family(
        "countiq_actors_parked",
        Kind::Gauge,
        "Owners whose idle actor was parked.",
        Series::One,
    ),
    family(
        "countiq_actor_activations_total",
        Kind::Counter,
        "Actors started (including re-activations of parked owners).",
        Series::One,
    ),
    family(
        "countiq_actor_parks_total",
        Kind::Counter,
        "Idle actors parked.",
        Series::One,
    ),
    family(
        "countiq_mailbox_depth_max",
        Kind::Gauge,
        "The deepest owner mailbox.",
        Series::One,
    ),
    family(
        "countiq_mailbox_depth_top",
        Kind::Gauge,
        "The deepest mailboxes, by rank (1 = deepest).",
        Series::Label("rank", &["1", "2", "3", "4", "5"]),
    ),
    family(
        "countiq_wal_batch_records",
        Kind::Histogram,
        "Records per group commit.",
        Series::One,
    ),
    family(
        "countiq_wal_batches_led_total",
        Kind::Counter,
        "Batches written by a leading owner actor on its own thread (the rest by the WAL writer thread).",
        Series::One,
    ),
    family(
        "countiq_wal_fsync_seconds",
        Kind::Histogram,
        "fdatasync latency.",
        Series::One,
    ),
    family(
        "countiq_wal_bytes_written_total",
        Kind::Counter,
        "Bytes written to the log.",
        Series::One,
    ),
    family(
        "countiq_wal_records_total",
        Kind::Counter,
        "Records written to the log.",
        Series::One,
    ),
    family(
        "countiq_wal_segments_created_total",
        Kind::Counter,
        "Log segments created.",
        Series::One,
    ),
    family(
        "countiq_wal_segment_wait_seconds",
        Kind::Histogram,
        "How long a segment roll waited for the prepared segment.",
        Series::One,
    ),
    family(
        "countiq_snapshot_seconds",
        Kind::Histogram,
        "Snapshot duration.",
        Series::One,
    ),
    family(
        "countiq_snapshot_owner_pause_seconds",
        Kind::Histogram,
        "How long an owner paused to copy its state for a snapshot.",
        Series::One,
    ),
    family(
        "countiq_recovery_seconds",
        Kind::Histogram,
        "Time to recover at start.",
        Series::One,
    ),
    family(
        "countiq_idempotency_hits_total",
        Kind::Counter,
        "Keyed requests answered from a stored key (replays).",
        Series::One,
    ),
    family(
        "countiq_idempotency_misses_total",
        Kind::Counter,
        "Keyed requests with a new key.",
        Series::One,
    ),
    family(
        "countiq_idempotency_reuse_conflicts_total",
        Kind::Counter,
        "Keys reused for a different request (422).",
        Series::One,
    ),
    family(
        "countiq_idempotency_expired_total",
        Kind::Counter,
        "Keys dropped at expiry.",
        Series::One,
    ),
    family(
        "countiq_jwks_fetches_total",
        Kind::Counter,
        "Identity-provider key set fetches, by outcome (ok, failed).",
        Series::Label("outcome", &["ok", "failed"]),
    ),
    family(
        "countiq_jwks_keys",
        Kind::Gauge,
        "Usable keys in the current identity-provider key set.",
        Series::One,
    ),
];

/// The mailbox ranks listed in `FAMILIES` are 1..=`TOP_OWNERS_REPORTED`.
const _: () = assert!(TOP_OWNERS_REPORTED == 5);

/// Describe every family and create its series at 0 (a histogram without
/// samples: count 0).
fn register_families() {
    for f in FAMILIES {
        match f.kind {
            Kind::Counter => metrics::describe_counter!(f.name, f.help),
            Kind::Gauge => metrics::describe_gauge!(f.name, f.help),
            Kind::Histogram => metrics::describe_histogram!(f.name, f.help),
        }
        match f.series {
            Series::One => zero(f.kind, f.name, &[]),
            Series::Label(label, values) => {
                for &value in values {
                    zero(f.kind, f.name, &[(label, value)]);
                }
            }
            Series::HttpLayer => {}
        }
    }
}

/// Create one series at 0.
fn zero(kind: Kind, name: &'static str, labels: &[(&'static str, &'static str)]) {
    match kind {
        Kind::Counter => metrics::counter!(name, labels).absolute(0),
        Kind::Gauge => metrics::gauge!(name, labels).set(0.0),
        Kind::Histogram => drop(metrics::histogram!(name, labels)),
    }
}

/// Fold the raw samples every histogram has buffered into its buckets.
/// The recorder keeps each recorded value until a scrape or this call, so
/// without it a node nobody scrapes grows by 8 bytes per sample, several
/// per request (~1 MB/s at 60k requests/s). The sampler calls it every
/// second.
pub fn drain_histograms() {
    install().run_upkeep();
}

/// The Prometheus text exposition.
pub fn render() -> String {
    install().render()
}

/// Sample the registry once a second until `stop` turns true.
pub async fn sample_registry(reg: Registry, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(SAMPLE_EVERY) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        drain_histograms();
        let stats = reg.stats(TOP_OWNERS_REPORTED);
        metrics::gauge!("countiq_owners").set(stats.owners as f64);
        metrics::gauge!("countiq_actors_active").set(stats.active as f64);
        metrics::gauge!("countiq_actors_parked").set((stats.owners - stats.active) as f64);
        let max = stats.top.first().map_or(0, |(_, d)| *d);
        metrics::gauge!("countiq_mailbox_depth_max").set(max as f64);
        for rank in 0..TOP_OWNERS_REPORTED {
            let depth = stats.top.get(rank).map_or(0, |(_, d)| *d);
            metrics::gauge!("countiq_mailbox_depth_top", "rank" => (rank + 1).to_string())
                .set(depth as f64);
        }
    }
}
