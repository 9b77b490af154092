//! What Courier does when what it depends on fails under it: PostgreSQL
//! crashing and coming back under transfer load, Redis restarting under two
//! signaling nodes, the disk under SQLite filling up. Transfer clients behave as the API
//! asks (on 503 they wait `Retry-After` and retry with the same
//! `Idempotency-Key`); meanwhile the only answers are 201 and 503 with
//! `Retry-After`, nothing acknowledged is lost, no retry applies twice, the
//! ledger reconciles, and transfers succeed again on their own once the
//! database is back.

use crate::support;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use support::ws::{Phone, sdp};
use support::{Db, Server, Session, free_tcp_port};

const CLIENTS: usize = 16;

/// A PostgreSQL cluster of the test's own (initdb in a temporary directory,
/// on a free port), which the test may stop and start.
struct PrivatePostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl PrivatePostgres {
    fn start() -> PrivatePostgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL's server binaries under /usr/lib/postgresql")
            .filter_map(|entry| entry.ok().map(|entry| entry.path().join("bin")))
            .filter(|bin| bin.join("pg_ctl").exists())
            .max()
            .expect("a PostgreSQL version with pg_ctl");
        let dir = tempfile::Builder::new().prefix("courier-pg-").tempdir().unwrap();
        let postgres = PrivatePostgres { dir, bin, port: free_tcp_port() };
        if Self::is_root() {
            let status = std::process::Command::new("chown")
                .args(["-R", "postgres:postgres", postgres.dir.path().to_str().unwrap()])
                .status()
                .unwrap();
            assert!(status.success());
        }
        let status = postgres
            .command("initdb")
            .args(["-D", postgres.data().to_str().unwrap(), "-A", "trust", "-U", "postgres", "--no-sync"])
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "initdb");
        postgres.pg_ctl(&["start"]);
        postgres
    }

    /// PostgreSQL refuses to run as root: then its files and processes belong
    /// to the `postgres` user.
    fn is_root() -> bool {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/self").is_ok_and(|this| this.uid() == 0)
    }

    fn command(&self, program: &str) -> std::process::Command {
        let path = self.bin.join(program);
        if Self::is_root() {
            let mut command = std::process::Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            std::process::Command::new(path)
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn pg_ctl(&self, action: &[&str]) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("postgres.log");
        let status = self
            .command("pg_ctl")
            .args(["-D", self.data().to_str().unwrap(), "-l", log.to_str().unwrap(), "-w", "-t", "30"])
            .args(["-o", &options])
            .args(action)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "pg_ctl {action:?}");
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// As a crash: no shutdown checkpoint, recovery from the WAL at start.
    fn crash(&self) {
        self.pg_ctl(&["-m", "immediate", "stop"]);
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args(["-D", self.data().to_str().unwrap(), "-m", "immediate", "stop"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// One transfer as a client saw it through every retry.
#[derive(Debug, Default)]
struct Outcome {
    /// `(status, Retry-After)` of each answer before the last.
    refusals: Vec<(u16, Option<String>)>,
    /// The last answer: 201 and its transfer id, or what else came.
    last: Option<(u16, String)>,
    answered_at: Option<Instant>,
}

async fn transfer_until_answered(
    http: &reqwest::Client,
    url: &str,
    from: &Session,
    to: &Session,
    key: &str,
) -> Outcome {
    let body = json!({"to": {"account_id": to.account_id}, "amount": "1.00", "currency": "RUB"});
    let mut outcome = Outcome::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let sent = http
            .post(format!("{url}/v1/transfers"))
            .bearer_auth(&from.access_token)
            .header("idempotency-key", key)
            .json(&body)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(error) => panic!("the server stopped answering: {error}"),
        };
        let status = response.status().as_u16();
        let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let text = response.text().await.unwrap_or_default();
        if status == 503 {
            outcome.refusals.push((status, retry_after.clone()));
            let wait: u64 = retry_after.and_then(|v| v.parse().ok()).unwrap_or(1);
            tokio::time::sleep(Duration::from_secs(wait.min(2))).await;
            continue;
        }
        outcome.last = Some((status, text));
        outcome.answered_at = Some(Instant::now());
        return outcome;
    }
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_crashing_under_transfer_load_loses_nothing_and_recovers() {
    let postgres = PrivatePostgres::start();
    let server = Server::start_on(postgres.url(), &["--sign-in-codes-per-addr-per-hour-max", "0"]).await;
    let admin = server.bootstrap_admin();
    let users = server.sign_in_many(CLIENTS).await;
    for user in &users {
        let money =
            json!({"account_id": user.account_id, "amount": "1000.00", "currency": "RUB", "external_ref": "seed"});
        let (status, body, _) = server.post_keyed("/admin/v1/deposits", &admin, &user.account_id, money).await;
        assert_eq!(status, 201, "{body}");
    }

    let stop = Arc::new(AtomicBool::new(false));
    let outcomes: Arc<Mutex<Vec<(String, Outcome)>>> = Arc::default();
    let mut clients = Vec::new();
    for (index, from) in users.iter().cloned().enumerate() {
        let to = users[(index + 1) % users.len()].clone();
        let (stop, outcomes, http, url) = (stop.clone(), outcomes.clone(), server.http.clone(), server.url.clone());
        clients.push(tokio::spawn(async move {
            let mut sequence = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("fault-{index}-{sequence}");
                sequence += 1;
                let outcome = transfer_until_answered(&http, &url, &from, &to, &key).await;
                outcomes.lock().unwrap().push((key, outcome));
            }
        }));
    }

    tokio::time::sleep(Duration::from_secs(2)).await;
    let acknowledged_before = outcomes.lock().unwrap().len();
    postgres.crash();
    let down_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    postgres.pg_ctl(&["start"]);
    let up_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }

    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    // Transfers succeed again by themselves: the first answered after the
    // database came back.
    let recovered_after = outcomes
        .iter()
        .filter_map(|(_, outcome)| outcome.answered_at)
        .filter(|at| *at > up_at)
        .map(|at| at - up_at)
        .min()
        .expect("transfers succeed again after the database's return");
    let mut acknowledged: HashMap<String, String> = HashMap::new();
    let mut retried = 0;
    for (key, outcome) in &outcomes {
        for (status, retry_after) in &outcome.refusals {
            assert!(*status == 503 && retry_after.is_some(), "{key}: {status} without Retry-After");
        }
        retried += usize::from(!outcome.refusals.is_empty());
        let (status, text) = outcome.last.as_ref().unwrap_or_else(|| panic!("{key} never answered: {outcome:?}"));
        assert_eq!(*status, 201, "{key}: only 201 or 503 while the database restarts: {text}");
        let body: serde_json::Value = serde_json::from_str(text).unwrap();
        acknowledged.insert(key.clone(), body["transfer_id"].as_str().unwrap().to_owned());
    }
    assert!(retried > 0, "some requests met the outage: {} answered before it", acknowledged_before);

    // Nothing acknowledged is lost; nothing retried applied twice.
    let p2p = server.sql_i64("SELECT COUNT(*) FROM transfers WHERE kind = 'p2p'").await;
    assert_eq!(p2p as usize, acknowledged.len(), "every acknowledged transfer, once each");
    for transfer_id in acknowledged.values().step_by(10) {
        let stored = server.sql_i64(&format!("SELECT COUNT(*) FROM transfers WHERE id = '{transfer_id}'")).await;
        assert_eq!(stored, 1, "{transfer_id}");
    }
    let (status, reconciliation) = server.get("/admin/v1/reconciliation", Some(&admin)).await;
    assert_eq!((status, &reconciliation["balanced"]), (200, &json!(true)), "{reconciliation}");
    eprintln!(
        "postgres crash: {} transfers acknowledged ({} met the outage and were retried), database down {:.1} s, \
         transfers succeeded again {} ms after it was back",
        acknowledged.len(),
        retried,
        (up_at - down_at).as_secs_f64(),
        recovered_after.as_millis()
    );
    server.finish().await;
}

/// A Redis of the test's own, persisting to its append-only file as a
/// production Redis for the signaling cluster should, which the test may
/// kill and start again.
pub(crate) struct PrivateRedis {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    pub(crate) fn start() -> PrivateRedis {
        let mut redis = PrivateRedis {
            dir: tempfile::Builder::new().prefix("courier-redis-").tempdir().unwrap(),
            port: free_tcp_port(),
            child: None,
        };
        redis.spawn();
        redis
    }

    pub(crate) fn spawn(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .args(["--dir", self.dir.path().to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `kill -9`.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

pub(crate) async fn signaling_node(
    server: &Server,
    redis: &PrivateRedis,
    dir: &std::path::Path,
    name: &str,
) -> support::Node {
    let jwks = format!("{}/v1/auth/keys", server.url);
    let data_dir = dir.join(name);
    let redis_url = redis.url();
    let args = [
        "signaling",
        "--database-url",
        &server.database_url,
        "--jwks-url",
        &jwks,
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--redis-url",
        &redis_url,
        "--redis-node-ttl-s",
        "2",
    ];
    support::Node::start(&args, dir.join(format!("{name}.log"))).await
}

/// Signs in again on `url` until the node takes the device (within 20 s).
async fn reconnect(url: &str, name: &str, token: &str) -> Phone {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(phone) = Phone::try_signed_in(url, name, token).await {
            return phone;
        }
        assert!(Instant::now() < deadline, "{name} could not sign in again within 20 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Redis is killed under two signaling nodes with a call in progress between
/// them, and started again from its append-only file: the nodes stay up,
/// tell their devices to reconnect, and take them back; the call in progress
/// resumes on both sides and still carries its renegotiation (its media
/// goes peer to peer meanwhile), and a new call works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarting_under_two_signaling_nodes_keeps_calls() {
    let mut redis = PrivateRedis::start();
    let server = Server::start_with(Db::Sqlite, &["--sign-in-code-resend-after-s", "0"]).await;
    let alice = server.sign_in("+79161160001", "phone").await;
    let bob = server.sign_in("+79161160002", "phone").await;
    let dir = tempfile::tempdir().unwrap();
    let node_a = signaling_node(&server, &redis, dir.path(), "a").await;
    let node_b = signaling_node(&server, &redis, dir.path(), "b").await;
    let mut a = Phone::signed_in(&node_a.url, "alice@A", &alice.access_token).await;
    let mut b = Phone::signed_in(&node_b.url, "bob@B", &bob.access_token).await;
    a.ok("invite", json!({"call_id": "r-1", "callee": bob.account_id, "sdp": sdp("offer")})).await;
    b.event("incoming").await;
    b.ok("answer", json!({"call_id": "r-1", "sdp": sdp("answer")})).await;
    a.event("answered").await;

    redis.kill();
    // Each node drops its devices so that they come back once it can serve them.
    for phone in [&mut a, &mut b] {
        let frame = phone.closed().await;
        assert_eq!(frame.map(|frame| u16::from(frame.code)), Some(1012), "told to reconnect");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    redis.spawn();
    let back = Instant::now();
    let mut a = reconnect(&node_a.url, "alice@A", &alice.access_token).await;
    let mut b = reconnect(&node_b.url, "bob@B", &bob.access_token).await;
    a.ok("resume", json!({"call_id": "r-1"})).await;
    b.ok("resume", json!({"call_id": "r-1"})).await;
    a.ok("negotiate", json!({"call_id": "r-1", "sdp": sdp("restart"), "kind": "offer"})).await;
    assert_eq!(b.event("negotiate").await["sdp"], sdp("restart"));
    let resumed = back.elapsed();
    a.ok("hangup", json!({"call_id": "r-1", "reason": "user_hangup"})).await;
    assert_eq!(b.event("hangup").await["reason"], "user_hangup");

    // A new call across the nodes.
    a.ok("invite", json!({"call_id": "r-2", "callee": bob.account_id, "sdp": sdp("offer")})).await;
    b.event("incoming").await;
    b.ok("answer", json!({"call_id": "r-2", "sdp": sdp("answer")})).await;
    a.event("answered").await;
    let new_call = back.elapsed();

    for node in [&node_a, &node_b] {
        let health = reqwest::get(format!("{}/healthz", node.url)).await.unwrap();
        assert_eq!(health.status(), 200);
        assert!(!node.log().contains("panicked"), "{}", node.log());
    }
    eprintln!(
        "redis restart: the call in progress resumed {} ms and a new call was answered {} ms after Redis was back",
        resumed.as_millis(),
        new_call.as_millis()
    );
    server.finish().await;
}

/// A small tmpfs of the test's own, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(megabytes: u32) -> SmallDisk {
        let dir = tempfile::Builder::new().prefix("courier-disk-").tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "courier-test", dir.path().to_str().unwrap()])
            .status()
            .expect("mount");
        assert!(status.success(), "mounting a tmpfs needs root (./scripts/test runs as root in CI)");
        SmallDisk { dir }
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Writes a file until the disk is full; returns its path.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 4096];
        while file.write_all(&chunk).is_ok() {}
        let _ = file.sync_all();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").args(["-l", self.dir.path().to_str().unwrap()]).status();
    }
}

/// The disk under the SQLite database fills up under transfers: writes are
/// refused with 503 and `Retry-After` (never another status, never a crash),
/// nothing acknowledged is lost, and once space returns the same requests,
/// retried with their keys, go through once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_sqlite_refuses_writes_and_recovers() {
    let disk = SmallDisk::mount(32);
    let database_url = format!("sqlite://{}?mode=rwc", disk.path().join("courier.db").display());
    let server = Server::start_on(database_url, &["--sign-in-codes-per-addr-per-hour-max", "0"]).await;
    let admin = server.bootstrap_admin();
    let users = server.sign_in_many(8).await;
    for user in &users {
        let money =
            json!({"account_id": user.account_id, "amount": "1000.00", "currency": "RUB", "external_ref": "seed"});
        let (status, body, _) = server.post_keyed("/admin/v1/deposits", &admin, &user.account_id, money).await;
        assert_eq!(status, 201, "{body}");
    }
    let send = |index: usize, key: String| {
        let (http, url) = (server.http.clone(), server.url.clone());
        let (from, to) = (users[index % users.len()].clone(), users[(index + 1) % users.len()].clone());
        async move {
            let body = json!({"to": {"account_id": to.account_id}, "amount": "1.00", "currency": "RUB"});
            let response = http
                .post(format!("{url}/v1/transfers"))
                .bearer_auth(&from.access_token)
                .header("idempotency-key", &key)
                .json(&body)
                .send()
                .await
                .expect("the server answers with its disk full");
            let status = response.status().as_u16();
            let retry_after = response.headers().contains_key("retry-after");
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            (key, status, retry_after, body)
        }
    };

    let filler = disk.fill();
    let mut refused_keys = Vec::new();
    let mut acknowledged: HashMap<String, String> = HashMap::new();
    const ROUNDS: usize = 20;
    for round in 0..ROUNDS {
        let answers = futures::future::join_all((0..users.len()).map(|i| send(i, format!("full-{round}-{i}")))).await;
        for (key, status, retry_after, body) in answers {
            match status {
                201 => {
                    acknowledged.insert(key, body["transfer_id"].as_str().unwrap().to_owned());
                }
                503 => {
                    assert!(retry_after, "{key}: 503 without Retry-After: {body}");
                    refused_keys.push(key);
                }
                other => panic!("{key}: only 201 or 503 with the disk full, got {other}: {body}"),
            }
        }
    }
    assert!(!refused_keys.is_empty(), "with the disk full some writes are refused");
    let health = server.get("/healthz", None).await.0;
    assert_eq!(health, 200, "the server is up with its disk full");

    std::fs::remove_file(filler).unwrap();
    let freed = Instant::now();
    // The refused requests, retried with their keys, go through once each.
    for (index, key) in refused_keys.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (key, status, _, body) = send(index, key.clone()).await;
            if status == 201 {
                acknowledged.insert(key, body["transfer_id"].as_str().unwrap().to_owned());
                break;
            }
            assert_eq!(status, 503, "{key}: {body}");
            assert!(Instant::now() < deadline, "{key} still refused 30 s after space returned");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let recovered = freed.elapsed();
    let p2p = server.sql_i64("SELECT COUNT(*) FROM transfers WHERE kind = 'p2p'").await;
    assert_eq!(p2p as usize, acknowledged.len(), "every acknowledged transfer, once each");
    let (status, reconciliation) = server.get("/admin/v1/reconciliation", Some(&admin)).await;
    assert_eq!((status, &reconciliation["balanced"]), (200, &json!(true)), "{reconciliation}");
    eprintln!(
        "disk full: {} of {} transfers refused with 503 while full, all through {} ms after space returned",
        refused_keys.len(),
        ROUNDS * users.len(),
        recovered.as_millis()
    );
    server.finish().await;
}
