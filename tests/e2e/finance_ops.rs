//! Finance ops end to end, on both databases: reversals (whole, in parts,
//! with the fee refunded in proportion, and every refusal changing
//! nothing), transfer search with its filters and cursor, and the account
//! view with its freeze.

use crate::support;

use futures::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::Connection;
use support::{Db, Server, Session, error_code};

const ALICE: &str = "+79161234567";
const BOB: &str = "+79167654321";
const CAROL: &str = "+79160001122";
const BRUNO: &str = "+5511912345678";

pub(crate) struct Desk {
    pub(crate) server: Server,
    pub(crate) admin: String,
    pub(crate) alice: Session,
    pub(crate) bob: Session,
}

pub(crate) fn key() -> String {
    uuid::Uuid::now_v7().to_string()
}

impl Desk {
    pub(crate) async fn open(db: Db) -> Desk {
        Desk::open_with(db, &[]).await
    }

    pub(crate) async fn open_with(db: Db, args: &[&str]) -> Desk {
        let server = Server::start_with(db, args).await;
        let admin = server.bootstrap_admin();
        let alice = server.sign_in(ALICE, "phone").await;
        let bob = server.sign_in(BOB, "phone").await;
        Desk { server, admin, alice, bob }
    }

    pub(crate) async fn deposit(&self, account_id: &str, amount: &str, currency: &str) -> Value {
        let body = json!({"account_id": account_id, "amount": amount, "currency": currency, "external_ref": "rail-1"});
        let (status, body, _) = self.server.post_keyed("/admin/v1/deposits", &self.admin, &key(), body).await;
        assert_eq!(status, 201, "{body}\n{}", self.server.log());
        body
    }

    pub(crate) async fn send(&self, from: &Session, to: &Session, amount: &str) -> Value {
        let body = json!({"to": {"account_id": to.account_id}, "amount": amount, "currency": "RUB"});
        let (status, body, _) = self.server.post_keyed("/v1/transfers", &from.access_token, &key(), body).await;
        assert_eq!(status, 201, "{body}");
        body
    }

    pub(crate) async fn balance(&self, session: &Session) -> String {
        let (status, wallet) = self.server.get("/v1/wallet", Some(&session.access_token)).await;
        assert_eq!(status, 200, "{wallet}");
        wallet["balance"].as_str().unwrap().to_owned()
    }

    pub(crate) async fn reverse(&self, transfer: &str, key: &str, body: Value) -> (u16, Value, String) {
        self.server.post_keyed(&format!("/admin/v1/transfers/{transfer}/reverse"), &self.admin, key, body).await
    }

    async fn search(&self, query: &str) -> (u16, Value) {
        self.server.get(&format!("/admin/v1/transfers?{query}"), Some(&self.admin)).await
    }

    /// Every balance, the whole transfer list and the reconciliation verdict.
    async fn state(&self) -> Value {
        let (status, reconciliation) = self.server.get("/admin/v1/reconciliation", Some(&self.admin)).await;
        assert_eq!(status, 200);
        assert_eq!(reconciliation["balanced"], true, "{reconciliation}");
        let (status, all) = self.search("limit=200&kind=reversal").await;
        assert_eq!(status, 200, "{all}");
        let (_, everything) = self.search("limit=200").await;
        json!({
            "alice": self.balance(&self.alice).await,
            "bob": self.balance(&self.bob).await,
            "reversals": all,
            "transfers": everything,
            "trial": reconciliation["trial_balance"],
        })
    }

    /// A reversal refused with `status` and `code`, changing nothing.
    async fn refused(&self, transfer: &str, body: Value, status: u16, code: &str) {
        let before = self.state().await;
        let (got, response, _) = self.reverse(transfer, &key(), body.clone()).await;
        assert_eq!((got, error_code(&response)), (status, code), "{body} → {response}");
        assert_eq!(self.state().await, before, "{code} changed the ledger");
    }
}

async fn a_transfer_is_reversed_in_parts_with_its_fee_then_no_more(db: Db) {
    let d = Desk::open(db).await;
    // Every RU transfer pays 0.5 % from the first kopeck.
    d.server.sql("UPDATE regions SET fee_free_monthly = 0 WHERE code = 'RU'").await;
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    d.deposit(&d.alice.account_id, "20000.00", "RUB").await;
    let sent = d.send(&d.alice, &d.bob, "1000.00").await;
    assert_eq!(sent["fee"], "5.00");
    let original = sent["transfer_id"].as_str().unwrap().to_owned();

    let first_key = key();
    let (status, first, first_text) =
        d.reverse(&original, &first_key, json!({"reason": "claim 17: sent by mistake", "amount": "400.00"})).await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(
        (&first["kind"], &first["reverses"], &first["amount"], &first["fee"], &first["from"], &first["to"]),
        (
            &json!("reversal"),
            &json!(original),
            &json!("400.00"),
            &json!("2.00"),
            &json!(d.bob.account_id),
            &json!(d.alice.account_id)
        )
    );
    assert_eq!(first["note"], "claim 17: sent by mistake");
    assert_eq!((d.balance(&d.alice).await, d.balance(&d.bob).await), ("19397.00".into(), "600.00".into()));

    // A retry answers the very same, and moves nothing more.
    let (status, _, replay) =
        d.reverse(&original, &first_key, json!({"reason": "claim 17: sent by mistake", "amount": "400.00"})).await;
    assert_eq!((status, replay), (201, first_text));
    let (status, body, _) = d.reverse(&original, &first_key, json!({"reason": "other", "amount": "400.00"})).await;
    assert_eq!((status, error_code(&body)), (422, "idempotency_key_reused"));

    d.refused(&original, json!({"reason": "too much", "amount": "600.01"}), 409, "already_reversed").await;
    let (status, rest, _) = d.reverse(&original, &key(), json!({"reason": "the rest"})).await;
    assert_eq!((status, &rest["amount"], &rest["fee"]), (201, &json!("600.00"), &json!("3.00")), "{rest}");
    assert_eq!((d.balance(&d.alice).await, d.balance(&d.bob).await), ("20000.00".into(), "0.00".into()));
    d.refused(&original, json!({"reason": "again"}), 409, "already_reversed").await;
    d.refused(&original, json!({"reason": "again", "amount": "0.01"}), 409, "already_reversed").await;

    // Fees go back with their transfer; a reversal is final.
    let (status, fees) = d.search("kind=fee").await;
    assert_eq!(status, 200);
    let fee = fees["items"][0]["transfer_id"].as_str().unwrap().to_owned();
    d.refused(&fee, json!({"reason": "a fee"}), 409, "not_reversible").await;
    d.refused(rest["transfer_id"].as_str().unwrap(), json!({"reason": "undo"}), 409, "not_reversible").await;
    d.refused(&key(), json!({"reason": "nothing"}), 404, "not_found").await;
    d.refused("not-a-transfer", json!({"reason": "nothing"}), 404, "not_found").await;

    // The recipient spent it: the operator holds or adjusts instead.
    let carol = d.server.sign_in(CAROL, "phone").await;
    let gift = d.send(&d.alice, &d.bob, "100.00").await;
    d.send(&d.bob, &carol, "99.00").await;
    let gift = gift["transfer_id"].as_str().unwrap();
    d.refused(gift, json!({"reason": "spent"}), 409, "insufficient_funds").await;

    // Malformed and unprocessable requests.
    d.refused(gift, json!({"reason": "x", "amount": "1,00"}), 400, "invalid_amount").await;
    d.refused(gift, json!({"reason": "x", "amount": "0.001"}), 422, "invalid_amount").await;
    d.refused(gift, json!({"reason": "x", "amount": "0"}), 422, "invalid_amount").await;
    d.refused(gift, json!({"reason": "   "}), 422, "invalid_request").await;
    d.refused(gift, json!({"reason": "x", "extra": 1}), 400, "invalid_request").await;
    d.refused(gift, json!({}), 400, "invalid_request").await;
    let before = d.state().await;
    let (status, body, _) = d.reverse(gift, "", json!({"reason": "x"})).await;
    assert_eq!((status, error_code(&body)), (400, "idempotency_key_required"));
    let (status, viewer) =
        d.server.post("/admin/v1/operators", Some(&d.admin), json!({"name": "Vera", "role": "viewer"})).await;
    assert_eq!(status, 201);
    let path = format!("/admin/v1/transfers/{gift}/reverse");
    let viewer_key = viewer["api_key"].as_str().unwrap();
    let (status, body, _) = d.server.post_keyed(&path, viewer_key, &key(), json!({"reason": "x"})).await;
    assert_eq!((status, error_code(&body)), (403, "forbidden"));
    let (status, body, _) = d.server.post_keyed(&path, &d.alice.access_token, &key(), json!({"reason": "x"})).await;
    assert_eq!((status, error_code(&body)), (401, "unauthenticated"));
    assert_eq!(d.state().await, before);
    d.server.finish().await;
}

