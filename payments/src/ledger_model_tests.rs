//! Model-based property test of the ledger: random sequences of deposits,
//! withdrawals, P2P transfers (valid and invalid), freezes and reversals
//! (whole, partial, too large, of fees) over wallets in both regions,
//! applied in batches, checked after every batch against a simple
//! independent model and against the invariants.

use std::collections::HashMap;

use proptest::prelude::*;

use crate::ledger::{
    AccountKind, Adjustment, AdjustmentStatus, Command, Hold, HoldStatus, Ledger, LedgerAccount, Refusal, Reversible,
    Transfer, TransferKind, WALLET_BALANCE_MINOR_MAX, system_account,
};
use crate::money::{Currency, Money};
use crate::region::{FeeRule, RegionCode, RegionRules};

const RU_WALLETS: usize = 4;
const BR_WALLETS: usize = 3;
/// 2026-06-10T12:00:00Z; steps of up to 7 hours cross days, nights and months.
const START_MS: i64 = 1_781_092_800_000;
const STEP_MS_MAX: i64 = 7 * 3_600_000;

#[derive(Debug, Clone)]
enum Op {
    Deposit {
        wallet: usize,
        minor: i64,
    },
    Withdraw {
        wallet: usize,
        minor: i64,
    },
    P2p {
        from: usize,
        to: usize,
        minor: i64,
        wrong_currency: bool,
    },
    P2pToStranger {
        from: usize,
        minor: i64,
    },
    Freeze {
        wallet: usize,
        frozen: bool,
    },
    /// Reverses the `pick`-th transfer made so far (modulo their number),
    /// whole or `minor` of it.
    Reverse {
        pick: usize,
        minor: Option<i64>,
    },
    /// Holds `minor` of a wallet, about the `transfer`-th transfer made so
    /// far when given (one that paid it, or the hold names none).
    PlaceHold {
        wallet: usize,
        minor: i64,
        transfer: Option<usize>,
    },
    /// Releases or returns the `pick`-th hold placed.
    EndHold {
        pick: usize,
        give_back: bool,
    },
    /// Operator `by` proposes a signed adjustment.
    Propose {
        wallet: usize,
        minor: i64,
        by: usize,
    },
    /// Operator `by` approves or rejects the `pick`-th adjustment proposed.
    Decide {
        pick: usize,
        approve: bool,
        by: usize,
    },
}

const OPERATORS: usize = 3;

fn wallet_id(index: usize) -> String {
    if index < RU_WALLETS { format!("ru{index}") } else { format!("br{}", index - RU_WALLETS) }
}

fn region_of(index: usize) -> RegionCode {
    if index < RU_WALLETS { RegionCode::Ru } else { RegionCode::Br }
}

fn small_rules(code: RegionCode) -> RegionRules {
    let mut rules = RegionRules::default_for(code);
    match code {
        RegionCode::Ru => {
            rules.per_transfer_max_minor = 1_000_00;
            rules.daily_max_minor = 1_500_00;
            rules.monthly_max_minor = 3_000_00;
            rules.fee = FeeRule::FreeMonthlyThenRate { free_monthly_minor: 1_000_00, rate_bp: 50, cap_minor: 5_00 };
        }
        RegionCode::Br => {
            rules.per_transfer_max_minor = 500_00;
            rules.daily_max_minor = 1_000_00;
            rules.monthly_max_minor = 2_000_00;
            rules.night_max_minor = Some(300_00);
        }
    }
    rules
}

