//! The call client: a signaling client for API.md's protocol, a WebRTC peer
//! connection with Opus audio, the short authentication string (emoji) that
//! exposes a man in the middle, and the `courier call` softphone built on
//! them.
//!
//! It must never send a host or server-reflexive candidate when the call's
//! ICE policy is `relay`.
//!
//! The client lands with its own milestone; this crate holds its place in the
//! workspace.
