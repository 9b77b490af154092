//! The signaling client: API.md's WebSocket protocol at `/v1/calls/ws`,
//! written and read with the server's own types ([`courier_protocol`]).
//! One task reads the socket: `ack`s and `error`s go to the request that is
//! waiting for them (matched by id), events go to
//! [`SignalingClient::next_event`] in order. A client whose socket dropped
//! mid-call connects again and sends `resume` within the server's grace
//! period.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use courier_common::sync::lock;
use courier_protocol::{
    CallId, Candidates, ClientBody, ClientMessage, HangupReason, IcePolicy, NegotiateKind, Reply, SasHex, Sdp,
    ServerEvent, ServerFrame,
};
use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;
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
    sink: tokio::sync::Mutex<SplitSink<Socket, Message>>,
    pending: Pending,
    events: mpsc::Receiver<Event>,
    next_id: AtomicU64,
    pub account_id: String,
    pub device_id: String,
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
    /// Connects to the server at `base` and authenticates with `token`.
    pub async fn connect(base: &str, token: &str) -> Result<SignalingClient, SignalingError> {
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
        let mut signaling = SignalingClient {
            sink: tokio::sync::Mutex::new(sink),
            pending,
            events,
            next_id: AtomicU64::new(1),
            account_id: String::new(),
            device_id: String::new(),
        };
        let ack = signaling.request(ClientBody::Auth { token: token.to_owned() }).await?;
        signaling.account_id = ack.account_id.unwrap_or_default();
        signaling.device_id = ack.device_id.unwrap_or_default();
        Ok(signaling)
    }

    /// Sends `body` and waits for its `ack`.
    async fn request(&self, body: ClientBody) -> Result<Acked, SignalingError> {
        let id = format!("c{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        let frame = ClientMessage { id: id.clone(), body }.encode();
        let (reply, answer) = oneshot::channel();
        lock(&self.pending).insert(id.clone(), reply);
        let sent = self.sink.lock().await.send(Message::text(frame)).await;
        if let Err(error) = sent {
            self.forget(&id);
            return Err(SignalingError::Failed(format!("cannot send: {error}")));
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
        let _ = self.sink.lock().await.close().await;
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
    fn what_the_server_would_refuse_never_leaves() {
        assert!(matches!(call("has space"), Err(SignalingError::Failed(_))));
        assert!(matches!(session_description("hello"), Err(SignalingError::Failed(_))));
        assert!(matches!(sas_hex("zz"), Err(SignalingError::Failed(_))));
    }
}
