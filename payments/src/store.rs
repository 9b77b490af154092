//! Ledger storage: SQL that runs unchanged on SQLite and PostgreSQL. Reads go
//! through the pool concurrently; only the writer task writes balances and
//! transfers, through its own connection ([`crate::writer::store`]), with the
//! statements of its database and the column lists and rows shared here.

use courier_common::Database;

use crate::ledger::{
    AccountKind, Adjustment, AdjustmentStatus, FreezeNote, Hold, HoldStatus, LedgerAccount, Transfer, TransferKind,
    Usage,
};
use crate::money::Currency;
use crate::region::{FeeRule, RegionCode, RegionRules, Windows};

pub(crate) use courier_common::db::placeholders;

pub(crate) type RegionRow =
    (String, i64, String, String, i64, i64, i64, Option<i64>, i64, i64, Option<i64>, Option<i64>, Option<i64>);

pub(crate) fn region_from_row(row: RegionRow) -> Option<RegionRules> {
    let (
        code,
        enabled,
        currency,
        time_zone,
        per_transfer,
        daily,
        monthly,
        night,
        night_start,
        night_end,
        free,
        rate,
        cap,
    ) = row;
    let fee = match (free, rate, cap) {
        (Some(free_monthly_minor), Some(rate_bp), Some(cap_minor)) => {
            FeeRule::FreeMonthlyThenRate { free_monthly_minor, rate_bp, cap_minor }
        }
        _ => FeeRule::None,
    };
    Some(RegionRules {
        code: RegionCode::parse(&code)?,
        enabled: enabled == 1,
        currency: Currency::parse(&currency)?,
        time_zone,
        per_transfer_max_minor: per_transfer,
        daily_max_minor: daily,
        monthly_max_minor: monthly,
        night_max_minor: night,
        night_start_hour: i8::try_from(night_start).ok()?,
        night_end_hour: i8::try_from(night_end).ok()?,
        fee,
    })
}

/// A region's changeable columns: enabled, per transfer, daily, monthly and
/// night limits, the night window's hours, and the fee rule's three columns
/// (free monthly, rate, cap: all `NULL` for no fee).
pub(crate) type RegionValues = (i64, i64, i64, i64, Option<i64>, i64, i64, [Option<i64>; 3]);

/// A region's rules as stored ([`RegionValues`]).
pub(crate) fn region_values(rules: &RegionRules) -> RegionValues {
    let fee = match rules.fee {
        FeeRule::None => [None, None, None],
        FeeRule::FreeMonthlyThenRate { free_monthly_minor, rate_bp, cap_minor } => {
            [Some(free_monthly_minor), Some(rate_bp), Some(cap_minor)]
        }
    };
    (
        i64::from(rules.enabled),
        rules.per_transfer_max_minor,
        rules.daily_max_minor,
        rules.monthly_max_minor,
        rules.night_max_minor,
        i64::from(rules.night_start_hour),
        i64::from(rules.night_end_hour),
        fee,
    )
}

pub(crate) const REGION_COLUMNS_SQL: &str = "SELECT code, enabled, currency, time_zone, per_transfer_max, daily_max, monthly_max, \
     night_max, night_start_hour, night_end_hour, fee_free_monthly, fee_rate_bp, fee_cap FROM regions ORDER BY code";

/// Every region's rules, from the database.
pub async fn regions(db: &Database) -> Result<Vec<RegionRules>, sqlx::Error> {
    let rows: Vec<RegionRow> = sqlx::query_as(REGION_COLUMNS_SQL).fetch_all(db.pool()).await?;
    Ok(rows.into_iter().filter_map(region_from_row).collect())
}

/// Creates the wallet of `account_id` if it has none; wallets are created on
/// first use, only for accounts of a supported region.
pub async fn ensure_wallet(
    db: &Database,
    account_id: &str,
    region: RegionCode,
    currency: Currency,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO ledger_accounts (id, kind, region, currency, created_at) VALUES ($1, 'wallet', $2, $3, $4) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(account_id)
    .bind(region.as_str())
    .bind(currency.code())
    .bind(courier_common::time::now_ms())
    .execute(db.pool())
    .await?;
    Ok(())
}

pub(crate) type AccountRow = (
    String,
    String,
    String,
    String,
    i64,
    i64,
    Option<String>,
    i64,
    i64,
    Option<i64>,
    i64,
    Option<i64>,
    i64,
    Option<String>,
    Option<String>,
    Option<i64>,
);

/// A wallet is frozen exactly while `frozen_at` is set (the `frozen` flag
/// is written alongside, for older readers).
pub(crate) const ACCOUNT_COLUMNS_SQL: &str = "SELECT id, kind, region, currency, balance, held, last_transfer, \
     usage_day_start, usage_day, usage_month_start, usage_month, usage_night_start, usage_night, frozen_reason, \
     frozen_by, frozen_at FROM ledger_accounts";

