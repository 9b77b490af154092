//! Signaling across several nodes through Redis (`--redis-url`).
//!
//! Each node holds its own WebSocket connections; what the nodes share lives
//! in Redis, under one key prefix:
//!
//! - `{prefix}:call:{id}`: each call in progress, the machine's [`Call`] as JSON;
//! - `{prefix}:acct:{account}`: the ids of the calls an account is in (for busy and glare);
//! - `{prefix}:online:{account}`: the account's connected devices, each → `{node}/{link}`;
//! - `{prefix}:deadlines`: call ids scored by their next deadline (ring timeout, grace period);
//! - `{prefix}:node:{node}` (a heartbeat that expires), `{prefix}:nodes` and
//!   `{prefix}:node-devices:{node}` (the devices each node holds).
//!
//! One step of the call state machine is one optimistic transaction: WATCH
//! the keys the step reads, load the calls, run the same [`Switchboard`] code
//! a single node runs, then MULTI/EXEC the changed calls together with the
//! PUBLISH of every event. When another node changed a watched key in
//! between, EXEC applies nothing and the step runs again on the new state.
//! So each race (glare, two answers, a hangup crossing an answer) has exactly
//! one outcome, and events leave in the order the state changed. Messages
//! that only relay within a call (candidates, negotiate, ringing, SAS reveal)
//! read the call and publish, without a transaction.
//!
//! Every device has a channel, `{prefix}:dev:{device}`, which the node
//! holding its connection subscribes to. A node that dies stops refreshing
//! its heartbeat; the first node to notice disconnects its devices, so the
//! other side of each call gets `lost_connection` after the grace period
//! unless the device reconnects (to any node) and resumes.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use redis::{Client, RedisError, Value};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::machine::{At, Call, Callee, Endpoint, Limits, Output, Reply, Switchboard};
use courier_protocol::{CallId, ClientBody};

pub const REDIS_KEY_PREFIX_DEFAULT: &str = "courier:signaling";
pub const REDIS_NODE_TTL_S_DEFAULT: u64 = 10;
/// Connections kept for transactions (WATCH binds to a connection, so each
/// serves one transaction at a time).
const TRANSACTION_CONNECTIONS: usize = 4;
/// A step that keeps losing races this often reports an error instead.
const TRANSACTION_ATTEMPTS: usize = 64;
/// Calls past their deadline handled per tick.
const DUE_PER_TICK: isize = 256;
/// What a device's channel carries besides frames: the link that replaced it.
const REPLACED_PREFIX: &str = "R:";
/// What a device's channel carries when the device was signed out.
const REVOKED: &str = "X";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub url: String,
    pub key_prefix: String,
    /// A node whose heartbeat is older than this is taken for dead.
    pub node_ttl: Duration,
}

/// Which connection a presence entry must name for a disconnect to apply.
#[derive(Debug, Clone, Copy)]
pub enum Owner<'a> {
    /// Exactly this `{node}/{link}`.
    Link(&'a str),
    /// Any link of this node (a dead or leaving node).
    Node(&'a str),
}

impl Owner<'_> {
    fn owns(&self, tag: &str) -> bool {
        match self {
            Owner::Link(link) => tag == *link,
            Owner::Node(node) => tag.split_once('/').is_some_and(|(owner, _)| owner == *node),
        }
    }
}

/// What arrives on a device's channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Frame(Utf8Bytes),
    /// A newer connection of the device (this `{node}/{link}`) took over.
    Replaced(String),
    /// The device was signed out.
    Revoked,
}

impl Delivery {
    pub fn parse(payload: &[u8]) -> Option<Delivery> {
        let text = std::str::from_utf8(payload).ok()?;
        if let Some(tag) = text.strip_prefix(REPLACED_PREFIX) {
            Some(Delivery::Replaced(tag.to_owned()))
        } else if text == REVOKED {
            Some(Delivery::Revoked)
        } else if text.starts_with('{') {
            Some(Delivery::Frame(Utf8Bytes::from(text.to_owned())))
        } else {
            None
        }
    }
}

/// Whether a device's channel is to be subscribed or unsubscribed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subscription {
    Subscribe,
    Unsubscribe,
}

/// The account has as many devices connected as allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyDevices;

