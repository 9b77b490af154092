//! `courier bench signaling`: pairs of devices in calls relaying
//! `candidates`-sized messages through the server with a window in flight,
//! idle authenticated connections held open, and invite → incoming latency.
//! The same load runs against the floor (`courier_signaling::floor`: the
//! same WebSocket stack, authenticated once, each frame passed to the peer
//! unparsed) and against the PeerJS server (npm package `peer`) when
//! `--peerjs` names its `peerjs` executable. Every server runs as a child
//! process on loopback, so its memory is measured alone.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Args;
use courier_accounts::phone::PhoneNumber;
use courier_accounts::tokens::{TokenIssuer, TokenKey};
use courier_protocol::{CallId, Candidates, ClientBody, ClientMessage, HangupReason, Sdp};
use futures::{FutureExt, SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Size of one relayed message on the wire, as a `candidates` message with one candidate.
const MESSAGE_BYTES: usize = 600;
const CONNECT_CONCURRENCY: usize = 64;
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Args)]
pub struct SignalingBench {
    /// Pairs of devices in calls, each relaying messages one way.
    #[arg(long, default_value_t = 100)]
    pairs: usize,
    /// Messages in flight per pair (sent, not yet delivered).
    #[arg(long, default_value_t = 8)]
    window: usize,
    /// At most this many relayed messages per server.
    #[arg(long, default_value_t = 500_000)]
    messages: u64,
    /// At most this long for each server's relay phase.
    #[arg(long, default_value_t = 10)]
    duration_s: u64,
    /// Idle authenticated connections to hold (memory per idle connection).
    #[arg(long, default_value_t = 10_000)]
    idle: usize,
    /// Sequential invites for the invite → incoming latency (Courier only).
    #[arg(long, default_value_t = 300)]
    invites: usize,
    /// The PeerJS server's `peerjs` executable (npm package `peer`); without it only Courier runs.
    #[arg(long, env = "COURIER_BENCH_PEERJS")]
    peerjs: Option<PathBuf>,
    /// Let the servers and the load generator share every core, rather than
    /// giving each server under test half of the CPUs and the generator the
    /// other half.
    #[arg(long)]
    no_pin: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// `(load generator, server)` CPUs, once this process is pinned.
    #[arg(skip)]
    cpus: Option<(Vec<usize>, Vec<usize>)>,
}

impl SignalingBench {
    /// Splits the CPUs (unless pinning is off or there is one CPU) and
    /// confines this process to the generator's half; the servers get the
    /// other half when they start.
    pub fn pin_load_generator(&mut self) -> Result<(), String> {
        if self.no_pin {
            return Ok(());
        }
        self.cpus = crate::support::affinity::split();
        match &self.cpus {
            Some((generator, _)) => crate::support::affinity::pin_this_thread(generator)
                .map_err(|error| format!("cannot pin the load generator to CPUs {generator:?}: {error}")),
            None => Ok(()),
        }
    }
}

/// The server under load, and how to speak to it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Courier,
    /// Courier's protocol and stack, with nothing between two devices.
    Floor,
    PeerJs,
}

struct Target {
    kind: Kind,
    child: Child,
    base: String,
    /// Courier: tokens for made-up devices, signed with the server's own key.
    issuer: Option<Arc<TokenIssuer>>,
    scratch: Option<tempfile::TempDir>,
}

