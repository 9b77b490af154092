//! Client → server messages (API.md, "Signaling"): parsed at the server's
//! boundary into domain types, and encoded by clients from the same types.
//! A frame that does not parse is answered with an `error` (`bad_message` or
//! `message_too_large`) carrying the frame's `id` when one could be read, and
//! changes nothing.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::PROTOCOL_VERSION;
use crate::codes::{ErrorCode, HangupReason};
use crate::types::{ACCOUNT_ID_CHARS_MAX, CallId, Candidates, NegotiateKind, SasHex, Sdp, is_phone_number, is_token};

/// Largest text frame a client may send.
pub const WS_MESSAGE_BYTES_MAX_DEFAULT: usize = 64 * 1024;
const MESSAGE_ID_CHARS_MAX: usize = 64;
const TOKEN_CHARS_MAX: usize = 4_096;

/// A parsed client message: its id, and what it asks.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientMessage {
    pub id: String,
    pub body: ClientBody,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ClientBody {
    Auth {
        token: String,
    },
    /// A fresh access token for an authenticated connection, before its
    /// current one expires (of the same account and device).
    Reauth {
        token: String,
    },
    Invite {
        call_id: CallId,
        callee: String,
        sdp: Sdp,
        sas_commit: Option<SasHex>,
    },
    Ringing {
        call_id: CallId,
    },
    Answer {
        call_id: CallId,
        sdp: Sdp,
        sas_nonce: Option<SasHex>,
    },
    Reject {
        call_id: CallId,
    },
    Hangup {
        call_id: CallId,
        reason: HangupReason,
    },
    /// Trickle ICE candidates, relayed as they are (each a JSON object).
    Candidates {
        call_id: CallId,
        candidates: Candidates,
    },
    Negotiate {
        call_id: CallId,
        sdp: Sdp,
        kind: NegotiateKind,
    },
    Resume {
        call_id: CallId,
    },
    SasReveal {
        call_id: CallId,
        nonce: SasHex,
    },
    Ping,
}

impl ClientBody {
    /// The call a message is about; `None` for `auth`, `reauth` and `ping`.
    pub fn call_id(&self) -> Option<&CallId> {
        match self {
            ClientBody::Invite { call_id, .. }
            | ClientBody::Ringing { call_id }
            | ClientBody::Answer { call_id, .. }
            | ClientBody::Reject { call_id }
            | ClientBody::Hangup { call_id, .. }
            | ClientBody::Candidates { call_id, .. }
            | ClientBody::Negotiate { call_id, .. }
            | ClientBody::Resume { call_id }
            | ClientBody::SasReveal { call_id, .. } => Some(call_id),
            ClientBody::Auth { .. } | ClientBody::Reauth { .. } | ClientBody::Ping => None,
        }
    }

    /// Whether the message can change a call's state (rather than only be
    /// relayed within it).
    pub fn changes_call(&self) -> bool {
        matches!(
            self,
            ClientBody::Invite { .. }
                | ClientBody::Answer { .. }
                | ClientBody::Reject { .. }
                | ClientBody::Hangup { .. }
                | ClientBody::Resume { .. }
        )
    }
}

impl ClientMessage {
    /// The message as the text frame a client sends.
    pub fn encode(&self) -> String {
        let mut out = Out { v: PROTOCOL_VERSION, kind: self.body.kind(), id: &self.id, ..Out::default() };
        match &self.body {
            ClientBody::Auth { token } | ClientBody::Reauth { token } => out.token = Some(token),
            ClientBody::Invite { call_id, callee, sdp, sas_commit } => {
                out.call_id = Some(call_id.as_str());
                out.callee = Some(callee);
                out.sdp = Some(sdp.as_str());
                out.sas_commit = sas_commit.as_ref().map(SasHex::as_str);
            }
            ClientBody::Ringing { call_id } | ClientBody::Reject { call_id } | ClientBody::Resume { call_id } => {
                out.call_id = Some(call_id.as_str());
            }
            ClientBody::Answer { call_id, sdp, sas_nonce } => {
                out.call_id = Some(call_id.as_str());
                out.sdp = Some(sdp.as_str());
                out.sas_nonce = sas_nonce.as_ref().map(SasHex::as_str);
            }
            ClientBody::Hangup { call_id, reason } => {
                out.call_id = Some(call_id.as_str());
                out.reason = Some(*reason);
            }
            ClientBody::Candidates { call_id, candidates } => {
                out.call_id = Some(call_id.as_str());
                out.candidates = Some(candidates.raw());
            }
            ClientBody::Negotiate { call_id, sdp, kind } => {
                out.call_id = Some(call_id.as_str());
                out.sdp = Some(sdp.as_str());
                out.negotiate = Some(*kind);
            }
            ClientBody::SasReveal { call_id, nonce } => {
                out.call_id = Some(call_id.as_str());
                out.nonce = Some(nonce.as_str());
            }
            ClientBody::Ping => {}
        }
        serde_json::to_string(&out).expect("a message of strings and enums always serializes")
    }
}

