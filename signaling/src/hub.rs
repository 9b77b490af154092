//! The hub: which devices are connected to this process, and the one
//! [`Switchboard`] their call messages go through. It looks up what the
//! machine needs to know about a callee (account, settings, blocks), feeds
//! the machine, delivers its events to the devices' outbound queues and
//! writes the call records.
//!
//! Delivery never waits: each connection has a bounded queue, and a device
//! whose queue is full is disconnected (a slow reader must not grow the
//! server's memory). Events are queued while the hub's lock is held, so the
//! events one device receives keep the order in which the machine made them.
//!
//! With a [`Cluster`] (Redis), the calls and the presence of devices are
//! shared by every node: the machine runs on the part of the shared state a
//! step needs, its events travel through the devices' channels, and this hub
//! only delivers what arrives for the devices connected here.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::StreamExt;
use redis::aio::PubSubStream;

use courier_accounts::settings::{CallsFrom, P2p};
use courier_common::Database;
use courier_common::shutdown::CancellationToken;
use courier_common::time::now_ms;
use serde::Serialize;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::cluster::{Cluster, ClusterConfig, Delivery, Owner, Subscription, TooManyDevices};
use crate::config::SignalingConfig;
use crate::machine::{
    AccountId, At, Callee, DeviceId, Ended, Endpoint, IcePolicy, Output, Reply, ServerEvent, Switchboard,
};
use crate::protocol::{CallId, ClientBody, ClientMessage, ErrorCode, HangupReason, PROTOCOL_VERSION};
use crate::store;

/// WebSocket close codes the server uses.
pub mod close {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The server is stopping.
    pub const GOING_AWAY: u16 = 1001;
    /// The client did not read its frames fast enough.
    pub const SLOW_READER: u16 = 1008;
    /// No valid `auth` within the deadline, or a bad token.
    pub const UNAUTHENTICATED: u16 = 4401;
    /// A newer connection of the same device took over.
    pub const REPLACED: u16 = 4409;
    /// The account has too many devices connected.
    pub const TOO_MANY_DEVICES: u16 = 4429;
    /// Nothing heard from the client (not even a pong) for too long.
    pub const IDLE: u16 = 4408;
    /// The server lost touch with the shared call state: reconnect and resume.
    pub const RECONNECT: u16 = 1012;

    pub fn reason(code: u16) -> &'static str {
        match code {
            GOING_AWAY => "server shutting down",
            SLOW_READER => "outbound queue full: the client reads too slowly",
            UNAUTHENTICATED => "authenticate first with a valid access token",
            REPLACED => "another connection of this device took over",
            TOO_MANY_DEVICES => "too many devices of this account are connected",
            IDLE => "no frames or pongs for too long",
            RECONNECT => "the server lost touch with the call state; reconnect and resume",
            _ => "",
        }
    }
}

/// A connection's outbound side, shared by the hub (which queues frames and
/// may ask for a close) and the connection's task (which writes them): a
/// bounded queue, the close code, and one wake-up. One small allocation per
/// connection; the queue holds memory only while frames wait.
#[derive(Debug)]
pub struct Outbox {
    queue: Mutex<VecDeque<Utf8Bytes>>,
    len_max: usize,
    /// 0 while open; the first close code wins.
    code: AtomicU16,
    wake: Notify,
}

impl Outbox {
    pub fn new(len_max: usize) -> Arc<Outbox> {
        Arc::new(Outbox { queue: Mutex::new(VecDeque::new()), len_max, code: AtomicU16::new(0), wake: Notify::new() })
    }

    /// Queues `frame`; a full queue disconnects the slow reader.
    pub fn push(&self, frame: Utf8Bytes) {
        {
            let mut queue = lock(&self.queue);
            if queue.len() < self.len_max {
                queue.push_back(frame);
                drop(queue);
                self.wake.notify_one();
                return;
            }
        }
        if !self.is_closed() {
            metrics::counter!("signaling_slow_readers_total").increment(1);
        }
        self.close(close::SLOW_READER);
    }

    /// The next queued frame.
    pub fn pop(&self) -> Option<Utf8Bytes> {
        let mut queue = lock(&self.queue);
        let frame = queue.pop_front();
        if queue.is_empty() {
            // Most connections sit idle: an empty queue holds no memory.
            *queue = VecDeque::new();
        }
        frame
    }

    pub fn is_empty(&self) -> bool {
        lock(&self.queue).is_empty()
    }

