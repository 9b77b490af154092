//! `courier`: the one binary. `serve` runs the services, `admin` is the
//! finance-ops CLI, `call` the softphone, `bench` measures. Wiring only; the
//! logic lives in the library crates.

mod admin;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use courier_server::ServeCommand;
use courier_server::config::LogFormat;
use tracing_subscriber::EnvFilter;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "courier", version, about = "Encrypted voice calls and peer-to-peer payments for a messenger")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start; the size of the serve variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the services (all of them in one process unless one is named).
    Serve(ServeCommand),
    /// Finance-ops administration.
    Admin(admin::AdminArgs),
    /// The softphone: sign in, place and answer voice calls.
    Call(courier_calls::cli::CallArgs),
    /// Benchmarks (figures go to BENCHMARKS.md).
    Bench(courier_bench::BenchArgs),
}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    if let Command::Serve(serve) = &mut cli.command
        && serve.config.is_some()
    {
        // Read again with the file: `courier serve`'s own arguments follow `serve`.
        match ServeCommand::parse_args(std::env::args_os().skip(2)) {
            Ok(with_file) => *serve = with_file,
            Err(message) => {
                eprintln!("courier: {message}");
                return ExitCode::FAILURE;
            }
        }
    }
    if let Command::Bench(args) = &mut cli.command
        && let Err(message) = args.pin_load_generator()
    {
        eprintln!("courier: {message}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("courier: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(serve) => {
                init_logging(serve.options.server.log_format, DEFAULT_LOG_FILTER);
                courier_server::run(serve.options, serve.service, courier_common::shutdown::on_signal()).await
            }
            Command::Admin(args) => {
                init_logging(LogFormat::Human, "warn");
                quiet_on_closed_pipe();
                admin::run(args).await
            }
            Command::Call(args) => {
                init_logging(LogFormat::Human, CLIENT_LOG_FILTER);
                courier_calls::cli::run(args).await
            }
            Command::Bench(args) => {
                // The per-request info lines would drown the figures.
                init_logging(LogFormat::Human, CLIENT_LOG_FILTER);
                courier_bench::run(args).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("courier: {message}");
            ExitCode::FAILURE
        }
    }
}

/// A command-line tool whose output is piped into one that stops reading
/// (`courier admin search | head`) ends quietly, as Unix tools do, instead of
/// panicking on its next write: Rust ignores SIGPIPE by default (right for
/// the server, whose sockets report EPIPE), so the default comes back here.
fn quiet_on_closed_pipe() {
    // SAFETY: setting a signal's disposition to its default before this
    // command writes anything; no handler runs Rust code.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

const DEFAULT_LOG_FILTER: &str = "info,sqlx=warn,tower_http=warn";
/// Clients log warnings, but not the WebRTC stack's: it reports what a call
/// survives as a matter of course (early RTP, stray STUN), and the softphone
/// says what matters itself. `COURIER_LOG=debug` shows them.
const CLIENT_LOG_FILTER: &str = "warn,webrtc=off,rtc=off";

/// Logs to stderr; `COURIER_LOG` (an `EnvFilter` directive) overrides `default_filter`.
fn init_logging(format: LogFormat, default_filter: &str) {
    let filter = EnvFilter::try_from_env("COURIER_LOG").unwrap_or_else(|_| EnvFilter::new(default_filter));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
