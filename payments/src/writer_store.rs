//! The ledger writer's connection: the only one that writes balances,
//! transfers and idempotency keys.
//!
//! On PostgreSQL it is a connection of sqlx's PostgreSQL driver (which binds
//! arrays) and a batch is one statement ([`crate::store::commit`]). On SQLite
//! the writer, which runs on a thread of its own, calls SQLite directly
//! ([`SqliteWriter`]): every statement is prepared once and cached, rows are
//! bound one at a time, and a batch is one `BEGIN IMMEDIATE` transaction with
//! one durable commit. Single-row
//! statements need neither JSON decoding nor a statement journal, which
//! multi-row statements sent through sqlx's worker thread did. Reads outside
//! the writer keep going through the shared pool ([`crate::store`]).

use std::collections::HashMap;
use std::path::Path;

use courier_common::{Backend, Database};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use sqlx::PgConnection;

use crate::ledger::{LedgerAccount, LedgerAccountId};
use crate::region::{RegionCode, RegionRules};
use crate::store::{
    self, ACCOUNT_COLUMNS_SQL, AccountRow, BatchWrite, EXPIRE_KEYS_SQL, IDEMPOTENT_RESPONSE_SQL, IdempotencyKey,
    REGION_COLUMNS_SQL, RegionRow, StoredResponse, TRANSFER_COLUMNS, USAGE_COUNT_SQL, USAGE_UNCOUNTED_SQL,
    USAGE_ZERO_SQL,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// An idempotency key of the batch was stored before (PostgreSQL, whose
    /// batch statement finds taken keys itself); nothing of the batch stays.
    #[error("an idempotency key of the batch is taken")]
    KeysTaken,
    /// A bug: a batch's statements wrote other rows than the writer meant.
    #[error("the batch wrote {0}")]
    RowsMismatch(String),
    #[error("the SQLite database has no file the writer can open")]
    NoFile,
}

/// The writer's connection to either database.
pub enum WriterStore {
    Postgres(PgConnection),
    Sqlite(SqliteWriter),
}

impl WriterStore {
    /// A connection of the writer's own, outside the pool.
    pub async fn connect(database: &Database) -> Result<Self, StoreError> {
        match database.backend() {
            Backend::Postgres => {
                let mut connection = database.dedicated_postgres_connection().await?;
                // The writer only looks rows up by key, a batch at a time. A
                // fresh ledger's tables grow faster than autoanalyze follows
                // them, and a plan made from a near-empty table's statistics
                // scans or hashes the whole table on every batch (milliseconds
                // each, growing with the table). On this connection the
                // planner takes the index and a nested loop wherever one
                // applies.
                for setting in ["SET enable_seqscan = off", "SET enable_hashjoin = off", "SET enable_mergejoin = off"] {
                    sqlx::query(setting).execute(&mut connection).await?;
                }
                Ok(WriterStore::Postgres(connection))
            }
            Backend::Sqlite => {
                Ok(WriterStore::Sqlite(SqliteWriter::open(&database.sqlite_file().ok_or(StoreError::NoFile)?)?))
            }
        }
    }

    /// The connection on PostgreSQL (for the advisory lock).
    pub fn postgres(&mut self) -> Option<&mut PgConnection> {
        match self {
            WriterStore::Postgres(connection) => Some(connection),
            WriterStore::Sqlite(_) => None,
        }
    }

    pub async fn regions(&mut self) -> Result<HashMap<RegionCode, RegionRules>, StoreError> {
        match self {
            WriterStore::Postgres(connection) => Ok(store::regions(connection).await?),
            WriterStore::Sqlite(sqlite) => Ok(sqlite.regions()?),
        }
    }

    pub async fn system_accounts(&mut self) -> Result<Vec<LedgerAccount>, StoreError> {
        match self {
            WriterStore::Postgres(connection) => Ok(store::system_accounts(connection).await?),
            WriterStore::Sqlite(sqlite) => Ok(sqlite.system_accounts()?),
        }
    }

    pub async fn accounts(&mut self, ids: &[LedgerAccountId]) -> Result<Vec<LedgerAccount>, StoreError> {
        match self {
            WriterStore::Postgres(connection) => Ok(store::accounts(connection, ids).await?),
            WriterStore::Sqlite(sqlite) => Ok(sqlite.accounts(ids)?),
        }
    }

    /// Counts the usage of wallets that have none counted yet (those from
    /// before migration 5) in one transaction: how many it counted.
    pub async fn count_usage(
        &mut self,
        regions: &HashMap<RegionCode, RegionRules>,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        match self {
            WriterStore::Postgres(connection) => Ok(store::count_usage(connection, regions, now_ms).await?),
            WriterStore::Sqlite(sqlite) => Ok(sqlite.count_usage(regions, now_ms)?),
        }
    }

