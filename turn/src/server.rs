//! The embedded TURN relay: RFC 5766 allocations over UDP and TCP with UDP
//! relaying to peers, long-term credentials in the TURN REST API scheme,
//! the peer filter, and quotas on allocations.
//!
//! One task reads the UDP listener; one task per TCP connection reads its
//! stream (and one writes it); one task per allocation reads its relayed
//! socket. Control messages (Allocate, Refresh, CreatePermission,
//! ChannelBind, Binding) are decoded with `rtc-stun`; data (ChannelData,
//! Send indications) is relayed with one table lookup and no allocation.
//!
//! Data for a peer that is another allocation's relayed address on this
//! relay (both parties of a relayed call on the same relay: the usual case)
//! is handed to that allocation's client at once, with the checks and the
//! framing its relayed socket would have applied: no datagram through the
//! kernel between two sockets of this process, and no task woken for it.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

use courier_common::sync::lock;
use std::time::{Duration, Instant};

use courier_common::shutdown::CancellationToken;
use courier_common::text::hex;
use courier_common::time::now_s;
use hmac::{Hmac, Mac};
use ipnet::IpNet;
use metrics::{Counter, Gauge};
use rtc_stun::attributes::*;
use rtc_stun::error_code::{ErrorCode, ErrorCodeAttribute};
use rtc_stun::fingerprint::FINGERPRINT;
use rtc_stun::integrity::MessageIntegrity;
use rtc_stun::message::*;
use rtc_stun::textattrs::TextAttribute;
use rtc_stun::xoraddr::XorMappedAddress;
use rtc_turn::crypto::RTCCryptoProvider;
use rtc_turn::proto::channum::ChannelNumber;
use rtc_turn::proto::data::Data;
use rtc_turn::proto::lifetime::Lifetime;
use rtc_turn::proto::relayaddr::RelayedAddress;
use rtc_turn::proto::reqtrans::RequestedTransport;
use rtc_turn::proto::{PROTO_UDP, Protocol};
use sha1::Sha1;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, mpsc};

use super::credentials::{TurnSecrets, long_term_key, parse_username};
use super::filter::PeerFilter;

pub const TURN_LISTEN_DEFAULT: &str = "127.0.0.1:3478";
pub const TURN_REALM_DEFAULT: &str = "courier";
pub const TURN_RELAY_PORTS_DEFAULT: (u16, u16) = (49_152, 65_535);
pub const TURN_ALLOCATIONS_MAX_DEFAULT: usize = 5_000;
pub const TURN_ALLOCATIONS_PER_USER_MAX_DEFAULT: usize = 10;
pub const TURN_ALLOCATION_LIFETIME_MAX_S_DEFAULT: u64 = 3_600;

/// RFC 5766: allocations live 10 minutes unless asked otherwise,
/// permissions 5 minutes, channel bindings 10 minutes.
const ALLOCATION_LIFETIME_DEFAULT: Duration = Duration::from_secs(600);
const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
/// A nonce is good this long; then the client is told 438 Stale Nonce.
const NONCE_LIFETIME_S: u64 = 3_600;
/// Peers one allocation may have permissions for.
const PERMISSIONS_PER_ALLOCATION_MAX: usize = 256;
/// Frames waiting to be written to one TCP client; beyond it, data is
/// dropped as UDP would drop it.
const TCP_OUTBOUND_QUEUE_LEN_MAX: usize = 1_024;
/// A TCP connection that holds no allocation this long is closed.
const TCP_IDLE_WITHOUT_ALLOCATION: Duration = Duration::from_secs(30);
/// Random ports tried before an Allocate is answered 508.
const RELAY_BIND_ATTEMPTS: usize = 64;
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Largest UDP payload.
const DATAGRAM_BYTES_MAX: usize = 65_535;
/// Kernel buffers of the UDP listener, which every client's packets share:
/// room for bursts while its task waits for a core (the kernel caps them at
/// net.core.rmem_max / wmem_max).
const LISTENER_BUFFER_BYTES: usize = 4 * 1024 * 1024;
const SOFTWARE: &str = concat!("courier/", env!("CARGO_PKG_VERSION"));

#[derive(Debug, Clone)]
pub struct TurnConfig {
    /// UDP and TCP, on the same port; port 0 picks a free one.
    pub listen: SocketAddr,
    /// The address relayed sockets bind to and that clients are told.
    pub relay_ip: IpAddr,
    /// Ports relayed sockets take, inclusive.
    pub relay_ports: (u16, u16),
    pub realm: String,
    pub secrets: TurnSecrets,
    /// Peer ranges let through the filter (tests, closed networks).
    pub allow_peers: Vec<IpNet>,
    /// Allocations held at once; beyond it, 508 Insufficient Capacity.
    pub allocations_max: usize,
    /// Allocations one account holds at once; beyond it, 486 Allocation Quota Reached.
    pub allocations_per_user_max: usize,
    /// The longest lifetime an Allocate or Refresh is granted.
    pub allocation_lifetime_max: Duration,
}

impl TurnConfig {
    pub fn new(listen: SocketAddr, secrets: TurnSecrets) -> Self {
        TurnConfig {
            listen,
            relay_ip: listen.ip(),
            relay_ports: TURN_RELAY_PORTS_DEFAULT,
            realm: TURN_REALM_DEFAULT.into(),
            secrets,
            allow_peers: Vec::new(),
            allocations_max: TURN_ALLOCATIONS_MAX_DEFAULT,
            allocations_per_user_max: TURN_ALLOCATIONS_PER_USER_MAX_DEFAULT,
            allocation_lifetime_max: Duration::from_secs(TURN_ALLOCATION_LIFETIME_MAX_S_DEFAULT),
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.relay_ip.is_unspecified() {
            return Err("the TURN relay needs an address clients can reach: pass --turn-relay-ip".into());
        }
        if self.relay_ports.0 == 0 || self.relay_ports.0 > self.relay_ports.1 {
            return Err("--turn-relay-ports must be a range LOW-HIGH of ports above 0".into());
        }
        if self.allocations_max == 0 || self.allocations_per_user_max == 0 {
            return Err("--turn-allocations-max and --turn-allocations-per-user-max must be at least 1".into());
        }
        if self.allocation_lifetime_max.is_zero() {
            return Err("--turn-allocation-lifetime-max-s must be at least 1".into());
        }
        if self.realm.is_empty() || self.realm.len() > 100 {
            return Err("--turn-realm must be 1 to 100 characters".into());
        }
        Ok(())
    }
}

/// A bound relay, ready to run.
pub struct TurnServer {
    shared: Arc<Shared>,
    /// The UDP listener's sockets, one per core (see [`udp_listeners`]).
    udp: Vec<Arc<UdpSocket>>,
    tcp: TcpListener,
}

impl TurnServer {
    /// Binds UDP and TCP on the same port.
    pub async fn bind(config: TurnConfig) -> Result<TurnServer, String> {
        config.validate()?;
        let listen = config.listen;
        let mut attempt = 0;
        let (udp, tcp, local) = loop {
            attempt += 1;
            // Taken without SO_REUSEPORT first: a port some other socket
            // holds is refused here (with it, another process of the same
            // user could share the port unnoticed), and port 0 picks a free one.
            let probe = std::net::UdpSocket::bind(listen).map_err(|error| bind_error("UDP", listen, &error))?;
            let local = probe.local_addr().map_err(|error| error.to_string())?;
            match TcpListener::bind(local).await {
                Ok(tcp) => {
                    drop(probe);
                    let udp = udp_listeners(local).map_err(|error| bind_error("UDP", local, &error))?;
                    break (udp, tcp, local);
                }
                // A free UDP port whose TCP twin is taken: try another.
                Err(error) if listen.port() == 0 && attempt < 16 => {
                    tracing::debug!(%error, port = local.port(), "TCP port taken")
                }
                Err(error) => return Err(bind_error("TCP", local, &error)),
            }
        };
        let crypto = rtc_turn::crypto::default_provider().map_err(|error| error.to_string())?;
        let mut nonce_key = [0u8; 32];
        rand::fill(&mut nonce_key);
        let tcp_connections = Arc::new(Semaphore::new(config.allocations_max));
        let shared = Arc::new(Shared {
            filter: PeerFilter::new(config.allow_peers.clone()),
            config,
            local,
            crypto,
            nonce_key,
            table: Mutex::new(Table::default()),
            meters: Meters::new(),
            tcp_connections,
        });
        Ok(TurnServer { shared, udp: udp.into_iter().map(Arc::new).collect(), tcp })
    }

