//! Routing across signaling nodes that share Redis ([`Cluster`]): each step
//! runs on the shared state, events travel through the devices' channels,
//! and this node delivers what arrives for the devices connected to it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use courier_common::shutdown::CancellationToken;
use courier_common::sync::lock;
use courier_protocol::{ClientBody, close};
use futures::StreamExt;
use redis::aio::PubSubStream;

use super::{AttachError, Link, Routing, Unreachable, close_revoked, ended};
use crate::cluster::{Cluster, ClusterConfig, Delivery, Owner, Subscription, TooManyDevices};
use crate::machine::{At, Callee, DeviceId, Ended, Endpoint, Limits, Reply};

pub struct Clustered {
    cluster: Arc<Cluster>,
    /// This node's connections, by device.
    links: Mutex<HashMap<DeviceId, Link>>,
    /// What arrives for this node's devices, until [`Routing::start`] takes it.
    subscriber: Mutex<Option<PubSubStream>>,
    /// Disconnects the shared state has not heard of yet (Redis was down).
    /// With the link's tag and whether the device signed out.
    pending_detaches: Mutex<Vec<(Endpoint, String, bool)>>,
}

impl Clustered {
    /// Joins the cluster at `config`: fails when Redis cannot be reached.
    pub async fn connect(
        config: &ClusterConfig,
        limits: Limits,
        devices_per_account_max: usize,
    ) -> Result<Self, String> {
        let redacted = courier_common::db::redact(&config.url);
        let cluster = Cluster::connect(config, limits, devices_per_account_max)
            .await
            .map_err(|error| format!("cannot reach Redis at {redacted}: {error}"))?;
        let subscriber =
            cluster.subscriber().await.map_err(|error| format!("cannot subscribe on Redis at {redacted}: {error}"))?;
        tracing::info!(node = cluster.node(), redis = %redacted, "signaling joined its cluster");
        Ok(Clustered {
            cluster: Arc::new(cluster),
            links: Mutex::new(HashMap::new()),
            subscriber: Mutex::new(Some(subscriber)),
            pending_detaches: Mutex::new(Vec::new()),
        })
    }

    /// Drops this node's link `id` of a device (if it is still the current
    /// one); returns whether the node now holds no connection of the device.
    async fn unlink(&self, endpoint: &Endpoint, id: u64) -> bool {
        let (last, unsubscribed) = self
            .cluster
            .subscriptions(|| {
                let mut links = lock(&self.links);
                if links.get(&endpoint.device).is_some_and(|current| current.id == id) {
                    links.remove(&endpoint.device);
                }
                let last = !links.contains_key(&endpoint.device);
                (last, last.then(|| (Subscription::Unsubscribe, endpoint.device.to_string())))
            })
            .await;
        if let Err(error) = unsubscribed {
            tracing::warn!(%error, "cannot unsubscribe a device's channel");
        }
        last
    }

