//! The call client: a signaling client for API.md's protocol
//! ([`signaling_client`], on the server's own message types), a WebRTC peer
//! connection ([`peer`]) with Opus audio ([`audio`]) played out through a
//! jitter buffer ([`jitter`]), one call from dial or
//! answer to hangup with the short authentication string that exposes a man
//! in the middle ([`call`]), and the `courier call` softphone commands
//! ([`cli`]) built on them.
//!
//! It must never send a host or server-reflexive candidate when the call's
//! ICE policy is `relay`.

pub mod audio;
pub mod call;
pub mod cli;
pub mod jitter;
pub mod peer;
pub mod signaling_client;
