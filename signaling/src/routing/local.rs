//! Routing within one process: the switchboard, the connected devices and
//! their outboxes under one lock, so that the events one device receives
//! keep the order in which the machine made them, and a step that only
//! relays is handled without waiting.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use courier_common::shutdown::CancellationToken;
use courier_common::sync::lock;
use courier_protocol::{ClientBody, close};

use super::{AttachError, Link, Routing, Unreachable, close_revoked, deliver};
use crate::machine::{AccountId, At, Callee, DeviceId, Ended, Endpoint, Limits, Output, Reply, Switchboard};
use crate::meters::meters;

pub struct Local {
    state: Mutex<State>,
    devices_per_account_max: usize,
}

struct State {
    board: Switchboard,
    links: HashMap<DeviceId, Link>,
    /// Connected devices per account, in connection order.
    online: HashMap<AccountId, Vec<DeviceId>>,
}

impl State {
    /// Drops the device's connection `link` if it is still the current one,
    /// and tells the machine.
    fn unlink(&mut self, endpoint: &Endpoint, link: u64, signed_out: bool) -> Vec<Ended> {
        if self.links.get(&endpoint.device).is_none_or(|current| current.id != link) {
            return Vec::new();
        }
        self.links.remove(&endpoint.device);
        if let Some(devices) = self.online.get_mut(&endpoint.account) {
            devices.retain(|device| *device != endpoint.device);
            if devices.is_empty() {
                self.online.remove(&endpoint.account);
            }
        }
        let outputs = if signed_out {
            self.board.signed_out(endpoint, At::now())
        } else {
            self.board.disconnected(endpoint, At::now())
        };
        self.deliver(outputs)
    }

    fn deliver(&mut self, outputs: Vec<Output>) -> Vec<Ended> {
        let ended = deliver(&self.links, outputs);
        meters().calls_in_progress.set(self.board.calls_in_progress() as f64);
        ended
    }

    /// Feeds the machine and queues its events.
    fn step(&mut self, from: &Endpoint, body: ClientBody, callee: Option<Callee>, now: At) -> (Reply, Vec<Ended>) {
        let callee = callee.map(|mut callee| {
            callee.online_devices = self.online.get(&callee.account).cloned().unwrap_or_default();
            callee
        });
        let (reply, outputs) = self.board.handle(from, body, callee, now);
        (reply, self.deliver(outputs))
    }
}

impl Local {
    pub fn new(limits: Limits, devices_per_account_max: usize) -> Self {
        let state = State { board: Switchboard::new(limits), links: HashMap::new(), online: HashMap::new() };
        Local { state: Mutex::new(state), devices_per_account_max }
    }
}

#[async_trait::async_trait]
impl Routing for Local {
    async fn attach(&self, endpoint: &Endpoint, link: Link) -> Result<Vec<Ended>, AttachError> {
        let mut state = lock(&self.state);
        let replaced = state.links.get(&endpoint.device).map(|old| {
            old.outbox.close(close::REPLACED);
            old.id
        });
        let devices = state.online.get(&endpoint.account).map_or(0, Vec::len);
        if replaced.is_none() && devices >= self.devices_per_account_max {
            return Err(AttachError::TooManyDevices);
        }
        // The old socket's calls get the grace period; the new one resumes them.
        let ended = replaced.map(|old| state.unlink(endpoint, old, false)).unwrap_or_default();
        state.links.insert(endpoint.device.clone(), link);
        // Most accounts have one device connected: room for one, not the default four.
        let devices = state.online.entry(endpoint.account.clone()).or_insert_with(|| Vec::with_capacity(1));
        devices.push(endpoint.device.clone());
        Ok(ended)
    }

    async fn detach(&self, endpoint: &Endpoint, link: u64, signed_out: bool) -> Vec<Ended> {
        lock(&self.state).unlink(endpoint, link, signed_out)
    }

    fn relay_now(&self, from: &Endpoint, body: ClientBody, now: At) -> Result<(Reply, Vec<Ended>), ClientBody> {
        Ok(lock(&self.state).step(from, body, None, now))
    }

    async fn step(
        &self,
        from: &Endpoint,
        body: ClientBody,
        callee: Option<Callee>,
        now: At,
    ) -> Result<(Reply, Vec<Ended>), Unreachable> {
        Ok(lock(&self.state).step(from, body, callee, now))
    }

    async fn tick(&self, now: At) -> Vec<Ended> {
        let mut state = lock(&self.state);
        let outputs = state.board.tick(now);
        state.deliver(outputs)
    }

    fn upkeep_every(&self) -> Option<Duration> {
        None
    }

    async fn upkeep(&self, _now: At) -> Vec<Ended> {
        Vec::new()
    }

    fn start(self: Arc<Self>, _stopping: CancellationToken) {}

    async fn revoke(&self, device: &DeviceId) {
        if let Some(link) = lock(&self.state).links.get(device) {
            close_revoked(link);
        }
    }

    fn close_all(&self, code: u16) {
        for link in lock(&self.state).links.values() {
            link.outbox.close(code);
        }
    }

    /// This process held every call: they end with it (`server_shutdown`).
    async fn stop(&self, now: At) -> Vec<Ended> {
        let mut state = lock(&self.state);
        let outputs = state.board.shutdown(now);
        state.deliver(outputs)
    }

    async fn leave(&self, _now: At) -> Vec<Ended> {
        Vec::new()
    }
}
