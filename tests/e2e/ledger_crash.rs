//! Crash safety of the ledger: the real binary under 64 concurrent clients
//! sending transfers with idempotency keys is killed with SIGKILL at a random
//! moment, restarted, and checked: every acknowledged answer is replayed
//! unchanged (so its transfer is there exactly once), every unacknowledged
//! request applies at most once when retried, and the ledger reconciles.
//!
//! CI runs 5 kills per database; `COURIER_CRASH_KILLS=50` makes a longer soak.

use crate::support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use support::{Db, Server, Session};

const CLIENTS: usize = 64;
const WALLETS: usize = 24;
const KILLS_DEFAULT: usize = 5;

#[derive(Clone)]
struct Sent {
    token: String,
    body: serde_json::Value,
    /// The answer the client saw, if it saw one.
    answer: Option<(u16, String)>,
}

fn kills() -> usize {
    std::env::var("COURIER_CRASH_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(KILLS_DEFAULT)
}

/// A small deterministic generator, so a failing run can be replayed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % below
    }
}

async fn acknowledged_transfers_survive_kill_9(db: Db) {
    let mut server = Server::start_with(db, &["--sign-in-codes-per-addr-per-hour-max", "0"]).await;
    let admin = server.bootstrap_admin();
    let users: Vec<Session> = server.sign_in_many(WALLETS).await;
    for user in &users {
        let body =
            json!({"account_id": user.account_id, "amount": "5000.00", "currency": "RUB", "external_ref": "seed"});
        let (status, _, _) =
            server.post_keyed("/admin/v1/deposits", &admin, &uuid::Uuid::now_v7().to_string(), body).await;
        assert_eq!(status, 201);
    }
    let sent: Arc<Mutex<HashMap<String, Sent>>> = Arc::default();
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    eprintln!("crash test seed {seed}");
    let mut rng = Lcg(seed);

    for round in 0..kills() {
        let stop = Arc::new(AtomicBool::new(false));
        let mut clients = Vec::new();
        for client in 0..CLIENTS {
            let (url, http, sent, stop, users) =
                (server.url.clone(), server.http.clone(), sent.clone(), stop.clone(), users.clone());
            let mut rng = Lcg(seed ^ ((round * CLIENTS + client) as u64 + 1));
            clients.push(tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let from = rng.next(WALLETS as u64) as usize;
                    let to = (from + 1 + rng.next(WALLETS as u64 - 1) as usize) % WALLETS;
                    let amount = format!("{}.{:02}", 1 + rng.next(40), rng.next(100));
                    let body = json!({"to": {"account_id": users[to].account_id}, "amount": amount, "currency": "RUB"});
                    let key = uuid::Uuid::now_v7().to_string();
                    let token = users[from].access_token.clone();
                    sent.lock()
                        .unwrap()
                        .insert(key.clone(), Sent { token: token.clone(), body: body.clone(), answer: None });
                    let response = http
                        .post(format!("{url}/v1/transfers"))
                        .bearer_auth(&token)
                        .header("idempotency-key", &key)
                        .json(&body)
                        .timeout(Duration::from_secs(5))
                        .send()
                        .await;
                    let Ok(response) = response else { break };
                    let status = response.status().as_u16();
                    let Ok(text) = response.text().await else { break };
                    if status == 503 {
                        continue; // overloaded or unavailable: nothing acknowledged
                    }
                    sent.lock().unwrap().get_mut(&key).unwrap().answer = Some((status, text));
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(300 + rng.next(900))).await;
        let acked_before_kill = sent.lock().unwrap().values().filter(|s| s.answer.is_some()).count();
        server.crash_and_restart().await;
        stop.store(true, Ordering::SeqCst);
        for client in clients {
            client.await.unwrap();
        }
        eprintln!("round {round}: killed after {acked_before_kill} acknowledged answers in all");
        assert!(acked_before_kill > 0, "the load ran before the kill");
    }

    // Every acknowledged answer replays byte for byte; every other request
    // gets an answer now, and the same one again.
    let entries: Vec<(String, Sent)> = sent.lock().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let mut created = 0;
    let mut retried = 0;
    for (key, entry) in &entries {
        let (status, _, text) = server.post_keyed("/v1/transfers", &entry.token, key, entry.body.clone()).await;
        match &entry.answer {
            Some((acked_status, acked_text)) => {
                assert_eq!((status, &text), (*acked_status, acked_text), "key {key}: the acknowledged answer changed");
            }
            None => {
                retried += 1;
                let (again, _, again_text) =
                    server.post_keyed("/v1/transfers", &entry.token, key, entry.body.clone()).await;
                assert_eq!((again, &again_text), (status, &text), "key {key}: a retry answered differently");
            }
        }
        assert!(status == 201 || status == 422, "key {key}: {status} {text}");
        if status == 201 {
            created += 1;
        }
    }
    eprintln!("{} requests, {retried} unacknowledged and retried, {created} transfers", entries.len());
    let stored = server.sql_i64("SELECT COUNT(*) FROM transfers WHERE kind = 'p2p'").await;
    assert_eq!(stored, created, "each created transfer is stored exactly once");
    let (status, reconciliation) = server.get("/admin/v1/reconciliation", Some(&admin)).await;
    assert_eq!(status, 200);
    assert_eq!(reconciliation["balanced"], true, "{reconciliation}");
    let negative = server.sql_i64("SELECT COUNT(*) FROM ledger_accounts WHERE kind = 'wallet' AND balance < 0").await;
    assert_eq!(negative, 0);
    server.finish().await;
}

on_both_databases!(acknowledged_transfers_survive_kill_9);
