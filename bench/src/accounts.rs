//! `courier bench accounts`: access-token verifications/s (offline, all
//! cores) and whole sign-ins/s over HTTP (code request, webhook delivery,
//! verification, session creation).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Args;
use courier_accounts::tokens::{TokenIssuer, TokenKey, TokenVerifier};
use serde_json::json;

use crate::support::{code_hook, connection_limits, progress, run_clients, serve_options, sign_in, webhook_args};

#[derive(Args)]
pub struct AccountsBench {
    /// A scratch PostgreSQL database (its tables are created); default: SQLite in a temporary directory.
    #[arg(long)]
    database_url: Option<String>,
    /// Concurrent HTTP clients signing in.
    #[arg(long, default_value_t = 32)]
    clients: u32,
    /// At most this many sign-ins.
    #[arg(long, default_value_t = 5_000)]
    sign_ins: u64,
    /// At most this long for each phase.
    #[arg(long, default_value_t = 10)]
    duration_s: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

pub async fn run(bench: AccountsBench) -> Result<(), String> {
    let phase = Duration::from_secs(bench.duration_s.max(1));
    let threads = std::thread::available_parallelism().map(usize::from).unwrap_or(1);
    let (verify_per_s, cached_per_s, issue_per_s) = token_throughput(threads, phase.min(Duration::from_secs(3)));

    let scratch = tempfile::tempdir().map_err(|error| error.to_string())?;
    let (hook_url, codes) = code_hook().await?;

    let data_dir = scratch.path().to_string_lossy().into_owned();
    // Calls are not measured here: no TURN relay.
    let mut args = vec!["--data-dir", &data_dir, "--turn", "off"];
    args.extend(webhook_args(&hook_url));
    if let Some(url) = &bench.database_url {
        args.extend(["--database-url", url]);
    }
    let options = serve_options(&args)?;
    let built = courier_server::build(&options, None, courier_common::shutdown::CancellationToken::new()).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|error| error.to_string())?;
    let base = format!("http://{}", listener.local_addr().map_err(|error| error.to_string())?);
    tokio::spawn(courier_server::serve_router(listener, built.router, connection_limits(), std::future::pending()));

    // A per-run prefix keeps numbers unique when a database is reused.
    let run_prefix = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() % 90 + 10).unwrap_or(10);
    let http = courier_common::client::http_client_builder()
        .pool_max_idle_per_host(bench.clients as usize)
        .build()
        .map_err(|e| e.to_string())?;
    let bar = progress("sign-ins over HTTP", bench.sign_ins, bench.json);
    let phase = run_clients(bench.clients as usize, bench.sign_ins, phase, &bar, move |index, _| {
        let (http, base, codes) = (http.clone(), base.clone(), codes.clone());
        async move { sign_in(&http, &base, &format!("+7916{run_prefix:02}{index:05}"), &codes).await.map(drop) }
    })
    .await?;
    bar.finish();
    built.database.close().await;
    let (histogram, failures, elapsed) = (phase.latency, phase.failed, phase.elapsed.as_secs_f64());

    let sign_ins = histogram.len();
    let figures = json!({
        "bench": "accounts",
        "database": if bench.database_url.is_some() { "postgres" } else { "sqlite" },
        "threads": threads,
        "token_verifications_per_s": verify_per_s.round(),
        "token_cached_verifications_per_s": cached_per_s.round(),
        "token_issues_per_s": issue_per_s.round(),
        "clients": bench.clients,
        "sign_ins": sign_ins,
        "sign_in_failures": failures,
        "sign_ins_per_s": (sign_ins as f64 / elapsed).round(),
        "sign_in_ms_p50": histogram.value_at_quantile(0.50) as f64 / 1000.0,
        "sign_in_ms_p99": histogram.value_at_quantile(0.99) as f64 / 1000.0,
        "sign_in_ms_max": histogram.max() as f64 / 1000.0,
    });
    if bench.json {
        println!("{figures}");
    } else {
        for (name, value) in figures.as_object().expect("built as an object") {
            println!("{name:<28} {value}");
        }
    }
    if failures > 0 {
        return Err(format!("{failures} sign-ins failed"));
    }
    Ok(())
}

/// Access-token verifications/s (signature checked each time), cached
/// verifications/s (a token seen before) and issues/s, on `threads` threads.
fn token_throughput(threads: usize, phase: Duration) -> (f64, f64, f64) {
    let issuer = Arc::new(TokenIssuer::new(TokenKey::generate(), vec![], 900));
    let verifier = Arc::new(TokenVerifier::from_jwks(&issuer.jwks()).expect("a fresh key makes a valid JWKS"));
    let now_s = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let token =
        issuer.issue("0190c5a0-0000-7000-8000-000000000000", "0190c5a0-0000-7000-8000-000000000001", "RU", now_s);
    let measure = |work: Arc<dyn Fn() + Send + Sync>| {
        let started = Instant::now();
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let work = work.clone();
                std::thread::spawn(move || {
                    let mut count = 0u64;
                    while started.elapsed() < phase {
                        for _ in 0..64 {
                            work();
                        }
                        count += 64;
                    }
                    count
                })
            })
            .collect();
        let total: u64 = handles.into_iter().map(|h| h.join().unwrap_or(0)).sum();
        total as f64 / started.elapsed().as_secs_f64()
    };
    let verify = {
        let (verifier, token) = (verifier.clone(), token.clone());
        measure(Arc::new(move || {
            let claims = verifier.verify_signature(&token);
            debug_assert!(claims.is_ok());
            std::hint::black_box(claims).ok();
        }))
    };
    let cached = {
        let (verifier, token) = (verifier.clone(), token.clone());
        measure(Arc::new(move || {
            let claims = verifier.verify_with_known_keys(&token);
            debug_assert!(claims.is_ok());
            std::hint::black_box(claims).ok();
        }))
    };
    let issue = measure(Arc::new(move || {
        std::hint::black_box(issuer.issue("a", "d", "RU", now_s));
    }));
    (verify, cached, issue)
}
