//! HTTP routes of the ledger service (API.md "Payments", and "Finance ops";
//! what the finance team reads is in [`reports`]).

mod reports;

pub use reports::{EXPORT_COLUMNS, EXPORTS_AT_ONCE_MAX};

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use courier_common::sync::lock;
use std::time::Duration;

use axum::Router;
use axum::extract::{FromRef, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use courier_accounts::auth::AuthUser;
use courier_accounts::operators::{Authorized, OperatorDirectory, OperatorRole, Viewer};
use courier_accounts::phone::PhoneNumber;
use courier_accounts::tokens::TokenVerifier;
use courier_common::ids::{IdPath, is_uuid};
use courier_common::page::PageQuery;
use courier_common::text::TextError;
use courier_common::{Database, ErrorBody, HttpError, Json, Page, Query};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::{OpenApi, ToSchema};

use crate::error::PaymentsError;
use crate::ledger::{Command, Refusal};
use crate::money::{self, Currency, Money, format_minor};
use crate::region::{RegionCode, RegionRules};
use crate::store::{self, IdempotencyKey, StoredResponse};
use crate::view::{AdjustmentView, HoldView, RegionView, TransferView};
use crate::writer::{SubmitError, WriteOutcome, WriterHandle};

pub const IDEMPOTENCY_KEY_CHARS_MAX: usize = 255;
pub const NOTE_CHARS_MAX: usize = 140;
pub const EXTERNAL_REF_CHARS_MAX: usize = 128;
pub const REASON_CHARS_MAX: usize = 500;
/// How long a request waits for its batch to be durable.
pub const SUBMIT_TIMEOUT_S_DEFAULT: u64 = 10;
/// Wallet ids remembered as existing (saves a write per request).
const KNOWN_WALLETS_MAX: usize = 1_000_000;
/// Recipients remembered with their region (saves a read per request).
const RECIPIENTS_CACHED_MAX: usize = 1_000_000;

/// The ledger service's state.
#[derive(Clone)]
pub struct Payments {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    writer: WriterHandle,
    verifier: Arc<TokenVerifier>,
    submit_timeout: Duration,
    in_flight: Mutex<HashSet<IdempotencyKey>>,
    known_wallets: Mutex<HashSet<String>>,
    recipients: Mutex<HashMap<String, (String, Option<RegionCode>)>>,
    /// Exports streaming now (each holds a database connection).
    exports: Arc<tokio::sync::Semaphore>,
}

impl Payments {
    pub fn new(db: Database, writer: WriterHandle, verifier: Arc<TokenVerifier>, submit_timeout: Duration) -> Self {
        Payments {
            inner: Arc::new(Inner {
                db,
                writer,
                verifier,
                submit_timeout,
                in_flight: Mutex::default(),
                known_wallets: Mutex::default(),
                recipients: Mutex::default(),
                exports: Arc::new(tokio::sync::Semaphore::new(reports::EXPORTS_AT_ONCE_MAX)),
            }),
        }
    }

    pub fn writer(&self) -> &WriterHandle {
        &self.inner.writer
    }

    async fn ensure_wallet(&self, account_id: &str, region: RegionCode) -> Result<(), sqlx::Error> {
        if lock(&self.inner.known_wallets).contains(account_id) {
            return Ok(());
        }
        store::ensure_wallet(&self.inner.db, account_id, region, RegionRules::default_for(region).currency).await?;
        let mut known = lock(&self.inner.known_wallets);
        if known.len() >= KNOWN_WALLETS_MAX {
            known.clear();
        }
        known.insert(account_id.to_owned());
        Ok(())
    }

    /// Runs `command` under an idempotency key. The writer replays a stored
    /// answer or refuses a reused key in the same batch lookup that protects
    /// new keys, so the request path itself reads nothing.
    async fn idempotent(
        &self,
        key: IdempotencyKey,
        fingerprint: String,
        initiator: String,
        command: impl AsyncFnOnce() -> Result<Command, PaymentsError>,
    ) -> Result<Response, HttpError> {
        let _in_flight = InFlight::claim(&self.inner.in_flight, &key).ok_or(PaymentsError::IdempotencyKeyInUse)?;
        let command = command().await?;
        self.submit(command, initiator, Some((key, fingerprint))).await
    }

    /// The account behind a recipient, with its region; found accounts are
    /// remembered (an account's id, number and region never change).
    async fn recipient(
        &self,
        recipient: &Recipient,
        phone: Option<&PhoneNumber>,
    ) -> Result<Option<(String, Option<RegionCode>)>, PaymentsError> {
        let cache_key = match (recipient, phone) {
            // Not an id this service hands out: nobody's.
            (Recipient::Account(ToAccount { account_id }), _) if !is_uuid(account_id) => return Ok(None),
            (Recipient::Account(ToAccount { account_id }), _) => format!("id:{account_id}"),
            (Recipient::Phone(_), Some(phone)) => format!("phone:{}", phone.as_e164()),
            (Recipient::Phone(_), None) => return Ok(None),
        };
        if let Some(found) = lock(&self.inner.recipients).get(&cache_key) {
            return Ok(Some(found.clone()));
        }
        let account = match (recipient, phone) {
            (Recipient::Account(ToAccount { account_id }), _) => {
                courier_accounts::store::account(&self.inner.db, account_id).await?
            }
            (_, Some(phone)) => courier_accounts::store::account_by_phone(&self.inner.db, phone).await?,
            (_, None) => None,
        };
        let Some(account) = account else { return Ok(None) };
        let found = (account.id.clone(), RegionCode::parse(account.region()));
        let mut cache = lock(&self.inner.recipients);
        if cache.len() >= RECIPIENTS_CACHED_MAX {
            cache.clear();
        }
        cache.insert(cache_key, found.clone());
        Ok(Some(found))
    }

    /// The account of `to` (a phone number or an account id) if `from` (of
    /// `region`) could pay them now; else the refusal a transfer would get.
    async fn payable(&self, from: &str, region: RegionCode, to: String) -> Result<String, HttpError> {
        let (recipient, number) = if is_uuid(&to) {
            (Recipient::Account(ToAccount { account_id: to }), None)
        } else {
            let number = PhoneNumber::parse(&to).map_err(PaymentsError::InvalidPhone)?;
            (Recipient::Phone(ToPhone { phone: to }), Some(number))
        };
        let refused = |refusal: Refusal| {
            let status = StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY);
            HttpError::new(status, refusal.code(), refusal.message())
        };
        let Some((to, to_region)) = self.recipient(&recipient, number.as_ref()).await? else {
            return Err(refused(Refusal::RecipientNotFound));
        };
        if to == from {
            return Err(refused(Refusal::SelfTransfer));
        }
        if to_region != Some(region) {
            return Err(refused(Refusal::CrossRegion));
        }
        let frozen =
            store::wallet(&self.inner.db, &to).await.map_err(PaymentsError::from)?.is_some_and(|w| w.frozen.is_some());
        if frozen {
            return Err(refused(Refusal::RecipientFrozen));
        }
        Ok(to)
    }

    async fn submit(
        &self,
        command: Command,
        initiator: String,
        idempotency: Option<(IdempotencyKey, String)>,
    ) -> Result<Response, HttpError> {
        // An operator's request gets an id, recorded with its audit entry and
        // answered in `X-Request-Id`.
        let request_id = (!matches!(command, Command::P2p { .. })).then(|| uuid::Uuid::now_v7().to_string());
        let submitted =
            self.inner.writer.submit(command, initiator, idempotency, request_id.clone(), self.inner.submit_timeout);
        match submitted.await {
            Ok(WriteOutcome::Response(response)) => {
                let mut response = stored(response);
                if let Some(id) = request_id.and_then(|id| header::HeaderValue::from_str(&id).ok()) {
                    response.headers_mut().insert("x-request-id", id);
                }
                Ok(response)
            }
            Ok(WriteOutcome::KeyReused) => Err(PaymentsError::IdempotencyKeyReused.into()),
            Ok(WriteOutcome::Unavailable) | Err(SubmitError::Unavailable) => Err(PaymentsError::Unavailable.into()),
            Err(SubmitError::Overloaded) => Err(PaymentsError::Overloaded.into()),
        }
    }
}

/// Marks an idempotency key as being processed for as long as it lives.
struct InFlight<'a> {
    set: &'a Mutex<HashSet<IdempotencyKey>>,
    key: IdempotencyKey,
}

impl<'a> InFlight<'a> {
    fn claim(set: &'a Mutex<HashSet<IdempotencyKey>>, key: &IdempotencyKey) -> Option<Self> {
        lock(set).insert(key.clone()).then(|| InFlight { set, key: key.clone() })
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        lock(self.set).remove(&self.key);
    }
}

fn stored(response: StoredResponse) -> Response {
    let status = StatusCode::from_u16(response.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [(header::CONTENT_TYPE, "application/json")], response.body).into_response()
}

impl FromRef<Payments> for Arc<TokenVerifier> {
    fn from_ref(payments: &Payments) -> Self {
        payments.inner.verifier.clone()
    }
}

impl FromRef<Payments> for OperatorDirectory {
    fn from_ref(payments: &Payments) -> Self {
        OperatorDirectory(payments.inner.db.clone())
    }
}

/// The ledger router.
pub fn app(payments: Payments) -> Router {
    Router::new()
        .route("/v1/wallet", get(wallet))
        .route("/v1/wallet/statement", get(statement))
        .route("/v1/transfers", post(send).get(transfers))
        .route("/v1/transfers/quote", get(quote))
        .route("/v1/transfers/{id}", get(transfer))
        .route("/admin/v1/deposits", post(deposit))
        .route("/admin/v1/withdrawals", post(withdrawal))
        .route("/admin/v1/accounts/{id}/freeze", post(freeze))
        .route("/admin/v1/accounts/{id}/unfreeze", post(unfreeze))
        .route("/admin/v1/reconciliation", get(reports::reconciliation))
        .route("/admin/v1/reports/daily", get(reports::daily_report))
        .route("/admin/v1/exports/transfers.csv", get(reports::export_transfers))
        .route("/admin/v1/audit/keys", get(reports::audit_keys))
        .route("/admin/v1/audit/checkpoints", get(reports::audit_checkpoints))
        .route("/admin/v1/transfers", get(search))
        .route("/admin/v1/transfers/{id}/reverse", post(reverse))
        .route("/admin/v1/accounts/{id}", get(account))
        .route("/admin/v1/accounts/{id}/balance", get(balance_at))
        .route("/admin/v1/regions", get(regions))
        .route("/admin/v1/adjustments", post(propose_adjustment).get(list_adjustments))
        .route("/admin/v1/accounts/{id}/holds", post(place_hold))
        .route("/admin/v1/holds", get(list_holds))
        .route("/admin/v1/audit", get(audit_log))
        .route("/admin/v1/audit/verify", get(audit_verify))
        .route("/admin/v1/holds/{id}/release", post(release_hold))
        .route("/admin/v1/holds/{id}/return", post(return_hold))
        .route("/admin/v1/adjustments/{id}/approve", post(approve_adjustment))
        .route("/admin/v1/adjustments/{id}/reject", post(reject_adjustment))
        .route("/admin/v1/regions/{code}", axum::routing::patch(patch_region))
        .with_state(payments)
}

