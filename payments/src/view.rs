//! How ledger results look on the wire, and the one function that turns a
//! command's outcome into the response that is stored with its idempotency
//! key and replayed on retries.

use serde::Serialize;
use utoipa::ToSchema;

use crate::ledger::{Command, Refusal, Transfer, TransferKind};
use crate::money::format_minor;
use crate::region::{FeeRule, RegionCode, RegionRules};
use crate::store::StoredResponse;

/// A transfer as its parties see it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TransferView {
    pub transfer_id: String,
    /// `p2p`, `deposit`, `withdrawal`, `reversal` (and `fee` in operators' searches).
    pub kind: String,
    /// Always `completed`: a transfer exists only once it is durable.
    pub status: &'static str,
    /// The debited ledger account: a wallet's account id, or `sys:RU:settlement`.
    pub from: String,
    pub to: String,
    /// Decimal string, e.g. `"150.00"`.
    pub amount: String,
    /// Paid by the sender on top of the amount; on a reversal, the part of
    /// the fee refunded to the original sender with it.
    pub fee: String,
    pub currency: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_ref: Option<String>,
    /// On a reversal: the transfer it reverses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reverses: Option<String>,
    pub created_at: String,
}

impl From<&Transfer> for TransferView {
    fn from(transfer: &Transfer) -> Self {
        TransferView {
            transfer_id: transfer.id.clone(),
            kind: transfer.kind.as_str().to_owned(),
            status: "completed",
            from: transfer.debit.clone(),
            to: transfer.credit.clone(),
            amount: format_minor(transfer.amount_minor, transfer.currency),
            fee: format_minor(transfer.fee_minor, transfer.currency),
            currency: transfer.currency.code().to_owned(),
            note: transfer.note.clone(),
            external_ref: transfer.external_ref.clone(),
            reverses: (transfer.kind == TransferKind::Reversal).then(|| transfer.linked_id.clone()).flatten(),
            created_at: courier_common::time::rfc3339(transfer.created_at_ms),
        }
    }
}

/// A region's rules as admins see and set them.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RegionView {
    pub code: RegionCode,
    pub enabled: bool,
    pub currency: crate::money::Currency,
    /// IANA; days, months and nights are counted in it.
    pub time_zone: String,
    pub per_transfer_max: String,
    pub daily_max: String,
    pub monthly_max: String,
    /// What may be sent in the night window; `null`: no night limit.
    pub night_max: Option<String>,
    /// The night window, local hours: from `night_start_hour`:00 to `night_end_hour`:00.
    pub night_start_hour: i8,
    pub night_end_hour: i8,
    /// `null`: P2P transfers are free.
    pub fee: Option<FeeView>,
}

/// Free while the month's P2P total stays within `free_monthly`; then `rate`
/// of the part above (half up to the minor unit), at most `cap` a transfer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FeeView {
    pub free_monthly: String,
    /// A fraction with up to 4 decimal places, e.g. `"0.005"` (0.5 %).
    pub rate: String,
    pub cap: String,
}

/// Basis points as a fraction's decimal text: 50 → `"0.005"`.
pub fn rate_text(rate_bp: i64) -> String {
    let text = format!("{}.{:04}", rate_bp / 10_000, rate_bp % 10_000);
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

impl From<&RegionRules> for RegionView {
    fn from(rules: &RegionRules) -> Self {
        let money = |minor: i64| format_minor(minor, rules.currency);
        RegionView {
            code: rules.code,
            enabled: rules.enabled,
            currency: rules.currency,
            time_zone: rules.time_zone.clone(),
            per_transfer_max: money(rules.per_transfer_max_minor),
            daily_max: money(rules.daily_max_minor),
            monthly_max: money(rules.monthly_max_minor),
            night_max: rules.night_max_minor.map(money),
            night_start_hour: rules.night_start_hour,
            night_end_hour: rules.night_end_hour,
            fee: match rules.fee {
                FeeRule::None => None,
                FeeRule::FreeMonthlyThenRate { free_monthly_minor, rate_bp, cap_minor } => Some(FeeView {
                    free_monthly: money(free_monthly_minor),
                    rate: rate_text(rate_bp),
                    cap: money(cap_minor),
                }),
            },
        }
    }
}

/// The response for a command's outcome.
pub fn render(command: &Command, outcome: &Result<Vec<Transfer>, Refusal>) -> StoredResponse {
    match outcome {
        Err(refusal) => StoredResponse {
            status: refusal.status(),
            body: serde_json::json!({"error": {"code": refusal.code(), "message": refusal.message()}}).to_string(),
        },
        Ok(transfers) => match (command, transfers.first()) {
            (Command::SetFrozen { wallet, freeze }, _) => StoredResponse {
                status: 200,
                body: serde_json::json!({"account_id": wallet, "status": if freeze.is_some() { "frozen" } else { "active" }})
                    .to_string(),
            },
            (Command::SetRegion { rules }, _) => StoredResponse {
                status: 200,
                body: serde_json::to_string(&RegionView::from(rules)).expect("a view always serialises"),
            },
            (_, Some(transfer)) => StoredResponse {
                status: 201,
                body: serde_json::to_string(&TransferView::from(transfer)).expect("a view always serialises"),
            },
            (_, None) => {
                StoredResponse { status: 500, body: r#"{"error":{"code":"internal","message":"no transfer"}}"#.into() }
            }
        },
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rates_read_as_fractions() {
        for (bp, text) in [(0, "0"), (50, "0.005"), (500, "0.05"), (1, "0.0001"), (125, "0.0125"), (10_000, "1")] {
            assert_eq!(super::rate_text(bp), text);
        }
    }
}
