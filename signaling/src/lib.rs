//! Call signaling: the WebSocket protocol at `GET /v1/calls/ws` (API.md,
//! "Signaling"), the authoritative call state machine, multi-device routing,
//! the ICE servers calls are handed (`GET /v1/calls/ice-servers`), and call
//! records (`GET /v1/calls/history`, `POST /v1/calls/{id}/rating`,
//! `POST /v1/calls/{id}/stats`).
//!
//! It negotiates calls and never touches media (the relay is `courier-turn`).
//! It trusts nothing a client sends: every message is parsed at the boundary
//! (`courier-protocol`), rate limited, and checked by the state machine
//! ([`machine`], plain code tested without sockets) against the call's state
//! before anything changes. The [`hub`] hands each step to a [`routing`]
//! (this process, or several nodes on Redis: [`cluster`]) that carries the
//! machine's events to devices through bounded queues ([`outbox`]); [`ws`]
//! runs each connection.

pub mod api;
pub mod cluster;
pub mod config;
pub mod floor;
pub mod hub;
pub mod ice;
pub mod machine;
mod meters;
pub mod outbox;
pub mod routing;
pub mod store;
pub mod upgrade;
pub mod ws;

pub use api::{ApiDoc, Signaling, app};
pub use config::SignalingConfig;
pub use hub::Hub;
