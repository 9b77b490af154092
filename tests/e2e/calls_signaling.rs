//! The call client's signaling layer (courier-calls) against the real
//! server: multi-device ringing with the SAS commitment, answer and answered
//! elsewhere, the reveal checked against its commitment, busy, reject and
//! ring timeout, and resume after a dropped socket.

use crate::support;

use std::time::Duration;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use courier_calls::signaling_client::{AccessToken, Event, SignalingClient as Signaling, TokenSource, fixed_token};
use courier_common::text::hex;
use courier_protocol::sas::{self, Sas, SasInput};
use courier_protocol::{CallId, HangupReason, IcePolicy, NegotiateKind, ServerEvent};
use support::{Db, Server, Session};

const ALICE: &str = "+79161130001";
const BOB: &str = "+79161130002";
const CAROL: &str = "+79161130003";
const WAIT: Duration = Duration::from_secs(10);

fn sdp(fingerprint: &str) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=fingerprint:{fingerprint}\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
    )
}

const ALICE_FP: &str = "sha-256 AA:BB:CC:DD";
const BOB_FP: &str = "sha-256 11:22:33:44";

async fn connect(server: &Server, session: &Session) -> Signaling {
    Signaling::connect(&server.url, &fixed_token(&session.access_token)).await.expect("signed in")
}

async fn event(phone: &mut Signaling) -> Event {
    phone.next_event_within(WAIT).await.expect("an event in time")
}

async fn hangup_reason(phone: &mut Signaling, call: &str) -> &'static str {
    loop {
        if let Event::Server(ServerEvent::Hangup { call_id, reason }) = event(phone).await
            && call_id.as_str() == call
        {
            return reason.as_str();
        }
    }
}

fn call_id(id: &str) -> CallId {
    CallId::parse(id).unwrap()
}

async fn the_client_library_drives_calls(db: Db) {
    let server = Server::start_with(
        db,
        &["--ring-timeout-s", "2", "--reconnect-grace-s", "5", "--sign-in-code-resend-after-s", "0"],
    )
    .await;
    let (alice, bob_phone, bob_laptop, carol) = (
        server.sign_in(ALICE, "phone").await,
        server.sign_in(BOB, "phone").await,
        server.sign_in(BOB, "laptop").await,
        server.sign_in(CAROL, "phone").await,
    );
    let mut a = connect(&server, &alice).await;
    assert_eq!((a.account_id.as_str(), a.device_id.as_str()), (alice.account_id.as_str(), alice.device_id.as_str()));
    let mut b1 = connect(&server, &bob_phone).await;
    let mut b2 = connect(&server, &bob_laptop).await;
    let c = connect(&server, &carol).await;

    // Alice rings both of Bob's devices, committing to her SAS nonce.
    let alice_nonce = sas::nonce();
    let commit = sas::commitment(&alice_nonce);
    let policy = a.invite("call-1", &bob_phone.account_id, &sdp(ALICE_FP), Some(&commit)).await.unwrap();
    assert_eq!(policy, IcePolicy::All);
    for device in [&mut b1, &mut b2] {
        match event(device).await {
            Event::Server(ServerEvent::Incoming { call_id, caller, sdp: offer, ice_policy, sas_commit }) => {
                assert_eq!(
                    (call_id.as_str(), &*caller, ice_policy),
                    ("call-1", alice.account_id.as_str(), IcePolicy::All)
                );
                assert_eq!(sas_commit.as_ref().map(|commit| commit.as_str()), Some(commit.as_str()));
                assert_eq!(sas::fingerprint_in_sdp(offer.as_str()).as_deref(), Some(ALICE_FP));
            }
            other => panic!("expected incoming, got {other:?}"),
        }
    }
    b1.ringing("call-1").await.unwrap();
    assert_eq!(event(&mut a).await, Event::Server(ServerEvent::Ringing { call_id: call_id("call-1") }));

    // The phone answers with its nonce; the laptop stops ringing.
    let bob_nonce = sas::nonce();
    b1.answer("call-1", &sdp(BOB_FP), Some(&hex(&bob_nonce))).await.unwrap();
    let answered_nonce = match event(&mut a).await {
        Event::Server(ServerEvent::Answered { call_id, sdp: answer, sas_nonce, .. }) => {
            assert_eq!(call_id.as_str(), "call-1");
            assert_eq!(sas::fingerprint_in_sdp(answer.as_str()).as_deref(), Some(BOB_FP));
            sas::parse_nonce(sas_nonce.expect("the callee's nonce").as_str()).unwrap()
        }
        other => panic!("expected answered, got {other:?}"),
    };
    assert_eq!(answered_nonce, bob_nonce);
    assert_eq!(event(&mut b2).await, Event::Server(ServerEvent::AnsweredElsewhere { call_id: call_id("call-1") }));
    assert_eq!(
        b2.answer("call-1", &sdp(BOB_FP), None).await.unwrap_err().code(),
        Some("not_in_call"),
        "a device that lost the race is not in the call"
    );

    // Only then does Alice reveal; Bob checks it against the commitment and
    // both compute the same SAS.
    a.sas_reveal("call-1", &hex(&alice_nonce)).await.unwrap();
    let revealed = match event(&mut b1).await {
        Event::Server(ServerEvent::SasReveal { call_id, nonce }) => {
            assert_eq!(call_id.as_str(), "call-1");
            sas::parse_nonce(nonce.as_str()).unwrap()
        }
        other => panic!("expected sas_reveal, got {other:?}"),
    };
    assert!(sas::reveal_matches(&commit, &revealed));
    let input = |caller_nonce, callee_nonce| SasInput {
        call_id: "call-1",
        caller_fingerprint: ALICE_FP,
        callee_fingerprint: BOB_FP,
        caller_nonce,
        callee_nonce,
    };
    assert_eq!(Sas::compute(&input(alice_nonce, answered_nonce)), Sas::compute(&input(revealed, bob_nonce)));

    // Busy: Carol cannot reach either of them while they talk.
    let refused = c.invite("call-c", &bob_phone.account_id, &sdp(BOB_FP), None).await.unwrap_err();
    assert_eq!(refused.code(), Some("callee_busy"));

    // A socket that drops mid-call comes back and resumes.
    b1.close().await;
    let mut b1 = connect(&server, &bob_phone).await;
    b1.resume("call-1").await.unwrap();
    b1.negotiate("call-1", &sdp(BOB_FP), NegotiateKind::Offer).await.unwrap();
    match event(&mut a).await {
        Event::Server(ServerEvent::Negotiate { call_id, kind, .. }) => {
            assert_eq!((call_id.as_str(), kind), ("call-1", NegotiateKind::Offer))
        }
        other => panic!("expected negotiate, got {other:?}"),
    }
    a.hangup("call-1", HangupReason::UserHangup).await.unwrap();
    assert_eq!(hangup_reason(&mut b1, "call-1").await, "user_hangup");

    // A reject from either device ends the call for all.
    a.invite("call-2", &bob_phone.account_id, &sdp(ALICE_FP), None).await.unwrap();
    assert!(matches!(event(&mut b1).await, Event::Server(ServerEvent::Incoming { .. })));
    b2.reject("call-2").await.unwrap();
    assert_eq!(hangup_reason(&mut a, "call-2").await, "rejected");
    assert_eq!(hangup_reason(&mut b1, "call-2").await, "rejected");

    // Nobody answers: the ring timeout ends it.
    a.invite("call-3", &bob_phone.account_id, &sdp(ALICE_FP), None).await.unwrap();
    assert_eq!(hangup_reason(&mut a, "call-3").await, "invite_timeout");
    assert_eq!(hangup_reason(&mut b1, "call-3").await, "invite_timeout");

    // Errors come back as codes.
    assert_eq!(a.hangup("no-such-call", HangupReason::UserHangup).await.unwrap_err().code(), Some("unknown_call"));
    a.close().await;
    assert!(matches!(a.next_event_within(WAIT).await, Some(Event::Closed(_))));
    server.finish().await;
}

