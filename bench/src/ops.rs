//! `courier bench ops`: what the finance team's reads cost over a large
//! ledger. A `courier serve` child process over a database filled with a
//! day of transfers (1,000,000 by default: P2P, fees, deposits,
//! withdrawals, reversals) and an audit chain (1,000,000 entries); then the
//! CSV export of a tenth of the day and of the whole day (rows/s, and the
//! server's resident and peak resident memory at the start, between the two
//! and after), the daily report of that day (latency), and
//! the audit chain's verification by the server and offline through the
//! admin API (entries/s).

use std::time::Instant;

use clap::Args;
use courier_accounts::operators::{self, Role};
use courier_common::audit::{Draft, GENESIS, chain_all};
use courier_common::checkpoint::ChainWalk;
use courier_common::{Backend, Database};
use serde_json::{Value, json};

use crate::support::{next_serve_line, progress, spawn_serve};

#[derive(Args)]
pub struct OpsBench {
    /// A scratch PostgreSQL database (tables are created, rows added); default: SQLite in a temporary directory.
    #[arg(long)]
    database_url: Option<String>,
    /// Transfers in the day the export and the report read.
    #[arg(long, default_value_t = 1_000_000)]
    transfers: i64,
    /// Entries in the audit chain.
    #[arg(long, default_value_t = 1_000_000)]
    audit_entries: i64,
    /// Daily reports timed.
    #[arg(long, default_value_t = 5)]
    reports: u32,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

const DAY_MS: i64 = 24 * 3_600 * 1_000;
/// Moscow time, UTC+3 all year.
const MOSCOW_OFFSET_MS: i64 = 3 * 3_600 * 1_000;
/// Wallets the generated transfers move between.
const WALLETS: i64 = 10_000;

/// Inserts `count` transfers of region RU spread evenly over
/// `[from_ms, from_ms + span_ms)`, ids UUIDv7 of their times, in one
/// statement: P2P between synthetic wallets, with every 100th from the
/// first a deposit, from the second a withdrawal, from the third a fee on
/// the transfer before it; every 500th a reversal of the transfer before
/// it, and every 1000th with a note that needs quoting in CSV. Balances are
/// not kept (recorded as 0): this fills tables for reading, not a ledger
/// that reconciles.
pub async fn insert_transfers(db: &Database, from_ms: i64, span_ms: i64, count: i64) -> Result<(), sqlx::Error> {
    let step = (span_ms / count.max(1)).max(1);
    let backend = db.backend();
    // What differs between the two dialects: counting rows out, a number in
    // zero-padded hex, and a line feed.
    let (numbers, from, newline) = match backend {
        Backend::Sqlite => (
            format!("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {count}),"),
            "n".to_owned(),
            "char(10)",
        ),
        Backend::Postgres => {
            ("WITH".to_owned(), format!("generate_series(1::BIGINT, {count}::BIGINT) AS i"), "chr(10)")
        }
    };
    let hex = |expr: &str, width: u32| match backend {
        Backend::Sqlite => format!("printf('%0{width}x', {expr})"),
        Backend::Postgres => format!("lpad(to_hex({expr}), {width}, '0')"),
    };
    let id = |n: &str| {
        let ms = format!("({from_ms} + ({n} - 1) * {step})");
        format!(
            "{} || '-' || {} || '-7000-8000-' || {}",
            hex(&format!("{ms} >> 16"), 8),
            hex(&format!("{ms} & 65535"), 4),
            hex(n, 12)
        )
    };
    let sql = format!(
        "{numbers} t AS (SELECT i, {id_i} AS id, {id_prev} AS prev, \
           '0190aaaa-0000-7000-8000-' || {a} AS a, '0190bbbb-0000-7000-8000-' || {b} AS b FROM {from}) \
         INSERT INTO transfers (id, kind, debit_account, credit_account, amount, fee, currency, region, \
           linked_id, initiator, note, created_at, debit_balance, credit_balance) \
         SELECT id, {KIND_SQL}, {DEBIT_SQL}, {CREDIT_SQL}, 100 + i % 9901, 0, 'RUB', 'RU', {LINKED_SQL}, 'bench', \
           CASE WHEN i % 1000 = 0 THEN 'rent, \"march\"' || {newline} || 'paid' END, {from_ms} + (i - 1) * {step}, 0, 0 \
         FROM t",
        id_i = id("i"),
        id_prev = id("(i - 1)"),
        a = hex(&format!("i % {WALLETS}"), 12),
        b = hex(&format!("i % {}", WALLETS - 3), 12),
    );
    sqlx::query(&sql).execute(db.pool()).await?;
    Ok(())
}

const KIND_SQL: &str = "CASE WHEN i % 500 = 0 THEN 'reversal' WHEN i % 100 = 1 THEN 'deposit' \
     WHEN i % 100 = 2 THEN 'withdrawal' WHEN i % 100 = 3 THEN 'fee' ELSE 'p2p' END";
const DEBIT_SQL: &str = "CASE WHEN i % 500 = 0 THEN b WHEN i % 100 = 1 THEN 'sys:RU:settlement' ELSE a END";
const CREDIT_SQL: &str = "CASE WHEN i % 500 = 0 THEN a WHEN i % 100 = 2 THEN 'sys:RU:settlement' \
     WHEN i % 100 = 3 THEN 'sys:RU:fee_revenue' ELSE b END";
const LINKED_SQL: &str = "CASE WHEN i % 500 = 0 OR i % 100 = 3 THEN prev END";

/// Appends `count` audit entries (chained, with the head) in batches.
async fn insert_audit(db: &Database, count: i64, json: bool) -> Result<(), String> {
    const BATCH: i64 = 1_000;
    let bar = progress("audit entries", count as u64, json);
    let (mut seq, mut hash) = (0i64, GENESIS.to_owned());
    while seq < count {
        let drafts: Vec<Draft> = (seq + 1..=(seq + BATCH).min(count))
            .map(|n| Draft {
                at_ms: 1_764_000_000_000 + n,
                operator: "0190cccc-0000-7000-8000-000000000001".into(),
                action: if n % 2 == 0 { "freeze" } else { "unfreeze" }.into(),
                target: format!("0190aaaa-0000-7000-8000-{:012x}", n % WALLETS),
                request_id: Some(format!("0190dddd-0000-7000-8000-{n:012x}")),
                before: Some(r#"{"status":"active"}"#.into()),
                after: Some(r#"{"status":"frozen","reason":"bench"}"#.into()),
            })
            .collect();
        let (entries, head) = chain_all(&drafts, seq, &hash);
        let rows = (0..entries.len())
            .map(|row| format!("({})", courier_common::db::placeholders(row * 9 + 1, 9)))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "INSERT INTO audit_log (seq, at, operator, action, target, request_id, before_json, after_json, hash) \
             VALUES {rows}"
        );
        let mut query = sqlx::query(&sql);
        for entry in entries {
            query = courier_common::audit::bind_entry(query, entry);
        }
        let mut transaction = db.pool().begin().await.map_err(|e| e.to_string())?;
        query.execute(&mut *transaction).await.map_err(|e| e.to_string())?;
        sqlx::query(courier_common::audit::SET_HEAD_SQL)
            .bind(head.0)
            .bind(&head.1)
            .execute(&mut *transaction)
            .await
            .map_err(|e| e.to_string())?;
        transaction.commit().await.map_err(|e| e.to_string())?;
        bar.inc((head.0 - seq) as u64);
        (seq, hash) = head;
    }
    bar.finish_and_clear();
    Ok(())
}

/// Resident and peak resident memory of a process, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return (0, 0) };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

pub async fn run(bench: OpsBench) -> Result<(), String> {
    let scratch = tempfile::tempdir().map_err(|e| e.to_string())?;
    let url = bench.database_url.clone().unwrap_or_else(|| Database::sqlite_url(&scratch.path().join("courier.db")));
    let db = Database::connect(&url, 4).await.map_err(|e| e.to_string())?;
    // Yesterday in Moscow: the report's day, and the export's period.
    let now = jiff::Timestamp::now().as_millisecond();
    let day_start = (now + MOSCOW_OFFSET_MS).div_euclid(DAY_MS) * DAY_MS - MOSCOW_OFFSET_MS - DAY_MS;
    let date = jiff::Timestamp::from_millisecond(day_start + MOSCOW_OFFSET_MS)
        .map_err(|e| e.to_string())?
        .strftime("%Y-%m-%d")
        .to_string();
    let filling = Instant::now();
    if !bench.json {
        eprintln!("filling: {} transfers on {date} (Moscow), {} audit entries", bench.transfers, bench.audit_entries);
    }
    insert_transfers(&db, day_start, DAY_MS, bench.transfers).await.map_err(|e| e.to_string())?;
    insert_audit(&db, bench.audit_entries, bench.json).await?;
    if db.backend() == Backend::Postgres {
        sqlx::query("ANALYZE").execute(db.pool()).await.map_err(|e| e.to_string())?;
    }
    let fill_s = filling.elapsed().as_secs_f64();
    let (_, key) = operators::create(&db, "bench", Role::Viewer, None).await.map_err(|e| e.to_string())?;
    db.close().await;

    let (server, mut lines) = spawn_serve(scratch.path(), &["--database-url", &url, "--turn", "off"], None)?;
    let line = next_serve_line(&mut lines).await?;
    let base = line.strip_prefix("courier listening on ").ok_or("unexpected first line")?.to_owned();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let pid = server.id().ok_or("courier serve exited")?;
    let http = courier_common::client::http_client_builder().build().map_err(|e| e.to_string())?;
    let get = |path: String| http.get(format!("{base}{path}")).bearer_auth(&key).send();

    // The export of a tenth of the day (warming the server's allocator and
    // caches up), then of the whole day, each read as it streams: rows/s,
    // and the server's memory before, between and after.
    let export = |from_ms: i64, to_ms: i64| {
        let path = format!(
            "/admin/v1/exports/transfers.csv?from={}&to={}",
            courier_common::time::rfc3339(from_ms),
            courier_common::time::rfc3339(to_ms)
        );
        let request = get(path);
        async move {
            let mut response = request.await.map_err(|e| e.to_string())?;
            if !response.status().is_success() {
                return Err(format!("the export answered {}", response.status()));
            }
            let (mut bytes, mut lines) = (0u64, 0u64);
            while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
                bytes += chunk.len() as u64;
                lines += chunk.iter().filter(|b| **b == b'\n').count() as u64;
            }
            Ok::<(u64, u64), String>((bytes, lines))
        }
    };
    let (rss_start, peak_start) = memory_kib(pid);
    export(day_start, day_start + DAY_MS / 10).await?;
    let (rss_before, peak_before) = memory_kib(pid);
    let started = Instant::now();
    let (bytes, lines_seen) = export(day_start, day_start + DAY_MS).await?;
    let export_s = started.elapsed().as_secs_f64();
    let (rss_after, peak_after) = memory_kib(pid);
    // Every 1000th note spans two lines; one line is the header.
    let rows = lines_seen - 1 - (bench.transfers as u64 / 1_000);
    if rows != bench.transfers as u64 {
        return Err(format!("the export held {rows} rows, not {}", bench.transfers));
    }

    // The daily report of that day.
    let mut report_ms = Vec::new();
    let mut report = Value::Null;
    for _ in 0..bench.reports {
        let started = Instant::now();
        let response =
            get(format!("/admin/v1/reports/daily?region=RU&date={date}")).await.map_err(|e| e.to_string())?;
        report = response.json().await.map_err(|e| e.to_string())?;
        report_ms.push(started.elapsed().as_secs_f64() * 1_000.0);
    }
    if report["currencies"][0]["p2p"]["count"].as_i64().unwrap_or(0) == 0 {
        return Err(format!("the daily report found no transfers: {report}"));
    }
    report_ms.sort_by(f64::total_cmp);

    // The audit chain: verified by the server, and walked offline page by page.
    let started = Instant::now();
    let verdict: Value = get("/admin/v1/audit/verify".into())
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    let verify_s = started.elapsed().as_secs_f64();
    // The bench's operator was created (and audited) after the fill.
    let entries = bench.audit_entries + 1;
    if verdict["ok"] != Value::Bool(true) || verdict["entries"] != json!(entries) {
        return Err(format!("the audit chain does not verify: {verdict}"));
    }
    let started = Instant::now();
    let mut walk = ChainWalk::new(&[]);
    let mut cursor: Option<String> = None;
    loop {
        let mut path = "/admin/v1/audit?limit=200".to_owned();
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let page: Value = get(path).await.map_err(|e| e.to_string())?.json().await.map_err(|e| e.to_string())?;
        for item in page["items"].as_array().map(Vec::as_slice).unwrap_or_default() {
            walk.feed(courier_common::checkpoint::listed_entry(item)?);
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let walk = walk.finish();
    let walk_s = started.elapsed().as_secs_f64();
    if !walk.faults.is_empty() || walk.entries != entries {
        return Err(format!("the offline walk found {:?} over {} entries", walk.faults.first(), walk.entries));
    }
    drop(server);

    let figures = json!({
        "database": if url.starts_with("sqlite") { "sqlite" } else { "postgres" },
        "transfers": bench.transfers,
        "audit_entries": bench.audit_entries,
        "fill_s": (fill_s * 10.0).round() / 10.0,
        "export_rows_per_s": (rows as f64 / export_s).round(),
        "export_mb": (bytes as f64 / 1e6 * 10.0).round() / 10.0,
        "export_s": (export_s * 100.0).round() / 100.0,
        "server_rss_kib_at_start": rss_start,
        "server_peak_rss_kib_at_start": peak_start,
        "server_rss_kib_before_export": rss_before,
        "server_rss_kib_after_export": rss_after,
        "server_peak_rss_kib_before_export": peak_before,
        "server_peak_rss_kib_after_export": peak_after,
        "daily_report_ms_min": (report_ms[0] * 10.0).round() / 10.0,
        "daily_report_ms_max": (report_ms[report_ms.len() - 1] * 10.0).round() / 10.0,
        "audit_verify_entries_per_s": (entries as f64 / verify_s).round(),
        "audit_walk_offline_entries_per_s": (entries as f64 / walk_s).round(),
    });
    if bench.json {
        println!("{figures}");
    } else {
        for (name, value) in figures.as_object().expect("built as an object") {
            println!("{name:<36} {value}");
        }
    }
    Ok(())
}
