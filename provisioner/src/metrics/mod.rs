//! Prometheus metrics: `GET /metrics` on the `--metrics` listener (off by
//! default).
//!
//! Two kinds of numbers, kept apart:
//! - **Events** counted where they happen (heartbeats, enrollments, config
//!   pulls, boot events, run results, request latencies): the hot path
//!   pays an atomic add or a histogram push, and nothing at all while no
//!   `--metrics` listener is configured ([`enabled`] is a relaxed load).
//! - **State** read from the store at scrape time ([`snapshot`]): appliances
//!   by state, heartbeat and backup ages, store sizes; computed at most
//!   once per [`snapshot::CACHE_FOR`] whatever the number of scrapers.
//!
//! Why `metrics` + `metrics-exporter-prometheus` rather than
//! `prometheus-client`: the latter writes OpenMetrics only, whose counters
//! (`# TYPE x counter` over `x_total` samples) Debian 12's `promtool check
//! metrics` rejects ("no help text"); this exporter writes the classic
//! text format (0.0.4) that every Prometheus and promtool reads, keeps
//! counters as atomics, and is maintained with the `metrics` facade.

mod snapshot;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use snapshot::{Snapshot, CACHE_FOR};

use crate::store::Store;

/// Set once the recorder is installed: until then every count is skipped.
static ENABLED: AtomicBool = AtomicBool::new(false);
static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Whether metrics are being collected (a `--metrics` listener exists).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

const REQUEST_SECONDS: &str = "levee_http_request_duration_seconds";
const REQUESTS: &str = "levee_http_requests_total";
const HEARTBEATS: &str = "levee_heartbeats_total";
const ENROLLMENTS: &str = "levee_enrollments_total";
const CONFIG_PULLS: &str = "levee_config_pulls_total";
const BOOT_EVENTS: &str = "levee_boot_events_total";
const RUNS: &str = "levee_runs_total";

/// Installs the process-wide recorder (once; later calls return the same
/// handle) and describes every event metric.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    // From a cached config pull (sub-millisecond) to a slow database.
    let buckets = [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(REQUEST_SECONDS.into()), &buckets)?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)
        .map_err(|e| anyhow::anyhow!("cannot install the metrics recorder: {e}"))?;
    use metrics::{describe_counter, describe_histogram, Unit};
    describe_histogram!(
        REQUEST_SECONDS,
        Unit::Seconds,
        "Time to answer an HTTP request, by listener (http, https) and route."
    );
    describe_counter!(
        REQUESTS,
        "HTTP requests answered, by listener, route and status class."
    );
    describe_counter!(HEARTBEATS, "Heartbeats accepted from enrolled appliances.");
    describe_counter!(
        ENROLLMENTS,
        "Enrollment requests by outcome: issued (a certificate), pending (waiting for approval), refused."
    );
    describe_counter!(
        CONFIG_PULLS,
        "Configuration pulls by outcome: served (a body), not_modified (ETag matched), refused."
    );
    describe_counter!(
        BOOT_EVENTS,
        "Boot events recorded in machines' histories, by stage (dhcp, script, script-refused, no-token, report)."
    );
    describe_counter!(
        RUNS,
        "Run reports received (resends not counted), by kind and result."
    );
    let _ = HANDLE.set(handle.clone());
    ENABLED.store(true, Ordering::Relaxed);
    Ok(handle)
}

/// A heartbeat was accepted.
pub fn heartbeat() {
    if enabled() {
        metrics::counter!(HEARTBEATS).increment(1);
    }
}

/// An enrollment request ended: `issued`, `pending` or `refused`.
pub fn enrollment(outcome: &'static str) {
    if enabled() {
        metrics::counter!(ENROLLMENTS, "result" => outcome).increment(1);
    }
}

/// A configuration pull ended: `served`, `not_modified` or `refused`.
pub fn config_pull(outcome: &'static str) {
    if enabled() {
        metrics::counter!(CONFIG_PULLS, "result" => outcome).increment(1);
    }
}

/// A boot event was recorded. `stage` is one of the server's own step
/// names, never text from the network (that would let a client create
/// series without bound).
pub fn boot_event(stage: &'static str) {
    if enabled() {
        metrics::counter!(BOOT_EVENTS, "stage" => stage).increment(1);
    }
}

/// A new run report was stored.
pub fn run(kind: &'static str, result: &'static str) {
    if enabled() {
        metrics::counter!(RUNS, "kind" => kind, "result" => result).increment(1);
    }
}

/// Middleware for a listener's router: the latency and status class of
/// every request, by matched route (a path template such as
/// `/boot/{file}`, so MACs do not become series).
pub async fn track(State(listener): State<&'static str>, req: Request, next: Next) -> Response {
    if !enabled() {
        return next.run(req).await;
    }
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let start = Instant::now();
    let resp = next.run(req).await;
    let class = match resp.status().as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    metrics::histogram!(REQUEST_SECONDS, "listener" => listener, "route" => route.clone())
        .record(start.elapsed().as_secs_f64());
    metrics::counter!(REQUESTS, "listener" => listener, "route" => route, "status" => class)
        .increment(1);
    resp
}

/// What the `/metrics` handler needs.
#[derive(Clone)]
struct MetricsState {
    handle: PrometheusHandle,
    snapshot: Arc<Snapshot>,
}

/// Serves `GET /metrics` on `listener` until `stop` (plain HTTP, under the
/// same caps and timeouts as the other listeners). Installs the recorder
/// and drains histogram samples every few seconds, so memory stays flat
/// however rarely Prometheus scrapes.
pub async fn serve(
    listener: TcpListener,
    store: Arc<dyn Store>,
    data_dir: std::path::PathBuf,
    limits: crate::listen::Limits,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let handle = install()?;
    let addr: SocketAddr = listener.local_addr()?;
    info!(listen = %addr, "metrics listening (GET /metrics)");
    let upkeep = {
        let (handle, stop) = (handle.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => handle.run_upkeep(),
                }
            }
        })
    };
    let state = MetricsState {
        handle,
        snapshot: Arc::new(Snapshot::new(store, data_dir)),
    };
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(state);
    let served = crate::listen::serve_plain(listener, app, limits, stop).await;
    upkeep.abort();
    Ok(served?)
}

/// `GET /metrics`: the event metrics, then the store's state.
async fn scrape(State(st): State<MetricsState>) -> Response {
    let snapshot = st.snapshot.clone();
    let state = match tokio::task::spawn_blocking(move || snapshot.render()).await {
        Ok(Ok(text)) => text,
        Ok(Err(e)) => {
            warn!(error = %e, "metrics: cannot read the store");
            return (e.http_status(), format!("cannot read the store: {e}\n")).into_response();
        }
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    let mut body = st.handle.render();
    body.push_str(&state);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}
