//! One WebSocket connection: authenticate within the deadline, then read,
//! rate-limit, parse and hand each message to the [`Hub`], while a second
//! task writes the connection's outbound queue and pings. The end of either
//! half ends the other; one connection's fault is its own.

use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use courier_accounts::tokens::TokenVerifier;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use governor::{Quota, RateLimiter};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout, timeout_at};

use crate::hub::{AttachError, Closer, ConnectionPermit, Hub, Outbox, close, error_frame, frame};
use crate::machine::Endpoint;
use crate::protocol::{self, ClientBody, ErrorCode};

/// Largest frame the transport reads at all; between the protocol limit and
/// this, the client gets `message_too_large` and the connection stays up.
pub fn transport_message_bytes_max(ws_message_bytes_max: usize) -> usize {
    ws_message_bytes_max.saturating_mul(2).saturating_add(4_096)
}

/// Runs one upgraded connection to its end.
pub async fn serve(socket: WebSocket, hub: Hub, verifier: Arc<TokenVerifier>, permit: ConnectionPermit) {
    let config = *hub.config();
    let (sink, mut stream) = socket.split();
    let (tx, rx) = mpsc::channel(config.ws_outbound_queue_len_max);
    let outbox = Outbox { tx, closer: Arc::new(Closer::default()) };
    let writer = tokio::spawn(write_loop(sink, rx, outbox.closer.clone(), config));

    // Boxed, so that its space (a possible JWKS fetch) is freed once the device is in.
    let authenticated = Box::pin(authenticate(&mut stream, &hub, &verifier, &outbox)).await;
    if let Some((endpoint, link)) = authenticated {
        read_loop(&mut stream, &hub, &endpoint, &outbox).await;
        hub.detach(&endpoint, link).await;
    }
    outbox.closer.close(close::NORMAL);
    drop(outbox);
    let _ = writer.await;
    drop(permit);
}

/// Waits for `auth` until the deadline; answers it and attaches the device.
async fn authenticate(
    stream: &mut SplitStream<WebSocket>,
    hub: &Hub,
    verifier: &TokenVerifier,
    outbox: &Outbox,
) -> Option<(Endpoint, u64)> {
    let deadline = Instant::now() + hub.config().ws_auth_timeout;
    let refuse = |id: Option<&str>, message: &str| {
        outbox.push(error_frame(id, ErrorCode::Unauthenticated, message));
        outbox.closer.close(close::UNAUTHENTICATED);
        None
    };
    loop {
        let text = tokio::select! {
            _ = outbox.closer.closed() => return None,
            next = timeout_at(deadline, stream.next()) => match next {
                Err(_) => return refuse(None, "send auth with an access token first, within the deadline"),
                Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => return None,
                Ok(Some(Ok(Message::Text(text)))) => text,
                Ok(Some(Ok(Message::Binary(_)))) => return refuse(None, "messages are JSON text frames"),
                Ok(Some(Ok(_))) => continue,
            },
        };
        let message = match protocol::parse(&text, hub.config().ws_message_bytes_max) {
            Ok(message) => message,
            Err(refused) => return refuse(refused.id.as_deref(), "the first message must be auth"),
        };
        let ClientBody::Auth { token } = message.body else {
            return refuse(Some(&message.id), "the first message must be auth");
        };
        let claims = match verifier.verify(&token).await {
            Ok(claims) => claims,
            Err(error) => return refuse(Some(&message.id), &error.to_string()),
        };
        let endpoint = Endpoint { account: claims.sub, device: claims.did };
        return match hub.attach(&endpoint, outbox.clone()).await {
            Ok(link) => {
                outbox.push(frame(&AuthAck {
                    kind: "ack",
                    id: &message.id,
                    account_id: &endpoint.account,
                    device_id: &endpoint.device,
                }));
                Some((endpoint, link))
            }
            Err(AttachError::TooManyDevices) => {
                outbox.push(error_frame(
                    Some(&message.id),
                    ErrorCode::TooManyDevices,
                    "this account has as many devices connected as allowed",
                ));
                outbox.closer.close(close::TOO_MANY_DEVICES);
                None
            }
            Err(AttachError::Unavailable) => {
                outbox.push(error_frame(
                    Some(&message.id),
                    ErrorCode::Internal,
                    "the server could not register this device; reconnect",
                ));
                outbox.closer.close(close::RECONNECT);
                None
            }
            Err(AttachError::Stopping) => {
                outbox.closer.close(close::GOING_AWAY);
                None
            }
        };
    }
}

