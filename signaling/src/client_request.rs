//! What every client endpoint (`/ws`, `/y-webrtc`, `/peerjs`, the HTTP transports) reads off
//! its request and checks before it holds a connection: the origin allow-list, draining, the
//! shared store, the connection limits (global and per client address) and a `?token=`. One
//! place, so every transport refuses the same things with the same codes.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::auth::Claims;
use crate::client_ip::{IpSlot, client_ip};
use crate::error::{RequestError, Unavailable};
use crate::protocol::ErrorCode;

/// Initial read buffer of a socket. tungstenite allocates it up front (its default is 128 KiB);
/// larger frames grow it on demand.
const READ_BUFFER_BYTES: usize = 2 * 1024;

/// A client endpoint's request: the socket's address (the client's own behind a PROXY
/// protocol header), the query parameters and the headers.
pub struct ClientRequest {
    pub peer: SocketAddr,
    pub query: HashMap<String, String>,
    pub headers: HeaderMap,
}

impl<S: Send + Sync> FromRequestParts<S> for ClientRequest {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let ConnectInfo(peer) = ConnectInfo::<SocketAddr>::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let Query(query) = Query::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(Self {
            peer,
            query,
            headers: parts.headers.clone(),
        })
    }
}

impl ClientRequest {
    /// A browser's `Origin` (if any) must be in the `--allowed-origin` list (when one is set);
    /// `forbidden` otherwise.
    pub fn check_origin(&self, app: &AppState) -> Result<(), RequestError> {
        match self.headers.get(header::ORIGIN) {
            Some(origin) if !origin_allowed(app, origin.to_str().unwrap_or("")) => Err(
                RequestError::new(ErrorCode::Forbidden, "origin not allowed"),
            ),
            _ => Ok(()),
        }
    }

    /// The claims of the `?token=`, verified; `None` without one or when auth is off.
    pub fn claims(&self, app: &AppState) -> Result<Option<Claims>, RequestError> {
        match (&app.live().auth, self.query.get("token")) {
            (Some(auth), Some(token)) => auth.verify(token).map(Some),
            _ => Ok(None),
        }
    }

    /// The connection's place among its client address's (the address from trusted proxies'
    /// headers), or `too_many_connections`. Every endpoint that holds a connection takes one.
    pub fn address_slot(&self, app: &AppState) -> Result<IpSlot, RequestError> {
        app.clients
            .connect(self.client_address(app), Instant::now())
            .ok_or_else(|| {
                RequestError::new(
                    ErrorCode::TooManyConnections,
                    "too many connections from this address",
                )
            })
    }

    /// The client's address: the PROXY header's, or the trusted proxies' headers', or the
    /// socket's.
    pub fn client_address(&self, app: &AppState) -> IpAddr {
        client_ip(self.peer, &self.headers, &app.config.trusted_proxies)
    }

    /// The node-wide limit on open connections (WebSockets and HTTP streams).
    pub fn connection_room(app: &AppState) -> Result<(), RequestError> {
        if app.connections.count() >= app.live().max_connections as i64 {
            return Err(RequestError::new(
                ErrorCode::TooManySessions,
                "too many connections",
            ));
        }
        Ok(())
    }

    /// What every WebSocket endpoint checks before upgrading: the origin, draining, the shared
    /// store, the connection limit and the client address's. Returns the connection's place
    /// among its address's, or the refusal (counted).
    pub fn admit_socket(&self, app: &AppState) -> Result<IpSlot, Refusal> {
        self.try_admit_socket(app).map_err(|e| refuse(app, &e))
    }

    /// The origin, and that the server is not draining: what a request that opens anything
    /// (a socket, a PeerJS id) checks first.
    pub fn check_open(&self, app: &AppState) -> Result<(), RequestError> {
        self.check_origin(app)?;
        if app.hub.is_draining() {
            return Err(RequestError::draining());
        }
        Ok(())
    }

    fn try_admit_socket(&self, app: &AppState) -> Result<IpSlot, RequestError> {
        self.check_open(app)?;
        if !app.hub.is_available() {
            return Err(RequestError::unavailable(Unavailable::StoreUnreachable));
        }
        Self::connection_room(app)?;
        self.address_slot(app)
    }

