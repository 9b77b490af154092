//! The storage handle: one pool over SQLite (embedded default) or PostgreSQL
//! (production), chosen by URL, with the schema migrations applied at start.
//!
//! Queries are written once in SQL both databases accept (`$1` placeholders,
//! `BIGINT` milliseconds for times, `TEXT` ids), so every storage path runs on
//! both and is tested on both.

use std::borrow::Cow;
use std::path::Path;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::error::BoxDynError;
use sqlx::migrate::MigrationSource;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyConnection, AnyPool, Connection, Executor};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A cloneable handle to the database pool.
#[derive(Clone, Debug)]
pub struct Database {
    pool: AnyPool,
    backend: Backend,
    url: std::sync::Arc<str>,
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://USER@HOST/DB")]
    UnsupportedUrl(String),
    #[error("cannot connect to the database: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("cannot apply the database migrations: {0}")]
    Migrate(#[source] sqlx::migrate::MigrateError),
}

/// Each migration in both dialects. Versions only ever grow; a shipped
/// migration is never edited (its checksum is recorded).
const MIGRATIONS: &[(i64, &str, &str, &str)] = &[
    (
        1,
        "accounts",
        include_str!("../../migrations/sqlite/0001_accounts.sql"),
        include_str!("../../migrations/postgres/0001_accounts.sql"),
    ),
    (
        2,
        "ledger",
        include_str!("../../migrations/sqlite/0002_ledger.sql"),
        include_str!("../../migrations/postgres/0002_ledger.sql"),
    ),
    (
        3,
        "calls",
        include_str!("../../migrations/sqlite/0003_calls.sql"),
        include_str!("../../migrations/postgres/0003_calls.sql"),
    ),
    (
        4,
        "ledger_fill",
        include_str!("../../migrations/sqlite/0004_ledger_fill.sql"),
        include_str!("../../migrations/postgres/0004_ledger_fill.sql"),
    ),
    (
        5,
        "ledger_chains",
        include_str!("../../migrations/sqlite/0005_ledger_chains.sql"),
        include_str!("../../migrations/postgres/0005_ledger_chains.sql"),
    ),
    (
        6,
        "idempotency_by_key",
        include_str!("../../migrations/sqlite/0006_idempotency_by_key.sql"),
        include_str!("../../migrations/postgres/0006_idempotency_by_key.sql"),
    ),
    (
        7,
        "transfers_unreferenced",
        include_str!("../../migrations/sqlite/0007_transfers_unreferenced.sql"),
        include_str!("../../migrations/postgres/0007_transfers_unreferenced.sql"),
    ),
    (
        8,
        "ledger_batch_checks",
        include_str!("../../migrations/sqlite/0008_ledger_batch_checks.sql"),
        include_str!("../../migrations/postgres/0008_ledger_batch_checks.sql"),
    ),
    (
        9,
        "devices_by_revocation",
        include_str!("../../migrations/sqlite/0009_devices_by_revocation.sql"),
        include_str!("../../migrations/postgres/0009_devices_by_revocation.sql"),
    ),
    (
        10,
        "finance_ops",
        include_str!("../../migrations/sqlite/0010_finance_ops.sql"),
        include_str!("../../migrations/postgres/0010_finance_ops.sql"),
    ),
    (
        11,
        "audit_checkpoints",
        include_str!("../../migrations/sqlite/0011_audit_checkpoints.sql"),
        include_str!("../../migrations/postgres/0011_audit_checkpoints.sql"),
    ),
    (
        12,
        "playout_figures",
        include_str!("../../migrations/sqlite/0012_playout_figures.sql"),
        include_str!("../../migrations/postgres/0012_playout_figures.sql"),
    ),
];

/// `$first, $first+1, …` for `count` parameters.
pub fn placeholders(first: usize, count: usize) -> String {
    (first..first + count).map(|n| format!("${n}")).collect::<Vec<_>>().join(", ")
}

/// How long a connection waits for a lock held by another writer before the
/// statement fails (SQLite `busy_timeout`).
const SQLITE_BUSY_TIMEOUT_MS: u64 = 5_000;
/// Page cache per SQLite connection, in KiB (SQLite's default is 2 MiB).
const SQLITE_CACHE_KIB: u64 = 16 * 1024;
/// WAL frames (pages) written before a commit checkpoints them into the
/// database: 64 MiB of 4 KiB pages, where SQLite's default is 1,000. A
/// checkpoint runs on the committing connection (the ledger writer) and
/// copies each page once, however many frames it had: checkpointing 16 times
/// less often copies far fewer pages when commits rewrite the same ones (the
/// ledger's balances and index pages). Measured in BENCHMARKS.md.
const SQLITE_WAL_AUTOCHECKPOINT_PAGES: u64 = 16_384;
/// Once checkpointed, the WAL file is cut back to this size.
const SQLITE_WAL_SIZE_LIMIT_BYTES: u64 = 64 * 1024 * 1024;
const ACQUIRE_TIMEOUT_S: u64 = 10;

impl Database {
    /// Connects to `url` (`sqlite://…` or `postgres://…`) and applies the
    /// migrations.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, DbError> {
        Self::connect_migrated_to(url, max_connections, i64::MAX).await
    }

