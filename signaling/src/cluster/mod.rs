//! Cluster mode (`--redis URL`): any node serves any client, a room spans nodes, and the
//! sessions of a dead node resume on any other node.
//!
//! The state a client was promised lives in Redis, changed only by the atomic scripts of
//! [`store`]: room membership with join order (roles), each session's `seq` counter and
//! outbox (the replay log, bounded by count and bytes as in one node), parking and
//! tombstones. A frame for a session is numbered and appended to its outbox by the same
//! script that decided to send it, then published on the channel of the node its session is
//! attached to; that node writes it to the socket through the session's [`inbox::Inbox`], which
//! keeps the `seq` order across resumes. A node only keeps what it needs to reach its own
//! sockets.
//!
//! Nodes hold leases (`sig:nodes`, a heartbeat with a TTL). When a lease runs out, one of the
//! other nodes adopts the dead node's sessions: they are parked for the resume grace period,
//! and their clients resume anywhere with every frame after their `last_seq`. When Redis cannot
//! be reached, the node answers `/readyz` with 503, refuses joins with `unavailable`, closes its
//! sockets with 1013 so their clients resume once it is back, and buffers nothing.

mod delivery;
pub mod inbox;
mod lease;
pub mod store;

pub use fleet::secret::agree_turn_secret;

use std::collections::{HashMap, HashSet};
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::ws::Utf8Bytes;

use crate::admin::{PeerView, RoomSnapshot};
use crate::api::{PeerEntry, RoomView, Transport};
use crate::client_ip::SessionTicket;
use crate::error::{RequestError, Unavailable};
use crate::hub::{
    Attached, ConnId, Flow, HubSettings, JoinRequest, OutboundTx, Request, ResumeFrom,
    ResumeRequest, SessionKey, encode,
};
use crate::metrics::{Metrics, Outage};
use crate::outbox::{Frame, to_json};
use crate::peer_stats::{LinkView, PeerLinks};
use crate::protocol::{
    ClientMessage, ConnectionStats, ErrorCode, LeaveReason, PeerId, PeerInfo, RequestId,
    ResumeToken, RoomId, ServerFrame, ServerMessage, SessionInfo, close_code,
};
use crate::resume::ResumeSecret;
use crate::turn_credentials::IceServerMinter;
use inbox::Inbox;
use store::{
    Op, RECEIVED_PLACEHOLDER, REPLAYED_PLACEHOLDER, Reply, Store, StoreError, StoreLimits,
};

/// How a cluster node keeps in touch with the others.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// `--redis`: one URL, or the seed nodes of a Redis Cluster.
    pub redis_urls: Vec<String>,
    /// `--node-id`; random when not given.
    pub node_id: String,
    /// How often the node renews its lease and looks for dead nodes.
    pub heartbeat: Duration,
    /// A node whose lease is this old is dead: its sessions are parked and adopted.
    pub lease: Duration,
    /// The deadline of one Redis call.
    pub redis_timeout: Duration,
    /// The TURN secret this node agreed on through Redis (it was given none): each heartbeat
    /// writes it back if Redis lost it, so that a node started later reads it instead of
    /// making another.
    pub agreed_turn_secret: Option<crate::config::Secret>,
}

fn node_sessions_key(node: &str) -> String {
    format!("sig:node:{node}:sessions")
}

/// A session's entry in its node's index ([`node_sessions_key`]).
fn index_entry(room: &RoomId, key: SessionKey) -> String {
    format!("{room}\t{}", sid(key))
}

/// The session an index entry names.
fn parse_index_entry(entry: &str) -> Option<(RoomId, SessionKey)> {
    let (room, id) = entry.split_once('\t')?;
    Some((RoomId::from(room), u64::from_str_radix(id, 16).ok()?))
}

fn channel(node: &str) -> String {
    format!("sig:ch:{node}")
}

fn sid(key: SessionKey) -> String {
    format!("{key:016x}")
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A park Redis answered this much later than it was sent is sent again, so that the session's
/// grace is counted from the answer.
const LATE_PARK: Duration = Duration::from_millis(250);

/// The resume token of a cluster session: `SID.SECRET.PEER.ROOM`. The peer and the room ride
/// along so any node finds the session's keys and can mint its credentials; the script checks
/// both against the session. Clients treat tokens as opaque.
fn cluster_token(
    secret: &ResumeSecret,
    key: SessionKey,
    peer: &PeerId,
    room: &RoomId,
) -> ResumeToken {
    ResumeToken(format!("{}.{peer}.{room}", secret.token(key).0))
}

/// `token` with its secret XORed with `mask` (masking again gives the token back): what may be
/// kept where the token itself must not be (`crate::peerjs`). `None` for a token of another
/// shape, or a mask shorter than its secret.
pub(crate) fn mask_token_secret(token: &ResumeToken, mask: &[u8]) -> Option<ResumeToken> {
    let (key, secret_hex, peer, room) = parse_cluster_token(token)?;
    let mut secret = hex::decode(secret_hex)
        .ok()
        .filter(|s| s.len() <= mask.len())?;
    for (byte, m) in secret.iter_mut().zip(mask) {
        *byte ^= m;
    }
    Some(ResumeToken(format!(
        "{}.{}.{peer}.{room}",
        sid(key),
        hex::encode(secret)
    )))
}

/// The `peer_left` the end scripts send the rest of a room, with the peer id `%PEER%` that the
/// script replaces.
fn left_template(reason: LeaveReason) -> String {
    to_json(&ServerMessage::PeerLeft {
        peer_id: PeerId::from("%PEER%"),
        reason,
    })
}

/// A presented cluster token: (session key, secret hex, peer, room).
fn parse_cluster_token(token: &ResumeToken) -> Option<(SessionKey, &str, PeerId, RoomId)> {
    let mut parts = token.as_str().splitn(4, '.');
    let id = parts.next()?;
    let secret = parts.next()?;
    let peer = parts.next()?;
    let room = parts.next()?;
    if id.len() != 16 || !crate::protocol::is_valid_room_id(room) {
        return None;
    }
    Some((
        u64::from_str_radix(id, 16).ok()?,
        secret,
        PeerId::from(peer),
        RoomId::from(room),
    ))
}

/// The refusal for a session that ended with an error: the code of its tombstone (the first
/// value of an `ended` reply).
fn ended(reply: &Reply) -> RequestError {
    let code = reply
        .rest
        .first()
        .and_then(|c| serde_json::from_value(serde_json::Value::from(c.as_str())).ok())
        .unwrap_or(ErrorCode::ResumeFailed);
    RequestError::ended(code)
}

/// What Redis keeps to check a presented secret: its SHA-256 (a leaked store reveals no token).
fn secret_hash(secret_hex: &str) -> String {
    hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        secret_hex.as_bytes(),
    ))
}

/// A session attached to a socket of this node.
struct LocalSession {
    room: RoomId,
    peer: PeerId,
    conn: ConnId,
    tx: OutboundTx,
    inbox: Inbox,
    ice_refresh_at: Option<Instant>,
    /// Close the socket with this code once the frame with this seq is written (an error
    /// that ends the connection must reach the client first).
    close_after: Option<(u64, u16)>,
    /// Being ended as a slow consumer (its queue is full, or it was chosen over the memory
    /// budget): it gets no more frames, so the error that ends it follows the last one sent.
    ending: bool,
    /// Its place among its client address's sessions on this node, if it joined here.
    ticket: Option<SessionTicket>,
    /// When it attached here (time to ICE connected is measured from a join).
    attached_at: Instant,
    /// Its latest `stats` report per other peer, kept by the node it is attached to.
    links: PeerLinks,
}

impl LocalSession {
    /// Sends the pending close once its frame was written.
    fn close_if_due(&mut self) {
        if let Some((seq, code)) = self.close_after
            && self.inbox.next().is_some_and(|next| next > seq)
        {
            self.close_after = None;
            self.tx.close(None, code);
        }
    }
}

/// A parked session this node owns (it expires it when the grace period ends).
struct ParkedHere {
    room: RoomId,
    expires_ms: u64,
    reason: LeaveReason,
    ticket: Option<SessionTicket>,
}

/// A detach that could not reach Redis (an outage): parked once it is back.
struct PendingPark {
    room: RoomId,
    key: SessionKey,
    conn: ConnId,
    reason: LeaveReason,
    ticket: Option<SessionTicket>,
    attempt: ParkAttempt,
}

/// Which park of a session this is. A parking's deadline is moved once at most, so a Redis
/// that keeps running parks but answering them too late does not keep a session nobody holds
/// for ever.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ParkAttempt {
    /// The park of an attached session (from its detach).
    First,
    /// A retry of one Redis did not answer, which it may have run all the same: the retry moves
    /// that parking's deadline to one counted from now.
    Retry,
    /// A retry after a park that may have moved the deadline already.
    DeadlineMoved,
}

