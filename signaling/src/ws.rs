//! One WebSocket connection, run by one task: authenticate within the
//! deadline, then read, rate-limit, parse and hand each message to the
//! [`Hub`], and write what the hub queued on the connection's [`Outbox`],
//! pinging on a clock. One task and one timer per connection keep an idle
//! connection small; one connection's fault is its own.

use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use courier_accounts::tokens::TokenVerifier;
use courier_common::time::now_ms;
use futures::{FutureExt, SinkExt, StreamExt};
use governor::{Quota, RateLimiter};
use tokio::time::{Instant, timeout, timeout_at};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::hub::{Handled, Hub};
use crate::machine::Endpoint;
use crate::meters::meters;
use crate::outbox::Outbox;
use crate::routing::AttachError;
use crate::upgrade::Socket as WebSocket;
use courier_protocol::event::error_frame;
use courier_protocol::{self as protocol, ClientBody, ErrorCode};
use courier_protocol::{Reply, close};

/// Largest frame the transport reads at all; between the protocol limit and
/// this, the client gets `message_too_large` and the connection stays up.
pub fn transport_message_bytes_max(ws_message_bytes_max: usize) -> usize {
    ws_message_bytes_max.saturating_mul(2).saturating_add(4_096)
}

/// Frames written with one flush when they are already queued, and client
/// frames already received handled before the replies are written.
pub(crate) const BATCH_FRAMES_MAX: usize = 64;

/// How late the `ack` of a message relayed within a call (`candidates`,
/// `sas_reveal`, …) may be written on a busy connection. A connection that
/// wrote no ack this long gets its acks at once; one that did holds them
/// until this long after that write, so that a client sending steadily gets
/// its acks a batch per write rather than a write per batch it sent (each
/// write is a system call here and a wake-up in the client). Anything else
/// queued for the connection (an event, an error, a pong, the answer to
/// `invite`) takes the held acks out with it at once, in order; relayed
/// messages themselves are never held. As QUIC's `max_ack_delay` and TCP's
/// delayed acknowledgement do, this trades a bounded delay of the sender's
/// acknowledgement for fewer writes, never the delivery of the message.
pub(crate) const ACKS_HELD_AT_MOST: Duration = Duration::from_millis(5);

/// Runs one upgraded connection to its end.
pub async fn serve(socket: &mut WebSocket, hub: &Hub, verifier: &TokenVerifier) {
    let outbox = Outbox::new(hub.config().ws_outbound_queue_len_max);
    // Boxed, in statements of their own (a temporary of the awaiting statement
    // would keep its space in this future): rarely running, they are large.
    let authenticating = Box::pin(authenticate(socket, hub, verifier, &outbox));
    let authenticated = authenticating.await;
    if let Some((endpoint, link, token_expires_s)) = authenticated {
        let session = Session { endpoint, verifier, token_expires_s: AtomicU64::new(token_expires_s) };
        connected(socket, hub, &session, &outbox).await;
        let endpoint = session.endpoint;
        let signed_out = outbox.was_signed_out() || verifier.revocations().is_revoked(&endpoint.device);
        let detaching = Box::pin(hub.detach(&endpoint, link, signed_out));
        detaching.await;
    }
    let finishing = Box::pin(finish(socket, &outbox, hub.config().ws_write_timeout));
    finishing.await;
}

/// An authenticated connection: whose it is, and until when its token lasts.
struct Session<'a> {
    endpoint: Endpoint,
    verifier: &'a TokenVerifier,
    /// When the connection's access token expires (Unix seconds); a `reauth` moves it on.
    token_expires_s: AtomicU64,
}

