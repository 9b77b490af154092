//! `courier admin report daily`, `courier admin export`, and the offline
//! audit verification: `courier admin audit verify [--checkpoint FILE]
//! [--keys FILE]` and `courier admin audit checkpoint -o FILE`.

use std::io::Write;
use std::path::{Path, PathBuf};

use courier_common::checkpoint::{AuditKey, AuditKeys, ChainWalk, Checkpoint};
use serde_json::Value;

use super::{ApiClient, encode, print_object};

/// The daily report as tables: one row per currency for each kind of movement.
pub async fn daily_report(client: &ApiClient, region: &str, date: Option<&str>, json: bool) -> Result<(), String> {
    let mut path = format!("/admin/v1/reports/daily?region={}", encode(region));
    if let Some(date) = date {
        path.push_str(&format!("&date={}", encode(date)));
    }
    let report = client.send(reqwest::Method::GET, &path, None).await?;
    if json {
        println!("{report}");
        return Ok(());
    }
    println!(
        "{} {} ({}: {} to {})",
        report["region"].as_str().unwrap_or(""),
        report["date"].as_str().unwrap_or(""),
        report["time_zone"].as_str().unwrap_or(""),
        report["from"].as_str().unwrap_or(""),
        report["to"].as_str().unwrap_or("")
    );
    const TALLIES: [&str; 10] = [
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
    ];
    for day in report["currencies"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let currency = day["currency"].as_str().unwrap_or("");
        println!();
        let rows: Vec<Value> = TALLIES
            .iter()
            .map(|name| {
                serde_json::json!({"movement": name, "count": day[*name]["count"], "volume": day[*name]["volume"],
                    "currency": currency})
            })
            .collect();
        courier_common::client::print_table(&["movement", "count", "volume", "currency"], &rows);
        println!();
        println!("opening wallets   {} {currency}", day["opening_wallets"].as_str().unwrap_or(""));
        println!("closing wallets   {} {currency}", day["closing_wallets"].as_str().unwrap_or(""));
        println!("distinct senders  {}", day["distinct_senders"]);
    }
    Ok(())
}

