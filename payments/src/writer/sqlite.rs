//! The ledger writer's statements on SQLite, called directly on the
//! writer's own thread: every statement is prepared once and cached, rows
//! are bound one at a time, and a batch is one `BEGIN IMMEDIATE`
//! transaction with one durable commit. Single-row statements need neither
//! JSON decoding nor a statement journal.

use std::collections::HashMap;
use std::path::Path;

use courier_common::audit;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::store::StoreError;
use crate::ledger::{Adjustment, Hold, LedgerAccount, LedgerAccountId, Reversible};
use crate::region::{RegionCode, RegionRules};
use crate::store::{
    self, ACCOUNT_COLUMNS_SQL, ADJUSTMENT_COLUMNS, AccountRow, AdjustmentRow, BatchWrite, EXPIRE_KEYS_SQL,
    EXPIRED_ADJUSTMENTS_SQL, EXPIRED_HOLDS_SQL, HOLD_COLUMNS, HoldRow, IDEMPOTENT_RESPONSE_SQL, IdempotencyKey,
    ORIGINAL_SQL, OriginalRow, REGION_COLUMNS_SQL, RegionRow, StoredResponse, TRANSFER_COLUMNS, USAGE_COUNT_SQL,
    USAGE_UNCOUNTED_SQL, USAGE_ZERO_SQL,
};

// SQLite reads `$1` as a named parameter, numbered by first appearance: the
// texts shared with the pool's queries ([`crate::store`]) and those built
// with its placeholders name theirs in order, so they bind by position here
// too. The writer's own texts number theirs (`?N`).
const UPDATE_ACCOUNT_SQL: &str = "\
UPDATE ledger_accounts SET balance = ?2, frozen = ?3, last_transfer = ?4, usage_day_start = ?5, usage_day = ?6, \
  usage_month_start = ?7, usage_month = ?8, usage_night_start = ?9, usage_night = ?10, frozen_reason = ?11, \
  frozen_by = ?12, frozen_at = ?13, held = ?14 WHERE id = ?1";

const INSERT_KEY_SQL: &str = "\
INSERT INTO idempotency_keys (scope, key, fingerprint, status, body, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

const UPDATE_REGION_SQL: &str = "\
UPDATE regions SET enabled = ?2, per_transfer_max = ?3, daily_max = ?4, monthly_max = ?5, night_max = ?6, \
  night_start_hour = ?7, night_end_hour = ?8, fee_free_monthly = ?9, fee_rate_bp = ?10, fee_cap = ?11, \
  updated_at = ?12 WHERE code = ?1";

const INSERT_CHECKPOINT_SQL: &str =
    "INSERT INTO balance_checkpoints (account, at, transfer_id, balance) VALUES (?1, ?2, ?3, ?4)";

const AUDIT_INSERT_SQL: &str = "INSERT INTO audit_log (seq, at, operator, action, target, request_id, \
  before_json, after_json, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";
const AUDIT_SET_HEAD_SQL: &str = "UPDATE audit_head SET seq = ?1, hash = ?2 WHERE id = 1";

/// Statements the writer keeps prepared (SQLite's default cache holds 16).
const STATEMENTS_CACHED: usize = 32;

/// The texts of the writer's statements that are built from the shared
/// column lists, built once per connection.
struct Statements {
    account_by_id: String,
    system_accounts: String,
    insert_transfer: String,
    upsert_adjustment: String,
    upsert_hold: String,
}

impl Statements {
    fn new() -> Self {
        let values = store::placeholders(1, TRANSFER_COLUMNS.split(',').count());
        Statements {
            account_by_id: format!("{ACCOUNT_COLUMNS_SQL} WHERE id = $1"),
            system_accounts: format!("{ACCOUNT_COLUMNS_SQL} WHERE kind <> 'wallet'"),
            insert_transfer: format!("INSERT INTO transfers ({TRANSFER_COLUMNS}) VALUES ({values})"),
            upsert_adjustment: store::upsert_adjustment_sql('?'),
            upsert_hold: store::upsert_hold_sql('?'),
        }
    }
}

pub struct SqliteWriter {
    connection: Connection,
    statements: Box<Statements>,
}

impl SqliteWriter {
    /// Opens `path` with the settings of every other connection to it
    /// ([`courier_common::db::sqlite_settings`]): WAL, `synchronous = FULL`,
    /// foreign keys, the busy timeout and the checkpoint threshold.
    pub fn open(path: &Path) -> rusqlite::Result<Self> {
        let connection = Connection::open(path)?;
        connection.execute_batch(&courier_common::db::sqlite_settings())?;
        connection.set_prepared_statement_cache_capacity(STATEMENTS_CACHED);
        Ok(SqliteWriter { connection, statements: Box::new(Statements::new()) })
    }

