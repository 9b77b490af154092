//! What every Courier service shares, and nothing service-specific: the error
//! shape `{"error":{"code","message"}}` and the JSON extractor that rejects bad
//! bodies in that shape; the storage handle over SQLite or PostgreSQL with its
//! migrations; pagination; Prometheus metrics; `/healthz`, `/readyz`,
//! `/metrics`; the HTTP middleware stack (body limit, timeout, tracing);
//! graceful shutdown; the hash-chained audit log of operators' actions and
//! its signed checkpoints; and
//! the small shared pieces: ids, the poison-tolerant lock, hex.
//!
//! It must never know about accounts, calls or money: services depend on it,
//! never the other way round.

pub mod audit;
pub mod checkpoint;
pub mod client;
pub mod db;
pub mod error;
pub mod fuzz;
pub mod http;
pub mod ids;
pub mod json;
pub mod observe;
pub mod openapi;
pub mod page;
pub mod shutdown;
pub mod sync;
pub mod text;
pub mod time;

pub use db::{Backend, Database};
pub use error::{ErrorBody, ErrorDetail, HttpError};
pub use json::{Json, Query};
pub use page::{Page, PageQuery};