struct Keys {
    prefix: String,
}

impl Keys {
    fn call(&self, id: &str) -> String {
        format!("{}:call:{id}", self.prefix)
    }
    fn account(&self, account: &str) -> String {
        format!("{}:acct:{account}", self.prefix)
    }
    fn online(&self, account: &str) -> String {
        format!("{}:online:{account}", self.prefix)
    }
    fn deadlines(&self) -> String {
        format!("{}:deadlines", self.prefix)
    }
    fn node(&self, node: &str) -> String {
        format!("{}:node:{node}", self.prefix)
    }
    fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }
    fn node_devices(&self, node: &str) -> String {
        format!("{}:node-devices:{node}", self.prefix)
    }
    fn device_channel(&self, device: &str) -> String {
        format!("{}:dev:{device}", self.prefix)
    }

    /// Adds a PUBLISH of each event among `outputs` to its device's channel;
    /// returns how many.
    fn publish_events(&self, pipe: &mut redis::Pipeline, outputs: &[Output]) -> usize {
        let mut published = 0;
        for output in outputs {
            if let Output::Send { to, event } = output {
                pipe.cmd("PUBLISH").arg(self.device_channel(to)).arg(event.frame()).ignore();
                published += 1;
            }
        }
        published
    }
}

/// What one step read: the calls it loaded, in a switchboard, and the
/// presence of the accounts it named.
struct View {
    board: Switchboard,
    online: HashMap<String, HashMap<String, String>>,
}

impl View {
    /// The connected devices of `account` → their `{node}/{link}`.
    fn online(&self, account: &str) -> Option<&HashMap<String, String>> {
        self.online.get(account)
    }
}

enum Presence {
    Online { account: String, device: String, tag: String },
    Offline { account: String, device: String },
}

/// What a step changes besides its calls.
#[derive(Default)]
struct Effects {
    outputs: Vec<Output>,
    presence: Vec<Presence>,
    /// Raw messages for devices' channels.
    notices: Vec<(String, String)>,
}

impl Effects {
    fn outputs(outputs: Vec<Output>) -> Self {
        Effects { outputs, ..Effects::default() }
    }
}

/// This node's handle on the shared state.
pub struct Cluster {
    node: String,
    keys: Keys,
    limits: Limits,
    devices_per_account_max: usize,
    node_ttl: Duration,
    client: Client,
    /// For reads and publishes outside transactions (a multiplexed
    /// connection serves many requests at once).
    shared: Mutex<Option<MultiplexedConnection>>,
    transactions: Vec<Mutex<Option<MultiplexedConnection>>>,
    next_transaction: AtomicUsize,
    /// Subscribing and unsubscribing go through here, one at a time, so that
    /// they reach Redis in the order the hub decided them.
    sink: Mutex<Option<PubSubSink>>,
    registered: AtomicBool,
}

impl Cluster {
    /// Connects to Redis and names this node. Fails when Redis cannot be reached.
    pub async fn connect(
        config: &ClusterConfig,
        limits: Limits,
        devices_per_account_max: usize,
    ) -> Result<Cluster, RedisError> {
        let client = Client::open(config.url.as_str())?;
        let shared = client.get_multiplexed_async_connection().await?;
        let cluster = Cluster {
            node: uuid::Uuid::now_v7().simple().to_string(),
            keys: Keys { prefix: config.key_prefix.clone() },
            limits,
            devices_per_account_max,
            node_ttl: config.node_ttl,
            client,
            shared: Mutex::new(Some(shared)),
            transactions: (0..TRANSACTION_CONNECTIONS).map(|_| Mutex::new(None)).collect(),
            next_transaction: AtomicUsize::new(0),
            sink: Mutex::new(None),
            registered: AtomicBool::new(false),
        };
        cluster.heartbeat().await?;
        Ok(cluster)
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// How often the node refreshes its heartbeat and looks for dead nodes.
    pub fn heartbeat_interval(&self) -> Duration {
        (self.node_ttl / 4).max(Duration::from_millis(100))
    }

    /// The `{node}/{link}` a connection of this node is known by.
    pub fn tag(&self, link: u64) -> String {
        format!("{}/{link}", self.node)
    }

    /// The device a channel name belongs to.
    pub fn channel_device<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel.strip_prefix(self.keys.prefix.as_str())?.strip_prefix(":dev:")
    }

