//! Call records: SQL that runs unchanged on SQLite and PostgreSQL. A record
//! is written when the invite is accepted and completed as the call is
//! answered and ends, so a call acknowledged to its caller is never lost.

use courier_common::Database;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use courier_protocol::IcePolicy;
use courier_protocol::{CallId, HangupReason};

/// Whether a call id was ever used: ids are the caller's choice and must
/// name one call forever (ratings and stats refer to them).
pub async fn call_id_used(db: &Database, call_id: &CallId) -> Result<bool, sqlx::Error> {
    let row: Option<(i64,)> =
        sqlx::query_as("SELECT 1 FROM calls WHERE id = $1").bind(call_id.as_str()).fetch_optional(db.pool()).await?;
    Ok(row.is_some())
}

pub struct Started<'a> {
    pub call_id: &'a CallId,
    pub caller: &'a str,
    pub callee: &'a str,
    pub caller_device: &'a str,
    pub ice_policy: IcePolicy,
    pub at_ms: i64,
}

pub async fn record_start(db: &Database, call: Started<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO calls (id, caller_id, callee_id, caller_device, ice_policy, started_at) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
    )
    .bind(call.call_id.as_str())
    .bind(call.caller)
    .bind(call.callee)
    .bind(call.caller_device)
    .bind(match call.ice_policy {
        IcePolicy::All => "all",
        IcePolicy::Relay => "relay",
    })
    .bind(call.at_ms)
    .execute(db.pool())
    .await?;
    Ok(())
}

pub async fn record_answer(db: &Database, call_id: &CallId, device: &str, at_ms: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE calls SET answered_at = $2, answer_device = $3 WHERE id = $1 AND answered_at IS NULL")
        .bind(call_id.as_str())
        .bind(at_ms)
        .bind(device)
        .execute(db.pool())
        .await?;
    Ok(())
}

pub async fn record_end(
    db: &Database,
    call_id: &CallId,
    reason: HangupReason,
    answered_at_ms: Option<i64>,
    at_ms: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE calls SET ended_at = $2, end_reason = $3, answered_at = COALESCE(answered_at, $4) \
         WHERE id = $1 AND ended_at IS NULL",
    )
    .bind(call_id.as_str())
    .bind(at_ms)
    .bind(reason.as_str())
    .bind(answered_at_ms)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// Ends the records of calls a previous run left open (it was killed, so
/// their devices lost it too). Returns how many there were.
pub async fn close_dangling(db: &Database, reason: HangupReason, at_ms: i64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("UPDATE calls SET ended_at = $1, end_reason = $2 WHERE ended_at IS NULL")
        .bind(at_ms)
        .bind(reason.as_str())
        .execute(db.pool())
        .await?;
    Ok(done.rows_affected())
}

/// One call as its party sees it, with that party's own report.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct HistoryRow {
    pub id: String,
    pub caller_id: String,
    pub callee_id: String,
    pub started_at: i64,
    pub answered_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub end_reason: Option<String>,
    pub rating: Option<i64>,
    pub problems: Option<String>,
    pub comment: Option<String>,
    #[sqlx(flatten)]
    pub stats: Stats,
}

/// `account`'s calls, newest first, after the position `(started_at, id)`.
pub async fn history(
    db: &Database,
    account: &str,
    after: Option<(i64, String)>,
    limit: u32,
) -> Result<Vec<HistoryRow>, sqlx::Error> {
    let (before_ms, before_id) = after.unwrap_or((i64::MAX, String::new()));
    sqlx::query_as(
        "SELECT c.id, c.caller_id, c.callee_id, c.started_at, c.answered_at, c.ended_at, c.end_reason, \
                r.rating, r.problems, r.comment, r.rtt_ms, r.jitter_ms, r.packet_loss_pct, r.bitrate_kbps, \
                r.candidate_type, r.setup_ms, r.playout_delay_ms, r.late_frames, r.concealed_frames \
         FROM calls c LEFT JOIN call_reports r ON r.call_id = c.id AND r.account_id = $1 \
         WHERE (c.caller_id = $1 OR c.callee_id = $1) \
           AND (c.started_at < $2 OR (c.started_at = $2 AND ($3 = '' OR c.id < $3))) \
         ORDER BY c.started_at DESC, c.id DESC LIMIT $4",
    )
    .bind(account)
    .bind(before_ms)
    .bind(before_id)
    .bind(i64::from(limit) + 1)
    .fetch_all(db.pool())
    .await
}

