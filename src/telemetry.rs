//! Metrics: the Prometheus recorder, the per-request middleware, and the
//! sampler that turns registry state into gauges.
//!
//! Code everywhere records through the `metrics` facade (`counter!`,
//! `histogram!`, `gauge!`); this module installs the one process-wide
//! recorder and renders it for `GET /metrics`. Every metric is listed with
//! its meaning in README "Metrics".

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
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
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// The Prometheus text exposition.
pub fn render() -> String {
    install().render()
}

/// Middleware: count and time every request by route template and status.
pub async fn track_requests(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    let response = next.run(req).await;
    let route = route.unwrap_or_else(|| "unmatched".into());
    let status = response.status().as_u16().to_string();
    let labels = [("route", route), ("method", method), ("status", status)];
    metrics::counter!("countiq_http_requests_total", &labels).increment(1);
    metrics::histogram!("countiq_http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Sample the registry once a second until `stop` turns true.
pub async fn sample_registry(reg: Registry, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(SAMPLE_EVERY) => {}
            _ = crate::server::stop_requested(&mut stop) => return,
        }
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
