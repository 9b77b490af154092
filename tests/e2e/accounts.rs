//! The accounts service end to end: the real binary, a real database (SQLite
//! and PostgreSQL), the webhook code sender, and an independent JWT library.

use crate::support;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jwt_simple::prelude::{Clock, Duration as JwtDuration, *};
use reqwest::Method;
use serde_json::{Value, json};
use support::{Db, Server, error_code};

const ALICE: &str = "+79161234567";
const BOB: &str = "+79167654321";

async fn sign_in_creates_one_account_per_normalised_number(db: Db) {
    let server = Server::start_with(db, &["--sign-in-code-resend-after-s", "0"]).await;
    let first = server.sign_in("+7 916 123-45-67", "phone").await;
    let message = &server.hook.messages(ALICE)[0];
    assert_eq!(message["phone"], ALICE);
    assert_eq!(message["code"].as_str().unwrap().len(), 6);
    assert!(message["expires_at"].as_str().unwrap().ends_with('Z'));

    let second = server.sign_in(ALICE, "laptop").await;
    assert_eq!(first.account_id, second.account_id, "two spellings, one account");
    assert_ne!(first.device_id, second.device_id);
    assert_eq!(first.expires_in, 900);

    let (status, me) = server.get("/v1/me", Some(&second.access_token)).await;
    assert_eq!(status, 200);
    assert_eq!(me["account_id"], first.account_id.as_str());
    assert_eq!(me["phone"], ALICE);
    assert_eq!(me["region"], "RU");

    let brazil = server.sign_in("+55 11 91234-5678", "phone").await;
    let (_, me) = server.get("/v1/me", Some(&brazil.access_token)).await;
    assert_eq!(me["region"], "BR");
    server.finish().await;
}

async fn tokens_verify_offline_with_the_published_jwks(db: Db) {
    let server = Server::start(db).await;
    let session = server.sign_in(ALICE, "phone").await;
    let (status, jwks) = server.get("/v1/auth/keys", None).await;
    assert_eq!(status, 200);
    let jwk = &jwks["keys"][0];
    assert_eq!(
        (jwk["kty"].as_str(), jwk["crv"].as_str(), jwk["alg"].as_str()),
        (Some("OKP"), Some("Ed25519"), Some("EdDSA"))
    );
    let public = URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap();
    let key = Ed25519PublicKey::from_bytes(&public).unwrap();
    let options = VerificationOptions {
        allowed_issuers: Some(HashSet::from_strings(&["courier"])),
        allowed_audiences: Some(HashSet::from_strings(&["courier"])),
        ..Default::default()
    };
    let claims = key.verify_token::<Value>(&session.access_token, Some(options)).expect("verifies with the JWKS alone");
    assert_eq!(claims.subject.as_deref(), Some(session.account_id.as_str()));
    assert_eq!(claims.custom["did"], session.device_id.as_str());
    assert_eq!(claims.custom["region"], "RU");
    let lifetime = claims.expires_at.unwrap().as_secs() - claims.issued_at.unwrap().as_secs();
    assert!(lifetime <= 15 * 60, "access tokens live at most 15 minutes");
    server.finish().await;
}

/// Signs claims with the server's own key file, as a forger who stole nothing
/// could not: lets the test mint an expired token without waiting.
fn sign_with_key_file(server: &Server, claims: JWTClaims<Value>, kid: &str) -> String {
    let pem = std::fs::read_to_string(server.dir.path().join("data/token-signing-key.pem")).unwrap();
    use ed25519_dalek::pkcs8::DecodePrivateKey;
    let key = ed25519_dalek::SigningKey::from_pkcs8_pem(&pem).unwrap();
    Ed25519KeyPair::from_bytes(&key.to_keypair_bytes()).unwrap().with_key_id(kid).sign(claims).unwrap()
}

