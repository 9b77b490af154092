//! Configuration for `courier serve`, one section per service, every option
//! written once: a field with its flag, its `COURIER_*` variable and its
//! default. clap reads flags and the environment; the optional TOML file
//! (`--config`, keys named like the flags with underscores) goes through the
//! same parser as flags of its own, added only for the options that flags
//! and environment left at their defaults. So every option is read the same
//! way from all three places, and a key the parser does not know is refused.

use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, ValueEnum};
use courier_accounts::AccountsConfig;
use courier_common::http::HttpLimits;

use crate::connections::{ConnectionLimits, total_max_for_file_limit};
use courier_payments::checkpoint::CheckpointConfig;
use courier_payments::writer::WriterConfig;
use courier_signaling::SignalingConfig;
use courier_signaling::cluster::ClusterConfig;
use courier_turn::{TurnConfig, TurnSecrets};
use serde::Deserialize;

pub const DATA_DIR_DEFAULT: &str = "./courier-data";
pub const HEADER_READ_TIMEOUT_S_DEFAULT: u64 = 10;
/// Enough for every device of a household or an office behind one NAT.
pub const CONNECTIONS_PER_ADDRESS_MAX_DEFAULT: usize = 512;
const TOKEN_KEY_FILE_NAME: &str = "token-signing-key.pem";
const AUDIT_KEY_FILE_NAME: &str = "audit-signing-key.pem";
const SQLITE_FILE_NAME: &str = "courier.db";

/// Which services one process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Service {
    /// The core account system alone (split deployments).
    Accounts,
    /// The ledger alone, against the shared database; verifies tokens with --jwks-url.
    Payments,
    /// Call signaling alone, against the shared database; verifies tokens with --jwks-url.
    Signaling,
}

/// `courier serve [SERVICE]`: the command line as a whole, so that the TOML
/// file can be read through the same parser.
#[derive(Debug, Clone, Parser)]
#[command(name = "courier serve")]
pub struct ServeCommand {
    /// Run one service alone, for split deployments.
    #[arg(value_enum)]
    pub service: Option<Service>,
    /// A TOML file with any of the options below (flags and COURIER_* win over it).
    #[arg(long, env = "COURIER_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub options: ServeOptions,
}

impl ServeCommand {
    /// Parses the arguments after `serve`, then lets the TOML file named by
    /// `--config` (if any) fill what flags and environment left open.
    pub fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<ServeCommand, String> {
        let mut argv: Vec<OsString> = std::iter::once(OsString::from("courier serve")).chain(args).collect();
        let command = ServeCommand::command();
        let mut matches = command.clone().try_get_matches_from(&argv).map_err(|error| error.to_string())?;
        if let Some(path) = matches.get_one::<PathBuf>("config") {
            argv.extend(file_args(&command, &matches, path)?);
            matches = command.try_get_matches_from(&argv).map_err(|error| error.to_string())?;
        }
        ServeCommand::from_arg_matches(&matches).map_err(|error| error.to_string())
    }
}

