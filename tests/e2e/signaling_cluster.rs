//! Signaling scale-out end to end: `courier serve signaling` nodes sharing
//! calls and presence through the machine's real Redis, with a real database
//! (SQLite and PostgreSQL) and scripted WebSocket clients on different nodes.

use crate::support;

use std::time::Duration;

use serde_json::{Value, json};
use support::ws::{Phone, sdp};
use support::{Db, Node, Server, Session};

const ALICE: &str = "+79161110001";
const BOB: &str = "+79161110002";
const CAROL: &str = "+79161110003";
const DAVE: &str = "+79161110004";

fn invite(call_id: &str, callee: &Session) -> Value {
    json!({"call_id": call_id, "callee": callee.account_id, "sdp": sdp("offer")})
}

/// One cluster: its key prefix in Redis, the accounts server that issues
/// tokens, and the signaling nodes' shared flags.
struct Cluster {
    server: Server,
    prefix: String,
    dir: tempfile::TempDir,
}

impl Cluster {
    async fn new(db: Db) -> Cluster {
        let server = Server::start_with(db, &["--sign-in-code-resend-after-s", "0"]).await;
        let prefix = format!("courier-test:{}", uuid::Uuid::now_v7().simple());
        Cluster { server, prefix, dir: tempfile::tempdir().unwrap() }
    }

    /// Starts a `courier serve signaling` node of the cluster.
    async fn node(&self, name: &str) -> Node {
        self.node_with(name, &[]).await
    }

    async fn node_with(&self, name: &str, extra: &[&str]) -> Node {
        let jwks = format!("{}/v1/auth/keys", self.server.url);
        let data_dir = self.dir.path().join(name);
        let redis = support::redis_url();
        let args = [
            "signaling",
            "--database-url",
            &self.server.database_url,
            "--jwks-url",
            &jwks,
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--redis-url",
            &redis,
            "--redis-key-prefix",
            &self.prefix,
            "--redis-node-ttl-s",
            "1",
            "--devices-per-account-max",
            "2",
        ];
        // A short grace period unless the test sets its own.
        let grace: &[&str] = if extra.contains(&"--reconnect-grace-s") { &[] } else { &["--reconnect-grace-s", "2"] };
        let args: Vec<&str> = args.into_iter().chain(grace.iter().copied()).chain(extra.iter().copied()).collect();
        Node::start(&args, self.dir.path().join(format!("{name}.log"))).await
    }

    async fn redis(&self) -> redis::aio::MultiplexedConnection {
        let client = redis::Client::open(support::redis_url()).unwrap();
        client.get_multiplexed_async_connection().await.expect("the test's Redis")
    }

    /// The cluster's keys of one kind (`call`, `online`, …).
    async fn keys(&self, kind: &str) -> Vec<String> {
        let mut redis = self.redis().await;
        redis::cmd("KEYS").arg(format!("{}:{kind}:*", self.prefix)).query_async(&mut redis).await.unwrap()
    }

    async fn finish(self) {
        let mut redis = self.redis().await;
        let keys: Vec<String> =
            redis::cmd("KEYS").arg(format!("{}:*", self.prefix)).query_async(&mut redis).await.unwrap();
        if !keys.is_empty() {
            redis::cmd("DEL").arg(&keys).query_async::<()>(&mut redis).await.unwrap();
        }
        self.server.finish().await;
    }
}

/// The next `kind` event about `call_id`; events of that kind about other calls are passed over.
async fn event_for(phone: &mut Phone, kind: &str, call_id: &str) -> Value {
    loop {
        let event = phone.event(kind).await;
        if event["call_id"] == call_id {
            return event;
        }
    }
}