async fn bad_tokens_are_unauthenticated(db: Db) {
    let server = Server::start(db).await;
    let session = server.sign_in(ALICE, "phone").await;
    let (_, jwks) = server.get("/v1/auth/keys", None).await;
    let kid = jwks["keys"][0]["kid"].as_str().unwrap().to_owned();
    let custom = json!({"did": session.device_id, "region": "RU"});

    let mut expired = Claims::with_custom_claims(custom.clone(), JwtDuration::from_secs(60))
        .with_subject(&session.account_id)
        .with_issuer("courier")
        .with_audience("courier");
    let now = Clock::now_since_epoch();
    expired.issued_at = Some(now - JwtDuration::from_secs(7_200));
    expired.expires_at = Some(now - JwtDuration::from_secs(3_600));
    let expired = sign_with_key_file(&server, expired, &kid);

    let foreign = Ed25519KeyPair::generate()
        .with_key_id(&kid)
        .sign(
            Claims::with_custom_claims(custom, JwtDuration::from_secs(600))
                .with_subject(&session.account_id)
                .with_issuer("courier")
                .with_audience("courier"),
        )
        .unwrap();

    let mut forged = session.access_token.clone();
    forged.pop();
    forged.push(if session.access_token.ends_with('A') { 'B' } else { 'A' });

    for (what, header) in [
        ("missing", None),
        ("not bearer", Some(format!("Basic {}", session.access_token))),
        ("garbage", Some("Bearer abc".to_owned())),
        ("forged signature", Some(format!("Bearer {forged}"))),
        ("expired", Some(format!("Bearer {expired}"))),
        ("another key", Some(format!("Bearer {foreign}"))),
    ] {
        let mut request = server.http.get(format!("{}/v1/me", server.url));
        if let Some(header) = header {
            request = request.header("authorization", header);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{what}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(error_code(&body), "unauthenticated", "{what}");
    }
    server.finish().await;
}

async fn refresh_rotates_and_reuse_revokes_the_session(db: Db) {
    let server = Server::start(db).await;
    let session = server.sign_in(ALICE, "phone").await;
    let (status, rotated) =
        server.post("/v1/auth/refresh", None, json!({"refresh_token": session.refresh_token})).await;
    assert_eq!(status, 200, "{rotated}");
    assert_eq!(rotated["device_id"], session.device_id.as_str());
    assert_ne!(rotated["refresh_token"], session.refresh_token.as_str());
    let (status, _) = server.get("/v1/me", Some(rotated["access_token"].as_str().unwrap())).await;
    assert_eq!(status, 200);

    // The spent token again: a thief or a replay. The whole session dies.
    let (status, body) = server.post("/v1/auth/refresh", None, json!({"refresh_token": session.refresh_token})).await;
    assert_eq!((status, error_code(&body)), (401, "refresh_token_reused"));
    let (status, body) =
        server.post("/v1/auth/refresh", None, json!({"refresh_token": rotated["refresh_token"]})).await;
    assert_eq!((status, error_code(&body)), (401, "invalid_refresh_token"), "the rotated token died with the session");

    let (status, body) = server.post("/v1/auth/refresh", None, json!({"refresh_token": "crt_nope"})).await;
    assert_eq!((status, error_code(&body)), (401, "invalid_refresh_token"));
    server.finish().await;
}

async fn devices_are_listed_and_revoked(db: Db) {
    let server = Server::start_with(db, &["--sign-in-code-resend-after-s", "0"]).await;
    let phone = server.sign_in(ALICE, "phone").await;
    let laptop = server.sign_in(ALICE, "laptop").await;
    let bob = server.sign_in(BOB, "bob's phone").await;

    let (status, list) = server.get("/v1/me/devices", Some(&phone.access_token)).await;
    assert_eq!(status, 200);
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items.iter().filter(|d| d["current"] == true).count(), 1);
    let (_, first_page) = server.get("/v1/me/devices?limit=1", Some(&phone.access_token)).await;
    assert_eq!(first_page["items"].as_array().unwrap().len(), 1);
    let cursor = first_page["next_cursor"].as_str().unwrap();
    let (_, second_page) =
        server.get(&format!("/v1/me/devices?limit=1&cursor={cursor}"), Some(&phone.access_token)).await;
    assert_eq!(second_page["items"][0]["device_id"], laptop.device_id.as_str());
    assert!(second_page["next_cursor"].is_null());
    // A cursor outside the documented form is a bad request; one of the form
    // that this server never handed out (here: no text at all, or a NUL)
    // cannot be read.
    for (cursor, status_wanted, code) in
        [("!!", 400, "invalid_request"), ("a", 422, "invalid_cursor"), ("AA", 422, "invalid_cursor")]
    {
        let (status, body) = server.get(&format!("/v1/me/devices?cursor={cursor}"), Some(&phone.access_token)).await;
        assert_eq!((status, error_code(&body)), (status_wanted, code), "{cursor}");
    }
    // An id that is not of the form ids take names nothing, before any lookup.
    let (status, body) = server.call(Method::DELETE, "/v1/me/devices/%00", Some(&phone.access_token), None).await;
    assert_eq!((status, error_code(&body)), (404, "not_found"));

    // Someone else's device is not found, and stays alive.
    let (status, body) = server
        .call(Method::DELETE, &format!("/v1/me/devices/{}", bob.device_id), Some(&phone.access_token), None)
        .await;
    assert_eq!((status, error_code(&body)), (404, "not_found"));
    let (status, _) = server.post("/v1/auth/refresh", None, json!({"refresh_token": bob.refresh_token})).await;
    assert_eq!(status, 200);

    let (status, _) = server
        .call(Method::DELETE, &format!("/v1/me/devices/{}", laptop.device_id), Some(&phone.access_token), None)
        .await;
    assert_eq!(status, 204);
    let (status, body) = server.post("/v1/auth/refresh", None, json!({"refresh_token": laptop.refresh_token})).await;
    assert_eq!((status, error_code(&body)), (401, "invalid_refresh_token"));
    let (_, list) = server.get("/v1/me/devices", Some(&phone.access_token)).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let (status, _) = server
        .call(Method::DELETE, &format!("/v1/me/devices/{}", laptop.device_id), Some(&phone.access_token), None)
        .await;
    assert_eq!(status, 404, "already revoked");
    server.finish().await;
}

