//! The settings the call service honours, as domain types.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Who may call me.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CallsFrom {
    Everybody,
    Nobody,
}

/// Whether media may flow peer-to-peer (`always`) or only through the relay
/// (`never`, which hides my IP address from the other party).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum P2p {
    Always,
    Never,
}

impl CallsFrom {
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "everybody" => Some(CallsFrom::Everybody),
            "nobody" => Some(CallsFrom::Nobody),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CallsFrom::Everybody => "everybody",
            CallsFrom::Nobody => "nobody",
        }
    }
}

impl P2p {
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "always" => Some(P2p::Always),
            "never" => Some(P2p::Never),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            P2p::Always => "always",
            P2p::Never => "never",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Settings {
    pub calls_from: CallsFrom,
    pub p2p: P2p,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_the_documented_values() {
        assert_eq!(CallsFrom::parse("nobody"), Some(CallsFrom::Nobody));
        assert_eq!(P2p::parse("never"), Some(P2p::Never));
        for bad in ["", "Nobody", "contacts", "sometimes"] {
            assert_eq!(CallsFrom::parse(bad), None);
            assert_eq!(P2p::parse(bad), None);
        }
        assert_eq!(CallsFrom::parse(CallsFrom::Everybody.as_str()), Some(CallsFrom::Everybody));
        assert_eq!(P2p::parse(P2p::Always.as_str()), Some(P2p::Always));
    }
}
