//! Server → client frames: the events a call sends to its devices, and the
//! replies to a client's messages (`ack`, `pong`, `error`). The server
//! encodes them with [`frame`] (the protocol version first, one allocation);
//! clients read them back with [`ServerFrame::decode`].

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::PROTOCOL_VERSION;
use crate::codes::{ErrorCode, HangupReason};
use crate::types::{CallId, Candidates, NegotiateKind, SasHex, Sdp};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IcePolicy {
    All,
    /// Either party allows no peer-to-peer path: media only through TURN.
    Relay,
}

/// Server → device events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerEvent {
    Incoming {
        call_id: CallId,
        caller: Arc<str>,
        sdp: Sdp,
        ice_policy: IcePolicy,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sas_commit: Option<SasHex>,
    },
    Ringing {
        call_id: CallId,
    },
    Answered {
        call_id: CallId,
        sdp: Sdp,
        ice_policy: IcePolicy,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sas_nonce: Option<SasHex>,
    },
    AnsweredElsewhere {
        call_id: CallId,
    },
    Candidates {
        call_id: CallId,
        candidates: Candidates,
    },
    Negotiate {
        call_id: CallId,
        sdp: Sdp,
        kind: NegotiateKind,
    },
    SasReveal {
        call_id: CallId,
        nonce: SasHex,
    },
    Hangup {
        call_id: CallId,
        reason: HangupReason,
    },
}

impl ServerEvent {
    /// About how long the event's frame is (the bulky fields plus room for the rest).
    pub fn frame_bytes_hint(&self) -> usize {
        const REST: usize = 192;
        REST + match self {
            ServerEvent::Incoming { sdp, .. }
            | ServerEvent::Answered { sdp, .. }
            | ServerEvent::Negotiate { sdp, .. } => sdp.as_str().len() + sdp.as_str().len() / 8,
            ServerEvent::Candidates { candidates, .. } => candidates.as_str().len(),
            _ => 0,
        }
    }

    /// The event's frame, in a buffer sized for it.
    pub fn frame(&self) -> String {
        frame_sized(self, self.frame_bytes_hint())
    }
}

/// The answer to one client message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    /// Done. An accepted `invite` carries the call's ICE policy; an accepted
    /// `auth` the account and device the token names.
    Ack {
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ice_policy: Option<IcePolicy>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        account_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device_id: Option<String>,
    },
    Pong {
        id: String,
    },
    /// Refused, with a stable code (the `id` is absent when the frame had no readable one).
    Error {
        id: Option<String>,
        code: String,
        message: String,
    },
}

impl Reply {
    pub fn frame(&self) -> String {
        frame(self)
    }
}

/// The frame that answers message `id` with `code`, without building a [`Reply`].
pub fn error_frame(id: Option<&str>, code: ErrorCode, message: &str) -> String {
    #[derive(Serialize)]
    #[serde(tag = "type", rename = "error")]
    struct ErrorFrame<'a> {
        id: Option<&'a str>,
        code: &'static str,
        message: &'a str,
    }
    frame(&ErrorFrame { id, code: code.as_str(), message })
}

/// The frame that acknowledges message `id` (with the call's ICE policy for an invite).
pub fn ack_frame(id: &str, ice_policy: Option<IcePolicy>) -> String {
    #[derive(Serialize)]
    #[serde(tag = "type", rename = "ack")]
    struct Ack<'a> {
        id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        ice_policy: Option<IcePolicy>,
    }
    frame(&Ack { id, ice_policy })
}

/// The frame that answers `ping` `id`.
pub fn pong_frame(id: &str) -> String {
    #[derive(Serialize)]
    #[serde(tag = "type", rename = "pong")]
    struct Pong<'a> {
        id: &'a str,
    }
    frame(&Pong { id })
}

/// Anything the server sends, as a client reads it.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerFrame {
    Reply(Reply),
    Event(ServerEvent),
}