#[derive(serde::Serialize)]
struct AuthAck<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    account_id: &'a str,
    device_id: &'a str,
}

async fn read_loop(stream: &mut SplitStream<WebSocket>, hub: &Hub, endpoint: &Endpoint, outbox: &Outbox) {
    let config = *hub.config();
    let limiter = RateLimiter::direct(
        Quota::per_second(NonZeroU32::new(config.ws_messages_per_s).unwrap_or(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(config.ws_messages_burst).unwrap_or(NonZeroU32::MIN)),
    );
    loop {
        let next = tokio::select! {
            _ = outbox.closer.closed() => return,
            next = timeout(config.ws_idle_timeout, stream.next()) => next,
        };
        let text = match next {
            Err(_) => {
                outbox.closer.close(close::IDLE);
                return;
            }
            Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => return,
            Ok(Some(Ok(Message::Text(text)))) => text,
            Ok(Some(Ok(Message::Binary(_)))) => {
                outbox.push(error_frame(None, ErrorCode::BadMessage, "messages are JSON text frames"));
                continue;
            }
            // Pings are answered by the transport; any frame shows the peer is alive.
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
        };
        metrics::counter!("signaling_messages_total").increment(1);
        let message = match protocol::parse(&text, config.ws_message_bytes_max) {
            Ok(message) => message,
            Err(refused) => {
                outbox.push(error_frame(refused.id.as_deref(), refused.code, &refused.message));
                continue;
            }
        };
        if limiter.check().is_err() {
            metrics::counter!("signaling_rate_limited_total").increment(1);
            outbox.push(error_frame(
                Some(&message.id),
                ErrorCode::RateLimited,
                "too many messages; slow down (see ws_messages_per_s)",
            ));
            continue;
        }
        // Boxed: the handling future (database look-ups for an invite) is
        // large, and an idle connection should not carry its space.
        let reply = Box::pin(hub.handle(endpoint, message)).await;
        outbox.push(reply);
    }
}

async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Utf8Bytes>,
    closer: Arc<Closer>,
    config: crate::config::SignalingConfig,
) {
    let mut ping = tokio::time::interval_at(Instant::now() + config.ws_ping_interval, config.ws_ping_interval);
    let send = async |sink: &mut SplitSink<WebSocket, Message>, message: Message| {
        matches!(timeout(config.ws_write_timeout, sink.send(message)).await, Ok(Ok(())))
    };
    loop {
        tokio::select! {
            biased;
            _ = closer.closed() => break,
            next = rx.recv() => match next {
                Some(text) => if !write_batch(&mut sink, &mut rx, text, config.ws_write_timeout).await {
                    closer.close(close::SLOW_READER);
                    return;
                },
                None => break,
            },
            _ = ping.tick() => if !send(&mut sink, Message::Ping(Default::default())).await {
                closer.close(close::SLOW_READER);
                return;
            },
        }
    }
    let code = closer.code();
    // What was queued before the close (a last error, `server_shutdown`) goes
    // out first, unless the queue is the problem.
    if code != close::SLOW_READER {
        while let Ok(text) = rx.try_recv() {
            if !write_batch(&mut sink, &mut rx, text, config.ws_write_timeout).await {
                return;
            }
        }
    }
    let close = CloseFrame { code, reason: Utf8Bytes::from_static(close::reason(code)) };
    let _ = send(&mut sink, Message::Close(Some(close))).await;
}

/// Frames written with one flush when they are already queued.
const WRITE_BATCH_FRAMES_MAX: usize = 64;

/// Writes `first` and whatever else is queued (up to a batch) with one
/// flush, so a busy connection makes one write call per batch, not per frame.
async fn write_batch(
    sink: &mut SplitSink<WebSocket, Message>,
    rx: &mut mpsc::Receiver<Utf8Bytes>,
    first: Utf8Bytes,
    write_timeout: std::time::Duration,
) -> bool {
    let work = async {
        sink.feed(Message::Text(first)).await?;
        for _ in 1..WRITE_BATCH_FRAMES_MAX {
            match rx.try_recv() {
                Ok(text) => sink.feed(Message::Text(text)).await?,
                Err(_) => break,
            }
        }
        sink.flush().await
    };
    matches!(timeout(write_timeout, work).await, Ok(Ok(())))
}