pub(crate) fn account_from_row(row: AccountRow) -> Option<LedgerAccount> {
    let (
        id,
        kind,
        region,
        currency,
        balance,
        held,
        last_transfer,
        day_start_ms,
        day_minor,
        month_start_ms,
        month_minor,
        night_start_ms,
        night_minor,
        frozen_reason,
        frozen_by,
        frozen_at,
    ) = row;
    Some(LedgerAccount {
        id,
        kind: AccountKind::parse(&kind)?,
        region: RegionCode::parse(&region)?,
        currency: Currency::parse(&currency)?,
        balance_minor: balance,
        held_minor: held,
        // Wallets frozen before reasons were kept show an empty one.
        frozen: frozen_at.map(|at_ms| FreezeNote {
            reason: frozen_reason.unwrap_or_default(),
            by: frozen_by.unwrap_or_default(),
            at_ms,
        }),
        last_transfer,
        // A month start not yet counted (only before the writer has counted
        // the wallets of migration 5) reads as an old window.
        usage: Usage {
            day_start_ms,
            day_minor,
            month_start_ms: month_start_ms.unwrap_or(0),
            month_minor,
            night_start_ms,
            night_minor,
        },
    })
}

pub async fn wallet(db: &Database, account_id: &str) -> Result<Option<LedgerAccount>, sqlx::Error> {
    let sql = format!("{ACCOUNT_COLUMNS_SQL} WHERE id = $1 AND kind = 'wallet'");
    let row: Option<AccountRow> = sqlx::query_as(&sql).bind(account_id).fetch_optional(db.pool()).await?;
    Ok(row.and_then(account_from_row))
}

/// The regions that have wallets whose usage is not counted yet: those
/// from before migration 5, which moved usage onto the account rows.
pub(crate) const USAGE_UNCOUNTED_SQL: &str =
    "SELECT region FROM ledger_accounts WHERE usage_month_start IS NULL GROUP BY region ORDER BY region";

/// Counts the uncounted wallets of region `$4` that have sent P2P since `$5`:
/// their totals in the windows that start at `$1` (day), `$2` (month) and
/// `$3` (night; `NULL` outside one, so that its total is zero). One pass over
/// the transfers of the period, by time.
pub(crate) const USAGE_COUNT_SQL: &str = "\
UPDATE ledger_accounts SET usage_day_start = $1, usage_month_start = $2, usage_night_start = $3, \
  usage_day = counted.day, usage_month = counted.month, usage_night = counted.night \
FROM ( \
  SELECT debit_account AS sender, \
    SUM(CASE WHEN created_at >= $1 THEN amount ELSE 0 END) AS day, \
    SUM(CASE WHEN created_at >= $2 THEN amount ELSE 0 END) AS month, \
    SUM(CASE WHEN created_at >= $3 THEN amount ELSE 0 END) AS night \
  FROM transfers WHERE kind = 'p2p' AND region = $4 AND created_at >= $5 GROUP BY debit_account \
) AS counted \
WHERE ledger_accounts.id = counted.sender AND ledger_accounts.usage_month_start IS NULL";

/// The rest of region `$4`'s uncounted wallets sent nothing in the windows
/// `$1`, `$2`, `$3` (the first four parameters of [`USAGE_COUNT_SQL`]).
pub(crate) const USAGE_ZERO_SQL: &str = "\
UPDATE ledger_accounts SET usage_day_start = $1, usage_month_start = $2, usage_night_start = $3, \
  usage_day = 0, usage_month = 0, usage_night = 0 \
WHERE usage_month_start IS NULL AND region = $4";

/// The earliest start of the three windows: `$5` of [`USAGE_COUNT_SQL`].
pub(crate) fn usage_since(windows: &Windows) -> i64 {
    windows.month_start_ms.min(windows.day_start_ms).min(windows.night_start_ms.unwrap_or(i64::MAX))
}

/// A stored idempotent response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u16,
    pub body: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey {
    pub scope: String,
    pub key: String,
}

pub(crate) const IDEMPOTENT_RESPONSE_SQL: &str =
    "SELECT fingerprint, status, body FROM idempotency_keys WHERE scope = $1 AND key = $2";

/// What one batch writes, in one transaction.
#[derive(Debug, Default)]
pub struct BatchWrite {
    pub transfers: Vec<Transfer>,
    /// The new state of every account the batch changed.
    pub accounts: Vec<LedgerAccount>,
    pub idempotency: Vec<(IdempotencyKey, String, StoredResponse)>,
    /// The new rules of every region the batch changed (rare: a batch that
    /// has some is written in an explicit transaction, as is one with
    /// adjustments).
    pub regions: Vec<RegionRules>,
    /// Adjustments proposed or decided, as they now are.
    pub adjustments: Vec<Adjustment>,
    /// Holds placed, released, returned or expired, as they now are.
    pub holds: Vec<Hold>,
    /// The operators' actions applied, for the audit log.
    pub audit: Vec<courier_common::audit::Draft>,
    /// The balance checkpoints the batch's transfers make.
    pub checkpoints: Vec<crate::ledger::Checkpoint>,
}

impl BatchWrite {
    pub fn is_empty(&self) -> bool {
        self.transfers.is_empty()
            && self.accounts.is_empty()
            && self.idempotency.is_empty()
            && self.regions.is_empty()
            && self.adjustments.is_empty()
            && self.holds.is_empty()
            && self.audit.is_empty()
    }