    /// Asks the connection to close with `code` (the first code asked wins).
    pub fn close(&self, code: u16) {
        let _ = self.code.compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
        self.wake.notify_one();
    }

    pub fn is_closed(&self) -> bool {
        self.code.load(Ordering::Acquire) != 0
    }

    /// The close code asked for, or a normal closure.
    pub fn code(&self) -> u16 {
        match self.code.load(Ordering::Acquire) {
            0 => close::NORMAL,
            code => code,
        }
    }

    /// Waits until a frame was queued or a close asked for since the last wait.
    pub async fn changed(&self) {
        self.wake.notified().await
    }
}

struct Link {
    id: u64,
    outbox: Arc<Outbox>,
}

#[derive(Default)]
struct State {
    board: Switchboard,
    links: HashMap<DeviceId, Link>,
    /// Connected devices per account, in connection order.
    online: HashMap<AccountId, Vec<DeviceId>>,
}

impl State {
    /// Drops the device's connection `link` if it is still the current one,
    /// and tells the machine.
    fn unlink(&mut self, endpoint: &Endpoint, link: u64, writes: &mut Vec<RecordWrite>) {
        if self.links.get(&endpoint.device).is_none_or(|current| current.id != link) {
            return;
        }
        self.links.remove(&endpoint.device);
        if let Some(devices) = self.online.get_mut(&endpoint.account) {
            devices.retain(|device| *device != endpoint.device);
            if devices.is_empty() {
                self.online.remove(&endpoint.account);
            }
        }
        let outputs = self.board.disconnected(endpoint, At::now());
        deliver(self, outputs, writes);
    }
}

/// Held while a WebSocket connection is open; counts it against the limit.
pub struct ConnectionPermit {
    hub: Hub,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let left = self.hub.inner.connections.fetch_sub(1, Ordering::AcqRel) - 1;
        metrics::gauge!("signaling_connections").set(left as f64);
    }
}

/// Why a device could not attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachError {
    TooManyDevices,
    Stopping,
    /// The shared call state (Redis) could not be reached.
    Unavailable,
}

#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    config: SignalingConfig,
    state: Mutex<State>,
    connections: AtomicUsize,
    next_link: AtomicU64,
    stopping: CancellationToken,
    cluster: Option<Arc<Cluster>>,
    /// What arrives for this node's devices, until the hub's run takes it.
    subscriber: Mutex<Option<PubSubStream>>,
    /// Disconnects the shared state has not heard of yet (Redis was down).
    pending_detaches: Mutex<Vec<(Endpoint, String)>>,
}

/// A record write the machine's outputs call for, done after the lock is released.
enum RecordWrite {
    Answer { call_id: CallId, device: String },
    End { call_id: CallId, reason: HangupReason, talking: Option<Duration> },
}

impl Hub {
    /// A hub that routes every call in this process.
    pub fn new(db: Database, config: SignalingConfig) -> Self {
        Hub::build(db, config, None, None)
    }

    /// A hub that shares calls and presence with other nodes through Redis.
    pub async fn clustered(db: Database, config: SignalingConfig, cluster: &ClusterConfig) -> Result<Self, String> {
        let redacted = courier_common::db::redact(&cluster.url);
        let cluster = Cluster::connect(cluster, config.machine_limits(), config.devices_per_account_max)
            .await
            .map_err(|error| format!("cannot reach Redis at {redacted}: {error}"))?;
        let subscriber =
            cluster.subscriber().await.map_err(|error| format!("cannot subscribe on Redis at {redacted}: {error}"))?;
        tracing::info!(node = cluster.node(), redis = %redacted, "signaling joined its cluster");
        Ok(Hub::build(db, config, Some(Arc::new(cluster)), Some(subscriber)))
    }

    fn build(
        db: Database,
        config: SignalingConfig,
        cluster: Option<Arc<Cluster>>,
        subscriber: Option<PubSubStream>,
    ) -> Self {
        Hub {
            inner: Arc::new(Inner {
                db,
                config,
                state: Mutex::new(State {
                    board: Switchboard::new(config.machine_limits()),
                    links: HashMap::new(),
                    online: HashMap::new(),
                }),
                connections: AtomicUsize::new(0),
                next_link: AtomicU64::new(1),
                stopping: CancellationToken::new(),
                cluster,
                subscriber: Mutex::new(subscriber),
                pending_detaches: Mutex::new(Vec::new()),
            }),
        }
    }

