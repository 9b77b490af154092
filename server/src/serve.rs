//! Builds the services' routers over one database ([`build`]) and serves
//! them until shutdown ([`run`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use courier_accounts::Accounts;
use courier_accounts::sender::CodeSender;
use courier_accounts::tokens::{TokenIssuer, TokenKey, TokenVerifier};
use courier_common::Database;
use courier_common::observe::{OpsDoc, ops_routes};
use courier_common::shutdown::CancellationToken;
use courier_payments::Payments;
use courier_payments::checkpoint::{self, AuditSigner};
use courier_payments::writer::{self, WriterLock};
use courier_signaling::ice::IceServers;
use courier_turn::{TurnSecrets, TurnServer};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::task::JoinHandle;
use tower::ServiceExt;
use utoipa::OpenApi;

use crate::config::{CodeSenderKind, ServeOptions, Service, TurnMode};
use crate::connections::{Admission, ConnectionLimits, JsonParseErrors};
use crate::files::{create_private_dir, turn_secret};

/// A built server: its router and the resources to release on shutdown.
pub struct Built {
    pub router: Router,
    pub database: Database,
    /// Background tasks that finish their work once shutdown is signalled.
    pub tasks: Vec<JoinHandle<()>>,
    pub payments: Option<Payments>,
    /// Where the embedded TURN relay listens (UDP and TCP), when it runs.
    pub turn: Option<SocketAddr>,
}

/// What the services being built share.
struct Parts<'a> {
    options: &'a ServeOptions,
    database: Database,
    verifier: Arc<TokenVerifier>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

/// Builds the routers of `service` (all services when `None`). Background
/// tasks stop when `shutdown` is cancelled.
pub async fn build(
    options: &ServeOptions,
    service: Option<Service>,
    shutdown: CancellationToken,
) -> Result<Built, String> {
    build_with(options, service, shutdown, |_| Router::new()).await
}

/// As [`build`], with the routes `extra` makes from the ledger's state (when
/// it runs) behind the same HTTP stack: how a benchmark measures its floor
/// on the server it measures.
pub async fn build_with(
    options: &ServeOptions,
    service: Option<Service>,
    shutdown: CancellationToken,
    extra: impl FnOnce(Option<&courier_payments::Payments>) -> Router,
) -> Result<Built, String> {
    options.validate()?;
    let runs = |one: Service| service.is_none_or(|only| only == one);
    let database = open_database(options, runs(Service::Accounts)).await?;
    let mut doc = OpsDoc::openapi();
    let mut router = Router::new();
    let verifier = if runs(Service::Accounts) {
        let accounts = build_accounts(options, &database)?;
        let verifier = accounts.verifier();
        router = router.merge(courier_accounts::app(accounts));
        doc.merge(courier_accounts::ApiDoc::openapi());
        verifier
    } else {
        remote_verifier(options).await?
    };
    let mut parts = Parts { options, database: database.clone(), verifier, shutdown, tasks: Vec::new() };
    // Tokens of devices signed out elsewhere are refused within a second.
    parts.tasks.push(tokio::spawn(courier_accounts::revocations::watch(
        database.clone(),
        parts.verifier.clone(),
        parts.shutdown.clone(),
    )));
    let mut turn = None;
    if runs(Service::Signaling) {
        let (signaling, relay) = build_signaling(&mut parts).await?;
        turn = relay;
        router = router.merge(courier_signaling::app(signaling));
        doc.merge(courier_signaling::ApiDoc::openapi());
        // The browser client calls from the page, so it is served where calls are.
        router = router.merge(crate::web::routes());
        doc.merge(crate::web::WebDoc::openapi());
    }
    let mut payments = None;
    if runs(Service::Payments) {
        let state = build_payments(&mut parts)?;
        router = router.merge(courier_payments::app(state.clone()));
        doc.merge(courier_payments::ApiDoc::openapi());
        payments = Some(state);
    }
    doc.info.title = "Courier".into();
    doc.info.version = env!("CARGO_PKG_VERSION").into();
    doc.info.description = Some("Encrypted voice calls and peer-to-peer payments for a messenger (API.md)".into());
    let mut doc = serde_json::to_value(&doc).map_err(|error| format!("cannot write the OpenAPI document: {error}"))?;
    courier_common::openapi::finish(&mut doc);
    let doc = Arc::new(doc);
    let router = router
        .merge(extra(payments.as_ref()))
        .merge(ops_routes(Some(database.clone())))
        .route("/openapi.json", axum::routing::get(move || std::future::ready(axum::Json(doc.as_ref().clone()))));
    let router = courier_common::http::stack(router, options.server.http_limits());
    Ok(Built { router, database, tasks: parts.tasks, payments, turn })
}

