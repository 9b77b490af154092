//! One call from dial or answer to hangup: signaling, the peer connection,
//! audio paced by a clock, the SAS with its commit-then-reveal, ICE restart
//! and resume, and the figures reported at the end.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::audio::{Decoder, Encoder, FRAME_SAMPLES, Source, WavSink};
use crate::jitter::{JitterBuffer, Playout};
use crate::peer::{
    AudioPacket, IceServer, MediaPeer, PeerEvent, PeerSettings, PeerState, WebRtcPeer, candidate_type, new_certificate,
};
use crate::signaling_client::{Event, SignalingClient, SignalingError, TokenSource};
use courier_common::text::hex;
use courier_protocol::sas::{self, NONCE_BYTES, Sas, SasInput};
use courier_protocol::{HangupReason, IcePolicy, NegotiateKind, SasHex, ServerEvent};

/// How long a dropped signaling connection is retried (the server's grace
/// period is 20 s by default).
const RECONNECT_FOR: Duration = Duration::from_secs(20);
/// A call neither answered nor connected by then is given up (the server's
/// ring timeout normally ends it long before).
const UNANSWERED_GIVE_UP: Duration = Duration::from_secs(90);
/// How long hanging up may wait for the peer connection and the signaling
/// socket to close.
const CLOSE_WITHIN: Duration = Duration::from_secs(3);
/// How often the round-trip time is read while the media path is up.
const RTT_EVERY: Duration = Duration::from_secs(1);
/// How often, and how many times, a connected peer's DTLS transport is
/// asked for the other side's certificate before its absence is a warning.
const DTLS_CHECK_EVERY: Duration = Duration::from_millis(100);
const DTLS_CHECKS_MAX: u32 = 50;
/// How much of each new reading of the far end's loss goes into its
/// smoothed value, once a second.
const REMOTE_LOSS_WEIGHT: f64 = 0.5;
/// An answered call whose media path has not come up by then has failed
/// (`ice_failed`): no audio will be carried.
pub const MEDIA_WITHIN: Duration = Duration::from_secs(15);
/// An answered call whose media path is not up after this long is set up
/// again on new peer connections (with the same DTLS certificates, so the
/// SAS stands): webrtc-rs's DTLS client does not send its last flight again
/// when the server repeats its own (RFC 6347, 4.2.4), and under loss the
/// handshake can wait for it forever.
const REBUILD_AFTER: Duration = Duration::from_secs(4);
/// At most this many times in a call.
const REBUILDS_MAX: u32 = 2;
/// How often a relay-only call that is setting up has the peer send what it
/// queued for the relay: a DTLS handshake is six flights in turn.
const SETUP_FLUSH_EVERY: Duration = Duration::from_millis(5);
/// An ICE restart offer unanswered for this long is made again: the server
/// drops an offer whose callee has not resumed yet after a dropped socket.
const RESTART_ANSWER_WITHIN: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("signaling: {0}")]
    Signaling(#[from] SignalingError),
    #[error("media: {0}")]
    Peer(#[from] crate::peer::PeerError),
    #[error("audio: {0}")]
    Audio(#[from] crate::audio::AudioError),
    #[error("{0}")]
    Failed(String),
}

/// What a call needs besides its signaling connection.
pub struct CallSetup {
    /// The server's base URL, for reconnecting.
    pub server: String,
    /// The account's access tokens, renewed while the call lasts.
    pub tokens: TokenSource,
    pub ice_servers: Vec<IceServer>,
    /// This account's own `p2p: never`.
    pub relay_only: bool,
    pub peer: PeerSettings,
    pub play: Source,
    pub record: Option<PathBuf>,
    /// Hang up after this long in the call (from the answer).
    pub duration: Option<Duration>,
    /// Progress lines for a person (state changes, the SAS, the path).
    pub progress: Arc<dyn Fn(&str) + Send + Sync>,
    /// Sees each 20 ms frame as it goes into the encoder.
    pub mouth: Option<AudioTap>,
    /// Sees each decoded block as it goes to the sink.
    pub ear: Option<AudioTap>,
}

/// Asked, with the caller's name, whether to take an incoming call.
pub type Decide = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// A view of the audio at one end of the pipeline: the samples (48 kHz mono)
/// and the moment they were handed on. The benchmark finds its clicks here.
pub type AudioTap = Arc<dyn Fn(&[i16], Instant) + Send + Sync>;

/// The end of a call, as `courier call … --json` prints it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CallReport {
    pub call_id: String,
    pub direction: String,
    pub peer: String,
    pub sas: Option<String>,
    pub sas_names: Vec<String>,
    pub sas_warning: Option<String>,
    pub candidate_type: Option<String>,
    pub remote_candidate_type: Option<String>,
    /// dial → `ringing`, or `incoming` → answer sent.
    pub ringing_ms: Option<u64>,
    /// dial or answer → media connected.
    pub setup_ms: Option<u64>,
    /// answer → first audio packet.
    pub first_audio_ms: Option<u64>,
    pub rtt_ms: Option<f64>,
    pub jitter_ms: Option<f64>,
    pub packet_loss_pct: Option<f64>,
    pub bitrate_kbps: Option<f64>,
    pub packets_received: u64,
    pub packets_sent: u64,
    /// The jitter buffer's delay at the end of the call, and what it did:
    /// frames that came after their turn, concealed (lost with no FEC, or not
    /// there in time), rebuilt from the next packet's FEC, and dropped to
    /// bring the delay back down.
    pub playout_delay_ms: Option<u32>,
    pub late_frames: u64,
    pub concealed_frames: u64,
    /// The loss the path shows, smoothed (the far end's receiver reports of
    /// what this side sent, or else this side's own reception), and the loss
    /// the encoder planned its FEC for at the end.
    pub remote_loss_pct: Option<f64>,
    pub fec_planned_pct: u8,
    pub recovered_frames: u64,
    pub dropped_frames: u64,
    pub ice_restarts: u32,
    pub end_reason: String,
    /// Every candidate this client sent, and every one it received.
    pub candidates_sent: Vec<String>,
    pub candidates_received: Vec<String>,
    pub ice_policy: String,
}

/// RFC 3550 interarrival jitter and loss over the received sequence numbers.
#[derive(Debug, Default)]
struct Reception {
    first: Option<(u64, Instant, u32)>,
    highest: u64,
    received: u64,
    bytes: u64,
    jitter: f64,
    last: Option<(Instant, u32)>,
    /// The highest sequence number and the count received when
    /// [`Reception::loss_since_last_pct`] last looked.
    looked: Option<(u64, u64)>,
}

impl Reception {
    /// Records a packet.
    fn record(&mut self, packet: &AudioPacket) {
        self.received += 1;
        self.bytes += packet.payload.len() as u64;
        match self.first {
            None => {
                self.first = Some((u64::from(packet.sequence), packet.arrived, packet.timestamp));
                self.highest = u64::from(packet.sequence);
            }
            Some(_) => {
                // Extend the 16-bit sequence number around the highest seen.
                let base = self.highest & !0xffff;
                let mut extended = base | u64::from(packet.sequence);
                if extended + 0x8000 < self.highest {
                    extended += 0x1_0000;
                } else if extended > self.highest + 0x8000 && extended >= 0x1_0000 {
                    extended -= 0x1_0000;
                }
                self.highest = self.highest.max(extended);
            }
        }
        if let Some((arrived, timestamp)) = self.last {
            let arrival_units = packet.arrived.duration_since(arrived).as_secs_f64() * 48_000.0;
            let sent_units = f64::from(packet.timestamp.wrapping_sub(timestamp) as i32);
            self.jitter += ((arrival_units - sent_units).abs() - self.jitter) / 16.0;
        }
        self.last = Some((packet.arrived, packet.timestamp));
    }

    fn loss_pct(&self) -> Option<f64> {
        let (first, _, _) = self.first?;
        let expected = self.highest - first + 1;
        Some((expected.saturating_sub(self.received)) as f64 * 100.0 / expected as f64)
    }

    fn jitter_ms(&self) -> Option<f64> {
        self.first.map(|_| self.jitter / 48.0)
    }

    /// The share of packets lost since the last look (none before a packet
    /// came, or when none was due since).
    fn loss_since_last_pct(&mut self) -> Option<f64> {
        let (first, _, _) = self.first?;
        // The first packet opens the count.
        let (highest, received) = self.looked.unwrap_or((first, 1));
        self.looked = Some((self.highest, self.received));
        let expected = self.highest.checked_sub(highest).filter(|expected| *expected > 0)?;
        let got = self.received - received;
        Some(expected.saturating_sub(got) as f64 * 100.0 / expected as f64)
    }
}

/// Which side of the call this client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Caller,
    Callee,
}

