//! The contract: schemathesis (an outside OpenAPI fuzzer) over a fresh
//! `courier serve`, with every check (`--checks all`), as a signed-in user
//! together with each operator role in turn. Every status a route answers
//! must be in `/openapi.json` with its body's schema, every request valid by
//! the schema must be accepted (or refused for what it means: 422, see
//! `schemathesis.toml`), and every request that is not must be refused.
//!
//! `./scripts/test` installs the pinned schemathesis into a virtual
//! environment and names it in `COURIER_SCHEMATHESIS`.

use crate::support;

use std::path::PathBuf;
use std::process::Stdio;

use reqwest::Method;
use serde_json::json;
use support::ws::{Phone, sdp};
use support::{Db, Server, Session};

const ALICE: &str = "+79161150001";
const BOB: &str = "+79161150002";
/// Generated cases per operation and phase; COURIER_CONTRACT_EXAMPLES for more.
const EXAMPLES_DEFAULT: u32 = 40;

fn schemathesis() -> PathBuf {
    let path = std::env::var_os("COURIER_SCHEMATHESIS").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/tools/schemathesis/bin/schemathesis")
    });
    assert!(
        path.exists(),
        "schemathesis is not installed at {}: ./scripts/test installs it (or set COURIER_SCHEMATHESIS)",
        path.display()
    );
    path
}

/// One schemathesis run; its summary lines, and whether it passed.
async fn run(server: &Server, user_token: &str, operator_key: &str, extra: &[&str]) -> (bool, String) {
    let examples = std::env::var("COURIER_CONTRACT_EXAMPLES").unwrap_or_else(|_| EXAMPLES_DEFAULT.to_string());
    let output = tokio::process::Command::new(schemathesis())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["--no-color", "run"])
        .arg(format!("{}/openapi.json", server.url))
        .args(["--checks", "all", "--max-examples", &examples, "--seed", "20261206"])
        .args(["--workers", "1", "--generation-database", "none"])
        .args(extra)
        .env("COURIER_USER_TOKEN", user_token)
        .env("COURIER_OPERATOR_KEY", operator_key)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.success(), format!("{stdout}\n{stderr}"))
}

/// The server's error lines, to go with a failed run.
fn server_errors(server: &Server) -> String {
    server
        .log()
        .lines()
        .filter(|line| line.contains("ERROR") || line.contains("panicked"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What a run says it did: "N generated, … passed" and its failures line.
fn summary(report: &str) -> String {
    report
        .lines()
        .filter(|line| line.contains("generated") || line.contains("failures") || line.contains(" passed"))
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" | ")
}

async fn operator(server: &Server, admin: &str, role: &str) -> String {
    let (status, body) = server
        .post("/admin/v1/operators", Some(admin), json!({"name": format!("contract {role}"), "role": role}))
        .await;
    assert_eq!(status, 201, "{body}");
    body["api_key"].as_str().unwrap().to_owned()
}

/// Something for the routes with ids to find: money, a transfer and a call.
async fn some_history(server: &Server, admin: &str, alice: &Session, bob: &Session) {
    let money = json!({"account_id": alice.account_id, "amount": "500.00", "currency": "RUB", "external_ref": "c-1"});
    let (status, body, _) = server.post_keyed("/admin/v1/deposits", admin, "contract-deposit", money).await;
    assert_eq!(status, 201, "{body}");
    let transfer = json!({"to": {"account_id": bob.account_id}, "amount": "10.00", "currency": "RUB"});
    let (status, body, _) = server.post_keyed("/v1/transfers", &alice.access_token, "contract-t", transfer).await;
    assert_eq!(status, 201, "{body}");
    let mut phone = Phone::signed_in(&server.url, "alice", &alice.access_token).await;
    phone.ok("invite", json!({"call_id": "contract-call", "callee": bob.account_id, "sdp": sdp("offer")})).await;
    assert_eq!(phone.hangup("contract-call").await, "unavailable");
}

async fn the_api_keeps_its_openapi_contract(db: Db) {
    let server = Server::start_with(db, &["--sign-in-code-resend-after-s", "0"]).await;
    let alice = server.sign_in(ALICE, "phone").await;
    let spare = server.sign_in(ALICE, "laptop").await;
    let bob = server.sign_in(BOB, "phone").await;
    let admin = server.bootstrap_admin();
    some_history(&server, &admin, &alice, &bob).await;
    let mut keys: Vec<(&str, String)> = Vec::new();
    for role in ["viewer", "operator", "approver"] {
        keys.push((role, operator(&server, &admin, role).await));
    }
    // Admin last: its run may delete the other keys.
    keys.push(("admin", admin));

    // Signing out the device whose token the run uses would leave every
    // later request unauthenticated: that route gets a run of its own, last,
    // with a device to lose.
    const SIGN_OUT: &str = "DELETE /v1/me/devices/{id}";
    let mut reports = Vec::new();
    for (role, key) in &keys {
        let (passed, report) = run(&server, &alice.access_token, key, &["--exclude-name", SIGN_OUT]).await;
        assert!(
            passed,
            "schemathesis as a user and an operator with the role {role}:\n{report}\nserver errors:\n{}",
            server_errors(&server)
        );
        reports.push(format!("{role}: {}", summary(&report)));
    }
    let (passed, report) = run(&server, &spare.access_token, &keys[0].1, &["--include-name", SIGN_OUT]).await;
    assert!(passed, "schemathesis on {SIGN_OUT}:\n{report}\nserver errors:\n{}", server_errors(&server));
    reports.push(format!("{SIGN_OUT}: {}", summary(&report)));
    // The user's token still works: nothing the run sent signed it out.
    let (status, _) = server.call(Method::GET, "/v1/me", Some(&alice.access_token), None).await;
    assert_eq!(status, 200);
    println!("{}", reports.join("\n"));
    server.finish().await;
}

on_both_databases!(the_api_keeps_its_openapi_contract);
