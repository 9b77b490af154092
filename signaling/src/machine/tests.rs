use super::*;
use courier_protocol::{Candidates, NegotiateKind};

const HEX: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

fn device(account: &str, device: &str) -> Endpoint {
    Endpoint { account: account.into(), device: device.into() }
}

fn id(value: &str) -> CallId {
    CallId::parse(value).unwrap()
}

fn raw(candidates: &str) -> Candidates {
    Candidates::parse(&serde_json::value::RawValue::from_string(candidates.into()).unwrap()).unwrap()
}

fn sdp() -> Sdp {
    Sdp::parse("v=0\r\n").unwrap()
}

fn callee(account: &str, devices: &[&str]) -> Callee {
    Callee {
        account: account.into(),
        exists: true,
        accepts_caller: true,
        online_devices: devices.iter().map(|d| (*d).into()).collect(),
        relay_only: false,
    }
}

/// A call message, with the callee facts an invite comes with.
struct Message(ClientBody, Option<Callee>);

impl From<ClientBody> for Message {
    fn from(body: ClientBody) -> Self {
        Message(body, None)
    }
}

fn invite(call: &str, to: Callee) -> Message {
    let body = ClientBody::Invite {
        call_id: id(call),
        callee: to.account.to_string(),
        sdp: sdp(),
        sas_commit: Some(SasHex::parse(HEX).unwrap()),
    };
    Message(body, Some(to))
}

impl Switchboard {
    fn send(&mut self, from: &Endpoint, message: impl Into<Message>, now: At) -> (Reply, Vec<Output>) {
        let Message(body, callee) = message.into();
        self.handle(from, body, callee, now)
    }
}

fn sent(out: &[Output]) -> Vec<(String, ServerEvent)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send { to, event } => Some((to.to_string(), event.clone())),
            Output::Ended(_) => None,
        })
        .collect()
}

fn ended(out: &[Output]) -> Vec<Ended> {
    out.iter().filter_map(|o| if let Output::Ended(e) = o { Some(e.clone()) } else { None }).collect()
}

fn hangup(call: &str, reason: HangupReason) -> ServerEvent {
    ServerEvent::Hangup { call_id: id(call), reason }
}

struct World {
    board: Switchboard,
    t0: At,
    alice: Endpoint,
    bob_phone: Endpoint,
    bob_laptop: Endpoint,
    carol: Endpoint,
}

fn world() -> World {
    World {
        board: Switchboard::new(Limits {
            ring_timeout: Duration::from_secs(45),
            reconnect_grace: Duration::from_secs(20),
        }),
        t0: At(1_800_000_000_000),
        alice: device("alice", "a1"),
        bob_phone: device("bob", "b1"),
        bob_laptop: device("bob", "b2"),
        carol: device("carol", "c1"),
    }
}

impl World {
    fn at(&self, seconds: u64) -> At {
        self.t0 + Duration::from_secs(seconds)
    }

    /// Alice calls Bob, who has two devices online; both ring.
    fn ring(&mut self) {
        let (reply, out) = self.board.send(&self.alice.clone(), invite("c1", callee("bob", &["b1", "b2"])), self.t0);
        assert_eq!(reply, Reply::AckInvite { ice_policy: IcePolicy::All });
        let rung: Vec<String> = sent(&out).into_iter().map(|(to, _)| to).collect();
        assert_eq!(rung, ["b1", "b2"]);
    }

    fn answer_on_phone(&mut self) {
        let request =
            ClientBody::Answer { call_id: id("c1"), sdp: sdp(), sas_nonce: Some(SasHex::parse(HEX).unwrap()) };
        let (reply, out) = self.board.send(&self.bob_phone.clone(), request, self.at(2));
        assert_eq!(reply, Reply::Ack);
        let events = sent(&out);
        assert!(matches!(&events[0], (to, ServerEvent::Answered { sas_nonce: Some(_), .. }) if to == "a1"));
        assert_eq!(events[1], ("b2".into(), ServerEvent::AnsweredElsewhere { call_id: id("c1") }));
    }
}

