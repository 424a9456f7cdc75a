//! Where rooms and sessions live: in this process ([`LocalHub`], the default: one node, no
//! external service) or in Redis shared by a cluster of nodes ([`ClusterHub`], `--redis`).
//! The socket tasks and HTTP handlers see one API; each call is answered by the one
//! implementation the server was started with. The cluster's futures are boxed: every socket
//! task embeds the state of the calls it awaits, and a single node's idle connections should
//! not pay for the larger state of the Redis calls.

use std::sync::Arc;
use std::time::Instant;

use crate::admin::RoomSnapshot;
use crate::api::{PeerEntry, RoomView};
use crate::cluster::ClusterHub;
use crate::error::RequestError;
use crate::hub::{
    Attached, Caller, ConnId, Flow, JoinRequest, LocalHub, ResumeRequest, SessionKey,
};
use crate::metrics::Metrics;
use crate::outbound::OutboundTx;
use crate::protocol::{
    ClientMessage, ErrorCode, LeaveReason, PeerId, RequestId, ResumeToken, RoomId, ServerMessage,
};

/// See the module docs.
pub enum Backend {
    Local(Box<LocalHub>),
    Cluster(Arc<ClusterHub>),
}

impl Backend {
    /// Creates a session in the requested room, attached to the caller's queue.
    pub async fn join(
        &self,
        conn: ConnId,
        tx: &OutboundTx,
        req: JoinRequest,
    ) -> Result<Attached, RequestError> {
        match self {
            Self::Local(hub) => hub.join(conn, tx, req, Instant::now()),
            Self::Cluster(hub) => Box::pin(hub.join(conn, tx, req)).await,
        }
    }

    /// Re-attaches a session to the caller's queue; the missed frames come first. A client's
    /// `resume` (not a quiet one of the HTTP transports) is counted by its result.
    pub async fn resume(
        &self,
        conn: ConnId,
        tx: &OutboundTx,
        req: ResumeRequest,
    ) -> Result<Attached, RequestError> {
        let announce = req.announce;
        let result = match self {
            Self::Local(hub) => hub.resume(conn, tx, req, Instant::now()),
            Self::Cluster(hub) => Box::pin(hub.resume(conn, tx, req)).await,
        };
        if announce {
            self.metrics().resume(result.is_ok());
        }
        result
    }

    /// Handles a request of the attached session `key` of `peer`.
    pub async fn handle(
        &self,
        key: SessionKey,
        conn: ConnId,
        peer: &PeerId,
        message: ClientMessage,
    ) -> Flow {
        self.handle_at(key, conn, peer, message, Instant::now())
            .await
    }

