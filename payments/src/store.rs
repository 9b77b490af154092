//! Ledger storage: SQL that runs unchanged on SQLite and PostgreSQL. Reads go
//! through the pool concurrently; only the writer task writes balances and
//! transfers.

use std::collections::HashMap;

use courier_common::Database;
use sqlx::AnyConnection;

use crate::ledger::{AccountId, AccountKind, LedgerAccount, Transfer, TransferKind, Usage};
use crate::money::Currency;
use crate::region::{FeeRule, RegionCode, RegionRules};

/// Bound parameters per statement: below SQLite's 32,766 and PostgreSQL's
/// 65,535. Multi-row statements take as many rows as fit.
const PARAMS_PER_STATEMENT_MAX: usize = 30_000;

/// `$first, $first+1, …` for `count` parameters.
fn placeholders(first: usize, count: usize) -> String {
    (first..first + count).map(|n| format!("${n}")).collect::<Vec<_>>().join(", ")
}

type RegionRow =
    (String, i64, String, String, i64, i64, i64, Option<i64>, i64, i64, Option<i64>, Option<i64>, Option<i64>);

fn region_from_row(row: RegionRow) -> Option<RegionRules> {
    let (
        code,
        enabled,
        currency,
        time_zone,
        per_transfer,
        daily,
        monthly,
        night,
        night_start,
        night_end,
        free,
        rate,
        cap,
    ) = row;
    let fee = match (free, rate, cap) {
        (Some(free_monthly_minor), Some(rate_bp), Some(cap_minor)) => {
            FeeRule::FreeMonthlyThenRate { free_monthly_minor, rate_bp, cap_minor }
        }
        _ => FeeRule::None,
    };
    Some(RegionRules {
        code: RegionCode::parse(&code)?,
        enabled: enabled == 1,
        currency: Currency::parse(&currency)?,
        time_zone,
        per_transfer_max_minor: per_transfer,
        daily_max_minor: daily,
        monthly_max_minor: monthly,
        night_max_minor: night,
        night_start_hour: i8::try_from(night_start).ok()?,
        night_end_hour: i8::try_from(night_end).ok()?,
        fee,
    })
}

const REGION_COLUMNS_SQL: &str = "SELECT code, enabled, currency, time_zone, per_transfer_max, daily_max, monthly_max, \
     night_max, night_start_hour, night_end_hour, fee_free_monthly, fee_rate_bp, fee_cap FROM regions ORDER BY code";

pub async fn regions(connection: &mut AnyConnection) -> Result<HashMap<RegionCode, RegionRules>, sqlx::Error> {
    let rows: Vec<RegionRow> = sqlx::query_as(REGION_COLUMNS_SQL).fetch_all(&mut *connection).await?;
    Ok(rows.into_iter().filter_map(region_from_row).map(|rules| (rules.code, rules)).collect())
}

/// Creates the wallet of `account_id` if it has none; wallets are created on
/// first use, only for accounts of a supported region.
pub async fn ensure_wallet(
    db: &Database,
    account_id: &str,
    region: RegionCode,
    currency: Currency,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO ledger_accounts (id, kind, region, currency, created_at) VALUES ($1, 'wallet', $2, $3, $4) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(account_id)
    .bind(region.as_str())
    .bind(currency.code())
    .bind(courier_common::time::now_ms())
    .execute(db.pool())
    .await?;
    Ok(())
}

type AccountRow = (String, String, String, String, i64, i64);

fn account_from_row((id, kind, region, currency, balance, frozen): AccountRow) -> Option<LedgerAccount> {
    Some(LedgerAccount {
        id,
        kind: AccountKind::parse(&kind)?,
        region: RegionCode::parse(&region)?,
        currency: Currency::parse(&currency)?,
        balance_minor: balance,
        frozen: frozen == 1,
    })
}

