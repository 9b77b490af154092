//! The ledger writer's statements on PostgreSQL, through sqlx's PostgreSQL
//! driver (which binds arrays): a batch is one statement whose text never
//! changes, and every look-up the writer makes takes one statement whatever
//! the number of its ids. Only the writer's connection runs them.

use std::collections::HashMap;
use std::sync::LazyLock;

use courier_common::audit;
use sqlx::PgConnection;

use crate::ledger::{Adjustment, Hold, LedgerAccount, LedgerAccountId, Reversible};
use crate::region::{RegionCode, RegionRules};
use crate::store::{
    ACCOUNT_COLUMNS_SQL, ADJUSTMENT_COLUMNS, AccountRow, AdjustmentRow, BatchWrite, EXPIRE_KEYS_SQL,
    EXPIRED_ADJUSTMENTS_SQL, EXPIRED_HOLDS_SQL, HOLD_COLUMNS, HoldRow, IdempotencyKey, ORIGINAL_SQL, OriginalRow,
    REGION_COLUMNS_SQL, RegionRow, StoredResponse, TRANSFER_COLUMNS, USAGE_COUNT_SQL, USAGE_UNCOUNTED_SQL,
    USAGE_ZERO_SQL, account_from_row, adjustment_from_row, hold_from_row, original_from_row, region_from_row,
    region_values, usage_since,
};

/// Every region's rules.
pub async fn regions(connection: &mut PgConnection) -> Result<HashMap<RegionCode, RegionRules>, sqlx::Error> {
    let rows: Vec<RegionRow> = sqlx::query_as(REGION_COLUMNS_SQL).fetch_all(&mut *connection).await?;
    Ok(rows.into_iter().filter_map(region_from_row).map(|rules| (rules.code, rules)).collect())
}

/// The ledger accounts among `ids` that exist, with one
/// statement whatever their number (the ids travel as one array).
pub async fn accounts(
    connection: &mut PgConnection,
    ids: &[LedgerAccountId],
) -> Result<Vec<LedgerAccount>, sqlx::Error> {
    let sql = format!("{ACCOUNT_COLUMNS_SQL} WHERE id = ANY($1::text[])");
    let rows: Vec<AccountRow> = sqlx::query_as(&sql).bind(ids).fetch_all(&mut *connection).await?;
    Ok(rows.into_iter().filter_map(account_from_row).collect())
}

/// The transfers among `ids` that exist, with what has been reversed of them
/// (reversals are few: a statement per transfer).
pub async fn originals(
    connection: &mut PgConnection,
    ids: &[String],
) -> Result<Vec<(String, Reversible)>, sqlx::Error> {
    let mut found = Vec::new();
    for id in ids {
        let row: Option<OriginalRow> = sqlx::query_as(ORIGINAL_SQL).bind(id).fetch_optional(&mut *connection).await?;
        found.extend(row.and_then(original_from_row));
    }
    Ok(found)
}

/// The adjustments among `ids` that exist.
pub async fn adjustments(connection: &mut PgConnection, ids: &[String]) -> Result<Vec<Adjustment>, sqlx::Error> {
    let sql = format!("SELECT {ADJUSTMENT_COLUMNS} FROM adjustments WHERE id = ANY($1::text[])");
    let rows: Vec<AdjustmentRow> = sqlx::query_as(&sql).bind(ids).fetch_all(&mut *connection).await?;
    Ok(rows.into_iter().filter_map(adjustment_from_row).collect())
}

/// The holds among `ids` that exist.
pub async fn holds(connection: &mut PgConnection, ids: &[String]) -> Result<Vec<Hold>, sqlx::Error> {
    let sql = format!("SELECT {HOLD_COLUMNS} FROM holds WHERE id = ANY($1::text[])");
    let rows: Vec<HoldRow> = sqlx::query_as(&sql).bind(ids).fetch_all(&mut *connection).await?;
    Ok(rows.into_iter().filter_map(hold_from_row).collect())
}