    pub fn config(&self) -> &SignalingConfig {
        &self.inner.config
    }

    pub fn db(&self) -> &Database {
        &self.inner.db
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.inner.state)
    }

    /// Closes every connection of this node with `code`.
    fn close_all(&self, code: u16) {
        for link in self.state().links.values() {
            link.outbox.close(code);
        }
    }

    /// Counts a new connection, unless the process holds as many as allowed
    /// or is stopping.
    pub fn reserve_connection(&self) -> Option<ConnectionPermit> {
        if self.inner.stopping.is_cancelled() {
            return None;
        }
        let max = self.inner.config.ws_connections_max;
        let reserved = self
            .inner
            .connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| (now < max).then_some(now + 1))
            .ok()?;
        metrics::gauge!("signaling_connections").set((reserved + 1) as f64);
        Some(ConnectionPermit { hub: self.clone() })
    }

    pub fn connections(&self) -> usize {
        self.inner.connections.load(Ordering::Acquire)
    }

    /// Registers an authenticated device. A newer connection of a device
    /// replaces the older one, which is closed.
    pub async fn attach(&self, endpoint: &Endpoint, outbox: Arc<Outbox>) -> Result<u64, AttachError> {
        if self.inner.stopping.is_cancelled() {
            return Err(AttachError::Stopping);
        }
        let id = self.inner.next_link.fetch_add(1, Ordering::Relaxed);
        if let Some(cluster) = &self.inner.cluster {
            return self.attach_clustered(cluster, endpoint, outbox, id).await;
        }
        let mut writes = Vec::new();
        {
            let mut state = self.state();
            let replaced = state.links.get(&endpoint.device).map(|old| {
                old.outbox.close(close::REPLACED);
                old.id
            });
            if replaced.is_none()
                && state.online.get(&endpoint.account).map_or(0, Vec::len) >= self.inner.config.devices_per_account_max
            {
                return Err(AttachError::TooManyDevices);
            }
            if let Some(old) = replaced {
                // The old socket's calls get the grace period; the new one resumes them.
                state.unlink(endpoint, old, &mut writes);
            }
            state.links.insert(endpoint.device.clone(), Link { id, outbox });
            // Most accounts have one device connected: room for one, not the default four.
            let devices = state.online.entry(endpoint.account.clone()).or_insert_with(|| Vec::with_capacity(1));
            devices.push(endpoint.device.clone());
        }
        self.spawn_writes(writes);
        Ok(id)
    }

    async fn attach_clustered(
        &self,
        cluster: &Cluster,
        endpoint: &Endpoint,
        outbox: Arc<Outbox>,
        id: u64,
    ) -> Result<u64, AttachError> {
        // Linked here first, with the device's channel subscribed, so that no
        // event published once the device is registered can be missed.
        let ((), subscribed) = cluster
            .subscriptions(|| {
                let mut state = self.state();
                let replaced = state.links.insert(endpoint.device.clone(), Link { id, outbox });
                if let Some(old) = &replaced {
                    old.outbox.close(close::REPLACED);
                }
                ((), replaced.is_none().then(|| (Subscription::Subscribe, endpoint.device.to_string())))
            })
            .await;
        let registered = match subscribed {
            Ok(()) => cluster.attach(endpoint, &cluster.tag(id), At::now()).await,
            Err(error) => Err(error),
        };
        match registered {
            Ok(Ok(outputs)) => {
                let mut writes = Vec::new();
                ended_writes(outputs, &mut writes);
                self.spawn_writes(writes);
                Ok(id)
            }
            Ok(Err(TooManyDevices)) => {
                self.unlink_clustered(cluster, endpoint, id).await;
                Err(AttachError::TooManyDevices)
            }
            Err(error) => {
                tracing::error!(%error, "cannot register a device in the shared call state");
                self.unlink_clustered(cluster, endpoint, id).await;
                Err(AttachError::Unavailable)
            }
        }
    }

    /// Drops this node's link `id` of a device (if it is still the current
    /// one); returns whether the node now holds no connection of the device.
    async fn unlink_clustered(&self, cluster: &Cluster, endpoint: &Endpoint, id: u64) -> bool {
        let (last, unsubscribed) = cluster
            .subscriptions(|| {
                let mut state = self.state();
                if state.links.get(&endpoint.device).is_some_and(|current| current.id == id) {
                    state.links.remove(&endpoint.device);
                }
                let last = !state.links.contains_key(&endpoint.device);
                (last, last.then(|| (Subscription::Unsubscribe, endpoint.device.to_string())))
            })
            .await;
        if let Err(error) = unsubscribed {
            tracing::warn!(%error, "cannot unsubscribe a device's channel");
        }
        last
    }

    /// Unregisters a device's connection `link` (if it is still the current one).
    pub async fn detach(&self, endpoint: &Endpoint, link: u64) {
        let mut writes = Vec::new();
        match &self.inner.cluster {
            None => self.state().unlink(endpoint, link, &mut writes),
            Some(cluster) => {
                let last = self.unlink_clustered(cluster, endpoint, link).await;
                let tag = cluster.tag(link);
                match cluster.detach(endpoint, Owner::Link(&tag), At::now()).await {
                    Ok(outputs) => ended_writes(outputs, &mut writes),
                    Err(error) => {
                        tracing::error!(%error, "cannot record a disconnect in the shared call state; will retry");
                        lock(&self.inner.pending_detaches).push((endpoint.clone(), tag));
                    }
                }
                if last && let Err(error) = cluster.forget_device(&endpoint.device).await {
                    tracing::warn!(%error, "cannot drop a device from this node's list");
                }
            }
        }
        self.write_records(writes).await;
    }

    /// Handles one message of an authenticated device and returns the frame
    /// that answers it. Events for other devices are queued on the way.
    /// Handles, without waiting, a message that needs no I/O: on a single
    /// node, `ping` and the messages that only relay within a call (the hot
    /// path: candidates). Gives other messages back for [`Hub::handle`].
    pub fn handle_now(&self, from: &Endpoint, message: ClientMessage) -> Result<Utf8Bytes, ClientMessage> {
        if let ClientBody::Ping = message.body {
            return Ok(frame(&Pong { kind: "pong", id: &message.id }));
        }
        let relays = message.body.call_id().is_some() && !message.body.changes_call();
        if self.inner.cluster.is_some() || !relays {
            return Err(message);
        }
        let (id, body) = (message.id, message.body);
        let (reply, writes) = self.step(from, body, None);
        // Relaying ends no call; should that ever change, the records are still written.
        self.spawn_writes(writes);
        Ok(reply_frame(&id, reply))
    }

    pub async fn handle(&self, from: &Endpoint, message: ClientMessage) -> Utf8Bytes {
        let (id, body) = (message.id, message.body);
        let facts = match &body {
            ClientBody::Ping => return frame(&Pong { kind: "pong", id: &id }),
            ClientBody::Auth { .. } => {
                return error_frame(Some(&id), ErrorCode::InvalidState, "this connection is already authenticated");
            }
            ClientBody::Invite { call_id, callee, .. } => match self.callee_facts(from, callee, call_id).await {
                Ok(Ok(facts)) => Some(facts),
                Ok(Err((code, message))) => return error_frame(Some(&id), code, message),
                Err(error) => {
                    tracing::error!(%error, "cannot look up a callee");
                    return error_frame(
                        Some(&id),
                        ErrorCode::Internal,
                        "the server could not look up the callee; retry",
                    );
                }
            },
            _ => None,
        };
        let invited = match (&body, &facts) {
            (ClientBody::Invite { call_id, .. }, Some(facts)) => Some((call_id.clone(), facts.account.clone())),
            _ => None,
        };
        let answering = match &body {
            ClientBody::Answer { call_id, .. } => Some(call_id.clone()),
            _ => None,
        };
        let (reply, mut writes) = match &self.inner.cluster {
            None => self.step(from, body, facts),
            Some(cluster) => match cluster.handle(from, body, facts, At::now()).await {
                Ok((reply, outputs)) => {
                    let mut writes = Vec::new();
                    ended_writes(outputs, &mut writes);
                    (reply, writes)
                }
                Err(error) => {
                    tracing::error!(%error, "cannot reach the shared call state");
                    return error_frame(
                        Some(&id),
                        ErrorCode::Internal,
                        "the server could not reach the call state; retry",
                    );
                }
            },
        };
        if let (Reply::Ack, Some(call_id)) = (&reply, answering) {
            writes.insert(0, RecordWrite::Answer { call_id, device: from.device.to_string() });
        }
        if let (Reply::AckInvite { ice_policy }, Some((call_id, callee))) = (&reply, invited) {
            let started = store::Started {
                call_id: &call_id,
                caller: &from.account,
                callee: &callee,
                caller_device: &from.device,
                ice_policy: *ice_policy,
                at_ms: now_ms(),
            };
            if let Err(error) = store::record_start(&self.inner.db, started).await {
                tracing::error!(%error, "cannot write a call record");
            }
        }
        self.write_records(writes).await;
        reply_frame(&id, reply)
    }

    /// Feeds the machine under the lock and queues its events.
    fn step(&self, from: &Endpoint, body: ClientBody, facts: Option<Callee>) -> (Reply, Vec<RecordWrite>) {
        let mut writes = Vec::new();
        let mut state = self.state();
        let facts = facts.map(|mut callee| {
            callee.online_devices = state.online.get(&callee.account).cloned().unwrap_or_default();
            callee
        });
        let (reply, outputs) = state.board.handle(from, body, facts, At::now());
        deliver(&mut state, outputs, &mut writes);
        (reply, writes)
    }

    /// What the machine must know about an invite's callee, or the refusal
    /// that needs no machine (a call id used before).
    async fn callee_facts(
        &self,
        from: &Endpoint,
        callee: &str,
        call_id: &CallId,
    ) -> Result<Result<Callee, (ErrorCode, &'static str)>, sqlx::Error> {
        let db = &self.inner.db;
        if store::call_id_used(db, call_id).await? {
            return Ok(Err((ErrorCode::InvalidState, "this call_id was used before; every call needs a new one")));
        }
        let found = if callee.starts_with('+') {
            match courier_accounts::phone::PhoneNumber::parse(callee) {
                Ok(phone) => courier_accounts::store::account_by_phone(db, &phone).await?,
                Err(_) => None,
            }
        } else {
            courier_accounts::store::account(db, callee).await?
        };
        let Some(account) = found else {
            return Ok(Ok(Callee {
                account: callee.into(),
                exists: false,
                accepts_caller: false,
                online_devices: Vec::new(),
                relay_only: false,
            }));
        };
        let caller_p2p = courier_accounts::store::account(db, &from.account).await?.map(|caller| caller.settings.p2p);
        let blocked = courier_accounts::store::has_blocked(db, &account.id, &from.account).await?;
        Ok(Ok(Callee {
            account: account.id.into(),
            exists: true,
            accepts_caller: account.settings.calls_from == CallsFrom::Everybody && !blocked,
            online_devices: Vec::new(),
            relay_only: account.settings.p2p == P2p::Never || caller_p2p == Some(P2p::Never),
        }))
    }

    async fn write_records(&self, writes: Vec<RecordWrite>) {
        let db = &self.inner.db;
        for write in writes {
            let now = now_ms();
            let result = match &write {
                RecordWrite::Answer { call_id, device } => store::record_answer(db, call_id, device, now).await,
                RecordWrite::End { call_id, reason, talking } => {
                    let answered_at = talking.map(|talking| now.saturating_sub(talking.as_millis() as i64));
                    metrics::counter!("signaling_calls_ended_total", "reason" => reason.as_str()).increment(1);
                    store::record_end(db, call_id, *reason, answered_at, now).await
                }
            };
            if let Err(error) = result {
                tracing::error!(%error, "cannot write a call record");
            }
        }
    }

    fn spawn_writes(&self, writes: Vec<RecordWrite>) {
        if writes.is_empty() {
            return;
        }
        let hub = self.clone();
        tokio::spawn(async move { hub.write_records(writes).await });
    }

    /// Ends what time ran out on (ring timeouts, lost devices past the grace period).
    pub async fn tick(&self) {
        let mut writes = Vec::new();
        match &self.inner.cluster {
            None => {
                let mut state = self.state();
                let outputs = state.board.tick(At::now());
                deliver(&mut state, outputs, &mut writes);
            }
            Some(cluster) => match cluster.tick(At::now()).await {
                Ok(outputs) => ended_writes(outputs, &mut writes),
                Err(error) => tracing::warn!(%error, "cannot check the calls' deadlines in the shared call state"),
            },
        }
        self.write_records(writes).await;
    }

    /// Keeps this node's heartbeat fresh, disconnects the devices of nodes
    /// whose heartbeat lapsed, and retries disconnects Redis missed.
    async fn keep_alive(&self, cluster: &Cluster) {
        match cluster.heartbeat().await {
            Ok(true) => {}
            Ok(false) => {
                tracing::error!("this node's heartbeat lapsed; dropping its connections so their devices reconnect");
                self.close_all(close::RECONNECT);
            }
            Err(error) => tracing::warn!(%error, "cannot refresh this node's heartbeat"),
        }
        let mut writes = Vec::new();
        let pending = std::mem::take(&mut *lock(&self.inner.pending_detaches));
        for (endpoint, tag) in pending {
            match cluster.detach(&endpoint, Owner::Link(&tag), At::now()).await {
                Ok(outputs) => ended_writes(outputs, &mut writes),
                Err(_) => lock(&self.inner.pending_detaches).push((endpoint, tag)),
            }
        }
        match cluster.reap(At::now()).await {
            Ok(outputs) => ended_writes(outputs, &mut writes),
            Err(error) => tracing::warn!(%error, "cannot check the other signaling nodes"),
        }
        self.write_records(writes).await;
    }

    /// Hands what arrives on the devices' channels to their connections here.
    /// When the subscription breaks, this node's connections are dropped
    /// (they may have missed events) and a new subscription is made.
    async fn dispatch(self, cluster: Arc<Cluster>, mut stream: PubSubStream) {
        loop {
            while let Some(message) = stream.next().await {
                let Some(device) = cluster.channel_device(message.get_channel_name()) else { continue };
                let Some(delivery) = Delivery::parse(message.get_payload_bytes()) else { continue };
                let state = self.state();
                let Some(link) = state.links.get(device) else { continue };
                match delivery {
                    Delivery::Frame(frame) => link.outbox.push(frame),
                    Delivery::Replaced(tag) => {
                        if cluster.tag(link.id) != tag {
                            link.outbox.close(close::REPLACED);
                        }
                    }
                }
            }
            if self.inner.stopping.is_cancelled() {
                return;
            }
            tracing::error!("lost the Redis subscription; dropping this node's connections so their devices reconnect");
            self.close_all(close::RECONNECT);
            stream = loop {
                match cluster.subscriber().await {
                    Ok(stream) => break stream,
                    Err(error) => {
                        tracing::warn!(%error, "cannot subscribe on Redis; retrying");
                        if self.inner.stopping.is_cancelled() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            };
        }
    }

    /// Runs the hub's clock until `shutdown`, then ends every call with
    /// `server_shutdown`, closes every socket and waits (bounded) for them.
    pub async fn run(self, shutdown: CancellationToken) {
        let resolution = (self.inner.config.ring_timeout.min(self.inner.config.reconnect_grace) / 10)
            .clamp(Duration::from_millis(20), Duration::from_millis(250));
        let mut clock = tokio::time::interval(resolution);
        clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let cluster = self.inner.cluster.clone();
        let beat = cluster.as_ref().map_or(Duration::from_secs(3600), |cluster| cluster.heartbeat_interval());
        let mut heartbeat = tokio::time::interval(beat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let subscriber = lock(&self.inner.subscriber).take();
        if let (Some(cluster), Some(stream)) = (&cluster, subscriber) {
            tokio::spawn(self.clone().dispatch(cluster.clone(), stream));
        }
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = clock.tick() => self.tick().await,
                _ = heartbeat.tick(), if cluster.is_some() => {
                    if let Some(cluster) = &cluster {
                        self.keep_alive(cluster).await;
                    }
                }
            }
        }
        self.inner.stopping.cancel();
        let mut writes = Vec::new();
        if cluster.is_none() {
            // This process held every call: they end with it.
            let mut state = self.state();
            let outputs = state.board.shutdown(At::now());
            deliver(&mut state, outputs, &mut writes);
        }
        // With a cluster, the calls live on: their devices reconnect to another
        // node and resume within the grace period.
        self.close_all(close::GOING_AWAY);
        self.write_records(writes).await;
        let deadline = Instant::now() + SHUTDOWN_DRAIN;
        while self.connections() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some(cluster) = &cluster {
            let mut writes = Vec::new();
            match cluster.leave(At::now()).await {
                Ok(outputs) => ended_writes(outputs, &mut writes),
                Err(error) => {
                    tracing::warn!(%error, "cannot leave the cluster; other nodes will notice the lapsed heartbeat")
                }
            }
            self.write_records(writes).await;
        }
    }
}

