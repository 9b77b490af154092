//! A coturn `turnserver` of the test's own, on free loopback ports.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use rtc_stun::message::{BINDING_REQUEST, Message, TransactionId};
use tokio::net::UdpSocket;

/// A coturn `turnserver` of the test's own, from `deploy/turnserver.conf`
/// with the test's ports and secret, stopped when dropped.
pub struct Coturn {
    child: std::process::Child,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Coturn {
    pub fn start(secret: &str, extra: &[&str]) -> Coturn {
        let dir = tempfile::tempdir().unwrap();
        let port = free_udp_port();
        let relay_low = 20_000 + (port % 200) * 50;
        let sample = std::fs::read_to_string(repo_file("deploy/turnserver.conf")).unwrap();
        assert!(sample.contains("use-auth-secret") && sample.contains("no-multicast-peers"));
        let mut config: String = sample
            .lines()
            .map(|line| match line.split('=').next() {
                Some("listening-port") => format!("listening-port={port}"),
                Some("static-auth-secret") => format!("static-auth-secret={secret}"),
                Some("min-port") => format!("min-port={relay_low}"),
                Some("max-port") => format!("max-port={}", relay_low + 49),
                _ => line.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
        config.push_str(&format!(
            "\nlistening-ip=127.0.0.1\nrelay-ip=127.0.0.1\nno-tls\nno-dtls\nuserdb={}\npidfile={}\nlog-file={}\nsimple-log\n",
            path("turndb"),
            path("turnserver.pid"),
            path("turn.log"),
        ));
        for line in extra {
            config.push_str(line);
            config.push('\n');
        }
        std::fs::write(dir.path().join("turnserver.conf"), config).unwrap();
        let child = std::process::Command::new("turnserver")
            .args(["-c", &path("turnserver.conf")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("coturn's turnserver runs (Debian package coturn)");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        Coturn { child, addr, _dir: dir }
    }

    /// Waits until it answers STUN.
    pub async fn ready(&self) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut request = Message::new();
        request.build(&[Box::new(BINDING_REQUEST), Box::new(TransactionId::new())]).unwrap();
        let mut buffer = [0u8; 512];
        for _ in 0..100 {
            socket.send_to(&request.raw, self.addr).await.unwrap();
            if tokio::time::timeout(Duration::from_millis(100), socket.recv_from(&mut buffer)).await.is_ok() {
                return;
            }
        }
        panic!("coturn did not answer on {}", self.addr);
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_udp_port() -> u16 {
    loop {
        let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}
