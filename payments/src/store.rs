//! Ledger storage: SQL that runs unchanged on SQLite and PostgreSQL. Reads go
//! through the pool concurrently; only the writer task writes balances and
//! transfers, through its own connection ([`crate::writer_store`]): on
//! PostgreSQL with the batch statements here, on SQLite with its own.

use std::collections::HashMap;
use std::sync::LazyLock;

use courier_common::Database;
use sqlx::PgConnection;

use crate::ledger::{AccountKind, LedgerAccount, LedgerAccountId, Transfer, TransferKind, Usage};
use crate::money::Currency;
use crate::region::{FeeRule, RegionCode, RegionRules, Windows};

/// `$first, $first+1, …` for `count` parameters.
pub(crate) fn placeholders(first: usize, count: usize) -> String {
    (first..first + count).map(|n| format!("${n}")).collect::<Vec<_>>().join(", ")
}

pub(crate) type RegionRow =
    (String, i64, String, String, i64, i64, i64, Option<i64>, i64, i64, Option<i64>, Option<i64>, Option<i64>);

pub(crate) fn region_from_row(row: RegionRow) -> Option<RegionRules> {
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

pub(crate) const REGION_COLUMNS_SQL: &str = "SELECT code, enabled, currency, time_zone, per_transfer_max, daily_max, monthly_max, \
     night_max, night_start_hour, night_end_hour, fee_free_monthly, fee_rate_bp, fee_cap FROM regions ORDER BY code";

pub async fn regions(connection: &mut PgConnection) -> Result<HashMap<RegionCode, RegionRules>, sqlx::Error> {
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

pub(crate) type AccountRow =
    (String, String, String, String, i64, i64, Option<String>, i64, i64, Option<i64>, i64, Option<i64>, i64);

pub(crate) const ACCOUNT_COLUMNS_SQL: &str = "SELECT id, kind, region, currency, balance, frozen, last_transfer, \
     usage_day_start, usage_day, usage_month_start, usage_month, usage_night_start, usage_night FROM ledger_accounts";

pub(crate) fn account_from_row(row: AccountRow) -> Option<LedgerAccount> {
    let (
        id,
        kind,
        region,
        currency,
        balance,
        frozen,
        last_transfer,
        day_start_ms,
        day_minor,
        month_start_ms,
        month_minor,
        night_start_ms,
        night_minor,
    ) = row;
    Some(LedgerAccount {
        id,
        kind: AccountKind::parse(&kind)?,
        region: RegionCode::parse(&region)?,
        currency: Currency::parse(&currency)?,
        balance_minor: balance,
        frozen: frozen == 1,
        last_transfer,
        // A month start not yet counted (only before the writer has counted
        // the wallets of migration 5) reads as an old window.
        usage: Usage {
            day_start_ms,
            day_minor,
            month_start_ms: month_start_ms.unwrap_or(0),
            month_minor,
            night_start_ms,
            night_minor,
        },
    })
}

/// PostgreSQL: the ledger accounts among `ids` that exist, with one
/// statement whatever their number (the ids travel as one array).
pub async fn accounts(
    connection: &mut PgConnection,
    ids: &[LedgerAccountId],
) -> Result<Vec<LedgerAccount>, sqlx::Error> {
    let sql = format!("{ACCOUNT_COLUMNS_SQL} WHERE id = ANY($1::text[])");
    let rows: Vec<AccountRow> = sqlx::query_as(&sql).bind(ids).fetch_all(&mut *connection).await?;
    Ok(rows.into_iter().filter_map(account_from_row).collect())
}

/// Every system account (settlement, fee revenue, adjustments).
pub async fn system_accounts(connection: &mut PgConnection) -> Result<Vec<LedgerAccount>, sqlx::Error> {
    let sql = format!("{ACCOUNT_COLUMNS_SQL} WHERE kind <> 'wallet'");
    let rows: Vec<AccountRow> = sqlx::query_as(&sql).fetch_all(&mut *connection).await?;
    Ok(rows.into_iter().filter_map(account_from_row).collect())
}

pub async fn wallet(db: &Database, account_id: &str) -> Result<Option<LedgerAccount>, sqlx::Error> {
    let sql = format!("{ACCOUNT_COLUMNS_SQL} WHERE id = $1 AND kind = 'wallet'");
    let row: Option<AccountRow> = sqlx::query_as(&sql).bind(account_id).fetch_optional(db.pool()).await?;
    Ok(row.and_then(account_from_row))
}

/// The regions that have wallets whose usage is not counted yet: those
/// from before migration 5, which moved usage onto the account rows.
pub(crate) const USAGE_UNCOUNTED_SQL: &str =
    "SELECT region FROM ledger_accounts WHERE usage_month_start IS NULL GROUP BY region ORDER BY region";

/// Counts the uncounted wallets of region `$4` that have sent P2P since `$5`:
/// their totals in the windows that start at `$1` (day), `$2` (month) and
/// `$3` (night; `NULL` outside one, so that its total is zero). One pass over
/// the transfers of the period, by time.
pub(crate) const USAGE_COUNT_SQL: &str = "\
UPDATE ledger_accounts SET usage_day_start = $1, usage_month_start = $2, usage_night_start = $3, \
  usage_day = counted.day, usage_month = counted.month, usage_night = counted.night \
FROM ( \
  SELECT debit_account AS sender, \
    SUM(CASE WHEN created_at >= $1 THEN amount ELSE 0 END) AS day, \
    SUM(CASE WHEN created_at >= $2 THEN amount ELSE 0 END) AS month, \
    SUM(CASE WHEN created_at >= $3 THEN amount ELSE 0 END) AS night \
  FROM transfers WHERE kind = 'p2p' AND region = $4 AND created_at >= $5 GROUP BY debit_account \
) AS counted \
WHERE ledger_accounts.id = counted.sender AND ledger_accounts.usage_month_start IS NULL";

/// The rest of region `$4`'s uncounted wallets sent nothing in the windows
/// `$1`, `$2`, `$3` (the first four parameters of [`USAGE_COUNT_SQL`]).
pub(crate) const USAGE_ZERO_SQL: &str = "\
UPDATE ledger_accounts SET usage_day_start = $1, usage_month_start = $2, usage_night_start = $3, \
  usage_day = 0, usage_month = 0, usage_night = 0 \
WHERE usage_month_start IS NULL AND region = $4";

/// The earliest start of the three windows: `$5` of [`USAGE_COUNT_SQL`].
pub(crate) fn usage_since(windows: &Windows) -> i64 {
    windows.month_start_ms.min(windows.day_start_ms).min(windows.night_start_ms.unwrap_or(i64::MAX))
}

/// Counts the usage of the wallets that have none counted (see
/// [`USAGE_COUNT_SQL`]), in one transaction; the writer does this when it
/// takes over, before its first batch.
pub async fn count_usage(
    connection: &mut PgConnection,
    regions: &HashMap<RegionCode, RegionRules>,
    now_ms: i64,
) -> Result<u64, sqlx::Error> {
    let uncounted: Vec<(String,)> = sqlx::query_as(USAGE_UNCOUNTED_SQL).fetch_all(&mut *connection).await?;
    if uncounted.is_empty() {
        return Ok(0);
    }
    let mut counted = 0;
    let mut transaction = sqlx::Connection::begin(&mut *connection).await?;
    for (region,) in uncounted {
        let Some(rules) = RegionCode::parse(&region).and_then(|code| regions.get(&code)) else {
            continue;
        };
        let w = rules.windows(now_ms);
        counted += sqlx::query(USAGE_COUNT_SQL)
            .bind(w.day_start_ms)
            .bind(w.month_start_ms)
            .bind(w.night_start_ms)
            .bind(&region)
            .bind(usage_since(&w))
            .execute(&mut *transaction)
            .await?
            .rows_affected();
        counted += sqlx::query(USAGE_ZERO_SQL)
            .bind(w.day_start_ms)
            .bind(w.month_start_ms)
            .bind(w.night_start_ms)
            .bind(&region)
            .execute(&mut *transaction)
            .await?
            .rows_affected();
    }
    transaction.commit().await?;
    Ok(counted)
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

pub(crate) const IDEMPOTENT_RESPONSE_SQL: &str =
    "SELECT fingerprint, status, body FROM idempotency_keys WHERE scope = $1 AND key = $2";

/// The fingerprint and response stored for a key, if any.
pub async fn idempotent_response(
    db: &Database,
    key: &IdempotencyKey,
) -> Result<Option<(String, StoredResponse)>, sqlx::Error> {
    let row: Option<(String, i64, String)> =
        sqlx::query_as(IDEMPOTENT_RESPONSE_SQL).bind(&key.scope).bind(&key.key).fetch_optional(db.pool()).await?;
    Ok(row.map(|(fingerprint, status, body)| (fingerprint, StoredResponse { status: status as u16, body })))
}

/// PostgreSQL: the stored keys among `keys`, found with one statement whose
/// text does not depend on how many keys there are (scopes and keys travel as
/// two arrays). The SQLite writer looks keys up one by one
/// ([`crate::writer_store::SqliteWriter`]).
pub async fn idempotent_responses(
    connection: &mut PgConnection,
    keys: &[&IdempotencyKey],
) -> Result<HashMap<IdempotencyKey, (String, StoredResponse)>, sqlx::Error> {
    let scopes: Vec<&str> = keys.iter().map(|k| k.scope.as_str()).collect();
    let names: Vec<&str> = keys.iter().map(|k| k.key.as_str()).collect();
    let rows: Vec<(String, String, String, i64, String)> = sqlx::query_as(
        "SELECT k.scope, k.key, k.fingerprint, k.status, k.body \
         FROM UNNEST($1::text[], $2::text[]) AS w (scope, key) \
         JOIN idempotency_keys AS k ON k.key = w.key AND k.scope = w.scope",
    )
    .bind(scopes)
    .bind(names)
    .fetch_all(&mut *connection)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(scope, key, fingerprint, status, body)| {
            (IdempotencyKey { scope, key }, (fingerprint, StoredResponse { status: status as u16, body }))
        })
        .collect())
}

/// What one batch writes, in one transaction.
#[derive(Debug, Default)]
pub struct BatchWrite {
    pub transfers: Vec<Transfer>,
    /// The new state of every account the batch changed.
    pub accounts: Vec<LedgerAccount>,
    pub idempotency: Vec<(IdempotencyKey, String, StoredResponse)>,
}

impl BatchWrite {
    pub fn is_empty(&self) -> bool {
        self.transfers.is_empty() && self.accounts.is_empty() && self.idempotency.is_empty()
    }
}

/// The SQLSTATE of a batch statement that found one of its idempotency keys
/// stored before.
pub const KEYS_TAKEN_SQLSTATE: &str = "CLKEY";

/// PostgreSQL: the whole batch is one statement, run on its own (its implicit
/// transaction is the batch's: one round trip, no BEGIN or COMMIT, durable
/// when it returns). Each table's rows travel column by column, one array a
/// column (`$1`–`$15` transfers, `$16`–`$25` accounts, `$26`–`$30` keys, `$31`
/// the keys' time), in PostgreSQL's binary format: the text never changes, it
/// is prepared once per connection, and nothing is parsed on the server. It
/// checks the rows it wrote per table against `$32`, `$33` and `$34` and
/// fails, rolling everything back, when they differ (migration 8's
/// `ledger_batch_refused`). Keys are inserted without being looked up first:
/// a key stored before makes the insert skip its row, and the statement
/// fails with [`KEYS_TAKEN_SQLSTATE`]; the writer then looks the batch's keys
/// up and applies it again ([`crate::writer`]). The writer's connection plans
/// it with index lookups (see the writer's settings).
static COMMIT_POSTGRES_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "\
WITH moved AS ( \
  INSERT INTO transfers ({TRANSFER_COLUMNS}) \
  SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::int8[], $7::text[], \
    $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::int8[], $14::text[], $15::text[]) \
  RETURNING 1 \
), changed AS ( \
  UPDATE ledger_accounts AS a SET balance = c.balance, frozen = c.frozen, last_transfer = c.last_transfer, \
    usage_day_start = c.usage_day_start, usage_day = c.usage_day, usage_month_start = c.usage_month_start, \
    usage_month = c.usage_month, usage_night_start = c.usage_night_start, usage_night = c.usage_night \
  FROM UNNEST($16::text[], $17::int8[], $18::int8[], $19::text[], $20::int8[], $21::int8[], $22::int8[], \
    $23::int8[], $24::int8[], $25::int8[]) \
    AS c (id, balance, frozen, last_transfer, usage_day_start, usage_day, usage_month_start, usage_month, \
      usage_night_start, usage_night) \
  WHERE a.id = c.id \
  RETURNING 1 \
), keyed AS ( \
  INSERT INTO idempotency_keys (scope, key, fingerprint, status, body, created_at) \
  SELECT scope, key, fingerprint, status, body, $31 \
  FROM UNNEST($26::text[], $27::text[], $28::text[], $29::int8[], $30::text[]) AS k (scope, key, fingerprint, status, body) \
  ON CONFLICT (key, scope) DO NOTHING \
  RETURNING 1 \
), counted AS ( \
  SELECT (SELECT COUNT(*) FROM moved) AS moved, (SELECT COUNT(*) FROM changed) AS changed, \
    (SELECT COUNT(*) FROM keyed) AS keyed \
) SELECT CASE WHEN moved = $32 AND changed = $33 AND keyed = $34 THEN moved \
  WHEN moved = $32 AND changed = $33 AND keyed < $34 \
    THEN ledger_batch_refused('{KEYS_TAKEN_SQLSTATE}', 'an idempotency key of the batch is taken') \
  ELSE ledger_batch_refused('CLROW', \
    'the batch wrote ' || moved || ' transfers, ' || changed || ' accounts, ' || keyed || ' keys') \
  END FROM counted"
    )
});

