//! The signaling client: API.md's WebSocket protocol at `/v1/calls/ws`.
//! One task reads the socket: `ack`s and `error`s go to the request that is
//! waiting for them (matched by id), events go to [`Signaling::next_event`]
//! in order. A client whose socket dropped mid-call connects again and sends
//! `resume` within the server's grace period.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Result<Value, SignalingError>>>>>;

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

/// Server → client events (API.md).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Incoming {
        call_id: String,
        caller: String,
        sdp: String,
        ice_policy: IcePolicy,
        #[serde(default)]
        sas_commit: Option<String>,
    },
    Ringing {
        call_id: String,
    },
    Answered {
        call_id: String,
        sdp: String,
        ice_policy: IcePolicy,
        #[serde(default)]
        sas_nonce: Option<String>,
    },
    AnsweredElsewhere {
        call_id: String,
    },
    Candidates {
        call_id: String,
        candidates: Vec<Value>,
    },
    Negotiate {
        call_id: String,
        sdp: String,
        kind: String,
    },
    SasReveal {
        call_id: String,
        nonce: String,
    },
    Hangup {
        call_id: String,
        reason: String,
    },
    /// The socket closed (with the server's close code, if it gave one).
    #[serde(skip)]
    Closed(Option<u16>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IcePolicy {
    All,
    Relay,
}

/// A signed-in signaling connection.
pub struct Signaling {
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

impl Signaling {
    /// Connects to the server at `base` and authenticates with `token`.
    pub async fn connect(base: &str, token: &str) -> Result<Signaling, SignalingError> {
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
                        let Ok(value) = serde_json::from_str::<Value>(&text) else { continue };
                        if !dispatch(value, &reader_pending, &events_tx).await {
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
            let waiting: Vec<_> = reader_pending.lock().map(|mut map| map.drain().collect()).unwrap_or_default();
            for (_, reply) in waiting {
                let _ = reply.send(Err(SignalingError::Closed(close_code)));
            }
            let _ = events_tx.send(Event::Closed(close_code)).await;
        });
        let mut signaling = Signaling {
            sink: tokio::sync::Mutex::new(sink),
            pending,
            events,
            next_id: AtomicU64::new(1),
            account_id: String::new(),
            device_id: String::new(),
        };
        let ack = signaling.request("auth", json!({"token": token})).await?;
        signaling.account_id = ack["account_id"].as_str().unwrap_or_default().to_owned();
        signaling.device_id = ack["device_id"].as_str().unwrap_or_default().to_owned();
        Ok(signaling)
    }

    /// Sends `{"v":1,"type":kind,"id":…, fields…}` and waits for its `ack`.
    pub async fn request(&self, kind: &str, fields: Value) -> Result<Value, SignalingError> {
        let id = format!("c{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        let mut message = Map::new();
        message.insert("v".into(), json!(1));
        message.insert("type".into(), json!(kind));
        message.insert("id".into(), json!(id));
        if let Value::Object(fields) = fields {
            message.extend(fields);
        }
        let (reply, answer) = oneshot::channel();
        self.pending.lock().map_err(|_| SignalingError::Failed("poisoned".into()))?.insert(id.clone(), reply);
        let sent = self.sink.lock().await.send(Message::text(Value::Object(message).to_string())).await;
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
        if let Ok(mut pending) = self.pending.lock() {
            pending.remove(id);
        }
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
        let mut fields = json!({"call_id": call_id, "callee": callee, "sdp": sdp});
        if let Some(commit) = sas_commit {
            fields["sas_commit"] = json!(commit);
        }
        let ack = self.request("invite", fields).await?;
        Ok(if ack["ice_policy"] == "relay" { IcePolicy::Relay } else { IcePolicy::All })
    }

    pub async fn ringing(&self, call_id: &str) -> Result<(), SignalingError> {
        self.request("ringing", json!({"call_id": call_id})).await.map(drop)
    }

    pub async fn answer(&self, call_id: &str, sdp: &str, sas_nonce: Option<&str>) -> Result<(), SignalingError> {
        let mut fields = json!({"call_id": call_id, "sdp": sdp});
        if let Some(nonce) = sas_nonce {
            fields["sas_nonce"] = json!(nonce);
        }
        self.request("answer", fields).await.map(drop)
    }

    pub async fn reject(&self, call_id: &str) -> Result<(), SignalingError> {
        self.request("reject", json!({"call_id": call_id})).await.map(drop)
    }

    pub async fn hangup(&self, call_id: &str, reason: &str) -> Result<(), SignalingError> {
        self.request("hangup", json!({"call_id": call_id, "reason": reason})).await.map(drop)
    }

    pub async fn candidates(&self, call_id: &str, candidates: Vec<Value>) -> Result<(), SignalingError> {
        self.request("candidates", json!({"call_id": call_id, "candidates": candidates})).await.map(drop)
    }

    pub async fn negotiate(&self, call_id: &str, sdp: &str, kind: &str) -> Result<(), SignalingError> {
        self.request("negotiate", json!({"call_id": call_id, "sdp": sdp, "kind": kind})).await.map(drop)
    }

    pub async fn resume(&self, call_id: &str) -> Result<(), SignalingError> {
        self.request("resume", json!({"call_id": call_id})).await.map(drop)
    }

    pub async fn sas_reveal(&self, call_id: &str, nonce: &str) -> Result<(), SignalingError> {
        self.request("sas_reveal", json!({"call_id": call_id, "nonce": nonce})).await.map(drop)
    }

    /// Closes the socket (the server treats it as a dropped connection).
    pub async fn close(&self) {
        let _ = self.sink.lock().await.close().await;
    }
}

/// Routes one frame; false when nobody takes events any more.
async fn dispatch(value: Value, pending: &Pending, events: &mpsc::Sender<Event>) -> bool {
    let kind = value["type"].as_str().unwrap_or_default();
    if kind == "ack" || kind == "error" {
        let id = value["id"].as_str().unwrap_or_default();
        let reply = pending.lock().ok().and_then(|mut pending| pending.remove(id));
        if let Some(reply) = reply {
            let outcome = if kind == "ack" {
                Ok(value)
            } else {
                Err(SignalingError::Refused {
                    code: value["code"].as_str().unwrap_or("unknown").to_owned(),
                    message: value["message"].as_str().unwrap_or_default().to_owned(),
                })
            };
            let _ = reply.send(outcome);
        }
        return true;
    }
    match serde_json::from_value::<Event>(value) {
        Ok(event) => events.send(event).await.is_ok(),
        // An event of a later protocol version: skipped.
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_events_parse() {
        assert_eq!(ws_url("http://127.0.0.1:8080/"), "ws://127.0.0.1:8080/v1/calls/ws");
        assert_eq!(ws_url("https://calls.example.com"), "wss://calls.example.com/v1/calls/ws");
        let incoming: Event = serde_json::from_value(json!({"v": 1, "type": "incoming", "call_id": "c", "caller": "a", "sdp": "v=0", "ice_policy": "relay", "sas_commit": "ab"})).unwrap();
        assert_eq!(
            incoming,
            Event::Incoming {
                call_id: "c".into(),
                caller: "a".into(),
                sdp: "v=0".into(),
                ice_policy: IcePolicy::Relay,
                sas_commit: Some("ab".into())
            }
        );
        let hangup: Event =
            serde_json::from_value(json!({"v": 1, "type": "hangup", "call_id": "c", "reason": "busy"})).unwrap();
        assert_eq!(hangup, Event::Hangup { call_id: "c".into(), reason: "busy".into() });
    }
}