    /// Where the relay listens (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local
    }

    /// Serves until `shutdown`, then ends every allocation.
    pub fn spawn(self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let TurnServer { shared, udp, tcp } = self;
            tracing::info!(listen = %shared.local, relay_ip = %shared.config.relay_ip, "TURN relay serving UDP and TCP");
            let mut readers = tokio::task::JoinSet::new();
            for socket in udp {
                readers.spawn(serve_udp(shared.clone(), socket, shutdown.clone()));
            }
            tokio::join!(
                async { while readers.join_next().await.is_some() {} },
                accept_tcp(shared.clone(), tcp, shutdown.clone()),
                sweep(shared.clone(), shutdown.clone()),
            );
            let all: Vec<Arc<Allocation>> = {
                let mut table = shared.table();
                table.by_relay.clear();
                table.by_tuple.drain().map(|(_, allocation)| allocation).collect()
            };
            for allocation in all {
                allocation.closed.cancel();
            }
            shared.meters.allocations.set(0.0);
            tracing::info!("TURN relay stopped");
        })
    }
}

fn bind_error(transport: &str, addr: SocketAddr, error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::AddrInUse => {
            format!("the TURN relay cannot take {transport} {addr}: it is in use; pass --turn-listen 127.0.0.1:0")
        }
        _ => format!("the TURN relay cannot listen on {transport} {addr}: {error}"),
    }
}

/// A client's connection to the relay: RFC 5766's 5-tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FiveTuple {
    client: SocketAddr,
    tcp: bool,
}

/// How a client is reached.
#[derive(Clone)]
enum ClientSink {
    Udp(Arc<UdpSocket>),
    Tcp(mpsc::Sender<Vec<u8>>),
}

struct Allocation {
    tuple: FiveTuple,
    username: String,
    account: Arc<str>,
    key: [u8; 16],
    relay: UdpSocket,
    relay_addr: SocketAddr,
    client: ClientSink,
    allocate_transaction: TransactionId,
    state: Mutex<AllocationState>,
    closed: CancellationToken,
}

struct AllocationState {
    expires: Instant,
    permissions: HashMap<IpAddr, Instant>,
    channels: HashMap<u16, (SocketAddr, Instant)>,
    channel_of: HashMap<SocketAddr, u16>,
}

impl AllocationState {
    fn permitted(&self, ip: IpAddr, now: Instant) -> bool {
        self.permissions.get(&ip).is_some_and(|expires| *expires > now)
    }

    /// The channel bound to `peer`, if its binding and permission are alive.
    fn channel_to(&self, peer: SocketAddr, now: Instant) -> Option<u16> {
        let number = *self.channel_of.get(&peer)?;
        let (_, expires) = self.channels.get(&number)?;
        (*expires > now).then_some(number)
    }

    fn prune(&mut self, now: Instant) {
        self.permissions.retain(|_, expires| *expires > now);
        let channels = &mut self.channels;
        channels.retain(|_, (_, expires)| *expires > now);
        self.channel_of.retain(|_, number| channels.contains_key(number));
    }
}

impl Allocation {
    fn state(&self) -> MutexGuard<'_, AllocationState> {
        lock(&self.state)
    }

    /// What this allocation's relayed socket makes of a datagram from
    /// `peer`, held at `buffer[4..4 + length]` (four bytes of room before it,
    /// three after): nothing without a permission for the peer's address;
    /// else the frame for the client, ChannelData on the peer's channel built
    /// in place (padded to four bytes for a TCP client), or a Data indication.
    fn frame_from_peer<'a>(&self, peer: SocketAddr, buffer: &'a mut [u8], length: usize) -> Option<Cow<'a, [u8]>> {
        let channel = {
            let now = Instant::now();
            let state = self.state();
            if !state.permitted(peer.ip(), now) {
                return None;
            }
            state.channel_to(peer, now)
        };
        match channel {
            Some(number) => {
                buffer[..2].copy_from_slice(&number.to_be_bytes());
                buffer[2..4].copy_from_slice(&(length as u16).to_be_bytes());
                let mut end = 4 + length;
                if self.tuple.tcp {
                    let padded = (end + 3) & !3;
                    buffer[end..padded].fill(0);
                    end = padded;
                }
                Some(Cow::Borrowed(&buffer[..end]))
            }
            None => data_indication(peer, &buffer[4..4 + length]).map(Cow::Owned),
        }
    }
}

#[derive(Default)]
struct Table {
    by_tuple: HashMap<FiveTuple, Arc<Allocation>>,
    /// The same allocations by relayed address.
    by_relay: HashMap<SocketAddr, Arc<Allocation>>,
    per_account: HashMap<Arc<str>, usize>,
}

impl Table {
    fn remove(&mut self, tuple: &FiveTuple) -> Option<Arc<Allocation>> {
        let allocation = self.by_tuple.remove(tuple)?;
        self.by_relay.remove(&allocation.relay_addr);
        if let Some(count) = self.per_account.get_mut(&allocation.account) {
            *count -= 1;
            if *count == 0 {
                self.per_account.remove(&allocation.account);
            }
        }
        allocation.closed.cancel();
        Some(allocation)
    }
}

struct Meters {
    allocations: Gauge,
    to_peer: Counter,
    to_client: Counter,
    dropped: Counter,
}

impl Meters {
    fn new() -> Self {
        Meters {
            allocations: metrics::gauge!("turn_allocations"),
            to_peer: metrics::counter!("turn_packets_relayed_total", "direction" => "to_peer"),
            to_client: metrics::counter!("turn_packets_relayed_total", "direction" => "to_client"),
            dropped: metrics::counter!("turn_packets_dropped_total"),
        }
    }

