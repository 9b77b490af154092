//! `courier admin`: the finance-ops CLI. `bootstrap` works on the database
//! directly (there is no operator yet to call the API with); every other verb
//! calls the admin API with an operator key from `COURIER_ADMIN_KEY`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use courier_accounts::operators::{self, Role};
use courier_common::Database;
use courier_common::client::print_table;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

mod reports;

const URL_DEFAULT: &str = "http://127.0.0.1:8080";

#[derive(Args)]
pub struct AdminArgs {
    /// The Courier server.
    #[arg(long, env = "COURIER_URL", default_value = URL_DEFAULT, global = true)]
    url: String,
    /// An operator API key.
    #[arg(long, env = "COURIER_ADMIN_KEY", global = true, hide_env_values = true)]
    admin_key: Option<String>,
    /// Print JSON for scripts instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create the first admin operator and print its API key (once).
    Bootstrap {
        #[arg(long, default_value = "admin")]
        name: String,
        /// Create another admin even though one exists.
        #[arg(long)]
        force: bool,
        #[arg(long, env = "COURIER_DATA_DIR", default_value = courier_server::config::DATA_DIR_DEFAULT)]
        data_dir: PathBuf,
        /// Default: the SQLite database in the data directory.
        #[arg(long, env = "COURIER_DATABASE_URL")]
        database_url: Option<String>,
    },
    /// Manage operators (admin role).
    #[command(subcommand)]
    Operators(OperatorsCommand),
    /// Record money entering a wallet from the region's settlement account.
    Deposit(ExternalArgs),
    /// Record money leaving a wallet to the region's settlement account.
    Withdraw(ExternalArgs),
    /// Freeze a wallet: it can neither send nor receive.
    Freeze {
        account_id: String,
        #[arg(long)]
        reason: String,
    },
    /// Unfreeze a wallet.
    Unfreeze {
        account_id: String,
        #[arg(long)]
        reason: String,
    },
    /// Search transfers, newest first.
    Search {
        /// A party to the transfers (a wallet's account id).
        #[arg(long)]
        account: Option<String>,
        /// RU or BR.
        #[arg(long)]
        region: Option<String>,
        /// p2p, fee, deposit, withdrawal or reversal (default: all but fees).
        #[arg(long)]
        kind: Option<String>,
        /// Made at or after (RFC 3339, e.g. 2026-12-06T00:00:00Z).
        #[arg(long)]
        from: Option<String>,
        /// Made before (RFC 3339).
        #[arg(long)]
        to: Option<String>,
        /// How many transfers to show at most.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// A wallet: balance, status with its freeze, recent history.
    Account { account_id: String },
    /// A wallet's balance as it was at a moment.
    Balance {
        account_id: String,
        /// RFC 3339, e.g. 2026-12-06T12:00:00Z.
        #[arg(long)]
        at: String,
    },
    /// Reverse a transfer, whole or in part (the fee goes back in proportion).
    Reverse {
        transfer_id: String,
        #[arg(long)]
        reason: String,
        /// How much to take back (default: all that is left).
        #[arg(long)]
        amount: Option<String>,
        #[command(flatten)]
        key: KeyArg,
    },
    /// Trial balance and stored-versus-computed balances, from one snapshot.
    Reconcile,
    /// Reports for the finance team.
    #[command(subcommand)]
    Report(ReportCommand),
    /// Write every transfer of a period to a CSV file (streamed, with a progress bar).
    Export {
        /// Made at or after (RFC 3339, e.g. 2026-12-01T00:00:00Z).
        #[arg(long)]
        from: String,
        /// Made before (RFC 3339); at most 366 days after --from.
        #[arg(long)]
        to: String,
        /// RU or BR (default: every region).
        #[arg(long)]
        region: Option<String>,
        /// The CSV file to write.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Regions' rules (admin).
    #[command(subcommand)]
    Regions(RegionsCommand),
    /// Four-eyes adjustments: one operator proposes, another approves.
    #[command(subcommand)]
    Adjust(AdjustCommand),
    /// Holds: keep part of a wallet while a claim is examined.
    #[command(subcommand)]
    Hold(HoldCommand),
    /// The audit log of operators' actions.
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Entries, newest first.
    List {
        #[arg(long)]
        operator: Option<String>,
        /// e.g. freeze, reversal, hold_returned, adjustment_approved, region_changed.
        #[arg(long)]
        action: Option<String>,
        /// An account, transfer, hold, adjustment, region or operator id.
        #[arg(long)]
        target: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Verify the chain and every checkpoint's signature on this machine;
    /// exits non-zero naming what does not hold.
    Verify {
        /// A checkpoint kept outside the database (courier admin audit checkpoint -o).
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// The audit keys to trust (courier admin audit keys -o); default: the server's.
        #[arg(long)]
        keys: Option<PathBuf>,
    },
    /// Save the newest signed checkpoint to a file, to keep outside the database.
    Checkpoint {
        #[arg(short, long)]
        output: PathBuf,
    },
    /// The audit keys' public halves (current and rotated out); -o saves them.
    Keys {
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ReportCommand {
    /// A region's day in its own time zone: movements, holds, wallets' totals, senders.
    Daily {
        /// RU or BR.
        #[arg(long)]
        region: String,
        /// The local day (YYYY-MM-DD); default: today there.
        #[arg(long)]
        date: Option<String>,
    },
}

async fn manage_audit(command: AuditCommand, client: &ApiClient, json: bool) -> Result<(), String> {
    match command {
        AuditCommand::List { operator, action, target, limit } => {
            let mut query = Vec::new();
            for (name, value) in [("operator", operator), ("action", action), ("target", target)] {
                if let Some(value) = value {
                    query.push(format!("{name}={}", encode(&value)));
                }
            }
            let items = collect(client, "/admin/v1/audit", &query, limit).await?;
            if json {
                println!("{}", Value::Array(items));
            } else {
                print_table(&["seq", "at", "operator", "action", "target"], &items);
            }
        }
        AuditCommand::Verify { checkpoint, keys } => {
            reports::verify(client, checkpoint.as_ref(), keys.as_ref(), json).await?;
        }
        AuditCommand::Checkpoint { output } => reports::save_checkpoint(client, &output, json).await?,
        AuditCommand::Keys { output } => reports::save_keys(client, output.as_deref(), json).await?,
    }
    Ok(())
}

#[derive(Subcommand)]
enum HoldCommand {
    /// Place a hold on a wallet's available balance.
    Place {
        account_id: String,
        #[arg(long)]
        amount: String,
        #[arg(long)]
        currency: String,
        #[arg(long)]
        reason: String,
        /// The transfer the claim is about (which paid this wallet): a return reverses it.
        #[arg(long)]
        transfer: Option<String>,
    },
    /// Release a hold: its money is available again.
    Release { hold_id: String },
    /// Return a hold to the sender of its transfer, as a reversal.
    Return {
        hold_id: String,
        #[command(flatten)]
        key: KeyArg,
    },
    /// List holds, newest first.
    List {
        #[arg(long)]
        account: Option<String>,
        /// active, released, returned or expired.
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

const HOLD_COLUMNS: [&str; 7] = ["hold_id", "account_id", "amount", "currency", "status", "transfer_id", "expires_at"];

async fn manage_holds(command: HoldCommand, client: &ApiClient, json: bool) -> Result<(), String> {
    let shown = match command {
        HoldCommand::Place { account_id, amount, currency, reason, transfer } => {
            let mut body = serde_json::json!({"amount": amount, "currency": currency, "reason": reason});
            if let Some(transfer) = transfer {
                body["transfer_id"] = Value::String(transfer);
            }
            let path = format!("/admin/v1/accounts/{account_id}/holds");
            client.send(reqwest::Method::POST, &path, Some(body)).await?
        }
        HoldCommand::Release { hold_id } => {
            client.send(reqwest::Method::POST, &format!("/admin/v1/holds/{hold_id}/release"), None).await?
        }
        HoldCommand::Return { hold_id, key } => {
            keyed(client, &format!("/admin/v1/holds/{hold_id}/return"), &key.key(), serde_json::json!({})).await?
        }
        HoldCommand::List { account, status, limit } => {
            let mut query = Vec::new();
            for (name, value) in [("account", account), ("status", status)] {
                if let Some(value) = value {
                    query.push(format!("{name}={}", encode(&value)));
                }
            }
            let items = collect(client, "/admin/v1/holds", &query, limit).await?;
            if json {
                println!("{}", Value::Array(items));
            } else {
                print_table(&HOLD_COLUMNS, &items);
            }
            return Ok(());
        }
    };
    print_object(&shown, json);
    Ok(())
}

#[derive(Subcommand)]
enum AdjustCommand {
    /// Propose an adjustment (operator); it moves nothing until approved.
    Propose {
        #[arg(long)]
        account: String,
        /// Signed: 150.00 credits the wallet, -150.00 debits it.
        #[arg(long, allow_hyphen_values = true)]
        amount: String,
        #[arg(long)]
        currency: String,
        #[arg(long)]
        reason: String,
    },
    /// Approve a pending adjustment (an approver other than its proposer).
    Approve {
        adjustment_id: String,
        #[command(flatten)]
        key: KeyArg,
    },
    /// Reject a pending adjustment (an approver other than its proposer).
    Reject { adjustment_id: String },
    /// List adjustments, newest first.
    List {
        /// pending, approved, rejected or expired.
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

const ADJUSTMENT_COLUMNS: [&str; 7] =
    ["adjustment_id", "account_id", "amount", "currency", "status", "proposed_by", "transfer_id"];

async fn manage_adjustments(command: AdjustCommand, client: &ApiClient, json: bool) -> Result<(), String> {
    let shown = match command {
        AdjustCommand::Propose { account, amount, currency, reason } => {
            let body =
                serde_json::json!({"account_id": account, "amount": amount, "currency": currency, "reason": reason});
            client.send(reqwest::Method::POST, "/admin/v1/adjustments", Some(body)).await?
        }
        AdjustCommand::Approve { adjustment_id, key } => {
            let path = format!("/admin/v1/adjustments/{adjustment_id}/approve");
            keyed(client, &path, &key.key(), serde_json::json!({})).await?
        }
        AdjustCommand::Reject { adjustment_id } => {
            let path = format!("/admin/v1/adjustments/{adjustment_id}/reject");
            client.send(reqwest::Method::POST, &path, None).await?
        }
        AdjustCommand::List { status, limit } => {
            let query: Vec<String> = status.iter().map(|status| format!("status={}", encode(status))).collect();
            let items = collect(client, "/admin/v1/adjustments", &query, limit).await?;
            if json {
                println!("{}", Value::Array(items));
            } else {
                print_table(&ADJUSTMENT_COLUMNS, &items);
            }
            return Ok(());
        }
    };
    print_object(&shown, json);
    Ok(())
}

#[derive(Subcommand)]
enum RegionsCommand {
    /// Every region's rules.
    Show,
    /// Change a region's rules; the next transfer obeys them.
    Set {
        /// RU or BR.
        code: String,
        /// Take P2P transfers (true) or pause them (false).
        #[arg(long)]
        enabled: Option<bool>,
        #[arg(long)]
        per_transfer_max: Option<String>,
        #[arg(long)]
        daily_max: Option<String>,
        #[arg(long)]
        monthly_max: Option<String>,
        /// An amount, or `none` for no night limit.
        #[arg(long)]
        night_max: Option<String>,
        #[arg(long)]
        night_start_hour: Option<u8>,
        #[arg(long)]
        night_end_hour: Option<u8>,
        /// `FREE_MONTHLY,RATE,CAP` (e.g. `100000.00,0.005,1500.00`), or `none` for free transfers.
        #[arg(long)]
        fee: Option<String>,
    },
}

const REGION_COLUMNS: [&str; 9] = [
    "code",
    "enabled",
    "currency",
    "per_transfer_max",
    "daily_max",
    "monthly_max",
    "night_max",
    "night_start_hour",
    "night_end_hour",
];

/// Regions with their fee flattened into one column, for a table.
fn region_rows(regions: &[Value]) -> Vec<Value> {
    regions
        .iter()
        .map(|region| {
            let mut row = region.clone();
            row["fee"] = match &region["fee"] {
                Value::Null => Value::String("none".into()),
                fee => Value::String(format!(
                    "{} free a month, then {} up to {}",
                    fee["free_monthly"].as_str().unwrap_or(""),
                    fee["rate"].as_str().unwrap_or(""),
                    fee["cap"].as_str().unwrap_or("")
                )),
            };
            row
        })
        .collect()
}

async fn manage_regions(command: RegionsCommand, client: &ApiClient, json: bool) -> Result<(), String> {
    let regions = match command {
        RegionsCommand::Show => client.send(reqwest::Method::GET, "/admin/v1/regions", None).await?,
        RegionsCommand::Set {
            code,
            enabled,
            per_transfer_max,
            daily_max,
            monthly_max,
            night_max,
            night_start_hour,
            night_end_hour,
            fee,
        } => {
            let mut patch = serde_json::Map::new();
            if let Some(enabled) = enabled {
                patch.insert("enabled".into(), Value::Bool(enabled));
            }
            for (name, value) in
                [("per_transfer_max", per_transfer_max), ("daily_max", daily_max), ("monthly_max", monthly_max)]
            {
                if let Some(value) = value {
                    patch.insert(name.into(), Value::String(value));
                }
            }
            if let Some(night) = night_max {
                let value = if night == "none" { Value::Null } else { Value::String(night) };
                patch.insert("night_max".into(), value);
            }
            for (name, value) in [("night_start_hour", night_start_hour), ("night_end_hour", night_end_hour)] {
                if let Some(hour) = value {
                    patch.insert(name.into(), Value::from(hour));
                }
            }
            if let Some(fee) = fee {
                let value = if fee == "none" {
                    Value::Null
                } else {
                    let parts: Vec<&str> = fee.split(',').map(str::trim).collect();
                    let [free_monthly, rate, cap] = parts[..] else {
                        return Err("--fee takes FREE_MONTHLY,RATE,CAP (e.g. 100000.00,0.005,1500.00) or none".into());
                    };
                    serde_json::json!({"free_monthly": free_monthly, "rate": rate, "cap": cap})
                };
                patch.insert("fee".into(), value);
            }
            if patch.is_empty() {
                return Err("say what to change: --enabled, --daily-max, --fee, … (see --help)".into());
            }
            let path = format!("/admin/v1/regions/{}", code.to_uppercase());
            Value::Array(vec![client.send(reqwest::Method::PATCH, &path, Some(Value::Object(patch))).await?])
        }
    };
    if json {
        println!("{regions}");
    } else {
        let rows = region_rows(regions.as_array().map(Vec::as_slice).unwrap_or_default());
        let mut columns = REGION_COLUMNS.to_vec();
        columns.push("fee");
        print_table(&columns, &rows);
    }
    Ok(())
}

#[derive(Args)]
struct ExternalArgs {
    /// The wallet's account id.
    #[arg(long)]
    account: String,
    /// A decimal amount, e.g. 150.00.
    #[arg(long)]
    amount: String,
    /// RUB or BRL.
    #[arg(long)]
    currency: String,
    /// The payment rail's reference.
    #[arg(long = "ref")]
    external_ref: String,
    #[command(flatten)]
    key: KeyArg,
}

#[derive(Args)]
struct KeyArg {
    /// The request's Idempotency-Key (default: a new one, printed on failure
    /// so that a retry with it cannot apply twice).
    #[arg(long)]
    idempotency_key: Option<String>,
}

impl KeyArg {
    fn key(&self) -> String {
        self.idempotency_key.clone().unwrap_or_else(|| uuid::Uuid::now_v7().to_string())
    }
}

const TRANSFER_COLUMNS: [&str; 8] = ["transfer_id", "kind", "from", "to", "amount", "fee", "currency", "created_at"];

#[derive(Subcommand)]
enum OperatorsCommand {
    /// Create an operator; its API key is printed once.
    Create {
        #[arg(long)]
        name: String,
        /// viewer, operator, approver or admin.
        #[arg(long)]
        role: String,
    },
    /// List live operators.
    List,
    /// Revoke an operator's key.
    Delete { operator_id: String },
}

pub async fn run(args: AdminArgs) -> Result<(), String> {
    match args.command {
        AdminCommand::Bootstrap { name, force, data_dir, database_url } => {
            bootstrap(&name, force, &data_dir, database_url, args.json).await
        }
        AdminCommand::Regions(command) => {
            manage_regions(command, &ApiClient::new(&args.url, args.admin_key)?, args.json).await
        }
        AdminCommand::Adjust(command) => {
            manage_adjustments(command, &ApiClient::new(&args.url, args.admin_key)?, args.json).await
        }
        AdminCommand::Hold(command) => {
            manage_holds(command, &ApiClient::new(&args.url, args.admin_key)?, args.json).await
        }
        AdminCommand::Audit(command) => {
            manage_audit(command, &ApiClient::new(&args.url, args.admin_key)?, args.json).await
        }
        AdminCommand::Operators(command) => {
            manage_operators(command, &ApiClient::new(&args.url, args.admin_key)?, args.json).await
        }
        command => money(command, &ApiClient::new(&args.url, args.admin_key)?, args.json).await,
    }
}

/// Prints one object: as JSON, or as `field  value` lines.
fn print_object(value: &Value, json: bool) {
    if json {
        println!("{value}");
        return;
    }
    if let Value::Object(fields) = value {
        let width = fields.keys().map(String::len).max().unwrap_or(0);
        for (name, field) in fields {
            let text = match field {
                Value::String(text) => text.clone(),
                Value::Null => "-".to_owned(),
                other => other.to_string(),
            };
            println!("{name:<width$}  {text}");
        }
    }
}

/// A money-moving request under an idempotency key; on failure the error
/// says how to retry it safely.
async fn keyed(client: &ApiClient, path: &str, key: &str, body: Value) -> Result<Value, String> {
    client.send_keyed(reqwest::Method::POST, path, key, body).await.map_err(|error| {
        format!("{error}\n(to retry this very request without applying it twice: --idempotency-key {key})")
    })
}

async fn money(command: AdminCommand, client: &ApiClient, json: bool) -> Result<(), String> {
    match command {
        AdminCommand::Deposit(args) => external(client, "/admin/v1/deposits", args, json).await?,
        AdminCommand::Withdraw(args) => external(client, "/admin/v1/withdrawals", args, json).await?,
        AdminCommand::Freeze { account_id, reason } => {
            let path = format!("/admin/v1/accounts/{account_id}/freeze");
            print_object(
                &client.send(reqwest::Method::POST, &path, Some(serde_json::json!({"reason": reason}))).await?,
                json,
            );
        }
        AdminCommand::Unfreeze { account_id, reason } => {
            let path = format!("/admin/v1/accounts/{account_id}/unfreeze");
            print_object(
                &client.send(reqwest::Method::POST, &path, Some(serde_json::json!({"reason": reason}))).await?,
                json,
            );
        }
        AdminCommand::Search { account, region, kind, from, to, limit } => {
            let mut query: Vec<String> = Vec::new();
            for (name, value) in [("account", account), ("region", region), ("kind", kind), ("from", from), ("to", to)]
            {
                if let Some(value) = value {
                    query.push(format!("{name}={}", encode(&value)));
                }
            }
            let items = collect(client, "/admin/v1/transfers", &query, limit).await?;
            if json {
                println!("{}", Value::Array(items));
            } else {
                print_table(&TRANSFER_COLUMNS, &items);
            }
        }
        AdminCommand::Account { account_id } => {
            let mut view = client.send(reqwest::Method::GET, &format!("/admin/v1/accounts/{account_id}"), None).await?;
            if json {
                println!("{view}");
            } else {
                let recent = view.as_object_mut().and_then(|fields| fields.remove("recent")).unwrap_or_default();
                if let Some(freeze) = view.as_object_mut().and_then(|fields| fields.remove("freeze"))
                    && let Value::Object(freeze) = freeze
                {
                    for (name, value) in freeze {
                        view[format!("frozen_{name}")] = value;
                    }
                }
                print_object(&view, false);
                println!();
                print_table(&TRANSFER_COLUMNS, recent.as_array().map(Vec::as_slice).unwrap_or_default());
            }
        }
        AdminCommand::Balance { account_id, at } => {
            let path = format!("/admin/v1/accounts/{account_id}/balance?at={}", encode(&at));
            print_object(&client.send(reqwest::Method::GET, &path, None).await?, json);
        }
        AdminCommand::Reverse { transfer_id, reason, amount, key } => {
            let mut body = serde_json::json!({"reason": reason});
            if let Some(amount) = amount {
                body["amount"] = Value::String(amount);
            }
            let path = format!("/admin/v1/transfers/{transfer_id}/reverse");
            print_object(&keyed(client, &path, &key.key(), body).await?, json);
        }
        AdminCommand::Reconcile => {
            let report = client.send(reqwest::Method::GET, "/admin/v1/reconciliation", None).await?;
            if json {
                println!("{report}");
            } else {
                println!("balanced: {}", report["balanced"]);
                println!();
                print_table(
                    &["currency", "total"],
                    report["trial_balance"].as_array().map(Vec::as_slice).unwrap_or_default(),
                );
                let mismatches = report["mismatches"].as_array().map(Vec::as_slice).unwrap_or_default();
                if !mismatches.is_empty() {
                    println!();
                    print_table(&["account_id", "stored", "computed"], mismatches);
                }
            }
            if report["balanced"] != Value::Bool(true) {
                return Err("the ledger does not balance: see the accounts listed".into());
            }
        }
        AdminCommand::Report(ReportCommand::Daily { region, date }) => {
            reports::daily_report(client, &region, date.as_deref(), json).await?;
        }
        AdminCommand::Export { from, to, region, output } => {
            reports::export(client, &from, &to, region.as_deref(), &output, json).await?;
        }
        AdminCommand::Bootstrap { .. }
        | AdminCommand::Operators(_)
        | AdminCommand::Regions(_)
        | AdminCommand::Adjust(_)
        | AdminCommand::Hold(_)
        | AdminCommand::Audit(_) => {
            unreachable!("handled by run")
        }
    }
    Ok(())
}

async fn external(client: &ApiClient, path: &str, args: ExternalArgs, json: bool) -> Result<(), String> {
    let body = serde_json::json!({
        "account_id": args.account, "amount": args.amount, "currency": args.currency, "external_ref": args.external_ref,
    });
    print_object(&keyed(client, path, &args.key.key(), body).await?, json);
    Ok(())
}

/// Percent-encodes a query value (RFC 3339 times carry `+` and `:`).
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// Up to `limit` items of a paged list, following its cursor.
async fn collect(client: &ApiClient, path: &str, query: &[String], limit: usize) -> Result<Vec<Value>, String> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    while items.len() < limit {
        let mut parameters = query.to_vec();
        parameters.push(format!("limit={}", (limit - items.len()).min(200)));
        if let Some(cursor) = &cursor {
            parameters.push(format!("cursor={cursor}"));
        }
        let page = client.send(reqwest::Method::GET, &format!("{path}?{}", parameters.join("&")), None).await?;
        items.extend(page["items"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    Ok(items)
}

async fn manage_operators(command: OperatorsCommand, client: &ApiClient, json: bool) -> Result<(), String> {
    match command {
        OperatorsCommand::Create { name, role } => {
            let role = Role::parse(&role).ok_or("--role must be viewer, operator, approver or admin")?;
            let created = client
                .send(
                    reqwest::Method::POST,
                    "/admin/v1/operators",
                    Some(serde_json::json!({"name": name, "role": role})),
                )
                .await?;
            if json {
                println!("{created}");
            } else {
                print_table(&["operator_id", "name", "role"], std::slice::from_ref(&created));
                eprintln!("API key (shown once, store it now):");
                println!("{}", created["api_key"].as_str().unwrap_or(""));
            }
        }
        OperatorsCommand::List => {
            let mut items = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let path = match &cursor {
                    Some(cursor) => {
                        format!("/admin/v1/operators?limit=200&cursor={cursor}")
                    }
                    None => "/admin/v1/operators?limit=200".to_owned(),
                };
                let page = client.send(reqwest::Method::GET, &path, None).await?;
                items.extend(page["items"].as_array().cloned().unwrap_or_default());
                match page["next_cursor"].as_str() {
                    Some(next) => cursor = Some(next.to_owned()),
                    None => break,
                }
            }
            if json {
                println!("{}", Value::Array(items));
            } else {
                print_table(&["operator_id", "name", "role", "created_at"], &items);
            }
        }
        OperatorsCommand::Delete { operator_id } => {
            client.send(reqwest::Method::DELETE, &format!("/admin/v1/operators/{operator_id}"), None).await?;
            if json {
                println!("{}", serde_json::json!({"operator_id": operator_id, "revoked": true}));
            } else {
                println!("revoked {operator_id}");
            }
        }
    }
    Ok(())
}

async fn bootstrap(
    name: &str,
    force: bool,
    data_dir: &std::path::Path,
    database_url: Option<String>,
    json: bool,
) -> Result<(), String> {
    let name = operators::parse_operator_name(name).map_err(|error| error.to_string())?;
    let url = match database_url {
        Some(url) => url,
        None => {
            std::fs::create_dir_all(data_dir)
                .map_err(|error| format!("cannot create the data directory {}: {error}", data_dir.display()))?;
            Database::sqlite_url(&data_dir.join("courier.db"))
        }
    };
    let database = Database::connect(&url, 1).await.map_err(|error| error.to_string())?;
    let admins = operators::live_admins(&database).await.map_err(|error| error.to_string())?;
    if admins > 0 && !force {
        return Err(format!(
            "{admins} admin operator(s) exist already; ask one for a key, or pass --force to create another admin"
        ));
    }
    let (operator, key) =
        operators::create(&database, &name, Role::Admin, None).await.map_err(|error| error.to_string())?;
    database.close().await;
    if json {
        println!(
            "{}",
            serde_json::json!({"operator_id": operator.operator_id, "name": operator.name, "role": "admin", "api_key": key})
        );
    } else {
        eprintln!("created admin operator {} ({}). Its API key, shown this once:", operator.operator_id, operator.name);
        println!("{key}");
    }
    Ok(())
}

/// A small client for the admin API: errors come back as the server's
/// `code: message`.
pub struct ApiClient {
    base: String,
    key: SecretString,
    http: reqwest::Client,
}

impl ApiClient {
    pub fn new(base: &str, key: Option<String>) -> Result<Self, String> {
        let key = key.ok_or("set COURIER_ADMIN_KEY (or pass --admin-key) to an operator API key")?;
        let http = courier_common::client::http_client_builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|error| error.to_string())?;
        Ok(ApiClient { base: base.trim_end_matches('/').to_owned(), key: SecretString::from(key), http })
    }

    pub async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value, String> {
        courier_common::client::request(&self.http, &self.base, method, path, Some(self.key.expose_secret()), body)
            .await
    }

    /// A GET whose answer is read as it arrives (an export); a refusal
    /// comes back as the server's `code (status): message`.
    pub async fn get_raw(&self, path: &str) -> Result<reqwest::Response, String> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(self.key.expose_secret())
            .timeout(std::time::Duration::from_secs(3_600))
            .send()
            .await
            .map_err(|error| format!("cannot reach {}: {error}", self.base))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        Err(courier_common::client::refusal(status, None, &text))
    }

    pub async fn send_keyed(
        &self,
        method: reqwest::Method,
        path: &str,
        key: &str,
        body: Value,
    ) -> Result<Value, String> {
        let bearer = Some(self.key.expose_secret());
        courier_common::client::request_keyed(&self.http, &self.base, method, path, bearer, Some(key), Some(body)).await
    }
}
