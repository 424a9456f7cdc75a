//! PeerJS server compatibility: the HTTP and WebSocket API of `peerjs-server`, served by our
//! hub, so a PeerJS app gets our limits, metrics, resume and cluster by pointing its `host`,
//! `port` and `path: '/peerjs'` at us. See `docs/compat.md`.
//!
//! - `GET /peerjs/{key}/id`: a fresh random peer id (text); cross-origin (`crate::cors`), 503
//!   while draining.
//! - `GET /peerjs/{key}/peers`: 401, as `peerjs-server` without `allow_discovery`.
//! - `GET /peerjs/peerjs?key=K&id=ID&token=T` (WebSocket): `OPEN` once registered, then
//!   `OFFER`/`ANSWER`/`CANDIDATE`/`LEAVE` to and from other peers of the key (the server adds
//!   `src`), `EXPIRE` when the destination is unknown, `ID-TAKEN` when another client holds the
//!   id, `ERROR`; the client's `HEARTBEAT`s keep the socket alive. A drain closes it with
//!   1001 at once (the session parks; `reconnect()` resumes it on another node).
//!
//! With `--jwt-secret`, the key must be a token (JWT) verified as `/ws` verifies `?token=`
//! ([`crate::auth`]): the peers' namespace is then the token's room, not the key's text, and a
//! token that fixes a name fixes the peer id. PeerJS's own `token` is the library's random
//! string (what tells its reconnects from a thief), so the JWT cannot go there.
//!
//! Every (namespace, id) is a hub session alone in a room named after the hash of both, so
//! namespaces are isolated and a message to `dst` is a backend broadcast into dst's room: it is
//! numbered into dst's outbox, on any node. When a socket drops, its session is parked for the
//! resume grace period (not `peerjs-server`'s 5 s): messages for it wait, bounded by the replay
//! limits, and a reconnect with the same id and token (what `peer.reconnect()` does) resumes
//! it and gets them. The registration (token, resume token, last delivered seq) is kept in the
//! process, or in Redis on a cluster, so the reconnect may reach any node.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{Utf8Bytes, WebSocket};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use fleet::link::Connection as RedisConnection;
use serde_json::{Value, json};
use subtle::ConstantTimeEq as _;

use crate::AppState;
use crate::api::{SERVER_SENDER, Transport};
use crate::auth::check_grant;
use crate::client_ip::IpSlot;
use crate::client_request::{ClientRequest, Refusal, Upgrade, refuse, with_limits};
use crate::connection::{Connection, Heard, Inbound};
use crate::error::RequestError;
use crate::hub::{
    Attached, ConnId, JoinRequest, Outbound, OutboundRx, OutboundTx, ResumeFrom, ResumeRequest,
    SessionKey,
};
use crate::protocol::{
    ClientMessage, ErrorCode, PeerId, ResumeToken, RetryClass, RoomId, ServerMessage, close_code,
};
use crate::rate_limit::TokenBucket;
use crate::written_acks::{self, LibraryFrame, WrittenFrames};

/// Keys, ids and tokens are at most this long (`peerjs-server` takes any string).
const MAX_NAME: usize = 64;

/// With `--jwt-secret`, a key (a JWT) is at most this long.
const MAX_TOKEN_KEY: usize = 4096;

/// The room of peer `id` in `namespace` (see `namespace`).
pub fn peer_room(namespace: &str, id: &str) -> RoomId {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(namespace.as_bytes());
    ctx.update(&[0]);
    ctx.update(id.as_bytes());
    RoomId(format!("pj.{}", hex::encode(&ctx.finish().as_ref()[..20])))
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:@".contains(c))
}