/// PostgreSQL: writes a batch as one statement and commits it durably. The
/// SQLite writer binds the same rows one by one
/// ([`crate::writer_store::SqliteWriter::commit`]).
pub async fn commit(connection: &mut PgConnection, batch: &BatchWrite, now_ms: i64) -> Result<(), sqlx::Error> {
    fn column<'a, T, U>(rows: &'a [T], value: impl Fn(&'a T) -> U) -> Vec<U> {
        rows.iter().map(value).collect()
    }
    let (t, a, k) = (&batch.transfers, &batch.accounts, &batch.idempotency);
    let query = sqlx::query(COMMIT_POSTGRES_SQL.as_str())
        .bind(column(t, |t| t.id.as_str()))
        .bind(column(t, |t| t.kind.as_str()))
        .bind(column(t, |t| t.debit.as_str()))
        .bind(column(t, |t| t.credit.as_str()))
        .bind(column(t, |t| t.amount_minor))
        .bind(column(t, |t| t.fee_minor))
        .bind(column(t, |t| t.currency.code()))
        .bind(column(t, |t| t.region.as_str()))
        .bind(column(t, |t| t.linked_id.as_deref()))
        .bind(column(t, |t| t.initiator.as_str()))
        .bind(column(t, |t| t.note.as_deref()))
        .bind(column(t, |t| t.external_ref.as_deref()))
        .bind(column(t, |t| t.created_at_ms))
        .bind(column(t, |t| t.debit_prev.as_deref()))
        .bind(column(t, |t| t.credit_prev.as_deref()))
        .bind(column(a, |a| a.id.as_str()))
        .bind(column(a, |a| a.balance_minor))
        .bind(column(a, |a| i64::from(a.frozen)))
        .bind(column(a, |a| a.last_transfer.as_deref()))
        .bind(column(a, |a| a.usage.day_start_ms))
        .bind(column(a, |a| a.usage.day_minor))
        .bind(column(a, |a| a.usage.month_start_ms))
        .bind(column(a, |a| a.usage.month_minor))
        .bind(column(a, |a| a.usage.night_start_ms))
        .bind(column(a, |a| a.usage.night_minor))
        .bind(column(k, |(key, _, _)| key.scope.as_str()))
        .bind(column(k, |(key, _, _)| key.key.as_str()))
        .bind(column(k, |(_, fingerprint, _)| fingerprint.as_str()))
        .bind(column(k, |(_, _, response)| i64::from(response.status)))
        .bind(column(k, |(_, _, response)| response.body.as_str()))
        .bind(now_ms)
        .bind(t.len() as i64)
        .bind(a.len() as i64)
        .bind(k.len() as i64);
    query.execute(&mut *connection).await?;
    Ok(())
}

