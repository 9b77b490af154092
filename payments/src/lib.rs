//! The ledger service: wallets, the double-entry ledger, peer-to-peer
//! transfers under per-region limits and fees, idempotency keys, the
//! group-commit writer, and the finance-ops admin API (API.md, "Payments" and
//! "Finance ops").
//!
//! Money is never a float, a transfer is never half applied, and a stored
//! transfer is never edited: mistakes are corrected by new, linked transfers.
//!
//! The service lands with its own milestone; this crate holds its place in
//! the workspace.
