//! The ledger writer's connection: the only one that writes balances,
//! transfers and idempotency keys, on either database: on PostgreSQL a
//! connection of sqlx's PostgreSQL driver ([`super::postgres`]), on SQLite a
//! connection of its own on the writer's thread ([`SqliteWriter`]). Reads
//! outside the writer go through the shared pool ([`crate::store`]).

use std::collections::HashMap;

use courier_common::{Backend, Database};
use sqlx::PgConnection;

use super::postgres;
pub use super::sqlite::SqliteWriter;
use crate::ledger::{Adjustment, Hold, LedgerAccount, LedgerAccountId, Reversible};
use crate::region::{RegionCode, RegionRules};
use crate::store::{BatchWrite, IdempotencyKey, StoredResponse};

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
                let mut connection = database.dedicated_postgres_connection(super::WRITER_APPLICATION_NAME).await?;
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
            WriterStore::Postgres(connection) => Ok(postgres::regions(connection).await?),
            WriterStore::Sqlite(sqlite) => Ok(sqlite.regions()?),
        }
    }

    pub async fn system_accounts(&mut self) -> Result<Vec<LedgerAccount>, StoreError> {
        match self {
            WriterStore::Postgres(connection) => Ok(postgres::system_accounts(connection).await?),
            WriterStore::Sqlite(sqlite) => Ok(sqlite.system_accounts()?),
        }
    }

    pub async fn accounts(&mut self, ids: &[LedgerAccountId]) -> Result<Vec<LedgerAccount>, StoreError> {
        match self {
            WriterStore::Postgres(connection) => Ok(postgres::accounts(connection, ids).await?),
            WriterStore::Sqlite(sqlite) => Ok(sqlite.accounts(ids)?),
        }
    }

    /// The transfers among `ids` that exist, with what has been reversed of them.
    pub async fn originals(&mut self, ids: &[String]) -> Result<Vec<(String, Reversible)>, StoreError> {
        match self {
            WriterStore::Postgres(connection) => Ok(postgres::originals(connection, ids).await?),
            WriterStore::Sqlite(sqlite) => Ok(sqlite.originals(ids)?),
        }
    }

    /// The adjustments among `ids` that exist.
    pub async fn adjustments(&mut self, ids: &[String]) -> Result<Vec<Adjustment>, StoreError> {
        match self {
            WriterStore::Postgres(connection) => Ok(postgres::adjustments(connection, ids).await?),
            WriterStore::Sqlite(sqlite) => Ok(sqlite.adjustments(ids)?),
        }
    }

    /// The holds among `ids` that exist.
    pub async fn holds(&mut self, ids: &[String]) -> Result<Vec<Hold>, StoreError> {
        match self {
            WriterStore::Postgres(connection) => Ok(postgres::holds(connection, ids).await?),
            WriterStore::Sqlite(sqlite) => Ok(sqlite.holds(ids)?),
        }
    }

    /// Active holds past their time: `(hold, wallet)`.
    pub async fn expired_holds(&mut self, now_ms: i64) -> Result<Vec<(String, String)>, StoreError> {
        match self {
            WriterStore::Postgres(connection) => Ok(postgres::expired_holds(connection, now_ms).await?),
            WriterStore::Sqlite(sqlite) => Ok(sqlite.expired_holds(now_ms)?),
        }
    }

    /// Pending adjustments past their time: `(adjustment, wallet)`.
    pub async fn expired_adjustments(&mut self, now_ms: i64) -> Result<Vec<(String, String)>, StoreError> {
        match self {
            WriterStore::Postgres(connection) => Ok(postgres::expired_adjustments(connection, now_ms).await?),
            WriterStore::Sqlite(sqlite) => Ok(sqlite.expired_adjustments(now_ms)?),
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
            WriterStore::Postgres(connection) => Ok(postgres::count_usage(connection, regions, now_ms).await?),
            WriterStore::Sqlite(sqlite) => Ok(sqlite.count_usage(regions, now_ms)?),
        }
    }

    pub async fn idempotent_responses(
        &mut self,
        keys: &[&IdempotencyKey],
    ) -> Result<HashMap<IdempotencyKey, (String, StoredResponse)>, StoreError> {
        match self {
            WriterStore::Postgres(connection) => Ok(postgres::idempotent_responses(connection, keys).await?),
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
                postgres::commit(connection, batch, now_ms).await.map_err(|error| match &error {
                    sqlx::Error::Database(e) if e.code().as_deref() == Some(postgres::KEYS_TAKEN_SQLSTATE) => {
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
            WriterStore::Postgres(connection) => Ok(postgres::expire_idempotency_keys(connection, before_ms).await?),
            WriterStore::Sqlite(sqlite) => Ok(sqlite.expire_idempotency_keys(before_ms)?),
        }
    }
}
