//! Call signaling: the WebSocket protocol at `GET /v1/calls/ws` (API.md,
//! "Signaling"), the authoritative call state machine, multi-device routing
//! (in-process, or across nodes through Redis), ICE server credentials, the
//! embedded TURN relay and call history.
//!
//! It negotiates calls and never touches media. It trusts nothing a client
//! sends: every message is validated, rate limited and checked against the
//! call's state before anything changes.
//!
//! The service lands with its own milestone; this crate holds its place in
//! the workspace.
