//! The ledger writer's connection: the only one that writes balances,
//! transfers and idempotency keys, on either database: on PostgreSQL two
//! connections of sqlx's PostgreSQL driver, one batch committing on one
//! while the next is written on the other ([`PostgresWriter`]), on SQLite a
//! connection of its own on the writer's thread ([`SqliteWriter`]). Reads
//! outside the writer go through the shared pool ([`crate::store`]).

use std::collections::HashMap;

use courier_common::{Backend, Database};
use sqlx::PgConnection;

use super::postgres::{self, OnCommit, PostgresWriter};
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
    /// The batch was built on a batch that has not committed (PostgreSQL):
    /// nothing of it stays, and the writer starts again from the database.
    #[error("the batch follows a batch that did not commit")]
    Unsequenced,
    /// A bug: a batch's statements wrote other rows than the writer meant.
    #[error("the batch wrote {0}")]
    RowsMismatch(String),
    #[error("the SQLite database has no file the writer can open")]
    NoFile,
}

/// The writer's connection to either database.
pub enum WriterStore {
    Postgres(PostgresWriter),
    Sqlite(SqliteWriter),
}

impl WriterStore {
    /// A connection of the writer's own, outside the pool.
    pub async fn connect(database: &Database) -> Result<Self, StoreError> {
        match database.backend() {
            Backend::Postgres => Ok(WriterStore::Postgres(PostgresWriter::connect(database).await?)),
            Backend::Sqlite => {
                Ok(WriterStore::Sqlite(SqliteWriter::open(&database.sqlite_file().ok_or(StoreError::NoFile)?)?))
            }
        }
    }

    /// The connection on PostgreSQL (for the advisory lock).
    pub fn postgres(&mut self) -> Option<&mut PgConnection> {
        match self {
            WriterStore::Postgres(writer) => Some(writer.active()),
            WriterStore::Sqlite(_) => None,
        }
    }

    pub async fn regions(&mut self) -> Result<HashMap<RegionCode, RegionRules>, StoreError> {
        match self {
            WriterStore::Postgres(writer) => Ok(postgres::regions(writer.active()).await?),
            WriterStore::Sqlite(sqlite) => Ok(sqlite.regions()?),
        }
    }

    pub async fn system_accounts(&mut self) -> Result<Vec<LedgerAccount>, StoreError> {
        match self {
            WriterStore::Postgres(writer) => Ok(postgres::system_accounts(writer.active()).await?),
            WriterStore::Sqlite(sqlite) => Ok(sqlite.system_accounts()?),
        }
    }

    pub async fn accounts(&mut self, ids: &[LedgerAccountId]) -> Result<Vec<LedgerAccount>, StoreError> {
        match self {
            WriterStore::Postgres(writer) => Ok(postgres::accounts(writer.active(), ids).await?),
            WriterStore::Sqlite(sqlite) => Ok(sqlite.accounts(ids)?),
        }
    }

    /// The transfers among `ids` that exist, with what has been reversed of them.
    pub async fn originals(&mut self, ids: &[String]) -> Result<Vec<(String, Reversible)>, StoreError> {
        match self {
            WriterStore::Postgres(writer) => Ok(postgres::originals(writer.active(), ids).await?),
            WriterStore::Sqlite(sqlite) => Ok(sqlite.originals(ids)?),
        }
    }

    /// The adjustments among `ids` that exist.
    pub async fn adjustments(&mut self, ids: &[String]) -> Result<Vec<Adjustment>, StoreError> {
        match self {
            WriterStore::Postgres(writer) => Ok(postgres::adjustments(writer.active(), ids).await?),
            WriterStore::Sqlite(sqlite) => Ok(sqlite.adjustments(ids)?),
        }
    }

    /// The holds among `ids` that exist.
    pub async fn holds(&mut self, ids: &[String]) -> Result<Vec<Hold>, StoreError> {
        match self {
            WriterStore::Postgres(writer) => Ok(postgres::holds(writer.active(), ids).await?),
            WriterStore::Sqlite(sqlite) => Ok(sqlite.holds(ids)?),
        }
    }

    /// Active holds past their time: `(hold, wallet)`.
    pub async fn expired_holds(&mut self, now_ms: i64) -> Result<Vec<(String, String)>, StoreError> {
        match self {
            WriterStore::Postgres(writer) => Ok(postgres::expired_holds(writer.active(), now_ms).await?),
            WriterStore::Sqlite(sqlite) => Ok(sqlite.expired_holds(now_ms)?),
        }
    }