#[test]
fn an_invite_rings_every_device_and_the_first_answer_wins() {
    let mut w = world();
    w.ring();
    let (reply, out) = w.board.send(&w.bob_laptop.clone(), ClientBody::Ringing { call_id: id("c1") }, w.at(1));
    assert_eq!((reply, sent(&out)), (Reply::Ack, vec![("a1".into(), ServerEvent::Ringing { call_id: id("c1") })]));
    w.answer_on_phone();
    let late = ClientBody::Answer { call_id: id("c1"), sdp: sdp(), sas_nonce: None };
    let (reply, out) = w.board.send(&w.bob_laptop.clone(), late, w.at(3));
    assert_eq!(reply, Reply::Error(ErrorCode::NotInCall, "this device is not in that call"), "the laptop lost");
    assert!(out.is_empty());

    let (reply, out) = w.board.send(
        &w.alice.clone(),
        ClientBody::Hangup { call_id: id("c1"), reason: HangupReason::UserHangup },
        w.at(62),
    );
    assert_eq!(reply, Reply::Ack);
    assert_eq!(sent(&out), vec![("b1".into(), hangup("c1", HangupReason::UserHangup))]);
    let record = &ended(&out)[0];
    assert_eq!(
        (record.reason, record.ringing, record.talking),
        (HangupReason::UserHangup, Duration::from_secs(2), Some(Duration::from_secs(60)))
    );
    assert_eq!(w.board.calls_in_progress(), 0);
}

#[test]
fn a_reject_from_any_device_ends_the_call_for_all() {
    let mut w = world();
    w.ring();
    let (reply, out) = w.board.send(&w.bob_laptop.clone(), ClientBody::Reject { call_id: id("c1") }, w.at(3));
    assert_eq!(reply, Reply::Ack);
    assert_eq!(
        sent(&out),
        vec![("a1".into(), hangup("c1", HangupReason::Rejected)), ("b1".into(), hangup("c1", HangupReason::Rejected))]
    );
    assert_eq!(ended(&out)[0].talking, None, "a missed call");
}

#[test]
fn unanswered_calls_time_out() {
    let mut w = world();
    w.ring();
    assert!(w.board.tick(w.at(44)).is_empty());
    let out = w.board.tick(w.at(45));
    assert_eq!(sent(&out).len(), 3);
    assert!(sent(&out).iter().all(|(_, event)| *event == hangup("c1", HangupReason::InviteTimeout)));
    assert_eq!(ended(&out)[0].reason, HangupReason::InviteTimeout);
}

