//! The signaling wire format both ends speak (API.md, "Signaling"): client
//! messages ([`message`]: parsed by the server, encoded by clients), server
//! events and replies ([`event`]: encoded by the server, decoded by
//! clients), the values they carry ([`types`]), the stable error codes,
//! hangup reasons and close codes ([`codes`]), and the short authentication
//! string with its emoji table ([`sas`]), which every client derives alike.
//!
//! Plain code: no sockets, no state. The server and the clients (the
//! softphone, the benchmarks, the tests) use these types, so that the
//! protocol is written once.

pub mod codes;
pub mod event;
#[cfg(test)]
mod fuzz;
pub mod message;
pub mod sas;
pub mod types;

pub use codes::{ErrorCode, HangupReason, close};
pub use event::{IcePolicy, Reply, ServerEvent, ServerFrame};
pub use message::{ClientBody, ClientMessage, Refused, parse};
pub use types::{CallId, Candidates, NegotiateKind, SasHex, Sdp};

/// The protocol version every frame carries as `"v": 1`.
pub const PROTOCOL_VERSION: u64 = 1;