/// The namespace of the peers of `key`, and the id the key fixes (if any). Without
/// `--jwt-secret`, the key itself (`invalid_message` unless a valid name). With it, the key
/// must be a valid token (`unauthorized`): the namespace is its room, so every holder of a
/// token for that room sees the same peers; a token that fixes a name makes it the only id
/// it may register (`forbidden` for `id` otherwise). A room namespace starts with `room `,
/// which no key can (no spaces), should SIGHUP turn auth on or off.
fn namespace(
    app: &AppState,
    key: &str,
    id: Option<&str>,
) -> Result<(String, Option<String>), RequestError> {
    let Some(auth) = app.live().auth.clone() else {
        if !valid_name(key) {
            return Err(RequestError::new(
                ErrorCode::InvalidMessage,
                "key, id and token are 1 to 64 characters of [A-Za-z0-9-_.:@]",
            ));
        }
        return Ok((key.to_owned(), None));
    };
    if key.is_empty() || key.len() > MAX_TOKEN_KEY {
        return Err(RequestError::new(
            ErrorCode::Unauthorized,
            "this server requires a token (JWT) as the PeerJS key",
        ));
    }
    let claims = auth.verify(key)?;
    let fixed = check_grant(&claims, &claims.room, id.map(str::to_owned))?;
    // A display name such as `Ada Lovelace` is no PeerJS id: such a token can never register.
    if fixed.as_deref().is_some_and(|name| !valid_name(name)) {
        return Err(RequestError::new(
            ErrorCode::Forbidden,
            "the token's name is no PeerJS id (1 to 64 characters of [A-Za-z0-9-_.:@])",
        ));
    }
    Ok((format!("room {}", claims.room), fixed))
}

/// What a reconnect needs to find its session again.
#[derive(Debug, Clone, PartialEq)]
struct Registration {
    /// The client's own token (PeerJS draws one per `Peer`).
    token: String,
    resume: ResumeToken,
    /// The last frame written to the client when its socket ended. A reconnect resumes from
    /// what the session acknowledged instead (`ResumeFrom::Acknowledged`: this is stale after
    /// a socket that did not end here); kept in the stored form for nodes of earlier versions.
    last_seq: u64,
}

impl Registration {
    /// The form Redis keeps (`LAST_SEQ TOKEN_CHECK SEALED_RESUME`): the client's token only
    /// as a hash, and the resume token with its secret masked by a key only the client's token
    /// gives, so that what Redis holds resumes nothing (a cluster's resume tokens have the
    /// shape `SID.SECRET.PEER.ROOM`, the secret 32 hex digits). `None` for another shape.
    fn seal(&self) -> Option<String> {
        let sealed = mask_secret(&self.resume, &self.token)?;
        Some(format!(
            "{} {} {}",
            self.last_seq,
            token_check(&self.token),
            sealed.as_str()
        ))
    }

    /// The registration [`Self::seal`] made, for the client that presents `token`; `None`
    /// for another token (or a value of another shape).
    fn unseal(sealed: &str, token: &str) -> Option<Self> {
        let mut parts = sealed.splitn(3, ' ');
        let last_seq = parts.next()?.parse().ok()?;
        let check = parts.next()?;
        let resume = parts.next()?;
        if !bool::from(check.as_bytes().ct_eq(token_check(token).as_bytes())) {
            return None;
        }
        Some(Self {
            token: token.to_owned(),
            resume: mask_secret(&ResumeToken::from(resume), token)?,
            last_seq,
        })
    }
}

/// SHA-256 of `token` under `label`.
fn token_digest(label: &str, token: &str) -> ring::digest::Digest {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(label.as_bytes());
    ctx.update(&[0]);
    ctx.update(token.as_bytes());
    ctx.finish()
}

/// What Redis keeps of a client's token to recognise it.
fn token_check(token: &str) -> String {
    hex::encode(token_digest("peerjs token", token))
}

/// The resume token with its secret masked by a key drawn from the client's `token` (masking
/// twice gives it back).
fn mask_secret(resume: &ResumeToken, token: &str) -> Option<ResumeToken> {
    crate::cluster::mask_token_secret(resume, token_digest("peerjs resume secret", token).as_ref())
}

/// Where registrations live: this process, or the cluster's Redis.
pub struct Registrations(Store);

enum Store {
    Local(Mutex<HashMap<(String, String), (Registration, Instant)>>),
    Redis(RedisConnection, Duration),
}

