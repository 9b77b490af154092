//! The ledger's core: plain code, no I/O. It holds the state of the ledger
//! accounts it has been given, applies commands one at a time (each either
//! produces balanced transfers or a refusal and changes nothing), and checks
//! the invariants of a batch before the writer commits it.
//!
//! Every transfer moves a positive amount of one currency from a debit
//! account to a credit account: it is a balanced pair of entries by
//! construction. Balances are integer minor units.

use std::collections::HashMap;

use crate::money::{Currency, Money};
use crate::region::{RegionCode, RegionRules, RulesChange};

/// A ledger account: a user's wallet (its account id) or a region's system
/// account (`sys:RU:settlement`).
pub type LedgerAccountId = String;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccountKind {
    Wallet,
    Settlement,
    FeeRevenue,
    Adjustments,
}

impl AccountKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AccountKind::Wallet => "wallet",
            AccountKind::Settlement => "settlement",
            AccountKind::FeeRevenue => "fee_revenue",
            AccountKind::Adjustments => "adjustments",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "wallet" => Some(AccountKind::Wallet),
            "settlement" => Some(AccountKind::Settlement),
            "fee_revenue" => Some(AccountKind::FeeRevenue),
            "adjustments" => Some(AccountKind::Adjustments),
            _ => None,
        }
    }
}

/// What every system account's id starts with; a wallet's id (its
/// account's UUID) never does.
pub const SYSTEM_ACCOUNT_PREFIX: &str = "sys:";

/// The id of a region's system account of `kind`, e.g. `sys:RU:settlement`.
pub fn system_account(region: RegionCode, kind: AccountKind) -> LedgerAccountId {
    system_account_id(region, kind).to_owned()
}

/// [`system_account`] without an allocation (the writer asks for it per transfer).
pub fn system_account_id(region: RegionCode, kind: AccountKind) -> &'static str {
    match (region, kind) {
        (RegionCode::Ru, AccountKind::Settlement) => "sys:RU:settlement",
        (RegionCode::Ru, AccountKind::FeeRevenue) => "sys:RU:fee_revenue",
        (RegionCode::Ru, AccountKind::Adjustments) => "sys:RU:adjustments",
        (RegionCode::Br, AccountKind::Settlement) => "sys:BR:settlement",
        (RegionCode::Br, AccountKind::FeeRevenue) => "sys:BR:fee_revenue",
        (RegionCode::Br, AccountKind::Adjustments) => "sys:BR:adjustments",
        // Wallets are named by their account's id; there is no system wallet.
        (_, AccountKind::Wallet) => "",
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerAccount {
    pub id: LedgerAccountId,
    pub kind: AccountKind,
    pub region: RegionCode,
    pub currency: Currency,
    pub balance_minor: i64,
    /// Why, by whom and when the wallet was frozen; `None`: active.
    pub frozen: Option<FreezeNote>,
    /// What active holds keep in the wallet: it stays in the balance but
    /// cannot be sent, withdrawn or taken back (only a hold's return or
    /// release frees it).
    pub held_minor: i64,
    /// The newest transfer this account is a party to: the head of its
    /// chain, which each transfer continues through its `debit_prev` and
    /// `credit_prev` (see [`Transfer`]).
    pub last_transfer: Option<String>,
    /// What the account has sent P2P in its current windows, kept on the
    /// account (a wallet's limits are checked against it).
    pub usage: Usage,
}

impl LedgerAccount {
    /// The balance less what holds keep.
    pub fn available_minor(&self) -> i64 {
        self.balance_minor - self.held_minor
    }

    /// A new account: no money, no transfers, nothing sent.
    pub fn new(id: LedgerAccountId, kind: AccountKind, region: RegionCode, currency: Currency) -> Self {
        LedgerAccount {
            id,
            kind,
            region,
            currency,
            balance_minor: 0,
            frozen: None,
            held_minor: 0,
            last_transfer: None,
            usage: Usage::default(),
        }
    }
}

/// A freeze as the operator made it: shown with the wallet until it is
/// unfrozen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreezeNote {
    pub reason: String,
    /// The operator's id.
    pub by: String,
    pub at_ms: i64,
}

/// A sender's P2P totals in its local day, month and night windows, named
/// by their starts (a window that has moved on starts again from zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub day_start_ms: i64,
    pub day_minor: i64,
    pub month_start_ms: i64,
    pub month_minor: i64,
    pub night_start_ms: Option<i64>,
    pub night_minor: i64,
}

impl Usage {
    /// Moves the windows to those of `windows`, starting fresh totals for any
    /// window that has changed.
    pub fn roll(&mut self, windows: crate::region::Windows) {
        if self.day_start_ms != windows.day_start_ms {
            self.day_start_ms = windows.day_start_ms;
            self.day_minor = 0;
        }
        if self.month_start_ms != windows.month_start_ms {
            self.month_start_ms = windows.month_start_ms;
            self.month_minor = 0;
        }
        if self.night_start_ms != windows.night_start_ms {
            self.night_start_ms = windows.night_start_ms;
            self.night_minor = 0;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransferKind {
    P2p,
    Fee,
    Deposit,
    Withdrawal,
    /// Takes back (part of) an earlier transfer: from its recipient to its
    /// sender, linked to it.
    Reversal,
    /// An approved adjustment: between a wallet and its region's
    /// adjustments account.
    Adjustment,
}

impl TransferKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TransferKind::P2p => "p2p",
            TransferKind::Fee => "fee",
            TransferKind::Deposit => "deposit",
            TransferKind::Withdrawal => "withdrawal",
            TransferKind::Reversal => "reversal",
            TransferKind::Adjustment => "adjustment",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "p2p" => Some(TransferKind::P2p),
            "fee" => Some(TransferKind::Fee),
            "deposit" => Some(TransferKind::Deposit),
            "withdrawal" => Some(TransferKind::Withdrawal),
            "reversal" => Some(TransferKind::Reversal),
            "adjustment" => Some(TransferKind::Adjustment),
            _ => None,
        }
    }
}

/// One transfer in this many of an account's is a balance checkpoint (on
/// average; see [`Transfer::checkpoints`]).
pub const CHECKPOINT_EVERY: u64 = 512;

/// A transfer of an account's chain marked for finding balances at a moment
/// quickly: the account, the time, the transfer and the balance after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub account: LedgerAccountId,
    pub at_ms: i64,
    pub transfer_id: String,
    pub balance_minor: i64,
}

/// An immutable movement of money: `amount_minor` from `debit` to `credit`.
///
/// Each transfer also names the transfer before it of each of its two
/// accounts (`None`: the account's first), so that every account's history
/// is a chain from its `last_transfer` back to its first. An account's
/// history costs nothing to write beyond the account row that every
/// transfer rewrites anyway, where an index per party would put an entry
/// on a page of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    pub id: String,
    pub kind: TransferKind,
    pub debit: LedgerAccountId,
    pub credit: LedgerAccountId,
    pub amount_minor: i64,
    /// For a P2P transfer, the fee its linked fee transfer carries.
    pub fee_minor: i64,
    pub currency: Currency,
    pub region: RegionCode,
    /// A fee transfer names its P2P transfer (or the reversal whose fee
    /// refund it carries); a reversal names the transfer it reverses.
    pub linked_id: Option<String>,
    /// The account or operator that asked for it.
    pub initiator: String,
    pub note: Option<String>,
    pub external_ref: Option<String>,
    pub created_at_ms: i64,
    pub debit_prev: Option<String>,
    pub credit_prev: Option<String>,
    /// The debit and credit accounts' balances right after this transfer
    /// (set when it is posted): an account's balance at any moment is that
    /// of its last transfer before it.
    pub debit_balance_minor: i64,
    pub credit_balance_minor: i64,
}

