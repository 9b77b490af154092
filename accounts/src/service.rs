//! The accounts service's operations. Decisions that need no I/O (rate
//! limits, code checks) are plain functions of their inputs and `now`.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use courier_common::Database;
use courier_common::text::TextError;
use courier_common::time::now_ms;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::error::AccountsError;
use crate::phone::PhoneNumber;
use crate::secret::{SignInCode, constant_time_eq, new_token, token_digest};
use crate::sender::CodeSender;
use crate::store;
use crate::tokens::{TokenIssuer, TokenVerifier};

const MS_PER_S: i64 = 1_000;
const HOUR_MS: i64 = 3_600 * MS_PER_S;
pub const DEVICE_NAME_CHARS_MAX: usize = 64;
const REFRESH_TOKEN_PREFIX: &str = "crt";
/// How often (in code requests) the per-address limiter forgets idle addresses.
const ADDR_LIMITER_SWEEP_EVERY: u64 = 1_024;

/// The accounts service's limits, each named with its unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountsConfig {
    pub sign_in_code_ttl_s: u64,
    pub sign_in_code_attempts_max: u32,
    /// Least time between two code requests for one number.
    pub sign_in_code_resend_after_s: u64,
    pub sign_in_codes_per_phone_per_hour_max: u32,
    pub sign_in_codes_per_addr_per_hour_max: u32,
    pub access_token_ttl_s: u64,
    pub refresh_token_ttl_s: u64,
}

impl Default for AccountsConfig {
    fn default() -> Self {
        AccountsConfig {
            sign_in_code_ttl_s: 300,
            sign_in_code_attempts_max: 5,
            sign_in_code_resend_after_s: 60,
            sign_in_codes_per_phone_per_hour_max: 5,
            sign_in_codes_per_addr_per_hour_max: 30,
            access_token_ttl_s: crate::tokens::ACCESS_TOKEN_TTL_S_DEFAULT,
            refresh_token_ttl_s: 30 * 24 * 3_600,
        }
    }
}

/// The accounts service: storage, keys, code delivery and limits.
#[derive(Clone)]
pub struct Accounts {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    config: AccountsConfig,
    issuer: TokenIssuer,
    verifier: Arc<TokenVerifier>,
    sender: CodeSender,
    addr_limiter: Option<DefaultKeyedRateLimiter<IpAddr>>,
    code_requests: AtomicU64,
}

/// What a successful sign-in or refresh hands the client.
#[derive(Debug, Clone)]
pub struct Session {
    pub account_id: String,
    pub device_id: String,
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in_s: u64,
}

impl Accounts {
    pub fn new(db: Database, config: AccountsConfig, issuer: TokenIssuer, sender: CodeSender) -> Self {
        let verifier =
            Arc::new(TokenVerifier::from_jwks(&issuer.jwks()).expect("our own JWKS holds our own valid keys"));
        let addr_limiter = NonZeroU32::new(config.sign_in_codes_per_addr_per_hour_max)
            .map(|per_hour| RateLimiter::keyed(Quota::per_hour(per_hour)));
        Accounts {
            inner: Arc::new(Inner {
                db,
                config,
                issuer,
                verifier,
                sender,
                addr_limiter,
                code_requests: AtomicU64::new(0),
            }),
        }
    }

    pub fn db(&self) -> &Database {
        &self.inner.db
    }

    pub fn config(&self) -> &AccountsConfig {
        &self.inner.config
    }

    pub fn issuer(&self) -> &TokenIssuer {
        &self.inner.issuer
    }

    pub fn verifier(&self) -> Arc<TokenVerifier> {
        self.inner.verifier.clone()
    }

