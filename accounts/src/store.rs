//! Accounts storage: SQL that runs unchanged on SQLite and PostgreSQL. Other
//! services (signaling, payments) read accounts, settings and blocks through
//! these functions against the shared database.

use courier_common::Database;
use sqlx::{Any, Transaction};

use crate::phone::PhoneNumber;
use crate::settings::{CallsFrom, P2p, Settings};

pub type Tx<'c> = Transaction<'c, Any>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub id: String,
    pub phone: PhoneNumber,
    pub created_at_ms: i64,
    pub settings: Settings,
}

impl Account {
    pub fn region(&self) -> &str {
        self.phone.region()
    }
}

type AccountRow = (String, String, String, String, String, i64);

fn account_from_row((id, phone, region, calls_from, p2p, created_at_ms): AccountRow) -> Account {
    Account {
        id,
        phone: PhoneNumber::from_stored(phone, region),
        created_at_ms,
        settings: Settings {
            // The CHECK constraints keep these columns to the parsed values.
            calls_from: CallsFrom::parse(&calls_from).unwrap_or(CallsFrom::Everybody),
            p2p: P2p::parse(&p2p).unwrap_or(P2p::Always),
        },
    }
}

pub async fn account(db: &Database, id: &str) -> Result<Option<Account>, sqlx::Error> {
    let row: Option<AccountRow> =
        sqlx::query_as("SELECT id, phone, region, calls_from, p2p, created_at FROM accounts WHERE id = $1")
            .bind(id)
            .fetch_optional(db.pool())
            .await?;
    Ok(row.map(account_from_row))
}

pub async fn account_by_phone(db: &Database, phone: &PhoneNumber) -> Result<Option<Account>, sqlx::Error> {
    let row: Option<AccountRow> =
        sqlx::query_as("SELECT id, phone, region, calls_from, p2p, created_at FROM accounts WHERE phone = $1")
            .bind(phone.as_e164())
            .fetch_optional(db.pool())
            .await?;
    Ok(row.map(account_from_row))
}

/// The account for `phone`, created on first sign-in.
pub async fn upsert_account(
    tx: &mut Tx<'_>,
    phone: &PhoneNumber,
    new_id: &str,
    now_ms: i64,
) -> Result<(String, String), sqlx::Error> {
    sqlx::query(
        "INSERT INTO accounts (id, phone, region, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (phone) DO NOTHING",
    )
    .bind(new_id)
    .bind(phone.as_e164())
    .bind(phone.region())
    .bind(now_ms)
    .execute(&mut **tx)
    .await?;
    sqlx::query_as("SELECT id, region FROM accounts WHERE phone = $1").bind(phone.as_e164()).fetch_one(&mut **tx).await
}

/// Accounts made without a sign-in (seeding a benchmark's or an import's
/// users): each id with its number; a number that has an account already
/// keeps it.
pub async fn insert_accounts(db: &Database, accounts: &[(&str, &PhoneNumber)], now_ms: i64) -> Result<(), sqlx::Error> {
    const ROWS_PER_STATEMENT: usize = 500;
    for chunk in accounts.chunks(ROWS_PER_STATEMENT) {
        let rows: Vec<String> = (0..chunk.len())
            .map(|i| format!("(${}, ${}, ${}, ${})", 4 * i + 1, 4 * i + 2, 4 * i + 3, 4 * i + 4))
            .collect();
        // Built from numbered placeholders only.
        let sql = format!(
            "INSERT INTO accounts (id, phone, region, created_at) VALUES {} ON CONFLICT DO NOTHING",
            rows.join(", ")
        );
        let mut query = sqlx::query(&sql);
        for (id, phone) in chunk {
            query = query.bind(*id).bind(phone.as_e164()).bind(phone.region()).bind(now_ms);
        }
        query.execute(db.pool()).await?;
    }
    Ok(())
}

pub async fn update_settings(db: &Database, account_id: &str, settings: Settings) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE accounts SET calls_from = $2, p2p = $3 WHERE id = $1")
        .bind(account_id)
        .bind(settings.calls_from.as_str())
        .bind(settings.p2p.as_str())
        .execute(db.pool())
        .await?;
    Ok(())
}

// Sign-in codes.

pub struct CodeRow {
    pub id: String,
    pub digest: String,
    pub expires_at_ms: i64,
    pub attempts: i64,
    pub used_at_ms: Option<i64>,
}

