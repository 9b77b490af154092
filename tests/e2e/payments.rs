//! The ledger end to end: the real binary on SQLite and PostgreSQL, money in
//! through the admin API, P2P transfers, every refusal code (each leaving the
//! ledger unchanged), idempotency across a restart, and reconciliation.

use crate::support;

use reqwest::Method;
use serde_json::{Value, json};
use support::{Db, Server, Session, error_code};

const ALICE: &str = "+79161234567";
const BOB: &str = "+79167654321";
const CAROL: &str = "+79160001122";
const BRUNO: &str = "+5511912345678";
const HANS: &str = "+4915123456789";

struct World {
    server: Server,
    admin: String,
    alice: Session,
    bob: Session,
}

async fn world(db: Db) -> World {
    let server = Server::start(db).await;
    let admin = server.bootstrap_admin();
    let alice = server.sign_in(ALICE, "phone").await;
    let bob = server.sign_in(BOB, "phone").await;
    World { server, admin, alice, bob }
}

impl World {
    async fn deposit(&self, account_id: &str, amount: &str, currency: &str) {
        let key = uuid::Uuid::now_v7().to_string();
        let body = json!({"account_id": account_id, "amount": amount, "currency": currency, "external_ref": "rail-1"});
        let (status, body, _) = self.server.post_keyed("/admin/v1/deposits", &self.admin, &key, body).await;
        assert_eq!(status, 201, "{body}\n{}", self.server.log());
    }

    async fn balance(&self, session: &Session) -> String {
        let (status, wallet) = self.server.get("/v1/wallet", Some(&session.access_token)).await;
        assert_eq!(status, 200, "{wallet}");
        wallet["balance"].as_str().unwrap().to_owned()
    }

    async fn send(&self, from: &Session, key: &str, body: Value) -> (u16, Value, String) {
        self.server.post_keyed("/v1/transfers", &from.access_token, key, body).await
    }

    /// Every balance of the ledger, and the reconciliation verdict.
    async fn ledger_state(&self) -> Value {
        let (status, reconciliation) = self.server.get("/admin/v1/reconciliation", Some(&self.admin)).await;
        assert_eq!(status, 200);
        assert_eq!(reconciliation["balanced"], true, "{reconciliation}");
        let (_, alice) = self.server.get("/v1/wallet", Some(&self.alice.access_token)).await;
        let (_, bob) = self.server.get("/v1/wallet", Some(&self.bob.access_token)).await;
        let (_, alice_history) = self.server.get("/v1/transfers", Some(&self.alice.access_token)).await;
        json!({"alice": alice, "bob": bob, "history": alice_history, "trial": reconciliation["trial_balance"]})
    }

    async fn finish(self) {
        self.server.finish().await;
    }
}

fn key() -> String {
    uuid::Uuid::now_v7().to_string()
}