fn op() -> impl Strategy<Value = Op> {
    let wallets = RU_WALLETS + BR_WALLETS;
    prop_oneof![
        3 => (0..wallets, 1i64..200_000).prop_map(|(wallet, minor)| Op::Deposit { wallet, minor }),
        1 => (0..wallets, 1i64..100_000).prop_map(|(wallet, minor)| Op::Withdraw { wallet, minor }),
        8 => (0..wallets, 0..wallets, 1i64..120_000, proptest::bool::weighted(0.05))
            .prop_map(|(from, to, minor, wrong_currency)| Op::P2p { from, to, minor, wrong_currency }),
        1 => (0..wallets, 1i64..10_000).prop_map(|(from, minor)| Op::P2pToStranger { from, minor }),
        1 => (0..wallets, proptest::bool::weighted(0.6)).prop_map(|(wallet, frozen)| Op::Freeze { wallet, frozen }),
        3 => (0..1_000usize, proptest::option::weighted(0.5, 1i64..60_000))
            .prop_map(|(pick, minor)| Op::Reverse { pick, minor }),
        1 => (0..wallets, prop_oneof![-100_000i64..-1, 1i64..100_000], 0..OPERATORS)
            .prop_map(|(wallet, minor, by)| Op::Propose { wallet, minor, by }),
        2 => (0..1_000usize, proptest::bool::weighted(0.7), 0..OPERATORS)
            .prop_map(|(pick, approve, by)| Op::Decide { pick, approve, by }),
        2 => (0..wallets, 1i64..80_000, proptest::option::weighted(0.7, 0..1_000usize))
            .prop_map(|(wallet, minor, transfer)| Op::PlaceHold { wallet, minor, transfer }),
        2 => (0..1_000usize, proptest::bool::ANY).prop_map(|(pick, give_back)| Op::EndHold { pick, give_back }),
    ]
}

/// The model: balances, frozen flags and P2P history, kept the simple way.
#[derive(Default)]
struct Model {
    balances: HashMap<String, i64>,
    frozen: HashMap<String, bool>,
    /// (sender, time, amount) of every accepted P2P transfer.
    sent: Vec<(String, i64, i64)>,
    /// Every transfer made, in order, as the model keeps it: id, kind,
    /// debit, credit, amount, fee, reversed so far, fee refunded so far.
    made: Vec<Made>,
    /// Every adjustment proposed: its wallet, signed amount, proposer and
    /// whether it is still pending.
    adjustments: Vec<(String, i64, usize, bool)>,
    /// What holds keep, per wallet.
    held: HashMap<String, i64>,
    /// Every hold placed: wallet, amount, the index in `made` of its
    /// transfer, and whether it is active.
    holds: Vec<(String, i64, Option<usize>, bool)>,
}

/// The `transfer`-th transfer made, when it paid `wallet`.
fn claimed(made: &[Made], wallet: &str, transfer: Option<usize>) -> Option<usize> {
    let index = transfer? % made.len().max(1);
    made.get(index).filter(|m| m.credit == wallet).map(|_| index)
}

#[derive(Debug, Clone)]
struct Made {
    id: String,
    kind: TransferKind,
    debit: String,
    credit: String,
    amount: i64,
    fee: i64,
    region: RegionCode,
    reversed: i64,
    fee_refunded: i64,
}

impl Model {
    fn available(&self, wallet: &str) -> i64 {
        self.balances[wallet] - self.held.get(wallet).copied().unwrap_or(0)
    }

    fn sent_since(&self, sender: &str, since_ms: i64) -> i64 {
        self.sent.iter().filter(|(from, at, _)| from == sender && *at >= since_ms).map(|(_, _, amount)| amount).sum()
    }