impl Transfer {
    /// The checkpoints this transfer makes: for each of its accounts, when a
    /// hash (FNV-1a) of the transfer's id and the account's falls on one in
    /// [`CHECKPOINT_EVERY`]. Deterministic, and needs no count kept per
    /// account; the gaps between an account's checkpoints are geometric
    /// (99 % are under 2,400 transfers).
    pub fn checkpoints(&self) -> impl Iterator<Item = Checkpoint> + '_ {
        [(&self.debit, self.debit_balance_minor), (&self.credit, self.credit_balance_minor)]
            .into_iter()
            .filter(|(account, _)| {
                let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
                for byte in self.id.bytes().chain([0xff]).chain(account.bytes()) {
                    hash ^= u64::from(byte);
                    hash = hash.wrapping_mul(0x0100_0000_01b3);
                }
                hash.is_multiple_of(CHECKPOINT_EVERY)
            })
            .map(|(account, balance)| Checkpoint {
                account: account.clone(),
                at_ms: self.created_at_ms,
                transfer_id: self.id.clone(),
                balance_minor: balance,
            })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// A person sends money. `to` is `None` when no such account exists;
    /// regions are `None` when the account's region is not supported.
    P2p {
        id: String,
        fee_id: String,
        from: LedgerAccountId,
        from_region: Option<RegionCode>,
        to: Option<LedgerAccountId>,
        to_region: Option<RegionCode>,
        amount_minor: i64,
        /// `None` when the request named a currency no region uses.
        currency: Option<Currency>,
        note: Option<String>,
    },
    /// Money enters a wallet from the region's settlement account.
    Deposit { id: String, wallet: LedgerAccountId, amount: Money, external_ref: String, operator: String },
    /// Money leaves a wallet to the region's settlement account.
    Withdrawal { id: String, wallet: LedgerAccountId, amount: Money, external_ref: String, operator: String },
    /// Freezes (with the reason) or unfreezes a wallet.
    SetFrozen {
        wallet: LedgerAccountId,
        /// `None`: unfreeze.
        freeze: Option<String>,
    },
    /// An admin changes some of a region's rules, made to the rules in
    /// force in the writer's turn and validated there: the very next command
    /// obeys them.
    SetRegion { code: RegionCode, change: RulesChange },
    /// An operator proposes an adjustment: stored pending, moving nothing.
    ProposeAdjustment { adjustment: Adjustment },
    /// An approver other than the proposer approves (posting the
    /// adjustment as transfer `transfer_id`) or rejects a pending one.
    DecideAdjustment {
        adjustment_id: String,
        /// The adjustment's wallet, as the request found it (the writer
        /// posts to the one it loaded with the adjustment).
        account_id: LedgerAccountId,
        approve: bool,
        transfer_id: String,
        operator: String,
    },
    /// The writer records an undecided adjustment past its time as expired.
    ExpireAdjustment { adjustment_id: String, account_id: LedgerAccountId },
    /// An operator places a hold on a wallet's available balance.
    PlaceHold { hold: Hold },
    /// An operator releases an active hold, or the writer expires it.
    ReleaseHold { hold_id: String, account_id: LedgerAccountId, operator: String, expired: bool },
    /// An operator returns an active hold: it is released and as much of it
    /// as is left to reverse of its transfer goes back to that transfer's
    /// sender, as a reversal.
    ReturnHold {
        hold_id: String,
        account_id: LedgerAccountId,
        /// The reversal's ids, and the hold's transfer with its parties.
        id: String,
        fee_id: String,
        original: String,
        parties: [LedgerAccountId; 2],
        region: RegionCode,
        operator: String,
    },
    /// An operator takes back `amount_minor` (`None`: all that is left) of
    /// transfer `original` from its recipient to its sender, with the part
    /// of its fee in proportion refunded from fee revenue.
    Reverse {
        id: String,
        fee_id: String,
        original: String,
        /// The original's debit and credit accounts, as the request found
        /// them (the writer posts to those it loaded with the original, and
        /// its batch check refuses any other).
        parties: [LedgerAccountId; 2],
        region: RegionCode,
        amount_minor: Option<i64>,
        reason: String,
        operator: String,
    },
}

impl Command {
    /// The ledger accounts this command may read or change, besides the
    /// settlement accounts (at most three).
    pub fn accounts(&self) -> impl Iterator<Item = &str> {
        let ids: [Option<&str>; 3] = match self {
            Command::P2p { from, from_region, to, .. } => [
                Some(from),
                to.as_deref(),
                from_region.map(|region| system_account_id(region, AccountKind::FeeRevenue)),
            ],
            Command::Deposit { wallet, .. }
            | Command::Withdrawal { wallet, .. }
            | Command::SetFrozen { wallet, .. } => [Some(wallet), None, None],
            Command::SetRegion { .. } => [None, None, None],
            Command::ProposeAdjustment { adjustment: Adjustment { account_id, .. } }
            | Command::DecideAdjustment { account_id, .. }
            | Command::ExpireAdjustment { account_id, .. }
            | Command::PlaceHold { hold: Hold { account_id, .. } }
            | Command::ReleaseHold { account_id, .. } => [Some(account_id.as_str()), None, None],
            Command::ReturnHold { parties: [debit, credit], region, .. } => {
                [Some(debit.as_str()), Some(credit.as_str()), Some(system_account_id(*region, AccountKind::FeeRevenue))]
            }
            Command::Reverse { parties: [debit, credit], region, .. } => {
                [Some(debit.as_str()), Some(credit.as_str()), Some(system_account_id(*region, AccountKind::FeeRevenue))]
            }
        };
        ids.into_iter().flatten()
    }

    /// The transfer this command reverses, if it is a reversal.
    pub fn original(&self) -> Option<&str> {
        match self {
            Command::Reverse { original, .. } | Command::ReturnHold { original, .. } => Some(original),
            _ => None,
        }
    }

    /// The adjustment this command decides, if it decides one.
    pub fn adjustment(&self) -> Option<&str> {
        match self {
            Command::DecideAdjustment { adjustment_id, .. } | Command::ExpireAdjustment { adjustment_id, .. } => {
                Some(adjustment_id)
            }
            _ => None,
        }
    }

    /// The hold this command releases or returns, if any.
    pub fn hold(&self) -> Option<&str> {
        match self {
            Command::ReleaseHold { hold_id, .. } | Command::ReturnHold { hold_id, .. } => Some(hold_id),
            _ => None,
        }
    }

    /// Whether this command changes a region's rules.
    pub fn changes_regions(&self) -> bool {
        matches!(self, Command::SetRegion { .. })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldStatus {
    Active,
    Released,
    Returned,
    Expired,
}

impl HoldStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HoldStatus::Active => "active",
            HoldStatus::Released => "released",
            HoldStatus::Returned => "returned",
            HoldStatus::Expired => "expired",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "active" => Some(HoldStatus::Active),
            "released" => Some(HoldStatus::Released),
            "returned" => Some(HoldStatus::Returned),
            "expired" => Some(HoldStatus::Expired),
            _ => None,
        }
    }
}