    /// Whether the batch writes more than transfers, accounts and keys.
    pub fn has_rare_writes(&self) -> bool {
        !self.regions.is_empty() || !self.adjustments.is_empty() || !self.holds.is_empty() || !self.audit.is_empty()
    }
}

pub(crate) const EXPIRE_KEYS_SQL: &str = "DELETE FROM idempotency_keys WHERE created_at < $1";

/// A transfer as stored (`TRANSFER_COLUMNS`, in order).
#[derive(sqlx::FromRow)]
struct TransferRow {
    id: String,
    kind: String,
    debit_account: String,
    credit_account: String,
    amount: i64,
    fee: i64,
    currency: String,
    region: String,
    linked_id: Option<String>,
    initiator: String,
    note: Option<String>,
    external_ref: Option<String>,
    created_at: i64,
    debit_prev: Option<String>,
    credit_prev: Option<String>,
    debit_balance: i64,
    credit_balance: i64,
}

pub(crate) const TRANSFER_COLUMNS: &str = "id, kind, debit_account, credit_account, amount, fee, currency, region, linked_id, \
     initiator, note, external_ref, created_at, debit_prev, credit_prev, debit_balance, credit_balance";

fn transfer_from_row(row: TransferRow) -> Option<Transfer> {
    Some(Transfer {
        id: row.id,
        kind: TransferKind::parse(&row.kind)?,
        debit: row.debit_account,
        credit: row.credit_account,
        amount_minor: row.amount,
        fee_minor: row.fee,
        currency: Currency::parse(&row.currency)?,
        region: RegionCode::parse(&row.region)?,
        linked_id: row.linked_id,
        initiator: row.initiator,
        note: row.note,
        external_ref: row.external_ref,
        created_at_ms: row.created_at,
        debit_prev: row.debit_prev,
        credit_prev: row.credit_prev,
        debit_balance_minor: row.debit_balance,
        credit_balance_minor: row.credit_balance,
    })
}

pub(crate) type AdjustmentRow = (
    String,
    String,
    i64,
    String,
    String,
    String,
    String,
    String,
    i64,
    i64,
    Option<String>,
    Option<i64>,
    Option<String>,
);

pub(crate) const ADJUSTMENT_COLUMNS: &str = "id, account_id, amount, currency, region, reason, status, proposed_by, \
     proposed_at, expires_at, decided_by, decided_at, transfer_id";

pub(crate) fn adjustment_from_row(row: AdjustmentRow) -> Option<Adjustment> {
    let (
        id,
        account_id,
        amount,
        currency,
        region,
        reason,
        status,
        proposed_by,
        proposed_at,
        expires_at,
        decided_by,
        decided_at,
        transfer_id,
    ) = row;
    Some(Adjustment {
        id,
        account_id,
        amount_minor: amount,
        currency: Currency::parse(&currency)?,
        region: RegionCode::parse(&region)?,
        reason,
        status: AdjustmentStatus::parse(&status)?,
        proposed_by,
        proposed_at_ms: proposed_at,
        expires_at_ms: expires_at,
        decided_by,
        decided_at_ms: decided_at,
        transfer_id,
    })
}

/// Adjustments, newest first, after `after_id`; only those with `status`
/// as of now when given (a pending one past its time is expired).
pub async fn adjustments(
    db: &Database,
    status: Option<AdjustmentStatus>,
    after_id: Option<&str>,
    limit: u32,
) -> Result<Vec<Adjustment>, sqlx::Error> {
    let now = courier_common::time::now_ms();
    // The stored status, and for pending and expired the time too; the
    // parameters are numbered in the order they appear.
    let (condition, stored, timed, limit_at) = match status {
        None => ("", "", false, "$2"),
        Some(AdjustmentStatus::Pending) => ("AND status = $2 AND expires_at > $3", "pending", true, "$4"),
        Some(AdjustmentStatus::Expired) => {
            ("AND (status = $2 OR (status = 'pending' AND expires_at <= $3))", "expired", true, "$4")
        }
        Some(AdjustmentStatus::Approved) => ("AND status = $2", "approved", false, "$3"),
        Some(AdjustmentStatus::Rejected) => ("AND status = $2", "rejected", false, "$3"),
    };
    let sql = format!(
        "SELECT {ADJUSTMENT_COLUMNS} FROM adjustments WHERE id < $1 {condition} ORDER BY id DESC LIMIT {limit_at}"
    );
    let mut query = sqlx::query_as::<_, AdjustmentRow>(&sql).bind(after_id.unwrap_or("~"));
    if status.is_some() {
        query = query.bind(stored);
    }
    if timed {
        query = query.bind(now);
    }
    query = query.bind(i64::from(limit));
    Ok(query.fetch_all(db.pool()).await?.into_iter().filter_map(adjustment_from_row).collect())
}