    fn expect(&mut self, op: &Op, rules: &HashMap<RegionCode, RegionRules>, now: i64) -> Result<(), Refusal> {
        match op {
            Op::Deposit { wallet, minor } | Op::Withdraw { wallet, minor } => {
                let id = wallet_id(*wallet);
                if self.frozen[&id] {
                    return Err(Refusal::WalletFrozen);
                }
                let settlement = system_account(region_of(*wallet), AccountKind::Settlement);
                let (debit, credit) =
                    if matches!(op, Op::Deposit { .. }) { (settlement, id) } else { (id, settlement) };
                if matches!(op, Op::Withdraw { .. }) && self.available(&debit) < *minor {
                    return Err(Refusal::InsufficientFunds);
                }
                *self.balances.get_mut(&debit).unwrap() -= minor;
                *self.balances.get_mut(&credit).unwrap() += minor;
                Ok(())
            }
            Op::Freeze { wallet, frozen } => {
                match (self.frozen[&wallet_id(*wallet)], *frozen) {
                    (true, true) => return Err(Refusal::AlreadyFrozen),
                    (false, false) => return Err(Refusal::NotFrozen),
                    _ => {}
                }
                self.frozen.insert(wallet_id(*wallet), *frozen);
                Ok(())
            }
            Op::P2pToStranger { .. } => Err(Refusal::CrossRegion),
            Op::PlaceHold { wallet, minor, transfer } => {
                let id = wallet_id(*wallet);
                if self.available(&id) < *minor {
                    return Err(Refusal::NotEnoughToTakeBack);
                }
                *self.held.entry(id.clone()).or_default() += minor;
                self.holds.push((id.clone(), *minor, claimed(&self.made, &id, *transfer), true));
                Ok(())
            }
            Op::EndHold { pick, give_back } => {
                if self.holds.is_empty() {
                    return Err(Refusal::HoldNotFound);
                }
                let index = pick % self.holds.len();
                let (wallet, amount, transfer, active) = self.holds[index].clone();
                if !active {
                    return Err(Refusal::HoldNotActive);
                }
                if *give_back {
                    let Some(transfer) = transfer else { return Err(Refusal::HoldNotReturnable) };
                    let original = self.made[transfer].clone();
                    if !matches!(original.kind, TransferKind::P2p | TransferKind::Deposit | TransferKind::Withdrawal) {
                        return Err(Refusal::NotReversible);
                    }
                    let left = original.amount - original.reversed;
                    if left == 0 {
                        return Err(Refusal::AlreadyReversed);
                    }
                    let taken = amount.min(left);
                    let refunded = original.fee * (original.reversed + taken) / original.amount;
                    let fee = refunded - original.fee_refunded;
                    *self.held.get_mut(&wallet).unwrap() -= amount;
                    *self.balances.get_mut(&original.credit).unwrap() -= taken;
                    *self.balances.get_mut(&original.debit).unwrap() += taken + fee;
                    *self.balances.get_mut(&system_account(original.region, AccountKind::FeeRevenue)).unwrap() -= fee;
                    let entry = &mut self.made[transfer];
                    entry.reversed += taken;
                    entry.fee_refunded = refunded;
                } else {
                    *self.held.get_mut(&wallet).unwrap() -= amount;
                }
                self.holds[index].3 = false;
                Ok(())
            }
            Op::Propose { wallet, .. } => {
                let Op::Propose { minor, by, .. } = op else { unreachable!() };
                self.adjustments.push((wallet_id(*wallet), *minor, *by, true));
                Ok(())
            }
            Op::Decide { pick, approve, by } => {
                if self.adjustments.is_empty() {
                    return Err(Refusal::AdjustmentNotFound);
                }
                let index = pick % self.adjustments.len();
                let (wallet, minor, proposer, pending) = self.adjustments[index].clone();
                if !pending {
                    return Err(Refusal::AdjustmentNotPending);
                }
                if proposer == *by {
                    return Err(Refusal::FourEyesViolation);
                }
                if *approve {
                    if minor < 0 && self.available(&wallet) < -minor {
                        return Err(Refusal::NotEnoughToTakeBack);
                    }
                    let region = if wallet.starts_with("ru") { RegionCode::Ru } else { RegionCode::Br };
                    *self.balances.get_mut(&wallet).unwrap() += minor;
                    *self.balances.get_mut(&system_account(region, AccountKind::Adjustments)).unwrap() -= minor;
                }
                self.adjustments[index].3 = false;
                Ok(())
            }
            Op::Reverse { pick, minor } => {
                if self.made.is_empty() {
                    return Err(Refusal::TransferNotFound);
                }
                let index = pick % self.made.len();
                let original = self.made[index].clone();
                if !matches!(original.kind, TransferKind::P2p | TransferKind::Deposit | TransferKind::Withdrawal) {
                    return Err(Refusal::NotReversible);
                }
                let left = original.amount - original.reversed;
                if left == 0 {
                    return Err(Refusal::AlreadyReversed);
                }
                let amount = minor.unwrap_or(left);
                if amount > left {
                    return Err(Refusal::ReversalTooLarge);
                }
                let is_wallet = !original.credit.starts_with("sys:");
                if is_wallet && self.available(&original.credit) < amount {
                    return Err(Refusal::NotEnoughToTakeBack);
                }
                // The fee goes back in proportion, rounded down, all of it with the last part.
                let refunded = original.fee * (original.reversed + amount) / original.amount;
                let fee = refunded - original.fee_refunded;
                *self.balances.get_mut(&original.credit).unwrap() -= amount;
                *self.balances.get_mut(&original.debit).unwrap() += amount + fee;
                *self.balances.get_mut(&system_account(original.region, AccountKind::FeeRevenue)).unwrap() -= fee;
                let entry = &mut self.made[index];
                entry.reversed += amount;
                entry.fee_refunded = refunded;
                Ok(())
            }
            Op::P2p { from, to, minor, wrong_currency } => {
                let region = region_of(*from);
                let rule = &rules[&region];
                let (from_id, to_id) = (wallet_id(*from), wallet_id(*to));
                if *wrong_currency {
                    return Err(Refusal::CurrencyMismatch);
                }
                if from == to {
                    return Err(Refusal::SelfTransfer);
                }
                if region_of(*to) != region {
                    return Err(Refusal::CrossRegion);
                }
                if self.frozen[&from_id] {
                    return Err(Refusal::WalletFrozen);
                }
                if self.frozen[&to_id] {
                    return Err(Refusal::RecipientFrozen);
                }
                if *minor > rule.per_transfer_max_minor {
                    return Err(Refusal::LimitPerTransfer);
                }
                let windows = rule.windows(now);
                if self.sent_since(&from_id, windows.day_start_ms) + minor > rule.daily_max_minor {
                    return Err(Refusal::LimitDaily);
                }
                let month = self.sent_since(&from_id, windows.month_start_ms);
                if month + minor > rule.monthly_max_minor {
                    return Err(Refusal::LimitMonthly);
                }
                if let (Some(max), Some(start)) = (rule.night_max_minor, windows.night_start_ms)
                    && self.sent_since(&from_id, start) + minor > max
                {
                    return Err(Refusal::LimitNight);
                }
                // The RU rule written out: 0.5 % of the part above 1,000.00 this month, half up, capped.
                let fee = match rule.fee {
                    FeeRule::None => 0,
                    FeeRule::FreeMonthlyThenRate { free_monthly_minor, rate_bp, cap_minor } => {
                        let above = (month + minor - free_monthly_minor.max(month)).max(0);
                        ((above * rate_bp + 5_000) / 10_000).min(cap_minor)
                    }
                };
                if self.available(&from_id) < minor + fee {
                    return Err(Refusal::InsufficientFunds);
                }
                *self.balances.get_mut(&from_id).unwrap() -= minor + fee;
                *self.balances.get_mut(&to_id).unwrap() += minor;
                *self.balances.get_mut(&system_account(region, AccountKind::FeeRevenue)).unwrap() += fee;
                self.sent.push((from_id, now, *minor));
                Ok(())
            }
        }
    }
}

