//! What the ledger's writer records in the audit log for each operator
//! action it applies: the action's name, its target, and the state of the
//! target before and after (as JSON), appended in the batch's own
//! transaction ([`courier_common::audit`] chains them).

use courier_common::audit::Draft;
use serde_json::json;

use crate::ledger::{Command, Ledger};
use crate::money::format_minor;
use crate::view::{AdjustmentView, HoldView, RegionView};

/// The action's name and target, or `None` for what is not an operator's
/// action (a P2P transfer).
pub fn action(command: &Command) -> Option<(&'static str, String)> {
    Some(match command {
        Command::P2p { .. } => return None,
        Command::Deposit { wallet, .. } => ("deposit", wallet.clone()),
        Command::Withdrawal { wallet, .. } => ("withdrawal", wallet.clone()),
        Command::SetFrozen { wallet, freeze: Some(_) } => ("freeze", wallet.clone()),
        Command::SetFrozen { wallet, freeze: None } => ("unfreeze", wallet.clone()),
        Command::SetRegion { code, .. } => ("region_changed", code.as_str().to_owned()),
        Command::ProposeAdjustment { adjustment } => ("adjustment_proposed", adjustment.id.clone()),
        Command::DecideAdjustment { adjustment_id, approve: true, .. } => {
            ("adjustment_approved", adjustment_id.clone())
        }
        Command::DecideAdjustment { adjustment_id, approve: false, .. } => {
            ("adjustment_rejected", adjustment_id.clone())
        }
        Command::ExpireAdjustment { adjustment_id, .. } => ("adjustment_expired", adjustment_id.clone()),
        Command::PlaceHold { hold } => ("hold_placed", hold.id.clone()),
        Command::ReleaseHold { hold_id, expired: false, .. } => ("hold_released", hold_id.clone()),
        Command::ReleaseHold { hold_id, expired: true, .. } => ("hold_expired", hold_id.clone()),
        Command::ReturnHold { hold_id, .. } => ("hold_returned", hold_id.clone()),
        Command::Reverse { original, .. } => ("reversal", original.clone()),
    })
}

/// The target's state before `command`, as the ledger holds it.
pub fn before(ledger: &Ledger, command: &Command, now_ms: i64) -> Option<String> {
    let value = match command {
        Command::SetFrozen { wallet, .. } => {
            let account = ledger.accounts.get(wallet)?;
            match &account.frozen {
                Some(freeze) => json!({"status": "frozen", "reason": freeze.reason, "by": freeze.by,
                    "at": courier_common::time::rfc3339(freeze.at_ms)}),
                None => json!({"status": "active"}),
            }
        }
        Command::SetRegion { code, .. } => serde_json::to_value(RegionView::from(ledger.regions.get(code)?)).ok()?,
        Command::DecideAdjustment { adjustment_id, .. } | Command::ExpireAdjustment { adjustment_id, .. } => {
            serde_json::to_value(AdjustmentView::of(ledger.adjustments.get(adjustment_id)?, now_ms)).ok()?
        }
        Command::ReleaseHold { hold_id, .. } | Command::ReturnHold { hold_id, .. } => {
            serde_json::to_value(HoldView::from(ledger.holds.get(hold_id)?)).ok()?
        }
        Command::Reverse { original, .. } => {
            let transfer = ledger.originals.get(original)?;
            json!({
                "transfer_id": original,
                "amount": format_minor(transfer.amount_minor, transfer.currency),
                "reversed": format_minor(transfer.reversed_minor, transfer.currency),
            })
        }
        _ => return None,
    };
    Some(value.to_string())
}

/// The entry for an applied operator action whose answer is `after`.
pub fn draft(
    command: &Command,
    operator: &str,
    request_id: Option<&str>,
    before: Option<String>,
    after: &str,
    now_ms: i64,
) -> Option<Draft> {
    let (action, target) = action(command)?;
    Some(Draft {
        at_ms: now_ms,
        operator: operator.to_owned(),
        action: action.to_owned(),
        target,
        request_id: request_id.map(str::to_owned),
        before,
        after: Some(after.to_owned()),
    })
}
