//! Courier end to end: the real `courier` binary (or real services: coturn,
//! PostgreSQL, Redis) on ephemeral ports with a fresh database per test, one
//! module per service. One test binary, so that the suite links once.

#[macro_use]
mod support;

mod accounts;
mod admin_authz;
mod authz;
mod browser;
mod calls_media;
mod calls_signaling;
mod contract;
mod faults;
mod finance_ops;
mod finance_reports;
mod ledger_crash;
mod ledger_standby;
mod networks;
mod payments;
mod server;
mod signaling;
mod signaling_cluster;
mod turn;
