//! The hub of one process: every room and every session, behind one `std::sync::Mutex`. It
//! composes the pure parts, [`crate::room`] (members, roles, peer index), [`crate::sessions`]
//! (attached or parked, expiry, tombstones) and [`crate::outbox`] (numbering, replay), and
//! decides what each request does to them.
//!
//! All state changes are short synchronous methods given the time of the operation (the hub
//! reads no clock: tests drive it with a fake one). They never `.await` while holding the lock,
//! and the only "sends" they do are non-blocking pushes into each session's bounded
//! outbound queue. Doing those under the lock is what keeps a session's `seq` order equal to its
//! queue order when several peers write to it at once. Payloads are encoded before the lock is
//! taken; under it a frame only gets its `seq` prefixed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::ws::Utf8Bytes;

use crate::admin::{PeerView, RoomSnapshot};
use crate::api::{PeerEntry, RoomView, Transport};
use crate::client_ip::SessionTicket;
use crate::error::{RequestError, Unavailable};
use crate::memory_budget::MemoryBudget;
use crate::metrics::Metrics;
pub use crate::outbound::{Outbound, OutboundRx, OutboundTx};
use crate::outbox::{Body, Frame, Outbox, ReplayGap, ReplayLimits, to_json};
use crate::peer_stats::{PeerLinks, millis};
use crate::protocol::{
    ClientMessage, ConnectionStats, ErrorCode, LeaveReason, PeerId, PeerInfo, RequestId,
    ResumeToken, RoomId, ServerFrame, ServerMessage, SessionInfo, close_code,
};
use crate::resume::{ResumeSecret, parse_token};
use crate::room::Room;
use crate::sessions::{Link, Session, Sessions};
use crate::turn_credentials::IceServerMinter;

/// The hub's key of a session; its hex form is the session id.
pub type SessionKey = u64;
/// The id of one WebSocket connection (for logs, and to tell a stale socket from the current one).
pub type ConnId = u64;

/// The hub's share of the configuration.
#[derive(Debug, Clone)]
pub struct HubSettings {
    pub replay: ReplayLimits,
    pub resume_grace: Duration,
    pub max_peers_per_room: usize,
    pub max_rooms: usize,
    pub max_sessions: usize,
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    pub max_message_bytes: usize,
    pub reconnect_after: Duration,
    /// The node's `--memory-budget` (shared with every connection's queue).
    pub memory: Arc<MemoryBudget>,
}

/// A validated `join`.
#[derive(Debug)]
pub struct JoinRequest {
    pub reference: Option<RequestId>,
    pub version: u32,
    pub room: RoomId,
    pub name: Option<String>,
    /// The session's place among its client address's (`--max-sessions-per-ip`).
    pub ticket: Option<SessionTicket>,
    /// How the client joined (the admin API).
    pub transport: Transport,
    /// The room is this peer's alone (a PeerJS id's): a join into a room that holds anyone
    /// is `room_full`, checked in the same step as the join, so that two clients registering
    /// one id at once cannot both get it.
    pub alone: bool,
}

impl JoinRequest {
    /// How many peers the room may hold with this one: `max_peers_per_room`, or 1 alone.
    pub fn capacity(&self, max_peers_per_room: usize) -> usize {
        if self.alone { 1 } else { max_peers_per_room }
    }
}

/// A `resume` whose version was negotiated.
#[derive(Debug)]
pub struct ResumeRequest {
    pub reference: Option<RequestId>,
    pub version: u32,
    pub token: ResumeToken,
    pub from: ResumeFrom,
    /// Whether the client is told with a `resumed` frame. An HTTP stream re-attaches its
    /// session on every request (SSE reconnect, each long-poll) without one; such a quiet
    /// re-attach goes on while the node drains (as a socket stays open until the drain ends),
    /// where a client coming back with `resume` is sent elsewhere (`draining`).
    pub announce: bool,
    /// A place among the client address's sessions on this node (`--max-sessions-per-ip`),
    /// when one is free: a session that comes from another node of a cluster takes it, and
    /// is refused without one. A session this node holds keeps its own.
    pub ticket: Option<SessionTicket>,
}

/// Where a resume takes up a session's frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeFrom {
    /// After the client's `last_seq`.
    After(u64),
    /// After the last frame the session acknowledged: for a client that keeps no seqs (PeerJS,
    /// whose frames the server acknowledges as it writes them), whichever node wrote them.
    Acknowledged,
}

/// A session now attached to the caller's socket.
#[derive(Debug)]
pub struct Attached {
    pub key: SessionKey,
    pub peer: PeerId,
    /// The session's room, and its name when this node knows it (for the logs).
    pub room: RoomId,
    pub name: Option<String>,
    /// The session's resume token (also its token on the HTTP transports).
    pub token: ResumeToken,
    /// Missed frames to write, in order, before anything from the outbound queue.
    pub replay: Vec<Frame>,
}

impl Attached {
    /// A session that just joined as `peer` (nothing to replay).
    pub fn joined(key: SessionKey, peer: PeerId, req: &JoinRequest, token: ResumeToken) -> Self {
        Self {
            key,
            peer,
            room: req.room.clone(),
            name: req.name.clone(),
            token,
            replay: Vec::new(),
        }
    }
}

/// Who makes a request of a session: the socket it is attached to, or (HTTP `send`, from any
/// node) the holder of its token.
#[derive(Debug, Clone, Copy)]
pub enum Caller<'a> {
    Conn(ConnId),
    /// The secret part of the session's token, checked in constant time.
    Secret(&'a str),
}

/// What the socket task does after a message was handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// The peer left: close the socket normally.
    Left,
    /// The session is gone or belongs to another socket now: close without detaching.
    Gone,
    /// The server cannot serve the session right now (cluster mode: Redis unreachable, or the
    /// room moving between Redis Cluster nodes): close with 1013 so the client resumes shortly.
    Retry(Unavailable),
}

/// What handling one request came to ([`LocalHub::handle`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handled {
    pub flow: Flow,
    /// It was a `signal`, queued to its target (one refused, e.g. `unknown_peer`, was not).
    pub signal_delivered: bool,
}

impl From<Flow> for Handled {
    fn from(flow: Flow) -> Self {
        Self {
            flow,
            signal_delivered: false,
        }
    }
}

/// A request of a session as both hubs route it: a `signal` or `broadcast` with what its
/// receivers get (the payload from the sender, encoded once as `B`), anything else as it came.
pub(crate) enum Request<B> {
    Signal {
        id: Option<RequestId>,
        to: PeerId,
        body: B,
    },
    Broadcast {
        body: B,
    },
    /// Everything else (`Signal` and `Broadcast` never arrive here).
    Other(ClientMessage),
}

impl<B> Request<B> {
    /// `message` of the session of `from`, its payload (if any) encoded by `encode`.
    pub(crate) fn new(
        message: ClientMessage,
        from: &PeerId,
        encode: impl FnOnce(&ServerMessage) -> B,
    ) -> Self {
        match message {
            ClientMessage::Signal {
                id,
                cseq: _,
                to,
                signal,
            } => Self::Signal {
                id,
                to,
                body: encode(&ServerMessage::Signal {
                    from: from.clone(),
                    signal,
                }),
            },
            ClientMessage::Broadcast {
                id: _,
                cseq: _,
                data,
            } => Self::Broadcast {
                body: encode(&ServerMessage::Broadcast {
                    from: from.clone(),
                    data,
                }),
            },
            other => Self::Other(other),
        }
    }
}