impl ServerFrame {
    /// Reads one text frame; `None` for what this client does not know (a
    /// later protocol version's frame).
    pub fn decode(text: &str) -> Option<ServerFrame> {
        #[derive(Deserialize)]
        struct Head<'a> {
            #[serde(rename = "type", borrow)]
            kind: &'a str,
        }
        let head: Head = serde_json::from_str(text).ok()?;
        match head.kind {
            "ack" | "pong" | "error" => serde_json::from_str(text).ok().map(ServerFrame::Reply),
            _ => serde_json::from_str(text).ok().map(ServerFrame::Event),
        }
    }
}

/// Serializes a server frame, with the protocol version first, in one allocation.
pub fn frame(message: &impl Serialize) -> String {
    frame_sized(message, 128)
}

/// [`frame`], with room for `capacity` bytes from the start (no regrowth
/// for a frame carrying SDP or candidates).
fn frame_sized(message: &impl Serialize, capacity: usize) -> String {
    const PREFIX: &[u8] = b"{\"v\":1";
    const _: () = assert!(PROTOCOL_VERSION == 1);
    let mut bytes = Vec::with_capacity(capacity);
    bytes.extend_from_slice(PREFIX);
    if serde_json::to_writer(&mut bytes, message).is_err() || bytes.len() < PREFIX.len() + 2 {
        return "{\"v\":1}".to_owned();
    }
    // `{"v":1` + `{…}` → `{"v":1,…}` (or `{"v":1}` for an empty object).
    if bytes[PREFIX.len() + 1] == b'}' {
        bytes.truncate(PREFIX.len());
        bytes.push(b'}');
    } else {
        bytes[PREFIX.len()] = b',';
    }
    // serde_json writes valid UTF-8.
    String::from_utf8(bytes).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_the_version_first() {
        let event = ServerEvent::Ringing { call_id: CallId::parse("c-1").unwrap() };
        assert_eq!(event.frame(), r#"{"v":1,"type":"ringing","call_id":"c-1"}"#);
        assert_eq!(frame(&serde_json::json!({})), r#"{"v":1}"#);
        let error = error_frame(None, ErrorCode::BadMessage, "no");
        assert_eq!(error, r#"{"v":1,"type":"error","id":null,"code":"bad_message","message":"no"}"#);
        assert_eq!(ack_frame("m", None), r#"{"v":1,"type":"ack","id":"m"}"#);
        assert_eq!(ack_frame("m", Some(IcePolicy::Relay)), r#"{"v":1,"type":"ack","id":"m","ice_policy":"relay"}"#);
        assert_eq!(pong_frame("p"), r#"{"v":1,"type":"pong","id":"p"}"#);
        let refused = Reply::Error { id: Some("m".into()), code: "bad_message".into(), message: "no".into() };
        assert_eq!(refused.frame(), error.replace("null", "\"m\""));
    }

    #[test]
    fn clients_read_back_what_the_server_writes() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let events = [
            ServerEvent::Incoming {
                call_id: CallId::parse("c").unwrap(),
                caller: "a".into(),
                sdp: Sdp::parse("v=0\r\n").unwrap(),
                ice_policy: IcePolicy::Relay,
                sas_commit: Some(SasHex::parse(hex).unwrap()),
            },
            ServerEvent::Candidates {
                call_id: CallId::parse("c").unwrap(),
                candidates: Candidates::from_values(&[serde_json::json!({"candidate": "x"})]).unwrap(),
            },
            ServerEvent::Hangup { call_id: CallId::parse("c").unwrap(), reason: HangupReason::Busy },
        ];
        for event in events {
            assert_eq!(ServerFrame::decode(&event.frame()), Some(ServerFrame::Event(event)));
        }
        let ack = ack_frame("m", Some(IcePolicy::All));
        let Some(ServerFrame::Reply(Reply::Ack { id, ice_policy, .. })) = ServerFrame::decode(&ack) else {
            panic!("{ack}")
        };
        assert_eq!((id.as_str(), ice_policy), ("m", Some(IcePolicy::All)));
        assert_eq!(ServerFrame::decode(r#"{"v":1,"type":"dance"}"#), None);
    }
}
