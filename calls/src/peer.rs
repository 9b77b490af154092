//! The media path of a call: a WebRTC peer connection carrying one Opus
//! audio track each way, behind [`MediaPeer`], a small trait of our own so
//! the `webrtc` crate's version can move without touching the call logic.
//!
//! [`WebRtcPeer`] is the implementation on webrtc-rs 0.21 (the sans-IO
//! rewrite; 0.17 was the old design's last release and leaks per
//! connection). Candidates trickle both ways as events; with
//! [`PeerSettings::relay_only`] the ICE transport policy is `relay` and,
//! belt and braces, no candidate of another type ever leaves this module.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rtc::media::Sample;
use rtc::peer_connection::certificate::RTCCertificate;
use rtc::peer_connection::configuration::RTCOfferOptions;
use rtc::peer_connection::transport::RTCDtlsRole;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodec, RTCRtpCodecParameters, RTCRtpEncodingParameters, RtpCodecKind};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::{Mutex, mpsc};
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::media_stream::{MediaStreamTrack, Track};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceCandidateInit, RTCIceCandidateType, RTCIceServer, RTCIceTransportPolicy, RTCPeerConnectionIceEvent,
    RTCPeerConnectionState, RTCSessionDescription, RTCStatsReportEntry, Registry, SettingEngineBuilder,
    register_default_interceptors,
};
use webrtc::rtp_transceiver::RtpSender;

/// Opus as every browser offers it: payload type 111, in-band FEC.
const OPUS_PAYLOAD_TYPE: u8 = 111;
const OPUS_FMTP: &str = "minptime=10;useinbandfec=1";
/// Pacing of ICE connectivity checks.
const ICE_CHECK_EVERY: Duration = Duration::from_millis(50);
/// Checks sent on a candidate pair before it is given up (1.4 s at 50 ms).
const ICE_CHECKS_PER_PAIR: u16 = 28;
/// How long after checks start a relayed pair may be nominated, while the
/// call's policy lets a direct one win (see [`WebRtcPeer::create`]).
const RELAY_NOMINATION_WAIT: Duration = Duration::from_secs(1);
/// Events waiting for the call loop; audio is 50 packets a second.
const EVENTS_QUEUED_MAX: usize = 1_024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PeerError(pub String);

impl From<webrtc::error::Error> for PeerError {
    fn from(error: webrtc::error::Error) -> Self {
        PeerError(error.to_string())
    }
}

/// A STUN or TURN server, as `/v1/calls/ice-servers` hands them out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IceServer {
    pub urls: Vec<String>,
    pub username: String,
    pub credential: String,
}