/// A resume in flight on this node ([`LocalState::resuming`]).
struct Resuming {
    /// The connection resuming.
    conn: ConnId,
    /// Frames for the session, held until its replay is written.
    inbox: Inbox,
    /// A `!close` for this connection that came before the resume was done here (Redis ran
    /// this node's script, then something that let go of the socket: another node's resume, an
    /// operator's end, an HTTP `leave`): the close code, carried out once it is attached.
    close_on_attach: Option<u16>,
}

/// A resume in flight: its [`Resuming`] entry, and the place [`LocalState::reserve_move`] may
/// hold for it. Both are let go of when this is dropped (a resume that failed, or whose
/// request went away) or by [`Self::finish`].
struct ResumeInFlight<'a> {
    hub: &'a ClusterHub,
    key: SessionKey,
    finished: bool,
}

impl ResumeInFlight<'_> {
    /// The entry, for a resume that is done (`st`: the hub's state, locked). Always there: this
    /// guard owns it.
    fn finish(mut self, st: &mut LocalState) -> Option<Resuming> {
        self.finished = true;
        st.end_move(self.key);
        st.resuming.remove(&self.key)
    }
}

impl Drop for ResumeInFlight<'_> {
    fn drop(&mut self) {
        if !self.finished {
            let mut st = self.hub.lock();
            st.end_move(self.key);
            st.resuming.remove(&self.key);
        }
    }
}

/// How often a resume looks whether another of the same session on this node is done (those
/// waiting go on in no particular order).
const RESUME_WAIT_POLL: Duration = Duration::from_millis(10);

/// A `leave` the store did not take (see [`LocalState::pending_leave`]).
struct PendingLeave {
    room: RoomId,
    key: SessionKey,
    guard: Guard,
}

/// What this node holds. Sessions enter and leave `attached` and `parked` only through the
/// methods below, which keep `rooms` (sessions per room) in step: the room limit and the
/// gauges read it without walking every session.
#[derive(Default)]
struct LocalState {
    attached: HashMap<SessionKey, LocalSession>,
    /// Resumes in flight, one per session ([`ClusterHub::begin_resume`]).
    resuming: HashMap<SessionKey, Resuming>,
    /// Resumes in flight that bring a session from another node: their places, held against
    /// `--max-sessions` (and their rooms against `--max-rooms`) until they attach or fail.
    moving_in: HashMap<SessionKey, RoomId>,
    /// The rooms of `moving_in`, with how many of its sessions each has.
    moving_in_rooms: HashMap<RoomId, usize>,
    parked: HashMap<SessionKey, ParkedHere>,
    pending_park: Vec<PendingPark>,
    /// Leaves that failed on the store (the client was told `unavailable`): done when it
    /// answers again.
    pending_leave: Vec<PendingLeave>,
    /// At start and after an outage of the store: no node's sessions are adopted before then.
    adopt_after: Option<Instant>,
    /// Local sessions (attached or parked) per room.
    rooms: HashMap<RoomId, usize>,
    /// While draining: the sessions told `draining` (each is told once).
    told_draining: HashSet<SessionKey>,
    /// The entries of this node's index that named no session held here at the last
    /// reconciliation ([`ClusterHub::reconcile_index`]).
    index_suspects: HashSet<String>,
    /// Sessions the reconciliation is parking: a resume of one waits (`unavailable`) until
    /// it is done, so that the two cannot cross.
    reconciling: HashSet<SessionKey>,
    /// Dead nodes whose adoption Redis did not finish: put back among the dead (for another
    /// try) once it answers.
    unadopted: Vec<String>,
}

impl LocalState {
    fn count_in(&mut self, room: &RoomId) {
        *self.rooms.entry(room.clone()).or_insert(0) += 1;
    }

    fn count_out(&mut self, room: &RoomId) {
        if let Some(n) = self.rooms.get_mut(room) {
            *n -= 1;
            if *n == 0 {
                self.rooms.remove(room);
            }
        }
    }

    /// Attaches a session here; returns the one it replaced, if any.
    fn attach(&mut self, key: SessionKey, session: LocalSession) -> Option<LocalSession> {
        self.count_in(&session.room);
        let previous = self.attached.insert(key, session);
        if let Some(previous) = &previous {
            self.count_out(&previous.room);
        }
        previous
    }

    /// Forgets an attached session.
    fn detach(&mut self, key: SessionKey) -> Option<LocalSession> {
        let session = self.attached.remove(&key)?;
        self.count_out(&session.room);
        Some(session)
    }

    /// Records a session parked here (this node expires it).
    fn park(&mut self, key: SessionKey, parked: ParkedHere) {
        self.count_in(&parked.room);
        if let Some(previous) = self.parked.insert(key, parked) {
            self.count_out(&previous.room);
        }
    }

    /// Whether one more session of `room` fits this node's `--max-sessions` and `--max-rooms`
    /// (sessions on their way here from another node count, and their rooms: as new ones, an
    /// upper bound).
    fn has_room_for(&self, room: &RoomId, settings: &HubSettings) -> Result<(), RequestError> {
        let sessions = self.attached.len() + self.parked.len() + self.moving_in.len();
        if sessions >= settings.max_sessions {
            return Err(RequestError::too_many_sessions());
        }
        let known = self.rooms.contains_key(room) || self.moving_in_rooms.contains_key(room);
        if !known && self.rooms.len() + self.moving_in_rooms.len() >= settings.max_rooms {
            return Err(RequestError::too_many_rooms());
        }
        Ok(())
    }

    /// Holds a place for session `key` of `room`, on its way here from another node.
    fn reserve_move(&mut self, key: SessionKey, room: &RoomId) {
        if self.moving_in.insert(key, room.clone()).is_none() {
            *self.moving_in_rooms.entry(room.clone()).or_default() += 1;
        }
    }

    /// Lets go of the place [`Self::reserve_move`] held, if any.
    fn end_move(&mut self, key: SessionKey) {
        let Some(room) = self.moving_in.remove(&key) else {
            return;
        };
        if let Some(count) = self.moving_in_rooms.get_mut(&room) {
            *count -= 1;
            if *count == 0 {
                self.moving_in_rooms.remove(&room);
            }
        }
    }

    /// Whether this node holds session `key`, or has a request for it in flight (a join is
    /// attached from its start; a resume is `resuming`, and `moving_in` from another node).
    fn knows(&self, key: SessionKey) -> bool {
        self.attached.contains_key(&key)
            || self.parked.contains_key(&key)
            || self.resuming.contains_key(&key)
            || self.moving_in.contains_key(&key)
            || self.pending_park.iter().any(|p| p.key == key)
            || self.pending_leave.iter().any(|p| p.key == key)
    }

    /// Forgets a parked session; returns its ticket.
    fn unpark(&mut self, key: SessionKey) -> Option<SessionTicket> {
        let parked = self.parked.remove(&key)?;
        self.count_out(&parked.room);
        parked.ticket
    }
}

/// One node of a cluster. See the module docs.
pub struct ClusterHub {
    store: Store,
    pubsub: redis::Client,
    cluster: ClusterSettings,
    settings: HubSettings,
    ice: IceServerMinter,
    metrics: Arc<Metrics>,
    local: Mutex<LocalState>,
    draining: AtomicBool,
    /// Why the node drains (what `draining` says).
    drain_reason: Mutex<String>,
    /// The last Redis call succeeded.
    store_ok: AtomicBool,
    /// The node's channel is subscribed.
    subscribed: AtomicBool,
    /// The node has entered its lease at least once.
    registered: AtomicBool,
    /// The node gave its lease up ([`Self::leave`]): it is never renewed again. Held by a
    /// renewal while it runs, so that giving the lease up waits for one under way.
    lease_given_up: tokio::sync::Mutex<bool>,
    /// An outage was counted and the node has not been whole since (see `outage`).
    in_outage: AtomicBool,
}

