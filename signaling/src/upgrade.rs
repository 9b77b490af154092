//! The WebSocket upgrade (RFC 6455 section 4.2), done here rather than by
//! axum's extractor so that each connection reads its socket through a
//! [`ReadAhead`]: the WebSocket codec keeps a small buffer for every
//! connection, idle ones included, while a busy connection still takes what
//! the kernel holds in one read.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, StatusCode, Version, header};
use axum::response::Response;
use bytes::{Buf, BytesMut};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_util::io::poll_read_buf;

/// An upgraded connection.
pub type Socket = WebSocketStream<ReadAhead<TokioIo<Upgraded>>>;

/// Bytes taken from the socket in one read when the codec asks for fewer.
const READ_AHEAD_BYTES: usize = 16 * 1024;

/// A request's valid WebSocket upgrade.
pub struct Upgrade {
    accept: String,
    on_upgrade: OnUpgrade,
}

impl Upgrade {
    /// The upgrade `request` asks for, or why it is not a valid one.
    pub fn from_request(request: &mut Request) -> Result<Upgrade, &'static str> {
        if request.version() != Version::HTTP_11 {
            return Err("a WebSocket upgrade needs HTTP/1.1");
        }
        let headers = request.headers();
        if !has_token(headers, header::CONNECTION, "upgrade") {
            return Err("the Connection header must include `upgrade`");
        }
        if !has_token(headers, header::UPGRADE, "websocket") {
            return Err("the Upgrade header must be `websocket`");
        }
        if headers.get(header::SEC_WEBSOCKET_VERSION).is_none_or(|version| version.as_bytes() != b"13") {
            return Err("the Sec-WebSocket-Version header must be 13");
        }
        let key = headers.get(header::SEC_WEBSOCKET_KEY).ok_or("the Sec-WebSocket-Key header is missing")?;
        let accept = derive_accept_key(key.as_bytes());
        let on_upgrade = request.extensions_mut().remove::<OnUpgrade>().ok_or("this connection cannot be upgraded")?;
        Ok(Upgrade { accept, on_upgrade })
    }

    /// Answers 101 and runs `serve` on the connection once it is switched.
    pub fn respond<F, Fut>(self, config: WebSocketConfig, serve: F) -> Response
    where
        F: FnOnce(Socket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let Upgrade { accept, on_upgrade } = self;
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else { return };
            let io = ReadAhead::new(TokioIo::new(upgraded));
            serve(WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await).await;
        });
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, header::HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, header::HeaderValue::from_static("websocket"));
        if let Ok(accept) = header::HeaderValue::from_str(&accept) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        response
    }
}

/// Whether any of the `name` headers lists `token` (case-insensitive).
fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .as_bytes()
            .split(|&byte| byte == b',')
            .any(|item| item.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// Reads ahead of a reader that asks for little at a time: a short read
/// takes up to [`READ_AHEAD_BYTES`] from the socket into a buffer that
/// serves the next reads. The buffer is freed as soon as the socket has
/// nothing more, so a quiet connection holds none.
pub struct ReadAhead<T> {
    inner: T,
    ahead: BytesMut,
}

impl<T> ReadAhead<T> {
    pub fn new(inner: T) -> Self {
        ReadAhead { inner, ahead: BytesMut::new() }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ReadAhead<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.ahead.is_empty() {
            if buf.remaining() >= READ_AHEAD_BYTES {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            this.ahead.reserve(READ_AHEAD_BYTES);
            let read = poll_read_buf(Pin::new(&mut this.inner), cx, &mut this.ahead);
            if read.is_pending() {
                this.ahead = BytesMut::new();
            }
            ready!(read)?;
        }
        let take = this.ahead.len().min(buf.remaining());
        buf.put_slice(&this.ahead[..take]);
        this.ahead.advance(take);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ReadAhead<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, data)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn small_reads_are_served_ahead_and_a_quiet_socket_holds_no_buffer() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let mut reader = ReadAhead::new(server);
        let sent: Vec<u8> = (0..5_000u32).map(|i| (i % 251) as u8).collect();
        client.write_all(&sent).await.unwrap();
        let mut got = Vec::new();
        let mut small = [0u8; 100];
        while got.len() < sent.len() {
            let n = reader.read(&mut small).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&small[..n]);
        }
        assert_eq!(got, sent);
        assert!(reader.read(&mut small).now_or_never().is_none(), "nothing more to read");
        assert_eq!(reader.ahead.capacity(), 0, "the read-ahead buffer is freed while the socket is quiet");

        client.write_all(b"hello").await.unwrap();
        drop(client);
        let mut large = vec![0u8; READ_AHEAD_BYTES];
        let n = reader.read(&mut large).await.unwrap();
        assert_eq!(&large[..n], b"hello");
        assert_eq!(reader.ahead.capacity(), 0, "a large read goes straight to the socket");
        assert_eq!(reader.read(&mut small).await.unwrap(), 0, "the end of the stream");
    }

    #[test]
    fn header_tokens_are_found_in_lists_and_any_case() {
        let mut headers = HeaderMap::new();
        headers.append(header::CONNECTION, "keep-alive, Upgrade".parse().unwrap());
        assert!(has_token(&headers, header::CONNECTION, "upgrade"));
        assert!(!has_token(&headers, header::CONNECTION, "close"));
        headers.insert(header::UPGRADE, "h2c".parse().unwrap());
        headers.append(header::UPGRADE, "WebSocket".parse().unwrap());
        assert!(has_token(&headers, header::UPGRADE, "websocket"));
        assert!(!has_token(&headers, header::SEC_WEBSOCKET_KEY, "websocket"));
    }
}
