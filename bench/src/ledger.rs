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
use courier_common::shutdown::CancellationToken;
use courier_payments::Payments;
use courier_payments::ledger::Command;
use courier_payments::money::Currency;
use courier_payments::region::RegionCode;
use courier_payments::store::IdempotencyKey;
use courier_payments::writer::{WRITER_THREAD_NAME, WriteOutcome};
use hdrhistogram::Histogram;
use hyper::header::{AUTHORIZATION, HeaderName, HeaderValue};
use indicatif::ProgressBar;
use serde_json::json;

use courier_accounts::phone::PhoneNumber;

use crate::http::Clients;
use crate::support::{CpuTimes, Phase, connection_limits, progress, run_clients, serve_options};

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
    /// Skip the floor: the same requests to a route that authenticates,
    /// reads and checks them as the ledger's does, and answers without the
    /// ledger (the most this HTTP stack could give).
    #[arg(long)]
    no_floor: bool,
    /// Also measure the ledger without HTTP: the same transfers handed by
    /// as many tasks straight to the writer (the batch applied in memory,
    /// its statements and its durable commit), after the floor.
    #[arg(long)]
    in_process: bool,
    /// Measure a second phase in the same run with finance ops in place: a
    /// hold on every tenth wallet, and an operator making audited changes
    /// (freezes, unfreezes, holds placed and released) throughout.
    #[arg(long)]
    ops: bool,
    /// Audited operator actions a second during the `--ops` phase.
    #[arg(long, default_value_t = 50)]
    ops_per_s: u64,
    /// After the transfers, time this many operator searches (every filter
    /// in turn) and as many balances at a moment of the busiest wallet
    /// (with `--hot`, wallet 0 takes part in every transfer).
    #[arg(long, default_value_t = 0)]
    queries: u32,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

