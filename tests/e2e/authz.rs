//! Who may call what: every `/v1` route of `/openapi.json` × (no token, an
//! expired token, a signed-out device's token, another user's token, the
//! owner's token), with the status each must get, from one table. A route
//! missing from the table fails the test.

use crate::support;

use std::collections::BTreeSet;

use courier_accounts::tokens::{TokenIssuer, TokenKey};
use reqwest::Method;
use serde_json::{Value, json};
use support::ws::{Phone, sdp};
use support::{Db, Server, Session, error_code};

const OWNER: &str = "+79161140001";
const OTHER: &str = "+79161140002";
const THIRD: &str = "+79161140003";

/// Routes that take no access token (signing in), and the signaling socket,
/// which authenticates in-band (its matrix is in the signaling tests).
const NOT_BEARER: [(&str, &str); 5] = [
    ("POST", "/v1/auth/codes"),
    ("POST", "/v1/auth/sessions"),
    ("POST", "/v1/auth/refresh"),
    ("GET", "/v1/auth/keys"),
    ("GET", "/v1/calls/ws"),
];

/// One route: how to call it, and what the owner and another user get.
struct Row {
    method: Method,
    /// As `/openapi.json` names it.
    route: &'static str,
    /// With the owner's resources filled in.
    path: String,
    body: Option<Value>,
    owner: u16,
    /// Another signed-in user: the owner's resources are not theirs (404),
    /// their own views are (200).
    other: u16,
}

fn row(method: Method, route: &'static str, path: String, body: Option<Value>, owner: u16, other: u16) -> Row {
    Row { method, route, path, body, owner, other }
}