    /// Sends a fresh sign-in code to `phone`, within the per-address and
    /// per-number limits. Nothing is stored unless delivery succeeded.
    pub async fn request_code(&self, phone: &PhoneNumber, client: Option<IpAddr>) -> Result<(), AccountsError> {
        let config = &self.inner.config;
        if let (Some(limiter), Some(addr)) = (&self.inner.addr_limiter, client) {
            if self.inner.code_requests.fetch_add(1, Ordering::Relaxed).is_multiple_of(ADDR_LIMITER_SWEEP_EVERY) {
                limiter.retain_recent();
            }
            if let Err(not_until) = limiter.check_key(&addr) {
                let wait =
                    not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()));
                return Err(AccountsError::RateLimited {
                    message: "too many sign-in code requests from your address; wait and try again".into(),
                    retry_after_s: wait.as_secs().max(1),
                });
            }
        }
        let now = now_ms();
        let recent = store::code_request_times(&self.inner.db, phone, now - HOUR_MS).await?;
        check_code_rate(&recent, now, config).map_err(|retry_after_s| AccountsError::RateLimited {
            message: "a code was requested for this number too recently; wait and try again".into(),
            retry_after_s,
        })?;

        let code = SignInCode::generate();
        let id = uuid::Uuid::now_v7().to_string();
        let expires_at = now + secs_to_ms(config.sign_in_code_ttl_s);
        self.inner
            .sender
            .send(phone, &code, expires_at)
            .await
            .map_err(|error| AccountsError::CodeDeliveryFailed(error.to_string()))?;
        store::insert_code(&self.inner.db, &id, phone, &code.digest(&id), now, expires_at).await?;
        tracing::info!(phone = %phone.masked(), sender = self.inner.sender.name(), "sign-in code sent");
        metrics::counter!("accounts_sign_in_codes_sent_total").increment(1);
        Ok(())
    }

    /// Checks a code and opens a device session, creating the account on
    /// first sign-in.
    pub async fn sign_in(
        &self,
        phone: &PhoneNumber,
        code: &SignInCode,
        device_name: &str,
    ) -> Result<Session, AccountsError> {
        let db = &self.inner.db;
        let config = &self.inner.config;
        let now = now_ms();
        let stored = store::latest_code(db, phone).await?.ok_or(AccountsError::InvalidCode)?;
        let counted = match check_code_state(&stored, now, config) {
            Ok(()) => store::count_attempt(db, &stored.id, i64::from(config.sign_in_code_attempts_max)).await?,
            Err(AccountsError::TooManyAttempts { .. }) => None,
            Err(refused) => return Err(refused),
        };
        if counted.is_none() {
            return Err(self.locked_out(phone, now).await?);
        }
        if !constant_time_eq(&code.digest(&stored.id), &stored.digest) {
            metrics::counter!("accounts_sign_in_failures_total").increment(1);
            return Err(AccountsError::InvalidCode);
        }

        let mut tx = db.pool().begin().await?;
        if !store::consume_code(&mut tx, &stored.id, now).await? {
            return Err(AccountsError::InvalidCode);
        }
        let (account_id, region) =
            store::upsert_account(&mut tx, phone, &uuid::Uuid::now_v7().to_string(), now).await?;
        let device_id = uuid::Uuid::now_v7().to_string();
        store::insert_device(&mut tx, &device_id, &account_id, device_name, now).await?;
        let refresh_token = new_token(REFRESH_TOKEN_PREFIX);
        let refresh_expires = now + secs_to_ms(config.refresh_token_ttl_s);
        store::insert_refresh_token(&mut tx, &token_digest(&refresh_token), &device_id, now, refresh_expires).await?;
        tx.commit().await?;

        tracing::info!(account = %account_id, device = %device_id, "signed in");
        metrics::counter!("accounts_sign_ins_total").increment(1);
        Ok(self.session(account_id, device_id, &region, refresh_token))
    }

    /// Spends a refresh token for a new pair. A token presented twice means it
    /// leaked: the device session is revoked.
    pub async fn refresh(&self, refresh_token: &str) -> Result<Session, AccountsError> {
        let db = &self.inner.db;
        let now = now_ms();
        let digest = token_digest(refresh_token);
        let row = store::refresh_token(db, &digest).await?.ok_or(AccountsError::InvalidRefreshToken)?;
        if row.device_revoked_at_ms.is_some() {
            return Err(AccountsError::InvalidRefreshToken);
        }
        if row.spent_at_ms.is_some() {
            return Err(self.revoke_for_reuse(&row.account_id, &row.device_id, now).await);
        }
        if row.expires_at_ms <= now {
            return Err(AccountsError::InvalidRefreshToken);
        }
        let mut tx = db.pool().begin().await?;
        if !store::spend_refresh_token(&mut tx, &digest, now).await? {
            drop(tx);
            return Err(self.revoke_for_reuse(&row.account_id, &row.device_id, now).await);
        }
        let new_refresh = new_token(REFRESH_TOKEN_PREFIX);
        let expires = now + secs_to_ms(self.inner.config.refresh_token_ttl_s);
        store::insert_refresh_token(&mut tx, &token_digest(&new_refresh), &row.device_id, now, expires).await?;
        store::touch_device(&mut tx, &row.device_id, now).await?;
        tx.commit().await?;
        Ok(self.session(row.account_id, row.device_id, &row.region, new_refresh))
    }

    async fn revoke_for_reuse(&self, account_id: &str, device_id: &str, now: i64) -> AccountsError {
        tracing::warn!(account = %account_id, device = %device_id, "refresh token reused: revoking the device session");
        metrics::counter!("accounts_refresh_token_reuse_total").increment(1);
        match self.revoke_device(account_id, device_id, "refresh_token_reused", now).await {
            Ok(_) => AccountsError::RefreshTokenReused,
            Err(error) => error,
        }
    }

    /// Signs a device of `account_id` out: its refresh token stops working,
    /// and its access tokens and signaling sockets with it (in this process
    /// at once, in others within a second). False if there is no such live
    /// session of that account.
    pub async fn revoke_device(
        &self,
        account_id: &str,
        device_id: &str,
        reason: &str,
        now: i64,
    ) -> Result<bool, AccountsError> {
        let revoked = store::revoke_device(&self.inner.db, account_id, device_id, reason, now).await?;
        if revoked {
            self.inner.verifier.revocations().record(device_id.into(), now);
        }
        Ok(revoked)
    }

    /// Too many wrong codes: the number may try again with a new code, as
    /// soon as one may be requested.
    async fn locked_out(&self, phone: &PhoneNumber, now: i64) -> Result<AccountsError, AccountsError> {
        let recent = store::code_request_times(&self.inner.db, phone, now - HOUR_MS).await?;
        let retry_after_s = check_code_rate(&recent, now, &self.inner.config).err().unwrap_or(1);
        Ok(AccountsError::TooManyAttempts { retry_after_s })
    }

    fn session(&self, account_id: String, device_id: String, region: &str, refresh_token: String) -> Session {
        let now_s = u64::try_from(now_ms() / MS_PER_S).unwrap_or(0);
        let access_token = self.inner.issuer.issue(&account_id, &device_id, region, now_s);
        Session { account_id, device_id, access_token, refresh_token, expires_in_s: self.inner.issuer.ttl_s() }
    }
}

