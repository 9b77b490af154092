//! `courier bench ledger`: P2P transfers over HTTP through the group-commit
//! writer, and in the same run a naive baseline (one database transaction per
//! transfer, same schema, same checks) for the ratio.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::Args;
use courier_accounts::operators::{self, Role};
use courier_accounts::tokens::{TokenIssuer, TokenKey};
use courier_common::Database;
use hyper::header::{AUTHORIZATION, HeaderName, HeaderValue};
use indicatif::ProgressBar;
use serde_json::json;

use courier_accounts::phone::PhoneNumber;

use crate::http::Clients;
use crate::support::{Phase, progress, run_clients, serve_options};

const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

#[derive(Args)]
pub struct LedgerBench {
    /// A scratch PostgreSQL database (tables are created, rows added); default: SQLite in a temporary directory.
    #[arg(long)]
    database_url: Option<String>,
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Wallets the transfers move between.
    #[arg(long, default_value_t = 10_000)]
    wallets: usize,
    /// Every transfer goes to one wallet (a hot account).
    #[arg(long)]
    hot: bool,
    /// At most this many transfers in each phase.
    #[arg(long, default_value_t = 200_000)]
    transfers: u64,
    /// At most this long for each phase.
    #[arg(long, default_value_t = 15)]
    duration_s: u64,
    /// Skip the naive baseline.
    #[arg(long)]
    no_baseline: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

pub async fn run(bench: LedgerBench) -> Result<(), String> {
    let scratch = tempfile::tempdir().map_err(|e| e.to_string())?;
    let data_dir = scratch.path().to_string_lossy().into_owned();
    let connections = (bench.clients + 8).to_string();
    // Calls are not measured here: no TURN relay.
    let mut args = vec!["--data-dir", &data_dir, "--database-connections-max", &connections, "--turn", "off"];
    if let Some(url) = &bench.database_url {
        args.extend(["--database-url", url]);
    }
    let options = serve_options(&args)?;
    let shutdown = courier_common::shutdown::CancellationToken::new();
    let built = courier_server::build(&options, None, shutdown.clone()).await?;
    let database = built.database.clone();
    let payments = built.payments.clone().ok_or("the ledger is not mounted")?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let router = built.router;
    let stop = shutdown.clone();
    tokio::spawn(courier_server::serve_router(listener, router, async move { stop.cancelled().await }));

    let progress = |message: &str, length: u64| progress(message, length, bench.json);

    // Setup, not measured: accounts inserted directly, tokens minted with the
    // server's key, money deposited through the admin API.
    let bar = progress("creating wallets", bench.wallets as u64);
    let accounts = seed_accounts(&database, bench.wallets, &bar).await?;
    bar.finish();
    let key = TokenKey::load(&scratch.path().join("token-signing-key.pem")).map_err(|e| e.to_string())?;
    let issuer = TokenIssuer::new(key, vec![], 3_600);
    let now_s = jiff::Timestamp::now().as_second() as u64;
    // Each wallet's `Authorization` header, built once.
    let bearers: Arc<Vec<HeaderValue>> =
        Arc::new(accounts.iter().map(|id| bearer(&issuer.issue(id, "bench", "RU", now_s))).collect::<Result<_, _>>()?);
    let (_, admin_key) = operators::create(&database, "bench", Role::Admin, None).await.map_err(|e| e.to_string())?;
    let http = Arc::new(Clients::new(addr, bench.clients)?);
    let bar = progress("depositing", bench.wallets as u64);
    let accounts = Arc::new(accounts);
    let admin = bearer(&admin_key)?;
    run_clients(bench.clients, bench.wallets as u64, Duration::from_secs(600), &bar, {
        let (http, accounts) = (http.clone(), accounts.clone());
        move |index, client| {
            let (http, accounts, admin) = (http.clone(), accounts.clone(), admin.clone());
            async move {
                let body = format!(
                    r#"{{"account_id":"{}","amount":"1000000.00","currency":"RUB","external_ref":"bench"}}"#,
                    accounts[index as usize]
                );
                let headers = [(AUTHORIZATION, admin), (IDEMPOTENCY_KEY, header(&format!("seed-{index}"))?)];
                let answer = http.post_json(client, "/admin/v1/deposits", &headers, body).await?;
                answer.created("deposit")
            }
        }
    })
    .await?;
    bar.finish();

    // The measured phase: P2P transfers over HTTP.
    let batches_before = payments.writer().stats.batches.load(Ordering::Relaxed);
    let requests_before = payments.writer().stats.requests.load(Ordering::Relaxed);
    let buckets_before: Vec<u64> =
        payments.writer().stats.batch_size_buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
    let bar = progress("transfers over HTTP", bench.transfers);
    let wallets = bench.wallets as u64;
    let hot = bench.hot;
    let grouped = run_clients(bench.clients, bench.transfers, Duration::from_secs(bench.duration_s), &bar, {
        let (http, accounts) = (http.clone(), accounts.clone());
        move |index, client| {
            let (http, accounts, bearers) = (http.clone(), accounts.clone(), bearers.clone());
            async move {
                let (from, to) = pick(index, client, wallets, hot);
                let body = format!(
                    r#"{{"to":{{"account_id":"{}"}},"amount":"{}","currency":"RUB"}}"#,
                    accounts[to],
                    amount(index)
                );
                let key = header(&uuid::Uuid::now_v7().to_string())?;
                let headers = [(AUTHORIZATION, bearers[from].clone()), (IDEMPOTENCY_KEY, key)];
                let answer = http.post_json(client, "/v1/transfers", &headers, body).await?;
                answer.created("transfer")
            }
        }
    })
    .await?;
    bar.finish();
    let stats = &payments.writer().stats;
    let batches = stats.batches.load(Ordering::Relaxed) - batches_before;
    let requests = stats.requests.load(Ordering::Relaxed) - requests_before;
    let distribution: serde_json::Map<String, serde_json::Value> = stats
        .batch_size_buckets
        .iter()
        .zip(&buckets_before)
        .enumerate()
        .filter_map(|(i, (bucket, before))| {
            let count = bucket.load(Ordering::Relaxed) - before;
            (count > 0).then(|| (format!("{}-{}", 1u64 << i, (1u64 << (i + 1)) - 1), json!(count)))
        })
        .collect();
    shutdown.cancel();

    // The naive baseline, on the same database: one transaction per transfer.
    let naive = if bench.no_baseline {
        None
    } else {
        let bar = progress("naive baseline", bench.transfers);
        let accounts = accounts.clone();
        let database = database.clone();
        let result = run_clients(
            bench.clients,
            bench.transfers,
            Duration::from_secs(bench.duration_s),
            &bar,
            move |index, client| {
                let (accounts, database) = (accounts.clone(), database.clone());
                async move {
                    let (from, to) = pick(index, client, wallets, hot);
                    courier_payments::naive::transfer(
                        &database,
                        &accounts[from],
                        &accounts[to],
                        100 + (index % 900) as i64,
                    )
                    .await
                }
            },
        )
        .await?;
        bar.finish();
        Some(result)
    };

    let rate = |phase: &Phase| phase.completed as f64 / phase.elapsed.as_secs_f64();
    let mut figures = json!({
        "bench": "ledger",
        "database": if bench.database_url.is_some() { "postgres" } else { "sqlite" },
        "clients": bench.clients,
        "wallets": bench.wallets,
        "hot_account": bench.hot,
        "transfers": grouped.completed,
        "failures": grouped.failed,
        "transfers_per_s": rate(&grouped).round(),
        "latency_ms_p50": grouped.latency.value_at_quantile(0.5) as f64 / 1000.0,
        "latency_ms_p99": grouped.latency.value_at_quantile(0.99) as f64 / 1000.0,
        "latency_ms_max": grouped.latency.max() as f64 / 1000.0,
        "batches": batches,
        "batch_size_mean": if batches > 0 { (requests as f64 / batches as f64 * 10.0).round() / 10.0 } else { 0.0 },
        "batch_size_distribution": distribution,
    });
    if let Some(naive) = &naive {
        figures["naive_transfers_per_s"] = json!(rate(naive).round());
        figures["naive_failures"] = json!(naive.failed);
        figures["naive_latency_ms_p99"] = json!(naive.latency.value_at_quantile(0.99) as f64 / 1000.0);
        figures["ratio_to_naive"] = json!((rate(&grouped) / rate(naive).max(1e-9) * 10.0).round() / 10.0);
    }
    let (status_ok, reconciliation) = reconcile(&database).await?;
    figures["reconciled"] = json!(status_ok);
    if bench.json {
        println!("{figures}");
    } else {
        for (name, value) in figures.as_object().expect("built as an object") {
            println!("{name:<28} {value}");
        }
    }
    database.close().await;
    if !status_ok {
        return Err(format!("the ledger does not reconcile after the run: {reconciliation}"));
    }
    if grouped.failed > 0 {
        return Err(format!("{} transfers failed", grouped.failed));
    }
    Ok(())
}

/// Sender and recipient for transfer `index`: random-looking, distinct; with
/// `hot`, every transfer goes to wallet 0.
fn pick(index: u64, client: usize, wallets: u64, hot: bool) -> (usize, usize) {
    let mix = index.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(client as u64);
    let from = 1 + (mix % (wallets - 1));
    let to = if hot { 0 } else { (from + 1 + (mix >> 20) % (wallets - 2)) % wallets };
    let to = if to == from { 0 } else { to };
    (from as usize, to as usize)
}

fn header(value: &str) -> Result<HeaderValue, String> {
    HeaderValue::from_str(value).map_err(|e| e.to_string())
}

fn bearer(token: &str) -> Result<HeaderValue, String> {
    header(&format!("Bearer {token}"))
}

fn amount(index: u64) -> String {
    format!("{}.{:02}", 1 + index % 9, index % 100)
}

/// Wallet owners, written straight into the accounts service's store (no
/// sign-in to pay for).
async fn seed_accounts(database: &Database, count: usize, bar: &ProgressBar) -> Result<Vec<String>, String> {
    let run = jiff::Timestamp::now().as_second() % 1_000;
    let ids: Vec<String> = (0..count).map(|_| uuid::Uuid::now_v7().to_string()).collect();
    for (chunk_index, chunk) in ids.chunks(1_000).enumerate() {
        let phones: Vec<PhoneNumber> = (0..chunk.len())
            .map(|i| PhoneNumber::from_stored(format!("+7999{run:03}{:05}", chunk_index * 1_000 + i), "RU".into()))
            .collect();
        let accounts: Vec<(&str, &PhoneNumber)> = chunk.iter().map(String::as_str).zip(&phones).collect();
        courier_accounts::store::insert_accounts(database, &accounts, 0).await.map_err(|e| e.to_string())?;
        bar.inc(chunk.len() as u64);
    }
    Ok(ids)
}

/// Whether every currency sums to zero and stored balances equal their transfers.
async fn reconcile(database: &Database) -> Result<(bool, String), String> {
    let totals = courier_payments::store::trial_balance(database).await.map_err(|e| e.to_string())?;
    let mismatches = courier_payments::store::balance_mismatches(database).await.map_err(|e| e.to_string())?;
    let ok = mismatches.is_empty() && totals.iter().all(|(_, total)| *total == 0);
    Ok((ok, format!("totals {totals:?}, mismatches {}", mismatches.len())))
}
