//! What the finance team reads: the daily report per region, the
//! reconciliation, the streamed CSV export of transfers, and the audit
//! log's signing keys and signed checkpoints.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use courier_accounts::operators::{Authorized, Viewer};
use courier_common::checkpoint::{AuditKeys, Checkpoint};
use courier_common::page::PageQuery;
use courier_common::time::rfc3339;
use courier_common::{ErrorBody, HttpError, Page, Query};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Payments, invalid_range, moment};
use crate::error::PaymentsError;
use crate::ledger::{Transfer, TransferKind};
use crate::money::{Currency, format_minor};
use crate::region::RegionCode;
use crate::report::{self, Tally};
use crate::store;

/// The longest period one export covers.
pub const EXPORT_DAYS_MAX: i64 = 366;
/// Transfers read per page of an export (one statement each).
const EXPORT_PAGE: u32 = 2_000;
/// Exports running at once (each on a database connection of its own);
/// more get 503 `overloaded`.
pub const EXPORTS_AT_ONCE_MAX: usize = 4;

const DAY_MS: i64 = 24 * 3_600 * 1_000;

fn money(minor: i64, currency: &str) -> String {
    match Currency::parse(currency) {
        Some(currency) => format_minor(minor, currency),
        None => minor.to_string(),
    }
}

#[derive(Serialize, ToSchema)]
pub struct CurrencyTotal {
    currency: String,
    total: String,
}

#[derive(Serialize, ToSchema)]
pub struct Mismatch {
    account_id: String,
    /// The balance the ledger holds for the account.
    stored: String,
    /// What its transfers add up to.
    computed: String,
}

#[derive(Serialize, ToSchema)]
pub struct Reconciliation {
    /// True when every currency sums to zero and every stored balance equals its transfers.
    balanced: bool,
    trial_balance: Vec<CurrencyTotal>,
    mismatches: Vec<Mismatch>,
}

/// Trial balance and stored-versus-computed balances, read from one
/// snapshot of the database while the writer keeps writing.
#[utoipa::path(get, path = "/admin/v1/reconciliation", tag = "finance-ops", security(("operator" = [])),
    responses((status = 200, body = Reconciliation)))]