/// Whether `account` is a party of `call_id` (false also when there is no such call).
pub async fn is_party(db: &Database, call_id: &str, account: &str) -> Result<bool, sqlx::Error> {
    let row: Option<(i64,)> =
        sqlx::query_as("SELECT 1 FROM calls WHERE id = $1 AND (caller_id = $2 OR callee_id = $2)")
            .bind(call_id)
            .bind(account)
            .fetch_optional(db.pool())
            .await?;
    Ok(row.is_some())
}

pub struct Rating<'a> {
    pub rating: i64,
    pub problems: &'a [String],
    pub comment: Option<&'a str>,
}

/// Sets (or changes) `account`'s rating of a call it was a party of.
pub async fn rate(
    db: &Database,
    call_id: &str,
    account: &str,
    rating: Rating<'_>,
    at_ms: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO call_reports (call_id, account_id, rating, problems, comment, rated_at) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (call_id, account_id) DO UPDATE SET rating = excluded.rating, problems = excluded.problems, \
             comment = excluded.comment, rated_at = excluded.rated_at",
    )
    .bind(call_id)
    .bind(account)
    .bind(rating.rating)
    .bind(rating.problems.join(","))
    .bind(rating.comment)
    .bind(at_ms)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// A client's end-of-call figures (the body of `POST /v1/calls/{id}/stats`,
/// and what history shows of them).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
#[serde(deny_unknown_fields)]
pub struct Stats {
    #[schema(minimum = 0, maximum = 600_000)]
    pub rtt_ms: Option<f64>,
    #[schema(minimum = 0, maximum = 600_000)]
    pub jitter_ms: Option<f64>,
    #[schema(minimum = 0, maximum = 100)]
    pub packet_loss_pct: Option<f64>,
    #[schema(minimum = 0, maximum = 100_000)]
    pub bitrate_kbps: Option<f64>,
    /// The selected ICE candidate's type.
    #[schema(value_type = Option<CandidateType>)]
    pub candidate_type: Option<String>,
    #[schema(minimum = 0, maximum = 600_000)]
    pub setup_ms: Option<f64>,
    /// The jitter buffer's delay at the end of the call.
    #[schema(minimum = 0, maximum = 600_000)]
    pub playout_delay_ms: Option<f64>,
    /// Packets that came after their turn to play.
    #[serde(default, deserialize_with = "courier_common::json::optional_integer")]
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    pub late_frames: Option<i64>,
    /// Frames concealed: lost with no FEC at hand, or not there in time.
    #[serde(default, deserialize_with = "courier_common::json::optional_integer")]
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    pub concealed_frames: Option<i64>,
}

/// The types of ICE candidate (RFC 8445), as `Stats::candidate_type` takes them.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum CandidateType {
    Host,
    Srflx,
    Prflx,
    Relay,
}

pub async fn record_stats(
    db: &Database,
    call_id: &str,
    account: &str,
    stats: &Stats,
    at_ms: i64,
) -> Result<(), sqlx::Error> {
    // The figures go as text, cast by the database: sqlx's Any driver
    // declares a missing f64 as a 4-byte float to PostgreSQL, and the
    // connection's prepared statement then refuses the 8-byte value of a
    // later report ("incorrect binary data format"). Rust writes an f64 as
    // the shortest text that reads back to the same value.
    let figure = |value: Option<f64>| value.map(|value| value.to_string());
    sqlx::query(
        "INSERT INTO call_reports (call_id, account_id, rtt_ms, jitter_ms, packet_loss_pct, bitrate_kbps, \
             candidate_type, setup_ms, stats_at, playout_delay_ms, late_frames, concealed_frames) \
         VALUES ($1, $2, CAST($3 AS DOUBLE PRECISION), CAST($4 AS DOUBLE PRECISION), \
             CAST($5 AS DOUBLE PRECISION), CAST($6 AS DOUBLE PRECISION), $7, CAST($8 AS DOUBLE PRECISION), $9, \
             CAST($10 AS DOUBLE PRECISION), CAST($11 AS BIGINT), CAST($12 AS BIGINT)) \
         ON CONFLICT (call_id, account_id) DO UPDATE SET rtt_ms = excluded.rtt_ms, jitter_ms = excluded.jitter_ms, \
             packet_loss_pct = excluded.packet_loss_pct, bitrate_kbps = excluded.bitrate_kbps, \
             candidate_type = excluded.candidate_type, setup_ms = excluded.setup_ms, stats_at = excluded.stats_at, \
             playout_delay_ms = excluded.playout_delay_ms, late_frames = excluded.late_frames, \
             concealed_frames = excluded.concealed_frames",
    )
    .bind(call_id)
    .bind(account)
    .bind(figure(stats.rtt_ms))
    .bind(figure(stats.jitter_ms))
    .bind(figure(stats.packet_loss_pct))
    .bind(figure(stats.bitrate_kbps))
    .bind(stats.candidate_type.as_deref())
    .bind(figure(stats.setup_ms))
    .bind(at_ms)
    .bind(figure(stats.playout_delay_ms))
    .bind(stats.late_frames.map(|count| count.to_string()))
    .bind(stats.concealed_frames.map(|count| count.to_string()))
    .execute(db.pool())
    .await?;
    Ok(())
}