struct Session<'a> {
    setup: &'a CallSetup,
    signaling: SignalingClient,
    peer: Arc<WebRtcPeer>,
    peer_events: mpsc::Receiver<PeerEvent>,
    /// What the peer was made with (and its DTLS certificate), to make it
    /// again when a handshake stalls.
    peer_settings: PeerSettings,
    /// Peer connections made again in this call.
    rebuilds: u32,
    role: Role,
    call_id: String,
    policy: IcePolicy,
    report: CallReport,
    started: Instant,
    answered: Option<Instant>,
    connected: bool,
    own_fingerprint: Option<String>,
    /// The fingerprint the other side's SDP announced first.
    their_fingerprint: Option<String>,
    /// The session id of the other side's SDP (`o=`): the same across its
    /// renegotiations, new when it made a new peer connection.
    their_session: Option<String>,
    /// Candidates gathered before the invite was acknowledged (the policy unknown).
    held_candidates: Option<Vec<Value>>,
    reception: Reception,
    jitter: JitterBuffer,
    decoder: Decoder,
    encoder: Encoder,
    sink: Option<WavSink>,
    restarting: bool,
    /// When the answer to the ICE restart offer in flight is overdue.
    restart_answer_due: Option<tokio::time::Instant>,
    /// When to ask the DTLS transport for the other side's certificate
    /// again, and how often it was asked on this path.
    dtls_check_due: Option<tokio::time::Instant>,
    dtls_checks: u32,
    said: std::collections::HashSet<String>,
    /// This side's SAS nonce, and the caller's commitment to its own (callee).
    own_nonce: Option<[u8; NONCE_BYTES]>,
    their_commit: Option<SasHex>,
    /// When the call is hung up by itself (`--duration`), once answered.
    hangup_at: Option<tokio::time::Instant>,
    /// The last round-trip time read while the media path was up.
    last_rtt: Option<f64>,
}

fn new_call_id() -> String {
    let bytes: [u8; 16] = rand::random();
    hex(&bytes)
}