async fn settings_and_block_list(db: Db) {
    let server = Server::start(db).await;
    let alice = server.sign_in(ALICE, "phone").await;
    let bob = server.sign_in(BOB, "phone").await;
    let token = Some(alice.access_token.as_str());

    let (status, settings) = server.get("/v1/me/settings", token).await;
    assert_eq!((status, settings), (200, json!({"calls_from": "everybody", "p2p": "always"})));
    let (status, settings) = server.call(Method::PATCH, "/v1/me/settings", token, Some(json!({"p2p": "never"}))).await;
    assert_eq!((status, settings), (200, json!({"calls_from": "everybody", "p2p": "never"})));
    let (_, settings) =
        server.call(Method::PATCH, "/v1/me/settings", token, Some(json!({"calls_from": "nobody"}))).await;
    assert_eq!(settings, json!({"calls_from": "nobody", "p2p": "never"}));
    for bad in [json!({"calls_from": "contacts"}), json!({"p2p": 1}), json!({"p2p": null})] {
        let (status, body) = server.call(Method::PATCH, "/v1/me/settings", token, Some(bad.clone())).await;
        assert_eq!((status, error_code(&body)), (400, "invalid_setting"), "{bad}");
    }
    let (status, body) = server.call(Method::PATCH, "/v1/me/settings", token, Some(json!({"volume": 11}))).await;
    assert_eq!((status, error_code(&body)), (400, "invalid_request"));
    let (_, settings) = server.get("/v1/me/settings", token).await;
    assert_eq!(settings, json!({"calls_from": "nobody", "p2p": "never"}), "refusals changed nothing");

    let (status, body) =
        server.call(Method::PUT, "/v1/me/blocked/01900000-0000-7000-8000-000000000000", token, None).await;
    assert_eq!((status, error_code(&body)), (404, "not_found"));
    let (status, body) = server.call(Method::PUT, &format!("/v1/me/blocked/{}", alice.account_id), token, None).await;
    assert_eq!((status, error_code(&body)), (422, "invalid_request"), "blocking yourself");
    for _ in 0..2 {
        let (status, _) = server.call(Method::PUT, &format!("/v1/me/blocked/{}", bob.account_id), token, None).await;
        assert_eq!(status, 204, "blocking is idempotent");
    }
    let (_, list) = server.get("/v1/me/blocked", token).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(list["items"][0]["account_id"], bob.account_id.as_str());
    let (_, bobs) = server.get("/v1/me/blocked", Some(&bob.access_token)).await;
    assert!(bobs["items"].as_array().unwrap().is_empty(), "a block list is private");
    let (status, _) = server.call(Method::DELETE, &format!("/v1/me/blocked/{}", bob.account_id), token, None).await;
    assert_eq!(status, 204);
    let (status, body) = server.call(Method::DELETE, &format!("/v1/me/blocked/{}", bob.account_id), token, None).await;
    assert_eq!((status, error_code(&body)), (404, "not_found"));
    server.finish().await;
}