pub async fn run(bench: LedgerBench) -> Result<(), String> {
    let scratch = tempfile::tempdir().map_err(|e| e.to_string())?;
    let server = start(&bench, scratch.path()).await?;
    let seeded = seed(&bench, &server, scratch.path()).await?;
    let backend = writer_backend(&server.database).await;
    let cpu_started = CpuTimes::now(backend);
    let started = jiff::Timestamp::now();
    let grouped = transfers(&bench, &server, &seeded).await?;
    let ended = jiff::Timestamp::now();
    let cpu_transfers = CpuTimes::now(backend);
    let floor = if bench.no_floor {
        None
    } else {
        Some(post_transfers(&bench, &seeded, courier_payments::api::FLOOR_PATH, "the floor over HTTP").await?)
    };
    let cpu_floor = CpuTimes::now(backend);
    let in_process = if bench.in_process { Some(writer_only(&bench, &server, &seeded).await?) } else { None };
    let cpu_in_process = CpuTimes::now(backend);
    let with_ops = if bench.ops { Some(transfers_with_ops(&bench, &server, &seeded).await?) } else { None };
    let queried = if bench.queries > 0 {
        Some(queries(&bench, &server, &seeded, (started.as_millisecond(), ended.as_millisecond())).await?)
    } else {
        None
    };
    server.shutdown.cancel();
    let cpu_naive_started = CpuTimes::now(None);
    let naive = if bench.no_baseline { None } else { Some(naive_baseline(&bench, &server, &seeded).await?) };
    let cpu_naive = CpuTimes::now(None);
    let (reconciled, reconciliation) = reconcile(&server.database).await?;
    let mut figures = figures(&bench, &grouped, (floor.as_ref(), naive.as_ref()), reconciled);
    // Where each phase's CPU went: the writer's thread and its database
    // backend (PostgreSQL on this machine) beside the whole machine.
    let writer_cpu = |after: &CpuTimes, before: &CpuTimes, completed: u64, prefix: &str, figures: &mut _| {
        let backend_figure = backend.map(|_| "database_backend");
        after.figures_since(before, completed, (prefix, "transfer"), Some(WRITER_THREAD_NAME), backend_figure, figures);
    };
    writer_cpu(&cpu_transfers, &cpu_started, grouped.phase.completed, "", &mut figures);
    if let Some(floor) = &floor {
        cpu_floor.figures_since(&cpu_transfers, floor.completed, ("floor_", "request"), None, None, &mut figures);
    }
    if let Some(naive) = &naive {
        cpu_naive.figures_since(&cpu_naive_started, naive.completed, ("naive_", "transfer"), None, None, &mut figures);
    }
    if let Some((search, balance, transfers)) = &queried {
        let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        figures["queries_over_transfers"] = json!(transfers);
        figures["search_ms_p50"] = json!(ms(search, 0.5));
        figures["search_ms_p99"] = json!(ms(search, 0.99));
        figures["search_ms_max"] = json!(search.max() as f64 / 1000.0);
        figures["balance_at_ms_p50"] = json!(ms(balance, 0.5));
        figures["balance_at_ms_p99"] = json!(ms(balance, 0.99));
        figures["balance_at_ms_max"] = json!(balance.max() as f64 / 1000.0);
    }
    if let Some(direct) = &in_process {
        phase_figures(&mut figures, "in_process", "transfers", &direct.phase);
        writer_cpu(&cpu_in_process, &cpu_floor, direct.phase.completed, "in_process_", &mut figures);
        figures["in_process_batch_size_mean"] = json!(direct.batch_size_mean());
        if let Some(floor) = &floor {
            figures["in_process_ratio_to_floor"] = json!(ratio(&direct.phase, floor, 1000.0));
        }
    }
    if let Some((phase, actions)) = &with_ops {
        phase_figures(&mut figures, "ops", "transfers", phase);
        figures["ops_audited_actions"] = json!(actions);
        figures["ops_ratio"] = json!(ratio(phase, &grouped.phase, 1000.0));
    }
    if bench.json {
        println!("{figures}");
    } else {
        for (name, value) in figures.as_object().expect("built as an object") {
            println!("{name:<28} {value}");
        }
    }
    server.database.close().await;
    if !reconciled {
        return Err(format!("the ledger does not reconcile after the run: {reconciliation}"));
    }
    if grouped.phase.failed > 0 {
        return Err(format!("{} transfers failed", grouped.phase.failed));
    }
    if let Some(floor) = floor.as_ref().filter(|floor| floor.failed > 0) {
        return Err(format!("{} requests to the floor failed", floor.failed));
    }
    if let Some(direct) = in_process.as_ref().filter(|direct| direct.phase.failed > 0) {
        return Err(format!("{} transfers handed straight to the writer failed", direct.phase.failed));
    }
    if let Some((phase, _)) = &with_ops
        && phase.failed > 0
    {
        return Err(format!("{} transfers failed with finance ops in place", phase.failed));
    }
    Ok(())
}

/// The process id of the writer's PostgreSQL backend, when it runs on this
/// machine (a `postgres` process of that id is there), for its CPU time.
async fn writer_backend(database: &Database) -> Option<u32> {
    if database.backend() != courier_common::Backend::Postgres {
        return None;
    }
    let pid: Option<(i32,)> = sqlx::query_as(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database() LIMIT 1",
    )
    .bind(courier_payments::writer::WRITER_APPLICATION_NAME)
    .fetch_optional(database.pool())
    .await
    .ok()
    .flatten();
    let pid = u32::try_from(pid?.0).ok()?;
    let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    (name.trim_end() == "postgres").then_some(pid)
}

/// The server under test, in this process, on a free port.
struct Server {
    database: Database,
    payments: Payments,
    addr: std::net::SocketAddr,
    shutdown: CancellationToken,
}

async fn start(bench: &LedgerBench, data_dir: &std::path::Path) -> Result<Server, String> {
    let data_dir = data_dir.to_string_lossy().into_owned();
    let connections = (bench.clients + 8).to_string();
    // Calls are not measured here: no TURN relay.
    let mut args = vec!["--data-dir", &data_dir, "--database-connections-max", &connections, "--turn", "off"];
    if let Some(url) = &bench.database_url {
        args.extend(["--database-url", url]);
    }
    let options = serve_options(&args)?;
    let shutdown = CancellationToken::new();
    // The ledger's floor is served beside it, behind the same stack.
    let floor = |payments: Option<&Payments>| payments.cloned().map(courier_payments::api::floor).unwrap_or_default();
    let built = courier_server::build_with(&options, None, shutdown.clone(), floor).await?;
    let payments = built.payments.clone().ok_or("the ledger is not mounted")?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let stop = shutdown.clone();
    tokio::spawn(courier_server::serve_router(listener, built.router, connection_limits(), async move {
        stop.cancelled().await
    }));
    Ok(Server { database: built.database, payments, addr, shutdown })
}

