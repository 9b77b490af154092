//! HTTP routes of the signaling service (API.md, "Signaling"): the
//! WebSocket endpoint and the call records a user may read and annotate.

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::extract::{FromRef, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use courier_accounts::auth::AuthUser;
use courier_accounts::tokens::TokenVerifier;
use courier_common::page::PageQuery;
use courier_common::text::TextError;
use courier_common::time::{now_ms, rfc3339};
use courier_common::{ErrorBody, HttpError, Json, Page, Query};
use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use utoipa::{OpenApi, ToSchema};

use crate::hub::Hub;
use crate::ice::IceServers;
use crate::store::{self, HistoryRow, Stats};
use crate::upgrade::Upgrade;
use crate::ws;
use courier_protocol::{CallId, HangupReason};

pub const COMMENT_CHARS_MAX: usize = 500;
/// The problem tags a rating may carry (API.md).
pub const PROBLEMS: [&str; 7] =
    ["echo", "noise", "interruptions", "distorted_speech", "silent_local", "silent_remote", "dropped"];
/// Bounds on a client's figures: beyond them a figure is a bug, not a call.
const MILLISECONDS_MAX: f64 = 600_000.0;
const BITRATE_KBPS_MAX: f64 = 100_000.0;
/// A call of a year at 50 frames a second is some 1.6 billion frames.
const FRAMES_MAX: i64 = 1_000_000_000;
/// The WebSocket codec's read buffer to start with: small, because most
/// sockets sit idle (it grows to the largest frame the connection has read);
/// the socket itself is read in larger pieces (`upgrade::ReadAhead`).
const WS_READ_BUFFER_BYTES: usize = 256;
const WS_WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// The signaling service's state.
#[derive(Clone)]
pub struct Signaling {
    hub: Hub,
    verifier: Arc<TokenVerifier>,
    ice: Arc<IceServers>,
}

impl Signaling {
    pub fn new(hub: Hub, verifier: Arc<TokenVerifier>) -> Self {
        Signaling { hub, verifier, ice: Arc::new(IceServers::default()) }
    }

    /// The STUN and TURN servers `GET /v1/calls/ice-servers` hands out.
    pub fn with_ice_servers(mut self, ice: IceServers) -> Self {
        self.ice = Arc::new(ice);
        self
    }

    pub fn hub(&self) -> &Hub {
        &self.hub
    }
}

impl FromRef<Signaling> for Arc<TokenVerifier> {
    fn from_ref(signaling: &Signaling) -> Self {
        signaling.verifier.clone()
    }
}

/// The signaling router: `/v1/calls/ws`, `/v1/calls/ice-servers`, `/v1/calls/history`,
/// `/v1/calls/{id}/rating|stats`.
pub fn app(signaling: Signaling) -> Router {
    Router::new()
        .route("/v1/calls/ws", get(websocket))
        .route("/v1/calls/ice-servers", get(ice_servers))
        .route("/v1/calls/history", get(history))
        .route("/v1/calls/{id}/rating", post(rate))
        .route("/v1/calls/{id}/stats", post(stats))
        .with_state(signaling)
}

#[derive(OpenApi)]
#[openapi(
    paths(websocket, ice_servers, history, rate, stats),
    components(schemas(ErrorBody, IceServersView, IceServerView, CallView, RatingBody, Stats)),
    tags((name = "calls", description = "Call signaling and call records"))
)]
pub struct ApiDoc;

/// The signaling WebSocket (API.md, "Signaling"): send `auth` first.
#[utoipa::path(get, path = "/v1/calls/ws", tag = "calls",
    responses((status = 101, description = "Switching to the WebSocket protocol"),
              (status = 400, description = "`invalid_request`: not a WebSocket upgrade", body = ErrorBody),
              (status = 503, description = "`overloaded`: the server holds as many connections as allowed", body = ErrorBody)))]
