//! What the connection loop admits, and the answers it gives clients that
//! never reach a route: a connection over the caps, and a request hyper could
//! not parse.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use courier_common::error::{ErrorBody, ErrorDetail};
use courier_common::sync::lock;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How many connections the server holds open, and how long a client has to
/// send a request's headers.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub header_read_timeout: Duration,
    /// Open connections in all; past it new ones are answered 503 and closed.
    pub total_max: usize,
    /// Open connections from one client address (an IPv6 client's /64);
    /// 0 for none (behind a proxy every connection comes from its address).
    pub per_address_max: usize,
}

impl ConnectionLimits {
    /// No caps beyond the file limit: benchmarks, whose clients share one address.
    pub fn unlimited(header_read_timeout: Duration) -> Self {
        Self { header_read_timeout, total_max: usize::MAX, per_address_max: 0 }
    }
}

/// The share of the open-file limit connections may take when no cap is
/// given; the rest is for database connections, relay sockets and files.
pub fn total_max_for_file_limit(file_limit: u64) -> usize {
    usize::try_from(file_limit / 4 * 3).unwrap_or(usize::MAX).max(1)
}

/// Raises the process's soft open-file limit to its hard limit (as far as
/// the system allows) and returns the limit now in force.
pub fn raise_file_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(error) => {
            tracing::warn!(%error, "cannot raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map(|(soft, _)| soft).unwrap_or(1_024)
        }
    }
}

/// Counts open connections, in all and per client address.
#[derive(Clone)]
pub struct Admission {
    inner: Arc<Counts>,
}

struct Counts {
    limits: ConnectionLimits,
    open: AtomicUsize,
    per_address: std::sync::Mutex<HashMap<IpAddr, usize>>,
    open_gauge: metrics::Gauge,
    /// Refusals, by cap: [total, per address].
    refused: [metrics::Counter; 2],
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Total,
    PerAddress,
}

impl Refused {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Total => "total",
            Self::PerAddress => "per_address",
        }
    }

    /// The whole HTTP/1.1 answer written to a refused connection before it
    /// is closed (made once: refusals come in floods).
    pub fn response(self) -> &'static [u8] {
        static TOTAL: LazyLock<Vec<u8>> = LazyLock::new(|| {
            let message = "the server holds as many connections as it can; try again shortly";
            json_response("503 Service Unavailable", "too_many_connections", message, Some(1))
        });
        static PER_ADDRESS: LazyLock<Vec<u8>> = LazyLock::new(|| {
            let message = "too many connections from your address; close some and try again";
            json_response("503 Service Unavailable", "too_many_connections", message, Some(1))
        });
        match self {
            Self::Total => &TOTAL,
            Self::PerAddress => &PER_ADDRESS,
        }
    }
}

/// One admitted connection; dropping it frees its place.
pub struct Admitted {
    counts: Arc<Counts>,
    address: Option<IpAddr>,
}

impl Admission {
    pub fn new(limits: ConnectionLimits) -> Self {
        let refused = [Refused::Total, Refused::PerAddress]
            .map(|cap| metrics::counter!("courier_connections_refused_total", "cap" => cap.as_str()));
        Self {
            inner: Arc::new(Counts {
                limits,
                open: AtomicUsize::new(0),
                per_address: Default::default(),
                open_gauge: metrics::gauge!("courier_connections_open"),
                refused,
            }),
        }
    }

    pub fn open(&self) -> usize {
        self.inner.open.load(Ordering::Relaxed)
    }

    /// Admits a connection from `peer` unless a cap is reached.
    pub fn admit(&self, peer: IpAddr) -> Result<Admitted, Refused> {
        let counts = &self.inner;
        let refuse = |cap: Refused| {
            counts.open.fetch_sub(1, Ordering::AcqRel);
            counts.refused[cap as usize].increment(1);
            Err(cap)
        };
        if counts.open.fetch_add(1, Ordering::AcqRel) >= counts.limits.total_max {
            return refuse(Refused::Total);
        }
        let mut address = None;
        if counts.limits.per_address_max > 0 {
            let key = client_key(peer);
            let mut per_address = lock(&counts.per_address);
            let count = per_address.entry(key).or_insert(0);
            if *count >= counts.limits.per_address_max {
                drop(per_address);
                return refuse(Refused::PerAddress);
            }
            *count += 1;
            address = Some(key);
        }
        counts.open_gauge.increment(1);
        Ok(Admitted { counts: counts.clone(), address })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.counts.open.fetch_sub(1, Ordering::AcqRel);
        self.counts.open_gauge.decrement(1);
        if let Some(address) = self.address {
            let mut counts = lock(&self.counts.per_address);
            if let Some(count) = counts.get_mut(&address) {
                *count -= 1;
                if *count == 0 {
                    counts.remove(&address);
                }
            }
        }
    }
}

/// The address a client is counted under: an IPv4 address (also when mapped
/// into IPv6), or an IPv6 client's /64, the block one subscriber gets.
fn client_key(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V4(_) => peer,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let [a, b, c, d, ..] = v6.segments();
                IpAddr::V6(Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0))
            }
        },
    }
}