    fn refused(code: u16) {
        metrics::counter!("turn_refusals_total", "code" => code.to_string()).increment(1);
    }
}

struct Shared {
    config: TurnConfig,
    local: SocketAddr,
    filter: PeerFilter,
    crypto: Arc<dyn RTCCryptoProvider>,
    nonce_key: [u8; 32],
    table: Mutex<Table>,
    meters: Meters,
    tcp_connections: Arc<Semaphore>,
}

/// A refused request: the error response's code and reason, whether it
/// carries a fresh nonce and the realm (401, 438), and the key to sign it
/// with once the client is authenticated.
struct ErrorResponse {
    code: u16,
    reason: &'static str,
    challenge: bool,
    key: Option<[u8; 16]>,
}

impl ErrorResponse {
    fn bad(reason: &'static str) -> Self {
        ErrorResponse { code: 400, reason, challenge: false, key: None }
    }

    fn challenge(code: u16, reason: &'static str) -> Self {
        ErrorResponse { code, reason, challenge: true, key: None }
    }

    fn signed(code: u16, reason: &'static str, key: [u8; 16]) -> Self {
        ErrorResponse { code, reason, challenge: false, key: Some(key) }
    }
}

/// A success response's attributes, signed with `key` when there is one.
struct Success {
    attributes: Vec<Box<dyn Setter + Send>>,
    key: Option<[u8; 16]>,
}

struct Authenticated {
    username: String,
    account: Arc<str>,
    key: [u8; 16],
}

/// What a checked Allocate request gets.
enum Allocate {
    /// A retransmission of the request that made the tuple's allocation: its success again.
    Again(Success),
    New(Granted),
}

/// A new allocation the request may have.
struct Granted {
    auth: Authenticated,
    even_port: bool,
    lifetime: Duration,
}

