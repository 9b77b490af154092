//! Call signaling end to end: the real binary, a real database (SQLite and
//! PostgreSQL), and scripted WebSocket clients driving every message and
//! every error code of API.md's Signaling part.

use crate::support;

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use support::ws::{Phone, sdp};
use support::{Db, Server, Session, error_code};

const ALICE: &str = "+79161110001";
const BOB: &str = "+79161110002";
const CAROL: &str = "+79161110003";
const COMMIT: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const NONCE_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const NONCE_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

async fn start(db: Db, extra: &[&str]) -> Server {
    let mut args = vec!["--sign-in-code-resend-after-s", "0", "--sign-in-codes-per-addr-per-hour-max", "0"];
    args.extend(extra);
    Server::start_with(db, &args).await
}

fn candidates(call_id: &str) -> Value {
    json!({"call_id": call_id, "candidates": [{"candidate": "candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host", "sdpMid": "0", "sdpMLineIndex": 0}]})
}

fn invite(call_id: &str, callee: &Session) -> Value {
    json!({"call_id": call_id, "callee": callee.account_id, "sdp": sdp("offer")})
}

/// Signs `phone` in as `device` and connects that device to signaling as `name`.
async fn online(server: &Server, phone: &str, device: &str, name: &str) -> (Session, Phone) {
    let session = server.sign_in(phone, device).await;
    let phone = Phone::signed_in(&server.url, name, &session.access_token).await;
    (session, phone)
}

/// `a` calls `callee` and `b`, its device, answers: the call is up.
async fn answered_call(a: &mut Phone, b: &mut Phone, call_id: &str, callee: &Session) {
    a.ok("invite", invite(call_id, callee)).await;
    b.event("incoming").await;
    b.ok("answer", json!({"call_id": call_id, "sdp": sdp("answer")})).await;
    a.event("answered").await;
}

async fn history(server: &Server, session: &Session) -> Vec<Value> {
    let (status, body) = server.get("/v1/calls/history", Some(&session.access_token)).await;
    assert_eq!(status, 200, "{body}");
    body["items"].as_array().cloned().unwrap_or_default()
}