/// A hold (Brazil's MED pattern): an amount kept in a wallet while a claim
/// is examined, then released, or returned to the sender of the transfer
/// it names as a reversal of it, or expired (released by itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub id: String,
    pub account_id: LedgerAccountId,
    pub amount_minor: i64,
    pub currency: Currency,
    pub region: RegionCode,
    pub reason: String,
    /// The transfer the claim is about: a return reverses it.
    pub transfer_id: Option<String>,
    pub status: HoldStatus,
    pub placed_by: String,
    pub placed_at_ms: i64,
    pub expires_at_ms: i64,
    pub decided_by: Option<String>,
    pub decided_at_ms: Option<i64>,
    /// Once returned: the reversal that returned it.
    pub return_transfer_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdjustmentStatus {
    Pending,
    Approved,
    Rejected,
    Expired,
}

impl AdjustmentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AdjustmentStatus::Pending => "pending",
            AdjustmentStatus::Approved => "approved",
            AdjustmentStatus::Rejected => "rejected",
            AdjustmentStatus::Expired => "expired",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "pending" => Some(AdjustmentStatus::Pending),
            "approved" => Some(AdjustmentStatus::Approved),
            "rejected" => Some(AdjustmentStatus::Rejected),
            "expired" => Some(AdjustmentStatus::Expired),
            _ => None,
        }
    }
}

/// A four-eyes adjustment: proposed by one operator, approved (and then
/// posted between the wallet and its region's adjustments account) or
/// rejected by another, or expired undecided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adjustment {
    pub id: String,
    pub account_id: LedgerAccountId,
    /// Signed: positive credits the wallet, negative debits it.
    pub amount_minor: i64,
    pub currency: Currency,
    pub region: RegionCode,
    pub reason: String,
    pub status: AdjustmentStatus,
    pub proposed_by: String,
    pub proposed_at_ms: i64,
    pub expires_at_ms: i64,
    pub decided_by: Option<String>,
    pub decided_at_ms: Option<i64>,
    pub transfer_id: Option<String>,
}

impl Adjustment {
    /// Its status as of `now_ms`: a pending one past its time is expired,
    /// whether or not the writer has recorded that yet.
    pub fn status_at(&self, now_ms: i64) -> AdjustmentStatus {
        if self.status == AdjustmentStatus::Pending && now_ms >= self.expires_at_ms {
            AdjustmentStatus::Expired
        } else {
            self.status
        }
    }
}

/// What the writer keeps of a transfer that an operator reverses: its
/// parties and amounts, and how much of it (and of its fee) has been
/// reversed so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reversible {
    pub kind: TransferKind,
    pub debit: LedgerAccountId,
    pub credit: LedgerAccountId,
    pub amount_minor: i64,
    pub fee_minor: i64,
    pub currency: Currency,
    pub region: RegionCode,
    pub reversed_minor: i64,
    pub fee_refunded_minor: i64,
}

impl Reversible {
    /// A transfer as it was made, nothing of it reversed yet.
    pub fn of(transfer: &Transfer) -> Self {
        Reversible {
            kind: transfer.kind,
            debit: transfer.debit.clone(),
            credit: transfer.credit.clone(),
            amount_minor: transfer.amount_minor,
            fee_minor: transfer.fee_minor,
            currency: transfer.currency,
            region: transfer.region,
            reversed_minor: 0,
            fee_refunded_minor: 0,
        }
    }

    /// Whether operators may reverse this kind of transfer: P2P, deposits
    /// and withdrawals. A fee goes back with its P2P transfer, and a
    /// reversal is final (a mistaken one is corrected by an adjustment).
    pub fn kind_reversible(kind: TransferKind) -> bool {
        matches!(kind, TransferKind::P2p | TransferKind::Deposit | TransferKind::Withdrawal)
    }

    /// The fee refunded in all once `reversed_minor` of the amount is
    /// reversed: the fee in proportion, rounded down, so that the whole
    /// amount refunds exactly the whole fee.
    pub fn fee_refunded_at(&self, reversed_minor: i64) -> i64 {
        if self.amount_minor <= 0 {
            return 0;
        }
        let share = i128::from(self.fee_minor) * i128::from(reversed_minor) / i128::from(self.amount_minor);
        i64::try_from(share).unwrap_or(self.fee_minor).clamp(0, self.fee_minor)
    }
}

/// The most a wallet may hold, in minor units (10,000,000,000,000.00: ten
/// of the largest single amounts). Well inside `i64`, so that balances and
/// their sums are counted exactly; money that would go past it is refused.
pub const WALLET_BALANCE_MINOR_MAX: i64 = 10 * crate::money::AMOUNT_MAJOR_MAX * 100;

/// Why a command changed nothing. Each has its own stable error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    RegionNotSupported,
    RegionDisabled,
    CurrencyMismatch,
    RecipientNotFound,
    SelfTransfer,
    CrossRegion,
    WalletFrozen,
    RecipientFrozen,
    InsufficientFunds,
    LimitPerTransfer,
    LimitDaily,
    LimitMonthly,
    LimitNight,
    WalletNotFound,
    /// The money would take a wallet past [`WALLET_BALANCE_MINOR_MAX`] (or
    /// any account past what its balance can count).
    BalanceLimit,
    /// A freeze of a frozen wallet.
    AlreadyFrozen,
    /// An unfreeze of a wallet that is not frozen.
    NotFrozen,
    /// A reversal of a transfer that does not exist.
    TransferNotFound,
    /// A reversal of a kind of transfer that cannot be reversed.
    NotReversible,
    /// Nothing of the transfer is left to reverse.
    AlreadyReversed,
    /// No such adjustment.
    AdjustmentNotFound,
    /// The proposer of an adjustment may not decide it.
    FourEyesViolation,
    /// No such hold.
    HoldNotFound,
    /// The hold was released, returned or expired already.
    HoldNotActive,
    /// A hold that names no transfer has nothing to return.
    HoldNotReturnable,
    /// The adjustment was decided already, or expired.
    AdjustmentNotPending,
    /// A reversal of more than what is left of the transfer to reverse.
    ReversalTooLarge,
    /// An operator's movement that would take a wallet below zero (a
    /// reversal from a recipient who has spent the money).
    NotEnoughToTakeBack,
    /// A change of a region's rules that would not hold together with the
    /// rules in force (checked first by the API against the rules it read;
    /// this is a change made meanwhile by another admin).
    InvalidRegionRules,
}

