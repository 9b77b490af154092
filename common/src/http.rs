//! The middleware stack every service router gets: a body limit, a request
//! deadline, request tracing and metrics, and JSON answers for unknown routes
//! and methods.

use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::error_handling::HandleErrorLayer;
use axum::extract::DefaultBodyLimit;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{BoxError, Router};
use http_body_util::LengthLimitError;
use tower::ServiceBuilder;
use tower_http::trace::TraceLayer;

use crate::error::HttpError;
use crate::observe::track_requests;

pub const BODY_BYTES_MAX_DEFAULT: usize = 64 * 1024;
pub const REQUEST_TIMEOUT_S_DEFAULT: u64 = 30;
pub const BODY_READ_TIMEOUT_S_DEFAULT: u64 = 10;

#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub body_bytes_max: usize,
    /// How long a request's body may take to arrive once its headers have.
    pub body_read_timeout: Duration,
    pub request_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            body_bytes_max: BODY_BYTES_MAX_DEFAULT,
            body_read_timeout: Duration::from_secs(BODY_READ_TIMEOUT_S_DEFAULT),
            request_timeout: Duration::from_secs(REQUEST_TIMEOUT_S_DEFAULT),
        }
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
        .layer(axum::middleware::from_fn(move |request, next| read_body(limits, request, next)))
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

/// Reads a request's whole body before its handler runs, within the body
/// limit and the body read timeout: a client that promises more than it
/// sends gets 408 `body_timeout` instead of holding the request (and its
/// connection) until the request deadline.
async fn read_body(limits: HttpLimits, request: Request, next: Next) -> Response {
    if request.body().size_hint().exact() == Some(0) {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let read = tokio::time::timeout(limits.body_read_timeout, axum::body::to_bytes(body, limits.body_bytes_max));
    match read.await {
        Ok(Ok(bytes)) => next.run(Request::from_parts(parts, Body::from(bytes))).await,
        Ok(Err(error)) if std::error::Error::source(&error).is_some_and(|inner| inner.is::<LengthLimitError>()) => {
            HttpError::payload_too_large(limits.body_bytes_max).into_response()
        }
        Ok(Err(_)) => HttpError::invalid_request("the request's body could not be read").into_response(),
        Err(_) => HttpError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!("the request's body did not arrive within {} s", limits.body_read_timeout.as_secs()),
        )
        .into_response(),
    }
}
