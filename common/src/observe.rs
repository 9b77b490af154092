//! Observability every service exposes: Prometheus metrics for each request
//! (count and latency by route, method and status) and the operational
//! routes `/healthz`, `/readyz`, `/metrics`.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::db::Database;
use crate::error::HttpError;

const LATENCY_BUCKETS_S: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// How often recorded histogram samples are folded into their buckets.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The process-wide Prometheus recorder, installed on first use, with a
/// thread that keeps it: the recorder holds every histogram sample until
/// upkeep folds it into its buckets, so without upkeep a process nobody
/// scrapes would keep every request's latency forever.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), LATENCY_BUCKETS_S)
            .expect("the bucket list is a non-empty constant")
            .install_recorder()
            .expect("nothing else in the process installs a metrics recorder");
        let kept = handle.clone();
        let upkeep = std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_EVERY);
                kept.run_upkeep();
            }
        });
        if let Err(error) = upkeep {
            tracing::error!(%error, "cannot start the metrics upkeep thread; histograms are folded only when scraped");
        }
        handle
    })
}

/// Middleware recording `http_requests_total` and
/// `http_request_duration_seconds` labelled by route template (never the raw
/// path, so ids cannot explode the label set), method and status.
pub async fn track_requests(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().as_str().to_owned();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    let labels = [("route", route), ("method", method), ("status", status)];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels).record(started.elapsed().as_secs_f64());
    response
}

/// `/healthz` (the process is up), `/readyz` (its database answers) and
/// `/metrics` (Prometheus text).
pub fn ops_routes(database: Option<Database>) -> Router {
    prometheus();
    Router::new()
        .route("/healthz", get(live))
        .route("/readyz", get(ready))
        .route("/metrics", get(render_metrics))
        .with_state(database)
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(live, ready, render_metrics), tags((name = "operations", description = "Health and metrics")))]
pub struct OpsDoc;

/// Liveness: the process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "`{\"status\":\"ok\"}`")))]
async fn live() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({"status": "ok"}))
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text format")))]
async fn render_metrics() -> String {
    prometheus().render()
}

/// Readiness: the database answers.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "`{\"status\":\"ready\"}`"), (status = 503, description = "`not_ready`", body = crate::ErrorBody)))]
async fn ready(State(database): State<Option<Database>>) -> Response {
    match database {
        None => axum::Json(serde_json::json!({"status": "ready"})).into_response(),
        Some(database) => match database.ping().await {
            Ok(()) => axum::Json(serde_json::json!({"status": "ready"})).into_response(),
            Err(error) => {
                tracing::warn!(%error, "readiness check: database unreachable");
                HttpError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", "the database is unreachable")
                    .into_response()
            }
        },
    }
}