    /// Opens the subscription connection and returns the stream of what
    /// arrives on the subscribed channels. Devices subscribed on an earlier
    /// connection are not subscribed on this one.
    pub async fn subscriber(&self) -> Result<PubSubStream, RedisError> {
        let (sink, stream) = self.client.get_async_pubsub().await?.split();
        *self.sink.lock().await = Some(sink);
        Ok(stream)
    }

    /// Runs `decide` (which updates the hub's links) and then subscribes or
    /// unsubscribes the device's channel as it says, with no other
    /// subscription change in between.
    pub async fn subscriptions<R>(
        &self,
        decide: impl FnOnce() -> (R, Option<(Subscription, String)>),
    ) -> (R, Result<(), RedisError>) {
        let mut sink = self.sink.lock().await;
        let (result, change) = decide();
        let Some((change, device)) = change else { return (result, Ok(())) };
        let Some(active) = sink.as_mut() else {
            return (result, Err(RedisError::from((redis::ErrorKind::Io, "no subscription connection"))));
        };
        let channel = self.keys.device_channel(&device);
        let done = match change {
            Subscription::Subscribe => active.subscribe(&channel).await,
            Subscription::Unsubscribe => active.unsubscribe(&channel).await,
        };
        if done.is_err() {
            *sink = None;
        }
        (result, done)
    }

    async fn shared(&self) -> Result<MultiplexedConnection, RedisError> {
        let mut shared = self.shared.lock().await;
        if let Some(connection) = shared.as_ref() {
            return Ok(connection.clone());
        }
        let connection = self.client.get_multiplexed_async_connection().await?;
        *shared = Some(connection.clone());
        Ok(connection)
    }

    async fn forget_shared(&self) {
        *self.shared.lock().await = None;
    }

    /// Runs `command` on the shared connection; a failed connection is
    /// replaced on the next call.
    async fn query<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> Result<T, RedisError> {
        let mut connection = self.shared().await?;
        let result = command.query_async(&mut connection).await;
        if result.is_err() {
            self.forget_shared().await;
        }
        result
    }

    async fn query_pipe<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, RedisError> {
        let mut connection = self.shared().await?;
        let result = pipe.query_async(&mut connection).await;
        if result.is_err() {
            self.forget_shared().await;
        }
        result
    }

    /// Tells every node holding a connection of `device` that it was signed out.
    pub async fn publish_revoked(&self, device: &str) -> Result<(), RedisError> {
        self.query(redis::cmd("PUBLISH").arg(self.keys.device_channel(device)).arg(REVOKED)).await
    }

    /// Feeds a device's message to the machine. An invite comes with what
    /// the hub looked up about its callee; the callee's online devices are
    /// read here, within the step.
    pub async fn handle(
        &self,
        from: &Endpoint,
        body: ClientBody,
        callee: Option<Callee>,
        now: At,
    ) -> Result<(Reply, Vec<Output>), RedisError> {
        let Some(call_id) = body.call_id().cloned() else {
            return Ok(Switchboard::with_calls(self.limits, []).handle(from, body, callee, now));
        };
        let body = if body.changes_call() {
            body
        } else {
            match self.relay(from, body, &call_id, now).await? {
                Ok(relayed) => return Ok(relayed),
                Err(body) => body,
            }
        };
        let accounts: Vec<&str> = match &callee {
            Some(callee) if matches!(body, ClientBody::Invite { .. }) => vec![&from.account, &callee.account],
            _ => Vec::new(),
        };
        self.transact(&accounts, &[&call_id], |view| {
            let callee = callee.clone().map(|mut callee| {
                let mut devices: Vec<String> =
                    view.online(&callee.account).map(|online| online.keys().cloned().collect()).unwrap_or_default();
                devices.sort();
                callee.online_devices = devices.into_iter().map(Into::into).collect();
                callee
            });
            let (reply, outputs) = view.board.handle(from, body.clone(), callee, now);
            (reply, Effects::outputs(outputs))
        })
        .await
    }

