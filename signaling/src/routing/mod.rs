//! Where calls and the presence of devices live, behind one trait: this
//! process alone ([`local::Local`], the embedded default) or several
//! signaling nodes sharing Redis ([`clustered::Clustered`]). Either way the
//! same [`Switchboard`](crate::machine::Switchboard) decides every step; a
//! routing only keeps the state it runs on and carries its events to the
//! devices' [`Outbox`]es. The [`Hub`](crate::hub::Hub) looks up what the
//! machine needs, writes the call records, and never asks which routing it
//! holds.

pub mod clustered;
pub mod local;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use courier_common::shutdown::CancellationToken;
use courier_protocol::ClientBody;

use crate::machine::{At, Callee, DeviceId, Ended, Endpoint, Output, Reply};
use crate::outbox::Outbox;

/// One connection of a device to this node.
#[derive(Debug)]
pub struct Link {
    /// Unique within the process; a newer connection of a device has a higher one.
    pub id: u64,
    pub outbox: Arc<Outbox>,
}

/// Why a device could not attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachError {
    TooManyDevices,
    Stopping,
    /// The shared call state (Redis) could not be reached.
    Unavailable,
}

/// The shared call state could not be reached (the step changed nothing).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the shared call state is unreachable: {0}")]
pub struct Unreachable(pub String);

/// How calls, presence and events are kept and carried. Every method that
/// ends calls returns them, for the hub to record.
#[async_trait::async_trait]
pub trait Routing: Send + Sync {
    /// Registers a device's connection. A newer connection of a device
    /// replaces the older one, which is closed; its calls get the grace
    /// period, as if it had dropped.
    async fn attach(&self, endpoint: &Endpoint, link: Link) -> Result<Vec<Ended>, AttachError>;

    /// The device's connection `link` ended (nothing happens when a newer
    /// one replaced it); `signed_out`: for good, its calls end now.
    async fn detach(&self, endpoint: &Endpoint, link: u64, signed_out: bool) -> Vec<Ended>;

    /// Runs, without waiting, a step that only relays within a call (the
    /// hot path: candidates), when this routing can; gives the message back
    /// otherwise.
    fn relay_now(&self, from: &Endpoint, body: ClientBody, now: At) -> Result<(Reply, Vec<Ended>), ClientBody>;

    /// Runs one step of the machine on `from`'s message (an invite with
    /// what the hub found out about its callee).
    async fn step(
        &self,
        from: &Endpoint,
        body: ClientBody,
        callee: Option<Callee>,
        now: At,
    ) -> Result<(Reply, Vec<Ended>), Unreachable>;

    /// Ends what time ran out on: ring timeouts, grace periods.
    async fn tick(&self, now: At) -> Vec<Ended>;

    /// How often [`Routing::upkeep`] runs, if this routing has any.
    fn upkeep_every(&self) -> Option<Duration>;

    /// Periodic care of the shared state (heartbeats, dead nodes, retries).
    async fn upkeep(&self, now: At) -> Vec<Ended>;

    /// Starts what runs beside the hub until `stopping` (deliveries from
    /// other nodes).
    fn start(self: Arc<Self>, stopping: CancellationToken);

    /// The device was signed out: its connections, on every node, get an
    /// `unauthenticated` error and are closed (4401).
    async fn revoke(&self, device: &DeviceId);

    /// Asks every connection of this node to close with `code`.
    fn close_all(&self, code: u16);

    /// The server is stopping: the calls this node alone holds end.
    async fn stop(&self, now: At) -> Vec<Ended>;

    /// The node's connections are gone: what the shared state still holds of
    /// them is let go (their calls get the grace period to resume elsewhere).
    async fn leave(&self, now: At) -> Vec<Ended>;
}

/// Closes a signed-out device's connection, saying why (once, however many
/// nodes tell of the revocation).
fn close_revoked(link: &Link) {
    link.outbox.sign_out();
}

/// Queues the events among `outputs` on the outboxes of the devices in
/// `links`; returns the calls that ended. Events are queued in the order the
/// machine made them.
fn deliver(links: &HashMap<DeviceId, Link>, outputs: Vec<Output>) -> Vec<Ended> {
    let mut ended = Vec::new();
    for output in outputs {
        match output {
            Output::Send { to, event } => {
                if let Some(link) = links.get(&to) {
                    link.outbox.push(event.frame());
                }
            }
            Output::Ended(call) => ended.push(call),
        }
    }
    ended
}

/// The calls among `outputs` that ended (their events went out through the
/// shared state).
fn ended(outputs: Vec<Output>) -> Vec<Ended> {
    outputs
        .into_iter()
        .filter_map(|output| match output {
            Output::Ended(call) => Some(call),
            Output::Send { .. } => None,
        })
        .collect()
}