fn command(op: &Op, n: usize, model: &Model) -> Command {
    let (made, adjustments) = (&model.made, &model.adjustments);
    let id = format!("t{n:06}");
    match op {
        Op::PlaceHold { wallet, minor, transfer } => {
            let account = wallet_id(*wallet);
            let claimed = claimed(made, &account, *transfer).map(|index| made[index].id.clone());
            Command::PlaceHold {
                hold: Hold {
                    id: format!("h{n:06}"),
                    account_id: account,
                    amount_minor: *minor,
                    currency: RegionRules::default_for(region_of(*wallet)).currency,
                    region: region_of(*wallet),
                    reason: "a claim".into(),
                    transfer_id: claimed,
                    status: HoldStatus::Active,
                    placed_by: "op".into(),
                    placed_at_ms: START_MS,
                    expires_at_ms: i64::MAX,
                    decided_by: None,
                    decided_at_ms: None,
                    return_transfer_id: None,
                },
            }
        }
        Op::EndHold { pick, give_back } => {
            let picked = if model.holds.is_empty() { None } else { Some(pick % model.holds.len()) };
            let hold_id =
                picked.map_or_else(|| "missing".to_owned(), |index| HOLD_IDS.with(|ids| ids.borrow()[index].clone()));
            let account_id = picked.map_or_else(String::new, |index| model.holds[index].0.clone());
            let transfer = picked.and_then(|index| model.holds[index].2).map(|index| &made[index]);
            match (give_back, transfer) {
                (true, Some(original)) => Command::ReturnHold {
                    hold_id,
                    account_id,
                    fee_id: format!("{id}f"),
                    id,
                    original: original.id.clone(),
                    parties: [original.debit.clone(), original.credit.clone()],
                    region: original.region,
                    operator: "op".into(),
                },
                // A hold without a transfer: the API answers a return of it
                // with `not_reversible` before the writer.
                (true, None) if picked.is_some() => Command::ReturnHold {
                    hold_id,
                    account_id: account_id.clone(),
                    fee_id: format!("{id}f"),
                    id,
                    original: "none".into(),
                    parties: [account_id.clone(), account_id],
                    region: RegionCode::Ru,
                    operator: "op".into(),
                },
                _ => Command::ReleaseHold { hold_id, account_id, operator: "op".into(), expired: false },
            }
        }
        Op::Propose { wallet, minor, by } => Command::ProposeAdjustment {
            adjustment: Adjustment {
                id: format!("a{n:06}"),
                account_id: wallet_id(*wallet),
                amount_minor: *minor,
                currency: RegionRules::default_for(region_of(*wallet)).currency,
                region: region_of(*wallet),
                reason: "a correction".into(),
                status: AdjustmentStatus::Pending,
                proposed_by: format!("op{by}"),
                proposed_at_ms: START_MS,
                expires_at_ms: i64::MAX,
                decided_by: None,
                decided_at_ms: None,
                transfer_id: None,
            },
        },
        Op::Decide { pick, approve, by } => {
            let picked = if adjustments.is_empty() { None } else { Some(pick % adjustments.len()) };
            Command::DecideAdjustment {
                adjustment_id: picked
                    .map_or_else(|| "missing".to_owned(), |index| adjustment_ids(adjustments)[index].clone()),
                account_id: picked.map_or_else(String::new, |index| adjustments[index].0.clone()),
                approve: *approve,
                transfer_id: id,
                operator: format!("op{by}"),
            }
        }
        Op::Deposit { wallet, minor } => Command::Deposit {
            id,
            wallet: wallet_id(*wallet),
            amount: Money::from_minor(*minor, RegionRules::default_for(region_of(*wallet)).currency),
            external_ref: "rail".into(),
            operator: "op".into(),
        },
        Op::Withdraw { wallet, minor } => Command::Withdrawal {
            id,
            wallet: wallet_id(*wallet),
            amount: Money::from_minor(*minor, RegionRules::default_for(region_of(*wallet)).currency),
            external_ref: "rail".into(),
            operator: "op".into(),
        },
        Op::Freeze { wallet, frozen } => {
            Command::SetFrozen { wallet: wallet_id(*wallet), freeze: frozen.then(|| "a claim".to_owned()) }
        }
        Op::Reverse { pick, minor } => {
            let original = if made.is_empty() { None } else { Some(&made[pick % made.len()]) };
            Command::Reverse {
                fee_id: format!("{id}f"),
                id,
                original: original.map_or_else(|| "missing".to_owned(), |m| m.id.clone()),
                parties: original.map_or_else(Default::default, |m| [m.debit.clone(), m.credit.clone()]),
                region: original.map_or(RegionCode::Ru, |m| m.region),
                amount_minor: *minor,
                reason: "a mistake".into(),
                operator: "op".into(),
            }
        }
        Op::P2p { from, to, minor, wrong_currency } => {
            let currency = RegionRules::default_for(region_of(*from)).currency;
            let other = if currency == Currency::Rub { Currency::Brl } else { Currency::Rub };
            Command::P2p {
                fee_id: format!("{id}f"),
                id,
                from: wallet_id(*from),
                from_region: Some(region_of(*from)),
                to: Some(wallet_id(*to)),
                to_region: Some(region_of(*to)),
                amount_minor: *minor,
                currency: Some(if *wrong_currency { other } else { currency }),
                note: None,
            }
        }
        Op::P2pToStranger { from, minor } => Command::P2p {
            fee_id: format!("{id}f"),
            id,
            from: wallet_id(*from),
            from_region: Some(region_of(*from)),
            to: Some("stranger".into()),
            to_region: None,
            amount_minor: *minor,
            currency: Some(RegionRules::default_for(region_of(*from)).currency),
            note: None,
        },
    }
}

