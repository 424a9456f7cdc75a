//! The `/ws` upgrade: the last point with HTTP metadata. After the checks every client endpoint
//! makes ([`ClientRequest::admit_socket`]) and a `?token=`, it upgrades with the node's frame
//! limits and hands the socket to its session task.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, State};
use axum::response::Response;
use tracing::Instrument as _;

use crate::AppState;
use crate::client_request::{ClientRequest, Refusal, Upgrade, with_limits};
use crate::protocol::RoomId;
use crate::session::{self, Handshake};

/// `GET /ws`: the room comes in `join`.
pub async fn upgrade(
    State(app): State<Arc<AppState>>,
    client: ClientRequest,
    Upgrade(ws): Upgrade,
) -> Result<Response, Refusal> {
    accept(app, None, client, ws)
}

/// `GET /ws/{room}`: the room comes in the URL (and `join` may repeat it).
pub async fn upgrade_room(
    State(app): State<Arc<AppState>>,
    Path(room): Path<String>,
    client: ClientRequest,
    Upgrade(ws): Upgrade,
) -> Result<Response, Refusal> {
    accept(app, Some(RoomId(room)), client, ws)
}

fn accept(
    app: Arc<AppState>,
    path_room: Option<RoomId>,
    client: ClientRequest,
    ws: WebSocketUpgrade,
) -> Result<Response, Refusal> {
    let (ip_slot, claims) = client.admit_socket_with_claims(&app)?;
    let conn = app.next_conn.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!(
        "conn",
        id = conn,
        client = %client.client_address(&app),
        peer = tracing::field::Empty,
        room = tracing::field::Empty,
        peer_name = tracing::field::Empty
    );
    let handshake = Handshake {
        conn,
        path_room,
        claims,
        ip_slot,
    };
    Ok(with_limits(ws, &app)
        .on_upgrade(move |socket| session::run(socket, app, handshake).instrument(span)))
}
