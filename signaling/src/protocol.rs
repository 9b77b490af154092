//! The signaling protocol's messages (API.md, "Signaling"), parsed at the
//! boundary into domain types. A frame that does not parse is answered with
//! an `error` (`bad_message` or `message_too_large`) carrying the frame's
//! `id` when one could be read, and changes nothing.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

/// The protocol version every frame carries as `"v": 1`.
pub const PROTOCOL_VERSION: u64 = 1;
/// Largest text frame a client may send.
pub const WS_MESSAGE_BYTES_MAX_DEFAULT: usize = 64 * 1024;
const MESSAGE_ID_CHARS_MAX: usize = 64;
const CALL_ID_CHARS_MAX: usize = 64;
const ACCOUNT_ID_CHARS_MAX: usize = 64;
const TOKEN_CHARS_MAX: usize = 4_096;
const CANDIDATES_PER_MESSAGE_MAX: usize = 64;
/// A SAS commitment is SHA-256 in hex; a nonce is 32 bytes in hex.
const SAS_HEX_CHARS: usize = 64;

/// Every error code a client can receive, each with its stable string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    Unauthenticated,
    BadMessage,
    MessageTooLarge,
    RateLimited,
    UnknownCall,
    NotInCall,
    InvalidState,
    CalleeNotFound,
    CalleeNotAccepting,
    CalleeBusy,
    AlreadyInCall,
    /// The account already has as many devices connected as allowed.
    TooManyDevices,
    /// The server could not do it (its database failed); retry.
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::BadMessage => "bad_message",
            ErrorCode::MessageTooLarge => "message_too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::UnknownCall => "unknown_call",
            ErrorCode::NotInCall => "not_in_call",
            ErrorCode::InvalidState => "invalid_state",
            ErrorCode::CalleeNotFound => "callee_not_found",
            ErrorCode::CalleeNotAccepting => "callee_not_accepting",
            ErrorCode::CalleeBusy => "callee_busy",
            ErrorCode::AlreadyInCall => "already_in_call",
            ErrorCode::TooManyDevices => "too_many_devices",
            ErrorCode::Internal => "internal",
        }
    }
}

/// Why a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HangupReason {
    UserHangup,
    Rejected,
    Busy,
    InviteTimeout,
    Unavailable,
    IceFailed,
    AnsweredElsewhere,
    LostConnection,
    Glare,
    ServerShutdown,
}

impl HangupReason {
    pub fn as_str(self) -> &'static str {
        match self {
            HangupReason::UserHangup => "user_hangup",
            HangupReason::Rejected => "rejected",
            HangupReason::Busy => "busy",
            HangupReason::InviteTimeout => "invite_timeout",
            HangupReason::Unavailable => "unavailable",
            HangupReason::IceFailed => "ice_failed",
            HangupReason::AnsweredElsewhere => "answered_elsewhere",
            HangupReason::LostConnection => "lost_connection",
            HangupReason::Glare => "glare",
            HangupReason::ServerShutdown => "server_shutdown",
        }
    }

    /// The reasons a client may give in its own `hangup`; the others are the
    /// server's to decide.
    pub fn client_may_send(self) -> bool {
        matches!(self, HangupReason::UserHangup | HangupReason::IceFailed | HangupReason::Busy)
    }
}

/// A call id chosen by the caller: 1–64 of `A–Z a–z 0–9 - _` (a UUID fits).
/// Ids compare as strings; glare resolves to the lesser.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub struct CallId(String);

impl TryFrom<String> for CallId {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        CallId::parse(&value)
    }
}

