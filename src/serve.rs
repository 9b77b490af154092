//! `courier serve`: builds the services' routers over one database and runs
//! them until SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use clap::ValueEnum;
use courier_accounts::Accounts;
use courier_accounts::sender::{CodeSender, WEBHOOK_TIMEOUT_S_DEFAULT};
use courier_accounts::tokens::{TokenIssuer, TokenKey, TokenVerifier};
use courier_common::Database;
use courier_common::observe::{OpsDoc, ops_routes};
use courier_common::shutdown::CancellationToken;
use courier_payments::Payments;
use courier_payments::writer::{self, WriterLock};
use courier_signaling::turn::{IceServers, TurnSecrets, TurnServer};
use std::sync::Arc;
use utoipa::OpenApi;

use crate::config::{CodeSenderKind, ServeOptions, TurnMode};

const TURN_SECRET_FILE_NAME: &str = "turn-secret";

/// Which services one process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Service {
    /// The core account system alone (split deployments).
    Accounts,
    /// The ledger alone, against the shared database; verifies tokens with --jwks-url.
    Payments,
    /// Call signaling alone, against the shared database; verifies tokens with --jwks-url.
    Signaling,
}

/// A built server: its router and the resources to release on shutdown.
pub struct Built {
    pub router: Router,
    pub database: Database,
    /// Background tasks that finish their work once shutdown is signalled.
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
    pub payments: Option<Payments>,
    /// Where the embedded TURN relay listens (UDP and TCP), when it runs.
    pub turn: Option<SocketAddr>,
}