#[derive(OpenApi)]
#[openapi(
    paths(wallet, send, quote, transfers, transfer, deposit, withdrawal, freeze, unfreeze, reports::reconciliation,
        reports::daily_report, reports::export_transfers, reports::audit_keys, reports::audit_checkpoints, search, reverse, account, regions, patch_region,
        propose_adjustment, approve_adjustment, reject_adjustment, list_adjustments,
        place_hold, release_hold, return_hold, list_holds, audit_log, audit_verify, balance_at, statement),
    components(schemas(ErrorBody, courier_common::checkpoint::Checkpoint, courier_common::checkpoint::AuditKey, BalanceAt, Statement, Movement, AuditEntryView, courier_common::audit::Verdict, TransferView, AdminTransferView, RegionView, AdjustmentView, HoldView, HoldRequest, AdjustmentRequest, crate::view::FeeView, RegionPatch, FeePatch, AccountView, FreezeView, Currency, RegionCode, WalletStatus)),
    tags((name = "payments", description = "Wallets and peer-to-peer transfers"),
         (name = "finance-ops", description = "Operators: money in and out, freezes, reports, reconciliation, exports, the audit log"))
)]
pub struct ApiDoc;

/// The `Idempotency-Key` header, required on money-moving requests.
fn idempotency_key(headers: &HeaderMap, scope: String) -> Result<IdempotencyKey, PaymentsError> {
    let key = headers
        .get("idempotency-key")
        .and_then(|value| value.to_str().ok())
        .filter(|key| {
            !key.is_empty() && key.len() <= IDEMPOTENCY_KEY_CHARS_MAX && key.bytes().all(|b| b.is_ascii_graphic())
        })
        .ok_or(PaymentsError::IdempotencyKeyRequired)?;
    Ok(IdempotencyKey { scope, key: key.to_owned() })
}

/// Reads a JSON body (already checked by the shared extractor) into `T`,
/// with the fingerprint of its canonical form for the idempotency key (field
/// order and spacing do not matter).
fn parse_body<T: serde::de::DeserializeOwned>(value: serde_json::Value, route: &str) -> Result<(T, String), HttpError> {
    let fingerprint = format!("{:x}", Sha256::digest(format!("{route}\n{value}").as_bytes()));
    let parsed: T = serde_json::from_value(value)
        .map_err(|error| HttpError::invalid_request(format!("invalid JSON body: {error}")))?;
    Ok((parsed, fingerprint))
}

fn checked_text(value: &str, field: &str, max: usize) -> Result<String, PaymentsError> {
    courier_common::text::printable(value, max).map_err(|error| {
        let message = error.describe(field, max);
        match error {
            TextError::Malformed => PaymentsError::InvalidRequest(message),
            TextError::Blank => PaymentsError::Unprocessable(message),
        }
    })
}

#[derive(Serialize, ToSchema)]
pub struct WalletView {
    account_id: String,
    region: RegionCode,
    currency: Currency,
    balance: String,
    /// `active` or `frozen`.
    status: &'static str,
}

/// My wallet, created on first use in a supported region.
#[utoipa::path(get, path = "/v1/wallet", tag = "payments", security(("user" = [])),
    responses((status = 200, body = WalletView),
              (status = 403, description = "`region_not_supported`", body = ErrorBody)))]
async fn wallet(State(payments): State<Payments>, user: AuthUser) -> Result<axum::Json<WalletView>, HttpError> {
    let region = RegionCode::parse(user.region()).ok_or(PaymentsError::RegionNotSupported)?;
    payments.ensure_wallet(user.account_id(), region).await.map_err(PaymentsError::from)?;
    let wallet = store::wallet(&payments.inner.db, user.account_id())
        .await
        .map_err(PaymentsError::from)?
        .ok_or(PaymentsError::NotFound("no wallet"))?;
    Ok(axum::Json(WalletView {
        account_id: wallet.id,
        region: wallet.region,
        currency: wallet.currency,
        balance: format_minor(wallet.balance_minor, wallet.currency),
        status: if wallet.frozen.is_some() { "frozen" } else { "active" },
    }))
}

/// The recipient: an account id or a phone number, never both.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Recipient {
    Account(ToAccount),
    Phone(ToPhone),
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ToAccount {
    /// Any other text names nobody (404 `recipient_not_found`).
    #[schema(pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]
    account_id: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ToPhone {
    /// As at sign-in; a number of this form that is not a mobile number gets 422.
    #[schema(pattern = r"^\+[0-9 ().-]{1,31}$")]
    phone: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferRequest {
    to: Recipient,
    /// A decimal string with at most the currency's decimal places: `"150.00"`
    /// (more places, zero or over the maximum: 422 `invalid_amount`).
    #[schema(max_length = 32, pattern = r"^(0|[1-9][0-9]*)(\.[0-9]+)?$")]
    amount: String,
    /// ISO 4217; must be your region's (`RUB` in RU, `BRL` in BR).
    #[schema(value_type = Currency)]
    currency: String,
    /// Trimmed; not blank (422).
    #[schema(min_length = 1, max_length = 140, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    note: Option<String>,
}

/// Send money to someone in your region. Requires `Idempotency-Key`.
#[utoipa::path(post, path = "/v1/transfers", tag = "payments", security(("user" = [])), request_body = TransferRequest,
    params(("Idempotency-Key" = String, Header, pattern = "^[!-~]{1,255}$", description = "unique per request; a retry with the same key and body gets the original answer")),
    responses((status = 201, body = TransferView, description = "durable"),
              (status = 400, description = "`idempotency_key_required`, `invalid_amount`, `invalid_phone`, `invalid_request`: not of the documented form", body = ErrorBody),
              (status = 403, description = "`region_not_supported`, `region_disabled`, `wallet_frozen`", body = ErrorBody),
              (status = 404, description = "`recipient_not_found`", body = ErrorBody),
              (status = 409, description = "`idempotency_key_in_use` (Retry-After)", body = ErrorBody),
              (status = 422, description = "`invalid_amount` (too precise, zero or too large), `invalid_phone` (not a mobile number), `invalid_request` (a blank note), `idempotency_key_reused`, `currency_mismatch`, `self_transfer`, `cross_region`, `recipient_frozen`, `insufficient_funds`, `limit_per_transfer`, `limit_daily`, `limit_monthly`, `limit_night`, `balance_limit` (the recipient's wallet is full)", body = ErrorBody),
              (status = 503, description = "`overloaded`, `ledger_unavailable` (Retry-After)", body = ErrorBody)))]
async fn send(
    State(payments): State<Payments>,
    user: AuthUser,
    headers: HeaderMap,
    Json(body): Json<serde_json::Value>,
) -> Result<Response, HttpError> {
    let TransferInput { key, fingerprint, request, currency, amount_minor, note, recipient_phone } =
        TransferInput::read(&user, &headers, body)?;
    let from = user.account_id().to_owned();
    let from_region = RegionCode::parse(user.region());
    let this = payments.clone();
    payments
        .idempotent(key, fingerprint, from.clone(), async move || {
            if let Some(region) = from_region {
                this.ensure_wallet(&from, region).await?;
            }
            let recipient = this.recipient(&request.to, recipient_phone.as_ref()).await?;
            let to_region = recipient.as_ref().and_then(|(_, region)| *region);
            if let (Some((to, _)), Some(region)) = (&recipient, to_region) {
                this.ensure_wallet(to, region).await?;
            }
            Ok(Command::P2p {
                id: uuid::Uuid::now_v7().to_string(),
                fee_id: uuid::Uuid::now_v7().to_string(),
                from,
                from_region,
                to: recipient.map(|(id, _)| id),
                to_region,
                amount_minor,
                currency,
                note,
            })
        })
        .await
}

/// What `POST /v1/transfers` reads from a request before the ledger sees it.
struct TransferInput {
    key: IdempotencyKey,
    fingerprint: String,
    request: TransferRequest,
    currency: Option<Currency>,
    amount_minor: i64,
    note: Option<String>,
    recipient_phone: Option<PhoneNumber>,
}

impl TransferInput {
    /// The key, the body and its fingerprint, the amount, the note and the
    /// recipient's number, each checked (400 and 422 as documented).
    fn read(user: &AuthUser, headers: &HeaderMap, body: serde_json::Value) -> Result<TransferInput, HttpError> {
        let key = idempotency_key(headers, format!("account:{}", user.account_id()))?;
        let (request, fingerprint) = parse_body::<TransferRequest>(body, "POST /v1/transfers")?;
        let currency = Currency::parse(&request.currency);
        let amount_minor = money::parse_minor(&request.amount, currency.unwrap_or(Currency::Rub), false)
            .and_then(|minor| if minor == 0 { Err(money::AmountError::NotPositive) } else { Ok(minor) })
            .map_err(PaymentsError::InvalidAmount)?;
        let note = request.note.as_deref().map(|note| checked_text(note, "note", NOTE_CHARS_MAX)).transpose()?;
        let recipient_phone = match &request.to {
            Recipient::Phone(ToPhone { phone }) => {
                Some(PhoneNumber::parse(phone).map_err(PaymentsError::InvalidPhone)?)
            }
            Recipient::Account(_) => None,
        };
        Ok(TransferInput { key, fingerprint, request, currency, amount_minor, note, recipient_phone })
    }
}