impl IceServer {
    /// The `ice_servers` array of `/v1/calls/ice-servers`.
    pub fn list_from_json(body: &Value) -> Vec<IceServer> {
        body["ice_servers"]
            .as_array()
            .map(|servers| {
                servers
                    .iter()
                    .map(|server| IceServer {
                        urls: match &server["urls"] {
                            Value::String(url) => vec![url.clone()],
                            Value::Array(urls) => {
                                urls.iter().filter_map(|url| url.as_str().map(str::to_owned)).collect()
                            }
                            _ => Vec::new(),
                        },
                        username: server["username"].as_str().unwrap_or_default().to_owned(),
                        credential: server["credential"].as_str().unwrap_or_default().to_owned(),
                    })
                    .filter(|server| !server.urls.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone)]
pub struct PeerSettings {
    pub ice_servers: Vec<IceServer>,
    /// Only relay candidates: the other side never learns this device's address.
    pub relay_only: bool,
    /// The interface host candidates are gathered on; unspecified means every
    /// interface but loopback.
    pub host_ip: IpAddr,
    /// How long without an answer from the other side before ICE reports
    /// `disconnected` (the softphone then restarts ICE).
    pub disconnected_after: Duration,
    /// The DTLS certificate, when a call keeps one across peer connections
    /// (its fingerprint is in the SDP and the SAS); otherwise a new one.
    pub certificate: Option<RTCCertificate>,
}

impl Default for PeerSettings {
    fn default() -> Self {
        PeerSettings {
            ice_servers: Vec::new(),
            relay_only: false,
            host_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            disconnected_after: Duration::from_secs(3),
            certificate: None,
        }
    }
}

/// The connection's state as the call loop sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    Connecting,
    Connected,
    Disconnected,
    Failed,
    Closed,
}

/// One RTP packet of the other side's audio.
#[derive(Debug, Clone)]
pub struct AudioPacket {
    pub sequence: u16,
    pub timestamp: u32,
    pub payload: Vec<u8>,
    pub arrived: Instant,
}

#[derive(Debug, Clone)]
pub enum PeerEvent {
    /// A local candidate to trickle to the other side, as
    /// `{"candidate","sdpMid","sdpMLineIndex"}`.
    LocalCandidate(Value),
    State(PeerState),
    Audio(AudioPacket),
}

/// The selected candidate pair's types (`host`, `srflx`, `prflx`, `relay`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectedPath {
    pub local: String,
    pub remote: String,
}

/// What the call logic needs of a peer connection.
#[async_trait]
pub trait MediaPeer: Send + Sync {
    /// Creates an offer (restarting ICE when asked) and applies it locally.
    async fn offer(&self, ice_restart: bool) -> Result<String, PeerError>;
    /// Creates the call's first offer without applying it: nothing is
    /// gathered until [`MediaPeer::apply_offer`], when the call's ICE policy
    /// is known.
    async fn create_offer(&self) -> Result<String, PeerError>;
    /// Applies the offer from [`MediaPeer::create_offer`], which starts
    /// gathering.
    async fn apply_offer(&self, offer: &str) -> Result<(), PeerError>;
    /// Whether an ICE restart gives this peer new ICE credentials. A peer
    /// made to take over an offer already sent ([`WebRtcPeer::create_for_offer`])
    /// keeps that offer's, and webrtc-rs restarts ICE with pinned credentials
    /// unchanged, which the other side would not see as a restart.
    fn restarts_ice(&self) -> bool;
    /// Applies the other side's offer and returns the applied answer.
    async fn answer(&self, offer: &str) -> Result<String, PeerError>;
    /// Applies the other side's answer to our offer.
    async fn accept_answer(&self, answer: &str) -> Result<(), PeerError>;
    /// Adds a candidate the other side trickled.
    async fn add_remote_candidate(&self, candidate: &Value) -> Result<(), PeerError>;
    /// Sends one encoded 20 ms Opus frame (a no-op until media flows).
    async fn send_opus(&self, frame: Vec<u8>) -> Result<(), PeerError>;
    /// Has the connection's event loop run once more, sending what it has
    /// queued for the TURN relay (see [`WebRtcPeer::flush_relayed`]).
    async fn flush_relayed(&self);
    async fn selected_path(&self) -> Option<SelectedPath>;
    /// `sha-256 AB:CD:…` of the certificate the DTLS handshake actually saw.
    async fn remote_certificate_fingerprint(&self) -> Option<String>;
    /// The selected pair's round-trip time and the far end's reception, as
    /// its receiver reports tell.
    async fn path_figures(&self) -> PathFigures;
    async fn close(&self);
}

/// What a peer connection knows of its path.
#[derive(Debug, Default, Clone, Copy)]
pub struct PathFigures {
    /// The selected pair's current round-trip time, from ICE consent checks.
    pub rtt_ms: Option<f64>,
    /// The share of our packets the far end lost in its last receiver
    /// report's interval (none before the first report).
    pub remote_loss_pct: Option<f64>,
}

/// A DTLS certificate for a call's peer connections (ECDSA P-256, as
/// webrtc-rs makes its own).
pub fn new_certificate() -> Result<RTCCertificate, PeerError> {
    use rtc::crypto::SignatureScheme;
    use rtc::peer_connection::certificate::CertificateParams;
    let provider = rtc::crypto::default_provider().map_err(|error| PeerError(error.to_string()))?;
    let params = CertificateParams::new(vec!["courier".to_owned()]).map_err(|error| PeerError(error.to_string()))?;
    RTCCertificate::generate(provider.crypto(), SignatureScheme::EcdsaP256Sha256, params)
        .map_err(|error| PeerError(error.to_string()))
}

/// Does this candidate line keep the relay-only promise?
pub fn candidate_type(candidate: &str) -> Option<&str> {
    let mut words = candidate.split_whitespace();
    words.by_ref().find(|word| *word == "typ")?;
    words.next()
}

struct Handler {
    events: mpsc::Sender<PeerEvent>,
    relay_only: bool,
    connected: Arc<AtomicBool>,
}

#[async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if self.relay_only && event.candidate.typ != RTCIceCandidateType::Relay {
            return;
        }
        let Ok(init) = event.candidate.to_json() else { return };
        if init.candidate.is_empty() {
            return;
        }
        if let Ok(value) = serde_json::to_value(&init) {
            let _ = self.events.send(PeerEvent::LocalCandidate(value)).await;
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let state = match state {
            RTCPeerConnectionState::Connected => PeerState::Connected,
            RTCPeerConnectionState::Disconnected => PeerState::Disconnected,
            RTCPeerConnectionState::Failed => PeerState::Failed,
            RTCPeerConnectionState::Closed => PeerState::Closed,
            _ => PeerState::Connecting,
        };
        self.connected.store(state == PeerState::Connected, Ordering::Relaxed);
        let _ = self.events.send(PeerEvent::State(state)).await;
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let events = self.events.clone();
        tokio::spawn(async move {
            while let Some(event) = track.poll().await {
                if let TrackRemoteEvent::OnRtpPacket(packet) = event {
                    let audio = AudioPacket {
                        sequence: packet.header.sequence_number,
                        timestamp: packet.header.timestamp,
                        payload: packet.payload.to_vec(),
                        arrived: Instant::now(),
                    };
                    // A full queue drops audio rather than stalling the connection.
                    if let Err(mpsc::error::TrySendError::Closed(_)) = events.try_send(PeerEvent::Audio(audio)) {
                        break;
                    }
                }
            }
        });
    }
}