    pub async fn idempotent_responses(
        &mut self,
        keys: &[&IdempotencyKey],
    ) -> Result<HashMap<IdempotencyKey, (String, StoredResponse)>, StoreError> {
        match self {
            WriterStore::Postgres(connection) => Ok(store::idempotent_responses(connection, keys).await?),
            WriterStore::Sqlite(sqlite) => Ok(sqlite.idempotent_responses(keys)?),
        }
    }

    /// Whether [`WriterStore::commit`] finds idempotency keys stored before
    /// ([`StoreError::KeysTaken`]), so that the writer need not look keys up
    /// first. PostgreSQL: yes, a look-up is a round trip and a statement of
    /// its own. SQLite: no, the writer looks keys up in-process, row by row.
    pub fn finds_taken_keys(&self) -> bool {
        matches!(self, WriterStore::Postgres(_))
    }

    /// Writes a batch in one transaction and commits it durably; on any
    /// error nothing of it stays.
    pub async fn commit(&mut self, batch: &BatchWrite, now_ms: i64) -> Result<(), StoreError> {
        match self {
            WriterStore::Postgres(connection) => {
                store::commit(connection, batch, now_ms).await.map_err(|error| match &error {
                    sqlx::Error::Database(e) if e.code().as_deref() == Some(store::KEYS_TAKEN_SQLSTATE) => {
                        StoreError::KeysTaken
                    }
                    _ => StoreError::Sqlx(error),
                })
            }
            WriterStore::Sqlite(sqlite) => sqlite.commit(batch, now_ms),
        }
    }

    /// Forgets idempotency keys older than `before_ms`.
    pub async fn expire_idempotency_keys(&mut self, before_ms: i64) -> Result<u64, StoreError> {
        match self {
            WriterStore::Postgres(connection) => Ok(store::expire_idempotency_keys(connection, before_ms).await?),
            WriterStore::Sqlite(sqlite) => Ok(sqlite.expire_idempotency_keys(before_ms)?),
        }
    }
}

// SQLite reads `$1` as a named parameter, numbered by first appearance: the
// texts shared with the pool's queries ([`crate::store`]) and those built
// with its placeholders name theirs in order, so they bind by position here
// too. The writer's own texts number theirs (`?N`).
const UPDATE_ACCOUNT_SQL: &str = "\
UPDATE ledger_accounts SET balance = ?2, frozen = ?3, last_transfer = ?4, usage_day_start = ?5, usage_day = ?6, \
  usage_month_start = ?7, usage_month = ?8, usage_night_start = ?9, usage_night = ?10 WHERE id = ?1";

const INSERT_KEY_SQL: &str = "\
INSERT INTO idempotency_keys (scope, key, fingerprint, status, body, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

/// Statements the writer keeps prepared (SQLite's default cache holds 16).
const STATEMENTS_CACHED: usize = 32;

/// The texts of the writer's statements that are built from the shared
/// column lists, built once per connection.
struct Statements {
    account_by_id: String,
    system_accounts: String,
    insert_transfer: String,
}

impl Statements {
    fn new() -> Self {
        let values = store::placeholders(1, TRANSFER_COLUMNS.split(',').count());
        Statements {
            account_by_id: format!("{ACCOUNT_COLUMNS_SQL} WHERE id = $1"),
            system_accounts: format!("{ACCOUNT_COLUMNS_SQL} WHERE kind <> 'wallet'"),
            insert_transfer: format!("INSERT INTO transfers ({TRANSFER_COLUMNS}) VALUES ({values})"),
        }
    }
}

pub struct SqliteWriter {
    connection: Connection,
    statements: Statements,
}

impl SqliteWriter {
    /// Opens `path` with the settings of every other connection to it
    /// ([`courier_common::db::sqlite_settings`]): WAL, `synchronous = FULL`,
    /// foreign keys, the busy timeout and the checkpoint threshold.
    pub fn open(path: &Path) -> rusqlite::Result<Self> {
        let connection = Connection::open(path)?;
        connection.execute_batch(&courier_common::db::sqlite_settings())?;
        connection.set_prepared_statement_cache_capacity(STATEMENTS_CACHED);
        Ok(SqliteWriter { connection, statements: Statements::new() })
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
                ])?;
            }
            let mut update = transaction.prepare_cached(UPDATE_ACCOUNT_SQL)?;
            for a in &batch.accounts {
                let changed = update.execute(params![
                    a.id,
                    a.balance_minor,
                    i64::from(a.frozen),
                    a.last_transfer,
                    a.usage.day_start_ms,
                    a.usage.day_minor,
                    a.usage.month_start_ms,
                    a.usage.month_minor,
                    a.usage.night_start_ms,
                    a.usage.night_minor,
                ])?;
                if changed != 1 {
                    // Returning drops the transaction: the batch rolls back.
                    let id = &a.id;
                    return Err(StoreError::RowsMismatch(format!("{changed} rows for account {id} where 1 was due")));
                }
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
    use super::*;

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