impl Registrations {
    /// In this process (a single node).
    pub fn local() -> Self {
        Self(Store::Local(Mutex::default()))
    }

    /// In the cluster's Redis, so a reconnect may reach any node.
    pub fn redis(conn: RedisConnection, timeout: Duration) -> Self {
        Self(Store::Redis(conn, timeout))
    }

    fn redis_key(key: &str, id: &str) -> String {
        format!("sig:pj:{}", peer_room(key, id))
    }

    /// The registration of (key, id) made by the client that presents `token`.
    async fn get(
        &self,
        key: &str,
        id: &str,
        token: &str,
    ) -> Result<Option<Registration>, StoreFailed> {
        match &self.0 {
            Store::Local(map) => {
                let map = map.lock().unwrap_or_else(|e| e.into_inner());
                Ok(map
                    .get(&(key.to_owned(), id.to_owned()))
                    .map(|(r, _)| r.clone())
                    .filter(|r| r.token == token))
            }
            Store::Redis(conn, timeout) => {
                let cmd = redis::cmd("GET").arg(Self::redis_key(key, id)).to_owned();
                let value: Option<String> =
                    conn.query(&cmd, *timeout).await.map_err(|_| StoreFailed)?;
                Ok(value.and_then(|value| Registration::unseal(&value, token)))
            }
        }
    }

    /// Stores `registration` for `ttl` (the session's grace period and a margin).
    async fn put(
        &self,
        key: &str,
        id: &str,
        registration: &Registration,
        ttl: Duration,
    ) -> Result<(), StoreFailed> {
        match &self.0 {
            Store::Local(map) => {
                let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                // Forget registrations past their time (bounded by the sessions alive).
                if map.len() > 1024 {
                    map.retain(|_, (_, until)| *until > now);
                }
                map.insert(
                    (key.to_owned(), id.to_owned()),
                    (registration.clone(), now + ttl),
                );
                Ok(())
            }
            Store::Redis(conn, timeout) => {
                let Some(sealed) = registration.seal() else {
                    tracing::warn!("a PeerJS registration of an unexpected shape was not stored");
                    return Err(StoreFailed);
                };
                let cmd = redis::cmd("SET")
                    .arg(Self::redis_key(key, id))
                    .arg(sealed)
                    .arg("PX")
                    .arg(ttl.as_millis() as u64)
                    .to_owned();
                conn.query::<()>(&cmd, *timeout).await.map_err(|e| {
                    tracing::warn!(error = %e, "could not store a PeerJS registration");
                    StoreFailed
                })
            }
        }
    }
}

