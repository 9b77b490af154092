//! The benchmarks' HTTP load generator: one keep-alive HTTP/1.1 connection
//! per simulated client, through hyper's connection-level client. The load
//! generator shares the machine's cores with the server it measures, so it
//! does no more per request than HTTP needs: no connection pool to check a
//! connection out of, no URL to parse, no client-wide locks. Each client's
//! connection is its own; one that fails is opened again on the next request.

use std::net::SocketAddr;
use std::sync::Mutex;

use courier_common::sync::lock;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST, HeaderName, HeaderValue};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;

type Sender = SendRequest<Full<Bytes>>;

/// The connections of `clients` simulated clients to one server.
pub struct Clients {
    addr: SocketAddr,
    host: HeaderValue,
    connections: Vec<Mutex<Option<Sender>>>,
}

/// A response: its status and its whole body.
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
}

impl Answer {
    /// Ok for a 201; otherwise the status and body, as the error of `what`.
    pub fn created(&self, what: &str) -> Result<(), String> {
        match self.status {
            201 => Ok(()),
            status => Err(format!("{what}: {status} {}", String::from_utf8_lossy(&self.body))),
        }
    }
}

impl Clients {
    pub fn new(addr: SocketAddr, clients: usize) -> Result<Self, String> {
        let host = HeaderValue::from_str(&addr.to_string()).map_err(|e| e.to_string())?;
        Ok(Clients { addr, host, connections: (0..clients.max(1)).map(|_| Mutex::new(None)).collect() })
    }

    /// POSTs the JSON `body` to `path` with `headers` on the connection of
    /// `client` (a number below the `clients` this was made for).
    pub async fn post_json(
        &self,
        client: usize,
        path: &str,
        headers: &[(HeaderName, HeaderValue)],
        body: String,
    ) -> Result<Answer, String> {
        let slot = self.connections.get(client).ok_or("no such client")?;
        let held = lock(slot).take();
        let mut sender = match held {
            Some(sender) => sender,
            None => self.connect().await?,
        };
        let mut request = Request::builder().method(Method::POST).uri(path);
        if let Some(request_headers) = request.headers_mut() {
            request_headers.insert(HOST, self.host.clone());
            request_headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            for (name, value) in headers {
                request_headers.insert(name, value.clone());
            }
        }
        let request = request.body(Full::new(Bytes::from(body))).map_err(|e| e.to_string())?;
        sender.ready().await.map_err(|e| format!("connection: {e}"))?;
        let response = sender.send_request(request).await.map_err(|e| format!("request: {e}"))?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.map_err(|e| format!("response body: {e}"))?.to_bytes();
        // Put back only a connection that answered whole: a failed one is
        // dropped with its error, and the next request opens another.
        *lock(slot) = Some(sender);
        Ok(Answer { status, body })
    }

    async fn connect(&self) -> Result<Sender, String> {
        let stream = tokio::net::TcpStream::connect(self.addr).await.map_err(|e| format!("connect: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "load generator connection closed");
            }
        });
        Ok(sender)
    }
}
