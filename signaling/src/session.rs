//! The per-socket task: one `select!` over inbound frames, the session's bounded outbound
//! queue and the ping timer, until the socket closes. While a write of the session's waits for
//! a client that does not read, what the client sends is still read and handled
//! (`SocketTask::hearing`): its `leave` is carried out at once, not after the write timeout.
//!
//! Before `join`/`resume` the socket has no session, and errors are written straight to it with
//! `seq` 0. After, everything the client receives goes through the hub (numbered, kept for
//! replay) and arrives here through the queue. When the socket ends, the session is parked for
//! the resume grace period (the hub ignores that if the session already ended or moved to a
//! newer socket).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::WebSocket;
use serde::Deserialize;
use tokio::time::MissedTickBehavior;

use crate::AppState;
use crate::admission::{Admission, refusal_close_code};
use crate::api::Transport;
use crate::auth::Claims;
use crate::client_ip::IpSlot;
use crate::connection::{Connection, Heard, Inbound, SendFailed};
use crate::error::RequestError;
use crate::hub::{ConnId, Flow, Outbound, OutboundRx, OutboundTx, SessionKey, encode};
use crate::outbox::Frame;
use crate::protocol::{
    ClientMessage, ErrorCode, LeaveReason, PeerId, RequestId, RoomId, ServerFrame, ServerMessage,
    close_code,
};
use crate::rate_limit::{TokenBucket, message_cost};

/// What the upgrade handler learned from the HTTP request.
#[derive(Debug)]
pub struct Handshake {
    pub conn: ConnId,
    /// The room named by the URL (`/ws/ROOM`), not validated yet.
    pub path_room: Option<RoomId>,
    /// The claims of a valid `?token=`, verified before the upgrade.
    pub claims: Option<Claims>,
    /// The connection's place among its client address's (given back when the task ends).
    pub ip_slot: IpSlot,
}

/// Runs one socket to its end.
pub async fn run(socket: WebSocket, app: Arc<AppState>, handshake: Handshake) {
    let (tx, rx) = app.outbound_queue();
    let now = Instant::now();
    let mut task = SocketTask {
        conn: Connection::new(socket, app.config.ping_timeout),
        bucket: TokenBucket::new(app.live().rate_burst, now),
        app,
        handshake,
        tx,
        key: None,
        peer: PeerId::from(""),
        last_heard: now,
        opened: now,
        reading: true,
        last_rate_reply: None,
        rate_dropped: 0,
        replay: VecDeque::new(),
    };
    let _open = task.app.connections.open();
    let reason = task.run(rx).await;
    task.conn.release();
    if let Some(key) = task.key {
        task.app.hub.detach(key, task.handshake.conn, reason).await;
    }
    tracing::debug!(?reason, "connection closed");
}

struct SocketTask {
    conn: Connection,
    app: Arc<AppState>,
    handshake: Handshake,
    /// Our own handle on the outbound queue, handed to the hub at join/resume. Holding it means
    /// the queue never reports "closed": the hub ends a session with an explicit `Close`.
    tx: OutboundTx,
    key: Option<SessionKey>,
    /// The session's peer id, once joined or resumed.
    peer: PeerId,
    bucket: TokenBucket,
    /// The last time anything arrived (frames, pongs).
    last_heard: Instant,
    opened: Instant,
    /// False once the read side is unusable (oversize frame) or must not be read any more (a
    /// numbered frame over the rate): only the queue is served then, up to its close.
    reading: bool,
    /// When the last `rate_limited` reply was sent: at most one a second, so a flood does not
    /// turn into a flood of replies.
    last_rate_reply: Option<Instant>,
    /// Messages dropped by the rate limit since that reply.
    rate_dropped: u64,
    /// The missed frames a join or resume has still to write, in order, before anything of
    /// the queue (each heard through as a queued frame is: a `leave` read meanwhile is
    /// carried out at once).
    replay: VecDeque<Frame>,
}

