//! The signaling service's limits, each named with its unit. Every one is a
//! `courier serve` setting (flag, `COURIER_*` variable or TOML key of the
//! same name).

use std::time::Duration;

use crate::machine::{RECONNECT_GRACE_S_DEFAULT, RING_TIMEOUT_S_DEFAULT};
use courier_protocol::message::WS_MESSAGE_BYTES_MAX_DEFAULT;

pub const WS_AUTH_TIMEOUT_S_DEFAULT: u64 = 10;
pub const WS_PING_INTERVAL_S_DEFAULT: u64 = 15;
pub const WS_IDLE_TIMEOUT_S_DEFAULT: u64 = 45;
pub const WS_WRITE_TIMEOUT_S_DEFAULT: u64 = 10;
pub const WS_MESSAGES_PER_S_DEFAULT: u32 = 50;
pub const WS_MESSAGES_BURST_DEFAULT: u32 = 200;
pub const WS_OUTBOUND_QUEUE_LEN_MAX_DEFAULT: usize = 256;
pub const DEVICES_PER_ACCOUNT_MAX_DEFAULT: usize = 10;
pub const WS_CONNECTIONS_MAX_DEFAULT: usize = 50_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignalingConfig {
    /// Largest text frame a client may send; larger ones get `message_too_large`.
    pub ws_message_bytes_max: usize,
    /// A new socket must authenticate within this time, or it is closed with 4401.
    pub ws_auth_timeout: Duration,
    /// How often the server pings each socket.
    pub ws_ping_interval: Duration,
    /// A socket silent this long (no frame, no pong) is dropped as dead.
    pub ws_idle_timeout: Duration,
    /// A frame the client does not take within this time ends its connection.
    pub ws_write_timeout: Duration,
    /// Sustained message rate per connection; above it, `rate_limited`.
    pub ws_messages_per_s: u32,
    /// Messages a connection may send at once above the sustained rate.
    pub ws_messages_burst: u32,
    /// Frames waiting to be written to one socket; a reader slower than this is disconnected.
    pub ws_outbound_queue_len_max: usize,
    /// Devices of one account connected at once.
    pub devices_per_account_max: usize,
    /// WebSocket connections this process holds; beyond it, 503 `overloaded`.
    pub ws_connections_max: usize,
    /// An unanswered call ends with `invite_timeout` after this time.
    pub ring_timeout: Duration,
    /// A device that lost its socket mid-call may `resume` within this time.
    pub reconnect_grace: Duration,
}

impl Default for SignalingConfig {
    fn default() -> Self {
        SignalingConfig {
            ws_message_bytes_max: WS_MESSAGE_BYTES_MAX_DEFAULT,
            ws_auth_timeout: Duration::from_secs(WS_AUTH_TIMEOUT_S_DEFAULT),
            ws_ping_interval: Duration::from_secs(WS_PING_INTERVAL_S_DEFAULT),
            ws_idle_timeout: Duration::from_secs(WS_IDLE_TIMEOUT_S_DEFAULT),
            ws_write_timeout: Duration::from_secs(WS_WRITE_TIMEOUT_S_DEFAULT),
            ws_messages_per_s: WS_MESSAGES_PER_S_DEFAULT,
            ws_messages_burst: WS_MESSAGES_BURST_DEFAULT,
            ws_outbound_queue_len_max: WS_OUTBOUND_QUEUE_LEN_MAX_DEFAULT,
            devices_per_account_max: DEVICES_PER_ACCOUNT_MAX_DEFAULT,
            ws_connections_max: WS_CONNECTIONS_MAX_DEFAULT,
            ring_timeout: Duration::from_secs(RING_TIMEOUT_S_DEFAULT),
            reconnect_grace: Duration::from_secs(RECONNECT_GRACE_S_DEFAULT),
        }
    }
}

impl SignalingConfig {
    /// Refuses settings that cannot work, with what to do instead.
    pub fn validate(&self) -> Result<(), String> {
        if self.ws_message_bytes_max < 1_024 {
            return Err("--ws-message-bytes-max must be at least 1024".into());
        }
        if self.ws_messages_per_s == 0 || self.ws_messages_burst == 0 {
            return Err("--ws-messages-per-s and --ws-messages-burst must be at least 1".into());
        }
        if self.ws_outbound_queue_len_max == 0 || self.devices_per_account_max == 0 || self.ws_connections_max == 0 {
            return Err(
                "--ws-outbound-queue-len-max, --devices-per-account-max and --ws-connections-max must be at least 1"
                    .into(),
            );
        }
        if self.ws_ping_interval.is_zero() || self.ws_idle_timeout <= self.ws_ping_interval {
            return Err("--ws-idle-timeout-s must be longer than --ws-ping-interval-s (and both above 0)".into());
        }
        if self.ws_auth_timeout.is_zero() || self.ws_write_timeout.is_zero() || self.ring_timeout.is_zero() {
            return Err("--ws-auth-timeout-s, --ws-write-timeout-s and --ring-timeout-s must be above 0".into());
        }
        Ok(())
    }

    pub fn machine_limits(&self) -> crate::machine::Limits {
        crate::machine::Limits { ring_timeout: self.ring_timeout, reconnect_grace: self.reconnect_grace }
    }
}