fn secs_to_ms(seconds: u64) -> i64 {
    i64::try_from(seconds).unwrap_or(i64::MAX / MS_PER_S).saturating_mul(MS_PER_S)
}

/// Whether another code may be requested now for a number whose recent
/// request times (newest first, the last hour) are `recent_ms`; `Err` holds
/// the seconds to wait.
pub fn check_code_rate(recent_ms: &[i64], now_ms: i64, config: &AccountsConfig) -> Result<(), u64> {
    let to_s = |ms: i64| u64::try_from((ms + MS_PER_S - 1) / MS_PER_S).unwrap_or(1).max(1);
    if let Some(&newest) = recent_ms.first() {
        let resend_at = newest + secs_to_ms(config.sign_in_code_resend_after_s);
        if resend_at > now_ms {
            return Err(to_s(resend_at - now_ms));
        }
    }
    let per_hour = config.sign_in_codes_per_phone_per_hour_max as usize;
    if recent_ms.len() >= per_hour {
        // The oldest request that still counts must leave the hour window.
        let oldest_counted = recent_ms[per_hour - 1];
        return Err(to_s(oldest_counted + HOUR_MS - now_ms));
    }
    Ok(())
}

/// Whether a stored code can still be tried at `now_ms`.
pub fn check_code_state(code: &store::CodeRow, now_ms: i64, config: &AccountsConfig) -> Result<(), AccountsError> {
    if code.used_at_ms.is_some() {
        return Err(AccountsError::InvalidCode);
    }
    if code.attempts >= i64::from(config.sign_in_code_attempts_max) {
        return Err(AccountsError::TooManyAttempts { retry_after_s: 1 });
    }
    if code.expires_at_ms <= now_ms {
        return Err(AccountsError::CodeExpired);
    }
    Ok(())
}

