//! The floor `courier bench signaling` measures the server against: the
//! cheapest relay the same stack allows. The same upgrade, WebSocket
//! settings and HTTP stack as `/v1/calls/ws`; a connection authenticates
//! once (`auth` with an access token, answered `ack`); after that every text
//! frame goes to its peer as it came, unparsed, with no call, no state
//! machine, no acknowledgement and no rate limit, and the frames waiting for
//! a connection are written a batch per flush, as the server writes them.
//! `courier serve` never mounts it.
//!
//! A connection's peer is fixed by its account id: the benchmark's pairs are
//! `0000000a-…-N` and `0000000b-…-N`, each the other's peer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use courier_accounts::tokens::TokenVerifier;
use courier_common::HttpError;
use courier_common::sync::lock;
use courier_protocol::{self as protocol, ClientBody, Reply};
use futures::{FutureExt, SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::outbox::Outbox;
use crate::upgrade::{Socket, Upgrade};
use crate::ws::BATCH_FRAMES_MAX;

/// Frames a connection may have waiting before it counts as a slow reader.
const QUEUE_LEN_MAX: usize = 1_024;

#[derive(Clone)]
struct Floor {
    verifier: Arc<TokenVerifier>,
    /// Each authenticated connection's outbound queue, by account.
    connected: Arc<Mutex<HashMap<String, Arc<Outbox>>>>,
    ws_message_bytes_max: usize,
}

/// The floor's one route, `GET /v1/calls/ws`.
pub fn app(verifier: Arc<TokenVerifier>, ws_message_bytes_max: usize) -> Router {
    let floor = Floor { verifier, connected: Arc::default(), ws_message_bytes_max };
    Router::new().route("/v1/calls/ws", axum::routing::get(websocket)).with_state(floor)
}

async fn websocket(State(floor): State<Floor>, mut request: Request) -> Response {
    let upgrade = match Upgrade::from_request(&mut request) {
        Ok(upgrade) => upgrade,
        Err(why) => return HttpError::new(StatusCode::BAD_REQUEST, "invalid_request", why).into_response(),
    };
    let config = crate::api::socket_config(floor.ws_message_bytes_max);
    upgrade.respond(config, move |mut socket| async move { serve(&mut socket, &floor).await })
}

/// The peer of a benchmark account: `0000000a-…` ↔ `0000000b-…`.
fn peer_of(account: &str) -> Option<String> {
    let (group, rest) = account.split_at_checked(8)?;
    let peer = match group {
        "0000000a" => "0000000b",
        "0000000b" => "0000000a",
        _ => return None,
    };
    Some(format!("{peer}{rest}"))
}

async fn serve(socket: &mut Socket, floor: &Floor) {
    let Some(account) = authenticate(socket, floor).await else { return };
    let outbox = Outbox::new(QUEUE_LEN_MAX);
    lock(&floor.connected).insert(account.clone(), outbox.clone());
    let peer = peer_of(&account);
    let mut peer_outbox: Option<Arc<Outbox>> = None;
    loop {
        if outbox.is_closed() {
            break;
        }
        if !outbox.is_empty() && !write_queued(socket, &outbox).await {
            break;
        }
        tokio::select! {
            biased;
            _ = outbox.changed() => {}
            next = socket.next() => {
                let mut next = Some(next);
                for _ in 0..BATCH_FRAMES_MAX {
                    let Some(item) = next.take().or_else(|| socket.next().now_or_never()) else { break };
                    match item {
                        Some(Ok(Message::Text(text))) => {
                            if peer_outbox.as_ref().is_none_or(|queue| queue.is_closed()) {
                                peer_outbox = peer.as_ref().and_then(|peer| lock(&floor.connected).get(peer).cloned());
                            }
                            if let Some(queue) = &peer_outbox {
                                queue.push(text);
                            }
                        }
                        Some(Ok(_)) => {}
                        None | Some(Err(_)) => {
                            lock(&floor.connected).remove(&account);
                            return;
                        }
                    }
                }
            }
        }
    }
    lock(&floor.connected).remove(&account);
}

/// The connection's `auth`, answered; its account.
async fn authenticate(socket: &mut Socket, floor: &Floor) -> Option<String> {
    let Some(Ok(Message::Text(text))) = socket.next().await else { return None };
    let message = protocol::parse(&text, floor.ws_message_bytes_max).ok()?;
    let ClientBody::Auth { token } = message.body else { return None };
    let claims = floor.verifier.verify_once(&token).await.ok()?;
    let ack = Reply::Ack { id: message.id, ice_policy: None, account_id: None, device_id: None }.frame();
    socket.send(Message::text(ack)).await.ok()?;
    Some(claims.sub.to_string())
}

/// Writes what is queued, a batch per flush; false when the socket fails.
async fn write_queued(socket: &mut Socket, outbox: &Outbox) -> bool {
    while let Some(first) = outbox.pop() {
        if socket.feed(Message::Text(first)).await.is_err() {
            return false;
        }
        for _ in 1..BATCH_FRAMES_MAX {
            match outbox.pop() {
                Some(text) => {
                    if socket.feed(Message::Text(text)).await.is_err() {
                        return false;
                    }
                }
                None => break,
            }
        }
        if socket.flush().await.is_err() {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_benchmarks_pairs_are_each_others_peers() {
        let a = "0000000a-0000-7000-8000-000000000011";
        let b = "0000000b-0000-7000-8000-000000000011";
        assert_eq!(peer_of(a).as_deref(), Some(b));
        assert_eq!(peer_of(b).as_deref(), Some(a));
        assert_eq!(peer_of("0000000c-0000-7000-8000-000000000011"), None);
        assert_eq!(peer_of("short"), None);
    }
}