impl Shared {
    fn table(&self) -> MutexGuard<'_, Table> {
        lock(&self.table)
    }

    fn allocation(&self, tuple: &FiveTuple) -> Option<Arc<Allocation>> {
        self.table().by_tuple.get(tuple).cloned()
    }

    /// Handles a STUN message; returns the response to send back, if any.
    fn handle_stun(self: &Arc<Self>, tuple: FiveTuple, sink: &ClientSink, packet: &[u8]) -> Option<Vec<u8>> {
        let mut request = Message::new();
        if request.unmarshal_binary(packet).is_err() {
            return None;
        }
        if request.typ.class == CLASS_INDICATION {
            if request.typ.method == METHOD_SEND {
                self.send_indication(tuple, &request);
            }
            return None;
        }
        if request.typ.class != CLASS_REQUEST {
            return None;
        }
        let outcome = match request.typ.method {
            METHOD_BINDING => Ok(Success {
                attributes: vec![Box::new(XorMappedAddress { ip: tuple.client.ip(), port: tuple.client.port() })],
                key: None,
            }),
            METHOD_ALLOCATE => self.allocate(tuple, sink, &mut request),
            METHOD_REFRESH => self.refresh(tuple, &mut request),
            METHOD_CREATE_PERMISSION => self.create_permission(tuple, &mut request),
            METHOD_CHANNEL_BIND => self.channel_bind(tuple, &mut request),
            _ => Err(ErrorResponse::bad("Bad Request: unsupported method")),
        };
        let response = match outcome {
            Ok(success) => self.encode(&request, CLASS_SUCCESS_RESPONSE, success.attributes, success.key),
            Err(refusal) => {
                Meters::refused(refusal.code);
                let mut attributes: Vec<Box<dyn Setter + Send>> = vec![Box::new(ErrorCodeAttribute {
                    code: ErrorCode(refusal.code),
                    reason: refusal.reason.as_bytes().to_vec(),
                })];
                if refusal.challenge {
                    attributes.push(Box::new(TextAttribute::new(ATTR_REALM, self.config.realm.clone())));
                    attributes.push(Box::new(TextAttribute::new(ATTR_NONCE, self.nonce(tuple))));
                }
                self.encode(&request, CLASS_ERROR_RESPONSE, attributes, refusal.key)
            }
        };
        response.ok()
    }

    fn encode(
        &self,
        request: &Message,
        class: MessageClass,
        attributes: Vec<Box<dyn Setter + Send>>,
        key: Option<[u8; 16]>,
    ) -> Result<Vec<u8>, String> {
        let mut setters: Vec<Box<dyn Setter + '_>> = Vec::with_capacity(attributes.len() + 5);
        setters.push(Box::new(MessageType::new(request.typ.method, class)));
        setters.push(Box::new(request.transaction_id));
        setters.push(Box::new(TextAttribute::new(ATTR_SOFTWARE, SOFTWARE.into())));
        setters.extend(attributes.into_iter().map(|setter| setter as Box<dyn Setter>));
        if let Some(key) = key {
            setters
                .push(Box::new(MessageIntegrity::new_raw_integrity_with_provider(key.to_vec(), self.crypto.crypto())));
        }
        setters.push(Box::new(FINGERPRINT));
        let mut response = Message::new();
        response.build(&setters).map_err(|error| error.to_string())?;
        Ok(response.raw)
    }

    /// A stateless nonce: its expiry and a MAC over the expiry and the
    /// client's address, so it cannot be forged or carried elsewhere.
    fn nonce(&self, tuple: FiveTuple) -> String {
        let expires = now_s() + NONCE_LIFETIME_S;
        format!("{expires:016x}{}", hex(&self.nonce_mac(expires, tuple.client.ip())))
    }

    fn nonce_mac(&self, expires: u64, ip: IpAddr) -> [u8; 10] {
        let mut mac = Hmac::<Sha1>::new_from_slice(&self.nonce_key).expect("HMAC takes a key of any length");
        mac.update(&expires.to_be_bytes());
        match ip {
            IpAddr::V4(v4) => mac.update(&v4.octets()),
            IpAddr::V6(v6) => mac.update(&v6.octets()),
        }
        let digest = mac.finalize().into_bytes();
        let mut out = [0u8; 10];
        out.copy_from_slice(&digest[..10]);
        out
    }

    fn nonce_is_fresh(&self, nonce: &str, tuple: FiveTuple) -> bool {
        if nonce.len() != 36 || !nonce.is_ascii() {
            return false;
        }
        let Ok(expires) = u64::from_str_radix(&nonce[..16], 16) else { return false };
        let expected = hex(&self.nonce_mac(expires, tuple.client.ip()));
        let genuine: bool = subtle::ConstantTimeEq::ct_eq(expected.as_bytes(), &nonce.as_bytes()[16..]).into();
        genuine && expires >= now_s()
    }

    /// Long-term credentials (RFC 5389 §10.2): a request without integrity
    /// is challenged; a stale nonce gets 438; an expired or unknown username
    /// or a wrong password gets 401. Requests on an allocation must use the
    /// username that made it (441).
    fn authenticate(
        &self,
        tuple: FiveTuple,
        request: &mut Message,
        allocation: Option<&Allocation>,
    ) -> Result<Authenticated, ErrorResponse> {
        if !request.contains(ATTR_MESSAGE_INTEGRITY) {
            return Err(ErrorResponse::challenge(401, "Unauthorized"));
        }
        let text = |attribute| TextAttribute::get_from_as(request, attribute).map(|text| text.text);
        let (Ok(username), Ok(realm), Ok(nonce)) = (text(ATTR_USERNAME), text(ATTR_REALM), text(ATTR_NONCE)) else {
            return Err(ErrorResponse::bad("Bad Request: USERNAME, REALM and NONCE are required"));
        };
        if !self.nonce_is_fresh(&nonce, tuple) {
            return Err(ErrorResponse::challenge(438, "Stale Nonce"));
        }
        if realm != self.config.realm {
            return Err(ErrorResponse::challenge(401, "Unauthorized: unknown realm"));
        }
        let Some((expires_at_s, account)) = parse_username(&username) else {
            return Err(ErrorResponse::challenge(401, "Unauthorized: the username is not <expiry>:<account>"));
        };
        if expires_at_s < now_s() {
            return Err(ErrorResponse::challenge(401, "Unauthorized: the credentials have expired"));
        }
        let crypto = self.crypto.crypto();
        if let Some(allocation) = allocation {
            if allocation.username != username {
                return Err(ErrorResponse::signed(441, "Wrong Credentials", allocation.key));
            }
            return match MessageIntegrity::check(request, &allocation.key, crypto) {
                Ok(()) => Ok(Authenticated { username, account: allocation.account.clone(), key: allocation.key }),
                Err(_) => Err(ErrorResponse::challenge(401, "Unauthorized")),
            };
        }
        let account: Arc<str> = Arc::from(account);
        let key = self
            .config
            .secrets
            .passwords(&username)
            .map(|password| long_term_key(&username, &realm, &password))
            .find(|key| MessageIntegrity::check(request, key, crypto).is_ok());
        match key {
            Some(key) => Ok(Authenticated { username, account, key }),
            None => Err(ErrorResponse::challenge(401, "Unauthorized")),
        }
    }

    /// The lifetime granted for a requested one (RFC 5766 §6.2, §7.2).
    fn lifetime(&self, requested: Option<Duration>) -> Duration {
        requested
            .unwrap_or(ALLOCATION_LIFETIME_DEFAULT)
            .max(ALLOCATION_LIFETIME_DEFAULT)
            .min(self.config.allocation_lifetime_max)
    }

    fn allocate(
        self: &Arc<Self>,
        tuple: FiveTuple,
        sink: &ClientSink,
        request: &mut Message,
    ) -> Result<Success, ErrorResponse> {
        match self.check_allocate(tuple, request)? {
            Allocate::Again(success) => Ok(success),
            Allocate::New(granted) => self.open_allocation(tuple, sink, request.transaction_id, granted),
        }
    }

    /// Checks an Allocate request (credentials, transport, address family,
    /// quotas) and decides what it gets; changes nothing.
    fn check_allocate(&self, tuple: FiveTuple, request: &mut Message) -> Result<Allocate, ErrorResponse> {
        let existing = self.allocation(&tuple);
        let auth = self.authenticate(tuple, request, None)?;
        let key = auth.key;
        if let Some(existing) = existing {
            // A retransmitted Allocate gets its success again; any other is a mismatch.
            if existing.allocate_transaction == request.transaction_id && existing.username == auth.username {
                let remaining = existing.state().expires.saturating_duration_since(Instant::now());
                return Ok(Allocate::Again(allocated(&existing, tuple, remaining)));
            }
            return Err(ErrorResponse::signed(437, "Allocation Mismatch", key));
        }
        let mut transport = RequestedTransport { protocol: Protocol(0) };
        if transport.get_from(request).is_err() {
            return Err(ErrorResponse::signed(400, "Bad Request: REQUESTED-TRANSPORT is required", key));
        }
        if transport.protocol != PROTO_UDP {
            return Err(ErrorResponse::signed(442, "Unsupported Transport Protocol", key));
        }
        if request.contains(ATTR_RESERVATION_TOKEN) {
            return Err(ErrorResponse::signed(508, "Insufficient Capacity: no port is reserved", key));
        }
        if let Ok(family) = request.get(ATTR_REQUESTED_ADDRESS_FAMILY) {
            let wanted_v6 = family.first() == Some(&0x02);
            if wanted_v6 != self.config.relay_ip.is_ipv6() {
                return Err(ErrorResponse::signed(440, "Address Family not Supported", key));
            }
        }
        let even_port = request.contains(ATTR_EVEN_PORT);
        let mut requested = Lifetime::default();
        let lifetime = self.lifetime(requested.get_from(request).ok().map(|()| requested.0));
        let table = self.table();
        if table.by_tuple.len() >= self.config.allocations_max {
            return Err(ErrorResponse::signed(508, "Insufficient Capacity", key));
        }
        if table.per_account.get(&auth.account).copied().unwrap_or(0) >= self.config.allocations_per_user_max {
            return Err(ErrorResponse::signed(486, "Allocation Quota Reached", key));
        }
        Ok(Allocate::New(Granted { auth, even_port, lifetime }))
    }

    /// Opens what a checked Allocate was granted: a relayed socket, the
    /// allocation in the table, and the task that relays from its socket.
    fn open_allocation(
        self: &Arc<Self>,
        tuple: FiveTuple,
        sink: &ClientSink,
        transaction: TransactionId,
        granted: Granted,
    ) -> Result<Success, ErrorResponse> {
        let Granted { auth, even_port, lifetime } = granted;
        let key = auth.key;
        let Some(relay) = self.bind_relay(even_port) else {
            return Err(ErrorResponse::signed(508, "Insufficient Capacity: no relay port is free", key));
        };
        let relay_addr = relay.local_addr().map_err(|_| ErrorResponse::signed(500, "Server Error", key))?;
        let allocation = Arc::new(Allocation {
            tuple,
            username: auth.username,
            account: auth.account,
            key,
            relay,
            relay_addr,
            client: sink.clone(),
            allocate_transaction: transaction,
            state: Mutex::new(AllocationState {
                expires: Instant::now() + lifetime,
                permissions: HashMap::new(),
                channels: HashMap::new(),
                channel_of: HashMap::new(),
            }),
            closed: CancellationToken::new(),
        });
        {
            let mut table = self.table();
            *table.per_account.entry(allocation.account.clone()).or_default() += 1;
            table.by_tuple.insert(tuple, allocation.clone());
            table.by_relay.insert(relay_addr, allocation.clone());
            self.meters.allocations.set(table.by_tuple.len() as f64);
        }
        tracing::debug!(client = %tuple.client, tcp = tuple.tcp, relay = %relay_addr, account = %allocation.account, "TURN allocation");
        tokio::spawn(relay_to_client(self.clone(), allocation.clone()));
        Ok(allocated(&allocation, tuple, lifetime))
    }

    fn bind_relay(&self, even: bool) -> Option<UdpSocket> {
        let (low, high) = self.config.relay_ports;
        for _ in 0..RELAY_BIND_ATTEMPTS {
            let mut port = rand::random_range(low..=high);
            if even && port % 2 == 1 {
                port = if port > low { port - 1 } else { port + 1 };
            }
            if port > high {
                continue;
            }
            let Ok(socket) = std::net::UdpSocket::bind(SocketAddr::new(self.config.relay_ip, port)) else { continue };
            if socket.set_nonblocking(true).is_err() {
                continue;
            }
            if let Ok(socket) = UdpSocket::from_std(socket) {
                return Some(socket);
            }
        }
        None
    }

    /// The allocation `tuple` holds, after authenticating the request with
    /// its credentials; 437 when there is none.
    fn bound(&self, tuple: FiveTuple, request: &mut Message) -> Result<(Arc<Allocation>, [u8; 16]), ErrorResponse> {
        match self.allocation(&tuple) {
            Some(allocation) => {
                let auth = self.authenticate(tuple, request, Some(&allocation))?;
                Ok((allocation, auth.key))
            }
            None => {
                let auth = self.authenticate(tuple, request, None)?;
                Err(ErrorResponse::signed(437, "Allocation Mismatch", auth.key))
            }
        }
    }

    fn refresh(&self, tuple: FiveTuple, request: &mut Message) -> Result<Success, ErrorResponse> {
        let (allocation, key) = self.bound(tuple, request)?;
        let mut requested = Lifetime::default();
        let requested = requested.get_from(request).ok().map(|()| requested.0);
        if requested == Some(Duration::ZERO) {
            self.remove(&tuple);
            return Ok(Success { attributes: vec![Box::new(Lifetime(Duration::ZERO))], key: Some(key) });
        }
        let lifetime = self.lifetime(requested);
        allocation.state().expires = Instant::now() + lifetime;
        Ok(Success { attributes: vec![Box::new(Lifetime(lifetime))], key: Some(key) })
    }

    /// A peer the relay may talk to: the same address family as the relay,
    /// and through the filter (403 otherwise).
    fn admit(&self, allocation: &Allocation, peer: SocketAddr, key: [u8; 16]) -> Result<(), ErrorResponse> {
        if peer.is_ipv6() != allocation.relay_addr.is_ipv6() {
            return Err(ErrorResponse::signed(443, "Peer Address Family Mismatch", key));
        }
        if let Err(reason) = self.filter.check(peer.ip()) {
            tracing::warn!(account = %allocation.account, peer = %peer.ip(), %reason, "TURN peer refused");
            metrics::counter!("turn_peers_refused_total", "reason" => reason.to_string()).increment(1);
            return Err(ErrorResponse::signed(403, "Forbidden", key));
        }
        Ok(())
    }

    fn create_permission(&self, tuple: FiveTuple, request: &mut Message) -> Result<Success, ErrorResponse> {
        let (allocation, key) = self.bound(tuple, request)?;
        let peers = peer_addresses(request);
        if peers.is_empty() {
            return Err(ErrorResponse::signed(400, "Bad Request: XOR-PEER-ADDRESS is required", key));
        }
        for peer in &peers {
            self.admit(&allocation, *peer, key)?;
        }
        let now = Instant::now();
        let mut state = allocation.state();
        state.prune(now);
        let new = peers.iter().filter(|peer| !state.permissions.contains_key(&peer.ip())).count();
        if state.permissions.len() + new > PERMISSIONS_PER_ALLOCATION_MAX {
            return Err(ErrorResponse::signed(508, "Insufficient Capacity: too many permissions", key));
        }
        for peer in peers {
            state.permissions.insert(peer.ip(), now + PERMISSION_LIFETIME);
        }
        Ok(Success { attributes: Vec::new(), key: Some(key) })
    }

    fn channel_bind(&self, tuple: FiveTuple, request: &mut Message) -> Result<Success, ErrorResponse> {
        let (allocation, key) = self.bound(tuple, request)?;
        let mut number = ChannelNumber::default();
        if number.get_from(request).is_err() || !number.valid() {
            return Err(ErrorResponse::signed(400, "Bad Request: CHANNEL-NUMBER must be 0x4000 to 0x7FFF", key));
        }
        let Some(&peer) = peer_addresses(request).first() else {
            return Err(ErrorResponse::signed(400, "Bad Request: XOR-PEER-ADDRESS is required", key));
        };
        self.admit(&allocation, peer, key)?;
        let now = Instant::now();
        let mut state = allocation.state();
        state.prune(now);
        if state.channels.get(&number.0).is_some_and(|(bound, _)| *bound != peer)
            || state.channel_of.get(&peer).is_some_and(|bound| *bound != number.0)
        {
            return Err(ErrorResponse::signed(400, "Bad Request: the channel or the peer is bound otherwise", key));
        }
        if !state.permissions.contains_key(&peer.ip()) && state.permissions.len() >= PERMISSIONS_PER_ALLOCATION_MAX {
            return Err(ErrorResponse::signed(508, "Insufficient Capacity: too many permissions", key));
        }
        state.channels.insert(number.0, (peer, now + CHANNEL_LIFETIME));
        state.channel_of.insert(peer, number.0);
        state.permissions.insert(peer.ip(), now + PERMISSION_LIFETIME);
        Ok(Success { attributes: Vec::new(), key: Some(key) })
    }

    /// A Send indication: relayed when the peer has a permission, else dropped
    /// (indications get no answer).
    fn send_indication(&self, tuple: FiveTuple, request: &Message) {
        let Some(allocation) = self.allocation(&tuple) else { return };
        let (Some(&peer), Ok(data)) = (peer_addresses(request).first(), request.get(ATTR_DATA)) else { return };
        let permitted = self.filter.check(peer.ip()).is_ok() && allocation.state().permitted(peer.ip(), Instant::now());
        if permitted {
            self.to_peer(&allocation, &data, peer);
        } else {
            self.meters.dropped.increment(1);
        }
    }

    /// ChannelData on channel `number` from a client: relayed to the channel's peer.
    fn channel_data(&self, tuple: FiveTuple, number: u16, packet: &[u8]) {
        let Some(payload) = channel_payload(packet) else { return };
        let Some(allocation) = self.allocation(&tuple) else { return };
        let peer = {
            let now = Instant::now();
            let state = allocation.state();
            state
                .channels
                .get(&number)
                .filter(|(peer, expires)| *expires > now && state.permitted(peer.ip(), now))
                .map(|(peer, _)| *peer)
        };
        match peer {
            Some(peer) => self.to_peer(&allocation, payload, peer),
            None => self.meters.dropped.increment(1),
        }
    }

    /// Sends `payload` from `from`'s relayed address to `peer`, once the
    /// sender's checks passed: handed over in this process when `peer` is
    /// an allocation of this relay, else through the relayed socket.
    fn to_peer(&self, from: &Allocation, payload: &[u8], peer: SocketAddr) {
        let local = self.table().by_relay.get(&peer).cloned();
        let (left, delivered) = match local {
            // Dropped where the peer's socket would have dropped it.
            Some(to) => (true, self.deliver_from_peer(&to, from.relay_addr, payload)),
            None => {
                let sent = send_now(&from.relay, payload, peer);
                (sent, sent)
            }
        };
        if left {
            self.meters.to_peer.increment(1);
        }
        if !delivered {
            self.meters.dropped.increment(1);
        }
    }

    /// What `to`'s relayed socket does with a datagram from `peer` (another
    /// allocation of this relay), without the socket (see
    /// [`Allocation::frame_from_peer`]).
    fn deliver_from_peer(&self, to: &Allocation, peer: SocketAddr, payload: &[u8]) -> bool {
        FRAME.with_borrow_mut(|buffer| {
            buffer.clear();
            buffer.resize(4 + payload.len() + 3, 0);
            buffer[4..4 + payload.len()].copy_from_slice(payload);
            let Some(frame) = to.frame_from_peer(peer, buffer, payload.len()) else { return false };
            let sent = match &to.client {
                ClientSink::Udp(socket) => send_now(socket, &frame, to.tuple.client),
                ClientSink::Tcp(sender) => sender.try_send(frame.into_owned()).is_ok(),
            };
            if sent {
                self.meters.to_client.increment(1);
            }
            sent
        })
    }

    fn remove(&self, tuple: &FiveTuple) {
        let mut table = self.table();
        if table.remove(tuple).is_some() {
            self.meters.allocations.set(table.by_tuple.len() as f64);
        }
    }
}