/// Call records (with their parties' ratings and figures) deleted per
/// statement, so that a long backlog never holds the database's write lock
/// for long.
const PURGE_CHUNK: i64 = 5_000;

/// Deletes the records of calls that started before `cutoff_ms` and have
/// ended, with their reports, and records the run in the audit log (one
/// entry per run, by `system`, in the transaction of the last deletion).
/// Returns how many calls were deleted.
pub async fn purge_call_records(db: &Database, cutoff_ms: i64, retention_days: u64) -> Result<u64, sqlx::Error> {
    let mut deleted = 0u64;
    loop {
        let mut transaction = db.pool().begin().await?;
        let ids: Vec<(String,)> = sqlx::query_as(
            "SELECT id FROM calls WHERE started_at < $1 AND ended_at IS NOT NULL ORDER BY started_at LIMIT $2",
        )
        .bind(cutoff_ms)
        .bind(PURGE_CHUNK)
        .fetch_all(&mut *transaction)
        .await?;
        let last = (ids.len() as i64) < PURGE_CHUNK;
        if !ids.is_empty() {
            let list = courier_common::db::placeholders(1, ids.len());
            for table_sql in [
                format!("DELETE FROM call_reports WHERE call_id IN ({list})"),
                format!("DELETE FROM calls WHERE id IN ({list})"),
            ] {
                let mut query = sqlx::query(&table_sql);
                for (id,) in &ids {
                    query = query.bind(id);
                }
                query.execute(&mut *transaction).await?;
            }
            deleted += ids.len() as u64;
        }
        if last {
            let after = serde_json::json!({
                "deleted_calls": deleted,
                "started_before": courier_common::time::rfc3339(cutoff_ms),
                "retention_days": retention_days,
            });
            let draft = courier_common::audit::Draft {
                at_ms: courier_common::time::now_ms(),
                operator: "system".into(),
                action: "call_records_purge".into(),
                target: "calls".into(),
                request_id: None,
                before: None,
                after: Some(after.to_string()),
            };
            courier_common::audit::append(db.backend(), &mut transaction, vec![draft]).await?;
        }
        transaction.commit().await?;
        if last {
            return Ok(deleted);
        }
    }
}

/// How often the retention task runs.
pub const PURGE_EVERY: std::time::Duration = std::time::Duration::from_secs(3_600);

/// Deletes call records older than `retention_days` every `every` (the
/// first time `every` after the start, so that a restart does not add a run)
/// until `shutdown`; `0` keeps them forever (no task).
pub async fn purge_call_records_periodically(
    db: Database,
    retention_days: u64,
    every: std::time::Duration,
    shutdown: courier_common::shutdown::CancellationToken,
) {
    if retention_days == 0 {
        return;
    }
    let retention_ms = i64::try_from(retention_days.saturating_mul(24 * 3_600 * 1_000)).unwrap_or(i64::MAX);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let cutoff = courier_common::time::now_ms().saturating_sub(retention_ms);
        match purge_call_records(&db, cutoff, retention_days).await {
            Ok(deleted) => tracing::info!(deleted, retention_days, "deleted call records past their retention"),
            Err(error) => tracing::warn!(%error, "cannot delete old call records; trying again later"),
        }
    }
}