/// The floor `courier bench ledger` measures the ledger against: the
/// cheapest version of `POST /v1/transfers` the same HTTP stack allows. It
/// authenticates the user and reads and checks the request exactly as the
/// route does, then answers 201 with a body of the same shape, made up,
/// without the ledger (no idempotency record, no wallet, no writer).
/// `courier serve` never mounts it.
pub fn floor(payments: Payments) -> Router {
    Router::new().route(FLOOR_PATH, post(send_to_the_floor)).with_state(payments)
}

/// Where [`floor`] answers.
pub const FLOOR_PATH: &str = "/bench/floor/transfers";

async fn send_to_the_floor(
    State(_): State<Payments>,
    user: AuthUser,
    headers: HeaderMap,
    Json(body): Json<serde_json::Value>,
) -> Result<Response, HttpError> {
    let input = TransferInput::read(&user, &headers, body)?;
    let currency = input.currency.unwrap_or(Currency::Rub);
    let view = TransferView {
        transfer_id: uuid::Uuid::now_v7().to_string(),
        kind: "p2p".into(),
        status: "completed",
        from: user.account_id().to_owned(),
        to: match &input.request.to {
            Recipient::Account(ToAccount { account_id }) => account_id.clone(),
            Recipient::Phone(ToPhone { phone }) => phone.clone(),
        },
        amount: format_minor(input.amount_minor, currency),
        fee: format_minor(0, currency),
        currency: currency.code().to_owned(),
        note: input.note,
        external_ref: None,
        reverses: None,
        created_at: jiff::Timestamp::now().to_string(),
    };
    let body = serde_json::to_vec(&view).map_err(|error| HttpError::internal("floor answer", &error))?;
    Ok((StatusCode::CREATED, [(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// My transfers, newest first.
#[utoipa::path(get, path = "/v1/transfers", tag = "payments", security(("user" = [])), params(PageQuery),
    responses((status = 200, body = inline(Page<TransferView>))))]
async fn transfers(
    State(payments): State<Payments>,
    user: AuthUser,
    Query(query): Query<PageQuery>,
) -> Result<axum::Json<Page<TransferView>>, HttpError> {
    let page = query.parse()?;
    let rows = store::transfers_of(&payments.inner.db, user.account_id(), page.after.as_deref(), page.limit + 1)
        .await
        .map_err(PaymentsError::from)?;
    Ok(axum::Json(Page::from_rows(rows, page.limit, |t| t.id.clone()).map(|t| TransferView::from(&t))))
}

/// One of my transfers.
#[utoipa::path(get, path = "/v1/transfers/{id}", tag = "payments", security(("user" = [])), params(("id" = String, Path, pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")),
    responses((status = 200, body = TransferView), (status = 404, description = "`not_found`, also for other people's", body = ErrorBody)))]
async fn transfer(
    State(payments): State<Payments>,
    user: AuthUser,
    IdPath(id): IdPath,
) -> Result<axum::Json<TransferView>, HttpError> {
    let transfer = store::transfer_of(&payments.inner.db, user.account_id(), &id)
        .await
        .map_err(PaymentsError::from)?
        .ok_or(PaymentsError::NotFound("no such transfer of yours"))?;
    Ok(axum::Json(TransferView::from(&transfer)))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExternalMoney {
    /// Any other text names nobody (404 `not_found`).
    #[schema(pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]
    account_id: String,
    /// As in a transfer (more places, zero or over the maximum: 422).
    #[schema(max_length = 32, pattern = r"^(0|[1-9][0-9]*)(\.[0-9]+)?$")]
    amount: String,
    #[schema(value_type = Currency)]
    currency: String,
    /// The payment rail's reference for this movement; trimmed, not blank (422).
    #[schema(min_length = 1, max_length = 128, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    external_ref: String,
}

/// Record money entering a wallet through the region's settlement account.
#[utoipa::path(post, path = "/admin/v1/deposits", tag = "finance-ops", security(("operator" = [])), request_body = ExternalMoney,
    params(("Idempotency-Key" = String, Header, pattern = "^[!-~]{1,255}$", description = "unique per request; a retry with the same key and body gets the original answer")),
    responses((status = 201, body = TransferView),
              (status = 400, description = "`idempotency_key_required`, `invalid_amount`, `invalid_request`: not of the documented form", body = ErrorBody),
              (status = 403, description = "`region_not_supported`, `region_disabled`, `wallet_frozen`", body = ErrorBody),
              (status = 404, description = "`not_found`: no such account", body = ErrorBody),
              (status = 409, description = "`idempotency_key_in_use` (Retry-After)", body = ErrorBody),
              (status = 422, description = "`invalid_amount` (too precise, zero or too large), `invalid_request` (a blank reference), `idempotency_key_reused`, `currency_mismatch`, `balance_limit` (the wallet would hold more than 10,000,000,000,000.00)", body = ErrorBody),
              (status = 503, description = "`overloaded`, `ledger_unavailable` (Retry-After)", body = ErrorBody)))]
async fn deposit(
    State(payments): State<Payments>,
    operator: Authorized<OperatorRole>,
    headers: HeaderMap,
    Json(body): Json<serde_json::Value>,
) -> Result<Response, HttpError> {
    external(payments, operator, headers, body, true).await
}

/// Record money leaving a wallet through the region's settlement account; never below zero.
#[utoipa::path(post, path = "/admin/v1/withdrawals", tag = "finance-ops", security(("operator" = [])), request_body = ExternalMoney,
    params(("Idempotency-Key" = String, Header, pattern = "^[!-~]{1,255}$", description = "unique per request; a retry with the same key and body gets the original answer")),
    responses((status = 201, body = TransferView),
              (status = 400, description = "`idempotency_key_required`, `invalid_amount`, `invalid_request`: not of the documented form", body = ErrorBody),
              (status = 403, description = "`region_not_supported`, `region_disabled`, `wallet_frozen`", body = ErrorBody),
              (status = 404, description = "`not_found`: no such account", body = ErrorBody),
              (status = 409, description = "`idempotency_key_in_use` (Retry-After)", body = ErrorBody),
              (status = 422, description = "`invalid_amount` (too precise, zero or too large), `invalid_request` (a blank reference), `idempotency_key_reused`, `currency_mismatch`, `insufficient_funds`", body = ErrorBody),
              (status = 503, description = "`overloaded`, `ledger_unavailable` (Retry-After)", body = ErrorBody)))]
async fn withdrawal(
    State(payments): State<Payments>,
    operator: Authorized<OperatorRole>,
    headers: HeaderMap,
    Json(body): Json<serde_json::Value>,
) -> Result<Response, HttpError> {
    external(payments, operator, headers, body, false).await
}

async fn external(
    payments: Payments,
    operator: Authorized<OperatorRole>,
    headers: HeaderMap,
    body: serde_json::Value,
    deposit: bool,
) -> Result<Response, HttpError> {
    let operator_id = operator.operator.operator_id;
    let key = idempotency_key(&headers, format!("operator:{operator_id}"))?;
    let route = if deposit { "POST /admin/v1/deposits" } else { "POST /admin/v1/withdrawals" };
    let (request, fingerprint) = parse_body::<ExternalMoney>(body, route)?;
    let currency = Currency::parse(&request.currency).ok_or_else(|| {
        PaymentsError::CurrencyMismatch(format!("{:?} is not a currency of a supported region", request.currency))
    })?;
    let amount = Money::parse(&request.amount, currency).map_err(PaymentsError::InvalidAmount)?;
    let external_ref = checked_text(&request.external_ref, "external_ref", EXTERNAL_REF_CHARS_MAX)?;
    if !is_uuid(&request.account_id) {
        return Err(PaymentsError::NotFound("no such account").into());
    }
    let this = payments.clone();
    payments
        .idempotent(key, fingerprint, operator_id.clone(), async move || {
            let account = courier_accounts::store::account(&this.inner.db, &request.account_id)
                .await?
                .ok_or(PaymentsError::NotFound("no such account"))?;
            let region = RegionCode::parse(account.region()).ok_or(PaymentsError::RegionNotSupported)?;
            this.ensure_wallet(&account.id, region).await?;
            let id = uuid::Uuid::now_v7().to_string();
            Ok(if deposit {
                Command::Deposit { id, wallet: account.id, amount, external_ref, operator: operator_id }
            } else {
                Command::Withdrawal { id, wallet: account.id, amount, external_ref, operator: operator_id }
            })
        })
        .await
}

