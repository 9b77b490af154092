//! A scripted signaling client: connects to `/v1/calls/ws`, sends messages
//! with fresh ids, waits for their `ack`/`error`, and keeps the events that
//! arrive meanwhile for the test to take in order.

use std::collections::VecDeque;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for something that must happen.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Phone {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    events: VecDeque<Value>,
    pub name: String,
}

/// A minimal SDP, enough for the server (it relays SDP, it does not read it).
pub fn sdp(tag: &str) -> String {
    format!("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns={tag}\r\nt=0 0\r\n")
}

pub fn ws_url(http_url: &str) -> String {
    format!("{}/v1/calls/ws", http_url.replacen("http://", "ws://", 1))
}

impl Phone {
    /// Connects without authenticating.
    pub async fn connect(http_url: &str, name: &str) -> Phone {
        let (ws, _) = tokio_tungstenite::connect_async(ws_url(http_url)).await.expect("the WebSocket upgrade");
        Phone { ws, next_id: 1, events: VecDeque::new(), name: name.to_owned() }
    }

    /// Connects and authenticates with `token`.
    pub async fn signed_in(http_url: &str, name: &str, token: &str) -> Phone {
        let mut phone = Phone::connect(http_url, name).await;
        let ack = phone.request("auth", json!({"token": token})).await;
        assert_eq!(ack["type"], "ack", "{name}: auth: {ack}");
        phone
    }

    /// Connects and authenticates, or `None` when the server does not take
    /// the connection or the token now (a client retries).
    pub async fn try_signed_in(http_url: &str, name: &str, token: &str) -> Option<Phone> {
        let (ws, _) = tokio_tungstenite::connect_async(ws_url(http_url)).await.ok()?;
        let mut phone = Phone { ws, next_id: 1, events: VecDeque::new(), name: name.to_owned() };
        let id = phone.send("auth", json!({"token": token})).await;
        loop {
            let frame = phone.next_frame().await?;
            if frame["id"] == id.as_str() {
                return (frame["type"] == "ack").then_some(phone);
            }
        }
    }

    pub async fn send_text(&mut self, text: String) {
        self.ws.send(Message::text(text)).await.expect("send a frame");
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.ws.send(Message::binary(bytes)).await.expect("send a frame");
    }

    /// Sends `{"v":1,"type":kind,"id":…, fields…}` and returns its id.
    pub async fn send(&mut self, kind: &str, fields: Value) -> String {
        let id = format!("m{}", self.next_id);
        self.next_id += 1;
        let mut message = json!({"v": 1, "type": kind, "id": id});
        if let (Some(message), Some(fields)) = (message.as_object_mut(), fields.as_object()) {
            message.extend(fields.clone());
        }
        self.send_text(message.to_string()).await;
        id
    }

    /// Sends a message and returns the `ack`, `pong` or `error` that answers it.
    pub async fn request(&mut self, kind: &str, fields: Value) -> Value {
        let id = self.send(kind, fields).await;
        self.answer_to(&id).await
    }

    /// The answer to the message `id`, keeping other frames as events.
    pub async fn answer_to(&mut self, id: &str) -> Value {
        loop {
            let frame =
                self.next_frame().await.unwrap_or_else(|| panic!("{}: closed before answering {id}", self.name));
            if frame["id"] == id && matches!(frame["type"].as_str(), Some("ack" | "error" | "pong")) {
                return frame;
            }
            self.events.push_back(frame);
        }
    }

    /// Expects `ack` for the message.
    pub async fn ok(&mut self, kind: &str, fields: Value) -> Value {
        let answer = self.request(kind, fields.clone()).await;
        assert_eq!(answer["type"], "ack", "{}: {kind} {fields}: {answer}", self.name);
        answer
    }

    /// Expects `error` with `code` for the message.
    pub async fn refused(&mut self, kind: &str, fields: Value, code: &str) -> Value {
        let answer = self.request(kind, fields.clone()).await;
        assert_eq!(
            (answer["type"].as_str(), answer["code"].as_str()),
            (Some("error"), Some(code)),
            "{}: {kind}: {answer}",
            self.name
        );
        answer
    }

    async fn next_frame(&mut self) -> Option<Value> {
        loop {
            let next = tokio::time::timeout(EVENT_TIMEOUT, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("{}: nothing arrived within {EVENT_TIMEOUT:?}", self.name));
            match next {
                Some(Ok(Message::Text(text))) => {
                    let value: Value = serde_json::from_str(&text).expect("server frames are JSON");
                    assert_eq!(value["v"], 1, "every server frame carries v:1: {value}");
                    return Some(value);
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    }

    /// The next event of type `kind` (earlier events of other types stay queued).
    pub async fn event(&mut self, kind: &str) -> Value {
        if let Some(at) = self.events.iter().position(|event| event["type"] == kind) {
            return self.events.remove(at).expect("present");
        }
        loop {
            let frame = self
                .next_frame()
                .await
                .unwrap_or_else(|| panic!("{}: closed while waiting for {kind}; had {:?}", self.name, self.events));
            if frame["type"] == kind {
                return frame;
            }
            self.events.push_back(frame);
        }
    }

    /// The `hangup` for `call_id`, with its reason.
    pub async fn hangup(&mut self, call_id: &str) -> String {
        let event = self.event("hangup").await;
        assert_eq!(event["call_id"], call_id, "{}: {event}", self.name);
        event["reason"].as_str().unwrap_or_default().to_owned()
    }

    /// Asserts that no event arrives within `within` (frames already queued
    /// count). Reading answers the server's pings meanwhile.
    pub async fn quiet(&mut self, within: Duration) {
        assert!(self.events.is_empty(), "{}: unexpected events {:?}", self.name, self.events);
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Ok(Some(Ok(Message::Text(text)))) => panic!("{}: unexpected frame {text}", self.name),
                Ok(other) => panic!("{}: unexpected {other:?}", self.name),
            }
        }
    }

    /// Every frame that arrives within `within` (and those already queued).
    pub async fn frames_within(&mut self, within: Duration) -> Vec<Value> {
        let mut frames: Vec<Value> = self.events.drain(..).collect();
        let deadline = tokio::time::Instant::now() + within;
        while let Ok(Some(Ok(message))) = tokio::time::timeout_at(deadline, self.ws.next()).await {
            if let Message::Text(text) = message {
                frames.push(serde_json::from_str(&text).expect("server frames are JSON"));
            }
        }
        frames
    }

    /// Reads until the server closes; returns its close frame.
    pub async fn closed(&mut self) -> Option<CloseFrame> {
        loop {
            let next = tokio::time::timeout(EVENT_TIMEOUT, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("{}: not closed within {EVENT_TIMEOUT:?}", self.name));
            match next {
                Some(Ok(Message::Close(frame))) => return frame,
                None | Some(Err(_)) => return None,
                Some(Ok(Message::Text(text))) => {
                    self.events.push_back(serde_json::from_str(&text).unwrap_or(Value::String(text.to_string())))
                }
                Some(Ok(_)) => {}
            }
        }
    }

    /// Events received while waiting (for assertions after `closed`).
    pub fn take_events(&mut self) -> Vec<Value> {
        self.events.drain(..).collect()
    }

    /// Drops the connection without a close handshake (a lost network).
    pub fn drop_connection(self) {
        drop(self.ws);
    }
}
