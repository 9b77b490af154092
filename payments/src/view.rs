//! How ledger results look on the wire, and the one function that turns a
//! command's outcome into the response that is stored with its idempotency
//! key and replayed on retries.

use serde::Serialize;
use utoipa::ToSchema;

use crate::ledger::{Adjustment, Command, Hold, Ledger, Refusal, Transfer, TransferKind};
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

/// A four-eyes adjustment as operators see it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AdjustmentView {
    pub adjustment_id: String,
    pub account_id: String,
    /// Signed: `"150.00"` credits the wallet, `"-150.00"` debits it.
    pub amount: String,
    pub currency: crate::money::Currency,
    pub reason: String,
    /// `pending`, `approved`, `rejected` or `expired` (a pending one past `expires_at`).
    pub status: &'static str,
    /// Operator ids.
    pub proposed_by: String,
    pub proposed_at: String,
    pub expires_at: String,
    pub decided_by: Option<String>,
    pub decided_at: Option<String>,
    /// Once approved: the transfer that posted it (kind `adjustment`).
    pub transfer_id: Option<String>,
}

impl AdjustmentView {
    pub fn of(adjustment: &Adjustment, now_ms: i64) -> Self {
        let time = courier_common::time::rfc3339;
        AdjustmentView {
            adjustment_id: adjustment.id.clone(),
            account_id: adjustment.account_id.clone(),
            amount: format_minor(adjustment.amount_minor, adjustment.currency),
            currency: adjustment.currency,
            reason: adjustment.reason.clone(),
            status: adjustment.status_at(now_ms).as_str(),
            proposed_by: adjustment.proposed_by.clone(),
            proposed_at: time(adjustment.proposed_at_ms),
            expires_at: time(adjustment.expires_at_ms),
            decided_by: adjustment.decided_by.clone(),
            decided_at: adjustment.decided_at_ms.map(time),
            transfer_id: adjustment.transfer_id.clone(),
        }
    }
}

/// A hold as operators see it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HoldView {
    pub hold_id: String,
    pub account_id: String,
    pub amount: String,
    pub currency: crate::money::Currency,
    pub reason: String,
    /// The transfer the claim is about; a return reverses it.
    pub transfer_id: Option<String>,
    /// `active`, `released`, `returned` or `expired`.
    pub status: &'static str,
    /// Operator ids (`system` for an expiry).
    pub placed_by: String,
    pub placed_at: String,
    pub expires_at: String,
    pub decided_by: Option<String>,
    pub decided_at: Option<String>,
    /// Once returned: the reversal that returned it.
    pub return_transfer_id: Option<String>,
}

impl From<&Hold> for HoldView {
    fn from(hold: &Hold) -> Self {
        let time = courier_common::time::rfc3339;
        HoldView {
            hold_id: hold.id.clone(),
            account_id: hold.account_id.clone(),
            amount: format_minor(hold.amount_minor, hold.currency),
            currency: hold.currency,
            reason: hold.reason.clone(),
            transfer_id: hold.transfer_id.clone(),
            status: hold.status.as_str(),
            placed_by: hold.placed_by.clone(),
            placed_at: time(hold.placed_at_ms),
            expires_at: time(hold.expires_at_ms),
            decided_by: hold.decided_by.clone(),
            decided_at: hold.decided_at_ms.map(time),
            return_transfer_id: hold.return_transfer_id.clone(),
        }
    }
}

fn json_response(status: u16, view: &impl Serialize) -> StoredResponse {
    StoredResponse { status, body: serde_json::to_string(view).expect("a view always serialises") }
}

/// The stored form of a refusal.
fn refusal(refusal: Refusal) -> StoredResponse {
    StoredResponse {
        status: refusal.status(),
        body: serde_json::json!({"error": {"code": refusal.code(), "message": refusal.message()}}).to_string(),
    }
}

/// The response for a command's outcome; `ledger` holds the state it left.
pub fn render(
    command: &Command,
    outcome: &Result<Vec<Transfer>, Refusal>,
    ledger: &Ledger,
    now_ms: i64,
) -> StoredResponse {
    match outcome {
        Err(refused) => refusal(*refused),
        Ok(transfers) => match (command, transfers.first()) {
            (Command::SetFrozen { wallet, freeze }, _) => StoredResponse {
                status: 200,
                body: serde_json::json!({"account_id": wallet, "status": if freeze.is_some() { "frozen" } else { "active" }})
                    .to_string(),
            },
            (Command::SetRegion { code, .. }, _) => match ledger.regions.get(code) {
                Some(rules) => json_response(200, &RegionView::from(rules)),
                None => StoredResponse {
                    status: 500,
                    body: r#"{"error":{"code":"internal","message":"the region vanished"}}"#.into(),
                },
            },
            (Command::PlaceHold { hold }, _) => json_response(201, &HoldView::from(hold)),
            (Command::ReleaseHold { hold_id, .. } | Command::ReturnHold { hold_id, .. }, _) => {
                match ledger.holds.get(hold_id) {
                    Some(hold) => json_response(200, &HoldView::from(hold)),
                    None => StoredResponse {
                        status: 500,
                        body: r#"{"error":{"code":"internal","message":"the hold vanished"}}"#.into(),
                    },
                }
            }
            (Command::ProposeAdjustment { adjustment }, _) => json_response(201, &AdjustmentView::of(adjustment, now_ms)),
            (
                Command::DecideAdjustment { adjustment_id, .. } | Command::ExpireAdjustment { adjustment_id, .. },
                _,
            ) => match ledger.adjustments.get(adjustment_id) {
                Some(adjustment) => json_response(200, &AdjustmentView::of(adjustment, now_ms)),
                None => StoredResponse {
                    status: 500,
                    body: r#"{"error":{"code":"internal","message":"the adjustment vanished"}}"#.into(),
                },
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