async fn history_of(node: &Node, session: &Session, call_id: &str) -> Value {
    let http = reqwest::Client::new();
    for _ in 0..100 {
        let response =
            http.get(format!("{}/v1/calls/history", node.url)).bearer_auth(&session.access_token).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        let found = body["items"].as_array().into_iter().flatten().find(|call| call["call_id"] == call_id).cloned();
        if let Some(call) = found.filter(|call| !call["ended_at"].is_null()) {
            return call;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the record of {call_id} never ended");
}

async fn two_nodes_share_calls_and_presence(db: Db) {
    let cluster = Cluster::new(db).await;
    let server = &cluster.server;
    let (alice, bob_phone, bob_laptop, carol, dave) = (
        server.sign_in(ALICE, "phone").await,
        server.sign_in(BOB, "phone").await,
        server.sign_in(BOB, "laptop").await,
        server.sign_in(CAROL, "phone").await,
        server.sign_in(DAVE, "phone").await,
    );
    let mut node_a = cluster.node("a").await;
    let mut node_b = cluster.node("b").await;
    let mut a = Phone::signed_in(&node_a.url, "alice@A", &alice.access_token).await;
    let mut b1 = Phone::signed_in(&node_a.url, "bob-phone@A", &bob_phone.access_token).await;
    let mut b2 = Phone::signed_in(&node_b.url, "bob-laptop@B", &bob_laptop.access_token).await;
    let mut c = Phone::signed_in(&node_b.url, "carol@B", &carol.access_token).await;
    let mut d = Phone::signed_in(&node_a.url, "dave@A", &dave.access_token).await;

    // The device limit counts devices on every node.
    let tablet = server.sign_in(BOB, "tablet").await;
    let mut b3 = Phone::connect(&node_b.url, "bob-tablet@B").await;
    let refused = b3.request("auth", json!({"token": tablet.access_token})).await;
    assert_eq!(refused["code"], "too_many_devices", "{refused}");
    assert_eq!(b3.closed().await.map(|frame| u16::from(frame.code)), Some(4429));

    // Glare across nodes: Dave (A) and Carol (B) call each other at once; the lesser id stands.
    let from_dave = d.send("invite", invite("g-1", &carol)).await;
    let from_carol = c.send("invite", invite("g-2", &dave)).await;
    assert_eq!(d.answer_to(&from_dave).await["type"], "ack");
    assert_eq!(c.answer_to(&from_carol).await["type"], "ack");
    assert_eq!(c.event("incoming").await["call_id"], "g-1");
    assert_eq!(c.hangup("g-2").await, "glare");
    c.ok("reject", json!({"call_id": "g-1"})).await;
    // Dave may have been rung by g-2 before his own invite ended it.
    assert_eq!(event_for(&mut d, "hangup", "g-1").await["reason"], "rejected");

    // Alice (A) rings both of Bob's devices (A and B); the laptop answers.
    a.ok("invite", invite("x-1", &bob_phone)).await;
    for b in [&mut b1, &mut b2] {
        let incoming = b.event("incoming").await;
        assert_eq!(
            (incoming["call_id"].as_str(), incoming["caller"].as_str()),
            (Some("x-1"), Some(alice.account_id.as_str()))
        );
    }
    b2.ok("ringing", json!({"call_id": "x-1"})).await;
    assert_eq!(a.event("ringing").await["call_id"], "x-1");
    a.ok(
        "candidates",
        json!({"call_id": "x-1", "candidates": [{"candidate": "candidate:1 1 udp 1 127.0.0.1 5000 typ host"}]}),
    )
    .await;
    assert_eq!(b1.event("candidates").await["call_id"], "x-1");
    assert_eq!(b2.event("candidates").await["call_id"], "x-1");
    // Both devices answer at once: exactly one wins.
    let from_b1 = b1.send("answer", json!({"call_id": "x-1", "sdp": sdp("answer-phone")})).await;
    let from_b2 = b2.send("answer", json!({"call_id": "x-1", "sdp": sdp("answer-laptop")})).await;
    let (phone_reply, laptop_reply) = (b1.answer_to(&from_b1).await, b2.answer_to(&from_b2).await);
    let answered = a.event("answered").await;
    let (winner, loser) = match (phone_reply["type"].as_str(), laptop_reply["type"].as_str()) {
        (Some("ack"), Some("error")) => (&mut b1, &mut b2),
        (Some("error"), Some("ack")) => (&mut b2, &mut b1),
        other => panic!("exactly one answer must win: {other:?} ({phone_reply}, {laptop_reply})"),
    };
    let refusal = if winner.name.starts_with("bob-phone") { &laptop_reply } else { &phone_reply };
    assert!(["not_in_call", "invalid_state"].contains(&refusal["code"].as_str().unwrap()), "{refusal}");
    assert_eq!(loser.event("answered_elsewhere").await["call_id"], "x-1");
    let winner_is_laptop = winner.name.starts_with("bob-laptop");
    let expected_sdp = if winner_is_laptop { sdp("answer-laptop") } else { sdp("answer-phone") };
    assert_eq!(answered["sdp"], expected_sdp);
    winner.ok("negotiate", json!({"call_id": "x-1", "sdp": sdp("restart"), "kind": "offer"})).await;
    assert_eq!(a.event("negotiate").await["kind"], "offer");
    a.ok("negotiate", json!({"call_id": "x-1", "sdp": sdp("restart-answer"), "kind": "answer"})).await;
    assert_eq!(winner.event("negotiate").await["kind"], "answer");
    loser.refused("candidates", json!({"call_id": "x-1", "candidates": [{"candidate": ""}]}), "not_in_call").await;

    // Busy is known on every node.
    c.refused("invite", invite("x-2", &alice), "callee_busy").await;
    d.refused("invite", invite("x-3", &bob_laptop), "callee_busy").await;
    assert_eq!(cluster.keys("call").await.len(), 1, "one call in progress");
    a.ok("hangup", json!({"call_id": "x-1", "reason": "user_hangup"})).await;
    assert_eq!(winner.hangup("x-1").await, "user_hangup");

    // The answering device's node dies mid-call: after the grace period, Alice hears of it.
    a.ok("invite", invite("x-4", &bob_phone)).await;
    b1.event("incoming").await;
    b2.event("incoming").await;
    b2.ok("answer", json!({"call_id": "x-4", "sdp": sdp("answer")})).await;
    a.event("answered").await;
    b1.event("answered_elsewhere").await;
    node_b.kill().await;
    let started = std::time::Instant::now();
    assert_eq!(a.hangup("x-4").await, "lost_connection");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(2), "the grace period holds first: {waited:?}");
    b1.quiet(Duration::from_millis(200)).await;
    let record = history_of(&node_a, &alice, "x-4").await;
    assert_eq!(record["end_reason"], "lost_connection");
    assert!(cluster.keys("call").await.is_empty(), "the ended call left the shared state");
    let online = cluster.keys("online").await;
    assert!(!online.iter().any(|key| key.ends_with(&carol.account_id)), "Carol went offline with B: {online:?}");
    c.drop_connection();
    b2.drop_connection();

    // A node joining later sees who is where; a device reconnecting on it
    // replaces its connection on the other node, and the call goes on.
    let node_c = cluster.node("c").await;
    let mut c = Phone::signed_in(&node_c.url, "carol@C", &carol.access_token).await;
    c.ok("invite", invite("y-1", &dave)).await;
    event_for(&mut d, "incoming", "y-1").await;
    d.ok("answer", json!({"call_id": "y-1", "sdp": sdp("answer")})).await;
    c.event("answered").await;
    let mut d_again = Phone::signed_in(&node_c.url, "dave@C", &dave.access_token).await;
    assert_eq!(d.closed().await.map(|frame| u16::from(frame.code)), Some(4409));
    d_again.ok("resume", json!({"call_id": "y-1"})).await;
    d_again.ok("negotiate", json!({"call_id": "y-1", "sdp": sdp("restart"), "kind": "offer"})).await;
    assert_eq!(c.event("negotiate").await["sdp"], sdp("restart"));

    // A node that stops cleanly hands its devices over: both reconnect on A and resume.
    let mut node_c = node_c;
    assert!(node_c.terminate().await.success());
    for phone in [&mut c, &mut d_again] {
        assert_eq!(phone.closed().await.map(|frame| u16::from(frame.code)), Some(1001));
    }
    let mut c = Phone::signed_in(&node_a.url, "carol@A", &carol.access_token).await;
    let mut d = Phone::signed_in(&node_a.url, "dave@A", &dave.access_token).await;
    c.ok("resume", json!({"call_id": "y-1"})).await;
    d.ok("resume", json!({"call_id": "y-1"})).await;
    c.ok("hangup", json!({"call_id": "y-1", "reason": "user_hangup"})).await;
    assert_eq!(d.hangup("y-1").await, "user_hangup");
    assert_eq!(history_of(&node_a, &dave, "y-1").await["end_reason"], "user_hangup");
    assert!(cluster.keys("call").await.is_empty());

    drop((a, b1, c, d));
    assert!(node_a.terminate().await.success());
    assert!(node_a.log().contains("joined its cluster"), "{}", node_a.log());
    cluster.finish().await;
}

async fn deadlines_and_missed_calls_across_nodes(db: Db) {
    let cluster = Cluster::new(db).await;
    let server = &cluster.server;
    let (alice, bob, carol) = (
        server.sign_in(ALICE, "phone").await,
        server.sign_in(BOB, "phone").await,
        server.sign_in(CAROL, "phone").await,
    );
    let node_a = cluster.node_with("a", &["--ring-timeout-s", "1"]).await;
    let mut node_b = cluster.node_with("b", &["--ring-timeout-s", "1"]).await;
    let mut a = Phone::signed_in(&node_a.url, "alice@A", &alice.access_token).await;
    let mut b = Phone::signed_in(&node_b.url, "bob@B", &bob.access_token).await;

    // Nobody answers: the ring timeout ends the call on both nodes.
    a.ok("invite", invite("t-1", &bob)).await;
    b.event("incoming").await;
    assert_eq!(a.hangup("t-1").await, "invite_timeout");
    assert_eq!(b.hangup("t-1").await, "invite_timeout");
    let record = history_of(&node_a, &bob, "t-1").await;
    assert_eq!((record["direction"].as_str(), record["end_reason"].as_str()), (Some("missed"), Some("invite_timeout")));

    // Carol has no device connected anywhere: a missed call at once.
    a.ok("invite", invite("t-2", &carol)).await;
    assert_eq!(a.hangup("t-2").await, "unavailable");

    // Bob's only device is ringing on a node that dies: the call ends as
    // unavailable once the node is found dead, long before its ring timeout.
    let node_c = cluster.node_with("c", &["--ring-timeout-s", "60"]).await;
    let mut c = Phone::signed_in(&node_c.url, "carol@C", &carol.access_token).await;
    c.ok("invite", invite("t-3", &bob)).await;
    b.event("incoming").await;
    node_b.kill().await;
    assert_eq!(c.hangup("t-3").await, "unavailable", "before the 60 s ring timeout");
    let record = history_of(&node_c, &bob, "t-3").await;
    assert_eq!((record["direction"].as_str(), record["end_reason"].as_str()), (Some("missed"), Some("unavailable")));
    drop((a, b, c));
    assert!(cluster.keys("call").await.is_empty());
    cluster.finish().await;
}

async fn signing_out_closes_the_devices_sockets_on_every_node(db: Db) {
    let cluster = Cluster::new(db).await;
    let server = &cluster.server;
    let bob_phone = server.sign_in(BOB, "phone").await;
    let bob_laptop = server.sign_in(BOB, "laptop").await;
    let carol = server.sign_in(CAROL, "phone").await;
    // A grace period longer than the test waits for anything.
    let grace = ["--reconnect-grace-s", "60"];
    let mut node_a = cluster.node_with("a", &grace).await;
    let mut node_b = cluster.node_with("b", &grace).await;
    let mut phone = Phone::signed_in(&node_a.url, "bob-phone@A", &bob_phone.access_token).await;
    let mut laptop = Phone::signed_in(&node_b.url, "bob-laptop@B", &bob_laptop.access_token).await;
    // Carol (A) is talking to Bob's laptop (B).
    let mut c = Phone::signed_in(&node_a.url, "carol@A", &carol.access_token).await;
    c.ok("invite", invite("s-1", &bob_laptop)).await;
    laptop.event("incoming").await;
    laptop.ok("answer", json!({"call_id": "s-1", "sdp": sdp("answer")})).await;
    c.event("answered").await;

    let path = format!("/v1/me/devices/{}", bob_laptop.device_id);
    let (status, body) = server.call(reqwest::Method::DELETE, &path, Some(&bob_phone.access_token), None).await;
    assert_eq!(status, 204, "{body}");
    let close = laptop.closed().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 4401, "{close:?}");
    let error = laptop.take_events().into_iter().find(|event| event["type"] == "error").expect("an error first");
    assert_eq!(error["code"], "unauthenticated", "{error}");
    // The laptop will not resume: the call ends now on the other node too.
    assert_eq!(event_for(&mut c, "hangup", "s-1").await["reason"], "lost_connection");

    // No node takes the signed-out device's token any more: each reads the
    // revocations every second.
    for node in [&node_a, &node_b] {
        let mut answer = Value::Null;
        for _ in 0..30 {
            let mut again = Phone::connect(&node.url, "bob-laptop-again").await;
            answer = again.request("auth", json!({"token": bob_laptop.access_token})).await;
            if answer["type"] == "error" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(answer["code"], "unauthenticated", "{answer}");
    }
    assert_eq!(phone.request("ping", json!({})).await["type"], "pong", "the other device stays");
    assert!(node_a.terminate().await.success() && node_b.terminate().await.success());
    cluster.finish().await;
}

on_both_databases!(
    two_nodes_share_calls_and_presence,
    deadlines_and_missed_calls_across_nodes,
    signing_out_closes_the_devices_sockets_on_every_node,
);