    /// A message that does not change its call: read the call, let the
    /// machine check and route it, publish. A call with a device away is
    /// changed by what is held for that device: the message is given back,
    /// to be handled in a transaction.
    async fn relay(
        &self,
        from: &Endpoint,
        body: ClientBody,
        call_id: &CallId,
        now: At,
    ) -> Result<Result<(Reply, Vec<Output>), ClientBody>, RedisError> {
        let json: Option<String> = self.query(redis::cmd("GET").arg(self.keys.call(call_id.as_str()))).await?;
        let calls = json.and_then(|json| parse_call(call_id.as_str(), &json));
        if calls.as_ref().is_some_and(|call| call.has_lost()) {
            return Ok(Err(body));
        }
        let mut board = Switchboard::with_calls(self.limits, calls);
        let (reply, outputs) = board.handle(from, body, None, now);
        let mut publish = redis::pipe();
        if self.keys.publish_events(&mut publish, &outputs) > 0 {
            self.query_pipe::<()>(&publish).await?;
        }
        Ok(Ok((reply, outputs)))
    }

    /// Registers a device's new connection `tag`. A connection the device
    /// still had (on any node) is told it was replaced, and its calls get the
    /// grace period, as if it had dropped.
    pub async fn attach(
        &self,
        endpoint: &Endpoint,
        tag: &str,
        now: At,
    ) -> Result<Result<Vec<Output>, TooManyDevices>, RedisError> {
        let max = self.devices_per_account_max;
        let (result, outputs) = self
            .transact(&[&endpoint.account], &[], |view| {
                let online = view.online(&endpoint.account);
                let previous = online.and_then(|online| online.get(&*endpoint.device)).cloned();
                if previous.is_none() && online.map_or(0, HashMap::len) >= max {
                    return (Err(TooManyDevices), Effects::default());
                }
                let mut effects = Effects::default();
                if previous.is_some() {
                    effects.outputs = view.board.disconnected(endpoint, now);
                    effects.notices.push((endpoint.device.to_string(), format!("{REPLACED_PREFIX}{tag}")));
                }
                effects.presence.push(Presence::Online {
                    account: endpoint.account.to_string(),
                    device: endpoint.device.to_string(),
                    tag: tag.to_owned(),
                });
                (Ok(()), effects)
            })
            .await?;
        Ok(result.map(|()| outputs))
    }

    /// A device's connection ended: if the presence entry is still the one
    /// `owner` names, the device goes offline and its calls hear of it.
    pub async fn detach(
        &self,
        endpoint: &Endpoint,
        owner: Owner<'_>,
        signed_out: bool,
        now: At,
    ) -> Result<Vec<Output>, RedisError> {
        let ((), outputs) = self
            .transact(&[&endpoint.account], &[], |view| {
                let owned = view
                    .online(&endpoint.account)
                    .and_then(|online| online.get(&*endpoint.device))
                    .is_some_and(|tag| owner.owns(tag));
                if !owned {
                    return ((), Effects::default());
                }
                let outputs = if signed_out {
                    view.board.signed_out(endpoint, now)
                } else {
                    view.board.disconnected(endpoint, now)
                };
                let mut effects = Effects::outputs(outputs);
                effects.presence.push(Presence::Offline {
                    account: endpoint.account.to_string(),
                    device: endpoint.device.to_string(),
                });
                ((), effects)
            })
            .await?;
        Ok(outputs)
    }

    /// This node no longer holds any connection of `device`.
    pub async fn forget_device(&self, device: &str) -> Result<(), RedisError> {
        self.query(redis::cmd("HDEL").arg(self.keys.node_devices(&self.node)).arg(device)).await
    }

    /// Ends what time ran out on, for calls of every node.
    pub async fn tick(&self, now: At) -> Result<Vec<Output>, RedisError> {
        let due: Vec<String> = self
            .query(
                redis::cmd("ZRANGEBYSCORE")
                    .arg(self.keys.deadlines())
                    .arg("-inf")
                    .arg(now.0)
                    .arg("LIMIT")
                    .arg(0)
                    .arg(DUE_PER_TICK),
            )
            .await?;
        let mut outputs = Vec::new();
        for id in due {
            let Ok(call_id) = CallId::parse(&id) else {
                self.query::<()>(redis::cmd("ZREM").arg(self.keys.deadlines()).arg(&id)).await?;
                continue;
            };
            let ((), ended) =
                self.transact(&[], &[&call_id], |view| ((), Effects::outputs(view.board.tick(now)))).await?;
            outputs.extend(ended);
        }
        Ok(outputs)
    }