/// A session to end once the current operation is done: the error its client is told.
struct Ending {
    key: SessionKey,
    code: ErrorCode,
    /// Ended by the memory budget (the error's message says so).
    over_budget: bool,
}

impl Ending {
    fn new(key: SessionKey, code: ErrorCode) -> Self {
        Self {
            key,
            code,
            over_budget: false,
        }
    }
}

struct HubState {
    /// The time of the operation in progress (every public method is given it: no clock here).
    now: Instant,
    sessions: Sessions,
    rooms: HashMap<RoomId, Room>,
    /// Sessions to end once the current operation is done (slow consumers, overflows).
    ending: Vec<Ending>,
    draining: bool,
    replay_limits: ReplayLimits,
    grace: Duration,
    metrics: Arc<Metrics>,
    memory: Arc<MemoryBudget>,
}

/// Rooms and sessions of one process. See the module docs.
pub struct LocalHub {
    /// The one lock. Never held across `.await`: every method below is synchronous.
    state: Mutex<HubState>,
    settings: HubSettings,
    ice: IceServerMinter,
    metrics: Arc<Metrics>,
}

impl LocalHub {
    /// An empty hub.
    pub fn new(settings: HubSettings, ice: IceServerMinter, metrics: Arc<Metrics>) -> Self {
        let state = HubState {
            now: Instant::now(),
            sessions: Sessions::default(),
            rooms: HashMap::new(),
            ending: Vec::new(),
            draining: false,
            replay_limits: settings.replay,
            grace: settings.resume_grace,
            metrics: Arc::clone(&metrics),
            memory: Arc::clone(&settings.memory),
        };
        Self {
            state: Mutex::new(state),
            settings,
            ice,
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        // A panic while holding the lock would be a bug; the state is still consistent enough
        // to keep serving (every method leaves it consistent between statements that can panic).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The lock, for an operation happening at `now`.
    fn lock_at(&self, now: Instant) -> MutexGuard<'_, HubState> {
        let mut st = self.lock();
        st.now = now;
        st
    }

    /// The hub's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The hub's settings.
    pub fn settings(&self) -> &HubSettings {
        &self.settings
    }

    /// Creates a session in the requested room, attached to the caller's queue, and sends
    /// `welcome` to it and `peer_joined` to the others.
    pub fn join(
        &self,
        conn: ConnId,
        tx: &OutboundTx,
        mut req: JoinRequest,
        now: Instant,
    ) -> Result<Attached, RequestError> {
        let mut st = self.lock_at(now);
        if st.draining {
            return Err(RequestError::draining());
        }
        if st.sessions.len() >= self.settings.max_sessions {
            return Err(RequestError::too_many_sessions());
        }
        match st.rooms.get(&req.room) {
            None if st.rooms.len() >= self.settings.max_rooms => {
                return Err(RequestError::too_many_rooms());
            }
            Some(room) if room.len() >= req.capacity(self.settings.max_peers_per_room) => {
                return Err(RequestError::room_full(
                    &req.room,
                    req.capacity(self.settings.max_peers_per_room),
                ));
            }
            _ => {}
        }
        let key = st.sessions.fresh_key();
        let peer = loop {
            let candidate = PeerId(format!("{:012x}", rand::random::<u64>() >> 16));
            let taken = st
                .rooms
                .get(&req.room)
                .is_some_and(|room| room.session_of(&candidate).is_some());
            if !taken {
                break candidate;
            }
        };
        let secret = ResumeSecret::generate();
        let token = secret.token(key);
        let session = Session {
            peer: peer.clone(),
            name: req.name.clone(),
            room: req.room.clone(),
            version: req.version,
            secret,
            outbox: Outbox::default(),
            link: Link::Attached {
                conn,
                tx: tx.clone(),
            },
            ice_refresh_at: self.ice.refresh_after().map(|d| now + d),
            ticket: req.ticket.take(),
            transport: req.transport,
            joined_at: now,
            links: PeerLinks::default(),
            received: 0,
            unacked_since: None,
        };
        st.sessions.insert(key, session);
        st.rooms
            .entry(req.room.clone())
            .or_default()
            .add(key, peer.clone());

        let info = self.session_info(&st, key);
        st.deliver(
            key,
            ServerMessage::Welcome {
                reference: req.reference,
                session: info,
            },
        );
        let others: Vec<SessionKey> = st.room_of(key).map(|(k, _)| k).collect();
        for other in others {
            st.deliver(
                other,
                ServerMessage::PeerJoined {
                    peer: PeerInfo {
                        id: peer.clone(),
                        name: req.name.clone(),
                        polite: false,
                    },
                },
            );
        }
        st.settle();
        self.update_gauges(&st);
        Ok(Attached::joined(key, peer, &req, token))
    }

    /// Re-attaches a parked (or still attached, if the old socket was not noticed dead yet)
    /// session to the caller's queue. Returns the missed frames to write first; `resumed` is
    /// already queued behind them.
    pub fn resume(
        &self,
        conn: ConnId,
        tx: &OutboundTx,
        req: ResumeRequest,
        now: Instant,
    ) -> Result<Attached, RequestError> {
        let unknown = || RequestError::new(ErrorCode::ResumeFailed, "unknown or expired session");
        let (key, secret) = parse_token(&req.token).ok_or_else(unknown)?;
        let mut st = self.lock_at(now);
        if st.draining && req.announce {
            return Err(RequestError::draining());
        }
        if let Some(code) = st.sessions.tombstone(key, secret) {
            return Err(RequestError::ended(code));
        }
        let Some(session) = st.sessions.get_mut(&key) else {
            return Err(unknown());
        };
        if !session.secret.matches(secret) {
            return Err(unknown());
        }
        let last_seq = match req.from {
            ResumeFrom::After(seq) => seq,
            ResumeFrom::Acknowledged => session.outbox.acked(),
        };
        let replay = match session.outbox.replay_after(last_seq) {
            Ok(replay) => replay,
            Err(ReplayGap::Dropped) => {
                // Frames the client never acknowledged are gone (a socket thought alive took
                // them): the session cannot go on exactly, for this client or any other.
                st.ending.push(Ending::new(key, ErrorCode::ReplayOverflow));
                st.settle();
                self.update_gauges(&st);
                return Err(RequestError::new(
                    ErrorCode::ReplayOverflow,
                    format!(
                        "frames after last_seq {} were dropped before they were acknowledged: \
                         the session ended",
                        last_seq
                    ),
                ));
            }
            Err(ReplayGap::NotSent | ReplayGap::BelowAck) => {
                return Err(RequestError::new(
                    ErrorCode::ResumeFailed,
                    format!(
                        "last_seq {} cannot be resumed exactly (next seq {})",
                        last_seq,
                        session.outbox.next_seq()
                    ),
                ));
            }
        };
        session.acknowledge(last_seq, now, &self.settings.memory);
        let old = std::mem::replace(
            &mut session.link,
            Link::Attached {
                conn,
                tx: tx.clone(),
            },
        );
        if let Link::Attached { tx: old_tx, .. } = old {
            old_tx.close(None, close_code::POLICY);
        }
        // `resumed` carries fresh ICE servers; a quiet re-attach (HTTP) keeps the session's
        // due refresh, which the sweep pushes once due (re-attached every poll, it would
        // otherwise never come).
        if req.announce {
            session.ice_refresh_at = self.ice.refresh_after().map(|d| now + d);
        }
        let (peer, room, name) = (
            session.peer.clone(),
            session.room.clone(),
            session.name.clone(),
        );
        if req.announce {
            session.version = req.version;
            let received = session.received;
            let info = self.session_info(&st, key);
            st.deliver(
                key,
                ServerMessage::Resumed {
                    reference: req.reference,
                    session: info,
                    replayed: replay.len() as u64,
                    received: Some(received),
                },
            );
        }
        st.settle();
        self.update_gauges(&st);
        Ok(Attached {
            key,
            peer,
            room,
            name,
            token: req.token,
            replay,
        })
    }

    /// Handles a request of a session (everything but `join`/`resume`) from `caller`. `peer` is
    /// the session's peer id (from [`Attached`] or [`Self::peer_of`]): signal and broadcast
    /// payloads, up to `max_message_bytes` of SDP, are encoded with it before the lock is taken.
    /// Says also whether the request was a signal queued to its target (the caller times it:
    /// the hub reads no clock).
    pub fn handle(
        &self,
        key: SessionKey,
        caller: Caller<'_>,
        peer: &PeerId,
        message: ClientMessage,
        now: Instant,
    ) -> Handled {
        let cseq = message.cseq();
        let request = Request::new(message, peer, Body::encode);
        let mut st = self.lock_at(now);
        let allowed = st.sessions.get(&key).is_some_and(|s| match caller {
            Caller::Conn(conn) => s.attached_to(conn),
            Caller::Secret(secret) => s.secret.matches(secret) && &s.peer == peer,
        });
        if !allowed {
            return Handled::from(Flow::Gone);
        }
        if let Some(session) = st.sessions.get_mut(&key)
            && !session.first_sight(cseq)
        {
            self.metrics.duplicates_dropped.inc();
            return Handled::from(Flow::Continue);
        }
        let mut flow = Flow::Continue;
        let mut signal_delivered = false;
        match request {
            Request::Signal { id, to, body } => {
                let target = st
                    .sessions
                    .get(&key)
                    .and_then(|s| st.rooms.get(&s.room))
                    .and_then(|room| room.session_of(&to))
                    .filter(|target| *target != key);
                match target {
                    Some(target) => {
                        st.deliver_body(target, &body);
                        self.metrics.messages_relayed.inc();
                        signal_delivered = true;
                    }
                    None => {
                        let room = st.sessions.get(&key).map(|s| s.room.clone());
                        let room = room.map(|r| r.0).unwrap_or_default();
                        st.error(
                            key,
                            ErrorCode::UnknownPeer,
                            format!("no peer {to} in room {room}; nothing was delivered"),
                            id,
                        );
                    }
                }
            }
            Request::Broadcast { body } => {
                let others: Vec<SessionKey> = st.room_of(key).map(|(k, _)| k).collect();
                for other in others {
                    st.deliver_body(other, &body);
                    self.metrics.messages_relayed.inc();
                }
            }
            Request::Other(ClientMessage::Ack { seq }) => {
                if let Some(session) = st.sessions.get_mut(&key) {
                    session.acknowledge(seq, now, &self.settings.memory);
                }
            }
            Request::Other(ClientMessage::Ping { id }) => {
                let received = st.sessions.get(&key).map_or(0, |s| s.received);
                let pong = ServerMessage::Pong {
                    reference: id,
                    received: Some(received),
                };
                st.deliver(key, pong);
            }
            Request::Other(ClientMessage::Leave { .. }) => {
                st.end_session(key, None, LeaveReason::Left);
                flow = Flow::Left;
            }
            Request::Other(ClientMessage::Stats { id, report }) => {
                self.record_stats(&mut st, key, id, report);
            }
            Request::Other(ClientMessage::Signal { .. } | ClientMessage::Broadcast { .. }) => {
                unreachable!("Request::new routes every signal and broadcast")
            }
            Request::Other(ClientMessage::Join { id, .. } | ClientMessage::Resume { id, .. }) => st
                .error(
                    key,
                    ErrorCode::AlreadyJoined,
                    "this socket already has a session".into(),
                    id,
                ),
        }
        st.settle();
        self.update_gauges(&st);
        Handled {
            flow,
            signal_delivered,
        }
    }

    /// A `stats` report of session `key`: checked, then kept as its latest about that peer.
    fn record_stats(
        &self,
        st: &mut HubState,
        key: SessionKey,
        id: Option<RequestId>,
        report: ConnectionStats,
    ) {
        if let Err(message) = report.check() {
            st.error(key, ErrorCode::InvalidMessage, message, id);
            return;
        }
        let known = st
            .sessions
            .get(&key)
            .and_then(|s| st.rooms.get(&s.room))
            .and_then(|room| room.session_of(&report.peer))
            .is_some_and(|target| target != key);
        if !known {
            let message = crate::peer_stats::unknown_peer_message(&report.peer);
            st.error(key, ErrorCode::UnknownPeer, message, id);
            return;
        }
        let now = st.now;
        let capacity = self.settings.max_peers_per_room;
        let Some(session) = st.sessions.get_mut(&key) else {
            return;
        };
        let recorded = session.links.record(report, now, capacity);
        self.metrics
            .stats_report(&recorded, now.saturating_duration_since(session.joined_at));
    }

    /// What the admin page shows of this node's rooms at `now`: every room, its peers and
    /// their latest reports.
    pub fn snapshot(&self, now: Instant) -> Vec<RoomSnapshot> {
        let st = self.lock();
        let mut rooms: Vec<RoomSnapshot> = st
            .rooms
            .iter()
            .map(|(id, room)| RoomSnapshot {
                room: id.0.clone(),
                peers: room
                    .members()
                    .iter()
                    .filter_map(|k| st.sessions.get(k))
                    .map(|s| PeerView {
                        entry: entry_of(s, "local", None),
                        connected_ms: Some(millis(now.saturating_duration_since(s.joined_at))),
                        links: s.links.links().iter().map(|l| l.view(now)).collect(),
                    })
                    .collect(),
            })
            .collect();
        rooms.sort_by(|a, b| a.room.cmp(&b.room));
        rooms
    }

    /// The session and peer id a token names, if the session exists and the secret matches
    /// (an ended session's tombstone answers with its code).
    pub fn peer_of(&self, token: &ResumeToken) -> Result<(SessionKey, PeerId), RequestError> {
        let unknown = || RequestError::new(ErrorCode::ResumeFailed, "unknown or expired session");
        let (key, secret) = parse_token(token).ok_or_else(unknown)?;
        let st = self.lock();
        if let Some(code) = st.sessions.tombstone(key, secret) {
            return Err(RequestError::ended(code));
        }
        match st.sessions.get(&key) {
            Some(session) if session.secret.matches(secret) => Ok((key, session.peer.clone())),
            _ => Err(unknown()),
        }
    }

    /// The peers of `room`, oldest first (the backend API).
    pub fn room_peers(&self, room: &RoomId) -> Vec<PeerEntry> {
        let st = self.lock();
        st.rooms
            .get(room)
            .map(|members| st.peer_entries(members, "local", Some(Instant::now())))
            .unwrap_or_default()
    }

    /// The rooms here, sorted, the first [`crate::cluster::MAX_LISTED_ROOMS`] after `after`
    /// (if given), each with its peers (oldest first) and how long each has been connected at
    /// `now`; and how many rooms there are in all (the admin API).
    pub fn list_rooms(
        &self,
        node: &str,
        after: Option<&RoomId>,
        now: Instant,
    ) -> (Vec<RoomView>, usize) {
        let st = self.lock();
        let mut ids: Vec<&RoomId> = st.rooms.keys().collect();
        ids.sort();
        let rooms = ids
            .into_iter()
            .filter(|room| after.is_none_or(|after| *room > after))
            .take(crate::cluster::MAX_LISTED_ROOMS)
            .map(|room| RoomView {
                room: room.clone(),
                peers: st.peer_entries(&st.rooms[room], node, Some(now)),
            })
            .collect();
        (rooms, st.rooms.len())
    }

    /// Ends the session of `peer` in `room` with `kicked` (admin API): it is told, its socket
    /// closes with 1008, a resume is refused with `kicked`, and the room gets `peer_left`.
    /// False when no such peer is here.
    pub fn kick(&self, room: &RoomId, peer: &PeerId, now: Instant) -> bool {
        let mut st = self.lock_at(now);
        let Some(key) = st.rooms.get(room).and_then(|r| r.session_of(peer)) else {
            return false;
        };
        st.ending.push(Ending::new(key, ErrorCode::Kicked));
        st.settle();
        self.update_gauges(&st);
        true
    }

    /// Ends every session of `room` with `room_closed` (admin API); returns how many.
    pub fn close_room(&self, room: &RoomId, now: Instant) -> u64 {
        let mut st = self.lock_at(now);
        let members = st.members_of(room);
        // Newest first: `settle` pops from the end, so the oldest peer ends last.
        st.ending.extend(
            members
                .iter()
                .map(|k| Ending::new(*k, ErrorCode::RoomClosed)),
        );
        st.settle();
        self.update_gauges(&st);
        members.len() as u64
    }

    /// Delivers `message` (from the backend) to every peer of `room`; returns to how many.
    pub fn backend_broadcast(&self, room: &RoomId, message: ServerMessage, now: Instant) -> u64 {
        let mut st = self.lock_at(now);
        let members = st.members_of(room);
        let body = Body::encode(&message);
        for key in &members {
            st.deliver_body(*key, &body);
            self.metrics.messages_relayed.inc();
        }
        st.settle();
        self.update_gauges(&st);
        members.len() as u64
    }

    /// Sends an error to an attached session (for errors found before the hub, e.g. parsing),
    /// then closes its socket with `close`, if given.
    pub fn reply_error(
        &self,
        key: SessionKey,
        error: RequestError,
        reference: Option<RequestId>,
        close: Option<u16>,
        now: Instant,
    ) {
        let mut st = self.lock_at(now);
        st.error(key, error.code, error.message.into_owned(), reference);
        if let (
            Some(code),
            Some(Session {
                link: Link::Attached { tx, .. },
                ..
            }),
        ) = (close, st.sessions.get(&key))
        {
            // Behind the error in the queue, so the client reads it before the close.
            tx.close(None, code);
        }
        st.settle();
        self.update_gauges(&st);
    }

    /// The socket of `conn` is gone: park its session for the grace period (unless the session
    /// was already taken over by a newer socket or ended).
    pub fn detach(&self, key: SessionKey, conn: ConnId, reason: LeaveReason, now: Instant) {
        let mut st = self.lock_at(now);
        let expires = now + st.grace;
        st.sessions.park(key, conn, expires, reason);
    }

    /// Periodic work: ends parked sessions whose grace period is over, pushes fresh ICE servers
    /// to sessions whose TURN credentials near expiry, forgets old tombstones.
    pub fn sweep(&self, now: Instant) {
        let mut st = self.lock_at(now);
        let due = st.sessions.due(now);
        for (key, reason) in due.expired {
            st.end_session(key, None, reason);
        }
        let next_refresh = self.ice.refresh_after().map(|d| now + d);
        let wall = SystemTime::now();
        for key in due.ice_refresh {
            let Some(session) = st.sessions.get_mut(&key) else {
                continue;
            };
            session.ice_refresh_at = next_refresh;
            let ice_servers = self.ice.mint(&session.peer, &session.room, wall);
            st.deliver(key, ServerMessage::IceServers { ice_servers });
        }
        st.sessions.forget_tombstones(now);
        st.settle();
        self.update_gauges(&st);
    }

    /// The rooms with a session here.
    pub fn rooms(&self) -> Vec<RoomId> {
        self.lock().rooms.keys().cloned().collect()
    }

    /// Sends fresh ICE servers to every session of `rooms` (their relay changed).
    pub fn push_ice_servers(&self, rooms: &[RoomId], now: Instant) {
        let mut st = self.lock_at(now);
        let wall = SystemTime::now();
        for room in rooms {
            let members: Vec<SessionKey> = match st.rooms.get(room) {
                Some(r) => r.members().to_vec(),
                None => continue,
            };
            for key in members {
                let Some(peer) = st.sessions.get(&key).map(|s| s.peer.clone()) else {
                    continue;
                };
                let ice_servers = self.ice.mint(&peer, room, wall);
                st.deliver(key, ServerMessage::IceServers { ice_servers });
            }
        }
        st.settle();
    }

    /// Starts draining: refuses new sessions and tells every attached session to reconnect.
    pub fn start_draining(&self, reason: &str, now: Instant) {
        let mut st = self.lock_at(now);
        st.draining = true;
        let keys: Vec<SessionKey> = st.sessions.keys().copied().collect();
        let reconnect_after_ms = self.settings.reconnect_after.as_millis() as u64;
        for key in keys {
            st.deliver(
                key,
                ServerMessage::Draining {
                    reason: reason.to_owned(),
                    reconnect_after_ms,
                },
            );
        }
        st.settle();
    }

    /// Whether the server is draining.
    pub fn is_draining(&self) -> bool {
        self.lock().draining
    }

    /// Closes every attached socket with 1001 (the end of a drain).
    pub fn close_all(&self) {
        let st = self.lock();
        for session in st.sessions.values() {
            if let Link::Attached { tx, .. } = &session.link {
                tx.close(None, close_code::GOING_AWAY);
            }
        }
    }

    fn session_info(&self, st: &HubState, key: SessionKey) -> SessionInfo {
        let peers = st
            .room_of(key)
            .filter_map(|(k, polite)| {
                st.sessions.get(&k).map(|s| PeerInfo {
                    id: s.peer.clone(),
                    name: s.name.clone(),
                    polite,
                })
            })
            .collect();
        let (peer, room, version, secret) = st.sessions.get(&key).map_or_else(
            || {
                (
                    PeerId::from(""),
                    RoomId::from(""),
                    0,
                    ResumeSecret::generate(),
                )
            },
            |s| (s.peer.clone(), s.room.clone(), s.version, s.secret),
        );
        SessionInfo {
            version,
            ice_servers: self.ice.mint(&peer, &room, SystemTime::now()),
            peer_id: peer,
            session_id: format!("{key:016x}").into(),
            room,
            peers,
            ping_interval_ms: self.settings.ping_interval.as_millis() as u64,
            ping_timeout_ms: self.settings.ping_timeout.as_millis() as u64,
            resume_token: secret.token(key),
            resume_grace_ms: self.settings.resume_grace.as_millis() as u64,
            max_message_bytes: self.settings.max_message_bytes,
        }
    }

    fn update_gauges(&self, st: &HubState) {
        self.metrics.sessions.set(st.sessions.len() as i64);
        self.metrics.rooms.set(st.rooms.len() as i64);
    }
}

/// A session as the APIs list it: served by `node`; with `now`, with its connected time.
fn entry_of(s: &Session, node: &str, now: Option<Instant>) -> PeerEntry {
    PeerEntry {
        id: s.peer.0.clone(),
        name: s.name.clone(),
        node: node.to_owned(),
        state: match s.link {
            Link::Attached { .. } => "attached",
            Link::Parked { .. } => "parked",
        },
        transport: Some(s.transport),
        connected_secs: now.map(|now| now.saturating_duration_since(s.joined_at).as_secs()),
    }
}

/// Encodes a whole frame (for frames that are not numbered by an outbox: `seq` 0 errors, the
/// last error of an ended session).
pub fn encode(frame: &ServerFrame) -> Utf8Bytes {
    Utf8Bytes::from(to_json(frame))
}

impl HubState {
    /// The members of `room` as the APIs list them, oldest first; with `now`, each with its
    /// connected time.
    fn peer_entries(&self, room: &Room, node: &str, now: Option<Instant>) -> Vec<PeerEntry> {
        room.members()
            .iter()
            .filter_map(|k| self.sessions.get(k))
            .map(|s| entry_of(s, node, now))
            .collect()
    }