pub(super) async fn reconciliation(
    State(payments): State<Payments>,
    _viewer: Authorized<Viewer>,
) -> Result<axum::Json<Reconciliation>, HttpError> {
    let found = report::reconcile(&payments.inner.db).await.map_err(PaymentsError::from)?;
    if !found.balanced() {
        tracing::error!(mismatches = found.mismatches.len(), "the ledger does not reconcile");
    }
    Ok(axum::Json(Reconciliation {
        balanced: found.balanced(),
        trial_balance: found
            .trial_balance
            .iter()
            .map(|(currency, total)| CurrencyTotal { currency: currency.clone(), total: money(*total, currency) })
            .collect(),
        mismatches: found
            .mismatches
            .into_iter()
            .map(|m| {
                let currency = m.currency.as_deref().unwrap_or("");
                Mismatch {
                    account_id: m.account_id,
                    stored: money(m.stored_minor, currency),
                    computed: money(m.computed_minor, currency),
                }
            })
            .collect(),
    }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DailyQuery {
    /// The region (`RU`, `BR`); any other: 404 `not_found`.
    #[param(pattern = "^[A-Z]{2}$")]
    region: String,
    /// The region's local day (`YYYY-MM-DD`); default: today there. Not a
    /// real date: 400 `invalid_request`.
    #[param(pattern = "^[0-9]{4}-[0-9]{2}-[0-9]{2}$")]
    date: Option<String>,
}

/// How many, and how much.
#[derive(Serialize, ToSchema)]
pub struct TallyView {
    count: i64,
    volume: String,
}

/// One currency's day.
#[derive(Serialize, ToSchema)]
pub struct CurrencyDayView {
    currency: String,
    p2p: TallyView,
    /// Fees charged.
    fees: TallyView,
    /// Fees given back with reversals.
    fee_refunds: TallyView,
    deposits: TallyView,
    withdrawals: TallyView,
    reversals: TallyView,
    adjustments_credited: TallyView,
    adjustments_debited: TallyView,
    holds_placed: TallyView,
    /// Holds returned to the claimant that day.
    holds_returned: TallyView,
    /// The sum of the region's wallets as the day began.
    opening_wallets: String,
    /// And as it ended (or now, for today).
    closing_wallets: String,
    /// Wallets that sent at least one P2P transfer.
    distinct_senders: i64,
}

/// A region's day, in its own time zone.
#[derive(Serialize, ToSchema)]
pub struct DailyReport {
    region: RegionCode,
    date: String,
    time_zone: String,
    /// The day's first moment, in UTC.
    from: String,
    /// The next day's first moment, in UTC.
    to: String,
    currencies: Vec<CurrencyDayView>,
}

/// A region's daily report over its local day (Moscow time for RU, São
/// Paulo time for BR): per currency, the count and volume of each kind of
/// movement, holds, the wallets' opening and closing totals, and the number
/// of distinct senders, from one snapshot of the database.
#[utoipa::path(get, path = "/admin/v1/reports/daily", tag = "finance-ops", security(("operator" = [])),
    params(DailyQuery),
    responses((status = 200, body = DailyReport),
              (status = 400, description = "`invalid_request`: not a date", body = ErrorBody),
              (status = 404, description = "`not_found`: no such region", body = ErrorBody)))]
pub(super) async fn daily_report(
    State(payments): State<Payments>,
    _viewer: Authorized<Viewer>,
    Query(query): Query<DailyQuery>,
) -> Result<axum::Json<DailyReport>, HttpError> {
    let code = RegionCode::parse(&query.region).ok_or(PaymentsError::NotFound("no such region"))?;
    let db = &payments.inner.db;
    let rules = store::regions(db)
        .await
        .map_err(PaymentsError::from)?
        .into_iter()
        .find(|rules| rules.code == code)
        .ok_or(PaymentsError::NotFound("no such region"))?;
    let not_a_date = || HttpError::invalid_request("date must be a day of the calendar, like 2026-12-06");
    let date = match &query.date {
        Some(text) if text.len() == 10 => text.parse::<jiff::civil::Date>().map_err(|_| not_a_date())?,
        Some(_) => return Err(not_a_date()),
        None => jiff::Timestamp::now().to_zoned(rules.zone()).date(),
    };
    let day = report::daily(db, &rules, date).await.map_err(PaymentsError::from)?.ok_or_else(not_a_date)?;
    let view =
        |currency: &str, tally: Tally| TallyView { count: tally.count, volume: money(tally.volume_minor, currency) };
    Ok(axum::Json(DailyReport {
        region: code,
        date: date.to_string(),
        time_zone: rules.time_zone.clone(),
        from: rfc3339(day.from_ms),
        to: rfc3339(day.to_ms),
        currencies: day
            .currencies
            .iter()
            .map(|d| {
                let c = d.currency.as_str();
                CurrencyDayView {
                    currency: d.currency.clone(),
                    p2p: view(c, d.p2p),
                    fees: view(c, d.fees),
                    fee_refunds: view(c, d.fee_refunds),
                    deposits: view(c, d.deposits),
                    withdrawals: view(c, d.withdrawals),
                    reversals: view(c, d.reversals),
                    adjustments_credited: view(c, d.adjustments_credited),
                    adjustments_debited: view(c, d.adjustments_debited),
                    holds_placed: view(c, d.holds_placed),
                    holds_returned: view(c, d.holds_returned),
                    opening_wallets: money(d.opening_wallets_minor, c),
                    closing_wallets: money(d.closing_wallets_minor, c),
                    distinct_senders: d.distinct_senders,
                }
            })
            .collect(),
    }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    /// Transfers made at or after this moment (RFC 3339).
    #[param(value_type = String, format = DateTime)]
    from: String,
    /// Made before this moment (RFC 3339); not before `from`, and at most
    /// 366 days after it (400 `invalid_range`).
    #[param(value_type = String, format = DateTime)]
    to: String,
    region: Option<RegionCode>,
}

/// The columns of the export, in order.
pub const EXPORT_COLUMNS: [&str; 14] = [
    "transfer_id",
    "created_at",
    "kind",
    "region",
    "currency",
    "amount",
    "fee",
    "from_account",
    "to_account",
    "reverses",
    "fee_for",
    "initiator",
    "external_ref",
    "note",
];

fn csv_record(t: &Transfer) -> [String; 14] {
    let currency = t.currency;
    let linked = t.linked_id.clone().unwrap_or_default();
    let (reverses, fee_for) = match t.kind {
        TransferKind::Reversal => (linked, String::new()),
        TransferKind::Fee => (String::new(), linked),
        _ => (String::new(), String::new()),
    };
    [
        t.id.clone(),
        rfc3339(t.created_at_ms),
        t.kind.as_str().to_owned(),
        t.region.as_str().to_owned(),
        currency.code().to_owned(),
        format_minor(t.amount_minor, currency),
        format_minor(t.fee_minor, currency),
        t.debit.clone(),
        t.credit.clone(),
        reverses,
        fee_for,
        t.initiator.clone(),
        t.external_ref.clone().unwrap_or_default(),
        t.note.clone().unwrap_or_default(),
    ]
}

fn csv_bytes(header: bool, transfers: &[Transfer]) -> Result<bytes::Bytes, csv::Error> {
    let mut writer = csv::WriterBuilder::new().terminator(csv::Terminator::CRLF).from_writer(Vec::new());
    if header {
        writer.write_record(EXPORT_COLUMNS)?;
    }
    for transfer in transfers {
        writer.write_record(csv_record(transfer))?;
    }
    let bytes = writer.into_inner().map_err(|error| csv::Error::from(error.into_error()))?;
    Ok(bytes::Bytes::from(bytes))
}

/// Where a running export is.
struct Export {
    snapshot: sqlx::AnyConnection,
    region: Option<RegionCode>,
    from_ms: i64,
    to_ms: i64,
    after: Option<String>,
    done: bool,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// Every transfer made in `[from, to)` (of one region, or all), oldest
/// first, as RFC 4180 CSV with a header row: amounts as decimal strings,
/// times in RFC 3339 UTC, each reversal naming the transfer it reverses and
/// each fee the transfer it was charged (or refunded) on. Streamed page by
/// page from one snapshot of the database, so that the server's memory
/// stays flat however many rows, and the rows are those of one moment.
#[utoipa::path(get, path = "/admin/v1/exports/transfers.csv", tag = "finance-ops", security(("operator" = [])),
    params(ExportQuery),
    responses((status = 200, content_type = "text/csv", body = String,
               description = "`transfer_id,created_at,kind,region,currency,amount,fee,from_account,to_account,reverses,fee_for,initiator,external_ref,note`, then one row per transfer"),
              (status = 400, description = "`invalid_request`: a parameter not of the documented form; `invalid_range`: `from` after `to`, or more than 366 days", body = ErrorBody),
              (status = 503, description = "`overloaded`: too many exports at once (Retry-After)", body = ErrorBody)))]
pub(super) async fn export_transfers(
    State(payments): State<Payments>,
    _viewer: Authorized<Viewer>,
    Query(query): Query<ExportQuery>,
) -> Result<Response, HttpError> {
    let from_ms = moment(Some(&query.from), "from")?.unwrap_or_default();
    let to_ms = moment(Some(&query.to), "to")?.unwrap_or_default();
    if from_ms > to_ms {
        return Err(invalid_range());
    }
    if to_ms - from_ms > EXPORT_DAYS_MAX * DAY_MS {
        return Err(HttpError::new(
            StatusCode::BAD_REQUEST,
            "invalid_range",
            format!("an export covers at most {EXPORT_DAYS_MAX} days; ask for shorter periods"),
        ));
    }
    let permit = Arc::clone(&payments.inner.exports).try_acquire_owned().map_err(|_| PaymentsError::Overloaded)?;
    let mut snapshot = payments.inner.db.streaming_snapshot().await.map_err(PaymentsError::from)?;
    // The first page is read before answering, so that a failure to read
    // at all is a clean 500 rather than a body that breaks off.
    let first = store::export_page(&mut snapshot, query.region, from_ms, to_ms, None, EXPORT_PAGE)
        .await
        .map_err(PaymentsError::from)?;
    let export = Export {
        snapshot,
        region: query.region,
        from_ms,
        to_ms,
        after: first.last().map(|t| t.id.clone()),
        done: first.len() < EXPORT_PAGE as usize,
        _permit: permit,
    };
    let head = futures::stream::once(std::future::ready(csv_bytes(true, &first).map_err(std::io::Error::other)));
    let rest = futures::stream::unfold(export, |mut export| async move {
        if export.done {
            return None;
        }
        let page = store::export_page(
            &mut export.snapshot,
            export.region,
            export.from_ms,
            export.to_ms,
            export.after.as_deref(),
            EXPORT_PAGE,
        )
        .await;
        let page = match page {
            Ok(page) => page,
            Err(error) => {
                // The client sees the body end without its last chunk, as an error.
                tracing::error!(%error, "the transfers export failed part-way");
                export.done = true;
                return Some((Err(std::io::Error::other(error)), export));
            }
        };
        export.done = page.len() < EXPORT_PAGE as usize;
        export.after = page.last().map(|t| t.id.clone()).or(export.after);
        Some((csv_bytes(false, &page).map_err(std::io::Error::other), export))
    });
    let pages = futures::StreamExt::chain(head, rest);
    let name = format!(
        "attachment; filename=\"transfers-{}-{}.csv\"",
        rfc3339(from_ms).get(..10).unwrap_or("from"),
        rfc3339(to_ms).get(..10).unwrap_or("to")
    );
    Ok((
        [(header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()), (header::CONTENT_DISPOSITION, name)],
        Body::from_stream(pages),
    )
        .into_response())
}

/// The public halves of every key that signed audit checkpoints, the
/// current one and the rotated-out ones.
#[utoipa::path(get, path = "/admin/v1/audit/keys", tag = "finance-ops", security(("operator" = [])),
    responses((status = 200, body = AuditKeys)))]