/// Waits until the call's record has ended (records are written just after the events go out).
async fn ended_record(server: &Server, session: &Session, call_id: &str) -> Value {
    for _ in 0..100 {
        if let Some(call) = history(server, session).await.into_iter().find(|call| call["call_id"] == call_id)
            && !call["ended_at"].is_null()
        {
            return call;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the record of {call_id} never ended");
}

async fn rings_every_device_and_the_first_answer_wins(db: Db) {
    let server = start(db, &[]).await;
    let (alice, mut a) = online(&server, ALICE, "phone", "alice").await;
    let (bob_phone, mut b1) = online(&server, BOB, "phone", "bob-phone").await;
    let (bob_laptop, mut b2) = online(&server, BOB, "laptop", "bob-laptop").await;
    let (carol, mut c) = online(&server, CAROL, "phone", "carol").await;

    let mut offer = invite("call-1", &bob_phone);
    offer["sas_commit"] = json!(COMMIT);
    let ack = a.ok("invite", offer).await;
    assert_eq!(ack["ice_policy"], "all");
    for b in [&mut b1, &mut b2] {
        let incoming = b.event("incoming").await;
        assert_eq!(incoming["call_id"], "call-1");
        assert_eq!(incoming["caller"], alice.account_id.as_str());
        assert_eq!(incoming["sdp"], sdp("offer"));
        assert_eq!(incoming["ice_policy"], "all");
        assert_eq!(incoming["sas_commit"], COMMIT);
    }
    b1.ok("ringing", json!({"call_id": "call-1"})).await;
    assert_eq!(a.event("ringing").await["call_id"], "call-1");
    b2.refused("candidates", candidates("call-1"), "invalid_state").await;
    // Trickle ICE before the answer: the caller's candidates reach every rung device.
    a.ok("candidates", candidates("call-1")).await;
    assert_eq!(b1.event("candidates").await["candidates"][0]["sdpMid"], "0");
    assert_eq!(b2.event("candidates").await["call_id"], "call-1");

    b2.ok("answer", json!({"call_id": "call-1", "sdp": sdp("answer"), "sas_nonce": NONCE_B})).await;
    let answered = a.event("answered").await;
    assert_eq!(
        (answered["sdp"].as_str(), answered["sas_nonce"].as_str()),
        (Some(sdp("answer").as_str()), Some(NONCE_B))
    );
    assert_eq!(answered["ice_policy"], "all");
    assert_eq!(b1.event("answered_elsewhere").await["call_id"], "call-1");
    b1.refused("answer", json!({"call_id": "call-1", "sdp": sdp("late")}), "not_in_call").await;

    b2.ok("candidates", candidates("call-1")).await;
    assert_eq!(a.event("candidates").await["call_id"], "call-1");
    a.ok("negotiate", json!({"call_id": "call-1", "sdp": sdp("restart"), "kind": "offer"})).await;
    let negotiate = b2.event("negotiate").await;
    assert_eq!((negotiate["kind"].as_str(), negotiate["sdp"].as_str()), (Some("offer"), Some(sdp("restart").as_str())));
    a.ok("sas_reveal", json!({"call_id": "call-1", "nonce": NONCE_A})).await;
    assert_eq!(b2.event("sas_reveal").await["nonce"], NONCE_A);
    b2.refused("sas_reveal", json!({"call_id": "call-1", "nonce": NONCE_B}), "invalid_state").await;

    // A stranger cannot signal into the call, and unknown calls are named as such.
    c.refused("hangup", json!({"call_id": "call-1", "reason": "user_hangup"}), "not_in_call").await;
    c.refused("candidates", candidates("call-1"), "not_in_call").await;
    c.refused("ringing", json!({"call_id": "no-such-call"}), "unknown_call").await;

    tokio::time::sleep(Duration::from_millis(1_100)).await;
    a.ok("hangup", json!({"call_id": "call-1", "reason": "user_hangup"})).await;
    assert_eq!(b2.hangup("call-1").await, "user_hangup");
    b1.quiet(Duration::from_millis(300)).await;

    // History: each party sees the call from its side; a stranger sees nothing.
    let mine = ended_record(&server, &alice, "call-1").await;
    assert_eq!(
        (mine["peer"].as_str(), mine["direction"].as_str()),
        (Some(bob_phone.account_id.as_str()), Some("outgoing"))
    );
    assert_eq!(mine["end_reason"], "user_hangup");
    assert!(mine["duration_s"].as_i64().unwrap() >= 1, "{mine}");
    assert!(!mine["answered_at"].is_null());
    let theirs = history(&server, &bob_laptop).await;
    assert_eq!(
        (theirs[0]["direction"].as_str(), theirs[0]["peer"].as_str()),
        (Some("incoming"), Some(alice.account_id.as_str()))
    );
    assert!(history(&server, &carol).await.is_empty(), "a stranger sees nobody's calls");

    // Ratings and stats: only a party; each party's own.
    let (status, body) = server.post("/v1/calls/call-1/rating", Some(&carol.access_token), json!({"rating": 5})).await;
    assert_eq!((status, error_code(&body)), (404, "not_found"));
    let (status, body) = server.post("/v1/calls/call-1/stats", Some(&carol.access_token), json!({"rtt_ms": 1.0})).await;
    assert_eq!((status, error_code(&body)), (404, "not_found"));
    for bad in
        [json!({"rating": 6}), json!({"rating": 0}), json!({"rating": 3, "problems": ["loud"]}), json!({"rating": "5"})]
    {
        let (status, body) = server.post("/v1/calls/call-1/rating", Some(&bob_phone.access_token), bad.clone()).await;
        assert_eq!((status, error_code(&body)), (400, "invalid_request"), "{bad}");
    }
    let rating = json!({"rating": 4, "problems": ["echo", "echo", "noise"], "comment": "a little echo"});
    let (status, _) = server.post("/v1/calls/call-1/rating", Some(&bob_phone.access_token), rating).await;
    assert_eq!(status, 204);
    for bad in [
        json!({"rtt_ms": -1.0}),
        json!({"packet_loss_pct": 101.0}),
        json!({"candidate_type": "magic"}),
        json!({"rtt": 1}),
        json!({"playout_delay_ms": 600_001.0}),
        json!({"late_frames": -1}),
        json!({"concealed_frames": 1.5}),
    ] {
        let (status, body) = server.post("/v1/calls/call-1/stats", Some(&alice.access_token), bad.clone()).await;
        assert_eq!((status, error_code(&body)), (400, "invalid_request"), "{bad}");
    }
    // A report with figures missing, then full ones (each replaces the last):
    // a missing figure must not spoil the next report's statement.
    for partial in [json!({"jitter_ms": 1.0}), json!({"rtt_ms": null, "setup_ms": 9.0})] {
        let (status, body) = server.post("/v1/calls/call-1/stats", Some(&alice.access_token), partial).await;
        assert_eq!(status, 204, "{body}");
    }
    let figures = json!({"rtt_ms": 473021.6025459501, "jitter_ms": 3.0, "packet_loss_pct": 0.5, "bitrate_kbps": 32.0,
                         "candidate_type": "host", "setup_ms": 180.0, "playout_delay_ms": 40.0, "late_frames": 3,
                         "concealed_frames": 12});
    for _ in 0..3 {
        let (status, body) = server.post("/v1/calls/call-1/stats", Some(&alice.access_token), figures.clone()).await;
        assert_eq!(status, 204, "{body}");
    }
    let mine = &history(&server, &alice).await[0];
    assert_eq!(mine["stats"], figures);
    assert!(mine["rating"].is_null(), "bob's rating is bob's: {mine}");
    let theirs = &history(&server, &bob_phone).await[0];
    assert_eq!((theirs["rating"].as_i64(), &theirs["problems"]), (Some(4), &json!(["echo", "noise"])));
    assert!(theirs["stats"].is_null());

    // A call id names one call forever.
    a.refused("invite", invite("call-1", &carol), "invalid_state").await;
    server.finish().await;
}

async fn reject_busy_and_already_in_call(db: Db) {
    let server = start(db, &[]).await;
    let (alice, mut a) = online(&server, ALICE, "phone", "alice").await;
    let (bob_phone, mut b1) = online(&server, BOB, "phone", "bob-phone").await;
    let (bob_laptop, mut b2) = online(&server, BOB, "laptop", "bob-laptop").await;
    let (carol, mut c) = online(&server, CAROL, "phone", "carol").await;

    a.ok("invite", invite("call-r", &bob_phone)).await;
    b1.event("incoming").await;
    b2.event("incoming").await;
    b2.refused("hangup", json!({"call_id": "call-r", "reason": "glare"}), "bad_message").await;
    b1.ok("reject", json!({"call_id": "call-r"})).await;
    assert_eq!(a.hangup("call-r").await, "rejected");
    assert_eq!(b2.hangup("call-r").await, "rejected", "a reject from one device ends the call on all");
    b1.quiet(Duration::from_millis(200)).await;
    b1.refused("reject", json!({"call_id": "call-r"}), "unknown_call").await;

    a.ok("invite", invite("call-b", &bob_phone)).await;
    b1.event("incoming").await;
    b2.event("incoming").await;
    b1.refused("ringing", json!({"call_id": "call-b", "extra": true}), "bad_message").await;
    b1.ok("answer", json!({"call_id": "call-b", "sdp": sdp("answer")})).await;
    a.event("answered").await;
    b2.event("answered_elsewhere").await;
    b1.refused("reject", json!({"call_id": "call-b"}), "invalid_state").await;
    c.refused("invite", invite("call-c1", &bob_phone), "callee_busy").await;
    c.refused("invite", invite("call-c2", &alice), "callee_busy").await;
    a.refused("invite", invite("call-a2", &carol), "already_in_call").await;
    b1.ok("hangup", json!({"call_id": "call-b", "reason": "busy"})).await;
    assert_eq!(a.hangup("call-b").await, "busy");
    // Free again.
    c.ok("invite", invite("call-c3", &bob_phone)).await;
    b1.event("incoming").await;

    let record = ended_record(&server, &bob_laptop, "call-r").await;
    assert_eq!((record["direction"].as_str(), record["end_reason"].as_str()), (Some("incoming"), Some("rejected")));
    assert_eq!(record["duration_s"], 0);
    server.finish().await;
}

async fn unanswered_calls_time_out_and_offline_callees_are_unavailable(db: Db) {
    let server = start(db, &["--ring-timeout-s", "1"]).await;
    let (_, mut a) = online(&server, ALICE, "phone", "alice").await;
    let (bob, mut b) = online(&server, BOB, "phone", "bob").await;
    let carol = server.sign_in(CAROL, "phone").await;

    a.ok("invite", invite("call-t", &bob)).await;
    b.event("incoming").await;
    assert_eq!(a.hangup("call-t").await, "invite_timeout");
    assert_eq!(b.hangup("call-t").await, "invite_timeout");
    let missed = ended_record(&server, &bob, "call-t").await;
    assert_eq!((missed["direction"].as_str(), missed["end_reason"].as_str()), (Some("missed"), Some("invite_timeout")));

    // Carol has signed in but no device of hers is connected.
    a.ok("invite", invite("call-u", &carol)).await;
    assert_eq!(a.hangup("call-u").await, "unavailable");
    let missed = ended_record(&server, &carol, "call-u").await;
    assert_eq!((missed["direction"].as_str(), missed["end_reason"].as_str()), (Some("missed"), Some("unavailable")));

    // The only rung device goes away: the call ends as unavailable at once.
    a.ok("invite", invite("call-v", &bob)).await;
    b.event("incoming").await;
    b.drop_connection();
    assert_eq!(a.hangup("call-v").await, "unavailable");
    server.finish().await;
}

async fn privacy_settings_and_blocks_are_enforced(db: Db) {
    let server = start(db, &[]).await;
    let (alice, mut a) = online(&server, ALICE, "phone", "alice").await;
    let (bob, mut b) = online(&server, BOB, "phone", "bob").await;
    let (_, mut c) = online(&server, CAROL, "phone", "carol").await;
    let settings = |body: Value| server.call(Method::PATCH, "/v1/me/settings", Some(&bob.access_token), Some(body));

    assert_eq!(settings(json!({"calls_from": "nobody"})).await.0, 200);
    let by_setting = a.refused("invite", invite("n-1", &bob), "callee_not_accepting").await;
    assert_eq!(settings(json!({"calls_from": "everybody"})).await.0, 200);
    let path = format!("/v1/me/blocked/{}", alice.account_id);
    assert_eq!(server.call(Method::PUT, &path, Some(&bob.access_token), None).await.0, 204);
    let by_block = a.refused("invite", invite("n-2", &bob), "callee_not_accepting").await;
    assert_eq!(by_setting["message"], by_block["message"], "the caller cannot tell a block from the setting");
    b.quiet(Duration::from_millis(200)).await;
    // Carol is not blocked.
    c.ok("invite", invite("n-3", &bob)).await;
    b.event("incoming").await;
    c.ok("hangup", json!({"call_id": "n-3", "reason": "user_hangup"})).await;
    assert_eq!(b.hangup("n-3").await, "user_hangup");

    a.refused("invite", json!({"call_id": "n-4", "callee": "no-such-account", "sdp": sdp("o")}), "callee_not_found")
        .await;
    a.refused("invite", invite("n-5", &alice), "invalid_state").await;

    // p2p: never on either side makes the call relay-only for both.
    assert_eq!(server.call(Method::DELETE, &path, Some(&bob.access_token), None).await.0, 204);
    assert_eq!(settings(json!({"p2p": "never"})).await.0, 200);
    let ack = a.ok("invite", invite("n-6", &bob)).await;
    assert_eq!(ack["ice_policy"], "relay");
    assert_eq!(b.event("incoming").await["ice_policy"], "relay");
    b.ok("answer", json!({"call_id": "n-6", "sdp": sdp("answer")})).await;
    assert_eq!(a.event("answered").await["ice_policy"], "relay");
    server.finish().await;
}

async fn glare_resolves_to_the_lesser_call_id(db: Db) {
    let server = start(db, &[]).await;
    let (alice, mut a) = online(&server, ALICE, "phone", "alice").await;
    let (bob, mut b) = online(&server, BOB, "phone", "bob").await;

    // Bob's crossing invite has the lesser id: it stands, Alice's ends with glare.
    a.ok("invite", invite("b-call", &bob)).await;
    b.event("incoming").await;
    b.ok("invite", invite("a-call", &alice)).await;
    assert_eq!(a.hangup("b-call").await, "glare");
    assert_eq!(b.hangup("b-call").await, "glare");
    assert_eq!(a.event("incoming").await["call_id"], "a-call");
    a.ok("answer", json!({"call_id": "a-call", "sdp": sdp("answer")})).await;
    b.event("answered").await;
    b.ok("hangup", json!({"call_id": "a-call", "reason": "user_hangup"})).await;
    assert_eq!(a.hangup("a-call").await, "user_hangup");

    // Alice's invite has the lesser id: Bob's crossing invite ends at once.
    a.ok("invite", invite("x-call", &bob)).await;
    b.event("incoming").await;
    b.ok("invite", invite("y-call", &alice)).await;
    assert_eq!(b.hangup("y-call").await, "glare");
    a.quiet(Duration::from_millis(200)).await;
    b.ok("answer", json!({"call_id": "x-call", "sdp": sdp("answer")})).await;
    a.event("answered").await;
    let record = ended_record(&server, &bob, "y-call").await;
    assert_eq!(record["end_reason"], "glare");
    server.finish().await;
}

async fn a_dropped_device_resumes_within_the_grace_period_and_is_lost_after_it(db: Db) {
    let server = start(db, &["--reconnect-grace-s", "2"]).await;
    let (alice, mut a) = online(&server, ALICE, "phone", "alice").await;
    let (bob, mut b) = online(&server, BOB, "phone", "bob").await;
    answered_call(&mut a, &mut b, "call-g", &bob).await;

    b.drop_connection();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut b = Phone::signed_in(&server.url, "bob-again", &bob.access_token).await;
    b.ok("resume", json!({"call_id": "call-g"})).await;
    b.ok("negotiate", json!({"call_id": "call-g", "sdp": sdp("ice-restart"), "kind": "offer"})).await;
    assert_eq!(a.event("negotiate").await["kind"], "offer");
    a.ok("negotiate", json!({"call_id": "call-g", "sdp": sdp("ice-restart-answer"), "kind": "answer"})).await;
    assert_eq!(b.event("negotiate").await["kind"], "answer");
    // Past the grace period Alice would have heard lost_connection; she did not.
    tokio::time::sleep(Duration::from_millis(2_300)).await;
    a.quiet(Duration::from_millis(100)).await;

    a.drop_connection();
    assert_eq!(b.hangup("call-g").await, "lost_connection");
    let mut a = Phone::signed_in(&server.url, "alice-again", &alice.access_token).await;
    a.refused("resume", json!({"call_id": "call-g"}), "unknown_call").await;
    let record = ended_record(&server, &bob, "call-g").await;
    assert_eq!(record["end_reason"], "lost_connection");
    server.finish().await;
}

async fn bad_frames_get_their_error_codes_and_change_nothing(db: Db) {
    let server = start(db, &["--ws-auth-timeout-s", "1", "--ws-message-bytes-max", "2048"]).await;
    let (alice, mut a) = online(&server, ALICE, "phone", "alice").await;

    // No auth within the deadline.
    let mut silent = Phone::connect(&server.url, "silent").await;
    let close = silent.closed().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 4401);
    assert_eq!(silent.take_events()[0]["code"], "unauthenticated");
    // A bad token, and a first message that is not auth.
    let mut forged = Phone::connect(&server.url, "forged").await;
    forged.refused("auth", json!({"token": "not.a.token"}), "unauthenticated").await;
    assert_eq!(u16::from(forged.closed().await.expect("a close frame").code), 4401);
    let mut eager = Phone::connect(&server.url, "eager").await;
    eager.refused("ping", json!({}), "unauthenticated").await;
    assert_eq!(u16::from(eager.closed().await.expect("a close frame").code), 4401);

    assert_eq!(a.request("ping", json!({})).await["type"], "pong");
    a.refused("auth", json!({"token": alice.access_token}), "invalid_state").await;
    a.send_text("{not json".into()).await;
    let error = a.event("error").await;
    assert_eq!((error["code"].as_str(), &error["id"]), (Some("bad_message"), &Value::Null));
    a.refused("dance", json!({}), "bad_message").await;
    a.refused("ping", json!({"v": 2}), "bad_message").await;
    a.refused("ringing", json!({"call_id": "has space"}), "bad_message").await;
    a.refused("invite", json!({"call_id": "c", "callee": "x", "sdp": "not sdp"}), "bad_message").await;
    // Too large to be read at all, so the error cannot name the message.
    a.send("ping", json!({"pad": "x".repeat(3_000)})).await;
    let error = a.event("error").await;
    assert_eq!((error["code"].as_str(), &error["id"]), (Some("message_too_large"), &Value::Null));
    a.send_binary(vec![1, 2, 3]).await;
    assert_eq!(a.event("error").await["code"], "bad_message");
    a.refused("ringing", json!({"call_id": "ghost"}), "unknown_call").await;
    // The connection survived all of it.
    assert_eq!(a.request("ping", json!({})).await["type"], "pong");
    // Beyond twice the limit the transport does not read the frame: the
    // socket closes with 1009 (message too big).
    a.send("ping", json!({"pad": "x".repeat(9_000)})).await;
    assert_eq!(u16::from(a.closed().await.expect("a close frame").code), 1009);
    server.finish().await;
}

async fn rate_and_device_limits_hold(db: Db) {
    let server =
        start(db, &["--ws-messages-burst", "5", "--ws-messages-per-s", "1", "--devices-per-account-max", "1"]).await;
    let (alice, mut a) = online(&server, ALICE, "phone", "alice").await;
    let alice_laptop = server.sign_in(ALICE, "laptop").await;
    let mut answers = Vec::new();
    for _ in 0..10 {
        answers.push(a.request("ping", json!({})).await);
    }
    let limited = answers.iter().filter(|answer| answer["code"] == "rate_limited").count();
    assert!((4..=6).contains(&limited), "burst 5 of 10 at once: {answers:?}");
    // Bad frames count against the same limit, and past it get no answer:
    // a flood of them costs the server a check each, not a reply each.
    for _ in 0..50 {
        a.send_text("{not json".into()).await;
    }
    a.send_binary(vec![1, 2, 3]).await;
    let answered = a.frames_within(Duration::from_millis(1_500)).await;
    assert!(answered.len() <= 3, "a refill's worth of answers at most, not {}", answered.len());

    // One device per account here: the laptop is refused, the phone reconnecting replaces itself.
    let mut laptop = Phone::connect(&server.url, "laptop").await;
    laptop.refused("auth", json!({"token": alice_laptop.access_token}), "too_many_devices").await;
    assert_eq!(u16::from(laptop.closed().await.expect("a close frame").code), 4429);
    let _again = Phone::signed_in(&server.url, "alice-again", &alice.access_token).await;
    assert_eq!(u16::from(a.closed().await.expect("a close frame").code), 4409);
    server.finish().await;
}

async fn heartbeats_drop_dead_connections_and_keep_live_ones(db: Db) {
    let server = start(db, &["--ws-ping-interval-s", "1", "--ws-idle-timeout-s", "2"]).await;
    let alice = server.sign_in(ALICE, "phone").await;
    let bob = server.sign_in(BOB, "phone").await;
    // Alice's client stops reading, so it answers no pings; Carol's keeps reading.
    let _dead = Phone::signed_in(&server.url, "alice", &alice.access_token).await;
    let (carol, mut live) = online(&server, CAROL, "phone", "carol").await;
    live.quiet(Duration::from_millis(3_500)).await;
    let mut b = Phone::signed_in(&server.url, "bob", &bob.access_token).await;
    b.ok("invite", invite("call-dead", &alice)).await;
    assert_eq!(b.hangup("call-dead").await, "unavailable", "the silent connection was dropped");
    b.ok("invite", invite("call-live", &carol)).await;
    assert_eq!(live.event("incoming").await["call_id"], "call-live");
    server.finish().await;
}

async fn signaling_runs_alone_verifying_tokens_with_the_jwks(db: Db) {
    let server = start(db, &[]).await;
    let alice = server.sign_in(ALICE, "phone").await;
    let bob = server.sign_in(BOB, "phone").await;
    let dir = tempfile::tempdir().unwrap();
    let jwks = format!("{}/v1/auth/keys", server.url);
    let data_dir = dir.path().to_str().unwrap();
    let args = ["signaling", "--database-url", &server.database_url, "--jwks-url", &jwks, "--data-dir", data_dir];
    let node = support::Node::start(&args, dir.path().join("signaling.log")).await;
    let (status, body) = server.get("/v1/calls/history", None).await;
    assert_eq!((status, error_code(&body)), (401, "unauthenticated"));
    let (status, body) = server.get("/v1/calls/ws", None).await;
    assert_eq!((status, error_code(&body)), (400, "invalid_request"), "a plain GET is not an upgrade: {body}");

    let mut a = Phone::signed_in(&node.url, "alice", &alice.access_token).await;
    let mut b = Phone::signed_in(&node.url, "bob", &bob.access_token).await;
    answered_call(&mut a, &mut b, "call-n", &bob).await;
    b.ok("hangup", json!({"call_id": "call-n", "reason": "user_hangup"})).await;
    assert_eq!(a.hangup("call-n").await, "user_hangup");
    let http = reqwest::Client::new();
    let response =
        http.get(format!("{}/v1/calls/history", node.url)).bearer_auth(&alice.access_token).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["items"][0]["call_id"], "call-n");
    let (status, _) = server.get("/v1/wallet", Some(&alice.access_token)).await;
    assert_eq!(status, 200, "the full server still runs everything");
    let response = http.get(format!("{}/v1/wallet", node.url)).bearer_auth(&alice.access_token).send().await.unwrap();
    assert_eq!(response.status(), 404, "the signaling node runs signaling only");
    // It serves the browser client, which calls from the page.
    let page = http.get(format!("{}/", node.url)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-security-policy"].to_str().unwrap().contains("script-src 'self'"));
    assert!(page.text().await.unwrap().contains("Number to call"));
    server.finish().await;
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

async fn a_slow_reader_is_cut_off_and_memory_stays_flat(db: Db) {
    let server = start(
        db,
        &[
            "--ws-outbound-queue-len-max",
            "16",
            "--ws-write-timeout-s",
            "2",
            "--ws-messages-burst",
            "100000",
            "--ws-messages-per-s",
            "100000",
        ],
    )
    .await;
    let (_, mut a) = online(&server, ALICE, "phone", "alice").await;
    let (bob, mut b) = online(&server, BOB, "phone", "bob").await;
    answered_call(&mut a, &mut b, "call-s", &bob).await;

    // Bob stops reading. Alice sends 40 MB of candidates his way.
    let big: Vec<Value> = (0..40)
        .map(|i| json!({"candidate": format!("candidate:{i} 1 udp 1 127.0.0.1 {} typ host {}", 50_000 + i, "x".repeat(1_400))}))
        .collect();
    let before = rss_kib(server.pid());
    let mut peak = before;
    for round in 0..700 {
        let answer = a.request("candidates", json!({"call_id": "call-s", "candidates": big})).await;
        assert_eq!(answer["type"], "ack", "{answer}");
        if round % 50 == 0 {
            peak = peak.max(rss_kib(server.pid()));
        }
    }
    peak = peak.max(rss_kib(server.pid()));
    assert!(peak < before + 64 * 1024, "server memory grew from {before} KiB to {peak} KiB");
    let (_, metrics) = server.get("/metrics", None).await;
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    assert!(metrics.contains("signaling_slow_readers_total 1"), "the slow reader was cut off:\n{metrics}");
    drop(b);
    server.finish().await;
}

async fn shutdown_and_crashes_end_calls(db: Db) {
    let mut server = start(db, &[]).await;
    let (alice, mut a) = online(&server, ALICE, "phone", "alice").await;
    let (bob, mut b) = online(&server, BOB, "phone", "bob").await;
    answered_call(&mut a, &mut b, "call-k", &bob).await;
    server.crash_and_restart().await;
    let record = ended_record(&server, &alice, "call-k").await;
    assert_eq!(record["end_reason"], "server_shutdown", "a restart closes what the crash left open");

    let mut a = Phone::signed_in(&server.url, "alice", &alice.access_token).await;
    let mut b = Phone::signed_in(&server.url, "bob", &bob.access_token).await;
    answered_call(&mut a, &mut b, "call-s", &bob).await;
    let status = server.terminate().await;
    assert!(status.success(), "{status:?}");
    assert_eq!(a.hangup("call-s").await, "server_shutdown");
    assert_eq!(b.hangup("call-s").await, "server_shutdown");
    assert_eq!(u16::from(a.closed().await.expect("a close frame").code), 1001);
    assert_eq!(
        server.sql_i64("SELECT COUNT(*) FROM calls WHERE id = 'call-s' AND end_reason = 'server_shutdown'").await,
        1
    );
    server.finish().await;
}

/// Asserts that the server closed `phone`'s socket with 4401 after an
/// `unauthenticated` error saying `why`.
async fn closed_unauthenticated(phone: &mut Phone, why: &str) {
    let close = phone.closed().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 4401, "{}: {close:?}", phone.name);
    let events = phone.take_events();
    let error = events.iter().find(|event| event["type"] == "error").unwrap_or_else(|| panic!("{events:?}"));
    assert_eq!(error["code"], "unauthenticated", "{error}");
    assert!(error["message"].as_str().unwrap_or_default().contains(why), "{error}");
}

async fn a_signed_out_device_loses_its_socket_and_its_tokens_at_once(db: Db) {
    let server = start(db, &[]).await;
    let (_alice, mut a) = online(&server, ALICE, "phone", "alice").await;
    let (bob, mut phone) = online(&server, BOB, "phone", "bob-phone").await;
    let laptop = server.sign_in(BOB, "laptop").await;
    let mut l = Phone::signed_in(&server.url, "bob-laptop", &laptop.access_token).await;
    // Carol is talking to Bob's laptop.
    let (_carol, mut c) = online(&server, CAROL, "phone", "carol").await;
    c.ok("invite", invite("call-before", &bob)).await;
    l.event("incoming").await;
    assert_eq!(phone.event("incoming").await["call_id"], "call-before");
    l.ok("answer", json!({"call_id": "call-before", "sdp": sdp("answer")})).await;
    c.event("answered").await;
    phone.event("answered_elsewhere").await;

    let path = format!("/v1/me/devices/{}", laptop.device_id);
    let signed_out_at = tokio::time::Instant::now();
    let (status, body) = server.call(Method::DELETE, &path, Some(&bob.access_token), None).await;
    assert_eq!(status, 204, "{body}");
    closed_unauthenticated(&mut l, "signed out").await;
    // The laptop cannot come back: its call ends now, not after the grace period.
    assert_eq!(c.hangup("call-before").await, "lost_connection");
    assert!(signed_out_at.elapsed() < Duration::from_secs(5), "{:?}", signed_out_at.elapsed());

    // Its access token is refused everywhere from now on, not when it expires.
    let (status, body) = server.get("/v1/me", Some(&laptop.access_token)).await;
    assert_eq!((status, error_code(&body)), (401, "unauthenticated"), "{body}");
    let mut again = Phone::connect(&server.url, "bob-laptop-again").await;
    again.refused("auth", json!({"token": laptop.access_token}), "unauthenticated").await;
    assert_eq!(u16::from(again.closed().await.expect("a close frame").code), 4401);

    // Calls ring the devices still signed in; the phone's token still works.
    a.ok("invite", invite("call-after", &bob)).await;
    assert_eq!(phone.event("incoming").await["call_id"], "call-after");
    let (status, _) = server.get("/v1/me", Some(&bob.access_token)).await;
    assert_eq!(status, 200);
    server.finish().await;
}

async fn a_socket_lives_no_longer_than_its_token_unless_reauthenticated(db: Db) {
    const TTL_S: u64 = 6;
    let server = start(db, &["--access-token-ttl-s", &TTL_S.to_string()]).await;
    let alice = server.sign_in(ALICE, "phone").await;
    let carol = server.sign_in(CAROL, "phone").await;
    let started = tokio::time::Instant::now();
    let bob = server.sign_in(BOB, "phone").await;
    let mut a = Phone::signed_in(&server.url, "alice", &alice.access_token).await;
    let mut b = Phone::signed_in(&server.url, "bob", &bob.access_token).await;

    // Another device's token, or no valid token, renews nothing.
    b.refused("reauth", json!({"token": carol.access_token}), "unauthenticated").await;
    b.refused("reauth", json!({"token": "not.a.token"}), "unauthenticated").await;

    // Bob renews his token half way and re-authenticates; Alice does not.
    // (Token times are whole seconds: the first expires by TTL_S after
    // `started` plus the sign-in's own time, the renewed one at TTL_S - 1
    // after the renewal at the earliest.)
    tokio::time::sleep_until(started + Duration::from_secs(TTL_S / 2)).await;
    let (status, renewed) = server.post("/v1/auth/refresh", None, json!({"refresh_token": bob.refresh_token})).await;
    assert_eq!(status, 200, "{renewed}");
    b.ok("reauth", json!({"token": renewed["access_token"]})).await;

    closed_unauthenticated(&mut a, "expired").await;
    // Past the first token's expiry, Bob's socket still works.
    tokio::time::sleep_until(started + Duration::from_millis(TTL_S * 1_000 + 800)).await;
    assert_eq!(b.request("ping", json!({})).await["type"], "pong");
    b.ok("invite", invite("call-x", &alice)).await;
    assert_eq!(b.hangup("call-x").await, "unavailable", "Alice's device went with its socket");
    // Without another reauth, it ends with the renewed token.
    closed_unauthenticated(&mut b, "expired").await;
    server.finish().await;
}

/// A client that sends steadily gets its relayed messages' acks a batch
/// per write (held at most `ACKS_HELD_AT_MOST`), but still every one, once,
/// in the order it sent them; an event for it goes out with its held acks,
/// and a ping is answered at once.
async fn a_busy_sender_gets_every_ack_once_and_in_order(db: Db) {
    const BURST: usize = 200;
    let server = start(db, &["--ws-messages-per-s", "10000", "--ws-messages-burst", "10000"]).await;
    let (_, mut a) = online(&server, ALICE, "a", "alice").await;
    let (bob, mut b) = online(&server, BOB, "b", "bob").await;
    let call_id = "call-busy".to_owned();
    answered_call(&mut a, &mut b, &call_id, &bob).await;
    let mut sent = Vec::new();
    for _ in 0..BURST {
        sent.push(a.send("candidates", candidates(&call_id)).await);
    }
    // Bob speaks while Alice's acks may be held: his message reaches her too.
    b.ok("candidates", candidates(&call_id)).await;
    let mut acked = Vec::new();
    let mut events = 0;
    while acked.len() < BURST || events < 1 {
        let frames = a.frames_within(Duration::from_millis(200)).await;
        assert!(!frames.is_empty(), "alice got {} acks and {events} events, then nothing", acked.len());
        for frame in frames {
            match frame["type"].as_str() {
                Some("ack") => acked.push(frame["id"].as_str().unwrap_or_default().to_owned()),
                Some("candidates") => events += 1,
                _ => panic!("alice got {frame}"),
            }
        }
    }
    assert_eq!(acked, sent, "every message acked once, in the order sent");
    assert_eq!(events, 1);
    for _ in 0..BURST {
        let relayed = b.event("candidates").await;
        assert_eq!(relayed["call_id"], call_id.as_str());
    }
    let pong = a.request("ping", json!({})).await;
    assert_eq!(pong["type"], "pong", "{pong}");
    a.ok("candidates", candidates(&call_id)).await;
    server.finish().await;
}

on_both_databases!(
    rings_every_device_and_the_first_answer_wins,
    reject_busy_and_already_in_call,
    unanswered_calls_time_out_and_offline_callees_are_unavailable,
    privacy_settings_and_blocks_are_enforced,
    glare_resolves_to_the_lesser_call_id,
    a_dropped_device_resumes_within_the_grace_period_and_is_lost_after_it,
    bad_frames_get_their_error_codes_and_change_nothing,
    rate_and_device_limits_hold,
    a_slow_reader_is_cut_off_and_memory_stays_flat,
    shutdown_and_crashes_end_calls,
    heartbeats_drop_dead_connections_and_keep_live_ones,
    signaling_runs_alone_verifying_tokens_with_the_jwks,
    a_signed_out_device_loses_its_socket_and_its_tokens_at_once,
    a_socket_lives_no_longer_than_its_token_unless_reauthenticated,
    a_busy_sender_gets_every_ack_once_and_in_order,
);

/// `courier bench signaling` relays its whole budget, through Courier and
/// through its floor, holds its idle connections and times invites, with the server on cores of its own and
/// the load generator on the others (the figures go to BENCHMARKS.md; here
/// only that they were measured).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_signaling_benchmark_measures_relay_idle_and_invites() {
    let output = tokio::process::Command::new(support::courier_bin())
        .args(["bench", "signaling", "--pairs", "2", "--messages", "2000", "--idle", "100", "--invites", "5", "--json"])
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let figures: Value = serde_json::from_slice(&output.stdout).unwrap();
    let courier = &figures["courier"];
    assert_eq!(courier["delivered"], 2000, "{figures}");
    // The floor relayed the same load.
    assert_eq!(figures["floor"]["delivered"], 2000, "{figures}");
    assert!(figures["ratios_to_floor"]["msgs_per_s_courier_over_floor"].as_f64().is_some_and(|r| r > 0.0), "{figures}");
    assert_eq!(courier["idle_held"], 100, "{figures}");
    for figure in ["msgs_per_s", "delivery_ms_p99", "invite_incoming_ms_p99", "server_rss_before_idle_kib"] {
        assert!(courier[figure].as_f64().is_some_and(|value| value > 0.0), "{figure}: {figures}");
    }
    // 100 idle connections take a few hundred KiB, within what the allocator
    // returns to the system meanwhile: the figure is measured (the long runs
    // in BENCHMARKS.md hold thousands), and here only present.
    assert!(courier["memory_per_idle_kib"].as_f64().is_some_and(|value| value >= 0.0), "{figures}");
    let cpus = std::thread::available_parallelism().map(usize::from).unwrap_or(1);
    if cpus >= 2 {
        let set = |key: &str| -> Vec<u64> {
            figures[key].as_array().unwrap().iter().map(|cpu| cpu.as_u64().unwrap()).collect()
        };
        let (server, generator) = (set("server_cpus"), set("load_generator_cpus"));
        assert!(!server.is_empty() && !generator.is_empty(), "{figures}");
        assert!(server.iter().all(|cpu| !generator.contains(cpu)), "the two sides share a CPU: {figures}");
    }
}