    /// The other members of `key`'s room, oldest first, with whether `key` is polite to each.
    fn room_of(&self, key: SessionKey) -> impl Iterator<Item = (SessionKey, bool)> + '_ {
        self.sessions
            .get(&key)
            .and_then(|s| self.rooms.get(&s.room))
            .into_iter()
            .flat_map(move |room| room.others_with_roles(key))
    }

    /// Encodes `message` and delivers it to session `key` (see [`Self::deliver_body`]).
    fn deliver(&mut self, key: SessionKey, message: ServerMessage) {
        self.deliver_body(key, &Body::encode(&message));
    }

    /// Numbers `body` for session `key`, keeps it for replay, and queues it if attached.
    /// A full queue or an overflowing parked buffer marks the session for ending.
    fn deliver_body(&mut self, key: SessionKey, body: &Body) {
        let Some(session) = self.sessions.get_mut(&key) else {
            return;
        };
        // A session about to end gets nothing more: its error is the next frame it sees.
        if self.ending.iter().any(|e| e.key == key) {
            return;
        }
        // Keep the last slot for the error that ends a slow consumer. A frame that does not
        // fit takes no number: the error takes the next one (the frames still queued are
        // dropped when the session ends, so the client may see a gap before it).
        if let Link::Attached { tx, .. } = &session.link
            && !tx.has_room(body.numbered(session.outbox.next_seq()).len())
        {
            self.ending.push(Ending::new(key, ErrorCode::SlowConsumer));
            return;
        }
        let before = session.outbox.bytes();
        let frame = session.outbox.push(body);
        session.sent(self.now);
        match &session.link {
            Link::Attached { tx, .. } => {
                session.outbox.trim(self.replay_limits);
                self.memory.resize(before, session.outbox.bytes());
                tx.push(frame);
            }
            Link::Parked { .. } => {
                self.memory.resize(before, session.outbox.bytes());
                if session.outbox.over(self.replay_limits) {
                    self.ending
                        .push(Ending::new(key, ErrorCode::ReplayOverflow));
                }
            }
        }
    }