/// `GET /peerjs/{key}/id`: a fresh peer id (or the one the key's token fixes). Refused as an
/// upgrade would be: origin, draining, the key (see `namespace`).
pub async fn new_id(
    State(app): State<Arc<AppState>>,
    client: ClientRequest,
    Path(key): Path<String>,
) -> Result<Response, Refusal> {
    let checked = client
        .check_open(&app)
        .and_then(|()| namespace(&app, &key, None));
    let (_, fixed) = checked.map_err(|e| refuse(&app, &e))?;
    let id = fixed.unwrap_or_else(random_id);
    Ok((
        [
            (header::CONTENT_TYPE, "text/plain"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        id,
    )
        .into_response())
}

/// A random UUID v4, as `peerjs-server` hands out.
fn random_id() -> String {
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        rand::random::<u32>(),
        rand::random::<u16>(),
        rand::random::<u16>() & 0xfff,
        (rand::random::<u16>() & 0x3fff) | 0x8000,
        rand::random::<u64>() & 0xffff_ffff_ffff
    )
}

/// `GET /peerjs/{key}/peers`: peer discovery is off, as `peerjs-server` by default.
pub async fn peers() -> Response {
    (StatusCode::UNAUTHORIZED, "peer discovery is disabled\n").into_response()
}

/// `GET /peerjs/peerjs?key=&id=&token=`: the PeerJS socket.
pub async fn upgrade(
    State(app): State<Arc<AppState>>,
    client: ClientRequest,
    Upgrade(ws): Upgrade,
) -> Result<Response, Refusal> {
    // The registration's request read: where `signaling_join_latency_seconds` starts.
    let received = Instant::now();
    let field = |name: &str| client.query.get(name).cloned().unwrap_or_default();
    let (key, id, token) = (field("key"), field("id"), field("token"));
    if !(valid_name(&id) && valid_name(&token)) {
        let e = RequestError::new(
            ErrorCode::InvalidMessage,
            "key, id and token are 1 to 64 characters of [A-Za-z0-9-_.:@]",
        );
        return Err(refuse(&app, &e));
    }
    let ip_slot = client.admit_socket(&app)?;
    let (namespace, _) = namespace(&app, &key, Some(&id)).map_err(|e| refuse(&app, &e))?;
    Ok(with_limits(ws, &app)
        .on_upgrade(move |socket| run(socket, app, ip_slot, received, namespace, id, token)))
}

/// A server message of the PeerJS protocol.
fn server_message(kind: &str, payload_msg: Option<&str>) -> Utf8Bytes {
    let value = match payload_msg {
        Some(msg) => json!({"type": kind, "payload": {"msg": msg}}),
        None => json!({"type": kind}),
    };
    Utf8Bytes::from(value.to_string())
}

struct PeerSocket {
    app: Arc<AppState>,
    conn: ConnId,
    socket: Connection,
    /// The peers' namespace (see [`namespace`]).
    namespace: String,
    id: String,
    token: String,
    session: SessionKey,
    peer: PeerId,
    resume: ResumeToken,
    last_seq: u64,
    /// Frames written and not yet acknowledged (PeerJS has no acks: this socket sends them).
    written: WrittenFrames,
    /// When they are acknowledged at the latest.
    ack_at: Option<tokio::time::Instant>,
    bucket: TokenBucket,
    /// When the client was last heard from (anything it sent, read while a write waited too).
    last_heard: Instant,
}

async fn run(
    socket: WebSocket,
    app: Arc<AppState>,
    ip_slot: IpSlot,
    received: Instant,
    namespace: String,
    id: String,
    token: String,
) {
    // Counted from the upgrade, as every socket is: a refused registration too.
    let open = app.connections.open();
    let conn = app.next_conn.fetch_add(1, Ordering::Relaxed);
    let mut socket = Connection::new(socket, app.config.ping_timeout);
    let (tx, mut rx) = app.outbound_queue();
    let new = NewPeer {
        namespace: &namespace,
        id: &id,
        token: &token,
        received,
    };
    let registered = match register(&app, conn, &tx, &ip_slot, new).await {
        Ok(registered) => registered,
        Err(Refused { message, close }) => {
            let _ = socket.send_text(message).await;
            socket.close(close, "").await;
            return;
        }
    };
    let (attached, last_seq) = registered;
    let now = Instant::now();
    let mut this = PeerSocket {
        bucket: TokenBucket::new(app.live().rate_burst, now),
        conn,
        socket,
        namespace,
        id,
        token,
        session: attached.key,
        peer: attached.peer,
        resume: attached.token,
        last_seq,
        written: WrittenFrames::default(),
        ack_at: None,
        last_heard: now,
        app,
    };
    let mut step = this
        .socket
        .send_text(server_message("OPEN", None))
        .await
        .map_err(|_| None);
    for frame in attached.replay {
        if step.is_ok() {
            step = this.deliver(Outbound::Frame(frame)).await;
        }
    }
    if step.is_ok() {
        step = this.serve(&mut rx).await;
    }
    if let Err(Some(code)) = step {
        this.socket.close(code, "").await;
    }
    this.socket.release();
    // What was written and not acknowledged yet (the last 16 frames or 200 ms) is left so: the
    // client may not have read it (a socket reset with it unread), and the reconnect, resuming
    // from what was acknowledged, sends it again (`compat.md`). Acknowledged here, it was lost.
    // Parked for the grace period: a reconnect with the same id and token resumes it.
    this.app
        .hub
        .detach(
            this.session,
            this.conn,
            crate::protocol::LeaveReason::Disconnected,
        )
        .await;
    // Failing, the registration stored last (at the join or a renewal) stays, with its time.
    let registration = this.registration();
    let app = Arc::clone(&this.app);
    let _ = app
        .peerjs
        .put(
            &this.namespace,
            &this.id,
            &registration,
            registration_ttl(&app),
        )
        .await;
    drop((tx, ip_slot, open));
}

/// The shared store did not answer, or refused (a write it would not take), or the
/// registration could not be put in the form it keeps.
#[derive(Debug)]
struct StoreFailed;

/// A registration refused: the message the client gets, then the close.
struct Refused {
    message: Utf8Bytes,
    close: u16,
}

impl From<Utf8Bytes> for Refused {
    /// Refused for good (a limit, a taken id): 1008.
    fn from(message: Utf8Bytes) -> Self {
        Self {
            message,
            close: close_code::POLICY,
        }
    }
}

impl Refused {
    /// `ID-TAKEN`: another client's live session holds the id (counted as a refused resume).
    fn id_taken(app: &AppState) -> Self {
        app.metrics.error(ErrorCode::ResumeFailed);
        server_message("ID-TAKEN", Some("ID is taken")).into()
    }

    /// Refused for now (the store does not answer or did not record the registration, the
    /// node drains, a limit of this node):
    /// `ERROR` and 1013, never `ID-TAKEN`, which PeerJS takes as final (the client's own
    /// session may hold the id, on a node that could not hand it over yet).
    fn for_now(app: &AppState, code: ErrorCode) -> Self {
        app.metrics.error(code);
        Self {
            message: server_message(
                "ERROR",
                Some("the server cannot take the id now: reconnect shortly"),
            ),
            close: close_code::TRY_AGAIN_LATER,
        }
    }
}

/// What a socket asks to register as.
struct NewPeer<'a> {
    /// The peers' namespace (see [`namespace`]).
    namespace: &'a str,
    id: &'a str,
    token: &'a str,
    /// When its request was read.
    received: Instant,
}