/// Streams the CSV export into `output` (through a temporary file beside
/// it, renamed when complete), with a progress bar over the period.
pub async fn export(
    client: &ApiClient,
    from: &str,
    to: &str,
    region: Option<&str>,
    output: &Path,
    json: bool,
) -> Result<(), String> {
    let from_at: jiff::Timestamp = from.parse().map_err(|_| "--from must be an RFC 3339 time")?;
    let to_at: jiff::Timestamp = to.parse().map_err(|_| "--to must be an RFC 3339 time")?;
    let mut path = format!("/admin/v1/exports/transfers.csv?from={}&to={}", encode(from), encode(to));
    if let Some(region) = region {
        path.push_str(&format!("&region={}", encode(region)));
    }
    let mut response = client.get_raw(&path).await?;
    let partial = output.with_extension("csv.partial");
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(&partial).map_err(|error| format!("cannot write {}: {error}", partial.display()))?,
    );
    let span_ms = (to_at.as_millisecond() - from_at.as_millisecond()).max(1) as u64;
    let bar = indicatif::ProgressBar::new(span_ms);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {percent:>3}% of the period  {msg}  {elapsed}")
            .map_err(|error| error.to_string())?,
    );
    if json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut bytes = 0u64;
    let mut tail = Vec::new();
    loop {
        let chunk = match response.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(error) => {
                drop(file);
                let _ = std::fs::remove_file(&partial);
                return Err(format!("the export broke off after {bytes} bytes: {error}"));
            }
        };
        file.write_all(&chunk).map_err(|error| format!("cannot write {}: {error}", partial.display()))?;
        bytes += chunk.len() as u64;
        // Rows come oldest first: the newest complete line says how far
        // through the period the export is.
        tail.extend_from_slice(&chunk);
        if let Some(end) = tail.iter().rposition(|b| *b == b'\n') {
            let lines = &tail[..end];
            let line_start = lines.iter().rposition(|b| *b == b'\n').map_or(0, |at| at + 1);
            if let Some(at) = std::str::from_utf8(&lines[line_start..])
                .ok()
                .and_then(|line| line.split(',').nth(1))
                .and_then(|time| time.parse::<jiff::Timestamp>().ok())
            {
                bar.set_position((at.as_millisecond() - from_at.as_millisecond()).max(0) as u64);
            }
            tail.drain(..=end);
        }
        bar.set_message(format!("{} KiB", bytes / 1024));
    }
    file.flush().map_err(|error| format!("cannot write {}: {error}", partial.display()))?;
    drop(file);
    bar.finish_and_clear();
    // Count what arrived the way a spreadsheet would read it.
    let mut reader =
        csv::Reader::from_path(&partial).map_err(|error| format!("cannot read back {}: {error}", partial.display()))?;
    let mut rows = 0u64;
    for record in reader.records() {
        record.map_err(|error| format!("the export is not valid CSV: {error}"))?;
        rows += 1;
    }
    std::fs::rename(&partial, output).map_err(|error| format!("cannot write {}: {error}", output.display()))?;
    let summary = serde_json::json!({"file": output.display().to_string(), "rows": rows, "bytes": bytes});
    if json {
        println!("{summary}");
    } else {
        eprintln!("wrote {rows} transfers ({bytes} bytes) to {}", output.display());
    }
    Ok(())
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<T, String> {
    let text = std::fs::read_to_string(path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    serde_json::from_str(&text).map_err(|error| format!("{} is not {what}: {error}", path.display()))
}

fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<(), String> {
    let text = serde_json::to_string_pretty(value).map_err(|error| error.to_string())?;
    std::fs::write(path, text + "\n").map_err(|error| format!("cannot write {}: {error}", path.display()))
}

async fn server_keys(client: &ApiClient) -> Result<Vec<AuditKey>, String> {
    let keys: AuditKeys =
        serde_json::from_value(client.send(reqwest::Method::GET, "/admin/v1/audit/keys", None).await?)
            .map_err(|error| format!("the server's audit keys are malformed: {error}"))?;
    Ok(keys.keys)
}

/// Hands every item of a paged list to `each`, page by page (200 a page),
/// following its cursor, without keeping them.
async fn each_item(
    client: &ApiClient,
    path: &str,
    mut each: impl FnMut(&Value) -> Result<(), String>,
) -> Result<(), String> {
    let mut cursor: Option<String> = None;
    loop {
        let mut page_path = format!("{path}?limit=200");
        if let Some(cursor) = &cursor {
            page_path.push_str(&format!("&cursor={cursor}"));
        }
        let page = client.send(reqwest::Method::GET, &page_path, None).await?;
        for item in page["items"].as_array().map(Vec::as_slice).unwrap_or_default() {
            each(item)?;
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return Ok(()),
        }
    }
}

/// Every checkpoint the server lists.
async fn server_checkpoints(client: &ApiClient) -> Result<Vec<Checkpoint>, String> {
    let mut checkpoints = Vec::new();
    each_item(client, "/admin/v1/audit/checkpoints", |item| {
        checkpoints.push(
            serde_json::from_value(item.clone())
                .map_err(|error| format!("the server listed a malformed checkpoint: {error}"))?,
        );
        Ok(())
    })
    .await?;
    Ok(checkpoints)
}

/// Saves the newest signed checkpoint (and, beside it, nothing else: keep
/// the keys with `courier admin audit keys -o`).
pub async fn save_checkpoint(client: &ApiClient, output: &Path, json: bool) -> Result<(), String> {
    let page = client.send(reqwest::Method::GET, "/admin/v1/audit/checkpoints?limit=1", None).await?;
    let newest = page["items"].get(0).cloned().ok_or("no checkpoint is signed yet: the audit log is empty")?;
    let checkpoint: Checkpoint =
        serde_json::from_value(newest).map_err(|error| format!("the server listed a malformed checkpoint: {error}"))?;
    checkpoint.verify(&server_keys(client).await?).map_err(|error| error.to_string())?;
    write_json(output, &checkpoint)?;
    let shown = serde_json::to_value(&checkpoint).map_err(|error| error.to_string())?;
    print_object(&shown, json);
    if !json {
        eprintln!("saved to {}: keep it outside the database", output.display());
    }
    Ok(())
}

/// Saves the published audit keys.
pub async fn save_keys(client: &ApiClient, output: Option<&Path>, json: bool) -> Result<(), String> {
    let keys = AuditKeys { keys: server_keys(client).await? };
    if let Some(output) = output {
        write_json(output, &keys)?;
    }
    let shown = serde_json::to_value(&keys).map_err(|error| error.to_string())?;
    if json {
        println!("{shown}");
    } else {
        courier_common::client::print_table(
            &["key_id", "algorithm", "created_at", "public_key"],
            shown["keys"].as_array().map(Vec::as_slice).unwrap_or_default(),
        );
    }
    Ok(())
}

/// Verifies the audit log on this machine: every checkpoint's signature
/// with the trusted keys (`--keys`, else the server's), then the whole
/// chain, read newest first, against every checkpoint (the server's and
/// `--checkpoint`). Exits non-zero naming what does not hold.
pub async fn verify(
    client: &ApiClient,
    checkpoint_file: Option<&PathBuf>,
    keys_file: Option<&PathBuf>,
    json: bool,
) -> Result<(), String> {
    let keys = match keys_file {
        Some(path) => read_json::<AuditKeys>(path, "a file of audit keys (courier admin audit keys -o)")?.keys,
        None => server_keys(client).await?,
    };
    let kept = match checkpoint_file {
        Some(path) => Some(read_json::<Checkpoint>(path, "a checkpoint (courier admin audit checkpoint -o)")?),
        None => None,
    };
    if let Some(kept) = &kept {
        kept.verify(&keys).map_err(|error| {
            format!("{}: {error}", checkpoint_file.map_or_else(String::new, |p| p.display().to_string()))
        })?;
    }
    let mut checkpoints = server_checkpoints(client).await?;
    let mut problems = Vec::new();
    checkpoints.retain(|checkpoint| match checkpoint.verify(&keys) {
        Ok(()) => true,
        Err(error) => {
            problems.push(format!("listed by the server: {error}"));
            false
        }
    });
    let listed = checkpoints.len();
    checkpoints.extend(kept.clone());
    let mut walk = ChainWalk::new(&checkpoints);
    each_item(client, "/admin/v1/audit", |item| {
        walk.feed(courier_common::checkpoint::listed_entry(item)?);
        Ok(())
    })
    .await?;
    let walk = walk.finish();
    problems.extend(walk.faults.iter().map(ToString::to_string));
    // The server's own check also compares the chain with its stored head,
    // which shows entries cut from the end since the newest checkpoint.
    let stored = client.send(reqwest::Method::GET, "/admin/v1/audit/verify", None).await?;
    if stored["ok"] != Value::Bool(true) {
        problems.push(format!(
            "the chain as stored does not verify from entry {} (against the head the database keeps)",
            stored["first_bad"]
        ));
    }
    let summary = serde_json::json!({
        "ok": problems.is_empty(),
        "entries": walk.entries,
        "head": walk.head.as_ref().map(|(_, hash)| hash.clone()),
        "checkpoints_verified": listed,
        "kept_checkpoint": kept.as_ref().map(|k| serde_json::json!({"seq": k.seq, "at": k.at, "key_id": k.key_id})),
        "keys": keys.iter().map(|k| k.key_id.clone()).collect::<Vec<_>>(),
        "problems": problems,
    });
    print_object(&summary, json);
    if problems.is_empty() { Ok(()) } else { Err(format!("the audit log does not verify:\n{}", problems.join("\n"))) }
}