/// How long shutdown waits for sockets to flush their last frames.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(3);

impl From<Ended> for RecordWrite {
    fn from(ended: Ended) -> Self {
        RecordWrite::End { call_id: ended.call_id, reason: ended.reason, talking: ended.talking }
    }
}

/// Queues the machine's events on the devices' outboxes and collects the
/// record writes its outputs call for.
fn deliver(state: &mut State, outputs: Vec<Output>, writes: &mut Vec<RecordWrite>) {
    for output in outputs {
        match output {
            Output::Send { to, event } => {
                if let Some(link) = state.links.get(&to) {
                    link.outbox.push(event_frame(&event));
                }
            }
            Output::Ended(ended) => writes.push(ended.into()),
        }
    }
    meters().calls_in_progress.set(state.board.calls_in_progress() as f64);
}

/// Metric handles used on every message, looked up once (after the
/// recorder is installed: the first message comes after start-up).
pub struct Meters {
    pub messages: metrics::Counter,
    pub calls_in_progress: metrics::Gauge,
}

pub fn meters() -> &'static Meters {
    static METERS: std::sync::LazyLock<Meters> = std::sync::LazyLock::new(|| Meters {
        messages: metrics::counter!("signaling_messages_total"),
        calls_in_progress: metrics::gauge!("signaling_calls_in_progress"),
    });
    &METERS
}