async fn websocket(State(signaling): State<Signaling>, mut request: Request) -> Response {
    let upgrade = match Upgrade::from_request(&mut request) {
        Ok(upgrade) => upgrade,
        Err(why) => {
            return HttpError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!("this route speaks WebSocket: {why}"),
            )
            .into_response();
        }
    };
    let Some(permit) = signaling.hub.reserve_connection() else {
        return HttpError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", "too many connections; retry later")
            .with_retry_after(1)
            .into_response();
    };
    let config = socket_config(signaling.hub.config().ws_message_bytes_max);
    upgrade.respond(config, move |mut socket| async move {
        ws::serve(&mut socket, &signaling.hub, &signaling.verifier).await;
        drop(permit);
    })
}

/// The WebSocket settings of a signaling connection whose messages may be
/// `ws_message_bytes_max` long.
pub(crate) fn socket_config(ws_message_bytes_max: usize) -> WebSocketConfig {
    let bytes_max = ws::transport_message_bytes_max(ws_message_bytes_max);
    WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER_BYTES)
        // Frames are buffered until the writer flushes its batch.
        .write_buffer_size(WS_WRITE_BUFFER_BYTES)
        .max_message_size(Some(bytes_max))
        .max_frame_size(Some(bytes_max))
}

/// One STUN or TURN server, as WebRTC's `RTCIceServer` takes it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct IceServerView {
    pub urls: Vec<String>,
    /// TURN only: `<expiry unix time>:<account_id>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// TURN only: base64(HMAC-SHA1(shared secret, username)).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct IceServersView {
    pub ice_servers: Vec<IceServerView>,
    /// Seconds the TURN credentials stay valid.
    pub ttl: u64,
}

/// STUN and TURN servers for my calls, with TURN credentials of my own that
/// expire after `ttl` seconds (the TURN REST API scheme coturn's
/// `use-auth-secret` checks).
#[utoipa::path(get, path = "/v1/calls/ice-servers", tag = "calls", security(("user" = [])),
    responses((status = 200, body = IceServersView), (status = 401, body = ErrorBody)))]
async fn ice_servers(State(signaling): State<Signaling>, user: AuthUser) -> axum::Json<IceServersView> {
    let ice = &signaling.ice;
    let ttl = ice.credential_ttl.as_secs();
    let mut servers = Vec::with_capacity(2);
    if !ice.stun_urls.is_empty() {
        servers.push(IceServerView { urls: ice.stun_urls.clone(), username: None, credential: None });
    }
    if let Some(secrets) = ice.secrets.as_ref().filter(|_| !ice.turn_urls.is_empty()) {
        let expires_at_s = courier_common::time::now_s() + ttl;
        let issued = secrets.issue(user.account_id(), expires_at_s);
        servers.push(IceServerView {
            urls: ice.turn_urls.clone(),
            username: Some(issued.username),
            credential: Some(issued.credential),
        });
    }
    axum::Json(IceServersView { ice_servers: servers, ttl })
}

/// One call in its party's history.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CallView {
    pub call_id: String,
    /// The other party's account id.
    pub peer: String,
    /// `outgoing`, `incoming`, or `missed` (incoming, never answered).
    pub direction: String,
    pub started_at: String,
    pub answered_at: Option<String>,
    pub ended_at: Option<String>,
    /// Seconds from answer to end; 0 for calls never answered.
    pub duration_s: Option<i64>,
    pub end_reason: Option<String>,
    /// This user's own rating, 1–5.
    pub rating: Option<i64>,
    pub problems: Vec<String>,
    /// This user's client's figures, when it sent them.
    pub stats: Option<Stats>,
}

