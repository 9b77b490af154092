//! Call signaling: the WebSocket protocol at `GET /v1/calls/ws` (API.md,
//! "Signaling"), the authoritative call state machine, multi-device routing,
//! and call records (`GET /v1/calls/history`, `POST /v1/calls/{id}/rating`,
//! `POST /v1/calls/{id}/stats`).
//!
//! It negotiates calls and never touches media. It trusts nothing a client
//! sends: every message is parsed at the boundary ([`protocol`]), rate
//! limited, and checked by the state machine ([`machine`], plain code tested
//! without sockets) against the call's state before anything changes. The
//! [`hub`] routes the machine's events to devices through bounded queues;
//! [`ws`] runs each connection.

pub mod api;
pub mod cluster;
pub mod config;
pub mod hub;
pub mod machine;
pub mod protocol;
pub mod store;
pub mod turn;
pub mod upgrade;
pub mod ws;

pub use api::{ApiDoc, Signaling, app};
pub use config::SignalingConfig;
pub use hub::Hub;
