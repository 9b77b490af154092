//! The ledger service: wallets, the double-entry ledger, peer-to-peer
//! transfers under per-region limits and fees, idempotency keys, the
//! group-commit writer, and the money-moving part of the finance-ops admin
//! API.
//!
//! Routes: `GET /v1/wallet`, `POST /v1/transfers`, `GET /v1/transfers`,
//! `GET /v1/transfers/{id}`, and the finance-ops admin API under
//! `/admin/v1`: deposits, withdrawals, freezes, transfer search, the
//! account view, reversals, holds, four-eyes adjustments, region rules,
//! reconciliation, the daily report, the CSV export and the audit log
//! (see [`api`]).
//!
//! Money is never a float; a transfer is never half applied and never edited;
//! only the one writer task ([`writer`], with one file of statements per
//! database) changes balances, and it checks the batch's invariants
//! ([`ledger::Ledger::verify_batch`]) before each commit. The rules live in
//! plain code ([`ledger`], [`region`], [`money`]) tested without a database;
//! the reads both databases share are in [`store`].

// Amounts in minor units are written major_minor (`100_000_00` is 100,000.00).
#![allow(clippy::inconsistent_digit_grouping)]

pub mod api;
pub mod audit;
pub mod checkpoint;
pub mod error;
pub mod ledger;
pub mod money;
#[cfg(feature = "naive-baseline")]
pub mod naive;
pub mod region;
pub mod report;
pub mod store;
pub mod view;
pub mod writer;

#[cfg(test)]
mod ledger_model_tests;

pub use api::{ApiDoc, Payments, app};