    /// Connects to `url` and applies the migrations up to `version` only:
    /// for tests of what a later migration does to data written before it.
    pub async fn connect_migrated_to(url: &str, max_connections: u32, version: i64) -> Result<Self, DbError> {
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(DbError::UnsupportedUrl(redact(url)));
        };
        install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(ACQUIRE_TIMEOUT_S))
            .after_connect(move |connection, _meta| Box::pin(configure(connection, backend)))
            .connect(url)
            .await
            .map_err(DbError::Connect)?;
        let database = Database { pool, backend, url: url.into() };
        let migrator = Migrator::new(Embedded(backend, version)).await.map_err(DbError::Migrate)?;
        migrator.run(&database.pool).await.map_err(DbError::Migrate)?;
        Ok(database)
    }

    /// The URL of a SQLite database file, created if missing.
    pub fn sqlite_url(path: &Path) -> String {
        format!("sqlite://{}?mode=rwc", path.display())
    }

    /// The file of a `sqlite://` URL.
    pub fn sqlite_path(url: &str) -> Option<std::path::PathBuf> {
        let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
        let path = rest.split('?').next().unwrap_or("");
        (!path.is_empty() && path != ":memory:").then(|| std::path::PathBuf::from(path))
    }

    /// The database file, for SQLite.
    pub fn sqlite_file(&self) -> Option<std::path::PathBuf> {
        (self.backend == Backend::Sqlite).then(|| Self::sqlite_path(&self.url)).flatten()
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// A read-only transaction whose statements all see one snapshot of the
    /// database, however the ledger's writer commits meanwhile: PostgreSQL
    /// `REPEATABLE READ` (the snapshot of its first statement); on SQLite one
    /// read transaction, which in WAL mode sees the database as of its first
    /// read until it ends. Reports that read several statements use it, so
    /// that their figures add up to one moment.
    pub async fn snapshot(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        let mut transaction = self.pool.begin().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .execute(&mut *transaction)
                .await?;
        }
        Ok(transaction)
    }

    /// A connection of its own, outside the pool, in a read-only snapshot
    /// like [`Database::snapshot`]'s, for a long read that streams (an
    /// export): it holds no pool slot while a client downloads, and on
    /// SQLite it keeps a small page cache, since a read that passes through
    /// the data once gains nothing from a large one and the process's
    /// memory would grow by it. Dropped, it closes, which ends the snapshot.
    pub async fn streaming_snapshot(&self) -> Result<AnyConnection, sqlx::Error> {
        let mut connection = AnyConnection::connect(&self.url).await?;
        configure(&mut connection, self.backend).await?;
        let begin = match self.backend {
            Backend::Sqlite => "PRAGMA cache_size = -1024; BEGIN",
            Backend::Postgres => "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        };
        connection.execute(begin).await?;
        Ok(connection)
    }

    /// Round-trips a trivial query (for `/readyz`).
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map(|_| ())
    }

    /// PostgreSQL only: a connection of its own, outside the pool, through
    /// the PostgreSQL driver itself, for a task that runs on a runtime of its
    /// own and binds arrays, which the pool's database-neutral driver cannot
    /// (the ledger writer). It shows in `pg_stat_activity` as
    /// `application_name`.
    pub async fn dedicated_postgres_connection(
        &self,
        application_name: &str,
    ) -> Result<sqlx::PgConnection, sqlx::Error> {
        if self.backend != Backend::Postgres {
            return Err(sqlx::Error::Configuration("not a PostgreSQL database".into()));
        }
        let options: sqlx::postgres::PgConnectOptions = self.url.parse()?;
        sqlx::PgConnection::connect_with(&options.application_name(application_name)).await
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Per-connection settings. SQLite: WAL lets readers run beside the writer;
/// `synchronous = FULL` makes every commit durable before it is acknowledged.
/// Statement journals (multi-row statements inside a transaction) stay in
/// memory rather than in temporary files, each connection caches up to
/// `SQLITE_CACHE_KIB` of pages instead of SQLite's 2 MiB, and the WAL is
/// checkpointed every `SQLITE_WAL_AUTOCHECKPOINT_PAGES` pages.
async fn configure(connection: &mut AnyConnection, backend: Backend) -> Result<(), sqlx::Error> {
    if backend == Backend::Sqlite {
        // One script, one round trip to the connection's thread.
        connection.execute(sqlite_settings().as_str()).await?;
    }
    Ok(())
}

/// The settings script every SQLite connection runs first, also the ones
/// opened outside sqlx (the ledger writer's).
pub fn sqlite_settings() -> String {
    format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; \
         PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}; PRAGMA temp_store = MEMORY; \
         PRAGMA cache_size = -{SQLITE_CACHE_KIB}; PRAGMA wal_autocheckpoint = {SQLITE_WAL_AUTOCHECKPOINT_PAGES}; \
         PRAGMA journal_size_limit = {SQLITE_WAL_SIZE_LIMIT_BYTES};"
    )
}