/// The wallets, their owners' `Authorization` headers and the clients, with
/// money in every wallet.
struct Seeded {
    accounts: Arc<Vec<String>>,
    bearers: Arc<Vec<HeaderValue>>,
    http: Arc<Clients>,
    admin: HeaderValue,
}

/// Setup, not measured: accounts inserted directly, tokens minted with the
/// server's key, money deposited through the admin API.
async fn seed(bench: &LedgerBench, server: &Server, data_dir: &std::path::Path) -> Result<Seeded, String> {
    let bar = progress("creating wallets", bench.wallets as u64, bench.json);
    let accounts = seed_accounts(&server.database, bench.wallets, &bar).await?;
    bar.finish();
    let key = TokenKey::load(&data_dir.join("token-signing-key.pem")).map_err(|e| e.to_string())?;
    let issuer = TokenIssuer::new(key, vec![], 3_600);
    let now_s = jiff::Timestamp::now().as_second() as u64;
    // Each wallet's `Authorization` header, built once.
    let bearers: Arc<Vec<HeaderValue>> =
        Arc::new(accounts.iter().map(|id| bearer(&issuer.issue(id, "bench", "RU", now_s))).collect::<Result<_, _>>()?);
    let (_, admin_key) =
        operators::create(&server.database, "bench", Role::Admin, None).await.map_err(|e| e.to_string())?;
    let http = Arc::new(Clients::new(server.addr, bench.clients)?);
    let bar = progress("depositing", bench.wallets as u64, bench.json);
    let accounts = Arc::new(accounts);
    let admin = bearer(&admin_key)?;
    let seeding_admin = admin.clone();
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
    Ok(Seeded { accounts, bearers, http, admin: seeding_admin })
}

/// The measured phase's figures: the clients' and the writer's.
struct Grouped {
    phase: Phase,
    batches: u64,
    requests: u64,
    distribution: serde_json::Map<String, serde_json::Value>,
}

impl Grouped {
    fn batch_size_mean(&self) -> f64 {
        if self.batches > 0 { (self.requests as f64 / self.batches as f64 * 10.0).round() / 10.0 } else { 0.0 }
    }
}

/// The measured phase: P2P transfers over HTTP, group-committed.
async fn transfers(bench: &LedgerBench, server: &Server, seeded: &Seeded) -> Result<Grouped, String> {
    grouped(server, post_transfers(bench, seeded, "/v1/transfers", "transfers over HTTP")).await
}

/// The same transfers as commands handed straight to the ledger's writer by
/// as many tasks as there are clients, each waiting for its durable answer:
/// the writer's own serial stage (applying a batch in memory, its checks,
/// statements and commit) with no HTTP, JWT or JSON request in front of it.
async fn writer_only(bench: &LedgerBench, server: &Server, seeded: &Seeded) -> Result<Grouped, String> {
    let bar = progress("transfers straight to the writer", bench.transfers, bench.json);
    let (wallets, hot) = (bench.wallets as u64, bench.hot);
    let phase = run_clients(bench.clients, bench.transfers, Duration::from_secs(bench.duration_s), &bar, {
        let (writer, accounts) = (server.payments.writer().clone(), seeded.accounts.clone());
        move |index, client| {
            let (writer, accounts) = (writer.clone(), accounts.clone());
            async move {
                let (from, to) = pick(index, client, wallets, hot);
                let (from, to) = (accounts[from].clone(), accounts[to].clone());
                let key = uuid::Uuid::now_v7().to_string();
                let idempotency = IdempotencyKey { scope: format!("account:{from}"), key: key.clone() };
                let command = Command::P2p {
                    id: uuid::Uuid::now_v7().to_string(),
                    fee_id: uuid::Uuid::now_v7().to_string(),
                    from: from.clone(),
                    from_region: Some(RegionCode::Ru),
                    to: Some(to),
                    to_region: Some(RegionCode::Ru),
                    amount_minor: amount_minor(index),
                    currency: Some(Currency::Rub),
                    note: None,
                };
                // Stored as long as the HTTP path's (a SHA-256 in hex).
                let fingerprint = format!("{:0>64}", key.replace('-', ""));
                let idempotency = Some((idempotency, fingerprint));
                match writer.submit(command, from, idempotency, None, Duration::from_secs(30)).await {
                    Ok(WriteOutcome::Response(response)) if response.status == 201 => Ok(()),
                    other => Err(format!("the writer answered {other:?}")),
                }
            }
        }
    });
    let direct = grouped(server, phase).await?;
    bar.finish();
    Ok(direct)
}

