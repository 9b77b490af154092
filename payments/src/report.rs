//! What the finance team reads: the daily report of a region and the
//! reconciliation of the whole ledger. Each reads one snapshot of the
//! database ([`Database::snapshot`]) while the writer keeps committing, so
//! that its figures add up to one moment.

use courier_common::{Backend, Database};
use jiff::civil::Date;
use sqlx::AnyConnection;

use crate::ledger::{SYSTEM_ACCOUNT_PREFIX, TransferKind};
use crate::region::RegionRules;

/// How many transfers (or holds) and how much they moved, in minor units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub count: i64,
    pub volume_minor: i64,
}

impl Tally {
    fn add(&mut self, count: i64, volume_minor: i64) {
        self.count += count;
        self.volume_minor += volume_minor;
    }
}

/// One currency's day in a region.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CurrencyDay {
    pub currency: String,
    pub p2p: Tally,
    /// Fees charged (from wallets to the region's fee revenue).
    pub fees: Tally,
    /// Fees given back with reversals.
    pub fee_refunds: Tally,
    pub deposits: Tally,
    pub withdrawals: Tally,
    pub reversals: Tally,
    /// Approved adjustments that credited a wallet, and that debited one.
    pub adjustments_credited: Tally,
    pub adjustments_debited: Tally,
    pub holds_placed: Tally,
    pub holds_returned: Tally,
    /// The sum of the region's wallets as the day began and as it ended.
    pub opening_wallets_minor: i64,
    pub closing_wallets_minor: i64,
    /// Wallets that sent at least one P2P transfer that day.
    pub distinct_senders: i64,
}

/// A region's local day, `[from_ms, to_ms)`, and what happened in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Day {
    pub date: Date,
    pub from_ms: i64,
    pub to_ms: i64,
    pub currencies: Vec<CurrencyDay>,
}

/// The UTC bounds of `date` in the region's time zone: from its first
/// moment to the next day's (23 or 25 hours on days the clocks change).
pub fn local_day(rules: &RegionRules, date: Date) -> Option<(i64, i64)> {
    let zone = rules.zone();
    let start = date.to_zoned(zone.clone()).ok()?.timestamp().as_millisecond();
    let end = date.tomorrow().ok()?.to_zoned(zone).ok()?.timestamp().as_millisecond();
    Some((start, end))
}

/// Where a transfer moved money: from the region's system accounts into
/// wallets (`in`), from wallets out to them (`out`), or between wallets.
fn direction_sql() -> String {
    let system = format!("'{SYSTEM_ACCOUNT_PREFIX}%'");
    format!(
        "CASE WHEN debit_account LIKE {system} THEN 'in' WHEN credit_account LIKE {system} THEN 'out' ELSE 'between' END"
    )
}