/// Places a call to `callee` (an account id or an E.164 number) and runs it
/// until it ends or `stop` resolves.
pub async fn dial(setup: &CallSetup, callee: &str, stop: impl Future<Output = ()>) -> Result<CallReport, CallError> {
    let started = Instant::now();
    let signaling = SignalingClient::connect(&setup.server, &setup.tokens).await?;
    let settings = PeerSettings {
        ice_servers: setup.ice_servers.clone(),
        relay_only: setup.relay_only,
        certificate: Some(new_certificate()?),
        ..setup.peer.clone()
    };
    let (peer, peer_events) = WebRtcPeer::create(&settings).await?;
    // Nothing is gathered before the server says the call's ICE policy.
    let offer = peer.create_offer().await?;
    let call_id = new_call_id();
    let nonce = sas::nonce();
    let mut session =
        Session::new(setup, signaling, (peer, peer_events, settings), Role::Caller, call_id.clone(), started)?;
    session.own_fingerprint = sas::fingerprint_in_sdp(&offer);
    session.report.peer = callee.to_owned();
    (setup.progress)(&format!("calling {callee} (call {call_id})"));
    let policy = session.signaling.invite(&call_id, callee, &offer, Some(&sas::commitment(&nonce))).await?;
    if policy == IcePolicy::Relay && !session.peer_settings.relay_only {
        // Relay-only because the callee hides its address: a peer that
        // gathers and checks from the relay alone, and nominates at once.
        session.take_over_offer_relay_only(&offer).await?;
    } else {
        session.peer.apply_offer(&offer).await?;
    }
    session.set_policy(policy).await?;
    session.own_nonce = Some(nonce);
    session.run(stop).await
}

/// Waits for the next incoming call, answers it and runs it until it ends
/// or `stop` resolves. `ring_for` bounds the wait; `decide`, when given, is
/// asked (on a blocking thread) whether to take the call.
pub async fn answer_next(
    setup: &CallSetup,
    ring_for: Option<Duration>,
    decide: Option<Decide>,
    stop: impl Future<Output = ()>,
) -> Result<CallReport, CallError> {
    let mut signaling = SignalingClient::connect(&setup.server, &setup.tokens).await?;
    (setup.progress)("waiting for a call");
    let deadline = ring_for.map(|wait| tokio::time::Instant::now() + wait);
    let (call_id, caller, offer, policy, commit) = loop {
        let event = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, signaling.next_event())
                .await
                .map_err(|_| CallError::Failed("no call came in time".into()))?,
            None => signaling.next_event().await,
        };
        match event {
            Event::Server(ServerEvent::Incoming { call_id, caller, sdp, ice_policy, sas_commit }) => {
                break (call_id.to_string(), caller.to_string(), sdp, ice_policy, sas_commit);
            }
            Event::Closed(code) => return Err(SignalingError::Closed(code).into()),
            _ => {}
        }
    };
    let started = Instant::now();
    (setup.progress)(&format!("incoming call {call_id} from {caller}"));
    signaling.ringing(&call_id).await?;
    if let Some(decide) = decide {
        let asked = caller.clone();
        let take = tokio::task::spawn_blocking(move || decide(&asked)).await.unwrap_or(false);
        if !take {
            signaling.reject(&call_id).await?;
            (setup.progress)("rejected");
            return Ok(CallReport {
                call_id,
                direction: "incoming".into(),
                peer: caller,
                end_reason: HangupReason::Rejected.as_str().into(),
                ..CallReport::default()
            });
        }
    }
    let settings = PeerSettings {
        ice_servers: setup.ice_servers.clone(),
        relay_only: setup.relay_only || policy == IcePolicy::Relay,
        certificate: Some(new_certificate()?),
        ..setup.peer.clone()
    };
    let (peer, peer_events) = WebRtcPeer::create(&settings).await?;
    let mut session =
        Session::new(setup, signaling, (peer, peer_events, settings), Role::Callee, call_id.clone(), started)?;
    session.report.peer = caller;
    session.their_fingerprint = sas::fingerprint_in_sdp(offer.as_str());
    session.their_session = sdp_session_id(offer.as_str());
    let answer = session.peer.answer(offer.as_str()).await?;
    session.own_fingerprint = sas::fingerprint_in_sdp(&answer);
    let nonce = sas::nonce();
    session.set_policy(policy).await?;
    session.signaling.answer(&call_id, &answer, Some(&hex(&nonce))).await?;
    session.report.ringing_ms = Some(started.elapsed().as_millis() as u64);
    session.answered = Some(Instant::now());
    (setup.progress)("answered");
    session.own_nonce = Some(nonce);
    session.their_commit = commit;
    session.run(stop).await
}