/// The UDP listener: a socket per core on the same address
/// (`SO_REUSEPORT`), each read by a task of its own; the kernel gives each
/// client's datagrams to one of them (by the addresses' hash), so a
/// client's packets stay in order. Each has [`LISTENER_BUFFER_BYTES`] of
/// kernel buffers.
fn udp_listeners(local: SocketAddr) -> std::io::Result<Vec<UdpSocket>> {
    let cores = std::thread::available_parallelism().map_or(1, |cores| cores.get());
    (0..cores)
        .map(|_| {
            let socket = socket2::Socket::new(
                socket2::Domain::for_address(local),
                socket2::Type::DGRAM,
                Some(socket2::Protocol::UDP),
            )?;
            socket.set_reuse_port(true)?;
            if let Err(error) = socket
                .set_recv_buffer_size(LISTENER_BUFFER_BYTES)
                .and_then(|()| socket.set_send_buffer_size(LISTENER_BUFFER_BYTES))
            {
                tracing::warn!(%error, "cannot size the TURN listener's buffers");
            }
            socket.set_nonblocking(true)?;
            socket.bind(&local.into())?;
            UdpSocket::from_std(socket.into())
        })
        .collect()
}

thread_local! {
    /// The buffer [`Shared::deliver_from_peer`] frames into, reused.
    static FRAME: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Sends one datagram from a relayed socket without waiting: dropped only
/// when the kernel's send buffer is full. The system call is made directly
/// rather than through tokio's `try_send_to`, which answers `WouldBlock`
/// without trying until its reactor has seen the socket writable (a fresh
/// allocation's first packets, on a busy runtime).
fn send_now(socket: &UdpSocket, payload: &[u8], peer: SocketAddr) -> bool {
    socket2::SockRef::from(socket).send_to(payload, &peer.into()).is_ok()
}

fn allocated(allocation: &Allocation, tuple: FiveTuple, lifetime: Duration) -> Success {
    Success {
        attributes: vec![
            Box::new(RelayedAddress { ip: allocation.relay_addr.ip(), port: allocation.relay_addr.port() }),
            Box::new(Lifetime(Duration::from_secs(lifetime.as_secs()))),
            Box::new(XorMappedAddress { ip: tuple.client.ip(), port: tuple.client.port() }),
        ],
        key: Some(allocation.key),
    }
}

/// Every XOR-PEER-ADDRESS of a message (CreatePermission may carry several).
fn peer_addresses(message: &Message) -> Vec<SocketAddr> {
    let mut mask = [0u8; 16];
    mask[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    mask[4..].copy_from_slice(&message.transaction_id.0);
    message
        .attributes
        .0
        .iter()
        .filter(|attribute| attribute.typ == ATTR_XOR_PEER_ADDRESS)
        .filter_map(|attribute| {
            let v = &attribute.value;
            if v.len() < 4 {
                return None;
            }
            let port = u16::from_be_bytes([v[2], v[3]]) ^ (MAGIC_COOKIE >> 16) as u16;
            let ip = match (v[1], v.len()) {
                (0x01, 8) => {
                    let mut octets = [0u8; 4];
                    for (i, octet) in octets.iter_mut().enumerate() {
                        *octet = v[4 + i] ^ mask[i];
                    }
                    IpAddr::from(octets)
                }
                (0x02, 20) => {
                    let mut octets = [0u8; 16];
                    for (i, octet) in octets.iter_mut().enumerate() {
                        *octet = v[4 + i] ^ mask[i];
                    }
                    IpAddr::from(octets)
                }
                _ => return None,
            };
            Some(SocketAddr::new(ip, port))
        })
        .collect()
}

/// A ChannelData message's channel number (0x4000–0x7FFF; RFC 5766 §11.4).
fn channel_number(packet: &[u8]) -> Option<u16> {
    let number = u16::from_be_bytes([*packet.first()?, *packet.get(1)?]);
    (0x4000..=0x7FFF).contains(&number).then_some(number)
}

fn channel_payload(packet: &[u8]) -> Option<&[u8]> {
    let length = u16::from_be_bytes([*packet.get(2)?, *packet.get(3)?]) as usize;
    packet.get(4..4 + length)
}

async fn serve_udp(shared: Arc<Shared>, socket: Arc<UdpSocket>, shutdown: CancellationToken) {
    let sink = ClientSink::Udp(socket.clone());
    let mut buffer = vec![0u8; DATAGRAM_BYTES_MAX];
    loop {
        let received = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            received = socket.recv_from(&mut buffer) => received,
        };
        let (length, client) = match received {
            Ok(received) => received,
            Err(error) => {
                tracing::debug!(%error, "TURN UDP receive");
                continue;
            }
        };
        let packet = &buffer[..length];
        let tuple = FiveTuple { client, tcp: false };
        if let Some(number) = channel_number(packet) {
            shared.channel_data(tuple, number, packet);
        } else if is_stun_message(packet)
            && let Some(response) = shared.handle_stun(tuple, &sink, packet)
        {
            let _ = socket.send_to(&response, client).await;
        }
    }
}

async fn accept_tcp(shared: Arc<Shared>, listener: TcpListener, shutdown: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, client) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::debug!(%error, "TURN TCP accept");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // Bounded like allocations: each connection holds at most one.
        let Ok(permit) = shared.tcp_connections.clone().try_acquire_owned() else { continue };
        tokio::spawn({
            let (shared, shutdown) = (shared.clone(), shutdown.clone());
            async move {
                serve_tcp(&shared, stream, client, &shutdown).await;
                drop(permit);
            }
        });
    }
}