pub(super) async fn audit_keys(
    State(payments): State<Payments>,
    _viewer: Authorized<Viewer>,
) -> Result<axum::Json<AuditKeys>, HttpError> {
    let keys = crate::checkpoint::keys(&payments.inner.db).await.map_err(PaymentsError::from)?;
    Ok(axum::Json(AuditKeys { keys }))
}

/// Signed checkpoints of the audit log, newest first: keep one outside the
/// database, and `courier admin audit verify --checkpoint` proves later
/// that no entry up to it was rewritten.
#[utoipa::path(get, path = "/admin/v1/audit/checkpoints", tag = "finance-ops", security(("operator" = [])),
    params(PageQuery),
    responses((status = 200, body = inline(Page<Checkpoint>))))]
pub(super) async fn audit_checkpoints(
    State(payments): State<Payments>,
    _viewer: Authorized<Viewer>,
    Query(query): Query<PageQuery>,
) -> Result<axum::Json<Page<Checkpoint>>, HttpError> {
    let page = query.parse()?;
    super::cursor_of_ids(&page)?;
    let rows = crate::checkpoint::list(&payments.inner.db, page.after.as_deref(), page.limit + 1)
        .await
        .map_err(PaymentsError::from)?;
    let page = Page::from_rows(rows, page.limit, |(id, _)| id.clone());
    Ok(axum::Json(Page {
        items: page.items.into_iter().map(|(_, checkpoint)| checkpoint).collect(),
        next_cursor: page.next_cursor,
    }))
}
