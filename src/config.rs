//! Configuration for `courier serve`: flags first, then `COURIER_*`
//! environment variables (both through clap), then an optional TOML file
//! (`--config`), then built-in defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};
use courier_accounts::AccountsConfig;
use courier_common::http::HttpLimits;
use serde::Deserialize;

pub const LISTEN_DEFAULT: &str = "127.0.0.1:8080";
pub const DATA_DIR_DEFAULT: &str = "./courier-data";
const DATABASE_CONNECTIONS_MAX_DEFAULT: u32 = 16;
const TOKEN_KEY_FILE_NAME: &str = "token-signing-key.pem";
const SQLITE_FILE_NAME: &str = "courier.db";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CodeSenderKind {
    /// Development: the code is written to the log.
    Log,
    /// Production: the code is POSTed as JSON to --code-webhook-url.
    Webhook,
}

/// Where calls' media is relayed when peers cannot reach each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TurnMode {
    /// The relay built into this process (development, small deployments).
    Embedded,
    /// coturn (production): --turn-urls and --turn-secret name it.
    External,
    /// No relay: only STUN URLs are handed out.
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

/// Every setting of `courier serve`. Each is optional here so that the TOML
/// file can fill what flags and environment left open.
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeOptions {
    /// Address to listen on; port 0 picks a free one (the real URL is printed).
    #[arg(long, env = "COURIER_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Where the embedded SQLite database and the token-signing key live.
    #[arg(long, env = "COURIER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// postgres://… for PostgreSQL; default: SQLite in the data directory.
    #[arg(long, env = "COURIER_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Largest number of pooled database connections.
    #[arg(long, env = "COURIER_DATABASE_CONNECTIONS_MAX")]
    pub database_connections_max: Option<u32>,
    /// Redis, for signaling scale-out across nodes (shared calls, presence, routing).
    #[arg(long, env = "COURIER_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Prefix of the signaling keys and channels in Redis: nodes with the same prefix form one cluster.
    #[arg(long, env = "COURIER_REDIS_KEY_PREFIX")]
    pub redis_key_prefix: Option<String>,
    /// Seconds without a heartbeat after which a signaling node is taken for dead.
    #[arg(long, env = "COURIER_REDIS_NODE_TTL_S")]
    pub redis_node_ttl_s: Option<u64>,
    /// How sign-in codes are delivered.
    #[arg(long, env = "COURIER_CODE_SENDER", value_enum)]
    pub code_sender: Option<CodeSenderKind>,
    /// Where the webhook sender POSTs {"phone","code","expires_at"}.
    #[arg(long, env = "COURIER_CODE_WEBHOOK_URL")]
    pub code_webhook_url: Option<String>,
    /// Seconds the webhook may take before delivery counts as failed.
    #[arg(long, env = "COURIER_CODE_WEBHOOK_TIMEOUT_S")]
    pub code_webhook_timeout_s: Option<u64>,
    /// The Ed25519 token-signing key (PKCS#8 PEM); created if missing.
    #[arg(long, env = "COURIER_TOKEN_KEY_FILE")]
    pub token_key_file: Option<PathBuf>,
    /// Earlier signing keys still trusted (and published in the JWKS) during rotation.
    #[arg(long, env = "COURIER_TOKEN_PREVIOUS_KEY_FILES", value_delimiter = ',')]
    #[serde(default)]
    pub token_previous_key_file: Vec<PathBuf>,
    /// Split deployments: where services that do not sign tokens fetch the JWKS.
    #[arg(long, env = "COURIER_JWKS_URL")]
    pub jwks_url: Option<String>,
    #[arg(long, env = "COURIER_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    #[arg(long, env = "COURIER_BODY_BYTES_MAX")]
    pub body_bytes_max: Option<usize>,
    #[arg(long, env = "COURIER_REQUEST_TIMEOUT_S")]
    pub request_timeout_s: Option<u64>,
    #[arg(long, env = "COURIER_SIGN_IN_CODE_TTL_S")]
    pub sign_in_code_ttl_s: Option<u64>,
    #[arg(long, env = "COURIER_SIGN_IN_CODE_ATTEMPTS_MAX")]
    pub sign_in_code_attempts_max: Option<u32>,
    #[arg(long, env = "COURIER_SIGN_IN_CODE_RESEND_AFTER_S")]
    pub sign_in_code_resend_after_s: Option<u64>,
    #[arg(long, env = "COURIER_SIGN_IN_CODES_PER_PHONE_PER_HOUR_MAX")]
    pub sign_in_codes_per_phone_per_hour_max: Option<u32>,
    /// 0 turns the per-address limit off (e.g. behind a proxy that limits).
    #[arg(long, env = "COURIER_SIGN_IN_CODES_PER_ADDR_PER_HOUR_MAX")]
    pub sign_in_codes_per_addr_per_hour_max: Option<u32>,
    #[arg(long, env = "COURIER_ACCESS_TOKEN_TTL_S")]
    pub access_token_ttl_s: Option<u64>,
    #[arg(long, env = "COURIER_REFRESH_TOKEN_TTL_S")]
    pub refresh_token_ttl_s: Option<u64>,
    /// Transfers waiting for the ledger writer; beyond it requests get 503 `overloaded`.
    #[arg(long, env = "COURIER_LEDGER_QUEUE_LEN_MAX")]
    pub ledger_queue_len_max: Option<usize>,
    /// Transfers applied in one database transaction (group commit).
    #[arg(long, env = "COURIER_LEDGER_BATCH_LEN_MAX")]
    pub ledger_batch_len_max: Option<usize>,
    /// Seconds a request waits for its batch to be durable before 503 `ledger_unavailable`.
    #[arg(long, env = "COURIER_LEDGER_SUBMIT_TIMEOUT_S")]
    pub ledger_submit_timeout_s: Option<u64>,
    /// How long idempotency keys are remembered.
    #[arg(long, env = "COURIER_IDEMPOTENCY_TTL_S")]
    pub idempotency_ttl_s: Option<u64>,
    /// Largest signaling message a client may send (bytes).
    #[arg(long, env = "COURIER_WS_MESSAGE_BYTES_MAX")]
    pub ws_message_bytes_max: Option<usize>,
    /// Seconds a new signaling socket has to send `auth` (else closed with 4401).
    #[arg(long, env = "COURIER_WS_AUTH_TIMEOUT_S")]
    pub ws_auth_timeout_s: Option<u64>,
    /// Seconds between the server's pings on each socket.
    #[arg(long, env = "COURIER_WS_PING_INTERVAL_S")]
    pub ws_ping_interval_s: Option<u64>,
    /// Seconds of silence (no frame, no pong) after which a socket is dropped as dead.
    #[arg(long, env = "COURIER_WS_IDLE_TIMEOUT_S")]
    pub ws_idle_timeout_s: Option<u64>,
    /// Seconds a client may take to accept one frame before it is disconnected.
    #[arg(long, env = "COURIER_WS_WRITE_TIMEOUT_S")]
    pub ws_write_timeout_s: Option<u64>,
    /// Sustained signaling messages per second per connection.
    #[arg(long, env = "COURIER_WS_MESSAGES_PER_S")]
    pub ws_messages_per_s: Option<u32>,
    /// Messages per connection allowed at once above the sustained rate.
    #[arg(long, env = "COURIER_WS_MESSAGES_BURST")]
    pub ws_messages_burst: Option<u32>,
    /// Frames queued for one socket; a client reading slower is disconnected.
    #[arg(long, env = "COURIER_WS_OUTBOUND_QUEUE_LEN_MAX")]
    pub ws_outbound_queue_len_max: Option<usize>,
    /// Devices of one account connected to signaling at once.
    #[arg(long, env = "COURIER_DEVICES_PER_ACCOUNT_MAX")]
    pub devices_per_account_max: Option<usize>,
    /// Signaling sockets this process holds; beyond it, 503 `overloaded`.
    #[arg(long, env = "COURIER_WS_CONNECTIONS_MAX")]
    pub ws_connections_max: Option<usize>,
    /// Seconds an unanswered call rings before it ends with `invite_timeout`.
    #[arg(long, env = "COURIER_RING_TIMEOUT_S")]
    pub ring_timeout_s: Option<u64>,
    /// Seconds a device that lost its socket mid-call has to `resume`.
    #[arg(long, env = "COURIER_RECONNECT_GRACE_S")]
    pub reconnect_grace_s: Option<u64>,
    /// The TURN relay calls use: embedded (default), external (coturn) or off.
    #[arg(long, env = "COURIER_TURN", value_enum)]
    pub turn: Option<TurnMode>,
    /// TURN shared secrets, comma-separated: the first signs credentials, all are accepted
    /// (rotation). Default for the embedded relay: a secret created in the data directory.
    #[arg(long, env = "COURIER_TURN_SECRET", value_delimiter = ',', hide_env_values = true)]
    #[serde(default)]
    pub turn_secret: Vec<String>,
    /// TURN URLs handed to clients (external relay), comma-separated, e.g. turn:turn.example.com?transport=udp.
    #[arg(long, env = "COURIER_TURN_URLS", value_delimiter = ',')]
    #[serde(default)]
    pub turn_urls: Vec<String>,
    /// STUN URLs handed to clients, comma-separated; default with the embedded relay: the relay itself.
    #[arg(long, env = "COURIER_STUN_URLS", value_delimiter = ',')]
    #[serde(default)]
    pub stun_urls: Vec<String>,
    /// Seconds the TURN credentials handed out stay valid.
    #[arg(long, env = "COURIER_TURN_CREDENTIAL_TTL_S")]
    pub turn_credential_ttl_s: Option<u64>,
    /// Where the embedded TURN relay listens, UDP and TCP; port 0 picks a free one.
    #[arg(long, env = "COURIER_TURN_LISTEN")]
    pub turn_listen: Option<SocketAddr>,
    /// The address the embedded relay's relayed sockets bind to and announce (default: the listen address).
    #[arg(long, env = "COURIER_TURN_RELAY_IP")]
    pub turn_relay_ip: Option<std::net::IpAddr>,
    /// Ports of the embedded relay's relayed sockets, LOW-HIGH.
    #[arg(long, env = "COURIER_TURN_RELAY_PORTS")]
    pub turn_relay_ports: Option<String>,
    /// The embedded relay's realm.
    #[arg(long, env = "COURIER_TURN_REALM")]
    pub turn_realm: Option<String>,
    /// Peer ranges (CIDR) the embedded relay may reach although they are not public, comma-separated.
    #[arg(long, env = "COURIER_TURN_ALLOW_PEER", value_delimiter = ',')]
    #[serde(default)]
    pub turn_allow_peer: Vec<String>,
    /// Allocations the embedded relay holds at once.
    #[arg(long, env = "COURIER_TURN_ALLOCATIONS_MAX")]
    pub turn_allocations_max: Option<usize>,
    /// Allocations one account holds at once on the embedded relay.
    #[arg(long, env = "COURIER_TURN_ALLOCATIONS_PER_USER_MAX")]
    pub turn_allocations_per_user_max: Option<usize>,
    /// The longest lifetime (seconds) the embedded relay grants an allocation before it must be refreshed.
    #[arg(long, env = "COURIER_TURN_ALLOCATION_LIFETIME_MAX_S")]
    pub turn_allocation_lifetime_max_s: Option<u64>,
}