impl CallView {
    fn of(row: HistoryRow, me: &str) -> Self {
        let outgoing = row.caller_id == me;
        // Missed: an incoming call that ended unanswered, not by this user's own reject.
        let missed = !outgoing
            && row.answered_at.is_none()
            && row.ended_at.is_some()
            && row.end_reason.as_deref() != Some(HangupReason::Rejected.as_str());
        let direction = match (outgoing, missed) {
            (true, _) => "outgoing",
            (false, true) => "missed",
            (false, false) => "incoming",
        };
        // A call whose media path never came up had no talking time, answered or not.
        let talked = row.end_reason.as_deref() != Some(HangupReason::IceFailed.as_str());
        let duration_s = row.ended_at.map(|ended| match row.answered_at {
            Some(answered) if talked => (ended - answered).max(0) / 1_000,
            _ => 0,
        });
        CallView {
            peer: if outgoing { row.callee_id } else { row.caller_id },
            direction: direction.into(),
            started_at: rfc3339(row.started_at),
            answered_at: row.answered_at.map(rfc3339),
            ended_at: row.ended_at.map(rfc3339),
            duration_s,
            end_reason: row.end_reason,
            rating: row.rating,
            problems: row
                .problems
                .as_deref()
                .filter(|problems| !problems.is_empty())
                .map(|problems| problems.split(',').map(str::to_owned).collect())
                .unwrap_or_default(),
            stats: (row.stats != Stats::default()).then_some(row.stats),
            call_id: row.id,
        }
    }
}

/// My calls, newest first (cursor pagination).
#[utoipa::path(get, path = "/v1/calls/history", tag = "calls", security(("user" = [])), params(PageQuery),
    responses((status = 200, body = inline(Page<CallView>)), (status = 401, body = ErrorBody)))]
async fn history(
    State(signaling): State<Signaling>,
    user: AuthUser,
    Query(query): Query<PageQuery>,
) -> Result<axum::Json<Page<CallView>>, HttpError> {
    let page = query.parse()?;
    let after = match page.after.as_deref() {
        None => None,
        Some(position) => Some(parse_position(position).ok_or_else(courier_common::page::not_ours)?),
    };
    let rows = store::history(signaling.hub.db(), user.account_id(), after, page.limit).await?;
    let page = Page::from_rows(rows, page.limit, |row| format!("{}:{}", row.started_at, row.id));
    Ok(axum::Json(page.map(|row| CallView::of(row, user.account_id()))))
}

fn parse_position(position: &str) -> Option<(i64, String)> {
    let (started_at, id) = position.split_once(':')?;
    Some((started_at.parse().ok()?, id.to_owned()))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RatingBody {
    /// 1 (bad) to 5 (excellent).
    #[schema(minimum = 1, maximum = 5)]
    #[serde(deserialize_with = "courier_common::json::integer")]
    pub rating: i64,
    #[serde(default)]
    #[schema(value_type = Vec<Problem>)]
    pub problems: Vec<String>,
    /// Trimmed; not blank (422).
    #[schema(min_length = 1, max_length = 500, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    pub comment: Option<String>,
}

/// What went wrong in a call, as `RatingBody::problems` takes it ([`PROBLEMS`]).
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum Problem {
    Echo,
    Noise,
    Interruptions,
    DistortedSpeech,
    SilentLocal,
    SilentRemote,
    Dropped,
}

/// Rate a call I was a party of (again, to change the rating).
#[utoipa::path(post, path = "/v1/calls/{id}/rating", tag = "calls", security(("user" = [])),
    params(("id" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$", description = "The call id")), request_body = RatingBody,
    responses((status = 204), (status = 404, description = "`not_found`: no such call of yours", body = ErrorBody),
              (status = 422, description = "`invalid_request`: a blank comment", body = ErrorBody)))]
async fn rate(
    State(signaling): State<Signaling>,
    user: AuthUser,
    Path(call_id): Path<String>,
    Json(body): Json<RatingBody>,
) -> Result<StatusCode, HttpError> {
    if !(1..=5).contains(&body.rating) {
        return Err(HttpError::invalid_request("rating must be an integer from 1 to 5"));
    }
    let mut problems = Vec::with_capacity(body.problems.len());
    for problem in &body.problems {
        if !PROBLEMS.contains(&problem.as_str()) {
            return Err(HttpError::invalid_request(format!("problems are among: {}", PROBLEMS.join(", "))));
        }
        if !problems.contains(problem) {
            problems.push(problem.clone());
        }
    }
    let comment = match body.comment.as_deref() {
        None => None,
        Some(comment) => Some(courier_common::text::printable(comment, COMMENT_CHARS_MAX).map_err(|error| {
            let message = error.describe("comment", COMMENT_CHARS_MAX);
            match error {
                TextError::Malformed => HttpError::invalid_request(message),
                TextError::Blank => HttpError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message),
            }
        })?),
    };
    let db = signaling.hub.db();
    if CallId::parse(&call_id).is_err() || !store::is_party(db, &call_id, user.account_id()).await? {
        return Err(HttpError::not_found("no such call of yours"));
    }
    let rating = store::Rating { rating: body.rating, problems: &problems, comment: comment.as_deref() };
    store::rate(db, &call_id, user.account_id(), rating, now_ms()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Report my client's figures for a call I was a party of.
#[utoipa::path(post, path = "/v1/calls/{id}/stats", tag = "calls", security(("user" = [])),
    params(("id" = String, Path, pattern = "^[A-Za-z0-9_-]{1,64}$", description = "The call id")), request_body = Stats,
    responses((status = 204), (status = 404, description = "`not_found`: no such call of yours", body = ErrorBody)))]