/// One adjustment.
pub async fn adjustment(db: &Database, id: &str) -> Result<Option<Adjustment>, sqlx::Error> {
    let sql = format!("SELECT {ADJUSTMENT_COLUMNS} FROM adjustments WHERE id = $1");
    let row: Option<AdjustmentRow> = sqlx::query_as(&sql).bind(id).fetch_optional(db.pool()).await?;
    Ok(row.and_then(adjustment_from_row))
}

/// Inserts a proposed adjustment, or records its decision.
pub(crate) fn upsert_adjustment_sql(placeholder: char) -> String {
    let values: Vec<String> = (1..=13).map(|n| format!("{placeholder}{n}")).collect();
    format!(
        "INSERT INTO adjustments ({ADJUSTMENT_COLUMNS}) VALUES ({}) ON CONFLICT (id) DO UPDATE SET \
         status = excluded.status, decided_by = excluded.decided_by, decided_at = excluded.decided_at, \
         transfer_id = excluded.transfer_id",
        values.join(", ")
    )
}

/// Pending adjustments past their time (the writer records them as expired;
/// readers count them as expired already).
pub(crate) const EXPIRED_ADJUSTMENTS_SQL: &str = "SELECT id, account_id FROM adjustments \
     WHERE status = 'pending' AND expires_at <= $1 ORDER BY expires_at LIMIT 1000";

pub(crate) type HoldRow = (
    String,
    String,
    i64,
    String,
    String,
    String,
    Option<String>,
    String,
    String,
    i64,
    i64,
    Option<String>,
    Option<i64>,
    Option<String>,
);

pub(crate) const HOLD_COLUMNS: &str = "id, account_id, amount, currency, region, reason, transfer_id, status, \
     placed_by, placed_at, expires_at, decided_by, decided_at, return_transfer_id";

pub(crate) fn hold_from_row(row: HoldRow) -> Option<Hold> {
    let (
        id,
        account_id,
        amount,
        currency,
        region,
        reason,
        transfer_id,
        status,
        placed_by,
        placed_at,
        expires_at,
        decided_by,
        decided_at,
        return_transfer_id,
    ) = row;
    Some(Hold {
        id,
        account_id,
        amount_minor: amount,
        currency: Currency::parse(&currency)?,
        region: RegionCode::parse(&region)?,
        reason,
        transfer_id,
        status: HoldStatus::parse(&status)?,
        placed_by,
        placed_at_ms: placed_at,
        expires_at_ms: expires_at,
        decided_by,
        decided_at_ms: decided_at,
        return_transfer_id,
    })
}

/// Inserts a placed hold, or records how it ended.
pub(crate) fn upsert_hold_sql(placeholder: char) -> String {
    let values: Vec<String> = (1..=14).map(|n| format!("{placeholder}{n}")).collect();
    format!(
        "INSERT INTO holds ({HOLD_COLUMNS}) VALUES ({}) ON CONFLICT (id) DO UPDATE SET status = excluded.status, \
         decided_by = excluded.decided_by, decided_at = excluded.decided_at, \
         return_transfer_id = excluded.return_transfer_id",
        values.join(", ")
    )
}

/// Active holds past their time (the writer expires them), oldest first.
pub(crate) const EXPIRED_HOLDS_SQL: &str =
    "SELECT id, account_id FROM holds WHERE status = 'active' AND expires_at <= $1 ORDER BY expires_at LIMIT 1000";

/// One hold.
pub async fn hold(db: &Database, id: &str) -> Result<Option<Hold>, sqlx::Error> {
    let sql = format!("SELECT {HOLD_COLUMNS} FROM holds WHERE id = $1");
    let row: Option<HoldRow> = sqlx::query_as(&sql).bind(id).fetch_optional(db.pool()).await?;
    Ok(row.and_then(hold_from_row))
}

/// Holds, newest first, after `after_id`; of one wallet and of one status
/// when given.
pub async fn holds(
    db: &Database,
    account: Option<&str>,
    status: Option<HoldStatus>,
    after_id: Option<&str>,
    limit: u32,
) -> Result<Vec<Hold>, sqlx::Error> {
    let mut conditions = vec!["id < $1".to_owned()];
    let mut binds = vec![after_id.unwrap_or("~").to_owned()];
    if let Some(account) = account {
        binds.push(account.to_owned());
        conditions.push(format!("account_id = ${}", binds.len()));
    }
    if let Some(status) = status {
        binds.push(status.as_str().to_owned());
        conditions.push(format!("status = ${}", binds.len()));
    }
    let sql = format!(
        "SELECT {HOLD_COLUMNS} FROM holds WHERE {} ORDER BY id DESC LIMIT ${}",
        conditions.join(" AND "),
        binds.len() + 1
    );
    let mut query = sqlx::query_as::<_, HoldRow>(&sql);
    for bind in binds {
        query = query.bind(bind);
    }
    Ok(query.bind(i64::from(limit)).fetch_all(db.pool()).await?.into_iter().filter_map(hold_from_row).collect())
}

pub(crate) type OriginalRow = (String, String, String, String, i64, i64, String, String, i64, i64);