/// The flags that stand for the TOML file's settings, for every option that
/// flags and environment left at its default.
fn file_args(command: &clap::Command, matches: &clap::ArgMatches, path: &Path) -> Result<Vec<OsString>, String> {
    let text = std::fs::read_to_string(path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    text_args(command, matches, &text, path)
}

/// [`file_args`] of the file's text.
fn text_args(
    command: &clap::Command,
    matches: &clap::ArgMatches,
    text: &str,
    path: &Path,
) -> Result<Vec<OsString>, String> {
    let table: toml::Table = toml::from_str(text)
        .map_err(|error| format!("{} is not a valid configuration file: {error}", path.display()))?;
    let mut args = Vec::new();
    for (key, value) in table {
        let option = command
            .get_arguments()
            .find(|arg| arg.get_id() == key.as_str() && arg.get_long().is_some() && key != "config")
            .ok_or_else(|| {
                format!(
                    "{}: unknown option `{key}` (keys are the flags of `courier serve`, with underscores)",
                    path.display()
                )
            })?;
        if matches!(matches.value_source(&key), Some(ValueSource::CommandLine | ValueSource::EnvVariable)) {
            continue;
        }
        let text = match value {
            // A list for the comma-separated options.
            toml::Value::Array(items) if option.get_value_delimiter().is_some() => {
                items.into_iter().map(scalar).collect::<Option<Vec<_>>>().map(|items| items.join(","))
            }
            value => scalar(value),
        }
        .ok_or_else(|| format!("{}: `{key}` must be a string or a number", path.display()))?;
        let long = option.get_long().unwrap_or_default();
        args.push(OsString::from(format!("--{long}={text}")));
    }
    Ok(args)
}

/// A TOML value as the text a flag would carry, if it is a single value.
fn scalar(value: toml::Value) -> Option<String> {
    match value {
        toml::Value::String(text) => Some(text),
        toml::Value::Integer(number) => Some(number.to_string()),
        toml::Value::Float(number) => Some(number.to_string()),
        toml::Value::Boolean(flag) => Some(flag.to_string()),
        _ => None,
    }
}

/// Every setting of `courier serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeOptions {
    #[command(flatten)]
    pub server: ServerSection,
    #[command(flatten)]
    pub accounts: AccountsSection,
    #[command(flatten)]
    pub ledger: LedgerSection,
    #[command(flatten)]
    pub signaling: SignalingSection,
    #[command(flatten)]
    pub turn: TurnSection,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

/// What every service of the process shares: where it listens, its data,
/// its database, its logs and its HTTP limits.
#[derive(Debug, Clone, Args)]
pub struct ServerSection {
    /// Address to listen on; port 0 picks a free one (the real URL is printed).
    #[arg(long, env = "COURIER_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Where the embedded SQLite database and the token-signing key live.
    #[arg(long, env = "COURIER_DATA_DIR", default_value = DATA_DIR_DEFAULT)]
    pub data_dir: PathBuf,
    /// postgres://… for PostgreSQL; default: SQLite in the data directory.
    #[arg(long, env = "COURIER_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Largest number of pooled database connections.
    #[arg(long, env = "COURIER_DATABASE_CONNECTIONS_MAX", default_value_t = 16)]
    pub database_connections_max: u32,
    /// Split deployments: where services that do not sign tokens fetch the JWKS.
    #[arg(long, env = "COURIER_JWKS_URL")]
    pub jwks_url: Option<String>,
    /// Log lines for people (human) or one JSON object a line for collectors (json); filter with COURIER_LOG.
    #[arg(long, env = "COURIER_LOG_FORMAT", value_enum, default_value = "human")]
    pub log_format: LogFormat,
    /// Largest request body; larger ones get 413.
    #[arg(long, env = "COURIER_BODY_BYTES_MAX", default_value_t = HttpLimits::default().body_bytes_max)]
    pub body_bytes_max: usize,
    /// Seconds a client has to send a request's headers before it is disconnected.
    #[arg(long, env = "COURIER_HEADER_READ_TIMEOUT_S", default_value_t = HEADER_READ_TIMEOUT_S_DEFAULT)]
    pub header_read_timeout_s: u64,
    /// Seconds a client has to send a request's body once its headers are in; then 408 `body_timeout`.
    #[arg(long, env = "COURIER_BODY_READ_TIMEOUT_S", default_value_t = HttpLimits::default().body_read_timeout.as_secs())]
    pub body_read_timeout_s: u64,
    /// Open connections in all, past which new ones get 503 `too_many_connections`; 0: three quarters of the open-file limit.
    #[arg(long, env = "COURIER_CONNECTIONS_MAX", default_value_t = 0)]
    pub connections_max: usize,
    /// Open connections from one client address (an IPv6 client's /64); 0: no cap (behind a proxy).
    #[arg(long, env = "COURIER_CONNECTIONS_PER_ADDRESS_MAX", default_value_t = CONNECTIONS_PER_ADDRESS_MAX_DEFAULT)]
    pub connections_per_address_max: usize,
    /// Seconds a request may take before 503 `timeout`.
    #[arg(long, env = "COURIER_REQUEST_TIMEOUT_S", default_value_t = HttpLimits::default().request_timeout.as_secs())]
    pub request_timeout_s: u64,
}

impl ServerSection {
    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| courier_common::Database::sqlite_url(&self.data_dir.join(SQLITE_FILE_NAME)))
    }

    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_secs(self.header_read_timeout_s)
    }

    pub fn http_limits(&self) -> HttpLimits {
        HttpLimits {
            body_bytes_max: self.body_bytes_max,
            body_read_timeout: Duration::from_secs(self.body_read_timeout_s),
            request_timeout: Duration::from_secs(self.request_timeout_s),
        }
    }

    /// The connection caps, given the process's open-file limit.
    pub fn connection_limits(&self, file_limit: u64) -> ConnectionLimits {
        let auto = total_max_for_file_limit(file_limit);
        ConnectionLimits {
            header_read_timeout: self.header_read_timeout(),
            total_max: if self.connections_max == 0 { auto } else { self.connections_max },
            per_address_max: self.connections_per_address_max,
        }
    }

    fn validate(&self) -> Result<(), String> {
        if self.body_bytes_max < 1_024 {
            return Err("--body-bytes-max must be at least 1024".into());
        }
        if self.header_read_timeout_s == 0 {
            return Err("--header-read-timeout-s must be at least 1".into());
        }
        if self.body_read_timeout_s == 0 {
            return Err("--body-read-timeout-s must be at least 1".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CodeSenderKind {
    /// Development: the code is written to the log.
    Log,
    /// Production: the code is POSTed as JSON to --code-webhook-url.
    Webhook,
}

/// The core account system: code delivery, token keys, sign-in limits.
#[derive(Debug, Clone, Args)]
pub struct AccountsSection {
    /// How sign-in codes are delivered.
    #[arg(long, env = "COURIER_CODE_SENDER", value_enum, default_value = "log")]
    pub code_sender: CodeSenderKind,
    /// Where the webhook sender POSTs {"phone","code","expires_at"}.
    #[arg(long, env = "COURIER_CODE_WEBHOOK_URL")]
    pub code_webhook_url: Option<String>,
    /// Seconds the webhook may take before delivery counts as failed.
    #[arg(long, env = "COURIER_CODE_WEBHOOK_TIMEOUT_S", default_value_t = courier_accounts::sender::WEBHOOK_TIMEOUT_S_DEFAULT)]
    pub code_webhook_timeout_s: u64,
    /// The Ed25519 token-signing key (PKCS#8 PEM); created if missing. Default: in the data directory.
    #[arg(long, env = "COURIER_TOKEN_KEY_FILE")]
    pub token_key_file: Option<PathBuf>,
    /// Earlier signing keys still trusted (and published in the JWKS) during rotation.
    #[arg(long, env = "COURIER_TOKEN_PREVIOUS_KEY_FILES", value_delimiter = ',')]
    pub token_previous_key_file: Vec<PathBuf>,
    /// Seconds a sign-in code stays valid.
    #[arg(long, env = "COURIER_SIGN_IN_CODE_TTL_S", default_value_t = AccountsConfig::default().sign_in_code_ttl_s)]
    pub sign_in_code_ttl_s: u64,
    /// Tries per code; the next one gets 429 `too_many_attempts`.
    #[arg(long, env = "COURIER_SIGN_IN_CODE_ATTEMPTS_MAX", default_value_t = AccountsConfig::default().sign_in_code_attempts_max)]
    pub sign_in_code_attempts_max: u32,
    /// Seconds between two code requests for one number.
    #[arg(long, env = "COURIER_SIGN_IN_CODE_RESEND_AFTER_S", default_value_t = AccountsConfig::default().sign_in_code_resend_after_s)]
    pub sign_in_code_resend_after_s: u64,
    /// Code requests per number per hour.
    #[arg(long, env = "COURIER_SIGN_IN_CODES_PER_PHONE_PER_HOUR_MAX", default_value_t = AccountsConfig::default().sign_in_codes_per_phone_per_hour_max)]
    pub sign_in_codes_per_phone_per_hour_max: u32,
    /// Code requests per client address per hour; 0 turns this limit off (e.g. behind a proxy that limits).
    #[arg(long, env = "COURIER_SIGN_IN_CODES_PER_ADDR_PER_HOUR_MAX", default_value_t = AccountsConfig::default().sign_in_codes_per_addr_per_hour_max)]
    pub sign_in_codes_per_addr_per_hour_max: u32,
    /// Seconds an access token is valid (at most 3600).
    #[arg(long, env = "COURIER_ACCESS_TOKEN_TTL_S", default_value_t = AccountsConfig::default().access_token_ttl_s)]
    pub access_token_ttl_s: u64,
    /// Seconds a refresh token is valid; each refresh hands out a new one, so a device session lasts while it is used.
    #[arg(long, env = "COURIER_REFRESH_TOKEN_TTL_S", default_value_t = AccountsConfig::default().refresh_token_ttl_s)]
    pub refresh_token_ttl_s: u64,
}

impl AccountsSection {
    pub fn config(&self) -> AccountsConfig {
        AccountsConfig {
            sign_in_code_ttl_s: self.sign_in_code_ttl_s,
            sign_in_code_attempts_max: self.sign_in_code_attempts_max,
            sign_in_code_resend_after_s: self.sign_in_code_resend_after_s,
            sign_in_codes_per_phone_per_hour_max: self.sign_in_codes_per_phone_per_hour_max,
            sign_in_codes_per_addr_per_hour_max: self.sign_in_codes_per_addr_per_hour_max,
            access_token_ttl_s: self.access_token_ttl_s,
            refresh_token_ttl_s: self.refresh_token_ttl_s,
        }
    }

    /// The signing key's file: the one given, or one in `data_dir`.
    pub fn token_key_file(&self, data_dir: &Path) -> PathBuf {
        self.token_key_file.clone().unwrap_or_else(|| data_dir.join(TOKEN_KEY_FILE_NAME))
    }

    fn validate(&self) -> Result<(), String> {
        if self.sign_in_code_ttl_s == 0 || self.sign_in_code_attempts_max == 0 {
            return Err("sign-in codes need a TTL and at least one attempt".into());
        }
        if self.sign_in_codes_per_phone_per_hour_max == 0 {
            return Err("--sign-in-codes-per-phone-per-hour-max must be at least 1".into());
        }
        if self.access_token_ttl_s == 0 || self.access_token_ttl_s > courier_accounts::tokens::ACCESS_TOKEN_TTL_S_MAX {
            return Err("--access-token-ttl-s must be between 1 and 3600 seconds".into());
        }
        if self.code_sender == CodeSenderKind::Webhook && self.code_webhook_url.is_none() {
            return Err("--code-sender webhook needs --code-webhook-url (or COURIER_CODE_WEBHOOK_URL)".into());
        }
        Ok(())
    }
}

/// The ledger: its writer's queue and batches, and idempotency.
#[derive(Debug, Clone, Args)]
pub struct LedgerSection {
    /// Transfers waiting for the ledger writer; beyond it requests get 503 `overloaded`.
    #[arg(long, env = "COURIER_LEDGER_QUEUE_LEN_MAX", default_value_t = WriterConfig::default().queue_len_max)]
    pub ledger_queue_len_max: usize,
    /// Transfers applied in one database transaction (group commit).
    #[arg(long, env = "COURIER_LEDGER_BATCH_LEN_MAX", default_value_t = WriterConfig::default().batch_len_max)]
    pub ledger_batch_len_max: usize,
    /// Seconds a request waits for its batch to be durable before 503 `ledger_unavailable`.
    #[arg(long, env = "COURIER_LEDGER_SUBMIT_TIMEOUT_S", default_value_t = courier_payments::api::SUBMIT_TIMEOUT_S_DEFAULT)]
    pub ledger_submit_timeout_s: u64,
    /// How long idempotency keys are remembered.
    #[arg(long, env = "COURIER_IDEMPOTENCY_TTL_S", default_value_t = WriterConfig::default().idempotency_ttl_s)]
    pub idempotency_ttl_s: u64,
    /// Seconds a proposed adjustment waits for an approver before it expires.
    #[arg(long, env = "COURIER_ADJUSTMENT_TTL_S", default_value_t = WriterConfig::default().adjustment_ttl_s)]
    pub adjustment_ttl_s: u64,
    /// Seconds a hold keeps its money before it releases itself.
    #[arg(long, env = "COURIER_HOLD_TTL_S", default_value_t = WriterConfig::default().hold_ttl_s)]
    pub hold_ttl_s: u64,
    /// The Ed25519 key that signs the audit log's checkpoints (PKCS#8 PEM); created if missing. Default: in the data directory. Rotate by starting with a new file: old public keys stay published.
    #[arg(long, env = "COURIER_AUDIT_KEY_FILE")]
    pub audit_key_file: Option<PathBuf>,
    /// Audit entries between two signed checkpoints.
    #[arg(long, env = "COURIER_AUDIT_CHECKPOINT_EVERY", default_value_t = CheckpointConfig::default().every_entries)]
    pub audit_checkpoint_every: i64,
    /// Seconds after which a checkpoint is signed even if fewer entries were added (at least daily).
    #[arg(long, env = "COURIER_AUDIT_CHECKPOINT_INTERVAL_S", default_value_t = CheckpointConfig::default().interval.as_secs())]
    pub audit_checkpoint_interval_s: u64,
}

impl LedgerSection {
    pub fn writer_config(&self) -> WriterConfig {
        WriterConfig {
            queue_len_max: self.ledger_queue_len_max,
            batch_len_max: self.ledger_batch_len_max,
            idempotency_ttl_s: self.idempotency_ttl_s,
            adjustment_ttl_s: self.adjustment_ttl_s,
            hold_ttl_s: self.hold_ttl_s,
            ..WriterConfig::default()
        }
    }

    pub fn checkpoint_config(&self) -> CheckpointConfig {
        CheckpointConfig {
            every_entries: self.audit_checkpoint_every,
            interval: Duration::from_secs(self.audit_checkpoint_interval_s),
            ..CheckpointConfig::default()
        }
    }

    /// The audit key's file: the one given, or one in `data_dir`.
    pub fn audit_key_file(&self, data_dir: &Path) -> PathBuf {
        self.audit_key_file.clone().unwrap_or_else(|| data_dir.join(AUDIT_KEY_FILE_NAME))
    }

    pub fn submit_timeout(&self) -> Duration {
        Duration::from_secs(self.ledger_submit_timeout_s)
    }

    fn validate(&self) -> Result<(), String> {
        if self.ledger_batch_len_max == 0 || self.ledger_queue_len_max == 0 {
            return Err("--ledger-batch-len-max and --ledger-queue-len-max must be at least 1".into());
        }
        if self.idempotency_ttl_s < 24 * 3_600 {
            return Err("--idempotency-ttl-s must be at least 86400 (keys are kept at least 24 hours)".into());
        }
        if self.adjustment_ttl_s == 0 || self.adjustment_ttl_s > 365 * 24 * 3_600 {
            return Err("--adjustment-ttl-s must be from 1 to 31536000 (a year)".into());
        }
        if self.hold_ttl_s == 0 || self.hold_ttl_s > 365 * 24 * 3_600 {
            return Err("--hold-ttl-s must be from 1 to 31536000 (a year)".into());
        }
        if !(1..=1_000_000).contains(&self.audit_checkpoint_every) {
            return Err("--audit-checkpoint-every must be from 1 to 1000000 entries".into());
        }
        if self.audit_checkpoint_interval_s == 0 || self.audit_checkpoint_interval_s > 24 * 3_600 {
            return Err("--audit-checkpoint-interval-s must be from 1 to 86400 (checkpoints are at least daily)".into());
        }
        Ok(())
    }
}

/// Call signaling: the WebSocket limits, call timers and the Redis cluster.
#[derive(Debug, Clone, Args)]
pub struct SignalingSection {
    /// Largest signaling message a client may send (bytes).
    #[arg(long, env = "COURIER_WS_MESSAGE_BYTES_MAX", default_value_t = SignalingConfig::default().ws_message_bytes_max)]
    pub ws_message_bytes_max: usize,
    /// Seconds a new signaling socket has to send `auth` (else closed with 4401).
    #[arg(long, env = "COURIER_WS_AUTH_TIMEOUT_S", default_value_t = SignalingConfig::default().ws_auth_timeout.as_secs())]
    pub ws_auth_timeout_s: u64,
    /// Seconds between the server's pings on each socket.
    #[arg(long, env = "COURIER_WS_PING_INTERVAL_S", default_value_t = SignalingConfig::default().ws_ping_interval.as_secs())]
    pub ws_ping_interval_s: u64,
    /// Seconds of silence (no frame, no pong) after which a socket is dropped as dead.
    #[arg(long, env = "COURIER_WS_IDLE_TIMEOUT_S", default_value_t = SignalingConfig::default().ws_idle_timeout.as_secs())]
    pub ws_idle_timeout_s: u64,
    /// Seconds a client may take to accept one frame before it is disconnected.
    #[arg(long, env = "COURIER_WS_WRITE_TIMEOUT_S", default_value_t = SignalingConfig::default().ws_write_timeout.as_secs())]
    pub ws_write_timeout_s: u64,
    /// Sustained signaling messages per second per connection.
    #[arg(long, env = "COURIER_WS_MESSAGES_PER_S", default_value_t = SignalingConfig::default().ws_messages_per_s)]
    pub ws_messages_per_s: u32,
    /// Messages per connection allowed at once above the sustained rate.
    #[arg(long, env = "COURIER_WS_MESSAGES_BURST", default_value_t = SignalingConfig::default().ws_messages_burst)]
    pub ws_messages_burst: u32,
    /// Frames queued for one socket; a client reading slower is disconnected.
    #[arg(long, env = "COURIER_WS_OUTBOUND_QUEUE_LEN_MAX", default_value_t = SignalingConfig::default().ws_outbound_queue_len_max)]
    pub ws_outbound_queue_len_max: usize,
    /// Devices of one account connected to signaling at once.
    #[arg(long, env = "COURIER_DEVICES_PER_ACCOUNT_MAX", default_value_t = SignalingConfig::default().devices_per_account_max)]
    pub devices_per_account_max: usize,
    /// Signaling sockets this process holds; beyond it, 503 `overloaded`.
    #[arg(long, env = "COURIER_WS_CONNECTIONS_MAX", default_value_t = SignalingConfig::default().ws_connections_max)]
    pub ws_connections_max: usize,
    /// Seconds an unanswered call rings before it ends with `invite_timeout`.
    #[arg(long, env = "COURIER_RING_TIMEOUT_S", default_value_t = SignalingConfig::default().ring_timeout.as_secs())]
    pub ring_timeout_s: u64,
    /// Seconds a device that lost its socket mid-call has to `resume`.
    #[arg(long, env = "COURIER_RECONNECT_GRACE_S", default_value_t = SignalingConfig::default().reconnect_grace.as_secs())]
    pub reconnect_grace_s: u64,
    /// Redis, for signaling scale-out across nodes (shared calls, presence, routing).
    #[arg(long, env = "COURIER_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Prefix of the signaling keys and channels in Redis: nodes with the same prefix form one cluster.
    #[arg(long, env = "COURIER_REDIS_KEY_PREFIX", default_value = courier_signaling::cluster::REDIS_KEY_PREFIX_DEFAULT)]
    pub redis_key_prefix: String,
    /// Seconds without a heartbeat after which a signaling node is taken for dead.
    #[arg(long, env = "COURIER_REDIS_NODE_TTL_S", default_value_t = courier_signaling::cluster::REDIS_NODE_TTL_S_DEFAULT)]
    pub redis_node_ttl_s: u64,
    /// Days call records (with their ratings and figures) are kept; older ones are deleted hourly, each run audited. 0 keeps them forever.
    #[arg(long, env = "COURIER_CALL_RECORDS_RETENTION_DAYS", default_value_t = 90)]
    pub call_records_retention_days: u64,
    /// Seconds between two runs of the call-records retention.
    #[arg(long, env = "COURIER_CALL_RECORDS_PURGE_INTERVAL_S", default_value_t = courier_signaling::store::PURGE_EVERY.as_secs(), hide = true)]
    pub call_records_purge_interval_s: u64,
}

impl SignalingSection {
    pub fn config(&self) -> SignalingConfig {
        SignalingConfig {
            ws_message_bytes_max: self.ws_message_bytes_max,
            ws_auth_timeout: Duration::from_secs(self.ws_auth_timeout_s),
            ws_ping_interval: Duration::from_secs(self.ws_ping_interval_s),
            ws_idle_timeout: Duration::from_secs(self.ws_idle_timeout_s),
            ws_write_timeout: Duration::from_secs(self.ws_write_timeout_s),
            ws_messages_per_s: self.ws_messages_per_s,
            ws_messages_burst: self.ws_messages_burst,
            ws_outbound_queue_len_max: self.ws_outbound_queue_len_max,
            devices_per_account_max: self.devices_per_account_max,
            ws_connections_max: self.ws_connections_max,
            ring_timeout: Duration::from_secs(self.ring_timeout_s),
            reconnect_grace: Duration::from_secs(self.reconnect_grace_s),
        }
    }

    /// The Redis cluster signaling joins, when `--redis-url` is set.
    pub fn cluster_config(&self) -> Option<ClusterConfig> {
        Some(ClusterConfig {
            url: self.redis_url.clone()?,
            key_prefix: self.redis_key_prefix.clone(),
            node_ttl: Duration::from_secs(self.redis_node_ttl_s),
        })
    }

    fn validate(&self) -> Result<(), String> {
        self.config().validate()?;
        if self.redis_node_ttl_s == 0 {
            return Err("--redis-node-ttl-s must be at least 1".into());
        }
        let prefix = &self.redis_key_prefix;
        if prefix.is_empty() || prefix.len() > 100 || prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("--redis-key-prefix must be 1 to 100 characters without spaces".into());
        }
        Ok(())
    }
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

/// The ICE servers handed to calls, and the embedded TURN relay.
#[derive(Debug, Clone, Args)]
pub struct TurnSection {
    /// The TURN relay calls use: embedded (default), external (coturn) or off.
    #[arg(id = "turn", long = "turn", env = "COURIER_TURN", value_enum, default_value = "embedded")]
    pub mode: TurnMode,
    /// TURN shared secrets, comma-separated: the first signs credentials, all are accepted
    /// (rotation). Default for the embedded relay: a secret created in the data directory.
    #[arg(long, env = "COURIER_TURN_SECRET", value_delimiter = ',', hide_env_values = true)]
    pub turn_secret: Vec<String>,
    /// TURN URLs handed to clients (external relay), comma-separated, e.g. turn:turn.example.com?transport=udp.
    #[arg(long, env = "COURIER_TURN_URLS", value_delimiter = ',')]
    pub turn_urls: Vec<String>,
    /// STUN URLs handed to clients, comma-separated; default with the embedded relay: the relay itself.
    #[arg(long, env = "COURIER_STUN_URLS", value_delimiter = ',')]
    pub stun_urls: Vec<String>,
    /// Seconds the TURN credentials handed out stay valid.
    #[arg(long, env = "COURIER_TURN_CREDENTIAL_TTL_S", default_value_t = courier_turn::TURN_CREDENTIAL_TTL_S_DEFAULT)]
    pub turn_credential_ttl_s: u64,
    /// Where the embedded TURN relay listens, UDP and TCP; port 0 picks a free one.
    #[arg(long, env = "COURIER_TURN_LISTEN", default_value = courier_turn::server::TURN_LISTEN_DEFAULT)]
    pub turn_listen: SocketAddr,
    /// The address the embedded relay's relayed sockets bind to and announce (default: the listen address).
    #[arg(long, env = "COURIER_TURN_RELAY_IP")]
    pub turn_relay_ip: Option<IpAddr>,
    /// Ports of the embedded relay's relayed sockets, LOW-HIGH.
    #[arg(long, env = "COURIER_TURN_RELAY_PORTS", default_value = "49152-65535")]
    pub turn_relay_ports: String,
    /// The embedded relay's realm.
    #[arg(long, env = "COURIER_TURN_REALM", default_value = courier_turn::server::TURN_REALM_DEFAULT)]
    pub turn_realm: String,
    /// Peer ranges (CIDR) the embedded relay may reach although they are not public, comma-separated, or `none`. Default: the loopback ranges when the relay listens on loopback (only this machine reaches it), none otherwise.
    #[arg(long, env = "COURIER_TURN_ALLOW_PEER", value_delimiter = ',')]
    pub turn_allow_peer: Vec<String>,
    /// Allocations the embedded relay holds at once.
    #[arg(long, env = "COURIER_TURN_ALLOCATIONS_MAX", default_value_t = courier_turn::server::TURN_ALLOCATIONS_MAX_DEFAULT)]
    pub turn_allocations_max: usize,
    /// Allocations one account holds at once on the embedded relay.
    #[arg(long, env = "COURIER_TURN_ALLOCATIONS_PER_USER_MAX", default_value_t = courier_turn::server::TURN_ALLOCATIONS_PER_USER_MAX_DEFAULT)]
    pub turn_allocations_per_user_max: usize,
    /// The longest lifetime (seconds) the embedded relay grants an allocation before it must be refreshed.
    #[arg(long, env = "COURIER_TURN_ALLOCATION_LIFETIME_MAX_S", default_value_t = courier_turn::server::TURN_ALLOCATION_LIFETIME_MAX_S_DEFAULT)]
    pub turn_allocation_lifetime_max_s: u64,
}

impl TurnSection {
    pub fn credential_ttl(&self) -> Duration {
        Duration::from_secs(self.turn_credential_ttl_s)
    }

    /// The embedded relay's settings, signing with `secrets`.
    pub fn relay_config(&self, secrets: TurnSecrets) -> Result<TurnConfig, String> {
        let mut config = TurnConfig::new(self.turn_listen, secrets);
        if let Some(ip) = self.turn_relay_ip {
            config.relay_ip = ip;
        }
        config.relay_ports = parse_port_range(&self.turn_relay_ports).ok_or_else(|| {
            format!("--turn-relay-ports {:?} is not a range LOW-HIGH such as 49152-65535", self.turn_relay_ports)
        })?;
        config.realm = self.turn_realm.clone();
        config.allow_peers = match self.turn_allow_peer.as_slice() {
            [] => courier_turn::filter::listen_scope(self.turn_listen.ip()),
            [none] if none.trim() == "none" => Vec::new(),
            ranges => ranges
                .iter()
                .map(|cidr| {
                    cidr.trim()
                        .parse()
                        .map_err(|_| format!("--turn-allow-peer {cidr:?} is not a CIDR range (or `none`)"))
                })
                .collect::<Result<_, _>>()?,
        };
        config.allocations_max = self.turn_allocations_max;
        config.allocations_per_user_max = self.turn_allocations_per_user_max;
        config.allocation_lifetime_max = Duration::from_secs(self.turn_allocation_lifetime_max_s);
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        for url in self.turn_urls.iter().chain(&self.stun_urls) {
            courier_signaling::ice::check_url(url)?;
        }
        if !self.turn_secret.is_empty() {
            TurnSecrets::new(self.turn_secret.clone())?;
        }
        if self.mode == TurnMode::External && (self.turn_urls.is_empty() || self.turn_secret.is_empty()) {
            return Err(
                "--turn external needs --turn-urls and --turn-secret (the secret coturn's use-auth-secret uses)".into(),
            );
        }
        if !(1..=7 * 24 * 3_600).contains(&self.turn_credential_ttl_s) {
            return Err("--turn-credential-ttl-s must be between 1 and 604800".into());
        }
        Ok(())
    }
}

impl ServeOptions {
    /// Refuses settings that cannot work, with what to do instead.
    pub fn validate(&self) -> Result<(), String> {
        self.server.validate()?;
        self.accounts.validate()?;
        self.ledger.validate()?;
        self.signaling.validate()?;
        self.turn.validate()
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

    fn parse(args: &[&str]) -> Result<ServeCommand, String> {
        ServeCommand::parse_args(args.iter().map(OsString::from))
    }

    fn options(args: &[&str]) -> ServeOptions {
        parse(args).unwrap().options
    }

    #[test]
    fn turn_settings_are_checked() {
        assert_eq!(parse_port_range("49152-65535"), Some((49_152, 65_535)));
        assert_eq!(parse_port_range("5000-4000"), None);
        assert_eq!(parse_port_range("0-10"), None);
        assert!(options(&["--turn", "external"]).validate().unwrap_err().contains("--turn-urls"));
        assert!(options(&["--turn-urls", "http://x"]).validate().is_err());
        assert!(options(&["--turn-secret", "short"]).validate().unwrap_err().contains("at least"));
        let secrets = TurnSecrets::new(vec!["0123456789abcdef".into()]).unwrap();
        let bad_cidr = options(&["--turn-allow-peer", "10.0.0.0/33"]);
        assert!(bad_cidr.turn.relay_config(secrets.clone()).unwrap_err().contains("CIDR"));
        let wildcard = options(&["--turn-listen", "0.0.0.0:3478"]);
        assert!(wildcard.turn.relay_config(secrets).unwrap_err().contains("--turn-relay-ip"));
    }

    #[test]
    fn defaults_are_the_services_own() {
        let defaults = options(&[]);
        assert_eq!(defaults.signaling.config(), SignalingConfig::default());
        assert_eq!(defaults.accounts.config(), AccountsConfig::default());
        assert_eq!(defaults.server.listen, "127.0.0.1:8080".parse::<SocketAddr>().unwrap());
        assert_eq!(defaults.turn.mode, TurnMode::Embedded);
        assert_eq!(defaults.validate(), Ok(()));
    }

    #[test]
    fn the_file_fills_only_what_flags_and_env_left_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("courier.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9999\"\nsign_in_code_ttl_s = 120\ncode_sender = \"webhook\"\n\
             turn_allow_peer = [\"10.0.0.0/8\", \"192.168.0.0/16\"]\nturn = \"off\"\n",
        )
        .unwrap();
        let config = path.to_str().unwrap();
        let merged = parse(&["signaling", "--listen", "127.0.0.1:1", "--config", config]).unwrap();
        assert_eq!(merged.service, Some(Service::Signaling));
        let merged = merged.options;
        assert_eq!(merged.server.listen, "127.0.0.1:1".parse::<SocketAddr>().unwrap());
        assert_eq!(merged.accounts.sign_in_code_ttl_s, 120);
        assert_eq!(merged.turn.turn_allow_peer, ["10.0.0.0/8", "192.168.0.0/16"]);
        assert_eq!(merged.turn.mode, TurnMode::Off);
        assert_eq!(
            merged.validate().unwrap_err(),
            "--code-sender webhook needs --code-webhook-url (or COURIER_CODE_WEBHOOK_URL)"
        );
    }

    #[test]
    fn every_option_can_come_from_the_file() {
        let command = ServeCommand::command();
        let keys: Vec<String> = command
            .get_arguments()
            .filter(|arg| arg.get_long().is_some() && arg.get_id() != "config")
            .map(|arg| arg.get_id().to_string())
            .collect();
        assert!(keys.len() >= 50, "{keys:?}");
        let dir = tempfile::tempdir().unwrap();
        for key in keys {
            let path = dir.path().join("one.toml");
            std::fs::write(&path, format!("{key} = \"?\"\n")).unwrap();
            let refused = parse(&["--config", path.to_str().unwrap()]).err().unwrap_or_default();
            // The key is known: the file's value reaches the option's own parser (which may refuse "?").
            assert!(!refused.contains("unknown option"), "{key}: {refused}");
        }
    }

    #[test]
    fn every_option_says_what_it_is_and_shows_its_default() {
        let command = ServeCommand::command();
        for arg in command.get_arguments() {
            let id = arg.get_id();
            assert!(arg.get_help().is_some_and(|help| !help.to_string().is_empty()), "--{id} has no description");
        }
        let help = ServeCommand::command().render_long_help().to_string();
        for shown in ["[default: 127.0.0.1:8080]", "[default: 300]", "[default: human]", "[default: 65536]"] {
            assert!(help.contains(shown), "{shown} in --help");
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_in_the_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("courier.toml");
        std::fs::write(&path, "lisen = \"127.0.0.1:9999\"\n").unwrap();
        assert!(parse(&["--config", path.to_str().unwrap()]).unwrap_err().contains("lisen"));
        std::fs::write(&path, "ring_timeout_s = \"soon\"\n").unwrap();
        assert!(parse(&["--config", path.to_str().unwrap()]).unwrap_err().contains("--ring-timeout-s"));
    }
}

/// Fuzz target of the configuration file (`courier_common::fuzz`): any text,
/// and tables of the real keys with values of every TOML type, are read or
/// refused with a sentence, and what is read is validated without a panic.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    fn keys() -> Vec<String> {
        ServeCommand::command()
            .get_arguments()
            .filter(|arg| arg.get_long().is_some())
            .map(|arg| arg.get_id().to_string())
            .chain(["unknown".to_owned(), "config".to_owned()])
            .collect()
    }

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|n| format!("{n:?}")),
            any::<bool>().prop_map(|b| b.to_string()),
            "[a-z0-9:/._\\-]{0,24}".prop_map(|text| format!("{text:?}")),
            "(127\\.0\\.0\\.1|\\[::1\\]|0\\.0\\.0\\.0):[0-9]{1,6}".prop_map(|text| format!("{text:?}")),
            prop::collection::vec("[0-9a-z./:\\-]{0,12}", 0..3).prop_map(|items| format!("{items:?}")),
            Just("{ a = 1 }".to_owned()),
            Just("1979-05-27T07:32:00Z".to_owned()),
        ]
    }

    fn document() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::collection::vec((prop::sample::select(keys()), value()), 0..6).prop_map(|pairs| {
                pairs.into_iter().map(|(key, value)| format!("{key} = {value}\n")).collect::<String>()
            }),
            ".{0,200}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: courier_common::fuzz::cases(), ..ProptestConfig::default() })]

        #[test]
        fn a_configuration_file_is_read_or_refused_never_a_panic(text in document()) {
            let command = ServeCommand::command();
            let argv = ["courier serve"];
            let matches = command.clone().try_get_matches_from(argv).expect("no flags parse");
            if let Ok(args) = text_args(&command, &matches, &text, Path::new("courier.toml")) {
                let all = argv.iter().map(OsString::from).chain(args);
                if let Ok(matches) = command.try_get_matches_from(all)
                    && let Ok(parsed) = ServeCommand::from_arg_matches(&matches)
                {
                    let _ = parsed.options.validate();
                    if let Ok(secrets) = courier_turn::TurnSecrets::new(vec!["a-test-secret-of-32-characters-or-more".into()]) {
                        let _ = parsed.options.turn.relay_config(secrets);
                    }
                }
            }
        }
    }
}