impl ClusterHub {
    /// Connects to Redis and starts the node's subscriber and heartbeat tasks.
    pub async fn start(
        cluster: ClusterSettings,
        settings: HubSettings,
        ice: IceServerMinter,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, StoreError> {
        let (conn, pubsub) = store::connect(&cluster.redis_urls, cluster.redis_timeout).await?;
        let (broadcasts, _) = store::connect(&cluster.redis_urls, cluster.redis_timeout).await?;
        let limits = StoreLimits {
            key_ttl: settings.resume_grace + Duration::from_secs(60),
            max_frames: settings.replay.max_messages,
            max_bytes: settings.replay.max_bytes,
        };
        let adopt_after = Instant::now() + cluster.lease;
        let hub = Arc::new(Self {
            store: Store::new(conn, broadcasts, limits, cluster.redis_timeout),
            pubsub,
            cluster,
            settings,
            ice,
            metrics,
            // Redis may hold leases restored from saved data, expired while nobody could
            // renew them: a new node waits a lease before it takes any node for dead.
            local: Mutex::new(LocalState {
                adopt_after: Some(adopt_after),
                ..LocalState::default()
            }),
            draining: AtomicBool::new(false),
            drain_reason: Mutex::new(String::new()),
            store_ok: AtomicBool::new(true),
            subscribed: AtomicBool::new(false),
            registered: AtomicBool::new(false),
            lease_given_up: tokio::sync::Mutex::new(false),
            in_outage: AtomicBool::new(false),
        });
        hub.heartbeat().await;
        tokio::spawn(Arc::clone(&hub).subscriber());
        let deadline = Instant::now() + hub.cluster.redis_timeout * 5;
        while !hub.subscribed.load(Ordering::Acquire) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::spawn(Arc::clone(&hub).heartbeats());
        tracing::info!(node = %hub.cluster.node_id, "cluster node started");
        Ok(hub)
    }

    fn lock(&self) -> MutexGuard<'_, LocalState> {
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.cluster.node_id
    }

    /// Whether Redis answers and the node's channel is subscribed.
    pub fn is_available(&self) -> bool {
        self.store_ok.load(Ordering::Acquire) && self.subscribed.load(Ordering::Acquire)
    }

    /// Whether the node is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// `Ok` while the node takes new sessions and resumes: not draining, Redis reachable.
    fn accepting(&self) -> Result<(), RequestError> {
        if self.is_draining() {
            return Err(RequestError::draining());
        }
        if !self.is_available() {
            return Err(RequestError::unavailable(Unavailable::StoreUnreachable));
        }
        Ok(())
    }

    /// How long the tombstone of an ended session lives, in ms: one resume grace period.
    fn tombstone_ms(&self) -> String {
        self.settings.resume_grace.as_millis().max(1).to_string()
    }

    /// Records a failed Redis call; the heartbeat finds out when it is back. A call refused
    /// because its room's slot is moving (resharding a Redis Cluster) failed before it wrote
    /// and says nothing of the other rooms: it is no outage of the node (its caller closes
    /// that session's socket with 1013, or retries a park or a leave at the next heartbeat).
    /// Returns which of the two it was, for the client's `unavailable`.
    fn store_failed(&self, what: &str, error: &StoreError) -> Unavailable {
        tracing::warn!(%error, what, "redis call failed");
        self.metrics.cluster_store_error();
        if error.is_slot_moving() {
            return Unavailable::RoomMoving;
        }
        if self.store_ok.swap(false, Ordering::AcqRel) {
            self.outage(Outage::Store);
        }
        Unavailable::StoreUnreachable
    }

    fn session_info(
        &self,
        key: SessionKey,
        peer: &PeerId,
        room: &RoomId,
        version: u32,
        secret: &ResumeSecret,
    ) -> SessionInfo {
        SessionInfo {
            version,
            peer_id: peer.clone(),
            session_id: sid(key).into(),
            room: room.clone(),
            // Filled in by the script, which sees the room as it is.
            peers: Vec::new(),
            ice_servers: self.ice.mint(peer, room, SystemTime::now()),
            ping_interval_ms: self.settings.ping_interval.as_millis() as u64,
            ping_timeout_ms: self.settings.ping_timeout.as_millis() as u64,
            resume_token: cluster_token(secret, key, peer, room),
            resume_grace_ms: self.settings.resume_grace.as_millis() as u64,
            max_message_bytes: self.settings.max_message_bytes,
        }
    }

    fn update_gauges(&self, st: &LocalState) {
        self.metrics
            .sessions
            .set((st.attached.len() + st.parked.len()) as i64);
        self.metrics.rooms.set(st.rooms.len() as i64);
    }

    /// Creates a session in the requested room, attached to the caller's queue.
    pub async fn join(
        &self,
        conn: ConnId,
        tx: &OutboundTx,
        mut req: JoinRequest,
    ) -> Result<Attached, RequestError> {
        self.accepting()?;
        let key = {
            let mut st = self.lock();
            st.has_room_for(&req.room, &self.settings)?;
            let key = loop {
                let key = rand::random::<u64>();
                if key != 0 && !st.attached.contains_key(&key) {
                    break key;
                }
            };
            st.attach(
                key,
                LocalSession {
                    room: req.room.clone(),
                    peer: PeerId::from(""),
                    conn,
                    tx: tx.clone(),
                    inbox: Inbox::starting_at(1),
                    ice_refresh_at: self.ice.refresh_after().map(|d| Instant::now() + d),
                    close_after: None,
                    ending: false,
                    ticket: req.ticket.take(),
                    attached_at: Instant::now(),
                    links: PeerLinks::default(),
                },
            );
            key
        };
        // Indexed first: if this node dies right after the script, the session must be found.
        let result = match self.index_add(&req.room, key).await {
            Ok(_) => self.try_join(key, conn, &req).await,
            Err(error) => Err(error),
        };
        {
            let mut st = self.lock();
            match &result {
                Ok((peer, _)) => {
                    if let Some(session) = st.attached.get_mut(&key) {
                        session.peer = peer.clone();
                    }
                }
                Err(_) => {
                    st.detach(key);
                }
            }
            self.update_gauges(&st);
        }
        let (peer, token) = match result {
            Ok(joined) => joined,
            Err(error) => {
                // Refused: no session. Unanswered: Redis may still run the script; the entry
                // lets the reconciliation find what it leaves.
                if error.code != ErrorCode::Unavailable {
                    self.index_remove(&self.cluster.node_id, &req.room, key)
                        .await;
                }
                return Err(error);
            }
        };
        Ok(Attached::joined(key, peer, &req, token))
    }

    async fn try_join(
        &self,
        key: SessionKey,
        conn: ConnId,
        req: &JoinRequest,
    ) -> Result<(PeerId, ResumeToken), RequestError> {
        let secret = ResumeSecret::generate();
        let secret_hex = secret.to_hex();
        for _ in 0..4 {
            let peer = PeerId(format!("{:012x}", rand::random::<u64>() >> 16));
            let info = |polite| {
                to_json(&PeerInfo {
                    id: peer.clone(),
                    name: req.name.clone(),
                    polite,
                })
            };
            let welcome = to_json(&ServerMessage::Welcome {
                reference: req.reference,
                session: self.session_info(key, &peer, &req.room, req.version, &secret),
            });
            let joined = to_json(&ServerMessage::PeerJoined {
                peer: PeerInfo {
                    id: peer.clone(),
                    name: req.name.clone(),
                    polite: false,
                },
            });
            let reply = self
                .store
                .call(
                    Op::Join,
                    &req.room,
                    &[
                        &sid(key),
                        peer.as_str(),
                        &secret_hash(&secret_hex),
                        &self.cluster.node_id,
                        &conn.to_string(),
                        &req.version.to_string(),
                        &req.capacity(self.settings.max_peers_per_room).to_string(),
                        &info(true),
                        &info(false),
                        &welcome,
                        &joined,
                        req.name.as_deref().unwrap_or(""),
                        &unix_ms(SystemTime::now()).to_string(),
                        req.transport.as_str(),
                        &self.ice_due_ms(),
                    ],
                )
                .await;
            let reply = match reply {
                Ok(reply) => reply,
                Err(e) => {
                    return Err(RequestError::unavailable(self.store_failed("join", &e)));
                }
            };
            self.end_overflowed(&req.room, &reply).await;
            match reply.status.as_str() {
                "ok" => {
                    let token = cluster_token(&secret, key, &peer, &req.room);
                    return Ok((peer, token));
                }
                "room_full" => {
                    return Err(RequestError::room_full(
                        &req.room,
                        req.capacity(self.settings.max_peers_per_room),
                    ));
                }
                _ => continue, // "peer_taken": draw another peer id
            }
        }
        Err(RequestError::new(
            ErrorCode::Internal,
            "could not draw a free peer id",
        ))
    }

    /// Adds a session to this node's index (what another node adopts if this one dies).
    /// Returns whether the entry is new; `unavailable` when Redis did not take it (the caller
    /// sends nothing more: a session that would be in no index must not come to be).
    async fn index_add(&self, room: &RoomId, key: SessionKey) -> Result<bool, RequestError> {
        let index = node_sessions_key(&self.cluster.node_id);
        self.store
            .add_to_set(&index, &index_entry(room, key), self.store_ttl())
            .await
            .map_err(|e| RequestError::unavailable(self.store_failed("index", &e)))
    }