/// A phase's figures with the writer's batches made during it.
async fn grouped(server: &Server, phase: impl Future<Output = Result<Phase, String>>) -> Result<Grouped, String> {
    let stats = &server.payments.writer().stats;
    let batches_before = stats.batches.load(Ordering::Relaxed);
    let requests_before = stats.requests.load(Ordering::Relaxed);
    let buckets_before: Vec<u64> = stats.batch_size_buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
    let phase = phase.await?;
    let distribution = stats
        .batch_size_buckets
        .iter()
        .zip(&buckets_before)
        .enumerate()
        .filter_map(|(i, (bucket, before))| {
            let count = bucket.load(Ordering::Relaxed) - before;
            (count > 0).then(|| (format!("{}-{}", 1u64 << i, (1u64 << (i + 1)) - 1), json!(count)))
        })
        .collect();
    Ok(Grouped {
        phase,
        batches: stats.batches.load(Ordering::Relaxed) - batches_before,
        requests: stats.requests.load(Ordering::Relaxed) - requests_before,
        distribution,
    })
}

/// `POST path` with a P2P transfer's body, from every client, for a phase:
/// the ledger's route or its floor, with the same generator.
async fn post_transfers(
    bench: &LedgerBench,
    seeded: &Seeded,
    path: &'static str,
    label: &str,
) -> Result<Phase, String> {
    let bar = progress(label, bench.transfers, bench.json);
    let (wallets, hot) = (bench.wallets as u64, bench.hot);
    let phase = run_clients(bench.clients, bench.transfers, Duration::from_secs(bench.duration_s), &bar, {
        let (http, accounts, bearers) = (seeded.http.clone(), seeded.accounts.clone(), seeded.bearers.clone());
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
                let answer = http.post_json(client, path, &headers, body).await?;
                answer.created("transfer")
            }
        }
    })
    .await?;
    bar.finish();
    Ok(phase)
}

