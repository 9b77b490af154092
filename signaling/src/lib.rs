//! Call signaling: the WebSocket protocol at `GET /v1/calls/ws` (API.md,
//! "Signaling"), the authoritative call state machine, multi-device routing
//! (in-process, or across nodes through Redis), ICE server credentials, the
//! embedded TURN relay and call history.
//!
//! It negotiates calls and never touches media. It trusts nothing a client
//! sends: every message is validated, rate limited and checked against the
//! call's state before anything changes.
//!
//! Built so far: [`protocol`], the messages parsed at the boundary into
//! domain types, and [`machine`], the call state machine as plain code. The
//! WebSocket endpoint, routing and history come next.

pub mod machine;
pub mod protocol;