/// The migrations compiled into the binary, in the dialect of one backend,
/// up to a version.
#[derive(Debug)]
struct Embedded(Backend, i64);

impl<'s> MigrationSource<'s> for Embedded {
    fn resolve(self) -> futures::future::BoxFuture<'s, Result<Vec<Migration>, BoxDynError>> {
        let migrations = MIGRATIONS
            .iter()
            .filter(|migration| migration.0 <= self.1)
            .map(|&(version, name, sqlite, postgres)| {
                let sql = match self.0 {
                    Backend::Sqlite => sqlite,
                    Backend::Postgres => postgres,
                };
                Migration::new(version, Cow::Borrowed(name), MigrationType::Simple, Cow::Borrowed(sql), false)
            })
            .collect();
        Box::pin(std::future::ready(Ok(migrations)))
    }
}

/// A database URL with any password removed, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            match credentials.find(':') {
                Some(colon) => format!("{}{}:***{}", &url[..scheme_end + 3], &credentials[..colon], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Whether `error` is a unique-constraint violation (either database).
pub fn is_unique_violation(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => db.is_unique_violation(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every migration file of both dialects is applied, in the order of its
    /// number, under its name.
    #[test]
    fn every_migration_file_is_listed() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
        for dialect in ["sqlite", "postgres"] {
            let mut files: Vec<String> = std::fs::read_dir(root.join(dialect))
                .unwrap()
                .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            files.sort();
            let listed: Vec<String> =
                MIGRATIONS.iter().map(|(version, name, _, _)| format!("{version:04}_{name}.sql")).collect();
            assert_eq!(files, listed, "migrations/{dialect}");
        }
    }

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite://x.db"), "sqlite://x.db");
    }

    #[tokio::test]
    async fn sqlite_migrates_and_is_durable_by_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let url = Database::sqlite_url(&dir.path().join("c.db"));
        let database = Database::connect(&url, 2).await.unwrap();
        database.ping().await.unwrap();
        let (mode,): (String,) = sqlx::query_as("PRAGMA journal_mode").fetch_one(database.pool()).await.unwrap();
        assert_eq!(mode, "wal");
        let (sync,): (i64,) = sqlx::query_as("PRAGMA synchronous").fetch_one(database.pool()).await.unwrap();
        assert_eq!(sync, 2, "synchronous=FULL");
        let (pages,): (i64,) = sqlx::query_as("PRAGMA wal_autocheckpoint").fetch_one(database.pool()).await.unwrap();
        assert_eq!(pages as u64, SQLITE_WAL_AUTOCHECKPOINT_PAGES);
        let (limit,): (i64,) = sqlx::query_as("PRAGMA journal_size_limit").fetch_one(database.pool()).await.unwrap();
        assert_eq!(limit as u64, SQLITE_WAL_SIZE_LIMIT_BYTES);
        // Applying again is a no-op.
        database.close().await;
        Database::connect(&url, 2).await.unwrap();
    }

    #[tokio::test]
    async fn refuses_other_schemes() {
        assert!(matches!(Database::connect("mysql://x", 1).await, Err(DbError::UnsupportedUrl(_))));
    }
}