/// Builds the routers of `service` (all services when `None`). Background
/// tasks stop when `shutdown` is cancelled.
pub async fn build(
    options: &ServeOptions,
    service: Option<Service>,
    shutdown: CancellationToken,
) -> Result<Built, String> {
    options.validate()?;
    let runs_accounts = matches!(service, None | Some(Service::Accounts));
    let runs_payments = matches!(service, None | Some(Service::Payments));
    let runs_signaling = matches!(service, None | Some(Service::Signaling));
    let data_dir = options.data_dir();
    if options.database_url.is_none() || (runs_accounts && options.token_key_file.is_none()) {
        create_private_dir(&data_dir).map_err(|error| {
            format!("cannot create the data directory {}: {error}; pass --data-dir", data_dir.display())
        })?;
    }
    let database_url = options.database_url();
    let database = Database::connect(&database_url, options.database_connections_max())
        .await
        .map_err(|error| error.to_string())?;
    tracing::info!(database = %courier_common::db::redact(&database_url), "database ready");

    let mut doc = OpsDoc::openapi();
    let mut router = Router::new();
    let mut verifier: Option<Arc<TokenVerifier>> = None;
    if runs_accounts {
        let accounts = build_accounts(options, &database)?;
        verifier = Some(accounts.verifier());
        router = router.merge(courier_accounts::app(accounts));
        doc.merge(courier_accounts::ApiDoc::openapi());
    }
    if verifier.is_none() {
        let url = options.jwks_url.as_deref().ok_or(
            "without the accounts service, tokens are verified offline: pass --jwks-url http://ACCOUNTS/v1/auth/keys",
        )?;
        verifier = Some(Arc::new(TokenVerifier::remote(url).await.map_err(|error| error.to_string())?));
    }
    let verifier = verifier.ok_or("no token verifier")?;
    let mut tasks = Vec::new();
    let mut payments = None;
    let mut turn = None;
    if runs_signaling {
        let hub = match options.cluster_config() {
            Some(cluster) => {
                courier_signaling::Hub::clustered(database.clone(), options.signaling_config(), &cluster).await?
            }
            None => courier_signaling::Hub::new(database.clone(), options.signaling_config()),
        };
        if options.redis_url.is_none() {
            // One node routes every call: a call left open in the records died with the previous run.
            let closed = courier_signaling::store::close_dangling(
                &database,
                courier_signaling::protocol::HangupReason::ServerShutdown,
                courier_common::time::now_ms(),
            )
            .await
            .map_err(|error| format!("cannot read the call records: {error}"))?;
            if closed > 0 {
                tracing::warn!(calls = closed, "closed the records of calls the previous run left open");
            }
        }
        tasks.push(tokio::spawn(hub.clone().run(shutdown.clone())));
        let ice = match options.turn_mode() {
            TurnMode::Embedded => {
                let secrets = turn_secrets(options, &data_dir)?;
                let relay = TurnServer::bind(options.turn_config(secrets.clone())?).await?;
                let addr = relay.local_addr();
                turn = Some(addr);
                tasks.push(relay.spawn(shutdown.clone()));
                let mut ice = IceServers::embedded(addr, secrets, options.turn_credential_ttl());
                // A relay behind a public name or a NAT is announced by the URLs given.
                if !options.turn_urls.is_empty() {
                    ice.turn_urls = options.turn_urls.clone();
                }
                if !options.stun_urls.is_empty() {
                    ice.stun_urls = options.stun_urls.clone();
                }
                ice
            }
            TurnMode::External => IceServers {
                stun_urls: options.stun_urls.clone(),
                turn_urls: options.turn_urls.clone(),
                secrets: Some(TurnSecrets::new(options.turn_secret.clone())?),
                credential_ttl: options.turn_credential_ttl(),
            },
            TurnMode::Off => IceServers { stun_urls: options.stun_urls.clone(), ..IceServers::default() },
        };
        let signaling = courier_signaling::Signaling::new(hub, verifier.clone()).with_ice_servers(ice);
        router = router.merge(courier_signaling::app(signaling));
        doc.merge(courier_signaling::ApiDoc::openapi());
    }
    if runs_payments {
        let verifier = verifier.clone();
        let lock_file = Database::sqlite_path(&database_url)
            .map(|path| path.with_extension("ledger-writer.lock"))
            .unwrap_or_else(|| data_dir.join("ledger-writer.lock"));
        let lock = WriterLock::for_database(&database, lock_file);
        let (writer, task) = writer::spawn(database.clone(), lock, options.writer_config(), shutdown.clone())
            .map_err(|e| format!("cannot start the ledger writer: {e}"))?;
        tasks.push(task);
        let state = Payments::new(database.clone(), writer, verifier, options.ledger_submit_timeout());
        router = router.merge(courier_payments::app(state.clone()));
        doc.merge(courier_payments::ApiDoc::openapi());
        payments = Some(state);
    }
    doc.info.title = "Courier".into();
    doc.info.version = env!("CARGO_PKG_VERSION").into();
    doc.info.description = Some("Encrypted voice calls and peer-to-peer payments for a messenger (API.md)".into());
    let doc = Arc::new(doc);
    let router = router
        .merge(ops_routes(Some(database.clone())))
        .route("/openapi.json", axum::routing::get(move || std::future::ready(axum::Json(doc.as_ref().clone()))));
    Ok(Built { router: courier_common::http::stack(router, options.http_limits()), database, tasks, payments, turn })
}

/// The configured TURN secrets, or else one kept in the data directory
/// (created on first use), so that credentials outlive a restart.
fn turn_secrets(options: &ServeOptions, data_dir: &std::path::Path) -> Result<TurnSecrets, String> {
    if !options.turn_secret.is_empty() {
        return TurnSecrets::new(options.turn_secret.clone());
    }
    let path = data_dir.join(TURN_SECRET_FILE_NAME);
    let secret = match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().to_owned(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            create_private_dir(data_dir)
                .map_err(|error| format!("cannot create the data directory {}: {error}", data_dir.display()))?;
            let mut bytes = [0u8; 32];
            rand::fill(&mut bytes);
            let secret = courier_common::text::hex(&bytes);
            match write_private(&path, &secret) {
                Ok(()) => secret,
                // Another process on the same data directory made it first.
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => std::fs::read_to_string(&path)
                    .map_err(|error| format!("cannot read {}: {error}", path.display()))?
                    .trim()
                    .to_owned(),
                Err(error) => return Err(format!("cannot write {}: {error}", path.display())),
            }
        }
        Err(error) => return Err(format!("cannot read {}: {error}", path.display())),
    };
    TurnSecrets::new(vec![secret]).map_err(|error| format!("{}: {error}", path.display()))
}