/// The database the options name, its directory created first when it is
/// the embedded one (or the signing key lives there).
async fn open_database(options: &ServeOptions, signs_tokens: bool) -> Result<Database, String> {
    let data_dir = &options.server.data_dir;
    if options.server.database_url.is_none() || (signs_tokens && options.accounts.token_key_file.is_none()) {
        create_private_dir(data_dir).map_err(|error| {
            format!("cannot create the data directory {}: {error}; pass --data-dir", data_dir.display())
        })?;
    }
    let url = options.server.database_url();
    let database =
        Database::connect(&url, options.server.database_connections_max).await.map_err(|error| error.to_string())?;
    tracing::info!(database = %courier_common::db::redact(&url), "database ready");
    Ok(database)
}

fn build_accounts(options: &ServeOptions, database: &Database) -> Result<Accounts, String> {
    let section = &options.accounts;
    let key = TokenKey::load_or_create(&section.token_key_file(&options.server.data_dir))
        .map_err(|error| error.to_string())?;
    let previous = section
        .token_previous_key_file
        .iter()
        .map(|path| TokenKey::load(path))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| error.to_string())?;
    let issuer = TokenIssuer::new(key, previous, section.access_token_ttl_s);
    let sender = match section.code_sender {
        CodeSenderKind::Log => CodeSender::Log,
        CodeSenderKind::Webhook => {
            let url = section.code_webhook_url.as_deref().ok_or("--code-sender webhook needs --code-webhook-url")?;
            CodeSender::webhook(url, Duration::from_secs(section.code_webhook_timeout_s))
                .map_err(|error| error.to_string())?
        }
    };
    Ok(Accounts::new(database.clone(), section.config(), issuer, sender))
}

/// Without the accounts service in this process, tokens are verified with
/// the keys it publishes.
async fn remote_verifier(options: &ServeOptions) -> Result<Arc<TokenVerifier>, String> {
    let url = options.server.jwks_url.as_deref().ok_or(
        "without the accounts service, tokens are verified offline: pass --jwks-url http://ACCOUNTS/v1/auth/keys",
    )?;
    Ok(Arc::new(TokenVerifier::remote(url).await.map_err(|error| error.to_string())?))
}

/// The signaling service with its hub running, and the embedded relay's
/// address when it runs one.
async fn build_signaling(parts: &mut Parts<'_>) -> Result<(courier_signaling::Signaling, Option<SocketAddr>), String> {
    let section = &parts.options.signaling;
    let hub = match section.cluster_config() {
        Some(cluster) => courier_signaling::Hub::clustered(parts.database.clone(), section.config(), &cluster).await?,
        None => {
            // One node routes every call: a call left open in the records died with the previous run.
            close_dangling_calls(&parts.database).await?;
            courier_signaling::Hub::new(parts.database.clone(), section.config())
        }
    };
    parts.tasks.push(tokio::spawn(hub.clone().run(parts.shutdown.clone())));
    parts.tasks.push(tokio::spawn(hub.clone().watch_revocations(parts.verifier.revocations().subscribe())));
    parts.tasks.push(tokio::spawn(courier_signaling::store::purge_call_records_periodically(
        parts.database.clone(),
        section.call_records_retention_days,
        Duration::from_secs(section.call_records_purge_interval_s.max(1)),
        parts.shutdown.clone(),
    )));
    let (ice, relay) = ice_servers(parts).await?;
    Ok((courier_signaling::Signaling::new(hub, parts.verifier.clone()).with_ice_servers(ice), relay))
}

async fn close_dangling_calls(database: &Database) -> Result<(), String> {
    let closed = courier_signaling::store::close_dangling(
        database,
        courier_protocol::HangupReason::ServerShutdown,
        courier_common::time::now_ms(),
    )
    .await
    .map_err(|error| format!("cannot read the call records: {error}"))?;
    if closed > 0 {
        tracing::warn!(calls = closed, "closed the records of calls the previous run left open");
    }
    Ok(())
}