impl Session<'_> {
    fn token_expires_ms(&self) -> i64 {
        i64::try_from(self.token_expires_s.load(Ordering::Relaxed)).unwrap_or(i64::MAX).saturating_mul(1_000)
    }

    /// When the token expires, on this process's clock (a day away at most:
    /// tokens live an hour at most).
    fn token_deadline(&self) -> Instant {
        let left_ms = self.token_expires_ms().saturating_sub(now_ms()).clamp(0, 86_400_000);
        Instant::now() + Duration::from_millis(left_ms.unsigned_abs())
    }

    fn token_expired(&self) -> bool {
        now_ms() >= self.token_expires_ms()
    }

    /// Answers `reauth`: a fresh token of the same account and device keeps
    /// the connection open until it expires.
    async fn reauth(&self, id: String, token: String) -> String {
        let claims = match self.verifier.verify_once(&token).await {
            Ok(claims) => claims,
            Err(error) => return error_frame(Some(&id), ErrorCode::Unauthenticated, &error.to_string()),
        };
        if *claims.sub != *self.endpoint.account || *claims.did != *self.endpoint.device {
            return error_frame(
                Some(&id),
                ErrorCode::Unauthenticated,
                "reauth takes a token of this connection's account and device",
            );
        }
        self.token_expires_s.fetch_max(claims.exp, Ordering::Relaxed);
        Reply::Ack { id, ice_policy: None, account_id: None, device_id: None }.frame()
    }
}

/// Waits for `auth` until the deadline; answers it and attaches the device.
/// Gives the device, its link and when its token expires.
async fn authenticate(
    socket: &mut WebSocket,
    hub: &Hub,
    verifier: &TokenVerifier,
    outbox: &Arc<Outbox>,
) -> Option<(Endpoint, u64, u64)> {
    let deadline = Instant::now() + hub.config().ws_auth_timeout;
    // Answers with an error and closes the connection with `close_code`.
    let refuse_with = |id: Option<&str>, code: ErrorCode, message: &str, close_code: u16| {
        outbox.fail(id, code, message, close_code);
        None
    };
    let refuse =
        |id: Option<&str>, message: &str| refuse_with(id, ErrorCode::Unauthenticated, message, close::UNAUTHENTICATED);
    loop {
        let text = match timeout_at(deadline, socket.next()).await {
            Err(_) => return refuse(None, "send auth with an access token first, within the deadline"),
            Ok(Some(Err(tokio_tungstenite::tungstenite::Error::Capacity(_)))) => {
                outbox.close(close::MESSAGE_TOO_BIG);
                return None;
            }
            Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => return None,
            Ok(Some(Ok(Message::Text(text)))) => text,
            Ok(Some(Ok(Message::Binary(_)))) => return refuse(None, "messages are JSON text frames"),
            Ok(Some(Ok(_))) => continue,
        };
        let message = match protocol::parse(&text, hub.config().ws_message_bytes_max) {
            Ok(message) => message,
            Err(refused) => return refuse(refused.id.as_deref(), "the first message must be auth"),
        };
        let ClientBody::Auth { token } = message.body else {
            return refuse(Some(&message.id), "the first message must be auth");
        };
        let claims = match verifier.verify_once(&token).await {
            Ok(claims) => claims,
            Err(error) => return refuse(Some(&message.id), &error.to_string()),
        };
        let endpoint = Endpoint { account: claims.sub.into(), device: claims.did.into() };
        return match hub.attach(&endpoint, outbox.clone()).await {
            Ok(link) => {
                outbox.push(
                    Reply::Ack {
                        id: message.id,
                        ice_policy: None,
                        account_id: Some(endpoint.account.to_string()),
                        device_id: Some(endpoint.device.to_string()),
                    }
                    .frame(),
                );
                Some((endpoint, link, claims.exp))
            }
            Err(AttachError::TooManyDevices) => refuse_with(
                Some(&message.id),
                ErrorCode::TooManyDevices,
                "this account has as many devices connected as allowed",
                close::TOO_MANY_DEVICES,
            ),
            Err(AttachError::Unavailable) => refuse_with(
                Some(&message.id),
                ErrorCode::Internal,
                "the server could not register this device; reconnect",
                close::RECONNECT,
            ),
            Err(AttachError::Stopping) => {
                outbox.close(close::GOING_AWAY);
                None
            }
        };
    }
}

/// What one read of the socket gave.
enum Read<'a> {
    /// Keep going.
    Continue,
    /// Keep going; a relayed message's ack was queued, which may be held
    /// (see [`ACKS_HELD_AT_MOST`]).
    Acked,
    /// The connection is over (closed by the client, broken, or asked to close).
    End,
    /// A message the hub handles with an await (database look-ups for an invite).
    Later(Pin<Box<dyn Future<Output = String> + Send + 'a>>),
}

