//! The embedded TURN relay that `courier serve` runs for development and
//! small deployments (production runs coturn with the same shared secret,
//! `deploy/turnserver.conf`): TURN REST API credentials ([`credentials`]),
//! the peer filter that keeps a relay from becoming a door into the
//! internal network ([`filter`]), and the relay itself ([`server`]:
//! allocations, permissions, channels, quotas, the UDP and TCP listeners).
//!
//! It knows nothing of calls or signaling: it relays what holders of valid
//! credentials send, to public addresses only unless told otherwise. Its
//! test client ([`client`]) is built only with the `test-client` feature,
//! which tests and benchmarks turn on.

#[cfg(feature = "test-client")]
pub mod client;
pub mod credentials;
pub mod filter;
pub mod server;

pub use credentials::{Credentials, TURN_CREDENTIAL_TTL_S_DEFAULT, TurnSecrets};
pub use filter::PeerFilter;
pub use server::{TurnConfig, TurnServer};