/// Active holds past their time: `(hold, wallet)`.
pub async fn expired_holds(connection: &mut PgConnection, now_ms: i64) -> Result<Vec<(String, String)>, sqlx::Error> {
    sqlx::query_as(EXPIRED_HOLDS_SQL).bind(now_ms).fetch_all(&mut *connection).await
}

/// Pending adjustments past their time: `(adjustment, wallet)`.
pub async fn expired_adjustments(
    connection: &mut PgConnection,
    now_ms: i64,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    sqlx::query_as(EXPIRED_ADJUSTMENTS_SQL).bind(now_ms).fetch_all(&mut *connection).await
}

/// Every system account (settlement, fee revenue, adjustments).
pub async fn system_accounts(connection: &mut PgConnection) -> Result<Vec<LedgerAccount>, sqlx::Error> {
    let sql = format!("{ACCOUNT_COLUMNS_SQL} WHERE kind <> 'wallet'");
    let rows: Vec<AccountRow> = sqlx::query_as(&sql).fetch_all(&mut *connection).await?;
    Ok(rows.into_iter().filter_map(account_from_row).collect())
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

/// The stored keys among `keys`, found with one statement whose text does
/// not depend on how many keys there are (scopes and keys travel as two
/// arrays).
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

/// The SQLSTATE of a batch statement that found one of its idempotency keys
/// stored before.
pub const KEYS_TAKEN_SQLSTATE: &str = "CLKEY";

/// The whole batch is one statement, run on its own (its implicit
/// transaction is the batch's: one round trip, no BEGIN or COMMIT, durable
/// when it returns). Each table's rows travel column by column, one array a
/// column (`$1`–`$17` transfers, `$18`–`$31` accounts, `$32`–`$36` keys, `$37`
/// the keys' time), in PostgreSQL's binary format: the text never changes, it
/// is prepared once per connection, and nothing is parsed on the server. It
/// checks the rows it wrote per table against `$38`, `$39` and `$40` (`$41`–`$44`
/// are the balance checkpoints, a few per thousand transfers) and
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
    $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::int8[], $14::text[], $15::text[], $16::int8[], $17::int8[]) \
  RETURNING 1 \
), changed AS ( \
  UPDATE ledger_accounts AS a SET balance = c.balance, frozen = c.frozen, last_transfer = c.last_transfer, \
    usage_day_start = c.usage_day_start, usage_day = c.usage_day, usage_month_start = c.usage_month_start, \
    usage_month = c.usage_month, usage_night_start = c.usage_night_start, usage_night = c.usage_night, \
    frozen_reason = c.frozen_reason, frozen_by = c.frozen_by, frozen_at = c.frozen_at, held = c.held \
  FROM UNNEST($18::text[], $19::int8[], $20::int8[], $21::text[], $22::int8[], $23::int8[], $24::int8[], \
    $25::int8[], $26::int8[], $27::int8[], $28::text[], $29::text[], $30::int8[], $31::int8[]) \
    AS c (id, balance, frozen, last_transfer, usage_day_start, usage_day, usage_month_start, usage_month, \
      usage_night_start, usage_night, frozen_reason, frozen_by, frozen_at, held) \
  WHERE a.id = c.id \
  RETURNING 1 \
), keyed AS ( \
  INSERT INTO idempotency_keys (scope, key, fingerprint, status, body, created_at) \
  SELECT scope, key, fingerprint, status, body, $37 \
  FROM UNNEST($32::text[], $33::text[], $34::text[], $35::int8[], $36::text[]) AS k (scope, key, fingerprint, status, body) \
  ON CONFLICT (key, scope) DO NOTHING \
  RETURNING 1 \
), marked AS ( \
  INSERT INTO balance_checkpoints (account, at, transfer_id, balance) \
  SELECT * FROM UNNEST($41::text[], $42::int8[], $43::text[], $44::int8[]) \
), counted AS ( \
  SELECT (SELECT COUNT(*) FROM moved) AS moved, (SELECT COUNT(*) FROM changed) AS changed, \
    (SELECT COUNT(*) FROM keyed) AS keyed \
) SELECT CASE WHEN moved = $38 AND changed = $39 AND keyed = $40 THEN moved \
  WHEN moved = $38 AND changed = $39 AND keyed < $40 \
    THEN ledger_batch_refused('{KEYS_TAKEN_SQLSTATE}', 'an idempotency key of the batch is taken') \
  ELSE ledger_batch_refused('CLROW', \
    'the batch wrote ' || moved || ' transfers, ' || changed || ' accounts, ' || keyed || ' keys') \
  END FROM counted"
    )
});

