//! The accounts service's errors and their one mapping to HTTP.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use courier_common::HttpError;

use crate::phone::PhoneError;

#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    #[error("{0}")]
    InvalidPhone(#[from] PhoneError),
    #[error("the code is wrong; check the SMS and try again")]
    InvalidCode,
    #[error("the code has expired; request a new one")]
    CodeExpired,
    /// Locked out until a new code may be requested (`retry_after_s`).
    #[error("too many wrong codes; request a new one")]
    TooManyAttempts { retry_after_s: u64 },
    #[error("{message}")]
    RateLimited { message: String, retry_after_s: u64 },
    #[error("the code could not be delivered: {0}; try again later")]
    CodeDeliveryFailed(String),
    #[error("the refresh token is not valid; sign in again")]
    InvalidRefreshToken,
    #[error("this refresh token was already used; the device session has been revoked for safety, sign in again")]
    RefreshTokenReused,
    #[error("{0}")]
    InvalidSetting(String),
    #[error("{0}")]
    InvalidRequest(String),
    /// Well formed, refused for what it means (422 `invalid_request`).
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(&'static str),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl AccountsError {
    pub fn code(&self) -> &'static str {
        match self {
            AccountsError::InvalidPhone(_) => "invalid_phone",
            AccountsError::InvalidCode => "invalid_code",
            AccountsError::CodeExpired => "code_expired",
            AccountsError::TooManyAttempts { .. } => "too_many_attempts",
            AccountsError::RateLimited { .. } => "rate_limited",
            AccountsError::CodeDeliveryFailed(_) => "code_delivery_failed",
            AccountsError::InvalidRefreshToken => "invalid_refresh_token",
            AccountsError::RefreshTokenReused => "refresh_token_reused",
            AccountsError::InvalidSetting(_) => "invalid_setting",
            AccountsError::InvalidRequest(_) | AccountsError::Unprocessable(_) => "invalid_request",
            AccountsError::Unauthenticated(_) => "unauthenticated",
            AccountsError::Forbidden(_) => "forbidden",
            AccountsError::NotFound(_) => "not_found",
            AccountsError::Conflict(_) => "conflict",
            AccountsError::Database(_) => "internal",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            AccountsError::InvalidPhone(error) if !error.is_malformed() => StatusCode::UNPROCESSABLE_ENTITY,
            AccountsError::InvalidPhone(_) | AccountsError::InvalidSetting(_) | AccountsError::InvalidRequest(_) => {
                StatusCode::BAD_REQUEST
            }
            AccountsError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            AccountsError::InvalidCode
            | AccountsError::CodeExpired
            | AccountsError::InvalidRefreshToken
            | AccountsError::RefreshTokenReused
            | AccountsError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            AccountsError::TooManyAttempts { .. } | AccountsError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            AccountsError::CodeDeliveryFailed(_) => StatusCode::BAD_GATEWAY,
            AccountsError::Forbidden(_) => StatusCode::FORBIDDEN,
            AccountsError::NotFound(_) => StatusCode::NOT_FOUND,
            AccountsError::Conflict(_) => StatusCode::CONFLICT,
            AccountsError::Database(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<AccountsError> for HttpError {
    fn from(error: AccountsError) -> Self {
        match error {
            AccountsError::Database(cause) => HttpError::internal("accounts storage", &cause),
            AccountsError::CodeDeliveryFailed(ref cause) => {
                tracing::warn!(%cause, "sign-in code delivery failed");
                HttpError::new(error.status(), error.code(), "the code could not be delivered; try again later")
            }
            AccountsError::RateLimited { retry_after_s, .. } | AccountsError::TooManyAttempts { retry_after_s } => {
                HttpError::new(error.status(), error.code(), error.to_string()).with_retry_after(retry_after_s)
            }
            other => HttpError::new(other.status(), other.code(), other.to_string()),
        }
    }
}

impl IntoResponse for AccountsError {
    fn into_response(self) -> Response {
        HttpError::from(self).into_response()
    }
}