/// An HTTP/1.1 response with the JSON error body, closing the connection.
fn json_response(status: &str, code: &str, message: &str, retry_after_s: Option<u64>) -> Vec<u8> {
    let body = ErrorBody { error: ErrorDetail { code: code.to_owned(), message: message.to_owned() } };
    let body = serde_json::to_vec(&body).unwrap_or_default();
    let retry_after = retry_after_s.map(|seconds| format!("retry-after: {seconds}\r\n")).unwrap_or_default();
    let mut response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{retry_after}connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    response.extend_from_slice(&body);
    response
}

/// The JSON answer for one of hyper's own bare error responses (the head
/// it writes, with no body, when it cannot parse a request), if `head` is one.
fn json_for_bare_error(head: &[u8]) -> Option<Vec<u8>> {
    let (status, code, message) = if head.starts_with(b"HTTP/1.1 431 ") {
        (
            "431 Request Header Fields Too Large",
            "headers_too_large",
            "the request's headers are too large or too many (at most 100 headers and about 400 KB)",
        )
    } else if head.starts_with(b"HTTP/1.1 414 ") {
        ("414 URI Too Long", "uri_too_long", "the request's URI is too long")
    } else if head.starts_with(b"HTTP/1.1 400 ") {
        ("400 Bad Request", "invalid_request", "the request is not valid HTTP/1.1")
    } else {
        return None;
    };
    let end = head.windows(4).position(|window| window == b"\r\n\r\n")?;
    // Every answer of Courier's own carries a JSON body; hyper's have none.
    let bare = head[..end].split(|&byte| byte == b'\n').any(|line| line.eq_ignore_ascii_case(b"content-length: 0\r"));
    bare.then(|| json_response(status, code, message, None))
}

/// A connection's stream, with hyper's bare answers to requests it could
/// not parse (400, 414, 431 without a body) rewritten into Courier's JSON
/// error shape. Writes are not vectored, so that a response's head starts a write.
pub struct JsonParseErrors<S> {
    inner: S,
    /// A rewritten answer and how much of it is written.
    pending: Vec<u8>,
    written: usize,
}

impl<S> JsonParseErrors<S> {
    pub fn new(inner: S) -> Self {
        Self { inner, pending: Vec::new(), written: 0 }
    }
}

impl<S: AsyncWrite + Unpin> JsonParseErrors<S> {
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.pending.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for JsonParseErrors<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for JsonParseErrors<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        match json_for_bare_error(buf) {
            Some(answer) => {
                this.pending = answer;
                // Hyper's bytes are taken whole; the answer goes out now or on flush.
                if let Poll::Ready(Err(error)) = this.poll_pending(cx) {
                    return Poll::Ready(Err(error));
                }
                Poll::Ready(Ok(buf.len()))
            }
            None => Pin::new(&mut this.inner).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total_max: usize, per_address_max: usize) -> ConnectionLimits {
        ConnectionLimits { header_read_timeout: Duration::from_secs(1), total_max, per_address_max }
    }

    #[test]
    fn connections_are_capped_in_all_and_per_address_and_places_come_back() {
        let admission = Admission::new(limits(3, 2));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = admission.admit(a).unwrap();
        let _second = admission.admit(a).unwrap();
        assert_eq!(admission.admit(a).err(), Some(Refused::PerAddress));
        let _third = admission.admit(b).unwrap();
        assert_eq!(admission.admit(b).err(), Some(Refused::Total));
        assert_eq!(admission.open(), 3, "refusals do not hold places");
        drop(first);
        assert!(admission.admit(a).is_ok());
    }

    #[test]
    fn an_ipv6_client_is_counted_by_its_64_and_a_mapped_ipv4_as_itself() {
        let admission = Admission::new(limits(100, 1));
        let _one = admission.admit("2001:db8:1:2::1".parse().unwrap()).unwrap();
        assert_eq!(admission.admit("2001:db8:1:2::ffff".parse().unwrap()).err(), Some(Refused::PerAddress));
        assert!(admission.admit("2001:db8:1:3::1".parse().unwrap()).is_ok());
        let _v4 = admission.admit("192.0.2.7".parse().unwrap()).unwrap();
        assert_eq!(admission.admit("::ffff:192.0.2.7".parse().unwrap()).err(), Some(Refused::PerAddress));
    }

    #[test]
    fn only_hypers_bare_error_heads_are_rewritten() {
        let bare = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let answer = String::from_utf8(json_for_bare_error(bare).unwrap()).unwrap();
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
        assert!(answer.ends_with(r#"{"error":{"code":"headers_too_large","message":"the request's headers are too large or too many (at most 100 headers and about 400 KB)"}}"#), "{answer}");
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 52\r\n\r\n{}";
        assert!(json_for_bare_error(ours).is_none());
        assert!(json_for_bare_error(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(json_for_bare_error(b"\x81\x05hello").is_none(), "WebSocket frames pass");
    }
}