/// Registers (key, id): resumes the client's earlier session when its token matches, refuses
/// with `ID-TAKEN` when a live session of another client holds the id, joins otherwise (the
/// join counted in `signaling_join_latency_seconds`, as a `join` is).
async fn register(
    app: &Arc<AppState>,
    conn: ConnId,
    tx: &OutboundTx,
    ip_slot: &IpSlot,
    new: NewPeer<'_>,
) -> Result<(Attached, u64), Refused> {
    let NewPeer {
        namespace,
        id,
        token,
        received,
    } = new;
    let room = peer_room(namespace, id);
    let earlier = app
        .peerjs
        .get(namespace, id, token)
        .await
        .map_err(|StoreFailed| Refused::for_now(app, ErrorCode::Unavailable))?;
    if let Some(earlier) = earlier {
        let resumed = app
            .hub
            .resume(
                conn,
                tx,
                ResumeRequest {
                    reference: None,
                    version: 1,
                    token: earlier.resume.clone(),
                    from: ResumeFrom::Acknowledged,
                    announce: false,
                    ticket: ip_slot.try_session(),
                },
            )
            .await;
        // A reconnect is a client's resume, counted as one (the hub counts the announced ones).
        app.metrics.resume(resumed.is_ok());
        match resumed {
            Ok(attached) => return Ok((attached, earlier.last_seq)),
            // Its own session may hold the id still: no `ID-TAKEN` for a failure that passes.
            Err(e) if e.code.retry_class() == RetryClass::Retry => {
                return Err(Refused::for_now(app, e.code));
            }
            Err(_) => {}
        }
    }
    let taken = app
        .hub
        .room_peers(&room)
        .await
        .map_err(|_| Refused::for_now(app, ErrorCode::Unavailable))?;
    if !taken.is_empty() {
        return Err(Refused::id_taken(app));
    }
    if !ip_slot.try_join(Instant::now()) {
        app.metrics.error(ErrorCode::RateLimited);
        return Err(server_message("ERROR", Some("too many joins from this address")).into());
    }
    let ticket = ip_slot.try_session().ok_or_else(|| {
        app.metrics.error(ErrorCode::TooManySessions);
        server_message("ERROR", Some("too many sessions from this address"))
    })?;
    let attached = app
        .hub
        .join(
            conn,
            tx,
            JoinRequest {
                reference: None,
                version: 1,
                room,
                // The admin API shows it: what tells an operator which client this is.
                name: Some(id.to_owned()),
                ticket: Some(ticket),
                transport: Transport::PeerJs,
                // Another client that registered the id since the check above holds it.
                alone: true,
            },
        )
        .await
        .map_err(|e| {
            if e.code == ErrorCode::RoomFull {
                return Refused::id_taken(app);
            }
            app.metrics.error(e.code);
            let close = match e.code.retry_class() {
                RetryClass::Retry => close_code::TRY_AGAIN_LATER,
                _ => close_code::POLICY,
            };
            Refused {
                message: server_message("ERROR", Some(&e.message)),
                close,
            }
        })?;
    let registration = Registration {
        token: token.to_owned(),
        resume: attached.token.clone(),
        last_seq: 0,
    };
    if app
        .peerjs
        .put(namespace, id, &registration, registration_ttl(app))
        .await
        .is_err()
    {
        // Unrecorded, the session would hold the id against the client's own reconnect
        // (`ID-TAKEN`): it ends (as a `leave`: nobody else is in its room), and only then is
        // the client told to come back, so that its reconnect finds the id free. With Redis
        // hanging that answer takes up to two `--redis-timeout`s; a leave that fails is
        // retried by the hub, and meanwhile the reconnect's registration read fails (1013).
        let leave = ClientMessage::Leave { id: None };
        let _ = app
            .hub
            .handle(attached.key, conn, &attached.peer, leave)
            .await;
        return Err(Refused::for_now(app, ErrorCode::Unavailable));
    }
    app.metrics
        .join_latency
        .observe(received.elapsed().as_secs_f64());
    Ok((attached, 0))
}