/// The webrtc-rs 0.21 peer connection.
pub struct WebRtcPeer {
    connection: Arc<dyn PeerConnection>,
    track: Arc<TrackLocalStaticSample>,
    sender: Arc<dyn RtpSender>,
    /// SSRC and payload type once negotiated.
    sending: Mutex<Option<(u32, u8)>>,
    connected: Arc<AtomicBool>,
    /// ICE credentials pinned to an offer made by another peer.
    pinned_credentials: bool,
}

/// What a peer taking over an offer already sent must keep of it: the ICE
/// credentials and the SSRC the other side was told (the DTLS certificate,
/// and with it the fingerprint, comes with the settings).
#[derive(Debug, PartialEq, Eq)]
struct SentOffer {
    ufrag: String,
    pwd: String,
    ssrc: u32,
}

impl SentOffer {
    fn read(sdp: &str) -> Option<SentOffer> {
        let attribute = |name: &str| {
            sdp.lines().find_map(|line| line.trim_end().strip_prefix("a=")?.strip_prefix(name)?.strip_prefix(':'))
        };
        let ssrc = attribute("ssrc")?.split_whitespace().next()?.parse().ok()?;
        Some(SentOffer { ufrag: attribute("ice-ufrag")?.to_owned(), pwd: attribute("ice-pwd")?.to_owned(), ssrc })
    }
}

impl WebRtcPeer {
    /// A peer connection with one send-and-receive Opus track; its events
    /// (candidates, state, audio) go to the returned receiver.
    pub async fn create(settings: &PeerSettings) -> Result<(WebRtcPeer, mpsc::Receiver<PeerEvent>), PeerError> {
        Self::build(settings, None).await
    }