#[test]
fn refusals_are_errors_and_change_nothing() {
    let mut w = world();
    let alice = w.alice.clone();
    let nobody = Callee { exists: false, ..callee("ghost", &[]) };
    assert_eq!(
        w.board.send(&alice, invite("x1", nobody), w.t0).0,
        Reply::Error(ErrorCode::CalleeNotFound, "there is no such account")
    );
    let closed = Callee { accepts_caller: false, ..callee("bob", &["b1"]) };
    assert!(matches!(
        w.board.send(&alice, invite("x2", closed), w.t0).0,
        Reply::Error(ErrorCode::CalleeNotAccepting, _)
    ));
    assert!(matches!(
        w.board.send(&alice, invite("x3", callee("alice", &["a2"])), w.t0).0,
        Reply::Error(ErrorCode::InvalidState, _)
    ));
    assert_eq!(w.board.calls_in_progress(), 0);

    w.ring();
    assert!(matches!(
        w.board.send(&alice, invite("c1", callee("carol", &["c1"])), w.t0).0,
        Reply::Error(ErrorCode::InvalidState, _)
    ));
    assert!(matches!(
        w.board.send(&alice, invite("c2", callee("carol", &["c1"])), w.t0).0,
        Reply::Error(ErrorCode::AlreadyInCall, _)
    ));
    w.answer_on_phone();
    let carol = w.carol.clone();
    assert!(matches!(
        w.board.send(&carol, invite("c3", callee("bob", &["b1"])), w.t0).0,
        Reply::Error(ErrorCode::CalleeBusy, _)
    ));
    let ringing = ClientBody::Ringing { call_id: id("nope") };
    assert!(matches!(w.board.send(&carol, ringing, w.t0).0, Reply::Error(ErrorCode::UnknownCall, _)));
    let snoop = ClientBody::Candidates { call_id: id("c1"), candidates: raw(r#"[{}]"#) };
    assert!(
        matches!(w.board.send(&carol, snoop, w.t0).0, Reply::Error(ErrorCode::NotInCall, _)),
        "only the two devices signal"
    );
    assert!(matches!(
        w.board.send(&alice, ClientBody::Ringing { call_id: id("c1") }, w.t0).0,
        Reply::Error(ErrorCode::InvalidState, _)
    ));
    assert_eq!(w.board.calls_in_progress(), 1);
}

#[test]
fn a_callee_with_no_online_device_is_unavailable_at_once() {
    let mut w = world();
    let (reply, out) = w.board.send(&w.alice.clone(), invite("c1", callee("bob", &[])), w.t0);
    assert_eq!(reply, Reply::AckInvite { ice_policy: IcePolicy::All });
    assert_eq!(sent(&out), vec![("a1".into(), hangup("c1", HangupReason::Unavailable))]);
    assert_eq!(ended(&out)[0].reason, HangupReason::Unavailable);
    assert_eq!(w.board.calls_in_progress(), 0);
}

#[test]
fn relay_only_when_either_party_hides_its_address() {
    let mut w = world();
    let private = Callee { relay_only: true, ..callee("bob", &["b1"]) };
    let (reply, out) = w.board.send(&w.alice.clone(), invite("c1", private), w.t0);
    assert_eq!(reply, Reply::AckInvite { ice_policy: IcePolicy::Relay });
    assert!(matches!(&sent(&out)[0].1, ServerEvent::Incoming { ice_policy: IcePolicy::Relay, .. }));
}

#[test]
fn glare_resolves_to_the_lesser_call_id() {
    // Bob's invite (b-call) crosses Alice's (a-call): "a-call" < "b-call" wins.
    let mut w = world();
    let (_, _) = w.board.send(&w.bob_phone.clone(), invite("b-call", callee("alice", &["a1"])), w.t0);
    let (reply, out) = w.board.send(&w.alice.clone(), invite("a-call", callee("bob", &["b1", "b2"])), w.at(1));
    assert_eq!(reply, Reply::AckInvite { ice_policy: IcePolicy::All });
    let events = sent(&out);
    assert!(events.contains(&("b1".into(), hangup("b-call", HangupReason::Glare))));
    assert!(events.iter().any(|(to, e)| to == "b1" && matches!(e, ServerEvent::Incoming { .. })));
    assert_eq!(w.board.calls_in_progress(), 1);

    // The other order: the standing invite has the lesser id and stays.
    let mut w = world();
    let (_, _) = w.board.send(&w.bob_phone.clone(), invite("a-call", callee("alice", &["a1"])), w.t0);
    let (reply, out) = w.board.send(&w.alice.clone(), invite("b-call", callee("bob", &["b1"])), w.at(1));
    assert_eq!(reply, Reply::AckInvite { ice_policy: IcePolicy::All });
    assert_eq!(sent(&out), vec![("a1".into(), hangup("b-call", HangupReason::Glare))]);
    assert_eq!(w.board.calls_in_progress(), 1, "one call remains: Bob's, which Alice can answer");
}

#[test]
fn signaling_flows_only_between_the_two_devices() {
    let mut w = world();
    w.ring();
    let early = ClientBody::Candidates { call_id: id("c1"), candidates: raw(r#"[{"candidate": "x"}]"#) };
    let (reply, out) = w.board.send(&w.alice.clone(), early, w.at(1));
    assert_eq!(reply, Reply::Ack);
    assert_eq!(sent(&out).len(), 2, "before the answer the caller's candidates reach every rung device");
    w.answer_on_phone();
    for (from, to) in [(w.alice.clone(), "b1"), (w.bob_phone.clone(), "a1")] {
        let request = ClientBody::Candidates { call_id: id("c1"), candidates: raw(r#"[{"candidate": "y"}]"#) };
        let (_, out) = w.board.send(&from, request, w.at(3));
        assert_eq!(sent(&out)[0].0, to);
        let request = ClientBody::Negotiate { call_id: id("c1"), sdp: sdp(), kind: NegotiateKind::Offer };
        let (_, out) = w.board.send(&from, request, w.at(3));
        assert_eq!(sent(&out)[0].0, to);
    }
    let reveal = ClientBody::SasReveal { call_id: id("c1"), nonce: SasHex::parse(HEX).unwrap() };
    assert!(matches!(
        w.board.send(&w.bob_phone.clone(), reveal.clone(), w.at(3)).0,
        Reply::Error(ErrorCode::InvalidState, _)
    ));
    let (reply, out) = w.board.send(&w.alice.clone(), reveal, w.at(3));
    assert_eq!((reply, sent(&out)[0].0.as_str()), (Reply::Ack, "b1"));
}

#[test]
fn a_lost_device_may_resume_within_the_grace_period() {
    let mut w = world();
    w.ring();
    w.answer_on_phone();
    assert!(w.board.disconnected(&w.bob_phone.clone(), w.at(10)).is_empty());
    assert!(w.board.tick(w.at(29)).is_empty());
    let (reply, _) = w.board.send(&w.bob_phone.clone(), ClientBody::Resume { call_id: id("c1") }, w.at(29));
    assert_eq!(reply, Reply::Ack);
    assert!(w.board.tick(w.at(31)).is_empty(), "resumed: the grace deadline is gone");

    assert!(w.board.disconnected(&w.bob_phone.clone(), w.at(40)).is_empty());
    let out = w.board.tick(w.at(60));
    assert_eq!(
        sent(&out),
        vec![("a1".into(), hangup("c1", HangupReason::LostConnection))],
        "the lost device is not told"
    );
    assert_eq!(ended(&out)[0].reason, HangupReason::LostConnection);
}

/// What Alice says while Bob's phone is reconnecting reaches it when it
/// resumes: a renegotiation replaces the offer and candidates held before
/// it (their ICE generation is gone); nothing is sent into the void.
#[test]
fn what_the_peer_says_to_a_lost_device_is_delivered_when_it_resumes() {
    let mut w = world();
    w.ring();
    w.answer_on_phone();
    assert!(w.board.disconnected(&w.bob_phone.clone(), w.at(10)).is_empty());
    let offer = |sdp_text: &str| ClientBody::Negotiate {
        call_id: id("c1"),
        sdp: Sdp::parse(sdp_text).unwrap(),
        kind: NegotiateKind::Offer,
    };
    let candidates = |line: &str| ClientBody::Candidates {
        call_id: id("c1"),
        candidates: raw(&format!(r#"[{{"candidate":"{line}"}}]"#)),
    };
    for (message, at) in [
        (offer("v=0\r\no=first\r\n"), 11),
        (candidates("candidate:1 1 udp 1 127.0.0.1 1 typ host"), 11),
        (offer("v=0\r\no=second\r\n"), 14),
        (candidates("candidate:2 1 udp 1 127.0.0.1 2 typ host"), 14),
    ] {
        let (reply, out) = w.board.send(&w.alice.clone(), message, w.at(at));
        assert_eq!(reply, Reply::Ack);
        assert!(sent(&out).is_empty(), "nothing goes to a device that is away");
    }
    let (reply, out) = w.board.send(&w.bob_phone.clone(), ClientBody::Resume { call_id: id("c1") }, w.at(15));
    assert_eq!(reply, Reply::Ack);
    let delivered = sent(&out);
    assert_eq!(delivered.len(), 2, "{delivered:?}");
    assert!(delivered.iter().all(|(to, _)| to == "b1"));
    assert!(
        matches!(&delivered[0].1, ServerEvent::Negotiate { sdp, .. } if sdp.as_str().contains("o=second")),
        "{delivered:?}"
    );
    assert!(
        matches!(&delivered[1].1, ServerEvent::Candidates { candidates, .. } if candidates.as_str().contains("candidate:2")),
        "{delivered:?}"
    );

    // Back: the next message goes straight through.
    let (_, out) = w.board.send(&w.alice.clone(), candidates("candidate:3 1 udp 1 127.0.0.1 3 typ host"), w.at(16));
    assert_eq!(sent(&out).len(), 1);
    let (_, out) = w.board.send(&w.bob_phone.clone(), ClientBody::Resume { call_id: id("c1") }, w.at(17));
    assert!(sent(&out).is_empty(), "delivered once");
}

/// A caller whose socket drops while the callee's phone rings hears the
/// answer when it resumes.
#[test]
fn the_answer_waits_for_a_caller_who_is_reconnecting() {
    let mut w = world();
    w.ring();
    assert!(w.board.disconnected(&w.alice.clone(), w.at(1)).is_empty());
    let request = ClientBody::Answer { call_id: id("c1"), sdp: sdp(), sas_nonce: Some(SasHex::parse(HEX).unwrap()) };
    let (reply, out) = w.board.send(&w.bob_phone.clone(), request, w.at(2));
    assert_eq!(reply, Reply::Ack);
    assert_eq!(sent(&out), vec![("b2".into(), ServerEvent::AnsweredElsewhere { call_id: id("c1") })]);
    let (reply, out) = w.board.send(&w.alice.clone(), ClientBody::Resume { call_id: id("c1") }, w.at(3));
    assert_eq!(reply, Reply::Ack);
    assert!(matches!(&sent(&out)[..], [(to, ServerEvent::Answered { .. })] if to == "a1"), "{out:?}");
}

/// A signed-out device cannot resume: its call ends at once for the other
/// side, and a call ringing it rings on without it.
#[test]
fn a_signed_out_device_ends_its_calls_at_once() {
    let mut w = world();
    w.ring();
    w.answer_on_phone();
    let out = w.board.signed_out(&w.bob_phone.clone(), w.at(10));
    assert_eq!(sent(&out), vec![("a1".into(), hangup("c1", HangupReason::LostConnection))]);
    assert_eq!(ended(&out)[0].reason, HangupReason::LostConnection);
    assert!(w.board.tick(w.at(60)).is_empty(), "nothing left to time out");

    let mut w = world();
    w.ring();
    assert!(w.board.signed_out(&w.bob_laptop.clone(), w.at(1)).is_empty(), "the phone still rings");
    let out = w.board.signed_out(&w.bob_phone.clone(), w.at(2));
    assert_eq!(sent(&out), vec![("a1".into(), hangup("c1", HangupReason::Unavailable))]);
}

#[test]
fn ringing_ends_when_every_rung_device_goes_away() {
    let mut w = world();
    w.ring();
    assert!(w.board.disconnected(&w.bob_phone.clone(), w.at(1)).is_empty());
    let out = w.board.disconnected(&w.bob_laptop.clone(), w.at(2));
    assert_eq!(sent(&out), vec![("a1".into(), hangup("c1", HangupReason::Unavailable))]);
}

#[test]
fn shutdown_ends_every_call() {
    let mut w = world();
    w.ring();
    let out = w.board.shutdown(w.at(5));
    assert_eq!(sent(&out).len(), 3);
    assert!(sent(&out).iter().all(|(_, event)| *event == hangup("c1", HangupReason::ServerShutdown)));
    assert_eq!(w.board.calls_in_progress(), 0);
}

#[test]
fn a_call_survives_serialization_with_its_deadlines() {
    let mut w = world();
    w.ring();
    let call = w.board.call("c1").unwrap().clone();
    assert_eq!(call.next_deadline(), Some(w.at(45)));
    assert_eq!(call.accounts(), ["alice", "bob"]);
    let json = serde_json::to_string(&call).unwrap();
    let back: Call = serde_json::from_str(&json).unwrap();
    assert_eq!(back, call);

    // A board rebuilt from the stored call goes on where the first left off.
    let mut board = Switchboard::with_calls(w.board.limits, [back]);
    let (reply, _) =
        board.send(&w.bob_phone, ClientBody::Answer { call_id: id("c1"), sdp: sdp(), sas_nonce: None }, w.at(3));
    assert_eq!(reply, Reply::Ack);
    assert_eq!(board.call("c1").unwrap().next_deadline(), None);
    let out = board.disconnected(&w.alice, w.at(10));
    assert!(out.is_empty());
    assert_eq!(board.call("c1").unwrap().next_deadline(), Some(w.at(30)));
    let out = board.tick(w.at(30));
    assert_eq!(sent(&out), vec![("b1".to_string(), hangup("c1", HangupReason::LostConnection))]);
}
