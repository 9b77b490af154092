//! HTTP routes of the accounts service (API.md, "Accounts") and the operator
//! management part of the admin API.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, FromRef, FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::IntoResponse;
use axum::routing::{delete, get, post, put};
use courier_common::ids::IdPath;
use courier_common::page::PageQuery;
use courier_common::time::{now_ms, rfc3339};
use courier_common::{ErrorBody, HttpError, Json, Page, Query};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use crate::auth::AuthUser;
use crate::error::AccountsError;
use crate::operators::{self, Admin, Authorized, Operator, OperatorDirectory, Role};
use crate::phone::PhoneNumber;
use crate::secret::SignInCode;
use crate::service::{Accounts, Session, parse_device_name};
use crate::settings::{CallsFrom, P2p, Settings};
use crate::store;
use crate::tokens::{Jwks, TokenVerifier};

impl FromRef<Accounts> for Arc<TokenVerifier> {
    fn from_ref(accounts: &Accounts) -> Self {
        accounts.verifier()
    }
}

impl FromRef<Accounts> for OperatorDirectory {
    fn from_ref(accounts: &Accounts) -> Self {
        OperatorDirectory(accounts.db().clone())
    }
}

/// The accounts router: `/v1/auth/…`, `/v1/me/…` and `/admin/v1/operators…`.
pub fn app(accounts: Accounts) -> Router {
    Router::new()
        .route("/v1/auth/codes", post(request_code))
        .route("/v1/auth/sessions", post(sign_in))
        .route("/v1/auth/refresh", post(refresh))
        .route("/v1/auth/keys", get(keys))
        .route("/v1/me", get(me))
        .route("/v1/me/devices", get(devices))
        .route("/v1/me/devices/{id}", delete(revoke_device))
        .route("/v1/me/settings", get(settings).patch(update_settings))
        .route("/v1/me/blocked", get(blocked))
        .route("/v1/me/blocked/{account_id}", put(block).delete(unblock))
        .route("/admin/v1/operators", post(create_operator).get(list_operators))
        .route("/admin/v1/operators/{id}", delete(revoke_operator))
        .with_state(accounts)
}

#[derive(OpenApi)]
#[openapi(
    paths(
        request_code, sign_in, refresh, keys, me, devices, revoke_device, settings, update_settings, blocked, block,
        unblock, create_operator, list_operators, revoke_operator
    ),
    components(schemas(ErrorBody, Jwks, Settings, CallsFrom, P2p, Role, Operator)),
    modifiers(&SecuritySchemes),
    tags((name = "accounts", description = "Sign-in, tokens, devices, settings, block list"),
         (name = "operators", description = "Finance-ops principals (admin role)"))
)]
pub struct ApiDoc;

struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "user",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
        );
        components.add_security_scheme(
            "operator",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The client's address, when the server was started with connection info.
pub struct ClientAddr(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientAddr(parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|info| info.0.ip())))
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CodeRequest {
    /// E.164, spaces, dots, dashes and parentheses allowed: `+79161234567`.
    /// A number of this form that is not a mobile number gets 422.
    #[schema(pattern = r"^\+[0-9 ().-]{1,31}$")]
    phone: String,
}

#[derive(Serialize, ToSchema)]
pub struct CodeSent {
    /// Seconds the code stays valid.
    expires_in: u64,
    /// Seconds before another code may be requested for this number.
    resend_after: u64,
}

/// Send a sign-in code to a phone number.
#[utoipa::path(post, path = "/v1/auth/codes", tag = "accounts", request_body = CodeRequest,
    responses((status = 202, body = CodeSent),
              (status = 400, description = "`invalid_phone`: not of the documented form", body = ErrorBody),
              (status = 422, description = "`invalid_phone`: not a mobile number", body = ErrorBody),
              (status = 429, description = "`rate_limited`, with Retry-After", body = ErrorBody),
              (status = 502, description = "`code_delivery_failed`", body = ErrorBody)))]
async fn request_code(
    State(accounts): State<Accounts>,
    ClientAddr(client): ClientAddr,
    Json(body): Json<CodeRequest>,
) -> Result<impl IntoResponse, HttpError> {
    let phone = PhoneNumber::parse(&body.phone).map_err(AccountsError::from)?;
    accounts.request_code(&phone, client).await?;
    let config = accounts.config();
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(CodeSent {
            expires_in: config.sign_in_code_ttl_s,
            resend_after: config.sign_in_code_resend_after_s,
        }),
    ))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignInRequest {
    #[schema(pattern = r"^\+[0-9 ().-]{1,31}$")]
    phone: String,
    /// The six digits from the SMS.
    #[schema(pattern = "^[0-9]{6}$")]
    code: String,
    /// Shown in the device list, e.g. "Pixel 9"; trimmed, not blank (422).
    #[schema(min_length = 1, max_length = 64, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    device_name: String,
}

