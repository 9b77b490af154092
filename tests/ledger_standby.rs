//! Split deployment of the ledger: `courier serve payments` as its own
//! process against the shared database, verifying tokens with the JWKS. A
//! second ledger writer waits as a standby while the first lives, applies
//! nothing meanwhile, and takes over when the first is killed.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{Db, Node, Server};

async fn a_standby_writer_takes_over_when_the_first_dies(db: Db) {
    let mut first = Server::start(db).await;
    let admin = first.bootstrap_admin();
    let alice = first.sign_in("+79161234567", "phone").await;
    let bob = first.sign_in("+79167654321", "phone").await;
    let deposit =
        json!({"account_id": alice.account_id, "amount": "100.00", "currency": "RUB", "external_ref": "seed"});
    let (status, _, _) = first.post_keyed("/admin/v1/deposits", &admin, "seed", deposit).await;
    assert_eq!(status, 201);

    let jwks = format!("{}/v1/auth/keys", first.url);
    let standby_dir = tempfile::tempdir().unwrap();
    let standby = Node::start(
        &[
            "payments",
            "--database-url",
            &first.database_url,
            "--jwks-url",
            &jwks,
            "--data-dir",
            standby_dir.path().to_str().unwrap(),
            "--ledger-submit-timeout-s",
            "30",
        ],
        standby_dir.path().join("standby.log"),
    )
    .await;
    // The standby verifies the first node's tokens offline and serves reads.
    let (status, wallet) = get(&first, &standby.url, "/v1/wallet", &alice.access_token).await;
    assert_eq!((status, wallet["balance"].as_str()), (200, Some("100.00")));
    assert!(standby.log().contains("standby"), "{}", standby.log());

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

async fn get(server: &Server, base: &str, path: &str, token: &str) -> (u16, serde_json::Value) {
    let response = server.http.get(format!("{base}{path}")).bearer_auth(token).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or_default())
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

on_both_databases!(a_standby_writer_takes_over_when_the_first_dies);