/// The region's daily report for `date`, read from one snapshot.
pub async fn daily(db: &Database, rules: &RegionRules, date: Date) -> Result<Option<Day>, sqlx::Error> {
    let Some((from_ms, to_ms)) = local_day(rules, date) else { return Ok(None) };
    let region = rules.code.as_str();
    let mut snapshot = db.snapshot().await?;
    let mut days: Vec<CurrencyDay> = Vec::new();
    fn day<'a>(days: &'a mut Vec<CurrencyDay>, currency: &str) -> &'a mut CurrencyDay {
        match days.iter().position(|d| d.currency == currency) {
            Some(at) => &mut days[at],
            None => {
                days.push(CurrencyDay { currency: currency.to_owned(), ..CurrencyDay::default() });
                days.last_mut().expect("just pushed")
            }
        }
    }
    day(&mut days, rules.currency.code());

    // The day's transfers by kind and direction, and the distinct senders
    // of P2P transfers. SQLite groups by sorting, so the senders are counted
    // in the same pass; PostgreSQL groups by hashing, which a
    // COUNT(DISTINCT …) would turn into a sort of the whole day, so it
    // counts them in a second, hashed, statement (0.65 s instead of 1.0 s
    // over a day of a million transfers; BENCHMARKS.md).
    let one_pass = db.backend() == Backend::Sqlite;
    let senders_sql = if one_pass { "COUNT(DISTINCT CASE WHEN kind = 'p2p' THEN debit_account END)" } else { "0" };
    let by_kind = format!(
        "SELECT currency, kind, {direction} AS direction, COUNT(*), CAST(COALESCE(SUM(amount), 0) AS BIGINT), \
           {senders_sql} \
         FROM transfers WHERE region = $1 AND created_at >= $2 AND created_at < $3 \
         GROUP BY currency, kind, {direction}",
        direction = direction_sql()
    );
    let rows: Vec<(String, String, String, i64, i64, i64)> =
        sqlx::query_as(&by_kind).bind(region).bind(from_ms).bind(to_ms).fetch_all(&mut *snapshot).await?;
    let mut day_net: Vec<(String, i64)> = Vec::new();
    for (currency, kind, direction, count, volume, senders) in rows {
        let d = day(&mut days, &currency);
        d.distinct_senders += senders;
        match (TransferKind::parse(&kind), direction.as_str()) {
            (Some(TransferKind::P2p), _) => d.p2p.add(count, volume),
            (Some(TransferKind::Fee), "in") => d.fee_refunds.add(count, volume),
            (Some(TransferKind::Fee), _) => d.fees.add(count, volume),
            (Some(TransferKind::Deposit), _) => d.deposits.add(count, volume),
            (Some(TransferKind::Withdrawal), _) => d.withdrawals.add(count, volume),
            (Some(TransferKind::Reversal), _) => d.reversals.add(count, volume),
            (Some(TransferKind::Adjustment), "in") => d.adjustments_credited.add(count, volume),
            (Some(TransferKind::Adjustment), _) => d.adjustments_debited.add(count, volume),
            (None, _) => {}
        }
        add_net(&mut day_net, &currency, into_wallets(&direction, volume));
    }
    if !one_pass {
        let senders: Vec<(String, i64)> = sqlx::query_as(
            "SELECT currency, COUNT(*) FROM (SELECT DISTINCT currency, debit_account FROM transfers \
               WHERE region = $1 AND kind = 'p2p' AND created_at >= $2 AND created_at < $3) AS senders \
             GROUP BY currency",
        )
        .bind(region)
        .bind(from_ms)
        .bind(to_ms)
        .fetch_all(&mut *snapshot)
        .await?;
        for (currency, count) in senders {
            day(&mut days, &currency).distinct_senders = count;
        }
    }

    // The wallets' totals now, less what moved into them since the day ended.
    let since = format!(
        "SELECT currency, {direction} AS direction, CAST(COALESCE(SUM(amount), 0) AS BIGINT) \
         FROM transfers WHERE region = $1 AND created_at >= $2 GROUP BY currency, {direction}",
        direction = direction_sql()
    );
    let rows: Vec<(String, String, i64)> =
        sqlx::query_as(&since).bind(region).bind(to_ms).fetch_all(&mut *snapshot).await?;
    let mut after_net: Vec<(String, i64)> = Vec::new();
    for (currency, direction, volume) in rows {
        add_net(&mut after_net, &currency, into_wallets(&direction, volume));
    }
    let totals: Vec<(String, i64)> = sqlx::query_as(
        "SELECT currency, CAST(COALESCE(SUM(balance), 0) AS BIGINT) FROM ledger_accounts \
         WHERE region = $1 AND kind = 'wallet' GROUP BY currency",
    )
    .bind(region)
    .fetch_all(&mut *snapshot)
    .await?;
    for (currency, total) in totals {
        day(&mut days, &currency).closing_wallets_minor = total;
    }
    for d in &mut days {
        d.closing_wallets_minor -= net_of(&after_net, &d.currency);
        d.opening_wallets_minor = d.closing_wallets_minor - net_of(&day_net, &d.currency);
    }

    // Holds placed that day, and holds returned (to the claimant) that day.
    let holds: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT currency, \
           SUM(CASE WHEN placed_at >= $2 AND placed_at < $3 THEN 1 ELSE 0 END), \
           CAST(COALESCE(SUM(CASE WHEN placed_at >= $2 AND placed_at < $3 THEN amount ELSE 0 END), 0) AS BIGINT), \
           SUM(CASE WHEN status = 'returned' AND decided_at >= $2 AND decided_at < $3 THEN 1 ELSE 0 END), \
           CAST(COALESCE(SUM(CASE WHEN status = 'returned' AND decided_at >= $2 AND decided_at < $3 THEN amount ELSE 0 END), 0) AS BIGINT) \
         FROM holds WHERE region = $1 AND (placed_at >= $2 AND placed_at < $3 OR decided_at >= $2 AND decided_at < $3) \
         GROUP BY currency",
    )
    .bind(region)
    .bind(from_ms)
    .bind(to_ms)
    .fetch_all(&mut *snapshot)
    .await?;
    for (currency, placed, placed_minor, returned, returned_minor) in holds {
        let d = day(&mut days, &currency);
        d.holds_placed.add(placed, placed_minor);
        d.holds_returned.add(returned, returned_minor);
    }
    snapshot.commit().await?;
    days.sort_by(|a, b| a.currency.cmp(&b.currency));
    Ok(Some(Day { date, from_ms, to_ms, currencies: days }))
}