impl Refusal {
    pub fn code(self) -> &'static str {
        match self {
            Refusal::RegionNotSupported => "region_not_supported",
            Refusal::RegionDisabled => "region_disabled",
            Refusal::CurrencyMismatch => "currency_mismatch",
            Refusal::RecipientNotFound => "recipient_not_found",
            Refusal::SelfTransfer => "self_transfer",
            Refusal::CrossRegion => "cross_region",
            Refusal::WalletFrozen => "wallet_frozen",
            Refusal::RecipientFrozen => "recipient_frozen",
            Refusal::InsufficientFunds => "insufficient_funds",
            Refusal::LimitPerTransfer => "limit_per_transfer",
            Refusal::LimitDaily => "limit_daily",
            Refusal::LimitMonthly => "limit_monthly",
            Refusal::LimitNight => "limit_night",
            Refusal::WalletNotFound => "not_found",
            Refusal::BalanceLimit => "balance_limit",
            Refusal::AlreadyFrozen => "already_frozen",
            Refusal::NotFrozen => "not_frozen",
            Refusal::TransferNotFound => "not_found",
            Refusal::NotReversible => "not_reversible",
            Refusal::AdjustmentNotFound => "not_found",
            Refusal::FourEyesViolation => "four_eyes_violation",
            Refusal::HoldNotFound => "not_found",
            Refusal::HoldNotActive => "hold_not_active",
            Refusal::HoldNotReturnable => "not_reversible",
            Refusal::AdjustmentNotPending => "adjustment_not_pending",
            Refusal::AlreadyReversed | Refusal::ReversalTooLarge => "already_reversed",
            Refusal::NotEnoughToTakeBack => "insufficient_funds",
            Refusal::InvalidRegionRules => "invalid_region_rules",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Refusal::RegionNotSupported => "payments are not available in your region",
            Refusal::RegionDisabled => "payments in this region are paused; try again later",
            Refusal::CurrencyMismatch => "the currency must be the one of your region",
            Refusal::RecipientNotFound => "there is no such recipient",
            Refusal::SelfTransfer => "you cannot send money to yourself",
            Refusal::CrossRegion => "money can only be sent to someone in your own region",
            Refusal::WalletFrozen => "this wallet is frozen; contact support",
            Refusal::RecipientFrozen => "the recipient's wallet cannot receive money right now",
            Refusal::InsufficientFunds => "the balance does not cover the amount and the fee",
            Refusal::LimitPerTransfer => "the amount is over the per-transfer limit of your region",
            Refusal::LimitDaily => "this would exceed your daily limit",
            Refusal::LimitMonthly => "this would exceed your monthly limit",
            Refusal::LimitNight => "this would exceed the night-time limit (20:00 to 06:00)",
            Refusal::WalletNotFound => "there is no such wallet",
            Refusal::BalanceLimit => "that would take the wallet past the most it may hold (10,000,000,000,000.00)",
            Refusal::AlreadyFrozen => "this wallet is frozen already",
            Refusal::NotFrozen => "this wallet is not frozen",
            Refusal::TransferNotFound => "there is no such transfer",
            Refusal::AdjustmentNotFound => "there is no such adjustment",
            Refusal::HoldNotFound => "there is no such hold",
            Refusal::HoldNotActive => "this hold was released, returned or expired already",
            Refusal::HoldNotReturnable => "this hold names no transfer to return; release it instead",
            Refusal::FourEyesViolation => {
                "an adjustment is decided by an approver other than the operator who proposed it; ask another approver"
            }
            Refusal::AdjustmentNotPending => "this adjustment was decided already or has expired; propose a new one",
            Refusal::NotReversible => {
                "only P2P transfers, deposits and withdrawals can be reversed (a fee goes back with its transfer)"
            }
            Refusal::AlreadyReversed => "this transfer has been reversed in full already",
            Refusal::ReversalTooLarge => {
                "the amount is more than what is left of this transfer to reverse; see the account's history"
            }
            Refusal::NotEnoughToTakeBack => {
                "the wallet's available balance does not cover this; hold or adjust it first, or reverse less"
            }
            Refusal::InvalidRegionRules => {
                "with a change another admin made meanwhile, these rules would not hold together; read them and try again"
            }
        }
    }

    /// 4xx status: 403 for what the sender may not do at all, 404 for a
    /// missing party, 409 for a change the wallet's state already has, 422
    /// for a well-formed request the ledger refuses.
    pub fn status(self) -> u16 {
        match self {
            Refusal::RegionNotSupported
            | Refusal::RegionDisabled
            | Refusal::WalletFrozen
            | Refusal::FourEyesViolation => 403,
            Refusal::RecipientNotFound
            | Refusal::WalletNotFound
            | Refusal::TransferNotFound
            | Refusal::AdjustmentNotFound
            | Refusal::HoldNotFound => 404,
            Refusal::AlreadyFrozen
            | Refusal::NotFrozen
            | Refusal::NotReversible
            | Refusal::AlreadyReversed
            | Refusal::ReversalTooLarge
            | Refusal::NotEnoughToTakeBack
            | Refusal::AdjustmentNotPending
            | Refusal::HoldNotActive
            | Refusal::HoldNotReturnable => 409,
            Refusal::InvalidRegionRules => 400,
            _ => 422,
        }
    }
}

/// The in-memory ledger: the accounts loaded so far, and the regions' rules.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    pub accounts: HashMap<LedgerAccountId, LedgerAccount>,
    pub regions: HashMap<RegionCode, RegionRules>,
    /// The transfers loaded to be reversed, by id, with what has been
    /// reversed of them.
    pub originals: HashMap<String, Reversible>,
    /// The adjustments loaded to be decided (and those proposed), by id.
    pub adjustments: HashMap<String, Adjustment>,
    /// The holds loaded to be released or returned (and those placed), by id.
    pub holds: HashMap<String, Hold>,
}

/// What a batch touched, saved so that a failed commit can be undone: each
/// account (and reversed transfer) as it was, or the id of one the ledger
/// had not loaded.
#[derive(Debug, Default)]
pub struct Snapshot {
    accounts: Vec<Result<LedgerAccount, LedgerAccountId>>,
    originals: Vec<(String, Option<Reversible>)>,
    adjustments: Vec<(String, Option<Adjustment>)>,
    holds: Vec<(String, Option<Hold>)>,
    regions: Option<HashMap<RegionCode, RegionRules>>,
}

impl Ledger {
    /// Saves the state of the accounts `ids`.
    pub fn snapshot(&self, ids: impl IntoIterator<Item = impl AsRef<str>>) -> Snapshot {
        let saved = |id: &str| self.accounts.get(id).cloned().ok_or_else(|| id.to_owned());
        Snapshot {
            accounts: ids.into_iter().map(|id| saved(id.as_ref())).collect(),
            originals: Vec::new(),
            adjustments: Vec::new(),
            holds: Vec::new(),
            regions: None,
        }
    }