/// A wallet's status after a freeze or an unfreeze.
#[derive(Serialize, ToSchema)]
pub struct WalletStatus {
    account_id: String,
    /// `frozen` or `active`.
    status: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Reason {
    /// Trimmed, not blank (422).
    #[schema(min_length = 1, max_length = 500, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    reason: String,
}

/// Freeze a wallet: it can neither send nor receive.
#[utoipa::path(post, path = "/admin/v1/accounts/{id}/freeze", tag = "finance-ops", security(("operator" = [])),
    params(("id" = String, Path, pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")), request_body = Reason,
    responses((status = 200, body = WalletStatus), (status = 404, description = "`not_found`: no wallet", body = ErrorBody),
              (status = 409, description = "`already_frozen`", body = ErrorBody),
              (status = 422, description = "`invalid_request`: a blank reason", body = ErrorBody),
              (status = 503, description = "`overloaded`, `ledger_unavailable` (Retry-After)", body = ErrorBody)))]
async fn freeze(
    State(payments): State<Payments>,
    operator: Authorized<OperatorRole>,
    IdPath(id): IdPath,
    Json(body): Json<Reason>,
) -> Result<Response, HttpError> {
    set_frozen(payments, operator, id, body, true).await
}

/// Unfreeze a wallet.
#[utoipa::path(post, path = "/admin/v1/accounts/{id}/unfreeze", tag = "finance-ops", security(("operator" = [])),
    params(("id" = String, Path, pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")), request_body = Reason,
    responses((status = 200, body = WalletStatus), (status = 404, description = "`not_found`: no wallet", body = ErrorBody),
              (status = 409, description = "`not_frozen`", body = ErrorBody),
              (status = 422, description = "`invalid_request`: a blank reason", body = ErrorBody),
              (status = 503, description = "`overloaded`, `ledger_unavailable` (Retry-After)", body = ErrorBody)))]
async fn unfreeze(
    State(payments): State<Payments>,
    operator: Authorized<OperatorRole>,
    IdPath(id): IdPath,
    Json(body): Json<Reason>,
) -> Result<Response, HttpError> {
    set_frozen(payments, operator, id, body, false).await
}

async fn set_frozen(
    payments: Payments,
    operator: Authorized<OperatorRole>,
    id: String,
    body: Reason,
    frozen: bool,
) -> Result<Response, HttpError> {
    let reason = checked_text(&body.reason, "reason", REASON_CHARS_MAX)?;
    let operator_id = operator.operator.operator_id;
    tracing::info!(operator = %operator_id, account = %id, frozen, %reason, "wallet freeze changed");
    let freeze = frozen.then_some(reason);
    payments.submit(Command::SetFrozen { wallet: id, freeze }, operator_id, None).await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReverseRequest {
    /// Why; kept on the reversal as its note. Trimmed, not blank (422).
    #[schema(min_length = 1, max_length = 500, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    reason: String,
    /// How much to take back, in the transfer's currency; default: all that
    /// is left to reverse (more places, zero or over the maximum: 422).
    #[schema(max_length = 32, pattern = r"^(0|[1-9][0-9]*)(\.[0-9]+)?$")]
    amount: Option<String>,
}

/// Reverse a transfer, whole or in part: a compensating transfer from its
/// recipient back to its sender, linked to it, with the fee refunded in
/// proportion. P2P transfers, deposits and withdrawals can be reversed;
/// frozen wallets take part. Requires `Idempotency-Key`.
#[utoipa::path(post, path = "/admin/v1/transfers/{id}/reverse", tag = "finance-ops", security(("operator" = [])),
    request_body = ReverseRequest,
    params(("id" = String, Path, pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"),
           ("Idempotency-Key" = String, Header, pattern = "^[!-~]{1,255}$", description = "unique per request; a retry with the same key and body gets the original answer")),
    responses((status = 201, body = TransferView, description = "the reversal, durable; `reverses` names the transfer"),
              (status = 400, description = "`idempotency_key_required`, `invalid_amount`, `invalid_request`: not of the documented form", body = ErrorBody),
              (status = 404, description = "`not_found`: no such transfer", body = ErrorBody),
              (status = 409, description = "`not_reversible` (a fee or a reversal), `already_reversed` (nothing, or less than the amount, is left to reverse), `insufficient_funds` (the recipient's wallet no longer holds it), `idempotency_key_in_use` (Retry-After)", body = ErrorBody),
              (status = 422, description = "`invalid_amount` (too precise, zero or too large), `invalid_request` (a blank reason), `idempotency_key_reused`, `balance_limit` (the sender's wallet would be too full)", body = ErrorBody),
              (status = 503, description = "`overloaded`, `ledger_unavailable` (Retry-After)", body = ErrorBody)))]
async fn reverse(
    State(payments): State<Payments>,
    operator: Authorized<OperatorRole>,
    IdPath(id): IdPath,
    headers: HeaderMap,
    Json(body): Json<serde_json::Value>,
) -> Result<Response, HttpError> {
    let operator_id = operator.operator.operator_id;
    let key = idempotency_key(&headers, format!("operator:{operator_id}"))?;
    let (request, fingerprint) = parse_body::<ReverseRequest>(body, &format!("POST /admin/v1/transfers/{id}/reverse"))?;
    let reason = checked_text(&request.reason, "reason", REASON_CHARS_MAX)?;
    let original = store::transfer(&payments.inner.db, &id)
        .await
        .map_err(PaymentsError::from)?
        .ok_or(PaymentsError::NotFound("no such transfer"))?;
    let amount_minor = request
        .amount
        .as_deref()
        .map(|amount| Money::parse(amount, original.currency).map(|money| money.minor()))
        .transpose()
        .map_err(PaymentsError::InvalidAmount)?;
    tracing::info!(operator = %operator_id, transfer = %id, ?amount_minor, %reason, "reversal asked");
    payments
        .idempotent(key, fingerprint, operator_id.clone(), async move || {
            Ok(Command::Reverse {
                id: uuid::Uuid::now_v7().to_string(),
                fee_id: uuid::Uuid::now_v7().to_string(),
                original: original.id,
                parties: [original.debit, original.credit],
                region: original.region,
                amount_minor,
                reason,
                operator: operator_id,
            })
        })
        .await
}

/// A transfer as operators see it.
#[derive(Serialize, ToSchema)]
pub struct AdminTransferView {
    #[serde(flatten)]
    transfer: TransferView,
    region: RegionCode,
    /// The account or operator that made it.
    initiator: String,
}

impl From<&crate::ledger::Transfer> for AdminTransferView {
    fn from(transfer: &crate::ledger::Transfer) -> Self {
        AdminTransferView {
            transfer: TransferView::from(transfer),
            region: transfer.region,
            initiator: transfer.initiator.clone(),
        }
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SearchQuery {
    /// A party to the transfer: a wallet's account id.
    #[param(pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]
    account: Option<String>,
    region: Option<RegionCode>,
    /// `p2p`, `fee`, `deposit`, `withdrawal`, `reversal` or `adjustment`; default: all but fees.
    #[param(value_type = Option<String>, pattern = "^(p2p|fee|deposit|withdrawal|reversal|adjustment)$")]
    kind: Option<String>,
    /// Made at or after this moment (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    from: Option<String>,
    /// Made before this moment (RFC 3339); not before `from` (400 `invalid_range`).
    #[param(value_type = Option<String>, format = DateTime)]
    to: Option<String>,
    /// How many items, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<u32>,
    /// `next_cursor` from the previous page.
    #[param(pattern = "^[A-Za-z0-9_-]{1,512}$")]
    cursor: Option<String>,
}

/// An RFC 3339 moment in milliseconds, or 400 naming the parameter.
fn moment(value: Option<&str>, name: &str) -> Result<Option<i64>, HttpError> {
    value
        .map(|text| {
            text.parse::<jiff::Timestamp>().map(|at| at.as_millisecond()).map_err(|_| {
                HttpError::invalid_request(format!("{name} must be an RFC 3339 time, like 2026-12-06T10:00:00Z"))
            })
        })
        .transpose()
}

/// A cursor of a list ordered by id: a position this server wrote is an id.
fn cursor_of_ids(page: &courier_common::page::PageRequest) -> Result<(), HttpError> {
    match &page.after {
        Some(after) if !is_uuid(after) => Err(courier_common::page::not_ours()),
        _ => Ok(()),
    }
}

/// An `account` query parameter: an account id.
fn account_param(account: Option<&str>) -> Result<(), HttpError> {
    match account {
        Some(account) if !is_uuid(account) => Err(HttpError::invalid_request("account must be an account id (a UUID)")),
        _ => Ok(()),
    }
}

fn invalid_range() -> HttpError {
    HttpError::new(StatusCode::BAD_REQUEST, "invalid_range", "from must be before to")
}

/// Search transfers, newest first. Each filter is an index's range: by kind,
/// by region, by time through the ids, or along the account's own history.
/// A page over a long account history may hold fewer than `limit` items and
/// still have a `next_cursor`.
#[utoipa::path(get, path = "/admin/v1/transfers", tag = "finance-ops", security(("operator" = [])), params(SearchQuery),
    responses((status = 200, body = inline(Page<AdminTransferView>)),
              (status = 400, description = "`invalid_request`: a parameter not of the documented form; `invalid_range`: `from` after `to`", body = ErrorBody)))]
async fn search(
    State(payments): State<Payments>,
    _viewer: Authorized<Viewer>,
    Query(query): Query<SearchQuery>,
) -> Result<axum::Json<Page<AdminTransferView>>, HttpError> {
    let page = PageQuery { limit: query.limit, cursor: query.cursor.clone() }.parse()?;
    let from_ms = moment(query.from.as_deref(), "from")?;
    let to_ms = moment(query.to.as_deref(), "to")?;
    if let (Some(from), Some(to)) = (from_ms, to_ms)
        && from > to
    {
        return Err(invalid_range());
    }
    let kind = query
        .kind
        .as_deref()
        .map(|kind| {
            crate::ledger::TransferKind::parse(kind).ok_or_else(|| {
                HttpError::invalid_request("kind must be p2p, fee, deposit, withdrawal, reversal or adjustment")
            })
        })
        .transpose()?;
    account_param(query.account.as_deref())?;
    cursor_of_ids(&page)?;
    let search = store::TransferSearch { account: query.account, region: query.region, kind, from_ms, to_ms };
    let (rows, position) = store::search_transfers(&payments.inner.db, &search, page.after.as_deref(), page.limit)
        .await
        .map_err(PaymentsError::from)?;
    Ok(axum::Json(Page {
        items: rows.iter().map(AdminTransferView::from).collect(),
        next_cursor: position.map(|position| courier_common::page::encode_cursor(&position)),
    }))
}

/// A wallet's freeze: why, by whom, when.
#[derive(Serialize, ToSchema)]
pub struct FreezeView {
    reason: String,
    /// The operator's id.
    by: String,
    at: String,
}

/// A wallet as operators see it.
#[derive(Serialize, ToSchema)]
pub struct AccountView {
    account_id: String,
    region: RegionCode,
    currency: Currency,
    balance: String,
    /// What active holds keep.
    held: String,
    /// The balance less what is held: what can be sent, withdrawn or taken back.
    available: String,
    /// `active` or `frozen`.
    status: &'static str,
    /// Set while the wallet is frozen.
    freeze: Option<FreezeView>,
    /// The newest transfers (up to 20, fees shown on their transfers).
    recent: Vec<AdminTransferView>,
}

const ACCOUNT_RECENT: u32 = 20;

/// A wallet: balance, status with its freeze, and its recent history.
#[utoipa::path(get, path = "/admin/v1/accounts/{id}", tag = "finance-ops", security(("operator" = [])),
    params(("id" = String, Path, pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")),
    responses((status = 200, body = AccountView), (status = 404, description = "`not_found`: no wallet", body = ErrorBody)))]
async fn account(
    State(payments): State<Payments>,
    _viewer: Authorized<Viewer>,
    IdPath(id): IdPath,
) -> Result<axum::Json<AccountView>, HttpError> {
    let db = &payments.inner.db;
    let wallet =
        store::wallet(db, &id).await.map_err(PaymentsError::from)?.ok_or(PaymentsError::NotFound("no such wallet"))?;
    let recent = store::transfers_of(db, &id, None, ACCOUNT_RECENT).await.map_err(PaymentsError::from)?;
    let available = wallet.available_minor();
    Ok(axum::Json(AccountView {
        account_id: wallet.id,
        region: wallet.region,
        currency: wallet.currency,
        balance: format_minor(wallet.balance_minor, wallet.currency),
        held: format_minor(wallet.held_minor, wallet.currency),
        available: format_minor(available, wallet.currency),
        status: if wallet.frozen.is_some() { "frozen" } else { "active" },
        freeze: wallet.frozen.map(|freeze| FreezeView {
            reason: freeze.reason,
            by: freeze.by,
            at: courier_common::time::rfc3339(freeze.at_ms),
        }),
        recent: recent.iter().map(AdminTransferView::from).collect(),
    }))
}

/// Every region's rules.
#[utoipa::path(get, path = "/admin/v1/regions", tag = "finance-ops", security(("operator" = [])),
    responses((status = 200, body = Vec<RegionView>)))]
