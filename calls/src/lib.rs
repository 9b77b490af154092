//! The call client: a signaling client for API.md's protocol, a WebRTC peer
//! connection with Opus audio, the short authentication string (emoji) that
//! exposes a man in the middle, and the `courier call` softphone built on
//! them.
//!
//! It must never send a host or server-reflexive candidate when the call's
//! ICE policy is `relay`.
//!
//! So far: the audio pipeline ([`audio`]) and the short authentication string
//! ([`sas`]), and the signaling client ([`signaling`]). The peer connection
//! and the `courier call` commands follow.

pub mod audio;
pub mod call;
pub mod peer;
pub mod sas;
pub mod signaling;