    fn error(
        &mut self,
        key: SessionKey,
        code: ErrorCode,
        message: String,
        reference: Option<RequestId>,
    ) {
        self.metrics.error(code);
        self.deliver(
            key,
            ServerMessage::Error {
                code,
                message,
                reference,
            },
        );
    }

    /// The sessions of `room`, oldest first (none for an unknown room).
    fn members_of(&self, room: &RoomId) -> Vec<SessionKey> {
        self.rooms
            .get(room)
            .map(|r| r.members().to_vec())
            .unwrap_or_default()
    }

    /// Ends the sessions marked during the operation (which may mark more: a `peer_left` can
    /// overflow another parked session).
    fn settle(&mut self) {
        loop {
            while let Some(ending) = self.ending.pop() {
                self.end_session(ending.key, Some(ending), LeaveReason::Ended);
            }
            if !self.memory.over() {
                return;
            }
            self.evict_over_budget();
            if self.ending.is_empty() {
                return;
            }
        }
    }

    /// Past the memory budget: marks sessions for ending until what they hold would bring the
    /// count back under nine tenths of the budget. The candidates are the connected sessions
    /// that hold frames, queued or written and not acknowledged (`slow_consumer`; what ending
    /// one frees is its queue and its replay buffer), and the parked sessions
    /// (`replay_overflow`; their replay buffers). First the parked ones and those that have
    /// not acknowledged for [`crate::sessions::ACK_OVERDUE`] (a client that stopped reading
    /// may have had every frame written into its socket's buffers, its queue empty), most
    /// held first; then the others, most held first: a client that reads and acknowledges,
    /// however much it holds within its acknowledgement window (big frames), ends last.
    fn evict_over_budget(&mut self) {
        // The sessions ended so far dropped their queues as they ended: nothing is pending.
        let mut excess = self.memory.excess();
        // (acknowledging, held, key, code): `false` sorts first.
        let mut victims: Vec<(bool, usize, SessionKey, ErrorCode)> = Vec::new();
        for (key, session) in self.sessions.iter() {
            let (acknowledging, held, code) = match &session.link {
                Link::Attached { tx, .. } => (
                    !session.ack_overdue(self.now),
                    tx.queued_bytes() + session.outbox.bytes(),
                    ErrorCode::SlowConsumer,
                ),
                Link::Parked { .. } => (false, session.outbox.bytes(), ErrorCode::ReplayOverflow),
            };
            if held > 0 {
                victims.push((acknowledging, held, *key, code));
            }
        }
        victims.sort_unstable_by_key(|&(acknowledging, held, key, _)| {
            (acknowledging, std::cmp::Reverse(held), key)
        });
        for (_, bytes, key, code) in victims {
            if excess == 0 || bytes == 0 {
                break;
            }
            tracing::warn!(
                session = %format!("{key:016x}"),
                %code,
                bytes,
                used = self.memory.used(),
                budget = self.memory.limit(),
                "over the memory budget: ending the session that holds the most"
            );
            self.metrics.budget_evictions.inc();
            self.ending.push(Ending {
                key,
                code,
                over_budget: true,
            });
            excess = excess.saturating_sub(bytes);
        }
    }