fn registration_ttl(app: &AppState) -> Duration {
    app.config.resume_grace + Duration::from_secs(60)
}

impl PeerSocket {
    /// Serves the socket until it ends: `Err` with the close code to send, if any.
    async fn serve(&mut self, rx: &mut OutboundRx) -> Result<(), Option<u16>> {
        let interval = self.app.config.ping_interval;
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        loop {
            let step = tokio::select! {
                // Its answer, if any (`EXPIRE`, an `ERROR`), is heard through as any write is.
                inbound = self.socket.recv() => self.hear_through(Heard::Inbound(inbound)).await,
                Some(out) = rx.recv() => self.deliver(out).await,
                () = written_acks::sleep_until(self.ack_at), if self.ack_at.is_some() => {
                    self.ack_delivered().await;
                    Ok(())
                }
                _ = ticker.tick() => {
                    if self.last_heard.elapsed() >= self.app.config.ping_timeout {
                        Err(Some(1008))
                    } else {
                        self.renew_registration();
                        let heard = self.socket.ping_hearing(true).await;
                        self.hear_through(heard).await
                    }
                }
            };
            step?;
        }
    }

    /// Sees a write through (`heard`: how it went so far), handling what the client sends
    /// meanwhile: a client slow to read is still heard (its heartbeats, its messages to other
    /// peers), not found silent once the write is done.
    async fn hear_through(&mut self, mut heard: Heard) -> Result<(), Option<u16>> {
        loop {
            match heard {
                Heard::Sent(sent) => return sent.map_err(|_| None),
                Heard::Inbound(inbound) => self.on_inbound(inbound).await?,
            }
            heard = self.socket.go_on_hearing(true).await;
        }
    }