pub async fn run(bench: SignalingBench) -> Result<(), String> {
    // main() has already confined this process to the generator's CPUs.
    let (generator_cpus, server_cpus) = bench.cpus.clone().unzip();
    let courier = measure(start_courier(server_cpus.as_deref()).await?, &bench).await?;
    let floor = measure(start_floor(server_cpus.as_deref()).await?, &bench).await?;
    let peerjs = match &bench.peerjs {
        Some(path) => Some(measure(start_peerjs(path, server_cpus.as_deref()).await?, &bench).await?),
        None => None,
    };
    let ratio = |ours: &Value, theirs: &Value, key: &str| match (ours[key].as_f64(), theirs[key].as_f64()) {
        (Some(ours), Some(theirs)) if ours > 0.0 => json!((theirs / ours * 100.0).round() / 100.0),
        _ => Value::Null,
    };
    let ratios = peerjs.as_ref().map(|peerjs| {
        json!({
            "msgs_per_s_courier_over_peerjs": ratio(peerjs, &courier, "msgs_per_s"),
            "p99_courier_over_peerjs": ratio(peerjs, &courier, "delivery_ms_p99"),
            "memory_per_idle_courier_over_peerjs": ratio(peerjs, &courier, "memory_per_idle_kib"),
        })
    });
    let to_floor = json!({
        "msgs_per_s_courier_over_floor": ratio(&floor, &courier, "msgs_per_s"),
        "p99_courier_over_floor": ratio(&floor, &courier, "delivery_ms_p99"),
    });
    let figures = json!({
        "bench": "signaling",
        "server_cpus": server_cpus,
        "load_generator_cpus": generator_cpus,
        "pairs": bench.pairs,
        "window": bench.window,
        "message_bytes": MESSAGE_BYTES,
        "idle_connections": bench.idle,
        "courier": courier,
        "floor": floor,
        "peerjs": peerjs,
        "ratios": ratios,
        "ratios_to_floor": to_floor,
    });
    if bench.json {
        println!("{figures}");
    } else {
        for side in ["courier", "floor", "peerjs"] {
            if let Some(values) = figures[side].as_object() {
                println!("{side}");
                for (name, value) in values {
                    println!("  {name:<32} {value}");
                }
            }
        }
        for group in ["ratios", "ratios_to_floor"] {
            if let Some(ratios) = figures[group].as_object() {
                for (name, value) in ratios {
                    println!("{name:<36} {value}");
                }
            }
        }
    }
    Ok(())
}

async fn measure(mut target: Target, bench: &SignalingBench) -> Result<Value, String> {
    let result = measure_inner(&mut target, bench).await;
    let _ = target.child.kill().await;
    let _ = target.child.wait().await;
    result
}

