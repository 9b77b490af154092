//! `courier bench …`: load generators that measure Courier's real code
//! paths over real sockets, each beside the peer or baseline it is compared
//! with in the same run, and print figures (a table, or one JSON object with
//! `--json`). Every run is bounded in count and in time. Built on the server
//! library; the services know nothing of it.
//!
//! - [`accounts`]: token verifications/s and sign-ins/s over HTTP;
//! - [`ledger`]: durable P2P transfers/s against the naive baseline;
//! - [`signaling`]: relayed messages/s, latency and memory per idle
//!   connection, against PeerJS;
//! - [`turn`]: packets/s the embedded relay carries at 0 % loss, against coturn;
//! - [`calls`]: real softphone calls: setup times, mouth-to-ear latency, CPU;
//! - [`ops`]: the finance team's reads over a million transfers and audit entries.

pub mod accounts;
pub mod calls;
mod http;
pub mod ledger;
pub mod ops;
pub mod signaling;
mod support;
pub mod turn;

use clap::{Args, Subcommand};

pub use support::affinity;

#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Token verifications/s (offline, all cores) and sign-ins/s over HTTP.
    Accounts(accounts::AccountsBench),
    /// Durable P2P transfers/s over HTTP (group commit) against a naive baseline.
    Ledger(ledger::LedgerBench),
    /// Signaling messages/s, delivery latency and memory per idle connection, against PeerJS.
    Signaling(signaling::SignalingBench),
    /// TURN packets/s relayed at 0 % loss by the embedded relay, against coturn.
    Turn(turn::TurnBench),
    /// Real calls between softphone pairs: setup times, mouth-to-ear latency, CPU per call.
    Calls(calls::CallsBench),
    /// Finance ops' reads: CSV export rows/s and server memory, daily report latency, audit verification entries/s.
    Ops(ops::OpsBench),
    /// The signaling benchmark's floor relay, which `courier bench signaling` runs as a child process.
    #[command(hide = true)]
    SignalingFloor(signaling::FloorServer),
    /// The TURN benchmark's floor relay, which `courier bench turn` runs as a child process.
    #[command(hide = true)]
    TurnFloor(turn::FloorServer),
}

impl BenchArgs {
    /// Confines this process to the load generator's CPUs when the benchmark
    /// gives its servers cores of their own. Called before the runtime
    /// starts, so that every thread of this process inherits it.
    pub fn pin_load_generator(&mut self) -> Result<(), String> {
        match &mut self.command {
            BenchCommand::Signaling(bench) => bench.pin_load_generator(),
            _ => Ok(()),
        }
    }
}

pub async fn run(args: BenchArgs) -> Result<(), String> {
    match args.command {
        BenchCommand::Accounts(bench) => accounts::run(bench).await,
        BenchCommand::Ledger(bench) => ledger::run(bench).await,
        BenchCommand::Signaling(bench) => signaling::run(bench).await,
        BenchCommand::Turn(bench) => turn::run(bench).await,
        BenchCommand::Calls(bench) => calls::run(bench).await,
        BenchCommand::Ops(bench) => ops::run(bench).await,
        BenchCommand::SignalingFloor(server) => signaling::serve_floor(server).await,
        BenchCommand::TurnFloor(server) => turn::serve_floor(server).await,
    }
}