async fn regions(
    State(payments): State<Payments>,
    _admin: Authorized<courier_accounts::operators::Admin>,
) -> Result<axum::Json<Vec<RegionView>>, HttpError> {
    let regions = store::regions(&payments.inner.db).await.map_err(PaymentsError::from)?;
    Ok(axum::Json(regions.iter().map(RegionView::from).collect()))
}

/// A present field: `Some` of its value, `null` included (an absent field is
/// `None` through `#[serde(default)]`).
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(deserializer: D) -> Result<Option<T>, D::Error> {
    T::deserialize(deserializer).map(Some)
}

fn some_integer<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    courier_common::json::integer(deserializer).map(Some)
}

/// The fee rule: free while the month's P2P total stays within
/// `free_monthly`, then `rate` of the part above, at most `cap` a transfer.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FeePatch {
    #[schema(max_length = 32, pattern = r"^(0|[1-9][0-9]*)(\.[0-9]+)?$")]
    free_monthly: String,
    /// A fraction from 0 to 0.05 with up to 4 decimal places.
    #[schema(pattern = r"^0(\.[0-9]{1,4})?$")]
    rate: String,
    #[schema(max_length = 32, pattern = r"^(0|[1-9][0-9]*)(\.[0-9]+)?$")]
    cap: String,
}

/// What to change; every field is optional and the others stay.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegionPatch {
    enabled: Option<bool>,
    #[schema(max_length = 32, pattern = r"^(0|[1-9][0-9]*)(\.[0-9]+)?$")]
    per_transfer_max: Option<String>,
    #[schema(max_length = 32, pattern = r"^(0|[1-9][0-9]*)(\.[0-9]+)?$")]
    daily_max: Option<String>,
    #[schema(max_length = 32, pattern = r"^(0|[1-9][0-9]*)(\.[0-9]+)?$")]
    monthly_max: Option<String>,
    /// `null` removes the night limit.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, nullable = true, max_length = 32, pattern = r"^(0|[1-9][0-9]*)(\.[0-9]+)?$")]
    night_max: Option<Option<String>>,
    #[serde(default, deserialize_with = "some_integer")]
    #[schema(minimum = 0, maximum = 23)]
    night_start_hour: Option<i64>,
    #[serde(default, deserialize_with = "some_integer")]
    #[schema(minimum = 0, maximum = 23)]
    night_end_hour: Option<i64>,
    /// `null`: P2P transfers are free.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<FeePatch>, nullable = true)]
    fee: Option<Option<FeePatch>>,
}

fn invalid_rules(message: impl Into<String>) -> HttpError {
    HttpError::new(StatusCode::BAD_REQUEST, "invalid_region_rules", message)
}

impl RegionPatch {
    /// The change this patch asks for, its amounts in `currency`'s minor
    /// units (a region's currency never changes).
    fn change(self, currency: Currency) -> Result<crate::region::RulesChange, HttpError> {
        let amount = |name: &str, text: &str| {
            money::parse_minor(text, currency, false).map_err(|error| invalid_rules(format!("{name}: {error}")))
        };
        let hour = |name: &str, value: i64| {
            i8::try_from(value)
                .ok()
                .filter(|hour| (0..=23).contains(hour))
                .ok_or_else(|| HttpError::invalid_request(format!("{name} must be an hour from 0 to 23")))
        };
        let fee = match self.fee {
            None => None,
            Some(None) => Some(crate::region::FeeRule::None),
            Some(Some(fee)) => Some(crate::region::FeeRule::FreeMonthlyThenRate {
                free_monthly_minor: amount("fee.free_monthly", &fee.free_monthly)?,
                rate_bp: rate_bp(&fee.rate).ok_or_else(|| {
                    invalid_rules("fee.rate must be a fraction from 0 to 0.05 with at most 4 decimal places")
                })?,
                cap_minor: amount("fee.cap", &fee.cap)?,
            }),
        };
        Ok(crate::region::RulesChange {
            enabled: self.enabled,
            per_transfer_max_minor: self.per_transfer_max.map(|text| amount("per_transfer_max", &text)).transpose()?,
            daily_max_minor: self.daily_max.map(|text| amount("daily_max", &text)).transpose()?,
            monthly_max_minor: self.monthly_max.map(|text| amount("monthly_max", &text)).transpose()?,
            night_max_minor: self
                .night_max
                .map(|night| night.map(|text| amount("night_max", &text)).transpose())
                .transpose()?,
            night_start_hour: self.night_start_hour.map(|value| hour("night_start_hour", value)).transpose()?,
            night_end_hour: self.night_end_hour.map(|value| hour("night_end_hour", value)).transpose()?,
            fee,
        })
    }
}

/// A fraction's decimal text in basis points: `"0.005"` → 50.
fn rate_bp(text: &str) -> Option<i64> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if whole != "0" || fraction.len() > 4 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    format!("{fraction:0<4}").parse().ok()
}

/// Change a region's rules (admin). The ledger's writer applies the change
/// in order with the transfers around it: the next transfer obeys it.
#[utoipa::path(patch, path = "/admin/v1/regions/{code}", tag = "finance-ops", security(("operator" = [])),
    params(("code" = RegionCode, Path)), request_body = RegionPatch,
    responses((status = 200, body = RegionView, description = "the rules now in force"),
              (status = 400, description = "`invalid_request`: not of the documented form; `invalid_region_rules`: a limit zero or over the maximum, per transfer over daily or daily over monthly, a night limit over the daily one, a night window of no length, a fee rate over 0.05, an amount with more places than the currency has", body = ErrorBody),
              (status = 404, description = "`not_found`: no such region", body = ErrorBody),
              (status = 503, description = "`overloaded`, `ledger_unavailable` (Retry-After)", body = ErrorBody)))]
async fn patch_region(
    State(payments): State<Payments>,
    admin: Authorized<courier_accounts::operators::Admin>,
    axum::extract::Path(code): axum::extract::Path<String>,
    Json(body): Json<serde_json::Value>,
) -> Result<Response, HttpError> {
    let code = RegionCode::parse(&code).ok_or(PaymentsError::NotFound("no such region"))?;
    let patch: RegionPatch = serde_json::from_value(body)
        .map_err(|error| HttpError::invalid_request(format!("invalid JSON body: {error}")))?;
    let current = store::regions(&payments.inner.db)
        .await
        .map_err(PaymentsError::from)?
        .into_iter()
        .find(|rules| rules.code == code)
        .ok_or(PaymentsError::NotFound("no such region"))?;
    let change = patch.change(current.currency)?;
    // Checked here against the rules just read, to say which rule breaks;
    // the writer applies the change to the rules in force in its turn and
    // checks again.
    change.apply(&current).validate().map_err(|error| invalid_rules(error.0))?;
    let operator_id = admin.operator.operator_id;
    tracing::info!(operator = %operator_id, region = code.as_str(), ?change, "region rules changed");
    payments.submit(Command::SetRegion { code, change }, operator_id, None).await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdjustmentRequest {
    /// The wallet's account id (any other text: 404 `not_found`).
    #[schema(pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]
    account_id: String,
    /// Signed: `"150.00"` credits the wallet, `"-150.00"` debits it (no
    /// negative zero; zero, more places or over the maximum: 422
    /// `invalid_amount`).
    #[schema(
        max_length = 32,
        pattern = r"^(-(0\.[0-9]*[1-9][0-9]*|[1-9][0-9]*(\.[0-9]+)?)|(0|[1-9][0-9]*)(\.[0-9]+)?)$"
    )]
    amount: String,
    #[schema(value_type = Currency)]
    currency: String,
    /// Trimmed, not blank (422).
    #[schema(min_length = 1, max_length = 500, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    reason: String,
}

/// Propose an adjustment (operator). It moves no money until an approver
/// other than the proposer approves it; undecided, it expires after
/// `--adjustment-ttl-s`.
#[utoipa::path(post, path = "/admin/v1/adjustments", tag = "finance-ops", security(("operator" = [])),
    request_body = AdjustmentRequest,
    params(("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "optional: a retry with the same key and body gets the original answer")),
    responses((status = 201, body = AdjustmentView, description = "pending"),
              (status = 400, description = "`invalid_amount`, `invalid_request`: not of the documented form", body = ErrorBody),
              (status = 403, description = "`region_not_supported`: the account is outside every supported region", body = ErrorBody),
              (status = 404, description = "`not_found`: no such account", body = ErrorBody),
              (status = 409, description = "`idempotency_key_in_use` (Retry-After)", body = ErrorBody),
              (status = 422, description = "`invalid_amount` (zero, too precise or too large), `invalid_request` (a blank reason), `currency_mismatch`, `idempotency_key_reused`", body = ErrorBody),
              (status = 503, description = "`overloaded`, `ledger_unavailable` (Retry-After)", body = ErrorBody)))]