/// Fills every `None` of `self` from `file`.
macro_rules! fill {
    ($self:ident, $file:ident, $($field:ident),+ $(,)?) => {
        $( if $self.$field.is_none() { $self.$field = $file.$field.take(); } )+
    };
}

impl ServeOptions {
    /// Reads the TOML file at `path` and lets it fill what is still unset.
    pub fn with_file(mut self, path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
        let mut file: ServeOptions = toml::from_str(&text)
            .map_err(|error| format!("{} is not a valid configuration file: {error}", path.display()))?;
        fill!(
            self,
            file,
            listen,
            data_dir,
            database_url,
            database_connections_max,
            redis_url,
            redis_key_prefix,
            redis_node_ttl_s,
            code_sender,
            code_webhook_url,
            code_webhook_timeout_s,
            token_key_file,
            jwks_url,
            log_format,
            body_bytes_max,
            request_timeout_s,
            sign_in_code_ttl_s,
            sign_in_code_attempts_max,
            sign_in_code_resend_after_s,
            sign_in_codes_per_phone_per_hour_max,
            sign_in_codes_per_addr_per_hour_max,
            access_token_ttl_s,
            refresh_token_ttl_s,
            ledger_queue_len_max,
            ledger_batch_len_max,
            ledger_submit_timeout_s,
            idempotency_ttl_s,
            ws_message_bytes_max,
            ws_auth_timeout_s,
            ws_ping_interval_s,
            ws_idle_timeout_s,
            ws_write_timeout_s,
            ws_messages_per_s,
            ws_messages_burst,
            ws_outbound_queue_len_max,
            devices_per_account_max,
            ws_connections_max,
            ring_timeout_s,
            reconnect_grace_s,
            turn,
            turn_credential_ttl_s,
            turn_listen,
            turn_relay_ip,
            turn_relay_ports,
            turn_realm,
            turn_allocations_max,
            turn_allocations_per_user_max,
            turn_allocation_lifetime_max_s,
        );
        if self.token_previous_key_file.is_empty() {
            self.token_previous_key_file = file.token_previous_key_file;
        }
        for (mine, theirs) in [
            (&mut self.turn_secret, file.turn_secret),
            (&mut self.turn_urls, file.turn_urls),
            (&mut self.stun_urls, file.stun_urls),
            (&mut self.turn_allow_peer, file.turn_allow_peer),
        ] {
            if mine.is_empty() {
                *mine = theirs;
            }
        }
        Ok(self)
    }

