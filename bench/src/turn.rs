//! `courier bench turn`: packets relayed per second at 0 % loss by the
//! embedded TURN relay, by its floor (the same sockets with no TURN, see
//! [`serve_floor`]) and by coturn, on the same machine with the same load. Each session is two clients with an allocation each, bound to one
//! another by channels, sending Opus-sized packets (170 bytes) at Opus's
//! pace (one per 20 ms) both ways, as a relayed call does. The session count
//! grows step by step until packets are lost. Both relays run as child
//! processes on loopback with the same credentials; coturn runs from
//! `deploy/turnserver.conf` (with loopback peers allowed and no quotas, as
//! the load comes from loopback).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use courier_common::sync::lock;
use courier_turn::client::{TurnClient, channel_data};
use courier_turn::credentials::password;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::net::UdpSocket;
use tokio::process::{Child, Command};

pub const SECRET: &str = "courier-bench-turn-secret-0123";
const SAMPLE_CONFIG: &str = include_str!("../../deploy/turnserver.conf");
const SETUP_CONCURRENCY: usize = 32;
/// Time after a step's last send for its packets to arrive.
const DRAIN: Duration = Duration::from_millis(1_000);
/// A step losing more than this ends the run: the relay is saturated.
const STOP_LOSS_PCT: f64 = 1.0;
/// Latency is recorded for one packet in this many.
const LATENCY_SAMPLE_EVERY: u64 = 8;
const CHANNEL: u16 = 0x4000;

/// Where the benchmarks that compare with coturn find it.
#[derive(Args)]
pub struct CoturnArgs {
    /// coturn's `turnserver` executable (Debian package coturn).
    #[arg(long, default_value = "turnserver")]
    pub turnserver: PathBuf,
    /// Leave coturn out: measure Courier's own relay only.
    #[arg(long)]
    pub no_coturn: bool,
}

#[derive(Args)]
pub struct TurnBench {
    /// Session counts to step through (each session: two clients relaying to
    /// each other); a relay stops at its first step above 1 % loss. The
    /// steps reach past where the embedded relay loses packets on a
    /// two-core machine, so that its top rate is measured, not the ladder's.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "100,200,400,600,800,1000,1200,1400,1600,1800,2000,2200,2400,2800,3200"
    )]
    sessions: Vec<usize>,
    /// Packets per second each client sends (Opus with 20 ms frames: 50).
    #[arg(long, default_value_t = 50)]
    packet_rate: u32,
    /// Payload bytes per packet (an Opus frame with its RTP and SRTP overhead).
    #[arg(long, default_value_t = 170)]
    packet_bytes: usize,
    /// Seconds each step sends.
    #[arg(long, default_value_t = 5)]
    step_s: u64,
    #[command(flatten)]
    coturn: CoturnArgs,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

pub async fn run(bench: TurnBench) -> Result<(), String> {
    if bench.sessions.is_empty() || bench.packet_rate == 0 || !(16..=1_200).contains(&bench.packet_bytes) {
        return Err("--sessions needs at least one count, --packet-rate at least 1, --packet-bytes 16 to 1200".into());
    }
    let embedded = {
        let relay = Relay::embedded().await?;
        measure(&relay, &bench, "embedded").await?
    };
    let floor = {
        let relay = Relay::floor().await?;
        measure(&relay, &bench, "floor").await?
    };
    let coturn = if bench.coturn.no_coturn {
        None
    } else {
        let relay = Relay::coturn(&bench.coturn.turnserver).await?;
        Some(measure(&relay, &bench, "coturn").await?)
    };
    let best = |figures: &Value| figures["max_pps_at_zero_loss"].as_f64().unwrap_or(0.0);
    let mut figures = json!({
        "bench": "turn",
        "packet_bytes": bench.packet_bytes,
        "packet_rate": bench.packet_rate,
        "step_s": bench.step_s,
        "embedded": embedded,
    });
    let ours = best(&figures["embedded"]);
    let ratio = |theirs: &Value| {
        let ratio = if best(theirs) > 0.0 { ours / best(theirs) } else { 0.0 };
        json!((ratio * 100.0).round() / 100.0)
    };
    figures["ratio_to_floor"] = ratio(&floor);
    figures["floor"] = floor;
    if let Some(coturn) = coturn {
        figures["ratio_to_coturn"] = ratio(&coturn);
        figures["coturn"] = coturn;
    }
    if bench.json {
        println!("{figures}");
    } else {
        print_table(&figures);
    }
    Ok(())
}

