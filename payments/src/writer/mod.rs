//! The single ledger writer (group commit). Requests enter a bounded queue;
//! the writer takes up to a batch of them, applies them in order to the
//! in-memory ledger, checks the batch's invariants, and writes the whole
//! batch (transfers, balances, idempotency keys) in one transaction with one
//! durable commit. Each request is answered only after its batch is durable.
//!
//! Exactly one writer runs per database: on PostgreSQL it holds an advisory
//! lock, on SQLite an exclusive lock on a file beside the database. A second
//! process waits as a standby and takes over when the first dies.

mod postgres;
mod sqlite;
pub mod store;

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use courier_common::shutdown::CancellationToken;
use courier_common::time::now_ms;
use courier_common::{Backend, Database};
use futures::FutureExt;
use tokio::sync::{mpsc, oneshot};

use crate::ledger::{AccountKind, Adjustment, Command, Hold, Ledger, LedgerAccountId};
use crate::store::{BatchWrite, IdempotencyKey, StoredResponse};
use crate::view;
use store::{StoreError, WriterStore};

/// The PostgreSQL advisory lock that makes one process the writer ("courledg").
const WRITER_LOCK_KEY: i64 = 0x636f_7572_6c65_6467;
const STANDBY_POLL: Duration = Duration::from_millis(500);
const IDEMPOTENCY_SWEEP_EVERY: Duration = Duration::from_secs(60);
/// Operators change regions' rules live; the writer rereads them this often.
const REGIONS_RELOAD_EVERY: Duration = Duration::from_millis(250);
/// How often the writer looks for holds past their time (an index look-up
/// that almost always finds none).
const HOLD_SWEEP_EVERY: Duration = Duration::from_secs(1);
/// The operator a hold's expiry is recorded under.
pub const SYSTEM_OPERATOR: &str = "system";
/// The writer's connection's `application_name` on PostgreSQL, by which an
/// operator (or the ledger benchmark) finds its backend in
/// `pg_stat_activity`.
pub const WRITER_APPLICATION_NAME: &str = "courier-ledger-writer";
/// The name of the writer's thread (in `top -H`, `perf`, `/proc`).
pub const WRITER_THREAD_NAME: &str = "ledger-writer";

#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Requests waiting for the writer; a full queue answers 503 `overloaded`.
    pub queue_len_max: usize,
    /// Requests applied in one transaction.
    pub batch_len_max: usize,
    /// How long idempotency keys are kept.
    pub idempotency_ttl_s: u64,
    /// Ledger accounts cached in memory before the cache is dropped and
    /// reloaded on demand.
    pub cache_accounts_max: usize,
    /// How long a proposed adjustment waits for its decision.
    pub adjustment_ttl_s: u64,
    /// How long a hold keeps its money before it releases itself.
    pub hold_ttl_s: u64,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            queue_len_max: 16_384,
            batch_len_max: 1_024,
            idempotency_ttl_s: 24 * 3_600,
            cache_accounts_max: 1_000_000,
            adjustment_ttl_s: 72 * 3_600,
            hold_ttl_s: 72 * 3_600,
        }
    }
}

/// How the writer makes itself the only one.
#[derive(Debug, Clone)]
pub enum WriterLock {
    /// A PostgreSQL advisory lock on the writer's connection.
    PostgresAdvisory,
    /// An exclusive lock on this file (SQLite: beside the database).
    File(PathBuf),
}

impl WriterLock {
    pub fn for_database(database: &Database, sqlite_lock_file: PathBuf) -> Self {
        match database.backend() {
            Backend::Postgres => WriterLock::PostgresAdvisory,
            Backend::Sqlite => WriterLock::File(sqlite_lock_file),
        }
    }
}