/// The length of the frame at the start of `buffer` on a TCP stream: a STUN
/// message, or ChannelData padded to four bytes (RFC 5766 §11.5). `Err` for
/// bytes that are neither.
fn tcp_frame_len(buffer: &[u8]) -> Option<Result<usize, ()>> {
    if buffer.len() < 4 {
        return None;
    }
    let length = u16::from_be_bytes([buffer[2], buffer[3]]) as usize;
    Some(match buffer[0] >> 6 {
        0 => Ok(20 + length),
        1 => Ok((4 + length + 3) & !3),
        _ => Err(()),
    })
}

async fn serve_tcp(shared: &Arc<Shared>, stream: TcpStream, client: SocketAddr, shutdown: &CancellationToken) {
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
    let (sender, mut outbox) = mpsc::channel::<Vec<u8>>(TCP_OUTBOUND_QUEUE_LEN_MAX);
    let write = tokio::spawn(async move {
        while let Some(frame) = outbox.recv().await {
            if writer.write_all(&frame).await.is_err() {
                break;
            }
        }
    });
    let tuple = FiveTuple { client, tcp: true };
    let sink = ClientSink::Tcp(sender.clone());
    let mut buffer: Vec<u8> = Vec::with_capacity(4_096);
    let mut chunk = vec![0u8; 16 * 1_024];
    // Silence is checked for an allocation only when it lasts, not per read.
    let idle = tokio::time::sleep(TCP_IDLE_WITHOUT_ALLOCATION);
    tokio::pin!(idle);
    loop {
        let read = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = &mut idle => {
                if shared.allocation(&tuple).is_none() {
                    break;
                }
                idle.as_mut().reset(tokio::time::Instant::now() + TCP_IDLE_WITHOUT_ALLOCATION);
                continue;
            }
            read = reader.read(&mut chunk) => read,
        };
        let Ok(read @ 1..) = read else { break };
        idle.as_mut().reset(tokio::time::Instant::now() + TCP_IDLE_WITHOUT_ALLOCATION);
        buffer.extend_from_slice(&chunk[..read]);
        let mut start = 0;
        let mut broken = false;
        while let Some(frame) = tcp_frame_len(&buffer[start..]) {
            let Ok(length) = frame else {
                broken = true;
                break;
            };
            if buffer.len() - start < length {
                break;
            }
            let packet = &buffer[start..start + length];
            if let Some(number) = channel_number(packet) {
                shared.channel_data(tuple, number, packet);
            } else if let Some(response) = shared.handle_stun(tuple, &sink, packet)
                && sender.send(response).await.is_err()
            {
                broken = true;
                break;
            }
            start += length;
        }
        buffer.drain(..start);
        if broken || buffer.len() > 2 * DATAGRAM_BYTES_MAX {
            break;
        }
    }
    // RFC 6062 §4: the allocation lives as long as its TCP connection.
    shared.remove(&tuple);
    drop(sink);
    drop(sender);
    let _ = write.await;
}