/// The ledger accounts among `ids` that exist.
pub async fn accounts(connection: &mut AnyConnection, ids: &[AccountId]) -> Result<Vec<LedgerAccount>, sqlx::Error> {
    let mut found = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(PARAMS_PER_STATEMENT_MAX) {
        let sql = format!(
            "SELECT id, kind, region, currency, balance, frozen FROM ledger_accounts WHERE id IN ({})",
            placeholders(1, chunk.len())
        );
        // Built from constants and numbered placeholders only; values are bound.
        let mut query = sqlx::query_as::<_, AccountRow>(&sql);
        for id in chunk {
            query = query.bind(id);
        }
        found.extend(query.fetch_all(&mut *connection).await?.into_iter().filter_map(account_from_row));
    }
    Ok(found)
}

/// Every system account (settlement, fee revenue, adjustments).
pub async fn system_accounts(connection: &mut AnyConnection) -> Result<Vec<LedgerAccount>, sqlx::Error> {
    let rows: Vec<AccountRow> = sqlx::query_as(
        "SELECT id, kind, region, currency, balance, frozen FROM ledger_accounts WHERE kind <> 'wallet'",
    )
    .fetch_all(&mut *connection)
    .await?;
    Ok(rows.into_iter().filter_map(account_from_row).collect())
}

pub async fn wallet(db: &Database, account_id: &str) -> Result<Option<LedgerAccount>, sqlx::Error> {
    let row: Option<AccountRow> = sqlx::query_as(
        "SELECT id, kind, region, currency, balance, frozen FROM ledger_accounts WHERE id = $1 AND kind = 'wallet'",
    )
    .bind(account_id)
    .fetch_optional(db.pool())
    .await?;
    Ok(row.and_then(account_from_row))
}

/// The P2P totals of `senders` (all of one region) in the windows of `usage`.
pub async fn usage(
    connection: &mut AnyConnection,
    senders: &[AccountId],
    windows: Usage,
) -> Result<HashMap<AccountId, Usage>, sqlx::Error> {
    let night_start = windows.night_start_ms.unwrap_or(i64::MAX);
    let since = windows.month_start_ms.min(night_start).min(windows.day_start_ms);
    let mut found = HashMap::new();
    for chunk in senders.chunks(PARAMS_PER_STATEMENT_MAX - 4) {
        let sql = format!(
            "SELECT debit_account, \
               CAST(COALESCE(SUM(CASE WHEN created_at >= $1 THEN amount ELSE 0 END), 0) AS BIGINT), \
               CAST(COALESCE(SUM(CASE WHEN created_at >= $2 THEN amount ELSE 0 END), 0) AS BIGINT), \
               CAST(COALESCE(SUM(CASE WHEN created_at >= $3 THEN amount ELSE 0 END), 0) AS BIGINT) \
             FROM transfers WHERE kind = 'p2p' AND created_at >= $4 AND debit_account IN ({}) GROUP BY debit_account",
            placeholders(5, chunk.len())
        );
        // Built from constants and numbered placeholders only; values are bound.
        let mut query = sqlx::query_as::<_, (String, i64, i64, i64)>(&sql)
            .bind(windows.day_start_ms)
            .bind(windows.month_start_ms)
            .bind(night_start)
            .bind(since);
        for id in chunk {
            query = query.bind(id);
        }
        for (id, day, month, night) in query.fetch_all(&mut *connection).await? {
            found.insert(id, Usage { day_minor: day, month_minor: month, night_minor: night, ..windows });
        }
    }
    for id in senders {
        found.entry(id.clone()).or_insert(windows);
    }
    Ok(found)
}

/// A stored idempotent response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u16,
    pub body: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey {
    pub scope: String,
    pub key: String,
}

/// The fingerprint and response stored for a key, if any.
pub async fn idempotent_response(
    db: &Database,
    key: &IdempotencyKey,
) -> Result<Option<(String, StoredResponse)>, sqlx::Error> {
    let row: Option<(String, i64, String)> =
        sqlx::query_as("SELECT fingerprint, status, body FROM idempotency_keys WHERE scope = $1 AND key = $2")
            .bind(&key.scope)
            .bind(&key.key)
            .fetch_optional(db.pool())
            .await?;
    Ok(row.map(|(fingerprint, status, body)| (fingerprint, StoredResponse { status: status as u16, body })))
}

