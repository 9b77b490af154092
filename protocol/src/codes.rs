//! The protocol's stable strings: error codes, hangup reasons and the
//! WebSocket close codes the server uses (API.md, "Signaling").

use serde::{Deserialize, Serialize};

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
    pub const ALL: [ErrorCode; 13] = [
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

    /// The code a stable string names; `None` for a code this build does not know.
    pub fn parse(code: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|known| known.as_str() == code)
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
    pub const ALL: [HangupReason; 10] = [
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
    ];

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

    /// The reason a stable string names; `None` for one this build does not know.
    pub fn parse(reason: &str) -> Option<HangupReason> {
        HangupReason::ALL.into_iter().find(|known| known.as_str() == reason)
    }

    /// The reasons a client may give in its own `hangup`; the others are the
    /// server's to decide.
    pub fn client_may_send(self) -> bool {
        matches!(self, HangupReason::UserHangup | HangupReason::IceFailed | HangupReason::Busy)
    }
}

impl std::fmt::Display for HangupReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// WebSocket close codes the server uses.
pub mod close {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The server is stopping.
    pub const GOING_AWAY: u16 = 1001;
    /// The client did not read its frames fast enough.
    pub const SLOW_READER: u16 = 1008;
    /// A frame beyond what the transport reads at all.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// No valid `auth` within the deadline, or a bad token.
    pub const UNAUTHENTICATED: u16 = 4401;
    /// A newer connection of the same device took over.
    pub const REPLACED: u16 = 4409;
    /// The account has too many devices connected.
    pub const TOO_MANY_DEVICES: u16 = 4429;
    /// Nothing heard from the client (not even a pong) for too long.
    pub const IDLE: u16 = 4408;
    /// The server lost touch with the shared call state: reconnect and resume.
    pub const RECONNECT: u16 = 1012;

    pub fn reason(code: u16) -> &'static str {
        match code {
            GOING_AWAY => "server shutting down",
            SLOW_READER => "outbound queue full: the client reads too slowly",
            MESSAGE_TOO_BIG => "a frame over the size this server reads",
            UNAUTHENTICATED => "authenticate first with a valid access token",
            REPLACED => "another connection of this device took over",
            TOO_MANY_DEVICES => "too many devices of this account are connected",
            IDLE => "no frames or pongs for too long",
            RECONNECT => "the server lost touch with the call state; reconnect and resume",
            _ => "",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_the_documented_strings() {
        let strings: Vec<&str> = ErrorCode::ALL.iter().map(|code| code.as_str()).collect();
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
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
        }
        assert_eq!(ErrorCode::parse("teapot"), None);
    }

    #[test]
    fn hangup_reasons_are_sent_and_stored_alike() {
        for reason in HangupReason::ALL {
            assert_eq!(serde_json::to_value(reason).unwrap(), reason.as_str(), "stored and sent alike");
        }
    }
}
