//! What the finance team reads, end to end on both databases: the daily
//! report against sums the test makes from the rows itself, across the
//! UTC midnight inside a region's local day; reconciliation under 64
//! sending clients and with a balance corrupted on purpose; the CSV export
//! of 100k transfers read back and the server's memory beside it; signed
//! audit checkpoints against a consistent rewrite and across a key
//! rotation; and the retention of call records. The CLI runs as the real
//! binary throughout.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};
use sqlx::Connection;

use crate::finance_ops::{Desk, admin, admin_json, decide, key, operator, propose};
use crate::support::{Db, error_code};

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
/// Moscow is UTC+3 all year (no daylight saving since 2014); São Paulo is
/// UTC−3 (none since 2019). Written here by hand, not taken from the server.
const MOSCOW_OFFSET_MS: i64 = 3 * HOUR_MS;
const SAO_PAULO_OFFSET_MS: i64 = -3 * HOUR_MS;

async fn connect(url: &str) -> sqlx::AnyConnection {
    sqlx::any::install_default_drivers();
    sqlx::AnyConnection::connect(url).await.unwrap()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// The local date (days since the epoch) of `at_ms`, and its first moment in UTC.
fn local_day_start(at_ms: i64, offset_ms: i64) -> i64 {
    (at_ms + offset_ms).div_euclid(DAY_MS) * DAY_MS - offset_ms
}

fn date_text(day_start_ms: i64, offset_ms: i64) -> String {
    let at = jiff::Timestamp::from_millisecond(day_start_ms + offset_ms).unwrap();
    at.strftime("%Y-%m-%d").to_string()
}

/// Minor units as the API writes two-decimal amounts.
fn money(minor: i64) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    format!("{sign}{}.{:02}", minor.abs() / 100, minor.abs() % 100)
}

#[derive(Debug)]
struct Row {
    kind: String,
    debit: String,
    credit: String,
    amount: i64,
    region: String,
    created_at: i64,
}

async fn transfer_rows(url: &str) -> Vec<Row> {
    let mut connection = connect(url).await;
    let rows: Vec<(String, String, String, i64, String, i64)> =
        sqlx::query_as("SELECT kind, debit_account, credit_account, amount, region, created_at FROM transfers")
            .fetch_all(&mut connection)
            .await
            .unwrap();
    rows.into_iter()
        .map(|(kind, debit, credit, amount, region, created_at)| Row {
            kind,
            debit,
            credit,
            amount,
            region,
            created_at,
        })
        .collect()
}

fn is_wallet(account: &str) -> bool {
    !account.starts_with("sys:")
}

/// The day's report as this test computes it from the rows.
fn expected_day(rows: &[Row], holds: &[(i64, i64, Option<i64>, String)], region: &str, from: i64, to: i64) -> Value {
    let mut tallies: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    let mut senders = BTreeSet::new();
    let (mut opening, mut closing) = (0i64, 0i64);
    for row in rows.iter().filter(|row| row.region == region) {
        let into_wallets = match (is_wallet(&row.debit), is_wallet(&row.credit)) {
            (false, true) => row.amount,
            (true, false) => -row.amount,
            _ => 0,
        };
        if row.created_at < from {
            opening += into_wallets;
        }
        if row.created_at < to {
            closing += into_wallets;
        }
        if row.created_at < from || row.created_at >= to {
            continue;
        }
        let name = match (row.kind.as_str(), is_wallet(&row.debit)) {
            ("p2p", _) => {
                senders.insert(row.debit.clone());
                "p2p"
            }
            ("fee", false) => "fee_refunds",
            ("fee", true) => "fees",
            ("deposit", _) => "deposits",
            ("withdrawal", _) => "withdrawals",
            ("reversal", _) => "reversals",
            ("adjustment", false) => "adjustments_credited",
            ("adjustment", true) => "adjustments_debited",
            (other, _) => panic!("a transfer of kind {other}"),
        };
        let tally = tallies.entry(name).or_default();
        tally.0 += 1;
        tally.1 += row.amount;
    }
    for (placed_at, amount, returned_at, status) in holds {
        if (from..to).contains(placed_at) {
            let tally = tallies.entry("holds_placed").or_default();
            tally.0 += 1;
            tally.1 += amount;
        }
        if status == "returned" && returned_at.is_some_and(|at| (from..to).contains(&at)) {
            let tally = tallies.entry("holds_returned").or_default();
            tally.0 += 1;
            tally.1 += amount;
        }
    }
    let mut day = json!({
        "opening_wallets": money(opening),
        "closing_wallets": money(closing),
        "distinct_senders": senders.len(),
    });
    for name in [
        "p2p",
        "fees",
        "fee_refunds",
        "deposits",
        "withdrawals",
        "reversals",
        "adjustments_credited",
        "adjustments_debited",
        "holds_placed",
        "holds_returned",
    ] {
        let (count, volume) = tallies.get(name).copied().unwrap_or_default();
        day[name] = json!({"count": count, "volume": money(volume)});
    }
    day
}