/// Writes `text` to a new file at `path` (mode 0600) whole or not at all:
/// a concurrent reader never sees it half-written, and an existing file is
/// left alone (AlreadyExists).
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let staging = path.with_extension(format!("{}.tmp", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let written = options.open(&staging).and_then(|mut file| {
        file.write_all(text.as_bytes())?;
        file.sync_all()
    });
    let linked = written.and_then(|()| std::fs::hard_link(&staging, path));
    let _ = std::fs::remove_file(&staging);
    linked
}

fn build_accounts(options: &ServeOptions, database: &Database) -> Result<Accounts, String> {
    let key = TokenKey::load_or_create(&options.token_key_file()).map_err(|error| error.to_string())?;
    let previous = options
        .token_previous_key_file
        .iter()
        .map(|path| TokenKey::load(path))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| error.to_string())?;
    let issuer = TokenIssuer::new(key, previous, options.accounts_config().access_token_ttl_s);
    let sender = match options.code_sender.unwrap_or(CodeSenderKind::Log) {
        CodeSenderKind::Log => CodeSender::Log,
        CodeSenderKind::Webhook => {
            let url = options.code_webhook_url.as_deref().ok_or("--code-sender webhook needs --code-webhook-url")?;
            let timeout = Duration::from_secs(options.code_webhook_timeout_s.unwrap_or(WEBHOOK_TIMEOUT_S_DEFAULT));
            CodeSender::webhook(url, timeout).map_err(|error| error.to_string())?
        }
    };
    Ok(Accounts::new(database.clone(), options.accounts_config(), issuer, sender))
}

/// Binds, prints the URL, serves until `shutdown` is cancelled, then drains.
pub async fn run(options: ServeOptions, service: Option<Service>, shutdown: CancellationToken) -> Result<(), String> {
    let built = build(&options, service, shutdown.clone()).await?;
    let listen = options.listen();
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|error| match error.kind() {
        std::io::ErrorKind::AddrInUse => {
            format!("{listen} is taken: pass --listen 127.0.0.1:0 for a free port")
        }
        _ => format!("cannot listen on {listen}: {error}"),
    })?;
    let local = listener.local_addr().map_err(|error| error.to_string())?;
    // The first line on stdout: scripts and tests read the URL from it. A
    // reader that stops after that line must not fail the second one, so the
    // lines go out in one write whose failure is ignored.
    let mut lines = format!("courier listening on http://{local}\n");
    if let Some(turn) = built.turn {
        lines.push_str(&format!("courier TURN relay on {turn} (udp, tcp)\n"));
    }
    let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), lines.as_bytes());
    tracing::info!(url = %format!("http://{local}"), service = ?service, "serving");
    let stop = shutdown.clone();
    serve_router(listener, built.router, async move { stop.cancelled().await })
        .await
        .map_err(|error| format!("server error: {error}"))?;
    for task in built.tasks {
        let _ = task.await;
    }
    built.database.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Serves `router` on `listener` until `stop` resolves, the way `courier
/// serve` does (the benches serve through this too): TCP_NODELAY on every
/// connection, since signaling frames and API answers are small and
/// latency-bound, and the peer's address for per-address limits.
pub async fn serve_router(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = axum::serve::ListenerExt::tap_io(listener, |stream| {
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>()).with_graceful_shutdown(stop).await
}

fn create_private_dir(path: &std::path::Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(path)
}