async fn bad_sign_in_input_changes_nothing(db: Db) {
    let server = Server::start(db).await;
    // Outside the documented form: 400; of the form but no mobile number: 422.
    for (phone, what, status_wanted) in [
        ("89161234567", "no +", 400),
        ("hello", "text", 400),
        ("+7 916 abc", "letters", 400),
        ("+7916", "too short", 422),
        ("+74951234567", "landline", 422),
    ] {
        let (status, body) = server.post("/v1/auth/codes", None, json!({"phone": phone})).await;
        assert_eq!((status, error_code(&body)), (status_wanted, "invalid_phone"), "{what}");
    }
    let (status, body) = server.post("/v1/auth/codes", None, json!({"phone": ALICE, "extra": true})).await;
    assert_eq!((status, error_code(&body)), (400, "invalid_request"));
    let (status, body) = server.post("/v1/auth/codes", None, json!({"phone": 79161234567u64})).await;
    assert_eq!((status, error_code(&body)), (400, "invalid_request"));
    let response = server
        .http
        .post(format!("{}/v1/auth/codes", server.url))
        .header("content-type", "application/json")
        .body("{\"phone\":")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let response = server
        .http
        .post(format!("{}/v1/auth/codes", server.url))
        .body("{\"phone\":\"+79161234567\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415, "JSON needs its content type");
    let body: Value = response.json().await.unwrap();
    assert_eq!(error_code(&body), "unsupported_media_type");
    let (status, body) = server.call(Method::PUT, "/v1/auth/codes", None, Some(json!({"phone": ALICE}))).await;
    assert_eq!((status, error_code(&body)), (405, "method_not_allowed"));
    let huge = json!({"phone": "x".repeat(70 * 1024)});
    let (status, body) = server.post("/v1/auth/codes", None, huge).await;
    assert_eq!((status, error_code(&body)), (413, "payload_too_large"));
    assert!(server.hook.messages(ALICE).is_empty(), "no code was sent for any refused request");

    // Wrong codes count; the sixth try is refused even with the right code.
    let (status, _) = server.post("/v1/auth/codes", None, json!({"phone": ALICE})).await;
    assert_eq!(status, 202);
    let code = server.hook.last_code(ALICE);
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let (status, body) =
        server.post("/v1/auth/sessions", None, json!({"phone": ALICE, "code": "12ab", "device_name": "d"})).await;
    assert_eq!((status, error_code(&body)), (401, "invalid_code"), "a malformed code is a wrong code");
    for attempt in 1..=5 {
        let (status, body) =
            server.post("/v1/auth/sessions", None, json!({"phone": ALICE, "code": wrong, "device_name": "d"})).await;
        assert_eq!((status, error_code(&body)), (401, "invalid_code"), "attempt {attempt}");
    }
    let response = server
        .http
        .post(format!("{}/v1/auth/sessions", server.url))
        .json(&json!({"phone": ALICE, "code": code, "device_name": "d"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=300).contains(&retry_after), "until a new code may be asked for: {retry_after}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(error_code(&body), "too_many_attempts");
    let (status, body) =
        server.post("/v1/auth/sessions", None, json!({"phone": BOB, "code": "123456", "device_name": "d"})).await;
    assert_eq!((status, error_code(&body)), (401, "invalid_code"), "no code was ever sent to Bob");
    let (status, body) =
        server.post("/v1/auth/sessions", None, json!({"phone": ALICE, "code": code, "device_name": ""})).await;
    assert_eq!((status, error_code(&body)), (400, "invalid_request"));
    server.finish().await;
}

async fn codes_expire(db: Db) {
    let server = Server::start_with(db, &["--sign-in-code-ttl-s", "1"]).await;
    let (status, body) = server.post("/v1/auth/codes", None, json!({"phone": ALICE})).await;
    assert_eq!((status, body["expires_in"].as_u64()), (202, Some(1)));
    let code = server.hook.last_code(ALICE);
    tokio::time::sleep(std::time::Duration::from_millis(1_300)).await;
    let (status, body) =
        server.post("/v1/auth/sessions", None, json!({"phone": ALICE, "code": code, "device_name": "d"})).await;
    assert_eq!((status, error_code(&body)), (401, "code_expired"));
    server.finish().await;
}

async fn code_requests_are_rate_limited(db: Db) {
    let server = Server::start_with(db, &["--sign-in-codes-per-addr-per-hour-max", "3"]).await;
    let (status, _) = server.post("/v1/auth/codes", None, json!({"phone": ALICE})).await;
    assert_eq!(status, 202);
    let response =
        server.http.post(format!("{}/v1/auth/codes", server.url)).json(&json!({"phone": ALICE})).send().await.unwrap();
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(error_code(&body), "rate_limited");
    assert_eq!(server.hook.messages(ALICE).len(), 1, "the refused request sent nothing");

    // Per client address: the third request of this hour passes, the fourth does not.
    let (status, _) = server.post("/v1/auth/codes", None, json!({"phone": BOB})).await;
    assert_eq!(status, 202);
    let (status, body) = server.post("/v1/auth/codes", None, json!({"phone": "+79160000001"})).await;
    assert_eq!((status, error_code(&body)), (429, "rate_limited"));
    server.finish().await;
}

async fn hourly_limit_per_number(db: Db) {
    let server =
        Server::start_with(db, &["--sign-in-code-resend-after-s", "0", "--sign-in-codes-per-phone-per-hour-max", "2"])
            .await;
    for _ in 0..2 {
        let (status, _) = server.post("/v1/auth/codes", None, json!({"phone": ALICE})).await;
        assert_eq!(status, 202);
    }
    let response =
        server.http.post(format!("{}/v1/auth/codes", server.url)).json(&json!({"phone": ALICE})).send().await.unwrap();
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry_after > 3_000, "waits for the hour window: {retry_after}");
    server.finish().await;
}

async fn failed_delivery_is_a_502_and_stores_nothing(db: Db) {
    let server = Server::start(db).await;
    server.hook.set_failing(true);
    let (status, body) = server.post("/v1/auth/codes", None, json!({"phone": ALICE})).await;
    assert_eq!((status, error_code(&body)), (502, "code_delivery_failed"));
    server.hook.set_failing(false);
    // Nothing was stored as sent, so the resend limit does not apply.
    let session = server.sign_in(ALICE, "phone").await;
    assert!(!session.access_token.is_empty());
    server.finish().await;
}

async fn a_webhook_that_hangs_times_out_as_a_failed_delivery(db: Db) {
    let server = Server::start_with(db, &["--code-webhook-timeout-s", "1"]).await;
    server.hook.set_hanging(true);
    let started = std::time::Instant::now();
    let (status, body) = server.post("/v1/auth/codes", None, json!({"phone": ALICE})).await;
    assert_eq!((status, error_code(&body)), (502, "code_delivery_failed"));
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "the webhook timeout bounds the request");
    server.hook.set_hanging(false);
    let (status, _) = server.post("/v1/auth/codes", None, json!({"phone": ALICE})).await;
    assert_eq!(status, 202, "the timed-out attempt was not stored as sent");
    server.finish().await;
}

async fn everything_survives_a_crash(db: Db) {
    let mut server = Server::start(db).await;
    let session = server.sign_in(ALICE, "phone").await;
    let (_, keys_before) = server.get("/v1/auth/keys", None).await;
    server.crash_and_restart().await;
    let (_, keys_after) = server.get("/v1/auth/keys", None).await;
    assert_eq!(keys_before, keys_after, "the signing key survived");
    let (status, me) = server.get("/v1/me", Some(&session.access_token)).await;
    assert_eq!(status, 200, "tokens issued before the crash still verify");
    assert_eq!(me["account_id"], session.account_id.as_str());
    let (status, rotated) =
        server.post("/v1/auth/refresh", None, json!({"refresh_token": session.refresh_token})).await;
    assert_eq!(status, 200, "the device session survived: {rotated}");
    assert_eq!(rotated["account_id"], session.account_id.as_str());
    server.finish().await;
}

async fn secrets_never_reach_the_log(db: Db) {
    let server = Server::start(db).await;
    let session = server.sign_in(ALICE, "phone").await;
    let (status, _) = server.post("/v1/auth/refresh", None, json!({"refresh_token": session.refresh_token})).await;
    assert_eq!(status, 200);
    let code = server.hook.last_code(ALICE);
    let log = server.log();
    assert!(log.contains("sign-in code sent"), "the log is captured: {log}");
    for secret in [code.as_str(), session.access_token.as_str(), session.refresh_token.as_str(), "9161234567"] {
        assert!(!log.contains(secret), "{secret} leaked into the log");
    }
    server.finish().await;
}

async fn operators_and_bootstrap(db: Db) {
    let server = Server::start(db).await;
    let bootstrap = |extra: &[&str]| {
        let mut command = std::process::Command::new(support::courier_bin());
        command.args(["admin", "bootstrap", "--database-url", &server.database_url]).args(extra);
        command.output().unwrap()
    };
    let output = bootstrap(&[]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let admin_key = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    assert!(admin_key.starts_with("cop_"));
    let again = bootstrap(&[]);
    assert!(!again.status.success(), "a second bootstrap needs --force");
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));

    let (status, body) = server.get("/admin/v1/operators", None).await;
    assert_eq!((status, error_code(&body)), (401, "unauthenticated"));
    let (status, body) = server.get("/admin/v1/operators", Some("cop_wrong")).await;
    assert_eq!((status, error_code(&body)), (401, "unauthenticated"));
    let user = server.sign_in(ALICE, "phone").await;
    let (status, _) = server.get("/admin/v1/operators", Some(&user.access_token)).await;
    assert_eq!(status, 401, "a user token is not an operator key");

    let (status, viewer) =
        server.post("/admin/v1/operators", Some(&admin_key), json!({"name": "Vera", "role": "viewer"})).await;
    assert_eq!(status, 201, "{viewer}");
    let viewer_key = viewer["api_key"].as_str().unwrap().to_owned();
    let (status, body) =
        server.post("/admin/v1/operators", Some(&viewer_key), json!({"name": "X", "role": "admin"})).await;
    assert_eq!((status, error_code(&body)), (403, "forbidden"));
    let (status, body) =
        server.post("/admin/v1/operators", Some(&admin_key), json!({"name": "X", "role": "root"})).await;
    assert_eq!((status, error_code(&body)), (400, "invalid_request"));

    // The CLI over the API, as a script would use it.
    let output = std::process::Command::new(support::courier_bin())
        .args(["admin", "operators", "list", "--json", "--url", &server.url])
        .env("COURIER_ADMIN_KEY", &admin_key)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let listed: Value = serde_json::from_slice(&output.stdout).unwrap();
    let names: Vec<&str> = listed.as_array().unwrap().iter().map(|o| o["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["admin", "Vera"]);

    let viewer_id = viewer["operator_id"].as_str().unwrap();
    let (status, _) =
        server.call(Method::DELETE, &format!("/admin/v1/operators/{viewer_id}"), Some(&admin_key), None).await;
    assert_eq!(status, 204);
    let (status, _) = server.get("/admin/v1/operators", Some(&viewer_key)).await;
    assert_eq!(status, 401, "a revoked key stops working");
    let (_, me) = server.get("/admin/v1/operators", Some(&admin_key)).await;
    let admin_id = me["items"][0]["operator_id"].as_str().unwrap();
    let (status, body) =
        server.call(Method::DELETE, &format!("/admin/v1/operators/{admin_id}"), Some(&admin_key), None).await;
    assert_eq!((status, error_code(&body)), (409, "conflict"), "the last admin stays");
    server.finish().await;
}

async fn operations_endpoints_and_graceful_shutdown(db: Db) {
    let mut server = Server::start(db).await;
    assert_eq!(server.get("/healthz", None).await.0, 200);
    assert_eq!(server.get("/readyz", None).await, (200, json!({"status": "ready"})));
    let (status, body) = server.get("/no/such/route", None).await;
    assert_eq!((status, error_code(&body)), (404, "not_found"));
    let (status, openapi) = server.get("/openapi.json", None).await;
    assert_eq!(status, 200);
    for path in [
        "/v1/auth/codes",
        "/v1/auth/sessions",
        "/v1/auth/refresh",
        "/v1/auth/keys",
        "/v1/me",
        "/v1/me/devices",
        "/v1/me/devices/{id}",
        "/v1/me/settings",
        "/v1/me/blocked",
        "/v1/me/blocked/{account_id}",
        "/admin/v1/operators",
        "/admin/v1/operators/{id}",
        "/healthz",
        "/readyz",
        "/metrics",
        "/v1/wallet",
        "/v1/transfers",
        "/v1/transfers/{id}",
        "/admin/v1/deposits",
        "/admin/v1/withdrawals",
        "/admin/v1/accounts/{id}/freeze",
        "/admin/v1/accounts/{id}/unfreeze",
        "/admin/v1/reconciliation",
    ] {
        assert!(openapi["paths"][path].is_object(), "{path} is missing from /openapi.json");
    }
    let metrics = server.http.get(format!("{}/metrics", server.url)).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains("http_requests_total{route=\"/openapi.json\",method=\"GET\",status=\"200\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("http_request_duration_seconds_bucket"));
    let status = server.terminate().await;
    assert!(status.success(), "SIGTERM ends the server cleanly: {status:?}");
    server.finish().await;
}

on_both_databases!(
    sign_in_creates_one_account_per_normalised_number,
    tokens_verify_offline_with_the_published_jwks,
    bad_tokens_are_unauthenticated,
    refresh_rotates_and_reuse_revokes_the_session,
    devices_are_listed_and_revoked,
    settings_and_block_list,
    bad_sign_in_input_changes_nothing,
    codes_expire,
    code_requests_are_rate_limited,
    hourly_limit_per_number,
    failed_delivery_is_a_502_and_stores_nothing,
    a_webhook_that_hangs_times_out_as_a_failed_delivery,
    everything_survives_a_crash,
    secrets_never_reach_the_log,
    operators_and_bootstrap,
    operations_endpoints_and_graceful_shutdown,
);