async fn report(d: &Desk, query: &str) -> (u16, Value) {
    d.server.get(&format!("/admin/v1/reports/daily?{query}"), Some(&d.admin)).await
}

/// The report's one currency, without the currency's name.
fn only_currency(report: &Value, currency: &str) -> Value {
    let currencies = report["currencies"].as_array().unwrap();
    assert_eq!(currencies.len(), 1, "{report}");
    assert_eq!(currencies[0]["currency"], currency);
    let mut day = currencies[0].clone();
    day.as_object_mut().unwrap().remove("currency");
    day
}

/// What a read-only request must leave as it was.
async fn ledger_state(d: &Desk) -> Value {
    let (_, reconciliation) = d.server.get("/admin/v1/reconciliation", Some(&d.admin)).await;
    let (_, verdict) = d.server.get("/admin/v1/audit/verify", Some(&d.admin)).await;
    json!({"transfers": d.server.sql_i64("SELECT COUNT(*) FROM transfers").await, "reconciliation": reconciliation,
           "audit": verdict})
}

async fn the_daily_report_adds_up_to_the_rows_across_utc_midnight(db: Db) {
    let d = Desk::open_with(db, &["--sign-in-codes-per-addr-per-hour-max", "0"]).await;
    // Every RU transfer pays 0.5 % from the first kopeck.
    d.server.sql("UPDATE regions SET fee_free_monthly = 0 WHERE code = 'RU'").await;
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let carol = d.server.sign_in("+79160001122", "phone").await;
    let (alice, bob) = (&d.alice, &d.bob);
    let early = d.deposit(&alice.account_id, "5000.00", "RUB").await;
    let late = d.deposit(&alice.account_id, "700.00", "RUB").await;
    d.deposit(&bob.account_id, "300.00", "RUB").await;
    let paid = d.send(alice, bob, "1000.00").await;
    d.send(alice, &carol, "200.00").await;
    d.send(bob, &carol, "50.00").await;
    let body = json!({"account_id": bob.account_id, "amount": "120.00", "currency": "RUB", "external_ref": "out-1"});
    let (status, _, _) = d.server.post_keyed("/admin/v1/withdrawals", &d.admin, &key(), body).await;
    assert_eq!(status, 201);
    let paid_id = paid["transfer_id"].as_str().unwrap();
    let (status, _, _) = d.reverse(paid_id, &key(), json!({"reason": "claim 1", "amount": "100.00"})).await;
    assert_eq!(status, 201);
    let petra = operator(&d, "Petra", "approver").await;
    for amount in ["25.00", "-10.00"] {
        let (status, proposed) = propose(&d, &d.admin, &carol.account_id, amount).await;
        assert_eq!(status, 201, "{proposed}");
        let (status, _, _) = decide(&d, &petra, proposed["adjustment_id"].as_str().unwrap(), "approve", &key()).await;
        assert_eq!(status, 200);
    }
    let hold = json!({"amount": "40.00", "currency": "RUB", "reason": "MED claim", "transfer_id": paid_id});
    let (status, placed) =
        d.server.post(&format!("/admin/v1/accounts/{}/holds", bob.account_id), Some(&d.admin), hold).await;
    assert_eq!(status, 201, "{placed}");
    let path = format!("/admin/v1/holds/{}/return", placed["hold_id"].as_str().unwrap());
    let (status, returned, _) = d.server.post_keyed(&path, &d.admin, &key(), json!({})).await;
    assert_eq!(status, 200, "{returned}");
    let other = json!({"amount": "5.00", "currency": "RUB", "reason": "MED claim 2"});
    let (status, _) =
        d.server.post(&format!("/admin/v1/accounts/{}/holds", carol.account_id), Some(&d.admin), other).await;
    assert_eq!(status, 201);

    // Today in Moscow began at 21:00 UTC the day before. The first deposit
    // moves to 20:30 UTC (the local day before), the second to 21:30 UTC
    // (this local day, still yesterday in UTC).
    let start = local_day_start(now_ms(), MOSCOW_OFFSET_MS);
    let end = start + DAY_MS;
    for (transfer, at) in [(&early, start - 30 * 60_000), (&late, start + 30 * 60_000)] {
        let id = transfer["transfer_id"].as_str().unwrap();
        d.server.sql(&format!("UPDATE transfers SET created_at = {at} WHERE id = '{id}'")).await;
    }
    let rows = transfer_rows(&d.server.database_url).await;
    let holds: Vec<(i64, i64, Option<i64>, String)> = {
        let mut connection = connect(&d.server.database_url).await;
        sqlx::query_as("SELECT placed_at, amount, decided_at, status FROM holds WHERE region = 'RU'")
            .fetch_all(&mut connection)
            .await
            .unwrap()
    };
    let today = date_text(start, MOSCOW_OFFSET_MS);
    let yesterday = date_text(start - DAY_MS, MOSCOW_OFFSET_MS);

    let (status, got) = report(&d, &format!("region=RU&date={today}")).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(
        (&got["region"], &got["date"], &got["time_zone"]),
        (&json!("RU"), &json!(today), &json!("Europe/Moscow"))
    );
    assert_eq!(got["from"], courier_common::time::rfc3339(start));
    assert!(got["from"].as_str().unwrap().ends_with("T21:00:00.000Z"), "{got}");
    let expected = expected_day(&rows, &holds, "RU", start, end);
    assert_eq!(only_currency(&got, "RUB"), expected);
    // Spot checks of what the rows hold, so that the sums are not vacuous.
    assert_eq!(expected["deposits"], json!({"count": 2, "volume": "1000.00"}), "700.00 today + 300.00");
    assert_eq!(expected["p2p"]["count"], 3);
    assert_eq!(expected["distinct_senders"], 2);
    assert_eq!(expected["opening_wallets"], "5000.00", "yesterday's deposit");
    assert_eq!(expected["adjustments_credited"], json!({"count": 1, "volume": "25.00"}));
    assert_eq!(expected["holds_returned"], json!({"count": 1, "volume": "40.00"}));
    assert_eq!(expected["fee_refunds"]["count"], 2, "the reversal's and the returned hold's shares of the fee");

    let (status, got) = report(&d, &format!("region=RU&date={yesterday}")).await;
    assert_eq!(status, 200, "{got}");
    let expected = expected_day(&rows, &holds, "RU", start - DAY_MS, start);
    assert_eq!(only_currency(&got, "RUB"), expected);
    assert_eq!(expected["deposits"], json!({"count": 1, "volume": "5000.00"}));
    assert_eq!(expected["closing_wallets"], "5000.00");

    // Brazil's day runs 03:00 to 03:00 UTC: a deposit at 02:00 UTC belongs
    // to the local day before.
    let bruno = d.server.sign_in("+5511912345678", "phone").await;
    let br = d.deposit(&bruno.account_id, "80.00", "BRL").await;
    let br_start = local_day_start(now_ms(), SAO_PAULO_OFFSET_MS);
    let at = br_start - HOUR_MS;
    d.server
        .sql(&format!("UPDATE transfers SET created_at = {at} WHERE id = '{}'", br["transfer_id"].as_str().unwrap()))
        .await;
    let rows = transfer_rows(&d.server.database_url).await;
    for (day_start, deposits) in [(br_start - DAY_MS, 1), (br_start, 0)] {
        let (status, got) = report(&d, &format!("region=BR&date={}", date_text(day_start, SAO_PAULO_OFFSET_MS))).await;
        assert_eq!(status, 200, "{got}");
        let expected = expected_day(&rows, &[], "BR", day_start, day_start + DAY_MS);
        assert_eq!(expected["deposits"]["count"], deposits);
        assert_eq!(only_currency(&got, "BRL"), expected);
    }

    // The CLI prints the same report.
    let printed = admin_json(&d, &["report", "daily", "--region", "RU", "--date", &today]);
    assert_eq!(printed, report(&d, &format!("region=RU&date={today}")).await.1);
    // Piped into a reader that stops at once, the CLI ends quietly.
    let mut child = std::process::Command::new(crate::support::courier_bin())
        .args(["admin", "report", "daily", "--region", "RU", "--url", &d.server.url])
        .env("COURIER_ADMIN_KEY", &d.admin)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    let (ok, table, _) = admin(&d, &["report", "daily", "--region", "RU", "--date", &today]);
    assert!(ok && table.contains("adjustments_credited") && table.contains("opening wallets   5000.00 RUB"), "{table}");

    // Refusals change nothing.
    let before = ledger_state(&d).await;
    for (query, status, code) in [
        ("region=XX&date=2026-12-06", 404, "not_found"),
        ("region=US", 404, "not_found"),
        ("region=RU&date=2026-02-30", 400, "invalid_request"),
        ("region=RU&date=yesterday", 400, "invalid_request"),
        ("region=RU&date=2026-12-6", 400, "invalid_request"),
        ("date=2026-12-06", 400, "invalid_request"),
    ] {
        let (got, body) = report(&d, query).await;
        assert_eq!((got, error_code(&body)), (status, code), "{query}: {body}");
    }
    let (ok, _, stderr) = admin(&d, &["report", "daily", "--region", "XX"]);
    assert!(!ok && stderr.contains("not_found"), "{stderr}");
    assert_eq!(ledger_state(&d).await, before);
    d.server.finish().await;
}