    /// A frame of the session: the PeerJS message inside a backend broadcast, written as is.
    async fn deliver(&mut self, out: Outbound) -> Result<(), Option<u16>> {
        let frame = match out {
            Outbound::Frame(frame) => frame,
            Outbound::Close { code, .. } => return Err(Some(code)),
        };
        let (seq, len, data) = match LibraryFrame::of(&frame) {
            Some(LibraryFrame::Broadcast { seq, len, data }) => (seq, len, data),
            // Closed at once, so the client's `reconnect()` finds another node (PeerJS reports
            // a `network` error on any close and the app reconnects); acknowledged now, so that
            // the resume does not replay it (it would close that socket too, again and again).
            Some(LibraryFrame::Draining { seq, len }) => {
                self.handled(seq, len).await;
                self.ack_delivered().await;
                return Err(Some(close_code::GOING_AWAY));
            }
            // welcome, ice_servers, ...: PeerJS has no such messages.
            Some(LibraryFrame::Other { seq, len }) => {
                self.handled(seq, len).await;
                return Ok(());
            }
            None => return Ok(()),
        };
        // Handled once written: a frame whose write fails is replayed by the resume.
        let heard = self
            .socket
            .send_text_hearing(Utf8Bytes::from(data.to_string()), true)
            .await;
        self.hear_through(heard).await?;
        self.handled(seq, len).await;
        Ok(())
    }

    /// Frame `seq` (`len` bytes) is done with: the resume starts after it, and it is
    /// acknowledged now or by the ack timer.
    async fn handled(&mut self, seq: u64, len: usize) {
        self.last_seq = seq;
        if let Some(seq) = self.written.record(seq, len, &mut self.ack_at) {
            self.ack(seq).await;
        }
    }

    /// Acknowledges every frame written to the client, so the replay buffer holds only what
    /// it has not had. Not when the socket ends: what was written last may be unread.
    async fn ack_delivered(&mut self) {
        self.ack_at = None;
        if let Some(seq) = self.written.take() {
            self.ack(seq).await;
        }
    }

    async fn ack(&mut self, seq: u64) {
        let _ = self
            .app
            .hub
            .handle(
                self.session,
                self.conn,
                &self.peer,
                ClientMessage::Ack { seq },
            )
            .await;
    }

    /// Counts `code`, tells the client with an `ERROR`, and closes the socket with `close`.
    async fn fail(&mut self, code: ErrorCode, msg: &str, close: u16) -> Result<(), Option<u16>> {
        self.app.metrics.error(code);
        let _ = self
            .socket
            .send_text(server_message("ERROR", Some(msg)))
            .await;
        Err(Some(close))
    }

    async fn on_inbound(&mut self, inbound: Inbound) -> Result<(), Option<u16>> {
        self.last_heard = Instant::now();
        let read = match inbound {
            Inbound::Text(text) => Ok(text),
            Inbound::Alive => return Ok(()),
            Inbound::Closed => return Err(None),
            Inbound::Binary => Err((ErrorCode::BinaryNotSupported, "text frames only", 1007)),
            Inbound::NotUtf8 => Err((ErrorCode::InvalidMessage, "invalid message", 1007)),
            Inbound::TooLarge => Err((ErrorCode::MessageTooLarge, "message too large", 1009)),
            Inbound::ProtocolViolation => Err((ErrorCode::InvalidMessage, "invalid message", 1002)),
        };
        let text = match read {
            Ok(text) => text,
            Err((code, message, close)) => return self.fail(code, message, close).await,
        };
        let config = self.app.live();
        if !self
            .bucket
            .try_take(Instant::now(), config.rate_limit, config.rate_burst)
        {
            return self
                .fail(ErrorCode::RateLimited, "rate limited", 1008)
                .await;
        }
        let Ok(mut message) = serde_json::from_str::<Value>(&text) else {
            return self
                .fail(ErrorCode::InvalidMessage, "invalid message", 1007)
                .await;
        };
        let kind = message["type"].as_str().unwrap_or("").to_owned();
        match kind.as_str() {
            "HEARTBEAT" => Ok(()),
            "OFFER" | "ANSWER" | "CANDIDATE" | "LEAVE" | "EXPIRE" => {
                let Some(dst) = message["dst"].as_str().map(str::to_owned) else {
                    return Ok(());
                };
                message["src"] = Value::String(self.id.clone());
                self.forward(&kind, &dst, message).await
            }
            _ => {
                self.app.metrics.error(ErrorCode::InvalidMessage);
                // Queued: a message read while a write waits does not stop the hearing.
                self.socket
                    .queue_text(server_message("ERROR", Some("Message unrecognized")));
                Ok(())
            }
        }
    }