    /// Refreshes this node's heartbeat. `Ok(false)` means the heartbeat had
    /// lapsed, so other nodes may have disconnected this node's devices: the
    /// hub must drop its connections (their devices reconnect and resume).
    pub async fn heartbeat(&self) -> Result<bool, RedisError> {
        let ttl_ms = u64::try_from(self.node_ttl.as_millis()).unwrap_or(u64::MAX);
        let key = self.keys.node(&self.node);
        if self.registered.load(Ordering::Acquire) {
            let refreshed: Option<String> =
                self.query(redis::cmd("SET").arg(&key).arg(1).arg("PX").arg(ttl_ms).arg("XX")).await?;
            if refreshed.is_some() {
                return Ok(true);
            }
        }
        let mut register = redis::pipe();
        register.cmd("SET").arg(&key).arg(1).arg("PX").arg(ttl_ms).ignore();
        register.cmd("SADD").arg(self.keys.nodes()).arg(&self.node).ignore();
        self.query_pipe::<()>(&register).await?;
        Ok(!self.registered.swap(true, Ordering::AcqRel))
    }

    /// Finds nodes whose heartbeat lapsed and disconnects their devices.
    pub async fn reap(&self, now: At) -> Result<Vec<Output>, RedisError> {
        let nodes: Vec<String> = self.query(redis::cmd("SMEMBERS").arg(self.keys.nodes())).await?;
        let mut outputs = Vec::new();
        for node in nodes.iter().filter(|node| **node != self.node) {
            let alive: bool = self.query(redis::cmd("EXISTS").arg(self.keys.node(node))).await?;
            if !alive {
                tracing::warn!(node = %node, "a signaling node stopped; its devices are disconnected");
                outputs.extend(self.disconnect_node(node, now).await?);
            }
        }
        Ok(outputs)
    }

    /// Disconnects every device `node` held and removes the node. Safe to
    /// run twice, or on two nodes at once.
    async fn disconnect_node(&self, node: &str, now: At) -> Result<Vec<Output>, RedisError> {
        let devices: HashMap<String, String> =
            self.query(redis::cmd("HGETALL").arg(self.keys.node_devices(node))).await?;
        let mut outputs = Vec::new();
        for (device, account) in devices {
            outputs.extend(
                // A lapsed node's devices may come back through another node.
                self.detach(
                    &Endpoint { account: account.into(), device: device.into() },
                    Owner::Node(node),
                    false,
                    now,
                )
                .await?,
            );
        }
        let mut forget = redis::pipe();
        forget.cmd("DEL").arg(self.keys.node_devices(node)).ignore();
        forget.cmd("DEL").arg(self.keys.node(node)).ignore();
        forget.cmd("SREM").arg(self.keys.nodes()).arg(node).ignore();
        self.query_pipe::<()>(&forget).await?;
        Ok(outputs)
    }

    /// This node is stopping: its remaining devices are disconnected (their
    /// calls get the grace period, to resume on another node).
    pub async fn leave(&self, now: At) -> Result<Vec<Output>, RedisError> {
        self.registered.store(false, Ordering::Release);
        self.disconnect_node(&self.node.clone(), now).await
    }

    /// One optimistic transaction: loads what `step` needs (the calls and
    /// presence of `accounts`, and the calls `calls`), runs it, and commits
    /// its changes and events at once, or runs it again on fresh state.
    async fn transact<R>(
        &self,
        accounts: &[&str],
        calls: &[&CallId],
        mut step: impl FnMut(&mut View) -> (R, Effects),
    ) -> Result<(R, Vec<Output>), RedisError> {
        let slot = self.next_transaction.fetch_add(1, Ordering::Relaxed) % self.transactions.len();
        let mut slot = self.transactions[slot].lock().await;
        // A connection that failed is dropped, never reused: its WATCH state is unknown.
        let mut connection = match slot.take() {
            Some(connection) => connection,
            None => self.client.get_multiplexed_async_connection().await?,
        };
        for _ in 0..TRANSACTION_ATTEMPTS {
            match self.attempt(&mut connection, accounts, calls, &mut step).await? {
                Some(done) => {
                    *slot = Some(connection);
                    return Ok(done);
                }
                None => metrics::counter!("signaling_cluster_retries_total").increment(1),
            }
        }
        *slot = Some(connection);
        Err(RedisError::from((redis::ErrorKind::Io, "the call state kept changing; gave up")))
    }