    /// Pending adjustments past their time: `(adjustment, wallet)`.
    pub async fn expired_adjustments(&mut self, now_ms: i64) -> Result<Vec<(String, String)>, StoreError> {
        match self {
            WriterStore::Postgres(writer) => Ok(postgres::expired_adjustments(writer.active(), now_ms).await?),
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
            WriterStore::Postgres(writer) => Ok(postgres::count_usage(writer.active(), regions, now_ms).await?),
            WriterStore::Sqlite(sqlite) => Ok(sqlite.count_usage(regions, now_ms)?),
        }
    }

    pub async fn idempotent_responses(
        &mut self,
        keys: &[&IdempotencyKey],
    ) -> Result<HashMap<IdempotencyKey, (String, StoredResponse)>, StoreError> {
        match self {
            WriterStore::Postgres(writer) => Ok(postgres::idempotent_responses(writer.active(), keys).await?),
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

    /// Writes a batch in one transaction; on any error nothing of it stays.
    /// Its requests may be answered once [`WriterStore::commit_staged`] says
    /// it is durable. SQLite commits it here; PostgreSQL leaves a batch of
    /// transfers uncommitted, to commit it beside the next batch
    /// ([`PostgresWriter`]).
    pub async fn stage(&mut self, batch: &BatchWrite, now_ms: i64) -> Result<(), StoreError> {
        match self {
            WriterStore::Postgres(writer) => writer.stage(batch, now_ms).await.map_err(postgres_error),
            WriterStore::Sqlite(sqlite) => sqlite.commit(batch, now_ms),
        }
    }

    /// Commits what [`WriterStore::stage`] wrote and calls `then` once it is
    /// durable (`true`) or failed (`false`), without waiting for it on
    /// PostgreSQL, where the next batch is written meanwhile. Also called
    /// for a batch that wrote nothing, whose answers (refusals, replays)
    /// wait for the commit in flight just the same. An error: a commit
    /// before it failed (`then` is dropped, which answers unavailable).
    pub async fn commit_staged(&mut self, then: OnCommit) -> Result<(), StoreError> {
        match self {
            WriterStore::Postgres(writer) => Ok(writer.commit_staged(then).await?),
            WriterStore::Sqlite(_) => {
                then(true);
                Ok(())
            }
        }
    }

    /// Waits for the commit in flight (PostgreSQL), if any: its error when it failed.
    pub async fn settle(&mut self) -> Result<(), StoreError> {
        match self {
            WriterStore::Postgres(writer) => Ok(writer.settle().await?),
            WriterStore::Sqlite(_) => Ok(()),
        }
    }

    /// Whether a commit is in flight (PostgreSQL).
    pub fn is_committing(&self) -> bool {
        matches!(self, WriterStore::Postgres(writer) if writer.is_committing())
    }

    /// Writes a batch and commits it durably before it returns.
    pub async fn commit(&mut self, batch: &BatchWrite, now_ms: i64) -> Result<(), StoreError> {
        self.stage(batch, now_ms).await?;
        let (durable, outcome) = tokio::sync::oneshot::channel();
        self.commit_staged(Box::new(move |ok| {
            let _ = durable.send(ok);
        }))
        .await?;
        self.settle().await?;
        match outcome.await {
            Ok(true) => Ok(()),
            _ => Err(StoreError::Sqlx(sqlx::Error::Protocol("the batch's commit failed".into()))),
        }
    }

    /// Forgets idempotency keys older than `before_ms`.
    pub async fn expire_idempotency_keys(&mut self, before_ms: i64) -> Result<u64, StoreError> {
        match self {
            WriterStore::Postgres(writer) => Ok(postgres::expire_idempotency_keys(writer.active(), before_ms).await?),
            WriterStore::Sqlite(sqlite) => Ok(sqlite.expire_idempotency_keys(before_ms)?),
        }
    }
}

/// A PostgreSQL error, with the ledger's own refusals told apart by their
/// SQLSTATE.
fn postgres_error(error: sqlx::Error) -> StoreError {
    match &error {
        sqlx::Error::Database(e) => match e.code().as_deref() {
            Some(postgres::KEYS_TAKEN_SQLSTATE) => StoreError::KeysTaken,
            Some(postgres::UNSEQUENCED_SQLSTATE) => StoreError::Unsequenced,
            _ => StoreError::Sqlx(error),
        },
        _ => StoreError::Sqlx(error),
    }
}