fn print_table(figures: &Value) {
    for name in ["embedded", "floor", "coturn"] {
        let Some(relay) = figures.get(name) else { continue };
        println!("{name}: {} packets/s relayed at 0 % loss", relay["max_pps_at_zero_loss"]);
        println!(
            "  {:>8} {:>10} {:>10} {:>8} {:>10} {:>8} {:>8} {:>10}",
            "sessions", "sent", "received", "loss %", "pps", "p50 ms", "p99 ms", "cpu µs/pkt"
        );
        for step in relay["steps"].as_array().into_iter().flatten() {
            println!(
                "  {:>8} {:>10} {:>10} {:>8} {:>10} {:>8} {:>8} {:>10}",
                step["sessions"],
                step["sent"],
                step["received"],
                step["loss_pct"],
                step["pps"],
                step["latency_ms_p50"],
                step["latency_ms_p99"],
                step["cpu_us_per_packet"]
            );
        }
    }
    for (name, key) in [("floor", "ratio_to_floor"), ("coturn", "ratio_to_coturn")] {
        if let Some(ratio) = figures.get(key) {
            println!("embedded ÷ {name}: {ratio}");
        }
    }
}

/// A relay under load: a child process and where it listens.
/// A TURN relay running as a child process, using [`SECRET`].
pub struct Relay {
    child: Child,
    pub addr: SocketAddr,
    /// The floor relay, which speaks no TURN.
    floor: bool,
    _scratch: tempfile::TempDir,
}

impl Relay {
    async fn embedded() -> Result<Relay, String> {
        let scratch = tempfile::tempdir().map_err(|error| error.to_string())?;
        let (child, mut lines) = crate::support::spawn_serve(
            scratch.path(),
            &[
                "--turn-listen",
                "127.0.0.1:0",
                "--turn-secret",
                SECRET,
                "--turn-allow-peer",
                "127.0.0.1/32",
                "--turn-allocations-max",
                "100000",
                "--turn-allocations-per-user-max",
                "100000",
            ],
            None,
        )?;
        let mut addr: Option<SocketAddr> = None;
        while addr.is_none() {
            let line = crate::support::next_serve_line(&mut lines).await?;
            addr = line
                .strip_prefix("courier TURN relay on ")
                .and_then(|rest| rest.split(' ').next())
                .and_then(|addr| addr.parse().ok());
        }
        let addr = addr.ok_or("no TURN address")?;
        Ok(Relay { child, addr, floor: false, _scratch: scratch })
    }