    /// A peer that takes over `offer`, made and sent by another peer with
    /// the same settings' certificate but not applied (see
    /// [`MediaPeer::create_offer`]): the same ICE credentials and SSRC, so
    /// the answer to that offer fits this one. Its own equivalent offer is
    /// applied, which starts gathering.
    ///
    /// The caller builds its first peer before the server says the call's
    /// ICE policy; when that is `relay`, this peer takes its place, because
    /// webrtc-rs fixes how long a relayed pair waits before nomination
    /// ([`RELAY_NOMINATION_WAIT`]) when the connection is made, and applies
    /// no local offer but its own.
    pub async fn create_for_offer(
        settings: &PeerSettings,
        offer: &str,
    ) -> Result<(WebRtcPeer, mpsc::Receiver<PeerEvent>), PeerError> {
        let sent =
            SentOffer::read(offer).ok_or_else(|| PeerError("the offer has no ICE credentials or SSRC".into()))?;
        let (peer, events) = Self::build(settings, Some(sent)).await?;
        peer.offer(false).await?;
        Ok((peer, events))
    }

    async fn build(
        settings: &PeerSettings,
        sent: Option<SentOffer>,
    ) -> Result<(WebRtcPeer, mpsc::Receiver<PeerEvent>), PeerError> {
        let (events_tx, events) = mpsc::channel(EVENTS_QUEUED_MAX);
        let mut media_engine = MediaEngine::default();
        let opus = RTCRtpCodec {
            mime_type: rtc::peer_connection::configuration::media_engine::MIME_TYPE_OPUS.to_owned(),
            clock_rate: 48_000,
            channels: 2,
            sdp_fmtp_line: OPUS_FMTP.to_owned(),
            rtcp_feedback: vec![],
        };
        media_engine.register_codec(
            RTCRtpCodecParameters { rtp_codec: opus.clone(), payload_type: OPUS_PAYLOAD_TYPE },
            RtpCodecKind::Audio,
        )?;
        let registry = register_default_interceptors(Registry::new(), &mut media_engine)?;
        let ice_servers = settings
            .ice_servers
            .iter()
            .map(|server| RTCIceServer {
                urls: server.urls.clone(),
                username: server.username.clone(),
                credential: server.credential.clone(),
            })
            .collect();
        let policy = if settings.relay_only { RTCIceTransportPolicy::Relay } else { RTCIceTransportPolicy::All };
        let mut configuration =
            RTCConfigurationBuilder::new().with_ice_servers(ice_servers).with_ice_transport_policy(policy);
        if let Some(certificate) = &settings.certificate {
            configuration = configuration.with_certificates(vec![certificate.clone()]);
        }
        let configuration = configuration.build();
        let setting_engine = SettingEngineBuilder::new()
            .with_ice_timeouts(
                Some(settings.disconnected_after),
                Some(settings.disconnected_after * 5),
                Some(Duration::from_millis(500)),
            )
            // A round of checks every 50 ms (RFC 8445's Ta) rather than the
            // crate's 200 ms: a pair is found in one round and nominated in the
            // next, so this is most of the setup time on a good path. Each pair
            // still gets the default 1.4 s of attempts before it fails.
            .with_ice_connection_attempts(Some(ICE_CHECK_EVERY), Some(ICE_CHECKS_PER_PAIR))
            .with_include_loopback_candidate(settings.host_ip.is_loopback());
        // The defaults wait before nominating a pair that is not host to host,
        // hoping for a better one: 2 s for relay, 1 s for a peer-reflexive
        // candidate (one learned from a check that came before the signaled
        // candidates), 0.5 s for server-reflexive. Relay-only, nothing better
        // can come. Otherwise a direct pair through two NATs needs both
        // sides' checks to cross (a few round trips, and a browser on a busy
        // machine answers late): a relayed pair that succeeded first is
        // nominated only after 1 s, when no direct pair has, which a call
        // behind symmetric NAT pays in set-up. Among pairs that succeeded
        // the best is nominated, so a reflexive pair never wins over a host
        // pair that works.
        let relay_wait = if settings.relay_only { Duration::ZERO } else { RELAY_NOMINATION_WAIT };
        let mut setting_engine = setting_engine
            .with_relay_acceptance_min_wait(Some(relay_wait))
            .with_prflx_acceptance_min_wait(Some(Duration::ZERO))
            .with_srflx_acceptance_min_wait(Some(Duration::ZERO))
            // The answerer is the DTLS server, so the caller (which learns
            // last that ICE is up) sends the first flight: sent the other way,
            // the first ClientHello can arrive before the caller listens and
            // is retransmitted only a second later.
            .with_answering_dtls_role(RTCDtlsRole::Server);
        if let Some(sent) = &sent {
            setting_engine = setting_engine.with_ice_credentials(sent.ufrag.clone(), sent.pwd.clone());
        }
        let setting_engine = setting_engine.build();
        let connected = Arc::new(AtomicBool::new(false));
        let handler = Handler { events: events_tx, relay_only: settings.relay_only, connected: connected.clone() };
        let connection = PeerConnectionBuilder::new()
            .with_configuration(configuration)
            .with_media_engine(media_engine)
            .with_setting_engine(setting_engine)
            .with_interceptor_registry(registry)
            .with_handler(Arc::new(handler))
            .with_udp_addrs(vec![SocketAddr::new(settings.host_ip, 0)])
            .build()
            .await?;
        let connection: Arc<dyn PeerConnection> = Arc::new(connection);
        let ssrc: u32 = sent.as_ref().map_or_else(rand::random, |sent| sent.ssrc);
        let track = Arc::new(TrackLocalStaticSample::new(
            Instant::now(),
            MediaStreamTrack::new(
                "courier".to_owned(),
                "courier-audio".to_owned(),
                "audio".to_owned(),
                RtpCodecKind::Audio,
                vec![RTCRtpEncodingParameters {
                    rtp_coding_parameters: rtc::rtp_transceiver::rtp_sender::RTCRtpCodingParameters {
                        ssrc: Some(ssrc),
                        ..Default::default()
                    },
                    codec: opus,
                    ..Default::default()
                }],
            ),
        )?);
        let sender = connection.add_track(track.clone() as Arc<dyn TrackLocal>).await?;
        let pinned_credentials = sent.is_some();
        Ok((WebRtcPeer { connection, track, sender, sending: Mutex::new(None), connected, pinned_credentials }, events))
    }