    /// [`admit_socket`](Self::admit_socket), then the claims of the `?token=`.
    pub fn admit_socket_with_claims(
        &self,
        app: &AppState,
    ) -> Result<(IpSlot, Option<Claims>), Refusal> {
        let ip_slot = self.admit_socket(app)?;
        let claims = self.claims(app).map_err(|e| refuse(app, &e))?;
        Ok((ip_slot, claims))
    }
}

/// Whether a browser page of `origin` may connect: `--allowed-origin` lists it, or is empty.
pub fn origin_allowed(app: &AppState, origin: &str) -> bool {
    let allowed = &app.live().allowed_origins;
    allowed.is_empty() || allowed.iter().any(|a| a == origin)
}

/// An HTTP refusal of an upgrade, as the HTTP transport refuses an open: the status of its
/// code's row in `docs/protocol.md`, one error frame (`seq` 0) as the body, and `Retry-After`
/// on 429 and 503.
pub struct Refusal(Box<Response>);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        *self.0
    }
}

/// The refusal of `error`, counted by its code.
pub fn refuse(app: &AppState, error: &RequestError) -> Refusal {
    Refusal(Box::new(crate::http_transport::refusal(app, error.clone())))
}

/// A WebSocket upgrade; a request that is not a valid one (no `Upgrade: websocket`, a missing
/// `Sec-WebSocket-Key`, not a GET) is refused as the other refusals are: `invalid_message`
/// (400), one JSON error frame, counted. One that asks for another `Sec-WebSocket-Version`
/// than 13 is answered `426 Upgrade Required` with `Sec-WebSocket-Version: 13`, as RFC 6455
/// (section 4.4) asks, and the same frame.
pub struct Upgrade(pub WebSocketUpgrade);

impl FromRequestParts<Arc<AppState>> for Upgrade {
    type Rejection = Refusal;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let invalid = |why: &str| {
            let message = format!("not a WebSocket upgrade: {why}");
            refuse(app, &RequestError::new(ErrorCode::InvalidMessage, message))
        };
        let upgrade = parts
            .headers
            .get(header::UPGRADE)
            .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"websocket"));
        if upgrade
            && parts
                .headers
                .get(header::SEC_WEBSOCKET_VERSION)
                .is_some_and(|version| version != "13")
        {
            let mut refusal = invalid("this server speaks `Sec-WebSocket-Version` 13 only");
            *refusal.0.status_mut() = StatusCode::UPGRADE_REQUIRED;
            refusal.0.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
            return Err(refusal);
        }
        let keys = parts.headers.get_all(header::SEC_WEBSOCKET_KEY);
        if keys.iter().count() > 1 || keys.iter().any(|key| !is_websocket_key(key.as_bytes())) {
            return Err(invalid(
                "`Sec-WebSocket-Key` must be one base64-encoded 16-byte nonce",
            ));
        }
        join_connection_lines(&mut parts.headers);
        WebSocketUpgrade::from_request_parts(parts, app)
            .await
            .map(Self)
            .map_err(|rejection| invalid(&rejection.body_text()))
    }
}

/// `Connection` given on several lines is one list (RFC 9110, section 5.3): join them into one
/// line, so that `upgrade` on any of them counts (the upgrade reads the first line only).
fn join_connection_lines(headers: &mut HeaderMap) {
    let lines: Vec<&[u8]> = headers
        .get_all(header::CONNECTION)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    if lines.len() < 2 {
        return;
    }
    if let Ok(joined) = HeaderValue::from_bytes(&lines.join(&b", "[..])) {
        headers.insert(header::CONNECTION, joined);
    }
}

/// Whether `key` is what RFC 6455 (section 4.1) asks of `Sec-WebSocket-Key`: 16 bytes in
/// base64.
fn is_websocket_key(key: &[u8]) -> bool {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(key)
        .is_ok_and(|nonce| nonce.len() == 16)
}

/// A WebSocket upgrade with the node's frame limits (`--max-message-bytes`) and small buffers,
/// so idle connections stay cheap.
pub fn with_limits(ws: WebSocketUpgrade, app: &AppState) -> WebSocketUpgrade {
    let limit = app.config.max_message_bytes;
    ws.read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_write_buffer_size(limit.saturating_mul(4).max(1 << 20))
        .max_message_size(limit)
        .max_frame_size(limit)
}