async fn call(server: &Server, row: &Row, token: Option<&str>) -> (u16, Value) {
    let mut request = server.http.request(row.method.clone(), format!("{}{}", server.url, row.path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = &row.body {
        request = request.json(body);
    }
    if row.method == Method::POST && row.route == "/v1/transfers" {
        request = request.header("Idempotency-Key", uuid::Uuid::now_v7().to_string());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// The owner's call with `callee` (offline: it ends at once as unavailable).
async fn a_call(server: &Server, owner: &Session, callee: &Session) -> String {
    let mut phone = Phone::signed_in(&server.url, "owner", &owner.access_token).await;
    phone.ok("invite", json!({"call_id": "authz-call", "callee": callee.account_id, "sdp": sdp("offer")})).await;
    assert_eq!(phone.hangup("authz-call").await, "unavailable");
    "authz-call".into()
}

async fn every_user_route_admits_its_owner_alone(db: Db) {
    let server = Server::start_with(db, &["--sign-in-code-resend-after-s", "0"]).await;
    let owner = server.sign_in(OWNER, "phone").await;
    let other = server.sign_in(OTHER, "phone").await;
    let third = server.sign_in(THIRD, "phone").await;
    let spare = server.sign_in(OWNER, "laptop").await;
    let signed_out = server.sign_in(OWNER, "tablet").await;
    let path = format!("/v1/me/devices/{}", signed_out.device_id);
    assert_eq!(server.call(Method::DELETE, &path, Some(&owner.access_token), None).await.0, 204);
    // An expired token, signed with the server's own key an hour ago.
    let key = TokenKey::load(&server.dir.path().join("data/token-signing-key.pem")).unwrap();
    let expired = TokenIssuer::new(key, vec![], 900).issue(
        &owner.account_id,
        &owner.device_id,
        "RU",
        courier_common::time::now_s() - 3_600,
    );

    // What the owner has: money, a transfer, a call.
    let admin = server.bootstrap_admin();
    let (status, body, _) = server
        .post_keyed(
            "/admin/v1/deposits",
            &admin,
            "authz-deposit",
            json!({"account_id": owner.account_id, "amount": "100.00", "currency": "RUB", "external_ref": "authz"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, transfer, _) = server
        .post_keyed(
            "/v1/transfers",
            &owner.access_token,
            "authz-transfer",
            json!({"to": {"account_id": third.account_id}, "amount": "1.00", "currency": "RUB"}),
        )
        .await;
    assert_eq!(status, 201, "{transfer}");
    let transfer = transfer["transfer_id"].as_str().unwrap().to_owned();
    let call_id = a_call(&server, &owner, &third).await;
    let money = json!({"to": {"account_id": third.account_id}, "amount": "1.00", "currency": "RUB"});

    let rows = [
        row(Method::GET, "/v1/me", "/v1/me".into(), None, 200, 200),
        row(Method::GET, "/v1/me/devices", "/v1/me/devices".into(), None, 200, 200),
        row(Method::DELETE, "/v1/me/devices/{id}", format!("/v1/me/devices/{}", spare.device_id), None, 204, 404),
        row(Method::GET, "/v1/me/settings", "/v1/me/settings".into(), None, 200, 200),
        row(Method::PATCH, "/v1/me/settings", "/v1/me/settings".into(), Some(json!({"p2p": "always"})), 200, 200),
        row(Method::GET, "/v1/me/blocked", "/v1/me/blocked".into(), None, 200, 200),
        row(Method::PUT, "/v1/me/blocked/{account_id}", format!("/v1/me/blocked/{}", third.account_id), None, 204, 204),
        row(
            Method::DELETE,
            "/v1/me/blocked/{account_id}",
            format!("/v1/me/blocked/{}", third.account_id),
            None,
            204,
            204,
        ),
        row(Method::GET, "/v1/calls/ice-servers", "/v1/calls/ice-servers".into(), None, 200, 200),
        row(Method::GET, "/v1/calls/history", "/v1/calls/history".into(), None, 200, 200),
        row(
            Method::POST,
            "/v1/calls/{id}/rating",
            format!("/v1/calls/{call_id}/rating"),
            Some(json!({"rating": 4})),
            204,
            404,
        ),
        row(
            Method::POST,
            "/v1/calls/{id}/stats",
            format!("/v1/calls/{call_id}/stats"),
            Some(json!({"rtt_ms": 20.0, "candidate_type": "host"})),
            204,
            404,
        ),
        row(Method::GET, "/v1/wallet", "/v1/wallet".into(), None, 200, 200),
        row(Method::GET, "/v1/wallet/statement", "/v1/wallet/statement".into(), None, 200, 200),
        row(Method::POST, "/v1/transfers", "/v1/transfers".into(), Some(money), 201, 422),
        row(Method::GET, "/v1/transfers", "/v1/transfers".into(), None, 200, 200),
        row(Method::GET, "/v1/transfers/quote", "/v1/transfers/quote?amount=1.00".into(), None, 200, 200),
        row(Method::GET, "/v1/transfers/{id}", format!("/v1/transfers/{transfer}"), None, 200, 404),
    ];

    // Every bearer route of the document has a row, and no row is stale.
    let (status, openapi) = server.get("/openapi.json", None).await;
    assert_eq!(status, 200);
    let documented: BTreeSet<(String, String)> = support::documented_routes(&openapi, "/v1/")
        .into_iter()
        .filter(|(method, path)| !NOT_BEARER.contains(&(method.as_str(), path.as_str())))
        .collect();
    let tabled: BTreeSet<(String, String)> =
        rows.iter().map(|row| (row.method.as_str().to_owned(), row.route.to_owned())).collect();
    assert_eq!(tabled, documented, "the table and /openapi.json's /v1 routes differ");

    for row in &rows {
        let what = format!("{} {}", row.method, row.path);
        for (who, token) in [
            ("no token", None),
            ("an expired token", Some(expired.as_str())),
            ("a signed-out device's token", Some(signed_out.access_token.as_str())),
        ] {
            let (status, body) = call(&server, row, token).await;
            assert_eq!((status, error_code(&body)), (401, "unauthenticated"), "{what} with {who}: {body}");
        }
        let (status, body) = call(&server, row, Some(&other.access_token)).await;
        assert_eq!(status, row.other, "{what} as another user: {body}");
        let (status, body) = call(&server, row, Some(&owner.access_token)).await;
        assert_eq!(status, row.owner, "{what} as its owner: {body}");
    }
    server.finish().await;
}

on_both_databases!(every_user_route_admits_its_owner_alone);