impl CallId {
    pub fn parse(value: &str) -> Result<Self, String> {
        if is_token(value, CALL_ID_CHARS_MAX) {
            Ok(CallId(value.to_owned()))
        } else {
            Err(format!("call_id must be 1 to {CALL_ID_CHARS_MAX} letters, digits, '-' or '_'"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for CallId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `+` and 1 to 15 digits (E.164); resolved to an account by the hub.
fn is_phone_number(value: &str) -> bool {
    value
        .strip_prefix('+')
        .is_some_and(|digits| (1..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()))
}

fn is_token(value: &str, max: usize) -> bool {
    !value.is_empty()
        && value.len() <= max
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// An SDP offer or answer: non-empty, starting with its version line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sdp(String);

impl Sdp {
    pub fn parse(value: &str) -> Result<Self, String> {
        if value.starts_with("v=0") {
            Ok(Sdp(value.to_owned()))
        } else {
            Err("sdp must be a session description starting with \"v=0\"".into())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// 64 lowercase or uppercase hex digits (a SAS commitment or nonce).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SasHex(String);

impl SasHex {
    pub fn parse(value: &str) -> Result<Self, String> {
        if value.len() == SAS_HEX_CHARS && value.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(SasHex(value.to_ascii_lowercase()))
        } else {
            Err(format!("SAS commitments and nonces are {SAS_HEX_CHARS} hex digits"))
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NegotiateKind {
    Offer,
    Answer,
}

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
    /// The call a message is about; `None` for `auth` and `ping`.
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
            ClientBody::Auth { .. } | ClientBody::Ping => None,
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

/// Why a frame was refused, with the frame's id when it had a readable one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub id: Option<String>,
    pub code: ErrorCode,
    pub message: String,
}

/// A JSON array of 1 to 64 candidate objects, kept as the text it came in:
/// checked once, relayed verbatim.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct Candidates(Box<RawValue>);

impl Candidates {
    pub fn parse(raw: &RawValue) -> Result<Self, String> {
        let items: Vec<&RawValue> = serde_json::from_str(raw.get()).map_err(|_| candidates_rule())?;
        if items.is_empty()
            || items.len() > CANDIDATES_PER_MESSAGE_MAX
            || !items.iter().all(|item| item.get().trim_start().starts_with('{'))
        {
            return Err(candidates_rule());
        }
        Ok(Candidates(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        self.0.get()
    }
}

impl PartialEq for Candidates {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

fn candidates_rule() -> String {
    format!("candidates is a list of 1 to {CANDIDATES_PER_MESSAGE_MAX} objects")
}

/// The message types a client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Auth,
    Invite,
    Ringing,
    Answer,
    Reject,
    Hangup,
    Candidates,
    Negotiate,
    Resume,
    SasReveal,
    Ping,
}

impl Kind {
    /// The fields a message of this type may carry besides `v`, `type` and `id`.
    fn fields(self) -> &'static [&'static str] {
        match self {
            Kind::Auth => &["token"],
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
            Kind::Auth => {
                let token = required(wire.token.take(), "token")?;
                if token.is_empty() || token.len() > TOKEN_CHARS_MAX {
                    return Err("token must be an access token".into());
                }
                ClientBody::Auth { token }
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
    fn oversized_frames_are_refused_unread() {
        let frame = serde_json::json!({"v": 1, "type": "ping", "id": "m", "pad": "x".repeat(100)}).to_string();
        let refusal = parse(&frame, 64).unwrap_err();
        assert_eq!(refusal.code, ErrorCode::MessageTooLarge);
    }

    #[test]
    fn error_codes_are_the_documented_strings() {
        let all = [
            ErrorCode::Unauthenticated,
            ErrorCode::BadMessage,
            ErrorCode::MessageTooLarge,
            ErrorCode::RateLimited,
            ErrorCode::UnknownCall,
            ErrorCode::NotInCall,
            ErrorCode::InvalidState,
            ErrorCode::CalleeNotFound,
            ErrorCode::CalleeNotAccepting,
            ErrorCode::CalleeBusy,
            ErrorCode::AlreadyInCall,
            ErrorCode::TooManyDevices,
            ErrorCode::Internal,
        ];
        let strings: Vec<&str> = all.iter().map(|code| code.as_str()).collect();
        assert_eq!(
            strings,
            [
                "unauthenticated",
                "bad_message",
                "message_too_large",
                "rate_limited",
                "unknown_call",
                "not_in_call",
                "invalid_state",
                "callee_not_found",
                "callee_not_accepting",
                "callee_busy",
                "already_in_call",
                "too_many_devices",
                "internal",
            ]
        );
        for reason in [
            HangupReason::UserHangup,
            HangupReason::Rejected,
            HangupReason::Busy,
            HangupReason::InviteTimeout,
            HangupReason::Unavailable,
            HangupReason::IceFailed,
            HangupReason::AnsweredElsewhere,
            HangupReason::LostConnection,
            HangupReason::Glare,
            HangupReason::ServerShutdown,
        ] {
            assert_eq!(serde_json::to_value(reason).unwrap(), reason.as_str(), "stored and sent alike");
        }
        assert!(CallId::parse("01a2-17_x").unwrap() < CallId::parse("01a3").unwrap());
    }
}