    /// Delivers `message` to peer `dst` of the same key; an unknown `dst` is answered with
    /// `EXPIRE`, as `peerjs-server` does once its queue times out.
    async fn forward(&mut self, kind: &str, dst: &str, message: Value) -> Result<(), Option<u16>> {
        if !valid_name(dst) {
            return Ok(());
        }
        let delivered = self
            .app
            .hub
            .backend_broadcast(
                &peer_room(&self.namespace, dst),
                ServerMessage::Broadcast {
                    from: PeerId::from(SERVER_SENDER),
                    data: message,
                },
            )
            .await;
        match delivered {
            Ok(0) if kind != "LEAVE" && kind != "EXPIRE" => {
                let expire = json!({"type": "EXPIRE", "src": dst}).to_string();
                self.socket.queue_text(Utf8Bytes::from(expire));
                Ok(())
            }
            // Counted by the hub, once per delivery.
            Ok(_) => Ok(()),
            Err(_) => Err(Some(1013)),
        }
    }

    /// Stores the registration again (in a task of its own: a hanging Redis does not hold the
    /// socket up), so that it outlives a socket that lives longer than its time to live: a
    /// reconnect after the node died, or after an outage, finds it.
    fn renew_registration(&self) {
        let (app, registration) = (Arc::clone(&self.app), self.registration());
        let (namespace, id) = (self.namespace.clone(), self.id.clone());
        tokio::spawn(async move {
            // Failing, the next renewal stores it (the time to live spans several).
            let _ = app
                .peerjs
                .put(&namespace, &id, &registration, registration_ttl(&app))
                .await;
        });
    }

    /// Where the client is, for its reconnect.
    fn registration(&self) -> Registration {
        Registration {
            token: self.token.clone(),
            resume: self.resume.clone(),
            last_seq: self.last_seq,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The formula `compat.md` gives operators: `pj.` and the first 40 hex digits of
    /// SHA-256(NAMESPACE, a zero byte, ID), the namespace the key (or `room ` and a token's
    /// room). (`python3 -c "import hashlib; print(hashlib.sha256(b'app\x00alice').hexdigest()[:40])"`)
    #[test]
    fn the_room_of_a_peer_is_the_documented_hash() {
        assert_eq!(
            peer_room("app", "alice").as_str(),
            "pj.0fd57fc248c69c738f07156c315460d0ffd7d156"
        );
        assert_eq!(
            peer_room("room demo", "alice").as_str(),
            "pj.9a44b53aa8c1d2b48804271c627919c64308ed70"
        );
    }

    #[test]
    fn rooms_isolate_keys_and_registrations_round_trip() {
        assert_ne!(peer_room("k1", "alice"), peer_room("k2", "alice"));
        assert!(crate::protocol::is_valid_room_id(
            peer_room("k", "a").as_str()
        ));
        let secret = "00112233445566778899aabbccddeeff";
        let r = Registration {
            token: "t0k3n".into(),
            resume: ResumeToken::from(format!("00c0ffee00c0ffee.{secret}.peer.room").as_str()),
            last_seq: 42,
        };
        let sealed = r.seal().expect("a cluster token");
        assert!(
            !sealed.contains(secret) && !sealed.contains("t0k3n"),
            "{sealed}"
        );
        assert_eq!(Registration::unseal(&sealed, "t0k3n"), Some(r));
        assert_eq!(Registration::unseal(&sealed, "t0k3m"), None);
        assert!(valid_name("3f2a-..:@x") && !valid_name("a b") && !valid_name(""));
    }
}
