//! The signaling client: API.md's WebSocket protocol at `/v1/calls/ws`,
//! written and read with the server's own types ([`courier_protocol`]).
//! One task reads the socket: `ack`s and `error`s go to the request that is
//! waiting for them (matched by id), events go to
//! [`SignalingClient::next_event`] in order. A client whose socket dropped
//! mid-call connects again and sends `resume` within the server's grace
//! period. A connection outlives its access token: before the token
//! expires, the client takes a fresh one from its [`TokenSource`] and sends
//! `reauth`.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use courier_common::sync::lock;
use courier_common::time::now_s;
use courier_protocol::{
    CallId, Candidates, ClientBody, ClientMessage, HangupReason, IcePolicy, NegotiateKind, Reply, SasHex, Sdp,
    ServerEvent, ServerFrame,
};
use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// An access token and when it expires (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessToken {
    pub token: String,
    pub expires_at_s: u64,
}

/// Where a connection gets a valid access token: the current one, refreshed
/// when it is about to expire.
pub type TokenSource = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<AccessToken, String>> + Send>> + Send + Sync>;

/// A source that always gives `token` (a client that never outlives it).
pub fn fixed_token(token: &str) -> TokenSource {
    let token = AccessToken { token: token.to_owned(), expires_at_s: u64::MAX };
    Arc::new(move || {
        let token = token.clone();
        Box::pin(async move { Ok(token) })
    })
}

/// How long before its token expires a connection re-authenticates: a
/// minute, or half the time left when that is shorter.
fn renew_in(expires_at_s: u64, now_s: u64) -> Duration {
    let left = expires_at_s.saturating_sub(now_s);
    Duration::from_secs(if left > 120 { left - 60 } else { left / 2 })
}
type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Result<Acked, SignalingError>>>>>;

/// What an `ack` carried.
#[derive(Debug, Clone, Default)]
struct Acked {
    ice_policy: Option<IcePolicy>,
    account_id: Option<String>,
    device_id: Option<String>,
}

/// How long a request waits for its `ack`.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Events waiting to be taken before the reader stops reading.
const EVENTS_QUEUED_MAX: usize = 1_024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignalingError {
    /// The server answered `error` with this code (API.md).
    #[error("{code}: {message}")]
    Refused { code: String, message: String },
    #[error("the signaling connection is closed{}", .0.map(|code| format!(" (code {code})")).unwrap_or_default())]
    Closed(Option<u16>),
    #[error("no answer from the signaling server in time")]
    Timeout,
    #[error("{0}")]
    Failed(String),
}

