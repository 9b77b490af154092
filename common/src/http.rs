//! The middleware stack every service router gets: a body limit, a request
//! deadline, request tracing and metrics, and JSON answers for unknown routes
//! and methods.

use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::{BoxError, Router};
use tower::ServiceBuilder;
use tower_http::trace::TraceLayer;

use crate::error::HttpError;
use crate::observe::track_requests;

pub const BODY_BYTES_MAX_DEFAULT: usize = 64 * 1024;
pub const REQUEST_TIMEOUT_S_DEFAULT: u64 = 30;

#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub body_bytes_max: usize,
    pub request_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self { body_bytes_max: BODY_BYTES_MAX_DEFAULT, request_timeout: Duration::from_secs(REQUEST_TIMEOUT_S_DEFAULT) }
    }
}

/// Wraps `router` (all of a process's routes, merged) in the shared stack.
pub fn stack(router: Router, limits: HttpLimits) -> Router {
    router
        .fallback(|| async { HttpError::not_found("no such route; see /openapi.json") })
        .method_not_allowed_fallback(|| async {
            HttpError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this route does not take that method")
        })
        .layer(DefaultBodyLimit::max(limits.body_bytes_max))
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(|error: BoxError| async move {
                    if error.is::<tower::timeout::error::Elapsed>() {
                        HttpError::new(StatusCode::SERVICE_UNAVAILABLE, "timeout", "the request took too long; retry")
                    } else {
                        HttpError::internal("middleware error", &error)
                    }
                }))
                .layer(tower::timeout::TimeoutLayer::new(limits.request_timeout)),
        )
        .layer(axum::middleware::from_fn(track_requests))
        .layer(TraceLayer::new_for_http())
}