async fn a_transfer_moves_money_and_balances(db: Db) {
    let w = world(db).await;
    let (status, wallet) = w.server.get("/v1/wallet", Some(&w.alice.access_token)).await;
    assert_eq!(status, 200);
    assert_eq!(
        wallet,
        json!({"account_id": w.alice.account_id, "region": "RU", "currency": "RUB", "balance": "0.00", "status": "active"})
    );
    w.deposit(&w.alice.account_id, "1000.00", "RUB").await;
    assert_eq!(w.balance(&w.alice).await, "1000.00");

    let (status, transfer, _) = w
        .send(
            &w.alice,
            &key(),
            json!({"to": {"phone": "+7 916 765-43-21"}, "amount": "150.00", "currency": "RUB", "note": "lunch"}),
        )
        .await;
    assert_eq!(status, 201, "{transfer}");
    assert_eq!(transfer["status"], "completed");
    assert_eq!(transfer["from"], w.alice.account_id.as_str());
    assert_eq!(transfer["to"], w.bob.account_id.as_str());
    assert_eq!(
        (transfer["amount"].as_str(), transfer["fee"].as_str(), transfer["currency"].as_str()),
        (Some("150.00"), Some("0.00"), Some("RUB"))
    );
    assert!(transfer["created_at"].as_str().unwrap().ends_with('Z'));
    let (status, _, _) = w
        .send(&w.alice, &key(), json!({"to": {"account_id": w.bob.account_id}, "amount": "0.5", "currency": "RUB"}))
        .await;
    assert_eq!(status, 201);
    assert_eq!(w.balance(&w.alice).await, "849.50");
    assert_eq!(w.balance(&w.bob).await, "150.50");

    let id = transfer["transfer_id"].as_str().unwrap();
    let (status, seen_by_bob) = w.server.get(&format!("/v1/transfers/{id}"), Some(&w.bob.access_token)).await;
    assert_eq!((status, seen_by_bob["amount"].as_str()), (200, Some("150.00")));
    let carol = w.server.sign_in(CAROL, "phone").await;
    let (status, body) = w.server.get(&format!("/v1/transfers/{id}"), Some(&carol.access_token)).await;
    assert_eq!((status, error_code(&body)), (404, "not_found"), "another person's transfer");

    let (_, history) = w.server.get("/v1/transfers?limit=2", Some(&w.alice.access_token)).await;
    let items = history["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["amount"], "0.50", "newest first");
    let cursor = history["next_cursor"].as_str().expect("the deposit is on the next page");
    let (_, rest) = w.server.get(&format!("/v1/transfers?limit=2&cursor={cursor}"), Some(&w.alice.access_token)).await;
    assert_eq!(rest["items"][0]["kind"], "deposit");
    assert!(rest["next_cursor"].is_null());
    w.ledger_state().await;
    w.finish().await;
}

async fn the_ru_fee_goes_to_fee_revenue_in_the_same_transfer(db: Db) {
    let w = world(db).await;
    w.deposit(&w.alice.account_id, "300000.00", "RUB").await;
    let (status, first, _) =
        w.send(&w.alice, &key(), json!({"to": {"phone": BOB}, "amount": "100000.00", "currency": "RUB"})).await;
    assert_eq!((status, first["fee"].as_str()), (201, Some("0.00")), "free up to 100,000.00 a month");
    let (status, second, _) =
        w.send(&w.alice, &key(), json!({"to": {"phone": BOB}, "amount": "20000.00", "currency": "RUB"})).await;
    assert_eq!((status, second["fee"].as_str()), (201, Some("100.00")), "0.5 % of the 20,000.00 above");
    assert_eq!(w.balance(&w.alice).await, "179900.00");
    assert_eq!(w.balance(&w.bob).await, "120000.00");
    let state = w.ledger_state().await;
    assert_eq!(state["trial"], json!([{"currency": "BRL", "total": "0.00"}, {"currency": "RUB", "total": "0.00"}]));
    w.finish().await;
}

/// Sends `body` and expects a refusal with `code` that leaves the ledger as it was.
async fn refused(w: &World, from: &Session, body: Value, status: u16, code: &str) {
    let before = w.ledger_state().await;
    let (got, response, _) = w.send(from, &key(), body.clone()).await;
    assert_eq!((got, error_code(&response)), (status, code), "{body} → {response}");
    assert_eq!(w.ledger_state().await, before, "{code} changed the ledger");
}

/// `POST /admin/v1/accounts/{account}/{action}` (`freeze` or `unfreeze`) as the admin.
async fn freeze(w: &World, account: &str, action: &str, reason: &str) -> (u16, Value) {
    let path = format!("/admin/v1/accounts/{account}/{action}");
    w.server.call(Method::POST, &path, Some(&w.admin), Some(json!({"reason": reason}))).await
}

/// Changes a region's rules in the database, as an operator would, and waits
/// for the writer to reread them (it does every 250 ms).
async fn set_rules(w: &World, statement: &str) {
    w.server.sql(statement).await;
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
}

async fn every_refusal_changes_nothing(db: Db) {
    let w = world(db).await;
    w.deposit(&w.alice.account_id, "1000.00", "RUB").await;
    let bob = json!({"phone": BOB});
    // Outside the documented form: 400.
    for amount in ["-5.00", "1e3", "abc", "", "01.00", "1.", ".5", "+1.00"] {
        refused(&w, &w.alice, json!({"to": bob, "amount": amount, "currency": "RUB"}), 400, "invalid_amount").await;
    }
    // Of the form, refused for what it is: zero, too precise, too large.
    for amount in ["0", "0.00", "1.001", "10000000000000"] {
        refused(&w, &w.alice, json!({"to": bob, "amount": amount, "currency": "RUB"}), 422, "invalid_amount").await;
    }
    refused(&w, &w.alice, json!({"to": bob, "amount": 150, "currency": "RUB"}), 400, "invalid_request").await;
    // One recipient, named one way: both ways at once is refused, not resolved.
    let both = json!({"phone": BOB, "account_id": w.alice.account_id});
    refused(&w, &w.alice, json!({"to": both, "amount": "1.00", "currency": "RUB"}), 400, "invalid_request").await;
    refused(
        &w,
        &w.alice,
        json!({"to": {"phone": BOB, "x": 1}, "amount": "1.00", "currency": "RUB"}),
        400,
        "invalid_request",
    )
    .await;
    refused(&w, &w.alice, json!({"to": bob, "amount": "1.00", "currency": "RUB", "tip": 1}), 400, "invalid_request")
        .await;
    refused(&w, &w.alice, json!({"to": bob, "amount": "1.00", "currency": "BRL"}), 422, "currency_mismatch").await;
    refused(&w, &w.alice, json!({"to": bob, "amount": "1.00", "currency": "USD"}), 422, "currency_mismatch").await;
    refused(
        &w,
        &w.alice,
        json!({"to": {"phone": "+79169999999"}, "amount": "1.00", "currency": "RUB"}),
        404,
        "recipient_not_found",
    )
    .await;
    refused(
        &w,
        &w.alice,
        json!({"to": {"account_id": "nobody"}, "amount": "1.00", "currency": "RUB"}),
        404,
        "recipient_not_found",
    )
    .await;
    refused(&w, &w.alice, json!({"to": {"phone": ALICE}, "amount": "1.00", "currency": "RUB"}), 422, "self_transfer")
        .await;
    let bruno = w.server.sign_in(BRUNO, "phone").await;
    refused(
        &w,
        &w.alice,
        json!({"to": {"account_id": bruno.account_id}, "amount": "1.00", "currency": "RUB"}),
        422,
        "cross_region",
    )
    .await;
    let hans = w.server.sign_in(HANS, "phone").await;
    refused(&w, &w.alice, json!({"to": {"phone": HANS}, "amount": "1.00", "currency": "RUB"}), 422, "cross_region")
        .await;
    refused(&w, &hans, json!({"to": bob, "amount": "1.00", "currency": "EUR"}), 403, "region_not_supported").await;
    let (status, body) = w.server.get("/v1/wallet", Some(&hans.access_token)).await;
    assert_eq!((status, error_code(&body)), (403, "region_not_supported"));
    refused(&w, &w.alice, json!({"to": bob, "amount": "1001.00", "currency": "RUB"}), 422, "insufficient_funds").await;
    refused(&w, &w.alice, json!({"to": bob, "amount": "100000.01", "currency": "RUB"}), 422, "limit_per_transfer")
        .await;

    let (status, _) = freeze(&w, &w.bob.account_id, "freeze", "chargeback review").await;
    assert_eq!(status, 200);
    refused(&w, &w.alice, json!({"to": bob, "amount": "1.00", "currency": "RUB"}), 422, "recipient_frozen").await;
    let (status, frozen) = freeze(&w, &w.alice.account_id, "freeze", "fraud check").await;
    assert_eq!((status, frozen["status"].as_str()), (200, Some("frozen")));
    refused(&w, &w.alice, json!({"to": bob, "amount": "1.00", "currency": "RUB"}), 403, "wallet_frozen").await;
    // A freeze of a frozen wallet says so, and changes nothing.
    let before = w.ledger_state().await;
    let (status, body) = freeze(&w, &w.alice.account_id, "freeze", "again").await;
    assert_eq!((status, error_code(&body)), (409, "already_frozen"));
    assert_eq!(w.ledger_state().await, before);
    for id in [&w.alice.account_id, &w.bob.account_id] {
        let (status, _) = freeze(&w, id, "unfreeze", "cleared").await;
        assert_eq!(status, 200);
    }
    // So does an unfreeze of an active one.
    let (status, body) = freeze(&w, &w.alice.account_id, "unfreeze", "again").await;
    assert_eq!((status, error_code(&body)), (409, "not_frozen"));

    set_rules(&w, "UPDATE regions SET enabled = 0 WHERE code = 'RU'").await;
    refused(&w, &w.alice, json!({"to": bob, "amount": "1.00", "currency": "RUB"}), 403, "region_disabled").await;
    set_rules(&w, "UPDATE regions SET enabled = 1, daily_max = 30000 WHERE code = 'RU'").await;
    let (status, _, _) = w.send(&w.alice, &key(), json!({"to": bob, "amount": "200.00", "currency": "RUB"})).await;
    assert_eq!(status, 201);
    refused(&w, &w.alice, json!({"to": bob, "amount": "100.01", "currency": "RUB"}), 422, "limit_daily").await;
    set_rules(&w, "UPDATE regions SET daily_max = 15000000, monthly_max = 30000 WHERE code = 'RU'").await;
    refused(&w, &w.alice, json!({"to": bob, "amount": "100.01", "currency": "RUB"}), 422, "limit_monthly").await;
    w.finish().await;
}

async fn the_brazilian_night_limit(db: Db) {
    let w = world(db).await;
    let bruno = w.server.sign_in(BRUNO, "phone").await;
    let bia = w.server.sign_in("+5521998765432", "phone").await;
    w.deposit(&bruno.account_id, "3000.00", "BRL").await;
    // Make "now" night in São Paulo: a two-hour night starting this hour.
    let hour = jiff::Timestamp::now().in_tz("America/Sao_Paulo").unwrap().hour();
    let night =
        format!("UPDATE regions SET night_start_hour = {hour}, night_end_hour = {} WHERE code = 'BR'", (hour + 2) % 24);
    set_rules(&w, &night).await;
    let to_bia = json!({"phone": "+5521998765432"});
    let (status, body, _) = w
        .server
        .post_keyed(
            "/v1/transfers",
            &bruno.access_token,
            &key(),
            json!({"to": to_bia, "amount": "900.00", "currency": "BRL"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    refused(&w, &bruno, json!({"to": to_bia, "amount": "100.01", "currency": "BRL"}), 422, "limit_night").await;
    let (status, _, _) = w
        .server
        .post_keyed(
            "/v1/transfers",
            &bruno.access_token,
            &key(),
            json!({"to": to_bia, "amount": "100.00", "currency": "BRL"}),
        )
        .await;
    assert_eq!(status, 201, "exactly 1,000.00 a night is allowed");
    let (_, wallet) = w.server.get("/v1/wallet", Some(&bia.access_token)).await;
    assert_eq!(wallet["balance"], "1000.00");
    w.finish().await;
}

async fn idempotency_keys_replay_refuse_and_survive_a_restart(db: Db) {
    let mut w = world(db).await;
    w.deposit(&w.alice.account_id, "100.00", "RUB").await;
    let body = json!({"to": {"phone": BOB}, "amount": "60.00", "currency": "RUB"});
    let (status, error, _) = w.send(&w.alice, "", body.clone()).await;
    assert_eq!((status, error_code(&error)), (400, "idempotency_key_required"));

    let k1 = key();
    let (status, _, first) = w.send(&w.alice, &k1, body.clone()).await;
    assert_eq!(status, 201);
    let reordered = json!({"currency": "RUB", "amount": "60.00", "to": {"phone": BOB}});
    let (status, _, again) = w.send(&w.alice, &k1, reordered).await;
    assert_eq!((status, &again), (201, &first), "the same request (fields in any order) replays the original");
    let (status, error, _) =
        w.send(&w.alice, &k1, json!({"to": {"phone": BOB}, "amount": "61.00", "currency": "RUB"})).await;
    assert_eq!((status, error_code(&error)), (422, "idempotency_key_reused"));
    assert_eq!(w.balance(&w.alice).await, "40.00", "applied once");

    // A refusal is remembered too: the same key stays refused after money arrives.
    let k2 = key();
    let (status, refusal, refused_text) = w.send(&w.alice, &k2, body.clone()).await;
    assert_eq!((status, error_code(&refusal)), (422, "insufficient_funds"));
    w.deposit(&w.alice.account_id, "100.00", "RUB").await;
    let (status, _, replay) = w.send(&w.alice, &k2, body.clone()).await;
    assert_eq!((status, &replay), (422, &refused_text));

    // PostgreSQL's writer stores keys without looking them up first: each
    // of the three repeats above made its batch fail whole on the taken key,
    // and the writer applied it again knowing the stored answer. SQLite's
    // writer looks keys up first and never retries.
    let (_, metrics) = w.server.get("/metrics", None).await;
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    let retries = metrics
        .lines()
        .find_map(|line| line.strip_prefix("ledger_batch_key_retries_total "))
        .map_or(0.0, |value| value.trim().parse::<f64>().unwrap());
    let expected = if db == Db::Postgres { 3.0 } else { 0.0 };
    assert_eq!(retries, expected, "batches applied again after a taken key:\n{metrics}");

    // Keys belong to their account: Bob may use the same key for his own request.
    let (status, _, _) =
        w.send(&w.bob, &k1, json!({"to": {"phone": ALICE}, "amount": "1.00", "currency": "RUB"})).await;
    assert_eq!(status, 201);

    w.server.crash_and_restart().await;
    let (status, _, after_restart) = w.send(&w.alice, &k1, body.clone()).await;
    assert_eq!((status, &after_restart), (201, &first), "replayed after kill -9");
    assert_eq!(w.balance(&w.alice).await, "141.00");
    w.ledger_state().await;
    w.finish().await;
}

async fn concurrent_requests_with_one_key_apply_once(db: Db) {
    let w = world(db).await;
    w.deposit(&w.alice.account_id, "100.00", "RUB").await;
    let k = key();
    let body = json!({"to": {"phone": BOB}, "amount": "10.00", "currency": "RUB"});
    let attempts = (0..8).map(|_| w.send(&w.alice, &k, body.clone()));
    let results = futures::future::join_all(attempts).await;
    let created: Vec<&String> =
        results.iter().filter(|(status, _, _)| *status == 201).map(|(_, _, text)| text).collect();
    assert!(!created.is_empty());
    assert!(created.iter().all(|text| *text == created[0]), "every 201 is the same transfer");
    for (status, body, _) in &results {
        assert!(*status == 201 || (*status == 409 && error_code(body) == "idempotency_key_in_use"), "{status} {body}");
    }
    assert_eq!(w.balance(&w.alice).await, "90.00");
    w.finish().await;
}

/// A batch whose statements write other rows than the writer meant (here an
/// account the table lacks) fails whole: nothing of it stays. The writer
/// then answers `ledger_unavailable` and reloads from the database.
async fn a_batch_that_writes_other_rows_than_due_leaves_nothing(db: Db) {
    use courier_payments::ledger::{AccountKind, LedgerAccount};
    use courier_payments::money::Currency;
    use courier_payments::region::RegionCode;
    use courier_payments::store::{BatchWrite, IdempotencyKey, StoredResponse};
    use courier_payments::writer::store::WriterStore;
    let dir = tempfile::tempdir().unwrap();
    let (url, name) = support::fresh_database(db, dir.path()).await;
    let database = courier_common::Database::connect(&url, 2).await.unwrap();
    let mut connection = WriterStore::connect(&database).await.unwrap();
    let key = IdempotencyKey { scope: "account:a".into(), key: "k".into() };
    let response = StoredResponse { status: 201, body: "{}".into() };
    let batch = BatchWrite {
        transfers: Vec::new(),
        accounts: vec![
            LedgerAccount::new("sys:RU:settlement".into(), AccountKind::Settlement, RegionCode::Ru, Currency::Rub),
            LedgerAccount {
                balance_minor: 500,
                ..LedgerAccount::new("no-such-account".into(), AccountKind::Wallet, RegionCode::Ru, Currency::Rub)
            },
        ],
        idempotency: vec![(key, "fingerprint".into(), response)],
        ..BatchWrite::default()
    };
    let error = connection.commit(&batch, 1).await.unwrap_err();
    assert!(error.to_string().contains("the batch wrote"), "{error}");
    let (keys,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM idempotency_keys").fetch_one(database.pool()).await.unwrap();
    assert_eq!(keys, 0, "the batch's idempotency key was rolled back with it");
    if db == Db::Postgres {
        // Balance updates stay on their page (migration 4).
        let (filled,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM pg_class WHERE relname = 'ledger_accounts' AND 'fillfactor=70' = ANY (reloptions)",
        )
        .fetch_one(database.pool())
        .await
        .unwrap();
        assert_eq!(filled, 1);
    }
    drop(connection);
    database.close().await;
    if let Some(name) = name {
        support::drop_database(&name).await;
    }
}

/// Migration 5 on a ledger written before it: every account's history
/// becomes a chain through its transfers (in the order they were made), the
/// per-party indexes go, and the writer counts each wallet's usage in its
/// current windows from the transfers when it starts.
async fn migration_5_chains_the_history_and_counts_usage(db: Db) {
    use courier_common::Database;
    use courier_payments::writer::store::WriterStore;
    let dir = tempfile::tempdir().unwrap();
    let (url, name) = support::fresh_database(db, dir.path()).await;
    let before = Database::connect_migrated_to(&url, 2, 4).await.unwrap();
    let now = courier_common::time::now_ms();
    let day_ms = 86_400_000;
    for wallet in ["w1", "w2"] {
        sqlx::query("INSERT INTO ledger_accounts (id, kind, region, currency, balance, created_at) VALUES ($1, 'wallet', 'RU', 'RUB', $2, 0)")
            .bind(wallet)
            .bind(if wallet == "w1" { 10_000 - 100 - 250 - 40 - 1 } else { 100 + 250 + 40 })
            .execute(before.pool())
            .await
            .unwrap();
    }
    sqlx::query("UPDATE ledger_accounts SET balance = CASE id WHEN 'sys:RU:settlement' THEN -10000 WHEN 'sys:RU:fee_revenue' THEN 1 ELSE 0 END WHERE region = 'RU' AND kind <> 'wallet'")
        .execute(before.pool())
        .await
        .unwrap();
    // Oldest first: a deposit 40 days ago, a P2P transfer then, one today
    // with its fee, and one more today.
    let made: Vec<(String, &str, &str, &str, i64, i64)> = [
        ("deposit", "sys:RU:settlement", "w1", 10_000, now - 40 * day_ms),
        ("p2p", "w1", "w2", 100, now - 40 * day_ms),
        ("p2p", "w1", "w2", 250, now),
        ("fee", "w1", "sys:RU:fee_revenue", 1, now),
        ("p2p", "w1", "w2", 40, now),
    ]
    .into_iter()
    .map(|(kind, debit, credit, amount, at)| (uuid::Uuid::now_v7().to_string(), kind, debit, credit, amount, at))
    .collect();
    for (id, kind, debit, credit, amount, at) in &made {
        sqlx::query(
            "INSERT INTO transfers (id, kind, debit_account, credit_account, amount, currency, region, initiator, created_at) \
             VALUES ($1, $2, $3, $4, $5, 'RUB', 'RU', 'test', $6)",
        )
        .bind(id)
        .bind(kind)
        .bind(debit)
        .bind(credit)
        .bind(amount)
        .bind(at)
        .execute(before.pool())
        .await
        .unwrap();
    }
    // A fee names its P2P transfer: migration 7 rebuilds SQLite's transfers
    // table around such rows, whose reference it drops.
    let p2p = made.iter().find(|made| made.1 == "p2p" && made.4 == 250).map(|made| made.0.clone()).unwrap();
    sqlx::query("UPDATE transfers SET linked_id = $1 WHERE kind = 'fee'")
        .bind(&p2p)
        .execute(before.pool())
        .await
        .unwrap();
    before.close().await;

    let database = Database::connect(&url, 2).await.unwrap();
    let ids: Vec<&str> = made.iter().map(|t| t.0.as_str()).collect();
    let chains: Vec<(String, Option<String>, Option<String>)> =
        sqlx::query_as("SELECT id, debit_prev, credit_prev FROM transfers ORDER BY id")
            .fetch_all(database.pool())
            .await
            .unwrap();
    let link = |i: usize| Some(ids[i].to_owned());
    assert_eq!(
        chains,
        vec![
            (ids[0].to_owned(), None, None),
            (ids[1].to_owned(), link(0), None),
            (ids[2].to_owned(), link(1), link(1)),
            (ids[3].to_owned(), link(2), None),
            (ids[4].to_owned(), link(3), link(2)),
        ],
        "each transfer names the one before it of each of its accounts"
    );
    let heads: Vec<(String, Option<String>, Option<i64>)> = sqlx::query_as(
        "SELECT id, last_transfer, usage_month_start FROM ledger_accounts WHERE id IN ('w1', 'w2', 'sys:RU:fee_revenue', 'sys:RU:adjustments') ORDER BY id",
    )
    .fetch_all(database.pool())
    .await
    .unwrap();
    assert_eq!(
        heads,
        vec![
            ("sys:RU:adjustments".into(), None, Some(0)),
            ("sys:RU:fee_revenue".into(), link(3), Some(0)),
            ("w1".into(), link(4), None),
            ("w2".into(), link(4), None),
        ],
        "heads of the chains; wallets' usage is not counted yet"
    );
    let (indexes,): (i64,) = sqlx::query_as(if db == Db::Postgres {
        "SELECT COUNT(*) FROM pg_indexes WHERE indexname IN ('transfers_by_debit', 'transfers_by_credit')"
    } else {
        "SELECT COUNT(*) FROM sqlite_master WHERE name IN ('transfers_by_debit', 'transfers_by_credit')"
    })
    .fetch_one(database.pool())
    .await
    .unwrap();
    assert_eq!(indexes, 0, "the per-party indexes are gone");

    // The writer counts usage once, when it starts.
    let mut writer = WriterStore::connect(&database).await.unwrap();
    let regions = writer.regions().await.unwrap();
    assert_eq!(writer.count_usage(&regions, now).await.unwrap(), 2, "both RU wallets");
    assert_eq!(writer.count_usage(&regions, now).await.unwrap(), 0, "and only once");
    let windows = regions[&courier_payments::region::RegionCode::Ru].windows(now);
    let accounts = writer.accounts(&["w1".into(), "w2".into()]).await.unwrap();
    let w1 = accounts.iter().find(|a| a.id == "w1").unwrap();
    let w2 = accounts.iter().find(|a| a.id == "w2").unwrap();
    assert_eq!(
        (w1.usage.day_start_ms, w1.usage.day_minor, w1.usage.month_start_ms, w1.usage.month_minor),
        (windows.day_start_ms, 290, windows.month_start_ms, 290),
        "today's P2P sends, not the fee nor those of 40 days ago"
    );
    assert_eq!((w2.usage.day_minor, w2.usage.month_minor, w2.usage.month_start_ms), (0, 0, windows.month_start_ms));
    drop(writer);

    // History follows the chains, newest first, fees shown on their transfer.
    let page = courier_payments::store::transfers_of(&database, "w1", None, 2).await.unwrap();
    assert_eq!(page.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), vec![ids[4], ids[2]]);
    let rest = courier_payments::store::transfers_of(&database, "w1", Some(ids[2]), 10).await.unwrap();
    assert_eq!(rest.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), vec![ids[1], ids[0]]);
    let of_w2 = courier_payments::store::transfers_of(&database, "w2", None, 10).await.unwrap();
    assert_eq!(of_w2.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), vec![ids[4], ids[2], ids[1]]);
    assert!(
        courier_payments::store::transfers_of(&database, "w2", Some(ids[0]), 10).await.unwrap().is_empty(),
        "not w2's"
    );
    assert_eq!(courier_payments::report::reconcile(&database).await.unwrap().mismatches, vec![]);

    // Transfers carry no foreign keys since migration 7 (the writer checks
    // their accounts): reconciliation is where a transfer naming an account
    // that does not exist would show, with the account it debited.
    sqlx::query(
        "INSERT INTO transfers (id, kind, debit_account, credit_account, amount, currency, region, initiator, created_at) \
         VALUES ('orphan', 'p2p', 'w1', 'ghost', 5, 'RUB', 'RU', 'w1', 0)",
    )
    .execute(database.pool())
    .await
    .unwrap();
    let (w1_balance,): (i64,) =
        sqlx::query_as("SELECT balance FROM ledger_accounts WHERE id = 'w1'").fetch_one(database.pool()).await.unwrap();
    let mismatch = |account_id: &str, currency: Option<&str>, stored_minor: i64, computed_minor: i64| {
        courier_payments::report::Mismatch {
            account_id: account_id.to_owned(),
            currency: currency.map(str::to_owned),
            stored_minor,
            computed_minor,
        }
    };
    assert_eq!(
        courier_payments::report::reconcile(&database).await.unwrap().mismatches,
        vec![mismatch("ghost", None, 0, 5), mismatch("w1", Some("RUB"), w1_balance, w1_balance - 5)]
    );
    database.close().await;
    if let Some(name) = name {
        support::drop_database(&name).await;
    }
}

/// A deposit that would take a wallet past what it may hold is refused on
/// its own (422 `balance_limit`); the deposits in the same batches succeed.
async fn a_deposit_past_the_balance_limit_is_refused_alone(db: Db) {
    let w = world(db).await;
    let max = "1000000000000.00";
    for _ in 0..10 {
        w.deposit(&w.alice.account_id, max, "RUB").await;
    }
    let before = w.ledger_state().await;
    let over = {
        let body = json!({"account_id": w.alice.account_id, "amount": "0.01", "currency": "RUB", "external_ref": "r"});
        let (server, admin) = (&w.server, &w.admin);
        async move { server.post_keyed("/admin/v1/deposits", admin, "over-the-limit", body).await }
    };
    let neighbours = (0..20).map(|i| {
        let body = json!({"account_id": w.bob.account_id, "amount": "1.00", "currency": "RUB", "external_ref": "r"});
        let (server, admin) = (&w.server, &w.admin);
        async move { server.post_keyed("/admin/v1/deposits", admin, &format!("neighbour-{i}"), body).await }
    });
    let (over, neighbours) = tokio::join!(over, futures::future::join_all(neighbours));
    assert_eq!((over.0, error_code(&over.1)), (422, "balance_limit"), "{}", over.1);
    for (status, body, _) in neighbours {
        assert_eq!(status, 201, "an unrelated deposit in the same batch: {body}");
    }
    assert_eq!(w.balance(&w.alice).await, "10000000000000.00", "the refused deposit moved nothing");
    assert_eq!(w.balance(&w.bob).await, "20.00");
    let after = w.ledger_state().await;
    assert_eq!(after["trial"], before["trial"], "still balanced");
    // Money sent to the full wallet is refused the same way.
    w.deposit(&w.bob.account_id, "50.00", "RUB").await;
    let to_alice = json!({"to": {"phone": ALICE}, "amount": "1.00", "currency": "RUB"});
    refused(&w, &w.bob, to_alice, 422, "balance_limit").await;
    w.finish().await;
}

async fn deposits_and_withdrawals(db: Db) {
    let w = world(db).await;
    let money = |amount: &str| json!({"account_id": w.alice.account_id, "amount": amount, "currency": "RUB", "external_ref": "sbp-42"});
    let (status, body, _) = w.server.post_keyed("/admin/v1/deposits", &w.admin, "", money("10.00")).await;
    assert_eq!((status, error_code(&body)), (400, "idempotency_key_required"));
    let k = key();
    let (status, deposit, first) = w.server.post_keyed("/admin/v1/deposits", &w.admin, &k, money("10.00")).await;
    assert_eq!(
        (status, deposit["kind"].as_str(), deposit["from"].as_str()),
        (201, Some("deposit"), Some("sys:RU:settlement"))
    );
    let (_, _, replay) = w.server.post_keyed("/admin/v1/deposits", &w.admin, &k, money("10.00")).await;
    assert_eq!(replay, first);
    let (status, body, _) = w.server.post_keyed("/admin/v1/withdrawals", &w.admin, &key(), money("10.01")).await;
    assert_eq!(
        (status, error_code(&body)),
        (422, "insufficient_funds"),
        "a withdrawal never takes a wallet below zero"
    );
    let (status, _, _) = w.server.post_keyed("/admin/v1/withdrawals", &w.admin, &key(), money("10.00")).await;
    assert_eq!(status, 201);
    assert_eq!(w.balance(&w.alice).await, "0.00");
    let (status, body, _) = w
        .server
        .post_keyed(
            "/admin/v1/deposits",
            &w.admin,
            &key(),
            json!({"account_id": "nobody", "amount": "1.00", "currency": "RUB", "external_ref": "x"}),
        )
        .await;
    assert_eq!((status, error_code(&body)), (404, "not_found"));
    let (status, body, _) = w.server.post_keyed("/admin/v1/deposits", &w.admin, &key(), money("0.001")).await;
    assert_eq!((status, error_code(&body)), (422, "invalid_amount"), "too precise");
    let (status, body, _) = w.server.post_keyed("/admin/v1/deposits", &w.admin, &key(), money("1,00")).await;
    assert_eq!((status, error_code(&body)), (400, "invalid_amount"), "not of the documented form");

    let (status, viewer) =
        w.server.post("/admin/v1/operators", Some(&w.admin), json!({"name": "Vera", "role": "viewer"})).await;
    assert_eq!(status, 201);
    let (status, body, _) =
        w.server.post_keyed("/admin/v1/deposits", viewer["api_key"].as_str().unwrap(), &key(), money("1.00")).await;
    assert_eq!((status, error_code(&body)), (403, "forbidden"));
    let (status, body, _) =
        w.server.post_keyed("/admin/v1/deposits", &w.alice.access_token, &key(), money("1.00")).await;
    assert_eq!((status, error_code(&body)), (401, "unauthenticated"));
    w.ledger_state().await;
    w.finish().await;
}

/// A full writer queue answers 503 `overloaded` with `Retry-After` at once,
/// and those requests change nothing.
async fn a_full_queue_is_overloaded_not_unbounded(db: Db) {
    let server = Server::start_with(db, &["--ledger-queue-len-max", "1", "--ledger-batch-len-max", "1"]).await;
    let admin = server.bootstrap_admin();
    let alice = server.sign_in(ALICE, "phone").await;
    let bob = server.sign_in(BOB, "phone").await;
    let deposit =
        json!({"account_id": alice.account_id, "amount": "1000.00", "currency": "RUB", "external_ref": "seed"});
    assert_eq!(server.post_keyed("/admin/v1/deposits", &admin, "seed", deposit).await.0, 201);
    let body = json!({"to": {"account_id": bob.account_id}, "amount": "1.00", "currency": "RUB"});
    let burst = (0..64).map(|_| {
        let request = server
            .http
            .post(format!("{}/v1/transfers", server.url))
            .bearer_auth(&alice.access_token)
            .header("idempotency-key", key())
            .json(&body)
            .send();
        async move {
            let response = request.await.unwrap();
            let retry_after = response.headers().contains_key("retry-after");
            (response.status().as_u16(), retry_after, response.json::<Value>().await.unwrap())
        }
    });
    let results = futures::future::join_all(burst).await;
    let created = results.iter().filter(|(status, _, _)| *status == 201).count();
    let overloaded = results
        .iter()
        .filter(|(status, retry, body)| *status == 503 && *retry && error_code(body) == "overloaded")
        .count();
    assert_eq!(created + overloaded, 64, "{results:?}");
    assert!(overloaded > 0, "64 concurrent requests into a queue of one");
    let (_, wallet) = server.get("/v1/wallet", Some(&alice.access_token)).await;
    assert_eq!(wallet["balance"], format!("{}.00", 1000 - created), "only the accepted ones moved money");
    server.finish().await;
}

/// `courier bench ledger` moves money over HTTP through the writer and in
/// its naive baseline, sends the same requests to its floor, hands the same
/// transfers straight to the writer (`--in-process`), fails nothing and
/// leaves a ledger that reconciles (the figures go to BENCHMARKS.md; here
/// only that they were measured).
async fn the_ledger_benchmark_measures_group_commit_and_the_baseline(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let mut args: Vec<String> = [
        "bench",
        "ledger",
        "--json",
        "--wallets",
        "50",
        "--clients",
        "8",
        "--transfers",
        "400",
        "--duration-s",
        "20",
        "--in-process",
    ]
    .map(String::from)
    .to_vec();
    let mut name = None;
    if db == Db::Postgres {
        let (url, database) = support::fresh_database(db, dir.path()).await;
        args.extend(["--database-url".to_owned(), url]);
        name = database;
    }
    let output = tokio::process::Command::new(support::courier_bin()).args(&args).output().await.unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let figures: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!((figures["transfers"].as_u64(), figures["failures"].as_u64()), (Some(400), Some(0)), "{figures}");
    assert_eq!(figures["reconciled"], true, "{figures}");
    assert_eq!(figures["database"], if db == Db::Postgres { "postgres" } else { "sqlite" }, "{figures}");
    // The floor took the same requests, all answered 201, and the writer
    // the same transfers without HTTP.
    assert_eq!(figures["floor_failures"], 0, "{figures}");
    assert_eq!(figures["in_process_failures"], 0, "{figures}");
    for figure in [
        "transfers_per_s",
        "latency_ms_p99",
        "batch_size_mean",
        "naive_transfers_per_s",
        "floor_requests_per_s",
        "ratio_to_floor",
        "in_process_transfers_per_s",
        "in_process_batch_size_mean",
        "in_process_ratio_to_floor",
    ] {
        assert!(figures[figure].as_f64().is_some_and(|value| value > 0.0), "{figure}: {figures}");
    }
    // Where each phase's CPU went (a short run may round a share to 0).
    for phase in ["", "in_process_"] {
        for figure in
            ["machine_cpu_us_per_transfer", "process_cpu_us_per_transfer", "ledger_writer_cpu_us_per_transfer"]
        {
            let figure = format!("{phase}{figure}");
            assert!(figures[&figure].as_f64().is_some_and(|value| value >= 0.0), "{figure}: {figures}");
        }
        // The writer's backend is found on the PostgreSQL of this machine.
        let backend = &figures[format!("{phase}database_backend_cpu_us_per_transfer")];
        assert_eq!(backend.as_f64().is_some(), db == Db::Postgres, "{phase}: {figures}");
    }
    for figure in ["floor_machine_cpu_us_per_request", "naive_machine_cpu_us_per_transfer", "machine_idle_share"] {
        assert!(figures[figure].as_f64().is_some_and(|value| value >= 0.0), "{figure}: {figures}");
    }
    if let Some(name) = name {
        support::drop_database(&name).await;
    }
}

/// A quote says the fee a transfer would pay and what is left of each
/// limit, as the transfer itself then finds; it moves nothing.
async fn a_quote_tells_the_fee_and_the_limits_left(db: Db) {
    let w = world(db).await;
    w.deposit(&w.alice.account_id, "20000.00", "RUB").await;
    let quote = |session: &Session, amount: &str| {
        let path = format!("/v1/transfers/quote?amount={amount}");
        let token = session.access_token.clone();
        let server = &w.server;
        async move { server.get(&path, Some(&token)).await }
    };
    let (status, first) = quote(&w.alice, "1000.00").await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(
        first,
        json!({"amount": "1000.00", "fee": "0.00", "total": "1000.00", "currency": "RUB",
               "limits_left": {"per_transfer": "100000.00", "daily": "150000.00", "monthly": "600000.00", "night": null}})
    );
    // Every RU transfer pays 0.5 % from the first kopeck.
    w.server.sql("UPDATE regions SET fee_free_monthly = 0 WHERE code = 'RU'").await;
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let (_, quoted) = quote(&w.alice, "1000.00").await;
    assert_eq!((&quoted["fee"], &quoted["total"]), (&json!("5.00"), &json!("1005.00")));
    let (status, sent, _) = w
        .send(
            &w.alice,
            "quote-1",
            json!({"to": {"account_id": w.bob.account_id}, "amount": "1000.00", "currency": "RUB"}),
        )
        .await;
    assert_eq!((status, &sent["fee"]), (201, &quoted["fee"]), "the transfer pays what the quote said");
    let (_, after) = quote(&w.alice, "10.00").await;
    assert_eq!(
        (&after["limits_left"]["daily"], &after["limits_left"]["monthly"]),
        (&json!("149000.00"), &json!("599000.00"))
    );

    let balance = w.balance(&w.alice).await;
    for (amount, status, code) in
        [("0", 422, "invalid_amount"), ("1.001", 422, "invalid_amount"), ("ten", 400, "invalid_amount")]
    {
        let (got, body) = quote(&w.alice, amount).await;
        assert_eq!((got, error_code(&body)), (status, code), "{amount}: {body}");
    }
    // With neither an amount nor a recipient, what is left of the limits.
    let (got, body) = w.server.get("/v1/transfers/quote", Some(&w.alice.access_token)).await;
    assert_eq!((got, &body["limits_left"]["daily"], body.get("fee")), (200, &json!("149000.00"), None), "{body}");
    let hans = w.server.sign_in(HANS, "phone").await;
    let (got, body) = quote(&hans, "1.00").await;
    assert_eq!((got, error_code(&body)), (403, "region_not_supported"));
    assert_eq!(w.balance(&w.alice).await, balance, "quotes move nothing");
    w.server.finish().await;
}

/// A quote with `to` says whether that person can be paid now, with the
/// refusal the transfer would get: the page offers "Send money" during a
/// call only for someone it can pay.
async fn a_quote_tells_whether_a_recipient_can_be_paid(db: Db) {
    let w = world(db).await;
    w.deposit(&w.bob.account_id, "5.00", "RUB").await;
    let bruno = w.server.sign_in(BRUNO, "phone").await;
    let hans = w.server.sign_in(HANS, "phone").await;
    let quote = |to: &str, amount: Option<&str>| {
        let mut path = format!("/v1/transfers/quote?to={}", to.replace('+', "%2B"));
        if let Some(amount) = amount {
            path.push_str(&format!("&amount={amount}"));
        }
        let token = w.alice.access_token.clone();
        let server = &w.server;
        async move { server.get(&path, Some(&token)).await }
    };
    let (status, by_phone) = quote(BOB, None).await;
    assert_eq!((status, &by_phone["to"]), (200, &json!(w.bob.account_id)), "{by_phone}");
    assert_eq!(by_phone.get("fee"), None, "no amount, no fee: {by_phone}");
    let (status, by_id) = quote(&w.bob.account_id, Some("10.00")).await;
    assert_eq!((status, &by_id["to"], &by_id["fee"]), (200, &json!(w.bob.account_id), &json!("0.00")), "{by_id}");

    let state = w.ledger_state().await;
    let unknown = uuid::Uuid::new_v4().to_string();
    for (to, status, code) in [
        (CAROL, 404, "recipient_not_found"),
        (unknown.as_str(), 404, "recipient_not_found"),
        (ALICE, 422, "self_transfer"),
        (w.alice.account_id.as_str(), 422, "self_transfer"),
        (BRUNO, 422, "cross_region"),
        (bruno.account_id.as_str(), 422, "cross_region"),
        (HANS, 422, "cross_region"),
        ("+7 916", 422, "invalid_phone"),
        ("nobody", 400, "invalid_phone"),
    ] {
        let (got, body) = quote(to, None).await;
        assert_eq!((got, error_code(&body)), (status, code), "{to}: {body}");
    }
    let (status, _) = freeze(&w, &w.bob.account_id, "freeze", "chargeback review").await;
    assert_eq!(status, 200);
    let (got, body) = quote(BOB, Some("1.00")).await;
    assert_eq!((got, error_code(&body)), (422, "recipient_frozen"), "{body}");
    let (got, body) = w.server.get("/v1/transfers/quote?to=%2B79161234567", Some(&hans.access_token)).await;
    assert_eq!((got, error_code(&body)), (403, "region_not_supported"), "{body}");
    let (_, after) = w.server.get("/v1/wallet", Some(&w.alice.access_token)).await;
    assert_eq!(after, state["alice"], "quotes move nothing");
    w.server.finish().await;
}

on_both_databases!(
    a_quote_tells_whether_a_recipient_can_be_paid,
    a_quote_tells_the_fee_and_the_limits_left,
    the_ledger_benchmark_measures_group_commit_and_the_baseline,
    a_full_queue_is_overloaded_not_unbounded,
    a_transfer_moves_money_and_balances,
    the_ru_fee_goes_to_fee_revenue_in_the_same_transfer,
    every_refusal_changes_nothing,
    the_brazilian_night_limit,
    idempotency_keys_replay_refuse_and_survive_a_restart,
    concurrent_requests_with_one_key_apply_once,
    deposits_and_withdrawals,
    a_batch_that_writes_other_rows_than_due_leaves_nothing,
    migration_5_chains_the_history_and_counts_usage,
    a_deposit_past_the_balance_limit_is_refused_alone,
);
