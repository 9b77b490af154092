//! The HTTP server against greedy and slow clients, end to end: the real
//! binary, its own open-file limit, and 20,000 connections from one address.

use crate::support;

use std::time::Duration;

use support::{Db, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// How many slow connections one address opens.
const SLOW_CONNECTIONS: usize = 20_000;

/// The `name` counter's value in a Prometheus text page, summed over its labels matching `label`.
fn counter(metrics: &str, name: &str, label: &str) -> f64 {
    metrics
        .lines()
        .filter(|line| line.starts_with(name) && line.contains(label))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn open_file_limit(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits.lines().find(|line| line.starts_with("Max open files")).expect("a Max open files line");
    let numbers: Vec<u64> = line.split_whitespace().filter_map(|word| word.parse().ok()).collect();
    (numbers[0], numbers[1])
}

/// A client that opened a connection and sent half a request's headers.
async fn slow_client(server: std::net::SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind("127.0.0.2:0".parse().unwrap())?;
    let mut stream = socket.connect(server).await?;
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: slow\r\n").await?;
    Ok(stream)
}

/// 20,000 connections from one address that never finish their headers:
/// the server holds the per-address cap of them, answers the rest 503
/// `too_many_connections`, never runs out of file descriptors, and keeps
/// answering everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_slow_connections_from_one_address_do_not_stop_the_server() {
    // This process holds the connections' client ends: room for all of them
    // where the system allows (as root), the most it can otherwise.
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
    let wanted = (SLOW_CONNECTIONS as u64 + 2_048).max(soft);
    if rlimit::setrlimit(rlimit::Resource::NOFILE, wanted, wanted.max(hard)).is_err() {
        rlimit::increase_nofile_limit(u64::MAX).unwrap();
    }
    let (soft, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
    let slow_count = SLOW_CONNECTIONS.min(usize::try_from(soft).unwrap_or(usize::MAX).saturating_sub(1_024));

    let server = Server::start_with(Db::Sqlite, &["--header-read-timeout-s", "60"]).await;
    let (limit, hard_limit) = open_file_limit(server.pid());
    assert_eq!(limit, hard_limit, "the server raised its open-file limit to the hard limit");
    let addr: std::net::SocketAddr = server.url.trim_start_matches("http://").parse().unwrap();

    let mut held = Vec::with_capacity(slow_count);
    for _ in 0..slow_count {
        held.push(slow_client(addr).await.expect("a connection (refused ones are accepted, answered and closed)"));
    }
    // Meanwhile another client is served as usual.
    for _ in 0..5 {
        let (status, _) = server.get("/healthz", None).await;
        assert_eq!(status, 200);
    }
    // A connection past the cap is answered before it is closed.
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut refused = socket.connect(addr).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), refused.read_to_string(&mut answer)).await.unwrap().unwrap();
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(answer.contains(r#""code":"too_many_connections""#), "{answer}");

    let (status, metrics) = server.get("/metrics", None).await;
    assert_eq!(status, 200);
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    let refusals = counter(&metrics, "courier_connections_refused_total", r#"cap="per_address""#);
    assert!(refusals >= (slow_count - 512) as f64, "{refusals} refused of {slow_count}:\n{metrics}");
    assert!(!server.log().contains("cannot accept"), "the server ran out of file descriptors:\n{}", server.log());
    drop(held);
    let (status, _) = server.get("/healthz", None).await;
    assert_eq!(status, 200);
    server.finish().await;
}