pub struct WriteRequest {
    pub command: Command,
    pub initiator: String,
    /// The key and the request's fingerprint.
    pub idempotency: Option<(IdempotencyKey, String)>,
    /// An operator's request's id, recorded in the audit log.
    pub request_id: Option<String>,
    pub reply: oneshot::Sender<WriteOutcome>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Applied and durable, refused and remembered, or replayed.
    Response(StoredResponse),
    /// The key was used before with a different request.
    KeyReused,
    /// The batch could not be committed; nothing of it may be assumed.
    Unavailable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitError {
    /// The queue is full: retry shortly.
    Overloaded,
    /// No writer is running (standby, shutting down, or failed).
    Unavailable,
}

/// Batch-size distribution: bucket `i` counts batches of 2^i to 2^(i+1)-1.
#[derive(Debug, Default)]
pub struct WriterStats {
    pub batches: AtomicU64,
    pub requests: AtomicU64,
    pub batch_size_buckets: [AtomicU64; 16],
}

#[derive(Clone)]
pub struct WriterHandle {
    queue: mpsc::Sender<WriteRequest>,
    pub stats: Arc<WriterStats>,
    config: Arc<WriterConfig>,
}

impl WriterHandle {
    /// The writer's settings.
    pub fn config(&self) -> &WriterConfig {
        &self.config
    }

    /// Queues a request and waits up to `deadline` for its durable outcome.
    pub async fn submit(
        &self,
        command: Command,
        initiator: String,
        idempotency: Option<(IdempotencyKey, String)>,
        request_id: Option<String>,
        deadline: Duration,
    ) -> Result<WriteOutcome, SubmitError> {
        let (reply, outcome) = oneshot::channel();
        let request = WriteRequest { command, initiator, idempotency, request_id, reply };
        self.queue.try_send(request).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => SubmitError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => SubmitError::Unavailable,
        })?;
        match tokio::time::timeout(deadline, outcome).await {
            Ok(Ok(outcome)) => Ok(outcome),
            _ => Err(SubmitError::Unavailable),
        }
    }
}

/// Starts the writer on a thread and runtime of its own, so that its
/// database round trips never queue behind HTTP work on the shared runtime.
/// It waits as a standby until it holds the lock, and drains its queue when
/// `shutdown` is cancelled. Should it ever panic (a bug), the batch in hand is
/// answered `ledger_unavailable` by the dropped replies, the lock is released
/// with its connection, and the writer starts again from the database with an
/// empty cache. The returned task ends when the writer has stopped.
pub fn spawn(
    database: Database,
    lock: WriterLock,
    config: WriterConfig,
    shutdown: CancellationToken,
) -> std::io::Result<(WriterHandle, tokio::task::JoinHandle<()>)> {
    let (queue, requests) = mpsc::channel(config.queue_len_max.max(1));
    let stats = Arc::new(WriterStats::default());
    let handle = WriterHandle { queue, stats: stats.clone(), config: Arc::new(config.clone()) };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (stopped, on_stop) = oneshot::channel::<()>();
    std::thread::Builder::new().name(WRITER_THREAD_NAME.into()).spawn(move || {
        runtime.block_on(async move {
            let mut requests = requests;
            loop {
                let writer = run(&database, &lock, &config, &shutdown, &mut requests, &stats);
                match AssertUnwindSafe(writer).catch_unwind().await {
                    Ok(()) => return,
                    Err(_) => {
                        metrics::gauge!("ledger_writer_active").set(0.0);
                        metrics::counter!("ledger_writer_restarts_total").increment(1);
                        tracing::error!("the ledger writer panicked; starting it again from the database");
                        tokio::time::sleep(STANDBY_POLL).await;
                    }
                }
            }
        });
        let _ = stopped.send(());
    })?;
    let task = tokio::spawn(async move {
        let _ = on_stop.await;
    });
    Ok((handle, task))
}

