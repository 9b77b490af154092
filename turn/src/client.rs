//! A small TURN client over UDP (RFC 5766 with long-term credentials): what
//! the relay's tests and `courier bench turn` drive the embedded relay and
//! coturn with. Requests are retransmitted on loss; a 401 challenge or a 438
//! stale nonce is answered once with fresh credentials. Calls themselves
//! reach TURN through the WebRTC stack, not through this client.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rtc_stun::attributes::*;
use rtc_stun::error_code::ErrorCodeAttribute;
use rtc_stun::fingerprint::FINGERPRINT;
use rtc_stun::integrity::MessageIntegrity;
use rtc_stun::message::*;
use rtc_stun::textattrs::TextAttribute;
use rtc_stun::xoraddr::XorMappedAddress;
use rtc_turn::crypto::{RTCCrypto, RTCCryptoProvider};
use rtc_turn::proto::PROTO_UDP;
use rtc_turn::proto::channum::ChannelNumber;
use rtc_turn::proto::data::Data;
use rtc_turn::proto::lifetime::Lifetime;
use rtc_turn::proto::peeraddr::PeerAddress;
use rtc_turn::proto::relayaddr::RelayedAddress;
use rtc_turn::proto::reqtrans::RequestedTransport;
use tokio::net::UdpSocket;

use super::credentials::long_term_key;

/// Attributes of a request, built afresh for each attempt.
pub type Attributes = Vec<Box<dyn Setter + Send>>;

const TRANSMISSIONS: usize = 5;
const RETRANSMIT_AFTER: Duration = Duration::from_millis(800);

/// Why a request did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TurnError {
    /// The server answered with this error code (401, 403, 437, …).
    Code(u16),
    /// No answer after every retransmission.
    NoAnswer,
    /// A socket error, or an answer that does not parse.
    Failed(String),
}

impl fmt::Display for TurnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TurnError::Code(code) => write!(f, "the TURN server answered {code}"),
            TurnError::NoAnswer => f.write_str("the TURN server did not answer"),
            TurnError::Failed(reason) => f.write_str(reason),
        }
    }
}

fn failed(error: impl fmt::Display) -> TurnError {
    TurnError::Failed(error.to_string())
}

/// An allocation the server granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allocated {
    pub relayed: SocketAddr,
    pub lifetime_s: u64,
}

pub struct TurnClient {
    pub socket: UdpSocket,
    pub server: SocketAddr,
    pub username: String,
    pub password: String,
    /// The realm and nonce of the last challenge (set them to send a
    /// request with credentials the server did not hand out).
    pub realm: Option<String>,
    pub nonce: Option<String>,
    crypto: Arc<dyn RTCCryptoProvider>,
}