/// At most one `rate_limited` reply per connection in this time.
const RATE_REPLY_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// At most this much of a client's input is quoted back in an error message.
const MAX_ECHO: usize = 120;

/// How long, after a `leave`, the frames queued for the session before it may take to go
/// out (`SocketTask::send_queued`).
const QUEUED_AFTER_LEAVE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// `text` cut to at most [`MAX_ECHO`] bytes (on a character boundary), marked when cut.
pub(crate) fn short(mut text: String) -> String {
    if text.len() > MAX_ECHO {
        let mut end = MAX_ECHO;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("...");
    }
    text
}

/// Whether the loop goes on.
enum Step {
    Continue,
    Stop(LeaveReason),
    /// The session left (`leave`): what was queued for it before goes out, then the close.
    Left,
}

#[derive(Deserialize)]
struct IdProbe {
    id: Option<RequestId>,
}

impl SocketTask {
    async fn run(&mut self, mut rx: OutboundRx) -> LeaveReason {
        let interval = self.app.config.ping_interval;
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let step = match self.replay.pop_front() {
                Some(frame) => {
                    let heard = self
                        .conn
                        .send_text_hearing(frame.text(), self.reading)
                        .await;
                    self.hearing(heard).await
                }
                None => tokio::select! {
                    inbound = self.conn.recv(), if self.reading => self.on_inbound(inbound).await,
                    Some(out) = rx.recv() => self.on_outbound(out).await,
                    _ = ticker.tick() => self.on_tick().await,
                },
            };
            match step {
                Step::Continue => {}
                Step::Stop(reason) => return reason,
                Step::Left => {
                    // A client that does not read does not hold the task up past the wait;
                    // its connection is dropped then, without a close frame it would not read.
                    let sent =
                        tokio::time::timeout(QUEUED_AFTER_LEAVE_WAIT, self.send_queued(&mut rx));
                    if sent.await.unwrap_or(false) {
                        self.conn.close(close_code::NORMAL, "left").await;
                    }
                    return LeaveReason::Left;
                }
            }
        }
    }

    /// After `leave`: the frames the hub queued for the session before it left (a
    /// `peer_left` of a peer that left a moment before, say) are sent before the close;
    /// `false` if a write failed.
    async fn send_queued(&mut self, rx: &mut OutboundRx) -> bool {
        // The write the `leave` was read during, if any, goes first, then the rest of a
        // replay.
        if self.conn.finish().await.is_err() {
            return false;
        }
        while let Some(frame) = self.replay.pop_front() {
            if self.conn.send_text(frame.text()).await.is_err() {
                return false;
            }
        }
        while let Some(out) = rx.try_recv() {
            // A close the hub queued (after an error) gives way to the `leave`'s.
            let Outbound::Frame(frame) = out else { break };
            if self.conn.send_text(frame.text()).await.is_err() {
                return false;
            }
        }
        true
    }

    async fn on_outbound(&mut self, out: Outbound) -> Step {
        match out {
            Outbound::Frame(frame) => {
                let heard = self
                    .conn
                    .send_text_hearing(frame.text(), self.reading)
                    .await;
                self.hearing(heard).await
            }
            Outbound::Close { frame, code } => {
                if let Some(frame) = frame {
                    let _ = self.conn.send_text(frame).await;
                }
                self.close_after_error(code).await;
                Step::Stop(LeaveReason::Disconnected)
            }
        }
    }

    /// Closes the socket with `code` after an error frame. One that cannot be read past a frame
    /// (too large: the rest of it is still in the kernel) is not drained by the close, and
    /// closing it at once would reset the connection, which could destroy the error and the
    /// close frame before the client reads them: it waits a moment first.
    async fn close_after_error(&mut self, code: u16) {
        if !self.conn.close(code, "").await && !self.reading {
            tokio::time::sleep(UNREAD_LINGER).await;
        }
    }

    async fn on_tick(&mut self) -> Step {
        let timeout = self.app.config.ping_timeout;
        // First the join: a socket that never joined is told so, silent or not (silence past
        // the timeout means the join's time is up too: it was heard from last when it opened
        // or later).
        if self.key.is_none() && self.opened.elapsed() >= timeout {
            let error = RequestError::new(
                ErrorCode::NotJoined,
                "no join or resume within the ping timeout",
            );
            self.send_direct(error, None).await;
            self.conn.close(close_code::POLICY, "join timeout").await;
            return Step::Stop(LeaveReason::Disconnected);
        }
        if self.last_heard.elapsed() >= timeout {
            tracing::info!("silent past the ping timeout: closing");
            self.conn.close(close_code::POLICY, "ping timeout").await;
            return Step::Stop(LeaveReason::Timeout);
        }
        let heard = self.conn.ping_hearing(self.reading).await;
        self.hearing(heard).await
    }

    /// Sees a write through (`heard`: how it went so far), handling what the client sends
    /// meanwhile: a client that does not read, so that the write stalls (up to the write
    /// timeout, counted from the write's start), is still heard, and its `leave` carried out at
    /// once. A step that ends the loop ends the wait; after a `leave`, [`Self::send_queued`]
    /// finishes the write within the wait the queued frames get.
    async fn hearing(&mut self, mut heard: Heard) -> Step {
        loop {
            match heard {
                Heard::Sent(Ok(())) => return Step::Continue,
                Heard::Sent(Err(failed)) => return self.write_failed(failed),
                Heard::Inbound(inbound) => match self.on_inbound(inbound).await {
                    Step::Continue => {}
                    step => return step,
                },
            }
            heard = self.conn.go_on_hearing(self.reading).await;
        }
    }

    /// A write failed. A client that does not read (the write waited past the ping timeout)
    /// is handled as a silent one, its peers see it leave with `timeout`; the connection is
    /// dropped at once (a close frame would wait behind what it does not read). A broken
    /// socket: `disconnected`.
    fn write_failed(&self, failed: SendFailed) -> Step {
        match failed {
            SendFailed::Stalled => {
                tracing::info!("a write waited past the ping timeout: dropping the connection");
                Step::Stop(LeaveReason::Timeout)
            }
            SendFailed::Broken => Step::Stop(LeaveReason::Disconnected),
        }
    }

    async fn on_inbound(&mut self, inbound: Inbound) -> Step {
        let now = Instant::now();
        match inbound {
            Inbound::Alive => {
                self.last_heard = now;
                Step::Continue
            }
            Inbound::Closed => Step::Stop(LeaveReason::Disconnected),
            Inbound::TooLarge => {
                let limit = self.app.config.max_message_bytes;
                let message = format!("frames are limited to {limit} bytes");
                let error = RequestError::new(ErrorCode::MessageTooLarge, message);
                self.fail_socket(error, close_code::TOO_BIG).await
            }
            Inbound::NotUtf8 => {
                let message = "a text frame must be UTF-8: the socket is closed (RFC 6455)";
                let error = RequestError::new(ErrorCode::InvalidMessage, message);
                self.fail_socket(error, close_code::INVALID_PAYLOAD).await
            }
            Inbound::ProtocolViolation => {
                let message =
                    "a frame broke the WebSocket protocol: the socket is closed (RFC 6455)";
                let error = RequestError::new(ErrorCode::InvalidMessage, message);
                self.fail_socket(error, close_code::PROTOCOL_ERROR).await
            }
            Inbound::Binary => {
                self.last_heard = now;
                // A binary frame counts against the message rate as a text frame does: its
                // answer is a frame too, and a flood of them must not fill the sender's queue.
                let config = self.app.live();
                if !self
                    .bucket
                    .try_take(now, config.rate_limit, config.rate_burst)
                {
                    return self.over_rate("", now).await;
                }
                self.refuse(
                    RequestError::new(
                        ErrorCode::BinaryNotSupported,
                        "the protocol uses text frames only",
                    ),
                    None,
                    None,
                )
                .await
            }
            Inbound::Text(text) => {
                self.last_heard = now;
                let config = self.app.live();
                if !self
                    .bucket
                    .try_take(now, config.rate_limit, config.rate_burst)
                {
                    return self.over_rate(&text, now).await;
                }
                match serde_json::from_str::<ClientMessage>(&text) {
                    Ok(message) => {
                        // A broadcast takes the rest of its cost once it parsed (floods over
                        // the rate are dropped above without parsing).
                        let rest = message_cost(&message) - 1;
                        if rest > 0
                            && self
                                .bucket
                                .try_take_n(now, rest, config.rate_limit, config.rate_burst)
                                .is_err()
                        {
                            return self.over_rate(&text, now).await;
                        }
                        self.on_message(message, now).await
                    }
                    Err(e) => {
                        let id = probe_id(&text);
                        self.refuse(
                            RequestError::new(ErrorCode::InvalidMessage, short(e.to_string())),
                            id,
                            None,
                        )
                        .await
                    }
                }
            }
        }
    }

    /// A frame over the message rate: dropped (at most one reply a second), or for a numbered
    /// frame the socket is closed so that the client sends it again after its resume.
    async fn over_rate(&mut self, text: &str, now: Instant) -> Step {
        let config = self.app.live();
        self.rate_dropped += 1;
        if self.key.is_some() && is_numbered(text) {
            // A numbered frame cannot be passed over: the next one would move `received` past
            // it. The client resumes after its backoff and sends it again.
            let message = format!(
                "more than {} messages/s (burst {}; a broadcast counts one per KiB): a numbered frame is not dropped; resume and send it again",
                config.rate_limit, config.rate_burst
            );
            self.rate_dropped = 0;
            // Nothing more is read: a later numbered frame handled before the close would move
            // `received` past this one, which would then be lost.
            self.reading = false;
            let error = RequestError::new(ErrorCode::RateLimited, message);
            return self
                .refuse(error, probe_id(text), Some(close_code::TRY_AGAIN_LATER))
                .await;
        }
        if self
            .last_rate_reply
            .is_some_and(|t| now.duration_since(t) < RATE_REPLY_EVERY)
        {
            // Dropped and counted; the client was told less than a second ago.
            self.app.metrics.error(ErrorCode::RateLimited);
            return Step::Continue;
        }
        self.last_rate_reply = Some(now);
        let message = format!(
            "more than {} messages/s (burst {}; a broadcast counts one per KiB): {} message(s) dropped since the last notice",
            config.rate_limit, config.rate_burst, self.rate_dropped
        );
        self.rate_dropped = 0;
        let id = probe_id(text);
        self.refuse(RequestError::new(ErrorCode::RateLimited, message), id, None)
            .await
    }

    async fn on_message(&mut self, message: ClientMessage, received: Instant) -> Step {
        let Some(key) = self.key else {
            return self.on_handshake(message).await;
        };
        let reference = message.request_id();
        match self
            .app
            .hub
            .handle_at(key, self.handshake.conn, &self.peer, message, received)
            .await
        {
            Flow::Continue => Step::Continue,
            Flow::Left => {
                self.key = None;
                tracing::info!("left");
                Step::Left
            }
            Flow::Gone => {
                self.key = None;
                self.conn.close(close_code::POLICY, "session gone").await;
                Step::Stop(LeaveReason::Disconnected)
            }
            Flow::Retry(why) => {
                let error = RequestError::unavailable(why);
                // The request that failed is named, so its client knows it was not taken.
                self.send_direct(error, reference).await;
                // A `leave` the client sent behind it (read while the close waits for the
                // client's) is carried out as one answered `unavailable` is: once the store
                // answers (the hub keeps it).
                let mut leaving = false;
                self.conn
                    .close_seeing(close_code::TRY_AGAIN_LATER, "unavailable", |text| {
                        leaving |= matches!(
                            serde_json::from_str::<ClientMessage>(text),
                            Ok(ClientMessage::Leave { .. })
                        );
                    })
                    .await;
                if leaving {
                    self.conn.release();
                    let leave = ClientMessage::Leave { id: None };
                    let flow = self
                        .app
                        .hub
                        .handle_at(key, self.handshake.conn, &self.peer, leave, Instant::now())
                        .await;
                    if flow == Flow::Left {
                        self.key = None;
                        return Step::Stop(LeaveReason::Left);
                    }
                }
                Step::Stop(LeaveReason::Disconnected)
            }
        }
    }

    /// `join` or `resume` on a socket without a session.
    async fn on_handshake(&mut self, message: ClientMessage) -> Step {
        let reference = message.request_id();
        let door = Admission {
            app: &self.app,
            conn: self.handshake.conn,
            tx: &self.tx,
            path_room: self.handshake.path_room.as_ref(),
            claims: self.handshake.claims.as_ref(),
            ip_slot: &self.handshake.ip_slot,
            transport: Transport::WebSocket,
        };
        let how = match message {
            ClientMessage::Resume { .. } => "resumed",
            _ => "joined",
        };
        match door.admit(message).await {
            Ok(attached) => {
                self.key = Some(attached.key);
                self.peer = attached.peer.clone();
                // Every later line of this connection carries the peer, its room and name.
                let span = tracing::Span::current();
                span.record("peer", attached.peer.as_str());
                span.record("room", attached.room.as_str());
                if let Some(name) = &attached.name {
                    span.record("peer_name", name.as_str());
                }
                tracing::info!(replayed = attached.replay.len(), "{how}");
                // Written by the loop, which hears the client meanwhile.
                self.replay = attached.replay.into();
                Step::Continue
            }
            Err(error) if error.code == ErrorCode::NotJoined => {
                self.refuse(error, reference, None).await
            }
            Err(error) => {
                let close = refusal_close_code(error.code);
                self.refuse(error, reference, Some(close)).await
            }
        }
    }

    /// Answers a client error: through the session when there is one, straight to the socket
    /// (seq 0) otherwise; then closes the socket when `close` says so.
    /// A socket that cannot be read any further: `error`, then the `close`.
    async fn fail_socket(&mut self, error: RequestError, close: u16) -> Step {
        self.reading = false;
        self.refuse(error, None, Some(close)).await
    }

    async fn refuse(
        &mut self,
        error: RequestError,
        reference: Option<RequestId>,
        close: Option<u16>,
    ) -> Step {
        tracing::debug!(code = %error.code, message = %error.message, "client error");
        match self.key {
            Some(key) => {
                self.app.hub.reply_error(key, error, reference, close).await;
                Step::Continue
            }
            None => {
                self.send_direct(error, reference).await;
                match close {
                    Some(code) => {
                        self.close_after_error(code).await;
                        Step::Stop(LeaveReason::Disconnected)
                    }
                    None => Step::Continue,
                }
            }
        }
    }

    /// An error frame (`seq` 0) straight to the socket, for a connection without a session;
    /// counted.
    async fn send_direct(&mut self, error: RequestError, reference: Option<RequestId>) {
        self.app.metrics.error(error.code);
        let frame = encode(&ServerFrame {
            seq: 0,
            message: ServerMessage::Error {
                code: error.code,
                message: error.message.into_owned(),
                reference,
            },
        });
        let _ = self.conn.send_text(frame).await;
    }
}

/// How long a socket that cannot be read past a frame stays open after its close frame
/// ([`SocketTask::close_after_error`]).
const UNREAD_LINGER: std::time::Duration = std::time::Duration::from_millis(250);

/// Whether a frame over the rate is numbered: parsed as the hub would read it, so that an
/// escaped key counts and a payload that merely mentions `cseq` does not. Only frames over the
/// rate pay for this parse, each at most `max_message_bytes`, and it is dropped at once.
fn is_numbered(text: &str) -> bool {
    serde_json::from_str::<ClientMessage>(text)
        .ok()
        .and_then(|message| message.cseq())
        .is_some()
}

fn probe_id(text: &str) -> Option<RequestId> {
    serde_json::from_str::<IdProbe>(text)
        .ok()
        .and_then(|p| p.id)
}
