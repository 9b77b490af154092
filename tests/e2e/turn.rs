//! ICE servers and TURN: the credentials `GET /v1/calls/ice-servers` hands
//! out, the embedded relay driven by coturn's own test client
//! (`turnutils_uclient`) and by a TURN client written here, every refusal it
//! answers, its peer filter, and the same credentials against a real coturn
//! started from `deploy/turnserver.conf`.
//!
//! Packets only ever go to loopback: every other forbidden address is tested
//! at CreatePermission and ChannelBind, which send nothing to the peer.

use crate::support;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use TurnError::Code;
use courier_common::time::now_s;
use courier_turn::client::{Allocated, TurnClient, TurnError, code_of};
use courier_turn::credentials::{long_term_key, password};
use rtc_stun::attributes::*;
use rtc_stun::integrity::MessageIntegrity;
use rtc_stun::message::*;
use rtc_stun::textattrs::TextAttribute;
use rtc_turn::proto::lifetime::Lifetime;
use rtc_turn::proto::peeraddr::PeerAddress;
use rtc_turn::proto::reqfamily::REQUESTED_FAMILY_IPV6;
use rtc_turn::proto::reqtrans::RequestedTransport;
use rtc_turn::proto::rsrvtoken::ReservationToken;
use rtc_turn::proto::{PROTO_TCP, PROTO_UDP};
use serde_json::Value;
use support::coturn::Coturn;
use support::{Db, Server, error_code};
use tokio::net::UdpSocket;

const ALICE: &str = "+79161120001";
const BOB: &str = "+79161120002";
const SECRET: &str = "tests-turn-secret-0123456789";
const OLD_SECRET: &str = "tests-turn-secret-previous-0123";

/// Credentials as the TURN REST API scheme makes them.
fn credentials(secret: &str, account: &str, expires_at_s: u64) -> (String, String) {
    let username = format!("{expires_at_s}:{account}");
    let credential = password(secret, &username);
    (username, credential)
}

async fn turn_client(server: SocketAddr, username: &str, password: &str) -> TurnClient {
    let local: SocketAddr = if server.is_ipv6() { "[::1]:0" } else { "127.0.0.1:0" }.parse().unwrap();
    TurnClient::bind(local, server, username, password).await.unwrap()
}

/// The TURN server behind the first turn: URL of an ice-servers answer.
fn turn_addr(ice: &Value) -> SocketAddr {
    let url = ice["ice_servers"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|server| server["urls"][0].as_str().filter(|url| url.starts_with("turn:")))
        .expect("a TURN URL");
    url.trim_start_matches("turn:").split('?').next().unwrap().parse().unwrap()
}

/// Alice and Bob signed in: the relay's address and each one's TURN username and credential.
async fn alice_and_bob_on_the_relay(server: &Server) -> (SocketAddr, [(String, String); 2]) {
    let alice = server.sign_in(ALICE, "phone").await;
    let bob = server.sign_in(BOB, "phone").await;
    let (ice, alice_user, alice_credential) = ice_credentials(server, &alice.access_token).await;
    let (_, bob_user, bob_credential) = ice_credentials(server, &bob.access_token).await;
    (turn_addr(&ice), [(alice_user, alice_credential), (bob_user, bob_credential)])
}

async fn ice_credentials(server: &Server, token: &str) -> (Value, String, String) {
    let (status, ice) = server.get("/v1/calls/ice-servers", Some(token)).await;
    assert_eq!(status, 200, "{ice}");
    let turn = ice["ice_servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|server| server["username"].is_string())
        .expect("a TURN server")
        .clone();
    (ice.clone(), turn["username"].as_str().unwrap().into(), turn["credential"].as_str().unwrap().into())
}

/// What `turnutils_uclient` reports: messages received and packets lost.
struct Uclient {
    received: u64,
    lost: u64,
    output: String,
}

/// Runs coturn's test client against `server` with `flags` (e.g. `-y` for
/// two clients relaying to each other through their allocations).
async fn uclient(server: SocketAddr, username: &str, credential: &str, flags: &[&str]) -> Uclient {
    let output = tokio::process::Command::new("turnutils_uclient")
        .args(flags)
        .args(["-u", username, "-w", credential, "-p", &server.port().to_string(), &server.ip().to_string()])
        .stdin(Stdio::null())
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), output)
        .await
        .expect("turnutils_uclient finished within 60 s")
        .expect("turnutils_uclient runs (Debian package coturn)");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    let number_after = |marker: &str| -> Option<u64> {
        let at = text.rfind(marker)? + marker.len();
        text[at..].chars().take_while(char::is_ascii_digit).collect::<String>().parse().ok()
    };
    Uclient {
        received: number_after("tot_recv_msgs=").unwrap_or(0),
        lost: number_after("Total lost packets ").unwrap_or(u64::MAX),
        output: text,
    }
}