    /// The floor relay, `courier bench turn-floor`, as a child process.
    async fn floor() -> Result<Relay, String> {
        use tokio::io::AsyncBufReadExt;
        let scratch = tempfile::tempdir().map_err(|error| error.to_string())?;
        let exe = std::env::current_exe().map_err(|error| error.to_string())?;
        let mut child = Command::new(exe)
            .args(["bench", "turn-floor"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|error| format!("cannot start the floor relay: {error}"))?;
        let mut lines = tokio::io::BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
        let line = crate::support::next_serve_line(&mut lines).await?;
        let addr = line
            .strip_prefix("turn floor on ")
            .and_then(|addr| addr.parse().ok())
            .ok_or_else(|| format!("the floor relay said: {line}"))?;
        Ok(Relay { child, addr, floor: true, _scratch: scratch })
    }

    /// coturn from `deploy/turnserver.conf` on a free loopback port, without
    /// quotas and with loopback peers allowed; returns once it answers.
    pub async fn coturn(turnserver: &PathBuf) -> Result<Relay, String> {
        let scratch = tempfile::tempdir().map_err(|error| error.to_string())?;
        let port = crate::support::free_port()?;
        let path = |name: &str| scratch.path().join(name).display().to_string();
        let mut config: Vec<String> = SAMPLE_CONFIG
            .lines()
            .map(|line| match line.split('=').next() {
                Some("listening-port") => format!("listening-port={port}"),
                Some("static-auth-secret") => format!("static-auth-secret={SECRET}"),
                // The load's many allocations come from one account on loopback.
                Some("user-quota") => "user-quota=0".into(),
                Some("total-quota") => "total-quota=0".into(),
                _ => line.to_owned(),
            })
            .collect();
        config.extend([
            "listening-ip=127.0.0.1".into(),
            "relay-ip=127.0.0.1".into(),
            "allow-loopback-peers".into(),
            "allowed-peer-ip=127.0.0.1".into(),
            "no-tls".into(),
            "no-dtls".into(),
            format!("userdb={}", path("turndb")),
            format!("pidfile={}", path("turnserver.pid")),
            format!("log-file={}", path("turn.log")),
            "simple-log".into(),
        ]);
        std::fs::write(path("turnserver.conf"), config.join("\n") + "\n").map_err(|error| error.to_string())?;
        let child = Command::new(turnserver)
            .args(["-c", &path("turnserver.conf")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|error| {
                format!("cannot start {} (Debian package coturn; or pass --no-coturn): {error}", turnserver.display())
            })?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let relay = Relay { child, addr, floor: false, _scratch: scratch };
        let mut probe = TurnClient::bind("127.0.0.1:0".parse().expect("an address"), addr, "", "")
            .await
            .map_err(|error| error.to_string())?;
        for _ in 0..50 {
            if tokio::time::timeout(Duration::from_millis(200), probe.binding())
                .await
                .is_ok_and(|answer| answer.is_ok())
            {
                return Ok(relay);
            }
        }
        Err(format!("coturn did not answer on {addr}"))
    }

    fn cpu_s(&self) -> f64 {
        self.child.id().map_or(0.0, crate::support::cpu_s)
    }
}

/// One session: two clients whose allocations relay to each other.
struct Session {
    sockets: [Arc<UdpSocket>; 2],
}

/// What the receivers count, per step.
struct Tally {
    received: Vec<AtomicU64>,
    latency: Mutex<Histogram<u64>>,
    started: Instant,
}

async fn open_session(server: SocketAddr, index: usize, tally: Arc<Tally>) -> Result<Session, String> {
    let expires = courier_common::time::now_s() + 3_600;
    let mut clients = Vec::with_capacity(2);
    for side in 0..2 {
        let username = format!("{expires}:bench-{index}-{side}");
        let credential = password(SECRET, &username);
        let mut client = TurnClient::bind("127.0.0.1:0".parse().expect("an address"), server, &username, &credential)
            .await
            .map_err(|error| error.to_string())?;
        let allocated = client.allocate().await.map_err(|error| format!("allocate: {error}"))?;
        clients.push((client, allocated.relayed));
    }
    let (a_relayed, b_relayed) = (clients[0].1, clients[1].1);
    clients[0].0.channel_bind(CHANNEL, b_relayed).await.map_err(|error| format!("channel bind: {error}"))?;
    clients[1].0.channel_bind(CHANNEL, a_relayed).await.map_err(|error| format!("channel bind: {error}"))?;
    let mut sockets = Vec::with_capacity(2);
    for (client, _) in clients {
        client.socket.connect(server).await.map_err(|error| error.to_string())?;
        let socket = Arc::new(client.socket);
        tokio::spawn(receive(socket.clone(), tally.clone()));
        sockets.push(socket);
    }
    let [a, b]: [Arc<UdpSocket>; 2] = sockets.try_into().map_err(|_| "two sockets")?;
    Ok(Session { sockets: [a, b] })
}

/// Counts what arrives on one client's socket: ChannelData carrying the
/// step number and the time it was sent.
async fn receive(socket: Arc<UdpSocket>, tally: Arc<Tally>) {
    let mut buffer = vec![0u8; 2_048];
    let mut count: u64 = 0;
    while let Ok(length) = socket.recv(&mut buffer).await {
        if length < 4 + 16 || buffer[0] & 0xc0 != 0x40 {
            continue;
        }
        let payload = &buffer[4..length];
        let step = u64::from_be_bytes(payload[..8].try_into().expect("8 bytes")) as usize;
        let sent_ns = u64::from_be_bytes(payload[8..16].try_into().expect("8 bytes"));
        if let Some(received) = tally.received.get(step) {
            received.fetch_add(1, Ordering::Relaxed);
        }
        count += 1;
        if count.is_multiple_of(LATENCY_SAMPLE_EVERY) {
            let now_ns = tally.started.elapsed().as_nanos() as u64;
            let _ = lock(&tally.latency).record(now_ns.saturating_sub(sent_ns) / 1_000);
        }
    }
}

/// Sends from both clients of a session at `rate` packets/s each until `until`.
async fn send(
    session: [Arc<UdpSocket>; 2],
    step: usize,
    rate: u32,
    bytes: usize,
    until: Instant,
    started: Instant,
    sent: Arc<AtomicU64>,
) {
    let period = Duration::from_secs_f64(1.0 / f64::from(rate));
    // A random phase, so sessions do not send in lockstep.
    tokio::time::sleep(period.mul_f64(rand::random::<f64>())).await;
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut payload = vec![0u8; bytes];
    payload[..8].copy_from_slice(&(step as u64).to_be_bytes());
    let mut frame = Vec::with_capacity(bytes + 4);
    let mut count = 0;
    loop {
        let tick = ticker.tick().await;
        if tick.into_std() >= until {
            break;
        }
        for socket in &session {
            payload[8..16].copy_from_slice(&(started.elapsed().as_nanos() as u64).to_be_bytes());
            channel_data(CHANNEL, &payload, &mut frame);
            if socket.send(&frame).await.is_ok() {
                count += 1;
            }
        }
    }
    sent.fetch_add(count, Ordering::Relaxed);
}

async fn measure(relay: &Relay, bench: &TurnBench, name: &str) -> Result<Value, String> {
    let tally = Arc::new(Tally {
        received: (0..bench.sessions.len()).map(|_| AtomicU64::new(0)).collect(),
        latency: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3).map_err(|error| error.to_string())?),
        started: Instant::now(),
    });
    let mut sessions: Vec<Session> = Vec::new();
    let mut steps = Vec::new();
    let mut best_pps = 0.0;
    for (step, &count) in bench.sessions.iter().enumerate() {
        if !bench.json {
            eprintln!("{name}: opening sessions up to {count}");
        }
        while sessions.len() < count {
            let batch = (count - sessions.len()).min(SETUP_CONCURRENCY);
            let opened = futures::future::join_all((0..batch).map(|i| {
                let (index, tally) = (sessions.len() + i, tally.clone());
                async move {
                    if relay.floor {
                        open_floor_session(relay.addr, index, tally).await
                    } else {
                        open_session(relay.addr, index, tally).await
                    }
                }
            }))
            .await;
            for session in opened {
                sessions.push(session.map_err(|error| format!("{name}: {error}"))?);
            }
        }
        lock(&tally.latency).reset();
        let sent = Arc::new(AtomicU64::new(0));
        let cpu_before = relay.cpu_s();
        let began = Instant::now();
        let until = began + Duration::from_secs(bench.step_s);
        let senders: Vec<_> = sessions
            .iter()
            .map(|session| {
                tokio::spawn(send(
                    session.sockets.clone(),
                    step,
                    bench.packet_rate,
                    bench.packet_bytes,
                    until,
                    tally.started,
                    sent.clone(),
                ))
            })
            .collect();
        for sender in senders {
            let _ = sender.await;
        }
        let elapsed = began.elapsed().as_secs_f64();
        tokio::time::sleep(DRAIN).await;
        let cpu = relay.cpu_s() - cpu_before;
        let sent = sent.load(Ordering::Relaxed);
        let received = tally.received[step].load(Ordering::Relaxed);
        let loss_pct = if sent > 0 { (sent.saturating_sub(received)) as f64 * 100.0 / sent as f64 } else { 0.0 };
        let pps = received as f64 / elapsed;
        let (p50, p99) = {
            let histogram = lock(&tally.latency);
            (histogram.value_at_quantile(0.5) as f64 / 1_000.0, histogram.value_at_quantile(0.99) as f64 / 1_000.0)
        };
        if received >= sent && pps > best_pps {
            best_pps = pps;
        }
        let figures = json!({
            "sessions": count,
            "sent": sent,
            "received": received,
            "loss_pct": (loss_pct * 1_000.0).round() / 1_000.0,
            "pps": pps.round(),
            "latency_ms_p50": (p50 * 100.0).round() / 100.0,
            "latency_ms_p99": (p99 * 100.0).round() / 100.0,
            "cpu_s": (cpu * 100.0).round() / 100.0,
            "cpu_us_per_packet": if received > 0 { (cpu * 1e6 / received as f64 * 10.0).round() / 10.0 } else { 0.0 },
        });
        if !bench.json {
            eprintln!("{name}: {figures}");
        }
        steps.push(figures);
        if loss_pct > STOP_LOSS_PCT {
            break;
        }
    }
    Ok(json!({ "steps": steps, "max_pps_at_zero_loss": best_pps.round() }))
}