/// The ids the model's adjustments were proposed under, in order.
fn adjustment_ids(adjustments: &[(String, i64, usize, bool)]) -> Vec<String> {
    ADJUSTMENT_IDS.with(|ids| ids.borrow()[..adjustments.len()].to_vec())
}

thread_local! {
    /// The id of every adjustment proposed in the current case, in order.
    static ADJUSTMENT_IDS: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The id of every hold placed in the current case, in order.
    static HOLD_IDS: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn setup() -> (Ledger, Model) {
    ADJUSTMENT_IDS.with(|ids| ids.borrow_mut().clear());
    HOLD_IDS.with(|ids| ids.borrow_mut().clear());
    let mut ledger = Ledger::default();
    let mut model = Model::default();
    for code in RegionCode::ALL {
        ledger.regions.insert(code, small_rules(code));
        for kind in [AccountKind::Settlement, AccountKind::FeeRevenue, AccountKind::Adjustments] {
            let id = system_account(code, kind);
            let currency = RegionRules::default_for(code).currency;
            ledger.accounts.insert(id.clone(), LedgerAccount::new(id.clone(), kind, code, currency));
            model.balances.insert(id, 0);
        }
    }
    for index in 0..RU_WALLETS + BR_WALLETS {
        let id = wallet_id(index);
        let region = region_of(index);
        let currency = RegionRules::default_for(region).currency;
        ledger.accounts.insert(id.clone(), LedgerAccount::new(id.clone(), AccountKind::Wallet, region, currency));
        model.balances.insert(id.clone(), 0);
        model.frozen.insert(id, false);
    }
    (ledger, model)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1_000, ..ProptestConfig::default() })]

    #[test]
    fn the_ledger_matches_the_model_and_keeps_its_invariants(
        batches in proptest::collection::vec(proptest::collection::vec((op(), 0..STEP_MS_MAX), 1..8), 1..12)
    ) {
        let (mut ledger, mut model) = setup();
        let rules = ledger.regions.clone();
        let mut now = START_MS;
        let mut journal: Vec<Transfer> = Vec::new();
        let mut n = 0;
        for batch in batches {
            let ids: Vec<String> = ledger.accounts.keys().cloned().collect();
            let before = ledger.snapshot(ids.iter());
            let mut made = Vec::new();
            for (op, step) in batch {
                now += step;
                n += 1;
                let command = command(&op, n, &model);
                if let Command::ProposeAdjustment { adjustment } = &command {
                    ADJUSTMENT_IDS.with(|ids| ids.borrow_mut().push(adjustment.id.clone()));
                }
                if let Command::PlaceHold { hold } = &command
                    && model.available(&hold.account_id) >= hold.amount_minor
                {
                    HOLD_IDS.with(|ids| ids.borrow_mut().push(hold.id.clone()));
                }
                let expected = model.expect(&op, &rules, now);
                let outcome = ledger.apply(&command, "tester", now);
                prop_assert_eq!(outcome.as_ref().map(|_| ()).map_err(|r| *r), expected, "op {:?}", op);
                if let Ok(transfers) = outcome {
                    for transfer in &transfers {
                        prop_assert!(transfer.amount_minor > 0);
                        if transfer.kind == TransferKind::Fee {
                            prop_assert_eq!(transfer.linked_id.as_deref(), Some(transfers[0].id.as_str()));
                        }
                        if transfer.kind == TransferKind::Reversal {
                            let original = model.made.iter().find(|m| Some(&m.id) == transfer.linked_id.as_ref());
                            prop_assert!(original.is_some_and(|m| m.reversed <= m.amount && m.fee_refunded <= m.fee));
                        }
                        // What the writer would load to reverse it.
                        ledger.originals.insert(transfer.id.clone(), Reversible::of(transfer));
                        model.made.push(Made {
                            id: transfer.id.clone(),
                            kind: transfer.kind,
                            debit: transfer.debit.clone(),
                            credit: transfer.credit.clone(),
                            amount: transfer.amount_minor,
                            fee: transfer.fee_minor,
                            region: transfer.region,
                            reversed: 0,
                            fee_refunded: 0,
                        });
                    }
                    made.extend(transfers);
                }
            }
            prop_assert_eq!(ledger.verify_batch(&before, &made), Ok(()));
            journal.extend(made);

            // Every balance equals the model's and the sum of its transfers.
            // and each transfer records the balances of its accounts right
            // after it: the balance at any moment is the sum of the
            // movements up to it.
            let mut computed: HashMap<&str, i64> = HashMap::new();
            for t in &journal {
                *computed.entry(t.debit.as_str()).or_default() -= t.amount_minor;
                prop_assert_eq!(t.debit_balance_minor, computed[t.debit.as_str()], "after {}", t.id);
                *computed.entry(t.credit.as_str()).or_default() += t.amount_minor;
                prop_assert_eq!(t.credit_balance_minor, computed[t.credit.as_str()], "after {}", t.id);
            }
            let mut totals: HashMap<Currency, i64> = HashMap::new();
            for (id, account) in &ledger.accounts {
                prop_assert_eq!(account.balance_minor, model.balances[id], "{}", id);
                prop_assert_eq!(account.balance_minor, computed.get(id.as_str()).copied().unwrap_or(0), "{}", id);
                if account.kind == AccountKind::Wallet {
                    prop_assert!(account.balance_minor >= 0, "{} is negative", id);
                }
                *totals.entry(account.currency).or_default() += account.balance_minor;
            }
            prop_assert!(totals.values().all(|&total| total == 0), "{:?}", totals);

            // Every account's chain, from its head back, is exactly its
            // transfers, newest first.
            let by_id: HashMap<&str, &Transfer> = journal.iter().map(|t| (t.id.as_str(), t)).collect();
            for (id, account) in &ledger.accounts {
                let mut chain = Vec::new();
                let mut next = account.last_transfer.as_deref();
                while let Some(transfer_id) = next {
                    let transfer = by_id.get(transfer_id).copied();
                    prop_assert!(transfer.is_some(), "{} names unknown transfer {}", id, transfer_id);
                    let transfer = transfer.unwrap();
                    chain.push(transfer_id);
                    next = if &transfer.debit == id { transfer.debit_prev.as_deref() } else { transfer.credit_prev.as_deref() };
                }
                let mut expected: Vec<&str> =
                    journal.iter().filter(|t| &t.debit == id || &t.credit == id).map(|t| t.id.as_str()).collect();
                expected.reverse();
                prop_assert_eq!(chain, expected, "the chain of {}", id);
            }
        }
    }
}