impl ClientBody {
    fn kind(&self) -> Kind {
        match self {
            ClientBody::Auth { .. } => Kind::Auth,
            ClientBody::Reauth { .. } => Kind::Reauth,
            ClientBody::Invite { .. } => Kind::Invite,
            ClientBody::Ringing { .. } => Kind::Ringing,
            ClientBody::Answer { .. } => Kind::Answer,
            ClientBody::Reject { .. } => Kind::Reject,
            ClientBody::Hangup { .. } => Kind::Hangup,
            ClientBody::Candidates { .. } => Kind::Candidates,
            ClientBody::Negotiate { .. } => Kind::Negotiate,
            ClientBody::Resume { .. } => Kind::Resume,
            ClientBody::SasReveal { .. } => Kind::SasReveal,
            ClientBody::Ping => Kind::Ping,
        }
    }
}

/// The wire shape a client writes: [`Wire`]'s fields, borrowed, absent when unset.
#[derive(Default, Serialize)]
struct Out<'a> {
    v: u64,
    #[serde(rename = "type")]
    kind: Kind,
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    call_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    callee: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sdp: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sas_commit: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sas_nonce: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<HangupReason>,
    #[serde(skip_serializing_if = "Option::is_none")]
    candidates: Option<&'a RawValue>,
    #[serde(rename = "kind", skip_serializing_if = "Option::is_none")]
    negotiate: Option<NegotiateKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nonce: Option<&'a str>,
}

/// Why a frame was refused, with the frame's id when it had a readable one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub id: Option<String>,
    pub code: ErrorCode,
    pub message: String,
}

/// The message types a client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Auth,
    Reauth,
    Invite,
    Ringing,
    Answer,
    Reject,
    Hangup,
    Candidates,
    Negotiate,
    Resume,
    SasReveal,
    #[default]
    Ping,
}

impl Kind {
    /// The fields a message of this type may carry besides `v`, `type` and `id`.
    fn fields(self) -> &'static [&'static str] {
        match self {
            Kind::Auth | Kind::Reauth => &["token"],
            Kind::Invite => &["call_id", "callee", "sdp", "sas_commit"],
            Kind::Ringing | Kind::Reject | Kind::Resume => &["call_id"],
            Kind::Answer => &["call_id", "sdp", "sas_nonce"],
            Kind::Hangup => &["call_id", "reason"],
            Kind::Candidates => &["call_id", "candidates"],
            Kind::Negotiate => &["call_id", "sdp", "kind"],
            Kind::SasReveal => &["call_id", "nonce"],
            Kind::Ping => &[],
        }
    }
}

/// The wire shape, before validation into [`ClientBody`]: one flat struct
/// (no tagged enum, whose parser buffers the whole message first), with the
/// candidates borrowed from the frame.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire<'a> {
    v: u64,
    #[serde(rename = "type")]
    kind: Kind,
    id: String,
    token: Option<String>,
    call_id: Option<String>,
    callee: Option<String>,
    sdp: Option<String>,
    sas_commit: Option<String>,
    sas_nonce: Option<String>,
    reason: Option<HangupReason>,
    #[serde(borrow)]
    candidates: Option<&'a RawValue>,
    #[serde(rename = "kind")]
    negotiate: Option<NegotiateKind>,
    nonce: Option<String>,
}