/// Reads the allocation's relayed socket and forwards what permitted peers
/// send: as ChannelData where a channel is bound, else as a Data indication.
async fn relay_to_client(shared: Arc<Shared>, allocation: Arc<Allocation>) {
    // Four bytes of headroom for the ChannelData header, three for TCP padding.
    let mut buffer = vec![0u8; 4 + DATAGRAM_BYTES_MAX + 3];
    let client = allocation.tuple.client;
    loop {
        let received = tokio::select! {
            biased;
            _ = allocation.closed.cancelled() => break,
            received = allocation.relay.recv_from(&mut buffer[4..4 + DATAGRAM_BYTES_MAX]) => received,
        };
        let Ok((length, peer)) = received else { continue };
        let Some(frame) = allocation.frame_from_peer(peer, &mut buffer, length) else {
            shared.meters.dropped.increment(1);
            continue;
        };
        let sent = send_to_client(&allocation.client, client, &frame).await;
        if sent {
            shared.meters.to_client.increment(1);
        } else {
            shared.meters.dropped.increment(1);
        }
    }
}

/// A Data indication carrying what `peer` sent (no channel is bound to it).
fn data_indication(peer: SocketAddr, payload: &[u8]) -> Option<Vec<u8>> {
    let mut indication = Message::new();
    indication
        .build(&[
            Box::new(MessageType::new(METHOD_DATA, CLASS_INDICATION)),
            Box::new(TransactionId::new()),
            Box::new(rtc_turn::proto::peeraddr::PeerAddress { ip: peer.ip(), port: peer.port() }),
            Box::new(Data(payload.to_vec())),
        ])
        .ok()?;
    Some(indication.raw)
}

async fn send_to_client(sink: &ClientSink, client: SocketAddr, frame: &[u8]) -> bool {
    match sink {
        ClientSink::Udp(socket) => socket.send_to(frame, client).await.is_ok(),
        ClientSink::Tcp(sender) => sender.try_send(frame.to_vec()).is_ok(),
    }
}