    /// Removes a session for good and tells the rest of its room.
    fn end_session(&mut self, key: SessionKey, error: Option<Ending>, reason: LeaveReason) {
        let Some(session) = self.sessions.remove(&key) else {
            return;
        };
        self.memory.release(session.outbox.bytes());
        let mut others = Vec::new();
        if let Some(room) = self.rooms.get_mut(&session.room) {
            room.remove(key, &session.peer);
            others.extend_from_slice(room.members());
            if room.is_empty() {
                self.rooms.remove(&session.room);
            }
        }
        if error.is_none()
            && reason == LeaveReason::Left
            && let Link::Attached { tx, .. } = &session.link
        {
            // A `leave` that came by HTTP `send` while a stream is attached.
            tx.close(None, close_code::NORMAL);
        }
        if let Some(Ending {
            code, over_budget, ..
        }) = error
        {
            self.metrics.error(code);
            tracing::info!(peer = %session.peer, %code, "session ended");
            self.sessions
                .bury(key, code, session.secret, self.now + self.grace);
            if let Link::Attached { tx, .. } = &session.link {
                let message = match code {
                    _ if over_budget => {
                        "the server is over its memory budget and this session held among the \
                         most: the session ended"
                    }
                    _ => ended_message(code),
                };
                let frame = encode(&ServerFrame {
                    seq: session.outbox.next_seq(),
                    message: ServerMessage::Error {
                        code,
                        message: message.into(),
                        reference: None,
                    },
                });
                if code == ErrorCode::SlowConsumer {
                    // Its client does not read: what is queued would only wait for the
                    // stalled write to give up, held in the memory budget meanwhile.
                    tx.discard_and_close(Some(frame), close_code::POLICY);
                } else {
                    tx.close(Some(frame), close_code::POLICY);
                }
            }
        }
        tracing::info!(
            peer = %session.peer,
            room = %session.room,
            name = session.name.as_deref().unwrap_or(""),
            ?reason,
            "left the room"
        );
        for other in others {
            if let Some(s) = self.sessions.get_mut(&other) {
                s.links.forget(&session.peer);
            }
            self.deliver(
                other,
                ServerMessage::PeerLeft {
                    peer_id: session.peer.clone(),
                    reason,
                },
            );
        }
    }
}