/// A client whose tokens last 3 s keeps its connection for longer: it
/// renews its token and re-authenticates on the open socket in time.
async fn the_client_renews_its_token_on_the_open_socket(db: Db) {
    let server = Server::start_with(db, &["--access-token-ttl-s", "3", "--sign-in-code-resend-after-s", "0"]).await;
    let alice = server.sign_in(ALICE, "phone").await;
    let renewals = Arc::new(AtomicUsize::new(0));
    let refresh = Arc::new(std::sync::Mutex::new(alice.refresh_token.clone()));
    let first = AccessToken { token: alice.access_token.clone(), expires_at_s: now_s() + alice.expires_in };
    let (url, counted) = (server.url.clone(), renewals.clone());
    let tokens: TokenSource = Arc::new(move || {
        let (url, refresh, counted, first) = (url.clone(), refresh.clone(), counted.clone(), first.clone());
        Box::pin(async move {
            if counted.fetch_add(1, Ordering::SeqCst) == 0 {
                return Ok(first);
            }
            let spent = refresh.lock().unwrap().clone();
            let response = reqwest::Client::new()
                .post(format!("{url}/v1/auth/refresh"))
                .json(&serde_json::json!({"refresh_token": spent}))
                .send()
                .await
                .map_err(|error| error.to_string())?;
            let pair: serde_json::Value = response.json().await.map_err(|error| error.to_string())?;
            *refresh.lock().unwrap() = pair["refresh_token"].as_str().unwrap_or_default().to_owned();
            let expires_at_s = now_s() + pair["expires_in"].as_u64().unwrap_or(0);
            Ok(AccessToken { token: pair["access_token"].as_str().unwrap_or_default().to_owned(), expires_at_s })
        })
    });
    let mut phone = Signaling::connect(&server.url, &tokens).await.expect("signed in");
    tokio::time::sleep(Duration::from_secs(7)).await;
    phone.ping().await.expect("the socket outlived two token lifetimes");
    assert!(phone.next_event_within(Duration::from_millis(100)).await.is_none(), "no close, no error");
    assert!(renewals.load(Ordering::SeqCst) >= 3, "renewed: {}", renewals.load(Ordering::SeqCst) - 1);
    server.finish().await;
}

fn now_s() -> u64 {
    courier_common::time::now_s()
}

on_both_databases!(the_client_library_drives_calls, the_client_renews_its_token_on_the_open_socket);