impl TurnClient {
    /// A client on a socket of its own, bound to `local` (port 0 for any).
    pub async fn bind(
        local: SocketAddr,
        server: SocketAddr,
        username: &str,
        password: &str,
    ) -> Result<Self, TurnError> {
        Ok(TurnClient {
            socket: UdpSocket::bind(local).await.map_err(failed)?,
            server,
            username: username.into(),
            password: password.into(),
            realm: None,
            nonce: None,
            crypto: rtc_turn::crypto::default_provider().map_err(failed)?,
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr, TurnError> {
        self.socket.local_addr().map_err(failed)
    }

    pub fn crypto(&self) -> &dyn RTCCrypto {
        self.crypto.crypto()
    }

    /// The long-term key for the current realm.
    pub fn key(&self) -> Option<[u8; 16]> {
        Some(long_term_key(&self.username, self.realm.as_deref()?, &self.password))
    }

    /// Sends a request and returns the server's answer (a success or an
    /// error response), answering one challenge on the way.
    pub async fn request(&mut self, method: Method, attributes: impl Fn() -> Attributes) -> Result<Message, TurnError> {
        let mut retried = false;
        loop {
            let signed = self.nonce.is_some();
            let mut setters: Vec<Box<dyn Setter + '_>> =
                vec![Box::new(MessageType::new(method, CLASS_REQUEST)), Box::new(TransactionId::new())];
            setters.extend(attributes().into_iter().map(|setter| setter as Box<dyn Setter>));
            if let (Some(key), Some(realm), Some(nonce)) = (self.key(), &self.realm, &self.nonce) {
                setters.push(Box::new(TextAttribute::new(ATTR_USERNAME, self.username.clone())));
                setters.push(Box::new(TextAttribute::new(ATTR_REALM, realm.clone())));
                setters.push(Box::new(TextAttribute::new(ATTR_NONCE, nonce.clone())));
                setters.push(Box::new(MessageIntegrity::new_raw_integrity_with_provider(key.to_vec(), self.crypto())));
            }
            setters.push(Box::new(FINGERPRINT));
            let mut request = Message::new();
            request.build(&setters).map_err(failed)?;
            drop(setters);
            let response = self.exchange(&request).await?;
            let retry = !retried
                && match code_of(&response) {
                    Some(438) => true,
                    Some(401) => !signed,
                    _ => false,
                };
            if retry {
                retried = true;
                self.realm = TextAttribute::get_from_as(&response, ATTR_REALM).ok().map(|text| text.text);
                self.nonce = TextAttribute::get_from_as(&response, ATTR_NONCE).ok().map(|text| text.text);
                if self.nonce.is_some() {
                    continue;
                }
            }
            return Ok(response);
        }
    }

    /// Sends `request` until its answer comes (other datagrams are skipped).
    pub async fn exchange(&self, request: &Message) -> Result<Message, TurnError> {
        let mut buffer = vec![0u8; 2_048];
        for _ in 0..TRANSMISSIONS {
            self.socket.send_to(&request.raw, self.server).await.map_err(failed)?;
            let deadline = tokio::time::Instant::now() + RETRANSMIT_AFTER;
            while let Ok(received) = tokio::time::timeout_at(deadline, self.socket.recv_from(&mut buffer)).await {
                let (length, _) = received.map_err(failed)?;
                let mut response = Message::new();
                if response.unmarshal_binary(&buffer[..length]).is_ok()
                    && response.transaction_id == request.transaction_id
                {
                    return Ok(response);
                }
            }
        }
        Err(TurnError::NoAnswer)
    }

    /// Allocates a UDP relay, with `extra` attributes (LIFETIME, EVEN-PORT…).
    pub async fn allocate_with(&mut self, extra: impl Fn() -> Attributes) -> Result<Allocated, TurnError> {
        let response = self
            .request(METHOD_ALLOCATE, || {
                let mut attributes: Attributes = vec![Box::new(RequestedTransport { protocol: PROTO_UDP })];
                attributes.extend(extra());
                attributes
            })
            .await?;
        success(&response)?;
        self.check_integrity(&response)?;
        let mut relayed = RelayedAddress::default();
        relayed.get_from(&response).map_err(failed)?;
        let mut lifetime = Lifetime::default();
        lifetime.get_from(&response).map_err(failed)?;
        Ok(Allocated { relayed: SocketAddr::new(relayed.ip, relayed.port), lifetime_s: lifetime.0.as_secs() })
    }

    pub async fn allocate(&mut self) -> Result<Allocated, TurnError> {
        self.allocate_with(Vec::new).await
    }

    pub async fn create_permission(&mut self, peers: &[SocketAddr]) -> Result<(), TurnError> {
        let peers = peers.to_vec();
        let response = self
            .request(METHOD_CREATE_PERMISSION, || {
                peers
                    .iter()
                    .map(|peer| Box::new(PeerAddress { ip: peer.ip(), port: peer.port() }) as Box<dyn Setter + Send>)
                    .collect()
            })
            .await?;
        success(&response)
    }

    pub async fn channel_bind(&mut self, number: u16, peer: SocketAddr) -> Result<(), TurnError> {
        let response = self
            .request(METHOD_CHANNEL_BIND, || {
                vec![Box::new(ChannelNumber(number)), Box::new(PeerAddress { ip: peer.ip(), port: peer.port() })]
            })
            .await?;
        success(&response)
    }

    /// Refreshes the allocation; lifetime 0 deletes it. Returns the lifetime granted.
    pub async fn refresh(&mut self, lifetime_s: u64) -> Result<u64, TurnError> {
        let lifetime = Duration::from_secs(lifetime_s);
        let response = self.request(METHOD_REFRESH, || vec![Box::new(Lifetime(lifetime))]).await?;
        success(&response)?;
        let mut granted = Lifetime::default();
        granted.get_from(&response).map_err(failed)?;
        Ok(granted.0.as_secs())
    }

    /// A STUN Binding request: the address the server sees this client at.
    pub async fn binding(&mut self) -> Result<SocketAddr, TurnError> {
        let mut request = Message::new();
        request.build(&[Box::new(BINDING_REQUEST), Box::new(TransactionId::new())]).map_err(failed)?;
        let response = self.exchange(&request).await?;
        success(&response)?;
        let mut mapped = XorMappedAddress::default();
        mapped.get_from(&response).map_err(failed)?;
        Ok(SocketAddr::new(mapped.ip, mapped.port))
    }

    /// A Send indication (no answer comes back).
    pub async fn send_indication(&self, peer: SocketAddr, payload: &[u8]) -> Result<(), TurnError> {
        let mut indication = Message::new();
        indication
            .build(&[
                Box::new(MessageType::new(METHOD_SEND, CLASS_INDICATION)),
                Box::new(TransactionId::new()),
                Box::new(PeerAddress { ip: peer.ip(), port: peer.port() }),
                Box::new(Data(payload.to_vec())),
            ])
            .map_err(failed)?;
        self.socket.send_to(&indication.raw, self.server).await.map_err(failed)?;
        Ok(())
    }

    /// A successful answer to an authenticated request is signed with the
    /// same key.
    fn check_integrity(&self, response: &Message) -> Result<(), TurnError> {
        let key = self.key().ok_or_else(|| failed("a success without a challenge first"))?;
        let mut response = response.clone();
        MessageIntegrity::check(&mut response, &key, self.crypto()).map_err(|_| failed("the answer is not signed"))
    }
}

/// A ChannelData message (RFC 5766 §11.4): `number`, length, `payload`.
pub fn channel_data(number: u16, payload: &[u8], frame: &mut Vec<u8>) {
    frame.clear();
    frame.extend_from_slice(&number.to_be_bytes());
    frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    frame.extend_from_slice(payload);
}

/// The error code of an error response.
pub fn code_of(response: &Message) -> Option<u16> {
    if response.typ.class != CLASS_ERROR_RESPONSE {
        return None;
    }
    let mut error = ErrorCodeAttribute::default();
    Some(if error.get_from(response).is_ok() { error.code.0 } else { 0 })
}

fn success(response: &Message) -> Result<(), TurnError> {
    match code_of(response) {
        Some(code) => Err(TurnError::Code(code)),
        None => Ok(()),
    }
}
