//! Who may call what under `/admin/v1`: every admin route of
//! `/openapi.json` × (no key, a bad key, a revoked key, a user's access
//! token, viewer, operator, approver, admin), from one table. A route
//! missing from the table fails the test.
//!
//! Each allowed call is one the route refuses for what it names (an
//! unknown id: 404; an empty body: 400) or only reads, so that the matrix
//! changes nothing and every cell can run in any order.

use crate::support;

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::{Value, json};
use support::{Db, Server, error_code};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Role {
    Viewer,
    Operator,
    Approver,
    Admin,
}

const ROLES: [(Role, &str); 4] =
    [(Role::Viewer, "viewer"), (Role::Operator, "operator"), (Role::Approver, "approver"), (Role::Admin, "admin")];

/// One route: how to call it, the least role it admits, and what that
/// role's call answers.
struct Row {
    method: Method,
    /// As `/openapi.json` names it.
    route: &'static str,
    path: String,
    body: Option<Value>,
    least: Role,
    allowed: u16,
}

fn row(method: Method, route: &'static str, path: &str, body: Option<Value>, least: Role, allowed: u16) -> Row {
    Row { method, route, path: path.to_owned(), body, least, allowed }
}

async fn call(server: &Server, row: &Row, token: Option<&str>) -> (u16, Value) {
    let mut request = server.http.request(row.method.clone(), format!("{}{}", server.url, row.path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = &row.body {
        request = request.json(body);
    }
    // Money-moving routes require one; it is harmless elsewhere.
    request = request.header("Idempotency-Key", uuid::Uuid::now_v7().to_string());
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn every_admin_route_admits_its_roles_alone(db: Db) {
    let server = Server::start(db).await;
    let admin = server.bootstrap_admin();
    let user = server.sign_in("+79161160001", "phone").await;
    let mut keys = Vec::new();
    for (role, name) in ROLES {
        let (status, created) =
            server.post("/admin/v1/operators", Some(&admin), json!({"name": name, "role": name})).await;
        assert_eq!(status, 201, "{created}");
        keys.push((role, name, created["api_key"].as_str().unwrap().to_owned()));
    }
    let (_, revoked) = server.post("/admin/v1/operators", Some(&admin), json!({"name": "gone", "role": "admin"})).await;
    let path = format!("/admin/v1/operators/{}", revoked["operator_id"].as_str().unwrap());
    assert_eq!(server.call(Method::DELETE, &path, Some(&admin), None).await.0, 204);
    let revoked_key = revoked["api_key"].as_str().unwrap().to_owned();

    let nobody = uuid::Uuid::now_v7().to_string();
    let id_path = |template: &str| template.replace("{id}", &nobody);
    let reason = || Some(json!({"reason": "authz"}));
    let rows = [
        row(Method::POST, "/admin/v1/operators", "/admin/v1/operators", Some(json!({})), Role::Admin, 400),
        row(Method::GET, "/admin/v1/operators", "/admin/v1/operators", None, Role::Admin, 200),
        row(Method::DELETE, "/admin/v1/operators/{id}", &id_path("/admin/v1/operators/{id}"), None, Role::Admin, 404),
        row(Method::POST, "/admin/v1/deposits", "/admin/v1/deposits", Some(json!({})), Role::Operator, 400),
        row(Method::POST, "/admin/v1/withdrawals", "/admin/v1/withdrawals", Some(json!({})), Role::Operator, 400),
        row(
            Method::POST,
            "/admin/v1/accounts/{id}/freeze",
            &id_path("/admin/v1/accounts/{id}/freeze"),
            reason(),
            Role::Operator,
            404,
        ),
        row(
            Method::POST,
            "/admin/v1/accounts/{id}/unfreeze",
            &id_path("/admin/v1/accounts/{id}/unfreeze"),
            reason(),
            Role::Operator,
            404,
        ),
        row(Method::GET, "/admin/v1/accounts/{id}", &id_path("/admin/v1/accounts/{id}"), None, Role::Viewer, 404),
        row(
            Method::GET,
            "/admin/v1/accounts/{id}/balance",
            &id_path("/admin/v1/accounts/{id}/balance?at=2026-12-06T00:00:00Z"),
            None,
            Role::Viewer,
            404,
        ),
        row(
            Method::POST,
            "/admin/v1/accounts/{id}/holds",
            &id_path("/admin/v1/accounts/{id}/holds"),
            Some(json!({"amount": "1.00", "currency": "RUB", "reason": "authz"})),
            Role::Operator,
            404,
        ),
        row(Method::GET, "/admin/v1/holds", "/admin/v1/holds", None, Role::Viewer, 200),
        row(
            Method::POST,
            "/admin/v1/holds/{id}/release",
            &id_path("/admin/v1/holds/{id}/release"),
            None,
            Role::Operator,
            404,
        ),
        row(
            Method::POST,
            "/admin/v1/holds/{id}/return",
            &id_path("/admin/v1/holds/{id}/return"),
            None,
            Role::Operator,
            404,
        ),
        row(Method::GET, "/admin/v1/reconciliation", "/admin/v1/reconciliation", None, Role::Viewer, 200),
        row(Method::GET, "/admin/v1/transfers", "/admin/v1/transfers", None, Role::Viewer, 200),
        row(
            Method::POST,
            "/admin/v1/transfers/{id}/reverse",
            &id_path("/admin/v1/transfers/{id}/reverse"),
            reason(),
            Role::Operator,
            404,
        ),
        row(Method::POST, "/admin/v1/adjustments", "/admin/v1/adjustments", Some(json!({})), Role::Operator, 400),
        row(Method::GET, "/admin/v1/adjustments", "/admin/v1/adjustments", None, Role::Viewer, 200),
        row(
            Method::POST,
            "/admin/v1/adjustments/{id}/approve",
            &id_path("/admin/v1/adjustments/{id}/approve"),
            None,
            Role::Approver,
            404,
        ),
        row(
            Method::POST,
            "/admin/v1/adjustments/{id}/reject",
            &id_path("/admin/v1/adjustments/{id}/reject"),
            None,
            Role::Approver,
            404,
        ),
        row(Method::GET, "/admin/v1/regions", "/admin/v1/regions", None, Role::Admin, 200),
        row(
            Method::PATCH,
            "/admin/v1/regions/{code}",
            "/admin/v1/regions/US",
            Some(json!({"enabled": true})),
            Role::Admin,
            404,
        ),
        row(Method::GET, "/admin/v1/audit", "/admin/v1/audit", None, Role::Viewer, 200),
        row(Method::GET, "/admin/v1/audit/verify", "/admin/v1/audit/verify", None, Role::Viewer, 200),
        row(Method::GET, "/admin/v1/audit/keys", "/admin/v1/audit/keys", None, Role::Viewer, 200),
        row(Method::GET, "/admin/v1/audit/checkpoints", "/admin/v1/audit/checkpoints", None, Role::Viewer, 200),
        row(
            Method::GET,
            "/admin/v1/reports/daily",
            "/admin/v1/reports/daily?region=RU&date=2026-12-06",
            None,
            Role::Viewer,
            200,
        ),
        row(
            Method::GET,
            "/admin/v1/exports/transfers.csv",
            "/admin/v1/exports/transfers.csv?from=2026-12-01T00:00:00Z&to=2026-12-02T00:00:00Z",
            None,
            Role::Viewer,
            200,
        ),
    ];

    let (status, openapi) = server.get("/openapi.json", None).await;
    assert_eq!(status, 200);
    let documented = support::documented_routes(&openapi, "/admin/");
    let tabled: BTreeSet<(String, String)> =
        rows.iter().map(|row| (row.method.as_str().to_owned(), row.route.to_owned())).collect();
    assert_eq!(tabled, documented, "the table and /openapi.json's /admin routes differ");

    let (_, audit_before) = server.get("/admin/v1/audit/verify", Some(&admin)).await;
    for row in &rows {
        let what = format!("{} {}", row.method, row.path);
        for (who, token) in [
            ("no key", None),
            ("a bad key", Some("cop_not-a-key-of-this-server")),
            ("a revoked key", Some(revoked_key.as_str())),
            ("a user's access token", Some(user.access_token.as_str())),
        ] {
            let (status, body) = call(&server, row, token).await;
            assert_eq!((status, error_code(&body)), (401, "unauthenticated"), "{what} with {who}: {body}");
        }
        for (role, name, key) in &keys {
            let (status, body) = call(&server, row, Some(key)).await;
            if *role >= row.least {
                assert_eq!(status, row.allowed, "{what} as {name}: {body}");
            } else {
                assert_eq!((status, error_code(&body)), (403, "forbidden"), "{what} as {name}: {body}");
            }
        }
    }
    let (_, audit_after) = server.get("/admin/v1/audit/verify", Some(&admin)).await;
    assert_eq!(audit_after["entries"], audit_before["entries"], "the matrix changed nothing an operator can audit");
    server.finish().await;
}

on_both_databases!(every_admin_route_admits_its_roles_alone);