async fn measure_inner(target: &mut Target, bench: &SignalingBench) -> Result<Value, String> {
    let name = match target.kind {
        Kind::Courier => "courier",
        Kind::Floor => "floor",
        Kind::PeerJs => "peerjs",
    };
    let pid = target.child.id().ok_or("the server exited")?;
    // Idle connections first, on the fresh server: its memory before and
    // after holding them. They stay open through the relay phase.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before_kib = rss_kib(pid)?;
    let idle = open_idle(target, bench.idle).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_kib = rss_kib(pid)?;
    let held = idle.len();
    if !bench.json {
        eprintln!("{name}: holding {held} idle connections, server RSS {before_kib} → {after_kib} KiB");
    }

    // Relay: pairs in calls, each with a window of messages in flight.
    let names: Vec<String> = (0..bench.pairs).flat_map(pair_names).collect();
    ensure_accounts(target, &names.iter().map(String::as_str).collect::<Vec<_>>()).await?;
    let mut pairs = Vec::with_capacity(bench.pairs);
    for index in 0..bench.pairs {
        pairs.push(open_pair(target, index).await?);
    }
    let remaining = Arc::new(AtomicU64::new(bench.messages));
    let cpu_before = crate::support::cpu_s(pid);
    let generator_cpu_before = crate::support::cpu_s(std::process::id());
    let started = Instant::now();
    let deadline = started + Duration::from_secs(bench.duration_s.max(1));
    let tasks: Vec<_> = pairs
        .into_iter()
        .map(|pair| tokio::spawn(relay(pair, target.kind, bench.window.max(1), remaining.clone(), deadline)))
        .collect();
    let mut latency = new_histogram();
    let mut ack_latency = new_histogram();
    let mut delivered = 0u64;
    for task in tasks {
        let (pair_latency, pair_ack_latency, pair_delivered) = task.await.map_err(|error| error.to_string())??;
        latency.add(pair_latency).map_err(|error| error.to_string())?;
        ack_latency.add(pair_ack_latency).map_err(|error| error.to_string())?;
        delivered += pair_delivered;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_s = crate::support::cpu_s(pid) - cpu_before;
    let generator_cpu_s = crate::support::cpu_s(std::process::id()) - generator_cpu_before;
    if !bench.json {
        eprintln!("{name}: {delivered} messages relayed in {elapsed:.1} s");
    }

    let mut figures = json!({
        "msgs_per_s": (delivered as f64 / elapsed).round(),
        "delivered": delivered,
        "delivery_ms_p50": ms(latency.value_at_quantile(0.50)),
        "delivery_ms_p99": ms(latency.value_at_quantile(0.99)),
        "delivery_ms_max": ms(latency.max()),
        // The server's CPU (user and system, every thread) over the relay phase.
        "server_cpu_us_per_msg": (cpu_s * 1e6 / delivered.max(1) as f64 * 100.0).round() / 100.0,
        // The same for the load generator (this process), and how busy each side's cores were.
        "load_generator_cpu_us_per_msg": (generator_cpu_s * 1e6 / delivered.max(1) as f64 * 100.0).round() / 100.0,
        "server_cpu_busy": (cpu_s / elapsed * 100.0).round() / 100.0,
        "load_generator_cpu_busy": (generator_cpu_s / elapsed * 100.0).round() / 100.0,
        "idle_held": held,
        "server_rss_before_idle_kib": before_kib,
        "server_rss_with_idle_kib": after_kib,
        "memory_per_idle_kib": ((after_kib.saturating_sub(before_kib)) as f64 / held.max(1) as f64 * 100.0).round() / 100.0,
    });
    if target.kind == Kind::Courier {
        // From the message's write to its ack's read, at the sender.
        figures["ack_ms_p50"] = json!(ms(ack_latency.value_at_quantile(0.50)));
        figures["ack_ms_p99"] = json!(ms(ack_latency.value_at_quantile(0.99)));
    }
    if target.kind == Kind::Courier && bench.invites > 0 {
        let invite = invite_latency(target, bench.invites).await?;
        figures["invite_incoming_ms_p50"] = json!(ms(invite.value_at_quantile(0.50)));
        figures["invite_incoming_ms_p99"] = json!(ms(invite.value_at_quantile(0.99)));
    }
    drop(idle);
    Ok(figures)
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new(3).expect("3 significant figures is a valid precision")
}

fn ms(micros: u64) -> f64 {
    (micros as f64 / 10.0).round() / 100.0
}

fn rss_kib(pid: u32) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|error| error.to_string())?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| "no VmRSS in /proc".to_owned())
}

async fn start_courier(cpus: Option<&[usize]>) -> Result<Target, String> {
    let scratch = tempfile::tempdir().map_err(|error| error.to_string())?;
    let key = TokenKey::load_or_create(&scratch.path().join("token-signing-key.pem")).map_err(|e| e.to_string())?;
    let issuer = Arc::new(TokenIssuer::new(key, vec![], 3_600));
    // Calls' media is not measured here: no TURN relay.
    let (child, mut lines) = crate::support::spawn_serve(
        scratch.path(),
        &[
            "--turn",
            "off",
            "--ws-messages-per-s",
            "1000000",
            "--ws-messages-burst",
            "1000000",
            "--ws-outbound-queue-len-max",
            "1024",
        ],
        cpus,
    )?;
    let line = crate::support::next_serve_line(&mut lines).await?;
    let base = line.strip_prefix("courier listening on ").ok_or("unexpected first line")?.replacen("http", "ws", 1);
    Ok(Target { kind: Kind::Courier, child, base, issuer: Some(issuer), scratch: Some(scratch) })
}