    /// The connection, for tests that check its settings.
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    pub fn regions(&self) -> rusqlite::Result<HashMap<RegionCode, RegionRules>> {
        let mut statement = self.connection.prepare_cached(REGION_COLUMNS_SQL)?;
        let mut regions = HashMap::new();
        for row in statement.query_map([], |row| RegionRow::try_from(row))? {
            if let Some(rules) = store::region_from_row(row?) {
                regions.insert(rules.code, rules);
            }
        }
        Ok(regions)
    }

    pub fn system_accounts(&self) -> rusqlite::Result<Vec<LedgerAccount>> {
        let mut statement = self.connection.prepare_cached(&self.statements.system_accounts)?;
        let mut found = Vec::new();
        for row in statement.query_map([], |row| AccountRow::try_from(row))? {
            found.extend(store::account_from_row(row?));
        }
        Ok(found)
    }

    /// The ledger accounts among `ids` that exist.
    pub fn accounts(&self, ids: &[LedgerAccountId]) -> rusqlite::Result<Vec<LedgerAccount>> {
        let mut statement = self.connection.prepare_cached(&self.statements.account_by_id)?;
        let mut found = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(row) = statement.query_row([id], |row| AccountRow::try_from(row)).optional()? {
                found.extend(store::account_from_row(row));
            }
        }
        Ok(found)
    }

    /// The transfers among `ids` that exist, with what has been reversed of
    /// them.
    pub fn originals(&self, ids: &[String]) -> rusqlite::Result<Vec<(String, Reversible)>> {
        let mut statement = self.connection.prepare_cached(ORIGINAL_SQL)?;
        let mut found = Vec::new();
        for id in ids {
            if let Some(row) = statement.query_row([id], |row| OriginalRow::try_from(row)).optional()? {
                found.extend(store::original_from_row(row));
            }
        }
        Ok(found)
    }

    /// The adjustments among `ids` that exist.
    pub fn adjustments(&self, ids: &[String]) -> rusqlite::Result<Vec<Adjustment>> {
        let sql = format!("SELECT {ADJUSTMENT_COLUMNS} FROM adjustments WHERE id = ?1");
        let mut statement = self.connection.prepare_cached(&sql)?;
        let mut found = Vec::new();
        for id in ids {
            if let Some(row) = statement.query_row([id], |row| AdjustmentRow::try_from(row)).optional()? {
                found.extend(store::adjustment_from_row(row));
            }
        }
        Ok(found)
    }

    /// The holds among `ids` that exist.
    pub fn holds(&self, ids: &[String]) -> rusqlite::Result<Vec<Hold>> {
        let sql = format!("SELECT {HOLD_COLUMNS} FROM holds WHERE id = ?1");
        let mut statement = self.connection.prepare_cached(&sql)?;
        let mut found = Vec::new();
        for id in ids {
            if let Some(row) = statement.query_row([id], |row| HoldRow::try_from(row)).optional()? {
                found.extend(store::hold_from_row(row));
            }
        }
        Ok(found)
    }

    /// Active holds past their time: `(hold, wallet)`.
    pub fn expired_holds(&self, now_ms: i64) -> rusqlite::Result<Vec<(String, String)>> {
        let mut statement = self.connection.prepare_cached(EXPIRED_HOLDS_SQL)?;
        statement.query_map([now_ms], |row| <(String, String)>::try_from(row))?.collect()
    }

    /// Pending adjustments past their time: `(adjustment, wallet)`.
    pub fn expired_adjustments(&self, now_ms: i64) -> rusqlite::Result<Vec<(String, String)>> {
        let mut statement = self.connection.prepare_cached(EXPIRED_ADJUSTMENTS_SQL)?;
        statement.query_map([now_ms], |row| <(String, String)>::try_from(row))?.collect()
    }

    /// Counts the usage of the wallets that have none counted
    /// ([`store::count_usage`]).
    pub fn count_usage(&mut self, regions: &HashMap<RegionCode, RegionRules>, now_ms: i64) -> rusqlite::Result<u64> {
        let uncounted: Vec<String> = {
            let mut statement = self.connection.prepare(USAGE_UNCOUNTED_SQL)?;
            statement.query_map([], |row| row.get(0))?.collect::<Result<_, _>>()?
        };
        if uncounted.is_empty() {
            return Ok(0);
        }
        let transaction = self.connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut counted = 0;
        for region in uncounted {
            let Some(rules) = RegionCode::parse(&region).and_then(|code| regions.get(&code)) else {
                continue;
            };
            let w = rules.windows(now_ms);
            let (day, month, night) = (w.day_start_ms, w.month_start_ms, w.night_start_ms);
            counted +=
                transaction.execute(USAGE_COUNT_SQL, params![day, month, night, region, store::usage_since(&w)])?;
            counted += transaction.execute(USAGE_ZERO_SQL, params![day, month, night, region])?;
        }
        transaction.commit()?;
        Ok(counted as u64)
    }

    /// The stored keys among `keys`, with their fingerprints and responses.
    pub fn idempotent_responses(
        &self,
        keys: &[&IdempotencyKey],
    ) -> rusqlite::Result<HashMap<IdempotencyKey, (String, StoredResponse)>> {
        let mut statement = self.connection.prepare_cached(IDEMPOTENT_RESPONSE_SQL)?;
        let mut found = HashMap::new();
        for key in keys {
            let row: Option<(String, i64, String)> =
                statement.query_row([&key.scope, &key.key], |row| <(String, i64, String)>::try_from(row)).optional()?;
            if let Some((fingerprint, status, body)) = row {
                let status = u16::try_from(status).unwrap_or(500);
                found.insert((*key).clone(), (fingerprint, StoredResponse { status, body }));
            }
        }
        Ok(found)
    }

    /// Writes a batch in one transaction and commits it durably. Every
    /// account update must change exactly one row; anything else is a bug
    /// and rolls the whole batch back.
    pub fn commit(&mut self, batch: &BatchWrite, now_ms: i64) -> Result<(), StoreError> {
        let transaction = self.connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut insert = transaction.prepare_cached(&self.statements.insert_transfer)?;
            for t in &batch.transfers {
                insert.execute(params![
                    t.id,
                    t.kind.as_str(),
                    t.debit,
                    t.credit,
                    t.amount_minor,
                    t.fee_minor,
                    t.currency.code(),
                    t.region.as_str(),
                    t.linked_id,
                    t.initiator,
                    t.note,
                    t.external_ref,
                    t.created_at_ms,
                    t.debit_prev,
                    t.credit_prev,
                    t.debit_balance_minor,
                    t.credit_balance_minor,
                ])?;
            }
            if !batch.checkpoints.is_empty() {
                let mut mark = transaction.prepare_cached(INSERT_CHECKPOINT_SQL)?;
                for c in &batch.checkpoints {
                    mark.execute(params![c.account, c.at_ms, c.transfer_id, c.balance_minor])?;
                }
            }
            let mut update = transaction.prepare_cached(UPDATE_ACCOUNT_SQL)?;
            for a in &batch.accounts {
                let changed = update.execute(params![
                    a.id,
                    a.balance_minor,
                    i64::from(a.frozen.is_some()),
                    a.last_transfer,
                    a.usage.day_start_ms,
                    a.usage.day_minor,
                    a.usage.month_start_ms,
                    a.usage.month_minor,
                    a.usage.night_start_ms,
                    a.usage.night_minor,
                    a.frozen.as_ref().map(|f| &f.reason),
                    a.frozen.as_ref().map(|f| &f.by),
                    a.frozen.as_ref().map(|f| f.at_ms),
                    a.held_minor,
                ])?;
                if changed != 1 {
                    // Returning drops the transaction: the batch rolls back.
                    let id = &a.id;
                    return Err(StoreError::RowsMismatch(format!("{changed} rows for account {id} where 1 was due")));
                }
            }
            for rules in &batch.regions {
                let (enabled, per_transfer, daily, monthly, night, start, end, [free, rate, cap]) =
                    store::region_values(rules);
                let code = rules.code.as_str();
                let values =
                    params![code, enabled, per_transfer, daily, monthly, night, start, end, free, rate, cap, now_ms];
                let changed = transaction.prepare_cached(UPDATE_REGION_SQL)?.execute(values)?;
                if changed != 1 {
                    return Err(StoreError::RowsMismatch(format!("{changed} rows for region {code} where 1 was due")));
                }
            }
            if !batch.adjustments.is_empty() {
                let mut upsert = transaction.prepare_cached(&self.statements.upsert_adjustment)?;
                for a in &batch.adjustments {
                    upsert.execute(params![
                        a.id,
                        a.account_id,
                        a.amount_minor,
                        a.currency.code(),
                        a.region.as_str(),
                        a.reason,
                        a.status.as_str(),
                        a.proposed_by,
                        a.proposed_at_ms,
                        a.expires_at_ms,
                        a.decided_by,
                        a.decided_at_ms,
                        a.transfer_id,
                    ])?;
                }
            }
            if !batch.holds.is_empty() {
                let mut upsert = transaction.prepare_cached(&self.statements.upsert_hold)?;
                for h in &batch.holds {
                    upsert.execute(params![
                        h.id,
                        h.account_id,
                        h.amount_minor,
                        h.currency.code(),
                        h.region.as_str(),
                        h.reason,
                        h.transfer_id,
                        h.status.as_str(),
                        h.placed_by,
                        h.placed_at_ms,
                        h.expires_at_ms,
                        h.decided_by,
                        h.decided_at_ms,
                        h.return_transfer_id,
                    ])?;
                }
            }
            if !batch.audit.is_empty() {
                // The transaction holds the write lock: the head is ours.
                let (seq, hash): (i64, String) =
                    transaction.query_row(audit::HEAD_SQL, [], |row| Ok((row.get(0)?, row.get(1)?)))?;
                let (entries, (seq, hash)) = audit::chain_all(&batch.audit, seq, &hash);
                let mut insert = transaction.prepare_cached(AUDIT_INSERT_SQL)?;
                for e in entries {
                    insert.execute(params![
                        e.seq,
                        e.at_ms,
                        e.operator,
                        e.action,
                        e.target,
                        e.request_id,
                        e.before,
                        e.after,
                        e.hash
                    ])?;
                }
                transaction.prepare_cached(AUDIT_SET_HEAD_SQL)?.execute(params![seq, hash])?;
            }
            let mut keyed = transaction.prepare_cached(INSERT_KEY_SQL)?;
            for (key, fingerprint, response) in &batch.idempotency {
                keyed.execute(params![
                    key.scope,
                    key.key,
                    fingerprint,
                    i64::from(response.status),
                    response.body,
                    now_ms
                ])?;
            }
        }
        Ok(transaction.commit()?)
    }

    /// Forgets idempotency keys older than `before_ms`.
    pub fn expire_idempotency_keys(&self, before_ms: i64) -> rusqlite::Result<u64> {
        let deleted = self.connection.prepare_cached(EXPIRE_KEYS_SQL)?.execute([before_ms])?;
        Ok(deleted as u64)
    }
}