/// Ends allocations whose lifetime ran out and forgets expired permissions
/// and channels.
async fn sweep(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(SWEEP_EVERY);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        let now = Instant::now();
        let mut table = shared.table();
        let expired: Vec<FiveTuple> = table
            .by_tuple
            .iter()
            .filter_map(|(tuple, allocation)| {
                let mut state = allocation.state();
                state.prune(now);
                (state.expires <= now).then_some(*tuple)
            })
            .collect();
        for tuple in &expired {
            if let Some(allocation) = table.remove(tuple) {
                tracing::debug!(relay = %allocation.relay_addr, "TURN allocation expired");
            }
        }
        shared.meters.allocations.set(table.by_tuple.len() as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_frames_are_stun_or_padded_channel_data() {
        assert_eq!(tcp_frame_len(&[0x00, 0x01, 0x00]), None);
        assert_eq!(tcp_frame_len(&[0x00, 0x01, 0x00, 0x08]), Some(Ok(28)));
        assert_eq!(tcp_frame_len(&[0x40, 0x00, 0x00, 0x05]), Some(Ok(12)));
        assert_eq!(tcp_frame_len(&[0x40, 0x00, 0x00, 0x08]), Some(Ok(12)));
        assert_eq!(tcp_frame_len(&[0x80, 0x00, 0x00, 0x08]), Some(Err(())));
    }

    #[test]
    fn channel_numbers_are_in_their_range() {
        assert_eq!(channel_number(&[0x40, 0x00]), Some(0x4000));
        assert_eq!(channel_number(&[0x7f, 0xff]), Some(0x7fff));
        assert_eq!(channel_number(&[0x00, 0x01]), None);
        assert_eq!(channel_number(&[0x80, 0x00]), None);
        assert_eq!(channel_payload(&[0x40, 0x00, 0x00, 0x02, 7, 8, 0, 0]), Some(&[7u8, 8][..]));
        assert_eq!(channel_payload(&[0x40, 0x00, 0x00, 0x09, 7, 8]), None);
    }

    #[test]
    fn xor_peer_addresses_decode_every_one() {
        let mut message = Message::new();
        message
            .build(&[
                Box::new(MessageType::new(METHOD_CREATE_PERMISSION, CLASS_REQUEST)),
                Box::new(TransactionId::new()),
                Box::new(rtc_turn::proto::peeraddr::PeerAddress { ip: "127.0.0.1".parse().unwrap(), port: 5000 }),
                Box::new(rtc_turn::proto::peeraddr::PeerAddress { ip: "::ffff:10.0.0.1".parse().unwrap(), port: 6 }),
            ])
            .unwrap();
        let mut decoded = Message::new();
        decoded.unmarshal_binary(&message.raw).unwrap();
        assert_eq!(
            peer_addresses(&decoded),
            vec!["127.0.0.1:5000".parse().unwrap(), "[::ffff:10.0.0.1]:6".parse().unwrap()]
        );
    }
}

/// Fuzz target of the relay's parsers (`courier_common::fuzz`): every
/// datagram and TCP frame a client can send, arbitrary bytes and STUN
/// messages of every method and class with arbitrary attributes, signed with
/// valid long-term credentials or not, handled as the listeners handle them.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;
    use rtc_stun::attributes::RawAttribute;

    use super::*;
    use crate::credentials::password;

    const SECRET: &str = "a-test-secret-of-32-characters-or-more";
    const METHODS: [Method; 7] = [
        METHOD_BINDING,
        METHOD_ALLOCATE,
        METHOD_REFRESH,
        METHOD_SEND,
        METHOD_CREATE_PERMISSION,
        METHOD_CHANNEL_BIND,
        METHOD_CONNECT,
    ];
    const CLASSES: [MessageClass; 4] = [CLASS_REQUEST, CLASS_INDICATION, CLASS_SUCCESS_RESPONSE, CLASS_ERROR_RESPONSE];
    const ATTRIBUTES: [AttrType; 12] = [
        ATTR_USERNAME,
        ATTR_REALM,
        ATTR_NONCE,
        ATTR_XOR_PEER_ADDRESS,
        ATTR_LIFETIME,
        ATTR_REQUESTED_TRANSPORT,
        ATTR_CHANNEL_NUMBER,
        ATTR_EVEN_PORT,
        ATTR_DATA,
        ATTR_DONT_FRAGMENT,
        ATTR_RESERVATION_TOKEN,
        AttrType(0x8055),
    ];

    /// One relay for every case, on loopback, with its runtime.
    fn relay() -> &'static (tokio::runtime::Runtime, TurnServer) {
        static RELAY: std::sync::OnceLock<(tokio::runtime::Runtime, TurnServer)> = std::sync::OnceLock::new();
        RELAY.get_or_init(|| {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
            let secrets = TurnSecrets::new(vec![SECRET.into()]).unwrap();
            let mut config = TurnConfig::new("127.0.0.1:0".parse().unwrap(), secrets);
            config.allow_peers = crate::filter::listen_scope(config.listen.ip());
            config.allocations_max = 64;
            let server = runtime.block_on(TurnServer::bind(config)).unwrap();
            (runtime, server)
        })
    }

    /// A STUN message: any method and class, attributes of the kinds the
    /// relay reads with any value, and, when `signed`, valid credentials.
    fn message() -> impl Strategy<Value = (Method, MessageClass, Vec<(AttrType, Vec<u8>)>, bool)> {
        (
            prop::sample::select(METHODS.to_vec()),
            prop::sample::select(CLASSES.to_vec()),
            prop::collection::vec(
                (
                    prop::sample::select(ATTRIBUTES.to_vec()),
                    prop_oneof![
                        prop::collection::vec(any::<u8>(), 0..24),
                        // Well-formed XOR addresses and 32-bit values, of loopback and elsewhere.
                        (
                            prop_oneof![Just(1u8), Just(2u8), any::<u8>()],
                            any::<u16>(),
                            prop::collection::vec(any::<u8>(), 4..=4)
                        )
                            .prop_map(|(family, port, ip)| [
                                vec![0, family],
                                port.to_be_bytes().to_vec(),
                                ip
                            ]
                            .concat()),
                        any::<u32>().prop_map(|value| value.to_be_bytes().to_vec()),
                    ],
                ),
                0..6,
            ),
            any::<bool>(),
        )
    }

    fn encode(
        shared: &Shared,
        tuple: FiveTuple,
        (method, class, attributes, signed): (Method, MessageClass, Vec<(AttrType, Vec<u8>)>, bool),
    ) -> Option<Vec<u8>> {
        let mut setters: Vec<Box<dyn Setter>> =
            vec![Box::new(MessageType::new(method, class)), Box::new(TransactionId::new())];
        for (typ, value) in attributes {
            setters.push(Box::new(RawAttribute { typ, length: value.len() as u16, value }));
        }
        if signed {
            let username = format!("{}:fuzzer", now_s() + 600);
            let key = long_term_key(&username, &shared.config.realm, &password(SECRET, &username));
            setters.push(Box::new(TextAttribute::new(ATTR_USERNAME, username)));
            setters.push(Box::new(TextAttribute::new(ATTR_REALM, shared.config.realm.clone())));
            setters.push(Box::new(TextAttribute::new(ATTR_NONCE, shared.nonce(tuple))));
            setters.push(Box::new(MessageIntegrity::new_raw_integrity_with_provider(
                key.to_vec(),
                shared.crypto.crypto(),
            )));
        }
        let mut message = Message::new();
        message.build(&setters).ok()?;
        Some(message.raw)
    }

    /// What a listener does with one datagram or frame.
    fn handle(shared: &Arc<Shared>, tuple: FiveTuple, sink: &ClientSink, packet: &[u8]) {
        let _ = tcp_frame_len(packet);
        if let Some(number) = channel_number(packet) {
            shared.channel_data(tuple, number, packet);
        } else if is_stun_message(packet)
            && let Some(response) = shared.handle_stun(tuple, sink, packet)
        {
            let mut answer = Message::new();
            assert!(answer.unmarshal_binary(&response).is_ok(), "the relay answers with a valid STUN message");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: courier_common::fuzz::cases(), ..ProptestConfig::default() })]

        #[test]
        fn any_datagram_or_frame_is_handled_or_dropped_never_a_panic(
            bytes in prop::collection::vec(any::<u8>(), 0..600),
            stun in message(),
            port in 1_024u16..,
            tcp in any::<bool>(),
        ) {
            let (runtime, server) = relay();
            let _entered = runtime.enter();
            let shared = &server.shared;
            let (sender, _frames) = mpsc::channel(1_024);
            let sink = if tcp { ClientSink::Tcp(sender) } else { ClientSink::Udp(server.udp[0].clone()) };
            let tuple = FiveTuple { client: SocketAddr::new("127.0.0.1".parse().unwrap(), port), tcp };
            handle(shared, tuple, &sink, &bytes);
            if let Some(packet) = encode(shared, tuple, stun) {
                handle(shared, tuple, &sink, &packet);
                // The same message cut short, and with a byte changed.
                handle(shared, tuple, &sink, &packet[..packet.len() / 2]);
                let mut changed = packet.clone();
                if let Some(byte) = changed.get_mut(bytes.first().copied().unwrap_or(0) as usize % packet.len()) {
                    *byte ^= 0x5a;
                }
                handle(shared, tuple, &sink, &changed);
            }
        }
    }
}