async fn propose_adjustment(
    State(payments): State<Payments>,
    operator: Authorized<OperatorRole>,
    headers: HeaderMap,
    Json(body): Json<serde_json::Value>,
) -> Result<Response, HttpError> {
    let operator_id = operator.operator.operator_id;
    let key = optional_key(&headers, &operator_id)?;
    let (request, fingerprint) = parse_body::<AdjustmentRequest>(body, "POST /admin/v1/adjustments")?;
    let currency = Currency::parse(&request.currency).ok_or_else(|| {
        PaymentsError::CurrencyMismatch(format!("{:?} is not a currency of a supported region", request.currency))
    })?;
    let amount_minor = money::parse_minor(&request.amount, currency, true)
        .and_then(|minor| if minor == 0 { Err(money::AmountError::NotPositive) } else { Ok(minor) })
        .map_err(PaymentsError::InvalidAmount)?;
    let reason = checked_text(&request.reason, "reason", REASON_CHARS_MAX)?;
    if !is_uuid(&request.account_id) {
        return Err(PaymentsError::NotFound("no such account").into());
    }
    let account = courier_accounts::store::account(&payments.inner.db, &request.account_id)
        .await
        .map_err(PaymentsError::from)?
        .ok_or(PaymentsError::NotFound("no such account"))?;
    let region = RegionCode::parse(account.region()).ok_or(PaymentsError::RegionNotSupported)?;
    payments.ensure_wallet(&account.id, region).await.map_err(PaymentsError::from)?;
    let now = courier_common::time::now_ms();
    let ttl_ms =
        i64::try_from(payments.inner.writer.config().adjustment_ttl_s.saturating_mul(1_000)).unwrap_or(i64::MAX);
    let command = Command::ProposeAdjustment {
        adjustment: crate::ledger::Adjustment {
            id: uuid::Uuid::now_v7().to_string(),
            account_id: account.id,
            amount_minor,
            currency,
            region,
            reason,
            status: crate::ledger::AdjustmentStatus::Pending,
            proposed_by: operator_id.clone(),
            proposed_at_ms: now,
            expires_at_ms: now.saturating_add(ttl_ms),
            decided_by: None,
            decided_at_ms: None,
            transfer_id: None,
        },
    };
    tracing::info!(operator = %operator_id, "adjustment proposed");
    match key {
        Some(key) => payments.idempotent(key, fingerprint, operator_id, async move || Ok(command)).await,
        None => payments.submit(command, operator_id, None).await,
    }
}

/// An `Idempotency-Key` if the request has one (400 when it is malformed).
fn optional_key(headers: &HeaderMap, operator_id: &str) -> Result<Option<IdempotencyKey>, PaymentsError> {
    if headers.contains_key("idempotency-key") {
        idempotency_key(headers, format!("operator:{operator_id}")).map(Some)
    } else {
        Ok(None)
    }
}

/// Approve a pending adjustment (approver, not its proposer): it is posted
/// between the wallet and the region's adjustments account. Requires
/// `Idempotency-Key`.
#[utoipa::path(post, path = "/admin/v1/adjustments/{id}/approve", tag = "finance-ops", security(("operator" = [])),
    params(("id" = String, Path, pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"),
           ("Idempotency-Key" = String, Header, pattern = "^[!-~]{1,255}$", description = "unique per request; a retry with the same key gets the original answer")),
    responses((status = 200, body = AdjustmentView, description = "approved and posted: `transfer_id` names the transfer"),
              (status = 400, description = "`idempotency_key_required`", body = ErrorBody),
              (status = 403, description = "`four_eyes_violation`: the proposer cannot decide it", body = ErrorBody),
              (status = 404, description = "`not_found`: no such adjustment", body = ErrorBody),
              (status = 409, description = "`adjustment_not_pending` (decided or expired), `insufficient_funds` (a debit beyond the wallet's balance: it stays pending), `idempotency_key_in_use` (Retry-After)", body = ErrorBody),
              (status = 422, description = "`balance_limit` (the wallet would be too full), `idempotency_key_reused`", body = ErrorBody),
              (status = 503, description = "`overloaded`, `ledger_unavailable` (Retry-After)", body = ErrorBody)))]
async fn approve_adjustment(
    State(payments): State<Payments>,
    approver: Authorized<courier_accounts::operators::Approver>,
    IdPath(id): IdPath,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let operator_id = approver.operator.operator_id;
    let key = idempotency_key(&headers, format!("operator:{operator_id}"))?;
    let fingerprint = format!("{:x}", Sha256::digest(format!("POST /admin/v1/adjustments/{id}/approve").as_bytes()));
    let adjustment = store::adjustment(&payments.inner.db, &id)
        .await
        .map_err(PaymentsError::from)?
        .ok_or(PaymentsError::NotFound("no such adjustment"))?;
    let command = Command::DecideAdjustment {
        adjustment_id: id,
        account_id: adjustment.account_id,
        approve: true,
        transfer_id: uuid::Uuid::now_v7().to_string(),
        operator: operator_id.clone(),
    };
    payments.idempotent(key, fingerprint, operator_id, async move || Ok(command)).await
}

/// Reject a pending adjustment (approver, not its proposer).
#[utoipa::path(post, path = "/admin/v1/adjustments/{id}/reject", tag = "finance-ops", security(("operator" = [])),
    params(("id" = String, Path, pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")),
    responses((status = 200, body = AdjustmentView, description = "rejected"),
              (status = 403, description = "`four_eyes_violation`: the proposer cannot decide it", body = ErrorBody),
              (status = 404, description = "`not_found`: no such adjustment", body = ErrorBody),
              (status = 409, description = "`adjustment_not_pending` (decided or expired)", body = ErrorBody),
              (status = 503, description = "`overloaded`, `ledger_unavailable` (Retry-After)", body = ErrorBody)))]
async fn reject_adjustment(
    State(payments): State<Payments>,
    approver: Authorized<courier_accounts::operators::Approver>,
    IdPath(id): IdPath,
) -> Result<Response, HttpError> {
    let operator_id = approver.operator.operator_id;
    let adjustment = store::adjustment(&payments.inner.db, &id)
        .await
        .map_err(PaymentsError::from)?
        .ok_or(PaymentsError::NotFound("no such adjustment"))?;
    let command = Command::DecideAdjustment {
        adjustment_id: id,
        account_id: adjustment.account_id,
        approve: false,
        transfer_id: String::new(),
        operator: operator_id.clone(),
    };
    payments.submit(command, operator_id, None).await
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AdjustmentsQuery {
    /// `pending`, `approved`, `rejected` or `expired`; default: all.
    #[param(value_type = Option<String>, pattern = "^(pending|approved|rejected|expired)$")]
    status: Option<String>,
    /// How many items, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<u32>,
    /// `next_cursor` from the previous page.
    #[param(pattern = "^[A-Za-z0-9_-]{1,512}$")]
    cursor: Option<String>,
}

/// Adjustments, newest first.
#[utoipa::path(get, path = "/admin/v1/adjustments", tag = "finance-ops", security(("operator" = [])), params(AdjustmentsQuery),
    responses((status = 200, body = inline(Page<AdjustmentView>))))]
async fn list_adjustments(
    State(payments): State<Payments>,
    _viewer: Authorized<Viewer>,
    Query(query): Query<AdjustmentsQuery>,
) -> Result<axum::Json<Page<AdjustmentView>>, HttpError> {
    let page = PageQuery { limit: query.limit, cursor: query.cursor }.parse()?;
    let status = query
        .status
        .as_deref()
        .map(|status| {
            crate::ledger::AdjustmentStatus::parse(status)
                .ok_or_else(|| HttpError::invalid_request("status must be pending, approved, rejected or expired"))
        })
        .transpose()?;
    cursor_of_ids(&page)?;
    let rows = store::adjustments(&payments.inner.db, status, page.after.as_deref(), page.limit + 1)
        .await
        .map_err(PaymentsError::from)?;
    let now = courier_common::time::now_ms();
    Ok(axum::Json(Page::from_rows(rows, page.limit, |a| a.id.clone()).map(|a| AdjustmentView::of(&a, now))))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HoldRequest {
    /// More than zero (more places, zero or over the maximum: 422).
    #[schema(max_length = 32, pattern = r"^(0|[1-9][0-9]*)(\.[0-9]+)?$")]
    amount: String,
    #[schema(value_type = Currency)]
    currency: String,
    /// Trimmed, not blank (422).
    #[schema(min_length = 1, max_length = 500, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    reason: String,
    /// The transfer the claim is about, which paid this wallet: a return
    /// reverses it to its sender.
    #[schema(pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]
    transfer_id: Option<String>,
}

/// Place a hold on a wallet (operator): the amount stays in the balance but
/// cannot be sent, withdrawn or taken back until the hold is released,
/// returned or expires (`--hold-ttl-s`).
#[utoipa::path(post, path = "/admin/v1/accounts/{id}/holds", tag = "finance-ops", security(("operator" = [])),
    request_body = HoldRequest,
    params(("id" = String, Path, pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"),
           ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "optional: a retry with the same key and body gets the original answer")),
    responses((status = 201, body = HoldView, description = "active"),
              (status = 400, description = "`invalid_amount`, `invalid_request`: not of the documented form", body = ErrorBody),
              (status = 404, description = "`not_found`: no such wallet or transfer", body = ErrorBody),
              (status = 409, description = "`insufficient_funds`: more than the available balance; `idempotency_key_in_use` (Retry-After)", body = ErrorBody),
              (status = 422, description = "`invalid_amount` (zero, too precise or too large), `invalid_request` (a blank reason, or a transfer that did not pay this wallet), `currency_mismatch`, `idempotency_key_reused`", body = ErrorBody),
              (status = 503, description = "`overloaded`, `ledger_unavailable` (Retry-After)", body = ErrorBody)))]
async fn place_hold(
    State(payments): State<Payments>,
    operator: Authorized<OperatorRole>,
    IdPath(id): IdPath,
    headers: HeaderMap,
    Json(body): Json<serde_json::Value>,
) -> Result<Response, HttpError> {
    let operator_id = operator.operator.operator_id;
    let key = optional_key(&headers, &operator_id)?;
    let (request, fingerprint) = parse_body::<HoldRequest>(body, &format!("POST /admin/v1/accounts/{id}/holds"))?;
    let currency = Currency::parse(&request.currency).ok_or_else(|| {
        PaymentsError::CurrencyMismatch(format!("{:?} is not a currency of a supported region", request.currency))
    })?;
    let amount = Money::parse(&request.amount, currency).map_err(PaymentsError::InvalidAmount)?;
    let reason = checked_text(&request.reason, "reason", REASON_CHARS_MAX)?;
    let wallet = store::wallet(&payments.inner.db, &id)
        .await
        .map_err(PaymentsError::from)?
        .ok_or(PaymentsError::NotFound("no such wallet"))?;
    if let Some(transfer_id) = &request.transfer_id {
        let transfer = match is_uuid(transfer_id) {
            true => store::transfer(&payments.inner.db, transfer_id).await.map_err(PaymentsError::from)?,
            false => None,
        };
        let transfer = transfer.ok_or(PaymentsError::NotFound("no such transfer"))?;
        if transfer.credit != wallet.id {
            return Err(
                PaymentsError::Unprocessable("transfer_id must name a transfer that paid this wallet".into()).into()
            );
        }
    }
    let now = courier_common::time::now_ms();
    let ttl_ms = i64::try_from(payments.inner.writer.config().hold_ttl_s.saturating_mul(1_000)).unwrap_or(i64::MAX);
    let command = Command::PlaceHold {
        hold: crate::ledger::Hold {
            id: uuid::Uuid::now_v7().to_string(),
            account_id: wallet.id,
            amount_minor: amount.minor(),
            currency,
            region: wallet.region,
            reason,
            transfer_id: request.transfer_id,
            status: crate::ledger::HoldStatus::Active,
            placed_by: operator_id.clone(),
            placed_at_ms: now,
            expires_at_ms: now.saturating_add(ttl_ms),
            decided_by: None,
            decided_at_ms: None,
            return_transfer_id: None,
        },
    };
    match key {
        Some(key) => payments.idempotent(key, fingerprint, operator_id, async move || Ok(command)).await,
        None => payments.submit(command, operator_id, None).await,
    }
}