#[cfg(test)]
mod tests {
    use courier_common::Database;

    use crate::writer::store::WriterStore;

    /// The writer's own connection is as durable as the pool's: same journal
    /// mode, `synchronous = FULL`, foreign keys, checkpoint threshold.
    #[tokio::test]
    async fn the_sqlite_writer_connection_has_the_pools_settings() {
        let dir = tempfile::tempdir().unwrap();
        let database = Database::connect(&Database::sqlite_url(&dir.path().join("w.db")), 1).await.unwrap();
        let WriterStore::Sqlite(writer) = WriterStore::connect(&database).await.unwrap() else {
            panic!("a SQLite database gets the SQLite writer");
        };
        let pragmas =
            ["journal_mode", "synchronous", "foreign_keys", "wal_autocheckpoint", "journal_size_limit", "busy_timeout"];
        for pragma in pragmas {
            let sql = format!("PRAGMA {pragma}");
            let from_pool: String = match sqlx::query_as::<_, (String,)>(&sql).fetch_one(database.pool()).await {
                Ok((text,)) => text,
                Err(_) => sqlx::query_as::<_, (i64,)>(&sql).fetch_one(database.pool()).await.unwrap().0.to_string(),
            };
            let from_writer: String = writer
                .connection()
                .query_row(&sql, [], |row| row.get::<_, rusqlite::types::Value>(0))
                .map(|value| match value {
                    rusqlite::types::Value::Integer(n) => n.to_string(),
                    rusqlite::types::Value::Text(text) => text,
                    other => format!("{other:?}"),
                })
                .unwrap();
            assert_eq!(from_writer, from_pool, "PRAGMA {pragma}");
        }
        let (mode, sync): (String, i64) = (
            writer.connection().query_row("PRAGMA journal_mode", [], |row| row.get(0)).unwrap(),
            writer.connection().query_row("PRAGMA synchronous", [], |row| row.get(0)).unwrap(),
        );
        assert_eq!((mode.as_str(), sync), ("wal", 2), "WAL with synchronous=FULL");
    }
}
