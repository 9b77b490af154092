//! How ledger results look on the wire, and the one function that turns a
//! command's outcome into the response that is stored with its idempotency
//! key and replayed on retries.

use serde::Serialize;
use utoipa::ToSchema;

use crate::ledger::{Command, Refusal, Transfer, TransferKind};
use crate::money::format_minor;
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