async fn deposits_and_withdrawals_are_reversed_even_on_frozen_wallets(db: Db) {
    let d = Desk::open(db).await;
    let deposit = d.deposit(&d.bob.account_id, "50.00", "RUB").await;
    let body = json!({"account_id": d.bob.account_id, "amount": "20.00", "currency": "RUB", "external_ref": "out-1"});
    let (status, withdrawal, _) = d.server.post_keyed("/admin/v1/withdrawals", &d.admin, &key(), body).await;
    assert_eq!(status, 201, "{withdrawal}");
    let path = format!("/admin/v1/accounts/{}/freeze", d.bob.account_id);
    let (status, _) = d.server.post(&path, Some(&d.admin), json!({"reason": "claim 18"})).await;
    assert_eq!(status, 200);
    // The withdrawal never left: the money comes back from settlement.
    let (status, back, _) =
        d.reverse(withdrawal["transfer_id"].as_str().unwrap(), &key(), json!({"reason": "bounced"})).await;
    assert_eq!((status, &back["from"], &back["amount"]), (201, &json!("sys:RU:settlement"), &json!("20.00")), "{back}");
    assert_eq!(d.balance(&d.bob).await, "50.00");
    let (status, undone, _) = d
        .reverse(
            deposit["transfer_id"].as_str().unwrap(),
            &key(),
            json!({"reason": "rail recalled it", "amount": "30.00"}),
        )
        .await;
    assert_eq!((status, &undone["to"], &undone["fee"]), (201, &json!("sys:RU:settlement"), &json!("0.00")), "{undone}");
    assert_eq!(d.balance(&d.bob).await, "20.00");
    d.state().await;
    d.server.finish().await;
}