async fn reconciliation_holds_under_load_and_lists_a_corrupted_balance(db: Db) {
    const CLIENTS: usize = 64;
    const EACH: usize = 8;
    let d = Desk::open_with(db, &["--sign-in-codes-per-addr-per-hour-max", "0"]).await;
    let users = d.server.sign_in_many(CLIENTS).await;
    for user in &users {
        d.deposit(&user.account_id, "1000.00", "RUB").await;
    }
    let server = &d.server;
    let senders = futures::future::join_all(users.iter().enumerate().map(|(n, from)| {
        let to = &users[(n + 1) % CLIENTS];
        async move {
            for _ in 0..EACH {
                let body = json!({"to": {"account_id": to.account_id}, "amount": "1.25", "currency": "RUB"});
                let (status, body, _) = server.post_keyed("/v1/transfers", &from.access_token, &key(), body).await;
                assert_eq!(status, 201, "{body}");
            }
        }
    }));
    let checks = async {
        let mut seen = 0;
        for _ in 0..20 {
            let (status, found) = d.server.get("/admin/v1/reconciliation", Some(&d.admin)).await;
            assert_eq!(status, 200);
            assert_eq!(found["balanced"], true, "while 64 clients send: {found}");
            assert!(found["trial_balance"].as_array().unwrap().iter().all(|t| t["total"] == "0.00"), "{found}");
            seen += 1;
        }
        seen
    };
    let (_, seen) = futures::join!(senders, checks);
    assert_eq!(seen, 20);
    assert_eq!(d.server.sql_i64("SELECT COUNT(*) FROM transfers WHERE kind = 'p2p'").await, (CLIENTS * EACH) as i64);

    // A balance changed behind the ledger's back is listed with both values.
    let victim = &users[7].account_id;
    d.server.sql(&format!("UPDATE ledger_accounts SET balance = balance + 100 WHERE id = '{victim}'")).await;
    let (_, found) = d.server.get("/admin/v1/reconciliation", Some(&d.admin)).await;
    assert_eq!(found["balanced"], false);
    assert_eq!(found["mismatches"], json!([{"account_id": victim, "stored": "1001.00", "computed": "1000.00"}]));
    let rub = found["trial_balance"].as_array().unwrap().iter().find(|t| t["currency"] == "RUB").cloned();
    assert_eq!(rub, Some(json!({"currency": "RUB", "total": "1.00"})));
    let (ok, stdout, stderr) = admin(&d, &["reconcile"]);
    assert!(!ok && stdout.contains(victim) && stdout.contains("1001.00"), "{stdout}\n{stderr}");
    d.server.finish().await;
}

