//! The backend HTTP API: a server-side application pushes into rooms and looks into them.
//!
//! - `GET /v1/rooms/{room}`: the room's peers (id, name, node, attached or parked).
//! - `POST /v1/rooms/{room}/broadcast` with a JSON body: delivered to every peer of the room,
//!   on every node, as a `broadcast` from `server`, in order with the peers' other frames.
//! - `GET /v1/relays`: the relay fleet as this node sees it, with each relay's load and state.
//! - `GET /v1/ice-servers?room=R`: ICE servers with fresh TURN credentials for a client library
//!   that does not speak our protocol (y-webrtc, PeerJS); a room token for `R` also grants it.
//!
//! Both need `Authorization: Bearer CREDENTIAL`: one of `--api-key`, or an admin JWT
//! (`{"admin": true, "exp": ...}` signed with `--jwt-secret`). With neither configured the API
//! does not exist (404), so it is never open by accident.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use subtle::ConstantTimeEq as _;

use crate::AppState;
use crate::protocol::{PeerId, RoomId, ServerMessage, is_valid_room_id};

/// The `from` of a message pushed by the backend (peer ids are 12 hex digits: no clash).
pub const SERVER_SENDER: &str = "server";

/// One peer as the API lists it.
#[derive(Debug, Serialize)]
pub struct PeerEntry {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The node serving it (`local` on a single node).
    pub node: String,
    /// Attached to a socket, or parked waiting for a resume.
    pub state: &'static str,
}

/// The answer of `GET /v1/rooms/{room}`.
#[derive(Debug, Serialize)]
pub struct RoomView {
    room: RoomId,
    peers: Vec<PeerEntry>,
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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status == StatusCode::NOT_FOUND {
            return self.status.into_response();
        }
        (
            self.status,
            Json(serde_json::json!({"code": self.code, "message": self.message})),
        )
            .into_response()
    }
}

/// Checks the bearer key and the room id.
fn authorize(app: &AppState, headers: &HeaderMap, room: &str) -> Result<RoomId, ApiError> {
    authenticate(app, headers)?;
    if !is_valid_room_id(room) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_room_id",
            "room ids are 1 to 64 characters of [A-Za-z0-9_.-]",
        ));
    }
    Ok(RoomId::from(room))
}

/// Checks the bearer key (or admin token).
fn authenticate(app: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let live = app.live();
    if live.api_keys.is_empty() && live.auth.is_none() {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", ""));
    }
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
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

/// The answer of `GET /v1/ice-servers`: the shape of `RTCConfiguration.iceServers`.
#[derive(Debug, Serialize)]
pub struct IceServersView {
    #[serde(rename = "iceServers")]
    ice_servers: Vec<crate::protocol::IceServer>,
}

/// `GET /v1/ice-servers?room=ROOM`: ICE servers with TURN credentials (the room's relay when
/// there is a fleet), for apps on y-webrtc or PeerJS to pass into the library's configuration.
/// Needs an API key, an admin token, or a room token (JWT) granting `room`.
pub async fn ice_servers(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Result<Json<IceServersView>, ApiError> {
    let room = query
        .get("room")
        .cloned()
        .unwrap_or_else(|| "default".into());
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let room_token_grants = app
        .live()
        .auth
        .as_ref()
        .and_then(|auth| auth.verify(presented).ok())
        .is_some_and(|claims| claims.room.as_str() == room);
    let room = if room_token_grants {
        RoomId::from(room.as_str())
    } else {
        authorize(&app, &headers, &room)?
    };
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
}

/// The answer of `GET /v1/relays`.
#[derive(Debug, Serialize)]
pub struct FleetView {
    relays: Vec<RelayEntry>,
}

/// `GET /v1/relays`: the relay fleet (empty without `--redis` or without registered relays).
pub async fn relays(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<FleetView>, ApiError> {
    authenticate(&app, &headers)?;
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
        })
        .collect();
    Ok(Json(FleetView { relays }))
}

/// `GET /v1/rooms/{room}`.
pub async fn room(
    State(app): State<Arc<AppState>>,
    Path(room): Path<String>,
    headers: HeaderMap,
) -> Result<Json<RoomView>, ApiError> {
    let room = authorize(&app, &headers, &room)?;
    let peers = app
        .hub
        .room_peers(&room)
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e))?;
    Ok(Json(RoomView { room, peers }))
}

/// `POST /v1/rooms/{room}/broadcast`.
pub async fn broadcast(
    State(app): State<Arc<AppState>>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Delivered>, ApiError> {
    let room = authorize(&app, &headers, &room)?;
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
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e))?;
    Ok(Json(Delivered { delivered }))
}
