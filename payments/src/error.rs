//! The payments service's request errors (those decided before the ledger)
//! and their one mapping to HTTP. The ledger's own refusals are rendered by
//! [`crate::view::render`] so that they can be stored and replayed.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use courier_common::HttpError;

#[derive(Debug, thiserror::Error)]
pub enum PaymentsError {
    #[error("send an Idempotency-Key header (1 to 255 printable ASCII characters) with every money-moving request")]
    IdempotencyKeyRequired,
    #[error("this Idempotency-Key was used with a different request; use a new key for a new request")]
    IdempotencyKeyReused,
    #[error("a request with this Idempotency-Key is still being processed; retry shortly")]
    IdempotencyKeyInUse,
    #[error("{0}")]
    InvalidAmount(crate::money::AmountError),
    #[error("{0}")]
    CurrencyMismatch(String),
    #[error("{0}")]
    InvalidRequest(String),
    /// Well formed, refused for what it means (422 `invalid_request`).
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    InvalidPhone(courier_accounts::phone::PhoneError),
    #[error("payments are not available in your region")]
    RegionNotSupported,
    #[error("{0}")]
    NotFound(&'static str),
    #[error("the ledger is busy; retry shortly")]
    Overloaded,
    #[error("the ledger is not available right now; retry with the same Idempotency-Key")]
    Unavailable,
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl PaymentsError {
    fn code(&self) -> &'static str {
        match self {
            PaymentsError::IdempotencyKeyRequired => "idempotency_key_required",
            PaymentsError::IdempotencyKeyReused => "idempotency_key_reused",
            PaymentsError::IdempotencyKeyInUse => "idempotency_key_in_use",
            PaymentsError::InvalidAmount(_) => "invalid_amount",
            PaymentsError::CurrencyMismatch(_) => "currency_mismatch",
            PaymentsError::InvalidRequest(_) | PaymentsError::Unprocessable(_) => "invalid_request",
            PaymentsError::InvalidPhone(_) => "invalid_phone",
            PaymentsError::RegionNotSupported => "region_not_supported",
            PaymentsError::NotFound(_) => "not_found",
            PaymentsError::Overloaded => "overloaded",
            PaymentsError::Unavailable => "ledger_unavailable",
            PaymentsError::Database(_) => "internal",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            PaymentsError::InvalidAmount(error) if error.is_malformed() => StatusCode::BAD_REQUEST,
            PaymentsError::InvalidPhone(error) if error.is_malformed() => StatusCode::BAD_REQUEST,
            PaymentsError::IdempotencyKeyRequired | PaymentsError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            // Of the documented form, refused for what it means.
            PaymentsError::InvalidAmount(_)
            | PaymentsError::InvalidPhone(_)
            | PaymentsError::Unprocessable(_)
            | PaymentsError::IdempotencyKeyReused
            | PaymentsError::CurrencyMismatch(_) => StatusCode::UNPROCESSABLE_ENTITY,
            PaymentsError::IdempotencyKeyInUse => StatusCode::CONFLICT,
            PaymentsError::RegionNotSupported => StatusCode::FORBIDDEN,
            PaymentsError::NotFound(_) => StatusCode::NOT_FOUND,
            PaymentsError::Overloaded | PaymentsError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            PaymentsError::Database(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<PaymentsError> for HttpError {
    fn from(error: PaymentsError) -> Self {
        match error {
            PaymentsError::Database(cause) => HttpError::internal("payments storage", &cause),
            // The first request with the key is still running: its answer comes soon.
            PaymentsError::Overloaded | PaymentsError::Unavailable | PaymentsError::IdempotencyKeyInUse => {
                HttpError::new(error.status(), error.code(), error.to_string()).with_retry_after(1)
            }
            other => HttpError::new(other.status(), other.code(), other.to_string()),
        }
    }
}

impl IntoResponse for PaymentsError {
    fn into_response(self) -> Response {
        HttpError::from(self).into_response()
    }
}