    async fn attempt<R>(
        &self,
        connection: &mut MultiplexedConnection,
        accounts: &[&str],
        calls: &[&CallId],
        step: &mut impl FnMut(&mut View) -> (R, Effects),
    ) -> Result<Option<(R, Vec<Output>)>, RedisError> {
        let (read, online) = self.watch_and_read(connection, accounts, calls).await?;
        let board = Switchboard::with_calls(self.limits, read.loaded.values().map(|(_, call)| call.clone()));
        let mut view = View { board, online };
        let (result, effects) = step(&mut view);
        let (commit, commands) = self.commit_of(&read, calls, &view, &effects)?;
        if commands == 0 {
            redis::cmd("UNWATCH").query_async::<()>(connection).await?;
            return Ok(Some((result, effects.outputs)));
        }
        let committed: Option<()> = commit.query_async(connection).await?;
        Ok(committed.map(|()| (result, effects.outputs)))
    }

    /// WATCHes the keys a step reads and reads them: the calls `calls` and
    /// those `accounts` are in, and the accounts' connected devices (each →
    /// its `{node}/{link}`).
    async fn watch_and_read(
        &self,
        connection: &mut MultiplexedConnection,
        accounts: &[&str],
        calls: &[&CallId],
    ) -> Result<(Read, HashMap<String, HashMap<String, String>>), RedisError> {
        let keys = &self.keys;
        let mut watched: Vec<String> = Vec::new();
        for account in accounts {
            watched.push(keys.account(account));
            watched.push(keys.online(account));
        }
        watched.extend(calls.iter().map(|id| keys.call(id.as_str())));
        redis::cmd("WATCH").arg(&watched).query_async::<()>(connection).await?;

        // Which calls the accounts are in, and their devices.
        let mut ids: BTreeSet<String> = calls.iter().map(|id| id.as_str().to_owned()).collect();
        let mut listed: HashMap<String, Vec<String>> = HashMap::new();
        let mut online = HashMap::new();
        if !accounts.is_empty() {
            let mut read = redis::pipe();
            for account in accounts {
                read.cmd("SMEMBERS").arg(keys.account(account));
                read.cmd("HGETALL").arg(keys.online(account));
            }
            let values: Vec<Value> = read.query_async(connection).await?;
            let mut values = values.into_iter();
            for account in accounts {
                let members: Vec<String> = redis::from_redis_value(values.next().unwrap_or(Value::Nil))?;
                let devices: HashMap<String, String> = redis::from_redis_value(values.next().unwrap_or(Value::Nil))?;
                for id in members {
                    listed.entry(id.clone()).or_default().push((*account).to_owned());
                    ids.insert(id);
                }
                online.insert((*account).to_owned(), devices);
            }
        }

        // The calls themselves.
        let ids: Vec<String> = ids.into_iter().collect();
        let mut loaded: HashMap<String, (String, Call)> = HashMap::new();
        let listed_keys: Vec<String> =
            ids.iter().filter(|id| listed.contains_key(*id)).map(|id| keys.call(id)).collect();
        if !listed_keys.is_empty() {
            redis::cmd("WATCH").arg(&listed_keys).query_async::<()>(connection).await?;
        }
        if !ids.is_empty() {
            let call_keys: Vec<String> = ids.iter().map(|id| keys.call(id)).collect();
            let jsons: Vec<Option<String>> = redis::cmd("MGET").arg(&call_keys).query_async(connection).await?;
            for (id, json) in ids.iter().zip(jsons) {
                if let Some(call) = json.as_deref().and_then(|json| parse_call(id, json)) {
                    loaded.insert(id.clone(), (json.unwrap_or_default(), call));
                }
            }
        }
        Ok((Read { ids, listed, loaded }, online))
    }