    /// Handles a request of the attached session `key` of `peer`, received at `received`
    /// (a `signal` is timed from there to its delivery queued).
    pub async fn handle_at(
        &self,
        key: SessionKey,
        conn: ConnId,
        peer: &PeerId,
        message: ClientMessage,
        received: Instant,
    ) -> Flow {
        match self {
            Self::Local(hub) => handle_timed(hub, key, Caller::Conn(conn), peer, message, received),
            Self::Cluster(hub) => Box::pin(hub.handle(key, conn, message, received)).await,
        }
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Metrics {
        match self {
            Self::Local(hub) => hub.metrics(),
            Self::Cluster(hub) => hub.metrics(),
        }
    }

    /// The rooms, peers and latest `stats` reports the admin page shows (in a cluster: the
    /// rooms with a session on this node, with their peers on every node).
    pub async fn snapshot(&self) -> Result<Vec<RoomSnapshot>, String> {
        match self {
            Self::Local(hub) => Ok(hub.snapshot(Instant::now())),
            Self::Cluster(hub) => Box::pin(hub.snapshot()).await.map_err(|e| e.to_string()),
        }
    }

    /// Handles the requests of an HTTP `send`, in order, for the session `token` names
    /// (attached anywhere, or parked). Stops at the first that ends the session.
    pub async fn handle_by_token(
        &self,
        token: &ResumeToken,
        messages: Vec<ClientMessage>,
    ) -> Result<Flow, RequestError> {
        match self {
            Self::Local(hub) => {
                let (key, peer) = hub.peer_of(token)?;
                let secret = token.as_str().split_once('.').map_or("", |(_, s)| s);
                for message in messages {
                    let caller = Caller::Secret(secret);
                    match handle_timed(hub, key, caller, &peer, message, Instant::now()) {
                        Flow::Continue => {}
                        other => return Ok(other),
                    }
                }
                Ok(Flow::Continue)
            }
            Self::Cluster(hub) => Box::pin(hub.handle_by_token(token, messages)).await,
        }
    }

    /// Why the session `token` names is gone: its end (`replay_overflow`, `kicked`, ...) while
    /// its tombstone lasts, else `resume_failed`.
    pub async fn why_gone(&self, token: &ResumeToken) -> RequestError {
        let unknown = || RequestError::new(ErrorCode::ResumeFailed, "unknown or expired session");
        let checked = match self {
            Self::Local(hub) => hub.peer_of(token).map(drop),
            // No request: only the session's check.
            Self::Cluster(hub) => Box::pin(hub.handle_by_token(token, Vec::new()))
                .await
                .map(drop),
        };
        checked.err().unwrap_or_else(unknown)
    }

    /// Sends an error to an attached session, then closes its socket with `close`, if given,
    /// once the error was written.
    pub async fn reply_error(
        &self,
        key: SessionKey,
        error: RequestError,
        reference: Option<RequestId>,
        close: Option<u16>,
    ) {
        match self {
            Self::Local(hub) => hub.reply_error(key, error, reference, close, Instant::now()),
            Self::Cluster(hub) => Box::pin(hub.reply_error(key, error, reference, close)).await,
        }
    }

    /// The socket of `conn` is gone: park its session for the grace period.
    pub async fn detach(&self, key: SessionKey, conn: ConnId, reason: LeaveReason) {
        match self {
            Self::Local(hub) => hub.detach(key, conn, reason, Instant::now()),
            Self::Cluster(hub) => Box::pin(hub.detach(key, conn, reason)).await,
        }
    }

    /// Periodic work (grace periods, credential refresh).
    pub async fn sweep(&self, now: Instant) {
        match self {
            Self::Local(hub) => hub.sweep(now),
            Self::Cluster(hub) => hub.sweep(now).await,
        }
    }

    /// The rooms with a session on this node.
    pub fn rooms(&self) -> Vec<RoomId> {
        match self {
            Self::Local(hub) => hub.rooms(),
            Self::Cluster(hub) => hub.rooms(),
        }
    }

    /// Sends fresh ICE servers to this node's sessions of `rooms` (their relay changed).
    pub async fn push_ice_servers(&self, rooms: &[RoomId]) {
        match self {
            Self::Local(hub) => hub.push_ice_servers(rooms, Instant::now()),
            Self::Cluster(hub) => hub.push_ice_servers(rooms).await,
        }
    }

    /// Starts draining: no new sessions; every attached session is told to reconnect.
    pub async fn start_draining(&self, reason: &str) {
        match self {
            Self::Local(hub) => hub.start_draining(reason, Instant::now()),
            Self::Cluster(hub) => hub.start_draining(reason).await,
        }
    }

    /// Whether the server is draining.
    pub fn is_draining(&self) -> bool {
        match self {
            Self::Local(hub) => hub.is_draining(),
            Self::Cluster(hub) => hub.is_draining(),
        }
    }

    /// Whether new sessions can be served (false while a cluster node cannot reach Redis).
    pub fn is_available(&self) -> bool {
        match self {
            Self::Local(_) => true,
            Self::Cluster(hub) => hub.is_available(),
        }
    }

    /// Closes every attached socket with 1001 (the end of a drain).
    pub fn close_all(&self) {
        match self {
            Self::Local(hub) => hub.close_all(),
            Self::Cluster(hub) => hub.close_all(),
        }
    }

    /// The node's id in a cluster (`None` on a single node).
    pub fn node_id(&self) -> Option<&str> {
        match self {
            Self::Local(_) => None,
            Self::Cluster(hub) => Some(hub.node_id()),
        }
    }

    /// The peers of `room`, oldest first.
    pub async fn room_peers(&self, room: &RoomId) -> Result<Vec<PeerEntry>, String> {
        match self {
            Self::Local(hub) => Ok(hub.room_peers(room)),
            Self::Cluster(hub) => hub.room_peers(room).await.map_err(|e| e.to_string()),
        }
    }

    /// The rooms with their peers, for the admin API: sorted, at most
    /// [`crate::cluster::MAX_LISTED_ROOMS`] after `after` (if given), and how many there are
    /// (on a cluster: the rooms of every node, read from the shared store).
    pub async fn list_rooms(
        &self,
        after: Option<&RoomId>,
    ) -> Result<(Vec<RoomView>, usize), String> {
        match self {
            Self::Local(hub) => Ok(hub.list_rooms("local", after, Instant::now())),
            Self::Cluster(hub) => Box::pin(hub.list_rooms(after))
                .await
                .map_err(|e| e.to_string()),
        }
    }

    /// Ends `peer`'s session with `kicked`, on whichever node it is. `Ok(false)`: no such
    /// peer.
    pub async fn kick(&self, room: &RoomId, peer: &PeerId) -> Result<bool, String> {
        match self {
            Self::Local(hub) => Ok(hub.kick(room, peer, Instant::now())),
            Self::Cluster(hub) => {
                let message = crate::hub::ended_message(ErrorCode::Kicked);
                Box::pin(hub.end_by_admin(room, Some(peer), ErrorCode::Kicked, message))
                    .await
                    .map(|ended| ended > 0)
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// Ends every session of `room` with `room_closed`, on every node; returns how many.
    pub async fn close_room(&self, room: &RoomId) -> Result<u64, String> {
        match self {
            Self::Local(hub) => Ok(hub.close_room(room, Instant::now())),
            Self::Cluster(hub) => {
                let message = crate::hub::ended_message(ErrorCode::RoomClosed);
                Box::pin(hub.end_by_admin(room, None, ErrorCode::RoomClosed, message))
                    .await
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// Delivers `message` to every peer of `room`; returns to how many.
    pub async fn backend_broadcast(
        &self,
        room: &RoomId,
        message: ServerMessage,
    ) -> Result<u64, String> {
        match self {
            Self::Local(hub) => Ok(hub.backend_broadcast(room, message, Instant::now())),
            Self::Cluster(hub) => {
                let body = serde_json::to_string(&message).map_err(|e| e.to_string())?;
                hub.backend_broadcast(room, &body)
                    .await
                    .map_err(|e| e.to_string())
            }
        }
    }
}

/// A request of a local session received at `received`, handled; a signal it delivered is
/// timed (the hub reads no clock).
fn handle_timed(
    hub: &LocalHub,
    key: SessionKey,
    caller: Caller<'_>,
    peer: &PeerId,
    message: ClientMessage,
    received: Instant,
) -> Flow {
    let handled = hub.handle(key, caller, peer, message, received);
    if handled.signal_delivered {
        hub.metrics().signal_delivered(received);
    }
    handled.flow
}