    pub fn listen(&self) -> SocketAddr {
        self.listen.unwrap_or_else(|| LISTEN_DEFAULT.parse().expect("the default listen address is valid"))
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| PathBuf::from(DATA_DIR_DEFAULT))
    }

    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| courier_common::Database::sqlite_url(&self.data_dir().join(SQLITE_FILE_NAME)))
    }

    pub fn database_connections_max(&self) -> u32 {
        self.database_connections_max.unwrap_or(DATABASE_CONNECTIONS_MAX_DEFAULT)
    }

    pub fn token_key_file(&self) -> PathBuf {
        self.token_key_file.clone().unwrap_or_else(|| self.data_dir().join(TOKEN_KEY_FILE_NAME))
    }

    pub fn http_limits(&self) -> HttpLimits {
        let defaults = HttpLimits::default();
        HttpLimits {
            body_bytes_max: self.body_bytes_max.unwrap_or(defaults.body_bytes_max),
            request_timeout: self.request_timeout_s.map(Duration::from_secs).unwrap_or(defaults.request_timeout),
        }
    }

    pub fn accounts_config(&self) -> AccountsConfig {
        let defaults = AccountsConfig::default();
        AccountsConfig {
            sign_in_code_ttl_s: self.sign_in_code_ttl_s.unwrap_or(defaults.sign_in_code_ttl_s),
            sign_in_code_attempts_max: self.sign_in_code_attempts_max.unwrap_or(defaults.sign_in_code_attempts_max),
            sign_in_code_resend_after_s: self
                .sign_in_code_resend_after_s
                .unwrap_or(defaults.sign_in_code_resend_after_s),
            sign_in_codes_per_phone_per_hour_max: self
                .sign_in_codes_per_phone_per_hour_max
                .unwrap_or(defaults.sign_in_codes_per_phone_per_hour_max),
            sign_in_codes_per_addr_per_hour_max: self
                .sign_in_codes_per_addr_per_hour_max
                .unwrap_or(defaults.sign_in_codes_per_addr_per_hour_max),
            access_token_ttl_s: self.access_token_ttl_s.unwrap_or(defaults.access_token_ttl_s),
            refresh_token_ttl_s: self.refresh_token_ttl_s.unwrap_or(defaults.refresh_token_ttl_s),
        }
    }

    pub fn writer_config(&self) -> courier_payments::writer::WriterConfig {
        let defaults = courier_payments::writer::WriterConfig::default();
        courier_payments::writer::WriterConfig {
            queue_len_max: self.ledger_queue_len_max.unwrap_or(defaults.queue_len_max),
            batch_len_max: self.ledger_batch_len_max.unwrap_or(defaults.batch_len_max),
            idempotency_ttl_s: self.idempotency_ttl_s.unwrap_or(defaults.idempotency_ttl_s),
            cache_accounts_max: defaults.cache_accounts_max,
        }
    }

    pub fn ledger_submit_timeout(&self) -> Duration {
        Duration::from_secs(self.ledger_submit_timeout_s.unwrap_or(courier_payments::api::SUBMIT_TIMEOUT_S_DEFAULT))
    }

    pub fn signaling_config(&self) -> courier_signaling::SignalingConfig {
        let defaults = courier_signaling::SignalingConfig::default();
        let seconds = |value: Option<u64>, default: Duration| value.map(Duration::from_secs).unwrap_or(default);
        courier_signaling::SignalingConfig {
            ws_message_bytes_max: self.ws_message_bytes_max.unwrap_or(defaults.ws_message_bytes_max),
            ws_auth_timeout: seconds(self.ws_auth_timeout_s, defaults.ws_auth_timeout),
            ws_ping_interval: seconds(self.ws_ping_interval_s, defaults.ws_ping_interval),
            ws_idle_timeout: seconds(self.ws_idle_timeout_s, defaults.ws_idle_timeout),
            ws_write_timeout: seconds(self.ws_write_timeout_s, defaults.ws_write_timeout),
            ws_messages_per_s: self.ws_messages_per_s.unwrap_or(defaults.ws_messages_per_s),
            ws_messages_burst: self.ws_messages_burst.unwrap_or(defaults.ws_messages_burst),
            ws_outbound_queue_len_max: self.ws_outbound_queue_len_max.unwrap_or(defaults.ws_outbound_queue_len_max),
            devices_per_account_max: self.devices_per_account_max.unwrap_or(defaults.devices_per_account_max),
            ws_connections_max: self.ws_connections_max.unwrap_or(defaults.ws_connections_max),
            ring_timeout: seconds(self.ring_timeout_s, defaults.ring_timeout),
            reconnect_grace: seconds(self.reconnect_grace_s, defaults.reconnect_grace),
        }
    }

    /// The Redis cluster signaling joins, when `--redis-url` is set.
    pub fn cluster_config(&self) -> Option<courier_signaling::cluster::ClusterConfig> {
        use courier_signaling::cluster::{REDIS_KEY_PREFIX_DEFAULT, REDIS_NODE_TTL_S_DEFAULT};
        Some(courier_signaling::cluster::ClusterConfig {
            url: self.redis_url.clone()?,
            key_prefix: self.redis_key_prefix.clone().unwrap_or_else(|| REDIS_KEY_PREFIX_DEFAULT.into()),
            node_ttl: Duration::from_secs(self.redis_node_ttl_s.unwrap_or(REDIS_NODE_TTL_S_DEFAULT)),
        })
    }

    pub fn turn_mode(&self) -> TurnMode {
        self.turn.unwrap_or(TurnMode::Embedded)
    }

    pub fn turn_credential_ttl(&self) -> Duration {
        Duration::from_secs(
            self.turn_credential_ttl_s.unwrap_or(courier_signaling::turn::TURN_CREDENTIAL_TTL_S_DEFAULT),
        )
    }

    /// The embedded relay's settings, signing with `secrets`.
    pub fn turn_config(
        &self,
        secrets: courier_signaling::turn::TurnSecrets,
    ) -> Result<courier_signaling::turn::TurnConfig, String> {
        use courier_signaling::turn::server::TURN_LISTEN_DEFAULT;
        let listen = self.turn_listen.unwrap_or_else(|| TURN_LISTEN_DEFAULT.parse().expect("a valid default"));
        let mut config = courier_signaling::turn::TurnConfig::new(listen, secrets);
        if let Some(ip) = self.turn_relay_ip {
            config.relay_ip = ip;
        }
        if let Some(ports) = &self.turn_relay_ports {
            config.relay_ports = parse_port_range(ports)
                .ok_or_else(|| format!("--turn-relay-ports {ports:?} is not a range LOW-HIGH such as 49152-65535"))?;
        }
        if let Some(realm) = &self.turn_realm {
            config.realm = realm.clone();
        }
        config.allow_peers = self
            .turn_allow_peer
            .iter()
            .map(|cidr| cidr.trim().parse().map_err(|_| format!("--turn-allow-peer {cidr:?} is not a CIDR range")))
            .collect::<Result<_, _>>()?;
        if let Some(max) = self.turn_allocations_max {
            config.allocations_max = max;
        }
        if let Some(max) = self.turn_allocations_per_user_max {
            config.allocations_per_user_max = max;
        }
        if let Some(max) = self.turn_allocation_lifetime_max_s {
            config.allocation_lifetime_max = Duration::from_secs(max);
        }
        config.validate()?;
        Ok(config)
    }

    /// Refuses settings that cannot work, with what to do instead.
    pub fn validate(&self) -> Result<(), String> {
        self.signaling_config().validate()?;
        for url in self.turn_urls.iter().chain(&self.stun_urls) {
            courier_signaling::turn::check_url(url)?;
        }
        if !self.turn_secret.is_empty() {
            courier_signaling::turn::TurnSecrets::new(self.turn_secret.clone())?;
        }
        if self.turn_mode() == TurnMode::External && (self.turn_urls.is_empty() || self.turn_secret.is_empty()) {
            return Err(
                "--turn external needs --turn-urls and --turn-secret (the secret coturn's use-auth-secret uses)".into(),
            );
        }
        if self.turn_credential_ttl_s.is_some_and(|ttl| !(1..=7 * 24 * 3_600).contains(&ttl)) {
            return Err("--turn-credential-ttl-s must be between 1 and 604800".into());
        }
        if self.redis_node_ttl_s == Some(0) {
            return Err("--redis-node-ttl-s must be at least 1".into());
        }
        if let Some(prefix) = &self.redis_key_prefix
            && (prefix.is_empty() || prefix.len() > 100 || prefix.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err("--redis-key-prefix must be 1 to 100 characters without spaces".into());
        }
        let accounts = self.accounts_config();
        if accounts.sign_in_code_ttl_s == 0 || accounts.sign_in_code_attempts_max == 0 {
            return Err("sign-in codes need a TTL and at least one attempt".into());
        }
        if accounts.sign_in_codes_per_phone_per_hour_max == 0 {
            return Err("--sign-in-codes-per-phone-per-hour-max must be at least 1".into());
        }
        if accounts.access_token_ttl_s == 0 || accounts.access_token_ttl_s > 3_600 {
            return Err("--access-token-ttl-s must be between 1 and 3600 seconds".into());
        }
        if self.code_sender == Some(CodeSenderKind::Webhook) && self.code_webhook_url.is_none() {
            return Err("--code-sender webhook needs --code-webhook-url (or COURIER_CODE_WEBHOOK_URL)".into());
        }
        if self.ledger_batch_len_max == Some(0) || self.ledger_queue_len_max == Some(0) {
            return Err("--ledger-batch-len-max and --ledger-queue-len-max must be at least 1".into());
        }
        if self.idempotency_ttl_s.is_some_and(|ttl| ttl < 24 * 3_600) {
            return Err("--idempotency-ttl-s must be at least 86400 (keys are kept at least 24 hours)".into());
        }
        if self.http_limits().body_bytes_max < 1_024 {
            return Err("--body-bytes-max must be at least 1024".into());
        }
        Ok(())
    }
}