/// The `message` of the error that ends a session with `code`, on one node or a cluster.
pub(crate) fn ended_message(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::SlowConsumer => "too many unread messages: the session ended",
        ErrorCode::ReplayOverflow => "the replay buffer overflowed: the session ended",
        ErrorCode::Kicked => "an operator removed you from the room",
        ErrorCode::RoomClosed => "an operator closed the room",
        _ => "the session ended",
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{IceCandidate, Signal};
    use clap::Parser as _;

    fn hub(replay_max_messages: usize) -> LocalHub {
        hub_with_budget(replay_max_messages, Arc::new(MemoryBudget::unlimited()))
    }

    fn hub_with_budget(replay_max_messages: usize, memory: Arc<MemoryBudget>) -> LocalHub {
        let settings = HubSettings {
            replay: ReplayLimits {
                max_messages: replay_max_messages,
                max_bytes: 1 << 20,
            },
            resume_grace: Duration::from_secs(30),
            max_peers_per_room: 4,
            max_rooms: 10,
            max_sessions: 10,
            ping_interval: Duration::from_secs(10),
            ping_timeout: Duration::from_secs(30),
            max_message_bytes: 65536,
            reconnect_after: Duration::from_secs(1),
            memory,
        };
        let config = crate::config::Config::parse_from(["signaling"]);
        LocalHub::new(
            settings,
            IceServerMinter::from_config(&config),
            Arc::new(Metrics::default()),
        )
    }

    fn join(hub: &LocalHub, conn: ConnId, queue: usize) -> (Attached, OutboundRx) {
        let (tx, rx) = crate::outbound::queue(queue, 1 << 20, &hub.settings.memory);
        let attached = hub
            .join(
                conn,
                &tx,
                JoinRequest {
                    reference: None,
                    version: 1,
                    room: "r".into(),
                    name: None,
                    ticket: None,
                    transport: Transport::WebSocket,
                    alone: false,
                },
                Instant::now(),
            )
            .unwrap();
        (attached, rx)
    }

    fn frames(rx: &mut OutboundRx) -> Vec<ServerFrame> {
        let mut out = Vec::new();
        while let Some(item) = rx.try_recv() {
            let text = match item {
                Outbound::Frame(frame) => frame.text(),
                Outbound::Close {
                    frame: Some(text), ..
                } => text,
                Outbound::Close { frame: None, .. } => continue,
            };
            out.push(serde_json::from_str(text.as_str()).unwrap());
        }
        out
    }

    fn candidate(n: u32) -> Signal {
        Signal::Candidate {
            candidate: IceCandidate {
                candidate: format!("candidate:{n}"),
                sdp_mid: None,
                sdp_m_line_index: None,
                username_fragment: None,
            },
        }
    }

    fn send(hub: &LocalHub, from: &Attached, conn: ConnId, to: &Attached, n: u32) -> Flow {
        send_signal(hub, from, conn, to, candidate(n))
    }

    fn send_signal(
        hub: &LocalHub,
        from: &Attached,
        conn: ConnId,
        to: &Attached,
        signal: Signal,
    ) -> Flow {
        hub.handle(
            from.key,
            Caller::Conn(conn),
            &from.peer,
            ClientMessage::Signal {
                id: None,
                cseq: None,
                to: to.peer.clone(),
                signal,
            },
            Instant::now(),
        )
        .flow
    }

    /// What a session's end tells the others: (peer, reason) of each `peer_left` in `frames`.
    fn left(frames: &[ServerFrame]) -> Vec<(PeerId, LeaveReason)> {
        frames
            .iter()
            .filter_map(|f| match &f.message {
                ServerMessage::PeerLeft { peer_id, reason } => Some((peer_id.clone(), *reason)),
                _ => None,
            })
            .collect()
    }

    /// A hub that keeps up to 10,000 frames a session under a memory budget of 20 KB, and
    /// sessions A, B and C (connections 1 to 3, queues of 1000 frames) of its room "r"; what A
    /// and C were sent so far is read.
    fn over_budget() -> (Arc<MemoryBudget>, LocalHub, [(Attached, OutboundRx); 3]) {
        let memory = Arc::new(MemoryBudget::new(20_000));
        let hub = hub_with_budget(10_000, Arc::clone(&memory));
        let [mut a, b, mut c] = [1, 2, 3].map(|conn| join(&hub, conn, 1000));
        frames(&mut a.1);
        frames(&mut c.1);
        (memory, hub, [a, b, c])
    }

    /// Asserts that A was told of the end of `who`'s session by the memory budget and of no
    /// other since it last read, and that the budget holds again.
    fn assert_budget_ended(
        memory: &MemoryBudget,
        a_rx: &mut OutboundRx,
        who: &Attached,
        why: &str,
    ) {
        let gone = left(&frames(a_rx));
        assert_eq!(gone, [(who.peer.clone(), LeaveReason::Ended)], "{why}");
        assert!(
            memory.used() <= memory.limit(),
            "{} > {}",
            memory.used(),
            memory.limit()
        );
    }

    /// Offers of 3 KB from A to C, which reads and acknowledges each at once, until the memory
    /// budget ends a session (the first offer takes the count past it).
    fn offers_to_a_reader_until_one_ends(
        hub: &LocalHub,
        a: &Attached,
        c: &Attached,
        c_rx: &mut OutboundRx,
    ) {
        let offer = Signal::Offer {
            sdp: "x".repeat(3000),
            ice_restart: false,
        };
        let mut m = 0;
        while hub.room_peers(&"r".into()).len() == 3 && m < 100 {
            send_signal(hub, a, 1, c, offer.clone());
            for frame in frames(c_rx) {
                let ack = ClientMessage::Ack { seq: frame.seq };
                hub.handle(c.key, Caller::Conn(3), &c.peer, ack, Instant::now());
            }
            m += 1;
        }
        assert!(m < 100, "nobody was ended");
    }

    /// A parked session that holds more ends before a client that reads and acknowledges
    /// everything, although the frame that took the count past the budget is in that client's
    /// queue at that moment.
    #[test]
    fn past_the_memory_budget_a_parked_session_holding_more_ends_before_a_reader() {
        let (memory, hub, [(a, mut a_rx), (b, _b_rx), (c, mut c_rx)]) = over_budget();
        hub.detach(b.key, 2, LeaveReason::Disconnected, Instant::now());
        let mut n = 0;
        while memory.used() < 18_000 && n < 1000 {
            send(&hub, &a, 1, &b, n);
            n += 1;
        }
        offers_to_a_reader_until_one_ends(&hub, &a, &c, &mut c_rx);
        assert_budget_ended(&memory, &mut a_rx, &b, "B: it held the most");
    }

    /// A connected client whose frames were all written but none acknowledged (a client that
    /// stopped reading behind its socket's buffers) and that holds more ends before a client
    /// that reads and acknowledges, though the frame that took the count past the budget is
    /// in the latter's queue.
    #[test]
    fn past_the_memory_budget_a_session_holding_unacknowledged_frames_ends_before_a_reader() {
        let (memory, hub, [(a, mut a_rx), (b, mut b_rx), (c, mut c_rx)]) = over_budget();
        let mut n = 0;
        while memory.used() < 18_000 && n < 1000 {
            send(&hub, &a, 1, &b, n);
            // Written to B's socket, never acknowledged: nothing queued, all in its buffer.
            frames(&mut b_rx);
            n += 1;
        }
        offers_to_a_reader_until_one_ends(&hub, &a, &c, &mut c_rx);
        assert_budget_ended(
            &memory,
            &mut a_rx,
            &b,
            "B: it held the most, unacknowledged",
        );
    }

    /// A client that stopped acknowledging (a second ago) ends before one that acknowledges
    /// on time, although the latter holds more within its acknowledgement window (big frames,
    /// acknowledged every four).
    #[test]
    fn past_the_memory_budget_a_session_that_stopped_acknowledging_ends_before_a_bigger_reader() {
        let (memory, hub, [(a, mut a_rx), (b, mut b_rx), (c, mut c_rx)]) = over_budget();
        let t0 = Instant::now();
        let signal_at = |to: &Attached, signal: Signal, at: Instant| {
            let message = ClientMessage::Signal {
                id: None,
                cseq: None,
                to: to.peer.clone(),
                signal,
            };
            hub.handle(a.key, Caller::Conn(1), &a.peer, message, at)
        };
        // C acknowledges what it has read so far, as a client does within 200 ms.
        signal_at(&c, candidate(0), t0);
        if let Some(last) = frames(&mut c_rx).last() {
            let ack = ClientMessage::Ack { seq: last.seq };
            hub.handle(c.key, Caller::Conn(3), &c.peer, ack, t0);
        }
        // B is sent 6 KB, all written to its socket, and acknowledges nothing.
        for n in 0..6 {
            let offer = Signal::Offer {
                sdp: "b".repeat(1000 + n),
                ice_restart: false,
            };
            signal_at(&b, offer, t0);
        }
        frames(&mut b_rx);
        // Two seconds on, C reads offers of 3 KB and acknowledges every fourth: it holds up
        // to 12 KB, more than B, until the budget ends someone.
        let later = t0 + Duration::from_secs(2);
        let mut m = 0;
        while hub.room_peers(&"r".into()).len() == 3 && m < 100 {
            let offer = Signal::Offer {
                sdp: "c".repeat(3000),
                ice_restart: false,
            };
            signal_at(&c, offer, later);
            let read = frames(&mut c_rx);
            if m % 4 == 3
                && let Some(last) = read.last()
            {
                let ack = ClientMessage::Ack { seq: last.seq };
                hub.handle(c.key, Caller::Conn(3), &c.peer, ack, later);
            }
            m += 1;
        }
        assert!(m < 100, "nobody was ended");
        assert_budget_ended(&memory, &mut a_rx, &b, "B: it stopped acknowledging");
    }

    #[test]
    fn past_the_memory_budget_the_biggest_holder_ends_first_a_silent_consumer_then_a_parked_one() {
        // B never reads, C reads everything.
        let (memory, hub, [(a, mut a_rx), (b, _b_rx), (c, mut c_rx)]) = over_budget();
        // Signals to B pile up in its queue and replay buffer; to C, only in its buffer (it
        // reads, and acks nothing).
        let mut n = 0;
        while hub.room_peers(&"r".into()).len() == 3 && n < 1000 {
            send(&hub, &a, 1, &b, n);
            send(&hub, &a, 1, &c, n);
            frames(&mut c_rx);
            n += 1;
        }
        assert!(n < 1000, "nobody was ended");
        assert_budget_ended(&memory, &mut a_rx, &b, "B first: it held the most");
        assert_eq!(hub.metrics.budget_evictions.get(), 1);

        // C parks; what it is sent waits in its buffer until the budget ends it too.
        hub.detach(c.key, 3, LeaveReason::Disconnected, Instant::now());
        let mut m = 0;
        while hub.room_peers(&"r".into()).len() == 2 && m < 2000 {
            send(&hub, &a, 1, &c, m);
            m += 1;
        }
        assert!(m < 2000, "the parked session was never ended");
        assert_budget_ended(&memory, &mut a_rx, &c, "then C: parked, it holds the most");
        drop(_b_rx);
    }

    #[test]
    fn seqs_are_contiguous_and_roles_follow_join_order() {
        let hub = hub(64);
        let (a, mut a_rx) = join(&hub, 1, 16);
        let (b, mut b_rx) = join(&hub, 2, 16);
        let a_frames = frames(&mut a_rx);
        assert_eq!(a_frames.iter().map(|f| f.seq).collect::<Vec<_>>(), [1, 2]);
        assert!(matches!(
            &a_frames[1].message,
            ServerMessage::PeerJoined { peer } if peer.id == b.peer && !peer.polite
        ));
        let b_frames = frames(&mut b_rx);
        match &b_frames[0].message {
            ServerMessage::Welcome { session, .. } => {
                assert_eq!(session.peers.len(), 1);
                assert!(session.peers[0].polite);
            }
            other => panic!("{other:?}"),
        }
        for n in 0..3 {
            assert_eq!(send(&hub, &a, 1, &b, n), Flow::Continue);
        }
        let seqs: Vec<u64> = frames(&mut b_rx).iter().map(|f| f.seq).collect();
        assert_eq!(seqs, [2, 3, 4]);
        // A stale connection id cannot act for the session.
        assert_eq!(send(&hub, &a, 99, &b, 9), Flow::Gone);
    }

    #[test]
    fn parked_sessions_buffer_and_resume_exactly() {
        let ParkedPair {
            hub,
            a,
            a_rx: _a_rx,
            b,
            token: welcome_token,
            t0: _,
        } = parked_pair(64, LeaveReason::Disconnected);
        for n in 0..5 {
            send(&hub, &a, 1, &b, n);
        }
        let (tx, mut rx) =
            crate::outbound::queue(16, 1 << 20, &Arc::new(MemoryBudget::unlimited()));
        let resumed = hub
            .resume(
                3,
                &tx,
                ResumeRequest {
                    reference: None,
                    version: 1,
                    token: welcome_token,
                    from: ResumeFrom::After(1),
                    announce: true,
                    ticket: None,
                },
                Instant::now(),
            )
            .unwrap();
        assert_eq!(resumed.peer, b.peer);
        let replayed: Vec<ServerFrame> = resumed
            .replay
            .iter()
            .map(|f| serde_json::from_str(f.text().as_str()).unwrap())
            .collect();
        assert_eq!(
            replayed.iter().map(|f| f.seq).collect::<Vec<_>>(),
            [2, 3, 4, 5, 6]
        );
        let after = frames(&mut rx);
        assert!(matches!(
            after[0],
            ServerFrame {
                seq: 7,
                message: ServerMessage::Resumed { replayed: 5, .. }
            }
        ));
    }

    #[test]
    fn a_full_queue_ends_the_session_with_slow_consumer() {
        let hub = hub(64);
        let (a, mut a_rx) = join(&hub, 1, 16);
        // B's queue holds 4; the welcome takes one, so 2 more fit before the reserved slot.
        let (b, mut b_rx) = join(&hub, 2, 4);
        let _ = frames(&mut a_rx);
        for n in 0..5 {
            send(&hub, &a, 1, &b, n);
        }
        let b_frames = frames(&mut b_rx);
        assert!(matches!(
            b_frames.last().map(|f| &f.message),
            Some(ServerMessage::Error {
                code: ErrorCode::SlowConsumer,
                ..
            })
        ));
        let a_frames = frames(&mut a_rx);
        assert!(a_frames.iter().any(|f| matches!(
            &f.message,
            ServerMessage::PeerLeft { reason: LeaveReason::Ended, peer_id } if *peer_id == b.peer
        )));
        assert!(a_frames.iter().any(|f| matches!(
            &f.message,
            ServerMessage::Error {
                code: ErrorCode::UnknownPeer,
                ..
            }
        )));
    }

    /// Two peers of a hub keeping `replay_max_messages` frames; `b` (conn 2) parked at `t0`
    /// with `reason`, `a`'s queue read up to then.
    struct ParkedPair {
        hub: LocalHub,
        a: Attached,
        a_rx: OutboundRx,
        b: Attached,
        token: ResumeToken,
        t0: Instant,
    }

    fn parked_pair(replay_max_messages: usize, reason: LeaveReason) -> ParkedPair {
        let hub = hub(replay_max_messages);
        let (a, mut a_rx) = join(&hub, 1, 16);
        let (b, mut b_rx) = join(&hub, 2, 16);
        let token = welcome_token(&mut b_rx);
        let _ = frames(&mut a_rx);
        let t0 = Instant::now();
        hub.detach(b.key, 2, reason, t0);
        ParkedPair {
            hub,
            a,
            a_rx,
            b,
            token,
            t0,
        }
    }

    fn welcome_token(rx: &mut OutboundRx) -> ResumeToken {
        match &frames(rx)[0].message {
            ServerMessage::Welcome { session, .. } => session.resume_token.clone(),
            other => panic!("{other:?}"),
        }
    }

    fn resume_at(
        hub: &LocalHub,
        token: ResumeToken,
        last_seq: u64,
        now: Instant,
    ) -> Result<Attached, RequestError> {
        let (tx, _rx) = crate::outbound::queue(16, 1 << 20, &Arc::new(MemoryBudget::unlimited()));
        hub.resume(
            9,
            &tx,
            ResumeRequest {
                reference: None,
                version: 1,
                token,
                from: ResumeFrom::After(last_seq),
                announce: true,
                ticket: None,
            },
            now,
        )
    }

    /// A fake clock: the hub never reads one, so time is whatever the test passes in.
    #[test]
    fn a_parked_session_ends_exactly_when_its_grace_period_does() {
        let ParkedPair {
            hub,
            a: _a,
            mut a_rx,
            b: _b,
            token,
            t0,
        } = parked_pair(64, LeaveReason::Timeout);
        let grace = hub.settings().resume_grace;
        hub.sweep(t0 + grace - Duration::from_millis(1));
        assert!(
            frames(&mut a_rx).is_empty(),
            "still within the grace period"
        );
        hub.sweep(t0 + grace);
        assert!(matches!(
            frames(&mut a_rx).as_slice(),
            [ServerFrame {
                message: ServerMessage::PeerLeft {
                    reason: LeaveReason::Timeout,
                    ..
                },
                ..
            }]
        ));
        // Gone for good: no tombstone for a plain expiry, so the resume is just unknown.
        let err = resume_at(&hub, token, 1, t0 + grace).unwrap_err();
        assert_eq!(err.code, ErrorCode::ResumeFailed);
    }

    #[test]
    fn a_tombstone_explains_an_ended_session_for_one_grace_period() {
        let ParkedPair {
            hub,
            a,
            a_rx: _a_rx,
            b,
            token,
            t0,
        } = parked_pair(2, LeaveReason::Disconnected);
        let grace = hub.settings().resume_grace;
        // Three frames for a parked session whose replay holds two: replay_overflow.
        for n in 0..3 {
            send(&hub, &a, 1, &b, n);
        }
        let err = resume_at(&hub, token.clone(), 1, t0 + grace / 2).unwrap_err();
        assert_eq!(err.code, ErrorCode::ReplayOverflow);
        hub.sweep(t0 + grace + Duration::from_millis(1));
        let err = resume_at(&hub, token, 1, t0 + grace * 2).unwrap_err();
        assert_eq!(
            err.code,
            ErrorCode::ResumeFailed,
            "the tombstone is forgotten"
        );
    }

    #[test]
    fn a_resume_just_before_the_deadline_keeps_the_session() {
        let ParkedPair {
            hub,
            a,
            mut a_rx,
            b,
            token,
            t0,
        } = parked_pair(64, LeaveReason::Disconnected);
        let grace = hub.settings().resume_grace;
        send(&hub, &a, 1, &b, 7);
        let resumed = resume_at(&hub, token, 1, t0 + grace - Duration::from_millis(1)).unwrap();
        assert_eq!(resumed.replay.len(), 1);
        hub.sweep(t0 + grace * 3);
        assert!(frames(&mut a_rx).is_empty(), "nobody left");
    }
}