#[derive(Serialize, ToSchema)]
pub struct SessionBody {
    account_id: String,
    device_id: String,
    /// EdDSA JWT; send as `Authorization: Bearer …`.
    access_token: String,
    /// Spend it once at `/v1/auth/refresh` for a new pair.
    refresh_token: String,
    /// Seconds the access token lives.
    expires_in: u64,
}

impl From<Session> for SessionBody {
    fn from(session: Session) -> Self {
        SessionBody {
            account_id: session.account_id,
            device_id: session.device_id,
            access_token: session.access_token,
            refresh_token: session.refresh_token,
            expires_in: session.expires_in_s,
        }
    }
}

/// Sign in with a code; creates the account on first sign-in.
#[utoipa::path(post, path = "/v1/auth/sessions", tag = "accounts", request_body = SignInRequest,
    responses((status = 201, body = SessionBody),
              (status = 400, description = "`invalid_phone`, `invalid_request`", body = ErrorBody),
              (status = 401, description = "`invalid_code`, `code_expired`", body = ErrorBody),
              (status = 422, description = "`invalid_phone`: not a mobile number; `invalid_request`: a blank device name", body = ErrorBody),
              (status = 429, description = "`too_many_attempts`, with Retry-After (until a new code may be requested)", body = ErrorBody)))]
async fn sign_in(
    State(accounts): State<Accounts>,
    Json(body): Json<SignInRequest>,
) -> Result<impl IntoResponse, HttpError> {
    let phone = PhoneNumber::parse(&body.phone).map_err(AccountsError::from)?;
    let device_name = parse_device_name(&body.device_name)?;
    let code = SignInCode::parse(&body.code).map_err(|_| AccountsError::InvalidCode)?;
    let session = accounts.sign_in(&phone, &code, &device_name).await?;
    Ok((StatusCode::CREATED, axum::Json(SessionBody::from(session))))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    refresh_token: String,
}

/// Spend a refresh token for a new token pair.
#[utoipa::path(post, path = "/v1/auth/refresh", tag = "accounts", request_body = RefreshRequest,
    responses((status = 200, body = SessionBody),
              (status = 401, description = "`invalid_refresh_token`, `refresh_token_reused` (the device session is revoked)", body = ErrorBody)))]
async fn refresh(
    State(accounts): State<Accounts>,
    Json(body): Json<RefreshRequest>,
) -> Result<axum::Json<SessionBody>, HttpError> {
    Ok(axum::Json(accounts.refresh(&body.refresh_token).await?.into()))
}

/// The token-signing public keys (JWKS); services verify access tokens with them.
#[utoipa::path(get, path = "/v1/auth/keys", tag = "accounts", responses((status = 200, body = Jwks)))]
async fn keys(State(accounts): State<Accounts>) -> axum::Json<Jwks> {
    axum::Json(accounts.issuer().jwks())
}

#[derive(Serialize, ToSchema)]
pub struct Me {
    account_id: String,
    phone: String,
    region: String,
    created_at: String,
}

/// My account.
#[utoipa::path(get, path = "/v1/me", tag = "accounts", security(("user" = [])),
    responses((status = 200, body = Me), (status = 401, description = "`unauthenticated`", body = ErrorBody)))]
async fn me(State(accounts): State<Accounts>, user: AuthUser) -> Result<axum::Json<Me>, HttpError> {
    let account = current_account(&accounts, &user).await?;
    Ok(axum::Json(Me {
        account_id: account.id.clone(),
        phone: account.phone.as_e164().to_owned(),
        region: account.region().to_owned(),
        created_at: rfc3339(account.created_at_ms),
    }))
}

async fn current_account(accounts: &Accounts, user: &AuthUser) -> Result<store::Account, HttpError> {
    store::account(accounts.db(), user.account_id())
        .await
        .map_err(HttpError::from)?
        .ok_or_else(|| HttpError::unauthenticated("the account of this token does not exist"))
}

#[derive(Serialize, ToSchema)]
pub struct Device {
    device_id: String,
    name: String,
    created_at: String,
    last_seen_at: String,
    /// The device this request came from.
    current: bool,
}

/// My signed-in devices.
#[utoipa::path(get, path = "/v1/me/devices", tag = "accounts", security(("user" = [])), params(PageQuery),
    responses((status = 200, body = inline(Page<Device>)), (status = 401, body = ErrorBody)))]