/// The stored keys among `keys`.
pub async fn idempotent_responses(
    connection: &mut AnyConnection,
    keys: &[&IdempotencyKey],
) -> Result<HashMap<IdempotencyKey, (String, StoredResponse)>, sqlx::Error> {
    let mut found = HashMap::new();
    for chunk in keys.chunks(PARAMS_PER_STATEMENT_MAX / 2) {
        let pairs: Vec<String> = (0..chunk.len()).map(|i| format!("(${}, ${})", 2 * i + 1, 2 * i + 2)).collect();
        let sql = format!(
            "SELECT scope, key, fingerprint, status, body FROM idempotency_keys WHERE (scope, key) IN ({})",
            pairs.join(", ")
        );
        // Built from constants and numbered placeholders only; values are bound.
        let mut query = sqlx::query_as::<_, (String, String, String, i64, String)>(&sql);
        for key in chunk {
            query = query.bind(&key.scope).bind(&key.key);
        }
        for (scope, key, fingerprint, status, body) in query.fetch_all(&mut *connection).await? {
            found.insert(IdempotencyKey { scope, key }, (fingerprint, StoredResponse { status: status as u16, body }));
        }
    }
    Ok(found)
}

/// What one batch writes, in one transaction.
#[derive(Debug, Default)]
pub struct BatchWrite {
    pub transfers: Vec<Transfer>,
    /// New balances of the accounts the transfers touched.
    pub balances: Vec<(AccountId, i64)>,
    pub frozen: Vec<(AccountId, bool)>,
    pub idempotency: Vec<(IdempotencyKey, String, StoredResponse)>,
}

/// Writes a batch in one transaction and commits it durably.
pub async fn commit(connection: &mut AnyConnection, batch: &BatchWrite, now_ms: i64) -> Result<(), sqlx::Error> {
    use sqlx::Connection;
    let mut tx = connection.begin().await?;
    for chunk in batch.transfers.chunks(PARAMS_PER_STATEMENT_MAX / 13) {
        let rows: Vec<String> = (0..chunk.len()).map(|i| format!("({})", placeholders(13 * i + 1, 13))).collect();
        let sql = format!(
            "INSERT INTO transfers (id, kind, debit_account, credit_account, amount, fee, currency, region, linked_id, \
             initiator, note, external_ref, created_at) VALUES {}",
            rows.join(", ")
        );
        // Built from constants and numbered placeholders only; values are bound.
        let mut query = sqlx::query(&sql);
        for t in chunk {
            query = query
                .bind(&t.id)
                .bind(t.kind.as_str())
                .bind(&t.debit)
                .bind(&t.credit)
                .bind(t.amount_minor)
                .bind(t.fee_minor)
                .bind(t.currency.code())
                .bind(t.region.as_str())
                .bind(&t.linked_id)
                .bind(&t.initiator)
                .bind(&t.note)
                .bind(&t.external_ref)
                .bind(t.created_at_ms);
        }
        query.execute(&mut *tx).await?;
    }
    for chunk in batch.balances.chunks(PARAMS_PER_STATEMENT_MAX / 2) {
        let rows: Vec<String> = (0..chunk.len()).map(|i| format!("(${}, ${})", 2 * i + 1, 2 * i + 2)).collect();
        // VALUES columns are column1, column2 in both SQLite and PostgreSQL.
        let sql = format!(
            "UPDATE ledger_accounts SET balance = v.column2 FROM (VALUES {}) AS v WHERE ledger_accounts.id = v.column1",
            rows.join(", ")
        );
        let mut query = sqlx::query(&sql);
        for (id, balance) in chunk {
            query = query.bind(id).bind(*balance);
        }
        query.execute(&mut *tx).await?;
    }
    for (id, frozen) in &batch.frozen {
        sqlx::query("UPDATE ledger_accounts SET frozen = $2 WHERE id = $1")
            .bind(id)
            .bind(i64::from(*frozen))
            .execute(&mut *tx)
            .await?;
    }
    for chunk in batch.idempotency.chunks(PARAMS_PER_STATEMENT_MAX / 6) {
        let rows: Vec<String> = (0..chunk.len()).map(|i| format!("({})", placeholders(6 * i + 1, 6))).collect();
        let sql = format!(
            "INSERT INTO idempotency_keys (scope, key, fingerprint, status, body, created_at) VALUES {}",
            rows.join(", ")
        );
        let mut query = sqlx::query(&sql);
        for (key, fingerprint, response) in chunk {
            query = query
                .bind(&key.scope)
                .bind(&key.key)
                .bind(fingerprint)
                .bind(i64::from(response.status))
                .bind(&response.body)
                .bind(now_ms);
        }
        query.execute(&mut *tx).await?;
    }
    tx.commit().await
}

