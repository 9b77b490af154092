//! The values messages and events carry, each checked once where it enters:
//! call ids, SDP, SAS commitments and nonces, ICE candidates.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

const CALL_ID_CHARS_MAX: usize = 64;
pub(crate) const ACCOUNT_ID_CHARS_MAX: usize = 64;
const CANDIDATES_PER_MESSAGE_MAX: usize = 64;
/// A SAS commitment is SHA-256 in hex; a nonce is 32 bytes in hex.
const SAS_HEX_CHARS: usize = 64;

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

/// `+` and 1 to 15 digits (E.164); resolved to an account by the server.
pub(crate) fn is_phone_number(value: &str) -> bool {
    value
        .strip_prefix('+')
        .is_some_and(|digits| (1..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()))
}

pub(crate) fn is_token(value: &str, max: usize) -> bool {
    !value.is_empty()
        && value.len() <= max
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// An SDP offer or answer: non-empty, starting with its version line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub struct Sdp(String);

impl TryFrom<String> for Sdp {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        if value.starts_with("v=0") {
            Ok(Sdp(value))
        } else {
            Err("sdp must be a session description starting with \"v=0\"".into())
        }
    }
}

impl Sdp {
    pub fn parse(value: &str) -> Result<Self, String> {
        Sdp::try_from(value.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// 64 lowercase or uppercase hex digits (a SAS commitment or nonce), kept in lower case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub struct SasHex(String);

impl TryFrom<String> for SasHex {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        SasHex::parse(&value)
    }
}

impl SasHex {
    pub fn parse(value: &str) -> Result<Self, String> {
        if value.len() == SAS_HEX_CHARS && value.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(SasHex(value.to_ascii_lowercase()))
        } else {
            Err(format!("SAS commitments and nonces are {SAS_HEX_CHARS} hex digits"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NegotiateKind {
    Offer,
    Answer,
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

    /// Candidates built by a client, one JSON object each.
    pub fn from_values(candidates: &[Value]) -> Result<Self, String> {
        if candidates.is_empty()
            || candidates.len() > CANDIDATES_PER_MESSAGE_MAX
            || !candidates.iter().all(Value::is_object)
        {
            return Err(candidates_rule());
        }
        serde_json::value::to_raw_value(candidates).map(Candidates).map_err(|_| candidates_rule())
    }

    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    pub(crate) fn raw(&self) -> &RawValue {
        &self.0
    }

    /// The candidates as JSON values, for a client to hand to its ICE agent.
    pub fn values(&self) -> Vec<Value> {
        serde_json::from_str(self.as_str()).unwrap_or_default()
    }
}

/// A client reads candidates out of a whole event (serde buffers a tagged
/// event first, so the raw text cannot be borrowed): it takes the objects
/// and checks them as the server does.
impl<'de> Deserialize<'de> for Candidates {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Candidates::from_values(&Vec::<Value>::deserialize(deserializer)?).map_err(serde::de::Error::custom)
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