async fn devices(
    State(accounts): State<Accounts>,
    user: AuthUser,
    Query(query): Query<PageQuery>,
) -> Result<axum::Json<Page<Device>>, HttpError> {
    let page = query.parse()?;
    let rows =
        store::devices(accounts.db(), user.account_id(), page.after.as_deref().unwrap_or(""), page.limit + 1).await?;
    let page = Page::from_rows(rows, page.limit, |row| row.id.clone());
    Ok(axum::Json(page.map(|row| Device {
        current: row.id == user.device_id(),
        device_id: row.id,
        name: row.name,
        created_at: rfc3339(row.created_at_ms),
        last_seen_at: rfc3339(row.last_seen_at_ms),
    })))
}

/// Sign a device out: its refresh token, its access tokens and its signaling sockets stop working.
#[utoipa::path(delete, path = "/v1/me/devices/{id}", tag = "accounts", security(("user" = [])),
    params(("id" = String, Path, pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", description = "device id")),
    responses((status = 204), (status = 404, description = "`not_found` (also another account's device)", body = ErrorBody)))]
async fn revoke_device(
    State(accounts): State<Accounts>,
    user: AuthUser,
    IdPath(id): IdPath,
) -> Result<StatusCode, HttpError> {
    if accounts.revoke_device(user.account_id(), &id, "revoked_by_user", now_ms()).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(AccountsError::NotFound("no such device session of yours").into())
    }
}

/// My call settings.
#[utoipa::path(get, path = "/v1/me/settings", tag = "accounts", security(("user" = [])),
    responses((status = 200, body = Settings), (status = 401, body = ErrorBody)))]
async fn settings(State(accounts): State<Accounts>, user: AuthUser) -> Result<axum::Json<Settings>, HttpError> {
    Ok(axum::Json(current_account(&accounts, &user).await?.settings))
}

/// A partial update; each field is validated into its domain value.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettingsPatch {
    /// `everybody` or `nobody`; leave it out to keep it.
    #[schema(value_type = CallsFrom, required = false)]
    #[serde(default, deserialize_with = "present")]
    calls_from: Option<serde_json::Value>,
    /// `always` or `never` (relay only: hides my IP address); leave it out to keep it.
    #[schema(value_type = P2p, required = false)]
    #[serde(default, deserialize_with = "present")]
    p2p: Option<serde_json::Value>,
}

/// A field that is present is `Some`, even when it is `null` (which is then
/// refused as an invalid setting rather than read as "no change").
fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(deserializer).map(Some)
}

/// Change my call settings.
#[utoipa::path(patch, path = "/v1/me/settings", tag = "accounts", security(("user" = [])), request_body = SettingsPatch,
    responses((status = 200, body = Settings), (status = 400, description = "`invalid_setting`", body = ErrorBody)))]
async fn update_settings(
    State(accounts): State<Accounts>,
    user: AuthUser,
    Json(patch): Json<SettingsPatch>,
) -> Result<axum::Json<Settings>, HttpError> {
    let calls_from = patch
        .calls_from
        .map(|value| {
            value
                .as_str()
                .and_then(CallsFrom::parse)
                .ok_or_else(|| AccountsError::InvalidSetting("calls_from must be \"everybody\" or \"nobody\"".into()))
        })
        .transpose()?;
    let p2p = patch
        .p2p
        .map(|value| {
            value
                .as_str()
                .and_then(P2p::parse)
                .ok_or_else(|| AccountsError::InvalidSetting("p2p must be \"always\" or \"never\"".into()))
        })
        .transpose()?;
    let current = current_account(&accounts, &user).await?.settings;
    let updated = Settings { calls_from: calls_from.unwrap_or(current.calls_from), p2p: p2p.unwrap_or(current.p2p) };
    if updated != current {
        store::update_settings(accounts.db(), user.account_id(), updated).await?;
    }
    Ok(axum::Json(updated))
}

#[derive(Serialize, ToSchema)]
pub struct BlockedAccount {
    account_id: String,
    blocked_at: String,
}

/// The accounts I blocked.
#[utoipa::path(get, path = "/v1/me/blocked", tag = "accounts", security(("user" = [])), params(PageQuery),
    responses((status = 200, body = inline(Page<BlockedAccount>)), (status = 401, body = ErrorBody)))]
async fn blocked(
    State(accounts): State<Accounts>,
    user: AuthUser,
    Query(query): Query<PageQuery>,
) -> Result<axum::Json<Page<BlockedAccount>>, HttpError> {
    let page = query.parse()?;
    let rows =
        store::blocked(accounts.db(), user.account_id(), page.after.as_deref().unwrap_or(""), page.limit + 1).await?;
    let page = Page::from_rows(rows, page.limit, |(id, _)| id.clone());
    Ok(axum::Json(page.map(|(account_id, at)| BlockedAccount { account_id, blocked_at: rfc3339(at) })))
}