    /// Also saves the holds `ids`.
    pub fn with_holds<'a>(&self, mut snapshot: Snapshot, ids: impl IntoIterator<Item = &'a str>) -> Snapshot {
        snapshot.holds = ids.into_iter().map(|id| (id.to_owned(), self.holds.get(id).cloned())).collect();
        snapshot
    }

    /// Also saves the adjustments `ids`.
    pub fn with_adjustments<'a>(&self, mut snapshot: Snapshot, ids: impl IntoIterator<Item = &'a str>) -> Snapshot {
        snapshot.adjustments = ids.into_iter().map(|id| (id.to_owned(), self.adjustments.get(id).cloned())).collect();
        snapshot
    }

    /// Also saves every region's rules.
    pub fn with_regions(&self, mut snapshot: Snapshot) -> Snapshot {
        snapshot.regions = Some(self.regions.clone());
        snapshot
    }

    /// Also saves the reversal state of the transfers `ids`.
    pub fn with_originals<'a>(&self, mut snapshot: Snapshot, ids: impl IntoIterator<Item = &'a str>) -> Snapshot {
        snapshot.originals = ids.into_iter().map(|id| (id.to_owned(), self.originals.get(id).cloned())).collect();
        snapshot
    }

    /// Puts back what `snapshot` saved.
    pub fn restore(&mut self, snapshot: Snapshot) {
        for saved in snapshot.accounts {
            match saved {
                Ok(account) => self.accounts.insert(account.id.clone(), account),
                Err(id) => self.accounts.remove(&id),
            };
        }
        for (id, saved) in snapshot.originals {
            match saved {
                Some(original) => self.originals.insert(id, original),
                None => self.originals.remove(&id),
            };
        }
        for (id, saved) in snapshot.holds {
            match saved {
                Some(hold) => self.holds.insert(id, hold),
                None => self.holds.remove(&id),
            };
        }
        for (id, saved) in snapshot.adjustments {
            match saved {
                Some(adjustment) => self.adjustments.insert(id, adjustment),
                None => self.adjustments.remove(&id),
            };
        }
        if let Some(regions) = snapshot.regions {
            self.regions = regions;
        }
    }

    /// Applies one command at `now_ms`: the transfers it made, or why it made
    /// none (and then nothing changed).
    pub fn apply(&mut self, command: &Command, initiator: &str, now_ms: i64) -> Result<Vec<Transfer>, Refusal> {
        match command {
            Command::P2p { id, fee_id, from, from_region, to, to_region, amount_minor, currency, note } => self.p2p(
                P2pRequest {
                    id,
                    fee_id,
                    from,
                    from_region: *from_region,
                    to: to.as_ref(),
                    to_region: *to_region,
                    amount_minor: *amount_minor,
                    currency: *currency,
                    note: note.as_ref(),
                },
                initiator,
                now_ms,
            ),
            Command::Deposit { id, wallet, amount, external_ref, operator } => {
                self.external(TransferKind::Deposit, id, wallet, *amount, external_ref, operator, now_ms)
            }
            Command::Withdrawal { id, wallet, amount, external_ref, operator } => {
                self.external(TransferKind::Withdrawal, id, wallet, *amount, external_ref, operator, now_ms)
            }
            Command::SetFrozen { wallet, freeze } => {
                let account = self.wallet_mut(wallet).ok_or(Refusal::WalletNotFound)?;
                match (&account.frozen, freeze) {
                    (Some(_), Some(_)) => Err(Refusal::AlreadyFrozen),
                    (None, None) => Err(Refusal::NotFrozen),
                    (_, freeze) => {
                        account.frozen = freeze.as_ref().map(|reason| FreezeNote {
                            reason: reason.clone(),
                            by: initiator.to_owned(),
                            at_ms: now_ms,
                        });
                        Ok(Vec::new())
                    }
                }
            }
            Command::SetRegion { code, change } => {
                let current = self.regions.get(code).ok_or(Refusal::RegionNotSupported)?;
                let rules = change.apply(current);
                rules.validate().map_err(|_| Refusal::InvalidRegionRules)?;
                self.regions.insert(*code, rules);
                Ok(Vec::new())
            }
            Command::ProposeAdjustment { adjustment } => {
                let wallet = self.wallet(&adjustment.account_id).ok_or(Refusal::WalletNotFound)?;
                if wallet.currency != adjustment.currency {
                    return Err(Refusal::CurrencyMismatch);
                }
                self.adjustments.insert(adjustment.id.clone(), adjustment.clone());
                Ok(Vec::new())
            }
            Command::DecideAdjustment { adjustment_id, approve, transfer_id, operator, .. } => {
                self.decide(adjustment_id, *approve, transfer_id, operator, now_ms)
            }
            Command::ExpireAdjustment { adjustment_id, .. } => {
                let adjustment = self.adjustments.get_mut(adjustment_id).ok_or(Refusal::AdjustmentNotFound)?;
                if adjustment.status != AdjustmentStatus::Pending || now_ms < adjustment.expires_at_ms {
                    return Err(Refusal::AdjustmentNotPending);
                }
                adjustment.status = AdjustmentStatus::Expired;
                adjustment.decided_by = Some(initiator.to_owned());
                adjustment.decided_at_ms = Some(now_ms);
                Ok(Vec::new())
            }
            Command::PlaceHold { hold } => {
                let wallet = self.wallet_mut(&hold.account_id).ok_or(Refusal::WalletNotFound)?;
                if wallet.currency != hold.currency {
                    return Err(Refusal::CurrencyMismatch);
                }
                if wallet.available_minor() < hold.amount_minor {
                    return Err(Refusal::NotEnoughToTakeBack);
                }
                wallet.held_minor += hold.amount_minor;
                self.holds.insert(hold.id.clone(), hold.clone());
                Ok(Vec::new())
            }
            Command::ReleaseHold { hold_id, operator, expired, .. } => {
                let hold = self.active_hold(hold_id)?.clone();
                self.free_hold(&hold)?;
                let status = if *expired { HoldStatus::Expired } else { HoldStatus::Released };
                self.close_hold(hold, status, operator, now_ms, None);
                Ok(Vec::new())
            }
            Command::ReturnHold { hold_id, id, fee_id, original, operator, .. } => {
                let hold = self.active_hold(hold_id)?.clone();
                let paid_this_wallet = self.originals.get(original).is_some_and(|o| o.credit == hold.account_id);
                if hold.transfer_id.as_deref() != Some(original.as_str()) || !paid_this_wallet {
                    return Err(Refusal::HoldNotReturnable);
                }
                let left = self
                    .originals
                    .get(original)
                    .map(|o| o.amount_minor - o.reversed_minor)
                    .ok_or(Refusal::TransferNotFound)?;
                if left <= 0 {
                    return Err(Refusal::AlreadyReversed);
                }
                // The held money pays the reversal: free it, and keep it
                // held again if the reversal is refused.
                self.free_hold(&hold)?;
                let amount = Some(hold.amount_minor.min(left));
                let reason = format!("hold returned: {}", hold.reason);
                let request = ReverseRequest { id, fee_id, original, amount_minor: amount, reason: &reason };
                match self.reverse(request, operator, now_ms) {
                    Ok(transfers) => {
                        self.close_hold(hold, HoldStatus::Returned, operator, now_ms, Some(id.clone()));
                        Ok(transfers)
                    }
                    Err(refusal) => {
                        if let Some(wallet) = self.accounts.get_mut(&hold.account_id) {
                            wallet.held_minor += hold.amount_minor;
                        }
                        Err(refusal)
                    }
                }
            }
            Command::Reverse { id, fee_id, original, amount_minor, reason, operator, .. } => self.reverse(
                ReverseRequest { id, fee_id, original, amount_minor: *amount_minor, reason },
                operator,
                now_ms,
            ),
        }
    }

    fn active_hold(&self, id: &str) -> Result<&Hold, Refusal> {
        let hold = self.holds.get(id).ok_or(Refusal::HoldNotFound)?;
        if hold.status != HoldStatus::Active {
            return Err(Refusal::HoldNotActive);
        }
        Ok(hold)
    }

    /// Gives a hold's amount back to its wallet's available balance.
    fn free_hold(&mut self, hold: &Hold) -> Result<(), Refusal> {
        let wallet = self.accounts.get_mut(&hold.account_id).ok_or(Refusal::WalletNotFound)?;
        if wallet.held_minor < hold.amount_minor {
            // The wallet's held total always covers its active holds.
            return Err(Refusal::HoldNotActive);
        }
        wallet.held_minor -= hold.amount_minor;
        Ok(())
    }

    fn close_hold(&mut self, mut hold: Hold, status: HoldStatus, by: &str, now_ms: i64, returned: Option<String>) {
        hold.status = status;
        hold.decided_by = Some(by.to_owned());
        hold.decided_at_ms = Some(now_ms);
        hold.return_transfer_id = returned;
        self.holds.insert(hold.id.clone(), hold);
    }

    /// Approves (posting it) or rejects a pending adjustment. The proposer
    /// may not decide it; an approval that would take the wallet below zero
    /// is refused and leaves it pending.
    fn decide(
        &mut self,
        id: &str,
        approve: bool,
        transfer_id: &str,
        operator: &str,
        now_ms: i64,
    ) -> Result<Vec<Transfer>, Refusal> {
        let adjustment = self.adjustments.get(id).ok_or(Refusal::AdjustmentNotFound)?;
        if adjustment.status_at(now_ms) != AdjustmentStatus::Pending {
            return Err(Refusal::AdjustmentNotPending);
        }
        if adjustment.proposed_by == operator {
            return Err(Refusal::FourEyesViolation);
        }
        let mut decided = adjustment.clone();
        decided.decided_by = Some(operator.to_owned());
        decided.decided_at_ms = Some(now_ms);
        let mut transfers = Vec::new();
        if approve {
            let wallet = self.wallet(&decided.account_id).ok_or(Refusal::WalletNotFound)?;
            let system = system_account(decided.region, AccountKind::Adjustments);
            if !self.accounts.contains_key(&system) {
                return Err(Refusal::RegionNotSupported);
            }
            let amount = decided.amount_minor.checked_abs().ok_or(Refusal::BalanceLimit)?;
            let (debit, credit) = if decided.amount_minor > 0 {
                (system, decided.account_id.clone())
            } else {
                if wallet.available_minor() < amount {
                    return Err(Refusal::NotEnoughToTakeBack);
                }
                (decided.account_id.clone(), system)
            };
            self.fits(&debit, &credit, amount)?;
            let mut transfer = Transfer {
                id: transfer_id.to_owned(),
                kind: TransferKind::Adjustment,
                debit,
                credit,
                amount_minor: amount,
                fee_minor: 0,
                currency: decided.currency,
                region: decided.region,
                linked_id: None,
                initiator: operator.to_owned(),
                note: Some(decided.reason.clone()),
                external_ref: Some(decided.id.clone()),
                created_at_ms: now_ms,
                debit_prev: None,
                credit_prev: None,
                debit_balance_minor: 0,
                credit_balance_minor: 0,
            };
            self.post(&mut transfer);
            decided.status = AdjustmentStatus::Approved;
            decided.transfer_id = Some(transfer.id.clone());
            transfers.push(transfer);
        } else {
            decided.status = AdjustmentStatus::Rejected;
        }
        self.adjustments.insert(decided.id.clone(), decided);
        Ok(transfers)
    }

    /// Takes back (part of) a transfer: from its recipient to its sender,
    /// with the fee in proportion from fee revenue to the sender. Frozen
    /// wallets take part (an operator's correction is what a freeze is
    /// for); a wallet never goes below zero.
    fn reverse(&mut self, request: ReverseRequest<'_>, operator: &str, now_ms: i64) -> Result<Vec<Transfer>, Refusal> {
        let original = self.originals.get(request.original).ok_or(Refusal::TransferNotFound)?;
        if !Reversible::kind_reversible(original.kind) {
            return Err(Refusal::NotReversible);
        }
        let left = original.amount_minor - original.reversed_minor;
        if left <= 0 {
            return Err(Refusal::AlreadyReversed);
        }
        let amount = request.amount_minor.unwrap_or(left);
        if amount <= 0 || amount > left {
            return Err(Refusal::ReversalTooLarge);
        }
        let (from, to) = (original.credit.clone(), original.debit.clone());
        let payer = self.accounts.get(&from).ok_or(Refusal::TransferNotFound)?;
        if !self.accounts.contains_key(&to) {
            return Err(Refusal::TransferNotFound);
        }
        if payer.kind == AccountKind::Wallet && payer.available_minor() < amount {
            return Err(Refusal::NotEnoughToTakeBack);
        }
        let fee_refunded = original.fee_refunded_at(original.reversed_minor + amount);
        let fee = fee_refunded - original.fee_refunded_minor;
        let fee_account = system_account_id(original.region, AccountKind::FeeRevenue);
        if fee > 0 && !self.accounts.contains_key(fee_account) {
            return Err(Refusal::RegionNotSupported);
        }
        self.fits(&from, &to, amount)?;
        if fee > 0 {
            self.fits(fee_account, &to, fee)?;
            // Both go to the sender: it must hold them together too.
            self.fits(&from, &to, amount.checked_add(fee).ok_or(Refusal::BalanceLimit)?)?;
        }
        let (currency, region) = (original.currency, original.region);
        let posting = |id: &str, debit: LedgerAccountId, amount_minor: i64| Transfer {
            id: id.to_owned(),
            kind: TransferKind::Reversal,
            debit,
            credit: to.clone(),
            amount_minor,
            fee_minor: 0,
            currency,
            region,
            linked_id: Some(request.original.clone()),
            initiator: operator.to_owned(),
            note: None,
            external_ref: None,
            created_at_ms: now_ms,
            debit_prev: None,
            credit_prev: None,
            debit_balance_minor: 0,
            credit_balance_minor: 0,
        };
        let mut reversal = posting(request.id, from, amount);
        reversal.fee_minor = fee;
        reversal.note = Some(request.reason.to_owned());
        self.post(&mut reversal);
        let mut transfers = vec![reversal];
        if fee > 0 {
            let mut refund = posting(request.fee_id, fee_account.to_owned(), fee);
            refund.kind = TransferKind::Fee;
            refund.linked_id = Some(request.id.clone());
            self.post(&mut refund);
            transfers.push(refund);
        }
        if let Some(original) = self.originals.get_mut(request.original) {
            original.reversed_minor += amount;
            original.fee_refunded_minor = fee_refunded;
        }
        Ok(transfers)
    }

    fn wallet(&self, id: &str) -> Option<&LedgerAccount> {
        self.accounts.get(id).filter(|account| account.kind == AccountKind::Wallet)
    }

    fn wallet_mut(&mut self, id: &str) -> Option<&mut LedgerAccount> {
        self.accounts.get_mut(id).filter(|account| account.kind == AccountKind::Wallet)
    }

    fn p2p(&mut self, request: P2pRequest<'_>, initiator: &str, now_ms: i64) -> Result<Vec<Transfer>, Refusal> {
        let plan = self.check_p2p(&request, now_ms)?;
        Ok(self.apply_p2p(&request, plan, initiator, now_ms))
    }

    /// Every rule a P2P transfer must pass, in the order their refusals take
    /// precedence; changes nothing.
    fn check_p2p(&self, request: &P2pRequest<'_>, now_ms: i64) -> Result<P2pPlan, Refusal> {
        let region = request.from_region.ok_or(Refusal::RegionNotSupported)?;
        let rules = self.regions.get(&region).ok_or(Refusal::RegionNotSupported)?;
        let sender = self.wallet(request.from).ok_or(Refusal::RegionNotSupported)?;
        if !rules.enabled {
            return Err(Refusal::RegionDisabled);
        }
        if request.currency != Some(sender.currency) {
            return Err(Refusal::CurrencyMismatch);
        }
        let to = request.to.ok_or(Refusal::RecipientNotFound)?;
        if to == request.from {
            return Err(Refusal::SelfTransfer);
        }
        if request.to_region != Some(region) {
            return Err(Refusal::CrossRegion);
        }
        let recipient = self.wallet(to).ok_or(Refusal::CrossRegion)?;
        if sender.frozen.is_some() {
            return Err(Refusal::WalletFrozen);
        }
        if recipient.frozen.is_some() {
            return Err(Refusal::RecipientFrozen);
        }
        let amount = request.amount_minor;
        if amount > rules.per_transfer_max_minor {
            return Err(Refusal::LimitPerTransfer);
        }
        let mut usage = sender.usage;
        usage.roll(rules.windows(now_ms));
        if usage.day_minor + amount > rules.daily_max_minor {
            return Err(Refusal::LimitDaily);
        }
        if usage.month_minor + amount > rules.monthly_max_minor {
            return Err(Refusal::LimitMonthly);
        }
        if let (Some(night_max), Some(_)) = (rules.night_max_minor, usage.night_start_ms)
            && usage.night_minor + amount > night_max
        {
            return Err(Refusal::LimitNight);
        }
        let fee = rules.fee.fee_minor(usage.month_minor, amount);
        if sender.available_minor() < amount + fee {
            return Err(Refusal::InsufficientFunds);
        }
        let fee_account = system_account_id(region, AccountKind::FeeRevenue);
        if fee > 0 && !self.accounts.contains_key(fee_account) {
            // The migrations create every region's system accounts.
            return Err(Refusal::RegionNotSupported);
        }
        self.fits(request.from, to, amount)?;
        if fee > 0 {
            self.fits(request.from, fee_account, fee)?;
        }
        usage.day_minor = usage.day_minor.saturating_add(amount);
        usage.month_minor = usage.month_minor.saturating_add(amount);
        if usage.night_start_ms.is_some() {
            usage.night_minor = usage.night_minor.saturating_add(amount);
        }
        Ok(P2pPlan { to: to.clone(), region, currency: sender.currency, usage, fee_minor: fee, fee_account })
    }

    /// Posts a checked P2P transfer (and its fee, if any) as `plan` says.
    fn apply_p2p(&mut self, request: &P2pRequest<'_>, plan: P2pPlan, initiator: &str, now_ms: i64) -> Vec<Transfer> {
        if let Some(account) = self.accounts.get_mut(request.from) {
            account.usage = plan.usage;
        }
        let posting = |id: &str, kind, credit: LedgerAccountId, amount_minor, fee_minor| Transfer {
            id: id.to_owned(),
            kind,
            debit: request.from.clone(),
            credit,
            amount_minor,
            fee_minor,
            currency: plan.currency,
            region: plan.region,
            linked_id: None,
            initiator: initiator.to_owned(),
            note: None,
            external_ref: None,
            created_at_ms: now_ms,
            debit_prev: None,
            credit_prev: None,
            debit_balance_minor: 0,
            credit_balance_minor: 0,
        };
        let amount = request.amount_minor;
        let mut transfer = posting(request.id, TransferKind::P2p, plan.to, amount, plan.fee_minor);
        transfer.note = request.note.cloned();
        self.post(&mut transfer);
        let mut transfers = vec![transfer];
        if plan.fee_minor > 0 {
            let mut fee = posting(request.fee_id, TransferKind::Fee, plan.fee_account.to_owned(), plan.fee_minor, 0);
            fee.linked_id = Some(request.id.clone());
            self.post(&mut fee);
            transfers.push(fee);
        }
        transfers
    }

    #[allow(clippy::too_many_arguments)]
    fn external(
        &mut self,
        kind: TransferKind,
        id: &str,
        wallet: &LedgerAccountId,
        amount: Money,
        external_ref: &str,
        operator: &str,
        now_ms: i64,
    ) -> Result<Vec<Transfer>, Refusal> {
        let account = self.wallet_mut(wallet).ok_or(Refusal::WalletNotFound)?.clone();
        if amount.currency() != account.currency {
            return Err(Refusal::CurrencyMismatch);
        }
        if account.frozen.is_some() {
            return Err(Refusal::WalletFrozen);
        }
        let settlement = system_account(account.region, AccountKind::Settlement);
        if !self.accounts.contains_key(&settlement) {
            return Err(Refusal::RegionNotSupported);
        }
        let (debit, credit) = match kind {
            TransferKind::Withdrawal => {
                if account.available_minor() < amount.minor() {
                    return Err(Refusal::InsufficientFunds);
                }
                (wallet.clone(), settlement)
            }
            _ => (settlement, wallet.clone()),
        };
        self.fits(&debit, &credit, amount.minor())?;
        let mut transfer = Transfer {
            id: id.to_owned(),
            kind,
            debit,
            credit,
            amount_minor: amount.minor(),
            fee_minor: 0,
            currency: account.currency,
            region: account.region,
            linked_id: None,
            initiator: operator.to_owned(),
            note: None,
            external_ref: Some(external_ref.to_owned()),
            created_at_ms: now_ms,
            debit_prev: None,
            credit_prev: None,
            debit_balance_minor: 0,
            credit_balance_minor: 0,
        };
        self.post(&mut transfer);
        Ok(vec![transfer])
    }

    /// Moves the transfer's money and makes it the head of both accounts'
    /// chains, linking it to their previous heads.
    /// Whether `amount_minor` may move from `debit` to `credit`: neither
    /// balance leaves the range it is counted in, and a wallet stays within
    /// [`WALLET_BALANCE_MINOR_MAX`].
    fn fits(&self, debit: &str, credit: &str, amount_minor: i64) -> Result<(), Refusal> {
        let after = |id: &str, change: Option<i64>| match self.accounts.get(id) {
            Some(account) => {
                let balance = change.and_then(|change| account.balance_minor.checked_add(change));
                let wallet_full = account.kind == AccountKind::Wallet
                    && balance.is_some_and(|balance| balance > WALLET_BALANCE_MINOR_MAX);
                if balance.is_none() || wallet_full { Err(Refusal::BalanceLimit) } else { Ok(()) }
            }
            None => Ok(()),
        };
        after(debit, amount_minor.checked_neg())?;
        after(credit, Some(amount_minor))
    }

    /// Posts a transfer that [`Ledger::fits`] let through.
    fn post(&mut self, transfer: &mut Transfer) {
        const CHECKED: &str = "the balance was checked by Ledger::fits before posting";
        if let Some(account) = self.accounts.get_mut(&transfer.debit) {
            account.balance_minor = account.balance_minor.checked_sub(transfer.amount_minor).expect(CHECKED);
            transfer.debit_prev = account.last_transfer.replace(transfer.id.clone());
            transfer.debit_balance_minor = account.balance_minor;
        }
        if let Some(account) = self.accounts.get_mut(&transfer.credit) {
            account.balance_minor = account.balance_minor.checked_add(transfer.amount_minor).expect(CHECKED);
            transfer.credit_prev = account.last_transfer.replace(transfer.id.clone());
            transfer.credit_balance_minor = account.balance_minor;
        }
    }

    /// Checks a batch before commit. `before` holds the state, before the
    /// batch, of every account the batch could touch. Every transfer must be
    /// positive and in its accounts' currency; every one of those accounts
    /// must now hold its balance before plus the batch's transfers (so nothing
    /// moved outside a transfer); no wallet may be negative; per currency the
    /// accounts must hold in total what they held before; each account's
    /// chain must run from its head before the batch through its transfers of
    /// the batch, in order, to its head now; each transfer records the
    /// balances its accounts had right after it; and every reversal runs back
    /// between its transfer's two accounts, which have not been reversed by
    /// more than they moved (amount and fee).
    pub fn verify_batch(&self, before: &Snapshot, transfers: &[Transfer]) -> Result<(), String> {
        let before: HashMap<&LedgerAccountId, &LedgerAccount> =
            before.accounts.iter().filter_map(|saved| saved.as_ref().ok().map(|a| (&a.id, a))).collect();
        let mut expected: HashMap<&LedgerAccountId, i64> =
            before.iter().map(|(id, a)| (*id, a.balance_minor)).collect();
        let mut heads: HashMap<&LedgerAccountId, Option<&str>> = HashMap::new();
        for transfer in transfers {
            if transfer.amount_minor <= 0 {
                return Err(format!("transfer {} has a non-positive amount", transfer.id));
            }
            for (id, prev) in [(&transfer.debit, &transfer.debit_prev), (&transfer.credit, &transfer.credit_prev)] {
                let account = self
                    .accounts
                    .get(id)
                    .ok_or_else(|| format!("transfer {} names unknown account {id}", transfer.id))?;
                if account.currency != transfer.currency {
                    return Err(format!(
                        "transfer {} is in {} but {id} holds {}",
                        transfer.id, transfer.currency, account.currency
                    ));
                }
                let Some(old) = before.get(id) else {
                    return Err(format!("transfer {} touches {id}, which the batch did not account for", transfer.id));
                };
                let head = heads.entry(id).or_insert(old.last_transfer.as_deref());
                if prev.as_deref() != *head {
                    return Err(format!("transfer {} does not follow {head:?} in the chain of {id}", transfer.id));
                }
                *head = Some(&transfer.id);
            }
            let overflow = || format!("transfer {} takes a balance out of range", transfer.id);
            let debit = expected.entry(&transfer.debit).or_default();
            *debit = debit.checked_sub(transfer.amount_minor).ok_or_else(overflow)?;
            let debit_after = *debit;
            let credit = expected.entry(&transfer.credit).or_default();
            *credit = credit.checked_add(transfer.amount_minor).ok_or_else(overflow)?;
            if debit_after != transfer.debit_balance_minor || *credit != transfer.credit_balance_minor {
                return Err(format!("transfer {} records balances its accounts did not have after it", transfer.id));
            }
        }
        for (id, head) in heads {
            if self.accounts.get(id).and_then(|a| a.last_transfer.as_deref()) != head {
                return Err(format!("the chain of {id} does not end at its newest transfer {head:?}"));
            }
        }
        let mut totals_before: HashMap<Currency, i64> = HashMap::new();
        let mut totals_after: HashMap<Currency, i64> = HashMap::new();
        for (id, balance) in &expected {
            let account = self.accounts.get(*id).ok_or_else(|| format!("account {id} vanished"))?;
            if account.balance_minor != *balance {
                return Err(format!("account {id} holds {} but its transfers give {balance}", account.balance_minor));
            }
            if account.kind == AccountKind::Wallet && account.available_minor() < 0 {
                return Err(format!("wallet {id} would go below what holds keep: {}", account.balance_minor));
            }
            let overflow = || format!("the totals of {} are out of range", account.currency);
            let total = totals_before.entry(account.currency).or_default();
            *total = total.checked_add(before[id].balance_minor).ok_or_else(overflow)?;
            let total = totals_after.entry(account.currency).or_default();
            *total = total.checked_add(account.balance_minor).ok_or_else(overflow)?;
        }
        if totals_before != totals_after {
            return Err(format!("the batch does not net to zero: {totals_before:?} became {totals_after:?}"));
        }
        for id in before.keys() {
            if let Some(account) = self.accounts.get(*id)
                && (account.held_minor < 0 || (account.kind == AccountKind::Wallet && account.available_minor() < 0))
            {
                return Err(format!(
                    "wallet {id} holds {} of which {} is held",
                    account.balance_minor, account.held_minor
                ));
            }
        }
        for transfer in transfers.iter().filter(|t| t.kind == TransferKind::Reversal) {
            let original = transfer
                .linked_id
                .as_ref()
                .and_then(|id| self.originals.get(id))
                .ok_or_else(|| format!("reversal {} names no transfer the writer loaded", transfer.id))?;
            if original.reversed_minor > original.amount_minor || original.fee_refunded_minor > original.fee_minor {
                return Err(format!("reversal {} takes back more than its transfer moved", transfer.id));
            }
            if transfer.debit != original.credit || transfer.credit != original.debit {
                return Err(format!("reversal {} does not run back between its transfer's accounts", transfer.id));
            }
        }
        Ok(())
    }
}