const UPDATE_REGION_SQL: &str = "\
UPDATE regions SET enabled = $2, per_transfer_max = $3, daily_max = $4, monthly_max = $5, night_max = $6, \
  night_start_hour = $7, night_end_hour = $8, fee_free_monthly = $9, fee_rate_bp = $10, fee_cap = $11, \
  updated_at = $12 WHERE code = $1";

const INSERT_AUDIT_SQL: &str = "INSERT INTO audit_log (seq, at, operator, action, target, request_id, before_json, \
  after_json, hash) SELECT * FROM UNNEST($1::int8[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[], \
  $7::text[], $8::text[], $9::text[])";

static UPSERT_ADJUSTMENT_SQL: LazyLock<String> = LazyLock::new(|| crate::store::upsert_adjustment_sql('$'));
static UPSERT_HOLD_SQL: LazyLock<String> = LazyLock::new(|| crate::store::upsert_hold_sql('$'));

/// Writes a batch and commits it durably: as one statement, or, when it
/// also changes regions or adjustments (rare), with those in one
/// transaction.
pub async fn commit(connection: &mut PgConnection, batch: &BatchWrite, now_ms: i64) -> Result<(), sqlx::Error> {
    if !batch.has_rare_writes() {
        return commit_statement(connection, batch, now_ms).await;
    }
    let mut transaction = sqlx::Connection::begin(&mut *connection).await?;
    for rules in &batch.regions {
        let (enabled, per_transfer, daily, monthly, night, start, end, [free, rate, cap]) = region_values(rules);
        let changed = sqlx::query(UPDATE_REGION_SQL)
            .bind(rules.code.as_str())
            .bind(enabled)
            .bind(per_transfer)
            .bind(daily)
            .bind(monthly)
            .bind(night)
            .bind(start)
            .bind(end)
            .bind(free)
            .bind(rate)
            .bind(cap)
            .bind(now_ms)
            .execute(&mut *transaction)
            .await?
            .rows_affected();
        if changed != 1 {
            return Err(sqlx::Error::Protocol(format!(
                "{changed} rows for region {} where 1 was due",
                rules.code.as_str()
            )));
        }
    }
    if !batch.adjustments.is_empty() {
        for a in &batch.adjustments {
            sqlx::query(UPSERT_ADJUSTMENT_SQL.as_str())
                .bind(&a.id)
                .bind(&a.account_id)
                .bind(a.amount_minor)
                .bind(a.currency.code())
                .bind(a.region.as_str())
                .bind(&a.reason)
                .bind(a.status.as_str())
                .bind(&a.proposed_by)
                .bind(a.proposed_at_ms)
                .bind(a.expires_at_ms)
                .bind(&a.decided_by)
                .bind(a.decided_at_ms)
                .bind(&a.transfer_id)
                .execute(&mut *transaction)
                .await?;
        }
    }
    if !batch.holds.is_empty() {
        for h in &batch.holds {
            sqlx::query(UPSERT_HOLD_SQL.as_str())
                .bind(&h.id)
                .bind(&h.account_id)
                .bind(h.amount_minor)
                .bind(h.currency.code())
                .bind(h.region.as_str())
                .bind(&h.reason)
                .bind(&h.transfer_id)
                .bind(h.status.as_str())
                .bind(&h.placed_by)
                .bind(h.placed_at_ms)
                .bind(h.expires_at_ms)
                .bind(&h.decided_by)
                .bind(h.decided_at_ms)
                .bind(&h.return_transfer_id)
                .execute(&mut *transaction)
                .await?;
        }
    }
    if !batch.audit.is_empty() {
        let (seq, hash): (i64, String) =
            sqlx::query_as(audit::HEAD_FOR_UPDATE_SQL).fetch_one(&mut *transaction).await?;
        let (entries, (seq, hash)) = audit::chain_all(&batch.audit, seq, &hash);
        // All of the batch's entries in one statement, a column an array.
        let texts = |field: fn(&audit::Entry) -> Option<&str>| entries.iter().map(field).collect::<Vec<_>>();
        sqlx::query(INSERT_AUDIT_SQL)
            .bind(entries.iter().map(|e| e.seq).collect::<Vec<_>>())
            .bind(entries.iter().map(|e| e.at_ms).collect::<Vec<_>>())
            .bind(texts(|e| Some(&e.operator)))
            .bind(texts(|e| Some(&e.action)))
            .bind(texts(|e| Some(&e.target)))
            .bind(texts(|e| e.request_id.as_deref()))
            .bind(texts(|e| e.before.as_deref()))
            .bind(texts(|e| e.after.as_deref()))
            .bind(texts(|e| Some(&e.hash)))
            .execute(&mut *transaction)
            .await?;
        sqlx::query(audit::SET_HEAD_SQL).bind(seq).bind(&hash).execute(&mut *transaction).await?;
    }
    commit_statement(&mut transaction, batch, now_ms).await?;
    transaction.commit().await
}