/// Release an active hold (operator): its money is available again.
#[utoipa::path(post, path = "/admin/v1/holds/{id}/release", tag = "finance-ops", security(("operator" = [])),
    params(("id" = String, Path, pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")),
    responses((status = 200, body = HoldView, description = "released"),
              (status = 404, description = "`not_found`: no such hold", body = ErrorBody),
              (status = 409, description = "`hold_not_active`: released, returned or expired already", body = ErrorBody),
              (status = 503, description = "`overloaded`, `ledger_unavailable` (Retry-After)", body = ErrorBody)))]
async fn release_hold(
    State(payments): State<Payments>,
    operator: Authorized<OperatorRole>,
    IdPath(id): IdPath,
) -> Result<Response, HttpError> {
    let operator_id = operator.operator.operator_id;
    let hold = store::hold(&payments.inner.db, &id)
        .await
        .map_err(PaymentsError::from)?
        .ok_or(PaymentsError::NotFound("no such hold"))?;
    let command = Command::ReleaseHold {
        hold_id: hold.id,
        account_id: hold.account_id,
        operator: operator_id.clone(),
        expired: false,
    };
    payments.submit(command, operator_id, None).await
}

/// Return an active hold (operator): it is released, and as much of it as
/// is left to reverse of its transfer goes back to that transfer's sender
/// as a reversal (with the fee in proportion). Requires `Idempotency-Key`.
#[utoipa::path(post, path = "/admin/v1/holds/{id}/return", tag = "finance-ops", security(("operator" = [])),
    params(("id" = String, Path, pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"),
           ("Idempotency-Key" = String, Header, pattern = "^[!-~]{1,255}$", description = "unique per request; a retry with the same key gets the original answer")),
    responses((status = 200, body = HoldView, description = "returned: `return_transfer_id` names the reversal"),
              (status = 400, description = "`idempotency_key_required`", body = ErrorBody),
              (status = 404, description = "`not_found`: no such hold", body = ErrorBody),
              (status = 409, description = "`hold_not_active`, `not_reversible` (the hold names no transfer), `already_reversed` (nothing of its transfer is left to reverse), `idempotency_key_in_use` (Retry-After)", body = ErrorBody),
              (status = 422, description = "`balance_limit` (the sender's wallet would be too full), `idempotency_key_reused`", body = ErrorBody),
              (status = 503, description = "`overloaded`, `ledger_unavailable` (Retry-After)", body = ErrorBody)))]
async fn return_hold(
    State(payments): State<Payments>,
    operator: Authorized<OperatorRole>,
    IdPath(id): IdPath,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let operator_id = operator.operator.operator_id;
    let key = idempotency_key(&headers, format!("operator:{operator_id}"))?;
    let fingerprint = format!("{:x}", Sha256::digest(format!("POST /admin/v1/holds/{id}/return").as_bytes()));
    let db = &payments.inner.db;
    let hold =
        store::hold(db, &id).await.map_err(PaymentsError::from)?.ok_or(PaymentsError::NotFound("no such hold"))?;
    let original = match &hold.transfer_id {
        Some(transfer_id) => store::transfer(db, transfer_id).await.map_err(PaymentsError::from)?,
        None => None,
    };
    // A hold that names no transfer (or one no longer found) returns
    // nothing: the writer answers `not_reversible`, or `hold_not_active`
    // first, in order with the hold's other changes.
    let (original, parties, region) = match original {
        Some(t) => (t.id, [t.debit, t.credit], t.region),
        None => (String::new(), [hold.account_id.clone(), hold.account_id.clone()], hold.region),
    };
    let command = Command::ReturnHold {
        hold_id: hold.id,
        account_id: hold.account_id,
        id: uuid::Uuid::now_v7().to_string(),
        fee_id: uuid::Uuid::now_v7().to_string(),
        original,
        parties,
        region,
        operator: operator_id.clone(),
    };
    payments.idempotent(key, fingerprint, operator_id, async move || Ok(command)).await
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct HoldsQuery {
    /// A wallet's account id.
    #[param(pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]
    account: Option<String>,
    /// `active`, `released`, `returned` or `expired`; default: all.
    #[param(value_type = Option<String>, pattern = "^(active|released|returned|expired)$")]
    status: Option<String>,
    /// How many items, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<u32>,
    /// `next_cursor` from the previous page.
    #[param(pattern = "^[A-Za-z0-9_-]{1,512}$")]
    cursor: Option<String>,
}

/// Holds, newest first.
#[utoipa::path(get, path = "/admin/v1/holds", tag = "finance-ops", security(("operator" = [])), params(HoldsQuery),
    responses((status = 200, body = inline(Page<HoldView>))))]
async fn list_holds(
    State(payments): State<Payments>,
    _viewer: Authorized<Viewer>,
    Query(query): Query<HoldsQuery>,
) -> Result<axum::Json<Page<HoldView>>, HttpError> {
    let page = PageQuery { limit: query.limit, cursor: query.cursor }.parse()?;
    let status = query
        .status
        .as_deref()
        .map(|status| {
            crate::ledger::HoldStatus::parse(status)
                .ok_or_else(|| HttpError::invalid_request("status must be active, released, returned or expired"))
        })
        .transpose()?;
    account_param(query.account.as_deref())?;
    cursor_of_ids(&page)?;
    let rows =
        store::holds(&payments.inner.db, query.account.as_deref(), status, page.after.as_deref(), page.limit + 1)
            .await
            .map_err(PaymentsError::from)?;
    Ok(axum::Json(Page::from_rows(rows, page.limit, |h| h.id.clone()).map(|h| HoldView::from(&h))))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// An operator's id (`system`, `bootstrap`).
    #[param(max_length = 64, pattern = "^[!-~]+$")]
    operator: Option<String>,
    /// e.g. `freeze`, `reversal`, `hold_returned`, `adjustment_approved`, `region_changed`, `operator_created`.
    #[param(max_length = 64, pattern = "^[a-z_]+$")]
    action: Option<String>,
    /// What it acted on: an account, transfer, hold, adjustment, region or operator id.
    #[param(max_length = 64, pattern = "^[!-~]+$")]
    target: Option<String>,
    /// How many items, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<u32>,
    /// `next_cursor` from the previous page.
    #[param(pattern = "^[A-Za-z0-9_-]{1,512}$")]
    cursor: Option<String>,
}

/// An audit entry: who did what to what, when, with the target's state
/// before and after (JSON texts), chained by `hash`.
#[derive(Serialize, ToSchema)]
pub struct AuditEntryView {
    seq: i64,
    at: String,
    operator: String,
    action: String,
    target: String,
    request_id: Option<String>,
    before: Option<String>,
    after: Option<String>,
    /// SHA-256 over the previous entry's hash and this entry's canonical bytes.
    hash: String,
}

/// The audit log of operators' actions, newest first.
#[utoipa::path(get, path = "/admin/v1/audit", tag = "finance-ops", security(("operator" = [])), params(AuditQuery),
    responses((status = 200, body = inline(Page<AuditEntryView>))))]
async fn audit_log(
    State(payments): State<Payments>,
    _viewer: Authorized<Viewer>,
    Query(query): Query<AuditQuery>,
) -> Result<axum::Json<Page<AuditEntryView>>, HttpError> {
    let page = PageQuery { limit: query.limit, cursor: query.cursor }.parse()?;
    let before_seq = match &page.after {
        Some(after) => Some(after.parse::<i64>().map_err(|_| courier_common::page::not_ours())?),
        None => None,
    };
    for value in [&query.operator, &query.target].into_iter().flatten() {
        if value.is_empty() || value.len() > 64 || !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(HttpError::invalid_request("operator and target are 1 to 64 printable ASCII characters"));
        }
    }
    if let Some(action) = &query.action
        && (action.is_empty() || action.len() > 64 || !action.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
    {
        return Err(HttpError::invalid_request("action is 1 to 64 lower-case letters and underscores"));
    }
    let filter = courier_common::audit::Filter { operator: query.operator, action: query.action, target: query.target };
    let rows = courier_common::audit::list(&payments.inner.db, &filter, before_seq, page.limit + 1)
        .await
        .map_err(PaymentsError::from)?;
    Ok(axum::Json(Page::from_rows(rows, page.limit, |e| e.seq.to_string()).map(|e| AuditEntryView {
        seq: e.seq,
        at: courier_common::time::rfc3339(e.at_ms),
        operator: e.operator,
        action: e.action,
        target: e.target,
        request_id: e.request_id,
        before: e.before,
        after: e.after,
        hash: e.hash,
    })))
}

/// Recomputes the audit log's hash chain from the first entry and names
/// the first entry that does not hold (changed, missing, out of order, or
/// cut from the end).
#[utoipa::path(get, path = "/admin/v1/audit/verify", tag = "finance-ops", security(("operator" = [])),
    responses((status = 200, body = courier_common::audit::Verdict)))]