impl Wire<'_> {
    /// The optional fields this frame carries.
    fn present(&self) -> impl Iterator<Item = &'static str> {
        [
            ("token", self.token.is_some()),
            ("call_id", self.call_id.is_some()),
            ("callee", self.callee.is_some()),
            ("sdp", self.sdp.is_some()),
            ("sas_commit", self.sas_commit.is_some()),
            ("sas_nonce", self.sas_nonce.is_some()),
            ("reason", self.reason.is_some()),
            ("candidates", self.candidates.is_some()),
            ("kind", self.negotiate.is_some()),
            ("nonce", self.nonce.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, present)| present.then_some(name))
    }
}

/// Parses one text frame of at most `bytes_max` bytes.
pub fn parse(frame: &str, bytes_max: usize) -> Result<ClientMessage, Refused> {
    let readable_id = || {
        serde_json::from_str::<Value>(frame)
            .ok()
            .and_then(|value| value.get("id").and_then(Value::as_str).map(str::to_owned))
            .filter(|id| is_token(id, MESSAGE_ID_CHARS_MAX))
    };
    let refuse = |code, message: String| Refused { id: readable_id(), code, message };
    if frame.len() > bytes_max {
        // Not parsed at all: a frame this large is refused before any work.
        return Err(Refused {
            id: None,
            code: ErrorCode::MessageTooLarge,
            message: format!("frames are at most {bytes_max} bytes"),
        });
    }
    let mut wire: Wire = serde_json::from_str(frame)
        .map_err(|error| refuse(ErrorCode::BadMessage, format!("not a valid message: {error}")))?;
    let bad = |message: String| refuse(ErrorCode::BadMessage, message);
    let kind = wire.kind;
    if let Some(stray) = wire.present().find(|field| !kind.fields().contains(field)) {
        return Err(bad(format!("not a valid message: unknown field `{stray}` in {kind:?}")));
    }
    fn required<T>(value: Option<T>, name: &str) -> Result<T, String> {
        value.ok_or_else(|| format!("not a valid message: missing field `{name}`"))
    }
    let call = |value: Option<String>| CallId::parse(&required(value, "call_id")?);
    let sdp = |value: Option<String>| Sdp::parse(&required(value, "sdp")?);
    let sas = |value: Option<String>| value.as_deref().map(SasHex::parse).transpose();
    let body = (|| -> Result<ClientBody, String> {
        Ok(match kind {
            Kind::Auth | Kind::Reauth => {
                let token = required(wire.token.take(), "token")?;
                if token.is_empty() || token.len() > TOKEN_CHARS_MAX {
                    return Err("token must be an access token".into());
                }
                if kind == Kind::Auth { ClientBody::Auth { token } } else { ClientBody::Reauth { token } }
            }
            Kind::Invite => {
                let callee = required(wire.callee.take(), "callee")?;
                let sdp = sdp(wire.sdp.take())?;
                if !is_token(&callee, ACCOUNT_ID_CHARS_MAX) && !is_phone_number(&callee) {
                    return Err("callee must be an account id or a phone number in E.164 form (+79161234567)".into());
                }
                ClientBody::Invite {
                    call_id: call(wire.call_id.take())?,
                    callee,
                    sdp,
                    sas_commit: sas(wire.sas_commit.take())?,
                }
            }
            Kind::Ringing => ClientBody::Ringing { call_id: call(wire.call_id.take())? },
            Kind::Answer => ClientBody::Answer {
                call_id: call(wire.call_id.take())?,
                sdp: sdp(wire.sdp.take())?,
                sas_nonce: sas(wire.sas_nonce.take())?,
            },
            Kind::Reject => ClientBody::Reject { call_id: call(wire.call_id.take())? },
            Kind::Hangup => {
                let reason = required(wire.reason, "reason")?;
                if !reason.client_may_send() {
                    return Err("a client hangs up with user_hangup, busy or ice_failed".into());
                }
                ClientBody::Hangup { call_id: call(wire.call_id.take())?, reason }
            }
            Kind::Candidates => {
                let candidates = Candidates::parse(required(wire.candidates, "candidates")?)?;
                ClientBody::Candidates { call_id: call(wire.call_id.take())?, candidates }
            }
            Kind::Negotiate => ClientBody::Negotiate {
                call_id: call(wire.call_id.take())?,
                sdp: sdp(wire.sdp.take())?,
                kind: required(wire.negotiate, "kind")?,
            },
            Kind::Resume => ClientBody::Resume { call_id: call(wire.call_id.take())? },
            Kind::SasReveal => {
                let nonce = SasHex::parse(&required(wire.nonce.take(), "nonce")?)?;
                ClientBody::SasReveal { call_id: call(wire.call_id.take())?, nonce }
            }
            Kind::Ping => ClientBody::Ping,
        })
    })()
    .map_err(bad)?;
    if wire.v != PROTOCOL_VERSION {
        return Err(bad(format!("this server speaks protocol version {PROTOCOL_VERSION}")));
    }
    if !is_token(&wire.id, MESSAGE_ID_CHARS_MAX) {
        return Err(Refused {
            id: None,
            code: ErrorCode::BadMessage,
            message: format!("id must be 1 to {MESSAGE_ID_CHARS_MAX} letters, digits, '-' or '_'"),
        });
    }
    Ok(ClientMessage { id: wire.id, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = WS_MESSAGE_BYTES_MAX_DEFAULT;
    const HEX: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    fn ok(frame: Value) -> ClientMessage {
        parse(&frame.to_string(), MAX).unwrap_or_else(|refused| panic!("{frame}: {refused:?}"))
    }

    fn refused(frame: Value) -> Refused {
        parse(&frame.to_string(), MAX).expect_err(&frame.to_string())
    }

    #[test]
    fn parses_every_client_message() {
        let invite = ok(
            serde_json::json!({"v": 1, "type": "invite", "id": "m1", "call_id": "c-1", "callee": "acc", "sdp": "v=0\r\n", "sas_commit": HEX}),
        );
        assert_eq!(invite.id, "m1");
        assert!(matches!(invite.body, ClientBody::Invite { ref callee, sas_commit: Some(_), .. } if callee == "acc"));
        for frame in [
            serde_json::json!({"v": 1, "type": "auth", "id": "a", "token": "t"}),
            serde_json::json!({"v": 1, "type": "reauth", "id": "a", "token": "t"}),
            serde_json::json!({"v": 1, "type": "ringing", "id": "a", "call_id": "c"}),
            serde_json::json!({"v": 1, "type": "answer", "id": "a", "call_id": "c", "sdp": "v=0"}),
            serde_json::json!({"v": 1, "type": "reject", "id": "a", "call_id": "c"}),
            serde_json::json!({"v": 1, "type": "hangup", "id": "a", "call_id": "c", "reason": "user_hangup"}),
            serde_json::json!({"v": 1, "type": "candidates", "id": "a", "call_id": "c", "candidates": [{"candidate": "candidate:1 1 udp 1 127.0.0.1 5000 typ host"}]}),
            serde_json::json!({"v": 1, "type": "negotiate", "id": "a", "call_id": "c", "sdp": "v=0", "kind": "offer"}),
            serde_json::json!({"v": 1, "type": "resume", "id": "a", "call_id": "c"}),
            serde_json::json!({"v": 1, "type": "sas_reveal", "id": "a", "call_id": "c", "nonce": HEX}),
            serde_json::json!({"v": 1, "type": "ping", "id": "a"}),
        ] {
            ok(frame);
        }
    }

    #[test]
    fn refuses_each_kind_of_bad_frame_keeping_its_id() {
        let cases = [
            serde_json::json!({"v": 1, "type": "dance", "id": "m"}),
            serde_json::json!({"v": 2, "type": "ping", "id": "m"}),
            serde_json::json!({"v": 1, "type": "ping", "id": "m", "extra": 1}),
            serde_json::json!({"v": 1, "type": "ringing", "id": "m", "call_id": "has space"}),
            serde_json::json!({"v": 1, "type": "ringing", "id": "m", "call_id": ""}),
            serde_json::json!({"v": 1, "type": "ringing", "id": "m", "call_id": "x".repeat(65)}),
            serde_json::json!({"v": 1, "type": "answer", "id": "m", "call_id": "c", "sdp": "hello"}),
            serde_json::json!({"v": 1, "type": "invite", "id": "m", "call_id": "c", "callee": "a b", "sdp": "v=0"}),
            serde_json::json!({"v": 1, "type": "invite", "id": "m", "call_id": "c", "callee": "a", "sdp": "v=0", "sas_commit": "abc"}),
            serde_json::json!({"v": 1, "type": "hangup", "id": "m", "call_id": "c", "reason": "glare"}),
            serde_json::json!({"v": 1, "type": "hangup", "id": "m", "call_id": "c", "reason": "tired"}),
            serde_json::json!({"v": 1, "type": "candidates", "id": "m", "call_id": "c", "candidates": []}),
            serde_json::json!({"v": 1, "type": "candidates", "id": "m", "call_id": "c", "candidates": ["x"]}),
            serde_json::json!({"v": 1, "type": "sas_reveal", "id": "m", "call_id": "c", "nonce": "zz"}),
            serde_json::json!({"v": 1, "type": "auth", "id": "m", "token": ""}),
            serde_json::json!({"v": 1, "type": "reauth", "id": "m"}),
            serde_json::json!({"v": 1, "type": "reauth", "id": "m", "token": "t", "call_id": "c"}),
        ];
        for frame in cases {
            let refusal = refused(frame.clone());
            assert_eq!(refusal.code, ErrorCode::BadMessage, "{frame}");
            assert_eq!(refusal.id.as_deref(), Some("m"), "{frame}");
        }
        let no_id = parse("{not json", MAX).unwrap_err();
        assert_eq!((no_id.code, no_id.id), (ErrorCode::BadMessage, None));
        let bad_id = refused(serde_json::json!({"v": 1, "type": "ping", "id": "has space"}));
        assert_eq!((bad_id.code, bad_id.id), (ErrorCode::BadMessage, None));
    }

    #[test]
    fn what_a_client_encodes_the_server_parses_back() {
        let frames = [
            serde_json::json!({"v": 1, "type": "auth", "id": "a", "token": "t"}),
            serde_json::json!({"v": 1, "type": "reauth", "id": "a", "token": "t"}),
            serde_json::json!({"v": 1, "type": "invite", "id": "a", "call_id": "c", "callee": "+79161234567", "sdp": "v=0", "sas_commit": HEX}),
            serde_json::json!({"v": 1, "type": "answer", "id": "a", "call_id": "c", "sdp": "v=0", "sas_nonce": HEX}),
            serde_json::json!({"v": 1, "type": "hangup", "id": "a", "call_id": "c", "reason": "ice_failed"}),
            serde_json::json!({"v": 1, "type": "candidates", "id": "a", "call_id": "c", "candidates": [{"candidate": "x", "sdpMid": "0"}]}),
            serde_json::json!({"v": 1, "type": "negotiate", "id": "a", "call_id": "c", "sdp": "v=0", "kind": "answer"}),
            serde_json::json!({"v": 1, "type": "sas_reveal", "id": "a", "call_id": "c", "nonce": HEX}),
            serde_json::json!({"v": 1, "type": "resume", "id": "a", "call_id": "c"}),
            serde_json::json!({"v": 1, "type": "ping", "id": "a"}),
        ];
        for frame in frames {
            let message = ok(frame.clone());
            let encoded: Value = serde_json::from_str(&message.encode()).unwrap();
            assert_eq!(encoded, frame);
            assert_eq!(parse(&message.encode(), MAX).unwrap(), message);
        }
    }

    #[test]
    fn oversized_frames_are_refused_unread() {
        let frame = serde_json::json!({"v": 1, "type": "ping", "id": "m", "pad": "x".repeat(100)}).to_string();
        let refusal = parse(&frame, 64).unwrap_err();
        assert_eq!(refusal.code, ErrorCode::MessageTooLarge);
    }
}