/// The authenticated connection: reads and handles the client's messages,
/// writes what is queued, pings, drops a connection silent for too long,
/// and closes it (4401) when its token expires without a `reauth`. One timer
/// serves the ping clock, the idle deadline and the token's expiry.
async fn connected(socket: &mut WebSocket, hub: &Hub, session: &Session<'_>, outbox: &Outbox) {
    let config = hub.config();
    let limiter = RateLimiter::direct(
        Quota::per_second(NonZeroU32::new(config.ws_messages_per_s).unwrap_or(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(config.ws_messages_burst).unwrap_or(NonZeroU32::MIN)),
    );
    // When the client was last heard from, as of the last timer event; a
    // frame only sets `heard_since` (no clock read per frame), and the timer
    // moves `heard` on. The idle deadline is thus kept within a timer period.
    let mut heard = Instant::now();
    let mut heard_since = false;
    let mut next_ping = heard + config.ws_ping_interval;
    // The timer's next wake: a ping, the idle deadline, or the token's expiry.
    let next_wake = |heard: Instant, next_ping: Instant| {
        next_ping.min(heard + config.ws_idle_timeout).min(session.token_deadline())
    };
    let timer = tokio::time::sleep_until(next_wake(heard, next_ping));
    tokio::pin!(timer);
    // Relayed messages' acks queued since the last write, when they are due
    // and when acks were last written (see [`ACKS_HELD_AT_MOST`]).
    let mut acks_held = 0usize;
    let mut acks_due: Option<Instant> = None;
    let mut acks_written: Option<Instant> = None;
    loop {
        if outbox.is_closed() {
            return;
        }
        let queued = outbox.len();
        if queued > 0 {
            let hold_until = acks_due.filter(|_| queued <= acks_held).filter(|&due| Instant::now() < due);
            match hold_until {
                Some(due) => {
                    if due < timer.deadline() {
                        timer.as_mut().reset(due);
                    }
                }
                None => {
                    if acks_held > 0 {
                        acks_written = Some(Instant::now());
                    }
                    (acks_held, acks_due) = (0, None);
                    // Writes are boxed (in statements of their own) so that an idle
                    // connection does not carry their space, timers included.
                    let writing = Box::pin(write_queued(socket, outbox, None, config.ws_write_timeout));
                    if !writing.await {
                        outbox.close(close::SLOW_READER);
                        return;
                    }
                    continue;
                }
            }
        }
        tokio::select! {
            biased;
            _ = outbox.changed() => {}
            next = socket.next() => {
                heard_since = true;
                // Handle what else has arrived before writing the replies, so
                // that a busy connection writes a batch per flush.
                let mut next = Some(next);
                let held_before = acks_held;
                for _ in 0..BATCH_FRAMES_MAX {
                    let Some(item) = next.take().or_else(|| socket.next().now_or_never()) else { break };
                    match read(item, hub, session, outbox, &limiter) {
                        Read::Continue => {}
                        Read::Acked => acks_held += 1,
                        Read::End => return,
                        Read::Later(handling) => {
                            // Boxed by the hub: the handling future is large,
                            // and an idle connection should not carry its space.
                            outbox.push(handling.await);
                            if outbox.is_closed() {
                                return;
                            }
                        }
                    }
                }
                if acks_held > held_before && acks_due.is_none() {
                    let now = Instant::now();
                    acks_due = Some(acks_written.map_or(now, |at| (at + ACKS_HELD_AT_MOST).max(now)));
                }
            }
            () = &mut timer => {
                let now = Instant::now();
                if std::mem::take(&mut heard_since) {
                    heard = now;
                }
                if now >= heard + config.ws_idle_timeout {
                    outbox.close(close::IDLE);
                    return;
                }
                if session.token_expired() {
                    let message = "the access token expired; send reauth with a fresh one before it does";
                    outbox.fail(None, ErrorCode::Unauthenticated, message, close::UNAUTHENTICATED);
                    return;
                }
                if now >= next_ping {
                    next_ping = now + config.ws_ping_interval;
                    let ping = Some(Message::Ping(Default::default()));
                    let pinging = Box::pin(write_queued(socket, outbox, ping, config.ws_write_timeout));
                    if !pinging.await {
                        outbox.close(close::SLOW_READER);
                        return;
                    }
                }
                timer.as_mut().reset(next_wake(heard, next_ping));
            }
        }
    }
}

/// Handles one thing read from the socket, without an await: what needs
/// one comes back as [`Read::Later`]. The connection's future thus holds no
/// message-handling state while it waits.
fn read<'a>(
    next: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    hub: &'a Hub,
    session: &'a Session<'a>,
    outbox: &Outbox,
    limiter: &governor::DefaultDirectRateLimiter,
) -> Read<'a> {
    let frame = match next {
        Some(Err(tokio_tungstenite::tungstenite::Error::Capacity(_))) => {
            outbox.close(close::MESSAGE_TOO_BIG);
            return Read::End;
        }
        None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return Read::End,
        Some(Ok(Message::Text(text))) => Some(text),
        Some(Ok(Message::Binary(_))) => None,
        // Pings are answered by the transport; any frame shows the peer is
        // alive (a raw `Frame` is only ever written, never read).
        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => return Read::Continue,
    };
    meters().messages.increment(1);
    // Every frame counts against the rate, good or bad; past it a bad frame
    // gets no answer (a flood of them must not cost a reply each), a good
    // one `rate_limited` with its id.
    let allowed = limiter.check().is_ok();
    if !allowed {
        metrics::counter!("signaling_rate_limited_total").increment(1);
    }
    let Some(text) = frame else {
        if allowed {
            outbox.push(error_frame(None, ErrorCode::BadMessage, "messages are JSON text frames"));
        }
        return Read::Continue;
    };
    let message = match protocol::parse(&text, hub.config().ws_message_bytes_max) {
        Ok(message) => message,
        Err(refused) => {
            if allowed {
                outbox.push(error_frame(refused.id.as_deref(), refused.code, &refused.message));
            }
            return Read::Continue;
        }
    };
    if !allowed {
        outbox.push(error_frame(
            Some(&message.id),
            ErrorCode::RateLimited,
            "too many messages; slow down (see ws_messages_per_s)",
        ));
        return Read::Continue;
    }
    if let ClientBody::Reauth { token } = message.body {
        return Read::Later(Box::pin(session.reauth(message.id, token)));
    }
    match hub.handle(&session.endpoint, message) {
        Handled::Now(reply) => {
            outbox.push(reply);
            if outbox.is_closed() { Read::End } else { Read::Continue }
        }
        Handled::Relayed(ack) => {
            outbox.push(ack);
            if outbox.is_closed() { Read::End } else { Read::Acked }
        }
        Handled::Later(handling) => Read::Later(handling),
    }
}