    async fn negotiated(&self) -> Option<(u32, u8)> {
        let mut sending = self.sending.lock().await;
        if sending.is_none() {
            let parameters = self.sender.get_parameters().await.ok()?;
            let payload_type = parameters
                .rtp_parameters
                .codecs
                .iter()
                .find(|codec| codec.rtp_codec.mime_type.eq_ignore_ascii_case("audio/opus"))
                .map(|codec| codec.payload_type)?;
            let ssrc = *self.track.ssrcs().await.first()?;
            *sending = Some((ssrc, payload_type));
        }
        *sending
    }

    async fn ice_transport(&self) -> Option<Arc<dyn webrtc::peer_connection::transport::IceTransport>> {
        let dtls = self.sender.transport().await.ok()??;
        Some(dtls.ice_transport())
    }
}

#[async_trait]
impl MediaPeer for WebRtcPeer {
    async fn offer(&self, ice_restart: bool) -> Result<String, PeerError> {
        let offer = self.connection.create_offer(Some(RTCOfferOptions { ice_restart })).await?;
        self.connection.set_local_description(offer).await?;
        let local = self.connection.local_description().await.ok_or_else(|| PeerError("no local offer".into()))?;
        Ok(local.sdp)
    }

    async fn create_offer(&self) -> Result<String, PeerError> {
        Ok(self.connection.create_offer(None).await?.sdp)
    }

    async fn apply_offer(&self, offer: &str) -> Result<(), PeerError> {
        self.connection.set_local_description(RTCSessionDescription::offer(offer.to_owned())?).await?;
        Ok(())
    }

    fn restarts_ice(&self) -> bool {
        !self.pinned_credentials
    }