    /// Hands what arrives on the devices' channels to their connections here.
    /// When the subscription breaks, this node's connections are dropped
    /// (they may have missed events) and a new subscription is made.
    async fn dispatch(self: Arc<Self>, stopping: CancellationToken, mut stream: PubSubStream) {
        let cluster = &self.cluster;
        loop {
            while let Some(message) = stream.next().await {
                let Some(device) = cluster.channel_device(message.get_channel_name()) else { continue };
                let Some(delivery) = Delivery::parse(message.get_payload_bytes()) else { continue };
                let links = lock(&self.links);
                let Some(link) = links.get(device) else { continue };
                match delivery {
                    Delivery::Frame(frame) => link.outbox.push(frame),
                    Delivery::Replaced(tag) => {
                        if cluster.tag(link.id) != tag {
                            link.outbox.close(close::REPLACED);
                        }
                    }
                    Delivery::Revoked => close_revoked(link),
                }
            }
            if stopping.is_cancelled() {
                return;
            }
            tracing::error!("lost the Redis subscription; dropping this node's connections so their devices reconnect");
            self.close_all(close::RECONNECT);
            stream = loop {
                match cluster.subscriber().await {
                    Ok(stream) => break stream,
                    Err(error) => {
                        tracing::warn!(%error, "cannot subscribe on Redis; retrying");
                        if stopping.is_cancelled() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            };
        }
    }
}

#[async_trait::async_trait]
impl Routing for Clustered {
    async fn attach(&self, endpoint: &Endpoint, link: Link) -> Result<Vec<Ended>, AttachError> {
        let id = link.id;
        // Linked here first, with the device's channel subscribed, so that no
        // event published once the device is registered can be missed.
        let ((), subscribed) = self
            .cluster
            .subscriptions(|| {
                let replaced = lock(&self.links).insert(endpoint.device.clone(), link);
                if let Some(old) = &replaced {
                    old.outbox.close(close::REPLACED);
                }
                ((), replaced.is_none().then(|| (Subscription::Subscribe, endpoint.device.to_string())))
            })
            .await;
        let registered = match subscribed {
            Ok(()) => self.cluster.attach(endpoint, &self.cluster.tag(id), At::now()).await,
            Err(error) => Err(error),
        };
        match registered {
            Ok(Ok(outputs)) => Ok(ended(outputs)),
            Ok(Err(TooManyDevices)) => {
                self.unlink(endpoint, id).await;
                Err(AttachError::TooManyDevices)
            }
            Err(error) => {
                tracing::error!(%error, "cannot register a device in the shared call state");
                self.unlink(endpoint, id).await;
                Err(AttachError::Unavailable)
            }
        }
    }

    async fn detach(&self, endpoint: &Endpoint, link: u64, signed_out: bool) -> Vec<Ended> {
        let last = self.unlink(endpoint, link).await;
        let tag = self.cluster.tag(link);
        let calls = match self.cluster.detach(endpoint, Owner::Link(&tag), signed_out, At::now()).await {
            Ok(outputs) => ended(outputs),
            Err(error) => {
                tracing::error!(%error, "cannot record a disconnect in the shared call state; will retry");
                lock(&self.pending_detaches).push((endpoint.clone(), tag, signed_out));
                Vec::new()
            }
        };
        if last && let Err(error) = self.cluster.forget_device(&endpoint.device).await {
            tracing::warn!(%error, "cannot drop a device from this node's list");
        }
        calls
    }

    /// Every step needs the shared state.
    fn relay_now(&self, _from: &Endpoint, body: ClientBody, _now: At) -> Result<(Reply, Vec<Ended>), ClientBody> {
        Err(body)
    }

    async fn step(
        &self,
        from: &Endpoint,
        body: ClientBody,
        callee: Option<Callee>,
        now: At,
    ) -> Result<(Reply, Vec<Ended>), Unreachable> {
        match self.cluster.handle(from, body, callee, now).await {
            Ok((reply, outputs)) => Ok((reply, ended(outputs))),
            Err(error) => Err(Unreachable(error.to_string())),
        }
    }

    async fn tick(&self, now: At) -> Vec<Ended> {
        match self.cluster.tick(now).await {
            Ok(outputs) => ended(outputs),
            Err(error) => {
                tracing::warn!(%error, "cannot check the calls' deadlines in the shared call state");
                Vec::new()
            }
        }
    }

    fn upkeep_every(&self) -> Option<Duration> {
        Some(self.cluster.heartbeat_interval())
    }

    /// Keeps this node's heartbeat fresh, disconnects the devices of nodes
    /// whose heartbeat lapsed, and retries disconnects Redis missed.
    async fn upkeep(&self, now: At) -> Vec<Ended> {
        match self.cluster.heartbeat().await {
            Ok(true) => {}
            Ok(false) => {
                tracing::error!("this node's heartbeat lapsed; dropping its connections so their devices reconnect");
                self.close_all(close::RECONNECT);
            }
            Err(error) => tracing::warn!(%error, "cannot refresh this node's heartbeat"),
        }
        let mut calls = Vec::new();
        let pending = std::mem::take(&mut *lock(&self.pending_detaches));
        for (endpoint, tag, signed_out) in pending {
            match self.cluster.detach(&endpoint, Owner::Link(&tag), signed_out, now).await {
                Ok(outputs) => calls.extend(ended(outputs)),
                Err(_) => lock(&self.pending_detaches).push((endpoint, tag, signed_out)),
            }
        }
        match self.cluster.reap(now).await {
            Ok(outputs) => calls.extend(ended(outputs)),
            Err(error) => tracing::warn!(%error, "cannot check the other signaling nodes"),
        }
        calls
    }

    fn start(self: Arc<Self>, stopping: CancellationToken) {
        if let Some(stream) = lock(&self.subscriber).take() {
            tokio::spawn(self.clone().dispatch(stopping, stream));
        }
    }

    /// Closed here at once, and on the other nodes through the device's channel.
    async fn revoke(&self, device: &DeviceId) {
        if let Some(link) = lock(&self.links).get(device) {
            close_revoked(link);
        }
        if let Err(error) = self.cluster.publish_revoked(device).await {
            // Every node also reads the revocations from the database, within a second.
            tracing::warn!(%error, "cannot tell the other nodes of a signed-out device");
        }
    }

    fn close_all(&self, code: u16) {
        for link in lock(&self.links).values() {
            link.outbox.close(code);
        }
    }

    /// The calls live on: their devices reconnect to another node and resume
    /// within the grace period.
    async fn stop(&self, _now: At) -> Vec<Ended> {
        Vec::new()
    }

    async fn leave(&self, now: At) -> Vec<Ended> {
        match self.cluster.leave(now).await {
            Ok(outputs) => ended(outputs),
            Err(error) => {
                tracing::warn!(%error, "cannot leave the cluster; other nodes will notice the lapsed heartbeat");
                Vec::new()
            }
        }
    }
}