async fn ice_servers_hand_out_credentials_the_relay_accepts(db: Db) {
    let server = Server::start_with(
        db,
        &["--turn-secret", SECRET, "--turn-credential-ttl-s", "3", "--turn-allow-peer", "127.0.0.0/8"],
    )
    .await;
    let (status, body) = server.get("/v1/calls/ice-servers", None).await;
    assert_eq!((status, error_code(&body)), (401, "unauthenticated"));
    let (status, body) = server.get("/v1/calls/ice-servers", Some("not-a-token")).await;
    assert_eq!((status, error_code(&body)), (401, "unauthenticated"));

    let alice = server.sign_in(ALICE, "phone").await;
    let before = now_s();
    let (ice, username, credential) = ice_credentials(&server, &alice.access_token).await;
    let relay = turn_addr(&ice);
    assert_eq!(ice["ttl"], 3);
    let servers = ice["ice_servers"].as_array().unwrap();
    assert_eq!(servers[0]["urls"], serde_json::json!([format!("stun:{relay}")]));
    assert!(servers[0].get("username").is_none(), "STUN needs no credentials");
    assert_eq!(
        servers[1]["urls"],
        serde_json::json!([format!("turn:{relay}?transport=udp"), format!("turn:{relay}?transport=tcp")])
    );
    let (expiry, account) = username.split_once(':').unwrap();
    assert_eq!(account, alice.account_id);
    let expiry: u64 = expiry.parse().unwrap();
    assert!((before + 3..=now_s() + 3).contains(&expiry), "expires ttl seconds from now");
    assert_eq!(credential, password(SECRET, &username), "base64(HMAC-SHA1(secret, username))");

    // The relay answers STUN and takes the credentials while they are valid.
    let mut client = turn_client(relay, &username, &credential).await;
    assert_eq!(client.binding().await.unwrap(), client.local_addr().unwrap());
    let Allocated { relayed, .. } = client.allocate().await.expect("an allocation with fresh credentials");
    assert_eq!(relayed.ip(), relay.ip());

    // Once they expire, they open nothing.
    tokio::time::sleep(Duration::from_secs(expiry + 1).saturating_sub(Duration::from_secs(now_s()))).await;
    let mut late = turn_client(relay, &username, &credential).await;
    assert_eq!(late.allocate().await, Err(Code(401)), "expired credentials");
    assert_eq!(client.refresh(600).await, Err(Code(401)), "a refresh with expired credentials");
    server.finish().await;
}

