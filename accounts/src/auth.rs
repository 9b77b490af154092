//! The user-auth extractor every service uses: a Bearer access token checked
//! offline against the JWKS.

use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;
use courier_common::HttpError;

use crate::tokens::{AccessClaims, TokenError, TokenVerifier};

/// The authenticated account and device behind a request.
#[derive(Debug, Clone)]
pub struct AuthUser(pub AccessClaims);

impl AuthUser {
    pub fn account_id(&self) -> &str {
        &self.0.sub
    }

    pub fn device_id(&self) -> &str {
        &self.0.did
    }

    pub fn region(&self) -> &str {
        &self.0.region
    }
}

/// The token in `Authorization: Bearer <token>`, if there is one.
pub fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

impl<S> FromRequestParts<S> for AuthUser
where
    S: Send + Sync,
    Arc<TokenVerifier>: FromRef<S>,
{
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)
            .ok_or_else(|| HttpError::unauthenticated("send an access token as Authorization: Bearer <token>"))?;
        let verifier = Arc::<TokenVerifier>::from_ref(state);
        let claims =
            verifier.verify(token).await.map_err(|error: TokenError| HttpError::unauthenticated(error.to_string()))?;
        Ok(AuthUser(claims))
    }
}