/// What a floor client sends first: this, its session (4 bytes) and side (1).
const FLOOR_HELLO: &[u8] = b"courier-turn-floor";

/// The floor's listening socket's kernel buffers, as the embedded relay's.
const FLOOR_LISTENER_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// `courier bench turn-floor`: the TURN benchmark's floor relay.
#[derive(Args)]
pub struct FloorServer {}

/// The floor the embedded relay is measured against: the cheapest relay the
/// same sockets allow, with none of TURN. A client says hello (its session
/// and side) on the listening socket and gets a relayed socket of its own;
/// from then on every ChannelData it sends leaves its relayed socket for
/// its session's other relayed socket, and what a relayed socket receives
/// goes back to its client behind a ChannelData header, through the
/// listening socket: per packet the system calls of the embedded relay
/// (two receives, two sends), with no STUN, authentication, permission or
/// channel table. Serves until the process is ended; the first line of
/// standard output names the listening address.
pub async fn serve_floor(_: FloorServer) -> Result<(), String> {
    courier_server::connections::raise_file_limit();
    let listening = UdpSocket::bind("127.0.0.1:0").await.map_err(|error| error.to_string())?;
    // The embedded relay's listener buffers, so that both absorb the same bursts.
    let buffers = socket2::SockRef::from(&listening);
    buffers
        .set_recv_buffer_size(FLOOR_LISTENER_BUFFER_BYTES)
        .and_then(|()| buffers.set_send_buffer_size(FLOOR_LISTENER_BUFFER_BYTES))
        .map_err(|error| error.to_string())?;
    let listening = Arc::new(listening);
    println!("turn floor on {}", listening.local_addr().map_err(|error| error.to_string())?);
    // Each side's relayed address, by (session, side); each client's relayed
    // socket, side and its peer's relayed address, by client.
    let mut sides: std::collections::HashMap<(u32, u8), SocketAddr> = Default::default();
    let mut clients: std::collections::HashMap<SocketAddr, FloorClient> = Default::default();
    let mut buffer = vec![0u8; 2_048];
    loop {
        let Ok((length, client)) = listening.recv_from(&mut buffer).await else { continue };
        let packet = &buffer[..length];
        if let Some(hello) = packet.strip_prefix(FLOOR_HELLO)
            && hello.len() == 5
        {
            let side = (u32::from_be_bytes([hello[0], hello[1], hello[2], hello[3]]), hello[4]);
            if let std::collections::hash_map::Entry::Vacant(slot) = clients.entry(client) {
                let relayed = Arc::new(UdpSocket::bind("127.0.0.1:0").await.map_err(|error| error.to_string())?);
                sides.insert(side, relayed.local_addr().map_err(|error| error.to_string())?);
                tokio::spawn(floor_to_client(relayed.clone(), listening.clone(), client));
                slot.insert(FloorClient { relayed, side, peer: None });
            }
            let _ = listening.send_to(FLOOR_HELLO, client).await;
            continue;
        }
        if length < 4 || packet[0] & 0xc0 != 0x40 {
            continue;
        }
        let Some(FloorClient { relayed, side: (session, side), peer }) = clients.get_mut(&client) else { continue };
        if peer.is_none() {
            *peer = sides.get(&(*session, *side ^ 1)).copied();
        }
        if let Some(peer) = peer {
            let _ = socket2::SockRef::from(relayed.as_ref()).send_to(&packet[4..], &(*peer).into());
        }
    }
}