on_both_databases!(ice_servers_hand_out_credentials_the_relay_accepts);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_relay_relays_for_turnutils_uclient() {
    let server = Server::start_with(Db::Sqlite, &["--turn-secret", SECRET, "--turn-allow-peer", "127.0.0.0/8"]).await;
    let alice = server.sign_in(ALICE, "phone").await;
    let (ice, username, credential) = ice_credentials(&server, &alice.access_token).await;
    let relay = turn_addr(&ice);
    // Two clients relay 170-byte (Opus-sized) packets to each other through
    // their allocations: over UDP with channels, with Send indications, and
    // over TCP.
    for flags in [&["-y", "-c"][..], &["-y", "-c", "-s"], &["-y", "-c", "-t"]] {
        let run =
            uclient(relay, &username, &credential, &[flags, &["-n", "50", "-m", "2", "-l", "170"]].concat()).await;
        assert_eq!((run.received, run.lost), (100, 0), "{flags:?}: every packet arrives\n{}", run.output);
    }
    // Wrong credentials open nothing.
    let run =
        uclient(relay, &username, &password("a-wrong-secret-0123456789", &username), &["-y", "-c", "-n", "5"]).await;
    assert_eq!(run.received, 0, "{}", run.output);
    assert!(run.output.contains("Cannot complete Allocation"), "{}", run.output);
    server.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_of_the_embedded_relay() {
    let server = Server::start_with(Db::Sqlite, &["--turn-secret", &format!("{SECRET},{OLD_SECRET}")]).await;
    let alice = server.sign_in(ALICE, "phone").await;
    let (ice, _, _) = ice_credentials(&server, &alice.access_token).await;
    let relay = turn_addr(&ice);
    let later = now_s() + 600;
    let (username, credential) = credentials(SECRET, &alice.account_id, later);

    // Credentials: the current and the previous secret work; expired ones,
    // another secret, another username or a username not in the scheme do not.
    let mut good = turn_client(relay, &username, &credential).await;
    good.allocate().await.expect("the current secret");
    let (old_username, old_credential) = credentials(OLD_SECRET, &alice.account_id, later);
    turn_client(relay, &old_username, &old_credential).await.allocate().await.expect("the previous secret");
    let (expired, expired_credential) = credentials(SECRET, &alice.account_id, now_s() - 10);
    assert_eq!(turn_client(relay, &expired, &expired_credential).await.allocate().await, Err(Code(401)), "expired");
    let (_, foreign) = credentials("someone-elses-secret-0123", &alice.account_id, later);
    assert_eq!(turn_client(relay, &username, &foreign).await.allocate().await, Err(Code(401)), "wrong secret");
    let (bob_username, _) = credentials(SECRET, "bob", later);
    assert_eq!(turn_client(relay, &bob_username, &credential).await.allocate().await, Err(Code(401)), "wrong username");
    let plain = password(SECRET, "alice");
    assert_eq!(turn_client(relay, "alice", &plain).await.allocate().await, Err(Code(401)), "not <expiry>:<account>");

    // A nonce the server did not hand out is stale (438); the client then
    // retries with a fresh one, as RFC 5389 says, and succeeds.
    let mut forged = turn_client(relay, &username, &credential).await;
    forged.realm = Some("courier".into());
    forged.nonce = Some("0000000000000000forgedforgedforged00".into());
    let mut request = Message::new();
    let key = long_term_key(&username, "courier", &credential);
    request
        .build(&[
            Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
            Box::new(TransactionId::new()),
            Box::new(RequestedTransport { protocol: PROTO_UDP }),
            Box::new(TextAttribute::new(ATTR_USERNAME, username.clone())),
            Box::new(TextAttribute::new(ATTR_REALM, "courier".into())),
            Box::new(TextAttribute::new(ATTR_NONCE, forged.nonce.clone().unwrap())),
            Box::new(MessageIntegrity::new_raw_integrity_with_provider(key.to_vec(), forged.crypto())),
        ])
        .unwrap();
    assert_eq!(code_of(&forged.exchange(&request).await.unwrap()), Some(438));
    forged.allocate().await.expect("after 438, a fresh nonce");

    // 437: a second allocation on the same 5-tuple, or none to refresh.
    assert_eq!(good.allocate().await, Err(Code(437)));
    let mut none = turn_client(relay, &username, &credential).await;
    assert_eq!(none.refresh(600).await, Err(Code(437)));
    assert_eq!(none.create_permission(&["8.8.8.8:53".parse().unwrap()]).await, Err(Code(437)));
    // 441: the allocation's requests must come from its own username.
    let (other, other_credential) = credentials(SECRET, &alice.account_id, later + 1);
    let mut impostor = turn_client(relay, &other, &other_credential).await;
    impostor.socket = std::mem::replace(&mut good.socket, UdpSocket::bind("127.0.0.1:0").await.unwrap());
    assert_eq!(impostor.refresh(600).await, Err(Code(441)));
    std::mem::swap(&mut good.socket, &mut impostor.socket);
    assert!(good.refresh(600).await.is_ok(), "its own username refreshes it");

    // 442 / 400 / 440 / 508 at Allocate.
    let mut fresh = turn_client(relay, &username, &credential).await;
    let response =
        fresh.request(METHOD_ALLOCATE, || vec![Box::new(RequestedTransport { protocol: PROTO_TCP })]).await.unwrap();
    assert_eq!(code_of(&response), Some(442), "TCP relaying is not offered");
    assert_eq!(code_of(&fresh.request(METHOD_ALLOCATE, Vec::new).await.unwrap()), Some(400), "no REQUESTED-TRANSPORT");
    let ipv6 = || vec![Box::new(REQUESTED_FAMILY_IPV6) as Box<dyn Setter + Send>];
    assert_eq!(fresh.allocate_with(ipv6).await, Err(Code(440)), "an IPv6 relay from an IPv4 server");
    let token = || vec![Box::new(ReservationToken(vec![7; 8])) as Box<dyn Setter + Send>];
    assert_eq!(fresh.allocate_with(token).await, Err(Code(508)), "no port is reserved");
    let connect = fresh.request(METHOD_CONNECT, || vec![Box::new(PeerAddress { ip: [8, 8, 8, 8].into(), port: 80 })]);
    assert_eq!(code_of(&connect.await.unwrap()), Some(400), "RFC 6062 TCP relaying is not offered");

    // 400 / 443 at ChannelBind and CreatePermission.
    let public: SocketAddr = "8.8.8.8:3478".parse().unwrap();
    assert_eq!(good.channel_bind(0x1000, public).await, Err(Code(400)), "a channel number below 0x4000");
    assert_eq!(good.create_permission(&[]).await, Err(Code(400)), "no XOR-PEER-ADDRESS");
    good.channel_bind(0x4001, public).await.expect("a public peer");
    assert_eq!(good.channel_bind(0x4002, public).await, Err(Code(400)), "the peer is bound to another channel");
    let ipv6_peer: SocketAddr = "[2606:4700::1111]:3478".parse().unwrap();
    assert_eq!(good.create_permission(&[ipv6_peer]).await, Err(Code(443)), "an IPv6 peer on an IPv4 relay");
    server.finish().await;
}

/// Every form of every range a relay must not reach, refused with 403.
const FORBIDDEN_PEERS: [&str; 24] = [
    "127.0.0.1:9",
    "127.255.255.254:9",
    "[::1]:9",
    "[::ffff:127.0.0.1]:9",
    "0.0.0.0:9",
    "[::]:9",
    "[::ffff:0.0.0.0]:9",
    "10.0.0.1:9",
    "172.16.0.1:9",
    "192.168.1.1:9",
    "[::ffff:192.168.1.1]:9",
    "[fc00::1]:9",
    "[fd00::1]:9",
    "169.254.169.254:80",
    "[::ffff:169.254.169.254]:80",
    "[fe80::1]:9",
    "224.0.0.1:9",
    "239.255.255.250:1900",
    "[ff02::1]:9",
    "255.255.255.255:9",
    "[::ffff:255.255.255.255]:9",
    "100.64.0.1:9",
    "[64:ff9b::7f00:1]:9",
    "[2002:7f00:1::]:9",
];

/// Two allocations of the relay send to each other's relayed addresses (a
/// relayed call whose parties share the relay): the relay hands the data
/// over in its own process, with the rules its relayed sockets apply: no
/// permission at the receiving allocation, nothing arrives; a permission
/// without a channel, a Data indication from the sender's relayed address;
/// with a channel, ChannelData on the receiver's own channel number; both
/// ways, from ChannelData and from Send indications.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_allocations_of_the_relay_reach_each_other_under_its_rules() {
    let server = Server::start_with(Db::Sqlite, &["--turn-secret", SECRET]).await;
    let (relay, [(a_username, a_credential), (b_username, b_credential)]) = alice_and_bob_on_the_relay(&server).await;
    let mut a = turn_client(relay, &a_username, &a_credential).await;
    let mut b = turn_client(relay, &b_username, &b_credential).await;
    let a_relayed = a.allocate().await.unwrap().relayed;
    let b_relayed = b.allocate().await.unwrap().relayed;
    a.channel_bind(0x4000, b_relayed).await.unwrap();
    let mut frame = Vec::new();
    let mut buffer = [0u8; 1_500];
    // What one client hears within `wait`, if anything.
    async fn heard(client: &TurnClient, buffer: &mut [u8], wait: Duration) -> Option<Vec<u8>> {
        let (length, _) = tokio::time::timeout(wait, client.socket.recv_from(buffer)).await.ok()?.ok()?;
        Some(buffer[..length].to_vec())
    }
    courier_turn::client::channel_data(0x4000, b"no permission yet", &mut frame);
    a.socket.send_to(&frame, relay).await.unwrap();
    assert_eq!(heard(&b, &mut buffer, Duration::from_millis(500)).await, None, "delivered without a permission");

    b.create_permission(&[a_relayed]).await.unwrap();
    courier_turn::client::channel_data(0x4000, b"as an indication", &mut frame);
    a.socket.send_to(&frame, relay).await.unwrap();
    let indication = heard(&b, &mut buffer, Duration::from_secs(5)).await.expect("a Data indication");
    let mut message = Message::new();
    message.unmarshal_binary(&indication).unwrap();
    assert_eq!(message.typ, MessageType::new(METHOD_DATA, CLASS_INDICATION));
    let mut from = PeerAddress::default();
    from.get_from(&message).unwrap();
    assert_eq!(SocketAddr::new(from.ip, from.port), a_relayed, "from the sender's relayed address");
    assert_eq!(message.get(ATTR_DATA).unwrap(), b"as an indication");

    b.channel_bind(0x4abc, a_relayed).await.unwrap();
    courier_turn::client::channel_data(0x4000, b"on a channel", &mut frame);
    a.socket.send_to(&frame, relay).await.unwrap();
    let data = heard(&b, &mut buffer, Duration::from_secs(5)).await.expect("ChannelData");
    assert_eq!(&data[..4], &[0x4a, 0xbc, 0, 12], "on the receiver's channel, with the payload's length");
    assert_eq!(&data[4..], b"on a channel");

    // The other way, from a Send indication, onto Alice's channel.
    b.send_indication(a_relayed, b"back").await.unwrap();
    let data = heard(&a, &mut buffer, Duration::from_secs(5)).await.expect("ChannelData back");
    assert_eq!(data, [&[0x40, 0x00, 0, 4][..], b"back"].concat());
    server.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_refuses_every_non_public_peer() {
    // `none`: the filter of a relay on a public address (a relay on loopback
    // would let loopback peers through by default).
    let strict = ["--turn-secret", SECRET, "--turn-allow-peer", "none"];
    let server = Server::start_with(Db::Sqlite, &strict).await;
    let alice = server.sign_in(ALICE, "phone").await;
    let (ice, username, credential) = ice_credentials(&server, &alice.access_token).await;
    let relay = turn_addr(&ice);
    let mut v4 = turn_client(relay, &username, &credential).await;
    v4.allocate().await.unwrap();
    // The same filter behind an IPv6 relay, for the IPv6 forms.
    let server6 = Server::start_with(Db::Sqlite, &[&strict[..], &["--turn-listen", "[::1]:0"]].concat()).await;
    let (ice6, username6, credential6) =
        ice_credentials(&server6, &server6.sign_in(ALICE, "phone").await.access_token).await;
    let relay6 = turn_addr(&ice6);
    assert!(relay6.is_ipv6());
    let mut v6 = turn_client(relay6, &username6, &credential6).await;
    let Allocated { relayed: relayed6, .. } = v6.allocate().await.unwrap();
    assert_eq!(relayed6.ip(), relay6.ip());
    for (index, peer) in FORBIDDEN_PEERS.iter().enumerate() {
        let peer: SocketAddr = peer.parse().unwrap();
        // Each form is refused with 403 by the relay of its family; the
        // relay of the other family refuses it too (443: family mismatch).
        let (same, other) = if peer.is_ipv6() { (&mut v6, &mut v4) } else { (&mut v4, &mut v6) };
        assert_eq!(same.create_permission(&[peer]).await, Err(Code(403)), "CreatePermission {peer}");
        assert_eq!(same.channel_bind(0x4000 + index as u16, peer).await, Err(Code(403)), "ChannelBind {peer}");
        let public: SocketAddr = if peer.is_ipv6() { "[2606:4700::1111]:53" } else { "8.8.8.8:53" }.parse().unwrap();
        assert_eq!(
            same.create_permission(&[public, peer]).await,
            Err(Code(403)),
            "one forbidden peer among public ones refuses the whole request: {peer}"
        );
        assert_eq!(other.create_permission(&[peer]).await, Err(Code(443)), "CreatePermission {peer} across families");
    }
    server6.finish().await;
    // Sends to a loopback peer are dropped: a socket of ours never hears them.
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    v4.send_indication(peer.local_addr().unwrap(), b"let me in").await.unwrap();
    let mut buffer = [0u8; 64];
    let heard = tokio::time::timeout(Duration::from_millis(500), peer.recv_from(&mut buffer)).await;
    assert!(heard.is_err(), "a Send indication to loopback went through");
    server.finish().await;

    // An allow-list opens exactly its ranges.
    let server =
        Server::start_with(Db::Sqlite, &["--turn-secret", SECRET, "--turn-allow-peer", "10.0.0.0/8,127.0.0.1/32"])
            .await;
    let alice = server.sign_in(ALICE, "phone").await;
    let (ice, username, credential) = ice_credentials(&server, &alice.access_token).await;
    let mut client = turn_client(turn_addr(&ice), &username, &credential).await;
    client.allocate().await.unwrap();
    client.create_permission(&["10.1.2.3:9".parse().unwrap()]).await.expect("allow-listed");
    client.create_permission(&["[::ffff:10.1.2.3]:9".parse().unwrap()]).await.expect_err("but not across families");
    assert_eq!(client.create_permission(&["127.0.0.2:9".parse().unwrap()]).await, Err(Code(403)), "outside the /32");
    assert_eq!(client.create_permission(&["192.168.0.1:9".parse().unwrap()]).await, Err(Code(403)));
    assert_eq!(client.create_permission(&["169.254.169.254:80".parse().unwrap()]).await, Err(Code(403)));
    client.create_permission(&[peer.local_addr().unwrap()]).await.expect("allow-listed loopback");
    client.send_indication(peer.local_addr().unwrap(), b"hello").await.unwrap();
    let (length, from) =
        tokio::time::timeout(Duration::from_secs(10), peer.recv_from(&mut buffer)).await.unwrap().unwrap();
    assert_eq!(&buffer[..length], b"hello");
    assert_eq!(from.ip(), turn_addr(&ice).ip(), "relayed from the relay's address");
    server.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_and_lifetimes_of_the_embedded_relay() {
    let server = Server::start_with(
        Db::Sqlite,
        &[
            "--turn-secret",
            SECRET,
            "--turn-allocations-per-user-max",
            "2",
            "--turn-allocations-max",
            "3",
            "--turn-allocation-lifetime-max-s",
            "2",
        ],
    )
    .await;
    let (relay, [(alice_user, alice_credential), (bob_user, bob_credential)]) =
        alice_and_bob_on_the_relay(&server).await;

    let mut first = turn_client(relay, &alice_user, &alice_credential).await;
    let lifetime = || vec![Box::new(Lifetime(Duration::from_secs(3_600))) as Box<dyn Setter + Send>];
    let granted = first.allocate_with(lifetime).await.unwrap().lifetime_s;
    assert_eq!(granted, 2, "capped at --turn-allocation-lifetime-max-s");
    let mut second = turn_client(relay, &alice_user, &alice_credential).await;
    second.allocate().await.unwrap();
    let mut third = turn_client(relay, &alice_user, &alice_credential).await;
    assert_eq!(third.allocate().await, Err(Code(486)), "per-account quota");
    let mut bobs = turn_client(relay, &bob_user, &bob_credential).await;
    bobs.allocate().await.unwrap();
    let mut bobs_second = turn_client(relay, &bob_user, &bob_credential).await;
    assert_eq!(bobs_second.allocate().await, Err(Code(508)), "total capacity");

    // Refresh with lifetime 0 ends an allocation and frees its place.
    assert_eq!(second.refresh(0).await, Ok(0));
    third.allocate().await.expect("a place was freed");

    // An allocation that is not refreshed ends with its lifetime.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    assert_eq!(first.refresh(600).await, Err(Code(437)), "expired after 2 s");
    first.allocate().await.expect("the expired allocations freed their places");
    server.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coturn_accepts_the_credentials_courier_hands_out() {
    // The test's coturn may relay to loopback, where the test's clients are.
    let coturn = Coturn::start(SECRET, &["allow-loopback-peers", "allowed-peer-ip=127.0.0.1"]);
    coturn.ready().await;
    let turn = coturn.addr;
    let server = Server::start_with(
        Db::Sqlite,
        &[
            "--turn",
            "external",
            "--turn-secret",
            SECRET,
            "--turn-urls",
            &format!("turn:{turn}?transport=udp,turn:{turn}?transport=tcp"),
            "--stun-urls",
            &format!("stun:{turn}"),
        ],
    )
    .await;
    assert!(!server.log().contains("TURN relay serving"), "no embedded relay with --turn external");
    let alice = server.sign_in(ALICE, "phone").await;
    let (ice, username, credential) = ice_credentials(&server, &alice.access_token).await;
    assert_eq!(turn_addr(&ice), turn);
    assert_eq!(ice["ice_servers"][0]["urls"][0], format!("stun:{turn}"));

    let mut client = turn_client(turn, &username, &credential).await;
    client.allocate().await.expect("coturn takes Courier's credentials");

    // coturn refuses what the embedded relay refuses. These run before
    // turnutils_uclient: its allocations outlive it, and a client socket
    // that the kernel gives one of its ports would meet 437 (allocation
    // mismatch) before coturn looks at the credentials.
    let later = now_s() + 600;
    let (expired, expired_credential) = credentials(SECRET, &alice.account_id, now_s() - 10);
    assert_eq!(turn_client(turn, &expired, &expired_credential).await.allocate().await, Err(Code(401)), "expired");
    let (_, foreign) = credentials("someone-elses-secret-0123", &alice.account_id, later);
    assert_eq!(turn_client(turn, &username, &foreign).await.allocate().await, Err(Code(401)), "wrong secret");

    let run = uclient(turn, &username, &credential, &["-y", "-c", "-n", "50", "-m", "2", "-l", "170"]).await;
    assert_eq!((run.received, run.lost), (100, 0), "{}", run.output);
    server.finish().await;
    drop(coturn);

    // The sample configuration as shipped keeps loopback, private and
    // link-local peers out.
    let coturn = Coturn::start(SECRET, &[]);
    coturn.ready().await;
    let (username, credential) = credentials(SECRET, &alice.account_id, later);
    let mut client = turn_client(coturn.addr, &username, &credential).await;
    client.allocate().await.unwrap();
    for peer in [
        "127.0.0.1:9",
        "0.0.0.0:9",
        "10.0.0.1:9",
        "172.16.0.1:9",
        "192.168.1.1:9",
        "169.254.169.254:80",
        "100.64.0.1:9",
        "224.0.0.1:9",
        "255.255.255.255:9",
    ] {
        assert_eq!(
            client.create_permission(&[peer.parse().unwrap()]).await,
            Err(Code(403)),
            "coturn, sample config: {peer}"
        );
    }
    client.create_permission(&["8.8.8.8:53".parse().unwrap()]).await.expect("a public peer");
}

/// `courier bench turn` steps the embedded relay and its floor (the same
/// sockets without TURN) through a load with nothing lost (the figures go to
/// BENCHMARKS.md; here only that they were measured).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_turn_benchmark_measures_the_relay_and_its_floor() {
    let output = tokio::process::Command::new(support::courier_bin())
        .args(["bench", "turn", "--sessions", "4,8", "--step-s", "1", "--no-coturn", "--json"])
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let figures: Value = serde_json::from_slice(&output.stdout).unwrap();
    for relay in ["embedded", "floor"] {
        let steps = figures[relay]["steps"].as_array().unwrap();
        assert_eq!(steps.len(), 2, "{relay}: {figures}");
        for step in steps {
            assert!(step["received"].as_u64().is_some_and(|received| received > 0), "{relay}: {figures}");
        }
        assert!(figures[relay]["max_pps_at_zero_loss"].as_f64().is_some_and(|pps| pps > 0.0), "{relay}: {figures}");
    }
    assert!(figures["ratio_to_floor"].as_f64().is_some_and(|ratio| ratio > 0.0), "{figures}");
}