impl<'a> Session<'a> {
    fn new(
        setup: &'a CallSetup,
        signaling: SignalingClient,
        (peer, peer_events, peer_settings): (WebRtcPeer, mpsc::Receiver<PeerEvent>, PeerSettings),
        role: Role,
        call_id: String,
        started: Instant,
    ) -> Result<Session<'a>, CallError> {
        let sink = setup.record.as_deref().map(WavSink::create).transpose()?;
        Ok(Session {
            setup,
            signaling,
            peer: Arc::new(peer),
            peer_events,
            peer_settings,
            rebuilds: 0,
            role,
            report: CallReport {
                call_id: call_id.clone(),
                direction: if role == Role::Caller { "outgoing" } else { "incoming" }.into(),
                ..CallReport::default()
            },
            call_id,
            policy: IcePolicy::All,
            started,
            answered: None,
            connected: false,
            own_fingerprint: None,
            their_fingerprint: None,
            their_session: None,
            held_candidates: Some(Vec::new()),
            reception: Reception::default(),
            jitter: JitterBuffer::new(),
            decoder: Decoder::new()?,
            encoder: Encoder::new()?,
            sink,
            restarting: false,
            restart_answer_due: None,
            dtls_check_due: None,
            dtls_checks: 0,
            said: Default::default(),
            own_nonce: None,
            their_commit: None,
            hangup_at: None,
            last_rtt: None,
        })
    }

    fn say(&self, line: &str) {
        (self.setup.progress)(line);
    }

    /// A line said once per call, for conditions that repeat every packet.
    fn say_once(&mut self, line: &str) {
        if self.said.insert(line.to_owned()) {
            self.say(line);
        }
    }

    fn warn(&mut self, warning: String) {
        self.say(&format!("WARNING: {warning}"));
        let joined = match self.report.sas_warning.take() {
            Some(earlier) => format!("{earlier}; {warning}"),
            None => warning,
        };
        self.report.sas_warning = Some(joined);
    }

    /// The policy is known: candidates held until now go out, filtered.
    async fn set_policy(&mut self, policy: IcePolicy) -> Result<(), CallError> {
        self.policy = policy;
        self.report.ice_policy = if policy == IcePolicy::Relay { "relay" } else { "all" }.into();
        if policy == IcePolicy::Relay {
            self.say("relay-only call: this device's address is not shared");
        }
        let held = self.held_candidates.take().unwrap_or_default();
        self.send_candidates(held).await
    }

    /// Whether set-up packets for the relay are flushed on a clock of their
    /// own ([`SETUP_FLUSH_EVERY`]): a relay-only call, answered, not yet
    /// connected.
    fn flushing_setup(&self) -> bool {
        self.answered.is_some() && !self.connected && self.relay_only()
    }

    /// Whether this side's peer uses relayed candidates only (its own
    /// setting, or the call's policy).
    fn relay_only(&self) -> bool {
        self.policy == IcePolicy::Relay || self.setup.relay_only || self.peer_settings.relay_only
    }

    async fn send_candidates(&mut self, candidates: Vec<Value>) -> Result<(), CallError> {
        let relay_only = self.relay_only();
        let allowed: Vec<Value> = candidates
            .into_iter()
            .filter(|candidate| {
                let line = candidate["candidate"].as_str().unwrap_or_default();
                !relay_only || candidate_type(line) == Some("relay")
            })
            .collect();
        if allowed.is_empty() {
            return Ok(());
        }
        for candidate in &allowed {
            self.report.candidates_sent.push(candidate["candidate"].as_str().unwrap_or_default().to_owned());
        }
        match self.signaling.candidates(&self.call_id, &allowed).await {
            // Sent while the socket was down: the ICE restart after resume gathers anew.
            Err(SignalingError::Closed(_)) | Err(SignalingError::Timeout) => Ok(()),
            other => other.map_err(CallError::from),
        }
    }

    fn compute_sas(&mut self, caller_nonce: [u8; NONCE_BYTES], callee_nonce: [u8; NONCE_BYTES]) {
        let (Some(own), Some(theirs)) = (self.own_fingerprint.clone(), self.their_fingerprint.clone()) else {
            self.warn("an SDP without a usable DTLS fingerprint: no SAS".into());
            return;
        };
        let (caller_fingerprint, callee_fingerprint) =
            if self.role == Role::Caller { (own, theirs) } else { (theirs, own) };
        let sas = Sas::compute(&SasInput {
            call_id: &self.call_id,
            caller_fingerprint: &caller_fingerprint,
            callee_fingerprint: &callee_fingerprint,
            caller_nonce,
            callee_nonce,
        });
        self.say(&format!("SAS: {sas} (compare it with the other person)"));
        self.report.sas = Some(sas.symbols());
        self.report.sas_names = sas.names().iter().map(|name| (*name).to_owned()).collect();
    }

    /// The call loop: signaling events, the peer's events, and the 20 ms
    /// send clock, until the call ends.
    async fn run(mut self, stop: impl Future<Output = ()>) -> Result<CallReport, CallError> {
        tokio::pin!(stop);
        let mut play = self.setup.play.clone();
        let mut clock = tokio::time::interval(Duration::from_millis(u64::from(crate::audio::FRAME_MS)));
        clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let give_up_at = tokio::time::Instant::now() + UNANSWERED_GIVE_UP;
        let mut rtt_clock = tokio::time::interval(RTT_EVERY);
        let mut setup_flush = tokio::time::interval(SETUP_FLUSH_EVERY);
        setup_flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let reason = loop {
            tokio::select! {
                _ = &mut stop => break self.hang_up(HangupReason::UserHangup).await,
                _ = sleep_until_some(self.hangup_at) => {
                    let reason = if self.connected { HangupReason::UserHangup } else { HangupReason::IceFailed };
                    break self.hang_up(reason).await;
                }
                _ = sleep_until_some(self.rebuild_due()), if !self.connected && self.role == Role::Caller => {
                    if let Err(error) = self.rebuild_and_offer("the media path did not come up").await {
                        self.say(&format!("setting up again failed: {error}"));
                    }
                }
                _ = sleep_until_some(self.media_due()), if !self.connected => {
                    self.say(&format!("no media path came up within {} s of the answer", MEDIA_WITHIN.as_secs()));
                    break self.hang_up(HangupReason::IceFailed).await;
                }
                _ = tokio::time::sleep_until(give_up_at), if !self.connected && self.answered.is_none() => {
                    break self.hang_up(HangupReason::UserHangup).await;
                }
                _ = sleep_until_some(self.dtls_check_due), if self.dtls_check_due.is_some() => {
                    self.dtls_check_due = None;
                    self.check_dtls().await;
                }
                _ = sleep_until_some(self.restart_answer_due), if self.restart_answer_due.is_some() => {
                    self.say("no answer to the ICE restart; offering it again");
                    self.restart_answer_due = None;
                    self.restarting = false;
                    if let Err(error) = self.restart_ice().await {
                        self.say(&format!("ICE restart failed: {error}"));
                    }
                }
                // A relay-only call setting up, from the answer (when checks
                // start) until connected (checks, DTLS) or given up: what the
                // peer queued for the relay goes out within a few milliseconds
                // rather than at its next timer (see
                // `WebRtcPeer::flush_relayed`). Not when a direct pair may
                // come: a relayed pair that answered first would be nominated
                // by a browser that calls (the softphone, controlled, then
                // keeps it).
                _ = setup_flush.tick(), if self.flushing_setup() => self.peer.flush_relayed().await,
                _ = rtt_clock.tick(), if self.connected => {
                    let figures = self.peer.path_figures().await;
                    self.last_rtt = figures.rtt_ms.or(self.last_rtt);
                    // What the far end lost of ours, where webrtc-rs's
                    // statistics have it (0.21 reads only receiver reports,
                    // which a peer that sends media need not send); else what
                    // we lost of theirs: a path's two ways share its network.
                    let heard = self.reception.loss_since_last_pct();
                    if let Some(loss) = figures.remote_loss_pct.or(heard) {
                        // Smoothed: one report's interval holds about 50 packets.
                        let smoothed = self.report.remote_loss_pct.map_or(loss, |before| {
                            before + (loss - before) * REMOTE_LOSS_WEIGHT
                        });
                        self.report.remote_loss_pct = Some(smoothed);
                        self.encoder.expect_loss(smoothed)?;
                    }
                }
                _ = clock.tick() => {
                    self.send_frame(&mut play).await?;
                    self.play_out()?;
                }
                event = self.signaling.next_event() => {
                    if let Some(reason) = self.signaled(event).await? {
                        break reason;
                    }
                }
                Some(event) = self.peer_events.recv() => self.peer_event(event).await?,
            }
        };
        self.finish(reason).await
    }

    /// The next 20 ms of the source, encoded and sent once the media path is up.
    async fn send_frame(&mut self, play: &mut Source) -> Result<(), CallError> {
        let mut frame = [0i16; FRAME_SAMPLES];
        play.next_frame(&mut frame);
        if !self.connected {
            return Ok(());
        }
        if let Some(mouth) = &self.setup.mouth {
            mouth(&frame, Instant::now());
        }
        let packet = self.encoder.encode(&frame)?;
        match self.peer.send_opus(packet).await {
            Ok(()) => {
                self.report.packets_sent += 1;
                if self.report.candidate_type.as_deref() == Some("relay") {
                    self.peer.flush_relayed().await;
                }
            }
            // The path is down for now; ICE restart or hangup follows.
            Err(error) => self.say_once(&format!("audio not sent: {error}")),
        }
        Ok(())
    }

    /// Acts on one signaling event; the end reason when the call is over.
    async fn signaled(&mut self, event: Event) -> Result<Option<String>, CallError> {
        let event = match event {
            Event::Server(event) => event,
            Event::Closed(_) => {
                self.say("signaling connection lost; reconnecting");
                let resumed = self.reconnect().await;
                return Ok((!resumed).then(|| HangupReason::LostConnection.as_str().to_owned()));
            }
        };
        match event {
            ServerEvent::Ringing { call_id } if call_id.as_str() == self.call_id => {
                self.report.ringing_ms = Some(self.started.elapsed().as_millis() as u64);
                self.say(&format!("ringing ({} ms)", self.started.elapsed().as_millis()));
            }
            ServerEvent::Answered { call_id, sdp, ice_policy, sas_nonce } if call_id.as_str() == self.call_id => {
                self.answered_by_callee(sdp.as_str(), ice_policy, sas_nonce).await?;
            }
            ServerEvent::SasReveal { call_id, nonce } if call_id.as_str() == self.call_id => {
                self.revealed(&nonce);
            }
            ServerEvent::Candidates { call_id, candidates } if call_id.as_str() == self.call_id => {
                for candidate in candidates.values() {
                    self.report
                        .candidates_received
                        .push(candidate["candidate"].as_str().unwrap_or_default().to_owned());
                    if let Err(error) = self.peer.add_remote_candidate(&candidate).await {
                        self.say(&format!("a candidate was not taken: {error}"));
                    }
                }
            }
            ServerEvent::Negotiate { call_id, sdp, kind } if call_id.as_str() == self.call_id => {
                // A failed renegotiation leaves the call as it was (or dead,
                // and the other side hangs up); it does not end this client.
                if let Err(error) = self.negotiated(sdp.as_str(), kind).await {
                    self.say(&format!("renegotiation failed: {error}"));
                }
            }
            ServerEvent::Hangup { call_id, reason } if call_id.as_str() == self.call_id => {
                self.say(&format!("call ended: {reason}"));
                return Ok(Some(reason.as_str().to_owned()));
            }
            _ => {}
        }
        Ok(None)
    }

    /// The caller hears the answer: the peer takes it, and the caller
    /// reveals its nonce and shows the SAS.
    async fn answered_by_callee(
        &mut self,
        sdp: &str,
        ice_policy: IcePolicy,
        sas_nonce: Option<SasHex>,
    ) -> Result<(), CallError> {
        self.answered = Some(Instant::now());
        self.say("answered");
        if ice_policy != self.policy {
            self.set_policy(ice_policy).await?;
        }
        self.their_fingerprint = sas::fingerprint_in_sdp(sdp);
        self.their_session = sdp_session_id(sdp);
        self.peer.accept_answer(sdp).await?;
        match (self.own_nonce, sas_nonce.as_ref().and_then(|nonce| sas::parse_nonce(nonce.as_str()))) {
            (Some(own), Some(theirs)) => {
                self.signaling.sas_reveal(&self.call_id, &hex(&own)).await?;
                self.compute_sas(own, theirs);
            }
            _ => self.warn("the answer carries no SAS nonce: no SAS".into()),
        }
        if let Some(duration) = self.setup.duration {
            self.hangup_at = Some(tokio::time::Instant::now() + duration);
        }
        Ok(())
    }

    /// The callee hears the caller's nonce: it must match the commitment.
    fn revealed(&mut self, nonce: &SasHex) {
        let commit = self.their_commit.as_ref().map(SasHex::as_str);
        match (self.own_nonce, sas::parse_nonce(nonce.as_str()), commit) {
            (Some(own), Some(revealed), Some(commit)) if sas::reveal_matches(commit, &revealed) => {
                self.compute_sas(revealed, own);
            }
            _ => self.warn("the caller's SAS reveal does not match its commitment".into()),
        }
        if let Some(duration) = self.setup.duration
            && self.hangup_at.is_none()
        {
            self.hangup_at = Some(tokio::time::Instant::now() + duration);
        }
    }

    async fn peer_event(&mut self, event: PeerEvent) -> Result<(), CallError> {
        match event {
            PeerEvent::LocalCandidate(candidate) => match &mut self.held_candidates {
                Some(held) => held.push(candidate),
                None => self.send_candidates(vec![candidate]).await?,
            },
            PeerEvent::State(state) => self.peer_state(state).await?,
            PeerEvent::Audio(packet) => {
                // A packet that cannot be decoded is dropped, never the call.
                if let Err(error) = self.received(packet) {
                    self.say_once(&format!("audio dropped: {error}"));
                }
            }
        }
        Ok(())
    }

    /// When the caller sets the media path up again (see [`REBUILD_AFTER`]).
    fn rebuild_due(&self) -> Option<tokio::time::Instant> {
        if self.rebuilds >= REBUILDS_MAX {
            return None;
        }
        let after = REBUILD_AFTER * (self.rebuilds + 1);
        self.answered.map(|at| tokio::time::Instant::from_std(at + after))
    }

    /// A new peer connection in place of the current one, made as it was.
    async fn rebuild(&mut self, why: &str) -> Result<(), CallError> {
        self.rebuilds += 1;
        self.peer_settings.relay_only = self.relay_only();
        let (peer, events) = WebRtcPeer::create(&self.peer_settings).await?;
        self.replace_peer(peer, events);
        self.say(&format!("{why}; setting it up again"));
        Ok(())
    }

    /// The caller's first peer was made before the invite's ack said the
    /// call is relay-only: a relay-only peer takes over the offer sent (see
    /// [`WebRtcPeer::create_for_offer`]) before anything was gathered.
    async fn take_over_offer_relay_only(&mut self, offer: &str) -> Result<(), CallError> {
        self.peer_settings.relay_only = true;
        let (peer, events) = WebRtcPeer::create_for_offer(&self.peer_settings, offer).await?;
        self.replace_peer(peer, events);
        Ok(())
    }

    fn replace_peer(&mut self, peer: WebRtcPeer, events: mpsc::Receiver<PeerEvent>) {
        let old = std::mem::replace(&mut self.peer, Arc::new(peer));
        self.peer_events = events;
        tokio::spawn(async move { old.close().await });
    }

    /// The caller sets the media path up again: a new peer connection, and
    /// its offer to the callee (which makes a new one too).
    async fn rebuild_and_offer(&mut self, why: &str) -> Result<(), CallError> {
        self.rebuild(why).await?;
        self.restarting = true;
        let offer = self.peer.offer(false).await?;
        self.offer_restart(&offer).await
    }

    /// Sends the caller's offer that restarts the media path, and expects
    /// its answer within [`RESTART_ANSWER_WITHIN`]. Sent while the socket
    /// was down, it is made again after resume.
    async fn offer_restart(&mut self, offer: &str) -> Result<(), CallError> {
        match self.signaling.negotiate(&self.call_id, offer, NegotiateKind::Offer).await {
            Ok(()) => {
                self.restart_answer_due = Some(tokio::time::Instant::now() + RESTART_ANSWER_WITHIN);
                Ok(())
            }
            Err(SignalingError::Closed(_)) | Err(SignalingError::Timeout) => {
                self.restarting = false;
                Ok(())
            }
            Err(error) => Err(error.into()),
        }
    }

    /// When the media path must be up: [`MEDIA_WITHIN`] after the answer.
    fn media_due(&self) -> Option<tokio::time::Instant> {
        self.answered.map(|at| tokio::time::Instant::from_std(at + MEDIA_WITHIN))
    }

    async fn hang_up(&mut self, reason: HangupReason) -> String {
        let _ = self.signaling.hangup(&self.call_id, reason).await;
        self.say("hung up");
        reason.as_str().to_owned()
    }

    async fn negotiated(&mut self, sdp: &str, kind: NegotiateKind) -> Result<(), CallError> {
        if let (Some(first), Some(now)) = (&self.their_fingerprint, sas::fingerprint_in_sdp(sdp))
            && *first != now
        {
            self.warn("the other side's DTLS fingerprint changed in a renegotiation".into());
        }
        if kind == NegotiateKind::Offer {
            // An offer from a new peer connection (a new SDP session id) is
            // the caller setting the media path up again: so does this side
            // (its own DTLS may think the handshake done, if the caller never
            // got its last flight). An ICE restart keeps the session id.
            let session = sdp_session_id(sdp);
            if session != self.their_session && self.rebuilds < REBUILDS_MAX {
                self.rebuild("the caller made a new peer connection").await?;
            }
            self.their_session = session;
            let answer = self.peer.answer(sdp).await?;
            self.signaling.negotiate(&self.call_id, &answer, NegotiateKind::Answer).await?;
        } else {
            self.peer.accept_answer(sdp).await?;
            self.restarting = false;
            self.restart_answer_due = None;
        }
        self.say("renegotiated (ICE restart)");
        Ok(())
    }

    /// The caller restarts ICE; the callee answers the restart.
    async fn restart_ice(&mut self) -> Result<(), CallError> {
        if self.role != Role::Caller || self.restarting {
            return Ok(());
        }
        self.report.ice_restarts += 1;
        if !self.peer.restarts_ice() {
            return self.rebuild_and_offer("the peer's ICE credentials are pinned").await;
        }
        self.restarting = true;
        self.say("restarting ICE");
        let offer = self.peer.offer(true).await?;
        self.offer_restart(&offer).await
    }

    async fn peer_state(&mut self, state: PeerState) -> Result<(), CallError> {
        match state {
            PeerState::Connected => {
                self.restarting = false;
                if !self.connected {
                    self.connected = true;
                    self.report.setup_ms = Some(self.started.elapsed().as_millis() as u64);
                }
                if let Some(path) = self.peer.selected_path().await {
                    self.say(&format!("connected over {} (remote {})", path.local, path.remote));
                    self.report.candidate_type = Some(path.local);
                    self.report.remote_candidate_type = Some(path.remote);
                } else {
                    self.say("connected");
                }
                self.dtls_checks = 0;
                self.check_dtls().await;
            }
            PeerState::Disconnected | PeerState::Failed => {
                self.say(&format!("media path {}", if state == PeerState::Failed { "failed" } else { "interrupted" }));
                if let Err(error) = self.restart_ice().await {
                    self.restarting = false;
                    self.say(&format!("ICE restart failed: {error}"));
                }
            }
            PeerState::Connecting | PeerState::Closed => {}
        }
        Ok(())
    }

    /// The certificate DTLS saw must be the one the SDP announced (and the
    /// SAS covers). The peer may say "connected" a while before its DTLS
    /// transport hands out the certificate (under loss, seconds): until it
    /// does, it is asked again every [`DTLS_CHECK_EVERY`], without holding
    /// the call up, and only after [`DTLS_CHECKS_MAX`] tries is its absence
    /// a warning.
    async fn check_dtls(&mut self) {
        self.dtls_checks += 1;
        let seen = self.peer.remote_certificate_fingerprint().await;
        match (seen, self.their_fingerprint.clone()) {
            (Some(seen), Some(announced)) if seen != announced => {
                self.warn(format!("the DTLS certificate ({seen}) is not the one the SDP announced ({announced})"));
            }
            (None, _) if self.dtls_checks < DTLS_CHECKS_MAX => {
                self.dtls_check_due = Some(tokio::time::Instant::now() + DTLS_CHECK_EVERY);
            }
            (None, _) => self.warn("the DTLS certificate of the other side could not be read".into()),
            _ => {}
        }
    }

    fn received(&mut self, packet: AudioPacket) -> Result<(), CallError> {
        if self.report.first_audio_ms.is_none() {
            let since = self.answered.unwrap_or(self.started);
            let ms = since.elapsed().as_millis() as u64;
            self.report.first_audio_ms = Some(ms);
            self.say(&format!("first audio {ms} ms after the answer"));
        }
        self.reception.record(&packet);
        self.report.packets_received += 1;
        self.jitter.push(packet.sequence, packet.timestamp, packet.payload, packet.arrived);
        Ok(())
    }

    /// The next 20 ms of what the other side said, from the jitter buffer,
    /// to the ear tap and the recording.
    fn play_out(&mut self) -> Result<(), CallError> {
        let samples = match self.jitter.tick(Instant::now()) {
            None => return Ok(()),
            Some(Playout::Decode(payload)) => self.decoder.decode(&payload)?,
            // The frame before this packet rides in-band in it (FEC).
            Some(Playout::Recover(next)) => self.decoder.recover(&next)?,
            Some(Playout::Conceal) => self.decoder.conceal()?,
        };
        if let Some(ear) = &self.setup.ear {
            ear(&samples, Instant::now());
        }
        if let Some(sink) = &mut self.sink {
            sink.write(&samples)?;
        }
        Ok(())
    }

    /// Connects again and resumes the call; the caller restarts ICE.
    async fn reconnect(&mut self) -> bool {
        let until = Instant::now() + RECONNECT_FOR;
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let Ok(signaling) = SignalingClient::connect(&self.setup.server, &self.setup.tokens).await else {
                continue;
            };
            self.signaling = signaling;
            match self.signaling.resume(&self.call_id).await {
                Ok(()) => {
                    self.say("resumed");
                    self.restarting = false;
                    return self.restart_ice().await.is_ok();
                }
                Err(SignalingError::Refused { code, .. }) => {
                    self.say(&format!("the call could not be resumed: {code}"));
                    return false;
                }
                Err(_) => continue,
            }
        }
        false
    }

    async fn finish(mut self, reason: String) -> Result<CallReport, CallError> {
        if self.dtls_check_due.is_some() {
            // Still unread: the call never showed whose certificate it ran on.
            self.warn("the DTLS certificate of the other side could not be read".into());
        }
        let rtt = self.peer.path_figures().await.rtt_ms.or(self.last_rtt);
        // Closing is a courtesy to the other side and the relay; it never
        // holds the report back.
        let _ = tokio::time::timeout(CLOSE_WITHIN, self.peer.close()).await;
        let _ = tokio::time::timeout(CLOSE_WITHIN, self.signaling.close()).await;
        if let Some(sink) = self.sink.take() {
            sink.finish()?;
        }
        let talking = self.answered.map(|at| at.elapsed().as_secs_f64()).unwrap_or(0.0);
        self.report.end_reason = reason;
        self.report.rtt_ms = rtt.map(round2);
        self.report.jitter_ms = self.reception.jitter_ms().map(round2);
        self.report.packet_loss_pct = self.reception.loss_pct().map(round2);
        let buffered = self.jitter.stats();
        if self.reception.received > 0 {
            self.report.playout_delay_ms = Some(self.jitter.delay_ms());
        }
        self.report.late_frames = buffered.late;
        self.report.concealed_frames = buffered.concealed;
        self.report.recovered_frames = buffered.recovered;
        self.report.dropped_frames = buffered.dropped;
        self.report.fec_planned_pct = self.encoder.expected_loss_pct();
        if talking > 0.0 && self.reception.received > 0 {
            self.report.bitrate_kbps = Some(round2(self.reception.bytes as f64 * 8.0 / talking / 1_000.0));
        }
        Ok(self.report)
    }
}