/// Holds the writer's exclusivity for as long as it lives.
enum Held {
    Postgres,
    File(#[allow(dead_code)] std::fs::File),
}

async fn acquire(database: &Database, lock: &WriterLock, shutdown: &CancellationToken) -> Option<(WriterStore, Held)> {
    let mut announced = false;
    loop {
        let attempt: Result<Option<(WriterStore, Held)>, String> = async {
            let mut connection = WriterStore::connect(database).await.map_err(|e| e.to_string())?;
            match lock {
                WriterLock::PostgresAdvisory => {
                    let postgres = connection.postgres().ok_or("an advisory lock needs PostgreSQL")?;
                    let (held,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock($1)")
                        .bind(WRITER_LOCK_KEY)
                        .fetch_one(postgres)
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok(held.then_some((connection, Held::Postgres)))
                }
                WriterLock::File(path) => {
                    let file = std::fs::OpenOptions::new()
                        .create(true)
                        .truncate(false)
                        .write(true)
                        .open(path)
                        .map_err(|e| format!("cannot open the writer lock file {}: {e}", path.display()))?;
                    match file.try_lock() {
                        Ok(()) => Ok(Some((connection, Held::File(file)))),
                        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
                        Err(std::fs::TryLockError::Error(e)) => Err(format!("cannot lock {}: {e}", path.display())),
                    }
                }
            }
        }
        .await;
        match attempt {
            Ok(Some(held)) => return Some(held),
            Ok(None) if !announced => {
                tracing::info!("another ledger writer holds the lock: waiting as a standby");
                announced = true;
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, "ledger writer cannot start yet; retrying"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return None,
            () = tokio::time::sleep(STANDBY_POLL) => {}
        }
    }
}

async fn run(
    database: &Database,
    lock: &WriterLock,
    config: &WriterConfig,
    shutdown: &CancellationToken,
    requests: &mut mpsc::Receiver<WriteRequest>,
    stats: &WriterStats,
) {
    loop {
        let Some((mut connection, held)) = acquire(database, lock, shutdown).await else {
            requests.close();
            return;
        };
        let mut writer = Writer {
            ledger: Ledger::default(),
            config: config.clone(),
            system: Vec::new(),
            regions_loaded: std::time::Instant::now(),
        };
        if let Err(error) = writer.load_system(&mut connection).await {
            tracing::error!(%error, "ledger writer cannot load the system accounts; retrying");
            drop(held);
            tokio::time::sleep(STANDBY_POLL).await;
            continue;
        }
        metrics::gauge!("ledger_writer_active").set(1.0);
        tracing::info!("ledger writer active");
        let mut sweep = tokio::time::interval(IDEMPOTENCY_SWEEP_EVERY);
        let mut hold_sweep = tokio::time::interval(HOLD_SWEEP_EVERY);
        hold_sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let failure = loop {
            let first = tokio::select! {
                biased;
                () = shutdown.cancelled() => None,
                request = requests.recv() => request,
                _ = sweep.tick() => {
                    let before = now_ms() - i64::try_from(config.idempotency_ttl_s * 1_000).unwrap_or(i64::MAX);
                    match connection.expire_idempotency_keys(before).await {
                        Ok(0) => {}
                        Ok(expired) => tracing::info!(expired, "expired idempotency keys"),
                        Err(error) => break Some(error),
                    }
                    match writer.expire_adjustments(&mut connection, stats).await {
                        Ok(()) => {}
                        Err(error) => break Some(error),
                    }
                    continue;
                }
                _ = hold_sweep.tick() => {
                    match writer.expire_holds(&mut connection, stats).await {
                        Ok(()) => continue,
                        Err(error) => break Some(error),
                    }
                }
            };
            let Some(first) = first else {
                // Shutdown: accept nothing new, apply what is queued, stop.
                requests.close();
                while let Some(batch) = take_batch(requests, None, config.batch_len_max) {
                    if let Err(error) = writer.process(&mut connection, batch, stats).await {
                        tracing::error!(%error, "ledger batch failed during shutdown");
                        break;
                    }
                }
                metrics::gauge!("ledger_writer_active").set(0.0);
                tracing::info!("ledger writer drained and stopped");
                return;
            };
            let batch = take_batch(requests, Some(first), config.batch_len_max).unwrap_or_default();
            if let Err(error) = writer.process(&mut connection, batch, stats).await {
                break Some(error);
            }
        };
        metrics::gauge!("ledger_writer_active").set(0.0);
        if let Some(error) = failure {
            tracing::error!(%error, "ledger writer lost its database; reconnecting");
        }
        drop(held);
        tokio::time::sleep(STANDBY_POLL).await;
    }
}

/// `first` (if any) and whatever else is queued, up to `max`.
fn take_batch(
    requests: &mut mpsc::Receiver<WriteRequest>,
    first: Option<WriteRequest>,
    max: usize,
) -> Option<Vec<WriteRequest>> {
    let mut batch: Vec<WriteRequest> = first.into_iter().collect();
    while batch.len() < max {
        match requests.try_recv() {
            Ok(request) => batch.push(request),
            Err(_) => break,
        }
    }
    (!batch.is_empty()).then_some(batch)
}

struct Writer {
    ledger: Ledger,
    config: WriterConfig,
    system: Vec<LedgerAccountId>,
    regions_loaded: std::time::Instant,
}

impl Writer {
    /// Loads the regions and the system accounts, and counts the usage of
    /// wallets that have none counted yet (once, after migration 5).
    async fn load_system(&mut self, connection: &mut WriterStore) -> Result<(), StoreError> {
        self.ledger.regions = connection.regions().await?;
        let counted = connection.count_usage(&self.ledger.regions, now_ms()).await?;
        if counted > 0 {
            tracing::info!(wallets = counted, "counted the usage of wallets from before the usage columns");
        }
        self.system.clear();
        for account in connection.system_accounts().await? {
            self.system.push(account.id.clone());
            self.ledger.accounts.insert(account.id.clone(), account);
        }
        Ok(())
    }

    /// Records the undecided adjustments past their time as expired, as a
    /// batch of the writer's own (each gets its audit entry).
    async fn expire_adjustments(
        &mut self,
        connection: &mut WriterStore,
        stats: &WriterStats,
    ) -> Result<(), StoreError> {
        let expired = connection.expired_adjustments(now_ms()).await?;
        if expired.is_empty() {
            return Ok(());
        }
        let count = expired.len();
        let commands = expired
            .into_iter()
            .map(|(adjustment_id, account_id)| Command::ExpireAdjustment { adjustment_id, account_id });
        self.process(connection, own_batch(commands), stats).await?;
        tracing::info!(count, "pending adjustments expired");
        Ok(())
    }

    /// Releases the holds past their time, as a batch of the writer's own.
    async fn expire_holds(&mut self, connection: &mut WriterStore, stats: &WriterStats) -> Result<(), StoreError> {
        let expired = connection.expired_holds(now_ms()).await?;
        if expired.is_empty() {
            return Ok(());
        }
        let count = expired.len();
        let commands = expired.into_iter().map(|(hold_id, account_id)| Command::ReleaseHold {
            hold_id,
            account_id,
            operator: SYSTEM_OPERATOR.into(),
            expired: true,
        });
        self.process(connection, own_batch(commands), stats).await?;
        tracing::info!(count, "holds expired and released");
        Ok(())
    }

    async fn process(
        &mut self,
        connection: &mut WriterStore,
        batch: Vec<WriteRequest>,
        stats: &WriterStats,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats.requests.fetch_add(batch.len() as u64, Ordering::Relaxed);
        let bucket = (usize::BITS - batch.len().leading_zeros()).saturating_sub(1) as usize;
        stats.batch_size_buckets[bucket.min(15)].fetch_add(1, Ordering::Relaxed);
        metrics::histogram!("ledger_batch_size").record(batch.len() as f64);

        let started = std::time::Instant::now();
        match self.prepare(connection, &batch).await {
            Ok(()) => {}
            Err(error) => {
                reply_all(batch, WriteOutcome::Unavailable);
                return Err(error);
            }
        }
        let keys: Vec<&IdempotencyKey> =
            batch.iter().filter_map(|r| r.idempotency.as_ref().map(|(key, _)| key)).collect();
        // Keys stored before: looked up first, unless the commit finds them
        // itself (PostgreSQL). Almost every key is new, so there the batch is
        // applied as if none were taken, and only when the commit finds one
        // is the batch undone, its keys looked up, and the batch applied again.
        let mut look_up = !keys.is_empty() && !connection.finds_taken_keys();
        let mut stored = HashMap::new();
        let prepared = started.elapsed();
        let touched: HashSet<&str> =
            batch.iter().flat_map(|r| r.command.accounts()).chain(self.system.iter().map(String::as_str)).collect();
        let originals: HashSet<&str> = batch.iter().filter_map(|r| r.command.original()).collect();
        let changes_regions = batch.iter().any(|r| r.command.changes_regions());
        let holds: HashSet<&str> = batch
            .iter()
            .filter_map(|r| match &r.command {
                Command::PlaceHold { hold } => Some(hold.id.as_str()),
                command => command.hold(),
            })
            .collect();
        let adjustments: HashSet<&str> = batch
            .iter()
            .filter_map(|r| match &r.command {
                Command::ProposeAdjustment { adjustment } => Some(adjustment.id.as_str()),
                command => command.adjustment(),
            })
            .collect();
        let applied = loop {
            if look_up {
                match connection.idempotent_responses(&keys).await {
                    Ok(found) => stored = found,
                    Err(error) => {
                        reply_all(batch, WriteOutcome::Unavailable);
                        return Err(error);
                    }
                }
            }
            let mut snapshot = self.ledger.with_originals(self.ledger.snapshot(&touched), originals.iter().copied());
            snapshot = self.ledger.with_adjustments(snapshot, adjustments.iter().copied());
            snapshot = self.ledger.with_holds(snapshot, holds.iter().copied());
            if changes_regions {
                snapshot = self.ledger.with_regions(snapshot);
            }
            let applied = Self::apply_batch(&mut self.ledger, &batch, &stored, now);
            if let Err(violation) = self.ledger.verify_batch(&snapshot, &applied.write.transfers) {
                // A bug, never a client's doing: refuse the whole batch rather than
                // write a ledger that does not balance.
                tracing::error!(%violation, "ledger invariant violated: batch refused");
                self.ledger.restore(snapshot);
                reply_all(batch, WriteOutcome::Unavailable);
                return Ok(());
            }
            if applied.write.is_empty() {
                break applied;
            }
            match connection.commit(&applied.write, now).await {
                Ok(()) => break applied,
                Err(StoreError::KeysTaken) if !look_up => {
                    // Nothing of the batch stayed: undo it in memory too, and
                    // apply it again knowing the stored answers.
                    metrics::counter!("ledger_batch_key_retries_total").increment(1);
                    self.ledger.restore(snapshot);
                    look_up = true;
                }
                Err(error) => {
                    // The commit may or may not have happened: forget the cache,
                    // so the next writer reads the truth from the database.
                    self.ledger = Ledger::default();
                    reply_all(batch, WriteOutcome::Unavailable);
                    return Err(error);
                }
            }
        };
        let committed = started.elapsed();
        tracing::debug!(size = batch.len(), ?prepared, ?committed, "batch");
        metrics::histogram!("ledger_batch_duration_seconds").record(committed.as_secs_f64());
        metrics::counter!("ledger_transfers_total").increment(applied.write.transfers.len() as u64);
        for code in applied.refusals {
            metrics::counter!("ledger_refusals_total", "code" => code).increment(1);
        }
        for (request, outcome) in batch.into_iter().zip(applied.outcomes) {
            let _ = request.reply.send(outcome);
        }
        if self.ledger.accounts.len() > self.config.cache_accounts_max {
            let system: HashSet<&LedgerAccountId> = self.system.iter().collect();
            self.ledger.accounts.retain(|id, _| system.contains(id));
        }
        if self.ledger.originals.len() > self.config.cache_accounts_max {
            self.ledger.originals.clear();
        }
        if self.ledger.adjustments.len() > self.config.cache_accounts_max {
            self.ledger.adjustments.clear();
        }
        if self.ledger.holds.len() > self.config.cache_accounts_max {
            self.ledger.holds.clear();
        }
        Ok(())
    }

    /// Applies the batch's requests in order to the in-memory ledger, given
    /// the responses `stored` for keys used before: what to write, and each
    /// request's outcome (in the batch's order).
    fn apply_batch(
        ledger: &mut Ledger,
        batch: &[WriteRequest],
        stored: &HashMap<IdempotencyKey, (String, StoredResponse)>,
        now: i64,
    ) -> Applied {
        let mut write = BatchWrite::default();
        // Wallets changed without a transfer: freezes, holds.
        let mut frozen: Vec<LedgerAccountId> = Vec::new();
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut refusals = Vec::new();
        // A key used earlier in this batch: its place in `write.idempotency`.
        let mut in_batch: HashMap<&IdempotencyKey, usize> = HashMap::new();
        for request in batch {
            if let Some((key, fingerprint)) = &request.idempotency {
                let earlier = stored.get(key).map(|(f, response)| (f, response)).or_else(|| {
                    in_batch.get(key).map(|&at| {
                        let (_, f, response) = &write.idempotency[at];
                        (f, response)
                    })
                });
                if let Some((earlier_fingerprint, response)) = earlier {
                    outcomes.push(if earlier_fingerprint == fingerprint {
                        WriteOutcome::Response(response.clone())
                    } else {
                        WriteOutcome::KeyReused
                    });
                    continue;
                }
            }
            let before = crate::audit::before(ledger, &request.command, now);
            let outcome = ledger.apply(&request.command, &request.initiator, now);
            let response = view::render(&request.command, &outcome, ledger, now);
            match outcome {
                Ok(transfers) => {
                    write.audit.extend(crate::audit::draft(
                        &request.command,
                        &request.initiator,
                        request.request_id.as_deref(),
                        before,
                        &response.body,
                        now,
                    ));
                    write.transfers.extend(transfers);
                    match &request.command {
                        Command::SetFrozen { wallet, .. } => frozen.push(wallet.clone()),
                        Command::SetRegion { code, .. } => {
                            if let Some(rules) = ledger.regions.get(code) {
                                write.regions.retain(|changed| changed.code != *code);
                                write.regions.push(rules.clone());
                            }
                        }
                        Command::PlaceHold { hold: Hold { id, account_id, .. } }
                        | Command::ReleaseHold { hold_id: id, account_id, .. }
                        | Command::ReturnHold { hold_id: id, account_id, .. } => {
                            frozen.push(account_id.clone());
                            if let Some(hold) = ledger.holds.get(id) {
                                write.holds.retain(|changed| &changed.id != id);
                                write.holds.push(hold.clone());
                            }
                        }
                        Command::ProposeAdjustment { adjustment: Adjustment { id, .. } }
                        | Command::DecideAdjustment { adjustment_id: id, .. }
                        | Command::ExpireAdjustment { adjustment_id: id, .. } => {
                            if let Some(adjustment) = ledger.adjustments.get(id) {
                                write.adjustments.retain(|changed| &changed.id != id);
                                write.adjustments.push(adjustment.clone());
                            }
                        }
                        _ => {}
                    }
                }
                Err(refusal) => refusals.push(refusal.code()),
            }
            if let Some((key, fingerprint)) = &request.idempotency {
                in_batch.insert(key, write.idempotency.len());
                write.idempotency.push((key.clone(), fingerprint.clone(), response.clone()));
            }
            outcomes.push(WriteOutcome::Response(response));
        }
        write.checkpoints = write.transfers.iter().flat_map(|t| t.checkpoints()).collect();
        let changed: HashSet<&LedgerAccountId> =
            write.transfers.iter().flat_map(|t| [&t.debit, &t.credit]).chain(frozen.iter()).collect();
        write.accounts = changed.into_iter().filter_map(|id| ledger.accounts.get(id).cloned()).collect();
        Applied { write, outcomes, refusals }
    }

    /// Loads what the batch needs and the cache lacks: regions, accounts
    /// (with their usage) and the transfers to be reversed.
    async fn prepare(&mut self, connection: &mut WriterStore, batch: &[WriteRequest]) -> Result<(), StoreError> {
        if self.regions_loaded.elapsed() >= REGIONS_RELOAD_EVERY {
            self.ledger.regions = connection.regions().await?;
            self.regions_loaded = std::time::Instant::now();
        }
        let missing: Vec<LedgerAccountId> = batch
            .iter()
            .flat_map(|r| r.command.accounts())
            .filter(|id| !self.ledger.accounts.contains_key(*id))
            .collect::<HashSet<_>>()
            .into_iter()
            .map(str::to_owned)
            .collect();
        let originals: Vec<String> = batch
            .iter()
            .filter_map(|r| r.command.original())
            .filter(|id| !self.ledger.originals.contains_key(*id))
            .collect::<HashSet<_>>()
            .into_iter()
            .map(str::to_owned)
            .collect();
        if !originals.is_empty() {
            self.ledger.originals.extend(connection.originals(&originals).await?);
        }
        let adjustments: Vec<String> = batch
            .iter()
            .filter_map(|r| r.command.adjustment())
            .filter(|id| !self.ledger.adjustments.contains_key(*id))
            .collect::<HashSet<_>>()
            .into_iter()
            .map(str::to_owned)
            .collect();
        let holds: Vec<String> = batch
            .iter()
            .filter_map(|r| r.command.hold())
            .filter(|id| !self.ledger.holds.contains_key(*id))
            .collect::<HashSet<_>>()
            .into_iter()
            .map(str::to_owned)
            .collect();
        if !holds.is_empty() {
            let found = connection.holds(&holds).await?;
            self.ledger.holds.extend(found.into_iter().map(|hold| (hold.id.clone(), hold)));
        }
        if !adjustments.is_empty() {
            let found = connection.adjustments(&adjustments).await?;
            self.ledger.adjustments.extend(found.into_iter().map(|adjustment| (adjustment.id.clone(), adjustment)));
        }
        if !missing.is_empty() {
            for account in connection.accounts(&missing).await? {
                // A system account made after the writer started (a new
                // region's): every batch's snapshot covers it from now on.
                if account.kind != AccountKind::Wallet && !self.system.contains(&account.id) {
                    self.system.push(account.id.clone());
                }
                self.ledger.accounts.insert(account.id.clone(), account);
            }
        }
        Ok(())
    }
}

/// A batch of the writer's own (expiries), answered to nobody.
fn own_batch(commands: impl Iterator<Item = Command>) -> Vec<WriteRequest> {
    commands
        .map(|command| WriteRequest {
            command,
            initiator: SYSTEM_OPERATOR.into(),
            idempotency: None,
            request_id: None,
            reply: oneshot::channel().0,
        })
        .collect()
}

/// A batch applied in memory.
struct Applied {
    write: BatchWrite,
    /// One per request, in the batch's order.
    outcomes: Vec<WriteOutcome>,
    /// The codes of the requests the ledger refused.
    refusals: Vec<&'static str>,
}

fn reply_all(batch: Vec<WriteRequest>, outcome: WriteOutcome) {
    for request in batch {
        let _ = request.reply.send(outcome.clone());
    }
}
