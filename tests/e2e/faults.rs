//! What Courier does when what it depends on fails under it: PostgreSQL
//! crashing and coming back under transfer load. Clients behave as the API
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
use support::{Server, Session};

const CLIENTS: usize = 16;

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

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
        postgres.as_owner(|| {
            let status = postgres
                .command("initdb")
                .args(["-D", postgres.data().to_str().unwrap(), "-A", "trust", "-U", "postgres", "--no-sync"])
                .stdout(std::process::Stdio::null())
                .status()
                .unwrap();
            assert!(status.success(), "initdb");
        });
        postgres.pg_ctl(&["start"]);
        postgres
    }

    /// PostgreSQL refuses to run as root: then its files and processes belong
    /// to the `postgres` user.
    fn is_root() -> bool {
        std::process::Command::new("id").arg("-u").output().map(|o| o.stdout == b"0\n").unwrap_or(false)
    }

    fn as_owner(&self, then: impl FnOnce()) {
        if Self::is_root() {
            let status = std::process::Command::new("chown")
                .args(["-R", "postgres:postgres", self.dir.path().to_str().unwrap()])
                .status()
                .unwrap();
            assert!(status.success());
        }
        then();
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
    attempts: u32,
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
        outcome.attempts += 1;
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