/// A client of the floor: its relayed socket, its (session, side), and its
/// peer's relayed address once that side has said hello.
struct FloorClient {
    relayed: Arc<UdpSocket>,
    side: (u32, u8),
    peer: Option<SocketAddr>,
}

/// What one relayed socket of the floor receives, back to its client.
async fn floor_to_client(relayed: Arc<UdpSocket>, listening: Arc<UdpSocket>, client: SocketAddr) {
    let mut buffer = vec![0u8; 4 + 2_048];
    while let Ok((length, _)) = relayed.recv_from(&mut buffer[4..]).await {
        buffer[..2].copy_from_slice(&CHANNEL.to_be_bytes());
        buffer[2..4].copy_from_slice(&(length as u16).to_be_bytes());
        let _ = listening.send_to(&buffer[..4 + length], client).await;
    }
}

/// One floor session: two clients, each with a relayed socket of the floor.
async fn open_floor_session(server: SocketAddr, index: usize, tally: Arc<Tally>) -> Result<Session, String> {
    let mut sockets = Vec::with_capacity(2);
    for side in 0..2u8 {
        let socket = UdpSocket::bind("127.0.0.1:0").await.map_err(|error| error.to_string())?;
        socket.connect(server).await.map_err(|error| error.to_string())?;
        let mut hello = FLOOR_HELLO.to_vec();
        hello.extend_from_slice(&(index as u32).to_be_bytes());
        hello.push(side);
        let mut answer = [0u8; 64];
        let mut answered = false;
        for _ in 0..10 {
            socket.send(&hello).await.map_err(|error| error.to_string())?;
            if let Ok(Ok(length)) = tokio::time::timeout(Duration::from_millis(200), socket.recv(&mut answer)).await
                && &answer[..length] == FLOOR_HELLO
            {
                answered = true;
                break;
            }
        }
        if !answered {
            return Err("the floor relay did not answer".into());
        }
        let socket = Arc::new(socket);
        tokio::spawn(receive(socket.clone(), tally.clone()));
        sockets.push(socket);
    }
    let [a, b]: [Arc<UdpSocket>; 2] = sockets.try_into().map_err(|_| "two sockets")?;
    Ok(Session { sockets: [a, b] })
}