/// A validated device name: 1–64 printable characters.
pub fn parse_device_name(name: &str) -> Result<String, AccountsError> {
    courier_common::text::printable(name, DEVICE_NAME_CHARS_MAX)
        .map_err(|error| text_error(error, "device_name", DEVICE_NAME_CHARS_MAX))
}

/// Free text refused: outside its schema (400) or blank (422).
pub fn text_error(error: TextError, field: &str, chars_max: usize) -> AccountsError {
    let message = error.describe(field, chars_max);
    match error {
        TextError::Malformed => AccountsError::InvalidRequest(message),
        TextError::Blank => AccountsError::Unprocessable(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 10 * HOUR_MS;

    #[test]
    fn first_request_is_free_then_resend_waits_a_minute() {
        let config = AccountsConfig::default();
        assert_eq!(check_code_rate(&[], NOW, &config), Ok(()));
        assert_eq!(check_code_rate(&[NOW - 10_000], NOW, &config), Err(50));
        assert_eq!(check_code_rate(&[NOW - 60_000], NOW, &config), Ok(()));
    }

    #[test]
    fn five_an_hour() {
        let config = AccountsConfig::default();
        let recent: Vec<i64> = (1..=5).map(|i| NOW - i * 5 * 60_000).collect();
        // The oldest of the five was 25 minutes ago: 35 minutes to wait.
        assert_eq!(check_code_rate(&recent, NOW, &config), Err(35 * 60));
        assert_eq!(check_code_rate(&recent[..4], NOW, &config), Ok(()));
    }

    fn code(expires_at_ms: i64, attempts: i64, used_at_ms: Option<i64>) -> store::CodeRow {
        store::CodeRow { id: "c".into(), digest: "d".into(), expires_at_ms, attempts, used_at_ms }
    }

    #[test]
    fn code_states() {
        let config = AccountsConfig::default();
        assert!(check_code_state(&code(NOW + 1, 0, None), NOW, &config).is_ok());
        assert!(matches!(check_code_state(&code(NOW, 0, None), NOW, &config), Err(AccountsError::CodeExpired)));
        assert!(matches!(
            check_code_state(&code(NOW + 1, 5, None), NOW, &config),
            Err(AccountsError::TooManyAttempts { .. })
        ));
        assert!(matches!(
            check_code_state(&code(NOW + 1, 0, Some(NOW)), NOW, &config),
            Err(AccountsError::InvalidCode)
        ));
    }

    #[test]
    fn device_names() {
        assert_eq!(parse_device_name(" Pixel 9 ").unwrap(), "Pixel 9");
        for bad in ["", "   ", "a\u{0}b"] {
            assert!(parse_device_name(bad).is_err());
        }
        assert!(parse_device_name(&"x".repeat(65)).is_err());
    }
}
