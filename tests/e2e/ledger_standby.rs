//! Split deployment of the ledger: `courier serve payments` as its own
//! process against the shared database, verifying tokens with the JWKS. A
//! second ledger writer waits as a standby while the first lives, applies
//! nothing meanwhile, and takes over when the first is killed.

use crate::support;

use std::time::Duration;

use serde_json::json;
use support::{Db, Node, Server};

/// A full node with Alice (100.00) and Bob, and a second `serve payments`
/// node on the same database whose writer waits as a standby.
struct Pair {
    first: Server,
    admin: String,
    alice: support::Session,
    bob: support::Session,
    standby: Node,
    _standby_dir: tempfile::TempDir,
}

async fn pair(db: Db, submit_timeout_s: &str) -> Pair {
    let first = Server::start(db).await;
    let admin = first.bootstrap_admin();
    let alice = first.sign_in("+79161234567", "phone").await;
    let bob = first.sign_in("+79167654321", "phone").await;
    let deposit =
        json!({"account_id": alice.account_id, "amount": "100.00", "currency": "RUB", "external_ref": "seed"});
    assert_eq!(first.post_keyed("/admin/v1/deposits", &admin, "seed", deposit).await.0, 201);
    let jwks = format!("{}/v1/auth/keys", first.url);
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap().to_owned();
    let args = ["payments", "--database-url", &first.database_url, "--jwks-url", &jwks, "--data-dir", &data_dir];
    let args: Vec<&str> = args.into_iter().chain(["--ledger-submit-timeout-s", submit_timeout_s]).collect();
    let standby = Node::start(&args, dir.path().join("standby.log")).await;
    Pair { first, admin, alice, bob, standby, _standby_dir: dir }
}

async fn a_standby_writer_takes_over_when_the_first_dies(db: Db) {
    let Pair { mut first, admin, alice, bob, standby, _standby_dir } = pair(db, "30").await;
    // The standby verifies the first node's tokens offline and serves reads.
    let (status, wallet) = get(&first, &standby.url, "/v1/wallet", &alice.access_token).await;
    assert_eq!((status, wallet["balance"].as_str()), (200, Some("100.00")));
    // The writer says it is waiting; give its first attempt at the lock a moment.
    for _ in 0..50 {
        if standby.log().contains("standby") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(standby.log().contains("waiting as a standby"), "{}", standby.log());

    // A transfer sent to the standby waits: it must not be applied by a second writer.
    let http = first.http.clone();
    let url = standby.url.clone();
    let token = alice.access_token.clone();
    let to_bob = json!({"to": {"account_id": bob.account_id}, "amount": "30.00", "currency": "RUB"});
    let waiting = tokio::spawn(async move {
        let response = http
            .post(format!("{url}/v1/transfers"))
            .bearer_auth(token)
            .header("idempotency-key", "k-standby")
            .json(&to_bob)
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    });
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(!waiting.is_finished(), "the standby applied a transfer while the first writer lived");

    // The same key while that request is still in flight: 409.
    let to_bob_again = json!({"to": {"account_id": bob.account_id}, "amount": "30.00", "currency": "RUB"});
    let response = send(&first, &standby.url, &alice.access_token, "k-standby", &to_bob_again).await;
    assert_eq!(response.status(), 409);
    let retry_after = response.headers().get("retry-after").map(|value| value.to_str().unwrap().to_owned());
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "idempotency_key_in_use");
    assert_eq!(retry_after.as_deref(), Some("1"), "a retry with the same key may come back in a second");
    let (_, wallet) = first.get("/v1/wallet", Some(&alice.access_token)).await;
    assert_eq!(wallet["balance"], "100.00");

    // kill -9 the first node: the standby takes the lock and applies the transfer.
    first.kill().await;
    let (status, body) = tokio::time::timeout(Duration::from_secs(30), waiting).await.expect("taken over").unwrap();
    assert_eq!(status, 201, "{body}\n{}", standby.log());
    let (_, wallet) = get(&first, &standby.url, "/v1/wallet", &alice.access_token).await;
    assert_eq!(wallet["balance"], "70.00");
    let (status, reconciliation) = get(&first, &standby.url, "/admin/v1/reconciliation", &admin).await;
    assert_eq!((status, reconciliation["balanced"].as_bool()), (200, Some(true)), "{reconciliation}");
    drop(standby);
    first.finish().await;
}

/// `POST /v1/transfers` on `base` with `key`, as `token`'s owner.
async fn send(server: &Server, base: &str, token: &str, key: &str, body: &serde_json::Value) -> reqwest::Response {
    let request = server.http.post(format!("{base}/v1/transfers")).bearer_auth(token).header("idempotency-key", key);
    request.json(body).send().await.unwrap()
}

async fn post(
    server: &Server,
    base: &str,
    token: &str,
    key: &str,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    let response = send(server, base, token, key, body).await;
    (response.status().as_u16(), response.json().await.unwrap_or_default())
}

async fn get(server: &Server, base: &str, path: &str, token: &str) -> (u16, serde_json::Value) {
    let response = server.http.get(format!("{base}{path}")).bearer_auth(token).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or_default())
}

/// A node whose writer is a standby answers 503 `ledger_unavailable` once
/// its submit deadline passes; the request stays queued, and a retry with the
/// same key after the takeover gets the one transfer it made.
async fn without_a_writer_requests_time_out_and_retries_apply_once(db: Db) {
    let Pair { mut first, alice, bob, standby, _standby_dir, .. } = pair(db, "1").await;
    let body = json!({"to": {"account_id": bob.account_id}, "amount": "10.00", "currency": "RUB"});
    let response = send(&first, &standby.url, &alice.access_token, "k-timeout", &body).await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let error: serde_json::Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "ledger_unavailable");

    first.kill().await;
    let mut outcome = (0, serde_json::Value::Null);
    for _ in 0..50 {
        outcome = post(&first, &standby.url, &alice.access_token, "k-timeout", &body).await;
        if outcome.0 != 503 {
            break;
        }
    }
    assert_eq!(outcome.0, 201, "{}", outcome.1);
    let (_, wallet) = get(&first, &standby.url, "/v1/wallet", &alice.access_token).await;
    assert_eq!(wallet["balance"], "90.00", "applied exactly once");
    drop(standby);
    first.finish().await;
}

#[tokio::test]
async fn serve_payments_alone_needs_the_jwks_url() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(support::courier_bin())
        .args(["serve", "payments", "--listen", "127.0.0.1:0", "--data-dir", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--jwks-url"));
}

on_both_databases!(
    a_standby_writer_takes_over_when_the_first_dies,
    without_a_writer_requests_time_out_and_retries_apply_once
);