/// Block an account: it can no longer call me (it cannot tell why).
#[utoipa::path(put, path = "/v1/me/blocked/{account_id}", tag = "accounts", security(("user" = [])),
    params(("account_id" = String, Path, pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")),
    responses((status = 204), (status = 422, description = "`invalid_request` (yourself)", body = ErrorBody),
              (status = 404, description = "`not_found`", body = ErrorBody)))]
async fn block(
    State(accounts): State<Accounts>,
    user: AuthUser,
    IdPath(account_id): IdPath,
) -> Result<StatusCode, HttpError> {
    if account_id == user.account_id() {
        return Err(AccountsError::Unprocessable("you cannot block yourself".into()).into());
    }
    if store::account(accounts.db(), &account_id).await?.is_none() {
        return Err(AccountsError::NotFound("no such account").into());
    }
    store::block(accounts.db(), user.account_id(), &account_id, now_ms()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Unblock an account.
#[utoipa::path(delete, path = "/v1/me/blocked/{account_id}", tag = "accounts", security(("user" = [])),
    params(("account_id" = String, Path, pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")),
    responses((status = 204), (status = 404, description = "`not_found` (not blocked)", body = ErrorBody)))]
async fn unblock(
    State(accounts): State<Accounts>,
    user: AuthUser,
    IdPath(account_id): IdPath,
) -> Result<StatusCode, HttpError> {
    if store::unblock(accounts.db(), user.account_id(), &account_id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(AccountsError::NotFound("that account is not blocked").into())
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOperator {
    /// Trimmed, not blank (422).
    #[schema(min_length = 1, max_length = 64, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    name: String,
    role: Role,
}

#[derive(Serialize, ToSchema)]
pub struct CreatedOperator {
    operator_id: String,
    name: String,
    role: Role,
    /// Shown this once; only its digest is stored.
    api_key: String,
}

/// Create an operator and show its API key once.
#[utoipa::path(post, path = "/admin/v1/operators", tag = "operators", security(("operator" = [])), request_body = NewOperator,
    responses((status = 201, body = CreatedOperator), (status = 401, body = ErrorBody),
              (status = 403, description = "`forbidden`: admin only", body = ErrorBody),
              (status = 422, description = "`invalid_request`: a blank name", body = ErrorBody)))]
async fn create_operator(
    State(accounts): State<Accounts>,
    admin: Authorized<Admin>,
    Json(body): Json<NewOperator>,
) -> Result<impl IntoResponse, HttpError> {
    let name = operators::parse_operator_name(&body.name)?;
    let (operator, api_key) =
        operators::create(accounts.db(), &name, body.role, Some(&admin.operator.operator_id)).await?;
    tracing::info!(by = %admin.operator.operator_id, operator = %operator.operator_id, role = operator.role.as_str(), "operator created");
    Ok((
        StatusCode::CREATED,
        axum::Json(CreatedOperator {
            operator_id: operator.operator_id,
            name: operator.name,
            role: operator.role,
            api_key,
        }),
    ))
}

/// The live operators.
#[utoipa::path(get, path = "/admin/v1/operators", tag = "operators", security(("operator" = [])), params(PageQuery),
    responses((status = 200, body = inline(Page<Operator>)), (status = 403, body = ErrorBody)))]
async fn list_operators(
    State(accounts): State<Accounts>,
    _admin: Authorized<Admin>,
    Query(query): Query<PageQuery>,
) -> Result<axum::Json<Page<Operator>>, HttpError> {
    let page = query.parse()?;
    let rows = operators::list(accounts.db(), page.after.as_deref().unwrap_or(""), page.limit + 1).await?;
    Ok(axum::Json(Page::from_rows(rows, page.limit, |operator| operator.operator_id.clone())))
}

/// Revoke an operator's key. The last admin cannot be removed.
#[utoipa::path(delete, path = "/admin/v1/operators/{id}", tag = "operators", security(("operator" = [])),
    params(("id" = String, Path, pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")),
    responses((status = 204), (status = 404, body = ErrorBody),
              (status = 409, description = "`conflict`: the last admin", body = ErrorBody)))]
async fn revoke_operator(
    State(accounts): State<Accounts>,
    admin: Authorized<Admin>,
    IdPath(id): IdPath,
) -> Result<StatusCode, HttpError> {
    let Some(target) = operators::get(accounts.db(), &id).await? else {
        return Err(AccountsError::NotFound("no such operator").into());
    };
    if target.role == Role::Admin && operators::live_admins(accounts.db()).await? <= 1 {
        return Err(AccountsError::Conflict("this is the last admin; create another admin first").into());
    }
    if !operators::revoke(accounts.db(), &id, &admin.operator.operator_id).await? {
        return Err(AccountsError::NotFound("no such operator").into());
    }
    tracing::info!(by = %admin.operator.operator_id, operator = %id, "operator revoked");
    Ok(StatusCode::NO_CONTENT)
}
