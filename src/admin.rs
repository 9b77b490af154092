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
}

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
        AdminCommand::Operators(command) => {
            let client = ApiClient::new(&args.url, args.admin_key)?;
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
                    if args.json {
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
                    if args.json {
                        println!("{}", Value::Array(items));
                    } else {
                        print_table(&["operator_id", "name", "role", "created_at"], &items);
                    }
                }
                OperatorsCommand::Delete { operator_id } => {
                    client.send(reqwest::Method::DELETE, &format!("/admin/v1/operators/{operator_id}"), None).await?;
                    if args.json {
                        println!("{}", serde_json::json!({"operator_id": operator_id, "revoked": true}));
                    } else {
                        println!("revoked {operator_id}");
                    }
                }
            }
            Ok(())
        }
    }
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
}