/// The ICE servers calls are handed, starting the embedded relay when it is the one.
async fn ice_servers(parts: &mut Parts<'_>) -> Result<(IceServers, Option<SocketAddr>), String> {
    let turn = &parts.options.turn;
    let ice = match turn.mode {
        TurnMode::Embedded => {
            let secrets = if turn.turn_secret.is_empty() {
                turn_secret(&parts.options.server.data_dir)?
            } else {
                TurnSecrets::new(turn.turn_secret.clone())?
            };
            let relay = TurnServer::bind(turn.relay_config(secrets.clone())?).await?;
            let addr = relay.local_addr();
            parts.tasks.push(relay.spawn(parts.shutdown.clone()));
            let mut ice = IceServers::embedded(addr, secrets, turn.credential_ttl());
            // A relay behind a public name or a NAT is announced by the URLs given.
            if !turn.turn_urls.is_empty() {
                ice.turn_urls = turn.turn_urls.clone();
            }
            if !turn.stun_urls.is_empty() {
                ice.stun_urls = turn.stun_urls.clone();
            }
            return Ok((ice, Some(addr)));
        }
        TurnMode::External => IceServers {
            stun_urls: turn.stun_urls.clone(),
            turn_urls: turn.turn_urls.clone(),
            secrets: Some(TurnSecrets::new(turn.turn_secret.clone())?),
            credential_ttl: turn.credential_ttl(),
        },
        TurnMode::Off => IceServers { stun_urls: turn.stun_urls.clone(), ..IceServers::default() },
    };
    Ok((ice, None))
}

/// The ledger with its writer running (or waiting as a standby).
fn build_payments(parts: &mut Parts<'_>) -> Result<Payments, String> {
    let options = parts.options;
    let lock_file = Database::sqlite_path(&options.server.database_url())
        .map(|path| path.with_extension("ledger-writer.lock"))
        .unwrap_or_else(|| options.server.data_dir.join("ledger-writer.lock"));
    let lock = WriterLock::for_database(&parts.database, lock_file);
    let (writer, task) =
        writer::spawn(parts.database.clone(), lock, options.ledger.writer_config(), parts.shutdown.clone())
            .map_err(|error| format!("cannot start the ledger writer: {error}"))?;
    parts.tasks.push(task);
    // The audit log's checkpoints, signed with this node's audit key.
    let key_file = options.ledger.audit_key_file(&options.server.data_dir);
    if options.ledger.audit_key_file.is_none() {
        create_private_dir(&options.server.data_dir).map_err(|error| {
            format!("cannot create the data directory {}: {error}; pass --data-dir", options.server.data_dir.display())
        })?;
    }
    let signer = AuditSigner::load_or_create(&key_file).map_err(|error| error.to_string())?;
    parts.tasks.push(tokio::spawn(checkpoint::run_registered(
        parts.database.clone(),
        signer,
        options.ledger.checkpoint_config(),
        parts.shutdown.clone(),
    )));
    Ok(Payments::new(parts.database.clone(), writer, parts.verifier.clone(), options.ledger.submit_timeout()))
}

/// Binds, prints the URL, serves until `shutdown` is cancelled, then drains.
pub async fn run(options: ServeOptions, service: Option<Service>, shutdown: CancellationToken) -> Result<(), String> {
    let built = build(&options, service, shutdown.clone()).await?;
    let file_limit = crate::connections::raise_file_limit();
    let connections = options.server.connection_limits(file_limit);
    tracing::info!(
        file_limit,
        connections_max = connections.total_max,
        per_address_max = connections.per_address_max,
        "connection caps"
    );
    let listen = options.server.listen;
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
    serve_router(listener, built.router, connections, async move { stop.cancelled().await })
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
/// serve` does (the benchmarks serve through this too): TCP_NODELAY on every
/// connection, since signaling frames and API answers are small and
/// latency-bound; the peer's address for per-address limits; connections
/// past `limits`' caps answered 503 `too_many_connections` and closed, so
/// that one client cannot take every file descriptor; a client that has not
/// sent a request's headers within the header read timeout disconnected; and
/// hyper's bare answers to requests it cannot parse given the JSON error
/// shape. On `stop` it accepts no more and waits for the requests in flight.
pub async fn serve_router(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: ConnectionLimits,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    let admission = Admission::new(limits);
    let graceful = GracefulShutdown::new();
    tokio::pin!(stop);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, most often: keep serving the connections there are.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(ACCEPT_RETRY_AFTER).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let admitted = match admission.admit(remote.ip()) {
            Ok(admitted) => admitted,
            Err(refused) => {
                tracing::debug!(client = %remote, cap = refused.as_str(), "connection refused");
                // One try, never waiting: a client that does not read gets nothing.
                let _ = stream.try_write(refused.response());
                // What the client already sent is read and dropped, so that
                // closing sends FIN after the answer rather than a reset
                // that can destroy it in flight.
                let mut scratch = [0u8; 4096];
                for _ in 0..4 {
                    if !matches!(stream.try_read(&mut scratch), Ok(read) if read > 0) {
                        break;
                    }
                }
                continue;
            }
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: axum::extract::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(remote));
            router.clone().oneshot(request)
        });
        let io = TokioIo::new(JsonParseErrors::new(stream));
        let connection = builder.serve_connection_with_upgrades(io, service).into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, client = %remote, "connection ended");
            }
            drop(admitted);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// How long a failed accept waits before the next (the failure is most