    async fn answer(&self, offer: &str) -> Result<String, PeerError> {
        self.connection.set_remote_description(RTCSessionDescription::offer(offer.to_owned())?).await?;
        let answer = self.connection.create_answer(None).await?;
        self.connection.set_local_description(answer).await?;
        let local = self.connection.local_description().await.ok_or_else(|| PeerError("no local answer".into()))?;
        Ok(local.sdp)
    }

    async fn accept_answer(&self, answer: &str) -> Result<(), PeerError> {
        self.connection.set_remote_description(RTCSessionDescription::answer(answer.to_owned())?).await?;
        Ok(())
    }

    async fn add_remote_candidate(&self, candidate: &Value) -> Result<(), PeerError> {
        let init: RTCIceCandidateInit = serde_json::from_value(candidate.clone())
            .map_err(|error| PeerError(format!("a candidate that cannot be read: {error}")))?;
        if init.candidate.is_empty() {
            return Ok(());
        }
        self.connection.add_ice_candidate(init).await?;
        Ok(())
    }

    /// webrtc-rs 0.21's event loop sends what its TURN client holds before
    /// it hands the TURN client the connection's new packets, and then sleeps
    /// until its next timer or packet: a packet for the relay (a DTLS flight,
    /// an audio frame) waits for the loop's next turn, hundreds of
    /// milliseconds during set-up, up to the next frame during a call. An
    /// empty list of RTCP packets is a message to the loop that sends
    /// nothing by itself; queued behind what was just written, it gives the
    /// loop the turn that sends it.
    async fn flush_relayed(&self) {
        let _ = self.track.write_rtcp(Vec::new()).await;
    }

    async fn send_opus(&self, frame: Vec<u8>) -> Result<(), PeerError> {
        if !self.connected.load(Ordering::Relaxed) {
            return Ok(());
        }
        let Some((ssrc, payload_type)) = self.negotiated().await else { return Ok(()) };
        let sample = Sample { data: frame.into(), duration: Duration::from_millis(20), ..Sample::new(Instant::now()) };
        self.track.sample_writer(ssrc, payload_type).write_sample(&sample).await?;
        Ok(())
    }

    async fn selected_path(&self) -> Option<SelectedPath> {
        let pair = self.ice_transport().await?.get_selected_candidate_pair().await.ok()??;
        Some(SelectedPath { local: pair.local().typ.to_string(), remote: pair.remote().typ.to_string() })
    }

    async fn remote_certificate_fingerprint(&self) -> Option<String> {
        let dtls = self.sender.transport().await.ok()??;
        let certificates = dtls.get_remote_certificates().await.ok()?;
        let certificate = certificates.first()?;
        Some(certificate_fingerprint(certificate))
    }

    async fn path_figures(&self) -> PathFigures {
        let report = self.connection.get_stats(Instant::now(), webrtc::peer_connection::StatsSelector::None).await;
        let rtt_ms = report
            .candidate_pairs()
            .filter(|pair| pair.nominated && pair.current_round_trip_time > 0.0)
            .map(|pair| pair.current_round_trip_time * 1_000.0)
            .next();
        let remote_loss_pct = report
            .iter()
            .filter_map(|entry| match entry {
                RTCStatsReportEntry::RemoteInboundRtp(stream) if stream.round_trip_time_measurements > 0 => {
                    Some(stream.fraction_lost * 100.0)
                }
                _ => None,
            })
            .next();
        PathFigures { rtt_ms, remote_loss_pct }
    }

    async fn close(&self) {
        let _ = self.connection.close().await;
    }
}

