//! The backend HTTP API: a server-side application pushes into rooms and looks into them.
//!
//! - `GET /v1/rooms/{room}`: the room's peers (id, name, node, attached or parked).
//! - `POST /v1/rooms/{room}/broadcast` with a JSON body: delivered to every peer of the room,
//!   on every node, as a `broadcast` from `server`, in order with the peers' other frames.
//! - `GET /v1/relays`: the relay fleet as this node sees it, with each relay's load and state.
//! - `GET /v1/ice-servers?room=R`: ICE servers with fresh TURN credentials for a client library
//!   that does not speak our protocol (y-webrtc, PeerJS); a room token for `R` also grants it.
//! - The admin actions (`docs/signaling.md`, "Admin API"): `GET /v1/rooms` (every room and
//!   peer), `POST /v1/rooms/{room}/peers/{peer}/kick`, `POST /v1/rooms/{room}/close`,
//!   `POST /v1/drain` (as SIGTERM), `GET /v1/usage` (TURN usage per user and room, JSON or
//!   CSV, from the in-process relay).
//!
//! All need `Authorization: Bearer CREDENTIAL`: one of `--api-key`, or an admin JWT
//! (`{"admin": true, "exp": ...}` signed with `--jwt-secret`). With neither configured the API
//! does not exist (404), so it is never open by accident.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use subtle::ConstantTimeEq as _;

use crate::AppState;
use crate::protocol::{PeerId, RoomId, ServerMessage, is_valid_room_id};

/// The `from` of a message pushed by the backend (peer ids are 12 hex digits: no clash).
pub const SERVER_SENDER: &str = "server";

/// How a client joined, as the admin views name it ([`Transport::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    WebSocket,
    Http,
    YWebrtc,
    PeerJs,
}

impl Serialize for Transport {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl Transport {
    const ALL: [Self; 4] = [Self::WebSocket, Self::Http, Self::YWebrtc, Self::PeerJs];

    /// Its name in the admin views (and in a cluster session's Redis hash).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WebSocket => "websocket",
            Self::Http => "http",
            Self::YWebrtc => "y-webrtc",
            Self::PeerJs => "peerjs",
        }
    }

    /// The transport named `name`, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

/// One peer as the API lists it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PeerEntry {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The node serving it (`local` on a single node).
    pub node: String,
    /// Attached to a socket, or parked waiting for a resume.
    pub state: &'static str,
    /// How it joined (absent for a session a node of an older version opened).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transport: Option<Transport>,
    /// Seconds since it joined (on a cluster: since its latest attach).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connected_secs: Option<u64>,
}

/// The answer of `GET /v1/rooms/{room}`.
#[derive(Debug, Serialize)]
pub struct RoomView {
    pub room: RoomId,
    pub peers: Vec<PeerEntry>,
}

/// The answer of a broadcast.
#[derive(Debug, Serialize)]
pub struct Delivered {
    delivered: u64,
}

/// An API error: a status and a JSON body `{"code":...,"message":...}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

/// The cluster store could not be read or changed: 503 `unavailable`.
fn unavailable(error: String) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", error)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.code == "not_found" {
            // The API is not configured: nothing tells it exists.
            return self.status.into_response();
        }
        (
            self.status,
            Json(serde_json::json!({"code": self.code, "message": self.message})),
        )
            .into_response()
    }
}

/// A request that carried an API key or an admin token (`Authorization: Bearer ...`). Every
/// backend handler takes one, so none can forget the check.
pub struct Operator;

impl FromRequestParts<Arc<AppState>> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        authenticate(app, &parts.headers).map(|()| Self)
    }
}

/// A room id of the URL, validated.
fn room_id(room: &str) -> Result<RoomId, ApiError> {
    if !is_valid_room_id(room) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_room_id",
            "room ids are 1 to 64 characters of [A-Za-z0-9_.-], not . or ..",
        ));
    }
    Ok(RoomId::from(room))
}

/// The `Authorization: Bearer` credential, empty without one. The scheme is matched without
/// regard to case and may be followed by several spaces (RFC 9110 section 11.1, RFC 6750).
fn bearer(headers: &HeaderMap) -> &str {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map_or("", |(_, credential)| credential.trim_start_matches(' '))
}

/// Checks the bearer key (or admin token).
fn authenticate(app: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let live = app.live();
    if live.api_keys.is_empty() && live.auth.is_none() {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", ""));
    }
    let presented = bearer(headers);
    let ok = live
        .api_keys
        .iter()
        .any(|key| bool::from(key.expose().ct_eq(presented.as_bytes())))
        || live
            .auth
            .as_ref()
            .is_some_and(|auth| auth.verify_admin(presented));
    if !ok {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "an API key or an admin token is required (Authorization: Bearer ...)",
        ));
    }
    Ok(())
}