/// Forgets idempotency keys older than `before_ms`.
pub async fn expire_idempotency_keys(connection: &mut AnyConnection, before_ms: i64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
        .bind(before_ms)
        .execute(&mut *connection)
        .await?;
    Ok(done.rows_affected())
}

type TransferRow = (
    String,
    String,
    String,
    String,
    i64,
    i64,
    String,
    String,
    Option<String>,
    String,
    Option<String>,
    Option<String>,
    i64,
);

const TRANSFER_COLUMNS: &str = "id, kind, debit_account, credit_account, amount, fee, currency, region, linked_id, \
     initiator, note, external_ref, created_at";

fn transfer_from_row(row: TransferRow) -> Option<Transfer> {
    let (id, kind, debit, credit, amount, fee, currency, region, linked_id, initiator, note, external_ref, created_at) =
        row;
    Some(Transfer {
        id,
        kind: TransferKind::parse(&kind)?,
        debit,
        credit,
        amount_minor: amount,
        fee_minor: fee,
        currency: Currency::parse(&currency)?,
        region: RegionCode::parse(&region)?,
        linked_id,
        initiator,
        note,
        external_ref,
        created_at_ms: created_at,
    })
}

/// One transfer, if `account_id` is a party to it.
pub async fn transfer_of(db: &Database, account_id: &str, id: &str) -> Result<Option<Transfer>, sqlx::Error> {
    let sql = format!(
        "SELECT {TRANSFER_COLUMNS} FROM transfers WHERE id = $1 AND kind <> 'fee' AND (debit_account = $2 OR credit_account = $2)"
    );
    let row: Option<TransferRow> = sqlx::query_as(&sql).bind(id).bind(account_id).fetch_optional(db.pool()).await?;
    Ok(row.and_then(transfer_from_row))
}

/// An account's transfers, newest first, before `before_id` (fee transfers
/// are shown on their P2P transfer).
pub async fn transfers_of(
    db: &Database,
    account_id: &str,
    before_id: Option<&str>,
    limit: u32,
) -> Result<Vec<Transfer>, sqlx::Error> {
    let sql = format!(
        "SELECT {TRANSFER_COLUMNS} FROM transfers WHERE (debit_account = $1 OR credit_account = $1) AND kind <> 'fee' \
         AND id < $2 ORDER BY id DESC LIMIT $3"
    );
    // '~' sorts after every UUID, so "no cursor" is "before the end".
    let rows: Vec<TransferRow> = sqlx::query_as(&sql)
        .bind(account_id)
        .bind(before_id.unwrap_or("~"))
        .bind(i64::from(limit))
        .fetch_all(db.pool())
        .await?;
    Ok(rows.into_iter().filter_map(transfer_from_row).collect())
}

/// Per currency, the sum of all balances (zero when the ledger balances).
pub async fn trial_balance(db: &Database) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT currency, CAST(COALESCE(SUM(balance), 0) AS BIGINT) FROM ledger_accounts GROUP BY currency ORDER BY currency",
    )
    .fetch_all(db.pool())
    .await
}

/// Accounts whose stored balance differs from the sum of their transfers:
/// `(id, stored, computed)`.
pub async fn balance_mismatches(db: &Database) -> Result<Vec<(String, i64, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, balance, computed FROM ( \
           SELECT a.id, a.balance, CAST( \
             COALESCE((SELECT SUM(amount) FROM transfers WHERE credit_account = a.id), 0) \
             - COALESCE((SELECT SUM(amount) FROM transfers WHERE debit_account = a.id), 0) AS BIGINT) AS computed \
           FROM ledger_accounts a) AS balances \
         WHERE balance <> computed ORDER BY id",
    )
    .fetch_all(db.pool())
    .await
}