    /// Removes a session from `node`'s index.
    async fn index_remove(&self, node: &str, room: &RoomId, key: SessionKey) {
        let cmd = redis::cmd("SREM")
            .arg(node_sessions_key(node))
            .arg(index_entry(room, key))
            .to_owned();
        let _ = self.store.query::<i64>(&cmd).await;
    }

    /// Whether a session of `room` that another node holds may come here: within this node's
    /// `--max-sessions` and `--max-rooms`, and with a place among its client address's
    /// sessions (`has_ticket`). If so, its place is held until it is attached or the resume
    /// fails.
    fn admit_moved_session(
        &self,
        key: SessionKey,
        room: &RoomId,
        has_ticket: bool,
    ) -> Result<(), RequestError> {
        if !has_ticket {
            return Err(RequestError::new(
                ErrorCode::TooManySessions,
                "this address holds its maximum number of sessions on this node",
            ));
        }
        let mut st = self.lock();
        if st.reconciling.contains(&key) {
            return Err(RequestError::unavailable(Unavailable::StoreUnreachable));
        }
        st.has_room_for(room, &self.settings)?;
        st.reserve_move(key, room);
        Ok(())
    }

    /// Re-attaches a session, wherever it was, to the caller's queue.
    pub async fn resume(
        &self,
        conn: ConnId,
        tx: &OutboundTx,
        mut req: ResumeRequest,
    ) -> Result<Attached, RequestError> {
        let unknown = || RequestError::new(ErrorCode::ResumeFailed, "unknown or expired session");
        let (key, secret_hex, peer, room) = parse_cluster_token(&req.token).ok_or_else(unknown)?;
        let secret = ResumeSecret::from_hex(secret_hex).ok_or_else(unknown)?;
        let in_flight = self.begin_resume(key, conn).await?;
        // A quiet re-attach (an HTTP stream request) of a session this node serves goes on
        // while it drains (the session was told `draining`); any other is sent elsewhere.
        let here = {
            let st = self.lock();
            st.attached.contains_key(&key) || st.parked.contains_key(&key)
        };
        if req.announce || !here {
            self.accepting()?;
        } else if !self.is_available() {
            return Err(RequestError::unavailable(Unavailable::StoreUnreachable));
        }
        // A session from another node counts here from now: it must fit this node's limits
        // (else sessions moved over by resumes would escape every one of them). `in_flight`
        // lets go of the place on every way out.
        let ticket = req.ticket.take();
        if !here {
            self.admit_moved_session(key, &room, ticket.is_some())?;
        }
        // The template's resume token must be the one the client holds: rebuild it. The
        // placeholders (no peers, `replayed`, `received`) are filled in by the script.
        // No template: a quiet re-attach (HTTP streams) sends no `resumed`.
        let template = if req.announce {
            to_json(&ServerMessage::Resumed {
                reference: req.reference,
                session: self.session_info(key, &peer, &room, req.version, &secret),
                replayed: REPLAYED_PLACEHOLDER,
                received: Some(RECEIVED_PLACEHOLDER),
            })
        } else {
            String::new()
        };
        // Indexed first: if this node dies right after the script, the session must be found.
        let added = self.index_add(&room, key).await?;
        let args = [
            sid(key),
            secret_hash(secret_hex),
            match req.from {
                ResumeFrom::After(seq) => seq.to_string(),
                ResumeFrom::Acknowledged => "ack".to_owned(),
            },
            self.cluster.node_id.clone(),
            conn.to_string(),
            req.version.to_string(),
            template,
            peer.0.clone(),
            unix_ms(SystemTime::now()).to_string(),
            // `resumed` carries fresh ICE servers; a quiet re-attach keeps the due refresh.
            if req.announce {
                self.ice_due_ms()
            } else {
                String::new()
            },
        ];
        let resumed = match self.resume_script(&room, &args).await {
            Ok(outcome) => outcome,
            Err(error) => {
                // As for a join: an unanswered script may still run.
                if added && error.code != ErrorCode::Unavailable {
                    self.index_remove(&self.cluster.node_id, &room, key).await;
                }
                return Err(error);
            }
        };
        let ResumeOutcome {
            old_node,
            ice_due,
            links,
            last_seq,
            frames,
        } = resumed;
        let replay: Vec<Utf8Bytes> = frames.into_iter().map(Utf8Bytes::from).collect();
        let next = last_seq + 1 + replay.len() as u64;
        let mut all = replay;
        let close_on_attach = {
            let mut st = self.lock();
            let (mut inbox, close_on_attach) = in_flight
                .finish(&mut st)
                .map_or((Inbox::default(), None), |r| (r.inbox, r.close_on_attach));
            all.extend(inbox.start(next));
            // A session that joined on this node keeps its place among its address's.
            let parked_ticket = st.unpark(key);
            let attached_ticket = st.attached.get_mut(&key).and_then(|s| s.ticket.take());
            let previous = st.attach(
                key,
                LocalSession {
                    room: room.clone(),
                    peer: peer.clone(),
                    conn,
                    tx: tx.clone(),
                    inbox,
                    ice_refresh_at: self.ice_refresh_at(&ice_due),
                    close_after: None,
                    ending: false,
                    ticket: attached_ticket.or(parked_ticket).or(ticket),
                    attached_at: Instant::now(),
                    links: PeerLinks::resumed(links, Instant::now()),
                },
            );
            if let Some(previous) = previous
                && previous.conn != conn
            {
                previous.tx.close(None, close_code::POLICY);
            }
            if let Some(code) = close_on_attach
                && let Some(session) = st.detach(key)
            {
                // Let go meanwhile (taken over elsewhere, or ended): as on a `!close` now.
                session.tx.close(None, code);
            }
            self.update_gauges(&st);
            close_on_attach
        };
        // Let go of already: the index entries are the business of what let go of it (the
        // resume that took it over removes this node's; the old node's is not this one's to
        // remove: the session may be back there).
        let let_go = close_on_attach.is_some();
        if !let_go && old_node != self.cluster.node_id {
            // The script told the old node to let go of its socket, if it had one.
            self.index_remove(&old_node, &room, key).await;
        }
        if !let_go && self.is_draining() {
            // A session this node serves came back between two HTTP requests.
            self.tell_draining(key, &room).await;
        }
        Ok(Attached {
            key,
            peer,
            room,
            // The name is in Redis; the session's node does not need it otherwise.
            name: None,
            token: req.token,
            replay: all.into_iter().map(Frame::Whole).collect(),
        })
    }