#[test]
fn a_failed_commit_is_undone_by_the_snapshot() {
    let (mut ledger, _) = setup();
    let ids: Vec<String> = ledger.accounts.keys().cloned().collect();
    let deposit = Command::Deposit {
        id: "d".into(),
        wallet: "ru0".into(),
        amount: Money::from_minor(500, Currency::Rub),
        external_ref: "x".into(),
        operator: "op".into(),
    };
    ledger.apply(&deposit, "op", START_MS).unwrap();
    let before = ledger.accounts.clone();
    let snapshot = ledger.snapshot(ids.iter());
    let p2p = command(&Op::P2p { from: 0, to: 1, minor: 300, wrong_currency: false }, 1, &Model::default());
    ledger.apply(&p2p, "op", START_MS).unwrap();
    assert_ne!(ledger.accounts, before);
    ledger.restore(snapshot);
    assert_eq!(ledger.accounts, before);
}

#[test]
fn verify_batch_catches_money_moved_outside_a_transfer() {
    let (mut ledger, _) = setup();
    let ids: Vec<String> = ledger.accounts.keys().cloned().collect();
    let before = ledger.snapshot(ids.iter());
    ledger.accounts.get_mut("ru0").unwrap().balance_minor += 1;
    ledger.accounts.get_mut("sys:RU:settlement").unwrap().balance_minor -= 1;
    let error = ledger.verify_batch(&before, &[]).unwrap_err();
    assert!(error.contains("ru0") || error.contains("sys:RU:settlement"), "{error}");
}