/// often the process's file limit, which only closing connections frees).
const ACCEPT_RETRY_AFTER: Duration = Duration::from_millis(50);

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::ServeCommand;

    fn options(args: &[&str]) -> ServeOptions {
        ServeCommand::parse_args(args.iter().map(OsString::from)).unwrap().options
    }

    /// `GET path` on `addr`: the status code and the body.
    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        try_get(addr, path).await.unwrap()
    }

    /// `GET path` on `addr`, or the I/O error (a refused connection may be
    /// reset before its answer is read).
    async fn try_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        let status = response.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
        let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
        Ok((status, body))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_whole_server_runs_in_process_and_stops() {
        let dir = tempfile::tempdir().unwrap();
        let options = options(&["--data-dir", dir.path().to_str().unwrap(), "--turn", "off"]);
        let shutdown = CancellationToken::new();
        let built = build(&options, None, shutdown.clone()).await.unwrap();
        assert!(built.payments.is_some() && built.turn.is_none());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = shutdown.clone();
        let limits = ConnectionLimits::unlimited(Duration::from_secs(1));
        let serving = tokio::spawn(serve_router(listener, built.router, limits, async move { stop.cancelled().await }));

        assert_eq!(get(addr, "/healthz").await.0, 200);
        let (status, doc) = get(addr, "/openapi.json").await;
        assert_eq!(status, 200);
        // The attributes spell the patterns out (utoipa takes literals only);
        // the server checks with these.
        let schemas: serde_json::Value = serde_json::from_str(&doc).unwrap();
        let pattern = |schema: &str, field: &str| {
            schemas["components"]["schemas"][schema]["properties"][field]["pattern"].clone()
        };
        assert_eq!(pattern("CodeRequest", "phone"), courier_accounts::phone::PHONE_PATTERN);
        assert_eq!(pattern("SignInRequest", "device_name"), courier_common::text::PRINTABLE_PATTERN);
        assert_eq!(pattern("ToAccount", "account_id"), courier_common::ids::UUID_PATTERN);
        for path in ["/v1/auth/codes", "/v1/transfers", "/v1/calls/history"] {
            assert!(doc.contains(path), "every service's routes are mounted: {path}");
        }
        assert_eq!(get(addr, "/no/such/route").await.0, 404);

        // A client that never finishes its headers is let go (the header
        // read timeout is 1 s here), and the server keeps answering others.
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: slow\r\n").await.unwrap();
        let mut rest = Vec::new();
        let ended = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut rest)).await;
        assert!(ended.is_ok(), "a connection without complete headers outlived the header read timeout");
        assert_eq!(get(addr, "/healthz").await.0, 200);

        shutdown.cancel();
        serving.await.unwrap().unwrap();
        for task in built.tasks {
            task.await.unwrap();
        }
        built.database.close().await;
    }

    /// A server in-process on a free port, with `args`.
    async fn serve(args: &[&str]) -> (SocketAddr, CancellationToken, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let mut all = vec!["--data-dir", dir.path().to_str().unwrap(), "--turn", "off"];
        all.extend_from_slice(args);
        let options = options(&all);
        let shutdown = CancellationToken::new();
        let built = build(&options, Some(Service::Accounts), shutdown.clone()).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = shutdown.clone();
        let limits = options.server.connection_limits(1_024);
        tokio::spawn(serve_router(listener, built.router, limits, async move { stop.cancelled().await }));
        (addr, shutdown, dir)
    }

    /// Writes `request` while reading the answer (the server may answer
    /// before it has read everything), until the server closes.
    async fn exchange(stream: tokio::net::TcpStream, request: Vec<u8>) -> String {
        let (mut reader, mut writer) = stream.into_split();
        let writing = tokio::spawn(async move {
            let _ = writer.write_all(&request).await;
            writer
        });
        let mut answer = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match tokio::time::timeout(Duration::from_secs(10), reader.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => answer.extend_from_slice(&chunk[..n]),
                Err(_) => panic!("no answer within 10 s; so far: {}", String::from_utf8_lossy(&answer)),
            }
        }
        drop(writing);
        String::from_utf8_lossy(&answer).into_owned()
    }

    async fn connect_from(source: &str, addr: SocketAddr) -> tokio::net::TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
        socket.connect(addr).await.unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_body_that_never_arrives_gets_408_body_timeout() {
        let (addr, shutdown, _dir) = serve(&["--body-read-timeout-s", "1"]).await;
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "POST /v1/auth/codes HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"phone\":"
        );
        let (mut reader, mut writer) = stream.into_split();
        writer.write_all(request.as_bytes()).await.unwrap();
        let mut answer = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), reader.read(&mut answer)).await.unwrap().unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
        assert!(answer.contains(r#""code":"body_timeout""#), "{answer}");
        drop(writer);
        shutdown.cancel();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_hyper_cannot_parse_get_the_json_error_shape() {
        let (addr, shutdown, _dir) = serve(&[]).await;
        let mut many = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n");
        for i in 0..2_000 {
            many.push_str(&format!("x-h{i}: 1\r\n"));
        }
        many.push_str("\r\n");
        let huge = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nx-big: {}\r\n\r\n", "a".repeat(1 << 20));
        let cases = [
            (many.into_bytes(), "431", "headers_too_large"),
            (huge.into_bytes(), "431", "headers_too_large"),
            (b"NOT HTTP AT ALL\r\n\r\n".to_vec(), "400", "invalid_request"),
        ];
        for (request, status, code) in cases {
            let answer = exchange(tokio::net::TcpStream::connect(addr).await.unwrap(), request).await;
            assert!(answer.starts_with(&format!("HTTP/1.1 {status} ")), "{answer}");
            assert!(answer.contains("content-type: application/json"), "{answer}");
            assert!(answer.contains(&format!(r#"{{"error":{{"code":"{code}","message":"#)), "{answer}");
        }
        assert_eq!(get(addr, "/healthz").await.0, 200);
        shutdown.cancel();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_past_the_caps_get_503_and_others_are_still_served() {
        let (addr, shutdown, _dir) =
            serve(&["--header-read-timeout-s", "60", "--connections-max", "8", "--connections-per-address-max", "3"])
                .await;
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(connect_from("127.0.0.2", addr).await);
        }
        let refused = exchange(connect_from("127.0.0.2", addr).await, Vec::new()).await;
        assert!(refused.starts_with("HTTP/1.1 503 "), "{refused}");
        assert!(refused.contains("retry-after: 1"), "{refused}");
        assert!(refused.contains(r#""code":"too_many_connections""#), "{refused}");
        assert_eq!(get(addr, "/healthz").await.0, 200, "another address is served");

        for source in ["127.0.0.3", "127.0.0.3", "127.0.0.3", "127.0.0.4", "127.0.0.4"] {
            held.push(connect_from(source, addr).await);
        }
        // Eight are open: the cap in all refuses everyone, this machine too.
        let refused = exchange(tokio::net::TcpStream::connect(addr).await.unwrap(), Vec::new()).await;
        assert!(refused.contains(r#""code":"too_many_connections""#), "{refused}");
        held.truncate(6);
        // The server sees the close when it next reads; give it the moment.
        let mut status = 0;
        for _ in 0..50 {
            status = try_get(addr, "/healthz").await.map_or(0, |(status, _)| status);
            if status == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(status, 200, "closed connections give their places back");
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_service_alone_needs_the_keys_to_verify_tokens_with() {
        let dir = tempfile::tempdir().unwrap();
        let options = options(&["--data-dir", dir.path().to_str().unwrap()]);
        let refused = build(&options, Some(Service::Payments), CancellationToken::new()).await.err().unwrap();
        assert!(refused.contains("--jwks-url"), "{refused}");
    }
}
