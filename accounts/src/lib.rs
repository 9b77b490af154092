//! Courier's core account system: phone-number identities, sign-in codes,
//! signed access tokens and rotating refresh tokens, device sessions, the
//! call settings and block list, and the finance-ops operators.
//!
//! Routes (API.md, "Accounts"): `POST /v1/auth/codes`, `POST /v1/auth/sessions`,
//! `POST /v1/auth/refresh`, `GET /v1/auth/keys`, `GET /v1/me`,
//! `/v1/me/devices`, `/v1/me/settings`, `/v1/me/blocked`, and
//! `/admin/v1/operators`.
//!
//! Other services use [`auth::AuthUser`] (offline token verification with the
//! JWKS), [`operators::Authorized`] (operator API keys with a least role) and
//! [`store`] (accounts, settings and blocks in the shared database). This
//! crate never stores a code, refresh token or API key in the clear, never
//! logs one (the development `log` sender's single line aside) and never logs
//! a full phone number.

pub mod api;
pub mod auth;
pub mod error;
#[cfg(test)]
mod fuzz;
pub mod operators;
pub mod phone;
pub mod revocations;
pub mod secret;
pub mod sender;
pub mod service;
pub mod settings;
pub mod store;
pub mod tokens;

pub use api::{ApiDoc, app};
pub use error::AccountsError;
pub use service::{Accounts, AccountsConfig};
