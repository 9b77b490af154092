//! The hub: the one place a device's messages go. It counts connections,
//! looks up what the call state machine needs to know about a callee
//! (account, settings, blocks), hands each step to the [`Routing`] that
//! keeps the calls (this process alone, or a Redis cluster), and writes the
//! call records of what the steps did.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use courier_accounts::settings::{CallsFrom, P2p};
use courier_common::Database;
use courier_common::shutdown::CancellationToken;
use courier_common::time::now_ms;
use courier_protocol::event::{ack_frame, error_frame, pong_frame};
use courier_protocol::{CallId, ClientBody, ClientMessage, ErrorCode, HangupReason, close};

use crate::cluster::ClusterConfig;
use crate::config::SignalingConfig;
use crate::machine::{At, Callee, DeviceId, Ended, Endpoint, Reply};
use crate::outbox::Outbox;
use crate::routing::clustered::Clustered;
use crate::routing::local::Local;
use crate::routing::{AttachError, Link, Routing};
use crate::store;

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

#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    config: SignalingConfig,
    routing: Arc<dyn Routing>,
    connections: AtomicUsize,
    next_link: AtomicU64,
    stopping: CancellationToken,
}

/// A record write the steps call for, done after the step.
enum RecordWrite {
    Answer { call_id: CallId, device: String },
    End { call_id: CallId, reason: HangupReason, talking: Option<Duration> },
}

impl From<Ended> for RecordWrite {
    fn from(ended: Ended) -> Self {
        RecordWrite::End { call_id: ended.call_id, reason: ended.reason, talking: ended.talking }
    }
}

/// How a message was handled: answered at once, or by a future to await
/// (it looks things up or reaches the shared call state).
pub enum Handled<'a> {
    Now(String),
    /// The plain `ack` of a message relayed within a call: the connection
    /// may write it with the acks that follow (see `ws::ACKS_HELD_AT_MOST`).
    Relayed(String),
    Later(Pin<Box<dyn Future<Output = String> + Send + 'a>>),
}

/// How long shutdown waits for sockets to flush their last frames.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(3);

impl Hub {
    /// A hub that routes every call in this process.
    pub fn new(db: Database, config: SignalingConfig) -> Self {
        let routing = Local::new(config.machine_limits(), config.devices_per_account_max);
        Hub::with_routing(db, config, Arc::new(routing))
    }

    /// A hub that shares calls and presence with other nodes through Redis.
    pub async fn clustered(db: Database, config: SignalingConfig, cluster: &ClusterConfig) -> Result<Self, String> {
        let routing = Clustered::connect(cluster, config.machine_limits(), config.devices_per_account_max).await?;
        Ok(Hub::with_routing(db, config, Arc::new(routing)))
    }

    fn with_routing(db: Database, config: SignalingConfig, routing: Arc<dyn Routing>) -> Self {
        Hub {
            inner: Arc::new(Inner {
                db,
                config,
                routing,
                connections: AtomicUsize::new(0),
                next_link: AtomicU64::new(1),
                stopping: CancellationToken::new(),
            }),
        }
    }

    pub fn config(&self) -> &SignalingConfig {
        &self.inner.config
    }