/// The room `GET /v1/ice-servers?room=` mints for: the room id itself, or for a string that is
/// none (a y-webrtc topic, which may hold any character) its topic's room, `y.` and 40 hex
/// digits, as the admin API shows it. A TURN username (`EXPIRY:ROOM:PEER`) so never holds a
/// `:`, a line break or anything else outside room ids.
fn credentials_room(room: &str) -> RoomId {
    if is_valid_room_id(room) {
        RoomId::from(room)
    } else {
        crate::y_webrtc::topic_room(room)
    }
}

/// The answer of `GET /v1/ice-servers`: the shape of `RTCConfiguration.iceServers`.
#[derive(Debug, Serialize)]
pub struct IceServersView {
    #[serde(rename = "iceServers")]
    ice_servers: Vec<crate::protocol::IceServer>,
}

/// `GET /v1/ice-servers?room=ROOM`: ICE servers with TURN credentials (the room's relay when
/// there is a fleet), for apps on y-webrtc or PeerJS to pass into the library's configuration.
/// Needs an API key, an admin token, or a room token (JWT) granting `room`; with neither
/// `--api-key` nor `--jwt-secret` it does not exist (404), as the rest of the API.
pub async fn ice_servers(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<IceServersView>, ApiError> {
    let room = query
        .get("room")
        .cloned()
        .unwrap_or_else(|| "default".into());
    let presented = bearer(&headers);
    let room_token_grants = app
        .live()
        .auth
        .as_ref()
        .and_then(|auth| auth.verify(presented).ok())
        .is_some_and(|claims| claims.room.as_str() == room);
    if !room_token_grants {
        authenticate(&app, &headers).map_err(|refused| match refused.status {
            // The operator's message would not say that the client's own token does.
            StatusCode::UNAUTHORIZED => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "an API key, an admin token or a room token (JWT) for ?room= is required \
                 (Authorization: Bearer ...)",
            ),
            _ => refused,
        })?;
    }
    let room = credentials_room(&room);
    let peer = PeerId(format!("{:012x}", rand::random::<u64>() >> 16));
    Ok(Json(IceServersView {
        ice_servers: app.ice.mint(&peer, &room, std::time::SystemTime::now()),
    }))
}

/// One relay of the fleet as the API lists it.
#[derive(Debug, Serialize)]
pub struct RelayEntry {
    id: String,
    urls: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    region: Option<String>,
    capacity: f64,
    allocations: u64,
    bytes_per_sec: u64,
    /// `active` or `draining`.
    state: &'static str,
    /// Rooms with a session on this node that this relay serves.
    rooms_here: u64,
    /// Whether the relay accepts the TURN credentials this node mints (false: it gets no
    /// rooms; give it the same `--turn-secret`).
    accepts_credentials: bool,
}

/// The answer of `GET /v1/relays`.
#[derive(Debug, Serialize)]
pub struct FleetView {
    relays: Vec<RelayEntry>,
}

/// `GET /v1/relays`: the relay fleet (empty without `--redis` or without registered relays).
pub async fn relays(
    State(app): State<Arc<AppState>>,
    _: Operator,
) -> Result<Json<FleetView>, ApiError> {
    let Some((fleet, _)) = &app.fleet else {
        return Ok(Json(FleetView { relays: Vec::new() }));
    };
    let rooms = fleet.rooms_per_relay(&app.hub.rooms());
    let relays = fleet
        .snapshot()
        .iter()
        .map(|r| RelayEntry {
            id: r.id.clone(),
            urls: r.urls.clone(),
            region: r.region.clone(),
            capacity: r.capacity,
            allocations: r.allocations,
            bytes_per_sec: r.bytes_per_sec,
            state: match r.state {
                fleet::relays::RelayState::Active => "active",
                fleet::relays::RelayState::Draining => "draining",
            },
            rooms_here: rooms.get(&r.id).copied().unwrap_or(0),
            accepts_credentials: fleet.accepts(r),
        })
        .collect();
    Ok(Json(FleetView { relays }))
}

/// `GET /v1/rooms/{room}`.
pub async fn room(
    State(app): State<Arc<AppState>>,
    Path(room): Path<String>,
    _: Operator,
) -> Result<Json<RoomView>, ApiError> {
    let room = room_id(&room)?;
    let peers = app.hub.room_peers(&room).await.map_err(unavailable)?;
    Ok(Json(RoomView { room, peers }))
}

/// `POST /v1/rooms/{room}/broadcast`.
pub async fn broadcast(
    State(app): State<Arc<AppState>>,
    Path(room): Path<String>,
    _: Operator,
    body: Bytes,
) -> Result<Json<Delivered>, ApiError> {
    let room = room_id(&room)?;
    if body.len() > app.config.max_message_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "message_too_large",
            "the body is larger than --max-message-bytes",
        ));
    }
    let data: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_message",
            format!("the body must be JSON: {e}"),
        )
    })?;
    let message = ServerMessage::Broadcast {
        from: PeerId::from(SERVER_SENDER),
        data,
    };
    let delivered = app
        .hub
        .backend_broadcast(&room, message)
        .await
        .map_err(unavailable)?;
    Ok(Json(Delivered { delivered }))
}