/// When codes were requested for `phone` since `since_ms`, newest first.
pub async fn code_request_times(db: &Database, phone: &PhoneNumber, since_ms: i64) -> Result<Vec<i64>, sqlx::Error> {
    let rows: Vec<(i64,)> = sqlx::query_as(
        "SELECT created_at FROM sign_in_codes WHERE phone = $1 AND created_at > $2 ORDER BY created_at DESC",
    )
    .bind(phone.as_e164())
    .bind(since_ms)
    .fetch_all(db.pool())
    .await?;
    Ok(rows.into_iter().map(|(t,)| t).collect())
}

pub async fn insert_code(
    db: &Database,
    id: &str,
    phone: &PhoneNumber,
    digest: &str,
    now_ms: i64,
    expires_at_ms: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO sign_in_codes (id, phone, code_digest, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(phone.as_e164())
    .bind(digest)
    .bind(now_ms)
    .bind(expires_at_ms)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// The newest code requested for `phone`: only it can sign in.
pub async fn latest_code(db: &Database, phone: &PhoneNumber) -> Result<Option<CodeRow>, sqlx::Error> {
    let row: Option<(String, String, i64, i64, Option<i64>)> = sqlx::query_as(
        "SELECT id, code_digest, expires_at, attempts, used_at FROM sign_in_codes \
         WHERE phone = $1 ORDER BY created_at DESC, id DESC LIMIT 1",
    )
    .bind(phone.as_e164())
    .fetch_optional(db.pool())
    .await?;
    Ok(row.map(|(id, digest, expires_at_ms, attempts, used_at_ms)| CodeRow {
        id,
        digest,
        expires_at_ms,
        attempts,
        used_at_ms,
    }))
}

/// Counts one attempt against a code, atomically, unless it is used up.
/// Returns the attempt number, or `None` when no attempt is left.
pub async fn count_attempt(db: &Database, code_id: &str, attempts_max: i64) -> Result<Option<i64>, sqlx::Error> {
    let row: Option<(i64,)> = sqlx::query_as(
        "UPDATE sign_in_codes SET attempts = attempts + 1 \
         WHERE id = $1 AND attempts < $2 AND used_at IS NULL RETURNING attempts",
    )
    .bind(code_id)
    .bind(attempts_max)
    .fetch_optional(db.pool())
    .await?;
    Ok(row.map(|(n,)| n))
}

/// Marks a code used; false if another request used it first.
pub async fn consume_code(tx: &mut Tx<'_>, code_id: &str, now_ms: i64) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("UPDATE sign_in_codes SET used_at = $2 WHERE id = $1 AND used_at IS NULL")
        .bind(code_id)
        .bind(now_ms)
        .execute(&mut **tx)
        .await?;
    Ok(done.rows_affected() == 1)
}

// Devices and refresh tokens.

pub async fn insert_device(
    tx: &mut Tx<'_>,
    id: &str,
    account_id: &str,
    name: &str,
    now_ms: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO devices (id, account_id, name, created_at, last_seen_at) VALUES ($1, $2, $3, $4, $4)")
        .bind(id)
        .bind(account_id)
        .bind(name)
        .bind(now_ms)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub async fn insert_refresh_token(
    tx: &mut Tx<'_>,
    digest: &str,
    device_id: &str,
    now_ms: i64,
    expires_at_ms: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO refresh_tokens (token_digest, device_id, created_at, expires_at) VALUES ($1, $2, $3, $4)")
        .bind(digest)
        .bind(device_id)
        .bind(now_ms)
        .bind(expires_at_ms)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub struct RefreshRow {
    pub device_id: String,
    pub account_id: String,
    pub region: String,
    pub expires_at_ms: i64,
    pub spent_at_ms: Option<i64>,
    pub device_revoked_at_ms: Option<i64>,
}

pub async fn refresh_token(db: &Database, digest: &str) -> Result<Option<RefreshRow>, sqlx::Error> {
    type Row = (String, String, String, i64, Option<i64>, Option<i64>);
    let row: Option<Row> = sqlx::query_as(
        "SELECT r.device_id, d.account_id, a.region, r.expires_at, r.spent_at, d.revoked_at \
         FROM refresh_tokens r JOIN devices d ON d.id = r.device_id JOIN accounts a ON a.id = d.account_id \
         WHERE r.token_digest = $1",
    )
    .bind(digest)
    .fetch_optional(db.pool())
    .await?;
    Ok(row.map(|(device_id, account_id, region, expires_at_ms, spent_at_ms, device_revoked_at_ms)| RefreshRow {
        device_id,
        account_id,
        region,
        expires_at_ms,
        spent_at_ms,
        device_revoked_at_ms,
    }))
}

/// Spends a refresh token; false if it was already spent (by a racing request).
pub async fn spend_refresh_token(tx: &mut Tx<'_>, digest: &str, now_ms: i64) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("UPDATE refresh_tokens SET spent_at = $2 WHERE token_digest = $1 AND spent_at IS NULL")
        .bind(digest)
        .bind(now_ms)
        .execute(&mut **tx)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn touch_device(tx: &mut Tx<'_>, device_id: &str, now_ms: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE devices SET last_seen_at = $2 WHERE id = $1")
        .bind(device_id)
        .bind(now_ms)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Revokes a device session of `account_id`; false if there is no such live
/// session of that account.
pub async fn revoke_device(
    db: &Database,
    account_id: &str,
    device_id: &str,
    reason: &str,
    now_ms: i64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE devices SET revoked_at = $3, revoke_reason = $4 WHERE id = $1 AND account_id = $2 AND revoked_at IS NULL",
    )
    .bind(device_id)
    .bind(account_id)
    .bind(now_ms)
    .bind(reason)
    .execute(db.pool())
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Device sessions revoked at or after `since_ms`, oldest first: (device id, when).
pub async fn revoked_since(db: &Database, since_ms: i64) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT id, revoked_at FROM devices WHERE revoked_at >= $1 ORDER BY revoked_at LIMIT 10000")
        .bind(since_ms)
        .fetch_all(db.pool())
        .await
}

pub struct DeviceRow {
    pub id: String,
    pub name: String,
    pub created_at_ms: i64,
    pub last_seen_at_ms: i64,
}

/// Live device sessions of an account in creation order, after `after_id`.
pub async fn devices(
    db: &Database,
    account_id: &str,
    after_id: &str,
    limit: u32,
) -> Result<Vec<DeviceRow>, sqlx::Error> {
    let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(
        "SELECT id, name, created_at, last_seen_at FROM devices \
         WHERE account_id = $1 AND revoked_at IS NULL AND id > $2 ORDER BY id LIMIT $3",
    )
    .bind(account_id)
    .bind(after_id)
    .bind(i64::from(limit))
    .fetch_all(db.pool())
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, name, created_at_ms, last_seen_at_ms)| DeviceRow { id, name, created_at_ms, last_seen_at_ms })
        .collect())
}

// Blocks.

/// Blocks `blocked_id`; idempotent.
pub async fn block(db: &Database, account_id: &str, blocked_id: &str, now_ms: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO blocks (account_id, blocked_id, created_at) VALUES ($1, $2, $3) \
         ON CONFLICT (account_id, blocked_id) DO NOTHING",
    )
    .bind(account_id)
    .bind(blocked_id)
    .bind(now_ms)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// Unblocks; false if `blocked_id` was not blocked.
pub async fn unblock(db: &Database, account_id: &str, blocked_id: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM blocks WHERE account_id = $1 AND blocked_id = $2")
        .bind(account_id)
        .bind(blocked_id)
        .execute(db.pool())
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Whether `account_id` has blocked `other_id`.
pub async fn has_blocked(db: &Database, account_id: &str, other_id: &str) -> Result<bool, sqlx::Error> {
    let row: Option<(i64,)> = sqlx::query_as("SELECT 1 FROM blocks WHERE account_id = $1 AND blocked_id = $2")
        .bind(account_id)
        .bind(other_id)
        .fetch_optional(db.pool())
        .await?;
    Ok(row.is_some())
}

/// Blocked accounts in id order after `after_id`: `(account id, blocked at)`.
pub async fn blocked(
    db: &Database,
    account_id: &str,
    after_id: &str,
    limit: u32,
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT blocked_id, created_at FROM blocks WHERE account_id = $1 AND blocked_id > $2 ORDER BY blocked_id LIMIT $3",
    )
    .bind(account_id)
    .bind(after_id)
    .bind(i64::from(limit))
    .fetch_all(db.pool())
    .await
}