struct ReverseRequest<'a> {
    id: &'a String,
    fee_id: &'a String,
    original: &'a String,
    amount_minor: Option<i64>,
    reason: &'a str,
}

struct P2pRequest<'a> {
    id: &'a String,
    fee_id: &'a String,
    from: &'a LedgerAccountId,
    from_region: Option<RegionCode>,
    to: Option<&'a LedgerAccountId>,
    to_region: Option<RegionCode>,
    amount_minor: i64,
    currency: Option<Currency>,
    note: Option<&'a String>,
}

/// What a checked P2P transfer will post: the sender's usage with it
/// counted, and its fee.
struct P2pPlan {
    to: LedgerAccountId,
    region: RegionCode,
    currency: Currency,
    usage: Usage,
    fee_minor: i64,
    fee_account: &'static str,
}

#[cfg(test)]
mod checkpoint_tests {
    use super::*;

    /// About one transfer in [`CHECKPOINT_EVERY`] marks each of its
    /// accounts, whatever the ids look like.
    #[test]
    fn checkpoints_fall_about_one_in_512() {
        let mut marked = 0;
        let count = 200_000;
        for n in 0..count {
            let transfer = Transfer {
                id: uuid::Uuid::now_v7().to_string(),
                kind: TransferKind::P2p,
                debit: format!("wallet-{}", n % 10),
                credit: "sys:RU:fee_revenue".into(),
                amount_minor: 1,
                fee_minor: 0,
                currency: Currency::Rub,
                region: RegionCode::Ru,
                linked_id: None,
                initiator: "x".into(),
                note: None,
                external_ref: None,
                created_at_ms: 0,
                debit_prev: None,
                credit_prev: None,
                debit_balance_minor: 0,
                credit_balance_minor: 0,
            };
            marked += transfer.checkpoints().count();
        }
        let expected = 2 * count / CHECKPOINT_EVERY as usize;
        assert!(marked > expected * 8 / 10 && marked < expected * 12 / 10, "{marked} marks, about {expected} due");
    }
}