#[test]
fn verify_batch_catches_a_transfer_that_skips_the_chain() {
    let (mut ledger, _) = setup();
    let ids: Vec<String> = ledger.accounts.keys().cloned().collect();
    let deposit = |id: &str| Command::Deposit {
        id: id.into(),
        wallet: "ru0".into(),
        amount: Money::from_minor(500, Currency::Rub),
        external_ref: "x".into(),
        operator: "op".into(),
    };
    ledger.apply(&deposit("d1"), "op", START_MS).unwrap();
    let before = ledger.snapshot(ids.iter());
    let mut made = ledger.apply(&deposit("d2"), "op", START_MS).unwrap();
    assert_eq!(made[0].credit_prev.as_deref(), Some("d1"));
    assert_eq!(ledger.verify_batch(&before, &made), Ok(()));
    made[0].credit_prev = None;
    let error = ledger.verify_batch(&before, &made).unwrap_err();
    assert!(error.contains("chain of ru0"), "{error}");
}

#[test]
fn money_past_what_an_account_can_hold_is_refused_and_changes_nothing() {
    let (mut ledger, _) = setup();
    let deposit = |id: &str, wallet: &str, minor: i64| Command::Deposit {
        id: id.into(),
        wallet: wallet.into(),
        amount: Money::from_minor(minor, Currency::Rub),
        external_ref: "x".into(),
        operator: "op".into(),
    };
    ledger.accounts.get_mut("ru0").unwrap().balance_minor = WALLET_BALANCE_MINOR_MAX - 100;
    ledger.accounts.get_mut("sys:RU:settlement").unwrap().balance_minor = -(WALLET_BALANCE_MINOR_MAX - 100);
    ledger.apply(&deposit("d1", "ru0", 100), "op", START_MS).expect("up to the limit");
    let full = ledger.accounts.clone();
    assert_eq!(ledger.apply(&deposit("d2", "ru0", 1), "op", START_MS), Err(Refusal::BalanceLimit));
    assert_eq!(ledger.accounts, full, "a refusal changes nothing");

    // A system account's balance never wraps, whatever the wallets hold.
    ledger.accounts.get_mut("sys:RU:settlement").unwrap().balance_minor = i64::MIN + 50;
    assert_eq!(ledger.apply(&deposit("d3", "ru1", 100), "op", START_MS), Err(Refusal::BalanceLimit));
    assert_eq!(Refusal::BalanceLimit.code(), "balance_limit");
    assert_eq!(Refusal::BalanceLimit.status(), 422);
}