/// The record writes for the calls among `outputs` that ended (their events
/// went out through the cluster).
fn ended_writes(outputs: Vec<Output>, writes: &mut Vec<RecordWrite>) {
    for output in outputs {
        if let Output::Ended(ended) = output {
            writes.push(ended.into());
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn reply_frame(id: &str, reply: Reply) -> Utf8Bytes {
    match reply {
        Reply::Ack => frame(&Ack { kind: "ack", id, ice_policy: None }),
        Reply::AckInvite { ice_policy } => frame(&Ack { kind: "ack", id, ice_policy: Some(ice_policy) }),
        Reply::Error(code, message) => error_frame(Some(id), code, message),
    }
}

#[derive(Serialize)]
struct Ack<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    ice_policy: Option<IcePolicy>,
}

#[derive(Serialize)]
struct Pong<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
}

#[derive(Serialize)]
struct ErrorFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: Option<&'a str>,
    code: &'static str,
    message: &'a str,
}

pub fn error_frame(id: Option<&str>, code: ErrorCode, message: &str) -> Utf8Bytes {
    frame(&ErrorFrame { kind: "error", id, code: code.as_str(), message })
}

/// Serializes a server frame, with the protocol version first, in one allocation.
pub fn frame(message: &impl Serialize) -> Utf8Bytes {
    frame_sized(message, 128)
}