/// `LOW-HIGH`, both ports above 0 and in order.
fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let (low, high) = text.split_once('-')?;
    let (low, high): (u16, u16) = (low.trim().parse().ok()?, high.trim().parse().ok()?);
    (low > 0 && low <= high).then_some((low, high))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turn_settings_are_checked() {
        assert_eq!(parse_port_range("49152-65535"), Some((49_152, 65_535)));
        assert_eq!(parse_port_range("5000-4000"), None);
        assert_eq!(parse_port_range("0-10"), None);
        let external = ServeOptions { turn: Some(TurnMode::External), ..Default::default() };
        assert!(external.validate().unwrap_err().contains("--turn-urls"));
        let bad_url = ServeOptions { turn_urls: vec!["http://x".into()], ..Default::default() };
        assert!(bad_url.validate().is_err());
        let weak = ServeOptions { turn_secret: vec!["short".into()], ..Default::default() };
        assert!(weak.validate().unwrap_err().contains("at least"));
        let secrets = courier_signaling::turn::TurnSecrets::new(vec!["0123456789abcdef".into()]).unwrap();
        let bad_cidr = ServeOptions { turn_allow_peer: vec!["10.0.0.0/33".into()], ..Default::default() };
        assert!(bad_cidr.turn_config(secrets.clone()).unwrap_err().contains("CIDR"));
        let wildcard = ServeOptions { turn_listen: Some("0.0.0.0:3478".parse().unwrap()), ..Default::default() };
        assert!(wildcard.turn_config(secrets).unwrap_err().contains("--turn-relay-ip"));
    }

    #[test]
    fn the_file_fills_only_what_flags_and_env_left_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("courier.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:9999\"\nsign_in_code_ttl_s = 120\ncode_sender = \"webhook\"\n")
            .unwrap();
        let flags = ServeOptions { listen: Some("127.0.0.1:1".parse().unwrap()), ..Default::default() };
        let merged = flags.with_file(&path).unwrap();
        assert_eq!(merged.listen(), "127.0.0.1:1".parse::<std::net::SocketAddr>().unwrap());
        assert_eq!(merged.accounts_config().sign_in_code_ttl_s, 120);
        assert_eq!(
            merged.validate().unwrap_err(),
            "--code-sender webhook needs --code-webhook-url (or COURIER_CODE_WEBHOOK_URL)"
        );
    }

    #[test]
    fn unknown_keys_in_the_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("courier.toml");
        std::fs::write(&path, "lisen = \"127.0.0.1:9999\"\n").unwrap();
        assert!(ServeOptions::default().with_file(&path).unwrap_err().contains("lisen"));
    }
}