/// Writes `first` (a ping) and what is queued, a batch per flush; false
/// when the client does not take it within the write timeout.
async fn write_queued(
    socket: &mut WebSocket,
    outbox: &Outbox,
    first: Option<Message>,
    write_timeout: Duration,
) -> bool {
    let work = async {
        if let Some(first) = first {
            socket.feed(first).await?;
            socket.flush().await?;
        }
        while let Some(first) = outbox.pop() {
            socket.feed(Message::Text(first)).await?;
            for _ in 1..BATCH_FRAMES_MAX {
                match outbox.pop() {
                    Some(text) => socket.feed(Message::Text(text)).await?,
                    None => break,
                }
            }
            socket.flush().await?;
        }
        Ok::<(), tokio_tungstenite::tungstenite::Error>(())
    };
    matches!(timeout(write_timeout, work).await, Ok(Ok(())))
}

/// The end of a connection: what was queued before the close (a last error,
/// `server_shutdown`) goes out first, unless the queue is the problem; then
/// the close frame with its code.
async fn finish(socket: &mut WebSocket, outbox: &Outbox, write_timeout: Duration) {
    let code = outbox.code();
    outbox.close(code);
    if code != close::SLOW_READER && !write_queued(socket, outbox, None, write_timeout).await {
        return;
    }
    let frame = CloseFrame { code: code.into(), reason: Utf8Bytes::from_static(close::reason(code)) };
    let _ = timeout(write_timeout, socket.send(Message::Close(Some(frame)))).await;
}
