//! Revoked device sessions, as every process verifying tokens knows them.
//!
//! An access token is verified offline, so revoking its device in the
//! database alone would leave the token working for the rest of its
//! lifetime. Each process keeps the devices revoked within the longest token
//! lifetime: the ones revoked here are known at once, the others when
//! [`watch`] next reads the database (every second). Whoever holds something
//! open for a device (a signaling socket) subscribes and closes it.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use courier_common::Database;
use courier_common::ids::DeviceId;
use courier_common::shutdown::CancellationToken;
use courier_common::sync::{read, write};
use courier_common::time::now_ms;
use tokio::sync::broadcast;

use crate::store;
use crate::tokens::{ACCESS_TOKEN_TTL_S_MAX, TokenVerifier};

/// How long a revocation is remembered: past it every token of the device
/// has expired anyway (the longest lifetime, with the clock skew allowed).
const KEPT_MS: i64 = (ACCESS_TOKEN_TTL_S_MAX as i64 + 300) * 1_000;
/// How often the database is read for revocations made by other processes.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Each read goes back this far before the latest revocation seen: one
/// stamped earlier by another process's clock may commit later.
const LOOKBACK_MS: i64 = 10_000;

pub struct Revocations {
    /// Device id → when it was revoked (ms).
    devices: RwLock<HashMap<DeviceId, i64>>,
    /// The devices revoked, as they are first recorded.
    events: broadcast::Sender<DeviceId>,
}

impl Default for Revocations {
    fn default() -> Self {
        Self { devices: RwLock::new(HashMap::new()), events: broadcast::channel(1_024).0 }
    }
}

impl Revocations {
    pub fn is_revoked(&self, device_id: &str) -> bool {
        read(&self.devices).contains_key(device_id)
    }

    /// Records a revocation; subscribers hear of it the first time.
    pub fn record(&self, device: DeviceId, at_ms: i64) {
        let new = write(&self.devices).insert(device.clone(), at_ms).is_none();
        if new {
            // Nobody listening is fine: nothing is open for the device here.
            let _ = self.events.send(device);
        }
    }

    /// Revocations from now on. A subscriber that falls behind by more than
    /// the channel holds is told so ([`broadcast::error::RecvError::Lagged`]).
    pub fn subscribe(&self) -> broadcast::Receiver<DeviceId> {
        self.events.subscribe()
    }

    /// Forgets revocations older than every token they could concern.
    fn prune(&self, now_ms: i64) {
        write(&self.devices).retain(|_, at| *at + KEPT_MS > now_ms);
    }
}

/// Reads the revocations other processes make into `verifier`'s, every
/// [`POLL_INTERVAL`], until `shutdown`; first those of the last token lifetime.
pub async fn watch(db: Database, verifier: Arc<TokenVerifier>, shutdown: CancellationToken) {
    let mut since_ms = now_ms() - KEPT_MS;
    let mut ticks = tokio::time::interval(POLL_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = shutdown.cancelled() => return,
        }
        match store::revoked_since(&db, since_ms - LOOKBACK_MS).await {
            Ok(rows) => {
                for (device, revoked_at_ms) in rows {
                    since_ms = since_ms.max(revoked_at_ms);
                    verifier.revocations().record(device.into(), revoked_at_ms);
                }
            }
            Err(error) => tracing::warn!(%error, "cannot read revoked devices; retrying"),
        }
        verifier.revocations().prune(now_ms());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn revoked(device: &str) -> DeviceId {
        device.into()
    }

    #[tokio::test]
    async fn a_revocation_is_told_once_and_forgotten_when_no_token_can_concern_it() {
        let revocations = Revocations::default();
        let mut heard = revocations.subscribe();
        revocations.record(revoked("d1"), 1_000);
        revocations.record(revoked("d1"), 1_000);
        assert!(revocations.is_revoked("d1") && !revocations.is_revoked("d2"));
        assert_eq!(heard.recv().await.unwrap(), revoked("d1"));
        assert!(heard.try_recv().is_err(), "told once");
        revocations.prune(1_000 + KEPT_MS - 1);
        assert!(revocations.is_revoked("d1"));
        revocations.prune(1_000 + KEPT_MS);
        assert!(!revocations.is_revoked("d1"));
    }
}