/// The session id of an SDP's origin line (`o=- 4611731400430051336 2 IN IP4 …`).
fn sdp_session_id(sdp: &str) -> Option<String> {
    let origin = sdp.lines().find_map(|line| line.strip_prefix("o="))?;
    origin.split_whitespace().nth(1).map(str::to_owned)
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// `value` to two decimal places, as the reports give figures.
pub fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(sequence: u16, timestamp: u32, arrived: Instant) -> AudioPacket {
        AudioPacket { sequence, timestamp, payload: vec![0; 10], arrived }
    }

    #[test]
    fn an_sdp_session_id_is_read_from_its_origin_line() {
        let sdp = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\n";
        assert_eq!(sdp_session_id(sdp).as_deref(), Some("4611731400430051336"));
        assert_eq!(sdp_session_id("v=0\r\ns=-\r\n"), None);
    }

    #[test]
    fn reception_counts_gaps_loss_and_jitter() {
        let start = Instant::now();
        let mut reception = Reception::default();
        reception.record(&packet(65_534, 0, start));
        reception.record(&packet(65_535, 960, start + Duration::from_millis(20)));
        // 0 and 1 are lost across the wrap.
        reception.record(&packet(2, 3_840, start + Duration::from_millis(80)));
        assert_eq!(reception.loss_pct(), Some(40.0));
        assert!(reception.jitter_ms().unwrap() < 0.1);
        // A late packet arriving 30 ms off its schedule adds jitter.
        reception.record(&packet(3, 4_800, start + Duration::from_millis(130)));
        assert!(reception.jitter_ms().unwrap() > 1.0);
    }

    #[test]
    fn reception_tells_the_loss_since_it_last_looked() {
        let start = Instant::now();
        let mut reception = Reception::default();
        assert_eq!(reception.loss_since_last_pct(), None, "nothing came yet");
        reception.record(&packet(10, 0, start));
        assert_eq!(reception.loss_since_last_pct(), None, "one packet: nothing was due after it");
        // 11 to 20: 13 and 17 lost.
        for sequence in (11..=20).filter(|sequence| ![13, 17].contains(sequence)) {
            reception.record(&packet(sequence, 0, start));
        }
        assert_eq!(reception.loss_since_last_pct(), Some(20.0));
        assert_eq!(reception.loss_since_last_pct(), None, "nothing new");
        for sequence in 21..=24 {
            reception.record(&packet(sequence, 0, start));
        }
        assert_eq!(reception.loss_since_last_pct(), Some(0.0));
    }
}