/// The batch statement.
async fn commit_statement(connection: &mut PgConnection, batch: &BatchWrite, now_ms: i64) -> Result<(), sqlx::Error> {
    fn column<'a, T, U>(rows: &'a [T], value: impl Fn(&'a T) -> U) -> Vec<U> {
        rows.iter().map(value).collect()
    }
    let (t, a, k, c) = (&batch.transfers, &batch.accounts, &batch.idempotency, &batch.checkpoints);
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
        .bind(column(t, |t| t.debit_balance_minor))
        .bind(column(t, |t| t.credit_balance_minor))
        .bind(column(a, |a| a.id.as_str()))
        .bind(column(a, |a| a.balance_minor))
        .bind(column(a, |a| i64::from(a.frozen.is_some())))
        .bind(column(a, |a| a.last_transfer.as_deref()))
        .bind(column(a, |a| a.usage.day_start_ms))
        .bind(column(a, |a| a.usage.day_minor))
        .bind(column(a, |a| a.usage.month_start_ms))
        .bind(column(a, |a| a.usage.month_minor))
        .bind(column(a, |a| a.usage.night_start_ms))
        .bind(column(a, |a| a.usage.night_minor))
        .bind(column(a, |a| a.frozen.as_ref().map(|f| f.reason.as_str())))
        .bind(column(a, |a| a.frozen.as_ref().map(|f| f.by.as_str())))
        .bind(column(a, |a| a.frozen.as_ref().map(|f| f.at_ms)))
        .bind(column(a, |a| a.held_minor))
        .bind(column(k, |(key, _, _)| key.scope.as_str()))
        .bind(column(k, |(key, _, _)| key.key.as_str()))
        .bind(column(k, |(_, fingerprint, _)| fingerprint.as_str()))
        .bind(column(k, |(_, _, response)| i64::from(response.status)))
        .bind(column(k, |(_, _, response)| response.body.as_str()))
        .bind(now_ms)
        .bind(t.len() as i64)
        .bind(a.len() as i64)
        .bind(k.len() as i64)
        .bind(column(c, |c| c.account.as_str()))
        .bind(column(c, |c| c.at_ms))
        .bind(column(c, |c| c.transfer_id.as_str()))
        .bind(column(c, |c| c.balance_minor));
    query.execute(&mut *connection).await?;
    Ok(())
}

/// Forgets idempotency keys older than `before_ms`.
pub async fn expire_idempotency_keys(connection: &mut PgConnection, before_ms: i64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(EXPIRE_KEYS_SQL).bind(before_ms).execute(&mut *connection).await?;
    Ok(done.rows_affected())
}