/// `sha-256 AB:CD:…` of a DER certificate, as SDP spells fingerprints.
pub fn certificate_fingerprint(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    let bytes: Vec<String> = digest.iter().map(|byte| format!("{byte:02X}")).collect();
    format!("sha-256 {}", bytes.join(":"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidate_types_and_ice_servers_are_read() {
        assert_eq!(candidate_type("candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host"), Some("host"));
        assert_eq!(
            candidate_type("candidate:2 1 udp 16777215 1.2.3.4 6000 typ relay raddr 0.0.0.0 rport 0"),
            Some("relay")
        );
        assert_eq!(candidate_type("candidate:2 1 udp"), None);
        let servers = IceServer::list_from_json(&serde_json::json!({"ice_servers": [
            {"urls": ["stun:127.0.0.1:3478"]},
            {"urls": ["turn:127.0.0.1:3478?transport=udp"], "username": "9:a", "credential": "c"},
            {"urls": []}
        ]}));
        assert_eq!(servers.len(), 2);
        assert_eq!(servers[1].username, "9:a");
        assert!(certificate_fingerprint(b"x").starts_with("sha-256 2D:71:16:42"));
    }

    type Side = (WebRtcPeer, mpsc::Receiver<PeerEvent>);

    /// A 440 Hz tone from `a`, 880 Hz from `b`, until each heard 50 frames
    /// and told the other's tone apart; the peers are returned connected.
    async fn exchange_tones(a: Side, b: Side) -> (Arc<WebRtcPeer>, Arc<WebRtcPeer>) {
        use crate::audio::{Decoder, Encoder, FRAME_SAMPLES, Source, dominant};
        let (a, mut a_events) = (Arc::new(a.0), a.1);
        let (b, mut b_events) = (Arc::new(b.0), b.1);
        let mut heard = [Vec::new(), Vec::new()];
        let mut sources = [Source::parse("tone:440").unwrap(), Source::parse("tone:880").unwrap()];
        let mut encoders = [Encoder::new().unwrap(), Encoder::new().unwrap()];
        let mut decoders = [Decoder::new().unwrap(), Decoder::new().unwrap()];
        let mut clock = tokio::time::interval(Duration::from_millis(20));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && heard.iter().any(|packets| packets.len() < 50) {
            tokio::select! {
                _ = clock.tick() => {
                    for (index, peer) in [&a, &b].into_iter().enumerate() {
                        let mut frame = [0i16; FRAME_SAMPLES];
                        sources[index].next_frame(&mut frame);
                        peer.send_opus(encoders[index].encode(&frame).unwrap()).await.unwrap();
                    }
                }
                Some(event) = a_events.recv() => match event {
                    PeerEvent::LocalCandidate(candidate) => b.add_remote_candidate(&candidate).await.unwrap(),
                    PeerEvent::Audio(packet) => heard[0].push(decoders[0].decode(&packet.payload).unwrap()),
                    PeerEvent::State(_) => {}
                },
                Some(event) = b_events.recv() => match event {
                    PeerEvent::LocalCandidate(candidate) => a.add_remote_candidate(&candidate).await.unwrap(),
                    PeerEvent::Audio(packet) => heard[1].push(decoders[1].decode(&packet.payload).unwrap()),
                    PeerEvent::State(_) => {}
                },
            }
        }
        assert!(heard[0].len() >= 50 && heard[1].len() >= 50, "heard {} and {}", heard[0].len(), heard[1].len());
        let tail = |frames: &[Vec<i16>]| frames[frames.len() - 25..].concat();
        assert_eq!(dominant(&tail(&heard[0]), &[440.0, 880.0]), Some(880.0));
        assert_eq!(dominant(&tail(&heard[1]), &[440.0, 880.0]), Some(440.0));
        assert_eq!(a.selected_path().await.unwrap().local, "host");
        (a, b)
    }

    /// Two peers in one process on loopback exchange tones over Opus.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_peers_exchange_opus_audio_on_loopback() {
        let settings = PeerSettings { host_ip: IpAddr::V4(Ipv4Addr::LOCALHOST), ..PeerSettings::default() };
        let (a, a_events) = WebRtcPeer::create(&settings).await.unwrap();
        let (b, b_events) = WebRtcPeer::create(&settings).await.unwrap();
        let offer = a.offer(false).await.unwrap();
        let answer = b.answer(&offer).await.unwrap();
        a.accept_answer(&answer).await.unwrap();
        assert!(a.restarts_ice());
        let (a, b) = exchange_tones((a, a_events), (b, b_events)).await;
        let seen = a.remote_certificate_fingerprint().await;
        assert_eq!(seen, courier_protocol::sas::fingerprint_in_sdp(&answer));
        a.close().await;
        b.close().await;
    }

    /// The offer of a peer that never applied it, answered by the other
    /// side, is taken over by a second peer with the same certificate: the
    /// answer fits it, audio goes both ways, and the other side's DTLS saw
    /// the certificate whose fingerprint it was offered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_peer_takes_over_an_offer_sent_and_not_applied() {
        use courier_protocol::sas::fingerprint_in_sdp;
        let settings = PeerSettings {
            host_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            certificate: Some(new_certificate().unwrap()),
            ..PeerSettings::default()
        };
        let (first, _first_events) = WebRtcPeer::create(&settings).await.unwrap();
        let sent = first.create_offer().await.unwrap();
        let (b, b_events) = WebRtcPeer::create(&PeerSettings { certificate: None, ..settings.clone() }).await.unwrap();
        let answer = b.answer(&sent).await.unwrap();
        let (a, a_events) = WebRtcPeer::create_for_offer(&settings, &sent).await.unwrap();
        first.close().await;
        let applied = a.connection.local_description().await.unwrap().sdp;
        assert_ne!(applied, sent, "a peer of its own, with an offer of its own");
        assert_eq!(SentOffer::read(&applied), SentOffer::read(&sent));
        assert_eq!(fingerprint_in_sdp(&applied), fingerprint_in_sdp(&sent));
        a.accept_answer(&answer).await.unwrap();
        assert!(!a.restarts_ice(), "pinned ICE credentials stay in an ICE restart");
        let (a, b) = exchange_tones((a, a_events), (b, b_events)).await;
        assert_eq!(b.remote_certificate_fingerprint().await, fingerprint_in_sdp(&sent));
        a.close().await;
        b.close().await;
    }

    #[test]
    fn an_offer_sent_is_read_for_its_ice_credentials_and_ssrc() {
        let sdp = "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=ice-ufrag:AbC\r\na=ice-pwd:pass/word+1\r\na=ssrc:3735928559 cname:x\r\na=ssrc:3735928559 msid:s t\r\n";
        assert_eq!(
            SentOffer::read(sdp),
            Some(SentOffer { ufrag: "AbC".into(), pwd: "pass/word+1".into(), ssrc: 3_735_928_559 })
        );
        assert_eq!(SentOffer::read("v=0\r\na=ice-ufrag:x\r\na=ice-pwd:y\r\n"), None);
        assert_eq!(SentOffer::read("a=ice-ufrag:x\na=ice-pwd:y\na=ssrc:nope cname:x\n"), None);
    }
}