async fn operators_search_transfers_by_every_filter_with_a_cursor(db: Db) {
    let d = Desk::open(db).await;
    let bruno = d.server.sign_in(BRUNO, "phone").await;
    d.deposit(&d.alice.account_id, "500.00", "RUB").await;
    d.deposit(&bruno.account_id, "70.00", "BRL").await;
    // Times are kept to the millisecond: the range starts and ends well
    // clear of the transfers outside it.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let start = jiff::Timestamp::now();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let mut p2p = Vec::new();
    for amount in ["1.00", "2.00", "3.00"] {
        p2p.push(d.send(&d.alice, &d.bob, amount).await["transfer_id"].as_str().unwrap().to_owned());
    }
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let end = jiff::Timestamp::now();
    d.deposit(&d.bob.account_id, "9.00", "RUB").await;

    let ids = |page: &Value| -> Vec<String> {
        page["items"].as_array().unwrap().iter().map(|t| t["transfer_id"].as_str().unwrap().to_owned()).collect()
    };
    let (status, all) = d.search("").await;
    assert_eq!(status, 200, "{all}");
    let all_ids = ids(&all);
    assert_eq!(all_ids.len(), 6, "{all}");
    let mut sorted = all_ids.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(all_ids, sorted, "newest first");
    assert_eq!(all["items"][0]["initiator"].as_str().map(str::len), Some(36), "{all}");

    let (_, brazil) = d.search("region=BR").await;
    assert_eq!(brazil["items"].as_array().unwrap().len(), 1, "{brazil}");
    assert_eq!((&brazil["items"][0]["region"], &brazil["items"][0]["currency"]), (&json!("BR"), &json!("BRL")));
    let (_, deposits) = d.search("kind=deposit").await;
    assert_eq!(deposits["items"].as_array().unwrap().len(), 3, "{deposits}");
    let (_, ru_deposits) = d.search("kind=deposit&region=RU").await;
    assert_eq!(ru_deposits["items"].as_array().unwrap().len(), 2, "{ru_deposits}");
    let (_, alice) = d.search(&format!("account={}", d.alice.account_id)).await;
    assert_eq!(ids(&alice).len(), 4, "{alice}");
    let (_, alice_p2p) = d.search(&format!("account={}&kind=p2p", d.alice.account_id)).await;
    let mut expected = p2p.clone();
    expected.reverse();
    assert_eq!(ids(&alice_p2p), expected);
    let range = format!("from={start}&to={end}");
    let (status, in_range) = d.search(&range).await;
    assert_eq!((status, ids(&in_range)), (200, expected.clone()), "{in_range}");
    let (_, alice_in_range) = d.search(&format!("{range}&account={}", d.alice.account_id)).await;
    assert_eq!(ids(&alice_in_range), expected);

    // Page by page, every transfer once.
    let mut seen = Vec::new();
    let mut query = "limit=2".to_owned();
    loop {
        let (status, page) = d.search(&query).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(ids(&page));
        match page["next_cursor"].as_str() {
            Some(cursor) => query = format!("limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, all_ids);
    let mut seen = Vec::new();
    let mut query = format!("limit=1&account={}", d.alice.account_id);
    loop {
        let (_, page) = d.search(&query).await;
        seen.extend(ids(&page));
        match page["next_cursor"].as_str() {
            Some(cursor) => query = format!("limit=1&account={}&cursor={cursor}", d.alice.account_id),
            None => break,
        }
    }
    assert_eq!(seen, ids(&alice));

    let (status, body) = d.search(&format!("from={end}&to={start}")).await;
    assert_eq!((status, error_code(&body)), (400, "invalid_range"));
    for bad in ["kind=gift", "from=yesterday", "region=US", "account=nobody", "limit=0", "colour=red"] {
        let (status, body) = d.search(bad).await;
        assert_eq!((status, error_code(&body)), (400, "invalid_request"), "{bad}: {body}");
    }
    let (status, body) = d.search("cursor=bm90LWEtdXVpZA").await;
    assert_eq!((status, error_code(&body)), (422, "invalid_cursor"));
    let (status, body) = d.server.get("/admin/v1/transfers", Some(&d.alice.access_token)).await;
    assert_eq!((status, error_code(&body)), (401, "unauthenticated"));
    d.server.finish().await;
}

async fn the_account_view_shows_the_balance_history_and_freeze(db: Db) {
    let d = Desk::open(db).await;
    d.deposit(&d.alice.account_id, "500.00", "RUB").await;
    d.send(&d.alice, &d.bob, "120.00").await;
    let path = format!("/admin/v1/accounts/{}", d.alice.account_id);
    let (status, view) = d.server.get(&path, Some(&d.admin)).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(
        (&view["balance"], &view["status"], &view["freeze"], &view["region"], &view["currency"]),
        (&json!("380.00"), &json!("active"), &Value::Null, &json!("RU"), &json!("RUB"))
    );
    let kinds: Vec<&str> = view["recent"].as_array().unwrap().iter().map(|t| t["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["p2p", "deposit"]);

    let (_, operators) = d.server.get("/admin/v1/operators", Some(&d.admin)).await;
    let admin_id = operators["items"][0]["operator_id"].clone();
    let (status, _) = d
        .server
        .call(
            Method::POST,
            &format!("{path}/freeze"),
            Some(&d.admin),
            Some(json!({"reason": "claim 19: fraud report"})),
        )
        .await;
    assert_eq!(status, 200);
    let (_, view) = d.server.get(&path, Some(&d.admin)).await;
    assert_eq!(
        (&view["status"], &view["freeze"]["reason"], &view["freeze"]["by"]),
        (&json!("frozen"), &json!("claim 19: fraud report"), &admin_id)
    );
    let at: jiff::Timestamp = view["freeze"]["at"].as_str().unwrap().parse().unwrap();
    assert!((jiff::Timestamp::now() - at).get_seconds().abs() < 60, "{view}");
    let (status, body) =
        d.server.call(Method::POST, &format!("{path}/freeze"), Some(&d.admin), Some(json!({"reason": "again"}))).await;
    assert_eq!((status, error_code(&body)), (409, "already_frozen"));
    let (_, again) = d.server.get(&path, Some(&d.admin)).await;
    assert_eq!(again["freeze"], view["freeze"], "a refused freeze keeps the first one's reason");
    let (status, _) = d
        .server
        .call(Method::POST, &format!("{path}/unfreeze"), Some(&d.admin), Some(json!({"reason": "cleared"})))
        .await;
    assert_eq!(status, 200);
    let (_, view) = d.server.get(&path, Some(&d.admin)).await;
    assert_eq!((&view["status"], &view["freeze"]), (&json!("active"), &Value::Null));

    let (status, body) = d.server.get(&format!("/admin/v1/accounts/{}", key()), Some(&d.admin)).await;
    assert_eq!((status, error_code(&body)), (404, "not_found"));
    let (status, body) = d.server.get(&path, Some(&d.alice.access_token)).await;
    assert_eq!((status, error_code(&body)), (401, "unauthenticated"));
    d.server.finish().await;
}

async fn patch_region(d: &Desk, code: &str, body: Value) -> (u16, Value) {
    d.server.call(Method::PATCH, &format!("/admin/v1/regions/{code}"), Some(&d.admin), Some(body)).await
}

async fn region_rules_change_live_for_the_very_next_transfer(db: Db) {
    let mut d = Desk::open(db).await;
    d.deposit(&d.alice.account_id, "5000.00", "RUB").await;
    let (status, regions) = d.server.get("/admin/v1/regions", Some(&d.admin)).await;
    assert_eq!(status, 200, "{regions}");
    assert_eq!(regions.as_array().map(Vec::len), Some(2));
    let ru = regions.as_array().unwrap().iter().find(|r| r["code"] == "RU").unwrap().clone();
    assert_eq!(
        (&ru["per_transfer_max"], &ru["daily_max"], &ru["fee"]["rate"], &ru["time_zone"]),
        (&json!("100000.00"), &json!("150000.00"), &json!("0.005"), &json!("Europe/Moscow")),
        "{ru}"
    );

    // No pause between the change and the transfer: the writer applies
    // both in order.
    let (status, changed) = patch_region(&d, "RU", json!({"per_transfer_max": "100.00"})).await;
    assert_eq!((status, &changed["per_transfer_max"]), (200, &json!("100.00")), "{changed}");
    let body = json!({"to": {"account_id": d.bob.account_id}, "amount": "150.00", "currency": "RUB"});
    let (status, refused, _) = d.server.post_keyed("/v1/transfers", &d.alice.access_token, &key(), body).await;
    assert_eq!((status, error_code(&refused)), (422, "limit_per_transfer"));
    let (status, _) = patch_region(&d, "RU", json!({"enabled": false})).await;
    assert_eq!(status, 200);
    let body = json!({"to": {"account_id": d.bob.account_id}, "amount": "50.00", "currency": "RUB"});
    let (status, refused, _) = d.server.post_keyed("/v1/transfers", &d.alice.access_token, &key(), body).await;
    assert_eq!((status, error_code(&refused)), (403, "region_disabled"));
    let fee = json!({"free_monthly": "0.00", "rate": "0.01", "cap": "10.00"});
    let (status, changed) =
        patch_region(&d, "RU", json!({"enabled": true, "per_transfer_max": "100000.00", "fee": fee})).await;
    assert_eq!(
        (status, &changed["fee"]["rate"], &changed["enabled"]),
        (200, &json!("0.01"), &json!(true)),
        "{changed}"
    );
    let sent = d.send(&d.alice, &d.bob, "150.00").await;
    assert_eq!(sent["fee"], "1.50");
    let (status, changed) = patch_region(&d, "BR", json!({"night_max": null, "fee": null})).await;
    assert_eq!((status, &changed["night_max"], &changed["fee"]), (200, &Value::Null, &Value::Null));

    // Two admins changing different rules at the same moment both have
    // their way: each change is made to the rules in force in the writer's
    // turn, not to what its request read.
    for round in 1..=10 {
        let daily = format!("{}.00", 20_000 + round);
        let monthly = format!("{}.00", 500_000 + round);
        let (first, second) = futures::join!(
            patch_region(&d, "BR", json!({"daily_max": daily})),
            patch_region(&d, "BR", json!({"monthly_max": monthly}))
        );
        assert_eq!((first.0, second.0), (200, 200), "{first:?} {second:?}");
        let (_, regions) = d.server.get("/admin/v1/regions", Some(&d.admin)).await;
        let br = regions.as_array().unwrap().iter().find(|r| r["code"] == "BR").unwrap().clone();
        assert_eq!((&br["daily_max"], &br["monthly_max"]), (&json!(daily), &json!(monthly)), "round {round}");
    }

    // Rules that do not hold together change nothing.
    let (_, before) = d.server.get("/admin/v1/regions", Some(&d.admin)).await;
    for (body, code) in [
        (json!({"per_transfer_max": "200000.00"}), "invalid_region_rules"),
        (json!({"daily_max": "700000.00"}), "invalid_region_rules"),
        (json!({"per_transfer_max": "0"}), "invalid_region_rules"),
        (json!({"per_transfer_max": "1.001"}), "invalid_region_rules"),
        (json!({"night_max": "200000.00"}), "invalid_region_rules"),
        (json!({"night_start_hour": 6, "night_end_hour": 6}), "invalid_region_rules"),
        (json!({"fee": {"free_monthly": "0", "rate": "0.06", "cap": "1.00"}}), "invalid_region_rules"),
        (json!({"fee": {"free_monthly": "0", "rate": "0.00001", "cap": "1.00"}}), "invalid_region_rules"),
        (json!({"night_start_hour": 24}), "invalid_request"),
        (json!({"currency": "USD"}), "invalid_request"),
        (json!({"enabled": "yes"}), "invalid_request"),
    ] {
        let (status, refused) = patch_region(&d, "RU", body.clone()).await;
        assert_eq!((status, error_code(&refused)), (400, code), "{body}: {refused}");
    }
    let (status, refused) = patch_region(&d, "US", json!({"enabled": true})).await;
    assert_eq!((status, error_code(&refused)), (404, "not_found"));
    let (_, after) = d.server.get("/admin/v1/regions", Some(&d.admin)).await;
    assert_eq!(after, before);

    // Admins only.
    for role in ["viewer", "operator", "approver"] {
        let (_, created) =
            d.server.post("/admin/v1/operators", Some(&d.admin), json!({"name": role, "role": role})).await;
        let key = created["api_key"].as_str().unwrap();
        let (status, body) = d.server.get("/admin/v1/regions", Some(key)).await;
        assert_eq!((status, error_code(&body)), (403, "forbidden"), "{role}");
        let (status, body) =
            d.server.call(Method::PATCH, "/admin/v1/regions/RU", Some(key), Some(json!({"enabled": false}))).await;
        assert_eq!((status, error_code(&body)), (403, "forbidden"), "{role}");
    }
    let (status, _) = d.server.get("/admin/v1/regions", Some(&d.alice.access_token)).await;
    assert_eq!(status, 401);

    // Kept across a crash.
    d.server.crash_and_restart().await;
    let (_, restarted) = d.server.get("/admin/v1/regions", Some(&d.admin)).await;
    assert_eq!(restarted, after);
    d.server.finish().await;
}

pub(crate) async fn operator(d: &Desk, name: &str, role: &str) -> String {
    let (status, created) =
        d.server.post("/admin/v1/operators", Some(&d.admin), json!({"name": name, "role": role})).await;
    assert_eq!(status, 201, "{created}");
    created["api_key"].as_str().unwrap().to_owned()
}

pub(crate) async fn propose(d: &Desk, key: &str, account: &str, amount: &str) -> (u16, Value) {
    let body =
        json!({"account_id": account, "amount": amount, "currency": "RUB", "reason": "claim 30: rail fee refund"});
    d.server.post("/admin/v1/adjustments", Some(key), body).await
}

pub(crate) async fn decide(d: &Desk, key: &str, id: &str, verdict: &str, idempotency: &str) -> (u16, Value, String) {
    d.server.post_keyed(&format!("/admin/v1/adjustments/{id}/{verdict}"), key, idempotency, json!({})).await
}

async fn adjustments_need_a_second_pair_of_eyes(db: Db) {
    let d = Desk::open(db).await;
    let olga = operator(&d, "Olga", "operator").await;
    let petra = operator(&d, "Petra", "approver").await;
    let (status, proposed) = propose(&d, &olga, &d.alice.account_id, "100.00").await;
    assert_eq!(
        (status, &proposed["status"], &proposed["amount"]),
        (201, &json!("pending"), &json!("100.00")),
        "{proposed}"
    );
    assert_eq!(proposed["transfer_id"], Value::Null);
    assert_eq!(d.balance(&d.alice).await, "0.00", "a proposal moves no money");
    let id = proposed["adjustment_id"].as_str().unwrap().to_owned();

    // An operator cannot approve; the proposer cannot either, whatever its role.
    let (status, body, _) = decide(&d, &olga, &id, "approve", &key()).await;
    assert_eq!((status, error_code(&body)), (403, "forbidden"));
    let (status, own) = propose(&d, &d.admin, &d.alice.account_id, "5.00").await;
    assert_eq!(status, 201, "{own}");
    let own_id = own["adjustment_id"].as_str().unwrap();
    let before = d.state().await;
    let (status, body, _) = decide(&d, &d.admin, own_id, "approve", &key()).await;
    assert_eq!((status, error_code(&body)), (403, "four_eyes_violation"));
    assert!(body["error"]["message"].as_str().unwrap().contains("another approver"), "{body}");
    let (status, body, _) = decide(&d, &d.admin, own_id, "reject", "").await;
    assert_eq!((status, error_code(&body)), (403, "four_eyes_violation"));
    assert_eq!(d.state().await, before);

    // Approved once: posted against the region's adjustments account.
    let approval = key();
    let (status, approved, text) = decide(&d, &petra, &id, "approve", &approval).await;
    assert_eq!((status, &approved["status"]), (200, &json!("approved")), "{approved}");
    assert_eq!(d.balance(&d.alice).await, "100.00");
    let (_, posted) = d.search("kind=adjustment").await;
    assert_eq!(posted["items"][0]["transfer_id"], approved["transfer_id"], "{posted}");
    assert_eq!(
        (&posted["items"][0]["from"], &posted["items"][0]["note"]),
        (&json!("sys:RU:adjustments"), &json!("claim 30: rail fee refund"))
    );
    let (status, _, replay) = decide(&d, &petra, &id, "approve", &approval).await;
    assert_eq!((status, replay), (200, text), "a retry with the key answers the same");
    assert_eq!(d.balance(&d.alice).await, "100.00");
    let before = d.state().await;
    let (status, body, _) = decide(&d, &petra, &id, "approve", &key()).await;
    assert_eq!((status, error_code(&body)), (409, "adjustment_not_pending"));
    let (status, body, _) = decide(&d, &petra, &id, "reject", "").await;
    assert_eq!((status, error_code(&body)), (409, "adjustment_not_pending"));
    assert_eq!(d.state().await, before);

    // A debit beyond the balance stays pending until the money is there.
    let (_, debit) = propose(&d, &olga, &d.alice.account_id, "-150.00").await;
    let debit_id = debit["adjustment_id"].as_str().unwrap();
    let (status, body, _) = decide(&d, &petra, debit_id, "approve", &key()).await;
    assert_eq!((status, error_code(&body)), (409, "insufficient_funds"));
    let (_, pending) = d.server.get("/admin/v1/adjustments?status=pending", Some(&petra)).await;
    let pending: Vec<&str> =
        pending["items"].as_array().unwrap().iter().map(|a| a["adjustment_id"].as_str().unwrap()).collect();
    assert_eq!(pending, [debit_id, own_id]);
    d.deposit(&d.alice.account_id, "100.00", "RUB").await;
    let (status, approved, _) = decide(&d, &petra, debit_id, "approve", &key()).await;
    assert_eq!((status, &approved["amount"]), (200, &json!("-150.00")), "{approved}");
    assert_eq!(d.balance(&d.alice).await, "50.00");

    // Rejected: nothing moves, and it stays decided.
    let (status, rejected, _) = decide(&d, &petra, own_id, "reject", "").await;
    assert_eq!((status, &rejected["status"], &rejected["transfer_id"]), (200, &json!("rejected"), &Value::Null));
    let (status, body, _) = decide(&d, &petra, own_id, "approve", &key()).await;
    assert_eq!((status, error_code(&body)), (409, "adjustment_not_pending"));
    assert_eq!(d.balance(&d.alice).await, "50.00");

    // Lists by status, page by page.
    let (_, approved_list) = d.server.get("/admin/v1/adjustments?status=approved&limit=1", Some(&petra)).await;
    assert_eq!(approved_list["items"][0]["adjustment_id"], json!(debit_id));
    let cursor = approved_list["next_cursor"].as_str().unwrap();
    let (_, next) =
        d.server.get(&format!("/admin/v1/adjustments?status=approved&limit=1&cursor={cursor}"), Some(&petra)).await;
    assert_eq!((&next["items"][0]["adjustment_id"], &next["next_cursor"]), (&json!(id), &Value::Null));

    // Refusals that change nothing.
    let before = d.state().await;
    let (status, body, _) = decide(&d, &petra, &key(), "approve", &key()).await;
    assert_eq!((status, error_code(&body)), (404, "not_found"));
    let (status, body, _) = decide(&d, &petra, "nope", "reject", "").await;
    assert_eq!((status, error_code(&body)), (404, "not_found"));
    let (status, body, _) = decide(&d, &petra, debit_id, "approve", "").await;
    assert_eq!((status, error_code(&body)), (400, "idempotency_key_required"));
    for (amount, status_code, code) in [
        ("0", 422, "invalid_amount"),
        ("-0.00", 400, "invalid_amount"),
        ("1.001", 422, "invalid_amount"),
        ("+1.00", 400, "invalid_amount"),
    ] {
        let (status, body) = propose(&d, &olga, &d.alice.account_id, amount).await;
        assert_eq!((status, error_code(&body)), (status_code, code), "{amount}");
    }
    let (status, body) = propose(&d, &olga, &key(), "1.00").await;
    assert_eq!((status, error_code(&body)), (404, "not_found"));
    let wrong = json!({"account_id": d.alice.account_id, "amount": "1.00", "currency": "BRL", "reason": "x"});
    let (status, body) = d.server.post("/admin/v1/adjustments", Some(&olga), wrong).await;
    assert_eq!((status, error_code(&body)), (422, "currency_mismatch"));
    let blank = json!({"account_id": d.alice.account_id, "amount": "1.00", "currency": "RUB", "reason": " "});
    let (status, body) = d.server.post("/admin/v1/adjustments", Some(&olga), blank).await;
    assert_eq!((status, error_code(&body)), (422, "invalid_request"));
    let viewer = operator(&d, "Vera", "viewer").await;
    let (status, body) = propose(&d, &viewer, &d.alice.account_id, "1.00").await;
    assert_eq!((status, error_code(&body)), (403, "forbidden"));
    let (status, body) = propose(&d, &d.alice.access_token, &d.alice.account_id, "1.00").await;
    assert_eq!((status, error_code(&body)), (401, "unauthenticated"));
    assert_eq!(d.state().await, before);
    d.server.finish().await;
}

async fn an_undecided_adjustment_expires(db: Db) {
    let d = Desk::open_with(db, &["--adjustment-ttl-s", "1"]).await;
    let petra = operator(&d, "Petra", "approver").await;
    let (_, proposed) = propose(&d, &d.admin, &d.alice.account_id, "10.00").await;
    let id = proposed["adjustment_id"].as_str().unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    let (status, body, _) = decide(&d, &petra, id, "approve", &key()).await;
    assert_eq!((status, error_code(&body)), (409, "adjustment_not_pending"));
    let (_, expired) = d.server.get("/admin/v1/adjustments?status=expired", Some(&petra)).await;
    assert_eq!(
        (&expired["items"][0]["adjustment_id"], &expired["items"][0]["status"]),
        (&json!(id), &json!("expired"))
    );
    let (_, pending) = d.server.get("/admin/v1/adjustments?status=pending", Some(&petra)).await;
    assert_eq!(pending["items"], json!([]));
    assert_eq!(d.balance(&d.alice).await, "0.00");
    d.server.finish().await;
}

async fn place_hold(d: &Desk, account: &str, amount: &str, transfer: Option<&str>) -> (u16, Value) {
    let mut body = json!({"amount": amount, "currency": "RUB", "reason": "MED claim 40"});
    if let Some(transfer) = transfer {
        body["transfer_id"] = json!(transfer);
    }
    d.server.post(&format!("/admin/v1/accounts/{account}/holds"), Some(&d.admin), body).await
}

async fn account_view(d: &Desk, account: &str) -> Value {
    let (status, view) = d.server.get(&format!("/admin/v1/accounts/{account}"), Some(&d.admin)).await;
    assert_eq!(status, 200, "{view}");
    view
}

async fn a_hold_keeps_money_until_it_is_returned_or_released(db: Db) {
    let d = Desk::open(db).await;
    let carol = d.server.sign_in(CAROL, "phone").await;
    d.deposit(&d.alice.account_id, "1000.00", "RUB").await;
    let claimed = d.send(&d.alice, &d.bob, "300.00").await;
    let claimed = claimed["transfer_id"].as_str().unwrap();

    let (status, hold) = place_hold(&d, &d.bob.account_id, "200.00", Some(claimed)).await;
    assert_eq!((status, &hold["status"], &hold["transfer_id"]), (201, &json!("active"), &json!(claimed)), "{hold}");
    let hold_id = hold["hold_id"].as_str().unwrap().to_owned();
    let view = account_view(&d, &d.bob.account_id).await;
    assert_eq!(
        (&view["balance"], &view["held"], &view["available"]),
        (&json!("300.00"), &json!("200.00"), &json!("100.00"))
    );

    // The balance alone would allow this; the hold does not.
    let body = json!({"to": {"account_id": carol.account_id}, "amount": "150.00", "currency": "RUB"});
    let (status, refused, _) = d.server.post_keyed("/v1/transfers", &d.bob.access_token, &key(), body).await;
    assert_eq!((status, error_code(&refused)), (422, "insufficient_funds"));
    d.send(&d.bob, &carol, "100.00").await;
    let body = json!({"account_id": d.bob.account_id, "amount": "1.00", "currency": "RUB", "external_ref": "out"});
    let (status, refused, _) = d.server.post_keyed("/admin/v1/withdrawals", &d.admin, &key(), body).await;
    assert_eq!((status, error_code(&refused)), (422, "insufficient_funds"));
    let before = d.state().await;
    let (status, refused) = place_hold(&d, &d.bob.account_id, "0.01", None).await;
    assert_eq!((status, error_code(&refused)), (409, "insufficient_funds"), "nothing is available to hold");
    let (status, refused, _) = d.reverse(claimed, &key(), json!({"reason": "around the hold"})).await;
    assert_eq!(
        (status, error_code(&refused)),
        (409, "insufficient_funds"),
        "held money is not taken back but by its hold"
    );
    assert_eq!(d.state().await, before);

    // Returned: a reversal of the claimed transfer, paid by the held money.
    let give_back = key();
    let path = format!("/admin/v1/holds/{hold_id}/return");
    let (status, returned, text) = d.server.post_keyed(&path, &d.admin, &give_back, json!({})).await;
    assert_eq!((status, &returned["status"]), (200, &json!("returned")), "{returned}");
    let reversal = returned["return_transfer_id"].as_str().unwrap();
    let (_, reversals) = d.search("kind=reversal").await;
    assert_eq!(
        (&reversals["items"][0]["transfer_id"], &reversals["items"][0]["amount"]),
        (&json!(reversal), &json!("200.00"))
    );
    assert_eq!(reversals["items"][0]["reverses"], json!(claimed));
    assert_eq!((d.balance(&d.alice).await, d.balance(&d.bob).await), ("900.00".into(), "0.00".into()));
    assert_eq!(account_view(&d, &d.bob.account_id).await["held"], "0.00");
    let (status, _, replay) = d.server.post_keyed(&path, &d.admin, &give_back, json!({})).await;
    assert_eq!((status, replay), (200, text), "a retry with the key answers the same and moves nothing");
    assert_eq!(d.balance(&d.alice).await, "900.00");
    let before = d.state().await;
    let (status, refused, _) = d.server.post_keyed(&path, &d.admin, &key(), json!({})).await;
    assert_eq!((status, error_code(&refused)), (409, "hold_not_active"));
    let (status, refused) =
        d.server.post(&format!("/admin/v1/holds/{hold_id}/release"), Some(&d.admin), json!({})).await;
    assert_eq!((status, error_code(&refused)), (409, "hold_not_active"));
    assert_eq!(d.state().await, before);

    // Without a transfer, a hold can only be released.
    let (_, plain) = place_hold(&d, &d.alice.account_id, "50.00", None).await;
    let plain_id = plain["hold_id"].as_str().unwrap();
    assert_eq!(account_view(&d, &d.alice.account_id).await["available"], "850.00");
    let (status, refused, _) =
        d.server.post_keyed(&format!("/admin/v1/holds/{plain_id}/return"), &d.admin, &key(), json!({})).await;
    assert_eq!((status, error_code(&refused)), (409, "not_reversible"));
    let (_, active) =
        d.server.get(&format!("/admin/v1/holds?account={}&status=active", d.alice.account_id), Some(&d.admin)).await;
    assert_eq!(active["items"][0]["hold_id"], json!(plain_id), "{active}");
    let (status, released) =
        d.server.post(&format!("/admin/v1/holds/{plain_id}/release"), Some(&d.admin), json!({})).await;
    assert_eq!((status, &released["status"]), (200, &json!("released")));
    assert_eq!(account_view(&d, &d.alice.account_id).await["available"], "900.00");

    // Refusals that change nothing.
    let before = d.state().await;
    let (status, refused) = place_hold(&d, &d.alice.account_id, "1.00", Some(claimed)).await;
    assert_eq!((status, error_code(&refused)), (422, "invalid_request"), "the claimed transfer did not pay alice");
    let (status, refused) = place_hold(&d, &d.bob.account_id, "1.00", Some(&key())).await;
    assert_eq!((status, error_code(&refused)), (404, "not_found"));
    let (status, refused) = place_hold(&d, &key(), "1.00", None).await;
    assert_eq!((status, error_code(&refused)), (404, "not_found"));
    let (status, refused) = place_hold(&d, &d.alice.account_id, "0", None).await;
    assert_eq!((status, error_code(&refused)), (422, "invalid_amount"));
    let wrong = json!({"amount": "1.00", "currency": "BRL", "reason": "x"});
    let (status, refused) =
        d.server.post(&format!("/admin/v1/accounts/{}/holds", d.alice.account_id), Some(&d.admin), wrong).await;
    assert_eq!((status, error_code(&refused)), (422, "currency_mismatch"));
    let (status, refused) =
        d.server.post(&format!("/admin/v1/holds/{}/release", key()), Some(&d.admin), json!({})).await;
    assert_eq!((status, error_code(&refused)), (404, "not_found"));
    let viewer = operator(&d, "Vera", "viewer").await;
    let body = json!({"amount": "1.00", "currency": "RUB", "reason": "x"});
    let (status, refused) =
        d.server.post(&format!("/admin/v1/accounts/{}/holds", d.alice.account_id), Some(&viewer), body).await;
    assert_eq!((status, error_code(&refused)), (403, "forbidden"));
    assert_eq!(d.state().await, before);
    d.server.finish().await;
}

async fn a_hold_releases_itself_when_it_expires(db: Db) {
    let d = Desk::open_with(db, &["--hold-ttl-s", "1"]).await;
    d.deposit(&d.alice.account_id, "100.00", "RUB").await;
    let (_, hold) = place_hold(&d, &d.alice.account_id, "60.00", None).await;
    assert_eq!(account_view(&d, &d.alice.account_id).await["available"], "40.00");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let expired = loop {
        let (_, expired) = d.server.get("/admin/v1/holds?status=expired", Some(&d.admin)).await;
        if !expired["items"].as_array().unwrap().is_empty() {
            break expired;
        }
        assert!(std::time::Instant::now() < deadline, "the hold never expired\n{}", d.server.log());
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(
        (&expired["items"][0]["hold_id"], &expired["items"][0]["decided_by"]),
        (&hold["hold_id"], &json!("system"))
    );
    assert_eq!(account_view(&d, &d.alice.account_id).await["available"], "100.00");
    d.send(&d.alice, &d.bob, "100.00").await;
    d.state().await;
    d.server.finish().await;
}

async fn audit(d: &Desk, query: &str) -> Vec<Value> {
    let (status, page) = d.server.get(&format!("/admin/v1/audit?limit=200&{query}"), Some(&d.admin)).await;
    assert_eq!(status, 200, "{page}");
    let mut items = page["items"].as_array().unwrap().clone();
    items.reverse();
    items
}

async fn verify(d: &Desk) -> Value {
    let (status, verdict) = d.server.get("/admin/v1/audit/verify", Some(&d.admin)).await;
    assert_eq!(status, 200, "{verdict}");
    verdict
}

async fn every_admin_action_is_in_the_audit_chain(db: Db) {
    let d = Desk::open(db).await;
    let petra = operator(&d, "Petra", "approver").await;
    let alice = d.alice.account_id.clone();
    let body = json!({"account_id": alice, "amount": "500.00", "currency": "RUB", "external_ref": "rail-9"});
    let response = d
        .server
        .http
        .post(format!("{}/admin/v1/deposits", d.server.url))
        .bearer_auth(&d.admin)
        .header("idempotency-key", key())
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let request_id = response.headers()["x-request-id"].to_str().unwrap().to_owned();
    let sent = d.send(&d.alice, &d.bob, "100.00").await;
    let (status, _) = d
        .server
        .post(&format!("/admin/v1/accounts/{alice}/freeze"), Some(&d.admin), json!({"reason": "claim 50"}))
        .await;
    assert_eq!(status, 200);
    d.server.post(&format!("/admin/v1/accounts/{alice}/unfreeze"), Some(&d.admin), json!({"reason": "cleared"})).await;
    let (status, _, _) = d
        .reverse(sent["transfer_id"].as_str().unwrap(), &key(), json!({"reason": "claim 51", "amount": "10.00"}))
        .await;
    assert_eq!(status, 201);
    let (_, hold) = place_hold(&d, &alice, "5.00", None).await;
    d.server
        .post(&format!("/admin/v1/holds/{}/release", hold["hold_id"].as_str().unwrap()), Some(&d.admin), json!({}))
        .await;
    let (_, proposed) = propose(&d, &d.admin, &alice, "1.00").await;
    let (status, _, _) = decide(&d, &petra, proposed["adjustment_id"].as_str().unwrap(), "approve", &key()).await;
    assert_eq!(status, 200);
    let (status, _) = patch_region(&d, "BR", json!({"daily_max": "9000.00"})).await;
    assert_eq!(status, 200);
    let (_, operators) = d.server.get("/admin/v1/operators", Some(&d.admin)).await;
    let petra_id =
        operators["items"].as_array().unwrap().iter().find(|o| o["name"] == "Petra").unwrap()["operator_id"].clone();
    let (status, _) = d
        .server
        .call(Method::DELETE, &format!("/admin/v1/operators/{}", petra_id.as_str().unwrap()), Some(&d.admin), None)
        .await;
    assert_eq!(status, 204);
    // Refused: no entry.
    let (status, _) = d
        .server
        .post(&format!("/admin/v1/accounts/{alice}/unfreeze"), Some(&d.admin), json!({"reason": "again"}))
        .await;
    assert_eq!(status, 409);

    let entries = audit(&d, "").await;
    let actions: Vec<&str> = entries.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        [
            "operator_created",
            "operator_created",
            "deposit",
            "freeze",
            "unfreeze",
            "reversal",
            "hold_placed",
            "hold_released",
            "adjustment_proposed",
            "adjustment_approved",
            "region_changed",
            "operator_revoked",
        ],
        "{entries:?}"
    );
    let seqs: Vec<i64> = entries.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (1..=12).collect::<Vec<_>>());
    assert_eq!(
        (entries[0]["operator"].as_str(), entries[1]["target"].as_str()),
        (Some("bootstrap"), petra_id.as_str())
    );
    let deposit = &entries[2];
    assert_eq!(
        (deposit["target"].as_str(), deposit["request_id"].as_str()),
        (Some(alice.as_str()), Some(request_id.as_str()))
    );
    let freeze = &entries[3];
    let before: Value = serde_json::from_str(freeze["before"].as_str().unwrap()).unwrap();
    let after: Value = serde_json::from_str(freeze["after"].as_str().unwrap()).unwrap();
    assert_eq!((&before["status"], &after["status"]), (&json!("active"), &json!("frozen")));
    let region = &entries[10];
    let before: Value = serde_json::from_str(region["before"].as_str().unwrap()).unwrap();
    let after: Value = serde_json::from_str(region["after"].as_str().unwrap()).unwrap();
    assert_eq!((&before["daily_max"], &after["daily_max"]), (&json!("10000.00"), &json!("9000.00")));
    assert_eq!(audit(&d, &format!("target={alice}&action=freeze")).await.len(), 1);

    let verdict = verify(&d).await;
    assert_eq!(
        (&verdict["ok"], &verdict["entries"], &verdict["first_bad"], &verdict["head"]),
        (&json!(true), &json!(12), &Value::Null, &entries[11]["hash"])
    );
    d.server.finish().await;
}

/// Changing, deleting or reordering one entry in the database (with the
/// append-only triggers dropped) makes verification name it.
async fn a_tampered_audit_log_names_the_entry(db: Db) {
    let d = Desk::open(db).await;
    for n in 0..4 {
        operator(&d, &format!("Op{n}"), "viewer").await;
    }
    assert_eq!(verify(&d).await["entries"], 5);
    let refused = {
        sqlx::any::install_default_drivers();
        let mut connection = sqlx::AnyConnection::connect(&d.server.database_url).await.unwrap();
        let update =
            sqlx::query("UPDATE audit_log SET operator = 'mallory' WHERE seq = 2").execute(&mut connection).await;
        let delete = sqlx::query("DELETE FROM audit_log WHERE seq = 2").execute(&mut connection).await;
        (update.is_err(), delete.is_err())
    };
    assert_eq!(refused, (true, true), "the database refuses to change or delete an entry");
    let drop_triggers = match db {
        Db::Postgres => "DROP TRIGGER audit_log_append_only ON audit_log",
        Db::Sqlite => "DROP TRIGGER audit_log_no_update",
    };
    d.server.sql(drop_triggers).await;
    if db == Db::Sqlite {
        d.server.sql("DROP TRIGGER audit_log_no_delete").await;
    }
    assert_eq!(verify(&d).await["ok"], true);

    d.server.sql("UPDATE audit_log SET after_json = replace(after_json, 'viewer', 'admin') WHERE seq = 3").await;
    assert_eq!((verify(&d).await["ok"].clone(), verify(&d).await["first_bad"].clone()), (json!(false), json!(3)));
    d.server.sql("UPDATE audit_log SET after_json = replace(after_json, 'admin', 'viewer') WHERE seq = 3").await;
    assert_eq!(verify(&d).await["ok"], true, "put back as it was, it holds again");

    d.server.sql("UPDATE audit_log SET seq = 100 WHERE seq = 2").await;
    d.server.sql("UPDATE audit_log SET seq = 2 WHERE seq = 4").await;
    d.server.sql("UPDATE audit_log SET seq = 4 WHERE seq = 100").await;
    assert_eq!(verify(&d).await["first_bad"], 2, "reordered");
    d.server.sql("UPDATE audit_log SET seq = 100 WHERE seq = 2").await;
    d.server.sql("UPDATE audit_log SET seq = 2 WHERE seq = 4").await;
    d.server.sql("UPDATE audit_log SET seq = 4 WHERE seq = 100").await;
    assert_eq!(verify(&d).await["ok"], true);

    d.server.sql("DELETE FROM audit_log WHERE seq = 3").await;
    assert_eq!(verify(&d).await["first_bad"], 3, "deleted");
    d.server.sql("DELETE FROM audit_log WHERE seq > 2").await;
    let verdict = verify(&d).await;
    assert_eq!((&verdict["first_bad"], &verdict["entries"]), (&json!(3), &json!(2)), "cut from the end: {verdict}");
    let (ok, _, stderr) = admin(&d, &["audit", "verify"]);
    assert!(!ok && stderr.contains("from entry 3"), "{stderr}");
    d.server.finish().await;
}

/// An approval, a reversal, a hold and its return answered 2xx survive
/// `kill -9`; replayed with the same keys after the restart they answer
/// the same and move nothing more.
async fn operator_actions_answered_survive_a_crash(db: Db) {
    let mut d = Desk::open(db).await;
    let petra = operator(&d, "Petra", "approver").await;
    d.deposit(&d.alice.account_id, "1000.00", "RUB").await;
    let sent = d.send(&d.alice, &d.bob, "400.00").await;
    let sent_id = sent["transfer_id"].as_str().unwrap().to_owned();

    let (_, proposed) = propose(&d, &d.admin, &d.bob.account_id, "25.00").await;
    let adjustment = proposed["adjustment_id"].as_str().unwrap().to_owned();
    let approval_key = key();
    let (status, _, approved) = decide(&d, &petra, &adjustment, "approve", &approval_key).await;
    assert_eq!(status, 200);
    let reversal_key = key();
    let reversal_body = json!({"reason": "claim 60", "amount": "100.00"});
    let (status, _, reversed) = d.reverse(&sent_id, &reversal_key, reversal_body.clone()).await;
    assert_eq!(status, 201);
    let hold_key = key();
    let hold_path = format!("/admin/v1/accounts/{}/holds", d.bob.account_id);
    let hold_body = json!({"amount": "50.00", "currency": "RUB", "reason": "claim 61", "transfer_id": sent_id});
    let (status, hold, placed) = d.server.post_keyed(&hold_path, &d.admin, &hold_key, hold_body.clone()).await;
    assert_eq!(status, 201, "{hold}");
    let return_path = format!("/admin/v1/holds/{}/return", hold["hold_id"].as_str().unwrap());
    let return_key = key();
    let (status, _, returned) = d.server.post_keyed(&return_path, &d.admin, &return_key, json!({})).await;
    assert_eq!(status, 200);
    let before = d.state().await;
    assert_eq!((d.balance(&d.alice).await, d.balance(&d.bob).await), ("750.00".into(), "275.00".into()));

    d.server.crash_and_restart().await;
    assert_eq!(d.state().await, before, "everything answered is still there");
    let (status, _, again) = decide(&d, &petra, &adjustment, "approve", &approval_key).await;
    assert_eq!((status, again), (200, approved));
    let (status, _, again) = d.reverse(&sent_id, &reversal_key, reversal_body).await;
    assert_eq!((status, again), (201, reversed));
    let (status, _, again) = d.server.post_keyed(&hold_path, &d.admin, &hold_key, hold_body).await;
    assert_eq!((status, again), (201, placed));
    let (status, _, again) = d.server.post_keyed(&return_path, &d.admin, &return_key, json!({})).await;
    assert_eq!((status, again), (200, returned));
    assert_eq!(d.state().await, before, "the replays moved nothing");
    assert_eq!(verify(&d).await["ok"], true);
    d.server.finish().await;
}

async fn balance_at(d: &Desk, account: &str, at: &str) -> String {
    let query = format!("/admin/v1/accounts/{account}/balance?at={}", at.replace('+', "%2B"));
    let (status, body) = d.server.get(&query, Some(&d.admin)).await;
    assert_eq!(status, 200, "{body}");
    body["balance"].as_str().unwrap().to_owned()
}

async fn pause() -> String {
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let now = jiff::Timestamp::now().to_string();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    now
}

async fn balances_at_any_moment_and_the_statement(db: Db) {
    let d = Desk::open(db).await;
    let alice = d.alice.account_id.clone();
    let t0 = pause().await;
    let deposit = d.deposit(&alice, "100.00", "RUB").await;
    let t1 = pause().await;
    let sent = d.send(&d.alice, &d.bob, "30.00").await;
    let t2 = pause().await;
    let (status, _, _) = d
        .reverse(sent["transfer_id"].as_str().unwrap(), &key(), json!({"reason": "claim 70", "amount": "10.00"}))
        .await;
    assert_eq!(status, 201);
    let t3 = pause().await;
    for (at, expected) in [(&t0, "0.00"), (&t1, "100.00"), (&t2, "70.00"), (&t3, "80.00")] {
        assert_eq!(balance_at(&d, &alice, at).await, expected, "at {at}");
    }
    // At the very millisecond of a transfer, it counts.
    assert_eq!(balance_at(&d, &alice, deposit["created_at"].as_str().unwrap()).await, "100.00");
    assert_eq!(balance_at(&d, &d.bob.account_id, &t3).await, "20.00");

    let (status, statement) =
        d.server.get(&format!("/v1/wallet/statement?from={t1}&to={t3}"), Some(&d.alice.access_token)).await;
    assert_eq!(status, 200, "{statement}");
    assert_eq!((&statement["opening_balance"], &statement["closing_balance"]), (&json!("100.00"), &json!("80.00")));
    let lines: Vec<(&str, &str, &str)> = statement["movements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["kind"].as_str().unwrap(), m["amount"].as_str().unwrap(), m["balance"].as_str().unwrap()))
        .collect();
    assert_eq!(lines, [("p2p", "-30.00", "70.00"), ("reversal", "10.00", "80.00")]);
    assert_eq!(statement["movements"][0]["counterparty"], json!(d.bob.account_id));
    let (status, whole) = d.server.get("/v1/wallet/statement", Some(&d.alice.access_token)).await;
    assert_eq!((status, &whole["opening_balance"], &whole["closing_balance"]), (200, &json!("0.00"), &json!("80.00")));
    assert_eq!(whole["movements"].as_array().unwrap().len(), 3);
    let (_, empty) =
        d.server.get(&format!("/v1/wallet/statement?from={t0}&to={t0}"), Some(&d.alice.access_token)).await;
    assert_eq!((&empty["opening_balance"], &empty["movements"]), (&json!("0.00"), &json!([])));

    for (query, code) in [
        (format!("from={t3}&to={t1}"), "invalid_range"),
        ("from=2024-01-01T00:00:00Z&to=2026-01-01T00:00:00Z".to_owned(), "invalid_range"),
        ("from=yesterday".to_owned(), "invalid_request"),
        ("colour=red".to_owned(), "invalid_request"),
    ] {
        let (status, body) = d.server.get(&format!("/v1/wallet/statement?{query}"), Some(&d.alice.access_token)).await;
        assert_eq!((status, error_code(&body)), (400, code), "{query}");
    }
    let (status, body) = d.server.get(&format!("/admin/v1/accounts/{alice}/balance"), Some(&d.admin)).await;
    assert_eq!((status, error_code(&body)), (400, "invalid_request"), "at is required");
    let (status, body) = d.server.get(&format!("/admin/v1/accounts/{}/balance?at={t3}", key()), Some(&d.admin)).await;
    assert_eq!((status, error_code(&body)), (404, "not_found"));
    d.server.finish().await;
}

/// Over a history long enough to have checkpoints, the balance at every
/// moment equals the sum of the movements up to it.
async fn balances_at_a_moment_over_a_long_history(db: Db) {
    let d = Desk::open(db).await;
    let alice = d.alice.account_id.clone();
    // 32 at a time: batches of several deposits, as in production.
    let deposits: Vec<(u16, Value, String)> = futures::stream::iter((0..1_500).map(|n| {
        let body = json!({"account_id": alice, "amount": format!("{}.{:02}", 1 + n % 7, n % 100), "currency": "RUB", "external_ref": "rail"});
        let server = &d.server;
        let admin = d.admin.clone();
        async move { server.post_keyed("/admin/v1/deposits", &admin, &key(), body).await }
    }))
    .buffer_unordered(32)
    .collect()
    .await;
    let mut made: Vec<(i64, i64)> = deposits
        .iter()
        .map(|(status, body, _)| {
            assert_eq!(*status, 201, "{body}");
            let at: jiff::Timestamp = body["created_at"].as_str().unwrap().parse().unwrap();
            let minor = (body["amount"].as_str().unwrap().parse::<f64>().unwrap() * 100.0).round() as i64;
            (at.as_millisecond(), minor)
        })
        .collect();
    made.sort();
    let checkpoints = d.server.sql_i64("SELECT COUNT(*) FROM balance_checkpoints").await;
    for probe in [0, 1, 499, 500, 777, 1_000, 1_234, 1_499] {
        let at = made[probe].0;
        let expected: i64 = made.iter().filter(|(when, _)| *when <= at).map(|(_, minor)| minor).sum();
        let moment = jiff::Timestamp::from_millisecond(at).unwrap().to_string();
        let expected = format!("{}.{:02}", expected / 100, expected % 100);
        assert_eq!(balance_at(&d, &alice, &moment).await, expected, "at {moment} ({checkpoints} checkpoints)");
    }
    d.server.finish().await;
}

/// `courier admin …` as an operator runs it: JSON for scripts, tables for
/// people, and errors that say what to do.
pub(crate) fn admin(d: &Desk, args: &[&str]) -> (bool, String, String) {
    admin_as(d, &d.admin, args)
}

fn admin_as(d: &Desk, key: &str, args: &[&str]) -> (bool, String, String) {
    let output = std::process::Command::new(support::courier_bin())
        .arg("admin")
        .args(args)
        .args(["--url", &d.server.url])
        .env("COURIER_ADMIN_KEY", key)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

pub(crate) fn admin_json(d: &Desk, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let (ok, stdout, stderr) = admin(d, &all);
    assert!(ok, "courier admin {args:?}: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|_| panic!("not JSON: {stdout}"))
}

async fn the_admin_cli_moves_searches_reverses_and_freezes(db: Db) {
    let d = Desk::open(db).await;
    let alice = d.alice.account_id.as_str();
    let deposit =
        admin_json(&d, &["deposit", "--account", alice, "--amount", "300.00", "--currency", "RUB", "--ref", "sbp-1"]);
    assert_eq!((&deposit["kind"], &deposit["amount"]), (&json!("deposit"), &json!("300.00")), "{deposit}");
    let sent = d.send(&d.alice, &d.bob, "100.00").await;
    let sent_id = sent["transfer_id"].as_str().unwrap();

    let found = admin_json(&d, &["search", "--account", alice, "--kind", "p2p"]);
    assert_eq!(found.as_array().map(Vec::len), Some(1), "{found}");
    assert_eq!(found[0]["transfer_id"], sent["transfer_id"]);
    let (ok, table, _) = admin(&d, &["search", "--account", alice]);
    assert!(ok && table.starts_with("TRANSFER_ID") && table.contains(sent_id) && table.contains("deposit"), "{table}");

    let reversal = admin_json(
        &d,
        &["reverse", sent_id, "--reason", "claim 20", "--amount", "40.00", "--idempotency-key", "claim-20"],
    );
    assert_eq!((&reversal["kind"], &reversal["amount"]), (&json!("reversal"), &json!("40.00")), "{reversal}");
    let again = admin_json(
        &d,
        &["reverse", sent_id, "--reason", "claim 20", "--amount", "40.00", "--idempotency-key", "claim-20"],
    );
    assert_eq!(again, reversal, "a retry with the key applies once");
    let (ok, _, stderr) = admin(&d, &["reverse", sent_id, "--reason", "too much", "--amount", "70.00"]);
    assert!(!ok && stderr.contains("already_reversed (409)") && stderr.contains("--idempotency-key"), "{stderr}");

    let frozen = admin_json(&d, &["freeze", alice, "--reason", "claim 21"]);
    assert_eq!(frozen["status"], "frozen");
    let view = admin_json(&d, &["account", alice]);
    assert_eq!((&view["balance"], &view["freeze"]["reason"]), (&json!("240.00"), &json!("claim 21")), "{view}");
    let (ok, table, _) = admin(&d, &["account", alice]);
    assert!(ok && table.contains("frozen_reason") && table.contains("claim 21"), "{table}");
    let (ok, _, stderr) = admin(&d, &["freeze", alice, "--reason", "twice"]);
    assert!(!ok && stderr.contains("already_frozen"), "{stderr}");
    admin_json(&d, &["unfreeze", alice, "--reason", "cleared"]);
    let body =
        admin_json(&d, &["withdraw", "--account", alice, "--amount", "40.00", "--currency", "RUB", "--ref", "out-2"]);
    assert_eq!(body["kind"], "withdrawal");
    let report = admin_json(&d, &["reconcile"]);
    assert_eq!(report["balanced"], true, "{report}");
    let (ok, table, _) = admin(&d, &["reconcile"]);
    assert!(ok && table.contains("balanced: true"), "{table}");

    let regions = admin_json(&d, &["regions", "set", "br", "--daily-max", "9000.00", "--fee", "0.00,0.002,5.00"]);
    assert_eq!(
        (&regions[0]["daily_max"], &regions[0]["fee"]["rate"]),
        (&json!("9000.00"), &json!("0.002")),
        "{regions}"
    );
    let (ok, table, _) = admin(&d, &["regions", "show"]);
    assert!(ok && table.contains("9000.00") && table.contains("0.002 up to 5.00"), "{table}");
    let (ok, _, stderr) = admin(&d, &["regions", "set", "RU", "--per-transfer-max", "999999999.00"]);
    assert!(!ok && stderr.contains("invalid_region_rules") && stderr.contains("daily_max"), "{stderr}");

    // Four eyes: the admin proposes, an approver approves; the admin
    // cannot approve its own.
    let proposed = admin_json(
        &d,
        &[
            "adjust",
            "propose",
            "--account",
            alice,
            "--amount",
            "-10.00",
            "--currency",
            "RUB",
            "--reason",
            "duplicate deposit",
        ],
    );
    assert_eq!((&proposed["status"], &proposed["amount"]), (&json!("pending"), &json!("-10.00")), "{proposed}");
    let id = proposed["adjustment_id"].as_str().unwrap();
    let (ok, _, stderr) = admin(&d, &["adjust", "approve", id]);
    assert!(!ok && stderr.contains("four_eyes_violation") && stderr.contains("ask another approver"), "{stderr}");
    let petra = operator(&d, "Petra", "approver").await;
    let (ok, stdout, stderr) = admin_as(&d, &petra, &["adjust", "approve", id, "--json"]);
    assert!(ok, "{stderr}");
    let approved: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(approved["status"], "approved");
    let (ok, table, _) = admin(&d, &["adjust", "list", "--status", "approved"]);
    assert!(ok && table.starts_with("ADJUSTMENT_ID") && table.contains(id), "{table}");

    let hold =
        admin_json(&d, &["hold", "place", alice, "--amount", "5.00", "--currency", "RUB", "--reason", "claim 41"]);
    assert_eq!(hold["status"], "active", "{hold}");
    let (ok, table, _) = admin(&d, &["hold", "list", "--status", "active"]);
    assert!(ok && table.starts_with("HOLD_ID") && table.contains("5.00"), "{table}");
    let (ok, _, stderr) = admin(&d, &["hold", "return", hold["hold_id"].as_str().unwrap()]);
    assert!(!ok && stderr.contains("not_reversible") && stderr.contains("release it instead"), "{stderr}");
    let released = admin_json(&d, &["hold", "release", hold["hold_id"].as_str().unwrap()]);
    assert_eq!(released["status"], "released");

    let output = std::process::Command::new(support::courier_bin())
        .args(["admin", "search", "--url", &d.server.url])
        .env_remove("COURIER_ADMIN_KEY")
        .output()
        .unwrap();
    assert!(!output.status.success() && String::from_utf8_lossy(&output.stderr).contains("COURIER_ADMIN_KEY"));
    d.server.finish().await;
}

on_both_databases!(
    balances_at_any_moment_and_the_statement,
    balances_at_a_moment_over_a_long_history,
    operator_actions_answered_survive_a_crash,
    every_admin_action_is_in_the_audit_chain,
    a_tampered_audit_log_names_the_entry,
    a_hold_keeps_money_until_it_is_returned_or_released,
    a_hold_releases_itself_when_it_expires,
    adjustments_need_a_second_pair_of_eyes,
    an_undecided_adjustment_expires,
    region_rules_change_live_for_the_very_next_transfer,
    the_admin_cli_moves_searches_reverses_and_freezes,
    a_transfer_is_reversed_in_parts_with_its_fee_then_no_more,
    deposits_and_withdrawals_are_reversed_even_on_frozen_wallets,
    operators_search_transfers_by_every_filter_with_a_cursor,
    the_account_view_shows_the_balance_history_and_freeze,
);