#[cfg(test)]
mod region_change_tests {
    use super::*;

    /// Two changes of different rules both hold, applied one after the
    /// other; a change that would break the rules in force changes nothing.
    #[test]
    fn changes_apply_to_the_rules_in_force() {
        let mut ledger = Ledger::default();
        ledger.regions.insert(RegionCode::Ru, RegionRules::default_for(RegionCode::Ru));
        let change = |change: RulesChange| Command::SetRegion { code: RegionCode::Ru, change };
        ledger
            .apply(&change(RulesChange { daily_max_minor: Some(120_000_00), ..RulesChange::default() }), "a", 0)
            .unwrap();
        ledger.apply(&change(RulesChange { enabled: Some(false), ..RulesChange::default() }), "b", 0).unwrap();
        let rules = &ledger.regions[&RegionCode::Ru];
        assert_eq!((rules.daily_max_minor, rules.enabled), (120_000_00, false));

        // Valid against the defaults, not against the daily limit set above.
        let refused = ledger.apply(
            &change(RulesChange { per_transfer_max_minor: Some(130_000_00), ..RulesChange::default() }),
            "c",
            0,
        );
        assert_eq!(refused, Err(Refusal::InvalidRegionRules));
        assert_eq!(ledger.regions[&RegionCode::Ru].per_transfer_max_minor, 100_000_00);
        assert_eq!(Refusal::InvalidRegionRules.status(), 400);
        assert_eq!(Refusal::InvalidRegionRules.code(), "invalid_region_rules");
    }
}