/// A transfer to be reversed, with what its reversals took back so far
/// (amount and fee), found through the partial index of reversals.
pub(crate) const ORIGINAL_SQL: &str = "\
SELECT t.id, t.kind, t.debit_account, t.credit_account, t.amount, t.fee, t.currency, t.region, \
  CAST(COALESCE((SELECT SUM(r.amount) FROM transfers r WHERE r.kind = 'reversal' AND r.linked_id = t.id), 0) AS BIGINT), \
  CAST(COALESCE((SELECT SUM(r.fee) FROM transfers r WHERE r.kind = 'reversal' AND r.linked_id = t.id), 0) AS BIGINT) \
FROM transfers t WHERE t.id = $1";

pub(crate) fn original_from_row(row: OriginalRow) -> Option<(String, crate::ledger::Reversible)> {
    let (id, kind, debit, credit, amount, fee, currency, region, reversed, fee_refunded) = row;
    Some((
        id,
        crate::ledger::Reversible {
            kind: TransferKind::parse(&kind)?,
            debit,
            credit,
            amount_minor: amount,
            fee_minor: fee,
            currency: Currency::parse(&currency)?,
            region: RegionCode::parse(&region)?,
            reversed_minor: reversed,
            fee_refunded_minor: fee_refunded,
        },
    ))
}

/// One transfer, if `account_id` is a party to it.
pub async fn transfer_of(db: &Database, account_id: &str, id: &str) -> Result<Option<Transfer>, sqlx::Error> {
    let sql = format!(
        "SELECT {TRANSFER_COLUMNS} FROM transfers WHERE id = $1 AND kind <> 'fee' AND (debit_account = $2 OR credit_account = $2)"
    );
    let row: Option<TransferRow> = sqlx::query_as(&sql).bind(id).bind(account_id).fetch_optional(db.pool()).await?;
    Ok(row.and_then(transfer_from_row))
}

/// An account's transfers, newest first, after the cursor `after_id` (one of
/// its transfers; `None`: from its newest). Fee transfers are shown on their
/// P2P transfer. The account's chain is followed from its head (or from the
/// cursor) back, one primary-key look-up a step; every fee follows its P2P
/// transfer, so `2 × limit` steps always find `limit` transfers to show.
pub async fn transfers_of(
    db: &Database,
    account_id: &str,
    after_id: Option<&str>,
    limit: u32,
) -> Result<Vec<Transfer>, sqlx::Error> {
    let start = after_id.map_or(ChainStart::Newest, ChainStart::After);
    let mut shown: Vec<Transfer> =
        chain(db, account_id, start, 2 * limit).await?.into_iter().filter(|t| t.kind != TransferKind::Fee).collect();
    shown.truncate(limit as usize);
    Ok(shown)
}

/// How many transfers the ledger holds (fees included).
pub async fn transfer_count(db: &Database) -> Result<i64, sqlx::Error> {
    let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM transfers").fetch_one(db.pool()).await?;
    Ok(count)
}

/// One transfer by id, whoever its parties.
pub async fn transfer(db: &Database, id: &str) -> Result<Option<Transfer>, sqlx::Error> {
    let sql = format!("SELECT {TRANSFER_COLUMNS} FROM transfers WHERE id = $1");
    let row: Option<TransferRow> = sqlx::query_as(&sql).bind(id).fetch_optional(db.pool()).await?;
    Ok(row.and_then(transfer_from_row))
}

/// What operators search transfers by; every filter is optional.
#[derive(Debug, Clone, Default)]
pub struct TransferSearch {
    /// A party to the transfer (a wallet's account id or a system account).
    pub account: Option<String>,
    pub region: Option<RegionCode>,
    /// `None`: every kind but fees (a fee shows on its transfer).
    pub kind: Option<TransferKind>,
    /// Made at or after (ms).
    pub from_ms: Option<i64>,
    /// Made before (ms).
    pub to_ms: Option<i64>,
}

/// How much earlier than its `created_at` (the writer's clock when its
/// batch was applied) a transfer's id (UUIDv7, made by the request just
/// before it queued) may be: a request waits for its batch at most its
/// submit timeout (10 s by default), and this leaves room for longer ones.
const ID_BEFORE_CREATED_MS: i64 = 60_000;
/// How much later than its `created_at` an id may be: only by how far the
/// clock of the node that made it runs ahead of the writer's.
const ID_AFTER_CREATED_MS: i64 = 1_000;

/// The smallest UUIDv7 text made at or after `ms`: ids sort as text in
/// the order they were made.
fn uuid_v7_floor(ms: i64) -> String {
    let ms = ms.clamp(0, (1 << 48) - 1);
    format!("{:08x}-{:04x}", ms >> 16, ms & 0xffff)
}

impl TransferSearch {
    fn matches(&self, t: &Transfer) -> bool {
        self.region.is_none_or(|region| t.region == region)
            && match self.kind {
                Some(kind) => t.kind == kind,
                None => t.kind != TransferKind::Fee,
            }
            && self.from_ms.is_none_or(|from| t.created_at_ms >= from)
            && self.to_ms.is_none_or(|to| t.created_at_ms < to)
    }
}

