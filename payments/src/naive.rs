//! The naive baseline the ledger benchmark compares the writer against
//! (`courier bench ledger`): one database transaction per transfer that
//! locks both wallets, checks funds, freezes and the sender's limits, moves
//! the money and records the transfer with its idempotency key, on the
//! ledger's own schema. It lives here, beside the writer, so that the
//! ledger's SQL stays in one crate; it is built only with the
//! `naive-baseline` feature.

use courier_common::{Backend, Database};
use sqlx::{AnyConnection, Executor};

use crate::ledger::Usage;
use crate::region::{RegionCode, RegionRules};

/// One transfer the naive way: one transaction that locks both wallets,
/// checks funds, freezes and the sender's day and month totals, moves the
/// money and records the transfer and its idempotency key.
pub async fn transfer(database: &Database, from: &str, to: &str, amount: i64) -> Result<(), String> {
    let mut connection = database.pool().acquire().await.map_err(|e| e.to_string())?;
    let connection: &mut AnyConnection = &mut connection;
    let postgres = database.backend() == Backend::Postgres;
    connection.execute(if postgres { "BEGIN" } else { "BEGIN IMMEDIATE" }).await.map_err(|e| e.to_string())?;
    let result = naive_body(connection, postgres, from, to, amount).await;
    let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    connection.execute(end).await.map_err(|e| e.to_string())?;
    result
}

async fn naive_body(
    connection: &mut AnyConnection,
    postgres: bool,
    from: &str,
    to: &str,
    amount: i64,
) -> Result<(), String> {
    let lock = format!(
        "SELECT id, balance, frozen, last_transfer, usage_day_start, usage_day, usage_month_start, usage_month \
         FROM ledger_accounts WHERE id IN ($1, $2) ORDER BY id{}",
        if postgres { " FOR UPDATE" } else { "" }
    );
    type Row = (String, i64, i64, Option<String>, i64, i64, Option<i64>, i64);
    let rows: Vec<Row> =
        sqlx::query_as(&lock).bind(from).bind(to).fetch_all(&mut *connection).await.map_err(|e| e.to_string())?;
    let sender = rows.iter().find(|r| r.0 == from).ok_or("no sender wallet")?;
    let recipient = rows.iter().find(|r| r.0 == to).ok_or("no recipient wallet")?;
    if rows.iter().any(|r| r.2 == 1) || sender.1 < amount {
        return Err("refused".into());
    }
    let now = courier_common::time::now_ms();
    let rules = RegionRules::default_for(RegionCode::Ru);
    let windows = rules.windows(now);
    // The sender's totals, kept on its row and rolled to the current windows
    // as the ledger writer does.
    let mut usage = Usage {
        day_start_ms: sender.4,
        day_minor: sender.5,
        month_start_ms: sender.6.unwrap_or(0),
        month_minor: sender.7,
        ..Usage::default()
    };
    usage.roll(windows);
    if amount > rules.per_transfer_max_minor
        || usage.day_minor + amount > rules.daily_max_minor
        || usage.month_minor + amount > rules.monthly_max_minor
    {
        return Err("limit".into());
    }
    let id = uuid::Uuid::now_v7().to_string();
    sqlx::query(
        "UPDATE ledger_accounts SET balance = balance - $2, last_transfer = $3, usage_day_start = $4, usage_day = $5, \
         usage_month_start = $6, usage_month = $7 WHERE id = $1",
    )
    .bind(from)
    .bind(amount)
    .bind(&id)
    .bind(usage.day_start_ms)
    .bind(usage.day_minor + amount)
    .bind(usage.month_start_ms)
    .bind(usage.month_minor + amount)
    .execute(&mut *connection)
    .await
    .map_err(|e| e.to_string())?;
    sqlx::query("UPDATE ledger_accounts SET balance = balance + $2, last_transfer = $3 WHERE id = $1")
        .bind(to)
        .bind(amount)
        .bind(&id)
        .execute(&mut *connection)
        .await
        .map_err(|e| e.to_string())?;
    sqlx::query(
        "INSERT INTO transfers (id, kind, debit_account, credit_account, amount, fee, currency, region, initiator, \
         created_at, debit_prev, credit_prev) VALUES ($1, 'p2p', $2, $3, $4, 0, 'RUB', 'RU', $5, $6, $7, $8)",
    )
    .bind(&id)
    .bind(from)
    .bind(to)
    .bind(amount)
    .bind(from)
    .bind(now)
    .bind(sender.3.as_deref())
    .bind(recipient.3.as_deref())
    .execute(&mut *connection)
    .await
    .map_err(|e| e.to_string())?;
    sqlx::query("INSERT INTO idempotency_keys (scope, key, fingerprint, status, body, created_at) VALUES ($1, $2, '', 201, '{}', $3)")
        .bind(format!("account:{from}"))
        .bind(&id)
        .bind(now)
        .execute(&mut *connection)
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}