/// Resident and peak resident memory of a process, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

async fn the_csv_export_streams_100k_transfers_in_flat_memory(db: Db) {
    const COUNT: i64 = 100_000;
    let d = Desk::open(db).await;
    let base_ms = local_day_start(now_ms(), 0) - 3 * DAY_MS;
    let database = courier_common::Database::connect(&d.server.database_url, 1).await.unwrap();
    courier_bench::ops::insert_transfers(&database, base_ms, COUNT, COUNT).await.unwrap();
    database.close().await;
    let from = courier_common::time::rfc3339(base_ms);
    let to = courier_common::time::rfc3339(base_ms + DAY_MS);

    // A first export of a tenth of the rows warms the server's allocator,
    // HTTP buffers and statement caches up (their first use costs 10-15 MB
    // once, whatever comes after: BENCHMARKS.md).
    let tenth = courier_common::time::rfc3339(base_ms + COUNT / 10);
    let (status, warm) =
        d.server.get(&format!("/admin/v1/exports/transfers.csv?from={from}&to={tenth}"), Some(&d.admin)).await;
    assert_eq!(status, 200);
    assert!(warm.as_str().is_some_and(|csv| csv.len() > 1_000_000), "a tenth of the rows");
    let pid = d.server.pid();
    let (_, peak_before) = memory_kib(pid);
    let file = d.server.dir.path().join("transfers.csv");
    let summary =
        admin_json(&d, &["export", "--from", &from, "--to", &to, "--region", "RU", "-o", file.to_str().unwrap()]);
    let (rss_after, peak_after) = memory_kib(pid);
    assert_eq!(summary["rows"], COUNT, "{summary}");
    let mut reader = csv::Reader::from_path(&file).unwrap();
    assert_eq!(reader.headers().unwrap().iter().collect::<Vec<_>>(), courier_payments::api::EXPORT_COLUMNS.to_vec());
    let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(records.len() as i64, COUNT);

    // The same rows as the database holds, in the order of their ids.
    let mut connection = connect(&d.server.database_url).await;
    type Stored = (String, String, i64, String, String, Option<String>, Option<String>, i64);
    let stored: Vec<Stored> = sqlx::query_as(
        "SELECT id, kind, amount, debit_account, credit_account, linked_id, note, created_at FROM transfers \
         WHERE created_at >= $1 AND created_at < $2 ORDER BY id",
    )
    .bind(base_ms)
    .bind(base_ms + DAY_MS)
    .fetch_all(&mut connection)
    .await
    .unwrap();
    assert_eq!(stored.len() as i64, COUNT);
    for (record, (id, kind, amount, debit, credit, linked, note, created_at)) in records.iter().zip(&stored) {
        let expected = [
            id.as_str(),
            &courier_common::time::rfc3339(*created_at),
            kind,
            "RU",
            "RUB",
            &money(*amount),
            "0.00",
            debit,
            credit,
            if kind == "reversal" { linked.as_deref().unwrap_or("") } else { "" },
            if kind == "fee" { linked.as_deref().unwrap_or("") } else { "" },
            "bench",
            "",
            note.as_deref().unwrap_or(""),
        ];
        assert_eq!(record.iter().collect::<Vec<_>>(), expected.to_vec());
    }
    assert_eq!(records[499].get(9), records.get(498).and_then(|r| r.get(0)), "a reversal names its original");
    assert_eq!(records[999].get(13), Some("rent, \"march\"\npaid"));

    // A buffered export of 100k rows holds every row (about 40 MB as
    // structs, 25 MB as CSV); a streamed one, a page.
    let grown = peak_after.saturating_sub(peak_before);
    eprintln!("export of {COUNT}: peak RSS {peak_before} -> {peak_after} KiB, RSS after {rss_after} KiB");
    assert!(grown < 16 * 1024, "the server's peak memory grew by {grown} KiB during the export");

    // Four exports stream at once; a fifth is refused until one ends.
    let url = format!("{}/admin/v1/exports/transfers.csv?from={from}&to={to}", d.server.url);
    let mut streaming = Vec::new();
    for _ in 0..courier_payments::api::EXPORTS_AT_ONCE_MAX {
        let response = d.server.http.get(&url).bearer_auth(&d.admin).send().await.unwrap();
        assert_eq!(response.status(), 200);
        streaming.push(response);
    }
    let (status, body) = d.server.get(&url[d.server.url.len()..], Some(&d.admin)).await;
    assert_eq!((status, error_code(&body)), (503, "overloaded"), "{body}");
    drop(streaming);
    let mut answered = 0;
    for _ in 0..100 {
        let response = d.server.http.get(&url).bearer_auth(&d.admin).send().await.unwrap();
        answered = response.status().as_u16();
        if answered == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(answered, 200, "an export ended by its client frees its place");

    // Refusals change nothing.
    let before = ledger_state(&d).await;
    for (query, code) in [
        (format!("from={to}&to={from}"), "invalid_range"),
        ("from=2025-01-01T00:00:00Z&to=2026-01-03T00:00:00Z".to_owned(), "invalid_range"),
        (format!("from=yesterday&to={to}"), "invalid_request"),
        (format!("from={from}"), "invalid_request"),
        (format!("from={from}&to={to}&region=XX"), "invalid_request"),
    ] {
        let (status, body) = d.server.get(&format!("/admin/v1/exports/transfers.csv?{query}"), Some(&d.admin)).await;
        assert_eq!((status, error_code(&body)), (400, code), "{query}: {body}");
    }
    let refused = d.server.dir.path().join("refused.csv");
    let (ok, _, stderr) = admin(&d, &["export", "--from", &to, "--to", &from, "-o", refused.to_str().unwrap()]);
    assert!(!ok && stderr.contains("invalid_range") && !refused.exists(), "{stderr}");
    assert_eq!(ledger_state(&d).await, before);
    d.server.finish().await;
}

/// Polls until the server lists a checkpoint of at least entry `seq`.
async fn checkpoint_of(d: &Desk, seq: i64) -> Value {
    for _ in 0..100 {
        let (status, page) = d.server.get("/admin/v1/audit/checkpoints?limit=1", Some(&d.admin)).await;
        assert_eq!(status, 200, "{page}");
        if let Some(newest) = page["items"].get(0)
            && newest["seq"].as_i64().unwrap() >= seq
        {
            return newest.clone();
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("no checkpoint of entry {seq} within 10 s");
}

fn verify(d: &Desk, extra: &[&str]) -> (bool, String) {
    let mut args = vec!["audit", "verify"];
    args.extend(extra);
    let (ok, stdout, stderr) = admin(d, &args);
    (ok, format!("{stdout}\n{stderr}"))
}

async fn signed_checkpoints_expose_a_rewritten_chain_and_outlive_their_key(db: Db) {
    let mut d = Desk::open_with(db, &["--audit-checkpoint-every", "3"]).await;
    for n in 0..5 {
        operator(&d, &format!("Op{n}"), "viewer").await;
    }
    let newest = checkpoint_of(&d, 6).await;
    let dir = d.server.dir.path().to_owned();
    let kept = dir.join("kept-checkpoint.json");
    let keys = dir.join("audit-keys.json");
    let saved = admin_json(&d, &["audit", "checkpoint", "-o", kept.to_str().unwrap()]);
    assert_eq!(saved, newest);
    let published = admin_json(&d, &["audit", "keys", "-o", keys.to_str().unwrap()]);
    assert_eq!(published["keys"].as_array().unwrap().len(), 1, "{published}");
    let (ok, said) = verify(&d, &["--checkpoint", kept.to_str().unwrap(), "--keys", keys.to_str().unwrap()]);
    assert!(ok, "{said}");
    let summary = admin_json(&d, &["audit", "verify", "--checkpoint", kept.to_str().unwrap()]);
    assert_eq!((&summary["ok"], &summary["entries"]), (&json!(true), &json!(6)), "{summary}");

    // A checkpoint file changed by hand, or signed by a key nobody published.
    let mut tampered = newest.clone();
    tampered["head"] = json!("0".repeat(64));
    let tampered_file = dir.join("tampered.json");
    std::fs::write(&tampered_file, tampered.to_string()).unwrap();
    let (ok, said) = verify(&d, &["--checkpoint", tampered_file.to_str().unwrap()]);
    assert!(!ok && said.contains("does not carry a valid signature"), "{said}");
    let stranger = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let at = newest["at"].as_str().unwrap();
    let statement = courier_common::checkpoint::statement(6, newest["head"].as_str().unwrap(), at);
    let forged = json!({
        "seq": 6, "head": newest["head"], "at": at,
        "key_id": courier_common::checkpoint::key_id(&stranger.verifying_key().to_bytes()),
        "signature": base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD,
            ed25519_dalek::Signer::sign(&stranger, &statement).to_bytes()),
    });
    let forged_file = dir.join("forged.json");
    std::fs::write(&forged_file, forged.to_string()).unwrap();
    let (ok, said) = verify(&d, &["--checkpoint", forged_file.to_str().unwrap()]);
    assert!(!ok && said.contains("not among the trusted audit keys"), "{said}");

    // Rotation: a new key signs from now on; the old one stays published,
    // and what it signed still verifies.
    let new_key = dir.join("audit-key-2.pem");
    d.server.restart_with(&["--audit-checkpoint-every", "3", "--audit-key-file", new_key.to_str().unwrap()]).await;
    for n in 5..8 {
        operator(&d, &format!("Op{n}"), "viewer").await;
    }
    let rotated = checkpoint_of(&d, 9).await;
    assert_ne!(rotated["key_id"], newest["key_id"]);
    let (_, published) = d.server.get("/admin/v1/audit/keys", Some(&d.admin)).await;
    let ids: BTreeSet<&str> =
        published["keys"].as_array().unwrap().iter().map(|k| k["key_id"].as_str().unwrap()).collect();
    assert_eq!(ids, BTreeSet::from([newest["key_id"].as_str().unwrap(), rotated["key_id"].as_str().unwrap()]));
    let (ok, said) = verify(&d, &["--checkpoint", kept.to_str().unwrap()]);
    assert!(ok, "a checkpoint of the rotated-out key, with the published keys: {said}");
    let (ok, said) = verify(&d, &["--checkpoint", kept.to_str().unwrap(), "--keys", keys.to_str().unwrap()]);
    assert!(!ok && said.contains("not among the trusted audit keys"), "the old key file lacks the new key: {said}");

    // Whoever controls the database rewrites the whole chain consistently
    // (entry 2 names another operator), fixes the head and removes the
    // signed checkpoints: the chain alone verifies, the kept checkpoint
    // does not.
    let drop_triggers: &[&str] = match db {
        Db::Postgres => &["DROP TRIGGER audit_log_append_only ON audit_log"],
        Db::Sqlite => &["DROP TRIGGER audit_log_no_update", "DROP TRIGGER audit_log_no_delete"],
    };
    for statement in drop_triggers {
        d.server.sql(statement).await;
    }
    let mut connection = connect(&d.server.database_url).await;
    let rows: Vec<courier_common::audit::EntryRow> =
        sqlx::query_as(&format!("SELECT {} FROM audit_log ORDER BY seq", courier_common::audit::ENTRY_COLUMNS))
            .fetch_all(&mut connection)
            .await
            .unwrap();
    let mut drafts: Vec<courier_common::audit::Draft> =
        rows.into_iter().map(courier_common::audit::entry_from_row).map(|e| e.draft()).collect();
    drafts[1].after = drafts[1].after.as_ref().map(|after| after.replace("Op0", "Eve"));
    let (rewritten, (head_seq, head_hash)) =
        courier_common::audit::chain_all(&drafts, 0, courier_common::audit::GENESIS);
    for entry in &rewritten {
        sqlx::query("UPDATE audit_log SET after_json = $1, hash = $2 WHERE seq = $3")
            .bind(&entry.after)
            .bind(&entry.hash)
            .bind(entry.seq)
            .execute(&mut connection)
            .await
            .unwrap();
    }
    sqlx::query("UPDATE audit_head SET seq = $1, hash = $2")
        .bind(head_seq)
        .bind(&head_hash)
        .execute(&mut connection)
        .await
        .unwrap();
    sqlx::query("DELETE FROM audit_checkpoints").execute(&mut connection).await.unwrap();
    let (_, verdict) = d.server.get("/admin/v1/audit/verify", Some(&d.admin)).await;
    assert_eq!(verdict["ok"], true, "the rewritten chain is consistent: {verdict}");
    let (ok, said) = verify(&d, &[]);
    assert!(ok, "without a kept checkpoint nothing shows the rewrite: {said}");
    let (ok, said) = verify(&d, &["--checkpoint", kept.to_str().unwrap()]);
    assert!(!ok && said.contains("entry 6's hash differs from the checkpoint"), "{said}");
    d.server.finish().await;
}

async fn call_records_past_their_retention_are_deleted_and_audited(db: Db) {
    let mut d =
        Desk::open_with(db, &["--call-records-retention-days", "30", "--call-records-purge-interval-s", "1"]).await;
    let (alice, bob) = (d.alice.account_id.clone(), d.bob.account_id.clone());
    let now = now_ms();
    let cutoff = now - 30 * DAY_MS;
    for (id, started_at) in [("old", cutoff - 60_000), ("older", cutoff - 10 * DAY_MS), ("recent", cutoff + 60_000)] {
        d.server
            .sql(&format!(
                "INSERT INTO calls (id, caller_id, callee_id, caller_device, ice_policy, started_at, ended_at, end_reason) \
                 VALUES ('{id}', '{alice}', '{bob}', 'd', 'all', {started_at}, {}, 'hangup')",
                started_at + 60_000
            ))
            .await;
        d.server
            .sql(&format!("INSERT INTO call_reports (call_id, account_id, rating) VALUES ('{id}', '{alice}', 5)"))
            .await;
    }
    let mut purged = Vec::new();
    for _ in 0..50 {
        let (_, page) = d.server.get("/admin/v1/audit?action=call_records_purge&limit=200", Some(&d.admin)).await;
        purged = page["items"].as_array().unwrap().clone();
        if !purged.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let first = purged.last().expect("a retention run within 5 s");
    assert_eq!((&first["operator"], &first["target"]), (&json!("system"), &json!("calls")));
    let after: Value = serde_json::from_str(first["after"].as_str().unwrap()).unwrap();
    assert_eq!((&after["deleted_calls"], &after["retention_days"]), (&json!(2), &json!(30)), "{after}");
    let mut connection = connect(&d.server.database_url).await;
    let left: Vec<(String,)> =
        sqlx::query_as("SELECT id FROM calls ORDER BY id").fetch_all(&mut connection).await.unwrap();
    assert_eq!(left, vec![("recent".to_owned(),)]);
    let reports: Vec<(String,)> =
        sqlx::query_as("SELECT call_id FROM call_reports").fetch_all(&mut connection).await.unwrap();
    assert_eq!(reports, vec![("recent".to_owned(),)]);
    let (_, verdict) = d.server.get("/admin/v1/audit/verify", Some(&d.admin)).await;
    assert_eq!(verdict["ok"], true);

    // 0 keeps them forever: no run, nothing deleted.
    d.server.restart_with(&["--call-records-retention-days", "0", "--call-records-purge-interval-s", "1"]).await;
    d.server
        .sql(&format!(
            "INSERT INTO calls (id, caller_id, callee_id, caller_device, ice_policy, started_at, ended_at, end_reason) \
             VALUES ('ancient', '{alice}', '{bob}', 'd', 'all', 1000, 2000, 'hangup')"
        ))
        .await;
    let runs = || async {
        let (_, page) = d.server.get("/admin/v1/audit?action=call_records_purge&limit=200", Some(&d.admin)).await;
        page["items"].as_array().unwrap().len()
    };
    let before = runs().await;
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    assert_eq!(runs().await, before, "no run after the restart");
    assert_eq!(d.server.sql_i64("SELECT COUNT(*) FROM calls WHERE id = 'ancient'").await, 1);
    d.server.finish().await;
}

on_both_databases!(
    the_daily_report_adds_up_to_the_rows_across_utc_midnight,
    reconciliation_holds_under_load_and_lists_a_corrupted_balance,
    the_csv_export_streams_100k_transfers_in_flat_memory,
    signed_checkpoints_expose_a_rewritten_chain_and_outlive_their_key,
    call_records_past_their_retention_are_deleted_and_audited,
);