/// The most steps one page of an account's search walks along its chain;
/// a page that stops there is short, and its cursor goes on from where it
/// stopped.
const SEARCH_CHAIN_STEPS_MAX: u32 = 20_000;
const SEARCH_CHAIN_CHUNK: u32 = 500;

/// Transfers matching `search`, newest first, after the transfer `after_id`
/// (`None`: from the newest): up to `limit` of them, and the position to go
/// on from when there may be more.
///
/// Without an account, one range scan of an index newest first: by kind
/// (`transfers_by_kind`), by region (`transfers_by_region`) or the primary
/// key, each narrowed to the time range through the ids (UUIDv7). With an
/// account, its chain back from its newest transfer (from the first balance
/// checkpoint after the range's end when there is one; from the cursor on
/// the next pages), one primary-key look-up a step, until the page is
/// full, the chain passes the range's start, or [`SEARCH_CHAIN_STEPS_MAX`]
/// steps.
pub async fn search_transfers(
    db: &Database,
    search: &TransferSearch,
    after_id: Option<&str>,
    limit: u32,
) -> Result<(Vec<Transfer>, Option<String>), sqlx::Error> {
    // Time filters narrow the primary key's range by as much as an id can be
    // from its `created_at`, and then compare `created_at` exactly (as
    // `created_at + 0`, so that no planner trades the key's order for the
    // time index and a sort). The scan
    // runs newest first from the range's end, so that end's margin is what
    // it reads in vain: kept to the clocks' skew.
    let floor = search.from_ms.map(|from| uuid_v7_floor(from.saturating_sub(ID_BEFORE_CREATED_MS)));
    if let Some(account) = &search.account {
        let mut found = Vec::new();
        let mut position = after_id.map(str::to_owned);
        let mut steps = 0;
        // A first page that ends before the newest transfers starts at the
        // first checkpoint at or after its end, not at the account's head.
        let mut start = match (after_id, search.to_ms) {
            (None, Some(to_ms)) => match wallet(db, account).await? {
                Some(wallet) => walk_start(db, &wallet, to_ms).await?,
                None => None,
            },
            _ => None,
        };
        loop {
            let from = match (&start, &position) {
                (Some(checkpoint), _) => ChainStart::At(checkpoint),
                (None, Some(position)) => ChainStart::After(position),
                (None, None) => ChainStart::Newest,
            };
            let chunk = chain(db, account, from, SEARCH_CHAIN_CHUNK).await?;
            start = None;
            let ended = chunk.len() < SEARCH_CHAIN_CHUNK as usize;
            steps += SEARCH_CHAIN_CHUNK;
            for transfer in chunk {
                if floor.as_deref().is_some_and(|floor| transfer.id.as_str() < floor) {
                    return Ok((found, None));
                }
                position = Some(transfer.id.clone());
                if search.matches(&transfer) {
                    found.push(transfer);
                    if found.len() == limit as usize {
                        return Ok((found, position));
                    }
                }
            }
            if ended {
                return Ok((found, None));
            }
            if steps >= SEARCH_CHAIN_STEPS_MAX {
                return Ok((found, position));
            }
        }
    }
    let mut sql = format!("SELECT {TRANSFER_COLUMNS} FROM transfers WHERE ");
    let mut binds: Vec<Bind> = Vec::new();
    let mut n = 0;
    let mut next = |binds: &mut Vec<Bind>, value: Bind| {
        binds.push(value);
        n += 1;
        format!("${n}")
    };
    let mut conditions = Vec::new();
    if let Some(region) = search.region {
        // With a kind too, the kind's index is read and the region filters
        // it: `region || ''` keeps the planner off the region's index, whose
        // range is every transfer of the region when there are two.
        let column = if search.kind.is_some() { "(region || '')" } else { "region" };
        conditions.push(format!("{column} = {}", next(&mut binds, Bind::Text(region.as_str().to_owned()))));
    }
    match search.kind {
        Some(kind) => conditions.push(format!("kind = {}", next(&mut binds, Bind::Text(kind.as_str().to_owned())))),
        None => conditions.push("kind <> 'fee'".to_owned()),
    }
    if let (Some(from), Some(floor)) = (search.from_ms, floor) {
        conditions.push(format!("id >= {}", next(&mut binds, Bind::Text(floor))));
        conditions.push(format!("created_at + 0 >= {}", next(&mut binds, Bind::Int(from))));
    }
    if let Some(to) = search.to_ms {
        let ceiling = uuid_v7_floor(to.saturating_add(ID_AFTER_CREATED_MS));
        conditions.push(format!("id < {}", next(&mut binds, Bind::Text(ceiling))));
        conditions.push(format!("created_at + 0 < {}", next(&mut binds, Bind::Int(to))));
    }
    if let Some(after) = after_id {
        conditions.push(format!("id < {}", next(&mut binds, Bind::Text(after.to_owned()))));
    }
    sql.push_str(&conditions.join(" AND "));
    let order = match (search.kind, search.region) {
        // The index's own order, so that it is read backwards, not sorted.
        (Some(_), _) => " ORDER BY kind DESC, id DESC",
        (None, Some(_)) => " ORDER BY region DESC, id DESC",
        (None, None) => " ORDER BY id DESC",
    };
    sql.push_str(order);
    sql.push_str(&format!(" LIMIT {}", next(&mut binds, Bind::Int(i64::from(limit) + 1))));
    let mut query = sqlx::query_as::<_, TransferRow>(&sql);
    for bind in binds {
        query = match bind {
            Bind::Text(text) => query.bind(text),
            Bind::Int(int) => query.bind(int),
        };
    }
    let found = match db.backend() {
        courier_common::Backend::Sqlite => query.fetch_all(db.pool()).await?,
        // The index is read in its order and the scan stops at the page's
        // end. A table that grows fast outruns its statistics, and with
        // those PostgreSQL would rather gather the whole range into a bitmap
        // and sort it (0.3 s instead of 5 ms over a million transfers).
        courier_common::Backend::Postgres => {
            let mut transaction = db.pool().begin().await?;
            for setting in ["SET LOCAL enable_bitmapscan = off", "SET LOCAL enable_sort = off"] {
                sqlx::query(setting).execute(&mut *transaction).await?;
            }
            let found = query.fetch_all(&mut *transaction).await?;
            transaction.commit().await?;
            found
        }
    };
    let mut rows: Vec<Transfer> = found.into_iter().filter_map(transfer_from_row).collect();
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let position = if more { rows.last().map(|t| t.id.clone()) } else { None };
    Ok((rows, position))
}