    /// The MULTI/EXEC of what a step changed (calls written or dropped with
    /// their indexes, presence, notices, events), and how many commands it
    /// holds.
    fn commit_of(
        &self,
        read: &Read,
        calls: &[&CallId],
        view: &View,
        effects: &Effects,
    ) -> Result<(redis::Pipeline, usize), RedisError> {
        let keys = &self.keys;
        let mut commit = redis::pipe();
        commit.atomic();
        let mut commands = 0;
        for call in view.board.calls() {
            let id = call.id().as_str();
            let json = serde_json::to_string(call).map_err(|error| {
                RedisError::from((redis::ErrorKind::Client, "cannot encode a call", error.to_string()))
            })?;
            if read.loaded.get(id).is_some_and(|(before, _)| *before == json) {
                continue;
            }
            commit.cmd("SET").arg(keys.call(id)).arg(&json).ignore();
            for account in call.accounts() {
                commit.cmd("SADD").arg(keys.account(account)).arg(id).ignore();
            }
            match call.next_deadline() {
                Some(at) => commit.cmd("ZADD").arg(keys.deadlines()).arg(at.0).arg(id).ignore(),
                None => commit.cmd("ZREM").arg(keys.deadlines()).arg(id).ignore(),
            };
            commands += 1;
        }
        for id in &read.ids {
            if view.board.call(id).is_some() {
                continue;
            }
            // Ended (or never there, or unreadable): drop it and every index entry.
            let mut accounts: BTreeSet<&str> = read.listed.get(id).into_iter().flatten().map(String::as_str).collect();
            let was_loaded = read.loaded.get(id);
            if let Some((_, call)) = was_loaded {
                accounts.extend(call.accounts());
            }
            let in_calls = calls.iter().any(|requested| requested.as_str() == id);
            if was_loaded.is_none() && accounts.is_empty() && !in_calls {
                continue;
            }
            commit.cmd("DEL").arg(keys.call(id)).ignore();
            for account in accounts {
                commit.cmd("SREM").arg(keys.account(account)).arg(id).ignore();
            }
            commit.cmd("ZREM").arg(keys.deadlines()).arg(id).ignore();
            commands += 1;
        }
        for change in &effects.presence {
            match change {
                Presence::Online { account, device, tag } => {
                    commit.cmd("HSET").arg(keys.online(account)).arg(device).arg(tag).ignore();
                    commit.cmd("HSET").arg(keys.node_devices(&self.node)).arg(device).arg(account).ignore();
                }
                Presence::Offline { account, device } => {
                    commit.cmd("HDEL").arg(keys.online(account)).arg(device).ignore();
                }
            }
            commands += 1;
        }
        for (device, notice) in &effects.notices {
            commit.cmd("PUBLISH").arg(keys.device_channel(device)).arg(notice).ignore();
            commands += 1;
        }
        commands += keys.publish_events(&mut commit, &effects.outputs);
        Ok((commit, commands))
    }
}

/// What one attempt read under WATCH.
struct Read {
    /// Every call id the step may touch.
    ids: Vec<String>,
    /// The accounts that list each call (from their indexes).
    listed: HashMap<String, Vec<String>>,
    /// The calls that exist, with the JSON they were read as.
    loaded: HashMap<String, (String, Call)>,
}

fn parse_call(id: &str, json: &str) -> Option<Call> {
    match serde_json::from_str::<Call>(json) {
        Ok(call) => Some(call),
        Err(error) => {
            tracing::error!(call_id = %id, %error, "unreadable call state in Redis; the call is dropped");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_match_links_and_nodes() {
        assert!(Owner::Link("n1/4").owns("n1/4"));
        assert!(!Owner::Link("n1/4").owns("n1/40"));
        assert!(Owner::Node("n1").owns("n1/40"));
        assert!(!Owner::Node("n1").owns("n10/4"));
    }

    #[test]
    fn deliveries_parse() {
        assert_eq!(Delivery::parse(b"R:n1/4"), Some(Delivery::Replaced("n1/4".into())));
        assert_eq!(Delivery::parse(br#"{"v":1}"#), Some(Delivery::Frame(Utf8Bytes::from_static(r#"{"v":1}"#))));
        assert_eq!(Delivery::parse(b"X"), Some(Delivery::Revoked));
        assert_eq!(Delivery::parse(b"junk"), None);
        assert_eq!(Delivery::parse(&[0xff, b'{']), None);
    }
}
