//! How sign-in codes reach people: `log` (development: the code is written to
//! the log, the only place a code is ever logged) or `webhook` (a JSON POST to
//! an SMS gateway adapter).

use std::time::Duration;

use serde::Serialize;

use crate::phone::PhoneNumber;
use crate::secret::SignInCode;

pub const WEBHOOK_TIMEOUT_S_DEFAULT: u64 = 5;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DeliveryError(pub String);

/// A way to deliver a sign-in code.
pub enum CodeSender {
    Log,
    Webhook { url: String, client: reqwest::Client },
}

/// The webhook's JSON body.
#[derive(Serialize)]
struct WebhookBody<'a> {
    phone: &'a str,
    code: &'a str,
    expires_at: String,
}

impl CodeSender {
    pub fn webhook(url: &str, timeout: Duration) -> Result<Self, DeliveryError> {
        let parsed =
            reqwest::Url::parse(url).map_err(|error| DeliveryError(format!("bad webhook URL {url:?}: {error}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(DeliveryError(format!("the webhook URL must be http(s), not {:?}", parsed.scheme())));
        }
        let client = courier_common::client::http_client_builder()
            .timeout(timeout)
            .build()
            .map_err(|error| DeliveryError(format!("cannot build the webhook client: {error}")))?;
        Ok(CodeSender::Webhook { url: url.to_owned(), client })
    }

    pub fn name(&self) -> &'static str {
        match self {
            CodeSender::Log => "log",
            CodeSender::Webhook { .. } => "webhook",
        }
    }

    pub async fn send(&self, phone: &PhoneNumber, code: &SignInCode, expires_at_ms: i64) -> Result<(), DeliveryError> {
        match self {
            CodeSender::Log => {
                tracing::info!(
                    phone = %phone.masked(),
                    code = code.expose(),
                    "development code sender: sign-in code (use --code-sender webhook in production)"
                );
                Ok(())
            }
            CodeSender::Webhook { url, client } => {
                let body = WebhookBody {
                    phone: phone.as_e164(),
                    code: code.expose(),
                    expires_at: courier_common::time::rfc3339(expires_at_ms),
                };
                let response = client
                    .post(url)
                    .json(&body)
                    .send()
                    .await
                    .map_err(|error| DeliveryError(format!("webhook unreachable: {}", without_url(&error))))?;
                if response.status().is_success() {
                    Ok(())
                } else {
                    Err(DeliveryError(format!("webhook answered {}", response.status())))
                }
            }
        }
    }
}

/// reqwest errors carry the URL, which may hold a gateway credential.
fn without_url(error: &reqwest::Error) -> String {
    let mut message = error.to_string();
    if let Some(url) = error.url() {
        message = message.replace(url.as_str(), "<webhook>");
    }
    message
}
