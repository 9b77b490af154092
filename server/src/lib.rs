//! Courier's services wired together, as a library: the configuration of
//! `courier serve` ([`config`]: one section per service, read from flags,
//! `COURIER_*` variables and a TOML file by one parser), [`build`] (the
//! routers of the services a process runs, mounted side by side over one
//! database, with their background tasks) and [`run`] (bind, serve, drain on
//! shutdown). The `courier` binary, the benchmarks and tests start a whole
//! server through here.
//!
//! It also serves the browser client ([`web`], the files of `web/`).
//!
//! It holds no service logic: each service crate owns its routes, its state
//! and its SQL.

pub mod config;
pub mod connections;
mod files;
mod serve;
pub mod web;

pub use config::{ServeCommand, ServeOptions, Service};
pub use connections::ConnectionLimits;
pub use serve::{Built, build, build_with, run, serve_router};