    /// Enters a resume of session `key` by `conn` in [`LocalState::resuming`]. One at a time
    /// per session: a second socket resuming it here at the same instant waits until the first
    /// is done, then takes over from it as from any attached socket (the order Redis runs their
    /// scripts in is the order they attach in). `unavailable` if the first is not done within
    /// four times `--redis-timeout` (its store calls take at most one each, and it makes three
    /// in a row, or more if it ends overflowed sessions).
    async fn begin_resume(
        &self,
        key: SessionKey,
        conn: ConnId,
    ) -> Result<ResumeInFlight<'_>, RequestError> {
        let deadline = Instant::now() + self.cluster.redis_timeout * 4;
        loop {
            if let std::collections::hash_map::Entry::Vacant(slot) = self.lock().resuming.entry(key)
            {
                slot.insert(Resuming {
                    conn,
                    inbox: Inbox::pending(),
                    close_on_attach: None,
                });
                return Ok(ResumeInFlight {
                    hub: self,
                    key,
                    finished: false,
                });
            }
            if Instant::now() >= deadline {
                return Err(RequestError::unavailable(Unavailable::StoreUnreachable));
            }
            tokio::time::sleep(RESUME_WAIT_POLL).await;
        }
    }

    /// Runs the resume script; returns the node the session was on and the frames to replay.
    async fn resume_script(
        &self,
        room: &RoomId,
        args: &[String],
    ) -> Result<ResumeOutcome, RequestError> {
        let unknown = || RequestError::new(ErrorCode::ResumeFailed, "unknown or expired session");
        let bad_reply = || RequestError::new(ErrorCode::Internal, "bad resume reply");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let reply = match self.store.call(Op::Resume, room, &args).await {
            Ok(reply) => reply,
            Err(e) => {
                return Err(RequestError::unavailable(self.store_failed("resume", &e)));
            }
        };
        self.end_overflowed(room, &reply).await;
        // The position the resume took up from (the client's, or what the session acknowledged).
        let from = reply.rest.last().map_or("?", String::as_str);
        match reply.status.as_str() {
            "ok" => {}
            "ended" => return Err(ended(&reply)),
            "gap" => {
                return Err(RequestError::new(
                    ErrorCode::ResumeFailed,
                    format!(
                        "last_seq {} cannot be resumed exactly (next seq {})",
                        args[2],
                        reply.rest.first().map_or("?", String::as_str)
                    ),
                ));
            }
            // Ended above, with the overflowed sessions.
            "dropped" => {
                return Err(RequestError::new(
                    ErrorCode::ReplayOverflow,
                    format!(
                        "frames after last_seq {from} were dropped before they were \
                         acknowledged: the session ended"
                    ),
                ));
            }
            _ => return Err(unknown()),
        }
        let mut rest = reply.rest.into_iter();
        let old_node = rest.next().ok_or_else(bad_reply)?;
        // The old connection and state, the ice due, the links and when they were reported,
        // the position, then the frames.
        let ice_due = rest.nth(2).unwrap_or_default();
        let links = rest.next().unwrap_or_default();
        let reported_at = rest.next().unwrap_or_default();
        let last_seq = rest
            .next()
            .and_then(|seq| seq.parse().ok())
            .ok_or_else(bad_reply)?;
        Ok(ResumeOutcome {
            old_node,
            ice_due,
            links: Member::links(&links, &reported_at, unix_ms(SystemTime::now())),
            last_seq,
            frames: rest.collect(),
        })
    }

    /// When the TURN credentials minted now are due for a refresh, as the scripts keep it
    /// (Unix ms; '' when this node mints none).
    fn ice_due_ms(&self) -> String {
        self.ice
            .refresh_after()
            .map(|d| (unix_ms(SystemTime::now()) + d.as_millis() as u64).to_string())
            .unwrap_or_default()
    }

    /// When to push fresh ICE servers to a session whose credentials are due at `ice_due`
    /// (Unix ms, from Redis): at once when it is past, or unknown.
    fn ice_refresh_at(&self, ice_due: &str) -> Option<Instant> {
        self.ice.refresh_after()?;
        let now = Instant::now();
        let Ok(due_ms) = ice_due.parse::<u64>() else {
            return Some(now);
        };
        let wait = due_ms.saturating_sub(unix_ms(SystemTime::now()));
        Some(now + Duration::from_millis(wait))
    }

    /// Handles a request of an attached session (everything but `join`/`resume`), received at
    /// `received` (a `signal` is timed from there to its delivery queued).
    pub async fn handle(
        &self,
        key: SessionKey,
        conn: ConnId,
        message: ClientMessage,
        received: Instant,
    ) -> Flow {
        let (room, peer) = {
            let st = self.lock();
            match st.attached.get(&key) {
                Some(s) if s.conn == conn => (s.room.clone(), s.peer.clone()),
                _ => return Flow::Gone,
            }
        };
        self.handle_in(&room, key, &peer, Guard::Conn(conn), message, received)
            .await
    }

    /// Handles the requests of an HTTP `send`, for the session its token names, wherever the
    /// session is attached (or parked). The token is checked against Redis first.
    pub async fn handle_by_token(
        &self,
        token: &ResumeToken,
        messages: Vec<ClientMessage>,
    ) -> Result<Flow, RequestError> {
        let unknown = || RequestError::new(ErrorCode::ResumeFailed, "unknown or expired session");
        let (key, secret_hex, peer, room) = parse_cluster_token(token).ok_or_else(unknown)?;
        // Refused at once while Redis is known to be away, as upgrades and stream requests are
        // (not after a `--redis-timeout` of its own).
        if !self.is_available() {
            return Err(RequestError::unavailable(Unavailable::StoreUnreachable));
        }
        let reply = self
            .store
            .call(
                Op::Check,
                &room,
                &[&sid(key), &secret_hash(secret_hex), peer.as_str()],
            )
            .await
            .map_err(|e| RequestError::unavailable(self.store_failed("check", &e)))?;
        match reply.status.as_str() {
            "ok" => {}
            "ended" => return Err(ended(&reply)),
            _ => return Err(unknown()),
        }
        for message in messages {
            match self
                .handle_in(&room, key, &peer, Guard::Token, message, Instant::now())
                .await
            {
                Flow::Continue => {}
                other => return Ok(other),
            }
        }
        Ok(Flow::Continue)
    }

    /// One request of session `key` of `peer` in `room`, received at `received`; `leave` ends
    /// it under `guard`.
    async fn handle_in(
        &self,
        room: &RoomId,
        key: SessionKey,
        peer: &PeerId,
        guard: Guard,
        message: ClientMessage,
        received: Instant,
    ) -> Flow {
        let room = room.clone();
        let sid = sid(key);
        // The scripts' argument: the frame's number, '' when it has none.
        let cseq = message.cseq().map(|n| n.to_string()).unwrap_or_default();
        let result = match Request::new(message, peer, to_json) {
            Request::Signal { id, to, body } => {
                // Encoded for every signal, so that the script that finds `to` missing can
                // answer in the same atomic step.
                let error = to_json(&ServerMessage::Error {
                    code: ErrorCode::UnknownPeer,
                    message: format!("no peer {to} in room {room}; nothing was delivered"),
                    reference: id,
                });
                let reply = self
                    .store
                    .call(
                        Op::Signal,
                        &room,
                        &[&sid, to.as_str(), &body, &cseq, &error],
                    )
                    .await;
                match reply {
                    Ok(reply) if reply.status == "dup" => {
                        self.metrics.duplicates_dropped.inc();
                        Ok(reply)
                    }
                    Ok(reply) if reply.status == "unknown_peer" => {
                        self.metrics.error(ErrorCode::UnknownPeer);
                        Ok(reply)
                    }
                    Ok(reply) if reply.status == "ok" => {
                        self.metrics.messages_relayed.inc();
                        self.metrics.signal_delivered(received);
                        Ok(reply)
                    }
                    other => other,
                }
            }
            Request::Broadcast { body } => {
                let reply = self
                    .store
                    .call(Op::Broadcast, &room, &[&sid, &body, &cseq])
                    .await;
                match &reply {
                    Ok(reply) if reply.status == "dup" => {
                        self.metrics.duplicates_dropped.inc();
                    }
                    Ok(reply) => {
                        let n = reply.rest.first().and_then(|n| n.parse().ok()).unwrap_or(0);
                        self.metrics.messages_relayed.inc_by(n);
                    }
                    Err(_) => {}
                }
                reply
            }
            Request::Other(ClientMessage::Ack { seq }) => {
                self.store
                    .call(Op::Ack, &room, &[&sid, &seq.to_string()])
                    .await
            }
            Request::Other(ClientMessage::Ping { id }) => {
                let body = to_json(&ServerMessage::Pong {
                    reference: id,
                    received: Some(RECEIVED_PLACEHOLDER),
                });
                self.store.call(Op::Pong, &room, &[&sid, &body]).await
            }
            Request::Other(ClientMessage::Leave { .. }) => {
                // Ending (and detached below whatever the reply): gone from Redis once the
                // script ran, it is not taken for vanished meanwhile.
                if let Guard::Conn(_) = guard
                    && let Some(session) = self.lock().attached.get_mut(&key)
                {
                    session.ending = true;
                }
                let reply = self.end(&room, key, LeaveReason::Left, None, guard).await;
                let mut st = self.lock();
                if let Guard::Conn(_) = guard {
                    st.detach(key);
                    self.update_gauges(&st);
                }
                return match reply {
                    Ok(_) => Flow::Left,
                    Err(e) => {
                        // Not taken (or taken when Redis answers): a socket's session leaves
                        // then all the same, not left behind as a session nobody holds (an
                        // HTTP session is parked between requests: it expires).
                        if let Guard::Conn(_) = guard {
                            st.pending_leave.push(PendingLeave { room, key, guard });
                        }
                        drop(st);
                        Flow::Retry(self.store_failed("leave", &e))
                    }
                };
            }
            Request::Other(ClientMessage::Stats { id, report }) => match report.check() {
                Ok(()) => {
                    self.record_stats(key, &room, report, StatsSource::Client(id))
                        .await;
                    return Flow::Continue;
                }
                Err(message) => {
                    self.metrics.error(ErrorCode::InvalidMessage);
                    let body = to_json(&ServerMessage::Error {
                        code: ErrorCode::InvalidMessage,
                        message,
                        reference: id,
                    });
                    self.store.call(Op::Emit, &room, &[&sid, &body]).await
                }
            },
            Request::Other(ClientMessage::Signal { .. } | ClientMessage::Broadcast { .. }) => {
                unreachable!("Request::new routes every signal and broadcast")
            }
            Request::Other(ClientMessage::Join { id, .. } | ClientMessage::Resume { id, .. }) => {
                self.metrics.error(ErrorCode::AlreadyJoined);
                let body = to_json(&ServerMessage::Error {
                    code: ErrorCode::AlreadyJoined,
                    message: "this socket already has a session".into(),
                    reference: id,
                });
                self.store.call(Op::Emit, &room, &[&sid, &body]).await
            }
        };
        match result {
            Ok(reply) if reply.status == "gone" => {
                // Its socket task writes the error and closes, as for any session ended.
                self.session_vanished(key, None);
                Flow::Continue
            }
            Ok(reply) => {
                self.end_overflowed(&room, &reply).await;
                Flow::Continue
            }
            Err(e) => Flow::Retry(self.store_failed("request", &e)),
        }
    }

    /// Session `key`, attached here (to `conn`, when given), is not in Redis any more and
    /// left no tombstone (its keys expired): its socket or stream is told `resume_failed`
    /// (seq 0: its session is unknown now) and closed with 1008, so that its client joins
    /// afresh instead of talking to a room that no longer has it. Like a slow consumer's, the
    /// session gets no more frames and stays attached until its socket task has written the
    /// error and let go (a request meanwhile finds it gone again: nothing more happens).
    pub(super) fn session_vanished(&self, key: SessionKey, conn: Option<ConnId>) {
        let mut st = self.lock();
        let Some(session) = st.attached.get_mut(&key) else {
            return;
        };
        if session.ending || conn.is_some_and(|c| c != session.conn) {
            return;
        }
        session.ending = true;
        tracing::warn!(
            peer = %session.peer,
            room = %session.room,
            "the session is gone from redis: closing its socket"
        );
        self.metrics.cluster_session_vanished();
        self.metrics.error(ErrorCode::ResumeFailed);
        let frame = encode(&ServerFrame {
            seq: 0,
            message: ServerMessage::Error {
                code: ErrorCode::ResumeFailed,
                message: "the session is gone from the server's shared store (it expired \
                          during an outage): join again"
                    .into(),
                reference: None,
            },
        });
        session.tx.close(Some(frame), close_code::POLICY);
    }

    /// Sends an error to an attached session (for errors found before the hub, e.g. parsing),
    /// then closes its socket with `close`, if given, once the error was written.
    pub async fn reply_error(
        &self,
        key: SessionKey,
        error: RequestError,
        reference: Option<RequestId>,
        close: Option<u16>,
    ) {
        self.metrics.error(error.code);
        let Some(room) = self.lock().attached.get(&key).map(|s| s.room.clone()) else {
            return;
        };
        let body = to_json(&ServerMessage::Error {
            code: error.code,
            message: error.message.into_owned(),
            reference,
        });
        match self.store.call(Op::Emit, &room, &[&sid(key), &body]).await {
            Ok(reply) => {
                self.end_overflowed(&room, &reply).await;
                let seq = reply.rest.first().and_then(|s| s.parse::<u64>().ok());
                if let (Some(code), Some(seq)) = (close, seq) {
                    let mut st = self.lock();
                    if let Some(session) = st.attached.get_mut(&key) {
                        session.close_after = Some((seq, code));
                        session.close_if_due();
                    }
                }
            }
            Err(e) => {
                self.store_failed("error reply", &e);
            }
        }
    }

    /// The socket of `conn` is gone: park its session for the grace period.
    pub async fn detach(&self, key: SessionKey, conn: ConnId, reason: LeaveReason) {
        let (room, ticket) = {
            let mut st = self.lock();
            match st.attached.get(&key) {
                Some(s) if s.conn == conn => {}
                _ => return,
            }
            let session = st.detach(key);
            self.update_gauges(&st);
            match session {
                Some(s) => (s.room, s.ticket),
                None => return,
            }
        };
        self.park(PendingPark {
            room,
            key,
            conn,
            reason,
            ticket,
            attempt: ParkAttempt::First,
        })
        .await;
    }

    /// Parks the session of `pending` in Redis, then here. Its resume grace starts when Redis
    /// answers: a park that Redis answered late (it hung) moves the deadline to one counted
    /// from the answer, and so does the first retry of one it did not answer (from the
    /// heartbeat that finds Redis back), which Redis may have run late all the same.
    async fn park(&self, mut pending: PendingPark) {
        let sent = Instant::now();
        let mut moving = pending.attempt == ParkAttempt::Retry;
        let mut reply = self.park_call(&pending, moving).await;
        if matches!(&reply, Ok(r) if r.status == "ok")
            && pending.attempt == ParkAttempt::First
            && sent.elapsed() > LATE_PARK
        {
            moving = true;
            reply = self.park_call(&pending, moving).await;
        }
        let mut st = self.lock();
        match reply {
            Ok(reply) if reply.status == "ok" => {
                // The deadline in force in Redis (an earlier park's may stand).
                let Some(expires_ms) = reply.rest.first().and_then(|e| e.parse().ok()) else {
                    return;
                };
                st.park(
                    pending.key,
                    ParkedHere {
                        room: pending.room,
                        expires_ms,
                        reason: pending.reason,
                        ticket: pending.ticket,
                    },
                );
                self.update_gauges(&st);
            }
            Ok(_) => {} // resumed elsewhere or ended meanwhile
            Err(e) => {
                pending.attempt = if moving {
                    ParkAttempt::DeadlineMoved
                } else if pending.attempt == ParkAttempt::First {
                    ParkAttempt::Retry
                } else {
                    pending.attempt
                };
                st.pending_park.push(pending);
                // `store_failed` takes the lock itself.
                drop(st);
                self.store_failed("park", &e);
            }
        }
    }

    /// The park script for `pending`, with a deadline one grace period from now; with
    /// `move_deadline`, a parking of it that Redis made already gets that deadline too (if
    /// later). The reply's first value is the deadline in force.
    async fn park_call(
        &self,
        pending: &PendingPark,
        move_deadline: bool,
    ) -> Result<Reply, StoreError> {
        let expires_ms = unix_ms(SystemTime::now()) + self.settings.resume_grace.as_millis() as u64;
        self.store
            .call(
                Op::Park,
                &pending.room,
                &[
                    &sid(pending.key),
                    &self.cluster.node_id,
                    &pending.conn.to_string(),
                    &expires_ms.to_string(),
                    reason_str(pending.reason),
                    if move_deadline { "1" } else { "0" },
                ],
            )
            .await
    }

    /// Carries out the leaves the store did not take during an outage (their sessions may have
    /// resumed meanwhile, elsewhere: then the guard refuses).
    pub(super) async fn retry_leaves(&self) {
        let pending = std::mem::take(&mut self.lock().pending_leave);
        for leave in pending {
            let reply = self
                .end(&leave.room, leave.key, LeaveReason::Left, None, leave.guard)
                .await;
            if let Err(e) = reply {
                self.lock().pending_leave.push(leave);
                self.store_failed("leave", &e);
            }
        }
    }

    /// Ends a session in Redis and tells its room; returns the reply.
    async fn end(
        &self,
        room: &RoomId,
        key: SessionKey,
        reason: LeaveReason,
        code: Option<ErrorCode>,
        guard: Guard,
    ) -> Result<Reply, StoreError> {
        let left = left_template(reason);
        let (guard_word, conn) = match guard {
            Guard::Any => ("any", String::new()),
            Guard::Token => ("token", String::new()),
            Guard::Conn(conn) => ("conn", conn.to_string()),
            Guard::Expired => ("expired", String::new()),
        };
        let reply = self
            .store
            .call(
                Op::End,
                room,
                &[
                    &sid(key),
                    &left,
                    code.map_or("", ErrorCode::as_str),
                    &self.tombstone_ms(),
                    guard_word,
                    &self.cluster.node_id,
                    &conn,
                    &unix_ms(SystemTime::now()).to_string(),
                ],
            )
            .await?;
        if reply.status == "ok" {
            let [node, ..] = reply.rest.as_slice() else {
                return Ok(reply);
            };
            self.index_remove(node, room, key).await;
            tracing::info!(session = %sid(key), %room, ?reason, "left the room");
            if let Some(code) = code {
                self.metrics.error(code);
                tracing::info!(session = %sid(key), %code, "session ended");
            }
        }
        Box::pin(self.end_overflowed(room, &reply)).await;
        Ok(reply)
    }

    /// Ends the sessions whose parked outbox overflowed during a script.
    async fn end_overflowed(&self, room: &RoomId, reply: &Reply) {
        for overflowed in &reply.overflowed {
            let Ok(key) = u64::from_str_radix(overflowed, 16) else {
                continue;
            };
            self.lock().unpark(key);
            if let Err(e) = Box::pin(self.end(
                room,
                key,
                LeaveReason::Ended,
                Some(ErrorCode::ReplayOverflow),
                Guard::Any,
            ))
            .await
            {
                self.store_failed("end", &e);
            }
        }
    }

    /// Periodic work: ends parked sessions past their grace period, pushes fresh ICE servers,
    /// refreshes the TTL of the rooms this node serves.
    pub async fn sweep(&self, now: Instant) {
        let now_ms = unix_ms(SystemTime::now());
        let (expired, refresh) = {
            let mut st = self.lock();
            let expired: Vec<(SessionKey, RoomId, LeaveReason)> = st
                .parked
                .iter()
                .filter(|(_, p)| p.expires_ms <= now_ms)
                .map(|(k, p)| (*k, p.room.clone(), p.reason))
                .collect();
            let next_refresh = self.ice.refresh_after().map(|d| now + d);
            let mut refresh = Vec::new();
            for (key, session) in &mut st.attached {
                if session.ice_refresh_at.is_some_and(|t| t <= now) {
                    session.ice_refresh_at = next_refresh;
                    refresh.push((*key, session.room.clone(), session.peer.clone()));
                }
            }
            (expired, refresh)
        };
        for (key, room, reason) in expired {
            match self.end(&room, key, reason, None, Guard::Expired).await {
                Ok(reply) => {
                    // Ended, or resumed elsewhere ("no"): either way not parked here any more.
                    if reply.status == "ok" || reply.status == "no" {
                        self.lock().unpark(key);
                    }
                }
                Err(e) => {
                    self.store_failed("expire", &e);
                }
            }
        }
        for (key, room, peer) in refresh {
            let body = to_json(&ServerMessage::IceServers {
                ice_servers: self.ice.mint(&peer, &room, SystemTime::now()),
            });
            let due = self.ice_due_ms();
            if let Err(e) = self
                .store
                .call(Op::Emit, &room, &[&sid(key), &body, &due])
                .await
            {
                self.store_failed("ice refresh", &e);
            }
        }
        let st = self.lock();
        self.update_gauges(&st);
    }

    /// Keeps a checked `stats` report of session `key` when it is attached here; otherwise
    /// (an HTTP `send` that reached another node than the session's stream) it is sent on to
    /// the node holding the session, when it came from the client (a forwarded report is not
    /// sent on again, and a parked session's is dropped). The script that keeps or sends it
    /// on checks that the peer it is about is another peer of the room: a report about
    /// anyone else is dropped and, when it came from the client, answered with
    /// `unknown_peer` in the same step. The session's links are also written to its Redis
    /// hash, for the admin views of the other nodes.
    async fn record_stats(
        &self,
        key: SessionKey,
        room: &RoomId,
        report: ConnectionStats,
        source: StatsSource,
    ) {
        let answer = match source {
            StatsSource::Client(reference) => to_json(&ServerMessage::Error {
                code: ErrorCode::UnknownPeer,
                message: crate::peer_stats::unknown_peer_message(&report.peer),
                reference,
            }),
            StatsSource::Forwarded => String::new(),
        };
        let now = Instant::now();
        let capacity = self.settings.max_peers_per_room;
        // The links as they will be with this report (kept once the script agrees).
        let links = {
            let st = self.lock();
            st.attached.get(&key).map(|session| {
                let mut links = session.links.clone();
                links.record(report.clone(), now, capacity);
                let views: Vec<LinkView> = links.links().iter().map(|l| l.view(now)).collect();
                serde_json::to_string(&views).unwrap_or_default()
            })
        };
        let Some(links) = links else {
            if let StatsSource::Client(_) = source {
                let json = serde_json::to_string(&report).unwrap_or_default();
                let args = [
                    &sid(key),
                    &json,
                    &self.cluster.node_id,
                    report.peer.as_str(),
                    &answer,
                ];
                match self.store.call(Op::ForwardStats, room, &args).await {
                    Ok(reply) if reply.status == "unknown_peer" => {
                        self.stats_refused(room, &reply, source).await
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!(error = %e, "could not forward a stats report"),
                }
            }
            return;
        };
        let now_ms = unix_ms(SystemTime::now()).to_string();
        let args = [&sid(key), &links, &now_ms, report.peer.as_str(), &answer];
        match self.store.call(Op::Report, room, &args).await {
            Ok(reply) if reply.status == "unknown_peer" => {
                self.stats_refused(room, &reply, source).await;
                return;
            }
            Ok(reply) if reply.status == "gone" => {
                self.session_vanished(key, None);
                return;
            }
            Ok(_) => {}
            // Unchecked, kept here: only the other nodes' admin views miss it, not an outage
            // of its own.
            Err(e) => tracing::debug!(error = %e, "could not store a stats report"),
        }
        let mut st = self.lock();
        if let Some(session) = st.attached.get_mut(&key) {
            let recorded = session.links.record(report, now, capacity);
            self.metrics.stats_report(
                &recorded,
                now.saturating_duration_since(session.attached_at),
            );
        }
    }

    /// Counts a `stats` report from the client refused as `unknown_peer` (the script
    /// answered it); a forwarded one was counted where it arrived.
    async fn stats_refused(&self, room: &RoomId, reply: &Reply, source: StatsSource) {
        if let StatsSource::Client(_) = source {
            self.metrics.error(ErrorCode::UnknownPeer);
        }
        self.end_overflowed(room, reply).await;
    }

    /// What the admin page shows: the rooms of the whole cluster ([`Self::cluster_rooms`]),
    /// each with its peers on every node and their latest `stats` links (this node's own
    /// record for the sessions attached here, else the copy in Redis).
    pub async fn snapshot(&self) -> Result<Vec<RoomSnapshot>, StoreError> {
        let (rooms, _) = self.rooms_with_members(None).await?;
        let mut views = Vec::with_capacity(rooms.len());
        for (room, members) in rooms {
            let now = Instant::now();
            let st = self.lock();
            let peers = members
                .into_iter()
                .map(|mut m| {
                    let here = st
                        .attached
                        .values()
                        .find(|s| s.room == room && s.peer.as_str() == m.entry.id);
                    let links = match here {
                        Some(s) => s.links.links().iter().map(|l| l.view(now)).collect(),
                        None => m.links,
                    };
                    PeerView {
                        // One time in a snapshot, as a single node gives it: not the API's
                        // `connected_secs` beside it.
                        connected_ms: m.entry.connected_secs.take().map(|s| s * 1000),
                        entry: m.entry,
                        links,
                    }
                })
                .collect();
            views.push(RoomSnapshot {
                room: room.0.clone(),
                peers,
            });
        }
        Ok(views)
    }

    /// The rooms of the cluster with their peers, for the admin API ([`Self::cluster_rooms`]),
    /// and how many rooms there are in all.
    pub async fn list_rooms(
        &self,
        after: Option<&RoomId>,
    ) -> Result<(Vec<RoomView>, usize), StoreError> {
        let (rooms, total) = self.rooms_with_members(after).await?;
        let views = rooms
            .into_iter()
            .map(|(room, members)| RoomView {
                room,
                peers: members.into_iter().map(|m| m.entry).collect(),
            })
            .collect();
        Ok((views, total))
    }

    /// The rooms of [`Self::cluster_rooms`] with their members, leaving out those found empty
    /// (a session index entry can outlive its session by one Redis call), and the total.
    async fn rooms_with_members(
        &self,
        after: Option<&RoomId>,
    ) -> Result<(Vec<(RoomId, Vec<Member>)>, usize), StoreError> {
        let (rooms, total) = self.cluster_rooms(after).await?;
        let mut out = Vec::with_capacity(rooms.len());
        for room in rooms {
            let members = self.members(&room).await?;
            if !members.is_empty() {
                out.push((room, members));
            }
        }
        Ok((out, total))
    }

    /// The rooms with a session on any node, read from every node's session index: sorted,
    /// the first [`MAX_LISTED_ROOMS`] after `after` (if given); and how many there are in all.
    /// Every node answers the same.
    pub async fn cluster_rooms(
        &self,
        after: Option<&RoomId>,
    ) -> Result<(Vec<RoomId>, usize), StoreError> {
        let mut rooms: std::collections::BTreeSet<RoomId> = self.rooms().into_iter().collect();
        let nodes: Vec<String> = self
            .store
            .query(redis::cmd("ZRANGE").arg(lease::NODES_KEY).arg(0).arg(-1))
            .await?;
        for node in nodes.iter().filter(|n| **n != self.cluster.node_id) {
            let entries = self.store.set_members(&node_sessions_key(node)).await?;
            rooms.extend(
                entries
                    .iter()
                    .filter_map(|e| parse_index_entry(e))
                    .map(|(room, _)| room),
            );
        }
        let total = rooms.len();
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let page = rooms
            .range((from, Bound::Unbounded))
            .take(MAX_LISTED_ROOMS)
            .cloned()
            .collect();
        Ok((page, total))
    }

    /// Ends `peer`'s session in `room` (every session of the room when `None`) by an
    /// operator's order, on whichever node it is attached or parked: the client gets the
    /// `code` error, its socket closes with the code's close code, its resume is refused with
    /// `code` and the rest of the room gets `peer_left` (a whole room: nobody stays to get
    /// one). Returns how many sessions ended.
    pub async fn end_by_admin(
        &self,
        room: &RoomId,
        peer: Option<&PeerId>,
        code: ErrorCode,
        message: &str,
    ) -> Result<u64, StoreError> {
        let error = to_json(&ServerMessage::Error {
            code,
            message: message.to_owned(),
            reference: None,
        });
        let left = left_template(LeaveReason::Ended);
        let close = code.close_code().unwrap_or(close_code::POLICY);
        let reply = self
            .store
            .call(
                Op::AdminEnd,
                room,
                &[
                    peer.map_or("", PeerId::as_str),
                    &error,
                    &left,
                    code.as_str(),
                    &self.tombstone_ms(),
                    &close.to_string(),
                ],
            )
            .await?;
        let mut ended = 0;
        for pair in reply.rest.chunks_exact(2) {
            let (Ok(key), node) = (u64::from_str_radix(&pair[0], 16), &pair[1]) else {
                continue;
            };
            self.index_remove(node, room, key).await;
            self.lock().unpark(key);
            self.metrics.error(code);
            tracing::info!(session = %pair[0], %room, %code, "session ended by the admin API");
            ended += 1;
        }
        Box::pin(self.end_overflowed(room, &reply)).await;
        Ok(ended)
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The rooms with a session on this node.
    pub fn rooms(&self) -> Vec<RoomId> {
        self.lock().rooms.keys().cloned().collect()
    }

    /// Sends fresh ICE servers to the sessions of `rooms` attached here (their relay
    /// changed). The sessions parked here get them when they come back: in `resumed`, or, on
    /// a quiet re-attach (HTTP), pushed at once (their refresh is made due now).
    pub async fn push_ice_servers(&self, rooms: &[RoomId]) {
        let (targets, parked) = {
            let st = self.lock();
            let attached: Vec<(SessionKey, RoomId, PeerId)> = st
                .attached
                .iter()
                .filter(|(_, s)| rooms.contains(&s.room))
                .map(|(k, s)| (*k, s.room.clone(), s.peer.clone()))
                .collect();
            let parked: Vec<(SessionKey, RoomId)> = st
                .parked
                .iter()
                .filter(|(_, p)| rooms.contains(&p.room))
                .map(|(k, p)| (*k, p.room.clone()))
                .collect();
            (attached, parked)
        };
        let due = self.ice_due_ms();
        for (key, room, peer) in targets {
            let body = to_json(&ServerMessage::IceServers {
                ice_servers: self.ice.mint(&peer, &room, SystemTime::now()),
            });
            if let Err(e) = self
                .store
                .call(Op::Emit, &room, &[&sid(key), &body, &due])
                .await
            {
                self.store_failed("ice servers", &e);
            }
        }
        for (key, room) in parked {
            if let Err(e) = self.store.call(Op::IceDue, &room, &[&sid(key), "0"]).await {
                self.store_failed("ice servers", &e);
            }
        }
    }

    /// Starts draining: refuses new sessions and tells every attached session to reconnect
    /// (through the balancer, to another node, where it resumes). A session parked here
    /// between two HTTP requests is told when it comes back (`tell_draining`).
    pub async fn start_draining(&self, reason: &str) {
        self.draining.store(true, Ordering::Release);
        *self
            .drain_reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = reason.to_owned();
        let sessions: Vec<(SessionKey, RoomId)> = {
            let st = self.lock();
            st.attached
                .iter()
                .map(|(k, s)| (*k, s.room.clone()))
                .collect()
        };
        for (key, room) in sessions {
            self.tell_draining(key, &room).await;
        }
    }

    /// Sends `draining` to session `key` unless it was told already.
    async fn tell_draining(&self, key: SessionKey, room: &RoomId) {
        if !self.lock().told_draining.insert(key) {
            return;
        }
        let reason = self
            .drain_reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let body = to_json(&ServerMessage::Draining {
            reason,
            reconnect_after_ms: self.settings.reconnect_after.as_millis() as u64,
        });
        if let Err(e) = self.store.call(Op::Emit, room, &[&sid(key), &body]).await {
            self.store_failed("draining", &e);
        }
    }

    /// Closes every attached socket with 1001 (the end of a drain).
    pub fn close_all(&self) {
        for session in self.lock().attached.values() {
            session.tx.close(None, close_code::GOING_AWAY);
        }
    }

    /// The peers of a room, oldest first, as the API lists them.
    pub async fn room_peers(&self, room: &RoomId) -> Result<Vec<PeerEntry>, StoreError> {
        Ok(self
            .members(room)
            .await?
            .into_iter()
            .map(|m| m.entry)
            .collect())
    }

    /// The members of a room, oldest first, with their stored `stats` links.
    async fn members(&self, room: &RoomId) -> Result<Vec<Member>, StoreError> {
        let reply = self.store.call(Op::Room, room, &[]).await?;
        let now_ms = unix_ms(SystemTime::now());
        Ok(reply
            .rest
            .chunks_exact(store::ROOM_FIELDS)
            .map(|c| Member::parse(c, now_ms))
            .collect())
    }

    /// Delivers an app message from the backend to every peer of `room`; returns how many.
    pub async fn backend_broadcast(&self, room: &RoomId, body: &str) -> Result<u64, StoreError> {
        let reply = self
            .store
            .call(Op::Broadcast, room, &["", body, ""])
            .await?;
        self.end_overflowed(room, &reply).await;
        let delivered = reply.rest.first().and_then(|n| n.parse().ok()).unwrap_or(0);
        self.metrics.messages_relayed.inc_by(delivered);
        Ok(delivered)
    }
}

/// At most this many rooms are listed by the admin views of a cluster.
pub const MAX_LISTED_ROOMS: usize = 1000;

/// What the resume script gave back.
struct ResumeOutcome {
    /// The node the session was on.
    old_node: String,
    /// When its TURN credentials are due for a refresh (Unix ms; '' when unknown).
    ice_due: String,
    /// Its latest `stats` links, as stored (the metrics count a pair reported again once).
    links: Vec<LinkView>,
    /// The position it resumes from.
    last_seq: u64,
    /// The frames to replay.
    frames: Vec<String>,
}

/// A room member as the room script reads it.
struct Member {
    entry: PeerEntry,
    links: Vec<LinkView>,
}

impl Member {
    /// Parses one member's [`store::ROOM_FIELDS`] strings: peer name node state
    /// attached-at-ms links-json reported-at-ms transport.
    fn parse(c: &[String], now_ms: u64) -> Self {
        let ms = |s: &str| s.parse::<u64>().ok();
        let links = Self::links(&c[5], &c[6], now_ms);
        Self {
            entry: PeerEntry {
                id: c[0].clone(),
                name: (!c[1].is_empty()).then(|| c[1].clone()),
                node: c[2].clone(),
                state: if c[3] == "a" { "attached" } else { "parked" },
                transport: Transport::from_name(&c[7]),
                connected_secs: ms(&c[4]).map(|at| now_ms.saturating_sub(at) / 1000),
            },
            links,
        }
    }

    /// The stored `links` JSON, reported at `reported_at_ms` (Unix ms), aged to `now_ms`.
    fn links(json: &str, reported_at_ms: &str, now_ms: u64) -> Vec<LinkView> {
        let report_age = reported_at_ms
            .parse::<u64>()
            .map_or(0, |at| now_ms.saturating_sub(at));
        let mut links: Vec<LinkView> = serde_json::from_str(json).unwrap_or_default();
        for link in &mut links {
            link.age_ms += report_age;
        }
        links
    }
}

/// Where a `stats` report reached [`ClusterHub::record_stats`] from.
#[derive(Debug, Clone, Copy)]
enum StatsSource {
    /// The session's own request (its id, for the `ref` of an `unknown_peer` answer).
    Client(Option<RequestId>),
    /// Sent on by the node that received it: kept or dropped, never answered or sent on.
    Forwarded,
}

/// Which state a session must be in for `end` to end it.
#[derive(Debug, Clone, Copy)]
enum Guard {
    /// Whatever its state (an overflowed outbox).
    Any,
    /// Attached to this node's connection (leave, slow consumer).
    Conn(ConnId),
    /// Whatever its state, by the holder of its token (an HTTP `leave`): a stream still
    /// attached, on any node, is closed normally.
    Token,
    /// Parked at this node with its grace period over.
    Expired,
}

fn reason_str(reason: LeaveReason) -> &'static str {
    match reason {
        LeaveReason::Left => "left",
        LeaveReason::Disconnected => "disconnected",
        LeaveReason::Timeout => "timeout",
        LeaveReason::Ended => "ended",
    }
}