/// The floor relay, `courier bench signaling-floor`, trusting the tokens of
/// a key of its own.
async fn start_floor(cpus: Option<&[usize]>) -> Result<Target, String> {
    let scratch = tempfile::tempdir().map_err(|error| error.to_string())?;
    let key = TokenKey::load_or_create(&scratch.path().join(FLOOR_KEY_FILE)).map_err(|e| e.to_string())?;
    let issuer = Arc::new(TokenIssuer::new(key, vec![], 3_600));
    let exe = std::env::current_exe().map_err(|error| error.to_string())?;
    let mut command = Command::new(exe);
    crate::support::affinity::confine(&mut command, cpus);
    let mut child = command
        .args(["bench", "signaling-floor", "--data-dir"])
        .arg(scratch.path())
        .env("COURIER_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| format!("cannot start the floor relay: {error}"))?;
    let mut lines = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
    let line = crate::support::next_serve_line(&mut lines).await?;
    let base = line.strip_prefix("floor listening on ").ok_or("unexpected first line")?.replacen("http", "ws", 1);
    Ok(Target { kind: Kind::Floor, child, base, issuer: Some(issuer), scratch: None })
}

/// Where the floor relay finds the key whose tokens it trusts.
const FLOOR_KEY_FILE: &str = "floor-token-key.pem";

/// `courier bench signaling-floor`: the floor relay's process.
#[derive(Args)]
pub struct FloorServer {
    /// The directory holding the key whose tokens the relay trusts.
    #[arg(long)]
    data_dir: PathBuf,
}

/// Serves the floor relay on a free loopback port, named on the first line
/// of standard output, until the process is ended.
pub async fn serve_floor(server: FloorServer) -> Result<(), String> {
    courier_server::connections::raise_file_limit();
    let key = TokenKey::load(&server.data_dir.join(FLOOR_KEY_FILE)).map_err(|e| e.to_string())?;
    let jwks = TokenIssuer::new(key, vec![], 3_600).jwks();
    let verifier = Arc::new(courier_accounts::tokens::TokenVerifier::from_jwks(&jwks).map_err(|e| e.to_string())?);
    let bytes_max = courier_signaling::SignalingConfig::default().ws_message_bytes_max;
    let router = courier_common::http::stack(
        courier_signaling::floor::app(verifier, bytes_max),
        courier_common::http::HttpLimits::default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|error| error.to_string())?;
    let addr = listener.local_addr().map_err(|error| error.to_string())?;
    println!("floor listening on http://{addr}");
    courier_server::serve_router(listener, router, crate::support::connection_limits(), std::future::pending())
        .await
        .map_err(|error| error.to_string())
}

async fn start_peerjs(path: &PathBuf, cpus: Option<&[usize]>) -> Result<Target, String> {
    let port = crate::support::free_port()?;
    let mut command = Command::new(path);
    crate::support::affinity::confine(&mut command, cpus);
    let mut child = command
        .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--concurrent_limit", "1000000"])
        .args(["--alive_timeout", "3600000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| format!("cannot start {}: {error}", path.display()))?;
    let mut lines = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
    let line = tokio::time::timeout(STEP_TIMEOUT, lines.next_line())
        .await
        .map_err(|_| "peerjs did not start")?
        .map_err(|error| error.to_string())?
        .ok_or("peerjs exited")?;
    if !line.contains("Started PeerServer") {
        return Err(format!("peerjs said: {line}"));
    }
    // It logs every connection; keep reading so its stdout never blocks.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Target { kind: Kind::PeerJs, child, base: format!("ws://127.0.0.1:{port}"), issuer: None, scratch: None })
}

async fn connect(url: &str) -> Result<Ws, String> {
    // A small read buffer (the load generator holds thousands of sockets
    // too); writes wait for a flush, so refilling a window is one write.
    let config = WebSocketConfig::default().read_buffer_size(4 * 1024).write_buffer_size(16 * 1024);
    let (ws, _) =
        tokio::time::timeout(STEP_TIMEOUT, tokio_tungstenite::connect_async_with_config(url, Some(config), true))
            .await
            .map_err(|_| format!("connecting to {url} timed out"))?
            .map_err(|error| format!("cannot connect to {url}: {error}"))?;
    Ok(ws)
}

/// A Courier client message as the text frame it travels in.
fn courier_frame(id: &str, body: ClientBody) -> String {
    ClientMessage { id: id.to_owned(), body }.encode()
}

/// The SDP the bench's made-up devices offer and answer.
fn sdp() -> Sdp {
    Sdp::parse("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n").expect("a valid session description")
}

/// The next text frame, skipping pings.
async fn next_text(ws: &mut Ws) -> Result<String, String> {
    loop {
        match tokio::time::timeout(STEP_TIMEOUT, ws.next()).await.map_err(|_| "no frame in time")? {
            Some(Ok(Message::Text(text))) => return Ok(text.to_string()),
            Some(Ok(Message::Close(frame))) => return Err(format!("closed: {frame:?}")),
            Some(Ok(_)) => continue,
            Some(Err(error)) => return Err(error.to_string()),
            None => return Err("closed".into()),
        }
    }
}

async fn expect_type(ws: &mut Ws, kind: &str) -> Result<Value, String> {
    loop {
        let text = next_text(ws).await?;
        let value: Value = serde_json::from_str(&text).map_err(|error| error.to_string())?;
        if value["type"] == kind {
            return Ok(value);
        }
        if value["type"] == "error" || value["type"] == "ERROR" {
            return Err(format!("the server refused: {value}"));
        }
    }
}

fn token(target: &Target, account: &str) -> String {
    let now_s = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    target.issuer.as_ref().map(|issuer| issuer.issue(account, account, "RU", now_s)).unwrap_or_default()
}

/// An authenticated connection for the made-up device `name`.
async fn open_device(target: &Target, name: &str) -> Result<Ws, String> {
    match target.kind {
        Kind::Courier | Kind::Floor => {
            let mut ws = connect(&format!("{}/v1/calls/ws", target.base)).await?;
            let auth = courier_frame("auth", ClientBody::Auth { token: token(target, name) });
            ws.send(Message::text(auth)).await.map_err(|error| error.to_string())?;
            expect_type(&mut ws, "ack").await?;
            Ok(ws)
        }
        Kind::PeerJs => {
            let mut ws = connect(&format!("{}/peerjs?key=peerjs&id={name}&token=t{name}", target.base)).await?;
            expect_type(&mut ws, "OPEN").await?;
            Ok(ws)
        }
    }
}

struct Pair {
    a: Ws,
    b: Ws,
    b_name: String,
    call_id: String,
}

/// Two devices in a call (Courier: invite and answer; PeerJS has no calls).
async fn open_pair(target: &Target, index: usize) -> Result<Pair, String> {
    let [a_name, b_name] = pair_names(index);
    let mut a = open_device(target, &a_name).await?;
    let mut b = open_device(target, &b_name).await?;
    let call_id = format!("bench-call-{index}");
    if target.kind == Kind::Courier {
        let id = CallId::parse(&call_id)?;
        let invite = ClientBody::Invite { call_id: id.clone(), callee: b_name.clone(), sdp: sdp(), sas_commit: None };
        a.send(Message::text(courier_frame("i", invite))).await.map_err(|error| error.to_string())?;
        expect_type(&mut a, "ack").await?;
        expect_type(&mut b, "incoming").await?;
        let answer = ClientBody::Answer { call_id: id, sdp: sdp(), sas_nonce: None };
        b.send(Message::text(courier_frame("a", answer))).await.map_err(|error| error.to_string())?;
        expect_type(&mut b, "ack").await?;
        expect_type(&mut a, "answered").await?;
    }
    Ok(Pair { a, b, b_name, call_id })
}

/// The two accounts of pair `index`, named as the accounts service names
/// accounts (a UUID: the server looks up no other form).
fn pair_names(index: usize) -> [String; 2] {
    [bench_account(0xa, index), bench_account(0xb, index)]
}

fn bench_account(group: u8, index: usize) -> String {
    format!("0000000{group:x}-0000-7000-8000-{index:012x}")
}

/// Courier looks callees up in its accounts: the bench's made-up accounts
/// are written into the server's store directly.
async fn ensure_accounts(target: &Target, names: &[&str]) -> Result<(), String> {
    let Some(scratch) = &target.scratch else { return Ok(()) };
    let url = courier_common::Database::sqlite_url(&scratch.path().join("courier.db"));
    let database = courier_common::Database::connect(&url, 1).await.map_err(|error| error.to_string())?;
    let phones: Vec<PhoneNumber> = names
        .iter()
        .enumerate()
        .map(|(offset, name)| {
            let digits = name.bytes().fold(offset as u64, |acc, b| acc.wrapping_mul(31).wrapping_add(u64::from(b)));
            PhoneNumber::from_stored(format!("+7916{:07}", digits % 10_000_000), "RU".into())
        })
        .collect();
    let accounts: Vec<(&str, &PhoneNumber)> = names.iter().copied().zip(&phones).collect();
    let inserted = courier_accounts::store::insert_accounts(&database, &accounts, 0).await;
    database.close().await;
    inserted.map_err(|error| error.to_string())
}

/// A relayed frame of about [`MESSAGE_BYTES`], with `"seq":0` for the caller to replace.
fn relay_template(kind: Kind, pair: &Pair) -> String {
    let candidate = |pad: usize| json!({"candidate": format!("candidate:842163049 1 udp 1677729535 127.0.0.1 40000 typ srflx raddr 0.0.0.0 rport 0 generation 0 {}", "x".repeat(pad)), "sdpMid": "0", "sdpMLineIndex": 0, "seq": 0});
    let build = |pad: usize| {
        match kind {
        Kind::Courier | Kind::Floor => {
            let call_id = CallId::parse(&pair.call_id).expect("the bench's call ids are valid");
            let candidates = Candidates::from_values(&[candidate(pad)]).expect("one candidate object");
            courier_frame("s", ClientBody::Candidates { call_id, candidates })
        }
        Kind::PeerJs => json!({"type": "CANDIDATE", "dst": pair.b_name, "payload": {"candidate": candidate(pad), "type": "media", "connectionId": pair.call_id}}).to_string(),
    }
    };
    let unpadded = build(0).len();
    build(MESSAGE_BYTES.saturating_sub(unpadded))
}

/// The `"seq":N` a relayed frame carries.
fn seq_of(text: &str) -> Option<u64> {
    let at = text.find("\"seq\":")? + 6;
    let digits: String = text[at..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// One pair's relay loop: keep `window` messages in flight from A to B until
/// the shared budget or the deadline runs out. A's acks (Courier's, one per
/// message, in order) are timed from the message's write.
/// Frames that have already arrived are handled together and the freed
/// window refilled with one flush, so the load generator spends little of
/// the machine's CPU per message (it shares the cores with the server).
async fn relay(
    pair: Pair,
    kind: Kind,
    window: usize,
    remaining: Arc<AtomicU64>,
    deadline: Instant,
) -> Result<(Histogram<u64>, Histogram<u64>, u64), String> {
    let template = relay_template(kind, &pair);
    let (head, tail) = template.split_once("\"seq\":0").ok_or("the template has a seq")?;
    let (head, tail) = (format!("{head}\"seq\":"), tail.to_owned());
    let Pair { mut a, mut b, .. } = pair;
    let mut in_flight: VecDeque<(u64, Instant)> = VecDeque::with_capacity(window);
    let mut latency = new_histogram();
    let mut ack_latency = new_histogram();
    let mut unacked: VecDeque<Instant> = VecDeque::new();
    let acked = kind == Kind::Courier;
    let (mut seq, mut delivered) = (0u64, 0u64);
    let give_up = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline + Duration::from_secs(5)));
    tokio::pin!(give_up);
    // A delivered frame retires every message sent up to its own.
    let mut arrived = |text: &str, in_flight: &mut VecDeque<(u64, Instant)>| {
        let Some(got) = seq_of(text) else { return };
        while let Some((sent, at)) = in_flight.pop_front() {
            if sent == got {
                let _ = latency.record(at.elapsed().as_micros() as u64);
                delivered += 1;
                break;
            }
        }
    };
    loop {
        let mut fed = false;
        while in_flight.len() < window
            && Instant::now() < deadline
            && remaining.fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| left.checked_sub(1)).is_ok()
        {
            let text = format!("{head}{seq}{tail}");
            a.feed(Message::text(text)).await.map_err(|error| error.to_string())?;
            let now = Instant::now();
            in_flight.push_back((seq, now));
            if acked {
                unacked.push_back(now);
            }
            seq += 1;
            fed = true;
        }
        if fed {
            a.flush().await.map_err(|error| error.to_string())?;
        }
        if in_flight.is_empty() {
            break;
        }
        tokio::select! {
            next = b.next() => drain(next, &mut b, "B", |text| arrived(text, &mut in_flight))?,
            next = a.next() => drain(next, &mut a, "A", |_| {
                if let Some(sent) = unacked.pop_front() {
                    let _ = ack_latency.record(sent.elapsed().as_micros() as u64);
                }
            })?,
            () = &mut give_up => break,
        }
    }
    Ok((latency, ack_latency, delivered))
}

/// Hands `each` the text of `first` and of every frame already waiting on
/// `ws`, without waiting for more.
fn drain(
    first: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ws: &mut Ws,
    side: &str,
    mut each: impl FnMut(&str),
) -> Result<(), String> {
    let mut next = first;
    loop {
        match next {
            Some(Ok(Message::Text(text))) => each(&text),
            Some(Ok(_)) => {}
            Some(Err(error)) => return Err(error.to_string()),
            None => return Err(format!("{side}'s connection closed")),
        }
        match ws.next().now_or_never() {
            Some(more) => next = more,
            None => return Ok(()),
        }
    }
}

/// `count` idle authenticated connections, opened a few dozen at a time.
async fn open_idle(target: &Target, count: usize) -> Result<Vec<Ws>, String> {
    let opened: Vec<Result<Ws, String>> = futures::stream::iter(0..count)
        .map(|index| async move { open_device(target, &bench_account(0xc, index)).await })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .collect()
        .await;
    opened.into_iter().collect()
}

/// Invite → incoming latency over `count` sequential calls between two devices.
async fn invite_latency(target: &Target, count: usize) -> Result<Histogram<u64>, String> {
    let (a_name, b_name) = (bench_account(0xd, 0), bench_account(0xd, 1));
    ensure_accounts(target, &[&a_name, &b_name]).await?;
    let mut a = open_device(target, &a_name).await?;
    let mut b = open_device(target, &b_name).await?;
    let mut latency = new_histogram();
    for index in 0..count {
        let call_id = CallId::parse(&format!("bench-invite-{index}"))?;
        let invite =
            ClientBody::Invite { call_id: call_id.clone(), callee: b_name.clone(), sdp: sdp(), sas_commit: None };
        let sent = Instant::now();
        a.send(Message::text(courier_frame("i", invite))).await.map_err(|error| error.to_string())?;
        expect_type(&mut b, "incoming").await?;
        let _ = latency.record(sent.elapsed().as_micros() as u64);
        expect_type(&mut a, "ack").await?;
        let hangup = ClientBody::Hangup { call_id, reason: HangupReason::UserHangup };
        a.send(Message::text(courier_frame("h", hangup))).await.map_err(|error| error.to_string())?;
        expect_type(&mut a, "ack").await?;
        expect_type(&mut b, "hangup").await?;
    }
    Ok(latency)
}