async fn stats(
    State(signaling): State<Signaling>,
    user: AuthUser,
    Path(call_id): Path<String>,
    Json(body): Json<Stats>,
) -> Result<StatusCode, HttpError> {
    let in_range =
        |value: Option<f64>, max: f64| value.is_none_or(|value| value.is_finite() && (0.0..=max).contains(&value));
    if !in_range(body.rtt_ms, MILLISECONDS_MAX)
        || !in_range(body.jitter_ms, MILLISECONDS_MAX)
        || !in_range(body.setup_ms, MILLISECONDS_MAX)
        || !in_range(body.playout_delay_ms, MILLISECONDS_MAX)
    {
        return Err(HttpError::invalid_request(format!("times are milliseconds from 0 to {MILLISECONDS_MAX}")));
    }
    if !in_range(body.packet_loss_pct, 100.0) {
        return Err(HttpError::invalid_request("packet_loss_pct is a percentage from 0 to 100"));
    }
    let frames_in_range = |count: Option<i64>| count.is_none_or(|count| (0..=FRAMES_MAX).contains(&count));
    if !frames_in_range(body.late_frames) || !frames_in_range(body.concealed_frames) {
        return Err(HttpError::invalid_request(format!("frame counts are from 0 to {FRAMES_MAX}")));
    }
    if !in_range(body.bitrate_kbps, BITRATE_KBPS_MAX) {
        return Err(HttpError::invalid_request(format!("bitrate_kbps is from 0 to {BITRATE_KBPS_MAX}")));
    }
    if body.candidate_type.as_deref().is_some_and(|kind| !["host", "srflx", "prflx", "relay"].contains(&kind)) {
        return Err(HttpError::invalid_request("candidate_type is host, srflx, prflx or relay"));
    }
    let db = signaling.hub.db();
    if CallId::parse(&call_id).is_err() || !store::is_party(db, &call_id, user.account_id()).await? {
        return Err(HttpError::not_found("no such call of yours"));
    }
    store::record_stats(db, &call_id, user.account_id(), &body, now_ms()).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_positions_round_trip_and_refuse_garbage() {
        assert_eq!(parse_position("1700000000000:c-1"), Some((1_700_000_000_000, "c-1".into())));
        assert_eq!(parse_position("nope"), None);
        assert_eq!(parse_position("x:c"), None);
    }
}
