//! Signing the audit log's checkpoints ([`courier_common::checkpoint`]):
//! the node's Ed25519 audit key, kept in its data directory like the
//! token-signing key, and the task that signs `(seq, head, time)` every so
//! many entries and at least once per interval.
//!
//! Rotation: start with a new `--audit-key-file`. Every key that signed is
//! registered in `audit_keys` when the service starts, so that its public
//! half stays published (and old checkpoints verifiable) after it is
//! rotated out.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use courier_accounts::tokens::KeyError;
use courier_common::Database;
use courier_common::checkpoint::{AuditKey, Checkpoint, key_id, statement};
use courier_common::shutdown::CancellationToken;
use courier_common::time::{now_ms, rfc3339};
use ed25519_dalek::{Signer, SigningKey};

/// The node's audit key.
pub struct AuditSigner {
    key: SigningKey,
    key_id: String,
}

impl AuditSigner {
    pub fn new(key: SigningKey) -> Self {
        let key_id = key_id(&key.verifying_key().to_bytes());
        AuditSigner { key, key_id }
    }

    /// The key in `path`, created there (mode 0600) if missing.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        Ok(Self::new(courier_accounts::tokens::load_or_create_signing_key(path, "audit-signing")?))
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The public half, base64url (as published in `audit_keys`).
    pub fn public_key(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.key.verifying_key().to_bytes())
    }

    /// A checkpoint of entry `seq` with hash `head`, signed at `at_ms`.
    pub fn sign(&self, seq: i64, head: &str, at_ms: i64) -> Checkpoint {
        let at = rfc3339(at_ms);
        let signature = self.key.sign(&statement(seq, head, &at));
        Checkpoint {
            seq,
            head: head.to_owned(),
            at,
            key_id: self.key_id.clone(),
            signature: URL_SAFE_NO_PAD.encode(signature.to_bytes()),
        }
    }
}

/// When checkpoints are signed.
#[derive(Debug, Clone)]
pub struct CheckpointConfig {
    /// Sign once the log has grown by this many entries since the last one.
    pub every_entries: i64,
    /// And at least this often, even when it has not.
    pub interval: Duration,
    /// How often the log's head is looked at.
    pub poll: Duration,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            every_entries: 1_000,
            interval: Duration::from_secs(24 * 3_600),
            poll: Duration::from_secs(1),
        }
    }
}

/// Publishes the signer's public key (once; a known key keeps its date).
pub async fn register(db: &Database, signer: &AuditSigner) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO audit_keys (key_id, public_key, created_at) VALUES ($1, $2, $3) ON CONFLICT (key_id) DO NOTHING",
    )
    .bind(signer.key_id())
    .bind(signer.public_key())
    .bind(now_ms())
    .execute(db.pool())
    .await?;
    Ok(())
}

/// Signs a checkpoint of the log's head if one is due: the log grew by
/// `every_entries` since the last, or the last is older than `interval`
/// (or there is none yet). An empty log has nothing to sign. `known` is the
/// newest checkpoint's `(seq, at)` as this node last saw it: while that says
/// nothing is due, the head is the only read; once it says something is,
/// the newest checkpoint is read again (another node may have signed).
pub async fn sign_if_due(
    db: &Database,
    signer: &AuditSigner,
    config: &CheckpointConfig,
    known: &mut Option<(i64, i64)>,
) -> Result<Option<Checkpoint>, sqlx::Error> {
    let (seq, head): (i64, String) = sqlx::query_as(courier_common::audit::HEAD_SQL).fetch_one(db.pool()).await?;
    if seq == 0 {
        return Ok(None);
    }
    let now = now_ms();
    let interval_ms = i64::try_from(config.interval.as_millis()).unwrap_or(i64::MAX);
    let due = |last: Option<(i64, i64)>| match last {
        None => true,
        Some((last_seq, last_at)) => {
            seq >= last_seq.saturating_add(config.every_entries) || now.saturating_sub(last_at) >= interval_ms
        }
    };
    if known.is_some() && !due(*known) {
        return Ok(None);
    }
    *known = sqlx::query_as("SELECT seq, at FROM audit_checkpoints ORDER BY id DESC LIMIT 1")
        .fetch_optional(db.pool())
        .await?;
    if !due(*known) {
        return Ok(None);
    }
    let checkpoint = signer.sign(seq, &head, now);
    sqlx::query("INSERT INTO audit_checkpoints (id, seq, head, at, key_id, signature) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(checkpoint.seq)
        .bind(&checkpoint.head)
        .bind(now)
        .bind(&checkpoint.key_id)
        .bind(&checkpoint.signature)
        .execute(db.pool())
        .await?;
    *known = Some((seq, now));
    tracing::info!(seq, key_id = signer.key_id(), "signed an audit checkpoint");
    Ok(Some(checkpoint))
}

/// Signs checkpoints as they fall due until `shutdown`.
pub async fn run(db: Database, signer: AuditSigner, config: CheckpointConfig, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(config.poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut known = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(error) = sign_if_due(&db, &signer, &config, &mut known).await {
            tracing::warn!(%error, "cannot sign an audit checkpoint; trying again");
        }
    }
}

/// Publishes the signer's key (retrying until the database answers), then
/// signs checkpoints as they fall due until `shutdown`.
pub async fn run_registered(db: Database, signer: AuditSigner, config: CheckpointConfig, shutdown: CancellationToken) {
    while let Err(error) = register(&db, &signer).await {
        tracing::warn!(%error, "cannot publish the audit key; trying again");
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(config.poll) => {}
        }
    }
    run(db, signer, config, shutdown).await;
}

/// Every published key, oldest first.
pub async fn keys(db: &Database) -> Result<Vec<AuditKey>, sqlx::Error> {
    let rows: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT key_id, public_key, created_at FROM audit_keys ORDER BY created_at, key_id")
            .fetch_all(db.pool())
            .await?;
    Ok(rows
        .into_iter()
        .map(|(key_id, public_key, created_at)| AuditKey {
            key_id,
            algorithm: "Ed25519".into(),
            public_key,
            created_at: rfc3339(created_at),
        })
        .collect())
}

/// Checkpoints newest first, before the one with id `before_id`: `(id, checkpoint)`.
pub async fn list(
    db: &Database,
    before_id: Option<&str>,
    limit: u32,
) -> Result<Vec<(String, Checkpoint)>, sqlx::Error> {
    let rows: Vec<(String, i64, String, i64, String, String)> = sqlx::query_as(
        "SELECT id, seq, head, at, key_id, signature FROM audit_checkpoints WHERE id < $1 ORDER BY id DESC LIMIT $2",
    )
    .bind(before_id.unwrap_or("~"))
    .bind(i64::from(limit))
    .fetch_all(db.pool())
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, seq, head, at, key_id, signature)| {
            (id, Checkpoint { seq, head, at: rfc3339(at), key_id, signature })
        })
        .collect())
}