/// An event's frame, in a buffer sized for it.
pub fn event_frame(event: &ServerEvent) -> Utf8Bytes {
    frame_sized(event, event.frame_bytes_hint())
}

/// [`frame`], with room for `capacity` bytes from the start (no regrowth
/// for a frame carrying SDP or candidates).
fn frame_sized(message: &impl Serialize, capacity: usize) -> Utf8Bytes {
    const PREFIX: &[u8] = b"{\"v\":1";
    const _: () = assert!(PROTOCOL_VERSION == 1);
    let mut bytes = Vec::with_capacity(capacity);
    bytes.extend_from_slice(PREFIX);
    if serde_json::to_writer(&mut bytes, message).is_err() || bytes.len() < PREFIX.len() + 2 {
        return Utf8Bytes::from_static("{\"v\":1}");
    }
    // `{"v":1` + `{…}` → `{"v":1,…}` (or `{"v":1}` for an empty object).
    if bytes[PREFIX.len() + 1] == b'}' {
        bytes.truncate(PREFIX.len());
        bytes.push(b'}');
    } else {
        bytes[PREFIX.len()] = b',';
    }
    // serde_json writes valid UTF-8.
    Utf8Bytes::from(String::from_utf8(bytes).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_the_version_first() {
        let event = ServerEvent::Ringing { call_id: CallId::parse("c-1").unwrap() };
        assert_eq!(frame(&event).as_str(), r#"{"v":1,"type":"ringing","call_id":"c-1"}"#);
        assert_eq!(frame(&serde_json::json!({})).as_str(), r#"{"v":1}"#);
        let error = error_frame(None, ErrorCode::BadMessage, "no");
        assert_eq!(error.as_str(), r#"{"v":1,"type":"error","id":null,"code":"bad_message","message":"no"}"#);
    }
}
