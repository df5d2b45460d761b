//! Metrics: the Prometheus recorder, the per-request middleware, and the
//! sampler that turns registry state into gauges.
//!
//! Code everywhere records through the `metrics` facade (`counter!`,
//! `histogram!`, `gauge!`); this module installs the one process-wide
//! recorder and renders it for `GET /metrics`. Every metric is listed with
//! its meaning in README "Metrics".

use std::sync::OnceLock;
use std::time::Duration;

use axum::extract::MatchedPath;
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

/// Every route template the router serves (the OpenAPI sync test checks
/// the document against this list). Static strings: a label costs no
/// allocation.
pub const ROUTES: &[&str] = &[
    "/items",
    "/items/{id}",
    "/items/{id}/qty",
    "/transactions",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
];

/// Route labels: the templates, then `unmatched` (no route: 404/405) and
/// `other` (a template missing from `ROUTES`, which the OpenAPI test
/// would catch).
const ROUTE_LABELS: [&str; ROUTE_COUNT] = {
    let mut labels = ["unmatched"; ROUTE_COUNT];
    let mut i = 0;
    while i < ROUTES.len() {
        labels[i] = ROUTES[i];
        i += 1;
    }
    labels[ROUTE_COUNT - 1] = "other";
    labels
};

fn route_index(path: Option<&MatchedPath>) -> usize {
    let Some(path) = path else {
        return ROUTE_COUNT - 2; // "unmatched"
    };
    ROUTES
        .iter()
        .position(|r| *r == path.as_str())
        .unwrap_or(ROUTE_COUNT - 1)
}

const METHODS: &[&str] = &[
    "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "other",
];

fn method_index(method: &axum::http::Method) -> usize {
    use axum::http::Method;
    match *method {
        Method::GET => 0,
        Method::POST => 1,
        Method::PUT => 2,
        Method::PATCH => 3,
        Method::DELETE => 4,
        Method::HEAD => 5,
        Method::OPTIONS => 6,
        _ => 7,
    }
}

const STATUSES: &[(u16, &str)] = &[
    (200, "200"),
    (201, "201"),
    (204, "204"),
    (400, "400"),
    (401, "401"),
    (404, "404"),
    (405, "405"),
    (408, "408"),
    (409, "409"),
    (412, "412"),
    (413, "413"),
    (415, "415"),
    (422, "422"),
    (429, "429"),
    (500, "500"),
    (503, "503"),
    (0, "other"),
];

fn status_index(status: axum::http::StatusCode) -> usize {
    STATUSES[..STATUSES.len() - 1]
        .iter()
        .position(|(c, _)| *c == status.as_u16())
        .unwrap_or(STATUSES.len() - 1)
}

const ROUTE_COUNT: usize = 8 + 2;
const METHOD_COUNT: usize = 8;
const STATUS_COUNT: usize = 17;
const _: () = assert!(
    ROUTES.len() + 2 == ROUTE_COUNT
        && METHODS.len() == METHOD_COUNT
        && STATUSES.len() == STATUS_COUNT
);

/// One histogram handle per label combination, registered on first use.
/// `metrics::histogram!` with labels builds a label vector and looks the
/// key up in the recorder's registry on every call; at tens of thousands
/// of requests per second that was a measurable share of the hot path.
static REQUEST_HISTOGRAMS: [OnceLock<metrics::Histogram>;
    ROUTE_COUNT * METHOD_COUNT * STATUS_COUNT] =
    [const { OnceLock::new() }; ROUTE_COUNT * METHOD_COUNT * STATUS_COUNT];

fn request_histogram(route: usize, method: usize, status: usize) -> &'static metrics::Histogram {
    REQUEST_HISTOGRAMS[(route * METHOD_COUNT + method) * STATUS_COUNT + status].get_or_init(|| {
        let labels = [
            ("route", ROUTE_LABELS[route]),
            ("method", METHODS[method]),
            ("status", STATUSES[status].1),
        ];
        metrics::histogram!("countiq_http_request_duration_seconds", &labels)
    })
}

/// A request's metric labels, as indices into the static label tables:
/// computed once before the handler runs, recorded once after. Labels are
/// static strings and the histogram handles are cached, so recording
/// allocates nothing and looks nothing up.
#[derive(Clone, Copy)]
pub struct RequestLabels {
    route: usize,
    method: usize,
}

impl RequestLabels {
    pub fn of(path: Option<&MatchedPath>, method: &axum::http::Method) -> Self {
        RequestLabels {
            route: route_index(path),
            method: method_index(method),
        }
    }

    /// The route template, `unmatched` or `other`.
    pub fn route(&self) -> &'static str {
        ROUTE_LABELS[self.route]
    }

    /// One histogram: its `_count` series is the request counter.
    pub fn record(&self, status: axum::http::StatusCode, elapsed: Duration) {
        request_histogram(self.route, self.method, status_index(status))
            .record(elapsed.as_secs_f64());
    }
}

/// Sample the registry once a second until `stop` turns true.
pub async fn sample_registry(reg: Registry, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(SAMPLE_EVERY) => {}
            _ = crate::server::stop_requested(&mut stop) => return,
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
