//! A proxy in front of the server that sees what the signaling server sees:
//! HTTP is forwarded as it is; on `/v1/calls/ws` every client frame is
//! recorded and may be rewritten (a compromised server), and the test can
//! cut every open socket at once (a network change).

use std::sync::{Arc, Mutex};

use axum::extract::ws::{Message as AxumMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

/// Rewrites a client → server message (parsed JSON) before it goes on.
pub type Rewrite = Arc<dyn Fn(Value) -> Value + Send + Sync>;

/// Holds the server's answer (`ack` or `error`) to a client message of type
/// `answer_to` until the server's next event of type `until` has gone to
/// the client: a server that was slow to answer while the call went on.
#[derive(Clone, Copy)]
pub struct Reorder {
    pub answer_to: &'static str,
    pub until: &'static str,
}

#[derive(Clone)]
struct Shared {
    upstream: String,
    http: reqwest::Client,
    sent: Arc<Mutex<Vec<Value>>>,
    rewrite: Option<Rewrite>,
    reorder: Option<Reorder>,
    /// Answers delivered after the event they were held for.
    reordered: Arc<std::sync::atomic::AtomicUsize>,
    cut: watch::Sender<u64>,
}

pub struct Proxy {
    pub url: String,
    shared: Shared,
}

impl Proxy {
    pub async fn start(upstream: &str, rewrite: Option<Rewrite>) -> Proxy {
        Proxy::start_with(upstream, rewrite, None).await
    }

    /// The same, delivering some of the server's frames out of their order.
    pub async fn start_with(upstream: &str, rewrite: Option<Rewrite>, reorder: Option<Reorder>) -> Proxy {
        let (cut, _) = watch::channel(0);
        let shared = Shared {
            upstream: upstream.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
            sent: Arc::default(),
            rewrite,
            reorder,
            reordered: Arc::default(),
            cut,
        };
        let app = axum::Router::new()
            .route("/v1/calls/ws", axum::routing::get(upgrade))
            .fallback(forward)
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Proxy { url, shared }
    }

    /// Every message clients sent on the signaling socket, as it reached the server.
    pub fn sent(&self) -> Vec<Value> {
        self.shared.sent.lock().unwrap().clone()
    }

    /// How many answers went to the client after the event they were held for.
    pub fn reordered(&self) -> usize {
        self.shared.reordered.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Drops every open signaling socket, both ways, without a close frame.
    pub fn cut(&self) {
        self.shared.cut.send_modify(|count| *count += 1);
    }
}

async fn forward(State(shared): State<Shared>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let body = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
    let mut upstream = shared.http.request(parts.method.clone(), format!("{}{path}", shared.upstream)).body(body);
    for name in ["authorization", "content-type", "idempotency-key"] {
        if let Some(value) = parts.headers.get(name) {
            upstream = upstream.header(name, value.as_bytes());
        }
    }
    match upstream.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let content_type = response.headers().get("content-type").map(|value| value.as_bytes().to_vec());
            let bytes = response.bytes().await.unwrap_or_default();
            let mut reply = Response::builder().status(status);
            if let Some(content_type) = content_type {
                reply = reply.header("content-type", content_type);
            }
            reply.body(axum::body::Body::from(bytes)).unwrap()
        }
        Err(_) => axum::http::StatusCode::BAD_GATEWAY.into_response(),
    }
}

async fn upgrade(State(shared): State<Shared>, upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(move |socket| relay(shared, socket))
}

async fn relay(shared: Shared, client: WebSocket) {
    let url = format!("{}/v1/calls/ws", shared.upstream.replacen("http://", "ws://", 1));
    let Ok((server, _)) = tokio_tungstenite::connect_async(url).await else { return };
    let (mut to_server, mut from_server) = server.split();
    let (mut to_client, mut from_client) = client.split();
    let mut cut = shared.cut.subscribe();
    // With a reorder: the ids of client messages whose answer is to be held
    // (the event not yet gone to the client), the answers held, and the ids
    // whose answer will come after the event anyway (it went first).
    let mut holding: Vec<String> = Vec::new();
    let mut held: Vec<String> = Vec::new();
    let mut late: Vec<String> = Vec::new();
    loop {
        tokio::select! {
            _ = cut.changed() => return,
            frame = from_client.next() => {
                let Some(Ok(frame)) = frame else { return };
                let text = match frame {
                    AxumMessage::Text(text) => text.to_string(),
                    AxumMessage::Close(_) => { let _ = to_server.close().await; return }
                    _ => continue,
                };
                let text = match serde_json::from_str::<Value>(&text) {
                    Ok(value) => {
                        let value = match &shared.rewrite { Some(rewrite) => rewrite(value), None => value };
                        if let (Some(reorder), Some(id)) = (shared.reorder, value["id"].as_str())
                            && value["type"] == reorder.answer_to
                        {
                            holding.push(id.to_owned());
                        }
                        shared.sent.lock().unwrap().push(value.clone());
                        value.to_string()
                    }
                    Err(_) => text,
                };
                if to_server.send(Message::text(text)).await.is_err() { return }
            }
            frame = from_server.next() => {
                let Some(Ok(frame)) = frame else { return };
                let text = match frame {
                    Message::Text(text) => text.as_str().to_owned(),
                    Message::Close(_) => { let _ = to_client.close().await; return }
                    _ => continue,
                };
                let mut release = false;
                if let Some(reorder) = shared.reorder {
                    let event: Value = serde_json::from_str(&text).unwrap_or_default();
                    let id = event["id"].as_str().unwrap_or_default();
                    if let Some(at) = holding.iter().position(|held| held == id) {
                        holding.remove(at);
                        held.push(text);
                        continue;
                    }
                    if let Some(at) = late.iter().position(|late| late == id) {
                        late.remove(at);
                        shared.reordered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    release = event["type"] == reorder.until;
                    if release {
                        late.append(&mut holding);
                    }
                }
                if to_client.send(AxumMessage::Text(text.into())).await.is_err() {
                    return;
                }
                if release {
                    for text in held.drain(..) {
                        if to_client.send(AxumMessage::Text(text.into())).await.is_err() {
                            return;
                        }
                        shared.reordered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
        }
    }
}