async fn audit_verify(
    State(payments): State<Payments>,
    _viewer: Authorized<Viewer>,
) -> Result<axum::Json<courier_common::audit::Verdict>, HttpError> {
    let verdict = courier_common::audit::verify_stored(&payments.inner.db).await.map_err(PaymentsError::from)?;
    if !verdict.ok {
        tracing::error!(first_bad = ?verdict.first_bad, "the audit log does not verify");
    }
    Ok(axum::Json(verdict))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AtQuery {
    /// The moment (RFC 3339): the balance after every transfer made at or before it.
    #[param(value_type = String, format = DateTime)]
    at: String,
}

/// A balance at a moment.
#[derive(Serialize, ToSchema)]
pub struct BalanceAt {
    account_id: String,
    currency: Currency,
    balance: String,
    at: String,
}

/// A wallet's balance as it was at a moment, exactly: the balance recorded
/// with its last transfer at or before it, found from the first checkpoint
/// after it without summing the history.
#[utoipa::path(get, path = "/admin/v1/accounts/{id}/balance", tag = "finance-ops", security(("operator" = [])),
    params(("id" = String, Path, pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"), AtQuery),
    responses((status = 200, body = BalanceAt), (status = 404, description = "`not_found`: no wallet", body = ErrorBody)))]
async fn balance_at(
    State(payments): State<Payments>,
    _viewer: Authorized<Viewer>,
    IdPath(id): IdPath,
    Query(query): Query<AtQuery>,
) -> Result<axum::Json<BalanceAt>, HttpError> {
    let at_ms = moment(Some(&query.at), "at")?.unwrap_or_default();
    let (wallet, balance) = store::balance_at(&payments.inner.db, &id, at_ms)
        .await
        .map_err(PaymentsError::from)?
        .ok_or(PaymentsError::NotFound("no such wallet"))?;
    Ok(axum::Json(BalanceAt {
        account_id: wallet.id,
        currency: wallet.currency,
        balance: format_minor(balance, wallet.currency),
        at: courier_common::time::rfc3339(at_ms),
    }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct QuoteQuery {
    /// What I mean to send, in my region's currency; without it, the answer
    /// has no `amount`, `fee` or `total`.
    #[param(max_length = 32, pattern = r"^(0|[1-9][0-9]*)(\.[0-9]+)?$")]
    amount: Option<String>,
    /// Whom I mean to send it to, by phone number or account id: refused as
    /// `POST /v1/transfers` would refuse them now (`recipient_not_found`,
    /// `self_transfer`, `cross_region`, `recipient_frozen`).
    #[param(pattern = r"^(\+[0-9 ().-]{1,31}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$")]
    to: Option<String>,
}

/// What is left of a limit now.
#[derive(Serialize, ToSchema)]
pub struct LimitsLeft {
    per_transfer: String,
    daily: String,
    monthly: String,
    /// `null` outside the night window, or where there is no night limit.
    night: Option<String>,
}

/// What sending an amount now would cost.
#[derive(Serialize, ToSchema)]
pub struct Quote {
    #[serde(skip_serializing_if = "Option::is_none")]
    amount: Option<String>,
    /// Paid by the sender on top of the amount.
    #[serde(skip_serializing_if = "Option::is_none")]
    fee: Option<String>,
    /// Amount and fee.
    #[serde(skip_serializing_if = "Option::is_none")]
    total: Option<String>,
    /// The recipient's account, when `to` was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<String>,
    currency: Currency,
    /// What is left of each of my limits before this transfer.
    limits_left: LimitsLeft,
}

/// The fee for sending `amount` now, whether `to` can be paid, and what is
/// left of my limits: from my wallet's usage as of the ledger's last commit
/// (the transfer's own answer is what counts).
#[utoipa::path(get, path = "/v1/transfers/quote", tag = "payments", security(("user" = [])), params(QuoteQuery),
    responses((status = 200, body = Quote),
              (status = 400, description = "`invalid_amount`, `invalid_phone`, `invalid_request`: not of the documented form", body = ErrorBody),
              (status = 403, description = "`region_not_supported`", body = ErrorBody),
              (status = 404, description = "`recipient_not_found`", body = ErrorBody),
              (status = 422, description = "`invalid_amount` (too precise, zero or too large), `invalid_phone` (not a mobile number), `self_transfer`, `cross_region`, `recipient_frozen`", body = ErrorBody)))]
async fn quote(
    State(payments): State<Payments>,
    user: AuthUser,
    Query(query): Query<QuoteQuery>,
) -> Result<axum::Json<Quote>, HttpError> {
    let region = RegionCode::parse(user.region()).ok_or(PaymentsError::RegionNotSupported)?;
    let db = &payments.inner.db;
    let rules = store::regions(db)
        .await
        .map_err(PaymentsError::from)?
        .into_iter()
        .find(|rules| rules.code == region)
        .ok_or(PaymentsError::RegionNotSupported)?;
    let amount = query
        .amount
        .as_deref()
        .map(|amount| {
            money::parse_minor(amount, rules.currency, false)
                .and_then(|minor| if minor == 0 { Err(money::AmountError::NotPositive) } else { Ok(minor) })
                .map_err(PaymentsError::InvalidAmount)
        })
        .transpose()?;
    let to = match query.to {
        Some(phone) => Some(payments.payable(user.account_id(), region, phone).await?),
        None => None,
    };
    payments.ensure_wallet(user.account_id(), region).await.map_err(PaymentsError::from)?;
    let wallet = store::wallet(db, user.account_id())
        .await
        .map_err(PaymentsError::from)?
        .ok_or(PaymentsError::NotFound("no wallet"))?;
    let windows = rules.windows(courier_common::time::now_ms());
    let mut usage = wallet.usage;
    usage.roll(windows);
    let show = |minor: i64| format_minor(minor.max(0), rules.currency);
    let fee = amount.map(|amount| rules.fee.fee_minor(usage.month_minor, amount));
    Ok(axum::Json(Quote {
        amount: amount.map(show),
        fee: fee.map(show),
        total: amount.zip(fee).map(|(amount, fee)| show(amount.saturating_add(fee))),
        to,
        currency: rules.currency,
        limits_left: LimitsLeft {
            per_transfer: show(rules.per_transfer_max_minor),
            daily: show(rules.daily_max_minor - usage.day_minor),
            monthly: show(rules.monthly_max_minor - usage.month_minor),
            night: match (rules.night_max_minor, windows.night_start_ms) {
                (Some(night_max), Some(_)) => Some(show(night_max - usage.night_minor)),
                _ => None,
            },
        },
    }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StatementQuery {
    /// From this moment, inclusive (RFC 3339); default: 30 days before `to`.
    #[param(value_type = Option<String>, format = DateTime)]
    from: Option<String>,
    /// To this moment, exclusive (RFC 3339); default: now. At most 366 days after `from`.
    #[param(value_type = Option<String>, format = DateTime)]
    to: Option<String>,
}

/// One movement of a statement.
#[derive(Serialize, ToSchema)]
pub struct Movement {
    transfer_id: String,
    /// `p2p`, `fee`, `deposit`, `withdrawal`, `reversal`, `adjustment`.
    kind: String,
    /// Signed from the wallet's side: `"-150.00"` left it, `"150.00"` came in.
    amount: String,
    /// The other ledger account: a wallet's account id, or `sys:RU:fee_revenue`.
    counterparty: String,
    /// The wallet's balance right after it.
    balance: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
    created_at: String,
}

/// A statement: the balance before, each movement with the balance after
/// it, and the balance after.
#[derive(Serialize, ToSchema)]
pub struct Statement {
    account_id: String,
    currency: Currency,
    from: String,
    to: String,
    opening_balance: String,
    /// Oldest first.
    movements: Vec<Movement>,
    closing_balance: String,
}

const STATEMENT_DAYS_MAX: i64 = 366;
const STATEMENT_DAYS_DEFAULT: i64 = 30;

/// My statement for a period: opening balance, every movement with its
/// running balance, closing balance.
#[utoipa::path(get, path = "/v1/wallet/statement", tag = "payments", security(("user" = [])), params(StatementQuery),
    responses((status = 200, body = Statement),
              (status = 400, description = "`invalid_request`: a time not in RFC 3339; `invalid_range`: `from` after `to`, more than 366 days, or more than 10,000 movements (ask for a shorter period)", body = ErrorBody),
              (status = 403, description = "`region_not_supported`", body = ErrorBody)))]
async fn statement(
    State(payments): State<Payments>,
    user: AuthUser,
    Query(query): Query<StatementQuery>,
) -> Result<axum::Json<Statement>, HttpError> {
    let region = RegionCode::parse(user.region()).ok_or(PaymentsError::RegionNotSupported)?;
    let to_ms = moment(query.to.as_deref(), "to")?.unwrap_or_else(courier_common::time::now_ms);
    let day_ms = 24 * 3_600 * 1_000;
    let from_ms =
        moment(query.from.as_deref(), "from")?.unwrap_or_else(|| to_ms.saturating_sub(STATEMENT_DAYS_DEFAULT * day_ms));
    if from_ms > to_ms {
        return Err(invalid_range());
    }
    if to_ms - from_ms > STATEMENT_DAYS_MAX * day_ms {
        return Err(HttpError::new(StatusCode::BAD_REQUEST, "invalid_range", "a statement covers at most 366 days"));
    }
    payments.ensure_wallet(user.account_id(), region).await.map_err(PaymentsError::from)?;
    let db = &payments.inner.db;
    let wallet = store::wallet(db, user.account_id())
        .await
        .map_err(PaymentsError::from)?
        .ok_or(PaymentsError::NotFound("no wallet"))?;
    let (opening, movements, closing) =
        store::statement(db, &wallet, from_ms, to_ms).await.map_err(PaymentsError::from)?.map_err(|()| {
            HttpError::new(
                StatusCode::BAD_REQUEST,
                "invalid_range",
                format!("more than {} movements in this period; ask for a shorter one", store::STATEMENT_MOVEMENTS_MAX),
            )
        })?;
    let money = |minor: i64| format_minor(minor, wallet.currency);
    Ok(axum::Json(Statement {
        account_id: wallet.id.clone(),
        currency: wallet.currency,
        from: courier_common::time::rfc3339(from_ms),
        to: courier_common::time::rfc3339(to_ms),
        opening_balance: money(opening),
        movements: movements
            .iter()
            .map(|t| {
                let outgoing = t.debit == wallet.id;
                Movement {
                    transfer_id: t.id.clone(),
                    kind: t.kind.as_str().to_owned(),
                    amount: money(if outgoing { -t.amount_minor } else { t.amount_minor }),
                    counterparty: if outgoing { t.credit.clone() } else { t.debit.clone() },
                    balance: money(store::balance_after(t, &wallet.id)),
                    note: t.note.clone(),
                    created_at: courier_common::time::rfc3339(t.created_at_ms),
                }
            })
            .collect(),
        closing_balance: money(closing),
    }))
}