pub(crate) const EXPIRE_KEYS_SQL: &str = "DELETE FROM idempotency_keys WHERE created_at < $1";

/// Forgets idempotency keys older than `before_ms`.
pub async fn expire_idempotency_keys(connection: &mut PgConnection, before_ms: i64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(EXPIRE_KEYS_SQL).bind(before_ms).execute(&mut *connection).await?;
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
    Option<String>,
    Option<String>,
);

pub(crate) const TRANSFER_COLUMNS: &str = "id, kind, debit_account, credit_account, amount, fee, currency, region, linked_id, \
     initiator, note, external_ref, created_at, debit_prev, credit_prev";

fn transfer_from_row(row: TransferRow) -> Option<Transfer> {
    let (
        id,
        kind,
        debit,
        credit,
        amount,
        fee,
        currency,
        region,
        linked_id,
        initiator,
        note,
        external_ref,
        created_at,
        debit_prev,
        credit_prev,
    ) = row;
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
        debit_prev,
        credit_prev,
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

/// An account's transfers, newest first, after the cursor `after_id` (one of
/// its transfers; `None`: from its newest). Fee transfers are shown on their
/// P2P transfer. The account's chain is followed from its head (or from the
/// cursor) back, one primary-key look-up a step; every fee follows its P2P
/// transfer, so `2 × limit` steps always find `limit` transfers to show.
pub async fn transfers_of(
    db: &Database,
    account_id: &str,
    after_id: Option<&str>,
    limit: u32,
) -> Result<Vec<Transfer>, sqlx::Error> {
    let sql = format!(
        "WITH RECURSIVE wanted (account, after_id, steps) AS ( \
           SELECT CAST($1 AS TEXT), CAST($2 AS TEXT), CAST($3 AS BIGINT) \
         ), chain (link, depth) AS ( \
           SELECT CASE WHEN w.after_id = '' \
               THEN (SELECT a.last_transfer FROM ledger_accounts a WHERE a.id = w.account) \
               ELSE (SELECT CASE WHEN c.debit_account = w.account THEN c.debit_prev ELSE c.credit_prev END \
                     FROM transfers c \
                     WHERE c.id = w.after_id AND (c.debit_account = w.account OR c.credit_account = w.account)) \
             END, CAST(0 AS BIGINT) \
           FROM wanted w \
           UNION ALL \
           SELECT CASE WHEN t.debit_account = w.account THEN t.debit_prev ELSE t.credit_prev END, chain.depth + 1 \
           FROM chain JOIN transfers t ON t.id = chain.link CROSS JOIN wanted w \
           WHERE chain.depth + 1 < w.steps \
         ) \
         SELECT {TRANSFER_COLUMNS} FROM chain JOIN transfers ON transfers.id = chain.link \
         WHERE kind <> 'fee' ORDER BY chain.depth LIMIT $4"
    );
    let rows: Vec<TransferRow> = sqlx::query_as(&sql)
        .bind(account_id)
        .bind(after_id.unwrap_or(""))
        .bind(2 * i64::from(limit))
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
/// `(id, stored, computed)`, in one pass over the transfers. An account that
/// transfers name but `ledger_accounts` lacks is always listed, with a
/// stored balance of 0 (transfers carry no foreign keys: the writer checks
/// their accounts, and this is where a break would show).
pub async fn balance_mismatches(db: &Database) -> Result<Vec<(String, i64, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT COALESCE(a.id, moved.account) AS account, CAST(COALESCE(a.balance, 0) AS BIGINT), \
           CAST(COALESCE(moved.net, 0) AS BIGINT) \
         FROM ledger_accounts a FULL OUTER JOIN ( \
           SELECT account, SUM(delta) AS net FROM ( \
             SELECT credit_account AS account, amount AS delta FROM transfers \
             UNION ALL SELECT debit_account, -amount FROM transfers \
           ) AS postings GROUP BY account \
         ) AS moved ON moved.account = a.id \
         WHERE a.id IS NULL OR a.balance <> COALESCE(moved.net, 0) ORDER BY account",
    )
    .fetch_all(db.pool())
    .await
}