/// The measured phase again, with a hold of 1.00 on every tenth wallet and
/// an operator's audited actions on a wallet of its own throughout (each a
/// batch of the writer with an audit entry): the P2P rate, and how many
/// actions were audited.
async fn transfers_with_ops(bench: &LedgerBench, server: &Server, seeded: &Seeded) -> Result<(Phase, u64), String> {
    let post = |path: String, body: String| operator_post(seeded.http.clone(), seeded.admin.clone(), path, body);
    let hold = r#"{"amount":"1.00","currency":"RUB","reason":"bench"}"#;
    for account in seeded.accounts.iter().step_by(10) {
        post(format!("/admin/v1/accounts/{account}/holds"), hold.to_owned()).await?.created("hold")?;
    }
    // The operator's own wallet: never a party to the P2P transfers.
    let own = seed_accounts(&server.database, 1, &ProgressBar::hidden()).await?.remove(0);
    let deposit = format!(r#"{{"account_id":"{own}","amount":"1000.00","currency":"RUB","external_ref":"bench"}}"#);
    post("/admin/v1/deposits".into(), deposit).await?.created("deposit")?;
    let stop = CancellationToken::new();
    let operator = tokio::spawn({
        let (stop, every) = (stop.clone(), Duration::from_micros(1_000_000 / bench.ops_per_s.max(1)));
        let (http, admin) = (seeded.http.clone(), seeded.admin.clone());
        let post = move |path: String, body: String| operator_post(http.clone(), admin.clone(), path, body);
        async move {
            let mut actions = 0u64;
            let mut tick = tokio::time::interval(every);
            while !stop.is_cancelled() {
                tick.tick().await;
                let (path, body) = match actions % 4 {
                    0 => (format!("/admin/v1/accounts/{own}/freeze"), r#"{"reason":"bench"}"#.to_owned()),
                    1 => (format!("/admin/v1/accounts/{own}/unfreeze"), r#"{"reason":"bench"}"#.to_owned()),
                    _ => (format!("/admin/v1/accounts/{own}/holds"), hold.to_owned()),
                };
                match post(path, body).await {
                    Ok(answer) if answer.status < 300 => actions += 1,
                    Ok(answer) => return Err(format!("an operator action answered {}", answer.status)),
                    Err(error) => return Err(error),
                }
            }
            Ok(actions)
        }
    });
    let grouped = transfers(bench, server, seeded).await;
    stop.cancel();
    let actions = operator.await.map_err(|e| e.to_string())??;
    Ok((grouped?.phase, actions))
}

/// Operator searches with every filter in turn, and balances of wallet 0
/// at moments spread over `(from, to)` ms, one at a time over HTTP: their
/// latencies, and how many transfers the ledger holds.
async fn queries(
    bench: &LedgerBench,
    server: &Server,
    seeded: &Seeded,
    (from, to): (i64, i64),
) -> Result<(Histogram<u64>, Histogram<u64>, i64), String> {
    let http = courier_common::client::http_client_builder().build().map_err(|e| e.to_string())?;
    let base = format!("http://{}", server.addr);
    let admin = seeded.admin.to_str().map_err(|e| e.to_string())?.to_owned();
    let hot = &seeded.accounts[0];
    let moment = |n: u32| {
        let span = (to - from).max(1);
        let at = from + (u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15) % span as u64) as i64;
        jiff::Timestamp::from_millisecond(at).map(|t| t.to_string()).unwrap_or_default()
    };
    let get = |path: String| {
        let request = http.get(format!("{base}{path}")).header("authorization", &admin);
        async move {
            let started = std::time::Instant::now();
            let response = request.send().await.map_err(|e| e.to_string())?;
            let status = response.status();
            response.bytes().await.map_err(|e| e.to_string())?;
            if !status.is_success() {
                return Err(format!("a query answered {status}"));
            }
            Ok::<u64, String>(started.elapsed().as_micros() as u64)
        }
    };
    let (mut search, mut balance) =
        (Histogram::new(3).map_err(|e| e.to_string())?, Histogram::new(3).map_err(|e| e.to_string())?);
    let bar = progress("searches and balances at a moment", u64::from(bench.queries) * 2, bench.json);
    for n in 0..bench.queries {
        let (a, b) = (moment(n), moment(n + 1));
        let (early, late) = if a <= b { (a, b) } else { (b, a) };
        let filter = match n % 6 {
            0 => String::new(),
            1 => "kind=p2p".to_owned(),
            2 => "region=RU&kind=deposit".to_owned(),
            3 => format!("account={hot}"),
            4 => format!("from={early}&to={late}"),
            _ => format!("account={hot}&from={early}&to={late}"),
        };
        let path = format!("/admin/v1/transfers?limit=50&{}", filter.replace('+', "%2B"));
        search.record(get(path).await?).map_err(|e| e.to_string())?;
        bar.inc(1);
        let path = format!("/admin/v1/accounts/{hot}/balance?at={}", moment(n * 7 + 3).replace('+', "%2B"));
        balance.record(get(path).await?).map_err(|e| e.to_string())?;
        bar.inc(1);
    }
    bar.finish();
    let count = courier_payments::store::transfer_count(&server.database).await.map_err(|e| e.to_string())?;
    Ok((search, balance, count))
}

/// One operator request (on the clients' first connection) with a new key.
async fn operator_post(
    http: Arc<Clients>,
    admin: HeaderValue,
    path: String,
    body: String,
) -> Result<crate::http::Answer, String> {
    let key = header(&uuid::Uuid::now_v7().to_string())?;
    http.post_json(0, &path, &[(AUTHORIZATION, admin), (IDEMPOTENCY_KEY, key)], body).await
}

/// The naive baseline, on the same database: one transaction per transfer.
async fn naive_baseline(bench: &LedgerBench, server: &Server, seeded: &Seeded) -> Result<Phase, String> {
    let bar = progress("naive baseline", bench.transfers, bench.json);
    let (accounts, database) = (seeded.accounts.clone(), server.database.clone());
    let (wallets, hot) = (bench.wallets as u64, bench.hot);
    let phase = run_clients(
        bench.clients,
        bench.transfers,
        Duration::from_secs(bench.duration_s),
        &bar,
        move |index, client| {
            let (accounts, database) = (accounts.clone(), database.clone());
            async move {
                let (from, to) = pick(index, client, wallets, hot);
                let amount = 100 + (index % 900) as i64;
                courier_payments::naive::transfer(&database, &accounts[from], &accounts[to], amount).await
            }
        },
    )
    .await?;
    bar.finish();
    Ok(phase)
}

fn figures(
    bench: &LedgerBench,
    grouped: &Grouped,
    (floor, naive): (Option<&Phase>, Option<&Phase>),
    reconciled: bool,
) -> serde_json::Value {
    let phase = &grouped.phase;
    let mut figures = json!({
        "bench": "ledger",
        "database": if bench.database_url.is_some() { "postgres" } else { "sqlite" },
        "clients": bench.clients,
        "wallets": bench.wallets,
        "hot_account": bench.hot,
        "transfers": phase.completed,
        "failures": phase.failed,
        "transfers_per_s": phase.per_s().round(),
        "latency_ms_p50": phase.latency.value_at_quantile(0.5) as f64 / 1000.0,
        "latency_ms_p99": phase.latency.value_at_quantile(0.99) as f64 / 1000.0,
        "latency_ms_max": phase.latency.max() as f64 / 1000.0,
        "batches": grouped.batches,
        "batch_size_mean": grouped.batch_size_mean(),
        "batch_size_distribution": grouped.distribution,
    });
    if let Some(floor) = floor {
        phase_figures(&mut figures, "floor", "requests", floor);
        figures["ratio_to_floor"] = json!(ratio(phase, floor, 1000.0));
    }
    if let Some(naive) = naive {
        phase_figures(&mut figures, "naive", "transfers", naive);
        figures["ratio_to_naive"] = json!(ratio(phase, naive, 10.0));
    }
    figures["reconciled"] = json!(reconciled);
    figures
}

/// A further phase's rate, failures and p99 under `{name}_…`.
fn phase_figures(figures: &mut serde_json::Value, name: &str, unit: &str, phase: &Phase) {
    figures[format!("{name}_{unit}_per_s")] = json!(phase.per_s().round());
    figures[format!("{name}_failures")] = json!(phase.failed);
    figures[format!("{name}_latency_ms_p99")] = json!(phase.latency.value_at_quantile(0.99) as f64 / 1000.0);
}

/// `phase`'s rate over `other`'s, rounded to `1 / scale`.
fn ratio(phase: &Phase, other: &Phase, scale: f64) -> f64 {
    (phase.per_s() / other.per_s().max(1e-9) * scale).round() / scale
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

/// What transfer `index` moves, in kopecks: 1.00 to 9.99 roubles.
fn amount_minor(index: u64) -> i64 {
    ((1 + index % 9) * 100 + index % 100) as i64
}

/// [`amount_minor`] as a request's `amount` reads.
fn amount(index: u64) -> String {
    courier_payments::money::format_minor(amount_minor(index), Currency::Rub)
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
    let found = courier_payments::report::reconcile(database).await.map_err(|e| e.to_string())?;
    Ok((found.balanced(), format!("totals {:?}, mismatches {}", found.trial_balance, found.mismatches.len())))
}

#[cfg(test)]
mod tests {
    use courier_payments::money::{Currency, Money};

    /// The transfers handed straight to the writer move what the same
    /// transfers over HTTP move.
    #[test]
    fn amounts_in_kopecks_match_the_amounts_sent_over_http() {
        for index in 0..1_000 {
            let sent = Money::parse(&super::amount(index), Currency::Rub).unwrap();
            assert_eq!(super::amount_minor(index), sent.minor(), "transfer {index}");
        }
    }
}