/// The answer of `GET /v1/rooms`.
#[derive(Debug, Serialize)]
pub struct RoomsView {
    /// This node's id (`local` on a single node).
    node: String,
    /// How many rooms there are; `rooms` lists the first [`crate::cluster::MAX_LISTED_ROOMS`].
    total: usize,
    rooms: Vec<RoomView>,
}

/// `GET /v1/rooms[?after=ROOM]`: the rooms and their peers, a page of them after `after`.
pub async fn rooms(
    State(app): State<Arc<AppState>>,
    _: Operator,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<RoomsView>, ApiError> {
    if let Some(unknown) = query.keys().find(|k| *k != "after") {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_message",
            format!("unknown parameter {unknown:?}: only after=ROOM is taken"),
        ));
    }
    let after = query.get("after").map(|room| room_id(room)).transpose()?;
    let (rooms, total) = app
        .hub
        .list_rooms(after.as_ref())
        .await
        .map_err(unavailable)?;
    Ok(Json(RoomsView {
        node: app.hub.node_id().unwrap_or("local").to_owned(),
        total,
        rooms,
    }))
}

/// The answer of a kick.
#[derive(Debug, Serialize)]
pub struct Kicked {
    kicked: String,
}

/// `POST /v1/rooms/{room}/peers/{peer}/kick`: ends the peer's session with `kicked`.
pub async fn kick(
    State(app): State<Arc<AppState>>,
    Path((room, peer)): Path<(String, String)>,
    _: Operator,
) -> Result<Json<Kicked>, ApiError> {
    let room = room_id(&room)?;
    let peer = PeerId::from(peer);
    let kicked = app.hub.kick(&room, &peer).await.map_err(unavailable)?;
    if !kicked {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_peer",
            format!("no peer {peer} in room {room}"),
        ));
    }
    tracing::info!(%room, %peer, "admin API: peer kicked");
    Ok(Json(Kicked { kicked: peer.0 }))
}

/// The answer of a room close.
#[derive(Debug, Serialize)]
pub struct Closed {
    closed: u64,
}

/// `POST /v1/rooms/{room}/close`: ends every session of the room with `room_closed`.
pub async fn close_room(
    State(app): State<Arc<AppState>>,
    Path(room): Path<String>,
    _: Operator,
) -> Result<Json<Closed>, ApiError> {
    let room = room_id(&room)?;
    let closed = app.hub.close_room(&room).await.map_err(unavailable)?;
    tracing::info!(%room, peers = closed, "admin API: room closed");
    Ok(Json(Closed { closed }))
}

/// `POST /v1/drain`: drains this node as SIGTERM does (clients are told to reconnect
/// elsewhere, the node stops when they are gone or `--drain-timeout` passed). 202.
pub async fn drain(State(app): State<Arc<AppState>>, _: Operator) -> Result<Response, ApiError> {
    tracing::info!("admin API: drain requested");
    app.drain_requested.cancel();
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({"draining": true})),
    )
        .into_response())
}

/// `GET /v1/usage`: TURN usage per user and room over a window (`from`/`to` or `since`;
/// `format=csv` or `Accept: text/csv`, `by=room`). With `--redis`, what the fleet's relays and
/// the nodes' in-process relays published to Redis; on a single node, the in-process relay's
/// (`--with-relay`); an empty report without either.
pub async fn usage(
    State(app): State<Arc<AppState>>,
    _: Operator,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    #[cfg(feature = "with-relay")]
    {
        use relay::usage::UsageReport;
        let query =
            match relay::admin::UsageQuery::parse(&query, &headers, relay::usage::unix_now()) {
                Ok(query) => query,
                Err(refusal) => return Ok(refusal.into_response()),
            };
        let (from, to) = (query.from, query.to);
        let report = match (&app.fleet, app.relay_usage.get()) {
            (Some((_, conn)), _) => {
                let fleet = fleet::usage::read(conn, from, to, app.config.redis_timeout)
                    .await
                    .map_err(|e| unavailable(e.to_string()))?;
                UsageReport::of_fleet(&fleet, from, to)
            }
            (None, Some(book)) => book.report(from, to),
            (None, None) => UsageReport::of_fleet(&fleet::usage::FleetUsage::default(), from, to),
        };
        Ok(query.respond(&report))
    }
    #[cfg(not(feature = "with-relay"))]
    {
        let _ = (app, headers, query);
        Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "no_relay",
            "built without the in-process relay",
        ))
    }
}