/// Fuzz target of what the softphone reads from the server besides frames
/// (`courier_common::fuzz`): candidate lines and the ICE servers' JSON.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: courier_common::fuzz::cases(), ..ProptestConfig::default() })]

        #[test]
        fn candidate_lines_and_ice_server_lists_are_read_or_skipped(
            line in prop_oneof![
                "candidate:[0-9]{1,3} [12] (udp|tcp) [0-9]{1,10} [0-9.]{7,15} [0-9]{1,5} typ (host|srflx|relay|prflx)( raddr [0-9.]{7,15} rport [0-9]{1,5})?",
                ".{0,80}",
            ],
            urls in prop::collection::vec(prop_oneof!["(stun|turn|turns):[a-z0-9.:\\[\\]]{0,20}(\\?transport=(udp|tcp))?", ".{0,20}"], 0..3),
            username in prop_oneof![Just(json!(null)), ".{0,20}".prop_map(|text| json!(text)), any::<i64>().prop_map(|n| json!(n))],
        ) {
            if let Some(kind) = candidate_type(&line) {
                prop_assert!(line.contains(kind));
            }
            let body = json!({"ice_servers": [{"urls": urls, "username": username, "credential": "c"}, {"urls": "stun:x"}, 7], "ttl": "x"});
            let _ = IceServer::list_from_json(&body);
        }
    }
}