    pub fn db(&self) -> &Database {
        &self.inner.db
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

    /// Registers an authenticated device; returns its link id. A newer
    /// connection of a device replaces the older one, which is closed.
    pub async fn attach(&self, endpoint: &Endpoint, outbox: Arc<Outbox>) -> Result<u64, AttachError> {
        if self.inner.stopping.is_cancelled() {
            return Err(AttachError::Stopping);
        }
        let id = self.inner.next_link.fetch_add(1, Ordering::Relaxed);
        let ended = self.inner.routing.attach(endpoint, Link { id, outbox }).await?;
        self.spawn_record_ended(ended);
        Ok(id)
    }

    /// Unregisters a device's connection `link` (if it is still the current
    /// one); a signed-out device's calls end at once.
    pub async fn detach(&self, endpoint: &Endpoint, link: u64, signed_out: bool) {
        self.record_ended(self.inner.routing.detach(endpoint, link, signed_out).await).await;
    }

    /// Closes the connections of the devices signed out (revoked), on every
    /// node, as `revocations` tells of them, until the hub stops.
    pub async fn watch_revocations(self, mut revocations: broadcast::Receiver<DeviceId>) {
        loop {
            let revoked = tokio::select! {
                revoked = revocations.recv() => revoked,
                () = self.inner.stopping.cancelled() => return,
            };
            match revoked {
                Ok(device) => {
                    metrics::counter!("signaling_devices_revoked_total").increment(1);
                    self.inner.routing.revoke(&device).await;
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::error!(
                        missed,
                        "missed revocations; their devices' sockets stay until their tokens expire"
                    );
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    /// Handles one message of an authenticated device: `ping` and, where the
    /// routing allows, the messages that only relay within a call (the hot
    /// path: candidates) are answered at once; the others by a future that
    /// looks up and records what it must. Events for other devices are
    /// queued on the way.
    pub fn handle<'a>(&'a self, from: &'a Endpoint, message: ClientMessage) -> Handled<'a> {
        let ClientMessage { id, body } = message;
        if let ClientBody::Ping = body {
            return Handled::Now(pong_frame(&id));
        }
        let body = if body.call_id().is_some() && !body.changes_call() {
            match self.inner.routing.relay_now(from, body, At::now()) {
                Ok((reply, ended)) => {
                    // Relaying ends no call; should that ever change, the records are still written.
                    self.spawn_record_ended(ended);
                    return match reply {
                        Reply::Ack => Handled::Relayed(reply_frame(&id, reply)),
                        reply => Handled::Now(reply_frame(&id, reply)),
                    };
                }
                Err(body) => body,
            }
        } else {
            body
        };
        Handled::Later(Box::pin(self.step(from, id, body)))
    }

    /// One step of the machine on a message, with what it needs looked up
    /// first and its records written before the answer.
    async fn step(&self, from: &Endpoint, id: String, body: ClientBody) -> String {
        let facts = match &body {
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
        let (reply, ended) = match self.inner.routing.step(from, body, facts, At::now()).await {
            Ok(stepped) => stepped,
            Err(error) => {
                tracing::error!(%error, "cannot reach the shared call state");
                return error_frame(Some(&id), ErrorCode::Internal, "the server could not reach the call state; retry");
            }
        };
        let mut writes: Vec<RecordWrite> = ended.into_iter().map(RecordWrite::from).collect();
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
        } else if courier_common::ids::is_uuid(callee) {
            courier_accounts::store::account(db, callee).await?
        } else {
            // Not an id the accounts service hands out: nobody.
            None
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

    async fn record_ended(&self, ended: Vec<Ended>) {
        self.write_records(ended.into_iter().map(RecordWrite::from).collect()).await;
    }

    /// [`Hub::record_ended`] without waiting for it.
    fn spawn_record_ended(&self, ended: Vec<Ended>) {
        if ended.is_empty() {
            return;
        }
        let hub = self.clone();
        tokio::spawn(async move { hub.record_ended(ended).await });
    }

    /// Runs the hub's clock (and the routing's upkeep) until `shutdown`, then
    /// ends the calls this node alone holds with `server_shutdown`, closes
    /// every socket and waits (bounded) for them.
    pub async fn run(self, shutdown: CancellationToken) {
        let routing = self.inner.routing.clone();
        let resolution = (self.inner.config.ring_timeout.min(self.inner.config.reconnect_grace) / 10)
            .clamp(Duration::from_millis(20), Duration::from_millis(250));
        let mut clock = tokio::time::interval(resolution);
        clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let upkeep_every = routing.upkeep_every();
        let mut upkeep = tokio::time::interval(upkeep_every.unwrap_or(Duration::from_secs(3_600)));
        upkeep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        routing.clone().start(self.inner.stopping.clone());
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = clock.tick() => self.record_ended(routing.tick(At::now()).await).await,
                _ = upkeep.tick(), if upkeep_every.is_some() => self.record_ended(routing.upkeep(At::now()).await).await,
            }
        }
        self.inner.stopping.cancel();
        let ended = routing.stop(At::now()).await;
        routing.close_all(close::GOING_AWAY);
        self.record_ended(ended).await;
        let deadline = Instant::now() + SHUTDOWN_DRAIN;
        while self.connections() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.record_ended(routing.leave(At::now()).await).await;
    }
}

fn reply_frame(id: &str, reply: Reply) -> String {
    match reply {
        Reply::Ack => ack_frame(id, None),
        Reply::AckInvite { ice_policy } => ack_frame(id, Some(ice_policy)),
        Reply::Error(code, message) => error_frame(Some(id), code, message),
    }
}