/// Slow readers by default in a test run; `COURIER_SLOW_READERS=10000` is the soak.
const SLOW_READERS_DEFAULT: usize = 500;
/// Each slow reader is spread over its own loopback address, within the
/// per-address connection cap.
const READERS_PER_ADDRESS: usize = 400;

/// Many signed-in sockets that never read, each sent pings whose answers
/// pile up: the server cuts each off as its outbound queue fills, its memory
/// stays bounded, and a normal call still works beside them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_that_never_read_leave_memory_bounded_and_calls_working() {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;

    let readers: usize =
        std::env::var("COURIER_SLOW_READERS").ok().and_then(|v| v.parse().ok()).unwrap_or(SLOW_READERS_DEFAULT);
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
    let wanted = (readers as u64 + 2_048).max(soft);
    if rlimit::setrlimit(rlimit::Resource::NOFILE, wanted, wanted.max(hard)).is_err() {
        rlimit::increase_nofile_limit(u64::MAX).unwrap();
    }
    let server = start(Db::Sqlite, &["--ws-outbound-queue-len-max", "64", "--ws-write-timeout-s", "5"]).await;
    let key = courier_accounts::tokens::TokenKey::load(&server.dir.path().join("data/token-signing-key.pem")).unwrap();
    let issuer = courier_accounts::tokens::TokenIssuer::new(key, vec![], 900);
    let addr: std::net::SocketAddr = server.url.trim_start_matches("http://").parse().unwrap();
    let url = format!("ws://{addr}/v1/calls/ws");
    let before = rss_kib(server.pid());

    let mut held = Vec::with_capacity(readers);
    let ping = |i: usize| format!(r#"{{"v":1,"type":"ping","id":"p{i}"}}"#);
    for index in 0..readers {
        let local = std::net::Ipv4Addr::new(
            127,
            0,
            1 + (index / READERS_PER_ADDRESS / 250) as u8,
            1 + (index / READERS_PER_ADDRESS % 250) as u8,
        );
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind((local, 0).into()).unwrap();
        let stream = socket.connect(addr).await.expect("connect");
        let (mut ws, _) = tokio_tungstenite::client_async(url.as_str(), stream).await.expect("the upgrade");
        let account = format!("0000000e-0000-7000-8000-{index:012x}");
        let token = issuer.issue(
            &account,
            &format!("0000000f-0000-7000-8000-{index:012x}"),
            "RU",
            courier_common::time::now_s(),
        );
        ws.send(Message::text(format!(r#"{{"v":1,"type":"auth","id":"a","token":"{token}"}}"#))).await.unwrap();
        // Answers it will never read: more than its outbound queue holds.
        for i in 0..100 {
            if ws.send(Message::text(ping(i))).await.is_err() {
                break;
            }
        }
        held.push(ws);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let with_readers = rss_kib(server.pid());
    let per_reader_kib = with_readers.saturating_sub(before) as f64 / readers as f64;

    // Beside them, a call.
    let (_, mut a) = online(&server, ALICE, "phone", "alice").await;
    let (bob, mut b) = online(&server, BOB, "phone", "bob").await;
    answered_call(&mut a, &mut b, "call-beside", &bob).await;
    a.ok("hangup", json!({"call_id": "call-beside", "reason": "user_hangup"})).await;
    assert_eq!(b.hangup("call-beside").await, "user_hangup");
    assert!(
        with_readers < before + readers as u64 * 64,
        "server memory grew from {before} KiB to {with_readers} KiB for {readers} slow readers"
    );
    eprintln!(
        "slow readers: {readers} sockets that never read, server RSS {before} → {with_readers} KiB ({per_reader_kib:.1} KiB each), a call beside them answered"
    );
    drop(held);
    server.finish().await;
}
