//! The WebSocket upgrade: the last point with HTTP metadata. Checks the origin allow-list, the
//! connection limits (global and per client address), draining and a `?token=` before upgrading, and configures the socket's
//! buffers and frame limits (small read/write buffers keep idle connections cheap).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tracing::Instrument as _;

use crate::AppState;
use crate::client_ip::{IpSlot, client_ip};
use crate::error::RequestError;
use crate::protocol::{ErrorCode, RoomId};
use crate::session::{self, Handshake};

/// Initial read buffer of a socket. tungstenite allocates it up front (its default is 128 KiB);
/// larger frames grow it on demand.
const READ_BUFFER_BYTES: usize = 2 * 1024;

/// `GET /ws`: the room comes in `join`.
pub async fn upgrade(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    accept(app, peer, None, query, &headers, ws)
}

/// `GET /ws/{room}`: the room comes in the URL (and `join` may repeat it).
pub async fn upgrade_room(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(room): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    accept(app, peer, Some(RoomId(room)), query, &headers, ws)
}

/// Whether a browser's `Origin` (if any) is in the `--allowed-origin` list (when one is set).
pub fn origin_allowed(allowed: &[String], headers: &HeaderMap) -> bool {
    match headers.get(header::ORIGIN) {
        Some(origin) => {
            let origin = origin.to_str().unwrap_or("");
            allowed.is_empty() || allowed.iter().any(|a| a == origin)
        }
        None => true,
    }
}

/// What every WebSocket endpoint (`/ws`, `/y-webrtc`, `/peerjs`) checks before upgrading: the
/// origin, draining, the shared store, the connection limit and the client address's. Returns
/// the connection's place among its address's, or the HTTP refusal (counted).
pub fn admit_socket(
    app: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> Result<IpSlot, Box<Response>> {
    if !origin_allowed(&app.live().allowed_origins, headers) {
        return Err(Box::new(refuse(
            app,
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "origin not allowed",
        )));
    }
    if app.hub.is_draining() {
        return Err(Box::new(refuse(
            app,
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Draining,
            "the server is shutting down",
        )));
    }
    if !app.hub.is_available() {
        return Err(Box::new(refuse(
            app,
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "the server cannot reach its shared store",
        )));
    }
    if app.connections.count() >= app.live().max_connections as i64 {
        return Err(Box::new(refuse(
            app,
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::TooManySessions,
            "too many connections",
        )));
    }
    address_slot(app, peer, headers).map_err(|e| {
        Box::new(refuse(
            app,
            StatusCode::TOO_MANY_REQUESTS,
            e.code,
            &e.message,
        ))
    })
}

/// A connection's place among its client address's (the address from trusted proxies'
/// headers), or `too_many_connections`. Every endpoint that holds a connection takes one.
pub fn address_slot(
    app: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> Result<IpSlot, RequestError> {
    let ip = client_ip(peer, headers, &app.config.trusted_proxies);
    app.clients.connect(ip, Instant::now()).ok_or_else(|| {
        RequestError::new(
            ErrorCode::TooManyConnections,
            "too many connections from this address",
        )
    })
}

/// An HTTP refusal of an upgrade, counted by its code.
pub fn refuse(app: &AppState, status: StatusCode, code: ErrorCode, message: &str) -> Response {
    app.metrics.error(code);
    tracing::debug!(%code, message, "upgrade refused");
    (status, format!("{code}: {message}\n")).into_response()
}

fn accept(
    app: Arc<AppState>,
    peer: SocketAddr,
    path_room: Option<RoomId>,
    query: HashMap<String, String>,
    headers: &HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let ip_slot = match admit_socket(&app, peer, headers) {
        Ok(slot) => slot,
        Err(refusal) => return *refusal,
    };
    let live = app.live();
    let claims = match (&live.auth, query.get("token")) {
        (Some(auth), Some(token)) => match auth.verify(token) {
            Ok(claims) => Some(claims),
            Err(e) => {
                return refuse(&app, StatusCode::UNAUTHORIZED, e.code, &e.message);
            }
        },
        _ => None,
    };
    let conn = app.next_conn.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!(
        "conn",
        id = conn,
        peer = tracing::field::Empty,
        room = tracing::field::Empty,
        name = tracing::field::Empty
    );
    let handshake = Handshake {
        conn,
        path_room,
        claims,
        ip_slot,
    };
    let limit = app.config.max_message_bytes;
    ws.read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_write_buffer_size(limit.saturating_mul(4).max(1 << 20))
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| session::run(socket, app, handshake).instrument(span))
}