/// What a direction's volume did to the wallets' total.
fn into_wallets(direction: &str, volume: i64) -> i64 {
    match direction {
        "in" => volume,
        "out" => -volume,
        _ => 0,
    }
}

fn add_net(nets: &mut Vec<(String, i64)>, currency: &str, minor: i64) {
    match nets.iter_mut().find(|(c, _)| c == currency) {
        Some((_, net)) => *net += minor,
        None => nets.push((currency.to_owned(), minor)),
    }
}

fn net_of(nets: &[(String, i64)], currency: &str) -> i64 {
    nets.iter().find(|(c, _)| c == currency).map_or(0, |(_, net)| *net)
}

/// An account whose stored balance is not what its transfers add up to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub account_id: String,
    /// `None` for an account that transfers name but the ledger lacks.
    pub currency: Option<String>,
    pub stored_minor: i64,
    pub computed_minor: i64,
}

/// The whole ledger checked at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconciliation {
    /// Per currency, the sum of every balance (zero when the ledger balances).
    pub trial_balance: Vec<(String, i64)>,
    pub mismatches: Vec<Mismatch>,
}

impl Reconciliation {
    pub fn balanced(&self) -> bool {
        self.mismatches.is_empty() && self.trial_balance.iter().all(|(_, total)| *total == 0)
    }
}

/// The trial balance and every stored-versus-computed difference, from one
/// snapshot: a batch the writer commits meanwhile is in both or in neither.
pub async fn reconcile(db: &Database) -> Result<Reconciliation, sqlx::Error> {
    let mut snapshot = db.snapshot().await?;
    let trial_balance = trial_balance(&mut snapshot).await?;
    let mismatches = balance_mismatches(&mut snapshot).await?;
    snapshot.commit().await?;
    Ok(Reconciliation { trial_balance, mismatches })
}

/// Per currency, the sum of all balances.
async fn trial_balance(connection: &mut AnyConnection) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT currency, CAST(COALESCE(SUM(balance), 0) AS BIGINT) FROM ledger_accounts GROUP BY currency ORDER BY currency",
    )
    .fetch_all(connection)
    .await
}

/// Accounts whose stored balance differs from the sum of their transfers,
/// in one pass over the transfers. An account that transfers name but
/// `ledger_accounts` lacks is always listed, with a stored balance of 0
/// (transfers carry no foreign keys: the writer checks their accounts, and
/// this is where a break would show).
async fn balance_mismatches(connection: &mut AnyConnection) -> Result<Vec<Mismatch>, sqlx::Error> {
    let rows: Vec<(String, Option<String>, i64, i64)> = sqlx::query_as(
        "SELECT COALESCE(a.id, moved.account) AS account, a.currency, CAST(COALESCE(a.balance, 0) AS BIGINT), \
           CAST(COALESCE(moved.net, 0) AS BIGINT) \
         FROM ledger_accounts a FULL OUTER JOIN ( \
           SELECT account, SUM(delta) AS net FROM ( \
             SELECT credit_account AS account, amount AS delta FROM transfers \
             UNION ALL SELECT debit_account, -amount FROM transfers \
           ) AS postings GROUP BY account \
         ) AS moved ON moved.account = a.id \
         WHERE a.id IS NULL OR a.balance <> COALESCE(moved.net, 0) ORDER BY account",
    )
    .fetch_all(connection)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(account_id, currency, stored_minor, computed_minor)| Mismatch {
            account_id,
            currency,
            stored_minor,
            computed_minor,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::RegionCode;

    #[test]
    fn a_local_day_crosses_utc_midnight() {
        let ru = RegionRules::default_for(RegionCode::Ru);
        let (from, to) = local_day(&ru, jiff::civil::date(2026, 12, 6)).unwrap();
        assert_eq!(courier_common::time::rfc3339(from), "2026-12-05T21:00:00.000Z");
        assert_eq!(courier_common::time::rfc3339(to), "2026-12-06T21:00:00.000Z");
        let br = RegionRules::default_for(RegionCode::Br);
        let (from, to) = local_day(&br, jiff::civil::date(2026, 12, 6)).unwrap();
        assert_eq!(courier_common::time::rfc3339(from), "2026-12-06T03:00:00.000Z");
        assert_eq!(courier_common::time::rfc3339(to), "2026-12-07T03:00:00.000Z");
    }
}