impl SignalingError {
    /// The protocol error code, when the server refused.
    pub fn code(&self) -> Option<&str> {
        match self {
            SignalingError::Refused { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// What the connection hands on: the server's events in order, then its end.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Server(ServerEvent),
    /// The socket closed (with the server's close code, if it gave one).
    Closed(Option<u16>),
}

/// A signed-in signaling connection.
pub struct SignalingClient {
    requests: Arc<Requests>,
    events: mpsc::Receiver<Event>,
    /// Re-authenticates before each token expires, until the client is dropped.
    renewing: tokio::task::JoinHandle<()>,
    pub account_id: String,
    pub device_id: String,
}

/// What sends requests and matches their answers (shared with the renewal task).
struct Requests {
    sink: tokio::sync::Mutex<SplitSink<Socket, Message>>,
    pending: Pending,
    next_id: AtomicU64,
}

impl Drop for SignalingClient {
    fn drop(&mut self) {
        self.renewing.abort();
    }
}

/// `ws://HOST/v1/calls/ws` for the server at `base` (http:// or https://).
pub fn ws_url(base: &str) -> String {
    let base = base.trim_end_matches('/');
    let base = base
        .strip_prefix("https://")
        .map(|rest| format!("wss://{rest}"))
        .unwrap_or_else(|| base.replacen("http://", "ws://", 1));
    format!("{base}/v1/calls/ws")
}

impl SignalingClient {
    /// Connects to the server at `base` and authenticates with a token of
    /// `tokens`, and again with a fresh one before each expires.
    pub async fn connect(base: &str, tokens: &TokenSource) -> Result<SignalingClient, SignalingError> {
        let token = tokens().await.map_err(SignalingError::Failed)?;
        let (socket, _) = tokio_tungstenite::connect_async(ws_url(base))
            .await
            .map_err(|error| SignalingError::Failed(format!("cannot reach {}: {error}", ws_url(base))))?;
        let (sink, mut stream) = socket.split();
        let pending: Pending = Arc::default();
        let (events_tx, events) = mpsc::channel(EVENTS_QUEUED_MAX);
        let reader_pending = pending.clone();
        tokio::spawn(async move {
            let mut close_code = None;
            while let Some(frame) = stream.next().await {
                match frame {
                    Ok(Message::Text(text)) => {
                        // A frame of a later protocol version: skipped.
                        let Some(frame) = ServerFrame::decode(&text) else { continue };
                        if !dispatch(frame, &reader_pending, &events_tx).await {
                            break;
                        }
                    }
                    Ok(Message::Close(frame)) => {
                        close_code = frame.map(|frame| u16::from(frame.code));
                        break;
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            let waiting: Vec<_> = lock(&reader_pending).drain().collect();
            for (_, reply) in waiting {
                let _ = reply.send(Err(SignalingError::Closed(close_code)));
            }
            let _ = events_tx.send(Event::Closed(close_code)).await;
        });
        let requests = Arc::new(Requests { sink: tokio::sync::Mutex::new(sink), pending, next_id: AtomicU64::new(1) });
        let ack = requests.request(ClientBody::Auth { token: token.token }).await?;
        let renewing = tokio::spawn(keep_authenticated(requests.clone(), tokens.clone(), token.expires_at_s));
        Ok(SignalingClient {
            requests,
            events,
            renewing,
            account_id: ack.account_id.unwrap_or_default(),
            device_id: ack.device_id.unwrap_or_default(),
        })
    }

    async fn request(&self, body: ClientBody) -> Result<Acked, SignalingError> {
        self.requests.request(body).await
    }
}

/// Sends `reauth` with a fresh token of `tokens` before each one expires,
/// until the connection is gone.
async fn keep_authenticated(requests: Arc<Requests>, tokens: TokenSource, mut expires_at_s: u64) {
    loop {
        tokio::time::sleep(renew_in(expires_at_s, now_s())).await;
        let failed = match tokens().await {
            Ok(token) => match requests.request(ClientBody::Reauth { token: token.token }).await {
                Ok(_) => {
                    expires_at_s = token.expires_at_s;
                    continue;
                }
                Err(SignalingError::Closed(_)) => return,
                Err(error) => error.to_string(),
            },
            Err(error) => error,
        };
        tracing::warn!(error = %failed, "cannot re-authenticate the signaling connection; trying again shortly");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

impl Requests {
    /// Sends `body` and waits for its `ack`.
    async fn request(&self, body: ClientBody) -> Result<Acked, SignalingError> {
        let id = format!("c{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        let frame = ClientMessage { id: id.clone(), body }.encode();
        let (reply, answer) = oneshot::channel();
        lock(&self.pending).insert(id.clone(), reply);
        let sent = self.sink.lock().await.send(Message::text(frame)).await;
        if let Err(error) = sent {
            self.forget(&id);
            return Err(match error {
                // The connection is gone (a reset, a broken pipe after the
                // network changed): the reader reports it closed, and the
                // call reconnects and resumes.
                WsError::Io(_) | WsError::ConnectionClosed | WsError::AlreadyClosed | WsError::Protocol(_) => {
                    tracing::debug!(%error, "the signaling connection broke while sending");
                    SignalingError::Closed(None)
                }
                other => SignalingError::Failed(format!("cannot send: {other}")),
            });
        }
        match tokio::time::timeout(REQUEST_TIMEOUT, answer).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(SignalingError::Closed(None)),
            Err(_) => {
                self.forget(&id);
                Err(SignalingError::Timeout)
            }
        }
    }

    fn forget(&self, id: &str) {
        lock(&self.pending).remove(id);
    }
}

impl SignalingClient {
    /// The next event; `Event::Closed` once the socket is gone.
    pub async fn next_event(&mut self) -> Event {
        self.events.recv().await.unwrap_or(Event::Closed(None))
    }

    /// The next event within `timeout`.
    pub async fn next_event_within(&mut self, timeout: Duration) -> Option<Event> {
        tokio::time::timeout(timeout, self.next_event()).await.ok()
    }

    pub async fn invite(
        &self,
        call_id: &str,
        callee: &str,
        sdp: &str,
        sas_commit: Option<&str>,
    ) -> Result<IcePolicy, SignalingError> {
        let body = ClientBody::Invite {
            call_id: call(call_id)?,
            callee: callee.to_owned(),
            sdp: session_description(sdp)?,
            sas_commit: sas_commit.map(sas_hex).transpose()?,
        };
        Ok(self.request(body).await?.ice_policy.unwrap_or(IcePolicy::All))
    }

    pub async fn ringing(&self, call_id: &str) -> Result<(), SignalingError> {
        self.request(ClientBody::Ringing { call_id: call(call_id)? }).await.map(drop)
    }

    pub async fn answer(&self, call_id: &str, sdp: &str, sas_nonce: Option<&str>) -> Result<(), SignalingError> {
        let body = ClientBody::Answer {
            call_id: call(call_id)?,
            sdp: session_description(sdp)?,
            sas_nonce: sas_nonce.map(sas_hex).transpose()?,
        };
        self.request(body).await.map(drop)
    }

    pub async fn reject(&self, call_id: &str) -> Result<(), SignalingError> {
        self.request(ClientBody::Reject { call_id: call(call_id)? }).await.map(drop)
    }

    pub async fn hangup(&self, call_id: &str, reason: HangupReason) -> Result<(), SignalingError> {
        self.request(ClientBody::Hangup { call_id: call(call_id)?, reason }).await.map(drop)
    }

    pub async fn candidates(&self, call_id: &str, candidates: &[Value]) -> Result<(), SignalingError> {
        let candidates = Candidates::from_values(candidates).map_err(SignalingError::Failed)?;
        self.request(ClientBody::Candidates { call_id: call(call_id)?, candidates }).await.map(drop)
    }

    pub async fn negotiate(&self, call_id: &str, sdp: &str, kind: NegotiateKind) -> Result<(), SignalingError> {
        let body = ClientBody::Negotiate { call_id: call(call_id)?, sdp: session_description(sdp)?, kind };
        self.request(body).await.map(drop)
    }

    pub async fn resume(&self, call_id: &str) -> Result<(), SignalingError> {
        self.request(ClientBody::Resume { call_id: call(call_id)? }).await.map(drop)
    }

    pub async fn sas_reveal(&self, call_id: &str, nonce: &str) -> Result<(), SignalingError> {
        self.request(ClientBody::SasReveal { call_id: call(call_id)?, nonce: sas_hex(nonce)? }).await.map(drop)
    }

    pub async fn ping(&self) -> Result<(), SignalingError> {
        self.request(ClientBody::Ping).await.map(drop)
    }

    /// Closes the socket (the server treats it as a dropped connection).
    pub async fn close(&self) {
        self.renewing.abort();
        let _ = self.requests.sink.lock().await.close().await;
    }
}

// What this client sends is checked as the server will check it: a value
// the server would refuse never leaves.
fn call(call_id: &str) -> Result<CallId, SignalingError> {
    CallId::parse(call_id).map_err(SignalingError::Failed)
}

fn session_description(sdp: &str) -> Result<Sdp, SignalingError> {
    Sdp::parse(sdp).map_err(SignalingError::Failed)
}

fn sas_hex(hex: &str) -> Result<SasHex, SignalingError> {
    SasHex::parse(hex).map_err(SignalingError::Failed)
}

/// Routes one frame; false when nobody takes events any more.
async fn dispatch(frame: ServerFrame, pending: &Pending, events: &mpsc::Sender<Event>) -> bool {
    let (id, outcome) = match frame {
        ServerFrame::Event(event) => return events.send(Event::Server(event)).await.is_ok(),
        ServerFrame::Reply(Reply::Ack { id, ice_policy, account_id, device_id }) => {
            (Some(id), Ok(Acked { ice_policy, account_id, device_id }))
        }
        ServerFrame::Reply(Reply::Pong { id }) => (Some(id), Ok(Acked::default())),
        ServerFrame::Reply(Reply::Error { id, code, message }) => (id, Err(SignalingError::Refused { code, message })),
    };
    let reply = id.and_then(|id| lock(pending).remove(&id));
    if let Some(reply) = reply {
        let _ = reply.send(outcome);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_follow_the_server_scheme() {
        assert_eq!(ws_url("http://127.0.0.1:8080/"), "ws://127.0.0.1:8080/v1/calls/ws");
        assert_eq!(ws_url("https://calls.example.com"), "wss://calls.example.com/v1/calls/ws");
    }

    #[test]
    fn a_token_is_renewed_a_minute_before_it_expires_or_half_way() {
        assert_eq!(renew_in(1_900, 1_000), Duration::from_secs(840));
        assert_eq!(renew_in(1_100, 1_000), Duration::from_secs(50));
        assert_eq!(renew_in(1_003, 1_000), Duration::from_secs(1));
        assert_eq!(renew_in(900, 1_000), Duration::ZERO, "already expired: at once");
    }

    #[test]
    fn what_the_server_would_refuse_never_leaves() {
        assert!(matches!(call("has space"), Err(SignalingError::Failed(_))));
        assert!(matches!(session_description("hello"), Err(SignalingError::Failed(_))));
        assert!(matches!(sas_hex("zz"), Err(SignalingError::Failed(_))));
    }
}