enum Bind {
    Text(String),
    Int(i64),
}

/// Where a walk along an account's chain starts.
#[derive(Debug, Clone, Copy)]
enum ChainStart<'a> {
    /// At the account's newest transfer.
    Newest,
    /// At the transfer before this one of the account's (a cursor).
    After(&'a str),
    /// At this transfer of the account's itself (a checkpoint).
    At(&'a str),
}

/// Up to `steps` transfers of `account`'s chain (fees too), newest first,
/// from `start`: one statement, one primary-key look-up a step.
async fn chain(
    db: &Database,
    account_id: &str,
    start: ChainStart<'_>,
    steps: u32,
) -> Result<Vec<Transfer>, sqlx::Error> {
    let sql = format!(
        "WITH RECURSIVE wanted (account, mode, start_id, steps) AS ( \
           SELECT CAST($1 AS TEXT), CAST($2 AS TEXT), CAST($3 AS TEXT), CAST($4 AS BIGINT) \
         ), chain (link, depth) AS ( \
           SELECT CASE w.mode \
               WHEN 'newest' THEN (SELECT a.last_transfer FROM ledger_accounts a WHERE a.id = w.account) \
               WHEN 'after' THEN (SELECT CASE WHEN c.debit_account = w.account THEN c.debit_prev ELSE c.credit_prev END \
                     FROM transfers c \
                     WHERE c.id = w.start_id AND (c.debit_account = w.account OR c.credit_account = w.account)) \
               ELSE w.start_id \
             END, CAST(0 AS BIGINT) \
           FROM wanted w \
           UNION ALL \
           SELECT CASE WHEN t.debit_account = w.account THEN t.debit_prev ELSE t.credit_prev END, chain.depth + 1 \
           FROM chain JOIN transfers t ON t.id = chain.link CROSS JOIN wanted w \
           WHERE chain.depth + 1 < w.steps \
         ) \
         SELECT {TRANSFER_COLUMNS} FROM chain JOIN transfers ON transfers.id = chain.link ORDER BY chain.depth"
    );
    let (mode, start_id) = match start {
        ChainStart::Newest => ("newest", ""),
        ChainStart::After(id) => ("after", id),
        ChainStart::At(id) => ("at", id),
    };
    let rows: Vec<TransferRow> = sqlx::query_as(&sql)
        .bind(account_id)
        .bind(mode)
        .bind(start_id)
        .bind(i64::from(steps))
        .fetch_all(db.pool())
        .await?;
    Ok(rows.into_iter().filter_map(transfer_from_row).collect())
}

/// The balance of `account` right after `transfer`, one of its transfers.
pub fn balance_after(transfer: &Transfer, account: &str) -> i64 {
    if transfer.debit == account { transfer.debit_balance_minor } else { transfer.credit_balance_minor }
}

/// Where to start walking `account`'s chain back to find what happened
/// before `before_ms`: the first checkpoint at or after it, or the
/// account's newest transfer. `None`: the account has no transfers.
async fn walk_start(db: &Database, account: &LedgerAccount, before_ms: i64) -> Result<Option<String>, sqlx::Error> {
    let checkpoint: Option<(String,)> = sqlx::query_as(
        "SELECT transfer_id FROM balance_checkpoints WHERE account = $1 AND at >= $2 ORDER BY at LIMIT 1",
    )
    .bind(&account.id)
    .bind(before_ms)
    .fetch_optional(db.pool())
    .await?;
    Ok(checkpoint.map(|(id,)| id).or_else(|| account.last_transfer.clone()))
}

const WALK_CHUNK: u32 = 1_000;

/// `account`'s transfers made before `before_ms`, newest first, walking its
/// chain back from the checkpoint after that moment, handed to `visit`
/// until it returns `false` or the chain ends.
async fn walk_back(
    db: &Database,
    account: &LedgerAccount,
    before_ms: i64,
    mut visit: impl FnMut(&Transfer) -> bool,
) -> Result<(), sqlx::Error> {
    let Some(mut start) = walk_start(db, account, before_ms).await? else { return Ok(()) };
    loop {
        let chunk = chain(db, &account.id, ChainStart::At(&start), WALK_CHUNK + 1).await?;
        let ended = chunk.len() <= WALK_CHUNK as usize;
        for transfer in chunk.iter().take(WALK_CHUNK as usize) {
            if transfer.created_at_ms < before_ms && !visit(transfer) {
                return Ok(());
            }
        }
        match (ended, chunk.last()) {
            (false, Some(next)) => start = next.id.clone(),
            _ => return Ok(()),
        }
    }
}

/// The balance of ledger account `account_id` as it was at `at_ms` (after
/// every transfer made at or before it): `None` when there is no such
/// account. Walks back from the first checkpoint after the moment (about
/// [`crate::ledger::CHECKPOINT_EVERY`] transfers), never sums the history.
pub async fn balance_at(
    db: &Database,
    account_id: &str,
    at_ms: i64,
) -> Result<Option<(LedgerAccount, i64)>, sqlx::Error> {
    let Some(account) = wallet(db, account_id).await? else { return Ok(None) };
    let mut balance = 0;
    walk_back(db, &account, at_ms.saturating_add(1), |transfer| {
        balance = balance_after(transfer, account_id);
        false
    })
    .await?;
    Ok(Some((account, balance)))
}

/// The most movements one statement lists.
pub const STATEMENT_MOVEMENTS_MAX: usize = 10_000;

/// A wallet's statement for `[from_ms, to_ms)`: the balance before, the
/// transfers in it oldest first, and the balance after; `Err(())` when
/// there are more than [`STATEMENT_MOVEMENTS_MAX`].
pub async fn statement(
    db: &Database,
    account: &LedgerAccount,
    from_ms: i64,
    to_ms: i64,
) -> Result<Result<(i64, Vec<Transfer>, i64), ()>, sqlx::Error> {
    let mut movements = Vec::new();
    let mut opening = 0;
    let mut too_many = false;
    walk_back(db, account, to_ms, |transfer| {
        if transfer.created_at_ms < from_ms {
            opening = balance_after(transfer, &account.id);
            return false;
        }
        if movements.len() == STATEMENT_MOVEMENTS_MAX {
            too_many = true;
            return false;
        }
        movements.push(transfer.clone());
        true
    })
    .await?;
    if too_many {
        return Ok(Err(()));
    }
    let closing = movements.first().map_or(opening, |newest| balance_after(newest, &account.id));
    movements.reverse();
    Ok(Ok((opening, movements, closing)))
}

/// One page of an export: transfers made in `[from_ms, to_ms)` (of
/// `region`, or all), oldest first, after the transfer `after_id`, read on
/// `connection` (the export's snapshot). The ids narrow the key's range by
/// as much as an id can be from its `created_at`; `created_at + 0` keeps
/// every planner on the key's order rather than the time index and a sort.
pub async fn export_page(
    connection: &mut sqlx::AnyConnection,
    region: Option<RegionCode>,
    from_ms: i64,
    to_ms: i64,
    after_id: Option<&str>,
    limit: u32,
) -> Result<Vec<Transfer>, sqlx::Error> {
    let floor = uuid_v7_floor(from_ms.saturating_sub(ID_BEFORE_CREATED_MS));
    let ceiling = uuid_v7_floor(to_ms.saturating_add(ID_AFTER_CREATED_MS));
    let start = match after_id {
        Some(after) if after > floor.as_str() => after.to_owned(),
        _ => floor,
    };
    let by_region = if region.is_some() { "region = $6 AND " } else { "" };
    let sql = format!(
        "SELECT {TRANSFER_COLUMNS} FROM transfers WHERE {by_region}id > $1 AND id < $2 \
         AND created_at + 0 >= $3 AND created_at + 0 < $4 ORDER BY id LIMIT $5"
    );
    let mut query = sqlx::query_as::<_, TransferRow>(&sql)
        .bind(start)
        .bind(ceiling)
        .bind(from_ms)
        .bind(to_ms)
        .bind(i64::from(limit));
    if let Some(region) = region {
        query = query.bind(region.as_str());
    }
    Ok(query.fetch_all(connection).await?.into_iter().filter_map(transfer_from_row).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_v7_ids_sort_after_the_floor_of_their_time() {
        for ms in [0_i64, 1, 1_781_092_800_000, 1_781_092_800_001] {
            let floor = uuid_v7_floor(ms);
            let id = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
                uuid::NoContext,
                (ms / 1000) as u64,
                ((ms % 1000) * 1_000_000) as u32,
            ))
            .to_string();
            assert!(id.as_str() >= floor.as_str(), "{id} < {floor}");
            assert!(id.as_str() < uuid_v7_floor(ms + 1).as_str(), "{id} >= the next millisecond's floor");
        }
    }
}
